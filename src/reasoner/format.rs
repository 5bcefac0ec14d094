//! How a reasoner reads and writes ProsQA: the seam between a model's tokenizer and the
//! analyses. The built-in model names every node with one token; a GPT-2 Coconut checkpoint
//! spells questions in words with BPE. Recording, evaluation and the BFS analysis only ask
//! this trait, so they work the same on either.

use super::coconut::LatentTokens;
use super::tokens::{encode, Vocab, EOS};
use crate::data::prosqa::Record;
use crate::Result;

/// What a decoded continuation says: the nodes named as reasoning steps, in order, and the
/// final answer. A name that is not a node of the question's graph is kept as `None`
/// (a hallucinated node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub steps: Vec<Option<usize>>,
    pub answer: Option<usize>,
}

/// A model's way of putting a ProsQA record into tokens and reading its output back.
pub trait QuestionFormat {
    /// The question up to and including the begin-of-thought token.
    fn prompt(&self, record: &Record) -> Result<Vec<u32>>;
    /// Special tokens of latent mode.
    fn latent_tokens(&self) -> LatentTokens;
    /// Tokens that follow `<eot>` before the first node of a reasoning step is named (the
    /// built-in format names the node at once: empty).
    fn step_opening(&self) -> Vec<u32>;
    /// The tokens naming `node` at the start of a step. A node's value in the BFS analysis
    /// is the product of their probabilities, teacher-forced.
    fn node_tokens(&self, record: &Record, node: usize) -> Result<Vec<u32>>;
    /// Reads a greedy continuation (everything generated after `<eot>`).
    fn read_chain(&self, record: &Record, generated: &[u32]) -> Chain;
    /// Longest continuation worth decoding for this record.
    fn max_answer_tokens(&self, record: &Record) -> usize;
    /// How many hops from the root the node is that the first spelled step names after
    /// `thoughts` thoughts: the frontier a node value is read against.
    fn named_hop(&self, thoughts: usize) -> usize;
}

/// The built-in reasoner's compact format (`tokens::encode`): one token per node.
#[derive(Debug, Clone)]
pub struct BuiltinFormat {
    vocab: Vocab,
}

impl Default for BuiltinFormat {
    fn default() -> Self {
        Self {
            vocab: Vocab::prosqa(),
        }
    }
}

impl BuiltinFormat {
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn node_of(&self, record: &Record, token: u32) -> Option<usize> {
        let name = self.vocab.token(token)?;
        record.idx_to_symbol.iter().position(|s| s == name)
    }
}

impl QuestionFormat for BuiltinFormat {
    fn prompt(&self, record: &Record) -> Result<Vec<u32>> {
        Ok(encode(record, &self.vocab)?.prompt)
    }

    fn latent_tokens(&self) -> LatentTokens {
        LatentTokens::builtin()
    }

    fn step_opening(&self) -> Vec<u32> {
        Vec::new()
    }

    fn node_tokens(&self, record: &Record, node: usize) -> Result<Vec<u32>> {
        let name = record.idx_to_symbol.get(node).ok_or_else(|| {
            crate::Error::Invalid(format!("node {node} is out of range of idx_to_symbol"))
        })?;
        Ok(vec![self.vocab.id(name)?])
    }

    /// The last token before `<eos>` is the answer; the ones before it are steps.
    fn read_chain(&self, record: &Record, generated: &[u32]) -> Chain {
        let end = generated
            .iter()
            .position(|&t| t == EOS)
            .unwrap_or(generated.len());
        let spoken = &generated[..end];
        match spoken.split_last() {
            Some((&answer, steps)) => Chain {
                steps: steps.iter().map(|&t| self.node_of(record, t)).collect(),
                answer: self.node_of(record, answer),
            },
            None => Chain {
                steps: Vec::new(),
                answer: None,
            },
        }
    }

    fn max_answer_tokens(&self, record: &Record) -> usize {
        record.steps.len() + 4
    }

    /// After k thoughts (the first k steps latent) the next token names step k+1's node.
    fn named_hop(&self, thoughts: usize) -> usize {
        thoughts + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::prosqa::generate;

    #[test]
    fn the_builtin_format_reads_back_the_chain_it_was_trained_on() {
        let f = BuiltinFormat::default();
        let r = &generate(1, 3)[0];
        let enc = encode(r, f.vocab()).unwrap();
        let mut generated = enc.steps.clone();
        generated.extend(&enc.answer);
        let chain = f.read_chain(r, &generated);
        let path = r.graph().distances_from(r.root);
        assert_eq!(chain.answer, Some(r.target));
        assert_eq!(chain.steps.len(), r.steps.len());
        for (k, node) in chain.steps.iter().enumerate() {
            assert_eq!(path[node.unwrap()], Some(k + 1));
        }
        assert_eq!(f.prompt(r).unwrap(), enc.prompt);
        assert_eq!(f.node_tokens(r, r.target).unwrap(), vec![enc.answer[0]]);
        // A name that is not in this graph reads as a hallucinated node.
        let stranger = f
            .vocab()
            .id(crate::data::prosqa::CONCEPTS
                .iter()
                .find(|c| !r.idx_to_symbol.iter().any(|s| s == *c))
                .unwrap())
            .unwrap();
        assert_eq!(
            f.read_chain(r, &[stranger, enc.answer[0], EOS]).steps,
            vec![None]
        );
    }
}
