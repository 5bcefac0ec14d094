//! The tests of the former `cli/infoloss.rs`, every assertion kept, and the new rules:
//! validation before writing, labels through `store::resolve`, MI honesty.

use super::*;
use crate::progress::Hidden;
use crate::store::{Manifest, ModelInfo, SiteDim, SiteRecord, STATUS_COMPLETE};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

fn recorded(v: &[u16]) -> BTreeSet<u16> {
    v.iter().copied().collect()
}

#[test]
fn evenly_spaced_keeps_the_ends() {
    let v: Vec<u16> = (0..50).collect();
    let s = evenly_spaced(&v, 8);
    assert_eq!(s.len(), 8);
    assert_eq!((s[0], s[7]), (0, 49));
    assert!(s.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(evenly_spaced(&[0, 1, 2], 8), vec![0, 1, 2]);
}

#[test]
fn pick_steps_follows_the_spec_and_keeps_single_step_sites() {
    let v = recorded(&(0..20).collect::<Vec<_>>());
    assert_eq!(pick_steps(&v, Some("0..20:5")).unwrap(), vec![0, 5, 10, 15]);
    assert_eq!(pick_steps(&v, Some("last")).unwrap(), vec![19]);
    assert_eq!(pick_steps(&recorded(&[0]), Some("5")).unwrap(), vec![0]);
    assert!(pick_steps(&v, Some("99")).is_err());
    // An unrecorded step of a multi-step site is an error (it was dropped silently).
    let sparse = recorded(&[0, 10, 20]);
    let err = pick_steps(&sparse, Some("0,5")).unwrap_err().to_string();
    assert!(err.contains("recorded steps: 0, 10, 20"), "{err}");
}

#[test]
fn plots_are_svg_with_titles_and_labels() {
    let names = vec!["latent@0".to_string(), "unet.mid_block@0".to_string()];
    let svg = plots::infoloss::cka(&names, &[1.0, 0.4, 0.4, 1.0], 100).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("Linear CKA") && svg.contains("unet.mid_block@0")
    );
    let rows: Vec<MiRow> = [("gaussian", 0.5), ("ksg", 0.4)]
        .iter()
        .flat_map(|&(e, v)| {
            (0..3).map(move |s| MiRow {
                label: "shape".into(),
                site: "latent".into(),
                step: s * 10,
                estimator: e.into(),
                mi_nats: Some(v + s as f64 * 0.1),
                mi_raw_nats: Some(v + s as f64 * 0.1),
                label_entropy: Some(3f64.ln()),
                clamped: false,
                n: 100,
                components: 8,
                neighbours: 3,
                neighbours_used: (e == "ksg").then_some(3),
                note: None,
            })
        })
        .collect();
    let refs: Vec<&MiRow> = rows.iter().collect();
    let svg = plots::infoloss::mutual_info("shape", &refs, 3).unwrap();
    assert!(
        svg.contains("mutual information (nats)")
            && svg.contains("latent")
            && svg.contains("step")
            && svg.contains("label entropy (ceiling)")
    );
}

#[test]
fn labels_are_typed_and_aligned_by_sample() {
    let df = df!(
        "sample" => [3u32, 1, 2],
        "shape" => ["square", "heart", "square"],
        "scale" => [Some(0.5f64), None, Some(1.0)],
        "digit" => [7i64, 3, 7],
    )
    .unwrap();
    let label = |c: &str| resolve::index("samples.parquet", &df, c, None).unwrap();
    let (l, keep) = mi_label(&label("shape"), &[1, 2, 3], 0);
    assert_eq!(l, MiLabel::Categorical(vec![0, 1, 1]));
    assert_eq!(keep, vec![0, 1, 2]);
    let (l, keep) = mi_label(&label("scale"), &[1, 2, 3], 0);
    assert_eq!(l, MiLabel::Continuous(vec![1.0, 0.5]));
    assert_eq!(keep, vec![1, 2]);
    // Integers are classes, as in probe (by store::resolve), however many values.
    let (l, _) = mi_label(&label("digit"), &[1, 2, 3], 0);
    assert_eq!(l, MiLabel::Categorical(vec![0, 1, 1]));
}

