//! `latentlens reduce`: PCA or UMAP of recorded sites, written back into the run folder
//! as tables and SVG plots.
//!
//! Tables (one row per site and item; rerunning replaces them):
//! - `pca_variance`: site, component, eigenvalue, ratio (of the total variance), cumulative,
//!   reconstruction_mse (closed form, keeping the first `component` components),
//!   reconstruction_mse_measured (the same measured on the rows; null past --components).
//! - `pca_summary`: site, rows, width, total_variance, participation_ratio,
//!   components_90 / _95 / _99.
//! - `pca_components`: site, component, loadings (list of f32, the site's width).
//! - `pca_projection`: site, sample, step, position, pc1..pcN.
//! - `umap`: site, sample, step, position, umap_1, umap_2 (the embedded subsample).
//! - `umap_quality`: site, k, trustworthiness, continuity, points (scored), embedded,
//!   rows (of the site), seed.
//!
//! Plots: `pca-<site>-scree.svg`, `pca-<site>-scatter.svg`, `umap-<site>.svg`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use polars::prelude::*;

use super::common;
use super::plot::file_safe;
use crate::analysis::knn::subsample;
use crate::analysis::pca::{PcaAccumulator, PcaFit};
use crate::analysis::quality::neighbourhood_quality;
use crate::analysis::umap::{umap, UmapParams};
use crate::store::Run;

/// Rows per batch when streaming a site through PCA.
const BATCH_ROWS: usize = 65_536;
/// Scatter plots draw at most this many points (seeded subsample, said in the title).
const PLOT_POINTS: usize = 5_000;
/// Trustworthiness/continuity are O(n^2 k): computed on at most this many embedded points,
/// and on fewer for wide sites so their f64 copy stays within QUALITY_BYTES.
const QUALITY_POINTS: usize = 5_000;
const QUALITY_BYTES: usize = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    Pca,
    Umap,
}

#[derive(Debug, Args)]
pub struct ReduceArgs {
    /// Run folder written by `latentlens record`.
    #[arg(long)]
    pub run: PathBuf,
    /// Sites to reduce: names or patterns (`unet.*`), comma-separated or repeated.
    #[arg(long, default_value = "*")]
    pub sites: Vec<String>,
    /// Steps to keep: `all`, `last`, `0,10,49`, `0..50:5`.
    #[arg(long, default_value = "all")]
    pub steps: String,
    #[arg(long, value_enum, default_value_t = Method::Pca)]
    pub method: Method,
    /// PCA components to keep (capped at the site's width).
    #[arg(long, default_value_t = 10)]
    pub components: usize,
    /// A samples.parquet column to colour scatter plots by (categorical: legend;
    /// numeric with many values: colour ramp).
    #[arg(long)]
    pub color_by: Option<String>,
    /// UMAP embeds at most this many rows (seeded uniform sample, streamed; the size is
    /// reported in umap_quality).
    #[arg(long, default_value_t = 20_000)]
    pub max_points: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: &ReduceArgs) -> anyhow::Result<()> {
    let run = Run::open(&args.run)?;
    let sites = common::recorded_sites(&run, &args.sites)?;
    let steps = resolve_steps(&run, &args.steps)?;
    anyhow::ensure!(args.components >= 1, "--components must be at least 1");
    let colours = match &args.color_by {
        Some(col) => Some(ColourBy::from_samples(&run.samples()?, col)?),
        None => None,
    };
    match args.method {
        Method::Pca => run_pca(&run, &sites, steps.as_deref(), args, colours.as_ref()),
        Method::Umap => run_umap(&run, &sites, steps.as_deref(), args, colours.as_ref()),
    }
}

/// `last` is the last step the run kept: the largest of its recorded `steps` when it kept a
/// subset, else the last the generation ran (`steps_run`, as img2img runs only part of the
/// schedule, else `ddim_steps`).
fn resolve_steps(run: &Run, spec: &str) -> anyhow::Result<Option<Vec<u16>>> {
    let config = &run.manifest().config;
    let kept = config
        .get("steps")
        .and_then(|v| v.as_array())
        .and_then(|steps| steps.iter().filter_map(|s| s.as_u64()).max())
        .map(|last| last + 1);
    let total = kept
        .or_else(|| config.get("steps_run").and_then(|v| v.as_u64()))
        .or_else(|| config.get("ddim_steps").and_then(|v| v.as_u64()))
        .map_or(u16::MAX, |v| v.min(u16::MAX as u64) as u16);
    Ok(crate::steps::parse_steps(spec, 0, total)?)
}

