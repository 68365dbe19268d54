"""`catdog-features submit`: a Kaggle submission CSV from a run folder."""

from __future__ import annotations

HELP = "write a Kaggle submission CSV from a run folder's ensemble"
DESCRIPTION = (
    "Write a Kaggle submission from a run folder (made by `run` or `ensemble`): binary "
    "'id,label' (probability of class 1, ids in numeric order) or multi-class 'id,<classes>' "
    "in the column order of --sample-submission. Uses the run's stored test predictions, or "
    "predicts --test DIR with the run's saved models. Probabilities are clipped with the epsilon "
    "chosen on out-of-fold predictions unless --clip is given. Written atomically."
)


def add_arguments(parser) -> None:
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder holding ensemble.json")
    parser.add_argument("--out", default=None, metavar="CSV", help="output file (default: RUN_DIR/submission.csv)")
    parser.add_argument("--sample-submission", default=None, metavar="CSV",
                        help="Kaggle sample_submission.csv: the file then has exactly its ids and columns")
    parser.add_argument("--clip", type=float, default=None, metavar="EPS",
                        help="clip probabilities to [EPS, 1-EPS] (default: the run's OOF-chosen clip)")
    parser.add_argument("--test", default=None, metavar="DIR",
                        help="predict this folder with the run's saved models instead of using its stored test predictions")
    parser.add_argument("--cache", default=None, metavar="DIR",
                        help="feature cache for --test (default: the run's if it is inside RUN_DIR, else RUN_DIR/features_cache)")
    parser.add_argument("--allow-missing-classes", action="store_true",
                        help="multi-class: sample columns the model never saw get probability 0 instead of an error")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args) -> int:
    from catdog_features.commands.predict import predict_quietly
    from catdog_features.run.predict import write_run_submission

    prediction = None
    if args.test:
        prediction = predict_quietly(args.run, args.test, cache_dir=args.cache, progress=args.progress)
    info = write_run_submission(
        args.run, args.out, sample_submission=args.sample_submission, clip=args.clip,
        allow_missing_classes=args.allow_missing_classes, prediction=prediction,
    )
    print(f"wrote {info.n_rows} rows ({info.format}: {','.join(info.columns[:6])}"
          f"{',...' if len(info.columns) > 6 else ''}) -> {info.path}")
    return 0
