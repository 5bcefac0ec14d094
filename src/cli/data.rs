//! `latentlens data prosqa`: write ProsQA-like records in the real file's JSON format, and
//! summarise any such file (ours or the real one) so the two can be compared.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::data::prosqa;

#[derive(Debug, Subcommand)]
pub enum DataCmd {
    /// Generate ProsQA-like graph questions (the Coconut paper's construction).
    Prosqa(ProsqaArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens data prosqa --n 1000 --seed 424242 --out heldout.json
  latentlens data prosqa --summarize ../shared/data/prosqa_valid.json")]
pub struct ProsqaArgs {
    /// Number of records (at least 1).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub n: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output JSON file (same format as prosqa_valid.json). Without it, only the summary
    /// of `--summarize` is printed.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the statistics of this existing file instead of generating.
    #[arg(long, conflicts_with = "out")]
    pub summarize: Option<PathBuf>,
}

pub fn run(cmd: DataCmd) -> anyhow::Result<()> {
    let DataCmd::Prosqa(args) = cmd;
    let (records, what) = match (&args.summarize, &args.out) {
        (Some(path), _) => (prosqa::load(path)?, path.display().to_string()),
        (None, Some(out)) => {
            let records = prosqa::generate(args.n as usize, args.seed);
            prosqa::save(out, &records)?;
            (records, out.display().to_string())
        }
        (None, None) => anyhow::bail!("give --out FILE to generate, or --summarize FILE"),
    };
    crate::outln!("{}", summary(&records, &what));
    Ok(())
}

/// Nodes, edges and the shortest root->target path distribution, as the data README
/// reports them for the real split.
pub fn summary(records: &[prosqa::Record], what: &str) -> String {
    if records.is_empty() {
        // A float sum of nothing is -0.0: say what there is instead of printing means.
        return format!("{what}: 0 records");
    }
    let n = records.len() as f64;
    let nodes: f64 = records
        .iter()
        .map(|r| r.idx_to_symbol.len() as f64)
        .sum::<f64>()
        / n;
    let edges: f64 = records.iter().map(|r| r.edges.len() as f64).sum::<f64>() / n;
    let mut hops = std::collections::BTreeMap::new();
    for r in records {
        *hops.entry(r.hops()).or_insert(0usize) += 1;
    }
    let dist: Vec<String> = hops
        .iter()
        .map(|(h, c)| format!("{h}: {:.0}%", 100.0 * *c as f64 / n))
        .collect();
    format!(
        "{what}: {} records, nodes mean {nodes:.1}, edges mean {edges:.1}, shortest path hops {}",
        records.len(),
        dist.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_summarised_without_means() {
        let text = summary(&[], "empty.json");
        assert_eq!(text, "empty.json: 0 records");
        let records = prosqa::generate(3, 0);
        let text = summary(&records, "g");
        assert!(
            text.contains("3 records, nodes mean") && !text.contains("-0.0"),
            "{text}"
        );
    }
}
