"""Fitting out-of-fold predictions: :func:`fit_oof` and its per-(member, fold) task.

Every (member, fold) fit is one :func:`fold_task`: inline, in a worker process or as a Spark
task (:class:`~catdog_features.distributed.TaskPool`). Each is seeded as in a sequential run
and the test predictions are summed in fold order, so the result does not depend on where the
fits ran. The OOF file itself is :mod:`.oof`'s.
"""

from __future__ import annotations

import concurrent.futures as _futures
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from catdog_features.ensemble.oof import (
    OOFPredictions, aligned_proba, check_test_from, default_estimator_factory, make_folds, member_test_source,
    members_from_sweep, normalize_members, oof_key, views_extra,
)


class _InProcess:
    """The inline path's data: the FeatureSets themselves (nothing written to disk)."""

    def __init__(self, features, test, fold_of, train_views=(), tta=()):
        self.features, self.test, self.fold_of = features, test, fold_of
        self.train_views, self.tta = list(train_views), list(tta)
        self.labels = np.asarray(features.labels, dtype=np.int64)
        self._last: tuple = ((), None)

    def matrices(self, backbones) -> Dict[str, Any]:
        """A member's matrices (plain, training views, TTA views, test); the last member's are
        kept (its K folds)."""
        key = tuple(backbones)
        if self._last[0] != key:
            names, fs, test = list(key), self.features, self.test
            self._last = (key, {
                "X": fs.concat(names), "X_test": test.concat(names) if test is not None else None,
                "X_views": [fs.concat(names, view=v) for v in self.train_views],
                "X_tta": {v: fs.concat(names, view=v) for v in self.tta},
                "T_tta": {v: test.concat(names, view=v) for v in self.tta} if test is not None else {},
            })
        return self._last[1]


def _fold_data(payload, member):
    data = payload["data"]
    if isinstance(data, _InProcess):
        return data.matrices(member["backbones"]), data.labels, data.fold_of
    from catdog_features.task_arrays import open_arrays

    arrays = open_arrays(data)

    def cat(prefix):
        return np.concatenate([np.asarray(arrays[f"{prefix}/{b}"]) for b in member["backbones"]], axis=1)

    m = {"X": cat("train"), "X_test": cat("test") if payload["test"] else None,
         "X_views": [cat(f"train@{v}") for v in payload["train_views"]],
         "X_tta": {v: cat(f"train@{v}") for v in payload["tta"]},
         "T_tta": {v: cat(f"test@{v}") for v in payload["tta"]} if payload["test"] else {}}
    return m, np.asarray(arrays["labels"]), np.asarray(arrays["folds"])


def fold_task(payload) -> Dict[str, Any]:
    """Fit one member on the rows outside fold ``k``; its held-out and test probabilities.

    Fold ``-1`` (:data:`REFIT`) is the member refitted on every training row: no held-out rows,
    only test probabilities. Runs in this process, a worker process or a Spark task
    (``payload["data"]`` is then a task folder). Saves the model when ``model_stem`` is set.
    """
    from catdog_features.heads.views import accepts_views, fit_on_views

    member, k, n_classes = payload["member"], int(payload["fold"]), int(payload["n_classes"])
    start = time.perf_counter()
    m, labels, fold_of = _fold_data(payload, member)
    X = m["X"]
    X_test = m["X_test"] if payload["test"] else None
    factory = payload["factory"] or default_estimator_factory
    train_rows, held_out = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
    estimator = factory(dict(member["params"]), int(payload["random_state"]))
    # held-out rows never reach fit, in any view
    fit_on_views(estimator, X[train_rows], labels[train_rows], [x[train_rows] for x in m["X_views"]])
    out = {"held_out": aligned_proba(estimator, X[held_out], n_classes) if len(held_out) else None,
           "test": None if X_test is None else aligned_proba(estimator, X_test, n_classes),
           "viewed": bool(m["X_views"]) and accepts_views(estimator),
           "tta_held": {v: aligned_proba(estimator, x[held_out], n_classes) for v, x in m["X_tta"].items()
                        if len(held_out)},
           "tta_test": {} if X_test is None else {v: aligned_proba(estimator, t, n_classes)
                                                 for v, t in m["T_tta"].items()}}
    if payload["model_stem"] is not None:
        from catdog_features.heads import save_head

        if not hasattr(estimator, "save"):
            raise ValueError(f"models_dir given but {type(estimator).__name__} has no save(); "
                             "expected a head of catdog_features.heads.")
        save_head(estimator, payload["model_stem"])
    out["seconds"] = time.perf_counter() - start
    return out


#: The fold number of a member's refit on all training rows (``test_from="refit"``).
REFIT = -1
#: File stem of that model in ``models_dir/<member>/``.
REFIT_STEM = "full"


