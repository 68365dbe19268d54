"""The report's figures, drawn on Matplotlib's Agg canvas directly.

No pyplot, no GUI backend, no change to the global backend: works on headless machines
and leaves a notebook's inline backend alone. Each function takes plain arrays / trial
dicts and returns a :class:`matplotlib.figure.Figure` that Jupyter shows inline as PNG
(:func:`figure_png` gives its bytes). Log-scaled axes always carry at least two labelled
ticks (1-2-5 or 1..9 steps inside a decade), so a short range such as lr in [0.003, 0.03]
stays readable.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any, Dict, Optional, Sequence

import numpy as np

from catdog_features.report.analysis import loss_rows, top_losses, varying_params

#: Losses below this are drawn at this value on log-scaled sweep plots.
PLOT_FLOOR = 1e-5
_DPI = 100
#: Ticks inside a decade tried in turn until a log axis shows at least two labels.
_LOG_SUBS = ((1.0,), (1.0, 2.0, 5.0), tuple(float(k) for k in range(1, 10)))


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
    return len(v) > 1 and v.min() > 0 and v.max() / max(v.min(), PLOT_FLOOR) >= 20


def _log_ticks(low: float, high: float, subs) -> list:
    ticks = []
    for exp in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        ticks += [s * 10.0 ** exp for s in subs if low <= s * 10.0 ** exp <= high]
    return ticks


def set_log_scale(ax, which: str, values) -> None:
    """Log scale on ``ax``'s ``which`` ("x" or "y") axis with at least two labelled ticks over ``values``."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], dtype=np.float64)
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    if len(v) == 0:
        return
    low, high = float(v.min()), float(v.max())
    pad = (high / low) ** 0.05 if high > low else 1.5  # matplotlib's margins, roughly
    low, high = low / pad, high * pad
    ticks = next((t for t in (_log_ticks(low, high, s) for s in _LOG_SUBS) if len(t) >= 2), None)
    if ticks is None:  # a range narrower than one 1..9 step: the two ends
        ticks = [float(f"{low:.2g}"), float(f"{high:.2g}")]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:.3g}"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())
    (ax.set_xlim if which == "x" else ax.set_ylim)(low, high)


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
    rows = loss_rows(ids, paths, labels, probs, class_names, index)
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
            set_log_scale(ax, "y", values)
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
    shown = (lambda v: max(v, PLOT_FLOOR)) if log else (lambda v: v)
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
        set_log_scale(ax, "y", [shown(v) for v in losses])
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (in the order run)")
    ax.set_ylabel("validation log loss" + (f" (< {PLOT_FLOOR:g} drawn at {PLOT_FLOOR:g})" if log and min(losses) < PLOT_FLOOR else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="backbones", title_fontsize=7)
    ax.set_title(title or f"sweep history: {len(trials)} trials ({len(failed)} failed)", fontsize=10)
    return fig


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
    y = np.array([max(v, PLOT_FLOOR) if log else v for v in losses])
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
        log_x = False
        if numeric:
            x = np.array(raw, dtype=np.float64)
            wide = x.min() > 0 and x.max() / x.min() >= 100
            log_x = x.min() > 0 and (key in log_params if log_params is not None else wide)
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
        if log_x:
            set_log_scale(ax, "x", x)
        if log:
            set_log_scale(ax, "y", y)
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
