//! One resolution of an analysis's inputs, used by every job: which sites, which steps,
//! which label columns and whether each label is a set of classes or a continuous value.
//! Before this lived in each command, the same integer column was a class in one analysis
//! and continuous in another, and an unrecorded step was an error in one and silently
//! dropped in another.
//!
//! The rules, the same everywhere:
//! - **Sites**: names or globs; every pattern must match a recorded site; no patterns means
//!   every recorded site.
//! - **Steps**: the `--steps` grammar (`crate::steps`) read against the steps a site
//!   recorded: `last` is the last recorded step, and a step that was not recorded is an
//!   error that lists the recorded ones.
//! - **Labels**: a column of `samples.parquet` or of any run table keyed by `sample` (and
//!   `step` / `position` when it has them); `TABLE:COLUMN` picks the table. Floats are
//!   continuous; integers, strings, booleans and categoricals are classes; a
//!   [`LabelKind`] override turns an integer column continuous or a float column into
//!   classes.

use std::collections::{BTreeSet, HashMap};

use polars::prelude::*;

use super::Run;
use crate::sites::SitePattern;
use crate::{Error, Result};

/// The recorded sites matching `patterns` (all when empty), in the run's order. A pattern
/// that matches nothing is an error listing the recorded sites.
pub fn sites(run: &Run, patterns: &[String]) -> Result<Vec<String>> {
    let available = run.sites()?;
    if available.is_empty() {
        return Err(Error::BadFile {
            path: run.root().to_path_buf(),
            detail: "no recorded sites (no latents/site=*/ folders); record into it first".into(),
        });
    }
    let patterns: Vec<SitePattern> = split_patterns(patterns)?;
    for p in &patterns {
        if !available.iter().any(|s| p.matches(s)) {
            return Err(Error::UnknownSite {
                name: p.as_str().to_string(),
                valid: available.clone(),
            });
        }
    }
    Ok(available
        .into_iter()
        .filter(|s| patterns.is_empty() || patterns.iter().any(|p| p.matches(s)))
        .collect())
}

/// Splits `a,b` and repeated values into patterns; a value that is only separators or
/// blanks (`--sites ''`) is refused rather than read as "every site".
pub fn split_patterns(values: &[String]) -> Result<Vec<SitePattern>> {
    let mut out = Vec::new();
    for v in values {
        let parts: Vec<&str> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(Error::Invalid(format!(
                "site list `{v}` names no site; give names or globs such as `latent,unet.*`, \
                 or leave the option out for every site"
            )));
        }
        out.extend(parts.into_iter().map(SitePattern::new));
    }
    Ok(out)
}

/// The steps of `spec` among `recorded` (sorted). `all` is every recorded step, `last` the
/// last recorded one; a step that was not recorded is an error naming what was.
pub fn steps(spec: &str, recorded: &BTreeSet<u16>) -> Result<Vec<u16>> {
    let (Some(&first), Some(&last)) = (recorded.first(), recorded.last()) else {
        return Err(Error::Steps {
            spec: spec.to_string(),
            reason: "this site has no recorded rows".into(),
        });
    };
    let wanted = match crate::steps::parse_steps(spec, first, last.saturating_add(1).max(1)) {
        Ok(None) => return Ok(recorded.iter().copied().collect()),
        Ok(Some(w)) => w,
        Err(Error::Steps { reason, .. }) => {
            return Err(Error::Steps {
                spec: spec.to_string(),
                reason: format!("{reason}; recorded steps: {}", list(recorded)),
            })
        }
        Err(e) => return Err(e),
    };
    let missing: Vec<u16> = wanted
        .iter()
        .copied()
        .filter(|s| !recorded.contains(s))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Steps {
            spec: spec.to_string(),
            reason: format!(
                "steps {} were not recorded; recorded steps: {}",
                list(&missing),
                list(recorded)
            ),
        });
    }
    Ok(wanted)
}

/// `0, 1, 2 ... 49` style listing that stays short for long runs.
fn list<'a>(steps: impl IntoIterator<Item = &'a u16>) -> String {
    let v: Vec<u16> = steps.into_iter().copied().collect();
    if v.len() <= 12 {
        v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
    } else {
        let head: Vec<String> = v[..6].iter().map(u16::to_string).collect();
        format!(
            "{} ... {} ({} steps)",
            head.join(", "),
            v[v.len() - 1],
            v.len()
        )
    }
}

