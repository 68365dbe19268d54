"""DenseHead: a scikit-learn classifier, a small dense network trained on feature vectors.

Its ``schedule="cosine_restarts"`` option is fastai's SGDR; :mod:`catdog_features.heads.lr_find`
has the learning-rate range test. Training runs on :mod:`catdog_features.heads.trainer`
(TensorFlow, one traced step per architecture, reused across fits); predictions are NumPy;
saved heads are Keras ``.keras`` models. TensorFlow/Keras are imported inside the functions
that need them, so importing this module (and the package) stays cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted

from catdog_features._checks import check_float, check_int
from catdog_features.heads import trainer
from catdog_features.heads.keras_io import export_model, load_model_weights, save_model
from catdog_features.heads.saved import (
    classes_to_json, jsonable, open_saved, read_sidecar, sidecar_path,
)
from catdog_features.heads.threads import blas_threads_for
from catdog_features.splitting import holdout_split

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator, X="no_validation", y="no_validation", reset=True, **kwargs):
        return estimator._validate_data(X, y, reset=reset, **kwargs)


__all__ = ["DenseHead", "derive_seeds"]

OPTIMIZERS = trainer.OPTIMIZERS
SCHEDULES = (None, "cosine_restarts")

# Keras 3's Adadelta defaults to learning_rate=0.001; the reference recipe ran on Keras 2,
# whose Adadelta used 1.0 (the value of Zeiler's paper, where the "learning rate" is only a
# scale on an already self-normalised step). Adadelta's step is linear in that scale, so
# with 0.001 every step would be 1000x smaller than the recipe's: lr=None means 1.0 for
# adadelta. sgd and adam use Keras' usual defaults.
DEFAULT_LR = {"adadelta": 1.0, "sgd": 0.01, "adam": 0.001}

_SIDECAR_FORMAT = "catdog_features.DenseHead"
# 2: weights trained by heads.trainer, optional standardisation layer, no optimizer in the file
_SIDECAR_VERSION = 2


def derive_seeds(random_state, n):
    """``n`` int seeds from ``random_state``.

    An int (or a RandomState) gives the same seeds every time; ``None`` gives fresh seeds
    from the operating system's entropy, never from NumPy's global random state.
    """
    if random_state is None:
        return [int(s) for s in np.random.SeedSequence().generate_state(n) >> 1]
    if isinstance(random_state, np.random.RandomState):
        return [int(s) for s in random_state.randint(0, 2**31 - 1, size=n)]
    if isinstance(random_state, (bool, np.bool_)) or not isinstance(random_state, (int, np.integer)):
        raise ValueError(f"Invalid random_state. Received: random_state={random_state!r}; expected an int, "
                         "a numpy RandomState or None.")
    rng = np.random.RandomState(int(random_state))
    return [int(s) for s in rng.randint(0, 2**31 - 1, size=n)]


def column_stats(X, rows):
    """float32 ``(mean, scale)`` of ``X[rows]`` per column, in two chunked passes (no copy of X).

    ``scale`` is ``sqrt(variance)`` rounded to float32; columns with (near) zero variance get
    scale 1, so a constant feature stays constant instead of blowing up on new data.
    """
    step = max(1, 2**22 // max(1, X.shape[1]))
    chunks = [rows[start : start + step] for start in range(0, len(rows), step)]
    n = max(1, len(rows))
    mean = sum((X[c].astype(np.float64).sum(axis=0) for c in chunks), np.zeros(X.shape[1])) / n
    var = sum((np.square(X[c] - mean).sum(axis=0) for c in chunks), np.zeros(X.shape[1])) / n
    flat = var <= 1e-12 * np.maximum(1.0, np.square(mean))  # variance at the mean's rounding level
    var = np.where(flat, 1.0, var).astype(np.float32)
    return mean.astype(np.float32), np.sqrt(var)


class DenseHead(ClassifierMixin, BaseEstimator):
    """A scikit-learn classifier: a small dense network trained on fixed feature vectors.

    The network is ``[standardise ->] Dropout(dropout) [-> Dense(hidden_units, relu) ->
    Dropout]`` followed by one sigmoid output (binary cross-entropy) for two classes, or a
    softmax over the classes (categorical cross-entropy) for more. With the defaults it is the
    reference recipe's head (Dropout 0.5, adadelta, batch 128).

    Parameters
    ----------
    dropout : float, default=0.5
        Dropout rate on the input features (and after the hidden layer), in [0, 1).
    optimizer : {"adadelta", "sgd", "adam"}, default="adadelta"
        Keras 3's update rules (adadelta with Keras 2's rho=0.95, epsilon=1e-7).
    lr : float or None, default=None
        Learning rate. ``None``: 1.0 for adadelta (Keras 2's default, which the reference
        recipe used; Keras 3's is 0.001), 0.01 for sgd, 0.001 for adam.
    momentum : float, default=0.0
        SGD momentum; ignored by adadelta and adam.
    decay : float, default=0.0
        Classic Keras 2 time-based decay, for any optimizer: the learning rate at optimizer
        step ``t`` (0-based) is ``lr / (1 + decay * t)``. Cannot be combined with ``schedule``
        or ``reduce_lr_on_plateau``.
    l2 : float, default=0.0
        L2 weight decay as a kernel regulariser (Keras' ``regularizers.L2(l2)``): ``l2 * sum(W**2)``
        of every Dense kernel is added to each batch's mean loss.
    standardize : bool, default=False
        Standardise every feature with the mean and standard deviation of the rows the head
        trains on (never the validation rows); applied to every input, and saved with the model.
    epochs : int, default=200
        Maximum number of epochs.
    patience : int, default=8
        Early stopping: epochs without improvement of the validation log loss before
        training stops; the weights of the best epoch are restored.
    batch_size : int, default=128
    validation_split : float, default=0.2
        Fraction held out (stratified, seeded by ``random_state``) to monitor the validation
        loss for early stopping. Ignored when ``fit`` gets ``validation_data``. With 0 and no
        ``validation_data`` the head trains for all ``epochs`` without early stopping.
    refit : bool, default=False
        After early stopping on the ``validation_split`` rows, train a fresh head on *all* rows
        for ``round((best_epoch_ + 1) / (1 - validation_split))`` epochs and keep that one (the
        held-out rows are a fifth of the data: on a few hundred rows, dropping them costs more
        than early stopping gains). Ignored with ``validation_data`` or ``validation_split=0``.
    hidden_units : int, default=0
        Width of an optional ReLU hidden layer; 0 means none.
    reduce_lr_on_plateau : bool, default=False
        Halve the learning rate when the monitored loss (validation loss, else training loss)
        has not improved by 1e-4 for ``max(1, patience // 2)`` epochs (floor 1e-6 times the start lr).
    schedule : {None, "cosine_restarts"}, default=None
        ``"cosine_restarts"``: SGDR (Loshchilov & Hutter; fastai's ``cycle_len``/``cycle_mult``):
        the learning rate follows a cosine from ``lr`` down to 0 over ``cycle_epochs`` epochs,
        then restarts at ``lr``; each cycle is ``cycle_mult`` times longer than the previous.
        Applied per optimizer step, as Keras' ``CosineDecayRestarts``.
    cycle_epochs : int, default=10
        Length of the first cosine cycle, in epochs.
    cycle_mult : float, default=1.0
        Growth factor of the cycle length after each restart (SGDR's ``T_mult``).
    verbose : int, default=0
        1: one line per epoch (losses, learning rate).
    random_state : int, RandomState or None, default=None
        Seeds the weight initialisation, dropout masks, batch order and the validation split.
        Same ``random_state`` and data -> identical predictions, whatever else the process
        does: no global random state (NumPy, Python, TensorFlow, Keras) is read or changed.

    Attributes
    ----------
    classes_ : ndarray
        Sorted class labels; ``predict_proba`` columns follow this order.
    n_features_in_ : int
    coefs_, intercepts_ : list of ndarray
        float32 kernel and bias of each Dense layer (hidden first), as in scikit-learn's MLP.
    mean_, scale_ : ndarray or None
        The standardisation (``standardize=True``), float32.
    history_ : dict of str -> list of float
        Per-epoch ``"loss"`` (training, without the L2 term), ``"val_loss"`` (when validating)
        and ``"lr"`` (the learning rate at the start of the epoch).
    best_epoch_ : int or None
        0-based index into ``history_`` of the epoch whose weights were kept (with ``refit``:
        that set the refit's length); ``None`` when there was no validation data.
    refit_epochs_ : int or None
        Epochs of the refit on all rows (``refit=True``), else None.
    model_ : keras.Model
        The trained network as a Keras model (built on first access; what :meth:`save` writes).

    Notes
    -----
    Training reuses one traced TensorFlow step per architecture within a process
    (:mod:`catdog_features.heads.trainer`): after the first fit of a shape, a fit costs its
    epochs only. A reused step gives exactly the predictions of a fresh one.
    """

    head_kind = "dense"

    def __init__(
        self,
        dropout=0.5,
        optimizer="adadelta",
        lr=None,
        momentum=0.0,
        decay=0.0,
        l2=0.0,
        standardize=False,
        epochs=200,
        patience=8,
        batch_size=128,
        validation_split=0.2,
        refit=False,
        hidden_units=0,
        reduce_lr_on_plateau=False,
        schedule=None,
        cycle_epochs=10,
        cycle_mult=1.0,
        verbose=0,
        random_state=None,
    ):
        self.dropout = dropout
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.decay = decay
        self.l2 = l2
        self.standardize = standardize
        self.epochs = epochs
        self.patience = patience
        self.batch_size = batch_size
        self.validation_split = validation_split
        self.refit = refit
        self.hidden_units = hidden_units
        self.reduce_lr_on_plateau = reduce_lr_on_plateau
        self.schedule = schedule
        self.cycle_epochs = cycle_epochs
        self.cycle_mult = cycle_mult
        self.verbose = verbose
        self.random_state = random_state

    # ------------------------------------------------------------------ parameters
    def _checked_params(self):
        """Validated, normalised hyperparameters (the public attributes stay untouched)."""
        p = {}
        p["dropout"] = check_float("dropout", self.dropout, 0.0, 1.0, high_open=True)
        optimizer = self.optimizer.lower() if isinstance(self.optimizer, str) else self.optimizer
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"Unknown optimizer. Received: optimizer={self.optimizer!r}; "
                f"expected one of: {', '.join(OPTIMIZERS)}."
            )
        p["optimizer"] = optimizer
        p["lr"] = (
            DEFAULT_LR[optimizer]
            if self.lr is None
            else check_float("lr", self.lr, 0.0, np.inf, low_open=True, high_open=True)
        )
        p["momentum"] = check_float("momentum", self.momentum, 0.0, 1.0, high_open=True)
        p["decay"] = check_float("decay", self.decay, 0.0, np.inf, high_open=True)
        p["l2"] = check_float("l2", self.l2, 0.0, np.inf, high_open=True)
        p["standardize"] = bool(self.standardize)
        p["epochs"] = check_int("epochs", self.epochs, 1, integral_floats=True)
        p["patience"] = check_int("patience", self.patience, 0, integral_floats=True)
        p["batch_size"] = check_int("batch_size", self.batch_size, 1, integral_floats=True)
        p["validation_split"] = check_float(
            "validation_split", self.validation_split, 0.0, 1.0, high_open=True
        )
        p["refit"] = bool(self.refit)
        p["hidden_units"] = check_int("hidden_units", self.hidden_units, 0, integral_floats=True)
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"Unknown schedule. Received: schedule={self.schedule!r}; "
                f"expected one of: {', '.join(map(repr, SCHEDULES))}."
            )
        p["schedule"] = self.schedule
        p["cycle_epochs"] = check_int("cycle_epochs", self.cycle_epochs, 1, integral_floats=True)
        p["cycle_mult"] = check_float("cycle_mult", self.cycle_mult, 1.0, np.inf, high_open=True)
        p["reduce_lr_on_plateau"] = bool(self.reduce_lr_on_plateau)
        # stacking two decays silently would not be what anyone asked for: refuse the combinations
        scheduled = [
            name
            for name, on in (
                (f"decay={self.decay!r}", p["decay"] > 0),
                (f"schedule={self.schedule!r}", p["schedule"] is not None),
                ("reduce_lr_on_plateau=True", p["reduce_lr_on_plateau"]),
            )
            if on
        ]
        if len(scheduled) > 1:
            raise ValueError(
                f"Received: {', '.join(scheduled)}; expected at most one learning-rate "
                "schedule (decay > 0, schedule, or reduce_lr_on_plateau)."
            )
        return p

    # ------------------------------------------------------------------ data checks
    def _validate_train(self, X, y):
        X, y = _validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        classes, y_enc = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"Received y with a single class ({classes[0]!r}); expected at least 2 classes."
            )
        return X, y_enc.astype(np.int64).ravel(), classes

    def _validate_validation_data(self, validation_data, classes):
        try:
            Xv, yv = validation_data
        except (TypeError, ValueError):
            raise ValueError(
                "Received validation_data that is not a pair; expected (X_val, y_val)."
            ) from None
        Xv = check_array(Xv, dtype=np.float32, input_name="X_val")
        yv = np.asarray(yv)
        if yv.ndim == 2 and yv.shape[1] == 1:
            yv = yv.ravel()
        if Xv.shape[1] != self.n_features_in_:
            raise ValueError(
                f"Received validation_data with X_val of {Xv.shape[1]} features; "
                f"expected {self.n_features_in_} features, as in X."
            )
        if yv.ndim != 1 or len(yv) != len(Xv):
            raise ValueError(
                f"Received validation_data with X_val of {len(Xv)} rows and y_val of shape "
                f"{yv.shape}; expected a 1-d y_val of {len(Xv)} labels."
            )
        unknown = np.setdiff1d(np.unique(yv), classes)
        if len(unknown):
            raise ValueError(
                f"Received y_val with labels not in y: {unknown.tolist()!r}; "
                f"expected labels among {classes.tolist()!r}."
            )
        return Xv, np.searchsorted(classes, yv).astype(np.int64)

    def _split(self, y_enc, fraction, seed):
        """Stratified hold-out indices (train_idx, val_idx), as sorted int64 arrays."""
        try:
            tr, va = holdout_split(y_enc, fraction, seed)
        except ValueError as exc:
            raise ValueError(
                f"Could not hold out a stratified validation_split={self.validation_split!r} "
                f"of {len(y_enc)} samples ({exc}); expected enough samples per class, or pass "
                "validation_data=(X_val, y_val), or validation_split=0."
            ) from None
        return np.sort(tr), np.sort(va)

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, validation_data=None, views=None):
        """Train the head.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature vectors; converted to float32 once (float32 input is not copied).
        y : array-like of shape (n_samples,)
            Class labels of any sortable type (ints, strings, ...).
        validation_data : (X_val, y_val) or None
            Explicit validation set for early stopping; overrides ``validation_split``.
        views : sequence of array-like of shape (n_samples, n_features), optional
            Other views of the same images, row ``i`` of each the same image as ``X[i]``
            (e.g. ``aug:<k>`` features). Each epoch every training image is drawn in one of
            ``X`` and ``views``, uniformly (seeded by ``random_state``). The early-stopping
            rows of ``validation_split`` are scored on ``X`` only, and every view of an image
            is on the same side of that split. Standardisation statistics come from ``X``.

        Returns
        -------
        self
        """
        p = self._checked_params()
        X, y_enc, classes = self._validate_train(X, y)
        X, n_views = self._stack_views(X, views)
        n_rows = len(y_enc)
        n_classes = len(classes)
        split_seed, shuffle_seed, init_seed, dropout_seed = derive_seeds(self.random_state, 4)
        val = None
        if validation_data is not None:
            Xv, yv = self._validate_validation_data(validation_data, classes)
            train_idx, val = np.arange(n_rows), (Xv, None, yv)
        elif p["validation_split"] > 0:
            train_idx, val_idx = self._split(y_enc, p["validation_split"], split_seed)
            val = (X, val_idx, y_enc[val_idx])
        else:
            train_idx = np.arange(n_rows)
        arch = trainer.Architecture(X.shape[1], p["hidden_units"], 1 if n_classes == 2 else n_classes, p["optimizer"])
        y_fit = y_enc.astype(np.float32 if n_classes == 2 else np.int32)
        seeds = (init_seed, shuffle_seed, dropout_seed)
        result, mean, scale = self._train(p, arch, X, y_fit, train_idx, val, p["epochs"], seeds, n_views)
        history, best_epoch = result.history, result.best_epoch
        self.refit_epochs_ = None
        if p["refit"] and validation_data is None and best_epoch is not None:
            # the early-stopping rows join the training rows: as many epochs, scaled to the larger set
            self.refit_epochs_ = max(1, int(round((best_epoch + 1) / (1.0 - p["validation_split"]))))
            result, mean, scale = self._train(p, arch, X, y_fit, np.arange(n_rows), None, self.refit_epochs_, seeds,
                                              n_views)
        self.classes_ = classes
        self.coefs_ = result.weights[0::2]
        self.intercepts_ = result.weights[1::2]
        self.mean_, self.scale_ = mean, scale
        self.history_ = history
        self.best_epoch_ = best_epoch
        self._keras_model = None
        return self

    def _stack_views(self, X, views):
        """``(X stacked over [X] + views, number of views)``: the views checked against ``X``."""
        if views is None or len(views) == 0:
            return X, 1
        if isinstance(views, np.ndarray) and views.ndim == 2:
            raise ValueError(f"Received views as one 2-d array of shape {views.shape}; expected a list of "
                             "(n_samples, n_features) arrays, one per view.")
        blocks = [X]
        for k, v in enumerate(views):
            v = check_array(v, dtype=np.float32, input_name=f"views[{k}]")
            if v.shape != X.shape:
                raise ValueError(f"Received views[{k}] of shape {v.shape}; expected {X.shape}, the shape of X "
                                 "(the same images, in the same order).")
            blocks.append(v)
        return np.concatenate(blocks), len(blocks)

    def _train(self, p, arch, X, y_fit, train_idx, val, epochs, seeds, n_views=1):
        """One training run from the seeded initial weights: ``(LoopResult, mean, scale)``.

        ``n_views`` > 1: ``X`` is ``n_views`` stacked views of the ``len(y_fit)`` images.
        """
        init_seed, shuffle_seed, dropout_seed = seeds
        mean, scale = column_stats(X, train_idx) if p["standardize"] else (None, None)
        steps_per_epoch = -(-len(train_idx) // p["batch_size"])
        schedule = trainer.Schedule(
            lr=p["lr"], decay=p["decay"], cycle_mult=p["cycle_mult"],
            cosine_steps=p["cycle_epochs"] * steps_per_epoch if p["schedule"] == "cosine_restarts" else 0,
        )
        settings = trainer.LoopSettings(
            epochs=epochs, patience=p["patience"], batch_size=p["batch_size"], momentum=p["momentum"],
            l2=p["l2"], dropout=p["dropout"], reduce_lr_on_plateau=p["reduce_lr_on_plateau"], verbose=int(self.verbose),
        )
        with trainer.checked_out(arch) as step, blas_threads_for(X.size):
            step.reset(trainer.glorot_uniform(np.random.default_rng(init_seed), arch))
            view_rng = np.random.default_rng(np.random.SeedSequence([shuffle_seed, 0x71E3])) if n_views > 1 else None
            result = trainer.run_loop(step, X, np.tile(y_fit, n_views) if n_views > 1 else y_fit, train_idx, val,
                                      settings, schedule, np.random.default_rng(shuffle_seed), dropout_seed, mean,
                                      scale, n_views=n_views, view_rng=view_rng)
        return result, mean, scale

    # ------------------------------------------------------------------ predict
    def _weights(self):
        return [w for pair in zip(self.coefs_, self.intercepts_) for w in pair]

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), float64; columns follow ``classes_``."""
        check_is_fitted(self, "coefs_")
        X = _validate_data(self, X, reset=False, dtype=np.float32)
        with blas_threads_for(X.size):
            logits = trainer.forward_rows(X, None, self._weights(), self.mean_, self.scale_)
        return trainer.logits_to_proba(logits)

    def predict(self, X):
        """Most probable class label per row (one of ``classes_``)."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    @property
    def model_(self):
        """The trained network as a ``keras.Model`` (built once, on first access)."""
        if "coefs_" not in self.__dict__:
            raise AttributeError("model_: this DenseHead is not fitted yet; call fit first.")
        if self.__dict__.get("_keras_model") is None:
            self._keras_model = export_model(self._weights(), self.mean_, self.scale_, float(self.dropout))
        return self._keras_model

    # ------------------------------------------------------------------ persistence
    @staticmethod
    def sidecar_path(path) -> Path:
        """The JSON file saved next to a ``.keras`` model: ``<path>.json``."""
        return sidecar_path(path)

    @classmethod
    def read_sidecar(cls, path) -> dict:
        """The JSON sidecar of a saved head (``params``, ``classes``, ``best_epoch``, ``history``, ...).

        ``path`` is the ``.keras`` file or its sidecar; no model is loaded.
        """
        return read_sidecar(path, _SIDECAR_FORMAT)

    def save(self, path):
        """Save to ``path`` (must end in ``.keras``) plus a JSON sidecar ``<path>.json``.

        The network goes into Keras' own ``.keras`` format (standardisation included); the
        hyperparameters, ``classes_``, ``n_features_in_``, ``best_epoch_`` and ``history_``
        into the sidecar. No pickle. Both files are written to temporary names and renamed
        into place.
        """
        from catdog_features._io import write_json

        check_is_fitted(self, "coefs_")
        path = Path(path)
        if path.suffix != ".keras":
            raise ValueError(f"Received: path={str(path)!r}; expected a file name ending in '.keras'.")
        classes, dtype = classes_to_json(self.classes_)
        meta = {
            "format": _SIDECAR_FORMAT,
            "version": _SIDECAR_VERSION,
            "params": {k: jsonable(v) for k, v in self.get_params().items()},
            "classes": classes,
            "classes_dtype": dtype,
            "n_features_in": int(self.n_features_in_),
            "feature_names_in": (
                self.feature_names_in_.tolist() if hasattr(self, "feature_names_in_") else None
            ),
            "best_epoch": self.best_epoch_,
            "refit_epochs": getattr(self, "refit_epochs_", None),
            "history": self.history_,
        }
        save_model(self.model_, path)
        write_json(self.sidecar_path(path), meta)
        return path

    @classmethod
    def load(cls, path):
        """Load a head saved by :meth:`save` (Keras safe mode: no code from the file runs).

        Raises ``FileNotFoundError`` for a missing model or sidecar and
        :class:`~catdog_features.heads.SavedHeadError` (naming the file) for anything else
        that is not a head this class saved.
        """
        path, meta, head, classes, extra = open_saved(cls, path, _SIDECAR_FORMAT, lambda m: {
            "n_features": int(m["n_features_in"]),
            "history": {str(k): [float(v) for v in values] for k, values in m["history"].items()},
            "best_epoch": None if m["best_epoch"] is None else int(m["best_epoch"])}, _SIDECAR_VERSION)
        n_features, history, best_epoch = extra["n_features"], extra["history"], extra["best_epoch"]
        n_out = 1 if len(classes) == 2 else len(classes)
        weights, mean, scale = load_model_weights(path, n_features, n_out)
        head.classes_ = classes
        head.n_features_in_ = n_features
        if meta.get("feature_names_in") is not None:
            head.feature_names_in_ = np.asarray(meta["feature_names_in"], dtype=object)
        head.coefs_, head.intercepts_ = weights[0::2], weights[1::2]
        head.mean_, head.scale_ = mean, scale
        head.best_epoch_ = best_epoch
        head.refit_epochs_ = meta.get("refit_epochs")
        head.history_ = history
        head._keras_model = None
        return head
