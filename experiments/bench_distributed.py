"""Benchmark the distributors side by side in one run (issue 14).

1. **Extraction**: Spark ``local[2]`` vs the local distributor on the same generated images
   (random-init backbone, fresh store each): wall ratio and Spark's per-task overhead
   (Spark wall - local wall) / tasks. The SparkSession start is timed on its own.
2. **Sweep**: a ``--evals``-trial sweep on scikit-learn's breast_cancer, ``n_jobs=1`` vs
   ``n_jobs=2`` (worker processes): wall ratio. Small heads are overhead-bound, so two
   processes should give > 1.3x on 2 cores.
3. **Ensemble fits**: 3 members x 5 folds, ``n_jobs=1`` vs ``n_jobs=2``.

Wall and CPU seconds (this process + its children) are printed for every measurement: these
machines are shared, so the CPU ratio tells whether the wall ratio came from parallelism or
from the neighbours.

Run: ``python experiments/bench_distributed.py`` (``--quick``: fewer images and trials;
``--skip-spark`` without Java/pyspark).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    w0, c0 = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - w0, cpu_seconds() - c0


def line(label, wall, cpu):
    print(f"  {label:<38} wall {wall:8.2f} s   cpu {cpu:8.2f} s")


def bench_extraction(root: Path, n_images: int, partitions: int):
    from catdog_features.distributed import spark_session
    from catdog_features.features.extract import extract_features
    from catdog_features.synthetic import make_dataset

    data = make_dataset(root / "imgs", n_per_class=n_images // 2, n_test=0, layout="kaggle", size=96, seed=3)
    kwargs = dict(backbones=["ResNet50"], weights=None, image_size=64, progress=False)
    print(f"extraction: {n_images} images, ResNet50 random init at 64 px, {partitions} Spark partitions")
    _, wall_s, cpu_s = timed(lambda: spark_session("local[2]"))
    line("SparkSession start (not counted below)", wall_s, cpu_s)
    # the model build is in both; warm TensorFlow once so neither pays the import
    extract_features(data / "train", cache_dir=root / "warm", **kwargs)
    local, wall_l, cpu_l = timed(lambda: extract_features(data / "train", cache_dir=root / "local", **kwargs))
    line("local distributor", wall_l, cpu_l)
    spark, wall_sp, cpu_sp = timed(lambda: extract_features(
        data / "train", cache_dir=root / "spark", distributor="spark", spark_master="local[2]",
        partitions=partitions, **kwargs))
    line("spark local[2]", wall_sp, cpu_sp)
    same = np.array_equal(local.features["ResNet50"], spark.features["ResNet50"])
    print(f"  rows equal: {same}; wall ratio spark/local {wall_sp / wall_l:.2f}x; "
          f"per-task overhead {(wall_sp - wall_l) / partitions:.2f} s over {partitions} tasks "
          "(CPU of the Spark executors' Python workers is not a child of this process: see wall)")


def bench_sweep(root: Path, evals: int):
    from sklearn.datasets import load_breast_cancer

    from catdog_features.search import sweep

    X, y = load_breast_cancer(return_X_y=True)
    print(f"sweep: breast_cancer {X.shape}, {evals} trials, default space and objective (5-fold CV)")
    results = {}
    for jobs in (1, 2):
        res, wall, cpu = timed(lambda: sweep(X, y, max_evals=evals, n_jobs=jobs, progress=False,
                                             trials_path=root / f"sweep{jobs}.sqlite"))
        results[jobs] = (wall, cpu, res)
        line(f"n_jobs={jobs}", wall, cpu)
    (w1, c1, r1), (w2, c2, r2) = results[1], results[2]
    print(f"  wall ratio jobs1/jobs2 {w1 / w2:.2f}x (target > 1.3x); cpu ratio {c1 / c2:.2f}; "
          f"best loss {r1.best_loss:.4f} vs {r2.best_loss:.4f}; trials {len(r1.trials)} / {len(r2.trials)}")


def bench_oof(root: Path, n_rows: int):
    from sklearn.datasets import make_classification

    from catdog_features.ensemble import fit_oof
    from catdog_features.features.featureset import FeatureSet

    X, y = make_classification(n_samples=n_rows, n_features=96, n_informative=24, random_state=0)
    X = X.astype(np.float32)
    fs = FeatureSet(ids=np.array([str(i) for i in range(n_rows)]), labels=y, class_names=("a", "b"),
                    features={"A": X[:, :64], "B": X[:, 64:]})
    members = [
        {"name": "dense_ab", "params": {"head": "dense", "lr": 0.003, "epochs": 60, "hidden_units": 0},
         "backbones": ["A", "B"]},
        {"name": "dense_a", "params": {"head": "dense", "lr": 0.01, "epochs": 60, "hidden_units": 64},
         "backbones": ["A"]},
        {"name": "linear_ab", "params": {"head": "linear"}, "backbones": ["A", "B"]},
    ]
    print(f"ensemble fits: {n_rows} x 96, 3 members x 5 folds")
    out = {}
    for jobs in (1, 2):
        oof, wall, cpu = timed(lambda: fit_oof(members, fs, folds=5, progress=False, n_jobs=jobs))
        out[jobs] = (oof, wall, cpu)
        line(f"n_jobs={jobs}", wall, cpu)
    (o1, w1, c1), (o2, w2, c2) = out[1], out[2]
    diff = max(float(np.max(np.abs(o1.oof[m] - o2.oof[m]))) for m in o1.member_names)
    print(f"  wall ratio jobs1/jobs2 {w1 / w2:.2f}x; cpu ratio {c1 / c2:.2f}; max |OOF difference| {diff:.2e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 images, 8 trials, 600 rows")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--evals", type=int, default=20)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--skip-spark", action="store_true", help="no Spark extraction part")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.evals, args.rows = 40, 8, 600
    print(f"{os.cpu_count()} CPUs seen, affinity {len(os.sched_getaffinity(0))}; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench_sweep(root, args.evals)
        bench_oof(root, args.rows)
        if not args.skip_spark:
            bench_extraction(root, args.images, args.partitions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
