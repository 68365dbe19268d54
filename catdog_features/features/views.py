"""Views of an image: what is done to the decoded pixels before a backbone sees them.

Each view is its own extractor in the feature store (part of the extractor key), so a view
is computed once per image content, ever, like the plain images. Names:

* ``plain``: the image as is; ``hflip``: mirrored left-right (a TTA view).
* ``aug:<k>`` (``k`` = 0, 1, ...): a seeded random augmentation, fastai / torchvision style:
  a random resized crop (:data:`AUG_SCALE` of the area, aspect ratio in :data:`AUG_RATIO`), a
  left-right flip with probability 1/2, a small rotation (up to :data:`AUG_MAX_DEGREES`
  degrees, then the largest centred window without empty corners) and brightness / contrast
  factors in :data:`AUG_COLOR`. The parameters are drawn from a generator seeded by
  ``(SHA-256 of the image file's bytes, k)``: the same image and ``k`` give the same pixels in
  every run and process, a different ``k`` a different augmentation, so augmented views can
  be cached and training draws a new augmentation per epoch without rerunning a backbone.
* ``crop:tl``, ``crop:tr``, ``crop:bl``, ``crop:br``, ``crop:c``: deterministic TTA crops, the
  four corners and the centre at zoom :data:`CROP_ZOOM` (fastai's TTA zoom), i.e. a window of
  ``1/1.35`` of each side.

Lists of views accept ranges: ``"plain,hflip,aug:0-7"`` (:func:`parse_views`).

Every transform works on the decoded ``uint8`` ``(H, W, 3)`` image with NumPy and Pillow only
(deterministic, no TensorFlow) and returns a ``uint8`` image of any size; the reader then
resizes it to each backbone's input size. Crop windows and augmentation parameters are
fractions of the image, so they do not depend on the JPEG draft scale the image was decoded at.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Tuple, Union

import numpy as np

#: Views that existed before augmentations (their extractor keys are unchanged).
BASIC_VIEWS = ("plain", "hflip")
#: Corner and centre crops of the TTA crop views.
CROP_POSITIONS = ("tl", "tr", "bl", "br", "c")
#: Zoom of the crop views: the window is ``1 / CROP_ZOOM`` of each side (fastai's TTA default).
CROP_ZOOM = 1.35
#: Random resized crop: fraction of the area kept, and aspect-ratio range (log-uniform).
AUG_SCALE = (0.5, 1.0)
AUG_RATIO = (3 / 4, 4 / 3)
#: Largest rotation of an augmented view, in degrees (uniform in [-max, max]).
AUG_MAX_DEGREES = 10.0
#: Brightness and contrast factors of an augmented view (each uniform in this range).
AUG_COLOR = (0.8, 1.2)
#: Version of the augmentation recipe; part of an augmented view's extractor key.
AUG_VERSION = 1
#: Largest ``k`` accepted in ``aug:<k>`` (a bound against typos such as ``aug:0-70000``).
MAX_AUG = 1023

#: The accepted forms, as quoted in error messages.
VIEW_FORMS = "'plain', 'hflip', 'aug:<k>' (k >= 0; ranges 'aug:0-7'), 'crop:tl|tr|bl|br|c'"

_AUG = re.compile(r"^aug:(\d+)$")
_AUG_RANGE = re.compile(r"^aug:(\d+)-(\d+)$")


class ViewError(ValueError):
    """A view name (or a list of them) that is not one of :data:`VIEW_FORMS`."""


def check_view(name) -> str:
    """``name`` if it is a valid view name, else :class:`ViewError` naming it and the expected forms."""
    if isinstance(name, str):
        if name in BASIC_VIEWS or (name.startswith("crop:") and name[5:] in CROP_POSITIONS):
            return name
        m = _AUG.match(name)
        if m and int(m.group(1)) <= MAX_AUG and str(int(m.group(1))) == m.group(1):
            return name
    raise ViewError(f"Unknown view. Received: view={name!r}; expected one of {VIEW_FORMS}"
                    f"{f' with k <= {MAX_AUG}' if isinstance(name, str) and _AUG.match(name) else ''}.")


def parse_views(spec: Union[str, Iterable[str], None], default: Tuple[str, ...] = ("plain",)) -> Tuple[str, ...]:
    """View names from ``"plain,hflip,aug:0-7"`` or a list (items may be ranges too).

    Ranges ``aug:a-b`` expand to ``aug:a`` ... ``aug:b`` (inclusive). Repeated names are
    kept once, in first-seen order. ``None`` or an empty list gives ``default``.

    Raises
    ------
    ViewError
        A name that is none of :data:`VIEW_FORMS` (the message quotes it), or a range whose
        end is before its start.
    """
    if spec is None:
        return tuple(default)
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",")]
        if any(not s for s in items) and spec.strip():
            raise ViewError(f"Invalid list of views. Received: {spec!r} (an empty item); expected comma-separated "
                            f"names among {VIEW_FORMS}.")
        items = [s for s in items if s]
    else:
        try:
            items = list(spec)
        except TypeError:
            raise ViewError(f"Invalid views. Received: {spec!r}; expected a comma-separated string or a list of "
                            f"names among {VIEW_FORMS}.") from None
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ViewError(f"Invalid view. Received: {item!r} ({type(item).__name__}); expected a string among "
                            f"{VIEW_FORMS}.")
        m = _AUG_RANGE.match(item.strip())
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo or hi > MAX_AUG:
                raise ViewError(f"Invalid view range. Received: {item!r}; expected 'aug:<a>-<b>' with "
                                f"0 <= a <= b <= {MAX_AUG}.")
            out += [f"aug:{k}" for k in range(lo, hi + 1)]
        else:
            out.append(check_view(item.strip()))
    out = list(dict.fromkeys(out))
    return tuple(out) if out else tuple(default)


def format_views(views: Iterable[str]) -> str:
    """The short form of a list of views: consecutive ``aug:k`` collapsed into ``aug:a-b``."""
    views = list(views)
    out, k = [], 0
    while k < len(views):
        m = _AUG.match(views[k])
        if m:
            lo = hi = int(m.group(1))
            while k + 1 < len(views) and views[k + 1] == f"aug:{hi + 1}":
                hi += 1
                k += 1
            out.append(f"aug:{lo}" if lo == hi else f"aug:{lo}-{hi}")
        else:
            out.append(views[k])
        k += 1
    return ",".join(out)


def view_identity(name: str) -> Optional[dict]:
    """What besides the name defines a view's pixels (part of its extractor key); None for plain/hflip."""
    check_view(name)
    if name in BASIC_VIEWS:
        return None
    if name.startswith("crop:"):
        return {"kind": "crop", "zoom": CROP_ZOOM}
    return {"kind": "aug", "version": AUG_VERSION, "scale": list(AUG_SCALE), "ratio": [round(r, 6) for r in AUG_RATIO],
            "degrees": AUG_MAX_DEGREES, "color": list(AUG_COLOR), "seed": "sha256+k"}


