//! `latentlens train reasoner` and `latentlens eval reasoner`: train the built-in
//! continuous-thought reasoner (Coconut and its CoT / no-CoT baselines) on generated
//! ProsQA-like data, and measure any of them on a ProsQA file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::common::{bar, interrupt_flag};
use crate::data::prosqa;
use crate::reasoner::eval;
use crate::reasoner::tokens::Vocab;
use crate::reasoner::train::{train, Method, Supervision, TrainConfig, TrainData};

/// Where the shipped reasoners live, one folder per method.
pub const DEFAULT_REASONER_DIR: &str = crate::reasoner::source::BUILTIN_REASONER_DIR;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    Coconut,
    Cot,
    NoCot,
}

impl MethodArg {
    fn method(self) -> Method {
        match self {
            MethodArg::Coconut => Method::Coconut,
            MethodArg::Cot => Method::Cot,
            MethodArg::NoCot => Method::NoCot,
        }
    }

    fn folder(self) -> &'static str {
        eval::method_folder(self.method())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SupervisionArg {
    Path,
    Frontier,
}

/// Train the built-in reasoner on generated ProsQA-like questions (never on the real file).
///
/// The model and its training state are saved after every epoch; rerunning the same
/// command resumes after the last finished epoch.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens train reasoner --method coconut --supervision frontier --fresh-data
  latentlens train reasoner --method cot --max-stage 0 --epochs-per-stage 10 --out runs/cot")]
pub struct TrainArgs {
    #[arg(long, value_enum, default_value_t = MethodArg::Coconut)]
    pub method: MethodArg,
    /// Output folder (default: weights/reasoner/<method>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Generated training questions (per epoch with --fresh-data).
    #[arg(long, default_value_t = 4000)]
    pub train_size: usize,
    /// Generate new questions every epoch instead of reusing one set (no graph is seen
    /// twice, so graphs cannot be memorised).
    #[arg(long)]
    pub fresh_data: bool,
    /// Seed of the generated training questions.
    #[arg(long, default_value_t = 7)]
    pub data_seed: u64,
    /// Last curriculum stage = most thoughts (Coconut uses 6 on ProsQA).
    #[arg(long, default_value_t = 6)]
    pub max_stage: usize,
    /// Epochs at each stage; the baselines get the same total.
    #[arg(long, default_value_t = 3)]
    pub epochs_per_stage: usize,
    /// Epochs at the last stage after the curriculum. Raising it later continues a finished
    /// run.
    #[arg(long, default_value_t = 0)]
    pub extra_epochs: usize,
    /// Thoughts per replaced reasoning step (c).
    #[arg(long, default_value_t = 1)]
    pub thoughts_per_step: usize,
    /// Chance of training a sample at a random earlier stage.
    #[arg(long, default_value_t = 0.0)]
    pub mix_prob: f64,
    /// What Coconut's stages train on after `<eot>`: the rest of the shortest path and the
    /// answer (Coconut), or one node of the next BFS frontier until the thoughts reach the
    /// target, then the answer (Zhu et al. 2025, for small models trained from scratch).
    #[arg(long, value_enum, default_value_t = SupervisionArg::Path)]
    pub supervision: SupervisionArg,
    /// Lookup drills per question, for every method: `n <eot>` right after the prompt,
    /// scored against n's children (the one-hop lookup every BFS expansion is made of).
    #[arg(long, default_value_t = 0)]
    pub lookup_drills: usize,
    /// Start the three positions of every edge (`A B |`) with one shared position
    /// embedding, so that "attend to my edge's source" is near at hand from the first step.
    #[arg(long)]
    pub shared_edge_positions: bool,
    /// Also train every prompt position to name the token before it (an edge's `B` its
    /// source `A`), which makes the model grow the previous-token head the lookup needs.
    #[arg(long)]
    pub previous_token_recall: bool,
    /// Under frontier supervision, also read F_1 at the root's own position.
    #[arg(long)]
    pub root_read: bool,
    /// Under frontier supervision, also read F_{k+1} at the pass of thought k (the root
    /// read carried along the chain; the thoughts' content becomes a training target).
    #[arg(long)]
    pub thought_reads: bool,
    /// Start this layer's attention with W_K = W_Q ("mimetic" init): in layer 1 it starts
    /// the lookup's match of a node against the edges' sources.
    #[arg(long)]
    pub mimetic_layer: Option<usize>,
    /// Start from this model folder's weights instead of random ones (as Coconut starts from
    /// its stage-0 checkpoint). Its shape must match --d-model, --layers and --heads.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Curriculum epochs the --init-from model has already done: training starts after them
    /// (e.g. --epochs-per-stage to start Coconut at stage 1 from a stage-0 model).
    #[arg(long, default_value_t = 0, requires = "init_from")]
    pub skip_epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Width of the model.
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Seed of the initial weights and the sample order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl TrainArgs {
    fn config(&self) -> TrainConfig {
        let mut c = TrainConfig::new(self.method.method(), Vocab::prosqa().len());
        c.model.n_embd = self.d_model;
        c.model.n_layer = self.layers;
        c.model.n_head = self.heads;
        c.max_stage = self.max_stage;
        c.epochs_per_stage = self.epochs_per_stage;
        c.thoughts_per_step = self.thoughts_per_step;
        c.extra_epochs = self.extra_epochs;
        if self.fresh_data {
            c.data = TrainData::Fresh {
                per_epoch: self.train_size,
                seed: self.data_seed,
            };
        }
        c.mix_prob = self.mix_prob;
        c.supervision = match self.supervision {
            SupervisionArg::Path => Supervision::Path,
            SupervisionArg::Frontier => Supervision::Frontier,
        };
        c.lookup_drills = self.lookup_drills;
        c.shared_edge_positions = self.shared_edge_positions;
        c.previous_token_recall = self.previous_token_recall;
        c.root_read = self.root_read;
        c.thought_reads = self.thought_reads;
        c.mimetic_layer = self.mimetic_layer;
        c.init_from = self.init_from.clone();
        c.skip_epochs = self.skip_epochs;
        c.batch_size = self.batch_size;
        c.learning_rate = self.lr;
        c.seed = self.seed;
        c
    }

    fn out(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| Path::new(DEFAULT_REASONER_DIR).join(self.method.folder()))
    }
}

pub use crate::reasoner::source::{Reasoner, ReasonerSource};

/// Answer accuracy and tokens generated on a ProsQA file, for each model given.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens eval reasoner --data ../shared/data/prosqa_valid.json
  latentlens eval reasoner --data q.json --model weights/reasoner/coconut/model --json")]
pub struct EvalArgs {
    /// ProsQA JSON file (e.g. ../shared/data/prosqa_valid.json).
    #[arg(long)]
    pub data: PathBuf,
    /// Model folders (config.json + model.safetensors). Default: the three shipped models.
    #[arg(long = "model")]
    pub models: Vec<PathBuf>,
    /// A Coconut checkpoint (.pth) to evaluate instead; needs --tokenizer.
    #[arg(long, conflicts_with = "models")]
    pub checkpoint: Option<PathBuf>,
    /// GPT-2 tokenizer folder for --checkpoint or GPT-2 model folders.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Continuous thoughts for Coconut models (baselines always use 0).
    #[arg(long, default_value_t = 6)]
    pub thoughts: usize,
    /// Evaluate only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run_train(args: &TrainArgs) -> anyhow::Result<()> {
    super::common::keep_freed_memory();
    let config = args.config();
    let out = args.out();
    let records = if args.fresh_data {
        Vec::new()
    } else {
        prosqa::generate(args.train_size, args.data_seed)
    };
    let pb = bar(0, args.method.folder());
    let state = train(&config, &records, &out, &pb, interrupt_flag());
    pb.finish_and_clear();
    let state = state.with_context(|| format!("training into {}", out.display()))?;
    crate::outln!(
        "{}: {} epochs, last loss {:.4} -> {}",
        args.method.folder(),
        state.epochs_done,
        state.epoch_losses.last().copied().unwrap_or(f32::NAN),
        out.join("model").display()
    );
    Ok(())
}

pub fn run_eval(args: &EvalArgs) -> anyhow::Result<()> {
    let mut records = prosqa::load(&args.data)?;
    if let Some(n) = args.limit {
        records.truncate(n);
    }
    let models: Vec<PathBuf> = if args.models.is_empty() {
        [Method::Cot, Method::NoCot, Method::Coconut]
            .into_iter()
            .map(eval::builtin_model)
            .collect()
    } else {
        args.models.clone()
    };
    let sources: Vec<ReasonerSource> = match &args.checkpoint {
        Some(ckpt) => vec![ReasonerSource {
            model: None,
            checkpoint: Some(ckpt.clone()),
            tokenizer: args.tokenizer.clone(),
        }],
        None => models
            .into_iter()
            .map(|m| ReasonerSource {
                model: Some(m),
                checkpoint: None,
                tokenizer: args.tokenizer.clone(),
            })
            .collect(),
    };
    let device = super::common::device()?;
    let mut rows = Vec::new();
    for source in &sources {
        let pb = bar(0, "eval");
        let row = eval::accuracy(source, &records, args.thoughts, &device, &pb);
        pb.finish_and_clear();
        rows.push(row?);
    }
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    crate::outln!(
        "{} ({} questions)\n{:<10} {:>8} {:>10} {:>9}  by hops",
        args.data.display(),
        records.len(),
        "method",
        "thoughts",
        "accuracy",
        "# tokens"
    );
    for r in &rows {
        let hops: Vec<String> = r
            .by_hops
            .iter()
            .map(|h| format!("{}:{:.0}%", h.hops, 100.0 * h.accuracy))
            .collect();
        crate::outln!(
            "{:<10} {:>8} {:>9.1}% {:>9.1}  {}",
            format!("{:?}", r.method),
            r.thoughts,
            100.0 * r.accuracy,
            r.mean_tokens,
            hops.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command, EvalCommand, TrainCommand};
    use clap::Parser;

    #[test]
    fn train_flags_reach_the_config_and_default_to_the_shipped_folder() {
        let cli = Cli::try_parse_from([
            "latentlens",
            "train",
            "reasoner",
            "--method",
            "no-cot",
            "--d-model",
            "64",
            "--mix-prob",
            "0.3",
            "--supervision",
            "frontier",
        ])
        .unwrap();
        let Command::Train(TrainCommand::Reasoner(t)) = cli.command else {
            panic!("not train reasoner");
        };
        let c = t.config();
        assert_eq!(c.method, Method::NoCot);
        assert_eq!((c.model.n_embd, c.mix_prob, c.max_stage), (64, 0.3, 6));
        assert_eq!(c.supervision, Supervision::Frontier);
        assert!(t.out().ends_with("weights/reasoner/no-cot"));
        let cli =
            Cli::try_parse_from(["latentlens", "eval", "reasoner", "--data", "x.json"]).unwrap();
        let Command::Eval(EvalCommand::Reasoner(e)) = cli.command else {
            panic!("not eval reasoner");
        };
        assert_eq!((e.thoughts, e.models.len()), (6, 0));
    }
}
