//! Every figure latentlens draws, in one theme: fonts, sizes and two palettes (viridis for
//! values, Okabe-Ito for categories, both readable by colour-blind people and in greyscale
//! print). Four primitives take plain data and return an SVG string:
//! [`heatmap`] (with a colour bar), [`lines`] (with 95% bands), [`scatter`] (by category
//! or by value) and [`bars`] (grouped, with interval whiskers). Per-analysis figures are
//! small functions that turn table rows into one of these; nothing here knows a run folder.

pub mod bfs;
pub mod images;
pub mod infoloss;
pub mod probe;
pub mod reduce;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The font family every SVG names; plotters' SVG backend writes it as text, so viewers
/// use their own sans-serif font and nothing is embedded.
pub const FONT: &str = "sans-serif";
pub const TITLE_SIZE: u32 = 20;
pub const AXIS_SIZE: u32 = 16;
pub const TICK_SIZE: u32 = 14;
/// Default figure size in pixels (the report shows figures at up to 100% of 1280 px).
pub const SIZE: (u32, u32) = (900, 560);

/// An error while drawing (plotters' errors carry no types worth keeping).
#[derive(Debug, thiserror::Error)]
#[error("could not draw `{title}`: {detail}")]
pub struct PlotError {
    pub title: String,
    pub detail: String,
}

pub type Result<T> = std::result::Result<T, PlotError>;

fn err(title: &str) -> impl Fn(&dyn std::fmt::Display) -> PlotError + '_ {
    move |e| PlotError {
        title: title.to_string(),
        detail: e.to_string(),
    }
}

