//! Probe figures: the headline metric over site x step, and against step with its band.

use std::collections::BTreeSet;

use super::{Heatmap, LinePlot, Result, Series};
use crate::analysis::probe::ProbeRow;

/// The metric's fixed range when it has one (accuracies and AUC live in [0, 1]).
fn metric_range(metric: &str) -> Option<(f64, f64)> {
    (metric != "r2" && metric != "mse").then_some((0.0, 1.0))
}

/// Site x step heatmap of `metric` for one label (rows: sites, columns: steps).
pub fn heatmap(label: &str, metric: &str, rows: &[&ProbeRow]) -> Result<String> {
    let sites: Vec<String> = rows
        .iter()
        .map(|r| r.site.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let steps: Vec<u16> = rows
        .iter()
        .map(|r| r.step)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let values = sites
        .iter()
        .map(|site| {
            steps
                .iter()
                .map(|&step| {
                    rows.iter()
                        .find(|r| &r.site == site && r.step == step)
                        .and_then(|r| r.value)
                })
                .collect()
        })
        .collect();
    super::heatmap(&Heatmap {
        title: format!("Probe {metric} for `{label}` by site and step"),
        x_label: "step".into(),
        y_label: "site".into(),
        columns: steps.iter().map(u16::to_string).collect(),
        rows: sites,
        values,
        colour_label: metric.replace('_', " "),
        range: metric_range(metric),
    })
}

/// `metric` against step per site, with the 95% band; the control task as a thin line.
pub fn by_step(label: &str, metric: &str, rows: &[&ProbeRow]) -> Result<String> {
    let sites: Vec<String> = rows
        .iter()
        .map(|r| r.site.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut series = Vec::new();
    for site in &sites {
        let mut mine: Vec<&&ProbeRow> = rows.iter().filter(|r| &r.site == site).collect();
        mine.sort_by_key(|r| r.step);
        let x = |r: &ProbeRow| r.step as f64;
        series.push(Series {
            name: site.clone(),
            points: mine.iter().filter_map(|r| Some((x(r), r.value?))).collect(),
            band: mine
                .iter()
                .filter_map(|r| Some((x(r), r.ci_low?, r.ci_high?)))
                .collect(),
            secondary: false,
        });
        let control: Vec<(f64, f64)> = mine
            .iter()
            .filter_map(|r| Some((x(r), r.control_value?)))
            .collect();
        if !control.is_empty() {
            series.push(Series {
                name: format!("{site} (control task)"),
                points: control,
                band: Vec::new(),
                secondary: true,
            });
        }
    }
    super::lines(&LinePlot {
        title: format!("Probe {metric} for `{label}` by step (band: 95% CI)"),
        x_label: "step".into(),
        y_label: metric.replace('_', " "),
        series,
        y_anchor: Some(0.0),
        y_range: metric_range(metric).map(|(a, b)| (a - 0.02, b + 0.02)),
        integer_x: true,
    })
}
