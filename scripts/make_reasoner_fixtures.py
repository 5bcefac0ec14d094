"""Reference fixtures for the reasoner's checkpoint loaders (tests/fixtures/reasoner/).

Writes two tiny random GPT-2 checkpoints in the layouts real tools save them, and the
outputs of an independent numpy GPT-2 forward pass on them:

* hf_gpt2_tiny/: a Hugging Face folder (config.json + model.safetensors) with the keys of
  the original `gpt2` upload (no `transformer.` prefix, `h.{i}.attn.bias` mask buffers).
* coconut_tiny.pth: a PyTorch zip-pickle state dict as facebookresearch/coconut saves it
  (`torch.save(model.state_dict())`): keys under `base_causallm.`, `lm_head.weight` and
  `embedding.weight` sharing the wte storage, 3 added latent tokens at the end of the
  vocabulary. (The vocabulary is shrunk from 50257 + 3 to 13 + 3 to keep the file small;
  the layout is the same.)
* *_expected.npz-like .npy files: logits and final hidden states (after ln_f) for fixed
  token ids, and for Coconut a latent-mode run (thoughts fed back, recomputed from scratch
  at every step, no KV cache).

Needs numpy only (no torch): the pickle is written with stand-in `torch` classes whose
module/qualname match what torch.save emits. Run: python3 scripts/make_reasoner_fixtures.py
"""

import collections
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "reasoner")


# ---------------------------------------------------------------- numpy GPT-2 reference
def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def gpt2_forward(p, cfg, embeds, patterns=None):
    """embeds: [T, D] input embeddings (no positions). Returns (hidden after ln_f, logits).
    A list given as `patterns` receives each layer's attention, [head, query, key]."""
    t, d = embeds.shape
    h_n = cfg["n_head"]
    hd = d // h_n
    eps = cfg["layer_norm_epsilon"]
    x = embeds + p["wpe.weight"][:t]
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(cfg["n_layer"]):
        g = lambda k: p[f"h.{i}.{k}"]
        a = layer_norm(x, g("ln_1.weight"), g("ln_1.bias"), eps)
        qkv = a @ g("attn.c_attn.weight") + g("attn.c_attn.bias")
        q, k, v = np.split(qkv, 3, axis=-1)
        heads, layer_patterns = [], []
        for h in range(h_n):
            s = slice(h * hd, (h + 1) * hd)
            sc = q[:, s] @ k[:, s].T / np.sqrt(hd) + mask
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            sc /= sc.sum(-1, keepdims=True)
            layer_patterns.append(sc)
            heads.append(sc @ v[:, s])
        if patterns is not None:
            patterns.append(np.stack(layer_patterns))
        z = np.concatenate(heads, -1)
        x = x + z @ g("attn.c_proj.weight") + g("attn.c_proj.bias")
        m = layer_norm(x, g("ln_2.weight"), g("ln_2.bias"), eps)
        m = gelu_tanh(m @ g("mlp.c_fc.weight") + g("mlp.c_fc.bias"))
        x = x + m @ g("mlp.c_proj.weight") + g("mlp.c_proj.bias")
    hidden = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"], eps)
    return hidden, hidden @ p["wte.weight"].T


def random_params(cfg, rng):
    d, v, n = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
    r = lambda *s: (rng.standard_normal(s) * 0.5).astype(np.float32)
    p = {"wte.weight": r(v, d), "wpe.weight": r(n, d)}
    for i in range(cfg["n_layer"]):
        for ln in ("ln_1", "ln_2"):
            p[f"h.{i}.{ln}.weight"] = (1 + r(d)).astype(np.float32)
            p[f"h.{i}.{ln}.bias"] = r(d)
        # Conv1D: [in, out], non-square so a transposed load cannot pass.
        p[f"h.{i}.attn.c_attn.weight"] = r(d, 3 * d)
        p[f"h.{i}.attn.c_attn.bias"] = r(3 * d)
        p[f"h.{i}.attn.c_proj.weight"] = r(d, d)
        p[f"h.{i}.attn.c_proj.bias"] = r(d)
        p[f"h.{i}.mlp.c_fc.weight"] = r(d, 4 * d)
        p[f"h.{i}.mlp.c_fc.bias"] = r(4 * d)
        p[f"h.{i}.mlp.c_proj.weight"] = r(4 * d, d)
        p[f"h.{i}.mlp.c_proj.bias"] = r(d)
    p["ln_f.weight"] = (1 + r(d)).astype(np.float32)
    p["ln_f.bias"] = r(d)
    return p


