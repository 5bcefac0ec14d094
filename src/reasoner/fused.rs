//! Differentiable fused CPU kernels for the reasoner's layer norm, attention softmax,
//! GELU and bias add.
//!
//! candle-nn's fused `layer_norm` and `softmax_last_dim` record no backward pass, so the
//! model used to compose them from ~8 and ~5 differentiable tensor ops, each of which
//! allocates and walks memory in both passes (and in the backward pass candle gives every
//! input of every op, even a constant mask, a zeroed gradient and adds to it); candle's
//! GELU backward takes ~10 more ops, with `powf`. Here each op is one pass over memory
//! forward and one backward (its gradient is another custom op, without a backward of its
//! own: training needs first-order gradients only). Only f32 on the CPU runs fused; other
//! devices take the composed reference, which is also what the tests compare against.

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
    x.contiguous()?.apply_op1(Softmax { scale: 1.0 })
}

/// Attention's `softmax(scores * scale + mask)` over the last dimension, the additive
/// `mask` (0 or `-inf`) broadcast to the scores' shape. Differentiable in `scores` only:
/// the mask is a constant. Fusing the scale and the mask saves two more passes each way.
pub fn scaled_masked_softmax(scores: &Tensor, scale: f64, mask: &Tensor) -> Result<Tensor> {
    if !scores.device().is_cpu() {
        let masked = (scores * scale)?.broadcast_add(mask)?;
        return candle_nn::ops::softmax(&masked, D::Minus1);
    }
    if mask.dims().last() != scores.dims().last() {
        candle_core::bail!(
            "masked softmax: the mask {:?} must end in the scores' last dimension {:?}",
            mask.dims(),
            scores.dims()
        );
    }
    let mask = mask.contiguous()?.broadcast_as(scores.shape())?;
    let op = Softmax {
        scale: scale as f32,
    };
    scores.contiguous()?.apply_op2(&mask, op)
}

/// GELU in the tanh approximation (GPT-2's `gelu_new`, candle's `Tensor::gelu`):
/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return x.gelu();
    }
    x.contiguous()?.apply_op1(Gelu)
}

/// `x + bias` with `bias` of shape `[last dim]` (a linear layer's bias). candle's backward
/// of the broadcast sums the gradient over the rows with a divide per element; here the
/// bias gradient is one pass of column sums.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return x.broadcast_add(bias);
    }
    x.contiguous()?.apply_op2(&bias.contiguous()?, AddBias)
}

/// The layer norm as differentiable tensor ops: the reference, and the path off the CPU.
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// The f32 storage of a CPU tensor.
fn f32_storage<'a>(storage: &'a CpuStorage, op: &str) -> Result<&'a [f32]> {
    match storage {
        CpuStorage::F32(values) => Ok(values),
        _ => candle_core::bail!("{op}: only f32 is fused, got {:?}", storage.dtype()),
    }
}

/// The f32 values of a contiguous CPU tensor.
fn as_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let values = f32_storage(storage, op)?;
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

/// Where each row (index over all but the last dimension) of a strided layout starts.
fn row_offsets(layout: &Layout) -> Vec<usize> {
    let dims = &layout.dims()[..layout.dims().len().saturating_sub(1)];
    let strides = &layout.stride()[..dims.len()];
    let rows: usize = dims.iter().product();
    let mut offsets = Vec::with_capacity(rows);
    let (mut index, mut offset) = (vec![0usize; dims.len()], layout.start_offset());
    for _ in 0..rows {
        offsets.push(offset);
        // Odometer over the leading dimensions, last fastest.
        for k in (0..dims.len()).rev() {
            index[k] += 1;
            offset += strides[k];
            if index[k] < dims[k] {
                break;
            }
            offset -= dims[k] * strides[k];
            index[k] = 0;
        }
    }
    offsets
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
        let mut y = Vec::with_capacity(x.len());
        for xr in x.chunks_exact(d) {
            let (mean, rstd) = row_moments(xr, self.eps);
            let row = xr.iter().zip(w).zip(b);
            y.extend(row.map(|((xv, wv), bv)| (xv - mean) * rstd * wv + bv));
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
        let mut dx = Vec::with_capacity((rows + 2) * d);
        let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
        let (mut xhat, mut gw) = (vec![0f32; d], vec![0f32; d]);
        let n = d as f32;
        for (xr, gr) in x.chunks_exact(d).zip(g.chunks_exact(d)) {
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
            let row = xhat.iter().zip(&gw);
            dx.extend(row.map(|(h, p)| rstd * (p - mean_g - h * mean_gx)));
        }
        dx.extend(dw);
        dx.extend(db);
        Ok((CpuStorage::F32(dx), Shape::from((rows + 2, d))))
    }
}

