"""Out-of-fold predictions, ensemblers (mean, weighted blend, stacking) and clip selection.

Stage 2b of the pipeline, after the sweep:

1. :func:`fit_oof` fits every member (a head config: ``{"name", "params", "backbones"}``,
   by default the top-k distinct trials of a sweep, see :func:`members_from_sweep`) on
   K stratified, seeded folds. Each fold model sees only its training part (its own
   early-stopping validation split is carved out of that part, never out of the held-out
   rows), predicts the held-out rows, and predicts the test set; a member's test
   prediction is the mean of its K fold models. The result, :class:`OOFPredictions`, is
   stored in HDF5 (ids, labels, fold ids, per-member probabilities, member configs) so
   ensemblers can be re-fitted without refitting any head.
2. :func:`fit_ensemblers` fits (a) the plain mean, (b) a weighted blend (non-negative
   weights summing to 1, minimising OOF log loss) and (c) a stacker (logistic regression
   on member logits), whose reported score comes from nested cross-validation so it is
   honest. ``method="auto"`` keeps the lowest cross-validated OOF log loss.
3. :func:`choose_clip` picks the clip epsilon on OOF predictions only (never on the test
   set) from :data:`CLIP_GRID`, which includes the reference recipe's 0.005.

Probabilities are always ``(n, n_classes)`` matrices (binary too; column 1 is the
probability of class 1). Everything saved is plain arrays or JSON: no pickle.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

#: Clip epsilons tried by :func:`choose_clip` (0.005 is the reference recipe's).
CLIP_GRID = (0.0, 1e-4, 1e-3, 0.0025, 0.005, 0.01, 0.02, 0.05)
#: Ensemble methods; "auto" picks the one with the lowest cross-validated OOF log loss.
METHODS = ("auto", "blend", "stack", "mean")
#: Probabilities are clipped to this before taking logs (log loss, stacker features).
_TINY = 1e-15
_STACK_EPS = 1e-6
_OOF_FORMAT = 1


# --------------------------------------------------------------------------- metrics
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


def log_loss(probs, y) -> float:
    """Mean negative log probability of the true class (probabilities floored at 1e-15)."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    p = probs[np.arange(len(y)), y] / probs.sum(axis=1)
    return float(-np.mean(np.log(np.clip(p, _TINY, 1.0))))


def accuracy(probs, y) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(y)))


def choose_clip(oof_probs, y, grid: Sequence[float] = CLIP_GRID):
    """The clip epsilon from ``grid`` with the lowest log loss on OOF predictions.

    Only OOF predictions and their labels go in, so the test set can never influence the
    choice. Ties go to the smaller epsilon.

    Returns
    -------
    eps : float
    losses : dict of float -> float
        Log loss for every epsilon in ``grid``.
    """
    losses = {float(eps): log_loss(clip_probabilities(oof_probs, eps), y) for eps in grid}
    best = min(losses, key=lambda e: (round(losses[e], 12), e))
    return best, losses


# --------------------------------------------------------------------------- members
def _member_name(trial) -> str:
    return f"t{trial['tid']}"


def normalize_members(members) -> List[dict]:
    """Validate member configs ``{"name", "params", "backbones"}`` (names made unique)."""
    if isinstance(members, Mapping):
        members = [members]
    out, seen = [], set()
    for k, member in enumerate(members):
        if not isinstance(member, Mapping) or "backbones" not in member:
            raise ValueError(
                f"Invalid member config #{k}. Received: {member!r}; expected a dict with "
                "'params' (head keyword arguments) and 'backbones' (feature names)."
            )
        backbones = member["backbones"]
        backbones = [backbones] if isinstance(backbones, str) else list(backbones)
        if not backbones:
            raise ValueError(f"Member config #{k} has no backbones; expected at least one.")
        name = str(member.get("name") or f"m{k + 1}")
        if name in seen:
            name = f"{name}_{k + 1}"
        seen.add(name)
        out.append({**dict(member), "name": name, "params": dict(member.get("params") or {}), "backbones": backbones})
    if not out:
        raise ValueError("Received no member configs; expected at least one.")
    return out


