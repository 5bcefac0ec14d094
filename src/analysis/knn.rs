//! Exact k-nearest neighbours by blocks of matrix products (|a|^2 + |b|^2 - 2 a.b on faer
//! gemm). UMAP and the neighbourhood-quality scores need them; exact search is fast enough
//! up to a few tens of thousands of points (5000 x 50 in ~0.1 s), and callers subsample
//! above that (`max_points`), so no approximate index is needed.
//!
//! Cost is O(n^2 d) time and O(block x n) memory; past ~50k points prefer subsampling.

use faer::{Accum, Mat, MatRef};

use crate::{Error, Result};

/// Each query block's distance matrix holds at most this many entries (64 MB of f32).
const BLOCK_ENTRIES: usize = 16 << 20;

/// k nearest neighbours of every row, ascending by distance.
#[derive(Debug, Clone)]
pub struct Neighbours {
    pub k: usize,
    /// Row-major `n x k` neighbour indices.
    pub indices: Vec<u32>,
    /// Row-major `n x k` Euclidean distances (not squared), recomputed exactly from the
    /// rows, so cancellation in the matrix-product form does not leak out.
    pub distances: Vec<f32>,
}

impl Neighbours {
    pub fn len(&self) -> usize {
        self.indices.len() / self.k.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let r = i * self.k..(i + 1) * self.k;
        (&self.indices[r.clone()], &self.distances[r])
    }
}

/// Exact kNN of `rows` (row-major, `width` columns) among themselves.
///
/// With `include_self` the point itself is neighbour 0 at distance 0 (umap-learn's
/// convention); without it, the k nearest other points (scikit-learn's `kneighbors()`).
/// Ties are broken by the lower index.
pub fn exact_knn(rows: &[f32], width: usize, k: usize, include_self: bool) -> Result<Neighbours> {
    if width == 0 || !rows.len().is_multiple_of(width) {
        return Err(Error::Invalid(format!(
            "kNN: {} values is not a whole number of rows of width {width}",
            rows.len()
        )));
    }
    let n = rows.len() / width;
    let others = if include_self { k.saturating_sub(1) } else { k };
    if k == 0 || others >= n {
        return Err(Error::Invalid(format!(
            "kNN: k = {k} needs more than {} points, got {n}",
            others
        )));
    }
    let x = MatRef::from_row_major_slice(rows, n, width);
    let norms: Vec<f32> = rows
        .chunks_exact(width)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect();
    let block = (BLOCK_ENTRIES / n).clamp(1, n);
    let mut indices = Vec::with_capacity(n * k);
    let mut distances = Vec::with_capacity(n * k);
    let mut gram = Mat::<f32>::zeros(block, n);
    let mut candidates: Vec<(f32, u32)> = Vec::with_capacity(n);
    for start in (0..n).step_by(block) {
        let end = (start + block).min(n);
        let b = end - start;
        let mut g = gram.as_mut().subrows_mut(0, b);
        faer::linalg::matmul::matmul(
            g.as_mut(),
            Accum::Replace,
            x.subrows(start, b),
            x.transpose(),
            1.0,
            faer::get_global_parallelism(),
        );
        for qi in 0..b {
            let i = start + qi;
            candidates.clear();
            let gi = g.as_ref().row(qi);
            for (j, &nj) in norms.iter().enumerate() {
                if j != i {
                    candidates.push((norms[i] + nj - 2.0 * gi[j], j as u32));
                }
            }
            // Over-select a little, then rank the survivors by exact distances.
            let keep = (others + 8).min(candidates.len());
            if keep < candidates.len() {
                candidates.select_nth_unstable_by(keep - 1, |a, b| a.0.total_cmp(&b.0));
                candidates.truncate(keep);
            }
            let row_i = &rows[i * width..(i + 1) * width];
            for c in candidates.iter_mut() {
                let j = c.1 as usize;
                c.0 = exact_distance(row_i, &rows[j * width..(j + 1) * width]);
            }
            candidates.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            if include_self {
                indices.push(i as u32);
                distances.push(0.0);
            }
            for &(d, j) in candidates.iter().take(others) {
                indices.push(j);
                distances.push(d);
            }
        }
    }
    Ok(Neighbours {
        k,
        indices,
        distances,
    })
}

/// Random stream of [`subsample`], under the caller's seed.
const STREAM_SUBSAMPLE: u64 = 0x5355_4253_4d50;

/// At most `max_points` of `0..n`, drawn uniformly without replacement (seeded), sorted.
/// All of them when `n <= max_points`. O(n^2) analyses call this and report the size.
pub fn subsample(n: usize, max_points: usize, seed: u64) -> Vec<u32> {
    use rand::Rng;
    if n <= max_points {
        return (0..n as u32).collect();
    }
    let mut rng = crate::rng::stream(seed, STREAM_SUBSAMPLE);
    let mut all: Vec<u32> = (0..n as u32).collect();
    // Partial Fisher-Yates: the first max_points slots are a uniform sample.
    for i in 0..max_points {
        let j = rng.gen_range(i..n);
        all.swap(i, j);
    }
    all.truncate(max_points);
    all.sort_unstable();
    all
}

fn exact_distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(rows: &[f32], width: usize, k: usize) -> Vec<Vec<u32>> {
        let n = rows.len() / width;
        (0..n)
            .map(|i| {
                let mut d: Vec<(f32, u32)> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| {
                        let s: f32 = (0..width)
                            .map(|c| (rows[i * width + c] - rows[j * width + c]).powi(2))
                            .sum();
                        (s.sqrt(), j as u32)
                    })
                    .collect();
                d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                d.into_iter().take(k).map(|p| p.1).collect()
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_with_and_without_self() {
        let (n, d, k) = (300, 7, 6);
        // Offset far from the origin: the |a|^2 + |b|^2 - 2ab form loses digits there.
        let x: Vec<f32> = crate::rng::gaussian(2, 0, n * d)
            .iter()
            .map(|v| v + 30.0)
            .collect();
        let reference = brute(&x, d, k);
        let without = exact_knn(&x, d, k, false).unwrap();
        let with = exact_knn(&x, d, k + 1, true).unwrap();
        for i in 0..n {
            assert_eq!(without.row(i).0, &reference[i][..], "row {i}");
            assert_eq!(with.row(i).0[0], i as u32);
            assert_eq!(&with.row(i).0[1..], &reference[i][..]);
            let (idx, dist) = without.row(i);
            let j = idx[0] as usize;
            let exact: f32 = (0..d)
                .map(|c| (x[i * d + c] - x[j * d + c]).powi(2))
                .sum::<f32>()
                .sqrt();
            assert!((dist[0] - exact).abs() <= 1e-6 * exact);
            assert!(dist.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn subsample_is_seeded_sorted_and_distinct() {
        let a = subsample(1000, 100, 7);
        assert_eq!(a, subsample(1000, 100, 7));
        assert_ne!(a, subsample(1000, 100, 8));
        assert_eq!(a.len(), 100);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert!(*a.last().unwrap() < 1000);
        assert_eq!(subsample(50, 100, 7), (0..50).collect::<Vec<u32>>());
    }

    #[test]
    fn rejects_k_too_large() {
        let x = vec![0.0f32; 10];
        assert!(exact_knn(&x, 2, 5, false).is_err());
        assert!(exact_knn(&x, 2, 5, true).is_ok());
        assert!(exact_knn(&x, 3, 1, false).is_err());
    }
}
