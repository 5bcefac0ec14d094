# %% [markdown]
# # Has the built-in reasoner learned the edge lookup?
#
# Every step of a breadth-first search over `| A B |` edges is one lookup: "which nodes are
# children of the node(s) I hold?". A 2-layer transformer does it with two heads (Zhu et
# al. 2025): in layer 0 each edge's `B` attends to the token before it and takes in its
# source `A`; in layer 1 the reading position attends to the `B`s whose source is the node
# it holds. Attention patterns change width at every pass and are not recorded by
# `record reasoner`, so this notebook runs the prompt through an independent numpy
# forward of a saved model (config.json + model.safetensors) and measures both heads on
# the first 50 real questions:
#
# - layer 0: attention from each edge's `B` to its `A` (chance is about 1/position);
# - layer 1: attention from `<eot>` (read right after the root) to the `B`s of the root's
#   edges, to the other `B`s, and the probability the model puts on the root's children.
#
#     python notebooks/reasoner_lookup_circuit.py weights/reasoner/coconut/model
#
# The vocabulary lists mirror `src/data/prosqa.rs` (`PERSONS`, `CONCEPTS`) and
# `src/reasoner/tokens.rs` (the specials): keep them in step.

# %%
import json
import struct
import sys

import numpy as np

sys.path.insert(0, "scripts")
from make_reasoner_fixtures import gpt2_forward  # noqa: E402

SPECIALS = ["<pad>", "<bos>", "<eos>", "<bot>", "<eot>", "<thought>", "|", "?"]
PERSONS = "Alex Bob Carol Davis Eva Fae Gabriel Jack Max Oliver Polly Rex Sally Sam Stella Tom Wren"
CONCEPTS = (
    "bompus boompus brimpus chorpus dumpus felpus fompus gerpus gorpus grimpus gwompus hilpus "
    "impus jelpus jompus kerpus lempus lorpus numpus quimpus rempus rompus rorpus scrompus "
    "shumpus sterpus storpus terpus timpus tumpus vumpus worpus wumpus yerpus yimpus yumpus "
    "zhorpus zumpus"
)
VOCAB = SPECIALS + PERSONS.split() + CONCEPTS.split()
ID = {t: i for i, t in enumerate(VOCAB)}
EDGES_START = 6  # after `<bos> ? root X Y |`


def load_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for key, v in header.items():
        if key == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[key.removeprefix("transformer.")] = np.frombuffer(
            raw[8 + n + a : 8 + n + b], dtype=np.float32
        ).reshape(v["shape"])
    return out


def encode_prompt(record):
    """`<bos> ? root X Y | A B | ... <bot> root`, as `tokens::encode` builds it."""
    sym = record["idx_to_symbol"]
    words = record["question"].rstrip("?").split("Is ")[-1].split()
    x, y = words[2], words[4]
    ids = [ID["<bos>"], ID["?"], ID[sym[record["root"]]], ID[x], ID[y], ID["|"]]
    for a, b in record["edges"]:
        ids += [ID[sym[a]], ID[sym[b]], ID["|"]]
    return ids + [ID["<bot>"], ID[sym[record["root"]]]]


def forward(w, config, ids):
    """Logits of every position and each layer's attention pattern [head, query, key], by
    the numpy GPT-2 that also makes the checkpoint loaders' test fixtures."""
    patterns = []
    _, logits = gpt2_forward(w, config, w["wte.weight"][ids], patterns)
    return logits, patterns


# %%
model = sys.argv[1] if len(sys.argv) > 1 else "weights/reasoner/coconut/model"
data = sys.argv[2] if len(sys.argv) > 2 else "../shared/data/prosqa_valid.json"
config = json.load(open(f"{model}/config.json"))
weights = load_safetensors(f"{model}/model.safetensors")
records = json.load(open(data))[:50]

n_head = config["n_head"]
to_source = np.zeros(n_head)
lookup = np.zeros((n_head, 2))
children_mass = []
for r in records:
    ids = encode_prompt(r) + [ID["<eot>"]]
    logits, patterns = forward(weights, config, ids)
    eot = len(ids) - 1
    b_at = [EDGES_START + 3 * e + 1 for e in range(len(r["edges"]))]
    root_b = [b for b, (a, _) in zip(b_at, r["edges"]) if a == r["root"]]
    other_b = [b for b in b_at if b not in root_b]
    to_source += [np.mean([patterns[0][h, b, b - 1] for b in b_at]) for h in range(n_head)]
    last = patterns[-1]
    lookup += [[last[h, eot, root_b].sum(), last[h, eot, other_b].sum()] for h in range(n_head)]
    p = np.exp(logits[eot] - logits[eot].max())
    p /= p.sum()
    kids = {ID[r["idx_to_symbol"][b]] for a, b in r["edges"] if a == r["root"]}
    children_mass.append(sum(p[k] for k in kids))

