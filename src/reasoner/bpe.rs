//! GPT-2's byte-level BPE tokenizer, read from the user's Hugging Face tokenizer files
//! (`vocab.json` + `merges.txt`), so a real Coconut checkpoint can be fed ProsQA exactly as
//! it was trained, without a tokenizer crate.
//!
//! Encoding follows `tokenizers`' GPT-2 pipeline: added tokens are cut out of the text whole
//! first, the rest is split with GPT-2's pre-tokenisation pattern
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` (written out by
//! hand: the `regex` crate has no look-ahead), each piece's bytes are mapped to GPT-2's
//! printable byte alphabet and merged by rank. One known difference from the pattern: std has
//! no `\p{L}`, so letters are `char::is_alphabetic` minus numerals, which also counts the
//! combining vowel signs of some scripts (e.g. Devanagari) as letters; ProsQA is ASCII.

use std::collections::HashMap;
use std::path::Path;

use crate::error::IoContext;
use crate::{Error, Result};

/// GPT-2's end-of-text token; when the vocabulary has it, it is matched whole in text, as
/// Hugging Face's GPT-2 tokenizer does.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// A GPT-2 byte-level BPE tokenizer with optional added tokens after its vocabulary.
#[derive(Debug, Clone)]
pub struct Bpe {
    /// Token text (in the byte alphabet) -> id, for the file's vocabulary.
    ids: HashMap<String, u32>,
    /// Id -> token text, for the file's vocabulary (ids are 0..n).
    tokens: Vec<String>,
    /// Adjacent pair of ids -> (merge rank, id of the merged token).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Id of each byte's one-symbol token.
    byte_ids: [u32; 256],
    /// Tokens added after the vocabulary (ids `tokens.len()..`).
    added: Vec<String>,
    /// Tokens matched whole in text before pre-tokenisation, with their ids.
    specials: Vec<(String, u32)>,
}

impl Bpe {
    /// Reads a Hugging Face tokenizer folder holding `vocab.json` and `merges.txt`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        for file in [&vocab, &merges] {
            if !file.is_file() {
                return Err(Error::BadFile {
                    path: dir.to_path_buf(),
                    detail: format!(
                        "no {} here; a GPT-2 tokenizer folder holds vocab.json and merges.txt \
                         (as in the Hugging Face `gpt2` repository)",
                        file.file_name().unwrap_or_default().to_string_lossy()
                    ),
                });
            }
        }
        Self::from_files(&vocab, &merges)
    }

    /// Reads GPT-2's `vocab.json` (token -> id) and `merges.txt` (one merge per line, by rank).
    pub fn from_files(vocab_json: &Path, merges_txt: &Path) -> Result<Self> {
        let tokens = read_vocab(vocab_json)?;
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let byte_ids = byte_ids(&ids, vocab_json)?;
        let merges = read_merges(merges_txt, &ids, vocab_json)?;
        let specials = ids
            .get(END_OF_TEXT)
            .map(|&id| vec![(END_OF_TEXT.to_string(), id)])
            .unwrap_or_default();
        Ok(Self {
            ids,
            tokens,
            merges,
            byte_ids,
            added: Vec::new(),
            specials,
        })
    }

    /// Adds tokens matched whole in text, as Hugging Face's `add_tokens` does: a token
    /// already known keeps its id, a new one gets the next id after all others. Coconut adds
    /// `<|start-latent|>`, `<|end-latent|>`, `<|latent|>`: 50257..50259 on GPT-2.
    pub fn add_special_tokens(&mut self, tokens: &[&str]) {
        for &token in tokens {
            if token.is_empty() || self.specials.iter().any(|(t, _)| t == token) {
                continue;
            }
            let id = match self.id(token) {
                Some(id) => id,
                None => {
                    self.added.push(token.to_string());
                    (self.len() - 1) as u32
                }
            };
            self.specials.push((token.to_string(), id));
        }
        // Longest first, so that a token that starts another one never cuts it.
        self.specials
            .sort_by_key(|(token, _)| std::cmp::Reverse(token.len()));
    }

    /// Number of tokens, added ones included: the embedding rows a matching model has.
    pub fn len(&self) -> usize {
        self.tokens.len() + self.added.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of a token: a vocabulary entry in GPT-2's byte alphabet (" the" is "Ġthe")
    /// or an added token.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied().or_else(|| {
            self.added
                .iter()
                .position(|t| t == token)
                .map(|k| (self.tokens.len() + k) as u32)
        })
    }

    /// Whether `id` is an added or end-of-text token (the ones matched whole in text).
    pub fn is_special(&self, id: u32) -> bool {
        self.specials.iter().any(|&(_, s)| s == id)
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (plain, special) = self.next_special(rest);
            for piece in pre_tokenize(&rest[..plain]) {
                self.encode_piece(piece, &mut ids);
            }
            match special {
                Some((len, id)) => {
                    ids.push(id);
                    rest = &rest[plain + len..];
                }
                None => rest = "",
            }
        }
        ids
    }

    /// The text of `ids`. Byte sequences that are not UTF-8 (a character cut between
    /// tokens) become U+FFFD, as in Hugging Face's decoder.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            let i = id as usize;
            if let Some(token) = self.tokens.get(i) {
                if self.is_special(id) {
                    bytes.extend(token.as_bytes());
                } else {
                    bytes.extend(token.chars().filter_map(unicode_to_byte));
                }
            } else if let Some(token) = self.added.get(i - self.tokens.len()) {
                bytes.extend(token.as_bytes());
            } else {
                return Err(Error::Invalid(format!(
                    "token id {id} is outside the tokenizer's {} tokens",
                    self.len()
                )));
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Checks that this tokenizer fits a checkpoint with `model_vocab_size` embedding rows;
    /// the error names both files and says what to do.
    pub fn check_vocab(
        &self,
        tokenizer_path: &Path,
        model_vocab_size: usize,
        weights_path: &Path,
    ) -> Result<()> {
        let tokens = self.len();
        if tokens == model_vocab_size {
            return Ok(());
        }
        let hint = if model_vocab_size == self.tokens.len() + 3 && self.added.is_empty() {
            "the checkpoint has 3 more rows than the tokenizer: add the Coconut latent tokens \
             <|start-latent|>, <|end-latent|>, <|latent|> to it"
                .to_string()
        } else {
            "use the tokenizer the checkpoint was trained with (a Coconut GPT-2 checkpoint has \
             50260 rows: the GPT-2 tokenizer's 50257 tokens plus the three latent tokens; a \
             Hugging Face GPT-2 folder has 50257)"
                .to_string()
        };
        Err(Error::VocabMismatch {
            tokenizer: tokenizer_path.to_path_buf(),
            tokens,
            weights: weights_path.to_path_buf(),
            rows: model_vocab_size,
            hint,
        })
    }

    /// Length of the plain text before the first special token in `text`, and that token's
    /// (length, id) if there is one.
    fn next_special(&self, text: &str) -> (usize, Option<(usize, u32)>) {
        if self.specials.is_empty() {
            return (text.len(), None);
        }
        for (at, _) in text.char_indices() {
            let rest = &text[at..];
            if let Some((token, id)) = self.specials.iter().find(|(t, _)| rest.starts_with(t)) {
                return (at, Some((token.len(), *id)));
            }
        }
        (text.len(), None)
    }

    /// Merges one pre-tokenised piece, GPT-2's way: repeatedly join every occurrence of the
    /// adjacent pair with the lowest merge rank, left to right.
    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        let mut word: Vec<u32> = piece.bytes().map(|b| self.byte_ids[b as usize]).collect();
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|w| self.merges.get(&(w[0], w[1])).map(|&(rank, _)| rank))
                .min();
            let Some(best) = best else { break };
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                match word
                    .get(i + 1)
                    .and_then(|&b| self.merges.get(&(word[i], b)))
                {
                    Some(&(rank, id)) if rank == best => {
                        merged.push(id);
                        i += 2;
                    }
                    _ => {
                        merged.push(word[i]);
                        i += 1;
                    }
                }
            }
            word = merged;
        }
        out.extend(word);
    }
}

/// Reads vocab.json; ids must be exactly 0..n so that id = embedding row.
fn read_vocab(path: &Path) -> Result<Vec<String>> {
    let bad = |detail: String| Error::BadFile {
        path: path.to_path_buf(),
        detail,
    };
    let text = std::fs::read_to_string(path).at(path)?;
    let map: HashMap<String, u32> = serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "expected GPT-2's vocab.json, a JSON object of token -> id: {e}"
        ))
    })?;
    let mut tokens = vec![None; map.len()];
    for (token, &id) in &map {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            bad(format!(
                "token `{token}` has id {id}, but {} tokens need ids 0..{}",
                map.len(),
                map.len()
            ))
        })?;
        if let Some(other) = slot.replace(token.clone()) {
            return Err(bad(format!("tokens `{other}` and `{token}` share id {id}")));
        }
    }
    // Every slot is filled: n distinct ids below n.
    Ok(tokens.into_iter().flatten().collect())
}

/// The id of each byte's one-symbol token; byte-level BPE needs all 256.
fn byte_ids(ids: &HashMap<String, u32>, path: &Path) -> Result<[u32; 256]> {
    let mut out = [0; 256];
    for (b, slot) in out.iter_mut().enumerate() {
        let symbol = BYTE_CHARS[b].to_string();
        *slot = *ids.get(&symbol).ok_or_else(|| Error::BadFile {
            path: path.to_path_buf(),
            detail: format!(
                "byte 0x{b:02x} has no token `{symbol}`; a GPT-2 byte-level vocabulary has \
                 one for each of the 256 bytes"
            ),
        })?;
    }
    Ok(out)
}

/// Reads merges.txt: an optional `#version` line, then one `left right` pair per line, best
/// first. Both sides and their join must be in the vocabulary.
fn read_merges(
    path: &Path,
    ids: &HashMap<String, u32>,
    vocab_path: &Path,
) -> Result<HashMap<(u32, u32), (u32, u32)>> {
    let text = std::fs::read_to_string(path).at(path)?;
    let mut merges = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if (n == 0 && line.starts_with("#version")) || line.is_empty() {
            continue;
        }
        let bad = |detail: String| Error::BadFile {
            path: path.to_path_buf(),
            detail: format!("line {}: {detail}", n + 1),
        };
        let parts: Vec<&str> = line.split(' ').collect();
        let [left, right] = parts[..] else {
            return Err(bad(format!(
                "expected two symbols separated by one space, found `{line}`"
            )));
        };
        if left.is_empty() || right.is_empty() {
            return Err(bad(format!(
                "expected two symbols separated by one space, found `{line}`"
            )));
        }
        let id = |symbol: &str| {
            ids.get(symbol).copied().ok_or_else(|| {
                bad(format!(
                    "`{symbol}` is not in {}; the two files do not belong together",
                    vocab_path.display()
                ))
            })
        };
        let pair = (id(left)?, id(right)?);
        let joined = id(&format!("{left}{right}"))?;
        let rank = merges.len() as u32;
        merges.entry(pair).or_insert((rank, joined));
    }
    Ok(merges)
}

