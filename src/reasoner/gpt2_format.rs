//! ProsQA as the Coconut reference code (facebookresearch/coconut, `dataset.py`, `run.py`)
//! feeds it to GPT-2, so a released or user-trained Coconut checkpoint reads questions
//! exactly as in training. A record becomes
//!
//! ```text
//! question + "\n"  <|start-latent|> <|latent|>*k <|end-latent|>  step + "\n" ...  "### " + answer  <|endoftext|>
//! ```
//!
//! with every part tokenised on its own (steps such as "Tom is a terpus." then "Every terpus
//! is a brimpus.", the answer "Tom is a lempus."); after `k` thoughts the first `k` steps are
//! left out.
//!
//! A node's value for the BFS analysis: after `k >= 1` thoughts the next spelled step reads
//! "Every X is a Y.", so the model is teacher-forced with `<|end-latent|>` then "Every", and
//! a node's value is the product of the probabilities of the BPE tokens of " " + its name.
//! Note the hop count: the X after "Every" is the node reached by the k-th hop (frontier
//! `F_k`), whereas the built-in format names the node of hop k+1 right after `<eot>`.

use super::bpe::{Bpe, END_OF_TEXT};
use super::coconut::LatentTokens;
use super::format::{Chain, QuestionFormat};
use crate::data::prosqa::Record;
use crate::{Error, Result};

/// Coconut's latent tokens, in the order the reference adds them to GPT-2's tokenizer.
pub const LATENT_TOKENS: [&str; 3] = ["<|start-latent|>", "<|end-latent|>", "<|latent|>"];

/// The word that opens every reasoning step after the first ("Every X is a Y.").
pub const STEP_OPENING: &str = "Every";

/// Coconut's GPT-2 format over a user's GPT-2 tokenizer.
#[derive(Debug, Clone)]
pub struct CoconutGpt2Format {
    bpe: Bpe,
    tokens: LatentTokens,
}

impl CoconutGpt2Format {
    /// Adds the latent tokens to `bpe` as Coconut does (on GPT-2: ids 50257..50259; tokens
    /// already there keep their ids). The vocabulary must have `<|endoftext|>`.
    pub fn new(mut bpe: Bpe) -> Result<Self> {
        bpe.add_special_tokens(&LATENT_TOKENS);
        let id = |token: &str| {
            bpe.id(token).ok_or_else(|| {
                Error::Invalid(format!(
                    "the tokenizer has no `{token}` token; a GPT-2 tokenizer's vocab.json has it"
                ))
            })
        };
        let tokens = LatentTokens {
            bot: id(LATENT_TOKENS[0])?,
            eot: id(LATENT_TOKENS[1])?,
            eos: id(END_OF_TEXT)?,
            thought: id(LATENT_TOKENS[2])?,
        };
        Ok(Self { bpe, tokens })
    }

    /// The tokenizer, latent tokens included (check it against the checkpoint with
    /// `Bpe::check_vocab`).
    pub fn bpe(&self) -> &Bpe {
        &self.bpe
    }

    fn node_named(&self, record: &Record, name: &str) -> Option<usize> {
        record.idx_to_symbol.iter().position(|s| s == name)
    }

    /// The node a sentence "... is a Y." ends on.
    fn object_of(&self, record: &Record, sentence: &str) -> Option<usize> {
        let last = sentence.split_whitespace().next_back()?;
        self.node_named(record, last.trim_end_matches(['.', ',', '!', '?']))
    }
}

impl QuestionFormat for CoconutGpt2Format {
    fn prompt(&self, record: &Record) -> Result<Vec<u32>> {
        let mut ids = self.bpe.encode(&format!("{}\n", record.question));
        ids.push(self.tokens.bot);
        Ok(ids)
    }

    fn latent_tokens(&self) -> LatentTokens {
        self.tokens
    }

    fn step_opening(&self) -> Vec<u32> {
        self.bpe.encode(STEP_OPENING)
    }

    fn node_tokens(&self, record: &Record, node: usize) -> Result<Vec<u32>> {
        let name = record.idx_to_symbol.get(node).ok_or_else(|| {
            Error::Invalid(format!("node {node} is out of range of idx_to_symbol"))
        })?;
        Ok(self.bpe.encode(&format!(" {name}")))
    }

    /// Reads the text up to `<|endoftext|>` the way the reference evaluates it: the part
    /// before the first '#' holds the steps, one per line, each naming the node it ends on;
    /// the part after the last '#' is the answer sentence. Special tokens are skipped.
    fn read_chain(&self, record: &Record, generated: &[u32]) -> Chain {
        let end = generated
            .iter()
            .position(|&t| t == self.tokens.eos)
            .unwrap_or(generated.len());
        let spoken: Vec<u32> = generated[..end]
            .iter()
            .copied()
            .filter(|&t| (t as usize) < self.bpe.len() && !self.bpe.is_special(t))
            .collect();
        let text = self.bpe.decode(&spoken).unwrap_or_default();
        let (steps, answer) = match (text.find('#'), text.rfind('#')) {
            (Some(first), Some(last)) => (&text[..first], Some(&text[last + 1..])),
            _ => (text.as_str(), None),
        };
        Chain {
            steps: steps
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(|line| self.object_of(record, line))
                .collect(),
            answer: answer.and_then(|a| self.object_of(record, a)),
        }
    }

