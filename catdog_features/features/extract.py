"""extract_features(): image lists -> pooled vectors of frozen backbones, through the feature store.

Plan, then do (embedding-reader), with clip-retrieval's reader / mapper / writer:

1. **list and hash** the images (:mod:`.datasets`, :func:`.fingerprint.hash_files`): one
   SHA-256 per file's bytes; files whose bytes cannot be read get a reason instead;
2. **look up** every content in each extractor's store (:mod:`.store`): a stored row, a stored
   failure record, or missing;
3. **plan** the distinct missing contents and which extractors lack each (:mod:`.plan`);
4. **compute** them in one pass: the **reader** (:func:`.reader.read_windows`) decodes each
   content once for every backbone and size, the **mappers** (:class:`.mapper.Mapper`) run
   each backbone on fixed-shape batches (each content at its own slot), the **writers**
   (:class:`.shard.ShardWriter`) commit the rows batch by batch into new shards;
5. **assemble** the FeatureSet in the list's order from the store: ids, labels and order come
   from the list, the vectors from the store; every input is a row or a failure record.

When every content is already stored no model is built and TensorFlow is not imported.
"""

from __future__ import annotations

import inspect
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from catdog_features._checks import check_choice, check_int
from catdog_features.features import fingerprint
from catdog_features.features.backbones import get_backbone, parse_backbones, resolve_weights
from catdog_features.features.datasets import ImageSet, load_dataset
from catdog_features.features.featureset import FeatureSet
from catdog_features.features.compute import (  # noqa: F401  (public names of this module too)
    REASON_CHANGED, TRANSFORMS, BackboneReport, Extractor, build_mapper, hflip, run_work, split_of,
)
from catdog_features.features.plan import Work, plan_work
from catdog_features.features.split import MAP_DTYPE, SpatialSizeWarning, resolve_split, size_warning
from catdog_features.features.store import DEFAULT_LOCK_TIMEOUT, FeatureStore, RowsLost
from catdog_features.features.views import parse_views

DEFAULT_BACKBONES = ("ResNet50", "InceptionV3", "Xception")
VIEWS = fingerprint.VIEWS
PRECISIONS = fingerprint.PRECISIONS


class FeatureWarning(UserWarning):
    """Extracted features look unusable (e.g. the same vector for every image)."""


@dataclass
class ExtractionReport:
    """Summary of one :func:`extract_with_report` call."""

    n_inputs: int
    n_rows: int
    failed: List[Tuple[str, str]]
    backbones: Dict[str, BackboneReport]
    view: str = "plain"
    seconds: float = 0.0  # whole call
    pass_seconds: float = 0.0  # the read + model pass (0 when everything was stored)
    processed: int = 0  # distinct contents read in the pass
    hash_seconds: float = 0.0
    pass_cpu_seconds: float = 0.0  # process CPU time (all threads) during the pass
    n_contents: int = 0  # distinct readable contents in the list
    #: view -> backbone -> its report (every view of a call; ``backbones`` sums them per backbone)
    views: Dict[str, Dict[str, BackboneReport]] = field(default_factory=dict)

    @property
    def images_per_s(self) -> Optional[float]:
        return self.processed / self.pass_seconds if self.pass_seconds > 0 else None

    def failures_by_reason(self) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        for path, reason in self.failed:
            out.setdefault(reason, []).append(path)
        return dict(sorted(out.items(), key=lambda kv: (-len(kv[1]), kv[0])))


# --------------------------------------------------------------------------- preparation
@dataclass
class _Prepared:
    images: ImageSet
    extractors: Dict[str, Extractor]
    hashes: List[Optional[str]]  # per input position
    reasons: List[Optional[str]]  # per input position, when there is no hash
    hash_seconds: float = 0.0
    transients: Dict[str, str] = field(default_factory=dict)  # content -> reason, this call only


