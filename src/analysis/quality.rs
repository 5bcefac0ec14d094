//! How well a low-dimensional embedding keeps neighbourhoods (Venna & Kaski 2001):
//! trustworthiness penalises embedding neighbours that were far in the original space,
//! continuity penalises original neighbours that the embedding pulled apart.
//! Trustworthiness matches `sklearn.manifold.trustworthiness`; continuity is the same score
//! with the two spaces swapped.
//!
//! O(n^2) time (all distances, in blocks), so callers subsample to `max_points`.

use faer::{Accum, Mat, MatRef};
use serde::Serialize;

use crate::{Error, Result};

/// Distances of one query block hold at most this many entries (128 MB of f64).
const BLOCK_ENTRIES: usize = 16 << 20;

/// Trustworthiness and continuity at one neighbourhood size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NeighbourhoodQuality {
    pub k: usize,
    pub trustworthiness: f64,
    pub continuity: f64,
}

/// Both scores for each `k` in `ks` (e.g. `[5, 15]`), sharing one pass over all distances.
pub fn neighbourhood_quality(
    high: &[f32],
    high_width: usize,
    low: &[f32],
    low_width: usize,
    ks: &[usize],
) -> Result<Vec<NeighbourhoodQuality>> {
    let trust = rank_penalties(high, high_width, low, low_width, ks)?;
    let cont = rank_penalties(low, low_width, high, high_width, ks)?;
    Ok(ks
        .iter()
        .zip(trust.iter().zip(&cont))
        .map(|(&k, (&t, &c))| NeighbourhoodQuality {
            k,
            trustworthiness: t,
            continuity: c,
        })
        .collect())
}

/// `sklearn.manifold.trustworthiness(high, low, n_neighbors=k)`.
pub fn trustworthiness(
    high: &[f32],
    high_width: usize,
    low: &[f32],
    low_width: usize,
    k: usize,
) -> Result<f64> {
    Ok(rank_penalties(high, high_width, low, low_width, &[k])?[0])
}

/// Continuity: trustworthiness with the roles of the spaces swapped.
pub fn continuity(
    high: &[f32],
    high_width: usize,
    low: &[f32],
    low_width: usize,
    k: usize,
) -> Result<f64> {
    Ok(rank_penalties(low, low_width, high, high_width, &[k])?[0])
}

/// 1 - 2 / (n k (2n - 3k - 1)) * sum over i, over the k nearest neighbours j of i in
/// `second` that are not among its k nearest in `reference`, of (rank of j from i in
/// `reference` - k). Ranks start at 1 for the nearest other point; ties go to the lower
/// index.
fn rank_penalties(
    reference: &[f32],
    ref_width: usize,
    second: &[f32],
    second_width: usize,
    ks: &[usize],
) -> Result<Vec<f64>> {
    let n = rows_of(reference, ref_width, "original space")?;
    let n2 = rows_of(second, second_width, "embedding")?;
    if n != n2 {
        return Err(Error::Invalid(format!(
            "neighbourhood quality: {n} original rows but {n2} embedded rows"
        )));
    }
    let max_k = ks.iter().copied().max().unwrap_or(0);
    // scikit-learn's bound: beyond n/2 the normalisation no longer keeps the score in [0, 1].
    if ks.iter().any(|&k| k == 0 || 2 * k >= n) {
        return Err(Error::Invalid(format!(
            "neighbourhood quality: every k must be at least 1 and below n/2 = {} for {n} points, got {ks:?}",
            n / 2
        )));
    }
    let mut penalty = vec![0u64; ks.len()];
    let block = (BLOCK_ENTRIES / n).clamp(1, n);
    let mut ref_order: Vec<u32> = Vec::with_capacity(n);
    let mut second_order: Vec<u32> = Vec::with_capacity(n);
    let ref_dist = BlockDistances::new(reference, ref_width);
    let second_dist = BlockDistances::new(second, second_width);
    for start in (0..n).step_by(block) {
        let b = block.min(n - start);
        let dr = ref_dist.block(start, b);
        let ds = second_dist.block(start, b);
        for qi in 0..b {
            let i = start + qi;
            let row_r: Vec<f64> = (0..n).map(|j| dr[(qi, j)]).collect();
            let row_s: Vec<f64> = (0..n).map(|j| ds[(qi, j)]).collect();
            nearest(&row_r, i, max_k, &mut ref_order);
            nearest(&row_s, i, max_k, &mut second_order);
            for (p, &k) in penalty.iter_mut().zip(ks) {
                for &j in &second_order[..k] {
                    if ref_order[..k].contains(&j) {
                        continue;
                    }
                    let rank = rank_of(&row_r, i, j as usize);
                    *p += (rank - k) as u64;
                }
            }
        }
    }
    Ok(ks
        .iter()
        .zip(&penalty)
        .map(|(&k, &p)| {
            let (n, k) = (n as f64, k as f64);
            1.0 - p as f64 * 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0))
        })
        .collect())
}