def members_from_sweep(result, top_k: int = 5) -> List[dict]:
    """Member configs from the top-``top_k`` distinct successful trials of a sweep.

    ``result`` is a :class:`~catdog_features.search.SweepResult` (uses ``result.top``) or
    a list of trial dicts (``status``, ``loss``, ``params``, ``backbones``, ``tid``).
    """
    if hasattr(result, "top"):
        trials = list(result.top(top_k, distinct=True))
    else:
        ok = [t for t in result if t.get("status") == "ok" and t.get("loss") is not None]
        ok.sort(key=lambda t: t["loss"])
        trials, keys = [], set()
        for t in ok:
            key = json.dumps([t["params"], list(t["backbones"])], sort_keys=True, default=str)
            if key not in keys:
                keys.add(key)
                trials.append(t)
            if len(trials) == top_k:
                break
    if not trials:
        raise ValueError("The sweep has no successful trials; run more evaluations before ensembling.")
    return [
        {
            "name": _member_name(t),
            "params": dict(t["params"]),
            "backbones": list(t["backbones"]),
            "trial": t.get("tid"),
            "sweep_loss": t.get("loss"),
            "best_epoch": t.get("best_epoch"),
        }
        for t in trials
    ]


def default_estimator_factory(params: dict, random_state: int):
    """A :class:`~catdog_features.heads.DenseHead` with ``params`` and the fold's seed."""
    from catdog_features.heads import DenseHead

    return DenseHead(**{**params, "random_state": random_state})


# --------------------------------------------------------------------------- fingerprints
def _hash_update_array(digest, array) -> None:
    array = np.ascontiguousarray(array)
    digest.update(str((array.dtype.str, array.shape)).encode())
    if array.dtype.kind in "US":
        digest.update("\x00".join(map(str, array.ravel())).encode())
    else:
        digest.update(memoryview(array).cast("B"))


def feature_fingerprint(features, backbones: Optional[Sequence[str]] = None) -> str:
    """Hash of a FeatureSet's ids, labels and the vectors of ``backbones`` (default: all)."""
    digest = hashlib.sha256()
    _hash_update_array(digest, np.asarray(features.ids, dtype=str))
    if features.labels is not None:
        _hash_update_array(digest, np.asarray(features.labels))
    digest.update(json.dumps(list(features.class_names)).encode())
    for name in sorted(backbones if backbones is not None else features.backbones):
        digest.update(name.encode())
        _hash_update_array(digest, features[name])
    return digest.hexdigest()


