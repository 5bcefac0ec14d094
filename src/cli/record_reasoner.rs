//! `latentlens record reasoner` and `latentlens sites reasoner`: run ProsQA questions through
//! a continuous-thought reasoner and record its sites at every pass (pass 0 = the prompt,
//! pass k = thought k, then `<eot>` and each decoded token).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use polars::prelude::*;

use super::common;
use super::reasoner::ReasonerSource;
use crate::data::prosqa::{self, Record};
use crate::reasoner::checkpoint::LoadedGpt2;
use crate::reasoner::coconut::generate_latent;
use crate::reasoner::format::QuestionFormat;
use crate::record::{bytes_per_sample, chunk_samples_for, record, RecordPlan};
use crate::sites::{select_sites, Hooks, SiteInfo};
use crate::store::{manifest::hash_file, Manifest, ModelInfo, Run, Start};
use crate::taps::Pool;

const CHUNK_BUDGET_BYTES: u64 = 256 << 20;
const MAX_CHUNK_SAMPLES: u32 = 64;

#[derive(Debug, Args)]
pub struct RecordReasoner {
    /// Run folder to create (or resume, if it holds this same run unfinished).
    #[arg(long, default_value = "reports/reasoner")]
    pub run: PathBuf,
    /// ProsQA JSON file (the real prosqa_valid.json or one from `data prosqa`).
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub source: ReasonerSource,
    /// Continuous thoughts before the answer.
    #[arg(long, default_value_t = 6)]
    pub thoughts: usize,
    /// Sites to record: names or globs, comma-separated or repeated. Attention patterns
    /// change shape from pass to pass and are left out of `*`.
    #[arg(long, default_value = "*")]
    pub sites: Vec<String>,
    /// Passes to keep: `all`, `last`, `0,1,2`, `1..7`.
    #[arg(long, default_value = "all")]
    pub steps: String,
    /// `none`: one row per position; `mean`: the vector averaged over a pass's positions.
    #[arg(long, value_enum, default_value_t = Pool::None)]
    pub pool: Pool,
    /// Record only the first N questions of the file.
    #[arg(long)]
    pub limit: Option<u32>,
}

#[derive(Debug, Args)]
pub struct SitesReasoner {
    #[command(flatten)]
    pub source: ReasonerSource,
}

