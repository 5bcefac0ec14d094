//! The layers the UNet and the VAE share, named and computed as diffusers' `ResnetBlock2D`,
//! `Attention`, `Downsample2D` and `Upsample2D`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{
    conv2d, group_norm, linear, linear_no_bias, Conv2d, Conv2dConfig, GroupNorm, Linear, VarBuilder,
};

/// Scores of one attention call above this many bytes are computed in slices of heads, so
/// that a 64x64 self-attention (4096 x 4096 per head) does not hold every head at once.
const SCORES_BUDGET_BYTES: usize = 256 << 20;

pub fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: pad,
        stride,
        ..Default::default()
    };
    conv2d(cin, cout, k, cfg, vb)
}

/// diffusers' `ResnetBlock2D` (time scale shift "default", output scale 1).
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    pub fn new(
        cin: usize,
        cout: usize,
        temb: Option<usize>,
        groups: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, cin, eps, vb.pp("norm1"))?,
            conv1: conv(cin, cout, 3, 1, 1, vb.pp("conv1"))?,
            time_emb_proj: match temb {
                Some(d) => Some(linear(d, cout, vb.pp("time_emb_proj"))?),
                None => None,
            },
            norm2: group_norm(groups, cout, eps, vb.pp("norm2"))?,
            conv2: conv(cout, cout, 3, 1, 1, vb.pp("conv2"))?,
            conv_shortcut: if cin != cout {
                Some(conv(cin, cout, 1, 1, 0, vb.pp("conv_shortcut"))?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let e = proj.forward(&temb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
            h = h.broadcast_add(&e)?;
        }
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        match &self.conv_shortcut {
            Some(c) => c.forward(x)? + h,
            None => x + h,
        }
    }
}

/// Multi-head attention as diffusers' `Attention` (to_q, to_k, to_v, to_out.0), computed in
/// f32 (so `upcast_attention` / `upcast_softmax` change nothing here).
#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    /// `context_dim` is the width of what keys and values are computed from (the query's
    /// own width for self-attention); `bias` applies to q, k and v (to_out always has one).
    pub fn new(
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let lin = |i: usize, o: usize, vb: VarBuilder| {
            if bias {
                linear(i, o, vb)
            } else {
                linear_no_bias(i, o, vb)
            }
        };
        Ok(Self {
            to_q: lin(query_dim, inner, vb.pp("to_q"))?,
            to_k: lin(context_dim, inner, vb.pp("to_k"))?,
            to_v: lin(context_dim, inner, vb.pp("to_v"))?,
            to_out: linear(inner, query_dim, vb.pp("to_out.0"))?,
            heads,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, inner) = x.dims3()?;
        x.reshape((b, n, self.heads, inner / self.heads))?
            .transpose(1, 2)?
            .reshape((b * self.heads, n, inner / self.heads))?
            .contiguous()
    }

    /// `x` `[B, N, query_dim]` attends to `context` `[B, M, context_dim]` (itself when
    /// `None`). With `want_probs`, also returns the attention probabilities averaged over
    /// heads, `[B, N, M]`.
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, n, _) = x.dims3()?;
        let ctx = context.unwrap_or(x);
        let m = ctx.dim(1)?;
        let q = self.split_heads(&self.to_q.forward(x)?)?;
        let k = self.split_heads(&self.to_k.forward(ctx)?)?;
        let v = self.split_heads(&self.to_v.forward(ctx)?)?;
        let bh = b * self.heads;
        let per_slice = n * m * 4;
        let slice = if want_probs {
            bh
        } else {
            (SCORES_BUDGET_BYTES / per_slice.max(1)).clamp(1, bh)
        };
        let kt = k.transpose(1, 2)?;
        let mut outs = Vec::with_capacity(bh.div_ceil(slice));
        let mut probs_mean = None;
        let mut start = 0;
        while start < bh {
            let len = slice.min(bh - start);
            let scores = (q
                .narrow(0, start, len)?
                .matmul(&kt.narrow(0, start, len)?)?
                * self.scale)?;
            let p = candle_nn::ops::softmax_last_dim(&scores)?;
            outs.push(p.matmul(&v.narrow(0, start, len)?)?);
            if want_probs {
                probs_mean = Some(p.reshape((b, self.heads, n, m))?.mean(1)?);
            }
            start += len;
        }
        let out = if outs.len() == 1 {
            outs.pop().expect("one slice")
        } else {
            Tensor::cat(&outs, 0)?
        };
        let d = out.dim(2)?;
        let out = out
            .reshape((b, self.heads, n, d))?
            .transpose(1, 2)?
            .reshape((b, n, self.heads * d))?;
        Ok((self.to_out.forward(&out)?, probs_mean))
    }
}

/// diffusers' `Downsample2D` with a convolution: stride 2, padding 1 (UNet) or an explicit
/// (0, 1, 0, 1) zero pad and no conv padding (VAE encoder, `padding=0`).
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    asymmetric_pad: bool,
}

impl Downsample2D {
    pub fn new(channels: usize, padding: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv(channels, channels, 3, 2, padding, vb.pp("conv"))?,
            asymmetric_pad: padding == 0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.asymmetric_pad {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// diffusers' `Upsample2D`: nearest-neighbour x2, then a 3x3 convolution.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv(channels, channels, 3, 1, 1, vb.pp("conv"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
    }
}
