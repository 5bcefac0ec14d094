//! The built-in reasoner's vocabulary and the compact encoding of a ProsQA record.
//!
//! Every node name is one token, so a continuous thought can be compared with the embedding
//! of a node (the BFS analysis reads thoughts against node tokens). A record becomes
//! `<bos> ? root X Y | A B | A B | ... <bot> root [thoughts] <eot> [steps] answer <eos>`,
//! where `A B` is the edge "every A is a B", `X Y` are the two options in the question's
//! order, `[thoughts]` are `<thought>` placeholders (latent mode) and `[steps]` the nodes of
//! the shortest path after the root that are still spelled out in language. As in Coconut,
//! the language after `<eot>` (remaining steps and answer) is what the model is trained on.
//!
//! The question comes first so that the root and the two options sit at fixed positions
//! (2, 3 and 4): with learned absolute positions, copying from a fixed position is learned
//! at once, while copying from "four tokens before `<bot>`" has to be learned for every
//! prompt length. Measured on the no-CoT baseline: with the question last, 84% of its
//! answers were one of the two options after 21 epochs; with it first, 97% after 2.
//!
//! The chain starts at the root, right after `<bot>`, so every position of the reasoning
//! reads its query from itself or the position before: the root position looks up the
//! root's children, a thought the children of the nodes it holds, `<eot>` those of the last
//! thought. That is the one lookup an edge list needs (a previous-token head tells each `B`
//! its `A`, a second layer matches), and the one Zhu et al.'s 2-layer construction uses.

use std::collections::HashMap;

use crate::data::prosqa::{Record, CONCEPTS, PERSONS};
use crate::{Error, Result};

pub const PAD: u32 = 0;
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
/// Begin of thought: reasoning starts after it.
pub const BOT: u32 = 3;
/// End of thought: the answer follows.
pub const EOT: u32 = 4;
/// Placeholder for a continuous thought in a token sequence (never embedded).
pub const THOUGHT: u32 = 5;
/// Ends one edge.
pub const SEP: u32 = 6;
/// Starts the question.
pub const QUERY: u32 = 7;

/// Position of the first edge (after `<bos> ? root X Y |`).
pub const EDGES_START: usize = 6;
/// Tokens per edge: `A B |`.
pub const EDGE_LEN: usize = 3;

const SPECIALS: [&str; 8] = [
    "<pad>",
    "<bos>",
    "<eos>",
    "<bot>",
    "<eot>",
    "<thought>",
    "|",
    "?",
];

