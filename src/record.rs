//! Recording jobs: run a model over samples chunk by chunk, tap the chosen sites, and hand
//! each finished chunk to the run store as one part per site.
//!
//! Chunks are the unit of resumption: a chunk's parts are written only once the whole chunk
//! is computed, and a rerun skips the chunks whose parts are all on disk. Memory is bounded
//! by one chunk's rows, however many samples the run has.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::progress::Progress;
use polars::prelude::DataFrame;

use crate::sites::{Hooks, SiteInfo};
use crate::store::{Run, SiteDim, SiteRecord, STATUS_COMPLETE};
use crate::taps::{Pool, Recorder, SiteLayout};
use crate::{Error, Result};

/// What to record and how to cut the work.
#[derive(Debug, Clone)]
pub struct RecordPlan<'a> {
    pub sites: Vec<&'a SiteInfo>,
    /// Per-step sites are kept at these steps only (`None`: every step).
    pub steps: Option<Vec<u16>>,
    pub pool: Pool,
    pub samples: u32,
    pub chunk_samples: u32,
    pub batch_size: u32,
}

/// What a finished recording wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecordSummary {
    pub chunks: u32,
    pub chunks_resumed: u32,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// The run was complete before this call: nothing was recorded.
    pub already_complete: bool,
}

/// Largest chunk whose buffered rows stay under `budget_bytes`: `bytes_per_sample` is what
/// one sample adds over all recorded sites and steps.
pub fn chunk_samples_for(bytes_per_sample: u64, budget_bytes: u64, max: u32) -> u32 {
    (budget_bytes / bytes_per_sample.max(1)).clamp(1, max as u64) as u32
}

/// Bytes one sample adds when recording `sites` at `steps_kept` steps (of `total_steps`).
pub fn bytes_per_sample(sites: &[&SiteInfo], pool: Pool, steps_kept: usize) -> u64 {
    sites
        .iter()
        .map(|s| {
            let layout = SiteLayout::new(s);
            let firings = if s.per_step { steps_kept } else { 1 };
            let positions =
                if s.dims.first().is_some_and(|(n, _)| *n == "position") && pool == Pool::None {
                    s.dims[0].1
                } else {
                    1
                };
            (layout.width(pool) * firings * positions * 4) as u64
        })
        .sum()
}

/// Runs `forward` over every sample of the plan that is not on disk yet. `forward` gets the
/// sample ids of one batch and the hooks to pass to the model, and returns those samples'
/// label rows (column `sample` first).
pub fn record(
    run: &mut Run,
    plan: &RecordPlan,
    forward: &mut dyn FnMut(&[u32], &mut Hooks) -> Result<DataFrame>,
    bar: &dyn Progress,
    interrupted: &AtomicBool,
) -> Result<RecordSummary> {
    let started = Instant::now();
    if run.manifest().status == STATUS_COMPLETE {
        // Everything is on disk already (`Start::Complete`): report it, touch nothing.
        let m = run.manifest();
        bar.set_length(plan.samples as u64);
        bar.set_position(plan.samples as u64);
        return Ok(RecordSummary {
            chunks: 0,
            chunks_resumed: 0,
            rows: m.rows.values().sum(),
            bytes: 0,
            seconds: 0.0,
            already_complete: true,
        });
    }
    let site_names: Vec<&str> = plan.sites.iter().map(|s| s.name.as_str()).collect();
    let chunk = plan.chunk_samples.max(1);
    let chunks = plan.samples.div_ceil(chunk);
    let mut recorder = Recorder::new(&plan.sites, plan.steps.clone(), plan.pool);
    let mut resumed = 0;
    let mut bytes = 0u64;
    bar.set_length(plan.samples as u64);
    for c in 0..chunks {
        let ids: Vec<u32> = (c * chunk..((c + 1) * chunk).min(plan.samples)).collect();
        if run.part_done(&site_names, c) {
            resumed += 1;
            bar.inc(ids.len() as u64);
            continue;
        }
        let mut labels: Option<DataFrame> = None;
        for batch in ids.chunks(plan.batch_size.max(1) as usize) {
            if interrupted.load(Ordering::SeqCst) {
                return Err(Error::Interrupted);
            }
            recorder.begin_batch(batch);
            let mut hooks = Hooks::none().with(&mut recorder);
            let df = forward(batch, &mut hooks)?;
            match labels.as_mut() {
                None => labels = Some(df),
                Some(acc) => {
                    acc.vstack_mut(&df)?;
                }
            }
            bar.inc(batch.len() as u64);
        }
        for (site, rows) in recorder.take() {
            bytes += rows.value_bytes() as u64;
            run.write_latents_part(&site, c, &rows)?;
        }
        let mut labels = labels.unwrap_or_default();
        labels.rechunk_mut();
        // Written last: its presence marks the chunk as done.
        run.write_samples_part(c, &mut labels)?;
    }
    let samples = run.finish_samples(chunks)?;
    let mut rows_total = 0;
    let manifest = run.manifest_mut();
    manifest.samples = samples;
    manifest.sites = plan
        .sites
        .iter()
        .map(|s| SiteRecord {
            name: s.name.clone(),
            dims: s.dims.iter().map(|&(n, d)| SiteDim::new(n, d)).collect(),
            width: SiteLayout::new(s).width(plan.pool),
        })
        .collect();
    let counts = count_rows(run, &site_names)?;
    let manifest = run.manifest_mut();
    for (site, n) in counts {
        rows_total += n;
        manifest.rows.insert(site, n);
    }
    let seconds = started.elapsed().as_secs_f64();
    manifest.timings.insert("record_seconds".into(), seconds);
    manifest.status = STATUS_COMPLETE.into();
    run.write_manifest()?;
    Ok(RecordSummary {
        chunks,
        chunks_resumed: resumed,
        rows: rows_total,
        bytes,
        seconds,
        already_complete: false,
    })
}