/// Softmax of `x * scale (+ mask)` over the last dimension: as a unary op without a mask,
/// as a binary one with the mask (broadcast to x's shape) second.
struct Softmax {
    scale: f32,
}

impl Softmax {
    /// `mask_rows`: the mask storage and where each of x's rows starts in it.
    fn forward(&self, x: &[f32], d: usize, mask_rows: Option<(&[f32], Vec<usize>)>) -> Vec<f32> {
        let mut y = Vec::with_capacity(x.len());
        let mut row = vec![0f32; d];
        for (r, xr) in x.chunks_exact(d).enumerate() {
            match &mask_rows {
                Some((mask, offsets)) => {
                    let m = &mask[offsets[r]..offsets[r] + d];
                    for ((v, xv), mv) in row.iter_mut().zip(xr).zip(m) {
                        *v = xv * self.scale + mv;
                    }
                }
                None if self.scale == 1.0 => row.copy_from_slice(xr),
                None => row
                    .iter_mut()
                    .zip(xr)
                    .for_each(|(v, xv)| *v = xv * self.scale),
            }
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            // exp(-inf - max) is 0: masked keys drop out.
            row.iter_mut().for_each(|v| *v = (*v - max).exp());
            let inv = 1.0 / row.iter().sum::<f32>();
            y.extend(row.iter().map(|v| v * inv));
        }
        y
    }

    fn backward(&self, y: &Tensor, grad: &Tensor) -> Result<Tensor> {
        y.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad { scale: self.scale })
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(layout, CustomOp1::name(self))?;
        let x = as_f32(storage, layout, CustomOp1::name(self))?;
        let y = self.forward(x, d, None);
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.backward(y, grad)?))
    }
}

impl CustomOp2 for Softmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(xl, CustomOp2::name(self))?;
        let x = as_f32(xs, xl, CustomOp2::name(self))?;
        let mask = f32_storage(ms, CustomOp2::name(self))?;
        if ml.dims() != xl.dims() || ml.stride().last() != Some(&1) {
            candle_core::bail!(
                "{}: the mask must be broadcast to the scores",
                CustomOp2::name(self)
            );
        }
        let y = self.forward(x, d, Some((mask, row_offsets(ml))));
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _mask: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.backward(y, grad)?), None))
    }
}

/// (y, grad of y) -> grad of x = scale * y * (grad - sum(grad * y)) per row.
struct SoftmaxGrad {
    scale: f32,
}

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
        let mut dx = Vec::with_capacity(y.len());
        for (yr, gr) in y.chunks_exact(d).zip(g.chunks_exact(d)) {
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            let row = yr.iter().zip(gr);
            dx.extend(row.map(|(yv, gv)| self.scale * yv * (gv - dot)));
        }
        Ok((CpuStorage::F32(dx), yl.shape().clone()))
    }
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "fused-add-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(xl, self.name())?;
        if bl.dims() != [d] {
            candle_core::bail!(
                "add bias: the bias must be [{d}] (the input's last dim), got {:?}",
                bl.dims()
            );
        }
        let x = as_f32(xs, xl, self.name())?;
        let b = as_f32(bs, bl, self.name())?;
        let mut y = Vec::with_capacity(x.len());
        for xr in x.chunks_exact(d) {
            y.extend(xr.iter().zip(b).map(|(xv, bv)| xv + bv));
        }
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = grad.contiguous()?.apply_op1_no_bwd(&ColumnSums)?;
        Ok((Some(grad.clone()), Some(db.reshape(bias.shape())?)))
    }
}

