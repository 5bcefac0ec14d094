//! Linear CKA (Kornblith et al. 2019): how similar two representations of the same
//! samples are, invariant to rotation and isotropic scaling. `infoloss` uses it to map
//! which sites and steps carry the same information.
//!
//! Everything goes through feature-space Gram products (d x d), never the n x n kernel, so
//! the number of rows can be large and can arrive in batches: [`CkaAccumulator`] keeps
//! `XᵀX`, `YᵀY`, `YᵀX` and the column sums, and centres at the end.

use crate::progress::Progress;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef};

use crate::{Error, Result};

/// One representation: `rows x width` values, row-major (one row per observation).
#[derive(Debug, Clone, Copy)]
pub struct Representation<'a> {
    pub x: &'a [f32],
    pub width: usize,
}

impl<'a> Representation<'a> {
    /// Checks that `x` holds whole rows.
    pub fn new(x: &'a [f32], width: usize) -> Result<Self> {
        if width == 0 || !x.len().is_multiple_of(width) {
            return Err(Error::Invalid(format!(
                "a representation of width {width} cannot hold {} values",
                x.len()
            )));
        }
        Ok(Self { x, width })
    }

    pub fn rows(&self) -> usize {
        self.x.len().checked_div(self.width).unwrap_or(0)
    }
}

/// Streams rows of two representations and returns their linear CKA.
///
/// Rows are shifted by the first row seen before accumulating: CKA is shift invariant and
/// the shift keeps `XᵀX - n μμᵀ` from cancelling catastrophically when values sit far
/// from zero.
#[derive(Debug, Clone)]
pub struct CkaAccumulator {
    n: usize,
    shift_x: Vec<f64>,
    shift_y: Vec<f64>,
    sum_x: Vec<f64>,
    sum_y: Vec<f64>,
    xtx: Mat<f64>,
    yty: Mat<f64>,
    ytx: Mat<f64>,
}

impl CkaAccumulator {
    pub fn new(width_x: usize, width_y: usize) -> Self {
        Self {
            n: 0,
            shift_x: Vec::new(),
            shift_y: Vec::new(),
            sum_x: vec![0.0; width_x],
            sum_y: vec![0.0; width_y],
            xtx: Mat::zeros(width_x, width_x),
            yty: Mat::zeros(width_y, width_y),
            ytx: Mat::zeros(width_y, width_x),
        }
    }

    /// Adds a batch: the same observations, in the same order, in both representations.
    pub fn add(&mut self, x: &[f32], y: &[f32]) -> Result<()> {
        let (dx, dy) = (self.sum_x.len(), self.sum_y.len());
        let x = Representation::new(x, dx)?;
        let y = Representation::new(y, dy)?;
        if x.rows() != y.rows() {
            return Err(Error::Invalid(format!(
                "CKA batch: {} rows in the first representation but {} in the second",
                x.rows(),
                y.rows()
            )));
        }
        if x.rows() == 0 {
            return Ok(());
        }
        if self.n == 0 {
            self.shift_x = x.x[..dx].iter().map(|&v| v as f64).collect();
            self.shift_y = y.x[..dy].iter().map(|&v| v as f64).collect();
        }
        let bx = shifted(x, &self.shift_x);
        let by = shifted(y, &self.shift_y);
        add_column_sums(&mut self.sum_x, bx.as_ref());
        add_column_sums(&mut self.sum_y, by.as_ref());
        let par = faer::get_global_parallelism();
        matmul(&mut self.xtx, Accum::Add, bx.transpose(), &bx, 1.0, par);
        matmul(&mut self.yty, Accum::Add, by.transpose(), &by, 1.0, par);
        matmul(&mut self.ytx, Accum::Add, by.transpose(), &bx, 1.0, par);
        self.n += x.rows();
        Ok(())
    }

