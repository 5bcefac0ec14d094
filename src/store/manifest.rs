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
    /// The analyses whose tables are in `tables/`, one entry per analysis key.
    #[serde(default)]
    pub analyses: Vec<AnalysisRecord>,
    /// The experiment spec (path and text) when `latentlens run` made this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
}

/// What made one analysis's tables: enough to tell two `probes.parquet` apart and to know
/// whether rerunning an experiment must recompute it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisRecord {
    /// The analysis (`probe`, `reduce`, `infoloss`, `bfs`, ...).
    pub analysis: String,
    /// Tells several runs of one analysis apart (e.g. `probe` per label set); tables are
    /// named after it.
    pub key: String,
    /// The resolved options, as the job saw them.
    pub options: serde_json::Value,
    pub seed: u64,
    /// `latentlens 0.1.0`.
    pub tool: String,
    /// [`Manifest::identity`] of the run the analysis read.
    pub input: String,
    /// Tables (names under `tables/`) and plots (names under `plots/`) it wrote.
    pub tables: Vec<String>,
    pub plots: Vec<String>,
    /// Samples the analysis used and the run held (they differ only with partial runs).
    pub samples_used: u64,
    pub seconds: f64,
}

impl AnalysisRecord {
    /// Whether this record was made from the same inputs with the same options, so its
    /// tables can be kept.
    pub fn same_work(&self, other: &AnalysisRecord) -> bool {
        self.analysis == other.analysis
            && self.key == other.key
            && self.options == other.options
            && self.seed == other.seed
            && self.input == other.input
            && self.tool == other.tool
    }

    /// Key-value pairs for the Parquet metadata of its tables.
    pub fn provenance(&self) -> Vec<(String, String)> {
        vec![
            ("latentlens.analysis".into(), self.analysis.clone()),
            ("latentlens.analysis_key".into(), self.key.clone()),
            (
                "latentlens.analysis_options".into(),
                self.options.to_string(),
            ),
            ("latentlens.analysis_seed".into(), self.seed.to_string()),
            ("latentlens.analysis_tool".into(), self.tool.clone()),
            ("latentlens.input_run".into(), self.input.clone()),
            (
                "latentlens.samples_used".into(),
                self.samples_used.to_string(),
            ),
        ]
    }
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
    /// Per-sample dimensions, e.g. channel 4, height 8, width 8. Manifests written before
    /// this was typed hold `"channel=4"` strings; they are read too.
    #[serde(deserialize_with = "dims_typed_or_strings")]
    pub dims: Vec<SiteDim>,
    /// Length of `x` in this site's rows.
    pub width: usize,
}

/// One named dimension of a site's per-sample tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteDim {
    pub name: String,
    pub size: usize,
}

impl SiteDim {
    pub fn new(name: &str, size: usize) -> Self {
        SiteDim {
            name: name.to_string(),
            size,
        }
    }
}

fn dims_typed_or_strings<'de, D: serde::Deserializer<'de>>(
    de: D,
) -> std::result::Result<Vec<SiteDim>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Typed(SiteDim),
        Text(String),
    }
    let raw: Vec<Either> = Vec::deserialize(de)?;
    raw.into_iter()
        .map(|d| match d {
            Either::Typed(t) => Ok(t),
            Either::Text(s) => s
                .rsplit_once('=')
                .and_then(|(n, v)| Some(SiteDim::new(n, v.parse().ok()?)))
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("site dimension `{s}` is not name=size"))
                }),
        })
        .collect()
}

pub const STATUS_RUNNING: &str = "running";
pub const STATUS_COMPLETE: &str = "complete";

impl Manifest {
    pub fn new(kind: &str, config: serde_json::Value, seed: u64, model: ModelInfo) -> Self {
        Self {
            tool: format!("latentlens {}", env!("CARGO_PKG_VERSION")),
            git_commit: option_env!("LATENTLENS_GIT_COMMIT").map(str::to_string),
            command: command_line(),
            kind: kind.to_string(),
            config,
            seed,
            model,
            sites: Vec::new(),
            rows: BTreeMap::new(),
            samples: 0,
            timings: BTreeMap::new(),
            status: STATUS_RUNNING.to_string(),
            analyses: Vec::new(),
            spec: None,
        }
    }

    /// A short hash of what makes this run this run (kind, config, seed, weights): analyses
    /// record it so their tables can be traced to the exact recording they read.
    pub fn identity(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.kind.as_bytes());
        h.update(self.config.to_string().as_bytes());
        h.update(self.seed.to_le_bytes());
        for w in &self.model.weights {
            h.update(w.sha256.as_bytes());
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The analysis entry with this key, if any.
    pub fn analysis(&self, key: &str) -> Option<&AnalysisRecord> {
        self.analyses.iter().find(|a| a.key == key)
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

/// The command line as text. `std::env::args` panics on an argument that is not UTF-8 (a
/// `--run` path on Linux can be any bytes); the manifest records such bytes lossily.
fn command_line() -> Vec<String> {
    std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
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
