//! See ARCHITECTURE.md.

pub mod tokens;
