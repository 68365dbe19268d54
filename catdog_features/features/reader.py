"""Read images: decode once (EXIF-aware), resize to every requested size, record bad files.

This is the *reader* of stage 1. It turns a list of paths into batches of resized RGB
arrays plus failure records, and knows nothing about models or caches:

* :func:`decode_image` -- one file -> ``(H, W, 3)`` uint8 RGB, or :class:`ImageReadError`
  with a short, stable :attr:`~ImageReadError.reason` (one of :data:`REASONS`).
* :func:`resize_image` -- uint8 RGB -> float32 ``(size, size, 3)`` with values 0..255.
* :func:`read_image` -- one file -> ``{size: uint8 array}``: decoded once, resized to each size.
* :func:`read_batches` -- many files -> :class:`ReadBatch` es, decoded by a thread pool
  ahead of the consumer, aligned to input positions so a resumed run sees the same batches.

Numerics (what :data:`READER_VERSION` stands for)
-------------------------------------------------
* **Orientation**: the EXIF orientation tag is applied (:func:`PIL.ImageOps.exif_transpose`);
  an unreadable EXIF block is ignored (the pixels are kept as stored).
* **Colour**: every mode becomes RGB uint8. Grayscale is repeated on three channels; CMYK,
  YCbCr and palette images go through Pillow's ``convert("RGB")``. ICC profiles are not
  applied (like Keras and TensorFlow, pixels are used as stored).
* **Alpha** (RGBA, LA, PA, premultiplied modes, palette or colour-key transparency) is
  composited on **white**: ``out = 255 - round((255 - rgb) * a / 255)``. Pixels under a
  fully transparent area are arbitrary (often black), so dropping alpha would make features
  depend on invisible data; white is how such images are normally displayed.
* **16-bit** (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, and ``I`` with values in 0..65535)
  is scaled, not clipped: ``round(v * 255 / 65535)``. Other ``I`` (32-bit) ranges and
  ``F`` (float) images are mapped linearly: floats within 0..1 are multiplied by 255,
  values within 0..255 are kept, anything else is min-max scaled to 0..255; NaN -> 0.
* **Multi-frame** files (animated GIF/PNG/WebP, multi-page TIFF): the first frame.
* **Format** is decided by content, not by the file extension.
* **Resize**: Pillow ``Image.resize((size, size), Image.BILINEAR)`` on the uint8 image --
  the triangle filter of Pillow, which widens with the scale factor (so downscaling is
  antialiased), and rounds to uint8. The aspect ratio is not kept. For an RGB JPEG
  without EXIF rotation or draft this is bit-identical to Keras
  ``img_to_array(load_img(path, target_size=(size, size), interpolation="bilinear"))``
  (checked on the sample data at 224 and 299).
* **JPEG draft**: a JPEG whose short side is at least ``2 * DRAFT_MARGIN * size`` is decoded
  by libjpeg at a reduced scale (1/2, 1/4 or 1/8, the largest that keeps the short side
  >= ``DRAFT_MARGIN * size``) before the bilinear resize. The scale depends only on the
  image and on ``size`` -- never on which other sizes are requested together -- so the
  array for one size is the same whatever backbones share the decode. Sizes that need
  different scales get one decode each (rare: only for large JPEGs whose scale boundary
  falls between the sizes). A 12-megapixel photo read for sizes 224 and 299 took 108 ms
  instead of 480 ms (measured on a busy 2-core machine).

Failures
--------
Nothing about a single file stops a run: a missing, empty, truncated, non-image, oversized
(decompression bomb) or otherwise unreadable file raises :class:`ImageReadError` from
:func:`decode_image` and becomes a failure record in :func:`read_batches`. Truncated files
are rejected even if some other code has set Pillow's global
``ImageFile.LOAD_TRUNCATED_IMAGES = True`` (this module never sets it): the reader watches
for the decoder running out of data itself. The pixel limit :data:`MAX_PIXELS` is checked
from the header, before any pixel is decoded; Pillow's global ``Image.MAX_IMAGE_PIXELS``
is left alone (if a caller lowered it, Pillow's own stricter error is honoured too).
For images above Pillow's 89.5 MP threshold, Pillow may print its own
``DecompressionBombWarning`` (once per process) before the reader rejects the file;
silencing it would need the process-wide warnings filter, which threads cannot safely change.

Nothing here mutates global state at import time.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from PIL import features as _pil_features

# --- failure reasons: short and stable, they are grouped in summaries -------------------
REASON_NOT_FOUND = "file not found"
REASON_NOT_A_FILE = "not a file"  # a directory, FIFO, socket or device passed as a path
REASON_PERMISSION = "permission denied"
REASON_EMPTY = "empty file"
REASON_TOO_LARGE = "file too large"  # more than MAX_FILE_BYTES on disk
REASON_NOT_AN_IMAGE = "not an image"  # no known image signature, Pillow cannot identify it
REASON_CORRUPT_HEADER = "corrupt header"  # image signature, but no usable header (e.g. 0x10)
REASON_TRUNCATED = "truncated"
REASON_BOMB = "decompression bomb"  # more than MAX_PIXELS pixels according to the header
REASON_UNREADABLE = "unreadable"  # anything else the decoder rejects

REASONS = (
    REASON_NOT_FOUND,
    REASON_NOT_A_FILE,
    REASON_PERMISSION,
    REASON_EMPTY,
    REASON_TOO_LARGE,
    REASON_NOT_AN_IMAGE,
    REASON_CORRUPT_HEADER,
    REASON_TRUNCATED,
    REASON_BOMB,
    REASON_UNREADABLE,
)

#: Largest image (width * height, from the header) that is decoded. 80 megapixels is above
#: any 61 MP full-frame camera and is 240 MB as RGB; it is below Pillow's own 89.5 MP warning
#: threshold, so Pillow never warns about an image this reader accepts. Read at call time,
#: so it can be changed (e.g. ``monkeypatch.setattr(reader, "MAX_PIXELS", ...)``).
MAX_PIXELS = 80_000_000
#: Largest file read into memory (bytes). An 80 MP 16-bit RGBA PNG stored uncompressed is
#: about 640 MB, so legitimate images stay below this.
MAX_FILE_BYTES = 1 << 30
#: JPEG draft keeps the decoded short side >= DRAFT_MARGIN * size, so the bilinear resize
#: still downsamples (antialiased) by at least this factor.
DRAFT_MARGIN = 2
RESAMPLE = Image.Resampling.BILINEAR
RESAMPLE_NAME = "bilinear"
_DRAFT_SCALES = (8, 4, 2, 1)
_DRAFT_FORMATS = ("JPEG", "MPO")


def _reader_version() -> str:
    def lib(name, getter):
        try:
            return getter(name) or "none"
        except Exception:  # a feature Pillow was built without
            return "none"

    return ";".join(
        (
            "catdog-reader/1",
            f"resize=pil-{RESAMPLE_NAME}",
            f"draft=jpeg-{DRAFT_MARGIN}x",
            "alpha=white",
            "exif=transpose",
            "deep=scaled",
            f"pillow={PIL.__version__}",
            f"libjpeg-turbo={lib('libjpeg_turbo', _pil_features.version_feature)}",
            f"jpeg={lib('jpg', _pil_features.version_codec)}",
            f"webp={lib('webp', _pil_features.version_module)}",
        )
    )


#: Identifies the numerics of decoding and resizing (filter, draft rule, alpha and bit-depth
#: handling, Pillow and codec versions). It goes into the feature-cache fingerprint; bump the
#: leading ``catdog-reader/N`` whenever this module changes what pixels come out.
READER_VERSION: str = _reader_version()


class ImageReadError(Exception):
    """An image file that cannot be used.

    Parameters
    ----------
    reason : str
        Short, stable reason, one of :data:`REASONS` (e.g. ``"truncated"``).
    path : str, optional
        The file.
    detail : str, optional
        Free-form detail (the underlying error message).

    Attributes
    ----------
    reason, path, detail
        As given.
    """

    def __init__(self, reason: str, path: Optional[str] = None, detail: Optional[str] = None):
        self.reason = reason
        self.path = path
        self.detail = detail
        text = reason if path is None else f"{path}: {reason}"
        super().__init__(f"{text} ({detail})" if detail else text)

    def __reduce__(self):  # keep reason/path/detail through pickling (Spark, processes)
        return (type(self), (self.reason, self.path, self.detail))


# --- one file ---------------------------------------------------------------------------

_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
)


def _has_image_signature(data: bytes) -> bool:
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return True
    return data.startswith(_SIGNATURES)


class _WatchedBytes(io.BytesIO):
    """In-memory file that notes when a decoder asks for data past the end.

    Once ``watching`` is set (just before pixel decoding), a read that returns nothing
    means the decoder needed more data than the file has: the image is truncated. This is
    exactly the point where Pillow raises "image file is truncated" -- unless a caller set
    ``ImageFile.LOAD_TRUNCATED_IMAGES = True``, in which case Pillow silently returns a
    half-grey image. Watching the stream keeps rejecting those without touching the global.
    """

    watching = False
    ran_dry = False

    def read(self, size=-1):
        data = super().read(size)
        if self.watching and not data and size != 0:
            self.ran_dry = True
        return data


def _watch_pixel_reads(img: Image.Image, stream: _WatchedBytes) -> None:
    """Watch the stream while pixels are decoded, not in ``load_end``.

    ``load_end`` may legitimately read past the end: Pillow's PNG plugin looks for chunks
    after the image data and stops at EOF, so a PNG without its IEND chunk (every pixel
    present) is fine. Only used when ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set; otherwise
    Pillow raises on truncation itself.
    """
    stream.watching = True
    load_end = img.load_end

    def end_without_watching():
        stream.watching = False
        load_end()

    img.load_end = end_without_watching  # instance attribute: this image only


def _fspath(path) -> str:
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(
            f"Image paths must be str or os.PathLike. Received: {path!r} ({type(path).__name__})."
        ) from None


def _read_file(path: str) -> bytes:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise ImageReadError(REASON_NOT_FOUND, path, e.strerror) from None
    except PermissionError as e:
        raise ImageReadError(REASON_PERMISSION, path, e.strerror) from None
    except (OSError, ValueError) as e:  # name too long, symlink loop, NUL in the name
        raise ImageReadError(REASON_UNREADABLE, path, str(e)) from None
    # Checked before open(): opening a FIFO named x.jpg would block forever.
    if not stat.S_ISREG(st.st_mode):
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "special file"
        raise ImageReadError(REASON_NOT_A_FILE, path, kind)
    if st.st_size == 0:
        raise ImageReadError(REASON_EMPTY, path)
    if st.st_size > MAX_FILE_BYTES:
        raise ImageReadError(REASON_TOO_LARGE, path, f"{st.st_size} bytes > {MAX_FILE_BYTES}")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as e:  # removed since stat()
        raise ImageReadError(REASON_NOT_FOUND, path, e.strerror) from None
    except PermissionError as e:
        raise ImageReadError(REASON_PERMISSION, path, e.strerror) from None
    except IsADirectoryError:
        raise ImageReadError(REASON_NOT_A_FILE, path, "directory") from None
    except OSError as e:  # I/O error on a bad disk or network share
        raise ImageReadError(REASON_UNREADABLE, path, str(e)) from None
    if not data:
        raise ImageReadError(REASON_EMPTY, path)
    if len(data) > MAX_FILE_BYTES:  # grew since stat()
        raise ImageReadError(REASON_TOO_LARGE, path, f"{len(data)} bytes > {MAX_FILE_BYTES}")
    return data


def _open(data: bytes, path: str) -> Tuple[Image.Image, _WatchedBytes]:
    """Parse the header only; reject bombs and empty dimensions before decoding pixels."""
    stream = _WatchedBytes(data)
    try:
        img = Image.open(stream)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own limit (only reachable if a caller lowered Image.MAX_IMAGE_PIXELS,
        # or turned its warning into an error).
        raise ImageReadError(REASON_BOMB, path, str(e)) from None
    except UnidentifiedImageError:
        reason = REASON_CORRUPT_HEADER if _has_image_signature(data) else REASON_NOT_AN_IMAGE
        raise ImageReadError(reason, path) from None
    except OSError as e:
        reason = REASON_TRUNCATED if "truncated" in str(e).lower() else REASON_UNREADABLE
        raise ImageReadError(reason, path, str(e)) from None
    except Exception as e:  # plugins raise ValueError, struct.error, ... on hostile headers
        raise ImageReadError(REASON_UNREADABLE, path, f"{type(e).__name__}: {e}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        img.close()
        raise ImageReadError(REASON_CORRUPT_HEADER, path, f"size {width}x{height}")
    if width * height > MAX_PIXELS:
        img.close()
        raise ImageReadError(
            REASON_BOMB, path, f"{width}x{height} = {width * height} pixels > MAX_PIXELS={MAX_PIXELS}"
        )
    return img, stream


def draft_scale(width: int, height: int, size: int) -> int:
    """Reduction factor the JPEG draft rule uses for an image resized to ``size``.

    Parameters
    ----------
    width, height : int
        Stored (header) size of the image.
    size : int
        Target square size.

    Returns
    -------
    int
        1, 2, 4 or 8: the largest factor that keeps the short side at least
        ``DRAFT_MARGIN * size`` (this is the rule libjpeg's draft mode applies in Pillow).
    """
    scale = min(width, height) // (DRAFT_MARGIN * size)
    return next((s for s in _DRAFT_SCALES if scale >= s), 1)


def _decode_opened(img: Image.Image, stream: _WatchedBytes, path: str, size: Optional[int]) -> np.ndarray:
    """Decode the pixels of an opened image (JPEG draft for ``size``) to RGB uint8."""
    try:
        if size is not None and img.format in _DRAFT_FORMATS and draft_scale(*img.size, size) > 1:
            # Same rule as draft_scale(): Pillow picks the largest of 8/4/2/1 that keeps
            # both sides >= the requested size.
            img.draft(img.mode, (DRAFT_MARGIN * size, DRAFT_MARGIN * size))
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            _watch_pixel_reads(img, stream)
        img.load()
        if stream.ran_dry:
            raise ImageReadError(REASON_TRUNCATED, path, "decoder ran out of data")
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except Exception:  # a broken EXIF block: keep the stored orientation
            pass
        return _to_rgb(img)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(REASON_BOMB, path, str(e)) from None
    except OSError as e:
        reason = REASON_TRUNCATED if "truncated" in str(e).lower() else REASON_UNREADABLE
        raise ImageReadError(reason, path, str(e)) from None
    except Exception as e:  # ValueError, EOFError, MemoryError, ... from a hostile file
        raise ImageReadError(REASON_UNREADABLE, path, f"{type(e).__name__}: {e}") from None
    finally:
        img.close()


_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return np.array(img, dtype=np.uint8)  # a writable copy
    if mode.startswith("I") or mode == "F":
        gray = _deep_to_uint8(np.asarray(img), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"))
        rgb = rgba[:, :, :3].astype(np.uint16)
        alpha = rgba[:, :, 3:].astype(np.uint16)
        # Composite on white, rounded: 255 - round((255 - rgb) * alpha / 255).
        return (255 - ((255 - rgb) * alpha + 127) // 255).astype(np.uint8)
    if mode == "L":
        gray = np.asarray(img)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.array(img.convert("RGB"), dtype=np.uint8)  # 1, P, CMYK, YCbCr, LAB, HSV, ...


def _deep_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map a 16/32-bit integer or float plane to uint8 without clipping away the range."""
    if mode.startswith("I;16") or (
        mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535
    ):
        wide = arr.astype(np.uint32)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        values = values * 255.0
    elif not (lo >= 0.0 and hi <= 255.0):
        values = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def decode_image(path: Union[str, os.PathLike], *, target_size: Optional[int] = None) -> np.ndarray:
    """Decode one image file to RGB uint8, with its EXIF orientation applied.

    Parameters
    ----------
    path : str or path-like
        The image file. Its format is recognised from the content, not the extension.
    target_size : int, optional
        The square size the image will be resized to. When given, a large JPEG may be
        decoded at 1/2, 1/4 or 1/8 scale (see the module notes on JPEG draft); the
        result depends only on the file and ``target_size``. ``None`` decodes at full size.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
        RGB pixels (a new, writable array). See the module notes for how grayscale,
        alpha, palette, CMYK, 16-bit and float images are converted.

    Raises
    ------
    ImageReadError
        The file cannot be used; ``err.reason`` is one of :data:`REASONS`.
    """
    path = _fspath(path)
    if target_size is not None:
        target_size = _check_size(target_size)
    data = _read_file(path)
    img, stream = _open(data, path)
    return _decode_opened(img, stream, path, target_size)


def _check_size(size) -> int:
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"Invalid image size. Received: size={size!r}; expected a positive int.")
    return int(size)


