"""What the report reads from a run folder, each file through its owner's API.

* the manifest and the folder's paths: :class:`~catdog_features.run.rundir.RunDir`
  (also the list of a member's fold models);
* the trials file: :func:`catdog_features.search.read_trials` (read-only: a running sweep
  may hold it);
* ``oof.h5``: :meth:`catdog_features.ensemble.OOFPredictions.load` (the members' and the
  ensemblers' OOF probabilities, and which ensembler was chosen);
* ``ensemble.json``: :meth:`catdog_features.run.saved.SavedEnsemble.load`;
* fold heads' training histories: :meth:`catdog_features.heads.DenseHead.read_sidecar`.

Nothing is fitted or recomputed: a part that is missing or unreadable is None (its
problem noted) and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from catdog_features.run.rundir import RunDir


@dataclass
class RunData:
    """A run folder as the report sees it (each part None/empty when absent)."""

    run: RunDir
    manifest: Dict[str, Any] = field(default_factory=dict)
    ensemble: Any = None  # SavedEnsemble
    trials: Optional[List[Dict[str, Any]]] = None
    trials_meta: Dict[str, Any] = field(default_factory=dict)
    trials_path: Optional[Path] = None
    oof: Any = None  # OOFPredictions
    problems: List[str] = field(default_factory=list)

    @property
    def config(self) -> Dict[str, Any]:
        return self.manifest.get("config") or {}

    @property
    def stages(self) -> Dict[str, Any]:
        return self.manifest.get("stages") or {}

    def train_source(self) -> Tuple[Optional[str], Optional[str]]:
        """``(train folder, labels.csv)`` of the run, from the manifest's config."""
        data = self.config.get("data") or {}
        return data.get("train"), data.get("labels_csv")

    def extraction(self) -> Dict[str, Any]:
        """The extraction settings: the manifest's extract record, else ensemble.json's."""
        settings = (self.stages.get("extract") or {}).get("settings")
        if settings:
            return settings
        if self.ensemble is not None and self.ensemble.extraction is not None:
            return self.ensemble.extraction.to_dict()
        return {}

    def backbones(self) -> List[str]:
        names = list(self.extraction().get("backbones") or [])
        for t in self.trials or []:
            names += [b for b in t["backbones"] if b not in names]
        return list(dict.fromkeys(names))

    def members(self) -> List[dict]:
        if self.ensemble is not None:
            return list(self.ensemble.members)
        return list(self.oof.members) if self.oof is not None else []

    def fold_histories(self, member: str) -> List[Dict[str, Any]]:
        """``{"history", "best_epoch"}`` of each of a member's saved fold heads, in fold order."""
        from catdog_features.heads import DenseHead

        out = []
        for path in self.run.fold_models(member):
            try:
                meta = DenseHead.read_sidecar(path)
            except FileNotFoundError:  # a model without its sidecar: no curve to draw
                self.problems.append(f"{path} has no JSON sidecar; its training curve is not shown")
                continue
            except ValueError:  # another head kind (a linear head has no epochs): no curve
                continue
            out.append({"history": meta.get("history") or {}, "best_epoch": meta.get("best_epoch")})
        return out


def _attempt(data: RunData, what: str, read):
    try:
        return read()
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged file: the report says so and goes on
        data.problems.append(f"{what} could not be read ({type(exc).__name__}: {exc})")
        return None


def load_run(run_dir) -> RunData:
    """Read a run folder (see the module docstring).

    Raises
    ------
    FileNotFoundError
        The folder does not exist, or holds none of manifest.json, ensemble.json, a trials
        file and oof.h5.
    """
    from catdog_features.ensemble import OOFPredictions
    from catdog_features.run.saved import SavedEnsemble
    from catdog_features.search import read_trials

    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"Run folder not found. Received: run_dir={str(run_dir)!r}.")
    data = RunData(run)
    data.manifest = _attempt(data, "manifest.json", run.read_manifest) or {}
    if run.ensemble.is_file():
        data.ensemble = _attempt(data, "ensemble.json", lambda: SavedEnsemble.load(run.root))
    trials_path = _attempt(data, "the manifest's trials path", run.trials_path) or run.trials
    if trials_path.is_file():
        found = _attempt(data, f"trials file {trials_path}", lambda: read_trials(trials_path))
        if found is not None:
            (data.trials, data.trials_meta), data.trials_path = found, trials_path
    if run.oof.is_file():
        data.oof = _attempt(data, "oof.h5", lambda: OOFPredictions.load(run.oof))
    if not any([data.manifest, data.ensemble is not None, data.trials is not None, data.oof is not None]):
        raise FileNotFoundError(
            f"Nothing to report in {str(run.root)!r}: no manifest.json, ensemble.json, trials.sqlite or oof.h5; "
            "expected a run folder made by `catdog-features run` or `ensemble`."
        )
    return data


def chosen_oof_probabilities(data: RunData) -> Tuple[np.ndarray, str, Optional[float]]:
    """OOF probabilities of the run's chosen ensemble, its name and its recorded OOF log loss.

    Read from ``oof.h5`` (stored when the ensemble was fitted), never recomputed. A run
    whose OOF file holds no ensemble predictions (an older version wrote it) gives its best
    member instead, and notes it in ``data.problems``.
    """
    from catdog_features.ensemble import log_loss

    oof = data.oof
    probs = oof.chosen_proba
    if probs is not None:
        stored = None
        if data.ensemble is not None and data.ensemble.result.method == oof.chosen:
            stored = data.ensemble.result.chosen_score.get("log_loss")
        elif data.ensemble is not None:
            data.problems.append(f"oof.h5 says the chosen ensemble is {oof.chosen!r}, ensemble.json says "
                                 f"{data.ensemble.result.method!r}; the error analysis shows oof.h5's")
        return np.asarray(probs), oof.chosen, stored
    losses = {name: log_loss(p, oof.labels) for name, p in oof.oof.items()}
    best = min(losses, key=losses.get)
    data.problems.append("oof.h5 holds no ensemble OOF predictions (written by an older version; rerun the ensemble "
                         f"stage to store them): the error analysis shows the best member, {best}")
    return np.asarray(oof.oof[best]), f"member {best}", losses[best]
