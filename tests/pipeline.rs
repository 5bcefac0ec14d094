//! The recording path does not disturb the model, and replacing taps act exactly where and
//! how they say, on the shipped diffusion model.

use candle_core::{Device, Tensor};
use latentlens::diffusion::pipeline::{DiffusionModel, SampleOptions};
use latentlens::sites::{Firing, Hooks, Tap};
use latentlens::taps::{Patch, Pool, Recorder};

const WEIGHTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/diffusion");

fn model() -> DiffusionModel {
    DiffusionModel::load(std::path::Path::new(WEIGHTS), &Device::Cpu).unwrap()
}

fn opts() -> SampleOptions {
    SampleOptions {
        steps: 6,
        eta: 0.5,
        guidance: 3.0,
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn recording_every_site_leaves_outputs_bit_identical() {
    let model = model();
    let sites = model.sites();
    let all: Vec<_> = sites.iter().collect();
    let classes = [0u32, 1, 2];
    let seeds = [11u64, 12, 13];

    let plain = model
        .generate(&classes, &seeds, &opts(), &mut Hooks::none())
        .unwrap();
    let mut rec = Recorder::new(&all, None, Pool::None);
    rec.begin_batch(&[0, 1, 2]);
    let recorded = model
        .generate(&classes, &seeds, &opts(), &mut Hooks::none().with(&mut rec))
        .unwrap();
    assert_eq!(values(&plain), values(&recorded));
    // Every per-step site kept every firing: 6 steps x 3 samples.
    let rows = rec.take();
    assert_eq!(rows["unet.mid_block"].len(), 18);
    assert_eq!(rows["vae.decoder.out"].len(), 3);
    // The recorded decoder output is the returned image (before the final clamp).
    let decoded = Tensor::from_vec(
        rows["vae.decoder.out"].x.clone(),
        plain.shape(),
        &Device::Cpu,
    )
    .unwrap()
    .clamp(-1f32, 1f32)
    .unwrap();
    assert_eq!(values(&decoded), values(&plain));

    let (_, images) = latentlens::data::shapes::Shapes::new(32, 5)
        .batch(0..3, &Device::Cpu)
        .unwrap();
    let plain = model
        .img2img(&images, &classes, &seeds, 0.5, &opts(), &mut Hooks::none())
        .unwrap();
    let mut rec = Recorder::new(&all, None, Pool::Mean);
    rec.begin_batch(&[0, 1, 2]);
    let recorded = model
        .img2img(
            &images,
            &classes,
            &seeds,
            0.5,
            &opts(),
            &mut Hooks::none().with(&mut rec),
        )
        .unwrap();
    assert_eq!(values(&plain), values(&recorded));
    assert_eq!(rec.take()["image"].len(), 3);
}

/// Observes one site at one step.
struct Grab {
    site: &'static str,
    step: u16,
    seen: Option<Tensor>,
}

impl Tap for Grab {
    fn wants(&self, site: &str) -> bool {
        site == self.site
    }
    fn tap(&mut self, x: &Tensor, at: &Firing) -> candle_core::Result<Option<Tensor>> {
        if at.step == self.step {
            self.seen = Some(x.clone());
        }
        Ok(None)
    }
}

#[test]
fn patching_x0_pred_moves_the_next_latent_as_the_ddim_formula_says() {
    let model = model();
    let opts = SampleOptions {
        steps: 5,
        eta: 0.0,
        guidance: 2.0,
    };
    let (classes, seeds) = ([1u32, 2], [3u64, 4]);
    let step = 2u16;
    let patched_x0 = Tensor::full(0.25f32, (2, 4, 8, 8), &Device::Cpu).unwrap();

    let mut patch = Patch {
        site: "x0_pred".into(),
        values: [(step, patched_x0.clone())].into(),
    };
    let mut eps = Grab {
        site: "unet.out",
        step,
        seen: None,
    };
    let mut latent_at_step = Grab {
        site: "latent",
        step,
        seen: None,
    };
    let mut next_latent = Grab {
        site: "latent",
        step: step + 1,
        seen: None,
    };
    model
        .generate(
            &classes,
            &seeds,
            &opts,
            &mut Hooks::none()
                .with(&mut latent_at_step)
                .with(&mut eps)
                .with(&mut patch)
                .with(&mut next_latent),
        )
        .unwrap();

    // By hand: guided eps = eps_u + w (eps_c - eps_u); DDIM (eta 0):
    // x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, with x0 replaced by the patch.
    let eps_both = eps.seen.unwrap();
    let (ec, eu) = (
        eps_both.narrow(0, 0, 2).unwrap(),
        eps_both.narrow(0, 2, 2).unwrap(),
    );
    let guided = (&eu + ((ec - &eu).unwrap() * 2.0).unwrap()).unwrap();
    let ts = model.scheduler.timesteps(5);
    let t_prev = ts[step as usize + 1];
    let a_prev = model.scheduler.alphas_cumprod[t_prev];
    let expected = ((patched_x0 * a_prev.sqrt()).unwrap()
        + (guided * (1.0 - a_prev).sqrt()).unwrap())
    .unwrap();
    let got = next_latent.seen.unwrap();
    let max_diff = (got - expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        max_diff < 1e-5,
        "next latent differs from the DDIM formula by {max_diff}"
    );
    assert!(latent_at_step.seen.is_some());
}
