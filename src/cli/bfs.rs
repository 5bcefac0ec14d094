//! `latentlens bfs`: flags -> `jobs::bfs` plan -> job -> tables and figures -> summary.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use super::common;
use crate::jobs::{self, bfs};
use crate::reasoner::source::ReasonerSource;
use crate::report::Table;

/// Breadth-first-search analysis: node values, frontier mass, branch entropy and decoded
/// chains after k = 0..K continuous thoughts.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:
  latentlens bfs --run reports/reasoner
  latentlens bfs --run reports/reasoner --model weights/reasoner/cot/model --thoughts 3
  latentlens bfs --run reports/bfs --data ../shared/data/prosqa_valid.json --limit 50")]
pub struct BfsArgs {
    /// Run folder. A reasoner run (made by `record reasoner`) gets the tables, with its own
    /// questions and, unless --model or --checkpoint is given, its own model. A new folder
    /// becomes a run of kind `bfs` for the questions of --data.
    #[arg(long)]
    pub run: PathBuf,

    /// ProsQA JSON file; `sample` is the index of a question in it. Needed for a new run
    /// folder; for a reasoner run it must be the file the run was recorded on.
    #[arg(long)]
    pub data: Option<PathBuf>,

    #[command(flatten)]
    pub source: ReasonerSource,

    /// Largest number of continuous thoughts K; every k = 0..K is analysed.
    #[arg(long, default_value_t = 6)]
    pub thoughts: usize,

    /// Analyse only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,

    /// Analyse an unfinished reasoner recording (bfs runs the model itself and reads only
    /// the run's questions).
    #[arg(long)]
    pub allow_partial: bool,
}

impl BfsArgs {
    pub fn options(&self) -> bfs::Options {
        bfs::Options {
            source: self.source.clone(),
            data: self.data.clone(),
            thoughts: self.thoughts,
            limit: self.limit,
            allow_partial: self.allow_partial,
        }
    }
}

pub fn run(args: &BfsArgs) -> anyhow::Result<()> {
    let opts = args.options();
    let device = common::device()?;
    let (mut run, plan) = bfs::open_or_create(&args.run, &opts, &device)?;
    let started = Instant::now();
    let bar = common::bar(plan.records.len() as u64, "bfs");
    let out = bfs::run(&run, &plan, &jobs::Ctx::new(&bar, common::interrupt_flag()));
    bar.finish_and_clear();
    let written = jobs::write(&mut run, &plan.identity, out?, started)?;
    let seconds = started.elapsed().as_secs_f64();
    bfs::finish(&mut run, &plan, seconds)?;
    for path in &written {
        crate::outln!("wrote {}", path.display());
    }
    let record = run
        .manifest()
        .analysis(&plan.identity.key)
        .context("the manifest lost the bfs entry it was just given")?;
    let section = bfs::report(&run, record)?;
    crate::outln!(
        "{} questions in {seconds:.1} s with {}",
        plan.records.len(),
        plan.model.id
    );
    for table in &section.tables {
        print_table(table)?;
    }
    for finding in &section.findings {
        crate::outln!("- {finding}");
    }
    Ok(())
}

/// A report table as aligned text columns.
fn print_table(table: &Table) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = table.header.iter().map(|h| h.chars().count()).collect();
    for row in &table.rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let last = cells.len().saturating_sub(1);
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                if i == last {
                    c.clone()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    crate::outln!("{}", line(&table.header));
    for row in &table.rows {
        crate::outln!("{}", line(row));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn the_model_defaults_to_the_shipped_coconut_reasoner() {
        let cli =
            Cli::try_parse_from(["latentlens", "bfs", "--run", "r", "--data", "d.json"]).unwrap();
        let Command::Bfs(a) = cli.command else {
            panic!("not bfs");
        };
        assert_eq!((a.thoughts, a.limit), (6, None));
        assert!(a
            .source
            .model_dir()
            .ends_with("weights/reasoner/coconut/model"));
        // A reasoner run knows its data: --data is optional, and so are the model flags.
        let cli = Cli::try_parse_from(["latentlens", "bfs", "--run", "r"]).unwrap();
        let Command::Bfs(a) = cli.command else {
            panic!("not bfs");
        };
        assert_eq!(a.options(), crate::jobs::bfs::Options::default());
    }
}