fn rows_of(x: &[f32], width: usize, what: &str) -> Result<usize> {
    if width == 0 || !x.len().is_multiple_of(width) {
        return Err(Error::Invalid(format!(
            "neighbourhood quality: {what} has {} values, not a whole number of rows of width {width}",
            x.len()
        )));
    }
    Ok(x.len() / width)
}

/// The `k` points nearest to `i` (excluding `i`), ordered by (distance, index).
fn nearest(row: &[f64], i: usize, k: usize, out: &mut Vec<u32>) {
    out.clear();
    out.extend((0..row.len() as u32).filter(|&j| j as usize != i));
    let cmp = |a: &u32, b: &u32| row[*a as usize].total_cmp(&row[*b as usize]).then(a.cmp(b));
    if k < out.len() {
        out.select_nth_unstable_by(k - 1, cmp);
        out.truncate(k);
    }
    out.sort_unstable_by(cmp);
}

/// 1 + number of other points strictly before `j` in (distance, index) order from `i`.
fn rank_of(row: &[f64], i: usize, j: usize) -> usize {
    let dj = row[j];
    let mut before = 0;
    for (l, &dl) in row.iter().enumerate() {
        if l != i && (dl < dj || (dl == dj && l < j)) {
            before += 1;
        }
    }
    before + 1
}

/// Squared Euclidean distances of a block of rows to all rows, in f64 (ranks of near
/// neighbours must not be reordered by f32 cancellation).
struct BlockDistances {
    x: Mat<f64>,
    norms: Vec<f64>,
}

impl BlockDistances {
    fn new(rows: &[f32], width: usize) -> Self {
        let n = rows.len() / width;
        let view = MatRef::from_row_major_slice(rows, n, width);
        let x = Mat::<f64>::from_fn(n, width, |i, j| view[(i, j)] as f64);
        let norms = (0..n)
            .map(|i| (0..width).map(|j| x[(i, j)] * x[(i, j)]).sum())
            .collect();
        Self { x, norms }
    }

