"""The whole pipeline, stage by stage: extract -> sweep -> OOF ensemble -> submission -> report.

Used by ``catdog-features run`` (from a :class:`~catdog_features.run.config.RunConfig`), by
``ensemble`` / ``predict`` / ``submit`` (one stage each) and by ``demo``. Every stage reuses
what is already there and still valid, so re-running a finished config does no model work:

* **extract**: the feature cache answers (fingerprinted by images, backbone, weights, size);
* **sweep**: the SQLite trials file already holds ``max_evals`` trials (a trials file made
  with a different space/data is moved aside and the sweep starts over);
* **OOF**: ``oof.h5`` is reused when its key (a hash of the member configs, folds, seed and
  the feature values) matches and every fold model is on disk;
* the ensemblers, the submission and the report are cheap and always re-made.

Outputs go into a run folder laid out as described in :mod:`catdog_features.run.rundir`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from catdog_features._io import write_json
from catdog_features.features.backbones import parse_weights, weights_to_text
from catdog_features.run.rundir import RunDir

ENSEMBLE_FORMAT = "catdog-features-ensemble/1"


# --------------------------------------------------------------------------- extraction
@dataclass(frozen=True)
class ExtractionSettings:
    """What stage 1 needs to (re)compute the features of any images, stored with a run."""

    backbones: Tuple[str, ...]
    weights: Any = "imagenet"  # "imagenet", None, a path, or a dict backbone -> one of those
    image_size: Optional[int] = None
    batch_size: int = 32
    cache_dir: str = "features_cache"

    def to_dict(self) -> dict:
        return {
            "backbones": list(self.backbones),
            "weights": weights_to_text(self.weights),
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "cache_dir": str(self.cache_dir),
        }

    @classmethod
    def from_dict(cls, data) -> "ExtractionSettings":
        return cls(
            backbones=tuple(data["backbones"]),
            weights=parse_weights(data.get("weights", "imagenet")),
            image_size=data.get("image_size"),
            batch_size=int(data.get("batch_size", 32)),
            cache_dir=str(data.get("cache_dir", "features_cache")),
        )

    @classmethod
    def from_config(cls, extract) -> "ExtractionSettings":
        return cls(tuple(extract.backbones), extract.weights, extract.image_size, extract.batch_size, str(extract.cache_dir))


def load_features(source, settings: ExtractionSettings, *, backbones: Optional[Sequence[str]] = None,
                  labels_csv=None, progress: bool = True):
    """Features of ``source`` for ``backbones`` (default: all of ``settings``), from the cache when there."""
    from catdog_features.features.extract import extract_features

    backbones = tuple(backbones or settings.backbones)
    weights = settings.weights
    if isinstance(weights, dict):
        weights = {k: (str(v) if isinstance(v, Path) else v) for k, v in weights.items() if k in backbones}
    elif isinstance(weights, Path):
        weights = str(weights)
    return extract_features(
        str(source) if isinstance(source, Path) else source,
        backbones=backbones,
        cache_dir=str(settings.cache_dir),
        weights=weights,
        image_size=settings.image_size,
        batch_size=settings.batch_size,
        labels_csv=None if labels_csv is None else str(labels_csv),
        progress=progress,
    )


def _feature_summary(fs) -> dict:
    return {
        "n": int(len(fs)),
        "failed": [[str(p), str(r)] for p, r in fs.failed],
        "cache_hits": {k: bool(v) for k, v in getattr(fs, "cache_hits", {}).items()},
        "cache_files": {k: str(v) for k, v in getattr(fs, "cache_files", {}).items()},
    }


# --------------------------------------------------------------------------- sweep
def build_space(backbones: Sequence[str], search_backbones: bool, overrides: Optional[dict] = None,
                preset: str = "default") -> dict:
    """The search space of a ``[sweep] space_preset`` with the ``[sweep.space]`` overrides applied.

    ``head`` in the overrides (a kind, or ``{choice = [...]}`` of kinds) keeps those head kinds.
    """
    from catdog_features.run.config import to_hyperopt
    from catdog_features.search import make_space

    overrides = dict(overrides or {})
    converted = to_hyperopt({k: v for k, v in overrides.items() if k != "head"})
    if "head" in overrides:
        head = overrides["head"]
        converted["head"] = head["choice"] if isinstance(head, dict) else head
    return make_space(preset, backbones, search_backbones, converted)


def run_sweep(train, sweep_config, backbones: Sequence[str], trials_path, *, progress: bool = True,
              log: Callable[[str], None] = print):
    """Run (or resume, or find finished) the sweep of a run config."""
    from catdog_features.search import SweepMismatchError, sweep

    preset, early = sweep_config.space_preset, sweep_config.early_stopping
    kwargs = dict(
        space=build_space(backbones, sweep_config.search_backbones, sweep_config.space, preset),
        max_evals=sweep_config.max_evals,
        trials_path=trials_path,
        backbones=list(backbones),
        search_backbones=sweep_config.search_backbones,
        cv=sweep_config.cv,
        validation_split=sweep_config.validation_split,
        early_stopping=early if early is not None else ("fold" if preset == "reference" else "inner"),
        random_state=sweep_config.seed,
        head_params=sweep_config.head_params(),
        progress=progress,
    )
    try:
        return sweep(train, **kwargs), False
    except SweepMismatchError:
        log("note: the sweep settings or the features changed since the trials file was written; "
            "moving it aside and starting a new sweep.")
        return sweep(train, **kwargs, new=True), True


# --------------------------------------------------------------------------- OOF + ensemble
def _fold_head(run: RunDir, member: str, fold: int) -> Optional[Path]:
    """The saved fold head of a member, whatever its kind (``.keras``, ``.h5``), or None."""
    from catdog_features.heads import find_saved_head

    return find_saved_head(run.fold_model(member, fold))


def _models_complete(run: RunDir, members, folds: int) -> bool:
    return all(_fold_head(run, m["name"], k) is not None for m in members for k in range(folds))


def fit_ensemble_stage(run: RunDir, members, train, test, *, folds: int = 5, seed: int = 0, method: str = "auto",
                       clip="auto", settings: Optional[ExtractionSettings] = None, progress: bool = True,
                       log: Callable[[str], None] = print) -> Dict[str, Any]:
    """OOF predictions (reused when unchanged) + ensemblers; writes oof.h5, models/, ensemble.json,
    scores.txt and test_predictions.csv into ``run``.

    Returns
    -------
    dict
        ``result`` (EnsembleResult), ``oof`` (OOFPredictions), ``reused`` (bool), ``seconds``.
    """
    from catdog_features.ensemble import (
        OOFPredictions, fit_ensemblers, fit_oof, make_folds, normalize_members, oof_key, read_oof_key,
    )
    from catdog_features.submission import write_probabilities

    members = normalize_members(members)
    key = oof_key(members, train, test, folds, seed)
    train_key = oof_key(members, train, None, folds, seed)
    n_folds = int(make_folds(train.labels, folds, seed).max()) + 1
    start = time.perf_counter()
    stored = None
    if run.oof.is_file() and read_oof_key(run.oof) is not None:
        try:
            stored = OOFPredictions.load(run.oof)
        except (OSError, ValueError, KeyError):  # an older format or a damaged file: refit
            stored = None
    models_ok = _models_complete(run, members, n_folds)
    if stored is not None and stored.key == key and models_ok:
        oof, status = stored, "reused"
        log(f"OOF predictions unchanged (key {key}): reusing {run.oof}")
    elif stored is not None and stored.info.get("train_key") == train_key and models_ok:
        # same members on the same training features: only the test set changed, so the
        # saved fold models predict it; no head is refitted
        oof, status = stored, "test re-predicted"
        oof.test = _predict_test(run, members, test, n_folds, len(train.class_names))
        oof.test_ids = None if test is None else np.asarray(test.ids, dtype=str)
        oof.test_failed = [] if test is None else [(Path(p).stem, str(p), str(r)) for p, r in test.failed]
        oof.key = key
        oof.save(run.oof)
        log(f"OOF predictions unchanged, test set changed: predicted it with the saved fold models ({run.models})")
    else:
        if run.models.exists():
            shutil.rmtree(run.models)  # fold models of other member configs would be stale
        oof = fit_oof(members, train, test, folds=folds, random_state=seed, models_dir=run.models, progress=progress)
        oof.save(run.oof)
        status = "done"
    reused = status != "done"
    result = fit_ensemblers(oof, method=method, clip=clip, random_state=seed)
    data = {
        "format": ENSEMBLE_FORMAT,
        "extraction": settings.to_dict() if settings is not None else None,
        "members": oof.members,
        "models": {m["name"]: [run.relative(_fold_head(run, m["name"], k)) for k in range(n_folds)] for m in oof.members},
        "ensemble": result.to_dict(),
        "oof_key": oof.key,
        "test_failed": [list(t) for t in oof.test_failed],
    }
    write_json(run.ensemble, data)
    run.scores.write_text(result.format_table() + "\n", encoding="utf-8")
    if result.test_proba is not None:
        write_probabilities(run.test_predictions, oof.test_ids, result.test_proba, result.class_names)
    elif run.test_predictions.exists():
        run.test_predictions.unlink()  # from an earlier config with a test set
    return {"result": result, "oof": oof, "reused": reused, "status": status, "seconds": time.perf_counter() - start}


def _predict_test(run: RunDir, members, test, n_folds: int, n_classes: int) -> Dict[str, np.ndarray]:
    """Each member's mean fold-model probabilities on ``test`` (saved models, no refit)."""
    from catdog_features.ensemble import aligned_proba
    from catdog_features.heads import load_head

    if test is None or len(test) == 0:
        return {}
    out = {}
    for member in members:
        X = test.concat(member["backbones"])
        out[member["name"]] = np.mean(
            [aligned_proba(load_head(_fold_head(run, member["name"], k)), X, n_classes) for k in range(n_folds)], axis=0
        )
    return out


