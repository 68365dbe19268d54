"""Registry of frozen backbones, as plain data: ``keras.applications``, keras-hub presets, own files.

Three kinds of spec share one protocol (what :mod:`.mapper` and :mod:`.extract` rely on):
``.name``, ``.dim``, ``.input_size``, ``.min_size``, ``.resolve_size(image_size)``,
``.build(weights, image_size, precision="float32")`` (a frozen Keras model, images 0..255
already passed through ``.preprocess_input`` -> ``(N, dim)``), ``.preprocess_input(x)``,
``.identity()`` (JSON-able: everything but the weights that changes the vectors) and
``.weights_identity(weights)``.

* :class:`BackboneSpec`: a ``keras.applications`` constructor (the rows of :data:`BACKBONES`);
* ``hub:PRESET`` -> :class:`catdog_features.features.hub.HubSpec` (DINOv2, CLIP, SigLIP image
  encoders from keras-hub; the ``[hub]`` extra);
* ``keras:PATH?preprocess=MODE`` -> :class:`catdog_features.features.keras_file.KerasFileSpec`
  (any ``.keras`` model file).

TensorFlow is imported only when a model is built or preprocessing is run.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from catdog_features._checks import check_int
from catdog_features.features._build import RANDOM_INIT_SEED, dtype_policy, seeded_build
from catdog_features.features.weights import (  # noqa: F401  (re-exported: the historical home of these)
    WEIGHTS_EXPECTED,
    WeightsDownloadError,
    imagenet_remedy,
    parse_weights,
    resolve_weights,
    weights_identity,
    weights_kind,
    weights_to_text,
)


def check_image_size(spec, image_size) -> int:
    """``image_size`` as an int >= ``spec.min_size``, or a ``ValueError`` naming the backbone."""
    size = check_int("image_size", image_size, 1, integral_floats=True)
    if size < spec.min_size:
        raise ValueError(
            f"Image size too small for {spec.name}. Received: image_size={image_size}; "
            f"expected at least {spec.min_size} (native size {spec.input_size})."
        )
    return size


@dataclass(frozen=True)
class BackboneSpec:
    """One frozen ``keras.applications`` feature extractor.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"ResNet50"``.
    module : str
        ``keras.applications`` sub-module holding ``preprocess_input``.
    constructor : str
        Name of the model constructor in ``keras.applications``.
    input_size : int
        Native square input size (what the ImageNet weights were trained at).
    dim : int
        Length of the global-average-pooled vector.
    preprocess : str
        What ``preprocess_input`` does: ``"caffe"`` (BGR, ImageNet mean), ``"tf"`` (scale to
        [-1, 1]), ``"torch"`` (ImageNet mean/std) or ``"none"`` (nothing: the model rescales
        inside, e.g. EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3).
    weights_url : str
        Where Keras downloads the no-top ImageNet weights; ``{size}`` stands for the input size
        where Keras has one file per size (MobileNet, MobileNetV2: see ``weights_sizes``).
    min_size : int
        Smallest input size the architecture accepts.
    pooling : str
        Global pooling applied to the last feature map.
    weights_file : str
        The name Keras stores the weights under in ``~/.keras/models/`` when it is not the
        URL's last part.
    weights_sizes : tuple of int
        Input sizes with their own weights file; other sizes load the native size's.
    default_split : str
        Where ``split="default"`` cuts the backbone for a spatial cache and a
        :class:`~catdog_features.heads.TopBlockHead`: the input of its last block, as a layer
        name (its output) or ``"LAYER:input"`` (see :mod:`catdog_features.features.split`);
        ``""``: no default.
    """

    name: str
    module: str
    constructor: str
    input_size: int
    dim: int
    preprocess: str
    weights_url: str = ""
    min_size: int = 32
    pooling: str = "avg"
    weights_file: str = ""
    weights_sizes: Tuple[int, ...] = ()
    default_split: str = ""

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
        return check_image_size(self, image_size)

    def imagenet_weights(self, image_size: Optional[int] = None) -> Tuple[str, str]:
        """``(file name, URL)`` of the no-top ImageNet weights Keras loads at that size."""
        size = self.resolve_size(image_size)
        size = size if size in self.weights_sizes else self.input_size
        url = self.weights_url.format(size=size)
        name = (self.weights_file or url.rsplit("/", 1)[-1]).format(size=size)
        return name, url

    def build(self, weights: Union[str, os.PathLike, None] = "imagenet", image_size: Optional[int] = None,
              precision: str = "float32"):
        """Build the frozen model ``(size, size, 3) -> (dim,)`` with average pooling.

        Parameters
        ----------
        weights : "imagenet", None or path
            ``"imagenet"`` downloads (or reads Keras' cache of) the ImageNet weights;
            ``None`` initialises randomly from :data:`RANDOM_INIT_SEED`; a path loads a
            local weights file (``.h5`` / ``.weights.h5`` made for the no-top model).
        image_size : int, optional
            Square input size; defaults to the native one.
        precision : {"float32", "bfloat16", "float16"}
            The model computes under that Keras mixed-precision policy (variables float32);
            the global policy is restored afterwards.

        Notes
        -----
        The process's global random state (Python, NumPy) is the same after the call as
        before it, whatever the weights (see :func:`~catdog_features.features._build.seeded_build`).
        """
        import keras

        size = self.resolve_size(image_size)
        ctor = getattr(keras.applications, self.constructor)
        kind = weights_kind(weights)
        kwargs = dict(include_top=False, pooling=self.pooling, input_shape=(size, size, 3))
        if kind == "file":
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"Weights file not found. Received: weights={str(weights)!r}; expected {WEIGHTS_EXPECTED}."
                )
        with dtype_policy(precision), seeded_build(RANDOM_INIT_SEED):
            if kind == "imagenet":
                try:
                    model = ctor(weights="imagenet", **kwargs)
                except Exception as exc:  # network errors surface as many exception types
                    name, url = self.imagenet_weights(size)
                    raise WeightsDownloadError(self.name, exc, remedy=imagenet_remedy(self.name, name, url)) from None
            else:
                model = ctor(weights=None, **kwargs)
        if kind == "file":
            try:
                model.load_weights(str(path))
            except Exception as exc:
                raise ValueError(
                    f"Could not load weights file {str(path)!r} into {self.name} "
                    f"(include_top=False, input {size}x{size}): {exc}"
                ) from None
        model.trainable = False
        return model


_KA = "https://storage.googleapis.com/tensorflow/keras-applications/"
_KB = "https://storage.googleapis.com/keras-applications/"
_TFK = "_weights_tf_dim_ordering_tf_kernels_notop.h5"

# Sizes, dims and file names as keras.applications 3.x has them (tests/test_backbones.py checks
# every row against the constructor: output dim, preprocess_input, the file it downloads).
_SPECS = (
    BackboneSpec("VGG16", "vgg16", "VGG16", 224, 512, "caffe", _KA + "vgg16/vgg16" + _TFK),
    BackboneSpec("VGG19", "vgg19", "VGG19", 224, 512, "caffe", _KA + "vgg19/vgg19" + _TFK),
    BackboneSpec("ResNet50", "resnet50", "ResNet50", 224, 2048, "caffe", _KA + "resnet/resnet50" + _TFK,
                 default_split="conv5_block2_out"),
    BackboneSpec("ResNet101", "resnet", "ResNet101", 224, 2048, "caffe", _KA + "resnet/resnet101" + _TFK),
    BackboneSpec("ResNet152", "resnet", "ResNet152", 224, 2048, "caffe", _KA + "resnet/resnet152" + _TFK),
    BackboneSpec("ResNet50V2", "resnet_v2", "ResNet50V2", 224, 2048, "tf", _KA + "resnet/resnet50v2" + _TFK),
    BackboneSpec("ResNet101V2", "resnet_v2", "ResNet101V2", 224, 2048, "tf", _KA + "resnet/resnet101v2" + _TFK),
    BackboneSpec("ResNet152V2", "resnet_v2", "ResNet152V2", 224, 2048, "tf", _KA + "resnet/resnet152v2" + _TFK),
    BackboneSpec("InceptionV3", "inception_v3", "InceptionV3", 299, 2048, "tf",
                 _KA + "inception_v3/inception_v3" + _TFK, min_size=75, default_split="mixed9"),
    BackboneSpec("Xception", "xception", "Xception", 299, 2048, "tf", _KA + "xception/xception" + _TFK,
                 min_size=71, default_split="block14_sepconv1:input"),
    BackboneSpec("InceptionResNetV2", "inception_resnet_v2", "InceptionResNetV2", 299, 1536, "tf",
                 _KA + "inception_resnet_v2/inception_resnet_v2" + _TFK, min_size=75),
    BackboneSpec("DenseNet121", "densenet", "DenseNet121", 224, 1024, "torch", _KA + "densenet/densenet121" + _TFK),
    BackboneSpec("DenseNet169", "densenet", "DenseNet169", 224, 1664, "torch", _KA + "densenet/densenet169" + _TFK),
    BackboneSpec("DenseNet201", "densenet", "DenseNet201", 224, 1920, "torch", _KA + "densenet/densenet201" + _TFK),
    BackboneSpec("EfficientNetB0", "efficientnet", "EfficientNetB0", 224, 1280, "none",
                 _KB + "efficientnetb0_notop.h5"),
    BackboneSpec("EfficientNetB1", "efficientnet", "EfficientNetB1", 240, 1280, "none",
                 _KB + "efficientnetb1_notop.h5"),
    BackboneSpec("EfficientNetB2", "efficientnet", "EfficientNetB2", 260, 1408, "none",
                 _KB + "efficientnetb2_notop.h5"),
    BackboneSpec("EfficientNetB3", "efficientnet", "EfficientNetB3", 300, 1536, "none",
                 _KB + "efficientnetb3_notop.h5"),
    BackboneSpec("EfficientNetB4", "efficientnet", "EfficientNetB4", 380, 1792, "none",
                 _KB + "efficientnetb4_notop.h5"),
    BackboneSpec("EfficientNetB5", "efficientnet", "EfficientNetB5", 456, 2048, "none",
                 _KB + "efficientnetb5_notop.h5"),
    BackboneSpec("EfficientNetB6", "efficientnet", "EfficientNetB6", 528, 2304, "none",
                 _KB + "efficientnetb6_notop.h5"),
    BackboneSpec("EfficientNetB7", "efficientnet", "EfficientNetB7", 600, 2560, "none",
                 _KB + "efficientnetb7_notop.h5"),
    BackboneSpec("EfficientNetV2B0", "efficientnet_v2", "EfficientNetV2B0", 224, 1280, "none",
                 _KA + "efficientnet_v2/efficientnetv2-b0_notop.h5"),
    BackboneSpec("EfficientNetV2B1", "efficientnet_v2", "EfficientNetV2B1", 240, 1280, "none",
                 _KA + "efficientnet_v2/efficientnetv2-b1_notop.h5"),
    BackboneSpec("EfficientNetV2B2", "efficientnet_v2", "EfficientNetV2B2", 260, 1408, "none",
                 _KA + "efficientnet_v2/efficientnetv2-b2_notop.h5"),
    BackboneSpec("EfficientNetV2B3", "efficientnet_v2", "EfficientNetV2B3", 300, 1536, "none",
                 _KA + "efficientnet_v2/efficientnetv2-b3_notop.h5"),
    BackboneSpec("EfficientNetV2S", "efficientnet_v2", "EfficientNetV2S", 384, 1280, "none",
                 _KA + "efficientnet_v2/efficientnetv2-s_notop.h5"),
    BackboneSpec("EfficientNetV2M", "efficientnet_v2", "EfficientNetV2M", 480, 1280, "none",
                 _KA + "efficientnet_v2/efficientnetv2-m_notop.h5"),
    BackboneSpec("EfficientNetV2L", "efficientnet_v2", "EfficientNetV2L", 480, 1280, "none",
                 _KA + "efficientnet_v2/efficientnetv2-l_notop.h5"),
    BackboneSpec("ConvNeXtTiny", "convnext", "ConvNeXtTiny", 224, 768, "none", _KA + "convnext/convnext_tiny_notop.h5"),
    BackboneSpec("ConvNeXtSmall", "convnext", "ConvNeXtSmall", 224, 768, "none",
                 _KA + "convnext/convnext_small_notop.h5"),
    BackboneSpec("ConvNeXtBase", "convnext", "ConvNeXtBase", 224, 1024, "none",
                 _KA + "convnext/convnext_base_notop.h5"),
    BackboneSpec("ConvNeXtLarge", "convnext", "ConvNeXtLarge", 224, 1536, "none",
                 _KA + "convnext/convnext_large_notop.h5"),
    BackboneSpec("ConvNeXtXLarge", "convnext", "ConvNeXtXLarge", 224, 2048, "none",
                 _KA + "convnext/convnext_xlarge_notop.h5"),
    BackboneSpec("MobileNet", "mobilenet", "MobileNet", 224, 1024, "tf",
                 _KA + "mobilenet/mobilenet_1_0_{size}_tf_no_top.h5", weights_sizes=(128, 160, 192, 224)),
    BackboneSpec("MobileNetV2", "mobilenet_v2", "MobileNetV2", 224, 1280, "tf",
                 _KA + "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5",
                 weights_sizes=(96, 128, 160, 192, 224)),
    BackboneSpec("MobileNetV3Small", "mobilenet_v3", "MobileNetV3Small", 224, 576, "none",
                 _KA + "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    BackboneSpec("MobileNetV3Large", "mobilenet_v3", "MobileNetV3Large", 224, 960, "none",
                 _KA + "mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
    BackboneSpec("NASNetMobile", "nasnet", "NASNetMobile", 224, 1056, "tf", _KA + "nasnet/NASNet-mobile-no-top.h5",
                 weights_file="nasnet_mobile_no_top.h5"),
    BackboneSpec("NASNetLarge", "nasnet", "NASNetLarge", 331, 4032, "tf", _KA + "nasnet/NASNet-large-no-top.h5",
                 weights_file="nasnet_large_no_top.h5"),
)

#: name -> BackboneSpec (the ``keras.applications`` rows), in a stable order.
BACKBONES: Dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}

#: name prefix -> (module, function) making a spec from the rest of the name (and a base folder).
PREFIXES: Dict[str, Tuple[str, str]] = {
    "hub:": ("catdog_features.features.hub", "hub_spec"),
    "keras:": ("catdog_features.features.keras_file", "keras_file_spec"),
}

_OTHER_FORMS = ("hub:PRESET (a keras-hub DINOv2 / CLIP / SigLIP preset, or hub:/path/to/preset_dir; "
                "`catdog-features backbones --hub` lists them) or keras:/path/to/model.keras?preprocess=MODE "
                "(MODE: caffe, tf, torch or none)")


def _is_spec(obj) -> bool:
    return all(hasattr(obj, attr) for attr in ("name", "build", "identity", "weights_identity", "resolve_size"))


def get_backbone(name, base_dir: Union[str, os.PathLike, None] = None):
    """Look up a backbone: a registry name (case-insensitive), ``hub:...`` or ``keras:...``.

    Parameters
    ----------
    name : str or spec
        A name of :data:`BACKBONES`, ``hub:PRESET``, ``keras:PATH?preprocess=MODE``, or a spec
        (returned as is).
    base_dir : path, optional
        Relative paths inside ``hub:`` / ``keras:`` names are taken relative to it (a config
        file's folder); default: the current directory.

    Raises
    ------
    ValueError
        For an unknown name, listing the valid ones.
    """
    if _is_spec(name):
        return name
    if isinstance(name, str):
        text = name.strip()
        if name in BACKBONES:
            return BACKBONES[name]
        for prefix, (module, function) in PREFIXES.items():
            if text.lower().startswith(prefix):
                make = getattr(importlib.import_module(module), function)
                return make(text[len(prefix):], base_dir=base_dir)
        for key, spec in BACKBONES.items():
            if key.lower() == text.lower():
                return spec
    raise ValueError(
        f"Unknown backbone. Received: backbone={name!r}. Expected one of: {', '.join(BACKBONES)}; "
        f"or {_OTHER_FORMS}."
    )


def parse_backbones(value, base_dir: Union[str, os.PathLike, None] = None) -> tuple:
    """Normalise ``"A,B"`` or a sequence of names into a tuple of canonical names (no duplicates)."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    names = []
    for item in value:
        spec = get_backbone(item.strip() if isinstance(item, str) else item, base_dir=base_dir)
        if spec.name not in names:
            names.append(spec.name)
    if not names:
        raise ValueError(f"Received: backbones={value!r}; expected at least one of: {', '.join(BACKBONES)}.")
    return tuple(names)


def backbone_table() -> list:
    """One dict per registry row: name, native size, minimum size, dim, preprocessing, ImageNet file."""
    return [
        {"name": s.name, "size": s.input_size, "min_size": s.min_size, "dim": s.dim, "preprocess": s.preprocess,
         "weights_file": s.imagenet_weights()[0]}
        for s in BACKBONES.values()
    ]
