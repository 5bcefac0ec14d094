use faer::{Mat, MatRef, Par, Accum, Side};
use std::time::Instant;
fn main() {
    let (n, d) = (20000usize, 768usize);
    let x: Vec<f32> = (0..n*d).map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5).collect();
    let xr = MatRef::from_row_major_slice(&x, n, d);
    let par = Par::rayon(0);
    let mut g = Mat::<f32>::zeros(d, d);
    let t = Instant::now();
    faer::linalg::matmul::triangular::matmul(g.as_mut(), faer::linalg::matmul::triangular::BlockStructure::TriangularLower, Accum::Replace, xr.transpose(), faer::linalg::matmul::triangular::BlockStructure::Rectangular, xr, faer::linalg::matmul::triangular::BlockStructure::Rectangular, 1.0f32, par);
    println!("tri gram f32 {:?}", t.elapsed());
    let t = Instant::now();
    faer::linalg::matmul::matmul(g.as_mut(), Accum::Replace, xr.transpose(), xr, 1.0f32, par);
    println!("full gram f32 {:?}", t.elapsed());
    let gd = Mat::<f64>::from_fn(d, d, |i, j| g[(i, j)] as f64 / n as f64 + if i == j { 1.0 } else { 0.0 });
    let t = Instant::now();
    let e = gd.llt(Side::Lower).unwrap();
    println!("eigen {:?} {}", t.elapsed(), e.L()[(0,0)]);
    let t = Instant::now();
    let l = gd.llt(Side::Lower).unwrap();
    println!("llt {:?} {}", t.elapsed(), l.L()[(0,0)]);
    for k in [1usize, 2, 4, 8, 16] {
        let w = Mat::<f32>::from_fn(d, k, |i, _| i as f32 * 1e-3);
        let mut m = Mat::<f32>::zeros(n, k);
        let t = Instant::now();
        for _ in 0..5 { faer::linalg::matmul::matmul(m.as_mut(), Accum::Replace, xr, w.as_ref(), 1.0f32, par); }
        let a = t.elapsed() / 5;
        let mut gr = Mat::<f32>::zeros(d, k);
        let t = Instant::now();
        for _ in 0..5 { faer::linalg::matmul::matmul(gr.as_mut(), Accum::Replace, xr.transpose(), m.as_ref(), 1.0f32, par); }
        println!("k={k} Xw {:?} Xtr {:?}", a, t.elapsed() / 5);
    }
    let mut b = Mat::<f64>::from_fn(d, 1, |i, _| i as f64);
    let t = Instant::now();
    for _ in 0..10 { faer::linalg::solvers::Solve::solve_in_place(&l, b.as_mut()); }
    println!("llt solve {:?}", t.elapsed() / 10);
}
