//! Stable Diffusion against diffusers and transformers: the tiny random pipelines in
//! tests/fixtures/sd/{v1,v2} and their reference outputs were made by
//! `scripts/make_sd_fixtures.py` (run by hand; no torch here). v1 has SD 1.x's shapes (f32,
//! epsilon, conv projections, heads from an int `attention_head_dim`, quick_gelu CLIP); v2
//! has SD 2.x's (f16 weights, v-prediction, linear projections, per-block heads,
//! upcast_attention, gelu CLIP, "!" padding, 32-token prompts).
//!
//! Single passes must match to 1e-4 absolute; whole sampling loops to 1e-4 relative to the
//! largest reference value.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use latentlens::sd::scheduler::{Schedule, SchedulerConfig, SchedulerKind};
use latentlens::sd::tokenizer::ClipTokenizer;
use latentlens::sd::{Generation, SdOptions, StableDiffusion};
use latentlens::sites::{Firing, Hooks, Tap};

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sd")
        .join(name)
}

struct Fixture {
    sd: StableDiffusion,
    refs: HashMap<String, Tensor>,
    meta: serde_json::Value,
}

fn fixture(name: &str) -> Fixture {
    let dir = fixture_dir(name);
    let sd = StableDiffusion::load(&dir, &Device::Cpu).unwrap();
    let refs =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
        .unwrap();
    Fixture { sd, refs, meta }
}

impl Fixture {
    fn r(&self, key: &str) -> &Tensor {
        self.refs
            .get(key)
            .unwrap_or_else(|| panic!("no reference {key}"))
    }

