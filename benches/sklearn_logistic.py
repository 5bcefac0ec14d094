"""scikit-learn reference for `latentlens bench probe`.

Reads the .npy files the Rust side wrote (same seed, same numbers), fits
LogisticRegression(solver='lbfgs', C=1) and prints time and test accuracy.

    python benches/sklearn_logistic.py target/bench_probe
"""
import json
import sys
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def main(folder: str, repeats: int = 3) -> None:
    x_train = np.load(f"{folder}/x_train.npy")
    y_train = np.load(f"{folder}/y_train.npy")
    x_test = np.load(f"{folder}/x_test.npy")
    y_test = np.load(f"{folder}/y_test.npy")
    for standardize in (True, False):
        for _ in range(repeats):
            start = time.perf_counter()
            if standardize:
                scaler = StandardScaler().fit(x_train)
                xtr, xte = scaler.transform(x_train), scaler.transform(x_test)
            else:
                xtr, xte = x_train, x_test
            model = LogisticRegression(solver="lbfgs", C=1.0).fit(xtr, y_train)
            seconds = time.perf_counter() - start
            print(json.dumps({
                "tool": "scikit-learn",
                "standardize": standardize,
                "n_train": len(y_train),
                "width": x_train.shape[1],
                "fit_seconds": round(seconds, 4),
                "iterations": int(model.n_iter_[0]),
                "train_accuracy": float(model.score(xtr, y_train)),
                "test_accuracy": float(model.score(xte, y_test)),
            }))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/bench_probe")
