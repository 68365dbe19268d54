"""A DenseHead's weights as a Keras model: built for ``.keras`` files, read back safely.

The model is ``Input -> [Normalization "standardize"] -> Dropout "input_dropout" ->
[Dense "hidden" (relu) -> Dropout "hidden_dropout"] -> Dense "output"`` (sigmoid for two
classes, softmax otherwise): what :class:`~catdog_features.heads.DenseHead` computes, so the
file is a plain Keras model anyone can load. It is the owner of that layout; reading goes
through :func:`load_model_weights` only, with Keras' safe mode on.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from catdog_features._io import atomic_path
from catdog_features.heads.saved import SavedHeadError


def export_model(weights: List[np.ndarray], mean: Optional[np.ndarray], scale: Optional[np.ndarray],
                 dropout: float):
    """A ``keras.Model`` computing the head with these weights (no optimizer: it is not trained further)."""
    import keras

    n_features = weights[0].shape[0]
    n_out = weights[-1].shape[0]
    # Explicit names, dtypes, zero initialisers and seeds: building the model neither reads nor
    # advances Keras' global name counters or random state, and a mixed-precision policy set
    # for the backbones does not turn the head into float16.
    inputs = keras.Input(shape=(n_features,), dtype="float32", name="features")
    x = inputs
    if mean is not None:
        x = keras.layers.Normalization(mean=mean.tolist(), variance=np.square(scale).tolist(), name="standardize",
                                       dtype="float32")(x)
    x = keras.layers.Dropout(dropout, seed=0, name="input_dropout", dtype="float32")(x)
    dense = []
    if len(weights) == 4:
        hidden = keras.layers.Dense(weights[0].shape[1], activation="relu", kernel_initializer="zeros",
                                    name="hidden", dtype="float32")
        x = keras.layers.Dropout(dropout, seed=0, name="hidden_dropout", dtype="float32")(hidden(x))
        dense.append(hidden)
    output = keras.layers.Dense(n_out, activation="sigmoid" if n_out == 1 else "softmax", kernel_initializer="zeros",
                                name="output", dtype="float32")
    model = keras.Model(inputs, output(x), name="dense_head")
    for k, layer in enumerate(dense + [output]):
        layer.set_weights([weights[2 * k], weights[2 * k + 1]])
    return model


def save_model(model, path: Path) -> None:
    """Write ``model`` to ``path`` (``.keras``) atomically."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


# Errors Keras raises for files it cannot deserialise (a damaged zip, a foreign or crafted config
# such as a layer naming ``subprocess.Popen``, which safe mode refuses to import).
_LOAD_ERRORS = (TypeError, ValueError, KeyError, AttributeError, OSError, zipfile.BadZipFile, IndexError)


def load_model_weights(path: Path, n_features: int, n_out: int
                       ) -> Tuple[List[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """``(weights, mean, scale)`` of a saved head model, checked against the sidecar's shapes.

    Raises :class:`SavedHeadError` naming the file for anything that is not such a model.
    Keras' safe mode stays on: no code from the file runs.
    """
    import keras

    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except _LOAD_ERRORS as exc:
        raise SavedHeadError(
            f"Cannot load the head model {str(path)!r}: {type(exc).__name__}: {exc}. Expected a .keras file "
            "written by DenseHead.save (Keras safe mode refuses anything else)."
        ) from None
    layers = {layer.name: layer for layer in getattr(model, "layers", [])}
    try:
        weights = []
        for name in ("hidden", "output"):
            if name in layers:
                kernel, bias = (np.asarray(w, dtype=np.float32) for w in layers[name].get_weights())
                weights += [kernel, bias]
        mean = scale = None
        if "standardize" in layers:
            config = layers["standardize"].get_config()
            mean = np.asarray(config["mean"], dtype=np.float32)
            scale = np.sqrt(np.asarray(config["variance"], dtype=np.float32))
    except _LOAD_ERRORS as exc:
        raise SavedHeadError(f"The head model {str(path)!r} has an unexpected layout ({exc}).") from None
    shapes_ok = (
        len(weights) in (2, 4)
        and weights[0].shape[0] == n_features
        and weights[-1].shape == (n_out,)
        and all(w.ndim == 2 and b.shape == (w.shape[1],) for w, b in zip(weights[0::2], weights[1::2]))
        and all(a.shape[1] == b.shape[0] for a, b in zip(weights[0:-2:2], weights[2::2]))
        and (mean is None or (mean.shape == (n_features,) and scale.shape == (n_features,)))
    )
    if not shapes_ok or not all(np.isfinite(w).all() for w in weights):
        raise SavedHeadError(
            f"The head model {str(path)!r} does not match its sidecar: expected Dense layers 'hidden' (optional) "
            f"and 'output' taking {n_features} features to {n_out} outputs, with finite weights."
        )
    return weights, mean, scale
