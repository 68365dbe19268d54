"""Reports of a run folder: comparison table, head curves, sweep history, error analysis.

:func:`write_report` reads what a run folder holds (its layout is documented in
:mod:`catdog_features.run.rundir`) and writes, by default::

    RUN_DIR/report.html              one self-contained page (every figure embedded as a
                                     base64 PNG data URI; links to the CSVs below)
    RUN_DIR/report/report.md         the same content as Markdown (links the PNGs beside it)
    RUN_DIR/report/*.png             the figures: sweep_history, sweep_params, head_curves,
                                     top_losses, confusion_matrix
    RUN_DIR/report/likely_mislabeled.csv   high-confidence disagreements between the OOF
                                     prediction and the label: id,path,label,predicted,
                                     confidence,loss (inspect them, or exclude them)
    RUN_DIR/report/top_losses.csv    the top-N highest-loss training images
    RUN_DIR/report/failures.csv      every image extraction could not use: set,path,reason
    RUN_DIR/report/comparison.csv    the comparison table

Every section reads only what the run saved (the manifest, ``trials.sqlite``, ``oof.h5``,
``ensemble.json``, the fold heads' JSON sidecars, the cache files' sizes) and nothing is
refitted: the chosen ensemble's OOF probabilities are recombined from the members' stored
OOF predictions (a stacker's nested-CV predictions are recomputed, deterministically, from
the same seed). A section whose input is missing says so and the rest of the report is
still written; a number that was never recorded is shown as "n/a", never guessed.

The building blocks (:func:`top_losses`, :func:`likely_mislabeled`,
:func:`plot_top_losses`, :func:`plot_sweep_history`, :func:`plot_confusion_matrix`, ...)
take plain arrays and return data or :class:`matplotlib.figure.Figure` objects, so a
notebook can use them on in-memory results. Figures are drawn on Matplotlib's Agg canvas
directly (no pyplot, no GUI backend, no change to the global backend), which works on
headless machines and leaves a notebook's inline backend alone.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from catdog_features.run.rundir import REPORT, REPORT_HTML, RunDir

#: File name of the HTML page, written into the run folder (or ``out_dir`` when given).
HTML_NAME = REPORT_HTML
MARKDOWN_NAME = "report.md"
MISLABELED_CSV = "likely_mislabeled.csv"
TOP_LOSSES_CSV = "top_losses.csv"
FAILURES_CSV = "failures.csv"
COMPARISON_CSV = "comparison.csv"
#: The figures a full report writes (``<name>.png``); a section without its input writes none.
FIGURE_NAMES = ("sweep_history", "sweep_params", "head_curves", "top_losses", "confusion_matrix")
#: Columns of ``likely_mislabeled.csv`` (and the first ones of ``top_losses.csv``).
MISLABELED_COLUMNS = ("id", "path", "label", "predicted", "confidence", "loss")
#: Probabilities are floored at this before taking logs (as in catdog_features.ensemble).
_TINY = 1e-15
#: Losses below this are drawn at this value on log-scaled sweep plots.
_PLOT_FLOOR = 1e-5
#: Rows of long tables shown in the HTML/Markdown (the CSVs hold all of them).
_MAX_TABLE_ROWS = 100
_DPI = 100


class ReportWarning(UserWarning):
    """A report section could not be made; the rest of the report was still written."""


# --------------------------------------------------------------------------- figures
_FIGURE_CLASS = None


def _figure_class():
    """A Figure subclass that Jupyter shows inline as PNG (created on first use: lazy matplotlib)."""
    global _FIGURE_CLASS
    if _FIGURE_CLASS is None:
        from matplotlib.figure import Figure

        class ReportFigure(Figure):
            """A Matplotlib Figure that IPython/Jupyter displays as a PNG without pyplot."""

            def _repr_png_(self):
                return figure_png(self)

        _FIGURE_CLASS = ReportFigure
    return _FIGURE_CLASS


def _new_figure(width: float, height: float):
    """A Figure drawn by the Agg canvas, without pyplot (no GUI, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = _figure_class()(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig) -> bytes:
    """PNG bytes of a Matplotlib figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _log_scale_wanted(values) -> bool:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    return len(v) > 1 and v.min() > 0 and v.max() / max(v.min(), _PLOT_FLOOR) >= 20


# --------------------------------------------------------------------------- error analysis
def per_row_loss(probs, labels) -> np.ndarray:
    """Log loss of each row: ``-log p(true class)`` (probabilities floored at 1e-15)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    p = probs[np.arange(len(labels)), labels] / probs.sum(axis=1)
    return -np.log(np.clip(p, _TINY, 1.0))


def top_losses(probs, labels, n: int = 16) -> np.ndarray:
    """Row indices of the ``n`` highest-loss rows, highest first (ties: earlier row)."""
    loss = per_row_loss(probs, labels)
    order = np.lexsort((np.arange(len(loss)), -loss))
    return order[: max(0, int(n))]


def _rows(ids, paths, labels, probs, class_names, index) -> List[Dict[str, Any]]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    loss = per_row_loss(probs, labels)
    pred = np.argmax(probs, axis=1)
    out = []
    for i in index:
        out.append({
            "id": str(ids[i]),
            "path": "" if paths is None or paths[i] is None else str(paths[i]),
            "label": str(class_names[labels[i]]),
            "predicted": str(class_names[pred[i]]),
            "confidence": float(probs[i, pred[i]] / probs[i].sum()),
            "loss": float(loss[i]),
            "p_true": float(probs[i, labels[i]] / probs[i].sum()),
        })
    return out


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
    return _rows(ids, paths, labels, probs, class_names, hits)


def write_rows_csv(path, rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> Path:
    """Write dict rows as CSV with the given columns (floats with 6 significant digits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([f"{row[c]:.6g}" if isinstance(row[c], float) else row[c] for c in columns])
    return path


def _thumbnail(path, size: int = 256):
    """RGB thumbnail array of an image file, or None when it cannot be read."""
    try:
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.draft("RGB", (size, size))
            im = im.convert("RGB")
            im.thumbnail((size, size))
            return np.asarray(im)
    except Exception:  # a missing or broken file becomes a placeholder tile, not a failed report
        return None


def _tile_title(row: Dict[str, Any], class_names: Sequence[str]) -> str:
    if len(class_names) == 2:
        # binary: the probability of class 1 (Kaggle's "probability of dog")
        p1 = row["confidence"] if row["predicted"] == class_names[1] else 1.0 - row["confidence"]
        return f"{row['id']}\ntrue: {row['label']}  P({class_names[1]})={p1:.3f}\nloss {row['loss']:.2f}"
    if row["label"] == row["predicted"]:
        return f"{row['id']}\ntrue = predicted: {row['label']}\np={row['p_true']:.3f}  loss {row['loss']:.2f}"
    return (f"{row['id']}\ntrue: {row['label']} (p={row['p_true']:.3f})\n"
            f"pred: {row['predicted']} (p={row['confidence']:.3f})")


def plot_top_losses(ids, paths, labels, probs, class_names, top_n: int = 16, ncols: Optional[int] = None,
                    title: Optional[str] = None):
    """Grid of the ``top_n`` highest-loss images, each titled with its true label and probability.

    Parameters
    ----------
    ids, paths : sequences (n,)
        Row ids and image files (a missing/unreadable file gives a grey placeholder tile).
    labels : array (n,)
    probs : array (n, n_classes)
        Predicted probabilities (out-of-fold, for training images).
    class_names : sequence of str
    top_n : int
    ncols : int, optional
        Columns of the grid (default: about square, at most 6).

    Returns
    -------
    matplotlib.figure.Figure
    """
    index = top_losses(probs, labels, top_n)
    rows = _rows(ids, paths, labels, probs, class_names, index)
    n = max(1, len(rows))
    ncols = int(ncols or min(6, math.ceil(math.sqrt(n))))
    nrows = math.ceil(n / ncols)
    fig = _new_figure(2.3 * ncols, 2.55 * nrows + 0.4)
    for k in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(rows):
            ax.axis("off")
            continue
        row = rows[k]
        image = _thumbnail(row["path"]) if row["path"] else None
        if image is None:
            ax.set_facecolor("0.85")
            ax.text(0.5, 0.5, "image not\navailable", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        else:
            ax.imshow(image)
        ax.set_title(_tile_title(row, class_names), fontsize=7.5, color="darkred" if row["label"] != row["predicted"] else "black")
    fig.suptitle(title or f"top {len(rows)} losses (red title: predicted class differs from the label)", fontsize=10)
    return fig


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


def plot_confusion_matrix(cm, class_names, title: str = "confusion matrix"):
    """Counts (annotated up to 20 classes), coloured by the share of each true class."""
    cm = np.asarray(cm)
    n = len(cm)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(14.0, max(4.2, 0.42 * n + 2.5))
    fig = _new_figure(side + 0.8, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class")
    ticks = np.arange(n)
    fontsize = 9 if n <= 10 else max(4, int(9 - n / 15))
    ax.set_xticks(ticks, [str(c) for c in class_names], rotation=45 if n > 2 else 0, ha="right" if n > 2 else "center",
                  fontsize=fontsize)
    ax.set_yticks(ticks, [str(c) for c in class_names], fontsize=fontsize)
    ax.set_xlabel("predicted class (argmax)")
    ax.set_ylabel("true class")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=fontsize,
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_title(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------- head curves
def plot_head_curves(curves: Sequence[Dict[str, Any]], max_panels: int = 4):
    """Train/validation loss per epoch of saved heads, best epoch marked.

    Parameters
    ----------
    curves : sequence of dict
        One per panel: ``title`` and ``folds``, a list of ``{"history": {"loss": [...],
        "val_loss": [...]}, "best_epoch": int or None}`` (a DenseHead sidecar's content).
    max_panels : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    curves = list(curves)[:max_panels]
    n = max(1, len(curves))
    ncols = min(2, n)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(6.0 * ncols, 3.6 * nrows)
    colors = [f"C{k}" for k in range(10)]
    for k, panel in enumerate(curves):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        values = []
        for f, fold in enumerate(panel["folds"]):
            hist = fold.get("history") or {}
            color = colors[f % len(colors)]
            loss = hist.get("loss") or []
            val = hist.get("val_loss") or []
            values += list(loss) + list(val)
            ax.plot(np.arange(1, len(loss) + 1), loss, linestyle="--", color=color, alpha=0.7)
            if val:
                ax.plot(np.arange(1, len(val) + 1), val, linestyle="-", color=color, label=f"fold {f}")
                best = fold.get("best_epoch")
                if best is not None and 0 <= int(best) < len(val):
                    ax.plot([int(best) + 1], [val[int(best)]], marker="*", markersize=13, color=color,
                            markeredgecolor="black", linestyle="none")
        if _log_scale_wanted(values):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("log loss")
        ax.set_title(panel["title"], fontsize=9)
        ax.grid(alpha=0.3)
        from matplotlib.lines import Line2D

        handles, _ = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="black", linestyle="-", label="validation"),
                    Line2D([], [], color="black", linestyle="--", label="training"),
                    Line2D([], [], color="black", marker="*", markersize=9, linestyle="none", label="best epoch (kept)")]
        ax.legend(handles=handles, fontsize=7, ncol=2)
    return fig


# --------------------------------------------------------------------------- sweep plots
def _subset_label(backbones) -> str:
    return "+".join(backbones) if backbones else "(features)"


def plot_sweep_history(trials: Sequence[Dict[str, Any]], title: Optional[str] = None):
    """Validation loss per trial in order, coloured by backbone subset, with the best-so-far line.

    ``trials`` are :class:`~catdog_features.search.SweepResult` trial dicts (``tid``,
    ``status``, ``loss``, ``backbones``). Failed trials are marked with a red x at the top.
    """
    trials = sorted(trials, key=lambda t: t["tid"])
    ok = [t for t in trials if t["status"] == "ok" and t["loss"] is not None]
    failed = [t for t in trials if not (t["status"] == "ok" and t["loss"] is not None)]
    fig = _new_figure(8.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    losses = [t["loss"] for t in ok]
    log = _log_scale_wanted(losses)
    shown = (lambda v: max(v, _PLOT_FLOOR)) if log else (lambda v: v)
    subsets = list(dict.fromkeys(_subset_label(t["backbones"]) for t in ok))
    for k, subset in enumerate(subsets):
        pts = [t for t in ok if _subset_label(t["backbones"]) == subset]
        ax.scatter([t["tid"] for t in pts], [shown(t["loss"]) for t in pts], s=22, color=f"C{k % 10}",
                   label=subset if k < 12 else None, zorder=3)
    if ok:
        best, xs, ys = math.inf, [], []
        for t in trials:
            if t in ok:
                best = min(best, t["loss"])
            if best < math.inf:
                xs.append(t["tid"])
                ys.append(shown(best))
        ax.step(xs, ys, where="post", color="black", linewidth=1.5, label="best so far", zorder=2)
    if failed:
        top = max((shown(v) for v in losses), default=1.0)
        ax.scatter([t["tid"] for t in failed], [top] * len(failed), marker="x", color="red", s=40,
                   label=f"failed ({len(failed)})", zorder=4)
    if log:
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (in the order run)")
    ax.set_ylabel("validation log loss" + (f" (< {_PLOT_FLOOR:g} drawn at {_PLOT_FLOOR:g})" if log and min(losses) < _PLOT_FLOOR else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="backbones", title_fontsize=7)
    ax.set_title(title or f"sweep history: {len(trials)} trials ({len(failed)} failed)", fontsize=10)
    return fig


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


def plot_sweep_params(trials: Sequence[Dict[str, Any]], params: Optional[Sequence[str]] = None,
                      log_params: Optional[Sequence[str]] = None):
    """Loss against each searched hyperparameter and the backbone subset, coloured by trial order.

    The picture to read after an overnight TPE sweep: where the good trials cluster, and
    whether later trials (yellow) moved there. ``log_params`` get a log x axis (default:
    parameters whose values span two decades or more).
    """
    ok = sorted((t for t in trials if t["status"] == "ok" and t["loss"] is not None), key=lambda t: t["tid"])
    params = list(params if params is not None else varying_params(trials))
    subsets = list(dict.fromkeys(_subset_label(t["backbones"]) for t in ok))
    panels = params + (["backbones"] if len(subsets) > 1 else [])
    n = max(1, len(panels))
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(4.2 * ncols + 0.8, 3.4 * nrows)
    losses = [t["loss"] for t in ok]
    log = _log_scale_wanted(losses)
    y = np.array([max(v, _PLOT_FLOOR) if log else v for v in losses])
    order = np.array([t["tid"] for t in ok])
    rng = np.random.default_rng(0)
    mappable = None
    for k, key in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        if key == "backbones":
            raw = [_subset_label(t["backbones"]) for t in ok]
        else:
            raw = [t["params"].get(key) for t in ok]
        numeric = key != "backbones" and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
        if numeric:
            x = np.array(raw, dtype=np.float64)
            wide = x.min() > 0 and x.max() / x.min() >= 100
            if x.min() > 0 and (key in log_params if log_params is not None else wide):
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short range
        else:  # categories (backbone subsets, optimizer names, ...) side by side, jittered
            if key == "backbones":
                cats = sorted(subsets, key=lambda c: (c.count("+"), c))
                keyed, labels = raw, cats
            else:
                cats = sorted({json.dumps(v) for v in raw})
                keyed, labels = [json.dumps(v) for v in raw], [c.strip('"') for c in cats]
            codes = {c: i for i, c in enumerate(cats)}
            x = np.array([codes[v] for v in keyed], dtype=np.float64) + rng.uniform(-0.12, 0.12, len(raw))
            ax.set_xticks(range(len(cats)), labels, rotation=30 if key == "backbones" else 0,
                          ha="right" if key == "backbones" else "center", fontsize=7)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        mappable = ax.scatter(x, y, c=order, cmap="viridis", s=20, edgecolors="black", linewidths=0.3)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("validation log loss")
        ax.grid(alpha=0.3)
    if mappable is not None:
        from matplotlib.ticker import MaxNLocator

        bar = fig.colorbar(mappable, ax=fig.axes, shrink=0.8, label="trial #")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    fig.suptitle("loss vs hyperparameters (colour: trial order)", fontsize=10)
    return fig


# --------------------------------------------------------------------------- reading a run
def _read_trials(path: Path) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Trials and meta of a trials file; read-only SQLite when a running sweep holds its lock."""
    from catdog_features.search import TrialStore

    try:
        store = TrialStore(path)
    except RuntimeError:  # a sweep is writing it now: read a consistent snapshot without the lock
        import sqlite3

        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            cols = TrialStore._COLUMNS
            trials = []
            for row in conn.execute(f"SELECT {', '.join(cols)} FROM trials ORDER BY tid"):
                rec = dict(zip(cols, row))
                for key in TrialStore._JSON:
                    rec[key] = json.loads(rec[key])
                trials.append(rec)
            meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        finally:
            conn.close()
        return trials, meta
    try:
        return store.load(), store.read_meta()
    finally:
        store.close()


def _h5_info(path) -> Dict[str, Any]:
    """``dim`` of a cache file's vectors and, when the cache records it, ``images_per_s``."""
    try:
        import h5py

        with h5py.File(path, "r", locking=False) as f:
            info = {"dim": int(f["features"].shape[1])}
            if "images_per_s" in f.attrs:
                info["images_per_s"] = float(f.attrs["images_per_s"])
            return info
    except Exception:  # unreadable or moved: the table says n/a
        return {}


@dataclass
class _Run:
    """What the report reads from a run folder (each part None/empty when absent)."""

    run: RunDir
    manifest: Dict[str, Any] = field(default_factory=dict)
    ensemble: Optional[Dict[str, Any]] = None
    trials: Optional[List[Dict[str, Any]]] = None
    trials_meta: Dict[str, Any] = field(default_factory=dict)
    oof: Any = None
    trials_path: Optional[Path] = None
    problems: List[str] = field(default_factory=list)

    @property
    def config(self) -> Dict[str, Any]:
        return self.manifest.get("config") or {}

    @property
    def stages(self) -> Dict[str, Any]:
        return self.manifest.get("stages") or {}

    def train_source(self) -> Tuple[Optional[str], Optional[str]]:
        data = self.config.get("data")
        if isinstance(data, dict):  # a `run` config
            return data.get("train"), data.get("labels_csv")
        if isinstance(data, str):  # `ensemble` command arguments
            return data, self.config.get("labels_csv")
        return None, None

    def ensemble_seed(self) -> int:
        ens = self.config.get("ensemble")
        if isinstance(ens, dict) and ens.get("seed") is not None:
            return int(ens["seed"])
        return int(self.config.get("seed") or 0)

    def backbones(self) -> List[str]:
        settings = (self.stages.get("extract") or {}).get("settings") or (self.ensemble or {}).get("extraction") or {}
        names = list(settings.get("backbones") or [])
        for t in self.trials or []:
            names += [b for b in t["backbones"] if b not in names]
        return list(dict.fromkeys(names))


def _load_run(run_dir) -> _Run:
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"Run folder not found. Received: run_dir={str(run_dir)!r}.")
    data = _Run(run)
    try:
        data.manifest = run.read_manifest()
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        data.problems.append(f"manifest.json could not be read ({exc})")
    if run.ensemble.is_file():
        try:
            data.ensemble = run.read_ensemble()
        except (OSError, json.JSONDecodeError) as exc:
            data.problems.append(f"ensemble.json could not be read ({exc})")
    trials_path = run.trials
    given = data.config.get("trials")  # `catdog-features ensemble --trials FILE` elsewhere
    if not trials_path.is_file() and isinstance(given, str) and Path(given).is_file():
        trials_path = Path(given)
    if trials_path.is_file():
        try:
            data.trials, data.trials_meta = _read_trials(trials_path)
            data.trials_path = trials_path
        except Exception as exc:
            data.problems.append(f"trials.sqlite could not be read ({type(exc).__name__}: {exc})")
    if run.oof.is_file():
        try:
            from catdog_features.ensemble import OOFPredictions

            data.oof = OOFPredictions.load(run.oof)
        except Exception as exc:
            data.problems.append(f"oof.h5 could not be read ({type(exc).__name__}: {exc})")
    if not any([data.manifest, data.ensemble, data.trials is not None, data.oof is not None]):
        raise FileNotFoundError(
            f"Nothing to report in {str(run.root)!r}: no manifest.json, ensemble.json, trials.sqlite or oof.h5; "
            "expected a run folder made by `catdog-features run` or `ensemble`."
        )
    return data


def chosen_oof_probabilities(data: _Run) -> Tuple[np.ndarray, str, Optional[float]]:
    """OOF probabilities of the run's chosen ensemble (or its best member), its name and stored score."""
    from catdog_features.ensemble import EnsembleResult, fit_ensemblers, log_loss

    oof = data.oof
    if data.ensemble is not None:
        result = EnsembleResult.from_dict(data.ensemble["ensemble"])
        stored = next((r for r in result.scores if r["name"] == result.method), {})
        if result.method == "stack":  # its OOF score comes from nested CV: recompute that, same seed
            refit = fit_ensemblers(oof, method="stack", clip=result.clip, random_state=data.ensemble_seed())
            probs = refit.oof_proba
        else:
            probs = result.combine(oof.oof)
        return probs, result.method, stored.get("log_loss")
    losses = {name: log_loss(p, oof.labels) for name, p in oof.oof.items()}
    best = min(losses, key=losses.get)
    return np.asarray(oof.oof[best]), f"member {best}", losses[best]


# --------------------------------------------------------------------------- sections
@dataclass
class _Section:
    key: str
    title: str
    prefix: str = REPORT  # where out_dir is, relative to the HTML file
    html: List[str] = field(default_factory=list)
    md: List[str] = field(default_factory=list)

    def text(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md.append(text + "\n")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], limit: int = _MAX_TABLE_ROWS,
              more: str = "") -> None:
        shown = list(rows)[:limit]
        cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in shown)
        self.html.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>")
        md = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in shown]
        self.md.append("\n".join(md) + "\n")
        if len(rows) > limit:
            self.text(f"({len(rows) - limit} more rows{': ' + more if more else ''})")

    def figure(self, fig, out_dir: Path, name: str, alt: str) -> Path:
        png = figure_png(fig)
        path = out_dir / f"{name}.png"
        path.write_bytes(png)
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        self.html.append(f'<figure><img src="{uri}" alt="{html.escape(alt)}"><figcaption>'
                         f'{html.escape(alt)} (<a href="{html.escape(self._href(name + ".png"))}">{name}.png</a>)'
                         "</figcaption></figure>")
        self.md.append(f"![{alt}]({name}.png)\n")
        return path

    def _href(self, name: str) -> str:
        return name if self.prefix in ("", ".") else f"{self.prefix}/{name}"

    def link(self, out_dir: Path, path: Path, text: str) -> None:
        self.html.append(f'<p><a href="{html.escape(self._href(path.name))}">'
                         f"{html.escape(path.name)}</a>: {html.escape(text)}</p>")
        self.md.append(f"[{path.name}]({path.name}): {text}\n")


