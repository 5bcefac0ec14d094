//! `latentlens probe`: linear probes over the grid site x step x label of a recorded run,
//! with the rigor of `analysis::probe` (grouped CV, intervals, control task, permutation
//! test). Writes tables/probes.parquet, tables/probe_weights.parquet and, per label, a
//! site x step heatmap and a metric-vs-step plot with the 95% band.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::Context;
use clap::Args;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use polars::prelude::*;

use super::common;
use super::plot::file_safe;
use crate::analysis::probe::{
    self, ProbeConfig, ProbeInput, ProbeResult, ProbeRow, Target, WeightRow,
};
use crate::store::{Latents, Run};

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Run folder made by `latentlens record`.
    #[arg(long)]
    pub run: PathBuf,
    /// Sites to probe, comma-separated or repeated (default: every recorded site).
    #[arg(long, value_delimiter = ',')]
    pub sites: Vec<String>,
    /// Steps to probe: `all`, `last`, `0,10,49`, `0..50:5` or a mix.
    #[arg(long, default_value = "all")]
    pub steps: String,
    /// Label to probe for (repeatable): a column of samples.parquet, or of any run table
    /// with a `sample` column (joined on sample, and on step/position when the table has
    /// them). `TABLE:COLUMN` picks the table.
    #[arg(long = "label", required = true)]
    pub labels: Vec<String>,
    /// Integer label columns to treat as continuous (ridge) instead of classes.
    /// Float columns are always continuous; strings and booleans always classes.
    #[arg(long, value_delimiter = ',')]
    pub continuous: Vec<String>,
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
}

