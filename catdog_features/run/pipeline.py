"""The whole pipeline, stage by stage: extract -> sweep -> OOF ensemble -> submission -> report.

Each stage is a function of the run folder (:class:`~catdog_features.run.rundir.RunDir`)
and the run's :class:`~catdog_features.run.config.RunConfig` that records itself in the
manifest: ``run`` (:func:`run_pipeline`) calls them all; ``ensemble`` calls
:func:`start_run`, :func:`extract_stage`, :func:`trials_stage` and :func:`ensemble_stage`
on a config built from its arguments; ``demo`` runs :func:`run_pipeline`. Every stage
reuses what is already there and still valid, so re-running a finished config does no
model work:

* **extract**: the feature store answers (fingerprinted by images, backbone, weights, size);
  per-backbone facts (dim, images/s, bytes on disk) are recorded from the extraction report;
* **sweep**: the SQLite trials file already holds ``max_evals`` trials (a trials file made
  with a different space/data is moved aside and the sweep starts over);
* **OOF**: ``oof.h5`` is reused when its key (a hash of the member configs, folds, seed,
  the feature values and the heads' version) matches and every fold model is on disk;
* the ensemblers, the submission and the report are cheap and always re-made (the report
  only when what it shows changed).

Outputs go into a run folder laid out as described in :mod:`catdog_features.run.rundir`.
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from catdog_features._io import write_text
from catdog_features.run.predict import (  # noqa: F401  (predict_folder: public here too)
    Prediction, failure_records, load_features, predict_folder, write_run_submission,
)
from catdog_features.run.rundir import RunDir
from catdog_features.run.saved import SavedEnsemble, fold_mean_proba

Log = Callable[[str], None]


# --------------------------------------------------------------------------- start
def start_run(config, command: str = "run", overrides: Sequence[str] = ()) -> RunDir:
    """Check the config's paths, create the run folder and write the manifest's config.

    Every command that writes a run folder starts here, so ``manifest.json["config"]`` is
    always :meth:`RunConfig.to_dict` (``command`` says which command it was).
    """
    from catdog_features.run.config import check_paths

    check_paths(config)
    run = RunDir(config.output.dir)
    run.begin(command, config.to_dict(), overrides)
    if config.source is not None and Path(config.source).resolve() != run.config.resolve():
        shutil.copyfile(config.source, run.config)
    return run


# --------------------------------------------------------------------------- extraction
def _feature_summary(fs) -> dict:
    return {
        "n": int(len(fs)),
        "failed": [[str(p), str(r)] for p, r in fs.failed],
        "cache_hits": {k: bool(v) for k, v in getattr(fs, "cache_hits", {}).items()},
    }


def backbone_records(reports: Sequence[Any], previous: Dict[str, dict]) -> Dict[str, dict]:
    """Per backbone: ``image_size``, ``dim``, ``computed``, ``images_per_s``, ``store_bytes``.

    From the :class:`~catdog_features.features.extract.ExtractionReport` of each extraction
    call of the stage (train, test). The speed is over the images computed in this run; a
    run that computed nothing keeps the speed an earlier run recorded. ``store_bytes`` (bytes
    the store holds for the backbone) is None when the store does not report it.
    """
    out: Dict[str, dict] = {}
    timed: Dict[str, list] = {}  # images computed with a measured speed, and the seconds they took
    for report in reports:
        for name, rep in report.backbones.items():
            rec = out.setdefault(name, {"image_size": rep.image_size, "dim": rep.dim, "computed": 0, "store_bytes": None})
            rec["computed"] += int(rep.computed)
            if rep.computed and rep.images_per_s:
                counts = timed.setdefault(name, [0, 0.0])
                counts[0] += int(rep.computed)
                counts[1] += rep.computed / rep.images_per_s
            size = getattr(rep, "store_bytes", None)
            rec["store_bytes"] = rec["store_bytes"] if size is None else int(size)  # the later call saw more
    for name, rec in out.items():
        n, seconds = timed.get(name, (0, 0.0))
        rec["images_per_s"] = n / seconds if seconds > 0 else (previous.get(name) or {}).get("images_per_s")
    return out


def extract_stage(run: RunDir, config, *, progress: bool = True, log: Log = print):
    """Features of ``[data] train`` (labelled) and ``[data] test``; returns ``(train, test or None)``."""
    from catdog_features.features.views import format_views

    t0 = time.perf_counter()
    extract = config.extract
    log(f"[1/5] features: {', '.join(extract.backbones)} (cache {extract.cache_dir})"
        + (f", views {format_views(extract.views)}" if tuple(extract.views) != ("plain",) else ""))
    dist = config.distributed
    train, train_report = load_features(config.data.train, extract, labels_csv=config.data.labels_csv, progress=progress,
                                        distributed=dist)
    if train.labels is None:
        raise ValueError(f"[data] train: no labels found in {str(config.data.train)!r}; expected a labelled layout "
                         "(cat.N.jpg/dog.N.jpg, one folder per class, or a labels.csv).")
    test, test_report = (load_features(config.data.test, extract, progress=progress, distributed=dist) if config.data.test
                         else (None, None))
    if extract.split:  # the maps a TopBlockHead member trains on, as `<backbone>@map` blocks
        from catdog_features.features.split import with_maps

        log(f"      feature maps at split {extract.split!r} (float16)")
        maps, _ = load_features(config.data.train, extract, labels_csv=config.data.labels_csv, progress=progress,
                                split=extract.split, distributed=dist)
        train = with_maps(train, maps)
        if test is not None:
            test = with_maps(test, load_features(config.data.test, extract, progress=progress, split=extract.split,
                                                 distributed=dist)[0])
    if train.failed:
        run.add_note(f"{len(train.failed)} training image(s) could not be read and were left out")
        log(f"warning: {len(train.failed)} training image(s) could not be read and were left out, e.g. {train.failed[0]}")
    reports = [r for r in (train_report, test_report) if r is not None]
    hits = not any(rep.computed for r in reports for rep in r.backbones.values())
    previous = (run.read_manifest().get("stages", {}).get("extract") or {}).get("backbones") or {}
    run.record_stage("extract", "reused" if hits else "done", time.perf_counter() - t0,
                     settings=extract.to_dict(), backbones=backbone_records(reports, previous),
                     train=_feature_summary(train), test=None if test is None else _feature_summary(test))
    return train, test


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
              log: Callable[[str], None] = print, distributed=None):
    """Run (or resume, or find finished) the sweep of a run config (``distributed``: where its trials run)."""
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
        train_views=list(sweep_config.train_views) or None,
        **_parallel(distributed),
    )
    try:
        return sweep(train, **kwargs), False
    except SweepMismatchError:
        log("note: the sweep settings or the features changed since the trials file was written; "
            "moving it aside and starting a new sweep.")
        return sweep(train, **kwargs, new=True), True


def _parallel(distributed) -> Dict[str, Any]:
    """The ``n_jobs`` / ``distributor`` / ``spark_master`` arguments of a ``[distributed]`` section."""
    if distributed is None:
        return {}
    return {"n_jobs": distributed.jobs, "distributor": distributed.distributor, "spark_master": distributed.master}


def topblock_members(config, train) -> List[dict]:
    """With ``[extract] split``: one TopBlockHead member per backbone whose maps were cached
    (the split model: its last block trained on the maps, next to the heads on vectors)."""
    from catdog_features.features.split import map_backbone

    extract = config.extract
    if not extract.split:
        return []
    out = []
    for name in train.features:
        backbone = map_backbone(name)
        if backbone is None:
            continue
        weights = extract.weights.get(backbone, "imagenet") if isinstance(extract.weights, dict) else extract.weights
        params = {"head": "topblock", "backbone": backbone, "split": extract.split,
                  "weights": str(weights) if isinstance(weights, Path) else weights, "image_size": extract.image_size}
        out.append({"name": f"topblock_{backbone}", "params": params, "backbones": [name]})
    return out


def sweep_stage(run: RunDir, config, train, *, progress: bool = True, log: Log = print):
    """The TPE sweep of ``[sweep]`` into ``RUN_DIR/trials.sqlite``; returns the SweepResult."""
    t0 = time.perf_counter()
    log(f"[2/5] sweep: {config.sweep.max_evals} evaluations, trials in {run.trials}")
    result, restarted = run_sweep(train, config.sweep, config.extract.backbones, run.trials, progress=progress, log=log,
                                    distributed=config.distributed)
    if restarted:
        run.add_note("the trials file belonged to different sweep settings; it was moved aside and the sweep restarted")
    n_new = int(result.timings.get("n_new", 0))
    run.record_stage("sweep", "reused" if n_new == 0 else "done", time.perf_counter() - t0, trials=run.relative(run.trials),
                     n_trials=len(result.trials), n_new=n_new, n_ok=result.n_ok, best_loss=result.best_loss,
                     best_params=result.best_params, best_backbones=result.best_backbones)
    return result


def read_sweep(trials_path):
    """A finished sweep's trials file as a SweepResult (read-only: a running sweep may hold it)."""
    from catdog_features.search import SweepResult, read_trials

    trials_path = Path(trials_path).expanduser().absolute()
    trials, _ = read_trials(trials_path)
    return SweepResult.from_trials(trials, trials_path)


