"""``catdog-features extract``: pooled backbone vectors of an image folder into the cache.

Standard library only at module level (``--help`` must not import TensorFlow); the work is
imported inside :func:`run`.
"""

from __future__ import annotations

import argparse

from catdog_features.commands import _argtypes
import sys

HELP = "extract pooled backbone features of an image folder into the HDF5 cache (resumable)"
DESCRIPTION = (
    "Read every image of DATA once, run it through each backbone (frozen, global average "
    "pooling) and store the vectors in a fingerprinted HDF5 cache. Running the same command "
    "again reads the cache and does no model work; an interrupted run (Ctrl-C, kill -9) "
    "resumes where it stopped. Images that cannot be used are listed with a reason."
)




def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA",
                        help="image folder: Kaggle flat (cat.N.jpg), folder per class, labels.csv + train/, or unlabeled")
    parser.add_argument("--backbones", default="ResNet50,InceptionV3,Xception",
                        help="comma-separated backbone names, case-insensitive (default: %(default)s)")
    parser.add_argument("--cache", default="features_cache", metavar="DIR", help="cache folder (default: %(default)s)")
    parser.add_argument("--weights", default="imagenet", metavar="W",
                        help="imagenet | none | PATH to a weights file (one backbone) | NAME=PATH,NAME=imagenet,... "
                             "(default: %(default)s)")
    parser.add_argument("--image-size", type=_argtypes.image_size, default=0, metavar="N",
                        help="one square input size for every backbone; 0: each backbone's native size (default)")
    parser.add_argument("--batch-size", type=_argtypes.positive_int, default=32, metavar="N",
                        help="images per model call; keep it when resuming (default: %(default)s)")
    parser.add_argument("--labels-csv", default=None, metavar="F", help="labels.csv (id,<class>) for DATA")
    parser.add_argument("--view", choices=("plain", "hflip"), default="plain",
                        help="plain images or left-right mirrored ones (a cached TTA view) (default: %(default)s)")
    parser.add_argument("--workers", type=_argtypes.positive_int, default=None, metavar="N",
                        help="image decoding threads (default: number of CPUs)")
    parser.add_argument("--lock-timeout", type=float, default=30.0, metavar="S",
                        help="seconds to wait for another process writing the same entry (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fmt_rate(rate):
    return "-" if rate is None else f"{rate:.1f} img/s"


def format_summary(report, data) -> str:
    """The text printed after an extraction."""
    lines = [
        f"{data}: {report.n_inputs} images -> {report.n_rows} rows, {len(report.failed)} failures"
        + (f" (view {report.view})" if report.view != "plain" else "")
    ]
    if report.failed:
        lines.append("failures by reason:")
        for reason, paths in report.failures_by_reason().items():
            shown = ", ".join(paths[:3]) + (f", ... ({len(paths) - 3} more)" if len(paths) > 3 else "")
            lines.append(f"  {reason}: {len(paths)}  e.g. {shown}")
    width = max(len(name) for name in report.backbones)
    for name, b in report.backbones.items():
        if b.cache_hit:
            what = "cache hit"
        else:
            what = f"computed {b.computed} images ({_fmt_rate(b.images_per_s)} in the model)"
            if b.resumed_from:
                what += f", resumed at {b.resumed_from}"
        lines.append(f"  {name:<{width}}  {b.image_size}px  dim {b.dim}  {what}")
        lines.append(f"  {'':<{width}}  -> {b.cache_file}")
        if b.recovered:
            lines.append(f"  {'':<{width}}  recovered: {b.recovered}")
    if report.processed:
        lines.append(
            f"pass: {report.processed} images in {report.pass_seconds:.1f}s ({_fmt_rate(report.images_per_s)}); "
            f"total {report.seconds:.1f}s"
        )
    else:
        lines.append(f"everything came from the cache; no model was run ({report.seconds:.2f}s)")
    return "\n".join(lines)


def run(args) -> int:
    import warnings

    from catdog_features.features.cache import CacheWarning
    from catdog_features.features.extract import extract_with_report

    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CacheWarning):  # ours: one plain line, no source location
            print(f"catdog-features extract: warning: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    def status(message):
        print(f"catdog-features extract: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", CacheWarning)
        warnings.showwarning = show  # restored by catch_warnings
        _fs, report = extract_with_report(
            args.data,
            backbones=args.backbones,
            cache_dir=args.cache,
            weights=args.weights,
            image_size=args.image_size or None,
            batch_size=args.batch_size,
            labels_csv=args.labels_csv,
            view=args.view,
            num_workers=args.workers,
            progress=not args.no_progress,
            lock_timeout=args.lock_timeout,
            on_message=status,
        )
    print(format_summary(report, args.data))
    return 0
