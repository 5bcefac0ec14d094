//! Mutual information between a label and a representation, by two estimators that fail
//! differently: a Gaussian estimate (exact for jointly Gaussian data, blind to anything
//! non-linear) and the k-nearest-neighbour estimators of Kraskov, Stögbauer & Grassberger
//! (2004, algorithm 1) and Ross (2014, for a categorical label), which make no
//! distributional assumption but are biased in high dimension. `infoloss` reports both,
//! on the top principal components of each site.
//!
//! Matrices are row-major `&[f64]` with an explicit width. The kNN estimators search by
//! brute force (O(n²)); subsample with [`subsample`] first (fine to ~5k points).

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Side};
use rand::seq::index;

use crate::{Error, Result};

/// Relative ridge added to every covariance diagonal: keeps log-determinants finite for
/// (nearly) degenerate directions without changing well-conditioned estimates.
const RIDGE: f64 = 1e-9;

/// ψ(x), the digamma function, for x > 0.
pub fn digamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    let mut x = x;
    let mut acc = 0.0;
    // Recurrence ψ(x) = ψ(x + 1) - 1/x up to where the asymptotic series is accurate.
    while x < 10.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    let series = f
        * (-1.0 / 12.0
            + f * (1.0 / 120.0 + f * (-1.0 / 252.0 + f * (1.0 / 240.0 + f * (-1.0 / 132.0)))));
    acc + x.ln() - 0.5 / x + series
}

/// `min(n, max)` row indices drawn without replacement, sorted, deterministic in `seed`.
pub fn subsample(n: usize, max: usize, seed: u64) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    // Stream id fixed for this purpose so other draws from the same seed stay independent.
    let mut rng = crate::rng::stream(seed, 0x4d49_5f53_5542);
    let mut idx = index::sample(&mut rng, n, max).into_vec();
    idx.sort_unstable();
    idx
}

fn check_rows(z: &[f64], width: usize, n_labels: usize, what: &str) -> Result<usize> {
    if width == 0 || !z.len().is_multiple_of(width) {
        return Err(Error::Invalid(format!(
            "{what}: {} values do not make rows of width {width}",
            z.len()
        )));
    }
    let n = z.len() / width;
    if n != n_labels {
        return Err(Error::Invalid(format!(
            "{what}: {n} representation rows but {n_labels} labels"
        )));
    }
    Ok(n)
}

/// Maximum-likelihood covariance (divide by n) of the rows `idx` of a row-major matrix,
/// with the relative ridge on the diagonal.
fn covariance(z: &[f64], width: usize, idx: &[usize]) -> Mat<f64> {
    let n = idx.len() as f64;
    let mut mean = vec![0.0; width];
    for &i in idx {
        for (m, v) in mean.iter_mut().zip(&z[i * width..(i + 1) * width]) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut c = Mat::<f64>::zeros(width, width);
    for &i in idx {
        let row = &z[i * width..(i + 1) * width];
        for a in 0..width {
            let da = row[a] - mean[a];
            for b in 0..=a {
                c[(a, b)] += da * (row[b] - mean[b]);
            }
        }
    }
    for a in 0..width {
        for b in 0..=a {
            let v = c[(a, b)] / n;
            c[(a, b)] = v;
            c[(b, a)] = v;
        }
        c[(a, a)] *= 1.0 + RIDGE;
    }
    c
}

fn log_det(c: &Mat<f64>, what: &str) -> Result<f64> {
    let eig = c
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| Error::Invalid(format!("{what}: eigendecomposition failed: {e:?}")))?;
    let mut sum = 0.0;
    for l in eig {
        if l.is_nan() || l <= 0.0 {
            return Err(Error::Invalid(format!(
                "{what}: covariance is singular (a constant direction); use fewer components"
            )));
        }
        sum += l.ln();
    }
    Ok(sum)
}

