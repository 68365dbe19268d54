"""Keys of the feature store: content hashes of image files and extractor keys.

* A **content hash** is the SHA-256 of a file's bytes (hex). Within one extractor a stored row
  is keyed by it, so any list of images (a subset, a union, renamed or duplicated files) is
  served by lookup, and an edited image is a new content even with the same name, size and
  mtime. Paths whose bytes cannot be read get no hash but a failure reason
  (:func:`hash_file`), decided from the file system on every call.
* An **extractor key** is the SHA-256 of everything that changes a vector except the image:
  the backbone (constructor, preprocessing, pooling: ``spec.identity()``), the weights
  identity (the content hash of a local file), the input size, the view, the precision, the
  reader's numerics, the TensorFlow / Keras versions and, for cached feature maps, the split
  layer (``extra``) (:func:`extractor_config`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

#: Version of the store's layout and keys; part of every extractor key.
STORE_FORMAT = 2
#: The fixed-name views (as is, mirrored left-right); ``aug:<k>`` and ``crop:<pos>`` are valid
#: too (see :mod:`catdog_features.features.views` and :func:`~.views.check_view`).
VIEWS = ("plain", "hflip")
PRECISIONS = ("float32", "bfloat16", "float16")
_BLOCK = 1 << 20


@dataclass(frozen=True)
class FileHash:
    """A file's content hash, or why its bytes could not be read (then ``sha256`` is None)."""

    sha256: Optional[str]
    reason: Optional[str] = None
    detail: Optional[str] = None


def hash_file(path) -> FileHash:
    """SHA-256 of a file's bytes, or the reader's failure reason when there are no bytes to hash.

    Reasons decided here, from the file system (they are not properties of any content, so
    they are never stored): ``file not found`` (also a broken symlink), ``not a file`` (a
    directory, FIFO, socket, device), ``permission denied``, ``empty file``, ``file too large``,
    ``unreadable`` (an I/O error, a symlink loop, a name the OS rejects).
    """
    from catdog_features.features import reader

    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        return FileHash(None, reader.REASON_NOT_FOUND, exc.strerror)
    except PermissionError as exc:
        return FileHash(None, reader.REASON_PERMISSION, exc.strerror)
    except (OSError, ValueError) as exc:  # ELOOP, ENAMETOOLONG, NUL in the name
        return FileHash(None, reader.REASON_UNREADABLE, str(exc))
    # Checked before open(): opening a FIFO named x.jpg would block forever.
    if not stat.S_ISREG(st.st_mode):
        return FileHash(None, reader.REASON_NOT_A_FILE, "directory" if stat.S_ISDIR(st.st_mode) else "special file")
    if st.st_size == 0:
        return FileHash(None, reader.REASON_EMPTY)
    if st.st_size > reader.MAX_FILE_BYTES:
        return FileHash(None, reader.REASON_TOO_LARGE, f"{st.st_size} bytes > {reader.MAX_FILE_BYTES}")
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_BLOCK), b""):
                digest.update(block)
    except FileNotFoundError as exc:  # removed since stat()
        return FileHash(None, reader.REASON_NOT_FOUND, exc.strerror)
    except PermissionError as exc:
        return FileHash(None, reader.REASON_PERMISSION, exc.strerror)
    except OSError as exc:
        return FileHash(None, reader.REASON_UNREADABLE, str(exc))
    return FileHash(digest.hexdigest())


def hash_bytes(data: bytes) -> str:
    """SHA-256 hex digest of in-memory bytes (the reader hashes what it decodes)."""
    return hashlib.sha256(data).hexdigest()


def hash_files(paths: Sequence, num_workers: Optional[int] = None) -> List[FileHash]:
    """:func:`hash_file` of many files, in order (threads: hashlib and reads release the GIL)."""
    paths = list(paths)
    if len(paths) < 64:
        return [hash_file(p) for p in paths]
    workers = num_workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="catdog-hash") as pool:
        return list(pool.map(hash_file, paths, chunksize=64))


def _dist_version(*names) -> Optional[str]:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=None)
def _numerics_versions() -> Tuple[Tuple[str, str], ...]:
    tf_version = _dist_version("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel", "tf-nightly")
    if tf_version is None:  # an unusual distribution name: ask the module itself
        import tensorflow as tf

        tf_version = tf.__version__
    keras_version = _dist_version("keras", "keras-nightly")
    if keras_version is None:
        import keras

        keras_version = keras.__version__
    return (("tensorflow", tf_version), ("keras", keras_version))


def numerics_versions() -> Dict[str, str]:
    """TensorFlow and Keras versions (package metadata; TensorFlow is not imported).

    Looked up once per process: the modules in use do not change under a running process.
    """
    return dict(_numerics_versions())


def reader_identity() -> str:
    """The reader's numerics, including the pixel limit that decides which images are used."""
    from catdog_features.features import reader

    return f"{reader.READER_VERSION};max_pixels={reader.MAX_PIXELS}"


def extractor_config(spec, weights, image_size: int, view: str = "plain", precision: str = "float32",
                     versions: Optional[Mapping[str, str]] = None, extra: Optional[Mapping] = None) -> dict:
    """Everything that changes a vector except the image, as JSON-able data.

    Parameters
    ----------
    spec : BackboneSpec
        The backbone (``spec.identity()`` and ``spec.weights_identity(weights)`` are used).
    weights : "imagenet", None, path or preset
        As given to ``spec.build``.
    image_size : int
        Resolved square input size.
    view : str
        Which view of the images: ``plain``, ``hflip``, ``aug:<k>`` or ``crop:<pos>`` (see
        :mod:`catdog_features.features.views`). Views other than plain/hflip also put their
        recipe (``view_identity``) into the key.
    precision : {"float32", "bfloat16", "float16"}
        Compute precision of the backbone.
    versions : mapping, optional
        ``{"tensorflow": ..., "keras": ...}``; default :func:`numerics_versions`.
    extra : mapping, optional
        Further settings that change the output (e.g. a split layer); included as given.
    """
    from catdog_features.features.views import check_view, view_identity

    check_view(view)  # ViewError (a ValueError) naming the value and the accepted forms
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision. Received: precision={precision!r}; expected one of {PRECISIONS}.")
    versions = dict(versions or numerics_versions())
    config = {
        "store_format": STORE_FORMAT,
        "backbone": spec.identity(),
        "name": spec.name,
        "weights": str(spec.weights_identity(weights)),
        "image_size": int(image_size),
        "view": view,
        "precision": precision,
        "reader": reader_identity(),
        "tensorflow": versions["tensorflow"],
        "keras": versions["keras"],
    }
    recipe = view_identity(view)
    if recipe is not None:  # plain/hflip keys stay what they were before augmented views
        config["view_recipe"] = recipe
    if extra:
        config["extra"] = dict(extra)
    return config


def extractor_key(config: Mapping) -> str:
    """SHA-256 hex digest of the canonical JSON of an :func:`extractor_config`."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def extractor_dirname(config: Mapping, key: Optional[str] = None) -> str:
    """``<Backbone>-<size>-<view>[-<precision>][-at-<split>]-<key[:16]>``: readable, and unique by the key."""
    key = key or extractor_key(config)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in str(config.get("name", "backbone")))[:60]
    precision = "" if config.get("precision", "float32") == "float32" else f"-{config['precision']}"
    view = str(config["view"]).replace(":", "_")  # aug:3 -> aug_3 (no colons in folder names)
    split = (config.get("extra") or {}).get("split")
    split = "" if not split else "-at-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in str(split))[:40]
    return f"{safe}-{config['image_size']}-{view}{precision}{split}-{key[:16]}"