def trials_stage(run: RunDir, sweep, *, log: Log = print) -> None:
    """Record a given trials file (:func:`read_sweep`) as the run's sweep (``ensemble --trials``)."""
    log(f"[2/5] sweep: {len(sweep.trials)} trial(s) read from {sweep.trials_path}")
    run.record_stage("sweep", "given", 0.0, trials=run.relative(sweep.trials_path), n_trials=len(sweep.trials),
                     n_new=0, n_ok=sweep.n_ok, best_loss=sweep.best_loss)


# --------------------------------------------------------------------------- OOF + ensemble
def _fold_head(run: RunDir, member: str, fold: int) -> Optional[Path]:
    """The saved fold head of a member, whatever its kind (``.keras``, ``.h5``), or None."""
    from catdog_features.heads import find_saved_head

    return find_saved_head(run.fold_model(member, fold))


def _refits(member, test_from: str) -> bool:
    from catdog_features.ensemble.oof import member_test_source

    return member_test_source(member, test_from) == "refit"


def _test_models(run: RunDir, member, n_folds: int, test_from: str = "auto") -> List[Optional[Path]]:
    """The saved models whose mean probability is ``member``'s test (and new-image) prediction
    (None where one is missing); a member ``fit_oof`` returned carries its own ``test_from``."""
    from catdog_features.heads import find_saved_head

    if _refits(member, test_from):
        return [find_saved_head(run.refit_model(member["name"]))]
    return [_fold_head(run, member["name"], k) for k in range(n_folds)]


