"""umap-learn on the same data as `latentlens bench reduce` (analysis::umap::bench_umap):
`clusters` Gaussian blobs rebuilt from the same counter generator as
`bench_clusters` in src/analysis/umap.rs. Default UMAP parameters, one seeded run
(random_state makes umap-learn single-threaded, like ours), timed after a warm-up fit so
numba compilation is not counted. Trustworthiness at k = 15 by sklearn.

    python benches/umap_learn.py --rows 5000 --width 50 --clusters 10 --seed 0
"""
import argparse
import json
import time
import warnings

import numpy as np

from sklearn_pca import bench_uniform


def bench_clusters(rows, width, clusters, seed):
    centres = np.float32(10.0) * bench_uniform(seed, np.arange(clusters * width, dtype=np.uint64))
    centres = centres.reshape(clusters, width)
    m = np.arange(rows * width, dtype=np.uint64)
    base = np.uint64(1 << 40)
    u1 = 0.5 - bench_uniform(seed, base + np.uint64(2) * m).astype(np.float64)
    u2 = bench_uniform(seed, base + np.uint64(2) * m + np.uint64(1)).astype(np.float64) + 0.5
    z = (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)
    labels = np.arange(rows) % clusters
    return centres[labels] + z.reshape(rows, width), labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--width", type=int, default=50)
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import umap
    from sklearn.manifold import trustworthiness

    x, _ = bench_clusters(a.rows, a.width, a.clusters, a.seed)
    warnings.filterwarnings("ignore")
    # numba JIT warm-up on the same size (above 4096 rows umap-learn switches to
    # NN-descent, whose compilation a smaller warm-up would not cover).
    umap.UMAP(random_state=a.seed).fit_transform(x)
    c0 = time.process_time()
    t0 = time.perf_counter()
    emb = umap.UMAP(random_state=a.seed).fit_transform(x)
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    print(json.dumps({
        "rows": a.rows, "width": a.width, "clusters": a.clusters, "seed": a.seed,
        "umap_learn": umap.__version__ if hasattr(umap, "__version__") else "?",
        "seconds": secs,
        "cpu_seconds": cpu,
        "trustworthiness_15": float(trustworthiness(x, emb, n_neighbors=15)),
    }, indent=2))


if __name__ == "__main__":
    main()
