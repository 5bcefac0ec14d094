//! Principal component analysis that streams: rows arrive in batches, only the width x
//! width Gram matrix is kept, so memory does not grow with the number of rows (a site
//! recorded over every step and position easily has millions of rows).
//!
//! Ratios are fractions of the TOTAL variance (trace of the covariance), as scikit-learn
//! reports them, not fractions of the kept components' variance (linfa's convention).
//!
//! Wide inputs with fewer rows than columns (an `image` site of 3072 pixels over a few
//! dozen samples, many of them constant) have a covariance of rank < rows: its width x
//! width eigendecomposition has thousands of zero eigenvalues and did not converge. For
//! them the accumulator keeps the rows (at most width x width values, the size of the
//! Gram it holds anyway) and decomposes the rows x rows Gram matrix instead, whose
//! non-zero eigenvalues are the same (the SVD of the centred rows).

use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par, Side};
use serde::Serialize;

use crate::{Error, Result};

/// Rows of a batch are shifted and multiplied in chunks of this many rows, so the working
/// copy stays small (8192 x 768 x 4 B = 25 MB) whatever the caller passes.
const CHUNK_ROWS: usize = 8192;

/// Accumulates count, sum and X^T X (in f64) over batches of rows.
///
/// Rows are shifted by the mean of the first batch before accumulating: the covariance is
/// then a difference of numbers of the size of the spread, not of the size of the mean.
/// Each chunk's product (at most 8192 rows) runs on f32 gemm, twice the speed of f64, and
/// is added into the f64 total: with shifted data the f32 rounding of one chunk
/// (~1e-7 relative per term) is far below the sampling noise of any covariance entry.
#[derive(Debug, Clone)]
pub struct PcaAccumulator {
    width: usize,
    count: u64,
    shift: Option<Vec<f32>>,
    sum: Vec<f64>,
    gram: Mat<f64>,
    chunk: Vec<f32>,
    chunk_gram: Mat<f32>,
    /// The shifted rows, kept while there are fewer rows than columns (then the fit goes
    /// through the rows x rows Gram matrix); dropped once rows reach the width.
    wide_rows: Option<Vec<f32>>,
}

