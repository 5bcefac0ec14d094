//! The probe job: linear probes over the grid site x step x label of a recorded run, with
//! the rigour of `analysis::probe` (grouped CV, intervals, control task, permutation test).
//!
//! Tables: `probes` (one row per site, step, label and metric) and `probe_weights` (the
//! fitted directions in the site's own feature space, for steering). Both accumulate over
//! calls: a probe for `hue` after one for `shape` keeps shape's rows and replaces only
//! rows of the labels it probes. Figures per label: a site x step heatmap of the headline
//! metric and the metric against step with its 95% band.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Ctx, Identity, Output};
use crate::analysis::probe::{
    self, ProbeConfig, ProbeInput, ProbeResult, ProbeRow, Target, WeightRow,
};
use crate::plots;
use crate::report::{Section, Table};
use crate::store::resolve::{self, Label, LabelKind, LabelValues};
use crate::store::{AnalysisRecord, Latents, Run};
use crate::{Error, Result};

/// What a user asks for; the `probe` command's flags and an experiment's `[[analysis]]`
/// keys with `kind = "probe"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Site names or globs (empty: every recorded site).
    pub sites: Vec<String>,
    /// `all`, `last`, `0,10,49`, `0..50:5`, counted among recorded steps.
    pub steps: String,
    /// `COLUMN` or `TABLE:COLUMN`.
    pub labels: Vec<String>,
    /// Labels to read as continuous (ridge) although their column holds integers.
    pub continuous: Vec<String>,
    /// Labels to read as classes although their column holds floats.
    pub classes: Vec<String>,
    pub folds: usize,
    pub seed: u64,
    pub permutations: usize,
    pub bootstrap: usize,
    pub drop_nonfinite: bool,
    pub allow_partial: bool,
}

impl Default for Options {
    fn default() -> Self {
        let cfg = ProbeConfig::default();
        Options {
            sites: Vec::new(),
            steps: "all".into(),
            labels: Vec::new(),
            continuous: Vec::new(),
            classes: Vec::new(),
            folds: cfg.folds,
            seed: 0,
            permutations: cfg.permutations,
            bootstrap: cfg.bootstrap,
            drop_nonfinite: false,
            allow_partial: false,
        }
    }
}

/// Everything resolved: the grid to probe and the labels indexed for joining.
#[derive(Debug)]
pub struct Plan {
    pub grid: Vec<(String, Vec<u16>)>,
    pub labels: Vec<Label>,
    pub config: ProbeConfig,
    pub identity: Identity,
}

impl Plan {
    /// Probes in the grid (site x step x label).
    pub fn probes(&self) -> usize {
        self.grid.iter().map(|(_, s)| s.len()).sum::<usize>() * self.labels.len()
    }
}

pub fn plan(run: &Run, opts: &Options) -> Result<Plan> {
    super::require_complete(run, opts.allow_partial)?;
    if opts.labels.is_empty() {
        return Err(Error::Invalid(
            "probe needs at least one label (--label COLUMN or TABLE:COLUMN)".into(),
        ));
    }
    if opts.folds < 2 {
        return Err(Error::Invalid(format!(
            "folds = {}: cross-validation needs at least 2 folds",
            opts.folds
        )));
    }
    let mut seen = BTreeSet::new();
    let mut labels = Vec::new();
    for spec in &opts.labels {
        if !seen.insert(spec.as_str()) {
            continue;
        }
        let column = spec.rsplit(':').next().unwrap_or(spec);
        let kind = if opts.continuous.iter().any(|c| c == column || c == spec) {
            Some(LabelKind::Continuous)
        } else if opts.classes.iter().any(|c| c == column || c == spec) {
            Some(LabelKind::Classes)
        } else {
            None
        };
        let label = resolve::label(run, spec, kind)?;
        check_not_degenerate(&label, opts.folds)?;
        labels.push(label);
    }
    let mut grid = Vec::new();
    for site in resolve::sites(run, &opts.sites)? {
        let recorded = run.recorded_steps(&site)?;
        let steps = resolve::steps(&opts.steps, &recorded)
            .map_err(|e| Error::Invalid(format!("site `{site}`: {e}")))?;
        grid.push((site, steps));
    }
    let config = ProbeConfig {
        folds: opts.folds,
        seed: opts.seed,
        permutations: opts.permutations,
        bootstrap: opts.bootstrap,
        drop_nonfinite: opts.drop_nonfinite,
        ..ProbeConfig::default()
    };
    let names: Vec<&str> = labels.iter().map(|l| l.name.as_str()).collect();
    let identity = Identity {
        analysis: "probe",
        key: format!("probe:{}", names.join(",")),
        options: serde_json::to_value(opts)?,
        seed: opts.seed,
    };
    Ok(Plan {
        grid,
        labels,
        config,
        identity,
    })
}

