//! Rigorous linear probes: one call fits a probe for one (site, step, label) and returns
//! the evidence a reader needs, not just a score: cross-validation grouped by sample,
//! regularization chosen by inner CV on the training folds only, bootstrap 95% intervals,
//! a majority/mean baseline, a control task (Hewitt & Liang 2019) with selectivity, a
//! permutation-test p-value, and the fitted direction in the original feature space.
//!
//! Nested CV reuses the outer folds: for outer fold i, the inner CV runs over the other
//! k - 1 folds (train on k - 2, validate on one), so every training set's statistics are
//! sums of per-fold statistics computed in one pass.
//!
//! Control task: H&L map each word *type* to a random output. Here the input unit is the
//! sample (group): each distinct (sample, label value) pair gets a random label drawn
//! from the empirical distribution of those pairs, seeded and independent of row order.
//! Under grouped CV the probe cannot memorize test samples, so the control measures what
//! the probe scores on labels that carry no information about the features.
//!
//! Wide sites (more features than rows) are fitted exactly in the row space of each
//! training set (see `rowspace`): same optimum, n x n work instead of d x d. Each training
//! set (outer, inner, final) gets its own basis, because its standardization (training
//! means and scales) differs; the basis of an outer training set depends only on its
//! rows, so its control and permutation fits reuse it. (One basis of the outer fold would
//! not serve its inner sets: they rescale the features by their own scales, which moves
//! the row space.)

use std::collections::HashMap;

use crate::progress::Progress;
use faer::MatRef;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use crate::analysis::cv::GroupFolds;
use crate::analysis::design::{Blocks, ColumnStats, Moments, Standardizer};
use crate::analysis::logistic::{
    self, LogisticModel, LogisticOptions, LogisticProblem, Preconditioner,
};
use crate::analysis::metrics;
use crate::analysis::ridge::{RidgeModel, RidgeMoments, RidgeSolver, RowRidge};
use crate::analysis::rowspace::RowBasis;
use crate::rng;

const CONTROL_STREAM: u64 = 0x4354_524C; // "CTRL"
const PERMUTATION_STREAM: u64 = 0x5045_524D; // "PERM"

/// `Solver::Auto` fits in the row space when features > this x rows. Measured on the
/// diffusion `unet.mid_block` features (192 rows, the first d columns, 20 permutations):
/// the logistic probe costs the same both ways near d = 0.6-0.75 n, the row space wins
/// beyond (d = 2n: 0.33 s vs 0.91 s; the image and mid-block sites, d = 16n and 5n:
/// ~90x for the whole `latentlens probe` run). Both are exact.
const ROW_SPACE_RATIO: f64 = 0.75;

/// How the probes are solved; both give the same optimum (see the module note).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Solver {
    /// Row space when the site is wide (features > `ROW_SPACE_RATIO` x rows), else full.
    #[default]
    Auto,
    /// d x d feature statistics and factorisations.
    Full,
    /// n x n row-space bases (an n x n Gram matrix per training set: for wide sites).
    RowSpace,
}

/// What a probe predicts.
#[derive(Debug, Clone)]
pub enum Target {
    /// Class codes per row; `names[code]` is the class's display name.
    Categorical { codes: Vec<u32>, names: Vec<String> },
    /// A real value per row.
    Continuous(Vec<f64>),
}

/// The rows to probe: `x` row-major (rows x width), one group (sample id) per row.
#[derive(Debug, Clone, Copy)]
pub struct ProbeInput<'a> {
    pub x: &'a [f32],
    pub width: usize,
    pub groups: &'a [u32],
}

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub folds: usize,
    pub seed: u64,
    /// Permutations for the p-value (0 = no test, p-value left empty).
    pub permutations: usize,
    /// Bootstrap resamples for the 95% intervals.
    pub bootstrap: usize,
    /// Inverse regularization strengths of the logistic probe, scikit-learn's `C`.
    pub c_grid: Vec<f64>,
    /// Ridge penalties in mean-loss units (scikit-learn `alpha` = lambda * n_rows).
    pub lambda_grid: Vec<f64>,
    /// Drop rows with NaN/Inf features instead of refusing them.
    pub drop_nonfinite: bool,
    pub logistic: LogisticOptions,
    pub solver: Solver,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            folds: 5,
            seed: 0,
            permutations: 100,
            bootstrap: 1000,
            c_grid: vec![1e-3, 1e-2, 1e-1, 1.0, 10.0],
            lambda_grid: vec![1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0],
            drop_nonfinite: false,
            logistic: LogisticOptions::default(),
            solver: Solver::Auto,
        }
    }
}

impl ProbeConfig {
    /// Progress units `probe` reports (one per outer fold and per permutation), so a
    /// caller can size a progress bar over a grid of probes.
    pub fn work_units(&self) -> u64 {
        (self.folds + self.permutations) as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Categorical,
    Continuous,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Categorical => "categorical",
            Kind::Continuous => "continuous",
        }
    }
}

/// One metric with its evidence. NaN means undefined (shown as an empty cell).
#[derive(Debug, Clone, Serialize)]
pub struct MetricEstimate {
    pub metric: String,
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub control_value: f64,
    /// value - control_value.
    pub selectivity: f64,
    /// Majority-class (categorical) or training-mean (continuous) predictor of each
    /// training fold, evaluated like the probe. For balanced classes it lands slightly
    /// below chance (a fold's training majority is its test minority).
    pub baseline_value: f64,
    pub p_value: f64,
}

/// A probe direction in the original feature space: `x . weights[o] + bias[o]` is the
/// logit (binary: of `outputs[0]`; multinomial: of each class) or the predicted value.
#[derive(Debug, Clone, Serialize)]
pub struct Direction {
    pub outputs: Vec<String>,
    pub weights: Vec<Vec<f64>>,
    pub bias: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub kind: Kind,
    pub metrics: Vec<MetricEstimate>,
    pub n_samples: usize,
    pub n_rows: usize,
    pub folds: usize,
    /// Rows dropped for NaN/Inf features (only with `drop_nonfinite`).
    pub dropped_rows: usize,
    /// C used for the final logistic fit (the most common choice of the outer folds).
    pub chosen_c: Option<f64>,
    /// Ridge lambda used for the final fit (mean-loss units).
    pub chosen_lambda: Option<f64>,
    /// Fitted on all rows after CV.
    pub direction: Direction,
}

/// One row of `tables/probes.parquet`.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeRow {
    pub site: String,
    pub step: u16,
    pub label: String,
    pub kind: String,
    pub metric: String,
    pub value: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub control_value: Option<f64>,
    pub selectivity: Option<f64>,
    pub baseline_value: Option<f64>,
    pub p_value: Option<f64>,
    pub n_samples: u32,
    pub n_rows: u32,
    pub folds: u32,
    pub dropped_rows: u32,
    pub chosen_c: Option<f64>,
    pub chosen_lambda: Option<f64>,
}

