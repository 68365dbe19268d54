"""Generated image datasets for the demo, the tests and the benchmarks (no download needed).

Classes are visually different on purpose (different colours, shapes and textures), so
even a randomly initialised backbone gives features a head can separate: the pipeline can
be checked end to end without ImageNet weights.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

LAYOUTS = ("kaggle", "folders", "labels-csv")

# per class: (background rgb, foreground rgb, shape)
_STYLES = (
    ((230, 200, 160), (120, 60, 20), "stripes"),
    ((40, 70, 140), (250, 250, 90), "circles"),
    ((30, 130, 60), (250, 120, 200), "squares"),
    ((200, 200, 200), (20, 20, 20), "checker"),
    ((120, 20, 120), (90, 230, 230), "diagonal"),
)


def make_image(label: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One RGB image of class ``label`` with random jitter (position, colour, scale)."""
    bg, fg, shape = _STYLES[label % len(_STYLES)]
    jitter = lambda c: tuple(int(np.clip(v + rng.integers(-25, 26), 0, 255)) for v in c)  # noqa: E731
    w = int(size * rng.uniform(0.8, 1.25))
    h = int(size * rng.uniform(0.8, 1.25))
    img = Image.new("RGB", (w, h), jitter(bg))
    draw = ImageDraw.Draw(img)
    step = max(4, int(min(w, h) / rng.uniform(3, 6)))
    off = int(rng.integers(0, step))
    if shape == "stripes":
        for y in range(off, h, step):
            draw.rectangle([0, y, w, y + step // 2], fill=jitter(fg))
    elif shape == "circles":
        for _ in range(int(rng.integers(3, 7))):
            cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(step // 2, step + 2)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=jitter(fg))
    elif shape == "squares":
        for _ in range(int(rng.integers(3, 7))):
            x, y = rng.integers(0, w), rng.integers(0, h)
            draw.rectangle([x, y, x + step, y + step], fill=jitter(fg))
    elif shape == "checker":
        for y in range(0, h, step):
            for x in range((y // step % 2) * step, w, 2 * step):
                draw.rectangle([x, y, x + step - 1, y + step - 1], fill=jitter(fg))
    else:
        for k in range(-h, w, step):
            draw.line([k + off, 0, k + off + h, h], fill=jitter(fg), width=max(2, step // 3))
    noise = rng.integers(-12, 13, size=(h, w, 3))
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def make_dataset(
    root,
    n_per_class: int = 20,
    n_test: int = 10,
    layout: str = "kaggle",
    class_names: Sequence[str] = ("cat", "dog"),
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a small labeled train set (and an unlabeled test set) under ``root``.

    Parameters
    ----------
    root : path
        Folder to create. Gets ``train/`` and, if ``n_test``, ``test/``
        (plus ``labels.csv`` and ``sample_submission.csv`` for ``layout="labels-csv"``).
    n_per_class : int
        Training images per class.
    n_test : int
        Unlabeled test images (classes mixed), named ``1.jpg .. n_test.jpg``.
    layout : {"kaggle", "folders", "labels-csv"}
        ``kaggle``: ``train/cat.N.jpg`` (needs class_names ``("cat", "dog")``);
        ``folders``: ``train/<class>/N.jpg``; ``labels-csv``: ``labels.csv`` + ``train/<id>.jpg``.
    class_names : sequence of str
        Class names (up to 5 distinct looks; more classes reuse looks).
    size : int
        Approximate image side in pixels (sizes are jittered so resizing is exercised).
    seed : int
        Random seed; the same arguments give byte-identical files.

    Returns
    -------
    Path
        ``root``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout. Received: layout={layout!r}; expected one of {LAYOUTS}.")
    if layout == "kaggle" and tuple(class_names) != ("cat", "dog"):
        raise ValueError(f"layout='kaggle' needs class_names=('cat', 'dog'); received {tuple(class_names)!r}.")
    rng = np.random.default_rng(seed)
    root = Path(root)
    train = root / "train"
    train.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, name in enumerate(class_names):
        for i in range(n_per_class):
            img = make_image(label, rng, size)
            if layout == "kaggle":
                path = train / f"{name}.{i}.jpg"
            elif layout == "folders":
                (train / name).mkdir(exist_ok=True)
                path = train / name / f"{i}.jpg"
            else:
                image_id = f"{rng.integers(0, 2**63):016x}"
                rows.append((image_id, name))
                path = train / f"{image_id}.jpg"
            img.save(path, quality=90)
    if layout == "labels-csv":
        with open(root / "labels.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "breed"])
            writer.writerows(rows)
    if n_test:
        test = root / "test"
        test.mkdir(exist_ok=True)
        test_ids = []
        for i in range(1, n_test + 1):
            label = int(rng.integers(0, len(class_names)))
            image_id = str(i) if layout != "labels-csv" else f"{rng.integers(0, 2**63):016x}"
            make_image(label, rng, size).save(test / f"{image_id}.jpg", quality=90)
            test_ids.append(image_id)
        if layout == "labels-csv":
            with open(root / "sample_submission.csv", "w", newline="") as fh:
                writer = csv.writer(fh)
                columns = sorted(class_names)
                writer.writerow(["id", *columns])
                for image_id in test_ids:
                    writer.writerow([image_id, *[f"{1 / len(columns):.6f}"] * len(columns)])
    return root
