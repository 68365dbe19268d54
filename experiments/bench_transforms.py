"""Input transforms of the linear head against a well-tuned LogisticRegressionCV, on any feature matrix.

For each data set (those of ``bench_heads.py``) and each of ``--seeds`` stratified 75/25 splits:
``LinearHead`` with each fixed ``transform`` (``none``, signed ``sqrt``, signed ``log1p``) and
with ``transform="auto"`` (the default: chosen with C by CV on the training part), against
``bench_heads.logistic_baseline`` (``LogisticRegressionCV``, standardised, 40 Cs) on the same
split. Prints test log loss / LR's per seed, and per transform the geometric mean and the
median over seeds.

Run: ``python experiments/bench_transforms.py`` (minutes; the generated sets take longer:
``--datasets breast_cancer,wine,digits`` for the small ones).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_heads import DATASETS, logistic_baseline  # noqa: E402

CANDIDATES = ("none", "sqrt", "log1p", "auto")


def run_dataset(name: str, seeds: int):
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split

    from catdog_features import LinearHead

    X, y = DATASETS[name]()
    print(f"\n== {name}: {X.shape[0]} rows x {X.shape[1]} features, {len(np.unique(y))} classes ==", flush=True)
    ratios = {t: [] for t in CANDIDATES}
    for seed in range(seeds):
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed)
        lr, _ = logistic_baseline(X_tr, y_tr, X_te, y_te, seed)
        line = []
        for transform in CANDIDATES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                head = LinearHead(transform=transform, random_state=seed).fit(X_tr, y_tr)
            ratios[transform].append(log_loss(y_te, head.predict_proba(X_te), labels=head.classes_) / lr)
            chosen = f" ({head.transform_})" if transform == "auto" else ""
            line.append(f"{transform} {ratios[transform][-1]:.3f}{chosen}")
        print(f"seed {seed}: LR {lr:.5f} | test log loss / LR's: " + ", ".join(line), flush=True)
    summary = {t: (float(np.exp(np.mean(np.log(r)))), float(np.median(r))) for t, r in ratios.items()}
    print(f"{name}: geometric mean / median over {seeds} seeds: "
          + ", ".join(f"{t} {g:.3f} / {m:.3f}" for t, (g, m) in summary.items()), flush=True)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", type=int, default=8, help="splits per data set (default 8)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown data sets {unknown}; expected some of {', '.join(DATASETS)}")
    wall, cpu = time.perf_counter(), time.process_time()
    table = {name: run_dataset(name, args.seeds) for name in names}
    print("\n== summary: LinearHead test log loss / LogisticRegressionCV's, geometric mean over seeds ==")
    print(f"{'':>18}  " + "  ".join(f"{t:>6}" for t in CANDIDATES))
    for name, summary in table.items():
        print(f"{name:>18}  " + "  ".join(f"{summary[t][0]:6.3f}" for t in CANDIDATES))
    print(f"total: {time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