/// One row of `tables/probe_weights.parquet`.
#[derive(Debug, Clone, Serialize)]
pub struct WeightRow {
    pub site: String,
    pub step: u16,
    pub label: String,
    pub output: String,
    pub bias: f64,
    pub weights: Vec<f64>,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl ProbeResult {
    /// The table rows of this result: one per metric.
    pub fn rows(&self, site: &str, step: u16, label: &str) -> Vec<ProbeRow> {
        self.metrics
            .iter()
            .map(|m| ProbeRow {
                site: site.to_string(),
                step,
                label: label.to_string(),
                kind: self.kind.as_str().to_string(),
                metric: m.metric.clone(),
                value: finite(m.value),
                ci_low: finite(m.ci_low),
                ci_high: finite(m.ci_high),
                control_value: finite(m.control_value),
                selectivity: finite(m.selectivity),
                baseline_value: finite(m.baseline_value),
                p_value: finite(m.p_value),
                n_samples: self.n_samples as u32,
                n_rows: self.n_rows as u32,
                folds: self.folds as u32,
                dropped_rows: self.dropped_rows as u32,
                chosen_c: self.chosen_c,
                chosen_lambda: self.chosen_lambda,
            })
            .collect()
    }

    /// The direction rows of this result: one per output.
    pub fn weight_rows(&self, site: &str, step: u16, label: &str) -> Vec<WeightRow> {
        let d = &self.direction;
        (0..d.outputs.len())
            .map(|o| WeightRow {
                site: site.to_string(),
                step,
                label: label.to_string(),
                output: d.outputs[o].clone(),
                bias: d.bias[o],
                weights: d.weights[o].clone(),
            })
            .collect()
    }
}

/// Rows kept after the non-finite check, with what was dropped.
fn finite_rows(input: &ProbeInput<'_>, drop: bool) -> crate::Result<(Vec<usize>, usize)> {
    let d = input.width;
    let n = input.groups.len();
    let mut bad_cols = vec![false; d];
    let mut keep = Vec::with_capacity(n);
    let mut first = None;
    for r in 0..n {
        let row = &input.x[r * d..(r + 1) * d];
        let mut ok = true;
        for (c, v) in row.iter().enumerate() {
            if !v.is_finite() {
                ok = false;
                bad_cols[c] = true;
                first.get_or_insert((r, c));
            }
        }
        if ok {
            keep.push(r);
        }
    }
    let dropped = n - keep.len();
    if dropped > 0 && !drop {
        let (r, c) = first.unwrap_or((0, 0));
        return Err(crate::Error::Invalid(format!(
            "probe features: {dropped} of {n} rows hold NaN/Inf values (in {} of {d} columns; first at row {r}, \
             column {c}); refusing to probe them. Pass drop_nonfinite (--drop-nonfinite) to drop those rows",
            bad_cols.iter().filter(|&&b| b).count()
        )));
    }
    Ok((keep, dropped))
}

/// The data in fold order: features centered by their overall mean (a constant shift,
/// which changes nothing mathematically but keeps the f32 Gram products accurate).
struct Prepared {
    x: Vec<f32>,
    width: usize,
    groups: Vec<u32>,
    ranges: Vec<std::ops::Range<usize>>,
    offset: Vec<f64>,
    /// Per-fold feature statistics: d x d `Moments` for the full path, column sums for
    /// the row-space path (exactly one of the two is filled).
    moments: Vec<Moments>,
    stats: Vec<ColumnStats>,
    /// Row index (in caller order) of each prepared row.
    source: Vec<usize>,
}

impl Prepared {
    fn new(input: &ProbeInput<'_>, keep: &[usize], folds: &GroupFolds, rows: bool) -> Prepared {
        let d = input.width;
        let (order, ranges) = folds.fold_order();
        let source: Vec<usize> = order.iter().map(|&i| keep[i]).collect();
        let mut offset = vec![0.0f64; d];
        for &r in &source {
            for (o, &v) in offset.iter_mut().zip(&input.x[r * d..(r + 1) * d]) {
                *o += v as f64;
            }
        }
        let n = source.len().max(1) as f64;
        offset.iter_mut().for_each(|o| *o /= n);
        let mut x = Vec::with_capacity(source.len() * d);
        for &r in &source {
            x.extend(
                input.x[r * d..(r + 1) * d]
                    .iter()
                    .zip(&offset)
                    .map(|(&v, &o)| (v as f64 - o) as f32),
            );
        }
        let groups = source.iter().map(|&r| input.groups[r]).collect();
        let mut p = Prepared {
            x,
            width: d,
            groups,
            ranges,
            offset,
            moments: Vec::new(),
            stats: Vec::new(),
            source,
        };
        if rows {
            p.stats = (0..p.ranges.len())
                .map(|f| ColumnStats::of(p.fold(f)))
                .collect();
        } else {
            p.moments = (0..p.ranges.len())
                .map(|f| Moments::of(p.fold(f)))
                .collect();
        }
        p
    }

    /// Whether this data is solved in the row space.
    fn row_space(&self) -> bool {
        !self.stats.is_empty()
    }

    /// The row basis of the rows of `folds`, standardized on those rows.
    fn row_basis(&self, folds: &[usize]) -> crate::Result<RowBasis> {
        let st =
            ColumnStats::total(self.width, folds.iter().map(|&f| &self.stats[f])).standardizer();
        RowBasis::new(&self.blocks(folds), st)
    }

    fn fold(&self, f: usize) -> MatRef<'_, f32> {
        let r = &self.ranges[f];
        MatRef::from_row_major_slice(
            &self.x[r.start * self.width..r.end * self.width],
            r.len(),
            self.width,
        )
    }

    /// Folds except those listed.
    fn folds_except(&self, skip: &[usize]) -> Vec<usize> {
        (0..self.ranges.len())
            .filter(|f| !skip.contains(f))
            .collect()
    }

    fn blocks(&self, folds: &[usize]) -> Blocks<'_> {
        Blocks {
            blocks: folds.iter().map(|&f| self.fold(f)).collect(),
            width: self.width,
        }
    }

    fn moments(&self, folds: &[usize]) -> Moments {
        Moments::total(self.width, folds.iter().map(|&f| &self.moments[f]))
    }

    /// Values of a row-aligned vector restricted to the rows of `folds`, in order.
    fn gather<T: Copy>(&self, v: &[T], folds: &[usize]) -> Vec<T> {
        folds
            .iter()
            .flat_map(|&f| v[self.ranges[f].clone()].iter().copied())
            .collect()
    }

    fn rows_of_group(&self) -> Vec<Vec<usize>> {
        let mut map: HashMap<u32, Vec<usize>> = HashMap::new();
        for (r, g) in self.groups.iter().enumerate() {
            map.entry(*g).or_default().push(r);
        }
        let mut v: Vec<(u32, Vec<usize>)> = map.into_iter().collect();
        v.sort_by_key(|(g, _)| *g);
        v.into_iter().map(|(_, rows)| rows).collect()
    }
}

