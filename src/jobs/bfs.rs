//! The bfs job: the breadth-first-search analysis of continuous thoughts (Coconut paper,
//! section 5). For every question and k = 0..K thoughts the model is switched back to
//! language (`reasoner::branch`); the node values, where the next step's mass goes and
//! what the greedy continuation says become the `bfs_*` tables (`analysis::bfs`) and the
//! `bfs-*` figures (`plots::bfs`).
//!
//! A reasoner run knows its questions and its model (its manifest config holds `data` or
//! `generate`, and `source`), so bfs on it needs neither; another model can be given, and
//! the analysis's provenance names the model actually used. Without a run, a new run
//! folder of kind `bfs` is made for a ProsQA file ([`plan_new`]). Any other run (a
//! diffusion recording) is refused before anything is written.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::record_reasoner::{self, questions_of, MAX_THOUGHTS};
use super::{Ctx, Identity, Output};
use crate::analysis::bfs::{
    chain_shares, chain_text, chains_table, classify_chain, height_rows, height_summaries,
    height_table, mass_rows, mass_summaries, mass_table, node_rows, nodes_table, question_masses,
    topk_rows, topk_table, ChainCategory, ChainShare, DecodedChain, HeightSummary, Interval,
    MassSummary, QuestionBranches, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED,
};
use crate::data::prosqa::{self, Record};
use crate::plots;
use crate::reasoner::branch::{branch_thoughts, check_question};
use crate::reasoner::format::QuestionFormat;
use crate::reasoner::gpt2::Gpt2;
use crate::reasoner::source::{Reasoner, ReasonerSource};
use crate::report::{Section, Table};
use crate::store::manifest::hash_file;
use crate::store::{AnalysisRecord, Manifest, ModelInfo, Run, STATUS_COMPLETE};
use crate::{Error, Result};

/// The manifest kind of a run folder made by bfs alone (no recording).
pub const KIND: &str = "bfs";
/// The manifest kind of a reasoner recording.
const REASONER_KIND: &str = "record reasoner";
/// Thought counts of the paper's Figures 8 and 9 (and of the report's findings).
pub const FIGURE_STEPS: [usize; 2] = [1, 2];
/// Top-j cumulative values of Figure 8.
pub const TOP: usize = 3;

/// What a user asks for; the `bfs` command's flags and an experiment's `[[run.bfs]]` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Another model than the run's (`model`, or `checkpoint` + `tokenizer`). Empty: the
    /// run's own model; for a new bfs run, the shipped Coconut model.
    #[serde(flatten)]
    pub source: ReasonerSource,
    /// A ProsQA file: the questions of a new bfs run folder. For a reasoner run it may be
    /// given, and must then be the file the run was recorded on.
    pub data: Option<PathBuf>,
    /// Largest number of continuous thoughts K; every k = 0..K is analysed.
    pub thoughts: usize,
    /// Only the first N questions.
    pub limit: Option<usize>,
    /// Analyse an unfinished reasoner recording (bfs reads its questions, not its latents).
    pub allow_partial: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            source: ReasonerSource::default(),
            data: None,
            thoughts: 6,
            limit: None,
            allow_partial: false,
        }
    }
}

/// Everything resolved: the loaded model, the questions, the frontier per k.
pub struct Plan {
    pub reasoner: Reasoner,
    pub records: Vec<Record>,
    pub thoughts: usize,
    /// `frontier[k]`: the depth of the nodes the first spoken step names after k thoughts
    /// (`QuestionFormat::named_hop`).
    pub frontier: Vec<usize>,
    /// The model actually used, with the SHA-256 of its weights.
    pub model: ModelInfo,
    pub identity: Identity,
}

/// Resolves bfs on an existing run: a reasoner recording, or a run an earlier bfs made.
pub fn plan(run: &Run, opts: &Options, device: &Device) -> Result<Plan> {
    let m = run.manifest();
    match m.kind.as_str() {
        REASONER_KIND => super::require_complete(run, opts.allow_partial)?,
        // Its status says whether the last bfs finished; there is no recording to finish.
        KIND => {}
        other => {
            return Err(Error::Invalid(format!(
                "bfs needs a reasoner run; {} is `{other}`: record one with `latentlens \
                 record reasoner`, or give a new --run folder and --data FILE",
                run.root().display()
            )))
        }
    }
    let records = questions(run, opts)?;
    let source = if is_empty(&opts.source) {
        source_in(&run.manifest().config, &run.root().display().to_string())?
    } else {
        opts.source.clone()
    };
    resolve(records, &source, opts, device)
}

