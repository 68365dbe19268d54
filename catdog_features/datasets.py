"""Find images and labels on disk.

Three labeled layouts are recognised, plus unlabeled folders:

* **Kaggle Dogs vs Cats** (flat): ``train/cat.12.jpg``, ``train/dog.7.jpg``. Labels are
  cat=0, dog=1 so that predicted probabilities are Kaggle's "probability of dog".
* **folder-per-class**: ``train/<class>/<file>``; classes sorted by name.
* **labels.csv** (Kaggle Dog Breed): ``labels.csv`` with ``id,<class>`` rows and
  ``train/<id>.jpg``; classes sorted by name.
* **unlabeled** (a test folder): ``test/123.jpg`` -> id ``"123"``.

Ids are sorted "naturally" (``2`` before ``10``), so ordering is what a user expects and
stable across runs. Only the file *list* is built here; decoding happens in
:mod:`catdog_features.reader`, where unreadable files become failure records.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
KAGGLE_CLASSES = ("cat", "dog")
_KAGGLE_NAME = re.compile(r"^(cat|dog)\.(\d+)$", re.IGNORECASE)
_DIGITS = re.compile(r"(\d+)")

LAYOUTS = ("kaggle", "folder-per-class", "labels-csv", "unlabeled", "list")


def natural_key(text: str):
    """Sort key that orders embedded numbers numerically: ``"2" < "10" < "cat.3"``."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part.lower())
        for part in _DIGITS.split(text)
        if part != ""
    )


