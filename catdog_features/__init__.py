"""catdog-features: image classification by transfer learning from cached features.

Stage 1 (:mod:`catdog_features.features`) runs frozen backbones once over the images into
a crash-safe HDF5 feature store; stage 2 (:mod:`~catdog_features.heads`,
:mod:`~catdog_features.search`, :mod:`~catdog_features.ensemble`) trains cheap heads on the
vectors, searches their hyperparameters with Hyperopt TPE, ensembles the best on out-of-fold
predictions; :mod:`~catdog_features.run` runs it all from one config and writes Kaggle
submissions. ``docs/architecture.md`` maps the modules and the on-disk formats.

Heavy modules (TensorFlow) load lazily: importing the package is cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it; resolved on first attribute access
_LAZY = {
    "BACKBONES": "features.backbones",
    "BackboneSpec": "features.backbones",
    "get_backbone": "features.backbones",
    "WeightsDownloadError": "features.backbones",
    "load_dataset": "features.datasets",
    "ImageSet": "features.datasets",
    "decode_image": "features.reader",
    "read_batches": "features.reader",
    "ImageReadError": "features.reader",
    "FeatureSet": "features.featureset",
    "extract_features": "features.extract",
    "extract_with_report": "features.extract",
    "cache_entries": "features.extract",
    "CacheLockedError": "features.store",
    "CacheWarning": "features.store",
    "StoreWriteError": "features.shard",
    "FeatureStore": "features.store",
    "SplitError": "features.split",
    "SpatialSizeWarning": "features.split",
    "DenseHead": "heads",
    "LinearHead": "heads",
    "TopBlockHead": "heads",
    "load_head": "heads",
    "lr_find": "heads",
    "sweep": "search",
    "SweepResult": "search",
    "default_space": "search",
    "fit_oof": "ensemble",
    "fit_ensemblers": "ensemble",
    "members_from_sweep": "ensemble",
    "OOFPredictions": "ensemble",
    "EnsembleResult": "ensemble",
    "write_submission": "submission",
    "load_config": "run.config",
    "RunConfig": "run.config",
    "run_pipeline": "run.pipeline",
    "predict_folder": "run.pipeline",
    "RunDir": "run.rundir",
    "write_report": "report",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'catdog_features' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"catdog_features.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