    fn prompts(&self, key: &str) -> Vec<String> {
        self.meta[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect()
    }
}

/// Largest absolute difference; the shapes must agree.
fn max_diff(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "shapes differ");
    (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn assert_abs(what: &str, got: &Tensor, want: &Tensor, tol: f32) -> f32 {
    let d = max_diff(got, want);
    assert!(
        d <= tol,
        "{what}: max |diff| {d:e} > {tol:e} (reference max |x| {})",
        max_abs(want)
    );
    d
}

fn assert_rel(what: &str, got: &Tensor, want: &Tensor, tol: f32) -> f32 {
    let rel = max_diff(got, want) / max_abs(want).max(1e-12);
    assert!(
        rel <= tol,
        "{what}: max |diff| / max |reference| = {rel:e} > {tol:e}"
    );
    rel
}

/// Keeps every firing of the sites it wants.
struct Collect {
    prefix: Vec<&'static str>,
    seen: Vec<(String, u16, Option<i32>, Tensor)>,
}

impl Collect {
    fn all() -> Self {
        Self {
            prefix: vec![""],
            seen: Vec::new(),
        }
    }

    fn of(prefix: &[&'static str]) -> Self {
        Self {
            prefix: prefix.to_vec(),
            seen: Vec::new(),
        }
    }

    fn get(&self, site: &str, step: u16) -> &Tensor {
        &self
            .seen
            .iter()
            .find(|s| s.0 == site && s.1 == step)
            .unwrap_or_else(|| panic!("{site} did not fire at step {step}"))
            .3
    }
}

impl Tap for Collect {
    fn wants(&self, site: &str) -> bool {
        self.prefix.iter().any(|p| site.starts_with(p))
    }

    fn tap(&mut self, x: &Tensor, at: &Firing) -> candle_core::Result<Option<Tensor>> {
        self.seen
            .push((at.site.to_string(), at.step, at.t, x.clone()));
        Ok(None)
    }
}

const ABS: f32 = 1e-4;
const REL: f32 = 1e-4;

fn check_tokenizer(name: &str) {
    let f = fixture(name);
    let prompts = f.prompts("prompts");
    let want: Vec<Vec<u32>> = serde_json::from_value(f.meta["token_ids"].clone()).unwrap();
    for (p, w) in prompts.iter().zip(&want) {
        assert_eq!(
            &f.sd.tokenizer.encode(p).unwrap(),
            w,
            "tokenizer.json route, {p:?}"
        );
    }
    // The vocab.json + merges.txt route, as transformers builds CLIPTokenizer from them.
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture_dir(name).join("tokenizer");
    for file in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        std::fs::copy(src.join(file), tmp.path().join(file)).unwrap();
    }
    let slow = ClipTokenizer::load(tmp.path(), 77).unwrap();
    assert_eq!(slow.max_length, f.sd.tokenizer.max_length);
    for (p, w) in prompts.iter().zip(&want) {
        assert_eq!(
            &slow.encode(p).unwrap(),
            w,
            "vocab.json + merges.txt route, {p:?}"
        );
    }
}

#[test]
fn tokenizer_ids_match_transformers_v1() {
    check_tokenizer("v1");
}

#[test]
fn tokenizer_ids_match_transformers_v2() {
    check_tokenizer("v2");
}

fn check_text_encoder(name: &str) {
    let f = fixture(name);
    let want: Vec<Vec<u32>> = serde_json::from_value(f.meta["token_ids"].clone()).unwrap();
    let ids: Vec<u32> = want[..3].concat();
    let ids = Tensor::from_vec(ids, (3, want[0].len()), &Device::Cpu).unwrap();
    let mut c = Collect::of(&["text_encoder"]);
    let out =
        f.sd.text_encoder
            .forward(&ids, &mut Hooks::none().with(&mut c))
            .unwrap();
    let mut worst = 0f32;
    for site in f.sd.text_encoder.sites(want[0].len()) {
        worst = worst.max(assert_abs(
            &site.name,
            c.get(&site.name, 0),
            f.r(&site.name),
            ABS,
        ));
    }
    assert_abs("output", &out, f.r("text_encoder.last_hidden_state"), ABS);
    eprintln!("{name} text encoder: max |diff| {worst:e}");
}

#[test]
fn text_encoder_matches_transformers_v1() {
    check_text_encoder("v1");
}

#[test]
fn text_encoder_matches_transformers_v2() {
    check_text_encoder("v2");
}

fn check_vae(name: &str) {
    let f = fixture(name);
    let mut hooks = Hooks::none();
    let (mean, logvar) = f.sd.vae.encode(f.r("vae.image"), &mut hooks).unwrap();
    let a = assert_abs("vae.encoder.mean", &mean, f.r("vae.encoder.mean"), ABS);
    let b = assert_abs(
        "vae.encoder.logvar",
        &logvar,
        f.r("vae.encoder.logvar"),
        ABS,
    );
    let mut c = Collect::of(&["vae."]);
    let out =
        f.sd.vae
            .decode(f.r("vae.z"), &mut Hooks::none().with(&mut c))
            .unwrap();
    let d = assert_abs("vae.decoder.out", &out, f.r("vae.decoder.out"), ABS);
    assert_eq!(c.seen.len(), 1);
    eprintln!("{name} VAE: mean {a:e}, logvar {b:e}, decoder {d:e}");
}

#[test]
fn vae_matches_diffusers_v1() {
    check_vae("v1");
}

#[test]
fn vae_matches_diffusers_v2() {
    check_vae("v2");
}

fn check_unet(name: &str) {
    let mut f = fixture(name);
    let timesteps: Vec<f64> = f
        .r("unet.timesteps")
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|&t| t as f64)
        .collect();
    let (sample, context) = (f.r("unet.sample").clone(), f.r("unet.context").clone());
    let mut c = Collect::of(&["unet."]);
    f.sd.unet
        .forward(
            &sample,
            &timesteps,
            &context,
            &mut Hooks::none().with(&mut c),
        )
        .unwrap();
    let (_, _, h, w) = sample.dims4().unwrap();
    let sites = f.sd.unet.sites(h, w, context.dim(1).unwrap());
    let attention: Vec<String> = serde_json::from_value(f.meta["attention_sites"].clone()).unwrap();
    let mut listed: Vec<String> = sites
        .iter()
        .filter(|s| s.name.ends_with("attn2"))
        .map(|s| s.name.clone())
        .collect();
    listed.sort();
    assert_eq!(listed, attention, "cross-attention sites");
    let mut worst = 0f32;
    for site in &sites {
        let got = c.get(&site.name, 0);
        let mut want_dims = vec![2];
        want_dims.extend(site.dims.iter().map(|d| d.1));
        assert_eq!(got.dims(), want_dims.as_slice(), "{}", site.name);
        worst = worst.max(assert_abs(&site.name, got, f.r(&site.name), ABS));
    }
    // Pooled maps: a grid of half the side averages 2x2 cells, as torch's avg_pool2d.
    f.sd.unet.attn_grid = h / 2;
    let mut c = Collect::of(&["unet."]);
    f.sd.unet
        .forward(
            &sample,
            &timesteps,
            &context,
            &mut Hooks::none().with(&mut c),
        )
        .unwrap();
    let mut pooled = 0;
    for site in f.sd.unet.sites(h, w, context.dim(1).unwrap()) {
        if site.name.ends_with("attn2") {
            let side = f.r(&site.name).dim(2).unwrap();
            let key = if side > h / 2 {
                pooled += 1;
                format!("{}.pool2", site.name)
            } else {
                site.name.clone()
            };
            assert_abs(&key, c.get(&site.name, 0), f.r(&key), ABS);
        }
    }
    assert!(pooled > 0);
    eprintln!("{name} UNet: {} sites, max |diff| {worst:e}", sites.len());
}

#[test]
fn unet_sites_match_diffusers_v1() {
    check_unet("v1");
}

#[test]
fn unet_sites_match_diffusers_v2() {
    check_unet("v2");
}

fn kind_of(class: &str) -> SchedulerKind {
    match class {
        "DDIMScheduler" => SchedulerKind::Ddim,
        "EulerDiscreteScheduler" => SchedulerKind::Euler,
        "EulerAncestralDiscreteScheduler" => SchedulerKind::EulerAncestral,
        "DPMSolverMultistepScheduler" => SchedulerKind::DpmSolverPP2M,
        other => panic!("{other}"),
    }
}

fn check_timesteps(name: &str) {
    let dir = fixture_dir(name);
    let path = dir.join("scheduler/scheduler_config.json");
    let f = fixture(name);
    let table = f.meta["timesteps"].as_object().unwrap();
    assert_eq!(table.len(), 4 * 3 * 3);
    for (key, entry) in table {
        let parts: Vec<&str> = key.split('/').collect();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
        cfg["timestep_spacing"] = parts[1].into();
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("scheduler_config.json");
        std::fs::write(&p, cfg.to_string()).unwrap();
        let cfg = SchedulerConfig::read(&p).unwrap();
        let s = Schedule::new(&cfg, kind_of(parts[0]), parts[2].parse().unwrap()).unwrap();
        let want: Vec<f64> = serde_json::from_value(entry["timesteps"].clone()).unwrap();
        assert_eq!(s.timesteps.len(), want.len(), "{key}");
        for (a, b) in s.timesteps.iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-3,
                "{key}: timesteps {:?} vs {want:?}",
                s.timesteps
            );
        }
        if let Some(sig) = entry.get("sigmas") {
            let want: Vec<f64> = serde_json::from_value(sig.clone()).unwrap();
            assert_eq!(s.sigmas.len(), want.len(), "{key}");
            for (a, b) in s.sigmas.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.max(1.0),
                    "{key}: sigmas {:?} vs {want:?}",
                    s.sigmas
                );
            }
        }
        let init = entry["init_noise_sigma"].as_f64().unwrap();
        assert!(
            (s.init_noise_sigma - init).abs() <= 1e-5 * init,
            "{key}: init_noise_sigma {} vs {init}",
            s.init_noise_sigma
        );
    }
}

