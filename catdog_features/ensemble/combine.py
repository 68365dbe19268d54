"""Ensemblers on OOF predictions: mean, weighted blend, stacking; the chosen method and clip.

:func:`fit_ensemblers` fits (a) the plain mean, (b) a weighted blend (non-negative weights
summing to 1, minimising OOF log loss), (c) a stacker (logistic regression on member
logits) and (d) ``best``: the single member with the lowest OOF log loss, so that on small
data, where weights fitted on a few hundred rows overfit, the choice can't end up worse
than its best member, and (e) ``linear``: the logistic-regression member whose C is chosen by CV
inside each fold (:data:`~catdog_features.ensemble.oof.LINEAR_MEMBER`). Every ensembler has **one** set of out-of-fold probabilities and every score is
computed on it: the mean needs no fit; the blend's and the stacker's OOF probabilities come
from nested cross-validation (weights/coefficients re-fitted on each outer training part),
so an ensembler fitted on the very rows it is scored on never looks better than it is.

``method="auto"`` keeps the lowest OOF log loss of mean, blend, stack and best, with one
exception. When the members were picked by a cross-validated sweep (every training row scored
every trial, the default below 3,000 rows), the best of 30 trials looks better on these rows
than it is, while the linear member's C was chosen inside each fold. Then ``auto`` keeps the
lowest only when it is at least :data:`AUTO_MARGIN_Z` paired standard errors (per-row OOF log
loss) ahead of the linear member, and takes the linear member otherwise. Measured with
``experiments/bench_heads.py`` (seeds 0-2, test log loss / LogisticRegressionCV's): on
breast_cancer (426 training rows) the lowest ensembler was 0.6-1.1 standard errors ahead of
the linear member on OOF rows; keeping the lowest gave 1.227 / 1.172 / 1.143 (measured before
the linear head had input transforms), keeping the linear member 1.014 / 1.004 / 1.009 (the
same heads) and 0.965 / 1.007 / 0.996 (with transforms). On digits (1,347 rows) the blend was 5.7 ahead and is
kept (about half LogisticRegressionCV's loss). Hold-out sweeps (3,000 rows and more) score a
trial on a fifth of the rows only; there ``auto`` keeps the lowest (a 3,750-row generated set:
the stack or the best member 1.6-2.7 standard errors ahead, 0.92-0.94 x on the test rows). The clip is chosen on the chosen method's
OOF probabilities only (never on the test set). The weights/coefficients used for the test
set are fitted on all OOF rows. :func:`save_chosen_oof` stores the ensemblers' OOF
probabilities in ``oof.h5`` (:class:`~catdog_features.ensemble.oof.OOFPredictions`), so a
report reads them instead of refitting anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from catdog_features.ensemble.metrics import (
    CLIP_GRID, TINY, accuracy, choose_clip, clip_probabilities, log_loss, paired_z,
)
from catdog_features.ensemble.oof import OOFPredictions, chosen_on_training_rows, is_tuned_inside_folds, make_folds

#: Ensemble methods; "auto": see the module notes.
LINEAR_METHOD = "linear"
METHODS = ("auto", "blend", "stack", "mean", "best", LINEAR_METHOD)
#: How many paired standard errors ``auto``'s pick must be ahead of the linear member when the
#: members were chosen by a cross-validated sweep (see the module notes).
AUTO_MARGIN_Z = 2.0
#: The candidates of ``auto`` (and the tie order).
AUTO_ORDER = ("mean", "blend", "stack", "best")
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
    """Probabilities of a fitted stacker (:func:`fit_stacker`) on members' probabilities."""
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
    if method == "best":  # ``weights``: the chosen member's index
        return np.asarray(member_probs[int(weights)], dtype=np.float64)
    raise ValueError(f"Unknown ensemble method. Received: method={method!r}; expected one of {METHODS[1:]}.")


