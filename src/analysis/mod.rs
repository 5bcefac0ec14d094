//! See ARCHITECTURE.md.

pub mod pca;
