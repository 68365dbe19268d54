"""``catdog-features sweep``: Hyperopt TPE over dense-head settings and backbone subsets.

Standard library only at module level (``--help`` must not import TensorFlow); the work is
imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

from catdog_features.commands import _argtypes

HELP = "search head hyperparameters and backbone subsets with Hyperopt TPE (resumable)"
DESCRIPTION = (
    "Get the features of DATA (from the cache if `extract` ran before, else computed now), then "
    "run a Hyperopt TPE sweep minimising validation log loss over a search space (default: a "
    "dense head with adam/SGD/adadelta, L2, dropout and an optional hidden layer on standardised "
    "features, or a logistic regression; --space reference: the reference recipe's SGD space) "
    "and the subset of backbones to concatenate. Below 3,000 images the loss is 5-fold CV. Every "
    "finished trial is committed to a SQLite trials file at once; if the sweep is interrupted "
    "(Ctrl-C, kill -9, power loss), run the same command again to resume. Raising --max-evals "
    "and rerunning extends a finished sweep."
)


def _cv(text):
    """--cv: auto, 0 (one hold-out split) or k >= 2 folds."""
    if text == "auto":
        return "auto"
    if text.strip() == "0":
        return None
    return _argtypes.folds(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="training images: Kaggle flat folder, folder per class, or a folder with labels.csv")
    parser.add_argument("--cache", default="features_cache", help="feature cache folder (default: %(default)s)")
    parser.add_argument("--labels-csv", default=None, help="labels.csv (id,<class>) for DATA")
    parser.add_argument("--backbones", default=None, help="comma-separated backbone names (default: extract's default set)")
    parser.add_argument("--weights", default="imagenet", metavar="W",
                        help="imagenet | none | PATH (one backbone) | NAME=PATH,NAME=imagenet,... (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=None, help="input size for every backbone (default: each one's native size)")
    parser.add_argument("--max-evals", type=_argtypes.positive_int, default=100,
                        help="total trials wanted in the trials file, >= 1 (default: %(default)s)")
    parser.add_argument("--trials", default=None,
                        help="SQLite trials file (default: <cache>/sweep-<hash of data and settings>.sqlite)")
    parser.add_argument("--space", choices=("default", "reference"), default="default",
                        help="search space preset: default (dense or linear heads) or reference (the recipe's SGD space)")
    parser.add_argument("--cv", type=_cv, default="auto", metavar="K",
                        help="auto (5-fold CV below 3,000 images, else hold-out), 0 (one hold-out split) or k >= 2 folds "
                             "(default: auto)")
    parser.add_argument("--validation-split", type=_argtypes.fraction, default=0.2, help="hold-out fraction (default: %(default)s)")
    parser.add_argument("--early-stopping", choices=("auto", "inner", "fold"), default="auto",
                        help="dense heads stop on their own split of the training part (inner) or on the scored split "
                             "(fold, the reference's way); auto: fold for --space reference, else inner")
    parser.add_argument("--no-search-backbones", action="store_true", help="always concatenate all backbones instead of searching subsets")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the heads and TPE (default: %(default)s)")
    parser.add_argument("--epochs", type=_argtypes.positive_int, default=None,
                        help="max epochs per dense head (default: the space's: 400, reference 200)")
    parser.add_argument("--patience", type=_argtypes.positive_int, default=None,
                        help="early-stopping patience of dense heads (default: the space's: 20, reference 8)")
    parser.add_argument("--timeout", type=float, default=None, help="start no new trial after this many seconds")
    parser.add_argument("--new", action="store_true", help="move an existing trials file aside and start a new sweep")
    _argtypes.add_parallel_arguments(parser, "trials")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def default_trials_path(args, backbones) -> str:
    """``<cache>/sweep-<hash>.sqlite``: one file per (data, features, objective) setting.

    ``--max-evals`` and ``--timeout`` are left out, so rerunning with a larger budget extends
    the same sweep; everything else that changes the trials' meaning gives another file.
    """
    from catdog_features.features.backbones import parse_weights, weights_to_text

    key = {
        "data": os.path.abspath(args.data),
        "labels_csv": os.path.abspath(args.labels_csv) if args.labels_csv else None,
        "backbones": list(backbones),
        "weights": weights_to_text(parse_weights(args.weights, base_dir=os.getcwd())),
        "image_size": args.image_size or None,
        "space": args.space,
        "early_stopping": args.early_stopping,
        "cv": args.cv,
        "validation_split": args.validation_split if args.cv in (None, "auto") else None,
        "search_backbones": not args.no_search_backbones,
        "seed": args.seed,
        "epochs": args.epochs,
        "patience": args.patience,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(args.cache, f"sweep-{digest}.sqlite")


def run(args) -> int:
    from catdog_features.features.extract import extract_features
    from catdog_features.features.backbones import parse_weights
    from catdog_features.search import sweep

    weights = parse_weights(args.weights)
    kwargs = {}
    if args.backbones:
        from catdog_features.features.backbones import parse_backbones

        kwargs["backbones"] = parse_backbones(args.backbones)
    fs = extract_features(
        args.data, cache_dir=args.cache, weights=weights, image_size=args.image_size or None,
        labels_csv=args.labels_csv, progress=not args.quiet, **kwargs,
    )
    if fs.labels is None:
        raise ValueError(f"The images in {args.data!r} have no labels; a sweep needs a labeled training set.")
    trials = args.trials or default_trials_path(args, fs.backbones)
    print(f"features: {fs!r}")
    print(f"trials file: {trials}")
    head_params = {k: v for k, v in (("epochs", args.epochs), ("patience", args.patience)) if v is not None}
    result = sweep(
        fs, space=args.space, max_evals=args.max_evals, trials_path=trials, search_backbones=not args.no_search_backbones,
        cv=args.cv, validation_split=args.validation_split,
        early_stopping=None if args.early_stopping == "auto" else args.early_stopping, random_state=args.seed,
        head_params=head_params or None, progress=not args.quiet, timeout=args.timeout, new=args.new,
        n_jobs=args.jobs, distributor=args.distributor, spark_master=args.spark_master,
    )
    if args.quiet:
        print(result.format_table())
    n = len(result.trials)
    if result.best_trial is not None:
        print(f"best val log loss {result.best_loss:.5f} with backbones {'+'.join(result.best_backbones) or '-'} "
              f"and {json.dumps(result.best_params, sort_keys=True)}")
        print(f"best estimator (unfitted): {result.best_estimator()!r}")
    else:
        print("no successful trial yet", file=sys.stderr)
    if n < args.max_evals:
        print(f"{n}/{args.max_evals} trials done; run the same command again to resume.")
    else:
        print(f"{n} trials in {trials}; to extend the sweep, run the same command with a larger --max-evals.")
    return 1 if result.trials and result.best_trial is None else 0  # every trial failed: say so in the exit code