/// Resolves bfs into a new run folder of kind `bfs` for the questions of `opts.data`;
/// returns the plan and the manifest to create the run with (nothing is written here).
pub fn plan_new(opts: &Options, device: &Device) -> Result<(Plan, Manifest)> {
    let data = opts.data.as_ref().ok_or_else(|| {
        Error::Invalid(
            "a new bfs run needs its questions: give --data FILE (a ProsQA file), or --run a \
             reasoner run recorded with `latentlens record reasoner`"
                .into(),
        )
    })?;
    let plan = resolve(prosqa::load(data)?, &opts.source, opts, device)?;
    let mut weights = plan.model.weights.clone();
    weights.push(hash_file(data)?);
    // The same keys as a reasoner recording's config, so a later bfs reads them alike.
    let config = serde_json::json!({
        "data": data,
        "source": opts.source,
        "model": plan.reasoner.source,
    });
    let model = ModelInfo {
        id: plan.model.id.clone(),
        weights,
    };
    Ok((plan, Manifest::new(KIND, config, 0, model)))
}

/// The run bfs writes into and its plan: `dir`'s run when it holds one ([`plan`]),
/// otherwise a new run of kind `bfs` ([`plan_new`]), created only once the plan resolved.
pub fn open_or_create(dir: &Path, opts: &Options, device: &Device) -> Result<(Run, Plan)> {
    if Run::is_run(dir) {
        let run = Run::open(dir)?;
        let plan = plan(&run, opts, device)?;
        return Ok((run, plan));
    }
    let (plan, manifest) = plan_new(opts, device)?;
    let (run, _) = Run::create_or_resume(dir, manifest)?;
    Ok((run, plan))
}

fn is_empty(source: &ReasonerSource) -> bool {
    source == &ReasonerSource::default()
}

/// The run's questions: from its manifest, or from `opts.data` when the run names none.
fn questions(run: &Run, opts: &Options) -> Result<Vec<Record>> {
    let what = run.root().display().to_string();
    questions_in(&run.manifest().config, &what, opts)
}

/// The questions a reasoner run's `config` names (`data` or `generate`), checked against
/// `opts.data`; `opts.data` itself when the config names none. `what` names the run.
fn questions_in(config: &serde_json::Value, what: &str, opts: &Options) -> Result<Vec<Record>> {
    let recorded_on = config.get("data").and_then(|d| d.as_str());
    let generated = config.get("generate").is_some_and(|g| !g.is_null());
    match (&opts.data, recorded_on) {
        (Some(data), Some(recorded)) => check_same_data(what, Path::new(recorded), data)?,
        (Some(data), None) if generated => {
            return Err(Error::Invalid(format!(
                "{what} holds generated questions (`generate` in its manifest), not {}: its \
                 `sample` ids would not match; leave out --data, or give a new --run folder",
                data.display()
            )))
        }
        (Some(data), None) => return prosqa::load(data),
        (None, _) => {}
    }
    if recorded_on.is_none() && !generated {
        return Err(Error::Invalid(format!(
            "{what}'s manifest names no ProsQA questions (`data` or `generate`); give --data FILE"
        )));
    }
    questions_of(config)
}

/// A run that names its data file must have been made on `data`: `sample` is the index
/// of a question in that file, and the tables are joined on it.
fn check_same_data(what: &str, recorded: &Path, data: &Path) -> Result<()> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if canonical(recorded) != canonical(data) {
        return Err(Error::Invalid(format!(
            "{what} was recorded on {}, not on {}: its `sample` ids would not match; pass the \
             same --data (or none) or a new --run folder",
            recorded.display(),
            data.display()
        )));
    }
    Ok(())
}

/// The model a run was recorded with: its `source`, or (runs from before `source` was
/// kept) the `model` folder it names.
fn source_in(config: &serde_json::Value, what: &str) -> Result<ReasonerSource> {
    if let Some(source) = config.get("source").filter(|s| !s.is_null()) {
        return Ok(serde_json::from_value(source.clone())?);
    }
    match config.get("model").and_then(|m| m.as_str()) {
        Some(dir) if Path::new(dir).is_dir() => Ok(ReasonerSource {
            model: Some(dir.into()),
            ..ReasonerSource::default()
        }),
        _ => Err(Error::Invalid(format!(
            "{what}'s manifest does not say which reasoner made it; give --model DIR or \
             --checkpoint FILE --tokenizer DIR"
        ))),
    }
}

/// Resolves bfs for the run a reasoner recording will make, before it is recorded (an
/// experiment checks every analysis before any work). The plan is the one [`plan`] makes
/// on the finished run.
pub fn plan_for_recording(
    recording: &record_reasoner::Plan,
    opts: &Options,
    device: &Device,
) -> Result<Plan> {
    let what = "the reasoner recording";
    let records = questions_in(&recording.config, what, opts)?;
    let source = if is_empty(&opts.source) {
        source_in(&recording.config, what)?
    } else {
        opts.source.clone()
    };
    resolve(records, &source, opts, device)
}

