//! Steering: acting on what a probe found. Adds `alpha * direction` at one site of the
//! built-in diffusion model while it generates, and measures with its shape classifier how
//! often the image becomes the target shape, for a list of alphas (a dose-response), next to
//! a random direction of the same norm (the control).
//!
//! The direction comes from the run: a probe's fitted weights for the target class
//! (`tables/probe_weights.parquet`, already in the site's own feature space) or the
//! difference between the target class's mean latent and the other classes' (recorded rows).
//! `alpha` is in units of the site's mean per-sample norm in the run, so alpha 1 adds a
//! vector as long as a typical activation there. A direction recorded mean-pooled (one value
//! per channel) is spread evenly over the site's positions.
//!
//! Tables: `steer` (direction, alpha, generations, hits, rate with a Wilson 95% interval).
//! Figures: `steer-dose` (rate against alpha, both directions, 95% bands) and
//! `steer-examples` (the same seeds at every alpha, probe direction).

use std::collections::BTreeSet;

use candle_core::{Device, Tensor};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Ctx, Identity, Output};
use crate::audit::wilson;
use crate::data::shapes::SHAPE_NAMES;
use crate::diffusion::pipeline::{DiffusionModel, SampleOptions};
use crate::jobs::probe::weight_rows;
use crate::plots;
use crate::report::{Section, Table};
use crate::sites::{Firing, Hooks, SiteInfo, Tap};
use crate::store::{resolve, AnalysisRecord, Run};
use crate::{Error, Result};

/// Where the steering direction comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DirectionSource {
    /// The probe's weights for the target class (`probe` the label at the site first).
    Probe,
    /// Mean latent of the target class minus the mean of the other classes.
    ClassMeans,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// The site to steer, e.g. `unet.mid_block`.
    pub site: String,
    /// Denoising steps at which to add the direction (`all`, `0..10`, ...).
    pub steps: String,
    pub direction: DirectionSource,
    /// The label whose class is the target (`shape`).
    pub label: String,
    /// The class to steer towards, e.g. `circle`.
    pub target: String,
    /// The recorded step whose probe / latents give the direction (default: the last).
    pub direction_step: Option<u16>,
    /// Multiples of the site's mean per-sample norm.
    pub alphas: Vec<f64>,
    /// Generations per alpha and direction; each is conditioned on a non-target class.
    pub samples: u32,
    pub seed: u64,
    pub ddim_steps: usize,
    pub guidance: f64,
    pub batch_size: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            site: "unet.mid_block".into(),
            steps: "all".into(),
            direction: DirectionSource::Probe,
            label: "shape".into(),
            target: "circle".into(),
            direction_step: None,
            alphas: vec![0.0, 0.5, 1.0, 2.0, 4.0],
            samples: 24,
            seed: 0,
            ddim_steps: 25,
            guidance: 3.0,
            batch_size: 8,
        }
    }
}

pub struct Plan {
    model: DiffusionModel,
    site: SiteInfo,
    /// Unit-norm directions in the site's per-sample shape: the chosen one and the control.
    direction: Tensor,
    random: Tensor,
    /// The site's mean per-sample norm in the run (alpha's unit).
    scale: f64,
    steps: Option<BTreeSet<u16>>,
    target: u32,
    others: Vec<u32>,
    options: Options,
    pub identity: Identity,
}

pub fn plan(run: &Run, opts: &Options, device: &Device) -> Result<Plan> {
    super::require_complete(run, false)?;
    let m = run.manifest();
    if m.kind != "record diffusion" {
        return Err(Error::Invalid(format!(
            "steering needs a run of the built-in diffusion model; {} is `{}`",
            run.root().display(),
            m.kind
        )));
    }
    if opts.alphas.is_empty() || opts.alphas.iter().any(|a| !a.is_finite()) || opts.samples == 0 {
        return Err(Error::Invalid(
            "steer needs finite alphas and at least one sample".into(),
        ));
    }
    let model_dir = m
        .model
        .weights
        .first()
        .and_then(|w| w.path.parent())
        .ok_or_else(|| Error::Invalid("the run's manifest lists no weight files".into()))?
        .to_path_buf();
    let model = DiffusionModel::load(&model_dir, device)?;
    if model.classifier.is_none() {
        return Err(Error::Invalid(format!(
            "{} has no shape classifier to judge the generations",
            model_dir.display()
        )));
    }
    let site = model
        .sites()
        .into_iter()
        .find(|s| s.name == opts.site && s.per_step)
        .ok_or_else(|| Error::UnknownSite {
            name: opts.site.clone(),
            valid: model
                .sites()
                .into_iter()
                .filter(|s| s.per_step)
                .map(|s| s.name)
                .collect(),
        })?;
    let target = SHAPE_NAMES
        .iter()
        .position(|&n| n == opts.target)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "target `{}` is not a shape; expected one of {}",
                opts.target,
                SHAPE_NAMES.join(", ")
            ))
        })? as u32;
    let others: Vec<u32> = (0..model.config.n_classes() as u32)
        .filter(|&c| c != target)
        .collect();
    let recorded = run.recorded_steps(&opts.site)?;
    let direction_step = match opts.direction_step {
        Some(s) => resolve::steps(&s.to_string(), &recorded)?[0],
        None => *recorded.last().unwrap_or(&0),
    };
    let raw = match opts.direction {
        DirectionSource::Probe => probe_direction(run, opts, direction_step)?,
        DirectionSource::ClassMeans => class_mean_direction(run, opts, direction_step)?,
    };
    let latents = run.read_latents(&opts.site, None)?;
    let scale = (0..latents.len())
        .map(|r| {
            latents
                .row(r)
                .iter()
                .map(|v| (*v as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum::<f64>()
        / latents.len().max(1) as f64;
    let direction = shaped_unit(&raw, &site, device)?;
    let noise = crate::rng::gaussian(opts.seed, 0x5eed, site.numel());
    let random = shaped_unit(&noise, &site, device)?;
    let steps = if opts.steps.trim() == "all" {
        None
    } else {
        let total = opts.ddim_steps as u16;
        crate::steps::parse_steps(&opts.steps, 0, total)?.map(|v| v.into_iter().collect())
    };
    let identity = Identity {
        analysis: "steer",
        key: format!("steer:{}:{}={}", opts.site, opts.label, opts.target),
        options: serde_json::to_value(opts)?,
        seed: opts.seed,
    };
    Ok(Plan {
        model,
        site,
        direction,
        random,
        scale,
        steps,
        target,
        others,
        options: opts.clone(),
        identity,
    })
}

fn probe_direction(run: &Run, opts: &Options, step: u16) -> Result<Vec<f32>> {
    if !run.tables()?.iter().any(|t| t == "probe_weights") {
        return Err(Error::Invalid(format!(
            "no tables/probe_weights.parquet in {}: probe `{}` at `{}` first, or use \
             direction = class_means",
            run.root().display(),
            opts.label,
            opts.site
        )));
    }
    let rows = weight_rows(&run.table("probe_weights")?)?;
    // `shape` holds class indices, `shape_name` names: either names the target.
    let index = SHAPE_NAMES
        .iter()
        .position(|&n| n == opts.target)
        .map(|i| i.to_string());
    let is_target = |o: &str| o == opts.target || Some(o) == index.as_deref();
    let row = rows
        .iter()
        .find(|r| {
            r.site == opts.site && r.step == step && r.label == opts.label && is_target(&r.output)
        })
        .ok_or_else(|| {
            Error::Invalid(format!(
                "no probe weights for `{}` = `{}` at `{}`, step {step}; probed there: {}",
                opts.label,
                opts.target,
                opts.site,
                rows.iter()
                    .filter(|r| r.site == opts.site)
                    .map(|r| format!("{}={} (step {})", r.label, r.output, r.step))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    Ok(row.weights.iter().map(|&w| w as f32).collect())
}

fn class_mean_direction(run: &Run, opts: &Options, step: u16) -> Result<Vec<f32>> {
    let label = resolve::label(run, &opts.label, Some(resolve::LabelKind::Classes))?;
    let names = label.class_names();
    let t = names.iter().position(|n| *n == opts.target).or_else(|| {
        // `shape` holds class indices: the target's index names it.
        SHAPE_NAMES
            .iter()
            .position(|&n| n == opts.target)
            .and_then(|i| names.iter().position(|n| *n == i.to_string()))
    });
    let t = t.ok_or_else(|| {
        Error::Invalid(format!(
            "`{}` has no class `{}`; its classes: {}",
            opts.label,
            opts.target,
            names.join(", ")
        ))
    })? as u32;
    let latents = run.read_latents(&opts.site, Some(&[step]))?;
    let (mut on, mut off) = (vec![0f64; latents.width], vec![0f64; latents.width]);
    let (mut n_on, mut n_off) = (0usize, 0usize);
    let classes = label
        .per_sample_classes(&latents.sample)
        .ok_or_else(|| Error::Invalid(format!("`{}` must be one value per sample", opts.label)))?;
    for (r, c) in classes.iter().enumerate() {
        let (acc, n) = match c {
            Some(c) if *c == t => (&mut on, &mut n_on),
            Some(_) => (&mut off, &mut n_off),
            None => continue,
        };
        for (a, v) in acc.iter_mut().zip(latents.row(r)) {
            *a += *v as f64;
        }
        *n += 1;
    }
    if n_on == 0 || n_off == 0 {
        return Err(Error::Invalid(format!(
            "class means need rows of `{}` and of other classes at step {step}",
            opts.target
        )));
    }
    Ok(on
        .iter()
        .zip(&off)
        .map(|(a, b)| (a / n_on as f64 - b / n_off as f64) as f32)
        .collect())
}

/// A direction of the site's full per-sample width, or of its channel count (recorded
/// mean-pooled, spread over positions), as a unit-norm tensor of the site's shape.
fn shaped_unit(v: &[f32], site: &SiteInfo, device: &Device) -> Result<Tensor> {
    let dims: Vec<usize> = site.dims.iter().map(|d| d.1).collect();
    let full: Vec<f32> = if v.len() == site.numel() {
        v.to_vec()
    } else if Some(&v.len()) == dims.first() {
        let per = site.numel() / v.len();
        v.iter()
            .flat_map(|&c| std::iter::repeat_n(c, per))
            .collect()
    } else {
        return Err(Error::Invalid(format!(
            "a direction of width {} does not fit site `{}` (per-sample shape {}; width {} \
             whole or {} pooled)",
            v.len(),
            site.name,
            site.shape_string(),
            site.numel(),
            dims.first().copied().unwrap_or(0)
        )));
    };
    let norm = full.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return Err(Error::Invalid(format!(
            "the direction at `{}` is zero or not finite",
            site.name
        )));
    }
    let unit: Vec<f32> = full.iter().map(|x| (*x as f64 / norm) as f32).collect();
    Ok(Tensor::from_vec(unit, dims, device)?)
}

/// Adds `delta` at one site at the chosen steps (all when `None`).
struct SteerSteps<'a> {
    site: &'a str,
    delta: Tensor,
    steps: Option<&'a BTreeSet<u16>>,
}

impl Tap for SteerSteps<'_> {
    fn wants(&self, site: &str) -> bool {
        site == self.site
    }

    fn tap(&mut self, x: &Tensor, at: &Firing) -> candle_core::Result<Option<Tensor>> {
        if self.steps.is_some_and(|s| !s.contains(&at.step)) {
            return Ok(None);
        }
        Ok(Some(x.broadcast_add(&self.delta.to_dtype(x.dtype())?)?))
    }
}

/// One (direction, alpha) cell of the dose-response.
#[derive(Debug, Clone)]
struct Cell {
    direction: &'static str,
    alpha: f64,
    hits: u32,
    n: u32,
}

pub fn run(_run: &Run, plan: &Plan, ctx: &Ctx) -> Result<Output> {
    let o = &plan.options;
    ctx.progress
        .set_length(2 * o.alphas.len() as u64 * o.samples as u64);
    let mut cells = Vec::new();
    let mut examples: Vec<(f64, Vec<Tensor>)> = Vec::new();
    for (name, dir) in [
        (direction_name(o.direction), &plan.direction),
        ("random", &plan.random),
    ] {
        for &alpha in &o.alphas {
            ctx.progress.set_message(&format!("{name} alpha {alpha}"));
            let (hits, images) = generate(plan, dir, alpha, ctx)?;
            if name != "random" {
                examples.push((alpha, images));
            }
            cells.push(Cell {
                direction: name,
                alpha,
                hits,
                n: o.samples,
            });
        }
    }
    let table = frame(plan, &cells)?;
    let mut plots_out = vec![("steer-dose".to_string(), dose_figure(plan, &cells)?)];
    plots_out.push((
        "steer-examples".to_string(),
        plots::images::grid(
            &format!(
                "Steering `{}` towards `{}` ({} direction): the same seeds at each alpha",
                o.site,
                o.target,
                direction_name(o.direction)
            ),
            &examples
                .iter()
                .map(|(a, imgs)| (format!("alpha {a}"), imgs.clone()))
                .collect::<Vec<_>>(),
        )?,
    ));
    Ok(Output {
        tables: vec![("steer".into(), table)],
        plots: plots_out,
        samples_used: o.samples as u64,
    })
}

fn direction_name(d: DirectionSource) -> &'static str {
    match d {
        DirectionSource::Probe => "probe",
        DirectionSource::ClassMeans => "class_means",
    }
}

/// Generations at one alpha: how many the classifier reads as the target, and the first
/// few images (for the example grid).
fn generate(plan: &Plan, dir: &Tensor, alpha: f64, ctx: &Ctx) -> Result<(u32, Vec<Tensor>)> {
    let o = &plan.options;
    let delta = (dir * (alpha * plan.scale))?;
    let sample = SampleOptions {
        steps: o.ddim_steps,
        eta: 0.0,
        guidance: o.guidance,
    };
    let classifier = plan
        .model
        .classifier
        .as_ref()
        .ok_or_else(|| Error::Invalid("no classifier".into()))?;
    let (mut hits, mut kept) = (0u32, Vec::new());
    let ids: Vec<u32> = (0..o.samples).collect();
    for batch in ids.chunks(o.batch_size.max(1) as usize) {
        ctx.check()?;
        let classes: Vec<u32> = batch
            .iter()
            .map(|&i| plan.others[i as usize % plan.others.len()])
            .collect();
        let seeds: Vec<u64> = batch
            .iter()
            .map(|&i| crate::rng::mix(&[o.seed, i as u64]))
            .collect();
        let mut tap = SteerSteps {
            site: &plan.site.name,
            delta: delta.clone(),
            steps: plan.steps.as_ref(),
        };
        let mut hooks = Hooks::none().with(&mut tap);
        let images = plan.model.generate(&classes, &seeds, &sample, &mut hooks)?;
        let predicted = classifier.predict(&images)?;
        hits += predicted.iter().filter(|&&p| p == plan.target).count() as u32;
        for i in 0..batch.len() {
            if kept.len() < 6 {
                kept.push(images.get(i)?);
            }
        }
        ctx.progress.inc(batch.len() as u64);
    }
    Ok((hits, kept))
}

fn frame(plan: &Plan, cells: &[Cell]) -> Result<DataFrame> {
    let ci: Vec<(f64, f64)> = cells
        .iter()
        .map(|c| wilson(c.hits as f64, c.n as f64))
        .collect();
    Ok(df!(
        "site" => vec![plan.site.name.clone(); cells.len()],
        "target" => vec![plan.options.target.clone(); cells.len()],
        "direction" => cells.iter().map(|c| c.direction).collect::<Vec<_>>(),
        "alpha" => cells.iter().map(|c| c.alpha).collect::<Vec<_>>(),
        "scale" => vec![plan.scale; cells.len()],
        "generations" => cells.iter().map(|c| c.n).collect::<Vec<_>>(),
        "hits" => cells.iter().map(|c| c.hits).collect::<Vec<_>>(),
        "rate" => cells.iter().map(|c| c.hits as f64 / c.n.max(1) as f64).collect::<Vec<_>>(),
        "ci_low" => ci.iter().map(|c| c.0).collect::<Vec<_>>(),
        "ci_high" => ci.iter().map(|c| c.1).collect::<Vec<_>>(),
    )?)
}

fn dose_figure(plan: &Plan, cells: &[Cell]) -> Result<String> {
    let names: BTreeSet<&str> = cells.iter().map(|c| c.direction).collect();
    let series = names
        .into_iter()
        .map(|name| {
            let mine: Vec<&Cell> = cells.iter().filter(|c| c.direction == name).collect();
            plots::Series {
                name: format!("{name} direction"),
                points: mine
                    .iter()
                    .map(|c| (c.alpha, c.hits as f64 / c.n.max(1) as f64))
                    .collect(),
                band: mine
                    .iter()
                    .map(|c| {
                        let (lo, hi) = wilson(c.hits as f64, c.n as f64);
                        (c.alpha, lo, hi)
                    })
                    .collect(),
                secondary: name == "random",
            }
        })
        .collect();
    plots::lines(&plots::LinePlot {
        title: format!(
            "Steering `{}`: generations read as `{}` (band: Wilson 95% CI)",
            plan.site.name, plan.options.target
        ),
        x_label: "alpha (x the site's mean per-sample norm)".into(),
        y_label: format!("fraction classified `{}`", plan.options.target),
        series,
        y_range: Some((-0.02, 1.02)),
        ..plots::LinePlot::default()
    })
    .map_err(|e| Error::Invalid(e.to_string()))
}

/// The report section: the dose-response against the control.
pub fn report(run: &Run, record: &AnalysisRecord) -> Result<Section> {
    let df = run.table("steer")?;
    let text = |c: &str| -> Result<Vec<String>> {
        Ok(df
            .column(c)?
            .str()?
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect())
    };
    let num = |c: &str| -> Result<Vec<f64>> {
        Ok(df
            .column(c)?
            .cast(&DataType::Float64)?
            .f64()?
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect())
    };
    let (dir, site, target) = (text("direction")?, text("site")?, text("target")?);
    let (alpha, rate, lo, hi, hits, n) = (
        num("alpha")?,
        num("rate")?,
        num("ci_low")?,
        num("ci_high")?,
        num("hits")?,
        num("generations")?,
    );
    let mut section = Section {
        title: format!("Steering: {}", record.key.trim_start_matches("steer:")),
        note: "Generations from noise conditioned on the other classes, with alpha x (the site's \
               mean per-sample norm) x a unit direction added at the site; the shape classifier \
               judges each image. The control adds a random direction of the same norm."
            .into(),
        plots: record.plots.clone(),
        ..Section::default()
    };
    let mut table = Table {
        caption: "dose-response".into(),
        header: ["direction", "alpha", "hits / generations", "rate", "95% CI"]
            .map(String::from)
            .to_vec(),
        rows: Vec::new(),
    };
    for i in 0..df.height() {
        table.rows.push(vec![
            dir[i].clone(),
            format!("{}", alpha[i]),
            format!("{} / {}", hits[i], n[i]),
            format!("{:.2}", rate[i]),
            format!("[{:.2}, {:.2}]", lo[i], hi[i]),
        ]);
    }
    let best = (0..df.height())
        .filter(|&i| dir[i] != "random")
        .max_by(|&a, &b| rate[a].total_cmp(&rate[b]));
    if let Some(i) = best {
        let control = (0..df.height()).find(|&j| dir[j] == "random" && alpha[j] == alpha[i]);
        let base = (0..df.height()).find(|&j| dir[j] == dir[i] && alpha[j] == 0.0);
        section.findings.push(format!(
            "Steering `{}` along the {} direction at alpha {} turns {:.2} [95% CI {:.2}, {:.2}] of \
             generations into `{}`{}{}.",
            site[i],
            dir[i],
            alpha[i],
            rate[i],
            lo[i],
            hi[i],
            target[i],
            control.map_or(String::new(), |j| format!(
                "; a random direction of the same norm: {:.2} [{:.2}, {:.2}]",
                rate[j], lo[j], hi[j]
            )),
            base.map_or(String::new(), |j| format!("; without steering: {:.2}", rate[j])),
        ));
    }
    section.tables.push(table);
    Ok(section)
}
