//! `latentlens run SPEC` and `latentlens report --run DIR`: an experiment from spec to
//! report, and a report remade from a run's tables alone.

use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::common;
use crate::experiment::{self, SpecFile, Stages};
use crate::progress::Progress;
use crate::report::{self, Report};
use crate::store::Run;

/// Run an experiment spec: record, analyse, report. Rerunning resumes.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 done (every audit rule passed or warned), 3 an audit rule failed, 4 an audit rule could not be evaluated, 1 bad input, 130 interrupted (rerun to resume).

Examples:
  latentlens run probes/quickstart.toml
  latentlens run probes/quickstart.toml --dry-run
  latentlens run probes/quickstart.toml --out /tmp/quickstart"
)]
pub struct RunArgs {
    /// The experiment spec (TOML), e.g. probes/quickstart.toml.
    pub spec: PathBuf,
    /// The experiment folder, instead of the spec's `out` (default reports/<spec name>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the resolved plan and stop; nothing is written.
    #[arg(long)]
    pub dry_run: bool,
}

/// Remake report.html and report.md from a run's (or an experiment's) tables.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens report --run reports/quickstart
  latentlens report --run reports/demo --title 'Shapes, 64 samples'")]
pub struct ReportArgs {
    /// A run folder, or an experiment folder made by `latentlens run` (one run per
    /// subfolder).
    #[arg(long)]
    pub run: PathBuf,
    /// The report's title (default: the experiment's, or the folder's name).
    #[arg(long)]
    pub title: Option<String>,
}

pub fn run(args: &RunArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut file = SpecFile::read(&args.spec)?;
    if let Some(out) = &args.out {
        file.spec.out = Some(out.clone());
    }
    let device = common::device()?;
    let plan = experiment::plan(file, &device)?;
    if args.dry_run {
        crate::outln!("{}", plan.describe().trim_end());
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let bars = Bars::new(experiment::stage_count(&plan) as u64);
    let summary = experiment::execute(&plan, &bars, common::interrupt_flag(), &device)?;
    bars.finish();
    crate::outln!(
        "recorded {} run(s), ran {} analysis(es), kept {} unchanged",
        summary.recorded.len(),
        summary.analyses_run.len(),
        summary.analyses_kept.len()
    );
    if !summary.verdicts.is_empty() {
        crate::outln!("audit:");
        for (run, j) in &summary.verdicts {
            crate::outln!(
                "  {:<6} {run}: {}\n         {}",
                j.verdict.as_str().to_uppercase(),
                j.rule,
                j.detail
            );
        }
    }
    crate::outln!("report: {}", summary.report_html.display());
    crate::outln!("        {}", summary.report_md.display());
    Ok(std::process::ExitCode::from(summary.exit_code()))
}

pub fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let (runs, spec) = runs_in(&args.run)?;
    let mut run_reports = Vec::new();
    for (name, run) in &runs {
        run_reports.push(report::run_report(run, name)?);
    }
    let spec_title = spec.as_ref().and_then(|s| s.spec.title.clone().into());
    let title = args
        .title
        .clone()
        .or(spec_title)
        .unwrap_or_else(|| format!("latentlens report: {}", folder_name(&args.run)));
    let report = Report {
        title,
        description: spec
            .as_ref()
            .map(|s| s.spec.description.clone())
            .unwrap_or_default(),
        spec: spec.map(|s| s.text),
        runs: run_reports,
    };
    let (html, md) = report::write(&report, &args.run)?;
    crate::outln!("wrote {}\nwrote {}", html.display(), md.display());
    Ok(())
}

fn folder_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().to_string(),
    )
}

/// Runs with the names the report gives them.
type NamedRuns = Vec<(String, Run)>;

/// The runs a report covers: the folder itself when it is a run, else its run subfolders
/// (in name order). The spec stored in a run's manifest gives the title.
fn runs_in(dir: &Path) -> anyhow::Result<(NamedRuns, Option<SpecFile>)> {
    if dir.join("manifest.json").is_file() {
        let run = Run::open(dir)?;
        let spec = stored_spec(&run);
        return Ok((vec![(folder_name(dir), run)], spec));
    }
    let mut runs = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| crate::Error::io(dir, e))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.join("manifest.json").is_file() {
            runs.push((folder_name(&p), Run::open(&p)?));
        }
    }
    anyhow::ensure!(
        !runs.is_empty(),
        "{} is neither a run folder (no manifest.json) nor an experiment folder with runs in \
         its subfolders; record one with `latentlens record` or `latentlens run SPEC`",
        dir.display()
    );
    let spec = runs.first().and_then(|(_, r)| stored_spec(r));
    Ok((runs, spec))
}

fn stored_spec(run: &Run) -> Option<SpecFile> {
    let v = run.manifest().spec.as_ref()?;
    let text = v.get("text")?.as_str()?.to_string();
    let path = PathBuf::from(v.get("path")?.as_str()?);
    let spec = toml::from_str(&text).ok()?;
    Some(SpecFile { path, text, spec })
}

/// One overall bar and one bar per stage, on stderr; hidden when stderr is not a terminal.
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
}

impl Bars {
    fn new(stages: u64) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(stages));
        let style = ProgressStyle::with_template(
            "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} stages",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        overall.set_style(style);
        overall.set_prefix("experiment");
        Bars { multi, overall }
    }

    fn finish(&self) {
        self.overall.finish_and_clear();
    }
}

impl Stages for Bars {
    fn begin(&self, stage: &str) -> Box<dyn Progress + '_> {
        let bar = self.multi.add(common::bar(0, stage));
        Box::new(StageBar(bar))
    }

    fn end(&self, stage: &str, outcome: &str) {
        self.overall.inc(1);
        let _ = self.multi.println(format!("{stage}: {outcome}"));
    }
}

/// A stage's bar, removed from the screen when the stage ends.
struct StageBar(ProgressBar);

impl Progress for StageBar {
    fn set_length(&self, len: u64) {
        self.0.set_length(len);
    }
    fn inc_length(&self, delta: u64) {
        self.0.inc_length(delta);
    }
    fn inc(&self, delta: u64) {
        self.0.inc(delta);
    }
    fn set_position(&self, pos: u64) {
        self.0.set_position(pos);
    }
    fn set_message(&self, what: &str) {
        self.0.set_message(what.to_string());
    }
}

impl Drop for StageBar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
