"""hub: backbones (keras-hub DINOv2 / CLIP / SigLIP): tiny random-init presets, parity with keras-hub."""

import json
import random

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")
import keras  # noqa: E402

from catdog_features.features.backbones import WeightsDownloadError, get_backbone, parse_weights  # noqa: E402
from catdog_features.features.hub import FAMILIES, HUB_PRESETS, HubSpec  # noqa: E402
from catdog_features.features.mapper import Mapper  # noqa: E402

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
SIGLIP = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
REGISTERS = 2


def _converter(cls, size, mean_std, **kw):
    mean, std = mean_std  # as keras-hub's checkpoint conversion scripts configure the presets
    return cls(image_size=(size, size), scale=[1 / 255 / s for s in std], offset=[-m / s for m, s in zip(mean, std)],
               interpolation="bicubic", **kw)


def _tiny(family):
    """A tiny random-init backbone and its converter, as keras-hub builds them (no download)."""
    vision = dict(hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64)
    if family == "dinov2":
        model = keras_hub.models.DINOV2Backbone(patch_size=14, num_register_tokens=REGISTERS, image_shape=(56, 56, 3),
                                                position_embedding_shape=(518, 518, 3), **vision)
        return model, _converter(keras_hub.layers.DINOV2ImageConverter, 56, IMAGENET)
    text = dict(vocabulary_size=64, num_layers=1, num_heads=2, max_sequence_length=8)
    if family == "clip":
        model = keras_hub.models.CLIPBackbone(
            keras_hub.models.CLIPVisionEncoder(patch_size=16, image_shape=(64, 64, 3), **vision),
            keras_hub.models.CLIPTextEncoder(embedding_dim=16, hidden_dim=16, intermediate_dim=32, **text),
            projection_dim=24)
        return model, _converter(keras_hub.layers.CLIPImageConverter, 64, CLIP)
    model = keras_hub.models.SigLIPBackbone(
        keras_hub.models.SigLIPVisionEncoder(patch_size=16, image_shape=(64, 64, 3), **vision),
        keras_hub.models.SigLIPTextEncoder(embedding_dim=32, hidden_dim=32, intermediate_dim=64, **text))
    return model, _converter(keras_hub.layers.SigLIPImageConverter, 64, SIGLIP, antialias=True)


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """family -> (local preset folder, keras-hub backbone, converter)."""
    root = tmp_path_factory.mktemp("hub_presets")
    keras.utils.set_random_seed(0)
    out = {}
    for family in FAMILIES:
        model, converter = _tiny(family)
        folder = root / family
        model.save_to_preset(str(folder))
        converter.save_to_preset(str(folder))
        out[family] = (folder, model, converter)
    return out


def _keras_hub_vectors(family, model, converter, images):
    """keras-hub's own forward pass and pooled output of each family."""
    x = keras.ops.convert_to_numpy(converter(images))
    if family == "dinov2":  # keras-hub has no pooled DINOv2 output: the linear-probe recipe on its tokens
        tokens = model.predict({"images": x}, verbose=0)
        return np.concatenate([tokens[:, 0], tokens[:, 1 + REGISTERS:].mean(axis=1)], axis=-1)
    if family == "clip":
        return keras.ops.convert_to_numpy(model.vision_pooler(model.vision_encoder.predict({"images": x}, verbose=0)))
    return keras.ops.convert_to_numpy(model.get_vision_embeddings(x))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_parity_with_keras_hub_forward_pass(presets, family):
    folder, model, converter = presets[family]
    spec = get_backbone(f"hub:{folder}")
    assert isinstance(spec, HubSpec) and spec.family == family
    size = spec.resolve_size(None)
    images = np.random.default_rng(1).integers(0, 256, size=(3, size, size, 3)).astype(np.float32)
    ours = Mapper(spec, "imagenet", size, 4)(images)
    expected = _keras_hub_vectors(family, model, converter, images)
    assert ours.shape == (3, spec.dim) == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_dinov2_at_another_size_interpolates_like_keras_hub(presets):
    folder, _, converter = presets["dinov2"]
    spec = get_backbone(f"hub:{folder}")
    assert spec.resolve_size(42) == 42
    with pytest.raises(ValueError, match="expected a multiple of the patch size 14"):
        spec.resolve_size(50)
    images = np.random.default_rng(2).integers(0, 256, size=(2, 42, 42, 3)).astype(np.float32)
    resized = keras_hub.models.DINOV2Backbone.from_preset(str(folder), image_shape=(42, 42, 3))
    converter = type(converter).from_config({**converter.get_config(), "image_size": (42, 42)})
    expected = _keras_hub_vectors("dinov2", resized, converter, images)
    np.testing.assert_allclose(Mapper(spec, "imagenet", 42, 2)(images), expected, rtol=1e-5, atol=1e-5)