pub fn run_sites(args: &SitesReasoner) -> anyhow::Result<()> {
    let loaded = args.source.load()?.loaded;
    println!(
        "{:<32} {:<10} shape (per question and pass)",
        "site", "fires"
    );
    for site in loaded.model.sites(1, 1) {
        let shape = site
            .dims
            .iter()
            .map(|(n, d)| match *n {
                "position" | "query" => format!("{n}=new positions"),
                "key" => format!("{n}=all positions"),
                _ => format!("{n}={d}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!("{:<32} {:<10} [{shape}]", site.name, "each pass");
    }
    Ok(())
}

/// Sites whose rows can be recorded: attention patterns have a different width at every
/// pass (the key axis grows), which a site's table cannot hold. Asking for `thought` with
/// no thoughts is refused too: it would only ever write an empty table.
fn recordable(
    sites: Vec<&SiteInfo>,
    explicit: bool,
    thoughts: usize,
) -> anyhow::Result<Vec<&SiteInfo>> {
    let is_pattern = |s: &&SiteInfo| s.name.ends_with("hook_pattern");
    let silent = |s: &&SiteInfo| thoughts == 0 && s.name == "thought";
    if explicit {
        if sites.iter().any(silent) {
            anyhow::bail!(
                "site `thought` fires only on thought passes and --thoughts is 0; \
                 record with --thoughts 1 or more, or choose another site"
            );
        }
        if let Some(s) = sites.iter().find(|s| is_pattern(s)) {
            anyhow::bail!(
                "site `{}` cannot be recorded: attention patterns change width at every pass \
                 (keys grow with the cache); record hook_attn_out or the residual stream",
                s.name
            );
        }
    }
    Ok(sites.into_iter().filter(|s| !is_pattern(s)).collect())
}

pub fn run(args: &RecordReasoner) -> anyhow::Result<()> {
    let mut records = prosqa::load(&args.data)?;
    if let Some(n) = args.limit {
        records.truncate(n as usize);
    }
    anyhow::ensure!(
        !records.is_empty(),
        "{} has no records",
        args.data.display()
    );
    let reasoner = args.source.load()?;
    let (loaded, format) = (&reasoner.loaded, reasoner.format.as_ref());
    let prompts = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format
                .prompt(r)
                .with_context(|| format!("{}: record {i}", args.data.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let max_answer = records
        .iter()
        .map(|r| format.max_answer_tokens(r))
        .max()
        .unwrap_or(1);
    let all_sites = loaded.model.sites(longest, longest + args.thoughts);
    let patterns = common::site_patterns(&args.sites);
    let explicit = !args.sites.iter().all(|s| s == "*");
    let sites = recordable(
        select_sites(&patterns, &all_sites)?,
        explicit,
        args.thoughts,
    )?;
    // Passes: prompt, thoughts, `<eot>`, then up to `max_answer` decoded tokens.
    let passes = (1 + args.thoughts + 1 + max_answer) as u16;
    let steps = crate::steps::parse_steps(&args.steps, 0, passes)?;
    let steps_kept = steps.as_ref().map_or(passes as usize, Vec::len);
    // Token sites hold one row per position: budget for the longest prompt at every pass.
    let per_sample = bytes_per_sample(&sites, args.pool, steps_kept);
    let chunk_samples = chunk_samples_for(per_sample, CHUNK_BUDGET_BYTES, MAX_CHUNK_SAMPLES);
    let config = serde_json::json!({
        "data": args.data,
        "model": reasoner.source,
        "questions": records.len(),
        "thoughts": args.thoughts,
        "sites": sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        "steps": steps,
        "pool": args.pool,
        "chunk_samples": chunk_samples,
    });
    let mut weights = loaded
        .weight_files
        .iter()
        .map(|p| hash_file(p))
        .collect::<crate::Result<Vec<_>>>()?;
    weights.push(hash_file(&args.data)?);
    let manifest = Manifest::new(
        "record reasoner",
        config,
        0,
        ModelInfo {
            id: format!("reasoner ({})", reasoner.source.display()),
            weights,
        },
    );
    let (mut run, start) = Run::create_or_resume(&args.run, manifest)?;
    if start == Start::Resumed {
        eprintln!("resuming the run in {}", args.run.display());
    }
    let plan = RecordPlan {
        sites,
        steps,
        pool: args.pool,
        samples: records.len() as u32,
        chunk_samples,
        batch_size: 1,
    };
    let bar = common::bar(records.len() as u64, "recording");
    let mut forward = |ids: &[u32], hooks: &mut Hooks| -> crate::Result<DataFrame> {
        let question = Question {
            loaded,
            format,
            thoughts: args.thoughts,
        };
        question.answer(ids, &records, &prompts, hooks)
    };
    let summary = record(
        &mut run,
        &plan,
        &mut forward,
        &bar,
        common::interrupt_flag(),
    )?;
    bar.finish_and_clear();
    let samples = run.samples()?;
    let correct = samples
        .column("correct")
        .ok()
        .and_then(|c| c.bool().ok().map(|b| b.sum().unwrap_or(0)))
        .unwrap_or(0);
    println!(
        "recorded {} questions ({} answered right with {} thoughts), {} rows ({:.1} MB) in \
         {:.1} s to {}",
        records.len(),
        correct,
        args.thoughts,
        summary.rows,
        summary.bytes as f64 / 1e6,
        summary.seconds,
        args.run.display()
    );
    Ok(())
}

/// One latent-mode generation per question, with its labels.
struct Question<'a> {
    loaded: &'a LoadedGpt2,
    format: &'a dyn QuestionFormat,
    thoughts: usize,
}

impl Question<'_> {
    fn answer(
        &self,
        ids: &[u32],
        records: &[Record],
        prompts: &[Vec<u32>],
        hooks: &mut Hooks,
    ) -> crate::Result<DataFrame> {
        let mut labels = Labels::default();
        for &id in ids {
            let record = &records[id as usize];
            let generated = generate_latent(
                &self.loaded.model,
                &prompts[id as usize],
                self.thoughts,
                self.format.latent_tokens(),
                self.format.max_answer_tokens(record),
                hooks,
            )?;
            let chain = self.format.read_chain(record, &generated.answer);
            labels.push(id, record, chain.answer, chain.steps.len());
        }
        labels.frame()
    }
}

/// samples.parquet columns of a reasoner run.
#[derive(Default)]
struct Labels {
    sample: Vec<u32>,
    nodes: Vec<u32>,
    edges: Vec<u32>,
    hops: Vec<u32>,
    root: Vec<String>,
    target: Vec<String>,
    neg_target: Vec<String>,
    answer: Vec<Option<String>>,
    correct: Vec<bool>,
    steps_spoken: Vec<u32>,
}

impl Labels {
    fn push(&mut self, id: u32, r: &Record, answer: Option<usize>, steps_spoken: usize) {
        let name = |v: usize| r.idx_to_symbol[v].clone();
        self.sample.push(id);
        self.nodes.push(r.idx_to_symbol.len() as u32);
        self.edges.push(r.edges.len() as u32);
        self.hops.push(r.hops() as u32);
        self.root.push(name(r.root));
        self.target.push(name(r.target));
        self.neg_target.push(name(r.neg_target));
        self.answer.push(answer.map(name));
        self.correct.push(answer == Some(r.target));
        self.steps_spoken.push(steps_spoken as u32);
    }

    fn frame(self) -> crate::Result<DataFrame> {
        Ok(df!(
            "sample" => self.sample,
            "nodes" => self.nodes,
            "edges" => self.edges,
            "hops" => self.hops,
            "root" => self.root,
            "target" => self.target,
            "neg_target" => self.neg_target,
            "answer" => self.answer,
            "correct" => self.correct,
            "steps_spoken" => self.steps_spoken,
        )?)
    }
}
