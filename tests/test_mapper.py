"""Mapper: precision (mixed bfloat16 / float16 for the backbone only), jit_compile, the build protocol."""

import keras
import numpy as np
import pytest

from catdog_features.features.backbones import get_backbone
from catdog_features.features.mapper import PRECISIONS, Mapper, check_jit_compile, check_precision


@pytest.mark.parametrize("value, expected", [
    ("float32", "float32"), ("bfloat16", "bfloat16"), ("float16", "float16"), (" BFloat16 ", "bfloat16"),
    ("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16"),
])
def test_check_precision(value, expected):
    assert check_precision(value) == expected


@pytest.mark.parametrize("value", ["fp32", "float64", "", None, 16])
def test_check_precision_rejects(value):
    with pytest.raises(ValueError, match=r"Unknown precision. Received: precision=.*expected one of 'float32', "
                                         r"'bfloat16', 'float16'"):
        check_precision(value)


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), ("yes", True), ("0", False)])
def test_check_jit_compile(value, expected):
    assert check_jit_compile(value) is expected
    with pytest.raises(ValueError, match="Invalid jit_compile"):
        check_jit_compile("maybe")


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def float32_vectors(batch):
    return Mapper(get_backbone("ResNet50"), None, 32, 4)(batch)


def _cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_is_close_to_float32_and_leaves_no_global_policy(precision, batch, float32_vectors):
    mapper = Mapper(get_backbone("ResNet50"), None, 32, 4, precision=precision)
    assert mapper.precision == precision
    conv = next(layer for layer in mapper.model.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.dtype_policy.name == PRECISIONS[precision] and conv.kernel.dtype == "float32"
    vectors = mapper(batch)
    assert vectors.dtype == np.float32 and vectors.shape == float32_vectors.shape
    assert _cosine(vectors, float32_vectors).min() >= 0.999
    assert not np.array_equal(vectors, float32_vectors)  # it did compute in lower precision
    # the heads built afterwards in the same process are float32
    assert keras.config.dtype_policy().name == "float32"
    assert keras.layers.Dense(1).dtype_policy.name == "float32"


def test_jit_compile_gives_the_same_vectors(batch, float32_vectors):
    vectors = Mapper(get_backbone("ResNet50"), None, 32, 4, jit_compile=True)(batch)
    np.testing.assert_allclose(vectors, float32_vectors, rtol=1e-4, atol=1e-4 * np.abs(float32_vectors).max())


def test_float32_build_keeps_the_two_argument_protocol(batch):
    """Specs (and test doubles) whose build takes (weights, image_size) only still work in float32."""
    inner = get_backbone("VGG16")

    class TwoArgumentSpec:
        name, dim, input_size, min_size = "two-arg", 512, 32, 32
        preprocess_input = staticmethod(inner.preprocess_input)

        def build(self, weights, image_size):
            return inner.build(weights, image_size)

    vectors = Mapper(TwoArgumentSpec(), None, 32, 4)(batch[:2])
    assert vectors.shape == (2, 512)
    with pytest.raises(TypeError):
        Mapper(TwoArgumentSpec(), None, 32, 4, precision="bfloat16")


def test_batches_are_padded_and_bounded(batch, float32_vectors):
    mapper = Mapper(get_backbone("ResNet50"), None, 32, 4)
    assert np.array_equal(mapper(batch[:1]), float32_vectors[:1])  # a row does not depend on its batch
    assert mapper(batch[:0]).shape == (0, 2048)
    with pytest.raises(ValueError, match="expected at most batch_size=4"):
        mapper(np.concatenate([batch, batch]))
