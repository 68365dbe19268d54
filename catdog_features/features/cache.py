"""HDF5 feature cache: fingerprint, chunked crash-safe appends, commit marker, resume, lock.

One HDF5 file per (image set, backbone, view) *fingerprint* under ``cache_dir``, named
``<Backbone>-<size>-<view>-<fingerprint[:16]>.h5``. The fingerprint is a SHA-256 over a
canonical JSON of everything that changes the vectors: the backbone (constructor,
preprocessing, pooling), the weights identity (content hash of a local file), the input
size, the view, the reader's numerics (:data:`catdog_features.features.reader.READER_VERSION`),
the TensorFlow and Keras versions, and the ordered list of image ids with the hash of
each file's *bytes* (size + mtime would miss an edited image).

Layout of one file
------------------
* ``features`` float32 ``(rows, dim)``, chunked, resizable; ``positions`` int64 (input
  position of each row, ascending); ``ids`` (UTF-8, fixed width); ``labels`` int64 (-1 when
  the set is unlabeled; informational, labels do not change vectors and are not
  fingerprinted -- :func:`~catdog_features.features.extract.extract_features` takes them from the
  dataset).
* ``failures/position``, ``failures/path``, ``failures/reason``: one record per unusable image.
* ``inputs/ids``, ``inputs/content_hash``: the fingerprinted image list, for inspection.
* root attributes: ``format_version``, ``fingerprint``, ``n_inputs``, ``committed_inputs``,
  ``complete``, ``batch_size``, ``images_per_s`` (model throughput of the run that completed
  it, informational) and ``config`` (the fingerprint's inputs as JSON text, readable with
  ``h5dump -A`` or ``h5py``).

Strings are stored with a fixed width, never as variable-length strings: variable-length
data lives in HDF5's global heap, and a SIGKILL stress test (150 kills at random moments of
an append loop) left a heap that a resumed writer could not write to ("bad heap index"),
while fixed-width and numeric datasets survived every kill.

Commit protocol (crash safety)
------------------------------
For each batch: append the rows and failure records, ``flush`` + ``fsync``, *then* raise
``committed_inputs`` to the batch's end and ``flush`` + ``fsync`` again. A row counts only
when ``committed_inputs`` covers its position. On resume, rows and failures beyond
``committed_inputs`` (a batch whose commit did not happen) are truncated and the work goes
on from there. Batches are aligned to input positions and the model always sees padded,
fixed-shape batches, so a resumed entry is bit-identical to an uninterrupted one.

A file that cannot be opened or fails validation is reported with a :class:`CacheWarning`,
moved aside as ``<name>.corrupt-<timestamp>`` and recomputed.

Concurrency
-----------
Writers take an exclusive ``fcntl.flock`` on ``<entry>.lock`` (the pid is written into it);
a second writer waits up to ``lock_timeout`` seconds and then fails with
:class:`CacheLockedError`. Complete files are never modified again, so reading one needs no
lock. HDF5's own file locking is turned off (``locking=False``): our lock file already
serialises writers, and HDF5's flock makes reads fail on file systems without lock support
and whenever any other process has the file open.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import signal
import socket
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

#: Version of the on-disk layout; part of the fingerprint, so a new layout means new files.
FORMAT_VERSION = 1
#: Views of an image set that can be cached: the image as is, or mirrored left-right (TTA).
VIEWS = ("plain", "hflip")
#: Seconds a writer waits for another process holding the same entry before giving up.
DEFAULT_LOCK_TIMEOUT = 30.0
#: Marker content hashes for inputs whose bytes cannot be read (the reader records why).
MISSING_HASH = "missing"
UNREADABLE_HASH = "unreadable"
_REASON_WIDTH = 200
_MIN_PATH_WIDTH = 256
# Test hook (tests/test_extract.py): "commit:K" SIGKILLs this process right after the K-th
# commit of the process, "append:K" after the K-th batch's rows are flushed but before
# they are committed. Never set outside tests.
_KILL_ENV = "CATDOG_FEATURES_TEST_KILL"


class CacheWarning(UserWarning):
    """A cache file was unusable (corrupt, truncated, foreign) and is being recomputed."""


class CacheLockedError(RuntimeError):
    """Another process is writing the same cache entry."""


# --------------------------------------------------------------------------- fingerprint
def hash_file(path) -> str:
    """BLAKE2b-128 hex digest of a file's bytes, or a marker if it cannot be read.

    Missing files hash to ``"missing"``, other unreadable paths (permissions, directories,
    I/O errors) to ``"unreadable:<error>"``: the reader turns them into failure records, and
    the fingerprint still changes when such a file appears or becomes readable.
    """
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            while True:
                block = fh.read(1 << 20)
                if not block:
                    break
                digest.update(block)
    except (FileNotFoundError, NotADirectoryError):
        return MISSING_HASH
    except (OSError, ValueError) as exc:
        return f"{UNREADABLE_HASH}:{type(exc).__name__}"
    return digest.hexdigest()


def hash_files(paths: Sequence, num_workers: Optional[int] = None) -> List[str]:
    """Content hashes of many files, in order (threads: hashlib and file reads drop the GIL)."""
    paths = [os.fspath(p) for p in paths]
    if len(paths) < 64:
        return [hash_file(p) for p in paths]
    workers = num_workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="catdog-hash") as pool:
        return list(pool.map(hash_file, paths, chunksize=64))


def images_digest(ids: Sequence[str], hashes: Sequence[str]) -> str:
    """SHA-256 over the ordered list of ``(id, content hash)`` pairs."""
    if len(ids) != len(hashes):
        raise ValueError(f"Received {len(ids)} ids and {len(hashes)} hashes; expected one hash per id.")
    payload = json.dumps([[str(i), str(h)] for i, h in zip(ids, hashes)], separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _dist_version(*names) -> Optional[str]:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=None)
def _library_versions() -> Tuple[Tuple[str, str], ...]:
    tf_version = _dist_version("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel", "tf-nightly")
    if tf_version is None:  # an unusual distribution name: ask the module itself
        import tensorflow as tf

        tf_version = tf.__version__
    keras_version = _dist_version("keras", "keras-nightly")
    if keras_version is None:
        import keras

        keras_version = keras.__version__
    return (("tensorflow", tf_version), ("keras", keras_version))


def library_versions() -> Dict[str, str]:
    """TensorFlow and Keras versions, from package metadata (does not import TensorFlow).

    Looked up once per process: the modules in use do not change under a running process.
    """
    return dict(_library_versions())


def entry_config(spec, weights_id: str, image_size: int, view: str, digest: str, n_inputs: int,
                 versions: Optional[Mapping[str, str]] = None) -> dict:
    """The fingerprint's inputs for one cache entry, as a JSON-able dict.

    Parameters
    ----------
    spec : BackboneSpec
        The backbone.
    weights_id : str
        :func:`catdog_features.features.backbones.weights_identity` of the weights.
    image_size : int
        Resolved square input size.
    view : {"plain", "hflip"}
        Which view of the images.
    digest : str
        :func:`images_digest` of the ordered ``(id, content hash)`` list.
    n_inputs : int
        Number of input images.
    versions : mapping, optional
        ``{"tensorflow": ..., "keras": ...}``; default :func:`library_versions`.
    """
    from catdog_features.features.reader import READER_VERSION

    if view not in VIEWS:
        raise ValueError(f"Unknown view. Received: view={view!r}; expected one of {VIEWS}.")
    versions = dict(versions or library_versions())
    return {
        "format_version": FORMAT_VERSION,
        "backbone": {
            "name": spec.name,
            "module": spec.module,
            "constructor": spec.constructor,
            "preprocess": spec.preprocess,
            "pooling": spec.pooling,
            "dim": int(spec.dim),
        },
        "weights": str(weights_id),
        "image_size": int(image_size),
        "view": view,
        "reader_version": READER_VERSION,
        "tensorflow": versions["tensorflow"],
        "keras": versions["keras"],
        "images": {"count": int(n_inputs), "digest": digest},
    }


def fingerprint(config: Mapping) -> str:
    """SHA-256 hex digest of the canonical JSON of ``config``."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def entry_filename(config: Mapping, fp: Optional[str] = None) -> str:
    """``<Backbone>-<size>-<view>-<fingerprint[:16]>.h5``."""
    fp = fp or fingerprint(config)
    return f"{config['backbone']['name']}-{config['image_size']}-{config['view']}-{fp[:16]}.h5"


