//! `latentlens train diffusion` and `latentlens eval diffusion`: train the built-in tiny
//! latent diffusion model and measure it.

use std::path::PathBuf;
use std::time::Duration;

use candle_core::Device;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::diffusion::eval::{evaluate, EvalOptions};
use crate::diffusion::pipeline::{read_config, CONFIG_FILE};
use crate::diffusion::train::{
    finetune_vae_decoder, train_classifier, train_unet, train_vae, Part, TrainOptions, TrainSummary,
};
use crate::diffusion::{DiffusionConfig, DiffusionModel, SampleOptions};

/// Where the shipped weights live.
pub const DEFAULT_WEIGHTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/diffusion");

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PartArg {
    Vae,
    Unet,
    Classifier,
    /// Fine-tune only the VAE decoder (latents unchanged, so a trained UNet stays valid).
    VaeDecoder,
    /// VAE, then UNet (needs the VAE), then classifier, then the decoder fine-tune.
    All,
}

/// Train the built-in latent diffusion model on procedurally drawn shapes.
///
/// Checkpoints are written every 90 s beside the weights; rerunning the same command
/// resumes from them.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens train diffusion --part unet --steps 2200
  latentlens train diffusion --part classifier --steps 800")]
pub struct TrainArgs {
    /// Folder for config.json and the weights.
    #[arg(long, default_value = DEFAULT_WEIGHTS_DIR)]
    pub out: PathBuf,
    /// Which network to train.
    #[arg(long, value_enum, default_value_t = PartArg::All)]
    pub part: PartArg,
    /// Training steps (default: vae 2000, unet 3000, classifier 600, vae-decoder 300).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Images per step (default: vae 32, unet 64, classifier 64).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (default: vae 1e-3, unet 6e-4, classifier 2e-3).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of the training noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Measure the diffusion model: VAE PSNR, classifier accuracy, and generation accuracy.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens eval diffusion
  latentlens eval diffusion --json --guidance 10")]
pub struct EvalArgs {
    /// Folder with config.json, vae/unet/classifier.safetensors.
    #[arg(long, default_value = DEFAULT_WEIGHTS_DIR)]
    pub weights: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Images to generate for the generation accuracy.
    #[arg(long, default_value_t = 500)]
    pub n_generate: usize,
    /// DDIM steps per generated image.
    #[arg(long, default_value_t = SampleOptions::default().steps)]
    pub sample_steps: usize,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = SampleOptions::default().guidance)]
    pub guidance: f64,
}

fn progress(label: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>10} [{elapsed_precise}] {bar:30} {pos}/{len} ({eta}) {msg}",
    ) {
        pb.set_style(style);
    }
    pb.set_prefix(label.to_string());
    pb.enable_steady_tick(Duration::from_millis(500));
    pb
}

fn options_for(part: Part, args: &TrainArgs) -> TrainOptions {
    let mut o = TrainOptions::default_for(part);
    if let Some(s) = args.steps {
        o.steps = s;
    }
    if let Some(b) = args.batch_size {
        o.batch_size = b;
    }
    if let Some(lr) = args.lr {
        o.lr = lr;
    }
    o.seed = args.seed;
    o
}

fn report(s: &TrainSummary) -> anyhow::Result<()> {
    let loss = s
        .final_loss
        .map(|l| format!("{l:.5}"))
        .unwrap_or_else(|| "-".into());
    crate::outln!(
        "{}: {} steps (resumed from {}), final loss {loss}, {:.0} s -> {}",
        s.part.name(),
        s.steps,
        s.resumed_from,
        s.seconds,
        s.weights.display()
    );
    Ok(())
}

