//! Where a reasoner comes from: the built-in model's folder, a Hugging Face GPT-2 folder,
//! or a Coconut training checkpoint with its GPT-2 tokenizer; and the format its tokens
//! follow. Every command and experiment that runs a reasoner loads it here.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::bpe::Bpe;
use super::checkpoint::{load_coconut, load_hf_gpt2, LoadedGpt2};
use super::format::{BuiltinFormat, QuestionFormat};
use super::gpt2_format::CoconutGpt2Format;
use crate::{Error, Result};

/// Where the shipped reasoners live, one folder per method.
pub const BUILTIN_REASONER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/reasoner");

/// Where a reasoner comes from: the built-in model's folder, a Hugging Face GPT-2 folder, or
/// a Coconut training checkpoint with the GPT-2 tokenizer it was trained with.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReasonerSource {
    /// Model folder (config.json + model.safetensors): a built-in reasoner, or a Hugging
    /// Face GPT-2 trained on ProsQA (then give --tokenizer, or keep vocab.json + merges.txt
    /// in the folder). Default: the shipped Coconut model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A Coconut checkpoint as the reference code saves it (PyTorch state dict, keys under
    /// `base_causallm.`). Needs --tokenizer.
    #[arg(long, conflicts_with = "model")]
    pub checkpoint: Option<PathBuf>,
    /// GPT-2 tokenizer folder (vocab.json + merges.txt) for --checkpoint or a GPT-2 --model.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

/// A model and the format its tokens follow.
pub struct Reasoner {
    pub loaded: LoadedGpt2,
    pub format: Box<dyn QuestionFormat>,
    /// What the model was loaded from (for manifests and messages).
    pub source: PathBuf,
}

impl ReasonerSource {
    pub fn model_dir(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(|| {
            Path::new(BUILTIN_REASONER_DIR)
                .join("coconut")
                .join("model")
        })
    }

    pub fn load(&self, device: &Device) -> Result<Reasoner> {
        if let Some(ckpt) = &self.checkpoint {
            let tokenizer = self.tokenizer.as_ref().ok_or_else(|| {
                Error::Invalid(format!(
                    "{} is a Coconut checkpoint: give --tokenizer DIR with the GPT-2 \
                     vocab.json and merges.txt it was trained with",
                    ckpt.display()
                ))
            })?;
            let loaded = load_coconut(ckpt, None, device)?;
            let format = gpt2_format(tokenizer, &loaded, ckpt)?;
            return Ok(Reasoner {
                loaded,
                format,
                source: ckpt.clone(),
            });
        }
        let dir = self.model_dir();
        let loaded = load_hf_gpt2(&dir, device).map_err(|e| {
            Error::Invalid(format!(
                "loading the reasoner from {} (train one with `latentlens train reasoner`): {e}",
                dir.display()
            ))
        })?;
        let tokenizer = self
            .tokenizer
            .clone()
            .or_else(|| Some(dir.clone()).filter(|d| d.join("vocab.json").exists()));
        let format: Box<dyn QuestionFormat> = match tokenizer {
            Some(t) => gpt2_format(&t, &loaded, &dir.join("model.safetensors"))?,
            None => builtin_format(&loaded, &dir)?,
        };
        Ok(Reasoner {
            loaded,
            format,
            source: dir,
        })
    }
}

fn gpt2_format(
    tokenizer: &Path,
    loaded: &LoadedGpt2,
    weights: &Path,
) -> Result<Box<dyn QuestionFormat>> {
    let format = CoconutGpt2Format::new(Bpe::from_dir(tokenizer)?)?;
    format
        .bpe()
        .check_vocab(tokenizer, loaded.config.vocab_size, weights)?;
    Ok(Box::new(format))
}

fn builtin_format(loaded: &LoadedGpt2, dir: &Path) -> Result<Box<dyn QuestionFormat>> {
    let format = BuiltinFormat::default();
    let want = format.vocab().len();
    if loaded.config.vocab_size != want {
        return Err(crate::Error::VocabMismatch {
            tokenizer: PathBuf::from("the built-in ProsQA vocabulary"),
            tokens: want,
            weights: dir.join("model.safetensors"),
            rows: loaded.config.vocab_size,
            hint: "a GPT-2 checkpoint needs its tokenizer: give --tokenizer DIR (vocab.json + \
                   merges.txt)"
                .into(),
        });
    }
    Ok(Box::new(format))
}
