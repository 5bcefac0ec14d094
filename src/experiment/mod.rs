//! Experiments: one TOML spec from model to report. `Spec::parse` reads it (unknown keys
//! are errors, with the line); `plan` resolves all of it before any work and reports every
//! mistake at once; `execute` records each run (resuming), runs each analysis whose inputs
//! or options changed, and writes the report.
//!
//! ```toml
//! title = "Shapes in the h-space"
//! out = "reports/shapes"            # default: reports/<spec file name>
//!
//! [[run]]
//! name = "diffusion"                # the run folder: <out>/diffusion
//! [run.diffusion]                   # or [run.reasoner]: what `record` does, same keys as its flags
//! samples = 64
//! [[run.probe]]                     # analyses, same keys as their flags; any number of each
//! labels = ["shape"]
//! ```
//!
//! Relative paths in a spec are read from the current directory, like the same paths given
//! as flags. Analyses run in a fixed order, bfs -> probe -> reduce -> infoloss, so a probe
//! can use the tables bfs writes.

mod locate;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::audit;
use crate::jobs::{
    self, bfs, infoloss, probe, record_diffusion, record_reasoner, reduce, steer, Ctx,
};
use crate::progress::Progress;
use crate::report::{self, Report};
use crate::store::{resolve, Run, Start};
use crate::{Error, Result};

/// An experiment spec as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The report's title.
    pub title: String,
    /// The report's opening paragraph: what question this experiment answers.
    #[serde(default)]
    pub description: String,
    /// The experiment folder (default `reports/<spec file name>`).
    pub out: Option<PathBuf>,
    /// One entry per model recording.
    #[serde(rename = "run")]
    pub runs: Vec<RunSpec>,
}

/// One recording and the analyses of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// The run folder's name inside the experiment folder.
    pub name: String,
    /// Record the built-in (or a given) latent diffusion model.
    pub diffusion: Option<record_diffusion::Options>,
    /// Record a continuous-thought reasoner.
    pub reasoner: Option<record_reasoner::Options>,
    /// The BFS analysis of continuous thoughts (reasoner runs; before the probes, so that
    /// they can probe `bfs_nodes:in_frontier`).
    #[serde(default)]
    pub bfs: Vec<bfs::Options>,
    #[serde(default)]
    pub probe: Vec<probe::Options>,
    #[serde(default)]
    pub reduce: Vec<reduce::Options>,
    #[serde(default)]
    pub infoloss: Vec<infoloss::Options>,
    /// Steering along a probe's direction (diffusion runs; after the probes).
    #[serde(default)]
    pub steer: Vec<steer::Options>,
    /// Audit rules judged on this run after its analyses (`[[run.audit]]`).
    #[serde(default)]
    pub audit: Vec<audit::Rule>,
}

/// A spec file read and parsed.
#[derive(Debug, Clone)]
pub struct SpecFile {
    pub path: PathBuf,
    pub text: String,
    pub spec: Spec,
}

impl SpecFile {
    pub fn read(path: &Path) -> Result<SpecFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let spec = toml::from_str(&text).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            detail: format!("not a valid experiment spec: {e}"),
        })?;
        Ok(SpecFile {
            path: path.to_path_buf(),
            text,
            spec,
        })
    }

    /// The experiment folder.
    pub fn out_dir(&self) -> PathBuf {
        self.spec.out.clone().unwrap_or_else(|| {
            let stem = self
                .path
                .file_stem()
                .map_or("experiment".into(), |s| s.to_string_lossy().to_string());
            Path::new("reports").join(stem)
        })
    }
}

/// What one run of the experiment will record.
pub enum Recording {
    Diffusion(Box<record_diffusion::Plan>),
    Reasoner(Box<record_reasoner::Plan>),
}

impl Recording {
    fn site_names(&self) -> Vec<String> {
        let sites = match self {
            Recording::Diffusion(p) => &p.sites,
            Recording::Reasoner(p) => &p.sites,
        };
        sites.iter().map(|s| s.name.clone()).collect()
    }

    fn samples(&self) -> u64 {
        match self {
            Recording::Diffusion(p) => p.config["samples"].as_u64().unwrap_or(0),
            Recording::Reasoner(p) => p.records.len() as u64,
        }
    }