def _resize_uint8(rgb: np.ndarray, size: int) -> np.ndarray:
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), RESAMPLE))


def _check_rgb(rgb, what: str) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        desc = (
            f"{type(rgb).__name__} dtype={rgb.dtype} shape={rgb.shape}"
            if isinstance(rgb, np.ndarray)
            else type(rgb).__name__
        )
        raise ValueError(f"Invalid {what}. Received: {desc}; expected a uint8 array of shape (H, W, 3).")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"Invalid {what}. Received: shape={rgb.shape}; expected H >= 1 and W >= 1.")
    return np.ascontiguousarray(rgb)


def resize_image(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB image to ``size x size`` with Pillow's bilinear filter.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (H, W, 3)
        A decoded image (see :func:`decode_image`).
    size : int
        Output side. The aspect ratio is not kept (like Keras ``load_img(target_size=...)``).

    Returns
    -------
    ndarray of float32, shape (size, size, 3)
        Values 0..255 (integers, as Pillow resizes in uint8); no model preprocessing.
    """
    rgb = _check_rgb(rgb, "image")
    return _resize_uint8(rgb, _check_size(size)).astype(np.float32)


def _draft_groups(img: Image.Image, sizes: Sequence[int]) -> List[Tuple[Optional[int], List[int]]]:
    """Group sizes that share one decode: [(draft size or None, [sizes])]."""
    if img.format not in _DRAFT_FORMATS:
        return [(None, list(sizes))]
    groups: Dict[int, List[int]] = {}
    for s in sizes:
        groups.setdefault(draft_scale(*img.size, s), []).append(s)
    # Any size of a group yields the group's scale; use the smallest for the draft request.
    return [(min(group) if scale > 1 else None, group) for scale, group in sorted(groups.items())]


def read_image(
    path: Union[str, os.PathLike],
    sizes: Union[int, Iterable[int]],
    transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> Dict[int, np.ndarray]:
    """Read one file once and resize it to every requested size.

    Parameters
    ----------
    path : str or path-like
        The image file.
    sizes : int or iterable of int
        Square output sizes.
    transform : callable, optional
        Applied to the decoded uint8 ``(H, W, 3)`` array before resizing (e.g. a horizontal
        flip for a test-time-augmentation view). Must be deterministic and must return a
        uint8 ``(H', W', 3)`` array; it may be called once per distinct JPEG draft scale.

    Returns
    -------
    dict of int -> ndarray of uint8, shape (size, size, 3)
        One resized image per size.

    Raises
    ------
    ImageReadError
        The file cannot be used.
    """
    path = _fspath(path)
    sizes = _check_sizes(sizes)
    return _decode_sizes(_read_file(path), path, sizes, transform)


def _decode_sizes(data: bytes, path: str, sizes, transform) -> Dict[int, np.ndarray]:
    """The body of :func:`read_image` once the file's bytes are in memory."""
    img, stream = _open(data, path)
    out: Dict[int, np.ndarray] = {}
    for i, (draft_size, group) in enumerate(_draft_groups(img, sizes)):
        if i:
            img, stream = _open(data, path)  # draft() and load() work once per Image object
        rgb = _decode_opened(img, stream, path, draft_size)
        if transform is not None:
            rgb = _check_rgb(transform(rgb), "transform output")
        for s in group:
            out[s] = _resize_uint8(rgb, s)
    return {s: out[s] for s in sizes}


def _decode_views(data: bytes, path: str, sizes, views, digest: str) -> Dict[str, Dict[int, np.ndarray]]:
    """Decode once per JPEG draft scale, make every view, resize each to every size.

    ``views`` is a sequence of ``(name, fn or None, zoom)``; ``fn(rgb, digest)`` makes the
    view from the decoded uint8 image. A view at ``zoom`` > 1 (a crop) is decoded at the
    draft scale of ``size * zoom``, so its pixels depend only on (file, view, size), never on
    which other views were read with it; plain and hflip decode exactly as without views.
    """
    img, stream = _open(data, path)
    width, height = img.size
    draftable = img.format in _DRAFT_FORMATS
    groups: Dict[int, List[Tuple[int, int, int]]] = {}  # scale -> [(view index, size, size needed)]
    for v, (_name, _fn, zoom) in enumerate(views):
        for s in sizes:
            need = max(int(s), int(math.ceil(s * float(zoom) - 1e-9)))
            scale = draft_scale(width, height, need) if draftable else 1
            groups.setdefault(scale, []).append((v, s, need))
    out: Dict[str, Dict[int, np.ndarray]] = {name: {} for name, _fn, _z in views}
    for i, (scale, reqs) in enumerate(sorted(groups.items())):
        if i:
            img, stream = _open(data, path)
        rgb = _decode_opened(img, stream, path, min(n for _v, _s, n in reqs) if scale > 1 else None)
        made: Dict[int, np.ndarray] = {}
        for v, s, _need in reqs:
            name, fn, _zoom = views[v]
            if v not in made:
                made[v] = rgb if fn is None else _check_rgb(fn(rgb, digest), f"output of view {name!r}")
            out[name][s] = _resize_uint8(made[v], s)
    return out


# --- many files -------------------------------------------------------------------------


@dataclass
class ReadBatch:
    """Resized images of the input positions ``[start, stop)`` and the failures among them.

    Attributes
    ----------
    start : int
        First input position covered by this batch.
    stop : int
        One past the last input position covered.
    ok : ndarray of int64
        Input positions decoded successfully, ascending, within ``[start, stop)``.
    images : dict of int -> ndarray of float32
        ``(len(ok), size, size, 3)`` per requested size, values 0..255; row ``j`` is the
        image at position ``ok[j]``.
    failures : list of (int, str, str)
        ``(position, path, reason)`` for every position in ``[start, stop)`` that failed.
        ``len(ok) + len(failures) == stop - start`` always.
    content_hashes : dict of int -> str
        SHA-256 (hex) of the bytes that were read, for every position whose file could be read
        (decoded or not).
    """

    start: int
    stop: int
    ok: np.ndarray
    images: Dict[int, np.ndarray]
    failures: List[Tuple[int, str, str]] = field(default_factory=list)
    #: position -> SHA-256 of the bytes read (every position whose bytes could be read)
    content_hashes: Dict[int, str] = field(default_factory=dict)
    #: with ``views=``: view name -> {size: float32 (len(ok), size, size, 3)}; ``images`` is the first view's
    views: Dict[str, Dict[int, np.ndarray]] = field(default_factory=dict)


def default_num_workers() -> int:
    """Decoder threads used when ``num_workers=None``: the usable CPUs, at most 16."""
    try:
        n = len(os.sched_getaffinity(0))  # respects taskset / container CPU sets
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(16, n))


