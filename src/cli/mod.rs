//! The command-line layer: the only code that prints. Each subcommand family lives in its
//! own file with its clap arguments and a `run` function returning `anyhow::Result`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Look inside the latent spaces of generative models.
#[derive(Debug, Parser)]
#[command(name = "latentlens", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version (placeholder until the subcommands land).
    Version,
}

/// Exit codes: 0 success, 1 error, 2 usage error (clap), 130 interrupted.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(err),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Version => println!("latentlens {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}

fn report(err: anyhow::Error) -> ExitCode {
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::BrokenPipe {
            return ExitCode::SUCCESS;
        }
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
