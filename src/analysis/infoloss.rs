//! What is lost between two recording points: the pieces `latentlens infoloss` puts
//! together. Reconstruction quality with bootstrap intervals, mutual information between
//! labels and sites by two estimators, the share of decoded next-token mass that lands on
//! graph nodes for continuous thoughts, and decodability retention (a probe's score at B
//! over its score at A, from the probe table).

use crate::progress::Progress;
use serde::Serialize;

pub use super::cka::Representation;
use super::mi;
use super::ssim::{self, ImageShape, Reconstruction};
use crate::{Error, Result};

/// Bootstrap resamples used for the summary intervals.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// A mean with a percentile-bootstrap 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub mean: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub n: usize,
}

/// Mean of `values` and the 2.5 / 97.5 percentiles of `resamples` bootstrap means.
/// Resample `r` draws from `rng::stream(seed, r)`, so the interval is reproducible.
pub fn bootstrap_mean(values: &[f64], resamples: usize, seed: u64) -> Result<Summary> {
    use rand::Rng;
    let n = values.len();
    if n == 0 || resamples == 0 {
        return Err(Error::Invalid(format!(
            "bootstrap needs values and resamples, got {n} values and {resamples} resamples"
        )));
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut means: Vec<f64> = (0..resamples)
        .map(|r| {
            let mut rng = crate::rng::stream(seed, r as u64);
            (0..n).map(|_| values[rng.gen_range(0..n)]).sum::<f64>() / n as f64
        })
        .collect();
    means.sort_by(|a, b| a.total_cmp(b));
    Ok(Summary {
        mean,
        ci_low: quantile(&means, 0.025),
        ci_high: quantile(&means, 0.975),
        n,
    })
}

/// Linear-interpolation quantile of sorted values (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let (a, b) = (sorted[lo], sorted[hi]);
    if a == b {
        // Also keeps infinite PSNR means from turning into inf - inf = NaN.
        return a;
    }
    a + (b - a) * (pos - lo as f64)
}

/// How many image values each latent value stands for: numel(image) / numel(latent).
pub fn compression_ratio(image_numel: usize, latent_numel: usize) -> Result<f64> {
    if image_numel == 0 || latent_numel == 0 {
        return Err(Error::Invalid(format!(
            "compression ratio of {image_numel} image values over {latent_numel} latent values"
        )));
    }
    Ok(image_numel as f64 / latent_numel as f64)
}

/// Per-sample reconstruction metrics between two image sites recorded for the same samples
/// in the same order, each `n x shape.numel()` row-major.
pub fn reconstruction_per_sample(
    original: &[f32],
    reconstructed: &[f32],
    shape: ImageShape,
    data_range: f64,
    progress: &dyn Progress,
) -> Result<Vec<Reconstruction>> {
    let d = shape.numel();
    if d == 0 || original.len() != reconstructed.len() || !original.len().is_multiple_of(d) {
        return Err(Error::Invalid(format!(
            "reconstruction: {} and {} values do not make the same number of {shape} images",
            original.len(),
            reconstructed.len()
        )));
    }
    progress.set_length((original.len() / d) as u64);
    original
        .chunks_exact(d)
        .zip(reconstructed.chunks_exact(d))
        .map(|(a, b)| {
            progress.inc(1);
            ssim::reconstruction(a, b, shape, data_range)
        })
        .collect()
}

/// Means and bootstrap intervals of every reconstruction metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconstructionSummary {
    pub mse: Summary,
    pub psnr: Summary,
    pub ssim: Summary,
}

pub fn summarise_reconstruction(
    rows: &[Reconstruction],
    seed: u64,
) -> Result<ReconstructionSummary> {
    let pick = |f: fn(&Reconstruction) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    Ok(ReconstructionSummary {
        mse: bootstrap_mean(&pick(|r| r.mse), BOOTSTRAP_RESAMPLES, seed)?,
        psnr: bootstrap_mean(&pick(|r| r.psnr), BOOTSTRAP_RESAMPLES, seed)?,
        ssim: bootstrap_mean(&pick(|r| r.ssim), BOOTSTRAP_RESAMPLES, seed)?,
    })
}