def oof_key(members, features, test=None, folds: int = 5, random_state: int = 0, extra=None) -> str:
    """Key that changes whenever the OOF predictions would: member configs, folds, seed, features."""
    members = normalize_members(members)
    used = sorted({b for m in members for b in m["backbones"]})
    payload = {
        "format": _OOF_FORMAT,
        "members": [{k: m[k] for k in ("name", "params", "backbones")} for m in members],
        "folds": int(folds),
        "random_state": int(random_state),
        "train": feature_fingerprint(features, used),
        "test": None if test is None else feature_fingerprint(test, used),
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


# --------------------------------------------------------------------------- OOF
@dataclass
class OOFPredictions:
    """Out-of-fold and test probabilities of every member.

    Attributes
    ----------
    ids, labels, folds : ndarray (n,)
        Training ids, class index and the fold each row was held out in.
    class_names : tuple of str
    members : list of dict
        Member configs (``name``, ``params``, ``backbones``, plus sweep info).
    oof : dict of str -> ndarray (n, n_classes)
        Member name -> probabilities predicted for each row by the fold model that did not see it.
    test_ids : ndarray (m,) or None
    test : dict of str -> ndarray (m, n_classes)
        Member name -> mean of its fold models' test probabilities.
    test_failed : list of (id, path, reason)
        Test images that could not be read (they still need a submission row).
    key : str
        :func:`oof_key` of what produced this.
    info : dict
        ``folds``, ``random_state``, fit durations per member, ...
    """

    ids: np.ndarray
    labels: np.ndarray
    folds: np.ndarray
    class_names: tuple
    members: List[dict]
    oof: Dict[str, np.ndarray]
    test_ids: Optional[np.ndarray] = None
    test: Dict[str, np.ndarray] = field(default_factory=dict)
    test_failed: List[tuple] = field(default_factory=list)
    key: str = ""
    info: dict = field(default_factory=dict)

    @property
    def member_names(self) -> List[str]:
        return [m["name"] for m in self.members]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def prior(self) -> np.ndarray:
        """Training class frequencies (the prediction for unreadable test images)."""
        counts = np.bincount(self.labels, minlength=self.n_classes).astype(np.float64)
        return counts / counts.sum()

    def save(self, path) -> Path:
        """Write to HDF5 (via a temporary file, then rename)."""
        import h5py

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        str_dt = h5py.string_dtype()
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = _OOF_FORMAT
            f.attrs["key"] = self.key
            f.attrs["class_names"] = json.dumps(list(self.class_names))
            f.attrs["members"] = json.dumps(self.members, default=str)
            f.attrs["info"] = json.dumps(self.info, default=str)
            f.attrs["test_failed"] = json.dumps([list(t) for t in self.test_failed])
            f.create_dataset("ids", data=np.asarray(self.ids, dtype=object), dtype=str_dt)
            f.create_dataset("labels", data=np.asarray(self.labels, dtype=np.int64))
            f.create_dataset("folds", data=np.asarray(self.folds, dtype=np.int64))
            if self.test_ids is not None:
                f.create_dataset("test_ids", data=np.asarray(self.test_ids, dtype=object), dtype=str_dt)
            for name in self.member_names:
                g = f.create_group(f"members/{name}")
                g.create_dataset("oof", data=np.asarray(self.oof[name], dtype=np.float64))
                if name in self.test:
                    g.create_dataset("test", data=np.asarray(self.test[name], dtype=np.float64))
            f.flush()
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> "OOFPredictions":
        """Read a file written by :meth:`save`."""
        import h5py

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"OOF predictions not found. Received: {str(path)!r}.")
        with h5py.File(path, "r") as f:
            if int(f.attrs.get("format", -1)) != _OOF_FORMAT:
                raise ValueError(f"{str(path)!r} is not an OOF predictions file of format {_OOF_FORMAT}.")
            members = json.loads(f.attrs["members"])
            names = [m["name"] for m in members]
            test_ids = f["test_ids"].asstr()[()] if "test_ids" in f else None
            return cls(
                ids=np.asarray(f["ids"].asstr()[()], dtype=str),
                labels=f["labels"][()],
                folds=f["folds"][()],
                class_names=tuple(json.loads(f.attrs["class_names"])),
                members=members,
                oof={n: f[f"members/{n}/oof"][()] for n in names},
                test_ids=None if test_ids is None else np.asarray(test_ids, dtype=str),
                test={n: f[f"members/{n}/test"][()] for n in names if f"members/{n}/test" in f},
                test_failed=[tuple(t) for t in json.loads(f.attrs["test_failed"])],
                key=str(f.attrs["key"]),
                info=json.loads(f.attrs["info"]),
            )


def read_oof_key(path) -> Optional[str]:
    """The key stored in an OOF file, or None when the file is missing/unreadable."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return str(f.attrs["key"])
    except (OSError, KeyError):
        return None


def make_folds(labels, folds: int = 5, random_state: int = 0) -> np.ndarray:
    """Fold id per row from a seeded, shuffled StratifiedKFold (plain KFold if a class is too small)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    labels = np.asarray(labels)
    folds = int(folds)
    if folds < 2:
        raise ValueError(f"Invalid folds. Received: folds={folds}; expected an integer >= 2.")
    if len(labels) < folds:
        raise ValueError(f"Cannot make {folds} folds from {len(labels)} labelled rows; expected at least {folds} rows.")
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    if counts.max() >= folds:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    else:  # every class smaller than the fold count: stratification is impossible
        splitter = KFold(n_splits=folds, shuffle=True, random_state=random_state)
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
            fold_of[held_out] = k
    return fold_of


def _aligned_proba(estimator, X, n_classes: int) -> np.ndarray:
    """``predict_proba`` with one column per class, even if the fold lacked some classes."""
    proba = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    classes = np.asarray(getattr(estimator, "classes_", np.arange(proba.shape[1]))).astype(np.int64)
    if proba.shape[1] == n_classes and np.array_equal(classes, np.arange(n_classes)):
        return proba
    out = np.zeros((len(proba), n_classes))
    out[:, classes] = proba
    return out


