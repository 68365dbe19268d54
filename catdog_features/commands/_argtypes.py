"""argparse ``type=`` converters shared by the sub-commands, on :mod:`catdog_features._checks`.

Each returns the converted value or raises ``argparse.ArgumentTypeError`` naming what was
received and what was expected, so argparse prints a one-line usage error.
"""

from __future__ import annotations

import argparse

from catdog_features import _checks


def _converted(text, convert, problem):
    try:
        value = convert(text)
    except ValueError:
        value = text
    expected = problem(value)
    if expected:
        raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}")
    return value


def positive_int(text):
    """An integer >= 1 (counts, batch sizes, workers)."""
    return _converted(text, int, lambda v: _checks.expect_int(v, 1))


def non_negative_int(text):
    """An integer >= 0."""
    return _converted(text, int, lambda v: _checks.expect_int(v, 0))


def image_size(text):
    """0 (each backbone's native size) or a positive integer."""
    return _converted(text, int, lambda v: _checks.expect_int(v, 0) and "0 (native size) or a positive integer")


def folds(text):
    """A number of cross-validation folds (>= 2)."""
    return _converted(text, int, lambda v: _checks.expect_int(v, 2) and "an integer >= 2 folds")


def fraction(text):
    """A fraction strictly between 0 and 1 (hold-out share)."""
    return _converted(text, float,
                      lambda v: _checks.expect_float(v, 0.0, 1.0, low_open=True, high_open=True) and "a fraction in (0, 1)")


def probability(text):
    """A probability in (0, 1] (confidence thresholds)."""
    return _converted(text, float, lambda v: _checks.expect_float(v, 0.0, 1.0, low_open=True))


def seconds(text):
    """A non-negative number of seconds."""
    return _converted(text, float, lambda v: _checks.expect_float(v, 0.0))


def views(text):
    """A comma-separated list of views with ranges, e.g. ``plain,hflip,aug:0-7``."""
    from catdog_features.features.views import ViewError, parse_views

    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected at least one view name such as plain,hflip,aug:0-7, received {text!r}")
    try:
        return parse_views(text, default=())
    except ViewError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def jobs(text):
    """``--jobs``: an int >= 1, or -1 (one per core)."""
    return _converted(text, int, lambda v: None if v == -1 or not _checks.expect_int(v, 1)
                      else "an int >= 1, or -1 for one per core")


def add_parallel_arguments(parser, what: str) -> None:
    """``--jobs``, ``--distributor``, ``--spark-master`` of the stage-2 commands."""
    parser.add_argument("--jobs", type=jobs, default=1, metavar="N",
                        help=f"{what} at once: worker processes (local) or concurrent Spark tasks; "
                        "-1: one per core (default: %(default)s)")
    parser.add_argument("--distributor", choices=("local", "spark"), default="local",
                        help=f"local: worker processes on this machine; spark: each of the {what} is a Spark task "
                        "(features are read by path: keep the trials/run folder on shared storage) "
                        "(default: %(default)s)")
    parser.add_argument("--spark-master", default=None, metavar="URL",
                        help="Spark master when no SparkSession is active, e.g. spark://host:7077 (default: local[*])")
