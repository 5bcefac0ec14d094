//! `latentlens record diffusion` and `latentlens sites diffusion` (the reasoner's are in
//! `record_reasoner`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::common;
use crate::diffusion::pipeline::{DiffusionModel, SampleOptions};
use crate::jobs::{self, record_diffusion, record_diffusion::Source};
use crate::store::Start;
use crate::taps::Pool;

pub const DEFAULT_WEIGHTS: &str = record_diffusion::BUILTIN_WEIGHTS;

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

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens record diffusion --run reports/demo
  latentlens record diffusion --run reports/h-space --sites unet.mid_block --steps 0..50:5 --pool mean")]
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
    crate::outln!("{:<24} {:<10} shape (per sample)", "site", "fires");
    for site in model.sites() {
        let fires = if site.per_step { "each step" } else { "once" };
        crate::outln!("{:<24} {:<10} {}", site.name, fires, site.shape_string());
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
    let plan = record_diffusion::plan(&args.options(), &common::device()?)?;
    let bar = common::bar(args.samples as u64, "recording");
    let ctx = jobs::Ctx::new(&bar, common::interrupt_flag());
    let (_, start, summary) = record_diffusion::run(&args.run, &plan, &ctx)?;
    bar.finish_and_clear();
    if start == Start::Complete {
        crate::outln!(
            "{} already holds this run, complete ({} rows); nothing to record",
            args.run.display(),
            summary.rows
        );
        return Ok(());
    }
    if start == Start::Resumed {
        eprintln!("resumed the run in {}", args.run.display());
    }
    crate::outln!(
        "recorded {} samples, {} rows ({:.1} MB of latents) in {:.1} s to {}",
        args.samples,
        summary.rows,
        summary.bytes as f64 / 1e6,
        summary.seconds,
        args.run.display()
    );
    Ok(())
}

impl RecordDiffusion {
    pub fn options(&self) -> record_diffusion::Options {
        let everything = self.sites.iter().all(|s| s == "*");
        record_diffusion::Options {
            weights: Some(self.weights.clone()),
            samples: self.samples,
            seed: self.seed,
            sites: if everything {
                Vec::new()
            } else {
                self.sites.clone()
            },
            steps: self.steps.clone(),
            pool: self.pool,
            source: self.source,
            strength: self.strength,
            class: self.class.clone(),
            ddim_steps: self.ddim_steps,
            eta: self.eta,
            guidance: self.guidance,
            batch_size: self.batch_size,
        }
    }
}
