"""One shard of the feature store: an append-only HDF5 file of rows keyed by content hash.

This module is the one reader and writer of shard files (``<store>/<extractor>/shards/*.h5``).

Layout
------
* ``hash`` (``S64``, hex SHA-256) and ``features`` (``dtype``, ``(rows, *row_shape)``): one row
  per image content; ``failure_hash`` / ``failure_reason``: contents that cannot be decoded
  (the same bytes fail the same way, so failures are keyed like rows).
* ``state`` (int64 ``[rows, failures, sealed]``): a row (failure) counts only when its index is
  below the committed count. ``sealed`` is set when the writer finished; a sealed shard never
  changes again.
* attributes written once at creation: ``format``, ``extractor`` (the key), ``row_shape``,
  ``dtype``, ``created_at``, ``writer``.
* every dataset is chunked with HDF5's ``fletcher32`` checksum, so a flipped bit is detected
  when the chunk is read (h5py raises) and never served.

Commit protocol
---------------
For each batch: resize, write rows and failures, ``flush`` + ``fsync``; only then raise the
counters in ``state`` and ``flush`` + ``fsync`` again. A process killed at any moment leaves
every committed row valid; rows past the counters are ignored (and cut when the shard is
recovered). Before a batch is written, the free space of the file system is checked, and a
*ballast* file reserved next to the shard at creation is released when a write fails anyway
(another process filled the disk): HDF5 can then close the file consistently instead of
failing again at interpreter exit (it segfaulted there in a disk-full campaign). Either way
:class:`StoreWriteError` says which file, how many rows are safely committed and what to do.

Liveness
--------
The writer holds an exclusive ``flock`` on the shard file while it appends. Readers skip
shards whose lock is held (a live writer) and treat unsealed shards whose lock is free as
*orphans* of a killed writer: their committed rows are valid, and :func:`recover` cuts the
uncommitted tail and seals them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from catdog_features._io import fsync_dir

SHARD_FORMAT = "catdog-features-shard/1"
HASH_DTYPE = "S64"
REASON_WIDTH = 200
#: Least bytes reserved next to a shard being written (released if a write fails).
BALLAST_BYTES = 1 << 20
#: Extra free bytes wanted on top of a batch's own size before it is written.
FREE_SPACE_MARGIN = 256 << 10


class ShardError(Exception):
    """A shard file is unreadable or holds invalid data (it must not be served)."""


class StoreWriteError(RuntimeError):
    """Writing rows to the store failed; everything committed before stays valid.

    Attributes
    ----------
    path : Path
        The shard being written.
    committed : int
        Rows of this shard that are committed (safe).
    """

    def __init__(self, message: str, path, committed: int):
        super().__init__(message)
        self.path = Path(path)
        self.committed = int(committed)


class StoreFullError(StoreWriteError):
    """The file system holding the store has no room for the next batch."""


def chunk_rows(row_shape: Sequence[int], itemsize: int) -> int:
    """Rows per chunk: about 64 KiB per chunk, one chunk per row for large rows (feature maps).

    HDF5 allocates whole chunks, so small shards (an extraction that added a few images)
    waste at most one chunk per dataset; reads of many rows stay sequential.
    """
    if len(row_shape) > 1:  # a feature map: one chunk (one checksum) per image, whatever its size
        return 1
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * itemsize
    return int(max(1, min(1024, (64 << 10) // max(1, row_bytes))))


def free_bytes(folder) -> int:
    """Bytes available to this user on the file system holding ``folder``."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _h5py():
    import h5py

    return h5py


def _open(path, mode):
    # HDF5's own file locking is off: liveness is our flock, and HDF5's lock makes reads fail
    # on file systems without lock support and whenever another process has the file open.
    return _h5py().File(os.fspath(path), mode, locking=False)


