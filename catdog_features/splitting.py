"""Seeded hold-out splits that stratify when the labels allow it.

Stratification needs at least two rows per class. Small or long-tailed label sets (a few
images per breed, say) would otherwise stop a sweep or a head with scikit-learn's "least
populated class" error. There the rows of single-row classes stay in the training part (a
head cannot score a class it never saw) and the other rows are split stratified, with a
warning naming the classes.
"""

from __future__ import annotations

import warnings

import numpy as np


def holdout_split(y, fraction: float, random_state=None):
    """Split row positions into (train, validation), stratified by ``y`` when possible.

    Parameters
    ----------
    y : array-like of int
        Encoded labels, one per row.
    fraction : float
        Share of rows held out, in (0, 1).
    random_state : int or None
        Seed of the shuffle.

    Returns
    -------
    train, val : ndarray of int64
        Row positions, in the order scikit-learn's ``train_test_split`` returns them.
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    idx = np.arange(len(y))
    values, counts = np.unique(y, return_counts=True)
    rare = values[counts < 2]
    if len(rare) == 0:
        train, val = train_test_split(idx, test_size=fraction, stratify=y, random_state=random_state)
        return train.astype(np.int64), val.astype(np.int64)
    warnings.warn(
        f"{len(rare)} class(es) have a single row (e.g. {rare[:5].tolist()}); those rows stay in the "
        "training part and the rest is split stratified.",
        UserWarning,
        stacklevel=2,
    )
    single = np.isin(y, rare)
    rest = idx[~single]
    n_val = int(np.ceil(fraction * len(y)))
    if len(rest) < 2 or n_val >= len(rest):
        raise ValueError(
            f"Cannot hold out validation_split={fraction!r} of {len(y)} rows: {int(single.sum())} rows "
            "belong to classes with a single row. Expected at least two rows for most classes."
        )
    rest_y = y[rest]
    _, rest_counts = np.unique(rest_y, return_counts=True)
    n_classes = len(rest_counts)
    stratify = rest_y if n_classes <= n_val <= len(rest) - n_classes else None
    train, val = train_test_split(rest, test_size=n_val, stratify=stratify, random_state=random_state)
    return np.concatenate([train, idx[single]]).astype(np.int64), val.astype(np.int64)
