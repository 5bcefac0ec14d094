//! Infoloss figures: CKA between representations (heatmap with colour bar), mutual
//! information against step per site and estimator (lines, the label's entropy as the
//! ceiling) and decodability retention against step (lines).

use std::collections::BTreeSet;

use super::{Heatmap, LinePlot, Result, Series};
use crate::analysis::infoloss::RetentionRow;
use crate::jobs::infoloss::MiRow;

/// Linear CKA between every pair of representations (`names[i]` is row and column i).
pub fn cka(names: &[String], matrix: &[f64], n: usize) -> Result<String> {
    let m = names.len();
    super::heatmap(&Heatmap {
        title: format!("Linear CKA between representations (n = {n})"),
        x_label: "representation (site@step)".into(),
        y_label: "representation (site@step)".into(),
        columns: names.to_vec(),
        rows: names.to_vec(),
        values: (0..m)
            .map(|i| {
                (0..m)
                    .map(|j| Some(matrix[i * m + j]).filter(|v| v.is_finite()))
                    .collect()
            })
            .collect(),
        colour_label: "CKA".into(),
        range: Some((0.0, 1.0)),
    })
}

/// MI against step for one label: one line per (site, estimator), and the label's entropy
/// (the most any representation can carry) as a thin line.
pub fn mutual_info(label: &str, rows: &[&MiRow], neighbours: usize) -> Result<String> {
    let keys: BTreeSet<(&str, &str)> = rows
        .iter()
        .map(|r| (r.site.as_str(), r.estimator.as_str()))
        .collect();
    let mut series = Vec::new();
    for (site, est) in keys {
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.site == site && r.estimator == est)
            .filter_map(|r| Some((r.step as f64, r.mi_nats?)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let name = match est {
            "ksg" => format!("{site} (kNN, k = {neighbours})"),
            _ => format!("{site} (Gaussian)"),
        };
        series.push(Series {
            name,
            points: pts,
            ..Series::default()
        });
    }
    let steps: Vec<f64> = rows.iter().map(|r| r.step as f64).collect();
    if let Some(h) = rows.iter().find_map(|r| r.label_entropy) {
        let (lo, hi) = super::range_of(steps.iter().copied(), None);
        series.push(Series {
            name: "label entropy (ceiling)".into(),
            points: vec![(lo, h), (hi, h)],
            band: Vec::new(),
            secondary: true,
        });
    }
    let n = rows.iter().map(|r| r.n).max().unwrap_or(0);
    super::lines(&LinePlot {
        title: format!("Mutual information between `{label}` and each site (n ≤ {n})"),
        x_label: "step".into(),
        y_label: "mutual information (nats)".into(),
        series,
        y_anchor: Some(0.0),
        integer_x: true,
        ..LinePlot::default()
    })
}

/// Retention by step, one line per (label, site); sites that fire once are single points.
pub fn retention(rows: &[RetentionRow], reference: &str) -> Result<String> {
    let keys: BTreeSet<(&str, &str)> = rows
        .iter()
        .map(|r| (r.label.as_str(), r.site.as_str()))
        .collect();
    let series = keys
        .into_iter()
        .map(|(label, site)| {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.label == label && r.site == site && r.retention.is_finite())
                .map(|r| (r.step as f64, r.retention))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                name: format!("{label} @ {site}"),
                points,
                ..Series::default()
            }
        })
        .collect();
    super::lines(&LinePlot {
        title: format!("Decodability retention: probe score / score at `{reference}`"),
        x_label: "step".into(),
        y_label: "retention (1 = as decodable as the reference)".into(),
        series,
        y_anchor: Some(0.0),
        integer_x: true,
        ..LinePlot::default()
    })
}
