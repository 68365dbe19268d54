"""Split a backbone at a named layer: the spatial model (images -> feature map) and the top block.

A *split* names the tensor where a backbone is cut in two:

* ``"LAYER"``: the output of the layer called ``LAYER`` (``"conv5_block2_out"``, ``"mixed9"``);
* ``"LAYER:input"``: the input of that layer (for a block boundary whose tensor comes out of an
  unnamed layer, e.g. Xception's ``block14_sepconv1:input``: Keras numbers unnamed layers
  per process, so ``add_11`` is not a stable name);
* ``"default"``: the registry's choice for that backbone (``BackboneSpec.default_split``, the
  input of its last block), see :data:`DEFAULT_SPLIT`.

The part before the split is the *spatial model* (what the feature store caches with
``extract_features(..., split=...)``: one float16 map per image); the part after it,
including the global average pooling, is the *top block* (what
:class:`~catdog_features.heads.TopBlockHead` fine-tunes). Applied to the spatial model's
output, the top block gives the backbone's pooled vector (parity, to float tolerance).

Nothing here imports TensorFlow at module level; :func:`resolve_split` and the size helpers
need no model at all.
"""

from __future__ import annotations

import difflib
from typing import List, Optional, Sequence, Tuple

import numpy as np

#: The split value that stands for the registry's default split of a backbone.
DEFAULT_SPLIT = "default"
#: Suffix of a split naming a layer's input rather than its output.
INPUT_SUFFIX = ":input"
#: Feature maps are stored in this dtype (half the bytes of float32; ~3 significant digits).
MAP_DTYPE = "float16"
#: Largest finite float16 value; a map beyond it cannot be stored.
FLOAT16_MAX = float(np.finfo(np.float16).max)
#: A spatial extraction estimated above this many bytes warns first (:class:`SpatialSizeWarning`).
WARN_BYTES = 2 * 2**30


#: A FeatureSet block of feature maps is named ``<backbone>@map`` next to the backbone's vectors.
MAP_SUFFIX = "@map"


def map_key(backbone: str) -> str:
    """The FeatureSet name of ``backbone``'s feature-map block."""
    return f"{backbone}{MAP_SUFFIX}"


def map_backbone(name: str) -> Optional[str]:
    """The backbone of a feature-map block name, or None for a vector block."""
    return name[: -len(MAP_SUFFIX)] if name.endswith(MAP_SUFFIX) else None


def with_maps(features, maps):
    """``features`` plus the feature maps of ``maps`` (same image list) as ``<backbone>@map`` blocks.

    What lets a TopBlockHead member sit in the same ensemble as dense and linear members:
    every member names the blocks it reads.
    """
    import dataclasses

    import numpy as np

    if not np.array_equal(np.asarray(features.ids), np.asarray(maps.ids)):
        raise ValueError("Feature maps and vectors of different image lists; expected the same ids in the same order.")
    extra = {map_key(name): block for name, block in maps.features.items()}
    return dataclasses.replace(features, features={**features.features, **extra})


class SplitError(ValueError):
    """A split names no layer of the backbone, or a layer the top block cannot start from."""


class SpatialSizeWarning(UserWarning):
    """A spatial extraction is about to write a large amount of data into the feature store."""


