"""Stage 2 search: Hyperopt TPE sweeps over head kinds, head settings and backbone subsets.

* :mod:`.space`: the default and reference search spaces, the backbone-subset choice;
* :mod:`.data`: feature blocks + labels of a sweep, their fingerprint, the fold plan;
* :mod:`.objective`: the objective (CV on small data) and running one trial;
* :mod:`.trials`: the SQLite trials file (:class:`TrialStore`, :func:`read_trials`);
* :mod:`.result`: :class:`SweepResult`;
* :mod:`.tpe`: :func:`sweep`, the resumable TPE loop.
"""

from catdog_features.search.objective import AUTO_FOLDS, CV_BELOW_ROWS
from catdog_features.search.result import SweepResult
from catdog_features.search.space import (
    BACKBONES_KEY, SPACE_PRESETS, backbone_space, default_space, describe_space, make_space, reference_space,
)
from catdog_features.search.tpe import sweep
from catdog_features.search.trials import (
    SweepMismatchError, TrialsBusyError, TrialsFileError, TrialStore, TrialsWriteError, read_trials,
)

__all__ = [
    "AUTO_FOLDS", "BACKBONES_KEY", "CV_BELOW_ROWS", "SPACE_PRESETS", "SweepMismatchError", "SweepResult",
    "TrialStore", "TrialsBusyError", "TrialsFileError", "TrialsWriteError", "backbone_space", "default_space",
    "describe_space", "make_space", "read_trials", "reference_space", "sweep",
]
