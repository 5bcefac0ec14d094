//! `latentlens reduce`: flags -> `jobs::reduce` plan -> job -> tables and figures -> summary.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};

use super::common;
use crate::jobs::{self, reduce};
use crate::store::resolve::LabelKind;
use crate::store::Run;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    Pca,
    Umap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColourKind {
    Classes,
    Continuous,
}

/// PCA or UMAP of recorded sites, one fit per site over the chosen steps, with scree and
/// scatter plots.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens reduce --run reports/demo --sites unet.mid_block --steps last --color-by shape
  latentlens reduce --run reports/demo --method umap --sites latent --color-by scale --max-points 5000")]
pub struct ReduceArgs {
    /// Run folder written by `latentlens record`.
    #[arg(long)]
    pub run: PathBuf,
    /// Sites to reduce: names or patterns (`unet.*`), comma-separated or repeated
    /// (default: every recorded site).
    #[arg(long)]
    pub sites: Vec<String>,
    /// Steps to pool, among the recorded ones: `all`, `last`, `0,10,49`, `0..50:5`.
    #[arg(long, default_value = "all")]
    pub steps: String,
    #[arg(long, value_enum, default_value_t = Method::Pca)]
    pub method: Method,
    /// PCA components to keep (capped at the site's width).
    #[arg(long, default_value_t = 10)]
    pub components: usize,
    /// A label to colour scatter plots by: a column of samples.parquet or of a run table
    /// keyed by `sample` (`TABLE:COLUMN`). Floats are values (colour bar), everything else
    /// classes (legend), as in `probe`.
    #[arg(long)]
    pub color_by: Option<String>,
    /// Read --color-by as classes or as continuous values against that rule.
    #[arg(long, value_enum, requires = "color_by")]
    pub color_as: Option<ColourKind>,
    /// UMAP embeds at most this many rows (seeded uniform sample, streamed; the size is
    /// reported in umap_quality).
    #[arg(long, default_value_t = 20_000)]
    pub max_points: usize,
    /// UMAP's number of neighbours.
    #[arg(long, default_value_t = 15)]
    pub neighbours: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Analyse an unfinished recording (the table metadata says how many samples).
    #[arg(long)]
    pub allow_partial: bool,
}

impl ReduceArgs {
    pub fn options(&self) -> reduce::Options {
        reduce::Options {
            sites: self.sites.clone(),
            steps: self.steps.clone(),
            method: match self.method {
                Method::Pca => reduce::Method::Pca,
                Method::Umap => reduce::Method::Umap,
            },
            components: self.components,
            color_by: self.color_by.clone(),
            color_as: self.color_as.map(|k| match k {
                ColourKind::Classes => LabelKind::Classes,
                ColourKind::Continuous => LabelKind::Continuous,
            }),
            max_points: self.max_points,
            neighbours: self.neighbours,
            seed: self.seed,
            allow_partial: self.allow_partial,
        }
    }
}

pub fn run(args: &ReduceArgs) -> anyhow::Result<()> {
    let mut run = Run::open(&args.run)?;
    let plan = reduce::plan(&run, &args.options())?;
    let started = Instant::now();
    let bar = common::bar(0, plan.method.as_str());
    let out = reduce::run(&run, &plan, &jobs::Ctx::new(&bar, common::interrupt_flag()))?;
    bar.finish_and_clear();
    let written = jobs::write(&mut run, &plan.identity, out, started)?;
    let record = run
        .manifest()
        .analysis(&plan.identity.key)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the manifest lost the analysis it just recorded"))?;
    for finding in reduce::report(&run, &record)?.findings {
        crate::outln!("{finding}");
    }
    for p in written {
        crate::outln!("wrote {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ReduceArgs,
    }

    #[test]
    fn flags_become_options() {
        let w = Wrapper::try_parse_from([
            "reduce",
            "--run",
            "r",
            "--method",
            "umap",
            "--sites",
            "latent",
            "--color-by",
            "digit",
            "--color-as",
            "continuous",
            "--neighbours",
            "10",
        ])
        .unwrap();
        let o = w.args.options();
        assert_eq!(o.method, reduce::Method::Umap);
        assert_eq!(o.color_as, Some(LabelKind::Continuous));
        assert_eq!(
            (o.neighbours, o.components, o.steps.as_str()),
            (10, 10, "all")
        );
        assert!(
            Wrapper::try_parse_from(["reduce", "--run", "r", "--color-as", "classes"]).is_err()
        );
    }
}
