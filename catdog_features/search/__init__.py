"""Stage 2 search: Hyperopt TPE sweeps over head settings and backbone subsets.

* :mod:`.space`: the default and reference search spaces, the backbone-subset choice;
* :mod:`.data`: feature blocks + labels of a sweep, their fingerprint, the fold plan;
* :mod:`.trials`: the SQLite trials file (:class:`TrialStore`) and :class:`SweepResult`;
* :mod:`.tpe`: :func:`sweep`, the resumable TPE loop.
"""

from catdog_features.search.space import BACKBONES_KEY, backbone_space, default_space, describe_space
from catdog_features.search.tpe import sweep
from catdog_features.search.trials import (
    SweepMismatchError, SweepResult, TrialsBusyError, TrialsFileError, TrialStore, read_trials,
)

__all__ = [
    "BACKBONES_KEY", "SweepMismatchError", "SweepResult", "TrialStore", "TrialsBusyError", "TrialsFileError",
    "backbone_space", "default_space", "describe_space", "read_trials", "sweep",
]
