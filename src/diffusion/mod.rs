//! The tiny latent diffusion model: a KL autoencoder (32x32x3 <-> 8x8x4), a class-conditional
//! UNet with classifier-free guidance, the DDPM/DDIM schedule, a pixel-space classifier for
//! evaluation, training loops and the evaluation report. See ARCHITECTURE.md.

pub mod blocks;
pub mod classifier;
pub mod eval;
pub mod pipeline;
pub mod scheduler;
pub mod train;
pub mod unet;
pub mod vae;

pub use pipeline::{DiffusionConfig, DiffusionModel, SampleOptions};