def _resolve_views(view, views) -> Tuple[str, ...]:
    """The views of a call: ``views`` (a list or ``"plain,aug:0-7"``) or the single ``view``."""
    if views is None:
        return parse_views([view])
    if view != "plain":
        raise ValueError(f"Received view={view!r} and views={views!r}; expected one of them (views= may list "
                         "several).")
    return parse_views(views)


def extractor_name(backbone: str, view: str, views: Sequence[str]) -> str:
    """How one call names an extractor: the backbone, or ``backbone|view`` when it has several views."""
    return backbone if len(views) == 1 else f"{backbone}|{view}"


def _extractors(backbones, cache_dir, weights, image_size, views, precision, lock_timeout, on_message, split=None):
    names = parse_backbones(backbones)
    views = _resolve_views("plain", views) if isinstance(views, str) or views is None else tuple(views)
    check_choice("precision", precision, PRECISIONS)
    if image_size is not None:
        check_int("image_size", image_size, 0)
    per_weights = resolve_weights(weights, names)
    store = FeatureStore(cache_dir, lock_timeout, on_message)
    out = {}
    for view in views:  # view-major: the first view's extractors first
        for name in names:
            spec = get_backbone(name)
            size = spec.resolve_size(image_size)
            layer = resolve_split(spec, split)
            config = fingerprint.extractor_config(spec, per_weights[name], size, view, precision,
                                                  extra={"split": layer} if layer else None)
            if layer:
                config["dtype"] = MAP_DTYPE  # feature maps are stored in half precision
            key = extractor_name(name, view, views)
            out[key] = Extractor(key, spec, per_weights[name], size, store.extractor(config), view=view, backbone=name)
    return out


def _prepare(source, labels_csv, extractors) -> _Prepared:
    images = load_dataset(source, labels_csv=labels_csv)
    if len(images) == 0:
        raise ValueError("Received an empty image set; expected at least one image.")
    t0 = time.perf_counter()
    file_hashes = fingerprint.hash_files(images.paths)
    return _Prepared(images, extractors, [h.sha256 for h in file_hashes], [h.reason for h in file_hashes],
                     time.perf_counter() - t0)


def cache_entries(source=None, backbones: Sequence[str] = DEFAULT_BACKBONES, cache_dir="features_cache",
                  weights="imagenet", image_size: Optional[int] = None, labels_csv=None, view: str = "plain",
                  precision: str = "float32", views=None, split: Optional[str] = None) -> Dict[str, Path]:
    """The store folder each backbone's rows live in (or would), without extracting anything.

    Same arguments as :func:`extract_features` (``source`` and ``labels_csv`` are accepted for
    compatibility: an extractor's folder does not depend on the images). Builds no model and
    does not import TensorFlow. Keys are backbone names, ``backbone|view`` with several views.
    """
    extractors = _extractors(backbones, cache_dir, weights, image_size, _resolve_views(view, views), precision,
                             DEFAULT_LOCK_TIMEOUT, None, split)
    return {name: ex.store.root for name, ex in extractors.items()}


