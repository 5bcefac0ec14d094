//! The reduce job: PCA or UMAP of recorded sites, one fit per site over the chosen steps.
//!
//! Tables (one row per site and item; a rerun of the same method replaces them):
//! - `pca_variance`: site, component, eigenvalue, ratio (of the total variance), cumulative,
//!   reconstruction_mse (closed form, keeping the first `component` components),
//!   reconstruction_mse_measured (the same measured on the rows; null past `components`).
//! - `pca_summary`: site, steps, rows, width, total_variance, participation_ratio,
//!   components_90 / _95 / _99.
//! - `pca_components`: site, component, loadings (list of f32, the site's width).
//! - `pca_projection`: site, sample, step, position, pc1..pcN.
//! - `umap`: site, sample, step, position, umap_1, umap_2 (the embedded subsample).
//! - `umap_quality`: site, k, trustworthiness, continuity, points (scored), embedded,
//!   rows (of the site), seed, neighbours.
//!
//! Figures: `pca-<site>-scree`, `pca-<site>-scatter`, `umap-<site>`, coloured by
//! `color_by` (any label `store::resolve` finds: classes get a legend, continuous values
//! a colour bar).

use std::collections::BTreeSet;

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Ctx, Identity, Output};
use crate::analysis::knn::subsample;
use crate::analysis::pca::{PcaAccumulator, PcaFit};
use crate::analysis::quality::neighbourhood_quality;
use crate::analysis::umap::{umap, UmapParams};
use crate::plots;
use crate::report::{Section, Table};
use crate::store::resolve::{self, Label, LabelKind, LabelValues};
use crate::store::{AnalysisRecord, Latents, Run};
use crate::{Error, Result};

/// Rows per batch when streaming a site through PCA.
const BATCH_ROWS: usize = 65_536;
/// Trustworthiness/continuity are O(n^2 k): computed on at most this many embedded points,
/// and on fewer for wide sites so their f64 copy stays within QUALITY_BYTES.
const QUALITY_POINTS: usize = 5_000;
const QUALITY_BYTES: usize = 256 << 20;
/// Neighbourhood sizes the embedding is scored at.
const QUALITY_KS: [usize; 2] = [5, 15];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Pca,
    Umap,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Pca => "pca",
            Method::Umap => "umap",
        }
    }
}

/// What a user asks for; the `reduce` command's flags and an experiment's
/// `[[run.reduce]]` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Site names or globs (empty: every recorded site).
    pub sites: Vec<String>,
    /// `all`, `last`, `0,10,49`, `0..50:5`, among the recorded steps.
    pub steps: String,
    pub method: Method,
    /// PCA components kept (capped at the site's width).
    pub components: usize,
    /// A label to colour scatter plots by: `COLUMN` or `TABLE:COLUMN`.
    pub color_by: Option<String>,
    /// Read `color_by` as classes or continuous against the one rule.
    pub color_as: Option<LabelKind>,
    /// UMAP embeds at most this many rows (seeded uniform sample, streamed).
    pub max_points: usize,
    /// UMAP's number of neighbours.
    pub neighbours: usize,
    pub seed: u64,
    pub allow_partial: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sites: Vec::new(),
            steps: "all".into(),
            method: Method::Pca,
            components: 10,
            color_by: None,
            color_as: None,
            max_points: 20_000,
            neighbours: UmapParams::default().n_neighbors,
            seed: 0,
            allow_partial: false,
        }
    }
}

/// Everything resolved: which steps of which sites, and the colouring label.
#[derive(Debug)]
pub struct Plan {
    pub method: Method,
    pub grid: Vec<(String, Vec<u16>)>,
    pub colour: Option<Label>,
    pub options: Options,
    pub identity: Identity,
}

pub fn plan(run: &Run, opts: &Options) -> Result<Plan> {
    super::require_complete(run, opts.allow_partial)?;
    if opts.components == 0 {
        return Err(Error::Invalid("components = 0: keep at least 1".into()));
    }
    if opts.method == Method::Umap {
        if opts.neighbours < 2 {
            return Err(Error::Invalid(format!(
                "neighbours = {}: UMAP needs at least 2",
                opts.neighbours
            )));
        }
        if opts.max_points <= opts.neighbours {
            return Err(Error::Invalid(format!(
                "max_points = {} must exceed neighbours = {} (UMAP embeds more points than \
                 each one's neighbours)",
                opts.max_points, opts.neighbours
            )));
        }
    }
    let mut grid = Vec::new();
    for site in resolve::sites(run, &opts.sites)? {
        let recorded = run.recorded_steps(&site)?;
        let steps = resolve::steps(&opts.steps, &recorded)
            .map_err(|e| Error::Invalid(format!("site `{site}`: {e}")))?;
        grid.push((site, steps));
    }
    let colour = match &opts.color_by {
        Some(spec) => Some(resolve::label(run, spec, opts.color_as)?),
        None => None,
    };
    let method = opts.method.as_str();
    Ok(Plan {
        method: opts.method,
        grid,
        colour,
        options: opts.clone(),
        identity: Identity {
            analysis: "reduce",
            key: format!("reduce:{method}"),
            options: serde_json::to_value(opts)?,
            seed: opts.seed,
        },
    })
}

