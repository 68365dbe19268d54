"""LinearHead: L2 logistic regression on feature vectors, solved to optimum, ``C`` chosen by CV.

The convex member every sweep and ensemble gets: on features where no hidden layer helps, it
is what a dense head has to beat, and on any features it is a well-conditioned, diverse member
for the blend. scikit-learn's ``LogisticRegression`` (L-BFGS, multinomial for more than two
classes) on standardised features; saved as HDF5 (coefficients) + a JSON sidecar, never pickle.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from catdog_features._checks import check_float, check_int
from catdog_features.heads.saved import (
    SavedHeadError, classes_to_json, jsonable, open_saved, sidecar_path,
)
from catdog_features.heads.threads import blas_threads_for
from catdog_features.heads.transforms import AUTO, TRANSFORMS, apply_transform, check_transform

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator, X="no_validation", y="no_validation", reset=True, **kwargs):
        return estimator._validate_data(X, y, reset=reset, **kwargs)


__all__ = ["LinearHead"]

_SIDECAR_FORMAT = "catdog_features.LinearHead"
_SIDECAR_VERSION = 2  # 2: the fitted "transform" (version-1 heads were fitted without one: "none")
#: C values of the CV search (``Cs`` as an int, default 41: fifth-of-a-decade steps, a grid as
#: fine as a 40-value LogisticRegressionCV's; with half-decade steps (17) the test log loss on
#: a 3,750 x 2,048 generated set was 1.064 x that LogisticRegressionCV's, with 41 steps 1.026 x).
C_RANGE = (1e-4, 1e4)
#: The C path stops once the CV loss got worse this many grid steps in a row (0.8 decade; it
#: is unimodal in practice, and the large, barely regularised C values are the slow ones to solve).
C_PATH_PATIENCE = 4
#: ``cv_repeats="auto"``: repeat the C search's k-fold split until about this many held-out
#: row scores are averaged, at most :data:`MAX_CV_REPEATS` times. On a few hundred rows one
#: 5-fold split's loss curve is noisy enough that its argmin lands on a too-large C. Measured with
#: ``transform="auto"``, 8 splits each, test log loss / LogisticRegressionCV's (geometric mean):
#: wine (133 rows) 0.821 with one split, 0.735 with five; breast_cancer (426 rows) 0.949 and 0.984.
CV_REPEAT_ROWS = 2000
MAX_CV_REPEATS = 5
#: L-BFGS tolerance of the C search's fold fits (the final fit uses ``tol``): a held-out log loss
#: needs no more. Against 1e-8, 8 splits each: the same test log loss to 4 digits on
#: breast_cancer, wine and digits with 20-40 % less CPU; on the nearly separable generated
#: 2,250 x 1,536 ten-class set, where the path runs to large C, 2.4x less CPU and a C ten times
#: smaller at about the same loss (0.210 / 0.455 x LogisticRegressionCV's vs 0.184 / 0.476, 2 splits).
CV_TOL = 1e-6


class LinearHead(ClassifierMixin, BaseEstimator):
    """L2-regularised logistic regression, a scikit-learn classifier.

    Parameters
    ----------
    C : float or None, default=None
        Inverse regularisation strength. ``None``: chosen by stratified ``cv``-fold
        cross-validation (log loss) over ``Cs``, then refitted on all rows with it.
    Cs : int or sequence of float, default=41
        C grid: an int gives that many log-spaced values over :data:`C_RANGE`.
    cv : int, default=5
        Folds of the C search (fewer when a class has fewer rows; none below 2 rows per class,
        then C=1).
    cv_repeats : int or "auto", default="auto"
        How many differently shuffled ``cv``-fold splits the C search averages
        (``RepeatedStratifiedKFold``). ``"auto"``: enough for about :data:`CV_REPEAT_ROWS`
        held-out rows, between 1 and :data:`MAX_CV_REPEATS` (5 on a few hundred rows, 1 from
        2,000 rows on).
    transform : {"auto", "none", "sqrt", "log1p"}, default="auto"
        Element-wise transform of the features before standardisation
        (:mod:`~catdog_features.heads.transforms`: a signed square root or log1p evens out
        the long tail of pooled ReLU features). ``"auto"``: the one with the lowest CV log loss
        at its best C, on the same folds (with a fixed ``C``, at that C).
    standardize : bool, default=True
        Standardise every feature with the training rows' mean and standard deviation first
        (L-BFGS converges in far fewer steps, and one C fits all features alike). The C search's
        folds share it: it uses no labels, and a copy per fold would double the memory.
    tol : float, default=1e-8
        L-BFGS tolerance (scikit-learn's ``tol``); small, so the optimum is reached.
    max_iter : int, default=2000
        L-BFGS iteration cap.
    random_state : int or None, default=None
        Seeds the CV folds of the C search (the solver itself is deterministic).

    Attributes
    ----------
    classes_, n_features_in_
    coef_ : ndarray (1, n_features) for two classes, else (n_classes, n_features)
    intercept_ : ndarray
    transform_ : str
        The transform used (the CV's choice with ``transform="auto"``).
    mean_, scale_ : ndarray or None
        The standardisation (float64), of the transformed features.
    C_ : float
        The C used for the final fit.
    cv_losses_ : dict
        ``{"C": [...], "log_loss": [...]}``: mean CV log loss along the C path of ``transform_``
        (empty when nothing was cross-validated: a fixed C and a fixed transform).
    transform_losses_ : dict
        Transform -> its CV log loss at its best C (empty when nothing was cross-validated).
    best_epoch_ : None
        For a uniform interface with DenseHead (no epochs here).
    """

    head_kind = "linear"

    def __init__(self, C=None, Cs=41, cv=5, cv_repeats="auto", transform="auto", standardize=True, tol=1e-8,
                 max_iter=2000, random_state=None):
        self.C = C
        self.Cs = Cs
        self.cv = cv
        self.cv_repeats = cv_repeats
        self.transform = transform
        self.standardize = standardize
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def _grid(self) -> np.ndarray:
        if isinstance(self.Cs, (int, np.integer)) and not isinstance(self.Cs, bool):
            n = check_int("Cs", self.Cs, 1)
            return np.logspace(np.log10(C_RANGE[0]), np.log10(C_RANGE[1]), n)
        grid = np.sort(np.asarray(self.Cs, dtype=np.float64).ravel())
        if grid.size == 0 or not np.all(np.isfinite(grid)) or grid[0] <= 0:
            raise ValueError(f"Invalid Cs. Received: Cs={self.Cs!r}; expected an int >= 1 or positive numbers.")
        return grid

    def _solver(self, C, tol=None):
        from sklearn.linear_model import LogisticRegression

        tol = float(self.tol) if tol is None else tol
        return LogisticRegression(C=float(C), tol=tol, max_iter=int(self.max_iter), warm_start=True)

    def fit(self, X, y, validation_data=None):
        """Fit on ``(X, y)``. ``validation_data`` is accepted for a uniform head interface and not used.

        Returns
        -------
        self
        """
        from sklearn.exceptions import ConvergenceWarning

        fixed_C = None if self.C is None else check_float("C", self.C, 0.0, np.inf, low_open=True, high_open=True)
        folds = check_int("cv", self.cv, 2, integral_floats=True)
        check_float("tol", self.tol, 0.0, np.inf, low_open=True, high_open=True)
        check_int("max_iter", self.max_iter, 1, integral_floats=True)
        transform = check_transform(self.transform)
        X_raw, y = _validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        repeats = self._repeats(X_raw.shape[0])
        classes, y_enc = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"Received y with a single class ({classes[0]!r}); expected at least 2 classes.")
        candidates = list(TRANSFORMS) if transform == AUTO else [transform]
        # An explicit grid is cross-validated even with one value: its loss compares transforms.
        grid = np.array([fixed_C]) if fixed_C is not None else (self._grid() if len(candidates) > 1 else None)
        # Drawn once, so every transform is scored on the same folds (a paired comparison),
        # also when random_state is None.
        splits = self._splits(y_enc, folds, repeats)
        with warnings.catch_warnings(), blas_threads_for(X_raw.size):
            warnings.simplefilter("ignore", ConvergenceWarning)  # n_iter_ says whether max_iter was hit
            best, transform_losses = None, {}
            for name in candidates:
                X, mean, scale = self._prepare(name, X_raw)
                if fixed_C is None or len(candidates) > 1:
                    C, path = self._choose_C(X, y_enc, splits, grid)
                else:
                    C, path = fixed_C, {}
                loss = min(path["log_loss"]) if path else np.inf
                if path:
                    transform_losses[name] = float(loss)
                if best is None or loss < best[0]:  # ties: the earlier (simpler) transform
                    best = (loss, name, C, path)
                del X  # one transformed copy of the features at a time
            _, name, C, path = best
            X, mean, scale = self._prepare(name, X_raw)
            model = self._solver(C).fit(X, y_enc)
        self.classes_ = classes
        self.coef_ = np.asarray(model.coef_, dtype=np.float64)
        self.intercept_ = np.asarray(model.intercept_, dtype=np.float64)
        self.transform_ = name
        self.mean_, self.scale_ = mean, scale
        self.C_ = float(C)
        self.cv_losses_ = path
        self.transform_losses_ = transform_losses
        self.n_iter_ = int(np.max(model.n_iter_))
        self.best_epoch_ = None
        return self

    def _prepare(self, transform: str, X):
        """``(features, mean, scale)``: ``X`` transformed, then standardised when asked."""
        X = apply_transform(transform, X)
        if not self.standardize:
            return X, None, None
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale <= 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0
        return (X - mean) / scale, mean, scale

    def _repeats(self, n_rows: int) -> int:
        if isinstance(self.cv_repeats, str):
            if self.cv_repeats != "auto":
                raise ValueError(f"Invalid cv_repeats. Received: cv_repeats={self.cv_repeats!r}; "
                                 "expected 'auto' or an int >= 1.")
            return int(min(MAX_CV_REPEATS, max(1, -(-CV_REPEAT_ROWS // max(1, n_rows)))))
        return check_int("cv_repeats", self.cv_repeats, 1, integral_floats=True)

    def _splits(self, y, folds, repeats):
        """The C search's ``(train, held)`` index pairs: ``repeats`` shuffled stratified
        ``folds``-fold splits (fewer folds when a class has fewer rows); None below 2 per class."""
        from sklearn.model_selection import RepeatedStratifiedKFold

        k = int(min(folds, np.bincount(y).min()))
        if k < 2:
            return None
        seed = None if self.random_state is None else int(self.random_state)
        splitter = RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed)
        return list(splitter.split(np.zeros((len(y), 1)), y))

    def _choose_C(self, X, y, splits, grid=None):
        """Best C of ``grid`` (default: the ``Cs`` grid) on the mean CV log loss over ``splits``,
        walking up the grid with warm starts per fold. A one-value grid is cross-validated too
        (its loss compares transforms); ``Cs`` of one value is not."""
        if grid is None:
            grid = self._grid()
            if len(grid) == 1:
                return float(grid[0]), {}
        if splits is None:
            return (float(grid[0]) if len(grid) == 1 else 1.0), {}
        losses = []
        for train, held in splits:
            solver, X_tr, y_tr, fold = self._solver(grid[0], max(float(self.tol), CV_TOL)), X[train], y[train], []
            for C in grid:
                solver.set_params(C=float(C)).fit(X_tr, y_tr)
                fold.append(_log_loss(_proba(X[held], solver.coef_, solver.intercept_), y[held]))
                if len(fold) > C_PATH_PATIENCE and min(fold[-C_PATH_PATIENCE:]) > min(fold[:-C_PATH_PATIENCE]):
                    break  # worse for C_PATH_PATIENCE steps in a row: past the optimum
            losses.append(fold)
        n = min(len(f) for f in losses)  # the C values every fold reached
        mean = np.mean([f[:n] for f in losses], axis=0)
        best = int(np.argmin(mean))
        return float(grid[best]), {"C": grid[:n].tolist(), "log_loss": mean.tolist()}

    # ------------------------------------------------------------------ predict
    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), float64; columns follow ``classes_``."""
        check_is_fitted(self, "coef_")
        X = apply_transform(self.transform_, _validate_data(self, X, reset=False, dtype=np.float64))
        if self.mean_ is not None:
            X = (X - self.mean_) / self.scale_
        with blas_threads_for(X.size):
            return _proba(X, self.coef_, self.intercept_)

    def predict(self, X):
        """Most probable class label per row (one of ``classes_``)."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Save to ``path`` (must end in ``.h5``: the arrays) plus a JSON sidecar ``<path>.json``.

        Both files are written to temporary names and renamed into place; no pickle.
        """
        import h5py

        from catdog_features._io import atomic_path, write_json

        check_is_fitted(self, "coef_")
        path = Path(path)
        if path.suffix != ".h5":
            raise ValueError(f"Received: path={str(path)!r}; expected a file name ending in '.h5'.")
        classes, dtype = classes_to_json(self.classes_)
        meta = {
            "format": _SIDECAR_FORMAT, "version": _SIDECAR_VERSION,
            "params": {k: jsonable(v) for k, v in self.get_params().items()},
            "classes": classes, "classes_dtype": dtype, "n_features_in": int(self.n_features_in_),
            "C": self.C_, "transform": self.transform_, "cv_losses": self.cv_losses_,
            "transform_losses": self.transform_losses_, "n_iter": self.n_iter_,
            "best_epoch": None, "history": {},
        }
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            for name in ("coef_", "intercept_", "mean_", "scale_"):
                value = getattr(self, name)
                if value is not None:
                    f.create_dataset(name.rstrip("_"), data=np.asarray(value, dtype=np.float64))
        write_json(sidecar_path(path), meta)
        return path

    @classmethod
    def load(cls, path):
        """Load a head saved by :meth:`save`; :class:`SavedHeadError` naming the file if it is not one."""
        import h5py

        path, meta, head, classes, extra = open_saved(cls, path, _SIDECAR_FORMAT, _sidecar_fields, _SIDECAR_VERSION)
        n_features, C = extra["n_features"], extra["C"]
        n_rows = 1 if len(classes) == 2 else len(classes)
        expected = {"coef": (n_rows, n_features), "intercept": (n_rows,), "mean": (n_features,), "scale": (n_features,)}
        arrays = {}
        try:
            with h5py.File(path, "r") as f:
                for name, shape in expected.items():
                    if name in f:
                        arrays[name] = np.asarray(f[name][()], dtype=np.float64)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise SavedHeadError(f"Cannot read the head file {str(path)!r}: {exc}.") from None
        ok = all(name in arrays for name in ("coef", "intercept")) and ("mean" in arrays) == ("scale" in arrays)
        ok = ok and all(a.shape == expected[n] and np.isfinite(a).all() for n, a in arrays.items())
        if not ok:
            raise SavedHeadError(
                f"The head file {str(path)!r} does not match its sidecar: expected finite 'coef' {expected['coef']}, "
                f"'intercept' {expected['intercept']} and optionally 'mean'/'scale' ({n_features},)."
            )
        head.classes_, head.n_features_in_ = classes, n_features
        head.coef_, head.intercept_ = arrays["coef"], arrays["intercept"]
        head.mean_, head.scale_ = arrays.get("mean"), arrays.get("scale")
        head.C_, head.cv_losses_ = C, dict(meta.get("cv_losses") or {})
        head.transform_, head.transform_losses_ = extra["transform"], dict(meta.get("transform_losses") or {})
        if extra["version"] < 2:  # fitted before there were transforms and repeated CV: refit alike
            head.set_params(transform="none", cv_repeats=1)
        head.n_iter_ = int(meta.get("n_iter") or 0)
        head.best_epoch_ = None
        return head


def _sidecar_fields(meta) -> dict:
    """A LinearHead sidecar's own entries (its version already checked by ``open_saved``)."""
    version = meta.get("version", 1)
    transform = "none" if version < 2 else check_transform(meta["transform"], False)
    return {"version": version, "n_features": int(meta["n_features_in"]), "C": float(meta["C"]),
            "transform": transform}


def _proba(X, coef, intercept) -> np.ndarray:
    scores = X @ coef.T + intercept
    if coef.shape[0] == 1:
        z = scores[:, 0]
        p = np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))
        return np.column_stack([1.0 - p, p])
    scores = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=1, keepdims=True)


def _log_loss(proba, y) -> float:
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, None))))
