#!/usr/bin/env bash
# Experiment: where in the latent diffusion pipeline are the shape factors decodable, and how
# much of it survives each stage? Records a run (or resumes it), then probes, reduces and
# measures information loss. Usage: bash probes/shape_factors.sh [RUN_DIR] [SAMPLES]
set -euo pipefail
run=${1:-reports/shape-factors}
samples=${2:-512}
ll() { cargo run --quiet -- "$@"; }

# Every site at 10 evenly spaced steps of 50 (img2img at strength 0.6 runs 30 of them).
ll record diffusion --run "$run" --samples "$samples" --steps 0..30:3 --seed 0

# Which factor is linearly decodable where: shape (3 classes), position, size, colour.
ll probe --run "$run" --sites 'image,vae.encoder.mean,latent,unet.mid_block,x0_pred' \
  --label shape --label x --label scale --label hue --permutations 20

# The h-space and the VAE latent in two dimensions.
ll reduce --run "$run" --sites unet.mid_block --steps last --method pca --color-by shape_name
ll reduce --run "$run" --sites unet.mid_block --steps last --method umap --color-by shape_name

# Reconstruction, CKA, mutual information, and retention relative to the VAE latent.
ll infoloss --run "$run" --labels shape,x,scale --retention-from vae.encoder.mean
