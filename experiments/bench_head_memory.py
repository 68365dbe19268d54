"""Does fitting many DenseHeads in one process leak memory?

Fits ``--fits`` heads one after another on the same random ``--rows`` x ``--dim`` float32
matrix (each head is dropped before the next fit, as in a sweep), and prints the resident
set size after fits 1, 10, 25 and the last, plus the growth from fit 1 to the last and per
fit. ``--clear-session`` calls ``keras.backend.clear_session()`` after every fit, to compare.

    python experiments/bench_head_memory.py                 # 50 fits on 2000 x 2048
    python experiments/bench_head_memory.py --clear-session
    MALLOC_ARENA_MAX=2 python experiments/bench_head_memory.py

Measured (2 shared CPU cores, TF 2.21 / Keras 3.15), growth from fit 25 to fit 50:
before the fixes in heads.py ~3.5 MB per fit (a traced train graph per fit kept by TF's
custom-gradient registry); after them ~0.5-1.2 MB per fit with glibc's default malloc
arenas, flattening out (fragmentation across tf.data / TF thread arenas, no live Python or
TF objects accumulate), and ~0.26 MB per fit with MALLOC_ARENA_MAX=2.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def rss_mib() -> float:
    """Resident set size of this process in MiB (psutil if installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("Cannot read the resident set size: no psutil and no /proc/self/status.")
    return psutil.Process().memory_info().rss / 2**20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=50)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--clear-session", action="store_true")
    args = parser.parse_args(argv)

    import keras

    from catdog_features import DenseHead

    rng = np.random.RandomState(0)
    X = rng.randn(args.rows, args.dim).astype(np.float32)
    y = (X[:, : args.dim // 2].sum(axis=1) > 0).astype(int)
    checkpoints = sorted({1, 10, 25, args.fits} & set(range(1, args.fits + 1)))

    print(
        f"{args.fits} fits of DenseHead(epochs={args.epochs}) on {args.rows}x{args.dim} float32, "
        f"clear_session={'after every fit' if args.clear_session else 'never'}"
    )
    print(f"RSS before any fit: {rss_mib():8.1f} MiB")
    rss = {}
    t0 = time.perf_counter()
    head = None
    for i in range(1, args.fits + 1):
        head = DenseHead(epochs=args.epochs, patience=3, random_state=i).fit(X, y)
        head.predict_proba(X[:256])
        del head
        if args.clear_session:
            keras.backend.clear_session()
        gc.collect()
        if i in checkpoints:
            rss[i] = rss_mib()
            print(f"RSS after fit {i:3d}: {rss[i]:8.1f} MiB   ({time.perf_counter() - t0:6.1f} s)")
    first, last = checkpoints[0], checkpoints[-1]
    growth = rss[last] - rss[first]
    per_fit = growth / max(1, last - first)
    print(f"growth fit {first} -> {last}: {growth:+.1f} MiB ({per_fit * 1024:+.0f} KiB per fit)")
    if len(checkpoints) > 2:
        late = rss[last] - rss[checkpoints[-2]]
        print(
            f"growth fit {checkpoints[-2]} -> {last}: {late:+.1f} MiB "
            f"({late / (last - checkpoints[-2]) * 1024:+.0f} KiB per fit)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
