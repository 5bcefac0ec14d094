//! `latentlens bench probe` before it is wired into the CLI:
//! `cargo run --example bench_probe -- --write-data target/bench_probe`, then
//! `python benches/sklearn_logistic.py target/bench_probe` for scikit-learn on the same data.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: latentlens::cli::probe::BenchProbeArgs,
}

fn main() -> anyhow::Result<()> {
    latentlens::cli::probe::run_bench(&Cli::parse().args)
}