/// Whether a label is a set of classes or a continuous value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelKind {
    Classes,
    Continuous,
}

impl LabelKind {
    /// The one rule: floats are continuous, everything else that can be a label is a class.
    pub fn of(dtype: &DataType) -> LabelKind {
        if dtype.is_float() {
            LabelKind::Continuous
        } else {
            LabelKind::Classes
        }
    }
}

/// Join key of a label table: sample, and step / position when the table has them.
pub type Key = (u32, Option<u16>, Option<i32>);

/// One label column, resolved and indexed by key.
#[derive(Debug, Clone)]
pub struct Label {
    /// The column name (what tables and plots call the label).
    pub name: String,
    /// Where it came from, e.g. `samples.parquet` or `tables/bfs_nodes.parquet`.
    pub source: String,
    pub has_step: bool,
    pub has_position: bool,
    pub values: LabelValues,
}

#[derive(Debug, Clone)]
pub enum LabelValues {
    Classes {
        names: Vec<String>,
        by_key: HashMap<Key, u32>,
    },
    Continuous(HashMap<Key, f64>),
}

impl Label {
    pub fn kind(&self) -> LabelKind {
        match self.values {
            LabelValues::Classes { .. } => LabelKind::Classes,
            LabelValues::Continuous(_) => LabelKind::Continuous,
        }
    }

    /// The key a latent row joins on.
    pub fn key(&self, sample: u32, step: u16, position: Option<i32>) -> Key {
        (
            sample,
            self.has_step.then_some(step),
            if self.has_position { position } else { None },
        )
    }

    /// The columns this label joins on, for messages.
    pub fn join_keys(&self) -> String {
        let mut keys = vec!["sample"];
        if self.has_step {
            keys.push("step");
        }
        if self.has_position {
            keys.push("position");
        }
        keys.join(", ")
    }

    /// Class names (empty for a continuous label).
    pub fn class_names(&self) -> &[String] {
        match &self.values {
            LabelValues::Classes { names, .. } => names,
            LabelValues::Continuous(_) => &[],
        }
    }

