"""catdog-features: image classification by transfer learning from cached features.

Stage 1 extracts pooled vectors of frozen ImageNet backbones once into a fingerprinted,
crash-safe HDF5 cache; stage 2 trains cheap dense heads on them, searches their
hyperparameters with Hyperopt TPE, ensembles the best and writes Kaggle submissions.

Heavy modules (TensorFlow) load lazily: importing the package is cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it; resolved on first attribute access
_LAZY = {
    "BACKBONES": "backbones",
    "BackboneSpec": "backbones",
    "get_backbone": "backbones",
    "WeightsDownloadError": "backbones",
    "load_dataset": "datasets",
    "ImageSet": "datasets",
    "decode_image": "reader",
    "read_batches": "reader",
    "ImageReadError": "reader",
    "FeatureSet": "featureset",
    "extract_features": "extract",
    "extract_with_report": "extract",
    "cache_entries": "extract",
    "CacheLockedError": "cache",
    "CacheWarning": "cache",
    "DenseHead": "heads",
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
    "load_config": "config",
    "RunConfig": "config",
    "run_pipeline": "pipeline",
    "predict_folder": "pipeline",
    "RunDir": "rundir",
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
