//! `latentlens bfs`: the breadth-first-search analysis of continuous thoughts (Coconut
//! paper, section 5). For every question and k = 0..K thoughts, the model is switched back
//! to language; the node values, where the next step's mass goes, and what the greedy
//! continuation says are written as `tables/bfs_*.parquet` and `plots/bfs-*.svg`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::ProgressBar;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::common::{bar, interrupt_flag};
use super::reasoner::ReasonerSource;
use crate::analysis::bfs::{
    chain_counts, chain_text, chains_table, classify_chain, height_rows, height_table, mass_rows,
    mass_table, nodes_table, topk_rows, topk_table, ChainCategory, DecodedChain, HeightKind,
    HeightRow, MassRow, QuestionBranches, TopKRow,
};
use crate::data::prosqa::{self, Record};
use crate::reasoner::branch::branch_thoughts;
use crate::reasoner::format::QuestionFormat;
use crate::reasoner::gpt2::Gpt2;
use crate::store::manifest::hash_file;
use crate::store::{Manifest, ModelInfo, Run, STATUS_COMPLETE};

/// Thought counts of the paper's Figures 8 and 9.
const FIGURE_STEPS: [usize; 2] = [1, 2];
/// Top-j cumulative values of Figure 8.
const TOP: usize = 3;

/// Breadth-first-search analysis: node values, frontier mass, branch entropy and decoded
/// chains after k = 0..K continuous thoughts.
#[derive(Debug, Clone, clap::Args)]
pub struct BfsArgs {
    /// Run folder. A run recorded on the same --data (e.g. by `record reasoner`) gets the
    /// tables added; otherwise a new run of kind `bfs` is made there.
    #[arg(long)]
    pub run: PathBuf,

    /// ProsQA JSON file; `sample` is the index of a question in it.
    #[arg(long)]
    pub data: PathBuf,

    #[command(flatten)]
    pub source: ReasonerSource,

    /// Largest number of continuous thoughts K; every k = 0..K is analysed.
    #[arg(long, default_value_t = 6)]
    pub thoughts: usize,

    /// Analyse only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
}

pub fn run(args: &BfsArgs) -> anyhow::Result<()> {
    let mut records = prosqa::load(&args.data)?;
    if let Some(n) = args.limit {
        records.truncate(n);
    }
    anyhow::ensure!(
        !records.is_empty(),
        "{} holds no questions",
        args.data.display()
    );
    let reasoner = args.source.load(&super::common::device()?)?;
    let format = reasoner.format.as_ref();
    let frontier: Vec<usize> = (0..=args.thoughts).map(|k| format.named_hop(k)).collect();
    let mut run = open_run(
        args,
        &reasoner.source,
        &reasoner.loaded.weight_files,
        &frontier,
    )?;

    let started = Instant::now();
    let pb = bar(records.len() as u64, "bfs");
    let questions = branch_all(
        &reasoner.loaded.model,
        format,
        &records,
        args.thoughts,
        &pb,
        interrupt_flag(),
    );
    pb.finish_and_clear();
    let questions = questions?;
    let seconds = started.elapsed().as_secs_f64();

    let written = write_outputs(&run, &questions, &frontier)?;
    for path in &written {
        crate::outln!("wrote {}", path.display());
    }
    if run.manifest().kind == "bfs" {
        let m = run.manifest_mut();
        m.samples = questions.len() as u64;
        m.timings.insert("bfs".into(), seconds);
        m.status = STATUS_COMPLETE.into();
        run.write_manifest()?;
    }
    print_summary(&questions, &frontier, seconds)?;
    Ok(())
}