/// GPT-2's printable stand-in for each byte (`bytes_to_unicode`): printable Latin-1 bytes
/// stand for themselves, the others are shifted to U+0100 and up (space is `Ġ`).
const BYTE_CHARS: [char; 256] = byte_chars();

const fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut shifted = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
        let code = if printable {
            b as u32
        } else {
            shifted += 1;
            255 + shifted
        };
        out[b] = match char::from_u32(code) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    out
}

fn unicode_to_byte(c: char) -> Option<u8> {
    BYTE_CHARS.iter().position(|&s| s == c).map(|b| b as u8)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

/// `\p{N}` is exactly `is_numeric`; `\p{L}` excludes numerals such as Roman numerals,
/// which `is_alphabetic` includes.
fn class(c: char) -> Class {
    if c.is_whitespace() {
        Class::Space
    } else if c.is_numeric() {
        Class::Number
    } else if c.is_alphabetic() {
        Class::Letter
    } else {
        Class::Other
    }
}

/// Splits text into GPT-2's pre-tokens (see the module note for the pattern).
pub fn pre_tokenize(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut pieces = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let len = piece_len(&chars[i..]);
        let end = chars.get(i + len).map_or(text.len(), |&(at, _)| at);
        pieces.push(&text[chars[i].0..end]);
        i += len;
    }
    pieces
}

