"""The report page: sections rendered as one HTML file and the same content as Markdown.

:func:`write_report` reads what a run folder holds (:mod:`.rundata`; its layout is
documented in :mod:`catdog_features.run.rundir`) and writes, by default::

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

Nothing is refitted or recomputed: the chosen ensemble's OOF probabilities are the ones
stored in ``oof.h5`` when it was fitted, the per-backbone facts the ones the pipeline
recorded at extraction time. A section whose input is missing says so and the rest of the
report is still written; a number that was never recorded is shown as "n/a", never guessed.
"""

from __future__ import annotations

import base64
import html
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from catdog_features._io import write_bytes, write_csv, write_text
from catdog_features.report.figures import figure_png
from catdog_features.run.rundir import REPORT, REPORT_HTML

#: File name of the HTML page, written into the run folder (or ``out_dir`` when given).
HTML_NAME = REPORT_HTML
MARKDOWN_NAME = "report.md"
MISLABELED_CSV = "likely_mislabeled.csv"
TOP_LOSSES_CSV = "top_losses.csv"
FAILURES_CSV = "failures.csv"
COMPARISON_CSV = "comparison.csv"
#: The figures a full report writes (``<name>.png``); a section without its input writes none.
FIGURE_NAMES = ("sweep_history", "sweep_params", "head_curves", "top_losses", "confusion_matrix")
#: Rows of long tables shown in the HTML/Markdown (the CSVs hold all of them).
MAX_TABLE_ROWS = 100


class ReportWarning(UserWarning):
    """A report section could not be made; the rest of the report was still written."""


def write_rows_csv(path, rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> Path:
    """Write dict rows as CSV with the given columns (floats with 6 significant digits)."""
    return write_csv(path, columns, ([f"{row[c]:.6g}" if isinstance(row[c], float) else row[c] for c in columns]
                                     for row in rows))


def fmt(value, spec: str = ".5f") -> str:
    """A number for a table cell; "n/a" for one never recorded."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if spec == ".5f" and 0 < abs(value) < 1e-4:  # a loss this small would print as 0.00000
        return f"{value:.2e}"
    return format(value, spec)


def size(n: Optional[int]) -> str:
    """Bytes as B / KB / MB / GB; "n/a" when unknown."""
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "n/a"  # pragma: no cover


@dataclass
class Section:
    """One section of the page, built as HTML and Markdown side by side."""

    key: str
    title: str
    out_dir: Path
    prefix: str = REPORT  # where out_dir is, relative to the HTML file
    html: List[str] = field(default_factory=list)
    md: List[str] = field(default_factory=list)

    def text(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md.append(text + "\n")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], limit: int = MAX_TABLE_ROWS,
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

    def figure(self, fig, name: str, alt: str) -> Path:
        png = figure_png(fig)
        path = write_bytes(self.out_dir / f"{name}.png", png)
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        self.html.append(f'<figure><img src="{uri}" alt="{html.escape(alt)}"><figcaption>'
                         f'{html.escape(alt)} (<a href="{html.escape(self._href(name + ".png"))}">{name}.png</a>)'
                         "</figcaption></figure>")
        self.md.append(f"![{alt}]({name}.png)\n")
        return path

    def csv(self, name: str, rows: Sequence[Dict[str, Any]], columns: Sequence[str], text: Optional[str]) -> Path:
        """Write ``rows`` to ``out_dir/name`` and, when ``text`` is given, link it."""
        path = write_rows_csv(self.out_dir / name, rows, columns)
        if text is not None:
            self.link(path, text)
        return path

    def _href(self, name: str) -> str:
        return name if self.prefix in ("", ".") else f"{self.prefix}/{name}"

    def link(self, path: Path, text: str) -> None:
        self.html.append(f'<p><a href="{html.escape(self._href(path.name))}">'
                         f"{html.escape(path.name)}</a>: {html.escape(text)}</p>")
        self.md.append(f"[{path.name}]({path.name}): {text}\n")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;height:auto}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
nav a{margin-right:1em}
"""


def _check_arguments(top_n, threshold) -> int:
    top_n = int(top_n)
    if top_n < 1:
        raise ValueError(f"Invalid top_n. Received: top_n={top_n!r}; expected an integer >= 1.")
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"Invalid threshold. Received: threshold={threshold!r}; expected a number in (0, 1].")
    return top_n


def _build_sections(data, out_dir: Path, prefix: str, builders, strict: bool) -> List[Section]:
    sections = []
    for key, title, build in builders:
        sec = Section(key, title, out_dir, prefix=prefix)
        try:
            build(sec)
        except Exception as exc:
            if strict:
                raise
            msg = f"the {title.lower()} section could not be made: {type(exc).__name__}: {exc}"
            warnings.warn(msg, ReportWarning, stacklevel=3)
            sec.text(f"Error: {msg}")
        sections.append(sec)
    return sections


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
    from catdog_features.report import sections as s
    from catdog_features.report.rundata import load_run

    t0 = time.perf_counter()
    top_n = _check_arguments(top_n, threshold)
    data = load_run(run_dir)
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
        ("summary", "Run summary", lambda sec: s.summary(data, sec)),
        ("comparison", "Comparison: backbones, combinations, ensembles", lambda sec: s.comparison(data, sec)),
        ("sweep", "Sweep history", lambda sec: s.sweep(data, sec)),
        ("curves", "Head training curves", lambda sec: s.curves(data, sec, max_curves)),
        ("errors", "Error analysis: highest-loss training images",
         lambda sec: chosen.update(s.errors(data, sec, top_n, threshold))),
        ("confusion", "Confusion matrix", lambda sec: s.confusion(sec, chosen)),
        ("failures", "Extraction failures", lambda sec: s.failures(data, sec)),
    ]
    prefix = Path(os.path.relpath(out_dir, html_path.parent)).as_posix()
    sections = _build_sections(data, out_dir, prefix, builders, strict)
    title = f"catdog-features report: {data.run.root.name}"
    nav = " ".join(f'<a href="#{sec.key}">{html.escape(sec.title)}</a>' for sec in sections)
    body = "".join(f'<h2 id="{sec.key}">{html.escape(sec.title)}</h2>' + "".join(sec.html) for sec in sections)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{body}"
            f"<p><small>written by catdog_features.report in {time.perf_counter() - t0:.1f} s</small></p></body></html>\n")
    write_text(html_path, page)
    write_text(out_dir / MARKDOWN_NAME, "\n".join([f"# {title}\n"] + [f"## {sec.title}\n\n" + "\n".join(sec.md)
                                                                     for sec in sections]))
    return html_path
