"""`catdog-features predict`: class probabilities for any folder of images from a saved ensemble."""

from __future__ import annotations

HELP = "predict class probabilities for a folder of images with a run's saved ensemble"
DESCRIPTION = (
    "Predict every image of a folder (or a list of files) with the ensemble saved in a run "
    "folder: features come from the cache or are extracted with the run's settings, each "
    "member's K fold models are averaged and combined by the run's ensembler. Writes "
    "'id,<class names>' probabilities (unclipped) as CSV; unreadable images are listed on stderr. "
    "The run's own feature cache is used only when it lies inside the run folder (a run folder may "
    "come from elsewhere): name another one with --cache."
)


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="a folder of images, or image files")
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder holding ensemble.json")
    parser.add_argument("--out", default="predictions.csv", metavar="CSV", help="output CSV (default: predictions.csv)")
    parser.add_argument("--cache", default=None, metavar="DIR",
                        help="feature cache (default: the run's if it is inside RUN_DIR, else RUN_DIR/features_cache)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N", help="extraction batch size")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def predict_quietly(run_dir, source, **kwargs):
    """``predict_folder``, its cache-location warning printed as one line on stderr."""
    import sys
    import warnings

    from catdog_features.run.predict import CacheLocationWarning, predict_folder

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheLocationWarning)
        prediction = predict_folder(run_dir, source, **kwargs)
    for w in caught:
        if issubclass(w.category, CacheLocationWarning):
            print(f"note: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return prediction


def run(args) -> int:
    import sys

    from catdog_features.submission import write_probabilities

    source = args.images[0] if len(args.images) == 1 else list(args.images)
    prediction = predict_quietly(args.run, source, cache_dir=args.cache, batch_size=args.batch_size,
                                 progress=args.progress)
    write_probabilities(args.out, prediction.ids, prediction.probs, prediction.class_names)
    for image_id, path, reason in prediction.failed:
        print(f"warning: could not read {path}: {reason}", file=sys.stderr)
    print(f"wrote probabilities of {len(prediction.ids)} image(s) ({', '.join(prediction.class_names[:5])}"
          f"{', ...' if len(prediction.class_names) > 5 else ''}) -> {args.out}")
    return 0
