//! The infoloss job: what is lost between recording points. Reconstruction quality between
//! two image sites (MSE, PSNR, SSIM with bootstrap 95% intervals), linear CKA between every
//! (site, step) representation, the mutual information between each label and each
//! representation (Gaussian and kNN estimators), and decodability retention from the
//! probe table.
//!
//! Tables: `infoloss_reconstruction` (per sample), `infoloss_summary` (means and
//! intervals), `cka`, `mutual_info`, `retention`. Figures: `infoloss-cka`,
//! `infoloss-mi-<label>`, `infoloss-retention`.
//!
//! Everything (sites, steps, labels, the image shapes) is resolved in [`plan`], before any
//! table is written. Steps follow `store::resolve`: an unrecorded step is an error. A site
//! recorded at a single step (once per generation: `image`, `vae.*`) is used at that step
//! whatever the step list, so `--steps 0..50:10` can span image and per-step sites.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use polars::prelude::{df, DataFrame, DataType};
use serde::{Deserialize, Serialize};

use super::{Ctx, Identity, Output};
use crate::analysis::cka::{cka_matrix, Representation};
use crate::analysis::infoloss::{
    compression_ratio, mutual_information_from_scores, reconstruction_per_sample, retention,
    summarise_reconstruction, Label as MiLabel, MiOptions, PrincipalScores, ProbeScore, Summary,
};
use crate::analysis::mi::subsample;
use crate::analysis::ssim::ImageShape;
use crate::plots;
use crate::report::{Section, Table};
use crate::store::resolve::{self, Label, LabelKind, LabelValues};
use crate::store::{AnalysisRecord, Latents, Run};
use crate::{Error, Result};

/// Steps per site kept when `steps` is not given.
const DEFAULT_STEPS: usize = 8;
/// Refuse to hold more than this many bytes of representations at once.
const MEMORY_BUDGET: usize = 2 << 30;

/// What a user asks for; the `infoloss` command's flags and an experiment's
/// `[[run.infoloss]]` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Original image site (default `image`, when recorded with `vae.decoder.out`).
    pub from: Option<String>,
    /// Reconstructed image site (default `vae.decoder.out`).
    pub to: Option<String>,
    /// Latent site whose width gives the compression ratio.
    pub latent: String,
    /// max - min of the image sites' pixel scale.
    pub data_range: f64,
    /// Sites for CKA and MI, names or globs (empty: every recorded site).
    pub sites: Vec<String>,
    /// Steps for CKA and MI (default: up to 8 evenly spaced recorded steps).
    pub steps: Option<String>,
    /// Labels for MI, `COLUMN` or `TABLE:COLUMN` (empty: every samples.parquet column).
    pub labels: Vec<String>,
    /// Labels to read as continuous although their column holds integers.
    pub continuous: Vec<String>,
    /// Labels to read as classes although their column holds floats.
    pub classes: Vec<String>,
    pub seed: u64,
    /// Samples used at most for CKA and MI (a seeded subset above that).
    pub max_points: usize,
    /// Principal components of each representation used for MI.
    pub components: usize,
    /// k of the kNN (KSG) estimator.
    pub neighbours: usize,
    /// Reference site of decodability retention.
    pub retention_from: String,
    pub allow_partial: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            from: None,
            to: None,
            latent: "vae.encoder.mean".into(),
            data_range: 2.0,
            sites: Vec::new(),
            steps: None,
            labels: Vec::new(),
            continuous: Vec::new(),
            classes: Vec::new(),
            seed: 0,
            max_points: 2000,
            components: 8,
            neighbours: 3,
            retention_from: "image".into(),
            allow_partial: false,
        }
    }
}

/// The reconstruction pair, checked.
#[derive(Debug, Clone)]
pub struct ReconstructionPlan {
    pub from: String,
    pub to: String,
    pub shape: ImageShape,
    pub latent_width: Option<usize>,
}

#[derive(Debug)]
pub struct Plan {
    pub reconstruction: Option<ReconstructionPlan>,
    pub grid: Vec<(String, Vec<u16>)>,
    pub labels: Vec<Label>,
    /// Whether tables/probes.parquet exists to compute retention from.
    pub retention: bool,
    /// Decisions the user should hear about (what is skipped and why).
    pub notes: Vec<String>,
    pub options: Options,
    pub identity: Identity,
}