    /// The label of every sample, for labels keyed by sample alone (`None` where missing).
    pub fn per_sample_classes(&self, samples: &[u32]) -> Option<Vec<Option<u32>>> {
        match &self.values {
            LabelValues::Classes { by_key, .. } if !self.has_step && !self.has_position => Some(
                samples
                    .iter()
                    .map(|&s| by_key.get(&(s, None, None)).copied())
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Continuous values per sample (classes give their code), for sample-keyed labels.
    pub fn per_sample_values(&self, samples: &[u32]) -> Option<Vec<Option<f64>>> {
        if self.has_step || self.has_position {
            return None;
        }
        Some(
            samples
                .iter()
                .map(|&s| match &self.values {
                    LabelValues::Classes { by_key, .. } => {
                        by_key.get(&(s, None, None)).map(|&c| c as f64)
                    }
                    LabelValues::Continuous(by_key) => by_key.get(&(s, None, None)).copied(),
                })
                .collect(),
        )
    }
}

/// Tables that hold analysis results, never labels (a probe must not probe for its own
/// output).
const RESULT_TABLES: [&str; 2] = ["probe", "audit"];

/// Finds `spec` (`COLUMN` or `TABLE:COLUMN`) in samples.parquet or a run table keyed by
/// `sample`, and indexes it. `kind` overrides the one rule.
pub fn label(run: &Run, spec: &str, kind: Option<LabelKind>) -> Result<Label> {
    let (table, column) = match spec.split_once(':') {
        Some((t, c)) => (Some(t), c),
        None => (None, spec),
    };
    let mut candidates: Vec<(String, DataFrame)> = Vec::new();
    if (table.is_none() || table == Some("samples")) && run.has_samples() {
        candidates.push(("samples.parquet".into(), run.samples()?));
    }
    for name in run.tables()? {
        let is_result = RESULT_TABLES.iter().any(|r| name.starts_with(r));
        if table.is_none_or(|t| t == name) && !is_result {
            candidates.push((format!("tables/{name}.parquet"), run.table(&name)?));
        }
    }
    let keyed: Vec<&(String, DataFrame)> = candidates
        .iter()
        .filter(|(_, df)| df.column("sample").is_ok())
        .collect();
    let Some((source, df)) = keyed.iter().find(|(_, df)| df.column(column).is_ok()) else {
        return Err(Error::Invalid(format!(
            "label `{spec}` not found; label columns in this run (tables keyed by `sample`):\n  {}",
            label_listing(&keyed)
        )));
    };
    index(source, df, column, kind)
}

fn label_listing(keyed: &[&(String, DataFrame)]) -> String {
    if keyed.is_empty() {
        return "none".into();
    }
    keyed
        .iter()
        .map(|(src, df)| {
            let cols: Vec<String> = df
                .get_column_names()
                .iter()
                .map(|c| c.to_string())
                .filter(|c| !["sample", "step", "position"].contains(&c.as_str()))
                .collect();
            format!("{src}: {}", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Indexes one column of a keyed table; refuses a table with two rows for one key.
pub fn index(source: &str, df: &DataFrame, column: &str, kind: Option<LabelKind>) -> Result<Label> {
    let bad = |detail: String| Error::Invalid(format!("{source}, column `{column}`: {detail}"));
    let sample = df
        .column("sample")?
        .cast(&DataType::UInt32)
        .map_err(|e| bad(format!("`sample` is not an id: {e}")))?;
    let sample = sample.u32()?;
    let opt_key = |name: &str| -> Result<Option<Vec<Option<i64>>>> {
        match df.column(name) {
            Ok(c) => Ok(Some(
                c.cast(&DataType::Int64)
                    .map_err(|e| bad(format!("`{name}` is not an integer: {e}")))?
                    .i64()?
                    .iter()
                    .collect(),
            )),
            Err(_) => Ok(None),
        }
    };
    let step = opt_key("step")?;
    let position = opt_key("position")?;
    let keys: Vec<Option<Key>> = (0..df.height())
        .map(|r| {
            let s = sample.get(r)?;
            let st = match &step {
                Some(v) => Some(u16::try_from(v[r]?).ok()?),
                None => None,
            };
            let pos = match &position {
                Some(v) => Some(i32::try_from(v[r]?).ok()?),
                None => None,
            };
            Some((s, st, pos))
        })
        .collect();
    let col = df.column(column)?;
    let dtype = col.dtype().clone();
    let labelable = dtype.is_primitive_numeric()
        || dtype.is_bool()
        || dtype.is_string()
        || matches!(dtype, DataType::Categorical(..));
    if !labelable {
        return Err(bad(format!(
            "type {dtype} cannot be a label (need numbers, strings or booleans)"
        )));
    }
    let kind = kind.unwrap_or_else(|| LabelKind::of(&dtype));
    if kind == LabelKind::Continuous && !dtype.is_primitive_numeric() {
        return Err(bad(format!("type {dtype} cannot be continuous")));
    }
    let mut label = Label {
        name: column.to_string(),
        source: source.to_string(),
        has_step: step.is_some(),
        has_position: position.is_some(),
        values: LabelValues::Continuous(HashMap::new()),
    };
    let join = label.join_keys();
    label.values = match kind {
        LabelKind::Continuous => {
            let v = col.cast(&DataType::Float64)?;
            let pairs = keys
                .iter()
                .zip(v.f64()?.iter())
                .filter_map(|(k, x)| Some(((*k)?, x?)));
            LabelValues::Continuous(unique_keys(pairs, source, &join)?)
        }
        LabelKind::Classes => {
            let text = col.cast(&DataType::String)?;
            let text: Vec<Option<String>> =
                text.str()?.iter().map(|v| v.map(str::to_string)).collect();
            let mut names: Vec<String> = text
                .iter()
                .flatten()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if dtype.is_primitive_numeric() {
                names.sort_by(|a, b| {
                    let (x, y) = (a.parse::<f64>(), b.parse::<f64>());
                    match (x, y) {
                        (Ok(x), Ok(y)) => x.total_cmp(&y),
                        _ => a.cmp(b),
                    }
                });
            }
            let code: HashMap<&str, u32> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), i as u32))
                .collect();
            let pairs = keys
                .iter()
                .zip(&text)
                .filter_map(|(k, t)| Some(((*k)?, code[t.as_deref()?])));
            let by_key = unique_keys(pairs, source, &join)?;
            LabelValues::Classes { names, by_key }
        }
    };
    Ok(label)
}

/// Indexes label values by key, refusing a table with two rows for one key (a label
/// must say one thing per latent row).
fn unique_keys<V>(
    pairs: impl Iterator<Item = (Key, V)>,
    source: &str,
    join: &str,
) -> Result<HashMap<Key, V>> {
    let mut by_key = HashMap::new();
    for (k, v) in pairs {
        if by_key.insert(k, v).is_some() {
            return Err(Error::Invalid(format!(
                "{source} has several rows for sample {}{}{}; a label needs one value per ({join})",
                k.0,
                k.1.map_or(String::new(), |s| format!(", step {s}")),
                k.2.map_or(String::new(), |p| format!(", position {p}")),
            )));
        }
    }
    Ok(by_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(v: &[u16]) -> BTreeSet<u16> {
        v.iter().copied().collect()
    }

    #[test]
    fn last_is_the_last_recorded_step_not_the_last_possible_one() {
        // A reasoner run recorded passes 0..=9: `last` must be 9, not u16::MAX.
        let r = recorded(&(0..10).collect::<Vec<_>>());
        assert_eq!(steps("last", &r).unwrap(), vec![9]);
        assert_eq!(steps("all", &r).unwrap().len(), 10);
        let sparse = recorded(&[0, 10, 20]);
        assert_eq!(steps("last", &sparse).unwrap(), vec![20]);
    }

    #[test]
    fn an_unrecorded_step_is_an_error_that_lists_the_recorded_ones() {
        let sparse = recorded(&[0, 10, 20]);
        let err = steps("5", &sparse).unwrap_err().to_string();
        assert!(err.contains("5") && err.contains("0, 10, 20"), "{err}");
        let err = steps("65536", &sparse).unwrap_err().to_string();
        assert!(err.contains("recorded steps: 0, 10, 20"), "{err}");
    }

    #[test]
    fn one_rule_for_labels_floats_continuous_the_rest_classes() {
        let df = df!(
            "sample" => [0u32, 1, 2, 3],
            "shape" => [0i64, 1, 2, 0],
            "scale" => [0.5f64, 0.7, 0.9, 1.1],
            "name" => ["a", "b", "a", "b"],
        )
        .unwrap();
        let shape = index("samples.parquet", &df, "shape", None).unwrap();
        assert_eq!(shape.kind(), LabelKind::Classes);
        assert_eq!(shape.class_names(), ["0", "1", "2"]);
        let scale = index("samples.parquet", &df, "scale", None).unwrap();
        assert_eq!(scale.kind(), LabelKind::Continuous);
        let forced = index("s", &df, "shape", Some(LabelKind::Continuous)).unwrap();
        assert_eq!(forced.kind(), LabelKind::Continuous);
        assert!(index("s", &df, "name", Some(LabelKind::Continuous)).is_err());
        assert_eq!(
            shape.per_sample_classes(&[3, 1, 9]).unwrap(),
            vec![Some(0), Some(1), None]
        );
    }

    #[test]
    fn integer_class_names_sort_numerically() {
        let df = df!("sample" => [0u32, 1, 2], "k" => [10i64, 2, 1]).unwrap();
        let k = index("s", &df, "k", None).unwrap();
        assert_eq!(k.class_names(), ["1", "2", "10"]);
    }

    #[test]
    fn duplicate_keys_and_empty_site_lists_are_refused() {
        let df = df!("sample" => [0u32, 0], "y" => [1i64, 2]).unwrap();
        let err = index("t", &df, "y", None).unwrap_err().to_string();
        assert!(err.contains("several rows for sample 0"), "{err}");
        let err = split_patterns(&[String::new()]).unwrap_err().to_string();
        assert!(err.contains("names no site"), "{err}");
        assert_eq!(split_patterns(&["a, b".into()]).unwrap().len(), 2);
    }
}
