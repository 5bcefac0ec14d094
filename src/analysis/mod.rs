//! See ARCHITECTURE.md.

pub mod pca;
pub mod knn;
pub mod quality;
pub mod umap;
