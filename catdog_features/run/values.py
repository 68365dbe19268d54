"""Validators of run-config values (:mod:`catdog_features.run.config`), on :mod:`catdog_features._checks`.

Each takes a value as read from TOML and returns it checked (paths resolved) or raises
:class:`BadValue` saying what it received and what was expected; the config parser
prefixes the file and the key and raises :class:`ConfigError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

from catdog_features._checks import expect_float, expect_int

METHODS = ("auto", "blend", "stack", "mean", "best", "linear")  # catdog_features.ensemble.METHODS


class ConfigError(ValueError):
    """A bad run config: the message names the file (or ``--set`` item), the section and the key."""

    def __init__(self, message: str, *, source: Optional[str] = None, section: str = "", key: str = ""):
        super().__init__(message)
        self.source, self.section, self.key = source, section, key


def plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class BadValue(ValueError):
    """A bad value; the caller prefixes the file and the key."""


def where(section: str, key: str) -> str:
    return f"[{section}] {key}"


def int_value(value, minimum: int, what: str = "", *, maximum: Optional[int] = None) -> int:
    if expect_int(value, minimum, maximum):
        at_most = "" if maximum is None else f", at most {maximum}"
        raise BadValue(f"received {value!r}; expected {expect_int(None, minimum)}{what}{at_most}")
    return value


def float_value(value, low: float, high: float, what: str = "in") -> float:
    if expect_float(value, low, high, low_open=True, high_open=True):
        raise BadValue(f"received {value!r}; expected a number {what} ({low}, {high})")
    return float(value)


def bool_value(value) -> bool:
    if not isinstance(value, bool):
        raise BadValue(f"received {value!r}; expected true or false")
    return value


def str_value(value) -> str:
    if not isinstance(value, str):
        raise BadValue(f"received {value!r}; expected a string")
    return value


def path_value(value, base: Path) -> Path:
    text = str_value(value).strip()
    if not text:
        raise BadValue("received an empty string; expected a path")
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else (base / path).resolve()


def optional_path(value, base: Path) -> Optional[Path]:
    return None if str_value(value).strip() == "" else path_value(value, base)


def backbones_value(value, base: Optional[Path] = None) -> Tuple[str, ...]:
    """Backbone names; relative ``keras:`` / ``hub:`` paths resolve against ``base`` (the config's folder)."""
    from catdog_features.features.backbones import parse_backbones

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise BadValue(f"received {value!r}; expected a non-empty list of backbone names such as [\"ResNet50\", \"Xception\"]")
    try:
        return parse_backbones(value, base_dir=base)
    except ValueError as exc:
        raise BadValue(str(exc)) from None


def weights_value(value, base: Path, backbones: Sequence[str]):
    from catdog_features.features.backbones import parse_weights, weights_kind

    if not isinstance(value, (str, dict)):
        raise BadValue(f"received {value!r}; expected \"imagenet\", \"none\", a weights-file path or a table backbone = path")
    try:
        spec = parse_weights(value, base_dir=base)
    except ValueError as exc:
        raise BadValue(str(exc)) from None

    def as_path(w):  # file paths as resolved Paths, like every other path of the config
        return Path(w).resolve() if weights_kind(w) == "file" else w

    if isinstance(spec, dict):
        for name in spec:
            if name not in backbones:
                raise BadValue(f"has an entry for {name!r}, which is not in [extract] backbones {list(backbones)}")
        return {name: as_path(w) for name, w in spec.items()}
    if weights_kind(spec) == "file" and len(backbones) != 1:
        raise BadValue(
            f"received one weights file {value!r} for {len(backbones)} backbones; expected a table "
            "such as {ResNet50 = \"resnet.h5\", Xception = \"xception.h5\"}"
        )
    return as_path(spec)


def clip_value(value):
    if value == "auto":
        return "auto"
    if isinstance(value, str) or expect_float(value, 0.0, 0.5, high_open=True):
        raise BadValue(f"received {value!r}; expected \"auto\" or a number in [0, 0.5)")
    return float(value)


def views_value(value, *, plain_first: bool = False) -> Tuple[str, ...]:
    """A list of view names (or ``"plain,aug:0-7"``); ranges expand (:func:`~catdog_features.features.views.parse_views`).

    ``plain_first``: the list is what is extracted, and ``plain`` (what validation and OOF
    predictions use) is always part of it, first.
    """
    from catdog_features.features.views import ViewError, parse_views

    if not isinstance(value, (str, list, tuple)):
        raise BadValue(f"received {value!r}; expected a list of view names such as [\"plain\", \"hflip\", \"aug:0-7\"]")
    try:
        views = parse_views(value, default=())
    except ViewError as exc:
        raise BadValue(str(exc)) from None
    if plain_first:
        views = ("plain",) + tuple(v for v in views if v != "plain")
    return views


def test_from_value(value):
    from catdog_features.ensemble.oof import TEST_FROM

    if value not in TEST_FROM:
        raise BadValue(f"received {value!r}; expected one of {', '.join(TEST_FROM)}")
    return value


def method_value(value):
    if value not in METHODS:
        raise BadValue(f"received {value!r}; expected one of {', '.join(METHODS)}")
    return value
