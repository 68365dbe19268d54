"""Element-wise input transforms of the heads (before standardisation): the registry.

Pooled CNN features are non-negative ReLU averages with a long right tail: a few large
activations per image dominate a linear score. A signed power (``sqrt``: ``sign(x) *
|x| ** 0.5``, the "power normalisation" of Perronnin et al., 2010, for Fisher vectors and
pooled features) or a signed ``log1p`` evens them out before a linear model sees them. Either
helps or hurts depending on the features (measured in ``experiments/bench_heads.py``: the
linear head's test log loss on breast_cancer / wine / digits, 8 splits each, geometric mean
over LogisticRegressionCV's: none 1.00 / 0.92 / 0.99, sqrt 0.92 / 0.84 / 1.01, log1p
0.98 / 0.74 / 1.07), which is why :class:`~catdog_features.heads.LinearHead` chooses by
cross-validation by default.
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np

#: name -> element-wise function of a float array; every one is odd (sign-preserving) and
#: monotone, so features of either sign keep their order.
TRANSFORMS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda X: X,
    "sqrt": lambda X: np.sign(X) * np.sqrt(np.abs(X)),
    "log1p": lambda X: np.sign(X) * np.log1p(np.abs(X)),
}
#: The value of a head's ``transform`` that means "choose among :data:`TRANSFORMS` by CV".
AUTO = "auto"


def check_transform(value, allow_auto: bool = True) -> str:
    """``value`` validated: a name of :data:`TRANSFORMS` (or ``"auto"``)."""
    allowed = (*TRANSFORMS, AUTO) if allow_auto else tuple(TRANSFORMS)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"Invalid transform. Received: transform={value!r}; expected one of "
                         f"{', '.join(map(repr, allowed))}.")
    return value


def apply_transform(name: str, X: np.ndarray) -> np.ndarray:
    """``X`` through the transform called ``name`` (a new array unless ``name`` is ``"none"``)."""
    return TRANSFORMS[check_transform(name, allow_auto=False)](X)
