//! Loading GPT-2 weights from the files people have: a Hugging Face folder
//! (`config.json` + `model.safetensors`) or a Coconut training checkpoint (a PyTorch
//! zip-pickle state dict as facebookresearch/coconut saves it), and saving the built-in
//! reasoner in the Hugging Face layout so the same loader reads it back.
//!
//! Every key is checked before the model is built, so a wrong file fails with the list of
//! missing / unexpected tensors and every wrong shape, not with the first lookup that fails.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::gpt2::{Gpt2, Gpt2Config};
use crate::error::IoContext;
use crate::{Error, Result};

/// A loaded model with what it was read from (for the run manifest).
#[derive(Debug, Clone)]
pub struct LoadedGpt2 {
    pub model: Gpt2,
    pub config: Gpt2Config,
    /// The files the weights came from (hash them for provenance).
    pub weight_files: Vec<PathBuf>,
}

fn weights_error(path: &Path, detail: impl Into<String>) -> Error {
    Error::Weights {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Reads the `config.json` of a model folder.
pub fn read_config(dir: &Path) -> Result<Gpt2Config> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).at(&config_path)?;
    serde_json::from_str(&text).map_err(|e| Error::BadFile {
        path: config_path,
        detail: format!("not a GPT-2 config.json: {e}"),
    })
}

/// Reads a Hugging Face GPT-2 folder: `config.json` and `model.safetensors`. Keys may carry
/// the `transformer.` prefix (GPT2LMHeadModel) or not (the original `gpt2` upload).
pub fn load_hf_gpt2(dir: impl AsRef<Path>, device: &Device) -> Result<LoadedGpt2> {
    let dir = dir.as_ref();
    let config = read_config(dir)?;
    let weights = dir.join("model.safetensors");
    if !weights.exists() {
        return Err(weights_error(
            &weights,
            "missing; the folder needs config.json and model.safetensors (convert .bin \
             checkpoints to safetensors first)",
        ));
    }
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
        .map_err(|e| weights_error(&weights, format!("not a readable safetensors file: {e}")))?;
    let tensors = normalize_keys(tensors, "", &weights)?;
    build(config, tensors, &weights, device, vec![weights.clone()])
}

/// Reads a Coconut checkpoint (`torch.save(model.state_dict())` of the reference code):
/// GPT-2 keys under `base_causallm.`, `embedding.weight` an alias of the token embedding,
/// the latent tokens as extra embedding rows. The config is read from the tensor shapes;
/// `n_head` cannot be, so it defaults to `n_embd / 64` (GPT-2's head size) unless given.
pub fn load_coconut(
    path: impl AsRef<Path>,
    n_head: Option<usize>,
    device: &Device,
) -> Result<LoadedGpt2> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such checkpoint"),
        ));
    }
    let tensors: HashMap<String, Tensor> = candle_core::pickle::read_all(path)
        .map_err(|e| weights_error(path, format!("not a PyTorch zip-pickle state dict: {e}")))?
        .into_iter()
        .collect();
    let tensors = normalize_keys(tensors, "base_causallm.", path)?;
    let config = infer_config(&tensors, n_head, path)?;
    build(config, tensors, path, device, vec![path.to_path_buf()])
}

/// Saves the model's variables as `config.json` + `model.safetensors` in `dir`, the layout
/// `load_hf_gpt2` reads.
pub fn save_hf_gpt2(
    dir: impl AsRef<Path>,
    config: &Gpt2Config,
    varmap: &candle_nn::VarMap,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).at(dir)?;
    let weights = dir.join("model.safetensors");
    let tmp = dir.join("model.safetensors.tmp");
    varmap.save(&tmp)?;
    std::fs::rename(&tmp, &weights).at(&weights)?;
    let config_path = dir.join("config.json");
    let tmp = dir.join("config.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(config)?).at(&tmp)?;
    std::fs::rename(&tmp, &config_path).at(&config_path)
}

