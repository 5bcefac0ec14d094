//! `latentlens bench probe`: our logistic solver against scikit-learn on the same data.

use std::path::PathBuf;

use clap::Args;

use super::common;
use crate::analysis::probe::{self, ProbeConfig, ProbeInput, Target};

/// `latentlens bench probe`: our logistic solver on seeded latent-like data; compare with
/// `python benches/sklearn_logistic.py DIR` on the same data (`--write-data DIR`).
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens bench probe --write-data target/bench_probe
  python benches/sklearn_logistic.py target/bench_probe")]
pub struct BenchProbeArgs {
    /// Training rows (5000 more rows are the test set).
    #[arg(long, default_value_t = 20_000)]
    pub rows: usize,
    #[arg(long, default_value_t = 768)]
    pub width: usize,
    /// Class separation of the generated data (0.08: test accuracy about 0.89).
    #[arg(long, default_value_t = 0.08)]
    pub signal: f32,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Also write the data as .npy files here for the scikit-learn script.
    #[arg(long)]
    pub write_data: Option<PathBuf>,
    /// Also time the whole probe protocol (nested CV, control, this many permutations)
    /// on the training rows, one sample per row.
    #[arg(long)]
    pub protocol_permutations: Option<usize>,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run_bench(args: &BenchProbeArgs) -> anyhow::Result<()> {
    use crate::analysis::probe_bench;
    let data = probe_bench::bench_data(args.rows, 5_000, args.width, args.signal, 0);
    if let Some(dir) = &args.write_data {
        data.write_npy(dir)?;
        crate::outln!(
            "data written to {} (python benches/sklearn_logistic.py {})",
            dir.display(),
            dir.display()
        );
    }
    for _ in 0..args.repeats.max(1) {
        let r = probe_bench::bench_logistic(&data, 1.0)?;
        if args.json {
            crate::outln!("{}", serde_json::to_string(&r)?);
        } else {
            crate::outln!(
                "logistic C=1, {} x {}: fit {:.3} s (X^T X + preconditioner {:.3} s), {} iterations, \
                 train accuracy {:.4}, test accuracy {:.4}",
                r.n_train, r.width, r.fit_seconds, r.setup_seconds, r.iterations, r.train_accuracy, r.test_accuracy
            );
        }
    }
    if let Some(permutations) = args.protocol_permutations {
        let groups: Vec<u32> = (0..data.y_train.len() as u32).collect();
        let input = ProbeInput {
            x: &data.x_train,
            width: data.width,
            groups: &groups,
        };
        let cfg = ProbeConfig {
            permutations,
            ..ProbeConfig::default()
        };
        let target = Target::Categorical {
            codes: data.y_train.clone(),
            names: vec!["0".into(), "1".into()],
        };
        let bar = common::bar(cfg.work_units(), "probe");
        let start = std::time::Instant::now();
        let result = probe::probe(&input, &target, &cfg, &bar)?;
        bar.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        let acc = result.metrics.iter().find(|m| m.metric == "accuracy");
        crate::outln!(
            "whole protocol ({} folds x {} C values inner CV, control, {permutations} permutations, {} bootstrap): \
             {seconds:.1} s, accuracy {:.4} [{:.4}, {:.4}], chosen C {:?}",
            cfg.folds,
            cfg.c_grid.len(),
            cfg.bootstrap,
            acc.map_or(f64::NAN, |m| m.value),
            acc.map_or(f64::NAN, |m| m.ci_low),
            acc.map_or(f64::NAN, |m| m.ci_high),
            result.chosen_c
        );
    }
    Ok(())
}