#[test]
fn timesteps_and_sigmas_match_diffusers_v1() {
    check_timesteps("v1");
}

#[test]
fn timesteps_and_sigmas_match_diffusers_v2() {
    check_timesteps("v2");
}

/// Each sampler's update alone, from diffusers' own inputs at every step of its loop
/// (Euler ancestral with diffusers' noise).
fn check_scheduler_steps(name: &str) {
    let f = fixture(name);
    for (class, entry) in f.meta["loops"].as_object().unwrap() {
        let kind = kind_of(class);
        let mut s = Schedule::new(
            &f.sd.scheduler,
            kind,
            entry["steps"].as_u64().unwrap() as usize,
        )
        .unwrap();
        let want_t: Vec<f64> = serde_json::from_value(entry["timesteps"].clone()).unwrap();
        assert_eq!(s.timesteps.len(), want_t.len(), "{class}");
        for k in 0..s.len() {
            let key = |what: &str| format!("loop.{class}.{k}.{what}");
            let noise = f.refs.get(&key("noise"));
            let (prev, x0) = s
                .step(k, f.r(&key("model_output")), f.r(&key("latent")), noise)
                .unwrap();
            assert_rel(&key("x0"), &x0, f.r(&key("x0")), REL);
            assert_rel(&key("prev"), &prev, f.r(&key("prev")), REL);
        }
    }
}

