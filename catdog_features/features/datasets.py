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
:mod:`catdog_features.features.reader`, where unreadable files become failure records.
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
# Sub-folder names that mean "dataset split", not "class" (when train/ is one of them).
_SPLIT_NAMES = frozenset({"train", "test", "val", "valid", "validation"})


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
        ids = self.ids[index]
        kept = set(ids.tolist())
        return ImageSet(
            ids=ids,
            paths=tuple(self.paths[i] for i in index),
            labels=None if self.labels is None else self.labels[index],
            class_names=self.class_names,
            layout=self.layout,
            root=self.root,
            missing=tuple(m for m in self.missing if m in kept),
        )


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _list_images(folder: Path) -> list:
    # Every entry with an image name counts, whatever it is: a directory, a broken symlink or
    # a FIFO named x.jpg becomes a failure record with a reason when it is read, so
    # rows + failures always equals what the user sees in the folder.
    return [p for p in folder.iterdir() if _is_image(p)]


def _is_class_dir(d: Path) -> bool:
    return d.is_dir() and not d.name.startswith(".") and not _is_image(d) and any(_is_image(p) for p in d.iterdir())


def _sorted(ids, paths, labels):
    # The raw id and path break ties between ids with equal natural keys ("01" and "1",
    # "A" and "a"), so the order never depends on the order the file system lists files in.
    order = sorted(range(len(ids)), key=lambda i: (natural_key(ids[i]), ids[i], str(paths[i])))
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
    try:
        return _parse_labels_csv(csv_path)
    except UnicodeDecodeError as exc:
        line = csv_path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"labels file {str(csv_path)!r} line {line}: byte {exc.object[exc.start:exc.start + 1]!r} is not UTF-8; "
            "expected a UTF-8 text file (re-save it as UTF-8)."
        ) from None


def _check_id(image_id: str, csv_path: Path, lineno: int) -> None:
    """An id names a file inside the image folder: no separators, no '..', not absolute."""
    if image_id in (".", "..") or "/" in image_id or "\\" in image_id or "\x00" in image_id or os.path.isabs(image_id):
        raise ValueError(
            f"labels file {str(csv_path)!r} line {lineno}: id {image_id!r} is not a file name; expected an image "
            "id such as '000bec180eb18c7604dcecc8fe0dba07' naming a file inside the image folder."
        )


def _parse_labels_csv(csv_path: Path):
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"labels file {str(csv_path)!r} is empty; expected a header 'id,<class>'.")
        if len(header) != 2:
            # More columns is usually a one-column-per-class file such as
            # sample_submission.csv, whose probabilities must not be read as class names.
            raise ValueError(
                f"labels file {str(csv_path)!r} has header {header[:6]}{' ...' if len(header) > 6 else ''} "
                f"({len(header)} columns); expected two columns such as 'id,breed'."
            )
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(
                    f"labels file {str(csv_path)!r} line {lineno}: received {row}; expected 'id,<class>'."
                )
            _check_id(row[0].strip(), csv_path, lineno)
            rows.append((row[0].strip(), row[1].strip()))
    if not rows:
        raise ValueError(f"labels file {str(csv_path)!r} has no rows.")
    return [c.strip() for c in header], rows


def _from_labels_csv(csv_path: Path, image_dir: Path) -> ImageSet:
    header, rows = _read_labels_csv(csv_path)
    _check_unique([r[0] for r in rows], str(csv_path))
    by_stem, by_name = {}, {}
    if image_dir.is_dir():
        for p in _list_images(image_dir):
            by_stem.setdefault(p.stem, []).append(p)
            by_name[p.name] = p
    if header[0] in by_stem or header[0] in by_name:
        raise ValueError(
            f"labels file {str(csv_path)!r} seems to have no header: its first line {header} names "
            f"an image in {str(image_dir)!r}. Expected a header line such as 'id,breed' first."
        )
    found = {}
    for image_id, _ in rows:
        candidates = by_stem.get(image_id) or ([by_name[image_id]] if image_id in by_name else [])
        if len(candidates) > 1:
            names = sorted(p.name for p in candidates)
            raise ValueError(
                f"Duplicate image files for id {image_id!r} in {str(image_dir)!r}: {names}. "
                "Expected one file per id (e.g. not both 12.jpg and 12.png)."
            )
        if candidates:
            found[image_id] = candidates[0]
    if not found:
        raise FileNotFoundError(
            f"None of the {len(rows)} ids in {str(csv_path)!r} has an image in {str(image_dir)!r} "
            f"(e.g. {rows[0][0]!r}). Expected files named <id>.jpg (or another image extension) there."
        )
    class_names = tuple(sorted({cls for _, cls in rows}))
    index = {c: i for i, c in enumerate(class_names)}
    ids, paths, labels, missing = [], [], [], []
    for image_id, cls in rows:
        path = found.get(image_id)
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
        If the folder (or ``labels_csv``) does not exist, or no id of the labels.csv has
        an image file.
    ValueError
        If the folder has no images; mixes layouts (Kaggle names with other names, or
        image files with class sub-folders); holds dataset splits (``train/`` with
        ``test/`` or ``val/``) instead of classes; has a single class folder; has
        duplicate ids; or its labels.csv does not have exactly two columns ``id,<class>``.

    Notes
    -----
    labels.csv ids are matched to file stems (``abc`` -> ``abc.jpg``) or to full file
    names (``abc.jpg``). An id without a file stays in the set (with the path it would
    have) and is listed in ``ImageSet.missing``; the reader then records it as a failure.
    """
    if isinstance(source, ImageSet):
        return source
    if not isinstance(source, (str, os.PathLike)):
        try:
            paths = [Path(p).absolute() for p in source]
        except TypeError:
            raise TypeError(
                f"Invalid source. Received: source={source!r}; expected a folder, a list of image "
                "paths or an ImageSet."
            ) from None
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
    class_dirs = [d for d in sorted(root.iterdir()) if _is_class_dir(d)]
    if files and class_dirs:
        raise ValueError(
            f"Folder {str(root)!r} has both image files (e.g. {sorted(p.name for p in files)[:3]}) and "
            f"sub-folders with images ({[d.name for d in class_dirs][:5]}). Expected either images "
            "directly in it (Kaggle-named or an unlabeled test folder) or one sub-folder per class."
        )
    if files:
        return _from_paths(files, str(root))
    split_names = {d.name.lower() for d in class_dirs} & _SPLIT_NAMES
    if "train" in split_names and len(split_names) > 1:
        raise ValueError(
            f"Folder {str(root)!r} holds dataset splits {sorted(d.name for d in class_dirs)}, not classes. "
            f"Expected the training folder itself, e.g. {str(root / 'train')!r}."
        )
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