/// Gaussian MI (nats) between rows of `z` (`width` columns) and a continuous label:
/// `½ log(det Σ_z · σ²_y / det Σ_(z,y))`.
pub fn gaussian_mi_continuous(z: &[f64], width: usize, y: &[f64]) -> Result<f64> {
    let n = check_rows(z, width, y.len(), "Gaussian MI")?;
    if n <= width + 1 {
        return Err(Error::Invalid(format!(
            "Gaussian MI needs more than {} rows for {width} components, got {n}",
            width + 1
        )));
    }
    let w = width + 1;
    let mut joint = Vec::with_capacity(n * w);
    for i in 0..n {
        joint.extend_from_slice(&z[i * width..(i + 1) * width]);
        joint.push(y[i]);
    }
    let all: Vec<usize> = (0..n).collect();
    let cj = covariance(&joint, w, &all);
    let cz = Mat::from_fn(width, width, |a, b| cj[(a, b)]);
    let var_y = cj[(width, width)];
    if var_y.is_nan() || var_y <= 0.0 {
        return Err(Error::Invalid("Gaussian MI: the label is constant".into()));
    }
    Ok(0.5 * (log_det(&cz, "Gaussian MI")? + var_y.ln() - log_det(&cj, "Gaussian MI")?))
}

/// Gaussian MI (nats) between rows of `z` and a categorical label:
/// `H(Z) - Σ_c p_c H(Z | c)`, every entropy that of a Gaussian, `½ log det(2πe Σ)`.
/// Every class needs more rows than `width`, or its covariance is singular.
pub fn gaussian_mi_categorical(z: &[f64], width: usize, labels: &[u32]) -> Result<f64> {
    let n = check_rows(z, width, labels.len(), "Gaussian MI")?;
    let classes = group_by_label(labels);
    for (c, idx) in &classes {
        if idx.len() <= width {
            return Err(Error::Invalid(format!(
                "Gaussian MI: class {c} has {} rows, needs more than {width} (the number of \
                 components); use fewer components or more samples",
                idx.len()
            )));
        }
    }
    let all: Vec<usize> = (0..n).collect();
    let mut mi = 0.5 * log_det(&covariance(z, width, &all), "Gaussian MI")?;
    for (_, idx) in &classes {
        let p = idx.len() as f64 / n as f64;
        mi -= p * 0.5 * log_det(&covariance(z, width, idx), "Gaussian MI")?;
    }
    Ok(mi)
}

fn group_by_label(labels: &[u32]) -> Vec<(u32, Vec<usize>)> {
    let mut map = std::collections::BTreeMap::<u32, Vec<usize>>::new();
    for (i, &c) in labels.iter().enumerate() {
        map.entry(c).or_default().push(i);
    }
    map.into_iter().collect()
}

/// Max-norm distance between rows `i` and `j`.
fn cheb(z: &[f64], width: usize, i: usize, j: usize) -> f64 {
    let (a, b) = (
        &z[i * width..(i + 1) * width],
        &z[j * width..(j + 1) * width],
    );
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()))
}

/// Strictly inside radius `r`, or exactly tied when `r` is 0 (duplicate points), as in
/// scikit-learn's use of `nextafter(r, 0)` with an inclusive radius query.
fn within(d: f64, r: f64) -> bool {
    if r > 0.0 {
        d < r
    } else {
        d <= 0.0
    }
}

/// The k-th smallest of `v` (k >= 1).
fn kth_smallest(v: &mut [f64], k: usize) -> f64 {
    let (_, kth, _) = v.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
    *kth
}

