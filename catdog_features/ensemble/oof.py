"""Out-of-fold predictions of ensemble members, and the OOF file (``oof.h5``: its one owner).

:func:`fit_oof` fits every member (a head config ``{"name", "params", "backbones"}``, by
default the top-k distinct trials of a sweep, see :func:`members_from_sweep`) on K
stratified, seeded folds. Each fold model sees only its training part (its own
early-stopping split is carved out of that part, never out of the held-out rows), predicts
the held-out rows, and predicts the test set; a member's test prediction is the mean of
its K fold models. :class:`OOFPredictions` is stored in HDF5 (ids, labels, fold ids,
per-member probabilities, member configs) so ensemblers can be refitted without refitting
any head. Everything saved is plain arrays or JSON: no pickle.
"""

from __future__ import annotations

import concurrent.futures as _futures
import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from catdog_features._io import atomic_path

OOF_FORMAT = 1


def _member_name(trial) -> str:
    return f"t{trial['tid']}"


def normalize_members(members) -> List[dict]:
    """Validate member configs ``{"name", "params", "backbones"}`` (names made unique)."""
    if isinstance(members, Mapping):
        members = [members]
    out, seen = [], set()
    for k, member in enumerate(members):
        if not isinstance(member, Mapping) or "backbones" not in member:
            raise ValueError(
                f"Invalid member config #{k}. Received: {member!r}; expected a dict with "
                "'params' (head keyword arguments) and 'backbones' (feature names)."
            )
        backbones = member["backbones"]
        backbones = [backbones] if isinstance(backbones, str) else list(backbones)
        if not backbones:
            raise ValueError(f"Member config #{k} has no backbones; expected at least one.")
        name = str(member.get("name") or f"m{k + 1}")
        if name in seen:
            name = f"{name}_{k + 1}"
        seen.add(name)
        out.append({**dict(member), "name": name, "params": dict(member.get("params") or {}), "backbones": backbones})
    if not out:
        raise ValueError("Received no member configs; expected at least one.")
    return out


#: Name of the logistic-regression member every ensemble of a sweep gets (C chosen by CV).
LINEAR_MEMBER = "linear"


def members_from_sweep(result, top_k: int = 5, linear: bool = True) -> List[dict]:
    """Member configs from the top-``top_k`` distinct successful trials of a sweep, plus a linear one.

    ``result`` is a :class:`~catdog_features.search.SweepResult` (uses ``result.top``) or
    a list of trial dicts (``status``, ``loss``, ``params``, ``backbones``, ``tid``).

    With ``linear`` (the default) the members also include :data:`LINEAR_MEMBER`, a
    logistic-regression head (:class:`~catdog_features.heads.LinearHead`) on the best
    trial's backbones with C chosen by cross-validation inside each fold: unlike a linear
    trial of the sweep, its C is not picked among many draws on the same rows, so its OOF
    score is honest, and the blend can put all its weight on it (the ensemble's OOF log loss
    is then never worse than a tuned logistic regression's).
    """
    from catdog_features.search.result import SweepResult

    if not hasattr(result, "top"):
        result = SweepResult.from_trials(list(result))
    trials = list(result.top(top_k, distinct=True))
    if not trials:
        raise ValueError("The sweep has no successful trials; run more evaluations before ensembling.")
    members = [_trial_member(t) for t in trials]
    if linear:
        members.append({"name": LINEAR_MEMBER, "params": {"head": "linear"}, "backbones": list(trials[0]["backbones"]),
                        "trial": None, "sweep_loss": None, "best_epoch": None})
    return members


def _kind(params) -> str:
    return params.get("head", "dense")


def _trial_member(t) -> dict:
    return {"name": _member_name(t), "params": dict(t["params"]), "backbones": list(t["backbones"]),
            "trial": t.get("tid"), "sweep_loss": t.get("loss"), "best_epoch": t.get("best_epoch")}


