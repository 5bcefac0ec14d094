//! Judging one rule against a run's tables. Every path that cannot find its evidence ends
//! in an `error` verdict that says what is missing and how to produce it.

use std::collections::BTreeSet;

use polars::prelude::*;

use super::{Bound, Judged, Relative, Rule, RuleKind, Verdict};
use crate::jobs::probe::{headline_metric, probe_rows};
use crate::sites::SitePattern;
use crate::store::{resolve, Run};

/// A verdict with no value: the rule could not be evaluated.
fn error(rule: &Rule, table: &str, detail: String) -> Judged {
    Judged {
        rule: rule.display_name(),
        kind: rule.kind.as_str().into(),
        verdict: Verdict::Error,
        value: None,
        ci_low: None,
        ci_high: None,
        threshold: None,
        bound: rule.bound().ok().flatten().map(Bound::describe),
        detail,
        table: table.into(),
        rows: Vec::new(),
    }
}

pub fn evaluate(run: &Run, rule: &Rule) -> Judged {
    let problems = rule.problems();
    if !problems.is_empty() {
        return error(rule, "", problems.join("; "));
    }
    let result = match rule.kind {
        RuleKind::Decodable => decodable(run, rule),
        RuleKind::Reconstruction => reconstruction(run, rule),
        RuleKind::Finite => finite(run, rule),
        RuleKind::Accuracy => accuracy(run, rule),
        RuleKind::FrontierMass => frontier_mass(run, rule),
    };
    result.unwrap_or_else(|(table, detail)| error(rule, &table, detail))
}

type Eval = std::result::Result<Judged, (String, String)>;

fn bound_of(rule: &Rule) -> Bound {
    // `problems()` was empty, so a kind that needs a bound has one.
    rule.bound()
        .ok()
        .flatten()
        .unwrap_or(Bound::AtLeast(f64::NAN))
}

/// One row of evidence: its value, interval and threshold.
struct Evidence {
    text: String,
    value: f64,
    lo: f64,
    hi: f64,
    threshold: f64,
    extra: String,
}

fn severity(v: Verdict) -> u8 {
    match v {
        Verdict::Pass => 0,
        Verdict::Warn => 1,
        Verdict::Fail => 2,
        Verdict::Error => 3,
    }
}

/// Judges every row; the rule's verdict and value are those of its worst row.
fn judge_rows(rule: &Rule, table: &str, rows: Vec<Evidence>, what: &str) -> Judged {
    let bound = bound_of(rule);
    let judged: Vec<(Verdict, &Evidence)> = rows
        .iter()
        .map(|e| {
            let b = match bound {
                Bound::AtLeast(_) => Bound::AtLeast(e.threshold),
                Bound::AtMost(_) => Bound::AtMost(e.threshold),
            };
            (b.judge(e.lo, e.hi), e)
        })
        .collect();
    // Worst verdict first; among equals, the row closest to failing.
    let margin = |e: &Evidence| match bound {
        Bound::AtLeast(_) => e.hi - e.threshold,
        Bound::AtMost(_) => e.threshold - e.lo,
    };
    let worst = judged
        .iter()
        .max_by(|a, b| {
            severity(a.0)
                .cmp(&severity(b.0))
                .then(margin(b.1).total_cmp(&margin(a.1)))
        })
        .map(|(v, e)| (*v, *e));
    let Some((verdict, e)) = worst else {
        return error(rule, table, format!("no {what} to judge"));
    };
    let counts = |v: Verdict| judged.iter().filter(|(x, _)| *x == v).count();
    let detail = format!(
        "{verdict_word} over {n} {what}: worst is {} with {:.3} [95% CI {:.3}, {:.3}] against {}{}{}",
        e.text,
        e.value,
        e.lo,
        e.hi,
        match bound {
            Bound::AtLeast(_) => format!(">= {:.3}", e.threshold),
            Bound::AtMost(_) => format!("<= {:.3}", e.threshold),
        },
        if e.extra.is_empty() { String::new() } else { format!("; {}", e.extra) },
        if judged.len() > 1 {
            format!(
                " ({} pass, {} warn, {} fail)",
                counts(Verdict::Pass),
                counts(Verdict::Warn),
                counts(Verdict::Fail)
            )
        } else {
            String::new()
        },
        verdict_word = verdict.as_str(),
        n = judged.len(),
    );
    Judged {
        rule: rule.display_name(),
        kind: rule.kind.as_str().into(),
        verdict,
        value: Some(e.value),
        ci_low: Some(e.lo),
        ci_high: Some(e.hi),
        threshold: Some(e.threshold),
        bound: Some(bound.describe()),
        detail,
        table: table.into(),
        rows: rows.iter().map(|r| r.text.clone()).collect(),
    }
}

