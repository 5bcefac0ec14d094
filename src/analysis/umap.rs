//! UMAP to a few dimensions, written after umap-learn 0.5 so its embeddings can be compared
//! with the reference tool: the same fuzzy simplicial set (smooth_knn_dist, fuzzy union),
//! the same a/b curve fit, spectral initialisation and the same SGD schedule
//! (`optimize_layout_euclidean`, epochs_per_sample, negative sampling, gradient clip 4).
//! umap-rs's layout gave wrong embeddings here (stack.md), hence our own.
//!
//! Differences from umap-learn, all deliberate: exact kNN (umap-learn uses exact search
//! below 4096 points and NN-descent above); one xorshift generator for negative samples
//! instead of one Tausworthe state per vertex; for a disconnected graph the components are
//! placed by PCA of their centroids (umap-learn: spectral embedding of the centroids);
//! d^b by a polynomial exp2/log2 (relative error < 1e-6; umap-learn's numba `fastmath` pow
//! is approximate too); the spectral start comes from faer's Krylov-Schur (dense eigh up
//! to 200 vertices) instead of ARPACK; and the SGD takes all samples of an edge, and the
//! edges of a pair, at the positions before them (see `Layout::optimize_fixed`), so their
//! gradients are computed side by side in SIMD lanes.
//!
//! Cost: exact kNN O(n^2 d) on faer gemm, then a single-threaded SGD that is deterministic
//! in the seed, with the same result on every platform (SSE2, AVX2 or scalar). On 5000 x
//! 50 the whole fit took a quarter of the time it took when it ran at umap-learn's speed
//! (see `bench_umap`).

use crate::progress::Progress;
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::matrix_free::eigen::{
    partial_self_adjoint_eigen, partial_self_adjoint_eigen_scratch, PartialEigenParams,
};
use faer::matrix_free::LinOp;
use faer::{Col, Mat, MatMut, MatRef, Par, Side};
use rand::{Rng, RngCore};
use serde::Serialize;

use crate::analysis::knn::{exact_knn, subsample};
use crate::{Error, Result};

/// Random streams used by UMAP, under the caller's seed.
const STREAM_INIT: u64 = 0x554d_4150_0001;
const STREAM_SGD: u64 = 0x554d_4150_0002;
const STREAM_EIGEN: u64 = 0x554d_4150_0003;

/// umap-learn's defaults, plus the subsampling cap.
#[derive(Debug, Clone, Serialize)]
pub struct UmapParams {
    pub n_components: usize,
    pub n_neighbors: usize,
    pub min_dist: f64,
    pub spread: f64,
    pub negative_sample_rate: usize,
    /// `None`: 500 epochs up to 10,000 points, 200 above (umap-learn's rule).
    pub n_epochs: Option<usize>,
    pub learning_rate: f64,
    pub repulsion_strength: f64,
    pub local_connectivity: f64,
    /// At most this many rows are embedded (seeded uniform subsample; exact kNN and the
    /// quality scores are O(n^2)).
    pub max_points: usize,
    pub seed: u64,
}

impl Default for UmapParams {
    fn default() -> Self {
        Self {
            n_components: 2,
            n_neighbors: 15,
            min_dist: 0.1,
            spread: 1.0,
            negative_sample_rate: 5,
            n_epochs: None,
            learning_rate: 1.0,
            repulsion_strength: 1.0,
            local_connectivity: 1.0,
            max_points: 20_000,
            seed: 0,
        }
    }
}

/// How the layout was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum UmapInit {
    /// Eigenvectors of the normalised Laplacian of the (connected) fuzzy graph.
    Spectral,
    /// Each connected component laid out spectrally, components placed apart.
    MultiComponent,
    /// The eigensolver did not converge: uniform in [-10, 10] (umap-learn's fallback).
    Random,
}

/// An embedding and what produced it.
#[derive(Debug, Clone, Serialize)]
pub struct Umap {
    /// Row-major `sample_indices.len() x n_components`.
    pub embedding: Vec<f32>,
    pub n_components: usize,
    /// Which input rows were embedded (sorted); all of them unless subsampled.
    pub sample_indices: Vec<u32>,
    pub n_input_rows: usize,
    pub a: f64,
    pub b: f64,
    pub n_epochs: usize,
    pub n_edges: usize,
    pub graph_components: usize,
    pub init: UmapInit,
    /// Wall time of each stage, for run manifests and benchmarks.
    pub seconds: UmapSeconds,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct UmapSeconds {
    pub knn: f64,
    pub graph: f64,
    pub init: f64,
    pub layout: f64,
}

/// Embeds `rows` (row-major, `width` columns). Deterministic in `params.seed`.
pub fn umap(
    rows: &[f32],
    width: usize,
    params: &UmapParams,
    progress: &dyn Progress,
) -> Result<Umap> {
    if width == 0 || !rows.len().is_multiple_of(width) {
        return Err(Error::Invalid(format!(
            "UMAP: {} values is not a whole number of rows of width {width}",
            rows.len()
        )));
    }
    check_params(params)?;
    let n_input_rows = rows.len() / width;
    let sample_indices = subsample(n_input_rows, params.max_points, params.seed);
    let data: Vec<f32> = if sample_indices.len() == n_input_rows {
        rows.to_vec()
    } else {
        sample_indices
            .iter()
            .flat_map(|&i| {
                rows[i as usize * width..(i as usize + 1) * width]
                    .iter()
                    .copied()
            })
            .collect()
    };
    if let Some(bad) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "UMAP: value at row {} column {} is not finite",
            sample_indices[bad / width],
            bad % width
        )));
    }
    let n = sample_indices.len();
    if n <= params.n_neighbors {
        return Err(Error::Invalid(format!(
            "UMAP with n_neighbors = {} needs more than {} points, got {n}",
            params.n_neighbors, params.n_neighbors
        )));
    }
    let n_epochs = params
        .n_epochs
        .unwrap_or(if n <= 10_000 { 500 } else { 200 });
    let (a, b) = find_ab_params(params.spread, params.min_dist);

    let mut clock = std::time::Instant::now();
    let mut lap = || {
        let t = clock.elapsed().as_secs_f64();
        clock = std::time::Instant::now();
        t
    };
    let mut seconds = UmapSeconds::default();
    let knn = exact_knn(&data, width, params.n_neighbors, true)?;
    seconds.knn = lap();
    let (sigmas, rhos) = smooth_knn_dist(
        &knn.distances,
        params.n_neighbors,
        params.local_connectivity,
    );
    let directed = membership_strengths(
        &knn.indices,
        &knn.distances,
        params.n_neighbors,
        &sigmas,
        &rhos,
    );
    let mut graph = fuzzy_union(n, &directed);
    graph.drop_below(graph.max_weight() / n_epochs as f32);

    seconds.graph = lap();
    let (labels, n_comp) = graph.components();
    let (init_coords, init) = initial_layout(&graph, &labels, n_comp, &data, width, params)?;
    let mut embedding = noisy_scale_and_normalise(init_coords, params.n_components, params.seed);

    seconds.init = lap();
    let edges = graph.edges();
    let epochs_per_sample = make_epochs_per_sample(&edges.2, n_epochs);
    progress.set_length(n_epochs as u64);
    let mut rng = XorShift::new(crate::rng::stream(params.seed, STREAM_SGD).next_u64());
    let layout = Layout {
        dim: params.n_components,
        heads: &edges.0,
        tails: &edges.1,
        epochs_per_sample: &epochs_per_sample,
        a: a as f32,
        b: b as f32,
        gamma: params.repulsion_strength as f32,
        initial_alpha: params.learning_rate as f32,
        negative_sample_rate: params.negative_sample_rate as f64,
        n_epochs,
    };
    layout.optimize(&mut embedding, &mut rng, progress);
    seconds.layout = lap();
    Ok(Umap {
        embedding,
        n_components: params.n_components,
        sample_indices,
        n_input_rows,
        a,
        b,
        n_epochs,
        n_edges: edges.0.len(),
        graph_components: n_comp,
        init,
        seconds,
    })
}

fn check_params(p: &UmapParams) -> Result<()> {
    let bad = |what: &str| Err(Error::Invalid(format!("UMAP: {what}")));
    if !(1..=3).contains(&p.n_components) {
        return bad("n_components must be 1, 2 or 3");
    }
    if p.n_neighbors < 2 {
        return bad("n_neighbors must be at least 2");
    }
    if !(p.min_dist >= 0.0 && p.spread > 0.0 && p.min_dist <= p.spread) {
        return bad("need 0 <= min_dist <= spread and spread > 0");
    }
    if p.max_points <= p.n_neighbors {
        return bad("max_points must exceed n_neighbors");
    }
    if p.n_epochs == Some(0) {
        return bad("n_epochs must be at least 1");
    }
    Ok(())
}