/// The run to add the tables to: an existing one, or a new `bfs` run.
fn open_run(
    args: &BfsArgs,
    model: &Path,
    weights: &[PathBuf],
    frontier: &[usize],
) -> anyhow::Result<Run> {
    if args.run.join("manifest.json").is_file() {
        let run = Run::open(&args.run)?;
        if run.manifest().kind != "bfs" {
            check_same_data(&run, &args.data)?;
            return Ok(run);
        }
    }
    let weights = weights
        .iter()
        .map(|p| hash_file(p))
        .collect::<crate::Result<Vec<_>>>()?;
    let data = hash_file(&args.data)?;
    let config = serde_json::json!({
        "data": args.data,
        "data_sha256": data.sha256,
        "model": model,
        "tokenizer": args.source.tokenizer,
        "thoughts": args.thoughts,
        "limit": args.limit,
        "frontier_depths": frontier,
    });
    let model = ModelInfo {
        id: format!("reasoner ({})", model.display()),
        weights,
    };
    let (run, _) = Run::create_or_resume(&args.run, Manifest::new("bfs", config, 0, model))?;
    Ok(run)
}

/// A run that names its data file must have been made on --data: `sample` is the index
/// of a question in that file, and the tables are joined on it.
fn check_same_data(run: &Run, data: &Path) -> anyhow::Result<()> {
    let Some(recorded) = run.manifest().config.get("data").and_then(|d| d.as_str()) else {
        return Ok(());
    };
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    anyhow::ensure!(
        canonical(Path::new(recorded)) == canonical(data),
        "{} was recorded on {recorded}, not on {}: its `sample` ids would not match; pass \
         the same --data or a new --run folder",
        run.root().display(),
        data.display()
    );
    Ok(())
}

/// Branches every question; stops between questions when `stop` turns true.
pub fn branch_all(
    model: &Gpt2,
    format: &dyn QuestionFormat,
    records: &[Record],
    thoughts: usize,
    progress: &ProgressBar,
    stop: &AtomicBool,
) -> crate::Result<Vec<QuestionBranches>> {
    let mut out = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            return Err(crate::Error::Interrupted);
        }
        let branches = branch_thoughts(model, format, record, thoughts, true)?;
        let chains = branches
            .iter()
            .map(|b| {
                let chain = format.read_chain(record, &b.generated);
                DecodedChain {
                    category: classify_chain(record, &chain),
                    text: chain_text(record, &chain),
                    tokens: b.generated.clone(),
                }
            })
            .collect();
        out.push(QuestionBranches {
            sample: i as u32,
            record: record.clone(),
            values: branches.into_iter().map(|b| b.node_values).collect(),
            chains,
        });
        progress.inc(1);
    }
    Ok(out)
}

/// Writes every table and plot; `frontier[k]` is the depth of the frontier after k
/// thoughts (`QuestionFormat::named_hop`). Returns the paths written.
pub fn write_outputs(
    run: &Run,
    questions: &[QuestionBranches],
    frontier: &[usize],
) -> anyhow::Result<Vec<PathBuf>> {
    let steps: Vec<usize> = FIGURE_STEPS
        .iter()
        .copied()
        .filter(|&k| k < frontier.len())
        .collect();
    let mass = mass_rows(questions, frontier)?;
    let heights = height_rows(questions, frontier, &steps)?;
    let top = topk_rows(questions, frontier, &steps, TOP)?;
    let counts = chain_counts(questions);
    // Render everything first: nothing is written if a plot fails.
    let plots = [
        ("bfs-height", height_svg(&heights, &steps)?),
        ("bfs-topk", topk_svg(&top, &steps)?),
        ("bfs-mass", mass_svg(&mass)?),
        ("bfs-chains", chains_svg(&counts)?),
    ];
    let mut tables = [
        ("bfs_nodes", nodes_table(questions, frontier)?),
        ("bfs_mass", mass_table(&mass)?),
        ("bfs_height", height_table(&heights)?),
        ("bfs_topk", topk_table(&top)?),
        ("bfs_chains", chains_table(questions)?),
    ];
    let mut paths = Vec::new();
    for (name, df) in tables.iter_mut() {
        paths.push(run.write_table(name, df)?);
    }
    for (name, svg) in &plots {
        paths.push(run.write_plot(name, svg)?);
    }
    Ok(paths)
}

