//! Reading a diffusers folder's weight files: safetensors in f32, f16 or bf16, turned into
//! f32 as each tensor is taken, with every tensor of the file accounted for.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::{Error, Result};

/// The folder layout, for messages about a missing or partial folder.
pub const LAYOUT: &str = "model_index.json, unet/{config.json, diffusion_pytorch_model.safetensors}, \
vae/{config.json, diffusion_pytorch_model.safetensors}, text_encoder/{config.json, model.safetensors}, \
tokenizer/{tokenizer.json or vocab.json + merges.txt, tokenizer_config.json}, scheduler/scheduler_config.json";

/// A file the folder must have; the error names it and the expected layout.
pub fn required(dir: &Path, rel: &str) -> Result<PathBuf> {
    let path = dir.join(rel);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::BadFile {
            path,
            detail: format!(
                "missing; a diffusers Stable Diffusion folder has {LAYOUT} (nothing is downloaded: \
                 point --model-dir at a complete local copy)"
            ),
        })
    }
}

/// The safetensors file of one component: `<stem>.safetensors`, or the `fp16` variant that
/// diffusers writes beside it. A folder with only PyTorch pickles is told to convert them.
pub fn weights_file(dir: &Path, component: &str, stem: &str) -> Result<PathBuf> {
    let folder = dir.join(component);
    for name in [
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors"),
    ] {
        let p = folder.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let pickle = folder.join(format!("{stem}.bin"));
    let hint = if pickle.is_file() {
        format!(
            "{} holds PyTorch pickles only; latentlens reads safetensors: save the pipeline again \
             with diffusers' save_pretrained(..., safe_serialization=True)",
            pickle.display()
        )
    } else {
        format!("missing; a diffusers Stable Diffusion folder has {LAYOUT}")
    };
    Err(Error::BadFile {
        path: folder.join(format!("{stem}.safetensors")),
        detail: hint,
    })
}

/// Reads one safetensors file and builds a network from it (in f32), checking that the file
/// holds exactly the tensors the network asks for, apart from names ending in one of
/// `ignored` (buffers such as CLIP's `position_ids`).
pub fn load_weights<T>(
    path: &Path,
    device: &Device,
    ignored: &[&str],
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> Result<T> {
    let bad = |detail: String| Error::Weights {
        path: path.to_path_buf(),
        detail,
    };
    let tensors = candle_core::safetensors::load(path, device).map_err(|e| {
        bad(format!(
            "not a readable safetensors file (truncated or corrupt?): {e}"
        ))
    })?;
    let used = Mutex::new(HashSet::new());
    let backend = Tracked {
        tensors: &tensors,
        used: &used,
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
    let model = build(vb).map_err(|e| bad(e.to_string()))?;
    let used = used.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut unexpected: Vec<&str> = tensors
        .keys()
        .filter(|k| !used.contains(*k) && !ignored.iter().any(|s| k.ends_with(s)))
        .map(String::as_str)
        .collect();
    if !unexpected.is_empty() {
        unexpected.sort_unstable();
        let shown = unexpected.len().min(8);
        return Err(bad(format!(
            "{} tensors the model does not use (a checkpoint of another architecture, or a config \
             that does not match it?): {}{}",
            unexpected.len(),
            unexpected[..shown].join(", "),
            if shown < unexpected.len() {
                ", ..."
            } else {
                ""
            }
        )));
    }
    Ok(model)
}

/// A tensor map that remembers which names were asked for, to find unexpected ones.
struct Tracked<'a> {
    tensors: &'a HashMap<String, Tensor>,
    used: &'a Mutex<HashSet<String>>,
}

impl SimpleBackend for Tracked<'_> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut used) = self.used.lock() {
            used.insert(name.to_string());
        }
        SimpleBackend::get(self.tensors, s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Ok(mut used) = self.used.lock() {
            used.insert(name.to_string());
        }
        SimpleBackend::get_unchecked(self.tensors, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
