//! End-to-end tests of the `latentlens` binary: what a user types, what lands on disk, and
//! what a user sees when the input is wrong. Each test gets its own temporary folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const WEIGHTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/diffusion");

mod common;
use common::{latentlens, stderr};

fn assert_fails_with(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected failure, got success");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    let err = stderr(out);
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks `{needle}`:\n{err}");
    }
}

/// A copy of the built-in weights that a test may damage.
fn weights_copy(dir: &Path) -> PathBuf {
    let dst = dir.join("weights");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(WEIGHTS).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

fn record_args<'a>(run: &'a str, weights: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "record",
        "diffusion",
        "--run",
        run,
        "--weights",
        weights,
        "--samples",
        "3",
        "--ddim-steps",
        "4",
        "--batch-size",
        "2",
    ];
    args.extend_from_slice(extra);
    args
}

fn run_is_untouched(run: &Path) -> bool {
    !run.exists() || std::fs::read_dir(run).unwrap().next().is_none()
}

mod record {
    use super::*;

    #[test]
    fn records_a_run_that_reads_back_as_one_table() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let out = latentlens(&record_args(
            run.to_str().unwrap(),
            WEIGHTS,
            &["--sites", "latent,unet.mid_block,vae.*"],
        ));
        assert!(out.status.success(), "{}", stderr(&out));
        let store = latentlens::store::Run::open(&run).unwrap();
        assert_eq!(
            store.sites().unwrap(),
            vec![
                "latent",
                "unet.mid_block",
                "vae.decoder.out",
                "vae.encoder.logvar",
                "vae.encoder.mean"
            ]
        );
        // --strength 0.6 of 4 DDIM steps runs the last 2 or 3 steps; each fires per step.
        let latent = store.read_latents("latent", None).unwrap();
        assert_eq!(latent.width, 4 * 8 * 8);
        let steps_run = latent.len() / 3;
        assert!((2..=3).contains(&steps_run), "{steps_run}");
        assert_eq!(
            store.read_latents("vae.encoder.mean", None).unwrap().len(),
            3
        );
        let samples = store.samples().unwrap();
        for col in ["sample", "shape", "scale", "rotation", "x", "y", "hue"] {
            assert!(samples.column(col).is_ok(), "samples.parquet lacks {col}");
        }
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["status"], "complete");
        assert!(manifest["model"]["weights"].as_array().unwrap().len() >= 3);
        assert_eq!(
            manifest["model"]["weights"][0]["sha256"]
                .as_str()
                .unwrap()
                .len(),
            64
        );
        assert_eq!(manifest["rows"]["latent"], latent.len() as u64);
    }

    #[test]
    fn same_command_twice_resumes_and_gives_the_same_tables() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        for run in [&a, &b, &a] {
            let out = latentlens(&record_args(
                run.to_str().unwrap(),
                WEIGHTS,
                &["--sites", "x0_pred", "--seed", "7"],
            ));
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let read = |p: &Path| {
            latentlens::store::Run::open(p)
                .unwrap()
                .read_latents("x0_pred", None)
                .unwrap()
        };
        assert_eq!(read(&a), read(&b));
    }
}

mod interrupt {
    use super::*;

    #[test]
    fn ctrl_c_keeps_whole_parts_and_a_rerun_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let run_s = run.to_str().unwrap();
        let args = [
            "record",
            "diffusion",
            "--run",
            run_s,
            "--samples",
            "400",
            "--sites",
            "unet.*",
            "--ddim-steps",
            "10",
            "--batch-size",
            "2",
        ];
        let mut child = Command::new(env!("CARGO_BIN_EXE_latentlens"))
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the first chunk is on disk, then interrupt.
        let first = run.join("latents/site=unet.mid_block/part-00000.parquet");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !first.exists() && std::time::Instant::now() < deadline {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the recording stopped early"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(first.exists(), "no part was written within 2 minutes");
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
        assert!(stderr(&out).contains("resumes"), "{}", stderr(&out));
        let leftovers: Vec<_> = walk(&run)
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        for part in walk(&run)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        {
            latentlens::store::read_parquet(&part).unwrap();
        }
        let out = latentlens(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("resumed the run"), "{}", stderr(&out));
        let store = latentlens::store::Run::open(&run).unwrap();
        assert_eq!(store.samples().unwrap().height(), 400);
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}

mod bad_input {
    use super::*;

    #[test]
    fn missing_weights_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let weights = weights_copy(dir.path());
        std::fs::remove_file(weights.join("unet.safetensors")).unwrap();
        let run = dir.path().join("run");
        let out = latentlens(&record_args(
            run.to_str().unwrap(),
            weights.to_str().unwrap(),
            &[],
        ));
        assert_fails_with(&out, &["unet.safetensors"]);
        assert!(run_is_untouched(&run));
    }

