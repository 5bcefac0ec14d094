//! The latent diffusion pipeline: loading the three weight files, the list of hook sites,
//! and the denoising loop (text-free, class-conditional, classifier-free guidance). The loop
//! lives here, not in the UNet, because it is where `step` and `t` are known and set.
//!
//! Randomness: every draw for batch row `i` comes from `rng::gaussian(seeds[i], stream, n)`
//! with stream 0 for the initial noise and `1 + step` for DDIM's eta noise, so a sample does
//! not depend on the batch it was generated in.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::classifier::{Classifier, ClassifierConfig};
use super::scheduler::{Scheduler, SchedulerConfig};
use super::unet::{UNet, UNetConfig};
use super::vae::{Vae, VaeConfig, DOWNSAMPLE};
use crate::sites::{Hooks, SiteInfo};

pub const CONFIG_FILE: &str = "config.json";
pub const VAE_FILE: &str = "vae.safetensors";
pub const UNET_FILE: &str = "unet.safetensors";
pub const CLASSIFIER_FILE: &str = "classifier.safetensors";

/// Everything `config.json` holds: the architecture of the three networks, the schedule
/// and the latent scale measured after training the VAE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffusionConfig {
    pub image_size: usize,
    pub class_names: Vec<String>,
    /// Multiplies VAE posterior means before the UNet sees them (1 / their std over the
    /// training data, as Stable Diffusion's 0.18215).
    pub latent_scale: f64,
    pub vae: VaeConfig,
    pub unet: UNetConfig,
    pub classifier: ClassifierConfig,
    pub scheduler: SchedulerConfig,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            image_size: crate::data::shapes::DEFAULT_SIZE,
            class_names: crate::data::shapes::SHAPE_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            latent_scale: 1.0,
            vae: VaeConfig::default(),
            unet: UNetConfig::default(),
            classifier: ClassifierConfig::default(),
            scheduler: SchedulerConfig::default(),
        }
    }
}

impl DiffusionConfig {
    pub fn n_classes(&self) -> usize {
        self.unet.n_classes
    }

    pub fn latent_size(&self) -> usize {
        self.image_size / DOWNSAMPLE
    }

    /// Checks that the parts agree with each other; the message names the fields.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.unet.n_classes;
        if self.class_names.len() != n || self.classifier.n_classes != n {
            return Err(format!(
                "class_names has {} entries, unet.n_classes = {n}, classifier.n_classes = {}; they must agree",
                self.class_names.len(),
                self.classifier.n_classes
            ));
        }
        if self.unet.in_channels != self.vae.latent_channels {
            return Err(format!(
                "unet.in_channels = {} but vae.latent_channels = {}",
                self.unet.in_channels, self.vae.latent_channels
            ));
        }
        if self.image_size == 0 || !self.image_size.is_multiple_of(2 * DOWNSAMPLE) {
            return Err(format!(
                "image_size = {} must be a positive multiple of {}",
                self.image_size,
                2 * DOWNSAMPLE
            ));
        }
        let groups = [self.vae.groups, self.unet.groups, self.classifier.groups];
        if groups.contains(&0) || self.unet.attention_heads == 0 {
            return Err("vae.groups, unet.groups, classifier.groups and unet.attention_heads must be positive".into());
        }
        if !(self.latent_scale.is_finite() && self.latent_scale > 0.0) {
            return Err(format!(
                "latent_scale = {} must be positive",
                self.latent_scale
            ));
        }
        Ok(())
    }
}

/// Sampling settings. Defaults: 50 DDIM steps, deterministic (eta 0), guidance 7.5 (Stable
/// Diffusion's default; on our UNet it lifts the share of recognisable shapes from 64% at 3).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampleOptions {
    pub steps: usize,
    pub eta: f64,
    pub guidance: f64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            steps: 50,
            eta: 0.0,
            guidance: 7.5,
        }
    }
}

