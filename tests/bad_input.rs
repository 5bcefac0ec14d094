//! The bad-input corpus: what a careless or unlucky user does to the binary, and what must
//! happen then. Every case asserts the exit code, a message that names the problem, and
//! that no half-written (`*.tmp`), stray (`.samples/`, `.lock`) or panic text remains.
//! Each test has its own temporary folder; recordings are tiny (4-32 samples, 5 DDIM
//! steps) so the whole file stays fast.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const WEIGHTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/diffusion");
const BIN: &str = env!("CARGO_BIN_EXE_latentlens");

fn latentlens_in(cwd: &Path, args: &[&OsStr]) -> Output {
    Command::new(BIN)
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn run_cmd(cwd: &Path, args: &[&str]) -> Output {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    latentlens_in(cwd, &args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code `code`, each needle in stderr, no panic text, no runs of spaces.
fn assert_exit(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks `{needle}`:\n{err}");
    }
    assert_clean_stderr(&err);
}

fn assert_clean_stderr(err: &str) {
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "panic:\n{err}"
    );
    for line in err.lines().filter(|l| l.starts_with("error:")) {
        assert!(!line.contains("  "), "a run of spaces in `{line}`");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for p in entries.map(|e| e.unwrap().path()) {
        if p.is_dir() {
            out.push(p.clone());
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// No temporary file, no `.samples/` and no `.lock` anywhere under `dir`.
fn assert_no_strays(dir: &Path) {
    let strays: Vec<PathBuf> = walk(dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".tmp") || name == ".samples" || name == ".lock"
        })
        .collect();
    assert!(strays.is_empty(), "stray files: {strays:?}");
}

/// A tiny recording: 4 samples, 5 DDIM steps, one site.
fn tiny_record<'a>(run: &'a str, weights: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "record",
        "diffusion",
        "--run",
        run,
        "--weights",
        weights,
        "--samples",
        "4",
        "--ddim-steps",
        "5",
        "--sites",
        "latent",
    ];
    args.extend_from_slice(extra);
    args
}

fn weights_copy(dir: &Path) -> PathBuf {
    let dst = dir.join("weights");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(WEIGHTS).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

mod weights {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn a_nan_tensor_is_refused_naming_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let weights = weights_copy(dir.path());
        let unet = weights.join("unet.safetensors");
        let mut tensors = candle_core::safetensors::load(&unet, &Device::Cpu).unwrap();
        let name = "conv_in.bias".to_string();
        let t: &Tensor = &tensors[&name];
        let nan = t.ones_like().unwrap().affine(f64::NAN, 0.0).unwrap();
        tensors.insert(name.clone(), nan);
        candle_core::safetensors::save(&tensors, &unet).unwrap();
        let out = run_cmd(
            dir.path(),
            &tiny_record("run", weights.to_str().unwrap(), &[]),
        );
        assert_exit(&out, 1, &["unet.safetensors", "`conv_in.bias` holds NaN"]);
        assert!(!dir.path().join("run").exists());
    }

    #[test]
    fn huge_weights_stop_the_recording_at_the_first_infinite_activation() {
        let dir = tempfile::tempdir().unwrap();
        let weights = weights_copy(dir.path());
        let unet = weights.join("unet.safetensors");
        let mut tensors = candle_core::safetensors::load(&unet, &Device::Cpu).unwrap();
        // Finite weights whose output overflows f32.
        let t: &Tensor = &tensors["conv_out.weight"];
        let huge = t.ones_like().unwrap().affine(3e38, 0.0).unwrap();
        tensors.insert("conv_out.weight".into(), huge);
        candle_core::safetensors::save(&tensors, &unet).unwrap();
        let out = run_cmd(
            dir.path(),
            &tiny_record(
                "run",
                weights.to_str().unwrap(),
                &["--sites", "latent,unet.out,x0_pred"],
            ),
        );
        assert_exit(&out, 1, &["non-finite activation", "step 0", "sample 0"]);
        // Nothing was finished: the failed start leaves nothing behind.
        assert!(!dir.path().join("run").exists());
    }

    #[test]
    fn a_truncated_file_and_a_broken_config_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let weights = weights_copy(dir.path());
        let vae = weights.join("vae.safetensors");
        let bytes = std::fs::read(&vae).unwrap();
        std::fs::write(&vae, &bytes[..bytes.len() / 3]).unwrap();
        let w = weights.to_str().unwrap();
        let out = run_cmd(dir.path(), &tiny_record("run", w, &[]));
        assert_exit(&out, 1, &["vae.safetensors", "truncated"]);
        std::fs::write(&vae, &bytes).unwrap();
        std::fs::write(weights.join("config.json"), b"{\"latent_scale\": ").unwrap();
        let out = run_cmd(dir.path(), &tiny_record("run", w, &[]));
        assert_exit(&out, 1, &["config.json"]);
        assert!(!dir.path().join("run").exists());
    }
}