# %% [markdown]
# A learned lookup shows as layer-0 heads near 1 on "B -> its A" and last-layer heads
# that put most of `<eot>`'s attention on the root's `B`s (2 of ~36 edges), not spread
# over all of them.

# %%
print("layer 0, attention from each B to its A, by head:", np.round(to_source / len(records), 3))
print("last layer, <eot> attention on [B of the root's edges, other Bs], by head:")
print(np.round(lookup / len(records), 3))
print(f"probability on the root's children after 0 thoughts: {np.mean(children_mass):.3f}")

# %% [markdown]
# ## Does the lookup carry through the thoughts?
#
# After k thoughts the search holds F_k, the nodes k hops from the root, and the next hop is
# the same lookup with the thought as its query. Thought k is the hidden state (after
# `ln_f`) of the pass before it, fed back as an input embedding. For k = 1, 2 this runs the
# thoughts by recomputing the whole prefix (no cache) and measures:
#
# - how close thought k is to the sum of F_k's token embeddings (cosine; the tied
#   embeddings make "holding F_k" mean exactly that direction);
# - the last layer's attention on the `B`s of F_k's edges, from `<eot>` read after the
#   thought and from the thought's own pass (whose output is thought k + 1);
# - the probability both put on F_{k+1}.


# %%
def depths(record):
    """Shortest distance from the root to every node it reaches (breadth-first)."""
    d = {record["root"]: 0}
    queue = [record["root"]]
    while queue:
        a = queue.pop(0)
        for x, y in record["edges"]:
            if x == a and y not in d:
                d[y] = d[a] + 1
                queue.append(y)
    return d


def softmax(z):
    p = np.exp(z - z.max())
    return p / p.sum()


wte = weights["wte.weight"]
hops = {k: {"cos": [], "eot_attn": [], "pass_attn": [], "eot_mass": [], "pass_mass": []} for k in (1, 2)}
for r in records:
    sym = r["idx_to_symbol"]
    depth = depths(r)
    embeds = wte[encode_prompt(r)]
    b_at = [EDGES_START + 3 * e + 1 for e in range(len(r["edges"]))]
    for k in (1, 2):
        hidden, _ = gpt2_forward(weights, config, embeds)
        thought = hidden[-1]
        f_k = [ID[sym[v]] for v in depth if depth[v] == k]
        f_next = [ID[sym[v]] for v in depth if depth[v] == k + 1]
        s = wte[f_k].sum(0)
        hops[k]["cos"].append(thought @ s / np.linalg.norm(thought) / np.linalg.norm(s))
        embeds = np.vstack([embeds, thought[None]])
        patterns = []
        _, logits = gpt2_forward(weights, config, np.vstack([embeds, wte[[ID["<eot>"]]]]), patterns)
        at_pass, at_eot = len(embeds) - 1, len(embeds)
        f_k_b = [b for b, (a, _) in zip(b_at, r["edges"]) if depth.get(a) == k]
        last = patterns[-1]
        hops[k]["eot_attn"].append(last[:, at_eot, f_k_b].sum(-1))
        hops[k]["pass_attn"].append(last[:, at_pass, f_k_b].sum(-1))
        if f_next:
            hops[k]["eot_mass"].append(softmax(logits[at_eot])[f_next].sum())
            hops[k]["pass_mass"].append(softmax(logits[at_pass])[f_next].sum())

# %% [markdown]
# A search that works in superposition shows attention on F_k's `B`s near the root
# lookup's (0.9 and more after stage 0) and most of the probability on F_{k+1}.

# %%
for k, s in hops.items():
    print(
        f"k={k}: cos(thought, sum of F_k embeddings) {np.mean(s['cos']):.2f}; "
        f"last-layer attention on F_k's Bs by head: <eot> {np.round(np.mean(s['eot_attn'], 0), 2)}, "
        f"thought pass {np.round(np.mean(s['pass_attn'], 0), 2)}; "
        f"mass on F_(k+1): <eot> {np.mean(s['eot_mass']):.2f}, thought pass {np.mean(s['pass_mass']):.2f}"
    )