/// KSG estimator (algorithm 1), nats, between rows of `z` and a continuous label `y`,
/// max-norm in every space: `ψ(k) + ψ(n) - ⟨ψ(n_z + 1) + ψ(n_y + 1)⟩`. Not clipped at
/// 0: small negative values are estimator noise around independence. Scale matters for
/// the joint max-norm, so standardise `z` and `y` first (as scikit-learn does).
pub fn ksg(z: &[f64], width: usize, y: &[f64], k: usize) -> Result<f64> {
    let n = check_rows(z, width, y.len(), "KSG")?;
    if k == 0 || n <= k {
        return Err(Error::Invalid(format!(
            "KSG with k = {k} needs more than k rows, got {n}"
        )));
    }
    let mut dz = vec![0.0; n];
    let mut dy = vec![0.0; n];
    let mut joint = Vec::with_capacity(n - 1);
    let mut sum = 0.0;
    for i in 0..n {
        joint.clear();
        for j in 0..n {
            dz[j] = cheb(z, width, i, j);
            dy[j] = (y[i] - y[j]).abs();
            if j != i {
                joint.push(dz[j].max(dy[j]));
            }
        }
        let eps = kth_smallest(&mut joint, k);
        let nz = (0..n).filter(|&j| j != i && within(dz[j], eps)).count();
        let ny = (0..n).filter(|&j| j != i && within(dy[j], eps)).count();
        sum += digamma(nz as f64 + 1.0) + digamma(ny as f64 + 1.0);
    }
    Ok(digamma(k as f64) + digamma(n as f64) - sum / n as f64)
}

/// Ross's (2014) kNN estimator, nats, between rows of `z` and a categorical label:
/// `ψ(n) + ⟨ψ(k)⟩ - ⟨ψ(n_c)⟩ - ⟨ψ(m)⟩`, where the radius is the distance to the k-th
/// neighbour of the same class and `m` counts all points inside it (itself included).
/// Classes with a single row carry no neighbour information and are left out, as in
/// scikit-learn. Not clipped at 0.
pub fn mixed_ksg(z: &[f64], width: usize, labels: &[u32], k: usize) -> Result<f64> {
    check_rows(z, width, labels.len(), "mixed KSG")?;
    if k == 0 {
        return Err(Error::Invalid("mixed KSG needs k >= 1".into()));
    }
    let classes: Vec<(u32, Vec<usize>)> = group_by_label(labels)
        .into_iter()
        .filter(|(_, idx)| idx.len() > 1)
        .collect();
    let kept: Vec<usize> = classes
        .iter()
        .flat_map(|(_, idx)| idx.iter().copied())
        .collect();
    let n = kept.len();
    if n < 2 || classes.len() < 2 {
        return Err(Error::Invalid(format!(
            "mixed KSG needs at least two classes with two or more rows each, got {} usable \
             classes over {n} rows",
            classes.len()
        )));
    }
    let mut same = Vec::new();
    let mut sum_k = 0.0;
    let mut sum_nc = 0.0;
    let mut sum_m = 0.0;
    for (_, idx) in &classes {
        let kc = k.min(idx.len() - 1);
        for &i in idx {
            same.clear();
            same.extend(
                idx.iter()
                    .filter(|&&j| j != i)
                    .map(|&j| cheb(z, width, i, j)),
            );
            let r = kth_smallest(&mut same, kc);
            let m = kept
                .iter()
                .filter(|&&j| within(cheb(z, width, i, j), r))
                .count();
            sum_k += digamma(kc as f64);
            sum_nc += digamma(idx.len() as f64);
            sum_m += digamma(m as f64);
        }
    }
    let nf = n as f64;
    Ok(digamma(nf) + (sum_k - sum_nc - sum_m) / nf)
}

/// The smallest k [`mixed_ksg`] uses with `labels` when asked for `k`: a class of m rows
/// has only m - 1 same-class neighbours, so its k is lowered to that (classes of one row
/// are left out). Reported beside the estimate so the lowering is never silent.
pub fn mixed_ksg_neighbours(labels: &[u32], k: usize) -> usize {
    group_by_label(labels)
        .iter()
        .filter(|(_, idx)| idx.len() > 1)
        .map(|(_, idx)| k.min(idx.len() - 1))
        .min()
        .unwrap_or(k)
}

/// Above this size (of the smaller side) the top components come from a randomized
/// subspace iteration instead of a full eigendecomposition.
const EXACT_PCA_LIMIT: usize = 128;
/// Power iterations and oversampling of the randomized route (Halko et al. 2011).
const POWER_ITERATIONS: usize = 4;
const OVERSAMPLING: usize = 10;
/// Fixed seed of the randomized route's test matrix: the same data give the same scores.
const PCA_SEED: u64 = 0x0050_4341;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PcaRoute {
    Covariance,
    Gram,
    Randomized,
}