mod flags_and_files {
    use super::*;

    #[test]
    fn a_step_beyond_u16_says_the_allowed_range() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_cmd(
            dir.path(),
            &tiny_record("run", WEIGHTS, &["--steps", "65536"]),
        );
        assert_exit(&out, 1, &["65536", "0..="]);
        assert!(!dir.path().join("run").exists());
    }

    #[test]
    fn usage_errors_exit_2() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_cmd(
            dir.path(),
            &["data", "prosqa", "--n", "0", "--out", "x.json"],
        );
        assert_exit(&out, 2, &["--n"]);
        assert!(!dir.path().join("x.json").exists());
        let out = run_cmd(
            dir.path(),
            &tiny_record("run", WEIGHTS, &["--samples", "many"]),
        );
        assert_exit(&out, 2, &["--samples"]);
        let out = run_cmd(dir.path(), &["record", "diffusion", "--no-such-flag"]);
        assert_exit(&out, 2, &["--no-such-flag"]);
        assert!(walk(dir.path()).is_empty());
    }

    #[test]
    fn broken_data_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.json"), b"[{\"question\": 3}").unwrap();
        let out = run_cmd(dir.path(), &["data", "prosqa", "--summarize", "bad.json"]);
        assert_exit(&out, 1, &["bad.json"]);
        let out = run_cmd(
            dir.path(),
            &["data", "prosqa", "--summarize", "missing.json"],
        );
        assert_exit(&out, 1, &["missing.json"]);
    }

    #[test]
    fn too_many_thoughts_are_refused_before_a_folder_exists() {
        let dir = tempfile::tempdir().unwrap();
        let data = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/reasoner/prosqa_valid_head.json"
        );
        let out = run_cmd(
            dir.path(),
            &[
                "record",
                "reasoner",
                "--run",
                "run",
                "--data",
                data,
                "--thoughts",
                "200",
            ],
        );
        assert_exit(&out, 1, &["thoughts = 200"]);
        assert!(!dir.path().join("run").exists());
    }

    #[test]
    fn a_non_utf8_run_path_records() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let run = OsStr::from_bytes(b"run-\xff");
        let mut args: Vec<&OsStr> = tiny_record("X", WEIGHTS, &[])
            .into_iter()
            .map(OsStr::new)
            .collect();
        args[3] = run;
        let out = latentlens_in(dir.path(), &args);
        assert_exit(&out, 0, &[]);
        assert!(dir.path().join(run).join("manifest.json").is_file());
        assert_no_strays(dir.path());
    }

    #[test]
    fn unwritable_places_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"not a folder").unwrap();
        let out = run_cmd(dir.path(), &tiny_record("file/run", WEIGHTS, &[]));
        assert_exit(&out, 1, &["file/run"]);
        assert_eq!(
            std::fs::read(dir.path().join("file")).unwrap(),
            b"not a folder"
        );
        // Root ignores permission bits; /proc refuses everyone.
        let out = run_cmd(
            dir.path(),
            &tiny_record("/proc/latentlens-run", WEIGHTS, &[]),
        );
        assert_exit(&out, 1, &["/proc/latentlens-run"]);
    }
}