pub fn plan(run: &Run, opts: &Options) -> Result<Plan> {
    super::require_complete(run, opts.allow_partial)?;
    let bad = |m: String| Err(Error::Invalid(m));
    if opts.max_points < 10 {
        return bad(format!("max_points = {}: use at least 10", opts.max_points));
    }
    if opts.components == 0 || opts.neighbours == 0 {
        return bad("components and neighbours must be at least 1".into());
    }
    if opts.from.is_some() != opts.to.is_some() {
        return bad("give both `from` and `to` (the original and reconstructed sites)".into());
    }
    let sites = run.sites()?;
    let mut notes = Vec::new();
    let reconstruction = reconstruction_plan(run, opts, &sites, &mut notes)?;
    let grid = grid(run, opts)?;
    let bytes: usize = grid
        .iter()
        .map(|(s, steps)| steps.len() * opts.max_points * site_width(run, s).unwrap_or(0) * 4)
        .sum();
    if bytes > MEMORY_BUDGET {
        return bad(format!(
            "the selected representations need {:.1} GB in memory; narrow them with sites, \
             steps or max_points",
            bytes as f64 / 1e9
        ));
    }
    let labels = labels(run, opts)?;
    if labels.is_empty() {
        notes.push("mutual information: no label columns; skipped".into());
    }
    let retention = run.tables()?.iter().any(|t| t == "probes");
    if !retention {
        notes.push(format!(
            "retention: no tables/probes.parquet; run `latentlens probe` (including --sites {}) \
             first",
            opts.retention_from
        ));
    }
    Ok(Plan {
        reconstruction,
        grid,
        labels,
        retention,
        notes,
        options: opts.clone(),
        identity: Identity {
            analysis: "infoloss",
            key: "infoloss".into(),
            options: serde_json::to_value(opts)?,
            seed: opts.seed,
        },
    })
}

fn reconstruction_plan(
    run: &Run,
    opts: &Options,
    sites: &[String],
    notes: &mut Vec<String>,
) -> Result<Option<ReconstructionPlan>> {
    let (from, to) = match (&opts.from, &opts.to) {
        (Some(f), Some(t)) => (f.clone(), t.clone()),
        _ => {
            let has = |s: &str| sites.iter().any(|x| x == s);
            if !(has("image") && has("vae.decoder.out")) {
                notes.push(
                    "reconstruction: skipped (needs `image` and `vae.decoder.out`, or from/to)"
                        .into(),
                );
                return Ok(None);
            }
            ("image".to_string(), "vae.decoder.out".to_string())
        }
    };
    for s in [&from, &to] {
        if !sites.contains(s) {
            return Err(Error::UnknownSite {
                name: s.clone(),
                valid: sites.to_vec(),
            });
        }
    }
    let shape = image_shape(run, &from)?;
    let to_shape = image_shape(run, &to)?;
    if shape != to_shape {
        return Err(Error::Invalid(format!(
            "from `{from}` has shape {shape:?} but to `{to}` has {to_shape:?}; reconstruction \
             compares same-shaped sites"
        )));
    }
    if !crate::analysis::ssim::ssim_applies(shape) {
        notes.push(format!(
            "reconstruction: {}x{}x{} images are smaller than the 11x11 SSIM window; SSIM left \
             empty",
            shape.channels, shape.height, shape.width
        ));
    }
    let latent_width = site_width(run, &opts.latent);
    if latent_width.is_none() {
        notes.push(format!(
            "compression ratio: latent site `{}` was not recorded; left empty",
            opts.latent
        ));
    }
    Ok(Some(ReconstructionPlan {
        from,
        to,
        shape,
        latent_width,
    }))
}

/// Sites and steps of the representations.
fn grid(run: &Run, opts: &Options) -> Result<Vec<(String, Vec<u16>)>> {
    let mut out = Vec::new();
    for site in resolve::sites(run, &opts.sites)? {
        let recorded = run.recorded_steps(&site)?;
        out.push((
            site.clone(),
            pick_steps(&recorded, opts.steps.as_deref())
                .map_err(|e| Error::Invalid(format!("site `{site}`: {e}")))?,
        ));
    }
    Ok(out)
}

/// A site recorded at one step keeps it; otherwise `spec` among the recorded steps
/// (an unrecorded one is an error), or up to 8 evenly spaced ones.
fn pick_steps(recorded: &BTreeSet<u16>, spec: Option<&str>) -> Result<Vec<u16>> {
    if recorded.len() <= 1 {
        return Ok(recorded.iter().copied().collect());
    }
    match spec {
        Some(spec) => resolve::steps(spec, recorded),
        None => Ok(evenly_spaced(
            &recorded.iter().copied().collect::<Vec<_>>(),
            DEFAULT_STEPS,
        )),
    }
}

/// Up to `k` entries of `v`, evenly spaced, first and last included.
fn evenly_spaced(v: &[u16], k: usize) -> Vec<u16> {
    if v.len() <= k || k < 2 {
        return v.to_vec();
    }
    let mut out: Vec<u16> = (0..k)
        .map(|i| v[(i * (v.len() - 1) + (k - 1) / 2) / (k - 1)])
        .collect();
    out.dedup();
    out
}

