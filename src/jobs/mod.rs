//! Analyses as library jobs: a resolved plan in, progress and an interrupt flag in, tables
//! and figures out. The CLI commands and `latentlens run` drive the same jobs.
//!
//! Every job has the same shape (as `record::RecordPlan` / `RecordSummary`):
//! - `Options`: what a user asks for, the same names as the command's flags and the
//!   experiment spec's keys (serde, unknown keys refused);
//! - `plan(&Run, &Options) -> Result<Plan>`: resolves sites, steps and labels through
//!   `store::resolve` and validates everything, before any work;
//! - `run(&Run, &Plan, &Ctx) -> Result<Output>`: computes in memory and writes nothing;
//! - [`write`] then puts the tables and figures into the run, each file atomically, and
//!   records the analysis in the manifest last. An error before that leaves the folder as
//!   it was.

pub mod bfs;
pub mod infoloss;
pub mod probe;
pub mod record_diffusion;
pub mod record_reasoner;
pub mod reduce;
pub mod steer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use polars::prelude::DataFrame;

use crate::progress::Progress;
use crate::report::{Section, Table};
use crate::store::{AnalysisRecord, Run, STATUS_COMPLETE};
use crate::{Error, Result};

/// What a job gets besides its plan.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub progress: &'a dyn Progress,
    pub interrupted: &'a AtomicBool,
}

impl<'a> Ctx<'a> {
    pub fn new(progress: &'a dyn Progress, interrupted: &'a AtomicBool) -> Self {
        Ctx {
            progress,
            interrupted,
        }
    }

    /// Returns [`Error::Interrupted`] once Ctrl-C was pressed; jobs call it between units.
    pub fn check(&self) -> Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    }
}

/// A finished job's results, not yet written.
#[derive(Debug, Default)]
pub struct Output {
    /// `tables/<name>.parquet`.
    pub tables: Vec<(String, DataFrame)>,
    /// `plots/<name>.svg`.
    pub plots: Vec<(String, String)>,
    /// Samples the job used.
    pub samples_used: u64,
}

/// Who an analysis is, for its [`AnalysisRecord`].
#[derive(Debug, Clone)]
pub struct Identity {
    pub analysis: &'static str,
    /// Tells several runs of one analysis apart within a run folder.
    pub key: String,
    /// The resolved options (what the job used, defaults filled in).
    pub options: serde_json::Value,
    pub seed: u64,
}

impl Identity {
    /// The record this analysis would have in `run`'s manifest (time and files not set).
    pub fn record(&self, run: &Run) -> AnalysisRecord {
        AnalysisRecord {
            analysis: self.analysis.to_string(),
            key: self.key.clone(),
            options: self.options.clone(),
            seed: self.seed,
            tool: format!("latentlens {}", env!("CARGO_PKG_VERSION")),
            input: run.manifest().identity(),
            tables: Vec::new(),
            plots: Vec::new(),
            samples_used: 0,
            seconds: 0.0,
        }
    }

    /// Whether `run` already holds this analysis made from the same inputs and options,
    /// with all its files on disk (so `latentlens run` can skip it).
    pub fn is_done(&self, run: &Run) -> bool {
        let want = self.record(run);
        run.manifest().analysis(&self.key).is_some_and(|have| {
            have.same_work(&want)
                && have.tables.iter().all(|t| {
                    run.root()
                        .join("tables")
                        .join(format!("{t}.parquet"))
                        .is_file()
                })
                && have
                    .plots
                    .iter()
                    .all(|p| run.root().join("plots").join(format!("{p}.svg")).is_file())
        })
    }
}

/// The report section of one analysis, from its tables; `None` for an analysis this
/// version has no section for.
pub fn report_section(run: &Run, record: &AnalysisRecord) -> Result<Option<Section>> {
    Ok(match record.analysis.as_str() {
        "probe" => Some(probe::report(run, record)?),
        "steer" => Some(steer::report(run, record)?),
        "reduce" => Some(reduce::report(run, record)?),
        "infoloss" => Some(infoloss::report(run, record)?),
        "bfs" => Some(bfs::report(run, record)?),
        _ => None,
    })
}

/// The report's first section: what was recorded.
pub fn recording_section(run: &Run) -> Result<Section> {
    let m = run.manifest();
    let mut table = Table {
        caption: "recorded sites".into(),
        header: ["site", "per-sample shape", "width", "rows"]
            .map(String::from)
            .to_vec(),
        rows: Vec::new(),
    };
    for s in &m.sites {
        let shape: Vec<String> = s
            .dims
            .iter()
            .map(|d| format!("{} {}", d.name, d.size))
            .collect();
        table.rows.push(vec![
            s.name.clone(),
            shape.join(" x "),
            s.width.to_string(),
            m.rows.get(&s.name).map_or("-".into(), u64::to_string),
        ]);
    }
    let rows: u64 = m.rows.values().sum();
    let seconds = m.timings.get("record_seconds").copied();
    Ok(Section {
        title: "Recording".into(),
        note: format!(
            "`{}` of {}: {} samples, {} sites, {} latent rows{}.",
            m.kind,
            m.model.id,
            m.samples,
            m.sites.len(),
            rows,
            seconds.map_or(String::new(), |s| format!(", recorded in {s:.1} s"))
        ),
        tables: vec![table],
        ..Section::default()
    })
}

/// Refuses a run whose recording did not finish, saying how to finish it, unless
/// `allow_partial` (then the analysis's record says how many samples it used).
pub fn require_complete(run: &Run, allow_partial: bool) -> Result<()> {
    let m = run.manifest();
    if m.status == STATUS_COMPLETE || allow_partial {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{} is an unfinished recording (status `{}`): rerun `{}` to finish it, or pass \
         --allow-partial to analyse the samples recorded so far",
        run.root().display(),
        m.status,
        m.command.join(" ")
    )))
}

/// Writes a job's output into the run: tables (with the analysis's provenance), then
/// figures, then the manifest entry. Returns the paths written.
pub fn write(
    run: &mut Run,
    identity: &Identity,
    output: Output,
    started: Instant,
) -> Result<Vec<PathBuf>> {
    run.lock()?;
    let mut record = identity.record(run);
    record.samples_used = output.samples_used;
    record.tables = output.tables.iter().map(|(n, _)| n.clone()).collect();
    record.plots = output.plots.iter().map(|(n, _)| n.clone()).collect();
    let mut written = Vec::new();
    for (name, mut df) in output.tables {
        written.push(run.write_analysis_table(&name, &mut df, &record)?);
    }
    for (name, svg) in &output.plots {
        written.push(run.write_plot(name, svg)?);
    }
    record.seconds = started.elapsed().as_secs_f64();
    run.finish_analysis(record)?;
    Ok(written)
}
