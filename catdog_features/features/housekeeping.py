"""Housekeeping of a feature store: ``ls``, ``verify``, ``prune`` and ``compact`` (CLI: ``catdog-features cache``).

Prune and compact write the new shard, seal it, then remove the shards it replaces: a kill at
any moment leaves either the old shards or the new one (or both: the index deduplicates), so
nothing committed is lost. They take a per-extractor maintenance lock, touch only sealed
shards (a running extraction keeps writing its own), and the index is rebuilt afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Set

import numpy as np

from catdog_features.features.datasets import IMAGE_EXTENSIONS
from catdog_features.features.fingerprint import hash_files
from catdog_features.features.shard import HASH_DTYPE, ShardError, ShardReader, is_live
from catdog_features.features.store import DEFAULT_LOCK_TIMEOUT, ExtractorStore, FeatureStore, FileLock

#: Shards smaller than this are merged by :func:`compact`.
COMPACT_BELOW_BYTES = 256 << 20


@dataclass
class ExtractorSummary:
    """One line of ``cache ls``."""

    folder: str
    backbone: str
    image_size: int
    view: str
    precision: str
    rows: int
    failures: int
    shards: int
    bytes: int
    live_shards: int = 0


def list_store(cache_dir) -> List[ExtractorSummary]:
    """Every extractor of the store with its rows, failures, shards and bytes on disk."""
    out = []
    for ex in FeatureStore(cache_dir).extractors():
        paths = ex.shard_paths()
        idx = ex.index()
        cfg = ex.config
        out.append(ExtractorSummary(
            folder=str(ex.root), backbone=str(cfg.get("name")), image_size=int(cfg.get("image_size", 0)),
            view=str(cfg.get("view")), precision=str(cfg.get("precision", "float32")),
            rows=int((~idx.failure).sum()), failures=int(idx.failure.sum()), shards=len(paths),
            bytes=sum(p.stat().st_size for p in paths), live_shards=sum(is_live(p) for p in paths)))
    return out


@dataclass
class Damage:
    """A damaged shard: which rows are affected and why."""

    shard: str
    rows: str  # e.g. "rows 0-4095" or "whole shard"
    problem: str


@dataclass
class VerifyResult:
    """What ``cache verify`` found."""

    shards: int = 0
    rows: int = 0
    damaged: List[Damage] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged


def verify_store(cache_dir) -> VerifyResult:
    """Read every committed chunk of every shard: checksums, values, counters, and the index.

    Nothing is changed; damaged rows are left for the next extraction, which finds them when
    it reads them, quarantines the shard and computes those rows again.
    """
    result = VerifyResult()
    for ex in FeatureStore(cache_dir).extractors():
        valid = {}
        for path in ex.shard_paths():
            if is_live(path):
                result.notes.append(f"{path}: being written by a running extraction (skipped)")
                continue
            result.shards += 1
            valid[path.name] = _verify_shard(ex, path, result)
        _verify_index(ex, valid, result)
    return result


def _verify_shard(ex: ExtractorStore, path: Path, result: VerifyResult) -> Optional[np.ndarray]:
    try:
        with ShardReader.open(path, ex.key, ex.row_shape) as reader:
            hashes = reader.hashes()
            reader.failure_records()
            bad = [(lo, hi) for lo, hi, ok in reader.scan() if not ok]
            result.rows += reader.rows
            if not reader.sealed:
                result.notes.append(f"{path}: left by a killed extraction; its {reader.rows} committed rows are valid "
                                    "(sealed on next use)")
    except ShardError as exc:
        result.damaged.append(Damage(str(path), "whole shard", str(exc)))
        return None
    for lo, hi in bad:
        result.damaged.append(Damage(str(path), f"rows {lo}-{hi - 1}", "checksum or value check failed"))
    return hashes


def _verify_index(ex: ExtractorStore, valid, result: VerifyResult) -> None:
    idx = ex.load_index()
    if idx is None:
        result.notes.append(f"{ex.root}: no usable index (rebuilt from the shards on next use)")
        return
    if not ex.is_fresh(idx):
        result.notes.append(f"{ex.root}: index is stale (rebuilt from the shards on next use)")
        return
    for k, name in enumerate(idx.names):
        hashes = valid.get(name)
        if hashes is None:
            continue
        sel = np.flatnonzero((idx.shard == k) & ~idx.failure)
        rows = idx.row[sel]
        if len(rows) and (rows.max() >= len(hashes) or not np.array_equal(hashes[rows], idx.hashes[sel])):
            result.damaged.append(Damage(str(ex.root / "index.h5"), f"entries of {name}",
                                         "index points at rows of other contents"))


# --------------------------------------------------------------------------- rewriting
@dataclass
class RewriteResult:
    """What :func:`prune` or :func:`compact` did (or would do, in a dry run)."""

    extractor: str
    rows_before: int
    rows_after: int
    shards_before: int
    shards_after: int
    bytes_before: int
    bytes_after: int


def content_hashes_in(folders: Sequence) -> Set[str]:
    """SHA-256 of every image file (by extension) under the given folders, recursively."""
    paths = []
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"Folder not found. Received: --keep {str(folder)!r}; expected a folder of images.")
        for root, _dirs, files in os.walk(folder):
            paths += [os.path.join(root, f) for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return {h.sha256 for h in hash_files(paths) if h.sha256 is not None}


def prune(cache_dir, keep: Sequence, dry_run: bool = True, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> List[RewriteResult]:
    """Remove rows (and failure records) whose content is in none of the ``keep`` folders."""
    wanted = content_hashes_in(keep)
    return [_rewrite(ex, lambda h: np.isin(h.astype(str), list(wanted)), dry_run, lock_timeout, merge_all=False)
            for ex in FeatureStore(cache_dir).extractors()]


def compact(cache_dir, below_bytes: int = COMPACT_BELOW_BYTES, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
            dry_run: bool = False) -> List[RewriteResult]:
    """Merge each extractor's small sealed shards into one (dropping duplicated contents)."""
    return [_rewrite(ex, None, dry_run, lock_timeout, merge_all=True, below_bytes=below_bytes)
            for ex in FeatureStore(cache_dir).extractors()]


