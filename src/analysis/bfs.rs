//! The breadth-first-search analysis of continuous thoughts (Coconut paper, Hao et al. 2024,
//! section 5): after k thoughts the model is switched back to language, and the probability
//! that its next step starts with a node (the node's *value*) shows which nodes the thoughts
//! hold. Nodes on the BFS frontier, nodes that lead to the target and low nodes are what
//! a latent breadth-first search would favour.
//!
//! Plain numbers in, tables out: the values come from `reasoner::branch`, the graph
//! measures from `data::prosqa`. Tables:
//! - `bfs_nodes`: one row per (sample, step = k, node), what probes join to;
//! - `bfs_mass`: per k, where the next-step mass goes, and the branch entropy;
//! - `bfs_height` (paper Fig. 9): mean frontier value by node height;
//! - `bfs_topk` (Fig. 8): cumulative top-1/2/3 frontier value by percentile of questions;
//! - `bfs_chains` (Fig. 5): what the greedy continuation after k thoughts is.

use polars::prelude::{df, DataFrame, NamedFrom, Series};

use crate::data::prosqa::Record;
use crate::reasoner::format::Chain;
use crate::{Error, Result};

/// The graph measures of one node of a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFact {
    /// Shortest distance (hops) from the root; `None` when unreachable.
    pub depth: Option<usize>,
    /// Shortest distance down to a leaf: the height of the paper's value-vs-height figure
    /// ("its shortest distance to any leaf node"; Fig. 9 in v1, Fig. 7 later).
    pub height_min: usize,
    /// Longest distance down to a leaf: the `h` of the paper's search-tree illustration
    /// (its caption says "longest distance to any leaf nodes").
    pub height_max: usize,
    /// Whether the target can be reached from this node (the target itself included).
    pub reaches_target: bool,
}

/// Depth, both heights and target reachability of every node of `record`.
pub fn node_facts(record: &Record) -> Vec<NodeFact> {
    let graph = record.graph();
    let depth = graph.distances_from(record.root);
    let (h_min, h_max) = (graph.shortest_to_leaf(), graph.height());
    (0..graph.len())
        .map(|v| NodeFact {
            depth: depth[v],
            height_min: h_min[v],
            height_max: h_max[v],
            reaches_target: graph.distances_from(v)[record.target].is_some(),
        })
        .collect()
}

/// The frontier after k thoughts: the depth of the nodes the first spoken step names,
/// `frontier[k]` (`QuestionFormat::named_hop(k)`: k for Coconut's text, "Every X is a Y"
/// with X at depth k; k + 1 for the built-in format, which names the step's new node).
fn frontier_at(frontier: &[usize], k: usize) -> Result<usize> {
    frontier.get(k).copied().ok_or_else(|| {
        Error::Invalid(format!(
            "no frontier depth for {k} thoughts (given for 0..{})",
            frontier.len()
        ))
    })
}

/// What a greedy continuation after k thoughts says (paper Fig. 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainCategory {
    /// Valid edges from the root to the target, as short as the shortest path.
    CorrectPath,
    /// Valid edges to the target, longer than the shortest path.
    LongerPath,
    /// A step that is not a node, an edge that does not exist, or a first step the root
    /// cannot reach.
    Hallucination,
    /// A valid path that ends at another node.
    WrongTarget,
    /// No steps, only the answer, and it is the target.
    CorrectLabel,
    /// No steps, and the answer is not the target (or unreadable).
    IncorrectLabel,
}

impl ChainCategory {
    pub const ALL: [ChainCategory; 6] = [
        ChainCategory::CorrectLabel,
        ChainCategory::IncorrectLabel,
        ChainCategory::CorrectPath,
        ChainCategory::LongerPath,
        ChainCategory::Hallucination,
        ChainCategory::WrongTarget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChainCategory::CorrectPath => "correct_path",
            ChainCategory::LongerPath => "longer_path",
            ChainCategory::Hallucination => "hallucination",
            ChainCategory::WrongTarget => "wrong_target",
            ChainCategory::CorrectLabel => "correct_label",
            ChainCategory::IncorrectLabel => "incorrect_label",
        }
    }
}

/// Classifies a continuation. The steps after k thoughts start mid-way: the first named
/// node stands for a path from the root as short as its depth, so a chain's length is
/// depth(first) + its hops. The answer is the last node (added as a hop when it differs
/// from the last step).
pub fn classify_chain(record: &Record, chain: &Chain) -> ChainCategory {
    if chain.steps.is_empty() {
        return if chain.answer == Some(record.target) {
            ChainCategory::CorrectLabel
        } else {
            ChainCategory::IncorrectLabel
        };
    }
    let graph = record.graph();
    let named: Option<Vec<usize>> = chain
        .steps
        .iter()
        .chain(std::iter::once(&chain.answer))
        .map(|v| v.filter(|&v| v < graph.len()))
        .collect();
    let Some(mut nodes) = named else {
        return ChainCategory::Hallucination;
    };
    let answer = nodes.pop().unwrap_or(record.root);
    if nodes.last() != Some(&answer) {
        nodes.push(answer);
    }
    let depth = graph.distances_from(record.root);
    let Some(first_depth) = depth[nodes[0]] else {
        return ChainCategory::Hallucination;
    };
    if nodes
        .windows(2)
        .any(|w| !graph.children[w[0]].contains(&w[1]))
    {
        return ChainCategory::Hallucination;
    }
    if answer != record.target {
        return ChainCategory::WrongTarget;
    }
    if Some(first_depth + nodes.len() - 1) == depth[record.target] {
        ChainCategory::CorrectPath
    } else {
        ChainCategory::LongerPath
    }
}

