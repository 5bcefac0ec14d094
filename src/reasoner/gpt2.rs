//! GPT-2 with TransformerLens-named hook sites, so that one model serves the built-in
//! reasoner, real GPT-2 weights and Coconut checkpoints.
//!
//! VarBuilder paths mirror the Hugging Face keys (`transformer.h.{i}.attn.c_attn` ...),
//! including GPT-2's Conv1D layout (weight stored `[in, out]`). `forward_embeds` takes input
//! embeddings instead of token ids: that is the entry continuous thoughts go through.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, VarBuilder};
use serde::{Deserialize, Serialize};

use super::fused;
use crate::sites::{Hooks, SiteInfo};

/// The fields of a Hugging Face GPT-2 `config.json` the model needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_positions: usize,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
}

fn default_eps() -> f64 {
    1e-5
}

impl Gpt2Config {
    /// The built-in reasoner: 2 layers were enough for continuous-thought graph search in
    /// Zhu et al. 2025.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            n_embd: 128,
            n_layer: 2,
            n_head: 4,
            n_positions: 256,
            vocab_size,
            layer_norm_epsilon: 1e-5,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// Layer norm with a backward pass. candle-nn's `LayerNorm` (and its `softmax_last_dim`)
/// run fused kernels that record none, so gradients would silently stop at every block:
/// training needs `fused::layer_norm`.
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        fused::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// GPT-2's Conv1D: a linear layer whose weight is stored `[in, out]`.
#[derive(Debug, Clone)]
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn new(n_in: usize, n_out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get((n_in, n_out), "weight")?,
            bias: vb.get(n_out, "bias")?,
        })
    }
}

impl Module for Conv1D {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // One [rows, in] x [in, out] product: broadcasting the weight over the batch would
        // make the backward pass sum a per-row copy of its gradient.
        let (n_in, n_out) = self.weight.dims2()?;
        let mut dims = xs.dims().to_vec();
        let rows = xs.elem_count() / n_in;
        let ys = xs.reshape((rows, n_in))?.matmul(&self.weight)?;
        dims.pop();
        dims.push(n_out);
        super::fused::add_bias(&ys.reshape(dims)?, &self.bias)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: usize,
}

/// Keys and values of every layer for the positions seen so far.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Per batch row, whether each cached key is a real token (false: padding). Empty
    /// while nothing was padded.
    valid_keys: Vec<Vec<bool>>,
}

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        Self {
            layers: vec![None; n_layer],
            valid_keys: Vec::new(),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache with every batch row repeated `m` times in place (row r becomes rows
    /// r*m..(r+1)*m), so that m different continuations of each row run as one batch.
    pub fn repeat_rows(&self, m: usize) -> Result<Self> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            layers.push(match layer {
                Some((k, v)) => Some((repeat_rows(k, m)?, repeat_rows(v, m)?)),
                None => None,
            });
        }
        let valid_keys = self
            .valid_keys
            .iter()
            .flat_map(|row| std::iter::repeat_n(row.clone(), m))
            .collect();
        Ok(Self { layers, valid_keys })
    }
}

/// `x` with each index of its first dimension repeated `m` times in place.
pub fn repeat_rows(x: &Tensor, m: usize) -> Result<Tensor> {
    let b = x.dim(0)?;
    let index: Vec<u32> = (0..b as u32)
        .flat_map(|r| std::iter::repeat_n(r, m))
        .collect();
    x.index_select(&Tensor::new(index, x.device())?, 0)
}

impl Attention {
    fn new(cfg: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            c_attn: Conv1D::new(cfg.n_embd, 3 * cfg.n_embd, vb.pp("c_attn"))?,
            c_proj: Conv1D::new(cfg.n_embd, cfg.n_embd, vb.pp("c_proj"))?,
            n_head: cfg.n_head,
        })
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        x.reshape((b, t, self.n_head, d / self.n_head))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn forward(
        &self,
        x: &Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
        mask: &Tensor,
        layer: usize,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let qkv = self.c_attn.forward(x)?;
        let q = self.split_heads(&qkv.narrow(D::Minus1, 0, d)?)?;
        let mut k = self.split_heads(&qkv.narrow(D::Minus1, d, d)?)?;
        let mut v = self.split_heads(&qkv.narrow(D::Minus1, 2 * d, d)?)?;
        if let Some((pk, pv)) = cache.as_ref() {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        *cache = Some((k.clone(), v.clone()));
        let scale = 1.0 / ((d / self.n_head) as f64).sqrt();
        let scores = q.matmul(&k.t()?)?;
        let pattern = fused::scaled_masked_softmax(&scores, scale, mask)?;
        let pattern = hooks.site(&format!("blocks.{layer}.attn.hook_pattern"), pattern)?;
        let z = pattern.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.c_proj.forward(&z)
    }
}

