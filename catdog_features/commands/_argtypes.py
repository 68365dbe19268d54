"""argparse ``type=`` converters shared by the sub-commands (standard library only).

Each returns the converted value or raises ``argparse.ArgumentTypeError`` naming what was
received and what was expected, so argparse prints a one-line usage error.
"""

from __future__ import annotations

import argparse


def _checked(text, convert, ok, expected):
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}")
    return value


def positive_int(text):
    """An integer >= 1 (counts, batch sizes, workers)."""
    return _checked(text, int, lambda v: v >= 1, "an integer >= 1")


def image_size(text):
    """0 (each backbone's native size) or a positive integer."""
    return _checked(text, int, lambda v: v >= 0, "0 (native size) or a positive integer")


def folds(text):
    """A number of cross-validation folds (>= 2)."""
    return _checked(text, int, lambda v: v >= 2, "an integer >= 2 folds")


def fraction(text):
    """A fraction strictly between 0 and 1 (hold-out share)."""
    return _checked(text, float, lambda v: 0.0 < v < 1.0, "a fraction in (0, 1)")


def probability(text):
    """A probability in (0, 1] (confidence thresholds)."""
    return _checked(text, float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")
