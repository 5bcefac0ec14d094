//! diffusers' `AutoencoderKL`, with the sites `vae.encoder.mean`, `vae.encoder.logvar` (the
//! posterior after `quant_conv`, log-variance clamped to [-30, 20] as diffusers does) and
//! `vae.decoder.out` (the decoder's output before any clamping to [-1, 1]).

use candle_core::{Module, Result, Tensor};
use candle_nn::{group_norm, Conv2d, GroupNorm, VarBuilder};

use super::config::VaeConfig;
use super::nn::{conv, Attention, Downsample2D, ResnetBlock2D, Upsample2D};
use crate::sites::Hooks;

/// diffusers' VAE norms use eps 1e-6.
const EPS: f64 = 1e-6;

/// The single-head self-attention of the VAE's mid block, with its own group norm and a
/// residual connection.
#[derive(Debug, Clone)]
struct SpatialAttention {
    group_norm: GroupNorm,
    attn: Attention,
}

impl SpatialAttention {
    fn new(c: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            group_norm: group_norm(groups, c, EPS, vb.pp("group_norm"))?,
            attn: Attention::new(c, c, 1, c, true, vb)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            // candle-nn 0.11's Linear gives wrong values on this transposed (non-contiguous)
            // input; found by the parity test.
            .contiguous()?;
        let (out, _) = self.attn.forward(&t, None, false)?;
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?;
        out + x
    }
}

/// `UNetMidBlock2D` without a timestep: resnet, attention, resnet.
#[derive(Debug, Clone)]
struct MidBlock {
    resnets: [ResnetBlock2D; 2],
    attention: Option<SpatialAttention>,
}

impl MidBlock {
    fn new(c: usize, groups: usize, attention: bool, vb: VarBuilder) -> Result<Self> {
        let r =
            |i: usize| ResnetBlock2D::new(c, c, None, groups, EPS, vb.pp(format!("resnets.{i}")));
        Ok(Self {
            resnets: [r(0)?, r(1)?],
            attention: if attention {
                Some(SpatialAttention::new(c, groups, vb.pp("attentions.0"))?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x, None)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnets[1].forward(&h, None)
    }
}

#[derive(Debug, Clone)]
struct EncoderBlock {
    resnets: Vec<ResnetBlock2D>,
    downsample: Option<Downsample2D>,
}

#[derive(Debug, Clone)]
struct DecoderBlock {
    resnets: Vec<ResnetBlock2D>,
    upsample: Option<Upsample2D>,
}

#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<EncoderBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            let vb = vb.pp(format!("down_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let c = if j == 0 { cin } else { cout };
                    ResnetBlock2D::new(c, cout, None, g, EPS, vb.pp(format!("resnets.{j}")))
                })
                .collect::<Result<Vec<_>>>()?;
            let downsample = if i + 1 < ch.len() {
                Some(Downsample2D::new(cout, 0, vb.pp("downsamplers.0"))?)
            } else {
                None
            };
            down_blocks.push(EncoderBlock {
                resnets,
                downsample,
            });
            cin = cout;
        }
        let last = *ch.last().expect("config checked");
        Ok(Self {
            conv_in: conv(cfg.in_channels, ch[0], 3, 1, 1, vb.pp("conv_in"))?,
            down_blocks,
            mid_block: MidBlock::new(last, g, cfg.mid_block_add_attention, vb.pp("mid_block"))?,
            conv_norm_out: group_norm(g, last, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv(last, 2 * cfg.latent_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for block in &self.down_blocks {
            for r in &block.resnets {
                h = r.forward(&h, None)?;
            }
            if let Some(d) = &block.downsample {
                h = d.forward(&h)?;
            }
        }
        let h = self.mid_block.forward(&h)?;
        self.conv_out
            .forward(&self.conv_norm_out.forward(&h)?.silu()?)
    }
}

#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<DecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let mut up_blocks = Vec::with_capacity(rev.len());
        let mut cin = rev[0];
        for (i, &cout) in rev.iter().enumerate() {
            let vb = vb.pp(format!("up_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    let c = if j == 0 { cin } else { cout };
                    ResnetBlock2D::new(c, cout, None, g, EPS, vb.pp(format!("resnets.{j}")))
                })
                .collect::<Result<Vec<_>>>()?;
            let upsample = if i + 1 < rev.len() {
                Some(Upsample2D::new(cout, vb.pp("upsamplers.0"))?)
            } else {
                None
            };
            up_blocks.push(DecoderBlock { resnets, upsample });
            cin = cout;
        }
        let first = *cfg.block_out_channels.first().expect("config checked");
        Ok(Self {
            conv_in: conv(cfg.latent_channels, rev[0], 3, 1, 1, vb.pp("conv_in"))?,
            mid_block: MidBlock::new(rev[0], g, cfg.mid_block_add_attention, vb.pp("mid_block"))?,
            up_blocks,
            conv_norm_out: group_norm(g, first, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv(first, cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.mid_block.forward(&self.conv_in.forward(z)?)?;
        for block in &self.up_blocks {
            for r in &block.resnets {
                h = r.forward(&h, None)?;
            }
            if let Some(u) = &block.upsample {
                h = u.forward(&h)?;
            }
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward(&h)?.silu()?)
    }
}

/// AutoencoderKL. Paths are diffusers' keys: `encoder.*`, `decoder.*`, `quant_conv`,
/// `post_quant_conv`.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    pub config: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
}

impl AutoencoderKL {
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let l = cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            quant_conv: if cfg.use_quant_conv {
                Some(conv(2 * l, 2 * l, 1, 1, 0, vb.pp("quant_conv"))?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(conv(l, l, 1, 1, 0, vb.pp("post_quant_conv"))?)
            } else {
                None
            },
            config: cfg.clone(),
        })
    }

    /// Image `[B, C, H, W]` in [-1, 1] -> posterior (mean, logvar), each `[B, L, H/f, W/f]`.
    /// Fires `vae.encoder.mean` and `vae.encoder.logvar`.
    pub fn encode(&self, x: &Tensor, hooks: &mut Hooks) -> Result<(Tensor, Tensor)> {
        let mut moments = self.encoder.forward(x)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments)?;
        }
        let l = self.config.latent_channels;
        let mean = hooks.site("vae.encoder.mean", moments.narrow(1, 0, l)?)?;
        let logvar = moments.narrow(1, l, l)?.clamp(-30f32, 20f32)?;
        let logvar = hooks.site("vae.encoder.logvar", logvar)?;
        Ok((mean, logvar))
    }

    /// Unscaled latent `[B, L, h, w]` -> image; fires `vae.decoder.out`.
    pub fn decode(&self, z: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        hooks.site("vae.decoder.out", self.decoder.forward(&z)?)
    }
}
