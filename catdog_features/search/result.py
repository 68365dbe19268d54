"""What a sweep returns: :class:`SweepResult` (best trial, top-k, table, ``best_estimator()``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

#: Parameters shown in progress lines and tables when no trial tells which ones vary.
DEFAULT_SHOWN = ("lr", "decay", "momentum", "dropout")
#: Column order of the parameters shown (others follow alphabetically).
_PREFERRED = ("head", "optimizer", "lr", "momentum", "decay", "l2", "dropout", "hidden_units", "batch_size", "C")


def fmt_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value)) or "-"
    return "-" if value is None else str(value)


def shown_params(trials: Sequence[Dict[str, Any]], searched: Sequence[str] = ()) -> List[str]:
    """Head parameters worth a column: those taking more than one value among the trials.

    Before there are two trials: the searched labels that are parameter names, else
    :data:`DEFAULT_SHOWN`.
    """
    values: Dict[str, set] = {}
    for t in trials:
        for k, v in (t.get("params") or {}).items():
            if k != "random_state":
                values.setdefault(k, set()).add(json.dumps(v, sort_keys=True, default=str))
    varying = [k for k, v in values.items() if len(v) > 1]
    if not varying:
        varying = [k for k in searched if k in values] or [k for k in DEFAULT_SHOWN if k in values or not values]
    rank = {k: i for i, k in enumerate(_PREFERRED)}
    return sorted(varying, key=lambda k: (rank.get(k, len(rank)), k))


@dataclass
class SweepResult:
    """What :func:`~catdog_features.search.sweep` returns.

    Attributes
    ----------
    best_params : dict or None
        Head params of the best successful trial (``"head"``: its kind, plus the constructor
        arguments); :meth:`best_estimator` builds it.
    best_backbones : list of str or None
        Backbones concatenated in the best trial (``[]`` for a plain matrix).
    best_loss : float or None
        Its validation log loss (mean over folds with a CV objective).
    best_trial : dict or None
        The whole trial record.
    trials : list of dict
        Every finished trial, by tid: ``tid, status ("ok"|"fail"), loss, params, backbones,
        best_epoch, duration_s, error, hyperopt_vals, started_at, fold_losses`` (the loss of
        each CV fold; one value for a hold-out split). ``pd.DataFrame(trials)``.
    trials_path : str or None
        The SQLite trials file.
    searched : list of str
        Labels of the hyperopt parameters of the space.
    timings : dict
        Seconds spent this run: ``suggest`` (TPE), ``persist`` (commits), ``trials``; and
        counts: ``n_new`` trials run, ``concat_builds`` feature concatenations made (one per
        distinct backbone subset while the LRU holds them).
    """

    best_params: Optional[Dict[str, Any]]
    best_backbones: Optional[List[str]]
    best_loss: Optional[float]
    best_trial: Optional[Dict[str, Any]]
    trials: List[Dict[str, Any]]
    trials_path: Optional[str] = None
    searched: List[str] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_trials(cls, trials, trials_path=None, searched=(), timings=None) -> "SweepResult":
        ok = [t for t in trials if t["status"] == "ok"]
        best = min(ok, key=lambda t: (t["loss"], t["tid"])) if ok else None
        return cls(
            best_params=None if best is None else dict(best["params"]),
            best_backbones=None if best is None else list(best["backbones"]),
            best_loss=None if best is None else best["loss"],
            best_trial=best,
            trials=list(trials),
            trials_path=None if trials_path is None else str(trials_path),
            searched=list(searched),
            timings=dict(timings or {}),
        )

    @property
    def n_ok(self) -> int:
        return sum(t["status"] == "ok" for t in self.trials)

    def best_estimator(self):
        """An unfitted head of the best trial's kind and settings (its ``random_state`` included).

        ``result.best_estimator().fit(X, y)`` with ``X`` the concatenation of
        ``result.best_backbones`` (``FeatureSet.concat``) trains it on all your rows.
        """
        from catdog_features.heads import build_head

        if self.best_params is None:
            raise ValueError("The sweep has no successful trial yet; there is no best estimator. "
                             "Run more evaluations (the failed trials' errors are in result.trials).")
        return build_head(self.best_params)

    def top(self, k: int = 5, distinct: bool = True) -> List[Dict[str, Any]]:
        """The ``k`` best successful trials, lowest loss first (ties: earlier tid).

        With ``distinct``, trials repeating the (params, backbones) of a better one are skipped.
        """
        ok = sorted((t for t in self.trials if t["status"] == "ok"), key=lambda t: (t["loss"], t["tid"]))
        out, seen = [], set()
        for t in ok:
            key = (json.dumps(t["params"], sort_keys=True), tuple(t["backbones"]))
            if distinct and key in seen:
                continue
            seen.add(key)
            out.append(t)
            if len(out) >= k:
                break
        return out

    def to_frame(self):
        """The trials as a pandas DataFrame, one ``params.<name>`` column per parameter."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "SweepResult.to_frame() needs pandas, which is not installed (pip install pandas); "
                "the plain records are in result.trials."
            ) from None
        rows = []
        for t in self.trials:
            row = {k: v for k, v in t.items() if k not in ("params", "hyperopt_vals")}
            row["backbones"] = "+".join(t["backbones"])
            row.update({f"params.{k}": v for k, v in t["params"].items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def format_table(self, k: int = 10) -> str:
        """A plain-text table of the top ``k`` distinct trials.

        With a CV objective, ``folds`` shows the spread of the fold losses (``sd`` and
        ``min-max``), so two configs can be told apart from noise.
        """
        shown = shown_params(self.trials, self.searched)
        top = self.top(k)
        with_folds = any(len(t.get("fold_losses") or []) > 1 for t in top)
        header = ["rank", "tid", "loss", *(["fold sd", "fold min-max"] if with_folds else []), "best_epoch",
                  "backbones", *shown, "duration_s"]
        rows = [header]
        for rank, t in enumerate(top, 1):
            folds = np.asarray(t.get("fold_losses") or [t["loss"]], dtype=np.float64)
            spread = [f"{folds.std():.5f}", f"{folds.min():.4f}-{folds.max():.4f}"] if with_folds else []
            rows.append([
                str(rank), str(t["tid"]), f"{t['loss']:.5f}", *spread, fmt_value(t["best_epoch"]),
                fmt_value(t["backbones"]), *[fmt_value(t["params"].get(c)) for c in shown], f"{t['duration_s']:.1f}",
            ])
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        n_fail = len(self.trials) - self.n_ok
        title = f"top {min(k, self.n_ok)} of {len(self.trials)} trials ({n_fail} failed)"
        n_folds = max((len(t.get("fold_losses") or []) for t in self.trials), default=0)
        if n_folds > 1:
            title += f"; loss = mean over {n_folds} CV folds"
        if self.trials_path:
            title += f"; trials file: {self.trials_path}"
        return title + "\n" + "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"SweepResult(best_loss={self.best_loss!r}, best_backbones={self.best_backbones!r}, "
            f"best_params={self.best_params!r}, n_trials={len(self.trials)}, n_ok={self.n_ok})"
        )