/// Keys as our model names them (`transformer.*`), with aliases and buffers removed:
/// wrapper prefixes (`module.`, `_orig_mod.`) and `prefix` are stripped first; `lm_head.weight` (tied to wte), `embedding.weight` (Coconut's
/// alias) and the attention mask buffers (`attn.bias`, `attn.masked_bias`) carry no weights
/// of their own, but an alias must have the token embedding's shape.
fn normalize_keys(
    tensors: HashMap<String, Tensor>,
    prefix: &str,
    path: &Path,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let mut aliases = Vec::new();
    for (key, tensor) in tensors {
        // Wrappers of the training run: DistributedDataParallel, torch.compile.
        let key = ["module.", "_orig_mod."].iter().fold(key, |k, w| {
            k.strip_prefix(w).map(str::to_string).unwrap_or(k)
        });
        let key = match key.strip_prefix(prefix) {
            Some(k) => k.to_string(),
            None if key == "embedding.weight" => {
                aliases.push((key, tensor));
                continue;
            }
            None => key,
        };
        let key = if key.starts_with("transformer.") || key == "lm_head.weight" {
            key
        } else {
            format!("transformer.{key}")
        };
        if key.ends_with(".attn.bias") || key.ends_with(".attn.masked_bias") {
            continue;
        }
        if key == "lm_head.weight" {
            aliases.push((key, tensor));
            continue;
        }
        out.insert(key, tensor);
    }
    if let Some(wte) = out.get("transformer.wte.weight") {
        for (key, alias) in aliases {
            if alias.dims() != wte.dims() {
                return Err(weights_error(
                    path,
                    format!(
                        "`{key}` has shape {:?} but the token embedding has {:?}; only tied \
                         output embeddings are supported",
                        alias.dims(),
                        wte.dims()
                    ),
                ));
            }
        }
    }
    Ok(out)
}

fn dims2(tensors: &HashMap<String, Tensor>, key: &str, path: &Path) -> Result<(usize, usize)> {
    let t = tensors
        .get(key)
        .ok_or_else(|| weights_error(path, format!("missing tensor `{key}`")))?;
    t.dims2().map_err(|_| {
        weights_error(
            path,
            format!("`{key}` has shape {:?}, expected 2 dims", t.dims()),
        )
    })
}

fn infer_config(
    tensors: &HashMap<String, Tensor>,
    n_head: Option<usize>,
    path: &Path,
) -> Result<Gpt2Config> {
    let (vocab_size, n_embd) = dims2(tensors, "transformer.wte.weight", path)?;
    let (n_positions, _) = dims2(tensors, "transformer.wpe.weight", path)?;
    let n_layer = (0..)
        .take_while(|i| tensors.contains_key(&format!("transformer.h.{i}.ln_1.weight")))
        .count();
    let n_head = n_head.unwrap_or((n_embd / 64).max(1));
    if !n_embd.is_multiple_of(n_head) {
        return Err(weights_error(
            path,
            format!("n_embd {n_embd} is not a multiple of n_head {n_head}"),
        ));
    }
    Ok(Gpt2Config {
        n_embd,
        n_layer,
        n_head,
        n_positions,
        vocab_size,
        layer_norm_epsilon: 1e-5,
    })
}

/// Every tensor the model reads, with its shape.
pub fn expected_shapes(config: &Gpt2Config) -> BTreeMap<String, Vec<usize>> {
    let (d, v, p) = (config.n_embd, config.vocab_size, config.n_positions);
    let mut shapes = BTreeMap::new();
    shapes.insert("transformer.wte.weight".to_string(), vec![v, d]);
    shapes.insert("transformer.wpe.weight".to_string(), vec![p, d]);
    shapes.insert("transformer.ln_f.weight".to_string(), vec![d]);
    shapes.insert("transformer.ln_f.bias".to_string(), vec![d]);
    for i in 0..config.n_layer {
        let h = format!("transformer.h.{i}");
        for (name, shape) in [
            ("ln_1.weight", vec![d]),
            ("ln_1.bias", vec![d]),
            ("attn.c_attn.weight", vec![d, 3 * d]),
            ("attn.c_attn.bias", vec![3 * d]),
            ("attn.c_proj.weight", vec![d, d]),
            ("attn.c_proj.bias", vec![d]),
            ("ln_2.weight", vec![d]),
            ("ln_2.bias", vec![d]),
            ("mlp.c_fc.weight", vec![d, 4 * d]),
            ("mlp.c_fc.bias", vec![4 * d]),
            ("mlp.c_proj.weight", vec![4 * d, d]),
            ("mlp.c_proj.bias", vec![d]),
        ] {
            shapes.insert(format!("{h}.{name}"), shape);
        }
    }
    shapes
}