# --------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Segment:
    """A run of input positions ``[start, stop)`` read in one pass for ``backbones``."""

    start: int
    stop: int
    backbones: Tuple[str, ...]


def plan_segments(committed: Mapping[str, int], n_inputs: int, batch_size: int) -> Tuple[Segment, ...]:
    """Decide which input positions still need work, and for which backbones (pure).

    Each backbone needs the positions ``[committed[b], n_inputs)``. Work is read in
    batches aligned to multiples of ``batch_size`` from position 0, the same batches an
    uninterrupted run reads, so a backbone starts at ``floor(committed / batch_size) *
    batch_size`` (that is ``committed`` itself whenever the entry was written with this
    batch size; otherwise its first batch is recomputed and only the rows it lacks are
    kept). Consecutive positions needed by the same backbones form one segment.

    Parameters
    ----------
    committed : mapping of str -> int
        Backbone name -> input positions already committed in its cache entry.
    n_inputs : int
        Number of input images.
    batch_size : int
        Positions per batch (>= 1).

    Returns
    -------
    tuple of Segment
        Non-overlapping, ascending, every boundary a multiple of ``batch_size`` except
        ``n_inputs``; ``backbones`` keep the order of ``committed``. Empty when nothing is
        left to do.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"Invalid batch_size. Received: batch_size={batch_size!r}; expected an int >= 1.")
    if isinstance(n_inputs, bool) or not isinstance(n_inputs, (int, np.integer)) or n_inputs < 0:
        raise ValueError(f"Invalid n_inputs. Received: n_inputs={n_inputs!r}; expected an int >= 0.")
    starts = {}
    for name, done in committed.items():
        if isinstance(done, bool) or not isinstance(done, (int, np.integer)) or not 0 <= done <= n_inputs:
            raise ValueError(
                f"Invalid committed count for {name}. Received: {done!r}; expected an int in [0, {n_inputs}]."
            )
        if done < n_inputs:
            starts[name] = (int(done) // batch_size) * batch_size
    bounds = sorted(set(starts.values())) + [int(n_inputs)]
    return tuple(
        Segment(lo, hi, tuple(name for name, s in starts.items() if s <= lo))
        for lo, hi in zip(bounds[:-1], bounds[1:])
        if hi > lo
    )


# --------------------------------------------------------------------------- locking
def _lock_holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text.split()[0] if text else "unknown"


class EntryLock:
    """Exclusive inter-process lock on one cache entry (``fcntl.flock`` on ``<entry>.lock``).

    Parameters
    ----------
    entry : path
        The ``.h5`` file to protect; the lock file sits next to it.
    timeout : float
        Seconds to wait for another holder before raising :class:`CacheLockedError`.
    on_wait : callable, optional
        Called once with a message when the lock is busy and we start waiting.

    Notes
    -----
    The lock dies with its process (kill -9 included), so a crashed writer never leaves
    the entry locked. Lock files are left in place: deleting one while another process
    has it open would let two writers lock different files. On a file system without
    ``flock`` support a :class:`CacheWarning` is issued and the entry is used unlocked.
    """

    def __init__(self, entry, timeout: float = DEFAULT_LOCK_TIMEOUT, poll: float = 0.1, on_wait=None):
        self.entry = Path(entry)
        self.path = self.entry.with_name(self.entry.name[: -len(".h5")] + ".lock"
                                         if self.entry.name.endswith(".h5") else self.entry.name + ".lock")
        self.timeout = float(timeout)
        self.poll = poll
        self.on_wait = on_wait
        self._fh = None

    def acquire(self) -> "EntryLock":
        fh = open(self.path, "a+")
        deadline = time.monotonic() + self.timeout
        waited = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    warnings.warn(
                        f"Cannot lock {self.path} ({exc.strerror}); the file system has no flock support. "
                        "Continuing without a lock: do not run two extractions on this cache at once.",
                        CacheWarning, stacklevel=3,
                    )
                    break
                fh.close()
                raise
            if not waited and self.on_wait is not None:
                self.on_wait(
                    f"waiting up to {self.timeout:g}s for another process (pid {_lock_holder(self.path)}) "
                    f"writing {self.entry.name}"
                )
            waited = True
            if time.monotonic() >= deadline:
                holder = _lock_holder(self.path)
                fh.close()
                raise CacheLockedError(
                    f"Another process (pid {holder}) is writing the cache entry {self.entry}; waited "
                    f"{self.timeout:g}s. Wait for it to finish and run again (the finished entry is then "
                    "read from the cache), or use a different cache directory."
                )
            time.sleep(self.poll)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            except OSError:
                pass
            self._fh.close()
            self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# --------------------------------------------------------------------------- HDF5 entry
@dataclass
class EntryData:
    """The rows of one complete cache entry."""

    path: str
    positions: np.ndarray  # int64 (rows,)
    features: np.ndarray  # float32 (rows, dim)
    failures: List[Tuple[int, str, str]] = field(default_factory=list)  # (position, path, reason)
    config: dict = field(default_factory=dict)


class _Corrupt(Exception):
    """The file exists but is not a valid entry for this fingerprint."""


def _h5():
    import h5py

    return h5py


def _open_h5(path, mode):
    # locking=False: see the module notes. HDF5_USE_FILE_LOCKING in the environment still
    # overrides it; _is_lock_error() turns the resulting failure into a clear message.
    return _h5().File(str(path), mode, locking=False)


def _is_lock_error(exc: BaseException) -> bool:
    return isinstance(exc, BlockingIOError) or "unable to lock file" in str(exc)


def _lock_error(path, exc) -> CacheLockedError:
    env = os.environ.get("HDF5_USE_FILE_LOCKING")
    hint = (f" HDF5_USE_FILE_LOCKING={env} is set in the environment; unset it or set it to FALSE." if env else "")
    return CacheLockedError(
        f"HDF5 could not lock the cache file {path} ({exc}). Another program (e.g. a notebook) may "
        f"have it open; close it and run again.{hint}"
    )


def _fixed(strings, width: int) -> np.ndarray:
    """UTF-8 encode into a fixed-width byte array, cutting at ``width`` bytes if needed."""
    return np.array([s.encode("utf-8")[:width] for s in strings], dtype=f"S{width}")


def _text(values) -> List[str]:
    return [v.decode("utf-8", errors="replace") for v in values]


def _utf8_width(strings, minimum: int = 1) -> int:
    return max([minimum] + [len(s.encode("utf-8")) for s in strings])


def _str_attr(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_complete_handle(f, path, fp: str, n_inputs: int) -> EntryData:
    attrs = f.attrs
    if int(attrs["format_version"]) != FORMAT_VERSION or _str_attr(attrs["fingerprint"]) != fp:
        raise _Corrupt("it belongs to another format or fingerprint")
    if int(attrs["n_inputs"]) != n_inputs or int(attrs["committed_inputs"]) != n_inputs:
        raise _Corrupt("its counters do not match the image set")
    positions = f["positions"][:].astype(np.int64)
    features = f["features"][:]
    fpos = f["failures/position"][:].astype(np.int64)
    if len(positions) + len(fpos) != n_inputs or features.shape[0] != len(positions):
        raise _Corrupt(f"{len(positions)} rows + {len(fpos)} failures != {n_inputs} inputs")
    failures = list(zip(fpos.tolist(), _text(f["failures/path"][:]), _text(f["failures/reason"][:])))
    return EntryData(str(path), positions, features.astype(np.float32, copy=False), failures,
                     json.loads(_str_attr(attrs["config"])))


def read_complete(path, fp: str, n_inputs: int) -> Optional[EntryData]:
    """Read a complete entry without locking; ``None`` if absent, incomplete or unreadable.

    Never raises for a bad file: the caller then takes the entry's lock and decides
    (resume, or move aside as corrupt) with the writer excluded.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with _open_h5(path, "r") as f:
            if not bool(f.attrs.get("complete", False)):
                return None
            return _read_complete_handle(f, path, fp, n_inputs)
    except Exception:  # corrupt, being written, foreign: resolved under the lock
        return None


