//! Training the three networks on freshly rendered shapes (training seed, deterministic
//! index order), with periodic atomic checkpoints and resume.
//!
//! A checkpoint is `<part>.ckpt.safetensors` (the weights) plus `<part>.ckpt.json` (step,
//! options, the part's config). Rerunning the same command continues from it. AdamW's
//! moment estimates are not saved: they restart from zero on resume, which costs a few
//! noisy steps, not correctness. The learning rate follows the step count, so the schedule
//! resumes exactly. Final weights are the plain safetensors files [`DiffusionModel::load`]
//! reads.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::progress::Progress;
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::classifier::Classifier;
use super::pipeline::{
    load_part, read_config, DiffusionConfig, CLASSIFIER_FILE, CONFIG_FILE, UNET_FILE, VAE_FILE,
};
use super::scheduler::Scheduler;
use super::unet::UNet;
use super::vae::Vae;
use crate::data::shapes::{Shapes, TRAIN_SEED};
use crate::error::IoContext;
use crate::rng;
use crate::sites::Hooks;

/// Which network to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Vae,
    Unet,
    Classifier,
    /// Fine-tunes only the VAE decoder on posterior means: the encoder, hence the latents
    /// a trained UNet was fitted to, stay exactly as they are.
    #[serde(rename = "vae-decoder")]
    VaeDecoder,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Vae => "vae",
            Part::Unet => "unet",
            Part::Classifier => "classifier",
            Part::VaeDecoder => "vae-decoder",
        }
    }

    fn stream_id(self) -> u64 {
        match self {
            Part::Vae => 1,
            Part::Unet => 2,
            Part::Classifier => 3,
            Part::VaeDecoder => 4,
        }
    }

    fn weights_file(self) -> &'static str {
        match self {
            Part::Vae | Part::VaeDecoder => VAE_FILE,
            Part::Unet => UNET_FILE,
            Part::Classifier => CLASSIFIER_FILE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Linear warm-up steps, then cosine decay to `lr / 10` at `steps`.
    pub warmup: usize,
    pub weight_decay: f64,
    pub seed: u64,
    /// VAE only: weight of the KL term (per sample sums, as in Stable Diffusion's VAE loss).
    pub kl_weight: f64,
    /// UNet only: probability of replacing the class by the null class.
    pub class_dropout: f64,
    /// Seconds between checkpoints.
    pub checkpoint_every: u64,
}

impl TrainOptions {
    pub fn default_for(part: Part) -> Self {
        let base = Self {
            steps: 1000,
            batch_size: 32,
            lr: 1e-3,
            warmup: 50,
            weight_decay: 0.0,
            seed: 0,
            kl_weight: 1e-5,
            class_dropout: 0.1,
            checkpoint_every: 90,
        };
        match part {
            Part::Vae => Self {
                steps: 2000,
                ..base
            },
            Part::Unet => Self {
                steps: 3000,
                batch_size: 64,
                lr: 6e-4,
                warmup: 100,
                ..base
            },
            Part::Classifier => Self {
                steps: 600,
                batch_size: 64,
                lr: 2e-3,
                ..base
            },
            Part::VaeDecoder => Self {
                steps: 300,
                lr: 2e-4,
                warmup: 10,
                ..base
            },
        }
    }

    fn learning_rate(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.lr * (0.1 + 0.9 * cosine)
    }
}

/// What a finished (or resumed-and-finished) training run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub part: Part,
    pub steps: usize,
    pub resumed_from: usize,
    /// Mean loss over the last (up to) 50 steps run in this invocation.
    pub final_loss: Option<f64>,
    pub seconds: f64,
    pub weights: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointMeta {
    part: Part,
    step: usize,
    options: TrainOptions,
    config: serde_json::Value,
    /// Mean training loss over the last (up to) 50 steps, to follow a run from outside.
    #[serde(default)]
    recent_loss: Option<f64>,
}

/// The variables of one network, with the checkpoint/resume bookkeeping around them.
struct Trainer {
    part: Part,
    out: PathBuf,
    varmap: VarMap,
    options: TrainOptions,
    part_config: serde_json::Value,
    /// Only variables whose name starts with this are trained (all when `None`).
    trainable: Option<&'static str>,
}

