"""Stage 2 ensembles: out-of-fold predictions of the best heads, combined, clipped on OOF.

* :mod:`.oof`: members, folds, keys and the OOF file (:class:`OOFPredictions`);
* :mod:`.fit`: :func:`fit_oof`, one task per (member, fold), inline or in parallel;
* :mod:`.tta`: test-time augmentation chosen on OOF;
* :mod:`.combine`: mean, weighted blend and stacker, the chosen method (:class:`EnsembleResult`);
* :mod:`.metrics`: log loss, accuracy, clipping and the OOF-chosen clip.
"""

from catdog_features.ensemble.combine import (
    METHODS, EnsembleResult, apply_stacker, fit_blend, fit_ensemblers, fit_stacker, format_headline, save_chosen_oof,
)
from catdog_features.ensemble.metrics import (
    CLIP_GRID, ConstantPredictionsWarning, accuracy, choose_clip, clip_probabilities, log_loss, prediction_spread,
    row_log_loss,
)
from catdog_features.ensemble.oof import (
    OOFPredictions, aligned_proba, default_estimator_factory, feature_fingerprint, make_folds,
    members_from_sweep, normalize_members, oof_key, read_oof_key,
)
from catdog_features.ensemble.fit import fit_oof

__all__ = [
    "CLIP_GRID", "METHODS", "ConstantPredictionsWarning", "EnsembleResult", "OOFPredictions", "accuracy",
    "aligned_proba", "apply_stacker", "choose_clip", "clip_probabilities", "default_estimator_factory",
    "feature_fingerprint", "fit_blend", "fit_ensemblers", "fit_oof", "fit_stacker", "format_headline", "log_loss",
    "make_folds", "members_from_sweep", "normalize_members", "oof_key", "prediction_spread", "read_oof_key",
    "row_log_loss", "save_chosen_oof",
]
