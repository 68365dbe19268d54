"""The report's numbers: per-row losses, top losses, likely mislabeled images, confusion, comparison rows.

Plain functions of arrays and of what a run recorded (no file access, no fitting), so a
notebook can use them on in-memory results.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from catdog_features.ensemble.metrics import row_log_loss

#: Columns of ``likely_mislabeled.csv`` (and the first ones of ``top_losses.csv``).
MISLABELED_COLUMNS = ("id", "path", "label", "predicted", "confidence", "loss")
#: Columns of ``comparison.csv``.
COMPARISON_COLUMNS = ("name", "kind", "detail", "dim", "sweep_val_log_loss", "oof_log_loss", "oof_log_loss_clipped",
                      "oof_accuracy", "images_per_s", "cache_bytes")


def per_row_loss(probs, labels) -> np.ndarray:
    """Log loss of each row: ``-log p(true class)`` (probabilities floored at 1e-15)."""
    return row_log_loss(probs, labels)


def top_losses(probs, labels, n: int = 16) -> np.ndarray:
    """Row indices of the ``n`` highest-loss rows, highest first (ties: earlier row)."""
    loss = per_row_loss(probs, labels)
    order = np.lexsort((np.arange(len(loss)), -loss))
    return order[: max(0, int(n))]


def loss_rows(ids, paths, labels, probs, class_names, index) -> List[Dict[str, Any]]:
    """One dict per row of ``index``: id, path, label, predicted, confidence, loss, p_true."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    loss = per_row_loss(probs, labels)
    pred = np.argmax(probs, axis=1)
    total = probs.sum(axis=1)
    return [{
        "id": str(ids[i]),
        "path": "" if paths is None or paths[i] is None else str(paths[i]),
        "label": str(class_names[labels[i]]),
        "predicted": str(class_names[pred[i]]),
        "confidence": float(probs[i, pred[i]] / total[i]),
        "loss": float(loss[i]),
        "p_true": float(probs[i, labels[i]] / total[i]),
    } for i in index]


def likely_mislabeled(ids, paths, labels, probs, class_names, threshold: float = 0.9) -> List[Dict[str, Any]]:
    """Rows whose prediction disagrees with the label with confidence >= ``threshold``.

    Parameters
    ----------
    ids, paths : sequences (n,)
        Row ids and image paths (``paths`` may be None).
    labels : array (n,)
        True class index per row.
    probs : array (n, n_classes)
        Out-of-fold probabilities (predictions of models that did not see the row).
    class_names : sequence of str
    threshold : float
        Minimum probability of the predicted (wrong) class, in (0, 1].

    Returns
    -------
    list of dict
        ``id, path, label, predicted, confidence, loss`` (plus ``p_true``), highest loss first.
    """
    threshold = float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"Invalid threshold. Received: threshold={threshold!r}; expected a number in (0, 1].")
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    pred = np.argmax(probs, axis=1)
    conf = probs[np.arange(len(pred)), pred] / probs.sum(axis=1)
    hits = np.flatnonzero((pred != labels) & (conf >= threshold))
    loss = per_row_loss(probs, labels)
    hits = hits[np.lexsort((hits, -loss[hits]))]
    return loss_rows(ids, paths, labels, probs, class_names, hits)


def confusion_matrix(probs, labels, n_classes: int) -> np.ndarray:
    """Counts ``C[true, predicted]`` of argmax predictions."""
    pred = np.argmax(np.asarray(probs), axis=1)
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(labels, dtype=np.int64), pred), 1)
    return out


def worst_confused_pairs(cm, class_names, k: int = 10) -> List[Dict[str, Any]]:
    """The ``k`` largest off-diagonal cells: ``true, predicted, count, share`` (of the true class)."""
    cm = np.asarray(cm)
    totals = cm.sum(axis=1)
    cells = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [
        {"true": str(class_names[i]), "predicted": str(class_names[j]), "count": c,
         "share": float(c / totals[i]) if totals[i] else 0.0}
        for c, i, j in cells[:k]
    ]


def varying_params(trials: Sequence[Dict[str, Any]]) -> List[str]:
    """Head parameters that take more than one value among successful trials (sorted)."""
    values: Dict[str, set] = {}
    for t in trials:
        if t["status"] != "ok":
            continue
        for k, v in t["params"].items():
            values.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
    return sorted(k for k, v in values.items() if len(v) > 1)


def log_scaled_params(space_description: Optional[Mapping[str, str]]) -> List[str]:
    """Keys searched on a log scale (``loguniform``/``qloguniform``), from a trials file's space description."""
    return sorted(k for k, text in (space_description or {}).items() if "loguniform" in str(text))


