//! See ARCHITECTURE.md.

pub mod cv;
pub mod design;
pub mod logistic;
pub mod metrics;
pub mod probe;
pub mod probe_bench;
pub mod ridge;