/// Lists every missing key, unexpected key and wrong shape at once.
fn check_keys(config: &Gpt2Config, tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let expected = expected_shapes(config);
    let missing: Vec<&str> = expected
        .keys()
        .filter(|k| !tensors.contains_key(*k))
        .map(String::as_str)
        .collect();
    let mut unexpected: Vec<&str> = tensors
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .map(String::as_str)
        .collect();
    unexpected.sort_unstable();
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|(k, shape)| {
            let t = tensors.get(k)?;
            (t.dims() != shape.as_slice())
                .then(|| format!("`{k}` has shape {:?}, expected {:?}", t.dims(), shape))
        })
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing tensors: {}", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        problems.push(format!("unexpected tensors: {}", unexpected.join(", ")));
    }
    problems.extend(wrong);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(weights_error(
            path,
            format!(
                "does not match a GPT-2 with n_layer={}, n_embd={}, vocab_size={}, n_positions={}: {}",
                config.n_layer,
                config.n_embd,
                config.vocab_size,
                config.n_positions,
                problems.join("; ")
            ),
        ))
    }
}

fn build(
    config: Gpt2Config,
    tensors: HashMap<String, Tensor>,
    path: &Path,
    device: &Device,
    weight_files: Vec<PathBuf>,
) -> Result<LoadedGpt2> {
    check_keys(&config, &tensors, path)?;
    crate::finite::check_weights(path, &tensors)?;
    let tensors = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.to_device(device)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let model = Gpt2::new(&config, vb).map_err(|e| weights_error(path, e.to_string()))?;
    Ok(LoadedGpt2 {
        model,
        config,
        weight_files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reasoner::coconut::{generate_latent, LatentTokens};
    use crate::sites::Hooks;
    use candle_core::IndexOp;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/reasoner")
            .join(name)
    }

    fn npy(name: &str) -> Tensor {
        Tensor::read_npy(fixture(name))
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn hf_gpt2_matches_the_numpy_reference() {
        let loaded = load_hf_gpt2(fixture("hf_gpt2_tiny"), &Device::Cpu).unwrap();
        assert_eq!(loaded.config.n_layer, 2);
        let ids = npy("hf_gpt2_tiny_ids.npy")
            .to_dtype(DType::U32)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut cache = loaded.model.new_cache();
        let out = loaded
            .model
            .forward(&ids, 0, &mut cache, &mut Hooks::none())
            .unwrap();
        // Values computed by scripts/make_reasoner_fixtures.py (numpy, float64).
        assert!(max_diff(&out.hidden.i(0).unwrap(), &npy("hf_gpt2_tiny_hidden.npy")) < 1e-4);
        assert!(max_diff(&out.logits.i(0).unwrap(), &npy("hf_gpt2_tiny_logits.npy")) < 1e-4);
    }

    #[test]
    fn coconut_checkpoint_latent_mode_matches_the_numpy_reference() {
        let loaded = load_coconut(fixture("coconut_tiny.pth"), Some(2), &Device::Cpu).unwrap();
        assert_eq!(loaded.config.vocab_size, 16);
        assert_eq!(loaded.config.n_positions, 24);
        let prompt: Vec<u32> = npy("coconut_tiny_prompt.npy")
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec1()
            .unwrap();
        let tokens = LatentTokens {
            bot: 13,
            eot: 14,
            eos: 0,
            thought: 15,
        };
        let gen =
            generate_latent(&loaded.model, &prompt, 3, tokens, 1, &mut Hooks::none()).unwrap();
        let thoughts = Tensor::stack(&gen.thoughts, 0).unwrap();
        assert!(max_diff(&thoughts, &npy("coconut_tiny_thoughts.npy")) < 1e-4);
        let want = npy("coconut_tiny_logits.npy");
        let last = want.dim(0).unwrap() - 1;
        assert!(max_diff(&gen.answer_logits[0], &want.i(last).unwrap()) < 1e-4);
    }

    #[test]
    fn an_infinite_weight_is_refused_naming_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let src = load_hf_gpt2(fixture("hf_gpt2_tiny"), &Device::Cpu).unwrap();
        let mut tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load(fixture("hf_gpt2_tiny/model.safetensors"), &Device::Cpu)
                .unwrap();
        let w = &tensors["ln_f.weight"];
        let inf = w.ones_like().unwrap().affine(f64::INFINITY, 0.0).unwrap();
        tensors.insert("ln_f.weight".into(), inf);
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_string(&src.config).unwrap(),
        )
        .unwrap();
        let Err(err) = load_hf_gpt2(dir.path(), &Device::Cpu) else {
            panic!("infinite weights must not load");
        };
        let msg = err.to_string();
        assert!(msg.contains("model.safetensors"), "{msg}");
        assert!(msg.contains("ln_f.weight` holds inf"), "{msg}");
    }

    #[test]
    fn wrong_checkpoints_list_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let src = load_hf_gpt2(fixture("hf_gpt2_tiny"), &Device::Cpu).unwrap();
        let mut tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load(fixture("hf_gpt2_tiny/model.safetensors"), &Device::Cpu)
                .unwrap();
        tensors.remove("h.1.mlp.c_fc.bias");
        tensors.remove("ln_f.weight");
        tensors.insert(
            "h.0.attn.extra".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        // A Conv1D weight stored [out, in] as nn.Linear would store it.
        let w = tensors["h.0.mlp.c_fc.weight"]
            .t()
            .unwrap()
            .contiguous()
            .unwrap();
        tensors.insert("h.0.mlp.c_fc.weight".into(), w);
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_string(&src.config).unwrap(),
        )
        .unwrap();
        let msg = load_hf_gpt2(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("model.safetensors"), "{msg}");
        assert!(
            msg.contains("missing tensors: transformer.h.1.mlp.c_fc.bias, transformer.ln_f.weight"),
            "{msg}"
        );
        assert!(
            msg.contains("unexpected tensors: transformer.h.0.attn.extra"),
            "{msg}"
        );
        assert!(
            msg.contains("`transformer.h.0.mlp.c_fc.weight` has shape [32, 8], expected [8, 32]"),
            "{msg}"
        );
    }

    #[test]
    fn saved_models_load_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let config = Gpt2Config {
            n_embd: 16,
            n_layer: 1,
            n_head: 2,
            n_positions: 8,
            vocab_size: 10,
            layer_norm_epsilon: 1e-5,
        };
        let varmap = crate::reasoner::gpt2::random_varmap(&config, 1, &Device::Cpu).unwrap();
        save_hf_gpt2(dir.path(), &config, &varmap).unwrap();
        let loaded = load_hf_gpt2(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(loaded.config, config);
        let original = Gpt2::new(
            &config,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let ids = Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu).unwrap();
        let a = original
            .forward(&ids, 0, &mut original.new_cache(), &mut Hooks::none())
            .unwrap();
        let b = loaded
            .model
            .forward(&ids, 0, &mut loaded.model.new_cache(), &mut Hooks::none())
            .unwrap();
        assert_eq!(max_diff(&a.logits, &b.logits), 0.0);
    }

    #[test]
    fn wrapper_prefixes_aliases_and_buffers_are_normalized() {
        let t = |r: usize| Tensor::zeros((r, 4), DType::F32, &Device::Cpu).unwrap();
        let raw: HashMap<String, Tensor> = [
            ("module.base_causallm.transformer.wte.weight", t(7)),
            ("module.base_causallm.lm_head.weight", t(7)),
            ("module.embedding.weight", t(7)),
            ("module.base_causallm.transformer.h.0.attn.bias", t(2)),
            (
                "module.base_causallm.transformer.h.0.attn.masked_bias",
                t(1),
            ),
            ("module.base_causallm.transformer.h.0.ln_1.weight", t(1)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let out = normalize_keys(raw, "base_causallm.", Path::new("ckpt")).unwrap();
        let mut keys: Vec<&str> = out.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["transformer.h.0.ln_1.weight", "transformer.wte.weight"]
        );
        let untied: HashMap<String, Tensor> = [
            ("transformer.wte.weight".to_string(), t(7)),
            ("lm_head.weight".to_string(), t(5)),
        ]
        .into();
        let msg = normalize_keys(untied, "", Path::new("m"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("lm_head.weight") && msg.contains("[5, 4]"),
            "{msg}"
        );
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let msg = load_hf_gpt2(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("config.json"), "{msg}");
        let msg = load_coconut(dir.path().join("checkpoint_5"), None, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("checkpoint_5"), "{msg}");
    }
}
