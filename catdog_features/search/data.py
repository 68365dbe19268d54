"""The sweep's data: feature blocks and labels, their fingerprint, the fold plan, concatenations."""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

#: Bytes of concatenated feature matrices kept in memory between trials (at least one is kept).
CONCAT_CACHE_BYTES = 2 * 1024**3


@dataclass
class SweepData:
    """Feature blocks, encoded labels and a description used to fingerprint them."""

    blocks: Dict[str, np.ndarray]  # backbone name -> (n, d); {"": X} for a plain matrix
    names: List[str]  # backbone names in order ([] for a plain matrix)
    y: np.ndarray  # int labels 0..k-1
    classes: np.ndarray
    #: training views besides the plain one: view -> backbone -> (n, d), rows aligned with ``blocks``
    views: Dict[str, Dict[str, np.ndarray]] = None

    def __post_init__(self):
        if self.views is None:
            self.views = {}

    @property
    def n_rows(self) -> int:
        return len(self.y)

    def describe(self) -> Dict[str, Any]:
        """Backbones and dims, rows, classes, a hash of the labels and of a sample of rows.

        Hashing every feature would cost seconds on large caches; a fixed sample of rows
        (plus shapes and all labels) is enough to notice different data.
        """
        rows = np.unique(np.linspace(0, self.n_rows - 1, num=min(self.n_rows, 64)).astype(np.int64))
        h = hashlib.sha256()
        for name in sorted(self.blocks):
            block = self.blocks[name]
            h.update(f"{name}:{block.shape}:{block.dtype}".encode())
            h.update(np.ascontiguousarray(block[rows]).tobytes())
        for view in sorted(self.views):
            for name in sorted(self.views[view]):
                h.update(f"{view}/{name}".encode())
                h.update(np.ascontiguousarray(self.views[view][name][rows]).tobytes())
        out = {
            "backbones": {name: int(np.prod(self.blocks[name].shape[1:])) for name in self.names}
            if self.names
            else {"<array>": int(self.blocks[""].shape[1])},
            "n_rows": int(self.n_rows),
            "classes": [str(c) for c in self.classes],
            "labels_sha256": hashlib.sha256(np.ascontiguousarray(self.y, dtype=np.int64).tobytes()).hexdigest(),
            "features_sample_sha256": h.hexdigest(),
        }
        if self.views:  # only then: trials files of plain-only sweeps keep their meta
            out["train_views"] = ["plain"] + list(self.views)
        return out


def _as_2d(name: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 and not (x.ndim == 4 and name.endswith("@map")):  # feature maps: TopBlockHead trials
        raise ValueError(f"Feature matrix must be 2-D. Received: {name} with shape {x.shape}; expected (n_samples, n_features)"
                         " (or (n, h, w, c) feature maps named '<backbone>@map').")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"Feature matrix must be numeric. Received: {name} with dtype {x.dtype}.")
    return x


def prepare_data(data, y, backbones, train_views=None) -> SweepData:
    """The sweep's data; ``train_views`` (view names of a multi-view FeatureSet) are the views
    dense heads draw from while training, besides the plain one (``fs.view_name``)."""
    from catdog_features.features.featureset import FeatureSet
    from catdog_features.features.views import parse_views

    if isinstance(data, FeatureSet):
        blocks, labels = dict(data.features), data.labels if y is None else y
        if labels is None:
            raise ValueError("The FeatureSet has no labels (labels=None); pass y= or use a labeled image set.")
    elif isinstance(data, Mapping):
        blocks, labels = dict(data), y
    else:
        if backbones is not None:
            raise ValueError(
                f"backbones= applies to a FeatureSet or a dict of arrays. Received: backbones={backbones!r} "
                "with a plain array."
            )
        blocks, labels = {"": data}, y
    if labels is None:
        raise ValueError("Received y=None; expected labels for a dict of arrays or a plain array.")
    if not blocks:
        raise ValueError("Received no feature matrices; expected at least one backbone.")
    names = [] if "" in blocks else list(blocks)
    if backbones is not None:
        if isinstance(backbones, str):
            backbones = [b.strip() for b in backbones.split(",") if b.strip()]
        unknown = [b for b in backbones if b not in blocks]
        if unknown or not backbones:
            raise ValueError(
                f"Unknown backbones. Received: backbones={list(backbones)!r}; expected a non-empty subset of {names}."
            )
        names = list(dict.fromkeys(backbones))
        blocks = {name: blocks[name] for name in names}
    blocks = {name: _as_2d(name or "X", x) for name, x in blocks.items()}
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"y must be 1-D. Received: y with shape {labels.shape}.")
    for name, x in blocks.items():
        if len(x) != len(labels):
            raise ValueError(
                f"Features and labels have different lengths. Received: {name or 'X'} with {len(x)} rows "
                f"and y with {len(labels)}; expected the same number."
            )
    classes, y_enc = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"y has a single class. Received: classes={classes.tolist()}; expected at least 2.")
    views = {}
    extra = [v for v in parse_views(train_views, default=()) if not isinstance(data, FeatureSet) or v != data.view_name]
    if extra:
        if not isinstance(data, FeatureSet):
            raise ValueError(f"train_views applies to a FeatureSet with several views. Received: train_views="
                             f"{list(train_views)!r} with {type(data).__name__} data.")
        missing = [v for v in extra if v not in data.views]
        if missing:
            raise ValueError(f"Views not in the FeatureSet. Received: train_views={list(train_views)!r}; "
                             f"{missing!r} missing; expected views among {list(data.views)} (extract them with views=).")
        views = {v: {name: _as_2d(f"{v}/{name}", data.view(v)[name]) for name in names} for v in extra}
    return SweepData(blocks=blocks, names=names, y=y_enc.astype(np.int64), classes=classes, views=views)


