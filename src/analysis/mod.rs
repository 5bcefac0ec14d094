//! See ARCHITECTURE.md.

pub mod cka;
pub mod infoloss;
pub mod mi;
pub mod ssim;
