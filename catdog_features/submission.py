"""Kaggle submission files, written atomically and checked against the expected ids.

Two formats:

* **binary** (Kaggle Dogs vs Cats): ``id,label`` where ``label`` is the probability of
  class 1 (``dog``), one row per test image, ids in numeric order (``1, 2, ..., 10``).
* **multi-class** (Kaggle Dog Breed): ``id,<class columns>``, each row summing to 1, the
  columns in the order of a ``sample_submission.csv`` (or sorted class names without one).

With a sample submission the file has exactly its ids (in its row order) and its columns;
anything else is a :class:`SubmissionMismatchError` that lists the missing/extra ids and
classes. Images that could not be read still get a row (the ``prior``, e.g. the training
class frequencies) and a warning naming them, because Kaggle rejects a file with missing ids.

Files are written by the package's one atomic writer (:func:`catdog_features._io.write_csv`:
temporary file, fsync, rename; the usual ``0644 & ~umask`` mode), as are the plain
probability tables of ``catdog-features predict``.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from catdog_features._io import write_csv
from catdog_features.features.datasets import natural_key

#: Column name of the binary format (Kaggle Dogs vs Cats).
BINARY_COLUMN = "label"
#: How many ids/classes an error or warning message lists before "... (N in all)".
_SHOW = 5


class SubmissionMismatchError(ValueError):
    """The predictions do not cover exactly the ids/classes of the sample submission."""


@dataclass(frozen=True)
class SampleSubmission:
    """What a ``sample_submission.csv`` prescribes: the id header, the ids and the columns."""

    id_column: str
    ids: Tuple[str, ...]
    columns: Tuple[str, ...]

    @property
    def is_binary(self) -> bool:
        return self.columns == (BINARY_COLUMN,)


@dataclass(frozen=True)
class SubmissionInfo:
    """What :func:`write_submission` wrote."""

    path: Path
    n_rows: int
    columns: Tuple[str, ...]
    format: str  # "binary" | "multiclass"
    filled_ids: Tuple[str, ...]  # ids that got the prior because their image failed


def read_sample_submission(path) -> SampleSubmission:
    """Read the ids and column order of a Kaggle ``sample_submission.csv``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample submission not found. Received: {str(path)!r}.")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"sample submission {str(path)!r} is empty; expected a header 'id,<columns>'.") from None
        if len(header) < 2:
            raise ValueError(
                f"sample submission {str(path)!r} has header {header}; expected 'id,label' or 'id,<class>,...'."
            )
        ids = [row[0].strip() for row in reader if row and row[0].strip()]
    dupes = _duplicates(ids)
    if dupes:
        raise ValueError(f"sample submission {str(path)!r} repeats ids: {_few(dupes)}.")
    return SampleSubmission(header[0], tuple(ids), tuple(header[1:]))


def _duplicates(items):
    seen, dupes = set(), []
    for item in items:
        if item in seen:
            dupes.append(item)
        seen.add(item)
    return sorted(set(dupes), key=natural_key)


def _few(items) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:_SHOW])
    more = f", ... ({len(items)} in all)" if len(items) > _SHOW else f" ({len(items)})"
    return f"[{shown}]{more}"


def _differences(*labelled) -> str:
    """``"label: [a, b] (2); label2: ..."`` for the non-empty lists of ``(label, items)`` pairs."""
    return "; ".join(f"{label}: {_few(items)}" for label, items in labelled if items)


def _fmt(value: float, float_format: str) -> str:
    return float_format % value


def _format_row(image_id: str, values, float_format: str) -> list:
    return [image_id, *(_fmt(float(v), float_format) for v in values)]


def _as_proba(probs, n_rows: int, n_classes: int) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1 and n_classes == 2:
        probs = np.column_stack([1.0 - probs, probs])
    if probs.shape != (n_rows, n_classes):
        raise ValueError(
            f"Received probabilities of shape {probs.shape}; expected ({n_rows}, {n_classes}) "
            "(one row per id, one column per class)."
        )
    if not np.all(np.isfinite(probs)):
        raise ValueError("Received probabilities with NaN or inf values; expected finite numbers in [0, 1].")
    return probs


def write_submission(
    path,
    ids: Sequence[str],
    probs,
    class_names: Sequence[str],
    *,
    sample_submission=None,
    failed_ids: Sequence[str] = (),
    prior=None,
    clip: Optional[float] = None,
    float_format: str = "%.6g",
    allow_missing_classes: bool = False,
) -> SubmissionInfo:
    """Write a Kaggle submission CSV atomically.

    Parameters
    ----------
    path : path
        Output CSV.
    ids : sequence of str
        Test ids with predictions (file stems, e.g. ``"123"``).
    probs : array (n, n_classes), or (n,) for the binary probability of class 1
        Predicted probabilities, rows aligned with ``ids``.
    class_names : sequence of str
        Class names, index = column of ``probs``.
    sample_submission : path or SampleSubmission, optional
        The file's ids (row order) and columns must then match it exactly.
    failed_ids : sequence of str
        Test ids whose image could not be read; they get the ``prior`` and a warning.
    prior : array (n_classes,), optional
        Probabilities for ``failed_ids`` (training class frequencies); uniform if omitted.
    clip : float, optional
        Clip probabilities to ``[clip, 1 - clip]`` (multi-class rows are renormalised).
    float_format : str
        %-format of the probabilities.
    allow_missing_classes : bool
        Multi-class only: a sample column the model never saw gets probability 0 (before
        clipping) instead of an error, for training sets that lack some classes.

    Returns
    -------
    SubmissionInfo

    Raises
    ------
    SubmissionMismatchError
        When the ids or classes differ from the sample submission's.
    """
    class_names = tuple(str(c) for c in class_names)
    ids = [str(i) for i in ids]
    if len(class_names) < 2:
        raise ValueError(f"Received class_names={class_names!r}; expected at least two classes.")
    probs = _as_proba(probs, len(ids), len(class_names))
    ids, probs, failed_ids = _with_failed_rows(ids, probs, failed_ids, prior)
    sample = sample_submission
    if sample is not None and not isinstance(sample, SampleSubmission):
        sample = read_sample_submission(sample)
    binary = len(class_names) == 2 and (sample is None or sample.is_binary)
    id_column = sample.id_column if sample is not None else "id"
    columns, values = _columns_and_values(probs, class_names, sample, binary, allow_missing_classes)
    if clip is not None:
        from catdog_features.ensemble import clip_probabilities

        values = clip_probabilities(values[:, 0], clip)[:, None] if binary else clip_probabilities(values, clip)
    order = _row_order(ids, sample)
    rows = (_format_row(ids[k], values[k], float_format) for k in order)
    write_csv(path, (id_column, *columns), rows)
    return SubmissionInfo(
        path=Path(path),
        n_rows=len(order),
        columns=(id_column, *columns),
        format="binary" if binary else "multiclass",
        filled_ids=tuple(failed_ids),
    )