    /// The columns samples.parquet will hold (besides `sample`).
    fn label_columns(&self) -> Vec<String> {
        match self {
            Recording::Diffusion(p) => record_diffusion::label_columns(p)
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Recording::Reasoner(_) => record_reasoner::LABEL_COLUMNS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// A run of the experiment, resolved.
pub struct RunPlan {
    pub name: String,
    pub dir: PathBuf,
    pub recording: Recording,
    pub spec: RunSpec,
}

/// The whole experiment, resolved before any work.
pub struct Plan {
    pub file: SpecFile,
    pub out: PathBuf,
    pub runs: Vec<RunPlan>,
}

impl Plan {
    /// A readable description of what `execute` will do (`--dry-run`).
    pub fn describe(&self) -> String {
        let mut s = format!(
            "experiment `{}` from {} into {}\n",
            self.file.spec.title,
            self.file.path.display(),
            self.out.display()
        );
        for r in &self.runs {
            let kind = match r.recording {
                Recording::Diffusion(_) => "diffusion",
                Recording::Reasoner(_) => "reasoner",
            };
            s.push_str(&format!(
                "  run `{}` ({}): record {} samples at {} sites -> {}\n",
                r.name,
                kind,
                r.recording.samples(),
                r.recording.site_names().len(),
                r.dir.display()
            ));
            for p in &r.spec.probe {
                s.push_str(&format!(
                    "    probe {} at sites {} steps {}\n",
                    p.labels.join(", "),
                    if p.sites.is_empty() {
                        "all".into()
                    } else {
                        p.sites.join(",")
                    },
                    p.steps
                ));
            }
        }
        s.push_str(&format!(
            "  report -> {}\n",
            self.out.join("report.html").display()
        ));
        s
    }
}

/// Resolves the spec: loads every model, checks every option, site, step and label. All
/// problems are gathered and returned as one error naming the spec file, line and key.
pub fn plan(file: SpecFile, device: &Device) -> Result<Plan> {
    let mut problems = Vec::new();
    let spec = &file.spec;
    if spec.runs.is_empty() {
        problems.push(locate::problem(
            &file.text,
            &[],
            "the spec has no [[run]]; add one with [run.diffusion] or [run.reasoner]",
        ));
    }
    let mut names = BTreeSet::new();
    let out = file.out_dir();
    let mut runs = Vec::new();
    for (i, run) in spec.runs.iter().enumerate() {
        let index = i.to_string();
        let at = |path: &[&str], msg: String| {
            let mut full = vec!["run", index.as_str()];
            full.extend_from_slice(path);
            locate::problem(&file.text, &full, &format!("run `{}`: {msg}", run.name))
        };
        if !names.insert(run.name.clone()) || run.name.is_empty() || run.name.contains(['/', '\\'])
        {
            problems.push(at(
                &["name"],
                "run names must be unique, non-empty folder names".into(),
            ));
        }
        let recording = match (&run.diffusion, &run.reasoner) {
            (Some(d), None) => record_diffusion::plan(d, device)
                .map(|p| Recording::Diffusion(Box::new(p)))
                .map_err(|e| at(&["diffusion"], e.to_string())),
            (None, Some(r)) => record_reasoner::plan(r, device)
                .map(|p| Recording::Reasoner(Box::new(p)))
                .map_err(|e| at(&["reasoner"], e.to_string())),
            _ => Err(at(
                &[],
                "give exactly one of [run.diffusion] and [run.reasoner]".into(),
            )),
        };
        let recording = match recording {
            Ok(r) => r,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        problems.extend(check_analyses(&file.text, i, run, &recording, device));
        runs.push(RunPlan {
            name: run.name.clone(),
            dir: out.join(&run.name),
            recording,
            spec: run.clone(),
        });
    }
    if !problems.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: {} problem{} (nothing was written):\n  {}",
            file.path.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  ")
        )));
    }
    Ok(Plan { file, out, runs })
}

