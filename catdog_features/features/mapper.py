"""The mapper of stage 1: a backbone as a compiled function of fixed-shape batches.

One ``tf.function`` per backbone (its own ``preprocess_input`` + ``model(x, training=False)``,
cast to float32) traced for one batch shape; the last partial batch is padded, so no
retracing happens and a row never depends on which other images shared its batch (a resumed
extraction is bit-identical to an uninterrupted one).

``precision`` builds the backbone under a Keras mixed-precision policy (``"bfloat16"``:
``mixed_bfloat16``, ``"float16"``: ``mixed_float16``; variables stay float32): only the
backbone's layers, never the global policy, so heads built later in the process are float32.
The vectors always leave as float32. ``jit_compile=True`` compiles the function with XLA
(worth it on GPUs; on CPUs it is off by default, see ``experiments/bench_extract.py``).
Both change the numerics slightly, so both belong in the extractor key.
"""

from __future__ import annotations

import functools
import socket

import numpy as np

from catdog_features.features._build import PRECISIONS, check_precision  # noqa: F401  (public here)
from catdog_features.features.weights import weights_kind

#: Socket timeout (s) while Keras downloads ImageNet weights, so a dead network fails
#: instead of hanging; it bounds each read, not the whole download.
DOWNLOAD_SOCKET_TIMEOUT = 30.0


def check_jit_compile(value) -> bool:
    """``value`` as a bool (``True``/``False``, or the words true/false/yes/no/1/0), else a ``ValueError``."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    raise ValueError(f"Invalid jit_compile. Received: jit_compile={value!r}; expected True or False.")


def build_model(spec, weights, image_size: int, precision: str = "float32"):
    """``spec.build`` with a socket timeout around a pretrained-weights download (no silent hang).

    A float32 build calls ``spec.build(weights, image_size)`` exactly (the protocol's original
    form); other precisions pass ``precision=``.
    """
    precision = check_precision(precision)
    kwargs = {} if precision == "float32" else {"precision": precision}
    if weights_kind(weights) != "imagenet":
        return spec.build(weights, image_size, **kwargs)
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT)
    try:
        return spec.build(weights, image_size, **kwargs)
    finally:
        socket.setdefaulttimeout(previous)


def _forward(model, preprocess, x):
    import tensorflow as tf

    return tf.cast(model(preprocess(x), training=False), tf.float32)


class Mapper:
    """A backbone as a compiled function of fixed-shape batches: images 0..255 -> float32 vectors.

    Parameters
    ----------
    spec : backbone spec
        From :func:`~catdog_features.features.backbones.get_backbone` (any kind).
    weights : "imagenet", None or path
        As for the spec's ``build``.
    image_size : int
        Square input size.
    batch_size : int
        The one batch shape the function is traced for; shorter batches are padded with
        zeros and the padding rows dropped from the output.
    precision : {"float32", "bfloat16", "float16"}
        Compute precision of the backbone (see the module notes); see :func:`check_precision`.
    jit_compile : bool
        Compile the forward pass with XLA.
    split : str, optional
        A canonical split (:func:`~catdog_features.features.split.resolve_split`): the mapper
        then returns the feature map at that layer, ``(n, h, w, c)`` float32, instead of the
        pooled vector. ``row_shape`` says which.
    """

    def __init__(self, spec, weights, image_size: int, batch_size: int, precision: str = "float32",
                 jit_compile: bool = False, split=None):
        import tensorflow as tf

        self.spec = spec
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.precision = check_precision(precision)
        self.jit_compile = check_jit_compile(jit_compile)
        self.model = build_model(spec, weights, self.image_size, self.precision)
        self.split = split
        if split is not None:
            from catdog_features.features.split import spatial_model

            self.model = spatial_model(self.model, split, spec.name, getattr(spec, "default_split", ""))
        self.row_shape = tuple(int(d) for d in self.model.outputs[0].shape[1:]) if split is not None else (spec.dim,)
        signature = [tf.TensorSpec((self.batch_size, self.image_size, self.image_size, 3), tf.float32)]
        # A partial, not a closure: TF counts traces per code object, and one trace per
        # backbone would otherwise add up to a spurious "excessive retracing" warning.
        forward = functools.partial(_forward, self.model, spec.preprocess_input)
        # No AutoGraph: the forward pass has no tensor-dependent Python control flow, and
        # converting the specs' preprocessing (module lookups) only costs tracing time.
        self._fn = tf.function(forward, input_signature=signature, jit_compile=self.jit_compile, autograph=False)
        # Trace and let TF optimise the graph now (seconds for a large model), so build
        # time is paid here and the extraction pass runs at its steady-state speed.
        self._fn(tf.zeros((self.batch_size, self.image_size, self.image_size, 3), tf.float32))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Vectors ``(n, *row_shape)`` float32 for ``images`` ``(n, size, size, 3)``, ``n <= batch_size``."""
        n = len(images)
        if n == 0:
            return np.zeros((0, *self.row_shape), np.float32)
        if n > self.batch_size:
            raise ValueError(f"Received a batch of {n} images; expected at most batch_size={self.batch_size}.")
        x = np.asarray(images, dtype=np.float32)
        if n < self.batch_size:
            padded = np.zeros((self.batch_size,) + x.shape[1:], np.float32)
            padded[:n] = x
            x = padded
        return self._fn(x).numpy()[:n]
