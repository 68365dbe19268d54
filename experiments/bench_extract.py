"""Benchmark stage 1: our extraction vs the forward-only limit vs a naive per-backbone loop.

Prints, in one run, for N images and 3 backbones (random-init weights; ImageNet weights
cannot be downloaded here, and they do not change the speed):

(a) ours: ``extract_with_report`` into a fresh cache -- images/s of the pass (read, decode,
    resize, all models, HDF5 commits); model construction + compile is reported apart;
(b) the forward-only limit: the same compiled models (:class:`catdog_features.features.mapper.Mapper`)
    on one in-memory batch, no I/O;
(c) the naive loop users write: for each backbone, load every image with PIL, resize,
    ``preprocess_input``, then ``model.predict`` (the images are read and decoded once per
    backbone);

then ours/limit, ours/naive, the cache-hit time vs the extraction time, and peak RSS.
Targets (issue 3): ours/limit >= 0.9 on CPU, ours/naive >= 1.5, cache hit >= 500x faster.

Then (issue 12), in the same run:

(d) precision: per backbone of ``--precision-backbones`` at ``--precision-size`` (default
    ResNet50, ConvNeXtTiny, EfficientNetV2B0 at 224 px, batch 32, random weights), the compiled
    forward pass in float32 vs mixed_bfloat16 (and float16 with ``--precisions``): img/s,
    their ratio (wall and CPU time) and the cosine similarity of the pooled vectors of real
    images; target bf16/fp32 >= 1.25 for ResNet50 on a CPU with AMX-BF16. ``--jit`` adds an
    XLA (jit_compile) float32 line;
(e) the decode budget: the reader alone (read + decode + resize to every size of the run,
    no model) on one thread, in images/s per core, and with the default thread pool, on the
    real JPEGs (``--reader-data``, default ../shared/data/dogs-vs-cats/train; skipped if absent).

``--only d,e`` runs just those sections (quick); ``--only abc`` just the original ones.

Usage::

    python experiments/bench_extract.py                        # 128 generated ~300x250 JPEGs, 128 px
    python experiments/bench_extract.py --data ../shared/data/dogs-vs-cats/train --n 256
    python experiments/bench_extract.py --image-size 0         # each backbone's native size
    python experiments/bench_extract.py --only d,e --precision-batches 3   # precision + reader only (minutes)
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def generated_images(root: Path, n: int) -> Path:
    from catdog_features.synthetic import make_dataset

    per_class = (n + 1) // 2
    # make_dataset jitters each side by 0.8-1.25x: size 275 gives roughly 220-340 px photos.
    make_dataset(root, n_per_class=per_class, n_test=0, layout="kaggle", size=275, seed=0)
    return root / "train"


class Naive:
    """What a user writes without this package: PIL loading + model.predict, per backbone."""

    def __init__(self, spec, size, batch_size):
        import keras

        self.module = importlib.import_module(f"keras.applications.{spec.module}")
        keras.utils.set_random_seed(0)
        self.model = getattr(self.module, spec.constructor)(include_top=False, pooling="avg", weights=None,
                                                            input_shape=(size, size, 3))
        self.spec, self.size, self.batch_size = spec, size, batch_size
        # Warm-up (tracing of predict) kept out of the timing, as ours keeps its compile out.
        self.model.predict(np.zeros((batch_size, size, size, 3), np.float32), batch_size=batch_size, verbose=0)

    def __call__(self, paths):
        from PIL import Image

        arrays = []
        for p in paths:
            with Image.open(p) as img:
                arrays.append(np.asarray(img.convert("RGB").resize((self.size, self.size), Image.BILINEAR),
                                         dtype=np.float32))
        x = self.module.preprocess_input(np.stack(arrays))
        out = self.model.predict(x, batch_size=self.batch_size, verbose=0)
        assert out.shape == (len(paths), self.spec.dim)


def timed(fn):
    """(wall seconds, process CPU seconds) of fn()."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="image folder (default: generate --n JPEGs)")
    parser.add_argument("--n", type=int, default=128, help="number of images (default: %(default)s)")
    parser.add_argument("--backbones", default="ResNet50,InceptionV3,Xception")
    parser.add_argument("--image-size", type=int, default=128,
                        help="square input size for every backbone; 0 = native sizes (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="decoder threads (default: CPUs)")
    parser.add_argument("--rounds", type=int, default=2, help="repetitions; the best of each is kept")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--only", default="a,b,c,d,e",
                        help="sections to run: a,b,c (pipeline), d (precision), e (reader); default: all")
    parser.add_argument("--precision-backbones", default="ResNet50,ConvNeXtTiny,EfficientNetV2B0")
    parser.add_argument("--precision-size", type=int, default=224)
    parser.add_argument("--precisions", default="float32,bfloat16", help="e.g. float32,bfloat16,float16")
    parser.add_argument("--precision-batches", type=int, default=4,
                        help="(d) timed batches per round (default: %(default)s)")
    parser.add_argument("--jit", action="store_true", help="(d) also time float32 with jit_compile=True (XLA)")
    parser.add_argument("--reader-data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"
                                                      / "dogs-vs-cats" / "train"))
    parser.add_argument("--reader-n", type=int, default=300, help="(e) images read (default: %(default)s)")
    args = parser.parse_args(argv)
    sections = set(args.only.replace(",", ""))
    if sections & set("abc"):
        pipeline_sections(args)
    if "d" in sections:
        precision_section(args)
    if "e" in sections:
        reader_section(args)
    return 0