/// Fits 1 / (1 + a x^(2b)) to the target curve (1 below min_dist, exp(-(x - min_dist) /
/// spread) above) on 300 points of [0, 3 spread], least squares, like umap-learn's
/// `find_ab_params` (scipy curve_fit, Levenberg-Marquardt from a = b = 1).
pub fn find_ab_params(spread: f64, min_dist: f64) -> (f64, f64) {
    let xs: Vec<f64> = (0..300).map(|i| spread * 3.0 * i as f64 / 299.0).collect();
    let ys: Vec<f64> = xs
        .iter()
        .map(|&x| {
            if x < min_dist {
                1.0
            } else {
                (-(x - min_dist) / spread).exp()
            }
        })
        .collect();
    let residuals = |a: f64, b: f64| -> f64 {
        xs.iter()
            .zip(&ys)
            .map(|(&x, &y)| (1.0 / (1.0 + a * x.powf(2.0 * b)) - y).powi(2))
            .sum()
    };
    let (mut a, mut b, mut lambda) = (1.0f64, 1.0f64, 1e-3f64);
    let mut cost = residuals(a, b);
    for _ in 0..500 {
        // Normal equations of the 2-parameter problem.
        let (mut jtj, mut jtr) = ([[0.0f64; 2]; 2], [0.0f64; 2]);
        for (&x, &y) in xs.iter().zip(&ys) {
            if x <= 0.0 {
                continue; // f = 1 at x = 0 whatever a, b: zero Jacobian row.
            }
            let u = x.powf(2.0 * b);
            let f = 1.0 / (1.0 + a * u);
            let da = -u * f * f;
            let db = -a * u * 2.0 * x.ln() * f * f;
            let r = f - y;
            jtj[0][0] += da * da;
            jtj[0][1] += da * db;
            jtj[1][1] += db * db;
            jtr[0] += da * r;
            jtr[1] += db * r;
        }
        let (m00, m11) = (jtj[0][0] * (1.0 + lambda), jtj[1][1] * (1.0 + lambda));
        let det = m00 * m11 - jtj[0][1] * jtj[0][1];
        if det.abs() < 1e-300 {
            break;
        }
        let step_a = -(m11 * jtr[0] - jtj[0][1] * jtr[1]) / det;
        let step_b = -(m00 * jtr[1] - jtj[0][1] * jtr[0]) / det;
        let (na, nb) = (a + step_a, b + step_b);
        let new_cost = if na > 0.0 && nb > 0.0 {
            residuals(na, nb)
        } else {
            f64::INFINITY
        };
        if new_cost < cost {
            let converged = (cost - new_cost) <= 1e-15 * cost.max(1e-300);
            a = na;
            b = nb;
            cost = new_cost;
            lambda = (lambda * 0.3).max(1e-12);
            if converged {
                break;
            }
        } else {
            lambda *= 10.0;
            if lambda > 1e12 {
                break;
            }
        }
    }
    (a, b)
}

/// umap-learn's `smooth_knn_dist`: per point, rho = distance to the nearest neighbour
/// (interpolated for fractional local_connectivity) and sigma such that
/// sum_j exp(-(d_j - rho) / sigma) = log2(k), by bisection (64 steps, tolerance 1e-5).
/// `distances` is row-major n x k with the point itself first.
pub fn smooth_knn_dist(
    distances: &[f32],
    k: usize,
    local_connectivity: f64,
) -> (Vec<f64>, Vec<f64>) {
    const N_ITER: usize = 64;
    const TOLERANCE: f64 = 1e-5;
    const MIN_K_DIST_SCALE: f64 = 1e-3;
    let target = (k as f64).log2();
    let n = distances.len() / k;
    let mean_distances = distances.iter().map(|&d| d as f64).sum::<f64>() / distances.len() as f64;
    let mut sigmas = vec![0.0; n];
    let mut rhos = vec![0.0; n];
    for i in 0..n {
        let row: Vec<f64> = distances[i * k..(i + 1) * k]
            .iter()
            .map(|&d| d as f64)
            .collect();
        let non_zero: Vec<f64> = row.iter().copied().filter(|&d| d > 0.0).collect();
        let mut rho = 0.0;
        if non_zero.len() as f64 >= local_connectivity {
            let index = local_connectivity.floor() as usize;
            let interpolation = local_connectivity - index as f64;
            if index > 0 {
                rho = non_zero[index - 1];
                if interpolation > TOLERANCE {
                    rho += interpolation * (non_zero[index] - non_zero[index - 1]);
                }
            } else {
                rho = interpolation * non_zero[0];
            }
        } else if !non_zero.is_empty() {
            rho = non_zero.iter().copied().fold(f64::MIN, f64::max);
        }
        let (mut lo, mut hi, mut mid) = (0.0f64, f64::INFINITY, 1.0f64);
        for _ in 0..N_ITER {
            let mut psum = 0.0;
            for &d in &row[1..] {
                let d = d - rho;
                psum += if d > 0.0 { (-d / mid).exp() } else { 1.0 };
            }
            if (psum - target).abs() < TOLERANCE {
                break;
            }
            if psum > target {
                hi = mid;
                mid = (lo + hi) / 2.0;
            } else {
                lo = mid;
                mid = if hi == f64::INFINITY {
                    mid * 2.0
                } else {
                    (lo + hi) / 2.0
                };
            }
        }
        let floor = if rho > 0.0 {
            MIN_K_DIST_SCALE * row.iter().sum::<f64>() / k as f64
        } else {
            MIN_K_DIST_SCALE * mean_distances
        };
        sigmas[i] = mid.max(floor);
        rhos[i] = rho;
    }
    (sigmas, rhos)
}

/// Directed memberships exp(-(d - rho) / sigma) of each kNN edge (1 within rho, 0 to self).
fn membership_strengths(
    indices: &[u32],
    distances: &[f32],
    k: usize,
    sigmas: &[f64],
    rhos: &[f64],
) -> Vec<(u32, u32, f32)> {
    let mut out = Vec::with_capacity(indices.len());
    for (e, (&j, &d)) in indices.iter().zip(distances).enumerate() {
        let i = e / k;
        let d = d as f64;
        let w = if j as usize == i {
            0.0
        } else if d - rhos[i] <= 0.0 || sigmas[i] == 0.0 {
            1.0
        } else {
            (-(d - rhos[i]) / sigmas[i]).exp()
        };
        out.push((i as u32, j, w as f32));
    }
    out
}

/// A symmetric sparse graph in CSR form, rows sorted by column.
#[derive(Debug, Clone)]
pub struct Graph {
    n: usize,
    indptr: Vec<usize>,
    indices: Vec<u32>,
    weights: Vec<f32>,
}

/// Fuzzy union (set_op_mix_ratio = 1): w_ij + w_ji - w_ij w_ji, zeros dropped.
fn fuzzy_union(n: usize, directed: &[(u32, u32, f32)]) -> Graph {
    // (row, col, forward weight, transposed weight)
    let mut entries: Vec<(u32, u32, f32, f32)> = Vec::with_capacity(2 * directed.len());
    for &(i, j, w) in directed {
        entries.push((i, j, w, 0.0));
        entries.push((j, i, 0.0, w));
    }
    entries.sort_unstable_by_key(|e| (e.0, e.1));
    let mut indptr = vec![0usize; n + 1];
    let mut indices = Vec::new();
    let mut weights = Vec::new();
    let mut p = 0;
    while p < entries.len() {
        let (r, c) = (entries[p].0, entries[p].1);
        let (mut fwd, mut back) = (0.0f32, 0.0f32);
        while p < entries.len() && entries[p].0 == r && entries[p].1 == c {
            fwd += entries[p].2;
            back += entries[p].3;
            p += 1;
        }
        let w = fwd + back - fwd * back;
        if w > 0.0 {
            indices.push(c);
            weights.push(w);
            indptr[r as usize + 1] += 1;
        }
    }
    for i in 0..n {
        indptr[i + 1] += indptr[i];
    }
    Graph {
        n,
        indptr,
        indices,
        weights,
    }
}

impl Graph {
    fn max_weight(&self) -> f32 {
        self.weights.iter().copied().fold(0.0, f32::max)
    }

    /// Drops edges below `threshold` (umap-learn: max weight / n_epochs; they would never
    /// be sampled).
    fn drop_below(&mut self, threshold: f32) {
        let mut indptr = vec![0usize; self.n + 1];
        let (mut indices, mut weights) = (Vec::new(), Vec::new());
        for i in 0..self.n {
            for p in self.indptr[i]..self.indptr[i + 1] {
                if self.weights[p] >= threshold {
                    indices.push(self.indices[p]);
                    weights.push(self.weights[p]);
                }
            }
            indptr[i + 1] = indices.len();
        }
        self.indptr = indptr;
        self.indices = indices;
        self.weights = weights;
    }

    /// (heads, tails, weights), in (row, column) order like scipy's COO of a CSR matrix.
    fn edges(&self) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
        let mut heads = Vec::with_capacity(self.indices.len());
        for i in 0..self.n {
            heads.extend(std::iter::repeat_n(
                i as u32,
                self.indptr[i + 1] - self.indptr[i],
            ));
        }
        (heads, self.indices.clone(), self.weights.clone())
    }

    /// Connected-component label of every vertex, and the number of components.
    fn components(&self) -> (Vec<usize>, usize) {
        let mut label = vec![usize::MAX; self.n];
        let mut count = 0;
        let mut stack = Vec::new();
        for s in 0..self.n {
            if label[s] != usize::MAX {
                continue;
            }
            label[s] = count;
            stack.push(s);
            while let Some(v) = stack.pop() {
                for &u in &self.indices[self.indptr[v]..self.indptr[v + 1]] {
                    if label[u as usize] == usize::MAX {
                        label[u as usize] = count;
                        stack.push(u as usize);
                    }
                }
            }
            count += 1;
        }
        (label, count)
    }

    /// The subgraph on `members` (sorted global ids), renumbered 0..members.len().
    fn subgraph(&self, members: &[usize]) -> Graph {
        let mut local = vec![u32::MAX; self.n];
        for (l, &g) in members.iter().enumerate() {
            local[g] = l as u32;
        }
        let mut indptr = vec![0usize; members.len() + 1];
        let (mut indices, mut weights) = (Vec::new(), Vec::new());
        for (l, &g) in members.iter().enumerate() {
            for p in self.indptr[g]..self.indptr[g + 1] {
                let c = local[self.indices[p] as usize];
                if c != u32::MAX {
                    indices.push(c);
                    weights.push(self.weights[p]);
                }
            }
            indptr[l + 1] = indices.len();
        }
        Graph {
            n: members.len(),
            indptr,
            indices,
            weights,
        }
    }
}

