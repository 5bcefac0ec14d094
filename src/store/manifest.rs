//! manifest.json: what made a run, so that a table can always be traced back to the exact
//! command, configuration and weights that produced it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `latentlens 0.1.0`.
    pub tool: String,
    /// The commit latentlens was built from, when it was built from a git checkout.
    pub git_commit: Option<String>,
    /// The full command line.
    pub command: Vec<String>,
    /// What kind of run this is, e.g. `record diffusion`.
    pub kind: String,
    /// The resolved configuration. Together with `kind` and the weights it is the run's
    /// identity: a rerun with the same identity resumes, any other is refused.
    pub config: serde_json::Value,
    pub seed: u64,
    pub model: ModelInfo,
    pub sites: Vec<SiteRecord>,
    /// Rows written per site (filled when the run completes).
    #[serde(default)]
    pub rows: BTreeMap<String, u64>,
    #[serde(default)]
    pub samples: u64,
    /// Seconds per phase.
    #[serde(default)]
    pub timings: BTreeMap<String, f64>,
    /// `running` until every part is written, then `complete`.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    pub weights: Vec<WeightFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteRecord {
    pub name: String,
    /// Per-sample dimensions as `name=size`, e.g. `["channel=4", "height=8", "width=8"]`.
    pub dims: Vec<String>,
    /// Length of `x` in this site's rows.
    pub width: usize,
}

pub const STATUS_RUNNING: &str = "running";
pub const STATUS_COMPLETE: &str = "complete";

impl Manifest {
    pub fn new(kind: &str, config: serde_json::Value, seed: u64, model: ModelInfo) -> Self {
        Self {
            tool: format!("latentlens {}", env!("CARGO_PKG_VERSION")),
            git_commit: option_env!("LATENTLENS_GIT_COMMIT").map(str::to_string),
            command: std::env::args().collect(),
            kind: kind.to_string(),
            config,
            seed,
            model,
            sites: Vec::new(),
            rows: BTreeMap::new(),
            samples: 0,
            timings: BTreeMap::new(),
            status: STATUS_RUNNING.to_string(),
        }
    }

    /// Whether `other` describes the same run (so rerunning it resumes this one).
    pub fn same_run(&self, other: &Manifest) -> bool {
        self.kind == other.kind
            && self.config == other.config
            && self.seed == other.seed
            && self.model.weights.iter().map(|w| &w.sha256).eq(other
                .model
                .weights
                .iter()
                .map(|w| &w.sha256))
    }

    /// Provenance key-value pairs for every Parquet file of the run.
    pub fn provenance(&self) -> Vec<(String, String)> {
        let weights: Vec<String> = self
            .model
            .weights
            .iter()
            .map(|w| format!("{}={}", w.path.display(), w.sha256))
            .collect();
        vec![
            ("latentlens.tool".into(), self.tool.clone()),
            (
                "latentlens.git_commit".into(),
                self.git_commit.clone().unwrap_or_default(),
            ),
            ("latentlens.command".into(), self.command.join(" ")),
            ("latentlens.kind".into(), self.kind.clone()),
            ("latentlens.config".into(), self.config.to_string()),
            ("latentlens.seed".into(), self.seed.to_string()),
            ("latentlens.model".into(), self.model.id.clone()),
            ("latentlens.weights_sha256".into(), weights.join(";")),
        ]
    }
}

/// SHA-256 and size of a weights file, streamed so large checkpoints need no memory.
pub fn hash_file(path: &Path) -> Result<WeightFile> {
    let mut file = std::fs::File::open(path).at(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(WeightFile {
        path: path.to_path_buf(),
        bytes,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.bin");
        std::fs::write(&p, b"abc").unwrap();
        let w = hash_file(&p).unwrap();
        // FIPS 180-2 test vector for "abc".
        assert_eq!(
            w.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(w.bytes, 3);
    }
}
