//! The KL-regularised autoencoder that maps 32x32x3 images to 8x8x4 latents (factor 4) and
//! back. The pixels are folded into channels first (space-to-depth), so every convolution
//! runs at 8x8 or 16x16: a CPU trains it in minutes. The KL weight is tiny, as in Stable
//! Diffusion, so the posterior is nearly deterministic and reconstructions stay sharp.

use candle_core::{Module, Result, Tensor};
use candle_nn::{group_norm, Conv2d, GroupNorm, VarBuilder};
use serde::{Deserialize, Serialize};

use super::blocks::{conv3x3, depth_to_space, space_to_depth, ResBlock};
use crate::sites::Hooks;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    pub image_channels: usize,
    pub latent_channels: usize,
    /// Channels of the 8x8 feature maps.
    pub hidden: usize,
    /// Residual blocks in the encoder and in the decoder.
    pub blocks: usize,
    pub groups: usize,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            image_channels: 3,
            latent_channels: 4,
            hidden: 64,
            blocks: 2,
            groups: 8,
        }
    }
}

/// Image side / latent side.
pub const DOWNSAMPLE: usize = 4;
/// Channels of the 16x16 refinement stage of the decoder, before the last unfold.
const DECODER_FINE: usize = 32;

#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv2d,
    blocks: Vec<ResBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let cin = cfg.image_channels * DOWNSAMPLE * DOWNSAMPLE;
        let blocks = (0..cfg.blocks)
            .map(|i| {
                ResBlock::new(
                    cfg.hidden,
                    cfg.hidden,
                    cfg.groups,
                    None,
                    vb.pp(format!("blocks.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv3x3(cin, cfg.hidden, 1, vb.pp("conv_in"))?,
            blocks,
            norm_out: group_norm(cfg.groups, cfg.hidden, 1e-5, vb.pp("norm_out"))?,
            conv_out: conv3x3(cfg.hidden, 2 * cfg.latent_channels, 1, vb.pp("conv_out"))?,
        })
    }

    /// Posterior moments `[B, 2*latent_channels, 8, 8]` (mean first, then log-variance).
    fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(&space_to_depth(image, DOWNSAMPLE)?)?;
        for b in &self.blocks {
            h = b.forward(&h, None)?;
        }
        self.conv_out.forward(&self.norm_out.forward(&h)?.silu()?)
    }
}

#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv2d,
    blocks: Vec<ResBlock>,
    norm_out: GroupNorm,
    conv_fine: Conv2d,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let blocks = (0..cfg.blocks)
            .map(|i| {
                ResBlock::new(
                    cfg.hidden,
                    cfg.hidden,
                    cfg.groups,
                    None,
                    vb.pp(format!("blocks.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv3x3(cfg.latent_channels, cfg.hidden, 1, vb.pp("conv_in"))?,
            blocks,
            norm_out: group_norm(cfg.groups, cfg.hidden, 1e-5, vb.pp("norm_out"))?,
            conv_fine: conv3x3(cfg.hidden / 4, DECODER_FINE, 1, vb.pp("conv_fine"))?,
            conv_out: conv3x3(DECODER_FINE, cfg.image_channels * 4, 1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(z)?;
        for b in &self.blocks {
            h = b.forward(&h, None)?;
        }
        let h = depth_to_space(&self.norm_out.forward(&h)?.silu()?, 2)?;
        let h = self.conv_fine.forward(&h)?.silu()?;
        depth_to_space(&self.conv_out.forward(&h)?, 2)
    }
}

#[derive(Debug, Clone)]
pub struct Vae {
    pub config: VaeConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
}

impl Vae {
    pub fn new(config: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        if !config.hidden.is_multiple_of(4) || !config.hidden.is_multiple_of(config.groups) {
            candle_core::bail!(
                "vae.hidden = {} must be a multiple of 4 and of groups = {}",
                config.hidden,
                config.groups
            );
        }
        Ok(Self {
            config: config.clone(),
            encoder: Encoder::new(config, vb.pp("encoder"))?,
            decoder: Decoder::new(config, vb.pp("decoder"))?,
        })
    }

    /// Posterior mean and log-variance of `image` (`[B, 3, 32, 32]` in [-1, 1]). Fires
    /// `image`, `vae.encoder.mean`, `vae.encoder.logvar`.
    pub fn encode(&self, image: &Tensor, hooks: &mut Hooks) -> Result<(Tensor, Tensor)> {
        let image = hooks.site("image", image.clone())?;
        let moments = self.encoder.forward(&image)?;
        let c = self.config.latent_channels;
        let mean = hooks.site("vae.encoder.mean", moments.narrow(1, 0, c)?)?;
        // Same clamp as diffusers' DiagonalGaussianDistribution.
        let logvar = moments.narrow(1, c, c)?.clamp(-30f32, 20f32)?;
        let logvar = hooks.site("vae.encoder.logvar", logvar)?;
        Ok((mean, logvar))
    }

    /// Unscaled latent `[B, 4, 8, 8]` to image `[B, 3, 32, 32]` (not clamped). Fires
    /// `vae.decoder.out`.
    pub fn decode(&self, z: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let out = self.decoder.forward(z)?;
        hooks.site("vae.decoder.out", out)
    }
}
