//! Probe metrics with the conventions of scikit-learn / scipy (so numbers compare with
//! papers), and a seeded percentile bootstrap over groups for their 95% intervals.
//! Every metric returns NaN when it is undefined (e.g. AUC with one class, Pearson of a
//! constant); callers turn NaN into a null cell.

use rand::Rng;

use crate::rng;

/// Fraction of rows where `pred == truth`.
pub fn accuracy(truth: &[u32], pred: &[u32]) -> f64 {
    if truth.is_empty() {
        return f64::NAN;
    }
    let hits = truth.iter().zip(pred).filter(|(t, p)| t == p).count();
    hits as f64 / truth.len() as f64
}

/// Per-class (true positives, true count, predicted count), indexed by class code.
fn confusion_counts(truth: &[u32], pred: &[u32]) -> Vec<(usize, usize, usize)> {
    let k = truth
        .iter()
        .chain(pred)
        .copied()
        .max()
        .map_or(0, |m| m as usize + 1);
    let mut c = vec![(0, 0, 0); k];
    for (&t, &p) in truth.iter().zip(pred) {
        c[t as usize].1 += 1;
        c[p as usize].2 += 1;
        if t == p {
            c[t as usize].0 += 1;
        }
    }
    c
}

/// Mean recall over the classes present in `truth` (sklearn `balanced_accuracy_score`).
pub fn balanced_accuracy(truth: &[u32], pred: &[u32]) -> f64 {
    let recalls: Vec<f64> = confusion_counts(truth, pred)
        .iter()
        .filter(|c| c.1 > 0)
        .map(|&(tp, n_true, _)| tp as f64 / n_true as f64)
        .collect();
    mean(&recalls)
}

/// Unweighted mean F1 over the classes present in `truth` or `pred`, F1 = 0 for a class
/// never hit (sklearn `f1_score(average='macro')`).
pub fn macro_f1(truth: &[u32], pred: &[u32]) -> f64 {
    let f1s: Vec<f64> = confusion_counts(truth, pred)
        .iter()
        .filter(|c| c.1 + c.2 > 0)
        .map(|&(tp, n_true, n_pred)| 2.0 * tp as f64 / (n_true + n_pred) as f64)
        .collect();
    mean(&f1s)
}

/// Area under the ROC curve of `score` for `positive` rows: the Mann-Whitney statistic
/// with average ranks, so tied scores count one half (sklearn `roc_auc_score`).
pub fn roc_auc(positive: &[bool], score: &[f64]) -> f64 {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return f64::NAN;
    }
    let ranks = average_ranks(score);
    let rank_sum: f64 = ranks
        .iter()
        .zip(positive)
        .filter(|(_, &p)| p)
        .map(|(r, _)| r)
        .sum();
    let u = rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    u / (n_pos as f64 * n_neg as f64)
}

/// Coefficient of determination 1 - SS_res / SS_tot (sklearn `r2_score`).
pub fn r2(truth: &[f64], pred: &[f64]) -> f64 {
    let m = mean(truth);
    let ss_tot: f64 = truth.iter().map(|t| (t - m).powi(2)).sum();
    let ss_res: f64 = truth.iter().zip(pred).map(|(t, p)| (t - p).powi(2)).sum();
    if ss_tot == 0.0 {
        return f64::NAN;
    }
    1.0 - ss_res / ss_tot
}

/// Pearson correlation (NaN if either side is constant).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (mean(a), mean(b));
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    if saa == 0.0 || sbb == 0.0 {
        return f64::NAN;
    }
    sab / (saa * sbb).sqrt()
}

/// Spearman correlation: Pearson of average ranks (scipy `spearmanr`, ties averaged).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&average_ranks(a), &average_ranks(b))
}

/// 1-based ranks, tied values sharing the mean of their ranks.
pub fn average_ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut ranks = vec![0.0; v.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && v[order[end]] == v[order[start]] {
            end += 1;
        }
        let avg = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = avg;
        }
        start = end;
    }
    ranks
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// The rng stream of bootstrap draws.
const BOOTSTRAP_STREAM: u64 = 0x424F_4F54; // "BOOT"

