"""extract_features(): kill -9 + resume is bit-identical, cache hits do no model work, one pass."""

import os
import shutil
import signal
from collections import Counter

import h5py
import numpy as np
import pytest
from PIL import Image

from catdog_features.features import reader
from catdog_features.features.backbones import BackboneSpec
from catdog_features.features.cache import CacheWarning
from catdog_features.features.extract import extract_features, extract_with_report
from catdog_features.features.mapper import Mapper
from catdog_features.features.reader import decode_image
from extract_helpers import make_images, run_python

SMALL = dict(weights=None, image_size=32, batch_size=4, progress=False)
TWO = ("VGG16", "MobileNetV2")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """13 inputs (12 images + 1 HTML file named .jpg): 4 batches of 4, the last one partial."""
    return make_images(tmp_path_factory.mktemp("extract"), n_per_class=6, bad=["cat.100.jpg"], size=40)


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    """An uninterrupted extraction of both backbones."""
    cache_dir = tmp_path_factory.mktemp("ref-cache")
    return extract_features(images, backbones=TWO, cache_dir=cache_dir, **SMALL)


def _assert_identical(fs, ref):
    assert list(fs.ids) == list(ref.ids)
    assert fs.failed == ref.failed
    assert fs.labels.tolist() == ref.labels.tolist()
    for name in ref.backbones:
        assert fs[name].dtype == np.float32
        assert np.array_equal(fs[name], ref[name]), name  # bit-identical, not allclose


def test_reference_accounting(reference):
    assert len(reference) == 12 and [os.path.basename(p) for p, _ in reference.failed] == ["cat.100.jpg"]
    assert reference.failed[0][1] == "not an image"
    assert reference.dims == {"VGG16": 512, "MobileNetV2": 1280}
    assert reference.cache_hits == {"VGG16": False, "MobileNetV2": False}


