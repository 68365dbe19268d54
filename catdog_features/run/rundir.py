"""The run folder: where `catdog-features run` / `ensemble` / `submit` put things, and its manifest.

Layout of a run folder (every name is a constant below; paths in JSON files are relative
to the run folder unless they point outside it, e.g. the feature cache)::

    RUN_DIR/
      manifest.json          what ran and what it produced (MANIFEST), one shape for every
                             command: format tag, created_at / updated_at, "command" ("run",
                             "ensemble" or "demo"), "config" (config.RunConfig.to_dict(): the
                             sections data, extract, sweep (null when the trials came from a
                             given file), ensemble, output, and "source"), "overrides" (--set
                             items), per-stage records "stages": {"extract", "sweep", "oof",
                             "ensemble", "submission", "report"} each with "status" ("done" |
                             "reused" | "skipped" | ...), "seconds" and stage details
                             (extract: per-backbone dim, images/s, bytes on disk, failures;
                             sweep: the trials file, trial counts, best loss; ensemble: the
                             chosen method, clip and scores; ...), "outputs": name -> relative
                             path of each file listed here that exists, "notes" (list of str),
                             "versions" (python, catdog-features, numpy, scikit-learn,
                             tensorflow, keras, hyperopt, h5py) and "seconds".
      config.toml            the config file as given to `run` (CONFIG_COPY; --set overrides are
                             in manifest.json["overrides"]).
      trials.sqlite          the Hyperopt sweep's trials (TRIALS; owner: search.trials, read
                             with search.read_trials(path)). `ensemble --trials FILE` records
                             where its trials file is instead (manifest stages.sweep.trials).
      oof.h5                 out-of-fold + test probabilities per member and the ensemblers'
                             OOF probabilities with the chosen one (OOF; owner:
                             ensemble.OOFPredictions).
      models/<member>/fold<k>.keras  the K fold heads of each member (MODELS; DenseHead.save,
                             each with a JSON sidecar fold<k>.keras.json; listed by
                             RunDir.fold_models). Their mean is the member's test prediction,
                             unless the member was refitted on all training rows:
      models/<member>/full.h5   that refit (RunDir.refit_model; ensemble.fit_oof test_from;
                             by default the logistic-regression member's, LinearHead.save).
      ensemble.json          the fitted ensemble (ENSEMBLE; owner: run.saved.SavedEnsemble).
      scores.txt             the score table printed at the end of the ensemble stage (SCORES).
      test_predictions.csv   the chosen ensemble's unclipped test probabilities (TEST_PREDICTIONS;
                             id,<class names>, readable with submission.read_probabilities).
      submission.csv         the Kaggle submission, clipped (SUBMISSION).
      report/                figures, CSV tables and report.md written by
                             catdog_features.report.write_report (REPORT).
      report.html            the report's HTML page (REPORT_HTML).

Nothing here is pickled; every file is HDF5, SQLite, Keras' own format, JSON, TOML or CSV.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from catdog_features._io import write_json
from catdog_features.run.paths import PathEscapeError

#: Format tag of manifest.json.
FORMAT = "catdog-features-run/1"
MANIFEST = "manifest.json"
CONFIG_COPY = "config.toml"
TRIALS = "trials.sqlite"
OOF = "oof.h5"
MODELS = "models"
ENSEMBLE = "ensemble.json"
SCORES = "scores.txt"
TEST_PREDICTIONS = "test_predictions.csv"
SUBMISSION = "submission.csv"
REPORT = "report"
REPORT_HTML = "report.html"
#: Feature cache `predict` uses when the run's own cache is outside the run folder (run.predict).
LOCAL_CACHE = "features_cache"

#: output name -> file/folder name, in pipeline order (what "outputs" in the manifest lists).
OUTPUTS = {
    "config": CONFIG_COPY,
    "trials": TRIALS,
    "oof": OOF,
    "models": MODELS,
    "ensemble": ENSEMBLE,
    "scores": SCORES,
    "test_predictions": TEST_PREDICTIONS,
    "submission": SUBMISSION,
    "report": REPORT,
    "report_html": REPORT_HTML,
}


_FOLD = re.compile(r"^fold(\d+)\.(?:keras|h5)$")  # one file per fold, by head kind


def is_run_entry(name: str) -> bool:
    """Whether a name in a folder is one a run folder holds (an output, its side files, backups, temporaries)."""
    names = (*OUTPUTS.values(), MANIFEST, LOCAL_CACHE)
    return name.startswith(".") or any(name.startswith(n) or name.startswith(Path(n).stem + ".") for n in names)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_versions() -> Dict[str, Optional[str]]:
    """Versions of the libraries whose numerics matter (from package metadata; imports nothing)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for dist in ("catdog-features", "numpy", "scikit-learn", "tensorflow", "keras", "hyperopt", "h5py"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


class RunDir:
    """Paths of one run folder and its manifest (see the module docstring for the layout)."""

    def __init__(self, root):
        self.root = Path(root).expanduser().absolute()

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # -- paths -----------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """Path of an output by name (a key of :data:`OUTPUTS`) or file name."""
        return self.root / OUTPUTS.get(name, name)

    manifest = property(lambda self: self.root / MANIFEST)
    config = property(lambda self: self.root / CONFIG_COPY)
    trials = property(lambda self: self.root / TRIALS)
    oof = property(lambda self: self.root / OOF)
    models = property(lambda self: self.root / MODELS)
    ensemble = property(lambda self: self.root / ENSEMBLE)
    scores = property(lambda self: self.root / SCORES)
    test_predictions = property(lambda self: self.root / TEST_PREDICTIONS)
    submission = property(lambda self: self.root / SUBMISSION)
    report = property(lambda self: self.root / REPORT)
    report_html = property(lambda self: self.root / REPORT_HTML)

    def fold_model(self, member: str, fold: int) -> Path:
        """``models/<member>/fold<k>.keras``."""
        return self.models / member / f"fold{fold}.keras"

    def refit_model(self, member: str) -> Path:
        """``models/<member>/full.keras``: the member refitted on all training rows (the saved
        file's suffix follows its head kind, as for :meth:`fold_model`)."""
        from catdog_features.ensemble.fit import REFIT_STEM

        return self.models / member / f"{REFIT_STEM}.keras"

    def fold_models(self, member: str) -> List[Path]:
        """The fold models saved for ``member``, in fold order (``[]`` when there are none).

        ``member`` is a name read from a file (ensemble.json, oof.h5): one that leads out of
        ``models/`` (``"../x"``) is a :class:`~catdog_features.run.paths.PathEscapeError`.
        """
        folder = self.models / member
        if folder.resolve().parent != self.models.resolve():
            raise PathEscapeError(f"{self.models}: member name {member!r} is not a folder of models/; expected a "
                                  "plain name such as 't3'.")
        if not folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _FOLD.match(p.name))]
        return [p for _, p in sorted(found)]

    def trials_path(self) -> Path:
        """The run's trials file: ``trials.sqlite``, or the file ``ensemble --trials`` recorded."""
        given = (self.read_manifest().get("stages", {}).get("sweep") or {}).get("trials")
        return self.resolve(given) if given else self.trials

    def unusable(self) -> Optional[str]:
        """Why this folder cannot become a run folder, or None (new, empty, or already a run folder)."""
        if not self.root.exists():
            return None
        if not self.root.is_dir():
            return "exists and is not a folder"
        if self.manifest.is_file():
            return None
        foreign = sorted(e.name for e in self.root.iterdir() if not is_run_entry(e.name))
        if not foreign:
            return None
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        return (f"is a folder that holds other files ({shown}) and no {MANIFEST}; expected a new or empty "
                "folder, or the folder of an earlier run")

    def relative(self, path) -> str:
        """``path`` relative to the run folder when inside it, else absolute."""
        path = Path(path).absolute()
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def resolve(self, path) -> Path:
        """Inverse of :meth:`relative`."""
        path = Path(path)
        return path if path.is_absolute() else self.root / path

    # -- manifest --------------------------------------------------------------------
    def read_manifest(self) -> Dict[str, Any]:
        """The manifest, or ``{}`` when there is none yet."""
        if not self.manifest.is_file():
            return {}
        with open(self.manifest, encoding="utf-8") as fh:
            data = json.load(fh)
        if data.get("format") != FORMAT:
            raise ValueError(f"{str(self.manifest)!r} has format {data.get('format')!r}; expected {FORMAT!r}.")
        return data

    def write_manifest(self, data: Dict[str, Any]) -> Path:
        """Write the manifest atomically, refreshing ``updated_at``, ``outputs`` and ``versions``."""
        data = dict(data)
        data["format"] = FORMAT
        data.setdefault("created_at", _now())
        data["updated_at"] = _now()
        data.setdefault("stages", {})
        data.setdefault("notes", [])
        data["outputs"] = {name: rel for name, rel in OUTPUTS.items() if (self.root / rel).exists()}
        data["versions"] = run_versions()
        return write_json(self.manifest, data)

    def begin(self, command: str, config: Dict[str, Any], overrides: Sequence[str] = ()) -> Dict[str, Any]:
        """Start (or restart) a run: the folder, and the manifest's ``command``, ``config`` and ``overrides``.

        Every command that writes a run folder calls this with ``RunConfig.to_dict()``, so
        the manifest has one shape. Stage records of an earlier run stay until replaced.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        data = self.read_manifest()
        data.update(command=command, config=config, overrides=list(overrides), notes=[])
        self.write_manifest(data)
        return data

    def update_manifest(self, **fields) -> Dict[str, Any]:
        """Merge top-level ``fields`` into the manifest and write it."""
        data = self.read_manifest()
        data.update(fields)
        self.write_manifest(data)
        return data

    def record_stage(self, stage: str, status: str, seconds: float, **details) -> Dict[str, Any]:
        """Record one stage's outcome (``status``: done | reused | skipped) in the manifest."""
        data = self.read_manifest()
        data.setdefault("stages", {})[stage] = {"status": status, "seconds": round(float(seconds), 3), **details}
        self.write_manifest(data)
        return data

    def add_note(self, note: str) -> None:
        data = self.read_manifest()
        data.setdefault("notes", []).append(note)
        self.write_manifest(data)