/// A label a probe cannot say anything about is refused rather than scored: one class,
/// a class with fewer samples than folds, or a constant value.
fn check_not_degenerate(label: &Label, folds: usize) -> Result<()> {
    let bad =
        |why: String| Error::Invalid(format!("label `{}` ({}): {why}", label.name, label.source));
    match &label.values {
        LabelValues::Classes { names, by_key } => {
            let mut samples: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); names.len()];
            for (k, &c) in by_key {
                samples[c as usize].insert(k.0);
            }
            let present: Vec<(usize, usize)> = samples
                .iter()
                .map(BTreeSet::len)
                .enumerate()
                .filter(|(_, n)| *n > 0)
                .collect();
            if present.len() < 2 {
                return Err(bad(format!(
                    "only one class ({}); a probe needs at least two",
                    names.first().map_or("none", |s| s.as_str())
                )));
            }
            if let Some(&(c, n)) = present.iter().find(|(_, n)| *n < 2) {
                return Err(bad(format!(
                    "class `{}` has {n} sample; every class needs at least 2 to be both \
                     trained on and tested (better: {folds}, the number of folds)",
                    names[c]
                )));
            }
        }
        LabelValues::Continuous(by_key) => {
            let mut values = by_key.values().copied().filter(|v| v.is_finite());
            let first = values.next();
            if first.is_none() {
                return Err(bad("no finite values".into()));
            }
            if values.all(|v| Some(v) == first) {
                return Err(bad(format!(
                    "every value is {}; a constant cannot be predicted or tested",
                    first.unwrap_or_default()
                )));
            }
        }
    }
    Ok(())
}

/// The metric shown in figures, summaries and findings.
pub fn headline_metric(kind: &str) -> &'static str {
    if kind == "continuous" {
        "r2"
    } else {
        "balanced_accuracy"
    }
}

pub fn run(run: &Run, plan: &Plan, ctx: &Ctx) -> Result<Output> {
    ctx.progress
        .set_length(plan.probes() as u64 * plan.config.work_units());
    let mut rows: Vec<ProbeRow> = Vec::new();
    let mut weights: Vec<WeightRow> = Vec::new();
    let mut samples = BTreeSet::new();
    for (site, steps) in &plan.grid {
        ctx.progress.set_message(site);
        let latents = run.read_latents(site, Some(steps))?;
        samples.extend(latents.sample.iter().copied());
        for &step in steps {
            for label in &plan.labels {
                ctx.check()?;
                let result = probe_one(&latents, step, label, &plan.config, ctx).map_err(|e| {
                    Error::Invalid(format!(
                        "probe of `{}` at site `{site}`, step {step}: {e}",
                        label.name
                    ))
                })?;
                rows.extend(result.rows(site, step, &label.name));
                weights.extend(result.weight_rows(site, step, &label.name));
            }
        }
    }
    let probed: Vec<&str> = plan.labels.iter().map(|l| l.name.as_str()).collect();
    let (rows, weights) = merge_with_earlier(run, &probed, rows, weights)?;
    let mut plots_out = Vec::new();
    for label in &plan.labels {
        for (name, svg) in figures(&label.name, &rows)? {
            plots_out.push((name, svg));
        }
    }
    Ok(Output {
        tables: vec![
            ("probes".into(), probes_frame(&rows)?),
            ("probe_weights".into(), weights_frame(&weights)?),
        ],
        plots: plots_out,
        samples_used: samples.len() as u64,
    })
}