pub fn run(run: &Run, plan: &Plan, ctx: &Ctx) -> Result<Output> {
    ctx.progress.set_length(plan.grid.len() as u64);
    match plan.method {
        Method::Pca => run_pca(run, plan, ctx),
        Method::Umap => run_umap(run, plan, ctx),
    }
}

fn run_pca(run: &Run, plan: &Plan, ctx: &Ctx) -> Result<Output> {
    let mut frames: [Vec<DataFrame>; 4] = Default::default();
    let mut figures = Vec::new();
    let mut samples = BTreeSet::new();
    for (site, steps) in &plan.grid {
        ctx.check()?;
        ctx.progress.set_message(site);
        let fit = fit_site(run, site, steps, plan.options.components)?;
        let k = fit.n_components();
        // Second pass: projections and the measured reconstruction error.
        let mut proj = Projection::new(k);
        let mut residual = vec![0.0f64; k + 1];
        run.scan_latents(site, Some(steps), BATCH_ROWS, &mut |rows| {
            ctx.check()?;
            let p = fit.project(&rows.x, rows.width)?;
            let mse = fit.reconstruction_mse(&rows.x, rows.width)?;
            let scale = (rows.len() * rows.width) as f64;
            residual
                .iter_mut()
                .zip(&mse)
                .for_each(|(r, m)| *r += m * scale);
            proj.push(rows, &p);
            Ok(())
        })?;
        samples.extend(proj.sample.iter().copied());
        let denom = (fit.n_samples as f64) * fit.width as f64;
        let measured: Vec<f64> = residual.iter().map(|r| r / denom).collect();
        frames[0].push(variance_frame(site, &fit, &measured)?);
        frames[1].push(summary_frame(site, steps, &fit)?);
        frames[2].push(components_frame(site, &fit)?);
        frames[3].push(proj.frame(site)?);
        let stem = plots::file_safe(site);
        let scree = plots::reduce::scree(
            site,
            fit.n_samples,
            &fit.explained_variance_ratio(),
            &fit.cumulative_ratio(),
        );
        figures.push((format!("pca-{stem}-scree"), scree.map_err(plot_error)?));
        if k >= 2 {
            let points = proj.points(0, 1);
            let svg = plots::reduce::scatter(
                &format!("PCA of {site}"),
                ("PC 1", "PC 2"),
                &points,
                &proj.keys,
                plan.colour.as_ref(),
                plan.options.seed,
            )
            .map_err(plot_error)?;
            figures.push((format!("pca-{stem}-scatter"), svg));
        }
        ctx.progress.inc(1);
    }
    let names = [
        "pca_variance",
        "pca_summary",
        "pca_components",
        "pca_projection",
    ];
    let mut tables = Vec::new();
    for (name, parts) in names.iter().zip(frames) {
        tables.push((name.to_string(), concat(parts)?));
    }
    Ok(Output {
        tables,
        plots: figures,
        samples_used: samples.len() as u64,
    })
}

fn fit_site(run: &Run, site: &str, steps: &[u16], components: usize) -> Result<PcaFit> {
    let mut acc: Option<PcaAccumulator> = None;
    run.scan_latents(site, Some(steps), BATCH_ROWS, &mut |rows| {
        if acc.is_none() {
            acc = Some(PcaAccumulator::new(rows.width)?);
        }
        if let Some(a) = acc.as_mut() {
            a.push(&rows.x, rows.width)?;
        }
        Ok(())
    })?;
    let acc =
        acc.ok_or_else(|| Error::Invalid(format!("site `{site}`: no rows at the selected steps")))?;
    let k = components.min(acc.width());
    acc.finish(k)
        .map_err(|e| Error::Invalid(format!("PCA of site `{site}`: {e}")))
}

/// Where a row came from: what a label joins on.
pub type RowKey = (u32, u16, Option<i32>);

/// Keys and coordinates of projected rows, collected across batches.
struct Projection {
    k: usize,
    sample: Vec<u32>,
    step: Vec<u16>,
    position: Vec<Option<i32>>,
    keys: Vec<RowKey>,
    coords: Vec<f32>,
}

impl Projection {
    fn new(k: usize) -> Self {
        Self {
            k,
            sample: Vec::new(),
            step: Vec::new(),
            position: Vec::new(),
            keys: Vec::new(),
            coords: Vec::new(),
        }
    }

    fn push(&mut self, rows: &Latents, coords: &[f32]) {
        self.sample.extend_from_slice(&rows.sample);
        self.step.extend_from_slice(&rows.step);
        self.position.extend_from_slice(&rows.position);
        self.keys
            .extend((0..rows.len()).map(|i| (rows.sample[i], rows.step[i], rows.position[i])));
        self.coords.extend_from_slice(coords);
    }

