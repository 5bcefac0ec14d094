//! diffusers' `UNet2DConditionModel` for Stable Diffusion 1.x / 2.x, with hook sites after
//! every down block, the mid block ("h-space") and every up block, on the output
//! (`unet.out`), and the head-averaged cross-attention probabilities of every
//! `Transformer2DModel` (`unet.down_blocks.{i}.attentions.{j}.attn2`, ...).
//!
//! A replacement at a block's site also replaces that tensor in the skip connections it feeds
//! (the block's last output state, which is the same tensor). The cross-attention sites are
//! observations only: they are computed only when a tap wants them, averaged over heads and
//! pooled to at most [`DEFAULT_ATTN_GRID`] cells a side, so a replacement there has no effect.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{group_norm, layer_norm, linear, Conv2d, GroupNorm, LayerNorm, Linear, VarBuilder};

use super::config::UNetConfig;
use super::nn::{conv, Attention, Downsample2D, ResnetBlock2D, Upsample2D};
use crate::sites::Hooks;

/// Cross-attention maps larger than this many cells a side are average-pooled down to it:
/// a 64x64 SD latent gives 16x16 maps per prompt token.
pub const DEFAULT_ATTN_GRID: usize = 16;

/// `proj_in` / `proj_out` of a `Transformer2DModel`: a 1x1 convolution (SD 1.x) or a linear
/// layer on the flattened positions (SD 2.x, `use_linear_projection`).
#[derive(Debug, Clone)]
enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

impl Proj {
    fn new(cin: usize, cout: usize, use_linear: bool, vb: VarBuilder) -> Result<Self> {
        Ok(if use_linear {
            Proj::Linear(linear(cin, cout, vb)?)
        } else {
            Proj::Conv(conv(cin, cout, 1, 1, 0, vb)?)
        })
    }
}

/// self-attention, cross-attention, GEGLU feed-forward, each after a layer norm with a
/// residual.
#[derive(Debug, Clone)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_proj: Linear,
    ff_out: Linear,
}

impl BasicTransformerBlock {
    fn new(dim: usize, heads: usize, context_dim: usize, vb: VarBuilder) -> Result<Self> {
        let head_dim = dim / heads;
        let inner = 4 * dim;
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(dim, dim, heads, head_dim, false, vb.pp("attn1"))?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(dim, context_dim, heads, head_dim, false, vb.pp("attn2"))?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff_proj: linear(dim, 2 * inner, vb.pp("ff.net.0.proj"))?,
            ff_out: linear(inner, dim, vb.pp("ff.net.2"))?,
        })
    }

    /// Returns the block output and, when asked, the head-averaged cross-attention
    /// probabilities `[B, N, M]`.
    fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (a, _) = self.attn1.forward(&self.norm1.forward(x)?, None, false)?;
        let x = (a + x)?;
        let (a, probs) = self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context), want_probs)?;
        let x = (a + x)?;
        let h = self.ff_proj.forward(&self.norm3.forward(&x)?)?;
        let inner = h.dim(2)? / 2;
        let h = (h.narrow(2, 0, inner)? * h.narrow(2, inner, inner)?.gelu_erf()?)?;
        Ok(((self.ff_out.forward(&h)? + x)?, probs))
    }
}

/// `Transformer2DModel` with one transformer block (SD 1.x / 2.x).
#[derive(Debug, Clone)]
struct Transformer2D {
    norm: GroupNorm,
    proj_in: Proj,
    block: BasicTransformerBlock,
    proj_out: Proj,
    /// The cross-attention site, e.g. `unet.down_blocks.0.attentions.1.attn2`.
    site: String,
}

