//! `latentlens record diffusion` and `latentlens sites diffusion` (the reasoner's are in
//! `record_reasoner`).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use polars::prelude::*;

use super::common;
use crate::data::shapes::{Shapes, HELDOUT_SEED, SHAPE_NAMES};
use crate::diffusion::pipeline::{DiffusionModel, SampleOptions};
use crate::record::{bytes_per_sample, chunk_samples_for, record, RecordPlan};
use crate::sites::{select_sites, Hooks, SiteInfo};
use crate::store::{manifest::hash_file, Manifest, ModelInfo, Run, Start};
use crate::taps::Pool;

pub const DEFAULT_WEIGHTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/diffusion");

/// Buffered rows per chunk stay under this many bytes.
const CHUNK_BUDGET_BYTES: u64 = 256 << 20;
/// A chunk is also the unit of resumption: keep it small enough that Ctrl-C loses little.
const MAX_CHUNK_SAMPLES: u32 = 64;

#[derive(Debug, Subcommand)]
pub enum RecordCmd {
    /// Run samples through the latent diffusion pipeline and record its sites at every step.
    Diffusion(RecordDiffusion),
    /// Run ProsQA questions through a continuous-thought reasoner and record every pass.
    Reasoner(super::record_reasoner::RecordReasoner),
    /// Run prompts through a local Stable Diffusion 1.x / 2.x folder (diffusers layout) and
    /// record its sites at every step.
    Sd(super::record_sd::RecordSd),
}

#[derive(Debug, Subcommand)]
pub enum SitesCmd {
    /// List the diffusion pipeline's sites with their per-sample shapes.
    Diffusion {
        /// Model folder (config.json + safetensors). Default: the built-in model.
        #[arg(long, default_value = DEFAULT_WEIGHTS)]
        weights: PathBuf,
    },
    /// List the reasoner's sites (TransformerLens names plus `thought`).
    Reasoner(super::record_reasoner::SitesReasoner),
    /// List a Stable Diffusion folder's sites with their per-sample shapes.
    Sd(super::record_sd::SitesSd),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Encode held-out shapes images, noise them to --strength, denoise (labels: every factor).
    Shapes,
    /// Generate from pure noise, conditioned on a shape class (labels: the class asked for).
    Noise,
}

#[derive(Debug, Args)]
pub struct RecordDiffusion {
    /// Run folder to create (or resume, if it holds this same run unfinished).
    #[arg(long, default_value = "reports/diffusion")]
    pub run: PathBuf,
    /// Model folder (config.json + safetensors). Default: the built-in model.
    #[arg(long, default_value = DEFAULT_WEIGHTS)]
    pub weights: PathBuf,
    /// Number of samples.
    #[arg(long, default_value_t = 64)]
    pub samples: u32,
    /// Seed for every random draw (noise per sample is keyed by (seed, sample id)).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sites to record: names or globs (`unet.*`), comma-separated or repeated.
    #[arg(long, default_value = "*")]
    pub sites: Vec<String>,
    /// Denoising steps to keep: `all`, `last`, `0,10,49`, `0..50:5`.
    #[arg(long, default_value = "all")]
    pub steps: String,
    /// `none`: whole tensors; `mean`: channel vectors averaged over space.
    #[arg(long, value_enum, default_value_t = Pool::None)]
    pub pool: Pool,
    /// Where samples come from.
    #[arg(long, value_enum, default_value_t = Source::Shapes)]
    pub source: Source,
    /// With --source shapes: how far to noise the encoded image (fraction of the schedule).
    #[arg(long, default_value_t = 0.6)]
    pub strength: f64,
    /// With --source noise: the shape to generate (`square`, `circle`, `triangle`), or
    /// `all` to cycle through them, or `none` for unconditional samples.
    #[arg(long, default_value = "all")]
    pub class: String,
    /// DDIM steps over the whole schedule.
    #[arg(long, default_value_t = SampleOptions::default().steps)]
    pub ddim_steps: usize,
    /// DDIM eta (0 = deterministic DDIM, 1 = DDPM-like).
    #[arg(long, default_value_t = SampleOptions::default().eta)]
    pub eta: f64,
    /// Classifier-free guidance scale (1 = no guidance).
    #[arg(long, default_value_t = SampleOptions::default().guidance)]
    pub guidance: f64,
    /// Samples per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: u32,
}