    fn column(&self, c: usize) -> Vec<f32> {
        self.coords
            .iter()
            .skip(c)
            .step_by(self.k)
            .copied()
            .collect()
    }

    fn points(&self, a: usize, b: usize) -> Vec<(f64, f64)> {
        self.coords
            .chunks_exact(self.k)
            .map(|r| (r[a] as f64, r[b] as f64))
            .collect()
    }

    fn frame(&self, site: &str) -> Result<DataFrame> {
        let mut cols = key_columns(site, &self.sample, &self.step, &self.position);
        for c in 0..self.k {
            cols.push(Column::new(format!("pc{}", c + 1).into(), self.column(c)));
        }
        Ok(DataFrame::new_infer_height(cols)?)
    }
}

fn key_columns(site: &str, sample: &[u32], step: &[u16], position: &[Option<i32>]) -> Vec<Column> {
    vec![
        Column::new("site".into(), vec![site; sample.len()]),
        Column::new("sample".into(), sample),
        Column::new("step".into(), step),
        Column::new("position".into(), position),
    ]
}

fn variance_frame(site: &str, fit: &PcaFit, measured: &[f64]) -> Result<DataFrame> {
    let d = fit.eigenvalues.len();
    let component: Vec<u32> = (1..=d as u32).collect();
    let closed: Vec<f64> = (1..=d)
        .map(|k| fit.reconstruction_mse_closed_form(k))
        .collect();
    let measured: Vec<Option<f64>> = (1..=d).map(|k| measured.get(k).copied()).collect();
    Ok(DataFrame::new_infer_height(vec![
        Column::new("site".into(), vec![site; d]),
        Column::new("component".into(), component),
        Column::new("eigenvalue".into(), fit.eigenvalues.clone()),
        Column::new("ratio".into(), fit.explained_variance_ratio()),
        Column::new("cumulative".into(), fit.cumulative_ratio()),
        Column::new("reconstruction_mse".into(), closed),
        Column::new("reconstruction_mse_measured".into(), measured),
    ])?)
}

fn summary_frame(site: &str, steps: &[u16], fit: &PcaFit) -> Result<DataFrame> {
    Ok(DataFrame::new_infer_height(vec![
        Column::new("site".into(), [site]),
        Column::new("steps".into(), [step_list(steps)]),
        Column::new("rows".into(), [fit.n_samples]),
        Column::new("width".into(), [fit.width as u32]),
        Column::new("total_variance".into(), [fit.total_variance]),
        Column::new("participation_ratio".into(), [fit.participation_ratio()]),
        Column::new("components_90".into(), [fit.components_for(0.90) as u32]),
        Column::new("components_95".into(), [fit.components_for(0.95) as u32]),
        Column::new("components_99".into(), [fit.components_for(0.99) as u32]),
    ])?)
}

/// `9`, `0, 5, 10` or `0 ... 49 (50 steps)`: which steps a fit pooled, for tables and
/// sentences.
pub fn step_list(steps: &[u16]) -> String {
    match steps {
        [] => String::new(),
        s if s.len() <= 6 => s.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
        s => format!("{} ... {} ({} steps)", s[0], s[s.len() - 1], s.len()),
    }
}

fn components_frame(site: &str, fit: &PcaFit) -> Result<DataFrame> {
    let k = fit.n_components();
    let loadings = Series::new("loadings".into(), fit.components.as_slice()).reshape_list(&[
        ReshapeDimension::new(k as i64),
        ReshapeDimension::new(fit.width as i64),
    ])?;
    Ok(DataFrame::new_infer_height(vec![
        Column::new("site".into(), vec![site; k]),
        Column::new("component".into(), (1..=k as u32).collect::<Vec<_>>()),
        loadings.into_column(),
    ])?)
}