KILL_SCRIPT = """
import sys
from catdog_features.features.extract import extract_features
extract_features(sys.argv[1], backbones=("VGG16", "MobileNetV2"), cache_dir=sys.argv[2], weights=None,
                 image_size=32, batch_size=4, progress=False)
print("not killed")
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_at, committed", [
    # SIGKILL after the 3rd batch's rows were flushed but before they were committed:
    # both entries hold 8 committed inputs, VGG16 also 3-4 uncommitted rows to drop.
    ("append:3", {"VGG16": 8, "MobileNetV2": 8}),
])
def test_sigkill_mid_extraction_then_rerun_is_bit_identical(images, reference, tmp_path, kill_at, committed):
    cache_dir = tmp_path / "cache"
    proc = run_python(KILL_SCRIPT.replace("sys.argv[1]", repr(str(images))).replace("sys.argv[2]", repr(str(cache_dir))),
                      {"CATDOG_FEATURES_TEST_KILL": kill_at})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert "not killed" not in proc.stdout
    files = {name: cache_dir / os.path.basename(path) for name, path in reference.cache_files.items()}
    for name, path in files.items():
        with h5py.File(path, "r", locking=False) as f:
            assert f.attrs["committed_inputs"] == committed[name] and not f.attrs["complete"]
            if name == "VGG16":  # the killed batch's rows are on disk, beyond the commit
                assert len(f["positions"]) + len(f["failures/position"]) > committed[name]

    fs, report = extract_with_report(images, backbones=TWO, cache_dir=cache_dir, **SMALL)
    assert {n: b.resumed_from for n, b in report.backbones.items()} == committed
    assert {n: b.computed for n, b in report.backbones.items()} == {n: 13 - c for n, c in committed.items()}
    assert fs.cache_hits == {"VGG16": False, "MobileNetV2": False}
    _assert_identical(fs, reference)
    for path in files.values():
        with h5py.File(path, "r", locking=False) as f:
            assert f.attrs["complete"] and f.attrs["committed_inputs"] == 13


@pytest.fixture
def no_models(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built on a cache hit")

    monkeypatch.setattr(BackboneSpec, "build", refuse)
    monkeypatch.setattr(Mapper, "__init__", refuse)


def test_cache_hit_does_no_model_work(images, reference, no_models):
    cache_dir = os.path.dirname(reference.cache_files["VGG16"])
    fs, report = extract_with_report(images, backbones=TWO, cache_dir=cache_dir, **SMALL)
    assert fs.cache_hits == {"VGG16": True, "MobileNetV2": True}
    assert report.processed == 0 and report.pass_seconds == 0
    _assert_identical(fs, reference)
    # the same through a list of paths and a backbone subset in another order
    sub = extract_features(sorted(str(p) for p in images.iterdir()), backbones="mobilenetv2,vgg16",
                           cache_dir=cache_dir, **SMALL)
    assert sub.backbones == ("MobileNetV2", "VGG16")
    _assert_identical(sub, reference)


def test_cache_hit_does_not_import_tensorflow(images, reference):
    cache_dir = os.path.dirname(reference.cache_files["VGG16"])
    code = f"""
        import sys
        from catdog_features.features.extract import extract_features
        fs = extract_features({str(images)!r}, backbones=("VGG16", "MobileNetV2"), cache_dir={cache_dir!r},
                              weights=None, image_size=32, batch_size=4, progress=False)
        print(len(fs), all(fs.cache_hits.values()), "tensorflow" in sys.modules)
        """
    proc = run_python(code)
    assert proc.stdout.split() == ["12", "True", "False"], proc.stderr[-2000:]


def test_adding_a_backbone_computes_only_that_one(images, reference, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    shutil.copy(reference.cache_files["VGG16"], cache_dir.mkdir() or cache_dir)
    built = []
    original = BackboneSpec.build

    def spy(self, *args, **kwargs):
        built.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BackboneSpec, "build", spy)
    fs = extract_features(images, backbones=TWO, cache_dir=cache_dir, **SMALL)
    assert built == ["MobileNetV2"]
    assert fs.cache_hits == {"VGG16": True, "MobileNetV2": False}
    _assert_identical(fs, reference)


def test_one_pass_decodes_each_file_once_for_all_backbones(images, tmp_path, monkeypatch):
    calls = Counter()
    sizes_seen = set()
    original = reader.read_image

    def counting(path, sizes, transform=None):
        calls[os.path.basename(path)] += 1
        sizes_seen.add(tuple(sizes))
        return original(path, sizes, transform)

    monkeypatch.setattr(reader, "read_image", counting)
    fs = extract_features(images, backbones=TWO, cache_dir=tmp_path, **SMALL)
    assert len(calls) == 13 and set(calls.values()) == {1}
    assert sizes_seen == {(32,)}  # same size for every backbone: one resize, shared
    assert len(fs) == 12


def test_corrupt_cache_file_is_recomputed_with_a_warning(images, reference, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    target = cache_dir / os.path.basename(reference.cache_files["VGG16"])
    target.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(2000))
    with pytest.warns(CacheWarning, match="was unusable"):
        fs, report = extract_with_report(images, backbones=["VGG16"], cache_dir=cache_dir, **SMALL)
    assert report.backbones["VGG16"].recovered and not fs.cache_hits["VGG16"]
    assert np.array_equal(fs["VGG16"], reference["VGG16"])
    assert len(list(cache_dir.glob("*.corrupt-*"))) == 1


def test_hflip_view_equals_plain_features_of_mirrored_files(images, tmp_path):
    mirrored = tmp_path / "mirrored"
    mirrored.mkdir()
    for path in sorted(images.glob("*.jpg"))[:5]:
        try:
            rgb = decode_image(path)
        except reader.ImageReadError:
            continue
        Image.fromarray(np.ascontiguousarray(rgb[:, ::-1])).save(mirrored / (path.stem + ".png"))
        shutil.copy(path, tmp_path / path.name)
    originals = sorted(tmp_path.glob("*.jpg"))
    flipped = extract_features(originals, backbones=["VGG16"], cache_dir=tmp_path / "c", view="hflip", **SMALL)
    plain = extract_features(originals, backbones=["VGG16"], cache_dir=tmp_path / "c", **SMALL)
    expected = extract_features(sorted(mirrored.glob("*.png")), backbones=["VGG16"], cache_dir=tmp_path / "c", **SMALL)
    assert list(flipped.ids) == list(expected.ids)
    assert np.array_equal(flipped["VGG16"], expected["VGG16"])
    assert not np.allclose(flipped["VGG16"], plain["VGG16"])
    assert flipped.cache_files["VGG16"] != plain.cache_files["VGG16"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(view="vflip"), r"Unknown view. Received: view='vflip'"),
    (dict(batch_size=0), r"Invalid batch_size. Received: batch_size=0"),
    (dict(image_size=20), r"Image size too small for VGG16. Received: image_size=20; expected at least 32"),
    (dict(image_size=-1), r"Invalid image_size"),
    (dict(backbones="VGG16,ResNet51"), r"Unknown backbone. Received: backbone='ResNet51'. Expected one of: .*VGG16"),
    (dict(backbones=("VGG16", "VGG19"), weights="w.h5"), r"one weights file .* for 2 backbones"),
    (dict(weights=3), r"Invalid weights"),
])
def test_argument_errors_name_the_bad_value(images, tmp_path, kwargs, match):
    args = dict(backbones=["VGG16"], cache_dir=tmp_path, weights=None, image_size=32, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        extract_features(images, **args)


def test_weights_dict_per_backbone(images, reference, tmp_path):
    fs = extract_features(images, backbones=TWO, cache_dir=os.path.dirname(reference.cache_files["VGG16"]),
                          weights={"vgg16": None, "MobileNetV2": None}, image_size=32, batch_size=4, progress=False)
    assert all(fs.cache_hits.values())
    _assert_identical(fs, reference)


def test_mapper_pads_to_one_shape_and_never_retraces():
    from catdog_features.features.backbones import get_backbone

    mapper = Mapper(get_backbone("VGG16"), None, 32, 4)
    x = np.random.default_rng(0).uniform(0, 255, size=(4, 32, 32, 3)).astype(np.float32)
    full = mapper(x)
    part = mapper(x[:3])
    assert part.shape == (3, 512) and mapper(x[:0]).shape == (0, 512)
    np.testing.assert_allclose(part, full[:3], rtol=1e-5, atol=1e-6)
    assert mapper._fn.experimental_get_tracing_count() == 1
