"""extract_features(): images -> pooled vectors of frozen backbones, through the HDF5 cache.

Reader / mapper / writer, as in clip-retrieval:

* **reader** (:func:`catdog_features.features.reader.read_batches`): decodes each file once, in a
  thread pool that prefetches ahead of the models, and resizes it to every size needed;
* **mapper** (:class:`Mapper`): one compiled ``tf.function`` per backbone (its own
  ``preprocess_input`` + ``model(x, training=False)``) with a fixed batch shape -- the last
  partial batch is padded -- so no retracing happens and every batch runs the same kernels;
* **writer** (:class:`catdog_features.features.cache.EntryWriter`): appends and commits rows.

Which positions still need which backbone is decided up front by the pure
:func:`catdog_features.features.cache.plan_segments`; then one pass over the images feeds every
backbone that still lacks them. When every entry is complete the cache is read and no
model is built (TensorFlow is not even imported).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from catdog_features.features import cache as _cache
from catdog_features.features.backbones import BackboneSpec, get_backbone, parse_backbones, resolve_weights, weights_identity
from catdog_features.features.datasets import ImageSet, load_dataset
from catdog_features.features.featureset import FeatureSet
from catdog_features.features.mapper import Mapper

DEFAULT_BACKBONES = ("ResNet50", "InceptionV3", "Xception")
VIEWS = _cache.VIEWS


def hflip(rgb: np.ndarray) -> np.ndarray:
    """Mirror an ``(H, W, 3)`` image left-right (the ``"hflip"`` view)."""
    return np.ascontiguousarray(rgb[:, ::-1])


_TRANSFORMS = {"plain": None, "hflip": hflip}


# --------------------------------------------------------------------------- reports
@dataclass
class BackboneReport:
    """What happened to one backbone in an extraction."""

    name: str
    image_size: int
    dim: int
    cache_file: str
    cache_hit: bool
    resumed_from: int = 0  # inputs already committed when this run started
    computed: int = 0  # inputs processed by this run
    model_seconds: float = 0.0  # time spent in the model (incl. waiting for its result)
    build_seconds: float = 0.0
    recovered: Optional[str] = None  # why a corrupt file was moved aside

    @property
    def images_per_s(self) -> Optional[float]:
        return self.computed / self.model_seconds if self.model_seconds > 0 else None


@dataclass
class ExtractionReport:
    """Summary of one :func:`extract_with_report` call."""

    n_inputs: int
    n_rows: int
    failed: List[Tuple[str, str]]
    backbones: Dict[str, BackboneReport]
    view: str = "plain"
    seconds: float = 0.0  # whole call
    pass_seconds: float = 0.0  # the read + model pass (0 on a full cache hit)
    processed: int = 0  # input positions read in the pass
    hash_seconds: float = 0.0
    pass_cpu_seconds: float = 0.0  # process CPU time (all threads) during the pass

    @property
    def images_per_s(self) -> Optional[float]:
        return self.processed / self.pass_seconds if self.pass_seconds > 0 else None

    def failures_by_reason(self) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        for path, reason in self.failed:
            out.setdefault(reason, []).append(path)
        return dict(sorted(out.items(), key=lambda kv: (-len(kv[1]), kv[0])))


# --------------------------------------------------------------------------- arguments
def _check_positive_int(value, name) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Invalid {name}. Received: {name}={value!r}; expected an int >= 1.")
    return int(value)


# --------------------------------------------------------------------------- assembly
def _assemble(images: ImageSet, datas: Mapping[str, _cache.EntryData], names: Sequence[str],
              hits: Mapping[str, bool]) -> FeatureSet:
    n = len(images)
    common = None
    for name in names:
        pos = datas[name].positions
        common = pos if common is None else np.intersect1d(common, pos, assume_unique=True)
    common = np.asarray(common, dtype=np.int64)
    features = {}
    for name in names:
        data = datas[name]
        if len(data.positions) == len(common) and np.array_equal(data.positions, common):
            features[name] = data.features
        else:
            features[name] = data.features[np.searchsorted(data.positions, common)]
    reasons: Dict[int, str] = {}
    for name in names:
        for pos, _path, reason in datas[name].failures:
            reasons.setdefault(int(pos), reason)
    in_rows = np.zeros(n, bool)
    in_rows[common] = True
    failed_positions = np.flatnonzero(~in_rows)
    failed = [(images.paths[p], reasons.get(int(p), "failed for another backbone")) for p in failed_positions]
    assert len(common) + len(failed) == n, "rows + failures != inputs"
    return FeatureSet(
        ids=images.ids[common],
        labels=None if images.labels is None else images.labels[common],
        class_names=tuple(images.class_names),
        features=features,
        failed=failed,
        paths=tuple(images.paths[p] for p in common),
        cache_files={name: datas[name].path for name in names},
        cache_hits=dict(hits),
    )


# --------------------------------------------------------------------------- preparation
@dataclass
class _Prepared:
    images: ImageSet
    names: Tuple[str, ...]
    specs: Dict[str, BackboneSpec]
    sizes: Dict[str, int]
    weights: Dict[str, object]
    hashes: List[str]
    configs: Dict[str, dict]
    paths: Dict[str, Path]
    cache_dir: Path
    hash_seconds: float


def _prepare(source, backbones, cache_dir, weights, image_size, labels_csv, view) -> _Prepared:
    """Validate the arguments, list and hash the images, fingerprint every entry (no TF)."""
    names = parse_backbones(backbones)
    specs = {name: get_backbone(name) for name in names}
    if view not in VIEWS:
        raise ValueError(f"Unknown view. Received: view={view!r}; expected one of {VIEWS}.")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 0
    ):
        raise ValueError(f"Invalid image_size. Received: image_size={image_size!r}; expected None, 0 or a positive int.")
    sizes = {name: spec.resolve_size(image_size) for name, spec in specs.items()}
    per_weights = resolve_weights(weights, names)
    images = load_dataset(source, labels_csv=labels_csv)
    n = len(images)
    if n == 0:
        raise ValueError("Received an empty image set; expected at least one image.")
    t0 = time.perf_counter()
    hashes = _cache.hash_files(images.paths)
    digest = _cache.images_digest(list(images.ids), hashes)
    hash_seconds = time.perf_counter() - t0
    versions = _cache.library_versions()
    cache_dir = Path(cache_dir).expanduser().absolute()
    configs, paths = {}, {}
    for name, spec in specs.items():
        config = _cache.entry_config(spec, weights_identity(per_weights[name]), sizes[name], view, digest, n, versions)
        configs[name] = config
        paths[name] = cache_dir / _cache.entry_filename(config)
    return _Prepared(images, names, specs, sizes, per_weights, hashes, configs, paths, cache_dir, hash_seconds)


def cache_entries(source, backbones: Sequence[str] = DEFAULT_BACKBONES, cache_dir="features_cache",
                  weights="imagenet", image_size: Optional[int] = None, labels_csv=None,
                  view: str = "plain") -> Dict[str, Path]:
    """The cache file each backbone's features of ``source`` live in (or would), without extracting.

    Same arguments as :func:`extract_features`. Hashes the images' bytes but builds no model
    and does not import TensorFlow. Whether a file exists and is complete tells whether
    :func:`extract_features` would be a cache hit.
    """
    prep = _prepare(source, backbones, cache_dir, weights, image_size, labels_csv, view)
    return dict(prep.paths)


# --------------------------------------------------------------------------- main entry
def extract_features(
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
    lock_timeout: float = _cache.DEFAULT_LOCK_TIMEOUT,
) -> FeatureSet:
    """Pooled vectors of frozen ImageNet backbones for a set of images, through the cache.

    Parameters
    ----------
    source : str, path, list of paths or ImageSet
        A folder (Kaggle flat, folder-per-class, labels.csv or unlabeled), a list of image
        files, or a :func:`~catdog_features.features.datasets.load_dataset` result.
    backbones : sequence of str or str
        Registry names (case-insensitive), or ``"A,B"``.
    cache_dir : str or path
        Folder of the HDF5 cache (created if needed).
    weights : "imagenet", None, path, or dict
        ``"imagenet"`` (downloaded by Keras), ``None`` (random init from a fixed seed), a
        weights file (for one backbone), or a dict backbone -> one of those (backbones not
        in the dict use ``"imagenet"``).
    image_size : int, optional
        ``None``/0: each backbone's native size; else one square size for all backbones
        (at least each backbone's ``min_size``).
    batch_size : int
        Images per model call. Keep it the same when resuming an interrupted extraction to
        get results bit-identical to an uninterrupted one.
    labels_csv : str or path, optional
        Passed to :func:`~catdog_features.features.datasets.load_dataset`.
    view : {"plain", "hflip"}
        ``"hflip"`` extracts the left-right mirrored images (a test-time-augmentation view,
        cached separately).
    num_workers : int, optional
        Decoder threads (default: the number of CPUs).
    progress : bool
        Show a progress bar (images/s and ETA).
    lock_timeout : float
        Seconds to wait when another process is writing the same cache entry, before
        raising :class:`~catdog_features.features.cache.CacheLockedError`.

    Returns
    -------
    FeatureSet
        One row per successfully read image (aligned across backbones); unusable images
        are in ``failed`` as ``(path, reason)``. ``cache_hits[name]`` tells whether an
        entry was complete before the call.

    Raises
    ------
    WeightsDownloadError
        ``weights="imagenet"`` and the download failed (e.g. no internet).
    ValueError, FileNotFoundError
        Bad arguments, unknown backbone, missing or empty folder.
    CacheLockedError
        Another process kept the entry locked for longer than ``lock_timeout``.
    """
    fs, _ = extract_with_report(
        source, backbones=backbones, cache_dir=cache_dir, weights=weights, image_size=image_size,
        batch_size=batch_size, labels_csv=labels_csv, view=view, num_workers=num_workers,
        progress=progress, lock_timeout=lock_timeout,
    )
    return fs


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
    lock_timeout: float = _cache.DEFAULT_LOCK_TIMEOUT,
    on_message=None,
) -> Tuple[FeatureSet, ExtractionReport]:
    """:func:`extract_features`, also returning an :class:`ExtractionReport` (used by the CLI).

    ``on_message`` (callable, optional) receives short status lines such as "waiting for
    the lock held by pid N".
    """
    t_start = time.perf_counter()
    batch_size = _check_positive_int(batch_size, "batch_size")
    prep = _prepare(source, backbones, cache_dir, weights, image_size, labels_csv, view)
    images, names, n = prep.images, prep.names, len(prep.images)
    reports = {
        name: BackboneReport(name, prep.sizes[name], prep.specs[name].dim, str(prep.paths[name]), cache_hit=False)
        for name in names
    }
    datas: Dict[str, _cache.EntryData] = {}
    for name in names:  # lock-free fast path: complete entries
        data = _cache.read_complete(prep.paths[name], _cache.fingerprint(prep.configs[name]), n)
        if data is not None:
            datas[name] = data
            reports[name].cache_hit = True
            reports[name].resumed_from = n

    processed, pass_seconds, pass_cpu = 0, 0.0, 0.0
    todo = [name for name in names if name not in datas]
    if todo:
        prep.cache_dir.mkdir(parents=True, exist_ok=True)
        processed, pass_seconds, pass_cpu = _compute(
            prep, todo, batch_size, view, num_workers, progress, lock_timeout, on_message, datas, reports
        )

    fs = _assemble(images, datas, names, {name: reports[name].cache_hit for name in names})
    report = ExtractionReport(
        n_inputs=n, n_rows=len(fs), failed=list(fs.failed), backbones=reports, view=view,
        seconds=time.perf_counter() - t_start, pass_seconds=pass_seconds, processed=processed,
        hash_seconds=prep.hash_seconds, pass_cpu_seconds=pass_cpu,
    )
    return fs, report


def _compute(prep, todo, batch_size, view, num_workers, progress, lock_timeout, on_message, datas,
             reports) -> Tuple[int, float, float]:
    """Lock, open/resume the entries in ``todo``, run the pass, fill ``datas``."""
    images, specs, sizes, paths, configs = prep.images, prep.specs, prep.sizes, prep.paths, prep.configs
    n = len(images)
    with contextlib.ExitStack() as stack:
        # Locks in a fixed (path) order, so two processes asking for overlapping
        # backbone sets cannot each hold one lock the other waits for.
        for name in sorted(todo, key=lambda k: str(paths[k])):
            stack.enter_context(_cache.EntryLock(paths[name], lock_timeout, on_wait=on_message))
        writers: Dict[str, _cache.EntryWriter] = {}
        for name in todo:
            writer = _cache.EntryWriter.open(
                paths[name], configs[name], n, specs[name].dim, list(images.ids), prep.hashes,
                labels=images.labels, batch_size=batch_size, input_paths=images.paths,
            )
            stack.callback(writer.close)
            writers[name] = writer
            reports[name].resumed_from = writer.committed
            reports[name].recovered = writer.recovered
            if writer.complete:  # another process finished it while we waited for the lock
                reports[name].cache_hit = True
        plan = _cache.plan_segments(
            {name: w.committed for name, w in writers.items() if not w.complete}, n, batch_size
        )
        mappers: Dict[str, Mapper] = {}
        for name in dict.fromkeys(b for seg in plan for b in seg.backbones):
            t0 = time.perf_counter()
            mappers[name] = Mapper(specs[name], prep.weights[name], sizes[name], batch_size)
            reports[name].build_seconds = time.perf_counter() - t0

        processed, pass_seconds, pass_cpu = 0, 0.0, 0.0
        if plan:
            processed, pass_seconds, pass_cpu = _run_plan(
                plan, images, writers, mappers, sizes, batch_size, num_workers, view, progress, reports
            )
        for name, writer in writers.items():
            if writer.committed == n:
                writer.finish(reports[name].images_per_s)
            datas[name] = writer.read()
        return processed, pass_seconds, pass_cpu


def _run_plan(plan, images, writers, mappers, sizes, batch_size, num_workers, view, progress, reports):
    from tqdm.auto import tqdm

    from catdog_features.features.reader import read_batches

    total = sum(seg.stop - seg.start for seg in plan)
    transform = _TRANSFORMS[view]
    processed = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with tqdm(total=total, unit="img", desc="extract", disable=not progress, dynamic_ncols=True,
              smoothing=0.1) as bar:
        for seg in plan:
            seg_sizes = sorted({sizes[name] for name in seg.backbones})
            batches = read_batches(images.paths, seg_sizes, batch_size, start=seg.start, stop=seg.stop,
                                   num_workers=num_workers, transform=transform)
            with contextlib.closing(batches):
                for batch in batches:
                    for name in seg.backbones:
                        writer = writers[name]
                        if batch.stop <= writer.committed:
                            continue
                        t1 = time.perf_counter()
                        # Two backbones with the same size share this array (one resize).
                        vectors = mappers[name](batch.images[sizes[name]])
                        reports[name].model_seconds += time.perf_counter() - t1
                        reports[name].computed += batch.stop - max(batch.start, writer.committed)
                        writer.append(batch.start, batch.stop, batch.ok, vectors, batch.failures)
                    processed += batch.stop - batch.start
                    bar.update(batch.stop - batch.start)
    return processed, time.perf_counter() - t0, time.process_time() - c0
