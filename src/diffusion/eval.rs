//! The numbers that say whether the built-in diffusion model works: VAE reconstruction PSNR,
//! the classifier's accuracy on real held-out shapes, and how often generated images show
//! the shape they were asked for (judged by that classifier).

use std::time::Instant;

use crate::progress::Progress;
use candle_core::Tensor;
use serde::Serialize;

use super::pipeline::{DiffusionModel, SampleOptions};
use crate::data::shapes::{Shapes, HELDOUT_SEED};
use crate::sites::Hooks;

#[derive(Debug, Clone, Serialize)]
pub struct EvalOptions {
    pub n_reconstruct: usize,
    pub n_classify: usize,
    pub n_generate: usize,
    pub batch_size: usize,
    pub sample: SampleOptions,
    /// Seed of generated sample `i` is `seed + i`.
    pub seed: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            n_reconstruct: 1000,
            n_classify: 1000,
            n_generate: 500,
            batch_size: 50,
            sample: SampleOptions::default(),
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// `10 log10(1 / mse)` with pixels in [0, 1], mse over all held-out pixels.
    pub vae_psnr_db: f64,
    pub classifier_accuracy: f64,
    /// Fraction of generated images the classifier labels as the requested shape.
    pub generated_accuracy: f64,
    /// The same, per requested class (in `class_names` order).
    pub generated_accuracy_per_class: Vec<f64>,
    pub class_names: Vec<String>,
    pub options: EvalOptions,
    pub seconds: f64,
}

/// Runs the three measurements. Needs a model with a classifier.
pub fn evaluate(
    model: &DiffusionModel,
    opts: &EvalOptions,
    pb: &dyn Progress,
) -> crate::Result<EvalReport> {
    let classifier = model.classifier.as_ref().ok_or_else(|| {
        crate::Error::Invalid(
            "this model has no classifier.safetensors; train it with `latentlens train diffusion --part classifier`"
                .into(),
        )
    })?;
    let began = Instant::now();
    let bs = opts.batch_size.max(1);
    let total = opts.n_reconstruct.div_ceil(bs)
        + opts.n_classify.div_ceil(bs)
        + opts.n_generate.div_ceil(bs);
    pb.set_length(total as u64);
    pb.set_position(0);
    let heldout = Shapes::new(model.config.image_size, HELDOUT_SEED);

    pb.set_message("VAE reconstruction");
    let mut sq_err = 0.0f64;
    let mut count = 0usize;
    for start in (0..opts.n_reconstruct).step_by(bs) {
        let idx: Vec<u64> = (start..(start + bs).min(opts.n_reconstruct))
            .map(|i| i as u64)
            .collect();
        let (_, images) = heldout.batch(idx, &model.device)?;
        let mut hooks = Hooks::none();
        let (mean, _) = model.vae.encode(&images, &mut hooks)?;
        let recon = model.vae.decode(&mean, &mut hooks)?.clamp(-1f32, 1f32)?;
        // Pixels in [0, 1]: half the [-1, 1] difference.
        let diff = ((recon - &images)? * 0.5)?;
        sq_err += diff.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        count += images.elem_count();
        pb.inc(1);
    }
    let mse = sq_err / count.max(1) as f64;
    let vae_psnr_db = 10.0 * (1.0 / mse).log10();

    pb.set_message("classifier on real shapes");
    let mut correct = 0usize;
    for start in (0..opts.n_classify).step_by(bs) {
        // Offset so that these are other images than the reconstruction ones.
        let idx: Vec<u64> = (start..(start + bs).min(opts.n_classify))
            .map(|i| (opts.n_reconstruct + i) as u64)
            .collect();
        let (factors, images) = heldout.batch(idx, &model.device)?;
        let pred = classifier.predict(&images)?;
        correct += pred
            .iter()
            .zip(&factors)
            .filter(|(p, f)| **p == f.shape)
            .count();
        pb.inc(1);
    }
    let classifier_accuracy = correct as f64 / opts.n_classify.max(1) as f64;

    pb.set_message("generation");
    let n_classes = model.config.n_classes();
    let mut hits = vec![0usize; n_classes];
    let mut asked = vec![0usize; n_classes];
    for start in (0..opts.n_generate).step_by(bs) {
        let range = start..(start + bs).min(opts.n_generate);
        let classes: Vec<u32> = range.clone().map(|i| (i % n_classes) as u32).collect();
        let seeds: Vec<u64> = range.map(|i| opts.seed + i as u64).collect();
        let images: Tensor = model.generate(&classes, &seeds, &opts.sample, &mut Hooks::none())?;
        let pred = classifier.predict(&images)?;
        for (c, p) in classes.iter().zip(&pred) {
            asked[*c as usize] += 1;
            if c == p {
                hits[*c as usize] += 1;
            }
        }
        pb.inc(1);
    }
    let generated_accuracy = hits.iter().sum::<usize>() as f64 / opts.n_generate.max(1) as f64;
    let generated_accuracy_per_class = hits
        .iter()
        .zip(&asked)
        .map(|(h, a)| *h as f64 / (*a).max(1) as f64)
        .collect();
    Ok(EvalReport {
        vae_psnr_db,
        classifier_accuracy,
        generated_accuracy,
        generated_accuracy_per_class,
        class_names: model.config.class_names.clone(),
        options: opts.clone(),
        seconds: began.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::pipeline::tests::tiny_model;

    #[test]
    fn psnr_matches_the_mse_of_the_reconstructions_and_counts_are_balanced() -> crate::Result<()> {
        let (model, _maps) = tiny_model();
        let opts = EvalOptions {
            n_reconstruct: 6,
            n_classify: 5,
            n_generate: 6,
            batch_size: 4,
            sample: SampleOptions {
                steps: 2,
                ..SampleOptions::default()
            },
            seed: 0,
        };
        let r = evaluate(&model, &opts, &crate::progress::Hidden)?;
        // Second method: one batch of all six images, MSE in [0, 1] pixel units.
        let heldout = Shapes::new(32, HELDOUT_SEED);
        let (_, images) = heldout.batch(0..6, &model.device)?;
        let (mean, _) = model.vae.encode(&images, &mut Hooks::none())?;
        let recon = model
            .vae
            .decode(&mean, &mut Hooks::none())?
            .clamp(-1f32, 1f32)?;
        let mse = (((recon + 1.0)? / 2.0)? - ((images + 1.0)? / 2.0)?)?
            .sqr()?
            .mean_all()?
            .to_scalar::<f32>()? as f64;
        assert!((r.vae_psnr_db - (-10.0 * mse.log10())).abs() < 1e-3);
        assert!((0.0..=1.0).contains(&r.classifier_accuracy));
        assert_eq!(r.generated_accuracy_per_class.len(), 3);
        // Two of each class were asked for, so per-class rates are multiples of 1/2.
        for a in &r.generated_accuracy_per_class {
            assert!([0.0, 0.5, 1.0].contains(a), "{a}");
        }
        Ok(())
    }
}
