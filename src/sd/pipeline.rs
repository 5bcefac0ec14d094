//! A Stable Diffusion 1.x / 2.x pipeline read from a local diffusers folder, and its
//! denoising loop with every site: text encoder -> (latent, UNet blocks, cross-attention,
//! unet.out, x0_pred) per step -> VAE decoder.
//!
//! The loop follows diffusers' `StableDiffusionPipeline.__call__`: initial latents times the
//! scheduler's `init_noise_sigma`, classifier-free guidance when the scale is above 1
//! (`uncond + scale * (cond - uncond)`), `scheduler.step`, then `vae.decode(latents /
//! scaling_factor)`. Our UNet batch is `[cond; uncond]` (diffusers' is `[uncond; cond]`;
//! rows are independent), so a recorder keeps the conditional rows.
//!
//! Randomness: row `i`'s initial noise is `rng::gaussian(seeds[i], 0, n)` and the noise of
//! step `k` (Euler ancestral, DDIM with eta > 0) uses stream `1 + k`, so a sample does not
//! depend on its batch. diffusers' own draws come from torch's generator; to match a
//! diffusers run exactly, pass its `latents` (and `prompt_embeds`).

use std::path::{Path, PathBuf};

use candle_core::{Device, Result as CResult, Tensor};

use super::clip::ClipTextModel;
use super::config::{Fields, TextConfig, UNetConfig, VaeConfig};
use super::load::{load_weights, required, weights_file};
use super::scheduler::{Schedule, SchedulerConfig, SchedulerKind};
use super::tokenizer::ClipTokenizer;
use super::unet::UNet2DConditionModel;
use super::vae::AutoencoderKL;
use crate::sites::{Hooks, SiteInfo};
use crate::{Error, Result};

/// The noise stream of an image-to-image posterior sample (initial noise is stream 0, the
/// noise of step k stream 1 + k).
pub const POSTERIOR_STREAM: u64 = u64::MAX;

/// The first step an image-to-image run takes (diffusers' `get_timesteps`).
pub fn img2img_first_step(steps: usize, strength: f64) -> usize {
    let init = ((steps as f64 * strength) as usize).min(steps);
    steps - init
}

/// Sampling settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SdOptions {
    pub steps: usize,
    /// Classifier-free guidance scale; at or below 1 the unconditional pass is skipped.
    pub guidance: f64,
    pub scheduler: SchedulerKind,
    /// DDIM's eta (0 = deterministic).
    pub eta: f64,
}

impl SdOptions {
    pub fn guided(&self) -> bool {
        self.guidance > 1.0
    }
}

/// The inputs of one batch of generations.
#[derive(Debug, Clone)]
pub struct Generation<'a> {
    /// Prompt embeddings `[B, L, D]` (from [`StableDiffusion::encode_prompts`] or given).
    pub cond: Tensor,
    /// Negative / empty-prompt embeddings `[B, L, D]`, used when guided.
    pub uncond: Option<Tensor>,
    /// Initial N(0, 1) latents `[B, C, h, w]`, before `init_noise_sigma` (diffusers'
    /// `latents=` argument).
    pub latents: Tensor,
    /// One seed per row, for the per-step noise of ancestral samplers.
    pub seeds: &'a [u64],
}

pub struct StableDiffusion {
    pub dir: PathBuf,
    pub text_encoder: ClipTextModel,
    pub tokenizer: ClipTokenizer,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub scheduler: SchedulerConfig,
    /// Every file read (configs, tokenizer files, weights), for provenance hashes.
    pub files: Vec<PathBuf>,
    pub device: Device,
}