fn run_umap(run: &Run, plan: &Plan, ctx: &Ctx) -> Result<Output> {
    let opts = &plan.options;
    let (mut embeddings, mut quality) = (Vec::new(), Vec::new());
    let mut figures = Vec::new();
    let mut samples = BTreeSet::new();
    for (site, steps) in &plan.grid {
        ctx.check()?;
        ctx.progress.set_message(site);
        let (rows, total_rows) = reservoir(run, site, Some(steps), opts.max_points, opts.seed)?;
        if rows.is_empty() {
            return Err(Error::Invalid(format!(
                "site `{site}`: no rows at the selected steps"
            )));
        }
        let params = UmapParams {
            max_points: opts.max_points,
            n_neighbors: opts.neighbours,
            seed: opts.seed,
            ..Default::default()
        };
        let fit = umap(&rows.x, rows.width, &params, &crate::progress::Hidden)
            .map_err(|e| Error::Invalid(format!("UMAP of site `{site}`: {e}")))?;
        let idx: Vec<usize> = fit.sample_indices.iter().map(|&i| i as usize).collect();
        let sample: Vec<u32> = idx.iter().map(|&i| rows.sample[i]).collect();
        samples.extend(sample.iter().copied());
        let step: Vec<u16> = idx.iter().map(|&i| rows.step[i]).collect();
        let position: Vec<Option<i32>> = idx.iter().map(|&i| rows.position[i]).collect();
        let u1: Vec<f32> = fit.embedding.iter().step_by(2).copied().collect();
        let u2: Vec<f32> = fit.embedding.iter().skip(1).step_by(2).copied().collect();
        let mut cols = key_columns(site, &sample, &step, &position);
        cols.push(Column::new("umap_1".into(), u1.clone()));
        cols.push(Column::new("umap_2".into(), u2.clone()));
        embeddings.push(DataFrame::new_infer_height(cols)?);

        // Quality on a further subsample of the embedded points (O(n^2 k)).
        let q_points = QUALITY_POINTS.min((QUALITY_BYTES / (8 * rows.width)).max(200));
        let q_idx = subsample(idx.len(), q_points, opts.seed ^ 0x51);
        let high: Vec<f32> = q_idx
            .iter()
            .flat_map(|&q| rows.row(idx[q as usize]).iter().copied())
            .collect();
        let low: Vec<f32> = q_idx
            .iter()
            .flat_map(|&q| {
                fit.embedding[q as usize * 2..q as usize * 2 + 2]
                    .iter()
                    .copied()
            })
            .collect();
        let ks: Vec<usize> = QUALITY_KS
            .into_iter()
            .filter(|&k| 2 * k < q_idx.len())
            .collect();
        let q = neighbourhood_quality(&high, rows.width, &low, 2, &ks)?;
        let n = q.len();
        quality.push(DataFrame::new_infer_height(vec![
            Column::new("site".into(), vec![site.as_str(); n]),
            Column::new("k".into(), q.iter().map(|v| v.k as u32).collect::<Vec<_>>()),
            Column::new(
                "trustworthiness".into(),
                q.iter().map(|v| v.trustworthiness).collect::<Vec<_>>(),
            ),
            Column::new(
                "continuity".into(),
                q.iter().map(|v| v.continuity).collect::<Vec<_>>(),
            ),
            Column::new("points".into(), vec![q_idx.len() as u32; n]),
            Column::new("embedded".into(), vec![idx.len() as u32; n]),
            Column::new("rows".into(), vec![total_rows; n]),
            Column::new("seed".into(), vec![opts.seed; n]),
            Column::new("neighbours".into(), vec![opts.neighbours as u32; n]),
        ])?);
        let points: Vec<(f64, f64)> = u1
            .iter()
            .zip(&u2)
            .map(|(&a, &b)| (a as f64, b as f64))
            .collect();
        let keys: Vec<RowKey> = (0..sample.len())
            .map(|i| (sample[i], step[i], position[i]))
            .collect();
        let svg = plots::reduce::scatter(
            &format!("UMAP of {site}"),
            ("UMAP 1", "UMAP 2"),
            &points,
            &keys,
            plan.colour.as_ref(),
            opts.seed,
        )
        .map_err(plot_error)?;
        figures.push((format!("umap-{}", plots::file_safe(site)), svg));
        ctx.progress.inc(1);
    }
    Ok(Output {
        tables: vec![
            ("umap".into(), concat(embeddings)?),
            ("umap_quality".into(), concat(quality)?),
        ],
        plots: figures,
        samples_used: samples.len() as u64,
    })
}

/// Random stream of the UMAP row sample, under the seed.
const STREAM_RESERVOIR: u64 = 0x5245_5345_5256;

/// A uniform sample of at most `max_points` rows of a site, streamed (reservoir sampling,
/// seeded), so memory is bounded by `max_points` whatever the site's size. Returns the
/// sampled rows in (sample, step, position) order and the number of rows seen.
fn reservoir(
    run: &Run,
    site: &str,
    steps: Option<&[u16]>,
    max_points: usize,
    seed: u64,
) -> Result<(Latents, u64)> {
    use rand::Rng;
    let mut rng = crate::rng::stream(seed, STREAM_RESERVOIR);
    let mut kept: Option<Latents> = None;
    let mut seen = 0u64;
    run.scan_latents(site, steps, BATCH_ROWS, &mut |batch| {
        let keep = kept.get_or_insert_with(|| Latents::new(batch.width));
        let w = batch.width;
        for i in 0..batch.len() {
            let slot = if keep.len() < max_points {
                None
            } else {
                let j = rng.gen_range(0..=seen);
                if j >= max_points as u64 {
                    seen += 1;
                    continue;
                }
                Some(j as usize)
            };
            seen += 1;
            let (sample, step, t, pos) = (
                batch.sample[i],
                batch.step[i],
                batch.t[i],
                batch.position[i],
            );
            match slot {
                None => keep.push(sample, step, t, pos, batch.row(i)),
                Some(j) => {
                    keep.sample[j] = sample;
                    keep.step[j] = step;
                    keep.t[j] = t;
                    keep.position[j] = pos;
                    keep.x[j * w..(j + 1) * w].copy_from_slice(batch.row(i));
                }
            }
        }
        Ok(())
    })?;
    let mut kept = kept.unwrap_or_default();
    kept.sort();
    Ok((kept, seen))
}