    /// Rows seen so far.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// `||YcᵀXc||²_F / (||XcᵀXc||_F ||YcᵀYc||_F)`; NaN when either side is constant
    /// (CKA is undefined there).
    pub fn finish(&self) -> Result<f64> {
        if self.n < 2 {
            return Err(Error::Invalid(format!(
                "CKA needs at least 2 rows, got {}",
                self.n
            )));
        }
        let n = self.n as f64;
        let cxx = centred(&self.xtx, &self.sum_x, &self.sum_x, n);
        let cyy = centred(&self.yty, &self.sum_y, &self.sum_y, n);
        let cyx = centred(&self.ytx, &self.sum_y, &self.sum_x, n);
        Ok(cka_from_norms(
            cyx.squared_norm_l2(),
            cxx.norm_l2(),
            cyy.norm_l2(),
        ))
    }
}

fn cka_from_norms(cross_sq: f64, norm_x: f64, norm_y: f64) -> f64 {
    let denom = norm_x * norm_y;
    if denom > 0.0 {
        cross_sq / denom
    } else {
        f64::NAN
    }
}

/// Rows of `r` minus `shift`, as an f64 matrix.
fn shifted(r: Representation<'_>, shift: &[f64]) -> Mat<f64> {
    let w = r.width;
    Mat::from_fn(r.rows(), w, |i, j| r.x[i * w + j] as f64 - shift[j])
}

fn add_column_sums(sums: &mut [f64], m: MatRef<'_, f64>) {
    for (j, s) in sums.iter_mut().enumerate() {
        *s += m.col(j).iter().sum::<f64>();
    }
}

/// `AᵀB - sa sbᵀ / n`: the Gram product of the centred data.
fn centred(gram: &Mat<f64>, sum_a: &[f64], sum_b: &[f64], n: f64) -> Mat<f64> {
    Mat::from_fn(gram.nrows(), gram.ncols(), |i, j| {
        gram[(i, j)] - sum_a[i] * sum_b[j] / n
    })
}

/// Linear CKA between two representations of the same rows.
pub fn linear_cka(x: Representation<'_>, y: Representation<'_>) -> Result<f64> {
    let mut acc = CkaAccumulator::new(x.width, y.width);
    acc.add(x.x, y.x)?;
    acc.finish()
}

/// Memory the kernel route may use for its `n x n` Gram matrices (f32).
const KERNEL_BUDGET_BYTES: usize = 1 << 30;

