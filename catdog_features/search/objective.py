"""What a sweep minimises, and running one trial: a head config -> its loss over the folds.

Pure of the TPE loop and of the trials file: :func:`run_trial` takes a drawn point and the
data, and returns the trial record that the loop commits, so trials can run anywhere (in this
process, in worker processes) as long as one writer commits them.

The objective (:class:`Objective`):

* ``cv``: k-fold stratified CV (loss = mean fold log loss) or one hold-out split. By default
  (``cv="auto"``) data with fewer than :data:`CV_BELOW_ROWS` rows gets :data:`AUTO_FOLDS`-fold
  CV: one 20 % split of a few hundred rows is too noisy to rank configs on.
* ``early_stopping``: ``"inner"`` (the default): a dense head stops early on its own
  ``validation_split`` of the training part, so the scored fold is data the head never saw,
  exactly as the ensemble's fold models are trained later; ``"fold"``: the scored fold also
  drives early stopping (the reference recipe's way; optimistic, kept for its reproduction).

Dense heads with ``refit=True`` are scored without the refit (see :func:`score_config`).
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

#: Below this many rows, ``cv="auto"`` means :data:`AUTO_FOLDS`-fold cross-validation.
CV_BELOW_ROWS = 3000
AUTO_FOLDS = 5
EARLY_STOPPING = ("inner", "fold")


@dataclass(frozen=True)
class Objective:
    """A sweep's objective, resolved for its data (see the module docstring)."""

    cv: Optional[int]
    validation_split: Optional[float]
    random_state: int
    early_stopping: str = "inner"

    def describe(self) -> Dict[str, Any]:
        """The trials file's ``objective`` meta (``early_stopping`` only when not the reference's "fold",
        so trials files written before it existed still match)."""
        out = {"cv": self.cv, "validation_split": self.validation_split, "random_state": self.random_state,
               "loss": "log_loss"}
        if self.early_stopping != "fold":
            out["early_stopping"] = self.early_stopping
        if self.cv is not None:
            out["cv_folds"] = "derived seed"  # search.data.cv_fold_seed (files before it used random_state)
        return out


def resolve_objective(n_rows: int, cv="auto", validation_split: float = 0.2, random_state: int = 0,
                      early_stopping: str = "inner") -> Objective:
    """The :class:`Objective` for ``n_rows`` rows; ``cv="auto"`` picks k-fold CV below :data:`CV_BELOW_ROWS`."""
    if isinstance(cv, str):
        if cv != "auto":
            raise ValueError(f"Received cv={cv!r}; expected 'auto', None (hold-out) or an int >= 2 folds.")
        cv = AUTO_FOLDS if n_rows < CV_BELOW_ROWS else None
    if cv is not None and (isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or int(cv) < 2):
        raise ValueError(f"Received cv={cv!r}; expected 'auto', None (hold-out) or an int >= 2 folds.")
    if early_stopping not in EARLY_STOPPING:
        raise ValueError(f"Received early_stopping={early_stopping!r}; expected one of {EARLY_STOPPING}.")
    return Objective(None if cv is None else int(cv), None if cv else float(validation_split), int(random_state),
                     early_stopping)


