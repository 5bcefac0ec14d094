//! Coconut's latent mode: between `<bot>` and `<eot>` the model feeds its last hidden state
//! (after the final layer norm) back as the next input embedding instead of a token.
//!
//! The thought loop lives here, outside the model, because it is where the recorder needs
//! the step: pass 0 is the prompt, pass k is thought k, and the passes after the thoughts
//! (`<eot>`, then each decoded token) continue the count. With the KV cache, k thoughts
//! cost k single-position passes.

use candle_core::{IndexOp, Result, Tensor};

use super::gpt2::{repeat_rows, Gpt2, Gpt2Output, KvCache};
use crate::sites::Hooks;

/// Token ids that steer latent mode. The built-in vocabulary uses `tokens::{BOT, EOT, EOS,
/// THOUGHT}`; Coconut checkpoints use GPT-2 ids 50257-50259 and `<|endoftext|>` (50256).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentTokens {
    pub bot: u32,
    pub eot: u32,
    pub eos: u32,
    /// Marks a thought position in a teacher-forced sequence.
    pub thought: u32,
}

impl LatentTokens {
    pub fn builtin() -> Self {
        use super::tokens::{BOT, EOS, EOT, THOUGHT};
        Self {
            bot: BOT,
            eot: EOT,
            eos: EOS,
            thought: THOUGHT,
        }
    }

    /// `<|start-latent|>`, `<|end-latent|>`, `<|endoftext|>`, `<|latent|>` as the Coconut
    /// reference code adds them to GPT-2's tokenizer.
    pub fn coconut_gpt2() -> Self {
        Self {
            bot: 50257,
            eot: 50258,
            eos: 50256,
            thought: 50259,
        }
    }
}

/// One latent-mode generation for one prompt.
#[derive(Debug, Clone)]
pub struct LatentGeneration {
    /// The thought vectors fed back, `[d_model]` each, in order.
    pub thoughts: Vec<Tensor>,
    /// Tokens decoded greedily after `<eot>` (the stop token included if reached).
    pub answer: Vec<u32>,
    /// Logits `[vocab]` that chose each answer token.
    pub answer_logits: Vec<Tensor>,
}

fn last_position(t: &Tensor) -> Result<Tensor> {
    let (_, p, _) = t.dims3()?;
    t.i((0, p - 1))
}

/// Runs the prompt (ending with `<bot>`, or `<bot> root` in the built-in format),
/// `n_thoughts` continuous thoughts, `<eot>`, then greedy decoding until `tokens.eos` or
/// `max_answer` tokens. Sets `hooks.set_step(pass, None)` before every pass.
pub fn generate_latent(
    model: &Gpt2,
    prompt: &[u32],
    n_thoughts: usize,
    tokens: LatentTokens,
    max_answer: usize,
    hooks: &mut Hooks,
) -> Result<LatentGeneration> {
    if prompt.is_empty() {
        candle_core::bail!("the prompt is empty");
    }
    let device = model.device();
    let mut cache = model.new_cache();
    let mut pass: u16 = 0;
    hooks.set_step(pass, None);
    let ids = Tensor::new(prompt, device)?.unsqueeze(0)?;
    let mut out = model.forward(&ids, 0, &mut cache, hooks)?;
    let mut thoughts = Vec::with_capacity(n_thoughts);
    for _ in 0..n_thoughts {
        pass += 1;
        hooks.set_step(pass, None);
        let out_next = thought_pass(model, &out, &mut cache, hooks)?;
        thoughts.push(out_next.0);
        out = out_next.1;
    }
    let mut answer = Vec::new();
    let mut answer_logits = Vec::new();
    let mut next = tokens.eot;
    loop {
        pass += 1;
        hooks.set_step(pass, None);
        let ids = Tensor::new(&[next], device)?.unsqueeze(0)?;
        let start = cache.len();
        out = model.forward(&ids, start, &mut cache, hooks)?;
        if answer.len() == max_answer {
            break;
        }
        let logits = last_position(&out.logits)?;
        next = logits.argmax(0)?.to_scalar::<u32>()?;
        answer.push(next);
        answer_logits.push(logits);
        if next == tokens.eos || answer.len() == max_answer {
            break;
        }
    }
    Ok(LatentGeneration {
        thoughts,
        answer,
        answer_logits,
    })
}

