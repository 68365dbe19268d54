"""Probability metrics of stage 2: log loss, accuracy, clipping and the OOF-chosen clip.

Probabilities are ``(n, n_classes)`` matrices (binary too; column 1 is the probability of
class 1).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: Clip epsilons tried by :func:`choose_clip` (0.005 is the reference recipe's).
CLIP_GRID = (0.0, 1e-4, 1e-3, 0.0025, 0.005, 0.01, 0.02, 0.05)
#: Probabilities are clipped to this before taking logs.
TINY = 1e-15
#: :func:`choose_clip` keeps a clip only when it is this many paired standard errors better than
#: the smallest epsilon of the grid on the OOF rows. The argmin of 8 epsilons on a few hundred
#: rows clipped well-calibrated logistic regressions whose test rows were confident and right
#: (breast_cancer, 8 splits: a LinearHead's test log loss / LogisticRegressionCV's, clipped at the
#: argmin of its 5-fold OOF predictions: geometric mean 1.003; with this rule 0.984, 3 splits of 8
#: unclipped instead of 0.005).
CLIP_MIN_Z = 1.0


def clip_probabilities(probs, eps: float) -> np.ndarray:
    """Clip to ``[eps, 1 - eps]``.

    A 1-d array is a binary probability of class 1; a 2-d array is a probability matrix,
    whose rows are renormalised after clipping (multi-class), so they still sum to 1.
    """
    eps = float(eps)
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"Invalid clip. Received: clip={eps!r}; expected a number in [0, 0.5).")
    probs = np.asarray(probs, dtype=np.float64)
    if eps == 0.0:
        return probs.copy()
    clipped = np.clip(probs, eps, 1.0 - eps)
    if clipped.ndim == 2:
        clipped = clipped / clipped.sum(axis=1, keepdims=True)
    return clipped


def row_log_loss(probs, y) -> np.ndarray:
    """Log loss of each row: ``-log p(true class)`` (rows renormalised, floored at 1e-15)."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    p = probs[np.arange(len(y)), y] / probs.sum(axis=1)
    return -np.log(np.clip(p, TINY, 1.0))


def log_loss(probs, y) -> float:
    """Mean negative log probability of the true class (probabilities floored at 1e-15)."""
    return float(np.mean(row_log_loss(probs, y)))


def paired_z(worse, better, y) -> float:
    """How many standard errors of the mean per-row log-loss difference ``better`` is ahead of ``worse``.

    Both are probability matrices of the same rows; the rows are the pairs, so a difference that
    all rows share counts for more than the same mean carried by a few rows.
    """
    d = row_log_loss(worse, y) - row_log_loss(better, y)
    mean = float(np.mean(d))
    sd = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
    if sd <= 1e-12 * max(1.0, abs(mean)):  # every row differs alike (rounding aside): no noise to weigh
        return 0.0 if abs(mean) <= 1e-12 else math.copysign(math.inf, mean)
    return float(mean / (sd / np.sqrt(len(d))))


def accuracy(probs, y) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(y)))


class ConstantPredictionsWarning(UserWarning):
    """An ensemble predicts (nearly) the same probabilities for every image.

    The usual cause is features that do not vary (e.g. a randomly initialised backbone
    whose pooled vectors are constant at a small input size): the scores and the
    submission then mean nothing.
    """


#: Predictions whose largest per-class range over the rows is below this count as constant.
CONSTANT_SPREAD = 1e-4


def prediction_spread(probs) -> float:
    """Largest per-class range (max - min over the rows) of a probability matrix (0 for < 2 rows)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) < 2:
        return 0.0
    return float(np.max(np.ptp(probs, axis=0)))


def constant_predictions_message(probs, what: str, tol: float = CONSTANT_SPREAD):
    """A warning text when ``probs`` (at least 2 rows) are near constant, else None."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) < 2:
        return None
    spread = prediction_spread(probs)
    if spread >= tol:
        return None
    first = ", ".join(f"{v:.6g}" for v in probs[0])
    return (f"the {what} are (nearly) constant: every one of {len(probs)} rows is about [{first}] "
            f"(largest per-class range {spread:.3g} < {tol:g}); the features probably do not vary "
            "(e.g. a random-init backbone at a small image size), so these scores and predictions mean nothing")


def choose_clip(oof_probs, y, grid: Sequence[float] = CLIP_GRID, min_z: float = CLIP_MIN_Z):
    """The clip epsilon from ``grid`` with the lowest log loss on OOF predictions, if it is clearly better.

    Only OOF predictions and their labels go in, so the test set can never influence the
    choice. Ties go to the smaller epsilon. The lowest-loss epsilon is kept only when it is at
    least ``min_z`` paired standard errors (:func:`paired_z`) better than the smallest epsilon of
    ``grid`` (no clip, by default); otherwise the smallest is returned: a clip chosen among many on
    a few hundred rows is noise, and it costs every confident right prediction.

    Returns
    -------
    eps : float
    losses : dict of float -> float
        Log loss for every epsilon in ``grid``.
    """
    losses = {float(eps): log_loss(clip_probabilities(oof_probs, eps), y) for eps in grid}
    best = min(losses, key=lambda e: (round(losses[e], 12), e))
    least = min(losses)
    if best != least and paired_z(clip_probabilities(oof_probs, least), clip_probabilities(oof_probs, best), y) < min_z:
        best = least
    return best, losses