pub struct DiffusionModel {
    pub config: DiffusionConfig,
    pub vae: Vae,
    pub unet: UNet,
    pub classifier: Option<Classifier>,
    pub scheduler: Scheduler,
    /// The files the model was read from (config first), for provenance hashes.
    pub weight_files: Vec<PathBuf>,
    pub device: Device,
}

impl DiffusionModel {
    /// Builds the model from variable builders (random or trained weights).
    pub fn new(
        config: DiffusionConfig,
        vae: VarBuilder,
        unet: VarBuilder,
        classifier: Option<VarBuilder>,
        device: &Device,
    ) -> Result<Self> {
        if let Err(e) = config.validate() {
            candle_core::bail!("config: {e}");
        }
        Ok(Self {
            vae: Vae::new(&config.vae, vae)?,
            unet: UNet::new(&config.unet, unet)?,
            classifier: match classifier {
                Some(vb) => Some(Classifier::new(&config.classifier, vb)?),
                None => None,
            },
            scheduler: Scheduler::new(&config.scheduler),
            config,
            weight_files: Vec::new(),
            device: device.clone(),
        })
    }

    /// Reads `dir/config.json`, `vae.safetensors`, `unet.safetensors` and, when present,
    /// `classifier.safetensors`. Every failure names the file; missing and unexpected
    /// tensors and shape mismatches name the tensor.
    pub fn load(dir: &Path, device: &Device) -> crate::Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let config = read_config(&config_path)?;
        let vae_path = dir.join(VAE_FILE);
        let vae = load_part(&vae_path, device, |vb| Vae::new(&config.vae, vb))?;
        let unet_path = dir.join(UNET_FILE);
        let unet = load_part(&unet_path, device, |vb| UNet::new(&config.unet, vb))?;
        let cls_path = dir.join(CLASSIFIER_FILE);
        let mut weight_files = vec![config_path, vae_path, unet_path];
        let classifier = if cls_path.exists() {
            let c = load_part(&cls_path, device, |vb| {
                Classifier::new(&config.classifier, vb)
            })?;
            weight_files.push(cls_path);
            Some(c)
        } else {
            None
        };
        Ok(Self {
            scheduler: Scheduler::new(&config.scheduler),
            config,
            vae,
            unet,
            classifier,
            weight_files,
            device: device.clone(),
        })
    }

    /// Every site in forward order (img2img's order; `generate` skips the encoder sites),
    /// with its shape per sample.
    ///
    /// With guidance the UNet runs on `[cond; uncond]`, so the `unet.*` sites see `2B` rows:
    /// rows `0..B` are the conditional pass, rows `B..2B` the unconditional one. A recorder
    /// keeps rows `0..B`. `latent` and `x0_pred` live in the scaled latent space (what the
    /// UNet sees); `x0_pred` is after guidance, `B` rows.
    pub fn sites(&self) -> Vec<SiteInfo> {
        let img = self.config.image_size;
        let lat = self.config.latent_size();
        let (ic, lc) = (
            self.config.vae.image_channels,
            self.config.vae.latent_channels,
        );
        let [c0, c1] = self.config.unet.channels;
        let chw = |c: usize, s: usize| [("channel", c), ("height", s), ("width", s)];
        vec![
            SiteInfo::new("image", &chw(ic, img), false),
            SiteInfo::new("vae.encoder.mean", &chw(lc, lat), false),
            SiteInfo::new("vae.encoder.logvar", &chw(lc, lat), false),
            SiteInfo::new("latent", &chw(lc, lat), true),
            SiteInfo::new("unet.down_blocks.0", &chw(c0, lat / 2), true),
            SiteInfo::new("unet.down_blocks.1", &chw(c1, lat / 2), true),
            SiteInfo::new("unet.mid_block", &chw(c1, lat / 2), true),
            SiteInfo::new("unet.up_blocks.0", &chw(c1, lat), true),
            SiteInfo::new("unet.up_blocks.1", &chw(c0, lat), true),
            SiteInfo::new("unet.out", &chw(lc, lat), true),
            SiteInfo::new("x0_pred", &chw(lc, lat), true),
            SiteInfo::new("vae.decoder.out", &chw(ic, img), false),
        ]
    }

    fn latent_dims(&self) -> (usize, usize, usize) {
        let s = self.config.latent_size();
        (self.config.vae.latent_channels, s, s)
    }

    /// Per-row Gaussian noise `[B, C, H, W]` from `(seeds[i], stream)`.
    fn noise(&self, seeds: &[u64], stream: u64) -> Result<Tensor> {
        let (c, h, w) = self.latent_dims();
        let n = c * h * w;
        let mut data = Vec::with_capacity(seeds.len() * n);
        for &s in seeds {
            data.extend(crate::rng::gaussian(s, stream, n));
        }
        Tensor::from_vec(data, (seeds.len(), c, h, w), &self.device)
    }

    fn check_batch(&self, classes: &[u32], seeds: &[u64]) -> Result<()> {
        if classes.len() != seeds.len() {
            candle_core::bail!("{} classes but {} seeds", classes.len(), seeds.len());
        }
        if classes.is_empty() {
            candle_core::bail!("empty batch: give at least one class and seed");
        }
        let n = self.config.n_classes() as u32;
        if let Some(bad) = classes.iter().find(|&&c| c > n) {
            candle_core::bail!(
                "class {bad} out of range: 0..{n} are classes, {n} is unconditional"
            );
        }
        Ok(())
    }

    /// Images `[B, 3, 32, 32]` in [-1, 1] of `classes` (`n_classes` = unconditional).
    pub fn generate(
        &self,
        classes: &[u32],
        seeds: &[u64],
        opts: &SampleOptions,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        self.check_batch(classes, seeds)?;
        let timesteps = self.scheduler.timesteps(opts.steps);
        let x = self.noise(seeds, 0)?;
        let x = self.denoise(x, &timesteps, classes, seeds, opts, hooks)?;
        self.decode_latents(&x, hooks)
    }

    /// Re-draws `images` (`[B, 3, 32, 32]` in [-1, 1]): encodes them (posterior mean), noises
    /// them to the timestep that leaves `strength` of the schedule, and denoises the rest.
    pub fn img2img(
        &self,
        images: &Tensor,
        classes: &[u32],
        seeds: &[u64],
        strength: f64,
        opts: &SampleOptions,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        self.check_batch(classes, seeds)?;
        if images.dim(0)? != classes.len() {
            candle_core::bail!("{} images but {} classes", images.dim(0)?, classes.len());
        }
        if !(0.0..=1.0).contains(&strength) {
            candle_core::bail!("strength {strength} must be in [0, 1]");
        }
        hooks.set_step(0, None);
        let (mean, _logvar) = self.vae.encode(images, hooks)?;
        let x0 = (mean * self.config.latent_scale)?;
        let timesteps = self.scheduler.img2img_timesteps(opts.steps, strength);
        let x = match timesteps.first() {
            Some(&t) => {
                let noise = self.noise(seeds, 0)?;
                self.scheduler
                    .add_noise(&x0, &noise, &vec![t; classes.len()])?
            }
            None => x0,
        };
        let x = self.denoise(x, &timesteps, classes, seeds, opts, hooks)?;
        self.decode_latents(&x, hooks)
    }

    /// Scaled latent -> image in [-1, 1]; fires `vae.decoder.out` at step 0.
    pub fn decode_latents(&self, x: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        hooks.set_step(0, None);
        let z = (x / self.config.latent_scale)?;
        self.vae.decode(&z, hooks)?.clamp(-1f32, 1f32)
    }

    /// The DDIM loop from `x` (scaled latents at `timesteps[0]`).
    fn denoise(
        &self,
        mut x: Tensor,
        timesteps: &[usize],
        classes: &[u32],
        seeds: &[u64],
        opts: &SampleOptions,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let b = classes.len();
        let null = self.config.n_classes() as u32;
        let both_classes: Vec<u32> = classes
            .iter()
            .copied()
            .chain(std::iter::repeat_n(null, b))
            .collect();
        for (i, &t) in timesteps.iter().enumerate() {
            hooks.set_step(i as u16, Some(t as i32));
            x = hooks.site("latent", x)?;
            let both = Tensor::cat(&[&x, &x], 0)?;
            let eps_both = self
                .unet
                .forward(&both, &vec![t; 2 * b], &both_classes, hooks)?;
            let eps_c = eps_both.narrow(0, 0, b)?;
            let eps_u = eps_both.narrow(0, b, b)?;
            let eps = (&eps_u + ((eps_c - &eps_u)? * opts.guidance)?)?;
            let c = self.scheduler.ddim_coefficients(t, opts.steps, opts.eta);
            let x0 = self.scheduler.x0_from_eps(&x, &eps, &c)?;
            let x0 = hooks.site("x0_pred", x0)?;
            let z = if c.sigma > 0.0 {
                Some(self.noise(seeds, 1 + i as u64)?)
            } else {
                None
            };
            x = self.scheduler.ddim_step(&x0, &eps, z.as_ref(), &c)?;
        }
        Ok(x)
    }
}

