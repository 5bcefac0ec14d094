//! ProsQA: the graph-reasoning benchmark of the Coconut paper (Hao et al. 2024), as records
//! in exactly the JSON form of the released files, plus our own generator of ProsQA-like
//! data (the reasoner is trained on generated graphs only; the real file is held out for
//! evaluation) and the graph measures the breadth-first-search analysis needs.
//!
//! The generator follows the paper's Appendix A.2: nodes are added one by one, each with an
//! in-degree drawn from Poisson(1.5) and parents drawn from one label group (reachable from
//! person 0 only, person 1 only, both, or neither), deeper nodes preferred; labels propagate
//! by OR. Graphs are then filtered so the statistics match the real data (see
//! /work/shared/data/README.md and the test `generated_statistics_match_the_real_file`).

use std::collections::VecDeque;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::IoContext;
use crate::{Error, Result};

/// One ProsQA question, field for field as in `prosqa_valid.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// One sentence per edge in shuffled order, then "Is Name a X or Y?".
    pub question: String,
    /// One shortest reasoning chain, one sentence per hop.
    pub steps: Vec<String>,
    /// "Name is a X."
    pub answer: String,
    /// Node index -> name. Persons have no parents; nodes 0 and 1 are persons.
    pub idx_to_symbol: Vec<String>,
    /// `[i, j]` means "every i is a j"; always i < j.
    pub edges: Vec<[usize; 2]>,
    /// The person asked about.
    pub root: usize,
    /// The correct answer: the deepest leaf reachable from `root` only.
    pub target: usize,
    /// The distractor: a leaf reachable only from the other person.
    pub neg_target: usize,
}

/// Person names (parentless nodes), the ones the released data uses.
pub const PERSONS: [&str; 17] = [
    "Alex", "Bob", "Carol", "Davis", "Eva", "Fae", "Gabriel", "Jack", "Max", "Oliver", "Polly",
    "Rex", "Sally", "Sam", "Stella", "Tom", "Wren",
];

/// Made-up concept words, the ones the released data uses.
pub const CONCEPTS: [&str; 38] = [
    "bompus", "boompus", "brimpus", "chorpus", "dumpus", "felpus", "fompus", "gerpus", "gorpus",
    "grimpus", "gwompus", "hilpus", "impus", "jelpus", "jompus", "kerpus", "lempus", "lorpus",
    "numpus", "quimpus", "rempus", "rompus", "rorpus", "scrompus", "shumpus", "sterpus", "storpus",
    "terpus", "timpus", "tumpus", "vumpus", "worpus", "wumpus", "yerpus", "yimpus", "yumpus",
    "zhorpus", "zumpus",
];

/// Reads a ProsQA JSON file (a list of records) and checks every record.
pub fn load(path: impl AsRef<Path>) -> Result<Vec<Record>> {
    let path = path.as_ref();
    let bad = |detail: String| Error::BadFile {
        path: path.to_path_buf(),
        detail,
    };
    let text = std::fs::read_to_string(path).at(path)?;
    let raw: Vec<serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| bad(format!("expected a JSON list of ProsQA records: {e}")))?;
    raw.into_iter()
        .enumerate()
        .map(|(i, value)| {
            let record = record_from_json(value).map_err(|e| bad(format!("record {i}: {e}")))?;
            record
                .validate()
                .map_err(|detail| bad(format!("record {i}: {detail}")))?;
            Ok(record)
        })
        .collect()
}

/// Parses one record field by field, so that a type error names the field at fault.
fn record_from_json(value: serde_json::Value) -> std::result::Result<Record, String> {
    let serde_json::Value::Object(mut map) = value else {
        return Err("expected a JSON object".into());
    };
    fn field<T: serde::de::DeserializeOwned>(
        map: &mut serde_json::Map<String, serde_json::Value>,
        name: &str,
    ) -> std::result::Result<T, String> {
        let value = map
            .remove(name)
            .ok_or_else(|| format!("missing field `{name}`"))?;
        serde_json::from_value(value).map_err(|e| format!("field `{name}`: {e}"))
    }
    let record = Record {
        question: field(&mut map, "question")?,
        steps: field(&mut map, "steps")?,
        answer: field(&mut map, "answer")?,
        idx_to_symbol: field(&mut map, "idx_to_symbol")?,
        edges: field(&mut map, "edges")?,
        root: field(&mut map, "root")?,
        target: field(&mut map, "target")?,
        neg_target: field(&mut map, "neg_target")?,
    };
    if let Some(extra) = map.keys().next() {
        return Err(format!("unknown field `{extra}`"));
    }
    Ok(record)
}