# --------------------------------------------------------------------------- entry point
def extract_with_report(
    source,
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    cache_dir="features_cache",
    weights="imagenet",
    image_size: Optional[int] = None,
    batch_size: int = 32,
    labels_csv=None,
    view: str = "plain",
    num_workers: Optional[int] = None,
    progress: bool = True,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    precision: str = "float32",
    jit_compile: bool = False,
    distributor: str = "local",
    spark_master: Optional[str] = None,
    partitions: Optional[int] = None,
    views=None,
    split: Optional[str] = None,
    on_message=None,
) -> Tuple[FeatureSet, "ExtractionReport"]:
    """Pooled vectors of frozen backbones for a list of images, through the feature store.

    Parameters
    ----------
    source : str, path, list of paths or ImageSet
        A folder (Kaggle flat, folder-per-class, labels.csv or unlabeled), a list of image
        files, or a :func:`~catdog_features.features.datasets.load_dataset` result.
    backbones : sequence of str or str
        Registry names (case-insensitive), or ``"A,B"``.
    cache_dir : str or path
        The feature store folder (created when rows are first written).
    weights : "imagenet", None, path, or dict
        ``"imagenet"`` (downloaded by Keras), ``None`` (random init from a fixed seed), a
        weights file (for one backbone), or a dict backbone -> one of those (backbones not
        in the dict use ``"imagenet"``).
    image_size : int, optional
        ``None``/0: each backbone's native size; else one square size for all backbones.
    batch_size : int
        Images per model call. Rows are bit-identical across runs, resumes and concurrent
        extractions with the same batch size.
    labels_csv : str or path, optional
        Passed to :func:`~catdog_features.features.datasets.load_dataset`.
    view : str
        One view of the images: ``"plain"``, ``"hflip"`` (mirrored left-right), ``"aug:<k>"``
        (a seeded random augmentation) or ``"crop:tl|tr|bl|br|c"`` (TTA crops at zoom 1.35);
        see :mod:`catdog_features.features.views`. Each view is its own extractor.
    num_workers : int, optional
        Decoder threads (default: the number of CPUs).
    progress : bool
        Show a progress bar (images/s and ETA).
    lock_timeout : float
        Seconds to wait for another process rebuilding a store index.
    precision : {"float32", "bfloat16", "float16"}
        Compute precision of the backbones (a mixed-precision policy; vectors are stored as
        float32). Part of the extractor key: a bf16 row never answers a float32 request.
    jit_compile : bool
        Compile the backbones with XLA (helps on GPUs).
    distributor : {"local", "spark"}
        ``"spark"``: the missing contents are split into partitions, each extracted by a Spark
        task into its own shard (the store folder must be reachable from every executor). The
        result is the same, bit for bit, as the local distributor's.
    spark_master : str, optional
        Spark master URL when no SparkSession is active (default ``local[*]``).
    partitions : int, optional
        Spark tasks to split the work into (default: twice the cluster's parallelism).
    views : list of str or str, optional
        Several views in one call (instead of ``view``), e.g. ``["plain", "hflip", "aug:0-7"]``
        or ``"plain,hflip,aug:0-7"`` (ranges expand). Each image is decoded once for every view
        and backbone; each (backbone, view) is its own extractor, served from the store on
        later calls.
    split : str, optional
        Cache feature maps instead of pooled vectors: the output of the layer of that name
        (``"LAYER:input"``: its input; ``"default"``: each backbone's
        ``BackboneSpec.default_split``, the input of its last block). The rows are then
        float16 arrays ``(h, w, c)``, one HDF5 chunk per image, and the split is part of the
        extractor key (:mod:`catdog_features.features.split`). A
        :class:`~catdog_features.features.split.SpatialSizeWarning` comes first when the maps
        to compute exceed a few GiB. Train a
        :class:`~catdog_features.heads.TopBlockHead` on them.
    on_message : callable, optional
        Receives short status lines ("waiting for ...").

    Returns
    -------
    FeatureSet, ExtractionReport
        One row per usable image (aligned across backbones and views; with ``split``,
        ``fs[name]`` is a float16 array ``(n, h, w, c)``), unusable images in
        ``FeatureSet.failed`` as ``(path, reason)``; the report says per backbone how many
        distinct contents were found in the store and how many were computed. With several
        views the FeatureSet's ``features`` are those of the first view listed, every view is
        reachable by name (``fs.view("aug:3")["ResNet50"]``, ``fs.views``,
        ``fs.concat(names, view=...)``); ``report.views[view][backbone]`` has each
        extractor's numbers and ``report.backbones[backbone]`` their sums over the views.

    Raises
    ------
    WeightsDownloadError
        ``weights="imagenet"`` and the download failed (e.g. no internet).
    ValueError, FileNotFoundError
        Bad arguments, unknown backbone, missing or empty folder.
    SplitError
        ``split`` names no layer of a backbone (the message lists valid ones), or
        ``"default"`` for a backbone without a default split.
    StoreWriteError
        The store could not be written (e.g. a full disk); committed rows stay valid.
    """
    from catdog_features.distributed import check_distributor

    t_start = time.perf_counter()
    batch_size = check_int("batch_size", batch_size, 1)
    check_distributor(distributor)
    if partitions is not None:
        check_int("partitions", partitions, 1)
    spark = {"master": spark_master, "partitions": partitions} if distributor == "spark" else None
    view_list = _resolve_views(view, views)
    extractors = _extractors(backbones, cache_dir, weights, image_size, view_list, precision, lock_timeout, on_message,
                             split)
    prep = _prepare(source, labels_csv, extractors)
    reports = {name: BackboneReport(name, ex.size, ex.spec.dim, str(ex.store.root), precision=precision,
                                    split=split_of(ex.store.config)) for name, ex in extractors.items()}
    contents = list(dict.fromkeys(h for h in prep.hashes if h is not None))
    stats = {"processed": 0, "pass_seconds": 0.0, "pass_cpu": 0.0}
    for attempt in range(6):
        lookups = {name: ex.store.lookup(contents) for name, ex in extractors.items()}
        if attempt == 0:
            for name, lk in lookups.items():
                reports[name].found = int(lk.found.sum())
        missing = {name: {h for h, hit in zip(contents, lk.found) if not hit and h not in prep.transients}
                   for name, lk in lookups.items()}
        work = plan_work(prep.hashes, prep.images.paths, missing)
        if len(work):
            _compute(work, prep, batch_size, view_list[0], num_workers, progress, precision, jit_compile, reports, stats,
                     spark)
            continue
        try:
            fs = _assemble(prep, lookups)
            break
        except RowsLost:  # a shard failed validation and was quarantined: compute its rows again
            continue
    else:
        raise RuntimeError(f"The feature store in {cache_dir} kept losing rows while they were read; run `catdog-features "
                           "cache verify` on it.")
    for name, rep in reports.items():
        rep.row_shape = extractors[name].store.row_shape
        rep.cache_hit = rep.found == len(contents)
        rep.store_bytes = sum(p.stat().st_size for p in extractors[name].store.shard_paths())
    fs.cache_hits = {name: rep.cache_hit for name, rep in reports.items()}
    by_view = {v: {ex.backbone: reports[n] for n, ex in extractors.items() if ex.view == v} for v in view_list}
    if len(view_list) > 1:
        fs = _split_views(fs, extractors, view_list)
        reports = _sum_reports(by_view)
    _warn_if_constant(fs)
    report = ExtractionReport(
        n_inputs=len(prep.images), n_rows=len(fs), failed=list(fs.failed), backbones=reports, view=view_list[0],
        views=by_view,
        seconds=time.perf_counter() - t_start, pass_seconds=stats["pass_seconds"], processed=stats["processed"],
        hash_seconds=prep.hash_seconds, pass_cpu_seconds=stats["pass_cpu"], n_contents=len(contents),
    )
    return fs, report


