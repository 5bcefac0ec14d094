//! Property tests of the parsers that take user input: `--steps`, `--sites`, ProsQA records
//! and run manifests. Whatever the input, they return a value or an error; none panics.

use latentlens::data::prosqa::{self, Record};
use latentlens::sites::SitePattern;
use latentlens::steps::parse_steps;
use latentlens::store::{resolve, Manifest};
use proptest::prelude::*;

/// Text made of the characters the step grammar uses, plus anything else.
fn step_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9.,: a-z]{0,24}",
        "(all|last|[0-9]{1,6})(\\.\\.[0-9]{0,6}(:[0-9]{0,3})?)?(,(last|[0-9]{1,6}))*",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn steps_parse_or_fail_cleanly(spec in step_text(), first in 0u16..60, total in 0u16..80) {
        if let Ok(Some(steps)) = parse_steps(&spec, first, total) {
            // What parses is inside the generation, sorted and unique.
            prop_assert!(steps.iter().all(|&s| s >= first && s < total));
            prop_assert!(steps.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn site_patterns_parse_and_match_without_panicking(
        values in prop::collection::vec("[a-z0-9_.*?,\\[\\] ]{0,20}|\\PC{0,12}", 0..4),
        site in "[a-z0-9_.]{0,20}",
    ) {
        if let Ok(patterns) = resolve::split_patterns(&values) {
            for p in &patterns {
                let _ = p.matches(&site);
            }
        }
        for v in &values {
            let _ = SitePattern::new(v.as_str()).matches(&site);
        }
    }

    #[test]
    fn prosqa_records_validate_or_fail_and_valid_ones_are_usable(
        n in 0usize..8,
        edges in prop::collection::vec((0usize..10, 0usize..10), 0..14),
        root in 0usize..10,
        target in 0usize..10,
        neg in 0usize..10,
        steps in 0usize..4,
    ) {
        let record = Record {
            question: "Is Tom a wumpus or a yumpus?".into(),
            steps: vec!["Tom is a wumpus.".into(); steps],
            answer: "Tom is a wumpus.".into(),
            idx_to_symbol: (0..n).map(|i| format!("n{i}")).collect(),
            edges: edges.iter().map(|&(a, b)| [a, b]).collect(),
            root,
            target,
            neg_target: neg,
        };
        if record.validate().is_ok() {
            let _ = record.hops();
            let g = record.graph();
            let _ = g.height();
            let _ = g.distances_from(record.root);
            let _ = record.other_person();
        }
        // And through the file reader, whatever JSON shape the record has.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(&path, serde_json::to_string(&[&record]).unwrap()).unwrap();
        let _ = prosqa::load(&path);
    }

    #[test]
    fn arbitrary_json_is_not_a_panic_as_prosqa_or_manifest(text in json_text()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(&path, &text).unwrap();
        let _ = prosqa::load(&path);
        let _ = serde_json::from_str::<Manifest>(&text);
    }

    #[test]
    fn manifests_with_damaged_fields_are_errors(field in 0usize..12, value in json_value()) {
        let mut m = serde_json::json!({
            "tool": "latentlens 0.1.0", "git_commit": null, "command": ["latentlens"],
            "kind": "record diffusion", "config": {}, "seed": 0,
            "model": {"id": "m", "weights": [{"path": "w", "bytes": 1, "sha256": "ab"}]},
            "sites": [{"name": "latent", "dims": ["channel=4", {"name": "h", "size": 2}], "width": 8}],
            "rows": {"latent": 3}, "samples": 3, "timings": {}, "status": "complete",
        });
        let keys = ["tool", "git_commit", "command", "kind", "config", "seed", "model",
                    "sites", "rows", "samples", "timings", "status"];
        prop_assert!(serde_json::from_value::<Manifest>(m.clone()).is_ok());
        m[keys[field]] = value;
        if let Ok(parsed) = serde_json::from_value::<Manifest>(m) {
            let _ = parsed.identity();
            let _ = parsed.provenance();
        }
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "\\PC{0,10}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| { serde_json::Value::Object(m.into_iter().collect()) }),
        ]
    })
}

fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string()),
        json_value().prop_map(|v| format!("[{v}]")),
        any::<String>(),
    ]
}