/// A ground-truth label, one value per representation row.
#[derive(Debug, Clone, PartialEq)]
pub enum Label {
    Continuous(Vec<f64>),
    Categorical(Vec<u32>),
}

impl Label {
    pub fn len(&self) -> usize {
        match self {
            Label::Continuous(v) => v.len(),
            Label::Categorical(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entropy of a categorical label's empirical distribution, in nats: the upper bound
    /// of its MI with anything. `None` for a continuous label.
    pub fn entropy_nats(&self) -> Option<f64> {
        let Label::Categorical(c) = self else {
            return None;
        };
        let mut counts = std::collections::BTreeMap::<u32, usize>::new();
        for &v in c {
            *counts.entry(v).or_default() += 1;
        }
        let n = c.len() as f64;
        Some(
            counts
                .values()
                .map(|&k| {
                    let p = k as f64 / n;
                    -p * p.ln()
                })
                .sum(),
        )
    }

    /// Whether every row has the same value (no information to measure).
    pub fn is_constant(&self) -> bool {
        match self {
            Label::Continuous(v) => v.windows(2).all(|w| w[0] == w[1]),
            Label::Categorical(v) => v.windows(2).all(|w| w[0] == w[1]),
        }
    }

    /// The labels of the given rows.
    pub fn select(&self, idx: &[usize]) -> Label {
        match self {
            Label::Continuous(v) => Label::Continuous(idx.iter().map(|&i| v[i]).collect()),
            Label::Categorical(v) => Label::Categorical(idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

/// Which MI estimator produced a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    /// Gaussian entropies on the top principal components. For a categorical label this
    /// is not bounded by the label's entropy (the Gaussian stand-in for H(Z) is an upper
    /// bound that tight classes inflate); compare with `Label::entropy_nats`.
    Gaussian,
    /// KSG (continuous label) or Ross's mixed variant (categorical label), on the
    /// standardised top principal components.
    Ksg,
}

impl Estimator {
    /// The value of the `estimator` column in `mutual_info.parquet`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Estimator::Gaussian => "gaussian",
            Estimator::Ksg => "ksg",
        }
    }
}

/// Settings of [`mutual_information`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MiOptions {
    /// Principal components kept (fewer if the site is narrower or has few rows).
    pub components: usize,
    /// k of the kNN estimators.
    pub neighbours: usize,
    /// Rows used at most; a seeded subsample above that.
    pub max_points: usize,
    pub seed: u64,
}

impl Default for MiOptions {
    fn default() -> Self {
        Self {
            components: 8,
            neighbours: 3,
            max_points: 5000,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MiEstimate {
    pub estimator: Estimator,
    /// The estimate, clamped to `bound_nats` when it exceeded it.
    pub mi_nats: f64,
    /// What the estimator returned, before clamping.
    pub raw_nats: f64,
    /// The label's entropy, the most any representation can tell about it (categorical
    /// labels only).
    pub bound_nats: Option<f64>,
    /// Whether `raw_nats` exceeded `bound_nats` and was clamped: the estimate is then
    /// not to be trusted (for the Gaussian one, classes tighter than a Gaussian).
    pub clamped: bool,
    /// Rows the estimate used (after subsampling).
    pub n: usize,
    /// Principal components it used.
    pub components: usize,
    /// k the kNN estimator used (`None` for the Gaussian one). Ross's estimator lowers k
    /// to a class's size - 1 in small classes; this is the smallest k it used.
    pub neighbours: Option<usize>,
}

/// A representation's rows projected on its top principal components, row-major
/// `rows x components`. Computed once per representation and reused for every label.
#[derive(Debug, Clone, PartialEq)]
pub struct PrincipalScores {
    pub z: Vec<f64>,
    pub components: usize,
}

impl PrincipalScores {
    /// Top `components` principal components of `rep` (fewer if it is narrower or has
    /// few rows).
    pub fn new(rep: Representation<'_>, components: usize) -> Result<Self> {
        let k = components.min(rep.width).min(rep.rows().saturating_sub(1));
        let z = mi::principal_scores(rep.x, rep.width, k)?;
        Ok(Self { z, components: k })
    }

    pub fn rows(&self) -> usize {
        self.z.len().checked_div(self.components).unwrap_or(0)
    }

    /// The scores of the given rows.
    pub fn select(&self, rows: &[usize]) -> PrincipalScores {
        let k = self.components;
        PrincipalScores {
            z: rows
                .iter()
                .flat_map(|&i| self.z[i * k..(i + 1) * k].iter().copied())
                .collect(),
            components: k,
        }
    }
}

/// MI between `label` and a representation, by both estimators, on the same seeded
/// subsample of at most `opts.max_points` rows and the same top principal components.
pub fn mutual_information(
    rep: Representation<'_>,
    label: &Label,
    opts: &MiOptions,
) -> Result<[MiEstimate; 2]> {
    let rows = rep.rows();
    if rows != label.len() {
        return Err(Error::Invalid(format!(
            "MI: {rows} representation rows but {} labels",
            label.len()
        )));
    }
    let idx = mi::subsample(rows, opts.max_points, opts.seed);
    let x: Vec<f32> = idx
        .iter()
        .flat_map(|&i| rep.x[i * rep.width..(i + 1) * rep.width].iter().copied())
        .collect();
    let scores = PrincipalScores::new(Representation::new(&x, rep.width)?, opts.components)?;
    mutual_information_from_scores(&scores, &label.select(&idx), opts)
}

/// MI between `label` and precomputed principal scores (one label per score row), by
/// both estimators. `opts.components` and `opts.max_points` are not used here.
pub fn mutual_information_from_scores(
    scores: &PrincipalScores,
    label: &Label,
    opts: &MiOptions,
) -> Result<[MiEstimate; 2]> {
    let (z, k, n) = (&scores.z, scores.components, scores.rows());
    if n != label.len() {
        return Err(Error::Invalid(format!(
            "MI: {n} representation rows but {} labels",
            label.len()
        )));
    }
    if let Label::Continuous(v) = label {
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            return Err(Error::Invalid(format!(
                "MI: label value {bad} is not finite"
            )));
        }
    }
    let gaussian = match label {
        Label::Continuous(y) => mi::gaussian_mi_continuous(z, k, y)?,
        Label::Categorical(c) => mi::gaussian_mi_categorical(z, k, c)?,
    };
    // The kNN estimators use a max-norm, so give every axis unit variance (as
    // scikit-learn does) and break exact ties with a seeded 1e-10 jitter.
    let zs = jitter(&standardise_columns(z, k), opts.seed, 1);
    let (ksg, k_used) = match label {
        Label::Continuous(y) => {
            let ys = jitter(&standardise_columns(y, 1), opts.seed, 2);
            (mi::ksg(&zs, k, &ys, opts.neighbours)?, opts.neighbours)
        }
        Label::Categorical(c) => (
            mi::mixed_ksg(&zs, k, c, opts.neighbours)?,
            mi::mixed_ksg_neighbours(c, opts.neighbours),
        ),
    };
    let bound = label.entropy_nats();
    let est = |estimator, raw: f64, neighbours| {
        let clamped = bound.is_some_and(|b| raw > b);
        MiEstimate {
            estimator,
            mi_nats: if clamped { bound.unwrap_or(raw) } else { raw },
            raw_nats: raw,
            bound_nats: bound,
            clamped,
            n,
            components: k,
            neighbours,
        }
    };
    Ok([
        est(Estimator::Gaussian, gaussian, None),
        est(Estimator::Ksg, ksg, Some(k_used)),
    ])
}

fn standardise_columns(z: &[f64], width: usize) -> Vec<f64> {
    let n = (z.len() / width.max(1)).max(1) as f64;
    let mut out = z.to_vec();
    for c in 0..width {
        let mean = z.iter().skip(c).step_by(width).sum::<f64>() / n;
        let var = z
            .iter()
            .skip(c)
            .step_by(width)
            .map(|v| (v - mean).powi(2))
            .sum::<f64>()
            / n;
        let scale = if var > 0.0 { var.sqrt() } else { 1.0 };
        out.iter_mut()
            .skip(c)
            .step_by(width)
            .for_each(|v| *v = (*v - mean) / scale);
    }
    out
}

fn jitter(z: &[f64], seed: u64, stream: u64) -> Vec<f64> {
    let noise = crate::rng::gaussian(seed, crate::rng::mix(&[0x4a49_5454, stream]), z.len());
    z.iter()
        .zip(noise)
        .map(|(v, e)| v + 1e-10 * e as f64)
        .collect()
}

/// Token ids of the graph's nodes for one continuous thought: all nodes, those reachable
/// from the start, and the current BFS frontier.
#[derive(Debug, Clone, Copy)]
pub struct NodeTokens<'a> {
    pub graph: &'a [u32],
    pub reachable: &'a [u32],
    pub frontier: &'a [u32],
}

/// Share of one thought's decoded next-token mass on each node set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeMass {
    pub graph: f64,
    pub reachable: f64,
    pub frontier: f64,
}

/// Shares of next-token probability (one row over the vocabulary) on each node set,
/// relative to the row's total mass (so unnormalised rows work too). A token listed twice
/// in a set counts once.
pub fn node_token_mass(probs: &[f32], nodes: &NodeTokens<'_>) -> Result<NodeMass> {
    if let Some((i, p)) = probs
        .iter()
        .enumerate()
        .find(|(_, p)| !(p.is_finite() && **p >= 0.0))
    {
        return Err(Error::Invalid(format!(
            "next-token probabilities must be finite and >= 0; token {i} has {p}"
        )));
    }
    let total: f64 = probs.iter().map(|&p| p as f64).sum();
    if total.is_nan() || total <= 0.0 {
        return Err(Error::Invalid("next-token probabilities sum to 0".into()));
    }
    let share = |set: &[u32], name: &str| -> Result<f64> {
        let mut ids = set.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut mass = 0.0;
        for id in ids {
            let p = probs.get(id as usize).ok_or_else(|| {
                Error::Invalid(format!(
                    "{name} node token {id} is outside the vocabulary of {} tokens",
                    probs.len()
                ))
            })?;
            mass += *p as f64;
        }
        Ok(mass / total)
    };
    Ok(NodeMass {
        graph: share(nodes.graph, "graph")?,
        reachable: share(nodes.reachable, "reachable")?,
        frontier: share(nodes.frontier, "frontier")?,
    })
}

/// Numerically stable softmax of each row of `logits` (`rows x vocab`), for feeding
/// recorded `logits` to [`node_token_mass`].
pub fn softmax_rows(logits: &[f32], vocab: usize) -> Result<Vec<f32>> {
    let rep = Representation::new(logits, vocab)?;
    let mut out = Vec::with_capacity(rep.x.len());
    for row in logits.chunks_exact(vocab) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let exps: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
        let sum: f64 = exps.iter().sum();
        out.extend(exps.iter().map(|e| (e / sum) as f32));
    }
    Ok(out)
}

/// One probe score: the held-out metric of `label` decoded from `site` at `step`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeScore {
    pub site: String,
    pub step: u16,
    pub label: String,
    pub metric: String,
    pub value: f64,
}

/// Decodability at (site, step) relative to the reference site, for one label and metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionRow {
    pub label: String,
    pub metric: String,
    pub reference_site: String,
    pub reference_step: u16,
    pub reference_value: f64,
    pub site: String,
    pub step: u16,
    pub value: f64,
    /// `value / reference_value`; NaN when the reference decodes nothing (0).
    pub retention: f64,
}

