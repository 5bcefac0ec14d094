//! Times our logistic probe on the seeded benchmark data and writes the same data as
//! .npy for `benches/sklearn_logistic.py`:
//! `cargo run --example bench_probe -- [DIR] [N_TRAIN] [WIDTH] [SIGNAL]`.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.first().map_or("target/bench_probe", |s| s.as_str()));
    let n_train: usize = args.get(1).map_or(Ok(20_000), |s| s.parse())?;
    let width: usize = args.get(2).map_or(Ok(768), |s| s.parse())?;
    let signal: f32 = args.get(3).map_or(Ok(0.08), |s| s.parse())?;
    let data = latentlens::analysis::probe_bench::bench_data(n_train, 5_000, width, signal, 0);
    data.write_npy(&dir)?;
    for _ in 0..3 {
        let report = latentlens::analysis::probe_bench::bench_logistic(&data, 1.0)?;
        println!("{}", serde_json::to_string(&report)?);
    }
    println!("data written to {}", dir.display());
    Ok(())
}
