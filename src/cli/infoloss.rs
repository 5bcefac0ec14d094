//! `latentlens infoloss`: what is lost between recording points. Reconstruction quality
//! between two image sites, linear CKA between every (site, step) representation, and the
//! mutual information between each label and each representation, written as tables and
//! plots into the run folder.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use anyhow::{bail, Context};
use plotters::prelude::*;
use polars::prelude::{df, DataFrame, DataType};

use crate::analysis::cka::{cka_matrix, Representation};
use crate::analysis::infoloss::{
    compression_ratio, mutual_information_from_scores, reconstruction_per_sample, retention,
    summarise_reconstruction, Label, MiOptions, PrincipalScores, ProbeScore, RetentionRow, Summary,
};
use crate::analysis::mi::subsample;
use crate::analysis::ssim::ImageShape;
use crate::cli::common::{bar, site_patterns};
use crate::cli::plot::{file_safe, viridis};
use crate::store::{Latents, Run};

/// Steps per site kept when `--steps` is not given.
const DEFAULT_STEPS: usize = 8;
/// An integer label with at most this many distinct values is treated as categorical.
const MAX_INTEGER_CLASSES: usize = 32;
/// Refuse to hold more than this many bytes of representations at once.
const MEMORY_BUDGET: usize = 2 << 30;

/// Measure what is lost between recording points: reconstruction (MSE, PSNR, SSIM),
/// linear CKA between sites and steps, and label mutual information.
#[derive(Debug, Clone, clap::Args)]
pub struct InfolossArgs {
    /// Run folder made by `latentlens record`.
    #[arg(long)]
    pub run: PathBuf,

    /// Original image site for reconstruction metrics [default: `image`, when recorded].
    #[arg(long, requires = "to")]
    pub from: Option<String>,

    /// Reconstructed image site [default: `vae.decoder.out`, when recorded].
    #[arg(long, requires = "from")]
    pub to: Option<String>,

    /// Latent site whose width gives the compression ratio numel(from) / numel(latent).
    #[arg(long, default_value = "vae.encoder.mean")]
    pub latent: String,

    /// max - min of the pixel scale of the image sites (2 for the models' [-1, 1]).
    #[arg(long, default_value_t = 2.0)]
    pub data_range: f64,

    /// Sites for CKA and mutual information: names or globs (`unet.*`), comma-separated
    /// or repeated [default: every recorded site].
    #[arg(long, num_args = 1..)]
    pub sites: Vec<String>,

    /// Steps for CKA and mutual information: `all`, `last`, `0,10,49`, `0..50:5`
    /// [default: up to 8 evenly spaced steps, first and last included]. Sites that fire
    /// once per generation always use their single step.
    #[arg(long)]
    pub steps: Option<String>,

    /// Label columns of samples.parquet for mutual information [default: all].
    #[arg(long, num_args = 1..)]
    pub labels: Vec<String>,

    /// Seed of the sample subset, the bootstrap and the kNN tie-breaking jitter.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Samples used at most for CKA and mutual information (a seeded subset above that;
    /// the kNN estimator costs O(n²)).
    #[arg(long, default_value_t = 2000)]
    pub max_points: usize,

    /// Principal components of each representation used for mutual information.
    #[arg(long, default_value_t = 8)]
    pub components: usize,

    /// k of the kNN (KSG) estimator.
    #[arg(long, default_value_t = 3)]
    pub neighbours: usize,

    /// Reference site of decodability retention: every probe score in
    /// tables/probes.parquet is divided by this site's score for the same label.
    #[arg(long, default_value = "image")]
    pub retention_from: String,
}

pub fn run(args: InfolossArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.max_points >= 10, "--max-points must be at least 10");
    anyhow::ensure!(args.components >= 1, "--components must be at least 1");
    anyhow::ensure!(args.neighbours >= 1, "--neighbours must be at least 1");
    let run = Run::open(&args.run)?;
    let sites = run.sites()?;
    if sites.is_empty() {
        bail!(
            "{} holds no latents; record some first",
            run.root().display()
        );
    }
    reconstruction(&run, &args, &sites)?;
    let reps = representations(&run, &args, &sites)?;
    if reps.is_empty() {
        eprintln!("no representations selected; skipping CKA and mutual information");
        return Ok(());
    }
    cka(&run, &reps)?;
    mutual_info(&run, &args, &reps)?;
    decodability_retention(&run, &args.retention_from)?;
    Ok(())
}

// ---------------------------------------------------------------- retention