# --------------------------------------------------------------------------- saved ensembles
@dataclass
class SavedEnsemble:
    """A run folder's fitted ensemble: extraction settings, member configs, fold models, combiner."""

    run: RunDir
    settings: Optional[ExtractionSettings]
    members: List[dict]
    models: Dict[str, List[Path]]
    result: Any  # EnsembleResult
    test_failed: List[list] = field(default_factory=list)

    @classmethod
    def load(cls, run_dir) -> "SavedEnsemble":
        from catdog_features.ensemble import EnsembleResult

        run = RunDir(run_dir)
        data = run.read_ensemble()
        if data.get("format") != ENSEMBLE_FORMAT:
            raise ValueError(f"{str(run.ensemble)!r} has format {data.get('format')!r}; expected {ENSEMBLE_FORMAT!r}.")
        return cls(
            run=run,
            settings=None if data.get("extraction") is None else ExtractionSettings.from_dict(data["extraction"]),
            members=data["members"],
            models={name: [run.resolve(p) for p in paths] for name, paths in data["models"].items()},
            result=EnsembleResult.from_dict(data["ensemble"]),
            test_failed=data.get("test_failed", []),
        )

    @property
    def backbones(self) -> Tuple[str, ...]:
        seen = []
        for m in self.members:
            for b in m["backbones"]:
                if b not in seen:
                    seen.append(b)
        return tuple(seen)

    def member_probabilities(self, features) -> Dict[str, np.ndarray]:
        """Each member's mean fold-model probabilities for a FeatureSet."""
        from catdog_features.ensemble import aligned_proba
        from catdog_features.heads import load_head

        n_classes = len(self.result.class_names)
        out = {}
        for member in self.members:
            paths = self.models.get(member["name"], [])
            if not paths:
                raise FileNotFoundError(f"No saved fold models for member {member['name']!r} in {self.run.root}.")
            X = features.concat(member["backbones"])
            out[member["name"]] = np.mean([aligned_proba(load_head(p), X, n_classes) for p in paths], axis=0)
        return out

    def predict_features(self, features) -> np.ndarray:
        """Ensemble probabilities (unclipped) for a FeatureSet holding the members' backbones."""
        if len(features) == 0:
            return np.zeros((0, len(self.result.class_names)))
        return self.result.combine(self.member_probabilities(features))