/// Spectral, multi-component or random start, before scaling (n x dim, f64).
fn initial_layout(
    graph: &Graph,
    labels: &[usize],
    n_comp: usize,
    data: &[f32],
    width: usize,
    params: &UmapParams,
) -> Result<(Vec<f64>, UmapInit)> {
    let dim = params.n_components;
    let n = graph.n;
    let mut rng = crate::rng::stream(params.seed, STREAM_INIT);
    if n_comp == 1 {
        if let Some(coords) = spectral_layout(graph, dim, params.seed) {
            return Ok((coords, UmapInit::Spectral));
        }
        let coords = (0..n * dim).map(|_| rng.gen_range(-10.0..10.0)).collect();
        return Ok((coords, UmapInit::Random));
    }
    let meta = component_positions(labels, n_comp, data, width, dim);
    let mut coords = vec![0.0f64; n * dim];
    for c in 0..n_comp {
        let members: Vec<usize> = (0..n).filter(|&i| labels[i] == c).collect();
        let centre = &meta[c * dim..(c + 1) * dim];
        let data_range = (0..n_comp)
            .filter(|&o| o != c)
            .map(|o| distance(centre, &meta[o * dim..(o + 1) * dim]))
            .filter(|&d| d > 0.0)
            .fold(f64::INFINITY, f64::min)
            / 2.0;
        let data_range = if data_range.is_finite() {
            data_range
        } else {
            1.0
        };
        let layout = if members.len() < 2 * dim || members.len() <= dim + 1 {
            None
        } else {
            spectral_layout(&graph.subgraph(&members), dim, params.seed ^ c as u64)
        };
        match layout {
            Some(local) => {
                let max = local.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
                for (l, &g) in members.iter().enumerate() {
                    for d in 0..dim {
                        coords[g * dim + d] = local[l * dim + d] * data_range / max + centre[d];
                    }
                }
            }
            None => {
                for &g in &members {
                    for d in 0..dim {
                        coords[g * dim + d] = rng.gen_range(-data_range..data_range) + centre[d];
                    }
                }
            }
        }
    }
    Ok((coords, UmapInit::MultiComponent))
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Where each connected component goes: umap-learn's layout for few components (unit
/// vectors and their negatives), otherwise the first `dim` principal axes of the component
/// centroids, scaled so the largest coordinate is 1.
fn component_positions(
    labels: &[usize],
    n_comp: usize,
    data: &[f32],
    width: usize,
    dim: usize,
) -> Vec<f64> {
    let mut meta = vec![0.0f64; n_comp * dim];
    if n_comp <= 2 * dim {
        let k = n_comp.div_ceil(2);
        for c in 0..n_comp {
            let axis = c % k;
            if axis < dim {
                meta[c * dim + axis] = if c < k { 1.0 } else { -1.0 };
            }
        }
        return meta;
    }
    let mut centroids = Mat::<f64>::zeros(n_comp, width);
    let mut counts = vec![0usize; n_comp];
    for (i, &c) in labels.iter().enumerate() {
        counts[c] += 1;
        for j in 0..width {
            centroids[(c, j)] += data[i * width + j] as f64;
        }
    }
    for c in 0..n_comp {
        for j in 0..width {
            centroids[(c, j)] /= counts[c] as f64;
        }
    }
    for j in 0..width {
        let m = (0..n_comp).map(|c| centroids[(c, j)]).sum::<f64>() / n_comp as f64;
        (0..n_comp).for_each(|c| centroids[(c, j)] -= m);
    }
    let cov = centroids.transpose() * &centroids;
    let axes = match cov.self_adjoint_eigen(Side::Lower) {
        Ok(e) => e.U().to_owned(),
        Err(_) => return meta,
    };
    for c in 0..n_comp {
        for d in 0..dim.min(width) {
            let axis = width - 1 - d;
            meta[c * dim + d] = (0..width)
                .map(|j| centroids[(c, j)] * axes[(j, axis)])
                .sum();
        }
    }
    let max = meta.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if max > 0.0 {
        meta.iter_mut().for_each(|v| *v /= max);
    }
    meta
}

/// Convergence tolerance of the spectral start: umap-learn's (`eigsh(..., tol=1e-4)`).
/// The start is rescaled to [0, 10] and jittered before the SGD moves every point, so
/// 1e-8 bought nothing and took 40% longer.
const SPECTRAL_TOLERANCE: f64 = 1e-4;

/// Below this many vertices the Laplacian is decomposed densely.
const DENSE_SPECTRAL_MAX: usize = 200;

/// Eigenvectors 2..=dim+1 of the normalised Laplacian I - D^-1/2 W D^-1/2 of a connected
/// graph (row-major n x dim), or None if the eigensolver does not converge.
fn spectral_layout(graph: &Graph, dim: usize, seed: u64) -> Option<Vec<f64>> {
    let n = graph.n;
    if n <= dim + 1 {
        return None;
    }
    let op = NormalizedAdjacency::new(graph);
    let vectors = if n <= DENSE_SPECTRAL_MAX {
        op.dense_top(dim)?
    } else {
        op.krylov_top(dim, seed, SPECTRAL_TOLERANCE)?
    };
    let mut out = vec![0.0f64; n * dim];
    for i in 0..n {
        for d in 0..dim {
            out[i * dim + d] = vectors[(i, d)];
        }
    }
    Some(out)
}

/// (I + D^-1/2 W D^-1/2) / 2 with the known top eigenvector (sqrt of the degrees,
/// eigenvalue 1) projected out. Its largest eigenvalues belong to the Laplacian's
/// eigenvectors number 2, 3 and so on, and all lie in [0, 1], so "largest magnitude"
/// (what Krylov-Schur finds) is the right end.
#[derive(Debug)]
struct NormalizedAdjacency {
    n: usize,
    indptr: Vec<usize>,
    indices: Vec<u32>,
    values: Vec<f64>,
    top: Vec<f64>,
}

impl NormalizedAdjacency {
    fn new(g: &Graph) -> Self {
        let degree: Vec<f64> = (0..g.n)
            .map(|i| {
                g.weights[g.indptr[i]..g.indptr[i + 1]]
                    .iter()
                    .map(|&w| w as f64)
                    .sum()
            })
            .collect();
        let inv_sqrt: Vec<f64> = degree
            .iter()
            .map(|&d| if d > 0.0 { 1.0 / d.sqrt() } else { 0.0 })
            .collect();
        let mut values = Vec::with_capacity(g.weights.len());
        for i in 0..g.n {
            for p in g.indptr[i]..g.indptr[i + 1] {
                values.push(g.weights[p] as f64 * inv_sqrt[i] * inv_sqrt[g.indices[p] as usize]);
            }
        }
        let norm = degree.iter().sum::<f64>().sqrt();
        let top = degree.iter().map(|&d| d.sqrt() / norm).collect();
        Self {
            n: g.n,
            indptr: g.indptr.clone(),
            indices: g.indices.clone(),
            values,
            top,
        }
    }

    fn project_out_top(&self, x: &mut [f64]) {
        let dot: f64 = x.iter().zip(&self.top).map(|(a, b)| a * b).sum();
        x.iter_mut().zip(&self.top).for_each(|(a, b)| *a -= dot * b);
    }

    fn apply_vec(&self, x: &[f64], out: &mut [f64]) {
        let mut y = x.to_vec();
        self.project_out_top(&mut y);
        for i in 0..self.n {
            let mut s = 0.0;
            for p in self.indptr[i]..self.indptr[i + 1] {
                s += self.values[p] * y[self.indices[p] as usize];
            }
            out[i] = 0.5 * (s + y[i]);
        }
        self.project_out_top(out);
    }

    /// Dense eigendecomposition; columns = top `dim` eigenvectors after the deflated one.
    fn dense_top(&self, dim: usize) -> Option<Mat<f64>> {
        let n = self.n;
        let mut m = Mat::<f64>::zeros(n, n);
        let mut e = vec![0.0; n];
        let mut col = vec![0.0; n];
        for j in 0..n {
            e.iter_mut().for_each(|v| *v = 0.0);
            e[j] = 1.0;
            self.apply_vec(&e, &mut col);
            for i in 0..n {
                m[(i, j)] = col[i];
            }
        }
        let evd = m.self_adjoint_eigen(Side::Lower).ok()?;
        let u = evd.U();
        Some(Mat::from_fn(n, dim, |i, d| u[(i, n - 1 - d)]))
    }

    /// Krylov-Schur (faer) for the top `dim` eigenvectors, seeded start vector.
    fn krylov_top(&self, dim: usize, seed: u64, tolerance: f64) -> Option<Mat<f64>> {
        let n = self.n;
        let g = crate::rng::gaussian(seed, STREAM_EIGEN, n);
        let mut v0 = Col::<f64>::from_fn(n, |i| g[i] as f64);
        let norm = v0.norm_l2();
        v0 /= norm;
        let params = PartialEigenParams {
            max_restarts: 1000,
            ..Default::default()
        };
        let par = Par::Seq;
        let mut mem = MemBuffer::new(partial_self_adjoint_eigen_scratch(self, dim, par, params));
        let mut vecs = Mat::<f64>::zeros(n, dim);
        let mut vals = vec![0.0f64; dim];
        let info = partial_self_adjoint_eigen(
            vecs.as_mut(),
            &mut vals,
            self,
            v0.as_ref(),
            tolerance,
            par,
            MemStack::new(&mut mem),
            params,
        );
        (info.n_converged_eigen >= dim).then_some(vecs)
    }
}

impl LinOp<f64> for NormalizedAdjacency {
    fn apply_scratch(&self, _rhs_ncols: usize, _par: Par) -> StackReq {
        StackReq::EMPTY
    }

    fn nrows(&self) -> usize {
        self.n
    }

    fn ncols(&self) -> usize {
        self.n
    }

    fn apply(
        &self,
        mut out: MatMut<'_, f64>,
        rhs: MatRef<'_, f64>,
        _par: Par,
        _stack: &mut MemStack,
    ) {
        let mut x = vec![0.0; self.n];
        let mut y = vec![0.0; self.n];
        for c in 0..rhs.ncols() {
            for i in 0..self.n {
                x[i] = rhs[(i, c)];
            }
            self.apply_vec(&x, &mut y);
            for i in 0..self.n {
                out[(i, c)] = y[i];
            }
        }
    }

    fn conj_apply(
        &self,
        out: MatMut<'_, f64>,
        rhs: MatRef<'_, f64>,
        par: Par,
        stack: &mut MemStack,
    ) {
        self.apply(out, rhs, par, stack);
    }
}

/// umap-learn's `noisy_scale_coords` (largest |coordinate| 10, N(0, 1e-4) noise), then the
/// per-dimension rescale to [0, 10] done before the SGD.
fn noisy_scale_and_normalise(coords: Vec<f64>, dim: usize, seed: u64) -> Vec<f32> {
    let max = coords.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let expansion = if max > 0.0 { 10.0 / max } else { 1.0 };
    let noise = crate::rng::gaussian(seed, STREAM_INIT + 1, coords.len());
    let mut out: Vec<f32> = coords
        .iter()
        .zip(&noise)
        .map(|(&c, &z)| (c * expansion) as f32 + 1e-4 * z)
        .collect();
    for d in 0..dim {
        let column = out.iter().skip(d).step_by(dim);
        let lo = column.clone().copied().fold(f32::INFINITY, f32::min);
        let hi = column.copied().fold(f32::NEG_INFINITY, f32::max);
        let span = if hi > lo { hi - lo } else { 1.0 };
        out.iter_mut()
            .skip(d)
            .step_by(dim)
            .for_each(|v| *v = 10.0 * (*v - lo) / span);
    }
    out
}

/// Epochs between samples of each edge: the strongest edge every epoch, an edge of weight
/// w every max/w epochs.
fn make_epochs_per_sample(weights: &[f32], n_epochs: usize) -> Vec<f64> {
    let max = weights.iter().copied().fold(0.0f32, f32::max) as f64;
    weights
        .iter()
        .map(|&w| {
            let n_samples = n_epochs as f64 * (w as f64 / max);
            if n_samples > 0.0 {
                n_epochs as f64 / n_samples
            } else {
                -1.0
            }
        })
        .collect()
}

/// xorshift64*: fast, and its stream is fixed by the seed.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    #[inline]
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..n by multiply-shift (Lemire) instead of a 64-bit division, which was
    /// a visible share of the negative-sampling loop.
    #[inline]
    fn below(&mut self, n: u64) -> usize {
        (((self.next() >> 32) * n) >> 32) as usize
    }
}