/// A greedy continuation, read and classified.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedChain {
    pub category: ChainCategory,
    /// The chain as read, for people: `a -> b -> ? => answer` (`?`: not a node).
    pub text: String,
    /// The generated token ids (stop token included when reached).
    pub tokens: Vec<u32>,
}

/// A chain in node names: steps joined by `->`, then `=>` and the answer; `?` for a name
/// that is not a node of the question.
pub fn chain_text(record: &Record, chain: &Chain) -> String {
    let name = |v: &Option<usize>| {
        v.and_then(|v| record.idx_to_symbol.get(v))
            .map_or("?", String::as_str)
    };
    let steps: Vec<&str> = chain.steps.iter().map(name).collect();
    let answer = name(&chain.answer);
    if steps.is_empty() {
        format!("=> {answer}")
    } else {
        format!("{} => {answer}", steps.join(" -> "))
    }
}

/// One question's branches: the node values and continuation after k = 0..K thoughts.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionBranches {
    /// Index of the record in the data file (the `sample` of a recorded run).
    pub sample: u32,
    pub record: Record,
    /// `values[k][node]`.
    pub values: Vec<Vec<f64>>,
    /// `chains[k]`; empty when no continuation was decoded.
    pub chains: Vec<DecodedChain>,
}

impl QuestionBranches {
    /// Values must be probabilities, one per node, summing to at most 1 per k.
    pub fn validate(&self) -> Result<()> {
        let n = self.record.idx_to_symbol.len();
        for (k, row) in self.values.iter().enumerate() {
            let bad = |what: String| {
                Error::Invalid(format!("sample {} after {k} thoughts: {what}", self.sample))
            };
            if row.len() != n {
                return Err(bad(format!("{} values for {n} nodes", row.len())));
            }
            if let Some((v, x)) = row
                .iter()
                .enumerate()
                .find(|(_, x)| !(x.is_finite() && (0.0..=1.0).contains(*x)))
            {
                return Err(bad(format!("node {v} has value {x}, not a probability")));
            }
            let total: f64 = row.iter().sum();
            if total > 1.0 + 1e-6 {
                return Err(bad(format!(
                    "node values sum to {total} > 1 (node names must not be prefixes of \
                     each other)"
                )));
            }
        }
        if !self.chains.is_empty() && self.chains.len() != self.values.len() {
            return Err(Error::Invalid(format!(
                "sample {}: {} continuations for {} branches",
                self.sample,
                self.chains.len(),
                self.values.len()
            )));
        }
        Ok(())
    }

    /// Values after k thoughts of the nodes at `depth`.
    fn frontier(&self, facts: &[NodeFact], k: usize, depth: usize) -> Vec<f64> {
        facts
            .iter()
            .zip(&self.values[k])
            .filter(|(f, _)| f.depth == Some(depth))
            .map(|(_, &x)| x)
            .collect()
    }
}

/// Entropy (nats) of the values normalised to a distribution; `None` for no nodes or no
/// mass.
pub fn branch_entropy(values: &[f64]) -> Option<f64> {
    let total: f64 = values.iter().sum();
    if values.is_empty() || total <= 0.0 {
        return None;
    }
    Some(
        -values
            .iter()
            .map(|&x| x / total)
            .filter(|&p| p > 0.0)
            .map(|p| p * p.ln())
            .sum::<f64>(),
    )
}

/// Sum of the `j` largest values for j = 1..=top (all of them when there are fewer).
pub fn top_cumulative(values: &[f64], top: usize) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    (1..=top).map(|j| sorted.iter().take(j).sum()).collect()
}

fn validate_all(questions: &[QuestionBranches]) -> Result<()> {
    questions.iter().try_for_each(QuestionBranches::validate)
}

/// `bfs_nodes`: one row per (sample, step, node).
pub fn nodes_table(questions: &[QuestionBranches], frontier: &[usize]) -> Result<DataFrame> {
    validate_all(questions)?;
    let mut c = NodeColumns::default();
    for q in questions {
        let facts = node_facts(&q.record);
        for (k, row) in q.values.iter().enumerate() {
            let at = frontier_at(frontier, k)?;
            for (v, (fact, &value)) in facts.iter().zip(row).enumerate() {
                c.sample.push(q.sample);
                c.step.push(k as u16);
                c.node.push(v as u32);
                c.name.push(q.record.idx_to_symbol[v].clone());
                c.depth.push(fact.depth.map(|d| d as u32));
                c.height_min.push(fact.height_min as u32);
                c.height_max.push(fact.height_max as u32);
                c.reaches_target.push(fact.reaches_target);
                c.in_frontier.push(fact.depth == Some(at));
                c.value.push(value);
            }
        }
    }
    Ok(df!(
        "sample" => c.sample,
        "step" => c.step,
        "node" => c.node,
        "name" => c.name,
        "depth" => c.depth,
        "height_min" => c.height_min,
        "height_max" => c.height_max,
        "reaches_target" => c.reaches_target,
        "in_frontier" => c.in_frontier,
        "value" => c.value,
    )?)
}

#[derive(Default)]
struct NodeColumns {
    sample: Vec<u32>,
    step: Vec<u16>,
    node: Vec<u32>,
    name: Vec<String>,
    depth: Vec<Option<u32>>,
    height_min: Vec<u32>,
    height_max: Vec<u32>,
    reaches_target: Vec<bool>,
    in_frontier: Vec<bool>,
    value: Vec<f64>,
}

