"""catdog_features.features.reader: decoding, conversions, bad-file reasons, batching, shutdown."""

import contextlib
import gc
import io
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from catdog_features.features import reader
from catdog_features.features.reader import ImageReadError, decode_image, read_batches, read_image, resize_image

RNG = np.random.default_rng(0)
ARR = RNG.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)  # H=30, W=40; for lossless formats


# --- file makers --------------------------------------------------------------------------


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_bytes(width, height, bit_depth=8, color_type=0, idat=None):
    """A hand-made PNG, so headers can say things Pillow would never write."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def smooth(h, w):
    """Photo-like content (gradients) so JPEG stays close to the source."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)


def blocks():
    """16x32 (H x W) image of four flat quadrants: easy to track through rotations."""
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:8, :16] = (255, 0, 0)
    arr[:8, 16:] = (0, 255, 0)
    arr[8:, :16] = (0, 0, 255)
    arr[8:, 16:] = (255, 255, 0)
    return arr


PHOTO = smooth(30, 40)  # for JPEG, which does not keep noise
JPEG = encode(Image.fromarray(PHOTO), "JPEG", quality=95)
PROGRESSIVE = encode(Image.fromarray(smooth(64, 64)), "JPEG", progressive=True)
PNG = encode(Image.fromarray(ARR), "PNG")
GIF = encode(Image.fromarray(ARR).convert("P"), "GIF")


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- failures -----------------------------------------------------------------------------