def view_zoom(name: str) -> float:
    """How much a view magnifies the image at most (the reader decodes JPEGs at a finer draft for it)."""
    check_view(name)
    if name.startswith("crop:"):
        return CROP_ZOOM
    if name.startswith("aug:"):
        return 1.0 / math.sqrt(AUG_SCALE[0] * AUG_RATIO[0])
    return 1.0


# --------------------------------------------------------------------------- transforms
def hflip(rgb: np.ndarray) -> np.ndarray:
    """Mirror an ``(H, W, 3)`` image left-right (the ``"hflip"`` view)."""
    return np.ascontiguousarray(rgb[:, ::-1])


def crop_box(height: int, width: int, position: str, zoom: float = CROP_ZOOM) -> Tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of the ``crop:<position>`` window of an image."""
    if position not in CROP_POSITIONS:
        raise ViewError(f"Unknown crop position. Received: {position!r}; expected one of {CROP_POSITIONS}.")
    h, w = max(1, int(round(height / zoom))), max(1, int(round(width / zoom)))
    top = {"t": 0, "b": height - h, "c": (height - h) // 2}[position[0]]
    left = {"l": 0, "r": width - w, "c": (width - w) // 2}[position[-1]]
    return top, left, top + h, left + w


def crop_view(rgb: np.ndarray, position: str) -> np.ndarray:
    """The ``crop:<position>`` view of a decoded image."""
    top, left, bottom, right = crop_box(rgb.shape[0], rgb.shape[1], position)
    return np.ascontiguousarray(rgb[top:bottom, left:right])


@dataclass(frozen=True)
class AugParams:
    """The drawn parameters of one augmented view (fractions of the image; angles in degrees)."""

    top: float  # crop window, as fractions of the height / width
    left: float
    height: float
    width: float
    flip: bool
    degrees: float
    brightness: float
    contrast: float


def aug_rng(content_hash: str, k: int) -> np.random.Generator:
    """The generator of ``aug:<k>`` for an image content (its SHA-256, hex): fixed by (content, k)."""
    if not isinstance(content_hash, str) or not re.fullmatch(r"[0-9a-f]{64}", content_hash):
        raise ValueError(f"Invalid content hash. Received: {content_hash!r}; expected 64 lowercase hex digits (SHA-256).")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(content_hash, 16),
                                                                      spawn_key=(AUG_VERSION, int(k)))))


def aug_params(content_hash: str, k: int) -> AugParams:
    """The parameters of ``aug:<k>`` for an image content; the same in every run and process."""
    rng = aug_rng(content_hash, k)
    area = rng.uniform(*AUG_SCALE)
    ratio = math.exp(rng.uniform(math.log(AUG_RATIO[0]), math.log(AUG_RATIO[1])))
    # as fractions of the image's sides: a window of ``area`` of the image with aspect (w/h) x ratio
    width, height = min(1.0, math.sqrt(area * ratio)), min(1.0, math.sqrt(area / ratio))
    top, left = rng.uniform(0.0, 1.0 - height), rng.uniform(0.0, 1.0 - width)
    flip = bool(rng.integers(0, 2))
    degrees = rng.uniform(-AUG_MAX_DEGREES, AUG_MAX_DEGREES)
    brightness, contrast = rng.uniform(*AUG_COLOR), rng.uniform(*AUG_COLOR)
    return AugParams(top, left, height, width, flip, degrees, brightness, contrast)


def _inner_scale(w: float, h: float, degrees: float) -> float:
    """Largest ``s`` so that the centred ``s*w x s*h`` window fits inside the ``w x h`` image rotated by ``degrees``."""
    t = math.radians(abs(degrees))
    c, s = math.cos(t), math.sin(t)
    return min(1.0, w / (w * c + h * s), h / (w * s + h * c))


def apply_aug(rgb: np.ndarray, p: AugParams) -> np.ndarray:
    """An image with the augmentation ``p`` applied (uint8 in, uint8 out; deterministic)."""
    from PIL import Image

    H, W = rgb.shape[:2]
    top, left = int(round(p.top * H)), int(round(p.left * W))
    h, w = max(1, int(round(p.height * H))), max(1, int(round(p.width * W)))
    out = rgb[min(top, H - h):min(top, H - h) + h, min(left, W - w):min(left, W - w) + w]
    if p.flip:
        out = out[:, ::-1]
    out = np.ascontiguousarray(out)
    if abs(p.degrees) > 1e-9 and min(out.shape[:2]) >= 4:
        img = Image.fromarray(out).rotate(p.degrees, resample=Image.BILINEAR, expand=False)
        s = _inner_scale(out.shape[1], out.shape[0], p.degrees)
        ih, iw = max(1, int(math.floor(out.shape[0] * s))), max(1, int(math.floor(out.shape[1] * s)))
        t0, l0 = (out.shape[0] - ih) // 2, (out.shape[1] - iw) // 2
        out = np.asarray(img)[t0:t0 + ih, l0:l0 + iw]
    x = out.astype(np.float32)
    mean = np.float32(x.mean())
    x = ((x - mean) * np.float32(p.contrast) + mean) * np.float32(p.brightness)
    return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def aug_view(rgb: np.ndarray, content_hash: str, k: int) -> np.ndarray:
    """The ``aug:<k>`` view of a decoded image whose file has SHA-256 ``content_hash``."""
    return apply_aug(rgb, aug_params(content_hash, k))


def view_transform(name: str) -> Optional[Callable[[np.ndarray, str], np.ndarray]]:
    """``fn(rgb, content_hash) -> rgb`` of a view (None for ``plain``)."""
    check_view(name)
    if name == "plain":
        return None
    if name == "hflip":
        return lambda rgb, _h: hflip(rgb)
    if name.startswith("crop:"):
        position = name[5:]
        return lambda rgb, _h: crop_view(rgb, position)
    k = int(name[4:])
    return lambda rgb, h: aug_view(rgb, h, k)