/// Per-site frames stacked into one table.
fn concat(frames: Vec<DataFrame>) -> Result<DataFrame> {
    let mut iter = frames.into_iter();
    let mut acc = iter
        .next()
        .ok_or_else(|| Error::Invalid("no sites were reduced".into()))?;
    for df in iter {
        acc.vstack_mut(&df)?;
    }
    acc.rechunk_mut();
    Ok(acc)
}

fn plot_error(e: plots::PlotError) -> Error {
    Error::Invalid(e.to_string())
}

/// The label value of each row, for colouring: a class index or a value (`None` where
/// the label has no row for it).
pub enum RowColours {
    Classes {
        names: Vec<String>,
        of: Vec<Option<usize>>,
    },
    Values(Vec<Option<f64>>),
}

/// Joins `label` to rows by (sample, step, position) as far as the label is keyed.
pub fn row_colours(label: &Label, keys: &[RowKey]) -> RowColours {
    let key = |&(s, st, p): &RowKey| label.key(s, st, p);
    match &label.values {
        LabelValues::Classes { names, by_key } => RowColours::Classes {
            names: names.clone(),
            of: keys
                .iter()
                .map(|k| by_key.get(&key(k)).map(|&c| c as usize))
                .collect(),
        },
        LabelValues::Continuous(by_key) => {
            RowColours::Values(keys.iter().map(|k| by_key.get(&key(k)).copied()).collect())
        }
    }
}

// ---------------------------------------------------------------- report

/// One row of `pca_summary`.
#[derive(Debug, Clone, PartialEq)]
pub struct PcaSummaryRow {
    pub site: String,
    pub steps: String,
    pub rows: u64,
    pub width: u32,
    pub participation_ratio: f64,
    pub components_90: u32,
    pub components_95: u32,
    pub components_99: u32,
}

pub fn pca_summary_rows(df: &DataFrame) -> Result<Vec<PcaSummaryRow>> {
    let text = |c: &str| -> Result<Vec<String>> {
        Ok(df
            .column(c)?
            .cast(&DataType::String)?
            .str()?
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect())
    };
    let int = |c: &str| -> Result<Vec<u64>> {
        Ok(df
            .column(c)?
            .cast(&DataType::UInt64)?
            .u64()?
            .iter()
            .map(|v| v.unwrap_or(0))
            .collect())
    };
    let (site, steps) = (text("site")?, text("steps")?);
    let (rows, width) = (int("rows")?, int("width")?);
    let (c90, c95, c99) = (
        int("components_90")?,
        int("components_95")?,
        int("components_99")?,
    );
    let pr: Vec<f64> = df
        .column("participation_ratio")?
        .cast(&DataType::Float64)?
        .f64()?
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect();
    Ok((0..df.height())
        .map(|i| PcaSummaryRow {
            site: site[i].clone(),
            steps: steps[i].clone(),
            rows: rows[i],
            width: width[i] as u32,
            participation_ratio: pr[i],
            components_90: c90[i] as u32,
            components_95: c95[i] as u32,
            components_99: c99[i] as u32,
        })
        .collect())
}

/// One row of `umap_quality`.
#[derive(Debug, Clone, PartialEq)]
pub struct UmapQualityRow {
    pub site: String,
    pub k: u32,
    pub trustworthiness: f64,
    pub continuity: f64,
    pub embedded: u32,
    pub rows: u64,
}

pub fn umap_quality_rows(df: &DataFrame) -> Result<Vec<UmapQualityRow>> {
    let f = |c: &str| -> Result<Vec<f64>> {
        Ok(df
            .column(c)?
            .cast(&DataType::Float64)?
            .f64()?
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect())
    };
    let site: Vec<String> = df
        .column("site")?
        .str()?
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect();
    let (k, t, c, e, r) = (
        f("k")?,
        f("trustworthiness")?,
        f("continuity")?,
        f("embedded")?,
        f("rows")?,
    );
    Ok((0..df.height())
        .map(|i| UmapQualityRow {
            site: site[i].clone(),
            k: k[i] as u32,
            trustworthiness: t[i],
            continuity: c[i],
            embedded: e[i] as u32,
            rows: r[i] as u64,
        })
        .collect())
}

/// The report's section: how many components each site needs, or how faithful each
/// UMAP embedding is, quoted from the tables.
pub fn report(run: &Run, record: &AnalysisRecord) -> Result<Section> {
    let method = record
        .options
        .get("method")
        .and_then(|m| m.as_str())
        .unwrap_or("pca");
    let mut section = if method == "umap" {
        umap_section(run)?
    } else {
        pca_section(run)?
    };
    section.plots = record.plots.clone();
    Ok(section)
}

