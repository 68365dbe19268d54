"""``catdog-features report RUN_DIR``: figures, tables and one HTML page for a run folder."""

from __future__ import annotations

from catdog_features.commands import _argtypes

HELP = "write the HTML/Markdown report (plots, tables, error analysis) of a run folder"
DESCRIPTION = (
    "Read a run folder made by `catdog-features run` (or `ensemble`) and write RUN_DIR/report.html "
    "(self-contained: figures embedded) plus RUN_DIR/report/ with the PNG figures, report.md and CSVs: "
    "a comparison table per backbone, backbone combination and ensembler (log loss, accuracy, feature "
    "dimension, extraction speed, cache size), the heads' training curves, the sweep history, the "
    "highest-loss training images by out-of-fold prediction, likely_mislabeled.csv, the confusion "
    "matrix and the extraction failure records. Nothing is refitted. `run` writes it at the end."
)




def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder (holds manifest.json, trials.sqlite, oof.h5, ...)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write everything (report.html included) into DIR instead of RUN_DIR/report.html + RUN_DIR/report/")
    parser.add_argument("--top-n", type=_argtypes.positive_int, default=16, metavar="N",
                        help="highest-loss training images in the grid (default: %(default)s)")
    parser.add_argument("--threshold", type=_argtypes.probability, default=0.9, metavar="P",
                        help="confidence of a wrong OOF prediction that lists an image in likely_mislabeled.csv "
                        "(default: %(default)s)")
    parser.add_argument("--max-curves", type=_argtypes.positive_int, default=4, metavar="K",
                        help="members whose fold heads' training curves are drawn (default: %(default)s)")


def run(args) -> int:
    import time
    import warnings

    from catdog_features.report import MARKDOWN_NAME, ReportWarning, write_report
    from catdog_features.run.rundir import RunDir

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        path = write_report(args.run_dir, args.out, args.top_n, threshold=args.threshold, max_curves=args.max_curves)
    for w in caught:
        print(f"warning: {w.message}")
    seconds = time.perf_counter() - t0
    run = RunDir(args.run_dir)
    if run.manifest.is_file() and args.out is None:
        run.record_stage("report", "done", seconds, path=run.relative(path))
    folder = path.parent / "report" if args.out is None else path.parent
    print(f"report -> {path}")
    print(f"figures, report.md ({MARKDOWN_NAME}) and CSVs -> {folder}")
    return 0
