//! Audits: rules a run must satisfy before a model is deployed, each judged from the run's
//! tables into a verdict with its evidence.
//!
//! A verdict is `pass`, `warn`, `fail` or `error`. Thresholds are judged on the 95%
//! interval where the table has one: `pass` when the whole interval is on the right side,
//! `fail` when the whole interval is on the wrong side, `warn` when it straddles the
//! threshold (the data cannot tell). A rule that cannot be evaluated (its table is missing,
//! no row matches) is an `error`, never a pass.
//!
//! Rules are TOML, in a rules file (`[[rule]]`) or in an experiment spec (`[[run.audit]]`):
//! ```toml
//! [[rule]]
//! kind = "decodable"            # the label must not be linearly decodable ...
//! label = "shape"
//! sites = ["vae.encoder.mean"]
//! at_most = 0.05                # ... beyond chance + 0.05
//! ```

mod evaluate;
pub mod output;

use serde::{Deserialize, Serialize};

use crate::store::Run;
use crate::{Error, Result};

pub use evaluate::{evaluate, wilson};

/// Exit code when every rule passed or warned.
pub const EXIT_PASS: u8 = 0;
/// Exit code when at least one rule failed (and none was an error).
pub const EXIT_FAIL: u8 = 3;
/// Exit code when at least one rule could not be evaluated.
pub const EXIT_ERROR: u8 = 4;

/// A rules file: `[[rule]]` entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(rename = "rule")]
    pub rules: Vec<Rule>,
}

/// One rule as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A name for reports and JUnit (default: made from the kind and its subject).
    pub name: Option<String>,
    pub kind: RuleKind,
    /// `decodable`: the label (a probed label of `tables/probes.parquet`).
    pub label: Option<String>,
    /// `decodable`, `finite`: sites (names or globs; default every site probed/recorded).
    #[serde(default)]
    pub sites: Vec<String>,
    /// `decodable`: steps (default every probed step).
    pub steps: Option<String>,
    /// `reconstruction`: `psnr_db`, `ssim` or `mse`; `decodable`: a probe metric (default
    /// the headline metric: balanced accuracy or R^2).
    pub metric: Option<String>,
    /// `frontier_mass`: after this many thoughts.
    pub thoughts: Option<u16>,
    /// The value must be at least this ...
    pub at_least: Option<f64>,
    /// ... or at most this.
    pub at_most: Option<f64>,
    /// `decodable`: thresholds count above chance (`chance`, default) or are absolute.
    #[serde(default)]
    pub relative_to: Relative,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// A label's probe score at sites/steps stays below (`at_most`) or above (`at_least`)
    /// a threshold, judged on the 95% interval; reported with control-task selectivity.
    Decodable,
    /// Reconstruction quality (`tables/infoloss_summary`): PSNR / SSIM at least, MSE at most.
    Reconstruction,
    /// No NaN or Inf at any recorded site and step.
    Finite,
    /// Task accuracy: reasoner answers (`correct`), or the diffusion model's requested-shape
    /// rate (`predicted_shape` against `shape`), with a Wilson 95% interval.
    Accuracy,
    /// Probability mass on the next BFS frontier after k thoughts (`tables/bfs_mass`).
    FrontierMass,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Decodable => "decodable",
            RuleKind::Reconstruction => "reconstruction",
            RuleKind::Finite => "finite",
            RuleKind::Accuracy => "accuracy",
            RuleKind::FrontierMass => "frontier_mass",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relative {
    #[default]
    Chance,
    Absolute,
}

/// Which side of the threshold a value must be on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Bound {
    pub fn threshold(self) -> f64 {
        match self {
            Bound::AtLeast(t) | Bound::AtMost(t) => t,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Bound::AtLeast(t) => format!(">= {t}"),
            Bound::AtMost(t) => format!("<= {t}"),
        }
    }

    /// The verdict for a value and its interval (`lo`, `hi`; equal to the value when the
    /// table has no interval).
    pub fn judge(self, lo: f64, hi: f64) -> Verdict {
        match self {
            Bound::AtLeast(t) if lo >= t => Verdict::Pass,
            Bound::AtLeast(t) if hi < t => Verdict::Fail,
            Bound::AtMost(t) if hi <= t => Verdict::Pass,
            Bound::AtMost(t) if lo > t => Verdict::Fail,
            _ => Verdict::Warn,
        }
    }
}

