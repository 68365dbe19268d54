"""Applying a run: features with a run's extraction settings, predictions of new images, submissions.

Used by the pipeline (features of the train/test sets, the submission) and by ``predict`` /
``submit`` (a saved ensemble on any folder of images).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from catdog_features.run.rundir import LOCAL_CACHE, RunDir
from catdog_features.run.saved import SavedEnsemble


class CacheLocationWarning(UserWarning):
    """A run's recorded feature cache is outside its folder and was not followed."""


def load_features(source, extraction, *, backbones: Optional[Sequence[str]] = None, labels_csv=None,
                  progress: bool = True, distributed=None, split: Optional[str] = None):
    """``(FeatureSet, ExtractionReport)`` of ``source`` with a run's extraction settings.

    ``extraction`` is an :class:`~catdog_features.run.config.ExtractConfig`; ``backbones``
    defaults to all of its backbones. The store answers what it already holds;
    ``distributed`` (a :class:`~catdog_features.run.config.DistributedConfig`) says where the
    missing rows are computed. ``split``: feature maps at that layer instead of pooled vectors.
    """
    from catdog_features.features.extract import extract_with_report

    backbones = tuple(backbones or extraction.backbones)
    weights = extraction.weights
    if isinstance(weights, dict):
        weights = {k: (str(v) if isinstance(v, Path) else v) for k, v in weights.items() if k in backbones}
    elif isinstance(weights, Path):
        weights = str(weights)
    return extract_with_report(
        str(source) if isinstance(source, Path) else source,
        backbones=backbones,
        cache_dir=str(extraction.cache_dir),
        weights=weights,
        image_size=extraction.image_size,
        batch_size=extraction.batch_size,
        labels_csv=None if labels_csv is None else str(labels_csv),
        progress=progress,
        # feature maps: the plain view only (the maps of every augmented view would multiply the store's size)
        views=["plain"] if split else list(getattr(extraction, "views", None) or ("plain",)),
        **({"split": split} if split else {}),
        precision=getattr(extraction, "precision", "float32"),
        **({} if distributed is None else {"distributor": distributed.distributor,
                                           "spark_master": distributed.master, "partitions": distributed.partitions}),
    )


def failure_records(features) -> List[Tuple[str, str, str]]:
    """``(id, path, reason)`` of the images a FeatureSet could not use (id = file stem)."""
    return [(Path(p).stem, str(p), str(r)) for p, r in features.failed]


@dataclass
class Prediction:
    """Probabilities for a folder of images: ``ids``, ``probs`` (n, n_classes), ``failed`` (id, path, reason)."""

    ids: np.ndarray
    probs: np.ndarray
    class_names: Tuple[str, ...]
    failed: List[tuple]


def _cache_for(saved: SavedEnsemble, cache_dir) -> Path:
    """The cache ``predict`` uses: the one given, else the run's own if inside the run folder."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().absolute()  # named by the user: their explicit choice
    recorded = saved.extraction.cache_dir
    if saved.cache_inside:
        return recorded
    local = saved.run.root / LOCAL_CACHE
    warnings.warn(
        f"{saved.run.ensemble}: extraction.cache_dir {str(recorded)!r} is outside the run folder, so it is not "
        f"followed (a run folder may come from elsewhere); features go to {str(local)!r} instead. Pass "
        f"--cache {recorded} (predict_folder(cache_dir=...)) to use that cache.",
        CacheLocationWarning, stacklevel=3,
    )
    return local


def predict_folder(run_dir, source, *, cache_dir=None, batch_size: Optional[int] = None,
                   progress: bool = True) -> Prediction:
    """Predict any folder (or list) of images with a run's saved ensemble.

    Features come from the feature cache when they are there, else they are extracted
    with the run's settings. ``cache_dir`` names the cache (default: the run's, if it is
    inside the run folder; otherwise ``RUN_DIR/features_cache``, with a
    :class:`CacheLocationWarning`); ``batch_size`` overrides the extraction batch size.
    """
    saved = SavedEnsemble.load(run_dir)
    if saved.extraction is None:
        raise ValueError(f"Run {str(saved.run.root)!r} stores no extraction settings; cannot extract features for new images.")
    extraction = dataclasses.replace(saved.extraction, cache_dir=_cache_for(saved, cache_dir))
    if batch_size is not None:
        extraction = dataclasses.replace(extraction, batch_size=int(batch_size))
    from catdog_features.features.split import map_backbone, with_maps

    vectors = [b for b in saved.backbones if map_backbone(b) is None]
    maps = [map_backbone(b) for b in saved.backbones if map_backbone(b) is not None]
    features, _ = load_features(source, extraction, backbones=vectors or maps, progress=progress)
    if maps:  # TopBlockHead members read the feature maps at the run's split
        features = with_maps(features, load_features(source, extraction, backbones=maps, progress=progress,
                                                     split=extraction.split)[0])
    probs = saved.predict_features(features)
    return Prediction(np.asarray(features.ids, dtype=str), probs, saved.result.class_names, failure_records(features))


def write_run_submission(run_dir, out=None, *, sample_submission=None, clip=None, allow_missing_classes: bool = False,
                         prediction: Optional[Prediction] = None):
    """Write a run's Kaggle submission (default: its stored test predictions and OOF-chosen clip).

    Returns
    -------
    SubmissionInfo
    """
    from catdog_features.submission import read_probabilities, write_submission

    saved = SavedEnsemble.load(run_dir)
    run = RunDir(run_dir)
    if prediction is None:
        if not run.test_predictions.is_file():
            raise FileNotFoundError(
                f"Run {str(run.root)!r} has no test predictions ({run.test_predictions.name}); "
                "give the test folder (submit --test DIR) or set [data] test in the run config."
            )
        ids, probs, class_names = read_probabilities(run.test_predictions)
        failed = [t[0] for t in saved.test_failed]
    else:
        ids, probs, class_names = prediction.ids, prediction.probs, prediction.class_names
        failed = [t[0] for t in prediction.failed]
    return write_submission(
        out or run.submission,
        ids,
        probs,
        class_names,
        sample_submission=sample_submission,
        failed_ids=failed,
        prior=np.asarray(saved.result.prior),
        clip=saved.result.clip if clip is None else float(clip),
        allow_missing_classes=allow_missing_classes,
    )
