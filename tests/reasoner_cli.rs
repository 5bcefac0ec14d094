//! End-to-end tests of the reasoner commands (`record reasoner`, `sites reasoner`, `eval
//! reasoner` and the refusals of `train reasoner`) on a tiny random model saved in the
//! shipped layout, so they do not depend on the trained weights.

use std::path::{Path, PathBuf};

use candle_core::Device;
use latentlens::data::prosqa;
use latentlens::reasoner::checkpoint::save_hf_gpt2;
use latentlens::reasoner::gpt2::{random_varmap, Gpt2Config};
use latentlens::reasoner::tokens::{encode, Vocab};
use polars::prelude::*;

mod common;
use common::{latentlens, stderr};

/// A tiny random reasoner in `dir/model` and three generated questions in `dir/q.json`.
fn fixture(dir: &Path) -> (PathBuf, PathBuf, Vec<prosqa::Record>) {
    let mut config = Gpt2Config::tiny(Vocab::prosqa().len());
    config.n_embd = 32;
    config.n_head = 2;
    config.n_layer = 1;
    let varmap = random_varmap(&config, 3, &Device::Cpu).unwrap();
    let model = dir.join("model");
    save_hf_gpt2(&model, &config, &varmap).unwrap();
    let records = prosqa::generate(3, 11);
    let data = dir.join("q.json");
    prosqa::save(&data, &records).unwrap();
    (model, data, records)
}

#[test]
fn record_reasoner_keeps_every_pass_with_absolute_positions_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data, records) = fixture(dir.path());
    let run = dir.path().join("run");
    let out = latentlens(&[
        "record",
        "reasoner",
        "--run",
        run.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--thoughts",
        "3",
        "--sites",
        "thought,blocks.0.hook_resid_post",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let samples = ParquetReader::new(std::fs::File::open(run.join("samples.parquet")).unwrap())
        .finish()
        .unwrap();
    let hops: Vec<u32> = samples
        .column("hops")
        .unwrap()
        .u32()
        .unwrap()
        .into_no_null_iter()
        .collect();
    let want: Vec<u32> = records.iter().map(|r| r.hops() as u32).collect();
    assert_eq!(hops, want);
    let targets: Vec<String> = samples
        .column("target")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|v| v.unwrap().to_string())
        .collect();
    let want: Vec<String> = records
        .iter()
        .map(|r| r.idx_to_symbol[r.target].clone())
        .collect();
    assert_eq!(targets, want);

    let r = latentlens::store::Run::open(&run).unwrap();
    // Three thoughts per question, at passes 1..=3.
    let thoughts = r.read_latents("thought", None).unwrap();
    assert_eq!(thoughts.len(), 3 * records.len());
    assert!(thoughts.step.iter().all(|s| (1..=3).contains(s)));
    // Pass 0 covers the prompt's positions; thought k sits at position prompt_len - 1 + k.
    let resid = r.read_latents("blocks.0.hook_resid_post", None).unwrap();
    let vocab = Vocab::prosqa();
    for (s, record) in records.iter().enumerate() {
        let prompt = encode(record, &vocab).unwrap().prompt.len() as i32;
        let at = |step: u16| -> Vec<i32> {
            (0..resid.len())
                .filter(|&i| resid.sample[i] == s as u32 && resid.step[i] == step)
                .map(|i| resid.position[i].unwrap())
                .collect()
        };
        assert_eq!(at(0), (0..prompt).collect::<Vec<_>>());
        assert_eq!(at(2), vec![prompt + 1]);
    }
}

#[test]
fn attention_patterns_and_unknown_sites_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data, _) = fixture(dir.path());
    for (site, thoughts, needle) in [
        ("blocks.0.attn.hook_pattern", "2", "change width"),
        ("blocks.7.hook_resid_post", "2", "thought"),
        ("thought", "0", "--thoughts is 0"),
    ] {
        let run = dir.path().join("run");
        let out = latentlens(&[
            "record",
            "reasoner",
            "--run",
            run.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--sites",
            site,
            "--thoughts",
            thoughts,
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
        assert!(!run.exists(), "{site}: a run folder was written");
    }
}

#[test]
fn a_missing_model_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_, data, _) = fixture(dir.path());
    let out = latentlens(&[
        "record",
        "reasoner",
        "--run",
        dir.path().join("run").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--model",
        dir.path().join("nowhere").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("nowhere") && err.contains("train reasoner"),
        "{err}"
    );
}

