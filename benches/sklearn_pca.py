"""scikit-learn PCA on the same data as `latentlens bench reduce` (analysis::pca::bench_pca).

The matrix is rebuilt from the same counter-based generator (splitmix64 of seed and index,
see `bench_uniform` / `bench_matrix` in src/analysis/pca.rs), so both sides fit identical
inputs up to float rounding of the mixing product. One timed fit, as on the Rust side.

    python benches/sklearn_pca.py --rows 20000 --width 768 --components 50 --seed 0
"""
import argparse
import json
import time

import numpy as np
from sklearn.decomposition import PCA

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def bench_uniform(seed, index):
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as in Rust
        return _bench_uniform(seed, index)


def _bench_uniform(seed, index):
    z = np.uint64(seed) * GOLDEN + index.astype(np.uint64) + GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return ((z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)) - np.float32(0.5)


def bench_matrix(rows, width, seed, rank=64):
    idx = np.arange(rows * rank, dtype=np.uint64)
    lat = bench_uniform(seed, idx).reshape(rows, rank)
    lat /= np.sqrt(1.0 + np.arange(rank, dtype=np.float32))
    idx = np.uint64(1 << 40) + np.arange(rank * width, dtype=np.uint64)
    mix = bench_uniform(seed, idx).reshape(rank, width)
    idx = np.uint64(1 << 41) + np.arange(rows * width, dtype=np.uint64)
    noise = bench_uniform(seed, idx).reshape(rows, width)
    return (lat @ mix + np.float32(0.1) * noise).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--components", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    x = bench_matrix(a.rows, a.width, a.seed)
    c0 = time.process_time()
    t0 = time.perf_counter()
    pca = PCA(n_components=a.components).fit(x)
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    ratio = pca.explained_variance_ratio_
    print(json.dumps({
        "rows": a.rows, "width": a.width, "components": a.components, "seed": a.seed,
        "svd_solver": pca._fit_svd_solver,
        "seconds_fit": secs,
        "cpu_seconds_fit": cpu,
        "explained_ratio_top": float(ratio[0]),
        "cumulative_ratio_kept": float(ratio.sum()),
    }, indent=2))


if __name__ == "__main__":
    main()