def _split_views(fs: FeatureSet, extractors, view_list) -> FeatureSet:
    """The FeatureSet of a multi-view call: ``features`` of the first view, every view by name."""
    vf = {v: {ex.backbone: fs.features[n] for n, ex in extractors.items() if ex.view == v} for v in view_list}
    fs.view_features = vf
    fs.view_name = view_list[0]
    fs.features = vf[view_list[0]]
    first = {n: ex.backbone for n, ex in extractors.items() if ex.view == view_list[0]}
    fs.cache_files = {**{first[n]: f for n, f in fs.cache_files.items() if n in first},
                      **{n: f for n, f in fs.cache_files.items() if n not in first}}
    fs.cache_hits = {b: all(fs.cache_hits[n] for n, ex in extractors.items() if ex.backbone == b) for b in first.values()}
    return fs


def _sum_reports(by_view) -> Dict[str, BackboneReport]:
    """One report per backbone over its views: ``computed``/``found`` count (content, view) rows."""
    out: Dict[str, BackboneReport] = {}
    for reps in by_view.values():
        for b, r in reps.items():
            if b not in out:
                out[b] = BackboneReport(b, r.image_size, r.dim, r.cache_file, cache_hit=True, precision=r.precision,
                                        split=r.split, row_shape=r.row_shape)
            s = out[b]
            s.found += r.found
            s.computed += r.computed
            s.model_seconds += r.model_seconds
            s.build_seconds = max(s.build_seconds, r.build_seconds)
            s.store_bytes += r.store_bytes
            s.cache_hit = s.cache_hit and r.cache_hit
    return out