/// Checks what each analysis reads against what the recording will write.
fn check_analyses(
    text: &str,
    i: usize,
    run: &RunSpec,
    recording: &Recording,
    device: &Device,
) -> Vec<String> {
    let mut problems = Vec::new();
    let sites = recording.site_names();
    let labels = recording.label_columns();
    for (j, p) in run.probe.iter().enumerate() {
        let at = |key: &str, msg: String| {
            locate::problem(
                text,
                &["run", &i.to_string(), "probe", &j.to_string(), key],
                &format!("run `{}`, probe {}: {msg}", run.name, j + 1),
            )
        };
        if let Err(e) = check_sites(&p.sites, &sites) {
            problems.push(at("sites", e));
        }
        if p.labels.is_empty() {
            problems.push(at("labels", "give at least one label".into()));
        }
        for l in &p.labels {
            let column = l.rsplit(':').next().unwrap_or(l);
            if !l.contains(':') && !labels.iter().any(|c| c == column) {
                problems.push(at(
                    "labels",
                    format!(
                        "label `{l}` is not a column this recording writes; it writes {}",
                        labels.join(", ")
                    ),
                ));
            }
        }
        if p.folds < 2 {
            problems.push(at(
                "folds",
                format!("folds = {} must be at least 2", p.folds),
            ));
        }
        if let Err(e) = crate::steps::parse_steps(&p.steps, 0, u16::MAX) {
            problems.push(at("steps", e.to_string()));
        }
    }
    for (kind, j, patterns) in run
        .reduce
        .iter()
        .enumerate()
        .map(|(j, o)| ("reduce", j, &o.sites))
        .chain(
            run.infoloss
                .iter()
                .enumerate()
                .map(|(j, o)| ("infoloss", j, &o.sites)),
        )
    {
        if let Err(e) = check_sites(patterns, &sites) {
            problems.push(locate::problem(
                text,
                &["run", &i.to_string(), kind, &j.to_string(), "sites"],
                &format!("run `{}`, {kind} {}: {e}", run.name, j + 1),
            ));
        }
    }
    for (j, b) in run.bfs.iter().enumerate() {
        let at = |msg: String| {
            locate::problem(
                text,
                &["run", &i.to_string(), "bfs", &j.to_string()],
                &format!("run `{}`, bfs {}: {msg}", run.name, j + 1),
            )
        };
        match recording {
            Recording::Reasoner(p) => {
                if let Err(e) = bfs::plan_for_recording(p, b, device) {
                    problems.push(at(e.to_string()));
                }
            }
            Recording::Diffusion(_) => problems.push(at("bfs needs a reasoner run".into())),
        }
    }
    for (j, st) in run.steer.iter().enumerate() {
        let at = |key: &str, msg: String| {
            locate::problem(
                text,
                &["run", &i.to_string(), "steer", &j.to_string(), key],
                &format!("run `{}`, steer {}: {msg}", run.name, j + 1),
            )
        };
        if !matches!(recording, Recording::Diffusion(_)) {
            problems.push(at("site", "steering needs a diffusion run".into()));
        }
        if !sites.contains(&st.site) {
            problems.push(at(
                "site",
                format!(
                    "site `{}` is not recorded by this run; it records {}",
                    st.site,
                    sites.join(", ")
                ),
            ));
        }
        let probed = run.probe.iter().any(|p| p.labels.contains(&st.label));
        if st.direction == steer::DirectionSource::Probe && !probed {
            problems.push(at(
                "label",
                format!(
                    "the probe direction needs a [[run.probe]] of `{}`",
                    st.label
                ),
            ));
        }
    }
    for (j, rule) in run.audit.iter().enumerate() {
        let at = |key: &str, msg: String| {
            locate::problem(
                text,
                &["run", &i.to_string(), "audit", &j.to_string(), key],
                &format!(
                    "run `{}`, audit rule {} ({}): {msg}",
                    run.name,
                    j + 1,
                    rule.display_name()
                ),
            )
        };
        for p in rule.problems() {
            problems.push(at("kind", p));
        }
        if let Err(e) = check_sites(&rule.sites, &sites) {
            problems.push(at("sites", e));
        }
        let probed = || {
            run.probe
                .iter()
                .flat_map(|p| p.labels.iter().map(|l| l.rsplit(':').next().unwrap_or(l)))
        };
        match rule.kind {
            audit::RuleKind::Decodable => {
                if let Some(label) = &rule.label {
                    if !probed().any(|l| l == label) {
                        problems.push(at(
                            "label",
                            format!("label `{label}` is not probed in this run; add it to a [[run.probe]]"),
                        ));
                    }
                }
            }
            audit::RuleKind::Accuracy | audit::RuleKind::Finite => {}
            audit::RuleKind::Reconstruction => {
                if run.infoloss.is_empty() {
                    problems.push(at(
                        "kind",
                        "needs an [[run.infoloss]] analysis in this run".into(),
                    ));
                }
            }
            audit::RuleKind::FrontierMass => {
                if run.bfs.is_empty() {
                    problems.push(at(
                        "kind",
                        "needs a [[run.bfs]] analysis in this run".into(),
                    ));
                }
            }
        }
    }
    problems
}