def _rewrite(ex: ExtractorStore, keep_fn, dry_run: bool, lock_timeout: float, merge_all: bool,
             below_bytes: int = COMPACT_BELOW_BYTES) -> RewriteResult:
    with FileLock(ex.root / "maintenance.lock", lock_timeout, f"pruning or compacting {ex.root.name}"):
        idx = ex.index()  # seals orphans, quarantines damaged shards
        paths = [p for p in ex.shard_paths() if not is_live(p) and p.name in idx.sources]
        sizes = {p.name: p.stat().st_size for p in paths}
        rows_before = int((~idx.failure).sum())
        keep = np.ones(len(idx.hashes), bool) if keep_fn is None else keep_fn(idx.hashes)
        if merge_all:
            targets = [p for p in paths if sizes[p.name] < below_bytes]
            if len(targets) < 2:
                targets = []
        else:
            touched = set(np.unique(idx.shard[~keep]).tolist())
            targets = [p for p in paths if idx.names.index(p.name) in touched]
        names = {p.name for p in targets}
        in_targets = np.isin(np.asarray(idx.names)[idx.shard], list(names)) if len(idx.hashes) else np.zeros(0, bool)
        moved = in_targets & keep
        after_rows = rows_before - int((~keep & ~idx.failure).sum())
        total = sum(sizes.values())
        target_bytes = sum(sizes[n] for n in names)
        est = int(target_bytes * (moved.sum() / max(1, in_targets.sum()))) if len(idx.hashes) else 0
        result = RewriteResult(ex.root.name, rows_before, after_rows, len(paths),
                               len(paths) - len(targets) + (1 if moved.any() else 0), total, total - target_bytes + est)
        if dry_run or not targets:
            return result
        if moved.any():
            _copy_rows(ex, idx, np.flatnonzero(moved))
        for p in targets:  # only once the new shard is sealed
            p.unlink(missing_ok=True)
        ex._index = None
        ex.index()
        new_paths = ex.shard_paths()
        result.shards_after = len(new_paths)
        result.bytes_after = sum(p.stat().st_size for p in new_paths)
        return result


def _copy_rows(ex: ExtractorStore, idx, entries: np.ndarray) -> None:
    """Write the given index entries (rows and failures) into one new sealed shard."""
    shape = ex.row_shape
    with ex.new_writer(shape, ex.config.get("dtype", "float32")) as writer:
        for k in np.unique(idx.shard[entries]):
            sel = entries[idx.shard[entries] == k]
            rows, fails = sel[~idx.failure[sel]], sel[idx.failure[sel]]
            with ShardReader.open(ex.shards_dir / idx.names[k], ex.key, shape) as reader:
                for chunk in np.array_split(rows, max(1, len(rows) // 4096 + 1)):
                    if len(chunk):
                        writer.append(idx.hashes[chunk], reader.read_rows(idx.row[chunk]))
            if len(fails):
                writer.append(np.zeros(0, HASH_DTYPE), np.zeros((0, *shape)), idx.hashes[fails], idx.reasons[fails])


__all__ = ["COMPACT_BELOW_BYTES", "Damage", "ExtractorSummary", "RewriteResult", "VerifyResult", "compact",
           "content_hashes_in", "list_store", "prune", "verify_store"]
