"""The run folder: where `catdog-features run` / `ensemble` / `submit` put things, and its manifest.

Layout of a run folder (every name is a constant below; paths in JSON files are relative
to the run folder unless they point outside it, e.g. the feature cache)::

    RUN_DIR/
      manifest.json          what ran and what it produced (MANIFEST): format tag, created_at /
                             updated_at, the resolved config ("config", JSON form of
                             config.RunConfig, or the command's arguments), per-stage records
                             "stages": {"extract", "sweep", "oof", "ensemble", "submission",
                             "report"} each with "status" ("done" | "reused" | "skipped"),
                             "seconds" and stage details (cache hits, trial counts, best loss,
                             chosen method, clip, ...), "outputs": name -> relative path of each
                             file listed here that exists, "notes" (list of str), and
                             "versions" (python, catdog-features, numpy, scikit-learn,
                             tensorflow, keras, hyperopt).
      config.toml            the config file as given to `run` (CONFIG_COPY; --set overrides are
                             in manifest.json["config"]).
      trials.sqlite          the Hyperopt sweep's trials (TRIALS; search.TrialStore format:
                             resumable; read with search.TrialStore(path).load()).
      oof.h5                 out-of-fold + test probabilities per member (OOF;
                             ensemble.OOFPredictions.load): ids, labels, fold per row,
                             class_names, members/<name>/oof (n, n_classes),
                             members/<name>/test (m, n_classes), test_ids, member configs,
                             failed test images, and the key it was computed for.
      models/<member>/fold<k>.keras  the K fold heads of each member (MODELS; DenseHead.save,
                             each with a JSON sidecar fold<k>.keras.json). Their mean is the
                             member's test prediction; `predict` reuses them on new images.
      ensemble.json          the fitted ensemble (ENSEMBLE): "extraction" (backbones, weights,
                             image_size, batch_size, cache_dir: what `predict` needs to extract
                             features of new images), "members" (configs: name, params,
                             backbones, trial, sweep_loss), "models" (member -> fold model
                             paths), "ensemble" (ensemble.EnsembleResult.to_dict(): method,
                             weights, stacker coefficients, clip, clip_losses, scores table,
                             prior, class_names), "oof_key", "test_failed" ([id, path, reason]).
      scores.txt             the score table printed at the end of the ensemble stage (SCORES):
                             each member's and ensembler's OOF log loss and accuracy.
      test_predictions.csv   the chosen ensemble's unclipped test probabilities (TEST_PREDICTIONS;
                             id,<class names>, readable with submission.read_probabilities).
      submission.csv         the Kaggle submission, clipped (SUBMISSION).
      report/                figures, CSV tables and report.md written by
                             catdog_features.report.write_report (REPORT), if that module exists
                             and [output] report is true.
      report.html            the report's HTML page (REPORT_HTML; same condition).

Nothing here is pickled; every file is HDF5, SQLite, Keras' own format, JSON, TOML or CSV.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from catdog_features._io import write_json

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

    # -- ensemble --------------------------------------------------------------------
    def read_ensemble(self) -> Dict[str, Any]:
        """``ensemble.json`` (raises FileNotFoundError naming the run when it is missing)."""
        if not self.ensemble.is_file():
            raise FileNotFoundError(
                f"No fitted ensemble in run folder {str(self.root)!r} (missing {ENSEMBLE}); "
                "run `catdog-features ensemble` or `catdog-features run` first."
            )
        with open(self.ensemble, encoding="utf-8") as fh:
            return json.load(fh)
