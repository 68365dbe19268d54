"""``catdog-features demo``: the whole pipeline on a generated dataset, no download needed.

A small labeled image set (two visually different classes, Kaggle ``cat.N``/``dog.N`` names)
and an unlabeled test folder are generated; features are extracted with small, randomly
initialised backbones (then extracted again to show the cache answering); then the same
pipeline as ``catdog-features run`` runs on them: a Hyperopt TPE sweep, a K-fold OOF
ensemble of the best trials, the Kaggle submission and the report, each output's location
printed at the end. Standard library only at module level; the work is imported inside
:func:`run`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from catdog_features.commands import _argtypes

HELP = "run the whole pipeline on a small generated dataset (no download needed)"
DESCRIPTION = (
    "Generate a small labeled image set (two visually different classes, Kaggle cat.N/dog.N "
    "names) plus a test folder into --out (default: a temporary folder), extract features with "
    "small randomly initialised backbones into <out>/features_cache (and again, to show the cache "
    "hit), then sweep head settings with TPE, fit a K-fold OOF ensemble, write a Kaggle submission "
    "and the report into <out>/run. About a minute on 2 CPU cores."
)

DEMO_BACKBONE = "VGG16"
#: Backbones of the demo's pipeline: random-init backbones whose pooled vectors vary at a
#: small size (measured on the demo's images, weights=None, largest per-feature std at
#: 32 / 64 px: VGG16 0.022 / 0.049, ResNet50 3.5 / 3.2, VGG19 0.0055 / 0.014, ResNet50V2 0.019 /
#: 0.021, DenseNet121 0.032 / 0.041; constant: MobileNetV2 7e-13 / 1.6e-12, EfficientNetB0
#: 5e-7 / 3e-6). VGG16 builds fastest; the two differ, so the sweep's subset choice is real.
DEMO_BACKBONES = ("VGG16", "ResNet50")
DEMO_IMAGE_SIZE = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for the generated data, cache and run folder (default: a temporary folder, "
                        "removed at the end)")
    parser.add_argument("--n", type=_argtypes.positive_int, default=24, metavar="N",
                        help="generated training images per class (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def demo_config(out: Path, n_per_class: int) -> dict:
    """The run config of the demo (the settings of experiments/tiny.toml, scaled to ``n_per_class``)."""
    small = n_per_class < 10  # a handful of images: fewer folds/trials, and enough rows held out per fit
    return {
        "data": {"train": str(out / "data" / "train"), "test": str(out / "data" / "test")},
        "extract": {"backbones": list(DEMO_BACKBONES), "weights": "none", "image_size": DEMO_IMAGE_SIZE,
                    "batch_size": 16, "cache_dir": str(out / "features_cache")},
        "sweep": {"max_evals": 2 if small else 4, "search_backbones": True, "seed": 0, "cv": 0,
                  "validation_split": 0.25, "epochs": 15 if small else 40, "patience": 5,
                  "space": {"optimizer": "adam", "lr": {"loguniform": [0.003, 0.03]}, "decay": 0.0, "momentum": 0.0,
                            "dropout": {"choice": [0.1, 0.3]}, "batch_size": 32,
                            "validation_split": 0.5 if small else 0.2}},
        "ensemble": {"folds": 2 if small else 3, "top_k": 1 if small else 2, "method": "auto", "clip": "auto", "seed": 0},
        "output": {"dir": str(out / "run"), "report": True},
    }


def run(args) -> int:
    if args.out is None:
        with tempfile.TemporaryDirectory(prefix="catdog-demo-") as tmp:
            return _demo(Path(tmp), args, temporary=True)
    return _demo(Path(args.out).expanduser().absolute(), args, temporary=False)


def _demo(out: Path, args, temporary: bool) -> int:
    from catdog_features.commands.extract import format_summary
    from catdog_features.features.extract import extract_with_report
    from catdog_features.run.config import parse_config
    from catdog_features.run.pipeline import format_outputs, run_pipeline
    from catdog_features.synthetic import make_dataset

    say = print
    t0 = time.perf_counter()
    n_test = max(1, args.n // 4)
    make_dataset(out / "data", n_per_class=args.n, n_test=n_test, layout="kaggle", size=96, seed=0)
    train = out / "data" / "train"
    cache = out / "features_cache"
    say(f"[1/3] generated {2 * args.n} labeled images (cat.N.jpg = stripes, dog.N.jpg = circles) in {train}"
        f" and {n_test} test images in {out / 'data' / 'test'} ({time.perf_counter() - t0:.1f}s)")

    say(f"[2/3] extracting {' + '.join(DEMO_BACKBONES)} features at {DEMO_IMAGE_SIZE}px with random weights "
        f"(weights=None) into {cache}")
    settings = dict(backbones=DEMO_BACKBONES, cache_dir=cache, weights=None, image_size=DEMO_IMAGE_SIZE,
                    batch_size=16, progress=not args.no_progress)
    fs, report = extract_with_report(train, **settings)
    say(format_summary(report, train))
    t1 = time.perf_counter()
    again, _ = extract_with_report(train, **dict(settings, progress=False))
    say(f"      same call again: cache hit={all(again.cache_hits.values())}, {time.perf_counter() - t1:.2f}s, "
        "no model built")
    say(f"      result: {fs!r}; fs['{DEMO_BACKBONE}'] has shape {fs[DEMO_BACKBONE].shape}, labels {fs.labels[:4]}...")

    say("[3/3] the pipeline of `catdog-features run` (sweep -> OOF ensemble -> submission -> report), "
        f"into {out / 'run'}")
    config = parse_config(demo_config(out, args.n), base_dir=out, name="demo")
    summary = run_pipeline(config, progress=not args.no_progress, command="demo",
                           log=lambda msg: say("\n".join(f"      {line}" for line in str(msg).splitlines())))
    say(f"      chosen ensemble: {summary.headline}")
    say("")
    say("Where each output went:")
    say(format_outputs(summary))
    say(f"  {'features':<16}  {cache}")
    say("")
    say("Outside the demo, extract_features() and `catdog-features extract` use ImageNet weights by default "
        "(weights='imagenet', downloaded once by Keras into ~/.keras/models); without internet, pass a local "
        "weights file (--weights PATH) or --weights none. Random-init features only check the plumbing: "
        "their scores mean nothing. For a real run: catdog-features run experiments/dogs_vs_cats_merged.toml")
    if temporary:
        say(f"(the demo folder {out} is temporary and is removed now; use --out DIR to keep it)")
    say(f"demo finished in {time.perf_counter() - t0:.1f}s")
    sys.stdout.flush()
    return 0