/// Where the next step's probability goes after k thoughts, averaged over questions.
#[derive(Debug, Clone, PartialEq)]
pub struct MassRow {
    pub step: u16,
    pub questions: u32,
    /// On frontier nodes.
    pub frontier: f64,
    /// On nodes the root reaches (frontier included).
    pub reachable: f64,
    /// On graph nodes off the frontier.
    pub other_nodes: f64,
    /// On anything that does not start with a node's name.
    pub non_node: f64,
    /// Mean branch entropy over the questions whose frontier holds mass; `None` when no
    /// question's does (past the deepest node).
    pub branch_entropy: Option<f64>,
    /// Questions the entropy is averaged over.
    pub entropy_questions: u32,
}

/// `bfs_mass` rows, one per k.
pub fn mass_rows(questions: &[QuestionBranches], frontier: &[usize]) -> Result<Vec<MassRow>> {
    validate_all(questions)?;
    let steps = questions.iter().map(|q| q.values.len()).max().unwrap_or(0);
    let mut rows = Vec::with_capacity(steps);
    for k in 0..steps {
        let (mut n, mut on_frontier, mut reachable, mut graph) = (0u32, 0.0, 0.0, 0.0);
        let (mut entropy, mut entropy_n) = (0.0, 0u32);
        for q in questions.iter().filter(|q| k < q.values.len()) {
            let facts = node_facts(&q.record);
            let f = q.frontier(&facts, k, frontier_at(frontier, k)?);
            n += 1;
            on_frontier += f.iter().sum::<f64>();
            graph += q.values[k].iter().sum::<f64>();
            reachable += facts
                .iter()
                .zip(&q.values[k])
                .filter(|(fact, _)| fact.depth.is_some())
                .map(|(_, x)| x)
                .sum::<f64>();
            if let Some(h) = branch_entropy(&f) {
                entropy += h;
                entropy_n += 1;
            }
        }
        let mean = |x: f64| x / n.max(1) as f64;
        rows.push(MassRow {
            step: k as u16,
            questions: n,
            frontier: mean(on_frontier),
            reachable: mean(reachable),
            other_nodes: mean(graph - on_frontier),
            non_node: mean(n as f64 - graph),
            branch_entropy: (entropy_n > 0).then(|| entropy / entropy_n as f64),
            entropy_questions: entropy_n,
        });
    }
    Ok(rows)
}

pub fn mass_table(rows: &[MassRow]) -> Result<DataFrame> {
    Ok(df!(
        "step" => rows.iter().map(|r| r.step).collect::<Vec<_>>(),
        "questions" => rows.iter().map(|r| r.questions).collect::<Vec<_>>(),
        "mass_frontier" => rows.iter().map(|r| r.frontier).collect::<Vec<_>>(),
        "mass_reachable" => rows.iter().map(|r| r.reachable).collect::<Vec<_>>(),
        "mass_other_nodes" => rows.iter().map(|r| r.other_nodes).collect::<Vec<_>>(),
        "mass_non_node" => rows.iter().map(|r| r.non_node).collect::<Vec<_>>(),
        "branch_entropy" => rows.iter().map(|r| r.branch_entropy).collect::<Vec<_>>(),
        "entropy_questions" => rows.iter().map(|r| r.entropy_questions).collect::<Vec<_>>(),
    )?)
}

/// Which height a row of `bfs_height` is binned by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HeightKind {
    /// Shortest distance to a leaf: the paper's definition (plotted).
    Min,
    /// Longest distance to a leaf.
    Max,
}

impl HeightKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HeightKind::Min => "min",
            HeightKind::Max => "max",
        }
    }
}

/// Mean value of the frontier nodes after `step` thoughts with one height and target
/// reachability (paper Fig. 9).
#[derive(Debug, Clone, PartialEq)]
pub struct HeightRow {
    pub step: u16,
    pub height_kind: HeightKind,
    pub height: u32,
    pub reaches_target: bool,
    pub mean_value: f64,
    pub nodes: u32,
}

/// `bfs_height` rows at the given steps, for both height definitions, sorted.
pub fn height_rows(
    questions: &[QuestionBranches],
    frontier: &[usize],
    steps: &[usize],
) -> Result<Vec<HeightRow>> {
    validate_all(questions)?;
    use std::collections::BTreeMap;
    let mut bins: BTreeMap<(u16, HeightKind, u32, bool), (f64, u32)> = BTreeMap::new();
    for q in questions {
        let facts = node_facts(&q.record);
        for &k in steps.iter().filter(|&&k| k < q.values.len()) {
            let d = frontier_at(frontier, k)?;
            for (fact, &value) in facts.iter().zip(&q.values[k]) {
                if fact.depth != Some(d) {
                    continue;
                }
                for (kind, h) in [
                    (HeightKind::Min, fact.height_min),
                    (HeightKind::Max, fact.height_max),
                ] {
                    let bin = bins
                        .entry((k as u16, kind, h as u32, fact.reaches_target))
                        .or_default();
                    bin.0 += value;
                    bin.1 += 1;
                }
            }
        }
    }
    Ok(bins
        .into_iter()
        .map(
            |((step, height_kind, height, reaches_target), (sum, n))| HeightRow {
                step,
                height_kind,
                height,
                reaches_target,
                mean_value: sum / n as f64,
                nodes: n,
            },
        )
        .collect())
}