/// matplotlib's viridis at 9 stops, linearly interpolated; `t` in [0, 1] (NaN -> 0).
pub fn sequential(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 9] = [
        (68.0, 1.0, 84.0),
        (71.0, 45.0, 123.0),
        (59.0, 82.0, 139.0),
        (44.0, 114.0, 142.0),
        (33.0, 145.0, 140.0),
        (40.0, 174.0, 128.0),
        (94.0, 201.0, 98.0),
        (170.0, 220.0, 50.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    } * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Okabe & Ito's eight colours (black last), then darker twins of the first seven.
pub fn categorical(i: usize) -> RGBColor {
    const COLOURS: [RGBColor; 8] = [
        RGBColor(0, 114, 178),
        RGBColor(230, 159, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(86, 180, 233),
        RGBColor(213, 94, 0),
        RGBColor(240, 228, 66),
        RGBColor(0, 0, 0),
    ];
    let c = COLOURS[i % COLOURS.len()];
    if (i / COLOURS.len()) % 2 == 1 {
        RGBColor(c.0 / 2, c.1 / 2, c.2 / 2)
    } else {
        c
    }
}

/// A file name part from a site or label name: letters, digits, `.`, `_`, `-` stay.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Padded (lo, hi) over finite values, never empty; `anchor` is included when given
/// (e.g. 0 for accuracies), since plotters pins out-of-range points to the border.
pub fn range_of(values: impl IntoIterator<Item = f64>, anchor: Option<f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.into_iter().chain(anchor).filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

/// A grid of values with named rows and columns and a colour bar.
#[derive(Debug, Clone)]
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub columns: Vec<String>,
    pub rows: Vec<String>,
    /// `values[row][column]`; `None` is drawn grey and written `-`.
    pub values: Vec<Vec<Option<f64>>>,
    /// What the colour means, with its unit.
    pub colour_label: String,
    /// Fixed colour range (e.g. 0..1 for accuracies); the data's range when `None`.
    pub range: Option<(f64, f64)>,
}

pub fn heatmap(spec: &Heatmap) -> Result<String> {
    let e = err(&spec.title);
    let (lo, hi) = spec.range.unwrap_or_else(|| {
        let (lo, hi) = range_of(spec.values.iter().flatten().flatten().copied(), None);
        (lo, hi)
    });
    let longest = spec.rows.iter().map(|s| s.len()).max().unwrap_or(4) as u32;
    let (w, h) = (
        (300 + 8 * longest + 48 * spec.columns.len() as u32).clamp(720, 2400),
        (190 + 34 * spec.rows.len() as u32).clamp(320, 2400),
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let (main, bar) = root.split_horizontally(w - 130);
        let (nx, ny) = (spec.columns.len(), spec.rows.len());
        let mut chart = ChartBuilder::on(&main)
            .caption(&spec.title, (FONT, TITLE_SIZE))
            .margin(12)
            .x_label_area_size(56)
            .y_label_area_size(28 + 8 * longest)
            .build_cartesian_2d(-0.5..nx.max(1) as f64 - 0.5, -0.5..ny.max(1) as f64 - 0.5)
            .map_err(|x| e(&x))?;
        // Cell i spans [i - 0.5, i + 0.5], so integer ticks sit at cell centres.
        let name_at = |v: f64, names: &[String]| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(nx.min(30) + 1)
            .y_labels(ny.min(50) + 1)
            .x_label_formatter(&|v| name_at(*v, &spec.columns))
            .y_label_formatter(&|v| name_at(*v, &spec.rows))
            .x_desc(&spec.x_label)
            .y_desc(&spec.y_label)
            .label_style((FONT, TICK_SIZE))
            .axis_desc_style((FONT, AXIS_SIZE))
            .draw()
            .map_err(|x| e(&x))?;
        let annotate = nx * ny <= 160;
        for (yi, row) in spec.values.iter().enumerate() {
            for (xi, v) in row.iter().enumerate() {
                let (x, y) = (xi as f64, yi as f64);
                let t = v.map(|v| (v - lo) / (hi - lo));
                let fill = t.map_or(RGBColor(210, 210, 210), sequential);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                        fill.filled(),
                    )))
                    .map_err(|x| e(&x))?;
                if annotate {
                    let text = v.map_or("-".to_string(), |v| format!("{v:.2}"));
                    let colour = if t.is_some_and(|t| t < 0.55) {
                        WHITE
                    } else {
                        BLACK
                    };
                    let style = TextStyle::from((FONT, 13).into_font())
                        .color(&colour)
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    chart
                        .draw_series(std::iter::once(Text::new(text, (x, y), style)))
                        .map_err(|x| e(&x))?;
                }
            }
        }
        colour_bar(&bar, lo, hi, &spec.colour_label).map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(svg)
}

fn colour_bar(
    area: &DrawingArea<SVGBackend, Shift>,
    lo: f64,
    hi: f64,
    label: &str,
) -> std::result::Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let mut cb = ChartBuilder::on(area)
        .margin_top(50)
        .margin_bottom(60)
        .margin_right(8)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..1.0, lo..hi)?;
    cb.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_desc(label)
        .label_style((FONT, TICK_SIZE - 1))
        .axis_desc_style((FONT, AXIS_SIZE - 2))
        .draw()?;
    let n = 64;
    cb.draw_series((0..n).map(|i| {
        let a = lo + (hi - lo) * i as f64 / n as f64;
        let b = lo + (hi - lo) * (i + 1) as f64 / n as f64;
        Rectangle::new(
            [(0.0, a), (1.0, b)],
            sequential((i as f64 + 0.5) / n as f64).filled(),
        )
    }))?;
    Ok(())
}

/// One named line; `band` (when present) is a (low, high) interval per point.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub band: Vec<(f64, f64, f64)>,
    /// Drawn thin and dashed-looking (a baseline or control next to the real line).
    pub secondary: bool,
}

/// Lines over a shared x axis, each with an optional shaded 95% band.
#[derive(Debug, Clone, Default)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Included in the y range (e.g. 0 for a rate).
    pub y_anchor: Option<f64>,
    /// Fixed y range, when the quantity has one.
    pub y_range: Option<(f64, f64)>,
    /// Draw x as integers (steps, thoughts).
    pub integer_x: bool,
}