impl PcaAccumulator {
    pub fn new(width: usize) -> Result<Self> {
        if width == 0 {
            return Err(Error::Invalid("PCA: rows have width 0".into()));
        }
        Ok(Self {
            width,
            count: 0,
            shift: None,
            sum: vec![0.0; width],
            gram: Mat::zeros(width, width),
            chunk: Vec::new(),
            chunk_gram: Mat::zeros(width, width),
            wide_rows: Some(Vec::new()),
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Rows seen so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds a batch of rows, row-major, `rows.len() / width` rows of `width` values.
    pub fn push(&mut self, rows: &[f32], width: usize) -> Result<()> {
        check_rows(rows, width, self.width)?;
        if let Some(bad) = rows.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "PCA: value {} at row {} column {} is not finite",
                rows[bad],
                self.count as usize + bad / width,
                bad % width
            )));
        }
        let n = rows.len() / width;
        if n == 0 {
            return Ok(());
        }
        if self.shift.is_none() {
            self.shift = Some(
                column_means(rows, width)
                    .iter()
                    .map(|&m| m as f32)
                    .collect(),
            );
        }
        for start in (0..n).step_by(CHUNK_ROWS) {
            let end = (start + CHUNK_ROWS).min(n);
            self.push_chunk(&rows[start * width..end * width]);
            if let Some(kept) = self.wide_rows.as_mut() {
                kept.extend_from_slice(&self.chunk);
            }
        }
        self.count += n as u64;
        if self.count >= width as u64 {
            self.wide_rows = None;
        }
        Ok(())
    }

    fn push_chunk(&mut self, rows: &[f32]) {
        let d = self.width;
        let n = rows.len() / d;
        let shift = self.shift.as_deref().unwrap_or(&[]);
        self.chunk.clear();
        self.chunk.extend_from_slice(rows);
        for row in self.chunk.chunks_exact_mut(d) {
            for ((v, &s), acc) in row.iter_mut().zip(shift).zip(self.sum.iter_mut()) {
                *v -= s;
                *acc += *v as f64;
            }
        }
        let x = MatRef::from_row_major_slice(&self.chunk, n, d);
        // Lower triangle only: half the flops of a full product; mirrored in `covariance`.
        triangular::matmul(
            self.chunk_gram.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Replace,
            x.transpose(),
            BlockStructure::Rectangular,
            x,
            BlockStructure::Rectangular,
            1.0,
            faer::get_global_parallelism(),
        );
        for j in 0..d {
            let src = self
                .chunk_gram
                .col(j)
                .try_as_col_major()
                .map(|c| c.as_slice());
            let dst = self
                .gram
                .col_mut(j)
                .try_as_col_major_mut()
                .map(|c| c.as_slice_mut());
            if let (Some(src), Some(dst)) = (src, dst) {
                dst[j..]
                    .iter_mut()
                    .zip(&src[j..])
                    .for_each(|(a, &b)| *a += b as f64);
            }
        }
    }

    /// The covariance matrix (divided by n - 1) and the mean.
    fn covariance(&self) -> Result<(Mat<f64>, Vec<f64>)> {
        if self.count < 2 {
            return Err(Error::Invalid(format!(
                "PCA needs at least 2 rows, got {}",
                self.count
            )));
        }
        let n = self.count as f64;
        let d = self.width;
        let m: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let mut cov = Mat::<f64>::zeros(d, d);
        for j in 0..d {
            for i in j..d {
                let c = (self.gram[(i, j)] - n * m[i] * m[j]) / (n - 1.0);
                cov[(i, j)] = c;
                cov[(j, i)] = c;
            }
        }
        let shift = self.shift.as_deref().unwrap_or(&[]);
        let mean = m.iter().zip(shift).map(|(a, &b)| a + b as f64).collect();
        Ok((cov, mean))
    }

    /// Eigendecomposition of the covariance; keeps `n_components` directions (all
    /// eigenvalues are kept, they are cheap and the scree needs them).
    pub fn finish(&self, n_components: usize) -> Result<PcaFit> {
        let d = self.width;
        if n_components == 0 || n_components > d {
            return Err(Error::Invalid(format!(
                "PCA: --components must be in 1..={d} (the width), got {n_components}"
            )));
        }
        if let (Some(rows), true) = (self.wide_rows.as_deref(), self.count >= 2) {
            let n = self.count as f64;
            let shift = self.shift.as_deref().unwrap_or(&[]);
            let mean = self.sum.iter().zip(shift).map(|(s, &b)| s / n + b as f64);
            return self.finish_wide(rows, mean.collect(), n_components);
        }
        let (cov, mean) = self.covariance()?;
        let total_variance: f64 = (0..d).map(|i| cov[(i, i)]).sum();
        let (eigenvalues, vectors) = if d <= F64_EIGH_MAX_WIDTH {
            top_eigen_f64(&cov, n_components)?
        } else {
            top_eigen_refined(&cov, n_components)?
        };
        let components = signed_components(vectors.as_ref(), n_components);
        Ok(PcaFit {
            width: d,
            n_samples: self.count,
            mean,
            components,
            eigenvalues,
            total_variance,
        })
    }

    /// The fit of n < width rows from the n x n Gram matrix of the centred rows Xc:
    /// Xc Xc^T = U L U^T gives the covariance eigenvalues L / (n - 1) (the other
    /// width - n are 0) and components Xc^T u / sqrt(l). Directions past the rank (zero
    /// variance, any orthonormal completion is as good) come from a QR completion.
    fn finish_wide(&self, rows: &[f32], mean: Vec<f64>, k: usize) -> Result<PcaFit> {
        let d = self.width;
        let n = rows.len() / d;
        let shift = self.shift.as_deref().unwrap_or(&[]);
        // `mean` is the data mean; the kept rows are shifted, so centre by mean - shift.
        let centre: Vec<f64> = mean.iter().zip(shift).map(|(m, &s)| m - s as f64).collect();
        let xc = Mat::<f64>::from_fn(n, d, |i, j| rows[i * d + j] as f64 - centre[j]);
        let gram = &xc * xc.transpose();
        let evd = gram.self_adjoint_eigen(Side::Lower).map_err(evd_error)?;
        let (u, s) = (evd.U(), evd.S());
        let scale = n as f64 - 1.0;
        // faer sorts ascending.
        let top: Vec<f64> = (0..n).rev().map(|i| s[i].max(0.0)).collect();
        let mut eigenvalues: Vec<f64> = top.iter().map(|l| l / scale).collect();
        eigenvalues.resize(d, 0.0);
        let total_variance = (0..n).map(|i| gram[(i, i)]).sum::<f64>() / scale;
        // Directions whose variance is rounding noise are left to the completion.
        let tol = top[0] * 1e-12 * n as f64;
        let rank = top.iter().take(k).take_while(|&&l| l > tol).count();
        let mut basis = Mat::<f64>::zeros(d, k);
        for c in 0..rank {
            let uc = Mat::<f64>::from_fn(n, 1, |i, _| u[(i, n - 1 - c)]);
            let v = xc.transpose() * &uc;
            let norm = top[c].sqrt();
            for j in 0..d {
                basis[(j, c)] = v[(j, 0)] / norm;
            }
        }
        if rank < k {
            // Unit vectors on the axes least used by the kept directions, orthonormalised
            // against them (QR keeps the first `rank` columns up to sign).
            let mut weight: Vec<(f64, usize)> = (0..d)
                .map(|j| ((0..rank).map(|c| basis[(j, c)].powi(2)).sum(), j))
                .collect();
            weight.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (c, &(_, j)) in (rank..k).zip(&weight) {
                basis[(j, c)] = 1.0;
            }
            basis = basis.qr().compute_thin_Q();
        }
        let components = signed_components(basis.as_ref(), k);
        Ok(PcaFit {
            width: d,
            n_samples: self.count,
            mean,
            components,
            eigenvalues,
            total_variance,
        })
    }
}

/// Up to this width the covariance is decomposed in f64 directly; above it in f32 with a
/// f64 Rayleigh-Ritz refinement of the kept components (2x faster at 768).
const F64_EIGH_MAX_WIDTH: usize = 512;

fn evd_error(e: impl std::fmt::Debug) -> Error {
    Error::Invalid(format!("PCA eigendecomposition failed: {e:?}"))
}

