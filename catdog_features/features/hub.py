"""keras-hub image encoders as frozen backbones: ``hub:PRESET`` (DINOv2, CLIP, SigLIP).

Needs the ``[hub]`` extra (``pip install 'catdog-features[hub]'``: keras-hub). A name is

* ``hub:PRESET``: a keras-hub preset of a supported family (:data:`HUB_PRESETS`, e.g.
  ``hub:dinov2_small``, ``hub:clip_vit_base_patch16``, ``hub:siglip_base_patch16_224``), pinned
  to one Kaggle version; or
* ``hub:/path/to/preset_dir``: a local preset folder (what ``save_to_preset`` writes:
  ``config.json``, ``model.weights.h5``, ``image_converter.json``) of a supported family.

Weights: ``"imagenet"`` (the default word for "pretrained") loads the preset's weights
(downloaded once into kagglehub's cache; a local folder's own); ``None`` initialises the
preset's architecture randomly (reproducibly; the config still comes from the preset); a path
names a local preset folder to load instead (the offline route: see :func:`hub_remedy`).

Pooled output per family, as its linear-probe practice does (:data:`FAMILIES`): DINOv2
concatenates the class token and the mean of the patch tokens (register tokens left out), as
the DINOv2 linear classifiers do, so ``dim = 2 x hidden``; CLIP takes the class token after
the final layer norm, before the projection (the CLIP paper's linear-probe features); SigLIP
takes its attention-pooling (MAP) head's output. Preprocessing is the preset's own
``ImageConverter`` (scale and offset; the image arrives already resized to the model size),
applied inside the built model in float32.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from catdog_features._checks import check_int
from catdog_features.features._build import PRECISIONS, RANDOM_INIT_SEED, check_precision, seeded_build, sha256_file
from catdog_features.features.weights import WeightsDownloadError, weights_kind


@dataclass(frozen=True)
class HubFamily:
    """How one keras-hub model family becomes a pooled vector.

    Attributes
    ----------
    name : str
        ``"dinov2"``, ``"clip"`` or ``"siglip"``.
    classes : tuple of str
        keras-hub class names a preset's ``config.json`` may register for this family.
    pooling : str
        ``"cls+mean"`` (class token and mean of the patch tokens), ``"cls"`` (class token) or
        ``"map"`` (the encoder's own attention-pooled output).
    dim_factor : int
        Pooled length / hidden size.
    patch_size : int
        0 when the input size is fixed (the position embeddings are not interpolated); else
        the patch size, and any multiple of it is accepted.
    """

    name: str
    classes: Tuple[str, ...]
    pooling: str
    dim_factor: int = 1
    patch_size: int = 0


FAMILIES: Dict[str, HubFamily] = {
    "dinov2": HubFamily("dinov2", ("DINOV2Backbone",), "cls+mean", dim_factor=2, patch_size=14),
    "clip": HubFamily("clip", ("CLIPBackbone", "CLIPVisionEncoder"), "cls"),
    "siglip": HubFamily("siglip", ("SigLIPBackbone", "SigLIPVisionEncoder"), "map"),
}


@dataclass(frozen=True)
class HubPreset:
    """A keras-hub preset: family, hidden size, native input size, the pinned Kaggle handle."""

    preset: str
    family: str
    hidden_dim: int
    input_size: int
    handle: str


def _presets(family: str, model: str, rows) -> Dict[str, HubPreset]:
    return {p: HubPreset(p, family, hidden, size, f"kaggle://keras/{model}/keras/{p}/{version}")
            for p, hidden, size, version in rows}


#: preset -> HubPreset. Handles as keras-hub 0.32 lists them (a test compares); hidden sizes
#: and native sizes from the architectures (checked against the model when it is built).
HUB_PRESETS: Dict[str, HubPreset] = {
    **_presets("dinov2", "dinov2", [
        ("dinov2_small", 384, 224, 1), ("dinov2_base", 768, 224, 1), ("dinov2_large", 1024, 224, 1),
        ("dinov2_giant", 1536, 224, 1), ("dinov2_with_registers_small", 384, 224, 1),
        ("dinov2_with_registers_base", 768, 224, 1), ("dinov2_with_registers_large", 1024, 224, 1),
        ("dinov2_with_registers_giant", 1536, 224, 1),
    ]),
    **_presets("clip", "clip", [
        ("clip_vit_base_patch16", 768, 224, 3), ("clip_vit_base_patch32", 768, 224, 3),
        ("clip_vit_large_patch14", 1024, 224, 3), ("clip_vit_large_patch14_336", 1024, 336, 3),
        ("clip_vit_b_32_laion2b_s34b_b79k", 768, 224, 3), ("clip_vit_h_14_laion2b_s32b_b79k", 1280, 224, 3),
        ("clip_vit_g_14_laion2b_s12b_b42k", 1408, 224, 3), ("clip_vit_bigg_14_laion2b_39b_b160k", 1664, 224, 3),
    ]),
    **_presets("siglip", "siglip", [
        ("siglip_base_patch16_224", 768, 224, 1), ("siglip_base_patch16_256", 768, 256, 1),
        ("siglip_base_patch16_384", 768, 384, 1), ("siglip_base_patch16_512", 768, 512, 1),
        ("siglip_large_patch16_256", 1024, 256, 1), ("siglip_large_patch16_384", 1024, 384, 1),
        ("siglip_so400m_patch14_224", 1152, 224, 1), ("siglip_so400m_patch14_384", 1152, 384, 1),
        ("siglip_so400m_patch16_256_i18n", 1152, 256, 1), ("siglip_base_patch16_256_multilingual", 768, 256, 1),
        ("siglip2_base_patch16_224", 768, 224, 1), ("siglip2_base_patch16_256", 768, 256, 1),
        ("siglip2_base_patch32_256", 768, 256, 1), ("siglip2_base_patch16_384", 768, 384, 1),
        ("siglip2_large_patch16_256", 1024, 256, 1), ("siglip2_large_patch16_384", 1024, 384, 1),
        ("siglip2_large_patch16_512", 1024, 512, 1), ("siglip2_giant_opt_patch16_256", 1536, 256, 2),
        ("siglip2_giant_opt_patch16_384", 1536, 384, 1), ("siglip2_so400m_patch14_224", 1152, 224, 1),
        ("siglip2_so400m_patch14_384", 1152, 384, 1), ("siglip2_so400m_patch16_256", 1152, 256, 1),
        ("siglip2_so400m_patch16_384", 1152, 384, 1), ("siglip2_so400m_patch16_512", 1152, 512, 1),
    ]),
    **_presets("siglip", "medsiglip", [("medsiglip_900m_448", 1152, 448, 1)]),
}

_CONFIG, _CONVERTER, _METADATA = "config.json", "image_converter.json", "metadata.json"


def _require_keras_hub(name: str) -> str:
    if importlib.util.find_spec("keras_hub") is None:
        raise RuntimeError(
            f"Backbone {name!r} needs keras-hub, which is not installed; expected the [hub] extra: "
            "pip install 'catdog-features[hub]' (or pip install keras-hub)."
        )
    return importlib.metadata.version("keras-hub")


def _is_dir_name(text: str) -> bool:
    return text.startswith((".", "~")) or "/" in text or os.sep in text or os.path.isdir(text)


def _read_config(folder: Path) -> dict:
    path = folder / _CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"Not a keras-hub preset folder: {str(folder)!r} has no {_CONFIG}; expected a folder written by "
            "save_to_preset() (config.json, model.weights.h5, image_converter.json)."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Could not read {str(path)!r}: {exc}") from None


def _family_of(config: dict, where: str) -> Tuple[HubFamily, dict]:
    """The family of a preset's config.json and the config of its image encoder."""
    class_name = str(config.get("class_name", ""))
    for family in FAMILIES.values():
        if class_name in family.classes:
            inner = config.get("config", {})
            vision = inner.get("vision_encoder", {}).get("config", inner) if "vision_encoder" in inner else inner
            return family, vision
    known = ", ".join(c for f in FAMILIES.values() for c in f.classes)
    raise ValueError(
        f"Unsupported keras-hub preset. Received: {where!r} holding a {class_name or 'unknown'} model; "
        f"expected one of: {known}."
    )


def hub_spec(text: str, base_dir=None) -> "HubSpec":
    """The spec of ``hub:TEXT``: a preset of :data:`HUB_PRESETS` or a local preset folder."""
    text = text.strip()
    name = f"hub:{text}"
    version = _require_keras_hub(name)
    if text.lower() in HUB_PRESETS:
        p = HUB_PRESETS[text.lower()]
        text, name = p.preset, f"hub:{p.preset}"
        family = FAMILIES[p.family]
        return HubSpec(name, p.family, text, p.handle, p.input_size, p.hidden_dim * family.dim_factor, version)
    if not _is_dir_name(text):
        raise ValueError(
            f"Unknown hub preset. Received: backbone={name!r}; expected hub: followed by one of: "
            f"{', '.join(HUB_PRESETS)}; or by the path of a local keras-hub preset folder (hub:/path/to/dir)."
        )
    folder = Path(os.path.expanduser(text))
    if base_dir is not None and not folder.is_absolute():
        folder = Path(base_dir) / folder
    folder = Path(os.path.normpath(folder))
    if not folder.is_dir():
        raise FileNotFoundError(f"Preset folder not found. Received: backbone={name!r}; expected a folder "
                                f"written by save_to_preset() ({str(folder)!r} does not exist).")
    family, vision = _family_of(_read_config(folder), str(folder))
    size = int(vision.get("image_shape", (224,))[0])
    dim = int(vision["hidden_dim"]) * family.dim_factor
    return HubSpec(f"hub:{folder}", family.name, str(folder), "", size, dim, version)


def preset_dir_identity(folder) -> str:
    """Content hash of a local preset folder (every file but metadata.json, which holds a date)."""
    folder = Path(folder)
    parts = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != _METADATA):
        parts.append(f"{path.relative_to(folder).as_posix()}:{sha256_file(path)}")
    return "preset-dir:sha256=" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def hub_remedy(spec: "HubSpec") -> str:
    """The how-to-get-it-offline lines of a keras-hub :class:`WeightsDownloadError`."""
    handle = spec.handle.removeprefix("kaggle://")
    folder = f"/path/to/{spec.preset}"
    return (
        f"  * on a machine that has internet, download the preset folder: python -c \"import kagglehub; "
        f"print(kagglehub.model_download('{handle}'))\" prints where it went; copy that folder here and pass "
        f"it as the weights: on the command line --weights {spec.name}={folder} (several backbones: "
        f"NAME=PATH,NAME=PATH,...), in Python weights={{{spec.name!r}: {folder!r}}}; or use it as the "
        f"backbone itself: hub:{folder}; or\n"
    )


