//! Recording the built-in latent diffusion pipeline: held-out shapes (img2img) or pure
//! noise, every chosen site at every kept step, into a run folder. `plan` loads the model
//! and checks every option before a file is written; `run` creates or resumes the run.

use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::data::shapes::{Shapes, HELDOUT_SEED, SHAPE_NAMES};
use crate::diffusion::pipeline::{DiffusionModel, SampleOptions};
use crate::record::{bytes_per_sample, chunk_samples_for, record, RecordPlan, RecordSummary};
use crate::sites::{select_sites, Hooks, SiteInfo};
use crate::store::{manifest::hash_file, resolve, Manifest, ModelInfo, Run, Start};
use crate::taps::Pool;
use crate::{Error, Result};

/// The built-in model's folder.
pub const BUILTIN_WEIGHTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/diffusion");

/// Buffered rows per chunk stay under this many bytes.
const CHUNK_BUDGET_BYTES: u64 = 256 << 20;
/// A chunk is also the unit of resumption: keep it small enough that Ctrl-C loses little.
const MAX_CHUNK_SAMPLES: u32 = 64;

/// Where samples come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Encode held-out shapes images, noise them to `strength`, denoise (labels: every
    /// factor).
    Shapes,
    /// Generate from pure noise, conditioned on a shape class (labels: the class asked).
    Noise,
}

/// What to record; the `record diffusion` flags and an experiment's `[run.record]` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Model folder (config.json + safetensors); `None`: the built-in model.
    pub weights: Option<PathBuf>,
    pub samples: u32,
    pub seed: u64,
    /// Site names or globs (empty: every site).
    pub sites: Vec<String>,
    pub steps: String,
    pub pool: Pool,
    pub source: Source,
    pub strength: f64,
    /// `all` (cycle), a shape name, or `none` (unconditional); with `source = noise`.
    pub class: String,
    pub ddim_steps: usize,
    pub eta: f64,
    pub guidance: f64,
    pub batch_size: u32,
}

impl Default for Options {
    fn default() -> Self {
        let s = SampleOptions::default();
        Options {
            weights: None,
            samples: 64,
            seed: 0,
            sites: Vec::new(),
            steps: "all".into(),
            pool: Pool::None,
            source: Source::Shapes,
            strength: 0.6,
            class: "all".into(),
            ddim_steps: s.steps,
            eta: s.eta,
            guidance: s.guidance,
            batch_size: 16,
        }
    }
}

