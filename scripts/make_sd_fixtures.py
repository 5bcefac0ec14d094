#!/usr/bin/env python3
"""Builds the tiny random Stable Diffusion pipelines in tests/fixtures/sd/ and the reference
outputs our Rust implementation is tested against (tests/sd.rs).

Run by hand, not in CI (CI needs no torch: the outputs are committed):

    pip install torch diffusers transformers safetensors
    python scripts/make_sd_fixtures.py

Two pipelines, each in diffusers' folder layout (model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/):

- v1: SD 1.x shapes in miniature: f32 weights, epsilon prediction, conv proj_in/proj_out,
  an int `attention_head_dim` that diffusers reads as the number of heads, quick_gelu CLIP,
  prompts padded with <|endoftext|>, DDIM with "leading" spacing and steps_offset 1.
- v2: SD 2.x shapes (prompts of 32 tokens instead of 77, to keep the files small): f16 weights (references computed by diffusers from the same f16 weights
  upcast to f32), v-prediction, linear proj_in/proj_out, a per-block `attention_head_dim`
  list, upcast_attention, gelu CLIP, prompts padded with "!", "trailing" spacing.

Every norm's gain and bias and every bias is randomised, so a missing bias, a swapped norm
or a wrong epsilon shows. Each folder gets `reference.safetensors` (every tensor the tests
compare) and `reference.json` (prompts, token ids, timesteps of every scheduler and spacing).
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import AttnProcessor
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "sd")

WORDS = (
    "a photo of an astronaut riding horse on the moon red square blue circle green triangle "
    "left right small big cat dog painting by in style high quality blurry ugly"
).split()

PROMPTS = [
    "a photo of a cat",
    "",
    "A red SQUARE, on the left!!  small",
    "an astronaut riding a horse on the moon, painting in the style of a cat " * 6,
    "unknown wörds zebra 42",
]


def bytes_to_unicode():
    """GPT-2's byte -> printable character table, as CLIP uses it."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def make_vocab(folder):
    """A CLIP-style byte-level BPE vocabulary small enough to commit: the 256 byte symbols,
    the same with </w>, merges that build WORDS, then the two special tokens."""
    base = list(bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base]
    merges = []
    for word in WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pair = f"{symbols[0]} {symbols[1]}"
            merged = symbols[0] + symbols[1]
            if pair not in merges:
                merges.append(pair)
                vocab.append(merged)
            symbols = [merged] + symbols[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


def randomise(module, gen):
    """Norm gains near 1, every bias nonzero, so that each shows in the outputs."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            is_norm = isinstance(owner, (torch.nn.GroupNorm, torch.nn.LayerNorm))
            if leaf == "bias":
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif is_norm and leaf == "weight":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))


class ProbsProcessor(AttnProcessor):
    """diffusers' plain attention processor that also keeps the cross-attention
    probabilities, head-averaged, as [B, tokens, h, w]."""

    def __init__(self, name, store):
        super().__init__()
        self.name = name
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        b, n, _ = hidden_states.shape
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        probs = attn.get_attention_scores(q, k, None)  # [B*heads, HW, tokens]
        probs = probs.reshape(b, attn.heads, n, -1).mean(1).permute(0, 2, 1)
        side = int(round(n**0.5))
        self.store.setdefault(self.name, []).append(probs.reshape(b, -1, side, side).clone())
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def build(name, v2):
    folder = os.path.join(ROOT, name)
    shutil.rmtree(folder, ignore_errors=True)
    gen = torch.Generator().manual_seed(1 if not v2 else 2)
    torch.manual_seed(10 if not v2 else 20)

    tok_dir = os.path.join(folder, "tokenizer")
    vocab_size = make_vocab(tok_dir)
    pad = "!" if v2 else "<|endoftext|>"
    # v2 also shows that the prompt length comes from the configs, not a constant 77.
    max_length = 32 if v2 else 77
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, pad_token=pad, model_max_length=max_length)

    text_config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        hidden_act="gelu" if v2 else "quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=16,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=1,
    )
    text_encoder = CLIPTextModel(text_config)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1 if not v2 else 2,
        norm_num_groups=4,
        cross_attention_dim=16,
        attention_head_dim=2 if not v2 else [2, 4],
        use_linear_projection=v2,
        upcast_attention=v2,
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.7,
    )
    for m in (text_encoder, unet, vae):
        randomise(m, gen)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if v2 else "epsilon",
        timestep_spacing="trailing" if v2 else "leading",
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if v2:
        pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    # The tokenizer folder holds tokenizer.json and vocab.json + merges.txt; the tests read
    # both routes.
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    references(pipe, folder)


def references(pipe, folder):
    ref = {}
    meta = {"prompts": PROMPTS, "diffusers": diffusers.__version__, "transformers": transformers.__version__}
    gen = torch.Generator().manual_seed(3)

    # Tokenizer ids, as the pipeline pads and truncates them.
    n = pipe.tokenizer.model_max_length
    ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=n, truncation=True).input_ids
    meta["token_ids"] = ids

    with torch.no_grad():
        # The encoder's outputs for the first three prompts (kept small); ids for all.
        out = pipe.text_encoder(torch.tensor(ids[:3]), output_hidden_states=True)
        ref["text_encoder.last_hidden_state"] = out.last_hidden_state
        for i, h in enumerate(out.hidden_states[1:]):
            ref[f"text_encoder.layers.{i}"] = h

        # VAE: posterior of a random image; decoder of a random latent.
        image = torch.rand((2, 3, 16, 16), generator=gen) * 2 - 1
        ref["vae.image"] = image
        posterior = pipe.vae.encode(image).latent_dist
        ref["vae.encoder.mean"] = posterior.mean
        ref["vae.encoder.logvar"] = posterior.logvar
        z = torch.randn((2, 4, 8, 8), generator=gen)
        ref["vae.z"] = z
        ref["vae.decoder.out"] = pipe.vae.decode(z).sample

        # UNet: one pass, every block output and every cross-attention map.
        unet = pipe.unet
        sample = torch.randn((2, 4, 8, 8), generator=gen)
        timesteps = torch.tensor([981, 37])
        context = out.last_hidden_state[:2]
        ref["unet.sample"] = sample
        ref["unet.timesteps"] = timesteps.float()
        ref["unet.context"] = context
        hooks = []

        def keep(site):
            def hook(_module, _inputs, output):
                ref[site] = output[0] if isinstance(output, tuple) else output

            return hook

        for i, block in enumerate(unet.down_blocks):
            hooks.append(block.register_forward_hook(keep(f"unet.down_blocks.{i}")))
        hooks.append(unet.mid_block.register_forward_hook(keep("unet.mid_block")))
        for i, block in enumerate(unet.up_blocks):
            hooks.append(block.register_forward_hook(keep(f"unet.up_blocks.{i}")))
        store = {}
        processors = {}
        for key in unet.attn_processors:
            site = "unet." + key.replace(".transformer_blocks.0", "").removesuffix(".processor")
            if key.endswith("attn2.processor"):
                assert ".transformer_blocks.0." in key
                processors[key] = ProbsProcessor(site, store)
            else:
                processors[key] = AttnProcessor()
        unet.set_attn_processor(processors)
        ref["unet.out"] = unet(sample, timesteps, encoder_hidden_states=context).sample
        for h in hooks:
            h.remove()
        for site, maps in store.items():
            (m,) = maps
            ref[site] = m
            # The pooled form recorded when a map is larger than the grid: 2x2 average.
            ref[site + ".pool2"] = torch.nn.functional.avg_pool2d(m, 2)
        meta["attention_sites"] = sorted(store)

        # Scheduler timesteps for every spacing (the tests check ours against them).
        meta["timesteps"] = {}
        for cls in (DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler):
            for spacing in ("leading", "trailing", "linspace"):
                for n in (4, 7, 50):
                    s = cls.from_config(pipe.scheduler.config, timestep_spacing=spacing)
                    s.set_timesteps(n)
                    entry = {"timesteps": [float(t) for t in s.timesteps]}
                    if hasattr(s, "sigmas"):
                        entry["sigmas"] = [float(x) for x in s.sigmas]
                    entry["init_noise_sigma"] = float(s.init_noise_sigma)
                    meta["timesteps"][f"{cls.__name__}/{spacing}/{n}"] = entry

    # Whole loops through diffusers' pipeline: latents, model output (after guidance), x0 and
    # the next latents per step; the decoded image.
    loops = {}
    latents0 = torch.randn((2, 4, 8, 8), generator=gen)
    ref["loop.latents"] = latents0
    for cls in (DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler):
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
        name = cls.__name__
        steps = []
        sched = pipe.scheduler
        original = sched.step
        noises = []

        if cls is EulerAncestralDiscreteScheduler:
            import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea

            real = ea.randn_tensor

            def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
                z = real(shape, generator=gen, device=device, dtype=dtype)
                noises.append(z.clone())
                return z

            ea.randn_tensor = fake_randn

        def step(model_output, timestep, sample, *args, **kwargs):
            kwargs["return_dict"] = True
            out = original(model_output, timestep, sample, *args, **kwargs)
            # DPM-Solver keeps its x0 prediction (the converted model output) in model_outputs.
            x0 = getattr(out, "pred_original_sample", None)
            if x0 is None:
                x0 = sched.model_outputs[-1]
            steps.append((sample.clone(), model_output.clone(), x0.clone(), out.prev_sample.clone(), float(timestep)))
            return out

        pipe.scheduler.step = step
        decoded = {}
        h = pipe.vae.decoder.register_forward_hook(lambda m, i, o: decoded.__setitem__("out", o))
        with torch.no_grad():
            pipe(
                prompt=PROMPTS[:2] if name != "DDIMScheduler" else [PROMPTS[0], PROMPTS[2]],
                negative_prompt=None if name != "DDIMScheduler" else ["blurry", "ugly painting"],
                num_inference_steps=4,
                guidance_scale=3.0,
                latents=latents0.clone(),
                output_type="pt",
            )
        h.remove()
        if cls is EulerAncestralDiscreteScheduler:
            ea.randn_tensor = real
        for k, (x, eps, x0, prev, _t) in enumerate(steps):
            ref[f"loop.{name}.{k}.latent"] = x
            ref[f"loop.{name}.{k}.model_output"] = eps
            ref[f"loop.{name}.{k}.x0"] = x0
            ref[f"loop.{name}.{k}.prev"] = prev
            if noises:
                ref[f"loop.{name}.{k}.noise"] = noises[k]
        ref[f"loop.{name}.decoded"] = decoded["out"]
        loops[name] = {
            "timesteps": [s[4] for s in steps],
            "prompts": PROMPTS[:2] if name != "DDIMScheduler" else [PROMPTS[0], PROMPTS[2]],
            "negative_prompts": None if name != "DDIMScheduler" else ["blurry", "ugly painting"],
            "guidance": 3.0,
            "steps": 4,
            "init_noise_sigma": float(pipe.scheduler.init_noise_sigma),
        }
    meta["loops"] = loops

    ref = {k: v.detach().float().contiguous().clone() for k, v in ref.items()}
    save_file(ref, os.path.join(folder, "reference.safetensors"))
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)


def main():
    torch.set_num_threads(2)
    build("v1", v2=False)
    build("v2", v2=True)
    total = 0
    for dirpath, _, files in os.walk(ROOT):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    print(f"fixtures in {ROOT}: {total / 1e6:.2f} MB")
    if total > 2e6:
        sys.exit("fixtures are larger than 2 MB")


if __name__ == "__main__":
    main()
