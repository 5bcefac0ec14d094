//! The feature matrix as the probes see it: f32 rows stored fold by fold, so a training
//! set is a list of contiguous blocks (no copies), plus per-block sufficient statistics
//! (row count, column sums, X^T X) that add up across blocks. Standardization fitted on a
//! training set and the correlation matrix used by the solvers both come from those sums,
//! so one pass over the data serves every fold of a nested cross-validation.
//!
//! Products go through faer's matmul. In a dev build faer's matrix-vector path is
//! compiled with our crate's opt-level (slow) while its matrix-matrix kernels are not, so
//! every product is done with at least `MIN_COLS` right-hand columns (zero padded).

use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

/// Smallest number of columns passed to a matmul (see the module note).
pub const MIN_COLS: usize = 4;

/// Parallelism for every product: all rayon threads.
pub fn par() -> Par {
    Par::rayon(0)
}

/// A set of rows of the (fold-ordered) feature matrix as row-major blocks.
#[derive(Clone)]
pub struct Blocks<'a> {
    pub blocks: Vec<MatRef<'a, f32>>,
    pub width: usize,
}

impl<'a> Blocks<'a> {
    pub fn n_rows(&self) -> usize {
        self.blocks.iter().map(|b| b.nrows()).sum()
    }

    /// `X * w` for a d x k matrix `w` (k >= MIN_COLS), into an n x k matrix.
    pub fn mul(&self, w: MatRef<'_, f32>) -> Mat<f32> {
        let mut out = Mat::<f32>::zeros(self.n_rows(), w.ncols());
        let mut start = 0;
        for b in &self.blocks {
            let rows = out.as_mut().subrows_mut(start, b.nrows());
            faer::linalg::matmul::matmul(rows, Accum::Replace, *b, w, 1.0f32, par());
            start += b.nrows();
        }
        out
    }

    /// `X^T * r` for an n x k matrix `r` (k >= MIN_COLS), into a d x k matrix.
    pub fn tmul(&self, r: MatRef<'_, f32>) -> Mat<f32> {
        let mut out = Mat::<f32>::zeros(self.width, r.ncols());
        let mut start = 0;
        for b in &self.blocks {
            let rows = r.subrows(start, b.nrows());
            faer::linalg::matmul::matmul(
                out.as_mut(),
                Accum::Add,
                b.transpose(),
                rows,
                1.0f32,
                par(),
            );
            start += b.nrows();
        }
        out
    }
}

/// Sufficient statistics of a set of rows: count, column sums and X^T X.
#[derive(Clone)]
pub struct Moments {
    pub n: usize,
    pub sum: Vec<f64>,
    pub gram: Mat<f64>,
}

impl Moments {
    pub fn zeros(d: usize) -> Moments {
        Moments {
            n: 0,
            sum: vec![0.0; d],
            gram: Mat::zeros(d, d),
        }
    }

    /// Statistics of one row-major block (the lower triangle of X^T X in f32, then
    /// mirrored into f64).
    pub fn of(x: MatRef<'_, f32>) -> Moments {
        let d = x.ncols();
        let mut g = Mat::<f32>::zeros(d, d);
        triangular::matmul(
            g.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Replace,
            x.transpose(),
            BlockStructure::Rectangular,
            x,
            BlockStructure::Rectangular,
            1.0f32,
            par(),
        );
        let gram = Mat::<f64>::from_fn(d, d, |i, j| {
            if i >= j {
                g[(i, j)] as f64
            } else {
                g[(j, i)] as f64
            }
        });
        // Column sums as X^T 1 (a matmul, see the module note on dev builds).
        let ones = Mat::<f32>::from_fn(x.nrows(), MIN_COLS, |_, c| if c == 0 { 1.0 } else { 0.0 });
        let sums = Blocks {
            blocks: vec![x],
            width: d,
        }
        .tmul(ones.as_ref());
        let sum = (0..d).map(|j| sums[(j, 0)] as f64).collect();
        Moments {
            n: x.nrows(),
            sum,
            gram,
        }
    }