/// All eigenvalues (descending, clamped at 0: rounding can make tiny ones negative) and
/// the top `k` eigenvectors as columns.
fn top_eigen_f64(cov: &Mat<f64>, k: usize) -> Result<(Vec<f64>, Mat<f64>)> {
    let d = cov.nrows();
    let evd = cov.self_adjoint_eigen(Side::Lower).map_err(evd_error)?;
    let (u, s) = (evd.U(), evd.S());
    // faer sorts ascending.
    let values = (0..d).rev().map(|i| s[i].max(0.0)).collect();
    let vectors = Mat::from_fn(d, k, |j, c| u[(j, d - 1 - c)]);
    Ok((values, vectors))
}

/// f32 eigendecomposition, then the kept subspace is re-orthonormalised and the covariance
/// re-diagonalised on it in f64 (Rayleigh-Ritz): the kept eigenvalues come out with f64
/// accuracy (error ~ square of the f32 subspace error); the rest keep f32 accuracy
/// (~1e-7 of the largest), which is all a scree plot or a cumulative ratio needs.
fn top_eigen_refined(cov: &Mat<f64>, k: usize) -> Result<(Vec<f64>, Mat<f64>)> {
    let d = cov.nrows();
    let cov32 = Mat::<f32>::from_fn(d, d, |i, j| cov[(i, j)] as f32);
    let evd = cov32.self_adjoint_eigen(Side::Lower).map_err(evd_error)?;
    let (u, s) = (evd.U(), evd.S());
    let mut values: Vec<f64> = (0..d).rev().map(|i| (s[i] as f64).max(0.0)).collect();
    let start = Mat::<f64>::from_fn(d, k, |j, c| u[(j, d - 1 - c)] as f64);
    let q = start.qr().compute_thin_Q();
    let cq = cov * &q;
    let h = q.transpose() * &cq;
    let small = h.self_adjoint_eigen(Side::Lower).map_err(evd_error)?;
    let (w, theta) = (small.U(), small.S());
    let w_desc = Mat::<f64>::from_fn(k, k, |i, c| w[(i, k - 1 - c)]);
    for (c, v) in values.iter_mut().take(k).enumerate() {
        *v = theta[k - 1 - c].max(0.0);
    }
    Ok((values, &q * &w_desc))
}

/// The first `k` columns of `u` as row-major f32 components, signed as scikit-learn's
/// `svd_flip(u_based_decision=False)` does: the largest |entry| of each component is
/// positive, so the sign is reproducible.
fn signed_components(u: MatRef<'_, f64>, k: usize) -> Vec<f32> {
    let d = u.nrows();
    let mut components = vec![0.0f32; k * d];
    for c in 0..k {
        let sign = sign_of_largest(u, c);
        for j in 0..d {
            components[c * d + j] = (sign * u[(j, c)]) as f32;
        }
    }
    components
}

fn sign_of_largest(u: MatRef<'_, f64>, col: usize) -> f64 {
    let mut best = 0.0f64;
    for j in 0..u.nrows() {
        if u[(j, col)].abs() > best.abs() {
            best = u[(j, col)];
        }
    }
    if best < 0.0 {
        -1.0
    } else {
        1.0
    }
}

fn check_rows(rows: &[f32], width: usize, expected: usize) -> Result<()> {
    if width != expected {
        return Err(Error::Invalid(format!(
            "rows have width {width}, expected {expected}"
        )));
    }
    if width == 0 || !rows.len().is_multiple_of(width) {
        return Err(Error::Invalid(format!(
            "{} values is not a whole number of rows of width {width}",
            rows.len()
        )));
    }
    Ok(())
}

fn column_means(rows: &[f32], width: usize) -> Vec<f64> {
    let n = rows.len() / width;
    let mut m = vec![0.0f64; width];
    for row in rows.chunks_exact(width) {
        for (a, &v) in m.iter_mut().zip(row) {
            *a += v as f64;
        }
    }
    m.iter_mut().for_each(|a| *a /= n as f64);
    m
}

/// A fitted PCA: mean, kept components and the whole eigenvalue spectrum.
#[derive(Debug, Clone, Serialize)]
pub struct PcaFit {
    pub width: usize,
    pub n_samples: u64,
    /// Column means of the data (length `width`).
    pub mean: Vec<f64>,
    /// Kept components, row-major `n_components x width`, orthonormal rows, sign fixed so
    /// the largest |entry| of each is positive.
    pub components: Vec<f32>,
    /// All `width` eigenvalues of the covariance (divided by n - 1), descending.
    pub eigenvalues: Vec<f64>,
    /// Trace of the covariance = sum of all eigenvalues.
    pub total_variance: f64,
}

impl PcaFit {
    /// Fits in one call on rows already in memory.
    pub fn fit(rows: &[f32], width: usize, n_components: usize) -> Result<PcaFit> {
        let mut acc = PcaAccumulator::new(width)?;
        acc.push(rows, width)?;
        acc.finish(n_components)
    }

    pub fn n_components(&self) -> usize {
        self.components.len() / self.width
    }

    /// Component `c` (0-based) as a slice of length `width`.
    pub fn component(&self, c: usize) -> &[f32] {
        &self.components[c * self.width..(c + 1) * self.width]
    }

