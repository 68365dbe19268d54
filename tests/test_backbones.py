"""Backbone registry: parity with plain keras.applications for every backbone, names, weights."""

import importlib
import socket

import keras
import numpy as np
import pytest

from catdog_features.features import backbones as bb
from catdog_features.features.backbones import (
    BACKBONES,
    RANDOM_INIT_SEED,
    BackboneSpec,
    WeightsDownloadError,
    get_backbone,
    parse_backbones,
    weights_identity,
)
from catdog_features.features.extract import extract_features
from catdog_features.features.mapper import DOWNLOAD_SOCKET_TIMEOUT
from catdog_features.features.reader import decode_image, resize_image
from extract_helpers import make_images

# Backbones whose reference model is built a second time, independently, from the same seed
# (checks spec.build itself, which is the same code for every backbone). For the others a
# build costs seconds on a 2-core machine, so the reference model is built once with the
# plain constructor and our pipeline runs *that* model: this still checks the constructor,
# the backbone's own preprocessing and the whole extraction path (resize, tf.function,
# padding, cache) against keras.applications.
INDEPENDENT = {"VGG16", "VGG19", "ResNet50", "MobileNetV2"}
# 400+ layers: building and tracing them takes 10-20 s each here; still run by default.
HEAVY = {"ResNet101", "ResNet152", "InceptionResNetV2", "DenseNet169", "DenseNet201", "EfficientNetB3"}


@pytest.fixture(scope="module")
def parity_images(tmp_path_factory):
    """3 images: one padded batch of 4."""
    return make_images(tmp_path_factory.mktemp("parity"), n_per_class=2, size=40)


def _reference_model(spec, size):
    module = importlib.import_module(f"keras.applications.{spec.module}")
    ctor = getattr(keras.applications, spec.constructor)
    assert ctor is getattr(module, spec.constructor)  # spec.build uses this very constructor
    keras.utils.set_random_seed(RANDOM_INIT_SEED)
    model = ctor(include_top=False, pooling="avg", weights=None, input_shape=(size, size, 3))
    return model, module


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in BACKBONES])
def test_parity_with_plain_keras_applications(name, parity_images, tmp_path, monkeypatch):
    spec = BACKBONES[name]
    size = max(spec.min_size, 32)
    paths = sorted(str(p) for p in parity_images.iterdir())[:3]
    reference, module = _reference_model(spec, size)
    if name not in INDEPENDENT:
        monkeypatch.setattr(BackboneSpec, "build", lambda self, weights, image_size: reference)
    fs = extract_features(paths, backbones=[name], cache_dir=tmp_path, weights=None, image_size=size,
                          batch_size=4, progress=False)
    assert fs[name].shape == (3, spec.dim) == (3, reference.output_shape[-1])
    x = np.stack([resize_image(decode_image(p), size) for p in fs.paths])
    expected = np.asarray(reference(module.preprocess_input(x.copy()), training=False))
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(fs[name], expected, rtol=1e-4, atol=1e-4 * scale)


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("query, expected", [
    ("ResNet50", "ResNet50"), ("resnet50", "ResNet50"), (" XCEPTION ", "Xception"),
    ("inceptionresnetv2", "InceptionResNetV2"), (BACKBONES["VGG16"], "VGG16"),
])
def test_lookup_is_case_insensitive(query, expected):
    assert get_backbone(query).name == expected


@pytest.mark.parametrize("query", ["ResNet51", "", "resnet 50", None, 3])
def test_unknown_backbone_error_lists_valid_names(query):
    with pytest.raises(ValueError, match=r"Unknown backbone. Received: backbone=.*Expected one of: ") as err:
        get_backbone(query)
    assert all(name in str(err.value) for name in BACKBONES)


@pytest.mark.parametrize("value, expected", [
    ("ResNet50,xception", ("ResNet50", "Xception")),
    (" vgg16 , VGG16 ,", ("VGG16",)),
    (["InceptionV3", "resnet50"], ("InceptionV3", "ResNet50")),
    ((BACKBONES["MobileNetV2"],), ("MobileNetV2",)),
])
def test_parse_backbones(value, expected):
    assert parse_backbones(value) == expected


@pytest.mark.parametrize("value", ["", ",", []])
def test_parse_backbones_needs_one(value):
    with pytest.raises(ValueError, match="expected at least one"):
        parse_backbones(value)


def test_registry_has_the_required_backbones():
    required = {"ResNet50", "VGG16", "VGG19", "InceptionV3", "Xception", "InceptionResNetV2", "DenseNet201",
                "EfficientNetB0", "MobileNetV2"}
    assert required <= set(BACKBONES)
    for spec in BACKBONES.values():
        assert spec.pooling == "avg" and spec.min_size <= spec.input_size


# --------------------------------------------------------------------------- weights


def test_weights_file_gives_the_same_vectors_as_the_model_it_came_from(parity_images, tmp_path):
    path = tmp_path / "vgg16_random.weights.h5"
    get_backbone("VGG16").build(None, 32).save_weights(str(path))
    kw = dict(backbones=["VGG16"], cache_dir=tmp_path / "c", image_size=32, batch_size=4, progress=False)
    original = extract_features(parity_images, weights=None, **kw)
    from_file = extract_features(parity_images, weights=str(path), **kw)
    assert np.array_equal(original["VGG16"], from_file["VGG16"])
    assert original.cache_files["VGG16"] != from_file.cache_files["VGG16"]  # other weights identity
    with pytest.raises(FileNotFoundError, match="Weights file not found"):
        extract_features(parity_images, weights=str(tmp_path / "nope.h5"), **kw)


def test_weights_identity_follows_file_content(tmp_path):
    path = tmp_path / "w.h5"
    path.write_bytes(b"a")
    first = weights_identity(str(path))
    assert weights_identity(path) == first and first.startswith("file:sha256=")
    path.write_bytes(b"b")
    assert weights_identity(str(path)) != first
    assert weights_identity(None) == f"random-init:seed={RANDOM_INIT_SEED}"
    assert weights_identity("imagenet") == "imagenet"


def test_imagenet_download_failure_is_a_plain_error(parity_images, tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    seen = {}

    def offline(*args, **kwargs):
        seen["timeout"] = socket.getdefaulttimeout()
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(WeightsDownloadError) as err:
        extract_features(parity_images, backbones=["VGG16"], cache_dir=tmp_path, weights="imagenet", image_size=32,
                         progress=False)
    message = str(err.value)
    assert message.startswith("Could not download the ImageNet weights for VGG16")
    assert "weights='/path/to/file.h5' (CLI: --weights PATH)" in message
    assert "weights=None (CLI: --weights none)" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained Keras traceback
    assert seen["timeout"] == DOWNLOAD_SOCKET_TIMEOUT and socket.getdefaulttimeout() == before
    assert bb.weights_kind("ImageNet") == "imagenet"