def fit_oof(
    members,
    features,
    test=None,
    folds: int = 5,
    random_state: int = 0,
    *,
    estimator_factory: Optional[Callable] = None,
    models_dir=None,
    progress: bool = True,
) -> OOFPredictions:
    """Out-of-fold predictions of every member, and their fold-mean test predictions.

    Parameters
    ----------
    members : list of dict or SweepResult
        Member configs ``{"name", "params", "backbones"}``; a SweepResult gives its
        top-5 distinct trials.
    features : FeatureSet
        Labelled training features holding every member's backbones.
    test : FeatureSet, optional
        Unlabelled test features to predict with each member's K fold models.
    folds : int
        Number of stratified folds (seeded with ``random_state``).
    random_state : int
        Seed of the folds; fold ``k``'s model gets ``random_state + k``.
    estimator_factory : callable(params, random_state) -> classifier, optional
        Builds a member's model; default :func:`default_estimator_factory` (DenseHead).
    models_dir : path, optional
        Save each fold model there as ``<member>/fold<k>.keras`` (estimators with ``save``),
        so new images can be predicted later exactly like the test set was.
    progress : bool
        Show a progress bar.

    Returns
    -------
    OOFPredictions
    """
    from tqdm.auto import tqdm

    if hasattr(members, "top"):
        members = members_from_sweep(members)
    members = normalize_members(members)
    if features.labels is None:
        raise ValueError("fit_oof needs labelled training features; received an unlabeled FeatureSet.")
    factory = estimator_factory or default_estimator_factory
    n_classes = len(features.class_names)
    labels = np.asarray(features.labels, dtype=np.int64)
    fold_of = make_folds(labels, folds, random_state)
    n_folds = int(fold_of.max()) + 1
    oof = {m["name"]: np.full((len(labels), n_classes), np.nan) for m in members}
    test_probs = {}
    durations = {}
    bar = tqdm(total=len(members) * n_folds, desc="OOF fits", unit="fit", disable=not progress)
    for member in members:
        name = member["name"]
        X = features.concat(member["backbones"])
        X_test = test.concat(member["backbones"]) if test is not None and len(test) else None
        test_sum = None if X_test is None else np.zeros((len(X_test), n_classes))
        start = time.perf_counter()
        for k in range(n_folds):
            train_rows = np.flatnonzero(fold_of != k)
            held_out = np.flatnonzero(fold_of == k)
            estimator = factory(dict(member["params"]), int(random_state) + k)
            estimator.fit(X[train_rows], labels[train_rows])  # held-out rows never reach fit
            oof[name][held_out] = _aligned_proba(estimator, X[held_out], n_classes)
            if X_test is not None:
                test_sum += _aligned_proba(estimator, X_test, n_classes)
            if models_dir is not None:
                if not hasattr(estimator, "save"):
                    raise ValueError(f"models_dir given but {type(estimator).__name__} has no save(); expected a DenseHead.")
                target = Path(models_dir) / name / f"fold{k}.keras"
                target.parent.mkdir(parents=True, exist_ok=True)
                estimator.save(target)
            bar.update(1)
        durations[name] = round(time.perf_counter() - start, 3)
        if test_sum is not None:
            test_probs[name] = test_sum / n_folds
    bar.close()
    test_failed = []
    if test is not None:
        test_failed = [(Path(p).stem, str(p), str(reason)) for p, reason in test.failed]
    return OOFPredictions(
        ids=np.asarray(features.ids, dtype=str),
        labels=labels,
        folds=fold_of,
        class_names=tuple(features.class_names),
        members=members,
        oof=oof,
        test_ids=None if test is None else np.asarray(test.ids, dtype=str),
        test=test_probs,
        test_failed=test_failed,
        key=oof_key(members, features, test, folds, random_state),
        info={"folds": n_folds, "random_state": int(random_state), "fit_seconds": durations,
              "train_key": oof_key(members, features, None, folds, random_state)},
    )


# --------------------------------------------------------------------------- ensemblers
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


def _apply_stacker(stacker: dict, member_probs: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
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
        mix = np.clip(true_p @ w, _TINY, None)
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
        return _apply_stacker(stacker, member_probs, n_classes)
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
        out[held_out] = _apply_stacker(stacker, [p[held_out] for p in member_probs], n_classes)
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
    stack_in_sample = _apply_stacker(stacker, probs, n_classes) if stacker else oof_by_method["mean"]
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
