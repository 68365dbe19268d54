"""Benchmark of the content-addressed feature store (one run prints every number).

1. Change the list: extract N generated images, then remove 1 % and add 1 % and extract
   again: the second call's computed contents and wall time as fractions of the first
   (targets <= 0.02 computed, <= 0.05 wall). The model build (construct + trace + first
   call) is a fixed cost of any call that computes anything; it is printed separately.
2. Bytes on disk after extracting a set, a half subset of it and the union: <= 1.1x one copy.
3. A warm read at 25,000 rows x 2,048 (vectors written through the store's writer): lookup
   + read time per row vs the extraction time per row of ResNet50 at 224 px (and of the
   small backbone), target >= 500x faster.
4. Peak RSS extracting 1,000 vs 10,000 generated 64-px images, each in a fresh process:
   flat (<= +10 %).

Usage: ``python experiments/bench_store.py [--quick]`` (``--quick``: smaller sizes, a smoke test).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from catdog_features.synthetic import make_image  # noqa: E402

#: A small backbone whose random-init vectors vary at 64 px (random-init MobileNetV2 is constant there).
BACKBONE = "ResNet50V2"


def make_images(folder: Path, n: int, seed: int, size: int = 64) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{seed}_{i}.jpg"
        make_image(i % 2, rng, size).save(path, quality=90)
        paths.append(str(path))
    return paths


def extract(paths, store, size, batch=32):
    from catdog_features.features.extract import extract_with_report

    t0, c0 = time.perf_counter(), time.process_time()
    fs, rep = extract_with_report(paths, backbones=[BACKBONE], cache_dir=store, weights=None, image_size=size,
                                  batch_size=batch, progress=False)
    b = rep.backbones[BACKBONE]
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "computed": b.computed,
            "build": b.build_seconds, "rows": len(fs)}


def store_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in Path(store).rglob("shards/*.h5"))


def part_change(tmp: Path, n: int, size: int) -> float:
    paths = make_images(tmp / "a", n, seed=1)
    first = extract(paths, tmp / "store", size)
    k = max(1, n // 100)
    changed = paths[k:] + make_images(tmp / "b", k, seed=2)
    second = extract(changed, tmp / "store", size)
    print(f"== 1. change the list: {n} images, {BACKBONE} @ {size} px, weights=None, batch 32")
    print(f"first call:  {first['computed']} computed, {first['wall']:.2f} s wall ({first['cpu']:.2f} s CPU), "
          f"model build {first['build']:.2f} s")
    print(f"second call (-{k} images, +{k} new): {second['computed']} computed, {second['wall']:.2f} s wall "
          f"({second['cpu']:.2f} s CPU), model build {second['build']:.2f} s")
    print(f"computed fraction {second['computed'] / first['computed']:.4f} (target <= 0.02); wall fraction "
          f"{second['wall'] / first['wall']:.3f} (target <= 0.05), CPU fraction {second['cpu'] / first['cpu']:.3f}; "
          f"without the model builds: wall {(second['wall'] - second['build']) / (first['wall'] - first['build']):.3f}")
    return (first["wall"] - first["build"]) / first["computed"]


def part_bytes(tmp: Path, n: int, size: int) -> None:
    paths = make_images(tmp / "c", n, seed=3)
    store = tmp / "store2"
    extract(paths, store, size)
    one = store_bytes(store)
    extract(paths[: n // 2], store, size)
    extract(paths + make_images(tmp / "d", n // 2, seed=4), store, size)
    union = store_bytes(store)
    fresh = tmp / "store3"
    extract(paths + [str(p) for p in sorted((tmp / "d").glob("*.jpg"))], fresh, size)
    print(f"== 2. bytes on disk: set {n} -> {one / 2**20:.2f} MiB; after its half and the union with {n // 2} new: "
          f"{union / 2**20:.2f} MiB; one copy of the union {store_bytes(fresh) / 2**20:.2f} MiB -> "
          f"{union / store_bytes(fresh):.3f}x one copy (target <= 1.1x)")


def part_warm_read(tmp: Path, rows: int, small_per_row: float) -> None:
    from catdog_features.features import fingerprint
    from catdog_features.features.backbones import get_backbone
    from catdog_features.features.mapper import Mapper
    from catdog_features.features.store import FeatureStore

    spec = get_backbone("ResNet50")
    ex = FeatureStore(tmp / "store4").extractor(fingerprint.extractor_config(spec, None, 224))
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(rows)]
    rng = np.random.default_rng(0)
    with ex.new_writer((spec.dim,), batch_rows=1024) as writer:
        for lo in range(0, rows, 1024):
            writer.append(hashes[lo:lo + 1024], rng.random((len(hashes[lo:lo + 1024]), spec.dim), np.float32))
    times = []
    for _ in range(3):
        ex._index = None  # a fresh process: index read from disk
        t0 = time.perf_counter()
        x = ex.read(ex.lookup(hashes))
        times.append(time.perf_counter() - t0)
    assert x.shape == (rows, spec.dim)
    warm = min(times) / rows
    mapper = Mapper(spec, None, 224, 16)
    batch = rng.uniform(0, 255, (16, 224, 224, 3)).astype(np.float32)
    mapper(batch)
    t0 = time.perf_counter()
    for _ in range(2):
        mapper(batch)
    resnet = (time.perf_counter() - t0) / 32
    print(f"== 3. warm read of {rows} x {spec.dim} rows (index from disk + lookup + read + checks): {min(times):.2f} s "
          f"= {warm * 1e6:.1f} us/row")
    print(f"extraction per row: ResNet50 @ 224 {resnet * 1e3:.1f} ms -> warm read {resnet / warm:.0f}x faster "
          f"(target >= 500x); {BACKBONE} @ 64 {small_per_row * 1e3:.2f} ms -> {small_per_row / warm:.0f}x")


RSS_CHILD = """
import json, resource, sys
sys.path.insert(0, {repo!r})
from catdog_features.features.extract import extract_features
fs = extract_features({folder!r}, backbones=[{backbone!r}], cache_dir={store!r}, weights=None, image_size=64,
                      batch_size=32, progress=False)
print(json.dumps({{"rows": len(fs), "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def part_rss(tmp: Path, sizes) -> None:
    out = {}
    for n in sizes:
        folder = tmp / f"rss{n}"
        make_images(folder, n, seed=10 + n)
        code = RSS_CHILD.format(repo=str(REPO), folder=str(folder), backbone=BACKBONE, store=str(tmp / f"rs{n}"))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    a, b = sizes
    print(f"== 4. peak RSS: {a} images {out[a]['peak_mib']:.0f} MiB, {b} images {out[b]['peak_mib']:.0f} MiB -> "
          f"{out[b]['peak_mib'] / out[a]['peak_mib'] - 1:+.1%} (target <= +10 %)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test, not the benchmark)")
    args = parser.parse_args(argv)
    n, rows, rss = (200, 2000, (100, 400)) if args.quick else (2000, 25000, (1000, 10000))
    t0 = time.perf_counter()
    import tensorflow  # noqa: F401  (once per process for any call that computes; not counted below)

    print(f"bench_store: CPUs {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; TensorFlow import "
          f"{time.perf_counter() - t0:.1f} s (not counted)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        per_row = part_change(tmp, n, 64)
        part_bytes(tmp, n // 2, 64)
        part_rss(tmp, rss)
        part_warm_read(tmp, rows, per_row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