#[test]
fn scheduler_updates_match_diffusers_v1() {
    check_scheduler_steps("v1");
}

#[test]
fn scheduler_updates_match_diffusers_v2() {
    check_scheduler_steps("v2");
}

/// Whole text-to-image loops through our pipeline: prompts -> tokens -> text encoder ->
/// guided UNet steps -> sampler -> decoder, from diffusers' initial latents.
fn check_loops(name: &str) {
    let f = fixture(name);
    for (class, entry) in f.meta["loops"].as_object().unwrap() {
        let kind = kind_of(class);
        if kind == SchedulerKind::EulerAncestral {
            continue; // its fresh noise comes from torch's generator: checked step by step
        }
        let prompts: Vec<String> = serde_json::from_value(entry["prompts"].clone()).unwrap();
        let negatives: Vec<String> = match &entry["negative_prompts"] {
            serde_json::Value::Null => vec![String::new(); prompts.len()],
            v => serde_json::from_value(v.clone()).unwrap(),
        };
        let p: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let n: Vec<&str> = negatives.iter().map(String::as_str).collect();
        let mut c = Collect::of(&["latent", "x0_pred", "unet.out", "vae.decoder.out"]);
        let mut hooks = Hooks::none().with(&mut c);
        let (cond, uncond) = f.sd.encode_guided(&p, &n, &mut hooks).unwrap();
        let opts = SdOptions {
            steps: entry["steps"].as_u64().unwrap() as usize,
            guidance: entry["guidance"].as_f64().unwrap(),
            scheduler: kind,
            eta: 0.0,
        };
        let g = Generation {
            cond,
            uncond: Some(uncond),
            latents: f.r("loop.latents").clone(),
            seeds: &[0, 1],
        };
        let (decoded, _) = f.sd.generate(&g, &opts, &mut hooks).unwrap();
        drop(hooks);
        let mut worst = 0f32;
        for k in 0..opts.steps {
            let key = |what: &str| format!("loop.{class}.{k}.{what}");
            worst = worst.max(assert_rel(
                &key("latent"),
                c.get("latent", k as u16),
                f.r(&key("latent")),
                REL,
            ));
            let both = c.get("unet.out", k as u16);
            let (cc, u) = (both.narrow(0, 0, 2).unwrap(), both.narrow(0, 2, 2).unwrap());
            let guided = (&u + ((cc - &u).unwrap() * opts.guidance).unwrap()).unwrap();
            worst = worst.max(assert_rel(
                &key("model_output"),
                &guided,
                f.r(&key("model_output")),
                REL,
            ));
            worst = worst.max(assert_rel(
                &key("x0"),
                c.get("x0_pred", k as u16),
                f.r(&key("x0")),
                REL,
            ));
        }
        let last = opts.steps - 1;
        let _ = f.r(&format!("loop.{class}.{last}.prev"));
        worst = worst.max(assert_rel(
            "decoded",
            &decoded,
            f.r(&format!("loop.{class}.decoded")),
            REL,
        ));
        assert_eq!(max_diff(c.get("vae.decoder.out", 0), &decoded), 0.0);
        eprintln!("{name} {class} loop: max relative diff {worst:e}");
    }
}

