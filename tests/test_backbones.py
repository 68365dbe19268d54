"""Backbone registry: parity with plain keras.applications for every backbone, names, weights."""

import importlib
import socket
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

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
# Run by default: the reference recipe's backbones and one of each family issue 12 added. The
# others (seconds to a minute each to build and trace here) are marked slow; CI runs them.
FAST = {"VGG16", "VGG19", "ResNet50", "ResNet50V2", "InceptionV3", "Xception", "DenseNet121", "EfficientNetB0",
        "MobileNetV2", "ConvNeXtTiny", "EfficientNetV2B0", "MobileNetV3Small", "MobileNet"}


@pytest.fixture(scope="module")
def parity_images(tmp_path_factory):
    """3 images: one padded batch of 4."""
    return make_images(tmp_path_factory.mktemp("parity"), n_per_class=2, size=40)


def _reference_model(spec, size, monkeypatch):
    """The plain constructor's model, random weights, and the ImageNet file it asked Keras for.

    Built with ``weights="imagenet"`` while Keras' downloader only records what it is asked
    for and ``load_weights`` does nothing: one build checks both the row's constructor and its
    weights file name and URL.
    """
    from keras.src.utils import file_utils

    module = importlib.import_module(f"keras.applications.{spec.module}")
    ctor = getattr(keras.applications, spec.constructor)
    requested = []
    with monkeypatch.context() as patch:
        patch.setattr(file_utils, "get_file", lambda fname, origin, **kw: requested.append((fname, origin)) or "x")
        patch.setattr(keras.Model, "load_weights", lambda self, *a, **kw: None)
        keras.utils.set_random_seed(RANDOM_INIT_SEED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MobileNets: "weights for 224 px will be loaded"
            model = ctor(include_top=False, pooling="avg", weights="imagenet", input_shape=(size, size, 3))
    return model, module, requested


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in BACKBONES])
def test_parity_with_plain_keras_applications(name, parity_images, tmp_path, monkeypatch):
    spec = BACKBONES[name]
    size = max(spec.min_size, 32)
    paths = sorted(str(p) for p in parity_images.iterdir())[:3]
    reference, module, requested = _reference_model(spec, size, monkeypatch)
    assert requested == [spec.imagenet_weights(size)]  # the file the offline error names
    if name not in INDEPENDENT:
        monkeypatch.setattr(BackboneSpec, "build", lambda self, weights, image_size: reference)
    fs = extract_features(paths, backbones=[name], cache_dir=tmp_path, weights=None, image_size=size,
                          batch_size=4, progress=False)
    assert fs[name].shape == (3, spec.dim) == (3, reference.output_shape[-1])
    x = np.stack([resize_image(decode_image(p), size) for p in fs.paths])
    # The reference runs as the mapper runs it: one graph (tf.function) on the padded batch shape
    # (3 images + 1 zero row). Deep random-init nets are chaotic: eager and graph execution (whose
    # Grappler fuses conv + batch norm + activation) differ by 88% of the vector scale on
    # EfficientNetV2L, and batch 3 vs batch 4 by 70%, in plain Keras too.
    padded = np.concatenate([x, np.zeros((1,) + x.shape[1:], np.float32)])
    graph = tf.function(lambda t: reference(module.preprocess_input(t), training=False), autograph=False)
    expected = np.asarray(graph(tf.constant(padded)))[:3]
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(fs[name], expected, rtol=1e-4, atol=1e-4 * scale)


def test_every_keras_application_is_in_the_registry():
    constructors = {n for n in dir(keras.applications) if n[:1].isupper() and callable(getattr(keras.applications, n))}
    assert constructors == {spec.constructor for spec in BACKBONES.values()}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_preprocess_field_says_what_preprocess_input_does(name):
    spec = BACKBONES[name]
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype(np.float32)
    got = np.asarray(spec.preprocess_input(x.copy()))
    if spec.preprocess == "none":
        expected = x  # the model rescales inside: it wants RGB 0..255
    else:
        expected = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=spec.preprocess)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("name, size, file_name", [
    ("MobileNet", 160, "mobilenet_1_0_160_tf_no_top.h5"),
    ("MobileNet", 100, "mobilenet_1_0_224_tf_no_top.h5"),  # no file for 100 px: Keras loads the 224 one
    ("MobileNetV2", 96, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"),
    ("NASNetMobile", 224, "nasnet_mobile_no_top.h5"),  # stored under another name than the URL's
])
def test_imagenet_file_name_follows_keras_rules(name, size, file_name):
    assert BACKBONES[name].imagenet_weights(size)[0] == file_name


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
    assert "hub:PRESET" in str(err.value) and "keras:/path/to/model.keras?preprocess=MODE" in str(err.value)


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
    # issue 11: the exact file Keras wants, where it goes, and the per-backbone CLI form
    file_name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert f"download {file_name} (from https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" in message
    assert "copy it into ~/.keras/models/" in message
    assert f"--weights VGG16=/path/to/{file_name} (several backbones: NAME=PATH,NAME=PATH,...)" in message
    assert f"weights={{'VGG16': '/path/to/{file_name}'}}" in message
    assert "weights=None (CLI: --weights none)" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained Keras traceback
    assert seen["timeout"] == DOWNLOAD_SOCKET_TIMEOUT and socket.getdefaulttimeout() == before
    assert bb.weights_kind("ImageNet") == "imagenet"


@pytest.mark.parametrize("weights", [None, "imagenet", "file"])
def test_builds_leave_global_random_state_alone_and_random_init_is_reproducible(weights, tmp_path, monkeypatch):
    """Issue 11 #5: a build used to call keras.utils.set_random_seed, changing the heads' draws."""
    import random

    import tensorflow as tf

    spec = get_backbone("VGG16")
    if weights == "file":
        weights = str(tmp_path / "vgg16.weights.h5")
        spec.build(None, 32).save_weights(weights)
    if weights == "imagenet":  # offline here: the weights "download" is the random init's own file
        from keras.src.utils import file_utils

        saved = str(tmp_path / "imagenet.weights.h5")
        spec.build(None, 32).save_weights(saved)
        monkeypatch.setattr(file_utils, "get_file", lambda *a, **kw: saved)

    def draws():
        return random.random(), float(np.random.rand()), float(tf.random.uniform(())), float(keras.random.uniform(()))

    keras.utils.set_random_seed(7)
    expected = draws()
    keras.utils.set_random_seed(7)
    first = spec.build(weights, 32)
    assert draws() == expected
    second = spec.build(weights, 32)
    assert all(np.array_equal(a, b) for a, b in zip(first.get_weights(), second.get_weights()))


def test_backbone_table_lists_every_row():
    table = bb.backbone_table()
    assert [row["name"] for row in table] == list(BACKBONES)
    assert table[0] == {"name": "VGG16", "size": 224, "min_size": 32, "dim": 512, "preprocess": "caffe",
                        "weights_file": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"}


def test_backbones_command_lists_names_without_tensorflow():
    from extract_helpers import run_python

    result = run_python("""
        import sys
        from catdog_features.cli import main
        from catdog_features.commands import backbones
        import argparse
        p = argparse.ArgumentParser(); backbones.add_arguments(p)
        backbones.run(p.parse_args(["--hub"]))
        assert "tensorflow" not in sys.modules
    """)
    assert result.returncode == 0, result.stderr
    assert "ConvNeXtTiny" in result.stdout and "convnext_tiny_notop.h5" in result.stdout
    assert "hub:dinov2_small" in result.stdout and "kaggle://keras/dinov2/keras/dinov2_small/1" in result.stdout
