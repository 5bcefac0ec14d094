//! The CLIP tokenizer of a Stable Diffusion folder, through the `tokenizers` crate: from
//! `tokenizer/tokenizer.json` when the folder has one, otherwise built from `vocab.json` +
//! `merges.txt` exactly as transformers' `CLIPTokenizer` builds it. Prompts are padded and
//! truncated to the pipeline's length as diffusers does (`padding="max_length"`,
//! `truncation=True`).

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormSeq, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior,
    Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::config::Fields;
use crate::{Error, Result};

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// transformers' CLIP pre-tokenizer split.
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

pub struct ClipTokenizer {
    inner: Tokenizer,
    /// Every prompt becomes exactly this many ids.
    pub max_length: usize,
    pub pad_id: u32,
    /// The files it was read from, for provenance.
    pub files: Vec<PathBuf>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("max_length", &self.max_length)
            .field("pad_id", &self.pad_id)
            .field("files", &self.files)
            .finish()
    }
}

fn bad(path: &Path, detail: String) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        detail,
    }
}

impl ClipTokenizer {
    /// Reads `dir` (a pipeline's `tokenizer/` folder). `positions` is the text encoder's
    /// `max_position_embeddings`, the length used when tokenizer_config.json gives none.
    pub fn load(dir: &Path, positions: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let from_json = json.is_file();
        let (mut inner, mut files) = if from_json {
            let t = Tokenizer::from_file(&json)
                .map_err(|e| bad(&json, format!("not a readable tokenizer.json: {e}")))?;
            (t, vec![json])
        } else {
            let vocab = dir.join("vocab.json");
            if !vocab.is_file() {
                return Err(bad(
                    &vocab,
                    "missing: the tokenizer folder needs tokenizer.json, or vocab.json + merges.txt".into(),
                ));
            }
            let merges = dir.join("merges.txt");
            if !merges.is_file() {
                return Err(bad(
                    &merges,
                    "missing: vocab.json needs merges.txt beside it (or give tokenizer.json)"
                        .into(),
                ));
            }
            (
                Self::from_vocab_merges(&vocab, &merges)?,
                vec![vocab, merges],
            )
        };

        let config_path = dir.join("tokenizer_config.json");
        let (model_max_length, pad_token) = if config_path.is_file() {
            let f = Fields::read(&config_path)?;
            let max = f
                .get("model_max_length")
                .and_then(|v| v.as_f64())
                .filter(|&m| m >= 2.0 && m <= positions as f64)
                .map(|m| m as usize);
            let pad = match f.get("pad_token") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(v) => v
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                None => None,
            };
            files.push(config_path.clone());
            (max, pad)
        } else {
            (None, None)
        };
        let max_length = model_max_length.unwrap_or(positions);
        let pad_token = pad_token.unwrap_or_else(|| EOS.to_string());
        if !from_json {
            inner
                .add_special_tokens([AddedToken::from(pad_token.clone(), true)])
                .map_err(|e| bad(dir, format!("cannot add the pad token {pad_token:?}: {e}")))?;
        }
        let pad_id = inner.token_to_id(&pad_token).ok_or_else(|| {
            bad(
                &config_path,
                format!("the pad token {pad_token:?} is not in the tokenizer's vocabulary"),
            )
        })?;
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| bad(dir, format!("cannot truncate to {max_length} tokens: {e}")))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        Ok(Self {
            inner,
            max_length,
            pad_id,
            files,
        })
    }

    /// transformers' `CLIPTokenizer` over a vocab.json + merges.txt pair.
    fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Tokenizer> {
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".into())
            .unk_token(EOS.into())
            .build()
            .map_err(|e| {
                bad(
                    vocab,
                    format!("cannot build the BPE model with merges.txt: {e}"),
                )
            })?;
        let mut t = Tokenizer::new(bpe);
        let regex_err = |e: Box<dyn std::error::Error + Send + Sync>| {
            bad(vocab, format!("tokenizer setup: {e}"))
        };
        let replace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(regex_err)?;
        t.with_normalizer(Some(NormSeq::new(vec![
            NFC.into(),
            replace.into(),
            Lowercase.into(),
        ])))
        .map_err(regex_err)?;
        let split = Split::new(
            SplitPattern::Regex(CLIP_SPLIT.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(regex_err)?;
        t.with_pre_tokenizer(Some(PreSeq::new(vec![
            split.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        let id = |tok: &str| {
            t.token_to_id(tok)
                .ok_or_else(|| bad(vocab, format!("the vocabulary has no {tok}")))
        };
        let (bos, eos) = (id(BOS)?, id(EOS)?);
        // transformers registers the special tokens (and the pad token, added in `load`) as
        // added tokens, which are split off before the BPE sees the text.
        t.add_special_tokens([AddedToken::from(BOS, true), AddedToken::from(EOS, true)])
            .map_err(|e| bad(vocab, format!("cannot add the special tokens: {e}")))?;
        t.with_post_processor(Some(
            RobertaProcessing::new((EOS.into(), eos), (BOS.into(), bos))
                .trim_offsets(false)
                .add_prefix_space(false),
        ));
        Ok(t)
    }

    /// Ids including the special tokens and padding; one row of `max_length` per prompt.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(prompt, true)
            .map_err(|e| Error::Invalid(format!("cannot tokenize {prompt:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokens the tokenizer can produce (with added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