/// The same `n_thoughts` thoughts as `generate_latent`, computed the way a model without a
/// KV cache must: every thought re-runs the whole prefix (prompt and the thoughts so far).
/// The baseline the KV cache is benchmarked against.
pub fn thoughts_by_recomputation(
    model: &Gpt2,
    prompt: &[u32],
    n_thoughts: usize,
) -> Result<Vec<Tensor>> {
    let ids = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    let mut embeds = model.embed(&ids)?;
    let mut thoughts = Vec::with_capacity(n_thoughts);
    for _ in 0..n_thoughts {
        let mut cache = model.new_cache();
        let out = model.forward_embeds(&embeds, 0, &mut cache, &mut Hooks::none())?;
        let h = last_position(&out.hidden)?;
        embeds = Tensor::cat(&[&embeds, &h.unsqueeze(0)?.unsqueeze(0)?], 1)?;
        thoughts.push(h);
    }
    Ok(thoughts)
}

/// One continuous thought: the last hidden state of `prev`, seen by the `thought` site,
/// fed back at the next position. Returns the thought vector `[d_model]` and the pass.
fn thought_pass(
    model: &Gpt2,
    prev: &Gpt2Output,
    cache: &mut KvCache,
    hooks: &mut Hooks,
) -> Result<(Tensor, Gpt2Output)> {
    let h = last_position(&prev.hidden)?.unsqueeze(0)?;
    let thought = hooks.site("thought", h)?;
    let start = cache.len();
    let out = model.forward_embeds(&thought.unsqueeze(1)?, start, cache, hooks)?;
    Ok((thought.squeeze(0)?, out))
}

/// Teacher-forced latent mode over a whole sequence in which a contiguous run of
/// `tokens.thought` placeholders stands for continuous thoughts: the tokens before the run
/// in one pass, one pass per thought, the rest in one pass. Returns the outputs of all
/// positions concatenated (`[1, len, ...]`), as one full forward would; the placeholder
/// positions hold the thought passes' outputs. Gradients flow through the thoughts, which
/// is what Coconut trains.
pub fn forward_with_thoughts(
    model: &Gpt2,
    ids: &[u32],
    tokens: LatentTokens,
    hooks: &mut Hooks,
) -> Result<Gpt2Output> {
    let device = model.device();
    let first = ids.iter().position(|&t| t == tokens.thought);
    let Some(first) = first.filter(|&f| f > 0) else {
        if first == Some(0) {
            candle_core::bail!("a sequence cannot start with a thought");
        }
        let mut cache = model.new_cache();
        hooks.set_step(0, None);
        let x = Tensor::new(ids, device)?.unsqueeze(0)?;
        return model.forward(&x, 0, &mut cache, hooks);
    };
    let n = ids[first..]
        .iter()
        .take_while(|&&t| t == tokens.thought)
        .count();
    if ids[first + n..].contains(&tokens.thought) {
        candle_core::bail!("thought placeholders must form one contiguous run");
    }
    let mut cache = model.new_cache();
    hooks.set_step(0, None);
    let x = Tensor::new(&ids[..first], device)?.unsqueeze(0)?;
    let mut out = model.forward(&x, 0, &mut cache, hooks)?;
    let (mut hidden, mut logits) = (vec![out.hidden.clone()], vec![out.logits.clone()]);
    for k in 1..=n {
        hooks.set_step(k as u16, None);
        out = thought_pass(model, &out, &mut cache, hooks)?.1;
        hidden.push(out.hidden.clone());
        logits.push(out.logits.clone());
    }
    if first + n < ids.len() {
        hooks.set_step(n as u16 + 1, None);
        let x = Tensor::new(&ids[first + n..], device)?.unsqueeze(0)?;
        let start = cache.len();
        out = model.forward(&x, start, &mut cache, hooks)?;
        hidden.push(out.hidden);
        logits.push(out.logits);
    }
    Ok(Gpt2Output {
        hidden: Tensor::cat(&hidden, 1)?,
        logits: Tensor::cat(&logits, 1)?,
    })
}

