"""`catdog-features run CONFIG.toml`: the whole pipeline from one run config."""

from __future__ import annotations

HELP = "run the whole pipeline (extract, sweep, ensemble, submission, report) from a TOML config"
DESCRIPTION = (
    "Run every stage from one TOML run config (see experiments/*.toml and DESIGN.md 'Run config'): "
    "extract features (cached), sweep head settings with Hyperopt TPE (resumable trials), fit "
    "K-fold OOF ensembles of the best trials, write the Kaggle submission and the report into "
    "the [output] dir. Re-running a finished config reuses the cache, the trials and the OOF "
    "predictions and only redoes what changed."
)


def add_arguments(parser) -> None:
    parser.add_argument("config", help="run config file (TOML), e.g. experiments/tiny.toml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set sweep.max_evals=10 --set data.train=/data/train "
        "(TOML literal or bare string; paths relative to the current directory); repeatable",
    )
    parser.add_argument("--check", action="store_true", help="only validate the config and print it, run nothing")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args) -> int:
    import json

    from catdog_features.run.config import check_paths, load_config

    config = load_config(args.config, args.overrides)
    if args.check:
        check_paths(config)
        print(json.dumps(config.to_dict(), indent=1))
        print("config OK")
        return 0

    from catdog_features.run.pipeline import format_outputs, run_pipeline

    summary = run_pipeline(config, progress=args.progress, overrides=args.overrides)
    statuses = ", ".join(f"{name} {stage['status']}" for name, stage in summary.stages.items())
    print(f"done in {summary.seconds:.1f} s ({statuses}); chosen {summary.method}, clip {summary.clip:g}")
    print("outputs:")
    print(format_outputs(summary))
    return 0
