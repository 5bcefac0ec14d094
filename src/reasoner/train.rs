//! Training the built-in reasoner on generated ProsQA-like data with Coconut's curriculum.
//!
//! Stage k replaces the first k reasoning steps with k * c continuous thoughts; each stage
//! runs a fixed number of epochs and starts a fresh optimizer (as the reference code does).
//! The loss covers only the language after `<eot>` (remaining steps and the answer). The
//! same loop trains the CoT baseline (stage 0 only) and the no-CoT baseline (answer only).
//! Never train on the real ProsQA file: it is the held-out evaluation set.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::progress::Progress;
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{read_config, save_hf_gpt2};
use super::coconut::{forward_batch_reads, Read};
use super::format::QuestionFormat;
use super::gpt2::{random_varmap, Gpt2, Gpt2Config, Gpt2Output};
use super::tokens::{encode, Encoded, Vocab, EDGES_START, EDGE_LEN, EOT};
use crate::data::prosqa::Record;
use crate::error::IoContext;
use crate::sites::Hooks;
use crate::{Error, Result};

/// What the model learns to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Coconut's curriculum: steps replaced by continuous thoughts stage by stage.
    Coconut,
    /// Chain of thought in language (stage 0 throughout).
    Cot,
    /// The answer right after the question.
    NoCot,
}

/// What the language after `<eot>` says at a curriculum stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Supervision {
    /// Coconut's: the shortest path's remaining steps, then the answer. Naming the next node
    /// on the path needs lookahead (which child leads to the target), which a 2-layer model
    /// trained from scratch did not learn in 21 epochs (all three models stayed at chance).
    #[default]
    Path,
    /// Zhu et al. 2025 ("Reasoning by Superposition"), for small models trained from scratch:
    /// after j thoughts (j = 0 up to the stage), `<eot>` is scored against the uniform
    /// distribution over the frontier F_{j+1} (the nodes j + 1 hops from the root: the
    /// expected loss of one uniformly drawn node, without the draw's noise); once j reaches
    /// the question's hops, the answer. Each thought is taught one breadth-first expansion
    /// and no step needs lookahead. Needs one thought per step (c = 1).
    Frontier,
}

/// Which questions an epoch trains on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainData {
    /// The records given to `train`, every epoch.
    #[default]
    Given,
    /// `per_epoch` freshly generated questions each epoch (seed mixed with the epoch): no
    /// graph is seen twice, so the model cannot pass by memorising graphs (with 4000 fixed
    /// questions a CoT model reached 69% on them and 42% on unseen ones).
    Fresh { per_epoch: usize, seed: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub method: Method,
    pub model: Gpt2Config,
    /// Last curriculum stage (Coconut uses 6 for ProsQA); later stages stay at this one.
    pub max_stage: usize,
    /// Epochs at each stage (the CoT / no-CoT baselines run `epochs_per_stage *
    /// (max_stage + 1)` epochs in all, the same budget).
    pub epochs_per_stage: usize,
    /// Thoughts per replaced step (c).
    pub thoughts_per_step: usize,
    /// Epochs after the curriculum, at the last stage (the reference code's `num_epochs`
    /// beyond `epochs_per_stage * (max_stage + 1)`). May grow between runs: training then
    /// resumes where it stopped.
    #[serde(default)]
    pub extra_epochs: usize,
    /// Chance that a sample is trained at a random earlier stage instead of the current one.
    pub mix_prob: f64,
    /// Use `stage * c` thoughts even for questions with fewer steps (Coconut's
    /// `pad_latent_to_max`, used for ProsQA).
    pub pad_thoughts: bool,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Samples whose gradients are summed into one optimizer step.
    pub batch_size: usize,
    pub seed: u64,
    #[serde(default)]
    pub data: TrainData,
    /// What Coconut's stages supervise after `<eot>` (the baselines ignore it).
    #[serde(default)]
    pub supervision: Supervision,
    /// Lookup drills per question, for every method alike: right after the prompt, `n
    /// <eot>` for a random node n with children, `<eot>` scored against the uniform
    /// distribution over n's children. It is the one-hop lookup that every thought of a
    /// breadth-first search (and every CoT step) is made of, asked where a thought would
    /// sit, many times per prompt pass (each drill costs two positions, the prompt ~110).
    #[serde(default)]
    pub lookup_drills: usize,
    /// Start the three positions of every edge slot (`A B |`) with one shared position
    /// embedding (still learned). "Attend to the key at my own position" is then a head a
    /// random init is already close to (W_QK near the identity on positions), whereas
    /// "attend to the position before mine" must be learned for every position: it is the
    /// head that tells each `B` its `A`, and without it the lookup never forms.
    #[serde(default)]
    pub shared_edge_positions: bool,
    /// Also train every prompt position to name the token before it (at an edge's `B`, its
    /// source `A`). The lookup needs a head that moves each `A` into its `B`, and `<eot>`
    /// one that brings it the thought before it; without a reason of its own to form, that
    /// previous-token head never did (layer-0 attention from `B` to `A` stayed at chance
    /// through 8 epochs), and the lookup stayed a guess from token statistics.
    #[serde(default)]
    pub previous_token_recall: bool,
    /// Under frontier supervision, also score the root's own position (the last of the
    /// prompt, whose hidden state becomes the first thought) against F_1. Its query is its
    /// own token, so the lookup needs no previous-token hop there.
    #[serde(default)]
    pub root_read: bool,
    /// Under frontier supervision, also score each thought's own pass against the next
    /// frontier: the pass of thought k (whose hidden state becomes thought k + 1) against
    /// F_{k+1}. It is the root read carried along the chain: each hop's query is the
    /// thought at its own position. It makes the thoughts' content a training target, so
    /// a BFS analysis of such a model measures what was asked of it, not what emerged.
    #[serde(default)]
    pub thought_reads: bool,
    /// Start this layer's attention with W_K = W_Q (4x the usual scale): every head then
    /// begins by attending to keys that resemble its query (Trockman & Kolter 2023,
    /// "mimetic initialisation"). In layer 1 that is the lookup's match: a node against
    /// the sources that the previous-token head wrote into each `B`.
    #[serde(default)]
    pub mimetic_layer: Option<usize>,
    /// A model folder (config.json + model.safetensors) to start from instead of random
    /// weights, as the reference code's `load_model_path` starts Coconut from its stage-0
    /// checkpoint. Its config must equal `model`; the init options above are then unused.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Curriculum epochs the `init_from` model has already done (the reference code's
    /// `resume`): training starts at this epoch, so its stage is `stage_of_epoch(skip)`.
    #[serde(default)]
    pub skip_epochs: usize,
}

impl TrainConfig {
    pub fn new(method: Method, vocab_size: usize) -> Self {
        Self {
            method,
            model: Gpt2Config::tiny(vocab_size),
            max_stage: 6,
            epochs_per_stage: 5,
            thoughts_per_step: 1,
            extra_epochs: 0,
            mix_prob: 0.0,
            pad_thoughts: true,
            learning_rate: 1e-3,
            weight_decay: 0.01,
            batch_size: 32,
            seed: 0,
            data: TrainData::Given,
            supervision: Supervision::Path,
            lookup_drills: 0,
            shared_edge_positions: false,
            previous_token_recall: false,
            root_read: false,
            thought_reads: false,
            mimetic_layer: None,
            init_from: None,
            skip_epochs: 0,
        }
    }

    /// Whether Coconut's stages are read against the BFS frontiers (`Supervision::Frontier`;
    /// the baselines never are).
    fn reads_frontiers(&self) -> bool {
        self.method == Method::Coconut && self.supervision == Supervision::Frontier
    }

    fn aux(&self) -> Aux {
        Aux {
            previous_token_recall: self.previous_token_recall,
            root_read: self.reads_frontiers() && self.root_read,
            thought_reads: self.reads_frontiers() && self.thought_reads,
        }
    }

    pub fn total_epochs(&self) -> usize {
        self.epochs_per_stage * (self.max_stage + 1) + self.extra_epochs
    }

