//! Differentiable fused CPU kernels for the reasoner's layer norm, attention softmax and
//! GELU.
//!
//! candle-nn's fused `layer_norm` and `softmax_last_dim` record no backward pass, so the
//! model used to compose them from ~8 and ~5 differentiable tensor ops, each of which
//! allocates and walks memory in both passes; candle's GELU backward takes ~10 more, with
//! `powf`. Here each op is one pass over memory forward and one backward (its gradient is
//! another custom op, without a backward of its own: training needs first-order gradients
//! only). Only contiguous f32 on the CPU runs fused; other devices take the composed
//! reference, which is also what the tests compare against.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};

/// Layer norm over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`,
/// with `weight` and `bias` of shape `[last dim]`. Differentiable in all three.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return layer_norm_composed(x, weight, bias, eps);
    }
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

/// Softmax over the last dimension. `-inf` entries get probability 0; a row needs at least
/// one finite entry.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return candle_nn::ops::softmax(x, D::Minus1);
    }
    x.contiguous()?.apply_op1(Softmax)
}

/// GELU in the tanh approximation (GPT-2's `gelu_new`, candle's `Tensor::gelu`):
/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return x.gelu();
    }
    x.contiguous()?.apply_op1(Gelu)
}

/// The layer norm as differentiable tensor ops: the reference, and the path off the CPU.
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// The f32 values of a contiguous CPU tensor.
fn as_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        candle_core::bail!("{op}: only f32 is fused, got {:?}", storage.dtype());
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// The size of the last dimension, which must be non-zero.
fn last_dim(layout: &Layout, op: &str) -> Result<usize> {
    match layout.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => candle_core::bail!(
            "{op}: needs a non-empty last dimension, got {:?}",
            layout.dims()
        ),
    }
}

/// Mean and 1 / sqrt(variance + eps) of one row, two passes as the composed op does.
fn row_moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

struct LayerNorm {
    eps: f32,
}

impl LayerNorm {
    fn check_param(&self, layout: &Layout, d: usize, what: &str) -> Result<()> {
        if layout.dims() != [d] {
            candle_core::bail!(
                "layer norm: {what} must be [{d}] (the input's last dim), got {:?}",
                layout.dims()
            );
        }
        Ok(())
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(xl, self.name())?;
        self.check_param(wl, d, "weight")?;
        self.check_param(bl, d, "bias")?;
        let x = as_f32(xs, xl, self.name())?;
        let w = as_f32(ws, wl, self.name())?;
        let b = as_f32(bs, bl, self.name())?;
        let mut y = vec![0f32; x.len()];
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let (mean, rstd) = row_moments(xr, self.eps);
            for (((yv, xv), wv), bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                *yv = (xv - mean) * rstd * wv + bv;
            }
        }
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = weight.elem_count();
        let rows = x.elem_count() / d;
        // One [rows + 2, d] block: dx, then dweight, then dbias.
        let packed = x.apply_op3_no_bwd(
            weight,
            &grad.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows, 1)?.reshape(d)?;
        let db = packed.narrow(0, rows + 1, 1)?.reshape(d)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// (x, weight, grad of y) -> `[rows + 2, d]`: grad of x per row, then of weight and bias.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(xl, self.name())?;
        let x = as_f32(xs, xl, self.name())?;
        let w = as_f32(ws, wl, self.name())?;
        let g = as_f32(gs, gl, self.name())?;
        if g.len() != x.len() || w.len() != d {
            candle_core::bail!("{}: mismatched shapes", self.name());
        }
        let rows = x.len() / d;
        let mut out = vec![0f32; (rows + 2) * d];
        let (dx, params) = out.split_at_mut(rows * d);
        let (dw, db) = params.split_at_mut(d);
        let mut xhat = vec![0f32; d];
        let mut gw = vec![0f32; d];
        let n = d as f32;
        for ((xr, gr), dxr) in x
            .chunks_exact(d)
            .zip(g.chunks_exact(d))
            .zip(dx.chunks_exact_mut(d))
        {
            let (mean, rstd) = row_moments(xr, self.eps);
            let (mut sum_g, mut sum_gx) = (0f32, 0f32);
            for (((((h, p), xv), gv), wv), (dwv, dbv)) in xhat
                .iter_mut()
                .zip(gw.iter_mut())
                .zip(xr)
                .zip(gr)
                .zip(w)
                .zip(dw.iter_mut().zip(db.iter_mut()))
            {
                *h = (xv - mean) * rstd;
                *p = gv * wv;
                sum_g += *p;
                sum_gx += *p * *h;
                *dwv += gv * *h;
                *dbv += gv;
            }
            let (mean_g, mean_gx) = (sum_g / n, sum_gx / n);
            for ((dxv, h), p) in dxr.iter_mut().zip(&xhat).zip(&gw) {
                *dxv = rstd * (p - mean_g - h * mean_gx);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, d))))
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(layout, self.name())?;
        let x = as_f32(storage, layout, self.name())?;
        let mut y = vec![0f32; x.len()];
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (yv, xv) in yr.iter_mut().zip(xr) {
                // exp(-inf - max) is 0: masked keys drop out.
                *yv = (xv - max).exp();
                sum += *yv;
            }
            let inv = 1.0 / sum;
            yr.iter_mut().for_each(|v| *v *= inv);
        }
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?))
    }
}

/// (y, grad of y) -> grad of x = y * (grad - sum(grad * y)) per row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(yl, self.name())?;
        let y = as_f32(ys, yl, self.name())?;
        let g = as_f32(gs, gl, self.name())?;
        if g.len() != y.len() {
            candle_core::bail!("{}: mismatched shapes", self.name());
        }
        let mut dx = vec![0f32; y.len()];
        for ((yr, gr), dr) in y
            .chunks_exact(d)
            .zip(g.chunks_exact(d))
            .zip(dx.chunks_exact_mut(d))
        {
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((dv, yv), gv) in dr.iter_mut().zip(yr).zip(gr) {
                *dv = yv * (gv - dot);
            }
        }
        Ok((CpuStorage::F32(dx), yl.shape().clone()))
    }
}

const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044715;

/// d/dx of the tanh GELU: 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 a x^2).
#[inline(always)]
fn gelu_slope(x: f32) -> f32 {
    let x2 = x * x;
    let t = (SQRT_TWO_OVER_PI * x * (1.0 + GELU_A * x2)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_TWO_OVER_PI * (1.0 + 3.0 * GELU_A * x2)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = as_f32(storage, layout, self.name())?;
        // candle's own expression, so that values match it to the bit.
        let y = x
            .iter()
            .map(|&v| 0.5 * v * (1.0 + (SQRT_TWO_OVER_PI * v * (1.0 + GELU_A * v * v)).tanh()))
            .collect();
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

/// (x, grad of y) -> grad * gelu'(x).
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = as_f32(xs, xl, self.name())?;
        let g = as_f32(gs, gl, self.name())?;
        if g.len() != x.len() {
            candle_core::bail!("{}: mismatched shapes", self.name());
        }
        let dx = x.iter().zip(g).map(|(&v, gv)| gv * gelu_slope(v)).collect();
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}
