"""Registry of frozen ImageNet backbones from ``keras.applications``, as plain data.

Each backbone is a frozen :class:`BackboneSpec`: which constructor builds it, its native
input size, which ``preprocess_input`` it wants, and the length of its pooled vector.
Nothing downstream re-derives "which preprocessing does Xception want": it reads the spec.
TensorFlow is imported only when a model is actually built or preprocessing is run.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union


#: Seed used to initialise weights when ``weights=None``, so random-init features are reproducible.
RANDOM_INIT_SEED = 1337


@dataclass(frozen=True)
class BackboneSpec:
    """One frozen feature extractor.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"ResNet50"``.
    module : str
        ``keras.applications`` sub-module holding the constructor and ``preprocess_input``.
    constructor : str
        Name of the model constructor in that module.
    input_size : int
        Native square input size (what the ImageNet weights were trained at).
    dim : int
        Length of the global-average-pooled vector.
    preprocess : str
        Preprocessing mode of ``preprocess_input``: ``"caffe"`` (BGR, ImageNet mean),
        ``"tf"`` (scale to [-1, 1]), ``"torch"`` (ImageNet mean/std) or ``"none"``
        (the model rescales internally, e.g. EfficientNet).
    min_size : int
        Smallest input size the architecture accepts.
    pooling : str
        Global pooling applied to the last feature map.
    """

    name: str
    module: str
    constructor: str
    input_size: int
    dim: int
    preprocess: str
    min_size: int = 32
    pooling: str = "avg"

    # -- lazily resolved keras objects ------------------------------------------------
    def _module(self):
        return importlib.import_module(f"keras.applications.{self.module}")

    def preprocess_input(self, x):
        """Apply this backbone's own ``keras.applications`` preprocessing to RGB 0..255 input."""
        return self._module().preprocess_input(x)

    def identity(self) -> Dict[str, object]:
        """What of this backbone changes its vectors, as JSON-able data (part of the extractor key).

        The weights are not in it (see :meth:`weights_identity`), nor the name alone: two
        names for the same constructor, preprocessing and pooling give the same vectors.
        """
        return {
            "family": "keras.applications",
            "module": self.module,
            "constructor": self.constructor,
            "preprocess": self.preprocess,
            "pooling": self.pooling,
            "dim": int(self.dim),
        }

    def weights_identity(self, weights) -> str:
        """A string that changes whenever ``weights`` would give this backbone other vectors."""
        return weights_identity(weights)

    def resolve_size(self, image_size: Optional[int]) -> int:
        """The input size to use: the native one for ``None``/0, else ``image_size`` (validated)."""
        if not image_size:
            return self.input_size
        size = int(image_size)
        if size < self.min_size:
            raise ValueError(
                f"Image size too small for {self.name}. Received: image_size={image_size}; "
                f"expected at least {self.min_size} (native size {self.input_size})."
            )
        return size

    def build(self, weights: Union[str, os.PathLike, None] = "imagenet", image_size: Optional[int] = None):
        """Build the frozen model ``(size, size, 3) -> (dim,)`` with average pooling.

        Parameters
        ----------
        weights : "imagenet", None or path
            ``"imagenet"`` downloads (or reads Keras' cache of) the ImageNet weights;
            ``None`` initialises randomly from :data:`RANDOM_INIT_SEED`; a path loads a
            local weights file (``.h5`` / ``.weights.h5`` made for the no-top model).
        image_size : int, optional
            Square input size; defaults to the native one.
        """
        size = self.resolve_size(image_size)
        ctor = getattr(self._module(), self.constructor)
        kind = weights_kind(weights)
        kwargs = dict(include_top=False, pooling=self.pooling, input_shape=(size, size, 3))
        if kind == "none":
            import keras

            keras.utils.set_random_seed(RANDOM_INIT_SEED)
            model = ctor(weights=None, **kwargs)
        elif kind == "imagenet":
            try:
                model = ctor(weights="imagenet", **kwargs)
            except Exception as exc:  # network errors surface as many exception types
                raise WeightsDownloadError(self.name, exc) from None
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"Weights file not found. Received: weights={str(weights)!r}; expected {_WEIGHTS_EXPECTED}."
                )
            model = ctor(weights=None, **kwargs)
            try:
                model.load_weights(str(path))
            except Exception as exc:
                raise ValueError(
                    f"Could not load weights file {str(path)!r} into {self.name} "
                    f"(include_top=False, input {size}x{size}): {exc}"
                ) from None
        model.trainable = False
        return model