    fn block(&self, start: usize, b: usize) -> Mat<f64> {
        let n = self.x.nrows();
        let mut g = Mat::<f64>::zeros(b, n);
        faer::linalg::matmul::matmul(
            g.as_mut(),
            Accum::Replace,
            self.x.subrows(start, b),
            self.x.transpose(),
            -2.0,
            faer::get_global_parallelism(),
        );
        for qi in 0..b {
            for j in 0..n {
                g[(qi, j)] = (g[(qi, j)] + self.norms[start + qi] + self.norms[j]).max(0.0);
            }
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::pca::bench_uniform;

    /// Straight from the definition: full argsort of every row, no shortcuts.
    fn trustworthiness_by_definition(x: &[f32], dx: usize, y: &[f32], dy: usize, k: usize) -> f64 {
        let n = x.len() / dx;
        let dist = |v: &[f32], w: usize, i: usize, j: usize| -> f64 {
            (0..w)
                .map(|c| (v[i * w + c] as f64 - v[j * w + c] as f64).powi(2))
                .sum::<f64>()
        };
        let order = |v: &[f32], w: usize, i: usize| -> Vec<usize> {
            let mut o: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            o.sort_by(|&a, &b| {
                dist(v, w, i, a)
                    .total_cmp(&dist(v, w, i, b))
                    .then(a.cmp(&b))
            });
            o
        };
        let mut sum = 0.0;
        for i in 0..n {
            let ox = order(x, dx, i);
            let oy = order(y, dy, i);
            for &j in &oy[..k] {
                let r = ox.iter().position(|&l| l == j).unwrap() + 1;
                if r > k {
                    sum += (r - k) as f64;
                }
            }
        }
        let (n, k) = (n as f64, k as f64);
        1.0 - 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0)) * sum
    }

    /// The fixture both here and in sklearn: X (60 x 5) uniform from
    /// `bench_uniform(3, i)`, Y = X[:, :2] + 0.3 * uniform from `bench_uniform(4, i)`.
    fn fixture() -> (Vec<f32>, Vec<f32>) {
        let x: Vec<f32> = (0..300).map(|i| bench_uniform(3, i)).collect();
        let y: Vec<f32> = (0..60)
            .flat_map(|r| (0..2).map(move |c| (r, c)))
            .map(|(r, c)| x[r * 5 + c] + 0.3 * bench_uniform(4, (r * 2 + c) as u64))
            .collect();
        (x, y)
    }

    #[test]
    fn matches_definition() {
        let (x, y) = fixture();
        for k in [1, 5, 15] {
            let fast = trustworthiness(&x, 5, &y, 2, k).unwrap();
            let slow = trustworthiness_by_definition(&x, 5, &y, 2, k);
            assert!((fast - slow).abs() < 1e-12, "k={k}: {fast} vs {slow}");
            let fast_c = continuity(&x, 5, &y, 2, k).unwrap();
            let slow_c = trustworthiness_by_definition(&y, 2, &x, 5, k);
            assert!(
                (fast_c - slow_c).abs() < 1e-12,
                "k={k}: {fast_c} vs {slow_c}"
            );
        }
        let both = neighbourhood_quality(&x, 5, &y, 2, &[5, 15]).unwrap();
        assert_eq!(
            both[1].trustworthiness,
            trustworthiness(&x, 5, &y, 2, 15).unwrap()
        );
    }

    #[test]
    fn matches_scikit_learn() {
        // python benches/quality_fixture.py (sklearn.manifold.trustworthiness):
        const SKLEARN_T5: f64 = 0.7348076923076923;
        const SKLEARN_T15: f64 = 0.7845945945945946;
        const SKLEARN_C5: f64 = 0.8091666666666667;
        let (x, y) = fixture();
        let q = neighbourhood_quality(&x, 5, &y, 2, &[5, 15]).unwrap();
        assert!((q[0].trustworthiness - SKLEARN_T5).abs() < 1e-9, "{q:?}");
        assert!((q[1].trustworthiness - SKLEARN_T15).abs() < 1e-9, "{q:?}");
        assert!((q[0].continuity - SKLEARN_C5).abs() < 1e-9, "{q:?}");
    }

    #[test]
    fn identity_embedding_is_perfect_and_bad_k_is_rejected() {
        let (x, _) = fixture();
        let q = neighbourhood_quality(&x, 5, &x, 5, &[5]).unwrap();
        assert_eq!(q[0].trustworthiness, 1.0);
        assert_eq!(q[0].continuity, 1.0);
        assert!(trustworthiness(&x, 5, &x, 5, 40).is_err());
        assert!(trustworthiness(&x, 5, &x[..100], 5, 5).is_err());
    }
}