fn pca_section(run: &Run) -> Result<Section> {
    let rows = pca_summary_rows(&run.table("pca_summary")?)?;
    let mut table = Table {
        caption: "PCA per site: components needed for 90 / 95 / 99% of the variance".into(),
        header: [
            "site",
            "steps",
            "rows x width",
            "90%",
            "95%",
            "99%",
            "participation ratio",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    let mut findings = Vec::new();
    for r in &rows {
        findings.push(pca_finding(r));
        table.rows.push(vec![
            r.site.clone(),
            r.steps.clone(),
            format!("{} x {}", r.rows, r.width),
            r.components_90.to_string(),
            r.components_95.to_string(),
            r.components_99.to_string(),
            format!("{:.2}", r.participation_ratio),
        ]);
    }
    Ok(Section {
        title: "PCA".into(),
        note: "Principal components of each site's rows at the chosen steps (one fit per \
               site, steps pooled). Ratios are shares of the total variance; the \
               participation ratio (Σλ)²/Σλ² is the effective number of dimensions."
            .into(),
        findings,
        tables: vec![table],
        plots: Vec::new(),
    })
}

/// "`unet.mid_block` at step 9: 3 components explain 90% of the variance (...)".
pub fn pca_finding(r: &PcaSummaryRow) -> String {
    let at = if r.steps.contains(',') || r.steps.contains("...") {
        format!("at steps {}", r.steps)
    } else {
        format!("at step {}", r.steps)
    };
    let plural = |n: u32| if n == 1 { "component" } else { "components" };
    format!(
        "`{}` {at}: {} {} explain 90% of the variance (participation ratio {:.2}); 95% needs \
         {}, 99% needs {} of {} dimensions ({} rows).",
        r.site,
        r.components_90,
        plural(r.components_90),
        r.participation_ratio,
        r.components_95,
        r.components_99,
        r.width,
        r.rows
    )
}

fn umap_section(run: &Run) -> Result<Section> {
    let rows = umap_quality_rows(&run.table("umap_quality")?)?;
    let mut table = Table {
        caption: "UMAP: neighbourhoods kept by each embedding".into(),
        header: [
            "site",
            "k",
            "trustworthiness",
            "continuity",
            "embedded / rows",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    let mut findings = Vec::new();
    let sites: BTreeSet<&str> = rows.iter().map(|r| r.site.as_str()).collect();
    for site in sites {
        let mine: Vec<&UmapQualityRow> = rows.iter().filter(|r| r.site == site).collect();
        if let Some(r) = mine.iter().max_by_key(|r| r.k) {
            findings.push(format!(
                "UMAP of `{site}` ({} of {} rows embedded): trustworthiness@{} {:.2}, \
                 continuity@{} {:.2}.",
                r.embedded, r.rows, r.k, r.trustworthiness, r.k, r.continuity
            ));
        }
        for r in mine {
            table.rows.push(vec![
                r.site.clone(),
                r.k.to_string(),
                format!("{:.3}", r.trustworthiness),
                format!("{:.3}", r.continuity),
                format!("{} / {}", r.embedded, r.rows),
            ]);
        }
    }
    Ok(Section {
        title: "UMAP".into(),
        note: "2-D UMAP embeddings of a seeded subsample of each site's rows. \
               Trustworthiness (no false neighbours in 2-D) and continuity (no lost \
               neighbours) are 1 for a perfect embedding, about 0.5 for a random one."
            .into(),
        findings,
        tables: vec![table],
        plots: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Hidden;
    use crate::store::manifest::{Manifest, ModelInfo};
    use crate::store::STATUS_COMPLETE;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    /// A finished run with one 6-wide site: 3 classes of 40 samples x 2 steps around
    /// distinct centres, and a samples.parquet with `class` (text), `size` (float) and
    /// `digit` (integer, 20 distinct values).
    fn make_run(dir: &std::path::Path) -> Run {
        let manifest = Manifest::new(
            "test",
            serde_json::json!({"ddim_steps": 2}),
            0,
            ModelInfo {
                id: "test".into(),
                weights: vec![],
            },
        );
        let (mut run, _) = Run::create_or_resume(dir, manifest).unwrap();
        let width = 6;
        let noise = crate::rng::gaussian(1, 0, 120 * 2 * width);
        let mut rows = Latents::new(width);
        for s in 0..120u32 {
            for step in 0..2u16 {
                let base = (s as usize * 2 + step as usize) * width;
                let x: Vec<f32> = (0..width)
                    .map(|j| noise[base + j] + if j == (s % 3) as usize { 8.0 } else { 0.0 })
                    .collect();
                rows.push(s, step, None, None, &x);
            }
        }
        run.write_latents_part("latent", 0, &rows).unwrap();
        let classes: Vec<String> = (0..120)
            .map(|s| ["circle", "square", "star"][s % 3].to_string())
            .collect();
        let size: Vec<f64> = (0..120).map(|s| s as f64 / 10.0).collect();
        let digit: Vec<i64> = (0..120).map(|s| s % 20).collect();
        let mut df = DataFrame::new_infer_height(vec![
            Column::new("sample".into(), (0..120u32).collect::<Vec<_>>()),
            Column::new("class".into(), classes),
            Column::new("size".into(), size),
            Column::new("digit".into(), digit),
        ])
        .unwrap();
        run.write_samples_part(0, &mut df).unwrap();
        run.finish_samples(1).unwrap();
        run.manifest_mut().status = STATUS_COMPLETE.into();
        run.write_manifest().unwrap();
        run
    }

    fn options(method: Method, color_by: Option<&str>) -> Options {
        Options {
            method,
            components: 4,
            color_by: color_by.map(str::to_string),
            max_points: 1000,
            seed: 3,
            ..Options::default()
        }
    }

    /// plan -> run -> write, as the command does.
    fn reduce(run: &mut Run, opts: &Options) -> Result<()> {
        let stop = AtomicBool::new(false);
        let plan = plan(run, opts)?;
        let out = super::run(run, &plan, &Ctx::new(&Hidden, &stop))?;
        super::super::write(run, &plan.identity, out, Instant::now())?;
        Ok(())
    }

    fn svg(run: &Run, name: &str) -> String {
        std::fs::read_to_string(run.root().join("plots").join(format!("{name}.svg"))).unwrap()
    }

    #[test]
    fn pca_writes_tables_that_agree_with_the_fit() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = make_run(dir.path());
        reduce(&mut run, &options(Method::Pca, Some("class"))).unwrap();
        let var = run.table("pca_variance").unwrap();
        assert_eq!(var.height(), 6);
        let cum = var.column("cumulative").unwrap().f64().unwrap();
        assert!((cum.get(5).unwrap() - 1.0).abs() < 1e-9);
        // Three centres on three axes: two components carry the between-class variance.
        assert!(cum.get(1).unwrap() > 0.8, "{:?}", cum);
        let closed = var.column("reconstruction_mse").unwrap().f64().unwrap();
        let measured = var
            .column("reconstruction_mse_measured")
            .unwrap()
            .f64()
            .unwrap();
        for k in 0..4 {
            let (c, m) = (closed.get(k).unwrap(), measured.get(k).unwrap());
            assert!((c - m).abs() < 1e-4 * (1.0 + c), "k={}: {c} vs {m}", k + 1);
        }
        assert!(measured.get(5).is_none());
        let proj = run.table("pca_projection").unwrap();
        assert_eq!(proj.height(), 240);
        assert!(proj.column("pc4").is_ok());
        assert_eq!(run.table("pca_components").unwrap().height(), 4);
        let scatter = svg(&run, "pca-latent-scatter");
        assert!(
            scatter.contains("class = star") && scatter.contains("PC 1"),
            "legend and axis labels"
        );
        assert!(dir.path().join("plots/pca-latent-scree.svg").is_file());
        let entry = run.manifest().analysis("reduce:pca").unwrap();
        assert_eq!(entry.samples_used, 120);
        assert_eq!(entry.plots, ["pca-latent-scree", "pca-latent-scatter"]);
    }

    #[test]
    fn umap_writes_embedding_and_quality() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = make_run(dir.path());
        reduce(&mut run, &options(Method::Umap, Some("size"))).unwrap();
        let emb = run.table("umap").unwrap();
        assert_eq!(emb.height(), 240);
        let q = run.table("umap_quality").unwrap();
        let t = q.column("trustworthiness").unwrap().f64().unwrap();
        assert!(t.get(0).unwrap() > 0.8, "{q:?}");
        // A continuous label colours by value, with a colour bar naming it (it was a
        // legend of the ramp's min and max).
        let plot = svg(&run, "umap-latent");
        assert!(
            plot.contains("\nsize\n") && !plot.contains("size = "),
            "colour bar"
        );
    }

    #[test]
    fn umap_subsample_is_bounded_seeded_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = make_run(dir.path());
        let (a, seen) = reservoir(&run, "latent", None, 100, 5).unwrap();
        let (b, _) = reservoir(&run, "latent", None, 100, 5).unwrap();
        assert_eq!((a.len(), seen), (100, 240));
        assert_eq!(a.x, b.x);
        assert_ne!(
            a.sample,
            reservoir(&run, "latent", None, 100, 6).unwrap().0.sample
        );
        // Only the chosen steps are drawn from.
        let (c, seen) = reservoir(&run, "latent", Some(&[1]), 1000, 5).unwrap();
        assert_eq!((c.len(), seen), (120, 120));
        assert!(c.step.iter().all(|&s| s == 1));
        let mut opts = options(Method::Umap, None);
        opts.max_points = 100;
        reduce(&mut run, &opts).unwrap();
        assert_eq!(run.table("umap").unwrap().height(), 100);
        let q = run.table("umap_quality").unwrap();
        assert_eq!(q.column("rows").unwrap().u64().unwrap().get(0), Some(240));
        assert_eq!(
            q.column("embedded").unwrap().u32().unwrap().get(0),
            Some(100)
        );
        assert_eq!(
            q.column("neighbours").unwrap().u32().unwrap().get(0),
            Some(15)
        );
    }

    #[test]
    fn last_means_the_last_recorded_step() {
        let dir = tempfile::tempdir().unwrap();
        let run = make_run(dir.path());
        let mut opts = options(Method::Pca, None);
        opts.steps = "last".into();
        assert_eq!(
            plan(&run, &opts).unwrap().grid,
            [("latent".into(), vec![1])]
        );
        // An unrecorded step is an error naming the recorded ones.
        opts.steps = "5".into();
        let err = plan(&run, &opts).unwrap_err().to_string();
        assert!(
            err.contains("latent") && err.contains("recorded steps: 0, 1"),
            "{err}"
        );
    }

    #[test]
    fn an_integer_label_is_classes_as_in_probe() {
        // 20 distinct integers: once a colour ramp (more than 12 values), now classes as
        // everywhere else, unless asked otherwise.
        let dir = tempfile::tempdir().unwrap();
        let run = make_run(dir.path());
        let plan_of = |color_as| {
            let mut o = options(Method::Pca, Some("digit"));
            o.color_as = color_as;
            plan(&run, &o).unwrap().colour.unwrap().kind()
        };
        assert_eq!(plan_of(None), LabelKind::Classes);
        assert_eq!(plan_of(Some(LabelKind::Continuous)), LabelKind::Continuous);
    }

    #[test]
    fn bad_arguments_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = make_run(dir.path());
        let mut o = options(Method::Pca, Some("colour"));
        let err = reduce(&mut run, &o).unwrap_err().to_string();
        assert!(err.contains("colour") && err.contains("class"), "{err}");
        o.color_by = None;
        o.sites = vec!["unet.mid_block".into()];
        let err = reduce(&mut run, &o).unwrap_err().to_string();
        assert!(
            err.contains("unet.mid_block") && err.contains("latent"),
            "{err}"
        );
        let mut u = options(Method::Umap, None);
        u.max_points = 10;
        let err = reduce(&mut run, &u).unwrap_err().to_string();
        assert!(err.contains("max_points = 10"), "{err}");
        assert!(run.tables().unwrap().is_empty(), "nothing was written");
    }

    #[test]
    fn pca_of_a_wide_image_site_over_few_samples() {
        // 24 samples of a 3 x 32 x 32 image with a constant background: more columns than
        // rows, rank-deficient (it failed to converge before the Gram route).
        let dir = tempfile::tempdir().unwrap();
        let mut run = make_run(dir.path());
        let width = 3072;
        let mut rows = Latents::new(width);
        let g = crate::rng::gaussian(4, 0, 24 * width);
        for s in 0..24u32 {
            let x: Vec<f32> = (0..width)
                .map(|j| {
                    if j % 4 == 0 {
                        -1.0
                    } else {
                        g[s as usize * width + j] * 0.2 + (s % 3) as f32 * 0.5
                    }
                })
                .collect();
            rows.push(s, 0, None, None, &x);
        }
        run.write_latents_part("image", 0, &rows).unwrap();
        let mut o = options(Method::Pca, Some("class"));
        o.sites = vec!["image".into()];
        reduce(&mut run, &o).unwrap();
        let summary = pca_summary_rows(&run.table("pca_summary").unwrap()).unwrap();
        assert_eq!((summary[0].rows, summary[0].width), (24, 3072));
        assert!(summary[0].components_99 <= 23, "{summary:?}");
    }

    #[test]
    fn report_quotes_the_tables() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = make_run(dir.path());
        let mut o = options(Method::Pca, None);
        o.steps = "last".into();
        reduce(&mut run, &o).unwrap();
        reduce(&mut run, &options(Method::Umap, None)).unwrap();
        let pca = run.manifest().analysis("reduce:pca").unwrap().clone();
        let section = report(&run, &pca).unwrap();
        let row = &pca_summary_rows(&run.table("pca_summary").unwrap()).unwrap()[0];
        let want = format!(
            "`latent` at step 1: {} components explain 90% of the variance (participation \
             ratio {:.2})",
            row.components_90, row.participation_ratio
        );
        assert!(
            section.findings[0].starts_with(&want),
            "{:?}",
            section.findings
        );
        assert_eq!(section.plots, ["pca-latent-scree", "pca-latent-scatter"]);
        let umap = run.manifest().analysis("reduce:umap").unwrap().clone();
        let section = report(&run, &umap).unwrap();
        let q = umap_quality_rows(&run.table("umap_quality").unwrap()).unwrap();
        let t15 = q.iter().find(|r| r.k == 15).unwrap().trustworthiness;
        assert!(
            section.findings[0].contains(&format!("trustworthiness@15 {t15:.2}")),
            "{:?}",
            section.findings
        );
    }
}
