//! Datasets with known ground truth: procedurally drawn shapes (diffusion) and
//! ProsQA-like graphs (reasoner).

pub mod prosqa;
pub mod shapes;