class WeightsDownloadError(RuntimeError):
    """The ImageNet weights could not be obtained (typically: no internet)."""

    def __init__(self, backbone: str, cause: BaseException):
        self.backbone = backbone
        self.cause = cause
        super().__init__(
            f"Could not download the ImageNet weights for {backbone} "
            f"({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}).\n"
            "This machine probably has no internet access. Either:\n"
            f"  * copy the weights file into ~/.keras/models/ (the name Keras uses for {backbone} "
            "with include_top=False) from a machine that has internet, or pass it explicitly with "
            "weights='/path/to/file.h5' (CLI: --weights PATH); or\n"
            "  * use weights=None (CLI: --weights none) for randomly initialised backbones "
            "(useful only for testing the pipeline)."
        )


_WEIGHTS_EXPECTED = ("'imagenet', 'none' (random init), the path of a weights file, or one of those per "
                     "backbone (a dict; on the command line NAME=W,NAME=W)")


def weights_kind(weights) -> str:
    """Classify one ``weights`` value: ``"imagenet"``, ``"none"`` or ``"file"``."""
    if weights is None or (isinstance(weights, str) and weights.strip().lower() in ("none", "random")):
        return "none"
    if isinstance(weights, str) and weights.strip().lower() == "imagenet":
        return "imagenet"
    if isinstance(weights, (str, os.PathLike)) and os.fspath(weights).strip():
        return "file"
    raise ValueError(f"Invalid weights. Received: weights={weights!r}; expected {_WEIGHTS_EXPECTED}.")


def _one_weights(value, base_dir):
    kind = weights_kind(value)
    if kind == "none":
        return None
    if kind == "imagenet":
        return "imagenet"
    path = Path(os.path.expanduser(os.fspath(value).strip()))
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return str(path)


def parse_weights(value, base_dir=None):
    """Normalise a weights spec from Python, a config file or the command line.

    Parameters
    ----------
    value : None, str, path or dict
        ``"imagenet"``, ``None``/``"none"`` (random init), a weights file, a dict backbone
        -> one of those, or the command-line form ``"NAME=W,NAME=W"`` (a string holding
        ``=`` that is not an existing file).
    base_dir : path, optional
        Relative file paths are taken relative to it (a config file's folder).

    Returns
    -------
    None, "imagenet", str or dict
        The same spec with canonical backbone names and file paths as strings.
    """
    if isinstance(value, str) and "=" in value and not os.path.exists(value):
        table = {}
        for item in value.split(","):
            name, sep, weights = item.partition("=")
            if not sep or not name.strip() or not weights.strip():
                raise ValueError(f"Invalid weights. Received: weights={value!r}; expected {_WEIGHTS_EXPECTED}.")
            table[name.strip()] = weights.strip()
        value = table
    if isinstance(value, dict):
        return {get_backbone(name).name: _one_weights(item, base_dir) for name, item in value.items()}
    return _one_weights(value, base_dir)


def resolve_weights(weights, names) -> Dict[str, Optional[str]]:
    """The weights of each backbone in ``names`` from a spec (see :func:`parse_weights`).

    A dict leaves backbones it does not name at ``"imagenet"``; one weights file is
    accepted only for a single backbone.
    """
    spec = parse_weights(weights)
    if isinstance(spec, dict):
        unknown = [name for name in spec if name not in names]
        if unknown:
            raise ValueError(
                f"Received weights for {unknown}, which are not among the backbones {list(names)}; "
                f"expected weights for those backbones only."
            )
        return {name: spec.get(name, "imagenet") for name in names}
    if weights_kind(spec) == "file" and len(names) > 1:
        raise ValueError(
            f"Received one weights file weights={spec!r} for {len(names)} backbones ({', '.join(names)}); "
            "expected one backbone, or a dict backbone -> weights such as "
            "{'ResNet50': 'resnet.h5', 'Xception': 'imagenet'} (command line: ResNet50=resnet.h5,Xception=imagenet)."
        )
    return {name: spec for name in names}