/// Writes records as one JSON list, in the same form `load` reads.
pub fn save(path: impl AsRef<Path>, records: &[Record]) -> Result<()> {
    let path = path.as_ref();
    let text = serde_json::to_string(records)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)
}

impl Record {
    /// Checks the graph and the question fields; the message names the field at fault.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.idx_to_symbol.len();
        if n < 2 {
            return Err(format!(
                "idx_to_symbol: {n} nodes, a question needs at least 2"
            ));
        }
        for (k, name) in self.idx_to_symbol.iter().enumerate() {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("idx_to_symbol[{k}]: `{name}` is not a single word"));
            }
            if self.idx_to_symbol[..k].contains(name) {
                return Err(format!("idx_to_symbol[{k}]: `{name}` appears twice"));
            }
        }
        for (e, &[i, j]) in self.edges.iter().enumerate() {
            if i >= n || j >= n {
                return Err(format!(
                    "edges[{e}]: [{i}, {j}] names a node out of range (the graph has {n} nodes)"
                ));
            }
        }
        let graph = Graph::new(n, &self.edges);
        if let Some(cycle) = graph.find_cycle() {
            let path: Vec<String> = cycle.iter().map(|v| v.to_string()).collect();
            return Err(format!(
                "edges: the graph has a cycle {}",
                path.join(" -> ")
            ));
        }
        for (e, &[i, j]) in self.edges.iter().enumerate() {
            if i >= j {
                return Err(format!(
                    "edges[{e}]: [{i}, {j}] is not in topological order (i < j)"
                ));
            }
        }
        for (field, v) in [
            ("root", self.root),
            ("target", self.target),
            ("neg_target", self.neg_target),
        ] {
            if v >= n {
                return Err(format!(
                    "{field}: node {v} is out of range (the graph has {n} nodes)"
                ));
            }
        }
        if !graph.parents[self.root].is_empty() {
            return Err(format!(
                "root: node {} has parents, so it is not a person",
                self.root
            ));
        }
        let from_root = graph.distances_from(self.root);
        if from_root[self.target].is_none() {
            return Err(format!(
                "target: node {} is not reachable from root {}",
                self.target, self.root
            ));
        }
        if from_root[self.neg_target].is_some() {
            return Err(format!(
                "neg_target: node {} is reachable from root {}",
                self.neg_target, self.root
            ));
        }
        if self.steps.is_empty() {
            return Err("steps: empty, expected one sentence per hop".into());
        }
        Ok(())
    }

    pub fn graph(&self) -> Graph {
        Graph::new(self.idx_to_symbol.len(), &self.edges)
    }

    /// The node of the person not asked about (0 if root is 1, else 1).
    pub fn other_person(&self) -> usize {
        if self.root == 0 {
            1
        } else {
            0
        }
    }

    /// Hops on a shortest root -> target path.
    pub fn hops(&self) -> usize {
        self.graph().distances_from(self.root)[self.target].unwrap_or(0)
    }
}

/// A directed graph with adjacency lists both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub children: Vec<Vec<usize>>,
    pub parents: Vec<Vec<usize>>,
}