impl Trainer {
    fn ckpt_paths(&self) -> (PathBuf, PathBuf) {
        let p = self.part.name();
        (
            self.out.join(format!("{p}.ckpt.safetensors")),
            self.out.join(format!("{p}.ckpt.json")),
        )
    }

    /// Loads the checkpoint if there is one; returns the step to start from.
    fn resume(&mut self) -> crate::Result<usize> {
        let (weights, meta_path) = self.ckpt_paths();
        if !meta_path.exists() || !weights.exists() {
            return Ok(0);
        }
        let text = std::fs::read_to_string(&meta_path).at(&meta_path)?;
        let meta: CheckpointMeta =
            serde_json::from_str(&text).map_err(|e| crate::Error::BadFile {
                path: meta_path.clone(),
                detail: format!("not a checkpoint description: {e}"),
            })?;
        if meta.config != self.part_config {
            return Err(crate::Error::BadFile {
                path: meta_path,
                detail: format!(
                    "the checkpoint was made for a different {} architecture; delete it (and {}) to start over",
                    self.part.name(),
                    weights.display()
                ),
            });
        }
        self.varmap
            .load(&weights)
            .map_err(|e| crate::Error::Weights {
                path: weights.clone(),
                detail: e.to_string(),
            })?;
        Ok(meta.step)
    }

    fn checkpoint(&self, step: usize, recent_loss: Option<f64>) -> crate::Result<()> {
        let (weights, meta_path) = self.ckpt_paths();
        save_varmap(&self.varmap, &weights)?;
        let meta = CheckpointMeta {
            part: self.part,
            step,
            options: self.options.clone(),
            config: self.part_config.clone(),
            recent_loss,
        };
        write_atomic(&meta_path, serde_json::to_string_pretty(&meta)?.as_bytes())
    }

