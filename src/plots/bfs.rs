//! BFS figures (Coconut paper, section 5): where the next step's mass goes after k
//! thoughts, the branch entropy, frontier value by node height (Fig. 9), the cumulative
//! value of the top frontier nodes (Fig. 8) and what the greedy continuations are (Fig. 5).
//! Bands and whiskers are the 95% bootstrap intervals over questions.

use super::{BarPlot, BarSeries, LinePlot, Result, Series};
use crate::analysis::bfs::{
    ChainCategory, ChainShare, HeightSummary, Interval, MassSummary, TopKRow,
};

fn band(x: f64, i: &Interval) -> (f64, f64, f64) {
    (x, i.low, i.high)
}

fn thoughts(k: u16) -> String {
    if k == 1 {
        "after 1 thought".into()
    } else {
        format!("after {k} thoughts")
    }
}

/// Mass on the frontier, on nodes the root reaches, on other nodes and on non-nodes,
/// against k.
pub fn mass(rows: &[MassSummary]) -> Result<String> {
    type Of = fn(&MassSummary) -> Interval;
    let parts: [(&str, Of); 4] = [
        ("frontier nodes", |r| r.frontier),
        ("reachable nodes", |r| r.reachable),
        ("other graph nodes", |r| r.other_nodes),
        ("not a node", |r| r.non_node),
    ];
    let series = parts
        .iter()
        .map(|(name, of)| Series {
            name: name.to_string(),
            points: rows.iter().map(|r| (r.step as f64, of(r).mean)).collect(),
            band: rows.iter().map(|r| band(r.step as f64, &of(r))).collect(),
            secondary: false,
        })
        .collect();
    super::lines(&LinePlot {
        title: "Next-step probability mass after k thoughts (band: 95% CI)".into(),
        x_label: "continuous thoughts k".into(),
        y_label: "probability mass (mean over questions)".into(),
        series,
        y_anchor: Some(0.0),
        y_range: Some((-0.02, 1.02)),
        integer_x: true,
    })
}

/// Entropy of the value distribution over the frontier, against k.
pub fn entropy(rows: &[MassSummary]) -> Result<String> {
    let with: Vec<(u16, Interval)> = rows
        .iter()
        .filter_map(|r| Some((r.step, r.branch_entropy?)))
        .collect();
    super::lines(&LinePlot {
        title: "Branch entropy over the frontier after k thoughts (band: 95% CI)".into(),
        x_label: "continuous thoughts k".into(),
        y_label: "entropy (nats)".into(),
        series: vec![Series {
            name: "branch entropy".into(),
            points: with.iter().map(|(k, i)| (*k as f64, i.mean)).collect(),
            band: with.iter().map(|(k, i)| band(*k as f64, i)).collect(),
            secondary: false,
        }],
        y_anchor: Some(0.0),
        y_range: None,
        integer_x: true,
    })
}

/// Mean frontier value by height, nodes that lead to the target against those that do not,
/// one line per k (paper Fig. 9).
pub fn height(rows: &[HeightSummary]) -> Result<String> {
    let mut keys: Vec<(u16, bool)> = rows.iter().map(|r| (r.step, !r.reaches_target)).collect();
    keys.sort();
    keys.dedup();
    let series = keys
        .into_iter()
        .map(|(k, not_reaching)| {
            let mut mine: Vec<&HeightSummary> = rows
                .iter()
                .filter(|r| r.step == k && r.reaches_target != not_reaching)
                .collect();
            mine.sort_by_key(|r| r.height);
            let which = if not_reaching {
                "does not lead to the target"
            } else {
                "leads to the target"
            };
            Series {
                name: format!("{}: {which}", thoughts(k)),
                points: mine
                    .iter()
                    .map(|r| (r.height as f64, r.value.mean))
                    .collect(),
                band: mine
                    .iter()
                    .map(|r| band(r.height as f64, &r.value))
                    .collect(),
                secondary: false,
            }
        })
        .collect();
    super::lines(&LinePlot {
        title: "Frontier node value by height (band: 95% CI)".into(),
        x_label: "height (hops to the nearest leaf)".into(),
        y_label: "mean node value".into(),
        series,
        y_anchor: Some(0.0),
        y_range: None,
        integer_x: true,
    })
}

/// Cumulative value of the top-1..top frontier nodes against the percentile of questions,
/// one line per (k, top) (paper Fig. 8).
pub fn topk(rows: &[TopKRow]) -> Result<String> {
    let mut keys: Vec<(u16, u8)> = rows.iter().map(|r| (r.step, r.top)).collect();
    keys.sort();
    keys.dedup();
    let series = keys
        .into_iter()
        .map(|(k, top)| Series {
            name: format!("{}: top-{top}", thoughts(k)),
            points: rows
                .iter()
                .filter(|r| r.step == k && r.top == top)
                .map(|r| (r.percentile, r.value.min(1.0)))
                .collect(),
            band: Vec::new(),
            secondary: false,
        })
        .collect();
    super::lines(&LinePlot {
        title: "Cumulative value of the top frontier nodes".into(),
        x_label: "percentile of questions (%)".into(),
        y_label: "cumulative value".into(),
        series,
        y_anchor: Some(0.0),
        y_range: Some((-0.02, 1.02)),
        integer_x: false,
    })
}

/// Share of questions per kind of greedy continuation after k thoughts (paper Fig. 5).
pub fn chains(shares: &[ChainShare]) -> Result<String> {
    let mut steps: Vec<u16> = shares.iter().map(|s| s.step).collect();
    steps.sort();
    steps.dedup();
    let series = ChainCategory::ALL
        .iter()
        .map(|&c| {
            let of = |k: u16| shares.iter().find(|s| s.step == k && s.category == c);
            BarSeries {
                name: c.as_str().replace('_', " "),
                values: steps
                    .iter()
                    .map(|&k| of(k).map_or(0.0, |s| 100.0 * s.share.mean))
                    .collect(),
                intervals: steps
                    .iter()
                    .map(|&k| of(k).map(|s| (100.0 * s.share.low, 100.0 * s.share.high)))
                    .collect(),
            }
        })
        .collect();
    super::bars(&BarPlot {
        title: "Greedy continuation after k thoughts, by kind (whiskers: 95% CI)".into(),
        x_label: "continuous thoughts k".into(),
        y_label: "% of questions".into(),
        categories: steps.iter().map(u16::to_string).collect(),
        series,
        y_range: Some((0.0, 100.0)),
    })
}