/// Percentile bootstrap 95% interval of `metric` over groups: each resample draws as many
/// groups as there are, with replacement, and evaluates `metric` on the rows of the drawn
/// groups (a group drawn twice contributes its rows twice). Resamples where the metric is
/// undefined are skipped; `(NaN, NaN)` if fewer than half are defined.
pub fn bootstrap_ci(
    rows_of_group: &[Vec<usize>],
    resamples: usize,
    seed: u64,
    metric: &dyn Fn(&[usize]) -> f64,
) -> (f64, f64) {
    if rows_of_group.is_empty() || resamples == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = rng::stream(seed, BOOTSTRAP_STREAM);
    let mut values = Vec::with_capacity(resamples);
    let mut rows = Vec::new();
    for _ in 0..resamples {
        rows.clear();
        for _ in 0..rows_of_group.len() {
            let g = rng.gen_range(0..rows_of_group.len());
            rows.extend_from_slice(&rows_of_group[g]);
        }
        let v = metric(&rows);
        if v.is_finite() {
            values.push(v);
        }
    }
    if values.len() * 2 < resamples {
        return (f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    (quantile(&values, 0.025), quantile(&values, 0.975))
}

/// Linear-interpolated quantile of sorted values (numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Permutation-test p-value with the +1 correction: (1 + #{null >= observed}) / (1 + n).
/// Undefined null values count as not exceeding.
pub fn permutation_p_value(observed: f64, null: &[f64]) -> f64 {
    let exceed = null.iter().filter(|&&v| v >= observed).count();
    (1 + exceed) as f64 / (1 + null.len()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values: scikit-learn 1.9.1 / scipy 1.17.1 on the same vectors.
    const YT: [u32; 12] = [0, 1, 2, 2, 1, 0, 0, 2, 1, 1, 2, 0];
    const YP: [u32; 12] = [0, 2, 2, 2, 1, 0, 1, 0, 1, 1, 2, 2];

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn classification_metrics_match_sklearn() {
        close(accuracy(&YT, &YP), 0.6666666666666666);
        close(balanced_accuracy(&YT, &YP), 0.6666666666666666);
        close(macro_f1(&YT, &YP), 0.6626984126984127);
        // A predicted class absent from the truth counts in macro-F1, not in recall.
        let mut yp2 = YP;
        yp2[1] = 3;
        close(balanced_accuracy(&YT, &yp2), 0.6666666666666666);
        close(macro_f1(&YT, &yp2), 0.5178571428571428);
    }

    #[test]
    fn roc_auc_with_ties_matches_sklearn() {
        let y = [0, 0, 1, 1, 0, 1, 0, 1, 1, 0].map(|v| v == 1);
        let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.2, 0.9, 0.35, 0.6];
        close(roc_auc(&y, &s), 0.68);
        assert!(roc_auc(&[true, true], &[0.1, 0.2]).is_nan());
    }

    #[test]
    fn regression_metrics_match_sklearn_and_scipy() {
        let a = [3.0, -0.5, 2.0, 7.0, 4.2, 1.1, 0.0];
        let b = [2.5, 0.0, 2.0, 8.0, 3.9, 1.5, -0.3];
        close(r2(&a, &b), 0.9548798430603237);
        close(pearson(&a, &b), 0.9830944366543508);
        let c = [1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 4.0, 5.0];
        let d = [2.0, 1.0, 3.0, 3.0, 5.0, 4.0, 6.0, 6.0];
        close(spearman(&c, &d), 0.9007775105401477);
        assert!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_nan());
    }

    #[test]
    fn bootstrap_interval_covers_the_estimate_and_is_seeded() {
        // 200 groups of 3 rows; metric = mean of an iid 0/1 value with rate 0.3.
        let mut r = rng::stream(1, 2);
        let vals: Vec<f64> = (0..600)
            .map(|_| if r.gen::<f64>() < 0.3 { 1.0 } else { 0.0 })
            .collect();
        let groups: Vec<Vec<usize>> = (0..200)
            .map(|g| vec![3 * g, 3 * g + 1, 3 * g + 2])
            .collect();
        let m = |rows: &[usize]| rows.iter().map(|&r| vals[r]).sum::<f64>() / rows.len() as f64;
        let (lo, hi) = bootstrap_ci(&groups, 1000, 5, &m);
        let est = m(&(0..600).collect::<Vec<_>>());
        assert!(lo < est && est < hi, "{lo} {est} {hi}");
        // Normal approximation: 2 * 1.96 * sqrt(p (1 - p) / 600) = 0.073 wide.
        let se = (est * (1.0 - est) / 600.0).sqrt();
        assert!(
            (hi - lo - 3.92 * se).abs() < 0.15 * 3.92 * se,
            "{lo} {hi} {se}"
        );
        assert_eq!((lo, hi), bootstrap_ci(&groups, 1000, 5, &m));
    }

    #[test]
    fn permutation_p_value_counts_ties_as_exceeding() {
        close(permutation_p_value(0.9, &[0.5, 0.9, 0.95, 0.1]), 3.0 / 5.0);
        close(permutation_p_value(1.0, &[0.5; 99]), 0.01);
    }
}