def as_proba(proba, n_classes: int) -> np.ndarray:
    """float64 ``(n, n_classes)`` probabilities; rows renormalised (float32 heads sum to 1 +- 1e-7)."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim == 1 and n_classes == 2:
        proba = np.column_stack([1.0 - proba, proba])
    if proba.ndim != 2 or proba.shape[1] != n_classes:
        raise ValueError(f"predict_proba returned shape {proba.shape}; expected (n, {n_classes}).")
    return proba / proba.sum(axis=1, keepdims=True)


def _fold(x, y, start: int, stop: int):
    """``(x_train, y_train, x_val, y_val)`` for validation rows ``[start, stop)`` (views where possible)."""
    x_val, y_val = x[start:stop], y[start:stop]
    if start == 0:
        return x[stop:], y[stop:], x_val, y_val
    if stop == len(x):
        return x[:start], y[:start], x_val, y_val
    return np.concatenate([x[:start], x[stop:]]), np.concatenate([y[:start], y[stop:]]), x_val, y_val


def score_config(params: Mapping[str, Any], x, y, bounds: Sequence[tuple], n_classes: int,
                 early_stopping: str, views: Optional[Sequence[np.ndarray]] = None) -> Dict[str, Any]:
    """Fit the head of ``params`` on each fold's training rows; ``loss`` = mean validation log loss.

    ``views``: other views of ``x``'s rows (same order), drawn from while training (heads that
    take views); a fold's training rows of every view are its plain training rows, so all views
    of an image are on the same side of every fold, and the scored rows are plain.

    Returns ``{"loss", "fold_losses", "best_epoch"}`` (mean best epoch of the dense folds).
    Raises whatever the head raises, or FloatingPointError for a non-finite loss.
    """
    from sklearn.metrics import log_loss

    from catdog_features.heads.saved import build_head, split_params
    from catdog_features.heads.views import fit_on_views

    kind, _ = split_params(params)
    labels = np.arange(n_classes)
    losses: List[float] = []
    epochs: List[int] = []
    for start, stop in bounds:
        x_tr, y_tr, x_val, y_val = _fold(x, y, start, stop)
        # a dense head's final refit on all its rows (``refit``) would double the cost of a
        # trial and only add the early-stopping rows back: trials are scored without it
        head = build_head({**params, "refit": False} if kind == "dense" and params.get("refit") else params)
        v_tr = [_fold(v, y, start, stop)[0] for v in views] if views else None
        if kind == "dense" and early_stopping == "fold":
            fit_on_views(head, x_tr, y_tr, v_tr, validation_data=(x_val, y_val))
        else:
            fit_on_views(head, x_tr, y_tr, v_tr)
        fold_loss = float(log_loss(y_val, as_proba(head.predict_proba(x_val), n_classes), labels=labels))
        if not math.isfinite(fold_loss):
            raise FloatingPointError(f"validation log loss is {fold_loss}")
        losses.append(fold_loss)
        if getattr(head, "best_epoch_", None) is not None:
            epochs.append(int(head.best_epoch_))
    return {"loss": float(np.mean(losses)), "fold_losses": losses,
            "best_epoch": int(round(float(np.mean(epochs)))) if epochs else None}


def run_trial(tid: int, hyperopt_vals: Mapping[str, List[Any]], params: Optional[Mapping[str, Any]],
              backbones: Sequence[str], x_of, y, bounds, n_classes: int, early_stopping: str,
              point_error: Optional[str] = None, views_of=None) -> Dict[str, Any]:
    """The committed record of trial ``tid``: ``status`` "ok" with its loss, or "fail" with the error.

    ``params``/``backbones`` are the drawn point (``point_error`` if drawing it failed); ``x_of``
    gives the feature matrix of a backbone tuple (rows in fold order). A trial that raises is
    data, not the end of the sweep.
    """
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    outcome, error = {"loss": None, "fold_losses": None, "best_epoch": None}, point_error
    if error is None:
        try:
            views = views_of(tuple(backbones)) if views_of is not None else None
            outcome = score_config(params, x_of(tuple(backbones)), y, bounds, n_classes, early_stopping, views)
        except Exception as exc:  # noqa: BLE001 - recorded in the trial, reported in the table
            error = f"{type(exc).__name__}: {exc}"
            outcome = {"loss": None, "fold_losses": None, "best_epoch": None}
    return {
        "tid": int(tid), "status": "ok" if error is None else "fail", "loss": outcome["loss"],
        "params": dict(params or {}), "backbones": list(backbones), "best_epoch": outcome["best_epoch"],
        "duration_s": float(time.perf_counter() - t0), "error": error,
        "hyperopt_vals": {k: list(v) for k, v in hyperopt_vals.items()}, "started_at": started,
        "fold_losses": outcome["fold_losses"],
    }


_concat_cache: Dict[Any, np.ndarray] = {}


def _worker_matrix(folder: str, subset: Sequence[str]) -> np.ndarray:
    """The concatenated matrix of ``subset`` from a task folder (the last one kept per process)."""
    from catdog_features.task_arrays import open_arrays

    key = (folder, tuple(subset))
    if key not in _concat_cache:
        arrays = open_arrays(folder)
        names = tuple(subset) or ("",)
        _concat_cache.clear()
        _concat_cache[key] = np.concatenate([np.asarray(arrays[f"x/{name}"]) for name in names], axis=1)
    return _concat_cache[key]


def trial_task(payload: Mapping[str, Any]) -> Dict[str, Any]:
    """A trial run in a worker process or a Spark task: reads its data from a task folder.

    ``payload`` holds the task folder (``x/<backbone>`` blocks and ``y``, rows in fold order),
    the drawn point and the objective's settings: paths and plain values only.
    """
    from catdog_features.task_arrays import open_arrays

    folder = payload["data"]
    arrays = open_arrays(folder)
    y = np.asarray(arrays["y"])
    views = payload.get("views") or []

    def views_of(subset):
        return [np.concatenate([np.asarray(arrays[f"v/{view}/{name}"]) for name in subset], axis=1)
                for view in views]

    return run_trial(payload["tid"], payload["hyperopt_vals"], payload["params"], payload["backbones"],
                     lambda subset: _worker_matrix(folder, subset), y, [tuple(b) for b in payload["bounds"]],
                     payload["n_classes"], payload["early_stopping"], views_of=views_of if views else None)