/// Length in chars of the pre-token at the start of `rest` (never 0 for non-empty `rest`):
/// the first alternative of the pattern that matches, as a regex engine would pick it.
fn piece_len(rest: &[(usize, char)]) -> usize {
    let at = |k: usize| rest.get(k).map(|&(_, c)| c);
    if at(0) == Some('\'') {
        match (at(1), at(2)) {
            (Some('s' | 't' | 'm' | 'd'), _) => return 2,
            (Some('r' | 'v'), Some('e')) | (Some('l'), Some('l')) => return 3,
            _ => {}
        }
    }
    // ` ?X+`: a single space joins the run of letters, digits or symbols after it.
    let skip = match (at(0), at(1).map(class)) {
        (Some(' '), Some(next)) if next != Class::Space => 1,
        _ => 0,
    };
    let kind = at(skip).map_or(Class::Space, class);
    if kind == Class::Space {
        return whitespace_len(rest);
    }
    skip + rest[skip..]
        .iter()
        .take_while(|&&(_, c)| class(c) == kind)
        .count()
}

/// `\s+(?!\S)|\s+`: a run of whitespace, except that before a non-space the run's last
/// char is left to start the next piece (so " world" keeps its space).
fn whitespace_len(rest: &[(usize, char)]) -> usize {
    let run = rest.iter().take_while(|&&(_, c)| c.is_whitespace()).count();
    if run == rest.len() || run == 1 {
        run
    } else {
        run - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bpe")
    }

    /// The fixture tokenizer with Coconut's three latent tokens, as the reference added them.
    pub(crate) fn fixture_bpe() -> Bpe {
        let mut bpe = Bpe::from_dir(fixture_dir()).unwrap();
        bpe.add_special_tokens(&["<|start-latent|>", "<|end-latent|>", "<|latent|>"]);
        bpe
    }

    fn expected() -> serde_json::Value {
        let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn cases() -> Vec<(String, Vec<u32>, Vec<String>)> {
        let e = expected();
        e["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["text"].as_str().unwrap().to_string(),
                    serde_json::from_value(c["ids"].clone()).unwrap(),
                    serde_json::from_value(c["pieces"].clone()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn encodes_like_hugging_face_tokenizers_and_decodes_back() {
        let bpe = fixture_bpe();
        let e = expected();
        assert_eq!(bpe.len(), e["vocab_size"].as_u64().unwrap() as usize + 3);
        let latent: Vec<u32> = serde_json::from_value(e["latent_ids"].clone()).unwrap();
        let ours = ["<|start-latent|>", "<|end-latent|>", "<|latent|>"].map(|t| bpe.id(t));
        assert_eq!(
            ours.to_vec(),
            latent.into_iter().map(Some).collect::<Vec<_>>()
        );
        let cases = cases();
        assert!(cases.len() >= 20);
        for (text, ids, _) in &cases {
            assert_eq!(&bpe.encode(text), ids, "encoding {text:?}");
            assert_eq!(&bpe.decode(ids).unwrap(), text, "decoding {text:?}");
        }
    }

    #[test]
    fn pre_tokenises_like_gpt2s_pattern() {
        let to_bytes = |p: &str| -> String { p.bytes().map(|b| BYTE_CHARS[b as usize]).collect() };
        for (text, _, pieces) in cases() {
            if text.contains("<|") && text.contains("|>") {
                continue; // added tokens are cut out before pre-tokenisation
            }
            let ours: Vec<String> = pre_tokenize(&text).into_iter().map(to_bytes).collect();
            assert_eq!(ours, pieces, "pre-tokenising {text:?}");
        }
    }

    #[test]
    fn the_byte_alphabet_is_gpt2s() {
        // Closed form from GPT-2's encoder.py: space -> U+0120 'Ġ', newline -> U+010A 'Ċ',
        // 'A' stays, 0xAD (soft hyphen) is the last shifted byte -> U+0143.
        assert_eq!(BYTE_CHARS[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_CHARS[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_CHARS[b'A' as usize], 'A');
        assert_eq!(BYTE_CHARS[0xad], '\u{143}');
        let mut all: Vec<char> = BYTE_CHARS.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn decoding_an_unknown_id_is_an_error() {
        let bpe = fixture_bpe();
        let err = bpe.decode(&[1, bpe.len() as u32]).unwrap_err().to_string();
        assert!(err.contains(&format!("{}", bpe.len())), "{err}");
    }

    #[test]
    fn adding_a_known_token_keeps_its_id() {
        let mut bpe = fixture_bpe();
        let n = bpe.len();
        bpe.add_special_tokens(&["<|latent|>", END_OF_TEXT]);
        assert_eq!(bpe.len(), n);
        assert_eq!(bpe.id(END_OF_TEXT), Some(0));
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_bad_merges_line_is_reported_with_its_number() {
        let tmp = tempfile::tempdir().unwrap();
        let vocab = fixture_dir().join("vocab.json");
        let merges = write(tmp.path(), "merges.txt", "#version: 0.2\nu s\np us m\n");
        let err = Bpe::from_files(&vocab, &merges).unwrap_err().to_string();
        assert!(err.contains("merges.txt: line 3"), "{err}");
        assert!(err.contains("two symbols"), "{err}");
        let merges = write(tmp.path(), "merges.txt", "u s\nq zz\n");
        let err = Bpe::from_files(&vocab, &merges).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("`zz` is not in"),
            "{err}"
        );
    }

    #[test]
    fn a_broken_or_missing_vocabulary_is_reported_with_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Bpe::from_dir(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("no vocab.json"), "{err}");
        let vocab = write(tmp.path(), "vocab.json", "[1, 2]");
        let merges = write(tmp.path(), "merges.txt", "");
        let err = Bpe::from_files(&vocab, &merges).unwrap_err().to_string();
        assert!(
            err.contains("vocab.json") && err.contains("JSON object"),
            "{err}"
        );
        write(tmp.path(), "vocab.json", r#"{"a": 0, "b": 2}"#);
        let err = Bpe::from_files(&vocab, &merges).unwrap_err().to_string();
        assert!(err.contains("ids 0..2"), "{err}");
        write(tmp.path(), "vocab.json", r#"{"a": 0, "b": 1}"#);
        let err = Bpe::from_files(&vocab, &merges).unwrap_err().to_string();
        assert!(err.contains("byte 0x00"), "{err}");
    }

    #[test]
    fn a_tokenizer_that_does_not_fit_the_checkpoint_is_refused() {
        let plain = Bpe::from_dir(fixture_dir()).unwrap();
        let (tok, w) = (Path::new("tok/vocab.json"), Path::new("coconut.pth"));
        let n = plain.len();
        let err = plain.check_vocab(tok, n + 3, w).unwrap_err().to_string();
        for part in [
            "tok/vocab.json",
            "coconut.pth",
            &n.to_string(),
            &(n + 3).to_string(),
            "latent",
        ] {
            assert!(err.contains(part), "{err} lacks {part}");
        }
        let err = plain.check_vocab(tok, 50260, w).unwrap_err().to_string();
        assert!(
            err.contains("50260") && err.contains("trained with"),
            "{err}"
        );
        assert!(fixture_bpe().check_vocab(tok, n + 3, w).is_ok());
    }
}