/// `[.., d]` -> `[d]`: the sum over all rows.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "fused-column-sums"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(layout, self.name())?;
        let x = as_f32(storage, layout, self.name())?;
        let mut sums = vec![0f32; d];
        for xr in x.chunks_exact(d) {
            sums.iter_mut().zip(xr).for_each(|(s, v)| *s += v);
        }
        Ok((CpuStorage::F32(sums), Shape::from(d)))
    }
}

const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044715;

/// (1 + tanh(u)) / 2 = sigmoid(2u) at u = sqrt(2/pi) (x + a x^3), and 1 minus it. One
/// `exp` instead of `tanh` (which costs an `expm1` and more), and no cancellation in the
/// negative tail, where 1 + tanh(u) goes to 0.
#[inline(always)]
fn gelu_gate(x: f32) -> (f32, f32) {
    // Capped so that e * s stays finite (exp(80) is ~5e34 < f32::MAX).
    let e = (-2.0 * SQRT_TWO_OVER_PI * x * (1.0 + GELU_A * x * x))
        .min(80.0)
        .exp();
    let s = 1.0 / (1.0 + e);
    (s, e * s)
}

/// d/dx of x * s(x): s + 2 x s (1 - s) sqrt(2/pi) (1 + 3 a x^2).
#[inline(always)]
fn gelu_slope(x: f32) -> f32 {
    let (s, one_minus_s) = gelu_gate(x);
    s + 2.0 * x * s * one_minus_s * SQRT_TWO_OVER_PI * (1.0 + 3.0 * GELU_A * x * x)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = as_f32(storage, layout, self.name())?;
        let y = x.iter().map(|&v| v * gelu_gate(v).0).collect();
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

#[cfg(test)]
#[allow(clippy::print_stderr)] // ignored benchmarks report their figures
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn randn(dims: &[usize], stream: u64) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_vec(crate::rng::gaussian(7, stream, n), dims, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// max |a - b| <= tol * max(|b|, floor): relative to the reference's scale.
    fn assert_close(a: &Tensor, b: &Tensor, tol: f32, floor: f32, what: &str) {
        assert_eq!(a.dims(), b.dims(), "{what}: shapes");
        let (a, b) = (values(a), values(b));
        let scale = b.iter().fold(floor, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let close = (x - y).abs() <= tol * scale || (x == y);
            assert!(
                close,
                "{what}[{i}]: fused {x} vs composed {y} (scale {scale})"
            );
        }
    }

    /// The fused op and the composed one on the same inputs: values, then the gradients of
    /// a randomly weighted sum of the outputs with respect to every input.
    fn check_against_composed(
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        composed: impl Fn(&[Tensor]) -> Result<Tensor>,
        inputs: &[Tensor],
        stream: u64,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let got = fused(&tensors).unwrap();
        let want = composed(&tensors).unwrap();
        assert_close(&got, &want, 1e-5, 1.0, "forward");
        let weighting = randn(got.dims(), stream);
        let loss = |out: &Tensor| (out * &weighting).unwrap().sum_all().unwrap();
        let got_grads = loss(&got).backward().unwrap();
        let want_grads = loss(&want).backward().unwrap();
        for (i, t) in tensors.iter().enumerate() {
            let g = got_grads.get(t).expect("fused gradient");
            let w = want_grads.get(t).expect("composed gradient");
            assert_close(g, w, 1e-4, 1e-6, &format!("gradient of input {i}"));
        }
    }

    /// Central differences of sum(op(inputs) * weighting) against the fused backward.
    fn check_finite_differences(op: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = op(&tensors).unwrap();
        let weighting = values(&randn(out.dims(), 99));
        let loss = |ts: &[Tensor]| -> f64 {
            let out = values(&op(ts).unwrap());
            out.iter()
                .zip(&weighting)
                .map(|(o, w)| (o * w) as f64)
                .sum()
        };
        let weighted = (&out
            * Tensor::new(weighting.as_slice(), &Device::Cpu)
                .unwrap()
                .reshape(out.dims())
                .unwrap())
        .unwrap();
        let grads = weighted.sum_all().unwrap().backward().unwrap();
        let eps = 1e-2f32;
        for (i, t) in tensors.iter().enumerate() {
            let analytic = values(grads.get(t).unwrap());
            let base = values(t);
            for (j, &a) in analytic.iter().enumerate() {
                let at = |delta: f32| {
                    let mut v = base.clone();
                    v[j] += delta;
                    let mut ts = tensors.clone();
                    ts[i] = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
                    loss(&ts)
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                let tol = 2e-3 + 1e-2 * numeric.abs();
                assert!(
                    (numeric - a as f64).abs() <= tol,
                    "input {i}[{j}]: autograd {a} vs finite difference {numeric}"
                );
            }
        }
    }

    fn ln_inputs(dims: &[usize], stream: u64) -> Vec<Tensor> {
        let d = *dims.last().unwrap();
        // Off-centre and scaled rows, and a weight far from 1, so that every term counts.
        let x = ((randn(dims, stream) * 3.0).unwrap() + 1.5).unwrap();
        let w = (randn(&[d], stream + 1) + 1.0).unwrap();
        let b = randn(&[d], stream + 2);
        vec![x, w, b]
    }

    #[test]
    fn layer_norm_matches_the_composed_ops() {
        for (k, dims) in [vec![3, 8], vec![2, 5, 128], vec![4, 3, 7]]
            .iter()
            .enumerate()
        {
            check_against_composed(
                |t| layer_norm(&t[0], &t[1], &t[2], 1e-5),
                |t| layer_norm_composed(&t[0], &t[1], &t[2], 1e-5),
                &ln_inputs(dims, 10 * k as u64),
                100 + k as u64,
            );
        }
    }

    /// Scores with masked (-inf) keys: causal in the last two dims, plus one hidden key.
    fn masked_scores(dims: &[usize], stream: u64) -> Tensor {
        let (t, keys) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..keys).map(move |j| {
                    let hidden = j > i + keys - t || (j == 1 && i > 0);
                    if hidden {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, keys), &Device::Cpu).unwrap();
        (randn(dims, stream) * 4.0)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap()
    }

    #[test]
    fn softmax_matches_the_composed_ops_with_masked_keys() {
        let scores = masked_scores(&[2, 4, 5, 7], 20);
        assert!(values(&scores).iter().any(|v| v.is_infinite()));
        check_against_composed(
            |t| softmax_last_dim(&t[0]),
            |t| candle_nn::ops::softmax(&t[0], D::Minus1),
            &[scores],
            200,
        );
        for (k, dims) in [vec![3, 9], vec![16, 115]].iter().enumerate() {
            check_against_composed(
                |t| softmax_last_dim(&t[0]),
                |t| candle_nn::ops::softmax(&t[0], D::Minus1),
                &[(randn(dims, 30 + k as u64) * 5.0).unwrap()],
                300 + k as u64,
            );
        }
    }

    /// Additive masks of -inf: causal `[t, keys]`, and per batch row `[b, 1, t, keys]` with
    /// some keys hidden (padding), as the model builds them.
    fn masks(b: usize, t: usize, keys: usize) -> [Tensor; 2] {
        let past = keys - t;
        let value = |seen: bool| if seen { 0.0 } else { f32::NEG_INFINITY };
        let causal: Vec<f32> = (0..t)
            .flat_map(|i| (0..keys).map(move |j| value(j <= past + i)))
            .collect();
        let padded: Vec<f32> = (0..b)
            .flat_map(|r| {
                (0..t).flat_map(move |i| {
                    (0..keys).map(move |j| value(j <= past + i && (j != r || j == past + i)))
                })
            })
            .collect();
        [
            Tensor::from_vec(causal, (t, keys), &Device::Cpu).unwrap(),
            Tensor::from_vec(padded, (b, 1, t, keys), &Device::Cpu).unwrap(),
        ]
    }

    #[test]
    fn scaled_masked_softmax_matches_the_composed_ops() {
        for (k, mask) in masks(2, 5, 7).into_iter().enumerate() {
            let mask = &mask;
            check_against_composed(
                |t| scaled_masked_softmax(&t[0], 0.35, mask),
                |t| candle_nn::ops::softmax(&(&t[0] * 0.35)?.broadcast_add(mask)?, D::Minus1),
                &[(randn(&[2, 4, 5, 7], 80 + k as u64) * 4.0).unwrap()],
                500 + k as u64,
            );
        }
        let err = scaled_masked_softmax(&randn(&[2, 3], 82), 1.0, &randn(&[2, 2], 83))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("must end in the scores' last dimension"),
            "{err}"
        );
    }

    #[test]
    fn masked_keys_get_zero_probability_and_rows_sum_to_one() {
        let y = softmax_last_dim(&masked_scores(&[2, 4, 5, 7], 21)).unwrap();
        let scores = values(&masked_scores(&[2, 4, 5, 7], 21));
        for (p, s) in values(&y).iter().zip(&scores) {
            assert!(*p >= 0.0 && (s.is_finite() || *p == 0.0));
        }
        for row in values(&y).chunks(7) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn add_bias_matches_the_composed_ops() {
        for (k, dims) in [vec![3, 8], vec![2, 5, 512]].iter().enumerate() {
            let bias = randn(&[*dims.last().unwrap()], 91 + k as u64);
            check_against_composed(
                |t| add_bias(&t[0], &t[1]),
                |t| t[0].broadcast_add(&t[1]),
                &[randn(dims, 90 + k as u64), bias],
                600 + k as u64,
            );
        }
        let err = add_bias(&randn(&[2, 3], 92), &randn(&[2], 93))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bias must be [3]"), "{err}");
    }

    #[test]
    fn gelu_matches_the_composed_ops() {
        for (k, dims) in [vec![5, 11], vec![2, 3, 512]].iter().enumerate() {
            // Wide enough to reach both tails, where tanh saturates.
            let x = (randn(dims, 40 + k as u64) * 3.0).unwrap();
            check_against_composed(|t| gelu(&t[0]), |t| t[0].gelu(), &[x], 400 + k as u64);
        }
    }

    #[test]
    fn gelu_values_are_gpt2_gelu_new() {
        // numpy, float64: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))).
        let x = Tensor::new(&[-3.0f32, -1.0, -0.1, 0.0, 0.5, 2.0], &Device::Cpu).unwrap();
        let want: [f64; 6] = [
            -0.003637392,
            -0.158808009,
            -0.046017249,
            0.0,
            0.345714010,
            1.954597694,
        ];
        for (got, want) in values(&gelu(&x).unwrap()).iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        check_finite_differences(
            |t| layer_norm(&t[0], &t[1], &t[2], 1e-5),
            &ln_inputs(&[2, 5], 50),
        );
        check_finite_differences(|t| softmax_last_dim(&t[0]), &[randn(&[3, 4], 51)]);
        let [_, mask] = masks(2, 2, 3);
        check_finite_differences(
            |t| scaled_masked_softmax(&t[0], 0.7, &mask),
            &[randn(&[2, 2, 2, 3], 52)],
        );
        check_finite_differences(
            |t| add_bias(&t[0], &t[1]),
            &[randn(&[3, 2], 53), randn(&[2], 54)],
        );
        let x = Tensor::new(&[[-2.5f32, -0.7, 0.0, 0.3, 1.2, 3.0]], &Device::Cpu).unwrap();
        check_finite_differences(|t| gelu(&t[0]), &[x]);
    }

    #[test]
    fn strided_inputs_are_made_contiguous() {
        let x = (randn(&[6, 4], 60) * 2.0).unwrap().t().unwrap();
        assert!(!x.is_contiguous());
        let [w, b] = [randn(&[6], 61), randn(&[6], 62)];
        let got = layer_norm(&x, &w, &b, 1e-5).unwrap();
        assert_close(
            &got,
            &layer_norm_composed(&x, &w, &b, 1e-5).unwrap(),
            1e-5,
            1.0,
            "ln",
        );
        let got = softmax_last_dim(&x).unwrap();
        let want = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
        assert_close(&got, &want, 1e-5, 1.0, "softmax");
        assert_close(&gelu(&x).unwrap(), &x.gelu().unwrap(), 1e-5, 1.0, "gelu");
    }

    #[test]
    fn other_dtypes_and_wrong_parameter_shapes_are_refused() {
        let x = randn(&[2, 4], 70).to_dtype(DType::F64).unwrap();
        let err = softmax_last_dim(&x).unwrap_err().to_string();
        assert!(err.contains("only f32"), "{err}");
        assert!(gelu(&x).is_err());
        let x = randn(&[2, 4], 71);
        let err = layer_norm(&x, &randn(&[3], 72), &randn(&[4], 73), 1e-5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("weight must be [4]"), "{err}");
    }

    /// Time of one training step (forward + next-token cross-entropy + backward) of the
    /// built-in reasoner at its training shape, median of 3 rounds of 20. Not a test: run
    /// `RAYON_NUM_THREADS=1 cargo test --lib reasoner::fused::tests::step_speed --
    /// --ignored --nocapture` on two commits to compare them.
    #[test]
    #[ignore]
    fn step_speed() {
        use crate::reasoner::gpt2::{random_varmap, Gpt2, Gpt2Config};
        use crate::reasoner::tokens::Vocab;
        use crate::sites::Hooks;
        use rand::Rng;

        let device = Device::Cpu;
        let config = Gpt2Config::tiny(Vocab::prosqa().len());
        let varmap = random_varmap(&config, 0, &device).unwrap();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let model = Gpt2::new(&config, vb).unwrap();
        let (b, t) = (16, 115);
        let mut rng = crate::rng::stream(0, 0);
        let ids: Vec<u32> = (0..b * t)
            .map(|_| rng.gen_range(0..config.vocab_size as u32))
            .collect();
        let ids = Tensor::from_vec(ids, (b, t), &device).unwrap();
        let labels = ids.narrow(1, 1, t - 1).unwrap().flatten_all().unwrap();
        let step = || {
            let out = model
                .forward(&ids, 0, &mut model.new_cache(), &mut Hooks::none())
                .unwrap();
            let logits = out.logits.narrow(1, 0, t - 1).unwrap();
            let logits = logits.reshape((b * (t - 1), config.vocab_size)).unwrap();
            let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
            loss.backward().unwrap();
        };
        step();
        let mut rounds: Vec<f64> = (0..3)
            .map(|_| {
                let start = std::time::Instant::now();
                (0..20).for_each(|_| step());
                start.elapsed().as_secs_f64() * 1000.0 / 20.0
            })
            .collect();
        eprintln!("step times (ms): {rounds:.1?}");
        rounds.sort_by(f64::total_cmp);
        eprintln!("median step: {:.1} ms", rounds[1]);
    }
}