/// Rows of earlier probes for other labels, then this call's rows.
fn merge_with_earlier(
    run: &Run,
    probed: &[&str],
    rows: Vec<ProbeRow>,
    weights: Vec<WeightRow>,
) -> Result<(Vec<ProbeRow>, Vec<WeightRow>)> {
    let tables = run.tables()?;
    let mut all_rows = Vec::new();
    let mut all_weights = Vec::new();
    if tables.iter().any(|t| t == "probes") && tables.iter().any(|t| t == "probe_weights") {
        let keep = |l: &str| !probed.contains(&l);
        all_rows.extend(
            probe_rows(&run.table("probes")?)?
                .into_iter()
                .filter(|r| keep(&r.label)),
        );
        all_weights.extend(
            weight_rows(&run.table("probe_weights")?)?
                .into_iter()
                .filter(|r| keep(&r.label)),
        );
    }
    all_rows.extend(rows);
    all_weights.extend(weights);
    Ok((all_rows, all_weights))
}

/// Probes one (site, step, label): the rows of that step that have a label value.
fn probe_one(
    latents: &Latents,
    step: u16,
    label: &Label,
    cfg: &ProbeConfig,
    ctx: &Ctx,
) -> Result<ProbeResult> {
    let mut x = Vec::new();
    let mut groups = Vec::new();
    let mut codes = Vec::new();
    let mut values = Vec::new();
    for r in (0..latents.len()).filter(|&r| latents.step[r] == step) {
        let key = label.key(latents.sample[r], step, latents.position[r]);
        let found = match &label.values {
            LabelValues::Classes { by_key, .. } => by_key.get(&key).map(|&c| codes.push(c)),
            LabelValues::Continuous(by_key) => by_key.get(&key).map(|&v| values.push(v)),
        };
        if found.is_some() {
            x.extend_from_slice(latents.row(r));
            groups.push(latents.sample[r]);
        }
    }
    if groups.is_empty() {
        return Err(Error::Invalid(format!(
            "no latent row matches a row of {} (joined on {})",
            label.source,
            label.join_keys()
        )));
    }
    let target = match &label.values {
        LabelValues::Classes { names, .. } => Target::Categorical {
            codes,
            names: names.clone(),
        },
        LabelValues::Continuous(_) => Target::Continuous(values),
    };
    let input = ProbeInput {
        x: &x,
        width: latents.width,
        groups: &groups,
    };
    probe::probe(&input, &target, cfg, ctx.progress)
}

/// The two figures of one label: `probes-<label>-heatmap` and `probes-<label>-steps`.
pub fn figures(label: &str, rows: &[ProbeRow]) -> Result<Vec<(String, String)>> {
    let mine: Vec<&ProbeRow> = rows.iter().filter(|r| r.label == label).collect();
    let Some(metric) = mine.first().map(|r| headline_metric(&r.kind)) else {
        return Ok(Vec::new());
    };
    let picked: Vec<&ProbeRow> = mine.into_iter().filter(|r| r.metric == metric).collect();
    let stem = format!("probes-{}", plots::file_safe(label));
    Ok(vec![
        (
            format!("{stem}-heatmap"),
            plots::probe::heatmap(label, metric, &picked).map_err(plot_error)?,
        ),
        (
            format!("{stem}-steps"),
            plots::probe::by_step(label, metric, &picked).map_err(plot_error)?,
        ),
    ])
}

fn plot_error(e: plots::PlotError) -> Error {
    Error::Invalid(e.to_string())
}