#[test]
fn sampling_loops_match_diffusers_v1() {
    check_loops("v1");
}

#[test]
fn sampling_loops_match_diffusers_v2() {
    check_loops("v2");
}

#[test]
fn every_site_fires_at_its_declared_shape_and_steps() {
    let f = fixture("v1");
    let sd = &f.sd;
    let (h, w) = sd.default_size();
    let sites = sd.sites(h, w, false).unwrap();
    let mut c = Collect::all();
    let mut hooks = Hooks::none().with(&mut c);
    let (cond, uncond) = sd
        .encode_guided(&["a cat", "a dog"], &["", ""], &mut hooks)
        .unwrap();
    let dims = sd.latent_dims(h, w).unwrap();
    let opts = SdOptions {
        steps: 3,
        guidance: 2.0,
        scheduler: SchedulerKind::EulerAncestral,
        eta: 0.0,
    };
    let seeds = [4u64, 5];
    let g = Generation {
        cond,
        uncond: Some(uncond),
        latents: sd.noise(&seeds, 0, dims).unwrap(),
        seeds: &seeds,
    };
    sd.generate(&g, &opts, &mut hooks).unwrap();
    drop(hooks);
    let order: Vec<&str> = c.seen.iter().map(|s| s.0.as_str()).collect();
    let mut first_seen: Vec<&str> = Vec::new();
    for s in &order {
        if !first_seen.contains(s) {
            first_seen.push(s);
        }
    }
    let names: Vec<&str> = sites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(first_seen, names, "firing order follows sites()");
    for site in &sites {
        let firings: Vec<_> = c.seen.iter().filter(|s| s.0 == site.name).collect();
        assert_eq!(
            firings.len(),
            if site.per_step { 3 } else { 1 },
            "{}",
            site.name
        );
        let guided_rows = site.name.starts_with("unet.") || site.name.starts_with("text_encoder.");
        let mut want = vec![if guided_rows { 4 } else { 2 }];
        want.extend(site.dims.iter().map(|d| d.1));
        for (i, x) in firings.iter().enumerate() {
            assert_eq!(x.3.dims(), want.as_slice(), "{}", site.name);
            if site.per_step {
                assert_eq!(x.1, i as u16);
                assert!(x.2.is_some());
            } else {
                assert_eq!((x.1, x.2), (0, None), "{}", site.name);
            }
        }
    }
}

/// Copies a fixture folder (without the references) to edit it.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                copy(&p, &to.join(e.file_name()));
            } else if !e.file_name().to_string_lossy().starts_with("reference") {
                std::fs::copy(&p, to.join(e.file_name())).unwrap();
            }
        }
    }
    copy(&fixture_dir(name), tmp.path());
    tmp
}