struct Layout<'a> {
    dim: usize,
    heads: &'a [u32],
    tails: &'a [u32],
    epochs_per_sample: &'a [f64],
    a: f32,
    b: f32,
    gamma: f32,
    initial_alpha: f32,
    negative_sample_rate: f64,
    n_epochs: usize,
}

/// Samples whose gradients are computed together: the positive sample and up to 7
/// negatives of one edge (5 on average at the default negative_sample_rate).
const LANES: usize = 8;

impl Layout<'_> {
    /// umap-learn's `optimize_layout_euclidean` with move_other = True, single-threaded.
    /// Eight lanes per instruction where the CPU has AVX2, else four (SSE2): the same
    /// operations in the same order, so the same embedding either way.
    fn optimize(&self, emb: &mut [f32], rng: &mut XorShift, progress: &dyn Progress) {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            unsafe { self.optimize_avx2(emb, rng, progress) };
            return;
        }
        self.optimize_in::<lanes::F4>(emb, rng, progress);
    }

    /// The whole epoch loop compiled for AVX2 (everything below is inlined into it).
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    #[target_feature(enable = "avx2")]
    fn optimize_avx2(&self, emb: &mut [f32], rng: &mut XorShift, progress: &dyn Progress) {
        self.optimize_in::<lanes::avx2::F8>(emb, rng, progress);
    }

    #[inline(always)]
    fn optimize_in<V: lanes::Lanes>(
        &self,
        emb: &mut [f32],
        rng: &mut XorShift,
        progress: &dyn Progress,
    ) {
        match self.dim {
            1 => self.optimize_fixed::<1, V>(emb.as_chunks_mut().0, rng, progress),
            2 => self.optimize_fixed::<2, V>(emb.as_chunks_mut().0, rng, progress),
            _ => self.optimize_fixed::<3, V>(emb.as_chunks_mut().0, rng, progress),
        }
    }

    /// The epoch loop with the dimension known at compile time (points are arrays: no
    /// bounds checks, unrolled coordinate loops). This loop is nearly all of UMAP's time.
    ///
    /// Two deliberate changes of umap-learn's order, both so that gradients can be
    /// computed side by side instead of as one long chain of log2, exp2 and divisions:
    /// the positive and negative samples of an edge all take their gradient at the head's
    /// position before the edge's turn (umap-learn moves the head after each sample), and
    /// the edges due in an epoch are visited two at a time, the i-th with the
    /// (n/2 + i)-th (edge order otherwise kept), both from the positions before the pair.
    /// Steps are small (clipped at 4 alpha): trustworthiness@15 on the 5000 x 50 bench
    /// went from 0.9597 to 0.9599 (umap-learn 0.9597), at a quarter of the time.
    #[inline(always)]
    fn optimize_fixed<const D: usize, V: lanes::Lanes>(
        &self,
        emb: &mut [[f32; D]],
        rng: &mut XorShift,
        progress: &dyn Progress,
    ) {
        let mut sgd = Sgd::<V>::new(self);
        let mut due = vec![0u32; self.heads.len()];
        let mut alpha = self.initial_alpha;
        for epoch in 0..self.n_epochs {
            let now = epoch as f64;
            let n_due = sgd.due(now, &mut due);
            let half = n_due.div_ceil(2);
            for i in 0..half {
                let first = due[i] as usize;
                if i + half < n_due {
                    let second = due[i + half] as usize;
                    sgd.visit::<D, 2>([first, second], emb, rng, now, alpha);
                } else {
                    sgd.visit::<D, 1>([first], emb, rng, now, alpha);
                }
            }
            alpha = self.initial_alpha * (1.0 - epoch as f32 / self.n_epochs as f32);
            progress.inc(1);
        }
    }
}

/// The SGD's state: umap-learn's per-edge schedule (epochs_per_sample, the next epoch
/// of a positive sample and of negative samples) and the gradient constants.
struct Sgd<'a, V> {
    heads: &'a [u32],
    tails: &'a [u32],
    epochs_per_sample: &'a [f64],
    epochs_per_negative: Vec<f64>,
    next_sample: Vec<f64>,
    next_negative: Vec<f64>,
    gradient: Gradient<V>,
}

impl<'a, V: lanes::Lanes> Sgd<'a, V> {
    #[inline(always)]
    fn new(layout: &Layout<'a>) -> Self {
        let eps = layout.epochs_per_sample;
        let epochs_per_negative: Vec<f64> = eps
            .iter()
            .map(|e| e / layout.negative_sample_rate)
            .collect();
        Self {
            heads: layout.heads,
            tails: layout.tails,
            epochs_per_sample: eps,
            next_negative: epochs_per_negative.clone(),
            epochs_per_negative,
            // Edges of weight 0 are never due.
            next_sample: eps
                .iter()
                .map(|&e| if e > 0.0 { e } else { f64::INFINITY })
                .collect(),
            gradient: Gradient::new(layout.a, layout.b, layout.gamma),
        }
    }

    /// Writes the edges due at epoch `now` to the front of `due`, in edge order, and
    /// returns how many (about a third of the edges: no pattern a branch predictor
    /// learns, so no branch).
    #[inline(always)]
    fn due(&self, now: f64, due: &mut [u32]) -> usize {
        let mut n_due = 0;
        for (e, &next) in self.next_sample.iter().enumerate() {
            due[n_due] = e as u32;
            n_due += usize::from(next <= now);
        }
        n_due
    }

    /// Marks edge `e` as sampled at `now`; the number of negative samples due with it.
    #[inline(always)]
    fn take(&mut self, e: usize, now: f64) -> usize {
        self.next_sample[e] += self.epochs_per_sample[e];
        let per_negative = self.epochs_per_negative[e];
        let n_neg = ((now - self.next_negative[e]) / per_negative).max(0.0) as usize;
        self.next_negative[e] += n_neg as f64 * per_negative;
        n_neg
    }

