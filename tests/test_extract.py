"""extract_features() through the content-addressed store: each content goes through each
backbone once, ever; kill -9 and a full disk lose nothing committed; damage is recomputed."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter

import h5py
import numpy as np
import pytest
from PIL import Image

from catdog_features.features import fingerprint, reader, shard
from catdog_features.features.backbones import BackboneSpec, get_backbone
from catdog_features.features.extract import FeatureWarning, extract_features, extract_with_report
from catdog_features.features.mapper import Mapper
from catdog_features.features.reader import decode_image
from catdog_features.features.shard import StoreFullError
from catdog_features.features.store import CacheWarning, FeatureStore
from catdog_features.synthetic import make_image
from extract_helpers import make_images, run_python

SMALL = dict(weights=None, image_size=32, batch_size=4, progress=False)
TWO = ("VGG16", "ResNet50")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """13 inputs: 12 images + 1 HTML file named .jpg."""
    return make_images(tmp_path_factory.mktemp("extract"), n_per_class=6, bad=["cat.100.jpg"], size=40)


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    """An uninterrupted extraction of both backbones into a fresh store."""
    return extract_features(images, backbones=TWO, cache_dir=tmp_path_factory.mktemp("ref-store"), **SMALL)


def _assert_identical(fs, ref):
    assert list(fs.ids) == list(ref.ids)
    assert fs.failed == ref.failed
    assert fs.labels.tolist() == ref.labels.tolist()
    for name in ref.backbones:
        assert fs[name].dtype == np.float32
        assert np.array_equal(fs[name], ref[name]), name  # bit-identical, not allclose


def _store_of(fs):
    return os.path.dirname(fs.cache_files["VGG16"])


def test_reference_accounting(reference):
    assert len(reference) == 12 and [os.path.basename(p) for p, _ in reference.failed] == ["cat.100.jpg"]
    assert reference.failed[0][1] == "not an image"
    assert reference.dims == {"VGG16": 512, "ResNet50": 2048}
    assert reference.cache_hits == {"VGG16": False, "ResNet50": False}


# --------------------------------------------------------------------------- content addressing
@pytest.fixture
def folder(images, tmp_path):
    target = tmp_path / "train"
    shutil.copytree(images, target)
    return target


def _computed(folder, store, **kw):
    fs, report = extract_with_report(folder, backbones=TWO, cache_dir=store, **dict(SMALL, **kw))
    return fs, {name: b.computed for name, b in report.backbones.items()}


def _edit_same_size_and_mtime(path):
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("change, computed", [
    ("nothing", 0),
    ("remove one image", 0),
    ("add one image", 1),
    ("rename one image", 0),
    ("duplicate bytes under a new name", 0),
    ("edit one image's bytes (same size and mtime)", 1),
    ("add two copies of one new image", 1),
])
def test_only_contents_not_yet_stored_are_computed(reference, folder, tmp_path, change, computed):
    store = tmp_path / "store"
    shutil.copytree(_store_of(reference), store)
    if change == "remove one image":
        (folder / "cat.2.jpg").unlink()
    elif change == "add one image":
        make_image(1, np.random.default_rng(99), 40).save(folder / "dog.99.jpg")
    elif change == "rename one image":
        os.rename(folder / "dog.3.jpg", folder / "dog.33.jpg")
    elif change.startswith("duplicate"):
        shutil.copy(folder / "dog.4.jpg", folder / "dog.44.jpg")
    elif change.startswith("edit"):
        _edit_same_size_and_mtime(folder / "cat.1.jpg")
    elif change.startswith("add two"):
        make_image(0, np.random.default_rng(98), 40).save(folder / "cat.98.jpg")
        shutil.copy(folder / "cat.98.jpg", folder / "cat.97.jpg")
    fs, computed_now = _computed(folder, store)
    assert computed_now == {"VGG16": computed, "ResNet50": computed}
    assert len(fs) + len(fs.failed) == len(list(folder.iterdir()))
    common = [i for i in fs.ids if i in set(reference.ids)]
    for name in TWO:  # rows of unchanged images are the stored ones, bit for bit
        ref_rows = {i: r for i, r in zip(reference.ids, reference[name])}
        got = {i: r for i, r in zip(fs.ids, fs[name])}
        changed = {"cat.1"} if change.startswith("edit") else set()
        assert all(np.array_equal(got[i], ref_rows[i]) for i in common if i not in changed)
    if change.startswith("duplicate"):
        assert np.array_equal(fs["VGG16"][list(fs.ids).index("dog.44")], fs["VGG16"][list(fs.ids).index("dog.4")])


def test_subsets_and_unions_are_served_by_lookup_and_stored_once(images, tmp_path):
    store = tmp_path / "store"
    files = sorted(str(p) for p in images.iterdir())
    half, computed_half = _computed(files[::2], store)
    full, computed_full = _computed(files, store)
    assert computed_full["VGG16"] == len(files) - 1 - computed_half["VGG16"]  # the HTML file is never computed
    again, computed_again = _computed(list(reversed(files)), store)
    assert computed_again == {"VGG16": 0, "ResNet50": 0}
    assert list(again.ids) == list(full.ids)  # order comes from the list, not the store
    rows = FeatureStore(store).extractors()[0].index()
    assert int((~rows.failure).sum()) == 12  # one row per content, however many lists


# --------------------------------------------------------------------------- crashes
KILL_SCRIPT = """
import sys
from catdog_features.features import shard
from catdog_features.features.extract import extract_features
calls = [0]
real = shard._fsync
def fsync(f):
    real(f)
    calls[0] += 1
    if calls[0] == {kill_after}:  # after a batch's data reached the disk, before its counter did
        import os, signal; os.kill(os.getpid(), signal.SIGKILL)