/// Control labels: each distinct (group, label) unit gets a label drawn from the
/// empirical distribution of the units' labels, keyed by (seed, group, label).
fn control_labels<T: Copy>(
    groups: &[u32],
    labels: &[T],
    key: impl Fn(T) -> u64,
    seed: u64,
) -> Vec<T> {
    let mut units: Vec<(u32, u64, T)> = groups
        .iter()
        .zip(labels)
        .map(|(&g, &l)| (g, key(l), l))
        .collect();
    units.sort_by_key(|u| (u.0, u.1));
    units.dedup_by_key(|u| (u.0, u.1));
    let pool: Vec<T> = units.iter().map(|u| u.2).collect();
    groups
        .iter()
        .zip(labels)
        .map(|(&g, &l)| {
            let mut r = rng::stream(seed ^ CONTROL_STREAM, rng::mix(&[g as u64, key(l)]));
            pool[r.gen_range(0..pool.len())]
        })
        .collect()
}

/// Labels permuted across groups: groups with the same row count swap their label
/// sequences (a sample keeps its internal structure but gets another sample's labels).
fn permuted_labels<T: Copy>(groups: &[u32], labels: &[T], seed: u64, p: usize) -> Vec<T> {
    let mut rows: HashMap<u32, Vec<usize>> = HashMap::new();
    for (r, g) in groups.iter().enumerate() {
        rows.entry(*g).or_default().push(r);
    }
    let mut by_len: HashMap<usize, Vec<u32>> = HashMap::new();
    for (g, r) in &rows {
        by_len.entry(r.len()).or_default().push(*g);
    }
    let mut lens: Vec<usize> = by_len.keys().copied().collect();
    lens.sort_unstable();
    let mut rng = rng::stream(seed ^ PERMUTATION_STREAM, p as u64);
    let mut out = labels.to_vec();
    for len in lens {
        let mut targets = by_len[&len].clone();
        targets.sort_unstable();
        let mut sources = targets.clone();
        sources.shuffle(&mut rng);
        for (t, s) in targets.iter().zip(&sources) {
            for (&rt, &rs) in rows[t].iter().zip(&rows[s]) {
                out[rt] = labels[rs];
            }
        }
    }
    out
}

/// Fits one probe. See the module note for the protocol.
pub fn probe(
    input: &ProbeInput<'_>,
    target: &Target,
    cfg: &ProbeConfig,
    pb: &dyn Progress,
) -> crate::Result<ProbeResult> {
    let n = input.groups.len();
    if input.width == 0 || input.x.len() != n * input.width {
        return Err(crate::Error::Invalid(format!(
            "probe features: {} values for {n} rows of width {}; expected rows x width",
            input.x.len(),
            input.width
        )));
    }
    let target_len = match target {
        Target::Categorical { codes, .. } => codes.len(),
        Target::Continuous(v) => v.len(),
    };
    if target_len != n {
        return Err(crate::Error::Invalid(format!(
            "probe label: {target_len} values for {n} feature rows"
        )));
    }
    let (keep, dropped) = finite_rows(input, cfg.drop_nonfinite)?;
    let keep_groups: Vec<u32> = keep.iter().map(|&r| input.groups[r]).collect();
    let folds = GroupFolds::new(&keep_groups, cfg.folds, cfg.seed)?;
    let grid_len = match target {
        Target::Categorical { .. } => cfg.c_grid.len(),
        Target::Continuous(_) => cfg.lambda_grid.len(),
    };
    if grid_len == 0 || (grid_len > 1 && cfg.folds < 3) {
        return Err(crate::Error::Invalid(format!(
            "probe: folds = {} with {grid_len} regularization values; inner CV needs at least 3 folds and a \
             non-empty grid",
            cfg.folds
        )));
    }
    let rows = match cfg.solver {
        Solver::Full => false,
        Solver::RowSpace => true,
        Solver::Auto => input.width as f64 > ROW_SPACE_RATIO * keep.len() as f64,
    };
    let data = Prepared::new(input, &keep, &folds, rows);
    let mut result = match target {
        Target::Categorical { codes, names } => {
            let codes: Vec<u32> = data.source.iter().map(|&r| codes[r]).collect();
            classify(&data, &codes, names, cfg, pb)?
        }
        Target::Continuous(v) => {
            let values: Vec<f64> = data.source.iter().map(|&r| v[r]).collect();
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(crate::Error::Invalid(format!(
                    "probe label: value {} at row {} is not finite; continuous labels must be numbers",
                    values[i], data.source[i]
                )));
            }
            regress(&data, &values, cfg, pb)?
        }
    };
    result.n_samples = folds.n_groups;
    result.n_rows = keep.len();
    result.dropped_rows = dropped;
    Ok(result)
}

/// Out-of-fold predictions of a classifier: predicted class and P(class 1) (binary).
struct ClassOof {
    pred: Vec<u32>,
    score: Vec<f64>,
}

fn class_metrics(k: usize) -> Vec<&'static str> {
    let mut m = vec!["accuracy", "balanced_accuracy", "macro_f1"];
    if k == 2 {
        m.push("roc_auc");
    }
    m
}

fn class_metric(name: &str, truth: &[u32], oof: &ClassOof, rows: &[usize]) -> f64 {
    let t: Vec<u32> = rows.iter().map(|&r| truth[r]).collect();
    let p: Vec<u32> = rows.iter().map(|&r| oof.pred[r]).collect();
    match name {
        "accuracy" => metrics::accuracy(&t, &p),
        "balanced_accuracy" => metrics::balanced_accuracy(&t, &p),
        "macro_f1" => metrics::macro_f1(&t, &p),
        _ => {
            let pos: Vec<bool> = t.iter().map(|&c| c == 1).collect();
            let s: Vec<f64> = rows.iter().map(|&r| oof.score[r]).collect();
            metrics::roc_auc(&pos, &s)
        }
    }
}

/// A training set as the logistic solver sees it: its standardization and d x d feature
/// statistics (full path), or its row basis.
enum Space {
    Full { st: Standardizer, moments: Moments },
    Rows(RowBasis),
}

impl Space {
    fn new(data: &Prepared, folds: &[usize]) -> crate::Result<Space> {
        if data.row_space() {
            Ok(Space::Rows(data.row_basis(folds)?))
        } else {
            let moments = data.moments(folds);
            Ok(Space::Full {
                st: moments.standardizer(),
                moments,
            })
        }
    }

    fn standardizer(&self) -> &Standardizer {
        match self {
            Space::Full { st, .. } => st,
            Space::Rows(b) => &b.standardizer,
        }
    }

    fn preconditioner(&self, k: usize, lambda: f64) -> crate::Result<Preconditioner> {
        match self {
            Space::Full { st, moments } => Preconditioner::new(&moments.correlation(st), k, lambda),
            Space::Rows(b) => Preconditioner::new(&b.covariance(), k, lambda),
        }
    }

    /// Preconditioners for each C of the grid (lambda = 1 / (C n)).
    fn preconditioners(
        &self,
        k: usize,
        grid: &[f64],
        n: usize,
    ) -> crate::Result<Vec<Preconditioner>> {
        grid.iter()
            .map(|&c| self.preconditioner(k, 1.0 / (c * n as f64)))
            .collect()
    }