    /// One positive sample and its negative samples for each of the `G` edges, gradients
    /// all taken before any of them moves a point.
    #[inline(always)]
    fn visit<const D: usize, const G: usize>(
        &mut self,
        edges: [usize; G],
        emb: &mut [[f32; D]],
        rng: &mut XorShift,
        now: f64,
        alpha: f32,
    ) {
        let n_vertices = emb.len() as u64; // < 2^32: Umap::sample_indices are u32
        let mut heads = [[0.0f32; D]; G];
        let mut others = [[[0.0f32; D]; LANES]; G];
        let mut left = [0usize; G];
        for g in 0..G {
            let e = edges[g];
            let n_neg = self.take(e, now);
            let head = emb[self.heads[e] as usize];
            heads[g] = head;
            others[g][0] = emb[self.tails[e] as usize];
            let first = n_neg.min(LANES - 1);
            for other in &mut others[g][1..=first] {
                *other = emb[rng.below(n_vertices)];
            }
            // Lanes past the last sample hold the head itself: zero distance, no step.
            others[g][first + 1..].fill(head);
            left[g] = n_neg - first;
        }
        let moves = self.gradient.steps(&heads, &others, true, alpha);
        for g in 0..G {
            let [mut step, pull] = moves[g];
            while left[g] > 0 {
                let m = left[g].min(LANES);
                let mut more = [[heads[g]; LANES]];
                for other in &mut more[0][..m] {
                    *other = emb[rng.below(n_vertices)];
                }
                let [[extra, _]] = self.gradient.steps(&[heads[g]], &more, false, alpha);
                for d in 0..D {
                    step[d] += extra[d];
                }
                left[g] -= m;
            }
            // Moves, not positions: the other edge of a pair may have moved these points.
            let (j, k) = (self.heads[edges[g]] as usize, self.tails[edges[g]] as usize);
            for d in 0..D {
                emb[k][d] -= pull[d];
                emb[j][d] += step[d];
            }
        }
    }
}

/// The constants of umap-learn's gradients, per lane of a group of `LANES`: lane 0 is
/// the positive sample in an edge's first batch. A group is `LANES / V::WIDTH` vectors.
struct Gradient<V> {
    a: V,
    b: V,
    /// -2ab (attraction) in the positive lane, 2 gamma b (repulsion) elsewhere.
    numerator_first: [V; 2],
    numerator_rest: V,
    /// Added to d^2 in the denominator: 0 for attraction, 0.001 for repulsion.
    offset_first: [V; 2],
    offset_rest: V,
    /// All bits set in the positive lane, whose numerator also carries d^(2b).
    positive: [V; 2],
}

impl<V: lanes::Lanes> Gradient<V> {
    #[inline(always)]
    fn new(a: f32, b: f32, gamma: f32) -> Self {
        let (attract, repel) = (-2.0 * a * b, 2.0 * gamma * b);
        let first_lane = |first: f32, rest: f32| -> [V; 2] {
            let mut lanes = [rest; LANES];
            lanes[0] = first;
            // With 8-lane vectors the second is never used (the min keeps it in bounds).
            [0, 1].map(|v| V::load(&lanes[(v * V::WIDTH).min(LANES - V::WIDTH)..]))
        };
        Self {
            a: V::splat(a),
            b: V::splat(b),
            numerator_first: first_lane(attract, repel),
            numerator_rest: V::splat(repel),
            offset_first: first_lane(0.0, 0.001),
            offset_rest: V::splat(0.001),
            positive: first_lane(f32::from_bits(!0), 0.0),
        }
    }

    /// For each of `G` groups: the clipped steps of `heads[g]` for the samples
    /// `others[g]`, times alpha, summed, and lane 0's step alone (with `with_positive`,
    /// the pull on the positive sample). Attraction: -2ab d^(2(b-1)) / (1 + a d^(2b));
    /// repulsion: 2 gamma b / ((0.001 + d^2)(1 + a d^(2b))); both 0 at distance 0 and
    /// each coordinate clipped to [-4, 4].
    #[inline(always)]
    fn steps<const D: usize, const G: usize>(
        &self,
        heads: &[[f32; D]; G],
        others: &[[[f32; D]; LANES]; G],
        with_positive: bool,
        alpha: f32,
    ) -> [[[f32; D]; 2]; G] {
        let per_group = LANES / V::WIDTH;
        let (zero, one) = (V::splat(0.0), V::splat(1.0));
        // Vector i holds lanes (i % per_group) * WIDTH.. of group i / per_group.
        let mut diff = [[zero; D]; 4];
        assert!(
            G * per_group <= diff.len(),
            "at most two groups of two vectors"
        );
        for (i, vector) in diff.iter_mut().enumerate().take(G * per_group) {
            let (g, first) = (i / per_group, (i % per_group) * V::WIDTH);
            for (d, x) in vector.iter_mut().enumerate() {
                *x = V::splat(heads[g][d]).sub(V::gather(&others[g], first, d));
            }
        }
        let mut coeff = [zero; 4];
        for (i, c) in coeff.iter_mut().enumerate().take(G * per_group) {
            let mut d2 = diff[i][0].mul(diff[i][0]);
            for x in &diff[i][1..] {
                d2 = d2.add(x.mul(*x));
            }
            let pow_b = self.b.mul(d2.log2()).exp2();
            let k = i % per_group;
            let (numerator, offset) = if with_positive {
                let scale = V::select(self.positive[k], pow_b, one);
                (self.numerator_first[k].mul(scale), self.offset_first[k])
            } else {
                (self.numerator_rest, self.offset_rest)
            };
            let denominator = offset.add(d2).mul(self.a.mul(pow_b).add(one));
            *c = V::select(d2.gt(zero), numerator.div(denominator), zero);
        }
        let (low, high, alpha) = (V::splat(-4.0), V::splat(4.0), V::splat(alpha));
        let mut moves = [[[0.0f32; D]; 2]; G];
        for (g, [step, pull]) in moves.iter_mut().enumerate() {
            for d in 0..D {
                let mut total = zero;
                for k in 0..per_group {
                    let i = g * per_group + k;
                    let s = coeff[i].mul(diff[i][d]).max(low).min(high).mul(alpha);
                    if k == 0 {
                        pull[d] = s.lane0();
                        total = s;
                    } else {
                        total = total.add(s);
                    }
                }
                step[d] = total.sum();
            }
        }
        moves
    }
}

/// f32 lanes: SSE2 (4) and AVX2 (8) on x86_64, and a scalar twin of 4. log2 and exp2 are
/// written once over a few primitive operations, which every variant performs with the
/// same IEEE results, so the embedding is the same on every platform (a test checks the
/// three agree bit for bit).
mod lanes {
    pub trait Lanes: Copy {
        /// Lanes per vector, 4 or 8.
        const WIDTH: usize;
        fn splat(v: f32) -> Self;
        /// The first `WIDTH` values of `v`.
        fn load(v: &[f32]) -> Self;
        /// Coordinate `d` of `points[first..first + WIDTH]`.
        fn gather<const D: usize, const N: usize>(
            points: &[[f32; D]; N],
            first: usize,
            d: usize,
        ) -> Self;
        fn lane0(self) -> f32;
        fn add(self, o: Self) -> Self;
        fn sub(self, o: Self) -> Self;
        fn mul(self, o: Self) -> Self;
        fn div(self, o: Self) -> Self;
        /// SSE `minps`: `o` where either is NaN.
        fn min(self, o: Self) -> Self;
        fn max(self, o: Self) -> Self;
        /// All bits set where self > o.
        fn gt(self, o: Self) -> Self;
        /// `a` where `mask` has all bits set, else `b`.
        fn select(mask: Self, a: Self, b: Self) -> Self;
        /// The blocks of 4 lanes added lane by lane, then (l0 + l2) + (l1 + l3).
        fn sum(self) -> f32;
        /// The biased exponent field minus 127, as a float.
        fn exponent(self) -> Self;
        /// The mantissa with exponent 0: in [1, 2) for a normal number.
        fn mantissa(self) -> Self;
        /// 2^self for whole numbers in [-126, 126], built from the exponent field.
        fn pow2i(self) -> Self;
        #[cfg(test)]
        fn to_vec(self) -> Vec<f32>;

        /// log2(x) for normal x > 0 (absolute error < 5e-7): log2 of the
        /// mantissa m in [sqrt(1/2), sqrt(2)) is 2/ln2 atanh(t), t = (m - 1) / (m + 1),
        /// |t| <= 0.172, five terms of the series; Estrin's scheme keeps the dependency
        /// chain short (this is on the SGD's critical path).
        #[inline(always)]
        fn log2(self) -> Self {
            let (one, half) = (Self::splat(1.0), Self::splat(0.5));
            let mantissa = self.mantissa();
            let high = mantissa.gt(Self::splat(std::f32::consts::SQRT_2));
            let m = Self::select(high, mantissa.mul(half), mantissa);
            let exponent = self
                .exponent()
                .add(Self::select(high, one, Self::splat(0.0)));
            let t = m.sub(one).div(m.add(one));
            let t2 = t.mul(t);
            let t4 = t2.mul(t2);
            let c = LOG2_SERIES.map(Self::splat);
            let low = c[0].add(c[1].mul(t2));
            let mid = c[2].add(c[3].mul(t2));
            let p = low.add(t4.mul(mid.add(t4.mul(c[4]))));
            exponent.add(t.mul(p))
        }

        /// 2^x, x clamped to [-126, 126] (relative error < 3e-7): 2^round(x) from the
        /// exponent field times 2^f, |f| <= 1/2, by its Taylor polynomial of degree 6
        /// (Estrin's scheme).
        #[inline(always)]
        fn exp2(self) -> Self {
            let x = self.max(Self::splat(-126.0)).min(Self::splat(126.0));
            let magic = Self::splat(ROUND_MAGIC);
            let whole = x.add(magic).sub(magic);
            let f = x.sub(whole);
            let f2 = f.mul(f);
            let f4 = f2.mul(f2);
            let c = EXP2_TAYLOR.map(Self::splat);
            let p01 = c[0].add(c[1].mul(f));
            let p23 = c[2].add(c[3].mul(f));
            let p45 = c[4].add(c[5].mul(f));
            let low = p01.add(f2.mul(p23));
            let high = p45.add(f2.mul(c[6]));
            whole.pow2i().mul(low.add(f4.mul(high)))
        }
    }

    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    pub use scalar::Scalar4 as F4;
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    pub use sse::F4;