/// `latentlens bench probe`: our logistic solver on seeded latent-like data; compare with
/// `python benches/sklearn_logistic.py DIR` on the same data (`--write-data DIR`).
#[derive(Debug, Args)]
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
        println!(
            "data written to {} (python benches/sklearn_logistic.py {})",
            dir.display(),
            dir.display()
        );
    }
    for _ in 0..args.repeats.max(1) {
        let r = probe_bench::bench_logistic(&data, 1.0)?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
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
        println!(
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

/// Join key of a label table: sample, and step / position when the table has them.
type Key = (u32, Option<u16>, Option<i32>);

/// One label column, resolved and indexed by key.
struct Label {
    name: String,
    source: String,
    has_step: bool,
    has_position: bool,
    values: LabelValues,
}

enum LabelValues {
    Classes {
        names: Vec<String>,
        by_key: HashMap<Key, u32>,
    },
    Continuous(HashMap<Key, f64>),
}

impl Label {
    fn key(&self, rows: &Latents, r: usize) -> Key {
        (
            rows.sample[r],
            self.has_step.then_some(rows.step[r]),
            if self.has_position {
                rows.position[r]
            } else {
                None
            },
        )
    }
}

pub fn run(args: &ProbeArgs) -> anyhow::Result<()> {
    let run = Run::open(&args.run)?;
    let labels: Vec<Label> = args
        .labels
        .iter()
        .map(|spec| resolve_label(&run, spec, &args.continuous))
        .collect::<anyhow::Result<_>>()?;
    let sites = common::recorded_sites(&run, &args.sites)?;
    let cfg = ProbeConfig {
        folds: args.folds,
        seed: args.seed,
        permutations: args.permutations,
        bootstrap: args.bootstrap,
        drop_nonfinite: args.drop_nonfinite,
        ..ProbeConfig::default()
    };
    let bar = common::bar(0, "probe");
    let interrupted = common::interrupt_flag();
    let mut rows: Vec<ProbeRow> = Vec::new();
    let mut weights: Vec<WeightRow> = Vec::new();
    for site in &sites {
        let latents = run.read_latents(site, None)?;
        let steps =
            select_steps(&latents, &args.steps).with_context(|| format!("site `{site}`"))?;
        bar.inc_length(steps.len() as u64 * labels.len() as u64 * cfg.work_units());
        for &step in &steps {
            for label in &labels {
                if interrupted.load(Ordering::SeqCst) {
                    return Err(crate::Error::Interrupted.into());
                }
                let what = || format!("probe of `{}` at site `{site}`, step {step}", label.name);
                let result = probe_one(&latents, step, label, &cfg, &bar).with_context(what)?;
                rows.extend(result.rows(site, step, &label.name));
                weights.extend(result.weight_rows(site, step, &label.name));
            }
        }
    }
    bar.finish_and_clear();
    let tables = [
        run.write_table("probes", &mut probes_frame(&rows)?)?,
        run.write_table("probe_weights", &mut weights_frame(&weights)?)?,
    ];
    let mut plots = Vec::new();
    for label in &labels {
        let mine: Vec<&ProbeRow> = rows.iter().filter(|r| r.label == label.name).collect();
        let Some(metric) = mine.first().map(|r| headline_metric(&r.kind)) else {
            continue;
        };
        let picked: Vec<&ProbeRow> = mine.into_iter().filter(|r| r.metric == metric).collect();
        let stem = format!("probes-{}", file_safe(&label.name));
        plots.push(run.write_plot(
            &format!("{stem}-heatmap"),
            &heatmap_svg(&label.name, metric, &picked)?,
        )?);
        plots.push(run.write_plot(
            &format!("{stem}-steps"),
            &steps_svg(&label.name, metric, &picked)?,
        )?);
    }
    print_summary(&rows, &labels);
    for p in tables.iter().chain(&plots) {
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// The metric shown in plots and the summary.
fn headline_metric(kind: &str) -> &'static str {
    if kind == "continuous" {
        "r2"
    } else {
        "balanced_accuracy"
    }
}

fn select_steps(latents: &Latents, spec: &str) -> anyhow::Result<Vec<u16>> {
    let present: BTreeSet<u16> = latents.step.iter().copied().collect();
    let (Some(&first), Some(&last)) = (present.first(), present.last()) else {
        anyhow::bail!("no latent rows recorded");
    };
    Ok(match crate::steps::parse_steps(spec, first, last + 1)? {
        None => present.into_iter().collect(),
        Some(wanted) => {
            let missing: Vec<u16> = wanted
                .iter()
                .copied()
                .filter(|s| !present.contains(s))
                .collect();
            anyhow::ensure!(
                missing.is_empty(),
                "steps {missing:?} were not recorded; recorded steps: {:?}",
                present.iter().collect::<Vec<_>>()
            );
            wanted
        }
    })
}

/// Probes one (site, step, label): the rows of that step that have a label value.
fn probe_one(
    latents: &Latents,
    step: u16,
    label: &Label,
    cfg: &ProbeConfig,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<ProbeResult> {
    let mut x = Vec::new();
    let mut groups = Vec::new();
    let mut codes = Vec::new();
    let mut values = Vec::new();
    for r in (0..latents.len()).filter(|&r| latents.step[r] == step) {
        let key = label.key(latents, r);
        let found = match &label.values {
            LabelValues::Classes { by_key, .. } => by_key.get(&key).map(|&c| codes.push(c)),
            LabelValues::Continuous(by_key) => by_key.get(&key).map(|&v| values.push(v)),
        };
        if found.is_some() {
            x.extend_from_slice(latents.row(r));
            groups.push(latents.sample[r]);
        }
    }
    anyhow::ensure!(
        !groups.is_empty(),
        "no latent row matches a row of {} (joined on {})",
        label.source,
        join_keys(label)
    );
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
    Ok(probe::probe(&input, &target, cfg, bar)?)
}

fn join_keys(label: &Label) -> String {
    let mut keys = vec!["sample"];
    if label.has_step {
        keys.push("step");
    }
    if label.has_position {
        keys.push("position");
    }
    keys.join(", ")
}

/// Finds a label column in samples.parquet or a run table and indexes it by key.
fn resolve_label(run: &Run, spec: &str, continuous: &[String]) -> anyhow::Result<Label> {
    let (table, column) = match spec.split_once(':') {
        Some((t, c)) => (Some(t), c),
        None => (None, spec),
    };
    let mut candidates: Vec<(String, DataFrame)> = Vec::new();
    if table.is_none() || table == Some("samples") {
        candidates.push(("samples.parquet".into(), run.samples()?));
    }
    for name in run.tables()? {
        if table.is_none_or(|t| t == name) && !name.starts_with("probe") {
            candidates.push((format!("tables/{name}.parquet"), run.table(&name)?));
        }
    }
    let keyed: Vec<&(String, DataFrame)> = candidates
        .iter()
        .filter(|(_, df)| df.column("sample").is_ok())
        .collect();
    let Some((source, df)) = keyed.iter().find(|(_, df)| df.column(column).is_ok()) else {
        let listing: Vec<String> = keyed
            .iter()
            .map(|(src, df)| {
                let cols: Vec<String> = df
                    .get_column_names()
                    .iter()
                    .map(|c| c.to_string())
                    .filter(|c| !["sample", "step", "position"].contains(&c.as_str()))
                    .collect();
                format!("{src}: {}", cols.join(", "))
            })
            .collect();
        anyhow::bail!(
            "label `{spec}` not found; label columns in this run (tables keyed by `sample`):\n  {}",
            if listing.is_empty() {
                "none".to_string()
            } else {
                listing.join("\n  ")
            }
        );
    };
    index_label(source, df, column, continuous.iter().any(|c| c == column))
}

fn index_label(
    source: &str,
    df: &DataFrame,
    column: &str,
    force_continuous: bool,
) -> anyhow::Result<Label> {
    let ctx = || format!("{source}, column `{column}`");
    let sample = df
        .column("sample")?
        .cast(&DataType::UInt32)
        .map_err(anyhow::Error::from)
        .with_context(ctx)?;
    let sample = sample.u32()?;
    let opt_key = |name: &str| -> anyhow::Result<Option<Vec<Option<i64>>>> {
        match df.column(name) {
            Ok(c) => Ok(Some(
                c.cast(&DataType::Int64)
                    .map_err(anyhow::Error::from)
                    .with_context(ctx)?
                    .i64()?
                    .iter()
                    .collect(),
            )),
            Err(_) => Ok(None),
        }
    };
    let step = opt_key("step")?;
    let position = opt_key("position")?;
    let keys: Vec<Option<Key>> = (0..df.height())
        .map(|r| {
            let s = sample.get(r)?;
            let st = match &step {
                Some(v) => Some(u16::try_from(v[r]?).ok()?),
                None => None,
            };
            let pos = match &position {
                Some(v) => Some(i32::try_from(v[r]?).ok()?),
                None => None,
            };
            Some((s, st, pos))
        })
        .collect();
    let col = df.column(column)?;
    let dtype = col.dtype().clone();
    let continuous = dtype.is_float() || (force_continuous && dtype.is_integer());
    let join = [
        Some("sample"),
        step.as_ref().map(|_| "step"),
        position.as_ref().map(|_| "position"),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    let values = if continuous {
        let v = col
            .cast(&DataType::Float64)
            .map_err(anyhow::Error::from)
            .with_context(ctx)?;
        let pairs = keys
            .iter()
            .zip(v.f64()?.iter())
            .filter_map(|(k, x)| Some(((*k)?, x?)));
        LabelValues::Continuous(unique_keys(pairs, source, &join)?)
    } else {
        anyhow::ensure!(
            dtype.is_integer()
                || dtype.is_bool()
                || dtype.is_string()
                || matches!(dtype, DataType::Categorical(..)),
            "{}: type {dtype} cannot be a probe label (need numbers, strings or booleans)",
            ctx()
        );
        let text = col
            .cast(&DataType::String)
            .map_err(anyhow::Error::from)
            .with_context(ctx)?;
        let text: Vec<Option<String>> = text.str()?.iter().map(|v| v.map(str::to_string)).collect();
        let mut names: Vec<String> = text
            .iter()
            .flatten()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if dtype.is_integer() {
            names.sort_by_key(|n| n.parse::<i64>().unwrap_or(i64::MAX));
        }
        let code: HashMap<&str, u32> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i as u32))
            .collect();
        let pairs = keys
            .iter()
            .zip(&text)
            .filter_map(|(k, t)| Some(((*k)?, code[t.as_deref()?])));
        let by_key = unique_keys(pairs, source, &join)?;
        LabelValues::Classes { names, by_key }
    };
    Ok(Label {
        name: column.to_string(),
        source: source.to_string(),
        has_step: step.is_some(),
        has_position: position.is_some(),
        values,
    })
}

/// Indexes label values by key, refusing a table with two rows for one key (a label
/// must say one thing per latent row).
fn unique_keys<V>(
    pairs: impl Iterator<Item = (Key, V)>,
    source: &str,
    join: &str,
) -> anyhow::Result<HashMap<Key, V>> {
    let mut by_key = HashMap::new();
    for (k, v) in pairs {
        if by_key.insert(k, v).is_some() {
            anyhow::bail!(
                "{source} has several rows for sample {}{}{}; a label needs one value per ({join})",
                k.0,
                k.1.map_or(String::new(), |s| format!(", step {s}")),
                k.2.map_or(String::new(), |p| format!(", position {p}")),
            );
        }
    }
    Ok(by_key)
}

fn probes_frame(rows: &[ProbeRow]) -> anyhow::Result<DataFrame> {
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

fn weights_frame(rows: &[WeightRow]) -> anyhow::Result<DataFrame> {
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

fn print_summary(rows: &[ProbeRow], labels: &[Label]) {
    println!(
        "{:<28} {:>5} {:<16} {:<18} {:>7} {:>17} {:>8} {:>8} {:>8}",
        "site", "step", "label", "metric", "value", "95% CI", "control", "select.", "p"
    );
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for label in labels {
        for r in rows
            .iter()
            .filter(|r| r.label == label.name && r.metric == headline_metric(&r.kind))
        {
            println!(
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
}

const FONT: &str = "sans-serif";

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the probe plot failed: {e:?}")
}

/// White (low) to dark blue (high).
fn shade(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

fn heatmap_svg(label: &str, metric: &str, rows: &[&ProbeRow]) -> anyhow::Result<String> {
    let sites: Vec<String> = rows
        .iter()
        .map(|r| r.site.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let steps: Vec<u16> = rows
        .iter()
        .map(|r| r.step)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let vals: Vec<f64> = rows.iter().filter_map(|r| r.value).collect();
    let lo = vals.iter().cloned().fold(f64::INFINITY, f64::min).min(0.0);
    let hi = vals
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(lo + 1e-9);
    let longest = sites.iter().map(|s| s.len()).max().unwrap_or(4) as u32;
    let (w, h) = (
        (260 + 8 * longest + 56 * steps.len() as u32).max(720),
        170 + 40 * sites.len() as u32,
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (main, bar) = root.split_horizontally(w - 110);
        let mut chart = ChartBuilder::on(&main)
            .caption(
                format!("`{label}`: probe {metric} by site and step"),
                (FONT, 20),
            )
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(20 + 8 * longest)
            .build_cartesian_2d(
                -0.5..steps.len() as f64 - 0.5,
                -0.5..sites.len() as f64 - 0.5,
            )
            .map_err(plot_err)?;
        // Cell i spans [i - 0.5, i + 0.5], so integer ticks sit at cell centers.
        let name_at = |v: f64, names: &dyn Fn(usize) -> String| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                names(i as usize)
            } else {
                String::new()
            }
        };
        let step_name = |i: usize| steps.get(i).map_or(String::new(), |s| s.to_string());
        let site_name = |i: usize| sites.get(i).cloned().unwrap_or_default();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(steps.len().min(25) + 1)
            .y_labels(sites.len().min(40) + 1)
            .x_label_formatter(&|v| name_at(*v, &step_name))
            .y_label_formatter(&|v| name_at(*v, &site_name))
            .x_desc("step")
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .draw()
            .map_err(plot_err)?;
        let annotate = steps.len() * sites.len() <= 150;
        for r in rows {
            let (Some(si), Some(ti)) = (
                sites.iter().position(|s| *s == r.site),
                steps.iter().position(|s| *s == r.step),
            ) else {
                continue;
            };
            let (x, y) = (ti as f64, si as f64);
            let t = r.value.map_or(0.0, |v| (v - lo) / (hi - lo));
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                    shade(t).filled(),
                )))
                .map_err(plot_err)?;
            if annotate {
                let text = r.value.map_or("-".to_string(), |v| format!("{v:.2}"));
                let color = if t > 0.55 { WHITE } else { BLACK };
                let style = TextStyle::from((FONT, 14).into_font())
                    .color(&color)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                chart
                    .draw_series(std::iter::once(Text::new(text, (x, y), style)))
                    .map_err(plot_err)?;
            }
        }
        // Color bar from lo to hi.
        let mut cb = ChartBuilder::on(&bar)
            .margin_top(50)
            .margin_bottom(60)
            .margin_right(10)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..1.0, lo..hi)
            .map_err(plot_err)?;
        cb.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(5)
            .label_style((FONT, 13))
            .draw()
            .map_err(plot_err)?;
        let n = 50;
        cb.draw_series((0..n).map(|i| {
            let a = lo + (hi - lo) * i as f64 / n as f64;
            let b = lo + (hi - lo) * (i + 1) as f64 / n as f64;
            Rectangle::new(
                [(0.0, a), (1.0, b)],
                shade((i as f64 + 0.5) / n as f64).filled(),
            )
        }))
        .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn steps_svg(label: &str, metric: &str, rows: &[&ProbeRow]) -> anyhow::Result<String> {
    let sites: Vec<String> = rows
        .iter()
        .map(|r| r.site.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let x_lo = rows.iter().map(|r| r.step).min().unwrap_or(0) as f64;
    let x_hi = rows.iter().map(|r| r.step).max().unwrap_or(0) as f64;
    let (x_lo, x_hi) = if x_hi > x_lo {
        (x_lo, x_hi)
    } else {
        (x_lo - 0.5, x_hi + 0.5)
    };
    let ys: Vec<f64> = rows
        .iter()
        .flat_map(|r| {
            [
                r.value,
                r.ci_low,
                r.ci_high,
                r.control_value,
                r.baseline_value,
            ]
        })
        .flatten()
        .collect();
    let y_lo = ys.iter().cloned().fold(f64::INFINITY, f64::min).min(0.0);
    let y_hi = ys
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(y_lo + 0.1);
    let pad = 0.05 * (y_hi - y_lo);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("probe {metric} for `{label}` by step (band/bars: 95% CI; thin line, x: control task)"), (FONT, 20))
            .margin(14)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x_lo..x_hi, (y_lo - pad)..(y_hi + pad))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_labels(((x_hi - x_lo).round() as usize + 1).clamp(2, 12))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("step")
            .y_desc(metric)
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .draw()
            .map_err(plot_err)?;
        for (i, site) in sites.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut pts: Vec<&&ProbeRow> = rows.iter().filter(|r| &r.site == site).collect();
            pts.sort_by_key(|r| r.step);
            let band: Vec<(f64, f64)> = pts
                .iter()
                .filter_map(|r| r.ci_high.map(|v| (r.step as f64, v)))
                .chain(
                    pts.iter()
                        .rev()
                        .filter_map(|r| r.ci_low.map(|v| (r.step as f64, v))),
                )
                .collect();
            if band.len() >= 3 {
                chart
                    .draw_series(std::iter::once(Polygon::new(band, color.mix(0.18))))
                    .map_err(plot_err)?;
            }
            let line: Vec<(f64, f64)> = pts
                .iter()
                .filter_map(|r| r.value.map(|v| (r.step as f64, v)))
                .collect();
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(site.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart
                .draw_series(PointSeries::of_element(
                    line,
                    4,
                    color.filled(),
                    &|c, s, st| Circle::new(c, s, st),
                ))
                .map_err(plot_err)?;
            // Vertical 95% bars (visible even with a single step, where no band forms).
            let bars = pts.iter().filter_map(|r| {
                let (lo, hi) = (r.ci_low?, r.ci_high?);
                Some(PathElement::new(
                    vec![(r.step as f64, lo), (r.step as f64, hi)],
                    color.stroke_width(1),
                ))
            });
            chart.draw_series(bars).map_err(plot_err)?;
            let control: Vec<(f64, f64)> = pts
                .iter()
                .filter_map(|r| r.control_value.map(|v| (r.step as f64, v)))
                .collect();
            chart
                .draw_series(LineSeries::new(
                    control.clone(),
                    color.mix(0.6).stroke_width(1),
                ))
                .map_err(plot_err)?;
            chart
                .draw_series(
                    control
                        .into_iter()
                        .map(|c| Cross::new(c, 4, color.mix(0.8).stroke_width(1))),
                )
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Manifest, ModelInfo};

    /// A run with sites `a` (width 6) and `b` (width 3), steps 0..3, 40 samples; the
    /// class `shape` is written into site `a` from step 1 on, `size` into site `b`.
    fn tiny_run(dir: &std::path::Path) -> Run {
        let manifest = Manifest::new(
            "test",
            serde_json::json!({}),
            0,
            ModelInfo {
                id: "none".into(),
                weights: vec![],
            },
        );
        let (run, _) = Run::create_or_resume(dir, manifest).unwrap();
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
        let mut df = df!("sample" => ids, "shape" => shape, "size" => size).unwrap();
        run.write_samples_part(0, &mut df).unwrap();
        run.finish_samples(1).unwrap();
        run
    }

    fn args(dir: &std::path::Path, labels: &[&str]) -> ProbeArgs {
        ProbeArgs {
            run: dir.to_path_buf(),
            sites: vec![],
            steps: "all".into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            continuous: vec![],
            folds: 4,
            seed: 0,
            permutations: 4,
            bootstrap: 50,
            drop_nonfinite: false,
        }
    }

    #[test]
    fn probes_every_site_step_and_label_into_tables_and_plots() {
        let dir = tempfile::tempdir().unwrap();
        let run = tiny_run(&dir.path().join("run"));
        run_probe_quietly(&args(run.root(), &["shape", "size"]));
        let probes = run.table("probes").unwrap();
        // 2 sites x 3 steps x (4 class metrics + 3 continuous metrics).
        assert_eq!(probes.height(), 2 * 3 * 7);
        let value = |site: &str, step: u16, metric: &str| {
            let mask = probes.column("site").unwrap().str().unwrap().equal(site)
                & probes.column("step").unwrap().u16().unwrap().equal(step)
                & probes
                    .column("metric")
                    .unwrap()
                    .str()
                    .unwrap()
                    .equal(metric);
            probes
                .filter(&mask)
                .unwrap()
                .column("value")
                .unwrap()
                .f64()
                .unwrap()
                .get(0)
                .unwrap()
        };
        assert_eq!(value("a", 2, "accuracy"), 1.0);
        assert!(value("a", 0, "accuracy") < 0.8);
        assert!(value("b", 1, "r2") > 0.8);
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
    }

    #[test]
    fn one_site_and_one_step_still_make_readable_plots() {
        let dir = tempfile::tempdir().unwrap();
        let run = tiny_run(&dir.path().join("run"));
        let mut a = args(run.root(), &["shape"]);
        a.sites = vec!["a".into()];
        a.steps = "last".into();
        run_probe_quietly(&a);
        let probes = run.table("probes").unwrap();
        assert_eq!(probes.height(), 4);
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
        let run = tiny_run(&dir.path().join("run"));
        // A per-(sample, step) label: the shape at steps 1 and 2 only (step 0 has no row).
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
        let mut a = args(run.root(), &["phases:phase"]);
        a.sites = vec!["a".into()];
        a.steps = "1,2".into();
        run_probe_quietly(&a);
        let probes = run.table("probes").unwrap();
        let n_rows = probes.column("n_rows").unwrap().u32().unwrap();
        assert!(n_rows.iter().all(|n| n == Some(40)));
        let mut dup = df!("sample" => [3u32, 3], "colour" => ["red", "blue"]).unwrap();
        run.write_table("colours", &mut dup).unwrap();
        let err = super::run(&args(run.root(), &["colour"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("several rows for sample 3"), "{err}");
    }

    fn run_probe_quietly(a: &ProbeArgs) {
        run(a).unwrap();
    }

    #[test]
    fn a_missing_label_lists_the_columns_that_exist() {
        let dir = tempfile::tempdir().unwrap();
        let run = tiny_run(&dir.path().join("run"));
        let err = super::run(&args(run.root(), &["colour"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`colour` not found") && err.contains("samples.parquet: shape, size"),
            "{err}"
        );
    }
}