pub fn probes_frame(rows: &[ProbeRow]) -> Result<DataFrame> {
    let s = |f: fn(&ProbeRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let o = |f: fn(&ProbeRow) -> Option<f64>| rows.iter().map(f).collect::<Vec<Option<f64>>>();
    let u = |f: fn(&ProbeRow) -> u32| rows.iter().map(f).collect::<Vec<u32>>();
    let columns = vec![
        Column::new("site".into(), s(|r| &r.site)),
        Column::new(
            "step".into(),
            rows.iter().map(|r| r.step).collect::<Vec<u16>>(),
        ),
        Column::new("label".into(), s(|r| &r.label)),
        Column::new("kind".into(), s(|r| &r.kind)),
        Column::new("metric".into(), s(|r| &r.metric)),
        Column::new("value".into(), o(|r| r.value)),
        Column::new("ci_low".into(), o(|r| r.ci_low)),
        Column::new("ci_high".into(), o(|r| r.ci_high)),
        Column::new("control_value".into(), o(|r| r.control_value)),
        Column::new("selectivity".into(), o(|r| r.selectivity)),
        Column::new("baseline_value".into(), o(|r| r.baseline_value)),
        Column::new("p_value".into(), o(|r| r.p_value)),
        Column::new("n_samples".into(), u(|r| r.n_samples)),
        Column::new("n_rows".into(), u(|r| r.n_rows)),
        Column::new("folds".into(), u(|r| r.folds)),
        Column::new("dropped_rows".into(), u(|r| r.dropped_rows)),
        Column::new("chosen_c".into(), o(|r| r.chosen_c)),
        Column::new("chosen_lambda".into(), o(|r| r.chosen_lambda)),
    ];
    Ok(DataFrame::new_infer_height(columns)?)
}

/// Reads `tables/probes.parquet` back into rows (for merging and for the report).
pub fn probe_rows(df: &DataFrame) -> Result<Vec<ProbeRow>> {
    let text = |name: &str| -> Result<Vec<String>> {
        Ok(df
            .column(name)?
            .str()?
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect())
    };
    let float = |name: &str| -> Result<Vec<Option<f64>>> {
        Ok(df
            .column(name)?
            .cast(&DataType::Float64)?
            .f64()?
            .iter()
            .collect())
    };
    let int = |name: &str| -> Result<Vec<u32>> {
        Ok(df
            .column(name)?
            .cast(&DataType::UInt32)?
            .u32()?
            .iter()
            .map(|v| v.unwrap_or(0))
            .collect())
    };
    let (site, label, kind, metric) = (
        text("site")?,
        text("label")?,
        text("kind")?,
        text("metric")?,
    );
    let step = int("step")?;
    let (value, lo, hi) = (float("value")?, float("ci_low")?, float("ci_high")?);
    let (control, selectivity, baseline, p) = (
        float("control_value")?,
        float("selectivity")?,
        float("baseline_value")?,
        float("p_value")?,
    );
    let (n_samples, n_rows, folds, dropped) = (
        int("n_samples")?,
        int("n_rows")?,
        int("folds")?,
        int("dropped_rows")?,
    );
    let (c, lambda) = (float("chosen_c")?, float("chosen_lambda")?);
    Ok((0..df.height())
        .map(|i| ProbeRow {
            site: site[i].clone(),
            step: step[i] as u16,
            label: label[i].clone(),
            kind: kind[i].clone(),
            metric: metric[i].clone(),
            value: value[i],
            ci_low: lo[i],
            ci_high: hi[i],
            control_value: control[i],
            selectivity: selectivity[i],
            baseline_value: baseline[i],
            p_value: p[i],
            n_samples: n_samples[i],
            n_rows: n_rows[i],
            folds: folds[i],
            dropped_rows: dropped[i],
            chosen_c: c[i],
            chosen_lambda: lambda[i],
        })
        .collect())
}

pub fn weights_frame(rows: &[WeightRow]) -> Result<DataFrame> {
    // One list<f64> per row; rows of different sites have different lengths.
    let lists: Vec<Series> = rows
        .iter()
        .map(|r| Series::new("".into(), r.weights.as_slice()))
        .collect();
    let columns = vec![
        Column::new(
            "site".into(),
            rows.iter().map(|r| r.site.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "step".into(),
            rows.iter().map(|r| r.step).collect::<Vec<u16>>(),
        ),
        Column::new(
            "label".into(),
            rows.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "output".into(),
            rows.iter().map(|r| r.output.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "bias".into(),
            rows.iter().map(|r| r.bias).collect::<Vec<f64>>(),
        ),
        Column::new("weights".into(), lists),
    ];
    Ok(DataFrame::new_infer_height(columns)?)
}

/// Reads `tables/probe_weights.parquet` back into rows.
pub fn weight_rows(df: &DataFrame) -> Result<Vec<WeightRow>> {
    let text = |name: &str| -> Result<Vec<String>> {
        Ok(df
            .column(name)?
            .str()?
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect())
    };
    let (site, label, output) = (text("site")?, text("label")?, text("output")?);
    let step = df.column("step")?.cast(&DataType::UInt16)?;
    let bias = df.column("bias")?.cast(&DataType::Float64)?;
    let lists = df.column("weights")?.list()?;
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let weights = match lists.get_as_series(i) {
            Some(s) => s
                .cast(&DataType::Float64)?
                .f64()?
                .iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect(),
            None => Vec::new(),
        };
        out.push(WeightRow {
            site: site[i].clone(),
            step: step.u16()?.get(i).unwrap_or(0),
            label: label[i].clone(),
            output: output[i].clone(),
            bias: bias.f64()?.get(i).unwrap_or(f64::NAN),
            weights,
        });
    }
    Ok(out)
}

/// The headline row per (label, site, step), for summaries: label -> rows.
pub fn headline_rows(rows: &[ProbeRow]) -> BTreeMap<String, Vec<&ProbeRow>> {
    let mut out: BTreeMap<String, Vec<&ProbeRow>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.metric == headline_metric(&r.kind)) {
        out.entry(r.label.clone()).or_default().push(r);
    }
    out
}

/// Probe rows keyed for lookups by (site, step, label, metric).
pub fn index_rows(rows: &[ProbeRow]) -> HashMap<(&str, u16, &str, &str), &ProbeRow> {
    rows.iter()
        .map(|r| {
            (
                (r.site.as_str(), r.step, r.label.as_str(), r.metric.as_str()),
                r,
            )
        })
        .collect()
}

/// The report's section: where each label is decodable, with intervals, the control task
/// and the permutation test; key rows per site.
pub fn report(run: &Run, record: &AnalysisRecord) -> Result<Section> {
    let rows = probe_rows(&run.table("probes")?)?;
    let labels: Vec<String> = match record.options.get("labels") {
        Some(serde_json::Value::Array(v)) => v
            .iter()
            .filter_map(|l| l.as_str())
            .map(|l| l.rsplit(':').next().unwrap_or(l).to_string())
            .collect(),
        _ => Vec::new(),
    };
    let by_label = headline_rows(&rows);
    let mut section = Section {
        title: format!("Probes: {}", labels.join(", ")),
        note: "Linear probes (logistic for classes, ridge for continuous labels) on standardised \
               features, k-fold cross-validation grouped by sample, bootstrap 95% intervals, \
               a control task with shuffled labels per class (Hewitt & Liang selectivity) and \
               a permutation p-value. Chance is the majority class (classes) or the mean \
               (continuous)."
            .into(),
        ..Section::default()
    };
    for label in &labels {
        let Some(mine) = by_label.get(label.as_str()) else {
            continue;
        };
        section.findings.extend(label_findings(label, mine));
        section.plots.extend(
            ["heatmap", "steps"]
                .iter()
                .map(|k| format!("probes-{}-{k}", plots::file_safe(label)))
                .filter(|p| record.plots.contains(p)),
        );
        section.tables.push(best_per_site_table(label, mine));
    }
    Ok(section)
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.2}"))
}

