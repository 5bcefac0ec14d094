//! The continuous-thought reasoner: GPT-2 with TransformerLens-named sites (`gpt2`),
//! Coconut's latent mode (`coconut`), the built-in vocabulary and record encoding
//! (`tokens`), GPT-2's BPE tokenizer and Coconut's GPT-2 question format (`bpe`,
//! `gpt2_format`), branching latent mode for the BFS analysis (`branch`), checkpoint
//! loading (`checkpoint`: Hugging Face GPT-2 folders, Coconut `.pth` state dicts), where a
//! model comes from (`source`), the curriculum trainer (`train`) and answer accuracy on a
//! ProsQA file (`eval`). See ARCHITECTURE.md.

pub mod bpe;
pub mod branch;
pub mod checkpoint;
pub mod coconut;
pub mod eval;
pub mod format;
pub mod fused;
pub mod gpt2;
pub mod gpt2_format;
pub mod source;
pub mod tokens;
pub mod train;