def default_estimator_factory(params: dict, random_state: int):
    """The head of ``params`` (its ``"head"`` kind, dense when absent) with the fold's seed."""
    from catdog_features.heads import build_head

    return build_head(params, random_state=random_state)


# --------------------------------------------------------------------------- fingerprints
def _hash_update_array(digest, array) -> None:
    array = np.ascontiguousarray(array)
    digest.update(str((array.dtype.str, array.shape)).encode())
    if array.dtype.kind in "US":
        digest.update("\x00".join(map(str, array.ravel())).encode())
    else:
        digest.update(memoryview(array).cast("B"))


def feature_fingerprint(features, backbones: Optional[Sequence[str]] = None) -> str:
    """Hash of a FeatureSet's ids, labels and the vectors of ``backbones`` (default: all)."""
    digest = hashlib.sha256()
    _hash_update_array(digest, np.asarray(features.ids, dtype=str))
    if features.labels is not None:
        _hash_update_array(digest, np.asarray(features.labels))
    digest.update(json.dumps(list(features.class_names)).encode())
    for name in sorted(backbones if backbones is not None else features.backbones):
        digest.update(name.encode())
        _hash_update_array(digest, features[name])
    return digest.hexdigest()


def oof_key(members, features, test=None, folds: int = 5, random_state: int = 0, extra=None) -> str:
    """Key that changes whenever the OOF predictions would: member configs, folds, seed, features."""
    members = normalize_members(members)
    used = sorted({b for m in members for b in m["backbones"]})
    payload = {
        "format": OOF_FORMAT,
        "members": [{k: m[k] for k in ("name", "params", "backbones")} for m in members],
        "folds": int(folds),
        "random_state": int(random_state),
        "train": feature_fingerprint(features, used),
        "test": None if test is None else feature_fingerprint(test, used),
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


# --------------------------------------------------------------------------- OOF
@dataclass
class OOFPredictions:
    """Out-of-fold and test probabilities of every member.

    Attributes
    ----------
    ids, labels, folds : ndarray (n,)
        Training ids, class index and the fold each row was held out in.
    class_names : tuple of str
    members : list of dict
        Member configs (``name``, ``params``, ``backbones``, plus sweep info).
    oof : dict of str -> ndarray (n, n_classes)
        Member name -> probabilities predicted for each row by the fold model that did not see it.
    test_ids : ndarray (m,) or None
    test : dict of str -> ndarray (m, n_classes)
        Member name -> mean of its fold models' test probabilities.
    test_failed : list of (id, path, reason)
        Test images that could not be read (they still need a submission row).
    key : str
        :func:`oof_key` of what produced this.
    info : dict
        ``folds``, ``random_state``, fit durations per member, ...
    ensembles : dict of str -> ndarray (n, n_classes)
        Ensembler name (mean, blend, stack) -> its OOF probabilities, the ones its scores
        were computed on (nested CV for the fitted ones); written by
        :func:`~catdog_features.ensemble.combine.save_chosen_oof`. Empty until then.
    chosen : str or None
        The ensembler the run chose (a key of ``ensembles``).
    """

    ids: np.ndarray
    labels: np.ndarray
    folds: np.ndarray
    class_names: tuple
    members: List[dict]
    oof: Dict[str, np.ndarray]
    test_ids: Optional[np.ndarray] = None
    test: Dict[str, np.ndarray] = field(default_factory=dict)
    test_failed: List[tuple] = field(default_factory=list)
    key: str = ""
    info: dict = field(default_factory=dict)
    ensembles: Dict[str, np.ndarray] = field(default_factory=dict)
    chosen: Optional[str] = None

    @property
    def member_names(self) -> List[str]:
        return [m["name"] for m in self.members]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def prior(self) -> np.ndarray:
        """Training class frequencies (the prediction for unreadable test images)."""
        counts = np.bincount(self.labels, minlength=self.n_classes).astype(np.float64)
        return counts / counts.sum()

    @property
    def chosen_proba(self) -> Optional[np.ndarray]:
        """OOF probabilities of the chosen ensembler, or None when none was stored."""
        return self.ensembles.get(self.chosen) if self.chosen is not None else None

    def save(self, path) -> Path:
        """Write to HDF5 (via a temporary file, then rename)."""
        import h5py

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        str_dt = h5py.string_dtype()
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["format"] = OOF_FORMAT
            f.attrs["key"] = self.key
            f.attrs["class_names"] = json.dumps(list(self.class_names))
            f.attrs["members"] = json.dumps(self.members, default=str)
            f.attrs["info"] = json.dumps(self.info, default=str)
            f.attrs["test_failed"] = json.dumps([list(t) for t in self.test_failed])
            f.create_dataset("ids", data=np.asarray(self.ids, dtype=object), dtype=str_dt)
            f.create_dataset("labels", data=np.asarray(self.labels, dtype=np.int64))
            f.create_dataset("folds", data=np.asarray(self.folds, dtype=np.int64))
            if self.test_ids is not None:
                f.create_dataset("test_ids", data=np.asarray(self.test_ids, dtype=object), dtype=str_dt)
            for name in self.member_names:
                g = f.create_group(f"members/{name}")
                g.create_dataset("oof", data=np.asarray(self.oof[name], dtype=np.float64))
                if name in self.test:
                    g.create_dataset("test", data=np.asarray(self.test[name], dtype=np.float64))
            for name, probs in self.ensembles.items():
                f.create_dataset(f"ensembles/{name}", data=np.asarray(probs, dtype=np.float64))
            if self.chosen is not None:
                f.attrs["chosen"] = str(self.chosen)
            f.flush()
        return path

    @classmethod
    def load(cls, path) -> "OOFPredictions":
        """Read a file written by :meth:`save`."""
        import h5py

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"OOF predictions not found. Received: {str(path)!r}.")
        with h5py.File(path, "r") as f:
            if int(f.attrs.get("format", -1)) != OOF_FORMAT:
                raise ValueError(f"{str(path)!r} is not an OOF predictions file of format {OOF_FORMAT}.")
            members = json.loads(f.attrs["members"])
            names = [m["name"] for m in members]
            test_ids = f["test_ids"].asstr()[()] if "test_ids" in f else None
            return cls(
                ids=np.asarray(f["ids"].asstr()[()], dtype=str),
                labels=f["labels"][()],
                folds=f["folds"][()],
                class_names=tuple(json.loads(f.attrs["class_names"])),
                members=members,
                oof={n: f[f"members/{n}/oof"][()] for n in names},
                test_ids=None if test_ids is None else np.asarray(test_ids, dtype=str),
                test={n: f[f"members/{n}/test"][()] for n in names if f"members/{n}/test" in f},
                test_failed=[tuple(t) for t in json.loads(f.attrs["test_failed"])],
                key=str(f.attrs["key"]),
                info=json.loads(f.attrs["info"]),
                ensembles={n: f[f"ensembles/{n}"][()] for n in f["ensembles"]} if "ensembles" in f else {},
                chosen=str(f.attrs["chosen"]) if "chosen" in f.attrs else None,
            )


