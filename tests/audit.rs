//! Audits gate deployments: the shipped passing and failing example audits give the
//! documented exit codes, and their JSON and JUnit XML read back with the same verdicts.

use std::path::Path;
use std::process::Command;

fn latentlens() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_latentlens"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn run_spec(spec: &str, out: &Path) -> (i32, String) {
    let output = latentlens()
        .args(["run", spec, "--out"])
        .arg(out)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// (rule, verdict) pairs of a run's audit.json.
fn json_verdicts(run: &Path) -> Vec<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("audit.json")).unwrap()).unwrap();
    v["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["rule"].as_str().unwrap().to_string(),
                j["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// (rule, verdict) pairs of a run's JUnit XML: a failure element is `fail`, an error
/// element `error`, otherwise the verdict written in system-out.
fn junit_verdicts(run: &Path) -> Vec<(String, String)> {
    let xml = std::fs::read_to_string(run.join("audit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|case| {
            let name = case.attribute("name").unwrap().to_string();
            let child = |tag: &str| case.children().find(|c| c.has_tag_name(tag));
            let verdict = if child("failure").is_some() {
                "fail".to_string()
            } else if child("error").is_some() {
                "error".to_string()
            } else {
                let out = child("system-out").and_then(|n| n.text()).unwrap_or("");
                out.split(':').next().unwrap().to_string()
            };
            (name, verdict)
        })
        .collect()
}

#[test]
fn the_builtin_audit_passes_and_the_failing_one_fails_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("ok");
    let (code, text) = run_spec("probes/audit-builtin.toml", &ok);
    assert_eq!(code, 0, "{text}");
    for run in ["generate", "shapes", "reasoner"] {
        let verdicts = json_verdicts(&ok.join(run));
        assert!(!verdicts.is_empty(), "{run}");
        assert!(
            verdicts.iter().all(|(_, v)| v == "pass"),
            "{run}: {verdicts:?}"
        );
        assert_eq!(junit_verdicts(&ok.join(run)), verdicts, "{run}");
    }
    let report = std::fs::read_to_string(ok.join("report.html")).unwrap();
    assert!(report.contains("Coconut answers ProsQA") && report.contains("verdict-pass"));

    let bad = dir.path().join("bad");
    let (code, text) = run_spec("probes/audit-fail.toml", &bad);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("FAIL"), "{text}");
    for run in ["shapes", "reasoner"] {
        let verdicts = json_verdicts(&bad.join(run));
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].1, "fail", "{run}: {verdicts:?}");
        assert_eq!(junit_verdicts(&bad.join(run)), verdicts);
    }
    let xml = std::fs::read_to_string(bad.join("reasoner/audit.xml")).unwrap();
    assert!(xml.contains("failures=\"1\""), "{xml}");

    // `audit` on the finished run: a rule that cannot be evaluated is an error (exit 4),
    // never a pass; the same rules as the spec give the spec's verdicts.
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nkind = \"frontier_mass\"\nthoughts = 1\nat_least = 0.5\n\n\
         [[rule]]\nkind = \"accuracy\"\nat_least = 0.99\n",
    )
    .unwrap();
    let out = latentlens()
        .args(["audit", "--run"])
        .arg(bad.join("reasoner"))
        .arg("--rules")
        .arg(&rules)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.contains("no tables/bfs_mass.parquet"), "{text}");
    assert_eq!(
        json_verdicts(&bad.join("reasoner"))
            .into_iter()
            .map(|(_, v)| v)
            .collect::<Vec<_>>(),
        ["error", "fail"]
    );
}

#[test]
fn bad_rules_are_refused_before_any_work_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        "title = \"t\"\n\n[[run]]\nname = \"d\"\n[run.diffusion]\nsamples = 4\nddim_steps = 5\n\n\
         [[run.audit]]\nkind = \"accuracy\"\nat_least = 1.5\n\n\
         [[run.audit]]\nkind = \"decodable\"\nlabel = \"colour\"\nat_most = 0.05\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let (code, text) = run_spec(spec.to_str().unwrap(), &out_dir);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("line 10") && text.contains("impossible"),
        "{text}"
    );
    assert!(text.contains("`colour` is not probed"), "{text}");
    assert!(
        !out_dir.exists(),
        "nothing is written before the plan is whole"
    );
}
