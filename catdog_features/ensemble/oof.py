"""Out-of-fold predictions of ensemble members, and the OOF file (``oof.h5``: its one owner).

:func:`~catdog_features.ensemble.fit.fit_oof` fits every member (a head config ``{"name", "params", "backbones"}``, by
default the top-k distinct trials of a sweep, see :func:`members_from_sweep`) on K
stratified, seeded folds. Each fold model sees only its training part (its own
early-stopping split is carved out of that part, never out of the held-out rows), predicts
the held-out rows, and predicts the test set; a member's test prediction is the mean of
its K fold models. :class:`OOFPredictions` is stored in HDF5 (ids, labels, fold ids,
per-member probabilities, member configs) so ensemblers can be refitted without refitting
any head. Everything saved is plain arrays or JSON: no pickle.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from catdog_features._io import atomic_path

OOF_FORMAT = 1
#: Part of every :func:`oof_key`: bumped whenever a head kind's fit changes, so OOF predictions
#: saved by an older version are refitted rather than reused (2: LinearHead chooses an input
#: transform and averages repeated CV splits for C).
HEADS_VERSION = 2


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


def member_kind(member) -> str:
    """The head kind of a member config (``params["head"]``, dense when absent)."""
    return _kind(member.get("params") or {})


#: Where a member's test probabilities come from (``fit_oof(test_from=...)``).
TEST_FROM = ("auto", "folds", "refit")
#: Head kinds that ``test_from="auto"`` refits on all training rows. A convex head solved to
#: its optimum gains nothing from averaging K fold models (they differ only by the rows
#: each lacks) and loses the held-out fifth of the rows; SGD-trained dense heads keep the
#: fold mean, a bag of K differently seeded nets.
REFIT_KINDS = frozenset({"linear"})


def check_test_from(test_from) -> str:
    """``test_from`` validated (one of :data:`TEST_FROM`)."""
    if test_from not in TEST_FROM:
        raise ValueError(f"Invalid test_from. Received: test_from={test_from!r}; expected one of {', '.join(map(repr, TEST_FROM))}.")
    return test_from


def member_test_source(member, test_from: str = "auto") -> str:
    """``"refit"`` (one model on all training rows) or ``"folds"`` (the K fold models' mean):
    where ``member``'s test probabilities come from. A member that ``fit_oof`` returned
    carries its own (``member["test_from"]``)."""
    if member.get("test_from") in ("folds", "refit"):
        return member["test_from"]
    if check_test_from(test_from) != "auto":
        return test_from
    return "refit" if member_kind(member) in REFIT_KINDS else "folds"


def _trial_member(t) -> dict:
    # sweep_folds: how many CV folds scored the trial (1: a hold-out split). With more than one,
    # every training row helped pick it, so its OOF score on these rows is optimistic.
    return {"name": _member_name(t), "params": dict(t["params"]), "backbones": list(t["backbones"]),
            "trial": t.get("tid"), "sweep_loss": t.get("loss"), "best_epoch": t.get("best_epoch"),
            "sweep_folds": len(t.get("fold_losses") or []) or None}


def is_tuned_inside_folds(member) -> bool:
    """A logistic-regression member whose C is chosen by CV inside each fold (no fixed ``C``):
    no choice of its was made on the rows it is scored on, so its OOF score is honest."""
    return member_kind(member) == "linear" and (member.get("params") or {}).get("C") is None


def chosen_on_training_rows(members) -> bool:
    """Whether some member was picked by a cross-validated sweep, i.e. by its score on every training row."""
    return any((m.get("sweep_folds") or 0) > 1 for m in members)


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


def oof_key(members, features, test=None, folds: int = 5, random_state: int = 0, extra=None,
            test_from: str = "auto") -> str:
    """Key that changes whenever the OOF predictions would: member configs, folds, seed, features
    and where each member's test probabilities come from."""
    members = normalize_members(members)
    used = sorted({b for m in members for b in m["backbones"]})
    payload = {
        "format": OOF_FORMAT,
        "heads_version": HEADS_VERSION,
        "members": [{**{k: m[k] for k in ("name", "params", "backbones")}, "test_from": member_test_source(m, test_from)}
                    for m in members],
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