def fit_oof(
    members,
    features,
    test=None,
    folds: int = 5,
    random_state: int = 0,
    *,
    estimator_factory: Optional[Callable] = None,
    models_dir=None,
    progress: bool = True,
    n_jobs: int = 1,
    distributor: str = "local",
    spark_master: Optional[str] = None,
    task_near=None,
    train_views: Optional[Sequence[str]] = None,
    tta: Optional[Sequence[str]] = None,
    test_from: str = "auto",
) -> OOFPredictions:
    """Out-of-fold predictions of every member, and their test predictions.

    Parameters
    ----------
    members : list of dict or SweepResult
        Member configs ``{"name", "params", "backbones"}``; a SweepResult gives its
        top-5 distinct trials.
    features : FeatureSet
        Labelled training features holding every member's backbones.
    test : FeatureSet, optional
        Unlabelled test features to predict with each member's K fold models.
    folds : int
        Number of stratified folds (seeded with ``random_state``).
    random_state : int
        Seed of the folds; fold ``k``'s model gets ``random_state + k``.
    estimator_factory : callable(params, random_state) -> classifier, optional
        Builds a member's model; default :func:`default_estimator_factory` (the member's head kind).
    models_dir : path, optional
        Save each fold model there as ``<member>/fold<k>`` plus its kind's suffix
        (``.keras`` for a DenseHead, ``.h5`` for a LinearHead; :func:`~catdog_features.heads.save_head`),
        so new images can be predicted later exactly like the test set was.
    progress : bool
        Show a progress bar.
    n_jobs : int
        Fold fits at once (-1: one per core). Every (member, fold) fit is seeded as in a
        sequential run, so the predictions are the same whichever way they run.
    distributor : {"local", "spark"}
        ``"local"``: worker processes with ``cores // n_jobs`` threads each; ``"spark"``: one
        Spark task per fit. Workers read the features from a task folder (in ``task_near``,
        else ``models_dir``, else the temporary folder) and save their models into ``models_dir``:
        both must be on storage the workers reach. ``estimator_factory`` must be picklable.
    spark_master : str, optional
        Spark master URL when no SparkSession is active.
    task_near : path, optional
        Where the task folder goes (see ``distributor``).
    train_views : sequence of str, optional
        Views of a multi-view ``features`` that dense fold models train on (one view per
        image and epoch); folds are of images, so all views of an image sit in the same fold,
        and held-out rows are predicted on the plain view (``features.view_name``).
    tta : sequence of str, optional
        Test-time augmentation: for each member, the mean of its fold model's probabilities
        over these views of the held-out rows (and of the test set) replaces the plain
        prediction only where it lowers the member's OOF log loss; the choice and both losses
        are in the member config (``"tta"``) and ``info["tta"]``
        (:func:`~catdog_features.ensemble.tta.choose_tta`). ``test`` must hold these views.
    test_from : {"auto", "folds", "refit"}
        Where a member's test probabilities come from: ``"folds"``, the mean of its K fold
        models; ``"refit"``, one more model fitted on every training row (seed
        ``random_state + K``; saved as ``<member>/full``), as scikit-learn's stacking
        estimators do; ``"auto"`` (default): refit the logistic-regression members (a convex
        head: the fold mean only loses the rows each fold model lacks; on wine and
        breast_cancer splits the refit's test log loss was lower) and keep the fold mean of the
        dense heads (a bag of K nets). The OOF predictions are the fold models' either way.
        Each returned member config records its choice (``"test_from"``).

    Returns
    -------
    OOFPredictions
    """
    from tqdm.auto import tqdm

    from catdog_features.ensemble.tta import check_views, choose_tta
    from catdog_features.distributed import TaskPool, check_distributor, resolve_jobs, task_error

    check_distributor(distributor)
    if not (distributor == "spark" and n_jobs == -1):
        resolve_jobs(n_jobs)
    if hasattr(members, "top"):
        members = members_from_sweep(members)
    members = normalize_members(members)
    check_test_from(test_from)
    members = [{**m, "test_from": member_test_source(m, test_from)} for m in members]
    if features.labels is None:
        raise ValueError("fit_oof needs labelled training features; received an unlabeled FeatureSet.")
    n_classes = len(features.class_names)
    labels = np.asarray(features.labels, dtype=np.int64)
    fold_of = make_folds(labels, folds, random_state)  # of images: every view of a row shares its fold
    n_folds = int(fold_of.max()) + 1
    train_views = check_views(features, train_views, "train_views", exclude=features.view_name)
    tta = check_views(features, tta, "tta")
    if tta and test is not None and len(test):
        check_views(test, tta, "tta (test features)")
    tta_oof = {m["name"]: {v: np.full((len(labels), n_classes), np.nan) for v in tta} for m in members}
    tta_test = {}
    viewed = set()  # members whose fold models trained on the views
    oof = {m["name"]: np.full((len(labels), n_classes), np.nan) for m in members}
    has_test = test is not None and len(test) > 0
    fold_test: Dict[tuple, np.ndarray] = {}
    seconds: Dict[str, float] = {m["name"]: 0.0 for m in members}
    # a refit is only fitted when something uses it: the test set, or models saved for new images
    refits = [m["name"] for m in members if m["test_from"] == "refit"] if has_test or models_dir is not None else []
    bar = tqdm(total=len(members) * n_folds + len(refits), desc="OOF fits", unit="fit", disable=not progress)
    fold_tta_test: Dict[tuple, Dict[str, np.ndarray]] = {}
    folder = None
    with TaskPool(n_jobs, distributor, spark_master) as pool:
        try:
            if pool.inline:
                data = _InProcess(features, test if has_test else None, fold_of, train_views, tta)
            else:
                from catdog_features.task_arrays import make_task_folder, write_arrays

                used = list(dict.fromkeys(b for m in members for b in m["backbones"]))
                folder = make_task_folder(task_near if task_near is not None else models_dir, "oof")
                arrays = {f"train/{b}": features.features[b] for b in used}
                for v in dict.fromkeys([*train_views, *tta]):
                    arrays.update({f"train@{v}/{b}": features.view(v)[b] for b in used})
                if has_test:
                    arrays.update({f"test/{b}": test.features[b] for b in used})
                    for v in tta:
                        arrays.update({f"test@{v}/{b}": test.view(v)[b] for b in used})
                write_arrays(folder, {**arrays, "labels": labels, "folds": fold_of})
                data = str(folder)
            futures = {}
            for member in members:
                refit = member["name"] in refits
                for k in [*range(n_folds), *([REFIT] if refit else [])]:
                    seed = int(random_state) + (n_folds if k == REFIT else k)
                    payload = {"data": data, "member": member, "fold": k, "random_state": seed,
                               # a refitted member's test rows come from its refit alone
                               "n_classes": n_classes, "test": has_test and refit == (k == REFIT),
                               "factory": estimator_factory, "train_views": list(train_views), "tta": list(tta),
                               "model_stem": None if models_dir is None
                               else str(Path(models_dir) / member["name"] / (REFIT_STEM if k == REFIT else f"fold{k}"))}
                    futures[pool.submit(fold_task, payload)] = (member["name"], k)
            for future in _futures.as_completed(futures):
                name, k = futures[future]
                exc = task_error(future)
                if exc is not None:
                    raise exc
                out = future.result()
                if k != REFIT:
                    held_out = fold_of == k
                    oof[name][held_out] = out["held_out"]
                    for v, proba in out["tta_held"].items():
                        tta_oof[name][v][held_out] = proba
                if out["test"] is not None:
                    fold_test[(name, k)] = out["test"]
                    fold_tta_test[(name, k)] = out["tta_test"]
                if out["viewed"]:
                    viewed.add(name)
                seconds[name] += out["seconds"]
                bar.update(1)
        finally:
            bar.close()
            if folder is not None:
                from catdog_features.task_arrays import remove_task_folder

                remove_task_folder(folder)
    test_probs = {}
    if has_test:
        for member in members:  # summed in fold order: the same floats however the fits ran
            if member["name"] in refits:
                test_probs[member["name"]] = fold_test[(member["name"], REFIT)]
                if tta:
                    tta_test[member["name"]] = dict(fold_tta_test[(member["name"], REFIT)])
                continue
            total = np.zeros_like(fold_test[(member["name"], 0)])
            for k in range(n_folds):
                total += fold_test[(member["name"], k)]
            test_probs[member["name"]] = total / n_folds
            if tta:
                tta_test[member["name"]] = {
                    v: sum((fold_tta_test[(member["name"], k)][v] for k in range(1, n_folds)),
                           fold_tta_test[(member["name"], 0)][v].copy()) / n_folds for v in tta}
    durations = {name: round(value, 3) for name, value in seconds.items()}
    tta_info = {}
    if viewed:  # which views the fold models drew from (plain first), for the report
        members = [{**m, "train_views": [features.view_name] + list(train_views)} if m["name"] in viewed else m
                   for m in members]
    if tta:
        members, tta_info = choose_tta(members, oof, test_probs, tta_oof, tta_test, labels, tta)
    test_failed = []
    if test is not None:
        test_failed = [(Path(p).stem, str(p), str(reason)) for p, reason in test.failed]
    return OOFPredictions(
        ids=np.asarray(features.ids, dtype=str),
        labels=labels,
        folds=fold_of,
        class_names=tuple(features.class_names),
        members=members,
        oof=oof,
        test_ids=None if test is None else np.asarray(test.ids, dtype=str),
        test=test_probs,
        test_failed=test_failed,
        key=oof_key(members, features, test, folds, random_state, views_extra(features, test, train_views, tta)),
        info={"folds": n_folds, "random_state": int(random_state), "fit_seconds": durations,
              "train_key": oof_key(members, features, None, folds, random_state,
                                   views_extra(features, None, train_views, tta)),
              **({"train_views": list(train_views)} if train_views else {}),
              **({"tta": tta_info} if tta_info else {})},
    )