fn run_pca(
    run: &Run,
    sites: &[String],
    steps: Option<&[u16]>,
    args: &ReduceArgs,
    colours: Option<&ColourBy>,
) -> anyhow::Result<()> {
    let mut variance = Frames::default();
    let mut summary = Frames::default();
    let mut components = Frames::default();
    let mut projection = Frames::default();
    for site in sites {
        let fit = fit_site(run, site, steps, args.components)?;
        let k = fit.n_components();
        // Second pass: projections and the measured reconstruction error.
        let mut proj = Projection::new(k);
        let mut residual = vec![0.0f64; k + 1];
        run.scan_latents(site, steps, BATCH_ROWS, &mut |rows| {
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
        let denom = (fit.n_samples as f64) * fit.width as f64;
        let measured: Vec<f64> = residual.iter().map(|r| r / denom).collect();
        variance.push(variance_frame(site, &fit, &measured)?);
        summary.push(summary_frame(site, &fit)?);
        components.push(components_frame(site, &fit)?);
        projection.push(proj.frame(site)?);
        run.write_plot(
            &format!("pca-{}-scree", file_safe(site)),
            &scree_svg(site, &fit)?,
        )?;
        if k >= 2 {
            let (x, y) = (proj.column(0), proj.column(1));
            let svg = scatter_svg(
                &format!("PCA of {site}"),
                ("PC 1", "PC 2"),
                &x,
                &y,
                &proj.sample,
                colours,
                args.seed,
            )?;
            run.write_plot(&format!("pca-{}-scatter", file_safe(site)), &svg)?;
        }
        eprintln!(
            "{site}: {} rows x {}; {} components keep {:.1}% of the variance; 90/95/99% need {}/{}/{}; participation ratio {:.1}",
            fit.n_samples,
            fit.width,
            k,
            100.0 * fit.cumulative_ratio()[k - 1],
            fit.components_for(0.90),
            fit.components_for(0.95),
            fit.components_for(0.99),
            fit.participation_ratio()
        );
    }
    for (name, frames) in [
        ("pca_variance", variance),
        ("pca_summary", summary),
        ("pca_components", components),
        ("pca_projection", projection),
    ] {
        let path = run.write_table(name, &mut frames.concat()?)?;
        crate::outln!("{}", path.display());
    }
    Ok(())
}

fn fit_site(
    run: &Run,
    site: &str,
    steps: Option<&[u16]>,
    components: usize,
) -> anyhow::Result<PcaFit> {
    let mut acc: Option<PcaAccumulator> = None;
    run.scan_latents(site, steps, BATCH_ROWS, &mut |rows| {
        if acc.is_none() {
            acc = Some(PcaAccumulator::new(rows.width)?);
        }
        if let Some(a) = acc.as_mut() {
            a.push(&rows.x, rows.width)?;
        }
        Ok(())
    })?;
    let acc = acc.with_context(|| format!("site {site}: no rows for the selected steps"))?;
    let k = components.min(acc.width());
    acc.finish(k).with_context(|| format!("PCA of site {site}"))
}

/// Keys and coordinates of projected rows, collected across batches.
struct Projection {
    k: usize,
    sample: Vec<u32>,
    step: Vec<u16>,
    position: Vec<Option<i32>>,
    coords: Vec<f32>,
}

impl Projection {
    fn new(k: usize) -> Self {
        Self {
            k,
            sample: Vec::new(),
            step: Vec::new(),
            position: Vec::new(),
            coords: Vec::new(),
        }
    }

    fn push(&mut self, rows: &crate::store::Latents, coords: &[f32]) {
        self.sample.extend_from_slice(&rows.sample);
        self.step.extend_from_slice(&rows.step);
        self.position.extend_from_slice(&rows.position);
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

    fn frame(&self, site: &str) -> anyhow::Result<DataFrame> {
        let n = self.sample.len();
        let mut cols = key_columns(site, &self.sample, &self.step, &self.position);
        for c in 0..self.k {
            cols.push(Column::new(format!("pc{}", c + 1).into(), self.column(c)));
        }
        debug_assert!(cols.iter().all(|c| c.len() == n));
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

fn variance_frame(site: &str, fit: &PcaFit, measured: &[f64]) -> anyhow::Result<DataFrame> {
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

fn summary_frame(site: &str, fit: &PcaFit) -> anyhow::Result<DataFrame> {
    Ok(DataFrame::new_infer_height(vec![
        Column::new("site".into(), [site]),
        Column::new("rows".into(), [fit.n_samples]),
        Column::new("width".into(), [fit.width as u32]),
        Column::new("total_variance".into(), [fit.total_variance]),
        Column::new("participation_ratio".into(), [fit.participation_ratio()]),
        Column::new("components_90".into(), [fit.components_for(0.90) as u32]),
        Column::new("components_95".into(), [fit.components_for(0.95) as u32]),
        Column::new("components_99".into(), [fit.components_for(0.99) as u32]),
    ])?)
}

fn components_frame(site: &str, fit: &PcaFit) -> anyhow::Result<DataFrame> {
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

fn run_umap(
    run: &Run,
    sites: &[String],
    steps: Option<&[u16]>,
    args: &ReduceArgs,
    colours: Option<&ColourBy>,
) -> anyhow::Result<()> {
    let mut tables = Frames::default();
    let mut quality = Frames::default();
    for site in sites {
        let (rows, total_rows) = reservoir(run, site, steps, args.max_points, args.seed)?;
        anyhow::ensure!(
            !rows.is_empty(),
            "site {site}: no rows for the selected steps"
        );
        let params = UmapParams {
            max_points: args.max_points,
            seed: args.seed,
            ..Default::default()
        };
        let bar = common::bar(0, "umap");
        let fit = umap(&rows.x, rows.width, &params, &bar)
            .with_context(|| format!("UMAP of site {site}"))?;
        bar.finish_and_clear();
        let idx: Vec<usize> = fit.sample_indices.iter().map(|&i| i as usize).collect();
        let sample: Vec<u32> = idx.iter().map(|&i| rows.sample[i]).collect();
        let step: Vec<u16> = idx.iter().map(|&i| rows.step[i]).collect();
        let position: Vec<Option<i32>> = idx.iter().map(|&i| rows.position[i]).collect();
        let u1: Vec<f32> = fit.embedding.iter().step_by(2).copied().collect();
        let u2: Vec<f32> = fit.embedding.iter().skip(1).step_by(2).copied().collect();
        let mut cols = key_columns(site, &sample, &step, &position);
        cols.push(Column::new("umap_1".into(), u1.clone()));
        cols.push(Column::new("umap_2".into(), u2.clone()));
        tables.push(DataFrame::new_infer_height(cols)?);

        // Quality on a further subsample of the embedded points (O(n^2 k)).
        let q_points = QUALITY_POINTS.min((QUALITY_BYTES / (8 * rows.width)).max(200));
        let q_idx = subsample(idx.len(), q_points, args.seed ^ 0x51);
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
        let ks: Vec<usize> = [5usize, 15]
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
            Column::new("seed".into(), vec![args.seed; n]),
        ])?);
        let svg = scatter_svg(
            &format!("UMAP of {site}"),
            ("UMAP 1", "UMAP 2"),
            &u1,
            &u2,
            &sample,
            colours,
            args.seed,
        )?;
        run.write_plot(&format!("umap-{}", file_safe(site)), &svg)?;
        let t15 = q
            .iter()
            .find(|v| v.k == 15)
            .map_or(f64::NAN, |v| v.trustworthiness);
        eprintln!(
            "{site}: embedded {} of {} rows ({:?} init, {} graph components); trustworthiness@15 {:.3}",
            idx.len(),
            total_rows,
            fit.init,
            fit.graph_components,
            t15
        );
    }
    for (name, frames) in [("umap", tables), ("umap_quality", quality)] {
        let path = run.write_table(name, &mut frames.concat()?)?;
        crate::outln!("{}", path.display());
    }
    Ok(())
}

/// Random stream of the UMAP row sample, under --seed.
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
) -> anyhow::Result<(crate::store::Latents, u64)> {
    use rand::Rng;
    let mut rng = crate::rng::stream(seed, STREAM_RESERVOIR);
    let mut kept: Option<crate::store::Latents> = None;
    let mut seen = 0u64;
    run.scan_latents(site, steps, BATCH_ROWS, &mut |batch| {
        let keep = kept.get_or_insert_with(|| crate::store::Latents::new(batch.width));
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
#[derive(Default)]
struct Frames(Vec<DataFrame>);

impl Frames {
    fn push(&mut self, df: DataFrame) {
        self.0.push(df);
    }

    fn concat(self) -> anyhow::Result<DataFrame> {
        let mut iter = self.0.into_iter();
        let mut acc = iter.next().context("no sites were reduced")?;
        for df in iter {
            acc.vstack_mut(&df)?;
        }
        acc.rechunk_mut();
        Ok(acc)
    }
}

/// Colours for scatter points from one samples.parquet column.
pub enum ColourBy {
    Categorical {
        column: String,
        by_sample: HashMap<u32, usize>,
        levels: Vec<String>,
    },
    Continuous {
        column: String,
        by_sample: HashMap<u32, f64>,
        min: f64,
        max: f64,
    },
}

/// Integer columns with at most this many distinct values are drawn as categories.
const MAX_INTEGER_LEVELS: usize = 12;

impl ColourBy {
    pub fn from_samples(samples: &DataFrame, column: &str) -> anyhow::Result<Self> {
        let names: Vec<String> = samples
            .get_column_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let col = samples.column(column).map_err(|_| {
            anyhow::anyhow!(
                "--color-by {column}: samples.parquet has no such column; columns: {}",
                names.join(", ")
            )
        })?;
        let ids: Vec<Option<u32>> = samples
            .column("sample")
            .map_err(|_| anyhow::anyhow!("samples.parquet has no `sample` column"))?
            .cast(&DataType::UInt32)?
            .u32()?
            .iter()
            .collect();
        let dtype = col.dtype().clone();
        let n_unique = col.n_unique()?;
        let categorical = matches!(dtype, DataType::String | DataType::Boolean)
            || (dtype.is_integer() && n_unique <= MAX_INTEGER_LEVELS);
        if categorical {
            let text = col.cast(&DataType::String)?;
            let text: Vec<String> = text
                .str()?
                .iter()
                .map(|v| v.unwrap_or("null").to_string())
                .collect();
            let mut levels: Vec<String> = text.clone();
            levels.sort_by(|a, b| {
                natural(a)
                    .partial_cmp(&natural(b))
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(a.cmp(b))
            });
            levels.dedup();
            let by_sample = ids
                .iter()
                .zip(&text)
                .filter_map(|(id, t)| Some((((*id)?), levels.iter().position(|l| l == t)?)))
                .collect();
            return Ok(ColourBy::Categorical {
                column: column.to_string(),
                by_sample,
                levels,
            });
        }
        anyhow::ensure!(
            dtype.is_primitive_numeric(),
            "--color-by {column}: column type {dtype} is neither numeric nor text"
        );
        let values: Vec<Option<f64>> = col.cast(&DataType::Float64)?.f64()?.iter().collect();
        let by_sample: HashMap<u32, f64> = ids
            .iter()
            .zip(&values)
            .filter_map(|(id, v)| Some(((*id)?, (*v)?)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        let min = by_sample.values().copied().fold(f64::INFINITY, f64::min);
        let max = by_sample
            .values()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        anyhow::ensure!(min.is_finite(), "--color-by {column}: no finite values");
        Ok(ColourBy::Continuous {
            column: column.to_string(),
            by_sample,
            min,
            max,
        })
    }
}

/// Numeric labels sort as numbers ("2" before "10").
fn natural(s: &str) -> f64 {
    s.parse::<f64>().unwrap_or(f64::INFINITY)
}

mod svg {
    //! Plot helpers: plotters' SVG backend with readable sizes.
    use plotters::prelude::*;

    pub const SIZE: (u32, u32) = (900, 700);
    pub const TITLE: u32 = 30;
    pub const LABEL: u32 = 20;
    pub const TICK: u32 = 16;

    /// Tableau 10.
    pub const CATEGORICAL: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];

    /// Viridis at 5 stops, linearly interpolated; `t` in [0, 1].
    pub fn ramp(t: f64) -> RGBColor {
        crate::cli::plot::viridis(t)
    }

    /// The data's range with 5% padding (plotters pins out-of-range points to the border).
    pub fn padded(v: &[f32]) -> std::ops::Range<f64> {
        let lo = v.iter().copied().fold(f32::INFINITY, f32::min) as f64;
        let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        if !lo.is_finite() || !hi.is_finite() {
            return 0.0..1.0;
        }
        let pad = ((hi - lo) * 0.05).max(1e-6);
        (lo - pad)..(hi + pad)
    }
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot failed: {e}")
}

/// Scree plot: each component's share of the total variance and the cumulative curve.
pub fn scree_svg(site: &str, fit: &PcaFit) -> anyhow::Result<String> {
    use plotters::prelude::*;
    let shown = fit.eigenvalues.len().min(50);
    let ratio = fit.explained_variance_ratio();
    let cumulative = fit.cumulative_ratio();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, svg::SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("PCA scree of {site} ({} rows)", fit.n_samples),
                ("sans-serif", svg::TITLE),
            )
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(0.5f64..shown as f64 + 0.5, 0.0f64..1.05)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("component")
            .y_desc("fraction of total variance")
            .axis_desc_style(("sans-serif", svg::LABEL))
            .label_style(("sans-serif", svg::TICK))
            .draw()
            .map_err(plot_err)?;
        let blue = svg::CATEGORICAL[0];
        let orange = svg::CATEGORICAL[1];
        chart
            .draw_series(LineSeries::new(
                (0..shown).map(|i| ((i + 1) as f64, ratio[i])),
                blue.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label("per component")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(3))
            });
        chart
            .draw_series(
                (0..shown).map(|i| Circle::new(((i + 1) as f64, ratio[i]), 3, blue.filled())),
            )
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                (0..shown).map(|i| ((i + 1) as f64, cumulative[i])),
                orange.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label("cumulative")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], orange.stroke_width(3))
            });
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", svg::LABEL))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(out)
}

/// Scatter of (x, y) per row, coloured by the row's sample label when given.
pub fn scatter_svg(
    title: &str,
    axes: (&str, &str),
    x: &[f32],
    y: &[f32],
    sample: &[u32],
    colours: Option<&ColourBy>,
    seed: u64,
) -> anyhow::Result<String> {
    use plotters::prelude::*;
    let shown = subsample(x.len(), PLOT_POINTS, seed ^ 0x9107);
    let caption = if shown.len() < x.len() {
        format!("{title} ({} of {} points)", shown.len(), x.len())
    } else {
        format!("{title} ({} points)", x.len())
    };
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, svg::SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", svg::TITLE))
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(svg::padded(x), svg::padded(y))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(axes.0)
            .y_desc(axes.1)
            .axis_desc_style(("sans-serif", svg::LABEL))
            .label_style(("sans-serif", svg::TICK))
            .draw()
            .map_err(plot_err)?;
        let point =
            |i: usize, c: RGBColor| Circle::new((x[i] as f64, y[i] as f64), 3, c.mix(0.8).filled());
        let idx: Vec<usize> = shown.iter().map(|&i| i as usize).collect();
        match colours {
            None => {
                chart
                    .draw_series(idx.iter().map(|&i| point(i, svg::CATEGORICAL[0])))
                    .map_err(plot_err)?;
            }
            Some(ColourBy::Categorical {
                column,
                by_sample,
                levels,
            }) => {
                for (l, level) in levels.iter().enumerate() {
                    let colour = svg::CATEGORICAL[l % svg::CATEGORICAL.len()];
                    let members = idx
                        .iter()
                        .copied()
                        .filter(|&i| by_sample.get(&sample[i]) == Some(&l));
                    chart
                        .draw_series(members.map(|i| point(i, colour)))
                        .map_err(plot_err)?
                        .label(format!("{column} = {level}"))
                        .legend(move |(px, py)| Circle::new((px + 8, py), 5, colour.filled()));
                }
                draw_legend(&mut chart)?;
            }
            Some(ColourBy::Continuous {
                column,
                by_sample,
                min,
                max,
            }) => {
                let span = if max > min { max - min } else { 1.0 };
                let colour_of = |i: usize| {
                    by_sample
                        .get(&sample[i])
                        .map_or(RGBColor(200, 200, 200), |v| svg::ramp((v - min) / span))
                };
                chart
                    .draw_series(idx.iter().map(|&i| point(i, colour_of(i))))
                    .map_err(plot_err)?;
                // The ramp's ends and middle as legend entries: labelled min and max.
                for (t, label) in [
                    (1.0, format!("{column} = {max:.3} (max)")),
                    (0.5, format!("{column} = {:.3}", min + span / 2.0)),
                    (0.0, format!("{column} = {min:.3} (min)")),
                ] {
                    let colour = svg::ramp(t);
                    chart
                        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                        .map_err(plot_err)?
                        .label(label)
                        .legend(move |(px, py)| {
                            Rectangle::new([(px, py - 6), (px + 16, py + 6)], colour.filled())
                        });
                }
                draw_legend(&mut chart)?;
            }
        }
        root.present().map_err(plot_err)?;
    }
    Ok(out)
}