# --------------------------------------------------------------------------- comparison table
def backbone_facts(extract_stage: Mapping[str, Any], names: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Per backbone: ``dim``, ``images_per_s``, ``cache_bytes``, ``image_size`` (None when unknown).

    From the manifest's extract-stage record (``stages.extract.backbones``, written by the
    pipeline from the extraction report); ``dim`` falls back on the backbone registry. A
    number that was never recorded stays None ("n/a").
    """
    recorded = extract_stage.get("backbones") or {}
    settings = extract_stage.get("settings") or {}
    out = {}
    for name in names:
        rec = recorded.get(name) or {}
        dim = rec.get("dim")
        if dim is None:
            try:
                from catdog_features.features.backbones import get_backbone

                dim = get_backbone(name).dim
            except ValueError:  # a name the registry no longer has
                dim = None
        out[name] = {"dim": dim, "images_per_s": rec.get("images_per_s"), "cache_bytes": rec.get("store_bytes"),
                     "image_size": rec.get("image_size") or settings.get("image_size")}
    return out


def _total(facts, key, names):
    vals = [facts.get(b, {}).get(key) for b in names]
    return None if not vals or any(v is None for v in vals) else sum(vals)


def _subset_row(subset: Tuple[str, ...], kind: str, trials, members, member_scores, facts) -> Dict[str, Any]:
    tried = [t for t in trials if tuple(t["backbones"]) == subset]
    best_trial = min(tried, key=lambda t: t["loss"]) if tried else None
    mem = [(member_scores[n], n) for n, m in members.items() if tuple(m["backbones"]) == subset and n in member_scores]
    best = min(mem, key=lambda r: r[0]["log_loss"]) if mem else None
    one = facts.get(subset[0], {}) if len(subset) == 1 else {}
    return {
        "name": "+".join(subset), "kind": kind,
        "detail": (f"best of {len(tried)} trial(s)" if tried else "no trial") + (f"; OOF: member {best[1]}" if best else ""),
        "dim": _total(facts, "dim", subset),
        "sweep_val_log_loss": best_trial["loss"] if best_trial else None,
        "oof_log_loss": best[0]["log_loss"] if best else None,
        "oof_log_loss_clipped": best[0].get("clipped_log_loss") if best else None,
        "oof_accuracy": best[0]["accuracy"] if best else None,
        "images_per_s": one.get("images_per_s"),
        "cache_bytes": _total(facts, "cache_bytes", subset),
    }


def view_rows(members: Mapping[str, dict], member_scores: Mapping[str, dict], facts) -> List[Dict[str, Any]]:
    """Rows of kind ``view/TTA``: each member trained on several views, or offered TTA.

    A TTA row shows the member's OOF log loss with the TTA mean, and whether it was kept
    (only when lower than its plain OOF log loss; see :mod:`catdog_features.ensemble.tta`).
    """
    from catdog_features.features.views import format_views

    rows = []
    for name, m in members.items():
        trained, choice = m.get("train_views"), m.get("tta_choice")
        if not trained and not choice:
            continue
        score = member_scores.get(name, {})
        parts = [f"member {name} on {'+'.join(m['backbones'])}"]
        if trained:
            parts.append(f"trained on views {format_views(trained)} (one per image per epoch)")
        label = name
        if choice:
            label += f" +TTA({format_views(choice['views'])})"
            parts.append(f"TTA {'kept' if choice['kept'] else 'not kept'}: OOF log loss {choice['tta_log_loss']:.5f} "
                         f"with TTA vs {choice['plain_log_loss']:.5f} plain")
        rows.append({
            "name": label, "kind": "view/TTA", "detail": "; ".join(parts), "dim": _total(facts, "dim", m["backbones"]),
            "sweep_val_log_loss": m.get("sweep_loss"),
            "oof_log_loss": choice["tta_log_loss"] if choice else score.get("log_loss"),
            "oof_log_loss_clipped": score.get("clipped_log_loss") if not choice or choice["kept"] else None,
            "oof_accuracy": score.get("accuracy") if not choice or choice["kept"] else None,
            "images_per_s": None, "cache_bytes": _total(facts, "cache_bytes", m["backbones"]),
        })
    return rows


def comparison_rows(facts: Mapping[str, Dict[str, Any]], trials: Sequence[Dict[str, Any]], members: Sequence[dict],
                    scores: Sequence[dict], chosen: Optional[str]) -> List[Dict[str, Any]]:
    """One row per backbone, per backbone combination tried, per ensembler (:data:`COMPARISON_COLUMNS`).

    ``facts``: :func:`backbone_facts`; ``trials``: the sweep's trial dicts; ``members`` and
    ``scores``: the saved ensemble's member configs and score rows; ``chosen``: its method.
    Every ensembler's OOF numbers are the ones it was chosen by (one set of OOF probabilities
    per ensembler, see :mod:`catdog_features.ensemble.combine`).
    """
    trials = [t for t in trials if t["status"] == "ok" and t["loss"] is not None]
    members = {m["name"]: m for m in members}
    member_scores = {r["name"]: r for r in scores if r["kind"] == "member"}
    rows = [_subset_row((b,), "backbone", trials, members, member_scores, facts) for b in facts]
    combos = list(dict.fromkeys(tuple(t["backbones"]) for t in trials if len(t["backbones"]) > 1))
    combos += [tuple(m["backbones"]) for m in members.values() if len(m["backbones"]) > 1 and tuple(m["backbones"]) not in combos]
    rows += [_subset_row(c, "concat", trials, members, member_scores, facts) for c in combos]
    rows += view_rows(members, member_scores, facts)
    used = list(dict.fromkeys(b for m in members.values() for b in m["backbones"]))
    for r in scores:
        if r["kind"] != "ensemble":  # member rows are above; a member may share an ensembler's name ("linear")
            continue
        rows.append({
            "name": r["name"] + (" (chosen)" if r["name"] == chosen else ""), "kind": "ensemble",
            "detail": r.get("note", ""), "dim": _total(facts, "dim", used), "sweep_val_log_loss": None,
            "oof_log_loss": r.get("log_loss"), "oof_log_loss_clipped": r.get("clipped_log_loss"),
            "oof_accuracy": r.get("accuracy"), "images_per_s": None, "cache_bytes": _total(facts, "cache_bytes", used),
        })
    return rows
