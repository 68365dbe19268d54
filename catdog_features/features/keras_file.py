"""Your own Keras model as a frozen backbone: ``keras:PATH?preprocess=MODE``.

``PATH`` is a ``.keras`` model file (Keras 3's format; loaded with ``safe_mode=True``, so a
file cannot run code); relative paths are taken from the current folder (from the config
file's folder in a run config). ``MODE`` says what the model wants as input, and must be
given, because nothing in the file says it:

* ``caffe``: BGR, ImageNet mean subtracted (VGG, ResNet50 v1);
* ``tf``: scaled to [-1, 1] (Inception, Xception, MobileNet, ResNet v2);
* ``torch``: [0, 1], ImageNet mean/std (DenseNet);
* ``none``: raw RGB 0..255 (models that rescale inside: EfficientNet, ConvNeXt, ...).

An output of shape ``(N, d)`` is the vector as is; ``(N, H, W, C)`` is average-pooled to
``(N, C)``; anything else is refused. The input size comes from the model (a fixed
``(H, H, 3)`` input); a model with a free input size takes ``image_size``. The file is
fingerprinted by its SHA-256, so a changed file gives new vectors and a fresh extraction.

Weights: ``"imagenet"`` (the default word for "pretrained") means the weights stored in the
file; ``None`` re-initialises the architecture randomly (reproducibly); a path loads a
``.weights.h5`` file into it.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Dict, Optional, Tuple

from catdog_features._checks import check_int
from catdog_features.features._build import PRECISIONS, RANDOM_INIT_SEED, check_precision, seeded_build, sha256_file
from catdog_features.features.weights import WEIGHTS_EXPECTED, weights_identity, weights_kind

#: preprocessing mode -> what it does (``keras.applications.imagenet_utils.preprocess_input`` modes + none)
PREPROCESS_MODES: Dict[str, str] = {
    "caffe": "RGB->BGR, ImageNet mean subtracted",
    "tf": "scaled to [-1, 1]",
    "torch": "scaled to [0, 1], ImageNet mean/std",
    "none": "raw RGB 0..255 (the model rescales inside)",
}

_QUERY = "?preprocess="
_SYNTAX = "keras:/path/to/model.keras?preprocess=MODE with MODE one of " + ", ".join(PREPROCESS_MODES)

#: (path, size, mtime_ns) -> (input size or None, dim, pooling): a model file is loaded once to learn its shapes.
_SHAPES: Dict[Tuple[str, int, int], Tuple[Optional[int], int, str]] = {}


def keras_file_spec(text: str, base_dir=None) -> "KerasFileSpec":
    """The spec of ``keras:TEXT`` (``TEXT`` = ``PATH?preprocess=MODE``)."""
    path_text, sep, mode = text.strip().rpartition(_QUERY)
    name = f"keras:{text.strip()}"
    if not sep or not path_text:
        raise ValueError(f"Invalid backbone. Received: backbone={name!r}; expected {_SYNTAX} "
                         "(the preprocessing the model was trained with).")
    mode = mode.strip().lower()
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"Unknown preprocessing. Received: preprocess={mode!r} in backbone={name!r}; "
                         f"expected one of: {', '.join(PREPROCESS_MODES)}.")
    path = Path(os.path.expanduser(path_text))
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    path = Path(os.path.normpath(path))
    if not path.is_file():
        raise FileNotFoundError(f"Model file not found. Received: backbone={name!r}; expected an existing .keras "
                                f"file ({str(path)!r} does not exist or is not a file).")
    if path.suffix.lower() != ".keras" or not zipfile.is_zipfile(path):
        raise ValueError(f"Invalid model file. Received: backbone={name!r}; expected a Keras 3 .keras file "
                         "(model.save('model.keras')); legacy .h5 models can run code when loaded and are refused.")
    return KerasFileSpec(f"keras:{path}{_QUERY}{mode}", str(path), mode)


def _load(path: str):
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises TypeError/ValueError/... for unsafe or unknown content
        raise ValueError(f"Could not load the Keras model file {path!r} with safe_mode=True: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def _model_shapes(model, path: str) -> Tuple[Optional[int], int, str]:
    """(fixed input size or None, output dim, pooling) of a loaded model, or a ValueError."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"Model {path!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                         "expected one image input and one output.")
    shape_in, shape_out = tuple(model.inputs[0].shape), tuple(model.outputs[0].shape)
    if len(shape_in) != 4 or shape_in[-1] != 3 or shape_in[1] != shape_in[2]:
        raise ValueError(f"Model {path!r} takes inputs of shape {shape_in}; expected (None, H, H, 3) "
                         "(square RGB images, channels last) or (None, None, None, 3).")
    pooling = {2: "none", 4: "avg"}.get(len(shape_out))
    if pooling is None or shape_out[-1] is None:
        raise ValueError(f"Cannot pool the output of model {path!r}: shape {shape_out}; expected (N, d) "
                         "(used as is) or (N, H, W, C) (average-pooled to (N, C)).")
    return (None if shape_in[1] is None else int(shape_in[1])), int(shape_out[-1]), pooling


