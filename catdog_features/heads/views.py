"""Fitting a head on several views of the same images (augmentation on cached features).

A head takes other views when its ``fit`` has a ``views`` parameter
(:meth:`~catdog_features.heads.DenseHead.fit`: one view per image drawn each epoch). Heads
without one (:class:`~catdog_features.heads.LinearHead`, whose C is chosen by an inner CV
that would otherwise split the views of one image) train on the plain view only.
"""

from __future__ import annotations

import inspect
from typing import Optional, Sequence


def accepts_views(head) -> bool:
    """Whether ``head.fit`` takes ``views=`` (other views of the same rows)."""
    try:
        return "views" in inspect.signature(head.fit).parameters
    except (TypeError, ValueError):
        return False


def fit_on_views(head, X, y, views: Optional[Sequence] = None, **fit_params):
    """``head.fit(X, y, views=views, **fit_params)`` when the head takes views, else ``head.fit(X, y, ...)``.

    ``views`` are arrays shaped like ``X`` (row ``i`` the same image); an empty list or None
    means the plain view only.
    """
    if views is not None and len(views) and accepts_views(head):
        return head.fit(X, y, views=list(views), **fit_params)
    return head.fit(X, y, **fit_params)