@dataclass(frozen=True)
class HubSpec:
    """A keras-hub image encoder as a frozen backbone (same protocol as ``BackboneSpec``).

    Attributes
    ----------
    name : str
        ``hub:PRESET`` or ``hub:/path/to/preset_dir``.
    family : str
        Key of :data:`FAMILIES`.
    preset : str
        The preset name, or the local folder.
    handle : str
        The pinned Kaggle handle (with its version); ``""`` for a local folder.
    input_size : int
        Native square input size.
    dim : int
        Length of the pooled vector.
    keras_hub_version : str
        The installed keras-hub (part of :meth:`identity`: its layers define the numerics).
    """

    name: str
    family: str
    preset: str
    handle: str
    input_size: int
    dim: int
    keras_hub_version: str

    @property
    def min_size(self) -> int:
        patch = FAMILIES[self.family].patch_size
        return patch or self.input_size

    @property
    def pooling(self) -> str:
        return FAMILIES[self.family].pooling

    def preprocess_input(self, x):
        """Identity: the preset's ImageConverter runs inside the built model."""
        return x

    def identity(self) -> Dict[str, object]:
        """What of this backbone changes its vectors (the weights aside), as JSON-able data."""
        return {
            "family": "keras-hub",
            "model": self.family,
            "preset": self.preset if self.handle else "local",
            "pooling": self.pooling,
            "preprocess": "keras-hub ImageConverter",
            "dim": int(self.dim),
            "keras_hub": self.keras_hub_version,
        }

    def weights_identity(self, weights) -> str:
        """Preset + version for downloads; content hashes for local folders; the seed for random init."""
        kind = weights_kind(weights)
        if kind == "file":
            return preset_dir_identity(self._folder(weights))
        source = self.handle or preset_dir_identity(self.preset)
        if kind == "none":
            return f"random-init:seed={RANDOM_INIT_SEED};config={source}"
        return f"keras-hub:{source}" if self.handle else source

    def resolve_size(self, image_size: Optional[int]) -> int:
        """The native size for ``None``/0; else ``image_size``, checked against what the family accepts."""
        if not image_size:
            return self.input_size
        size = check_int("image_size", image_size, 1, integral_floats=True)
        patch = FAMILIES[self.family].patch_size
        if patch and size >= patch and size % patch == 0:
            return size
        if not patch and size == self.input_size:
            return size
        expected = (f"a multiple of the patch size {patch} (e.g. {max(patch, size // patch * patch)} or "
                    f"{(size // patch + 1) * patch}; native {self.input_size})" if patch else
                    f"its fixed size {self.input_size} (its position embeddings are not interpolated)")
        raise ValueError(f"Invalid image size for {self.name}. Received: image_size={image_size}; expected {expected}.")

    def _folder(self, weights) -> Path:
        folder = Path(os.fspath(weights)).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Preset folder not found. Received: weights={str(weights)!r} for {self.name}; expected a local "
                "keras-hub preset folder (config.json, model.weights.h5, image_converter.json)."
            )
        family, vision = _family_of(_read_config(folder), str(folder))
        dim = int(vision["hidden_dim"]) * family.dim_factor
        if family.name != self.family or dim != self.dim:
            raise ValueError(
                f"Preset folder {str(folder)!r} holds a {family.name} model with {dim}-d pooled vectors; "
                f"expected the architecture of {self.name} ({self.family}, {self.dim}-d)."
            )
        return folder

    def build(self, weights="imagenet", image_size: Optional[int] = None, precision: str = "float32"):
        """Build the frozen model images 0..255 ``(size, size, 3)`` -> ``(dim,)``.

        The preset's ImageConverter (float32), the image encoder under ``precision``'s Keras
        policy, this family's pooling in float32. Random draws are seeded and the global random
        state restored (see :func:`~catdog_features.features._build.seeded_build`).

        Raises
        ------
        WeightsDownloadError
            A preset download failed (no internet): the message says how to use a local folder.
        """
        from catdog_features.features import _hub_model

        size = self.resolve_size(image_size)
        kind = weights_kind(weights)
        local = self._folder(weights) if kind == "file" else (None if self.handle else Path(self.preset))
        source = str(local) if local is not None else self.handle
        policy = PRECISIONS[check_precision(precision)]
        with seeded_build(RANDOM_INIT_SEED):
            try:
                encoder, converter = _hub_model.load(source, kind != "none", local is not None, self.family, size)
            except Exception as exc:  # network errors surface as many exception types
                if local is not None:
                    raise ValueError(f"Could not load keras-hub preset folder {source!r} for {self.name}: "
                                     f"{type(exc).__name__}: {exc}") from None
                raise WeightsDownloadError(self.name, exc, what=f"the keras-hub preset {self.preset!r}",
                                           remedy=hub_remedy(self)) from None
            model = _hub_model.pooled_model(encoder, converter, FAMILIES[self.family].pooling, size, policy)
        if int(model.output_shape[-1]) != self.dim:
            raise ValueError(f"{self.name} gives {model.output_shape[-1]}-d vectors; expected {self.dim} "
                             "(the registry's size for this preset is wrong: please report it).")
        model.trainable = False
        return model