    /// Singular values of the centred data: sqrt(eigenvalue * (n - 1)).
    pub fn singular_values(&self) -> Vec<f64> {
        let scale = self.n_samples as f64 - 1.0;
        self.eigenvalues
            .iter()
            .map(|l| (l * scale).sqrt())
            .collect()
    }

    /// Eigenvalue / total variance for every component (all `width` of them).
    pub fn explained_variance_ratio(&self) -> Vec<f64> {
        if self.total_variance <= 0.0 {
            return vec![0.0; self.eigenvalues.len()];
        }
        self.eigenvalues
            .iter()
            .map(|l| l / self.total_variance)
            .collect()
    }

    /// Running sum of `explained_variance_ratio`.
    pub fn cumulative_ratio(&self) -> Vec<f64> {
        let mut acc = 0.0;
        self.explained_variance_ratio()
            .into_iter()
            .map(|r| {
                acc += r;
                acc
            })
            .collect()
    }

    /// The fewest components whose cumulative ratio reaches `fraction` (e.g. 0.9).
    pub fn components_for(&self, fraction: f64) -> usize {
        let cum = self.cumulative_ratio();
        // A small slack so that exactly-reached fractions are not missed by rounding.
        cum.iter()
            .position(|&c| c >= fraction - 1e-12)
            .map_or(cum.len(), |i| i + 1)
    }

    /// (sum of eigenvalues)^2 / sum of squared eigenvalues: the effective number of
    /// dimensions the variance is spread over (d for isotropic data, 1 for a line).
    pub fn participation_ratio(&self) -> f64 {
        let s: f64 = self.eigenvalues.iter().sum();
        let s2: f64 = self.eigenvalues.iter().map(|l| l * l).sum();
        if s2 > 0.0 {
            s * s / s2
        } else {
            0.0
        }
    }

    /// Coordinates of rows on the kept components, row-major `n x n_components`.
    pub fn project(&self, rows: &[f32], width: usize) -> Result<Vec<f32>> {
        check_rows(rows, width, self.width)?;
        let k = self.n_components();
        let n = rows.len() / width;
        let mean: Vec<f32> = self.mean.iter().map(|&m| m as f32).collect();
        let mut centred = rows.to_vec();
        for row in centred.chunks_exact_mut(width) {
            row.iter_mut().zip(&mean).for_each(|(v, m)| *v -= m);
        }
        let x = MatRef::from_row_major_slice(&centred, n, width);
        let p = MatRef::from_row_major_slice(&self.components, k, width);
        let mut out = Mat::<f32>::zeros(n, k);
        faer::linalg::matmul::matmul(
            out.as_mut(),
            Accum::Replace,
            x,
            p.transpose(),
            1.0,
            faer::get_global_parallelism(),
        );
        let mut flat = Vec::with_capacity(n * k);
        for i in 0..n {
            for c in 0..k {
                flat.push(out[(i, c)]);
            }
        }
        Ok(flat)
    }

    /// Mean squared reconstruction error per entry of the fitted data when keeping the
    /// first `k` components, from the eigenvalues alone:
    /// (n - 1) / (n d) * sum of the eigenvalues after the first k.
    pub fn reconstruction_mse_closed_form(&self, k: usize) -> f64 {
        let n = self.n_samples as f64;
        let tail: f64 = self.eigenvalues.iter().skip(k).sum();
        (n - 1.0) / (n * self.width as f64) * tail
    }

    /// Mean squared reconstruction error per entry measured on `rows`, for k = 0 ..=
    /// n_components (index k). Uses |x - m|^2 - |P_k (x - m)|^2, exact for orthonormal P.
    pub fn reconstruction_mse(&self, rows: &[f32], width: usize) -> Result<Vec<f64>> {
        let proj = self.project(rows, width)?;
        let k = self.n_components();
        let n = rows.len() / width;
        if n == 0 {
            return Err(Error::Invalid("reconstruction error of zero rows".into()));
        }
        let mut total = 0.0f64;
        for row in rows.chunks_exact(width) {
            total += row
                .iter()
                .zip(&self.mean)
                .map(|(&v, m)| (v as f64 - m).powi(2))
                .sum::<f64>();
        }
        let mut explained = vec![0.0f64; k];
        for p in proj.chunks_exact(k) {
            for (e, &v) in explained.iter_mut().zip(p) {
                *e += (v as f64) * (v as f64);
            }
        }
        let denom = (n * width) as f64;
        let mut out = Vec::with_capacity(k + 1);
        let mut residual = total;
        out.push(residual / denom);
        for e in explained {
            residual -= e;
            out.push(residual.max(0.0) / denom);
        }
        Ok(out)
    }
}

/// Timing of one PCA fit on generated data, for `latentlens bench reduce`.
#[derive(Debug, Clone, Serialize)]
pub struct PcaBenchReport {
    pub rows: usize,
    pub width: usize,
    pub components: usize,
    pub seed: u64,
    pub threads: usize,
    /// Accumulating X^T X over the rows (one pass, batches of 4096 rows).
    pub seconds_accumulate: f64,
    /// Eigendecomposition and extraction of the components.
    pub seconds_eigen: f64,
    /// accumulate + eigen: what scikit-learn's `PCA(n).fit(X)` is compared with.
    pub seconds_fit: f64,
    /// Process CPU time of the fit (both threads count), 10 ms resolution.
    pub cpu_seconds_fit: Option<f64>,
    pub explained_ratio_top: f64,
    pub cumulative_ratio_kept: f64,
}

