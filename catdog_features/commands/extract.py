"""``catdog-features extract``: pooled backbone vectors of an image folder into the feature store.

Standard library only at module level (``--help`` must not import TensorFlow); the work is
imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import sys

from catdog_features.commands import _argtypes

HELP = "extract pooled backbone features of an image folder into the feature store (resumable)"
DESCRIPTION = (
    "Read every image of DATA once, run it through each backbone (frozen, global average "
    "pooling) and store the vectors in the content-addressed feature store: each image content "
    "goes through each backbone once, ever, whatever folder or list it shows up in. Running the "
    "same command again reads the store and does no model work; an interrupted run (Ctrl-C, "
    "kill -9, a full disk) continues where it stopped. Images that cannot be used are listed "
    "with a reason."
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
    parser.add_argument("--view", type=_argtypes.views, default=None, metavar="VIEW",
                        help="one view: plain, hflip (mirrored), aug:<k> (seeded random augmentation) or "
                        "crop:tl|tr|bl|br|c (TTA crops at zoom 1.35) (default: plain)")
    parser.add_argument("--views", type=_argtypes.views, default=None, metavar="LIST",
                        help="several views in one pass, each image decoded once, e.g. plain,hflip,aug:0-7 "
                        "(ranges expand); each view is its own extractor in the store")
    parser.add_argument("--split", default=None, metavar="LAYER",
                        help="cache feature maps (float16, one chunk per image) at this layer instead of pooled "
                        "vectors, for a TopBlockHead: a layer name, LAYER:input, or 'default' (the input of the "
                        "backbone's last block: ResNet50, InceptionV3, Xception); its own extractor in the store")
    parser.add_argument("--workers", type=_argtypes.positive_int, default=None, metavar="N",
                        help="image decoding threads (default: number of CPUs)")
    parser.add_argument("--precision", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="compute precision of the backbones; vectors are stored as float32 and each precision "
                        "is its own extractor (default: %(default)s)")
    parser.add_argument("--distributor", choices=("local", "spark"), default="local",
                        help="local: this process; spark: one Spark task per partition of the missing images, each "
                        "into its own shard (the --cache folder must be reachable from every executor) "
                        "(default: %(default)s)")
    parser.add_argument("--spark-master", default=None, metavar="URL",
                        help="Spark master when no SparkSession is active, e.g. spark://host:7077 (default: local[*])")
    parser.add_argument("--partitions", type=_argtypes.positive_int, default=None, metavar="N",
                        help="Spark tasks to split the work into (default: twice the cluster's parallelism)")
    parser.add_argument("--lock-timeout", type=_argtypes.seconds, default=30.0, metavar="S",
                        help="seconds to wait for another process updating a store index (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def printable(path) -> str:
    """A path as text any terminal can show (undecodable bytes of a file name as \\xNN)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _fmt_rate(rate):
    return "-" if rate is None else f"{rate:.1f} img/s"


def format_summary(report, data) -> str:
    """The text printed after an extraction."""
    from catdog_features.features.views import format_views

    lines = [
        f"{printable(data)}: {report.n_inputs} images ({report.n_contents} distinct contents) -> {report.n_rows} rows, "
        f"{len(report.failed)} failures"
        + (f" (view {report.view})" if report.view != "plain" and len(report.views) <= 1 else "")
        + (f" in {len(report.views)} views ({format_views(report.views)})" if len(report.views) > 1 else "")
    ]
    if report.failed:
        lines.append("failures by reason:")
        for reason, paths in report.failures_by_reason().items():
            shown = ", ".join(map(printable, paths[:3])) + (f", ... ({len(paths) - 3} more)" if len(paths) > 3 else "")
            lines.append(f"  {reason}: {len(paths)}  e.g. {shown}")
    width = max(len(name) for name in report.backbones)
    for name, b in report.backbones.items():
        if b.cache_hit:
            what = f"cache hit (all {report.n_contents} contents in the store)"
        else:
            what = f"computed {b.computed} ({_fmt_rate(b.images_per_s)} in the model), {b.found} from the store"
        layout = (f"map {' x '.join(map(str, b.row_shape))} float16 at {b.split}"
                  if getattr(b, "split", None) and b.row_shape else f"dim {b.dim}")
        lines.append(f"  {name:<{width}}  {b.image_size}px  {layout}  {what}")
        lines.append(f"  {'':<{width}}  -> {b.cache_file}")
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

    from catdog_features.features.extract import FeatureWarning, extract_with_report
    from catdog_features.features.split import SpatialSizeWarning
    from catdog_features.features.store import CacheWarning

    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (CacheWarning, FeatureWarning, SpatialSizeWarning)):  # ours: one plain line, no source location
            print(f"catdog-features extract: warning: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    def status(message):
        print(f"catdog-features extract: {message}", file=sys.stderr)

    if args.view is not None and args.views is not None:
        print("catdog-features extract: error: pass --view or --views, not both (--views may list several)",
              file=sys.stderr)
        return 2
    if args.view is not None and len(args.view) != 1:
        print(f"catdog-features extract: error: --view takes one view, received {len(args.view)} "
              f"({','.join(args.view)}); use --views for several", file=sys.stderr)
        return 2

    with warnings.catch_warnings():
        warnings.simplefilter("always", CacheWarning)
        warnings.simplefilter("always", FeatureWarning)
        warnings.simplefilter("always", SpatialSizeWarning)
        warnings.showwarning = show  # restored by catch_warnings
        _fs, report = extract_with_report(
            args.data,
            backbones=args.backbones,
            cache_dir=args.cache,
            weights=args.weights,
            image_size=args.image_size or None,
            batch_size=args.batch_size,
            labels_csv=args.labels_csv,
            view=args.view[0] if args.view else "plain",
            views=args.views,
            num_workers=args.workers,
            progress=not args.no_progress,
            lock_timeout=args.lock_timeout,
            precision=args.precision,
            distributor=args.distributor,
            spark_master=args.spark_master,
            partitions=args.partitions,
            split=args.split,
            on_message=status,
        )
    print(format_summary(report, args.data))
    return 0
