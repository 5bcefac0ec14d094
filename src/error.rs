//! The library's typed errors. Only the CLI turns them into messages for people.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("weights {path}: {detail}")]
    Weights { path: PathBuf, detail: String },

    #[error("unknown site `{name}`; this model's sites are: {}", valid.join(", "))]
    UnknownSite { name: String, valid: Vec<String> },

    #[error("step list `{spec}`: {reason}")]
    Steps { spec: String, reason: String },

    #[error("{path} already holds another run ({detail}); pass a new --run folder, or delete that one first")]
    RunExists { path: PathBuf, detail: String },

    #[error("{path} is in use by another latentlens process ({holder}); wait for it to finish, or stop it, then rerun")]
    Locked { path: PathBuf, holder: String },

    #[error(
        "{path}: the disk is full (no space left on device); this file was not written, \
             files finished before it are kept whole. Free some space and rerun the same \
             command: a recording resumes from its finished parts"
    )]
    DiskFull { path: PathBuf },

    #[error("{path}: {detail}")]
    BadFile { path: PathBuf, detail: String },

    #[error("{0}")]
    Invalid(String),

    #[error(
        "tokenizer {tokenizer} has {tokens} tokens but {weights} has {rows} embedding rows: {hint}"
    )]
    VocabMismatch {
        tokenizer: PathBuf,
        tokens: usize,
        weights: PathBuf,
        rows: usize,
        hint: String,
    },

    #[error("interrupted; finished parts are kept and rerunning the same command resumes")]
    Interrupted,

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Polars(#[from] polars::error::PolarsError),

    #[error(transparent)]
    Json(#[from] serde_json::Error),

    #[error(transparent)]
    Plot(#[from] crate::plots::PlotError),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error that names the file it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        if is_disk_full(&source) {
            return Error::DiskFull { path: path.into() };
        }
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// ENOSPC (and quota exhaustion, which leaves the user just as stuck).
fn is_disk_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
}

/// Attaches a path to I/O results: `fs::read(&p).at(&p)?`.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