fn print_summary(
    questions: &[QuestionBranches],
    frontier: &[usize],
    seconds: f64,
) -> anyhow::Result<()> {
    let mass = mass_rows(questions, frontier)?;
    let counts = chain_counts(questions);
    crate::outln!(
        "{} questions in {seconds:.1} s\n{:>3} {:>9} {:>11} {:>9} {:>8}  chains",
        questions.len(),
        "k",
        "frontier",
        "other nodes",
        "non-node",
        "entropy"
    );
    for (r, c) in mass.iter().zip(counts.iter()) {
        let chains: Vec<String> = ChainCategory::ALL
            .iter()
            .zip(c)
            .filter(|(_, &n)| n > 0)
            .map(|(cat, n)| format!("{} {n}", cat.as_str()))
            .collect();
        crate::outln!(
            "{:>3} {:>9.3} {:>11.3} {:>9.3} {:>8.3}  {}",
            r.step,
            r.frontier,
            r.other_nodes,
            r.non_node,
            r.branch_entropy.unwrap_or(f64::NAN),
            chains.join(", ")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- plots

type Panel<'a> = DrawingArea<SVGBackend<'a>, Shift>;

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A captioned panel with the axes every BFS plot shares.
fn panel_chart<'a, 'b>(
    panel: &'a Panel<'b>,
    caption: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> anyhow::Result<Chart<'a, 'b>> {
    Ok(ChartBuilder::on(panel)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?)
}

/// The grid and axis titles; `integer_x` labels whole numbers 0..=n only (thought counts,
/// heights).
fn draw_mesh(
    chart: &mut Chart<'_, '_>,
    integer_x: Option<usize>,
    x_desc: &str,
    y_desc: &str,
) -> anyhow::Result<()> {
    let mut mesh = chart.configure_mesh();
    if let Some(n) = integer_x {
        mesh.x_labels(n + 1)
            .x_label_formatter(&|v| format!("{v:.0}"));
    }
    mesh.x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()?;
    Ok(())
}

fn legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(position)
        .draw()?;
    Ok(())
}

fn line(colour: RGBAColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> + 'static {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
}

/// Figure 9: mean value of frontier nodes by height (shortest distance to a leaf), for
/// nodes that lead to the target and those that do not; one panel per k.
fn height_svg(rows: &[HeightRow], steps: &[usize]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (480 * steps.len().max(1) as u32, 440))
            .into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            "Frontier node value by height (shortest distance to a leaf)",
            ("sans-serif", 20),
        )?;
        let panels = root.split_evenly((1, steps.len().max(1)));
        for (panel, &k) in panels.iter().zip(steps) {
            let mine: Vec<&HeightRow> = rows
                .iter()
                .filter(|r| r.step as usize == k && r.height_kind == HeightKind::Min)
                .collect();
            height_panel(panel, &mine, k)?;
        }
        root.present()?;
    }
    Ok(svg)
}

fn height_panel(panel: &Panel<'_>, rows: &[&HeightRow], k: usize) -> anyhow::Result<()> {
    let x_hi = rows.iter().map(|r| r.height).max().unwrap_or(1).max(1) as f64;
    let y_hi = rows
        .iter()
        .map(|r| r.mean_value)
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.1;
    let caption = format!("after {k} thought(s)");
    let mut chart = panel_chart(panel, &caption, -0.3..x_hi + 0.3, 0.0..y_hi)?;
    draw_mesh(
        &mut chart,
        Some(x_hi as usize),
        "height (hops to the nearest leaf)",
        "mean value",
    )?;
    for (reaches, colour, name) in [
        (true, RGBColor(33, 113, 181), "leads to the target"),
        (false, RGBColor(203, 24, 29), "does not lead to the target"),
    ] {
        let pts: Vec<(f64, f64, u32)> = rows
            .iter()
            .filter(|r| r.reaches_target == reaches)
            .map(|r| (r.height as f64, r.mean_value, r.nodes))
            .collect();
        let c = colour.to_rgba();
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                c.stroke_width(2),
            ))?
            .label(name)
            .legend(line(c));
        chart.draw_series(pts.iter().map(|&(x, y, n)| {
            EmptyElement::at((x, y))
                + Circle::new((0, 0), 3, c.filled())
                + Text::new(format!("n={n}"), (4, -14), ("sans-serif", 11))
        }))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// Figure 8: cumulative value of the top-1/2/3 frontier nodes against the percentile of
