//! The command-line layer: the only code that prints. Each subcommand family lives in its
//! own file with its clap arguments and a `run` function returning `anyhow::Result`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Writes one line of user output to stdout and returns from the enclosing function with
/// the I/O error when stdout is closed. `println!` panics on a closed pipe
/// (`latentlens sites diffusion | head -1`); this ends the command instead, and [`main`]
/// turns a broken pipe into a quiet exit 0, as ripgrep does.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(anyhow::Error::from)?
    }};
}

pub mod audit;
pub mod bench;
pub mod bench_probe;
pub mod bench_reasoner;
pub mod bench_sd;
pub mod bfs;
pub mod common;
pub mod data;
pub mod diffusion;
pub mod experiment;
pub mod infoloss;
pub mod probe;
pub mod reasoner;
pub mod record;
pub mod record_reasoner;
pub mod record_sd;
pub mod reduce;
pub mod steer;

/// Look inside the latent spaces of generative models.
#[derive(Debug, Parser)]
#[command(
    name = "latentlens",
    version,
    about,
    propagate_version = true,
    after_help = "Exit codes: 0 success, 1 error, 2 usage error, 3 an audit rule failed, 4 an audit rule could not be evaluated, 130 interrupted (rerun the same command to resume)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an experiment spec (probes/*.toml): record, analyse and write the report.
    Run(experiment::RunArgs),
    /// Judge a run against audit rules; the exit code gates a deployment (see --help).
    Audit(audit::AuditArgs),
    /// Remake a run's or an experiment's report.html and report.md from its tables.
    Report(experiment::ReportArgs),
    /// Record a model's latents at every step into a run folder.
    #[command(subcommand)]
    Record(record::RecordCmd),
    /// List a model's hook sites and their shapes.
    #[command(subcommand)]
    Sites(record::SitesCmd),
    /// Make datasets with known ground truth.
    #[command(subcommand)]
    Data(data::DataCmd),
    /// Train a built-in model.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Measure a built-in model against its quality targets.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Linear probes with baselines, CIs and control tasks over a run's sites x steps.
    Probe(probe::ProbeArgs),
    /// PCA or UMAP of a run's latents, with quality measures and scatter plots.
    Reduce(reduce::ReduceArgs),
    /// What is lost between recording points: reconstruction, CKA, mutual information.
    Infoloss(infoloss::InfolossArgs),
    /// Breadth-first search in continuous thoughts: node values, frontier mass and decoded
    /// chains after k = 0..K thoughts (Coconut paper, section 5).
    Bfs(bfs::BfsArgs),
    /// Steer the diffusion model along a probe direction; dose-response against a random one.
    Steer(steer::SteerArgs),
    /// Measure speed: recording overhead and throughput.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// The tiny latent diffusion model (VAE, UNet, shape classifier).
    Diffusion(diffusion::TrainArgs),
    /// The built-in continuous-thought reasoner (Coconut, CoT or no-CoT) on generated data.
    Reasoner(reasoner::TrainArgs),
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// The tiny latent diffusion model: PSNR, classifier and generation accuracy.
    Diffusion(diffusion::EvalArgs),
    /// Reasoners on a ProsQA file: answer accuracy and tokens generated (Table 1).
    Reasoner(reasoner::EvalArgs),
}

/// Exit codes: 0 success, 1 error, 2 usage error (clap), 3 an audit rule failed, 4 an
/// audit rule could not be evaluated, 130 interrupted.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => report(err),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let done = match cli.command {
        Command::Run(args) => return experiment::run(&args),
        Command::Audit(args) => return audit::run(&args),
        Command::Report(args) => experiment::report(&args),
        Command::Record(cmd) => record::run(cmd),
        Command::Sites(cmd) => record::run_sites(cmd),
        Command::Data(cmd) => data::run(cmd),
        Command::Train(TrainCommand::Diffusion(args)) => diffusion::run_train(&args),
        Command::Eval(EvalCommand::Diffusion(args)) => diffusion::run_eval(&args),
        Command::Train(TrainCommand::Reasoner(args)) => reasoner::run_train(&args),
        Command::Eval(EvalCommand::Reasoner(args)) => reasoner::run_eval(&args),
        Command::Probe(args) => probe::run(&args),
        Command::Reduce(args) => reduce::run(&args),
        Command::Infoloss(args) => infoloss::run(args),
        Command::Bfs(args) => bfs::run(&args),
        Command::Steer(args) => steer::run(&args),
        Command::Bench(cmd) => bench::run(cmd),
    };
    done.map(|()| ExitCode::SUCCESS)
}

fn report(err: anyhow::Error) -> ExitCode {
    let broken_pipe = err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    let interrupted = matches!(
        err.downcast_ref::<crate::Error>(),
        Some(crate::Error::Interrupted)
    );
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    if interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::FAILURE
    }
}