    /// Whether a run trained with `other` can go on under `self`: the same in everything but
    /// a number of extra epochs at least as large.
    fn continues(&self, other: &TrainConfig) -> bool {
        let mut same = other.clone();
        same.extra_epochs = self.extra_epochs;
        &same == self && self.extra_epochs >= other.extra_epochs
    }

    /// The curriculum stage of an epoch (0-based).
    pub fn stage_of_epoch(&self, epoch: usize) -> usize {
        match self.method {
            Method::Coconut => (epoch / self.epochs_per_stage.max(1)).min(self.max_stage),
            Method::Cot | Method::NoCot => 0,
        }
    }
}

/// Where training stands; written beside each checkpoint so a run can resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub config: TrainConfig,
    /// Epochs finished.
    pub epochs_done: usize,
    /// Mean loss of each epoch this run trained (epochs skipped after `init_from` have
    /// none, so this may be shorter than `epochs_done`).
    pub epoch_losses: Vec<f32>,
}

/// A training sequence split around its thoughts: `prefix` ends with `<bot>`, `suffix`
/// starts with `<eot>`; the suffix after `<eot>` is what is trained on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Example {
    prefix: Vec<u32>,
    n_thoughts: usize,
    suffix: Vec<u32>,
    /// Under `Supervision::Frontier`, `frontiers[k]` is F_{k+1}, read after k thoughts for
    /// every k below the question's hops (empty otherwise).
    frontiers: Vec<Vec<u32>>,
    /// Lookup drills: a node and its children, as tokens.
    drills: Vec<(u32, Vec<u32>)>,
}

/// The auxiliary objectives on the prompt pass that a config turns on.
#[derive(Debug, Clone, Copy, Default)]
struct Aux {
    /// Every prompt position also names the token before it.
    previous_token_recall: bool,
    /// The prompt's last position (the root) is also read against F_1.
    root_read: bool,
    /// The pass of thought k is also read against F_{k+1}.
    thought_reads: bool,
}

/// A training question: its encoding and, by depth, the tokens of the frontier nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Question {
    enc: Encoded,
    /// `frontiers[k]`: the nodes exactly k hops from the root (shortest), as tokens.
    frontiers: Vec<Vec<u32>>,
    /// Every node with children, and its children, as tokens.
    parents: Vec<(u32, Vec<u32>)>,
}

impl Question {
    fn new(record: &Record, vocab: &Vocab) -> Result<Self> {
        let enc = encode(record, vocab)?;
        let depth = record.graph().distances_from(record.root);
        let mut frontiers: Vec<Vec<u32>> = Vec::new();
        for (v, d) in depth.iter().enumerate() {
            let Some(d) = *d else { continue };
            if frontiers.len() <= d {
                frontiers.resize(d + 1, Vec::new());
            }
            frontiers[d].push(vocab.id(&record.idx_to_symbol[v])?);
        }
        let mut children: Vec<Vec<u32>> = vec![Vec::new(); record.idx_to_symbol.len()];
        for &[a, b] in &record.edges {
            children[a].push(vocab.id(&record.idx_to_symbol[b])?);
        }
        let mut parents = Vec::new();
        for (v, kids) in children.into_iter().enumerate() {
            if !kids.is_empty() {
                parents.push((vocab.id(&record.idx_to_symbol[v])?, kids));
            }
        }
        Ok(Self {
            enc,
            frontiers,
            parents,
        })
    }

    /// `n` lookup drills: distinct nodes with children while they last, then again.
    fn drills(&self, n: usize, rng: &mut impl Rng) -> Vec<(u32, Vec<u32>)> {
        let mut order: Vec<usize> = (0..self.parents.len()).collect();
        order.shuffle(rng);
        order
            .iter()
            .cycle()
            .take(if order.is_empty() { 0 } else { n })
            .map(|&i| self.parents[i].clone())
            .collect()
    }
}

/// The example of `question` at curriculum stage `stage`.
fn example(question: &Question, config: &TrainConfig, stage: usize) -> Example {
    let enc = &question.enc;
    let (stage, n_thoughts) = match config.method {
        Method::NoCot => (usize::MAX, 0),
        Method::Cot => (0, 0),
        Method::Coconut => {
            let steps = if config.pad_thoughts {
                stage
            } else {
                stage.min(enc.steps.len())
            };
            (stage, steps * config.thoughts_per_step)
        }
    };
    let ids = enc.with_thoughts(stage, 0);
    let eot = ids.iter().position(|&t| t == EOT).unwrap_or(ids.len() - 1);
    let mut suffix = ids[eot..].to_vec();
    let mut frontiers = Vec::new();
    if config.reads_frontiers() {
        let hops = enc.steps.len();
        // F_{k+1} for k < hops is never empty: the shortest path to the target crosses it.
        frontiers = question.frontiers[1..=hops.min(n_thoughts + 1)].to_vec();
        if stage < hops {
            // The search has not reached the target yet: no answer, only the frontier.
            suffix.truncate(1);
        }
    }
    Example {
        prefix: ids[..eot].to_vec(),
        n_thoughts,
        suffix,
        frontiers,
        drills: Vec::new(),
    }
}

/// Summed cross-entropy of the suffix tokens after `<eot>` over a batch of examples with
/// the same number of thoughts (plus their lookup drills), and the number of tokens summed.
fn batch_loss(model: &Gpt2, batch: &[&Example], aux: Aux) -> candle_core::Result<(Tensor, usize)> {
    let n_thoughts = batch.first().map(|e| e.n_thoughts).unwrap_or(0);
    let suffixes = Read {
        after: n_thoughts,
        rows: batch.iter().map(|e| e.suffix.as_slice()).collect(),
    };
    let (out, extra) = run_reads(model, batch, aux, vec![suffixes])?;
    let (b, lc, v) = out[0].logits.dims3()?;
    let mut target = vec![0f32; b * lc * v];
    let mut count = 0;
    for (r, e) in batch.iter().enumerate() {
        // Slot i predicts suffix token i + 1.
        for i in 0..e.suffix.len() - 1 {
            target[(r * lc + i) * v + e.suffix[i + 1] as usize] = 1.0;
            count += 1;
        }
    }
    let sum = soft_nll(&out[0], target)?;
    Ok(((sum + extra.0)?, count + extra.1))
}

/// `batch_loss` under `Supervision::Frontier`: the batch reads `<eot>` after every number
/// of thoughts k, and row r's `<eot>` slot is scored against the uniform distribution over
/// F_{k+1} (the expected loss of one uniformly drawn frontier node, without the draw's
/// noise) while k is below its hops; after the last thought, the row's own suffix.
fn frontier_batch_loss(
    model: &Gpt2,
    batch: &[&Example],
    aux: Aux,
) -> candle_core::Result<(Tensor, usize)> {
    let n_thoughts = batch.first().map(|e| e.n_thoughts).unwrap_or(0);
    let eot = [EOT];
    let reads = (0..=n_thoughts)
        .map(|k| Read {
            after: k,
            rows: batch
                .iter()
                .map(|e| {
                    if k == n_thoughts {
                        e.suffix.as_slice()
                    } else {
                        &eot[..]
                    }
                })
                .collect(),
        })
        .collect();
    let (outs, (extra_sum, mut count)) = run_reads(model, batch, aux, reads)?;
    let mut sums = vec![extra_sum];
    for (k, out) in outs.iter().enumerate() {
        let (b, lc, v) = out.logits.dims3()?;
        let mut target = vec![0f32; b * lc * v];
        for (r, e) in batch.iter().enumerate() {
            let row = &mut target[r * lc * v..(r + 1) * lc * v];
            if let Some(frontier) = e.frontiers.get(k) {
                uniform_over(frontier, row);
                count += 1;
            }
            if k == n_thoughts {
                for i in 0..e.suffix.len() - 1 {
                    row[i * v + e.suffix[i + 1] as usize] = 1.0;
                    count += 1;
                }
            }
        }
        sums.push(soft_nll(out, target)?);
    }
    Ok((Tensor::stack(&sums, 0)?.sum_all()?, count))
}

