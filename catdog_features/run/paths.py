"""Paths read from files stay inside their folder: one check for configs and run folders.

A path written in a file (``ensemble.json`` model paths and ``extraction.cache_dir``, a run
config's ``[output] dir`` and ``[extract] cache_dir``) is resolved (symbolic links
followed) and refused when it leaves the folder it belongs to, so a crafted file cannot make
a command read or write elsewhere. Where a user really wants an outside path they say so
explicitly: a command-line flag or a config key (see :mod:`catdog_features.run.config`).
"""

from __future__ import annotations

import os
from pathlib import Path


class PathEscapeError(ValueError):
    """A path read from a file resolves outside the folder it must stay in."""


def is_inside(path, root) -> bool:
    """Whether ``path`` resolves (links followed) to ``root`` or below it."""
    resolved = Path(os.path.expanduser(os.fspath(path))).resolve()
    base = Path(root).resolve()
    return resolved == base or base in resolved.parents


def check_inside(path, root, *, where: str, hint: str = "") -> Path:
    """``path`` resolved, or a :class:`PathEscapeError` naming ``where`` (file and entry).

    Parameters
    ----------
    path : path
        As read from the file; relative paths are taken relative to ``root``.
    root : path
        The folder it must stay in.
    where : str
        The file and the entry, e.g. ``"ensemble.json: models.t3[0]"``.
    hint : str
        How to allow an outside path, if there is a way (appended to the message).
    """
    raw = Path(os.path.expanduser(os.fspath(path)))
    full = raw if raw.is_absolute() else Path(root) / raw
    if not is_inside(full, root):
        raise PathEscapeError(
            f"{where}: received {os.fspath(path)!r}, which resolves to {str(full.resolve())!r} outside "
            f"{str(Path(root).resolve())!r}; expected a path inside that folder{'; ' + hint if hint else ''}."
        )
    return full.resolve()