impl Transformer2D {
    fn new(c: usize, heads: usize, cfg: &UNetConfig, site: String, vb: VarBuilder) -> Result<Self> {
        let lin = cfg.use_linear_projection;
        Ok(Self {
            norm: group_norm(cfg.norm_num_groups, c, 1e-6, vb.pp("norm"))?,
            proj_in: Proj::new(c, c, lin, vb.pp("proj_in"))?,
            block: BasicTransformerBlock::new(
                c,
                heads,
                cfg.cross_attention_dim,
                vb.pp("transformer_blocks.0"),
            )?,
            proj_out: Proj::new(c, c, lin, vb.pp("proj_out"))?,
            site,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        grid: usize,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = self.norm.forward(x)?;
        let tokens = |t: &Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let t = match &self.proj_in {
            Proj::Conv(p) => tokens(&p.forward(&n)?)?,
            Proj::Linear(p) => p.forward(&tokens(&n)?)?,
        };
        let want = hooks.wants(&self.site);
        let (t, probs) = self.block.forward(&t, context, want)?;
        if let Some(p) = probs {
            let m = p.dim(2)?;
            let maps = p.transpose(1, 2)?.reshape((b, m, h, w))?;
            hooks.site(&self.site, pool_map(&maps, grid)?)?;
        }
        let image = |t: &Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2));
        let out = match &self.proj_out {
            Proj::Conv(p) => p.forward(&image(&t)?.contiguous()?)?,
            Proj::Linear(p) => image(&p.forward(&t)?)?,
        };
        out + x
    }
}

/// The pooling factor that brings a side of `side` cells to at most `grid`.
pub fn pool_factor(side: usize, grid: usize) -> usize {
    side.div_ceil(grid.max(1)).max(1)
}

fn pool_map(maps: &Tensor, grid: usize) -> Result<Tensor> {
    let (_, _, h, w) = maps.dims4()?;
    let f = pool_factor(h.max(w), grid);
    if f == 1 {
        Ok(maps.clone())
    } else {
        maps.avg_pool2d(f)
    }
}

#[derive(Debug, Clone)]
struct Block {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    downsample: Option<Downsample2D>,
    upsample: Option<Upsample2D>,
}

/// UNet2DConditionModel. VarBuilder paths are diffusers' keys.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    pub config: UNetConfig,
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    down_blocks: Vec<Block>,
    mid_resnets: [ResnetBlock2D; 2],
    mid_attention: Transformer2D,
    up_blocks: Vec<Block>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    /// Cross-attention maps are pooled to at most this many cells a side.
    pub attn_grid: usize,
}

impl UNet2DConditionModel {
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let nb = ch.len();
        let temb = 4 * ch[0];
        let (g, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let resnet = |cin: usize, cout: usize, vb: VarBuilder| {
            ResnetBlock2D::new(cin, cout, Some(temb), g, eps, vb)
        };

        let mut down_blocks = Vec::with_capacity(nb);
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            let vbb = vb.pp(format!("down_blocks.{i}"));
            let mut block = Block {
                resnets: Vec::new(),
                attentions: Vec::new(),
                downsample: None,
                upsample: None,
            };
            for j in 0..cfg.layers_per_block {
                let c = if j == 0 { cin } else { cout };
                block
                    .resnets
                    .push(resnet(c, cout, vbb.pp(format!("resnets.{j}")))?);
                if cfg.down_cross[i] {
                    let site = format!("unet.down_blocks.{i}.attentions.{j}.attn2");
                    block.attentions.push(Transformer2D::new(
                        cout,
                        cfg.heads[i],
                        cfg,
                        site,
                        vbb.pp(format!("attentions.{j}")),
                    )?);
                }
            }
            if i + 1 < nb {
                block.downsample = Some(Downsample2D::new(cout, 1, vbb.pp("downsamplers.0"))?);
            }
            down_blocks.push(block);
            cin = cout;
        }

        let last = ch[nb - 1];
        let vbm = vb.pp("mid_block");
        let mid_resnets = [
            resnet(last, last, vbm.pp("resnets.0"))?,
            resnet(last, last, vbm.pp("resnets.1"))?,
        ];
        let mid_attention = Transformer2D::new(
            last,
            cfg.heads[nb - 1],
            cfg,
            "unet.mid_block.attentions.0.attn2".into(),
            vbm.pp("attentions.0"),
        )?;

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let rev_heads: Vec<usize> = cfg.heads.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(nb);
        let mut out_c = rev[0];
        for i in 0..nb {
            let prev_out = out_c;
            out_c = rev[i];
            let in_c = rev[(i + 1).min(nb - 1)];
            let vbb = vb.pp(format!("up_blocks.{i}"));
            let n_layers = cfg.layers_per_block + 1;
            let mut block = Block {
                resnets: Vec::new(),
                attentions: Vec::new(),
                downsample: None,
                upsample: None,
            };
            for j in 0..n_layers {
                let skip = if j == n_layers - 1 { in_c } else { out_c };
                let rin = if j == 0 { prev_out } else { out_c };
                block
                    .resnets
                    .push(resnet(rin + skip, out_c, vbb.pp(format!("resnets.{j}")))?);
                if cfg.up_cross[i] {
                    let site = format!("unet.up_blocks.{i}.attentions.{j}.attn2");
                    block.attentions.push(Transformer2D::new(
                        out_c,
                        rev_heads[i],
                        cfg,
                        site,
                        vbb.pp(format!("attentions.{j}")),
                    )?);
                }
            }
            if i + 1 < nb {
                block.upsample = Some(Upsample2D::new(out_c, vbb.pp("upsamplers.0"))?);
            }
            up_blocks.push(block);
        }

        Ok(Self {
            conv_in: conv(cfg.in_channels, ch[0], 3, 1, 1, vb.pp("conv_in"))?,
            time_linear_1: linear(ch[0], temb, vb.pp("time_embedding.linear_1"))?,
            time_linear_2: linear(temb, temb, vb.pp("time_embedding.linear_2"))?,
            down_blocks,
            mid_resnets,
            mid_attention,
            up_blocks,
            conv_norm_out: group_norm(g, ch[0], eps, vb.pp("conv_norm_out"))?,
            conv_out: conv(ch[0], cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
            config: cfg.clone(),
            attn_grid: DEFAULT_ATTN_GRID,
        })
    }

    /// The sinusoidal timestep features `[B, block_out_channels[0]]` (diffusers'
    /// `get_timestep_embedding`).
    fn timestep_features(&self, timesteps: &[f64], x: &Tensor) -> Result<Tensor> {
        let dim = self.config.block_out_channels[0];
        let half = dim / 2;
        let shift = self.config.freq_shift;
        let mut data = Vec::with_capacity(timesteps.len() * dim);
        for &t in timesteps {
            // In f32 step by step as torch does it: at t ~ 1000 the sine's argument carries
            // the rounding of every factor.
            let t = t as f32;
            let args: Vec<f32> = (0..half)
                .map(|k| {
                    let exponent =
                        -(10000f64.ln() as f32) * k as f32 / (half as f32 - shift as f32);
                    t * exponent.exp()
                })
                .collect();
            let (sin, cos): (Vec<f32>, Vec<f32>) = args.iter().map(|a| (a.sin(), a.cos())).unzip();
            if self.config.flip_sin_to_cos {
                data.extend(cos);
                data.extend(sin);
            } else {
                data.extend(sin);
                data.extend(cos);
            }
            if dim % 2 == 1 {
                data.push(0.0);
            }
        }
        Tensor::from_vec(data, (timesteps.len(), dim), x.device())?.to_dtype(DType::F32)
    }

    /// Predicts noise (or v) for `x` `[B, C, h, w]` at one timestep per row, attending to
    /// `context` `[B, M, cross_attention_dim]`. Fires the block sites and `unet.out`.
    pub fn forward(
        &self,
        x: &Tensor,
        timesteps: &[f64],
        context: &Tensor,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let f = self.config.downsample();
        if h % f != 0 || w % f != 0 {
            candle_core::bail!(
                "latents of {h}x{w} do not halve evenly {} times; use a size that is a multiple of {f}",
                f.trailing_zeros()
            );
        }
        if timesteps.len() != b || context.dim(0)? != b {
            candle_core::bail!(
                "{b} latents, {} timesteps and {} contexts: they must agree",
                timesteps.len(),
                context.dim(0)?
            );
        }
        let temb = self.timestep_features(timesteps, x)?;
        let temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&temb)?.silu()?)?;
        let grid = self.attn_grid;

        let mut h = self.conv_in.forward(x)?;
        let mut skips = vec![h.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            for (j, r) in block.resnets.iter().enumerate() {
                h = r.forward(&h, Some(&temb))?;
                if let Some(a) = block.attentions.get(j) {
                    h = a.forward(&h, context, grid, hooks)?;
                }
                skips.push(h.clone());
            }
            if let Some(d) = &block.downsample {
                h = d.forward(&h)?;
                skips.push(h.clone());
            }
            h = hooks.site(&format!("unet.down_blocks.{i}"), h)?;
            if let Some(last) = skips.last_mut() {
                *last = h.clone();
            }
        }

        h = self.mid_resnets[0].forward(&h, Some(&temb))?;
        h = self.mid_attention.forward(&h, context, grid, hooks)?;
        h = self.mid_resnets[1].forward(&h, Some(&temb))?;
        h = hooks.site("unet.mid_block", h)?;

        for (i, block) in self.up_blocks.iter().enumerate() {
            for (j, r) in block.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| {
                    candle_core::Error::Msg("UNet skip connections ran out".into())
                })?;
                h = r.forward(&Tensor::cat(&[&h, &skip], 1)?, Some(&temb))?;
                if let Some(a) = block.attentions.get(j) {
                    h = a.forward(&h, context, grid, hooks)?;
                }
            }
            if let Some(u) = &block.upsample {
                h = u.forward(&h)?;
            }
            h = hooks.site(&format!("unet.up_blocks.{i}"), h)?;
        }

        let out = self
            .conv_out
            .forward(&self.conv_norm_out.forward(&h)?.silu()?)?;
        hooks.site("unet.out", out)
    }

    /// The sites of one forward pass at latent size `h` x `w`, in firing order, with their
    /// shapes per sample; `tokens` is the text length (the cross-attention maps' `position`).
    pub fn sites(&self, h: usize, w: usize, tokens: usize) -> Vec<crate::sites::SiteInfo> {
        use crate::sites::SiteInfo;
        let cfg = &self.config;
        let nb = cfg.block_out_channels.len();
        let chw = |c: usize, h: usize, w: usize| [("channel", c), ("height", h), ("width", w)];
        let attn = |name: String, h: usize, w: usize| {
            let f = pool_factor(h.max(w), self.attn_grid);
            SiteInfo::new(
                name,
                &[("position", tokens), ("height", h / f), ("width", w / f)],
                true,
            )
        };
        let mut out = Vec::new();
        let (mut sh, mut sw) = (h, w);
        for i in 0..nb {
            let c = cfg.block_out_channels[i];
            for a in &self.down_blocks[i].attentions {
                out.push(attn(a.site.clone(), sh, sw));
            }
            if i + 1 < nb {
                sh /= 2;
                sw /= 2;
            }
            out.push(SiteInfo::new(
                format!("unet.down_blocks.{i}"),
                &chw(c, sh, sw),
                true,
            ));
        }
        let last = cfg.block_out_channels[nb - 1];
        out.push(attn(self.mid_attention.site.clone(), sh, sw));
        out.push(SiteInfo::new("unet.mid_block", &chw(last, sh, sw), true));
        for i in 0..nb {
            let c = cfg.block_out_channels[nb - 1 - i];
            for a in &self.up_blocks[i].attentions {
                out.push(attn(a.site.clone(), sh, sw));
            }
            if i + 1 < nb {
                sh *= 2;
                sw *= 2;
            }
            out.push(SiteInfo::new(
                format!("unet.up_blocks.{i}"),
                &chw(c, sh, sw),
                true,
            ));
        }
        out.push(SiteInfo::new(
            "unet.out",
            &chw(cfg.out_channels, h, w),
            true,
        ));
        out
    }
}