    /// A step is about 6-10 GPT-2 tokens; 16 per step, plus room for the answer.
    fn max_answer_tokens(&self, record: &Record) -> usize {
        16 * (record.steps.len() + 2)
    }

    /// After k >= 1 thoughts the next step reads "Every X is a Y." with X reached at hop k.
    fn named_hop(&self, thoughts: usize) -> usize {
        thoughts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture() -> (CoconutGpt2Format, serde_json::Value) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bpe");
        let format = CoconutGpt2Format::new(Bpe::from_dir(&dir).unwrap()).unwrap();
        let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
        (format, serde_json::from_str(&text).unwrap())
    }

    fn records(expected: &serde_json::Value) -> Vec<Record> {
        let records: Vec<Record> = serde_json::from_value(expected["records"].clone()).unwrap();
        assert!(records.len() >= 3);
        records
    }

    #[test]
    fn a_record_is_laid_out_as_the_reference_feeds_it() {
        let (f, e) = fixture();
        let t = f.latent_tokens();
        let latent: Vec<u32> = serde_json::from_value(e["latent_ids"].clone()).unwrap();
        assert_eq!([t.bot, t.eot, t.thought].to_vec(), latent);
        assert_eq!(t.eos, e["eos_id"].as_u64().unwrap() as u32);
        // The Python script tokenised each record with 2 thoughts in Coconut's layout,
        // as one string (added tokens split out by `tokenizers` itself).
        let cases = e["cases"].as_array().unwrap();
        for (r, case) in records(&e).iter().zip(&cases[cases.len() - 3..]) {
            let reference: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            let mut ours = f.prompt(r).unwrap();
            ours.extend([t.thought, t.thought, t.eot]);
            for step in &r.steps[2..] {
                ours.extend(f.bpe().encode(&format!("{step}\n")));
            }
            ours.extend(f.bpe().encode(&format!("### {}", r.answer)));
            assert_eq!(ours, reference);
            let prompt = f.prompt(r).unwrap();
            assert_eq!(
                f.bpe().decode(&prompt).unwrap(),
                format!("{}\n<|start-latent|>", r.question)
            );
        }
    }

    #[test]
    fn a_records_own_steps_and_answer_read_back_as_its_chain() {
        let (f, e) = fixture();
        for r in records(&e) {
            let mut generated = Vec::new();
            for step in &r.steps {
                generated.extend(f.bpe().encode(&format!("{step}\n")));
            }
            generated.extend(f.bpe().encode(&format!("### {}", r.answer)));
            generated.push(f.latent_tokens().eos);
            generated.extend(f.bpe().encode("Every junk"));
            let chain = f.read_chain(&r, &generated);
            let dist = r.graph().distances_from(r.root);
            assert_eq!(chain.answer, Some(r.target));
            assert_eq!(chain.steps.len(), r.steps.len());
            for (k, node) in chain.steps.iter().enumerate() {
                assert_eq!(
                    dist[node.unwrap()],
                    Some(k + 1),
                    "step {k} of {:?}",
                    r.steps
                );
            }
            assert_eq!(*chain.steps.last().unwrap(), Some(r.target));
            assert!(f.max_answer_tokens(&r) >= generated.len());
        }
    }

    #[test]
    fn a_step_begins_with_the_opening_then_the_node_of_the_previous_hop() {
        let (f, e) = fixture();
        for r in records(&e) {
            let chain: Vec<usize> = r
                .steps
                .iter()
                .map(|s| f.object_of(&r, s).unwrap())
                .collect();
            for (k, step) in r.steps.iter().enumerate().skip(1) {
                let mut start = f.step_opening();
                start.extend(f.node_tokens(&r, chain[k - 1]).unwrap());
                let ids = f.bpe().encode(&format!("{step}\n"));
                assert!(ids.starts_with(&start), "{step}");
            }
        }
    }

    #[test]
    fn names_outside_the_graph_read_as_hallucinated_nodes() {
        let (f, e) = fixture();
        let r = &records(&e)[0];
        let stranger = crate::data::prosqa::CONCEPTS
            .iter()
            .find(|c| !r.idx_to_symbol.iter().any(|s| s == *c))
            .unwrap();
        let text = format!(
            "Every {stranger} is a {stranger}.\n\nnonsense\n### Tom is a {}.",
            r.idx_to_symbol[r.target]
        );
        let chain = f.read_chain(r, &f.bpe().encode(&text));
        assert_eq!(chain.steps, vec![None, None]);
        assert_eq!(chain.answer, Some(r.target));
        let silent = f.read_chain(r, &[f.latent_tokens().eos]);
        assert_eq!((silent.steps.len(), silent.answer), (0, None));
        assert!(f.node_tokens(r, r.idx_to_symbol.len()).is_err());
    }
}
