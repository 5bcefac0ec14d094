//! latentlens: record the latents of generative models at named hook sites, store them as
//! Parquet run folders, and analyse them (probes, PCA/UMAP, information loss, latent BFS).
//!
//! Read ARCHITECTURE.md for the map of modules and the invariants between them.

pub mod analysis;
pub mod cli;
pub mod data;
pub mod diffusion;
pub mod error;
pub mod reasoner;
pub mod record;
pub mod rng;
pub mod sd;
pub mod sites;
pub mod steps;
pub mod store;
pub mod taps;

pub use error::{Error, Result};