/// questions; one panel per k.
fn topk_svg(rows: &[TopKRow], steps: &[usize]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (480 * steps.len().max(1) as u32, 440))
            .into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            "Cumulative value of the top frontier nodes",
            ("sans-serif", 20),
        )?;
        let panels = root.split_evenly((1, steps.len().max(1)));
        for (panel, &k) in panels.iter().zip(steps) {
            let caption = format!("after {k} thought(s)");
            let mut chart = panel_chart(panel, &caption, 0.0..100.0, 0.0..1.0)?;
            draw_mesh(
                &mut chart,
                None,
                "percentile of questions",
                "cumulative value",
            )?;
            for j in 1..=TOP as u8 {
                let c = Palette99::pick(j as usize - 1).to_rgba();
                let pts: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.step as usize == k && r.top == j)
                    .map(|r| (r.percentile, r.value.min(1.0)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
                    .label(format!("top-{j}"))
                    .legend(line(c));
            }
            legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        }
        root.present()?;
    }
    Ok(svg)
}

type MassOf = fn(&MassRow) -> f64;

/// Where the next step's mass goes after k thoughts, and the branch entropy.
fn mass_svg(rows: &[MassRow]) -> anyhow::Result<String> {
    let x_hi = rows.iter().map(|r| r.step).max().unwrap_or(0).max(1) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 440)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            "Next-step probability mass after k thoughts",
            ("sans-serif", 20),
        )?;
        let (left, right) = root.split_horizontally(560);
        let caption = "mass (mean over questions)";
        let mut chart = panel_chart(&left, caption, -0.3..x_hi + 0.3, 0.0..1.0)?;
        draw_mesh(
            &mut chart,
            Some(x_hi as usize),
            "continuous thoughts k",
            "probability mass",
        )?;
        let series: [(&str, MassOf); 4] = [
            ("frontier nodes", |r| r.frontier),
            ("reachable nodes", |r| r.reachable),
            ("other graph nodes", |r| r.other_nodes),
            ("not a node", |r| r.non_node),
        ];
        for (i, (name, get)) in series.iter().enumerate() {
            let c = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.step as f64, get(r))).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(*name)
                .legend(line(c));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;

        let finite: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| r.branch_entropy.map(|h| (r.step as f64, h)))
            .collect();
        let y_hi = finite.iter().map(|p| p.1).fold(0.0, f64::max).max(0.1) * 1.1;
        let caption = "branch entropy over the frontier";
        let mut chart = panel_chart(&right, caption, -0.3..x_hi + 0.3, 0.0..y_hi)?;
        draw_mesh(
            &mut chart,
            Some(x_hi as usize),
            "continuous thoughts k",
            "entropy (nats)",
        )?;
        let c = BLACK.to_rgba();
        chart.draw_series(LineSeries::new(finite.clone(), c.stroke_width(2)))?;
        chart.draw_series(finite.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        root.present()?;
    }
    Ok(svg)
}

/// Figure 5: share of each kind of continuation after k thoughts, stacked.
fn chains_svg(counts: &[[u32; 6]]) -> anyhow::Result<String> {
    let colours = [
        RGBColor(49, 163, 84),
        RGBColor(222, 45, 38),
        RGBColor(33, 113, 181),
        RGBColor(107, 174, 214),
        RGBColor(253, 141, 60),
        RGBColor(117, 107, 177),
    ];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (860, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        // Blank room right of the last bar holds the legend.
        let last = counts.len().max(1) as f64 - 1.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Greedy continuation after k thoughts, by kind",
                ("sans-serif", 20),
            )
            .margin(14)
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5..last + 2.6, 0.0..100.0)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(counts.len().max(1) + 3)
            .x_label_formatter(&|v| {
                if *v <= last + 0.01 {
                    format!("{v:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("continuous thoughts k")
            .y_desc("% of questions")
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        for (i, cat) in ChainCategory::ALL.iter().enumerate() {
            let c = colours[i];
            let bars: Vec<Rectangle<(f64, f64)>> = counts
                .iter()
                .enumerate()
                .map(|(k, row)| {
                    let total = row.iter().sum::<u32>().max(1) as f64;
                    let below: f64 = row[..i].iter().sum::<u32>() as f64 / total * 100.0;
                    let top = below + row[i] as f64 / total * 100.0;
                    let x = k as f64;
                    Rectangle::new([(x - 0.35, below), (x + 0.35, top)], c.filled())
                })
                .collect();
            chart
                .draw_series(bars)?
                .label(cat.as_str().replace('_', " "))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::reasoner::checkpoint::{load_hf_gpt2, save_hf_gpt2};
    use crate::reasoner::format::BuiltinFormat;
    use crate::reasoner::gpt2::{random_varmap, Gpt2Config};
    use candle_core::Device;
    use clap::Parser;

    fn tiny_model(dir: &Path, vocab: usize) {
        let cfg = Gpt2Config {
            n_embd: 16,
            n_layer: 1,
            n_head: 2,
            // Questions spelled with the 500-token test BPE run to ~600 tokens.
            n_positions: 1024,
            vocab_size: vocab,
            layer_norm_epsilon: 1e-5,
        };
        let varmap = random_varmap(&cfg, 3, &Device::Cpu).unwrap();
        save_hf_gpt2(dir, &cfg, &varmap).unwrap();
    }

    fn setup(dir: &Path) -> (PathBuf, PathBuf) {
        let data = dir.join("q.json");
        prosqa::save(&data, &prosqa::generate(3, 21)).unwrap();
        let model = dir.join("model");
        tiny_model(&model, BuiltinFormat::default().vocab().len());
        (data, model)
    }

    fn args(run: &Path, data: &Path, model: &Path, thoughts: usize) -> BfsArgs {
        let cli = Cli::try_parse_from([
            "latentlens",
            "bfs",
            "--run",
            run.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--thoughts",
            &thoughts.to_string(),
        ])
        .unwrap();
        let Command::Bfs(a) = cli.command else {
            panic!("not bfs");
        };
        a
    }

    #[test]
    fn writes_every_table_and_plot_for_three_questions() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, model) = setup(tmp.path());
        let run_dir = tmp.path().join("run");
        run(&args(&run_dir, &data, &model, 3)).unwrap();
        let r = Run::open(&run_dir).unwrap();
        assert_eq!(r.manifest().kind, "bfs");
        assert_eq!(r.manifest().status, STATUS_COMPLETE);
        assert_eq!(
            r.tables().unwrap(),
            [
                "bfs_chains",
                "bfs_height",
                "bfs_mass",
                "bfs_nodes",
                "bfs_topk"
            ]
        );
        let records = prosqa::load(&data).unwrap();
        let nodes: usize = records.iter().map(|q| q.idx_to_symbol.len()).sum();
        let df = r.table("bfs_nodes").unwrap();
        assert_eq!(df.height(), nodes * 4);
        let chains = r.table("bfs_chains").unwrap();
        assert_eq!(chains.height(), 3 * 4);
        let allowed: Vec<&str> = ChainCategory::ALL.iter().map(|c| c.as_str()).collect();
        assert!(chains
            .column("category")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .all(|c| c.is_some_and(|c| allowed.contains(&c))));
        let mass = r.table("bfs_mass").unwrap();
        assert_eq!(mass.height(), 4);
        for name in ["bfs-height", "bfs-topk", "bfs-mass", "bfs-chains"] {
            let svg =
                std::fs::read_to_string(run_dir.join("plots").join(format!("{name}.svg"))).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{name}");
        }
        // Rerunning the same command resumes (rewrites) the same run.
        run(&args(&run_dir, &data, &model, 3)).unwrap();
        // Another analysis' run keeps its manifest and gains the tables.
        let other = tmp.path().join("recorded");
        let m = Manifest::new(
            "record reasoner",
            serde_json::json!({}),
            0,
            ModelInfo {
                id: "x".into(),
                weights: Vec::new(),
            },
        );
        Run::create_or_resume(&other, m).unwrap();
        run(&args(&other, &data, &model, 1)).unwrap();
        let r = Run::open(&other).unwrap();
        assert_eq!(r.manifest().kind, "record reasoner");
        assert_eq!(r.table("bfs_chains").unwrap().height(), 3 * 2);
        // ... unless it was recorded on another data file.
        let elsewhere = tmp.path().join("elsewhere");
        let m = Manifest::new(
            "record reasoner",
            serde_json::json!({ "data": tmp.path().join("other.json") }),
            0,
            ModelInfo {
                id: "x".into(),
                weights: Vec::new(),
            },
        );
        Run::create_or_resume(&elsewhere, m).unwrap();
        let err = run(&args(&elsewhere, &data, &model, 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sample` ids would not match"), "{err}");
    }

    #[test]
    fn a_gpt2_bpe_model_reads_the_frontier_at_hop_k() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, _) = setup(tmp.path());
        // A GPT-2 folder with its tokenizer beside the weights: 500 BPE tokens + 3 latent.
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bpe");
        let model = tmp.path().join("gpt2");
        tiny_model(&model, 503);
        for f in ["vocab.json", "merges.txt"] {
            std::fs::copy(fixtures.join(f), model.join(f)).unwrap();
        }
        let run_dir = tmp.path().join("run");
        run(&args(&run_dir, &data, &model, 2)).unwrap();
        let r = Run::open(&run_dir).unwrap();
        assert_eq!(
            r.manifest().config["frontier_depths"],
            serde_json::json!([0, 1, 2])
        );
        let nodes = r.table("bfs_nodes").unwrap();
        let col = |n: &str| nodes.column(n).unwrap().clone();
        let step: Vec<u16> = col("step").u16().unwrap().iter().flatten().collect();
        let depth: Vec<Option<u32>> = col("depth").u32().unwrap().iter().collect();
        let on: Vec<bool> = col("in_frontier")
            .bool()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        for i in 0..nodes.height() {
            assert_eq!(on[i], depth[i] == Some(step[i] as u32), "row {i}");
        }
        // Multi-token names: every value is a product of probabilities, at most 1 in sum.
        let values: Vec<f64> = col("value").f64().unwrap().iter().flatten().collect();
        assert!(values.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(r.table("bfs_chains").unwrap().height(), 3 * 3);
    }

    #[test]
    fn a_model_of_another_vocabulary_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, _) = setup(tmp.path());
        let model = tmp.path().join("small");
        tiny_model(&model, 40);
        let err = run(&args(&tmp.path().join("run"), &data, &model, 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("has 40 embedding rows"), "{err}");
        assert!(!tmp.path().join("run").exists());
    }

    #[test]
    fn an_interrupt_stops_between_questions() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, model) = setup(tmp.path());
        let loaded = load_hf_gpt2(&model, &Device::Cpu).unwrap();
        let stop = AtomicBool::new(true);
        let err = branch_all(
            &loaded.model,
            &BuiltinFormat::default(),
            &prosqa::load(&data).unwrap(),
            2,
            &ProgressBar::hidden(),
            &stop,
        )
        .unwrap_err();
        assert!(matches!(err, crate::Error::Interrupted));
    }

    #[test]
    fn the_model_defaults_to_the_shipped_coconut_reasoner() {
        let cli =
            Cli::try_parse_from(["latentlens", "bfs", "--run", "r", "--data", "d.json"]).unwrap();
        let Command::Bfs(a) = cli.command else {
            panic!("not bfs");
        };
        assert_eq!((a.thoughts, a.limit), (6, None));
        assert!(a
            .source
            .model_dir()
            .ends_with("weights/reasoner/coconut/model"));
    }
}
