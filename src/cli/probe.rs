//! `latentlens probe`: flags -> `jobs::probe` plan -> job -> tables and figures -> summary.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::common;
use crate::analysis::probe::ProbeRow;
use crate::jobs::{self, probe};
use crate::store::Run;

/// Linear probes over site x step x label, with grouped CV, 95% intervals, a control task
/// and a permutation p-value.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens probe --run reports/demo --label shape
  latentlens probe --run reports/demo --label shape --label scale --sites 'latent,unet.*' --steps 0..50:10
  latentlens probe --run reports/bfs --label bfs_nodes:in_frontier --sites thought")]
pub struct ProbeArgs {
    /// Run folder made by `latentlens record`.
    #[arg(long)]
    pub run: PathBuf,
    /// Sites to probe, names or globs, comma-separated or repeated (default: every
    /// recorded site).
    #[arg(long)]
    pub sites: Vec<String>,
    /// Steps to probe among the recorded ones: `all`, `last`, `0,10,49`, `0..50:5`.
    #[arg(long, default_value = "all")]
    pub steps: String,
    /// Label to probe for (repeatable): a column of samples.parquet, or of any run table
    /// with a `sample` column (joined on sample, and on step/position when the table has
    /// them). `TABLE:COLUMN` picks the table. Floats are continuous (ridge); integers,
    /// strings and booleans are classes (logistic).
    #[arg(long = "label", required = true)]
    pub labels: Vec<String>,
    /// Labels to treat as continuous although their column holds integers.
    #[arg(long, value_delimiter = ',')]
    pub continuous: Vec<String>,
    /// Labels to treat as classes although their column holds floats.
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Cross-validation folds, grouped by sample (inner CV uses the other folds).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Label permutations for the p-value (0 = no test).
    #[arg(long, default_value_t = 100)]
    pub permutations: usize,
    /// Bootstrap resamples for the 95% intervals.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Drop rows whose features hold NaN/Inf instead of stopping.
    #[arg(long)]
    pub drop_nonfinite: bool,
    /// Analyse an unfinished recording (the table metadata says how many samples).
    #[arg(long)]
    pub allow_partial: bool,
}

impl ProbeArgs {
    pub fn options(&self) -> probe::Options {
        probe::Options {
            sites: self.sites.clone(),
            steps: self.steps.clone(),
            labels: self.labels.clone(),
            continuous: self.continuous.clone(),
            classes: self.classes.clone(),
            folds: self.folds,
            seed: self.seed,
            permutations: self.permutations,
            bootstrap: self.bootstrap,
            drop_nonfinite: self.drop_nonfinite,
            allow_partial: self.allow_partial,
        }
    }
}

pub fn run(args: &ProbeArgs) -> anyhow::Result<()> {
    let mut run = Run::open(&args.run)?;
    // This command writes: a second writer of the folder is refused before any work.
    run.lock()?;
    let plan = probe::plan(&run, &args.options())?;
    let started = Instant::now();
    let bar = common::bar(0, "probe");
    let out = probe::run(&run, &plan, &jobs::Ctx::new(&bar, common::interrupt_flag()))?;
    bar.finish_and_clear();
    let written = jobs::write(&mut run, &plan.identity, out, started)?;
    let rows = probe::probe_rows(&run.table("probes")?)?;
    let names: Vec<&str> = plan.labels.iter().map(|l| l.name.as_str()).collect();
    print_summary(&rows, &names)?;
    for p in written {
        crate::outln!("wrote {}", p.display());
    }
    Ok(())
}

fn print_summary(rows: &[ProbeRow], labels: &[&str]) -> anyhow::Result<()> {
    crate::outln!(
        "{:<28} {:>5} {:<16} {:<18} {:>7} {:>17} {:>8} {:>8} {:>8}",
        "site",
        "step",
        "label",
        "metric",
        "value",
        "95% CI",
        "control",
        "select.",
        "p"
    );
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let by_label = probe::headline_rows(rows);
    for label in labels {
        for r in by_label.get(*label).into_iter().flatten() {
            crate::outln!(
                "{:<28} {:>5} {:<16} {:<18} {:>7} {:>17} {:>8} {:>8} {:>8}",
                r.site,
                r.step,
                r.label,
                r.metric,
                f(r.value),
                format!("[{}, {}]", f(r.ci_low), f(r.ci_high)),
                f(r.control_value),
                f(r.selectivity),
                r.p_value.map_or("-".to_string(), |p| format!("{p:.4}")),
            );
        }
    }
    Ok(())
}