def test_clip_and_siglip_sizes_are_fixed(presets):
    spec = get_backbone(f"hub:{presets['clip'][0]}")
    with pytest.raises(ValueError, match="expected its fixed size 64"):
        spec.resolve_size(96)


@pytest.mark.parametrize("family", ["dinov2", "siglip"])
def test_bfloat16_close_random_init_reproducible_and_global_state_kept(presets, family):
    spec = get_backbone(f"hub:{presets[family][0]}")
    size = spec.input_size
    images = np.random.default_rng(3).integers(0, 256, size=(2, size, size, 3)).astype(np.float32)
    full = Mapper(spec, "imagenet", size, 2)(images)
    half = Mapper(spec, "imagenet", size, 2, precision="bfloat16")(images)
    assert half.dtype == np.float32 and keras.config.dtype_policy().name == "float32"
    cos = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cos.min() >= 0.999
    keras.utils.set_random_seed(5)
    expected = (random.random(), np.random.rand())
    keras.utils.set_random_seed(5)
    a = spec.build(None).predict(images, verbose=0)
    assert (random.random(), np.random.rand()) == expected
    assert np.array_equal(a, spec.build(None).predict(images, verbose=0)) and not np.allclose(a, full)


def test_registry_matches_keras_hub_presets():
    listed = {}
    for cls in (keras_hub.models.DINOV2Backbone, keras_hub.models.CLIPBackbone, keras_hub.models.SigLIPBackbone):
        listed.update({name: meta["kaggle_handle"] for name, meta in cls.presets.items()})
    assert {name: p.handle for name, p in HUB_PRESETS.items()} == listed
    spec = get_backbone("hub:dinov2_small")
    assert (spec.dim, spec.input_size, spec.pooling) == (768, 224, "cls+mean")
    assert spec.weights_identity("imagenet") == "keras-hub:kaggle://keras/dinov2/keras/dinov2_small/1"
    assert get_backbone("hub:clip_vit_large_patch14_336").input_size == 336


def test_offline_preset_download_says_how_to_use_a_local_folder(monkeypatch):
    import kagglehub
    import requests

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'api.kaggle.com' ([Errno -2] Name or service "
                                                  "not known)")

    monkeypatch.setattr(kagglehub, "model_download", offline)
    with pytest.raises(WeightsDownloadError) as err:
        get_backbone("hub:dinov2_small").build("imagenet")
    message = str(err.value)
    assert message.startswith("Could not download the keras-hub preset 'dinov2_small' for hub:dinov2_small "
                              "(ConnectionError")
    assert "kagglehub.model_download('keras/dinov2/keras/dinov2_small/1')" in message
    assert "--weights hub:dinov2_small=/path/to/dinov2_small" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_local_folder_as_weights_of_a_preset_name(presets, tmp_path):
    folder = presets["dinov2"][0]
    spec = get_backbone("hub:dinov2_small")
    with pytest.raises(ValueError, match="holds a dinov2 model with 64-d pooled vectors; expected the architecture"):
        spec.weights_identity(str(folder))
    with pytest.raises(FileNotFoundError, match="Preset folder not found"):
        spec.weights_identity(str(tmp_path / "nowhere"))
    assert parse_weights(f"hub:dinov2_small={folder}") == {"hub:dinov2_small": str(folder)}


def test_preset_folder_identity_follows_its_content(presets, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(presets["siglip"][0], copy)
    spec = get_backbone(f"hub:{copy}")
    before = spec.weights_identity("imagenet")
    assert before.startswith("preset-dir:sha256=") and spec.weights_identity(None) != before
    meta = json.loads((copy / "metadata.json").read_text())
    (copy / "metadata.json").write_text(json.dumps({**meta, "date_saved": "another day"}))
    assert spec.weights_identity("imagenet") == before  # the date in metadata.json does not change vectors
    config = json.loads((copy / "image_converter.json").read_text())
    config["config"]["offset"] = [0.0, 0.0, 0.0]
    (copy / "image_converter.json").write_text(json.dumps(config))
    assert spec.weights_identity("imagenet") != before


@pytest.mark.parametrize("name, error, match", [
    ("hub:dinov3_small", ValueError, "Unknown hub preset. Received: backbone='hub:dinov3_small'"),
    ("hub:./no/such/folder", FileNotFoundError, "Preset folder not found"),
])
def test_unknown_preset_and_missing_folder(name, error, match):
    with pytest.raises(error, match=match):
        get_backbone(name)