impl Options {
    pub fn weights_dir(&self) -> PathBuf {
        self.weights
            .clone()
            .unwrap_or_else(|| PathBuf::from(BUILTIN_WEIGHTS))
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
enum ClassChoice {
    Cycle,
    Fixed(u32),
}

/// The checked, resolved recording: the loaded model and what to run it on.
pub struct Plan {
    pub model: DiffusionModel,
    pub sites: Vec<SiteInfo>,
    steps: Option<Vec<u16>>,
    chunk_samples: u32,
    batch_size: u32,
    sample: SampleOptions,
    class: ClassChoice,
    options: Options,
    /// The run's identity config (manifest `config`).
    pub config: serde_json::Value,
}

pub fn plan(opts: &Options, device: &candle_core::Device) -> Result<Plan> {
    let invalid = |m: String| Err(Error::Invalid(m));
    if opts.samples == 0 {
        return invalid("samples must be at least 1".into());
    }
    if opts.ddim_steps == 0 || opts.ddim_steps > 1000 {
        return invalid(format!(
            "ddim_steps = {} must be in 1..=1000",
            opts.ddim_steps
        ));
    }
    if !(opts.strength > 0.0 && opts.strength <= 1.0) {
        return invalid(format!("strength = {} must be in (0, 1]", opts.strength));
    }
    let model = DiffusionModel::load(&opts.weights_dir(), device)?;
    let all_sites = model.sites();
    let mut patterns = resolve::split_patterns(&opts.sites)?;
    if patterns.is_empty() {
        patterns.push(crate::sites::SitePattern::new("*"));
    }
    let sites: Vec<SiteInfo> = select_sites(&patterns, &all_sites)?
        .into_iter()
        .cloned()
        .collect();
    // img2img runs only the last `strength` of the schedule; its steps count from 0 too.
    let total = match opts.source {
        Source::Noise => opts.ddim_steps as u16,
        Source::Shapes => model
            .scheduler
            .img2img_timesteps(opts.ddim_steps, opts.strength)
            .len() as u16,
    };
    let steps = crate::steps::parse_steps(&opts.steps, 0, total)?;
    if opts.source == Source::Noise {
        if let Some(site) = sites
            .iter()
            .find(|s| s.name == "image" || s.name.starts_with("vae.encoder"))
        {
            return invalid(format!(
                "site `{}` does not fire when generating from noise (nothing is encoded); \
                 use source shapes, or leave it out of the sites",
                site.name
            ));
        }
    }
    let class = class_choice(&opts.class, model.config.n_classes() as u32)?;
    let refs: Vec<&SiteInfo> = sites.iter().collect();
    let steps_kept = steps.as_ref().map_or(total as usize, Vec::len);
    let per_sample = bytes_per_sample(&refs, opts.pool, steps_kept);
    let chunk_samples = chunk_samples_for(per_sample, CHUNK_BUDGET_BYTES, MAX_CHUNK_SAMPLES);
    let sample = SampleOptions {
        steps: opts.ddim_steps,
        eta: opts.eta,
        guidance: opts.guidance,
    };
    // Latents differ in the last bits between batch sizes (matmul blocking), so the batch
    // size is part of what a run is: resuming with another one would mix the two.
    let batch_size = opts.batch_size.max(1).min(chunk_samples);
    let config = serde_json::json!({
        "source": opts.source,
        "samples": opts.samples,
        "sites": sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        "steps": steps,
        "pool": opts.pool,
        "strength": opts.strength,
        "class": class,
        "ddim_steps": opts.ddim_steps,
        "steps_run": total,
        "eta": opts.eta,
        "guidance": opts.guidance,
        "chunk_samples": chunk_samples,
        "batch_size": batch_size,
        "data_seed": HELDOUT_SEED,
    });
    Ok(Plan {
        model,
        sites,
        steps,
        chunk_samples,
        batch_size,
        sample,
        class,
        options: opts.clone(),
        config,
    })
}

/// The columns samples.parquet of this recording holds besides `sample`.
pub fn label_columns(plan: &Plan) -> Vec<&'static str> {
    let mut cols = match plan.options.source {
        Source::Shapes => vec!["shape", "shape_name", "scale", "rotation", "x", "y", "hue"],
        Source::Noise => vec!["shape", "shape_name"],
    };
    if plan.model.classifier.is_some() {
        cols.push("predicted_shape");
    }
    cols
}

fn class_choice(name: &str, n_classes: u32) -> Result<ClassChoice> {
    Ok(match name {
        "all" => ClassChoice::Cycle,
        "none" => ClassChoice::Fixed(n_classes),
        name => match SHAPE_NAMES.iter().position(|&n| n == name) {
            Some(i) => ClassChoice::Fixed(i as u32),
            None => {
                return Err(Error::Invalid(format!(
                    "class `{name}` is not a shape; expected one of {}, all, none",
                    SHAPE_NAMES.join(", ")
                )))
            }
        },
    })
}

/// The manifest a recording with this plan starts (its identity decides resume).
pub fn manifest(plan: &Plan) -> Result<Manifest> {
    let weights = plan
        .model
        .weight_files
        .iter()
        .map(|p| hash_file(p))
        .collect::<Result<Vec<_>>>()?;
    Ok(Manifest::new(
        "record diffusion",
        plan.config.clone(),
        plan.options.seed,
        ModelInfo {
            id: format!(
                "latentlens-tiny-ldm ({})",
                plan.options.weights_dir().display()
            ),
            weights,
        },
    ))
}

/// Records into `dir` (created, or resumed when it holds this same run).
pub fn run(dir: &Path, plan: &Plan, ctx: &Ctx) -> Result<(Run, Start, RecordSummary)> {
    let (mut run, start) = Run::create_or_resume(dir, manifest(plan)?)?;
    let shapes = Shapes::new(plan.model.config.image_size, HELDOUT_SEED);
    let record_plan = RecordPlan {
        sites: plan.sites.iter().collect(),
        steps: plan.steps.clone(),
        pool: plan.options.pool,
        samples: plan.options.samples,
        chunk_samples: plan.chunk_samples,
        batch_size: plan.batch_size,
    };
    let mut forward = |ids: &[u32], hooks: &mut Hooks| -> Result<DataFrame> {
        forward_batch(plan, &shapes, ids, hooks)
    };
    let summary = match record(
        &mut run,
        &record_plan,
        &mut forward,
        ctx.progress,
        ctx.interrupted,
    ) {
        Ok(summary) => summary,
        Err(e) => {
            // A start that failed before its first chunk leaves no "running" stub behind.
            run.abandon_if_empty()?;
            return Err(e);
        }
    };
    Ok((run, start, summary))
}

/// One batch through the pipeline; returns the samples' label rows.
pub fn forward_batch(
    plan: &Plan,
    shapes: &Shapes,
    ids: &[u32],
    hooks: &mut Hooks,
) -> Result<DataFrame> {
    let model = &plan.model;
    let opts = &plan.options;
    let seeds: Vec<u64> = ids
        .iter()
        .map(|&i| crate::rng::mix(&[opts.seed, i as u64]))
        .collect();
    let n_classes = model.config.n_classes() as u32;
    let (images, labels) = match opts.source {
        Source::Shapes => {
            let (factors, images) = shapes.batch(ids.iter().map(|&i| i as u64), &model.device)?;
            let classes: Vec<u32> = factors.iter().map(|f| f.shape).collect();
            let out = model.img2img(
                &images,
                &classes,
                &seeds,
                opts.strength,
                &plan.sample,
                hooks,
            )?;
            let labels = df!(
                "sample" => ids,
                "shape" => classes,
                "shape_name" => factors.iter().map(|f| f.shape_name()).collect::<Vec<_>>(),
                "scale" => factors.iter().map(|f| f.scale).collect::<Vec<_>>(),
                "rotation" => factors.iter().map(|f| f.rotation).collect::<Vec<_>>(),
                "x" => factors.iter().map(|f| f.x).collect::<Vec<_>>(),
                "y" => factors.iter().map(|f| f.y).collect::<Vec<_>>(),
                "hue" => factors.iter().map(|f| f.hue).collect::<Vec<_>>(),
            )?;
            (out, labels)
        }
        Source::Noise => {
            let classes: Vec<u32> = ids
                .iter()
                .map(|&i| match plan.class {
                    ClassChoice::Cycle => i % n_classes,
                    ClassChoice::Fixed(c) => c,
                })
                .collect();
            let out = model.generate(&classes, &seeds, &plan.sample, hooks)?;
            let names: Vec<&str> = classes
                .iter()
                .map(|&c| SHAPE_NAMES.get(c as usize).copied().unwrap_or("none"))
                .collect();
            let labels = df!("sample" => ids, "shape" => &classes, "shape_name" => names)?;
            (out, labels)
        }
    };
    with_predictions(model, &images, labels)
}

/// Adds the classifier's reading of each output image, so a run says what was made, not
/// only what was asked.
fn with_predictions(
    model: &DiffusionModel,
    images: &candle_core::Tensor,
    mut labels: DataFrame,
) -> Result<DataFrame> {
    if let Some(classifier) = &model.classifier {
        let predicted = classifier.predict(images)?;
        labels.with_column(Column::new("predicted_shape".into(), predicted))?;
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_is_part_of_the_run_identity() {
        let device = candle_core::Device::Cpu;
        let opts = |batch_size| Options {
            samples: 8,
            ddim_steps: 5,
            batch_size,
            ..Options::default()
        };
        let a = manifest(&plan(&opts(4), &device).unwrap()).unwrap();
        let b = manifest(&plan(&opts(2), &device).unwrap()).unwrap();
        assert!(
            !a.same_run(&b),
            "runs with batch sizes 4 and 2 must not resume each other"
        );
        // Batch sizes beyond the samples of a chunk run the same batches.
        let c = manifest(&plan(&opts(4), &device).unwrap()).unwrap();
        assert!(a.same_run(&c));
    }
}