def _models_complete(run: RunDir, members, folds: int, test_from: str) -> bool:
    """Every fold head, and the refit of each member that predicts with one, is on disk."""
    from catdog_features.heads import find_saved_head

    return all(_fold_head(run, m["name"], k) is not None for m in members for k in range(folds)) and all(
        find_saved_head(run.refit_model(m["name"])) is not None for m in members if _refits(m, test_from))


def _predict_test(run: RunDir, members, test, n_folds: int, n_classes: int) -> Dict[str, np.ndarray]:
    """Each member's test probabilities from its saved models (no refit)."""
    if test is None or len(test) == 0:
        return {}
    from catdog_features.run.saved import member_proba

    return {m["name"]: member_proba(lambda X, m=m: fold_mean_proba(_test_models(run, m, n_folds), X, n_classes),
                                    test, m) for m in members}


def _oof_predictions(run: RunDir, members, train, test, ens, *, progress: bool, log: Log, train_views=(),
                     distributed=None):
    """``(OOFPredictions, status)``: reused, test re-predicted by the saved fold models, or fitted."""
    from catdog_features.ensemble import OOFPredictions, fit_oof, make_folds, oof_key, read_oof_key
    from catdog_features.ensemble.oof import views_extra

    tta = list(getattr(ens, "tta", ()) or ())
    train_views = [v for v in train_views if v != train.view_name]
    test_from = getattr(ens, "test_from", "auto")
    key = oof_key(members, train, test, ens.folds, ens.seed, views_extra(train, test, train_views, tta), test_from)
    train_key = oof_key(members, train, None, ens.folds, ens.seed, views_extra(train, None, train_views, tta),
                        test_from)
    n_folds = int(make_folds(train.labels, ens.folds, ens.seed).max()) + 1
    stored = None
    if run.oof.is_file() and read_oof_key(run.oof) is not None:
        try:
            stored = OOFPredictions.load(run.oof)
        except (OSError, ValueError, KeyError):  # an older format or a damaged file: refit
            stored = None
    models_ok = _models_complete(run, members, n_folds, test_from)
    if stored is not None and stored.info.get("train_key") == train_key and models_ok:
        # how the members were picked (sweep_folds) is not part of the key; the ensemble rule reads it
        picked = {m["name"]: m["sweep_folds"] for m in members if "sweep_folds" in m}
        stored.members = [{**m, "sweep_folds": picked[m["name"]]} if m["name"] in picked else m for m in stored.members]
    if stored is not None and stored.key == key and models_ok:
        log(f"OOF predictions unchanged (key {key}): reusing {run.oof}")
        return stored, "reused"
    if stored is not None and stored.info.get("train_key") == train_key and models_ok:
        # same members on the same training features: only the test set changed, so the
        # saved models predict it; no head is refitted
        stored.test = _predict_test(run, stored.members, test, n_folds, len(train.class_names))  # their TTA choice
        stored.test_ids = None if test is None else np.asarray(test.ids, dtype=str)
        stored.test_failed = [] if test is None else failure_records(test)
        stored.key = key
        log(f"OOF predictions unchanged, test set changed: predicted it with the saved models ({run.models})")
        return stored, "test re-predicted"
    if run.models.exists():
        shutil.rmtree(run.models)  # fold models of other member configs would be stale
    oof = fit_oof(members, train, test, folds=ens.folds, random_state=ens.seed, models_dir=run.models, progress=progress,
                  test_from=test_from,
                  train_views=train_views or None, tta=tta or None, **_parallel(distributed))
    return oof, "done"


def _warn_if_constant(run: RunDir, result, log: Log) -> List[str]:
    from catdog_features.ensemble.metrics import ConstantPredictionsWarning, constant_predictions_message

    found = [constant_predictions_message(result.oof_proba, f"out-of-fold predictions of the {result.method} ensemble"),
             None if result.test_proba is None else
             constant_predictions_message(result.test_proba, f"test predictions of the {result.method} ensemble")]
    found = [m for m in found if m]
    for message in found:
        warnings.warn(message, ConstantPredictionsWarning, stacklevel=3)
        log(f"warning: {message}")
        run.add_note(message)
    return found


def ensemble_stage(run: RunDir, config, members, train, test, *, progress: bool = True, log: Log = print) -> Dict[str, Any]:
    """OOF predictions of ``members`` (reused when unchanged) + ensemblers of ``[ensemble]``.

    Writes oof.h5 (with the ensemblers' OOF probabilities), models/, ensemble.json,
    scores.txt and test_predictions.csv, and records the "oof" and "ensemble" stages.

    Returns
    -------
    dict
        ``result`` (EnsembleResult), ``oof`` (OOFPredictions), ``status``, ``seconds``.
    """
    from catdog_features.ensemble import fit_ensemblers, normalize_members, save_chosen_oof
    from catdog_features.submission import write_probabilities

    ens = config.ensemble
    members = normalize_members(members)
    log(f"[3/5] ensemble: {len(members)} member(s) x {ens.folds} folds, method={ens.method}, clip={ens.clip}")
    start = time.perf_counter()
    oof, status = _oof_predictions(run, members, train, test, ens, progress=progress, log=log,
                                   train_views=tuple(getattr(config.sweep, "train_views", ()) or ()),
                                   distributed=config.distributed)
    result = fit_ensemblers(oof, method=ens.method, clip=ens.clip, random_state=ens.seed)
    save_chosen_oof(oof, result, run.oof)
    n_folds = int(oof.info.get("folds", ens.folds))
    SavedEnsemble(run, config.extract, oof.members,
                  {m["name"]: _test_models(run, m, n_folds) for m in oof.members},
                  result, oof.key, [list(t) for t in oof.test_failed]).write()
    write_text(run.scores, result.format_table() + "\n")
    if result.test_proba is not None:
        write_probabilities(run.test_predictions, oof.test_ids, result.test_proba, result.class_names)
    elif run.test_predictions.exists():
        run.test_predictions.unlink()  # from an earlier config with a test set
    seconds = time.perf_counter() - start
    chosen = result.chosen_score
    run.record_stage("oof", status, seconds, key=oof.key, members=[m["name"] for m in oof.members], folds=n_folds,
                     fit_seconds=oof.info.get("fit_seconds"))
    run.record_stage("ensemble", "done", 0.0, method=result.method, clip=result.clip, oof_log_loss=chosen["log_loss"],
                     oof_log_loss_clipped=chosen["clipped_log_loss"], oof_accuracy=chosen["accuracy"],
                     scores=result.scores)
    log(result.format_table())
    _warn_if_constant(run, result, log)
    return {"result": result, "oof": oof, "reused": status != "done", "status": status, "seconds": seconds}


# --------------------------------------------------------------------------- submission + report
def submission_stage(run: RunDir, config, *, log: Log = print) -> None:
    """The Kaggle submission of the stored test predictions (skipped without ``[data] test``)."""
    t0 = time.perf_counter()
    if config.data.test is None:
        run.record_stage("submission", "skipped", 0.0, reason="no [data] test folder")
        log("[4/5] submission: skipped (no [data] test folder)")
        return
    sample = config.data.sample_submission
    info = write_run_submission(run.root, sample_submission=sample)
    clip = SavedEnsemble.load(run.root).result.clip
    run.record_stage("submission", "done", time.perf_counter() - t0, rows=info.n_rows, format=info.format, clip=clip,
                     filled_ids=list(info.filled_ids), sample_submission=None if sample is None else str(sample))
    log(f"[4/5] submission: {info.n_rows} rows ({info.format}, clip {clip:g}) -> {info.path}")


def _report_key(run: RunDir, n_trials: int) -> str:
    """Hash of what the report shows: the ensemble, predictions, submission and trial count."""
    import hashlib

    digest = hashlib.sha256(str(n_trials).encode())
    for path in (run.ensemble, run.test_predictions, run.submission, run.scores):
        digest.update(path.read_bytes() if path.is_file() else b"-")
    return digest.hexdigest()[:20]


def _write_report(run: RunDir, log: Log, key: str) -> dict:
    previous = run.read_manifest().get("stages", {}).get("report", {})
    if previous.get("input_key") == key and previous.get("status") in ("done", "reused") and run.report_html.is_file():
        log(f"report: unchanged, kept {run.report_html}")
        return {"status": "reused", "input_key": key, "path": str(run.report_html)}
    from catdog_features.report import write_report

    try:
        out = write_report(run.root)
    except Exception as exc:  # a broken plot must not discard a finished run
        log(f"report: FAILED ({type(exc).__name__}: {exc}); the other outputs are complete")
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {"status": "done", "input_key": key, "path": str(out)}


def report_stage(run: RunDir, config, n_trials: int, *, log: Log = print) -> None:
    """The report (``[output] report``), re-made only when what it shows changed."""
    t0 = time.perf_counter()
    log("[5/5] report")
    if config.output.report:
        report = _write_report(run, log, _report_key(run, n_trials))
    else:
        log("report: skipped ([output] report = false)")
        report = {"status": "skipped", "reason": "[output] report = false"}
    status = report.pop("status")
    run.record_stage("report", status, time.perf_counter() - t0, **report)


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
    headline: str = ""


def run_pipeline(config, *, progress: bool = True, log: Log = print, overrides: Sequence[str] = (),
                 command: str = "run") -> RunSummary:
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
    command : str
        The command recorded in the manifest (``run``, ``demo``).

    Returns
    -------
    RunSummary
    """
    from catdog_features.ensemble import members_from_sweep

    t_start = time.perf_counter()
    run = start_run(config, command, overrides)
    log(f"run folder: {run.root}")
    train, test = extract_stage(run, config, progress=progress, log=log)
    result = sweep_stage(run, config, train, progress=progress, log=log)
    members = members_from_sweep(result, config.ensemble.top_k) + topblock_members(config, train)
    ens = ensemble_stage(run, config, members, train, test, progress=progress, log=log)["result"]
    submission_stage(run, config, log=log)
    report_stage(run, config, len(result.trials), log=log)
    manifest = finish_run(run, t_start)
    outputs = {name: str(run.root / rel) for name, rel in manifest["outputs"].items()}
    return RunSummary(run.root, manifest["stages"], outputs, ens.method, ens.clip, ens.scores, manifest["seconds"],
                      ens.headline())


def finish_run(run: RunDir, started: float) -> Dict[str, Any]:
    """Record the whole run's wall time (since ``time.perf_counter()`` was ``started``); the manifest."""
    run.update_manifest(seconds=round(time.perf_counter() - started, 3))
    return run.read_manifest()


def format_outputs(summary: RunSummary) -> str:
    """'where each output went', one line per output (for the CLI)."""
    width = max((len(k) for k in summary.outputs), default=0)
    lines = [f"  {name:<{width}}  {path}" for name, path in summary.outputs.items()]
    lines.append(f"  {'manifest':<{width}}  {summary.run_dir / 'manifest.json'}")
    return "\n".join(lines)