    /// Fits on the rows of `folds` (whose labels are `labels`); the model is in this
    /// space's coordinates (see `lift`), and so must `warm` be.
    #[allow(clippy::too_many_arguments)]
    fn fit(
        &self,
        data: &Prepared,
        folds: &[usize],
        labels: &[u32],
        k: usize,
        lambda: f64,
        pre: &Preconditioner,
        warm: Option<&LogisticModel>,
        opts: &LogisticOptions,
    ) -> LogisticModel {
        match self {
            Space::Full { st, .. } => {
                let problem = LogisticProblem {
                    x: data.blocks(folds),
                    labels,
                    n_classes: k,
                    standardizer: st,
                };
                logistic::fit(&problem, lambda, pre, warm, opts)
            }
            Space::Rows(b) => logistic::fit_in_basis(b, labels, k, lambda, pre, warm, opts),
        }
    }

    /// A model of `fit` in standardized feature space.
    fn lift(&self, model: LogisticModel) -> LogisticModel {
        match self {
            Space::Full { .. } => model,
            Space::Rows(b) => model.lift(b),
        }
    }
}

/// The outer fold's training set with the chosen C, reused by control and permutation
/// fits.
struct OuterFit {
    train: Vec<usize>,
    space: Space,
    pre: Preconditioner,
    lambda: f64,
}

fn classify(
    data: &Prepared,
    raw_codes: &[u32],
    names: &[String],
    cfg: &ProbeConfig,
    pb: &dyn Progress,
) -> crate::Result<ProbeResult> {
    // Classes present, in code order.
    let mut present: Vec<u32> = raw_codes.to_vec();
    present.sort_unstable();
    present.dedup();
    let name_of = |c: u32| {
        names
            .get(c as usize)
            .cloned()
            .unwrap_or_else(|| c.to_string())
    };
    if present.len() < 2 {
        return Err(crate::Error::Invalid(format!(
            "probe label: every one of the {} rows has the same class `{}`; a probe needs at least two classes",
            raw_codes.len(),
            present.first().map(|&c| name_of(c)).unwrap_or_default()
        )));
    }
    let index: HashMap<u32, u32> = present
        .iter()
        .enumerate()
        .map(|(i, &c)| (c, i as u32))
        .collect();
    let y: Vec<u32> = raw_codes.iter().map(|c| index[c]).collect();
    let k = present.len();
    let n_folds = data.ranges.len();
    let opts = &cfg.logistic;

    let mut oof = ClassOof {
        pred: vec![0; y.len()],
        score: vec![0.0; y.len()],
    };
    let mut baseline = ClassOof {
        pred: vec![0; y.len()],
        score: vec![0.5; y.len()],
    };
    let mut outer = Vec::with_capacity(n_folds);
    let mut chosen = Vec::with_capacity(n_folds);
    for i in 0..n_folds {
        let train = data.folds_except(&[i]);
        let space = Space::new(data, &train)?;
        let yt = data.gather(&y, &train);
        let n_train = yt.len();
        let mut pres = space.preconditioners(k, &cfg.c_grid, n_train)?;
        let best = if cfg.c_grid.len() == 1 {
            0
        } else {
            inner_cv_logistic(data, &y, k, &train, &cfg.c_grid, &pres, opts)?
        };
        chosen.push(cfg.c_grid[best]);
        let lambda = 1.0 / (cfg.c_grid[best] * n_train as f64);
        let pre = pres.swap_remove(best);
        let model = space.fit(data, &train, &yt, k, lambda, &pre, None, opts);
        predict_into(&space.lift(model), data, i, space.standardizer(), &mut oof);
        let majority = majority(&yt, k);
        for r in data.ranges[i].clone() {
            baseline.pred[r] = majority;
        }
        outer.push(OuterFit {
            train,
            space,
            pre,
            lambda,
        });
        pb.inc(1);
    }

    let fit_oof = |labels: &[u32]| {
        let mut o = ClassOof {
            pred: vec![0; labels.len()],
            score: vec![0.0; labels.len()],
        };
        for (i, f) in outer.iter().enumerate() {
            let yt = data.gather(labels, &f.train);
            let model = f
                .space
                .fit(data, &f.train, &yt, k, f.lambda, &f.pre, None, opts);
            predict_into(
                &f.space.lift(model),
                data,
                i,
                f.space.standardizer(),
                &mut o,
            );
        }
        o
    };
    let control_y = control_labels(&data.groups, &y, |c| c as u64, cfg.seed);
    let control = fit_oof(&control_y);
    let names_m = class_metrics(k);
    let mut null: Vec<Vec<f64>> = vec![Vec::with_capacity(cfg.permutations); names_m.len()];
    let all: Vec<usize> = (0..y.len()).collect();
    for p in 0..cfg.permutations {
        let yp = permuted_labels(&data.groups, &y, cfg.seed, p);
        let o = fit_oof(&yp);
        for (mi, name) in names_m.iter().enumerate() {
            null[mi].push(class_metric(name, &yp, &o, &all));
        }
        pb.inc(1);
    }

    let groups = data.rows_of_group();
    let metrics_out = names_m
        .iter()
        .enumerate()
        .map(|(mi, name)| {
            let value = class_metric(name, &y, &oof, &all);
            let (ci_low, ci_high) =
                metrics::bootstrap_ci(&groups, cfg.bootstrap, cfg.seed, &|rows| {
                    class_metric(name, &y, &oof, rows)
                });
            let control_value = class_metric(name, &control_y, &control, &all);
            MetricEstimate {
                metric: name.to_string(),
                value,
                ci_low,
                ci_high,
                control_value,
                selectivity: value - control_value,
                baseline_value: class_metric(name, &y, &baseline, &all),
                p_value: if cfg.permutations > 0 {
                    metrics::permutation_p_value(value, &null[mi])
                } else {
                    f64::NAN
                },
            }
        })
        .collect();

    // Final direction on all rows with the most common choice.
    let c_final = mode(&chosen);
    let every = data.folds_except(&[]);
    let space = Space::new(data, &every)?;
    let lambda = 1.0 / (c_final * y.len() as f64);
    let pre = space.preconditioner(k, lambda)?;
    let model = space.lift(space.fit(data, &every, &y, k, lambda, &pre, None, opts));
    let (weights, bias) = model.raw_direction(space.standardizer(), &data.offset);
    let outputs = if k == 2 {
        vec![name_of(present[1])]
    } else {
        present.iter().map(|&c| name_of(c)).collect()
    };
    Ok(ProbeResult {
        kind: Kind::Categorical,
        metrics: metrics_out,
        n_samples: 0,
        n_rows: 0,
        folds: n_folds,
        dropped_rows: 0,
        chosen_c: Some(c_final),
        chosen_lambda: None,
        direction: Direction {
            outputs,
            weights,
            bias,
        },
    })
}

