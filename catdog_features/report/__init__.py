"""Reports of a run folder: comparison table, head curves, sweep history, error analysis.

* :mod:`.analysis`: per-row losses, top losses, likely mislabeled images, confusion,
  comparison rows (plain functions of arrays and recorded numbers);
* :mod:`.figures`: every figure (Matplotlib Agg, no pyplot);
* :mod:`.rundata`: what a run folder holds, read through each file's owner;
* :mod:`.sections` and :mod:`.page`: the sections and the HTML + Markdown page
  (:func:`write_report`). Nothing is refitted.
"""

from catdog_features.report.analysis import (
    COMPARISON_COLUMNS, MISLABELED_COLUMNS, backbone_facts, comparison_rows, confusion_matrix, likely_mislabeled,
    log_scaled_params, loss_rows, per_row_loss, top_losses, varying_params, worst_confused_pairs,
)
from catdog_features.report.figures import (
    figure_png, plot_confusion_matrix, plot_head_curves, plot_sweep_history, plot_sweep_params, plot_top_losses,
    set_log_scale,
)
from catdog_features.report.page import (
    COMPARISON_CSV, FAILURES_CSV, FIGURE_NAMES, HTML_NAME, MARKDOWN_NAME, MISLABELED_CSV, TOP_LOSSES_CSV,
    ReportWarning, write_report, write_rows_csv,
)
from catdog_features.report.rundata import RunData, chosen_oof_probabilities, load_run

__all__ = [
    "COMPARISON_COLUMNS", "COMPARISON_CSV", "FAILURES_CSV", "FIGURE_NAMES", "HTML_NAME", "MARKDOWN_NAME",
    "MISLABELED_COLUMNS", "MISLABELED_CSV", "ReportWarning", "RunData", "TOP_LOSSES_CSV", "backbone_facts",
    "chosen_oof_probabilities", "comparison_rows", "confusion_matrix", "figure_png", "likely_mislabeled", "load_run",
    "log_scaled_params", "loss_rows", "per_row_loss", "plot_confusion_matrix", "plot_head_curves", "plot_sweep_history",
    "plot_sweep_params", "plot_top_losses", "set_log_scale", "top_losses", "varying_params", "worst_confused_pairs",
    "write_report", "write_rows_csv",
]
