//! Exact fits for wide sites (more features than training rows) in the row space of the
//! standardized training matrix Xs (n x d).
//!
//! Why it is exact: for an L2-penalized linear model with an unpenalized intercept, any
//! part of w orthogonal to the rows of Xs changes no margin but adds to ||w||^2, so the
//! optimum lies in their span (the representer theorem). With the thin decomposition
//! Xs = U S^1/2 V^T (from the n x n Gram matrix Xs Xs^T = U S U^T, V orthonormal d x r),
//! w = V z gives Xs w = Z z with Z = U S^1/2 and ||w|| = ||z||: the same objective on n x r
//! features, and the fitted w is V z. The columns of Xs are centred on the training rows,
//! so Z is too, and the intercept is unchanged.
//!
//! Why it is fast: the basis costs one n x n x d product and one n x n eigendecomposition
//! instead of d x d Gram, correlation and Cholesky factors; the curvature bound of Z is
//! diagonal (Z^T Z = S); and the basis depends only on the rows, not on the labels, so the
//! control task and every permutation reuse it.

use faer::{Accum, Mat, Side};

use crate::analysis::design::{self, Blocks, Standardizer};

/// Eigenvalues of the Gram matrix below this fraction of the largest are rounding noise
/// (the centring alone makes one of them zero): their directions are dropped.
const RANK_TOL: f64 = 1e-10;

/// An orthonormal basis of the row space of a training set's standardized rows.
pub struct RowBasis {
    /// The training set's standardization (defines Xs).
    pub standardizer: Standardizer,
    /// d x r: orthonormal directions in standardized feature space.
    pub v: Mat<f64>,
    /// n x r: eigenvectors of Xs Xs^T with non-negligible eigenvalues.
    pub u: Mat<f64>,
    /// The r eigenvalues (squared singular values of Xs), in the columns' order.
    pub eig: Vec<f64>,
    /// n x r: the training rows' coordinates Xs V = U S^1/2, the reduced features.
    pub z: Mat<f32>,
    /// Identity standardizer of width r (Z is already centred and must not be rescaled).
    pub identity: Standardizer,
}

impl RowBasis {
    /// Basis of the rows `x` standardized by `standardizer` (fitted on those same rows).
    pub fn new(x: &Blocks<'_>, standardizer: Standardizer) -> crate::Result<RowBasis> {
        let (n, d) = (x.n_rows(), x.width);
        let st = &standardizer;
        let mut xs = Mat::<f64>::zeros(n, d);
        let mut r0 = 0;
        for b in &x.blocks {
            for r in 0..b.nrows() {
                for j in 0..d {
                    xs[(r0 + r, j)] = (b[(r, j)] as f64 - st.mean[j]) / st.scale[j];
                }
            }
            r0 += b.nrows();
        }
        let mut gram = Mat::<f64>::zeros(n, n);
        faer::linalg::matmul::matmul(
            gram.as_mut(),
            Accum::Replace,
            xs.as_ref(),
            xs.transpose(),
            1.0,
            design::par(),
        );
        let eigen = gram.self_adjoint_eigen(Side::Lower).map_err(|e| {
            crate::Error::Invalid(format!(
                "probe: eigendecomposition of the {n} x {n} Gram matrix of the training rows failed ({e:?})"
            ))
        })?;
        let (u_all, s_all) = (eigen.U(), eigen.S().column_vector());
        let top = (0..n).map(|i| s_all[i]).fold(0.0f64, f64::max);
        // Largest first, so the reduced coordinates are ordered by variance.
        let keep: Vec<usize> = (0..n)
            .rev()
            .filter(|&i| s_all[i] > RANK_TOL * top && s_all[i] > 0.0)
            .collect();
        let r = keep.len();
        let eig: Vec<f64> = keep.iter().map(|&i| s_all[i]).collect();
        let u = Mat::<f64>::from_fn(n, r, |i, c| u_all[(i, keep[c])]);
        // V = Xs^T U S^-1/2.
        let us = Mat::<f64>::from_fn(n, r, |i, c| u[(i, c)] / eig[c].sqrt());
        let mut v = Mat::<f64>::zeros(d, r);
        faer::linalg::matmul::matmul(
            v.as_mut(),
            Accum::Replace,
            xs.transpose(),
            us.as_ref(),
            1.0,
            design::par(),
        );
        let z = Mat::<f32>::from_fn(n, r, |i, c| (u[(i, c)] * eig[c].sqrt()) as f32);
        Ok(RowBasis {
            standardizer,
            v,
            u,
            eig,
            z,
            identity: Standardizer::identity(r),
        })
    }

    /// Rank of the basis (number of reduced features).
    pub fn rank(&self) -> usize {
        self.eig.len()
    }

    /// The reduced training rows as solver input.
    pub fn rows(&self) -> Blocks<'_> {
        Blocks {
            blocks: vec![self.z.as_ref()],
            width: self.rank(),
        }
    }

    /// Covariance of the reduced features, Z^T Z / n = S / n (diagonal): what the
    /// logistic preconditioner needs in place of the feature correlation.
    pub fn covariance(&self) -> Mat<f64> {
        let n = self.z.nrows().max(1) as f64;
        let r = self.rank();
        Mat::from_fn(r, r, |i, j| if i == j { self.eig[i] / n } else { 0.0 })
    }

    /// Weights in standardized feature space (d x k) from reduced weights (r x k): V z.
    pub fn lift(&self, z: &Mat<f64>) -> Mat<f64> {
        let mut w = Mat::<f64>::zeros(self.v.nrows(), z.ncols());
        faer::linalg::matmul::matmul(
            w.as_mut(),
            Accum::Replace,
            self.v.as_ref(),
            z.as_ref(),
            1.0,
            design::par(),
        );
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::design::ColumnStats;
    use faer::MatRef;

    #[test]
    fn the_basis_reproduces_the_standardized_rows() {
        // 12 rows, 30 columns (one constant): Xs = Z V^T and V^T V = I.
        let (n, d) = (12, 30);
        let x: Vec<f32> = (0..n * d)
            .map(|i| {
                let (r, j) = (i / d, i % d);
                if j == 7 {
                    3.0
                } else {
                    ((r * 31 + j * 17) * (r + 3) % 23) as f32 * (1.0 + j as f32)
                }
            })
            .collect();
        let view = MatRef::from_row_major_slice(&x, n, d);
        let st = ColumnStats::of(view).standardizer();
        let blocks = Blocks {
            blocks: vec![view.subrows(0, 5), view.subrows(5, 7)],
            width: d,
        };
        let basis = RowBasis::new(&blocks, st.clone()).unwrap();
        assert_eq!(basis.rank(), n - 1, "centring removes one dimension");
        for a in 0..basis.rank() {
            for b in 0..basis.rank() {
                let dot: f64 = (0..d).map(|j| basis.v[(j, a)] * basis.v[(j, b)]).sum();
                assert!((dot - if a == b { 1.0 } else { 0.0 }).abs() < 1e-9);
            }
        }
        for r in 0..n {
            for j in 0..d {
                let xs = (x[r * d + j] as f64 - st.mean[j]) / st.scale[j];
                let back: f64 = (0..basis.rank())
                    .map(|c| basis.z[(r, c)] as f64 * basis.v[(j, c)])
                    .sum();
                assert!((xs - back).abs() < 1e-5, "{xs} vs {back}");
            }
        }
    }
}
