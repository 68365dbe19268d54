"""The mapper of stage 1: a backbone as a compiled function of fixed-shape batches.

One ``tf.function`` per backbone (its own ``preprocess_input`` + ``model(x, training=False)``)
traced for one batch shape; the last partial batch is padded, so no retracing happens and a
row never depends on which other images shared its batch (a resumed extraction is
bit-identical to an uninterrupted one).
"""

from __future__ import annotations

import functools
import socket

import numpy as np

from catdog_features.features.backbones import BackboneSpec, weights_kind

#: Socket timeout (s) while Keras downloads ImageNet weights, so a dead network fails
#: instead of hanging; it bounds each read, not the whole download.
DOWNLOAD_SOCKET_TIMEOUT = 30.0


def build_model(spec: BackboneSpec, weights, image_size: int):
    """``spec.build`` with a socket timeout around an ImageNet download (no silent hang)."""
    if weights_kind(weights) != "imagenet":
        return spec.build(weights, image_size)
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT)
    try:
        return spec.build(weights, image_size)
    finally:
        socket.setdefaulttimeout(previous)


def _forward(model, preprocess, x):
    return model(preprocess(x), training=False)


class Mapper:
    """A backbone as a compiled function of fixed-shape batches: images 0..255 -> vectors.

    Parameters
    ----------
    spec : BackboneSpec
        The backbone.
    weights : "imagenet", None or path
        As for :meth:`BackboneSpec.build`.
    image_size : int
        Square input size.
    batch_size : int
        The one batch shape the function is traced for; shorter batches are padded with
        zeros and the padding rows dropped from the output.
    """

    def __init__(self, spec: BackboneSpec, weights, image_size: int, batch_size: int):
        import tensorflow as tf

        self.spec = spec
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.model = build_model(spec, weights, self.image_size)
        signature = [tf.TensorSpec((self.batch_size, self.image_size, self.image_size, 3), tf.float32)]
        # A partial, not a closure: TF counts traces per code object, and one trace per
        # backbone would otherwise add up to a spurious "excessive retracing" warning.
        forward = functools.partial(_forward, self.model, spec._module().preprocess_input)
        self._fn = tf.function(forward, input_signature=signature)
        # Trace and let TF optimise the graph now (seconds for a large model), so build
        # time is paid here and the extraction pass runs at its steady-state speed.
        self._fn(tf.zeros((self.batch_size, self.image_size, self.image_size, 3), tf.float32))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Vectors ``(n, dim)`` float32 for ``images`` ``(n, size, size, 3)``, ``n <= batch_size``."""
        n = len(images)
        if n == 0:
            return np.zeros((0, self.spec.dim), np.float32)
        if n > self.batch_size:
            raise ValueError(f"Received a batch of {n} images; expected at most batch_size={self.batch_size}.")
        x = np.asarray(images, dtype=np.float32)
        if n < self.batch_size:
            padded = np.zeros((self.batch_size,) + x.shape[1:], np.float32)
            padded[:n] = x
            x = padded
        return self._fn(x).numpy()[:n]
