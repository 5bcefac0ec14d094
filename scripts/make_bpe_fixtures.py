"""Reference fixtures for the GPT-2 byte-level BPE tokenizer (tests/fixtures/bpe/).

Trains a small byte-level BPE with Hugging Face `tokenizers` (the library behind
GPT2TokenizerFast, used here as the independent reference) on ProsQA text plus some tricky
strings, saves it the way a Hugging Face tokenizer folder holds GPT-2's (vocab.json +
merges.txt), then reloads it like the Coconut reference code does (GPT-2's
`<|endoftext|>` special, then `add_tokens` of the three latent tokens, appended after the
vocabulary) and writes the ids it gives for a list of strings to expected.json.

Needs `pip install tokenizers` (works offline). Run: python3 scripts/make_bpe_fixtures.py
"""

import json
import os

from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.implementations import ByteLevelBPETokenizer
from tokenizers.models import BPE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "bpe")
PROSQA = "/work/shared/data/prosqa_valid.json"
VOCAB_SIZE = 500
LATENT = ["<|start-latent|>", "<|end-latent|>", "<|latent|>"]

TRICKY = [
    "I'm sure it's fine, isn't it? They'll say we've done what you'd do; they're right.",
    "IT'S LOUD: DON'T SHOUT",
    "Numbers: 0 1 12 123 1234 3.14159 2024-12-31 1,000,000 x2 v1.2.3",
    "Punctuation!!! ... ?!? (a) [b] {c} <d> \"quoted\" 'single' -- #hashtag @user $5 %",
    "Spaces:  two   three    four     five.",
    "Trailing spaces   ",
    "   leading spaces",
    "Newlines\nand\n\nblank lines\n\n\nend\n",
    "Tabs\tand\t\ttabs \t mixed\r\nwindows",
    "café naïve résumé 東京 ὕβρις Ωμέγα ünïcödé",
    "emoji 🙂 and 👍🏽 and ½ ² ٣",
]

CASES = [
    "",
    " ",
    "Every wumpus is a yumpus.",
    "Tom is a wumpus.",
    "### Tom is a lempus.",
    "Is Tom a lempus or scrompus?\n",
    "I'm sure it's fine, isn't it? They'll say we've done what you'd do; they're right.",
    "IT'S LOUD: DON'T SHOUT",
    "rock'n'roll ''s '''",
    "Numbers: 0 1 12 123 1234 3.14159 2024-12-31 1,000,000 x2 v1.2.3",
    "Punctuation!!! ... ?!? (a) [b] {c} <d> \"quoted\" -- #hashtag @user $5 %",
    "Spaces:  two   three    four     five.",
    "Trailing spaces   ",
    "   leading spaces",
    "Newlines\nand\n\nblank lines\n\n\nend\n",
    "Tabs\tand\t\ttabs \t mixed\r\nwindows",
    "café naïve résumé 東京 ὕβρις",
    "emoji 🙂 and 👍🏽 and ½ ² ٣",
    "unseen words: xylophone quizzically",
    "Q\n<|start-latent|><|latent|><|latent|><|end-latent|>Every lempus",
    "a<|latent|>b <|latent|> c<|endoftext|>",
    "<|latent",
]


def prosqa_text(records):
    for r in records:
        yield r["question"] + "\n"
        for s in r["steps"]:
            yield s + "\n"
        yield "### " + r["answer"]


def coconut_sequence(r):
    """A record as Coconut's get_cot_latent_dataset lays it out, with 2 latent thoughts."""
    return (
        r["question"]
        + "\n"
        + "<|start-latent|><|latent|><|latent|><|end-latent|>"
        + "".join(s + "\n" for s in r["steps"][2:])
        + "### "
        + r["answer"]
    )


def main():
    records = json.load(open(PROSQA, encoding="utf-8"))
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(
        list(prosqa_text(records)) + TRICKY * 20,
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    os.makedirs(OUT, exist_ok=True)
    trainer.save_model(OUT)

    # Reload from the saved files only, as GPT2TokenizerFast would.
    tok = Tokenizer(
        BPE.from_file(os.path.join(OUT, "vocab.json"), os.path.join(OUT, "merges.txt"))
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    n_vocab = tok.get_vocab_size()
    tok.add_tokens(LATENT)
    latent_ids = [tok.token_to_id(t) for t in LATENT]
    assert latent_ids == [n_vocab, n_vocab + 1, n_vocab + 2], latent_ids

    strings = CASES + [coconut_sequence(r) for r in records[:3]]
    cases = []
    for s in strings:
        ids = tok.encode(s).ids
        assert tok.decode(ids, skip_special_tokens=False) == s, s
        pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(s)]
        cases.append({"text": s, "ids": ids, "pieces": pieces})
    # Pieces are GPT-2's pre-tokenisation in byte-level form; added tokens are split off
    # before it, so strings holding them are left out of that comparison by the test.
    expected = {
        "vocab_size": n_vocab,
        "latent_ids": latent_ids,
        "eos_id": tok.token_to_id("<|endoftext|>"),
        "tokenizers_version": __import__("tokenizers").__version__,
        "cases": cases,
        # Real records for the Coconut format tests (CI has no access to the data folder).
        "records": records[:3],
    }
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
    print(f"vocab {n_vocab}, {len(cases)} cases -> {OUT}")


if __name__ == "__main__":
    main()
