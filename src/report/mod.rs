//! The report: what a run (or an experiment's runs) found, written from the run folders'
//! tables and figures alone, so `latentlens report` can remake it without a model.
//!
//! `report.html` is one self-contained file (inline CSS and SVG, no scripts, no network)
//! readable at 1280 px and in print; `report.md` beside it shows the same on GitHub with
//! figures by relative path. Each analysis contributes a [`Section`] through its job
//! module's `report` function; the summary at the top gathers their findings.

pub mod html;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::jobs;
use crate::store::{AnalysisRecord, Run};
use crate::{Error, Result};

/// One analysis's part of the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Section {
    pub title: String,
    /// Sentences with numbers and intervals, each true of the tables.
    pub findings: Vec<String>,
    /// Key rows of the analysis's tables.
    pub tables: Vec<Table>,
    /// Figure names under `plots/` (without `.svg`).
    pub plots: Vec<String>,
    /// Short text under the title (what the analysis does, how to read its figures).
    pub note: String,
}

/// A small table for people: a caption, a header and text cells.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Table {
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// An audit verdict as the report shows it (a later stage writes `tables/audit.parquet`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub rule: String,
    pub verdict: String,
    pub detail: String,
}

/// Everything one run contributes.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The run's folder name, e.g. `diffusion`.
    pub name: String,
    pub root: PathBuf,
    pub provenance: Vec<(String, String)>,
    pub sections: Vec<Section>,
    pub verdicts: Vec<Verdict>,
}

/// The whole report.
#[derive(Debug, Clone)]
pub struct Report {
    pub title: String,
    pub description: String,
    /// The experiment spec's text, when the report was made by `latentlens run`.
    pub spec: Option<String>,
    pub runs: Vec<RunReport>,
}

impl Report {
    /// All findings, run by run, for the summary.
    pub fn findings(&self) -> Vec<(String, String)> {
        self.runs
            .iter()
            .flat_map(|r| {
                r.sections
                    .iter()
                    .flat_map(move |s| s.findings.iter().map(move |f| (r.name.clone(), f.clone())))
            })
            .collect()
    }
}

/// Reads one run's sections from its manifest's analyses (in the order they ran).
pub fn run_report(run: &Run, name: &str) -> Result<RunReport> {
    let mut sections = vec![jobs::recording_section(run)?];
    for record in &run.manifest().analyses {
        sections.push(analysis_section(run, record)?);
    }
    Ok(RunReport {
        name: name.to_string(),
        root: run.root().to_path_buf(),
        provenance: provenance(run),
        sections,
        verdicts: crate::audit::output::read(run)?
            .unwrap_or_default()
            .into_iter()
            .map(|j| Verdict {
                rule: j.rule,
                verdict: j.verdict.as_str().into(),
                detail: j.detail,
            })
            .collect(),
    })
}

/// The section of one analysis; an analysis this version cannot read is listed, not
/// dropped.
fn analysis_section(run: &Run, record: &AnalysisRecord) -> Result<Section> {
    match jobs::report_section(run, record)? {
        Some(section) => Ok(section),
        None => Ok(Section {
            title: format!("{} ({})", record.analysis, record.key),
            note: "This version of latentlens has no report section for this analysis; its \
                   tables are listed below."
                .into(),
            plots: record.plots.clone(),
            tables: vec![Table {
                caption: "tables".into(),
                header: vec!["table".into()],
                rows: record.tables.iter().map(|t| vec![t.clone()]).collect(),
            }],
            findings: Vec::new(),
        }),
    }
}

fn provenance(run: &Run) -> Vec<(String, String)> {
    let m = run.manifest();
    let mut out = vec![
        ("kind".to_string(), m.kind.clone()),
        ("command".to_string(), m.command.join(" ")),
        ("tool".to_string(), m.tool.clone()),
        (
            "git commit".to_string(),
            m.git_commit.clone().unwrap_or_else(|| "unknown".into()),
        ),
        ("model".to_string(), m.model.id.clone()),
        ("seed".to_string(), m.seed.to_string()),
        ("samples".to_string(), m.samples.to_string()),
        ("status".to_string(), m.status.clone()),
        ("run identity".to_string(), m.identity()),
    ];
    for w in &m.model.weights {
        out.push((
            format!("weights {}", w.path.display()),
            format!("sha256 {} ({} bytes)", w.sha256, w.bytes),
        ));
    }
    for (phase, secs) in &m.timings {
        out.push((format!("time {phase}"), format!("{secs:.1} s")));
    }
    for a in &m.analyses {
        out.push((
            format!("analysis {}", a.key),
            format!(
                "{:.1} s, {} samples, options {}",
                a.seconds, a.samples_used, a.options
            ),
        ));
    }
    out
}

/// Writes `report.html` and `report.md` into `dir` (each atomically). Figures are inlined
/// into the HTML from each run's `plots/`; the Markdown links them relative to `dir`.
pub fn write(report: &Report, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let html = html::render(report)?;
    let md = html::render_markdown(report, dir);
    let _lock = crate::store::lock_folder(dir)?;
    let html_path = dir.join("report.html");
    let md_path = dir.join("report.md");
    crate::store::write_atomic(&html_path, |f| {
        std::io::Write::write_all(f, html.as_bytes())
    })?;
    crate::store::write_atomic(&md_path, |f| std::io::Write::write_all(f, md.as_bytes()))?;
    Ok((html_path, md_path))
}

/// Reads a figure of a run for inlining: the SVG element with a viewBox so that it
/// scales with the page.
pub fn inline_svg(run_root: &Path, plot: &str) -> Result<String> {
    let path = run_root.join("plots").join(format!("{plot}.svg"));
    let svg = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let start = svg.find("<svg").ok_or_else(|| Error::BadFile {
        path: path.clone(),
        detail: "not an SVG file (no <svg> element)".into(),
    })?;
    let svg = &svg[start..];
    if svg[..svg.find('>').unwrap_or(0)].contains("viewBox") {
        return Ok(svg.to_string());
    }
    let attr = |name: &str| -> Option<String> {
        let head = &svg[..svg.find('>')?];
        let at = head.find(&format!("{name}=\""))? + name.len() + 2;
        let end = head[at..].find('"')? + at;
        Some(head[at..end].to_string())
    };
    match (attr("width"), attr("height")) {
        (Some(w), Some(h)) => Ok(svg.replacen("<svg", &format!("<svg viewBox=\"0 0 {w} {h}\""), 1)),
        _ => Ok(svg.to_string()),
    }
}