def pipeline_sections(args) -> None:
    """(a) ours, (b) the forward-only limit, (c) the naive loop; cache hit; peak RSS."""

    from catdog_features.features.backbones import parse_backbones, get_backbone
    from catdog_features.features.datasets import load_dataset
    from catdog_features.features.extract import extract_features, extract_with_report
    from catdog_features.features.mapper import Mapper
    from catdog_features.features.reader import ImageReadError, decode_image, resize_image

    names = parse_backbones(args.backbones)
    image_size = args.image_size or None
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    if args.data:
        images = load_dataset(args.data)
        images = images.subset(np.arange(min(args.n, len(images))))
        where = args.data
    else:
        images = load_dataset(generated_images(tmp / "data", args.n))
        images = images.subset(np.arange(min(args.n, len(images))))
        where = "generated"
    paths = list(images.paths)
    n = len(paths)
    sizes = {name: get_backbone(name).resolve_size(image_size) for name in names}
    mean_bytes = np.mean([os.path.getsize(p) for p in paths])
    print(f"bench_extract: {n} images ({where}, mean {mean_bytes / 1024:.0f} KiB), backbones "
          f"{', '.join(f'{k}@{v}' for k, v in sizes.items())}, batch {args.batch_size}, "
          f"CPUs {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.1f}")
    import tensorflow as tf

    print(f"tensorflow {tf.__version__}, devices: {[d.device_type for d in tf.config.list_physical_devices()]}")

    # models for (b) and (c), built once ----------------------------------------------
    mappers = {name: Mapper(get_backbone(name), None, sizes[name], args.batch_size) for name in names}
    decoded = []
    for p in paths:
        try:
            decoded.append(decode_image(p))
        except ImageReadError:
            continue
        if len(decoded) == args.batch_size:
            break
    decoded = (decoded * args.batch_size)[: args.batch_size]
    batches = {name: tf.constant(np.stack([resize_image(rgb, sizes[name]) for rgb in decoded])) for name in names}
    n_batches = -(-n // args.batch_size)
    naive_models = {} if args.skip_naive else {name: Naive(get_backbone(name), sizes[name], args.batch_size)
                                               for name in names}

    def limit_pass():
        for name in names:
            for _ in range(n_batches):
                mappers[name]._fn(batches[name]).numpy()

    def naive_pass():
        for name in names:
            naive_models[name](paths)

    # Rounds, keeping the best of each: the machine may be shared, and the best time is
    # the one least disturbed by other processes. CPU seconds are reported too.
    best = {"ours": (np.inf, np.inf), "limit": (np.inf, np.inf), "naive": (np.inf, np.inf)}
    settings = dict(backbones=names, weights=None, image_size=image_size, batch_size=args.batch_size,
                    num_workers=args.workers, progress=False)
    for r in range(args.rounds):
        result = {}

        def ours_pass():
            t0 = time.perf_counter()
            result["fs"], result["report"] = extract_with_report(images, cache_dir=tmp / f"cache{r}", **settings)
            result["seconds"] = time.perf_counter() - t0

        ours_pass()
        report = result["report"]
        build = sum(b.build_seconds for b in report.backbones.values())
        ours = (report.pass_seconds, report.pass_cpu_seconds)
        limit = timed(limit_pass)
        limit = (limit[0] * n / (n_batches * args.batch_size), limit[1] * n / (n_batches * args.batch_size))
        naive = timed(naive_pass) if naive_models else (np.inf, np.inf)
        print(f"round {r + 1}: ours {n / ours[0]:6.2f} img/s, limit {n / limit[0]:6.2f} img/s, "
              f"naive {n / naive[0]:6.2f} img/s  (wall; load average {os.getloadavg()[0]:.1f})", flush=True)
        for key, value in (("ours", ours), ("limit", limit), ("naive", naive)):
            best[key] = (min(best[key][0], value[0]), min(best[key][1], value[1]))
        if r == 0:
            fs, first_report, extraction_seconds, first_build = result["fs"], report, result["seconds"], build
    rss = peak_rss_mb()

    ours, limit, naive_rate = (n / best[k][0] for k in ("ours", "limit", "naive"))
    print(f"(a) ours:  {ours:7.2f} img/s  (best pass: {n} images x {len(names)} backbones: read, decode, resize, "
          f"models, HDF5 commits; model build + compile {first_build:.1f}s and hashing "
          f"{first_report.hash_seconds:.2f}s come on top: whole first call {extraction_seconds:.1f}s; "
          f"rows {len(fs)}, failures {len(fs.failed)})")
    for b in first_report.backbones.values():
        print(f"      {b.name:<12} {b.images_per_s:7.2f} img/s in its model (round 1)")
    print(f"(b) limit: {limit:7.2f} img/s  (the same compiled models on one decoded, resized in-memory batch, no I/O)")
    if naive_models:
        print(f"(c) naive: {naive_rate:7.2f} img/s  (PIL load + resize + preprocess_input + model.predict, "
              "per backbone)")

    # cache hit ------------------------------------------------------------------------
    hits = []
    for _ in range(5):
        t0 = time.perf_counter()
        again = extract_features(images, cache_dir=tmp / "cache0", **settings)
        hits.append(time.perf_counter() - t0)
    assert all(again.cache_hits.values())
    assert all(np.array_equal(again[k], fs[k]) for k in names)
    hit = float(np.median(hits))
    print()
    print(f"ours/limit = {ours / limit:.3f} wall, {best['limit'][1] / best['ours'][1]:.3f} CPU time   (target >= 0.9)")
    if naive_models:
        print(f"ours/naive = {ours / naive_rate:.3f} wall, {best['naive'][1] / best['ours'][1]:.3f} CPU time   "
              "(target >= 1.5)")
    print(f"cache hit: {hit * 1000:.1f} ms (median of 5) vs extraction {extraction_seconds:.1f}s "
          f"-> {extraction_seconds / hit:.0f}x faster (target >= 500x); vs the pass alone "
          f"{report.pass_seconds / hit:.0f}x")
    print(f"peak RSS: {rss:.0f} MiB (whole benchmark: {len(names)} backbones loaded twice + naive's models; "
          "naive also holds all images in memory)")


def _sample_batch(folder, n: int, size: int) -> np.ndarray:
    """``n`` real images resized to ``size`` (repeated if the folder has fewer), or noise photos if absent."""
    from catdog_features.features.reader import decode_image, resize_image

    folder = Path(folder)
    paths = sorted(folder.glob("*.jpg"))[:n] if folder.is_dir() else []
    if not paths:
        tmp = Path(tempfile.mkdtemp(prefix="bench-precision-"))
        paths = sorted(generated_images(tmp, n).glob("*.jpg"))[:n]
    rgb = [resize_image(decode_image(p), size) for p in paths]
    return np.stack((rgb * n)[:n])


def _rate(mapper, x, batches: int, rounds: int):
    """Best-of-rounds (img/s wall, img/s per CPU second) of the compiled forward pass on one batch."""
    import tensorflow as tf

    batch = tf.constant(x)
    mapper._fn(batch).numpy()  # warm
    best_wall, best_cpu = np.inf, np.inf
    for _ in range(rounds):
        wall, cpu = timed(lambda: [mapper._fn(batch).numpy() for _ in range(batches)])
        best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
    n = batches * len(x)
    return n / best_wall, n / best_cpu


def precision_section(args) -> None:
    """(d) float32 vs bfloat16 (vs float16) per backbone: img/s, ratio, cosine similarity."""
    from catdog_features.features.backbones import get_backbone, parse_backbones
    from catdog_features.features.mapper import Mapper, check_precision

    names = parse_backbones(args.precision_backbones)
    precisions = [check_precision(p) for p in args.precisions.split(",") if p.strip()]
    size, batch = args.precision_size, args.batch_size
    x = _sample_batch(args.reader_data, batch, size)
    print()
    print(f"(d) precision: {', '.join(names)} at {size} px, batch {batch}, random weights, "
          f"{args.precision_batches} batches x {args.rounds} rounds (best), load average {os.getloadavg()[0]:.1f}")
    for name in names:
        spec = get_backbone(name)
        variants = [(p, False) for p in precisions] + ([("float32", True)] if args.jit else [])
        results = {}
        for precision, jit in variants:
            mapper = Mapper(spec, None, size, batch, precision=precision, jit_compile=jit)
            results[(precision, jit)] = (_rate(mapper, x, args.precision_batches, args.rounds), mapper(x))
            del mapper
        (base_wall, base_cpu), base_vec = results[("float32", False)]
        for (precision, jit), ((wall, cpu), vec) in results.items():
            cos = (vec * base_vec).sum(1) / (np.linalg.norm(vec, axis=1) * np.linalg.norm(base_vec, axis=1) + 1e-30)
            label = precision + (" +XLA" if jit else "")
            print(f"    {name:<16} {label:<13} {wall:7.2f} img/s  ({cpu:6.2f} img/s per CPU-s)  "
                  f"x{wall / base_wall:.2f} wall, x{cpu / base_cpu:.2f} CPU vs float32   "
                  f"cosine vs float32: min {cos.min():.6f}, mean {cos.mean():.6f}", flush=True)


def reader_section(args) -> None:
    """(e) reader only: read + decode + resize to every size of the run, no model."""
    from catdog_features.features.backbones import get_backbone, parse_backbones
    from catdog_features.features.reader import READER_VERSION, default_num_workers, read_batches

    folder = Path(args.reader_data)
    paths = sorted(str(p) for p in folder.glob("*.jpg"))[: args.reader_n] if folder.is_dir() else []
    print()
    if not paths:
        print(f"(e) reader: skipped ({folder} has no JPEGs)")
        return
    names = parse_backbones(args.backbones)
    image_size = args.image_size or None
    sizes = {get_backbone(n).resolve_size(image_size) for n in names}
    sizes = sorted(sizes | ({args.precision_size} if "d" in args.only else set()))
    mean_kib = np.mean([os.path.getsize(p) for p in paths]) / 1024
    print(f"(e) reader only ({READER_VERSION}): {len(paths)} real JPEGs from {folder} (mean {mean_kib:.0f} KiB), "
          f"each decoded once and resized to {sizes}")
    for workers in (0, default_num_workers()):
        best_wall, best_cpu = np.inf, np.inf
        for _ in range(args.rounds):
            wall, cpu = timed(lambda: [b for b in read_batches(paths, sizes, 32, num_workers=workers)])
            best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
        label = "1 thread (inline)" if workers == 0 else f"{workers} threads"
        print(f"    {label:<18} {len(paths) / best_wall:7.1f} img/s wall, {len(paths) / best_cpu:7.1f} img/s per core "
              f"(per CPU-second)", flush=True)
    print("    Decoder swap: no PyPI decoder gives >= 1.5x for the same output here (notes/research/decoders.md: "
          "best same-output path 1.24-1.30x, PyTurboJPEG/simplejpeg; Pillow's antialiased resize dominates), "
          "so the reader keeps Pillow.")


if __name__ == "__main__":
    sys.exit(main())
