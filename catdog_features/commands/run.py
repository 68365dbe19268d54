"""`catdog-features run CONFIG.toml`: the whole pipeline from one run config."""

from __future__ import annotations

import json

HELP = "run the whole pipeline (extract, sweep, ensemble, submission, report) from a TOML config"
DESCRIPTION = (
    "Run every stage from one TOML run config (see experiments/*.toml and the README's config reference): "
    "extract features (cached), sweep head settings with Hyperopt TPE (resumable trials), fit "
    "K-fold OOF ensembles of the best trials, write the Kaggle submission and the report into "
    "the [output] dir. Re-running a finished config reuses the cache, the trials and the OOF "
    "predictions and only redoes what changed."
)

#: (section, key) -> (what an unset value is written as in TOML, what it means).
_UNSET = {
    ("data", "labels_csv"): ('""', "none: labels from the file names or class folders (or train/labels.csv)"),
    ("data", "test"): ('""', "none: no test set, no submission"),
    ("data", "sample_submission"): ('""', "none: ids and columns from the test set"),
    ("extract", "image_size"): ("0", "each backbone's native size"),
    ("sweep", "cv"): ("0", "one hold-out split"),
    ("sweep", "epochs"): (None, "the search space's"),
    ("sweep", "patience"): (None, "the search space's"),
}
_WEIGHTS = {"none": "random init (no download)", "imagenet": "downloaded by Keras once"}


def add_arguments(parser) -> None:
    parser.add_argument("config", help="run config file (TOML), e.g. experiments/tiny.toml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set sweep.max_evals=10 --set data.train=/data/train "
        "(TOML literal or bare string; paths relative to the current directory); repeatable",
    )
    parser.add_argument("--check", action="store_true", help="only validate the config and print it, run nothing")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # str, number, bool and lists of them read the same in TOML


def describe_config(config) -> str:
    """The validated config as TOML, every default filled in and every "unset" value spelled out."""
    lines = [f"# {config.source}" if config.source else "# (no config file)"]
    for section, values in config.to_dict().items():
        if section == "source" or values is None:
            continue
        lines.append(f"[{section}]")
        space = values.pop("space", None) if section == "sweep" else None
        for key, value in values.items():
            written, meaning = _UNSET.get((section, key), (None, ""))
            if value is None:
                lines.append(f"# {key}: not set ({meaning})" if written is None else f"{key} = {written}  # {meaning}")
                continue
            note = _WEIGHTS.get(value, "a weights file") if (section, key) == ("extract", "weights") \
                and isinstance(value, str) else ""
            lines.append(f"{key} = {_toml(value)}" + (f"  # {note}" if note else ""))
        if space:
            lines += ["[sweep.space]"] + [f"{k} = {_toml(v)}" for k, v in space.items()]
    return "\n".join(lines)


def run(args) -> int:
    from catdog_features.run.config import check_paths, load_config

    config = load_config(args.config, args.overrides)
    if args.check:
        check_paths(config)
        print(describe_config(config))
        print("config OK")
        return 0

    from catdog_features.run.pipeline import format_outputs, run_pipeline

    summary = run_pipeline(config, progress=args.progress, overrides=args.overrides)
    statuses = ", ".join(f"{name} {stage['status']}" for name, stage in summary.stages.items())
    print(f"done in {summary.seconds:.1f} s ({statuses}); chosen {summary.headline}")
    print("outputs:")
    print(format_outputs(summary))
    return 0
