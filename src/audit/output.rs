//! Verdicts as files: `tables/audit.parquet` (one row per rule), `audit.json` (the same for
//! programs) and `audit.xml` (JUnit, one test case per rule, so CI systems show them).

use std::fmt::Write as _;
use std::io::Write as _;

use polars::prelude::*;

use super::{Judged, Verdict};
use crate::report::html::escape;
use crate::store::{write_atomic, Run};
use crate::Result;

pub const JSON: &str = "audit.json";
pub const JUNIT: &str = "audit.xml";

pub fn write(run: &Run, judged: &[Judged]) -> Result<()> {
    let mut df = frame(judged)?;
    run.write_table("audit", &mut df)?;
    let json = serde_json::to_vec_pretty(&serde_json::json!({
        "run": run.root(),
        "run_identity": run.manifest().identity(),
        "exit_code": super::exit_code(judged),
        "verdicts": judged,
    }))?;
    let root = run.root();
    write_atomic(&root.join(JSON), |f| f.write_all(&json))?;
    let xml = junit(run, judged);
    write_atomic(&root.join(JUNIT), |f| f.write_all(xml.as_bytes()))?;
    Ok(())
}

/// Reads a run's verdicts back (for the report); `None` when it has no audit.
pub fn read(run: &Run) -> Result<Option<Vec<Judged>>> {
    let path = run.root().join(JSON);
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path).map_err(|e| crate::Error::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)?;
    Ok(Some(serde_json::from_value(v["verdicts"].clone())?))
}

fn frame(judged: &[Judged]) -> Result<DataFrame> {
    let s = |f: fn(&Judged) -> String| judged.iter().map(f).collect::<Vec<String>>();
    let o = |f: fn(&Judged) -> Option<f64>| judged.iter().map(f).collect::<Vec<Option<f64>>>();
    Ok(df!(
        "rule" => s(|j| j.rule.clone()),
        "kind" => s(|j| j.kind.clone()),
        "verdict" => s(|j| j.verdict.as_str().to_string()),
        "value" => o(|j| j.value),
        "ci_low" => o(|j| j.ci_low),
        "ci_high" => o(|j| j.ci_high),
        "threshold" => o(|j| j.threshold),
        "bound" => s(|j| j.bound.clone().unwrap_or_default()),
        "detail" => s(|j| j.detail.clone()),
        "table" => s(|j| j.table.clone()),
        "rows" => s(|j| j.rows.join("; ")),
    )?)
}

fn junit(run: &Run, judged: &[Judged]) -> String {
    let count = |v: Verdict| judged.iter().filter(|j| j.verdict == v).count();
    let suite = escape(&run.root().display().to_string());
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"latentlens audit\" tests=\"{}\" failures=\"{}\" errors=\"{}\">",
        judged.len(),
        count(Verdict::Fail),
        count(Verdict::Error)
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{suite}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"0\">",
        judged.len(),
        count(Verdict::Fail),
        count(Verdict::Error)
    );
    for j in judged {
        let _ = write!(
            x,
            "    <testcase classname=\"latentlens.audit.{}\" name=\"{}\">",
            escape(&j.kind),
            escape(&j.rule)
        );
        let msg = escape(&j.detail);
        match j.verdict {
            Verdict::Fail => {
                let _ = write!(
                    x,
                    "<failure message=\"{msg}\" type=\"fail\">{msg}</failure>"
                );
            }
            Verdict::Error => {
                let _ = write!(x, "<error message=\"{msg}\" type=\"error\">{msg}</error>");
            }
            Verdict::Pass | Verdict::Warn => {
                let _ = write!(x, "<system-out>{}: {msg}</system-out>", j.verdict.as_str());
            }
        }
        x.push_str("</testcase>\n");
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}