fn check_sites(patterns: &[String], sites: &[String]) -> std::result::Result<(), String> {
    let patterns = resolve::split_patterns(patterns).map_err(|e| e.to_string())?;
    for p in patterns {
        if !sites.iter().any(|s| p.matches(s)) {
            return Err(format!(
                "site `{}` is not recorded by this run; it records {}",
                p.as_str(),
                sites.join(", ")
            ));
        }
    }
    Ok(())
}

/// Receives the experiment's progress: one stage at a time.
pub trait Stages {
    /// A stage starts; work inside it reports to the returned progress.
    fn begin(&self, stage: &str) -> Box<dyn Progress + '_>;
    /// The stage ended with `outcome` (e.g. `done in 3.1 s`, `kept`).
    fn end(&self, stage: &str, outcome: &str);
}

/// What `execute` did.
#[derive(Debug, Default)]
pub struct Summary {
    pub recorded: Vec<String>,
    pub analyses_run: Vec<String>,
    pub analyses_kept: Vec<String>,
    pub report_html: PathBuf,
    pub report_md: PathBuf,
    /// Every audit verdict, with its run's name.
    pub verdicts: Vec<(String, audit::Judged)>,
}

impl Summary {
    /// The audit exit code over every run (0 when no rule was declared).
    pub fn exit_code(&self) -> u8 {
        let judged: Vec<audit::Judged> = self.verdicts.iter().map(|(_, j)| j.clone()).collect();
        audit::exit_code(&judged)
    }
}

/// Stages of a plan, for sizing an overall progress bar.
pub fn stage_count(plan: &Plan) -> usize {
    plan.runs
        .iter()
        .map(|r| 1 + r.spec.probe.len())
        .sum::<usize>()
        + 1
}

