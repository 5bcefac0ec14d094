//! The continuous-thought reasoner: GPT-2 with TransformerLens-named sites (`gpt2`),
//! Coconut's latent mode (`coconut`), the built-in vocabulary and record encoding
//! (`tokens`), branching latent mode for the BFS analysis (`branch`), checkpoint loading
//! (`checkpoint`: Hugging Face GPT-2 folders, Coconut `.pth` state dicts) and the
//! curriculum trainer (`train`). See ARCHITECTURE.md.

pub mod branch;
pub mod checkpoint;
pub mod coconut;
pub mod format;
pub mod gpt2;
pub mod tokens;
pub mod train;