/// Token <-> id for the built-in reasoner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Vocab {
    /// Specials, then person names, then concept words (ids never change between runs).
    pub fn prosqa() -> Self {
        let tokens: Vec<String> = SPECIALS
            .iter()
            .chain(PERSONS.iter())
            .chain(CONCEPTS.iter())
            .map(|s| s.to_string())
            .collect();
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        Self { tokens, ids }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn id(&self, token: &str) -> Result<u32> {
        self.ids.get(token).copied().ok_or_else(|| {
            Error::Invalid(format!(
                "`{token}` is not in the reasoner's vocabulary (node names must be one of the \
                 ProsQA person names or concept words)"
            ))
        })
    }

    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Space-separated tokens; unknown ids show as `<unk:ID>`.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| {
                self.token(i)
                    .map(str::to_string)
                    .unwrap_or(format!("<unk:{i}>"))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A record split into the parts the curriculum recombines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// `<bos> ? root X Y | edges <bot>`.
    pub prompt: Vec<u32>,
    /// The nodes of the shortest path after the root, one token per hop.
    pub steps: Vec<u32>,
    /// `answer <eos>`.
    pub answer: Vec<u32>,
}

impl Encoded {
    /// The chain-of-thought sequence (curriculum stage 0): prompt, `<eot>`, all steps,
    /// answer.
    pub fn cot(&self) -> Vec<u32> {
        self.with_thoughts(0, 0)
    }

    /// Curriculum stage `stage`: the first `stage` steps replaced by `n_thoughts`
    /// `<thought>` placeholders (all steps gone once stage >= steps).
    pub fn with_thoughts(&self, stage: usize, n_thoughts: usize) -> Vec<u32> {
        let replaced = stage.min(self.steps.len());
        let mut seq = self.prompt.clone();
        seq.extend(std::iter::repeat_n(THOUGHT, n_thoughts));
        seq.push(EOT);
        seq.extend_from_slice(&self.steps[replaced..]);
        seq.extend_from_slice(&self.answer);
        seq
    }

    /// The no-CoT baseline: prompt, `<eot>`, answer.
    pub fn no_cot(&self) -> Vec<u32> {
        self.with_thoughts(usize::MAX, 0)
    }
}

/// The last word of a sentence, without its final punctuation: "Every A is a B." -> "B".
fn last_word(sentence: &str) -> Option<&str> {
    sentence
        .trim()
        .trim_end_matches(['.', '?'])
        .split_whitespace()
        .last()
}

/// The two options of "... Is Name a X or Y?", in the question's order.
fn options(record: &Record) -> Option<(String, String)> {
    let last = record.question.trim().trim_end_matches('?');
    let at = last.rfind("Is ")?;
    let words: Vec<&str> = last[at..].split_whitespace().collect();
    match words.as_slice() {
        ["Is", _, "a", x, "or", y] => Some((x.to_string(), y.to_string())),
        _ => None,
    }
}

/// Encodes a record (validated by `prosqa::load` or made by `prosqa::generate`).
pub fn encode(record: &Record, vocab: &Vocab) -> Result<Encoded> {
    let name = |v: usize| -> Result<u32> {
        let symbol = record
            .idx_to_symbol
            .get(v)
            .ok_or_else(|| Error::Invalid(format!("node {v} is out of range of idx_to_symbol")))?;
        vocab.id(symbol)
    };
    let target = record
        .idx_to_symbol
        .get(record.target)
        .cloned()
        .unwrap_or_default();
    let neg = record
        .idx_to_symbol
        .get(record.neg_target)
        .cloned()
        .unwrap_or_default();
    let (x, y) = options(record).unwrap_or((target, neg));
    let mut prompt = vec![
        BOS,
        QUERY,
        name(record.root)?,
        vocab.id(&x)?,
        vocab.id(&y)?,
        SEP,
    ];
    for &[i, j] in &record.edges {
        prompt.extend([name(i)?, name(j)?, SEP]);
    }
    // The chain starts at the root, right after `<bot>`: see the module docs.
    prompt.extend([BOT, name(record.root)?]);
    let steps = record
        .steps
        .iter()
        .map(|s| {
            last_word(s)
                .ok_or_else(|| Error::Invalid(format!("step `{s}` has no node name")))
                .and_then(|w| vocab.id(w))
        })
        .collect::<Result<Vec<u32>>>()?;
    Ok(Encoded {
        prompt,
        steps,
        answer: vec![name(record.target)?, EOS],
    })
}

/// What a token sequence says, read back: edges as name pairs, root, options, reasoning
/// steps and answer. The inverse of `encode` up to node numbering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub edges: Vec<(String, String)>,
    pub root: String,
    pub options: (String, String),
    pub steps: Vec<String>,
    pub answer: Option<String>,
}