/// Records, analyses and reports. Every stage resumes: a finished recording is kept, an
/// analysis with the same inputs and options is kept, so rerunning the same spec after an
/// interruption does only what is missing.
pub fn execute(
    plan: &Plan,
    stages: &dyn Stages,
    interrupted: &std::sync::atomic::AtomicBool,
    device: &Device,
) -> Result<Summary> {
    let mut summary = Summary::default();
    let mut run_reports = Vec::new();
    // One `latentlens run` per experiment folder at a time: a second is refused at once.
    std::fs::create_dir_all(&plan.out).map_err(|e| Error::io(&plan.out, e))?;
    let _lock = crate::store::lock_folder(&plan.out)?;
    for r in &plan.runs {
        let stage = format!("{}: record", r.name);
        let progress = stages.begin(&stage);
        let ctx = Ctx::new(progress.as_ref(), interrupted);
        let started = Instant::now();
        let (mut run, start) = match &r.recording {
            Recording::Diffusion(p) => {
                record_diffusion::run(&r.dir, p, &ctx).map(|(a, b, _)| (a, b))?
            }
            Recording::Reasoner(p) => {
                record_reasoner::run(&r.dir, p, &ctx).map(|(a, b, _)| (a, b))?
            }
        };
        store_spec(&mut run, &plan.file)?;
        drop(progress);
        stages.end(&stage, &outcome(start, started));
        if start != Start::Complete {
            summary.recorded.push(r.name.clone());
        }
        let mut step = Analyses {
            run_name: &r.name,
            stages,
            interrupted,
            summary: &mut summary,
        };
        for opts in &r.spec.bfs {
            let p = bfs::plan(&run, opts, device)?;
            step.run(&mut run, &p.identity, |run, ctx| bfs::run(run, &p, ctx))?;
        }
        for opts in &r.spec.probe {
            let p = probe::plan(&run, opts)?;
            step.run(&mut run, &p.identity, |run, ctx| probe::run(run, &p, ctx))?;
        }
        for opts in &r.spec.reduce {
            let p = reduce::plan(&run, opts)?;
            step.run(&mut run, &p.identity, |run, ctx| reduce::run(run, &p, ctx))?;
        }
        for opts in &r.spec.infoloss {
            let p = infoloss::plan(&run, opts)?;
            step.run(&mut run, &p.identity, |run, ctx| {
                infoloss::run(run, &p, ctx)
            })?;
        }
        for opts in &r.spec.steer {
            let p = steer::plan(&run, opts, device)?;
            step.run(&mut run, &p.identity, |run, ctx| steer::run(run, &p, ctx))?;
        }
        if !r.spec.audit.is_empty() {
            let stage = format!("{}: audit", r.name);
            let _p = stages.begin(&stage);
            let judged = audit::audit(&run, &r.spec.audit)?;
            let code = audit::exit_code(&judged);
            stages.end(&stage, &format!("{} rules, exit code {code}", judged.len()));
            summary
                .verdicts
                .extend(judged.into_iter().map(|j| (r.name.clone(), j)));
        }
        run_reports.push(report::run_report(&run, &r.name)?);
    }
    let stage = "report";
    let _p = stages.begin(stage);
    let report = Report {
        title: plan.file.spec.title.clone(),
        description: plan.file.spec.description.clone(),
        spec: Some(plan.file.text.clone()),
        runs: run_reports,
    };
    let (html, md) = report::write(&report, &plan.out)?;
    stages.end(stage, &format!("{}", html.display()));
    summary.report_html = html;
    summary.report_md = md;
    Ok(summary)
}

/// Runs a run's analyses one after another, reporting each as a stage.
struct Analyses<'a> {
    run_name: &'a str,
    stages: &'a dyn Stages,
    interrupted: &'a std::sync::atomic::AtomicBool,
    summary: &'a mut Summary,
}

impl Analyses<'_> {
    /// Keeps an analysis when the run already holds it with the same inputs and options;
    /// otherwise runs and writes it.
    fn run(
        &mut self,
        run: &mut Run,
        identity: &jobs::Identity,
        job: impl FnOnce(&Run, &Ctx) -> Result<jobs::Output>,
    ) -> Result<()> {
        let stage = format!("{}: {}", self.run_name, identity.key);
        if identity.is_done(run) {
            self.stages.end(&stage, "kept (same inputs and options)");
            self.summary.analyses_kept.push(stage);
            return Ok(());
        }
        let progress = self.stages.begin(&stage);
        let started = Instant::now();
        let out = job(run, &Ctx::new(progress.as_ref(), self.interrupted))?;
        drop(progress);
        jobs::write(run, identity, out, started)?;
        let seconds = started.elapsed().as_secs_f64();
        self.stages.end(&stage, &format!("done in {seconds:.1} s"));
        self.summary.analyses_run.push(stage);
        Ok(())
    }
}

fn outcome(start: Start, started: Instant) -> String {
    match start {
        Start::Complete => "kept (already recorded)".into(),
        Start::Resumed => format!("resumed, done in {:.1} s", started.elapsed().as_secs_f64()),
        Start::New => format!("done in {:.1} s", started.elapsed().as_secs_f64()),
    }
}

/// The spec goes into the run's manifest, so a run says which experiment made it.
fn store_spec(run: &mut Run, file: &SpecFile) -> Result<()> {
    let value = serde_json::json!({
        "path": file.path,
        "text": file.text,
    });
    if run.manifest().spec.as_ref() != Some(&value) {
        run.manifest_mut().spec = Some(value);
        run.write_manifest()?;
    }
    Ok(())
}
