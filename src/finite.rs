//! Finiteness checks: a NaN or infinity in the weights or in a recorded activation makes
//! every number downstream meaningless while looking like a result, so both are refused
//! where they first appear, naming the file and tensor, or the site, step and sample.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// The index of the first NaN or infinity in `values`.
pub fn first_non_finite(values: &[f32]) -> Option<usize> {
    values.iter().position(|v| !v.is_finite())
}

/// Refuses a weights file whose floating-point tensors hold a NaN or infinity; the error
/// names the file, the tensor (the first in name order) and the first bad element.
pub fn check_weights(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = &tensors[name];
        if !t.dtype().is_float() {
            continue;
        }
        let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        if let Some(i) = first_non_finite(&values) {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                detail: format!(
                    "tensor `{name}` holds {} at element {i} (of {}); the weights are \
                     corrupt or came from a diverged training run",
                    values[i],
                    values.len()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_nan_tensor_is_named_with_its_file() {
        let mut tensors = HashMap::new();
        let ok = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let bad = Tensor::new(&[1f32, f32::NAN, 3.0], &Device::Cpu).unwrap();
        tensors.insert("a.weight".to_string(), ok.clone());
        assert!(check_weights(Path::new("w.safetensors"), &tensors).is_ok());
        tensors.insert("b.bias".to_string(), bad);
        let err = check_weights(Path::new("w.safetensors"), &tensors)
            .unwrap_err()
            .to_string();
        assert!(err.contains("w.safetensors"), "{err}");
        assert!(err.contains("`b.bias` holds NaN at element 1"), "{err}");
        let inf = Tensor::new(&[f32::INFINITY], &Device::Cpu).unwrap();
        tensors.insert("b.bias".to_string(), inf.to_dtype(DType::F16).unwrap());
        let err = check_weights(Path::new("w"), &tensors).unwrap_err();
        assert!(err.to_string().contains("inf"), "{err}");
    }
}