/// Probe scores relative to the reference site, from `latentlens probe`'s table: balanced
/// accuracy for categorical labels, R² for continuous ones.
fn decodability_retention(run: &Run, reference: &str) -> anyhow::Result<()> {
    if !run.tables()?.iter().any(|t| t == "probes") {
        eprintln!(
            "no tables/probes.parquet: run `latentlens probe` (including --sites {reference}) \
             for decodability retention"
        );
        return Ok(());
    }
    let probes = run.table("probes")?;
    let scores = probe_scores(&probes)?;
    let rows = retention(&scores, reference);
    if rows.is_empty() {
        eprintln!(
            "tables/probes.parquet has no scores at `{reference}`; skipping decodability retention"
        );
        return Ok(());
    }
    let mut table = df!(
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
    crate::outln!(
        "wrote {}",
        run.write_table("retention", &mut table)?.display()
    );
    let svg = retention_svg(&rows, reference)?;
    crate::outln!(
        "wrote {}",
        run.write_plot("infoloss-retention", &svg)?.display()
    );
    Ok(())
}

fn probe_scores(probes: &DataFrame) -> anyhow::Result<Vec<ProbeScore>> {
    let text = |name: &str| -> anyhow::Result<Vec<String>> {
        Ok(probes
            .column(name)?
            .str()?
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect())
    };
    let (sites, labels, kinds, metrics) = (
        text("site")?,
        text("label")?,
        text("kind")?,
        text("metric")?,
    );
    let steps: Vec<u16> = probes
        .column("step")?
        .u16()?
        .iter()
        .map(|v| v.unwrap_or(0))
        .collect();
    let values: Vec<Option<f64>> = probes.column("value")?.f64()?.iter().collect();
    Ok((0..probes.height())
        .filter(|&i| {
            let headline = if kinds[i] == "continuous" {
                "r2"
            } else {
                "balanced_accuracy"
            };
            metrics[i] == headline && values[i].is_some_and(f64::is_finite)
        })
        .map(|i| ProbeScore {
            site: sites[i].clone(),
            step: steps[i],
            label: labels[i].clone(),
            metric: metrics[i].clone(),
            value: values[i].unwrap_or(f64::NAN),
        })
        .collect())
}

/// Retention by step, one line per (label, site); sites that fire once are single points.
fn retention_svg(rows: &[RetentionRow], reference: &str) -> anyhow::Result<String> {
    let series: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.label.clone(), r.site.clone()))
        .collect();
    let x_hi = rows.iter().map(|r| r.step).max().unwrap_or(0).max(1) as f64;
    let finite = || rows.iter().map(|r| r.retention).filter(|v| v.is_finite());
    let y_lo = finite().fold(0.0f64, f64::min);
    let y_hi = finite().fold(1.0f64, f64::max) * 1.05;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Decodability retention: probe score / score at `{reference}`"),
                ("sans-serif", 20),
            )
            .margin(14)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.3..x_hi + 0.3, y_lo..y_hi)?;
        chart
            .configure_mesh()
            .x_labels((x_hi as usize + 1).min(12))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("step")
            .y_desc("retention (1 = as decodable as the reference)")
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .draw()?;
        for (i, (label, site)) in series.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| &r.label == label && &r.site == site && r.retention.is_finite())
                .map(|r| (r.step as f64, r.retention))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))?
                .label(format!("{label} @ {site}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

// ---------------------------------------------------------------- reconstruction

fn reconstruction(run: &Run, args: &InfolossArgs, sites: &[String]) -> anyhow::Result<()> {
    let (from, to) = match (&args.from, &args.to) {
        (Some(f), Some(t)) => (f.clone(), t.clone()),
        _ => {
            let has = |s: &str| sites.iter().any(|x| x == s);
            if !(has("image") && has("vae.decoder.out")) {
                eprintln!(
                    "reconstruction: skipped (needs `image` and `vae.decoder.out`, or --from/--to)"
                );
                return Ok(());
            }
            ("image".to_string(), "vae.decoder.out".to_string())
        }
    };
    for s in [&from, &to] {
        if !sites.contains(s) {
            return Err(crate::Error::UnknownSite {
                name: s.clone(),
                valid: sites.to_vec(),
            }
            .into());
        }
    }
    let shape = image_shape(run, &from)?;
    let to_shape = image_shape(run, &to)?;
    anyhow::ensure!(
        shape == to_shape,
        "--from {from} has shape {shape:?} but --to {to} has {to_shape:?}; reconstruction \
         compares same-shaped sites"
    );
    let a = one_row_per_sample(&run.read_latents(&from, None)?, &from, false)?;
    let b = one_row_per_sample(&run.read_latents(&to, None)?, &to, true)?;
    let common: Vec<u32> = a.keys().filter(|s| b.contains_key(s)).copied().collect();
    anyhow::ensure!(!common.is_empty(), "{from} and {to} share no samples");
    let flat = |m: &BTreeMap<u32, Vec<f32>>| -> Vec<f32> {
        common.iter().flat_map(|s| m[s].iter().copied()).collect()
    };
    if !crate::analysis::ssim::ssim_applies(shape) {
        eprintln!(
            "reconstruction: {}x{}x{} images are smaller than the 11x11 SSIM window; \
             SSIM left empty",
            shape.channels, shape.height, shape.width
        );
    }
    let progress = bar(common.len() as u64, "ssim");
    let rows = reconstruction_per_sample(&flat(&a), &flat(&b), shape, args.data_range, &progress)?;
    progress.finish_and_clear();
    let summary = summarise_reconstruction(&rows, args.seed)?;
    let ratio = match site_width(run, &args.latent) {
        Some(w) => compression_ratio(shape.numel(), w)?,
        None => {
            eprintln!(
                "compression ratio: latent site `{}` was not recorded; left empty",
                args.latent
            );
            f64::NAN
        }
    };
    let n = common.len();
    let mut per_sample = df!(
        "sample" => common.clone(),
        "from_site" => vec![from.clone(); n],
        "to_site" => vec![to.clone(); n],
        "mse" => rows.iter().map(|r| r.mse).collect::<Vec<_>>(),
        "psnr_db" => rows.iter().map(|r| r.psnr).collect::<Vec<_>>(),
        "ssim" => rows.iter().map(|r| r.ssim).collect::<Vec<_>>(),
    )?;
    let path = run.write_table("infoloss_reconstruction", &mut per_sample)?;
    eprintln!("wrote {}", path.display());
    let metrics: [(&str, Summary); 3] = [
        ("mse", summary.mse),
        ("psnr_db", summary.psnr),
        ("ssim", summary.ssim),
    ];
    let mut table = df!(
        "from_site" => vec![from.clone(); 3],
        "to_site" => vec![to.clone(); 3],
        "metric" => metrics.iter().map(|(m, _)| m.to_string()).collect::<Vec<_>>(),
        "mean" => metrics.iter().map(|(_, s)| s.mean).collect::<Vec<_>>(),
        "ci95_low" => metrics.iter().map(|(_, s)| s.ci_low).collect::<Vec<_>>(),
        "ci95_high" => metrics.iter().map(|(_, s)| s.ci_high).collect::<Vec<_>>(),
        "n" => metrics.iter().map(|(_, s)| s.n as u32).collect::<Vec<_>>(),
        "data_range" => vec![args.data_range; 3],
        "latent_site" => vec![args.latent.clone(); 3],
        "compression_ratio" => vec![ratio; 3],
    )?;
    let path = run.write_table("infoloss_summary", &mut table)?;
    eprintln!("wrote {}", path.display());
    crate::outln!(
        "{from} -> {to} ({n} samples): SSIM {:.4} [{:.4}, {:.4}], PSNR {:.2} dB, MSE {:.5}, \
         compression {ratio:.1}x",
        summary.ssim.mean,
        summary.ssim.ci_low,
        summary.ssim.ci_high,
        summary.psnr.mean,
        summary.mse.mean
    );
    Ok(())
}

/// The (channels, height, width) of an image site from the manifest's dims.
fn image_shape(run: &Run, site: &str) -> anyhow::Result<ImageShape> {
    let record = run
        .manifest()
        .sites
        .iter()
        .find(|s| s.name == site)
        .with_context(|| format!("site `{site}` is not in the run's manifest"))?;
    let dims: Vec<usize> = record.dims.iter().map(|d| d.size).collect();
    let shape = match dims[..] {
        [c, h, w] => ImageShape::new(c, h, w),
        [h, w] => ImageShape::new(1, h, w),
        _ => bail!(
            "site `{site}` has dims {:?}; reconstruction needs an image site",
            record.dims
        ),
    };
    anyhow::ensure!(
        shape.numel() == record.width,
        "site `{site}` was recorded pooled (width {}), not as whole images {:?}; record it \
         without --pool",
        record.width,
        record.dims
    );
    Ok(shape)
}

fn site_width(run: &Run, site: &str) -> Option<usize> {
    run.manifest()
        .sites
        .iter()
        .find(|s| s.name == site)
        .map(|s| s.width)
}

/// One row per sample of a once-per-generation site: its first step, or its last when
/// `last` (e.g. a per-step site standing for the final output).
fn one_row_per_sample(
    l: &Latents,
    site: &str,
    last: bool,
) -> anyhow::Result<BTreeMap<u32, Vec<f32>>> {
    let steps: BTreeSet<u16> = l.step.iter().copied().collect();
    let Some(&step) = (if last { steps.last() } else { steps.first() }) else {
        bail!("site `{site}` has no rows");
    };
    if steps.len() > 1 {
        eprintln!(
            "reconstruction: `{site}` fires at {} steps; using step {step}",
            steps.len()
        );
    }
    let mut out = BTreeMap::new();
    for i in 0..l.len() {
        if l.step[i] != step {
            continue;
        }
        if l.position[i].is_some() {
            bail!("site `{site}` has one row per position; reconstruction needs whole images");
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

impl Reps {
    fn is_empty(&self) -> bool {
        self.reps.is_empty()
    }
}

fn representations(run: &Run, args: &InfolossArgs, sites: &[String]) -> anyhow::Result<Reps> {
    let patterns = site_patterns(&args.sites);
    let chosen: Vec<String> = if patterns.is_empty() {
        sites.to_vec()
    } else {
        for p in &patterns {
            if !sites.iter().any(|s| p.matches(s)) {
                return Err(crate::Error::UnknownSite {
                    name: p.as_str().to_string(),
                    valid: sites.to_vec(),
                }
                .into());
            }
        }
        sites
            .iter()
            .filter(|s| patterns.iter().any(|p| p.matches(s)))
            .cloned()
            .collect()
    };
    let all_samples: Vec<u32> = sample_ids(run)?;
    let keep = subsample(all_samples.len(), args.max_points, args.seed);
    let samples: Vec<u32> = keep.iter().map(|&i| all_samples[i]).collect();
    let index: HashMap<u32, usize> = samples.iter().enumerate().map(|(i, &s)| (s, i)).collect();

    let mut plan = Vec::new();
    let mut bytes = 0usize;
    for site in &chosen {
        let available = site_steps(run, site)?;
        let steps = pick_steps(&available, args.steps.as_deref())?;
        let width = site_width(run, site).unwrap_or(0);
        bytes += steps.len() * samples.len() * width * 4;
        plan.push((site.clone(), steps));
    }
    anyhow::ensure!(
        bytes <= MEMORY_BUDGET,
        "the selected representations need {:.1} GB in memory; narrow them with --sites, \
         --steps or --max-points",
        bytes as f64 / 1e9
    );

    let mut reps = Vec::new();
    let progress = bar(plan.len() as u64, "read");
    for (site, steps) in plan {
        reps.extend(pooled(run, &site, &steps, &index)?);
        progress.inc(1);
    }
    progress.finish_and_clear();
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
    if rows.len() < samples.len() {
        eprintln!(
            "{} of {} samples are missing from some representation; using the {} shared",
            samples.len() - rows.len(),
            samples.len(),
            rows.len()
        );
    }
    for r in &mut reps {
        r.x = rows
            .iter()
            .flat_map(|&i| r.x[i * r.width..(i + 1) * r.width].to_vec())
            .collect();
    }
    let samples = rows.iter().map(|&i| samples[i]).collect();
    Ok(Reps { samples, reps })
}

fn sample_ids(run: &Run) -> anyhow::Result<Vec<u32>> {
    let df = run.samples()?;
    let col = df
        .column("sample")
        .context("samples.parquet has no `sample` column")?
        .cast(&DataType::UInt32)?;
    let mut ids: Vec<u32> = col.u32()?.iter().flatten().collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The distinct steps a site fired at (one streaming pass).
fn site_steps(run: &Run, site: &str) -> anyhow::Result<Vec<u16>> {
    let mut steps = BTreeSet::new();
    run.scan_latents(site, None, 65_536, &mut |l| {
        steps.extend(l.step.iter().copied());
        Ok(())
    })?;
    Ok(steps.into_iter().collect())
}

fn pick_steps(available: &[u16], spec: Option<&str>) -> anyhow::Result<Vec<u16>> {
    if available.len() <= 1 {
        return Ok(available.to_vec());
    }
    let (first, last) = (available[0], available[available.len() - 1]);
    let wanted: Vec<u16> = match spec {
        Some(spec) => match crate::steps::parse_steps(spec, first, last + 1)? {
            Some(list) => list,
            None => available.to_vec(),
        },
        None => evenly_spaced(available, DEFAULT_STEPS),
    };
    Ok(wanted
        .into_iter()
        .filter(|s| available.contains(s))
        .collect())
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

/// Mean over positions of each (sample, step) row of a site, for the samples in `index`.
/// Samples without rows stay NaN.
fn pooled(
    run: &Run,
    site: &str,
    steps: &[u16],
    index: &HashMap<u32, usize>,
) -> anyhow::Result<Vec<Rep>> {
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

fn cka(run: &Run, reps: &Reps) -> anyhow::Result<()> {
    let views: Vec<Representation<'_>> = reps
        .reps
        .iter()
        .map(|r| Representation::new(&r.x, r.width))
        .collect::<crate::Result<_>>()?;
    let m = views.len();
    let progress = bar(0, "cka");
    let matrix = cka_matrix(&views, &progress)?;
    progress.finish_and_clear();
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
    let mut table = df!(
        "site_a" => site_a, "step_a" => step_a, "site_b" => site_b, "step_b" => step_b,
        "cka" => value, "n" => vec![reps.samples.len() as u32; m * m],
    )?;
    let path = run.write_table("cka", &mut table)?;
    eprintln!("wrote {}", path.display());
    let names: Vec<String> = reps
        .reps
        .iter()
        .map(|r| format!("{}@{}", r.site, r.step))
        .collect();
    let svg = cka_heatmap_svg(&names, &matrix, reps.samples.len())?;
    let path = run.write_plot("infoloss-cka", &svg)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Linear CKA between every pair of representations as a heatmap with a colour bar.
fn cka_heatmap_svg(names: &[String], matrix: &[f64], n: usize) -> anyhow::Result<String> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let m = names.len();
    let cell = (640 / m.max(1)).clamp(10, 48) as u32;
    let longest = names.iter().map(|s| s.chars().count()).max().unwrap_or(1) as u32;
    let label_area = 16 + 7 * longest;
    let side = cell * m as u32;
    let main_w = side + label_area + 30;
    let (w, h) = (main_w + 110, (side + label_area + 60).max(320));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let (main, legend) = root.split_horizontally(main_w);
        let mut chart = ChartBuilder::on(&main)
            .caption(
                format!("Linear CKA between representations (n = {n})"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(label_area)
            .y_label_area_size(label_area)
            .build_cartesian_2d(0.0..m as f64, 0.0..m as f64)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()?;
        // Row i is drawn i cells from the top.
        chart.draw_series((0..m).flat_map(|i| {
            (0..m).map(move |j| {
                let top = (m - i) as f64;
                let v = matrix[i * m + j];
                let color = if v.is_finite() {
                    viridis(v)
                } else {
                    RGBColor(200, 200, 200)
                };
                Rectangle::new(
                    [(j as f64, top), (j as f64 + 1.0, top - 1.0)],
                    color.filled(),
                )
            })
        }))?;
        // Labels by hand: the mesh centres rotated text on the tick, so long names would
        // run into the plot.
        let below = TextStyle::from(
            ("sans-serif", 13)
                .into_font()
                .transform(FontTransform::Rotate90),
        )
        .pos(Pos::new(HPos::Left, VPos::Center));
        let left = TextStyle::from(("sans-serif", 13).into_font())
            .pos(Pos::new(HPos::Right, VPos::Center));
        for (k, name) in names.iter().enumerate() {
            let centre = k as f64 + 0.5;
            let (x, y) = chart.backend_coord(&(centre, 0.0));
            root.draw(&Text::new(name.clone(), (x, y + 6), below.clone()))?;
            let (x, y) = chart.backend_coord(&(0.0, m as f64 - centre));
            root.draw(&Text::new(name.clone(), (x - 6, y), left.clone()))?;
        }
        let mut bar_chart = ChartBuilder::on(&legend)
            .margin_top(50)
            .margin_bottom(label_area as i32 + 20)
            .margin_right(20)
            .y_label_area_size(45)
            .caption("CKA", ("sans-serif", 14))
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
        bar_chart
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(6)
            .label_style(("sans-serif", 12))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .draw()?;
        bar_chart.draw_series((0..100).map(|k| {
            let lo = k as f64 / 100.0;
            Rectangle::new([(0.0, lo), (1.0, lo + 0.01)], viridis(lo + 0.005).filled())
        }))?;
        root.present()?;
    }
    Ok(svg)
}

// ---------------------------------------------------------------- mutual information

struct MiRow {
    label: String,
    site: String,
    step: u16,
    estimator: &'static str,
    mi_nats: f64,
    n: usize,
    components: usize,
    /// Entropy of a categorical label (the MI ceiling); `None` for continuous labels.
    label_entropy: Option<f64>,
}

fn mutual_info(run: &Run, args: &InfolossArgs, reps: &Reps) -> anyhow::Result<()> {
    let samples_df = run.samples()?;
    let names: Vec<String> = if args.labels.is_empty() {
        samples_df
            .get_column_names()
            .iter()
            .map(|s| s.to_string())
            .filter(|s| s != "sample")
            .collect()
    } else {
        args.labels
            .iter()
            .flat_map(|l| l.split(','))
            .map(|s| s.trim().to_string())
            .collect()
    };
    if names.is_empty() {
        eprintln!("mutual information: samples.parquet has no label columns; skipped");
        return Ok(());
    }
    let opts = MiOptions {
        components: args.components,
        neighbours: args.neighbours,
        max_points: args.max_points,
        seed: args.seed,
    };
    let mut labels: Vec<(String, Label, Vec<usize>)> = Vec::new();
    for name in &names {
        let (label, keep) = label_for(&samples_df, name, &reps.samples)?;
        if label.is_constant() {
            eprintln!("mutual information: label `{name}` takes a single value here; skipped");
            continue;
        }
        labels.push((name.clone(), label, keep));
    }
    let mut rows = Vec::new();
    let progress = bar((labels.len() * reps.reps.len()) as u64, "mi");
    for r in &reps.reps {
        // One PCA per representation, shared by every label.
        let scores = PrincipalScores::new(Representation::new(&r.x, r.width)?, args.components);
        for (name, label, keep) in &labels {
            progress.inc(1);
            let result = scores
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{e}"))
                .and_then(|s| {
                    Ok(mutual_information_from_scores(
                        &s.select(keep),
                        label,
                        &opts,
                    )?)
                });
            match result {
                Ok(estimates) => rows.extend(estimates.iter().map(|e| MiRow {
                    label: name.clone(),
                    site: r.site.clone(),
                    step: r.step,
                    estimator: e.estimator.as_str(),
                    mi_nats: e.mi_nats,
                    n: e.n,
                    components: e.components,
                    label_entropy: label.entropy_nats(),
                })),
                Err(err) => progress.suspend(|| {
                    eprintln!(
                        "mutual information {name} / {}@{}: skipped: {err}",
                        r.site, r.step
                    )
                }),
            }
        }
    }
    progress.finish_and_clear();
    let mut table = df!(
        "label" => rows.iter().map(|r| r.label.clone()).collect::<Vec<_>>(),
        "site" => rows.iter().map(|r| r.site.clone()).collect::<Vec<_>>(),
        "step" => rows.iter().map(|r| r.step as u32).collect::<Vec<_>>(),
        "estimator" => rows.iter().map(|r| r.estimator.to_string()).collect::<Vec<_>>(),
        "mi_nats" => rows.iter().map(|r| r.mi_nats).collect::<Vec<_>>(),
        "n" => rows.iter().map(|r| r.n as u32).collect::<Vec<_>>(),
        "components" => rows.iter().map(|r| r.components as u32).collect::<Vec<_>>(),
        "label_entropy_nats" => rows.iter().map(|r| r.label_entropy).collect::<Vec<_>>(),
    )?;
    let path = run.write_table("mutual_info", &mut table)?;
    eprintln!("wrote {}", path.display());
    for name in &names {
        let mine: Vec<&MiRow> = rows.iter().filter(|r| &r.label == name).collect();
        if mine.is_empty() {
            continue;
        }
        let svg = mi_plot_svg(name, &mine, args.neighbours)?;
        let path = run.write_plot(&format!("infoloss-mi-{}", file_safe(name)), &svg)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The label for the representation rows (`samples` order) and the rows that have one:
/// strings and booleans are categorical, integers too when they take at most 32 values,
/// everything else continuous. Null labels drop their rows.
fn label_for(df: &DataFrame, name: &str, samples: &[u32]) -> anyhow::Result<(Label, Vec<usize>)> {
    let col = df.column(name).with_context(|| {
        let valid: Vec<String> = df
            .get_column_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        format!(
            "no label column `{name}` in samples.parquet; it has: {}",
            valid.join(", ")
        )
    })?;
    let ids = df.column("sample")?.cast(&DataType::UInt32)?;
    let ids: Vec<Option<u32>> = ids.u32()?.iter().collect();
    let dtype = col.dtype().clone();
    // Every label as text or number keyed by sample id.
    let as_text: Option<Vec<Option<String>>> = if dtype.is_string() || dtype.is_bool() {
        let s = col.cast(&DataType::String)?;
        Some(s.str()?.iter().map(|v| v.map(str::to_string)).collect())
    } else {
        None
    };
    let as_number: Vec<Option<f64>> = if as_text.is_none() {
        let s = col.cast(&DataType::Float64).with_context(|| {
            format!("label column `{name}` has type {dtype}, neither text nor numbers")
        })?;
        s.f64()?.iter().collect()
    } else {
        Vec::new()
    };
    let position: HashMap<u32, usize> = ids
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (s, i)))
        .collect();
    let mut keep = Vec::new();
    let label = if let Some(text) = as_text {
        let classes: BTreeSet<&String> = text.iter().flatten().collect();
        let code: HashMap<&String, u32> = classes.into_iter().zip(0..).collect();
        let mut out = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            if let Some(Some(v)) = position.get(s).map(|&p| &text[p]) {
                keep.push(i);
                out.push(code[v]);
            }
        }
        Label::Categorical(out)
    } else {
        let mut values = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            if let Some(Some(v)) = position.get(s).map(|&p| as_number[p]) {
                if v.is_finite() {
                    keep.push(i);
                    values.push(v);
                }
            }
        }
        let distinct: BTreeSet<i64> = values.iter().map(|&v| v as i64).collect();
        if dtype.is_integer() && distinct.len() <= MAX_INTEGER_CLASSES {
            let code: HashMap<i64, u32> = distinct.into_iter().zip(0..).collect();
            Label::Categorical(values.iter().map(|&v| code[&(v as i64)]).collect())
        } else {
            Label::Continuous(values)
        }
    };
    Ok((label, keep))
}

/// MI against step for one label: Gaussian and KSG panels side by side, one line per site,
/// sharing the y range so the estimators compare at a glance.
fn mi_plot_svg(label: &str, rows: &[&MiRow], neighbours: usize) -> anyhow::Result<String> {
    let sites: Vec<&str> = rows
        .iter()
        .map(|r| r.site.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let ceiling = rows.iter().find_map(|r| r.label_entropy);
    let finite = rows
        .iter()
        .map(|r| r.mi_nats)
        .chain(ceiling)
        .filter(|v| v.is_finite());
    let y_min = finite.clone().fold(0.0f64, f64::min);
    let y_max = finite.fold(0.0f64, f64::max);
    let span = (y_max - y_min).max(0.05);
    // Headroom above the data for the legend box, one line per site.
    let entries = sites.len() + usize::from(ceiling.is_some());
    let (pad_low, pad_high) = (span * 0.06, span * (0.1 + 0.07 * entries as f64));
    let x_max = rows.iter().map(|r| r.step).max().unwrap_or(0) as f64;
    let n = rows.iter().map(|r| r.n).max().unwrap_or(0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            &format!("Mutual information between `{label}` and each site (n ≤ {n})"),
            ("sans-serif", 20),
        )?;
        let panels = root.split_evenly((1, 2));
        for (panel, estimator) in panels.iter().zip(["gaussian", "ksg"]) {
            let title = match estimator {
                "gaussian" => "Gaussian estimate on top principal components".to_string(),
                _ => format!("kNN estimate (KSG / Ross), k = {neighbours} neighbours"),
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(title, ("sans-serif", 15))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(55)
                .build_cartesian_2d(-0.5..x_max + 0.5, (y_min - pad_low)..(y_max + pad_high))?;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc("mutual information (nats)")
                .x_label_formatter(&|v| {
                    if v.fract() == 0.0 {
                        format!("{v:.0}")
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|v| format!("{:.2}", if v.abs() < 1e-9 { 0.0 } else { *v }))
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 13))
                .draw()?;
            for (k, site) in sites.iter().enumerate() {
                let color = Palette99::pick(k).to_rgba();
                let mut pts: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| {
                        r.site == *site && r.estimator == estimator && r.mi_nats.is_finite()
                    })
                    .map(|r| (r.step as f64, r.mi_nats))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                    .label(*site)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            }
            if let Some(h) = ceiling {
                let grey = RGBColor(110, 110, 110);
                chart
                    .draw_series(DashedLineSeries::new(
                        [(-0.5, h), (x_max + 0.5, h)],
                        6,
                        4,
                        grey.stroke_width(1),
                    ))?
                    .label("label entropy (ceiling)")
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 11))
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
        }
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: InfolossArgs,
    }

    #[test]
    fn flags_parse_and_from_needs_to() {
        use clap::Parser;
        let w = Wrapper::try_parse_from([
            "infoloss",
            "--run",
            "r",
            "--from",
            "image",
            "--to",
            "vae.decoder.out",
            "--sites",
            "latent,unet.*",
            "--sites",
            "x0_pred",
            "--labels",
            "shape",
            "scale",
            "--steps",
            "0..50:5",
            "--seed",
            "3",
            "--max-points",
            "500",
        ])
        .unwrap();
        let a = w.args;
        assert_eq!(a.run, PathBuf::from("r"));
        assert_eq!(
            (a.from.as_deref(), a.to.as_deref()),
            (Some("image"), Some("vae.decoder.out"))
        );
        assert_eq!(site_patterns(&a.sites).len(), 3);
        assert_eq!(a.labels, vec!["shape", "scale"]);
        assert_eq!(
            (a.seed, a.max_points, a.components, a.neighbours),
            (3, 500, 8, 3)
        );
        assert_eq!(a.data_range, 2.0);
        assert!(Wrapper::try_parse_from(["infoloss", "--run", "r", "--from", "image"]).is_err());
        assert!(Wrapper::try_parse_from(["infoloss"]).is_err());
    }

    #[test]
    fn evenly_spaced_keeps_the_ends() {
        let v: Vec<u16> = (0..50).collect();
        let s = evenly_spaced(&v, 8);
        assert_eq!(s.len(), 8);
        assert_eq!((s[0], s[7]), (0, 49));
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(evenly_spaced(&[0, 1, 2], 8), vec![0, 1, 2]);
    }

    #[test]
    fn pick_steps_follows_the_spec_and_keeps_single_step_sites() {
        let v: Vec<u16> = (0..20).collect();
        assert_eq!(pick_steps(&v, Some("0..20:5")).unwrap(), vec![0, 5, 10, 15]);
        assert_eq!(pick_steps(&v, Some("last")).unwrap(), vec![19]);
        assert_eq!(pick_steps(&[0], Some("5")).unwrap(), vec![0]);
        assert!(pick_steps(&v, Some("99")).is_err());
    }

    #[test]
    fn plots_are_svg_with_titles_and_labels() {
        let names = vec!["latent@0".to_string(), "unet.mid_block@0".to_string()];
        let svg = cka_heatmap_svg(&names, &[1.0, 0.4, 0.4, 1.0], 100).unwrap();
        assert!(
            svg.starts_with("<svg")
                && svg.contains("Linear CKA")
                && svg.contains("unet.mid_block@0")
        );
        let rows: Vec<MiRow> = [("gaussian", 0.5), ("ksg", 0.4)]
            .iter()
            .flat_map(|&(e, v)| {
                (0..3).map(move |s| MiRow {
                    label: "shape".into(),
                    site: "latent".into(),
                    step: s * 10,
                    estimator: e,
                    mi_nats: v + s as f64 * 0.1,
                    n: 100,
                    components: 8,
                    label_entropy: Some(3f64.ln()),
                })
            })
            .collect();
        let refs: Vec<&MiRow> = rows.iter().collect();
        let svg = mi_plot_svg("shape", &refs, 3).unwrap();
        assert!(
            svg.contains("mutual information (nats)")
                && svg.contains("latent")
                && svg.contains("step")
                && svg.contains("label entropy (ceiling)")
        );
    }

    #[test]
    fn labels_are_typed_and_aligned_by_sample() {
        let df = df!(
            "sample" => [3u32, 1, 2],
            "shape" => ["square", "heart", "square"],
            "scale" => [Some(0.5f64), None, Some(1.0)],
            "digit" => [7i64, 3, 7],
        )
        .unwrap();
        let (l, keep) = label_for(&df, "shape", &[1, 2, 3]).unwrap();
        assert_eq!(l, Label::Categorical(vec![0, 1, 1]));
        assert_eq!(keep, vec![0, 1, 2]);
        let (l, keep) = label_for(&df, "scale", &[1, 2, 3]).unwrap();
        assert_eq!(l, Label::Continuous(vec![1.0, 0.5]));
        assert_eq!(keep, vec![1, 2]);
        let (l, _) = label_for(&df, "digit", &[1, 2, 3]).unwrap();
        assert_eq!(l, Label::Categorical(vec![0, 1, 1]));
        let err = label_for(&df, "colour", &[1]).unwrap_err().to_string();
        assert!(err.contains("colour") && err.contains("shape"), "{err}");
    }

    /// A small run folder made through the store: an image site, its noisy reconstruction,
    /// a latent, and a 3-step site whose signal about `scale` grows with the step.
    fn tiny_run(dir: &std::path::Path) -> Run {
        use crate::store::{Manifest, ModelInfo, SiteRecord};
        let model = ModelInfo {
            id: "test".into(),
            weights: vec![],
        };
        let mut manifest = Manifest::new("test", serde_json::json!({}), 0, model);
        let site = |name: &str, dims: &[&str], width| SiteRecord {
            name: name.into(),
            dims: dims
                .iter()
                .map(|d| {
                    let (n, v) = d.split_once('=').unwrap();
                    crate::store::SiteDim::new(n, v.parse().unwrap())
                })
                .collect(),
            width,
        };
        manifest.sites = vec![
            site("image", &["channel=3", "height=16", "width=16"], 768),
            site(
                "vae.decoder.out",
                &["channel=3", "height=16", "width=16"],
                768,
            ),
            site(
                "vae.encoder.mean",
                &["channel=4", "height=2", "width=2"],
                16,
            ),
            site("latent", &["channel=4", "height=2", "width=2"], 16),
        ];
        let (run, _) = Run::create_or_resume(dir, manifest).unwrap();
        let n = 60u32;
        let noise = crate::rng::gaussian(1, 0, n as usize * (768 + 3 * 16));
        let (mut image, mut decoded) = (Latents::new(768), Latents::new(768));
        let (mut mean, mut latent) = (Latents::new(16), Latents::new(16));
        let scale: Vec<f64> = (0..n).map(|s| (s % 7) as f64 / 7.0).collect();
        for s in 0..n {
            let img: Vec<f32> = (0..768)
                .map(|k| (k as f32 * 0.1 + s as f32).sin() * 0.8)
                .collect();
            let rec: Vec<f32> = img
                .iter()
                .enumerate()
                .map(|(k, v)| v + 0.05 * noise[s as usize * 768 + k])
                .collect();
            image.push(s, 0, None, None, &img);
            decoded.push(s, 0, None, None, &rec);
            mean.push(s, 0, None, None, &img[..16]);
            for step in 0..3u16 {
                let off = n as usize * 768 + (s as usize * 3 + step as usize) * 16;
                let x: Vec<f32> = (0..16)
                    .map(|j| {
                        let signal = if j == 0 {
                            4.0 * scale[s as usize] as f32 * step as f32
                        } else {
                            0.0
                        };
                        signal + noise[off + j]
                    })
                    .collect();
                latent.push(s, step, Some(999 - step as i32 * 300), None, &x);
            }
        }
        for (name, rows) in [
            ("image", &image),
            ("vae.decoder.out", &decoded),
            ("vae.encoder.mean", &mean),
            ("latent", &latent),
        ] {
            run.write_latents_part(name, 0, rows).unwrap();
        }
        let shapes = ["circle", "square", "heart"];
        let mut samples = df!(
            "sample" => (0..n).collect::<Vec<u32>>(),
            "shape" => (0..n).map(|s| shapes[s as usize % 3]).collect::<Vec<_>>(),
            "scale" => scale,
        )
        .unwrap();
        run.write_samples_part(0, &mut samples).unwrap();
        run.finish_samples(1).unwrap();
        Run::open(dir).unwrap()
    }

    #[test]
    fn writes_every_table_and_plot_of_a_run() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let run = tiny_run(&dir);
        let args = InfolossArgs {
            run: dir.clone(),
            from: None,
            to: None,
            latent: "vae.encoder.mean".into(),
            data_range: 2.0,
            sites: vec!["latent,vae.encoder.mean".into()],
            steps: None,
            labels: vec![],
            seed: 3,
            max_points: 2000,
            components: 2,
            neighbours: 3,
            retention_from: "image".into(),
        };
        super::run(args.clone()).unwrap();

        let rec = run.table("infoloss_reconstruction").unwrap();
        assert_eq!(rec.height(), 60);
        let summary = run.table("infoloss_summary").unwrap();
        assert_eq!(summary.height(), 3);
        let ratio = summary
            .column("compression_ratio")
            .unwrap()
            .f64()
            .unwrap()
            .get(0);
        assert_eq!(ratio, Some(48.0));
        // The summary's SSIM mean is the mean of the per-sample SSIMs.
        let ssim: Vec<f64> = rec
            .column("ssim")
            .unwrap()
            .f64()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        let mean = summary
            .column("mean")
            .unwrap()
            .f64()
            .unwrap()
            .get(2)
            .unwrap();
        assert!((mean - ssim.iter().sum::<f64>() / 60.0).abs() < 1e-12);
        assert!(mean > 0.5 && mean < 1.0, "{mean}");

        // latent at 3 steps + vae.encoder.mean at 1: a 4 x 4 matrix with a unit diagonal.
        let cka = run.table("cka").unwrap();
        assert_eq!(cka.height(), 16);
        let values: Vec<f64> = cka
            .column("cka")
            .unwrap()
            .f64()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        for i in 0..4 {
            assert!((values[i * 4 + i] - 1.0).abs() < 1e-9);
        }

        let mi = run.table("mutual_info").unwrap();
        // 2 labels x 4 representations x 2 estimators.
        assert_eq!(mi.height(), 16);
        let label: Vec<&str> = mi
            .column("label")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        let site: Vec<&str> = mi
            .column("site")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        let step: Vec<u32> = mi
            .column("step")
            .unwrap()
            .u32()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        let est: Vec<&str> = mi
            .column("estimator")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        let val: Vec<f64> = mi
            .column("mi_nats")
            .unwrap()
            .f64()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        let get = |st: u32| {
            (0..16)
                .find(|&i| {
                    label[i] == "scale"
                        && site[i] == "latent"
                        && step[i] == st
                        && est[i] == "gaussian"
                })
                .map(|i| val[i])
                .unwrap()
        };
        // The scale signal is absent at step 0 and strongest at step 2.
        assert!(get(2) > get(0) + 0.3, "{} vs {}", get(2), get(0));

        for plot in ["infoloss-cka", "infoloss-mi-scale", "infoloss-mi-shape"] {
            let svg =
                std::fs::read_to_string(dir.join("plots").join(format!("{plot}.svg"))).unwrap();
            assert!(svg.contains("</svg>"), "{plot}");
        }
        // Same seed, same tables.
        super::run(args).unwrap();
        assert!(run.table("mutual_info").unwrap().equals_missing(&mi));
    }
}