def _fixed(values, width: int) -> np.ndarray:
    return np.array([v if isinstance(v, bytes) else str(v).encode("utf-8")[:width] for v in values], dtype=f"S{width}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _fsync(f) -> None:
    f.flush()
    os.fsync(f.id.get_vfd_handle())


# --------------------------------------------------------------------------- locks
def try_lock(path, exclusive: bool) -> Optional[int]:
    """A file descriptor holding ``flock`` on ``path``, or None when another process holds it."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:  # a file system without flock: nobody can hold it
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            os.close(fd)
            raise
    return fd


def unlock(fd: Optional[int]) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def is_live(path) -> bool:
    """Whether a writer process holds ``path`` (an unsealed shard being appended to)."""
    fd = try_lock(path, exclusive=False)
    if fd is None:
        return Path(path).exists()
    unlock(fd)
    return False


# --------------------------------------------------------------------------- writer
class ShardWriter:
    """Appends committed batches of rows to a new shard; see the module notes.

    Create with :meth:`create`; call :meth:`append` per batch and :meth:`seal` at the end
    (or use it as a context manager, which seals on success and aborts on error).
    """

    def __init__(self, path: Path, f, lock_fd: int, ballast: Optional[Path]):
        self.path = path
        self._f = f
        self._lock_fd = lock_fd
        self._ballast = ballast
        self.rows = 0
        self.failures = 0
        self.sealed = False

    @classmethod
    def create(cls, path, extractor: str, row_shape: Sequence[int], dtype: str = "float32",
               batch_rows: int = 64) -> "ShardWriter":
        """Create the shard file (and its ballast) and lock it for writing.

        ``batch_rows`` (the rows of a typical :meth:`append`) sizes the ballast: twice a batch,
        at least :data:`BALLAST_BYTES`.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ballast = path.with_name(f".{path.name}.ballast")
        try:
            with open(ballast, "wb") as fh:
                fh.truncate(0)
                row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                os.posix_fallocate(fh.fileno(), 0, max(BALLAST_BYTES, 2 * int(batch_rows) * row_bytes))
        except OSError as exc:
            ballast.unlink(missing_ok=True)
            raise StoreFullError(_full_message(path, 0, exc), path, 0) from None
        row_shape = tuple(int(d) for d in row_shape)
        dtype = np.dtype(dtype).name
        f = _open(path, "w-")
        lock_fd = try_lock(path, exclusive=True)
        if lock_fd is None:  # cannot happen for a fresh unique name; refuse rather than share
            f.close()
            raise ShardError(f"{path}: another process locked a shard this process just created")
        try:
            f.attrs.update({"format": SHARD_FORMAT, "extractor": extractor, "row_shape": json.dumps(row_shape),
                            "dtype": dtype, "created_at": _now(), "writer": f"{socket.gethostname()}:{os.getpid()}"})
            kw = dict(fletcher32=True, maxshape=(None,))
            f.create_dataset("state", data=np.zeros(3, np.int64), chunks=(3,), fletcher32=True)
            f.create_dataset("hash", (0,), dtype=HASH_DTYPE, chunks=(256,), **kw)
            f.create_dataset("features", (0, *row_shape), dtype=dtype, maxshape=(None, *row_shape),
                             chunks=(chunk_rows(row_shape, np.dtype(dtype).itemsize), *row_shape), fletcher32=True)
            f.create_dataset("failure_hash", (0,), dtype=HASH_DTYPE, chunks=(64,), **kw)
            f.create_dataset("failure_reason", (0,), dtype=f"S{REASON_WIDTH}", chunks=(64,), **kw)
            _fsync(f)
            fsync_dir(path.parent)
        except BaseException:
            f.close()
            unlock(lock_fd)
            path.unlink(missing_ok=True)
            ballast.unlink(missing_ok=True)
            raise
        return cls(path, f, lock_fd, ballast)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.seal()
        else:
            self.abort()
        return False

    def append(self, hashes, features, failure_hashes=(), failure_reasons=()) -> None:
        """Write one batch and commit it (durable when this returns)."""
        if self._f is None:
            raise ValueError(f"{self.path} is closed; expected an open shard writer.")
        f = self._f
        features = np.asarray(features, dtype=f["features"].dtype)
        if len(hashes) != len(features) or features.shape[1:] != f["features"].shape[1:]:
            raise ValueError(
                f"Received {len(hashes)} hashes and rows of shape {features.shape}; expected one row of shape "
                f"{f['features'].shape[1:]} per hash."
            )
        if len(failure_hashes) != len(failure_reasons):
            raise ValueError("Received failure hashes and reasons of different lengths; expected one reason per hash.")
        if not np.all(np.isfinite(features)):
            raise ValueError(f"Refusing to store non-finite feature values in {self.path.name}.")
        n, m = self.rows + len(hashes), self.failures + len(failure_hashes)
        needed = features.nbytes + 64 * (len(hashes) + len(failure_hashes)) + FREE_SPACE_MARGIN
        if free_bytes(self.path.parent) < needed:
            self._fail(StoreFullError, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        try:
            for name, values, total in (("hash", _fixed(hashes, 64), n), ("features", features, n),
                                        ("failure_hash", _fixed(failure_hashes, 64), m),
                                        ("failure_reason", _fixed(failure_reasons, REASON_WIDTH), m)):
                if len(values):
                    ds = f[name]
                    ds.resize(total, axis=0)
                    ds[total - len(values):] = values
            _fsync(f)  # the rows are durable ...
            f["state"][0:2] = [n, m]  # ... before the counters cover them
            _fsync(f)
        except (OSError, RuntimeError) as exc:
            self._fail(StoreWriteError, exc)
        self.rows, self.failures = n, m

    def _fail(self, kind, cause):
        full = isinstance(cause, OSError) and cause.errno == errno.ENOSPC or "No space left" in str(cause)
        message = (_full_message(self.path, self.rows, cause) if full else
                   f"Could not write to the feature store file {self.path} ({cause}). Its first {self.rows} "
                   "rows are committed and stay valid; run the same command again to continue.")
        self.abort()
        raise (StoreFullError if full else kind)(message, self.path, self.rows) from None

    def seal(self) -> None:
        """Mark the shard complete (it never changes again) and release it."""
        if self._f is None or self.sealed:
            return
        try:
            self._f["state"][2] = 1
            _fsync(self._f)
        except (OSError, RuntimeError) as exc:
            self._fail(StoreWriteError, exc)
        self.sealed = True
        self.close()

    def abort(self) -> None:
        """Close without sealing (the committed rows stay valid; an empty shard is removed)."""
        self.close()

    def close(self) -> None:
        if self._ballast is not None:  # first: gives HDF5 room to close consistently
            self._ballast.unlink(missing_ok=True)
            self._ballast = None
        if self._f is not None:
            with contextlib.suppress(Exception):
                self._f.close()
            self._f = None
            if self.rows == 0 and self.failures == 0:
                self.path.unlink(missing_ok=True)
        unlock(self._lock_fd)
        self._lock_fd = None


def _full_message(path, committed: int, cause) -> str:
    return (f"The disk holding the feature store is full while writing {path} ({cause}). "
            f"{committed} rows of this file are committed and stay valid. Free some space (or move the store "
            "with --cache / [extract] cache_dir), then run the same command again: it continues where it stopped.")


# --------------------------------------------------------------------------- reader
class ShardReader:
    """Read access to a shard's committed rows, with validation (see :meth:`open`)."""

    def __init__(self, path: Path, f, row_shape, dtype, rows: int, failures: int, sealed: bool):
        self.path, self._f = path, f
        self.row_shape, self.dtype = row_shape, dtype
        self.rows, self.failures, self.sealed = rows, failures, sealed

    @classmethod
    def open(cls, path, extractor: Optional[str] = None, row_shape: Optional[Sequence[int]] = None,
             dtype: Optional[str] = None) -> "ShardReader":
        """Open and validate a shard's structure and counters.

        Raises
        ------
        ShardError
            The file cannot be opened, belongs to another extractor or row shape, or its
            counters do not fit its datasets.
        """
        path = Path(path)
        try:
            f = _open(path, "r")
        except (OSError, RuntimeError) as exc:
            raise ShardError(f"{path}: cannot be opened ({exc})") from None
        try:
            reader = cls._validated(path, f, extractor, row_shape)
            if dtype is not None and reader.dtype != np.dtype(dtype):
                raise ShardError(f"{path}: rows of dtype {reader.dtype}, expected {np.dtype(dtype)}")
            return reader
        except ShardError:
            f.close()
            raise
        except Exception as exc:  # missing datasets/attributes, wrong types, a damaged chunk
            f.close()
            raise ShardError(f"{path}: not a valid shard ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _validated(cls, path, f, extractor, row_shape):
        attrs = f.attrs
        if attrs.get("format") != SHARD_FORMAT:
            raise ShardError(f"{path}: format {attrs.get('format')!r}, expected {SHARD_FORMAT!r}")
        if extractor is not None and attrs.get("extractor") != extractor:
            raise ShardError(f"{path}: belongs to extractor {attrs.get('extractor')!r}, not {extractor!r}")
        shape = tuple(json.loads(attrs["row_shape"]))
        if row_shape is not None and tuple(row_shape) != shape:
            raise ShardError(f"{path}: rows of shape {shape}, expected {tuple(row_shape)}")
        feats = f["features"]
        if feats.shape[1:] != shape or feats.dtype.name != attrs["dtype"] or feats.dtype.kind != "f":
            raise ShardError(f"{path}: features dataset {feats.shape} {feats.dtype} does not match {shape} {attrs['dtype']}")
        state = f["state"][()]
        if state.shape != (3,):
            raise ShardError(f"{path}: state has shape {state.shape}, expected (3,)")
        rows, failures, sealed = (int(v) for v in state)
        if not (0 <= rows <= min(len(f["hash"]), len(feats)) and 0 <= failures <= len(f["failure_hash"])
                and failures <= len(f["failure_reason"]) and sealed in (0, 1)):
            raise ShardError(f"{path}: counters {rows} rows / {failures} failures do not fit its datasets")
        if sealed and (len(f["hash"]) != rows or len(feats) != rows or len(f["failure_hash"]) != failures):
            raise ShardError(f"{path}: sealed with {rows} rows but holds {len(feats)}")
        per_chunk = feats.chunks[0]
        if rows and feats.id.get_num_chunks() < -(-rows // per_chunk):
            raise ShardError(f"{path}: some committed rows were never written to disk")
        return cls(path, f, shape, np.dtype(attrs["dtype"]), rows, failures, bool(sealed))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def hashes(self) -> np.ndarray:
        """Committed row hashes (``S64``), validated: well-formed and unique."""
        return self._checked_hashes(self._read("hash", 0, self.rows), "hash")

    def failure_records(self) -> Tuple[np.ndarray, np.ndarray]:
        """Committed failure hashes and reasons."""
        hashes = self._checked_hashes(self._read("failure_hash", 0, self.failures), "failure_hash")
        return hashes, self._read("failure_reason", 0, self.failures)

    def _checked_hashes(self, values: np.ndarray, name: str) -> np.ndarray:
        lengths = np.char.str_len(values)
        if len(values) and (lengths.min() != 64 or len(np.unique(values)) != len(values)):
            raise ShardError(f"{self.path}: dataset {name!r} holds malformed or repeated content hashes")
        return values

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        try:
            return self._f[name][start:stop]
        except (OSError, RuntimeError, ValueError) as exc:  # fletcher32 mismatch, damaged b-tree
            raise ShardError(f"{self.path}: rows {start}-{stop - 1} of {name!r} cannot be read ({exc})") from None

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Features of the given committed rows (any order), checked finite; ``ShardError`` if not."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.rows:
            raise ShardError(f"{self.path}: row {int(rows.max())} requested, {self.rows} committed")
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        # Whole chunks, contiguous runs: h5py's point selections are slow for many rows.
        per_chunk = self._f["features"].chunks[0]
        breaks = np.flatnonzero(np.diff(sorted_rows) > per_chunk) + 1
        for run in np.split(np.arange(len(sorted_rows)), breaks):
            lo, hi = int(sorted_rows[run[0]]), int(sorted_rows[run[-1]]) + 1
            block = self._read("features", lo, hi)
            out[order[run]] = block[sorted_rows[run] - lo]
        bad = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
        if bad.any():
            raise ShardError(f"{self.path}: {int(bad.sum())} stored rows hold NaN or inf")
        return out

    def scan(self, step_rows: int = 4096):
        """Every committed row block ``(start, stop, ok)``, chunk-aligned: what ``verify`` reads.

        A block that fails is read again chunk by chunk, so the damage is narrowed down to
        the chunks that hold it (and salvage keeps every other row).
        """
        per_chunk = self._f["features"].chunks[0]
        step = per_chunk * max(1, int(step_rows) // per_chunk)
        for lo in range(0, self.rows, step):
            hi = min(self.rows, lo + step)
            if self._readable(lo, hi):
                yield lo, hi, True
                continue
            for c in range(lo, hi, per_chunk):
                yield c, min(hi, c + per_chunk), self._readable(c, min(hi, c + per_chunk))

    def _readable(self, lo: int, hi: int) -> bool:
        try:
            self.read_rows(np.arange(lo, hi))
        except ShardError:
            return False
        return True


# --------------------------------------------------------------------------- recovery
def recover(path) -> bool:
    """Seal an orphaned shard (its writer died): cut rows past the counters, set ``sealed``.

    Returns False when another process holds the shard (a live writer) or it is already
    sealed; raises :class:`ShardError` when it is damaged.
    """
    path = Path(path)
    fd = try_lock(path, exclusive=True)
    if fd is None:
        return False
    try:
        with ShardReader.open(path) as reader:
            if reader.sealed:
                return False
            rows, failures = reader.rows, reader.failures
        f = _open(path, "r+")
        try:
            for name, n in (("hash", rows), ("features", rows), ("failure_hash", failures), ("failure_reason", failures)):
                f[name].resize(n, axis=0)
            f["state"][2] = 1
            _fsync(f)
        finally:
            f.close()
        return True
    finally:
        unlock(fd)
        Path(path).with_name(f".{Path(path).name}.ballast").unlink(missing_ok=True)
