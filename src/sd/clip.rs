//! The CLIP text encoder (transformers' `CLIPTextModel`), with a site after every layer
//! (`text_encoder.layers.{i}`) and on the final layer-normed output
//! (`text_encoder.last_hidden_state`, what the UNet attends to).
//!
//! candle-transformers has a CLIP text model, but its Stable Diffusion variant builds its
//! config only from fixed presets (private fields, so no config.json and no tiny test
//! model), its general variant knows only quick_gelu (SD 2.x uses gelu), and neither has a
//! way to observe a layer: the 100 lines are written here, checked against transformers.

use candle_core::{Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};

use super::config::{Activation, TextConfig};
use crate::sites::{Hooks, SiteInfo};

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let a = vb.pp("self_attn");
        Ok(Self {
            layer_norm1: layer_norm(d, eps, vb.pp("layer_norm1"))?,
            q_proj: linear(d, d, a.pp("q_proj"))?,
            k_proj: linear(d, d, a.pp("k_proj"))?,
            v_proj: linear(d, d, a.pp("v_proj"))?,
            out_proj: linear(d, d, a.pp("out_proj"))?,
            layer_norm2: layer_norm(d, eps, vb.pp("layer_norm2"))?,
            fc1: linear(d, cfg.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: linear(cfg.intermediate_size, d, vb.pp("mlp.fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, heads: usize, act: Activation) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let hd = d / heads;
        let h = self.layer_norm1.forward(x)?;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, n, heads, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = split((self.q_proj.forward(&h)? * (hd as f64).powf(-0.5))?)?;
        let k = split(self.k_proj.forward(&h)?)?;
        let v = split(self.v_proj.forward(&h)?)?;
        let scores = q.matmul(&k.transpose(2, 3)?)?.broadcast_add(mask)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        let a = p.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
        let x = (self.out_proj.forward(&a)? + x)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let h = match act {
            Activation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
            Activation::Gelu => h.gelu_erf()?,
        };
        self.fc2.forward(&h)? + x
    }
}

/// CLIPTextModel. VarBuilder paths are transformers' keys (`text_model.*`, or the same
/// without the prefix).
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    pub config: TextConfig,
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
}

impl ClipTextModel {
    pub fn new(vb: VarBuilder, cfg: &TextConfig) -> Result<Self> {
        // transformers 4 saves the keys under `text_model.`; transformers 5 without it.
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let e = vb.pp("embeddings");
        Ok(Self {
            token_embedding: embedding(cfg.vocab_size, cfg.hidden_size, e.pp("token_embedding"))?,
            position_embedding: embedding(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                e.pp("position_embedding"),
            )?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::new(cfg, vb.pp(format!("encoder.layers.{i}"))))
                .collect::<Result<Vec<_>>>()?,
            final_layer_norm: layer_norm(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
            config: cfg.clone(),
        })
    }

    /// Token ids `[B, L]` (u32) -> last hidden state `[B, L, hidden]`, causal attention
    /// and no padding mask, as Stable Diffusion pipelines call it.
    pub fn forward(&self, ids: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let (_, n) = ids.dims2()?;
        if n > self.config.max_position_embeddings {
            candle_core::bail!(
                "{n} tokens but the text encoder has {} positions",
                self.config.max_position_embeddings
            );
        }
        let dev = ids.device();
        let positions = Tensor::arange(0u32, n as u32, dev)?;
        let mut x = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (n, n), dev)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(
                &x,
                &mask,
                self.config.num_attention_heads,
                self.config.activation,
            )?;
            x = hooks.site(&format!("text_encoder.layers.{i}"), x)?;
        }
        hooks.site(
            "text_encoder.last_hidden_state",
            self.final_layer_norm.forward(&x)?,
        )
    }

    /// The encoder's sites for prompts of `tokens` tokens, in firing order.
    pub fn sites(&self, tokens: usize) -> Vec<SiteInfo> {
        let dims = [("position", tokens), ("hidden", self.config.hidden_size)];
        let mut out: Vec<SiteInfo> = (0..self.layers.len())
            .map(|i| SiteInfo::new(format!("text_encoder.layers.{i}"), &dims, false))
            .collect();
        out.push(SiteInfo::new(
            "text_encoder.last_hidden_state",
            &dims,
            false,
        ));
        out
    }
}
