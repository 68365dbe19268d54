"""FeatureSet: the pooled vectors of one image set for several backbones, row-aligned."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


@dataclass
class FeatureSet:
    """Row-aligned feature matrices of one image set, one per backbone.

    Attributes
    ----------
    ids : ndarray of str
        One id per successfully read image, in the dataset's stable order.
    labels : ndarray of int or None
        Class index per row, ``None`` for unlabeled sets.
    class_names : tuple of str
        Class names, index = label value.
    features : dict of str -> ndarray
        ``float32`` array ``(len(ids), dim)`` per backbone name.
    failed : list of (path, reason)
        Every input image that could not be used, with why.
    paths : tuple of str
        Path of each row's image (same order as ``ids``).
    cache_files : dict of str -> str
        Backbone name -> the HDF5 cache file its rows came from.
    cache_hits : dict of str -> bool
        Backbone name -> whether the entry was already complete in the cache.
    view_name : str
        The view ``features`` holds (``"plain"`` unless extracted otherwise).
    view_features : dict of str -> dict of str -> ndarray
        With several views (``extract_features(..., views=[...])``): view name -> backbone
        name -> ``(len(ids), dim)``, rows aligned with ``ids`` in every view (all views of an
        image are one row). ``features`` is ``view_features[view_name]``. Empty for a
        single-view set. Reach a view with :meth:`view`, list them with :attr:`views`.
    """

    ids: np.ndarray
    labels: Optional[np.ndarray]
    class_names: Tuple[str, ...]
    features: Dict[str, np.ndarray]
    failed: List[Tuple[str, str]] = field(default_factory=list)
    paths: Tuple[str, ...] = ()
    cache_files: Dict[str, str] = field(default_factory=dict)
    cache_hits: Dict[str, bool] = field(default_factory=dict)
    view_name: str = "plain"
    view_features: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def views(self) -> Tuple[str, ...]:
        """The views this set holds, in extraction order (just ``(view_name,)`` for a single view)."""
        return tuple(self.view_features) if self.view_features else (self.view_name,)

    def view(self, name: str) -> "FeatureSet":
        """The same rows with ``features`` of view ``name`` (all views stay reachable from it)."""
        if name == self.view_name:
            return self
        if name not in self.view_features:
            raise KeyError(f"View not in this FeatureSet. Received: {name!r}; expected one of: "
                           f"{', '.join(self.views)}.")
        return FeatureSet(ids=self.ids, labels=self.labels, class_names=self.class_names,
                          features=self.view_features[name], failed=list(self.failed), paths=self.paths,
                          cache_files=dict(self.cache_files), cache_hits=dict(self.cache_hits), view_name=name,
                          view_features=self.view_features)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, backbone: str) -> np.ndarray:
        try:
            return self.features[backbone]
        except KeyError:
            raise KeyError(
                f"Backbone not in this FeatureSet. Received: {backbone!r}; "
                f"expected one of: {', '.join(self.backbones)}."
            ) from None

    def __contains__(self, backbone: str) -> bool:
        return backbone in self.features

    @property
    def backbones(self) -> Tuple[str, ...]:
        return tuple(self.features)

    @property
    def dims(self) -> Dict[str, int]:
        """Values per row of each backbone (a feature map ``(h, w, c)`` counts ``h * w * c``)."""
        return {name: int(np.prod(x.shape[1:])) for name, x in self.features.items()}

    def concat(self, backbones: Optional[Sequence[str]] = None, view: Optional[str] = None) -> np.ndarray:
        """Concatenate the vectors of ``backbones`` (default: all, in stored order) column-wise.

        ``view``: of that view (default: :attr:`view_name`, the one in ``features``).
        """
        if view is not None and view != self.view_name:
            return self.view(view).concat(backbones)
        if backbones is None:
            backbones = self.backbones
        if isinstance(backbones, str):
            backbones = [backbones]
        if not backbones:
            raise ValueError("Received an empty list of backbones; expected at least one.")
        return np.concatenate([self[name] for name in backbones], axis=1)

    def subset(self, index) -> "FeatureSet":
        """A new FeatureSet with the rows selected by ``index`` (mask or positions)."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        views = {v: {k: x[index] for k, x in f.items()} for v, f in self.view_features.items()}
        return FeatureSet(
            ids=self.ids[index],
            labels=None if self.labels is None else self.labels[index],
            class_names=self.class_names,
            features=views[self.view_name] if views else {k: v[index] for k, v in self.features.items()},
            failed=list(self.failed),
            paths=tuple(self.paths[i] for i in index) if self.paths else (),
            cache_files=dict(self.cache_files),
            cache_hits=dict(self.cache_hits),
            view_name=self.view_name,
            view_features=views,
        )

    def __repr__(self) -> str:
        dims = ", ".join(f"{k}={'x'.join(map(str, x.shape[1:]))}" for k, x in self.features.items())
        return (
            f"FeatureSet(n={len(self)}, backbones=[{dims}], "
            f"classes={list(self.class_names)}, failed={len(self.failed)}"
            + (f", views={list(self.views)}" if len(self.views) > 1 or self.view_name != "plain" else "") + ")"
        )
