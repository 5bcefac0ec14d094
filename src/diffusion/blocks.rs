//! Layers shared by the VAE, the UNet and the classifier: a residual block with an optional
//! timestep embedding, and the lossless space-to-depth reshapes that let the VAE work at 8x8
//! (convolutions at 32x32 are the expensive part of training on a CPU).

use candle_core::{Module, Result, Tensor};
use candle_nn::{conv2d, group_norm, linear, Conv2d, Conv2dConfig, GroupNorm, Linear, VarBuilder};

pub fn conv3x3(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        stride,
        ..Default::default()
    };
    conv2d(cin, cout, 3, cfg, vb)
}

pub fn conv1x1(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv2d(cin, cout, 1, Conv2dConfig::default(), vb)
}

/// GroupNorm -> SiLU -> conv, twice, plus a skip; the timestep embedding (when given) is
/// added between the two convolutions, as in diffusers' `ResnetBlock2D`.
#[derive(Debug, Clone)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResBlock {
    pub fn new(
        cin: usize,
        cout: usize,
        groups: usize,
        temb_dim: Option<usize>,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, cin, 1e-5, vb.pp("norm1"))?,
            conv1: conv3x3(cin, cout, 1, vb.pp("conv1"))?,
            time_emb_proj: match temb_dim {
                Some(d) => Some(linear(d, cout, vb.pp("time_emb_proj"))?),
                None => None,
            },
            norm2: group_norm(groups, cout, 1e-5, vb.pp("norm2"))?,
            conv2: conv3x3(cout, cout, 1, vb.pp("conv2"))?,
            conv_shortcut: if cin != cout {
                Some(conv1x1(cin, cout, vb.pp("conv_shortcut"))?)
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
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        skip + h
    }
}

/// `[B, C, H, W] -> [B, C*f*f, H/f, W/f]`, channel order (c, dy, dx) like PyTorch's
/// `pixel_unshuffle`.
pub fn space_to_depth(x: &Tensor, f: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h / f, f, w / f, f))?
        .permute((0, 1, 3, 5, 2, 4))?
        .reshape((b, c * f * f, h / f, w / f))
}

/// Inverse of [`space_to_depth`] (PyTorch's `pixel_shuffle`).
pub fn depth_to_space(x: &Tensor, f: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let co = c / (f * f);
    x.reshape((b, co, f, f, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((b, co, h * f, w * f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn depth_to_space_inverts_space_to_depth_with_pytorch_channel_order() -> Result<()> {
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 4.0 * 4.0, &Device::Cpu)?.reshape((2, 3, 4, 4))?;
        let s = space_to_depth(&x, 2)?;
        assert_eq!(s.dims(), &[2, 12, 2, 2]);
        // torch.nn.functional.pixel_unshuffle(arange(96).reshape(2,3,4,4), 2)[0, 1, 0, 0] == 1
        // (channel 1 = c0, dy0, dx1) and [0, 2, 0, 0] == 4 (c0, dy1, dx0).
        let s0: Vec<f32> = s
            .get(0)?
            .narrow(1, 0, 1)?
            .narrow(2, 0, 1)?
            .flatten_all()?
            .to_vec1()?;
        assert_eq!(&s0[..4], &[0.0, 1.0, 4.0, 5.0]);
        let back = depth_to_space(&s, 2)?;
        let diff = (back - x)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }
}
