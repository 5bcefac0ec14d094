//! latentlens: record the latents of generative models at named hook sites, store them as
//! Parquet run folders, and analyse them (probes, PCA/UMAP, information loss, latent BFS).
//!
//! Read ARCHITECTURE.md for the map of modules and the invariants between them.

// Only the CLI prints (ARCHITECTURE.md); it writes through `outln!`, which survives a
// closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod analysis;
pub mod audit;
#[allow(clippy::print_stderr)]
pub mod cli;
pub mod data;
pub mod diffusion;
pub mod error;
pub mod experiment;
pub mod finite;
pub mod jobs;
pub mod plots;
pub mod progress;
pub mod reasoner;
pub mod record;
pub mod report;
pub mod rng;
pub mod sd;
pub mod sites;
pub mod steps;
pub mod store;
pub mod taps;

pub use error::{Error, Result};