/// Decodability retention: for each (label, metric), every score divided by the score at
/// `reference` (its earliest step), e.g. how much of what a probe reads from the pixels
/// survives in the VAE latent, in x_t at each step and in h-space. Labels the reference
/// was not probed for are left out.
pub fn retention(scores: &[ProbeScore], reference: &str) -> Vec<RetentionRow> {
    let mut out = Vec::new();
    for s in scores {
        let Some(r) = scores
            .iter()
            .filter(|r| r.site == reference && r.label == s.label && r.metric == s.metric)
            .min_by_key(|r| r.step)
        else {
            continue;
        };
        let retention = if r.value != 0.0 {
            s.value / r.value
        } else {
            f64::NAN
        };
        out.push(RetentionRow {
            label: s.label.clone(),
            metric: s.metric.clone(),
            reference_site: r.site.clone(),
            reference_step: r.step,
            reference_value: r.value,
            site: s.site.clone(),
            step: s.step,
            value: s.value,
            retention,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_is_seeded() {
        let values: Vec<f64> = rng::gaussian(1, 0, 400)
            .iter()
            .map(|&v| 2.0 + v as f64)
            .collect();
        let s = bootstrap_mean(&values, 1000, 9).unwrap();
        assert_eq!(s, bootstrap_mean(&values, 1000, 9).unwrap());
        assert!(s.ci_low < s.mean && s.mean < s.ci_high);
        // Normal theory: half-width ≈ 1.96 σ / √n with σ ≈ 1.
        let half = (s.ci_high - s.ci_low) / 2.0;
        assert!((half - 1.96 / 20.0).abs() < 0.02, "{half}");
        let constant = bootstrap_mean(&[f64::INFINITY; 5], 50, 1).unwrap();
        assert_eq!(
            (constant.ci_low, constant.ci_high),
            (f64::INFINITY, f64::INFINITY)
        );
    }

    #[test]
    fn quantile_matches_numpy() {
        // np.quantile([1, 2, 4, 8], [0.025, 0.975]) = [1.075, 7.7].
        let v = [1.0, 2.0, 4.0, 8.0];
        assert!((quantile(&v, 0.025) - 1.075).abs() < 1e-12);
        assert!((quantile(&v, 0.975) - 7.7).abs() < 1e-12);
    }

    #[test]
    fn compression_ratio_of_the_tiny_vae() {
        assert_eq!(compression_ratio(3 * 32 * 32, 4 * 8 * 8).unwrap(), 12.0);
        assert!(compression_ratio(3, 0).is_err());
    }

    #[test]
    fn per_sample_reconstruction_rows() {
        let shape = ImageShape::new(1, 12, 12);
        let a: Vec<f32> = (0..2 * 144)
            .map(|i| ((i % 13) as f32 / 6.0) - 1.0)
            .collect();
        let mut b = a.clone();
        b[144..].iter_mut().for_each(|v| *v += 0.1);
        let rows = reconstruction_per_sample(&a, &b, shape, 2.0, &crate::progress::Hidden).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ssim, 1.0);
        assert!((rows[1].mse - 0.01).abs() < 1e-6);
        assert!((rows[1].psnr - 26.0206).abs() < 1e-3);
        assert!(
            reconstruction_per_sample(&a, &b[..144], shape, 2.0, &crate::progress::Hidden).is_err()
        );
    }

    #[test]
    fn mutual_information_on_a_linear_gaussian_site() {
        // A 6-wide site whose first direction carries y: y = z0 + e, so I = ½ log 2.
        let n = 3000;
        let g = rng::gaussian(5, 0, n * 7);
        let x: Vec<f32> = (0..n * 6)
            .map(|k| if k % 6 == 0 { 3.0 * g[k] } else { 0.3 * g[k] })
            .collect();
        let y: Vec<f64> = (0..n)
            .map(|i| (x[i * 6] / 3.0 + g[n * 6 + i]) as f64)
            .collect();
        let opts = MiOptions {
            components: 2,
            max_points: 2000,
            seed: 3,
            ..Default::default()
        };
        let rep = Representation::new(&x, 6).unwrap();
        let [gauss, ksg] = mutual_information(rep, &Label::Continuous(y.clone()), &opts).unwrap();
        let want = 0.5 * 2f64.ln();
        assert_eq!((gauss.n, gauss.components), (2000, 2));
        assert!((gauss.mi_nats - want).abs() < 0.03, "{gauss:?}");
        assert!((ksg.mi_nats - want).abs() < 0.06, "{ksg:?}");
        assert_eq!(
            mutual_information(rep, &Label::Continuous(y.clone()), &opts).unwrap()[1],
            ksg
        );
        // Scores computed once and reused give the same estimates.
        let idx = crate::analysis::mi::subsample(n, 2000, 3);
        let sub: Vec<f32> = idx
            .iter()
            .flat_map(|&i| x[i * 6..(i + 1) * 6].to_vec())
            .collect();
        let scores = PrincipalScores::new(Representation::new(&sub, 6).unwrap(), 2).unwrap();
        let label = Label::Continuous(y.clone()).select(&idx);
        let again = mutual_information_from_scores(&scores, &label, &opts).unwrap();
        assert_eq!(again, [gauss, ksg]);
        let short = Label::Categorical(vec![0; 10]);
        assert!(mutual_information(rep, &short, &opts).is_err());
    }

    #[test]
    fn mutual_information_with_a_categorical_label() {
        // Class = sign of the dominant direction: a deterministic function, I = ln 2.
        let n = 2000;
        let g = rng::gaussian(6, 0, n * 3);
        let x: Vec<f32> = (0..n * 3)
            .map(|k| if k % 3 == 0 { 2.0 * g[k] } else { 0.5 * g[k] })
            .collect();
        let c: Vec<u32> = (0..n).map(|i| (x[i * 3] > 0.0) as u32).collect();
        let rep = Representation::new(&x, 3).unwrap();
        let opts = MiOptions {
            components: 1,
            ..Default::default()
        };
        let [_, ksg] = mutual_information(rep, &Label::Categorical(c), &opts).unwrap();
        assert!((ksg.mi_nats - 2f64.ln()).abs() < 0.05, "{ksg:?}");
    }

    #[test]
    fn a_gaussian_estimate_above_the_label_entropy_is_clamped_and_flagged() {
        // Three tight, far-apart classes: the Gaussian stand-in for H(Z) is far above the
        // true one, so the raw estimate exceeds ln 3, which no MI can.
        let n = 600;
        let g = rng::gaussian(8, 0, n * 2);
        let c: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
        let x: Vec<f32> = (0..n * 2)
            .map(|k| 50.0 * c[k / 2] as f32 * (k % 2) as f32 + 0.01 * g[k])
            .collect();
        let opts = MiOptions {
            components: 2,
            ..Default::default()
        };
        let rep = Representation::new(&x, 2).unwrap();
        let [gauss, ksg] = mutual_information(rep, &Label::Categorical(c.clone()), &opts).unwrap();
        let bound = Label::Categorical(c.clone()).entropy_nats().unwrap();
        assert!((bound - 3f64.ln()).abs() < 1e-12);
        assert!(gauss.raw_nats > bound + 1.0, "{gauss:?}");
        assert!(gauss.clamped);
        assert_eq!((gauss.mi_nats, gauss.bound_nats), (bound, Some(bound)));
        assert!(ksg.mi_nats <= bound && ksg.neighbours == Some(3), "{ksg:?}");
        // A continuous label has no bound and is never clamped.
        let y: Vec<f64> = (0..n).map(|i| x[i * 2 + 1] as f64).collect();
        let [g2, _] = mutual_information(rep, &Label::Continuous(y), &opts).unwrap();
        assert!(!g2.clamped && g2.bound_nats.is_none() && g2.mi_nats == g2.raw_nats);
    }

    #[test]
    fn ksg_records_the_neighbours_it_used_in_small_classes() {
        // A class of 3 rows leaves 2 same-class neighbours: k = 5 becomes 2, and says so.
        let n = 40;
        let g = rng::gaussian(2, 0, n);
        let x: Vec<f32> = g.clone();
        let c: Vec<u32> = (0..n).map(|i| u32::from(i < 3)).collect();
        let opts = MiOptions {
            components: 1,
            neighbours: 5,
            ..Default::default()
        };
        let rep = Representation::new(&x, 1).unwrap();
        let [_, ksg] = mutual_information(rep, &Label::Categorical(c), &opts).unwrap();
        assert_eq!(ksg.neighbours, Some(2));
    }

    #[test]
    fn label_entropy_and_constancy() {
        let l = Label::Categorical(vec![0, 1, 1, 2, 2, 2, 2, 2]);
        // p = (1/8, 2/8, 5/8).
        let want: f64 = [1.0f64, 2.0, 5.0]
            .iter()
            .map(|k| -(k / 8.0) * (k / 8.0).ln())
            .sum();
        assert!((l.entropy_nats().unwrap() - want).abs() < 1e-12);
        assert_eq!(Label::Continuous(vec![1.0]).entropy_nats(), None);
        assert!(Label::Categorical(vec![3, 3]).is_constant());
        assert!(!l.is_constant());
    }

    #[test]
    fn node_mass_on_a_hand_built_thought() {
        // Vocabulary of 6; nodes are tokens 1..=4; reachable {2, 3}; frontier {3}.
        let probs = [0.1f32, 0.2, 0.3, 0.25, 0.05, 0.1];
        let nodes = NodeTokens {
            graph: &[1, 2, 3, 4, 4],
            reachable: &[2, 3],
            frontier: &[3],
        };
        let m = node_token_mass(&probs, &nodes).unwrap();
        assert!((m.graph - 0.8).abs() < 1e-6, "{m:?}");
        assert!((m.reachable - 0.55).abs() < 1e-6);
        assert!((m.frontier - 0.25).abs() < 1e-6);
        // Unnormalised rows give the same shares.
        let doubled: Vec<f32> = probs.iter().map(|p| p * 2.0).collect();
        let m2 = node_token_mass(&doubled, &nodes).unwrap();
        assert!((m2.reachable - 0.55).abs() < 1e-6);
        let bad = NodeTokens {
            graph: &[9],
            reachable: &[],
            frontier: &[],
        };
        assert!(node_token_mass(&probs, &bad)
            .unwrap_err()
            .to_string()
            .contains("9"));
        assert!(node_token_mass(
            &[0.5, -0.1],
            &NodeTokens {
                graph: &[],
                reachable: &[],
                frontier: &[]
            }
        )
        .is_err());
    }

    #[test]
    fn softmax_rows_sum_to_one_and_keep_order() {
        let p = softmax_rows(&[0.0, (2f32).ln(), 1000.0, 1000.0], 2).unwrap();
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-6 && (p[1] - 2.0 / 3.0).abs() < 1e-6);
        assert!((p[2] - 0.5).abs() < 1e-6 && (p[3] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn retention_divides_by_the_reference_site_per_label() {
        let score = |site: &str, step: u16, label: &str, value: f64| ProbeScore {
            site: site.into(),
            step,
            label: label.into(),
            metric: "r2".into(),
            value,
        };
        let scores = vec![
            score("image", 0, "x", 0.8),
            score("latent", 0, "x", 0.4),
            score("latent", 1, "x", 0.2),
            score("latent", 0, "hue", 0.9),
        ];
        let rows = retention(&scores, "image");
        let ratios: Vec<(String, u16, f64)> = rows
            .iter()
            .map(|r| (r.site.clone(), r.step, r.retention))
            .collect();
        assert_eq!(
            ratios,
            vec![
                ("image".into(), 0, 1.0),
                ("latent".into(), 0, 0.5),
                ("latent".into(), 1, 0.25)
            ]
        );
        assert!(
            rows.iter().all(|r| r.label == "x"),
            "hue has no reference score"
        );
    }
}