def _check_sizes(sizes) -> Tuple[int, ...]:
    if isinstance(sizes, (int, np.integer)) and not isinstance(sizes, bool):
        sizes = (sizes,)
    try:
        items = list(sizes)
    except TypeError:
        raise ValueError(f"Invalid sizes. Received: sizes={sizes!r}; expected an int or a list of ints.") from None
    if not items:
        raise ValueError("Received an empty list of sizes; expected at least one positive int.")
    checked = tuple(dict.fromkeys(_check_size(s) for s in items))  # unique, first-seen order
    return checked


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"Invalid {name}. Received: {name}={value!r}; expected an int >= {minimum}.")
    return int(value)


def _read_task(path: str, sizes, transform, views=None):
    """Worker: ``(resized images or the ImageReadError as a value, SHA-256 of the bytes read or None)``.

    The hash is of the very bytes that were decoded, so a caller keying results by content
    can tell when a file changed between listing and reading.
    """
    try:
        data = _read_file(path)
    except ImageReadError as err:
        return err, None
    digest = hashlib.sha256(data).hexdigest()
    try:
        if views is not None:
            return _decode_views(data, path, sizes, views, digest), digest
        return _decode_sizes(data, path, sizes, transform), digest
    except ImageReadError as err:
        return err, digest


def read_batches(
    paths: Sequence[Union[str, os.PathLike]],
    sizes: Union[int, Iterable[int]],
    batch_size: int,
    start: int = 0,
    stop: Optional[int] = None,
    num_workers: Optional[int] = None,
    prefetch: int = 2,
    transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> Iterator[ReadBatch]:
    """Decode images in parallel and yield them in position-aligned batches.

    Batch ``k`` covers input positions ``[start + k*batch_size, min(start + (k+1)*batch_size,
    stop))``. Files that fail are left out of ``ok`` and listed in ``failures``, so batch
    boundaries never depend on which files are bad, and a run resumed at a batch boundary
    yields exactly the batches a full run yields there.

    Parameters
    ----------
    paths : sequence of str or path-like
        All input images; positions index into it.
    sizes : int or iterable of int
        Square sizes to produce. Each file is read and decoded once and resized to every
        size (see :func:`read_image` for the JPEG draft exception).
    batch_size : int
        Positions per batch (>= 1).
    start, stop : int, optional
        The window of positions to read, ``0 <= start <= stop <= len(paths)``;
        ``stop=None`` means ``len(paths)``.
    num_workers : int, optional
        Decoder threads (Pillow releases the GIL while decoding and resizing).
        ``None``: :func:`default_num_workers`. ``0``: decode in the consumer's thread,
        without a pool or prefetching.
    prefetch : int
        Batches decoded ahead of the one being consumed (>= 0).
    transform : callable, optional
        Applied to each decoded uint8 image before resizing (see :func:`read_image`).
        An exception it raises is a bug, not a bad file: it stops the iteration.

    Yields
    ------
    ReadBatch
        ``ok`` positions, ``images`` ``{size: float32 (len(ok), size, size, 3)}`` with
        values 0..255, and ``failures`` ``[(position, path, reason)]``.

    Raises
    ------
    ValueError
        On invalid arguments (raised by the call itself, before iteration).

    Notes
    -----
    The thread pool starts with the first ``next()`` and is shut down (queued work
    cancelled, running decodes awaited) when the iteration ends, raises, or the generator
    is closed. Close it explicitly when stopping early, e.g.
    ``with contextlib.closing(read_batches(...)) as batches:``; otherwise cleanup happens
    when the generator is garbage-collected.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise ValueError(f"Received a single path {paths!r}; expected a sequence of image paths.")
    paths = [_fspath(p) for p in paths]
    sizes = _check_sizes(sizes)
    batch_size = _check_int(batch_size, "batch_size", 1)
    start = _check_int(start, "start", 0)
    stop = len(paths) if stop is None else _check_int(stop, "stop", 0)
    if not start <= stop <= len(paths):
        raise ValueError(
            f"Invalid window. Received: start={start}, stop={stop}; "
            f"expected 0 <= start <= stop <= len(paths) = {len(paths)}."
        )
    workers = default_num_workers() if num_workers is None else _check_int(num_workers, "num_workers", 0)
    prefetch = _check_int(prefetch, "prefetch", 0)
    if transform is not None and not callable(transform):
        raise ValueError(f"Invalid transform. Received: {transform!r}; expected a callable or None.")
    bounds = [(b, min(b + batch_size, stop)) for b in range(start, stop, batch_size)]
    return _iterate(paths, sizes, bounds, transform, workers, prefetch)


def read_windows(
    paths: Sequence[Union[str, os.PathLike]],
    sizes: Union[int, Iterable[int]],
    windows: Sequence[Tuple[int, int]],
    num_workers: Optional[int] = None,
    prefetch: int = 2,
    transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    views: Optional[Sequence[Tuple[str, Optional[Callable], float]]] = None,
) -> Iterator[ReadBatch]:
    """:func:`read_batches` over explicit, consecutive windows ``[(start, stop), ...]`` of ``paths``.

    For callers whose batches hold different numbers of images (the feature store batches
    image contents by slot). Same decoding, prefetching and failure records.

    ``views`` (instead of ``transform``): ``[(name, fn or None, zoom), ...]``; each file is
    decoded once (per JPEG draft scale) and every view is made from that decode with
    ``fn(rgb, sha256 of the file's bytes)``; ``ReadBatch.views[name][size]`` holds them.
    """
    if views is not None and transform is not None:
        raise ValueError("Received both transform= and views=; expected one of them.")
    if views is not None:
        views = tuple((str(n), f, float(z)) for n, f, z in views)
        if not views:
            raise ValueError("Received views=[]; expected at least one (name, transform, zoom).")
    paths = [_fspath(p) for p in paths]
    sizes = _check_sizes(sizes)
    windows = [(int(a), int(b)) for a, b in windows]
    if any(not 0 <= a <= b <= len(paths) for a, b in windows) or any(
        b0 != a1 for (_, b0), (a1, _) in zip(windows, windows[1:])
    ):
        raise ValueError(f"Invalid windows. Received: {windows[:4]}...; expected consecutive (start, stop) within "
                         f"[0, {len(paths)}].")
    workers = default_num_workers() if num_workers is None else _check_int(num_workers, "num_workers", 0)
    return _iterate(paths, sizes, windows, transform, workers, _check_int(prefetch, "prefetch", 0), views)


def _iterate(paths, sizes, bounds, transform, workers, prefetch, views=None) -> Iterator[ReadBatch]:
    if workers == 0:
        return _iter_inline(paths, sizes, bounds, transform, views)
    return _iter_pooled(paths, sizes, bounds, transform, workers, prefetch, views)


def _sort_results(b0: int, b1: int, results, paths):
    """``(ok positions, their decoded images, failures, hashes)`` of one batch's read results."""
    ok, decoded, failures, hashes = [], [], [], {}
    for pos, (result, digest) in zip(range(b0, b1), results):
        if digest is not None:
            hashes[pos] = digest
        if isinstance(result, ImageReadError):
            failures.append((pos, paths[pos], result.reason))
        else:
            ok.append(pos)
            decoded.append(result)
    return ok, decoded, failures, hashes


def _stack(decoded, sizes, pick) -> Dict[int, np.ndarray]:
    """size -> float32 ``(n, s, s, 3)`` of ``pick(result)[s]`` for each decoded image."""
    images = {}
    for s in sizes:
        out = np.empty((len(decoded), s, s, 3), dtype=np.float32)
        for j, result in enumerate(decoded):
            out[j] = pick(result)[s]  # uint8 -> float32 on assignment
        images[s] = out
    return images


def _assemble(b0: int, b1: int, results, paths, sizes, views=None) -> ReadBatch:
    ok, decoded, failures, hashes = _sort_results(b0, b1, results, paths)
    positions = np.asarray(ok, dtype=np.int64)
    if views is None:
        return ReadBatch(b0, b1, positions, _stack(decoded, sizes, lambda r: r), failures, hashes)
    out = {name: _stack(decoded, sizes, lambda r, name=name: r[name]) for name, _fn, _zoom in views}
    return ReadBatch(b0, b1, positions, out[views[0][0]], failures, hashes, out)


def _iter_inline(paths, sizes, bounds, transform, views=None) -> Iterator[ReadBatch]:
    for b0, b1 in bounds:
        results = [_read_task(paths[i], sizes, transform, views) for i in range(b0, b1)]
        yield _assemble(b0, b1, results, paths, sizes, views)


def _iter_pooled(paths, sizes, bounds, transform, workers, prefetch, views=None) -> Iterator[ReadBatch]:
    if not bounds:
        return
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="catdog-reader")
    pending: deque = deque()  # futures of submitted batches, in order
    submitted = 0
    try:
        for k in range(len(bounds)):
            # Keep batches k .. k+prefetch in flight: while the consumer works on batch k,
            # the pool decodes the next `prefetch` ones (FIFO, so batch k comes first).
            while submitted < min(len(bounds), k + 1 + prefetch):
                b0, b1 = bounds[submitted]
                pending.append([executor.submit(_read_task, paths[i], sizes, transform, views) for i in range(b0, b1)])
                submitted += 1
            futures: List[Future] = pending.popleft()
            b0, b1 = bounds[k]
            yield _assemble(b0, b1, [f.result() for f in futures], paths, sizes, views)
    finally:
        for futures in pending:
            for f in futures:
                f.cancel()
        executor.shutdown(wait=True, cancel_futures=True)