    pub fn add(&mut self, other: &Moments) {
        self.n += other.n;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        self.gram += &other.gram;
    }

    /// Sum of the statistics of the given parts.
    pub fn total<'m>(d: usize, parts: impl IntoIterator<Item = &'m Moments>) -> Moments {
        let mut m = Moments::zeros(d);
        for p in parts {
            m.add(p);
        }
        m
    }

    /// Mean and standard deviation (population, like sklearn's StandardScaler); a constant
    /// column gets scale 1 so it stays 0 after standardization. "Constant" is judged at the
    /// precision of the f32 products the moments come from: a spread below ~0.3% of the
    /// column's RMS is rounding noise (e.g. an almost always black pixel), and dividing by it
    /// would blow that noise up into an indefinite correlation matrix.
    pub fn standardizer(&self) -> Standardizer {
        let squares: Vec<f64> = (0..self.sum.len()).map(|j| self.gram[(j, j)]).collect();
        Standardizer::of_sums(self.n, &self.sum, &squares)
    }

    /// Covariance of the standardized features (the correlation matrix, with 0 rows for
    /// constant columns).
    pub fn correlation(&self, st: &Standardizer) -> Mat<f64> {
        let n = self.n.max(1) as f64;
        let d = self.sum.len();
        Mat::from_fn(d, d, |i, j| {
            (self.gram[(i, j)] / n - st.mean[i] * st.mean[j]) / (st.scale[i] * st.scale[j])
        })
    }
}

/// Count, column sums and column sums of squares of a set of rows: all the row-space
/// solvers need (the standardizer), without the d x d Gram matrix of `Moments`.
#[derive(Clone)]
pub struct ColumnStats {
    pub n: usize,
    pub sum: Vec<f64>,
    pub squares: Vec<f64>,
}

impl ColumnStats {
    /// Statistics of one row-major block, accumulated in f64.
    pub fn of(x: MatRef<'_, f32>) -> ColumnStats {
        let d = x.ncols();
        let mut sum = vec![0.0; d];
        let mut squares = vec![0.0; d];
        for r in 0..x.nrows() {
            for j in 0..d {
                let v = x[(r, j)] as f64;
                sum[j] += v;
                squares[j] += v * v;
            }
        }
        ColumnStats {
            n: x.nrows(),
            sum,
            squares,
        }
    }

    /// Sum of the statistics of the given parts.
    pub fn total<'m>(d: usize, parts: impl IntoIterator<Item = &'m ColumnStats>) -> ColumnStats {
        let mut t = ColumnStats {
            n: 0,
            sum: vec![0.0; d],
            squares: vec![0.0; d],
        };
        for p in parts {
            t.n += p.n;
            for j in 0..d {
                t.sum[j] += p.sum[j];
                t.squares[j] += p.squares[j];
            }
        }
        t
    }

    /// The same standardizer as `Moments::standardizer` (same constant-column rule).
    pub fn standardizer(&self) -> Standardizer {
        Standardizer::of_sums(self.n, &self.sum, &self.squares)
    }
}

