//! Branching latent mode: the model side of the BFS analysis (Coconut paper, section 5).
//!
//! The prompt and K continuous thoughts run once; at every k = 0..K the KV cache is cloned
//! (cheap: tensors are shared, a pass only appends) and the model is switched back to
//! language there: `<eot>`, the format's step opening, then the probability that the next
//! step starts with each node (its *value*) and a greedy continuation. One question costs
//! one prompt pass, K thought passes and K + 1 short language branches, instead of K + 1
//! full generations.

use candle_core::{IndexOp, Tensor};

use super::format::QuestionFormat;
use super::gpt2::{Gpt2, Gpt2Output, KvCache};
use crate::data::prosqa::Record;
use crate::sites::Hooks;
use crate::{Error, Result};

/// What the model says when switched back to language after `thoughts` thoughts.
#[derive(Debug, Clone, PartialEq)]
pub struct Branch {
    pub thoughts: usize,
    /// By node index: the probability that the next step starts with that node, the
    /// product of the teacher-forced probabilities of `format.node_tokens(record, node)`.
    pub node_values: Vec<f64>,
    /// Greedy continuation after `<eot>` (stop token included when reached); empty when
    /// decoding was not asked for.
    pub generated: Vec<u32>,
}

/// Runs `record`'s prompt, `max_thoughts` thoughts, and a branch at every k = 0..=max_thoughts.
/// With `decode`, each branch also decodes greedily up to `format.max_answer_tokens`.
pub fn branch_thoughts(
    model: &Gpt2,
    format: &dyn QuestionFormat,
    record: &Record,
    max_thoughts: usize,
    decode: bool,
) -> Result<Vec<Branch>> {
    let prompt = format.prompt(record)?;
    let node_tokens = (0..record.idx_to_symbol.len())
        .map(|v| format.node_tokens(record, v))
        .collect::<Result<Vec<_>>>()?;
    check_vocabulary(model, format, &prompt, &node_tokens)?;
    if prompt.is_empty() || node_tokens.iter().any(Vec::is_empty) {
        return Err(Error::Invalid(
            "the format gave an empty prompt or an empty node name".into(),
        ));
    }
    let mut hooks = Hooks::none();
    let mut cache = model.new_cache();
    let mut out = forward_ids(model, &prompt, &mut cache, &mut hooks)?;
    let mut branches = Vec::with_capacity(max_thoughts + 1);
    for k in 0..=max_thoughts {
        if k > 0 {
            out = thought(model, &out, &mut cache, &mut hooks)?;
        }
        branches.push(branch(
            model,
            format,
            record,
            &node_tokens,
            cache.clone(),
            k,
            decode,
        )?);
    }
    Ok(branches)
}

/// Checks, without running the model, that `branch_thoughts(.., record, max_thoughts, ..)`
/// can run: every token the format uses is a row of the model's embedding, and the prompt,
/// the thoughts, `<eot>`, the step opening and the longest node name fit the model's
/// context. Jobs call it for every question before any work.
pub fn check_question(
    model: &Gpt2,
    format: &dyn QuestionFormat,
    record: &Record,
    max_thoughts: usize,
) -> Result<()> {
    let prompt = format.prompt(record)?;
    let node_tokens = (0..record.idx_to_symbol.len())
        .map(|v| format.node_tokens(record, v))
        .collect::<Result<Vec<_>>>()?;
    check_vocabulary(model, format, &prompt, &node_tokens)?;
    // The last token of a node name is scored, never fed: it needs no position.
    let longest_name = node_tokens.iter().map(Vec::len).max().unwrap_or(1);
    let needed = prompt.len() + max_thoughts + 1 + format.step_opening().len() + longest_name - 1;
    let context = model.config().n_positions;
    if needed > context {
        return Err(Error::Invalid(format!(
            "the prompt ({} tokens), {max_thoughts} thoughts, `<eot>` and the longest node \
             name need {needed} positions, more than the model's context of {context}; use \
             fewer thoughts",
            prompt.len()
        )));
    }
    Ok(())
}

