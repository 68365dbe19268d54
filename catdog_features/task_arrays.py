"""The arrays parallel tasks read by path: a folder of ``.npy`` files and its listing.

Stage-2 tasks (a sweep's trials, the ensemble's fold fits) run in other processes or on Spark
executors. They are sent file paths and settings, never arrays: the driver writes the feature
blocks and labels once into a task folder (on storage every worker can reach: next to the
trials file or the run folder), and each worker memory-maps them, once per process.

Layout: ``<folder>/<i>.npy`` per array and ``arrays.json`` (name -> file, shape, dtype),
written last, so a folder without its listing is never read. Folders are named
``.<stem>.tasks-<pid>-<token>``; one whose writer is gone (a killed driver) is removed by the
next :func:`make_task_folder` in the same place.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np

from catdog_features import _io

LISTING = "arrays.json"
_FOLDER = re.compile(r"^\.(?P<stem>.+)\.tasks-(?P<pid>\d+)-[0-9a-f]+$")
_opened: Dict[str, Dict[str, np.ndarray]] = {}


def make_task_folder(near: Optional[os.PathLike] = None, stem: str = "catdog") -> Path:
    """A new empty task folder in ``near`` (default: the system's temporary folder).

    Leftover folders of ``stem`` whose writing process is gone are removed first.
    """
    import tempfile

    parent = Path(near) if near is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    for entry in parent.glob(f".{stem}.tasks-*"):
        m = _FOLDER.match(entry.name)
        if m and m.group("stem") == stem and not _io._pid_alive(int(m.group("pid"))):
            shutil.rmtree(entry, ignore_errors=True)
    folder = parent / f".{stem}.tasks-{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir()
    return folder


def write_arrays(folder, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` (name -> array) into ``folder``; the listing last. Returns ``folder``."""
    folder = Path(folder)
    listing = {}
    for i, (name, array) in enumerate(arrays.items()):
        array = np.ascontiguousarray(array)
        file = f"{i}.npy"
        np.save(folder / file, array, allow_pickle=False)
        listing[str(name)] = {"file": file, "shape": list(array.shape), "dtype": array.dtype.str}
    _io.write_json(folder / LISTING, {"format": "catdog-features/task-arrays-1", "arrays": listing})
    return folder


def open_arrays(folder) -> Dict[str, np.ndarray]:
    """The arrays of a task folder as read-only memory maps (opened once per process)."""
    key = os.path.abspath(folder)
    if key not in _opened:
        listing_path = Path(folder) / LISTING
        try:
            listing = json.loads(listing_path.read_text())["arrays"]
        except (OSError, ValueError, KeyError) as exc:
            raise FileNotFoundError(
                f"Task arrays not readable at {str(listing_path)!r} ({exc}); the folder must be on storage "
                "every worker can reach (a shared file system on a cluster)."
            ) from None
        out = {}
        for name, entry in listing.items():
            array = np.load(Path(folder) / entry["file"], mmap_mode="r", allow_pickle=False)
            if list(array.shape) != entry["shape"] or array.dtype.str != entry["dtype"]:
                raise ValueError(f"Task array {name!r} in {str(folder)!r} does not match its listing.")
            out[name] = array
        _opened.clear()  # one folder at a time: a worker serves one sweep or one ensemble
        _opened[key] = out
    return _opened[key]


def remove_task_folder(folder) -> None:
    """Delete a task folder (after its tasks are done)."""
    _opened.pop(os.path.abspath(folder), None)
    shutil.rmtree(folder, ignore_errors=True)