mod output {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_closed_pipe_ends_quietly() {
        // `latentlens sites diffusion | head -1`: the reader is gone before the output.
        let mut child = Command::new(BIN)
            .args(["sites", "diffusion"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{err}");
        assert!(err.is_empty(), "stderr: {err}");
    }

    #[test]
    fn a_full_stdout_is_an_error_not_a_panic() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = Command::new(BIN)
            .args(["sites", "diffusion"])
            .stdout(full)
            .output()
            .unwrap();
        assert_exit(&out, 1, &["error:"]);
    }
}

mod run_folders {
    use super::*;

    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
        let mut files: Vec<_> = walk(dir)
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| {
                let meta = std::fs::metadata(&p).unwrap();
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes, meta.modified().unwrap())
            })
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        files
    }

    #[test]
    fn a_rerun_of_a_complete_run_changes_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let args = tiny_record("run", WEIGHTS, &[]);
        assert_exit(&run_cmd(dir.path(), &args), 0, &[]);
        let before = snapshot(&dir.path().join("run"));
        std::thread::sleep(Duration::from_millis(20));
        let out = run_cmd(dir.path(), &args);
        assert_exit(&out, 0, &[]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("already"));
        assert_eq!(before, snapshot(&dir.path().join("run")));
        assert_no_strays(dir.path());
    }

    #[test]
    fn another_batch_size_is_another_run() {
        let dir = tempfile::tempdir().unwrap();
        assert_exit(
            &run_cmd(
                dir.path(),
                &tiny_record("run", WEIGHTS, &["--batch-size", "4"]),
            ),
            0,
            &[],
        );
        let out = run_cmd(
            dir.path(),
            &tiny_record("run", WEIGHTS, &["--batch-size", "2"]),
        );
        assert_exit(&out, 1, &["already holds another run"]);
    }

    /// 32 samples, every site, 4 per batch: long enough to be caught in the middle.
    fn long_record(run: &str) -> Vec<&str> {
        vec![
            "record",
            "diffusion",
            "--run",
            run,
            "--samples",
            "32",
            "--batch-size",
            "4",
            "--ddim-steps",
            "5",
        ]
    }

    fn spawn(cwd: &Path, args: &[&str]) -> std::process::Child {
        Command::new(BIN)
            .current_dir(cwd)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Waits until the recording holds its folder's lock (it has started work).
    fn wait_for_lock(child: &mut std::process::Child, run: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !run.join(".lock").exists() {
            assert!(child.try_wait().unwrap().is_none(), "finished too early");
            assert!(Instant::now() < deadline, "never took the lock");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_second_writer_is_refused_at_once_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mut first = spawn(dir.path(), &long_record("run"));
        wait_for_lock(&mut first, &run);
        let started = Instant::now();
        let out = run_cmd(dir.path(), &long_record("run"));
        let pid = format!("pid {}", first.id());
        assert_exit(&out, 1, &["in use by another latentlens process", &pid]);
        assert!(started.elapsed() < Duration::from_secs(20));
        let first = first.wait_with_output().unwrap();
        assert_exit(&first, 0, &[]);
        assert_no_strays(dir.path());
        assert!(run.join("samples.parquet").is_file());
    }

    /// The files a recording's results are made of (not the manifest: it holds timings).
    fn results(run: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files: Vec<_> = walk(run)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .map(|p| {
                (
                    p.strip_prefix(run).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn interrupted_and_killed_runs_resume_to_the_same_bytes() {
        let reference = tempfile::tempdir().unwrap();
        assert_exit(&run_cmd(reference.path(), &long_record("run")), 0, &[]);
        let want = results(&reference.path().join("run"));
        assert!(want.len() > 2);
        for (signal, delay_ms) in [("INT", 0), ("KILL", 0), ("INT", 300), ("KILL", 300)] {
            let dir = tempfile::tempdir().unwrap();
            let run = dir.path().join("run");
            let mut child = spawn(dir.path(), &long_record("run"));
            wait_for_lock(&mut child, &run);
            std::thread::sleep(Duration::from_millis(delay_ms));
            let killed = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .unwrap();
            assert!(killed.success());
            let out = child.wait_with_output().unwrap();
            if signal == "INT" && out.status.code() != Some(0) {
                assert_exit(&out, 130, &["interrupted"]);
                assert!(walk(&run)
                    .iter()
                    .all(|p| !p.to_string_lossy().ends_with(".tmp")));
            }
            let rerun = run_cmd(dir.path(), &long_record("run"));
            assert_exit(&rerun, 0, &[]);
            assert_no_strays(dir.path());
            let got = results(&run);
            let names =
                |f: &[(PathBuf, Vec<u8>)]| f.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
            assert_eq!(
                names(&got),
                names(&want),
                "after SIG{signal} at {delay_ms} ms"
            );
            assert!(
                got == want,
                "bytes differ after SIG{signal} at {delay_ms} ms"
            );
        }
    }

    #[test]
    fn a_full_disk_says_so_and_leaves_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("small");
        std::fs::create_dir(&mnt).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("note: cannot mount a tmpfs here (needs root); disk-full case skipped");
            return;
        }
        let out = run_cmd(&mnt, &long_record("run"));
        let files = walk(&mnt);
        let _ = Command::new("umount").arg(&mnt).status();
        assert_exit(&out, 1, &["the disk is full", "rerun"]);
        assert!(
            files.iter().all(|p| !p.to_string_lossy().ends_with(".tmp")),
            "{files:?}"
        );
    }
}