/// Every token id the format uses must be a row of the model's embedding.
fn check_vocabulary(
    model: &Gpt2,
    format: &dyn QuestionFormat,
    prompt: &[u32],
    node_tokens: &[Vec<u32>],
) -> Result<()> {
    let vocab = model.config().vocab_size;
    let latent = format.latent_tokens();
    let opening = format.step_opening();
    let specials = [latent.bot, latent.eot, latent.eos];
    let used = prompt
        .iter()
        .chain(node_tokens.iter().flatten())
        .chain(&opening)
        .chain(&specials);
    if let Some(&id) = used.max() {
        if id as usize >= vocab {
            return Err(Error::Invalid(format!(
                "the question format uses token id {id}, but the model's vocabulary has \
                 {vocab} tokens: the model and the format do not fit (a built-in model with \
                 a GPT-2 checkpoint's format, or the other way round?)"
            )));
        }
    }
    Ok(())
}

fn forward_ids(
    model: &Gpt2,
    ids: &[u32],
    cache: &mut KvCache,
    hooks: &mut Hooks,
) -> Result<Gpt2Output> {
    let x = Tensor::new(ids, model.device())?.unsqueeze(0)?;
    let start = cache.len();
    Ok(model.forward(&x, start, cache, hooks)?)
}

/// One continuous thought: the last hidden state fed back as the next input embedding.
fn thought(
    model: &Gpt2,
    prev: &Gpt2Output,
    cache: &mut KvCache,
    hooks: &mut Hooks,
) -> Result<Gpt2Output> {
    let (_, p, _) = prev.hidden.dims3()?;
    let h = prev.hidden.i((.., p - 1..p, ..))?;
    let start = cache.len();
    Ok(model.forward_embeds(&h, start, cache, hooks)?)
}

