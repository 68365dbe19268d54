"""Benchmark stage 2: a TPE-swept DenseHead vs a well-tuned LogisticRegressionCV.

On scikit-learn's bundled feature matrices (``load_digits``: 10 classes, ``load_breast_cancer``:
2 classes), standardised on the training part, with one fixed stratified 25 % test split:

1. ``sweep()`` (TPE, ``--evals`` trials, hold-out objective inside the training part, or
   ``--cv K``) picks head configs. Its result is scored three ways on the test split:
   the best config and the mean of the top ``--top-k`` distinct configs, each refitted once
   on the whole training part (for its trial's epochs scaled to the larger set, no early
   stopping); and the pipeline's own stage 2 ensemble (``catdog_features.ensemble``:
   ``--folds``-fold OOF heads of the top-k trials, mean / blend / stacker and clip chosen
   on OOF predictions only, test probabilities = fold-model means).
2. ``LogisticRegressionCV`` (Cs = 40 values in 1e-4..1e4, ``scoring="neg_log_loss"``,
   5 stratified folds, lbfgs, ``max_iter=10000``) fitted on the same training part.

Both are scored by log loss on the same test split, with a 95 % paired-bootstrap interval
of the ratio (test splits of 143 / 450 rows are small); the target is ours / LR <= 1.0
(DESIGN's quality bar). The sweep space is wider than the reference recipe's (which is tuned for
2,048-d ImageNet features and 20,000 images): adam or SGD, lr 1e-4..0.1, an optional hidden
layer, batch size; the script prints it.

Also prints the sweep's own overhead per trial (TPE suggestion + SQLite commit) against the
mean trial time, and head-training throughput (samples/s) on a 25,000 x 6,144 float32 random
matrix (the reference merged model's feature size).

Run: ``python experiments/bench_heads.py`` (``--help`` for options; 30-60 min on 2 busy CPU cores, mostly
Keras' per-epoch overhead on these tiny matrices).
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


def bench_space(epochs=200):
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
        "epochs": epochs,
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
    proba = lr.predict_proba(X_te)
    loss = log_loss(y_te, proba, labels=lr.classes_)
    C = float(np.atleast_1d(lr.C_)[0])
    return loss, C, time.perf_counter() - t0, proba


def sample_losses(proba, y):
    """Per-row negative log probability of the true class (sklearn's clipping at 1e-15)."""
    p = np.asarray(proba, dtype=np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    return -np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1.0))