@dataclass(frozen=True)
class ImageSet:
    """A list of images with optional labels, in a stable order.

    Attributes
    ----------
    ids : ndarray of str
        One id per image (Kaggle: ``"cat.12"`` for train, ``"123"`` for test).
    paths : tuple of str
        Absolute path of each image, aligned with ``ids``.
    labels : ndarray of int or None
        Class index per image, ``None`` for unlabeled sets.
    class_names : tuple of str
        Names of the classes, index = label value. Empty for unlabeled sets.
    layout : str
        Which layout was detected (one of ``LAYOUTS``).
    root : str or None
        The folder the set was loaded from.
    """

    ids: np.ndarray
    paths: tuple
    labels: Optional[np.ndarray]
    class_names: tuple = ()
    layout: str = "unlabeled"
    root: Optional[str] = None
    missing: tuple = field(default=())  # labels.csv ids whose file does not exist

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def is_labeled(self) -> bool:
        return self.labels is not None

    def subset(self, index) -> "ImageSet":
        """A new ImageSet with the rows selected by ``index`` (mask or positions)."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return ImageSet(
            ids=self.ids[index],
            paths=tuple(self.paths[i] for i in index),
            labels=None if self.labels is None else self.labels[index],
            class_names=self.class_names,
            layout=self.layout,
            root=self.root,
        )


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _list_images(folder: Path) -> list:
    return [p for p in folder.iterdir() if p.is_file() and _is_image(p)]


def _sorted(ids, paths, labels):
    order = sorted(range(len(ids)), key=lambda i: natural_key(ids[i]))
    ids = np.array([ids[i] for i in order], dtype=str)
    paths = tuple(str(paths[i]) for i in order)
    labels = None if labels is None else np.array([labels[i] for i in order], dtype=np.int64)
    return ids, paths, labels


def _check_unique(ids, where):
    seen, dupes = set(), []
    for i in ids:
        if i in seen:
            dupes.append(i)
        seen.add(i)
    if dupes:
        raise ValueError(
            f"Duplicate image ids in {where}: {sorted(set(dupes))[:5]}. "
            "Expected one file per id (e.g. not both 12.jpg and 12.png)."
        )


def _from_paths(paths: Sequence[Path], root, layout_hint=None) -> ImageSet:
    """Kaggle flat names if every file matches ``cat.N``/``dog.N``, else unlabeled."""
    stems = [p.stem for p in paths]
    matches = [_KAGGLE_NAME.match(s) for s in stems]
    n_match = sum(m is not None for m in matches)
    if paths and n_match == len(paths):
        labels = [KAGGLE_CLASSES.index(m.group(1).lower()) for m in matches]
        ids = [s.lower() for s in stems]
        _check_unique(ids, root or "the given paths")
        ids, spaths, labels = _sorted(ids, paths, labels)
        return ImageSet(ids, spaths, labels, KAGGLE_CLASSES, "kaggle", root)
    if n_match and layout_hint != "list":
        bad = [p.name for p, m in zip(paths, matches) if m is None][:5]
        raise ValueError(
            f"Folder {root!r} mixes Kaggle-named images (cat.N.jpg / dog.N.jpg) with other "
            f"files, e.g. {bad}. Expected either all files named cat.N/dog.N (labeled) or "
            "none (an unlabeled test folder)."
        )
    _check_unique(stems, root or "the given paths")
    ids, spaths, _ = _sorted(stems, paths, None)
    return ImageSet(ids, spaths, None, (), layout_hint or "unlabeled", root)


def _read_labels_csv(csv_path: Path):
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"labels file {str(csv_path)!r} is empty; expected a header 'id,<class>'.")
        if len(header) < 2:
            raise ValueError(
                f"labels file {str(csv_path)!r} has header {header}; expected two columns such as 'id,breed'."
            )
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(
                    f"labels file {str(csv_path)!r} line {lineno}: received {row}; expected 'id,<class>'."
                )
            rows.append((row[0].strip(), row[1].strip()))
    if not rows:
        raise ValueError(f"labels file {str(csv_path)!r} has no rows.")
    return rows


def _from_labels_csv(csv_path: Path, image_dir: Path) -> ImageSet:
    rows = _read_labels_csv(csv_path)
    _check_unique([r[0] for r in rows], str(csv_path))
    by_stem = {}
    if image_dir.is_dir():
        for p in _list_images(image_dir):
            by_stem.setdefault(p.stem, p)
    class_names = tuple(sorted({cls for _, cls in rows}))
    index = {c: i for i, c in enumerate(class_names)}
    ids, paths, labels, missing = [], [], [], []
    for image_id, cls in rows:
        path = by_stem.get(image_id)
        if path is None:
            # Keep the row: the reader turns it into a "file not found" failure record,
            # so rows + failures == inputs still holds and nothing is silently dropped.
            path = image_dir / f"{image_id}.jpg"
            missing.append(image_id)
        ids.append(image_id)
        paths.append(path)
        labels.append(index[cls])
    ids, spaths, labels = _sorted(ids, paths, labels)
    return ImageSet(ids, spaths, labels, class_names, "labels-csv", str(image_dir), tuple(missing))


def _from_class_folders(root: Path, class_dirs) -> ImageSet:
    class_names = tuple(sorted(d.name for d in class_dirs))
    ids, paths, labels = [], [], []
    for label, name in enumerate(class_names):
        for p in _list_images(root / name):
            ids.append(f"{name}/{p.stem}")
            paths.append(p)
            labels.append(label)
    _check_unique(ids, str(root))
    ids, spaths, labels = _sorted(ids, paths, labels)
    return ImageSet(ids, spaths, labels, class_names, "folder-per-class", str(root))


def _find_labels_csv(root: Path) -> Optional[Path]:
    for candidate in (root / "labels.csv", root.parent / "labels.csv"):
        if candidate.is_file():
            return candidate
    return None


def load_dataset(
    source: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], ImageSet],
    labels_csv: Union[str, os.PathLike, None] = None,
) -> ImageSet:
    """Find the images (and labels, if any) of a dataset.

    Parameters
    ----------
    source : str, path, list of paths or ImageSet
        A folder in one of the supported layouts, or an explicit list of image files
        (labeled when every file is named ``cat.N``/``dog.N``). An ``ImageSet`` is
        returned unchanged.
    labels_csv : str or path, optional
        A ``labels.csv`` (``id,<class>``) for ``source``. When omitted, a ``labels.csv``
        in ``source`` (with images in ``source/train``) or next to a folder named
        ``train`` is used if present.

    Returns
    -------
    ImageSet
        ``ids``, ``paths``, ``labels`` (None when unlabeled), ``class_names``, ``layout``.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist.
    ValueError
        If the folder has no images, or mixes layouts.
    """
    if isinstance(source, ImageSet):
        return source
    if not isinstance(source, (str, os.PathLike)):
        paths = [Path(p).absolute() for p in source]
        if not paths:
            raise ValueError("Received an empty list of image paths; expected at least one image.")
        return _from_paths(paths, None, layout_hint="list")

    root = Path(source).expanduser().absolute()
    if not root.exists():
        raise FileNotFoundError(f"Data folder not found. Received: {str(source)!r}; expected an existing folder of images.")
    if not root.is_dir():
        raise ValueError(f"Received: {str(source)!r}, which is a file; expected a folder of images.")

    csv_path = Path(labels_csv).expanduser().absolute() if labels_csv else None
    if csv_path is not None and not csv_path.is_file():
        raise FileNotFoundError(f"labels_csv not found. Received: {str(labels_csv)!r}.")
    if csv_path is None:
        found = _find_labels_csv(root)
        # A labels.csv next to a *test* folder belongs to the train folder; only use a
        # parent's labels.csv when this folder is the one holding training images.
        if found is not None and (found.parent == root or root.name.lower() == "train"):
            csv_path = found
    if csv_path is not None:
        image_dir = root / "train" if (root / "train").is_dir() and csv_path.parent == root else root
        return _from_labels_csv(csv_path, image_dir)

    files = _list_images(root)
    class_dirs = [
        d for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".") and any(_is_image(p) for p in d.iterdir())
    ]
    if files:
        return _from_paths(files, str(root))
    if class_dirs:
        if len(class_dirs) < 2:
            raise ValueError(
                f"Folder {str(root)!r} has one class folder ({class_dirs[0].name!r}); "
                "expected at least two class folders for a folder-per-class layout."
            )
        return _from_class_folders(root, class_dirs)
    raise ValueError(
        f"No images found in {str(root)!r}. Expected image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
        "directly in it, in one sub-folder per class, or a labels.csv with a train/ folder."
    )