def cv_fold_seed(random_state: int) -> int:
    """The seed of a sweep's CV folds: derived from ``random_state``, so they are not the folds
    ``fit_oof`` / ``make_folds`` draw with the same seed. Otherwise the ensemble would score the
    top trials on the very folds they were picked on, and favour them over the linear member
    by that selection alone (measured: breast_cancer OOF 0.070 vs test 0.100)."""
    return int(np.random.SeedSequence([int(random_state), 0xF01D]).generate_state(1)[0] >> 1)


def plan_folds(y: np.ndarray, cv: Optional[int], validation_split: float, random_state: int):
    """Row order + validation slice bounds per fold.

    Rows are reordered once so every fold's validation rows are contiguous: validation
    matrices are then views, and the hold-out training matrix too (train rows first).
    Returns ``(order, bounds)`` with ``bounds`` a list of ``(start, stop)`` of each fold's
    validation rows in the reordered matrix.
    """
    from sklearn.model_selection import StratifiedKFold

    from catdog_features.splitting import holdout_split

    n = len(y)
    if cv is None:
        if not 0.0 < float(validation_split) < 1.0:
            raise ValueError(f"Received validation_split={validation_split!r}; expected a fraction in (0, 1).")
        train, val = holdout_split(y, validation_split, random_state)
        return np.concatenate([train, val]), [(len(train), n)]
    if isinstance(cv, bool) or int(cv) != cv or int(cv) < 2:
        raise ValueError(f"Received cv={cv!r}; expected None (hold-out) or an int >= 2 folds.")
    folds = StratifiedKFold(n_splits=int(cv), shuffle=True, random_state=cv_fold_seed(random_state))
    vals = [val for _, val in folds.split(np.zeros(n), y)]
    stops = np.cumsum([len(v) for v in vals])
    return np.concatenate(vals), [(int(b - len(v)), int(b)) for v, b in zip(vals, stops)]


class ConcatCache:
    """LRU of concatenated (and row-reordered) feature matrices, one per backbone subset."""

    def __init__(self, data: SweepData, order: np.ndarray, max_bytes: int = CONCAT_CACHE_BYTES):
        self.data, self.order, self.max_bytes = data, order, max_bytes
        self._items: "collections.OrderedDict[Tuple[str, ...], np.ndarray]" = collections.OrderedDict()
        self._view_items: "collections.OrderedDict[Tuple[str, ...], List[np.ndarray]]" = collections.OrderedDict()
        self.builds = 0

    def views(self, subset: Tuple[str, ...]) -> List[np.ndarray]:
        """The training views of ``subset`` (concatenated, rows in fold order), one matrix per view."""
        if subset in self._view_items:
            self._view_items.move_to_end(subset)
            return self._view_items[subset]
        out = [np.concatenate([blocks[name][self.order] for name in subset], axis=1)
               for blocks in self.data.views.values()]
        self._view_items[subset] = out
        while len(self._view_items) > 1 and sum(x.nbytes for v in self._view_items.values() for x in v) > self.max_bytes:
            self._view_items.popitem(last=False)
        return out

    def get(self, subset: Tuple[str, ...]) -> np.ndarray:
        if subset in self._items:
            self._items.move_to_end(subset)
            return self._items[subset]
        names = subset or ("",)
        x = np.concatenate([self.data.blocks[name][self.order] for name in names], axis=1)
        self.builds += 1
        self._items[subset] = x
        while len(self._items) > 1 and sum(v.nbytes for v in self._items.values()) > self.max_bytes:
            self._items.popitem(last=False)
        return x