def _with_failed_rows(ids, probs, failed_ids, prior):
    """Append the ``prior`` as the row of every unreadable test image (with a warning naming them)."""
    known = set(ids)
    failed_ids = [str(i) for i in failed_ids if str(i) not in known]
    dupes = _duplicates(ids + failed_ids)
    if dupes:
        raise ValueError(f"Received duplicate test ids: {_few(dupes)}; expected one prediction per id.")
    if not failed_ids:
        return ids, probs, failed_ids
    n_classes = probs.shape[1]
    prior = np.full(n_classes, 1.0 / n_classes) if prior is None else np.asarray(prior, dtype=np.float64)
    if prior.shape != (n_classes,):
        raise ValueError(f"Received prior of shape {prior.shape}; expected ({n_classes},).")
    warnings.warn(
        f"{len(failed_ids)} test image(s) could not be read and get the prior {np.round(prior, 4).tolist()} "
        f"in the submission: {_few(sorted(failed_ids, key=natural_key))}",
        UserWarning,
        stacklevel=3,
    )
    return ids + failed_ids, np.vstack([probs, np.tile(prior, (len(failed_ids), 1))]), failed_ids


def _columns_and_values(probs, class_names, sample, binary: bool, allow_missing_classes: bool):
    """The file's probability columns and their values, one row per id (rows sum to 1)."""
    if binary:
        return (BINARY_COLUMN,), probs[:, 1:2] / probs.sum(axis=1, keepdims=True)
    columns = sample.columns if sample is not None else class_names
    extra_classes = [c for c in class_names if c not in columns]
    missing_classes = [c for c in columns if c not in class_names]
    if extra_classes or (missing_classes and not allow_missing_classes):
        raise SubmissionMismatchError(
            "Class columns differ from the sample submission: "
            + _differences(
                ("missing from the model (in the sample only)", missing_classes),
                ("extra (model classes not in the sample)", extra_classes),
            )
            + ". Expected the sample's columns to be exactly the training classes"
            + (" (or pass allow_missing_classes=True / --allow-missing-classes)." if missing_classes and not extra_classes else ".")
        )
    index = {c: i for i, c in enumerate(class_names)}
    values = np.zeros((len(probs), len(columns)))
    for j, c in enumerate(columns):
        if c in index:
            values[:, j] = probs[:, index[c]]
    return columns, values / values.sum(axis=1, keepdims=True)


def _row_order(ids, sample) -> list:
    """Row indices in the file's order: the sample's ids (checked), else ids in numeric order."""
    if sample is None:
        return sorted(range(len(ids)), key=lambda k: natural_key(ids[k]))
    row_of = {image_id: k for k, image_id in enumerate(ids)}
    sample_ids = set(sample.ids)
    missing_ids = [i for i in sample.ids if i not in row_of]
    extra_ids = [i for i in ids if i not in sample_ids]
    if missing_ids or extra_ids:
        raise SubmissionMismatchError(
            "Test ids differ from the sample submission: "
            + _differences(
                ("missing (in the sample, no prediction)", missing_ids),
                ("extra (predicted, not in the sample)", extra_ids),
            )
            + ". Expected predictions for exactly the sample's ids; check the test folder."
        )
    return [row_of[i] for i in sample.ids]


def write_probabilities(path, ids: Sequence[str], probs, class_names: Sequence[str], float_format: str = "%.9g") -> Path:
    """Write a plain probability table ``id,<class_names...>`` (rows in the given order), atomically."""
    class_names = tuple(str(c) for c in class_names)
    ids = [str(i) for i in ids]
    probs = _as_proba(probs, len(ids), len(class_names))
    rows = (_format_row(i, p, float_format) for i, p in zip(ids, probs))
    return write_csv(path, ("id", *class_names), rows)


def read_probabilities(path) -> Tuple[np.ndarray, np.ndarray, Tuple[str, ...]]:
    """Read a table written by :func:`write_probabilities`: ``(ids, probs, class_names)``."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        ids, rows = [], []
        for row in reader:
            if row:
                ids.append(row[0])
                rows.append([float(v) for v in row[1:]])
    probs = np.asarray(rows, dtype=np.float64).reshape(len(ids), len(header) - 1)
    return np.asarray(ids, dtype=str), probs, tuple(header[1:])