pub fn lines(spec: &LinePlot) -> Result<String> {
    let e = err(&spec.title);
    let xs = spec
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0));
    let (x_lo, x_hi) = range_of(xs, None);
    let ys = spec.series.iter().flat_map(|s| {
        s.points
            .iter()
            .map(|p| p.1)
            .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
    });
    let (y_lo, y_hi) = spec.y_range.unwrap_or_else(|| range_of(ys, spec.y_anchor));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&spec.title, (FONT, TITLE_SIZE))
            .margin(14)
            .x_label_area_size(52)
            .y_label_area_size(72)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
            .map_err(|x| e(&x))?;
        let integer_x = spec.integer_x;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(235, 235, 235))
            .x_labels(((x_hi - x_lo).round() as usize + 1).clamp(2, 12))
            .x_label_formatter(&|v| {
                if integer_x {
                    if (v - v.round()).abs() < 1e-6 {
                        format!("{v:.0}")
                    } else {
                        String::new()
                    }
                } else {
                    format!("{v:.3}")
                }
            })
            .x_desc(&spec.x_label)
            .y_desc(&spec.y_label)
            .label_style((FONT, TICK_SIZE))
            .axis_desc_style((FONT, AXIS_SIZE))
            .draw()
            .map_err(|x| e(&x))?;
        for (i, s) in spec.series.iter().enumerate() {
            let colour = categorical(i);
            if s.band.len() >= 2 {
                let poly: Vec<(f64, f64)> = s
                    .band
                    .iter()
                    .map(|b| (b.0, b.2))
                    .chain(s.band.iter().rev().map(|b| (b.0, b.1)))
                    .collect();
                chart
                    .draw_series(std::iter::once(Polygon::new(poly, colour.mix(0.18))))
                    .map_err(|x| e(&x))?;
            } else {
                for &(x, a, b) in &s.band {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            vec![(x, a), (x, b)],
                            colour.stroke_width(2),
                        )))
                        .map_err(|x| e(&x))?;
                }
            }
            let width = if s.secondary { 1 } else { 2 };
            chart
                .draw_series(LineSeries::new(
                    s.points.clone(),
                    colour.stroke_width(width),
                ))
                .map_err(|x| e(&x))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
                });
            let radius = if s.secondary { 2 } else { 4 };
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|&p| Circle::new(p, radius, colour.filled())),
                )
                .map_err(|x| e(&x))?;
        }
        legend(&mut chart).map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(svg)
}

fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .label_font((FONT, TICK_SIZE))
        .draw()
}

/// How scatter points are coloured.
#[derive(Debug, Clone)]
pub enum Colouring {
    /// One category per point (index into `names`), with a legend.
    Categories { names: Vec<String>, of: Vec<usize> },
    /// One value per point, on the sequential map with a colour bar.
    Values { label: String, of: Vec<f64> },
    /// One colour for all.
    None,
}

#[derive(Debug, Clone)]
pub struct Scatter {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<(f64, f64)>,
    pub colouring: Colouring,
}

