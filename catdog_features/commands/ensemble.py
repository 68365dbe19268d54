"""`catdog-features ensemble`: K-fold OOF members + ensemblers from a sweep's trials file."""

from __future__ import annotations

HELP = "fit K-fold out-of-fold ensembles of the best sweep trials into a run folder"
DESCRIPTION = (
    "Take the top-k distinct trials of a sweep's trials file as members, fit each on K "
    "stratified folds (out-of-fold predictions for every training image; test predictions = "
    "mean of the fold models), then fit the ensemblers (mean, weighted blend, nested-CV "
    "logistic-regression stacker), pick one by OOF log loss and choose the clip on OOF "
    "predictions. Features come from the cache (same settings as the sweep). Writes oof.h5, "
    "models/, ensemble.json, scores.txt and test_predictions.csv into --out; then use "
    "`catdog-features submit --run OUT` or `predict --run OUT`."
)


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
    parser.add_argument("--method", default="auto", choices=("auto", "blend", "stack", "mean"))
    parser.add_argument("--clip", default="auto", metavar="EPS", help="auto (chosen on OOF) or a number such as 0.005")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds (default 0)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args) -> int:
    from pathlib import Path

    from catdog_features.ensemble import members_from_sweep
    from catdog_features.features.backbones import parse_weights
    from catdog_features.run.pipeline import ExtractionSettings, fit_ensemble_stage, load_features
    from catdog_features.run.rundir import RunDir
    from catdog_features.search import TrialStore

    clip = args.clip if args.clip == "auto" else float(args.clip)
    trials_path = Path(args.trials)
    if not trials_path.is_file():
        raise FileNotFoundError(f"Trials file not found. Received: --trials {args.trials!r}.")
    store = TrialStore(trials_path)
    try:
        trials = store.load()
    finally:
        store.close()
    members = members_from_sweep(trials, args.top_k)
    backbones = tuple(dict.fromkeys(b for m in members for b in m["backbones"]))
    weights = parse_weights(args.weights)
    settings = ExtractionSettings(backbones, weights, args.image_size or None, args.batch_size,
                                  str(Path(args.cache).absolute()))
    train = load_features(args.data, settings, labels_csv=args.labels_csv, progress=args.progress)
    test = load_features(args.test, settings, progress=args.progress) if args.test else None
    run_dir = RunDir(args.out)
    run_dir.root.mkdir(parents=True, exist_ok=True)
    stage = fit_ensemble_stage(run_dir, members, train, test, folds=args.folds, seed=args.seed, method=args.method,
                               clip=clip, settings=settings, progress=args.progress)
    result = stage["result"]
    run_dir.update_manifest(config={"command": "ensemble", **{k: v for k, v in vars(args).items() if not k.startswith("_")}})
    run_dir.record_stage("oof", stage["status"], stage["seconds"], key=stage["oof"].key,
                         members=[m["name"] for m in stage["oof"].members])
    run_dir.record_stage("ensemble", "done", 0.0, method=result.method, clip=result.clip, scores=result.scores)
    print(result.format_table())
    print(f"ensemble -> {run_dir.ensemble}; OOF -> {run_dir.oof}; fold models -> {run_dir.models}")
    if result.test_proba is not None:
        print(f"test predictions -> {run_dir.test_predictions}; next: catdog-features submit --run {run_dir.root} --out submission.csv")
    return 0
