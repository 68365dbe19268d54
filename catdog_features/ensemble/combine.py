"""Ensemblers on OOF predictions: mean, weighted blend, stacking; the chosen method and clip.

:func:`fit_ensemblers` fits (a) the plain mean, (b) a weighted blend (non-negative weights
summing to 1, minimising OOF log loss) and (c) a stacker (logistic regression on member
logits) scored by nested cross-validation. ``method="auto"`` keeps the lowest
cross-validated OOF log loss; the clip is chosen on the chosen method's OOF predictions only
(never on the test set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from catdog_features.ensemble.metrics import CLIP_GRID, TINY, accuracy, choose_clip, clip_probabilities, log_loss
from catdog_features.ensemble.oof import OOFPredictions, make_folds

#: Ensemble methods; "auto" picks the one with the lowest cross-validated OOF log loss.
METHODS = ("auto", "blend", "stack", "mean")
_STACK_EPS = 1e-6


def _stack_features(member_probs: Sequence[np.ndarray], binary: bool) -> np.ndarray:
    """Stacker inputs: the logit of p(class 1) per member (binary), else log-probabilities."""
    if binary:
        cols = [np.clip(p[:, 1], _STACK_EPS, 1 - _STACK_EPS) for p in member_probs]
        return np.column_stack([np.log(c) - np.log1p(-c) for c in cols])
    return np.hstack([np.log(np.clip(p, _STACK_EPS, 1.0)) for p in member_probs])


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _stacker_logreg(C: float = 1.0):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=5000)


def apply_stacker(stacker: dict, member_probs: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    Z = _stack_features(member_probs, n_classes == 2)
    coef = np.asarray(stacker["coef"], dtype=np.float64)
    intercept = np.asarray(stacker["intercept"], dtype=np.float64)
    classes = np.asarray(stacker["classes"], dtype=np.int64)
    scores = Z @ coef.T + intercept
    if coef.shape[0] == 1:  # sklearn's binary layout: one row of coefficients for classes[1]
        p1 = 1.0 / (1.0 + np.exp(-scores[:, 0]))
        proba = np.column_stack([1.0 - p1, p1])
    else:
        proba = _softmax(scores)
    out = np.zeros((len(Z), n_classes))
    out[:, classes] = proba
    return out


def _cv_splits(labels, folds: int, random_state: int):
    fold_of = make_folds(labels, folds, random_state)
    return [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)) for k in range(int(fold_of.max()) + 1)]


def fit_stacker(member_probs: Sequence[np.ndarray], y, n_classes: int, C: float = 1.0) -> dict:
    """Fit the logistic-regression stacker; returned as JSON-able coefficients."""
    model = _stacker_logreg(C).fit(_stack_features(member_probs, n_classes == 2), y)
    return {
        "features": "logit" if n_classes == 2 else "log_proba",
        "coef": model.coef_.tolist(),
        "intercept": model.intercept_.tolist(),
        "classes": [int(c) for c in model.classes_],
        "C": float(C),
    }


def fit_blend(member_probs: Sequence[np.ndarray], y) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the log loss of ``sum w_m P_m``.

    SLSQP on the simplex from uniform weights; the result is never worse than the best
    single member (that one-hot weighting is kept if the optimiser ends higher).
    """
    from scipy.optimize import minimize

    y = np.asarray(y, dtype=np.int64)
    rows = np.arange(len(y))
    true_p = np.column_stack([p[rows, y] / p.sum(axis=1) for p in member_probs])  # (n, M)
    n_members = true_p.shape[1]

    def loss_grad(w):
        mix = np.clip(true_p @ w, TINY, None)
        return -np.mean(np.log(mix)), -(true_p / mix[:, None]).mean(axis=0)

    singles = [loss_grad(np.eye(n_members)[m])[0] for m in range(n_members)]
    best_single = np.eye(n_members)[int(np.argmin(singles))]
    if n_members == 1:
        return best_single
    result = minimize(
        loss_grad,
        np.full(n_members, 1.0 / n_members),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * n_members,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"maxiter": 500, "ftol": 1e-12},
    )
    w = np.clip(result.x, 0.0, None)
    w[w < 1e-6] = 0.0
    w = w / w.sum() if w.sum() > 0 else best_single
    return w if loss_grad(w)[0] <= min(singles) else best_single


def _combine(method: str, member_probs: Sequence[np.ndarray], weights, stacker, n_classes: int) -> np.ndarray:
    if method == "mean":
        return np.mean(member_probs, axis=0)
    if method == "blend":
        return np.tensordot(np.asarray(weights, dtype=np.float64), np.asarray(member_probs), axes=1)
    if method == "stack":
        return apply_stacker(stacker, member_probs, n_classes)
    raise ValueError(f"Unknown ensemble method. Received: method={method!r}; expected one of {METHODS[1:]}.")