@dataclass(frozen=True)
class KerasFileSpec:
    """A ``.keras`` model file as a frozen backbone (same protocol as ``BackboneSpec``).

    Attributes
    ----------
    name : str
        ``keras:PATH?preprocess=MODE`` (canonical: the resolved path).
    path : str
        The model file.
    preprocess : str
        Key of :data:`PREPROCESS_MODES`.
    """

    name: str
    path: str
    preprocess: str

    @cached_property
    def sha256(self) -> str:
        """SHA-256 of the model file's bytes."""
        return sha256_file(self.path)

    @cached_property
    def _shapes(self) -> Tuple[Optional[int], int, str]:
        st = os.stat(self.path)
        key = (self.path, st.st_size, st.st_mtime_ns)
        if key not in _SHAPES:
            with seeded_build(RANDOM_INIT_SEED):
                _SHAPES[key] = _model_shapes(_load(self.path), self.path)
        return _SHAPES[key]

    @property
    def input_size(self) -> Optional[int]:
        """The model's fixed input size, or ``None`` when it takes any size."""
        return self._shapes[0]

    @property
    def min_size(self) -> int:
        return self.input_size or 1

    @property
    def dim(self) -> int:
        return self._shapes[1]

    @property
    def pooling(self) -> str:
        """``"none"`` for an ``(N, d)`` output, ``"avg"`` for a feature map."""
        return self._shapes[2]

    def preprocess_input(self, x):
        """The named preprocessing on RGB 0..255 input."""
        if self.preprocess == "none":
            return x
        from keras.applications import imagenet_utils

        return imagenet_utils.preprocess_input(x, mode=self.preprocess)

    def identity(self) -> Dict[str, object]:
        """The file's content hash, preprocessing, pooling and dim (JSON-able)."""
        return {"family": "keras-file", "sha256": self.sha256, "preprocess": self.preprocess,
                "pooling": self.pooling, "dim": int(self.dim)}

    def weights_identity(self, weights) -> str:
        """The file's own weights (already in :meth:`identity`), the seed, or a weights file's hash."""
        if weights_kind(weights) == "imagenet":
            return f"model-file:sha256={self.sha256}"
        return weights_identity(weights)

    def resolve_size(self, image_size: Optional[int]) -> int:
        """The model's own size for ``None``/0; else ``image_size`` (must match a fixed input)."""
        if not image_size:
            if self.input_size is None:
                raise ValueError(f"{self.name} takes images of any size; expected an explicit image_size "
                                 "(CLI: --image-size N).")
            return self.input_size
        size = check_int("image_size", image_size, 1, integral_floats=True)
        if self.input_size is not None and size != self.input_size:
            raise ValueError(f"Invalid image size for {self.name}. Received: image_size={image_size}; "
                             f"expected its fixed input size {self.input_size} (or 0 for it).")
        return size

    def build(self, weights="imagenet", image_size: Optional[int] = None, precision: str = "float32"):
        """The frozen model images (after :meth:`preprocess_input`) ``(size, size, 3)`` -> ``(dim,)`` float32.

        ``precision`` rebuilds every layer under that Keras dtype policy (the file's float32
        weights copied in); the global policy is not touched. Random draws are seeded and the
        global random state restored.
        """
        import keras

        size = self.resolve_size(image_size)
        kind = weights_kind(weights)
        if kind == "file" and not Path(weights).expanduser().is_file():
            raise FileNotFoundError(f"Weights file not found. Received: weights={str(weights)!r}; "
                                    f"expected {WEIGHTS_EXPECTED}.")
        policy = PRECISIONS[check_precision(precision)]
        with seeded_build(RANDOM_INIT_SEED):
            model = _load(self.path)
            _model_shapes(model, self.path)
            if kind == "none":
                model = keras.models.clone_model(model, recursive=True)  # fresh layers: fresh random weights
            elif kind == "file":
                try:
                    model.load_weights(str(Path(weights).expanduser()))
                except Exception as exc:
                    raise ValueError(f"Could not load weights file {str(weights)!r} into {self.name}: {exc}") from None
            if policy != "float32":
                model = _with_policy(model, policy)
            images = keras.Input((size, size, 3), name="images")
            out = keras.ops.cast(model(images), "float32")
            if self.pooling == "avg":
                out = keras.layers.GlobalAveragePooling2D(dtype="float32")(out)
            wrapped = keras.Model(images, out, name="keras_file_backbone")
        wrapped.trainable = False
        return wrapped


def _with_policy(model, policy: str):
    """A copy of ``model`` whose layers compute under ``policy``, with the same (float32) weights."""
    import keras

    def clone(layer):
        return type(layer).from_config({**layer.get_config(), "dtype": policy})

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy
