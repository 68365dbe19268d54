"""Benchmark stage 2: a TPE-swept DenseHead vs a well-tuned LogisticRegressionCV.

On scikit-learn's bundled feature matrices (``load_digits``: 10 classes, ``load_breast_cancer``:
2 classes), standardised on the training part, with one fixed stratified 25 % test split:

1. ``sweep()`` (TPE, ``--evals`` trials, hold-out objective inside the training part) picks
   head configs; the top ``--top-k`` distinct configs are refitted on the whole training part
   (each for ``round(best_epoch + 1) / (1 - validation_split)`` epochs, i.e. the epochs its
   trial needed, scaled to the larger training set, no early stopping) and their test
   probabilities averaged; ``--top-k 1`` is the plain best config.
2. ``LogisticRegressionCV`` (Cs = 40 values in 1e-4..1e4, ``scoring="neg_log_loss"``,
   5 stratified folds, lbfgs, ``max_iter=10000``) fitted on the same training part.

Both are scored by log loss on the same test split; the target is ours / LR <= 1.0 (DESIGN's
quality bar). The sweep space is wider than the reference recipe's (which is tuned for
2,048-d ImageNet features and 20,000 images): adam or SGD, lr 1e-4..0.1, an optional hidden
layer, batch size; the script prints it.

Also prints the sweep's own overhead per trial (TPE suggestion + SQLite commit) against the
mean trial time, and head-training throughput (samples/s) on a 25,000 x 6,144 float32 random
matrix (the reference merged model's feature size).

Run: ``python experiments/bench_heads.py`` (``--help`` for options; ~10 min on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def bench_space():
    """The search space used for the bundled datasets (wider than the reference recipe's)."""
    from hyperopt import hp

    return {
        "optimizer": hp.choice("optimizer", ["adam", "sgd"]),
        "lr": hp.loguniform("lr", math.log(1e-4), math.log(1e-1)),
        "momentum": hp.choice("momentum", [0.5, 0.8, 0.9]),  # SGD only
        "decay": hp.choice("decay", [0.0, 1e-4, 1e-3]),
        "dropout": hp.choice("dropout", [0.0, 0.1, 0.2, 0.3, 0.5]),
        "hidden_units": hp.choice("hidden_units", [0, 64, 256]),
        "batch_size": hp.choice("batch_size", [32, 128]),
        "epochs": 200,
        "patience": 10,
    }


def load(name):
    from sklearn.datasets import load_breast_cancer, load_digits

    loader = {"digits": load_digits, "breast_cancer": load_breast_cancer}[name]
    X, y = loader(return_X_y=True)
    return X.astype(np.float64), y


def split_and_scale(X, y, seed):
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(X_tr)  # statistics of the training part only
    return scaler.transform(X_tr).astype(np.float32), scaler.transform(X_te).astype(np.float32), y_tr, y_te


def logistic_baseline(X_tr, y_tr, X_te, y_te, seed):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    t0 = time.perf_counter()
    with warnings.catch_warnings():  # sklearn 1.8+ FutureWarnings about l1_ratios / legacy attributes
        warnings.simplefilter("ignore", FutureWarning)
        lr = LogisticRegressionCV(
            Cs=np.logspace(-4, 4, 40), cv=StratifiedKFold(5, shuffle=True, random_state=seed),
            scoring="neg_log_loss", max_iter=10000,
        ).fit(X_tr, y_tr)
    loss = log_loss(y_te, lr.predict_proba(X_te), labels=lr.classes_)
    C = float(np.atleast_1d(lr.C_)[0])
    return loss, C, time.perf_counter() - t0


def refit_top(result, X_tr, y_tr, X_te, top_k, validation_split, seed):
    """Average the test probabilities of the top-k configs, each refitted on all of X_tr."""
    from catdog_features.heads import DenseHead

    probas, used = [], []
    for trial in result.top(top_k):
        epochs = max(1, int(round((trial["best_epoch"] + 1) / (1.0 - validation_split))))
        params = {**trial["params"], "epochs": epochs, "validation_split": 0.0, "random_state": seed}
        head = DenseHead(**params).fit(X_tr, y_tr)
        probas.append(head.predict_proba(X_te))
        used.append((trial["tid"], trial["loss"], epochs))
    return np.mean(probas, axis=0), used


def run_dataset(name, args, trials_dir):
    from sklearn.metrics import log_loss

    from catdog_features.search import sweep

    X, y = load(name)
    X_tr, X_te, y_tr, y_te = split_and_scale(X, y, args.seed)
    print(f"\n== {name}: {X.shape[0]} rows x {X.shape[1]} features, {len(np.unique(y))} classes; "
          f"train {len(y_tr)}, test {len(y_te)} (stratified, seed {args.seed}) ==")

    lr_loss, lr_C, lr_s = logistic_baseline(X_tr, y_tr, X_te, y_te, args.seed)
    print(f"LogisticRegressionCV: test log loss {lr_loss:.5f} (C={lr_C:.4g}, {lr_s:.1f} s)")

    t0 = time.perf_counter()
    result = sweep(
        X_tr, y_tr, space=bench_space(), max_evals=args.evals, validation_split=args.validation_split,
        random_state=args.seed, trials_path=os.path.join(trials_dir, f"{name}.sqlite"),
        progress=not args.quiet, n_startup_jobs=args.startup,
    )
    sweep_s = time.perf_counter() - t0
    t = result.timings
    n_new = max(1, t.get("n_new", 0))
    overhead = (t["suggest"] + t["persist"]) / n_new
    print(f"sweep: {len(result.trials)} trials in {sweep_s:.0f} s; best validation loss {result.best_loss:.5f}; "
          f"TPE overhead per trial {1000 * overhead:.1f} ms (suggest {1000 * t['suggest'] / n_new:.1f} ms + "
          f"commit {1000 * t['persist'] / n_new:.1f} ms) vs mean trial {t['trials'] / n_new:.2f} s "
          f"({100 * overhead / max(t['trials'] / n_new, 1e-9):.2f} %)")

    rows = []
    for k in sorted({1, args.top_k}):
        proba, used = refit_top(result, X_tr, y_tr, X_te, k, args.validation_split, args.seed)
        ours = log_loss(y_te, proba, labels=np.unique(y_tr))
        rows.append((k, ours, used))
        label = "best config" if k == 1 else f"mean of top-{k} configs"
        print(f"DenseHead ({label}, refitted): test log loss {ours:.5f}; ours/LR = {ours / lr_loss:.3f} "
              f"[trials {', '.join(f't{tid} (val {vl:.4f}, {ep} ep)' for tid, vl, ep in used)}]")
    return {"dataset": name, "lr": lr_loss, "ours": {k: v for k, v, _ in rows}}


def throughput(args):
    """Samples/s of DenseHead training on a random (rows x dim) float32 matrix."""
    from catdog_features.heads import DenseHead

    rng = np.random.default_rng(args.seed)
    X = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    y = (X[:, :16].sum(axis=1) > 0).astype(np.int64)
    print(f"\n== head training throughput: {args.rows} x {args.dim} float32 ({X.nbytes / 2**20:.0f} MiB), "
          f"binary, batch 128, {args.tp_epochs} epochs, no validation ==")
    for params in ({"optimizer": "sgd", "lr": 0.005, "momentum": 0.9, "decay": 0.001, "dropout": 0.2},
                   {"optimizer": "adadelta", "dropout": 0.5}):
        warm = DenseHead(**params, epochs=1, validation_split=0.0, random_state=0).fit(X[:1024], y[:1024])
        del warm  # first fit pays TensorFlow's one-off start-up
        t0 = time.perf_counter()
        DenseHead(**params, epochs=args.tp_epochs, validation_split=0.0, random_state=0).fit(X, y)
        sec = time.perf_counter() - t0
        print(f"{params['optimizer']:>9}: {args.tp_epochs * args.rows / sec:,.0f} samples/s "
              f"({sec / args.tp_epochs:.2f} s/epoch incl. model build)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,breast_cancer")
    parser.add_argument("--evals", type=int, default=30)
    parser.add_argument("--startup", type=int, default=10, help="random trials before TPE modelling")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--validation-split", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=25000)
    parser.add_argument("--dim", type=int, default=6144)
    parser.add_argument("--tp-epochs", type=int, default=3)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--trials-dir", default=None, help="keep the trials files here (default: a temp folder)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    print("search space (wider than the reference recipe's):")
    from catdog_features.search import describe_space

    for key, text in describe_space(bench_space()).items():
        print(f"  {key}: {text}")
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        trials_dir = args.trials_dir or tmp
        os.makedirs(trials_dir, exist_ok=True)
        for name in args.datasets.split(","):
            summary.append(run_dataset(name.strip(), args, trials_dir))
    if not args.skip_throughput:
        throughput(args)
    print("\n== summary: test log loss ==")
    for row in summary:
        parts = ", ".join(f"top-{k} {v:.5f} (ratio {v / row['lr']:.3f})" for k, v in sorted(row["ours"].items()))
        print(f"{row['dataset']:>14}: LogisticRegressionCV {row['lr']:.5f}; DenseHead {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