@dataclass
class EnsembleResult:
    """Fitted ensemblers, their OOF scores, the chosen method and clip.

    Attributes
    ----------
    method : str
        The chosen method (``"blend"``, ``"stack"`` or ``"mean"``).
    clip : float
        Clip epsilon, chosen on the chosen method's OOF predictions (or fixed by the user).
    clip_losses : dict
        OOF log loss per epsilon of :data:`CLIP_GRID` (empty for a fixed clip).
    scores : list of dict
        One row per member and ensembler: ``name``, ``kind``, ``log_loss``, ``accuracy``,
        ``cv_log_loss`` (honest OOF score used for selection), ``note``.
    weights : dict of str -> float
        Blend weights per member.
    stacker : dict
        Stacker coefficients (JSON-able); applied by :meth:`combine`.
    oof_proba, test_proba : ndarray
        Unclipped probabilities of the chosen method (OOF: cross-validated for the stacker).
    """

    class_names: tuple
    members: List[str]
    method: str
    clip: float
    clip_losses: Dict[float, float]
    scores: List[dict]
    weights: Dict[str, float]
    stacker: dict
    prior: np.ndarray
    oof_proba: Optional[np.ndarray] = None
    test_proba: Optional[np.ndarray] = None

    def combine(self, member_probs: Mapping[str, np.ndarray], method: Optional[str] = None) -> np.ndarray:
        """Combine per-member probabilities (name -> (n, n_classes)) with the fitted ensembler."""
        missing = [m for m in self.members if m not in member_probs]
        if missing:
            raise ValueError(f"Missing member predictions: {missing}; expected all of {self.members}.")
        probs = [np.asarray(member_probs[m], dtype=np.float64) for m in self.members]
        weights = [self.weights[m] for m in self.members]
        return _combine(method or self.method, probs, weights, self.stacker, len(self.class_names))

    def format_table(self) -> str:
        """The scores as an aligned text table (what the CLI prints)."""
        header = f"{'name':<16} {'kind':<8} {'log_loss':>9} {'cv_log_loss':>11} {'accuracy':>8}  note"
        lines = [header, "-" * len(header)]
        for row in self.scores:
            mark = " *" if row["name"] == self.method else ""
            lines.append(
                f"{row['name']:<16} {row['kind']:<8} {row['log_loss']:>9.5f} {row['cv_log_loss']:>11.5f} "
                f"{row['accuracy']:>8.4f}  {row['note']}{mark}"
            )
        chosen = next(r for r in self.scores if r["name"] == self.method)
        lines.append(
            f"chosen: {self.method} (* above); clip {self.clip:g} -> OOF log loss "
            f"{chosen['clipped_log_loss']:.5f}"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-able form (no arrays of predictions)."""
        return {
            "class_names": list(self.class_names),
            "members": list(self.members),
            "method": self.method,
            "clip": self.clip,
            "clip_losses": {repr(k): v for k, v in self.clip_losses.items()},
            "scores": self.scores,
            "weights": self.weights,
            "stacker": self.stacker,
            "prior": [float(p) for p in self.prior],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "EnsembleResult":
        return cls(
            class_names=tuple(data["class_names"]),
            members=list(data["members"]),
            method=data["method"],
            clip=float(data["clip"]),
            clip_losses={float(k): v for k, v in data.get("clip_losses", {}).items()},
            scores=list(data["scores"]),
            weights=dict(data["weights"]),
            stacker=dict(data["stacker"]),
            prior=np.asarray(data["prior"], dtype=np.float64),
        )


def _nested_blend(member_probs, y, splits) -> np.ndarray:
    out = np.zeros_like(member_probs[0])
    for train_rows, held_out in splits:
        w = fit_blend([p[train_rows] for p in member_probs], y[train_rows])
        out[held_out] = _combine("blend", [p[held_out] for p in member_probs], w, None, out.shape[1])
    return out


def _nested_stack(member_probs, y, splits, n_classes, C) -> np.ndarray:
    out = np.zeros_like(member_probs[0])
    for train_rows, held_out in splits:
        if len(np.unique(y[train_rows])) < 2:  # a stacker needs two classes; fall back to the mean
            out[held_out] = np.mean([p[held_out] for p in member_probs], axis=0)
            continue
        stacker = fit_stacker([p[train_rows] for p in member_probs], y[train_rows], n_classes, C)
        out[held_out] = apply_stacker(stacker, [p[held_out] for p in member_probs], n_classes)
    return out


def _small_problem_threads(n_values: int):
    """One BLAS thread for small matrices: on a busy machine, idle BLAS threads spinning for
    work cost 10x the arithmetic of a few-hundred-row logistic regression."""
    import contextlib

    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas") if n_values < 2_000_000 else contextlib.nullcontext()


def fit_ensemblers(
    oof: OOFPredictions,
    method: str = "auto",
    clip="auto",
    random_state: int = 0,
    *,
    clip_grid: Sequence[float] = CLIP_GRID,
    stack_C: float = 1.0,
) -> EnsembleResult:
    """Fit mean, blend and stacker on OOF predictions, score them, choose method and clip.

    Parameters
    ----------
    oof : OOFPredictions
    method : {"auto", "blend", "stack", "mean"}
        ``"auto"`` picks the lowest ``cv_log_loss``: the OOF log loss of the mean, and the
        nested-CV OOF log loss of the blend and the stacker (their weights/coefficients
        are re-fitted on each outer training part with a split seeded ``random_state + 1``,
        different from the members' folds). Ties prefer mean, then blend.
    clip : "auto" or float
        ``"auto"``: the epsilon of ``clip_grid`` with the lowest OOF log loss of the
        chosen method. A number is used as is.
    random_state : int
        Seed of the nested-CV split.
    stack_C : float
        Inverse regularisation strength of the logistic-regression stacker.

    Returns
    -------
    EnsembleResult
    """
    if method not in METHODS:
        raise ValueError(f"Unknown ensemble method. Received: method={method!r}; expected one of {METHODS}.")
    with _small_problem_threads(len(oof.labels) * len(oof.members) * oof.n_classes):
        return _fit_ensemblers(oof, method, clip, random_state, clip_grid, stack_C)


def _fit_ensemblers(oof, method, clip, random_state, clip_grid, stack_C) -> EnsembleResult:
    names = oof.member_names
    y = np.asarray(oof.labels, dtype=np.int64)
    n_classes = oof.n_classes
    probs = [np.asarray(oof.oof[n], dtype=np.float64) for n in names]
    if any(np.isnan(p).any() for p in probs):
        raise ValueError("OOF predictions contain NaN (an incomplete OOF file?); refit the members.")
    n_folds = int(oof.info.get("folds", int(np.max(oof.folds)) + 1))
    splits = _cv_splits(y, max(2, n_folds), random_state + 1)

    scores = []
    for name, p in zip(names, probs):
        ll = log_loss(p, y)
        scores.append({"name": name, "kind": "member", "log_loss": ll, "cv_log_loss": ll,
                       "accuracy": accuracy(p, y), "note": "+".join(_member(oof, name)["backbones"])})
    weights = fit_blend(probs, y)
    stacker = fit_stacker(probs, y, n_classes, stack_C) if len(np.unique(y)) >= 2 else None
    oof_by_method = {
        "mean": np.mean(probs, axis=0),
        "blend": _combine("blend", probs, weights, None, n_classes),
        "stack": _nested_stack(probs, y, splits, n_classes, stack_C),
    }
    nested_blend = _nested_blend(probs, y, splits)
    stack_in_sample = apply_stacker(stacker, probs, n_classes) if stacker else oof_by_method["mean"]
    rows = {
        "mean": (oof_by_method["mean"], log_loss(oof_by_method["mean"], y), "equal weights"),
        "blend": (oof_by_method["blend"], log_loss(nested_blend, y),
                  "weights " + ", ".join(f"{n}={w:.3f}" for n, w in zip(names, weights))),
        "stack": (oof_by_method["stack"], log_loss(oof_by_method["stack"], y),
                  "logistic regression; log_loss in-sample " f"{log_loss(stack_in_sample, y):.5f}"),
    }
    for name, (p, cv_ll, note) in rows.items():
        # stacker: log_loss *is* its nested-CV score (in-sample is only in the note)
        scores.append({"name": name, "kind": "ensemble", "log_loss": log_loss(p, y), "cv_log_loss": cv_ll,
                       "accuracy": accuracy(p, y), "note": note})
    if method == "auto":
        order = ("mean", "blend", "stack")
        cv = {r["name"]: r["cv_log_loss"] for r in scores if r["kind"] == "ensemble"}
        method = min(order, key=lambda m: (round(cv[m], 10), order.index(m)))
    if method == "stack" and stacker is None:
        raise ValueError("method='stack' needs at least two classes in the OOF labels.")
    chosen_oof = oof_by_method[method]
    if isinstance(clip, str):
        if clip != "auto":
            raise ValueError(f"Invalid clip. Received: clip={clip!r}; expected 'auto' or a number in [0, 0.5).")
        eps, clip_losses = choose_clip(chosen_oof, y, clip_grid)
    else:
        eps, clip_losses = float(clip), {}
        clip_probabilities(chosen_oof[:1], eps)  # validates the range
    for row in scores:
        p = oof_by_method.get(row["name"]) if row["kind"] == "ensemble" else oof.oof[row["name"]]
        row["clipped_log_loss"] = log_loss(clip_probabilities(p, eps), y)

    result = EnsembleResult(
        class_names=tuple(oof.class_names),
        members=list(names),
        method=method,
        clip=eps,
        clip_losses=clip_losses,
        scores=scores,
        weights={n: float(w) for n, w in zip(names, weights)},
        stacker=stacker or {},
        prior=oof.prior,
        oof_proba=chosen_oof,
    )
    if oof.test:
        result.test_proba = result.combine(oof.test)
    return result


def _member(oof: OOFPredictions, name: str) -> dict:
    return next(m for m in oof.members if m["name"] == name)
