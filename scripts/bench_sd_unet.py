#!/usr/bin/env python3
"""One UNet step of a full-size Stable Diffusion 1.5 UNet, diffusers on torch CPU against
latentlens, on the same random weights and inputs, in the same session.

    pip install torch diffusers safetensors
    cargo build --release
    python scripts/bench_sd_unet.py [--dir /tmp/sd15-bench] [--repeats 3]

Makes (once; not committed, 3.4 GB) a UNet2DConditionModel with SD 1.5's config and random
weights in DIR/unet, writes the inputs and diffusers' output to DIR/bench_io.safetensors,
times diffusers, then runs `latentlens bench sd-unet --model-dir DIR` and prints both times,
their ratio (latentlens / diffusers; below 1 is faster) and the largest output difference.
Batch 2 (a guided step), 64x64 latents (512x512 images), 77 tokens.
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import torch
from safetensors.torch import save_file

from diffusers import UNet2DConditionModel

SD15 = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=[320, 640, 1280, 1280],
    center_input_sample=False,
    cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=4,
    layers_per_block=2,
    mid_block_scale_factor=1,
    norm_eps=1e-05,
    norm_num_groups=32,
    out_channels=4,
    sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/sd15-bench")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latentlens", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "latentlens"))
    args = ap.parse_args()
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    unet_dir = os.path.join(args.dir, "unet")
    if not os.path.exists(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors")):
        torch.manual_seed(0)
        UNet2DConditionModel(**SD15).save_pretrained(unet_dir, safe_serialization=True)
    unet = UNet2DConditionModel.from_pretrained(unet_dir).eval()
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn((2, 4, 64, 64), generator=gen)
    timesteps = torch.tensor([500.0, 500.0])
    context = torch.randn((2, 77, 768), generator=gen)
    times = []
    with torch.no_grad():
        out = unet(sample, timesteps, encoder_hidden_states=context).sample  # warm-up
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = unet(sample, timesteps, encoder_hidden_states=context).sample
            times.append(time.perf_counter() - t)
    save_file(
        {"sample": sample, "timesteps": timesteps, "context": context, "out": out.contiguous()},
        os.path.join(args.dir, "bench_io.safetensors"),
    )
    diffusers_s = statistics.median(times)
    del unet
    res = subprocess.run(
        [args.latentlens, "bench", "sd-unet", "--model-dir", args.dir, "--repeats", str(args.repeats)],
        check=True,
        capture_output=True,
        text=True,
    )
    ours = json.loads(res.stdout.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "threads": threads,
                "torch": torch.__version__,
                "diffusers_unet_step_s": diffusers_s,
                "diffusers_times_s": times,
                **ours,
                "ratio_latentlens_over_diffusers": ours["latentlens_unet_step_s"] / diffusers_s,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