/// Loads the model and checks every question against it, before any work.
fn resolve(
    mut records: Vec<Record>,
    source: &ReasonerSource,
    opts: &Options,
    device: &Device,
) -> Result<Plan> {
    if opts.thoughts > MAX_THOUGHTS {
        return Err(Error::Invalid(format!(
            "thoughts = {} is more than {MAX_THOUGHTS}; ProsQA questions need at most 6",
            opts.thoughts
        )));
    }
    if let Some(n) = opts.limit {
        records.truncate(n);
    }
    if records.is_empty() {
        return Err(Error::Invalid(
            "no questions to analyse (the data is empty, or limit = 0)".into(),
        ));
    }
    let reasoner = source.load(device)?;
    let (model, format) = (&reasoner.loaded.model, reasoner.format.as_ref());
    for (i, record) in records.iter().enumerate() {
        check_question(model, format, record, opts.thoughts)
            .map_err(|e| Error::Invalid(format!("question {i}: {e}")))?;
    }
    let frontier: Vec<usize> = (0..=opts.thoughts).map(|k| format.named_hop(k)).collect();
    let weights = reasoner
        .loaded
        .weight_files
        .iter()
        .map(|p| hash_file(p))
        .collect::<Result<Vec<_>>>()?;
    let model = ModelInfo {
        id: format!("reasoner ({})", reasoner.source.display()),
        weights,
    };
    let mut options = serde_json::to_value(opts)?;
    if let serde_json::Value::Object(map) = &mut options {
        map.insert(
            "resolved".into(),
            serde_json::json!({
                "model": model,
                "questions": records.len(),
                "frontier_depths": frontier,
            }),
        );
    }
    let identity = Identity {
        analysis: "bfs",
        key: "bfs".into(),
        options,
        seed: 0,
    };
    Ok(Plan {
        reasoner,
        records,
        thoughts: opts.thoughts,
        frontier,
        model,
        identity,
    })
}

pub fn run(_run: &Run, plan: &Plan, ctx: &Ctx) -> Result<Output> {
    ctx.progress.set_length(plan.records.len() as u64);
    let questions = branch_all(
        &plan.reasoner.loaded.model,
        plan.reasoner.format.as_ref(),
        &plan.records,
        plan.thoughts,
        ctx,
    )?;
    outputs(&questions, &plan.frontier)
}

/// Branches every question at k = 0..=thoughts; stops between questions on Ctrl-C.
pub fn branch_all(
    model: &Gpt2,
    format: &dyn QuestionFormat,
    records: &[Record],
    thoughts: usize,
    ctx: &Ctx,
) -> Result<Vec<QuestionBranches>> {
    let mut out = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        ctx.check()?;
        let branches = branch_thoughts(model, format, record, thoughts, true)?;
        let chains = branches
            .iter()
            .map(|b| {
                let chain = format.read_chain(record, &b.generated);
                DecodedChain {
                    category: classify_chain(record, &chain),
                    text: chain_text(record, &chain),
                    tokens: b.generated.clone(),
                }
            })
            .collect();
        out.push(QuestionBranches {
            sample: i as u32,
            record: record.clone(),
            values: branches.into_iter().map(|b| b.node_values).collect(),
            chains,
        });
        ctx.progress.inc(1);
    }
    Ok(out)
}

/// Every table and figure; `frontier[k]` is the depth of the frontier after k thoughts.
/// The figures are drawn from the tables as the report reads them.
pub fn outputs(questions: &[QuestionBranches], frontier: &[usize]) -> Result<Output> {
    let steps: Vec<usize> = FIGURE_STEPS
        .iter()
        .copied()
        .filter(|&k| k < frontier.len())
        .collect();
    let nodes = nodes_table(questions, frontier)?;
    let chains = chains_table(questions)?;
    let rows = node_rows(&nodes)?;
    let mass = mass_summaries(&question_masses(&rows));
    let heights = height_summaries(&rows, &steps);
    let top = topk_rows(questions, frontier, &steps, TOP)?;
    let shares = chain_shares(&chains)?;
    let plot = |e: plots::PlotError| Error::Invalid(e.to_string());
    let figures = vec![
        (
            "bfs-mass".to_string(),
            plots::bfs::mass(&mass).map_err(plot)?,
        ),
        (
            "bfs-entropy".into(),
            plots::bfs::entropy(&mass).map_err(plot)?,
        ),
        (
            "bfs-height".into(),
            plots::bfs::height(&heights).map_err(plot)?,
        ),
        ("bfs-topk".into(), plots::bfs::topk(&top).map_err(plot)?),
        (
            "bfs-chains".into(),
            plots::bfs::chains(&shares).map_err(plot)?,
        ),
    ];
    Ok(Output {
        tables: vec![
            ("bfs_nodes".into(), nodes),
            (
                "bfs_mass".into(),
                mass_table(&mass_rows(questions, frontier)?)?,
            ),
            (
                "bfs_height".into(),
                height_table(&height_rows(questions, frontier, &steps)?)?,
            ),
            ("bfs_topk".into(), topk_table(&top)?),
            ("bfs_chains".into(), chains),
        ],
        plots: figures,
        samples_used: questions.len() as u64,
    })
}