/// A small finished run: an image site, its noisy reconstruction, a latent, and a 3-step
/// site whose signal about `scale` grows with the step.
fn tiny_run(dir: &std::path::Path) -> Run {
    let model = ModelInfo {
        id: "test".into(),
        weights: vec![],
    };
    let mut manifest = Manifest::new("test", serde_json::json!({}), 0, model);
    let site = |name: &str, dims: &[(&str, usize)], width| SiteRecord {
        name: name.into(),
        dims: dims.iter().map(|(n, v)| SiteDim::new(n, *v)).collect(),
        width,
    };
    let image = [("channel", 3), ("height", 16), ("width", 16)];
    let small = [("channel", 4), ("height", 2), ("width", 2)];
    manifest.sites = vec![
        site("image", &image, 768),
        site("vae.decoder.out", &image, 768),
        site("vae.encoder.mean", &small, 16),
        site("latent", &small, 16),
    ];
    let (mut run, _) = Run::create_or_resume(dir, manifest).unwrap();
    let n = 60u32;
    let noise = crate::rng::gaussian(1, 0, n as usize * (768 + 3 * 16));
    let (mut image, mut decoded) = (Latents::new(768), Latents::new(768));
    let (mut mean, mut latent) = (Latents::new(16), Latents::new(16));
    let scale: Vec<f64> = (0..n).map(|s| (s % 7) as f64 / 7.0).collect();
    for s in 0..n {
        let img: Vec<f32> = (0..768)
            .map(|k| (k as f32 * 0.1 + s as f32).sin() * 0.8)
            .collect();
        let rec: Vec<f32> = img
            .iter()
            .enumerate()
            .map(|(k, v)| v + 0.05 * noise[s as usize * 768 + k])
            .collect();
        image.push(s, 0, None, None, &img);
        decoded.push(s, 0, None, None, &rec);
        mean.push(s, 0, None, None, &img[..16]);
        for step in 0..3u16 {
            let off = n as usize * 768 + (s as usize * 3 + step as usize) * 16;
            let x: Vec<f32> = (0..16)
                .map(|j| {
                    let signal = if j == 0 {
                        4.0 * scale[s as usize] as f32 * step as f32
                    } else {
                        0.0
                    };
                    signal + noise[off + j]
                })
                .collect();
            latent.push(s, step, Some(999 - step as i32 * 300), None, &x);
        }
    }
    for (name, rows) in [
        ("image", &image),
        ("vae.decoder.out", &decoded),
        ("vae.encoder.mean", &mean),
        ("latent", &latent),
    ] {
        run.write_latents_part(name, 0, rows).unwrap();
    }
    let shapes = ["circle", "square", "heart"];
    let mut samples = df!(
        "sample" => (0..n).collect::<Vec<u32>>(),
        "shape" => (0..n).map(|s| shapes[s as usize % 3]).collect::<Vec<_>>(),
        "scale" => scale,
    )
    .unwrap();
    run.write_samples_part(0, &mut samples).unwrap();
    run.finish_samples(1).unwrap();
    run.manifest_mut().status = STATUS_COMPLETE.into();
    run.write_manifest().unwrap();
    Run::open(dir).unwrap()
}

fn options() -> Options {
    Options {
        sites: vec!["latent,vae.encoder.mean".into()],
        seed: 3,
        components: 2,
        ..Options::default()
    }
}

/// plan -> run -> write, as the command does.
fn infoloss(run: &mut Run, opts: &Options) -> Result<()> {
    let stop = AtomicBool::new(false);
    let plan = plan(run, opts)?;
    let out = super::run(run, &plan, &Ctx::new(&Hidden, &stop))?;
    super::super::write(run, &plan.identity, out, Instant::now())?;
    Ok(())
}