/// The symmetric matrix of linear CKA between every pair of representations (all with the
/// same rows in the same order), row-major `m x m`. The diagonal is 1 (NaN for a constant
/// representation). Picks the cheaper of two exact routes: feature-space cross products
/// (`n·d_i·d_j` per pair) or, for representations wider than they are tall, centred
/// `n x n` Gram matrices computed once each (`n²` per pair).
pub fn cka_matrix(reps: &[Representation<'_>], progress: &dyn Progress) -> Result<Vec<f64>> {
    let m = reps.len();
    let n = reps.first().map_or(0, |r| r.rows());
    if n < 2 {
        return Err(Error::Invalid(format!(
            "CKA needs at least 2 rows, got {n}"
        )));
    }
    for (i, r) in reps.iter().enumerate() {
        Representation::new(r.x, r.width)?;
        if r.rows() != n {
            return Err(Error::Invalid(format!(
                "CKA matrix: representation {i} has {} rows, the first has {n}",
                r.rows()
            )));
        }
    }
    progress.set_length((m + m * m.saturating_sub(1) / 2) as u64);
    if kernel_route_is_cheaper(n, reps) {
        Ok(by_kernels(reps, progress))
    } else {
        Ok(by_features(reps, progress))
    }
}

fn kernel_route_is_cheaper(n: usize, reps: &[Representation<'_>]) -> bool {
    let (nf, m) = (n as f64, reps.len() as f64);
    let widths: Vec<f64> = reps.iter().map(|r| r.width as f64).collect();
    let total: f64 = widths.iter().sum();
    let squares: f64 = widths.iter().map(|d| d * d).sum();
    let features = nf * (total * total - squares) / 2.0 + nf * squares;
    let kernels = nf * nf * total + nf * nf * m * (m - 1.0) / 2.0;
    kernels < features && reps.len() * n * n * 4 <= KERNEL_BUDGET_BYTES
}

/// Column-centred copy of a representation, row-major (view it with [`as_mat`]).
fn centre(r: &Representation<'_>) -> Vec<f64> {
    let d = r.width;
    let mut means = vec![0.0f64; d];
    for row in r.x.chunks_exact(d) {
        for (m, &v) in means.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    let n = r.rows() as f64;
    means.iter_mut().for_each(|m| *m /= n);
    let mut out = Vec::with_capacity(r.x.len());
    for row in r.x.chunks_exact(d) {
        out.extend(row.iter().zip(&means).map(|(&v, m)| v as f64 - m));
    }
    out
}

fn as_mat(buf: &[f64], width: usize) -> MatRef<'_, f64> {
    MatRef::from_row_major_slice(buf, buf.len() / width, width)
}

fn fill_symmetric(out: &mut [f64], m: usize, i: usize, j: usize, v: f64) {
    out[i * m + j] = v;
    out[j * m + i] = v;
}

fn diagonal(norm: f64) -> f64 {
    if norm > 0.0 {
        1.0
    } else {
        f64::NAN
    }
}

fn by_features(reps: &[Representation<'_>], progress: &dyn Progress) -> Vec<f64> {
    let m = reps.len();
    let par = faer::get_global_parallelism();
    // Keep every centred copy when they fit, otherwise recentre per pair.
    let bytes: usize = reps.iter().map(|r| r.x.len() * 8).sum();
    let mut kept: Vec<Option<Vec<f64>>> = vec![None; m];
    let mut self_norms = Vec::with_capacity(m);
    for (i, r) in reps.iter().enumerate() {
        let c = centre(r);
        let c_mat = as_mat(&c, r.width);
        let mut g = Mat::<f64>::zeros(r.width, r.width);
        matmul(&mut g, Accum::Replace, c_mat.transpose(), c_mat, 1.0, par);
        self_norms.push(g.norm_l2());
        if bytes <= KERNEL_BUDGET_BYTES {
            kept[i] = Some(c);
        }
        progress.inc(1);
    }
    let centred = |i: usize| -> std::borrow::Cow<'_, [f64]> {
        match &kept[i] {
            Some(c) => std::borrow::Cow::Borrowed(c.as_slice()),
            None => std::borrow::Cow::Owned(centre(&reps[i])),
        }
    };
    let mut out = vec![f64::NAN; m * m];
    for i in 0..m {
        out[i * m + i] = diagonal(self_norms[i]);
        if i + 1 == m {
            continue;
        }
        let ci = centred(i);
        for j in i + 1..m {
            let cj = centred(j);
            let mut g = Mat::<f64>::zeros(reps[j].width, reps[i].width);
            let (a, b) = (as_mat(&cj, reps[j].width), as_mat(&ci, reps[i].width));
            matmul(&mut g, Accum::Replace, a.transpose(), b, 1.0, par);
            let v = cka_from_norms(g.squared_norm_l2(), self_norms[i], self_norms[j]);
            fill_symmetric(&mut out, m, i, j, v);
            progress.inc(1);
        }
    }
    out
}

/// HSIC form: `<Kx, Ky>_F / (||Kx||_F ||Ky||_F)` with centred Grams `K = Xc Xcᵀ`. Every
/// Gram is flattened into one column of an `n² x m` f32 matrix, so all the inner products
/// are a single matrix product; the self norms stay in f64.
fn by_kernels(reps: &[Representation<'_>], progress: &dyn Progress) -> Vec<f64> {
    let m = reps.len();
    let n = reps[0].rows();
    let par = faer::get_global_parallelism();
    let mut flat = Mat::<f32>::zeros(n * n, m);
    let mut norms = Vec::with_capacity(m);
    for (i, r) in reps.iter().enumerate() {
        let c = centre(r);
        let c_mat = as_mat(&c, r.width);
        let mut k = Mat::<f64>::zeros(n, n);
        matmul(&mut k, Accum::Replace, c_mat, c_mat.transpose(), 1.0, par);
        norms.push(k.norm_l2());
        let dst = flat.col_as_slice_mut(i);
        for col in 0..n {
            for (d, &v) in dst[col * n..(col + 1) * n]
                .iter_mut()
                .zip(k.col_as_slice(col))
            {
                *d = v as f32;
            }
        }
        progress.inc(1);
    }
    let mut dots = Mat::<f32>::zeros(m, m);
    matmul(&mut dots, Accum::Replace, flat.transpose(), &flat, 1.0, par);
    let mut out = vec![f64::NAN; m * m];
    for i in 0..m {
        out[i * m + i] = diagonal(norms[i]);
        for j in i + 1..m {
            let v = cka_from_norms(dots[(i, j)] as f64, norms[i], norms[j]);
            fill_symmetric(&mut out, m, i, j, v);
            progress.inc(1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    fn random(n: usize, d: usize, seed: u64) -> Vec<f32> {
        rng::gaussian(seed, 0, n * d)
    }

    /// Slow reference: HSIC with the n x n centring matrix, written from the paper.
    fn cka_by_hsic(x: &[f32], dx: usize, y: &[f32], dy: usize) -> f64 {
        let n = x.len() / dx;
        let gram = |a: &[f32], d: usize| -> Vec<f64> {
            let mut k = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..n {
                    k[i * n + j] = (0..d)
                        .map(|t| a[i * d + t] as f64 * a[j * d + t] as f64)
                        .sum();
                }
            }
            k
        };
        let centre = |k: Vec<f64>| -> Vec<f64> {
            // H K H with H = I - 11ᵀ/n.
            let row: Vec<f64> = (0..n)
                .map(|i| k[i * n..(i + 1) * n].iter().sum::<f64>() / n as f64)
                .collect();
            let all = row.iter().sum::<f64>() / n as f64;
            let mut c = k;
            for i in 0..n {
                for j in 0..n {
                    c[i * n + j] += all - row[i] - row[j];
                }
            }
            c
        };
        let kx = centre(gram(x, dx));
        let ky = centre(gram(y, dy));
        let hsic = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        hsic(&kx, &ky) / (hsic(&kx, &kx).sqrt() * hsic(&ky, &ky).sqrt())
    }

    #[test]
    fn matches_the_hsic_definition() {
        let (n, dx, dy) = (60, 7, 4);
        let x = random(n, dx, 1);
        // y depends on x partly so the value is far from 0 and 1.
        let noise = random(n, dy, 2);
        let y: Vec<f32> = (0..n * dy)
            .map(|k| {
                let (i, j) = (k / dy, k % dy);
                x[i * dx + j] * 2.0 - x[i * dx + j + 1] + 0.7 * noise[k] + 3.0
            })
            .collect();
        let want = cka_by_hsic(&x, dx, &y, dy);
        let got = linear_cka(
            Representation::new(&x, dx).unwrap(),
            Representation::new(&y, dy).unwrap(),
        )
        .unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        assert!(want > 0.2 && want < 0.95, "{want}");
    }

    #[test]
    fn batches_give_the_same_answer_as_one_pass() {
        let (n, dx, dy) = (101, 5, 3);
        let x: Vec<f32> = random(n, dx, 3).iter().map(|v| v + 100.0).collect();
        let y: Vec<f32> = (0..n * dy)
            .map(|k| x[(k / dy) * dx + k % dy] * 0.5 + (k % 7) as f32)
            .collect();
        let mut acc = CkaAccumulator::new(dx, dy);
        for (bx, by) in x.chunks(17 * dx).zip(y.chunks(17 * dy)) {
            acc.add(bx, by).unwrap();
        }
        assert_eq!(acc.rows(), n);
        let want = cka_by_hsic(&x, dx, &y, dy);
        assert!((acc.finish().unwrap() - want).abs() < 1e-8);
    }

    #[test]
    fn invariant_to_rotation_and_scale_and_one_on_itself() {
        let (n, d) = (80, 3);
        let x = random(n, d, 4);
        let y: Vec<f32> = random(n, 2, 5)
            .iter()
            .enumerate()
            .map(|(k, v)| v + x[(k / 2) * d])
            .collect();
        let rx = Representation::new(&x, d).unwrap();
        let ry = Representation::new(&y, 2).unwrap();
        assert!((linear_cka(rx, rx).unwrap() - 1.0).abs() < 1e-12);
        let base = linear_cka(rx, ry).unwrap();
        // Rotate x by an orthogonal matrix (rotation about z then x axes) and scale by 3.
        let (a, b) = (0.7f32, -1.3f32);
        let rz = [
            [a.cos(), -a.sin(), 0.0],
            [a.sin(), a.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ];
        let rxm = [
            [1.0, 0.0, 0.0],
            [0.0, b.cos(), -b.sin()],
            [0.0, b.sin(), b.cos()],
        ];
        let mut q = [[0f32; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                q[i][j] = (0..3).map(|t| rz[i][t] * rxm[t][j]).sum();
            }
        }
        let xr: Vec<f32> = (0..n * d)
            .map(|k| {
                let (i, j) = (k / d, k % d);
                3.0 * (0..d).map(|t| x[i * d + t] * q[t][j]).sum::<f32>()
            })
            .collect();
        let got = linear_cka(Representation::new(&xr, d).unwrap(), ry).unwrap();
        assert!((got - base).abs() < 1e-6, "{got} vs {base}");
    }

    #[test]
    fn matrix_agrees_with_pairs_and_flags_constant_sites() {
        let n = 40;
        let a = random(n, 4, 6);
        let b: Vec<f32> = a.iter().map(|v| v * v).collect();
        let c = random(n, 2, 7);
        let constant = vec![1.5f32; n * 3];
        let reps = [
            Representation::new(&a, 4).unwrap(),
            Representation::new(&b, 4).unwrap(),
            Representation::new(&c, 2).unwrap(),
            Representation::new(&constant, 3).unwrap(),
        ];
        let m = cka_matrix(&reps, &crate::progress::Hidden).unwrap();
        for i in 0..3 {
            assert!((m[i * 4 + i] - 1.0).abs() < 1e-12);
            for j in 0..3 {
                let want = cka_by_hsic(reps[i].x, reps[i].width, reps[j].x, reps[j].width);
                assert!((m[i * 4 + j] - want).abs() < 1e-9, "({i},{j})");
            }
            assert!(m[i * 4 + 3].is_nan());
        }
        assert!(m[15].is_nan());
    }

    #[test]
    fn both_routes_agree_and_wide_sites_take_the_kernel_route() {
        let n = 30;
        let wide = random(n, 200, 10);
        let narrow: Vec<f32> = (0..n * 3)
            .map(|k| wide[(k / 3) * 200 + k % 3] + 0.5)
            .collect();
        let other = random(n, 150, 11);
        let reps = [
            Representation::new(&wide, 200).unwrap(),
            Representation::new(&narrow, 3).unwrap(),
            Representation::new(&other, 150).unwrap(),
        ];
        assert!(kernel_route_is_cheaper(n, &reps));
        assert!(!kernel_route_is_cheaper(n, &reps[1..2]));
        let a = by_kernels(&reps, &crate::progress::Hidden);
        let b = by_features(&reps, &crate::progress::Hidden);
        for (k, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!((p - q).abs() < 1e-6, "entry {k}: {p} vs {q}");
        }
        let want = cka_by_hsic(&wide, 200, &narrow, 3);
        assert!((a[1] - want).abs() < 1e-6, "{} vs {want}", a[1]);
    }

    #[test]
    fn mismatched_rows_are_errors() {
        let a = random(10, 2, 8);
        let b = random(9, 2, 9);
        let err = linear_cka(
            Representation::new(&a, 2).unwrap(),
            Representation::new(&b, 2).unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("rows"), "{err}");
        assert!(Representation::new(&a, 3).is_err());
    }
}