pub fn height_table(rows: &[HeightRow]) -> Result<DataFrame> {
    Ok(df!(
        "step" => rows.iter().map(|r| r.step).collect::<Vec<_>>(),
        "height_kind" => rows.iter().map(|r| r.height_kind.as_str()).collect::<Vec<_>>(),
        "height" => rows.iter().map(|r| r.height).collect::<Vec<_>>(),
        "reaches_target" => rows.iter().map(|r| r.reaches_target).collect::<Vec<_>>(),
        "mean_value" => rows.iter().map(|r| r.mean_value).collect::<Vec<_>>(),
        "nodes" => rows.iter().map(|r| r.nodes).collect::<Vec<_>>(),
    )?)
}

/// One question's cumulative top-`top` frontier value, placed among all questions
/// (paper Fig. 8).
#[derive(Debug, Clone, PartialEq)]
pub struct TopKRow {
    pub step: u16,
    pub top: u8,
    pub sample: u32,
    pub value: f64,
    /// Share of questions (0-100] whose value is at most this one's, ranking ties by
    /// sample order.
    pub percentile: f64,
}

/// `bfs_topk` rows at the given steps for top = 1..=`top`; questions with an empty frontier
/// are left out. Sorted by (step, top, value).
pub fn topk_rows(
    questions: &[QuestionBranches],
    frontier: &[usize],
    steps: &[usize],
    top: usize,
) -> Result<Vec<TopKRow>> {
    validate_all(questions)?;
    let mut rows = Vec::new();
    for &k in steps {
        let mut per_top: Vec<Vec<(u32, f64)>> = vec![Vec::new(); top];
        for q in questions.iter().filter(|q| k < q.values.len()) {
            let f = q.frontier(&node_facts(&q.record), k, frontier_at(frontier, k)?);
            if f.is_empty() {
                continue;
            }
            for (j, v) in top_cumulative(&f, top).into_iter().enumerate() {
                per_top[j].push((q.sample, v));
            }
        }
        for (j, mut values) in per_top.into_iter().enumerate() {
            values.sort_by(|a, b| a.1.total_cmp(&b.1));
            let n = values.len() as f64;
            rows.extend(
                values
                    .into_iter()
                    .enumerate()
                    .map(|(i, (sample, value))| TopKRow {
                        step: k as u16,
                        top: (j + 1) as u8,
                        sample,
                        value,
                        percentile: 100.0 * (i + 1) as f64 / n,
                    }),
            );
        }
    }
    Ok(rows)
}

pub fn topk_table(rows: &[TopKRow]) -> Result<DataFrame> {
    Ok(df!(
        "step" => rows.iter().map(|r| r.step).collect::<Vec<_>>(),
        "top" => rows.iter().map(|r| r.top).collect::<Vec<_>>(),
        "sample" => rows.iter().map(|r| r.sample).collect::<Vec<_>>(),
        "value" => rows.iter().map(|r| r.value).collect::<Vec<_>>(),
        "percentile" => rows.iter().map(|r| r.percentile).collect::<Vec<_>>(),
    )?)
}

/// `bfs_chains`: one row per (sample, step) with its category and text.
pub fn chains_table(questions: &[QuestionBranches]) -> Result<DataFrame> {
    validate_all(questions)?;
    let (mut sample, mut step, mut category, mut text, mut tokens) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for q in questions {
        for (k, c) in q.chains.iter().enumerate() {
            sample.push(q.sample);
            step.push(k as u16);
            category.push(c.category.as_str());
            text.push(c.text.clone());
            tokens.push(Series::new("".into(), &c.tokens));
        }
    }
    Ok(df!(
        "sample" => sample,
        "step" => step,
        "category" => category,
        "text" => text,
        "tokens" => tokens,
    )?)
}

/// Per k, how many continuations fall in each category (in `ChainCategory::ALL` order).
pub fn chain_counts(questions: &[QuestionBranches]) -> Vec<[u32; 6]> {
    let steps = questions.iter().map(|q| q.chains.len()).max().unwrap_or(0);
    let mut counts = vec![[0u32; 6]; steps];
    for q in questions {
        for (k, c) in q.chains.iter().enumerate() {
            if let Some(i) = ChainCategory::ALL.iter().position(|&x| x == c.category) {
                counts[k][i] += 1;
            }
        }
    }
    counts
}

// ------------------------------------------------- summaries with intervals, from tables

/// Bootstrap resamples of every interval below; questions are resampled with replacement.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;
/// Fixed, so the report remade from the tables gives the same intervals.
pub const BOOTSTRAP_SEED: u64 = 0;

/// A mean with its 95% interval: the percentile bootstrap over questions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

/// The mean of `values` and its bootstrap interval; `groups[q]` holds the indices of the
/// values of question q (one each for a per-question number, several for pooled nodes).
/// `None` when there are no values.
pub fn interval(values: &[f64], groups: &[Vec<usize>]) -> Option<Interval> {
    if values.is_empty() || groups.is_empty() {
        return None;
    }
    let mean_of = |rows: &[usize]| rows.iter().map(|&i| values[i]).sum::<f64>() / rows.len() as f64;
    let all: Vec<usize> = groups.iter().flatten().copied().collect();
    let (low, high) = crate::analysis::metrics::bootstrap_ci(
        groups,
        BOOTSTRAP_RESAMPLES,
        BOOTSTRAP_SEED,
        &|rows| {
            if rows.is_empty() {
                f64::NAN
            } else {
                mean_of(rows)
            }
        },
    );
    Some(Interval {
        mean: mean_of(&all),
        low,
        high,
    })
}

