//! `latentlens bench sd-unet`: one UNet step of a Stable Diffusion UNet on the inputs that
//! `scripts/bench_sd_unet.py` wrote, timed, with the largest difference from diffusers'
//! output on the same inputs. The script runs diffusers in the same session and prints the
//! ratio.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::common;
use crate::sd::config::{Fields, UNetConfig};
use crate::sd::load::{load_weights, required, weights_file};
use crate::sd::unet::UNet2DConditionModel;
use crate::sites::Hooks;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens bench sd-unet --model-dir /tmp/sd15-random --repeats 3
  python scripts/bench_sd_unet.py --help")]
pub struct BenchSdUnet {
    /// A pipeline folder (its unet/ is read) holding `bench_io.safetensors` from
    /// scripts/bench_sd_unet.py (sample, timesteps, context, diffusers' output).
    #[arg(long)]
    pub model_dir: PathBuf,
    /// Timed repeats after one warm-up pass; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

pub fn run(args: &BenchSdUnet) -> anyhow::Result<()> {
    let device = common::device()?;
    let dir = &args.model_dir;
    let cfg = UNetConfig::from_fields(&Fields::read(&required(dir, "unet/config.json")?)?)?;
    let started = Instant::now();
    let weights = weights_file(dir, "unet", "diffusion_pytorch_model")?;
    let unet = load_weights(&weights, &device, &[], |vb| {
        UNet2DConditionModel::new(vb, &cfg)
    })?;
    let load_s = started.elapsed().as_secs_f64();
    let io_path = dir.join("bench_io.safetensors");
    let io = candle_core::safetensors::load(&io_path, &device).with_context(|| {
        format!(
            "{} (written by scripts/bench_sd_unet.py)",
            io_path.display()
        )
    })?;
    let get = |k: &str| {
        io.get(k)
            .with_context(|| format!("{} has no `{k}`", io_path.display()))
    };
    let sample = get("sample")?;
    let context = get("context")?;
    let timesteps: Vec<f64> = get("timesteps")?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect();
    let mut out = unet.forward(sample, &timesteps, context, &mut Hooks::none())?;
    let mut times = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats.max(1) {
        let t = Instant::now();
        out = unet.forward(sample, &timesteps, context, &mut Hooks::none())?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let want = get("out")?;
    let diff: f32 = (&out - want)?.abs()?.flatten_all()?.max(0)?.to_scalar()?;
    let scale: f32 = want.abs()?.flatten_all()?.max(0)?.to_scalar()?;
    let peak = peak_rss_bytes();
    crate::outln!(
        "{}",
        serde_json::json!({
            "latentlens_unet_step_s": median,
            "times_s": times,
            "load_s": load_s,
            "max_abs_diff_vs_diffusers": diff,
            "max_abs_reference": scale,
            "peak_rss_bytes": peak,
            "batch": sample.dim(0)?,
            "latent": sample.dims()[2..].to_vec(),
        })
    );
    Ok(())
}

/// Peak resident memory of this process (Linux `VmHWM`), if known.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