def extract_features(source, **kwargs) -> FeatureSet:
    """:func:`extract_with_report` without the report: a :class:`FeatureSet`.

    Every argument is as for :func:`extract_with_report` (same names, same defaults).
    """
    return extract_with_report(source, **kwargs)[0]


extract_features.__signature__ = inspect.signature(extract_with_report).replace(
    parameters=[p for p in inspect.signature(extract_with_report).parameters.values() if p.name != "on_message"],
    return_annotation=FeatureSet,
)


# --------------------------------------------------------------------------- the pass
def _compute(work: Work, prep: _Prepared, batch_size, view, num_workers, progress, precision, jit_compile,
             reports, stats, spark=None) -> None:
    """Build the models that have work, read every content once, commit rows batch by batch."""
    from tqdm.auto import tqdm

    from catdog_features.features.legacy import import_legacy_rows

    needed = [name for name in prep.extractors if work.for_extractor(name)]
    imported = import_legacy_rows(prep.extractors, work, needed)
    if imported:  # old per-list cache files held some of the work: look everything up again
        return
    if spark is not None:
        t0 = time.perf_counter()
        _compute_on_spark(work, prep, batch_size, view, num_workers, progress, precision, jit_compile, reports, spark)
        stats["processed"] += len(work)
        stats["pass_seconds"] += time.perf_counter() - t0
        return
    mappers = {}
    for name in needed:  # one model per backbone, shared by all its views
        ex = prep.extractors[name]
        t0 = time.perf_counter()
        if ex.backbone not in mappers:
            mappers[ex.backbone] = build_mapper(ex, batch_size, precision, jit_compile)
        reports[name].build_seconds = time.perf_counter() - t0
        _warn_if_large(ex, mappers[ex.backbone], work.for_extractor(name))
    t0, c0 = time.perf_counter(), time.process_time()
    with tqdm(total=len(work), unit="img", desc="extract", disable=not progress, dynamic_ncols=True,
              smoothing=0.1) as bar:
        run_work(work, {n: prep.extractors[n] for n in needed}, mappers, batch_size, num_workers, reports,
                 prep.transients, on_batch=bar.update)
    stats["processed"] += len(work)
    stats["pass_seconds"] += time.perf_counter() - t0
    stats["pass_cpu"] += time.process_time() - c0


def _compute_on_spark(work, prep, batch_size, view, num_workers, progress, precision, jit_compile, reports, spark):
    from catdog_features.distributed import run_tasks, spark_session
    from catdog_features.features import spark_extract

    session = spark_session(spark["master"])
    n_parts = spark["partitions"] or 2 * session.sparkContext.defaultParallelism
    extractors = {name: ex for name, ex in prep.extractors.items() if work.for_extractor(name)}
    for ex in extractors.values():
        ex.store.ensure()  # created by the driver: tasks on other machines only add shards
    tasks = spark_extract.payloads(work, extractors, batch_size, view, precision, jit_compile, n_parts, num_workers)
    try:
        results = run_tasks(spark_extract.extract_partition, tasks, spark=session, desc="extract partitions",
                            progress=progress, unit="part")
    finally:
        spark_extract.cleanup(extractors, {t["plan"] for t in tasks})
    for res in results:
        prep.transients.update(res["transients"])
        for name, n in res["computed"].items():
            reports[name].computed += n
            reports[name].model_seconds += res["model_seconds"][name]


