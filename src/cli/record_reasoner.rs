//! `latentlens record reasoner` and `latentlens sites reasoner`: run ProsQA questions through
//! a continuous-thought reasoner and record its sites at every pass (pass 0 = the prompt,
//! pass k = thought k, then `<eot>` and each decoded token).

use std::path::PathBuf;

use clap::Args;

use super::common;
use crate::jobs::{self, record_reasoner};
use crate::reasoner::source::ReasonerSource;
use crate::store::Start;
use crate::taps::Pool;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens record reasoner --run reports/bfs --data ../shared/data/prosqa_valid.json
  latentlens record reasoner --run reports/thoughts --data q.json --sites thought --limit 50")]
pub struct RecordReasoner {
    /// Run folder to create (or resume, if it holds this same run unfinished).
    #[arg(long, default_value = "reports/reasoner")]
    pub run: PathBuf,
    /// ProsQA JSON file (the real prosqa_valid.json or one from `data prosqa`).
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub source: ReasonerSource,
    /// Continuous thoughts before the answer.
    #[arg(long, default_value_t = 6)]
    pub thoughts: usize,
    /// Sites to record: names or globs, comma-separated or repeated. Attention patterns
    /// change shape from pass to pass and are left out of `*`.
    #[arg(long, default_value = "*")]
    pub sites: Vec<String>,
    /// Passes to keep: `all`, `last`, `0,1,2`, `1..7`.
    #[arg(long, default_value = "all")]
    pub steps: String,
    /// `none`: one row per position; `mean`: the vector averaged over a pass's positions.
    #[arg(long, value_enum, default_value_t = Pool::None)]
    pub pool: Pool,
    /// Record only the first N questions of the file.
    #[arg(long)]
    pub limit: Option<u32>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens sites reasoner
  latentlens sites reasoner --model weights/reasoner/cot/model")]
pub struct SitesReasoner {
    #[command(flatten)]
    pub source: ReasonerSource,
}

pub fn run_sites(args: &SitesReasoner) -> anyhow::Result<()> {
    let loaded = args.source.load(&super::common::device()?)?.loaded;
    crate::outln!(
        "{:<32} {:<10} shape (per question and pass)",
        "site",
        "fires"
    );
    for site in loaded.model.sites(1, 1) {
        let shape = site
            .dims
            .iter()
            .map(|(n, d)| match *n {
                "position" | "query" => format!("{n}=new positions"),
                "key" => format!("{n}=all positions"),
                _ => format!("{n}={d}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        crate::outln!("{:<32} {:<10} [{shape}]", site.name, "each pass");
    }
    Ok(())
}

pub fn run(args: &RecordReasoner) -> anyhow::Result<()> {
    let plan = record_reasoner::plan(&args.options(), &common::device()?)?;
    let bar = common::bar(plan.records.len() as u64, "recording");
    let ctx = jobs::Ctx::new(&bar, common::interrupt_flag());
    let (run, start, summary) = record_reasoner::run(&args.run, &plan, &ctx)?;
    bar.finish_and_clear();
    if start == Start::Complete {
        crate::outln!(
            "{} already holds this run, complete ({} rows); nothing to record",
            args.run.display(),
            summary.rows
        );
        return Ok(());
    }
    if start == Start::Resumed {
        eprintln!("resumed the run in {}", args.run.display());
    }
    let samples = run.samples()?;
    let correct = samples
        .column("correct")
        .ok()
        .and_then(|c| c.bool().ok().map(|b| b.sum().unwrap_or(0)))
        .unwrap_or(0);
    crate::outln!(
        "recorded {} questions ({} answered right with {} thoughts), {} rows ({:.1} MB) in \
         {:.1} s to {}",
        plan.records.len(),
        correct,
        args.thoughts,
        summary.rows,
        summary.bytes as f64 / 1e6,
        summary.seconds,
        args.run.display()
    );
    Ok(())
}

impl RecordReasoner {
    pub fn options(&self) -> record_reasoner::Options {
        let everything = self.sites.iter().all(|s| s == "*");
        record_reasoner::Options {
            source: self.source.clone(),
            data: Some(self.data.clone()),
            generate: None,
            limit: self.limit,
            thoughts: self.thoughts,
            sites: if everything {
                Vec::new()
            } else {
                self.sites.clone()
            },
            steps: self.steps.clone(),
            pool: self.pool,
        }
    }
}