fn fmt_p(p: Option<f64>) -> String {
    p.map_or("not tested".into(), |p| format!("p = {p:.3}"))
}

/// Decodable: the interval's lower end clears chance by a margin.
const DECODABLE_MARGIN: f64 = 0.05;

fn decodable(r: &ProbeRow) -> bool {
    match (r.ci_low, r.baseline_value) {
        (Some(lo), Some(base)) => lo > base + DECODABLE_MARGIN,
        _ => false,
    }
}

fn label_findings(label: &str, rows: &[&ProbeRow]) -> Vec<String> {
    let mut out = Vec::new();
    let best = rows.iter().filter(|r| r.value.is_some()).max_by(|a, b| {
        a.value
            .partial_cmp(&b.value)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if let Some(b) = best {
        out.push(format!(
            "`{label}` is best decoded at `{}`, step {}: {} {} [95% CI {}, {}] against chance {}; \
             control task {} (selectivity {}), permutation {}.",
            b.site,
            b.step,
            b.metric.replace('_', " "),
            fmt(b.value),
            fmt(b.ci_low),
            fmt(b.ci_high),
            fmt(b.baseline_value),
            fmt(b.control_value),
            fmt(b.selectivity),
            fmt_p(b.p_value)
        ));
    }
    let sites: BTreeSet<&str> = rows.iter().map(|r| r.site.as_str()).collect();
    let (mut from, mut never) = (Vec::new(), Vec::new());
    for site in sites {
        let mut mine: Vec<&&ProbeRow> = rows.iter().filter(|r| r.site == site).collect();
        mine.sort_by_key(|r| r.step);
        match mine.iter().position(|r| decodable(r)) {
            None => never.push(format!("`{site}`")),
            Some(i) if mine[i..].iter().all(|r| decodable(r)) => {
                let r = mine[i];
                from.push(format!(
                    "`{site}` from step {} on ({} [{}, {}] there)",
                    r.step,
                    fmt(r.value),
                    fmt(r.ci_low),
                    fmt(r.ci_high)
                ));
            }
            Some(_) => {
                let steps: Vec<String> = mine
                    .iter()
                    .filter(|r| decodable(r))
                    .map(|r| r.step.to_string())
                    .collect();
                from.push(format!("`{site}` at steps {}", steps.join(", ")));
            }
        }
    }
    if !from.is_empty() {
        out.push(format!(
            "`{label}` is linearly decodable (95% CI above chance + {DECODABLE_MARGIN}) at {}.",
            from.join("; ")
        ));
    }
    if !never.is_empty() {
        out.push(format!(
            "`{label}` is not decodable beyond chance + {DECODABLE_MARGIN} at any probed step of {}.",
            never.join(", ")
        ));
    }
    out
}

fn best_per_site_table(label: &str, rows: &[&ProbeRow]) -> Table {
    let sites: BTreeSet<&str> = rows.iter().map(|r| r.site.as_str()).collect();
    let mut table = Table {
        caption: format!("`{label}`: the best step per site"),
        header: [
            "site",
            "step",
            "metric",
            "value",
            "95% CI",
            "chance",
            "control",
            "selectivity",
            "p",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    for site in sites {
        let best = rows
            .iter()
            .filter(|r| r.site == site && r.value.is_some())
            .max_by(|a, b| {
                a.value
                    .partial_cmp(&b.value)
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
        if let Some(r) = best {
            table.rows.push(vec![
                site.to_string(),
                r.step.to_string(),
                r.metric.clone(),
                fmt(r.value),
                format!("[{}, {}]", fmt(r.ci_low), fmt(r.ci_high)),
                fmt(r.baseline_value),
                fmt(r.control_value),
                fmt(r.selectivity),
                r.p_value.map_or("-".into(), |p| format!("{p:.3}")),
            ]);
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Hidden;
    use crate::store::{Manifest, ModelInfo, STATUS_COMPLETE};
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    /// A finished run with sites `a` (width 6) and `b` (width 3), steps 0..3, 40 samples;
    /// the class `shape` is written into site `a` from step 1 on, `size` into site `b`.
    pub(crate) fn tiny_run(dir: &std::path::Path) -> Run {
        let manifest = Manifest::new(
            "test",
            serde_json::json!({}),
            0,
            ModelInfo {
                id: "none".into(),
                weights: vec![],
            },
        );
        let (mut run, _) = Run::create_or_resume(dir, manifest).unwrap();
        let shape: Vec<u32> = (0..40).map(|i| i % 2).collect();
        let size: Vec<f64> = (0..40).map(|i| (i % 7) as f64 * 0.5).collect();
        for (site, width) in [("a", 6), ("b", 3)] {
            let mut rows = Latents::new(width);
            for s in 0..40u32 {
                for step in 0..3u16 {
                    let noise =
                        crate::rng::gaussian(s as u64, step as u64 + 10 * width as u64, width);
                    let mut x: Vec<f32> = noise.iter().map(|v| v * 0.3).collect();
                    if site == "a" && step > 0 {
                        x[0] += if shape[s as usize] == 1 { 3.0 } else { -3.0 };
                    }
                    if site == "b" {
                        x[1] += size[s as usize] as f32;
                    }
                    rows.push(s, step, None, None, &x);
                }
            }
            run.write_latents_part(site, 0, &rows).unwrap();
        }
        let ids: Vec<u32> = (0..40).collect();
        let constant = vec![1.5f64; 40];
        let lonely: Vec<i64> = (0..40).map(|i| if i == 0 { 1 } else { 0 }).collect();
        let mut df = df!("sample" => ids, "shape" => shape, "size" => size,
            "constant" => constant, "lonely" => lonely)
        .unwrap();
        run.write_samples_part(0, &mut df).unwrap();
        run.finish_samples(1).unwrap();
        run.manifest_mut().status = STATUS_COMPLETE.into();
        run.write_manifest().unwrap();
        run
    }

    fn options(labels: &[&str]) -> Options {
        Options {
            labels: labels.iter().map(|s| s.to_string()).collect(),
            folds: 4,
            permutations: 4,
            bootstrap: 50,
            ..Options::default()
        }
    }

    /// plan -> run -> write, as the command does.
    pub(crate) fn probe_run(run: &mut Run, opts: &Options) -> Result<()> {
        let stop = AtomicBool::new(false);
        let plan = plan(run, opts)?;
        let out = super::run(run, &plan, &Ctx::new(&Hidden, &stop))?;
        super::super::write(run, &plan.identity, out, Instant::now())?;
        Ok(())
    }

    fn value(probes: &DataFrame, site: &str, step: u16, metric: &str) -> f64 {
        let rows = probe_rows(probes).unwrap();
        rows.iter()
            .find(|r| r.site == site && r.step == step && r.metric == metric)
            .and_then(|r| r.value)
            .unwrap()
    }

    #[test]
    fn probes_every_site_step_and_label_into_tables_and_plots() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = tiny_run(&dir.path().join("run"));
        probe_run(&mut run, &options(&["shape", "size"])).unwrap();
        let probes = run.table("probes").unwrap();
        // 2 sites x 3 steps x (4 class metrics + 3 continuous metrics).
        assert_eq!(probes.height(), 2 * 3 * 7);
        assert_eq!(value(&probes, "a", 2, "accuracy"), 1.0);
        assert!(value(&probes, "a", 0, "accuracy") < 0.8);
        assert!(value(&probes, "b", 1, "r2") > 0.8);
        let weights = run.table("probe_weights").unwrap();
        assert_eq!(weights.height(), 2 * 3 * 2);
        for plot in [
            "probes-shape-heatmap",
            "probes-shape-steps",
            "probes-size-heatmap",
            "probes-size-steps",
        ] {
            let svg = std::fs::read_to_string(run.root().join("plots").join(format!("{plot}.svg")))
                .unwrap();
            assert!(svg.contains("<svg") && svg.contains("step"), "{plot}");
        }
        let entry = run.manifest().analysis("probe:shape,size").unwrap();
        assert_eq!(entry.tables, ["probes", "probe_weights"]);
        assert_eq!(entry.samples_used, 40);
    }

    #[test]
    fn a_second_label_keeps_the_first_labels_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = tiny_run(&dir.path().join("run"));
        probe_run(&mut run, &options(&["shape"])).unwrap();
        probe_run(&mut run, &options(&["size"])).unwrap();
        let rows = probe_rows(&run.table("probes").unwrap()).unwrap();
        let labels: BTreeSet<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, BTreeSet::from(["shape", "size"]));
        // Probing shape again replaces its rows instead of adding a copy.
        probe_run(&mut run, &options(&["shape", "shape"])).unwrap();
        assert_eq!(run.table("probes").unwrap().height(), 2 * 3 * 7);
        assert_eq!(run.table("probe_weights").unwrap().height(), 2 * 3 * 2);
    }

    #[test]
    fn one_site_and_one_step_still_make_readable_plots() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = tiny_run(&dir.path().join("run"));
        let mut o = options(&["shape"]);
        o.sites = vec!["a".into()];
        o.steps = "last".into();
        probe_run(&mut run, &o).unwrap();
        assert_eq!(run.table("probes").unwrap().height(), 4);
        let svg =
            std::fs::read_to_string(run.root().join("plots/probes-shape-heatmap.svg")).unwrap();
        assert!(
            svg.contains("1.00"),
            "the single cell is drawn and annotated"
        );
    }

    #[test]
    fn labels_join_on_sample_and_step_and_duplicate_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = tiny_run(&dir.path().join("run"));
        let (mut samples, mut steps, mut phase) = (vec![], vec![], vec![]);
        for s in 0..40u32 {
            for step in 1..3u16 {
                samples.push(s);
                steps.push(step);
                phase.push(if s % 2 == 1 { "up" } else { "down" });
            }
        }
        let mut df = df!("sample" => &samples, "step" => &steps, "phase" => &phase).unwrap();
        run.write_table("phases", &mut df).unwrap();
        let mut o = options(&["phases:phase"]);
        o.sites = vec!["a".into()];
        o.steps = "1,2".into();
        probe_run(&mut run, &o).unwrap();
        let rows = probe_rows(&run.table("probes").unwrap()).unwrap();
        assert!(rows.iter().all(|r| r.n_rows == 40));
        let mut dup = df!("sample" => [3u32, 3], "colour" => ["red", "blue"]).unwrap();
        run.write_table("colours", &mut dup).unwrap();
        let err = probe_run(&mut run, &options(&["colour"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("several rows for sample 3"), "{err}");
    }

    #[test]
    fn degenerate_labels_and_unfinished_runs_are_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = tiny_run(&dir.path().join("run"));
        let err = probe_run(&mut run, &options(&["constant"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("every value is 1.5"), "{err}");
        let err = probe_run(&mut run, &options(&["lonely"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("class `1` has 1 sample"), "{err}");
        let err = probe_run(&mut run, &options(&["colour"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`colour` not found") && err.contains("samples.parquet: shape, size"),
            "{err}"
        );
        assert!(run.tables().unwrap().is_empty(), "nothing was written");
        run.manifest_mut().status = crate::store::STATUS_RUNNING.into();
        let err = probe_run(&mut run, &options(&["shape"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--allow-partial"), "{err}");
        let mut o = options(&["shape"]);
        o.allow_partial = true;
        probe_run(&mut run, &o).unwrap();
    }
}