impl StableDiffusion {
    /// Reads a diffusers Stable Diffusion folder. Each missing file, unsupported config
    /// value, wrong-shaped or unexpected tensor is an error that names it, before any work.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::BadFile {
                path: dir.to_path_buf(),
                detail: format!(
                    "not a folder; --model-dir takes a local diffusers Stable Diffusion folder ({})",
                    super::load::LAYOUT
                ),
            });
        }
        let index_path = required(dir, "model_index.json")?;
        check_model_index(&Fields::read(&index_path)?)?;
        let mut files = vec![index_path];

        let unet_cfg_path = required(dir, "unet/config.json")?;
        let unet_cfg = UNetConfig::from_fields(&Fields::read(&unet_cfg_path)?)?;
        let vae_cfg_path = required(dir, "vae/config.json")?;
        let vae_cfg = VaeConfig::from_fields(&Fields::read(&vae_cfg_path)?)?;
        let text_cfg_path = required(dir, "text_encoder/config.json")?;
        let text_cfg = TextConfig::from_fields(&Fields::read(&text_cfg_path)?)?;
        let sched_path = required(dir, "scheduler/scheduler_config.json")?;
        let scheduler = SchedulerConfig::read(&sched_path)?;
        if unet_cfg.cross_attention_dim != text_cfg.hidden_size {
            return Err(Error::BadFile {
                path: unet_cfg_path,
                detail: format!(
                    "`cross_attention_dim` = {} but the text encoder's hidden_size is {}: \
                     the UNet and text encoder come from different models",
                    unet_cfg.cross_attention_dim, text_cfg.hidden_size
                ),
            });
        }
        if unet_cfg.in_channels != vae_cfg.latent_channels {
            return Err(Error::BadFile {
                path: unet_cfg_path,
                detail: format!(
                    "`in_channels` = {} but the VAE has {} latent channels (an inpainting or \
                     depth UNet? those are not supported)",
                    unet_cfg.in_channels, vae_cfg.latent_channels
                ),
            });
        }
        let tokenizer =
            ClipTokenizer::load(&dir.join("tokenizer"), text_cfg.max_position_embeddings)?;
        let text_weights = weights_file(dir, "text_encoder", "model")?;
        if tokenizer.vocab_size() > text_cfg.vocab_size {
            return Err(Error::VocabMismatch {
                tokenizer: tokenizer.files[0].clone(),
                tokens: tokenizer.vocab_size(),
                weights: text_weights,
                rows: text_cfg.vocab_size,
                hint: "the tokenizer belongs to another text encoder".into(),
            });
        }
        files.extend([unet_cfg_path, vae_cfg_path, text_cfg_path, sched_path]);
        files.extend(tokenizer.files.iter().cloned());

        let text_encoder = load_weights(&text_weights, device, &["position_ids"], |vb| {
            ClipTextModel::new(vb, &text_cfg)
        })?;
        let unet_weights = weights_file(dir, "unet", "diffusion_pytorch_model")?;
        let unet = load_weights(&unet_weights, device, &[], |vb| {
            UNet2DConditionModel::new(vb, &unet_cfg)
        })?;
        let vae_weights = weights_file(dir, "vae", "diffusion_pytorch_model")?;
        let vae = load_weights(&vae_weights, device, &[], |vb| {
            AutoencoderKL::new(vb, &vae_cfg)
        })?;
        files.extend([text_weights, unet_weights, vae_weights]);
        Ok(Self {
            dir: dir.to_path_buf(),
            text_encoder,
            tokenizer,
            unet,
            vae,
            scheduler,
            files,
            device: device.clone(),
        })
    }

    /// Image side / latent side.
    pub fn vae_scale(&self) -> usize {
        self.vae.config.downsample()
    }

    /// The pipeline's default image size (diffusers: `unet.sample_size * vae_scale_factor`).
    pub fn default_size(&self) -> (usize, usize) {
        let s = self.unet.config.sample_size * self.vae_scale();
        (s, s)
    }

    /// Latent `(channels, height, width)` of an image size, checked.
    pub fn latent_dims(&self, height: usize, width: usize) -> Result<(usize, usize, usize)> {
        let m = self.vae_scale() * self.unet.config.downsample();
        if height == 0 || width == 0 || !height.is_multiple_of(m) || !width.is_multiple_of(m) {
            return Err(Error::Invalid(format!(
                "image size {height}x{width}: height and width must be positive multiples of {m} \
                 for this model"
            )));
        }
        Ok((
            self.vae.config.latent_channels,
            height / self.vae_scale(),
            width / self.vae_scale(),
        ))
    }

    /// Tokens per prompt.
    pub fn prompt_length(&self) -> usize {
        self.tokenizer.max_length
    }

    /// Every site of a text-to-image generation at `height` x `width`, in firing order,
    /// with the shape per sample. Image-to-image adds `image` and the encoder posterior
    /// first.
    pub fn sites(&self, height: usize, width: usize, img2img: bool) -> Result<Vec<SiteInfo>> {
        let (c, h, w) = self.latent_dims(height, width)?;
        let chw = |c: usize, h: usize, w: usize| [("channel", c), ("height", h), ("width", w)];
        let mut out = Vec::new();
        if img2img {
            out.push(SiteInfo::new(
                "image",
                &chw(self.vae.config.in_channels, height, width),
                false,
            ));
            out.push(SiteInfo::new("vae.encoder.mean", &chw(c, h, w), false));
            out.push(SiteInfo::new("vae.encoder.logvar", &chw(c, h, w), false));
        }
        out.extend(self.text_encoder.sites(self.prompt_length()));
        out.push(SiteInfo::new("latent", &chw(c, h, w), true));
        out.extend(self.unet.sites(h, w, self.prompt_length()));
        out.push(SiteInfo::new("x0_pred", &chw(c, h, w), true));
        out.push(SiteInfo::new(
            "vae.decoder.out",
            &chw(self.vae.config.out_channels, height, width),
            false,
        ));
        Ok(out)
    }

    /// Token ids `[B, L]` of prompts, padded and truncated as diffusers does.
    pub fn tokenize(&self, prompts: &[&str]) -> Result<Tensor> {
        let l = self.prompt_length();
        let mut ids = Vec::with_capacity(prompts.len() * l);
        for p in prompts {
            let row = self.tokenizer.encode(p)?;
            if row.len() != l {
                return Err(Error::Invalid(format!(
                    "prompt {p:?} gave {} tokens, not {l}",
                    row.len()
                )));
            }
            ids.extend(row);
        }
        Ok(Tensor::from_vec(ids, (prompts.len(), l), &self.device)?)
    }

    /// Prompt embeddings `[B, L, D]`; fires the text encoder's sites at step 0.
    pub fn encode_prompts(&self, prompts: &[&str], hooks: &mut Hooks) -> Result<Tensor> {
        let ids = self.tokenize(prompts)?;
        hooks.set_step(0, None);
        Ok(self.text_encoder.forward(&ids, hooks)?)
    }

    /// Embeddings of `[prompts; negatives]` in one pass (so that a recorder keeps the
    /// prompts' rows), split into (cond, uncond). `negatives` defaults to "" per row.
    pub fn encode_guided(
        &self,
        prompts: &[&str],
        negatives: &[&str],
        hooks: &mut Hooks,
    ) -> Result<(Tensor, Tensor)> {
        let b = prompts.len();
        let all: Vec<&str> = prompts.iter().chain(negatives.iter()).copied().collect();
        let e = self.encode_prompts(&all, hooks)?;
        Ok((e.narrow(0, 0, b)?, e.narrow(0, b, b)?))
    }

    /// Per-row N(0, 1) noise `[B, C, h, w]` from `(seeds[i], stream)`.
    pub fn noise(
        &self,
        seeds: &[u64],
        stream: u64,
        dims: (usize, usize, usize),
    ) -> CResult<Tensor> {
        let (c, h, w) = dims;
        let n = c * h * w;
        let mut data = Vec::with_capacity(seeds.len() * n);
        for &s in seeds {
            data.extend(crate::rng::gaussian(s, stream, n));
        }
        Tensor::from_vec(data, (seeds.len(), c, h, w), &self.device)
    }

    /// Runs the denoising loop and decodes; returns the decoder output `[B, 3, H, W]`
    /// (about [-1, 1], unclamped) and the final latents.
    pub fn generate(
        &self,
        g: &Generation,
        opts: &SdOptions,
        hooks: &mut Hooks,
    ) -> Result<(Tensor, Tensor)> {
        let mut schedule = Schedule::new(&self.scheduler, opts.scheduler, opts.steps)?;
        schedule.eta = opts.eta;
        let x = (&g.latents * schedule.init_noise_sigma)?;
        let x = self.denoise(x, &mut schedule, 0, g, opts, hooks)?;
        Ok((self.decode(&x, hooks)?, x))
    }

    /// Image-to-image (diffusers' `StableDiffusionImg2ImgPipeline`): encodes `images`
    /// `[B, C, H, W]` in [-1, 1] (fires `image`, `vae.encoder.mean`, `vae.encoder.logvar`),
    /// draws a posterior sample, noises it to the step that leaves `strength` of the
    /// schedule, and denoises from there; `g.latents` is that noise. Per-step sites count
    /// their steps from 0 at the first step run.
    pub fn img2img(
        &self,
        images: &Tensor,
        strength: f64,
        g: &Generation,
        opts: &SdOptions,
        hooks: &mut Hooks,
    ) -> Result<(Tensor, Tensor)> {
        if !(strength > 0.0 && strength <= 1.0) {
            return Err(Error::Invalid(format!(
                "strength {strength} must be in (0, 1]"
            )));
        }
        let mut schedule = Schedule::new(&self.scheduler, opts.scheduler, opts.steps)?;
        schedule.eta = opts.eta;
        let first = img2img_first_step(opts.steps, strength);
        if first >= schedule.len() {
            return Err(Error::Invalid(format!(
                "strength {strength} with {} steps leaves no step to run",
                opts.steps
            )));
        }
        hooks.set_step(0, None);
        let images = hooks.site("image", images.clone())?;
        let (mean, logvar) = self.vae.encode(&images, hooks)?;
        let (_, c, h, w) = mean.dims4()?;
        let eps = self.noise(g.seeds, POSTERIOR_STREAM, (c, h, w))?;
        let z = (&mean + (logvar * 0.5)?.exp()?.mul(&eps)?)?;
        let x0 = (z * self.vae.config.scaling_factor)?;
        let x = schedule.add_noise(&x0, &g.latents, first)?;
        let x = self.denoise(x, &mut schedule, first, g, opts, hooks)?;
        Ok((self.decode(&x, hooks)?, x))
    }

    /// The loop from step `first` of `schedule` (0 for text-to-image).
    fn denoise(
        &self,
        mut x: Tensor,
        schedule: &mut Schedule,
        first: usize,
        g: &Generation,
        opts: &SdOptions,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let b = x.dim(0)?;
        if g.cond.dim(0)? != b || g.seeds.len() != b {
            return Err(Error::Invalid(format!(
                "{b} latents, {} prompt embeddings and {} seeds: they must agree",
                g.cond.dim(0)?,
                g.seeds.len()
            )));
        }
        let guided = opts.guided();
        let context = match (&g.uncond, guided) {
            (Some(u), true) => Tensor::cat(&[&g.cond, u], 0)?,
            (None, true) => {
                return Err(Error::Invalid(
                    "guidance above 1 needs unconditional (negative prompt) embeddings".into(),
                ))
            }
            (_, false) => g.cond.clone(),
        };
        let dims = {
            let (_, c, h, w) = x.dims4()?;
            (c, h, w)
        };
        for i in first..schedule.len() {
            let t = schedule.timesteps[i];
            hooks.set_step((i - first) as u16, Some(t.round() as i32));
            x = hooks.site("latent", x)?;
            let input = schedule.scale_model_input(&x, i)?;
            let (input, rows) = if guided {
                (Tensor::cat(&[&input, &input], 0)?, 2 * b)
            } else {
                (input, b)
            };
            let out = self.unet.forward(&input, &vec![t; rows], &context, hooks)?;
            let out = if guided {
                let c = out.narrow(0, 0, b)?;
                let u = out.narrow(0, b, b)?;
                (&u + ((c - &u)? * opts.guidance)?)?
            } else {
                out
            };
            let x0 = schedule.predict_x0(i, &out, &x)?;
            let x0 = hooks.site("x0_pred", x0)?;
            let noise = if schedule.needs_noise() {
                Some(self.noise(g.seeds, 1 + (i - first) as u64, dims)?)
            } else {
                None
            };
            x = schedule.update(i, &x0, &out, &x, noise.as_ref())?;
        }
        Ok(x)
    }

    /// Scaled latents -> decoder output; fires `vae.decoder.out` at step 0.
    pub fn decode(&self, x: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        hooks.set_step(0, None);
        let z = (x / self.vae.config.scaling_factor)?;
        Ok(self.vae.decode(&z, hooks)?)
    }
}