pub fn run_sites(cmd: SitesCmd) -> anyhow::Result<()> {
    let weights = match cmd {
        SitesCmd::Diffusion { weights } => weights,
        SitesCmd::Reasoner(args) => return super::record_reasoner::run_sites(&args),
        SitesCmd::Sd(args) => return super::record_sd::run_sites(&args),
    };
    let model = DiffusionModel::load(&weights, &common::device()?)?;
    println!("{:<24} {:<10} shape (per sample)", "site", "fires");
    for site in model.sites() {
        let fires = if site.per_step { "each step" } else { "once" };
        println!("{:<24} {:<10} {}", site.name, fires, site.shape_string());
    }
    Ok(())
}

pub fn run(cmd: RecordCmd) -> anyhow::Result<()> {
    match cmd {
        RecordCmd::Diffusion(args) => record_diffusion(&args),
        RecordCmd::Reasoner(args) => super::record_reasoner::run(&args),
        RecordCmd::Sd(args) => super::record_sd::run(&args),
    }
}

fn record_diffusion(args: &RecordDiffusion) -> anyhow::Result<()> {
    let device = common::device()?;
    let model = DiffusionModel::load(&args.weights, &device)?;
    let all_sites = model.sites();
    let sites = select_sites(&common::site_patterns(&args.sites), &all_sites)?;
    let plan = resolve(args, &model, sites)?;

    let weights = model
        .weight_files
        .iter()
        .map(|p| hash_file(p))
        .collect::<crate::Result<Vec<_>>>()?;
    let manifest = Manifest::new(
        "record diffusion",
        plan.config.clone(),
        args.seed,
        ModelInfo {
            id: format!("latentlens-tiny-ldm ({})", args.weights.display()),
            weights,
        },
    );
    let (mut run, start) = Run::create_or_resume(&args.run, manifest)?;
    if start == Start::Resumed {
        eprintln!("resuming the run in {}", args.run.display());
    }
    let bar = common::bar(args.samples as u64, "recording");
    let shapes = Shapes::new(model.config.image_size, HELDOUT_SEED);
    let mut forward = |ids: &[u32], hooks: &mut Hooks| -> crate::Result<DataFrame> {
        forward_batch(&model, args, &plan, &shapes, ids, hooks)
    };
    let summary = record(
        &mut run,
        &plan.record,
        &mut forward,
        &bar,
        common::interrupt_flag(),
    )?;
    bar.finish_and_clear();
    println!(
        "recorded {} samples, {} rows ({:.1} MB of latents) in {:.1} s to {}",
        args.samples,
        summary.rows,
        summary.bytes as f64 / 1e6,
        summary.seconds,
        args.run.display()
    );
    Ok(())
}

/// The checked, resolved form of the arguments.
struct Plan<'a> {
    record: RecordPlan<'a>,
    options: SampleOptions,
    /// Class asked of each sample (`n_classes` = unconditional); `None` for shapes, whose
    /// class is the drawn shape.
    class: ClassChoice,
    config: serde_json::Value,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
enum ClassChoice {
    Cycle,
    Fixed(u32),
}