/// Scores of the rows of `x` (`n x width`, f32) on their top `k` principal components,
/// row-major `n x k` f64. Small problems use an exact eigendecomposition (of the
/// `width x width` covariance, or of the `n x n` Gram matrix when there are fewer rows
/// than columns); large ones a randomized subspace iteration that recovers the same top
/// components. Signs are arbitrary (MI does not care).
pub(crate) fn principal_scores(x: &[f32], width: usize, k: usize) -> Result<Vec<f64>> {
    let n = x.len().checked_div(width).unwrap_or(0);
    let route = if n.min(width) > EXACT_PCA_LIMIT {
        PcaRoute::Randomized
    } else if width > n {
        PcaRoute::Gram
    } else {
        PcaRoute::Covariance
    };
    scores_by_route(x, width, k, route)
}

fn scores_by_route(x: &[f32], width: usize, k: usize, route: PcaRoute) -> Result<Vec<f64>> {
    if width == 0 || !x.len().is_multiple_of(width) {
        return Err(Error::Invalid(format!(
            "PCA: {} values do not make rows of width {width}",
            x.len()
        )));
    }
    let n = x.len() / width;
    let k = k.min(width).min(n.saturating_sub(1));
    if k == 0 {
        return Err(Error::Invalid(format!(
            "PCA needs at least 2 rows and 1 column, got {n} x {width}"
        )));
    }
    let mut means = vec![0.0f64; width];
    for row in x.chunks_exact(width) {
        for (m, &v) in means.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    means.iter_mut().for_each(|m| *m /= n as f64);
    let mut buf = Vec::with_capacity(x.len());
    for row in x.chunks_exact(width) {
        buf.extend(row.iter().zip(&means).map(|(&v, m)| v as f64 - m));
    }
    let xc = MatRef::from_row_major_slice(&buf, n, width);
    let par = faer::get_global_parallelism();
    let eig_err = |e| Error::Invalid(format!("PCA: eigendecomposition failed: {e:?}"));
    let scores: Mat<f64> = match route {
        PcaRoute::Covariance => {
            let mut cov = Mat::<f64>::zeros(width, width);
            matmul(&mut cov, Accum::Replace, xc.transpose(), xc, 1.0, par);
            let eig = cov.self_adjoint_eigen(Side::Lower).map_err(eig_err)?;
            let u = eig.U();
            // Eigenvalues ascend: the top components are the last columns.
            let top = Mat::from_fn(width, k, |j, c| u[(j, width - 1 - c)]);
            let mut s = Mat::<f64>::zeros(n, k);
            matmul(&mut s, Accum::Replace, xc, &top, 1.0, par);
            s
        }
        PcaRoute::Gram => {
            let mut gram = Mat::<f64>::zeros(n, n);
            matmul(&mut gram, Accum::Replace, xc, xc.transpose(), 1.0, par);
            let eig = gram.self_adjoint_eigen(Side::Lower).map_err(eig_err)?;
            let (u, s) = (eig.U(), eig.S().column_vector());
            // Xc = U S^½ Vᵀ, so the scores Xc V are U S^½.
            Mat::from_fn(n, k, |i, c| {
                u[(i, n - 1 - c)] * s[n - 1 - c].max(0.0).sqrt()
            })
        }
        PcaRoute::Randomized => randomized_scores(xc, k).map_err(eig_err)?,
    };
    let mut out = Vec::with_capacity(n * k);
    for i in 0..n {
        out.extend((0..k).map(|c| scores[(i, c)]));
    }
    Ok(out)
}

/// Top-`k` scores by subspace iteration: an orthonormal basis `Q` of the range of `Xc`'s
/// leading singular vectors, then the exact SVD of the small `Qᵀ Xc` (via its Gram).
fn randomized_scores(
    xc: MatRef<'_, f64>,
    k: usize,
) -> std::result::Result<Mat<f64>, faer::linalg::evd::EvdError> {
    let (n, d) = (xc.nrows(), xc.ncols());
    let l = (k + OVERSAMPLING).min(n).min(d);
    let par = faer::get_global_parallelism();
    let g = crate::rng::gaussian(PCA_SEED, 0, d * l);
    let omega = Mat::from_fn(d, l, |i, j| g[i * l + j] as f64);
    let mut y = Mat::<f64>::zeros(n, l);
    matmul(&mut y, Accum::Replace, xc, &omega, 1.0, par);
    let mut z = Mat::<f64>::zeros(d, l);
    for _ in 0..POWER_ITERATIONS {
        // Re-orthonormalise at every half step so small directions are not lost.
        let q = y.qr().compute_thin_Q();
        matmul(&mut z, Accum::Replace, xc.transpose(), &q, 1.0, par);
        let qz = z.qr().compute_thin_Q();
        matmul(&mut y, Accum::Replace, xc, &qz, 1.0, par);
    }
    let q = y.qr().compute_thin_Q();
    let mut b = Mat::<f64>::zeros(l, d);
    matmul(&mut b, Accum::Replace, q.transpose(), xc, 1.0, par);
    let mut bbt = Mat::<f64>::zeros(l, l);
    matmul(&mut bbt, Accum::Replace, &b, b.transpose(), 1.0, par);
    let eig = bbt.self_adjoint_eigen(Side::Lower)?;
    let (u, s) = (eig.U(), eig.S().column_vector());
    let top = Mat::from_fn(l, k, |i, c| {
        u[(i, l - 1 - c)] * s[l - 1 - c].max(0.0).sqrt()
    });
    let mut scores = Mat::<f64>::zeros(n, k);
    matmul(&mut scores, Accum::Replace, &q, &top, 1.0, par);
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    fn uniform_fixture(n: usize, seed: usize) -> Vec<f64> {
        // Same formula as the numpy script that produced the scikit-learn constants.
        (0..n)
            .map(|i| {
                let v = (((i * 7 + seed) as f64) * 12.9898).sin() * 43758.5453;
                v - v.floor()
            })
            .collect()
    }

    fn standardise(v: &[f64]) -> Vec<f64> {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let s = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt();
        v.iter().map(|x| x / s).collect()
    }

    /// `n` pairs from a bivariate standard normal with correlation `rho`.
    fn correlated(n: usize, rho: f64, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let a = rng::gaussian(seed, 1, n);
        let b = rng::gaussian(seed, 2, n);
        let x: Vec<f64> = a.iter().map(|&v| v as f64).collect();
        let y = a
            .iter()
            .zip(&b)
            .map(|(&u, &v)| rho * u as f64 + (1.0 - rho * rho).sqrt() * v as f64)
            .collect();
        (x, y)
    }

    #[test]
    fn digamma_known_values() {
        let gamma = 0.577_215_664_901_532_9;
        assert!((digamma(1.0) + gamma).abs() < 1e-12);
        assert!((digamma(0.5) + gamma + 2.0 * 2f64.ln()).abs() < 1e-12);
        // ψ(n) = H_{n-1} - γ.
        let h9: f64 = (1..10).map(|i| 1.0 / i as f64).sum();
        assert!((digamma(10.0) - (h9 - gamma)).abs() < 1e-12);
        assert!((digamma(1000.0) - 6.907_255_195_648_812).abs() < 1e-12);
    }

    #[test]
    fn ksg_matches_scikit_learn() {
        // mutual_info_regression(z[:, None], y, n_neighbors=3, random_state=0) on
        // standardised data (its own rescaling is then a no-op; its 1e-10 jitter only
        // matters for ties).
        let a = uniform_fixture(200, 1);
        let b = uniform_fixture(200, 2);
        let z = standardise(&a);
        let y: Vec<f64> = a.iter().zip(&b).map(|(p, q)| p + 0.5 * q).collect();
        let got = ksg(&z, 1, &standardise(&y), 3).unwrap();
        assert!((got - 0.831_989_420_136_558_5).abs() < 1e-9, "{got}");
    }

    #[test]
    fn mixed_ksg_matches_scikit_learn() {
        // mutual_info_classif(zz[:, None], lab, n_neighbors=3, random_state=0).
        let a = uniform_fixture(200, 1);
        let b = uniform_fixture(200, 2);
        let labels: Vec<u32> = a
            .iter()
            .map(|&v| (v > 0.3) as u32 + (v > 0.75) as u32)
            .collect();
        let zz: Vec<f64> = a.iter().zip(&b).map(|(p, q)| p + 0.3 * q).collect();
        let got = mixed_ksg(&standardise(&zz), 1, &labels, 3).unwrap();
        assert!((got - 0.768_236_895_814_930_6).abs() < 1e-9, "{got}");
    }

    #[test]
    fn ksg_recovers_the_gaussian_closed_form() {
        for (rho, seed) in [(0.0, 11), (0.5, 12), (0.9, 13)] {
            let (x, y) = correlated(2000, rho, seed);
            let want = -0.5 * (1.0f64 - rho * rho).ln();
            let got = ksg(&x, 1, &y, 3).unwrap();
            assert!((got - want).abs() < 0.03, "rho {rho}: {got} vs {want}");
        }
    }

    #[test]
    fn mixed_ksg_on_known_discrete_cases() {
        // The sign of z is a function of z: I = H(sign) = ln 2.
        let z: Vec<f64> = rng::gaussian(21, 0, 2000)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let sign: Vec<u32> = z.iter().map(|&v| (v > 0.0) as u32).collect();
        let got = mixed_ksg(&z, 1, &sign, 3).unwrap();
        assert!((got - 2f64.ln()).abs() < 0.03, "{got}");
        // Equiprobable classes, z | c ~ N(±1, 1): I = 0.336831 nats (scipy quadrature).
        let noise = rng::gaussian(22, 0, 3000);
        let labels: Vec<u32> = (0..3000).map(|i| (i % 2) as u32).collect();
        let z2: Vec<f64> = noise
            .iter()
            .zip(&labels)
            .map(|(&e, &c)| e as f64 + if c == 1 { 1.0 } else { -1.0 })
            .collect();
        let got = mixed_ksg(&z2, 1, &labels, 3).unwrap();
        assert!((got - 0.336_830_820_346_831_5).abs() < 0.03, "{got}");
    }

    #[test]
    fn gaussian_estimate_is_exact_for_gaussian_data() {
        // One dimension: exactly -½ log(1 - r²) with r the sample correlation.
        let (x, y) = correlated(500, 0.6, 31);
        let n = x.len() as f64;
        let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
        let sxy: f64 = x.iter().zip(&y).map(|(a, b)| (a - mx) * (b - my)).sum();
        let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
        let syy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
        let r2 = sxy * sxy / (sxx * syy);
        let got = gaussian_mi_continuous(&x, 1, &y).unwrap();
        assert!((got + 0.5 * (1.0 - r2).ln()).abs() < 1e-7, "{got}");
        // Three dimensions, y = z1 + z2 + e: population I = ½ log(1 + 2/σ²_e) with σ_e = 1.
        let n = 20_000;
        let g = rng::gaussian(32, 0, n * 4);
        let z: Vec<f64> = (0..n * 3).map(|k| g[k] as f64).collect();
        let y: Vec<f64> = (0..n)
            .map(|i| z[i * 3] + z[i * 3 + 1] + g[n * 3 + i] as f64)
            .collect();
        let got = gaussian_mi_continuous(&z, 3, &y).unwrap();
        let want = 0.5 * 3f64.ln();
        assert!((got - want).abs() < 0.01, "{got} vs {want}");
    }

    #[test]
    fn gaussian_categorical_on_shifted_classes() {
        // Classes N(±μ e1, I) in 2-D, equiprobable. Z's total covariance is diag(1 + μ², 1)
        // and each class has covariance I, so the Gaussian estimate is ½ log(1 + μ²)
        // (an upper bound on the true MI of the mixture, which is not Gaussian).
        let n = 20_000;
        let g = rng::gaussian(41, 0, n * 2);
        let labels: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
        let mu = 1.5;
        let z: Vec<f64> = (0..n * 2)
            .map(|k| {
                let shift = if k % 2 == 0 {
                    if labels[k / 2] == 1 {
                        mu
                    } else {
                        -mu
                    }
                } else {
                    0.0
                };
                g[k] as f64 + shift
            })
            .collect();
        let got = gaussian_mi_categorical(&z, 2, &labels).unwrap();
        let want = 0.5 * (1.0f64 + mu * mu).ln();
        assert!((got - want).abs() < 0.01, "{got} vs {want}");
        let err = gaussian_mi_categorical(&z[..6], 2, &labels[..3]).unwrap_err();
        assert!(err.to_string().contains("class"), "{err}");
    }

    #[test]
    fn principal_scores_capture_the_variance_and_both_routes_agree() {
        // Rows with variance 9 along (1,1,0)/√2 and 1 along (0,0,1).
        let n = 400;
        let g = rng::gaussian(51, 0, n * 2);
        let mut x = Vec::with_capacity(n * 3);
        for i in 0..n {
            let (a, b) = (3.0 * g[2 * i], g[2 * i + 1]);
            let s = std::f32::consts::FRAC_1_SQRT_2;
            x.extend_from_slice(&[a * s + 5.0, a * s - 2.0, b]);
        }
        let s = principal_scores(&x, 3, 2).unwrap();
        let var = |c: usize| (0..n).map(|i| s[i * 2 + c].powi(2)).sum::<f64>() / n as f64;
        assert!((var(0) - 9.0).abs() < 1.0 && (var(1) - 1.0).abs() < 0.2);
        // Both routes on the same data give the same scores up to the sign of each column.
        let x: Vec<f32> = rng::gaussian(52, 0, 12 * 5);
        let by_cov = scores_by_route(&x, 5, 3, PcaRoute::Covariance).unwrap();
        let by_gram = scores_by_route(&x, 5, 3, PcaRoute::Gram).unwrap();
        for c in 0..3 {
            let sign = (by_cov[c] * by_gram[c]).signum();
            for i in 0..12 {
                let (p, q) = (by_cov[i * 3 + c], sign * by_gram[i * 3 + c]);
                assert!((p - q).abs() < 1e-9, "component {c}, row {i}: {p} vs {q}");
            }
        }
        // Fewer rows than columns picks the Gram route and keeps at most n - 1 components.
        let wide: Vec<f32> = rng::gaussian(53, 0, 4 * 10);
        assert_eq!(principal_scores(&wide, 10, 8).unwrap().len(), 4 * 3);
    }

    #[test]
    fn randomized_route_recovers_the_exact_top_components() {
        // 500 x 420 with singular values decaying by 0.8 per direction.
        let (n, d) = (500, 420);
        let g = rng::gaussian(54, 0, n * d);
        let x: Vec<f32> = (0..n * d)
            .map(|t| g[t] * 10.0 * 0.8f32.powi((t % d) as i32))
            .collect();
        assert_eq!(principal_scores(&x, d, 8).unwrap().len(), n * 8);
        let exact = scores_by_route(&x, d, 8, PcaRoute::Covariance).unwrap();
        let fast = scores_by_route(&x, d, 8, PcaRoute::Randomized).unwrap();
        assert_eq!(
            fast,
            scores_by_route(&x, d, 8, PcaRoute::Randomized).unwrap()
        );
        for c in 0..8 {
            let sign = (exact[c] * fast[c]).signum();
            let norm = (0..n).map(|i| exact[i * 8 + c].powi(2)).sum::<f64>().sqrt();
            let err = (0..n)
                .map(|i| (exact[i * 8 + c] - sign * fast[i * 8 + c]).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                err / norm < 1e-4,
                "component {c}: relative error {}",
                err / norm
            );
        }
    }

    #[test]
    fn subsample_is_seeded_and_sorted() {
        let a = subsample(10_000, 100, 7);
        assert_eq!(a, subsample(10_000, 100, 7));
        assert_ne!(a, subsample(10_000, 100, 8));
        assert_eq!(a.len(), 100);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(subsample(5, 100, 7), vec![0, 1, 2, 3, 4]);
    }
}
