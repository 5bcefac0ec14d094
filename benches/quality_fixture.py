"""Reference values for src/analysis/quality.rs: sklearn.manifold.trustworthiness on the
fixture built there (X = 60 x 5 uniform from bench_uniform(3, i); Y = X[:, :2] + 0.3 *
bench_uniform(4, i)). Continuity is trustworthiness with the spaces swapped.

    python benches/quality_fixture.py
"""
import numpy as np
from sklearn.manifold import trustworthiness

from sklearn_pca import bench_uniform

x = bench_uniform(3, np.arange(300, dtype=np.uint64)).reshape(60, 5)
y = x[:, :2] + np.float32(0.3) * bench_uniform(4, np.arange(120, dtype=np.uint64)).reshape(60, 2)
x64, y64 = x.astype(np.float64), y.astype(np.float64)
print(f"SKLEARN_T5 = {trustworthiness(x64, y64, n_neighbors=5)!r}")
print(f"SKLEARN_T15 = {trustworthiness(x64, y64, n_neighbors=15)!r}")
print(f"SKLEARN_C5 = {trustworthiness(y64, x64, n_neighbors=5)!r}")