/// Teacher-forced latent mode on a padded batch. Row `b` is `(prefix, suffix)`: the tokens
/// before the thoughts (ending with `<bot>`) and those after them (starting with `<eot>`);
/// every row gets `n_thoughts` thoughts. Prefixes are padded on the left so that the
/// thoughts line up, suffixes on the right. Returns the suffix pass's output, `[batch,
/// longest suffix, ...]`: slot `i` of row `b` is suffix token `i` (slots past the row's
/// suffix are padding). Sets the step as `forward_with_thoughts` does.
pub fn forward_batch_with_thoughts(
    model: &Gpt2,
    rows: &[(&[u32], &[u32])],
    n_thoughts: usize,
    hooks: &mut Hooks,
) -> Result<Gpt2Output> {
    let prefixes: Vec<&[u32]> = rows.iter().map(|(p, _)| *p).collect();
    let mut chain = ThoughtChain::start(model, &prefixes, hooks)?;
    for _ in 0..n_thoughts {
        chain.think(hooks)?;
    }
    let suffixes: Vec<&[u32]> = rows.iter().map(|(_, s)| *s).collect();
    chain.read(&suffixes, hooks)
}

/// One read of a padded batch in latent mode: `rows` run after `after` thoughts from a copy
/// of the cache. With `m` times as many rows as the batch has, rows `r*m..(r+1)*m` are `m`
/// continuations of batch row `r`, run as one batch.
pub struct Read<'a> {
    pub after: usize,
    pub rows: Vec<&'a [u32]>,
}

/// The outputs of `forward_batch_reads`.
pub struct ReadsOutput {
    /// The prefix pass (`[batch, longest prefix, ...]`, prefixes left-padded).
    pub prompt: Gpt2Output,
    /// `thoughts[k - 1]` is the pass of thought k (`[batch, 1, ...]`); its hidden state is
    /// thought k + 1.
    pub thoughts: Vec<Gpt2Output>,
    /// Each read's output, as `forward_batch_with_thoughts` returns its one.
    pub reads: Vec<Gpt2Output>,
}

/// Teacher-forced latent mode with any number of reads, in order of `after`: the prefixes
/// run once, the thoughts go on up to the last read, and each read sees the cache as it was
/// after its thoughts.
pub fn forward_batch_reads(
    model: &Gpt2,
    prefixes: &[&[u32]],
    reads: &[Read],
    hooks: &mut Hooks,
) -> Result<ReadsOutput> {
    if reads.windows(2).any(|w| w[1].after < w[0].after) {
        candle_core::bail!("reads must come in order of thoughts");
    }
    let b = prefixes.len();
    let mut chain = ThoughtChain::start(model, prefixes, hooks)?;
    let prompt = chain.last.clone();
    let mut thoughts = Vec::new();
    let mut outs = Vec::with_capacity(reads.len());
    for read in reads {
        while chain.thoughts < read.after {
            chain.think(hooks)?;
            thoughts.push(chain.last.clone());
        }
        let m = read.rows.len() / b.max(1);
        if m == 0 || m * b != read.rows.len() {
            candle_core::bail!(
                "a read needs a multiple of the batch's {b} rows, got {}",
                read.rows.len()
            );
        }
        let mut branch = if m == 1 {
            chain.clone()
        } else {
            chain.repeat_rows(m)?
        };
        outs.push(branch.read(&read.rows, hooks)?);
    }
    Ok(ReadsOutput {
        prompt,
        thoughts,
        reads: outs,
    })
}

/// A padded batch in latent mode: the prompts seen, the thoughts fed back so far.
#[derive(Clone)]
struct ThoughtChain<'m> {
    model: &'m Gpt2,
    cache: KvCache,
    /// Unpadded prefix length of each row.
    prefix_lens: Vec<usize>,
    /// Output of the last pass (its last position is the next thought).
    last: Gpt2Output,
    thoughts: usize,
}