shard._fsync = fsync
extract_features({folder!r}, backbones=("VGG16", "ResNet50"), cache_dir={store!r}, weights=None,
                 image_size=32, batch_size=4, progress=False)
print("not killed")
"""


def test_kill_between_data_and_commit_then_rerun_is_bit_identical(images, reference, tmp_path):
    store = tmp_path / "store"
    proc = run_python(KILL_SCRIPT.format(kill_after=9, folder=str(images), store=str(store)))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    fs, report = extract_with_report(images, backbones=TWO, cache_dir=store, **SMALL)
    found = {n: b.found for n, b in report.backbones.items()}
    assert 0 < sum(found.values()) and all(12 <= b.computed + b.found <= 13 for b in report.backbones.values())
    _assert_identical(fs, reference)


@pytest.mark.slow
def test_sigkill_at_random_moments_over_several_rounds(images, reference, tmp_path):
    store = tmp_path / "store"
    code = f"""
        from catdog_features.features.extract import extract_features
        extract_features({str(images)!r}, backbones=("VGG16", "ResNet50"), cache_dir={str(store)!r}, weights=None,
                         image_size=32, batch_size=4, progress=False)
        """
    rng = np.random.default_rng(1)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shard.Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    import sys
    import textwrap
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(4.0, 9.0)))  # model builds take a few seconds; kill anywhere after
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    fs, report = extract_with_report(images, backbones=TWO, cache_dir=store, **SMALL)
    assert len(fs) + len(fs.failed) == 13
    _assert_identical(fs, reference)


def test_two_concurrent_extractions_of_overlapping_lists(images, reference, tmp_path):
    store = tmp_path / "store"
    files = sorted(str(p) for p in images.iterdir())
    code = """
        import sys
        from catdog_features.features.extract import extract_features
        fs = extract_features(sys.argv[1].split(","), backbones=("VGG16", "ResNet50"), cache_dir=sys.argv[2],
                              weights=None, image_size=32, batch_size=4, progress=False)
        print(len(fs), len(fs.failed))
        """
    import sys
    import textwrap
    env = dict(os.environ, PYTHONPATH=str(shard.Path(__file__).parents[1]))
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), ",".join(part), str(store)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for part in (files[:9], files[4:])]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    fs = extract_features(images, backbones=TWO, cache_dir=store, **SMALL)
    assert all(fs.cache_hits.values())
    _assert_identical(fs, reference)


# --------------------------------------------------------------------------- damage, disk full, old files
def test_flipped_byte_in_a_shard_is_recomputed_not_served(images, reference, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(_store_of(reference), store)
    from test_store import _flip_byte_in_features

    ex = next(e for e in FeatureStore(store).extractors() if e.config["name"] == "VGG16")
    _flip_byte_in_features(ex.shard_paths()[0])
    with pytest.warns(CacheWarning, match="is damaged"):
        fs, report = extract_with_report(images, backbones=TWO, cache_dir=store, **SMALL)
    assert report.backbones["VGG16"].computed > 0 and report.backbones["ResNet50"].computed == 0
    _assert_identical(fs, reference)


def test_full_disk_stops_cleanly_and_a_rerun_equals_an_uninterrupted_run(images, reference, tmp_path, monkeypatch):
    store = tmp_path / "store"
    real = shard.free_bytes
    budget = {"appends": 3}

    def free(folder):
        budget["appends"] -= 1
        return real(folder) if budget["appends"] >= 0 else 0

    monkeypatch.setattr(shard, "free_bytes", free)
    with pytest.raises(StoreFullError, match="disk holding the feature store is full"):
        extract_features(images, backbones=TWO, cache_dir=store, **SMALL)
    monkeypatch.setattr(shard, "free_bytes", real)
    fs, report = extract_with_report(images, backbones=TWO, cache_dir=store, **SMALL)
    assert sum(b.found for b in report.backbones.values()) > 0
    _assert_identical(fs, reference)


def test_old_per_list_cache_file_is_imported_not_recomputed(images, reference, tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    ex = FeatureStore(_store_of(reference)).extractors()
    vgg = next(e for e in ex if e.config["name"] == "VGG16")
    ids = [os.path.basename(p) for p in sorted(images.iterdir())]
    blake = [hashlib.blake2b((images / i).read_bytes(), digest_size=16).hexdigest() for i in ids]
    ok = [k for k, i in enumerate(ids) if i != "cat.100.jpg"]
    cfg = vgg.config
    old = {"format_version": 1, "backbone": {"name": "VGG16", **{k: cfg["backbone"][k] for k in
                                                                  ("module", "constructor", "preprocess", "pooling", "dim")}},
           "weights": cfg["weights"], "image_size": 32, "view": "plain", "reader_version": reader.READER_VERSION,
           "tensorflow": cfg["tensorflow"], "keras": cfg["keras"], "images": {"count": 13, "digest": "x"}}
    by_id = dict(zip([f"{os.path.splitext(i)[0]}" for i in ids], range(13)))
    rows = np.stack([reference["VGG16"][list(reference.ids).index(os.path.splitext(ids[k])[0])] for k in ok])
    with h5py.File(store / "VGG16-32-plain-0123456789abcdef.h5", "w") as f:
        f.attrs.update({"format_version": 1, "committed_inputs": 13, "complete": True, "config": json.dumps(old)})
        f["positions"] = np.array(ok)
        f["features"] = rows
        f["inputs/content_hash"] = np.array([b.encode() for b in blake])
        f["failures/position"] = np.array([ids.index("cat.100.jpg")])
        f["failures/reason"] = np.array([b"not an image"])
    assert by_id
    with pytest.warns(CacheWarning, match="old per-image-list format were moved"):
        fs, report = extract_with_report(images, backbones=["VGG16"], cache_dir=store, **SMALL)
    assert report.backbones["VGG16"].computed == 0  # every row came from the old file
    assert np.array_equal(fs["VGG16"], reference["VGG16"]) and fs.failed == reference.failed
    assert (store / "legacy" / "VGG16-32-plain-0123456789abcdef.h5").is_file()


# --------------------------------------------------------------------------- cache hits, one pass
@pytest.fixture
def no_models(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built on a cache hit")

    monkeypatch.setattr(BackboneSpec, "build", refuse)
    monkeypatch.setattr(Mapper, "__init__", refuse)


def test_cache_hit_does_no_model_work(images, reference, no_models):
    fs, report = extract_with_report(images, backbones=TWO, cache_dir=_store_of(reference), **SMALL)
    assert fs.cache_hits == {"VGG16": True, "ResNet50": True}
    assert report.processed == 0 and report.pass_seconds == 0
    _assert_identical(fs, reference)
    sub = extract_features(sorted(str(p) for p in images.iterdir()), backbones="resnet50,vgg16",
                           cache_dir=_store_of(reference), **SMALL)
    assert sub.backbones == ("ResNet50", "VGG16")
    _assert_identical(sub, reference)


def test_cache_hit_does_not_import_tensorflow(images, reference):
    code = f"""
        import sys
        from catdog_features.features.extract import extract_features
        fs = extract_features({str(images)!r}, backbones=("VGG16", "ResNet50"), cache_dir={_store_of(reference)!r},
                              weights=None, image_size=32, batch_size=4, progress=False)
        print(len(fs), all(fs.cache_hits.values()), "tensorflow" in sys.modules)
        """
    proc = run_python(code)
    assert proc.stdout.split() == ["12", "True", "False"], proc.stderr[-2000:]


def test_adding_a_backbone_computes_only_that_one(images, reference, tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    vgg = next(e for e in FeatureStore(_store_of(reference)).extractors() if e.config["name"] == "VGG16")
    shutil.copytree(vgg.root, store / vgg.root.name)
    built = []
    original = BackboneSpec.build

    def spy(self, *args, **kwargs):
        built.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BackboneSpec, "build", spy)
    fs = extract_features(images, backbones=TWO, cache_dir=store, **SMALL)
    assert built == ["ResNet50"]
    assert fs.cache_hits == {"VGG16": True, "ResNet50": False}
    _assert_identical(fs, reference)


def test_one_pass_decodes_each_file_once_for_all_backbones(images, tmp_path, monkeypatch):
    calls = Counter()
    sizes_seen = set()
    original = reader._decode_views

    def counting(data, path, sizes, views, digest):
        calls[os.path.basename(path)] += 1
        sizes_seen.add(tuple(sizes))
        return original(data, path, sizes, views, digest)

    monkeypatch.setattr(reader, "_decode_views", counting)
    fs = extract_features(images, backbones=TWO, cache_dir=tmp_path, **SMALL)
    assert len(calls) == 13 and set(calls.values()) == {1}
    assert sizes_seen == {(32,)}  # same size for every backbone: one resize, shared
    assert len(fs) == 12


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
    # same pixels at the same slot: the same bits
    assert np.allclose(flipped["VGG16"], expected["VGG16"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(flipped["VGG16"], plain["VGG16"])
    assert flipped.cache_files["VGG16"] != plain.cache_files["VGG16"]


# --------------------------------------------------------------------------- odd inputs
def test_entries_that_are_not_files_and_undecodable_names_are_failures(images, tmp_path):
    test = tmp_path / "test"
    test.mkdir()
    for k, src in enumerate(sorted(images.glob("dog.*.jpg"))[:3]):
        shutil.copy(src, test / f"{k + 1}.jpg")
    (test / "10.jpg").mkdir()  # a directory named like an image
    os.symlink(test / "nowhere.jpg", test / "11.jpg")  # a broken symlink
    os.symlink("13.jpg", test / "12.jpg")  # a symlink loop
    os.symlink("12.jpg", test / "13.jpg")
    os.mkfifo(test / "14.jpg")  # a FIFO must block neither the listing nor the reader
    weird = os.fsencode(str(test)) + b"/15-\xff\xfe.jpg"  # a legal, non-UTF-8 Linux file name
    shutil.copy(images / "cat.0.jpg", weird)
    fs, report = extract_with_report(test, backbones=["VGG16"], cache_dir=tmp_path / "store", **SMALL)
    reasons = {os.path.basename(p): r for p, r in fs.failed}
    assert reasons == {"10.jpg": "not a file", "11.jpg": "file not found", "12.jpg": "unreadable",
                       "13.jpg": "unreadable", "14.jpg": "not a file"}
    assert len(fs) == 4 and report.backbones["VGG16"].computed == 4
    assert "15-\udcff\udcfe" in list(fs.ids)


@pytest.mark.parametrize("kwargs, match", [
    (dict(view="vflip"), r"Unknown view. Received: view='vflip'"),
    (dict(precision="float64"), r"Unknown precision. Received: precision='float64'"),
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
    assert not any(tmp_path.iterdir())  # a bad call leaves nothing behind


def test_weights_dict_per_backbone(images, reference):
    fs = extract_features(images, backbones=TWO, cache_dir=_store_of(reference),
                          weights={"vgg16": None, "ResNet50": None}, image_size=32, batch_size=4, progress=False)
    assert all(fs.cache_hits.values())
    _assert_identical(fs, reference)


def test_constant_vectors_are_warned_about(images, tmp_path):
    with pytest.warns(FeatureWarning, match="MobileNetV2 vectors are \\(near\\) constant"):
        extract_features(images, backbones=["MobileNetV2"], cache_dir=tmp_path, **SMALL)


def test_extractor_key_changes_with_what_changes_vectors(tmp_path):
    spec = get_backbone("VGG16")
    base = fingerprint.extractor_key(fingerprint.extractor_config(spec, None, 32))
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"one")
    variants = [
        fingerprint.extractor_config(spec, None, 33),
        fingerprint.extractor_config(spec, None, 32, view="hflip"),
        fingerprint.extractor_config(spec, None, 32, precision="bfloat16"),
        fingerprint.extractor_config(get_backbone("VGG19"), None, 32),
        fingerprint.extractor_config(spec, "imagenet", 32),
        fingerprint.extractor_config(spec, str(weights), 32),
        fingerprint.extractor_config(spec, None, 32, versions={"tensorflow": "0.0", "keras": "0.0"}),
    ]
    keys = {fingerprint.extractor_key(c) for c in variants}
    assert len(keys) == len(variants) and base not in keys
    weights.write_bytes(b"two")
    assert fingerprint.extractor_key(fingerprint.extractor_config(spec, str(weights), 32)) not in keys


def test_mapper_pads_to_one_shape_and_never_retraces():
    mapper = Mapper(get_backbone("VGG16"), None, 32, 4)
    x = np.random.default_rng(0).uniform(0, 255, size=(4, 32, 32, 3)).astype(np.float32)
    full = mapper(x)
    part = mapper(x[:3])
    assert part.shape == (3, 512) and mapper(x[:0]).shape == (0, 512)
    np.testing.assert_allclose(part, full[:3], rtol=1e-5, atol=1e-6)
    assert mapper._fn.experimental_get_tracing_count() == 1


def test_bfloat16_rows_are_their_own_extractor_and_close_to_float32(images, reference):
    store = _store_of(reference)
    bf16, report = extract_with_report(images, backbones=["ResNet50"], cache_dir=store, precision="bfloat16", **SMALL)
    assert report.backbones["ResNet50"].computed == 12  # a float32 row never answers a bfloat16 request
    assert bf16.cache_files["ResNet50"] != reference.cache_files["ResNet50"] and bf16["ResNet50"].dtype == np.float32
    a, b = bf16["ResNet50"], reference["ResNet50"]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.99
