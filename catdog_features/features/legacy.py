"""Cache files of catdog-features 0.1 (one HDF5 file per image list), imported into the store.

The old cache kept one ``<Backbone>-<size>-<view>-<fingerprint16>.h5`` per (image list,
backbone, view) in the cache folder, its rows keyed by input position and each input's
BLAKE2b-128 content hash. This module is the one reader of that format. On first contact a
store moves such files into ``<store>/legacy/`` (one :class:`CacheWarning` for all of them);
when an extraction then lacks contents that a legacy file of the same extractor holds
(same backbone, weights, size, view, reader numerics and library versions), their rows are
copied into a new shard, keyed by SHA-256 like every other row: nothing computed before is
computed again. A legacy file that cannot be read is left where it is and ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from catdog_features.features.store import CacheWarning

LEGACY = "legacy"
_LEGACY_FORMAT_VERSION = 1
_CONTENT_REASONS = ("empty file", "not an image", "corrupt header", "truncated", "decompression bomb", "unreadable")


def _blake2b(path) -> Optional[str]:
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _read_config(path: Path) -> Optional[dict]:
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            if int(f.attrs.get("format_version", -1)) != _LEGACY_FORMAT_VERSION or "config" not in f.attrs:
                return None
            config = f.attrs["config"]
            return json.loads(config.decode() if isinstance(config, bytes) else config)
    except Exception:  # not a legacy cache file (or unreadable): left alone
        return None


def legacy_files(store_root: Path) -> List[Path]:
    """Legacy cache files of a store: moved into ``legacy/`` (with one warning) the first time."""
    store_root = Path(store_root)
    folder = store_root / LEGACY
    loose = [p for p in store_root.glob("*.h5") if _read_config(p) is not None] if store_root.is_dir() else []
    if loose:
        folder.mkdir(parents=True, exist_ok=True)
        for p in loose:
            os.replace(p, folder / p.name)
            for side in (p.with_suffix(".lock"),):
                side.unlink(missing_ok=True)
        warnings.warn(
            f"{len(loose)} feature cache file(s) of the old per-image-list format were moved to {folder}; their rows "
            "are imported into the store when an extraction asks for the same images (matched by file content).",
            CacheWarning, stacklevel=3)
    return sorted(folder.glob("*.h5")) if folder.is_dir() else []


def _matches(old: dict, new: dict) -> bool:
    from catdog_features.features import reader

    backbone = old.get("backbone") or {}
    ident = new["backbone"]
    same_backbone = all(backbone.get(k) == ident.get(k) for k in ("module", "constructor", "preprocess", "pooling", "dim"))
    return (same_backbone and backbone.get("name") == new["name"] and old.get("weights") == new["weights"]
            and old.get("image_size") == new["image_size"] and old.get("view") == new["view"]
            and new["precision"] == "float32" and not new.get("extra") and old.get("reader_version") == reader.READER_VERSION
            and reader.MAX_PIXELS == 80_000_000
            and old.get("tensorflow") == new["tensorflow"] and old.get("keras") == new["keras"])


def import_legacy_rows(extractors: Dict[str, object], work, needed) -> int:
    """Copy rows of ``work`` that legacy files hold into new shards; returns how many were copied."""
    if not needed:
        return 0
    root = next(iter(extractors.values())).store.root.parent
    files = legacy_files(root)
    if not files:
        return 0
    configs = {p: _read_config(p) for p in files}
    total = 0
    blake: Dict[int, Optional[str]] = {}
    for name in needed:
        ex = extractors[name]
        sources = [p for p, c in configs.items() if c is not None and _matches(c, ex.store.config)]
        if not sources:
            continue
        wanted = [i for i, need in enumerate(work.needs) if name in need]
        for i in wanted:
            if i not in blake:
                blake[i] = _blake2b(work.paths[i])
        by_blake = {blake[i]: work.hashes[i] for i in wanted if blake[i] is not None}
        for path in sources:
            total += _import_file(path, ex, by_blake)
    return total


def _import_file(path: Path, ex, by_blake: Dict[str, str]) -> int:
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            committed = int(f.attrs["committed_inputs"])
            content = [h.decode() for h in f["inputs/content_hash"][()]]
            positions = f["positions"][()]
            keep = np.flatnonzero(positions < committed)
            rows = [(content[p], k) for k, p in zip(keep, positions[keep]) if content[p] in by_blake]
            fpos = f["failures/position"][()]
            freason = [r.decode("utf-8", "replace") for r in f["failures/reason"][()]]
            fails = [(by_blake[content[p]], r) for p, r in zip(fpos, freason)
                     if p < committed and content[p] in by_blake and r in _CONTENT_REASONS]
            features = f["features"][sorted(k for _, k in rows)] if rows else None
            order = sorted(range(len(rows)), key=lambda j: rows[j][1])
    except Exception:  # unreadable legacy file: ignored, the rows are computed instead
        return 0
    seen, hashes, picks = set(), [], []
    for rank, j in enumerate(order):
        sha = by_blake[rows[j][0]]
        if sha not in seen and np.all(np.isfinite(features[rank])):
            seen.add(sha)
            hashes.append(sha)
            picks.append(rank)
    fails = [(h, r) for h, r in dict(fails).items() if h not in seen]
    if not hashes and not fails:
        return 0
    with ex.store.new_writer((ex.spec.dim,)) as writer:
        writer.append(hashes, features[picks] if hashes else np.zeros((0, ex.spec.dim), np.float32),
                      [h for h, _ in fails], [r for _, r in fails])
    return len(hashes) + len(fails)