impl<'m> ThoughtChain<'m> {
    /// Runs the prefixes, left-padded so that the thoughts line up.
    fn start(model: &'m Gpt2, prefixes: &[&[u32]], hooks: &mut Hooks) -> Result<Self> {
        if prefixes.is_empty() || prefixes.iter().any(|p| p.is_empty()) {
            candle_core::bail!("every row needs a non-empty prefix");
        }
        let b = prefixes.len();
        let mut cache = model.new_cache();
        let la = prefixes.iter().map(|p| p.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * la);
        let (mut positions, mut valid) = (Vec::with_capacity(b), Vec::with_capacity(b));
        for prefix in prefixes {
            let pad = la - prefix.len();
            ids.extend(std::iter::repeat_n(0, pad).chain(prefix.iter().copied()));
            positions.push(
                (0..la)
                    .map(|s| s.saturating_sub(pad) as u32)
                    .collect::<Vec<_>>(),
            );
            valid.push((0..la).map(|s| s >= pad).collect::<Vec<_>>());
        }
        hooks.set_step(0, None);
        let ids = Tensor::from_vec(ids, (b, la), model.device())?;
        let embeds = hooks.site("hook_embed", model.embed(&ids)?)?;
        let last = model.forward_padded(&embeds, &positions, &valid, &mut cache, hooks)?;
        Ok(Self {
            model,
            cache,
            prefix_lens: prefixes.iter().map(|p| p.len()).collect(),
            last,
            thoughts: 0,
        })
    }

    /// The chain with every row repeated `m` times in place.
    fn repeat_rows(&self, m: usize) -> Result<Self> {
        Ok(Self {
            model: self.model,
            cache: self.cache.repeat_rows(m)?,
            prefix_lens: self
                .prefix_lens
                .iter()
                .flat_map(|&p| std::iter::repeat_n(p, m))
                .collect(),
            last: Gpt2Output {
                hidden: repeat_rows(&self.last.hidden, m)?,
                logits: repeat_rows(&self.last.logits, m)?,
            },
            thoughts: self.thoughts,
        })
    }

    /// Feeds the last hidden state of every row back as one more thought.
    fn think(&mut self, hooks: &mut Hooks) -> Result<()> {
        self.thoughts += 1;
        let k = self.thoughts;
        hooks.set_step(k as u16, None);
        let (_, t, _) = self.last.hidden.dims3()?;
        let h = self.last.hidden.narrow(1, t - 1, 1)?.squeeze(1)?;
        let thought = hooks.site("thought", h)?;
        let positions: Vec<Vec<u32>> = self
            .prefix_lens
            .iter()
            .map(|&p| vec![(p + k - 1) as u32])
            .collect();
        let valid = vec![vec![true]; self.prefix_lens.len()];
        self.last = self.model.forward_padded(
            &thought.unsqueeze(1)?,
            &positions,
            &valid,
            &mut self.cache,
            hooks,
        )?;
        Ok(())
    }

