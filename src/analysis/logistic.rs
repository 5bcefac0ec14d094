//! L2-regularized logistic regression (binary sigmoid, or multinomial softmax) on
//! standardized features, with the objective scaled like scikit-learn's:
//! mean log-loss + lambda/2 ||W||^2, lambda = 1 / (C n); the intercept is not penalized.
//!
//! Why it is fast: L-BFGS preconditioned by the Bohning curvature bound
//! (c * correlation + lambda I, c = 1/4 binary, 1/2 multinomial), whose inverse comes
//! from one Cholesky; the line search runs in margin space (X(w + a p) = Xw + a Xp), so
//! an iteration costs two passes over the data (X p and X^T r) whatever the number of
//! trial steps. Standardization is folded into the weights, never materialized.

use faer::linalg::solvers::Solve;
use faer::{Mat, MatRef, Side};

use crate::analysis::design::{self, Blocks, Standardizer, MIN_COLS};
use crate::analysis::rowspace::RowBasis;

/// One fitting problem: rows, their class codes, and the standardization of its rows.
pub struct LogisticProblem<'a> {
    pub x: Blocks<'a>,
    /// Class of each row (0..n_classes), aligned with `x`'s rows.
    pub labels: &'a [u32],
    pub n_classes: usize,
    pub standardizer: &'a Standardizer,
}

impl LogisticProblem<'_> {
    /// Number of weight columns: 1 for two classes (sigmoid), else one per class.
    pub fn outputs(&self) -> usize {
        outputs(self.n_classes)
    }
}

pub fn outputs(n_classes: usize) -> usize {
    if n_classes == 2 {
        1
    } else {
        n_classes
    }
}

/// Stopping rule and iteration cap.
#[derive(Debug, Clone, Copy)]
pub struct LogisticOptions {
    /// Stop when max |gradient| <= tol (scikit-learn's `tol`, default 1e-4).
    pub tol: f64,
    /// Stop when the relative decrease of the objective falls below this (scipy's ftol).
    pub ftol: f64,
    pub max_iter: usize,
}

impl Default for LogisticOptions {
    fn default() -> Self {
        LogisticOptions {
            tol: 1e-4,
            ftol: 2.2e-9,
            max_iter: 500,
        }
    }
}

/// The inverse of the curvature bound c * corr + lambda I (and 1/c for the intercept).
pub struct Preconditioner {
    inv: Mat<f64>,
    intercept: f64,
}

impl Preconditioner {
    /// `corr` is the correlation matrix of the training rows (`Moments::correlation`).
    pub fn new(corr: &Mat<f64>, n_classes: usize, lambda: f64) -> crate::Result<Preconditioner> {
        let c = curvature(n_classes);
        let d = corr.nrows();
        // A small floor keeps the bound invertible when lambda is tiny and features collinear;
        // wide, rank-deficient sites (more features than rows, accumulated in f32) can still
        // have slightly negative eigenvalues, so the floor grows until the factorisation holds.
        // Any positive-definite bound gives a valid preconditioner; only its quality changes.
        let mut ridge = lambda.max(1e-3 * c);
        let llt = loop {
            let p = Mat::<f64>::from_fn(d, d, |i, j| {
                c * corr[(i, j)] + if i == j { ridge } else { 0.0 }
            });
            match p.llt(Side::Lower) {
                Ok(llt) => break llt,
                Err(_) if ridge >= c => {
                    // The bound is unusable: fall back to the diagonal one (always valid).
                    return Ok(Preconditioner {
                        inv: Mat::<f64>::from_fn(d, d, |i, j| {
                            if i == j {
                                1.0 / (c + ridge)
                            } else {
                                0.0
                            }
                        }),
                        intercept: 1.0 / c,
                    });
                }
                Err(_) => ridge *= 10.0,
            }
        };
        let mut inv = Mat::<f64>::identity(d, d);
        llt.solve_in_place(inv.as_mut());
        Ok(Preconditioner {
            inv,
            intercept: 1.0 / c,
        })
    }

