# %% [markdown]
# # Exploring a latentlens run folder from Python
#
# A run folder is plain Parquet, Hive-partitioned by site, so pyarrow, polars and DuckDB
# read it directly. This notebook (jupytext "percent" format: open it in Jupyter or VS Code,
# or run it as a script) loads one site at one step, joins the ground-truth labels and
# looks at the first two principal components.
#
#     cargo run -- record diffusion --run reports/demo
#     python notebooks/explore_run.py reports/demo unet.mid_block

# %%
import sys

import numpy as np
import polars as pl

run = sys.argv[1] if len(sys.argv) > 1 else "reports/demo"
site = sys.argv[2] if len(sys.argv) > 2 else "unet.mid_block"

latents = pl.scan_parquet(f"{run}/latents/site={site}/*.parquet")
samples = pl.read_parquet(f"{run}/samples.parquet")
steps = latents.select(pl.col("step").unique().sort()).collect()["step"].to_list()
print(f"{site}: steps {steps[0]}..{steps[-1]}")

# %% One step, joined to the labels
step = steps[len(steps) // 2]
rows = latents.filter(pl.col("step") == step).collect().join(samples, on="sample")
x = np.stack(rows["x"].to_numpy())
print(f"step {step}: {x.shape[0]} samples x {x.shape[1]} dims")

# %% PCA by SVD of the centred matrix
xc = x - x.mean(axis=0)
_, s, vt = np.linalg.svd(xc, full_matrices=False)
ratio = s**2 / (s**2).sum()
print("explained variance ratio of the first 5 components:", np.round(ratio[:5], 3))
pcs = xc @ vt[:2].T
for name, group in rows.with_columns(pc1=pcs[:, 0], pc2=pcs[:, 1]).group_by("shape_name"):
    print(name[0], "mean PC1/PC2:", round(group["pc1"].mean(), 3), round(group["pc2"].mean(), 3))
