//! Stable Diffusion 1.x / 2.x from a local diffusers folder: our own hookable UNet and VAE,
//! the CLIP text encoder and tokenizer, the samplers, and the pipeline that runs them.
//!
//! Everything is read from the folder's configs (nothing is downloaded) and computed in f32
//! whatever the weights' dtype (f32, f16, bf16). Module and key names are diffusers': a
//! VarBuilder path is a checkpoint key, a site name is a diffusers module path
//! (`unet.down_blocks.1`, `unet.mid_block`, `vae.decoder.out`, ...). Parity with diffusers
//! and transformers is tested on tiny random pipelines made by `scripts/make_sd_fixtures.py`
//! (`tests/sd.rs`).

pub mod clip;
pub mod config;
pub mod load;
pub mod nn;
pub mod pipeline;
pub mod scheduler;
pub mod tokenizer;
pub mod unet;
pub mod vae;

pub use pipeline::{Generation, SdOptions, StableDiffusion};
pub use scheduler::{Schedule, SchedulerConfig, SchedulerKind};
