//! See ARCHITECTURE.md.

pub mod knn;
pub mod pca;
pub mod quality;
pub mod umap;
