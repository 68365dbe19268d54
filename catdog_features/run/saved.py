"""``ensemble.json``: a run folder's fitted ensemble, its one reader and writer.

The file (format :data:`ENSEMBLE_FORMAT`) holds:

* ``"extraction"``: what stage 1 needs to compute features of new images (backbones,
  weights, image_size, batch_size, cache_dir; the JSON form of
  :class:`~catdog_features.run.config.ExtractConfig`);
* ``"members"``: the member configs (name, params, backbones, trial, sweep_loss);
* ``"models"``: member -> its fold models' paths, relative to the run folder;
* ``"ensemble"``: :meth:`catdog_features.ensemble.EnsembleResult.to_dict` (method, weights,
  stacker coefficients, clip, clip_losses, scores, prior, class_names);
* ``"oof_key"`` and ``"test_failed"`` ([id, path, reason] of unreadable test images).

:meth:`SavedEnsemble.load` refuses model paths that leave the run folder's ``models/``
(a run folder may come from someone else); the recorded cache folder is only followed by
:mod:`catdog_features.run.predict` when it is inside the run folder or the user names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from catdog_features._io import write_json
from catdog_features.run.paths import check_inside, is_inside
from catdog_features.run.rundir import ENSEMBLE, RunDir

ENSEMBLE_FORMAT = "catdog-features-ensemble/1"


def member_proba(predict, features, member):
    """A member's prediction (its TTA views averaged; see :mod:`catdog_features.ensemble.tta`)."""
    from catdog_features.ensemble.tta import member_proba as _member_proba

    return _member_proba(predict, features, member)


def fold_mean_proba(paths: Sequence[Path], X, n_classes: int) -> np.ndarray:
    """Mean probabilities of saved fold heads on ``X`` (no refit): a member's prediction."""
    from catdog_features.ensemble import aligned_proba
    from catdog_features.heads import load_head

    return np.mean([aligned_proba(load_head(p), X, n_classes) for p in paths], axis=0)


def extraction_from_dict(data, run: RunDir):
    """The ``"extraction"`` entry as an :class:`~catdog_features.run.config.ExtractConfig`."""
    from catdog_features.features.backbones import parse_weights
    from catdog_features.run.config import ExtractConfig

    return ExtractConfig(
        backbones=tuple(data["backbones"]),
        weights=parse_weights(data.get("weights", "imagenet")),
        image_size=data.get("image_size") or None,
        batch_size=int(data.get("batch_size", 32)),
        cache_dir=run.resolve(data.get("cache_dir", "features_cache")),
        views=tuple(data.get("views") or ("plain",)),
        precision=str(data.get("precision", "float32")),  # the members were trained on these vectors
        split=data.get("split") or None,
    )


@dataclass
class SavedEnsemble:
    """A run folder's fitted ensemble: extraction settings, member configs, fold models, combiner."""

    run: RunDir
    extraction: object  # ExtractConfig or None
    members: List[dict]
    models: Dict[str, List[Path]]
    result: object  # EnsembleResult
    oof_key: str = ""
    test_failed: List[list] = field(default_factory=list)

    @classmethod
    def load(cls, run_dir) -> "SavedEnsemble":
        """Read ``RUN_DIR/ensemble.json``.

        Raises
        ------
        FileNotFoundError
            No ensemble.json in the run folder.
        ValueError
            Another format, unreadable JSON, or a model path outside ``models/``
            (:class:`~catdog_features.run.paths.PathEscapeError`).
        """
        from catdog_features.ensemble import EnsembleResult

        run = RunDir(run_dir)
        data = _read(run)
        models = {  # relative to the run folder, and inside its models/
            name: [check_inside(run.resolve(p), run.models, where=f"{run.ensemble}: models.{name}[{k}]")
                   for k, p in enumerate(paths)]
            for name, paths in data["models"].items()
        }
        return cls(
            run=run,
            extraction=None if data.get("extraction") is None else extraction_from_dict(data["extraction"], run),
            members=data["members"],
            models=models,
            result=EnsembleResult.from_dict(data["ensemble"]),
            oof_key=data.get("oof_key", ""),
            test_failed=data.get("test_failed", []),
        )

    def write(self) -> Path:
        """Write ``ensemble.json`` atomically (paths inside the run folder stored relative to it)."""
        extraction = None
        if self.extraction is not None:
            extraction = self.extraction.to_dict()
            extraction.pop("allow_outside", None)
            extraction["cache_dir"] = self.run.relative(self.extraction.cache_dir)
        return write_json(self.run.ensemble, {
            "format": ENSEMBLE_FORMAT,
            "extraction": extraction,
            "members": self.members,
            "models": {name: [self.run.relative(p) for p in paths] for name, paths in self.models.items()},
            "ensemble": self.result.to_dict(),
            "oof_key": self.oof_key,
            "test_failed": [list(t) for t in self.test_failed],
        })

    @property
    def backbones(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(b for m in self.members for b in m["backbones"]))

    @property
    def cache_inside(self) -> bool:
        """Whether the recorded feature cache lies inside the run folder."""
        return self.extraction is not None and is_inside(self.extraction.cache_dir, self.run.root)

    def member_probabilities(self, features) -> Dict[str, np.ndarray]:
        """Each member's mean fold-model probabilities for a FeatureSet."""
        n_classes = len(self.result.class_names)
        out = {}
        for member in self.members:
            paths = self.models.get(member["name"], [])
            if not paths:
                raise FileNotFoundError(f"No saved fold models for member {member['name']!r} in {self.run.root}.")
            # a TTA member: the mean over its views (each the mean of its fold models)
            out[member["name"]] = member_proba(lambda X: fold_mean_proba(paths, X, n_classes), features, member)
        return out

    def predict_features(self, features) -> np.ndarray:
        """Ensemble probabilities (unclipped) for a FeatureSet holding the members' backbones."""
        if len(features) == 0:
            return np.zeros((0, len(self.result.class_names)))
        return self.result.combine(self.member_probabilities(features))


def _read(run: RunDir) -> dict:
    if not run.ensemble.is_file():
        raise FileNotFoundError(
            f"No fitted ensemble in run folder {str(run.root)!r} (missing {ENSEMBLE}); "
            "run `catdog-features ensemble` or `catdog-features run` first."
        )
    try:
        data = json.loads(run.ensemble.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(run.ensemble)!r} is not valid JSON ({exc}); expected a file written by "
                         "`catdog-features run` or `ensemble`.") from None
    if not isinstance(data, dict) or data.get("format") != ENSEMBLE_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{str(run.ensemble)!r} has format {got!r}; expected {ENSEMBLE_FORMAT!r}.")
    return data