    /// Applies the inverse bound to a parameter vector (W column-major, then b).
    fn apply(&self, v: &[f64], k: usize) -> Vec<f64> {
        let d = self.inv.nrows();
        let vm = weights_mat(v, d, k);
        let mut out = Mat::<f64>::zeros(d, vm.ncols());
        faer::linalg::matmul::matmul(
            out.as_mut(),
            faer::Accum::Replace,
            self.inv.as_ref(),
            vm.as_ref(),
            1.0,
            design::par(),
        );
        let mut r = vec![0.0; v.len()];
        for c in 0..k {
            for j in 0..d {
                r[c * d + j] = out[(j, c)];
            }
            r[d * k + c] = v[d * k + c] * self.intercept;
        }
        r
    }
}

fn curvature(n_classes: usize) -> f64 {
    if n_classes == 2 {
        0.25
    } else {
        0.5
    }
}

/// A fitted model in standardized coordinates.
#[derive(Debug, Clone)]
pub struct LogisticModel {
    /// d x k weights (k = 1 for two classes), standardized feature space.
    pub w: Mat<f64>,
    pub b: Vec<f64>,
    pub iterations: usize,
    pub converged: bool,
    /// Final objective value.
    pub objective: f64,
}

impl LogisticModel {
    /// The model in standardized feature space, from one fitted in `basis` coordinates.
    pub fn lift(self, basis: &RowBasis) -> LogisticModel {
        LogisticModel {
            w: basis.lift(&self.w),
            ..self
        }
    }

    /// Margins (n x max(k, MIN_COLS), first k columns meaningful) of the rows `x`.
    pub fn margins(&self, x: &Blocks<'_>, st: &Standardizer) -> Mat<f32> {
        let (w, b) = st.to_raw(self.w.as_ref(), &self.b);
        let mut m = x.mul(w.as_ref());
        design::add_bias(&mut m, &b);
        m
    }

    /// Class probabilities per row (n x n_classes, row-major).
    pub fn probabilities(&self, x: &Blocks<'_>, st: &Standardizer) -> Vec<Vec<f64>> {
        let m = self.margins(x, st);
        let k = self.w.ncols();
        (0..m.nrows())
            .map(|r| {
                if k == 1 {
                    let p = sigmoid(m[(r, 0)] as f64);
                    vec![1.0 - p, p]
                } else {
                    softmax(&(0..k).map(|c| m[(r, c)] as f64).collect::<Vec<_>>())
                }
            })
            .collect()
    }

    /// Weights and biases acting on raw (unstandardized) features: the direction a tap
    /// can steer along. `raw_offset` is what was subtracted from the features before
    /// fitting (zero if nothing).
    pub fn raw_direction(
        &self,
        st: &Standardizer,
        raw_offset: &[f64],
    ) -> (Vec<Vec<f64>>, Vec<f64>) {
        st.raw_direction(self.w.as_ref(), &self.b, raw_offset)
    }
}

pub fn sigmoid(m: f64) -> f64 {
    if m >= 0.0 {
        1.0 / (1.0 + (-m).exp())
    } else {
        let e = m.exp();
        e / (1.0 + e)
    }
}

fn softplus(m: f64) -> f64 {
    m.max(0.0) + (-m.abs()).exp().ln_1p()
}

