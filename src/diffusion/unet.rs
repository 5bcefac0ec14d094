//! The noise-predicting UNet over 8x8x4 latents: two resolutions (8x8, 4x4), residual blocks
//! conditioned on the timestep (sinusoidal -> MLP) plus a learned class embedding whose last
//! row is the "null" class used for classifier-free guidance, and a self-attention mid block
//! (the "h-space" of Kwon et al.). Module names follow diffusers so that site names
//! (`unet.down_blocks.{i}`, `unet.mid_block`, `unet.up_blocks.{i}`, `unet.out`) mean what
//! users expect.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{embedding, group_norm, linear, Conv2d, Embedding, GroupNorm, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::blocks::{conv3x3, ResBlock};
use crate::sites::Hooks;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    pub in_channels: usize,
    /// Channels at 8x8 and at 4x4.
    pub channels: [usize; 2],
    pub groups: usize,
    pub attention_heads: usize,
    /// Real classes; the class embedding has one more row, the null class.
    pub n_classes: usize,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 4,
            channels: [32, 64],
            groups: 8,
            attention_heads: 4,
            n_classes: 3,
        }
    }
}

impl UNetConfig {
    pub fn time_embed_dim(&self) -> usize {
        4 * self.channels[0]
    }
}

/// Sinusoidal timestep features `[N, dim]`, cosines first (diffusers' `flip_sin_to_cos`).
pub fn timestep_features(timesteps: &[usize], dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), device)?;
    let t: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();
    let t = Tensor::from_vec(t, (timesteps.len(), 1), device)?;
    let args = t.broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], 1)
}

/// Multi-head self-attention over the spatial positions, with a residual connection.
#[derive(Debug, Clone)]
struct SpatialAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl SpatialAttention {
    fn new(channels: usize, groups: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        if !channels.is_multiple_of(heads) {
            candle_core::bail!("attention: {channels} channels do not split into {heads} heads");
        }
        Ok(Self {
            group_norm: group_norm(groups, channels, 1e-5, vb.pp("group_norm"))?,
            to_q: linear(channels, channels, vb.pp("to_q"))?,
            to_k: linear(channels, channels, vb.pp("to_k"))?,
            to_v: linear(channels, channels, vb.pp("to_v"))?,
            to_out: linear(channels, channels, vb.pp("to_out"))?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (n, hd) = (h * w, c / self.heads);
        let tokens = self
            .group_norm
            .forward(x)?
            .reshape((b, c, n))?
            .transpose(1, 2)?
            .contiguous()?;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.to_q.forward(&tokens)?)?;
        let k = split(self.to_k.forward(&tokens)?)?;
        let v = split(self.to_v.forward(&tokens)?)?;
        let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? / (hd as f64).sqrt())?;
        let attn = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        let out = self.to_out.forward(&out)?;
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?;
        x + out
    }
}

#[derive(Debug, Clone)]
pub struct UNet {
    pub config: UNetConfig,
    time_linear_1: Linear,
    time_linear_2: Linear,
    class_embedding: Embedding,
    conv_in: Conv2d,
    down0: ResBlock,
    downsample0: Conv2d,
    down1: ResBlock,
    mid_res0: ResBlock,
    mid_attn: SpatialAttention,
    mid_res1: ResBlock,
    up0: ResBlock,
    upsample0: Conv2d,
    up1: ResBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet {
    pub fn new(config: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        let [c0, c1] = config.channels;
        let (g, te) = (config.groups, config.time_embed_dim());
        let t = Some(te);
        Ok(Self {
            config: config.clone(),
            time_linear_1: linear(c0, te, vb.pp("time_embedding.linear_1"))?,
            time_linear_2: linear(te, te, vb.pp("time_embedding.linear_2"))?,
            class_embedding: embedding(config.n_classes + 1, te, vb.pp("class_embedding"))?,
            conv_in: conv3x3(config.in_channels, c0, 1, vb.pp("conv_in"))?,
            down0: ResBlock::new(c0, c0, g, t, vb.pp("down_blocks.0.resnets.0"))?,
            downsample0: conv3x3(c0, c0, 2, vb.pp("down_blocks.0.downsamplers.0.conv"))?,
            down1: ResBlock::new(c0, c1, g, t, vb.pp("down_blocks.1.resnets.0"))?,
            mid_res0: ResBlock::new(c1, c1, g, t, vb.pp("mid_block.resnets.0"))?,
            mid_attn: SpatialAttention::new(
                c1,
                g,
                config.attention_heads,
                vb.pp("mid_block.attentions.0"),
            )?,
            mid_res1: ResBlock::new(c1, c1, g, t, vb.pp("mid_block.resnets.1"))?,
            up0: ResBlock::new(2 * c1, c1, g, t, vb.pp("up_blocks.0.resnets.0"))?,
            upsample0: conv3x3(c1, c1, 1, vb.pp("up_blocks.0.upsamplers.0.conv"))?,
            up1: ResBlock::new(c1 + c0, c0, g, t, vb.pp("up_blocks.1.resnets.0"))?,
            norm_out: group_norm(g, c0, 1e-5, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(c0, config.in_channels, 1, vb.pp("conv_out"))?,
        })
    }

    /// Predicted noise for `x` (`[N, 4, 8, 8]`) at one timestep and one class per row
    /// (`classes[i] == n_classes` is the null class). Fires the `unet.*` sites with N rows.
    pub fn forward(
        &self,
        x: &Tensor,
        timesteps: &[usize],
        classes: &[u32],
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        if timesteps.len() != n || classes.len() != n {
            candle_core::bail!(
                "unet: {n} rows but {} timesteps and {} classes",
                timesteps.len(),
                classes.len()
            );
        }
        if let Some(&bad) = classes
            .iter()
            .find(|&&c| c as usize > self.config.n_classes)
        {
            candle_core::bail!(
                "unet: class {bad} out of range (0..{} real, {} = unconditional)",
                self.config.n_classes,
                self.config.n_classes
            );
        }
        let dev = x.device();
        let temb = timestep_features(timesteps, self.config.channels[0], dev)?;
        let temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&temb)?.silu()?)?;
        let cls = Tensor::new(classes, dev)?.to_dtype(DType::U32)?;
        let temb = (temb + self.class_embedding.forward(&cls)?)?;
        let te = Some(&temb);

        let h = self.conv_in.forward(x)?;
        let skip0 = self.down0.forward(&h, te)?;
        let h = self.downsample0.forward(&skip0)?;
        let h = hooks.site("unet.down_blocks.0", h)?;
        let skip1 = self.down1.forward(&h, te)?;
        let skip1 = hooks.site("unet.down_blocks.1", skip1)?;

        let h = self.mid_res0.forward(&skip1, te)?;
        let h = self.mid_attn.forward(&h)?;
        let h = self.mid_res1.forward(&h, te)?;
        let h = hooks.site("unet.mid_block", h)?;

        let h = self.up0.forward(&Tensor::cat(&[&h, &skip1], 1)?, te)?;
        let (hh, ww) = (h.dim(2)?, h.dim(3)?);
        let h = self
            .upsample0
            .forward(&h.upsample_nearest2d(2 * hh, 2 * ww)?)?;
        let h = hooks.site("unet.up_blocks.0", h)?;
        let h = self.up1.forward(&Tensor::cat(&[&h, &skip0], 1)?, te)?;
        let h = hooks.site("unet.up_blocks.1", h)?;

        let out = self.conv_out.forward(&self.norm_out.forward(&h)?.silu()?)?;
        hooks.site("unet.out", out)
    }
}
