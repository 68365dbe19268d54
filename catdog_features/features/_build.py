"""What every kind of backbone spec shares when it builds a model: seeds, precision, hashes.

* :func:`seeded_build`: random initialisation that is reproducible *and* leaves the
  process's global random state exactly as it was (issue 11 #5: a build used to call
  ``keras.utils.set_random_seed``, which changed the heads' random draws in the same process);
* :data:`PRECISIONS` / :func:`check_precision` / :func:`dtype_policy`: a Keras
  mixed-precision policy for the backbone only, never left behind as the global policy;
* :func:`sha256_file`: content hashes for weights and model files.

TensorFlow and Keras are imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from typing import Dict, Iterator

import numpy as np

from catdog_features._checks import check_choice

#: Seed used to initialise weights when ``weights=None``, so random-init features are reproducible.
RANDOM_INIT_SEED = 1337

#: ``precision`` value -> the Keras dtype policy the backbone is built under. Variables stay
#: float32 in the mixed policies (so ImageNet / preset weights load unchanged); the vectors
#: are cast back to float32 before they leave the mapper.
PRECISIONS: Dict[str, str] = {
    "float32": "float32",
    "bfloat16": "mixed_bfloat16",
    "float16": "mixed_float16",
}


def check_precision(value) -> str:
    """The canonical precision name, or a ``ValueError`` listing the valid ones.

    Accepts ``"float32"``, ``"bfloat16"``, ``"float16"`` (any case) and the Keras policy names
    ``"mixed_bfloat16"`` / ``"mixed_float16"`` as aliases.
    """
    if isinstance(value, str):
        key = value.strip().lower()
        for name, policy in PRECISIONS.items():
            if key in (name, policy):
                return name
    return check_choice("precision", value, tuple(PRECISIONS))  # raises: not a valid name


@contextlib.contextmanager
def dtype_policy(precision: str = "float32") -> Iterator[str]:
    """Make ``precision``'s Keras policy the global one inside the block, and restore it after.

    Layers take the global policy when they are *constructed*, so a model built inside the
    block computes in that precision, and layers built afterwards (the heads) do not.
    """
    import keras

    policy = PRECISIONS[check_precision(precision)]
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield policy
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def seeded_build(seed: int = RANDOM_INIT_SEED) -> Iterator[None]:
    """Seed the random draws of model construction; restore the global random state after.

    Keras 3 initialisers without an explicit seed take one from Python's :mod:`random`
    (``keras.random.make_default_seed``); a few layers and user code draw from NumPy's
    global generator. Both are seeded for the block and put back exactly as they were, so
    two random-init builds are identical and code running after a build (the heads, a
    sweep) draws what it would have drawn without it. TensorFlow's global seed is not
    touched (Keras initialisers use stateless ops with the seeds drawn above).
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def sha256_file(path: os.PathLike | str) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