/// CPU time of this process (user + system, all threads) from /proc/self/stat, in seconds;
/// `None` off Linux. Benchmarks report it beside wall time because the machines they run
/// on are shared: wall time under load says little, CPU time says what the work costs.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every mainstream Linux.
    Some((utime + stime) / 100.0)
}

/// Fits PCA once on [`bench_matrix`] data and times it.
pub fn bench_pca(
    rows: usize,
    width: usize,
    components: usize,
    seed: u64,
) -> Result<PcaBenchReport> {
    let x = bench_matrix(rows, width, seed);
    let cpu0 = process_cpu_seconds();
    let t0 = std::time::Instant::now();
    let mut acc = PcaAccumulator::new(width)?;
    acc.push(&x, width)?;
    let t1 = std::time::Instant::now();
    let fit = acc.finish(components)?;
    let t2 = std::time::Instant::now();
    let cpu_seconds_fit = cpu0.zip(process_cpu_seconds()).map(|(a, b)| b - a);
    let ratio = fit.explained_variance_ratio();
    Ok(PcaBenchReport {
        rows,
        width,
        components,
        seed,
        threads: match faer::get_global_parallelism() {
            Par::Seq => 1,
            Par::Rayon(n) => n.get(),
        },
        seconds_accumulate: (t1 - t0).as_secs_f64(),
        seconds_eigen: (t2 - t1).as_secs_f64(),
        seconds_fit: (t2 - t0).as_secs_f64(),
        cpu_seconds_fit,
        explained_ratio_top: ratio[0],
        cumulative_ratio_kept: fit.cumulative_ratio()[components - 1],
    })
}

/// Memory check of the streaming path, for `latentlens bench reduce`.
#[derive(Debug, Clone, Serialize)]
pub struct PcaStreamingReport {
    pub rows: usize,
    pub width: usize,
    pub batch_rows: usize,
    pub seconds: f64,
    /// Peak resident memory of the process (VmHWM), MiB; `None` off Linux.
    pub peak_rss_mib: Option<f64>,
    /// What holding all rows as f32 would take, MiB.
    pub all_rows_mib: f64,
}

/// Streams `rows` generated rows (iid uniform from [`bench_uniform`]) through the
/// accumulator in batches of `batch_rows` and reports the peak memory of the process.
pub fn bench_pca_streaming(
    rows: usize,
    width: usize,
    batch_rows: usize,
    seed: u64,
) -> Result<PcaStreamingReport> {
    let t0 = std::time::Instant::now();
    let mut acc = PcaAccumulator::new(width)?;
    let mut batch = Vec::with_capacity(batch_rows * width);
    for start in (0..rows).step_by(batch_rows.max(1)) {
        let n = batch_rows.min(rows - start);
        batch.clear();
        let first = (start * width) as u64;
        batch.extend((0..(n * width) as u64).map(|i| bench_uniform(seed, first + i)));
        acc.push(&batch, width)?;
    }
    acc.finish(width.min(10))?;
    Ok(PcaStreamingReport {
        rows,
        width,
        batch_rows,
        seconds: t0.elapsed().as_secs_f64(),
        peak_rss_mib: peak_rss_mib(),
        all_rows_mib: (rows * width * 4) as f64 / (1 << 20) as f64,
    })
}

/// VmHWM from /proc/self/status, in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Uniform in [-0.5, 0.5) from a counter: splitmix64 of (seed, index). Reproduced exactly
/// by benches/sklearn_pca.py with numpy uint64 arithmetic, so both sides fit the same data.
pub fn bench_uniform(seed: u64, index: u64) -> f32 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32) / (1u64 << 24) as f32 - 0.5
}