fn count_rows(run: &Run, sites: &[&str]) -> Result<Vec<(String, u64)>> {
    sites
        .iter()
        .map(|site| {
            let mut n = 0u64;
            run.scan_latents(site, None, 0, &mut |rows| {
                n += rows.len() as u64;
                Ok(())
            })?;
            Ok((site.to_string(), n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Manifest, ModelInfo};
    use candle_core::{Device, Tensor};
    use polars::prelude::*;

    fn plan_sites() -> Vec<SiteInfo> {
        vec![
            SiteInfo::new("once", &[("channel", 2)], false),
            SiteInfo::new("each", &[("channel", 3)], true),
        ]
    }

    /// A stand-in model: site `once` fires once, `each` at 4 steps, values from the sample id.
    fn fake_forward(ids: &[u32], hooks: &mut Hooks) -> Result<DataFrame> {
        let b = ids.len();
        let base: Vec<f32> = ids.iter().flat_map(|&i| [i as f32; 3]).collect();
        let x = Tensor::from_vec(base, (b, 3), &Device::Cpu)?;
        hooks.set_step(0, None);
        hooks.site("once", x.narrow(1, 0, 2)?)?;
        for step in 0..4u16 {
            hooks.set_step(step, Some(1000 - step as i32));
            hooks.site("each", (&x + step as f64)?)?;
        }
        Ok(df!("sample" => ids, "label" => ids.iter().map(|i| i % 2).collect::<Vec<u32>>())?)
    }

    fn new_run(dir: &std::path::Path) -> Run {
        let m = Manifest::new(
            "test",
            serde_json::json!({}),
            0,
            ModelInfo {
                id: "fake".into(),
                weights: vec![],
            },
        );
        Run::create_or_resume(dir, m).unwrap().0
    }

    #[test]
    fn records_every_sample_once_and_resumes_after_interruption() {
        let dir = tempfile::tempdir().unwrap();
        let sites = plan_sites();
        let plan = RecordPlan {
            sites: sites.iter().collect(),
            steps: Some(vec![1, 3]),
            pool: Pool::None,
            samples: 10,
            chunk_samples: 4,
            batch_size: 3,
        };
        let mut run = new_run(dir.path());
        // Interrupt after the first chunk's batches.
        let stop = AtomicBool::new(false);
        let mut calls = 0;
        let mut forward = |ids: &[u32], h: &mut Hooks| {
            calls += 1;
            if calls == 2 {
                stop.store(true, Ordering::SeqCst);
            }
            fake_forward(ids, h)
        };
        let err = record(
            &mut run,
            &plan,
            &mut forward,
            &crate::progress::Hidden,
            &stop,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Interrupted));
        assert!(run.part_done(&["once", "each"], 0));
        assert!(!run.part_done(&["once", "each"], 1));

        let mut run = new_run(dir.path());
        let summary = record(
            &mut run,
            &plan,
            &mut fake_forward,
            &crate::progress::Hidden,
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(summary.chunks_resumed, 1);
        let each = run.read_latents("each", None).unwrap();
        assert_eq!(each.len(), 20);
        assert_eq!(each.sample.iter().filter(|&&s| s == 7).count(), 2);
        assert_eq!(each.step[..2], [1, 3]);
        assert_eq!(each.row(3), &[4.0, 4.0, 4.0]); // sample 1 at step 3
        assert_eq!(run.read_latents("once", None).unwrap().len(), 10);
        let samples = run.samples().unwrap();
        assert_eq!(samples.height(), 10);
        let ids: Vec<u32> = samples
            .column("sample")
            .unwrap()
            .u32()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
        assert_eq!(run.manifest().status, STATUS_COMPLETE);
        assert_eq!(run.manifest().rows["each"], 20);
    }

    #[test]
    fn chunk_size_respects_the_memory_budget() {
        let sites = plan_sites();
        let refs: Vec<&SiteInfo> = sites.iter().collect();
        // once: 2 floats; each: 3 floats x 50 steps.
        assert_eq!(bytes_per_sample(&refs, Pool::None, 50), (2 + 150) * 4);
        assert_eq!(chunk_samples_for(608, 6080, 1000), 10);
        assert_eq!(chunk_samples_for(608, 1, 1000), 1);
        assert_eq!(chunk_samples_for(1, u64::MAX, 64), 64);
    }
}
