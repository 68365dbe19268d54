"""Head kinds and saved heads: the registry, building a head from trial params, save/load by kind.

Every head kind (:data:`HEAD_KINDS`) is a scikit-learn classifier class of
:mod:`catdog_features.heads` with ``save(path)`` / ``load(path)``. A saved head is a model file
(``<stem><suffix>``: ``.keras`` for :class:`DenseHead`, ``.h5`` for :class:`LinearHead`) plus
a JSON sidecar ``<model file>.json`` whose ``format`` names the kind, so :func:`load_head`
needs only the path. Nothing is ever loaded with pickle.

Sweep trials and ensemble members carry their head as plain params: ``{"head": "linear",
"C": 0.1}``; ``"head"`` absent means ``"dense"`` (trials files from before there were kinds).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

#: The key of trial / member params naming the head kind.
HEAD_KEY = "head"
DEFAULT_KIND = "dense"


class SavedHeadError(ValueError):
    """A saved head cannot be loaded: missing, damaged, or not a head this package wrote."""


@dataclass(frozen=True)
class HeadKind:
    """One head kind: its params name, its class in :mod:`catdog_features.heads`, its files."""

    name: str
    class_name: str
    suffix: str  # of the model file
    sidecar_format: str  # the sidecar's "format" value


HEAD_KINDS: Dict[str, HeadKind] = {
    kind.name: kind
    for kind in (
        HeadKind("dense", "DenseHead", ".keras", "catdog_features.DenseHead"),
        HeadKind("linear", "LinearHead", ".h5", "catdog_features.LinearHead"),
        HeadKind("topblock", "TopBlockHead", ".keras", "catdog_features.TopBlockHead"),  # on feature maps
    )
}


def get_kind(name) -> HeadKind:
    """The :class:`HeadKind` called ``name``; a ValueError listing the kinds otherwise."""
    kind = HEAD_KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ValueError(f"Unknown head kind. Received: head={name!r}; expected one of: {', '.join(HEAD_KINDS)}.")
    return kind


def head_class(name) -> type:
    """The class of head kind ``name``, looked up in :mod:`catdog_features.heads` at call time."""
    return getattr(importlib.import_module("catdog_features.heads"), get_kind(name).class_name)


def head_param_names(name) -> Tuple[str, ...]:
    """Constructor arguments of head kind ``name`` (what a space or a member may set)."""
    import inspect

    params = inspect.signature(head_class(name).__init__).parameters
    return tuple(n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def split_params(params: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """``(kind name, constructor kwargs)`` of trial / member params."""
    params = dict(params)
    name = params.pop(HEAD_KEY, DEFAULT_KIND)
    get_kind(name)
    return name, params


def build_head(params: Mapping[str, Any], **overrides):
    """An unfitted head of the kind and settings in ``params`` (``overrides`` win, e.g. random_state)."""
    name, kwargs = split_params(params)
    kwargs.update(overrides)
    cls = head_class(name)
    allowed = set(head_param_names(name))
    unknown = sorted(k for k in kwargs if k not in allowed)
    if unknown:
        raise ValueError(
            f"Unknown parameters for a {name} head. Received: {unknown}; expected some of: {', '.join(sorted(allowed))}."
        )
    return cls(**kwargs)


def kind_of(estimator) -> HeadKind:
    """The kind of a head instance (its class's ``head_kind``)."""
    name = getattr(type(estimator), "head_kind", None)
    if name not in HEAD_KINDS:
        raise ValueError(
            f"Received a {type(estimator).__name__}; expected a head of one of the kinds {', '.join(HEAD_KINDS)} "
            "(catdog_features.heads)."
        )
    return HEAD_KINDS[name]


# --------------------------------------------------------------------------- files
def sidecar_path(path) -> Path:
    """The JSON sidecar of a saved head's model file: ``<path>.json``."""
    return Path(str(path) + ".json")


def open_saved(cls, path, expected_format: str, fields=lambda meta: {}, version: int = 1):
    """The common start of every head kind's ``load``: ``(path, meta, head, classes, extra)``.

    Checks the model file exists, reads its sidecar, checks its ``"version"`` (1 when absent)
    is one this kind reads (1 to ``version``), builds ``cls(**params)``, decodes the classes and
    ``extra = fields(meta)`` (the kind's own sidecar entries); anything invalid is a
    :class:`SavedHeadError` naming the sidecar.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No saved head model at {str(path)!r}.")
    meta = read_sidecar(path, expected_format)
    saved = meta.get("version", 1)
    if isinstance(saved, bool) or not isinstance(saved, int) or not 1 <= saved <= version:
        raise SavedHeadError(
            f"Invalid head sidecar {str(sidecar_path(path))!r}: received a {cls.__name__} sidecar of version "
            f"{saved!r}; expected 1 to {version} (saved by a newer catdog-features? Upgrade it, or refit the head)."
        )
    try:
        head = cls(**meta["params"])
        classes = classes_from_json(meta["classes"], meta["classes_dtype"])
        extra = fields(meta)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SavedHeadError(f"Invalid head sidecar {str(sidecar_path(path))!r}: {type(exc).__name__}: {exc}.") from None
    return path, meta, head, classes, extra


def read_sidecar(path, expected_format: Optional[str] = None) -> dict:
    """The sidecar of the model file ``path`` (or the sidecar itself), checked to be a head's.

    Raises ``FileNotFoundError`` when it is missing, :class:`SavedHeadError` naming the file when
    it is not JSON or of another format.
    """
    path = Path(path)
    sidecar = path if path.name.endswith(".json") else sidecar_path(path)
    if not sidecar.is_file():
        raise FileNotFoundError(
            f"No sidecar {str(sidecar)!r} next to the saved head; expected the JSON file that save() writes."
        )
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SavedHeadError(f"Unreadable head sidecar {str(sidecar)!r}: {exc}.") from None
    formats = [k.sidecar_format for k in HEAD_KINDS.values()]
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt not in formats or (expected_format is not None and fmt != expected_format):
        expected = expected_format or " or ".join(map(repr, formats))
        raise SavedHeadError(f"Received a sidecar of format {fmt!r} at {str(sidecar)!r}; expected {expected}.")
    return meta


def save_head(estimator, stem) -> Path:
    """Save a fitted head as ``<stem><its kind's suffix>`` (+ sidecar); returns the model file."""
    kind = kind_of(estimator)
    return Path(estimator.save(Path(str(stem) + kind.suffix)))


def find_saved_head(stem) -> Optional[Path]:
    """The model file of a head saved under ``stem`` (any kind, with its sidecar), or None.

    ``stem`` may carry a kind's suffix (``models/t3/fold0.keras``): it is dropped first.
    """
    stem = str(stem)
    for kind in HEAD_KINDS.values():
        if stem.endswith(kind.suffix):
            stem = stem[: -len(kind.suffix)]
            break
    for kind in HEAD_KINDS.values():
        path = Path(stem + kind.suffix)
        if path.is_file() and sidecar_path(path).is_file():
            return path
    return None


def load_head(path):
    """Load the head saved at ``path`` (its model file), whatever its kind."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No saved head model at {str(path)!r}.")
    fmt = read_sidecar(path)["format"]
    kind = next(k for k in HEAD_KINDS.values() if k.sidecar_format == fmt)
    return head_class(kind.name).load(path)


def jsonable(value):
    """Plain JSON value for a hyperparameter; things JSON cannot hold (a RandomState) -> None."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None


def classes_to_json(classes: np.ndarray) -> Tuple[list, str]:
    """``(values, dtype tag)`` of ``classes_`` for a sidecar; :func:`classes_from_json` inverts it."""
    return classes.tolist(), "object" if classes.dtype == object else classes.dtype.str


def classes_from_json(values, dtype: str) -> np.ndarray:
    return np.asarray(values, dtype=object if dtype == "object" else np.dtype(dtype))
