//! The `latentlens` binary: parse, dispatch, map the outcome to an exit code.

fn main() -> std::process::ExitCode {
    latentlens::cli::main()
}