def ratio_ci(ours, base, seed, n_boot=2000):
    """95 % paired-bootstrap interval of mean(ours) / mean(base) over the test rows."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ours), size=(n_boot, len(ours)))
    ratios = ours[idx].mean(axis=1) / base[idx].mean(axis=1)
    return np.percentile(ratios, [2.5, 97.5])


def refit_top(result, X_tr, y_tr, X_te, top_k, args):
    """Mean test probabilities of the top-k configs, each refitted once on all of X_tr.

    Each refit trains for the epochs its trial needed, scaled to the larger training set
    (``(best_epoch + 1) / (1 - validation_split)``), without early stopping.
    """
    from catdog_features.heads import DenseHead

    probas, used = [], []
    for trial in result.top(top_k):
        epochs = max(1, int(round((trial["best_epoch"] + 1) / (1.0 - args.validation_split))))
        params = {**trial["params"], "epochs": epochs, "validation_split": 0.0, "random_state": args.seed}
        probas.append(DenseHead(**params).fit(X_tr, y_tr).predict_proba(X_te))
        used.append(f"t{trial['tid']} (val {trial['loss']:.4f}, {epochs} ep)")
    return np.mean(probas, axis=0), used


def stage2_ensemble(result, train_fs, test_fs, args):
    """The pipeline's own stage 2b: K-fold OOF heads of the top-k trials, ensembler + clip on OOF.

    Returns ``{label: (test probabilities, note)}`` for the heads alone and for the heads plus
    one ``LogisticRegressionCV`` member (same folds; the blend / stacker / mean and the clip
    are still chosen on OOF predictions only), which tests whether the ensemble stage
    would gain from offering a linear member.
    """
    import dataclasses

    from catdog_features.ensemble import (clip_probabilities, default_estimator_factory, fit_ensemblers, fit_oof,
                                          members_from_sweep)

    def factory(params, random_state):
        if params.get("logistic_regression"):
            from sklearn.linear_model import LogisticRegressionCV

            return LogisticRegressionCV(Cs=np.logspace(-4, 4, 40), scoring="neg_log_loss", max_iter=10000)
        return default_estimator_factory(params, random_state)

    heads = members_from_sweep(result, top_k=args.top_k)
    linear = {"name": "logreg", "params": {"logistic_regression": True}, "backbones": list(train_fs.backbones)}
    oof = fit_oof([*heads, linear], train_fs, test_fs, folds=args.folds, random_state=args.seed,
                  estimator_factory=factory, progress=False)
    out = {}
    for label, names in ((f"stage 2 ensemble of top-{args.top_k}", [m["name"] for m in heads]),
                         (f"stage 2 ensemble of top-{args.top_k} + LR member", [m["name"] for m in heads] + ["logreg"])):
        sub = dataclasses.replace(
            oof, members=[m for m in oof.members if m["name"] in names],
            oof={n: oof.oof[n] for n in names}, test={n: oof.test[n] for n in names},
        )
        ens = fit_ensemblers(sub, method="auto", clip="auto", random_state=args.seed)
        cv = {r["name"]: r["log_loss"] for r in ens.scores}  # the OOF log loss each method was chosen by
        weights = ", ".join(f"{n}={w:.2f}" for n, w in ens.weights.items()) if ens.method == "blend" else ""
        out[label] = (clip_probabilities(ens.combine(sub.test), ens.clip),
                      f"method={ens.method}{' (' + weights + ')' if weights else ''}, clip={ens.clip:g}, "
                      f"OOF log loss {cv[ens.method]:.5f}")
    return out


def run_dataset(name, args, trials_dir):
    from sklearn.metrics import log_loss

    from catdog_features.features.featureset import FeatureSet
    from catdog_features.search import sweep

    X, y = load(name)
    X_tr, X_te, y_tr, y_te = split_and_scale(X, y, args.seed)
    print(f"\n== {name}: {X.shape[0]} rows x {X.shape[1]} features, {len(np.unique(y))} classes; "
          f"train {len(y_tr)}, test {len(y_te)} (stratified, seed {args.seed}) ==")

    lr_loss, lr_C, lr_s, lr_proba = logistic_baseline(X_tr, y_tr, X_te, y_te, args.seed)
    print(f"LogisticRegressionCV: test log loss {lr_loss:.5f} (C={lr_C:.4g}, {lr_s:.1f} s)")

    # one "backbone" holding the whole matrix, so the ensemble stage can take the sweep as is
    classes = tuple(str(c) for c in np.unique(y))
    train_fs = FeatureSet(ids=np.arange(len(y_tr)).astype(str), labels=y_tr, class_names=classes, features={"X": X_tr})
    test_fs = FeatureSet(ids=np.arange(len(y_te)).astype(str), labels=None, class_names=classes, features={"X": X_te})
    t0 = time.perf_counter()
    result = sweep(
        train_fs, space=bench_space(args.epochs), max_evals=args.evals, cv=args.cv,
        validation_split=args.validation_split, random_state=args.seed,
        trials_path=os.path.join(trials_dir, f"{name}.sqlite"), progress=not args.quiet, n_startup_jobs=args.startup,
    )
    sweep_s = time.perf_counter() - t0
    t = result.timings
    n_new = max(1, t.get("n_new", 0))
    overhead = (t["suggest"] + t["persist"]) / n_new
    if not t.get("n_new"):
        print(f"sweep: {len(result.trials)} trials read back from the trials file (none run now); best validation "
              f"loss {result.best_loss:.5f}")
    else:
        print(f"sweep: {len(result.trials)} trials ({t.get('n_new', 0)} run now) in {sweep_s:.0f} s; best validation loss "
              f"{result.best_loss:.5f}; TPE overhead per trial {1000 * overhead:.1f} ms (suggest "
              f"{1000 * t['suggest'] / n_new:.1f} ms + commit {1000 * t['persist'] / n_new:.1f} ms) vs mean trial "
              f"{t['trials'] / n_new:.2f} s ({100 * overhead / max(t['trials'] / n_new, 1e-9):.2f} %)")

    ours = {}
    for k in sorted({1, args.top_k}):
        proba, used = refit_top(result, X_tr, y_tr, X_te, k, args)
        label = "best config" if k == 1 else f"mean of top-{k} configs"
        ours[label] = log_loss(y_te, proba, labels=np.unique(y_tr))
        lo, hi = ratio_ci(sample_losses(proba, y_te), sample_losses(lr_proba, y_te), args.seed)
        print(f"DenseHead {label}, refitted: test log loss {ours[label]:.5f}; ours/LR = {ours[label] / lr_loss:.3f} "
              f"(95% bootstrap {lo:.2f}-{hi:.2f}) [{', '.join(used)}]")
    t0 = time.perf_counter()
    for label, (proba, note) in stage2_ensemble(result, train_fs, test_fs, args).items():
        ours[label] = log_loss(y_te, proba, labels=np.arange(len(classes)))
        lo, hi = ratio_ci(sample_losses(proba, y_te), sample_losses(lr_proba, y_te), args.seed)
        print(f"DenseHead {label}: test log loss {ours[label]:.5f}; ours/LR = {ours[label] / lr_loss:.3f} "
              f"(95% bootstrap {lo:.2f}-{hi:.2f}) [{args.folds}-fold OOF, chosen on OOF: {note}]")
    print(f"(stage 2 OOF fits: {time.perf_counter() - t0:.0f} s)")
    return {"dataset": name, "lr": lr_loss, "ours": ours}


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
    parser.add_argument("--validation-split", type=float, default=0.2, help="hold-out fraction of the sweep objective")
    parser.add_argument("--cv", type=int, default=None, help="k-fold CV sweep objective instead of one hold-out split")
    parser.add_argument("--epochs", type=int, default=200, help="max epochs per head")
    parser.add_argument("--folds", type=int, default=5, help="OOF folds of the stage 2 ensemble")
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
        print(f"{row['dataset']}: LogisticRegressionCV {row['lr']:.5f}")
        for label, v in row["ours"].items():
            print(f"    DenseHead {label}: {v:.5f} (ours/LR {v / row['lr']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