fn softmax(m: &[f64]) -> Vec<f64> {
    let mx = m.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = m.iter().map(|v| (v - mx).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Copies the W part of a flat parameter vector into a d x max(k, MIN_COLS) matrix.
fn weights_mat(theta: &[f64], d: usize, k: usize) -> Mat<f64> {
    Mat::from_fn(d, k.max(MIN_COLS), |j, c| {
        if c < k {
            theta[c * d + j]
        } else {
            0.0
        }
    })
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Mean loss of margins `m + alpha dm`, its derivative in alpha, and optionally the
/// residuals (probability - one-hot) per row.
fn eval_margins(
    m: MatRef<'_, f32>,
    dm: Option<MatRef<'_, f32>>,
    alpha: f64,
    labels: &[u32],
    k: usize,
    resid: Option<&mut Mat<f32>>,
) -> (f64, f64) {
    let n = labels.len();
    let mut loss = 0.0;
    let mut slope = 0.0;
    let mut resid = resid;
    let mut row = vec![0.0f64; k];
    for (r, &y) in labels.iter().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = m[(r, c)] as f64 + dm.map_or(0.0, |d| alpha * d[(r, c)] as f64);
        }
        if k == 1 {
            let yv = y as f64;
            loss += softplus(row[0]) - yv * row[0];
            let res = sigmoid(row[0]) - yv;
            if let Some(d) = dm {
                slope += res * d[(r, 0)] as f64;
            }
            if let Some(out) = resid.as_deref_mut() {
                out[(r, 0)] = res as f32;
            }
        } else {
            let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|v| (v - mx).exp()).sum();
            let lse = mx + s.ln();
            loss += lse - row[y as usize];
            for c in 0..k {
                let res = (row[c] - lse).exp() - if c == y as usize { 1.0 } else { 0.0 };
                if let Some(d) = dm {
                    slope += res * d[(r, c)] as f64;
                }
                if let Some(out) = resid.as_deref_mut() {
                    out[(r, c)] = res as f32;
                }
            }
        }
    }
    (loss / n as f64, slope / n as f64)
}

/// Objective value and gradient at `theta` given its margins.
struct Point {
    theta: Vec<f64>,
    margins: Mat<f32>,
    f: f64,
    grad: Vec<f64>,
}

fn evaluate(p: &LogisticProblem<'_>, lambda: f64, theta: Vec<f64>, margins: Mat<f32>) -> Point {
    let d = p.x.width;
    let k = p.outputs();
    let n = p.labels.len() as f64;
    let mut resid = Mat::<f32>::zeros(margins.nrows(), k.max(MIN_COLS));
    let (loss, _) = eval_margins(margins.as_ref(), None, 0.0, p.labels, k, Some(&mut resid));
    let xtr = p.x.tmul(resid.as_ref());
    let st = p.standardizer;
    let mut grad = vec![0.0; (d + 1) * k];
    for c in 0..k {
        let rsum: f64 = resid.col(c).iter().map(|&v| v as f64).sum();
        for j in 0..d {
            grad[c * d + j] = (xtr[(j, c)] as f64 - st.mean[j] * rsum) / (st.scale[j] * n)
                + lambda * theta[c * d + j];
        }
        grad[d * k + c] = rsum / n;
    }
    let w_norm2: f64 = theta[..d * k].iter().map(|v| v * v).sum();
    Point {
        f: loss + 0.5 * lambda * w_norm2,
        theta,
        margins,
        grad,
    }
}

/// Margins of a parameter vector on the problem's rows.
fn margins_of(p: &LogisticProblem<'_>, theta: &[f64]) -> Mat<f32> {
    let d = p.x.width;
    let k = p.outputs();
    let w = weights_mat(theta, d, k);
    let (wr, br) = p.standardizer.to_raw(w.as_ref(), &theta[d * k..]);
    let mut m = p.x.mul(wr.as_ref());
    design::add_bias(&mut m, &br);
    m
}

/// Fits the model by preconditioned L-BFGS, optionally from a previous solution.
pub fn fit(
    p: &LogisticProblem<'_>,
    lambda: f64,
    pre: &Preconditioner,
    warm: Option<&LogisticModel>,
    opts: &LogisticOptions,
) -> LogisticModel {
    fit_until(p, lambda, pre, warm, opts, &max_abs)
}