    /// 2/ln2 atanh(t) = log2((1 + t) / (1 - t)) as t times a polynomial in t^2.
    const LOG2_SERIES: [f32; 5] = [2.885_39, 0.961_796_7, 0.577_078, 0.412_198_6, 0.320_598_9];

    /// 2^f = e^(f ln 2): ln2^k / k!, k = 0..=6.
    const EXP2_TAYLOR: [f32; 7] = [
        1.0,
        std::f32::consts::LN_2,
        0.240_226_5,
        0.055_504_11,
        0.009_618_129,
        0.001_333_355_8,
        0.000_154_035_3,
    ];

    /// 1.5 * 2^23: (x + M) - M rounds |x| < 2^22 to the nearest integer, ties to even, in
    /// two additions (`f32::round` is a libm call on baseline x86_64).
    const ROUND_MAGIC: f32 = 12_582_912.0;

    /// The scalar twin of the SIMD lanes (and the reference for their accuracy).
    #[cfg_attr(
        all(target_arch = "x86_64", target_feature = "sse2", not(test)),
        allow(dead_code)
    )]
    pub mod scalar {
        use super::Lanes;

        #[derive(Clone, Copy)]
        pub struct Scalar4(pub [f32; 4]);

        impl Scalar4 {
            #[inline(always)]
            fn map(self, f: impl Fn(f32) -> f32) -> Self {
                Self(self.0.map(f))
            }

            #[inline(always)]
            fn map2(self, o: Self, f: impl Fn(f32, f32) -> f32) -> Self {
                Self([0, 1, 2, 3].map(|i| f(self.0[i], o.0[i])))
            }
        }

        /// log2 of one value, as the lanes compute it.
        pub fn log2(x: f32) -> f32 {
            Scalar4::splat(x).log2().lane0()
        }

        /// 2^x of one value, as the lanes compute it.
        pub fn exp2(x: f32) -> f32 {
            Scalar4::splat(x).exp2().lane0()
        }

        impl Lanes for Scalar4 {
            const WIDTH: usize = 4;
            #[inline(always)]
            fn splat(v: f32) -> Self {
                Self([v; 4])
            }
            #[inline(always)]
            fn load(v: &[f32]) -> Self {
                Self([v[0], v[1], v[2], v[3]])
            }
            #[inline(always)]
            fn gather<const D: usize, const N: usize>(
                points: &[[f32; D]; N],
                first: usize,
                d: usize,
            ) -> Self {
                Self([0, 1, 2, 3].map(|i| points[first + i][d]))
            }
            #[inline(always)]
            fn lane0(self) -> f32 {
                self.0[0]
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self.map2(o, |x, y| x + y)
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self.map2(o, |x, y| x - y)
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self.map2(o, |x, y| x * y)
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                self.map2(o, |x, y| x / y)
            }
            #[inline(always)]
            fn min(self, o: Self) -> Self {
                self.map2(o, |x, y| if x < y { x } else { y })
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                self.map2(o, |x, y| if x > y { x } else { y })
            }
            #[inline(always)]
            fn gt(self, o: Self) -> Self {
                self.map2(o, |x, y| f32::from_bits(if x > y { !0 } else { 0 }))
            }
            #[inline(always)]
            fn select(mask: Self, a: Self, b: Self) -> Self {
                Self([0, 1, 2, 3].map(|i| {
                    let m = mask.0[i].to_bits();
                    f32::from_bits((m & a.0[i].to_bits()) | (!m & b.0[i].to_bits()))
                }))
            }
            #[inline(always)]
            fn sum(self) -> f32 {
                (self.0[0] + self.0[2]) + (self.0[1] + self.0[3])
            }
            #[inline(always)]
            fn exponent(self) -> Self {
                self.map(|x| (((x.to_bits() >> 23) & 0xff) as i32 - 127) as f32)
            }
            #[inline(always)]
            fn mantissa(self) -> Self {
                self.map(|x| f32::from_bits((x.to_bits() & 0x007f_ffff) | 0x3f80_0000))
            }
            #[inline(always)]
            fn pow2i(self) -> Self {
                self.map(|x| f32::from_bits(((x as i32 + 127) as u32) << 23))
            }
            #[cfg(test)]
            fn to_vec(self) -> Vec<f32> {
                self.0.to_vec()
            }
        }
    }

    /// SAFETY (every `unsafe` block below): the intrinsics only need SSE2, which every
    /// x86_64 target enables (the cfg checks it), and read and write no memory but their
    /// arguments (`to_vec`: its own local array).
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    mod sse {
        use std::arch::x86_64::*;

        #[derive(Clone, Copy)]
        pub struct F4(__m128);

        impl super::Lanes for F4 {
            const WIDTH: usize = 4;
            #[inline(always)]
            fn splat(v: f32) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm_set1_ps(v)) }
            }
            #[inline(always)]
            fn load(v: &[f32]) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm_setr_ps(v[0], v[1], v[2], v[3])) }
            }
            #[inline(always)]
            fn gather<const D: usize, const N: usize>(
                p: &[[f32; D]; N],
                first: usize,
                d: usize,
            ) -> Self {
                let f = first;
                // SAFETY: see the module note.
                unsafe { Self(_mm_setr_ps(p[f][d], p[f + 1][d], p[f + 2][d], p[f + 3][d])) }
            }
            #[inline(always)]
            fn lane0(self) -> f32 {
                // SAFETY: see the module note.
                unsafe { _mm_cvtss_f32(self.0) }
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm_add_ps(self.0, o.0)) }
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm_sub_ps(self.0, o.0)) }
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm_mul_ps(self.0, o.0)) }
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm_div_ps(self.0, o.0)) }
            }
            #[inline(always)]
            fn min(self, o: Self) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm_min_ps(self.0, o.0)) }
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm_max_ps(self.0, o.0)) }
            }
            #[inline(always)]
            fn gt(self, o: Self) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm_cmpgt_ps(self.0, o.0)) }
            }
            #[inline(always)]
            fn select(mask: Self, a: Self, b: Self) -> Self {
                // SAFETY: see the module note.
                unsafe {
                    Self(_mm_or_ps(
                        _mm_and_ps(mask.0, a.0),
                        _mm_andnot_ps(mask.0, b.0),
                    ))
                }
            }
            #[inline(always)]
            fn sum(self) -> f32 {
                // SAFETY: see the module note.
                unsafe {
                    let pairs = _mm_add_ps(self.0, _mm_movehl_ps(self.0, self.0));
                    _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)))
                }
            }
            #[inline(always)]
            fn exponent(self) -> Self {
                // SAFETY: see the module note.
                unsafe {
                    let field = _mm_and_si128(
                        _mm_srli_epi32::<23>(_mm_castps_si128(self.0)),
                        _mm_set1_epi32(0xff),
                    );
                    Self(_mm_cvtepi32_ps(_mm_sub_epi32(field, _mm_set1_epi32(127))))
                }
            }
            #[inline(always)]
            fn mantissa(self) -> Self {
                // SAFETY: see the module note.
                unsafe {
                    let bits = _mm_castps_si128(self.0);
                    Self(_mm_castsi128_ps(_mm_or_si128(
                        _mm_and_si128(bits, _mm_set1_epi32(0x007f_ffff)),
                        _mm_set1_epi32(0x3f80_0000),
                    )))
                }
            }
            #[inline(always)]
            fn pow2i(self) -> Self {
                // SAFETY: see the module note.
                unsafe {
                    let biased = _mm_add_epi32(_mm_cvttps_epi32(self.0), _mm_set1_epi32(127));
                    Self(_mm_castsi128_ps(_mm_slli_epi32::<23>(biased)))
                }
            }
            #[cfg(test)]
            fn to_vec(self) -> Vec<f32> {
                let mut out = [0.0f32; 4];
                // SAFETY: see the module note; writes 16 bytes into a 16-byte array.
                unsafe { _mm_storeu_ps(out.as_mut_ptr(), self.0) };
                out.to_vec()
            }
        }
    }

    /// SAFETY (every `unsafe` block below): an `F8` is only made on a CPU with AVX2, in
    /// `Layout::optimize_avx2` after `is_x86_feature_detected!("avx2")` (and in a test,
    /// likewise guarded); the intrinsics read and write no memory but their arguments
    /// (`to_vec`: its own local array).
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    pub mod avx2 {
        use std::arch::x86_64::*;

        #[derive(Clone, Copy)]
        pub struct F8(__m256);

        impl super::Lanes for F8 {
            const WIDTH: usize = 8;
            #[inline(always)]
            fn splat(v: f32) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm256_set1_ps(v)) }
            }
            #[inline(always)]
            fn load(v: &[f32]) -> Self {
                // SAFETY: see the module note.
                unsafe {
                    Self(_mm256_setr_ps(
                        v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7],
                    ))
                }
            }
            #[inline(always)]
            fn gather<const D: usize, const N: usize>(
                p: &[[f32; D]; N],
                first: usize,
                d: usize,
            ) -> Self {
                let f = first;
                // SAFETY: see the module note.
                unsafe {
                    Self(_mm256_setr_ps(
                        p[f][d],
                        p[f + 1][d],
                        p[f + 2][d],
                        p[f + 3][d],
                        p[f + 4][d],
                        p[f + 5][d],
                        p[f + 6][d],
                        p[f + 7][d],
                    ))
                }
            }
            #[inline(always)]
            fn lane0(self) -> f32 {
                // SAFETY: see the module note.
                unsafe { _mm256_cvtss_f32(self.0) }
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm256_add_ps(self.0, o.0)) }
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm256_sub_ps(self.0, o.0)) }
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm256_mul_ps(self.0, o.0)) }
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm256_div_ps(self.0, o.0)) }
            }
            #[inline(always)]
            fn min(self, o: Self) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm256_min_ps(self.0, o.0)) }
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                // SAFETY: see the module note.
                unsafe { Self(_mm256_max_ps(self.0, o.0)) }
            }
            #[inline(always)]
            fn gt(self, o: Self) -> Self {
                // SAFETY: see the module note. (SSE's cmpgtps is this predicate.)
                unsafe { Self(_mm256_cmp_ps::<_CMP_GT_OS>(self.0, o.0)) }
            }
            #[inline(always)]
            fn select(mask: Self, a: Self, b: Self) -> Self {
                // SAFETY: see the module note.
                unsafe {
                    Self(_mm256_or_ps(
                        _mm256_and_ps(mask.0, a.0),
                        _mm256_andnot_ps(mask.0, b.0),
                    ))
                }
            }
            #[inline(always)]
            fn sum(self) -> f32 {
                // SAFETY: see the module note.
                unsafe {
                    let quad = _mm_add_ps(
                        _mm256_castps256_ps128(self.0),
                        _mm256_extractf128_ps::<1>(self.0),
                    );
                    let pairs = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
                    _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)))
                }
            }
            #[inline(always)]
            fn exponent(self) -> Self {
                // SAFETY: see the module note.
                unsafe {
                    let field = _mm256_and_si256(
                        _mm256_srli_epi32::<23>(_mm256_castps_si256(self.0)),
                        _mm256_set1_epi32(0xff),
                    );
                    Self(_mm256_cvtepi32_ps(_mm256_sub_epi32(
                        field,
                        _mm256_set1_epi32(127),
                    )))
                }
            }
            #[inline(always)]
            fn mantissa(self) -> Self {
                // SAFETY: see the module note.
                unsafe {
                    let bits = _mm256_castps_si256(self.0);
                    Self(_mm256_castsi256_ps(_mm256_or_si256(
                        _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)),
                        _mm256_set1_epi32(0x3f80_0000),
                    )))
                }
            }
            #[inline(always)]
            fn pow2i(self) -> Self {
                // SAFETY: see the module note.
                unsafe {
                    let biased =
                        _mm256_add_epi32(_mm256_cvttps_epi32(self.0), _mm256_set1_epi32(127));
                    Self(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased)))
                }
            }
            #[cfg(test)]
            fn to_vec(self) -> Vec<f32> {
                let mut out = [0.0f32; 8];
                // SAFETY: see the module note; writes 32 bytes into a 32-byte array.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr(), self.0) };
                out.to_vec()
            }
        }
    }
}

