"""keras:PATH?preprocess=MODE backbones: any .keras file, pooled by its output rank, safe loading."""

import random

import keras
import numpy as np
import pytest

from catdog_features.features.backbones import get_backbone, parse_backbones, parse_weights
from catdog_features.features.keras_file import KerasFileSpec
from catdog_features.features.mapper import Mapper


def _conv_trunk(inputs, channels=6):
    x = keras.layers.Conv2D(channels, 3, strides=2, activation="relu")(inputs)
    return keras.layers.BatchNormalization()(x)


def _save(model, path):
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Tiny models: (N, d) output, (N, H, W, C) output, free input size, unpoolable (N, T, C)."""
    root = tmp_path_factory.mktemp("keras_models")
    keras.utils.set_random_seed(3)
    inp = keras.Input((24, 24, 3))
    vector = keras.Model(inp, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(_conv_trunk(inp))))
    inp = keras.Input((24, 24, 3))
    fmap = keras.Model(inp, _conv_trunk(inp, 7))
    inp = keras.Input((None, None, 3))
    free = keras.Model(inp, _conv_trunk(inp, 4))
    inp = keras.Input((24, 24, 3))
    tokens = keras.Model(inp, keras.layers.Reshape((121, 6))(_conv_trunk(inp)))
    return {name: _save(m, root / f"{name}.keras") for name, m in
            [("vector", vector), ("fmap", fmap), ("free", free), ("tokens", tokens)]}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(3, 24, 24, 3)).astype(np.float32)


def _reference(path, mode, x):
    model = keras.saving.load_model(str(path), compile=False)
    if mode != "none":
        x = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=mode)
    out = np.asarray(model(x, training=False))
    return out.mean(axis=(1, 2)) if out.ndim == 4 else out


@pytest.mark.parametrize("which, mode, dim, pooling", [
    ("vector", "tf", 5, "none"),
    ("fmap", "caffe", 7, "avg"),
    ("fmap", "torch", 7, "avg"),
    ("vector", "none", 5, "none"),
])
def test_output_rank_decides_pooling_and_vectors_match_the_model(model_files, images, which, mode, dim, pooling):
    spec = get_backbone(f"keras:{model_files[which]}?preprocess={mode}")
    assert isinstance(spec, KerasFileSpec)
    assert (spec.dim, spec.pooling, spec.input_size, spec.resolve_size(None)) == (dim, pooling, 24, 24)
    mapper = Mapper(spec, "imagenet", 24, 4)
    np.testing.assert_allclose(mapper(images), _reference(model_files[which], mode, images), rtol=1e-5, atol=1e-5)


def test_free_input_size_needs_an_image_size(model_files, images):
    spec = get_backbone(f"keras:{model_files['free']}?preprocess=tf")
    assert spec.input_size is None and spec.dim == 4
    with pytest.raises(ValueError, match="takes images of any size; expected an explicit image_size"):
        spec.resolve_size(None)
    mapper = Mapper(spec, "imagenet", 24, 4)
    np.testing.assert_allclose(mapper(images), _reference(model_files["free"], "tf", images), rtol=1e-5, atol=1e-5)


def test_fixed_input_size_is_enforced(model_files):
    spec = get_backbone(f"keras:{model_files['vector']}?preprocess=tf")
    with pytest.raises(ValueError, match="expected its fixed input size 24"):
        spec.resolve_size(32)


def test_fingerprint_follows_the_file_content(model_files, tmp_path):
    path = tmp_path / "m.keras"
    path.write_bytes(model_files["vector"].read_bytes())
    first = get_backbone(f"keras:{path}?preprocess=tf")
    other_mode = get_backbone(f"keras:{path}?preprocess=caffe")
    assert first.identity()["sha256"] == other_mode.identity()["sha256"]
    assert first.identity() != other_mode.identity()  # preprocessing is part of it
    model = keras.saving.load_model(str(path))
    model.set_weights([w + 1.0 for w in model.get_weights()])
    model.save(str(path))
    changed = get_backbone(f"keras:{path}?preprocess=tf")
    assert changed.identity()["sha256"] != first.identity()["sha256"]
    assert changed.weights_identity("imagenet") != first.weights_identity("imagenet")
    assert first.weights_identity(None) == changed.weights_identity(None)  # random init: the architecture's


@pytest.mark.parametrize("name, error, match", [
    ("keras:{missing}?preprocess=tf", FileNotFoundError, "Model file not found"),
    ("keras:{vector}", ValueError, r"expected keras:/path/to/model.keras\?preprocess=MODE"),
    ("keras:{vector}?preprocess=inception", ValueError, "Unknown preprocessing. Received: preprocess='inception'"),
])
def test_clear_errors_for_bad_names(model_files, tmp_path, name, error, match):
    with pytest.raises(error, match=match):
        get_backbone(name.format(missing=tmp_path / "nope.keras", vector=model_files["vector"]))


def test_output_that_cannot_be_pooled_is_refused(model_files):
    spec = get_backbone(f"keras:{model_files['tokens']}?preprocess=tf")
    with pytest.raises(ValueError, match=r"Cannot pool the output of model .*shape \(None, 121, 6\)"):
        spec.dim


def test_legacy_h5_and_unsafe_files_are_refused(model_files, tmp_path):
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(ValueError, match="expected a Keras 3 .keras file"):
        get_backbone(f"keras:{h5}?preprocess=tf")
    inp = keras.Input((24, 24, 3))
    unsafe = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0)(inp))
    path = _save(unsafe, tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="Could not load the Keras model file .* with safe_mode=True"):
        get_backbone(f"keras:{path}?preprocess=none").dim


def test_precision_random_init_and_global_state(model_files, images):
    spec = get_backbone(f"keras:{model_files['fmap']}?preprocess=tf")
    full = Mapper(spec, "imagenet", 24, 4)(images)
    half = Mapper(spec, "imagenet", 24, 4, precision="bfloat16")(images)
    assert half.dtype == np.float32 and keras.config.dtype_policy().name == "float32"
    cos = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cos.min() >= 0.999
    keras.utils.set_random_seed(11)
    expected = (random.random(), np.random.rand())
    keras.utils.set_random_seed(11)
    a = spec.build(None, 24).predict(images, verbose=0)
    assert (random.random(), np.random.rand()) == expected
    b = spec.build(None, 24).predict(images, verbose=0)
    assert np.array_equal(a, b) and not np.allclose(a, full)


def test_names_and_weights_tables(model_files, tmp_path, monkeypatch):
    monkeypatch.chdir(model_files["vector"].parent)
    spec = get_backbone("keras:vector.keras?preprocess=tf", base_dir=model_files["vector"].parent)
    assert spec.name == f"keras:{model_files['vector']}?preprocess=tf"
    assert parse_backbones([spec.name, "ResNet50", spec.name]) == (spec.name, "ResNet50")
    # NAME=W splits at the last "=", so names holding one work on the command line
    assert parse_weights(f"{spec.name}=none,ResNet50=imagenet") == {spec.name: None, "ResNet50": "imagenet"}


def test_own_model_through_extract_features_and_its_key_follows_the_file(model_files, tmp_path):
    from catdog_features.features.extract import extract_with_report
    from catdog_features.synthetic import make_dataset

    data = make_dataset(tmp_path / "data", n_per_class=3, n_test=0, size=32) / "train"
    path = tmp_path / "mine.keras"
    path.write_bytes(model_files["vector"].read_bytes())
    name = f"keras:{path}?preprocess=tf"
    kw = dict(backbones=[name], cache_dir=tmp_path / "store", weights="imagenet", batch_size=4, progress=False)
    fs, report = extract_with_report(data, **kw)
    spec = get_backbone(name)
    assert fs[spec.name].shape == (6, 5) and report.backbones[spec.name].computed == 6
    assert extract_with_report(data, **kw)[1].backbones[spec.name].computed == 0  # served by the store
    keras.utils.set_random_seed(4)
    inp = keras.Input((24, 24, 3))
    other = keras.Model(inp, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(_conv_trunk(inp))))
    _save(other, path)  # the same name, another model: a new extractor
    assert extract_with_report(data, **kw)[1].backbones[spec.name].computed == 6