@dataclass
class Prediction:
    """Probabilities for a folder of images: ``ids``, ``probs`` (n, n_classes), ``failed`` (id, path, reason)."""

    ids: np.ndarray
    probs: np.ndarray
    class_names: Tuple[str, ...]
    failed: List[tuple]


def predict_folder(run_dir, source, *, cache_dir=None, batch_size: Optional[int] = None,
                   progress: bool = True) -> Prediction:
    """Predict any folder (or list) of images with a run's saved ensemble.

    Features come from the cache when they are there, else they are extracted (with the
    run's extraction settings; ``cache_dir`` / ``batch_size`` may override where/how).
    """
    import dataclasses

    saved = SavedEnsemble.load(run_dir)
    if saved.settings is None:
        raise ValueError(f"Run {str(saved.run.root)!r} stores no extraction settings; cannot extract features for new images.")
    settings = saved.settings
    if cache_dir is not None:
        settings = dataclasses.replace(settings, cache_dir=str(cache_dir))
    if batch_size is not None:
        settings = dataclasses.replace(settings, batch_size=int(batch_size))
    features = load_features(source, settings, backbones=saved.backbones, progress=progress)
    probs = saved.predict_features(features)
    failed = [(Path(p).stem, str(p), str(r)) for p, r in features.failed]
    return Prediction(np.asarray(features.ids, dtype=str), probs, saved.result.class_names, failed)