pub fn scatter(spec: &Scatter) -> Result<String> {
    let e = err(&spec.title);
    let (x_lo, x_hi) = range_of(spec.points.iter().map(|p| p.0), None);
    let (y_lo, y_hi) = range_of(spec.points.iter().map(|p| p.1), None);
    let radius = if spec.points.len() > 2000 { 2 } else { 3 };
    let mut svg = String::new();
    {
        let (w, h) = (SIZE.0 + 80, SIZE.1 + 80);
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let (main, bar) = match spec.colouring {
            Colouring::Values { .. } => root.split_horizontally(w - 130),
            _ => root.split_horizontally(w),
        };
        let mut chart = ChartBuilder::on(&main)
            .caption(&spec.title, (FONT, TITLE_SIZE))
            .margin(14)
            .x_label_area_size(52)
            .y_label_area_size(72)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(235, 235, 235))
            .x_desc(&spec.x_label)
            .y_desc(&spec.y_label)
            .label_style((FONT, TICK_SIZE))
            .axis_desc_style((FONT, AXIS_SIZE))
            .draw()
            .map_err(|x| e(&x))?;
        match &spec.colouring {
            Colouring::Categories { names, of } => {
                for (c, name) in names.iter().enumerate() {
                    let colour = categorical(c);
                    let pts = spec
                        .points
                        .iter()
                        .zip(of)
                        .filter(|(_, &k)| k == c)
                        .map(|(&p, _)| Circle::new(p, radius, colour.mix(0.75).filled()));
                    chart
                        .draw_series(pts)
                        .map_err(|x| e(&x))?
                        .label(name.clone())
                        .legend(move |(x, y)| Circle::new((x + 8, y), 5, colour.filled()));
                }
                legend(&mut chart).map_err(|x| e(&x))?;
            }
            Colouring::Values { label, of } => {
                let (lo, hi) = range_of(of.iter().copied(), None);
                chart
                    .draw_series(spec.points.iter().zip(of).map(|(&p, &v)| {
                        Circle::new(p, radius, sequential((v - lo) / (hi - lo)).filled())
                    }))
                    .map_err(|x| e(&x))?;
                colour_bar(&bar, lo, hi, label).map_err(|x| e(&x))?;
            }
            Colouring::None => {
                chart
                    .draw_series(
                        spec.points
                            .iter()
                            .map(|&p| Circle::new(p, radius, categorical(0).mix(0.7).filled())),
                    )
                    .map_err(|x| e(&x))?;
            }
        }
        root.present().map_err(|x| e(&x))?;
    }
    Ok(svg)
}

/// One group of bars (one colour) across the categories; `intervals` draws whiskers.
#[derive(Debug, Clone, Default)]
pub struct BarSeries {
    pub name: String,
    pub values: Vec<f64>,
    pub intervals: Vec<Option<(f64, f64)>>,
}

#[derive(Debug, Clone, Default)]
pub struct BarPlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub categories: Vec<String>,
    pub series: Vec<BarSeries>,
    pub y_range: Option<(f64, f64)>,
}