/// Runs the batch's prompts once, its lookup drills right after them and then `reads`
/// (in order of thoughts). Returns the outputs of `reads`, and the summed loss and count
/// of the drills and of the `aux` objectives.
fn run_reads(
    model: &Gpt2,
    batch: &[&Example],
    aux: Aux,
    reads: Vec<Read>,
) -> candle_core::Result<(Vec<Gpt2Output>, (Tensor, usize))> {
    let prefixes: Vec<&[u32]> = batch.iter().map(|e| e.prefix.as_slice()).collect();
    let m = batch.first().map(|e| e.drills.len()).unwrap_or(0);
    if batch.iter().any(|e| e.drills.len() != m) {
        candle_core::bail!("every example of a batch needs the same number of drills");
    }
    let queries: Vec<[u32; 2]> = batch
        .iter()
        .flat_map(|e| e.drills.iter().map(|(node, _)| [*node, EOT]))
        .collect();
    let mut all = Vec::with_capacity(reads.len() + 1);
    if m > 0 {
        all.push(Read {
            after: 0,
            rows: queries.iter().map(|q| q.as_slice()).collect(),
        });
    }
    all.extend(reads);
    let passes = forward_batch_reads(model, &prefixes, &all, &mut Hooks::none())?;
    let (prompt, mut outs) = (passes.prompt, passes.reads);
    let mut extra = (Tensor::zeros((), DType::F32, model.device())?, 0);
    if aux.previous_token_recall {
        let (sum, n) = previous_token_loss(&prompt, &prefixes)?;
        extra = ((extra.0 + sum)?, n);
    }
    if aux.root_read {
        let (sum, n) = root_read_loss(&prompt, batch)?;
        extra = ((extra.0 + sum)?, extra.1 + n);
    }
    if aux.thought_reads && !passes.thoughts.is_empty() {
        let (sum, n) = thought_read_loss(&passes.thoughts, batch)?;
        extra = ((extra.0 + sum)?, extra.1 + n);
    }
    if m == 0 {
        return Ok((outs, extra));
    }
    let drill = outs.remove(0);
    let (rows, lc, v) = drill.logits.dims3()?;
    let mut target = vec![0f32; rows * lc * v];
    for (i, (_, children)) in batch.iter().flat_map(|e| &e.drills).enumerate() {
        // Slot 1 is `<eot>`, right after the queried node.
        uniform_over(children, &mut target[(i * lc + 1) * v..(i * lc + 2) * v]);
    }
    Ok((
        outs,
        ((extra.0 + soft_nll(&drill, target)?)?, extra.1 + rows),
    ))
}

/// Cross-entropy of naming the token before each prompt position (from the second on),
/// over the (left-padded) prompt pass: each row's mean, summed over rows, and the number
/// of rows. (A mean per row, so that ~110 positions do not outweigh the read they serve.)
fn previous_token_loss(
    prompt: &Gpt2Output,
    prefixes: &[&[u32]],
) -> candle_core::Result<(Tensor, usize)> {
    let (b, la, v) = prompt.logits.dims3()?;
    let mut target = vec![0f32; b * la * v];
    for (r, prefix) in prefixes.iter().enumerate() {
        let pad = la - prefix.len();
        let w = 1.0 / (prefix.len().max(2) - 1) as f32;
        for (i, pair) in prefix.windows(2).enumerate() {
            let slot = r * la + pad + i + 1;
            target[slot * v + pair[0] as usize] = w;
        }
    }
    Ok((soft_nll(prompt, target)?, b))
}

/// The root position (last of each left-padded prompt) scored against F_1: summed
/// cross-entropy and the number of rows read.
fn root_read_loss(prompt: &Gpt2Output, batch: &[&Example]) -> candle_core::Result<(Tensor, usize)> {
    let (b, la, v) = prompt.logits.dims3()?;
    let mut target = vec![0f32; b * la * v];
    let mut count = 0;
    for (r, e) in batch.iter().enumerate() {
        if let Some(f1) = e.frontiers.first() {
            let slot = r * la + la - 1;
            uniform_over(f1, &mut target[slot * v..(slot + 1) * v]);
            count += 1;
        }
    }
    Ok((soft_nll(prompt, target)?, count))
}

/// Each thought's pass (`thoughts[k - 1]`, one position; at least one) scored against
/// F_{k+1} while the question has that frontier: summed cross-entropy and the number of
/// passes read.
fn thought_read_loss(
    thoughts: &[Gpt2Output],
    batch: &[&Example],
) -> candle_core::Result<(Tensor, usize)> {
    let mut sums = Vec::with_capacity(thoughts.len());
    let mut count = 0;
    for (i, pass) in thoughts.iter().enumerate() {
        let (b, _, v) = pass.logits.dims3()?;
        let mut target = vec![0f32; b * v];
        for (r, e) in batch.iter().enumerate() {
            if let Some(frontier) = e.frontiers.get(i + 1) {
                uniform_over(frontier, &mut target[r * v..(r + 1) * v]);
                count += 1;
            }
        }
        sums.push(soft_nll(pass, target)?);
    }
    Ok((Tensor::stack(&sums, 0)?.sum_all()?, count))
}

/// Adds the uniform distribution over `tokens` to one slot's target.
fn uniform_over(tokens: &[u32], slot: &mut [f32]) {
    let w = 1.0 / tokens.len() as f32;
    tokens.iter().for_each(|&t| slot[t as usize] += w);
}

/// Summed cross-entropy of a read's logits `[rows, slots, vocab]` against a target of the
/// same shape (all-zero slots are not scored).
fn soft_nll(out: &Gpt2Output, target: Vec<f32>) -> candle_core::Result<Tensor> {
    let target = Tensor::from_vec(target, out.logits.dims(), out.logits.device())?;
    let logp = candle_nn::ops::log_softmax(&out.logits, 2)?;
    (target * logp)?.sum_all()?.neg()
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("train_state.json")
}

fn model_dir(dir: &Path) -> PathBuf {
    dir.join("model")
}

/// Trains on `records` (generated data only; ignored with `TrainData::Fresh`), saving `out_dir/model/` (config.json +
/// model.safetensors) and `out_dir/train_state.json` after every epoch. If `out_dir` already
/// holds a state with the same config, training resumes after its last finished epoch (the
/// optimizer moments restart, as they do at every stage switch). When `stop` turns true the
/// epoch in progress is dropped and `Error::Interrupted` returned; the last finished epoch
/// stays saved.
pub fn train(
    config: &TrainConfig,
    records: &[Record],
    out_dir: &Path,
    progress: &dyn Progress,
    stop: &AtomicBool,
) -> Result<TrainState> {
    if config.data == TrainData::Given && records.is_empty() {
        return Err(Error::Invalid("no training records".into()));
    }
    if config.reads_frontiers() && config.thoughts_per_step != 1 {
        return Err(Error::Invalid(format!(
            "frontier supervision reads one BFS frontier per thought, so it needs \
             --thoughts-per-step 1 (got {})",
            config.thoughts_per_step
        )));
    }
    if config.skip_epochs > 0 && config.init_from.is_none() {
        return Err(Error::Invalid(
            "--skip-epochs skips epochs that an --init-from model has done; give the model".into(),
        ));
    }
    if config.skip_epochs >= config.total_epochs().max(1) {
        return Err(Error::Invalid(format!(
            "--skip-epochs {} leaves none of the {} epochs to train",
            config.skip_epochs,
            config.total_epochs()
        )));
    }
    let vocab = Vocab::prosqa();
    if config.model.vocab_size != vocab.len() {
        return Err(Error::Invalid(format!(
            "model vocab_size {} differs from the reasoner vocabulary ({})",
            config.model.vocab_size,
            vocab.len()
        )));
    }
    let epoch_data = |epoch: usize| -> Result<Vec<Question>> {
        let fresh;
        let records = match config.data {
            TrainData::Given => records,
            TrainData::Fresh { per_epoch, seed } => {
                fresh = crate::data::prosqa::generate(
                    per_epoch,
                    crate::rng::mix(&[seed, epoch as u64]),
                );
                &fresh[..]
            }
        };
        records.iter().map(|r| Question::new(r, &vocab)).collect()
    };
    let per_epoch = match config.data {
        TrainData::Given => records.len(),
        TrainData::Fresh { per_epoch, .. } => per_epoch,
    };
    let device = Device::Cpu;
    let (varmap, mut state) = start_or_resume(config, out_dir, &device)?;
    let model = Gpt2::new(
        &config.model,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    let batches_per_epoch = per_epoch.div_ceil(config.batch_size.max(1));
    progress.set_length((config.total_epochs() * batches_per_epoch) as u64);
    progress.set_position((state.epochs_done * batches_per_epoch) as u64);
    let mut optimizer = new_optimizer(config, &varmap)?;
    let mut last_stage = config.stage_of_epoch(state.epochs_done);
    for epoch in state.epochs_done..config.total_epochs() {
        let stage = config.stage_of_epoch(epoch);
        if stage != last_stage {
            optimizer = new_optimizer(config, &varmap)?;
            last_stage = stage;
        }
        let questions = epoch_data(epoch)?;
        let ctx = EpochContext {
            config,
            model: &model,
            questions: &questions,
            progress,
            stop,
        };
        let loss = run_epoch(&ctx, epoch, stage, &mut optimizer)?;
        state.epochs_done = epoch + 1;
        state.epoch_losses.push(loss);
        save_hf_gpt2(model_dir(out_dir), &config.model, &varmap)?;
        let path = state_path(out_dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&state)?).at(&tmp)?;
        std::fs::rename(&tmp, &path).at(&path)?;
        progress.set_message(&format!("stage {stage} loss {loss:.4}"));
    }
    Ok(state)
}