def _fmt(value, spec: str = ".5f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if spec == ".5f" and 0 < abs(value) < 1e-4:  # a loss this small would print as 0.00000
        return f"{value:.2e}"
    return format(value, spec)


def _size(n: Optional[int]) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "n/a"  # pragma: no cover


def _section_summary(data: _Run, sec: _Section) -> None:
    m = data.manifest
    cfg = data.config
    if not m:
        sec.text("This run folder has no manifest.json; the sections below use the files found in it.")
    else:
        source = cfg.get("source") or (f"`catdog-features {cfg['command']}`" if cfg.get("command") else "n/a")
        sec.text(f"Run folder {data.run.root} (config: {source}); created {m.get('created_at', 'n/a')}, "
                 f"updated {m.get('updated_at', 'n/a')}.")
    settings = (data.stages.get("extract") or {}).get("settings") or (data.ensemble or {}).get("extraction")
    if settings:
        size = settings.get("image_size") or "native"
        sec.text(f"Features: {', '.join(settings.get('backbones', []))}; weights {settings.get('weights')}; "
                 f"image size {size}; cache {settings.get('cache_dir')}.")
    if data.ensemble is not None:
        ens = data.ensemble["ensemble"]
        chosen = next((r for r in ens["scores"] if r["name"] == ens["method"]), None)
        if chosen:
            sec.text(f"Chosen ensemble: {ens['method']} of {len(ens['members'])} member(s); OOF log loss "
                     f"{_fmt(chosen.get('cv_log_loss'))} (clip {ens['clip']:g}: {_fmt(chosen.get('clipped_log_loss'))}), "
                     f"OOF accuracy {_fmt(chosen.get('accuracy'), '.2%')}.")
    if data.stages:
        rows = []
        for name, st in data.stages.items():
            if name == "report":  # this report's own record is written after it
                continue
            detail = {k: v for k, v in st.items() if k in ("rows", "n_trials", "n_new", "best_loss", "method", "clip",
                                                          "reason", "error", "format")}
            rows.append([name, st.get("status", "n/a"), _fmt(st.get("seconds"), ".1f"),
                         ", ".join(f"{k}={_fmt(v, '.5g') if isinstance(v, float) else v}" for k, v in detail.items())])
        sec.table(["stage", "status", "seconds", "details"], rows)
    for note in m.get("notes") or []:
        sec.text(f"Note: {note}")
    for problem in data.problems:
        sec.text(f"Problem: {problem}")
    versions = m.get("versions")
    if versions:
        sec.text("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))


def backbone_facts(data: _Run) -> Dict[str, Dict[str, Any]]:
    """Per backbone: ``dim``, ``images_per_s``, ``cache_bytes``, ``image_size`` (None when unknown).

    Read from ``manifest["stages"]["extract"]["backbones"][name]`` when the pipeline
    recorded them; otherwise ``dim`` comes from the (train) cache file's shape,
    ``images_per_s`` from its ``images_per_s`` attribute if the cache wrote one, and
    ``cache_bytes`` from the sizes of the train and test cache files. A speed that was never
    recorded stays None ("n/a").
    """
    extract = data.stages.get("extract") or {}
    recorded = extract.get("backbones") or {}
    settings = extract.get("settings") or {}
    out = {}
    for name in data.backbones():
        rec = dict(recorded.get(name) or {})
        files = [Path(part[name]) for part in ((extract.get("train") or {}).get("cache_files"),
                                                (extract.get("test") or {}).get("cache_files")) if part and name in part]
        info = _h5_info(files[0]) if files and files[0].is_file() else {}
        dim = rec.get("dim", info.get("dim"))
        if dim is None:
            try:
                from catdog_features.features.backbones import get_backbone

                dim = get_backbone(name).dim
            except Exception:
                dim = None
        cache_bytes = rec.get("cache_bytes")
        folders = list(dict.fromkeys(files))  # train and test share the extractor's store folder
        if cache_bytes is None and folders and all(p.is_dir() for p in folders):
            cache_bytes = sum(s.stat().st_size for p in folders for s in (p / "shards").glob("*.h5"))
        out[name] = {
            "dim": dim,
            "images_per_s": rec.get("images_per_s", info.get("images_per_s")),
            "cache_bytes": cache_bytes,
            "image_size": rec.get("image_size") or settings.get("image_size"),
        }
    return out


def comparison_rows(data: _Run) -> List[Dict[str, Any]]:
    """The comparison table: one row per backbone, per backbone combination tried, per ensembler."""
    facts = backbone_facts(data)
    trials = [t for t in (data.trials or []) if t["status"] == "ok" and t["loss"] is not None]
    scores = (data.ensemble or {}).get("ensemble", {}).get("scores") or []
    members = {m["name"]: m for m in ((data.ensemble or {}).get("members") or (data.oof.members if data.oof else []))}
    member_scores = {r["name"]: r for r in scores if r["kind"] == "member"}

    def total(key, names):
        vals = [facts.get(b, {}).get(key) for b in names]
        return None if not vals or any(v is None for v in vals) else sum(vals)

    def subset_row(subset: Tuple[str, ...], kind: str) -> Dict[str, Any]:
        tried = [t for t in trials if tuple(t["backbones"]) == subset]
        best_trial = min(tried, key=lambda t: t["loss"]) if tried else None
        mem = [(member_scores[n], n) for n, m in members.items() if tuple(m["backbones"]) == subset and n in member_scores]
        best_mem = min(mem, key=lambda r: r[0]["log_loss"]) if mem else None
        one = facts.get(subset[0], {}) if len(subset) == 1 else {}
        return {
            "name": "+".join(subset), "kind": kind,
            "detail": (f"best of {len(tried)} trial(s)" if tried else "no trial")
            + (f"; OOF: member {best_mem[1]}" if best_mem else ""),
            "dim": total("dim", subset),
            "sweep_val_log_loss": best_trial["loss"] if best_trial else None,
            "oof_log_loss": best_mem[0]["log_loss"] if best_mem else None,
            "oof_log_loss_clipped": best_mem[0].get("clipped_log_loss") if best_mem else None,
            "oof_accuracy": best_mem[0]["accuracy"] if best_mem else None,
            "images_per_s": one.get("images_per_s") if len(subset) == 1 else None,
            "cache_bytes": total("cache_bytes", subset),
        }

    rows = [subset_row((b,), "backbone") for b in data.backbones()]
    combos = list(dict.fromkeys(tuple(t["backbones"]) for t in trials if len(t["backbones"]) > 1))
    combos += [tuple(m["backbones"]) for m in members.values() if len(m["backbones"]) > 1 and tuple(m["backbones"]) not in combos]
    rows += [subset_row(c, "concat") for c in combos]
    ens = (data.ensemble or {}).get("ensemble") or {}
    used = list(dict.fromkeys(b for m in members.values() for b in m["backbones"]))
    for r in scores:
        if r["kind"] != "ensemble":
            continue
        rows.append({
            "name": r["name"] + (" (chosen)" if r["name"] == ens.get("method") else ""), "kind": "ensemble",
            "detail": r.get("note", ""), "dim": total("dim", used), "sweep_val_log_loss": None,
            "oof_log_loss": r.get("cv_log_loss", r.get("log_loss")),
            "oof_log_loss_clipped": r.get("clipped_log_loss"), "oof_accuracy": r.get("accuracy"),
            "images_per_s": None, "cache_bytes": total("cache_bytes", used),
        })
    return rows


_COMPARISON_COLUMNS = ("name", "kind", "detail", "dim", "sweep_val_log_loss", "oof_log_loss", "oof_log_loss_clipped",
                       "oof_accuracy", "images_per_s", "cache_bytes")


def _section_comparison(data: _Run, sec: _Section, out_dir: Path) -> None:
    rows = comparison_rows(data)
    if not rows:
        sec.text("No backbones, trials or ensemble found in this run.")
        return
    clip = ((data.ensemble or {}).get("ensemble") or {}).get("clip")
    sec.table(
        ["name", "kind", "feature dim", "best sweep val log loss", "OOF log loss",
         f"OOF log loss, clip {clip:g}" if clip is not None else "OOF log loss, clipped", "OOF accuracy",
         "extraction images/s", "cache size", "detail"],
        [[r["name"], r["kind"], _fmt(r["dim"], "d"), _fmt(r["sweep_val_log_loss"]), _fmt(r["oof_log_loss"]),
          _fmt(r["oof_log_loss_clipped"]), _fmt(r["oof_accuracy"], ".2%"), _fmt(r["images_per_s"], ".1f"),
          _size(r["cache_bytes"]), r["detail"]] for r in rows],
    )
    sec.text("Sweep val log loss: the best trial's loss on the sweep's hold-out split (or CV folds) for that backbone "
             "combination. OOF log loss: out-of-fold predictions over every training image (members), and for "
             "ensemblers the honest cross-validated score used to choose one (the blend and the stacker are re-fitted "
             "in nested CV). n/a: the run has no such number (e.g. no single-backbone member, or extraction speed "
             "not recorded).")
    extract = data.stages.get("extract") or {}
    if extract.get("status") == "done" and extract.get("seconds"):
        n = sum(int((extract.get(part) or {}).get("n", 0)) + len((extract.get(part) or {}).get("failed", []))
                for part in ("train", "test"))
        sec.text(f"The extraction stage of this run read {n} images through all backbones in one pass in "
                 f"{extract['seconds']:.1f} s ({n / extract['seconds']:.1f} images/s including model builds and "
                 "file hashing).")
    elif extract.get("status") == "reused":
        sec.text("Every feature came from the cache in this run (no extraction time measured).")
    path = write_rows_csv(out_dir / COMPARISON_CSV, rows, _COMPARISON_COLUMNS)
    sec.link(out_dir, path, "the same table as CSV")


def _section_curves(data: _Run, sec: _Section, out_dir: Path, max_curves: int) -> None:
    members = (data.ensemble or {}).get("members") or (data.oof.members if data.oof else [])
    if not members:
        sec.text("No ensemble members in this run (no ensemble.json / oof.h5), so no saved heads to show.")
        return
    members = sorted(members, key=lambda m: (m.get("sweep_loss") is None, m.get("sweep_loss") or 0.0))
    panels = []
    for m in members[:max_curves]:
        folds = []
        for side in sorted(data.run.models.glob(f"{m['name']}/fold*.keras.json"),
                           key=lambda p: int(p.name[4:].split(".")[0]) if p.name[4:].split(".")[0].isdigit() else 0):
            meta = json.loads(side.read_text(encoding="utf-8"))
            folds.append({"history": meta.get("history") or {}, "best_epoch": meta.get("best_epoch")})
        if folds:
            loss = _fmt(m.get("sweep_loss"), ".4g")
            panels.append({"title": f"member {m['name']}: {'+'.join(m['backbones'])} (sweep val loss {loss})",
                           "folds": folds})
    if not panels:
        sec.text(f"No saved fold heads found under {data.run.models}.")
        return
    sec.figure(plot_head_curves(panels, max_curves), out_dir, "head_curves",
               "training and validation log loss per epoch of each member's fold heads (best members first)")
    sec.text("Each fold head's validation loss is measured on the early-stopping split carved out of that fold's "
             "training part; the star marks the epoch whose weights were kept.")


def _section_sweep(data: _Run, sec: _Section, out_dir: Path) -> None:
    if data.trials is None:
        sec.text("This run has no sweep (no trials.sqlite).")
        return
    trials = data.trials
    n_fail = sum(t["status"] != "ok" for t in trials)
    meta = data.trials_meta
    objective = meta.get("objective") or {}
    how = (f"{objective['cv']}-fold CV" if objective.get("cv") else
           f"hold-out split {objective.get('validation_split', 'n/a')}") if objective else "n/a"
    sec.text(f"{len(trials)} trial(s) of max_evals {meta.get('max_evals', 'n/a')}, {n_fail} failed; objective: "
             f"{objective.get('loss', 'log loss')} on a {how} (seed {objective.get('random_state', 'n/a')}); "
             f"trials file {data.trials_path}.")
    if not trials:
        return
    sec.figure(plot_sweep_history(trials), out_dir, "sweep_history",
               "validation log loss per trial, in the order run, with the best so far")
    shown = varying_params(trials)
    if shown or len({tuple(t["backbones"]) for t in trials if t["status"] == "ok"}) > 1:
        log_params = log_scaled_params(meta.get("space")) if meta.get("space") else None
        sec.figure(plot_sweep_params(trials, shown, log_params), out_dir, "sweep_params",
                   "validation log loss against each searched hyperparameter and the backbone subset")
    ok = sorted((t for t in trials if t["status"] == "ok"), key=lambda t: (t["loss"], t["tid"]))
    sec.table(["rank", "trial", "val log loss", "best epoch", "backbones", *shown, "seconds"],
              [[k + 1, t["tid"], _fmt(t["loss"]), _fmt(t["best_epoch"], "d"), "+".join(t["backbones"]),
                *[_fmt(t["params"].get(p), ".4g") if isinstance(t["params"].get(p), float) else t["params"].get(p)
                  for p in shown], _fmt(t["duration_s"], ".1f")] for k, t in enumerate(ok)],
              limit=10, more="every trial is in trials.sqlite")
    failed = [t for t in trials if t["status"] != "ok"]
    if failed:
        sec.text("Failed trials:")
        sec.table(["trial", "backbones", "error"], [[t["tid"], "+".join(t["backbones"]), t.get("error") or ""]
                                                     for t in failed], limit=20)


def _section_errors(data: _Run, sec: _Section, out_dir: Path, top_n: int, threshold: float) -> Dict[str, Any]:
    if data.oof is None:
        sec.text("This run has no out-of-fold predictions (no oof.h5), so no error analysis.")
        return {}
    oof = data.oof
    probs, name, stored = chosen_oof_probabilities(data)
    from catdog_features.ensemble import log_loss

    labels = np.asarray(oof.labels, dtype=np.int64)
    ll = log_loss(probs, labels)
    if stored is not None and abs(ll - stored) > 1e-6 * max(1.0, abs(stored)):
        data.problems.append(f"recomputed OOF log loss of {name} is {ll:.6f}, ensemble.json says {stored:.6f}")
        sec.text(f"Warning: the recomputed OOF log loss of {name} ({ll:.6f}) differs from the stored {stored:.6f}.")
    paths = None
    source, labels_csv = data.train_source()
    if source:
        try:
            from catdog_features.features.datasets import load_dataset

            images = load_dataset(source, labels_csv=labels_csv or None)
            where = {str(i): p for i, p in zip(images.ids, images.paths)}
            paths = [where.get(str(i)) for i in oof.ids]
        except Exception as exc:  # data moved or deleted: the tables still work, the grid shows placeholders
            sec.text(f"Training images not found ({type(exc).__name__}: {exc}); the grid shows placeholders.")
    else:
        sec.text("The run does not record where its training images are; the grid shows placeholders.")
    sec.text(f"Out-of-fold predictions of {name} for {len(labels)} training images: log loss {ll:.5f}, "
             f"accuracy {np.mean(np.argmax(probs, axis=1) == labels):.2%}. Each image is predicted by fold models "
             "that did not see it, so a high loss means its label disagrees with what the other images taught.")
    classes = list(oof.class_names)
    sec.figure(plot_top_losses(oof.ids, paths, labels, probs, classes, top_n,
                               title=f"top {min(top_n, len(labels))} OOF losses of {name}"),
               out_dir, "top_losses", f"the {min(top_n, len(labels))} training images with the highest OOF loss")
    top = _rows(oof.ids, paths, labels, probs, classes, top_losses(probs, labels, top_n))
    path = write_rows_csv(out_dir / TOP_LOSSES_CSV, top, MISLABELED_COLUMNS + ("p_true",))
    sec.link(out_dir, path, f"the top {len(top)} losses with paths")
    suspects = likely_mislabeled(oof.ids, paths, labels, probs, classes, threshold)
    path = write_rows_csv(out_dir / MISLABELED_CSV, suspects, MISLABELED_COLUMNS)
    sec.text(f"{len(suspects)} image(s) where the OOF prediction disagrees with the label with confidence "
             f">= {threshold:g} (likely mislabeled, or showing both classes):")
    if suspects:
        sec.table(list(MISLABELED_COLUMNS),
                  [[r["id"], r["path"], r["label"], r["predicted"], f"{r['confidence']:.4f}", f"{r['loss']:.3f}"]
                   for r in suspects], limit=30, more=f"all in {MISLABELED_CSV}")
    sec.link(out_dir, path, "ids to inspect or exclude (id,path,label,predicted,confidence,loss)")
    return {"probs": probs, "name": name, "labels": labels, "classes": classes}


def _section_confusion(data: _Run, sec: _Section, out_dir: Path, chosen: Dict[str, Any]) -> None:
    if not chosen:
        sec.text("No out-of-fold predictions, so no confusion matrix.")
        return
    classes = chosen["classes"]
    cm = confusion_matrix(chosen["probs"], chosen["labels"], len(classes))
    acc = np.trace(cm) / max(1, cm.sum())
    sec.figure(plot_confusion_matrix(cm, classes, f"OOF confusion matrix of {chosen['name']} "
                                                  f"(n={cm.sum()}, accuracy {acc:.2%})"),
               out_dir, "confusion_matrix", "out-of-fold confusion matrix of the chosen ensemble")
    if len(classes) > 2:
        pairs = worst_confused_pairs(cm, classes, 15)
        if pairs:
            sec.text("Worst-confused class pairs (true class predicted as another):")
            sec.table(["true", "predicted as", "images", "share of the true class"],
                      [[p["true"], p["predicted"], p["count"], f"{p['share']:.1%}"] for p in pairs])
        else:
            sec.text("No confusions: every OOF prediction is right.")


def _section_failures(data: _Run, sec: _Section, out_dir: Path) -> None:
    extract = data.stages.get("extract") or {}
    rows = []
    for part in ("train", "test"):
        for path, reason in (extract.get(part) or {}).get("failed") or []:
            rows.append({"set": part, "path": str(path), "reason": str(reason)})
    if not extract and data.ensemble is not None:
        rows += [{"set": "test", "path": str(t[1]), "reason": str(t[2])} for t in data.ensemble.get("test_failed", [])]
        sec.text("(No extraction record in the manifest; test-set failures from ensemble.json only.)")
    elif not extract:
        sec.text("No extraction record in this run.")
        return
    path = write_rows_csv(out_dir / FAILURES_CSV, rows, ("set", "path", "reason"))
    if not rows:
        sec.text("Every image was read: no failure records.")
        return
    by_reason: Dict[str, int] = {}
    for r in rows:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    sec.text(f"{len(rows)} image(s) could not be used and were left out of the features "
             "(test images still get a submission row, with the training class prior): "
             + "; ".join(f"{reason}: {n}" for reason, n in sorted(by_reason.items(), key=lambda kv: -kv[1])) + ".")
    sec.table(["set", "file", "reason"], [[r["set"], r["path"], r["reason"]] for r in rows],
              more=f"all in {FAILURES_CSV}")
    sec.link(out_dir, path, "every failure record")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;height:auto}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
nav a{margin-right:1em}
"""


def write_report(run_dir, out_dir=None, top_n: int = 16, *, threshold: float = 0.9, max_curves: int = 4,
                 strict: bool = False) -> Path:
    """Write the HTML/Markdown report of a run folder, with its figures and tables.

    Parameters
    ----------
    run_dir : str or Path
        A run folder made by ``catdog-features run`` (or ``ensemble``); see
        :mod:`catdog_features.run.rundir`.
    out_dir : str or Path, optional
        Folder for the figures, CSVs, ``report.md`` and ``report.html``. Default:
        ``RUN_DIR/report/`` for the figures, CSVs and Markdown, and ``RUN_DIR/report.html``.
    top_n : int
        Number of highest-loss training images in the grid and ``top_losses.csv``.
    threshold : float
        Minimum confidence of a wrong OOF prediction for ``likely_mislabeled.csv``.
    max_curves : int
        Members (best first) whose fold heads' training curves are drawn.
    strict : bool
        Raise when a section fails instead of reporting the error in that section (and
        warning with :class:`ReportWarning`).

    Returns
    -------
    Path
        The HTML file.
    """
    t0 = time.perf_counter()
    top_n = int(top_n)
    if top_n < 1:
        raise ValueError(f"Invalid top_n. Received: top_n={top_n!r}; expected an integer >= 1.")
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"Invalid threshold. Received: threshold={threshold!r}; expected a number in (0, 1].")
    data = _load_run(run_dir)
    if out_dir is None:
        out_dir, html_path = data.run.root / REPORT, data.run.root / HTML_NAME
    else:
        out_dir = Path(out_dir).expanduser().absolute()
        html_path = out_dir / HTML_NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    # files of an earlier report: a section without its input now must not leave old ones behind
    # (only our own names: out_dir may be a folder holding other files)
    for name in (*(f"{n}.png" for n in FIGURE_NAMES), MISLABELED_CSV, TOP_LOSSES_CSV, FAILURES_CSV, COMPARISON_CSV):
        if (out_dir / name).is_file():
            (out_dir / name).unlink()

    chosen: Dict[str, Any] = {}
    builders = [
        ("summary", "Run summary", lambda s: _section_summary(data, s)),
        ("comparison", "Comparison: backbones, combinations, ensembles", lambda s: _section_comparison(data, s, out_dir)),
        ("sweep", "Sweep history", lambda s: _section_sweep(data, s, out_dir)),
        ("curves", "Head training curves", lambda s: _section_curves(data, s, out_dir, max_curves)),
        ("errors", "Error analysis: highest-loss training images", lambda s: chosen.update(_section_errors(data, s, out_dir, top_n, threshold))),
        ("confusion", "Confusion matrix", lambda s: _section_confusion(data, s, out_dir, chosen)),
        ("failures", "Extraction failures", lambda s: _section_failures(data, s, out_dir)),
    ]
    sections = []
    for key, title, build in builders:
        sec = _Section(key, title, prefix=Path(os.path.relpath(out_dir, html_path.parent)).as_posix())
        try:
            build(sec)
        except Exception as exc:
            if strict:
                raise
            msg = f"the {title.lower()} section could not be made: {type(exc).__name__}: {exc}"
            warnings.warn(msg, ReportWarning, stacklevel=2)
            sec.text(f"Error: {msg}")
        sections.append(sec)

    title = f"catdog-features report: {data.run.root.name}"
    nav = " ".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(f'<h2 id="{s.key}">{html.escape(s.title)}</h2>' + "".join(s.html) for s in sections)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{body}"
            f"<p><small>written by catdog_features.report in {time.perf_counter() - t0:.1f} s</small></p></body></html>\n")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = html_path.with_name(f".{html_path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(html_path)
    md = [f"# {title}\n"] + [f"## {s.title}\n\n" + "\n".join(s.md) for s in sections]
    (out_dir / MARKDOWN_NAME).write_text("\n".join(md), encoding="utf-8")
    return html_path