# ---------------------------------------------------------------- writers
def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        b = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def fake_torch():
    """Stand-ins so that pickle emits `torch._utils._rebuild_tensor_v2` and
    `torch.FloatStorage`, as torch.save does."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: we only write
        raise NotImplementedError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2

    class FloatStorage:
        pass

    FloatStorage.__module__ = "torch"
    FloatStorage.__qualname__ = "FloatStorage"
    torch.FloatStorage = FloatStorage
    torch._utils = utils
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils
    return utils._rebuild_tensor_v2, FloatStorage


class Storage:
    def __init__(self, key, arr):
        self.key, self.arr = key, np.ascontiguousarray(arr, dtype=np.float32)


class Tensor:
    def __init__(self, storage, rebuild):
        self.storage, self.rebuild = storage, rebuild

    def __reduce__(self):
        shape = self.storage.arr.shape
        stride = tuple(int(s // 4) for s in self.storage.arr.strides)
        return (self.rebuild, (self.storage, 0, shape, stride, False, collections.OrderedDict()))


def write_pth(path, named_storages):
    """named_storages: list of (name, Storage); several names may share one Storage."""
    rebuild, float_storage = fake_torch()

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", float_storage, obj.key, "cpu", obj.arr.size)
            return None

    state = collections.OrderedDict((n, Tensor(s, rebuild)) for n, s in named_storages)
    buf = io.BytesIO()
    P(buf, protocol=2).dump(state)
    storages = {s.key: s for _, s in named_storages}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, s in storages.items():
            z.writestr(f"archive/data/{key}", s.arr.tobytes())
        z.writestr("archive/version", "3\n")


# ---------------------------------------------------------------- fixtures
def hf_fixture(rng):
    cfg = dict(n_embd=8, n_layer=2, n_head=2, n_positions=16, vocab_size=11, layer_norm_epsilon=1e-5)
    p = random_params(cfg, rng)
    folder = os.path.join(OUT, "hf_gpt2_tiny")
    os.makedirs(folder, exist_ok=True)
    full_cfg = dict(cfg, model_type="gpt2", activation_function="gelu_new", n_inner=None,
                    architectures=["GPT2LMHeadModel"], n_ctx=cfg["n_positions"])
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(full_cfg, f, indent=2)
    tensors = dict(p)
    n = cfg["n_positions"]
    for i in range(cfg["n_layer"]):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((n, n), np.float32))[None, None]
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors)
    ids = np.array([1, 5, 2, 9, 10, 3, 3, 0, 7], np.int64)
    hidden, logits = gpt2_forward(p, cfg, p["wte.weight"][ids])
    np.save(os.path.join(OUT, "hf_gpt2_tiny_ids.npy"), ids)
    np.save(os.path.join(OUT, "hf_gpt2_tiny_hidden.npy"), hidden.astype(np.float32))
    np.save(os.path.join(OUT, "hf_gpt2_tiny_logits.npy"), logits.astype(np.float32))


def coconut_fixture(rng):
    # 13 "GPT-2" tokens + <|start-latent|>, <|end-latent|>, <|latent|> (ids 13, 14, 15);
    # head dim 64 / 8 like GPT-2's is not needed: the loader is told n_head.
    cfg = dict(n_embd=8, n_layer=2, n_head=2, n_positions=24, vocab_size=16, layer_norm_epsilon=1e-5)
    p = random_params(cfg, rng)
    storages, named = {}, []
    for i, (k, arr) in enumerate(p.items()):
        storages[k] = Storage(str(i), arr)
        named.append((f"base_causallm.transformer.{k}", storages[k]))
    named.append(("base_causallm.lm_head.weight", storages["wte.weight"]))
    named.append(("embedding.weight", storages["wte.weight"]))
    write_pth(os.path.join(OUT, "coconut_tiny.pth"), named)

    bot, eot = 13, 14
    prompt = [1, 4, 2, 9, 6, 11, 3, bot]
    wte = p["wte.weight"]
    embeds = wte[prompt]
    thoughts = []
    for _ in range(3):
        hidden, _ = gpt2_forward(p, cfg, embeds)
        thoughts.append(hidden[-1])
        embeds = np.concatenate([embeds, hidden[-1:]], 0)
    embeds = np.concatenate([embeds, wte[[eot]]], 0)
    hidden, logits = gpt2_forward(p, cfg, embeds)
    np.save(os.path.join(OUT, "coconut_tiny_prompt.npy"), np.array(prompt, np.int64))
    np.save(os.path.join(OUT, "coconut_tiny_thoughts.npy"), np.stack(thoughts).astype(np.float32))
    np.save(os.path.join(OUT, "coconut_tiny_logits.npy"), logits.astype(np.float32))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20241209)
    hf_fixture(rng)
    coconut_fixture(rng)