/// Benchmark data, row-major `rows x width`: 64 latent factors with decaying scales mixed
/// into `width` columns, plus small noise, so the spectrum looks like real activations.
/// Entry (i, j) = sum_r L[i, r] * s_r * W[r, j] + 0.1 * E[i, j] with L, W, E uniform from
/// `bench_uniform` at indices offset by stream (L: 0, W: 2^40, E: 2^41), s_r = 1/sqrt(1+r).
pub fn bench_matrix(rows: usize, width: usize, seed: u64) -> Vec<f32> {
    const RANK: usize = 64;
    let l = Mat::<f32>::from_fn(rows, RANK, |i, r| {
        bench_uniform(seed, (i * RANK + r) as u64) / ((1 + r) as f32).sqrt()
    });
    let w = Mat::<f32>::from_fn(RANK, width, |r, j| {
        bench_uniform(seed, (1u64 << 40) + (r * width + j) as u64)
    });
    let mut x = Mat::<f32>::zeros(rows, width);
    faer::linalg::matmul::matmul(
        x.as_mut(),
        Accum::Replace,
        l.as_ref(),
        w.as_ref(),
        1.0,
        faer::get_global_parallelism(),
    );
    let mut out = Vec::with_capacity(rows * width);
    for i in 0..rows {
        for j in 0..width {
            out.push(x[(i, j)] + 0.1 * bench_uniform(seed, (1u64 << 41) + (i * width + j) as u64));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::print_stdout)] // ignored benchmarks report their figures
mod tests {
    use super::*;

    /// Data = Z diag(s) Q^T with Z having exactly orthonormal, zero-mean columns scaled by
    /// sqrt(n - 1): the covariance is then Q diag(s^2) Q^T exactly.
    fn constructed(n: usize, s: &[f64], seed: u64) -> (Vec<f32>, Mat<f64>) {
        let d = s.len();
        let g = crate::rng::gaussian(seed, 0, n * d);
        // Centre columns, then orthonormalise (QR) so Z^T Z = I exactly.
        let mut z = Mat::<f64>::from_fn(n, d, |i, j| g[i * d + j] as f64);
        for j in 0..d {
            let m: f64 = (0..n).map(|i| z[(i, j)]).sum::<f64>() / n as f64;
            (0..n).for_each(|i| z[(i, j)] -= m);
        }
        let qz = z.qr().compute_thin_Q();
        let h = crate::rng::gaussian(seed, 1, d * d);
        let hq = Mat::<f64>::from_fn(d, d, |i, j| h[i * d + j] as f64);
        let q = hq.qr().compute_Q();
        let scale = (n as f64 - 1.0).sqrt();
        let zs = Mat::<f64>::from_fn(n, d, |i, j| qz[(i, j)] * s[j] * scale);
        let x = &zs * q.transpose();
        // An offset far from the origin checks the shifted accumulation.
        let flat = (0..n)
            .flat_map(|i| (0..d).map(move |j| (i, j)))
            .map(|(i, j)| (x[(i, j)] + 50.0 + j as f64) as f32)
            .collect();
        (flat, q)
    }

    #[test]
    fn eigenvalues_and_components_match_construction() {
        let s = [4.0, 3.0, 2.0, 1.0, 0.5, 0.25];
        let (x, q) = constructed(500, &s, 11);
        // Streaming in uneven batches must give the same as one batch.
        let mut acc = PcaAccumulator::new(6).unwrap();
        for chunk in x.chunks(6 * 37) {
            acc.push(chunk, 6).unwrap();
        }
        let fit = acc.finish(4).unwrap();
        for (l, si) in fit.eigenvalues.iter().zip(&s) {
            assert!((l - si * si).abs() < 1e-3 * si * si, "{l} vs {}", si * si);
        }
        for c in 0..4 {
            let dot: f64 = (0..6).map(|j| fit.component(c)[j] as f64 * q[(j, c)]).sum();
            assert!((dot.abs() - 1.0).abs() < 1e-4, "component {c}: |dot| {dot}");
        }
        let total: f64 = s.iter().map(|v| v * v).sum();
        assert!((fit.explained_variance_ratio()[0] - 16.0 / total).abs() < 1e-4);
        let one = PcaFit::fit(&x, 6, 4).unwrap();
        for (a, b) in one.eigenvalues.iter().zip(&fit.eigenvalues) {
            assert!((a - b).abs() < 1e-5 * fit.eigenvalues[0], "{a} vs {b}");
        }
    }

    #[test]
    fn reconstruction_error_closed_form_matches_explicit_reconstruction() {
        let s = [3.0, 2.0, 1.5, 1.0, 0.3];
        let (x, _) = constructed(300, &s, 5);
        let fit = PcaFit::fit(&x, 5, 5).unwrap();
        let measured = fit.reconstruction_mse(&x, 5).unwrap();
        let proj = fit.project(&x, 5).unwrap();
        for (k, &measured_k) in measured.iter().enumerate() {
            // Explicit: x_hat = mean + sum_{c<k} p_c * component_c.
            let mut sse = 0.0f64;
            for (i, row) in x.chunks_exact(5).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    let mut xh = fit.mean[j];
                    for c in 0..k {
                        xh += proj[i * 5 + c] as f64 * fit.component(c)[j] as f64;
                    }
                    sse += (v as f64 - xh).powi(2);
                }
            }
            let explicit = sse / (300.0 * 5.0);
            let closed = fit.reconstruction_mse_closed_form(k);
            assert!(
                (explicit - closed).abs() < 1e-3 * (1.0 + closed),
                "k={k}: {explicit} vs {closed}"
            );
            assert!(
                (measured_k - closed).abs() < 1e-3 * (1.0 + closed),
                "k={k}: {measured_k} vs {closed}"
            );
        }
    }

    #[test]
    fn isotropic_data_has_participation_ratio_d() {
        let s = [1.0; 8];
        let (x, _) = constructed(400, &s, 3);
        let fit = PcaFit::fit(&x, 8, 2).unwrap();
        assert!(
            (fit.participation_ratio() - 8.0).abs() < 1e-3,
            "{}",
            fit.participation_ratio()
        );
        assert_eq!(fit.components_for(0.5), 4);
        assert_eq!(fit.components_for(1.0), 8);
    }

    #[test]
    fn agrees_with_linfa_up_to_sign() {
        use linfa::prelude::*;
        use linfa_reduction::Pca;
        let (n, d, k) = (200, 7, 3);
        let g = crate::rng::gaussian(9, 0, n * d);
        // Well separated scales (linfa's LOBPCG converges slowly across small gaps) and
        // some correlation so the components are not the axes.
        let scales = [8.0f32, 5.0, 3.0, 2.0, 1.0, 0.5, 0.25];
        let x: Vec<f32> = (0..n)
            .flat_map(|i| {
                let g = &g;
                (0..d).map(move |j| g[i * d + j] * scales[j] + 0.3 * g[i * d] * j as f32)
            })
            .collect();
        let fit = PcaFit::fit(&x, d, k).unwrap();
        let arr = ndarray::Array2::from_shape_fn((n, d), |(i, j)| x[i * d + j] as f64);
        let ds = DatasetBase::from(arr.clone());
        let linfa_fit = Pca::params(k).fit(&ds).unwrap();
        let comps = linfa_fit.components();
        let sv = linfa_fit.singular_values();
        let ours_sv = fit.singular_values();
        for c in 0..k {
            // linfa's truncated SVD (LOBPCG) is iterative: agreement to ~1e-3, not 1e-6.
            assert!(
                (sv[c] - ours_sv[c]).abs() < 2e-3 * sv[c],
                "sv {c}: {} vs {}",
                sv[c],
                ours_sv[c]
            );
            let dot: f64 = (0..d)
                .map(|j| comps[(c, j)] * fit.component(c)[j] as f64)
                .sum();
            assert!((dot.abs() - 1.0).abs() < 2e-3, "component {c}: dot {dot}");
            // Ours is exact (eigh), linfa's iterative: ours captures at least as much.
            assert!(ours_sv[c] >= sv[c] * (1.0 - 1e-6), "sv {c}");
        }
        // Projections agree up to the same per-component sign.
        let proj = fit.project(&x, d).unwrap();
        let lp = linfa_fit.predict(arr);
        let lp = lp.targets();
        for c in 0..k {
            let dot: f64 = (0..d)
                .map(|j| comps[(c, j)] * fit.component(c)[j] as f64)
                .sum();
            for i in 0..n {
                let a = proj[i * k + c] as f64;
                let b = lp[(i, c)] * dot.signum();
                let norm: f64 = (0..d)
                    .map(|j| (x[i * d + j] as f64 - fit.mean[j]).powi(2))
                    .sum::<f64>()
                    .sqrt();
                // |a - b| <= |component difference| * |x - mean|, and |diff| <= 0.07.
                assert!(
                    (a - b).abs() < 0.07 * norm + 1e-4,
                    "row {i} pc {c}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn refined_f32_eigen_matches_f64_eigen() {
        let (n, d, k) = (400, 120, 10);
        let g = crate::rng::gaussian(21, 0, n * d);
        let x = Mat::<f64>::from_fn(n, d, |i, j| g[i * d + j] as f64 / (1.0 + j as f64).sqrt());
        let cov = x.transpose() * &x;
        let (v64, u64_) = top_eigen_f64(&cov, k).unwrap();
        let (v32, u32_) = top_eigen_refined(&cov, k).unwrap();
        for c in 0..k {
            assert!((v64[c] - v32[c]).abs() < 1e-9 * v64[0], "eigenvalue {c}");
            let dot: f64 = (0..d).map(|j| u64_[(j, c)] * u32_[(j, c)]).sum();
            assert!((dot.abs() - 1.0).abs() < 1e-8, "vector {c}: {dot}");
        }
        for c in k..d {
            assert!(
                (v64[c] - v32[c]).abs() < 1e-5 * v64[0],
                "tail eigenvalue {c}"
            );
        }
    }

    #[test]
    fn accumulation_is_exact_far_from_the_origin() {
        // Mean 1000, spread ~1: an unshifted f32 Gram would lose ~6 digits here.
        let (n, d) = (3000, 5);
        let g = crate::rng::gaussian(4, 0, n * d);
        let x: Vec<f32> = g
            .iter()
            .enumerate()
            .map(|(i, &v)| 1000.0 + v * (1 + i % d) as f32)
            .collect();
        let fit = PcaFit::fit(&x, d, d).unwrap();
        // Two-pass f64 covariance, the textbook reference.
        let mean: Vec<f64> = (0..d)
            .map(|j| (0..n).map(|i| x[i * d + j] as f64).sum::<f64>() / n as f64)
            .collect();
        let cov = Mat::<f64>::from_fn(d, d, |a, b| {
            (0..n)
                .map(|i| (x[i * d + a] as f64 - mean[a]) * (x[i * d + b] as f64 - mean[b]))
                .sum::<f64>()
                / (n as f64 - 1.0)
        });
        let mut reference = cov.self_adjoint_eigenvalues(Side::Lower).unwrap();
        reference.reverse();
        for (a, b) in fit.eigenvalues.iter().zip(&reference) {
            assert!((a - b).abs() < 1e-5 * reference[0], "{a} vs {b}");
        }
        for (a, b) in fit.mean.iter().zip(&mean) {
            assert!((a - b).abs() < 1e-9 * b.abs());
        }
    }

    #[test]
    fn rejects_bad_shapes_and_values() {
        let mut acc = PcaAccumulator::new(3).unwrap();
        assert!(acc.push(&[1.0, 2.0], 3).is_err());
        assert!(acc.push(&[1.0, 2.0, 3.0, 4.0], 2).is_err());
        assert!(acc.push(&[1.0, f32::NAN, 3.0], 3).is_err());
        acc.push(&[1.0, 2.0, 3.0], 3).unwrap();
        assert!(acc.finish(2).is_err(), "one row is not enough");
        acc.push(&[2.0, 2.0, 1.0], 3).unwrap();
        assert!(acc.finish(4).is_err());
        assert!(acc.finish(1).is_ok());
    }

    #[test]
    #[ignore = "memory check: cargo test --lib analysis::pca::tests::streaming -- --ignored --nocapture"]
    fn streaming_1000000x256() {
        let r = bench_pca_streaming(1_000_000, 256, 65_536, 0).unwrap();
        println!("{}", serde_json::to_string_pretty(&r).unwrap());
    }

    #[test]
    #[ignore = "benchmark: cargo test --lib analysis::pca -- --ignored --nocapture"]
    fn bench_20000x768_to_50() {
        let r = bench_pca(20000, 768, 50, 0).unwrap();
        println!("{}", serde_json::to_string_pretty(&r).unwrap());
    }
}

#[cfg(test)]
mod wide_tests {
    use super::*;

    /// `rows` x `width` data of rank `rank` plus constant columns (an image site over a
    /// few samples: most pixels are background).
    fn wide(rows: usize, width: usize, rank: usize, seed: u64) -> Vec<f32> {
        let g = crate::rng::gaussian(seed, 0, rows * rank + rank * width);
        let (l, w) = g.split_at(rows * rank);
        (0..rows)
            .flat_map(|i| (0..width).map(move |j| (i, j)))
            .map(|(i, j)| {
                if j % 3 == 0 {
                    // Constant background pixel.
                    -1.0
                } else {
                    (0..rank)
                        .map(|r| l[i * rank + r] * w[r * width + j] / (1.0 + r as f32))
                        .sum::<f32>()
                        + 5.0
                }
            })
            .collect()
    }

    #[test]
    fn wide_rank_deficient_input_fits_through_the_gram_matrix() {
        // The `image` site case: 3072 columns, 24 rows, a third of them constant.
        let (n, d) = (24, 3072);
        let x = wide(n, d, 30, 7);
        let fit = PcaFit::fit(&x, d, 10).unwrap();
        assert_eq!(fit.eigenvalues.len(), d);
        // Rank <= n - 1 = 23: every eigenvalue past it is 0 (the 24th up to rounding).
        assert!(fit.eigenvalues[23] < 1e-9 * fit.eigenvalues[0]);
        assert!(fit.eigenvalues[24..].iter().all(|&l| l == 0.0));
        let sum: f64 = fit.eigenvalues.iter().sum();
        assert!(
            (sum - fit.total_variance).abs() < 1e-9 * sum,
            "{sum} vs {}",
            fit.total_variance
        );
        // Orthonormal components.
        for a in 0..10 {
            for b in 0..10 {
                let dot: f64 = (0..d)
                    .map(|j| fit.component(a)[j] as f64 * fit.component(b)[j] as f64)
                    .sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-5, "{a}.{b} = {dot}");
            }
        }
        // The measured reconstruction error agrees with the eigenvalues'.
        let measured = fit.reconstruction_mse(&x, d).unwrap();
        for (k, m) in measured.iter().enumerate() {
            let closed = fit.reconstruction_mse_closed_form(k);
            assert!(
                (m - closed).abs() < 1e-4 * (1.0 + closed),
                "k={k}: {m} vs {closed}"
            );
        }
    }

    #[test]
    fn gram_and_covariance_eigenvalues_agree() {
        // Second method: the f64 eigendecomposition of the covariance itself, small enough
        // to converge here (60 rows x 150 columns, rank-deficient).
        let (n, d) = (60, 150);
        let x = wide(n, d, 80, 3);
        let fit = PcaFit::fit(&x, d, 8).unwrap();
        let mean: Vec<f64> = (0..d)
            .map(|j| (0..n).map(|i| x[i * d + j] as f64).sum::<f64>() / n as f64)
            .collect();
        let cov = Mat::<f64>::from_fn(d, d, |a, b| {
            (0..n)
                .map(|i| (x[i * d + a] as f64 - mean[a]) * (x[i * d + b] as f64 - mean[b]))
                .sum::<f64>()
                / (n as f64 - 1.0)
        });
        let (reference, vectors) = top_eigen_f64(&cov, 8).unwrap();
        for (a, b) in fit.eigenvalues.iter().zip(&reference) {
            assert!((a - b).abs() < 1e-9 * reference[0], "{a} vs {b}");
        }
        for c in 0..8 {
            let dot: f64 = (0..d)
                .map(|j| fit.component(c)[j] as f64 * vectors[(j, c)])
                .sum();
            assert!((dot.abs() - 1.0).abs() < 1e-5, "component {c}: {dot}");
        }
        // More components than the rank: the completion is still orthonormal.
        let few = wide(5, 40, 2, 9);
        let fit = PcaFit::fit(&few, 40, 6).unwrap();
        assert!(fit.eigenvalues[2..]
            .iter()
            .all(|&l| l < 1e-9 * fit.eigenvalues[0]));
        for a in 0..6 {
            let norm: f64 = fit.component(a).iter().map(|&v| (v as f64).powi(2)).sum();
            assert!((norm - 1.0).abs() < 1e-5, "component {a}: {norm}");
        }
    }
}
