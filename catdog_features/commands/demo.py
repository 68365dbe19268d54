"""``catdog-features demo``: the pipeline on a generated dataset, no download needed.

Today it runs the stages that exist: a small labeled image set is generated (two visually
different classes) and its features are extracted with a small, randomly initialised
backbone into a cache next to it, then extracted again to show the cache answering.
Standard library only at module level; the work is imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HELP = "run the pipeline on a small generated dataset (no download needed)"
DESCRIPTION = (
    "Generate a small labeled image set (two visually different classes, Kaggle cat.N/dog.N "
    "names) into --out (default: a temporary folder), extract its features with a small "
    "randomly initialised backbone into <out>/features_cache, and extract again to show the "
    "cache hit. Finishes in well under a minute on a laptop CPU."
)

DEMO_BACKBONE = "MobileNetV2"
DEMO_IMAGE_SIZE = 64


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, received {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for the generated data and cache (default: a temporary folder, removed at the end)")
    parser.add_argument("--n", type=_positive_int, default=24, metavar="N",
                        help="generated training images per class (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    if args.out is None:
        with tempfile.TemporaryDirectory(prefix="catdog-demo-") as tmp:
            return _demo(Path(tmp), args, temporary=True)
    return _demo(Path(args.out).expanduser().absolute(), args, temporary=False)


def _demo(out: Path, args, temporary: bool) -> int:
    from catdog_features.commands.extract import format_summary
    from catdog_features.extract import extract_with_report
    from catdog_features.synthetic import make_dataset

    say = print
    t0 = time.perf_counter()
    make_dataset(out / "data", n_per_class=args.n, n_test=max(1, args.n // 4), layout="kaggle", size=96, seed=0)
    train = out / "data" / "train"
    cache = out / "features_cache"
    say(f"[1/2] generated {2 * args.n} labeled images (cat.N.jpg = stripes, dog.N.jpg = circles) in {train}"
        f" ({time.perf_counter() - t0:.1f}s)")

    say(f"[2/2] extracting {DEMO_BACKBONE} features at {DEMO_IMAGE_SIZE}px with random weights (weights=None) "
        f"into {cache}")
    settings = dict(backbones=(DEMO_BACKBONE,), cache_dir=cache, weights=None, image_size=DEMO_IMAGE_SIZE,
                    batch_size=16, progress=not args.no_progress)
    fs, report = extract_with_report(train, **settings)
    say(format_summary(report, train))
    t1 = time.perf_counter()
    again, _ = extract_with_report(train, **dict(settings, progress=False))
    say(f"      same call again: cache hit={all(again.cache_hits.values())}, {time.perf_counter() - t1:.2f}s, "
        "no model built")
    say(f"      result: {fs!r}; fs['{DEMO_BACKBONE}'] has shape {fs[DEMO_BACKBONE].shape}, labels {fs.labels[:4]}...")
    say("")
    say("Outside the demo, extract_features() and `catdog-features extract` use ImageNet weights by default "
        "(weights='imagenet', downloaded once by Keras into ~/.keras/models); without internet, pass a local "
        "weights file (--weights PATH) or --weights none.")
    if temporary:
        say(f"(the demo folder {out} is temporary and is removed now; use --out DIR to keep it)")
    say(f"demo finished in {time.perf_counter() - t0:.1f}s")
    sys.stdout.flush()
    return 0