/// Index of the C with the lowest summed validation log-loss over the inner folds
/// (ties: the stronger regularization). C values are visited in the given order with
/// warm starts per inner fold. The full path preconditions with the outer fold's
/// `outer_pres`; the row-space path needs each inner set's own basis and preconditioners.
fn inner_cv_logistic(
    data: &Prepared,
    y: &[u32],
    k: usize,
    train: &[usize],
    grid: &[f64],
    outer_pres: &[Preconditioner],
    opts: &LogisticOptions,
) -> crate::Result<usize> {
    let mut loss = vec![0.0; grid.len()];
    for &j in train {
        let inner: Vec<usize> = train.iter().copied().filter(|&f| f != j).collect();
        let space = Space::new(data, &inner)?;
        let yt = data.gather(y, &inner);
        let own = match space {
            Space::Rows(_) => space.preconditioners(k, grid, yt.len())?,
            Space::Full { .. } => Vec::new(),
        };
        let pres = if own.is_empty() { outer_pres } else { &own };
        let mut warm: Option<LogisticModel> = None;
        for (ci, &c) in grid.iter().enumerate() {
            let lambda = 1.0 / (c * yt.len() as f64);
            let model = space.fit(data, &inner, &yt, k, lambda, &pres[ci], warm.as_ref(), opts);
            let probs = match &space {
                Space::Full { st, .. } => model.probabilities(&data.blocks(&[j]), st),
                Space::Rows(b) => model
                    .clone()
                    .lift(b)
                    .probabilities(&data.blocks(&[j]), &b.standardizer),
            };
            loss[ci] += data.ranges[j]
                .clone()
                .zip(&probs)
                .map(|(r, p)| -p[y[r] as usize].max(1e-15).ln())
                .sum::<f64>();
            warm = Some(model);
        }
    }
    let mut best = 0;
    for ci in 1..grid.len() {
        if loss[ci] < loss[best] {
            best = ci;
        }
    }
    Ok(best)
}

fn predict_into(
    model: &LogisticModel,
    data: &Prepared,
    fold: usize,
    st: &Standardizer,
    out: &mut ClassOof,
) {
    let probs = model.probabilities(&data.blocks(&[fold]), st);
    for (r, p) in data.ranges[fold].clone().zip(&probs) {
        out.pred[r] = argmax(p) as u32;
        out.score[r] = p[1];
    }
}

fn argmax(p: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = i;
        }
    }
    best
}

fn majority(y: &[u32], k: usize) -> u32 {
    let mut counts = vec![0usize; k];
    for &c in y {
        counts[c as usize] += 1;
    }
    argmax(&counts.iter().map(|&c| c as f64).collect::<Vec<_>>()) as u32
}

/// Most frequent value (ties: the smallest).
fn mode(v: &[f64]) -> f64 {
    let mut best = (0usize, f64::INFINITY);
    for &a in v {
        let count = v.iter().filter(|&&b| b == a).count();
        if count > best.0 || (count == best.0 && a < best.1) {
            best = (count, a);
        }
    }
    best.1
}

const CONTINUOUS_METRICS: [&str; 3] = ["r2", "pearson", "spearman"];

fn cont_metric(name: &str, truth: &[f64], pred: &[f64], rows: &[usize]) -> f64 {
    let t: Vec<f64> = rows.iter().map(|&r| truth[r]).collect();
    let p: Vec<f64> = rows.iter().map(|&r| pred[r]).collect();
    match name {
        "r2" => metrics::r2(&t, &p),
        "pearson" => metrics::pearson(&t, &p),
        _ => metrics::spearman(&t, &p),
    }
}

fn regress(
    data: &Prepared,
    y: &[f64],
    cfg: &ProbeConfig,
    pb: &dyn Progress,
) -> crate::Result<ProbeResult> {
    let n_folds = data.ranges.len();
    // Targets: real, control, then each permutation; one pass gives all their X^T y.
    let control_y = control_labels(&data.groups, y, f64::to_bits, cfg.seed);
    let mut targets = vec![y.to_vec(), control_y];
    for p in 0..cfg.permutations {
        targets.push(permuted_labels(&data.groups, y, cfg.seed, p));
    }
    // The row-space path needs no per-fold statistics of the targets.
    let fold_moments: Vec<RidgeMoments> = (0..data.moments.len())
        .map(|f| {
            let cols: Vec<Vec<f64>> = targets
                .iter()
                .map(|t| t[data.ranges[f].clone()].to_vec())
                .collect();
            RidgeMoments::with_x_moments(data.moments[f].clone(), data.fold(f), &cols)
        })
        .collect();
    let fits = |folds: &[usize], t: usize, lambdas: &[f64]| {
        ridge_fits(data, &fold_moments, &targets[..t], folds, lambdas)
    };

    let mut preds: Vec<Vec<f64>> = vec![vec![0.0; y.len()]; targets.len()];
    let mut baseline = vec![0.0; y.len()];
    let mut chosen = Vec::with_capacity(n_folds);
    for i in 0..n_folds {
        let train = data.folds_except(&[i]);
        let best = if cfg.lambda_grid.len() == 1 {
            0
        } else {
            let mut sse = vec![0.0; cfg.lambda_grid.len()];
            for &j in &train {
                let inner: Vec<usize> = train.iter().copied().filter(|&f| f != j).collect();
                for (li, model) in fits(&inner, 1, &cfg.lambda_grid)?.iter().enumerate() {
                    let p = model.predict(&data.blocks(&[j]));
                    sse[li] += data.ranges[j]
                        .clone()
                        .enumerate()
                        .map(|(a, r)| (y[r] - p[(a, 0)] as f64).powi(2))
                        .sum::<f64>();
                }
            }
            (0..sse.len()).fold(0, |b, li| if sse[li] < sse[b] { li } else { b })
        };
        let lambda = cfg.lambda_grid[best];
        chosen.push(lambda);
        let model = fits(&train, targets.len(), &[lambda])?.swap_remove(0);
        let p = model.predict(&data.blocks(&[i]));
        for (a, r) in data.ranges[i].clone().enumerate() {
            for (t, pt) in preds.iter_mut().enumerate() {
                pt[r] = p[(a, t)] as f64;
            }
            baseline[r] = model.b[0];
        }
        pb.inc(1);
    }
    pb.inc(cfg.permutations as u64);

    let groups = data.rows_of_group();
    let all: Vec<usize> = (0..y.len()).collect();
    let metrics_out = CONTINUOUS_METRICS
        .iter()
        .map(|name| {
            let value = cont_metric(name, y, &preds[0], &all);
            let (ci_low, ci_high) =
                metrics::bootstrap_ci(&groups, cfg.bootstrap, cfg.seed, &|rows| {
                    cont_metric(name, y, &preds[0], rows)
                });
            let control_value = cont_metric(name, &targets[1], &preds[1], &all);
            let null: Vec<f64> = (2..targets.len())
                .map(|t| cont_metric(name, &targets[t], &preds[t], &all))
                .collect();
            MetricEstimate {
                metric: name.to_string(),
                value,
                ci_low,
                ci_high,
                control_value,
                selectivity: value - control_value,
                baseline_value: cont_metric(name, y, &baseline, &all),
                p_value: if cfg.permutations > 0 {
                    metrics::permutation_p_value(value, &null)
                } else {
                    f64::NAN
                },
            }
        })
        .collect();

    let lambda = mode(&chosen);
    let model = fits(&data.folds_except(&[]), 1, &[lambda])?.swap_remove(0);
    let (mut weights, mut bias) =
        model
            .standardizer
            .raw_direction(model.w.as_ref(), &model.b, &data.offset);
    weights.truncate(1);
    bias.truncate(1);
    Ok(ProbeResult {
        kind: Kind::Continuous,
        metrics: metrics_out,
        n_samples: 0,
        n_rows: 0,
        folds: n_folds,
        dropped_rows: 0,
        chosen_c: None,
        chosen_lambda: Some(lambda),
        direction: Direction {
            outputs: vec!["value".to_string()],
            weights,
            bias,
        },
    })
}