/// Parses a sequence made by `Encoded::cot`/`with_thoughts`; thoughts carry no names, so
/// `steps` holds only the steps spelled out after `<eot>`.
pub fn decode(ids: &[u32], vocab: &Vocab) -> Result<Decoded> {
    let bad = |what: &str| Error::Invalid(format!("token sequence: {what}: {}", vocab.decode(ids)));
    let word = |i: u32| {
        vocab
            .token(i)
            .map(str::to_string)
            .ok_or_else(|| bad("unknown id"))
    };
    let body = ids
        .strip_prefix(&[BOS])
        .ok_or_else(|| bad("no leading <bos>"))?;
    let [QUERY, root, x, y, SEP, rest @ ..] = body else {
        return Err(bad("the question is not `? root X Y |`"));
    };
    let bot = rest
        .iter()
        .position(|&t| t == BOT)
        .ok_or_else(|| bad("no <bot>"))?;
    let mut edges = Vec::new();
    for chunk in rest[..bot].chunks(3) {
        match chunk {
            [a, b, SEP] => edges.push((word(*a)?, word(*b)?)),
            _ => return Err(bad("an edge is not `A B |`")),
        }
    }
    let reasoning = match &rest[bot + 1..] {
        [start, reasoning @ ..] if start == root => reasoning,
        _ => return Err(bad("the chain after <bot> does not start at the root")),
    };
    let eot = reasoning
        .iter()
        .position(|&t| t == EOT)
        .ok_or_else(|| bad("no <eot>"))?;
    if reasoning[..eot].iter().any(|&t| t != THOUGHT) {
        return Err(bad("only <thought> may stand between <bot> and <eot>"));
    }
    let language = &reasoning[eot + 1..];
    let language = language.strip_suffix(&[EOS]).unwrap_or(language);
    let (answer, steps) = match language.split_last() {
        Some((&a, steps)) => (Some(word(a)?), steps),
        None => (None, language),
    };
    let steps = steps.iter().map(|&t| word(t)).collect::<Result<Vec<_>>>()?;
    Ok(Decoded {
        edges,
        root: word(*root)?,
        options: (word(*x)?, word(*y)?),
        steps,
        answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::prosqa;

    #[test]
    fn every_real_and_generated_node_name_is_one_token() {
        let vocab = Vocab::prosqa();
        assert_eq!(vocab.len(), 8 + 17 + 38);
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/reasoner/prosqa_valid_head.json"
        );
        let real = prosqa::load(path).unwrap();
        for r in real.iter().chain(prosqa::generate(50, 2).iter()) {
            for name in &r.idx_to_symbol {
                let id = vocab.id(name).unwrap();
                assert_eq!(vocab.token(id), Some(name.as_str()));
            }
        }
    }

    #[test]
    fn encoding_round_trips_to_the_record() {
        let vocab = Vocab::prosqa();
        for r in prosqa::generate(30, 5) {
            let enc = encode(&r, &vocab).unwrap();
            let dec = decode(&enc.cot(), &vocab).unwrap();
            let sym = |v: usize| r.idx_to_symbol[v].clone();
            let edges: Vec<(String, String)> =
                r.edges.iter().map(|&[i, j]| (sym(i), sym(j))).collect();
            assert_eq!(dec.edges, edges);
            assert_eq!(dec.root, sym(r.root));
            let mut opts = [dec.options.0.clone(), dec.options.1.clone()];
            opts.sort();
            let mut want = [sym(r.target), sym(r.neg_target)];
            want.sort();
            assert_eq!(opts, want);
            assert!(r
                .question
                .ends_with(&format!("{} or {}?", dec.options.0, dec.options.1)));
            // The steps are the nodes of a path from the root to the target.
            assert_eq!(dec.steps.len(), r.steps.len());
            assert_eq!(dec.steps.last(), Some(&sym(r.target)));
            let mut prev = dec.root.clone();
            for s in &dec.steps {
                assert!(edges.contains(&(prev.clone(), s.clone())), "{prev} -> {s}");
                prev = s.clone();
            }
            assert_eq!(dec.answer, Some(sym(r.target)));
            assert_eq!(encode(&r, &vocab).unwrap(), enc);
        }
    }

    #[test]
    fn curriculum_stages_replace_steps_with_thoughts() {
        let vocab = Vocab::prosqa();
        let r = &prosqa::generate(1, 9)[0];
        let enc = encode(r, &vocab).unwrap();
        let n = enc.steps.len();
        let p = enc.prompt.len();
        let stage1 = enc.with_thoughts(1, 1);
        assert_eq!(stage1.len(), enc.cot().len());
        let root = vocab.id(&r.idx_to_symbol[r.root]).unwrap();
        assert_eq!(
            stage1[p - 2..p + 3],
            [BOT, root, THOUGHT, EOT, enc.steps[1]]
        );
        assert_eq!(decode(&stage1, &vocab).unwrap().steps.len(), n - 1);
        let all = enc.with_thoughts(n + 2, 2 * (n + 2));
        assert_eq!(all.iter().filter(|&&t| t == THOUGHT).count(), 2 * (n + 2));
        let dec = decode(&all, &vocab).unwrap();
        assert_eq!(dec.steps, Vec::<String>::new());
        assert_eq!(dec.answer.as_deref(), vocab.token(enc.answer[0]));
        assert_eq!(
            enc.no_cot(),
            [&enc.prompt[..], &[EOT, enc.answer[0], EOS]].concat()
        );
    }

    #[test]
    fn unknown_names_are_errors_that_name_them() {
        let vocab = Vocab::prosqa();
        let mut r = prosqa::generate(1, 0)[0].clone();
        r.idx_to_symbol[3] = "blorpus".into();
        let msg = encode(&r, &vocab).unwrap_err().to_string();
        assert!(msg.contains("blorpus"), "{msg}");
    }
}
