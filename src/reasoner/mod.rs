//! See ARCHITECTURE.md.

pub mod checkpoint;
pub mod coconut;
pub mod gpt2;
pub mod tokens;
pub mod train;
