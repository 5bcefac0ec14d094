//! The configs of a diffusers Stable Diffusion folder, read from the JSON files alone and
//! resolved into what our modules use.
//!
//! diffusers configs carry many fields; each one is either read, checked to hold the value we
//! implement (an unsupported value is an error that names the field and the value), or known
//! to be irrelevant to inference (dropout, `force_upcast`, ...). Unknown fields are ignored,
//! as diffusers itself does.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{Error, Result};

/// One config file's fields with typed, defaulted reads whose errors name file and field.
pub(crate) struct Fields {
    path: PathBuf,
    map: Map<String, Value>,
}

impl Fields {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            detail: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Ok(Self {
                path: path.to_path_buf(),
                map,
            }),
            Ok(_) => Err(Self::bad_at(path, "not a JSON object".into())),
            Err(e) => Err(Self::bad_at(path, format!("not valid JSON: {e}"))),
        }
    }

    fn bad_at(path: &Path, detail: String) -> Error {
        Error::BadFile {
            path: path.to_path_buf(),
            detail,
        }
    }

    pub fn bad(&self, detail: String) -> Error {
        Self::bad_at(&self.path, detail)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of `key`, `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn typed<T>(
        &self,
        key: &str,
        what: &str,
        conv: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => conv(v)
                .map(Some)
                .ok_or_else(|| self.bad(format!("`{key}` = {v} is not {what}"))),
        }
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self
            .typed(key, "a non-negative integer", |v| {
                v.as_u64().map(|n| n as usize)
            })?
            .unwrap_or(default))
    }

    pub fn usize_req(&self, key: &str) -> Result<usize> {
        self.typed(key, "a non-negative integer", |v| {
            v.as_u64().map(|n| n as usize)
        })?
        .ok_or_else(|| self.bad(format!("`{key}` is missing")))
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self
            .typed(key, "a number", Value::as_f64)?
            .unwrap_or(default))
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        Ok(self
            .typed(key, "true or false", Value::as_bool)?
            .unwrap_or(default))
    }

    pub fn str_or(&self, key: &str, default: &str) -> Result<String> {
        Ok(self
            .typed(key, "a string", |v| v.as_str().map(str::to_string))?
            .unwrap_or_else(|| default.to_string()))
    }

    pub fn usize_list(&self, key: &str) -> Result<Vec<usize>> {
        self.typed(key, "a list of integers", |v| {
            v.as_array()?
                .iter()
                .map(|x| x.as_u64().map(|n| n as usize))
                .collect()
        })?
        .ok_or_else(|| self.bad(format!("`{key}` is missing")))
    }

    pub fn str_list(&self, key: &str) -> Result<Vec<String>> {
        self.typed(key, "a list of strings", |v| {
            v.as_array()?
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect()
        })?
        .ok_or_else(|| self.bad(format!("`{key}` is missing")))
    }

    /// An int for every block, or one int for all `n` blocks.
    pub fn per_block(&self, key: &str, n: usize, default: usize) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Ok(vec![default; n]),
            Some(Value::Number(x)) => match x.as_u64() {
                Some(v) => Ok(vec![v as usize; n]),
                None => Err(self.bad(format!("`{key}` = {x} is not a positive integer"))),
            },
            Some(_) => {
                let v = self.usize_list(key)?;
                if v.len() != n {
                    return Err(self.bad(format!("`{key}` has {} entries for {n} blocks", v.len())));
                }
                Ok(v)
            }
        }
    }

    /// Fails unless `key` is absent, null, or one of `allowed` (JSON values).
    pub fn only(&self, key: &str, allowed: &[Value]) -> Result<()> {
        match self.get(key) {
            None => Ok(()),
            Some(v) if allowed.contains(v) => Ok(()),
            Some(v) => {
                let allowed: Vec<String> = allowed.iter().map(Value::to_string).collect();
                let allowed = if allowed.is_empty() {
                    "null".to_string()
                } else {
                    allowed.join(" or ")
                };
                Err(self.bad(format!(
                    "`{key}` = {v} is not supported (latentlens implements {allowed})"
                )))
            }
        }
    }
}

fn json(v: impl Into<Value>) -> Value {
    v.into()
}

/// UNet2DConditionModel, as SD 1.x / 2.x configure it.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    /// Per down block: whether it has cross-attention (`CrossAttnDownBlock2D`).
    pub down_cross: Vec<bool>,
    /// Per up block, in up order: whether it has cross-attention (`CrossAttnUpBlock2D`).
    pub up_cross: Vec<bool>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    /// Heads per down block (SD's `attention_head_dim`, which diffusers reads as the number
    /// of heads, not their width).
    pub heads: Vec<usize>,
    pub use_linear_projection: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub sample_size: usize,
}

impl UNetConfig {
    pub(crate) fn from_fields(f: &Fields) -> Result<Self> {
        let class = f.str_or("_class_name", "UNet2DConditionModel")?;
        if class != "UNet2DConditionModel" {
            return Err(f.bad(format!(
                "`_class_name` = \"{class}\": latentlens reads UNet2DConditionModel (Stable Diffusion 1.x / 2.x)"
            )));
        }
        let block_out_channels = f.usize_list("block_out_channels")?;
        let n = block_out_channels.len();
        if n == 0 {
            return Err(f.bad("`block_out_channels` is empty".into()));
        }
        let down = f.str_list("down_block_types")?;
        let up = f.str_list("up_block_types")?;
        if down.len() != n || up.len() != n {
            return Err(f.bad(format!(
                "{} down_block_types and {} up_block_types for {n} block_out_channels",
                down.len(),
                up.len()
            )));
        }
        let kind = |key: &str, t: &str, cross: &str, plain: &str| -> Result<bool> {
            if t == cross {
                Ok(true)
            } else if t == plain {
                Ok(false)
            } else {
                Err(f.bad(format!(
                    "`{key}` has \"{t}\", which is not supported (latentlens implements {cross} and {plain})"
                )))
            }
        };
        let down_cross = down
            .iter()
            .map(|t| kind("down_block_types", t, "CrossAttnDownBlock2D", "DownBlock2D"))
            .collect::<Result<Vec<_>>>()?;
        let up_cross = up
            .iter()
            .map(|t| kind("up_block_types", t, "CrossAttnUpBlock2D", "UpBlock2D"))
            .collect::<Result<Vec<_>>>()?;
        f.only("mid_block_type", &[json("UNetMidBlock2DCrossAttn")])?;
        f.only("act_fn", &[json("silu")])?;
        f.only("center_input_sample", &[json(false)])?;
        f.only("downsample_padding", &[json(1)])?;
        f.only("mid_block_scale_factor", &[json(1), json(1.0)])?;
        f.only("resnet_out_scale_factor", &[json(1), json(1.0)])?;
        f.only("resnet_time_scale_shift", &[json("default")])?;
        f.only("resnet_skip_time_act", &[json(false)])?;
        f.only("time_embedding_type", &[json("positional")])?;
        f.only("conv_in_kernel", &[json(3)])?;
        f.only("conv_out_kernel", &[json(3)])?;
        f.only("transformer_layers_per_block", &[json(1)])?;
        f.only("only_cross_attention", &[json(false)])?;
        f.only("dual_cross_attention", &[json(false)])?;
        f.only("attention_type", &[json("default")])?;
        f.only("class_embeddings_concat", &[json(false)])?;
        for key in [
            "num_attention_heads",
            "class_embed_type",
            "num_class_embeds",
            "addition_embed_type",
            "encoder_hid_dim",
            "encoder_hid_dim_type",
            "time_cond_proj_dim",
            "time_embedding_dim",
            "time_embedding_act_fn",
            "timestep_post_act",
            "projection_class_embeddings_input_dim",
            "cross_attention_norm",
            "mid_block_only_cross_attention",
            "reverse_transformer_layers_per_block",
        ] {
            f.only(key, &[])?;
        }
        let heads = f.per_block("attention_head_dim", n, 8)?;
        for (i, (&c, &h)) in block_out_channels.iter().zip(&heads).enumerate() {
            if h == 0 || c % h != 0 {
                return Err(f.bad(format!(
                    "block {i} has {c} channels, which {h} attention heads (`attention_head_dim`) do not divide"
                )));
            }
        }
        let norm_num_groups = f.usize_or("norm_num_groups", 32)?;
        if let Some(c) = block_out_channels
            .iter()
            .find(|&&c| norm_num_groups == 0 || c % norm_num_groups != 0)
        {
            return Err(f.bad(format!(
                "`norm_num_groups` = {norm_num_groups} does not divide {c} channels"
            )));
        }
        Ok(Self {
            in_channels: f.usize_or("in_channels", 4)?,
            out_channels: f.usize_or("out_channels", 4)?,
            down_cross,
            up_cross,
            layers_per_block: f.usize_or("layers_per_block", 2)?,
            norm_num_groups,
            norm_eps: f.f64_or("norm_eps", 1e-5)?,
            cross_attention_dim: f.usize_req("cross_attention_dim")?,
            heads,
            use_linear_projection: f.bool_or("use_linear_projection", false)?,
            flip_sin_to_cos: f.bool_or("flip_sin_to_cos", true)?,
            freq_shift: f.f64_or("freq_shift", 0.0)?,
            sample_size: f.usize_or("sample_size", 64)?,
            block_out_channels,
        })
    }

    /// Latent side / side of the smallest feature map.
    pub fn downsample(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// AutoencoderKL.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
    pub sample_size: usize,
}

impl VaeConfig {
    pub(crate) fn from_fields(f: &Fields) -> Result<Self> {
        let class = f.str_or("_class_name", "AutoencoderKL")?;
        if class != "AutoencoderKL" {
            return Err(f.bad(format!(
                "`_class_name` = \"{class}\": latentlens reads AutoencoderKL"
            )));
        }
        let block_out_channels = f.usize_list("block_out_channels")?;
        let n = block_out_channels.len();
        if n == 0 {
            return Err(f.bad("`block_out_channels` is empty".into()));
        }
        for (key, want) in [
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ] {
            let types = f.str_list(key)?;
            if types.len() != n {
                return Err(f.bad(format!(
                    "`{key}` has {} entries for {n} block_out_channels",
                    types.len()
                )));
            }
            if let Some(t) = types.iter().find(|t| *t != want) {
                return Err(f.bad(format!(
                    "`{key}` has \"{t}\", which is not supported (latentlens implements {want})"
                )));
            }
        }
        f.only("act_fn", &[json("silu")])?;
        f.only("shift_factor", &[json(0), json(0.0)])?;
        f.only("latents_mean", &[])?;
        f.only("latents_std", &[])?;
        let norm_num_groups = f.usize_or("norm_num_groups", 32)?;
        if let Some(c) = block_out_channels
            .iter()
            .find(|&&c| norm_num_groups == 0 || c % norm_num_groups != 0)
        {
            return Err(f.bad(format!(
                "`norm_num_groups` = {norm_num_groups} does not divide {c} channels"
            )));
        }
        Ok(Self {
            in_channels: f.usize_or("in_channels", 3)?,
            out_channels: f.usize_or("out_channels", 3)?,
            latent_channels: f.usize_or("latent_channels", 4)?,
            layers_per_block: f.usize_or("layers_per_block", 1)?,
            norm_num_groups,
            scaling_factor: f.f64_or("scaling_factor", 0.18215)?,
            use_quant_conv: f.bool_or("use_quant_conv", true)?,
            use_post_quant_conv: f.bool_or("use_post_quant_conv", true)?,
            mid_block_add_attention: f.bool_or("mid_block_add_attention", true)?,
            sample_size: f.usize_or("sample_size", 512)?,
            block_out_channels,
        })
    }

    /// Image side / latent side.
    pub fn downsample(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// The MLP activation of the CLIP text encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (SD 1.x, OpenAI CLIP).
    QuickGelu,
    /// Exact (erf) GELU (SD 2.x, OpenCLIP).
    Gelu,
}

/// CLIPTextModel.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub activation: Activation,
    pub layer_norm_eps: f64,
}

impl TextConfig {
    pub(crate) fn from_fields(f: &Fields) -> Result<Self> {
        if let Some(arch) = f.get("architectures") {
            let ok = arch
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "CLIPTextModel"));
            if !ok {
                return Err(f.bad(format!(
                    "`architectures` = {arch}: latentlens reads CLIPTextModel text encoders"
                )));
            }
        }
        let act = f.str_or("hidden_act", "quick_gelu")?;
        let activation = match act.as_str() {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            other => {
                return Err(f.bad(format!(
                    "`hidden_act` = \"{other}\" is not supported (latentlens implements \"quick_gelu\" and \"gelu\")"
                )))
            }
        };
        let hidden_size = f.usize_req("hidden_size")?;
        let num_attention_heads = f.usize_req("num_attention_heads")?;
        if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
            return Err(f.bad(format!(
                "`num_attention_heads` = {num_attention_heads} does not divide `hidden_size` = {hidden_size}"
            )));
        }
        Ok(Self {
            vocab_size: f.usize_req("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize_req("intermediate_size")?,
            num_hidden_layers: f.usize_req("num_hidden_layers")?,
            num_attention_heads,
            max_position_embeddings: f.usize_or("max_position_embeddings", 77)?,
            activation,
            layer_norm_eps: f.f64_or("layer_norm_eps", 1e-5)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Fields {
        Fields::parse(Path::new("unet/config.json"), text).unwrap()
    }

    const SD15_UNET: &str = r#"{
      "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
      "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
      "cross_attention_dim": 768,
      "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
      "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
      "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
      "out_channels": 4, "sample_size": 64,
      "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    }"#;

    #[test]
    fn sd15_unet_reads_attention_head_dim_as_heads() {
        let c = UNetConfig::from_fields(&fields(SD15_UNET)).unwrap();
        assert_eq!(c.heads, vec![8; 4]);
        assert_eq!(c.down_cross, vec![true, true, true, false]);
        assert_eq!(c.up_cross, vec![false, true, true, true]);
        assert!(!c.use_linear_projection);
        assert_eq!(c.downsample(), 8);
    }

    #[test]
    fn unsupported_fields_are_named_with_their_value() {
        let text = SD15_UNET.replace(
            "\"act_fn\": \"silu\"",
            "\"act_fn\": \"silu\", \"class_embed_type\": \"timestep\"",
        );
        let err = UNetConfig::from_fields(&fields(&text))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("class_embed_type") && err.contains("\"timestep\""),
            "{err}"
        );
        let text = SD15_UNET.replace("\"DownBlock2D\"]", "\"SimpleDownBlock\"]");
        let err = UNetConfig::from_fields(&fields(&text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SimpleDownBlock"), "{err}");
        let text = SD15_UNET.replace("\"attention_head_dim\": 8", "\"attention_head_dim\": 7");
        let err = UNetConfig::from_fields(&fields(&text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("7 attention heads"), "{err}");
        let text = SD15_UNET.replace("\"act_fn\": \"silu\"", "\"act_fn\": \"gelu\"");
        let err = UNetConfig::from_fields(&fields(&text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`act_fn` = \"gelu\""), "{err}");
        assert!(err.contains("unet/config.json"), "{err}");
    }
}