/// After [`super::write`]: a run made by bfs alone is complete once its tables are written.
pub fn finish(run: &mut Run, plan: &Plan, seconds: f64) -> Result<()> {
    if run.manifest().kind != KIND {
        return Ok(());
    }
    let m = run.manifest_mut();
    m.samples = plan.records.len() as u64;
    m.timings.insert("bfs".into(), seconds);
    m.status = STATUS_COMPLETE.into();
    run.write_manifest()
}

// ---------------------------------------------------------------- report

/// The report's section: where the next step's mass goes after k thoughts, whether the
/// frontier's value favours nodes that lead to the target, what the continuations are.
/// Numbers come from `bfs_mass`, intervals from `bfs_nodes` and `bfs_chains`.
pub fn report(run: &Run, record: &AnalysisRecord) -> Result<Section> {
    let mass_table = run.table("bfs_mass")?;
    let rows = node_rows(&run.table("bfs_nodes")?)?;
    let mass = mass_summaries(&question_masses(&rows));
    check_against_table(&mass, &mass_table)?;
    let shares = chain_shares(&run.table("bfs_chains")?)?;
    let frontier: Vec<usize> = record
        .options
        .pointer("/resolved/frontier_depths")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let model = record
        .options
        .pointer("/resolved/model/id")
        .and_then(|v| v.as_str())
        .unwrap_or("the model");
    let mut findings = Vec::new();
    let shown: Vec<&MassSummary> = mass
        .iter()
        .filter(|m| FIGURE_STEPS.contains(&(m.step as usize)))
        .collect();
    let shown = if shown.is_empty() {
        mass.iter().take(1).collect()
    } else {
        shown
    };
    for m in shown {
        findings.push(mass_finding(m, &frontier));
    }
    let steps: Vec<usize> = FIGURE_STEPS.to_vec();
    let heights = height_summaries(&rows, &steps);
    if let Some(f) = height_finding(&heights) {
        findings.push(f);
    }
    if let Some(f) = chains_finding(&shares) {
        findings.push(f);
    }
    Ok(Section {
        title: "BFS in continuous thoughts".into(),
        findings,
        tables: vec![per_k_table(&mass, &shares, &frontier)],
        plots: [
            "bfs-mass",
            "bfs-entropy",
            "bfs-height",
            "bfs-topk",
            "bfs-chains",
        ]
        .iter()
        .map(|p| p.to_string())
        .filter(|p| record.plots.contains(p))
        .collect(),
        note: format!(
            "{model} is switched back to language after k = 0..K continuous thoughts; a \
             node's value is the probability that the next step starts with it (Coconut \
             paper, section 5). F_d: the frontier, the nodes at depth d from the root that \
             the next step names. Branch entropy: entropy of the frontier's values \
             normalised, over questions whose frontier holds mass. Intervals: 95% percentile \
             bootstrap over questions ({BOOTSTRAP_RESAMPLES} resamples, seed \
             {BOOTSTRAP_SEED}); node values are pooled within a resampled question."
        ),
    })
}

/// The means the report quotes are `bfs_mass`'s; a table that disagrees with `bfs_nodes`
/// was edited or made by another version, and is said so rather than reported.
fn check_against_table(mass: &[MassSummary], table: &polars::prelude::DataFrame) -> Result<()> {
    let frontier = table
        .column("mass_frontier")?
        .cast(&polars::prelude::DataType::Float64)?;
    let frontier: Vec<Option<f64>> = frontier.f64()?.iter().collect();
    if frontier.len() != mass.len()
        || frontier
            .iter()
            .zip(mass)
            .any(|(t, m)| t.is_none_or(|t| (t - m.frontier.mean).abs() > 1e-9))
    {
        return Err(Error::Invalid(
            "tables/bfs_mass.parquet does not agree with tables/bfs_nodes.parquet; rerun bfs"
                .into(),
        ));
    }
    Ok(())
}

fn frontier_name(frontier: &[usize], k: u16) -> String {
    frontier
        .get(k as usize)
        .map_or("the frontier".into(), |d| format!("F_{d}"))
}

fn ci(i: &Interval) -> String {
    format!("95% CI [{:.2}, {:.2}]", i.low + 0.0, i.high + 0.0)
}

fn after(k: u16) -> String {
    if k == 1 {
        "after 1 thought".into()
    } else {
        format!("after {k} thoughts")
    }
}

