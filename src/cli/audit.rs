//! `latentlens audit --run DIR --rules FILE`: judge a run against rules, write the verdicts
//! (tables/audit.parquet, audit.json, audit.xml) and exit with the audit's code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::audit::{self, Judged};
use crate::store::Run;

/// Judge a run against audit rules (TOML `[[rule]]` entries).
#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 every rule passed or warned, 3 a rule failed, 4 a rule \
could not be evaluated (error), 1 bad input, 2 usage.

Examples:
  latentlens audit --run reports/quickstart/diffusion --rules probes/rules-diffusion.toml
  latentlens audit --run reports/bfs --rules rules.toml --json"
)]
pub struct AuditArgs {
    /// The run folder to judge.
    #[arg(long)]
    pub run: PathBuf,
    /// Rules file: `[[rule]]` tables with `kind` (decodable, reconstruction, finite,
    /// accuracy, frontier_mass), their subject and `at_least` / `at_most`.
    #[arg(long)]
    pub rules: PathBuf,
    /// Print the verdicts as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &AuditArgs) -> anyhow::Result<ExitCode> {
    let rules = audit::read_rules(&args.rules)?;
    let run = Run::open(&args.run)?;
    let judged = audit::audit(&run, &rules)?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&judged)?);
    } else {
        print_verdicts(&judged)?;
        crate::outln!(
            "wrote {}, {} and tables/audit.parquet",
            run.root().join(audit::output::JSON).display(),
            run.root().join(audit::output::JUNIT).display()
        );
    }
    Ok(ExitCode::from(audit::exit_code(&judged)))
}

pub fn print_verdicts(judged: &[Judged]) -> anyhow::Result<()> {
    for j in judged {
        crate::outln!(
            "{:<6} {}\n       {}",
            j.verdict.as_str().to_uppercase(),
            j.rule,
            j.detail
        );
    }
    Ok(())
}