impl Rule {
    /// The name shown in reports: given, or made from the kind and subject.
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let mut s = self.kind.as_str().to_string();
        if let Some(l) = &self.label {
            s.push_str(&format!(" `{l}`"));
        }
        if !self.sites.is_empty() {
            s.push_str(&format!(" at {}", self.sites.join(",")));
        }
        if let Some(m) = &self.metric {
            s.push_str(&format!(" {m}"));
        }
        if let Some(k) = self.thoughts {
            s.push_str(&format!(" after {k} thoughts"));
        }
        if let Ok(Some(b)) = self.bound() {
            s.push_str(&format!(" {}", b.describe()));
        }
        s
    }

    /// The threshold side, if the kind needs one.
    pub fn bound(&self) -> std::result::Result<Option<Bound>, String> {
        match (self.at_least, self.at_most) {
            (Some(_), Some(_)) => Err("give either at_least or at_most, not both".into()),
            (Some(t), None) => Ok(Some(Bound::AtLeast(t))),
            (None, Some(t)) => Ok(Some(Bound::AtMost(t))),
            (None, None) => Ok(None),
        }
    }

    /// Everything wrong with the rule as written, before any table is read.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let bound = match self.bound() {
            Ok(b) => b,
            Err(e) => {
                out.push(e);
                None
            }
        };
        if let Some(b) = bound {
            if !b.threshold().is_finite() {
                out.push(format!("threshold {} is not a number", b.threshold()));
            }
        }
        let needs_bound = self.kind != RuleKind::Finite;
        if needs_bound && bound.is_none() && self.at_least.is_none() && self.at_most.is_none() {
            out.push("give a threshold: at_least = x or at_most = x".into());
        }
        let unit = |t: f64| (0.0..=1.0).contains(&t);
        match self.kind {
            RuleKind::Decodable => {
                if self.label.is_none() {
                    out.push("needs `label`, the probed label it is about".into());
                }
                if let (Some(b), Relative::Absolute) = (bound, self.relative_to) {
                    let metric = self.metric.as_deref().unwrap_or("balanced_accuracy");
                    if metric != "r2" && !unit(b.threshold()) {
                        out.push(format!(
                            "threshold {} is impossible for {metric}, which lies in [0, 1]",
                            b.threshold()
                        ));
                    }
                }
            }
            RuleKind::Reconstruction => match self.metric.as_deref() {
                Some("psnr_db") | Some("mse") => {}
                Some("ssim") => {
                    if let Some(b) = bound.filter(|b| !(-1.0..=1.0).contains(&b.threshold())) {
                        out.push(format!(
                            "threshold {} is impossible for SSIM, which lies in [-1, 1]",
                            b.threshold()
                        ));
                    }
                }
                Some(m) => out.push(format!("metric `{m}` is not one of psnr_db, ssim, mse")),
                None => out.push("needs `metric`: psnr_db, ssim or mse".into()),
            },
            RuleKind::Accuracy | RuleKind::FrontierMass => {
                if let Some(b) = bound.filter(|b| !unit(b.threshold())) {
                    out.push(format!(
                        "threshold {} is impossible for a rate, which lies in [0, 1]",
                        b.threshold()
                    ));
                }
                if self.kind == RuleKind::FrontierMass && self.thoughts.is_none() {
                    out.push("needs `thoughts`: after how many thoughts".into());
                }
            }
            RuleKind::Finite => {
                if bound.is_some() {
                    out.push("takes no threshold".into());
                }
            }
        }
        out
    }
}

/// A rule's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
            Verdict::Error => "error",
        }
    }
}

/// A judged rule with its evidence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Judged {
    pub rule: String,
    pub kind: String,
    pub verdict: Verdict,
    /// The value judged (the worst one over the rule's rows).
    pub value: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// The threshold as judged (for `decodable` relative to chance: chance + margin).
    pub threshold: Option<f64>,
    /// `>= x` / `<= x`.
    pub bound: Option<String>,
    /// One sentence saying why.
    pub detail: String,
    /// The table the evidence came from and the rows, as `key=value` strings.
    pub table: String,
    pub rows: Vec<String>,
}