pub fn bars(spec: &BarPlot) -> Result<String> {
    let e = err(&spec.title);
    let n = spec.categories.len().max(1);
    let groups = spec.series.len().max(1);
    let ys = spec.series.iter().flat_map(|s| {
        s.values
            .iter()
            .copied()
            .chain(s.intervals.iter().flatten().flat_map(|&(a, b)| [a, b]))
    });
    let (y_lo, y_hi) = spec.y_range.unwrap_or_else(|| range_of(ys, Some(0.0)));
    let mut svg = String::new();
    {
        let w = (SIZE.0).max(160 + 60 * (n * groups) as u32).min(2400);
        let root = SVGBackend::with_string(&mut svg, (w, SIZE.1)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&spec.title, (FONT, TITLE_SIZE))
            .margin(14)
            .x_label_area_size(60)
            .y_label_area_size(72)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, y_lo..y_hi)
            .map_err(|x| e(&x))?;
        let cats = &spec.categories;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(RGBColor(235, 235, 235))
            .x_labels(n.min(40) + 1)
            .x_label_formatter(&|v| {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 {
                    cats.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc(&spec.x_label)
            .y_desc(&spec.y_label)
            .label_style((FONT, TICK_SIZE))
            .axis_desc_style((FONT, AXIS_SIZE))
            .draw()
            .map_err(|x| e(&x))?;
        let slot = 0.8 / groups as f64;
        let base = 0.0f64.clamp(y_lo, y_hi);
        for (g, s) in spec.series.iter().enumerate() {
            let colour = categorical(g);
            let left = |i: usize| i as f64 - 0.4 + g as f64 * slot;
            chart
                .draw_series(s.values.iter().enumerate().map(|(i, &v)| {
                    Rectangle::new(
                        [(left(i) + 0.05 * slot, base), (left(i) + 0.95 * slot, v)],
                        colour.filled(),
                    )
                }))
                .map_err(|x| e(&x))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled())
                });
            for (i, iv) in s.intervals.iter().enumerate() {
                if let Some((a, b)) = iv {
                    let mid = left(i) + 0.5 * slot;
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            vec![(mid, *a), (mid, *b)],
                            BLACK.stroke_width(2),
                        )))
                        .map_err(|x| e(&x))?;
                }
            }
        }
        if spec.series.len() > 1 {
            legend(&mut chart).map_err(|x| e(&x))?;
        }
        root.present().map_err(|x| e(&x))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_text(svg: &str, text: &str) -> bool {
        svg.contains(&format!(">{text}<")) || svg.contains(text)
    }

    #[test]
    fn palettes_end_where_matplotlib_and_okabe_ito_do() {
        assert_eq!(sequential(0.0), RGBColor(68, 1, 84));
        assert_eq!(sequential(1.0), RGBColor(253, 231, 37));
        assert_eq!(sequential(f64::NAN), RGBColor(68, 1, 84));
        assert_eq!(categorical(0), RGBColor(0, 114, 178));
        assert_ne!(categorical(0), categorical(8));
        assert_eq!(file_safe("unet.mid_block/x y"), "unet.mid_block_x_y");
    }

    #[test]
    fn ranges_are_padded_and_never_empty() {
        assert_eq!(range_of([], None), (0.0, 1.0));
        assert_eq!(range_of([2.0, 2.0], None), (1.5, 2.5));
        let (lo, hi) = range_of([0.5, 1.0, f64::NAN], Some(0.0));
        assert!(lo < 0.0 && hi > 1.0);
    }

    #[test]
    fn every_figure_keeps_its_title_axes_and_legend() {
        let h = heatmap(&Heatmap {
            title: "probe accuracy".into(),
            x_label: "step".into(),
            y_label: "site".into(),
            columns: vec!["0".into(), "1".into()],
            rows: vec!["latent".into()],
            values: vec![vec![Some(0.5), None]],
            colour_label: "balanced accuracy".into(),
            range: Some((0.0, 1.0)),
        })
        .unwrap();
        for t in [
            "probe accuracy",
            "step",
            "site",
            "latent",
            "balanced accuracy",
            "-",
        ] {
            assert!(has_text(&h, t), "heatmap lacks {t}");
        }
        let l = lines(&LinePlot {
            title: "mass by thought".into(),
            x_label: "thought k".into(),
            y_label: "mass".into(),
            series: vec![Series {
                name: "frontier".into(),
                points: vec![(0.0, 0.9), (1.0, 0.8)],
                band: vec![(0.0, 0.85, 0.95), (1.0, 0.7, 0.9)],
                secondary: false,
            }],
            integer_x: true,
            ..LinePlot::default()
        })
        .unwrap();
        for t in ["mass by thought", "thought k", "mass", "frontier"] {
            assert!(has_text(&l, t), "lines lack {t}");
        }
        let s = scatter(&Scatter {
            title: "UMAP".into(),
            x_label: "umap 1".into(),
            y_label: "umap 2".into(),
            points: vec![(0.0, 0.0), (1.0, 1.0)],
            colouring: Colouring::Categories {
                names: vec!["circle".into(), "square".into()],
                of: vec![0, 1],
            },
        })
        .unwrap();
        for t in ["UMAP", "umap 1", "circle", "square"] {
            assert!(has_text(&s, t), "scatter lacks {t}");
        }
        let b = bars(&BarPlot {
            title: "accuracy".into(),
            x_label: "method".into(),
            y_label: "accuracy".into(),
            categories: vec!["a".into(), "b".into()],
            series: vec![BarSeries {
                name: "acc".into(),
                values: vec![0.5, 0.9],
                intervals: vec![Some((0.4, 0.6)), None],
            }],
            y_range: Some((0.0, 1.0)),
        })
        .unwrap();
        assert!(has_text(&b, "method") && b.starts_with("<svg"));
    }
}
