"""Reference values for src/analysis/umap.rs tests, from umap-learn 0.5.12.

Fuzzy graph fixture: X = 40 x 5 uniform from bench_uniform(5, i), n_neighbors = 6, exact
kNN (sklearn NearestNeighbors, self included first as umap-learn does).

    python benches/umap_fixture.py
"""
import numpy as np
from sklearn.neighbors import NearestNeighbors
from umap.umap_ import fuzzy_simplicial_set

from sklearn_pca import bench_uniform

x = bench_uniform(5, np.arange(200, dtype=np.uint64)).reshape(40, 5)
k = 6
dist, ind = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
graph, sigmas, rhos = fuzzy_simplicial_set(
    x, k, np.random.RandomState(0), "euclidean",
    knn_indices=ind, knn_dists=dist.astype(np.float32))
graph = graph.tocsr()
print("sigmas[:4] =", [float(v) for v in sigmas[:4]])
print("rhos[:4] =", [float(v) for v in rhos[:4]])
print("nnz =", graph.nnz, " total weight =", float(graph.sum()))
print("row 0 =", list(zip(graph[0].indices.tolist(), [float(v) for v in graph[0].data])))
