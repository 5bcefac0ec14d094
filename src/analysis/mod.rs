//! See ARCHITECTURE.md.

pub mod cka;
pub mod ssim;
