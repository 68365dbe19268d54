"""``--set section.key=value`` overrides and reading the TOML file of a run config."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence, Tuple

from catdog_features.run.values import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


def _parse_value(text: str):
    """A ``--set`` value: a TOML literal (``4``, ``true``, ``["A", "B"]``) or else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


_PATH_KEYS = {("data", "train"), ("data", "labels_csv"), ("data", "test"), ("data", "sample_submission"),
              ("extract", "cache_dir"), ("output", "dir")}


def _split_override(item: str):
    if "=" not in item:
        raise ValueError(f"--set {item!r}: expected section.key=value, e.g. sweep.max_evals=10")
    dotted, text = item.split("=", 1)
    parts = [p.strip() for p in dotted.split(".")]
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"--set {item!r}: expected section.key=value, e.g. sweep.max_evals=10")
    return parts, text.strip()


def override_keys(overrides: Sequence[str] = ()) -> Dict[Tuple[str, str], str]:
    """``(section, key) -> "--set ITEM"`` of ``--set`` items (``sweep.space.lr=1`` -> ``("sweep.space", "lr")``)."""
    out = {}
    for item in overrides:
        parts, _ = _split_override(item)
        out[(".".join(parts[:-1]), parts[-1])] = f"--set {item}"
    return out


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Apply ``section.key=value`` overrides (``sweep.space.lr=0.005`` for nested tables).

    Relative paths given this way are relative to the current directory.
    """
    raw = copy.deepcopy(dict(raw))
    for item in overrides:
        parts, text = _split_override(item)
        value = _parse_value(text)
        if tuple(parts) in _PATH_KEYS and isinstance(value, str) and value.strip():
            value = os.path.abspath(os.path.expanduser(value))
        table = raw
        for part in parts[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ValueError(f"--set {item!r}: {part!r} is not a table")
        table[parts[-1]] = value
    return raw


def read_toml(path) -> Dict[str, Any]:
    """Read a TOML file; syntax errors become ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found. Received: {str(path)!r}.")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", source=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc}); expected a TOML file", source=str(path)) from None
