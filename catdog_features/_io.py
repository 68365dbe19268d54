"""One atomic writer for every small file the package writes (JSON, CSV, text, HDF5, .keras).

A file is written under a temporary name in the same folder (``.<name>.<pid>.<token>.tmp``),
flushed and fsynced, renamed over the target with :func:`os.replace`, and the folder is
fsynced so the rename itself survives a power loss. A reader sees the old file (or none) or
the new one, never half of one. When writing fails (a full disk, say) the temporary file is
removed and the error goes on; temporary files left by a process that was killed are
removed by the next write to the same target (their pid no longer runs).

Libraries that write to a path themselves (h5py, Keras' ``model.save``) use
:func:`atomic_path`; everything else uses :func:`write_text`, :func:`write_bytes`,
:func:`write_json` or :func:`write_csv`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp(?P<suffix>\.[^.]*)?$")


def fsync_dir(folder) -> None:
    """fsync a folder, so a rename or a new file in it is durable (a no-op where unsupported)."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path) -> None:
    """fsync a file by path (data written by another library through its own handle)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(folder, name: str | None = None) -> list:
    """Delete temporary files of :mod:`catdog_features._io` whose writer no longer runs.

    Parameters
    ----------
    folder : path
        Where to look.
    name : str, optional
        Only temporaries of this target file name (default: all).

    Returns
    -------
    list of Path
        The files removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP.match(entry.name)
        if m is None or (name is not None and m.group("name") != name):
            continue
        if not _pid_alive(int(m.group("pid"))):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def temp_name(path, suffix: str = "") -> Path:
    """A fresh temporary name next to ``path`` (``.<name>.<pid>.<token>.tmp<suffix>``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")


@contextlib.contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` durably.

    ``suffix`` is appended to the temporary name for writers that insist on an extension
    (Keras wants ``.keras``). If the block raises, the temporary file is deleted and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = temp_name(path, suffix)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_bytes(path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically; ``mode`` sets the permission bits (default 0o644 & ~umask)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _file_mode(mode))
    return path


def write_text(path, text: str, mode: int | None = None) -> Path:
    """Write UTF-8 text to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"), mode)


def write_json(path, data: Any, mode: int | None = None) -> Path:
    """Write JSON (indented, non-JSON values as ``str``) to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=1, default=str) + "\n", mode)


def write_csv(path, header: Sequence[str], rows: Iterable[Sequence[Any]], mode: int | None = None) -> Path:
    """Write a CSV (``\\n`` line ends) to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(list(header))
            writer.writerows(rows)
        os.chmod(tmp, _file_mode(mode))
    return path


def _file_mode(mode: int | None) -> int:
    if mode is not None:
        return mode
    # What open() would give a new file: 0o666 minus the umask (read it without changing it
    # for longer than this call: os.umask is the only way to read it).
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask
