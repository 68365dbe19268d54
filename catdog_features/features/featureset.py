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
    """

    ids: np.ndarray
    labels: Optional[np.ndarray]
    class_names: Tuple[str, ...]
    features: Dict[str, np.ndarray]
    failed: List[Tuple[str, str]] = field(default_factory=list)
    paths: Tuple[str, ...] = ()
    cache_files: Dict[str, str] = field(default_factory=dict)
    cache_hits: Dict[str, bool] = field(default_factory=dict)

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
        return {name: int(x.shape[1]) for name, x in self.features.items()}

    def concat(self, backbones: Optional[Sequence[str]] = None) -> np.ndarray:
        """Concatenate the vectors of ``backbones`` (default: all, in stored order) column-wise."""
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
        return FeatureSet(
            ids=self.ids[index],
            labels=None if self.labels is None else self.labels[index],
            class_names=self.class_names,
            features={k: v[index] for k, v in self.features.items()},
            failed=list(self.failed),
            paths=tuple(self.paths[i] for i in index) if self.paths else (),
            cache_files=dict(self.cache_files),
            cache_hits=dict(self.cache_hits),
        )

    def __repr__(self) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in self.dims.items())
        return (
            f"FeatureSet(n={len(self)}, backbones=[{dims}], "
            f"classes={list(self.class_names)}, failed={len(self.failed)})"
        )