fn weights_error(path: &Path, detail: impl Into<String>) -> crate::Error {
    crate::Error::Weights {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

pub fn read_config(path: &Path) -> crate::Result<DiffusionConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| weights_error(path, format!("cannot read the model config: {e}")))?;
    let config: DiffusionConfig = serde_json::from_str(&text)
        .map_err(|e| weights_error(path, format!("not a valid diffusion config: {e}")))?;
    config.validate().map_err(|e| weights_error(path, e))?;
    Ok(config)
}

/// Reads one safetensors file and builds a network from it, checking that the file holds
/// exactly the tensors the network asks for.
pub fn load_part<T>(
    path: &Path,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<T>,
) -> crate::Result<T> {
    let bytes =
        std::fs::read(path).map_err(|e| weights_error(path, format!("cannot read: {e}")))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
        weights_error(
            path,
            format!("not a readable safetensors file (truncated or corrupt?): {e}"),
        )
    })?;
    crate::finite::check_weights(path, &tensors)?;
    let used = Mutex::new(HashSet::new());
    let backend = Tracked {
        tensors: &tensors,
        used: &used,
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
    let model = build(vb).map_err(|e| weights_error(path, e.to_string()))?;
    let used = used.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut unexpected: Vec<&String> = tensors.keys().filter(|k| !used.contains(*k)).collect();
    if !unexpected.is_empty() {
        unexpected.sort();
        let names: Vec<&str> = unexpected.iter().map(|s| s.as_str()).collect();
        return Err(weights_error(
            path,
            format!(
                "unexpected tensors the model does not use (wrong file or config?): {}",
                names.join(", ")
            ),
        ));
    }
    Ok(model)
}