    /// Runs one suffix per row after the thoughts so far, right-padded (padding sits at
    /// position 0: it is never attended to).
    fn read(&mut self, suffixes: &[&[u32]], hooks: &mut Hooks) -> Result<Gpt2Output> {
        if suffixes.len() != self.prefix_lens.len() || suffixes.iter().any(|s| s.is_empty()) {
            candle_core::bail!("every row needs one non-empty suffix");
        }
        hooks.set_step(self.thoughts as u16 + 1, None);
        let b = suffixes.len();
        let lc = suffixes.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * lc);
        let (mut positions, mut valid) = (Vec::with_capacity(b), Vec::with_capacity(b));
        for (suffix, &prefix_len) in suffixes.iter().zip(&self.prefix_lens) {
            let start = prefix_len + self.thoughts;
            ids.extend(
                suffix
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, lc - suffix.len())),
            );
            positions.push(
                (0..lc)
                    .map(|i| {
                        if i < suffix.len() {
                            (start + i) as u32
                        } else {
                            0
                        }
                    })
                    .collect::<Vec<_>>(),
            );
            valid.push((0..lc).map(|i| i < suffix.len()).collect::<Vec<_>>());
        }
        let ids = Tensor::from_vec(ids, (b, lc), self.model.device())?;
        let embeds = hooks.site("hook_embed", self.model.embed(&ids)?)?;
        self.model
            .forward_padded(&embeds, &positions, &valid, &mut self.cache, hooks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reasoner::gpt2::{random_varmap, Gpt2Config};
    use crate::sites::{Firing, Tap};
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    fn tiny() -> Gpt2 {
        let cfg = Gpt2Config {
            n_embd: 16,
            n_layer: 2,
            n_head: 2,
            n_positions: 64,
            vocab_size: 24,
            layer_norm_epsilon: 1e-5,
        };
        let varmap = random_varmap(&cfg, 3, &Device::Cpu).unwrap();
        // Scale up so that the outputs depend strongly on every weight.
        // Sorted by name: a VarMap iterates in hash order, which differs between runs.
        let mut vars: Vec<(String, candle_core::Var)> =
            varmap.data().lock().unwrap().clone().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (i, (_, var)) in vars.iter().enumerate() {
            let t = var.as_tensor();
            let noise = crate::rng::gaussian(5, i as u64, t.elem_count());
            let noise = Tensor::from_vec(noise, t.shape(), &Device::Cpu).unwrap();
            var.set(&(t + (noise * 0.3).unwrap()).unwrap()).unwrap();
        }
        Gpt2::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[derive(Default)]
    struct Collect {
        seen: HashMap<(String, u16), Vec<Vec<usize>>>,
    }

    impl Tap for Collect {
        fn wants(&self, _: &str) -> bool {
            true
        }
        fn tap(&mut self, x: &Tensor, at: &Firing) -> Result<Option<Tensor>> {
            self.seen
                .entry((at.site.to_string(), at.step))
                .or_default()
                .push(x.dims().to_vec());
            Ok(None)
        }
    }

    const TOKENS: LatentTokens = LatentTokens {
        bot: 3,
        eot: 4,
        eos: 2,
        thought: 5,
    };

    #[test]
    fn cached_thoughts_match_recomputing_the_whole_sequence() {
        let model = tiny();
        let prompt = [1u32, 9, 10, 6, 11, 12, 6, 7, 9, 12, 3];
        let gen = generate_latent(&model, &prompt, 4, TOKENS, 3, &mut Hooks::none()).unwrap();
        assert_eq!(gen.thoughts.len(), 4);
        // Reference: one uncached pass over [token embeddings; thoughts] from scratch.
        let ids = Tensor::new(&prompt[..], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut embeds = vec![model.embed(&ids).unwrap()];
        for t in &gen.thoughts {
            embeds.push(t.unsqueeze(0).unwrap().unsqueeze(0).unwrap());
        }
        let embeds = Tensor::cat(&embeds, 1).unwrap();
        let mut cache = model.new_cache();
        let full = model
            .forward_embeds(&embeds, 0, &mut cache, &mut Hooks::none())
            .unwrap();
        // Thought k+1 is the hidden state at the position of thought k (or the prompt's end).
        for k in 1..4 {
            let h = full.hidden.i((0, prompt.len() - 1 + k)).unwrap();
            assert!(max_diff(&h, &gen.thoughts[k]) < 1e-5, "thought {k}");
        }
        let recomputed = thoughts_by_recomputation(&model, &prompt, 4).unwrap();
        for (k, (a, b)) in recomputed.iter().zip(&gen.thoughts).enumerate() {
            assert!(max_diff(a, b) < 1e-5, "recomputed thought {k}");
        }
        // The teacher-forced path gives the same logits as the uncached pass.
        let mut seq = prompt.to_vec();
        seq.extend([5, 5, 5, 5, 4]);
        // Any token after <eot> but the placeholder: it cannot change the logits before it.
        seq.push(8);
        let tf = forward_with_thoughts(&model, &seq, TOKENS, &mut Hooks::none()).unwrap();
        let n = prompt.len() + 4;
        assert!(max_diff(&tf.logits.narrow(1, 0, n).unwrap(), &full.logits) < 1e-5);
        assert!(max_diff(&tf.hidden.narrow(1, 0, n).unwrap(), &full.hidden) < 1e-5);
        // And the answer logits equal those after <eot> in the teacher-forced pass.
        let after_eot = tf.logits.i((0, n)).unwrap();
        assert!(max_diff(&after_eot, &gen.answer_logits[0]) < 1e-5);
        assert_eq!(
            after_eot.argmax(0).unwrap().to_scalar::<u32>().unwrap(),
            gen.answer[0]
        );
    }

    #[test]
    fn padded_batches_match_one_sample_at_a_time() {
        let model = tiny();
        let prefixes: [&[u32]; 3] = [
            &[1, 9, 10, 6, 7, 9, 3],
            &[1, 11, 12, 6, 9, 10, 6, 7, 11, 3],
            &[1, 7, 3],
        ];
        let suffixes: [&[u32]; 3] = [&[4, 10, 2], &[4, 12], &[4, 9, 10, 11, 2]];
        let rows: Vec<(&[u32], &[u32])> = prefixes
            .iter()
            .copied()
            .zip(suffixes.iter().copied())
            .collect();
        for n in [0, 2] {
            let batch = forward_batch_with_thoughts(&model, &rows, n, &mut Hooks::none()).unwrap();
            for (b, (p, s)) in rows.iter().enumerate() {
                let seq = [&p[..], &vec![5; n][..], &s[..]].concat();
                let one = forward_with_thoughts(&model, &seq, TOKENS, &mut Hooks::none()).unwrap();
                let want = one
                    .logits
                    .i(0)
                    .unwrap()
                    .narrow(0, p.len() + n, s.len())
                    .unwrap();
                let got = batch.logits.i(b).unwrap().narrow(0, 0, s.len()).unwrap();
                assert!(
                    max_diff(&got, &want) < 1e-4,
                    "row {b}, {n} thoughts: {}",
                    max_diff(&got, &want)
                );
            }
        }
    }

    #[test]
    fn sites_fire_with_the_shapes_sites_states() {
        let model = tiny();
        let prompt = [1u32, 9, 10, 6, 7, 9, 10, 11, 3];
        let mut tap = Collect::default();
        {
            let mut hooks = Hooks::none().with(&mut tap);
            generate_latent(&model, &prompt, 2, TOKENS, 1, &mut hooks).unwrap();
        }
        let p = prompt.len();
        // Pass 0: the prompt; passes 1, 2: thoughts; pass 3: <eot>.
        for (step, positions, keys) in [(0u16, p, p), (1, 1, p + 1), (2, 1, p + 2), (3, 1, p + 3)] {
            for site in model.sites(positions, keys) {
                if site.name == "thought" && step == 0
                    || site.name == "hook_embed" && (step == 1 || step == 2)
                {
                    assert!(
                        !tap.seen.contains_key(&(site.name.clone(), step)),
                        "{} {step}",
                        site.name
                    );
                    continue;
                }
                if site.name == "thought" && step == 3 {
                    continue;
                }
                let shapes = tap
                    .seen
                    .get(&(site.name.clone(), step))
                    .unwrap_or_else(|| panic!("{} at {step}", site.name));
                let mut want = vec![1];
                want.extend(site.dims.iter().map(|(_, n)| *n));
                assert_eq!(shapes, &vec![want], "{} at step {step}", site.name);
            }
        }
        assert_eq!(tap.seen.keys().map(|(_, s)| *s).max(), Some(3));
    }

    #[test]
    fn recording_does_not_change_outputs() {
        let model = tiny();
        let prompt = [1u32, 9, 10, 6, 7, 9, 10, 11, 3];
        let plain = generate_latent(&model, &prompt, 3, TOKENS, 2, &mut Hooks::none()).unwrap();
        let mut tap = Collect::default();
        let mut hooks = Hooks::none().with(&mut tap);
        let recorded = generate_latent(&model, &prompt, 3, TOKENS, 2, &mut hooks).unwrap();
        assert_eq!(plain.answer, recorded.answer);
        for (a, b) in plain.thoughts.iter().zip(&recorded.thoughts) {
            assert_eq!(max_diff(a, b), 0.0);
        }
    }

    struct Zero(&'static str);
    impl Tap for Zero {
        fn wants(&self, site: &str) -> bool {
            site == self.0
        }
        fn tap(&mut self, x: &Tensor, _: &Firing) -> Result<Option<Tensor>> {
            Ok(Some(x.zeros_like()?))
        }
    }

    #[test]
    fn a_tap_on_thought_replaces_what_is_fed_back() {
        let model = tiny();
        let prompt = [1u32, 9, 10, 6, 7, 9, 10, 11, 3];
        let plain = generate_latent(&model, &prompt, 2, TOKENS, 1, &mut Hooks::none()).unwrap();
        let mut zero = Zero("thought");
        let mut hooks = Hooks::none().with(&mut zero);
        let ablated = generate_latent(&model, &prompt, 2, TOKENS, 1, &mut hooks).unwrap();
        assert_eq!(
            max_diff(
                &ablated.thoughts[0],
                &ablated.thoughts[0].zeros_like().unwrap()
            ),
            0.0
        );
        assert!(max_diff(&plain.answer_logits[0], &ablated.answer_logits[0]) > 1e-3);
    }
}