/// Timing of one UMAP on generated clusters, for `latentlens bench reduce`.
#[derive(Debug, Clone, Serialize)]
pub struct UmapBenchReport {
    pub rows: usize,
    pub width: usize,
    pub clusters: usize,
    pub seed: u64,
    pub seconds: f64,
    /// Process CPU time (all threads), 10 ms resolution.
    pub cpu_seconds: Option<f64>,
    pub trustworthiness_15: f64,
    pub init: UmapInit,
    pub graph_components: usize,
    pub stages: UmapSeconds,
}

/// `clusters` Gaussian blobs in `width` dimensions (row-major), centres uniform in
/// [-5, 5)^width and unit spread, from the counter generator `bench_uniform`, so
/// benches/umap_learn.py rebuilds the same points. Row i belongs to cluster i % clusters.
/// Normal draws: Box-Muller on two uniforms (indices 2m and 2m+1 of stream 2^40).
pub fn bench_clusters(rows: usize, width: usize, clusters: usize, seed: u64) -> Vec<f32> {
    use crate::analysis::pca::bench_uniform;
    let centres: Vec<f32> = (0..clusters * width)
        .map(|i| 10.0 * bench_uniform(seed, i as u64))
        .collect();
    let mut out = Vec::with_capacity(rows * width);
    for i in 0..rows {
        let c = i % clusters;
        for j in 0..width {
            let m = (i * width + j) as u64;
            let u1 = 0.5 - bench_uniform(seed, (1u64 << 40) + 2 * m) as f64; // (0, 1]
            let u2 = bench_uniform(seed, (1u64 << 40) + 2 * m + 1) as f64 + 0.5;
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            out.push(centres[c * width + j] + z as f32);
        }
    }
    out
}

/// UMAP with default parameters on [`bench_clusters`] data, timed; trustworthiness at 15.
pub fn bench_umap(
    rows: usize,
    width: usize,
    clusters: usize,
    seed: u64,
) -> Result<UmapBenchReport> {
    let x = bench_clusters(rows, width, clusters, seed);
    let params = UmapParams {
        seed,
        ..Default::default()
    };
    let cpu0 = crate::analysis::pca::process_cpu_seconds();
    let t0 = std::time::Instant::now();
    let fit = umap(&x, width, &params, &crate::progress::Hidden)?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_seconds = cpu0
        .zip(crate::analysis::pca::process_cpu_seconds())
        .map(|(a, b)| b - a);
    let t = crate::analysis::quality::trustworthiness(&x, width, &fit.embedding, 2, 15)?;
    Ok(UmapBenchReport {
        rows,
        width,
        clusters,
        seed,
        seconds,
        cpu_seconds,
        trustworthiness_15: t,
        init: fit.init,
        graph_components: fit.graph_components,
        stages: fit.seconds,
    })
}

#[cfg(test)]
#[allow(clippy::print_stdout)] // ignored benchmarks report their figures
mod tests {
    use super::*;

    /// x^y for x > 0 as 2^(y log2 x) with polynomial log2 and exp2 (relative error ~1e-6,
    /// measured in the tests): libm's powf was half the SGD's time, and umap-learn's numba
    /// `fastmath` pow is likewise approximate.
    fn fast_pow(x: f32, y: f32) -> f32 {
        lanes::scalar::exp2(y * lanes::scalar::log2(x))
    }