def weights_to_text(spec):
    """The JSON/TOML form of a parsed weights spec: ``None`` -> ``"none"`` (dicts per entry)."""
    if isinstance(spec, dict):
        return {name: weights_to_text(v) for name, v in spec.items()}
    return "none" if spec is None else str(spec)


def weights_identity(weights) -> str:
    """A string that changes whenever the weights change (file content hash for local files)."""
    kind = weights_kind(weights)
    if kind == "none":
        return f"random-init:seed={RANDOM_INIT_SEED}"
    if kind == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file not found. Received: weights={str(weights)!r}; expected {_WEIGHTS_EXPECTED}."
        )
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"file:sha256={digest.hexdigest()}"


_SPECS = (
    BackboneSpec("VGG16", "vgg16", "VGG16", 224, 512, "caffe"),
    BackboneSpec("VGG19", "vgg19", "VGG19", 224, 512, "caffe"),
    BackboneSpec("ResNet50", "resnet50", "ResNet50", 224, 2048, "caffe"),
    BackboneSpec("ResNet101", "resnet", "ResNet101", 224, 2048, "caffe"),
    BackboneSpec("ResNet152", "resnet", "ResNet152", 224, 2048, "caffe"),
    BackboneSpec("ResNet50V2", "resnet_v2", "ResNet50V2", 224, 2048, "tf"),
    BackboneSpec("InceptionV3", "inception_v3", "InceptionV3", 299, 2048, "tf", min_size=75),
    BackboneSpec("Xception", "xception", "Xception", 299, 2048, "tf", min_size=71),
    BackboneSpec("InceptionResNetV2", "inception_resnet_v2", "InceptionResNetV2", 299, 1536, "tf", min_size=75),
    BackboneSpec("DenseNet121", "densenet", "DenseNet121", 224, 1024, "torch"),
    BackboneSpec("DenseNet169", "densenet", "DenseNet169", 224, 1664, "torch"),
    BackboneSpec("DenseNet201", "densenet", "DenseNet201", 224, 1920, "torch"),
    BackboneSpec("EfficientNetB0", "efficientnet", "EfficientNetB0", 224, 1280, "none"),
    BackboneSpec("EfficientNetB3", "efficientnet", "EfficientNetB3", 300, 1536, "none"),
    BackboneSpec("MobileNetV2", "mobilenet_v2", "MobileNetV2", 224, 1280, "tf"),
)

#: name -> BackboneSpec, in a stable order.
BACKBONES: Dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}


def get_backbone(name: Union[str, BackboneSpec]) -> BackboneSpec:
    """Look up a backbone by name (case-insensitive).

    Raises
    ------
    ValueError
        For an unknown name, listing the valid ones.
    """
    if isinstance(name, BackboneSpec):
        return name
    if isinstance(name, str):
        if name in BACKBONES:
            return BACKBONES[name]
        for key, spec in BACKBONES.items():
            if key.lower() == name.strip().lower():
                return spec
    raise ValueError(
        f"Unknown backbone. Received: backbone={name!r}. Expected one of: {', '.join(BACKBONES)}."
    )


def parse_backbones(value) -> tuple:
    """Normalise ``"A,B"`` or a sequence of names into a tuple of registry names (no duplicates)."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    names = []
    for item in value:
        spec = get_backbone(item.strip() if isinstance(item, str) else item)
        if spec.name not in names:
            names.append(spec.name)
    if not names:
        raise ValueError(f"Received: backbones={value!r}; expected at least one of: {', '.join(BACKBONES)}.")
    return tuple(names)
