//! `latentlens bench reasoner`: what continuous thoughts cost. For k = 1..K thoughts,
//! latent generation with the KV cache (k single-position passes after the prompt) against
//! re-running the whole prefix for every thought, on the same questions, interleaved.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use crate::data::prosqa;
use crate::reasoner::coconut::{generate_latent, thoughts_by_recomputation};
use crate::sites::Hooks;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens bench reasoner --repeats 5")]
pub struct BenchReasoner {
    #[command(flatten)]
    pub source: super::reasoner::ReasonerSource,
    /// ProsQA file whose questions are the prompts (default: 64 generated ones).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Questions timed per measurement.
    #[arg(long, default_value_t = 64)]
    pub questions: usize,
    /// Largest number of thoughts.
    #[arg(long, default_value_t = 6)]
    pub max_thoughts: usize,
    /// Interleaved repeats; the best of each is kept.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, serde::Serialize)]
struct ThoughtCost {
    thoughts: usize,
    /// Seconds per question: prompt pass + k thought passes with the KV cache.
    cached_seconds: f64,
    /// Seconds per question re-running the prefix for each thought.
    recomputed_seconds: f64,
    /// recomputed / cached.
    ratio: f64,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    questions: usize,
    mean_prompt_tokens: f64,
    /// Thoughts per second with the KV cache, prompt pass excluded: 1 / the least-squares
    /// slope of seconds against k over k = 0..K (one noisy point cannot skew it).
    thoughts_per_second: f64,
    per_k: Vec<ThoughtCost>,
}

pub fn run(args: &BenchReasoner) -> anyhow::Result<()> {
    let reasoner = args.source.load(&super::common::device()?)?;
    let (model, format) = (&reasoner.loaded.model, reasoner.format.as_ref());
    let mut records = match &args.data {
        Some(p) => prosqa::load(p)?,
        None => prosqa::generate(args.questions, 99),
    };
    records.truncate(args.questions);
    let prompts = records
        .iter()
        .map(|r| format.prompt(r))
        .collect::<crate::Result<Vec<_>>>()?;
    let n = prompts.len().max(1) as f64;
    let cached = |k: usize| -> anyhow::Result<f64> {
        let start = Instant::now();
        for p in &prompts {
            // max_answer 0: the prompt and thoughts only, as the recomputation does.
            generate_latent(model, p, k, format.latent_tokens(), 0, &mut Hooks::none())?;
        }
        Ok(start.elapsed().as_secs_f64() / n)
    };
    let recomputed = |k: usize| -> anyhow::Result<f64> {
        let start = Instant::now();
        for p in &prompts {
            thoughts_by_recomputation(model, p, k)?;
        }
        Ok(start.elapsed().as_secs_f64() / n)
    };
    let best = |f: &dyn Fn(usize) -> anyhow::Result<f64>, k: usize| -> anyhow::Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..args.repeats.max(1) {
            best = best.min(f(k)?);
        }
        Ok(best)
    };
    let base = best(&cached, 0)?;
    let mut per_k = Vec::new();
    for k in 1..=args.max_thoughts {
        let c = best(&cached, k)?;
        let r = best(&recomputed, k)?;
        per_k.push(ThoughtCost {
            thoughts: k,
            cached_seconds: c,
            recomputed_seconds: r,
            ratio: r / c,
        });
    }
    let mut points = vec![(0.0, base)];
    points.extend(per_k.iter().map(|c| (c.thoughts as f64, c.cached_seconds)));
    let slope = slope(&points);
    let report = Report {
        questions: prompts.len(),
        mean_prompt_tokens: prompts.iter().map(Vec::len).sum::<usize>() as f64 / n,
        thoughts_per_second: 1.0 / slope.max(1e-9),
        per_k,
    };
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    crate::outln!(
        "{} questions, {:.0} prompt tokens on average; {:.0} thoughts/s with the KV cache",
        report.questions,
        report.mean_prompt_tokens,
        report.thoughts_per_second
    );
    crate::outln!("thoughts  cached ms  recomputed ms  recomputed/cached");
    for c in &report.per_k {
        crate::outln!(
            "{:>8} {:>10.2} {:>14.2} {:>18.2}",
            c.thoughts,
            1e3 * c.cached_seconds,
            1e3 * c.recomputed_seconds,
            c.ratio
        );
    }
    Ok(())
}

/// Least-squares slope of y on x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    sxy / sxx.max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_slope_of_a_line_is_recovered() {
        let pts: Vec<(f64, f64)> = (0..7).map(|k| (k as f64, 0.5 + 0.25 * k as f64)).collect();
        assert!((super::slope(&pts) - 0.25).abs() < 1e-12);
    }
}