/// `fit`, with `grad_size` measuring the gradient for the `tol` test.
fn fit_until(
    p: &LogisticProblem<'_>,
    lambda: f64,
    pre: &Preconditioner,
    warm: Option<&LogisticModel>,
    opts: &LogisticOptions,
    grad_size: &dyn Fn(&[f64]) -> f64,
) -> LogisticModel {
    let d = p.x.width;
    let k = p.outputs();
    let theta0 = match warm {
        Some(w) => {
            let mut t: Vec<f64> = (0..k)
                .flat_map(|c| (0..d).map(move |j| (c, j)))
                .map(|(c, j)| w.w[(j, c)])
                .collect();
            t.extend_from_slice(&w.b);
            t
        }
        None => vec![0.0; (d + 1) * k],
    };
    let m0 = margins_of(p, &theta0);
    let mut x = evaluate(p, lambda, theta0, m0);
    let memory = 10;
    let mut hist: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let mut gamma = 1.0;
    let mut iterations = 0;
    let mut converged = grad_size(&x.grad) <= opts.tol;
    while !converged && iterations < opts.max_iter {
        iterations += 1;
        let dir = two_loop(&x.grad, &hist, pre, k, gamma);
        let dphi0 = dot(&dir, &x.grad);
        let dir = if dphi0 < 0.0 {
            dir
        } else {
            x.grad.iter().map(|g| -g).collect()
        };
        // Margins are linear in theta, so the margins of the step are those of `dir`.
        let dm = margins_of(p, &dir);
        let alpha = line_search(p, lambda, &x, &dir, dm.as_ref());
        let Some(alpha) = alpha else { break };
        let theta: Vec<f64> = x
            .theta
            .iter()
            .zip(&dir)
            .map(|(t, s)| t + alpha * s)
            .collect();
        let mut margins = x.margins.clone();
        for c in 0..k {
            for r in 0..margins.nrows() {
                margins[(r, c)] += (alpha * dm[(r, c)] as f64) as f32;
            }
        }
        let next = evaluate(p, lambda, theta, margins);
        let s: Vec<f64> = dir.iter().map(|v| alpha * v).collect();
        let y: Vec<f64> = next.grad.iter().zip(&x.grad).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 * dot(&y, &y).sqrt() * dot(&s, &s).sqrt() {
            let hy = pre.apply(&y, k);
            gamma = sy / dot(&y, &hy);
            hist.push_back((s, y, 1.0 / sy));
            if hist.len() > memory {
                hist.pop_front();
            }
        }
        let decrease = (x.f - next.f) / x.f.abs().max(next.f.abs()).max(1.0);
        x = next;
        converged = grad_size(&x.grad) <= opts.tol || decrease <= opts.ftol;
    }
    let w = Mat::from_fn(d, k, |j, c| x.theta[c * d + j]);
    LogisticModel {
        w,
        b: x.theta[d * k..].to_vec(),
        iterations,
        converged,
        objective: x.f,
    }
}

/// `fit` on the reduced rows of a row basis (see `rowspace`): the same optimum for wide
/// training sets. `pre` should come from `basis.covariance()`; the model (and `warm`) are
/// in reduced coordinates (r x k weights): `LogisticModel::lift` maps them back.
///
/// The iterates are those of `fit` on the full features (mapped by the basis; the
/// preconditioner, like the gradient, acts within the row space), so the `tol` test is
/// made on the gradient in feature space too, V g: the fit stops where `fit` would.
pub fn fit_in_basis(
    basis: &RowBasis,
    labels: &[u32],
    n_classes: usize,
    lambda: f64,
    pre: &Preconditioner,
    warm: Option<&LogisticModel>,
    opts: &LogisticOptions,
) -> LogisticModel {
    let problem = LogisticProblem {
        x: basis.rows(),
        labels,
        n_classes,
        standardizer: &basis.identity,
    };
    let (r, k) = (basis.rank(), problem.outputs());
    let feature_grad_size = |g: &[f64]| {
        let gw = basis.lift(&weights_mat(g, r, k));
        let w_part = (0..k).fold(0.0f64, |m, c| {
            gw.col(c).iter().fold(m, |m, v| m.max(v.abs()))
        });
        w_part.max(max_abs(&g[r * k..]))
    };
    fit_until(&problem, lambda, pre, warm, opts, &feature_grad_size)
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// L-BFGS two-loop recursion with the preconditioner as initial inverse Hessian.
fn two_loop(
    grad: &[f64],
    hist: &std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)>,
    pre: &Preconditioner,
    k: usize,
    gamma: f64,
) -> Vec<f64> {
    let mut q: Vec<f64> = grad.to_vec();
    let mut alphas = Vec::with_capacity(hist.len());
    for (s, y, rho) in hist.iter().rev() {
        let a = rho * dot(s, &q);
        for (qi, yi) in q.iter_mut().zip(y) {
            *qi -= a * yi;
        }
        alphas.push(a);
    }
    let mut r: Vec<f64> = pre.apply(&q, k).iter().map(|v| v * gamma).collect();
    for ((s, y, rho), a) in hist.iter().zip(alphas.iter().rev()) {
        let b = rho * dot(y, &r);
        for (ri, si) in r.iter_mut().zip(s) {
            *ri += (a - b) * si;
        }
    }
    r.iter().map(|v| -v).collect()
}

