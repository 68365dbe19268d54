"""`catdog-features ensemble`: K-fold OOF members + ensemblers from a sweep's trials file."""

from __future__ import annotations

HELP = "fit K-fold out-of-fold ensembles of the best sweep trials into a run folder"
DESCRIPTION = (
    "Take the top-k distinct trials of a sweep's trials file as members, fit each on K "
    "stratified folds (out-of-fold predictions for every training image; test predictions = "
    "mean of the fold models), then fit the ensemblers (mean, weighted blend, nested-CV "
    "logistic-regression stacker), pick one by OOF log loss and choose the clip on OOF "
    "predictions. Features come from the cache (same settings as the sweep). Writes oof.h5, "
    "models/, ensemble.json, scores.txt and test_predictions.csv into --out (the same run "
    "folder and manifest as `run`); then use `catdog-features submit --run OUT` or `predict --run OUT`."
)

from catdog_features.commands import _argtypes

#: argument -> (config section, key): the run config this command's arguments make.
_CONFIG_KEYS = {
    "data": ("data", "train"), "labels_csv": ("data", "labels_csv"), "test": ("data", "test"),
    "cache": ("extract", "cache_dir"), "weights": ("extract", "weights"), "image_size": ("extract", "image_size"),
    "batch_size": ("extract", "batch_size"), "top_k": ("ensemble", "top_k"), "folds": ("ensemble", "folds"),
    "method": ("ensemble", "method"), "clip": ("ensemble", "clip"), "seed": ("ensemble", "seed"),
    "test_from": ("ensemble", "test_from"), "out": ("output", "dir"), "jobs": ("distributed", "jobs"), "distributor": ("distributed", "distributor"),
    "spark_master": ("distributed", "master"),
}


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="labelled training images (as given to sweep)")
    parser.add_argument("--trials", required=True, metavar="FILE", help="the sweep's SQLite trials file")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    parser.add_argument("--labels-csv", default=None, metavar="CSV", help="labels.csv for --data")
    parser.add_argument("--test", default=None, metavar="DIR", help="unlabelled test folder to predict")
    parser.add_argument("--cache", default="features_cache", metavar="DIR", help="feature cache (default: features_cache)")
    parser.add_argument("--weights", default="imagenet", metavar="W",
                        help="imagenet | none | PATH (one backbone) | NAME=PATH,... (as for extract)")
    parser.add_argument("--image-size", type=int, default=0, metavar="N", help="0: native size (as for extract)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="members: the K best distinct trials (default 5)")
    parser.add_argument("--folds", type=int, default=5, metavar="K", help="stratified folds (default 5)")
    parser.add_argument("--method", default="auto", choices=("auto", "blend", "stack", "mean", "best", "linear"),
                        help="how members are combined; auto: the lowest OOF log loss, or the linear member on small data "
                             "unless clearly beaten (default: %(default)s)")
    parser.add_argument("--clip", default="auto", metavar="EPS", help="auto (chosen on OOF) or a number such as 0.005")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds (default 0)")
    parser.add_argument("--test-from", default="auto", choices=("auto", "folds", "refit"),
                        help="a member's test predictions: its fold models' mean, or one model refitted on all "
                             "training rows; auto: refit the logistic-regression member (default: %(default)s)")
    _argtypes.add_parallel_arguments(parser, "fold fits")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def config_from_args(args, backbones):
    """The :class:`~catdog_features.run.config.RunConfig` of these arguments (``sweep`` None:
    the trials come from ``--trials``), validated like a config file, errors naming the flag."""
    import dataclasses
    import os

    from catdog_features.run.config import parse_config

    raw = {"data": {}, "extract": {"backbones": list(backbones)}, "ensemble": {}, "distributed": {},
           "output": {"report": False}}
    explicit = {}
    for arg, (section, key) in _CONFIG_KEYS.items():
        value = getattr(args, arg)
        if arg == "clip" and value != "auto":
            try:
                value = float(value)
            except ValueError:
                pass  # reported by the config check, naming --clip
        raw[section][key] = "" if value is None else value
        explicit[(section, key)] = f"--{arg.replace('_', '-')} {value}"
    config = parse_config(raw, base_dir=os.getcwd(), name="ensemble", explicit=explicit)
    return dataclasses.replace(config, sweep=None)


def run(args) -> int:
    import time

    from catdog_features.ensemble import members_from_sweep
    from catdog_features.run.pipeline import ensemble_stage, extract_stage, finish_run, read_sweep, start_run, trials_stage

    started = time.perf_counter()
    sweep = read_sweep(args.trials)
    members = members_from_sweep(sweep, args.top_k)
    config = config_from_args(args, dict.fromkeys(b for m in members for b in m["backbones"]))
    run_dir = start_run(config, command="ensemble")
    train, test = extract_stage(run_dir, config, progress=args.progress)
    trials_stage(run_dir, sweep)
    stage = ensemble_stage(run_dir, config, members, train, test, progress=args.progress)  # prints the score table
    finish_run(run_dir, started)
    print(f"ensemble -> {run_dir.ensemble}; OOF -> {run_dir.oof}; models -> {run_dir.models}")
    if stage["result"].test_proba is not None:
        print(f"test predictions -> {run_dir.test_predictions}; next: catdog-features submit --run {run_dir.root} "
              f"(writes {run_dir.submission})")
    return 0
