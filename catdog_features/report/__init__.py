"""Reports of a run folder: comparison table, head curves, sweep history, error analysis."""

from catdog_features.report.page import *  # noqa: F401,F403
from catdog_features.report.page import (  # noqa: F401  (private helpers the tests use)
    _h5_info, _load_run,
)