fn new_optimizer(config: &TrainConfig, varmap: &VarMap) -> Result<AdamW> {
    let params = ParamsAdamW {
        lr: config.learning_rate,
        weight_decay: config.weight_decay,
        ..Default::default()
    };
    Ok(AdamW::new(varmap.all_vars(), params)?)
}

fn start_or_resume(
    config: &TrainConfig,
    out_dir: &Path,
    device: &Device,
) -> Result<(VarMap, TrainState)> {
    std::fs::create_dir_all(out_dir).at(out_dir)?;
    let mut varmap = random_varmap(&config.model, config.seed, device)?;
    if config.shared_edge_positions {
        share_edge_slot_positions(&varmap)?;
    }
    if let Some(layer) = config.mimetic_layer {
        mimetic_attention(&varmap, layer)?;
    }
    let path = state_path(out_dir);
    if !path.exists() {
        if let Some(init) = &config.init_from {
            load_init(&mut varmap, init, &config.model)?;
        }
        let state = TrainState {
            config: config.clone(),
            epochs_done: config.skip_epochs,
            epoch_losses: Vec::new(),
        };
        return Ok((varmap, state));
    }
    let text = std::fs::read_to_string(&path).at(&path)?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| Error::BadFile {
        path: path.clone(),
        detail: format!("not a training state: {e}"),
    })?;
    if !config.continues(&state.config) {
        return Err(Error::RunExists {
            path: out_dir.to_path_buf(),
            detail: "it was trained with a different config (only --extra-epochs may grow)".into(),
        });
    }
    let mut state = state;
    state.config = config.clone();
    varmap.load(model_dir(out_dir).join("model.safetensors"))?;
    Ok((varmap, state))
}

/// Loads the starting weights of `TrainConfig::init_from` after checking that they are a
/// model of the configured shape.
fn load_init(varmap: &mut VarMap, dir: &Path, expected: &Gpt2Config) -> Result<()> {
    let found = read_config(dir)?;
    if &found != expected {
        return Err(Error::BadFile {
            path: dir.join("config.json"),
            detail: format!(
                "--init-from needs a model of the shape being trained: found {found:?}, \
                 expected {expected:?} (match --d-model, --layers and --heads)"
            ),
        });
    }
    let weights = dir.join("model.safetensors");
    varmap.load(&weights).map_err(|e| Error::Weights {
        path: weights.clone(),
        detail: format!("cannot start training from it: {e}"),
    })
}

/// Copies the position embedding of the first position of each edge slot onto the slot's
/// other two (see `TrainConfig::shared_edge_positions`).
fn share_edge_slot_positions(varmap: &VarMap) -> Result<()> {
    let var = weight(varmap, "transformer.wpe.weight", "position embeddings")?;
    let n = var.dim(0)?;
    let index: Vec<u32> = (0..n)
        .map(|p| {
            let p = if p < EDGES_START {
                p
            } else {
                EDGES_START + (p - EDGES_START) / EDGE_LEN * EDGE_LEN
            };
            p as u32
        })
        .collect();
    let index = Tensor::new(index, var.device())?;
    var.set(&var.as_tensor().index_select(&index, 0)?)?;
    Ok(())
}

/// Sets layer `layer`'s key projection to its query projection, both 4x (see
/// `TrainConfig::mimetic_layer`).
fn mimetic_attention(varmap: &VarMap, layer: usize) -> Result<()> {
    let name = format!("transformer.h.{layer}.attn.c_attn.weight");
    let what = format!("--mimetic-layer {layer}: attention weights (layers count from 0)");
    let var = weight(varmap, &name, &what)?;
    let d = var.dim(0)?;
    let w = var.as_tensor();
    let q = (w.narrow(1, 0, d)? * 4.0)?;
    var.set(&Tensor::cat(&[&q, &q, &w.narrow(1, 2 * d, d)?], 1)?)?;
    Ok(())
}

/// The trainable weight `name` of a fresh model (`what` it is, for the error).
fn weight(varmap: &VarMap, name: &str, what: &str) -> Result<candle_core::Var> {
    let data = varmap.data().lock().map_err(|_| {
        Error::Invalid("the model's weights are locked by a panicked thread".into())
    })?;
    data.get(name)
        .cloned()
        .ok_or_else(|| Error::Invalid(format!("{what}: the model has no `{name}`")))
}

/// What every batch of an epoch needs besides its stage.
struct EpochContext<'a> {
    config: &'a TrainConfig,
    model: &'a Gpt2,
    questions: &'a [Question],
    progress: &'a dyn Progress,
    stop: &'a AtomicBool,
}

fn run_epoch(ctx: &EpochContext, epoch: usize, stage: usize, optimizer: &mut AdamW) -> Result<f32> {
    let EpochContext {
        config,
        model,
        questions,
        progress,
        stop,
    } = *ctx;
    let mut rng = crate::rng::stream(config.seed, crate::rng::mix(&[0x7261_696e, epoch as u64]));
    let mut order: Vec<usize> = (0..questions.len()).collect();
    order.shuffle(&mut rng);
    let (mut total, mut tokens) = (0.0f64, 0usize);
    for batch in order.chunks(config.batch_size.max(1)) {
        if stop.load(Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
        let examples: Vec<Example> = batch
            .iter()
            .map(|&i| {
                let s = if stage > 0 && rng.gen::<f64>() < config.mix_prob {
                    rng.gen_range(0..stage)
                } else {
                    stage
                };
                let mut e = example(&questions[i], config, s);
                e.drills = questions[i].drills(config.lookup_drills, &mut rng);
                e
            })
            .collect();
        // Rows that share a number of thoughts run as one padded batch.
        let mut groups: std::collections::BTreeMap<usize, Vec<&Example>> = Default::default();
        for e in &examples {
            groups.entry(e.n_thoughts).or_default().push(e);
        }
        let mut sums = Vec::with_capacity(groups.len());
        let mut count = 0;
        for group in groups.values() {
            let (sum, n) = if config.reads_frontiers() {
                frontier_batch_loss(model, group, config.aux())?
            } else {
                batch_loss(model, group, config.aux())?
            };
            sums.push(sum);
            count += n;
        }
        let loss = (Tensor::stack(&sums, 0)?.sum_all()? / count.max(1) as f64)?;
        optimizer.backward_step(&loss)?;
        total += loss.to_scalar::<f32>()? as f64 * count as f64;
        tokens += count;
        progress.inc(1);
    }
    Ok((total / tokens.max(1) as f64) as f32)
}

/// Accuracy of greedy answers, overall and by the question's hop count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub total: usize,
    pub correct: usize,
    /// hops -> (questions, correct).
    pub by_hops: std::collections::BTreeMap<usize, (usize, usize)>,
    /// Tokens generated after the prompt over all questions, continuous thoughts included
    /// (the paper's "# tokens": `<eot>` and the stop token are not counted).
    pub generated: usize,
}