def _maybe_kill(stage: str, count: int) -> None:
    hook = os.environ.get(_KILL_ENV)
    if hook and hook == f"{stage}:{count}":
        os.kill(os.getpid(), signal.SIGKILL)


class EntryWriter:
    """One cache entry opened for appending (created, resumed, or recovered).

    Open it with :meth:`open` while holding the entry's :class:`EntryLock`.

    Attributes
    ----------
    path : Path
        The HDF5 file.
    committed : int
        Input positions fully processed (rows or failure records committed).
    resumed_from : int
        ``committed`` when the file was opened.
    recovered : str or None
        Why an unusable file was moved aside, if that happened.
    """

    _ROW_DATASETS = ("features", "positions", "ids", "labels")
    _FAILURE_DATASETS = ("failures/position", "failures/path", "failures/reason")

    def __init__(self, path, f, fp, n_inputs, input_ids, labels, recovered=None):
        self.path = Path(path)
        self._f = f
        self.fingerprint = fp
        self.n_inputs = n_inputs
        self._input_ids = input_ids
        self._labels = labels
        self.committed = int(f.attrs["committed_inputs"])
        self.resumed_from = self.committed
        self.complete = bool(f.attrs["complete"])
        self.recovered = recovered
        self._id_width = f["ids"].dtype.itemsize
        self._path_width = f["failures/path"].dtype.itemsize
        self._commits = 0
        try:  # sec2 driver: the OS file descriptor, for fsync
            self._fd = f.id.get_vfd_handle()
        except Exception:  # other drivers: flush only
            self._fd = None

    # -- opening --------------------------------------------------------------------
    @classmethod
    def open(cls, path, config: Mapping, n_inputs: int, dim: int, input_ids: Sequence[str],
             input_hashes: Sequence[str], labels: Optional[np.ndarray] = None,
             batch_size: int = 32, input_paths: Sequence[str] = ()) -> "EntryWriter":
        """Open ``path`` for appending: resume a valid file, else (re)create it.

        A file that cannot be opened or is not a valid entry for ``config`` is moved aside
        (``<name>.corrupt-<timestamp>``) with a :class:`CacheWarning`.
        """
        path = Path(path)
        fp = fingerprint(config)
        input_ids = [str(i) for i in input_ids]
        recovered = None
        if path.exists():
            f = None
            try:
                f = _open_h5(path, "a")
                cls._validate_and_truncate(f, fp, n_inputs, dim)
                return cls(path, f, fp, n_inputs, input_ids, labels)
            except Exception as exc:
                if f is not None:
                    try:
                        f.close()
                    except Exception:
                        pass
                if _is_lock_error(exc):
                    raise _lock_error(path, exc) from None
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
                os.replace(path, aside)
                recovered = f"cache file {path} was unusable ({type(exc).__name__}: {why}); moved it to {aside.name} and recomputing this entry"
                warnings.warn(recovered, CacheWarning, stacklevel=2)
        f = cls._create(path, config, fp, n_inputs, dim, input_ids, input_hashes, batch_size, input_paths)
        return cls(path, f, fp, n_inputs, input_ids, labels, recovered)

    @classmethod
    def _create(cls, path, config, fp, n_inputs, dim, input_ids, input_hashes, batch_size, input_paths):
        h5py = _h5()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        f = h5py.File(str(tmp), "w", locking=False)
        try:
            id_width = _utf8_width(input_ids)
            path_width = _utf8_width(input_paths, _MIN_PATH_WIDTH)
            rows_per_chunk = int(max(16, min(1024, (1 << 20) // (4 * max(dim, 1)))))
            f.create_dataset("features", (0, dim), maxshape=(None, dim), chunks=(rows_per_chunk, dim), dtype="f4")
            for name, dtype in (("positions", "i8"), ("labels", "i8"), ("ids", f"S{id_width}")):
                f.create_dataset(name, (0,), maxshape=(None,), chunks=(4096,), dtype=dtype)
            fail = f.create_group("failures")
            for name, dtype in (("position", "i8"), ("path", f"S{path_width}"), ("reason", f"S{_REASON_WIDTH}")):
                fail.create_dataset(name, (0,), maxshape=(None,), chunks=(256,), dtype=dtype)
            inputs = f.create_group("inputs")
            inputs.create_dataset("ids", data=_fixed(input_ids, id_width))
            inputs.create_dataset("content_hash", data=_fixed(input_hashes, _utf8_width(input_hashes)))
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["fingerprint"] = fp
            f.attrs["config"] = json.dumps(config, sort_keys=True, indent=1)
            f.attrs["n_inputs"] = int(n_inputs)
            f.attrs["batch_size"] = int(batch_size)
            f.attrs["committed_inputs"] = 0
            f.attrs["complete"] = False
            f.flush()
            os.fsync(f.id.get_vfd_handle())
            f.close()
            # Created under a temporary name and renamed, so a kill during creation never
            # leaves a half-made file under the entry's name.
            os.replace(tmp, path)
        except BaseException:
            try:
                f.close()
            finally:
                tmp.unlink(missing_ok=True)
            raise
        return _open_h5(path, "a")

    @classmethod
    def _validate_and_truncate(cls, f, fp, n_inputs, dim) -> None:
        attrs = f.attrs
        for key in ("format_version", "fingerprint", "n_inputs", "committed_inputs", "complete", "config"):
            if key not in attrs:
                raise _Corrupt(f"attribute {key!r} is missing")
        if int(attrs["format_version"]) != FORMAT_VERSION:
            raise _Corrupt(f"format_version {int(attrs['format_version'])} != {FORMAT_VERSION}")
        if _str_attr(attrs["fingerprint"]) != fp:
            raise _Corrupt("its fingerprint differs from its name")
        if int(attrs["n_inputs"]) != n_inputs or f["features"].shape[1] != dim:
            raise _Corrupt("its shape does not match the image set or backbone")
        committed = int(attrs["committed_inputs"])
        if not 0 <= committed <= n_inputs:
            raise _Corrupt(f"committed_inputs={committed} is outside [0, {n_inputs}]")
        positions = f["positions"][:]
        fpos = f["failures/position"][:]
        for name, arr in (("positions", positions), ("failures/position", fpos)):
            if len(arr) > 1 and not np.all(np.diff(arr) > 0):
                raise _Corrupt(f"{name} is not strictly ascending")
        keep = int(np.searchsorted(positions, committed))
        fkeep = int(np.searchsorted(fpos, committed))
        if keep + fkeep != committed:
            raise _Corrupt(f"{keep} rows + {fkeep} failures below position {committed} != {committed}")
        for name in cls._ROW_DATASETS:
            if f[name].shape[0] < keep:
                raise _Corrupt(f"dataset {name!r} has {f[name].shape[0]} rows; expected at least {keep}")
        for name in cls._FAILURE_DATASETS:
            if f[name].shape[0] < fkeep:
                raise _Corrupt(f"dataset {name!r} has {f[name].shape[0]} rows; expected at least {fkeep}")
        # Read every committed row once: a damaged chunk fails here, not after hours of work.
        step = max(1, f["features"].chunks[0] * 8)
        for lo in range(0, keep, step):
            f["features"][lo:min(keep, lo + step)]
        # Drop what an interrupted batch appended beyond the commit marker.
        if any(f[name].shape[0] != keep for name in cls._ROW_DATASETS) or any(
            f[name].shape[0] != fkeep for name in cls._FAILURE_DATASETS
        ):
            for name in cls._ROW_DATASETS:
                f[name].resize(keep, axis=0)
            for name in cls._FAILURE_DATASETS:
                f[name].resize(fkeep, axis=0)
            f.flush()
        if committed < n_inputs and bool(attrs["complete"]):
            raise _Corrupt("marked complete but not every input is committed")

    # -- writing --------------------------------------------------------------------
    def _sync(self) -> None:
        # h5py's flush() hands HDF5's buffers to the OS (enough for kill -9); fsync makes
        # them durable (power loss), and orders the data before the commit marker.
        self._f.flush()
        if self._fd is not None:
            os.fsync(self._fd)

    def append(self, start: int, stop: int, ok: np.ndarray, features: np.ndarray,
               failures: Sequence[Tuple[int, str, str]]) -> None:
        """Append one batch covering positions ``[start, stop)`` and commit it.

        ``ok`` are the decoded positions with one feature row each; ``failures`` the
        ``(position, path, reason)`` records of the others. Positions already committed
        (a batch that overlaps the resume point) are skipped.
        """
        if not start <= self.committed < stop <= self.n_inputs:
            raise ValueError(
                f"Batch [{start}, {stop}) does not continue {self.path.name}, committed up to {self.committed}."
            )
        ok = np.asarray(ok, dtype=np.int64)
        features = np.asarray(features, dtype=np.float32)
        if len(ok) != len(features):
            raise ValueError(f"Received {len(ok)} positions and {len(features)} feature rows; expected equal.")
        keep = ok >= self.committed
        ok, features = ok[keep], features[keep]
        failures = sorted((int(p), str(path), str(r)) for p, path, r in failures if p >= self.committed)
        if len(ok) + len(failures) != stop - self.committed:
            raise ValueError(
                f"Batch [{start}, {stop}) accounts for {len(ok)} rows + {len(failures)} failures; "
                f"expected {stop - self.committed}."
            )
        f = self._f
        if len(ok):
            n = f["positions"].shape[0]
            for name in self._ROW_DATASETS:
                f[name].resize(n + len(ok), axis=0)
            f["features"][n:] = features
            f["positions"][n:] = ok
            f["ids"][n:] = _fixed([self._input_ids[p] for p in ok], self._id_width)
            f["labels"][n:] = -1 if self._labels is None else np.asarray(self._labels)[ok]
        if failures:
            m = f["failures/position"].shape[0]
            for name in self._FAILURE_DATASETS:
                f[name].resize(m + len(failures), axis=0)
            f["failures/position"][m:] = [p for p, _, _ in failures]
            f["failures/path"][m:] = _fixed([p for _, p, _ in failures], self._path_width)
            f["failures/reason"][m:] = _fixed([r for _, _, r in failures], _REASON_WIDTH)
        self._sync()
        self._commits += 1
        _maybe_kill("append", self._commits)
        f.attrs["committed_inputs"] = int(stop)
        self._sync()
        self.committed = int(stop)
        _maybe_kill("commit", self._commits)

    def finish(self, images_per_s: Optional[float] = None) -> None:
        """Mark the entry complete (every input committed).

        ``images_per_s`` (the model's throughput in this run, if known) is recorded as an
        informational attribute, read by :mod:`catdog_features.report`.
        """
        if self.committed != self.n_inputs:
            raise ValueError(f"{self.path.name}: only {self.committed} of {self.n_inputs} inputs are committed.")
        if not self.complete:
            if images_per_s:
                self._f.attrs["images_per_s"] = float(images_per_s)
            self._f.attrs["complete"] = True
            self._sync()
            self.complete = True

    def read(self) -> EntryData:
        """The entry's rows (only valid once complete)."""
        return _read_complete_handle(self._f, self.path, self.fingerprint, self.n_inputs)

    def close(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            finally:
                self._f = None