/// The interval of one number per question.
fn per_question(values: &[f64]) -> Option<Interval> {
    let groups: Vec<Vec<usize>> = (0..values.len()).map(|i| vec![i]).collect();
    interval(values, &groups)
}

/// A row of `bfs_nodes`, read back.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub sample: u32,
    pub step: u16,
    pub depth: Option<u32>,
    pub height_min: u32,
    pub reaches_target: bool,
    pub in_frontier: bool,
    pub value: f64,
}

/// Reads `bfs_nodes` (the columns [`nodes_table`] writes).
pub fn node_rows(df: &DataFrame) -> Result<Vec<NodeRow>> {
    use polars::prelude::DataType;
    let col = |name: &str, dtype: &DataType| -> Result<polars::prelude::Column> {
        Ok(df.column(name)?.cast(dtype)?)
    };
    let sample = col("sample", &DataType::UInt32)?;
    let step = col("step", &DataType::UInt16)?;
    let depth = col("depth", &DataType::UInt32)?;
    let height = col("height_min", &DataType::UInt32)?;
    let reaches = col("reaches_target", &DataType::Boolean)?;
    let frontier = col("in_frontier", &DataType::Boolean)?;
    let value = col("value", &DataType::Float64)?;
    let (sample, step, depth, height) = (sample.u32()?, step.u16()?, depth.u32()?, height.u32()?);
    let (reaches, frontier, value) = (reaches.bool()?, frontier.bool()?, value.f64()?);
    Ok((0..df.height())
        .map(|i| NodeRow {
            sample: sample.get(i).unwrap_or(0),
            step: step.get(i).unwrap_or(0),
            depth: depth.get(i),
            height_min: height.get(i).unwrap_or(0),
            reaches_target: reaches.get(i).unwrap_or(false),
            in_frontier: frontier.get(i).unwrap_or(false),
            value: value.get(i).unwrap_or(f64::NAN),
        })
        .collect())
}

/// One question's next-step mass after `step` thoughts (what `bfs_mass` averages).
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionMass {
    pub step: u16,
    pub sample: u32,
    pub frontier: f64,
    pub reachable: f64,
    /// On any node of the graph.
    pub graph: f64,
    pub entropy: Option<f64>,
}

/// Per (step, question) masses from `bfs_nodes` rows, sorted by step then sample.
pub fn question_masses(rows: &[NodeRow]) -> Vec<QuestionMass> {
    use std::collections::BTreeMap;
    let mut by: BTreeMap<(u16, u32), Vec<&NodeRow>> = BTreeMap::new();
    for r in rows {
        by.entry((r.step, r.sample)).or_default().push(r);
    }
    by.into_iter()
        .map(|((step, sample), nodes)| {
            let frontier: Vec<f64> = nodes
                .iter()
                .filter(|n| n.in_frontier)
                .map(|n| n.value)
                .collect();
            QuestionMass {
                step,
                sample,
                frontier: frontier.iter().sum(),
                reachable: nodes
                    .iter()
                    .filter(|n| n.depth.is_some())
                    .map(|n| n.value)
                    .sum(),
                graph: nodes.iter().map(|n| n.value).sum(),
                entropy: branch_entropy(&frontier),
            }
        })
        .collect()
}

/// `bfs_mass` with 95% intervals: one row per k.
#[derive(Debug, Clone, PartialEq)]
pub struct MassSummary {
    pub step: u16,
    pub questions: usize,
    pub frontier: Interval,
    pub reachable: Interval,
    pub other_nodes: Interval,
    pub non_node: Interval,
    /// Over the questions whose frontier holds mass; `None` when none does.
    pub branch_entropy: Option<Interval>,
    pub entropy_questions: usize,
}

pub fn mass_summaries(masses: &[QuestionMass]) -> Vec<MassSummary> {
    let steps: std::collections::BTreeSet<u16> = masses.iter().map(|m| m.step).collect();
    steps
        .into_iter()
        .filter_map(|step| {
            let mine: Vec<&QuestionMass> = masses.iter().filter(|m| m.step == step).collect();
            let of = |f: &dyn Fn(&QuestionMass) -> f64| {
                per_question(&mine.iter().map(|m| f(m)).collect::<Vec<_>>())
            };
            let entropies: Vec<f64> = mine.iter().filter_map(|m| m.entropy).collect();
            Some(MassSummary {
                step,
                questions: mine.len(),
                frontier: of(&|m| m.frontier)?,
                reachable: of(&|m| m.reachable)?,
                other_nodes: of(&|m| m.graph - m.frontier)?,
                non_node: of(&|m| 1.0 - m.graph)?,
                branch_entropy: per_question(&entropies),
                entropy_questions: entropies.len(),
            })
        })
        .collect()
}

/// Mean value of the frontier nodes of one height (shortest distance to a leaf) and target
/// reachability after `step` thoughts (a `bfs_height` row with `height_kind = min`), with
/// its interval: nodes pooled, questions resampled.
#[derive(Debug, Clone, PartialEq)]
pub struct HeightSummary {
    pub step: u16,
    pub height: u32,
    pub reaches_target: bool,
    pub value: Interval,
    pub nodes: usize,
    pub questions: usize,
}

/// Height summaries at `steps` (all steps when empty), sorted as `bfs_height`: by step,
/// height, then reachability.
pub fn height_summaries(rows: &[NodeRow], steps: &[usize]) -> Vec<HeightSummary> {
    use std::collections::BTreeMap;
    let mut bins: BTreeMap<(u16, u32, bool), BTreeMap<u32, Vec<f64>>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.in_frontier) {
        if !steps.is_empty() && !steps.contains(&(r.step as usize)) {
            continue;
        }
        bins.entry((r.step, r.height_min, r.reaches_target))
            .or_default()
            .entry(r.sample)
            .or_default()
            .push(r.value);
    }
    bins.into_iter()
        .filter_map(|((step, height, reaches_target), by_question)| {
            let mut values = Vec::new();
            let mut groups = Vec::new();
            for v in by_question.values() {
                groups.push((values.len()..values.len() + v.len()).collect());
                values.extend_from_slice(v);
            }
            Some(HeightSummary {
                step,
                height,
                reaches_target,
                nodes: values.len(),
                questions: groups.len(),
                value: interval(&values, &groups)?,
            })
        })
        .collect()
}

/// The share of questions whose greedy continuation after `step` thoughts falls in
/// `category`, with its interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainShare {
    pub step: u16,
    pub category: ChainCategory,
    pub count: usize,
    pub questions: usize,
    pub share: Interval,
}