fn resolve<'a>(
    args: &RecordDiffusion,
    model: &DiffusionModel,
    sites: Vec<&'a SiteInfo>,
) -> anyhow::Result<Plan<'a>> {
    anyhow::ensure!(args.samples > 0, "--samples must be at least 1");
    anyhow::ensure!(
        args.ddim_steps > 0 && args.ddim_steps <= 1000,
        "--ddim-steps must be in 1..=1000"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.strength) && args.strength > 0.0,
        "--strength must be in (0, 1]"
    );
    let total = args.ddim_steps as u16;
    let first = match args.source {
        Source::Noise => 0,
        Source::Shapes => 0,
    };
    // img2img runs only the last `strength` of the schedule; its steps count from 0 too.
    let total = match args.source {
        Source::Noise => total,
        Source::Shapes => model
            .scheduler
            .img2img_timesteps(args.ddim_steps, args.strength)
            .len() as u16,
    };
    let steps = crate::steps::parse_steps(&args.steps, first, total)?;
    if args.source == Source::Noise {
        if let Some(site) = sites
            .iter()
            .find(|s| s.name == "image" || s.name.starts_with("vae.encoder"))
        {
            anyhow::bail!(
                "site `{}` does not fire when generating from noise (nothing is encoded); \
                 use --source shapes, or leave it out of --sites",
                site.name
            );
        }
    }
    let n_classes = model.config.n_classes() as u32;
    let class = match args.class.as_str() {
        "all" => ClassChoice::Cycle,
        "none" => ClassChoice::Fixed(n_classes),
        name => match SHAPE_NAMES.iter().position(|&n| n == name) {
            Some(i) => ClassChoice::Fixed(i as u32),
            None => anyhow::bail!(
                "--class `{name}` is not a shape; expected one of {}, all, none",
                SHAPE_NAMES.join(", ")
            ),
        },
    };
    let steps_kept = steps.as_ref().map_or((total - first) as usize, Vec::len);
    let per_sample = bytes_per_sample(&sites, args.pool, steps_kept);
    let chunk_samples = chunk_samples_for(per_sample, CHUNK_BUDGET_BYTES, MAX_CHUNK_SAMPLES);
    let options = SampleOptions {
        steps: args.ddim_steps,
        eta: args.eta,
        guidance: args.guidance,
    };
    let config = serde_json::json!({
        "source": args.source,
        "samples": args.samples,
        "sites": sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        "steps": steps,
        "pool": args.pool,
        "strength": args.strength,
        "class": class,
        "ddim_steps": args.ddim_steps,
        "steps_run": total,
        "eta": args.eta,
        "guidance": args.guidance,
        "chunk_samples": chunk_samples,
        "data_seed": HELDOUT_SEED,
    });
    Ok(Plan {
        record: RecordPlan {
            sites,
            steps,
            pool: args.pool,
            samples: args.samples,
            chunk_samples,
            batch_size: args.batch_size.max(1).min(chunk_samples),
        },
        options,
        class,
        config,
    })
}

fn forward_batch(
    model: &DiffusionModel,
    args: &RecordDiffusion,
    plan: &Plan,
    shapes: &Shapes,
    ids: &[u32],
    hooks: &mut Hooks,
) -> crate::Result<DataFrame> {
    let seeds: Vec<u64> = ids
        .iter()
        .map(|&i| crate::rng::mix(&[args.seed, i as u64]))
        .collect();
    let n_classes = model.config.n_classes() as u32;
    let (images, labels) = match args.source {
        Source::Shapes => {
            let (factors, images) = shapes.batch(ids.iter().map(|&i| i as u64), &model.device)?;
            let classes: Vec<u32> = factors.iter().map(|f| f.shape).collect();
            let out = model.img2img(
                &images,
                &classes,
                &seeds,
                args.strength,
                &plan.options,
                hooks,
            )?;
            let labels = df!(
                "sample" => ids,
                "shape" => classes,
                "shape_name" => factors.iter().map(|f| f.shape_name()).collect::<Vec<_>>(),
                "scale" => factors.iter().map(|f| f.scale).collect::<Vec<_>>(),
                "rotation" => factors.iter().map(|f| f.rotation).collect::<Vec<_>>(),
                "x" => factors.iter().map(|f| f.x).collect::<Vec<_>>(),
                "y" => factors.iter().map(|f| f.y).collect::<Vec<_>>(),
                "hue" => factors.iter().map(|f| f.hue).collect::<Vec<_>>(),
            )?;
            (out, labels)
        }
        Source::Noise => {
            let classes: Vec<u32> = ids
                .iter()
                .map(|&i| match plan.class {
                    ClassChoice::Cycle => i % n_classes,
                    ClassChoice::Fixed(c) => c,
                })
                .collect();
            let out = model.generate(&classes, &seeds, &plan.options, hooks)?;
            let names: Vec<&str> = classes
                .iter()
                .map(|&c| SHAPE_NAMES.get(c as usize).copied().unwrap_or("none"))
                .collect();
            let labels = df!("sample" => ids, "shape" => &classes, "shape_name" => names)?;
            (out, labels)
        }
    };
    with_predictions(model, &images, labels)
}

/// Adds the classifier's reading of each output image, so a run says what was made, not
/// only what was asked.
fn with_predictions(
    model: &DiffusionModel,
    images: &candle_core::Tensor,
    mut labels: DataFrame,
) -> crate::Result<DataFrame> {
    if let Some(classifier) = &model.classifier {
        let predicted = classifier.predict(images)?;
        labels.with_column(Column::new("predicted_shape".into(), predicted))?;
    }
    Ok(labels)
}