def write_run_submission(run_dir, out=None, *, sample_submission=None, clip=None, allow_missing_classes: bool = False,
                         prediction: Optional[Prediction] = None):
    """Write a run's Kaggle submission (default: its stored test predictions and OOF-chosen clip).

    Returns
    -------
    SubmissionInfo
    """
    from catdog_features.submission import read_probabilities, write_submission

    run = RunDir(run_dir)
    data = run.read_ensemble()
    ens = data["ensemble"]
    if prediction is None:
        if not run.test_predictions.is_file():
            raise FileNotFoundError(
                f"Run {str(run.root)!r} has no test predictions ({run.test_predictions.name}); "
                "give the test folder (submit --test DIR) or set [data] test in the run config."
            )
        ids, probs, class_names = read_probabilities(run.test_predictions)
        failed = [t[0] for t in data.get("test_failed", [])]
    else:
        ids, probs, class_names = prediction.ids, prediction.probs, prediction.class_names
        failed = [t[0] for t in prediction.failed]
    return write_submission(
        out or run.submission,
        ids,
        probs,
        class_names,
        sample_submission=sample_submission,
        failed_ids=failed,
        prior=np.asarray(ens["prior"]),
        clip=ens["clip"] if clip is None else float(clip),
        allow_missing_classes=allow_missing_classes,
    )


# --------------------------------------------------------------------------- the whole run
@dataclass
class RunSummary:
    """What :func:`run_pipeline` did: the run folder, per-stage statuses and where outputs went."""

    run_dir: Path
    stages: Dict[str, dict]
    outputs: Dict[str, str]
    method: Optional[str] = None
    clip: Optional[float] = None
    scores: List[dict] = field(default_factory=list)
    seconds: float = 0.0


def _report_key(run: RunDir, n_trials: int) -> str:
    """Hash of what the report shows: the ensemble, predictions, submission and trial count."""
    import hashlib

    digest = hashlib.sha256(str(n_trials).encode())
    for path in (run.ensemble, run.test_predictions, run.submission, run.scores):
        digest.update(path.read_bytes() if path.is_file() else b"-")
    return digest.hexdigest()[:20]


def _run_report(run: RunDir, log, key: Optional[str] = None) -> dict:
    previous = run.read_manifest().get("stages", {}).get("report", {})
    if key is not None and previous.get("input_key") == key and previous.get("status") in ("done", "reused") \
            and run.report_html.is_file():
        log(f"report: unchanged, kept {run.report_html}")
        return {"status": "reused", "input_key": key, "path": str(run.report_html)}
    try:
        from catdog_features.report import write_report
    except ImportError:
        log("report: skipped (catdog_features.report is not available in this version)")
        return {"status": "skipped", "reason": "catdog_features.report not available"}
    try:
        out = write_report(run.root)
    except Exception as exc:  # a broken plot must not discard a finished run
        log(f"report: FAILED ({type(exc).__name__}: {exc}); the other outputs are complete")
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {"status": "done", "input_key": key, "path": str(out) if out is not None else str(run.report_html)}