    #[test]
    fn truncated_weights_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let weights = weights_copy(dir.path());
        let vae = weights.join("vae.safetensors");
        let bytes = std::fs::read(&vae).unwrap();
        std::fs::write(&vae, &bytes[..bytes.len() / 2]).unwrap();
        let run = dir.path().join("run");
        let out = latentlens(&record_args(
            run.to_str().unwrap(),
            weights.to_str().unwrap(),
            &[],
        ));
        assert_fails_with(&out, &["vae.safetensors"]);
        assert!(run_is_untouched(&run));
    }

    #[test]
    fn tensor_of_the_wrong_shape_is_named_with_both_shapes() {
        use candle_core::{Device, Tensor};
        let dir = tempfile::tempdir().unwrap();
        let weights = weights_copy(dir.path());
        let unet = weights.join("unet.safetensors");
        let mut tensors = candle_core::safetensors::load(&unet, &Device::Cpu).unwrap();
        let (name, shape) = tensors
            .iter()
            .find(|(_, t)| t.rank() == 4)
            .map(|(n, t)| (n.clone(), t.dims().to_vec()))
            .unwrap();
        let mut wrong = shape.clone();
        wrong[0] += 1;
        tensors.insert(
            name.clone(),
            Tensor::zeros(wrong.as_slice(), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&tensors, &unet).unwrap();
        let run = dir.path().join("run");
        let out = latentlens(&record_args(
            run.to_str().unwrap(),
            weights.to_str().unwrap(),
            &[],
        ));
        let expected = format!("{shape:?}");
        let found = format!("{wrong:?}");
        assert_fails_with(&out, &["unet.safetensors", &name, &expected, &found]);
        assert!(run_is_untouched(&run));
    }

    #[test]
    fn unknown_site_lists_the_valid_ones() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let out = latentlens(&record_args(
            run.to_str().unwrap(),
            WEIGHTS,
            &["--sites", "unet.middle"],
        ));
        assert_fails_with(&out, &["unet.middle", "unet.mid_block", "x0_pred"]);
        assert!(run_is_untouched(&run));
    }

    #[test]
    fn impossible_step_list_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let out = latentlens(&record_args(
            run.to_str().unwrap(),
            WEIGHTS,
            &["--source", "noise", "--steps", "0,9"],
        ));
        assert_fails_with(&out, &["step 9", "0..=3"]);
        assert!(run_is_untouched(&run));
    }

    #[test]
    fn folder_with_another_run_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let run_s = run.to_str().unwrap();
        assert!(
            latentlens(&record_args(run_s, WEIGHTS, &["--sites", "latent"]))
                .status
                .success()
        );
        let before = std::fs::read(run.join("manifest.json")).unwrap();
        let out = latentlens(&record_args(
            run_s,
            WEIGHTS,
            &["--sites", "latent", "--seed", "1"],
        ));
        assert_fails_with(&out, &["already holds another run"]);
        assert_eq!(std::fs::read(run.join("manifest.json")).unwrap(), before);
    }

    #[test]
    fn unwritable_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"not a folder").unwrap();
        let run = blocker.join("run");
        let out = latentlens(&record_args(
            run.to_str().unwrap(),
            WEIGHTS,
            &["--sites", "latent"],
        ));
        assert_fails_with(&out, &["file"]);
        assert_eq!(std::fs::read(&blocker).unwrap(), b"not a folder");
    }
}

mod bench {
    use super::*;

    #[test]
    fn bench_record_reports_consistent_figures() {
        let out = latentlens(&[
            "bench",
            "record",
            "--samples",
            "2",
            "--ddim-steps",
            "2",
            "--repeats",
            "1",
            "--json",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let f = |k: &str| report[k].as_f64().unwrap_or_else(|| panic!("no `{k}`"));
        // Copying is part of the recorded generation, and the ratios are what they say.
        assert!(f("copy_seconds") > 0.0);
        assert!(f("copy_seconds") < f("recorded_seconds"));
        let untapped = f("untapped_seconds");
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9 * b.abs().max(1.0);
        assert!(close(f("overhead_ratio"), f("recorded_seconds") / untapped));
        assert!(close(
            f("copy_ratio"),
            (untapped + f("copy_seconds")) / untapped
        ));
        assert!(f("recorded_mb") > 0.0);
        assert!(close(
            f("mb_per_second"),
            f("recorded_mb") / f("to_disk_seconds")
        ));
    }
}
