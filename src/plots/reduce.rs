//! Reduce figures: the PCA scree (lines) and the PCA / UMAP scatter, coloured by a label's
//! classes (legend) or values (colour bar).

use super::{Colouring, LinePlot, Result, Scatter, Series};
use crate::analysis::knn::subsample;
use crate::jobs::reduce::{row_colours, RowColours, RowKey};
use crate::store::resolve::Label;

/// Scatter plots draw at most this many points (seeded subsample, said in the title).
pub const PLOT_POINTS: usize = 5_000;
/// The scree shows at most this many components.
const SCREE_COMPONENTS: usize = 50;

/// Each component's share of the total variance and the cumulative share.
pub fn scree(site: &str, rows: u64, ratio: &[f64], cumulative: &[f64]) -> Result<String> {
    let shown = ratio.len().min(SCREE_COMPONENTS);
    let series = |name: &str, v: &[f64]| Series {
        name: name.into(),
        points: (0..shown).map(|i| ((i + 1) as f64, v[i])).collect(),
        ..Series::default()
    };
    super::lines(&LinePlot {
        title: format!("PCA scree of {site} ({rows} rows)"),
        x_label: "component".into(),
        y_label: "fraction of total variance".into(),
        series: vec![
            series("per component", ratio),
            series("cumulative", cumulative),
        ],
        y_range: Some((0.0, 1.05)),
        integer_x: true,
        ..LinePlot::default()
    })
}

/// `points` (one per row, keyed by `keys`), coloured by `label` when given. Rows the label
/// has no value for are a `(no value)` class, or left out of a value colouring (the title
/// says how many points are drawn).
pub fn scatter(
    title: &str,
    axes: (&str, &str),
    points: &[(f64, f64)],
    keys: &[RowKey],
    label: Option<&Label>,
    seed: u64,
) -> Result<String> {
    let shown: Vec<usize> = subsample(points.len(), PLOT_POINTS, seed ^ 0x9107)
        .into_iter()
        .map(|i| i as usize)
        .collect();
    let shown_keys: Vec<RowKey> = shown.iter().map(|&i| keys[i]).collect();
    let mut drawn: Vec<(f64, f64)> = shown.iter().map(|&i| points[i]).collect();
    let colouring = match label.map(|l| (l, row_colours(l, &shown_keys))) {
        None => Colouring::None,
        Some((l, RowColours::Classes { names, of })) => {
            let missing = names.len();
            let mut names: Vec<String> =
                names.iter().map(|n| format!("{} = {n}", l.name)).collect();
            if of.iter().any(Option::is_none) {
                names.push(format!("{} (no value)", l.name));
            }
            Colouring::Categories {
                names,
                of: of.iter().map(|c| c.unwrap_or(missing)).collect(),
            }
        }
        Some((l, RowColours::Values(values))) => {
            let keep: Vec<usize> = (0..values.len())
                .filter(|&i| values[i].is_some_and(f64::is_finite))
                .collect();
            drawn = keep.iter().map(|&i| drawn[i]).collect();
            Colouring::Values {
                label: l.name.clone(),
                of: keep.iter().filter_map(|&i| values[i]).collect(),
            }
        }
    };
    let title = if drawn.len() < points.len() {
        format!("{title} ({} of {} points)", drawn.len(), points.len())
    } else {
        format!("{title} ({} points)", points.len())
    };
    super::scatter(&Scatter {
        title,
        x_label: axes.0.into(),
        y_label: axes.1.into(),
        points: drawn,
        colouring,
    })
}