BAD_FILES = [
    ("empty.jpg", b"", "empty file"),
    ("page.jpg", b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>\n", "not an image"),
    ("random.jpg", np.random.default_rng(7).bytes(4096), "not an image"),
    ("text.png", b"just some text, no image here\n" * 10, "not an image"),
    ("half.jpg", JPEG[: len(JPEG) // 2], "truncated"),
    ("no-eoi.jpg", JPEG[:-2], "truncated"),
    ("header-only.jpg", JPEG[:200], "truncated"),
    ("progressive-cut.jpg", PROGRESSIVE[: len(PROGRESSIVE) * 2 // 3], "truncated"),
    ("half.png", PNG[: len(PNG) // 2], "truncated"),
    ("half.gif", GIF[: len(GIF) // 2], "truncated"),
    ("signature-only.png", PNG[:40], "corrupt header"),
    ("zero-width.png", png_bytes(0, 10), "corrupt header"),
    ("zero-height.png", png_bytes(10, 0), "corrupt header"),
    # 9000 x 9000 = 81 MP: above MAX_PIXELS (80 MP), below Pillow's own 89.5 MP warning. The
    # IDAT is junk: only a check made from the header, before decoding, says "bomb".
    ("bomb.png", png_bytes(9000, 9000, bit_depth=1), "decompression bomb"),
    # 400 MP: Pillow's own DecompressionBombError fires first; same reason.
    ("huge-bomb.png", png_bytes(20000, 20000, bit_depth=1), "decompression bomb"),
]


@pytest.mark.parametrize("name, payload, reason", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_unreadable_files_become_read_errors_with_a_reason(tmp_path, name, payload, reason):
    path = write(tmp_path, name, payload)
    with pytest.raises(ImageReadError) as info:
        decode_image(path)
    assert info.value.reason == reason
    assert info.value.path == str(path)
    assert reason in reader.REASONS


def test_zero_dimension_headers_of_other_formats(tmp_path):
    bmp = bytearray(encode(Image.new("RGB", (4, 4)), "BMP"))
    bmp[18:22] = struct.pack("<i", 0)  # biWidth = 0
    jpeg = bytearray(encode(Image.new("RGB", (16, 16)), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 7] = b"\0\0"  # height = 0
    for name, data in [("w0.bmp", bmp), ("h0.jpg", jpeg)]:
        with pytest.raises(ImageReadError) as info:
            decode_image(write(tmp_path, name, bytes(data)))
        assert info.value.reason == "corrupt header"


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: d / "missing.jpg", "file not found"),
        (lambda d: write(d, "plain.jpg", JPEG) / "child.jpg", "file not found"),  # parent is a file
        (lambda d: (d / "folder.jpg").mkdir() or d / "folder.jpg", "not a file"),
        pytest.param(
            lambda d: os.mkfifo(d / "pipe.jpg") or d / "pipe.jpg",  # must not block on open()
            "not a file",
            marks=pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here"),
        ),
    ],
    ids=["missing", "parent-is-file", "directory", "fifo"],
)
def test_paths_that_are_not_readable_files(tmp_path, make, reason):
    with pytest.raises(ImageReadError) as info:
        decode_image(make(tmp_path))
    assert info.value.reason == reason


def test_permission_denied(tmp_path, monkeypatch):
    path = write(tmp_path, "secret.jpg", JPEG)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make open() refuse like it would for a user
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(reader, "open", refuse, raising=False)
    try:
        with pytest.raises(ImageReadError) as info:
            decode_image(path)
    finally:
        path.chmod(0o644)
    assert info.value.reason == "permission denied"


def test_limits_are_read_at_call_time(tmp_path, monkeypatch):
    path = write(tmp_path, "ok.png", PNG)
    monkeypatch.setattr(reader, "MAX_PIXELS", 40 * 30 - 1)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        decode_image(path)
    monkeypatch.setattr(reader, "MAX_PIXELS", 40 * 30)
    assert decode_image(path).shape == (30, 40, 3)
    monkeypatch.setattr(reader, "MAX_FILE_BYTES", len(PNG) - 1)
    with pytest.raises(ImageReadError) as info:
        decode_image(path)
    assert info.value.reason == "file too large"


def test_own_pixel_limit_holds_when_pillow_limit_is_disabled(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = write(tmp_path, "bomb.png", png_bytes(20000, 20000, bit_depth=1))
    with pytest.raises(ImageReadError) as info:
        decode_image(path)
    assert info.value.reason == "decompression bomb"


TRUNCATED = [b for b in BAD_FILES if b[2] == "truncated" and b[0] != "header-only.jpg"]


@pytest.mark.parametrize("name, payload, reason", TRUNCATED, ids=[b[0] for b in TRUNCATED])
def test_truncated_files_fail_even_if_pillow_is_told_to_accept_them(tmp_path, monkeypatch, name, payload, reason):
    # Kaggle notebooks often set this global; Pillow then returns half-grey images silently.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageReadError) as info:
        decode_image(write(tmp_path, name, payload))
    assert info.value.reason == "truncated"


def test_complete_files_are_not_flagged_as_truncated(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for name, data in [("a.jpg", JPEG), ("b.jpg", PROGRESSIVE), ("c.png", PNG), ("d.gif", GIF)]:
        assert decode_image(write(tmp_path, name, data)).dtype == np.uint8
    # PNG without its IEND chunk: every pixel is there, so it is used.
    assert decode_image(write(tmp_path, "no-iend.png", PNG[:-12])).shape == (30, 40, 3)


def test_import_and_decoding_leave_pillow_globals_alone(tmp_path):
    code = (
        "import numpy\n"
        "from PIL import Image, ImageFile\n"
        "before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)\n"
        "import warnings; filters = list(warnings.filters)\n"
        "from catdog_features.features import reader\n"
        f"reader.decode_image({str(write(tmp_path, 'x.png', PNG))!r})\n"
        "try:\n"
        f"    reader.decode_image({str(write(tmp_path, 'y.jpg', JPEG[:-2]))!r})\n"
        "except reader.ImageReadError:\n"
        "    pass\n"
        "after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)\n"
        "assert before == after and after[1] is False, (before, after)\n"
        "assert list(warnings.filters) == filters\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_read_error_pickles_with_its_reason():
    err = ImageReadError("truncated", "/data/x.jpg", "image file is truncated")
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.path, back.detail, str(back)) == (err.reason, err.path, err.detail, str(err))
    assert "truncated" in str(err) and "/data/x.jpg" in str(err)


# --- conversions --------------------------------------------------------------------------


def _u16_ramp():
    return np.array([[0, 257, 257 * 100, 32767, 65535, 128]], dtype=np.uint16).repeat(2, axis=0)


_U16_EXPECTED = np.array([[0, 1, 100, 127, 255, 0]], dtype=np.uint8).repeat(2, axis=0)


def _palette_with_transparency():
    img = Image.new("P", (4, 2))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putdata([0, 1, 1, 0, 1, 1, 0, 0])
    return encode(img, "PNG", transparency=0)


def _animated_gif():
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _rgba_png():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent black -> white
    rgba[0, 1] = (0, 0, 0, 128)  # half-transparent black -> 127
    rgba[0, 2] = (10, 200, 30, 255)  # opaque -> unchanged
    rgba[1] = (255, 0, 0, 255)
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def _check_rgba(out):
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (127, 127, 127)
    assert tuple(out[0, 2]) == (10, 200, 30)
    assert (out[1] == (255, 0, 0)).all()


def _check_u16(out):
    assert (out == _U16_EXPECTED[:, :, None]).all(), out[:, :, 0]


def _close(expected, tol=12):
    expected = np.asarray(expected, dtype=np.int16)
    return lambda out: np.abs(out.astype(np.int16) - expected).max() <= tol


CONVERTIBLE = [
    # name, file name, bytes, (H, W), check(out) -> bool or asserts
    ("rgb-jpeg", "a.jpg", JPEG, (30, 40), lambda o: np.abs(o.astype(int) - PHOTO).mean() < 3),
    ("rgb-png", "a.png", PNG, (30, 40), lambda o: (o == ARR).all()),
    ("gray-jpeg", "g.jpg", encode(Image.fromarray(ARR).convert("L"), "JPEG"), (30, 40),
     lambda o: (o[..., 0] == o[..., 1]).all() and (o[..., 1] == o[..., 2]).all()),
    ("gray-png", "g.png", encode(Image.fromarray(ARR).convert("L"), "PNG"), (30, 40),
     lambda o: (o[..., 0] == np.asarray(Image.fromarray(ARR).convert("L"))).all()),
    ("bilevel-png", "b.png", encode(Image.fromarray(ARR).convert("1"), "PNG"), (30, 40),
     lambda o: set(np.unique(o)) <= {0, 255}),
    ("la-png", "la.png", encode(Image.new("LA", (3, 2), (0, 0)), "PNG"), (2, 3), lambda o: (o == 255).all()),
    ("cmyk-jpeg", "c.jpg", encode(Image.new("RGB", (16, 8), (200, 30, 40)).convert("CMYK"), "JPEG"), (8, 16),
     _close([200, 30, 40])),
    ("palette-png", "p.png", encode(Image.fromarray(ARR).convert("P"), "PNG"), (30, 40),
     lambda o: (o == np.asarray(Image.fromarray(ARR).convert("P").convert("RGB"))).all()),
    ("palette-transparent-png", "pt.png", _palette_with_transparency(), (2, 4),
     lambda o: (o.reshape(-1, 3).tolist() == [[255, 255, 255], [255, 0, 0], [255, 0, 0], [255, 255, 255],
                                              [255, 0, 0], [255, 0, 0], [255, 255, 255], [255, 255, 255]])),
    ("rgba-png", "rgba.png", _rgba_png(), (2, 3), _check_rgba),
    ("rgb-colour-key-png", "key.png",
     encode(Image.fromarray(np.array([[[1, 2, 3], [9, 9, 9]]], np.uint8)), "PNG", transparency=(1, 2, 3)), (1, 2),
     lambda o: o.tolist() == [[[255, 255, 255], [9, 9, 9]]]),
    ("16bit-png", "d.png", encode(Image.fromarray(_u16_ramp()), "PNG"), (2, 6), _check_u16),
    ("16bit-big-endian-tiff", "d.tif",
     encode(Image.frombytes("I;16B", (6, 2), _u16_ramp().astype(">u2").tobytes()), "TIFF"), (2, 6), _check_u16),
    ("32bit-int-tiff-16bit-range", "i.tif", encode(Image.fromarray(_u16_ramp().astype(np.int32)), "TIFF"), (2, 6),
     _check_u16),
    ("32bit-int-tiff-wide-range", "iw.tif",
     encode(Image.fromarray(np.array([[-1000, 0, 1000]], np.int32)), "TIFF"), (1, 3),
     lambda o: o[0, :, 0].tolist() == [0, 128, 255]),
    ("float-tiff-unit-range", "f.tif", encode(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)), "TIFF"),
     (1, 3), lambda o: o[0, :, 0].tolist() == [0, 128, 255]),
    ("png-named-jpg", "png.jpg", PNG, (30, 40), lambda o: (o == ARR).all()),
    ("bmp-named-jpg", "bmp.jpg", encode(Image.fromarray(ARR), "BMP"), (30, 40), lambda o: (o == ARR).all()),
    ("animated-gif-named-jpg", "anim.jpg", _animated_gif(), (6, 8), lambda o: (o == (255, 0, 0)).all()),
    ("webp", "w.webp", encode(Image.fromarray(ARR), "WEBP", lossless=True), (30, 40), lambda o: (o == ARR).all()),
    ("corrupt-exif-jpeg", "ce.jpg", encode(Image.fromarray(PHOTO), "JPEG", quality=95, exif=b"Exif\0\0garbage!!"),
     (30, 40), lambda o: np.abs(o.astype(int) - PHOTO).mean() < 3),
]


@pytest.mark.parametrize("name, filename, payload, hw, check", CONVERTIBLE, ids=[c[0] for c in CONVERTIBLE])
def test_every_convertible_kind_decodes_to_rgb_uint8(tmp_path, name, filename, payload, hw, check):
    out = decode_image(write(tmp_path, filename, payload))
    assert out.dtype == np.uint8
    assert out.shape == (*hw, 3)
    assert out.flags.writeable and out.flags.c_contiguous
    result = check(out)
    assert result is None or bool(result)


# EXIF orientation -> what a viewer shows, written independently of Pillow with numpy.
ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),  # stored image must be turned 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = blocks()
    path = write(tmp_path, f"o{orientation}.jpg", encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif))
    out = decode_image(path)
    expected = ORIENTATIONS[orientation](stored)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).mean() < 8


# --- resizing and JPEG draft --------------------------------------------------------------


def test_resize_image_is_pillow_bilinear_to_a_square():
    out = resize_image(ARR, 17)
    assert out.dtype == np.float32 and out.shape == (17, 17, 3)
    expected = np.asarray(Image.fromarray(ARR).resize((17, 17), Image.Resampling.BILINEAR)).astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    assert 0 <= out.min() and out.max() <= 255
    assert "bilinear" in reader.READER_VERSION and Image.__version__ in reader.READER_VERSION
    same = resize_image(smooth(12, 12), 12)
    np.testing.assert_array_equal(same, smooth(12, 12).astype(np.float32))


@pytest.mark.parametrize(
    "rgb, size",
    [
        (ARR.astype(np.float32), 8),
        (ARR[:, :, 0], 8),
        (ARR[:, :, :2].copy(), 8),
        (np.zeros((0, 4, 3), np.uint8), 8),
        ([[1, 2, 3]], 8),
        (ARR, 0),
        (ARR, 2.5),
        (ARR, True),
    ],
    ids=["float", "2d", "2-channels", "empty", "list", "size-0", "size-float", "size-bool"],
)
def test_resize_image_rejects_bad_input(rgb, size):
    with pytest.raises(ValueError, match="Received"):
        resize_image(rgb, size)


@pytest.mark.parametrize(
    "width, height, size, scale",
    [(500, 375, 224, 1), (1000, 800, 224, 1), (1000, 800, 200, 2), (1000, 800, 100, 4),
     (4000, 3000, 224, 4), (4000, 3000, 100, 8), (4000, 3000, 20, 8), (800, 4000, 100, 4)],
)
def test_draft_scale_keeps_the_short_side_at_least_twice_the_size(width, height, size, scale):
    assert reader.draft_scale(width, height, size) == scale
    short, margin = min(width, height), reader.DRAFT_MARGIN
    assert scale == 1 or short / scale >= margin * size  # reduced, but still >= 2x the size
    assert scale == 8 or short / (2 * scale) < margin * size  # and reduced as far as allowed


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    """A 1000 x 800 JPEG: large enough for draft decoding at small sizes."""
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    Image.fromarray(smooth(800, 1000)).save(path, quality=90)
    return path


def test_draft_decodes_large_jpegs_at_reduced_scale(big_jpeg):
    assert decode_image(big_jpeg).shape == (800, 1000, 3)
    assert decode_image(big_jpeg, target_size=224).shape == (800, 1000, 3)  # 800 < 4 * 224
    assert decode_image(big_jpeg, target_size=100).shape == (200, 250, 3)  # scale 4
    reduced = resize_image(decode_image(big_jpeg, target_size=100), 100)
    full = resize_image(decode_image(big_jpeg), 100)
    assert np.abs(reduced - full).mean() < 3  # same picture, slightly different numerics


def test_each_size_is_independent_of_the_other_sizes_requested(big_jpeg, monkeypatch):
    calls = []
    original = reader._decode_opened
    monkeypatch.setattr(reader, "_decode_opened", lambda *a: calls.append(a[3]) or original(*a))
    together = read_image(big_jpeg, [100, 150, 224])
    # short side 800: size 100 -> scale 4, 150 -> scale 2, 224 -> full size: three decodes
    assert sorted(calls, key=str) == sorted([100, 150, None], key=str)
    for size in (100, 150, 224):
        alone = read_image(big_jpeg, size)
        np.testing.assert_array_equal(together[size], alone[size])
        assert together[size].shape == (size, size, 3) and together[size].dtype == np.uint8
    calls.clear()
    read_image(big_jpeg, [224, 299, 380])  # all scale 1 -> one decode at full size
    assert calls == [None]


# --- read_batches -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """23 paths, good and bad mixed, with the bad positions known."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(1)
    bad = {2: ("empty file", b""), 3: ("truncated", JPEG[:-2]), 9: ("not an image", b"<html></html>"),
           10: ("file not found", None), 11: ("empty file", b""), 22: ("truncated", PNG[: len(PNG) // 2])}
    paths = []
    for i in range(23):
        if i in bad:
            data = bad[i][1]
            path = root / f"{i}.jpg"
            if data is not None:
                path.write_bytes(data)
        else:
            h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            path = root / (f"{i}.png" if i % 2 else f"{i}.jpg")
            Image.fromarray(arr).save(path)
        paths.append(str(path))
    return paths, {pos: reason for pos, (reason, _) in bad.items()}


SIZES = (8, 13)


def _same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.start, x.stop, x.failures) == (y.start, y.stop, y.failures)
        np.testing.assert_array_equal(x.ok, y.ok)
        assert x.images.keys() == y.images.keys()
        for s in x.images:
            np.testing.assert_array_equal(x.images[s], y.images[s])


@pytest.mark.parametrize("num_workers, prefetch", [(0, 2), (1, 0), (3, 2)])
def test_batches_are_aligned_to_positions_and_account_for_every_input(corpus, num_workers, prefetch):
    paths, bad = corpus
    batches = list(read_batches(paths, SIZES, 5, num_workers=num_workers, prefetch=prefetch))
    assert [(b.start, b.stop) for b in batches] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    rows = failures = 0
    for b in batches:
        assert len(b.ok) + len(b.failures) == b.stop - b.start
        assert b.ok.dtype == np.int64 and (np.diff(b.ok) > 0).all()
        assert all(b.start <= p < b.stop for p in b.ok)
        for s in SIZES:
            assert b.images[s].dtype == np.float32 and b.images[s].shape == (len(b.ok), s, s, 3)
        for pos, path, reason in b.failures:
            assert b.start <= pos < b.stop and path == paths[pos] and bad[pos] == reason
        for j, pos in enumerate(b.ok):  # row j is the image at position ok[j]
            expected = read_image(paths[pos], SIZES)
            for s in SIZES:
                np.testing.assert_array_equal(b.images[s][j], expected[s].astype(np.float32))
        rows += len(b.ok)
        failures += len(b.failures)
    assert rows + failures == len(paths)
    assert sorted(p for b in batches for p, _, _ in b.failures) == sorted(bad)


def test_windows_give_the_same_batches_as_a_full_run(corpus):
    paths, _ = corpus
    full = list(read_batches(paths, SIZES, 5, num_workers=2))
    resumed = list(read_batches(paths, SIZES, 5, start=10, num_workers=2))
    _same_batches(resumed, full[2:])
    middle = list(read_batches(paths, SIZES, 5, start=5, stop=15, num_workers=0))
    _same_batches(middle, full[1:3])
    assert [(b.start, b.stop) for b in read_batches(paths, SIZES, 4, start=7, stop=16)] == [(7, 11), (11, 15), (15, 16)]
    assert list(read_batches(paths, SIZES, 5, start=23)) == []
    assert list(read_batches(paths, SIZES, 5, start=4, stop=4)) == []


def test_one_decode_per_file_for_all_sizes(corpus, monkeypatch):
    paths, bad = corpus
    reads, decodes = [], []
    read_file, decode_opened = reader._read_file, reader._decode_opened
    monkeypatch.setattr(reader, "_read_file", lambda p: reads.append(p) or read_file(p))
    monkeypatch.setattr(reader, "_decode_opened", lambda *a: decodes.append(a[2]) or decode_opened(*a))
    batches = list(read_batches(paths, (8, 13, 21, 8), 6, num_workers=2))
    assert set(batches[0].images) == {8, 13, 21}  # duplicate size requested once
    assert sorted(reads) == sorted(paths)  # every file read exactly once
    opened = [p for i, p in enumerate(paths) if bad.get(i) not in ("file not found", "empty file", "not an image")]
    assert sorted(decodes) == sorted(opened)  # and decoded once, whatever the number of sizes


def test_transform_is_applied_before_resizing(corpus):
    paths, _ = corpus
    flip = lambda rgb: rgb[:, ::-1]  # noqa: E731  (a non-contiguous view is fine)
    plain = list(read_batches(paths, [9], 8))
    flipped = list(read_batches(paths, [9], 8, transform=flip))
    for a, b in zip(plain, flipped):
        np.testing.assert_array_equal(a.ok, b.ok)
        for j, pos in enumerate(b.ok):
            expected = resize_image(flip(decode_image(paths[pos])), 9)
            np.testing.assert_array_equal(b.images[9][j], expected)
        assert not np.array_equal(a.images[9], b.images[9])
    crop = list(read_batches(paths[:2], [5], 2, transform=lambda rgb: rgb[2:-2, 2:-2]))
    assert crop[0].images[5].shape == (len(crop[0].ok), 5, 5, 3)


@pytest.mark.parametrize(
    "transform, error",
    [(lambda rgb: rgb.astype(np.float32), ValueError), (lambda rgb: 1 / 0, ZeroDivisionError)],
    ids=["wrong-dtype", "raises"],
)
def test_a_broken_transform_stops_the_run_instead_of_failing_every_file(corpus, transform, error):
    paths, _ = corpus
    with pytest.raises(error):
        list(read_batches(paths, [8], 4, num_workers=2, transform=transform))


def _reader_threads():
    return {t for t in threading.enumerate() if t.name.startswith("catdog-reader") and t.is_alive()}


def test_closing_early_cancels_queued_work_and_stops_the_pool(tmp_path, monkeypatch):
    paths = [str(write(tmp_path, f"{i}.png", PNG)) for i in range(60)]
    started = []
    original = reader.read_image

    def slow(path, sizes, transform=None):
        started.append(path)
        time.sleep(0.01)
        return original(path, sizes, transform)

    monkeypatch.setattr(reader, "read_image", slow)
    before = _reader_threads()
    gen = read_batches(paths, [8], 4, num_workers=2, prefetch=1)
    first = next(gen)
    assert (first.start, first.stop, len(first.ok)) == (0, 4, 4)
    assert _reader_threads() - before  # the pool is running
    gen.close()
    assert not (_reader_threads() - before)
    n = len(started)
    assert n <= 4 + 4 + 2  # this batch, one prefetched batch, at most the two running tasks
    time.sleep(0.05)
    assert len(started) == n  # nothing runs after close()


def test_consumer_errors_and_abandoned_generators_release_the_pool(corpus):
    paths, _ = corpus
    before = _reader_threads()
    with pytest.raises(RuntimeError, match="consumer failed"):
        with contextlib.closing(read_batches(paths, [8], 3, num_workers=2)) as batches:
            for _ in batches:
                raise RuntimeError("consumer failed")
    assert not (_reader_threads() - before)
    gen = read_batches(paths, [8], 3, num_workers=2)
    next(gen)
    del gen
    gc.collect()
    assert not (_reader_threads() - before)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": 2.0},
        {"start": -1},
        {"start": 5, "stop": 4},
        {"stop": 24},
        {"num_workers": -1},
        {"prefetch": -1},
        {"sizes": []},
        {"sizes": [0]},
        {"sizes": "224"},
        {"transform": "flip"},
        {"paths": "one/path.jpg"},
    ],
    ids=lambda kw: ",".join(f"{k}={v!r}" for k, v in kw.items()),
)
def test_read_batches_rejects_bad_arguments_immediately(corpus, kwargs):
    args = {"paths": corpus[0], "sizes": [8], "batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match="Received"):
        read_batches(**args)  # raised by the call, before any iteration


def test_read_batches_rejects_non_path_entries():
    with pytest.raises(TypeError, match="Received: None"):
        read_batches(["a.jpg", None], [8], 4)


def test_real_sample_images_all_decode(shared_data):
    paths = sorted(str(p) for p in shared_data.glob("*/*/*.jpg"))
    assert len(paths) > 400
    failures = [f for b in read_batches(paths, [16], 64) for f in b.failures]
    assert failures == []