/// Strong-Wolfe line search along `dir` (c1 = 1e-4, c2 = 0.9), each trial costing only
/// a pass over the n x k margins. None if no decrease is possible (at machine precision).
fn line_search(
    p: &LogisticProblem<'_>,
    lambda: f64,
    x: &Point,
    dir: &[f64],
    dm: MatRef<'_, f32>,
) -> Option<f64> {
    let d = p.x.width;
    let k = p.outputs();
    let (ww, wp, pp) = (
        dot(&x.theta[..d * k], &x.theta[..d * k]),
        dot(&x.theta[..d * k], &dir[..d * k]),
        dot(&dir[..d * k], &dir[..d * k]),
    );
    let phi = |a: f64| {
        let (loss, slope) = eval_margins(x.margins.as_ref(), Some(dm), a, p.labels, k, None);
        let f = loss + 0.5 * lambda * (ww + 2.0 * a * wp + a * a * pp);
        (f, slope + lambda * (wp + a * pp))
    };
    let (f0, g0) = (x.f, dot(&x.grad, dir));
    let (c1, c2) = (1e-4, 0.9);
    let (mut lo, mut hi) = (0.0f64, f64::INFINITY);
    let mut a = 1.0;
    for _ in 0..40 {
        let (f, g) = phi(a);
        if !f.is_finite() || f > f0 + c1 * a * g0 {
            hi = a;
        } else if g < c2 * g0 {
            lo = a;
        } else {
            return Some(a);
        }
        a = if hi.is_finite() {
            0.5 * (lo + hi)
        } else {
            2.0 * a
        };
        if hi.is_finite() && hi - lo < 1e-12 {
            break;
        }
    }
    // Fall back to the best sufficient-decrease step found, if any.
    (lo > 0.0).then_some(lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::design::Moments;

    /// The fixed dataset of the scikit-learn reference (same closed form in Python).
    fn dataset() -> (Vec<f32>, Vec<f64>) {
        let (n, d) = (60, 4);
        let mut x = Vec::with_capacity(n * d);
        let mut q = Vec::with_capacity(n);
        for i in 0..n {
            for j in 0..d {
                x.push((0.37 * i as f64 * (j + 1) as f64 + j as f64).sin() as f32);
            }
            q.push(x[i * d] as f64 + 0.5 * x[i * d + 1] as f64 + 0.8 * (2.1 * i as f64).sin());
        }
        (x, q)
    }

    fn fit_all(x: &[f32], labels: &[u32], n_classes: usize, c: f64) -> LogisticModel {
        let (n, d) = (labels.len(), x.len() / labels.len());
        let view = MatRef::from_row_major_slice(x, n, d);
        let moments = Moments::of(view);
        let st = moments.standardizer();
        let lambda = 1.0 / (c * n as f64);
        let pre = Preconditioner::new(&moments.correlation(&st), n_classes, lambda).unwrap();
        let problem = LogisticProblem {
            x: Blocks {
                blocks: vec![view],
                width: d,
            },
            labels,
            n_classes,
            standardizer: &st,
        };
        let opts = LogisticOptions {
            tol: 1e-9,
            ftol: 0.0,
            max_iter: 1000,
        };
        let model = fit(&problem, lambda, &pre, None, &opts);
        assert!(model.converged);
        model
    }

    /// `fit_all` through a row basis (rank d here, so the basis spans every direction).
    fn fit_all_in_basis(x: &[f32], labels: &[u32], n_classes: usize, c: f64) -> LogisticModel {
        let (n, d) = (labels.len(), x.len() / labels.len());
        let view = MatRef::from_row_major_slice(x, n, d);
        let st = Moments::of(view).standardizer();
        let basis = RowBasis::new(
            &Blocks {
                blocks: vec![view],
                width: d,
            },
            st,
        )
        .unwrap();
        let lambda = 1.0 / (c * n as f64);
        let pre = Preconditioner::new(&basis.covariance(), n_classes, lambda).unwrap();
        let opts = LogisticOptions {
            tol: 1e-9,
            ftol: 0.0,
            max_iter: 1000,
        };
        let model = fit_in_basis(&basis, labels, n_classes, lambda, &pre, None, &opts);
        assert!(model.converged);
        model.lift(&basis)
    }

    fn assert_close(got: f64, want: f64) {
        assert!(
            (got - want).abs() < 2e-4 * (1.0 + want.abs()),
            "{got} vs sklearn {want}"
        );
    }

    // scikit-learn 1.9.1: LogisticRegression(C=0.5, tol=1e-10) on the standardized data.
    #[test]
    fn binary_coefficients_match_sklearn() {
        let (x, q) = dataset();
        let y: Vec<u32> = q.iter().map(|&v| (v > 0.0) as u32).collect();
        let full = fit_all(&x, &y, 2, 0.5);
        let rows = fit_all_in_basis(&x, &y, 2, 0.5);
        for m in [full, rows] {
            let want = [
                1.3661539965266667,
                0.8428515700595943,
                -0.11129027884869273,
                -0.17842138374425212,
            ];
            for (j, w) in want.iter().enumerate() {
                assert_close(m.w[(j, 0)], *w);
            }
            assert_close(m.b[0], 0.12557650079049237);
        }
    }

    #[test]
    fn multinomial_coefficients_match_sklearn() {
        let (x, q) = dataset();
        let y: Vec<u32> = q
            .iter()
            .map(|&v| (v >= -0.5) as u32 + (v >= 0.5) as u32)
            .collect();
        for m in [fit_all(&x, &y, 3, 0.5), fit_all_in_basis(&x, &y, 3, 0.5)] {
            let want = [
                [
                    -1.3044495627351729,
                    -0.6014256377501295,
                    -0.07711025278013785,
                    -0.0014007427251695641,
                ],
                [
                    0.28750665942250475,
                    0.24315085237986506,
                    0.14042970490555018,
                    0.025083383840224103,
                ],
                [
                    1.0169429033126685,
                    0.3582747853702643,
                    -0.06331945212541275,
                    -0.02368264111505461,
                ],
            ];
            let want_b = [-0.8062004544353482, 0.4936515030486735, 0.3125489513866754];
            for (c, (wc, bc)) in want.iter().zip(want_b).enumerate() {
                for (j, w) in wc.iter().enumerate() {
                    assert_close(m.w[(j, c)], *w);
                }
                assert_close(m.b[c], bc);
            }
        }
    }

    #[test]
    fn raw_direction_gives_the_same_margins_as_the_standardized_model() {
        let (x, q) = dataset();
        let y: Vec<u32> = q.iter().map(|&v| (v > 0.0) as u32).collect();
        let m = fit_all(&x, &y, 2, 0.5);
        let view = MatRef::from_row_major_slice(&x, 60, 4);
        let st = Moments::of(view).standardizer();
        let margins = m.margins(
            &Blocks {
                blocks: vec![view],
                width: 4,
            },
            &st,
        );
        let offset = [0.25, -1.0, 0.0, 3.0];
        // Features shifted by `offset` before fitting: the raw direction acts on x + offset.
        let (w, b) = m.raw_direction(&st, &offset);
        for r in 0..60 {
            let direct: f64 = (0..4)
                .map(|j| w[0][j] * (x[r * 4 + j] as f64 + offset[j]))
                .sum::<f64>()
                + b[0];
            assert!((direct - margins[(r, 0)] as f64).abs() < 1e-4);
        }
    }
}
