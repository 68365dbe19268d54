"""Benchmark: K augmented views in one pass vs K separate plain extractions (issue 15).

Each image is decoded once for all views (and backbones), so extracting K views should cost
about K x the model time plus *one* decode, not K x (decode + model). Prints, for N generated
JPEGs and one backbone (random-init weights: the speed does not depend on them):

(a) plain: one plain extraction into a fresh store (the pass: read, decode, resize, model,
    commit), wall and process CPU time, and the model's share;
(b) views: ``views=["aug:0", ..., "aug:K-1"]`` in one call into a fresh store;
(c) K x plain: K plain extractions, each into its own fresh store (each decodes every file
    again: what K views would cost without the shared decode);
(d) the transforms alone: ``aug_view`` on the decoded images (NumPy + Pillow, no model);

then the measured ratios: (b)/(a) against K, (c)/(b), and the non-model time of (b) against
that of (a) (decode once: about the same plus the transforms) -- wall and CPU time both.

Usage::

    python experiments/bench_views.py --quick          # 24 images, K=2, VGG16 at 64 px (a minute)
    python experiments/bench_views.py                  # 96 images, K=4, ResNet50 at 128 px
    python experiments/bench_views.py --n 256 --k 8 --backbone ResNet50 --image-size 224
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, run from anywhere


def generated_images(root: Path, n: int, size: int) -> Path:
    from catdog_features.synthetic import make_dataset

    make_dataset(root, n_per_class=(n + 1) // 2, n_test=0, layout="kaggle", size=size, seed=0)
    return root / "train"


def timed_extract(data, store, views, args):
    """One extraction into ``store``: (wall s, CPU s, model s, pass s, computed rows)."""
    from catdog_features.features.extract import extract_with_report

    t0, c0 = time.perf_counter(), time.process_time()
    _fs, rep = extract_with_report(str(data), backbones=[args.backbone], cache_dir=str(store), weights=None,
                                   image_size=args.image_size, batch_size=args.batch_size, views=views,
                                   progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    b = rep.backbones[args.backbone]
    return {"wall": wall, "cpu": cpu, "model": b.model_seconds, "build": b.build_seconds,
            "pass": rep.pass_seconds, "pass_cpu": rep.pass_cpu_seconds, "computed": b.computed}


def transforms_only(data, k: int):
    """Seconds (wall, CPU) of making K augmented views of every decoded image, no model."""
    from catdog_features.features.fingerprint import hash_file
    from catdog_features.features.reader import decode_image
    from catdog_features.features.views import aug_view

    paths = sorted(Path(data).glob("*.jpg"))
    decoded = [(decode_image(p), hash_file(p).sha256) for p in paths]
    t0, c0 = time.perf_counter(), time.process_time()
    for rgb, h in decoded:
        for j in range(k):
            aug_view(rgb, h, j)
    return time.perf_counter() - t0, time.process_time() - c0


def reader_only(data, size: int, views, repeats: int = 1):
    """(wall s, CPU s) of the reader alone (read + decode + views + resize, no model), one thread."""
    from contextlib import closing

    from catdog_features.features.reader import read_windows
    from catdog_features.features.views import view_transform, view_zoom

    paths = [str(p) for p in sorted(Path(data).glob("*.jpg"))]
    spec = [(v, view_transform(v), view_zoom(v)) for v in views]
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        with closing(read_windows(paths, [size], [(0, len(paths))], num_workers=0, views=spec)) as it:
            for _batch in it:
                pass
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="24 images, K=2, VGG16 at 64 px")
    parser.add_argument("--n", type=int, default=None, help="generated images (default 96; --quick 24)")
    parser.add_argument("--k", type=int, default=None, help="augmented views (default 4; --quick 2)")
    parser.add_argument("--backbone", default=None, help="registry name (default ResNet50; --quick VGG16)")
    parser.add_argument("--image-size", type=int, default=None, help="model input size (default 128; --quick 64)")
    parser.add_argument("--photo-size", type=int, default=600,
                        help="side of the generated JPEGs (decode cost grows with it; default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    quick = args.quick
    args.n = args.n or (24 if quick else 96)
    args.k = args.k or (2 if quick else 4)
    args.backbone = args.backbone or ("VGG16" if quick else "ResNet50")
    args.image_size = args.image_size or (64 if quick else 128)

    with tempfile.TemporaryDirectory(prefix="bench-views-") as tmp:
        tmp = Path(tmp)
        data = generated_images(tmp / "data", args.n, args.photo_size)
        print(f"{args.n} generated JPEGs (~{args.photo_size} px), {args.backbone} at {args.image_size} px, "
              f"batch {args.batch_size}, K = {args.k}, {os.cpu_count()} CPUs")
        timed_extract(data, tmp / "warm", ["plain"], args)  # model build + first traces out of the way
        plain = timed_extract(data, tmp / "plain", ["plain"], args)
        views = timed_extract(data, tmp / "views", [f"aug:{j}" for j in range(args.k)], args)
        separate = [timed_extract(data, tmp / f"sep{j}", ["plain"], args) for j in range(args.k)]
        t_wall, t_cpu = transforms_only(data, args.k)
        r1 = reader_only(data, args.image_size, ["plain"])
        rk = reader_only(data, args.image_size, [f"aug:{j}" for j in range(args.k)])
        rsep = reader_only(data, args.image_size, ["plain"], repeats=args.k)

    sep = {key: sum(s[key] for s in separate) for key in ("wall", "cpu", "model", "pass", "pass_cpu")}
    rows = [("(a) plain, 1 view", plain), (f"(b) {args.k} aug views, one pass", views),
            (f"(c) {args.k} x plain, separate", sep)]
    print(f"{'':34} {'pass wall s':>11} {'pass CPU s':>10} {'model s':>8} {'non-model s':>11}")
    for name, r in rows:
        print(f"{name:34} {r['pass']:>11.2f} {r['pass_cpu']:>10.2f} {r['model']:>8.2f} {r['pass'] - r['model']:>11.2f}")
    print(f"{'(d) transforms only (K views)':34} {t_wall:>11.2f} {t_cpu:>10.2f}")
    print(f"{'(e) reader only: plain':34} {r1[0]:>11.2f} {r1[1]:>10.2f}")
    print(f"{'(e) reader only: K aug, one decode':34} {rk[0]:>11.2f} {rk[1]:>10.2f}")
    print(f"{'(e) reader only: K x plain':34} {rsep[0]:>11.2f} {rsep[1]:>10.2f}")
    print(f"rows computed: (a) {plain['computed']}, (b) {views['computed']}, (c) {sum(s['computed'] for s in separate)}")

    def ratio(a, b):
        return a / b if b > 0 else float("nan")

    print("measured ratios:")
    print(f"  (b)/(a) pass wall  {ratio(views['pass'], plain['pass']):.2f}   (K = {args.k}; model-only ratio "
          f"{ratio(views['model'], plain['model']):.2f})")
    print(f"  (b)/(a) pass CPU   {ratio(views['pass_cpu'], plain['pass_cpu']):.2f}")
    print(f"  (c)/(b) pass wall  {ratio(sep['pass'], views['pass']):.2f}   (> 1: the shared decode saves time)")
    print(f"  (c)/(b) pass CPU   {ratio(sep['pass_cpu'], views['pass_cpu']):.2f}")
    print(f"  non-model time (b)/(a) {ratio(views['pass'] - views['model'], plain['pass'] - plain['model']):.2f}  "
          f"vs (c)/(a) {ratio(sep['pass'] - sep['model'], plain['pass'] - plain['model']):.2f}  "
          "(decode once: (b) = one decode + the transforms; (c) = K decodes)")
    print(f"  reader K aug / plain: wall {ratio(rk[0], r1[0]):.2f}, CPU {ratio(rk[1], r1[1]):.2f};  K x plain / plain: "
          f"wall {ratio(rsep[0], r1[0]):.2f}, CPU {ratio(rsep[1], r1[1]):.2f}  (decode once: the K-view reader costs one "
          "decode + K transforms + K resizes)")
    print(f"  decode share of (c): {ratio(rsep[1], sep['pass_cpu']):.1%} of its CPU time; model share of (b): "
          f"{ratio(views['model'], views['pass']):.1%} of its wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
