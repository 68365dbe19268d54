"""Small helpers shared by the extraction / cache tests (tiny image folders, bad files)."""

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from catdog_features.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[1]


def jpeg_bytes(seed=0, size=(40, 32)):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


#: bad files written next to good ones: name -> (bytes, reason the reader gives)
BAD_FILES = {
    "cat.100.jpg": (b"<html><body>404 Not Found</body></html>", "not an image"),
    "dog.101.jpg": (b"", "empty file"),
    "cat.102.jpg": (jpeg_bytes(1)[:300], "truncated"),
}


def make_images(root, n_per_class=6, bad=(), size=40, seed=0) -> Path:
    """A Kaggle-style ``train`` folder with ``2 * n_per_class`` images plus the named bad files."""
    make_dataset(root, n_per_class=n_per_class, n_test=0, layout="kaggle", size=size, seed=seed)
    train = Path(root) / "train"
    for name in bad:
        (train / name).write_bytes(BAD_FILES[name][0])
    return train


def run_python(code, env_extra=None, timeout=240):
    """Run ``code`` in a fresh interpreter (repo on the path); returns CompletedProcess."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout)