fn load_err(dir: &Path) -> String {
    match StableDiffusion::load(dir, &Device::Cpu) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn bad_folders_are_named_before_any_work() {
    // A missing file names itself and the layout.
    let t = copy_fixture("v1");
    std::fs::remove_file(t.path().join("unet/config.json")).unwrap();
    let e = load_err(t.path());
    assert!(
        e.contains("unet/config.json") && e.contains("missing") && e.contains("model_index.json"),
        "{e}"
    );

    let t = copy_fixture("v1");
    std::fs::remove_file(t.path().join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let e = load_err(t.path());
    assert!(
        e.contains("vae/diffusion_pytorch_model.safetensors") && e.contains("missing"),
        "{e}"
    );

    // Another model family.
    let t = copy_fixture("v1");
    edit_json(&t.path().join("model_index.json"), |v| {
        v["_class_name"] = "StableDiffusionXLPipeline".into()
    });
    let e = load_err(t.path());
    assert!(
        e.contains("StableDiffusionXLPipeline") && e.contains("1.x / 2.x"),
        "{e}"
    );

    // An unsupported config value, named with its value.
    let t = copy_fixture("v1");
    edit_json(&t.path().join("unet/config.json"), |v| {
        v["resnet_time_scale_shift"] = "scale_shift".into()
    });
    let e = load_err(t.path());
    assert!(
        e.contains("resnet_time_scale_shift") && e.contains("\"scale_shift\""),
        "{e}"
    );

    let t = copy_fixture("v1");
    edit_json(&t.path().join("scheduler/scheduler_config.json"), |v| {
        v["timestep_spacing"] = "karras".into()
    });
    let e = load_err(t.path());
    assert!(
        e.contains("timestep_spacing") && e.contains("karras"),
        "{e}"
    );

    // A tensor of the wrong shape is named.
    let t = copy_fixture("v1");
    let p = t.path().join("unet/diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    tensors.insert(
        "conv_in.bias".into(),
        Tensor::zeros(5, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &p).unwrap();
    let e = load_err(t.path());
    assert!(
        e.contains("conv_in.bias") && e.contains("unet/diffusion_pytorch_model.safetensors"),
        "{e}"
    );

    // A tokenizer whose vocabulary does not fit the text encoder.
    let t = copy_fixture("v1");
    edit_json(&t.path().join("text_encoder/config.json"), |v| {
        v["vocab_size"] = 100.into()
    });
    let e = load_err(t.path());
    assert!(e.contains("tokenizer") && e.contains("100"), "{e}");
}

/// Runs the binary.
fn latentlens(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_latentlens"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn ok(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "failed: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn record_sd_writes_a_run_that_probe_reduce_and_infoloss_read() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    let animals = ["cat", "dog"];
    let lines: Vec<String> = (0..12)
        .map(|i| {
            let a = animals[i % 2];
            format!("{{\"prompt\": \"a photo of a {a} riding a horse\", \"animal\": \"{a}\", \"size\": {}.5}}", i)
        })
        .collect();
    std::fs::write(&prompts, lines.join("\n") + "\n").unwrap();
    let run = dir.path().join("run");
    let model = fixture_dir("v1");
    let (run_s, model_s, prompts_s) = (
        run.to_str().unwrap(),
        model.to_str().unwrap(),
        prompts.to_str().unwrap(),
    );
    let out = ok(&latentlens(&[
        "record",
        "sd",
        "--model-dir",
        model_s,
        "--prompts",
        prompts_s,
        "--run",
        run_s,
        "--steps",
        "3",
        "--guidance",
        "2",
        "--pool",
        "mean",
        "--batch-size",
        "4",
        "--scheduler",
        "euler-ancestral",
    ]));
    assert!(out.contains("recorded 12 samples"), "{out}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["status"], "complete");
    assert_eq!(manifest["rows"]["unet.mid_block"], 36);
    assert_eq!(manifest["rows"]["text_encoder.last_hidden_state"], 12);
    assert_eq!(
        manifest["rows"]["unet.down_blocks.0.attentions.0.attn2"],
        36
    );
    assert!(run.join("latents/site=vae.decoder.out").is_dir());

    ok(&latentlens(&[
        "probe",
        "--run",
        run_s,
        "--label",
        "animal",
        "--sites",
        "unet.mid_block",
        "--steps",
        "last",
        "--folds",
        "3",
        "--permutations",
        "0",
        "--bootstrap",
        "12",
    ]));
    ok(&latentlens(&[
        "reduce",
        "--run",
        run_s,
        "--sites",
        "unet.mid_block,x0_pred",
        "--components",
        "2",
        "--color-by",
        "animal",
    ]));
    ok(&latentlens(&[
        "infoloss",
        "--run",
        run_s,
        "--sites",
        "unet.mid_block,unet.up_blocks.1",
        "--labels",
        "animal",
        "--max-points",
        "12",
    ]));
    assert!(run.join("tables").read_dir().unwrap().count() >= 3);
}

#[test]
fn record_sd_refuses_bad_prompt_files_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_dir("v1");
    let run = dir.path().join("run");
    for (name, text, needle) in [
        ("p.txt", "a cat\n\na dog\n", "line 2 is empty"),
        (
            "p.jsonl",
            "{\"prompt\": \"a\", \"animal\": \"cat\"}\n{\"prompt\": \"b\"}\n",
            "animal",
        ),
        ("p.csv", "prompt,animal\na cat,cat\na dog\n", "row 3"),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let out = latentlens(&[
            "record",
            "sd",
            "--model-dir",
            model.to_str().unwrap(),
            "--prompts",
            p.to_str().unwrap(),
            "--run",
            run.to_str().unwrap(),
            "--steps",
            "2",
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{name}: {err}");
        assert!(
            !run.exists() || std::fs::read_dir(&run).unwrap().next().is_none(),
            "{name}: a run was written"
        );
    }
    let out = latentlens(&["sites", "sd", "--model-dir", model.to_str().unwrap()]);
    let listed = ok(&out);
    assert!(
        listed.contains("unet.mid_block.attentions.0.attn2")
            && listed.contains("text_encoder.layers.2"),
        "{listed}"
    );
}

#[test]
fn img2img_encodes_noises_to_the_strength_and_runs_the_rest() {
    let f = fixture("v1");
    let sd = &f.sd;
    let images = f.r("vae.image");
    let mut c = Collect::all();
    let mut hooks = Hooks::none().with(&mut c);
    let (cond, uncond) = sd
        .encode_guided(&["a cat", "a dog"], &["", ""], &mut hooks)
        .unwrap();
    let seeds = [7u64, 8];
    let dims = sd.latent_dims(16, 16).unwrap();
    let noise = sd.noise(&seeds, 0, dims).unwrap();
    let g = Generation {
        cond,
        uncond: Some(uncond),
        latents: noise.clone(),
        seeds: &seeds,
    };
    let opts = SdOptions {
        steps: 10,
        guidance: 2.0,
        scheduler: SchedulerKind::Ddim,
        eta: 0.0,
    };
    let (out, _) = sd.img2img(images, 0.35, &g, &opts, &mut hooks).unwrap();
    drop(hooks);
    assert_eq!(out.dims(), images.dims());
    // diffusers' get_timesteps: int(10 * 0.35) = 3 steps run, from the 8th timestep on.
    assert_eq!(latentlens::sd::pipeline::img2img_first_step(10, 0.35), 7);
    let steps: Vec<u16> = c
        .seen
        .iter()
        .filter(|s| s.0 == "latent")
        .map(|s| s.1)
        .collect();
    assert_eq!(steps, vec![0, 1, 2]);
    let schedule = Schedule::new(&sd.scheduler, SchedulerKind::Ddim, 10).unwrap();
    let t0 = c.seen.iter().find(|s| s.0 == "latent").unwrap().2;
    assert_eq!(t0, Some(schedule.timesteps[7] as i32));
    for site in ["image", "vae.encoder.mean", "vae.encoder.logvar"] {
        assert_eq!(c.seen.iter().filter(|s| s.0 == site).count(), 1, "{site}");
    }
    // The first latent is the scaled posterior sample noised by DDIM's add_noise.
    let mean = c.get("vae.encoder.mean", 0);
    let logvar = c.get("vae.encoder.logvar", 0);
    let eps = sd
        .noise(&seeds, latentlens::sd::pipeline::POSTERIOR_STREAM, dims)
        .unwrap();
    let z = (mean + (logvar * 0.5).unwrap().exp().unwrap().mul(&eps).unwrap()).unwrap();
    let a = schedule.timesteps[7] as usize;
    let ac = latentlens::sd::SchedulerConfig::alphas_cumprod(&sd.scheduler)[a];
    let want = ((z * (sd.vae.config.scaling_factor * ac.sqrt())).unwrap()
        + (noise * (1.0 - ac).sqrt()).unwrap())
    .unwrap();
    assert_abs("first latent", c.get("latent", 0), &want, 1e-5);
    // Strength that leaves no step is refused.
    let mut hooks = Hooks::none();
    assert!(sd.img2img(images, 0.05, &g, &opts, &mut hooks).is_err());
}