impl Accuracy {
    pub fn rate(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }

    /// Mean tokens generated per question.
    pub fn mean_generated(&self) -> f64 {
        self.generated as f64 / self.total.max(1) as f64
    }
}

/// Greedy evaluation: each record's prompt, `n_thoughts` continuous thoughts (0 for the CoT
/// and no-CoT baselines), `<eot>`, then decoding; correct when the answer read back by
/// `format` is the target. Works on the real ProsQA file (evaluation only).
pub fn evaluate(
    model: &Gpt2,
    format: &dyn QuestionFormat,
    records: &[Record],
    n_thoughts: usize,
    progress: &dyn Progress,
) -> Result<Accuracy> {
    let mut acc = Accuracy::default();
    let tokens = format.latent_tokens();
    progress.set_length(records.len() as u64);
    for record in records {
        let gen = super::coconut::generate_latent(
            model,
            &format.prompt(record)?,
            n_thoughts,
            tokens,
            format.max_answer_tokens(record),
            &mut Hooks::none(),
        )?;
        let ok = format.read_chain(record, &gen.answer).answer == Some(record.target);
        let spoken = gen.answer.iter().take_while(|&&t| t != tokens.eos).count();
        let entry = acc.by_hops.entry(record.hops()).or_default();
        entry.0 += 1;
        entry.1 += ok as usize;
        acc.total += 1;
        acc.correct += ok as usize;
        acc.generated += n_thoughts + spoken;
        progress.inc(1);
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::prosqa::generate;

    fn train_quietly(config: &TrainConfig, records: &[Record], dir: &Path) -> Result<TrainState> {
        train(
            config,
            records,
            dir,
            &crate::progress::Hidden,
            &AtomicBool::new(false),
        )
    }

    fn model_of(config: &TrainConfig, varmap: &VarMap) -> Gpt2 {
        Gpt2::new(
            &config.model,
            VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu),
        )
        .unwrap()
    }

    fn small(method: Method) -> TrainConfig {
        let mut c = TrainConfig::new(method, Vocab::prosqa().len());
        c.model.n_embd = 32;
        c.model.n_head = 2;
        c.model.n_layer = 1;
        c.model.n_positions = 256;
        c.max_stage = 1;
        c.epochs_per_stage = 5;
        c.batch_size = 4;
        c.learning_rate = 1e-2;
        c
    }

    #[test]
    fn loss_decreases_and_training_resumes() {
        let records = generate(24, 21);
        let dir = tempfile::tempdir().unwrap();
        let config = small(Method::Coconut);
        let state = train_quietly(&config, &records, dir.path()).unwrap();
        assert_eq!(state.epochs_done, 10);
        let l = &state.epoch_losses;
        assert!(
            l[..5].windows(2).all(|w| w[1] < w[0]),
            "stage 0 losses {l:?}"
        );
        assert!(l[4] < 0.85 * l[0], "stage 0 losses {l:?}");
        assert!(l[9] < l[0], "losses {l:?}");
        // Everything is saved: rerunning finds nothing left to do and changes nothing.
        let again = train_quietly(&config, &records, dir.path()).unwrap();
        assert_eq!(again, state);
        let loaded =
            super::super::checkpoint::load_hf_gpt2(dir.path().join("model"), &Device::Cpu).unwrap();
        assert_eq!(loaded.config, config.model);
    }

    #[test]
    fn init_from_starts_at_the_given_weights_and_skips_their_epochs() {
        let records = generate(24, 21);
        let stage0 = tempfile::tempdir().unwrap();
        let mut first = small(Method::Coconut);
        first.max_stage = 0;
        train_quietly(&first, &records, stage0.path()).unwrap();
        let init = stage0.path().join("model");

        let mut config = small(Method::Coconut);
        config.init_from = Some(init.clone());
        config.skip_epochs = config.epochs_per_stage;
        let dir = tempfile::tempdir().unwrap();
        let (varmap, state) = start_or_resume(&config, dir.path(), &Device::Cpu).unwrap();
        assert_eq!(state.epochs_done, 5);
        let saved =
            candle_core::safetensors::load(init.join("model.safetensors"), &Device::Cpu).unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let diff = (var.as_tensor() - &saved[name]).unwrap().abs().unwrap();
            let max: f32 = diff.max_all().unwrap().to_scalar().unwrap();
            assert_eq!(max, 0.0, "{name} differs from the init model");
        }

        // Only stage 1 is trained, and it starts far below a random model's stage-1 loss.
        let warm = train_quietly(&config, &records, dir.path()).unwrap();
        assert_eq!(warm.epochs_done, 10);
        assert_eq!(warm.epoch_losses.len(), 5);
        let cold_dir = tempfile::tempdir().unwrap();
        let cold = train_quietly(&small(Method::Coconut), &records, cold_dir.path()).unwrap();
        assert!(
            warm.epoch_losses[0] < cold.epoch_losses[0],
            "warm {:?} cold {:?}",
            warm.epoch_losses,
            cold.epoch_losses
        );
    }

    #[test]
    fn init_from_refuses_a_model_of_another_shape_and_skipping_without_it() {
        let records = generate(8, 21);
        let stage0 = tempfile::tempdir().unwrap();
        let mut first = small(Method::Coconut);
        first.max_stage = 0;
        first.epochs_per_stage = 1;
        train_quietly(&first, &records, stage0.path()).unwrap();

        let mut wider = small(Method::Coconut);
        wider.model.n_embd = 64;
        wider.init_from = Some(stage0.path().join("model"));
        let dir = tempfile::tempdir().unwrap();
        let msg = train_quietly(&wider, &records, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("config.json") && msg.contains("--d-model"),
            "{msg}"
        );

        let mut skipping = small(Method::Coconut);
        skipping.skip_epochs = 2;
        let msg = train_quietly(&skipping, &records, dir.path())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("--init-from"), "{msg}");
    }

    #[test]
    fn stage_examples_train_on_the_language_after_eot() {
        use super::super::tokens::{BOT, EOT};
        let vocab = Vocab::prosqa();
        let question = Question::new(&generate(1, 4)[0], &vocab).unwrap();
        let enc = &question.enc;
        let n = enc.steps.len();
        let ex = example(&question, &small(Method::Coconut), 1);
        assert_eq!(ex.prefix, enc.prompt);
        assert_eq!(ex.prefix[ex.prefix.len() - 2], BOT);
        assert_eq!(ex.n_thoughts, 1);
        assert_eq!(
            ex.suffix,
            [&[EOT], &enc.steps[1..], &enc.answer[..]].concat()
        );
        let mut padded = small(Method::Coconut);
        padded.max_stage = 6;
        assert_eq!(example(&question, &padded, n + 1).n_thoughts, n + 1);
        padded.pad_thoughts = false;
        padded.thoughts_per_step = 2;
        let ex = example(&question, &padded, n + 1);
        assert_eq!(ex.n_thoughts, 2 * n);
        assert_eq!(ex.suffix, [&[EOT], &enc.answer[..]].concat());
        let ex = example(&question, &small(Method::NoCot), 0);
        assert_eq!(
            (ex.n_thoughts, ex.suffix),
            (0, [&[EOT], &enc.answer[..]].concat())
        );
        let ex = example(&question, &small(Method::Cot), 3);
        assert_eq!(ex.n_thoughts, 0);
        assert_eq!(
            ex.suffix,
            [&[EOT], &enc.steps[..], &enc.answer[..]].concat()
        );
    }

    /// One full teacher-forced sequence through `forward_with_thoughts` (no batching, no
    /// cache branching): the sequence and its logits `[len, vocab]`.
    fn unbatched_logits(
        model: &Gpt2,
        prefix: &[u32],
        n_thoughts: usize,
        suffix: &[u32],
    ) -> (Vec<u32>, Tensor) {
        let seq = [
            prefix,
            &vec![super::super::tokens::THOUGHT; n_thoughts][..],
            suffix,
        ]
        .concat();
        let out = super::super::coconut::forward_with_thoughts(
            model,
            &seq,
            super::super::coconut::LatentTokens::builtin(),
            &mut Hooks::none(),
        )
        .unwrap();
        (seq, out.logits.squeeze(0).unwrap())
    }

    /// Shortest distance from the root to every node (`usize::MAX` if unreachable), by
    /// relaxing the edge list until nothing changes: a reference independent of
    /// `Question::new`'s search.
    fn reference_depths(r: &Record) -> Vec<usize> {
        let mut depth = vec![usize::MAX; r.idx_to_symbol.len()];
        depth[r.root] = 0;
        for _ in 0..depth.len() {
            for &[a, b] in &r.edges {
                if depth[a] != usize::MAX {
                    depth[b] = depth[b].min(depth[a] + 1);
                }
            }
        }
        depth
    }

    /// The tokens of the nodes exactly `d` hops from the root.
    fn reference_frontier(r: &Record, depth: &[usize], d: usize) -> Vec<usize> {
        let vocab = Vocab::prosqa();
        (0..depth.len())
            .filter(|&v| depth[v] == d)
            .map(|v| vocab.id(&r.idx_to_symbol[v]).unwrap() as usize)
            .collect()
    }

    #[test]
    fn frontier_supervision_reads_the_next_frontier_after_every_thought_then_the_answer() {
        let vocab = Vocab::prosqa();
        let records = generate(3, 11);
        let mut config = small(Method::Coconut);
        config.max_stage = 6;
        config.supervision = Supervision::Frontier;
        let varmap = random_varmap(&config.model, 1, &Device::Cpu).unwrap();
        let model = model_of(&config, &varmap);
        let questions: Vec<Question> = records
            .iter()
            .map(|r| Question::new(r, &vocab).unwrap())
            .collect();
        let stage = 4;
        let examples: Vec<Example> = questions
            .iter()
            .map(|q| example(q, &config, stage))
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let (sum, count) = frontier_batch_loss(&model, &refs, Aux::default()).unwrap();

        // Reference, one question and one full sequence at a time: after k thoughts the
        // mean of -log p(f | ..., <eot>) over the nodes f exactly k + 1 hops from the root
        // (found here by relaxation over the edge list, not BFS), while k < hops; after
        // `stage` thoughts the answer and <eos> once hops <= stage.
        let logp_after = |q: &Question, k: usize, tail: &[u32]| -> Vec<Vec<f32>> {
            let suffix = [&[EOT], tail].concat();
            let (seq, logits) = unbatched_logits(&model, &q.enc.prompt, k, &suffix);
            let logp = candle_nn::ops::log_softmax(&logits, 1).unwrap();
            let eot_at = q.enc.prompt.len() + k;
            (eot_at..seq.len())
                .map(|i| logp.get(i).unwrap().to_vec1::<f32>().unwrap())
                .collect()
        };
        let (mut want, mut want_count) = (0.0f32, 0);
        for (r, q) in records.iter().zip(&questions) {
            let depth = reference_depths(r);
            let hops = depth[r.target];
            assert_eq!(hops, q.enc.steps.len());
            for k in 0..=stage.min(hops.saturating_sub(1)) {
                let frontier = reference_frontier(r, &depth, k + 1);
                assert!(!frontier.is_empty());
                let lp = &logp_after(q, k, &[])[0];
                let mean: f32 =
                    frontier.iter().map(|&f| lp[f]).sum::<f32>() / frontier.len() as f32;
                want -= mean;
                want_count += 1;
            }
            if hops <= stage {
                let lps = logp_after(q, stage, &q.enc.answer);
                want -= lps[0][q.enc.answer[0] as usize] + lps[1][q.enc.answer[1] as usize];
                want_count += 2;
            }
        }
        assert_eq!(count, want_count);
        let got: f32 = sum.to_scalar().unwrap();
        assert!((got - want).abs() < 1e-3 * want.abs(), "{got} vs {want}");
        // The generated questions span both cases: some still searching at this stage,
        // some answering.
        let hops: Vec<usize> = questions.iter().map(|q| q.enc.steps.len()).collect();
        assert!(
            hops.iter().any(|&h| h <= stage) && hops.iter().any(|&h| h > stage),
            "{hops:?}"
        );
        // The baselines are untouched by it.
        config.method = Method::Cot;
        let q = &questions[0];
        assert_eq!(
            example(q, &config, 0).suffix,
            [&[EOT], &q.enc.steps[..], &q.enc.answer[..]].concat()
        );
    }

    #[test]
    fn lookup_drills_score_each_queried_node_against_its_children() {
        let vocab = Vocab::prosqa();
        let records = generate(3, 5);
        let mut config = small(Method::Cot);
        config.lookup_drills = 4;
        let varmap = random_varmap(&config.model, 2, &Device::Cpu).unwrap();
        let model = model_of(&config, &varmap);
        let mut rng = crate::rng::stream(0, 0);
        let examples: Vec<Example> = records
            .iter()
            .map(|r| {
                let q = Question::new(r, &vocab).unwrap();
                let mut e = example(&q, &config, 0);
                e.drills = q.drills(config.lookup_drills, &mut rng);
                e
            })
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let (with, count_with) = batch_loss(&model, &refs, Aux::default()).unwrap();
        let plain: Vec<Example> = examples
            .iter()
            .map(|e| Example {
                drills: Vec::new(),
                ..e.clone()
            })
            .collect();
        let refs: Vec<&Example> = plain.iter().collect();
        let (without, count_without) = batch_loss(&model, &refs, Aux::default()).unwrap();

        // Reference: each drill as one whole sequence `prompt n <eot>`, its children read
        // from the record's edge list, -mean log p(child) at `<eot>`.
        let mut want = 0.0f32;
        for (r, e) in records.iter().zip(&examples) {
            let mut queried = Vec::new();
            for (node, _) in &e.drills {
                queried.push(*node);
                let v = r
                    .idx_to_symbol
                    .iter()
                    .position(|s| vocab.id(s).unwrap() == *node)
                    .unwrap();
                let children: Vec<u32> = r
                    .edges
                    .iter()
                    .filter(|&&[a, _]| a == v)
                    .map(|&[_, b]| vocab.id(&r.idx_to_symbol[b]).unwrap())
                    .collect();
                assert!(!children.is_empty());
                let (_, logits) = unbatched_logits(&model, &e.prefix, 0, &[*node, EOT]);
                let last = logits.dim(0).unwrap() - 1;
                let logp = candle_nn::ops::log_softmax(&logits.get(last).unwrap(), 0).unwrap();
                let logp = logp.to_vec1::<f32>().unwrap();
                want -=
                    children.iter().map(|&c| logp[c as usize]).sum::<f32>() / children.len() as f32;
            }
            // Distinct nodes while the graph has enough parents.
            queried.sort();
            queried.dedup();
            assert_eq!(queried.len(), config.lookup_drills);
        }
        assert_eq!(count_with, count_without + 3 * config.lookup_drills);
        let got = (with - without).unwrap().to_scalar::<f32>().unwrap();
        assert!((got - want).abs() < 1e-3 * want.abs(), "{got} vs {want}");
    }

    #[test]
    fn shared_edge_positions_start_each_edge_slot_with_one_position_embedding() {
        let config = small(Method::Coconut);
        let varmap = random_varmap(&config.model, 0, &Device::Cpu).unwrap();
        let before = model_of(&config, &varmap).position_embeddings().clone();
        share_edge_slot_positions(&varmap).unwrap();
        let after = model_of(&config, &varmap).position_embeddings().clone();
        let row = |t: &Tensor, p: usize| t.get(p).unwrap().to_vec1::<f32>().unwrap();
        // The question's positions keep their own embeddings.
        for p in 0..EDGES_START {
            assert_eq!(row(&after, p), row(&before, p));
        }
        // `A B |` of edge e all start from the embedding position 6 + 3e had.
        for e in 0..10 {
            let first = EDGES_START + e * EDGE_LEN;
            for p in first..first + EDGE_LEN {
                assert_eq!(row(&after, p), row(&before, first), "position {p}");
            }
        }
        assert_ne!(
            row(&after, EDGES_START),
            row(&after, EDGES_START + EDGE_LEN)
        );
    }

    /// A frontier-supervised config, a random model (from `seed`) and the questions of
    /// `records`: the setup of the auxiliary-objective tests.
    fn frontier_setup(records: &[Record], seed: u64) -> (TrainConfig, Gpt2, Vec<Question>) {
        let vocab = Vocab::prosqa();
        let mut config = small(Method::Coconut);
        config.supervision = Supervision::Frontier;
        let varmap = random_varmap(&config.model, seed, &Device::Cpu).unwrap();
        let model = model_of(&config, &varmap);
        let questions = records
            .iter()
            .map(|r| Question::new(r, &vocab).unwrap())
            .collect();
        (config, model, questions)
    }

    /// `frontier_batch_loss` of all `questions` at `stage` as one batch: (sum, count).
    fn frontier_loss(
        model: &Gpt2,
        questions: &[Question],
        config: &TrainConfig,
        stage: usize,
    ) -> (f32, usize) {
        let examples: Vec<Example> = questions
            .iter()
            .map(|q| example(q, config, stage))
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let (sum, count) = frontier_batch_loss(model, &refs, config.aux()).unwrap();
        (sum.to_scalar::<f32>().unwrap(), count)
    }

    #[test]
    fn previous_token_recall_scores_each_prompt_position_against_the_token_before_it() {
        let vocab = Vocab::prosqa();
        let records = generate(3, 9);
        let (mut config, model, questions) = frontier_setup(&records, 3);
        let (without, count_without) = frontier_loss(&model, &questions, &config, 1);
        config.previous_token_recall = true;
        let (with, count_with) = frontier_loss(&model, &questions, &config, 1);

        // Reference: each record's prompt alone, -mean over its positions i >= 1 of
        // log p(token i - 1) at position i.
        let mut want = 0.0f32;
        for r in &records {
            let enc = encode(r, &vocab).unwrap();
            let (_, logits) = unbatched_logits(&model, &enc.prompt, 0, &[EOT]);
            let logp = candle_nn::ops::log_softmax(&logits, 1).unwrap();
            let n = enc.prompt.len();
            let sum: f32 = (1..n)
                .map(|i| logp.get(i).unwrap().to_vec1::<f32>().unwrap()[enc.prompt[i - 1] as usize])
                .sum();
            want -= sum / (n - 1) as f32;
        }
        assert_eq!(count_with, count_without + records.len());
        let got = with - without;
        assert!((got - want).abs() < 1e-3 * want.abs(), "{got} vs {want}");
    }

    #[test]
    fn root_read_scores_the_root_position_against_the_first_frontier() {
        let vocab = Vocab::prosqa();
        let records = generate(3, 13);
        let (mut config, model, questions) = frontier_setup(&records, 4);
        let (without, count_without) = frontier_loss(&model, &questions, &config, 1);
        config.root_read = true;
        let (with, count_with) = frontier_loss(&model, &questions, &config, 1);

        // Reference: each prompt alone; at its last position (the root after `<bot>`),
        // -mean log p over the root's children, read from the edge list.
        let mut want = 0.0f32;
        for (r, q) in records.iter().zip(&questions) {
            let (_, logits) = unbatched_logits(&model, &q.enc.prompt, 0, &[EOT]);
            let root_at = q.enc.prompt.len() - 1;
            assert_eq!(
                q.enc.prompt[root_at],
                vocab.id(&r.idx_to_symbol[r.root]).unwrap()
            );
            let logp = candle_nn::ops::log_softmax(&logits.get(root_at).unwrap(), 0).unwrap();
            let logp = logp.to_vec1::<f32>().unwrap();
            let children: Vec<usize> = r
                .edges
                .iter()
                .filter(|&&[a, _]| a == r.root)
                .map(|&[_, b]| vocab.id(&r.idx_to_symbol[b]).unwrap() as usize)
                .collect();
            want -= children.iter().map(|&c| logp[c]).sum::<f32>() / children.len() as f32;
        }
        assert_eq!(count_with, count_without + records.len());
        let got = with - without;
        assert!((got - want).abs() < 1e-3 * want.abs(), "{got} vs {want}");
        // Only frontier supervision reads frontiers.
        config.supervision = Supervision::Path;
        assert!(!config.aux().root_read);
    }

    #[test]
    fn thought_reads_score_each_thought_pass_against_the_next_frontier() {
        let records = generate(3, 17);
        let (mut config, model, questions) = frontier_setup(&records, 5);
        let stage = 2;
        let (without, count_without) = frontier_loss(&model, &questions, &config, stage);
        config.thought_reads = true;
        let (with, count_with) = frontier_loss(&model, &questions, &config, stage);

        // Reference: each question alone with its thoughts; the pass of thought k sits at
        // position prompt_len - 1 + k. Frontiers from `reference_depths`.
        let mut want = 0.0f32;
        let mut reads = 0;
        for (r, q) in records.iter().zip(&questions) {
            let (_, logits) = unbatched_logits(&model, &q.enc.prompt, stage, &[EOT]);
            let depth = reference_depths(r);
            for k in 1..=stage {
                if k + 1 > depth[r.target] {
                    continue;
                }
                let at = q.enc.prompt.len() - 1 + k;
                let logp = candle_nn::ops::log_softmax(&logits.get(at).unwrap(), 0).unwrap();
                let logp = logp.to_vec1::<f32>().unwrap();
                let frontier = reference_frontier(r, &depth, k + 1);
                want -= frontier.iter().map(|&c| logp[c]).sum::<f32>() / frontier.len() as f32;
                reads += 1;
            }
        }
        assert!(reads > records.len(), "the check reads several thoughts");
        assert_eq!(count_with, count_without + reads);
        let got = with - without;
        assert!((got - want).abs() < 1e-3 * want.abs(), "{got} vs {want}");
        // Only frontier supervision reads frontiers.
        config.supervision = Supervision::Path;
        assert!(!config.aux().thought_reads);
    }

    #[test]
    fn mimetic_init_makes_keys_equal_queries_in_one_layer() {
        let mut config = small(Method::Coconut);
        config.model.n_layer = 2;
        let varmap = random_varmap(&config.model, 0, &Device::Cpu).unwrap();
        let weight = |l: usize| {
            let data = varmap.data().lock().unwrap();
            let w = data[&format!("transformer.h.{l}.attn.c_attn.weight")]
                .as_tensor()
                .clone();
            w.to_vec2::<f32>().unwrap()
        };
        let (before0, before1) = (weight(0), weight(1));
        mimetic_attention(&varmap, 1).unwrap();
        let (after0, after1) = (weight(0), weight(1));
        let d = config.model.n_embd;
        assert_eq!(after0, before0);
        for (a, b) in after1.iter().zip(&before1) {
            for i in 0..d {
                assert_eq!(a[i], 4.0 * b[i], "query");
                assert_eq!(a[d + i], a[i], "key");
                assert_eq!(a[2 * d + i], b[2 * d + i], "value");
            }
        }
        let err = mimetic_attention(&varmap, 2).unwrap_err().to_string();
        assert!(err.contains("--mimetic-layer 2"), "{err}");
    }

    #[test]
    fn batched_loss_is_the_mean_of_one_sample_at_a_time() {
        let vocab = Vocab::prosqa();
        let config = small(Method::Coconut);
        let varmap = random_varmap(&config.model, 0, &Device::Cpu).unwrap();
        let model = model_of(&config, &varmap);
        let examples: Vec<Example> = generate(3, 8)
            .iter()
            .map(|r| example(&Question::new(r, &vocab).unwrap(), &config, 2))
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let (sum, count) = batch_loss(&model, &refs, Aux::default()).unwrap();
        // Reference: candle's cross_entropy on each full sequence, one at a time.
        let (mut want, mut want_count) = (0.0f32, 0);
        for e in &examples {
            let (seq, logits) = unbatched_logits(&model, &e.prefix, e.n_thoughts, &e.suffix);
            let first = e.prefix.len() + e.n_thoughts + 1;
            let n = seq.len() - first;
            let logits = logits.narrow(0, first - 1, n).unwrap();
            let labels = Tensor::new(&seq[first..], &Device::Cpu).unwrap();
            let mean: f32 = candle_nn::loss::cross_entropy(&logits, &labels)
                .unwrap()
                .to_scalar()
                .unwrap();
            want += mean * n as f32;
            want_count += n;
        }
        assert_eq!(count, want_count);
        let got: f32 = sum.to_scalar().unwrap();
        assert!((got - want).abs() < 1e-3 * want.abs(), "{got} vs {want}");
    }

    #[test]
    fn evaluation_counts_every_question_by_hops() {
        let records = generate(6, 2);
        let config = small(Method::Coconut);
        let varmap = random_varmap(&config.model, 0, &Device::Cpu).unwrap();
        let model = model_of(&config, &varmap);
        let acc = evaluate(
            &model,
            &super::super::format::BuiltinFormat::default(),
            &records,
            2,
            &crate::progress::Hidden,
        )
        .unwrap();
        assert_eq!(acc.total, 6);
        let mut want = std::collections::BTreeMap::new();
        for r in &records {
            want.entry(r.hops()).or_insert((0, 0)).0 += 1;
        }
        assert_eq!(
            acc.by_hops
                .iter()
                .map(|(h, (n, _))| (*h, *n))
                .collect::<Vec<_>>(),
            want.iter().map(|(h, (n, _))| (*h, *n)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_memorised_training_set_is_answered_correctly() {
        // Train and evaluate end to end: two questions, learned by heart, must come back
        // right under greedy decoding, for CoT and for Coconut with its thoughts.
        let records = generate(2, 5);
        for (method, thoughts) in [(Method::Cot, 0), (Method::Coconut, 1)] {
            let dir = tempfile::tempdir().unwrap();
            let mut config = small(method);
            config.max_stage = 1;
            config.epochs_per_stage = 30;
            config.batch_size = 2;
            train_quietly(&config, &records, dir.path()).unwrap();
            let loaded =
                super::super::checkpoint::load_hf_gpt2(dir.path().join("model"), &Device::Cpu)
                    .unwrap();
            let acc = evaluate(
                &loaded.model,
                &super::super::format::BuiltinFormat::default(),
                &records,
                thoughts,
                &crate::progress::Hidden,
            )
            .unwrap();
            assert_eq!((acc.total, acc.correct), (2, 2), "{method:?}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Autograd against central differences on a tiny model with larger weights (so that
        // attention is far from uniform), through padding, a thought and both supervisions.
        let vocab = Vocab::prosqa();
        let mut config = small(Method::Coconut);
        config.model.n_embd = 8;
        config.model.n_layer = 2;
        config.model.n_head = 2;
        let varmap = random_varmap(&config.model, 0, &Device::Cpu).unwrap();
        {
            let data = varmap.data().lock().unwrap();
            let mut names: Vec<&String> = data.keys().collect();
            names.sort();
            for (i, name) in names.into_iter().enumerate() {
                let var = &data[name];
                let noise = crate::rng::gaussian(99, i as u64, var.elem_count());
                let t =
                    (Tensor::from_vec(noise, var.shape(), &Device::Cpu).unwrap() * 0.5).unwrap();
                var.set(&(var.as_tensor() + t).unwrap()).unwrap();
            }
        }
        let model = model_of(&config, &varmap);
        let questions: Vec<Question> = generate(2, 6)
            .iter()
            .map(|r| Question::new(r, &vocab).unwrap())
            .collect();
        let path: Vec<Example> = questions.iter().map(|q| example(q, &config, 1)).collect();
        config.supervision = Supervision::Frontier;
        let frontier: Vec<Example> = questions.iter().map(|q| example(q, &config, 2)).collect();
        let loss = || -> f64 {
            let (a, _) =
                batch_loss(&model, &path.iter().collect::<Vec<_>>(), Aux::default()).unwrap();
            let (b, _) =
                frontier_batch_loss(&model, &frontier.iter().collect::<Vec<_>>(), Aux::default())
                    .unwrap();
            (a + b)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let (a, _) = batch_loss(&model, &path.iter().collect::<Vec<_>>(), Aux::default()).unwrap();
        let (b, _) =
            frontier_batch_loss(&model, &frontier.iter().collect::<Vec<_>>(), Aux::default())
                .unwrap();
        let grads = (a + b).unwrap().backward().unwrap();
        let data = varmap.data().lock().unwrap().clone();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let eps = 1e-2f32;
        for name in names {
            let var = &data[name];
            let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap();
            let g = g.to_vec1::<f32>().unwrap();
            // The entry with the largest gradient, and one more.
            let top = (0..g.len())
                .max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs()))
                .unwrap();
            for idx in [top, g.len() / 2] {
                let base = var
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let at = |delta: f32| {
                    let mut v = base.clone();
                    v[idx] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss()
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                at(0.0);
                let analytic = g[idx] as f64;
                let tol = 0.05 * numeric.abs().max(analytic.abs()) + 2e-3;
                assert!(
                    (numeric - analytic).abs() <= tol,
                    "{name}[{idx}]: autograd {analytic} vs finite difference {numeric}"
                );
            }
        }
    }

    #[test]
    fn gradients_reach_every_weight() {
        // Regression: candle-nn's fused layer norm and softmax record no backward pass, which
        // silently froze everything below the last layer norm.
        let vocab = Vocab::prosqa();
        let config = small(Method::Coconut);
        let varmap = random_varmap(&config.model, 0, &Device::Cpu).unwrap();
        let model = model_of(&config, &varmap);
        let ex = example(
            &Question::new(&generate(1, 3)[0], &vocab).unwrap(),
            &config,
            1,
        );
        let (loss, _) = batch_loss(&model, &[&ex], Aux::default()).unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let norm = |t: &Tensor| -> f32 { t.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap() };
        for name in names {
            let g = grads.get(data[name].as_tensor());
            let g = g.unwrap_or_else(|| panic!("no gradient reaches {name}"));
            // c_attn holds the query, key and value maps side by side: each needs its own
            // gradient (a softmax without backward starves only the query and key parts).
            let parts = if name.ends_with("c_attn.weight") {
                3
            } else {
                1
            };
            let width = g.dim(g.rank() - 1).unwrap() / parts;
            for p in 0..parts {
                let part = g.narrow(g.rank() - 1, p * width, width).unwrap();
                assert!(norm(&part) > 0.0, "no gradient reaches {name} (part {p})");
            }
        }
    }

    #[test]
    fn fresh_data_needs_no_records_and_is_part_of_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = small(Method::Cot);
        config.max_stage = 0;
        config.epochs_per_stage = 2;
        config.data = TrainData::Fresh {
            per_epoch: 4,
            seed: 1,
        };
        let state = train_quietly(&config, &[], dir.path()).unwrap();
        assert_eq!(state.epochs_done, 2);
        assert!(state.epoch_losses.iter().all(|l| l.is_finite()));
        // Another data seed is another run.
        config.data = TrainData::Fresh {
            per_epoch: 4,
            seed: 2,
        };
        let err = train_quietly(&config, &[], dir.path()).unwrap_err();
        assert!(err.to_string().contains("different config"), "{err}");
    }

    #[test]
    fn frontier_supervision_refuses_several_thoughts_per_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = small(Method::Coconut);
        config.supervision = Supervision::Frontier;
        config.thoughts_per_step = 2;
        let err = train_quietly(&config, &generate(2, 1), dir.path()).unwrap_err();
        assert!(err.to_string().contains("--thoughts-per-step 1"), "{err}");
        assert!(!state_path(dir.path()).exists());
    }

    #[test]
    fn a_different_config_does_not_resume() {
        let records = generate(2, 1);
        let dir = tempfile::tempdir().unwrap();
        let mut config = small(Method::NoCot);
        config.max_stage = 0;
        config.epochs_per_stage = 1;
        train_quietly(&config, &records, dir.path()).unwrap();
        // More epochs at the last stage continue the same run.
        config.extra_epochs = 1;
        let more = train_quietly(&config, &records, dir.path()).unwrap();
        assert_eq!(more.epochs_done, 2);
        config.seed = 9;
        let err = train_quietly(&config, &records, dir.path()).unwrap_err();
        assert!(err.to_string().contains("different config"), "{err}");
    }
}