@dataclass
class EnsembleResult:
    """Fitted ensemblers, their OOF scores, the chosen method and clip.

    Attributes
    ----------
    method : str
        The chosen method (``"blend"``, ``"stack"`` or ``"mean"``).
    clip : float
        Clip epsilon, chosen on the chosen method's OOF probabilities (or fixed by the user).
    clip_losses : dict
        OOF log loss per epsilon of :data:`CLIP_GRID` (empty for a fixed clip).
    scores : list of dict
        One row per member and ensembler: ``name``, ``kind`` (member | ensemble),
        ``log_loss`` (the OOF log loss: of the row's OOF probabilities, nested-CV ones for
        the blend and the stacker), ``clipped_log_loss`` (the same probabilities clipped
        at ``clip``), ``accuracy``, ``fit_log_loss`` (blend/stack: fitted on all OOF rows
        and scored on them, optimistic, for information), ``note``.
    weights : dict of str -> float
        Blend weights per member.
    stacker : dict
        Stacker coefficients (JSON-able); applied by :meth:`combine`.
    oof_by_method : dict of str -> ndarray
        OOF probabilities of each ensembler (unclipped), the ones its scores come from.
    oof_proba, test_proba : ndarray
        Unclipped probabilities of the chosen method.
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
    oof_by_method: Dict[str, np.ndarray] = field(default_factory=dict)
    best_member: Optional[str] = None  # the member of method "best"
    linear_member: Optional[str] = None  # the member of method "linear"

    def combine(self, member_probs: Mapping[str, np.ndarray], method: Optional[str] = None) -> np.ndarray:
        """Combine per-member probabilities (name -> (n, n_classes)) with the fitted ensembler."""
        missing = [m for m in self.members if m not in member_probs]
        if missing:
            raise ValueError(f"Missing member predictions: {missing}; expected all of {self.members}.")
        probs = [np.asarray(member_probs[m], dtype=np.float64) for m in self.members]
        method = method or self.method
        if method == "best":
            best = self.best_member if self.best_member in self.members else self.members[0]
            return _combine("best", probs, self.members.index(best), None, len(self.class_names))
        if method == LINEAR_METHOD:
            if self.linear_member not in self.members:
                raise ValueError(f"method={LINEAR_METHOD!r} needs its member; received linear_member="
                                 f"{self.linear_member!r}, members {self.members}.")
            return _combine("best", probs, self.members.index(self.linear_member), None, len(self.class_names))
        weights = [self.weights[m] for m in self.members]
        return _combine(method, probs, weights, self.stacker, len(self.class_names))

    @property
    def chosen_score(self) -> dict:
        """The score row of the chosen method."""
        return next(r for r in self.scores if r["kind"] == "ensemble" and r["name"] == self.method)

    def headline(self) -> str:
        """The chosen ensemble's numbers, worded the same wherever they are shown."""
        return format_headline(self.method, self.clip, self.chosen_score)

    def format_table(self) -> str:
        """The scores as an aligned text table (what the CLI prints)."""
        clipped = f"clipped at {self.clip:g}"
        header = f"{'name':<16} {'kind':<8} {'OOF log loss':>12} {clipped:>16} {'accuracy':>8}  note"
        lines = [header, "-" * len(header)]
        for row in self.scores:
            mark = " *" if row["kind"] == "ensemble" and row["name"] == self.method else ""
            lines.append(
                f"{row['name']:<16} {row['kind']:<8} {row['log_loss']:>12.5f} {row['clipped_log_loss']:>16.5f} "
                f"{row['accuracy']:>8.4f}  {row['note']}{mark}"
            )
        lines.append(f"chosen: {self.headline()}  (* above)")
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
            "best_member": self.best_member,
            "linear_member": self.linear_member,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "EnsembleResult":
        if data["method"] not in METHODS[1:]:
            # "linear_members" (a blend of the linear members) was replaced by "linear"
            raise ValueError(f"Unknown saved ensemble method. Received: method={data['method']!r}; expected one of "
                             f"{METHODS[1:]}. Refit the ensemble with this version (`catdog-features ensemble` or "
                             "`run`; out-of-fold predictions saved by an older version are refitted).")
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
            best_member=data.get("best_member"),
            linear_member=data.get("linear_member"),
        )


def format_headline(method: str, clip: float, score: Mapping) -> str:
    """``"blend: OOF log loss 0.12345, clipped at 0.005: 0.12001, OOF accuracy 95.00%"``."""
    return (f"{method}: OOF log loss {score['log_loss']:.5f}, clipped at {clip:g}: "
            f"{score['clipped_log_loss']:.5f}, OOF accuracy {score['accuracy']:.2%}")


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


