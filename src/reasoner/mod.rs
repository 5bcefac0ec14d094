//! See ARCHITECTURE.md.

pub mod coconut;
pub mod gpt2;
pub mod tokens;