/// The labels, resolved by `store::resolve` (the same class / continuous rule as probe).
fn labels(run: &Run, opts: &Options) -> Result<Vec<Label>> {
    let specs: Vec<String> = if opts.labels.is_empty() {
        if !run.has_samples() {
            return Ok(Vec::new());
        }
        run.samples()?
            .get_column_names()
            .iter()
            .map(|s| s.to_string())
            .filter(|s| s != "sample")
            .collect()
    } else {
        opts.labels
            .iter()
            .flat_map(|l| l.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let mut out: Vec<Label> = Vec::new();
    for spec in specs {
        let column = spec.rsplit(':').next().unwrap_or(&spec).to_string();
        let kind = if opts.continuous.iter().any(|c| *c == column || *c == spec) {
            Some(LabelKind::Continuous)
        } else if opts.classes.iter().any(|c| *c == column || *c == spec) {
            Some(LabelKind::Classes)
        } else {
            None
        };
        let label = resolve::label(run, &spec, kind)?;
        if label.has_position {
            return Err(Error::Invalid(format!(
                "label `{spec}` ({}) is keyed by position, but mutual information pools each \
                 sample's positions; use a label keyed by sample (and step)",
                label.source
            )));
        }
        if !out.iter().any(|l| l.name == label.name) {
            out.push(label);
        }
    }
    Ok(out)
}

/// The (channels, height, width) of an image site from the manifest's dims.
fn image_shape(run: &Run, site: &str) -> Result<ImageShape> {
    let record = run
        .manifest()
        .sites
        .iter()
        .find(|s| s.name == site)
        .ok_or_else(|| Error::Invalid(format!("site `{site}` is not in the run's manifest")))?;
    let dims: Vec<usize> = record.dims.iter().map(|d| d.size).collect();
    let shape = match dims[..] {
        [c, h, w] => ImageShape::new(c, h, w),
        [h, w] => ImageShape::new(1, h, w),
        _ => {
            return Err(Error::Invalid(format!(
                "site `{site}` has dims {:?}; reconstruction needs an image site",
                record.dims
            )))
        }
    };
    if shape.numel() != record.width {
        return Err(Error::Invalid(format!(
            "site `{site}` was recorded pooled (width {}), not as whole images {:?}; record it \
             without --pool",
            record.width, record.dims
        )));
    }
    Ok(shape)
}

fn site_width(run: &Run, site: &str) -> Option<usize> {
    run.manifest()
        .sites
        .iter()
        .find(|s| s.name == site)
        .map(|s| s.width)
}

pub fn run(run: &Run, plan: &Plan, ctx: &Ctx) -> Result<Output> {
    let mut out = Output::default();
    let mut used = BTreeSet::new();
    if let Some(r) = &plan.reconstruction {
        ctx.progress.set_message("reconstruction");
        let samples = reconstruction(run, r, &plan.options, ctx, &mut out)?;
        used.extend(samples);
    }
    ctx.check()?;
    if !plan.grid.is_empty() {
        ctx.progress.set_message("representations");
        let reps = representations(run, plan)?;
        used.extend(reps.samples.iter().copied());
        ctx.check()?;
        ctx.progress.set_message("cka");
        cka(&reps, &mut out)?;
        ctx.check()?;
        if !plan.labels.is_empty() {
            ctx.progress.set_message("mutual information");
            mutual_info(plan, &reps, ctx, &mut out)?;
        }
    }
    if plan.retention {
        decodability_retention(run, &plan.options.retention_from, &mut out)?;
    }
    out.samples_used = used.len() as u64;
    Ok(out)
}

fn plot_error(e: plots::PlotError) -> Error {
    Error::Invalid(e.to_string())
}

// ---------------------------------------------------------------- retention

fn decodability_retention(run: &Run, reference: &str, out: &mut Output) -> Result<()> {
    let scores = probe_scores(&run.table("probes")?)?;
    let rows = retention(&scores, reference);
    if rows.is_empty() {
        return Ok(());
    }
    let table = df!(
        "label" => rows.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(),
        "metric" => rows.iter().map(|r| r.metric.as_str()).collect::<Vec<_>>(),
        "reference_site" => rows.iter().map(|r| r.reference_site.as_str()).collect::<Vec<_>>(),
        "reference_step" => rows.iter().map(|r| r.reference_step).collect::<Vec<_>>(),
        "reference_value" => rows.iter().map(|r| r.reference_value).collect::<Vec<_>>(),
        "site" => rows.iter().map(|r| r.site.as_str()).collect::<Vec<_>>(),
        "step" => rows.iter().map(|r| r.step).collect::<Vec<_>>(),
        "value" => rows.iter().map(|r| r.value).collect::<Vec<_>>(),
        "retention" => rows.iter().map(|r| r.retention).collect::<Vec<_>>(),
    )?;
    out.tables.push(("retention".into(), table));
    let svg = plots::infoloss::retention(&rows, reference).map_err(plot_error)?;
    out.plots.push(("infoloss-retention".into(), svg));
    Ok(())
}

fn probe_scores(probes: &DataFrame) -> Result<Vec<ProbeScore>> {
    let rows = super::probe::probe_rows(probes)?;
    Ok(rows
        .into_iter()
        .filter(|r| {
            r.metric == super::probe::headline_metric(&r.kind)
                && r.value.is_some_and(f64::is_finite)
        })
        .map(|r| ProbeScore {
            site: r.site,
            step: r.step,
            label: r.label,
            metric: r.metric,
            value: r.value.unwrap_or(f64::NAN),
        })
        .collect())
}

// ---------------------------------------------------------------- reconstruction

fn reconstruction(
    run: &Run,
    plan: &ReconstructionPlan,
    opts: &Options,
    ctx: &Ctx,
    out: &mut Output,
) -> Result<Vec<u32>> {
    let (from, to, shape) = (&plan.from, &plan.to, plan.shape);
    let a = one_row_per_sample(&run.read_latents(from, None)?, from, false)?;
    let b = one_row_per_sample(&run.read_latents(to, None)?, to, true)?;
    let common: Vec<u32> = a.keys().filter(|s| b.contains_key(s)).copied().collect();
    if common.is_empty() {
        return Err(Error::Invalid(format!(
            "`{from}` and `{to}` share no samples"
        )));
    }
    let flat = |m: &BTreeMap<u32, Vec<f32>>| -> Vec<f32> {
        common.iter().flat_map(|s| m[s].iter().copied()).collect()
    };
    let rows =
        reconstruction_per_sample(&flat(&a), &flat(&b), shape, opts.data_range, ctx.progress)?;
    let summary = summarise_reconstruction(&rows, opts.seed)?;
    let ratio = match plan.latent_width {
        Some(w) => compression_ratio(shape.numel(), w)?,
        None => f64::NAN,
    };
    let n = common.len();
    let per_sample = df!(
        "sample" => common.clone(),
        "from_site" => vec![from.clone(); n],
        "to_site" => vec![to.clone(); n],
        "mse" => rows.iter().map(|r| r.mse).collect::<Vec<_>>(),
        "psnr_db" => rows.iter().map(|r| r.psnr).collect::<Vec<_>>(),
        "ssim" => rows.iter().map(|r| r.ssim).collect::<Vec<_>>(),
    )?;
    let metrics: [(&str, Summary); 3] = [
        ("mse", summary.mse),
        ("psnr_db", summary.psnr),
        ("ssim", summary.ssim),
    ];
    let table = df!(
        "from_site" => vec![from.clone(); 3],
        "to_site" => vec![to.clone(); 3],
        "metric" => metrics.iter().map(|(m, _)| m.to_string()).collect::<Vec<_>>(),
        "mean" => metrics.iter().map(|(_, s)| s.mean).collect::<Vec<_>>(),
        "ci95_low" => metrics.iter().map(|(_, s)| s.ci_low).collect::<Vec<_>>(),
        "ci95_high" => metrics.iter().map(|(_, s)| s.ci_high).collect::<Vec<_>>(),
        "n" => metrics.iter().map(|(_, s)| s.n as u32).collect::<Vec<_>>(),
        "data_range" => vec![opts.data_range; 3],
        "latent_site" => vec![opts.latent.clone(); 3],
        "compression_ratio" => vec![ratio; 3],
    )?;
    out.tables
        .push(("infoloss_reconstruction".into(), per_sample));
    out.tables.push(("infoloss_summary".into(), table));
    Ok(common)
}

/// One row per sample of a once-per-generation site: its first step, or its last when
/// `last` (e.g. a per-step site standing for the final output).
fn one_row_per_sample(l: &Latents, site: &str, last: bool) -> Result<BTreeMap<u32, Vec<f32>>> {
    let steps: BTreeSet<u16> = l.step.iter().copied().collect();
    let Some(&step) = (if last { steps.last() } else { steps.first() }) else {
        return Err(Error::Invalid(format!("site `{site}` has no rows")));
    };
    let mut out = BTreeMap::new();
    for i in 0..l.len() {
        if l.step[i] != step {
            continue;
        }
        if l.position[i].is_some() {
            return Err(Error::Invalid(format!(
                "site `{site}` has one row per position; reconstruction needs whole images"
            )));
        }
        out.insert(l.sample[i], l.row(i).to_vec());
    }
    Ok(out)
}

// ---------------------------------------------------------------- representations

/// One (site, step) representation over the shared sample subset, pooled over positions.
struct Rep {
    site: String,
    step: u16,
    width: usize,
    /// Row per entry of `samples`, row-major.
    x: Vec<f32>,
}

struct Reps {
    samples: Vec<u32>,
    reps: Vec<Rep>,
}

fn representations(run: &Run, plan: &Plan) -> Result<Reps> {
    let opts = &plan.options;
    let all_samples = sample_ids(run, &plan.grid)?;
    let keep = subsample(all_samples.len(), opts.max_points, opts.seed);
    let samples: Vec<u32> = keep.iter().map(|&i| all_samples[i]).collect();
    let index: HashMap<u32, usize> = samples.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    let mut reps = Vec::new();
    for (site, steps) in &plan.grid {
        reps.extend(pooled(run, site, steps, &index)?);
    }
    // Keep only samples every representation has, so all share rows.
    let mut present = vec![true; samples.len()];
    for r in &reps {
        for (i, p) in present.iter_mut().enumerate() {
            *p &= r.x[i * r.width..(i + 1) * r.width]
                .iter()
                .all(|v| !v.is_nan());
        }
    }
    let rows: Vec<usize> = (0..samples.len()).filter(|&i| present[i]).collect();
    for r in &mut reps {
        r.x = rows
            .iter()
            .flat_map(|&i| r.x[i * r.width..(i + 1) * r.width].to_vec())
            .collect();
    }
    let samples = rows.iter().map(|&i| samples[i]).collect();
    Ok(Reps { samples, reps })
}

/// Sample ids of samples.parquet, or of the first site when the run has none.
fn sample_ids(run: &Run, grid: &[(String, Vec<u16>)]) -> Result<Vec<u32>> {
    let mut ids: Vec<u32> = if run.has_samples() {
        let df = run.samples()?;
        let col = df.column("sample")?.cast(&DataType::UInt32)?;
        let v = col.u32()?.iter().flatten().collect();
        v
    } else {
        let mut ids = Vec::new();
        if let Some((site, steps)) = grid.first() {
            run.scan_latents(site, Some(steps), 65_536, &mut |l| {
                ids.extend_from_slice(&l.sample);
                Ok(())
            })?;
        }
        ids
    };
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Mean over positions of each (sample, step) row of a site, for the samples in `index`.
/// Samples without rows stay NaN.
fn pooled(run: &Run, site: &str, steps: &[u16], index: &HashMap<u32, usize>) -> Result<Vec<Rep>> {
    let n = index.len();
    let slot: HashMap<u16, usize> = steps.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    let mut width = 0;
    let mut sums: Vec<Vec<f64>> = Vec::new();
    let mut counts: Vec<Vec<u32>> = vec![vec![0; n]; steps.len()];
    run.scan_latents(site, Some(steps), 65_536, &mut |l| {
        if sums.is_empty() {
            width = l.width;
            sums = vec![vec![0.0; n * width]; steps.len()];
        }
        for i in 0..l.len() {
            let (Some(&row), Some(&k)) = (index.get(&l.sample[i]), slot.get(&l.step[i])) else {
                continue;
            };
            for (acc, &v) in sums[k][row * width..(row + 1) * width]
                .iter_mut()
                .zip(l.row(i))
            {
                *acc += v as f64;
            }
            counts[k][row] += 1;
        }
        Ok(())
    })?;
    Ok(sums
        .into_iter()
        .zip(counts)
        .zip(steps)
        .map(|((sum, count), &step)| {
            let x = (0..n * width)
                .map(|j| match count[j / width] {
                    0 => f32::NAN,
                    c => (sum[j] / c as f64) as f32,
                })
                .collect();
            Rep {
                site: site.to_string(),
                step,
                width,
                x,
            }
        })
        .collect())
}

// ---------------------------------------------------------------- CKA

fn cka(reps: &Reps, out: &mut Output) -> Result<()> {
    let views: Vec<Representation<'_>> = reps
        .reps
        .iter()
        .map(|r| Representation::new(&r.x, r.width))
        .collect::<Result<_>>()?;
    let m = views.len();
    let matrix = cka_matrix(&views, &crate::progress::Hidden)?;
    let (mut site_a, mut step_a, mut site_b, mut step_b, mut value) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, a) in reps.reps.iter().enumerate() {
        for (j, b) in reps.reps.iter().enumerate() {
            site_a.push(a.site.clone());
            step_a.push(a.step as u32);
            site_b.push(b.site.clone());
            step_b.push(b.step as u32);
            value.push(matrix[i * m + j]);
        }
    }
    let table = df!(
        "site_a" => site_a, "step_a" => step_a, "site_b" => site_b, "step_b" => step_b,
        "cka" => value, "n" => vec![reps.samples.len() as u32; m * m],
    )?;
    out.tables.push(("cka".into(), table));
    let names: Vec<String> = reps
        .reps
        .iter()
        .map(|r| format!("{}@{}", r.site, r.step))
        .collect();
    let svg = plots::infoloss::cka(&names, &matrix, reps.samples.len()).map_err(plot_error)?;
    out.plots.push(("infoloss-cka".into(), svg));
    Ok(())
}

// ---------------------------------------------------------------- mutual information

/// One row of `mutual_info`.
#[derive(Debug, Clone, PartialEq)]
pub struct MiRow {
    pub label: String,
    pub site: String,
    pub step: u16,
    pub estimator: String,
    /// The estimate, clamped to the label's entropy when it exceeded it.
    pub mi_nats: Option<f64>,
    pub mi_raw_nats: Option<f64>,
    /// Entropy of a categorical label (the MI ceiling); `None` for continuous labels.
    pub label_entropy: Option<f64>,
    pub clamped: bool,
    pub n: u32,
    pub components: u32,
    /// k asked for, and k the kNN estimator used (null for the Gaussian one).
    pub neighbours: u32,
    pub neighbours_used: Option<u32>,
    /// Why there is no estimate.
    pub note: Option<String>,
}

/// The label of each representation row (`samples` order, at `step`) and the rows that
/// have one. Classes become codes, continuous values are kept when finite.
fn mi_label(label: &Label, samples: &[u32], step: u16) -> (MiLabel, Vec<usize>) {
    let mut keep = Vec::new();
    let mi = match &label.values {
        LabelValues::Classes { by_key, .. } => {
            let mut codes = Vec::new();
            for (i, &s) in samples.iter().enumerate() {
                if let Some(&c) = by_key.get(&label.key(s, step, None)) {
                    keep.push(i);
                    codes.push(c);
                }
            }
            MiLabel::Categorical(codes)
        }
        LabelValues::Continuous(by_key) => {
            let mut values = Vec::new();
            for (i, &s) in samples.iter().enumerate() {
                if let Some(&v) = by_key.get(&label.key(s, step, None)) {
                    if v.is_finite() {
                        keep.push(i);
                        values.push(v);
                    }
                }
            }
            MiLabel::Continuous(values)
        }
    };
    (mi, keep)
}

fn mutual_info(plan: &Plan, reps: &Reps, ctx: &Ctx, out: &mut Output) -> Result<()> {
    let o = &plan.options;
    let opts = MiOptions {
        components: o.components,
        neighbours: o.neighbours,
        max_points: o.max_points,
        seed: o.seed,
    };
    ctx.progress
        .set_length((plan.labels.len() * reps.reps.len()) as u64);
    let mut rows = Vec::new();
    for r in &reps.reps {
        ctx.check()?;
        // One PCA per representation, shared by every label.
        let scores = PrincipalScores::new(Representation::new(&r.x, r.width)?, o.components);
        for label in &plan.labels {
            ctx.progress.inc(1);
            let (mi, keep) = mi_label(label, &reps.samples, r.step);
            let skipped = |note: String| {
                ["gaussian", "ksg"].map(|e| MiRow {
                    label: label.name.clone(),
                    site: r.site.clone(),
                    step: r.step,
                    estimator: e.into(),
                    mi_nats: None,
                    mi_raw_nats: None,
                    label_entropy: mi.entropy_nats(),
                    clamped: false,
                    n: keep.len() as u32,
                    components: 0,
                    neighbours: o.neighbours as u32,
                    neighbours_used: None,
                    note: Some(note.clone()),
                })
            };
            if mi.is_constant() {
                rows.extend(skipped(
                    "the label takes a single value in these samples".into(),
                ));
                continue;
            }
            let result = scores
                .as_ref()
                .map_err(|e| Error::Invalid(e.to_string()))
                .and_then(|s| mutual_information_from_scores(&s.select(&keep), &mi, &opts));
            match result {
                Ok(estimates) => rows.extend(estimates.iter().map(|e| MiRow {
                    label: label.name.clone(),
                    site: r.site.clone(),
                    step: r.step,
                    estimator: e.estimator.as_str().into(),
                    mi_nats: Some(e.mi_nats),
                    mi_raw_nats: Some(e.raw_nats),
                    label_entropy: e.bound_nats,
                    clamped: e.clamped,
                    n: e.n as u32,
                    components: e.components as u32,
                    neighbours: o.neighbours as u32,
                    neighbours_used: e.neighbours.map(|k| k as u32),
                    note: None,
                })),
                Err(err) => rows.extend(skipped(err.to_string())),
            }
        }
    }
    out.tables.push(("mutual_info".into(), mi_frame(&rows)?));
    for label in &plan.labels {
        let mine: Vec<&MiRow> = rows.iter().filter(|r| r.label == label.name).collect();
        if mine.iter().all(|r| r.mi_nats.is_none()) {
            continue;
        }
        let svg =
            plots::infoloss::mutual_info(&label.name, &mine, o.neighbours).map_err(plot_error)?;
        out.plots.push((
            format!("infoloss-mi-{}", plots::file_safe(&label.name)),
            svg,
        ));
    }
    Ok(())
}

fn mi_frame(rows: &[MiRow]) -> Result<DataFrame> {
    Ok(df!(
        "label" => rows.iter().map(|r| r.label.clone()).collect::<Vec<_>>(),
        "site" => rows.iter().map(|r| r.site.clone()).collect::<Vec<_>>(),
        "step" => rows.iter().map(|r| r.step as u32).collect::<Vec<_>>(),
        "estimator" => rows.iter().map(|r| r.estimator.clone()).collect::<Vec<_>>(),
        "mi_nats" => rows.iter().map(|r| r.mi_nats).collect::<Vec<_>>(),
        "mi_raw_nats" => rows.iter().map(|r| r.mi_raw_nats).collect::<Vec<_>>(),
        "label_entropy_nats" => rows.iter().map(|r| r.label_entropy).collect::<Vec<_>>(),
        "clamped_to_entropy" => rows.iter().map(|r| r.clamped).collect::<Vec<_>>(),
        "n" => rows.iter().map(|r| r.n).collect::<Vec<_>>(),
        "components" => rows.iter().map(|r| r.components).collect::<Vec<_>>(),
        "neighbours" => rows.iter().map(|r| r.neighbours).collect::<Vec<_>>(),
        "neighbours_used" => rows.iter().map(|r| r.neighbours_used).collect::<Vec<_>>(),
        "note" => rows.iter().map(|r| r.note.clone()).collect::<Vec<_>>(),
    )?)
}

/// Reads `tables/mutual_info.parquet` back into rows.
pub fn mi_rows(df: &DataFrame) -> Result<Vec<MiRow>> {
    let text = |c: &str| -> Result<Vec<Option<String>>> {
        Ok(df
            .column(c)?
            .cast(&DataType::String)?
            .str()?
            .iter()
            .map(|v| v.map(str::to_string))
            .collect())
    };
    let float = |c: &str| -> Result<Vec<Option<f64>>> {
        Ok(df
            .column(c)?
            .cast(&DataType::Float64)?
            .f64()?
            .iter()
            .collect())
    };
    let int = |c: &str| -> Result<Vec<Option<u32>>> {
        Ok(df
            .column(c)?
            .cast(&DataType::UInt32)?
            .u32()?
            .iter()
            .collect())
    };
    let (label, site, est, note) = (
        text("label")?,
        text("site")?,
        text("estimator")?,
        text("note")?,
    );
    let (mi, raw, h) = (
        float("mi_nats")?,
        float("mi_raw_nats")?,
        float("label_entropy_nats")?,
    );
    let (step, n, comp, k, k_used) = (
        int("step")?,
        int("n")?,
        int("components")?,
        int("neighbours")?,
        int("neighbours_used")?,
    );
    let clamped: Vec<bool> = df
        .column("clamped_to_entropy")?
        .bool()?
        .iter()
        .map(|v| v.unwrap_or(false))
        .collect();
    Ok((0..df.height())
        .map(|i| MiRow {
            label: label[i].clone().unwrap_or_default(),
            site: site[i].clone().unwrap_or_default(),
            step: step[i].unwrap_or(0) as u16,
            estimator: est[i].clone().unwrap_or_default(),
            mi_nats: mi[i],
            mi_raw_nats: raw[i],
            label_entropy: h[i],
            clamped: clamped[i],
            n: n[i].unwrap_or(0),
            components: comp[i].unwrap_or(0),
            neighbours: k[i].unwrap_or(0),
            neighbours_used: k_used[i],
            note: note[i].clone(),
        })
        .collect())
}

// ---------------------------------------------------------------- report

/// The report's section: reconstruction with intervals, MI per label and step, with
/// every clamped estimate and lowered k said out loud.
pub fn report(run: &Run, record: &AnalysisRecord) -> Result<Section> {
    let mut section = Section {
        title: "Information loss".into(),
        note: "Reconstruction between image sites (bootstrap 95% intervals over samples), \
               linear CKA between representations, and mutual information between labels \
               and each representation's top principal components: a Gaussian estimate and \
               a kNN one (KSG; Ross's variant for classes). Estimates above a label's entropy \
               are clamped to it and flagged."
            .into(),
        plots: record.plots.clone(),
        ..Section::default()
    };
    if record.tables.iter().any(|t| t == "infoloss_summary") {
        let (finding, table) = reconstruction_report(&run.table("infoloss_summary")?)?;
        section.findings.push(finding);
        section.tables.push(table);
    }
    if record.tables.iter().any(|t| t == "mutual_info") {
        let rows = mi_rows(&run.table("mutual_info")?)?;
        let (findings, table) = mi_report(&rows);
        section.findings.extend(findings);
        section.tables.push(table);
    }
    Ok(section)
}

fn reconstruction_report(df: &DataFrame) -> Result<(String, Table)> {
    let text = |c: &str| -> Result<Vec<String>> {
        Ok(df
            .column(c)?
            .str()?
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect())
    };
    let float = |c: &str| -> Result<Vec<f64>> {
        Ok(df
            .column(c)?
            .f64()?
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect())
    };
    let (metric, from, to) = (text("metric")?, text("from_site")?, text("to_site")?);
    let (mean, lo, hi, ratio) = (
        float("mean")?,
        float("ci95_low")?,
        float("ci95_high")?,
        float("compression_ratio")?,
    );
    let n = df.column("n")?.u32()?.get(0).unwrap_or(0);
    let at = |m: &str| metric.iter().position(|x| x == m).unwrap_or(0);
    let (p, s, e) = (at("psnr_db"), at("ssim"), at("mse"));
    let finding = format!(
        "`{}` -> `{}` ({n} samples{}): PSNR {:.1} dB [95% CI {:.1}, {:.1}], SSIM {:.3} \
         [{:.3}, {:.3}], MSE {:.5} [{:.5}, {:.5}].",
        from.first().cloned().unwrap_or_default(),
        to.first().cloned().unwrap_or_default(),
        ratio
            .first()
            .filter(|r| r.is_finite())
            .map_or(String::new(), |r| format!(", compression {r:.1}x")),
        mean[p],
        lo[p],
        hi[p],
        mean[s],
        lo[s],
        hi[s],
        mean[e],
        lo[e],
        hi[e],
    );
    let table = Table {
        caption: "reconstruction".into(),
        header: ["metric", "mean", "95% CI"].map(String::from).to_vec(),
        rows: (0..metric.len())
            .map(|i| {
                vec![
                    metric[i].clone(),
                    format!("{:.4}", mean[i]),
                    format!("[{:.4}, {:.4}]", lo[i], hi[i]),
                ]
            })
            .collect(),
    };
    Ok((finding, table))
}

fn mi_report(rows: &[MiRow]) -> (Vec<String>, Table) {
    let mut findings = Vec::new();
    let mut table = Table {
        caption: "mutual information: the highest estimate per label and estimator".into(),
        header: [
            "label",
            "estimator",
            "site",
            "step",
            "MI (nats)",
            "label entropy",
            "note",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    let labels: BTreeSet<&str> = rows.iter().map(|r| r.label.as_str()).collect();
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for label in labels {
        for est in ["gaussian", "ksg"] {
            let mine: Vec<&MiRow> = rows
                .iter()
                .filter(|r| r.label == label && r.estimator == est && r.mi_nats.is_some())
                .collect();
            let Some(best) = mine.iter().max_by(|a, b| {
                a.mi_nats
                    .partial_cmp(&b.mi_nats)
                    .unwrap_or(std::cmp::Ordering::Equal)
            }) else {
                continue;
            };
            let by_step: Vec<String> = mine
                .iter()
                .filter(|r| r.site == best.site)
                .map(|r| format!("{} at step {}", f(r.mi_nats), r.step))
                .collect();
            findings.push(format!(
                "MI of `{label}` ({est}{}): highest at `{}` step {}, {} nats{}; at `{}`: {}.",
                if est == "ksg" {
                    format!(", k = {}", best.neighbours_used.unwrap_or(best.neighbours))
                } else {
                    format!(", {} components", best.components)
                },
                best.site,
                best.step,
                f(best.mi_nats),
                best.label_entropy.map_or(String::new(), |h| format!(
                    " of at most {h:.2} (the label's entropy)"
                )),
                best.site,
                by_step.join(", ")
            ));
            table.rows.push(vec![
                label.to_string(),
                est.to_string(),
                best.site.clone(),
                best.step.to_string(),
                f(best.mi_nats),
                f(best.label_entropy),
                if best.clamped {
                    "clamped".into()
                } else {
                    String::new()
                },
            ]);
        }
        let clamped: Vec<&MiRow> = rows
            .iter()
            .filter(|r| r.label == label && r.clamped)
            .collect();
        if let Some(worst) = clamped.iter().max_by(|a, b| {
            a.mi_raw_nats
                .partial_cmp(&b.mi_raw_nats)
                .unwrap_or(std::cmp::Ordering::Equal)
        }) {
            findings.push(format!(
                "Warning: {} estimate(s) of MI with `{label}` exceeded the label's entropy \
                 {} nats and were clamped to it (the largest, {} at `{}` step {}, was {} \
                 nats): there the estimator overstates, read those values as \"at the bound\".",
                clamped.len(),
                f(worst.label_entropy),
                worst.estimator,
                worst.site,
                worst.step,
                f(worst.mi_raw_nats)
            ));
        }
        if let Some(r) = rows
            .iter()
            .find(|r| r.label == label && r.neighbours_used.is_some_and(|k| k < r.neighbours))
        {
            findings.push(format!(
                "Warning: the kNN estimate for `{label}` used k = {} instead of {} (a class has \
                 too few samples for {} same-class neighbours).",
                r.neighbours_used.unwrap_or(0),
                r.neighbours,
                r.neighbours
            ));
        }
    }
    (findings, table)
}

#[cfg(test)]
mod tests;
