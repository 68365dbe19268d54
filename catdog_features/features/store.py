"""The content-addressed feature store: each image content goes through each extractor once, ever.

Layout of a store folder (``features_cache/`` by default)::

    <store>/
      <Backbone>-<size>-<view>-<key16>/   one folder per extractor (see fingerprint.extractor_config)
        extractor.json                    the extractor's settings (written once; names the key)
        shards/<stamp>-<host>-<pid>-<token>.h5   append-only shards (catdog_features.features.shard)
        index.h5                          content hash -> (shard, row); derived, rebuilt when stale
        index.lock                        held only while the index is rebuilt
        damaged/                          shards that failed validation, kept for inspection
      legacy/                             per-list cache files of catdog-features <= 0.1 (features.legacy)

The shards alone are the source of truth. The index lists the sealed shards it was built from
(name, size, mtime); it is stale when one of them changed or disappeared, or when a shard it
does not list is not being written by a live process (a finished or killed writer): then it
is rebuilt, reusing the entries of unchanged shards. A shard that fails validation on read
(checksum, shape, dtype, non-finite values, counters) is *quarantined*: its readable rows are
copied into a new shard, the file is moved to ``damaged/`` with a :class:`CacheWarning`, and
the rows that were lost are computed again by the extraction that asked for them.

Writers never wait for each other: every extraction writes shards of its own, and
overlapping work of two concurrent extractions only duplicates rows, which the index
deduplicates (the first shard in name order wins; rows are deterministic per content).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import secrets
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from catdog_features import _io
from catdog_features.features import fingerprint
from catdog_features.features.shard import HASH_DTYPE, ShardError, ShardReader, ShardWriter, is_live, recover

CONFIG_NAME = "extractor.json"
INDEX_NAME = "index.h5"
SHARDS = "shards"
DAMAGED = "damaged"
INDEX_FORMAT = "catdog-features-index/1"
#: Seconds to wait for another process rebuilding an index before raising CacheLockedError.
DEFAULT_LOCK_TIMEOUT = 30.0


class CacheWarning(UserWarning):
    """Stored data was unusable (damaged, foreign) and is being recomputed, or was moved aside."""


class CacheLockedError(RuntimeError):
    """Another process kept a store lock for longer than the timeout."""


class RowsLost(Exception):
    """Rows found in the index could not be served (their shard was quarantined); recompute them."""


@dataclass
class Index:
    """Sorted content hashes of an extractor and where each one is stored."""

    hashes: np.ndarray  # S64, sorted, unique
    shard: np.ndarray  # int32 into names
    row: np.ndarray  # int64: row in the shard, or failure record number
    failure: np.ndarray  # bool: a failure record (reason in reasons)
    reasons: np.ndarray  # S200 ("" for rows)
    names: List[str]
    sources: Dict[str, List[int]]  # shard name -> [size, mtime_ns]

    @classmethod
    def empty(cls) -> "Index":
        return cls(np.zeros(0, HASH_DTYPE), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, bool),
                   np.zeros(0, "S200"), [], {})

    def find(self, hashes) -> np.ndarray:
        """Position in this index of each hash, -1 when absent."""
        q = np.asarray(hashes, dtype=HASH_DTYPE)
        pos = np.searchsorted(self.hashes, q)
        pos_c = np.minimum(pos, max(0, len(self.hashes) - 1))
        hit = (pos < len(self.hashes)) & (self.hashes[pos_c] == q) if len(self.hashes) else np.zeros(len(q), bool)
        return np.where(hit, pos_c, -1)


def _stat_key(path: Path) -> List[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


class ExtractorStore:
    """The rows of one extractor in a store (created on disk only when rows are written)."""

    def __init__(self, store_root: Path, config: dict, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, on_message=None):
        self.config = dict(config)
        self.key = fingerprint.extractor_key(self.config)
        self.root = Path(store_root) / fingerprint.extractor_dirname(self.config, self.key)
        self.lock_timeout = float(lock_timeout)
        self.on_message = on_message
        self._index: Optional[Index] = None
        self._recorded_shape = None  # a feature map's shape, from extractor.json

    # -- paths and creation -------------------------------------------------------------
    @property
    def shards_dir(self) -> Path:
        return self.root / SHARDS

    def exists(self) -> bool:
        return (self.root / CONFIG_NAME).is_file()

    def ensure(self, row_shape: Optional[Sequence[int]] = None) -> None:
        """Create the folder and ``extractor.json`` (first writer wins; a foreign one is refused).

        ``row_shape`` is recorded there when the config does not fix it (feature maps: their
        shape is known once the model is built, and later reads need no model).
        """
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        path = self.root / CONFIG_NAME
        record = {"key": self.key, "config": self.config}
        if row_shape is not None and not self.config.get("row_shape") and tuple(row_shape) != self._pooled_shape():
            record["row_shape"] = [int(d) for d in row_shape]
        if path.is_file():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                stored = {}
            if stored.get("key") == self.key and ("row_shape" not in record or stored.get("row_shape") is not None):
                return
            if stored.get("key") != self.key:
                warnings.warn(f"{path} does not describe this extractor; rewriting it", CacheWarning, stacklevel=3)
        _io.write_json(path, record)
        self._recorded_shape = record.get("row_shape")

    def shard_paths(self) -> List[Path]:
        if not self.shards_dir.is_dir():
            return []
        return sorted(p for p in self.shards_dir.iterdir() if p.suffix == ".h5" and not p.name.startswith("."))

    def new_writer(self, row_shape: Sequence[int], dtype: str = "float32", batch_rows: int = 64,
                   name: Optional[str] = None) -> ShardWriter:
        """A writer of a new shard of this extractor, named so that shards sort by creation.

        ``name`` overrides the file name; a name starting with ``.`` is hidden from readers
        until :meth:`publish` gives the sealed shard its final name (Spark tasks do this, so a
        retried or speculative task either publishes its whole shard or nothing).
        """
        self.ensure(row_shape)
        if name is None:
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:24]
            name = f"{stamp}-{host}-{os.getpid()}-{secrets.token_hex(3)}.h5"
        return ShardWriter.create(self.shards_dir / name, self.key, row_shape, dtype, batch_rows)

    def publish(self, hidden: Path, final_name: str) -> bool:
        """Give a sealed hidden shard its final name, once: False if another attempt did first."""
        try:
            os.link(hidden, self.shards_dir / final_name)  # atomic, and fails if the name exists
            published = True
        except FileExistsError:
            published = False
        finally:
            Path(hidden).unlink(missing_ok=True)
        _io.fsync_dir(self.shards_dir)
        return published

    # -- the index ----------------------------------------------------------------------
    def index(self) -> Index:
        """The current index (rebuilt under a short lock when stale)."""
        if not self.exists():
            return Index.empty()
        idx = self._index if self._index is not None else self.load_index()
        if idx is not None and self.is_fresh(idx):
            self._index = idx
            return idx
        with self._index_lock():
            idx = self.load_index()  # another process may have rebuilt it meanwhile
            if idx is None or not self.is_fresh(idx):
                idx = self._rebuild(idx)
        self._index = idx
        return idx

    def is_fresh(self, idx: Index) -> bool:
        for name, stat in idx.sources.items():
            try:
                if _stat_key(self.shards_dir / name) != stat:
                    return False
            except OSError:
                return False
        return all(is_live(p) for p in self.shard_paths() if p.name not in idx.sources)

    def load_index(self) -> Optional[Index]:
        import h5py

        path = self.root / INDEX_NAME
        if not path.is_file():
            return None
        try:
            with h5py.File(path, "r", locking=False) as f:
                if f.attrs.get("format") != INDEX_FORMAT or f.attrs.get("extractor") != self.key:
                    return None
                meta = json.loads(f.attrs["meta"])
                idx = Index(f["hash"][()], f["shard"][()], f["row"][()], f["failure"][()].astype(bool),
                            f["reason"][()], list(meta["names"]), dict(meta["sources"]))
        except Exception:  # a damaged or foreign index is rebuilt from the shards
            return None
        n = len(idx.hashes)
        if not all(len(a) == n for a in (idx.shard, idx.row, idx.failure, idx.reasons)):
            return None
        return idx

    def _rebuild(self, old: Optional[Index]) -> Index:
        parts, names, sources = [], [], {}
        for path in self.shard_paths():
            if is_live(path):
                continue
            part = self._reuse(old, path) or self._read_shard(path)
            if part is None:
                continue
            names.append(path.name)
            sources[path.name] = _stat_key(path)
            hashes, rows, failure, reasons = part
            parts.append((hashes, np.full(len(hashes), len(names) - 1, np.int32), rows, failure, reasons))
        idx = _merge(parts, names, sources)
        self._write_index(idx)
        return idx

    def _reuse(self, old: Optional[Index], path: Path):
        if old is None or path.name not in old.sources:
            return None
        try:
            if _stat_key(path) != old.sources[path.name]:
                return None
        except OSError:
            return None
        k = old.names.index(path.name)
        sel = old.shard == k
        return old.hashes[sel], old.row[sel], old.failure[sel], old.reasons[sel]

    def _read_shard(self, path: Path):
        try:
            recover(path)  # an orphan of a killed writer: seal it first
            with ShardReader.open(path, self.key) as reader:
                hashes = reader.hashes()
                fh, reasons = reader.failure_records()
        except ShardError as exc:
            self.quarantine(path, str(exc), rebuild=False)
            return None
        return (np.concatenate([hashes, fh]), np.concatenate([np.arange(len(hashes)), np.arange(len(fh))]),
                np.concatenate([np.zeros(len(hashes), bool), np.ones(len(fh), bool)]),
                np.concatenate([np.zeros(len(hashes), "S200"), reasons.astype("S200")]))

    def _write_index(self, idx: Index) -> None:
        import h5py

        meta = json.dumps({"names": idx.names, "sources": idx.sources})
        with _io.atomic_path(self.root / INDEX_NAME) as tmp, h5py.File(tmp, "w", locking=False) as f:
            f.attrs.update({"format": INDEX_FORMAT, "extractor": self.key, "meta": meta})
            for name, values in (("hash", idx.hashes), ("shard", idx.shard), ("row", idx.row),
                                 ("failure", idx.failure.astype(np.int8)), ("reason", idx.reasons)):
                f.create_dataset(name, data=values, fletcher32=True, chunks=True if len(values) else None)

    def _index_lock(self):
        return FileLock(self.root / "index.lock", self.lock_timeout, f"updating the index of {self.root.name}",
                         self.on_message)

    # -- lookups and reads --------------------------------------------------------------
    def lookup(self, hashes) -> "Lookup":
        """Where each content hash is: a stored row, a stored failure, or missing."""
        idx = self.index()
        pos = idx.find(hashes)
        return Lookup(idx, np.asarray(hashes, dtype=HASH_DTYPE), pos)

    def read(self, lookup: "Lookup") -> np.ndarray:
        """Features of the looked-up rows, in order; raises :class:`RowsLost` after quarantining
        a shard that failed validation (the caller recomputes what is then missing)."""
        idx = lookup.index
        rows_at = lookup.pos[lookup.is_row]
        shape = self.row_shape
        out = np.empty((len(rows_at), *shape), dtype=self.config.get("dtype", "float32"))
        for k in np.unique(idx.shard[rows_at]):
            sel = np.flatnonzero(idx.shard[rows_at] == k)
            path = self.shards_dir / idx.names[k]
            try:
                with ShardReader.open(path, self.key, shape, out.dtype) as reader:
                    out[sel] = reader.read_rows(idx.row[rows_at[sel]])
            except ShardError as exc:
                self._index = None
                if path.exists():  # damaged; a shard merged away by `cache compact` is only a stale index
                    self.quarantine(path, str(exc))
                raise RowsLost(str(exc)) from None
        return out

    def _pooled_shape(self):
        return (int(self.config["backbone"]["dim"]),)

    @property
    def row_shape(self):
        """A row's shape: the config's, else the one recorded in ``extractor.json`` (maps), else ``(dim,)``."""
        if self.config.get("row_shape"):
            return tuple(self.config["row_shape"])
        if self._recorded_shape is None and (self.config.get("extra") or {}).get("split"):
            try:
                self._recorded_shape = json.loads((self.root / CONFIG_NAME).read_text(encoding="utf-8")).get("row_shape")
            except (OSError, ValueError, AttributeError):
                self._recorded_shape = None
        recorded = self._recorded_shape
        return tuple(int(d) for d in recorded) if recorded else self._pooled_shape()

    # -- damage ------------------------------------------------------------------------
    def quarantine(self, path: Path, why: str, rebuild: bool = True) -> None:
        """Move a damaged shard to ``damaged/`` after copying its readable rows to a new shard."""
        saved = salvage(self, path) if path.exists() else 0
        target = self.root / DAMAGED / f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return  # another process moved it already
        warnings.warn(f"feature store shard {path} is damaged ({why}); kept {saved} readable rows, moved the file to "
                      f"{target} and the other rows are recomputed when next needed", CacheWarning, stacklevel=3)
        self._index = None
        if rebuild:
            self.index()


@dataclass
class Lookup:
    """The result of :meth:`ExtractorStore.lookup` for a list of hashes."""

    index: Index
    hashes: np.ndarray
    pos: np.ndarray  # position in the index, -1 = missing

    @property
    def found(self) -> np.ndarray:
        return self.pos >= 0

    @property
    def is_row(self) -> np.ndarray:
        return self.found & ~self.index.failure[np.maximum(self.pos, 0)] if len(self.index.hashes) else self.found

    @property
    def is_failure(self) -> np.ndarray:
        return self.found & ~self.is_row

    def reasons(self) -> List[Optional[str]]:
        """The stored failure reason per hash (None for rows and missing)."""
        out: List[Optional[str]] = [None] * len(self.pos)
        for i in np.flatnonzero(self.is_failure):
            out[i] = self.index.reasons[self.pos[i]].decode("utf-8", "replace")
        return out


def _merge(parts, names, sources) -> Index:
    if not parts:
        idx = Index.empty()
        idx.names, idx.sources = names, sources
        return idx
    hashes, shard, row, failure, reasons = (np.concatenate(col) for col in zip(*parts))
    # First occurrence wins, rows before failures: sort by (hash, failure, shard order).
    order = np.lexsort((shard, failure, hashes))
    hashes, shard, row, failure, reasons = hashes[order], shard[order], row[order], failure[order], reasons[order]
    first = np.ones(len(hashes), bool)
    first[1:] = hashes[1:] != hashes[:-1]
    return Index(hashes[first], shard[first], row[first], failure[first], reasons[first], names, sources)


def salvage(store: ExtractorStore, path: Path) -> int:
    """Copy the readable, valid rows (and failure records) of a damaged shard into a new shard.

    Rows are kept only where they pass every check in the extractor's own dtype and shape.
    """
    dtype = np.dtype(store.config.get("dtype", "float32"))
    try:
        reader = ShardReader.open(path, store.key, store.row_shape)
    except ShardError:
        return 0
    with reader:
        try:
            hashes = reader.hashes()
        except ShardError:
            return 0
        try:
            fh, reasons = reader.failure_records()
        except ShardError:
            fh, reasons = np.zeros(0, HASH_DTYPE), np.zeros(0, "S200")
        blocks = []
        for lo, hi, ok in reader.scan():
            if ok:
                with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: dropped
                    rows = reader.read_rows(np.arange(lo, hi)).astype(dtype)
                good = np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
                blocks.append((hashes[lo:hi][good], rows[good]))
        if not sum(len(b[0]) for b in blocks) and not len(fh):
            return 0
        saved = 0
        with store.new_writer(store.row_shape, dtype.name) as writer:
            for block_hashes, rows in blocks:
                if len(block_hashes):
                    writer.append(block_hashes, rows)
                    saved += len(block_hashes)
            if len(fh):
                writer.append([], np.zeros((0, *store.row_shape)), fh, reasons)
    return saved


class FileLock:
    """A short exclusive flock on a lock file, waited for up to ``timeout`` seconds."""

    def __init__(self, path: Path, timeout: float, doing: str, on_message=None):
        self.path, self.timeout, self.doing, self.on_message = path, timeout, doing, on_message
        self.fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        told = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(self.path)
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    raise CacheLockedError(
                        f"Another process (pid {holder}) is {self.doing}; waited {self.timeout:g}s. Run again when "
                        "it has finished (nothing it wrote is lost), or raise --lock-timeout."
                    ) from None
                if not told and self.on_message is not None:
                    self.on_message(f"waiting up to {self.timeout:g}s for another process (pid {holder}) {self.doing}")
                    told = True
                time.sleep(0.05)
            except OSError:  # no flock on this file system: the index is rebuilt idempotently anyway
                break
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        return self

    def __exit__(self, *exc):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        except OSError:
            pass
        os.close(self.fd)
        return False


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text.split()[0] if text else "unknown"


class FeatureStore:
    """A store folder: one :class:`ExtractorStore` per extractor key."""

    def __init__(self, root, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, on_message=None):
        self.root = Path(root).expanduser().absolute()
        self.lock_timeout = lock_timeout
        self.on_message = on_message

    def extractor(self, config: dict) -> ExtractorStore:
        return ExtractorStore(self.root, config, self.lock_timeout, self.on_message)

    def extractors(self) -> List[ExtractorStore]:
        """The extractors stored in this folder (those with a readable ``extractor.json``)."""
        out = []
        if not self.root.is_dir():
            return out
        for folder in sorted(p for p in self.root.iterdir() if (p / CONFIG_NAME).is_file()):
            try:
                data = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
                ex = self.extractor(data["config"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if ex.root == folder and ex.key == data.get("key"):
                out.append(ex)
        return out