/// Ridge models, one per lambda, fitted on the rows of `folds` for `targets` (full
/// row-aligned columns): from the per-fold moments (full path; they hold every target, so
/// the models predict all of them) or from the row basis of those rows.
fn ridge_fits(
    data: &Prepared,
    fold_moments: &[RidgeMoments],
    targets: &[Vec<f64>],
    folds: &[usize],
    lambdas: &[f64],
) -> crate::Result<Vec<RidgeModel>> {
    if data.row_space() {
        let basis = data.row_basis(folds)?;
        let cols: Vec<Vec<f64>> = targets.iter().map(|t| data.gather(t, folds)).collect();
        let solver = RowRidge::new(&basis, &cols);
        Ok(lambdas.iter().map(|&l| solver.solve(l)).collect())
    } else {
        let m = RidgeMoments::total(&folds.iter().map(|&f| &fold_moments[f]).collect::<Vec<_>>());
        lambdas
            .iter()
            .map(|&l| Ok(RidgeSolver::new(&m.x, l)?.solve(&m)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(permutations: usize) -> ProbeConfig {
        ProbeConfig {
            permutations,
            bootstrap: 300,
            ..ProbeConfig::default()
        }
    }

    fn metric<'a>(r: &'a ProbeResult, name: &str) -> &'a MetricEstimate {
        r.metrics.iter().find(|m| m.metric == name).unwrap()
    }

    fn binary(codes: Vec<u32>) -> Target {
        Target::Categorical {
            codes,
            names: vec!["no".into(), "yes".into()],
        }
    }

    /// Two Gaussian classes in `d` dims: class means +-delta on feature 0 (unit
    /// covariance), then each feature shifted and scaled so standardization matters.
    fn gaussians(n: usize, d: usize, delta: f64, seed: u64) -> (Vec<f32>, Vec<u32>, Vec<u32>) {
        let z = rng::gaussian(seed, 1, n * d);
        let mut x = Vec::with_capacity(n * d);
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let c = (i % 2) as u32;
            for j in 0..d {
                let mut v = z[i * d + j] as f64;
                if j == 0 {
                    v += if c == 1 { delta } else { -delta };
                }
                x.push((10.0 * j as f64 + v * (1.0 + j as f64)) as f32);
            }
            y.push(c);
        }
        (x, y, (0..n as u32).collect())
    }

    #[test]
    fn separable_data_gives_accuracy_and_auc_one_with_a_small_p_value() {
        let (x, y, groups) = gaussians(120, 5, 8.0, 3);
        let input = ProbeInput {
            x: &x,
            width: 5,
            groups: &groups,
        };
        let r = probe(
            &input,
            &binary(y.clone()),
            &quick(9),
            &crate::progress::Hidden,
        )
        .unwrap();
        for name in ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc"] {
            let m = metric(&r, name);
            assert_eq!(m.value, 1.0, "{name}");
            assert!((m.p_value - 0.1).abs() < 1e-12, "{name} p {}", m.p_value);
            assert!(
                m.control_value < 0.75 && m.selectivity > 0.25,
                "{name} {m:?}"
            );
        }
        assert_eq!(metric(&r, "roc_auc").baseline_value, 0.5);
        assert_eq!((r.n_samples, r.n_rows, r.folds), (120, 120, 5));
        assert_eq!(r.direction.outputs, vec!["yes".to_string()]);
        // Same seed, same numbers.
        let again = probe(
            &input,
            &binary(y.clone()),
            &quick(9),
            &crate::progress::Hidden,
        )
        .unwrap();
        assert_eq!(format!("{:?}", again.metrics), format!("{:?}", r.metrics));
        assert_eq!(again.direction.weights, r.direction.weights);
        // The direction points along feature 0 in raw units: positive, others small.
        let w = &r.direction.weights[0];
        assert!(
            w[0] > 0.0 && w[1..].iter().all(|v| v.abs() < w[0].abs() / 3.0),
            "{w:?}"
        );
    }

    #[test]
    fn accuracy_matches_the_bayes_accuracy_of_two_gaussians() {
        // Mahalanobis distance 1.5 -> Bayes accuracy Phi(0.75) (scipy norm.cdf).
        let bayes = 0.7733726476231317;
        let (x, y, groups) = gaussians(2000, 8, 0.75, 9);
        let input = ProbeInput {
            x: &x,
            width: 8,
            groups: &groups,
        };
        let r = probe(&input, &binary(y), &quick(19), &crate::progress::Hidden).unwrap();
        let acc = metric(&r, "accuracy");
        assert!(
            acc.ci_low <= bayes && bayes <= acc.ci_high + 0.005,
            "{acc:?}"
        );
        assert!(acc.ci_high - acc.ci_low < 0.08);
        assert!(
            (acc.control_value - 0.5).abs() < 0.05,
            "control {}",
            acc.control_value
        );
        assert!((acc.baseline_value - 0.5).abs() < 0.05);
        assert!((acc.p_value - 0.05).abs() < 1e-12);
        assert!((metric(&r, "roc_auc").control_value - 0.5).abs() < 0.05);
    }

    #[test]
    fn memorizing_samples_does_not_help_under_grouped_cv() {
        // 40 samples x 10 rows: each sample has its own feature signature and a random
        // label. Row-level CV would memorize the signatures (accuracy ~1); grouped CV
        // must stay at chance.
        let (g, rows, d) = (40, 10, 12);
        let sig = rng::gaussian(1, 1, g * d);
        let noise = rng::gaussian(1, 2, g * rows * d);
        let mut labels_rng = rng::stream(1, 3);
        let label_of: Vec<u32> = (0..g).map(|_| labels_rng.gen_range(0..2)).collect();
        let mut x = Vec::new();
        let mut groups = Vec::new();
        let mut y = Vec::new();
        for s in 0..g {
            for r in 0..rows {
                for j in 0..d {
                    x.push(3.0 * sig[s * d + j] + 0.1 * noise[(s * rows + r) * d + j]);
                }
                groups.push(s as u32 * 7);
                y.push(label_of[s]);
            }
        }
        let input = ProbeInput {
            x: &x,
            width: d,
            groups: &groups,
        };
        let r = probe(&input, &binary(y), &quick(0), &crate::progress::Hidden).unwrap();
        let acc = metric(&r, "accuracy");
        assert!(acc.value < 0.75 && acc.ci_low < 0.5, "{acc:?}");
        assert!(acc.p_value.is_nan());
        assert_eq!((r.n_samples, r.n_rows), (40, 400));
    }

    #[test]
    fn permutation_p_values_are_spread_out_for_noise() {
        let cfg = ProbeConfig {
            permutations: 19,
            bootstrap: 0,
            c_grid: vec![1.0],
            ..ProbeConfig::default()
        };
        let mut ps = Vec::new();
        for seed in 0..8 {
            let x = rng::gaussian(seed, 10, 80 * 4);
            let mut r = rng::stream(seed, 11);
            let y: Vec<u32> = (0..80).map(|_| r.gen_range(0..2)).collect();
            let groups: Vec<u32> = (0..80).collect();
            let input = ProbeInput {
                x: &x,
                width: 4,
                groups: &groups,
            };
            let res = probe(&input, &binary(y), &cfg, &crate::progress::Hidden).unwrap();
            ps.push(metric(&res, "balanced_accuracy").p_value);
        }
        let mean = ps.iter().sum::<f64>() / ps.len() as f64;
        assert!((0.25..0.75).contains(&mean), "{ps:?}");
        assert!(ps.iter().filter(|&&p| p <= 0.05).count() <= 2, "{ps:?}");
    }

    #[test]
    fn multinomial_probe_separates_three_classes() {
        let (n, d) = (150, 3);
        let z = rng::gaussian(4, 1, n * d);
        let y: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
        let x: Vec<f32> = (0..n * d)
            .map(|i| {
                z[i] * 0.2
                    + if i % d == (y[i / d] as usize) {
                        4.0
                    } else {
                        0.0
                    }
            })
            .collect();
        let groups: Vec<u32> = (0..n as u32).map(|i| i / 2).collect();
        let target = Target::Categorical {
            codes: y.iter().map(|c| c + 1).collect(),
            names: vec!["-".into(), "a".into(), "b".into(), "c".into()],
        };
        let r = probe(
            &ProbeInput {
                x: &x,
                width: d,
                groups: &groups,
            },
            &target,
            &quick(0),
            &crate::progress::Hidden,
        )
        .unwrap();
        assert_eq!(metric(&r, "accuracy").value, 1.0);
        assert!(r.metrics.iter().all(|m| m.metric != "roc_auc"));
        assert_eq!(r.direction.outputs, vec!["a", "b", "c"]);
        // Majority of each training fold, pooled: for balanced classes that majority is
        // the class the test fold has fewest of, so the baseline lands below 1/3.
        let b = metric(&r, "balanced_accuracy").baseline_value;
        assert!(b <= 1.0 / 3.0 + 1e-9 && b > 0.2, "{b}");
    }

    #[test]
    fn ridge_probe_reaches_the_true_r2_and_recovers_the_raw_direction() {
        let (n, d) = (1500, 5);
        let z = rng::gaussian(8, 1, n * d);
        let e = rng::gaussian(8, 2, n);
        let a = [2.0, -1.0, 0.0, 0.5, 0.0];
        let (scale, shift) = ([1.0, 3.0, 0.5, 2.0, 10.0], [5.0, -2.0, 100.0, 0.0, 1.0]);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let mut v = 4.0;
            for j in 0..d {
                let raw = shift[j] + scale[j] * z[i * d + j] as f64;
                x.push(raw as f32);
                v += a[j] * raw;
            }
            y.push(v + 2.0 * e[i] as f64);
        }
        // Signal variance sum (a_j scale_j)^2 = 4 + 9 + 1 = 14, noise 4: R2 = 14/18.
        let true_r2 = 14.0 / 18.0;
        let groups: Vec<u32> = (0..n as u32).collect();
        let r = probe(
            &ProbeInput {
                x: &x,
                width: d,
                groups: &groups,
            },
            &Target::Continuous(y),
            &quick(9),
            &crate::progress::Hidden,
        )
        .unwrap();
        let r2 = metric(&r, "r2");
        assert!(
            r2.ci_low - 0.005 <= true_r2 && true_r2 <= r2.ci_high + 0.005,
            "{r2:?}"
        );
        assert!(
            r2.control_value < 0.01 && r2.baseline_value <= 0.0 && r2.baseline_value > -0.01,
            "{r2:?}"
        );
        assert!((metric(&r, "pearson").value - true_r2.sqrt()).abs() < 0.02);
        assert!((r2.p_value - 0.1).abs() < 1e-12);
        let w = &r.direction.weights[0];
        for j in 0..d {
            // 4 standard errors: noise sd / (sqrt(n) * feature scale).
            assert!(
                (w[j] - a[j]).abs() < 4.0 * 2.0 / ((n as f64).sqrt() * scale[j]),
                "w {w:?}"
            );
        }
        let mean_bias = 4.0 + (0..d).map(|j| (a[j] - w[j]) * shift[j]).sum::<f64>();
        assert!(
            (r.direction.bias[0] - mean_bias).abs() < 0.2,
            "{} vs {}",
            r.direction.bias[0],
            mean_bias
        );
    }

    #[test]
    fn duplicated_constant_and_low_rank_features_are_handled() {
        // 64 features spanned by 3 directions (one of them the class signal), plus a
        // constant column: the Gram matrix is singular.
        let (n, d) = (300, 64);
        let z = rng::gaussian(6, 1, n * 3);
        let mix = rng::gaussian(6, 2, 3 * d);
        let y: Vec<u32> = (0..n as u32).map(|i| i % 2).collect();
        let mut x = Vec::with_capacity(n * d);
        for i in 0..n {
            let s = if y[i] == 1 { 1.5 } else { -1.5 };
            for j in 0..d {
                let v: f32 = (0..3)
                    .map(|k| (z[i * 3 + k] + if k == 0 { s } else { 0.0 }) * mix[k * d + j])
                    .sum();
                x.push(if j == d - 1 { 7.0 } else { v });
            }
        }
        let groups: Vec<u32> = (0..n as u32).collect();
        let input = ProbeInput {
            x: &x,
            width: d,
            groups: &groups,
        };
        let r = probe(
            &input,
            &binary(y.clone()),
            &quick(0),
            &crate::progress::Hidden,
        )
        .unwrap();
        assert!(metric(&r, "accuracy").value > 0.85, "{:?}", r.metrics);
        let cont: Vec<f64> = (0..n).map(|i| z[i * 3 + 1] as f64).collect();
        let r = probe(
            &input,
            &Target::Continuous(cont),
            &quick(0),
            &crate::progress::Hidden,
        )
        .unwrap();
        assert!(metric(&r, "r2").value > 0.95, "{:?}", r.metrics);
        assert!(r.direction.weights[0].iter().all(|w| w.is_finite()));
    }

    #[test]
    fn bad_inputs_are_refused_with_the_counts() {
        let (mut x, y, groups) = gaussians(40, 3, 1.0, 2);
        let input = ProbeInput {
            x: &x,
            width: 3,
            groups: &groups,
        };
        let err = probe(
            &input,
            &binary(vec![1; 40]),
            &quick(0),
            &crate::progress::Hidden,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("same class `yes`"), "{err}");
        let few: Vec<u32> = (0..40).map(|i| i % 3).collect();
        let input = ProbeInput {
            x: &x,
            width: 3,
            groups: &few,
        };
        let err = probe(
            &input,
            &binary(y.clone()),
            &quick(0),
            &crate::progress::Hidden,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("3 distinct samples"), "{err}");
        x[7] = f32::NAN; // row 2, column 1
        x[3 * 10 + 1] = f32::INFINITY; // row 10, column 1
        let input = ProbeInput {
            x: &x,
            width: 3,
            groups: &groups,
        };
        let err = probe(
            &input,
            &binary(y.clone()),
            &quick(0),
            &crate::progress::Hidden,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("2 of 40 rows")
                && err.contains("1 of 3 columns")
                && err.contains("row 2, column 1"),
            "{err}"
        );
        let cfg = ProbeConfig {
            drop_nonfinite: true,
            ..quick(0)
        };
        let r = probe(&input, &binary(y), &cfg, &crate::progress::Hidden).unwrap();
        assert_eq!((r.n_rows, r.dropped_rows), (38, 2));
    }

    /// 60 samples x 300 features: 8 latent factors plus noise, each feature shifted and
    /// scaled, one constant and one almost constant column; `signal` is factor 0.
    fn wide(seed: u64) -> (Vec<f32>, Vec<f64>) {
        let (n, d, f) = (60, 300, 8);
        let z = rng::gaussian(seed, 1, n * f);
        let load = rng::gaussian(seed, 2, f * d);
        let noise = rng::gaussian(seed, 3, n * d);
        let mut x = Vec::with_capacity(n * d);
        for i in 0..n {
            for j in 0..d {
                let v: f32 = (0..f).map(|k| z[i * f + k] * load[k * d + j]).sum::<f32>()
                    + 0.3 * noise[i * d + j];
                x.push(match j {
                    5 => 2.5,
                    6 => 100.0 + 1e-4 * noise[i * d + j],
                    _ => (j % 7) as f32 + v * (1.0 + (j % 5) as f32),
                });
            }
        }
        (x, (0..n).map(|i| z[i * f] as f64).collect())
    }

    /// The same probe through both solvers, with a tight logistic tolerance so both reach
    /// the optimum to well below the compared precision.
    fn both_solvers(x: &[f32], target: &Target) -> (ProbeResult, ProbeResult) {
        let groups: Vec<u32> = (0..60).collect();
        let input = ProbeInput {
            x,
            width: 300,
            groups: &groups,
        };
        let run = |solver| {
            let cfg = ProbeConfig {
                permutations: 3,
                bootstrap: 50,
                c_grid: vec![0.01, 0.1, 1.0],
                // Ridge: lambdas well above the full path's Cholesky jitter (d f32 eps).
                lambda_grid: vec![0.1, 1.0, 10.0],
                logistic: LogisticOptions {
                    tol: 1e-7,
                    ftol: 1e-15,
                    max_iter: 3000,
                },
                solver,
                ..ProbeConfig::default()
            };
            probe(&input, target, &cfg, &crate::progress::Hidden).unwrap()
        };
        (run(Solver::Full), run(Solver::RowSpace))
    }

    fn assert_same(full: &ProbeResult, rows: &ProbeResult, weight_tol: f64) {
        assert_eq!(full.chosen_c, rows.chosen_c);
        assert_eq!(full.chosen_lambda, rows.chosen_lambda);
        for (a, b) in full.metrics.iter().zip(&rows.metrics) {
            for (va, vb) in [
                (a.value, b.value),
                (a.ci_low, b.ci_low),
                (a.ci_high, b.ci_high),
                (a.control_value, b.control_value),
                (a.baseline_value, b.baseline_value),
                (a.p_value, b.p_value),
            ] {
                assert!((va - vb).abs() < 1e-4, "{a:?}\n{b:?}");
            }
        }
        let (da, db) = (&full.direction, &rows.direction);
        for (wa, wb) in da.weights.iter().zip(&db.weights) {
            assert_eq!(wa.len(), 300);
            let top = wa.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (va, vb) in wa.iter().zip(wb) {
                assert!(
                    (va - vb).abs() < weight_tol * top,
                    "{va} vs {vb} (max {top})"
                );
            }
        }
        for (ba, bb) in da.bias.iter().zip(&db.bias) {
            assert!((ba - bb).abs() < 1e-3 * (1.0 + ba.abs()), "{ba} vs {bb}");
        }
    }

    #[test]
    fn row_space_solver_gives_the_full_solvers_answers_on_wide_data() {
        let (x, signal) = wide(21);
        let binary_y: Vec<u32> = signal.iter().map(|&v| (v > 0.0) as u32).collect();
        let (full, rows) = both_solvers(&x, &binary(binary_y));
        assert!(metric(&full, "accuracy").value > 0.7, "{:?}", full.metrics);
        assert_same(&full, &rows, 1e-5);

        let three: Vec<u32> = signal
            .iter()
            .map(|&v| (v > -0.4) as u32 + (v > 0.4) as u32)
            .collect();
        let target = Target::Categorical {
            codes: three,
            names: vec!["low".into(), "mid".into(), "high".into()],
        };
        let (full, rows) = both_solvers(&x, &target);
        assert_same(&full, &rows, 1e-5);

        let (full, rows) = both_solvers(&x, &Target::Continuous(signal));
        assert!(metric(&full, "r2").value > 0.5, "{:?}", full.metrics);
        // Ridge differs only by the full path's jitter (d f32 eps / lambda <= 4e-4).
        assert_same(&full, &rows, 1e-3);
    }

    #[test]
    fn control_and_permuted_labels_keep_the_sample_structure() {
        let groups: Vec<u32> = (0..300).map(|i| i / 3).collect();
        let labels: Vec<u32> = (0..300).map(|i| ((i / 3) % 4 == 0) as u32).collect();
        let control = control_labels(&groups, &labels, |c| c as u64, 5);
        for g in groups.chunks(3).enumerate().map(|(i, _)| i) {
            assert!(control[3 * g] == control[3 * g + 1] && control[3 * g] == control[3 * g + 2]);
        }
        // Drawn from the empirical distribution (25% ones) independently of the truth.
        let ones = control.iter().filter(|&&c| c == 1).count() as f64 / 300.0;
        assert!((ones - 0.25).abs() < 0.12, "{ones}");
        let agree = control.iter().zip(&labels).filter(|(a, b)| a == b).count() as f64 / 300.0;
        assert!(
            (agree - (0.25 * 0.25 + 0.75 * 0.75)).abs() < 0.12,
            "{agree}"
        );
        let perm = permuted_labels(&groups, &labels, 5, 0);
        assert_ne!(perm, labels);
        assert_eq!(
            perm.iter().filter(|&&c| c == 1).count(),
            labels.iter().filter(|&&c| c == 1).count()
        );
        assert_eq!(perm, permuted_labels(&groups, &labels, 5, 0));
    }
}
