//! Analyses on recorded latents. Plain matrices in, plain results out: nothing here knows
//! candle, and only `store` touches run folders. See ARCHITECTURE.md.

pub mod bfs;
pub mod cka;
pub mod cv;
pub mod design;
pub mod infoloss;
pub mod knn;
pub mod logistic;
pub mod metrics;
pub mod mi;
pub mod pca;
pub mod probe;
pub mod probe_bench;
pub mod quality;
pub mod ridge;
pub mod rowspace;
pub mod ssim;
pub mod umap;