pub fn run_train(args: &TrainArgs) -> anyhow::Result<()> {
    super::common::keep_freed_memory();
    let device = Device::Cpu;
    let config_path = args.out.join(CONFIG_FILE);
    // Keep the architecture (and measured latent scale) of an existing folder.
    let config = if config_path.exists() {
        read_config(&config_path)?
    } else {
        DiffusionConfig::default()
    };
    let parts: &[Part] = match args.part {
        PartArg::Vae => &[Part::Vae],
        PartArg::Unet => &[Part::Unet],
        PartArg::Classifier => &[Part::Classifier],
        PartArg::VaeDecoder => &[Part::VaeDecoder],
        PartArg::All => &[Part::Vae, Part::Unet, Part::Classifier, Part::VaeDecoder],
    };
    for &part in parts {
        let opts = options_for(part, args);
        let pb = progress(part.name());
        let summary = match part {
            Part::Vae => train_vae(&args.out, &config, &opts, &device, &pb)?,
            Part::Unet => train_unet(&args.out, &opts, &device, &pb)?,
            Part::VaeDecoder => finetune_vae_decoder(&args.out, &opts, &device, &pb)?,
            Part::Classifier => {
                let s = train_classifier(&args.out, &config, &opts, &device, &pb)?;
                if !config_path.exists() {
                    crate::diffusion::train::write_config(&args.out, &config)?;
                }
                s
            }
        };
        pb.finish_and_clear();
        report(&summary)?;
    }
    Ok(())
}

pub fn run_eval(args: &EvalArgs) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let model = DiffusionModel::load(&args.weights, &device)?;
    let opts = EvalOptions {
        n_generate: args.n_generate,
        sample: SampleOptions {
            steps: args.sample_steps,
            guidance: args.guidance,
            ..SampleOptions::default()
        },
        ..EvalOptions::default()
    };
    let pb = progress("eval");
    let r = evaluate(&model, &opts, &pb)?;
    pb.finish_and_clear();
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        crate::outln!("weights: {}", args.weights.display());
        crate::outln!(
            "VAE reconstruction PSNR ({} held-out images): {:.2} dB",
            opts.n_reconstruct,
            r.vae_psnr_db
        );
        crate::outln!(
            "classifier accuracy ({} held-out shapes): {:.1}%",
            opts.n_classify,
            100.0 * r.classifier_accuracy
        );
        crate::outln!(
            "generated images showing the requested shape ({}, {} DDIM steps, guidance {}): {:.1}%",
            opts.n_generate,
            opts.sample.steps,
            opts.sample.guidance,
            100.0 * r.generated_accuracy
        );
        for (name, acc) in r.class_names.iter().zip(&r.generated_accuracy_per_class) {
            crate::outln!("  {name}: {:.1}%", 100.0 * acc);
        }
        crate::outln!("({:.0} s)", r.seconds);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command, EvalCommand, TrainCommand};
    use clap::Parser;

    #[test]
    fn train_and_eval_parse_their_flags_and_default_to_the_shipped_weights() {
        let cli = Cli::try_parse_from([
            "latentlens",
            "train",
            "diffusion",
            "--part",
            "unet",
            "--steps",
            "5",
            "--lr",
            "1e-4",
        ])
        .unwrap();
        let Command::Train(TrainCommand::Diffusion(t)) = cli.command else {
            panic!("not train diffusion");
        };
        assert_eq!(
            (t.part, t.steps, t.lr),
            (PartArg::Unet, Some(5), Some(1e-4))
        );
        assert!(t.out.ends_with("weights/diffusion"));
        let o = options_for(Part::Unet, &t);
        assert_eq!((o.steps, o.batch_size), (5, 64));

        let cli = Cli::try_parse_from(["latentlens", "eval", "diffusion", "--json"]).unwrap();
        let Command::Eval(EvalCommand::Diffusion(e)) = cli.command else {
            panic!("not eval diffusion");
        };
        assert!(e.json && e.weights.ends_with("weights/diffusion"));
        assert_eq!((e.n_generate, e.sample_steps), (500, 50));
        assert!(Cli::try_parse_from(["latentlens", "train", "diffusion", "--part", "x"]).is_err());
    }
}