def run_pipeline(config, *, progress: bool = True, log: Callable[[str], None] = print, overrides: Sequence[str] = ()) -> RunSummary:
    """Run every stage of a :class:`~catdog_features.run.config.RunConfig` into its output folder.

    Parameters
    ----------
    config : RunConfig
    progress : bool
        Progress bars for extraction, sweep and OOF fits.
    log : callable(str)
        Where stage messages go (default ``print``).
    overrides : sequence of str
        The ``--set`` items that produced ``config`` (recorded in the manifest).

    Returns
    -------
    RunSummary
    """
    from catdog_features.run.config import check_paths
    from catdog_features.ensemble import members_from_sweep

    t_start = time.perf_counter()
    check_paths(config)
    run = RunDir(config.output.dir)
    run.root.mkdir(parents=True, exist_ok=True)
    if config.source is not None and Path(config.source).resolve() != run.config.resolve():
        shutil.copyfile(config.source, run.config)
    manifest = run.read_manifest()
    manifest.update(config=config.to_dict(), overrides=list(overrides), notes=[])
    run.write_manifest(manifest)
    settings = ExtractionSettings.from_config(config.extract)
    log(f"run folder: {run.root}")

    # -- 1. features ----------------------------------------------------------------
    t0 = time.perf_counter()
    log(f"[1/5] features: {', '.join(settings.backbones)} (cache {settings.cache_dir})")
    train = load_features(config.data.train, settings, labels_csv=config.data.labels_csv, progress=progress)
    if train.labels is None:
        raise ValueError(f"[data] train: no labels found in {str(config.data.train)!r}; expected a labelled layout "
                         "(cat.N.jpg/dog.N.jpg, one folder per class, or a labels.csv).")
    test = load_features(config.data.test, settings, progress=progress) if config.data.test else None
    if train.failed:
        run.add_note(f"{len(train.failed)} training image(s) could not be read and were left out")
        log(f"warning: {len(train.failed)} training image(s) could not be read and were left out, e.g. {train.failed[0]}")
    hits = all(train.cache_hits.values()) and (test is None or all(test.cache_hits.values()))
    run.record_stage("extract", "reused" if hits else "done", time.perf_counter() - t0,
                     settings=settings.to_dict(), train=_feature_summary(train),
                     test=None if test is None else _feature_summary(test))

    # -- 2. sweep -------------------------------------------------------------------
    t0 = time.perf_counter()
    log(f"[2/5] sweep: {config.sweep.max_evals} evaluations, trials in {run.trials}")
    result, restarted = run_sweep(train, config.sweep, settings.backbones, run.trials, progress=progress, log=log)
    if restarted:
        run.add_note("the trials file belonged to different sweep settings; it was moved aside and the sweep restarted")
    n_new = int(result.timings.get("n_new", 0))
    run.record_stage("sweep", "reused" if n_new == 0 else "done", time.perf_counter() - t0,
                     n_trials=len(result.trials), n_new=n_new, n_ok=result.n_ok, best_loss=result.best_loss,
                     best_params=result.best_params, best_backbones=result.best_backbones)
    members = members_from_sweep(result, config.ensemble.top_k)

    # -- 3. OOF + ensemble ------------------------------------------------------------
    log(f"[3/5] ensemble: {len(members)} member(s) x {config.ensemble.folds} folds, method={config.ensemble.method}, "
        f"clip={config.ensemble.clip}")
    stage = fit_ensemble_stage(run, members, train, test, folds=config.ensemble.folds, seed=config.ensemble.seed,
                               method=config.ensemble.method, clip=config.ensemble.clip, settings=settings,
                               progress=progress, log=log)
    ens = stage["result"]
    chosen = next(r for r in ens.scores if r["name"] == ens.method)
    run.record_stage("oof", stage["status"], stage["seconds"], key=stage["oof"].key,
                     members=[m["name"] for m in stage["oof"].members], folds=int(stage["oof"].info.get("folds", 0)),
                     fit_seconds=stage["oof"].info.get("fit_seconds"))
    run.record_stage("ensemble", "done", 0.0, method=ens.method, clip=ens.clip, oof_log_loss=chosen["log_loss"],
                     oof_log_loss_clipped=chosen["clipped_log_loss"], oof_accuracy=chosen["accuracy"], scores=ens.scores)
    log(ens.format_table())

    # -- 4. submission ----------------------------------------------------------------
    t0 = time.perf_counter()
    if test is not None:
        info = write_run_submission(run.root, sample_submission=config.data.sample_submission)
        run.record_stage("submission", "done", time.perf_counter() - t0, rows=info.n_rows, format=info.format,
                         clip=ens.clip, filled_ids=list(info.filled_ids),
                         sample_submission=None if config.data.sample_submission is None else str(config.data.sample_submission))
        log(f"[4/5] submission: {info.n_rows} rows ({info.format}, clip {ens.clip:g}) -> {info.path}")
    else:
        run.record_stage("submission", "skipped", 0.0, reason="no [data] test folder")
        log("[4/5] submission: skipped (no [data] test folder)")

    # -- 5. report ----------------------------------------------------------------------
    t0 = time.perf_counter()
    log("[5/5] report")
    if config.output.report:
        report = _run_report(run, log, _report_key(run, len(result.trials)))
    else:
        log("report: skipped ([output] report = false)")
        report = {"status": "skipped", "reason": "[output] report = false"}
    status = report.pop("status")
    run.record_stage("report", status, time.perf_counter() - t0, **report)

    manifest = run.read_manifest()
    manifest["seconds"] = round(time.perf_counter() - t_start, 3)
    run.write_manifest(manifest)
    manifest = run.read_manifest()
    outputs = {name: str(run.root / rel) for name, rel in manifest["outputs"].items()}
    return RunSummary(run.root, manifest["stages"], outputs, ens.method, ens.clip, ens.scores, manifest["seconds"])


def format_outputs(summary: RunSummary) -> str:
    """'where each output went', one line per output (for the CLI)."""
    width = max((len(k) for k in summary.outputs), default=0)
    lines = [f"  {name:<{width}}  {path}" for name, path in summary.outputs.items()]
    lines.append(f"  {'manifest':<{width}}  {summary.run_dir / 'manifest.json'}")
    return "\n".join(lines)