    fn finish(&self) -> crate::Result<PathBuf> {
        let path = self.out.join(self.part.weights_file());
        save_varmap(&self.varmap, &path)?;
        Ok(path)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so
/// the file appears whole or not at all.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> crate::Result<()> {
    let tmp = tmp_name(path);
    std::fs::write(&tmp, bytes).at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

fn save_varmap(varmap: &VarMap, path: &Path) -> crate::Result<()> {
    let tmp = tmp_name(path);
    varmap.save(&tmp).map_err(|e| crate::Error::Weights {
        path: tmp.clone(),
        detail: format!("cannot write: {e}"),
    })?;
    std::fs::rename(&tmp, path).at(path)
}

/// Runs `step_fn(step) -> loss` from the checkpoint to `options.steps`, checkpointing every
/// `checkpoint_every` seconds and at the end.
fn run_loop(
    trainer: &mut Trainer,
    pb: &dyn Progress,
    mut step_fn: impl FnMut(usize, &mut AdamW) -> crate::Result<f64>,
) -> crate::Result<TrainSummary> {
    std::fs::create_dir_all(&trainer.out).at(&trainer.out)?;
    let start = trainer.resume()?;
    let opts = trainer.options.clone();
    let params = ParamsAdamW {
        lr: opts.lr,
        weight_decay: opts.weight_decay,
        ..Default::default()
    };
    let vars = match trainer.trainable {
        None => trainer.varmap.all_vars(),
        Some(prefix) => {
            let data = trainer
                .varmap
                .data()
                .lock()
                .map_err(|_| crate::Error::Invalid("variable map lock poisoned".into()))?;
            data.iter()
                .filter(|(name, _)| name.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect()
        }
    };
    let mut opt = AdamW::new(vars, params)?;
    pb.set_length(opts.steps as u64);
    pb.set_position(start as u64);
    let began = Instant::now();
    let mut last_ckpt = Instant::now();
    let mut recent: Vec<f64> = Vec::new();
    for step in start..opts.steps {
        opt.set_learning_rate(opts.learning_rate(step));
        let loss = step_fn(step, &mut opt)?;
        if !loss.is_finite() {
            return Err(crate::Error::Invalid(format!(
                "{} training diverged at step {step} (loss {loss}); lower --lr and rerun",
                trainer.part.name()
            )));
        }
        recent.push(loss);
        if recent.len() > 50 {
            recent.remove(0);
        }
        pb.set_position(step as u64 + 1);
        pb.set_message(&format!("loss {:.5}", mean(&recent).unwrap_or(f64::NAN)));
        if last_ckpt.elapsed() >= Duration::from_secs(opts.checkpoint_every) {
            trainer.checkpoint(step + 1, mean(&recent))?;
            last_ckpt = Instant::now();
        }
    }
    trainer.checkpoint(opts.steps, mean(&recent))?;
    let weights = trainer.finish()?;
    Ok(TrainSummary {
        part: trainer.part,
        steps: opts.steps,
        resumed_from: start,
        final_loss: mean(&recent),
        seconds: began.elapsed().as_secs_f64(),
        weights,
    })
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// The training images of step `step`: indices `step*B .. (step+1)*B` of the training seed,
/// so no image repeats within a run and a resumed run sees the same images.
fn train_batch(
    shapes: &Shapes,
    step: usize,
    batch: usize,
    device: &Device,
) -> candle_core::Result<(Vec<u32>, Tensor)> {
    let indices: Vec<u64> = (0..batch as u64)
        .map(|i| (step * batch) as u64 + i)
        .collect();
    let (factors, images) = shapes.batch(indices, device)?;
    Ok((factors.iter().map(|f| f.shape).collect(), images))
}

fn part_config<T: Serialize>(c: &T) -> crate::Result<serde_json::Value> {
    Ok(serde_json::to_value(c)?)
}

/// Trains the VAE; then measures the latent scale and writes `config.json`.
pub fn train_vae(
    out: &Path,
    config: &DiffusionConfig,
    options: &TrainOptions,
    device: &Device,
    pb: &dyn Progress,
) -> crate::Result<TrainSummary> {
    let varmap = VarMap::new();
    let vae = Vae::new(
        &config.vae,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )?;
    let mut trainer = Trainer {
        part: Part::Vae,
        out: out.to_path_buf(),
        varmap,
        options: options.clone(),
        part_config: part_config(&config.vae)?,
        trainable: None,
    };
    let shapes = Shapes::new(config.image_size, TRAIN_SEED);
    let summary = run_loop(&mut trainer, pb, |step, opt| {
        let (_, images) = train_batch(&shapes, step, options.batch_size, device)?;
        let (mean, logvar) = vae.encode(&images, &mut Hooks::none())?;
        let b = images.dim(0)?;
        let eps = Tensor::from_vec(
            rng::gaussian(
                options.seed,
                rng::mix(&[Part::Vae.stream_id(), step as u64]),
                mean.elem_count(),
            ),
            mean.shape(),
            device,
        )?;
        let z = (&mean + (logvar.affine(0.5, 0.0)?.exp()? * eps)?)?;
        let recon = vae.decode(&z, &mut Hooks::none())?;
        // Stable Diffusion's VAE loss: per-sample sums, averaged over the batch.
        let rec = (recon - &images)?
            .sqr()?
            .sum_all()?
            .affine(1.0 / b as f64, 0.0)?;
        let kl = ((mean.sqr()? + logvar.exp()?)? - 1.0)?
            .sub(&logvar)?
            .sum_all()?
            .affine(0.5 / b as f64, 0.0)?;
        let loss = (&rec + kl.affine(options.kl_weight, 0.0)?)?;
        opt.backward_step(&loss)?;
        // Report the per-pixel MSE (PSNR = 10 log10(4 / mse) in [-1, 1] units).
        let pixels = (images.elem_count() / b) as f64;
        Ok(rec.to_scalar::<f32>()? as f64 / pixels)
    })?;
    let scale = measure_latent_scale(&vae, &shapes, device)?;
    let mut cfg = config.clone();
    cfg.latent_scale = scale;
    write_config(out, &cfg)?;
    Ok(summary)
}

/// Fine-tunes the decoder of `out/vae.safetensors` to reconstruct images from their
/// posterior means (what img2img and evaluation decode), leaving the encoder untouched.
pub fn finetune_vae_decoder(
    out: &Path,
    options: &TrainOptions,
    device: &Device,
    pb: &dyn Progress,
) -> crate::Result<TrainSummary> {
    let config = read_config(&out.join(CONFIG_FILE))?;
    let mut varmap = VarMap::new();
    let vae = Vae::new(
        &config.vae,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )?;
    let vae_path = out.join(VAE_FILE);
    varmap.load(&vae_path).map_err(|e| crate::Error::Weights {
        path: vae_path.clone(),
        detail: e.to_string(),
    })?;
    let mut trainer = Trainer {
        part: Part::VaeDecoder,
        out: out.to_path_buf(),
        varmap,
        options: options.clone(),
        part_config: part_config(&config.vae)?,
        trainable: Some("decoder."),
    };
    let shapes = Shapes::new(config.image_size, TRAIN_SEED);
    run_loop(&mut trainer, pb, |step, opt| {
        let (_, images) = train_batch(&shapes, step, options.batch_size, device)?;
        let (mean, _) = vae.encode(&images, &mut Hooks::none())?;
        let recon = vae.decode(&mean.detach(), &mut Hooks::none())?;
        let b = images.dim(0)?;
        let rec = (recon - &images)?
            .sqr()?
            .sum_all()?
            .affine(1.0 / b as f64, 0.0)?;
        opt.backward_step(&rec)?;
        let pixels = (images.elem_count() / b) as f64;
        Ok(rec.to_scalar::<f32>()? as f64 / pixels)
    })
}

/// 1 / std of the posterior means over 2048 training images.
pub fn measure_latent_scale(vae: &Vae, shapes: &Shapes, device: &Device) -> crate::Result<f64> {
    let mut means = Vec::new();
    for chunk in 0..16 {
        let (_, images) = train_batch(shapes, chunk, 128, device)?;
        means.push(vae.encode(&images, &mut Hooks::none())?.0);
    }
    let all = Tensor::cat(&means, 0)?.flatten_all()?;
    let centered = all.broadcast_sub(&all.mean_all()?)?;
    let std = centered.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    if !(std.is_finite() && std > 0.0) {
        return Err(crate::Error::Invalid(format!(
            "the VAE's posterior means have std {std}; cannot scale latents"
        )));
    }
    Ok(1.0 / std)
}

pub fn write_config(out: &Path, config: &DiffusionConfig) -> crate::Result<()> {
    std::fs::create_dir_all(out).at(out)?;
    write_atomic(
        &out.join(CONFIG_FILE),
        serde_json::to_string_pretty(config)?.as_bytes(),
    )
}

/// Trains the UNet on latents of the trained VAE (read from `out`), with the latent scale
/// from `out/config.json`.
pub fn train_unet(
    out: &Path,
    options: &TrainOptions,
    device: &Device,
    pb: &dyn Progress,
) -> crate::Result<TrainSummary> {
    let config = read_config(&out.join(CONFIG_FILE))?;
    let vae_path = out.join(VAE_FILE);
    let vae = load_part(&vae_path, device, |vb| Vae::new(&config.vae, vb))?;
    let varmap = VarMap::new();
    let unet = UNet::new(
        &config.unet,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )?;
    let mut trainer = Trainer {
        part: Part::Unet,
        out: out.to_path_buf(),
        varmap,
        options: options.clone(),
        part_config: part_config(&config.unet)?,
        trainable: None,
    };
    let shapes = Shapes::new(config.image_size, TRAIN_SEED);
    let scheduler = Scheduler::new(&config.scheduler);
    let t_max = scheduler.train_timesteps();
    let null = config.n_classes() as u32;
    run_loop(&mut trainer, pb, |step, opt| {
        let (labels, images) = train_batch(&shapes, step, options.batch_size, device)?;
        let (mean, _) = vae.encode(&images, &mut Hooks::none())?;
        let x0 = (mean * config.latent_scale)?.detach();
        let mut r = rng::stream(
            options.seed,
            rng::mix(&[Part::Unet.stream_id(), step as u64]),
        );
        let timesteps: Vec<usize> = labels.iter().map(|_| r.gen_range(0..t_max)).collect();
        let classes: Vec<u32> = labels
            .iter()
            .map(|&c| {
                if r.gen::<f64>() < options.class_dropout {
                    null
                } else {
                    c
                }
            })
            .collect();
        let noise = Tensor::from_vec(
            rng::gaussian(
                options.seed,
                rng::mix(&[Part::Unet.stream_id(), step as u64, 1]),
                x0.elem_count(),
            ),
            x0.shape(),
            device,
        )?;
        let x_t = scheduler.add_noise(&x0, &noise, &timesteps)?;
        let pred = unet.forward(&x_t, &timesteps, &classes, &mut Hooks::none())?;
        let loss = candle_nn::loss::mse(&pred, &noise)?;
        opt.backward_step(&loss)?;
        Ok(loss.to_scalar::<f32>()? as f64)
    })
}

/// Trains the pixel-space shape classifier.
pub fn train_classifier(
    out: &Path,
    config: &DiffusionConfig,
    options: &TrainOptions,
    device: &Device,
    pb: &dyn Progress,
) -> crate::Result<TrainSummary> {
    let varmap = VarMap::new();
    let classifier = Classifier::new(
        &config.classifier,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )?;
    let mut trainer = Trainer {
        part: Part::Classifier,
        out: out.to_path_buf(),
        varmap,
        options: options.clone(),
        part_config: part_config(&config.classifier)?,
        trainable: None,
    };
    let shapes = Shapes::new(config.image_size, TRAIN_SEED);
    run_loop(&mut trainer, pb, |step, opt| {
        let (labels, images) = train_batch(&shapes, step, options.batch_size, device)?;
        let logits = classifier.forward(&images)?;
        let target = Tensor::new(labels.as_slice(), device)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &target)?;
        opt.backward_step(&loss)?;
        Ok(loss.to_scalar::<f32>()? as f64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::pipeline::tests::tiny_config;
    use crate::diffusion::DiffusionModel;

    fn quick(steps: usize) -> TrainOptions {
        TrainOptions {
            steps,
            batch_size: 4,
            warmup: 2,
            checkpoint_every: 0,
            ..TrainOptions::default_for(Part::Vae)
        }
    }

    #[test]
    fn training_writes_loadable_weights_and_resumes_from_its_checkpoint() -> crate::Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let dev = Device::Cpu;
        let pb = crate::progress::Hidden;
        let config = tiny_config();
        let s = train_vae(out, &config, &quick(2), &dev, &pb)?;
        assert_eq!((s.steps, s.resumed_from), (2, 0));
        let written = read_config(&out.join(CONFIG_FILE))?;
        assert!(written.latent_scale.is_finite() && written.latent_scale > 0.0);
        assert_eq!(written.vae, config.vae);
        // Rerunning with more steps continues where the checkpoint stopped.
        let s = train_vae(out, &config, &quick(3), &dev, &pb)?;
        assert_eq!((s.steps, s.resumed_from), (3, 2));
        train_unet(out, &quick(2), &dev, &pb)?;
        train_classifier(out, &config, &quick(2), &dev, &pb)?;

        // The decoder fine-tune changes the decoder and leaves the encoder bit-identical.
        let before = candle_core::safetensors::load(out.join(VAE_FILE), &dev)?;
        finetune_vae_decoder(out, &quick(2), &dev, &pb)?;
        let after = candle_core::safetensors::load(out.join(VAE_FILE), &dev)?;
        assert_eq!(before.len(), after.len());
        let mut decoder_moved = false;
        for (name, b) in &before {
            let d = (b - &after[name])?.abs()?.max_all()?.to_scalar::<f32>()?;
            if name.starts_with("encoder.") {
                assert_eq!(d, 0.0, "{name} changed");
            } else if d > 0.0 {
                decoder_moved = true;
            }
        }
        assert!(decoder_moved);
        let model = DiffusionModel::load(out, &dev)?;
        assert!(model.classifier.is_some());
        // A checkpoint from another architecture is refused, not silently mixed in.
        let mut other = config.clone();
        other.vae.hidden = 16;
        let err = train_vae(out, &other, &quick(4), &dev, &pb).unwrap_err();
        assert!(err.to_string().contains("different vae"), "{err}");
        Ok(())
    }

    #[test]
    fn learning_rate_warms_up_then_decays_to_a_tenth() {
        let o = TrainOptions {
            steps: 110,
            warmup: 10,
            lr: 1.0,
            ..TrainOptions::default_for(Part::Unet)
        };
        assert!((o.learning_rate(0) - 0.1).abs() < 1e-12);
        assert!((o.learning_rate(9) - 1.0).abs() < 1e-12);
        assert!((o.learning_rate(10) - 1.0).abs() < 1e-12);
        assert!((o.learning_rate(60) - 0.55).abs() < 1e-12);
        assert!((o.learning_rate(110) - 0.1).abs() < 1e-12);
    }
}