# --------------------------------------------------------------------------- assembly
def _assemble(prep: _Prepared, lookups) -> FeatureSet:
    """The FeatureSet of the list from the store: a row where every extractor has one."""
    images, n = prep.images, len(prep.images)
    contents = list(lookups[next(iter(lookups))].hashes.astype(str)) if lookups else []
    where = {h: i for i, h in enumerate(contents)}
    reason_of = [prep.reasons[p] for p in range(n)]
    content_ok = np.ones(len(contents), bool)
    content_reason: Dict[int, str] = {}
    for name, lk in lookups.items():
        stored = lk.reasons()
        for i, h in enumerate(contents):
            if h in prep.transients:
                content_ok[i] = False
                content_reason.setdefault(i, prep.transients[h])
            elif not lk.is_row[i]:
                content_ok[i] = False
                content_reason.setdefault(i, stored[i] or f"no row for {name}")
    rows = []
    for p, h in enumerate(prep.hashes):
        if h is None:
            continue
        i = where[h]
        if content_ok[i]:
            rows.append(p)
        else:
            reason_of[p] = content_reason[i]
    rows = np.asarray(rows, dtype=np.int64)
    used = sorted({where[prep.hashes[p]] for p in rows})
    pick = {c: k for k, c in enumerate(used)}
    take = np.asarray([pick[where[prep.hashes[p]]] for p in rows], dtype=np.int64)
    features = {}
    for name, lk in lookups.items():
        sub = type(lk)(lk.index, lk.hashes[used], lk.pos[used])
        store = prep.extractors[name].store
        features[name] = store.read(sub)[take] if len(used) else np.zeros(
            (0, *store.row_shape), store.config.get("dtype", "float32"))
    in_rows = np.zeros(n, bool)
    in_rows[rows] = True
    failed = [(images.paths[p], reason_of[p]) for p in np.flatnonzero(~in_rows)]
    if len(rows) + len(failed) != n:
        raise RuntimeError(f"rows {len(rows)} + failures {len(failed)} != inputs {n}")  # an invariant, not input
    return FeatureSet(
        ids=images.ids[rows], labels=None if images.labels is None else images.labels[rows],
        class_names=tuple(images.class_names), features=features, failed=failed,
        paths=tuple(images.paths[p] for p in rows),
        cache_files={name: str(ex.store.root) for name, ex in prep.extractors.items()},
    )


def _warn_if_large(ex: Extractor, mapper, n_images: int) -> None:
    """A :class:`SpatialSizeWarning` before a spatial extraction estimated above a few GiB."""
    layer = split_of(ex.store.config)
    if not layer:
        return
    from catdog_features.features.shard import free_bytes

    folder = ex.store.root if ex.store.root.exists() else ex.store.root.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    text = size_warning(ex.name, layer, n_images, mapper.row_shape, ex.size, free=free_bytes(folder))
    if text:
        warnings.warn(text, SpatialSizeWarning, stacklevel=4)


def _warn_if_constant(fs: FeatureSet) -> None:
    if len(fs) < 3:
        return
    for name, x in fs.features.items():
        spread = float(np.max(x.max(axis=0) - x.min(axis=0))) if x.size else 0.0
        scale = float(np.max(np.abs(x))) if x.size else 0.0
        if spread <= 1e-6 * max(scale, 1.0):  # relative, and absolute for vectors that are all ~0
            warnings.warn(
                f"The {name} vectors are (near) constant over the {len(fs)} images (largest per-feature range "
                f"{spread:.2g}): heads trained on them cannot learn. Typical causes: a randomly initialised "
                "backbone at a small input size, or the wrong weights file.", FeatureWarning, stacklevel=3)
