"""One family of argument validators, shared by the library, the config file and the CLI.

Each ``expect_*`` function returns ``None`` when a value is acceptable and otherwise the
phrase saying what was expected (``"an integer >= 1"``), so each caller words the error its
own way: the library as ``Invalid batch_size. Received: batch_size=0; expected an integer
>= 1.`` (:func:`check_int`, ...), the config as ``[extract] batch_size: received 0;
expected an integer >= 1``, argparse as a usage error.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional

import numpy as np


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _bounds(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f"in [{minimum}, {maximum}]"
    if minimum is not None:
        return f">= {minimum}"
    if maximum is not None:
        return f"<= {maximum}"
    return ""


def expect_int(value, minimum: Optional[int] = None, maximum: Optional[int] = None,
               integral_floats: bool = False) -> Optional[str]:
    """``None`` if ``value`` is an int within the bounds, else what was expected.

    ``integral_floats`` also accepts floats such as ``3.0`` (hyperopt's ``quniform`` draws).
    """
    phrase = " ".join(p for p in ("an integer", _bounds(minimum, maximum)) if p)
    if isinstance(value, (bool, np.bool_)):
        return phrase
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif integral_floats and _is_real(value) and math.isfinite(float(value)) and float(value).is_integer():
        number = int(value)
    else:
        return phrase
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        return phrase
    return None


def expect_float(value, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
                 high_open: bool = False) -> Optional[str]:
    """``None`` if ``value`` is a finite real number in the interval, else what was expected."""
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    phrase = f"a number in {lo}{low:g}, {high:g}{hi}"
    if not _is_real(value) or not math.isfinite(float(value)):
        return phrase
    v = float(value)
    if (v <= low if low_open else v < low) or (v >= high if high_open else v > high):
        return phrase
    return None


def expect_choice(value, choices: Iterable[Any]) -> Optional[str]:
    """``None`` if ``value`` is one of ``choices``, else what was expected."""
    choices = tuple(choices)
    if value in choices:
        return None
    return "one of " + ", ".join(repr(c) for c in choices)


def _invalid(name: str, value, expected: str) -> ValueError:
    return ValueError(f"Invalid {name}. Received: {name}={value!r}; expected {expected}.")


def check_int(name: str, value, minimum: Optional[int] = None, maximum: Optional[int] = None,
              integral_floats: bool = False) -> int:
    """``value`` as an int, or a ``ValueError`` naming ``name``, the value and the bounds."""
    problem = expect_int(value, minimum, maximum, integral_floats)
    if problem:
        raise _invalid(name, value, problem)
    return int(value)


def check_float(name: str, value, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
                high_open: bool = False) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``name``, the value and the interval."""
    problem = expect_float(value, low, high, low_open=low_open, high_open=high_open)
    if problem:
        raise _invalid(name, value, problem)
    return float(value)


def check_choice(name: str, value, choices: Iterable[Any]):
    """``value`` if it is one of ``choices``, else a ``ValueError`` listing them."""
    problem = expect_choice(value, choices)
    if problem:
        raise ValueError(f"Unknown {name}. Received: {name}={value!r}; expected {problem}.")
    return value