/// Additive attention mask `[t, past + t]`: 0 where query `i` (absolute position
/// past + i) may see key `j`, -inf after it.
fn causal_mask(t: usize, past: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..past + t).map(move |j| {
                if j <= past + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, past + t), device)
}

/// Additive mask `[batch, 1, t, keys]` for padded rows: causal, and padding keys hidden.
/// A padding query still sees itself, so that its softmax stays finite (nothing real
/// attends to it).
fn padded_mask(valid_keys: &[Vec<bool>], t: usize, device: &Device) -> Result<Tensor> {
    let b = valid_keys.len();
    let keys = valid_keys.first().map(Vec::len).unwrap_or(0);
    let past = keys - t;
    let mut mask = Vec::with_capacity(b * t * keys);
    for row in valid_keys {
        for i in 0..t {
            for (j, &valid) in row.iter().enumerate() {
                let seen = j <= past + i && (valid || j == past + i);
                mask.push(if seen { 0.0 } else { f32::NEG_INFINITY });
            }
        }
    }
    Tensor::from_vec(mask, (b, 1, t, keys), device)
}

#[derive(Debug, Clone)]
struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
}

impl Mlp {
    fn new(cfg: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            c_fc: Conv1D::new(cfg.n_embd, 4 * cfg.n_embd, vb.pp("c_fc"))?,
            c_proj: Conv1D::new(4 * cfg.n_embd, cfg.n_embd, vb.pp("c_proj"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // The tanh approximation, as GPT-2's `gelu_new`.
        self.c_proj.forward(&fused::gelu(&self.c_fc.forward(xs)?)?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(cfg: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        Ok(Self {
            ln_1: LayerNorm::new(cfg.n_embd, eps, vb.pp("ln_1"))?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            ln_2: LayerNorm::new(cfg.n_embd, eps, vb.pp("ln_2"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(
        &self,
        x: Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
        mask: &Tensor,
        l: usize,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let x = hooks.site(&format!("blocks.{l}.hook_resid_pre"), x)?;
        let attn_out = self
            .attn
            .forward(&self.ln_1.forward(&x)?, cache, mask, l, hooks)?;
        let attn_out = hooks.site(&format!("blocks.{l}.hook_attn_out"), attn_out)?;
        let mid = (x + attn_out)?;
        let mlp_out = self.mlp.forward(&self.ln_2.forward(&mid)?)?;
        let mlp_out = hooks.site(&format!("blocks.{l}.hook_mlp_out"), mlp_out)?;
        hooks.site(&format!("blocks.{l}.hook_resid_post"), (mid + mlp_out)?)
    }
}

/// What one forward pass returns.
#[derive(Debug, Clone)]
pub struct Gpt2Output {
    /// `[batch, position, d_model]`, after the final layer norm: the vector Coconut feeds
    /// back as the next thought.
    pub hidden: Tensor,
    /// `[batch, position, vocab]`.
    pub logits: Tensor,
}

/// GPT-2 language model with tied input/output embeddings.
#[derive(Debug, Clone)]
pub struct Gpt2 {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    config: Gpt2Config,
}

impl Gpt2 {
    /// `vb` is the checkpoint root: weights are read from `transformer.*`.
    pub fn new(config: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        if config.n_head == 0 || !config.n_embd.is_multiple_of(config.n_head) {
            candle_core::bail!(
                "n_embd {} is not a multiple of n_head {}",
                config.n_embd,
                config.n_head
            );
        }
        let vb = vb.pp("transformer");
        let blocks = (0..config.n_layer)
            .map(|i| Block::new(config, vb.pp(format!("h.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            wte: candle_nn::embedding(config.vocab_size, config.n_embd, vb.pp("wte"))?,
            wpe: candle_nn::embedding(config.n_positions, config.n_embd, vb.pp("wpe"))?,
            blocks,
            ln_f: LayerNorm::new(config.n_embd, config.layer_norm_epsilon, vb.pp("ln_f"))?,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    pub fn device(&self) -> &Device {
        self.wte.embeddings().device()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.n_layer)
    }

    /// Token embeddings `[batch, position, d_model]` (no position embedding, no site).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.wte.forward(ids)
    }

    /// The position embedding matrix `[n_positions, d_model]`.
    pub fn position_embeddings(&self) -> &Tensor {
        self.wpe.embeddings()
    }

    /// The token embedding matrix `[vocab, d_model]` (also the output projection).
    pub fn token_embeddings(&self) -> &Tensor {
        self.wte.embeddings()
    }

    /// Token ids `[batch, position]` at absolute positions `start_pos..`; fires `hook_embed`
    /// then everything `forward_embeds` fires.
    pub fn forward(
        &self,
        ids: &Tensor,
        start_pos: usize,
        cache: &mut KvCache,
        hooks: &mut Hooks,
    ) -> Result<Gpt2Output> {
        hooks.set_first_position(start_pos);
        let embeds = hooks.site("hook_embed", self.embed(ids)?)?;
        self.forward_embeds(&embeds, start_pos, cache, hooks)
    }

    /// Input embeddings `[batch, position, d_model]` (position embedding not yet added) at
    /// absolute positions `start_pos..`, attending to the `cache`, which grows by the new
    /// positions. (After a `forward_padded` pass every row continues at `start_pos`; give
    /// rows their own positions with `forward_padded` instead.)
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        start_pos: usize,
        cache: &mut KvCache,
        hooks: &mut Hooks,
    ) -> Result<Gpt2Output> {
        let (b, t, _) = embeds.dims3()?;
        hooks.set_first_position(start_pos);
        if cache.layers.len() != self.blocks.len() {
            *cache = self.new_cache();
        }
        if cache.len() != start_pos {
            candle_core::bail!(
                "start_pos {start_pos} does not follow the {} cached positions",
                cache.len()
            );
        }
        if !cache.valid_keys.is_empty() {
            let positions: Vec<Vec<u32>> =
                vec![(start_pos as u32..(start_pos + t) as u32).collect(); b];
            return self.forward_padded(embeds, &positions, &vec![vec![true; t]; b], cache, hooks);
        }
        self.check_positions(start_pos + t)?;
        let positions = Tensor::arange(start_pos as u32, (start_pos + t) as u32, embeds.device())?;
        let pos = self.wpe.forward(&positions)?.unsqueeze(0)?;
        let pos = pos.broadcast_as(embeds.shape())?.contiguous()?;
        let mask = causal_mask(t, start_pos, embeds.device())?;
        self.run_blocks(embeds, pos, &mask, cache, hooks)
    }

    /// A batch whose rows have their own positions and padding: `positions[b][i]` is the
    /// position embedding index of new slot `i` of row `b`, `valid[b][i]` whether it is a
    /// real input (false: padding, which no real slot attends to). Padding keeps a batch of
    /// prompts of different lengths rectangular: pad prompts on the left, so that their
    /// last tokens (and the thoughts after them) line up, and suffixes on the right.
    pub fn forward_padded(
        &self,
        embeds: &Tensor,
        positions: &[Vec<u32>],
        valid: &[Vec<bool>],
        cache: &mut KvCache,
        hooks: &mut Hooks,
    ) -> Result<Gpt2Output> {
        let (b, t, _) = embeds.dims3()?;
        if positions.len() != b
            || valid.len() != b
            || positions.iter().any(|p| p.len() != t)
            || valid.iter().any(|v| v.len() != t)
        {
            candle_core::bail!("positions and valid must be [batch={b}][position={t}]");
        }
        if cache.layers.len() != self.blocks.len() {
            *cache = self.new_cache();
        }
        let max_pos = positions.iter().flatten().max().copied().unwrap_or(0) as usize;
        self.check_positions(max_pos + 1)?;
        if cache.valid_keys.is_empty() {
            cache.valid_keys = vec![vec![true; cache.len()]; b];
        }
        if cache.valid_keys.len() != b {
            candle_core::bail!(
                "the cache holds {} rows, the batch has {b}",
                cache.valid_keys.len()
            );
        }
        for (row, new) in cache.valid_keys.iter_mut().zip(valid) {
            row.extend_from_slice(new);
        }
        let flat: Vec<u32> = positions.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (b, t), embeds.device())?;
        let pos = self.wpe.forward(&ids)?;
        let mask = padded_mask(&cache.valid_keys, t, embeds.device())?;
        self.run_blocks(embeds, pos, &mask, cache, hooks)
    }

    fn check_positions(&self, end: usize) -> Result<()> {
        if end > self.config.n_positions {
            candle_core::bail!(
                "position {} exceeds the model's n_positions {}",
                end - 1,
                self.config.n_positions
            );
        }
        Ok(())
    }

    fn run_blocks(
        &self,
        embeds: &Tensor,
        pos: Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
        hooks: &mut Hooks,
    ) -> Result<Gpt2Output> {
        let pos = hooks.site("hook_pos_embed", pos)?;
        let mut x = (embeds + pos)?;
        for (l, block) in self.blocks.iter().enumerate() {
            x = block.forward(x, &mut cache.layers[l], mask, l, hooks)?;
        }
        let hidden = hooks.site("ln_final.hook_normalized", self.ln_f.forward(&x)?)?;
        let logits = hidden.broadcast_matmul(&self.wte.embeddings().t()?)?;
        let logits = hooks.site("logits", logits)?;
        Ok(Gpt2Output { hidden, logits })
    }

    /// Every site with its per-sample shape for a pass over `positions` new positions that
    /// attend to `keys` positions in all (cached + new). `thought` is one vector per
    /// thought pass.
    pub fn sites(&self, positions: usize, keys: usize) -> Vec<SiteInfo> {
        let (d, h, v) = (
            self.config.n_embd,
            self.config.n_head,
            self.config.vocab_size,
        );
        let token = [("position", positions), ("d_model", d)];
        let mut sites = vec![
            SiteInfo::new("hook_embed", &token, true),
            SiteInfo::new("hook_pos_embed", &token, true),
        ];
        for l in 0..self.config.n_layer {
            sites.push(SiteInfo::new(
                format!("blocks.{l}.hook_resid_pre"),
                &token,
                true,
            ));
            sites.push(SiteInfo::new(
                format!("blocks.{l}.attn.hook_pattern"),
                &[("head", h), ("query", positions), ("key", keys)],
                true,
            ));
            for name in ["hook_attn_out", "hook_mlp_out", "hook_resid_post"] {
                sites.push(SiteInfo::new(format!("blocks.{l}.{name}"), &token, true));
            }
        }
        sites.push(SiteInfo::new("ln_final.hook_normalized", &token, true));
        sites.push(SiteInfo::new("thought", &[("d_model", d)], true));
        sites.push(SiteInfo::new(
            "logits",
            &[("position", positions), ("vocab", v)],
            true,
        ));
        sites
    }
}

/// Random weights in GPT-2's initialisation (normal(0, 0.02), unit layer norms): for tests
/// and for training from scratch.
pub fn random_varmap(config: &Gpt2Config, seed: u64, device: &Device) -> Result<candle_nn::VarMap> {
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    Gpt2::new(config, vb)?;
    let mut names: Vec<String> = varmap
        .data()
        .lock()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    for (i, name) in names.iter().enumerate() {
        let var = varmap.data().lock().ok().and_then(|m| m.get(name).cloned());
        let Some(var) = var else { continue };
        let shape = var.shape().clone();
        let value = if name.contains("ln_") && name.ends_with("weight") {
            Tensor::ones(&shape, DType::F32, device)?
        } else if name.contains("ln_") || name.ends_with("bias") {
            Tensor::zeros(&shape, DType::F32, device)?
        } else {
            let noise = crate::rng::gaussian(seed, i as u64, shape.elem_count());
            (Tensor::from_vec(noise, &shape, device)? * 0.02)?
        };
        var.set(&value)?;
    }
    Ok(varmap)
}