/// Reads `bfs_chains` into per-step shares of every category (in `ChainCategory::ALL`
/// order, zero shares included).
pub fn chain_shares(chains: &DataFrame) -> Result<Vec<ChainShare>> {
    use polars::prelude::DataType;
    let step = chains.column("step")?.cast(&DataType::UInt16)?;
    let category = chains.column("category")?.cast(&DataType::String)?;
    let (step, category) = (step.u16()?, category.str()?);
    let mut by_step: std::collections::BTreeMap<u16, Vec<ChainCategory>> = Default::default();
    for i in 0..chains.height() {
        let name = category.get(i).unwrap_or_default();
        let c = ChainCategory::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "bfs_chains row {i}: category `{name}` is not one of {}",
                    ChainCategory::ALL.map(ChainCategory::as_str).join(", ")
                ))
            })?;
        by_step.entry(step.get(i).unwrap_or(0)).or_default().push(c);
    }
    let mut out = Vec::new();
    for (step, cats) in by_step {
        for c in ChainCategory::ALL {
            let hits: Vec<f64> = cats.iter().map(|&x| f64::from(u8::from(x == c))).collect();
            if let Some(share) = per_question(&hits) {
                out.push(ChainShare {
                    step,
                    category: c,
                    count: cats.iter().filter(|&&x| x == c).count(),
                    questions: cats.len(),
                    share,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built question (`Record::validate` accepts it):
    ///
    /// ```text
    /// 0 (root) -> 2 -> 4 -> 7 (target, leaf)
    ///      \       \-> 5 (leaf)
    ///       \-> 3 -> 5
    ///            \-> 6 -> 7
    /// 1 (other person) -> 8 (neg_target, leaf)
    /// ```
    fn question() -> Record {
        let names = ["Alex", "Bob", "a", "b", "c", "d", "f", "e", "g"];
        let r = Record {
            question: "Is Alex a e or g?".into(),
            steps: vec!["x".into(); 3],
            answer: "Alex is a e.".into(),
            idx_to_symbol: names.iter().map(|s| s.to_string()).collect(),
            edges: vec![
                [0, 2],
                [0, 3],
                [2, 4],
                [2, 5],
                [3, 5],
                [3, 6],
                [4, 7],
                [6, 7],
                [1, 8],
            ],
            root: 0,
            target: 7,
            neg_target: 8,
        };
        r.validate().unwrap();
        r
    }

    #[test]
    fn node_facts_match_the_hand_computed_graph() {
        let facts = node_facts(&question());
        let depth: Vec<Option<usize>> = facts.iter().map(|f| f.depth).collect();
        assert_eq!(
            depth,
            [
                Some(0),
                None,
                Some(1),
                Some(1),
                Some(2),
                Some(2),
                Some(2),
                Some(3),
                None
            ]
        );
        let h_min: Vec<usize> = facts.iter().map(|f| f.height_min).collect();
        let h_max: Vec<usize> = facts.iter().map(|f| f.height_max).collect();
        assert_eq!(h_min, [2, 1, 1, 1, 1, 0, 1, 0, 0]);
        assert_eq!(h_max, [3, 1, 2, 2, 1, 0, 1, 0, 0]);
        let reaches: Vec<bool> = facts.iter().map(|f| f.reaches_target).collect();
        assert_eq!(
            reaches,
            [true, false, true, true, true, false, true, true, false]
        );
    }

    fn chain(steps: &[Option<usize>], answer: Option<usize>) -> Chain {
        Chain {
            steps: steps.to_vec(),
            answer,
        }
    }

    #[test]
    fn chains_fall_in_the_six_categories() {
        use ChainCategory::*;
        let r = question();
        let cases = [
            // Built-in style: steps end with the target, the answer repeats it.
            (chain(&[Some(2), Some(4), Some(7)], Some(7)), CorrectPath),
            // Steps picked up after thoughts: depth(4) = 2, one more hop = 3 = shortest.
            (chain(&[Some(4)], Some(7)), CorrectPath),
            (chain(&[Some(3), Some(6), Some(7)], Some(7)), CorrectPath),
            // The answer as the last hop.
            (chain(&[Some(2), Some(4)], Some(7)), CorrectPath),
            // Valid paths to a dead end and to an inner node.
            (chain(&[Some(3), Some(5)], Some(5)), WrongTarget),
            (chain(&[Some(2)], Some(2)), WrongTarget),
            // An edge that does not exist (4 -> 6).
            (chain(&[Some(4), Some(6)], Some(7)), Hallucination),
            // A name that is not a node.
            (chain(&[Some(2), None], Some(7)), Hallucination),
            // Disconnected: the root cannot reach the other person's node.
            (chain(&[Some(8)], Some(8)), Hallucination),
            (chain(&[], Some(7)), CorrectLabel),
            (chain(&[], Some(8)), IncorrectLabel),
            (chain(&[], None), IncorrectLabel),
        ];
        for (c, want) in cases {
            assert_eq!(classify_chain(&r, &c), want, "{c:?}");
        }
        // With a shortcut 0 -> 4, the path through 2 is a detour.
        let mut long = r.clone();
        long.edges.push([0, 4]);
        long.validate().unwrap();
        assert_eq!(
            classify_chain(&long, &chain(&[Some(2), Some(4), Some(7)], Some(7))),
            LongerPath
        );
        assert_eq!(
            classify_chain(&long, &chain(&[Some(4), Some(7)], Some(7))),
            CorrectPath
        );
    }

    /// The built-in format's frontier: the node one hop past the thoughts.
    const AHEAD: [usize; 3] = [1, 2, 3];

    fn branches(values: Vec<Vec<f64>>) -> QuestionBranches {
        QuestionBranches {
            sample: 7,
            record: question(),
            values,
            chains: Vec::new(),
        }
    }

    #[test]
    fn the_nodes_table_marks_the_frontier_of_each_step() {
        let values = vec![vec![0.1; 9], vec![0.05; 9]];
        let df = nodes_table(&[branches(values)], &AHEAD).unwrap();
        assert_eq!(df.height(), 18);
        let col = |n: &str| df.column(n).unwrap().clone();
        let frontier: Vec<bool> = col("in_frontier")
            .bool()
            .unwrap()
            .iter()
            .map(Option::unwrap)
            .collect();
        let step: Vec<u16> = col("step").u16().unwrap().into_no_null_iter().collect();
        let node: Vec<u32> = col("node").u32().unwrap().into_no_null_iter().collect();
        let on: Vec<(u16, u32)> = (0..18)
            .filter(|&i| frontier[i])
            .map(|i| (step[i], node[i]))
            .collect();
        // After 0 thoughts the depth-1 nodes, after 1 the depth-2 nodes.
        assert_eq!(on, [(0, 2), (0, 3), (1, 4), (1, 5), (1, 6)]);
        assert_eq!(col("depth").null_count(), 4);
        assert_eq!(col("name").str().unwrap().get(4), Some("c"));
    }

    #[test]
    fn mass_entropy_height_and_topk_follow_the_values() {
        // After 0 thoughts (frontier {2, 3}); after 1 thought (frontier {4, 5, 6}).
        let mut v0 = vec![0.0; 9];
        v0[2] = 0.6;
        v0[3] = 0.2;
        v0[8] = 0.1;
        let mut v1 = vec![0.0; 9];
        v1[4] = 0.3;
        v1[5] = 0.3;
        v1[6] = 0.3;
        let q = branches(vec![v0, v1]);
        let mass = mass_rows(std::slice::from_ref(&q), &AHEAD).unwrap();
        assert_eq!(mass.len(), 2);
        assert!((mass[0].frontier - 0.8).abs() < 1e-12);
        assert!((mass[0].reachable - 0.8).abs() < 1e-12);
        assert!((mass[0].other_nodes - 0.1).abs() < 1e-12);
        assert!((mass[0].non_node - 0.1).abs() < 1e-12);
        // Entropy of (0.75, 0.25) and of a uniform 3-way split.
        let h0 = -(0.75f64 * 0.75f64.ln() + 0.25 * 0.25f64.ln());
        assert!((mass[0].branch_entropy.unwrap() - h0).abs() < 1e-12);
        assert!((mass[1].branch_entropy.unwrap() - 3f64.ln()).abs() < 1e-12);
        assert!((mass[1].non_node - 0.1).abs() < 1e-12);

        let heights = height_rows(std::slice::from_ref(&q), &AHEAD, &[1]).unwrap();
        // Step 1 frontier: 4 (h_min 1, reaches), 5 (0, no), 6 (1, reaches).
        let min: Vec<(u32, bool, f64, u32)> = heights
            .iter()
            .filter(|r| r.height_kind == HeightKind::Min)
            .map(|r| (r.height, r.reaches_target, r.mean_value, r.nodes))
            .collect();
        assert_eq!(min, [(0, false, 0.3, 1), (1, true, 0.3, 2)]);

        let top = topk_rows(std::slice::from_ref(&q), &AHEAD, &[0, 1], 3).unwrap();
        let at0: Vec<f64> = top
            .iter()
            .filter(|r| r.step == 0)
            .map(|r| r.value)
            .collect();
        // Top-1, top-2, top-3 (only two frontier nodes: same as top-2).
        assert_eq!(at0.len(), 3);
        assert!((at0[0] - 0.6).abs() < 1e-12 && (at0[1] - 0.8).abs() < 1e-12);
        assert!((at0[2] - 0.8).abs() < 1e-12);
        assert!(top.iter().all(|r| r.percentile == 100.0));
    }

    /// Questions with varied values after 0 and 1 thoughts, and their continuations.
    fn varied_questions() -> Vec<QuestionBranches> {
        (0..12u32)
            .map(|i| {
                let x = 0.05 * (i % 5) as f64;
                let mut v0 = vec![0.0; 9];
                v0[2] = 0.5 - x;
                v0[3] = x;
                v0[8] = 0.1;
                let mut v1 = vec![0.0; 9];
                v1[4] = 0.2 + x;
                v1[5] = 0.1;
                v1[6] = 0.3 - x;
                let mut q = branches(vec![v0, v1]);
                q.sample = i;
                let category = if i % 3 == 0 {
                    ChainCategory::CorrectLabel
                } else {
                    ChainCategory::Hallucination
                };
                q.chains = (0..2)
                    .map(|_| DecodedChain {
                        category,
                        text: String::new(),
                        tokens: vec![1],
                    })
                    .collect();
                q
            })
            .collect()
    }

    #[test]
    fn summaries_read_from_the_tables_agree_with_the_tables() {
        let qs = varied_questions();
        let rows = node_rows(&nodes_table(&qs, &AHEAD).unwrap()).unwrap();
        let summaries = mass_summaries(&question_masses(&rows));
        let mass = mass_rows(&qs, &AHEAD).unwrap();
        assert_eq!(summaries.len(), mass.len());
        for (s, m) in summaries.iter().zip(&mass) {
            assert_eq!((s.step, s.questions), (m.step, m.questions as usize));
            for (i, want) in [
                (s.frontier, m.frontier),
                (s.reachable, m.reachable),
                (s.other_nodes, m.other_nodes),
                (s.non_node, m.non_node),
                (s.branch_entropy.unwrap(), m.branch_entropy.unwrap()),
            ] {
                assert!((i.mean - want).abs() < 1e-12, "{i:?} vs {want}");
                assert!(i.low <= i.mean && i.mean <= i.high, "{i:?}");
            }
            assert_eq!(s.entropy_questions, m.entropy_questions as usize);
        }
        // Frontier mass varies across questions after 1 thought: a real interval.
        assert!(summaries[1].frontier.high - summaries[1].frontier.low > 0.0);
        // Reachable and non-node mass are the same in every question: a point interval.
        assert_eq!(summaries[0].non_node.low, summaries[0].non_node.high);

        let heights = height_summaries(&rows, &[1]);
        let table = height_rows(&qs, &AHEAD, &[1]).unwrap();
        let min: Vec<&HeightRow> = table
            .iter()
            .filter(|r| r.height_kind == HeightKind::Min)
            .collect();
        assert_eq!(heights.len(), min.len());
        for (h, t) in heights.iter().zip(&min) {
            // Sorted alike: by step, height, then reachability.
            assert_eq!(
                (h.step, h.height, h.reaches_target, h.nodes),
                (t.step, t.height, t.reaches_target, t.nodes as usize)
            );
            assert!((h.value.mean - t.mean_value).abs() < 1e-12);
            assert_eq!(h.questions, 12);
        }

        let shares = chain_shares(&chains_table(&qs).unwrap()).unwrap();
        let counts = chain_counts(&qs);
        assert_eq!(shares.len(), 2 * ChainCategory::ALL.len());
        for s in &shares {
            let i = ChainCategory::ALL
                .iter()
                .position(|&c| c == s.category)
                .unwrap();
            assert_eq!(s.count as u32, counts[s.step as usize][i]);
            assert!((s.share.mean - s.count as f64 / 12.0).abs() < 1e-12);
        }
        let labels = shares
            .iter()
            .find(|s| s.step == 1 && s.category == ChainCategory::CorrectLabel)
            .unwrap();
        assert_eq!(labels.count, 4);
        assert!(labels.share.low < 1.0 / 3.0 && labels.share.high > 1.0 / 3.0);
    }

    #[test]
    fn percentiles_rank_questions_by_value() {
        let qs: Vec<QuestionBranches> = [0.5, 0.1, 0.3, 0.2]
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let mut v = vec![0.0; 9];
                v[2] = x;
                let mut q = branches(vec![v]);
                q.sample = i as u32;
                q
            })
            .collect();
        let rows = topk_rows(&qs, &AHEAD, &[0], 1).unwrap();
        let got: Vec<(u32, f64)> = rows.iter().map(|r| (r.sample, r.percentile)).collect();
        assert_eq!(got, [(1, 25.0), (3, 50.0), (2, 75.0), (0, 100.0)]);
    }

    #[test]
    fn values_that_are_not_probabilities_are_refused() {
        let err = nodes_table(&[branches(vec![vec![0.2; 8]])], &AHEAD)
            .unwrap_err()
            .to_string();
        assert!(err.contains("8 values for 9 nodes"), "{err}");
        let err = mass_rows(&[branches(vec![vec![0.2; 9]])], &AHEAD)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sum to"), "{err}");
        let mut v = vec![0.0; 9];
        v[0] = f64::NAN;
        assert!(nodes_table(&[branches(vec![v.clone()])], &AHEAD).is_err());
        // A step without a frontier depth.
        assert!(nodes_table(&[branches(vec![vec![0.0; 9]; 4])], &AHEAD).is_err());
    }

    #[test]
    fn entropy_and_top_cumulative_edge_cases() {
        assert_eq!(branch_entropy(&[]), None);
        assert_eq!(branch_entropy(&[0.0, 0.0]), None);
        assert_eq!(branch_entropy(&[0.4]), Some(0.0));
        assert_eq!(top_cumulative(&[0.1, 0.5, 0.2], 2), vec![0.5, 0.7]);
    }

    #[test]
    fn chain_text_names_nodes_and_marks_strangers() {
        let r = question();
        assert_eq!(
            chain_text(&r, &chain(&[Some(2), None], Some(7))),
            "a -> ? => e"
        );
        assert_eq!(chain_text(&r, &chain(&[], None)), "=> ?");
    }
}