fn missing_table(run: &Run, table: &str, how: &str) -> (String, String) {
    let have = run.tables().unwrap_or_default();
    (
        format!("tables/{table}.parquet"),
        format!(
            "this run has no tables/{table}.parquet ({how}); tables here: {}",
            if have.is_empty() {
                "none".into()
            } else {
                have.join(", ")
            }
        ),
    )
}

fn decodable(run: &Run, rule: &Rule) -> Eval {
    let table = "tables/probes.parquet".to_string();
    let label = rule.label.clone().unwrap_or_default();
    if !run
        .tables()
        .unwrap_or_default()
        .iter()
        .any(|t| t == "probes")
    {
        return Err(missing_table(
            run,
            "probes",
            &format!("probe `{label}` first"),
        ));
    }
    let df = run
        .table("probes")
        .map_err(|e| (table.clone(), e.to_string()))?;
    let rows = probe_rows(&df).map_err(|e| (table.clone(), e.to_string()))?;
    let patterns: Vec<SitePattern> = rule.sites.iter().map(SitePattern::new).collect();
    let mine: Vec<_> = rows
        .iter()
        .filter(|r| r.label == label)
        .filter(|r| r.metric == rule.metric.as_deref().unwrap_or(headline_metric(&r.kind)))
        .filter(|r| patterns.is_empty() || patterns.iter().any(|p| p.matches(&r.site)))
        .collect();
    if mine.is_empty() {
        let labels: BTreeSet<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        return Err((
            table,
            format!(
                "no probe of `{label}`{} in this run; probed labels: {}",
                if rule.sites.is_empty() {
                    String::new()
                } else {
                    format!(" at {}", rule.sites.join(","))
                },
                labels.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let mut evidence = Vec::new();
    let sites: BTreeSet<&str> = mine.iter().map(|r| r.site.as_str()).collect();
    for site in sites {
        let probed: BTreeSet<u16> = mine
            .iter()
            .filter(|r| r.site == site)
            .map(|r| r.step)
            .collect();
        let steps = match &rule.steps {
            Some(spec) => resolve::steps(spec, &probed)
                .map_err(|e| (table.clone(), format!("site `{site}`: {e}")))?,
            None => probed.iter().copied().collect(),
        };
        for r in mine
            .iter()
            .filter(|r| r.site == site && steps.contains(&r.step))
        {
            let Some(value) = r.value else { continue };
            let t = bound_of(rule).threshold();
            let threshold = match rule.relative_to {
                Relative::Chance => r.baseline_value.unwrap_or(0.0) + t,
                Relative::Absolute => t,
            };
            evidence.push(Evidence {
                text: format!("site={} step={} {}", r.site, r.step, r.metric),
                value,
                lo: r.ci_low.unwrap_or(value),
                hi: r.ci_high.unwrap_or(value),
                threshold,
                extra: format!(
                    "chance {}, control-task selectivity {}",
                    r.baseline_value.map_or("n/a".into(), |v| format!("{v:.3}")),
                    r.selectivity.map_or("n/a".into(), |v| format!("{v:.3}"))
                ),
            });
        }
    }
    Ok(judge_rows(
        rule,
        &table,
        evidence,
        "probed (site, step) pairs",
    ))
}

fn reconstruction(run: &Run, rule: &Rule) -> Eval {
    let table = "tables/infoloss_summary.parquet".to_string();
    if !run
        .tables()
        .unwrap_or_default()
        .iter()
        .any(|t| t == "infoloss_summary")
    {
        return Err(missing_table(
            run,
            "infoloss_summary",
            "run `infoloss` first",
        ));
    }
    let df = run
        .table("infoloss_summary")
        .map_err(|e| (table.clone(), e.to_string()))?;
    let metric = rule.metric.clone().unwrap_or_default();
    let col = |name: &str| -> std::result::Result<Vec<Option<f64>>, (String, String)> {
        Ok(df
            .column(name)
            .and_then(|c| c.cast(&DataType::Float64))
            .map_err(|e| (table.clone(), e.to_string()))?
            .f64()
            .map_err(|e| (table.clone(), e.to_string()))?
            .iter()
            .collect())
    };
    let names: Vec<String> = df
        .column("metric")
        .and_then(|c| {
            c.str().map(|s| {
                s.iter()
                    .map(|v| v.unwrap_or_default().to_string())
                    .collect()
            })
        })
        .map_err(|e| (table.clone(), e.to_string()))?;
    let (mean, lo, hi) = (col("mean")?, col("ci95_low")?, col("ci95_high")?);
    let mut evidence = Vec::new();
    for i in (0..names.len()).filter(|&i| names[i] == metric) {
        let Some(v) = mean[i] else { continue };
        evidence.push(Evidence {
            text: format!("metric={metric}"),
            value: v,
            lo: lo[i].unwrap_or(v),
            hi: hi[i].unwrap_or(v),
            threshold: bound_of(rule).threshold(),
            extra: String::new(),
        });
    }
    if evidence.is_empty() {
        return Err((
            table,
            format!("no `{metric}` row; metrics here: {}", names.join(", ")),
        ));
    }
    Ok(judge_rows(
        rule,
        &table,
        evidence,
        "reconstruction summaries",
    ))
}

fn finite(run: &Run, rule: &Rule) -> Eval {
    let table = "latents".to_string();
    let sites = resolve::sites(run, &rule.sites).map_err(|e| (table.clone(), e.to_string()))?;
    let mut bad: Vec<String> = Vec::new();
    let mut values = 0u64;
    for site in &sites {
        let mut where_bad: BTreeSet<(u16, u32)> = BTreeSet::new();
        run.scan_latents(site, None, 65_536, &mut |rows| {
            values += (rows.len() * rows.width) as u64;
            for r in 0..rows.len() {
                if rows.row(r).iter().any(|v| !v.is_finite()) {
                    where_bad.insert((rows.step[r], rows.sample[r]));
                }
            }
            Ok(())
        })
        .map_err(|e| (table.clone(), e.to_string()))?;
        if !where_bad.is_empty() {
            let steps: BTreeSet<u16> = where_bad.iter().map(|w| w.0).collect();
            let samples: BTreeSet<u32> = where_bad.iter().map(|w| w.1).collect();
            let show = |v: Vec<String>| {
                let n = v.len();
                let mut v: Vec<String> = v.into_iter().take(10).collect();
                if n > 10 {
                    v.push(format!("... ({n} in all)"));
                }
                v.join(", ")
            };
            bad.push(format!(
                "site={site} steps=[{}] samples=[{}]",
                show(steps.iter().map(u16::to_string).collect()),
                show(samples.iter().map(u32::to_string).collect())
            ));
        }
    }
    let verdict = if bad.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    Ok(Judged {
        rule: rule.display_name(),
        kind: rule.kind.as_str().into(),
        verdict,
        value: Some(bad.len() as f64),
        ci_low: None,
        ci_high: None,
        threshold: Some(0.0),
        bound: Some("no non-finite value".into()),
        detail: if bad.is_empty() {
            format!(
                "{values} recorded values at {} sites are all finite",
                sites.len()
            )
        } else {
            format!(
                "NaN or Inf at {} of {} sites: {}",
                bad.len(),
                sites.len(),
                bad.join("; ")
            )
        },
        table,
        rows: bad,
    })
}

/// Wilson score interval for k successes in n trials (95%).
pub fn wilson(k: f64, n: f64) -> (f64, f64) {
    if n <= 0.0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) / n) + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn accuracy(run: &Run, rule: &Rule) -> Eval {
    let table = "samples.parquet".to_string();
    if !run.has_samples() {
        return Err((
            table,
            "this run has no samples.parquet (the recording did not finish)".into(),
        ));
    }
    let df = run.samples().map_err(|e| (table.clone(), e.to_string()))?;
    let (k, n, what) = if let Ok(c) = df.column("correct") {
        let b = c.bool().map_err(|e| (table.clone(), e.to_string()))?;
        (
            b.sum().unwrap_or(0) as f64,
            b.len() as f64,
            "questions answered right (`correct`)",
        )
    } else if let (Ok(p), Ok(s)) = (df.column("predicted_shape"), df.column("shape")) {
        let cast = |c: &Column| -> std::result::Result<Vec<Option<i64>>, (String, String)> {
            Ok(c.cast(&DataType::Int64)
                .map_err(|e| (table.clone(), e.to_string()))?
                .i64()
                .map_err(|e| (table.clone(), e.to_string()))?
                .iter()
                .collect())
        };
        let (p, s) = (cast(p)?, cast(s)?);
        let hits = p
            .iter()
            .zip(&s)
            .filter(|(a, b)| a.is_some() && a == b)
            .count();
        (
            hits as f64,
            p.len() as f64,
            "images showing the shape (classifier `predicted_shape` = `shape`)",
        )
    } else {
        return Err((
            table,
            "samples.parquet has neither `correct` (reasoner runs) nor `predicted_shape` and \
             `shape` (diffusion runs)"
                .into(),
        ));
    };
    let (lo, hi) = wilson(k, n);
    let evidence = vec![Evidence {
        text: format!("{what}: {k} of {n}"),
        value: if n > 0.0 { k / n } else { 0.0 },
        lo,
        hi,
        threshold: bound_of(rule).threshold(),
        extra: "Wilson 95% interval".into(),
    }];
    Ok(judge_rows(rule, &table, evidence, "accuracy"))
}

fn frontier_mass(run: &Run, rule: &Rule) -> Eval {
    let table = "tables/bfs_mass.parquet".to_string();
    if !run
        .tables()
        .unwrap_or_default()
        .iter()
        .any(|t| t == "bfs_mass")
    {
        return Err(missing_table(
            run,
            "bfs_mass",
            "run the `bfs` analysis first",
        ));
    }
    let df = run
        .table("bfs_mass")
        .map_err(|e| (table.clone(), e.to_string()))?;
    let k = rule.thoughts.unwrap_or(0);
    let get = |name: &str| -> Option<Vec<Option<f64>>> {
        Some(
            df.column(name)
                .ok()?
                .cast(&DataType::Float64)
                .ok()?
                .f64()
                .ok()?
                .iter()
                .collect(),
        )
    };
    let steps: Vec<Option<f64>> = get("step").ok_or((table.clone(), "no `step` column".into()))?;
    let mass = get("mass_frontier").ok_or((table.clone(), "no `mass_frontier` column".into()))?;
    let (lo, hi) = (get("mass_frontier_ci_low"), get("mass_frontier_ci_high"));
    let Some(i) = steps.iter().position(|s| *s == Some(k as f64)) else {
        return Err((
            table,
            format!(
                "no row for {k} thoughts; the analysis covers steps {:?}",
                steps.iter().flatten().collect::<Vec<_>>()
            ),
        ));
    };
    let v = mass[i].ok_or((
        table.clone(),
        format!("mass_frontier is empty at {k} thoughts"),
    ))?;
    let interval = |c: &Option<Vec<Option<f64>>>| c.as_ref().and_then(|c| c[i]);
    let evidence = vec![Evidence {
        text: format!("step={k}"),
        value: v,
        lo: interval(&lo).unwrap_or(v),
        hi: interval(&hi).unwrap_or(v),
        threshold: bound_of(rule).threshold(),
        extra: if lo.is_some() {
            String::new()
        } else {
            "no interval in the table: judged on the mean".into()
        },
    }];
    Ok(judge_rows(rule, &table, evidence, "thought counts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_the_closed_form_values() {
        // 8 of 10: the Wilson interval is [0.4902, 0.9433] (e.g. statsmodels proportion_confint).
        let (lo, hi) = wilson(8.0, 10.0);
        assert!(
            (lo - 0.4902).abs() < 1e-4 && (hi - 0.9433).abs() < 1e-4,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(0.0, 20.0);
        assert!(lo == 0.0 && (hi - 0.1611).abs() < 1e-4, "{hi}");
    }
}
