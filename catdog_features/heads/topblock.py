"""TopBlockHead: fine-tune a backbone's last block, with a new classifier, on cached feature maps.

The reference capstone's "split model": the backbone is cut at a layer (the *split*, by
default the input of its last block, see :mod:`catdog_features.features.split`); the part
before it ran once, in stage 1, into the feature store (``extract_features(...,
split="default")``); the part after it (the *top block*, with its pretrained or given weights)
trains together with ``global average pooling -> Dropout -> Dense`` on the cached maps. An
epoch then costs the top block only, not the whole backbone (``experiments/bench_topblock.py``).

Before training, the top block applied to a cached map gives the backbone's pooled vector
(to float16 storage tolerance): :meth:`TopBlockHead.pooled` of an unfitted-equivalent head
(``train_layers=0``) and :func:`~catdog_features.features.split.build_top_block` show it.

TensorFlow/Keras are imported inside the methods that need them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from catdog_features._checks import check_choice, check_float, check_int
from catdog_features.heads.dense import derive_seeds
from catdog_features.heads.saved import (
    SavedHeadError, classes_to_json, jsonable, open_saved, sidecar_path,
)
from catdog_features.heads.trainer import log_loss_from_logits, logits_to_proba
from catdog_features.splitting import holdout_split

__all__ = ["TopBlockHead"]

OPTIMIZERS = ("adam", "sgd")
_SIDECAR_FORMAT = "catdog_features.TopBlockHead"
_SIDECAR_VERSION = 1
#: Maps per forward call when predicting (memory stays bounded for any number of rows).
PREDICT_BATCH = 64


def _check_maps(X, name="X") -> np.ndarray:
    """``X`` as a 4-d float array ``(n, h, w, c)`` of finite values (float16 kept: no copy)."""
    X = np.asarray(X)
    if X.ndim != 4 or X.dtype.kind not in "fiu":
        raise ValueError(
            f"Received {name} of shape {X.shape} and dtype {X.dtype}; expected feature maps (n_samples, h, w, c) as "
            "extract_features(..., split=...) returns them."
        )
    if X.dtype.kind != "f":
        X = X.astype(np.float32)
    if len(X) == 0:
        raise ValueError(f"Received {name} with 0 samples; expected at least one.")
    if not np.isfinite(X).all():
        raise ValueError(f"Received {name} with NaN or infinite values; expected finite feature maps.")
    return X


class TopBlockHead(ClassifierMixin, BaseEstimator):
    """A scikit-learn classifier: a backbone's top block + GAP + Dropout + Dense, on cached maps.

    Parameters
    ----------
    backbone : str, default="ResNet50"
        Registry name of the backbone the maps came from.
    split : str, default="default"
        The split the maps were cached at (``extract_features(..., split=...)``): a layer
        name, ``"LAYER:input"`` or ``"default"`` (the registry's, the input of the last block).
    weights : "imagenet", None or path, default="imagenet"
        The weights of the top block, as given to the extraction (``None``: the same seeded
        random init, for tests).
    image_size : int or None, default=None
        The extraction's image size (``None``: the backbone's native one); fixes the map shape,
        which ``fit`` checks.
    train_layers : "all" or int, default="all"
        Which layers of the top block train: ``"all"``, or the last ``k`` layers that have
        weights (batch norms counted only with ``train_batchnorm``); ``0``: the top block stays
        frozen and only the Dense layer trains.
    train_batchnorm : bool, default=False
        Whether batch-normalisation layers of the top block train too. Off: they keep their
        pretrained statistics and run in inference mode (the usual choice for fine-tuning on
        small batches).
    dropout : float, default=0.5
        Dropout rate on the pooled vector, in [0, 1).
    optimizer : {"adam", "sgd"}, default="adam"
    lr : float, default=1e-4
        Learning rate (small: the top block starts from trained weights).
    momentum : float, default=0.9
        SGD momentum (ignored by adam).
    epochs : int, default=20
        Maximum number of epochs.
    patience : int, default=3
        Early stopping on the validation log loss; the best epoch's weights are kept.
    batch_size : int, default=32
    validation_split : float, default=0.2
        Stratified hold-out for early stopping (seeded by ``random_state``); ignored with
        ``validation_data``; 0: train all ``epochs`` without early stopping.
    verbose : int, default=0
        1: one line per epoch.
    random_state : int, RandomState or None, default=None
        Seeds the Dense initialisation, dropout masks, batch order and the validation split;
        no global random state is read or changed.

    Attributes
    ----------
    classes_ : ndarray
    n_features_in_ : int
        Values per map (``h * w * c``).
    map_shape_ : tuple of int
        ``(h, w, c)`` of the maps.
    split_ : str
        The canonical split (``"default"`` resolved).
    trainable_layers_ : list of str
        Names of the top-block layers that were trained.
    history_ : dict of str -> list of float
        Per-epoch ``"loss"`` and ``"val_loss"`` (when validating).
    best_epoch_ : int or None
    epoch_seconds_ : list of [float, float]
        Wall and CPU (process) seconds of each epoch's training steps (the first includes
        tracing); not saved.
    model_ : keras.Model
        ``map -> logits`` (top block, pooling, dropout, dense); what :meth:`save` writes.
    """

    head_kind = "topblock"

    def __init__(self, backbone="ResNet50", split="default", weights="imagenet", image_size=None, train_layers="all",
                 train_batchnorm=False, dropout=0.5, optimizer="adam", lr=1e-4, momentum=0.9, epochs=20, patience=3,
                 batch_size=32, validation_split=0.2, verbose=0, random_state=None):
        self.backbone = backbone
        self.split = split
        self.weights = weights
        self.image_size = image_size
        self.train_layers = train_layers
        self.train_batchnorm = train_batchnorm
        self.dropout = dropout
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.epochs = epochs
        self.patience = patience
        self.batch_size = batch_size
        self.validation_split = validation_split
        self.verbose = verbose
        self.random_state = random_state

    # ------------------------------------------------------------------ parameters
    def _checked_params(self) -> dict:
        p = {}
        if isinstance(self.train_layers, str):
            if self.train_layers != "all":
                raise ValueError(f"Invalid train_layers. Received: train_layers={self.train_layers!r}; expected 'all' "
                                 "or an integer >= 0 (the last k layers with weights).")
            p["train_layers"] = "all"
        else:
            p["train_layers"] = check_int("train_layers", self.train_layers, 0, integral_floats=True)
        p["dropout"] = check_float("dropout", self.dropout, 0.0, 1.0, high_open=True)
        p["optimizer"] = check_choice("optimizer", self.optimizer.lower() if isinstance(self.optimizer, str)
                                      else self.optimizer, OPTIMIZERS)
        p["lr"] = check_float("lr", self.lr, 0.0, np.inf, low_open=True, high_open=True)
        p["momentum"] = check_float("momentum", self.momentum, 0.0, 1.0, high_open=True)
        p["epochs"] = check_int("epochs", self.epochs, 1, integral_floats=True)
        p["patience"] = check_int("patience", self.patience, 0, integral_floats=True)
        p["batch_size"] = check_int("batch_size", self.batch_size, 1, integral_floats=True)
        p["validation_split"] = check_float("validation_split", self.validation_split, 0.0, 1.0, high_open=True)
        if self.image_size is not None:
            check_int("image_size", self.image_size, 0, integral_floats=True)
        return p

    # ------------------------------------------------------------------ model
    def _build(self, map_shape, n_out: int, init_seed: int, dropout_seed: int, p: dict):
        """``(model, trained layer names)``: the top block with its weights + the new classifier."""
        import keras

        from catdog_features.features.split import build_top_block

        block, canonical = build_top_block(self.backbone, self.weights, self.image_size or None, self.split)
        expected = tuple(int(d) for d in block.inputs[0].shape[1:])
        if tuple(map_shape) != expected:
            raise ValueError(
                f"Received maps of shape {tuple(map_shape)}; expected {expected}: what {self.backbone} split at "
                f"{canonical!r} gives at image_size={self.image_size or 'native'} (pass the extraction's image_size)."
            )
        inner = block.layers[-1]  # the top block as one functional model (its layers share the backbone's weights)
        def trainable_kind(layer):  # batch norms count only when they may train
            return bool(layer.weights) and (bool(self.train_batchnorm)
                                            or not isinstance(layer, keras.layers.BatchNormalization))

        weighted = [layer for layer in inner.layers if trainable_kind(layer)]
        chosen = weighted if p["train_layers"] == "all" else (weighted[-p["train_layers"]:] if p["train_layers"] else [])
        chosen_ids = {id(layer) for layer in chosen}
        inner.trainable = True
        for layer in inner.layers:
            layer.trainable = id(layer) in chosen_ids
        names = [layer.name for layer in chosen]
        pooled = block.outputs[0]
        x = keras.layers.Dropout(p["dropout"], seed=dropout_seed, name="head_dropout", dtype="float32")(pooled)
        logits = keras.layers.Dense(n_out, kernel_initializer=keras.initializers.GlorotUniform(seed=init_seed),
                                    name="head_output", dtype="float32")(x)
        model = keras.Model(block.inputs[0], logits, name="top_block_head")
        return model, canonical, names

    def _optimizer(self, p):
        import keras

        if p["optimizer"] == "adam":
            return keras.optimizers.Adam(learning_rate=p["lr"])
        return keras.optimizers.SGD(learning_rate=p["lr"], momentum=p["momentum"])

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, validation_data=None):
        """Train the top block and the classifier on cached maps.

        Parameters
        ----------
        X : array of shape (n_samples, h, w, c)
            Feature maps (float16 as stored, or float32), cast to float32 per batch.
        y : array-like of shape (n_samples,)
        validation_data : (X_val, y_val), optional
            Overrides ``validation_split`` for early stopping.

        Returns
        -------
        self
        """
        import tensorflow as tf

        p = self._checked_params()
        X = _check_maps(X)
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(f"Received X with {len(X)} samples and y of shape {y.shape}; expected {len(X)} labels.")
        check_classification_targets(y)
        classes, y_enc = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"Received y with a single class ({classes[0]!r}); expected at least 2 classes.")
        n_out = 1 if len(classes) == 2 else len(classes)
        split_seed, shuffle_seed, init_seed, dropout_seed = derive_seeds(self.random_state, 4)
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = _check_maps(Xv, "X_val")
            if Xv.shape[1:] != X.shape[1:]:
                raise ValueError(f"Received X_val of maps {Xv.shape[1:]}; expected {X.shape[1:]}, as in X.")
            unknown = np.setdiff1d(np.unique(yv), classes)
            if len(unknown):
                raise ValueError(f"Received y_val with labels not in y: {unknown.tolist()!r}; expected labels among "
                                 f"{classes.tolist()!r}.")
            train_idx, val = np.arange(len(X)), (Xv, np.searchsorted(classes, np.asarray(yv)))
        elif p["validation_split"] > 0:
            try:
                train_idx, val_idx = holdout_split(y_enc, p["validation_split"], split_seed)
            except ValueError as exc:
                raise ValueError(f"Could not hold out a stratified validation_split={self.validation_split!r} of "
                                 f"{len(y_enc)} samples ({exc}); expected enough samples per class, or "
                                 "validation_data, or validation_split=0.") from None
            train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
            val = (X[val_idx], y_enc[val_idx])
        else:
            train_idx, val = np.arange(len(X)), None

        model, canonical, names = self._build(X.shape[1:], n_out, init_seed, dropout_seed, p)
        optimizer = self._optimizer(p)
        variables = model.trainable_variables
        binary = n_out == 1

        def loss_of(yb, logits):
            if binary:
                return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=yb, logits=logits[:, 0]))
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits))

        y_dtype = tf.float32 if binary else tf.int32
        spec = [tf.TensorSpec((None, *X.shape[1:]), tf.float32), tf.TensorSpec((None,), y_dtype)]

        @tf.function(input_signature=spec, autograph=False, reduce_retracing=True)
        def train_step(xb, yb):
            with tf.GradientTape() as tape:
                loss = loss_of(yb, model(xb, training=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss * tf.cast(tf.shape(xb)[0], tf.float32)

        self._forward = _compiled_forward(model, X.shape[1:])
        rng = np.random.default_rng(shuffle_seed)
        history = {"loss": []}
        if val is not None:
            history["val_loss"] = []
        best, best_epoch, best_weights, wait = np.inf, None, None, 0
        bs = p["batch_size"]
        timings = []
        for epoch in range(p["epochs"]):
            w0, c0 = time.perf_counter(), time.process_time()
            order = rng.permutation(train_idx)
            total = 0.0
            for start in range(0, len(order), bs):
                rows = order[start:start + bs]
                xb = tf.constant(np.asarray(X[rows], dtype=np.float32))
                yb = tf.constant(y_enc[rows].astype(np.float32 if binary else np.int32))
                total += float(train_step(xb, yb))
            loss = total / len(order)
            timings.append([time.perf_counter() - w0, time.process_time() - c0])  # training steps only
            history["loss"].append(loss)
            if val is not None:
                val_loss = log_loss_from_logits(self._logits(val[0]), val[1])
                history["val_loss"].append(val_loss)
                if val_loss < best:
                    best, best_epoch, best_weights, wait = val_loss, epoch, model.get_weights(), 0
                else:
                    wait += 1
            if self.verbose:
                shown = f" val_loss {history['val_loss'][-1]:.5f}" if val is not None else ""
                print(f"epoch {epoch + 1}/{p['epochs']}: loss {loss:.5f}{shown}")
            if not np.isfinite(loss) or (val is not None and wait > 0 and wait >= p["patience"]):
                break
        if best_weights is not None:
            model.set_weights(best_weights)
        self.classes_ = classes
        self.n_features_in_ = int(np.prod(X.shape[1:]))
        self.map_shape_ = tuple(int(d) for d in X.shape[1:])
        self.split_ = canonical
        self.trainable_layers_ = names
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.epoch_seconds_ = timings
        self.model_ = model
        return self

    # ------------------------------------------------------------------ predict
    def _logits(self, X) -> np.ndarray:
        parts = []
        for start in range(0, len(X), PREDICT_BATCH):
            parts.append(self._forward(np.asarray(X[start:start + PREDICT_BATCH], dtype=np.float32)))
        return np.concatenate(parts).astype(np.float32)

    def _checked_input(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = _check_maps(X)
        if tuple(X.shape[1:]) != tuple(self.map_shape_):
            raise ValueError(f"Received maps of shape {tuple(X.shape[1:])}; expected {tuple(self.map_shape_)}, as in fit.")
        if getattr(self, "_forward", None) is None:
            self._forward = _compiled_forward(self.model_, self.map_shape_)
        return X

    def predict_proba(self, X):
        """Class probabilities ``(n_samples, n_classes)``, float64; columns follow ``classes_``."""
        X = self._checked_input(X)
        return logits_to_proba(self._logits(X))

    def predict(self, X):
        """Most probable class label per map."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def pooled(self, X) -> np.ndarray:
        """The (trained) top block's pooled vectors ``(n_samples, dim)`` float32 for maps ``X``.

        With ``train_layers=0`` the top block keeps the backbone's weights, so this equals the
        backbone's pooled vectors of the same images (parity).
        """
        import keras

        X = self._checked_input(X)
        pooled = keras.Model(self.model_.inputs[0], self.model_.get_layer("head_dropout").input)
        return np.concatenate([np.asarray(pooled(np.asarray(X[s:s + PREDICT_BATCH], np.float32), training=False))
                               for s in range(0, len(X), PREDICT_BATCH)])

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Save to ``path`` (``.keras``: Keras' own format) plus a JSON sidecar ``<path>.json``. No pickle."""
        from catdog_features._io import write_json
        from catdog_features.heads.keras_io import save_model

        check_is_fitted(self, "model_")
        path = Path(path)
        if path.suffix != ".keras":
            raise ValueError(f"Received: path={str(path)!r}; expected a file name ending in '.keras'.")
        classes, dtype = classes_to_json(self.classes_)
        params = self.get_params()
        params["weights"] = None if params["weights"] is None else str(params["weights"])
        meta = {
            "format": _SIDECAR_FORMAT, "version": _SIDECAR_VERSION,
            "params": {k: jsonable(v) for k, v in params.items()},
            "classes": classes, "classes_dtype": dtype, "map_shape": list(self.map_shape_), "split": self.split_,
            "trainable_layers": list(self.trainable_layers_), "best_epoch": self.best_epoch_, "history": self.history_,
        }
        save_model(self.model_, path)
        write_json(sidecar_path(path), meta)
        return path

    @classmethod
    def load(cls, path):
        """Load a head saved by :meth:`save` (Keras safe mode: no code from the file runs)."""
        import keras

        from catdog_features.heads.keras_io import _LOAD_ERRORS

        path, meta, head, classes, extra = open_saved(cls, path, _SIDECAR_FORMAT, lambda m: {
            "map_shape": tuple(int(d) for d in m["map_shape"]),
            "history": {str(k): [float(v) for v in values] for k, values in m["history"].items()}}, _SIDECAR_VERSION)
        map_shape, history = extra["map_shape"], extra["history"]
        try:
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
        except _LOAD_ERRORS as exc:
            raise SavedHeadError(f"Cannot load the head model {str(path)!r}: {type(exc).__name__}: {exc}. Expected a "
                                 ".keras file written by TopBlockHead.save.") from None
        n_out = 1 if len(classes) == 2 else len(classes)
        if tuple(model.inputs[0].shape[1:]) != map_shape or tuple(model.outputs[0].shape[1:]) != (n_out,):
            raise SavedHeadError(f"The head model {str(path)!r} does not match its sidecar: expected maps {map_shape} "
                                 f"-> {n_out} logits.")
        head.classes_ = classes
        head.map_shape_ = map_shape
        head.n_features_in_ = int(np.prod(map_shape))
        head.split_ = str(meta["split"])
        head.trainable_layers_ = list(meta.get("trainable_layers", []))
        head.history_ = history
        head.best_epoch_ = meta.get("best_epoch")
        head.model_ = model
        head._forward = None
        return head

    def __getstate__(self):  # the compiled function cannot be copied; it is rebuilt on demand
        state = dict(self.__dict__)
        state.pop("_forward", None)
        return state


def _compiled_forward(model, map_shape):
    """``maps float32 -> logits`` as a NumPy function (one traced graph, any batch length)."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), autograph=False, reduce_retracing=True,
                     input_signature=[tf.TensorSpec((None, *map_shape), tf.float32)])
    return lambda x: fn(tf.constant(x)).numpy()