impl Graph {
    /// Edges must be in range (`Record::validate` checks that first).
    pub fn new(n: usize, edges: &[[usize; 2]]) -> Self {
        let mut children = vec![Vec::new(); n];
        let mut parents = vec![Vec::new(); n];
        for &[i, j] in edges {
            children[i].push(j);
            parents[j].push(i);
        }
        Self { children, parents }
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    pub fn is_leaf(&self, v: usize) -> bool {
        self.children[v].is_empty()
    }

    /// BFS distance (hops) from `src` to every node; `None` when unreachable. This is the
    /// node's depth when `src` is the root.
    pub fn distances_from(&self, src: usize) -> Vec<Option<usize>> {
        let mut dist = vec![None; self.len()];
        dist[src] = Some(0);
        let mut queue = VecDeque::from([src]);
        while let Some(u) = queue.pop_front() {
            let du = dist[u].unwrap_or(0);
            for &v in &self.children[u] {
                if dist[v].is_none() {
                    dist[v] = Some(du + 1);
                    queue.push_back(v);
                }
            }
        }
        dist
    }

    pub fn reachable_from(&self, src: usize) -> Vec<bool> {
        self.distances_from(src)
            .iter()
            .map(Option::is_some)
            .collect()
    }

    /// The frontier F_k: nodes exactly `k` hops (shortest) from `src`, ascending.
    pub fn frontier(&self, src: usize, k: usize) -> Vec<usize> {
        let dist = self.distances_from(src);
        (0..self.len()).filter(|&v| dist[v] == Some(k)).collect()
    }

    /// Number of distinct shortest paths from `src` to every node (0 when unreachable).
    pub fn shortest_path_counts(&self, src: usize) -> Vec<u64> {
        let dist = self.distances_from(src);
        let mut order: Vec<usize> = (0..self.len()).filter(|&v| dist[v].is_some()).collect();
        order.sort_by_key(|&v| dist[v]);
        let mut count = vec![0u64; self.len()];
        count[src] = 1;
        for u in order {
            for &v in &self.children[u] {
                if dist[v] == dist[u].map(|d| d + 1) {
                    count[v] += count[u];
                }
            }
        }
        count
    }

    /// Height: the longest distance (hops) from each node down to a leaf. Needs a DAG.
    pub fn height(&self) -> Vec<usize> {
        let mut h = vec![0; self.len()];
        for u in self.topological_order().into_iter().rev() {
            h[u] = self.children[u]
                .iter()
                .map(|&c| h[c] + 1)
                .max()
                .unwrap_or(0);
        }
        h
    }

    /// The shortest distance (hops) from each node down to a leaf. Needs a DAG.
    pub fn shortest_to_leaf(&self) -> Vec<usize> {
        let mut s = vec![0; self.len()];
        for u in self.topological_order().into_iter().rev() {
            s[u] = self.children[u]
                .iter()
                .map(|&c| s[c] + 1)
                .min()
                .unwrap_or(0);
        }
        s
    }

    /// Kahn's order; nodes on a cycle are left out.
    pub fn topological_order(&self) -> Vec<usize> {
        let mut indegree: Vec<usize> = self.parents.iter().map(Vec::len).collect();
        let mut queue: VecDeque<usize> = (0..self.len()).filter(|&v| indegree[v] == 0).collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(u) = queue.pop_front() {
            order.push(u);
            for &v in &self.children[u] {
                indegree[v] -= 1;
                if indegree[v] == 0 {
                    queue.push_back(v);
                }
            }
        }
        order
    }

    /// One cycle as a node list that starts and ends at the same node, if there is one.
    pub fn find_cycle(&self) -> Option<Vec<usize>> {
        // 0 = unvisited, 1 = on the DFS stack, 2 = done.
        let mut state = vec![0u8; self.len()];
        let mut stack_path = Vec::new();
        for start in 0..self.len() {
            if state[start] == 0 {
                if let Some(c) = self.cycle_dfs(start, &mut state, &mut stack_path) {
                    return Some(c);
                }
            }
        }
        None
    }

    fn cycle_dfs(&self, u: usize, state: &mut [u8], path: &mut Vec<usize>) -> Option<Vec<usize>> {
        state[u] = 1;
        path.push(u);
        for &v in &self.children[u] {
            if state[v] == 1 {
                let at = path.iter().position(|&p| p == v).unwrap_or(0);
                let mut cycle = path[at..].to_vec();
                cycle.push(v);
                return Some(cycle);
            }
            if state[v] == 0 {
                if let Some(c) = self.cycle_dfs(v, state, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        state[u] = 2;
        None
    }
}

/// Knobs of the generator; the defaults match the real data's statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    pub min_nodes: usize,
    pub max_nodes: usize,
    /// Mean of the Poisson in-degree (redrawn while 0).
    pub mean_in_degree: f64,
    /// Chance that a new node is an extra person (no parents, empty label).
    pub extra_person_prob: f64,
    /// Parent weight (depth + 1)^depth_bias: deeper parents make longer chains.
    pub depth_bias: f64,
    /// Chance of drawing parents from the groups {0}, {1}, {0, 1}, {} (label = reachable
    /// from person 0 / person 1).
    pub group_probs: [f64; 4],
    /// Chance that one parent ignores the group (this is what makes shared nodes).
    pub mix_prob: f64,
    /// Acceptance probability by shortest root -> target hops 3, 4, 5, 6: rejection
    /// sampling that turns the raw hop distribution into the real one.
    pub accept_by_hops: [f64; 4],
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            min_nodes: 17,
            max_nodes: 28,
            mean_in_degree: 1.5,
            extra_person_prob: 0.03,
            depth_bias: 2.0,
            group_probs: [0.45, 0.45, 0.03, 0.07],
            mix_prob: 0.05,
            accept_by_hops: [1.0, 0.78, 0.47, 0.33],
        }
    }
}

/// `n` ProsQA-like records, deterministic in `seed`; record `i` depends only on (seed, i).
pub fn generate(n: usize, seed: u64) -> Vec<Record> {
    // The default config accepts about one graph in six, so the attempt cap is never hit.
    generate_with(&GenConfig::default(), n, seed).unwrap_or_default()
}

/// Graphs drawn per record before `generate_with` gives up on a config.
const MAX_ATTEMPTS: usize = 10_000;

/// `generate` with other knobs; fails on a config that cannot produce a question.
pub fn generate_with(config: &GenConfig, n: usize, seed: u64) -> Result<Vec<Record>> {
    config.check()?;
    (0..n)
        .map(|i| {
            generate_one(config, &mut crate::rng::stream(seed, i as u64)).ok_or_else(|| {
                Error::Invalid(format!(
                    "no ProsQA question after {MAX_ATTEMPTS} graphs for record {i}; allow \
                     more nodes or a deeper graph"
                ))
            })
        })
        .collect()
}

impl GenConfig {
    fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Invalid(format!("ProsQA generator config: {what}")));
        if self.min_nodes < 8 || self.min_nodes > self.max_nodes {
            return bad("need 8 <= min_nodes <= max_nodes (a 3-hop question needs a few nodes)");
        }
        if self.max_nodes > CONCEPTS.len() + 2 {
            return bad("max_nodes exceeds the number of concept words + 2");
        }
        if self.mean_in_degree <= 0.0 || !self.mean_in_degree.is_finite() {
            return bad("mean_in_degree must be positive");
        }
        let probs = self.group_probs.iter().chain(&self.accept_by_hops);
        if probs.clone().any(|p| !(0.0..=1.0).contains(p))
            || self.group_probs.iter().sum::<f64>() <= 0.0
        {
            return bad(
                "group_probs and accept_by_hops must be probabilities, group_probs not all 0",
            );
        }
        if self.accept_by_hops.iter().all(|&p| p == 0.0) {
            return bad("accept_by_hops are all 0: no graph would be accepted");
        }
        if !(0.0..=1.0).contains(&self.mix_prob) || !(0.0..1.0).contains(&self.extra_person_prob) {
            return bad("mix_prob must be in [0, 1] and extra_person_prob in [0, 1)");
        }
        Ok(())
    }
}

const LABEL_ROOT0: u8 = 1;
const LABEL_ROOT1: u8 = 2;

fn generate_one(config: &GenConfig, rng: &mut ChaCha8Rng) -> Option<Record> {
    (0..MAX_ATTEMPTS).find_map(|_| {
        let parents = random_dag(config, rng);
        pose_question(config, &parents, rng)
    })
}

fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> usize {
    // Knuth's method: fine for small means.
    let limit = (-mean).exp();
    let (mut k, mut p) = (0, 1.0);
    loop {
        p *= rng.gen::<f64>();
        if p <= limit {
            return k;
        }
        k += 1;
    }
}

fn weighted_pick(rng: &mut ChaCha8Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.gen::<f64>() * total;
    for (i, &w) in weights.iter().enumerate() {
        if x < w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// Parent lists of a random DAG in topological order; nodes 0 and 1 are the two persons.
fn random_dag(config: &GenConfig, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let n = rng.gen_range(config.min_nodes..=config.max_nodes);
    let mut label = vec![LABEL_ROOT0, LABEL_ROOT1];
    let mut depth = vec![0usize, 0];
    let mut parents: Vec<Vec<usize>> = vec![vec![], vec![]];
    let groups = [LABEL_ROOT0, LABEL_ROOT1, LABEL_ROOT0 | LABEL_ROOT1, 0];
    for i in 2..n {
        if rng.gen::<f64>() < config.extra_person_prob {
            label.push(0);
            depth.push(0);
            parents.push(vec![]);
            continue;
        }
        let mut k = poisson(rng, config.mean_in_degree);
        while k == 0 {
            k = poisson(rng, config.mean_in_degree);
        }
        let group = groups[weighted_pick(rng, &config.group_probs)];
        let mut in_group: Vec<usize> = (0..i).filter(|&j| label[j] == group).collect();
        if in_group.is_empty() {
            in_group = (0..i).collect();
        }
        let mut chosen: Vec<usize> = Vec::with_capacity(k);
        for _ in 0..k {
            let pool: Vec<usize> = if rng.gen::<f64>() >= config.mix_prob {
                in_group.clone()
            } else {
                (0..i).collect()
            };
            let pool: Vec<usize> = pool.into_iter().filter(|j| !chosen.contains(j)).collect();
            if pool.is_empty() {
                break;
            }
            let weights: Vec<f64> = pool
                .iter()
                .map(|&j| ((depth[j] + 1) as f64).powf(config.depth_bias))
                .collect();
            chosen.push(pool[weighted_pick(rng, &weights)]);
        }
        chosen.sort_unstable();
        label.push(chosen.iter().fold(0, |acc, &j| acc | label[j]));
        depth.push(1 + chosen.iter().map(|&j| depth[j]).max().unwrap_or(0));
        parents.push(chosen);
    }
    parents
}

struct Candidate {
    hops: usize,
    targets: Vec<usize>,
    distractors: Vec<usize>,
}

/// For person `root`: the deepest leaves reachable from it only, and the leaves reachable
/// only from the other person.
fn candidate(graph: &Graph, root: usize) -> Option<Candidate> {
    let mine = graph.distances_from(root);
    let theirs = graph.distances_from(1 - root);
    let leaves = (0..graph.len()).filter(|&v| graph.is_leaf(v));
    let only_mine: Vec<usize> = leaves
        .clone()
        .filter(|&v| mine[v].is_some() && theirs[v].is_none())
        .collect();
    let distractors: Vec<usize> = leaves
        .filter(|&v| theirs[v].is_some() && mine[v].is_none())
        .collect();
    let hops = only_mine.iter().filter_map(|&v| mine[v]).max()?;
    if distractors.is_empty() {
        return None;
    }
    let targets = only_mine
        .into_iter()
        .filter(|&v| mine[v] == Some(hops))
        .collect();
    Some(Candidate {
        hops,
        targets,
        distractors,
    })
}

fn pose_question(
    config: &GenConfig,
    parents: &[Vec<usize>],
    rng: &mut ChaCha8Rng,
) -> Option<Record> {
    let edges: Vec<[usize; 2]> = parents
        .iter()
        .enumerate()
        .flat_map(|(j, ps)| ps.iter().map(move |&i| [i, j]))
        .collect();
    let graph = Graph::new(parents.len(), &edges);
    let candidates: Vec<(usize, Candidate)> = (0..2)
        .filter_map(|r| candidate(&graph, r).map(|c| (r, c)))
        .filter(|(_, c)| (3..=6).contains(&c.hops))
        .collect();
    // The root is the person whose question needs more hops (ties broken at random).
    let most = candidates.iter().map(|(_, c)| c.hops).max()?;
    let best: Vec<&(usize, Candidate)> =
        candidates.iter().filter(|(_, c)| c.hops == most).collect();
    let (root, cand) = best.choose(rng)?;
    if rng.gen::<f64>() >= config.accept_by_hops[most - 3] {
        return None;
    }
    let target = *cand.targets.choose(rng)?;
    let neg_target = *cand.distractors.choose(rng)?;
    let names = name_nodes(parents, rng);
    let path = random_shortest_path(&graph, *root, target, rng);
    Some(write_record(
        names, edges, *root, target, neg_target, &path, rng,
    ))
}

fn name_nodes(parents: &[Vec<usize>], rng: &mut ChaCha8Rng) -> Vec<String> {
    let mut persons = PERSONS.to_vec();
    let mut concepts = CONCEPTS.to_vec();
    persons.shuffle(rng);
    concepts.shuffle(rng);
    let (mut p, mut c) = (persons.into_iter(), concepts.into_iter());
    parents
        .iter()
        .map(|ps| {
            let name = if ps.is_empty() { p.next() } else { c.next() };
            name.unwrap_or("unnamed").to_string()
        })
        .collect()
}

/// A shortest path drawn uniformly among all shortest paths, by walking back from `to`.
fn random_shortest_path(graph: &Graph, from: usize, to: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let dist = graph.distances_from(from);
    let count = graph.shortest_path_counts(from);
    let mut path = vec![to];
    let mut v = to;
    while v != from {
        let preds: Vec<usize> = graph.parents[v]
            .iter()
            .copied()
            .filter(|&u| dist[u].is_some() && dist[u].map(|d| d + 1) == dist[v])
            .collect();
        if preds.is_empty() {
            break;
        }
        let weights: Vec<f64> = preds.iter().map(|&u| count[u] as f64).collect();
        v = preds[weighted_pick(rng, &weights)];
        path.push(v);
    }
    path.reverse();
    path
}

/// "Every A is a B." for a concept A, "Name is a B." for a person.
fn edge_sentence(
    names: &[String],
    is_person: impl Fn(usize) -> bool,
    i: usize,
    j: usize,
) -> String {
    if is_person(i) {
        format!("{} is a {}.", names[i], names[j])
    } else {
        format!("Every {} is a {}.", names[i], names[j])
    }
}

fn write_record(
    names: Vec<String>,
    edges: Vec<[usize; 2]>,
    root: usize,
    target: usize,
    neg_target: usize,
    path: &[usize],
    rng: &mut ChaCha8Rng,
) -> Record {
    let graph = Graph::new(names.len(), &edges);
    let is_person = |v: usize| graph.parents[v].is_empty();
    let mut order: Vec<usize> = (0..edges.len()).collect();
    order.shuffle(rng);
    let mut sentences: Vec<String> = order
        .iter()
        .map(|&e| edge_sentence(&names, is_person, edges[e][0], edges[e][1]))
        .collect();
    let (x, y) = if rng.gen::<bool>() {
        (target, neg_target)
    } else {
        (neg_target, target)
    };
    sentences.push(format!(
        "Is {} a {} or {}?",
        names[root], names[x], names[y]
    ));
    let steps = path
        .windows(2)
        .map(|w| edge_sentence(&names, is_person, w[0], w[1]))
        .collect();
    Record {
        question: sentences.join(" "),
        steps,
        answer: format!("{} is a {}.", names[root], names[target]),
        idx_to_symbol: names,
        edges,
        root,
        target,
        neg_target,
    }
}

#[cfg(test)]
#[allow(clippy::print_stderr)] // ignored benchmarks report their figures
mod tests {
    use super::*;

    const REAL: &str = "/work/shared/data/prosqa_valid.json";
    const REAL_HEAD: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reasoner/prosqa_valid_head.json"
    );

    fn hop_shares(records: &[Record]) -> [f64; 4] {
        let mut counts = [0usize; 4];
        for r in records {
            let h = r.hops();
            assert!((3..=6).contains(&h), "hops {h}");
            counts[h - 3] += 1;
        }
        counts.map(|c| c as f64 / records.len() as f64)
    }

    fn mean(xs: impl Iterator<Item = usize>) -> f64 {
        let v: Vec<usize> = xs.collect();
        v.iter().sum::<usize>() as f64 / v.len() as f64
    }

    #[test]
    fn generated_statistics_match_the_real_file() {
        let records = generate(2000, 7);
        let nodes = mean(records.iter().map(|r| r.idx_to_symbol.len()));
        let edges = mean(records.iter().map(|r| r.edges.len()));
        // Real (valid+test, data README): nodes 22.8, edges 36.0, hops 41/44/13/2 %.
        assert!((nodes - 22.8).abs() < 1.0, "mean nodes {nodes}");
        assert!((edges - 36.0).abs() < 2.0, "mean edges {edges}");
        let shares = hop_shares(&records);
        eprintln!("nodes {nodes:.2} edges {edges:.2} hop shares {shares:?}");
        for (got, want) in shares.iter().zip([0.41, 0.44, 0.13, 0.02]) {
            assert!((got - want).abs() < 0.04, "hop shares {shares:?}");
        }
        for r in &records {
            r.validate().unwrap();
            assert!((14..=28).contains(&r.idx_to_symbol.len()));
        }
        let paths = mean(
            records
                .iter()
                .map(|r| r.graph().shortest_path_counts(r.root)[r.target] as usize),
        );
        assert!((1.0..2.5).contains(&paths), "mean shortest paths {paths}");
    }

    #[test]
    fn target_is_the_deepest_leaf_reachable_from_root_only() {
        for r in generate(200, 3) {
            let g = r.graph();
            let mine = g.distances_from(r.root);
            let theirs = g.distances_from(r.other_person());
            let deepest = (0..g.len())
                .filter(|&v| g.is_leaf(v) && mine[v].is_some() && theirs[v].is_none())
                .filter_map(|v| mine[v])
                .max();
            assert_eq!(mine[r.target], deepest);
            assert!(g.is_leaf(r.neg_target) && theirs[r.neg_target].is_some());
            assert!(mine[r.neg_target].is_none());
            assert_eq!(r.steps.len(), mine[r.target].unwrap());
        }
    }

    #[test]
    fn impossible_generator_configs_are_errors() {
        let tiny = GenConfig {
            min_nodes: 4,
            max_nodes: 5,
            ..GenConfig::default()
        };
        assert!(generate_with(&tiny, 1, 0).is_err());
        let flat = GenConfig {
            accept_by_hops: [1e-12; 4],
            ..GenConfig::default()
        };
        let msg = generate_with(&flat, 1, 0).unwrap_err().to_string();
        assert!(msg.contains("record 0"), "{msg}");
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        assert_eq!(generate(20, 11), generate(20, 11));
        assert_ne!(generate(5, 11), generate(5, 12));
        assert_eq!(generate(20, 11)[7..], generate(20, 11)[7..]);
    }

    #[test]
    fn sentences_follow_the_real_form() {
        let r = &generate(1, 0)[0];
        let sentences: Vec<&str> = r
            .question
            .split_inclusive(['.', '?'])
            .map(str::trim)
            .collect();
        assert_eq!(sentences.len(), r.edges.len() + 1);
        let root = &r.idx_to_symbol[r.root];
        assert!(sentences
            .last()
            .unwrap()
            .starts_with(&format!("Is {root} a ")));
        assert!(r.steps[0].starts_with(&format!("{root} is a ")));
        assert!(r.steps[1].starts_with("Every "));
        assert_eq!(
            r.answer,
            format!("{root} is a {}.", r.idx_to_symbol[r.target])
        );
        // Every sentence of the steps is one of the question's facts.
        for s in &r.steps {
            assert!(sentences.contains(&s.as_str()), "{s}");
        }
    }

    #[test]
    fn real_records_load_and_their_hops_are_known() {
        // The first 8 records of the released prosqa_valid.json (MIT), hops counted with
        // Python.
        let records = load(REAL_HEAD).unwrap();
        let hops: Vec<usize> = records.iter().map(Record::hops).collect();
        assert_eq!(hops, [3, 4, 4, 4, 4, 5, 3, 3]);
        let first = &records[0];
        assert_eq!(first.steps.len(), 3);
        assert_eq!(first.idx_to_symbol[first.target], "lempus");
        // The whole file, where present (it is not shipped with the crate).
        if let Ok(all) = load(REAL) {
            let shares = hop_shares(&all);
            assert_eq!(
                shares.map(|s| (s * 300.0).round() as usize),
                [124, 133, 36, 7]
            );
        }
    }

    #[test]
    fn graph_helpers_on_a_small_dag() {
        // 0 -> 2 -> 3 -> 4, 0 -> 4, 1 -> 3, 2 -> 5
        let g = Graph::new(6, &[[0, 2], [2, 3], [3, 4], [0, 4], [1, 3], [2, 5]]);
        assert_eq!(
            g.distances_from(0),
            vec![Some(0), None, Some(1), Some(2), Some(1), Some(2)]
        );
        assert_eq!(g.frontier(0, 2), vec![3, 5]);
        assert_eq!(g.frontier(0, 1), vec![2, 4]);
        assert_eq!(g.height(), vec![3, 2, 2, 1, 0, 0]);
        assert_eq!(g.shortest_to_leaf(), vec![1, 2, 1, 1, 0, 0]);
        assert_eq!(
            g.reachable_from(1),
            vec![false, true, false, true, true, false]
        );
        let g2 = Graph::new(4, &[[0, 1], [0, 2], [1, 3], [2, 3]]);
        assert_eq!(g2.shortest_path_counts(0), vec![1, 1, 1, 2]);
        assert!(g2.find_cycle().is_none());
        let cyclic = Graph::new(3, &[[0, 1], [1, 2], [2, 1]]);
        assert_eq!(cyclic.find_cycle(), Some(vec![1, 2, 1]));
    }

    fn broken(edit: impl Fn(&mut serde_json::Value)) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        let mut records = serde_json::to_value(generate(3, 1)).unwrap();
        edit(&mut records[2]);
        std::fs::write(&path, records.to_string()).unwrap();
        load(&path).unwrap_err().to_string()
    }

    #[test]
    fn broken_records_are_named_by_index_and_field() {
        let msg = broken(|r| r["edges"][0] = serde_json::json!([0, 99]));
        assert!(
            msg.contains("record 2") && msg.contains("edges[0]") && msg.contains("out of range"),
            "{msg}"
        );
        let msg = broken(|r| {
            let n = r["idx_to_symbol"].as_array().unwrap().len();
            r["edges"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!([n - 1, 2]));
            r["edges"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!([2, n - 1]));
        });
        assert!(msg.contains("record 2") && msg.contains("cycle"), "{msg}");
        let msg = broken(|r| {
            let e = r["edges"][0].clone();
            r["edges"][0] = serde_json::json!([e[1], e[0]]);
        });
        assert!(
            msg.contains("record 2") && msg.contains("topological order"),
            "{msg}"
        );
        let msg = broken(|r| {
            r.as_object_mut().unwrap().remove("answer");
        });
        assert!(msg.contains("record 2") && msg.contains("answer"), "{msg}");
        let msg = broken(|r| r["target"] = serde_json::json!(1000));
        assert!(msg.contains("record 2") && msg.contains("target"), "{msg}");
        let msg = broken(|r| r["edges"] = serde_json::json!("none"));
        assert!(msg.contains("record 2: field `edges`"), "{msg}");
    }
}