/// Checks that model_index.json describes a Stable Diffusion 1.x / 2.x pipeline.
fn check_model_index(f: &Fields) -> Result<()> {
    let class = f.str_or("_class_name", "")?;
    let family_err = |what: String| {
        f.bad(format!(
            "{what}: latentlens reads Stable Diffusion 1.x / 2.x pipelines (StableDiffusionPipeline \
             with a UNet2DConditionModel, an AutoencoderKL and a CLIPTextModel)"
        ))
    };
    if !class.starts_with("StableDiffusion") || class.contains("XL") || class.contains('3') {
        return Err(family_err(format!("`_class_name` = \"{class}\"")));
    }
    for (component, want) in [
        ("unet", "UNet2DConditionModel"),
        ("vae", "AutoencoderKL"),
        ("text_encoder", "CLIPTextModel"),
    ] {
        let found = f
            .get(component)
            .and_then(|v| v.as_array())
            .and_then(|a| a.get(1))
            .and_then(|v| v.as_str());
        match found {
            Some(c) if c == want => {}
            Some(c) => return Err(family_err(format!("`{component}` is a {c}, not a {want}"))),
            None => return Err(family_err(format!("no `{component}` component"))),
        }
    }
    if f.get("text_encoder_2").is_some() {
        return Err(family_err("it has a second text encoder (SDXL?)".into()));
    }
    Ok(())
}