/// Per-column affine map x -> (x - mean) / scale, fitted on training rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Standardizer {
    /// Mean and standard deviation (population, like sklearn's StandardScaler) from the
    /// row count, column sums and column sums of squares; see `Moments::standardizer` for
    /// the rule that gives (almost) constant columns scale 1.
    pub fn of_sums(n: usize, sum: &[f64], squares: &[f64]) -> Standardizer {
        let n = n.max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let scale = mean
            .iter()
            .zip(squares)
            .map(|(m, sq)| {
                let var = sq / n - m * m;
                let floor = 3e-3 * (sq / n).sqrt();
                if var > 0.0 && var.sqrt() > floor {
                    var.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        Standardizer { mean, scale }
    }

    /// The map that changes nothing (mean 0, scale 1), for features already centred.
    pub fn identity(d: usize) -> Standardizer {
        Standardizer {
            mean: vec![0.0; d],
            scale: vec![1.0; d],
        }
    }
}

impl Standardizer {
    /// Maps weights `w` (d x k, standardized space, padded to >= MIN_COLS columns) and
    /// biases `b` to weights and biases acting on the stored (unstandardized) rows:
    /// w' = w / scale, b' = b - mean . w'.
    pub fn to_raw(&self, w: MatRef<'_, f64>, b: &[f64]) -> (Mat<f32>, Vec<f64>) {
        let d = self.mean.len();
        let k = w.ncols();
        let wr = Mat::<f64>::from_fn(d, k, |j, c| w[(j, c)] / self.scale[j]);
        let br = (0..k)
            .map(|c| {
                b.get(c).copied().unwrap_or(0.0)
                    - (0..d).map(|j| self.mean[j] * wr[(j, c)]).sum::<f64>()
            })
            .collect();
        (
            Mat::from_fn(d, k.max(MIN_COLS), |j, c| {
                if c < k {
                    wr[(j, c)] as f32
                } else {
                    0.0
                }
            }),
            br,
        )
    }
}

impl Standardizer {
    /// Weights (one Vec per output) and biases acting on raw features, from weights `w`
    /// (d x k) and biases `b` in standardized space: w / scale and b - sum(w mean / scale).
    /// `raw_offset` is what was subtracted from the raw features before fitting.
    pub fn raw_direction(
        &self,
        w: MatRef<'_, f64>,
        b: &[f64],
        raw_offset: &[f64],
    ) -> (Vec<Vec<f64>>, Vec<f64>) {
        let d = self.mean.len();
        let weights: Vec<Vec<f64>> = (0..w.ncols())
            .map(|c| (0..d).map(|j| w[(j, c)] / self.scale[j]).collect())
            .collect();
        let bias = weights
            .iter()
            .zip(b)
            .map(|(wc, bc)| {
                bc - (0..d)
                    .map(|j| wc[j] * (self.mean[j] + raw_offset[j]))
                    .sum::<f64>()
            })
            .collect();
        (weights, bias)
    }
}

/// Adds a bias per column to an n x k matrix.
pub fn add_bias(m: &mut Mat<f32>, b: &[f64]) {
    for (c, &bc) in b.iter().enumerate() {
        for r in 0..m.nrows() {
            m[(r, c)] += bc as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_add_up_across_blocks_and_match_direct_sums() {
        let (n, d) = (23, 5);
        let x: Vec<f32> = (0..n * d)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3 + (i % d) as f32)
            .collect();
        let all = Moments::of(MatRef::from_row_major_slice(&x, n, d));
        let a = Moments::of(MatRef::from_row_major_slice(&x[..10 * d], 10, d));
        let b = Moments::of(MatRef::from_row_major_slice(&x[10 * d..], 13, d));
        let sum = Moments::total(d, [&a, &b]);
        for i in 0..d {
            for j in 0..d {
                let direct: f64 = (0..n)
                    .map(|r| x[r * d + i] as f64 * x[r * d + j] as f64)
                    .sum();
                assert!((all.gram[(i, j)] - direct).abs() < 1e-3);
                assert!((sum.gram[(i, j)] - direct).abs() < 1e-3);
            }
        }
        let st = sum.standardizer();
        for j in 0..d {
            let col: Vec<f64> = (0..n).map(|r| x[r * d + j] as f64).collect();
            let m = col.iter().sum::<f64>() / n as f64;
            let sd = (col.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n as f64).sqrt();
            assert!((st.mean[j] - m).abs() < 1e-5 && (st.scale[j] - sd).abs() < 1e-4);
        }
        let corr = sum.correlation(&st);
        for j in 0..d {
            assert!((corr[(j, j)] - 1.0).abs() < 1e-4);
        }
    }
}