/// The exit code for a set of verdicts: any error first, then any failure.
pub fn exit_code(judged: &[Judged]) -> u8 {
    if judged.iter().any(|j| j.verdict == Verdict::Error) {
        EXIT_ERROR
    } else if judged.iter().any(|j| j.verdict == Verdict::Fail) {
        EXIT_FAIL
    } else {
        EXIT_PASS
    }
}

/// Reads and checks a rules file; every problem is reported at once, naming the rule.
pub fn read_rules(path: &std::path::Path) -> Result<Vec<Rule>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let file: RulesFile = toml::from_str(&text).map_err(|e| Error::BadFile {
        path: path.to_path_buf(),
        detail: format!("not a valid rules file: {e}"),
    })?;
    let problems = check(&file.rules);
    if !problems.is_empty() {
        return Err(Error::BadFile {
            path: path.to_path_buf(),
            detail: problems.join("\n  "),
        });
    }
    Ok(file.rules)
}

/// Problems of every rule, each naming the rule (`rule 2 (decodable `shape`)`).
pub fn check(rules: &[Rule]) -> Vec<String> {
    rules
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.problems()
                .into_iter()
                .map(move |p| format!("rule {} ({}): {p}", i + 1, r.display_name()))
        })
        .collect()
}

/// Judges every rule against `run` and writes `tables/audit.parquet`, `audit.json` and
/// `audit.xml` into it.
pub fn audit(run: &Run, rules: &[Rule]) -> Result<Vec<Judged>> {
    let judged: Vec<Judged> = rules.iter().map(|r| evaluate(run, r)).collect();
    output::write(run, &judged)?;
    Ok(judged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RuleKind) -> Rule {
        Rule {
            name: None,
            kind,
            label: None,
            sites: vec![],
            steps: None,
            metric: None,
            thoughts: None,
            at_least: None,
            at_most: None,
            relative_to: Relative::Chance,
        }
    }

    #[test]
    fn intervals_decide_and_straddling_warns() {
        assert_eq!(Bound::AtLeast(0.9).judge(0.91, 0.97), Verdict::Pass);
        assert_eq!(Bound::AtLeast(0.9).judge(0.85, 0.95), Verdict::Warn);
        assert_eq!(Bound::AtLeast(0.9).judge(0.70, 0.89), Verdict::Fail);
        assert_eq!(Bound::AtMost(0.05).judge(0.01, 0.04), Verdict::Pass);
        assert_eq!(Bound::AtMost(0.05).judge(0.06, 0.2), Verdict::Fail);
        assert_eq!(Bound::AtMost(0.05).judge(0.0, 0.2), Verdict::Warn);
    }

    #[test]
    fn impossible_and_incomplete_rules_are_named() {
        let mut r = rule(RuleKind::Accuracy);
        r.at_least = Some(1.5);
        let p = check(&[r]);
        assert!(
            p[0].contains("rule 1") && p[0].contains("impossible"),
            "{p:?}"
        );
        let mut d = rule(RuleKind::Decodable);
        d.at_most = Some(0.05);
        assert!(check(&[d])[0].contains("needs `label`"));
        let mut both = rule(RuleKind::Accuracy);
        both.at_least = Some(0.5);
        both.at_most = Some(0.9);
        assert!(check(&[both])[0].contains("not both"));
        assert!(check(&[rule(RuleKind::Finite)]).is_empty());
        let mut f = rule(RuleKind::FrontierMass);
        f.at_least = Some(0.5);
        assert!(check(&[f])[0].contains("thoughts"));
    }

    #[test]
    fn errors_outrank_failures_in_the_exit_code() {
        let j = |v| Judged {
            rule: "r".into(),
            kind: "k".into(),
            verdict: v,
            value: None,
            ci_low: None,
            ci_high: None,
            threshold: None,
            bound: None,
            detail: String::new(),
            table: String::new(),
            rows: vec![],
        };
        assert_eq!(exit_code(&[j(Verdict::Pass), j(Verdict::Warn)]), EXIT_PASS);
        assert_eq!(exit_code(&[j(Verdict::Pass), j(Verdict::Fail)]), EXIT_FAIL);
        assert_eq!(
            exit_code(&[j(Verdict::Fail), j(Verdict::Error)]),
            EXIT_ERROR
        );
    }
}