def read_oof_key(path) -> Optional[str]:
    """The key stored in an OOF file, or None when the file is missing/unreadable."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return str(f.attrs["key"])
    except (OSError, KeyError):
        return None


def make_folds(labels, folds: int = 5, random_state: int = 0) -> np.ndarray:
    """Fold id per row from a seeded, shuffled StratifiedKFold (plain KFold if a class is too small)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    labels = np.asarray(labels)
    folds = int(folds)
    if folds < 2:
        raise ValueError(f"Invalid folds. Received: folds={folds}; expected an integer >= 2.")
    if len(labels) < folds:
        raise ValueError(f"Cannot make {folds} folds from {len(labels)} labelled rows; expected at least {folds} rows.")
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    if counts.max() >= folds:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    else:  # every class smaller than the fold count: stratification is impossible
        splitter = KFold(n_splits=folds, shuffle=True, random_state=random_state)
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
            fold_of[held_out] = k
    return fold_of


def aligned_proba(estimator, X, n_classes: int) -> np.ndarray:
    """``predict_proba`` with one column per class, even if the fold lacked some classes."""
    proba = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    classes = np.asarray(getattr(estimator, "classes_", np.arange(proba.shape[1]))).astype(np.int64)
    if proba.shape[1] == n_classes and np.array_equal(classes, np.arange(n_classes)):
        return proba
    out = np.zeros((len(proba), n_classes))
    out[:, classes] = proba
    return out


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

    Runs in this process, a worker process or a Spark task (``payload["data"]`` is then a task
    folder). Saves the model when ``model_stem`` is set.
    """
    from catdog_features.heads.views import accepts_views, fit_on_views

    member, k, n_classes = payload["member"], int(payload["fold"]), int(payload["n_classes"])
    start = time.perf_counter()
    m, labels, fold_of = _fold_data(payload, member)
    X, X_test = m["X"], m["X_test"]
    factory = payload["factory"] or default_estimator_factory
    train_rows, held_out = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
    estimator = factory(dict(member["params"]), int(payload["random_state"]))
    # held-out rows never reach fit, in any view
    fit_on_views(estimator, X[train_rows], labels[train_rows], [x[train_rows] for x in m["X_views"]])
    out = {"held_out": aligned_proba(estimator, X[held_out], n_classes),
           "test": None if X_test is None else aligned_proba(estimator, X_test, n_classes),
           "viewed": bool(m["X_views"]) and accepts_views(estimator),
           "tta_held": {v: aligned_proba(estimator, x[held_out], n_classes) for v, x in m["X_tta"].items()},
           "tta_test": {v: aligned_proba(estimator, t, n_classes) for v, t in m["T_tta"].items()}}
    if payload["model_stem"] is not None:
        from catdog_features.heads import save_head

        if not hasattr(estimator, "save"):
            raise ValueError(f"models_dir given but {type(estimator).__name__} has no save(); "
                             "expected a head of catdog_features.heads.")
        save_head(estimator, payload["model_stem"])
    out["seconds"] = time.perf_counter() - start
    return out


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
) -> OOFPredictions:
    """Out-of-fold predictions of every member, and their fold-mean test predictions.

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
    bar = tqdm(total=len(members) * n_folds, desc="OOF fits", unit="fit", disable=not progress)
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
                for k in range(n_folds):
                    payload = {"data": data, "member": member, "fold": k, "random_state": int(random_state) + k,
                               "n_classes": n_classes, "test": has_test, "factory": estimator_factory,
                               "train_views": list(train_views), "tta": list(tta),
                               "model_stem": None if models_dir is None
                               else str(Path(models_dir) / member["name"] / f"fold{k}")}
                    futures[pool.submit(fold_task, payload)] = (member["name"], k)
            for future in _futures.as_completed(futures):
                name, k = futures[future]
                exc = task_error(future)
                if exc is not None:
                    raise exc
                out = future.result()
                held_out = fold_of == k
                oof[name][held_out] = out["held_out"]
                for v, proba in out["tta_held"].items():
                    tta_oof[name][v][held_out] = proba
                if has_test:
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


def views_extra(features, test, train_views, tta) -> Optional[dict]:
    """What the views add to an :func:`oof_key`: which views, and the fingerprint of their vectors
    (None without views, so keys of plain-only ensembles are unchanged)."""
    train_views, tta = list(train_views or ()), list(tta or ())
    if not train_views and not tta:
        return None
    used = sorted(set(train_views) | set(tta))
    return {"train_views": train_views, "tta": tta,
            "train": {v: feature_fingerprint(features.view(v)) for v in used},
            "test": None if test is None or not tta else {v: feature_fingerprint(test.view(v)) for v in tta}}
