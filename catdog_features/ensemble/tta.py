"""Test-time augmentation (TTA) on cached views, chosen on out-of-fold predictions.

A member's TTA prediction is the mean of its head's probabilities over several views of
each image (``["plain", "hflip"]``, or the crops ``crop:tl`` ... ``crop:c``), each view
extracted once into the feature store. Whether a member uses it is decided like the clip:
on its out-of-fold predictions only, where every row is predicted by a fold model that never
saw it (in any view). TTA is kept for a member only if it strictly lowers that member's OOF
log loss; the test set never takes part in the choice.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from catdog_features.ensemble.metrics import log_loss


def check_views(features, views: Optional[Sequence[str]], what: str, exclude: Optional[str] = None) -> List[str]:
    """``views`` (names or ``"plain,aug:0-7"``) as a list, each one held by ``features``.

    ``exclude``: a view dropped from the result (the plain one, for training views).

    Raises
    ------
    ValueError
        A view the FeatureSet does not hold (the message names it and lists those it has).
    """
    from catdog_features.features.views import parse_views

    names = [v for v in parse_views(views, default=()) if v != exclude]
    missing = [v for v in names if v not in features.views]
    if missing:
        raise ValueError(f"Views not in the FeatureSet. Received: {what}={list(parse_views(views, default=()))!r}; "
                         f"{missing!r} missing; expected views among {list(features.views)} (extract them with "
                         "views=, or [extract] views in a run config).")
    return names


def tta_mean(per_view: Mapping[str, np.ndarray], views: Sequence[str]) -> np.ndarray:
    """The TTA prediction: the mean of the probabilities of ``views``."""
    return np.mean([np.asarray(per_view[v], dtype=np.float64) for v in views], axis=0)


def choose_tta(members: List[dict], oof: Dict[str, np.ndarray], test: Dict[str, np.ndarray],
               tta_oof: Mapping[str, Mapping[str, np.ndarray]], tta_test: Mapping[str, Mapping[str, np.ndarray]],
               labels, views: Sequence[str]) -> Tuple[List[dict], Dict[str, dict]]:
    """Per member: TTA over ``views`` if it lowers the member's OOF log loss, else its plain prediction.

    ``oof`` / ``test`` (member -> probabilities) are updated in place for the members that
    keep TTA. Returns the member configs (``"tta": [views]`` on those that keep it, and
    ``"tta_choice"`` on all) and, per member, the choice: ``{"views", "plain_log_loss",
    "tta_log_loss", "kept"}``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out_members, info = [], {}
    for member in members:
        name = member["name"]
        plain_ll = log_loss(oof[name], labels)
        mean = tta_mean(tta_oof[name], views)
        tta_ll = log_loss(mean, labels)
        kept = bool(tta_ll < plain_ll)
        info[name] = {"views": list(views), "plain_log_loss": float(plain_ll), "tta_log_loss": float(tta_ll),
                      "kept": kept}
        member = {k: v for k, v in member.items() if k not in ("tta", "tta_choice")}
        member["tta_choice"] = info[name]
        if kept:
            oof[name] = mean
            if name in tta_test:
                test[name] = tta_mean(tta_test[name], views)
            member["tta"] = list(views)
        out_members.append(member)
    return out_members, info


def member_views(member: Mapping) -> List[str]:
    """The views whose mean is a member's prediction: its TTA views, else ``[None]`` (the FeatureSet's own)."""
    return list(member.get("tta") or [None])


def member_proba(predict, features, member: Mapping) -> np.ndarray:
    """A member's prediction for a FeatureSet: ``predict(X)`` of its backbones, averaged over its TTA views."""
    return np.mean([predict(features.concat(member["backbones"], view=v)) for v in member_views(member)], axis=0)