fn mass_finding(m: &MassSummary, frontier: &[usize]) -> String {
    let f = frontier_name(frontier, m.step);
    let entropy = m.branch_entropy.map_or(
        "no question's frontier holds mass, so no branch entropy".into(),
        |h| {
            format!(
                "branch entropy over {f} {:.2} nats ({}, {} questions)",
                h.mean,
                ci(&h),
                m.entropy_questions
            )
        },
    );
    let mut s = after(m.step);
    s[..1].make_ascii_uppercase();
    format!(
        "{s}, {:.2} of the next-step probability is on the frontier {f} ({}, {} questions), \
         {:.2} on other nodes of the graph and {:.2} on tokens that start no node; {entropy}.",
        m.frontier.mean,
        ci(&m.frontier),
        m.questions,
        m.other_nodes.mean,
        m.non_node.mean
    )
}

/// Mean value of frontier nodes that lead to the target against those that do not,
/// pooled over heights, at the first figure step with both kinds.
fn height_finding(heights: &[HeightSummary]) -> Option<String> {
    let pooled = |k: u16, reaches: bool| -> Option<(f64, usize)> {
        let mine: Vec<&HeightSummary> = heights
            .iter()
            .filter(|h| h.step == k && h.reaches_target == reaches)
            .collect();
        let nodes: usize = mine.iter().map(|h| h.nodes).sum();
        (nodes > 0).then(|| {
            let sum: f64 = mine.iter().map(|h| h.value.mean * h.nodes as f64).sum();
            (sum / nodes as f64, nodes)
        })
    };
    let k = FIGURE_STEPS
        .iter()
        .map(|&k| k as u16)
        .find(|&k| pooled(k, true).is_some() && pooled(k, false).is_some())?;
    let (yes, n_yes) = pooled(k, true)?;
    let (no, n_no) = pooled(k, false)?;
    let by_height = |reaches: bool| -> String {
        heights
            .iter()
            .filter(|h| h.step == k && h.reaches_target == reaches)
            .map(|h| {
                format!(
                    "{:.3} at height {} ({} nodes, {})",
                    h.value.mean,
                    h.height,
                    h.nodes,
                    ci(&h.value)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    Some(format!(
        "{}, frontier nodes that lead to the target have a mean value of {yes:.3} ({n_yes} \
         nodes: {}) and those that do not {no:.3} ({n_no} nodes: {}).",
        {
            let mut s = after(k);
            s[..1].make_ascii_uppercase();
            s
        },
        by_height(true),
        by_height(false)
    ))
}

/// The continuations after the most thoughts: how many reach the target, and the most
/// common kind.
fn chains_finding(shares: &[ChainShare]) -> Option<String> {
    let last = shares.iter().map(|s| s.step).max()?;
    let mine: Vec<&ChainShare> = shares.iter().filter(|s| s.step == last).collect();
    let top = mine.iter().max_by_key(|s| s.count)?;
    let reaching = [
        ChainCategory::CorrectLabel,
        ChainCategory::CorrectPath,
        ChainCategory::LongerPath,
    ];
    let reached: usize = mine
        .iter()
        .filter(|s| reaching.contains(&s.category))
        .map(|s| s.count)
        .sum();
    let mut s = after(last);
    s[..1].make_ascii_uppercase();
    Some(format!(
        "{s}, {reached} of {} greedy continuations end at the target (a correct label or \
         path); the most common kind is {} ({:.0}% of questions, 95% CI [{:.0}%, {:.0}%]).",
        top.questions,
        top.category.as_str().replace('_', " "),
        100.0 * top.share.mean,
        100.0 * top.share.low,
        100.0 * top.share.high
    ))
}

/// One row per k: the README's BFS table with intervals.
fn per_k_table(mass: &[MassSummary], shares: &[ChainShare], frontier: &[usize]) -> Table {
    let mut table = Table {
        caption: "Next-step mass and continuations after k thoughts (means over questions)".into(),
        header: [
            "k",
            "frontier",
            "mass on the frontier [95% CI]",
            "other nodes",
            "not a node",
            "branch entropy, nats [95% CI]",
            "decoded chains",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    // `+ 0.0` prints an entropy of -0 (no mass to spread) as 0.
    let with_ci = |i: &Interval| {
        format!(
            "{:.3} [{:.3}, {:.3}]",
            i.mean + 0.0,
            i.low + 0.0,
            i.high + 0.0
        )
    };
    for m in mass {
        let mut kinds: Vec<&ChainShare> = shares
            .iter()
            .filter(|s| s.step == m.step && s.count > 0)
            .collect();
        kinds.sort_by_key(|s| std::cmp::Reverse(s.count));
        let chains: Vec<String> = kinds
            .iter()
            .map(|s| format!("{} {}", s.category.as_str().replace('_', " "), s.count))
            .collect();
        table.rows.push(vec![
            m.step.to_string(),
            frontier_name(frontier, m.step),
            with_ci(&m.frontier),
            format!("{:.3}", m.other_nodes.mean),
            format!("{:.3}", m.non_node.mean),
            m.branch_entropy.as_ref().map_or("-".into(), with_ci),
            chains.join(", "),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::record_reasoner::{self, Generated};
    use crate::progress::Hidden;
    use crate::reasoner::checkpoint::{load_hf_gpt2, save_hf_gpt2};
    use crate::reasoner::format::BuiltinFormat;
    use crate::reasoner::gpt2::{random_varmap, Gpt2Config};
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    fn tiny_model(dir: &Path, vocab: usize, seed: u64) {
        let cfg = Gpt2Config {
            n_embd: 16,
            n_layer: 1,
            n_head: 2,
            // Questions spelled with the 500-token test BPE run to ~600 tokens.
            n_positions: 1024,
            vocab_size: vocab,
            layer_norm_epsilon: 1e-5,
        };
        let varmap = random_varmap(&cfg, seed, &Device::Cpu).unwrap();
        save_hf_gpt2(dir, &cfg, &varmap).unwrap();
    }

    fn setup(dir: &Path) -> (PathBuf, PathBuf) {
        let data = dir.join("q.json");
        prosqa::save(&data, &prosqa::generate(3, 21)).unwrap();
        let model = dir.join("model");
        tiny_model(&model, BuiltinFormat::default().vocab().len(), 3);
        (data, model)
    }

    fn options(data: Option<&Path>, model: Option<&Path>, thoughts: usize) -> Options {
        Options {
            source: ReasonerSource {
                model: model.map(Path::to_path_buf),
                ..ReasonerSource::default()
            },
            data: data.map(Path::to_path_buf),
            thoughts,
            ..Options::default()
        }
    }

    /// What the command does: open or create, plan, run, write, finish.
    fn bfs_in(dir: &Path, opts: &Options) -> Result<Run> {
        let (mut run, plan) = open_or_create(dir, opts, &Device::Cpu)?;
        let stop = AtomicBool::new(false);
        let out = super::run(&run, &plan, &Ctx::new(&Hidden, &stop))?;
        super::super::write(&mut run, &plan.identity, out, Instant::now())?;
        finish(&mut run, &plan, 0.0)?;
        Ok(run)
    }

    /// A run folder with only a manifest of `kind` and `config`, finished.
    fn bare_run(dir: &Path, kind: &str, config: serde_json::Value) -> Run {
        let m = Manifest::new(
            kind,
            config,
            0,
            ModelInfo {
                id: "x".into(),
                weights: Vec::new(),
            },
        );
        let (mut run, _) = Run::create_or_resume(dir, m).unwrap();
        run.manifest_mut().status = STATUS_COMPLETE.into();
        run.write_manifest().unwrap();
        run
    }

    #[test]
    fn writes_every_table_and_plot_for_three_questions() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, model) = setup(tmp.path());
        let run_dir = tmp.path().join("run");
        let opts = options(Some(&data), Some(&model), 3);
        let r = bfs_in(&run_dir, &opts).unwrap();
        assert_eq!(r.manifest().kind, "bfs");
        assert_eq!(r.manifest().status, STATUS_COMPLETE);
        assert_eq!(
            r.tables().unwrap(),
            [
                "bfs_chains",
                "bfs_height",
                "bfs_mass",
                "bfs_nodes",
                "bfs_topk"
            ]
        );
        let records = prosqa::load(&data).unwrap();
        let nodes: usize = records.iter().map(|q| q.idx_to_symbol.len()).sum();
        let df = r.table("bfs_nodes").unwrap();
        assert_eq!(df.height(), nodes * 4);
        let chains = r.table("bfs_chains").unwrap();
        assert_eq!(chains.height(), 3 * 4);
        let allowed: Vec<&str> = ChainCategory::ALL.iter().map(|c| c.as_str()).collect();
        assert!(chains
            .column("category")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .all(|c| c.is_some_and(|c| allowed.contains(&c))));
        let mass = r.table("bfs_mass").unwrap();
        assert_eq!(mass.height(), 4);
        for name in [
            "bfs-height",
            "bfs-topk",
            "bfs-mass",
            "bfs-entropy",
            "bfs-chains",
        ] {
            let svg =
                std::fs::read_to_string(run_dir.join("plots").join(format!("{name}.svg"))).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{name}");
        }
        // Rerunning the same command resumes (rewrites) the same run, and so does the run
        // alone: it knows its questions and its model.
        bfs_in(&run_dir, &opts).unwrap();
        bfs_in(&run_dir, &options(None, None, 1)).unwrap();
        let r = Run::open(&run_dir).unwrap();
        assert_eq!(r.table("bfs_chains").unwrap().height(), 3 * 2);
        assert_eq!(r.manifest().analyses.len(), 1);
        // Another analysis' run keeps its manifest and gains the tables.
        let other = tmp.path().join("recorded");
        bare_run(&other, "record reasoner", serde_json::json!({}));
        let r = bfs_in(&other, &options(Some(&data), Some(&model), 1)).unwrap();
        assert_eq!(r.manifest().kind, "record reasoner");
        assert_eq!(r.table("bfs_chains").unwrap().height(), 3 * 2);
        // ... unless it was recorded on another data file.
        let elsewhere = tmp.path().join("elsewhere");
        bare_run(
            &elsewhere,
            "record reasoner",
            serde_json::json!({ "data": tmp.path().join("other.json") }),
        );
        let err = bfs_in(&elsewhere, &options(Some(&data), Some(&model), 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sample` ids would not match"), "{err}");
    }

    #[test]
    fn a_gpt2_bpe_model_reads_the_frontier_at_hop_k() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, _) = setup(tmp.path());
        // A GPT-2 folder with its tokenizer beside the weights: 500 BPE tokens + 3 latent.
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bpe");
        let model = tmp.path().join("gpt2");
        tiny_model(&model, 503, 3);
        for f in ["vocab.json", "merges.txt"] {
            std::fs::copy(fixtures.join(f), model.join(f)).unwrap();
        }
        let run_dir = tmp.path().join("run");
        let r = bfs_in(&run_dir, &options(Some(&data), Some(&model), 2)).unwrap();
        // The frontier depths are the analysis's (they depend on the model's format).
        assert_eq!(
            r.manifest().analysis("bfs").unwrap().options["resolved"]["frontier_depths"],
            serde_json::json!([0, 1, 2])
        );
        let nodes = r.table("bfs_nodes").unwrap();
        let col = |n: &str| nodes.column(n).unwrap().clone();
        let step: Vec<u16> = col("step").u16().unwrap().iter().flatten().collect();
        let depth: Vec<Option<u32>> = col("depth").u32().unwrap().iter().collect();
        let on: Vec<bool> = col("in_frontier")
            .bool()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        for i in 0..nodes.height() {
            assert_eq!(on[i], depth[i] == Some(step[i] as u32), "row {i}");
        }
        // Multi-token names: every value is a product of probabilities, at most 1 in sum.
        let values: Vec<f64> = col("value").f64().unwrap().iter().flatten().collect();
        assert!(values.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(r.table("bfs_chains").unwrap().height(), 3 * 3);
    }

    #[test]
    fn a_model_of_another_vocabulary_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, _) = setup(tmp.path());
        let model = tmp.path().join("small");
        tiny_model(&model, 40, 3);
        let err = bfs_in(
            &tmp.path().join("run"),
            &options(Some(&data), Some(&model), 1),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("has 40 embedding rows"), "{err}");
        assert!(!tmp.path().join("run").exists());
    }

    #[test]
    fn an_interrupt_stops_between_questions() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, model) = setup(tmp.path());
        let loaded = load_hf_gpt2(&model, &Device::Cpu).unwrap();
        let stop = AtomicBool::new(true);
        let err = branch_all(
            &loaded.model,
            &BuiltinFormat::default(),
            &prosqa::load(&data).unwrap(),
            2,
            &Ctx::new(&Hidden, &stop),
        )
        .unwrap_err();
        assert!(matches!(err, crate::Error::Interrupted));
    }

    #[test]
    fn a_reasoner_run_needs_no_data_and_provenance_names_the_model_used() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, coconut) = setup(tmp.path());
        let cot = tmp.path().join("cot");
        tiny_model(&cot, BuiltinFormat::default().vocab().len(), 4);
        let rec = record_reasoner::Options {
            source: ReasonerSource {
                model: Some(coconut.clone()),
                ..ReasonerSource::default()
            },
            generate: Some(Generated { n: 3, seed: 5 }),
            thoughts: 2,
            sites: vec!["thought".into()],
            ..record_reasoner::Options::default()
        };
        let rec_plan = record_reasoner::plan(&rec, &Device::Cpu).unwrap();
        // Planned before the recording exists (as an experiment does), then on the run.
        let before = plan_for_recording(&rec_plan, &options(None, None, 2), &Device::Cpu).unwrap();
        let stop = AtomicBool::new(false);
        let dir = tmp.path().join("reasoner");
        record_reasoner::run(&dir, &rec_plan, &Ctx::new(&Hidden, &stop)).unwrap();
        let after = plan(
            &Run::open(&dir).unwrap(),
            &options(None, None, 2),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(before.identity.options, after.identity.options);
        assert_eq!(before.records, after.records);

        let used = |run: &Run| {
            run.manifest().analysis("bfs").unwrap().options["resolved"]["model"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let run = bfs_in(&dir, &options(None, None, 2)).unwrap();
        assert_eq!(run.manifest().kind, "record reasoner");
        assert!(
            used(&run).contains(coconut.to_str().unwrap()),
            "{}",
            used(&run)
        );
        assert_eq!(run.table("bfs_chains").unwrap().height(), 3 * 3);
        // Another model: its name, not the run's, is in the analysis's provenance.
        let run = bfs_in(&dir, &options(None, Some(&cot), 2)).unwrap();
        assert!(used(&run).contains(cot.to_str().unwrap()), "{}", used(&run));
        let meta = run.manifest().analysis("bfs").unwrap().provenance();
        let options = &meta
            .iter()
            .find(|(k, _)| k == "latentlens.analysis_options")
            .unwrap()
            .1;
        assert!(options.contains(cot.to_str().unwrap()), "{options}");
        // Generated questions have no file to check --data against: refused.
        let err = bfs_in(&dir, &options_with_data(tmp.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("generated questions"), "{err}");
    }

    fn options_with_data(dir: &Path) -> Options {
        let data = dir.join("q.json");
        options(Some(&data), None, 1)
    }

    #[test]
    fn a_diffusion_run_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, model) = setup(tmp.path());
        let dir = tmp.path().join("diffusion");
        bare_run(&dir, "record diffusion", serde_json::json!({}));
        let before = std::fs::read(dir.join("manifest.json")).unwrap();
        let err = bfs_in(&dir, &options(Some(&data), Some(&model), 1))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("bfs needs a reasoner run") && err.contains("`record diffusion`"),
            "{err}"
        );
        assert!(!dir.join("tables").exists() && !dir.join("plots").exists());
        assert_eq!(std::fs::read(dir.join("manifest.json")).unwrap(), before);
    }

    #[test]
    fn an_unfinished_recording_is_refused_unless_partial_is_allowed() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, model) = setup(tmp.path());
        let dir = tmp.path().join("run");
        let mut run = bare_run(&dir, "record reasoner", serde_json::json!({}));
        run.manifest_mut().status = crate::store::STATUS_RUNNING.into();
        run.write_manifest().unwrap();
        let mut opts = options(Some(&data), Some(&model), 1);
        let err = bfs_in(&dir, &opts).err().unwrap().to_string();
        assert!(err.contains("--allow-partial"), "{err}");
        opts.allow_partial = true;
        bfs_in(&dir, &opts).unwrap();
    }

    #[test]
    fn the_report_quotes_the_tables() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, model) = setup(tmp.path());
        let run = bfs_in(
            &tmp.path().join("run"),
            &options(Some(&data), Some(&model), 2),
        )
        .unwrap();
        let record = run.manifest().analysis("bfs").unwrap();
        let section = super::super::report_section(&run, record).unwrap().unwrap();
        let mass = run.table("bfs_mass").unwrap();
        let frontier = mass
            .column("mass_frontier")
            .unwrap()
            .f64()
            .unwrap()
            .get(1)
            .unwrap();
        // The built-in format names the node one hop past the thoughts: F_2 after one.
        let after_one = &section.findings[0];
        assert!(
            after_one.starts_with("After 1 thought, ")
                && after_one.contains(&format!("{frontier:.2} of the next-step probability"))
                && after_one.contains("frontier F_2 (95% CI ["),
            "{after_one}"
        );
        assert!(section.findings[1].starts_with("After 2 thoughts"));
        let table = &section.tables[0];
        assert_eq!(table.rows.len(), 3);
        assert_eq!(table.rows[1][1], "F_2");
        assert!(table.rows[1][2].starts_with(&format!("{frontier:.3} [")));
        assert_eq!(
            section.plots,
            [
                "bfs-mass",
                "bfs-entropy",
                "bfs-height",
                "bfs-topk",
                "bfs-chains"
            ]
        );
        assert!(section.note.contains("bootstrap over questions"));
        // A table edited after the fact is not reported as if it were the analysis's.
        let mut nodes = run.table("bfs_nodes").unwrap();
        let doubled: Vec<f64> = nodes
            .column("value")
            .unwrap()
            .f64()
            .unwrap()
            .iter()
            .map(|v| v.unwrap_or(0.0) * 0.5)
            .collect();
        nodes
            .with_column(polars::prelude::Column::new("value".into(), doubled))
            .unwrap();
        run.write_table("bfs_nodes", &mut nodes).unwrap();
        let err = report(&run, record).unwrap_err().to_string();
        assert!(err.contains("does not agree"), "{err}");
    }

    #[test]
    fn options_take_the_flag_names_and_refuse_unknown_keys() {
        let o: Options = toml::from_str("model = \"m\"\nthoughts = 2\nlimit = 5").unwrap();
        assert_eq!(o.source.model, Some(PathBuf::from("m")));
        assert_eq!((o.thoughts, o.limit, o.allow_partial), (2, Some(5), false));
        let err = toml::from_str::<Options>("thougths = 2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("thougths"), "{err}");
        assert_eq!(toml::from_str::<Options>("").unwrap(), Options::default());
    }
}