def _best_index(member_probs, y) -> int:
    return int(np.argmin([log_loss(p, y) for p in member_probs]))


def _nested_best(member_probs, y, splits) -> np.ndarray:
    """OOF probabilities of "pick the best member": chosen on each outer training part."""
    out = np.zeros_like(member_probs[0])
    for train_rows, held_out in splits:
        out[held_out] = member_probs[_best_index([p[train_rows] for p in member_probs], y[train_rows])][held_out]
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
    method : {"auto", "blend", "stack", "mean", "best", "linear"}
        ``"auto"`` picks the lowest OOF log loss: that of the mean, and of the blend's,
        the stacker's and the best member's nested-CV OOF probabilities (their weights/coefficients are
        re-fitted on each outer training part with a split seeded ``random_state + 1``,
        different from the members' folds). Ties prefer mean, then blend, then stack. When
        members carry ``sweep_folds > 1`` (picked by a cross-validated sweep on these rows),
        the pick must be :data:`AUTO_MARGIN_Z` paired standard errors ahead of the linear
        member, else ``"linear"`` is chosen (module notes). ``"linear"``: the first
        logistic-regression member without a fixed ``C`` (C chosen inside each fold); its
        score row's note says how many standard errors ``auto``'s pick is ahead of it.
    clip : "auto" or float
        ``"auto"``: the epsilon of ``clip_grid`` with the lowest OOF log loss of the
        chosen method, kept only when it is :data:`~catdog_features.ensemble.metrics.CLIP_MIN_Z`
        paired standard errors better than no clip (:func:`~catdog_features.ensemble.metrics.choose_clip`).
        A number is used as is.
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


def _fit_all(probs, y, n_classes, splits, stack_C, names):
    """Each ensembler: (OOF probabilities, in-sample log loss or None, note), and its fitted state."""
    weights = fit_blend(probs, y)
    stacker = fit_stacker(probs, y, n_classes, stack_C) if len(np.unique(y)) >= 2 else None
    blend_fit = log_loss(_combine("blend", probs, weights, None, n_classes), y)
    stack_fit = log_loss(apply_stacker(stacker, probs, n_classes), y) if stacker else None
    rows = {
        "mean": (np.mean(probs, axis=0), None, "equal weights"),
        "blend": (_nested_blend(probs, y, splits), blend_fit,
                  "weights " + ", ".join(f"{n}={w:.3f}" for n, w in zip(names, weights))
                  + f"; nested CV (fitted on all rows: {blend_fit:.5f})"),
        "stack": (_nested_stack(probs, y, splits, n_classes, stack_C), stack_fit,
                  "logistic regression, nested CV; in-sample log loss "
                  + ("n/a" if stack_fit is None else f"{stack_fit:.5f}")),
    }
    best = _best_index(probs, y)
    rows["best"] = (_nested_best(probs, y, splits), log_loss(probs[best], y),
                    f"the best member ({names[best]}), chosen per nested-CV part")
    return rows, weights, stacker, names[best]


def _score_row(name: str, kind: str, p, y, fit_ll, note: str) -> dict:
    return {"name": name, "kind": kind, "log_loss": log_loss(p, y), "accuracy": accuracy(p, y),
            "fit_log_loss": fit_ll, "note": note}


def _choose_clip(chosen_oof, y, clip, clip_grid):
    if isinstance(clip, str):
        if clip != "auto":
            raise ValueError(f"Invalid clip. Received: clip={clip!r}; expected 'auto' or a number in [0, 0.5).")
        return choose_clip(chosen_oof, y, clip_grid)
    clip_probabilities(chosen_oof[:1], float(clip))  # validates the range
    return float(clip), {}


def _fit_ensemblers(oof, method, clip, random_state, clip_grid, stack_C) -> EnsembleResult:
    names = oof.member_names
    y = np.asarray(oof.labels, dtype=np.int64)
    probs = [np.asarray(oof.oof[n], dtype=np.float64) for n in names]
    if any(np.isnan(p).any() for p in probs):
        raise ValueError("OOF predictions contain NaN (an incomplete OOF file?); refit the members.")
    n_folds = int(oof.info.get("folds", int(np.max(oof.folds)) + 1))
    splits = _cv_splits(y, max(2, n_folds), random_state + 1)
    rows, weights, stacker, best_member = _fit_all(probs, y, oof.n_classes, splits, stack_C, names)
    linear = next((n for n in names if is_tuned_inside_folds(_member(oof, n))), None)
    if method == LINEAR_METHOD and linear is None:
        raise ValueError(f"method={LINEAR_METHOD!r} needs a logistic-regression member whose C is chosen inside each "
                         f"fold (params head='linear', no C); received members {names}.")
    scores = [_score_row(n, "member", p, y, None, _member_note(_member(oof, n))) for n, p in zip(names, probs)]
    scores += [_score_row(n, "ensemble", p, y, fit_ll, note) for n, (p, fit_ll, note) in rows.items()]
    ll = {r["name"]: r["log_loss"] for r in scores if r["kind"] == "ensemble"}
    lowest = min(AUTO_ORDER, key=lambda m: (round(ll[m], 10), AUTO_ORDER.index(m)))
    if linear is not None:
        z = paired_z(oof.oof[linear], rows[lowest][0], y)
        note = (f"the logistic-regression member {linear} alone (C chosen inside each fold); {lowest}, the lowest "
                f"of the others, is {abs(z):.2f} standard errors {'ahead of' if z >= 0 else 'behind'} it on OOF rows")
        if method == "auto" and chosen_on_training_rows(oof.members) and z < AUTO_MARGIN_Z:
            note += f" (< {AUTO_MARGIN_Z:g} with members a cross-validated sweep picked on these rows: auto keeps this)"
            method = LINEAR_METHOD
        rows[LINEAR_METHOD] = (np.asarray(oof.oof[linear], dtype=np.float64), None, note)
        scores.append(_score_row(LINEAR_METHOD, "ensemble", rows[LINEAR_METHOD][0], y, None, note))
    if method == "auto":
        method = lowest
    if method == "stack" and stacker is None:
        raise ValueError("method='stack' needs at least two classes in the OOF labels.")
    oof_by_method = {n: p for n, (p, _, _) in rows.items()}
    eps, clip_losses = _choose_clip(oof_by_method[method], y, clip, clip_grid)
    for row in scores:
        p = oof_by_method[row["name"]] if row["kind"] == "ensemble" else oof.oof[row["name"]]
        row["clipped_log_loss"] = log_loss(clip_probabilities(p, eps), y)
    result = EnsembleResult(
        class_names=tuple(oof.class_names), members=list(names), method=method, clip=eps,
        clip_losses=clip_losses, scores=scores, weights={n: float(w) for n, w in zip(names, weights)},
        stacker=stacker or {}, prior=oof.prior, oof_proba=oof_by_method[method], oof_by_method=oof_by_method,
        best_member=best_member, linear_member=linear,
    )
    if oof.test:
        result.test_proba = result.combine(oof.test)
    return result


def _member_note(member: Mapping) -> str:
    """A member's backbones, and its views: ``ResNet50+VGG16; views plain,aug:0-7; TTA plain,hflip``."""
    from catdog_features.features.views import format_views

    note = "+".join(member["backbones"])
    if member.get("train_views"):
        note += f"; trained on views {format_views(member['train_views'])}"
    if member.get("tta"):
        note += f"; TTA mean of {format_views(member['tta'])}"
    elif member.get("tta_choice"):
        note += f"; TTA {format_views(member['tta_choice']['views'])} not kept (OOF)"
    return note


def _member(oof: OOFPredictions, name: str) -> dict:
    return next(m for m in oof.members if m["name"] == name)


def save_chosen_oof(oof: OOFPredictions, result: EnsembleResult, path) -> OOFPredictions:
    """Store each ensembler's OOF probabilities and the chosen method in the OOF file ``path``.

    What a report or a notebook reads to analyse the chosen ensemble's errors without
    refitting it (:attr:`OOFPredictions.ensembles`, :attr:`OOFPredictions.chosen`).
    """
    oof.ensembles = {name: np.asarray(p, dtype=np.float64) for name, p in result.oof_by_method.items()}
    oof.chosen = result.method
    oof.save(path)
    return oof
