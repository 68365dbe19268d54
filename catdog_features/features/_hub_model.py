"""The Keras side of :mod:`.hub`: load a keras-hub preset, wrap its encoder with converter + pooling.

Imported only when a ``hub:`` backbone is built (it imports keras and keras_hub).
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import keras_hub


def load(source: str, load_weights: bool, local: bool, family: str, size: int):
    """``(image encoder, image converter)`` of a preset (handle or local folder), float32.

    DINOv2 is built at ``size`` (keras-hub interpolates its position embeddings); CLIP and
    SigLIP keep their preset's size. The converter is rebuilt without its resizing step: the
    images arrive already resized to ``size`` by our reader, and what remains is the preset's
    own scale and offset.
    """
    kwargs = {"image_shape": (size, size, 3)} if family == "dinov2" else {}
    backbone = keras_hub.models.Backbone.from_preset(source, load_weights=load_weights, **kwargs)
    encoder = getattr(backbone, "vision_encoder", backbone)  # CLIP / SigLIP: the image tower
    if local:
        path = Path(source) / "image_converter.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is missing; expected the preset's image converter next to its config "
                "(save it with converter.save_to_preset(folder))."
            )
        converter = keras.saving.deserialize_keras_object(json.loads(path.read_text(encoding="utf-8")))
    else:
        converter = keras_hub.layers.ImageConverter.from_preset(source)
    config = converter.get_config()
    config.update(image_size=None, dtype="float32")
    converter = type(converter).from_config(config)
    if int(encoder.image_shape[0]) != size:
        raise ValueError(f"The preset's image encoder takes {encoder.image_shape[0]} px images; expected {size}.")
    return encoder, converter


def with_policy(encoder, policy: str):
    """The same encoder (same weights) computing under a Keras dtype policy.

    keras-hub's CLIP / SigLIP backbones do not pass a ``dtype`` given to ``from_preset`` on to
    their saved sub-encoders, so the encoder is rebuilt from its config with the policy and
    the float32 weights are copied over (variables stay float32 in the mixed policies).
    """
    if policy == "float32":
        return encoder
    config = encoder.get_config()
    config["dtype"] = policy
    clone = type(encoder).from_config(config)
    clone.set_weights(encoder.get_weights())
    return clone


def _cls(tokens, encoder):
    return tokens[:, 0]


def _cls_and_patch_mean(tokens, encoder):
    first_patch = 1 + int(getattr(encoder, "num_register_tokens", 0))  # register tokens are left out
    return keras.ops.concatenate([tokens[:, 0], keras.ops.mean(tokens[:, first_patch:], axis=1)], axis=-1)


def _own(tokens, encoder):
    return tokens  # SigLIP's encoder ends in its attention-pooling (MAP) head: (N, hidden) already


#: HubFamily.pooling -> fn(encoder output in float32, encoder) -> (N, dim)
POOLINGS = {"cls": _cls, "cls+mean": _cls_and_patch_mean, "map": _own}


def pooled_model(encoder, converter, pooling: str, size: int, policy: str):
    """Functional model images 0..255 -> converter (float32) -> encoder (``policy``) -> pooled float32."""
    encoder = with_policy(encoder, policy)
    images = keras.Input((size, size, 3), name="images")
    tokens = keras.ops.cast(encoder({"images": converter(images)}), "float32")
    return keras.Model(images, POOLINGS[pooling](tokens, encoder), name=f"{encoder.name}_pooled")