/// Softmax (in f64) of the logits at position `pos` of a pass.
fn probs_at(out: &Gpt2Output, pos: usize) -> Result<Vec<f64>> {
    let logits: Vec<f32> = out.logits.i((0, pos))?.to_vec1()?;
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let exps: Vec<f64> = logits.iter().map(|&v| ((v - max) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    Ok(exps.into_iter().map(|e| e / sum).collect())
}

fn last_index(out: &Gpt2Output) -> Result<usize> {
    Ok(out.logits.dim(1)? - 1)
}

fn branch(
    model: &Gpt2,
    format: &dyn QuestionFormat,
    record: &Record,
    node_tokens: &[Vec<u32>],
    mut cache: KvCache,
    k: usize,
    decode: bool,
) -> Result<Branch> {
    let mut hooks = Hooks::none();
    let eos = format.latent_tokens().eos;
    let after_eot = forward_ids(model, &[format.latent_tokens().eot], &mut cache, &mut hooks)?;
    let opening = format.step_opening();
    let (step_start, step_cache) = if opening.is_empty() {
        (after_eot.clone(), cache.clone())
    } else {
        let mut c = cache.clone();
        let out = forward_ids(model, &opening, &mut c, &mut hooks)?;
        (out, c)
    };
    let first = probs_at(&step_start, last_index(&step_start)?)?;
    let mut node_values = Vec::with_capacity(node_tokens.len());
    for tokens in node_tokens {
        let mut value = first[tokens[0] as usize];
        if tokens.len() > 1 && value > 0.0 {
            let mut c = step_cache.clone();
            let out = forward_ids(model, &tokens[..tokens.len() - 1], &mut c, &mut hooks)?;
            for (i, &t) in tokens[1..].iter().enumerate() {
                value *= probs_at(&out, i)?[t as usize];
            }
        }
        node_values.push(value);
    }
    let generated = if decode {
        greedy(
            model,
            after_eot,
            cache,
            eos,
            format.max_answer_tokens(record),
        )?
    } else {
        Vec::new()
    };
    Ok(Branch {
        thoughts: k,
        node_values,
        generated,
    })
}

/// Greedy decoding from a pass's last logits until `eos`, `max` tokens or the end of the
/// model's context.
fn greedy(
    model: &Gpt2,
    mut out: Gpt2Output,
    mut cache: KvCache,
    eos: u32,
    max: usize,
) -> Result<Vec<u32>> {
    let mut hooks = Hooks::none();
    let mut generated = Vec::new();
    while generated.len() < max {
        let logits = out.logits.i((0, last_index(&out)?))?;
        let next = logits.argmax(0)?.to_scalar::<u32>()?;
        generated.push(next);
        // A continuation that runs into the model's context length ends there.
        if next == eos || generated.len() == max || cache.len() >= model.config().n_positions {
            break;
        }
        out = forward_ids(model, &[next], &mut cache, &mut hooks)?;
    }
    Ok(generated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::infoloss::{node_token_mass, NodeTokens};
    use crate::data::prosqa::generate;
    use crate::reasoner::coconut::{forward_with_thoughts, generate_latent, LatentTokens};
    use crate::reasoner::format::{BuiltinFormat, Chain};
    use crate::reasoner::gpt2::{random_varmap, Gpt2Config};
    use crate::reasoner::tokens::Vocab;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    /// A random model whose weights are large enough that outputs vary strongly.
    pub(crate) fn tiny_builtin(seed: u64) -> Gpt2 {
        let cfg = Gpt2Config {
            n_embd: 16,
            n_layer: 2,
            n_head: 2,
            n_positions: 256,
            vocab_size: Vocab::prosqa().len(),
            layer_norm_epsilon: 1e-5,
        };
        let varmap = random_varmap(&cfg, seed, &Device::Cpu).unwrap();
        let mut vars: Vec<(String, candle_core::Var)> =
            varmap.data().lock().unwrap().clone().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (i, (_, var)) in vars.iter().enumerate() {
            let t = var.as_tensor();
            let noise = crate::rng::gaussian(seed + 1, i as u64, t.elem_count());
            let noise = Tensor::from_vec(noise, t.shape(), &Device::Cpu).unwrap();
            var.set(&(t + (noise * 0.5).unwrap()).unwrap()).unwrap();
        }
        Gpt2::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap()
    }

    /// Next-token probabilities after `prompt, k thoughts, <eot>` from one teacher-forced
    /// pass without any cache branching.
    fn reference_probs(model: &Gpt2, prompt: &[u32], k: usize) -> Vec<f64> {
        let t = LatentTokens::builtin();
        let mut seq = prompt.to_vec();
        seq.extend(std::iter::repeat_n(t.thought, k));
        seq.push(t.eot);
        let out = forward_with_thoughts(model, &seq, t, &mut Hooks::none()).unwrap();
        let logits: Vec<f32> = out.logits.i((0, seq.len() - 1)).unwrap().to_vec1().unwrap();
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        logits.iter().map(|&l| (l as f64).exp() / z).collect()
    }

    #[test]
    fn node_values_are_the_softmax_of_an_uncached_teacher_forced_pass() {
        let model = tiny_builtin(11);
        let format = BuiltinFormat::default();
        let record = &generate(1, 4)[0];
        let prompt = format.prompt(record).unwrap();
        let branches = branch_thoughts(&model, &format, record, 3, false).unwrap();
        assert_eq!(branches.len(), 4);
        for b in &branches {
            let p = reference_probs(&model, &prompt, b.thoughts);
            let node_ids: Vec<u32> = (0..record.idx_to_symbol.len())
                .map(|v| format.node_tokens(record, v).unwrap()[0])
                .collect();
            for (v, &id) in node_ids.iter().enumerate() {
                let want = p[id as usize];
                assert!(
                    (b.node_values[v] - want).abs() < 1e-5,
                    "k {} node {v}: {} vs {want}",
                    b.thoughts,
                    b.node_values[v]
                );
            }
            // Values over all nodes plus the mass on every other token is the whole
            // distribution; node_token_mass (infoloss) gives the node share independently.
            let off_nodes: f64 = (0..p.len() as u32)
                .filter(|id| !node_ids.contains(id))
                .map(|id| p[id as usize])
                .sum();
            let on_nodes: f64 = b.node_values.iter().sum();
            assert!((on_nodes + off_nodes - 1.0).abs() < 1e-6);
            let p32: Vec<f32> = p.iter().map(|&x| x as f32).collect();
            let mass = node_token_mass(
                &p32,
                &NodeTokens {
                    graph: &node_ids,
                    reachable: &[],
                    frontier: &[],
                },
            )
            .unwrap();
            assert!((mass.graph - on_nodes).abs() < 1e-5);
        }
        // The values depend on the number of thoughts (the branches really differ).
        assert!(branches[0]
            .node_values
            .iter()
            .zip(&branches[3].node_values)
            .any(|(a, b)| (a - b).abs() > 1e-4));
    }

    #[test]
    fn branching_the_cache_decodes_as_a_fresh_generation_with_k_thoughts() {
        let model = tiny_builtin(12);
        let format = BuiltinFormat::default();
        for record in &generate(2, 9) {
            let prompt = format.prompt(record).unwrap();
            let max = format.max_answer_tokens(record);
            let branches = branch_thoughts(&model, &format, record, 4, true).unwrap();
            for b in &branches {
                let fresh = generate_latent(
                    &model,
                    &prompt,
                    b.thoughts,
                    LatentTokens::builtin(),
                    max,
                    &mut Hooks::none(),
                )
                .unwrap();
                assert_eq!(b.generated, fresh.answer, "k = {}", b.thoughts);
                assert!(!b.generated.is_empty());
            }
        }
    }

    /// A format whose nodes are spelled with two tokens after a one-token opening, to
    /// check the teacher-forced product against an uncached pass.
    struct TwoTokenNames(BuiltinFormat);

    impl QuestionFormat for TwoTokenNames {
        fn prompt(&self, r: &Record) -> Result<Vec<u32>> {
            self.0.prompt(r)
        }
        fn latent_tokens(&self) -> LatentTokens {
            self.0.latent_tokens()
        }
        fn step_opening(&self) -> Vec<u32> {
            vec![crate::reasoner::tokens::QUERY]
        }
        fn node_tokens(&self, r: &Record, node: usize) -> Result<Vec<u32>> {
            Ok(vec![
                crate::reasoner::tokens::SEP,
                self.0.node_tokens(r, node)?[0],
            ])
        }
        fn read_chain(&self, r: &Record, generated: &[u32]) -> Chain {
            self.0.read_chain(r, generated)
        }
        fn max_answer_tokens(&self, r: &Record) -> usize {
            self.0.max_answer_tokens(r)
        }
        fn named_hop(&self, thoughts: usize) -> usize {
            self.0.named_hop(thoughts)
        }
    }

    #[test]
    fn multi_token_names_multiply_teacher_forced_probabilities() {
        let model = tiny_builtin(13);
        let format = TwoTokenNames(BuiltinFormat::default());
        let record = &generate(1, 5)[0];
        let prompt = format.prompt(record).unwrap();
        let branches = branch_thoughts(&model, &format, record, 2, false).unwrap();
        let t = LatentTokens::builtin();
        for b in &branches {
            for v in [record.root, record.target, record.neg_target] {
                let name = format.node_tokens(record, v).unwrap();
                let mut seq = prompt.clone();
                seq.extend(std::iter::repeat_n(t.thought, b.thoughts));
                seq.push(t.eot);
                seq.extend(format.step_opening());
                let at = seq.len() - 1;
                seq.extend(&name);
                let out = forward_with_thoughts(&model, &seq, t, &mut Hooks::none()).unwrap();
                let mut want = 1.0;
                for (i, &tok) in name.iter().enumerate() {
                    let logits: Vec<f32> = out.logits.i((0, at + i)).unwrap().to_vec1().unwrap();
                    let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
                    want *= (logits[tok as usize] as f64).exp() / z;
                }
                assert!(
                    (b.node_values[v] - want).abs() < 1e-6 * want.max(1e-3),
                    "k {} node {v}: {} vs {want}",
                    b.thoughts,
                    b.node_values[v]
                );
            }
        }
    }

    #[test]
    fn a_model_too_small_for_the_format_is_refused() {
        let cfg = Gpt2Config {
            n_embd: 8,
            n_layer: 1,
            n_head: 2,
            n_positions: 128,
            vocab_size: 10,
            layer_norm_epsilon: 1e-5,
        };
        let varmap = random_varmap(&cfg, 0, &Device::Cpu).unwrap();
        let model = Gpt2::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let record = &generate(1, 1)[0];
        let err = branch_thoughts(&model, &BuiltinFormat::default(), record, 1, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vocabulary has 10 tokens"), "{err}");
        let err = check_question(&model, &BuiltinFormat::default(), record, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vocabulary has 10 tokens"), "{err}");
    }

    #[test]
    fn a_question_that_outgrows_the_context_is_refused_before_running() {
        let model = tiny_builtin(0);
        let format = BuiltinFormat::default();
        let record = &generate(1, 1)[0];
        check_question(&model, &format, record, 6).unwrap();
        let prompt = format.prompt(record).unwrap().len();
        // Prompt + thoughts + `<eot>` fill the 256 positions exactly (one-token names).
        check_question(&model, &format, record, 255 - prompt).unwrap();
        let err = check_question(&model, &format, record, 256 - prompt)
            .unwrap_err()
            .to_string();
        assert!(err.contains("context of 256"), "{err}");
    }
}
