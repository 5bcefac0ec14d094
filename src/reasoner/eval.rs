//! Answer accuracy of a reasoner on ProsQA questions (the paper's Table 1): which model,
//! how many thoughts its method takes, accuracy overall and by hop count, tokens
//! generated. `latentlens eval reasoner` prints it; an audit rule calls
//! [`accuracy_on_file`] for "the accuracy of this model on this ProsQA file".

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Serialize;

use super::source::{ReasonerSource, BUILTIN_REASONER_DIR};
use super::train::{evaluate, Accuracy, Method, TrainState};
use crate::data::prosqa::{self, Record};
use crate::progress::Progress;
use crate::{Error, Result};

/// The folder of the shipped model trained with `method`, under `weights/reasoner`.
pub fn method_folder(method: Method) -> &'static str {
    match method {
        Method::Coconut => "coconut",
        Method::Cot => "cot",
        Method::NoCot => "no-cot",
    }
}

/// The shipped model trained with `method`.
pub fn builtin_model(method: Method) -> PathBuf {
    Path::new(BUILTIN_REASONER_DIR)
        .join(method_folder(method))
        .join("model")
}

/// The method a model was trained with: from the `train_state.json` beside a model
/// folder; Coconut for a Coconut checkpoint or a folder without one (a Hugging Face model).
pub fn method_of(source: &ReasonerSource) -> Result<Method> {
    let Some(dir) = &source.model else {
        return Ok(Method::Coconut);
    };
    let state = dir
        .parent()
        .map(|p| p.join("train_state.json"))
        .filter(|p| p.exists());
    let Some(path) = state else {
        return Ok(Method::Coconut);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| Error::BadFile {
        path: path.clone(),
        detail: format!("not a training state: {e}"),
    })?;
    Ok(state.config.method)
}

/// Accuracy on the questions of one hop count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HopAccuracy {
    pub hops: usize,
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
}

/// One model's line of the accuracy table.
#[derive(Debug, Clone, Serialize)]
pub struct ModelAccuracy {
    /// What the model was loaded from.
    pub model: PathBuf,
    pub method: Method,
    /// Continuous thoughts used (0 for the CoT and no-CoT baselines).
    pub thoughts: usize,
    /// Questions evaluated.
    pub n: usize,
    pub accuracy: f64,
    /// Tokens generated per question, thoughts included (the paper's "# tokens").
    pub mean_tokens: f64,
    pub by_hops: Vec<HopAccuracy>,
    pub detail: Accuracy,
}

/// Greedy accuracy of the model `source` names on `records`, with `thoughts` continuous
/// thoughts if it is a Coconut model (the baselines answer without).
pub fn accuracy(
    source: &ReasonerSource,
    records: &[Record],
    thoughts: usize,
    device: &Device,
    progress: &dyn Progress,
) -> Result<ModelAccuracy> {
    let method = method_of(source)?;
    let reasoner = source.load(device)?;
    let thoughts = if method == Method::Coconut {
        thoughts
    } else {
        0
    };
    let acc = evaluate(
        &reasoner.loaded.model,
        reasoner.format.as_ref(),
        records,
        thoughts,
        progress,
    )?;
    let by_hops = acc
        .by_hops
        .iter()
        .map(|(&hops, &(n, correct))| HopAccuracy {
            hops,
            n,
            correct,
            accuracy: correct as f64 / n.max(1) as f64,
        })
        .collect();
    Ok(ModelAccuracy {
        model: reasoner.source,
        method,
        thoughts,
        n: acc.total,
        accuracy: acc.rate(),
        mean_tokens: acc.mean_generated(),
        by_hops,
        detail: acc,
    })
}

/// [`accuracy`] on the first `limit` questions (all when `None`) of a ProsQA file.
pub fn accuracy_on_file(
    source: &ReasonerSource,
    data: &Path,
    thoughts: usize,
    limit: Option<usize>,
    device: &Device,
    progress: &dyn Progress,
) -> Result<ModelAccuracy> {
    let mut records = prosqa::load(data)?;
    if let Some(n) = limit {
        records.truncate(n);
    }
    if records.is_empty() {
        return Err(Error::Invalid(format!(
            "{} holds no questions to evaluate",
            data.display()
        )));
    }
    accuracy(source, &records, thoughts, device, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Hidden;
    use crate::reasoner::checkpoint::save_hf_gpt2;
    use crate::reasoner::gpt2::{random_varmap, Gpt2Config};
    use crate::reasoner::tokens::Vocab;

    #[test]
    fn accuracy_on_a_file_counts_every_question_by_hops() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("q.json");
        let records = prosqa::generate(5, 3);
        prosqa::save(&data, &records).unwrap();
        let cfg = Gpt2Config {
            n_embd: 16,
            n_layer: 1,
            n_head: 2,
            n_positions: 256,
            vocab_size: Vocab::prosqa().len(),
            layer_norm_epsilon: 1e-5,
        };
        let model = tmp.path().join("cot").join("model");
        save_hf_gpt2(&model, &cfg, &random_varmap(&cfg, 0, &Device::Cpu).unwrap()).unwrap();
        let source = ReasonerSource {
            model: Some(model.clone()),
            ..ReasonerSource::default()
        };
        let got = accuracy_on_file(&source, &data, 2, Some(4), &Device::Cpu, &Hidden).unwrap();
        // No training state beside the folder: read as a Coconut model, with its thoughts.
        assert_eq!((got.method, got.thoughts, got.n), (Method::Coconut, 2, 4));
        assert_eq!(got.model, model);
        assert_eq!(got.by_hops.iter().map(|h| h.n).sum::<usize>(), 4);
        let correct: usize = got.by_hops.iter().map(|h| h.correct).sum();
        assert_eq!(got.accuracy, correct as f64 / 4.0);
        for h in &got.by_hops {
            let want = records[..4].iter().filter(|r| r.hops() == h.hops).count();
            assert_eq!(h.n, want, "{h:?}");
            assert_eq!(h.accuracy, h.correct as f64 / h.n as f64);
        }
        // A broken training state is named, not read as Coconut.
        std::fs::write(tmp.path().join("cot/train_state.json"), "{}").unwrap();
        let err = method_of(&source).unwrap_err().to_string();
        assert!(err.contains("train_state.json") && err.contains("not a training state"));
        let err = accuracy_on_file(&source, &data, 2, Some(0), &Device::Cpu, &Hidden)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no questions"), "{err}");
    }
}