fn draw_legend<'a, DB: plotters::prelude::DrawingBackend + 'a>(
    chart: &mut plotters::prelude::ChartContext<
        'a,
        DB,
        plotters::prelude::Cartesian2d<
            plotters::coord::types::RangedCoordf64,
            plotters::coord::types::RangedCoordf64,
        >,
    >,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", svg::TICK))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::manifest::{Manifest, ModelInfo};
    use crate::store::Latents;

    /// A run with one 6-wide site: 3 classes of 40 samples x 2 steps around distinct
    /// centres, and a samples.parquet with `class` (text) and `size` (float).
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
        let (run, _) = Run::create_or_resume(dir, manifest).unwrap();
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
        let mut df = DataFrame::new_infer_height(vec![
            Column::new("sample".into(), (0..120u32).collect::<Vec<_>>()),
            Column::new("class".into(), classes),
            Column::new("size".into(), size),
        ])
        .unwrap();
        run.write_samples_part(0, &mut df).unwrap();
        run.finish_samples(1).unwrap();
        run
    }

    fn args(dir: &std::path::Path, method: Method, color_by: Option<&str>) -> ReduceArgs {
        ReduceArgs {
            run: dir.to_path_buf(),
            sites: vec!["*".into()],
            steps: "all".into(),
            method,
            components: 4,
            color_by: color_by.map(str::to_string),
            max_points: 1000,
            seed: 3,
        }
    }

    #[test]
    fn pca_writes_tables_that_agree_with_the_fit() {
        let dir = tempfile::tempdir().unwrap();
        let run = make_run(dir.path());
        super::run(&args(dir.path(), Method::Pca, Some("class"))).unwrap();
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
        let svg = std::fs::read_to_string(dir.path().join("plots/pca-latent-scatter.svg")).unwrap();
        assert!(
            svg.contains("class = star") && svg.contains("PC 1"),
            "legend and axis labels"
        );
        assert!(dir.path().join("plots/pca-latent-scree.svg").is_file());
    }

    #[test]
    fn umap_writes_embedding_and_quality() {
        let dir = tempfile::tempdir().unwrap();
        let run = make_run(dir.path());
        super::run(&args(dir.path(), Method::Umap, Some("size"))).unwrap();
        let emb = run.table("umap").unwrap();
        assert_eq!(emb.height(), 240);
        let q = run.table("umap_quality").unwrap();
        let t = q.column("trustworthiness").unwrap().f64().unwrap();
        assert!(t.get(0).unwrap() > 0.8, "{q:?}");
        let svg = std::fs::read_to_string(dir.path().join("plots/umap-latent.svg")).unwrap();
        assert!(svg.contains("(min)") && svg.contains("(max)"));
    }

    #[test]
    fn umap_subsample_is_bounded_seeded_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let run = make_run(dir.path());
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
        let mut args = args(dir.path(), Method::Umap, None);
        args.max_points = 100;
        super::run(&args).unwrap();
        assert_eq!(run.table("umap").unwrap().height(), 100);
        let q = run.table("umap_quality").unwrap();
        assert_eq!(q.column("rows").unwrap().u64().unwrap().get(0), Some(240));
        assert_eq!(
            q.column("embedded").unwrap().u32().unwrap().get(0),
            Some(100)
        );
    }

    #[test]
    fn last_means_the_last_step_the_run_kept() {
        let manifest = |config: serde_json::Value| {
            Manifest::new(
                "test",
                config,
                0,
                ModelInfo {
                    id: "test".into(),
                    weights: vec![],
                },
            )
        };
        for (config, want) in [
            (
                serde_json::json!({"ddim_steps": 50, "steps_run": 30, "steps": [0, 9, 27]}),
                27,
            ),
            (
                serde_json::json!({"ddim_steps": 50, "steps_run": 30, "steps": null}),
                29,
            ),
            (serde_json::json!({"ddim_steps": 50}), 49),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (run, _) = Run::create_or_resume(dir.path(), manifest(config)).unwrap();
            assert_eq!(resolve_steps(&run, "last").unwrap(), Some(vec![want]));
        }
    }

    #[test]
    fn bad_arguments_are_named() {
        let dir = tempfile::tempdir().unwrap();
        make_run(dir.path());
        let mut a = args(dir.path(), Method::Pca, Some("colour"));
        let err = super::run(&a).unwrap_err().to_string();
        assert!(err.contains("colour") && err.contains("class"), "{err}");
        a.color_by = None;
        a.sites = vec!["unet.mid_block".into()];
        let err = super::run(&a).unwrap_err().to_string();
        assert!(
            err.contains("unet.mid_block") && err.contains("latent"),
            "{err}"
        );
    }
}
