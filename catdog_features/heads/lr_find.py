"""Learning-rate range test (Smith 2015; fastai's ``lr_find``) for :class:`DenseHead`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from sklearn.base import clone

from catdog_features._checks import check_float, check_int
from catdog_features.heads import trainer
from catdog_features.heads.dense import DenseHead, column_stats, derive_seeds


@dataclass
class LRFindResult:
    """Outcome of :func:`lr_find`.

    Attributes
    ----------
    lrs : ndarray
        Learning rate of each mini-batch step taken (exponentially increasing).
    losses : ndarray
        Smoothed (bias-corrected exponential moving average) training loss after each step.
    suggested_lr : float
        The learning rate at the steepest descent of the smoothed loss (fastai's "steep");
        ``lr_min`` when the curve is too short to have a slope.
    raw_losses : ndarray
        The unsmoothed per-batch losses.
    lr_min : float
        One tenth of the learning rate at the minimum smoothed loss (fastai's "min/10").
    lr_steep : float or None
        The steepest-descent learning rate, ``None`` when it could not be computed.
    """

    lrs: np.ndarray
    losses: np.ndarray
    suggested_lr: float
    raw_losses: np.ndarray
    lr_min: float
    lr_steep: Optional[float]

    def plot(self, ax=None):
        """Loss against learning rate (log x) with the suggestion marked; returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.lrs, self.losses)
        ax.axvline(self.suggested_lr, color="tab:red", linestyle="--", label=f"suggested {self.suggested_lr:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("smoothed training loss")
        ax.legend()
        return ax


def lr_find(
    X,
    y,
    start_lr=1e-5,
    end_lr=1.0,
    num_steps=100,
    *,
    estimator=None,
    smoothing=0.98,
    diverge_factor=4.0,
    **head_params,
) -> LRFindResult:
    """Learning-rate range test (Smith 2015; fastai's ``lr_find``) for a :class:`DenseHead`.

    Trains a fresh head for ``num_steps`` mini-batches while the learning rate grows
    exponentially from ``start_lr`` to ``end_lr``, recording the smoothed training loss, and
    stops early once it exceeds ``diverge_factor`` times its minimum.

    Parameters
    ----------
    X, y : array-like
        Training features and labels (as for :meth:`DenseHead.fit`).
    start_lr, end_lr : float
        Range of learning rates, ``0 < start_lr < end_lr``.
    num_steps : int
        Number of mini-batches (with more steps than one epoch the data is cycled).
    estimator : DenseHead or None
        Template head; it is cloned, never modified. Default: ``DenseHead()``.
    smoothing : float
        Exponential moving average factor for the loss (fastai: 0.98).
    diverge_factor : float
        Stop when the smoothed loss exceeds this multiple of its minimum (fastai: 4).
    **head_params
        Hyperparameters for the head (``optimizer``, ``dropout``, ``batch_size``,
        ``momentum``, ``hidden_units``, ``random_state``, ...). ``lr`` is what is being
        searched; ``decay`` and ``schedule`` are turned off for the test.

    Returns
    -------
    LRFindResult
    """
    start_lr = check_float("start_lr", start_lr, 0.0, np.inf, low_open=True, high_open=True)
    end_lr = check_float("end_lr", end_lr, 0.0, np.inf, low_open=True, high_open=True)
    if end_lr <= start_lr:
        raise ValueError(f"Received: start_lr={start_lr!r}, end_lr={end_lr!r}; expected start_lr < end_lr.")
    num_steps = check_int("num_steps", num_steps, 2, integral_floats=True)
    smoothing = check_float("smoothing", smoothing, 0.0, 1.0, high_open=True)
    diverge_factor = check_float("diverge_factor", diverge_factor, 1.0, np.inf, low_open=True, high_open=True)

    head = clone(estimator) if estimator is not None else DenseHead()
    head.set_params(**head_params)
    head.set_params(lr=start_lr, decay=0.0, schedule=None, reduce_lr_on_plateau=False)
    p = head._checked_params()
    X, y_enc, classes = head._validate_train(X, y)
    n_classes = len(classes)
    order_seed, init_seed, dropout_seed = derive_seeds(head.random_state, 3)
    arch = trainer.Architecture(X.shape[1], p["hidden_units"], 1 if n_classes == 2 else n_classes, p["optimizer"])
    if p["standardize"]:
        mean, scale = column_stats(X, np.arange(len(X)))
        X = (X - mean) / scale
    y_fit = y_enc.astype(np.float32 if n_classes == 2 else np.int32)
    rng = np.random.default_rng(order_seed)
    bs = min(p["batch_size"], len(X))
    lrs = start_lr * (end_lr / start_lr) ** (np.arange(num_steps) / (num_steps - 1))

    taken, raw, smooth = [], [], []
    avg, best = 0.0, np.inf
    perm, pos = rng.permutation(len(X)), 0
    with trainer.checked_out(arch) as step:
        step.reset(trainer.glorot_uniform(np.random.default_rng(init_seed), arch))
        X_t, y_t = step.prepare(X, y_fit)
        for i, lr in enumerate(lrs):
            if pos + bs > len(perm):
                perm, pos = rng.permutation(len(X)), 0
            idx = np.sort(perm[pos : pos + bs])
            pos += bs
            step.train(X_t, y_t, idx, [lr], p["momentum"], p["l2"], p["dropout"], i, dropout_seed, len(idx))
            loss = step.take_loss_sum() / len(idx)
            avg = smoothing * avg + (1 - smoothing) * loss
            s = avg / (1 - smoothing ** (i + 1))
            taken.append(float(lr))
            raw.append(loss)
            smooth.append(s)
            if not np.isfinite(s) or (i > 0 and s > diverge_factor * best):
                break
            best = min(best, s)
    lrs_taken, losses, raw = np.asarray(taken), np.asarray(smooth), np.asarray(raw)

    finite = np.isfinite(losses)
    lr_min = float(lrs_taken[finite][np.argmin(losses[finite])] / 10) if finite.any() else start_lr
    lr_steep = None
    # The slope is taken where the curve means something: not on the diverged last point, and
    # not on the first tenth, where the bias-corrected average is still mostly batch noise.
    diverged = len(losses) > 1 and (not finite[-1] or losses[-1] > diverge_factor * best)
    stop = len(losses) - 1 if diverged else len(losses)
    lo = max(1, stop // 10)
    if stop - lo >= 3:
        grads = np.gradient(losses[lo:stop], np.log10(lrs_taken[lo:stop]))
        if np.isfinite(grads).any():
            lr_steep = float(lrs_taken[lo:stop][np.nanargmin(np.where(np.isfinite(grads), grads, np.nan))])
    suggested = lr_steep if lr_steep is not None else lr_min
    return LRFindResult(
        lrs=lrs_taken, losses=losses, suggested_lr=float(suggested), raw_losses=raw,
        lr_min=lr_min, lr_steep=lr_steep,
    )
