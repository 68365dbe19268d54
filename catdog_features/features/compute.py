"""The pass of an extraction: decode each missing content once, run the backbones, commit rows.

Used by the local distributor (in the calling process) and by each Spark task
(:mod:`.spark_extract`) on its partition of the work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import numpy as np

from catdog_features.features.backbones import BackboneSpec
from catdog_features.features.plan import Work, plan_batches
from catdog_features.features.store import ExtractorStore
from catdog_features.features.views import hflip, view_transform, view_zoom  # noqa: F401  (hflip: public here too)

#: Reason given to an image whose file changed between hashing and decoding.
REASON_CHANGED = "changed while reading"


#: view name -> transform of the decoded uint8 image (None: as is), for the fixed-name views;
#: every view (``aug:<k>``, ``crop:<pos>`` too) has one: :func:`.views.view_transform`.
TRANSFORMS = {"plain": None, "hflip": hflip}


@dataclass
class Extractor:
    """One backbone at one size, view and precision, and its rows in the store.

    ``name`` is how the extraction refers to it (the backbone's name, or ``backbone|view``
    when one call extracts several views); ``backbone`` keys the model, shared by its views.
    """

    name: str
    spec: BackboneSpec
    weights: object
    size: int
    store: ExtractorStore
    view: str = "plain"
    backbone: str = ""

    def __post_init__(self):
        if not self.backbone:
            self.backbone = self.name


@dataclass
class BackboneReport:
    """What happened to one backbone in an extraction.

    ``computed`` is the number of distinct image contents that went through this backbone's
    model in the call (contract); ``found`` those already in the store when it started.
    """

    name: str
    image_size: int
    dim: int
    cache_file: str  # the extractor's folder in the store
    cache_hit: bool = False
    found: int = 0
    computed: int = 0
    model_seconds: float = 0.0
    build_seconds: float = 0.0
    recovered: object = None
    store_bytes: int = 0
    precision: str = "float32"
    split: object = None  # the canonical split layer of a spatial extraction, else None
    row_shape: tuple = ()  # a stored row's shape (known once the model was built)

    @property
    def resumed_from(self) -> int:
        """Contents already stored when the call started (the older name of ``found``)."""
        return self.found

    @property
    def images_per_s(self):
        return self.computed / self.model_seconds if self.model_seconds > 0 else None


def split_of(config) -> object:
    """The split layer recorded in an extractor config (None for pooled vectors)."""
    return (config.get("extra") or {}).get("split")


def build_mapper(ex: Extractor, batch_size: int, precision: str, jit_compile: bool):
    """The compiled model of an extractor (TensorFlow is imported here); a spatial one for a split."""
    from catdog_features.features.mapper import Mapper

    kwargs = {"split": split_of(ex.store.config)} if split_of(ex.store.config) else {}
    return Mapper(ex.spec, ex.weights, ex.size, batch_size, precision=precision, jit_compile=jit_compile, **kwargs)


def _row_layout(ex: Extractor, mapper):
    """``(row_shape, dtype)`` of the rows a mapper writes into an extractor's store."""
    return tuple(getattr(mapper, "row_shape", (ex.spec.dim,))), ex.store.config.get("dtype", "float32")


def run_work(work: Work, extractors: Dict[str, Extractor], mappers, batch_size: int, num_workers,
             reports: Dict[str, BackboneReport], transients: Dict[str, str], on_batch=None,
             shard_name=None) -> Dict[str, Path]:
    """Compute ``work`` into new shards of each extractor (one writer per extractor).

    ``mappers`` maps a backbone name (``Extractor.backbone``) to its compiled model, shared
    by all views of that backbone. Each content is decoded once for all extractors, views
    and sizes (the reader makes every view from that one decode); each extractor's batch holds
    the contents that lack it at their slots (zeros elsewhere). Rows are committed after
    every batch. A content whose bytes changed since it was hashed is not stored (its
    positions get :data:`REASON_CHANGED` in this call). ``shard_name(extractor name)`` names
    the new shards (default: unique names); returns the shard written per extractor.
    """
    from contextlib import ExitStack, closing

    from catdog_features.features.reader import read_windows

    batches = plan_batches(work.hashes, batch_size)
    order = [c for b in batches for c in b.contents]
    bounds = np.cumsum([0] + [len(b.contents) for b in batches])
    windows = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
    names = [n for n in extractors if extractors[n].backbone in mappers and work.for_extractor(n)]
    sizes = sorted({extractors[n].size for n in names})
    view_names = list(dict.fromkeys(extractors[n].view for n in names)) or ["plain"]
    views = [(v, view_transform(v), view_zoom(v)) for v in view_names]
    with ExitStack() as stack:
        writers = {}
        for name in names:
            shape, dtype = _row_layout(extractors[name], mappers[extractors[name].backbone])
            writers[name] = stack.enter_context(extractors[name].store.new_writer(
                shape, dtype, batch_rows=batch_size, name=None if shard_name is None else shard_name(name)))
        reads = stack.enter_context(closing(read_windows([work.paths[c] for c in order], sizes or [1], windows,
                                                         num_workers=num_workers, views=views)))
        for batch, rb in zip(batches, reads):
            _one_batch(batch, rb, work, {n: extractors[n] for n in names}, mappers, writers, batch_size, reports,
                       transients)
            if on_batch is not None:
                on_batch(len(batch.contents))
    return {name: w.path for name, w in writers.items() if w.path.exists()}


def _one_batch(batch, rb, work, extractors, mappers, writers, batch_size, reports, transients) -> None:
    first = rb.start
    ok_at = {int(p): j for j, p in enumerate(rb.ok)}
    failed_at = {int(p): reason for p, _path, reason in rb.failures}
    for name, ex in extractors.items():
        mapper = mappers[ex.backbone]
        rows, slots, picks, fail_h, fail_r = [], [], [], [], []
        for k, (c, slot) in enumerate(zip(batch.contents, batch.slots)):
            if name not in work.needs[c]:
                continue
            pos, h = first + k, work.hashes[c]
            if rb.content_hashes.get(pos) != h:  # the file changed (or vanished) since it was hashed
                transients[h] = failed_at.get(pos, REASON_CHANGED) if rb.content_hashes.get(pos) is None else REASON_CHANGED
            elif pos in failed_at:
                fail_h.append(h)
                fail_r.append(failed_at[pos])
            else:
                rows.append(h)
                slots.append(slot)
                picks.append(ok_at[pos])
        shape, dtype = _row_layout(ex, mapper)
        vectors = np.zeros((0, *shape), np.float32)
        if rows:
            x = np.zeros((batch_size, ex.size, ex.size, 3), np.float32)
            x[slots] = rb.views[ex.view][ex.size][picks]
            t0 = time.perf_counter()
            vectors = mapper(x)[slots]
            reports[name].model_seconds += time.perf_counter() - t0
            if dtype == "float16":
                _check_float16(name, vectors, split_of(ex.store.config))
            reports[name].computed += len(rows)
        if rows or fail_h:
            writers[name].append(rows, vectors, fail_h, fail_r)


def _check_float16(name, maps, split) -> None:
    """Refuse maps that float16 cannot hold (they would be stored as inf), naming the remedy."""
    from catdog_features.features.split import FLOAT16_MAX

    peak = float(np.max(np.abs(maps))) if maps.size else 0.0
    if peak > FLOAT16_MAX:
        raise ValueError(
            f"The {name} feature map at split {split!r} holds values up to {peak:.3g}, beyond float16's range "
            f"({FLOAT16_MAX:g}); expected maps float16 can store. Choose another split layer (e.g. a block output "
            "after a normalisation) or other weights."
        )