#[test]
fn eval_reasoner_reports_accuracy_and_tokens_per_model() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data, records) = fixture(dir.path());
    let out = latentlens(&[
        "eval",
        "reasoner",
        "--data",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--thoughts",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &rows[0];
    assert_eq!(row["detail"]["total"], records.len());
    assert_eq!(row["thoughts"], 2);
    // Two thoughts plus at least one spoken token per question.
    assert!(row["mean_tokens"].as_f64().unwrap() >= 3.0, "{row}");
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[test]
fn a_tokenizer_that_does_not_fit_the_checkpoint_is_refused_with_both_sizes() {
    let ckpt = format!("{FIXTURES}/reasoner/coconut_tiny.pth");
    let tokenizer = format!("{FIXTURES}/bpe");
    let data = format!("{FIXTURES}/reasoner/prosqa_valid_head.json");
    let out = latentlens(&[
        "eval",
        "reasoner",
        "--data",
        &data,
        "--checkpoint",
        &ckpt,
        "--tokenizer",
        &tokenizer,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    // The fixture tokenizer has 500 tokens + 3 latent ones; the checkpoint 16 rows.
    for needle in ["503", "16", "coconut_tiny.pth", "bpe"] {
        assert!(err.contains(needle), "stderr lacks `{needle}`:\n{err}");
    }
    // Without a tokenizer the checkpoint cannot be read at all: say what to give.
    let out = latentlens(&["eval", "reasoner", "--data", &data, "--checkpoint", &ckpt]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--tokenizer"), "{}", stderr(&out));
}

#[test]
fn a_gpt2_model_with_its_bpe_tokenizer_is_evaluated_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let config = Gpt2Config {
        n_embd: 16,
        n_layer: 1,
        n_head: 2,
        n_positions: 1024,
        vocab_size: 503,
        layer_norm_epsilon: 1e-5,
    };
    let varmap = random_varmap(&config, 1, &Device::Cpu).unwrap();
    let model = dir.path().join("gpt2");
    save_hf_gpt2(&model, &config, &varmap).unwrap();
    let data = format!("{FIXTURES}/reasoner/prosqa_valid_head.json");
    let out = latentlens(&[
        "eval",
        "reasoner",
        "--data",
        &data,
        "--limit",
        "2",
        "--thoughts",
        "1",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        &format!("{FIXTURES}/bpe"),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["detail"]["total"], 2);
}

#[test]
fn a_broken_record_is_named_and_no_run_is_started() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _, records) = fixture(dir.path());
    let mut json = serde_json::to_value(&records).unwrap();
    json[1]["edges"][0] = serde_json::json!([0, 99]);
    let data = dir.path().join("broken.json");
    std::fs::write(&data, serde_json::to_string(&json).unwrap()).unwrap();
    for command in [["record", "reasoner"], ["bfs", ""]] {
        let run = dir.path().join("run");
        let mut args: Vec<&str> = command.iter().copied().filter(|s| !s.is_empty()).collect();
        args.extend([
            "--run",
            run.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ]);
        let out = latentlens(&args);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("record 1") && err.contains("edges[0]"),
            "{command:?}: {err}"
        );
        assert!(!run.exists(), "{command:?} started a run");
    }
}

#[test]
fn a_warm_start_from_a_model_of_another_shape_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _, _) = fixture(dir.path());
    let out_dir = dir.path().join("run");
    let out = latentlens(&[
        "train",
        "reasoner",
        "--fresh-data",
        "--train-size",
        "4",
        "--init-from",
        model.to_str().unwrap(),
        "--skip-epochs",
        "3",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("config.json") && err.contains("--d-model"),
        "{err}"
    );
    assert!(!out_dir.join("train_state.json").exists());
    assert!(!out_dir.join("model").exists());
}