def check_split(value) -> Optional[str]:
    """``None`` for no split (``None`` or ``""``), else the stripped layer spec; ``ValueError`` otherwise."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"Invalid split. Received: split={value!r}; expected a layer name, 'LAYER:input', "
                         f"{DEFAULT_SPLIT!r} or None.")
    text = value.strip()
    return text or None


def backbones_with_default_split() -> List[str]:
    """Registry names whose spec has a default split."""
    from catdog_features.features.backbones import BACKBONES

    return [name for name, spec in BACKBONES.items() if getattr(spec, "default_split", "")]


def resolve_split(spec, split) -> Optional[str]:
    """The canonical split of ``spec`` for a ``split`` argument (part of the extractor key).

    ``"default"`` (any case) becomes the spec's ``default_split``; a layer name is kept as
    given (it is checked against the model when the model is built: :func:`split_tensor`).

    Raises
    ------
    SplitError
        ``"default"`` for a backbone without a default split.
    """
    text = check_split(split)
    if text is None:
        return None
    if text.lower() == DEFAULT_SPLIT:
        default = getattr(spec, "default_split", "") or ""
        if not default:
            raise SplitError(
                f"No default split for {spec.name}. Received: split={split!r}; expected a layer name of "
                f"{spec.name} (or 'LAYER:input'); backbones with a default split: "
                f"{', '.join(backbones_with_default_split())}."
            )
        return default
    return text


def _layer_names(model) -> List[str]:
    return [layer.name for layer in model.layers]


def _spatial_names(model) -> List[str]:
    """Names of layers with a 4-D output (candidate splits), in model order."""
    names = []
    for layer in model.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4:
            names.append(layer.name)
    return names


def _suggestions(model, text: str, default: str = "") -> str:
    names = _spatial_names(model)
    close = difflib.get_close_matches(text.split(":")[0], names, n=3, cutoff=0.6)
    # block boundaries first (ResNets' *_out, Inception's mixed*), then the last few layers
    blocks = [n for n in names if n.endswith("_out") or (n.startswith("mixed") and "_" not in n)]
    shown = list(dict.fromkeys(close + blocks[-6:][::-1] + names[-4:][::-1]))[:10]
    parts = [f"a layer name of the model such as {', '.join(shown)} ({len(model.layers)} layers)",
             "'LAYER:input' for a layer's input"]
    if default:
        parts.append(f"or {DEFAULT_SPLIT!r} ({default})")
    return "; ".join(parts)


def split_tensor(model, split: str, backbone: str = "", default: str = ""):
    """The symbolic tensor at ``split`` in a functional Keras ``model``.

    Raises
    ------
    SplitError
        No such layer, or its output is not a 4-D feature map ``(batch, h, w, c)``.
    """
    text = check_split(split)
    name, want_input = (text[: -len(INPUT_SUFFIX)], True) if text and text.endswith(INPUT_SUFFIX) else (text, False)
    label = backbone or getattr(model, "name", "the backbone")
    if not name or name not in _layer_names(model):
        raise SplitError(
            f"Unknown split layer for {label}. Received: split={split!r}; expected {_suggestions(model, text or '', default)}."
        )
    layer = model.get_layer(name)
    tensor = layer.input if want_input else layer.output
    if isinstance(tensor, (list, tuple)):
        raise SplitError(f"Received: split={split!r}; layer {name!r} of {label} has {len(tensor)} inputs, expected a "
                         "layer with one (name the layer that produces the tensor instead).")
    if len(tensor.shape) != 4:
        raise SplitError(
            f"Received: split={split!r}; the tensor there has shape {tuple(tensor.shape)}, expected a spatial "
            f"feature map (batch, h, w, c). Expected {_suggestions(model, text, default)}."
        )
    return tensor


def spatial_model(model, split: str, backbone: str = "", default: str = ""):
    """``images -> feature map at split``: the part of ``model`` before the split (same weights)."""
    import keras

    tensor = split_tensor(model, split, backbone, default)
    top_block(model, split, backbone, default, _tensor=tensor)  # fail now, not in a head later
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # one tensor in, one out: no structure warnings
    return keras.Model(inputs, tensor, name=f"{model.name}_to_{_safe(split)}")


def top_block(model, split: str, backbone: str = "", default: str = "", _tensor=None):
    """``feature map at split -> model output``: the layers after the split (shared weights).

    Raises
    ------
    SplitError
        A layer after the split also reads a tensor from before it (e.g. a residual shortcut
        around the split): the top block cannot be computed from the map alone.
    """
    import keras

    tensor = _tensor if _tensor is not None else split_tensor(model, split, backbone, default)
    label = backbone or model.name
    try:
        return keras.Model(tensor, model.outputs[0], name=f"{model.name}_top_from_{_safe(split)}")
    except ValueError as exc:
        raise SplitError(
            f"Received: split={split!r}; the layers of {label} after it also read tensors from before it (a shortcut "
            f"around the split: {exc}), so they cannot run on the map alone. Expected a block boundary: "
            f"{_suggestions(model, split, default)}."
        ) from None


def build_top_block(backbone, weights="imagenet", image_size=None, split: str = DEFAULT_SPLIT):
    """The top block of a registry backbone as its own Keras model ``(h, w, c) -> (dim,)``.

    Built from the same weights as the extraction (``weights=None``: the same seeded random
    init), so on a cached map of that extractor it gives the backbone's pooled vector.

    Returns
    -------
    block : keras.Model
        Input: a float32 map of the split's shape; output: the pooled vector.
    split : str
        The canonical split (``"default"`` resolved).
    """
    import keras

    from catdog_features.features.backbones import get_backbone
    from catdog_features.features.mapper import build_model

    spec = get_backbone(backbone)
    canonical = resolve_split(spec, split)
    if canonical is None:
        raise SplitError(f"Received: split={split!r}; expected a layer name, 'LAYER:input' or {DEFAULT_SPLIT!r}.")
    full = build_model(spec, weights, spec.resolve_size(image_size))
    sub = top_block(full, canonical, spec.name, getattr(spec, "default_split", ""))
    inputs = keras.Input(tuple(sub.inputs[0].shape[1:]), dtype="float32", name="feature_map")
    return keras.Model(inputs, sub(inputs), name=f"{spec.name}_top_block"), canonical


def _safe(text) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in str(text))


# --------------------------------------------------------------------------- sizes
def map_bytes(n_images: int, row_shape: Sequence[int], dtype: str = MAP_DTYPE) -> int:
    """Bytes of ``n_images`` stored maps of ``row_shape`` (data only; HDF5 adds little)."""
    return int(n_images) * int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def format_bytes(n: float) -> str:
    """``9.34 GiB``-style text."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


def size_warning(backbone: str, split: str, n_images: int, row_shape: Tuple[int, ...], image_size: int,
                 free: Optional[int] = None, threshold: Optional[int] = None) -> Optional[str]:
    """The text of a :class:`SpatialSizeWarning` when the maps would exceed ``threshold`` bytes, else None."""
    threshold = WARN_BYTES if threshold is None else int(threshold)
    total = map_bytes(n_images, row_shape)
    if total <= threshold:
        return None
    per_image = map_bytes(1, row_shape)
    shape = " x ".join(str(int(d)) for d in row_shape)
    half = max(1, image_size // 2)
    text = (
        f"The {backbone} feature maps at split {split!r} will take about {format_bytes(total)} in the feature store: "
        f"{n_images} images x {shape} x 2 bytes ({format_bytes(per_image)} each; already float16, half of float32). "
        f"To reduce it: extract fewer images (e.g. a subset for fine-tuning), a smaller image_size (maps scale with "
        f"its square: {image_size} -> {half} takes a quarter), or a split layer with a smaller map (h x w x c)."
    )
    if free is not None and free < total:
        text += f" Only {format_bytes(free)} is free on the disk holding the store."
    return text
