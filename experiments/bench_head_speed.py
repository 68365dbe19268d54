"""How long does a DenseHead take to train and predict on reference-sized features?

Times ``DenseHead.fit`` on a random ``--rows`` x ``--dim`` float32 matrix (default 20000 x
6144: the size of the reference recipe's merged InceptionV3 + Xception + ResNet50 features)
for 1 and ``--epochs`` epochs, so the fixed cost (graph tracing, validation split) and the
per-epoch cost can be told apart, then ``predict_proba`` on all rows; for the recipe's head
(dropout 0.5, adadelta), without dropout, and SGD with momentum and decay.

    python experiments/bench_head_speed.py
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

CONFIGS = {
    "recipe (dropout 0.5, adadelta)": {},
    "no dropout": {"dropout": 0.0},
    "sgd momentum 0.9, decay 1e-3": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "decay": 1e-3},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=6144)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)

    from catdog_features import DenseHead

    rng = np.random.RandomState(0)
    X = rng.randn(args.rows, args.dim).astype(np.float32)
    y = (X @ rng.randn(args.dim) > 0).astype(int)
    DenseHead(epochs=1).fit(X[:256], y[:256])  # TensorFlow start-up, not timed
    n_train = args.rows - int(np.ceil(0.2 * args.rows))
    print(f"DenseHead on {args.rows} x {args.dim} float32 (validation_split=0.2 -> {n_train} training rows)")
    for name, params in CONFIGS.items():
        timings = {}
        for epochs in (1, args.epochs):
            t0 = time.perf_counter()
            head = DenseHead(epochs=epochs, patience=epochs, random_state=0, **params).fit(X, y)
            timings[epochs] = time.perf_counter() - t0
        t0 = time.perf_counter()
        head.predict_proba(X)
        t_pred = time.perf_counter() - t0
        per_epoch = (timings[args.epochs] - timings[1]) / max(1, args.epochs - 1)
        print(
            f"{name:32s} fit {args.epochs} epochs {timings[args.epochs]:6.2f} s "
            f"(1 epoch {timings[1]:5.2f} s; {per_epoch:5.2f} s/epoch = {n_train / per_epoch:7.0f} samples/s); "
            f"predict_proba {args.rows} rows {t_pred:5.2f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
