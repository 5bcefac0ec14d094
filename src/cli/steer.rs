//! `latentlens steer`: add a probe's direction at a site while the built-in diffusion
//! model generates, and measure the dose-response against a random direction.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::common;
use crate::jobs::{self, steer};
use crate::store::Run;

/// Steer generations along a probe direction (or a class-mean difference) and measure how
/// often the classifier reads the target shape, per alpha, against a random direction.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens probe --run reports/demo --label shape --sites unet.mid_block
  latentlens steer --run reports/demo --site unet.mid_block --label shape --target circle --alphas 0,1,2,4")]
pub struct SteerArgs {
    /// A run of the built-in diffusion model (its probe weights or latents give the direction).
    #[arg(long)]
    pub run: PathBuf,
    /// The site to steer.
    #[arg(long, default_value = "unet.mid_block")]
    pub site: String,
    /// Denoising steps at which to steer: `all`, `0..10`, `0,5`.
    #[arg(long, default_value = "all")]
    pub steps: String,
    /// Where the direction comes from.
    #[arg(long, value_enum, default_value_t = steer::DirectionSource::Probe)]
    pub direction: steer::DirectionSource,
    /// The class label (a probed label for `--direction probe`).
    #[arg(long, default_value = "shape")]
    pub label: String,
    /// The class to steer towards.
    #[arg(long)]
    pub target: String,
    /// The recorded step whose probe or latents give the direction (default: the last).
    #[arg(long)]
    pub direction_step: Option<u16>,
    /// Alphas, in units of the site's mean per-sample norm.
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,1,2,4")]
    pub alphas: Vec<f64>,
    /// Generations per alpha and direction.
    #[arg(long, default_value_t = 24)]
    pub samples: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 25)]
    pub ddim_steps: usize,
    #[arg(long, default_value_t = 3.0)]
    pub guidance: f64,
}

pub fn run(args: &SteerArgs) -> anyhow::Result<()> {
    let opts = steer::Options {
        site: args.site.clone(),
        steps: args.steps.clone(),
        direction: args.direction,
        label: args.label.clone(),
        target: args.target.clone(),
        direction_step: args.direction_step,
        alphas: args.alphas.clone(),
        samples: args.samples,
        seed: args.seed,
        ddim_steps: args.ddim_steps,
        guidance: args.guidance,
        ..steer::Options::default()
    };
    let mut run = Run::open(&args.run)?;
    let plan = steer::plan(&run, &opts, &common::device()?)?;
    let started = Instant::now();
    let bar = common::bar(0, "steer");
    let out = steer::run(&run, &plan, &jobs::Ctx::new(&bar, common::interrupt_flag()))?;
    bar.finish_and_clear();
    let written = jobs::write(&mut run, &plan.identity, out, started)?;
    let record = run.manifest().analysis(&plan.identity.key).cloned();
    if let Some(record) = record {
        for f in steer::report(&run, &record)?.findings {
            crate::outln!("{f}");
        }
    }
    for p in written {
        crate::outln!("wrote {}", p.display());
    }
    Ok(())
}
