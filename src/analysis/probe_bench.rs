//! The logistic-probe benchmark against scikit-learn: a seeded latent-like dataset
//! (low-rank correlated features, offsets, a class signal along a random direction),
//! written as .npy so `benches/sklearn_logistic.py` fits scikit-learn on the very same
//! numbers, and a timed fit of our solver on it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use faer::{Mat, MatRef};
use serde::Serialize;

use crate::analysis::design::{Blocks, Moments};
use crate::analysis::logistic::{self, LogisticOptions, LogisticProblem, Preconditioner};
use crate::error::IoContext;
use crate::rng;

/// Train and test rows of the benchmark problem (row-major features, 0/1 labels).
pub struct BenchData {
    pub width: usize,
    pub x_train: Vec<f32>,
    pub y_train: Vec<u32>,
    pub x_test: Vec<f32>,
    pub y_test: Vec<u32>,
}

/// Rank of the shared factor structure of the features.
const FACTORS: usize = 32;

/// Features x = factors * loadings + 0.5 noise + offset, plus +-signal along a random
/// unit direction for class 1/0. `signal` = 0.25 gives a test accuracy near 0.9 at
/// 20000 x 768.
pub fn bench_data(
    n_train: usize,
    n_test: usize,
    width: usize,
    signal: f32,
    seed: u64,
) -> BenchData {
    let n = n_train + n_test;
    let factors = rng::gaussian(seed, 1, n * FACTORS);
    let loadings: Vec<f32> = rng::gaussian(seed, 2, FACTORS * width)
        .iter()
        .map(|v| v * 0.5)
        .collect();
    let noise = rng::gaussian(seed, 3, n * width);
    let dir = rng::gaussian(seed, 4, width);
    let norm = dir.iter().map(|v| v * v).sum::<f32>().sqrt();
    let offset = rng::gaussian(seed, 5, width);
    let mut shared = Mat::<f32>::zeros(n, width);
    faer::linalg::matmul::matmul(
        shared.as_mut(),
        faer::Accum::Replace,
        MatRef::from_row_major_slice(&factors, n, FACTORS),
        MatRef::from_row_major_slice(&loadings, FACTORS, width),
        1.0f32,
        crate::analysis::design::par(),
    );
    let mut label_rng = rng::stream(seed, 6);
    let mut x = Vec::with_capacity(n * width);
    let mut y = Vec::with_capacity(n);
    for r in 0..n {
        let c = rand::Rng::gen_range(&mut label_rng, 0..2u32);
        let s = if c == 1 { signal } else { -signal };
        for j in 0..width {
            x.push(
                shared[(r, j)]
                    + 0.5 * noise[r * width + j]
                    + 2.0 * offset[j]
                    + s * dir[j] / norm * 8.0,
            );
        }
        y.push(c);
    }
    let x_test = x.split_off(n_train * width);
    let y_test = y.split_off(n_train);
    BenchData {
        width,
        x_train: x,
        y_train: y,
        x_test,
        y_test,
    }
}

impl BenchData {
    /// Writes x_train.npy, y_train.npy, x_test.npy, y_test.npy into `dir`.
    pub fn write_npy(&self, dir: &Path) -> crate::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).at(dir)?;
        let d = self.width;
        let mut out = Vec::new();
        for (name, x, y) in [
            ("train", &self.x_train, &self.y_train),
            ("test", &self.x_test, &self.y_test),
        ] {
            let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            out.push(write_npy(
                &dir.join(format!("x_{name}.npy")),
                "<f4",
                &[y.len(), d],
                &xb,
            )?);
            let yb: Vec<u8> = y.iter().flat_map(|v| (*v as i32).to_le_bytes()).collect();
            out.push(write_npy(
                &dir.join(format!("y_{name}.npy")),
                "<i4",
                &[y.len()],
                &yb,
            )?);
        }
        Ok(out)
    }
}

/// A minimal .npy (format 1.0) writer for little-endian C-order arrays.
fn write_npy(path: &Path, dtype: &str, shape: &[usize], data: &[u8]) -> crate::Result<PathBuf> {
    let dims: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + header length (2) + header, padded to 64 bytes with '\n'.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::fs::File::create(path).at(path)?;
    f.write_all(b"\x93NUMPY\x01\x00").at(path)?;
    f.write_all(&(header.len() as u16).to_le_bytes()).at(path)?;
    f.write_all(header.as_bytes()).at(path)?;
    f.write_all(data).at(path)?;
    Ok(path.to_path_buf())
}

/// What one benchmark fit measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub n_train: usize,
    pub n_test: usize,
    pub width: usize,
    pub c: f64,
    /// Wall time of the whole fit: statistics, standardization, preconditioner, L-BFGS.
    pub fit_seconds: f64,
    /// Part of `fit_seconds` spent on X^T X and the preconditioner.
    pub setup_seconds: f64,
    pub iterations: usize,
    pub converged: bool,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
}

/// Fits our binary logistic regression (scikit-learn's objective with `c`, on
/// standardized features, tol 1e-4) on the train rows and scores the test rows.
pub fn bench_logistic(data: &BenchData, c: f64) -> crate::Result<BenchReport> {
    let d = data.width;
    let n = data.y_train.len();
    let start = Instant::now();
    let view = MatRef::from_row_major_slice(&data.x_train, n, d);
    let moments = Moments::of(view);
    let st = moments.standardizer();
    let lambda = 1.0 / (c * n as f64);
    let pre = Preconditioner::new(&moments.correlation(&st), 2, lambda)?;
    let setup_seconds = start.elapsed().as_secs_f64();
    let problem = LogisticProblem {
        x: Blocks {
            blocks: vec![view],
            width: d,
        },
        labels: &data.y_train,
        n_classes: 2,
        standardizer: &st,
    };
    let model = logistic::fit(&problem, lambda, &pre, None, &LogisticOptions::default());
    let fit_seconds = start.elapsed().as_secs_f64();
    let accuracy = |x: &[f32], y: &[u32]| {
        let blocks = Blocks {
            blocks: vec![MatRef::from_row_major_slice(x, y.len(), d)],
            width: d,
        };
        let m = model.margins(&blocks, &st);
        let hits = y
            .iter()
            .enumerate()
            .filter(|(r, &c)| (m[(*r, 0)] > 0.0) == (c == 1))
            .count();
        hits as f64 / y.len().max(1) as f64
    };
    Ok(BenchReport {
        n_train: n,
        n_test: data.y_test.len(),
        width: d,
        c,
        fit_seconds,
        setup_seconds,
        iterations: model.iterations,
        converged: model.converged,
        train_accuracy: accuracy(&data.x_train, &data.y_train),
        test_accuracy: accuracy(&data.x_test, &data.y_test),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let dir = tempfile::tempdir().unwrap();
        let data = bench_data(6, 2, 3, 0.25, 1);
        let files = data.write_npy(dir.path()).unwrap();
        let bytes = std::fs::read(&files[0]).unwrap();
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
        assert!(
            header.contains("'descr': '<f4'") && header.contains("'shape': (6, 3)"),
            "{header}"
        );
        assert_eq!(bytes.len(), 10 + hlen + 6 * 3 * 4);
        assert_eq!(
            f32::from_le_bytes(bytes[10 + hlen..14 + hlen].try_into().unwrap()),
            data.x_train[0]
        );
    }

    #[test]
    fn bench_fit_learns_the_signal() {
        let data = bench_data(2000, 500, 64, 0.25, 3);
        let r = bench_logistic(&data, 1.0).unwrap();
        assert!(r.converged && r.test_accuracy > 0.75, "{r:?}");
    }
}