/// A tensor map that remembers which names were asked for, to find unexpected ones.
struct Tracked<'a> {
    tensors: &'a HashMap<String, Tensor>,
    used: &'a Mutex<HashSet<String>>,
}

impl Tracked<'_> {
    fn mark(&self, name: &str) {
        if let Ok(mut used) = self.used.lock() {
            used.insert(name.to_string());
        }
    }
}

impl SimpleBackend for Tracked<'_> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        self.mark(name);
        SimpleBackend::get(self.tensors, s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.mark(name);
        SimpleBackend::get_unchecked(self.tensors, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sites::{Firing, Tap};
    use candle_nn::VarMap;

    /// A random-weight model small enough for tests, with its variables.
    pub(crate) fn tiny_config() -> DiffusionConfig {
        DiffusionConfig {
            latent_scale: 0.5,
            vae: VaeConfig {
                hidden: 8,
                blocks: 1,
                groups: 2,
                ..VaeConfig::default()
            },
            unet: UNetConfig {
                channels: [8, 16],
                groups: 4,
                attention_heads: 2,
                ..UNetConfig::default()
            },
            classifier: ClassifierConfig {
                channels: [8, 8],
                groups: 2,
                ..ClassifierConfig::default()
            },
            ..DiffusionConfig::default()
        }
    }

    pub(crate) fn tiny_model() -> (DiffusionModel, [VarMap; 3]) {
        let dev = Device::Cpu;
        let maps = [VarMap::new(), VarMap::new(), VarMap::new()];
        let vb = |m: &VarMap| VarBuilder::from_varmap(m, DType::F32, &dev);
        let model = DiffusionModel::new(
            tiny_config(),
            vb(&maps[0]),
            vb(&maps[1]),
            Some(vb(&maps[2])),
            &dev,
        )
        .unwrap();
        (model, maps)
    }

    #[derive(Default)]
    struct Recorder {
        seen: Vec<(String, u16, Option<i32>, Tensor)>,
    }

    impl Tap for Recorder {
        fn wants(&self, _site: &str) -> bool {
            true
        }
        fn tap(&mut self, x: &Tensor, at: &Firing) -> Result<Option<Tensor>> {
            self.seen
                .push((at.site.to_string(), at.step, at.t, x.clone()));
            Ok(None)
        }
    }

    fn images(n: usize) -> Tensor {
        let shapes = crate::data::shapes::Shapes::new(32, 5);
        shapes.batch(0..n as u64, &Device::Cpu).unwrap().1
    }

    #[test]
    fn every_site_fires_with_the_shape_sites_lists() -> Result<()> {
        let (model, _maps) = tiny_model();
        let opts = SampleOptions {
            steps: 4,
            eta: 0.5,
            guidance: 2.0,
        };
        let b = 2;
        let mut rec = Recorder::default();
        let mut hooks = Hooks::none().with(&mut rec);
        let strength = 0.5;
        model.img2img(&images(b), &[0, 2], &[1, 2], strength, &opts, &mut hooks)?;
        drop(hooks);
        let timesteps = model.scheduler.img2img_timesteps(opts.steps, strength);
        assert_eq!(timesteps.len(), 2);
        for info in model.sites() {
            let firings: Vec<_> = rec.seen.iter().filter(|s| s.0 == info.name).collect();
            let expected_firings = if info.per_step { timesteps.len() } else { 1 };
            assert_eq!(firings.len(), expected_firings, "{}", info.name);
            let rows = if info.name.starts_with("unet.") {
                2 * b
            } else {
                b
            };
            let mut want = vec![rows];
            want.extend(info.dims.iter().map(|d| d.1));
            for (i, (_, step, t, x)) in firings.iter().enumerate() {
                assert_eq!(x.dims(), want.as_slice(), "{}", info.name);
                if info.per_step {
                    assert_eq!(
                        (*step, *t),
                        (i as u16, Some(timesteps[i] as i32)),
                        "{}",
                        info.name
                    );
                } else {
                    assert_eq!((*step, *t), (0, None), "{}", info.name);
                }
            }
        }
        // Firing order follows sites() within a step.
        let order: Vec<&str> = rec.seen.iter().map(|s| s.0.as_str()).collect();
        let names: Vec<String> = model.sites().into_iter().map(|s| s.name).collect();
        let first_step: Vec<&str> = order[..3 + 8].to_vec();
        assert_eq!(
            first_step,
            names[..11].iter().map(|s| s.as_str()).collect::<Vec<_>>()
        );
        assert_eq!(*order.last().unwrap(), "vae.decoder.out");

        // generate() fires the per-step sites and the decoder, not the encoder.
        let mut rec = Recorder::default();
        let mut hooks = Hooks::none().with(&mut rec);
        let out = model.generate(&[1], &[3], &opts, &mut hooks)?;
        drop(hooks);
        assert_eq!(out.dims(), &[1, 3, 32, 32]);
        assert!(!rec
            .seen
            .iter()
            .any(|s| s.0 == "image" || s.0.starts_with("vae.encoder")));
        assert_eq!(rec.seen.iter().filter(|s| s.0 == "latent").count(), 4);
        Ok(())
    }

    #[test]
    fn a_sample_does_not_depend_on_its_batch() -> Result<()> {
        let (model, _maps) = tiny_model();
        // eta > 0 so that the per-step noise streams are exercised too.
        let opts = SampleOptions {
            steps: 5,
            eta: 1.0,
            guidance: 3.0,
        };
        let alone = model.generate(&[2], &[42], &opts, &mut Hooks::none())?;
        let batch = model.generate(&[0, 2, 3], &[7, 42, 9], &opts, &mut Hooks::none())?;
        let in_batch = batch.narrow(0, 1, 1)?;
        let diff = (alone - in_batch)?.abs()?.max_all()?.to_scalar::<f32>()?;
        // Bit-identical on CPU: every op is row-wise and candle's gemm does not change its
        // reduction order with the batch size here.
        assert_eq!(diff, 0.0);
        Ok(())
    }

    /// Replaces `x0_pred` at one step with a fixed tensor.
    struct ReplaceX0 {
        at_step: u16,
        with: Tensor,
        eps_rows: Option<Tensor>,
        next_latent: Option<Tensor>,
    }

    impl Tap for ReplaceX0 {
        fn wants(&self, site: &str) -> bool {
            matches!(site, "x0_pred" | "unet.out" | "latent")
        }
        fn tap(&mut self, x: &Tensor, at: &Firing) -> Result<Option<Tensor>> {
            match (at.site, at.step) {
                ("unet.out", s) if s == self.at_step => self.eps_rows = Some(x.clone()),
                ("x0_pred", s) if s == self.at_step => return Ok(Some(self.with.clone())),
                ("latent", s) if s == self.at_step + 1 => self.next_latent = Some(x.clone()),
                _ => {}
            }
            Ok(None)
        }
    }

    #[test]
    fn replacing_x0_pred_moves_the_next_latent_by_the_ddim_formula() -> Result<()> {
        let (model, _maps) = tiny_model();
        let opts = SampleOptions {
            steps: 4,
            eta: 0.0,
            guidance: 2.5,
        };
        let b = 2;
        let with = Tensor::from_vec(
            (0..b * 256)
                .map(|i| (i as f32 * 0.37).sin())
                .collect::<Vec<f32>>(),
            (b, 4, 8, 8),
            &Device::Cpu,
        )?;
        let mut tap = ReplaceX0 {
            at_step: 1,
            with: with.clone(),
            eps_rows: None,
            next_latent: None,
        };
        model.generate(&[0, 1], &[5, 6], &opts, &mut Hooks::none().with(&mut tap))?;
        let eps_rows: Vec<f32> = tap.eps_rows.unwrap().flatten_all()?.to_vec1()?;
        let next: Vec<f32> = tap.next_latent.unwrap().flatten_all()?.to_vec1()?;
        let with: Vec<f32> = with.flatten_all()?.to_vec1()?;
        // By hand: t at step 1 is timesteps[1], the jump goes to timesteps[2].
        let ts = model.scheduler.timesteps(opts.steps);
        let a_prev = model.scheduler.alphas_cumprod[ts[2]];
        let n = b * 256;
        for i in 0..n {
            let (c, u) = (eps_rows[i] as f64, eps_rows[n + i] as f64);
            let eps = u + opts.guidance * (c - u);
            let want = a_prev.sqrt() * with[i] as f64 + (1.0 - a_prev).sqrt() * eps;
            assert!(
                (next[i] as f64 - want).abs() < 1e-4,
                "{i}: {} vs {want}",
                next[i]
            );
        }
        Ok(())
    }

    fn save_tiny(dir: &Path) -> DiffusionConfig {
        let (model, maps) = tiny_model();
        let json = serde_json::to_string(&model.config).unwrap();
        std::fs::write(dir.join(CONFIG_FILE), json).unwrap();
        for (m, f) in maps.iter().zip([VAE_FILE, UNET_FILE, CLASSIFIER_FILE]) {
            m.save(dir.join(f)).unwrap();
        }
        model.config
    }

    fn load_err(dir: &Path) -> (PathBuf, String) {
        match DiffusionModel::load(dir, &Device::Cpu) {
            Err(crate::Error::Weights { path, detail }) => (path, detail),
            Err(e) => panic!("expected a Weights error, got {e}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    fn rewrite(path: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
        let mut t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
        edit(&mut t);
        candle_core::safetensors::save(&t, path).unwrap();
    }

    #[test]
    fn load_reads_what_was_saved_and_names_bad_files_and_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let config = save_tiny(d);
        let model = DiffusionModel::load(d, &Device::Cpu).unwrap();
        assert_eq!(model.config, config);
        assert_eq!(model.weight_files.len(), 4);
        assert!(model.classifier.is_some());

        // Wrong shape: the tensor and both shapes are named.
        let unet = d.join(UNET_FILE);
        let good = std::fs::read(&unet).unwrap();
        rewrite(&unet, |t| {
            t.insert(
                "conv_in.bias".into(),
                Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(),
            );
        });
        let (path, detail) = load_err(d);
        assert_eq!(path, unet);
        assert!(detail.contains("conv_in.bias"), "{detail}");
        assert!(detail.contains("[8]") && detail.contains("[5]"), "{detail}");

        // Missing tensor.
        std::fs::write(&unet, &good).unwrap();
        rewrite(&unet, |t| {
            t.remove("mid_block.attentions.0.to_q.weight");
        });
        let (path, detail) = load_err(d);
        assert_eq!(path, unet);
        assert!(
            detail.contains("mid_block.attentions.0.to_q.weight"),
            "{detail}"
        );

        // Unexpected tensor.
        std::fs::write(&unet, &good).unwrap();
        rewrite(&unet, |t| {
            t.insert(
                "extra.weight".into(),
                Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
            );
        });
        let (path, detail) = load_err(d);
        assert_eq!(path, unet);
        assert!(
            detail.contains("unexpected") && detail.contains("extra.weight"),
            "{detail}"
        );
        std::fs::write(&unet, &good).unwrap();

        // A NaN weight: the file and tensor are named.
        rewrite(&unet, |t| {
            let w = &t["conv_in.bias"];
            let nan = w.ones_like().unwrap().affine(f64::NAN, 0.0).unwrap();
            t.insert("conv_in.bias".into(), nan);
        });
        let (path, detail) = load_err(d);
        assert_eq!(path, unet);
        assert!(detail.contains("`conv_in.bias` holds NaN"), "{detail}");
        std::fs::write(&unet, &good).unwrap();

        // Truncated file.
        let vae = d.join(VAE_FILE);
        let bytes = std::fs::read(&vae).unwrap();
        std::fs::write(&vae, &bytes[..bytes.len() / 2]).unwrap();
        let (path, detail) = load_err(d);
        assert_eq!(path, vae);
        assert!(detail.contains("truncated"), "{detail}");

        // Missing file.
        std::fs::remove_file(&vae).unwrap();
        let (path, detail) = load_err(d);
        assert_eq!(path, vae);
        assert!(detail.contains("cannot read"), "{detail}");

        // Config that contradicts itself names the fields.
        std::fs::write(&vae, &bytes).unwrap();
        let mut bad = config.clone();
        bad.class_names.pop();
        std::fs::write(d.join(CONFIG_FILE), serde_json::to_string(&bad).unwrap()).unwrap();
        let (path, detail) = load_err(d);
        assert_eq!(path, d.join(CONFIG_FILE));
        assert!(detail.contains("class_names"), "{detail}");
    }
}