#[test]
fn writes_every_table_and_plot_of_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut run = tiny_run(&dir);
    infoloss(&mut run, &options()).unwrap();

    let rec = run.table("infoloss_reconstruction").unwrap();
    assert_eq!(rec.height(), 60);
    let summary = run.table("infoloss_summary").unwrap();
    assert_eq!(summary.height(), 3);
    let ratio = summary
        .column("compression_ratio")
        .unwrap()
        .f64()
        .unwrap()
        .get(0);
    assert_eq!(ratio, Some(48.0));
    // The summary's SSIM mean is the mean of the per-sample SSIMs.
    let ssim: Vec<f64> = rec
        .column("ssim")
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    let mean = summary
        .column("mean")
        .unwrap()
        .f64()
        .unwrap()
        .get(2)
        .unwrap();
    assert!((mean - ssim.iter().sum::<f64>() / 60.0).abs() < 1e-12);
    assert!(mean > 0.5 && mean < 1.0, "{mean}");

    // latent at 3 steps + vae.encoder.mean at 1: a 4 x 4 matrix with a unit diagonal.
    let cka = run.table("cka").unwrap();
    assert_eq!(cka.height(), 16);
    let values: Vec<f64> = cka
        .column("cka")
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    for i in 0..4 {
        assert!((values[i * 4 + i] - 1.0).abs() < 1e-9);
    }

    let mi = run.table("mutual_info").unwrap();
    // 2 labels x 4 representations x 2 estimators.
    assert_eq!(mi.height(), 16);
    let rows = mi_rows(&mi).unwrap();
    let get = |st: u16| {
        rows.iter()
            .find(|r| {
                r.label == "scale"
                    && r.site == "latent"
                    && r.step == st
                    && r.estimator == "gaussian"
            })
            .and_then(|r| r.mi_nats)
            .unwrap()
    };
    // The scale signal is absent at step 0 and strongest at step 2.
    assert!(get(2) > get(0) + 0.3, "{} vs {}", get(2), get(0));
    // The table says which estimator used which parameters.
    let ksg = rows.iter().find(|r| r.estimator == "ksg").unwrap();
    assert_eq!((ksg.neighbours, ksg.components), (3, 2));
    assert!(ksg.neighbours_used.is_some());

    for plot in ["infoloss-cka", "infoloss-mi-scale", "infoloss-mi-shape"] {
        let svg = std::fs::read_to_string(dir.join("plots").join(format!("{plot}.svg"))).unwrap();
        assert!(svg.contains("</svg>"), "{plot}");
    }
    // Same seed, same tables.
    infoloss(&mut run, &options()).unwrap();
    assert!(run.table("mutual_info").unwrap().equals_missing(&mi));

    // The report quotes the tables.
    let record = run.manifest().analysis("infoloss").unwrap().clone();
    let section = report(&run, &record).unwrap();
    let psnr = summary
        .column("mean")
        .unwrap()
        .f64()
        .unwrap()
        .get(1)
        .unwrap();
    assert!(
        section.findings[0].contains(&format!("PSNR {psnr:.1} dB [95% CI")),
        "{:?}",
        section.findings
    );
    assert!(
        section
            .findings
            .iter()
            .any(|f| f.starts_with("MI of `scale` (gaussian")),
        "{:?}",
        section.findings
    );
}

#[test]
fn bad_steps_and_labels_are_refused_before_any_table_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let mut run = tiny_run(&tmp.path().join("run"));
    let mut o = options();
    o.steps = Some("0,7".into());
    let err = infoloss(&mut run, &o).unwrap_err().to_string();
    assert!(
        err.contains("latent") && err.contains("recorded steps: 0, 1, 2"),
        "{err}"
    );
    let mut o = options();
    o.labels = vec!["colour".into()];
    let err = infoloss(&mut run, &o).unwrap_err().to_string();
    assert!(
        err.contains("`colour` not found") && err.contains("shape"),
        "{err}"
    );
    assert!(run.tables().unwrap().is_empty(), "nothing was written");
}

#[test]
fn clamped_estimates_are_flagged_in_the_table_and_the_findings() {
    let rows = vec![MiRow {
        label: "shape".into(),
        site: "unet.mid_block".into(),
        step: 4,
        estimator: "gaussian".into(),
        mi_nats: Some(3f64.ln()),
        mi_raw_nats: Some(5.32),
        label_entropy: Some(3f64.ln()),
        clamped: true,
        n: 64,
        components: 8,
        neighbours: 3,
        neighbours_used: None,
        note: None,
    }];
    let back = mi_rows(&mi_frame(&rows).unwrap()).unwrap();
    assert_eq!(back, rows);
    let (findings, table) = mi_report(&rows);
    assert!(
        findings
            .iter()
            .any(|f| f.starts_with("Warning") && f.contains("5.32") && f.contains("1.10")),
        "{findings:?}"
    );
    assert_eq!(table.rows[0][6], "clamped");
}