    #[test]
    fn fast_pow_is_accurate() {
        let mut worst = 0.0f64;
        for i in 1..20_000 {
            let x = i as f32 * 0.01;
            for y in [0.895_061_f32, -0.104_939, 1.334_167, 0.5] {
                let exact = (x as f64).powf(y as f64);
                let rel = ((fast_pow(x, y) as f64 - exact) / exact).abs();
                worst = worst.max(rel);
            }
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
    }

    /// The SSE2 and AVX2 lanes and their scalar twin agree bit for bit, so an embedding
    /// does not depend on the platform: log2 and exp2 over a wide range of inputs, then
    /// whole layouts in 1, 2 and 3 dimensions, also with more negatives than one batch holds.
    #[test]
    fn simd_lanes_match_the_scalar_twin_bit_for_bit() {
        use lanes::{scalar::Scalar4, Lanes, F4};
        fn bits<V: Lanes>(x: &[f32], f: impl Fn(V) -> V) -> Vec<u32> {
            x.chunks_exact(V::WIDTH)
                .flat_map(|c| f(V::load(c)).to_vec())
                .map(f32::to_bits)
                .collect()
        }
        let t: Vec<f32> = (0..80_000).map(|i| i as f32).collect();
        let positive: Vec<f32> = t
            .iter()
            .flat_map(|&t| [t * 1e-3, t * t * t * 1e-7, t * 1e-42, 1.0 + t * 1e-7])
            .collect();
        // Halves included: exp2 rounds ties to even in every variant.
        let any: Vec<f32> = t
            .iter()
            .flat_map(|&t| [t * 0.5 - 150.0, t * 1e-3 - 25.0, -t * 7e-4, t * 3e-3])
            .collect();
        let log2 = bits::<Scalar4>(&positive, Lanes::log2);
        let exp2 = bits::<Scalar4>(&any, Lanes::exp2);
        assert_eq!(bits::<F4>(&positive, Lanes::log2), log2);
        assert_eq!(bits::<F4>(&any, Lanes::exp2), exp2);
        let layouts = |rate| {
            (
                small_layout::<1, Scalar4>(rate),
                small_layout::<2, Scalar4>(rate),
                small_layout::<3, Scalar4>(rate),
            )
        };
        for rate in [5.0, 12.0] {
            let reference = layouts(rate);
            assert_eq!(reference.0, small_layout::<1, F4>(rate));
            assert_eq!(reference.1, small_layout::<2, F4>(rate));
            assert_eq!(reference.2, small_layout::<3, F4>(rate));
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            if std::arch::is_x86_feature_detected!("avx2") {
                use lanes::avx2::F8;
                assert_eq!(bits::<F8>(&positive, Lanes::log2), log2);
                assert_eq!(bits::<F8>(&any, Lanes::exp2), exp2);
                assert_eq!(reference.0, small_layout::<1, F8>(rate));
                assert_eq!(reference.1, small_layout::<2, F8>(rate));
                assert_eq!(reference.2, small_layout::<3, F8>(rate));
            }
        }
    }

    /// The two edges of a pair take their gradients at the positions before the pair, and
    /// a point they share gets both moves: the same as visiting each edge alone from the
    /// same start and adding up the moves.
    #[test]
    fn a_pair_of_edges_adds_up_both_moves() {
        // 0 -> 1 and 2 -> 1 share their tail; no negative sample is due at epoch 0.
        let (heads, tails, eps) = ([0u32, 2], [1u32, 1], [1.0f64, 1.0]);
        let (a, b) = find_ab_params(1.0, 0.1);
        let layout = Layout {
            dim: 2,
            heads: &heads,
            tails: &tails,
            epochs_per_sample: &eps,
            a: a as f32,
            b: b as f32,
            gamma: 1.0,
            initial_alpha: 1.0,
            negative_sample_rate: 5.0,
            n_epochs: 10,
        };
        let start = vec![[0.0f32, 0.0], [1.0, 0.5], [2.5, 1.0]];
        let visit = |edges: &[usize]| {
            let mut emb = start.clone();
            let mut sgd = Sgd::<lanes::F4>::new(&layout);
            let mut rng = XorShift::new(1);
            match *edges {
                [e] => sgd.visit::<2, 1>([e], &mut emb, &mut rng, 0.0, 1.0),
                [e, f] => sgd.visit::<2, 2>([e, f], &mut emb, &mut rng, 0.0, 1.0),
                _ => unreachable!(),
            }
            emb
        };
        let (first, second, pair) = (visit(&[0]), visit(&[1]), visit(&[0, 1]));
        let moved = |after: &[[f32; 2]], p: usize, d: usize| after[p][d] - start[p][d];
        assert!(moved(&first, 1, 0) < -0.01 && moved(&second, 1, 0) > 0.01);
        for p in 0..3 {
            for d in 0..2 {
                let expected = start[p][d] + moved(&first, p, d) + moved(&second, p, d);
                assert!(
                    (pair[p][d] - expected).abs() < 1e-6,
                    "point {p} coordinate {d}: {} vs {expected}",
                    pair[p][d]
                );
            }
        }
    }

    /// 40 epochs of the SGD on a 200-point fuzzy graph from a random start.
    fn small_layout<const D: usize, V: lanes::Lanes>(negative_sample_rate: f64) -> Vec<u32> {
        let (n, n_epochs) = (200, 40);
        let x = bench_clusters(n, 4, 3, 9);
        let knn = exact_knn(&x, 4, 10, true).unwrap();
        let (s, r) = smooth_knn_dist(&knn.distances, 10, 1.0);
        let graph = fuzzy_union(
            n,
            &membership_strengths(&knn.indices, &knn.distances, 10, &s, &r),
        );
        let (heads, tails, weights) = graph.edges();
        let epochs_per_sample = make_epochs_per_sample(&weights, n_epochs);
        let (a, b) = find_ab_params(1.0, 0.1);
        let layout = Layout {
            dim: D,
            heads: &heads,
            tails: &tails,
            epochs_per_sample: &epochs_per_sample,
            a: a as f32,
            b: b as f32,
            gamma: 1.0,
            initial_alpha: 1.0,
            negative_sample_rate,
            n_epochs,
        };
        let start = crate::rng::gaussian(9, 0, n * D);
        let mut emb: Vec<[f32; D]> = start
            .chunks_exact(D)
            .map(|c| std::array::from_fn(|d| 5.0 * c[d]))
            .collect();
        let mut rng = XorShift::new(9);
        layout.optimize_fixed::<D, V>(&mut emb, &mut rng, &crate::progress::Hidden);
        assert!(emb.iter().flatten().all(|v| v.is_finite()));
        emb.iter().flatten().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn ab_params_match_umap_learn() {
        // umap.umap_.find_ab_params(spread, min_dist), umap-learn 0.5.12.
        for (spread, min_dist, a, b) in [
            (1.0, 0.1, 1.5769434602697652, 0.8950608778515733),
            (1.0, 0.5, 0.5830300203414425, 1.3341669924314914),
            (2.0, 0.01, 0.6353444078965497, 0.7955528900090268),
        ] {
            let (fa, fb) = find_ab_params(spread, min_dist);
            assert!(
                (fa - a).abs() < 1e-4 * a && (fb - b).abs() < 1e-4 * b,
                "({spread}, {min_dist}): {fa} {fb}"
            );
        }
    }

    /// benches/umap_fixture.py: 40 x 5 uniform points, 6 neighbours.
    #[test]
    fn fuzzy_graph_matches_umap_learn() {
        let x: Vec<f32> = (0..200)
            .map(|i| crate::analysis::pca::bench_uniform(5, i))
            .collect();
        let k = 6;
        let knn = exact_knn(&x, 5, k, true).unwrap();
        let (sigmas, rhos) = smooth_knn_dist(&knn.distances, k, 1.0);
        let sig_ref = [
            0.0661325454711914,
            0.2613258361816406,
            0.13065147399902344,
            0.23027801513671875,
        ];
        let rho_ref = [
            0.3820275664329529,
            0.2864503264427185,
            0.36729562282562256,
            0.3934413194656372,
        ];
        for i in 0..4 {
            assert!(
                (sigmas[i] - sig_ref[i]).abs() < 1e-5 * sig_ref[i],
                "sigma {i}: {}",
                sigmas[i]
            );
            assert!((rhos[i] - rho_ref[i]).abs() < 1e-6, "rho {i}: {}", rhos[i]);
        }
        let directed = membership_strengths(&knn.indices, &knn.distances, k, &sigmas, &rhos);
        let g = fuzzy_union(40, &directed);
        assert_eq!(g.indices.len(), 252);
        let total: f64 = g.weights.iter().map(|&w| w as f64).sum();
        assert!((total - 147.77586364746094).abs() < 1e-3, "total {total}");
        let row0: Vec<(u32, f32)> = (g.indptr[0]..g.indptr[1])
            .map(|p| (g.indices[p], g.weights[p]))
            .collect();
        let ref0 = [
            (1, 0.3589005172252655),
            (7, 1.0),
            (11, 1.0),
            (17, 0.5586510896682739),
            (24, 0.18171195685863495),
            (27, 0.2957974970340729),
            (32, 0.32377955317497253),
            (37, 0.4528806805610657),
        ];
        assert_eq!(row0.len(), ref0.len());
        for ((j, w), (rj, rw)) in row0.iter().zip(ref0) {
            assert_eq!(*j, rj);
            assert!((*w as f64 - rw).abs() < 1e-5, "edge 0-{j}: {w} vs {rw}");
        }
    }

    /// One connected blob: Krylov-Schur and the dense eigensolver find the same subspace.
    #[test]
    fn krylov_spectral_matches_dense() {
        let n = 400;
        let x = crate::rng::gaussian(3, 0, n * 3);
        let knn = exact_knn(&x, 3, 10, true).unwrap();
        let (s, r) = smooth_knn_dist(&knn.distances, 10, 1.0);
        let g = fuzzy_union(
            n,
            &membership_strengths(&knn.indices, &knn.distances, 10, &s, &r),
        );
        assert_eq!(g.components().1, 1);
        let op = NormalizedAdjacency::new(&g);
        let dense = op.dense_top(2).unwrap();
        let krylov = op.krylov_top(2, 1, 1e-8).unwrap();
        for c in 0..2 {
            let dot: f64 = (0..n).map(|i| dense[(i, c)] * krylov[(i, c)]).sum();
            assert!((dot.abs() - 1.0).abs() < 1e-6, "eigenvector {c}: {dot}");
        }
        // And they are eigenvectors of the Laplacian: L v = lambda v.
        let mut lv = vec![0.0; n];
        let v: Vec<f64> = (0..n).map(|i| dense[(i, 0)]).collect();
        op.apply_vec(&v, &mut lv);
        let lambda: f64 = lv.iter().zip(&v).map(|(a, b)| a * b).sum();
        let resid: f64 = lv
            .iter()
            .zip(&v)
            .map(|(a, b)| (a - lambda * b).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(resid < 1e-8, "residual {resid}");
    }

    #[test]
    fn separates_clusters_like_umap_learn_and_is_deterministic() {
        // 4 clusters of 150 points in 10-d; umap-learn 0.5.12 on the same points
        // (python benches/umap_learn.py --rows 600 --width 10 --clusters 4 --seed 1)
        // reached trustworthiness(k=15) = UMAP_LEARN_T15.
        const UMAP_LEARN_T15: f64 = 0.9511794723666473;
        let x = bench_clusters(600, 10, 4, 1);
        let params = UmapParams {
            seed: 1,
            ..Default::default()
        };
        let fit = umap(&x, 10, &params, &crate::progress::Hidden).unwrap();
        assert_eq!(fit.embedding.len(), 1200);
        assert!(fit.embedding.iter().all(|v| v.is_finite()));
        let t = crate::analysis::quality::trustworthiness(&x, 10, &fit.embedding, 2, 15).unwrap();
        assert!(
            (t - UMAP_LEARN_T15).abs() < 0.02,
            "trustworthiness {t} vs umap-learn {UMAP_LEARN_T15}"
        );
        let again = umap(&x, 10, &params, &crate::progress::Hidden).unwrap();
        assert_eq!(fit.embedding, again.embedding);
    }

    #[test]
    fn subsamples_to_max_points() {
        let x = bench_clusters(300, 4, 3, 2);
        let params = UmapParams {
            seed: 2,
            n_epochs: Some(20),
            max_points: 120,
            ..Default::default()
        };
        let fit = umap(&x, 4, &params, &crate::progress::Hidden).unwrap();
        assert_eq!(fit.sample_indices.len(), 120);
        assert_eq!(fit.embedding.len(), 240);
        assert_eq!(fit.n_input_rows, 300);
        assert!(
            umap(&x[..40], 4, &params, &crate::progress::Hidden).is_err(),
            "10 points < 15 neighbours"
        );
    }

    #[test]
    #[ignore = "benchmark: cargo test --lib analysis::umap -- --ignored --nocapture"]
    fn bench_5000x50_10_clusters() {
        let r = bench_umap(5000, 50, 10, 0).unwrap();
        println!("{}", serde_json::to_string_pretty(&r).unwrap());
    }
}
