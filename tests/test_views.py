"""Views (issue 15): seeded augmentations and TTA crops as cached extractors; heads trained on
views; TTA chosen on OOF predictions only."""

import hashlib
import json
import os
from collections import Counter

import numpy as np
import pytest

from catdog_features.ensemble import fit_oof
from catdog_features.ensemble.tta import choose_tta
from catdog_features.features import compute, reader
from catdog_features.features.extract import extract_features, extract_with_report
from catdog_features.features.featureset import FeatureSet
from catdog_features.features.fingerprint import extractor_config, extractor_key
from catdog_features.features.backbones import get_backbone
from catdog_features.features.views import (
    CROP_ZOOM, ViewError, aug_params, aug_view, crop_box, crop_view, format_views, parse_views,
)
from catdog_features.heads import DenseHead
from catdog_features.run.config import parse_config
from catdog_features.run.values import ConfigError
from extract_helpers import make_images, run_python

SMALL = dict(weights=None, image_size=32, batch_size=4, progress=False)
VIEWS = ("plain", "hflip", "aug:0", "aug:1", "crop:c")
H1 = hashlib.sha256(b"image one").hexdigest()
H2 = hashlib.sha256(b"image two").hexdigest()


def _image(seed=0, shape=(60, 80, 3)):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("views"), n_per_class=4, bad=["cat.100.jpg"], size=48)


@pytest.fixture(scope="module")
def multi(images, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    fs, report = extract_with_report(images, backbones=["VGG16"], cache_dir=store, views=list(VIEWS), **SMALL)
    return store, fs, report


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize("spec, expected", [
    ("plain", ("plain",)),
    ("plain,hflip,aug:0-3", ("plain", "hflip", "aug:0", "aug:1", "aug:2", "aug:3")),
    (["plain", "aug:2-3", "aug:2"], ("plain", "aug:2", "aug:3")),
    ("crop:tl, crop:c ,hflip", ("crop:tl", "crop:c", "hflip")),
    ("aug:7", ("aug:7",)),
])
def test_parse_views(spec, expected):
    assert parse_views(spec) == expected
    assert parse_views(format_views(expected)) == expected


@pytest.mark.parametrize("spec, match", [
    ("vflip", r"Unknown view. Received: view='vflip'; expected one of 'plain', 'hflip', 'aug:<k>'"),
    ("aug:x", r"Received: view='aug:x'"),
    ("aug:-1", r"Received: view='aug:-1'"),
    ("aug:01", r"Received: view='aug:01'"),
    ("aug:5-2", r"Invalid view range. Received: 'aug:5-2'"),
    ("crop:middle", r"Received: view='crop:middle'.*crop:tl\|tr\|bl\|br\|c"),
    ("plain,,hflip", r"an empty item"),
    ([3], r"Received: 3 \(int\)"),
])
def test_bad_view_names_are_named_with_the_expected_forms(spec, match):
    with pytest.raises(ViewError, match=match):
        parse_views(spec)


def test_fingerprint_accepts_new_views_and_rejects_bad_ones_by_name():
    spec = get_backbone("VGG16")
    versions = {"tensorflow": "x", "keras": "y"}
    keys = {v: extractor_key(extractor_config(spec, None, 32, v, versions=versions)) for v in VIEWS + ("crop:tl",)}
    assert len(set(keys.values())) == len(keys)  # every view its own extractor
    assert "view_recipe" not in extractor_config(spec, None, 32, "hflip", versions=versions)  # old keys unchanged
    with pytest.raises(ValueError, match=r"Unknown view. Received: view='aug'"):
        extractor_config(spec, None, 32, "aug", versions=versions)


# --------------------------------------------------------------------------- transforms
def test_same_k_same_augmentation_different_k_or_image_different():
    rgb = _image()
    assert aug_params(H1, 3) == aug_params(H1, 3)
    assert np.array_equal(aug_view(rgb, H1, 3), aug_view(rgb.copy(), H1, 3))
    params = {aug_params(H1, k) for k in range(8)} | {aug_params(H2, k) for k in range(8)}
    assert len(params) == 16  # every (content, k) its own draw
    crops = {(p.top, p.left, p.height, p.width) for p in params}
    assert len(crops) == 16
    assert not np.array_equal(aug_view(rgb, H1, 0), aug_view(rgb, H1, 1))


def test_augmentation_is_the_same_in_a_fresh_process():
    here = [aug_view(_image(), H1, k) for k in range(3)]
    out = run_python(f"""
        import hashlib, numpy as np
        from catdog_features.features.views import aug_view
        rgb = np.random.default_rng(0).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
        print([hashlib.sha256(aug_view(rgb, {H1!r}, k).tobytes()).hexdigest() for k in range(3)])
    """, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([hashlib.sha256(x.tobytes()).hexdigest() for x in here])


@pytest.mark.parametrize("position, expected", [
    ("tl", (0, 0, 74, 100)),
    ("tr", (0, 35, 74, 135)),
    ("bl", (26, 0, 100, 100)),
    ("br", (26, 35, 100, 135)),
    ("c", (13, 17, 87, 117)),
])
def test_crop_views_are_corners_and_centre_at_zoom(position, expected):
    assert CROP_ZOOM == 1.35
    assert crop_box(100, 135, position) == expected
    rgb = _image(shape=(100, 135, 3))
    t, l, b, r = expected
    assert np.array_equal(crop_view(rgb, position), rgb[t:b, l:r])


def test_augmented_pixels_are_uint8_without_empty_corners():
    rgb = np.full((64, 64, 3), 200, np.uint8)
    for k in range(8):
        out = aug_view(rgb, H1, k)
        assert out.dtype == np.uint8 and out.ndim == 3 and min(out.shape[:2]) >= 16
        assert out.min() > 100  # rotated, then cropped inside: no black fill


# --------------------------------------------------------------------------- the store
def test_each_view_is_its_own_extractor_and_served_from_the_store(images, multi, monkeypatch):
    store, fs, report = multi
    assert fs.views == VIEWS and fs.view_name == "plain"
    assert len(fs) == 8 and len(fs.failed) == 1
    folders = {r["VGG16"].cache_file for r in report.views.values()}
    assert len(folders) == len(VIEWS)
    assert {v: r["VGG16"].computed for v, r in report.views.items()} == {v: 8 for v in VIEWS}
    assert report.backbones["VGG16"].computed == 8 * len(VIEWS)
    vectors = [fs.view(v)["VGG16"] for v in VIEWS]
    assert all(not np.allclose(vectors[0], x) for x in vectors[1:])

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built for stored rows")

    monkeypatch.setattr(compute, "build_mapper", refuse)
    monkeypatch.setattr("catdog_features.features.extract.build_mapper", refuse)
    again, rep2 = extract_with_report(images, backbones=["VGG16"], cache_dir=store, views=list(VIEWS), **SMALL)
    assert rep2.backbones["VGG16"].computed == 0 and rep2.backbones["VGG16"].cache_hit
    for v in VIEWS:
        assert np.array_equal(again.view(v)["VGG16"], fs.view(v)["VGG16"])
        one = extract_features(images, backbones=["VGG16"], cache_dir=store, view=v, **SMALL)  # single-view call
        assert np.array_equal(one["VGG16"], fs.view(v)["VGG16"])
        assert list(one.ids) == list(fs.ids)


def test_views_are_decoded_once_for_all_views_and_backbones(images, tmp_path, monkeypatch):
    calls = Counter()
    original = reader._decode_views

    def counting(data, path, sizes, views, digest):
        calls[os.path.basename(path)] += 1
        return original(data, path, sizes, views, digest)

    monkeypatch.setattr(reader, "_decode_views", counting)
    fs = extract_features(images, backbones=["VGG16", "ResNet50"], cache_dir=tmp_path, views="plain,aug:0-2", **SMALL)
    assert len(fs) == 8 and fs.views == ("plain", "aug:0", "aug:1", "aug:2")
    assert len(calls) == 9 and set(calls.values()) == {1}  # 8 images + the bad file, each read once


def test_view_and_views_together_are_refused(images, tmp_path):
    with pytest.raises(ValueError, match=r"Received view='hflip' and views="):
        extract_features(images, backbones=["VGG16"], cache_dir=tmp_path, view="hflip", views=["plain"], **SMALL)


# --------------------------------------------------------------------------- training on views
def _viewset(n=40, d=3, seed=0):
    """A FeatureSet whose view matrices encode (row, view): column 0 = row id, column 1 = view index."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    views = {}
    for j, v in enumerate(("plain", "aug:0", "aug:1", "hflip")):
        x = np.zeros((n, d), np.float32)
        x[:, 0] = np.arange(n)
        x[:, 1] = j
        x[:, 2] = (2 * y - 1) + rng.normal(0, 0.1, n)
        views[v] = {"B": x}
    return FeatureSet(ids=np.array([f"i{k}" for k in range(n)]), labels=y, class_names=("cat", "dog"),
                      features=views["plain"], view_features=views)


class SpyHead:
    """Records which (row, view) each fit saw; predicts from column 2 (or from the view index for TTA tests)."""

    seen = []

    def __init__(self, sign=None):
        self.sign = sign

    def fit(self, X, y, views=None):
        SpyHead.seen.append({"X": X[:, :2].copy(), "views": [v[:, :2].copy() for v in views or []]})
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        z = X[:, 2] if self.sign is None else self.sign(X)
        p = 1 / (1 + np.exp(-2 * z))
        return np.column_stack([1 - p, p])


def test_views_of_one_image_never_split_across_folds():
    fs = _viewset()
    SpyHead.seen = []
    oof = fit_oof([{"name": "m", "params": {}, "backbones": ["B"]}], fs, folds=4, progress=False,
                  train_views=["plain", "aug:0-1"], estimator_factory=lambda params, rs: SpyHead())
    assert len(SpyHead.seen) == 4
    for k, fit in enumerate(SpyHead.seen):
        held_out = set(np.flatnonzero(oof.folds == k))
        rows = set(fit["X"][:, 0].astype(int))
        assert rows.isdisjoint(held_out) and rows | held_out == set(range(len(fs)))
        assert [set(v[:, 1].astype(int)) for v in fit["views"]] == [{1}, {2}]  # aug:0, aug:1 (plain is X)
        for v in fit["views"]:
            assert np.array_equal(v[:, 0], fit["X"][:, 0])  # the same images, same order: no held-out view
    assert oof.members[0]["train_views"] == ["plain", "aug:0", "aug:1"]


def test_sweep_folds_keep_views_of_an_image_together(monkeypatch):
    from catdog_features.search import objective

    fs = _viewset()
    SpyHead.seen = []
    monkeypatch.setattr("catdog_features.heads.saved.build_head", lambda params, **kw: SpyHead())
    from catdog_features.search.data import ConcatCache, plan_folds, prepare_data

    sdata = prepare_data(fs, None, None, ["aug:0", "aug:1"])
    order, bounds = plan_folds(sdata.y, 4, 0.2, 0)
    concat = ConcatCache(sdata, order)
    objective.score_config({"head": "dense"}, concat.get(("B",)), sdata.y[order], bounds, 2, "inner",
                           concat.views(("B",)))
    for (start, stop), fit in zip(bounds, SpyHead.seen):
        held_out = set(order[start:stop])
        assert set(fit["X"][:, 0].astype(int)).isdisjoint(held_out)
        assert all(np.array_equal(v[:, 0], fit["X"][:, 0]) for v in fit["views"])
    assert sdata.describe()["train_views"] == ["plain", "aug:0", "aug:1"]


def test_dense_head_on_views_is_seeded_and_differs_from_plain():
    fs = _viewset(n=60)
    X, y = fs["B"], fs.labels
    views = [fs.view("aug:0")["B"] + 0.5, fs.view("aug:1")["B"] - 0.5]
    kw = dict(epochs=4, random_state=3, validation_split=0.25)
    a = DenseHead(**kw).fit(X, y, views=views)
    b = DenseHead(**kw).fit(X, y, views=views)
    plain = DenseHead(**kw).fit(X, y)
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X))
    assert not np.array_equal(a.coefs_[0], plain.coefs_[0])
    assert np.array_equal(DenseHead(**kw).fit(X, y, views=[]).coefs_[0], plain.coefs_[0])
    with pytest.raises(ValueError, match=r"Received views\[0\] of shape \(59, 3\); expected \(60, 3\)"):
        DenseHead(**kw).fit(X, y, views=[X[:-1]])


# --------------------------------------------------------------------------- TTA
@pytest.mark.parametrize("hflip_helps, kept", [(True, True), (False, False)])
def test_tta_is_kept_only_when_it_lowers_the_oof_log_loss(hflip_helps, kept):
    fs = _viewset(n=40)
    y = fs.labels
    signal = np.where(y == 1, 1.0, -1.0)
    # plain: a weak signal; hflip: strong (helps) or reversed (hurts)
    fs.view_features["plain"]["B"][:, 2] = 0.2 * signal
    fs.view_features["hflip"]["B"][:, 2] = (2.0 if hflip_helps else -0.5) * signal
    test = fs.subset(np.arange(10))
    test.view_features["hflip"]["B"][:, 2] = 3.0 * signal[:10]  # TTA looks great on the test set: ignored
    oof = fit_oof([{"name": "m", "params": {}, "backbones": ["B"]}], fs, test, folds=4, progress=False,
                  tta=["plain", "hflip"], estimator_factory=lambda params, rs: SpyHead())
    choice = oof.info["tta"]["m"]
    assert choice["kept"] is kept and (choice["tta_log_loss"] < choice["plain_log_loss"]) is kept
    assert ("tta" in oof.members[0]) is kept and oof.members[0]["tta_choice"] == choice
    plain_oof = SpyHead().predict_proba(fs["B"])
    if kept:
        expected = (plain_oof + SpyHead().predict_proba(fs.view("hflip")["B"])) / 2
        assert np.allclose(oof.oof["m"], expected)
        assert np.allclose(oof.test["m"], (SpyHead().predict_proba(test["B"])
                                           + SpyHead().predict_proba(test.view("hflip")["B"])) / 2)
    else:
        assert np.allclose(oof.oof["m"], plain_oof)
        assert np.allclose(oof.test["m"], SpyHead().predict_proba(test["B"]))


def test_choose_tta_reads_only_oof_predictions():
    y = np.array([0, 1, 0, 1])
    good = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    bad = good[:, ::-1].copy()
    members = [{"name": "m", "params": {}, "backbones": ["B"]}]
    for oof_hflip, test_hflip, kept in [(good, bad, True), (bad, good, False)]:
        oof, test = {"m": np.full((4, 2), 0.5)}, {"m": np.full((4, 2), 0.5)}
        out, info = choose_tta(members, oof, test, {"m": {"plain": np.full((4, 2), 0.5), "hflip": oof_hflip}},
                               {"m": {"plain": np.full((4, 2), 0.5), "hflip": test_hflip}}, y, ["plain", "hflip"])
        assert info["m"]["kept"] is kept


def test_tta_views_must_be_extracted():
    fs = _viewset()
    with pytest.raises(ValueError, match=r"Received: tta=\['plain', 'crop:c'\]; \['crop:c'\] missing"):
        fit_oof([{"name": "m", "params": {}, "backbones": ["B"]}], fs, folds=3, progress=False, tta="plain,crop:c",
                estimator_factory=lambda params, rs: SpyHead())


def test_report_lists_view_and_tta_members():
    from catdog_features.report.analysis import comparison_rows

    members = [{"name": "t1", "params": {}, "backbones": ["B"], "train_views": ["plain", "aug:0", "aug:1"],
                "tta": ["plain", "hflip"],
                "tta_choice": {"views": ["plain", "hflip"], "plain_log_loss": 0.3, "tta_log_loss": 0.2, "kept": True}}]
    scores = [{"name": "t1", "kind": "member", "log_loss": 0.2, "clipped_log_loss": 0.19, "accuracy": 0.9}]
    rows = comparison_rows({"B": {"dim": 3}}, [], members, scores, None)
    row = next(r for r in rows if r["kind"] == "view/TTA")
    assert row["name"] == "t1 +TTA(plain,hflip)" and row["oof_log_loss"] == 0.2
    assert "trained on views plain,aug:0-1" in row["detail"] and "TTA kept" in row["detail"]


# --------------------------------------------------------------------------- CLI and config
@pytest.mark.parametrize("value, message", [
    ("plain,vflip", "Unknown view. Received: view='vflip'"),
    ("aug:3-1", "Invalid view range. Received: 'aug:3-1'"),
    ("", "expected at least one view name"),
])
def test_cli_views_bad_values(value, message, capsys):
    from catdog_features.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["extract", "data", "--views", value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_extract_views(images, tmp_path, capsys):
    from catdog_features.cli import main

    rc = main(["extract", str(images), "--backbones", "VGG16", "--weights", "none", "--image-size", "32",
               "--cache", str(tmp_path / "c"), "--views", "plain,hflip,aug:0-1", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "in 4 views (plain,hflip,aug:0-1)" in out and "computed 32" in out
    assert len(list((tmp_path / "c").glob("VGG16-32-*"))) == 4


@pytest.mark.parametrize("extract, sweep, ensemble, expected", [
    ({}, {}, {}, (("plain",), (), ())),
    ({"views": ["hflip", "aug:0-2"]}, {"train_views": "aug:0-2"}, {"tta": ["plain", "hflip"]},
     (("plain", "hflip", "aug:0", "aug:1", "aug:2"), ("aug:0", "aug:1", "aug:2"), ("plain", "hflip"))),
])
def test_config_view_keys(tmp_path, extract, sweep, ensemble, expected):
    config = parse_config({"data": {"train": "t"}, "extract": extract, "sweep": sweep, "ensemble": ensemble}, tmp_path)
    assert (config.extract.views, config.sweep.train_views, config.ensemble.tta) == expected
    assert json.loads(json.dumps(config.to_dict()))["extract"]["views"] == list(expected[0])


@pytest.mark.parametrize("raw, message", [
    ({"extract": {"views": ["plain", "vflip"]}}, "[extract] views: Unknown view. Received: view='vflip'"),
    ({"extract": {"views": 3}}, "[extract] views: received 3; expected a list of view names"),
    ({"ensemble": {"tta": ["plain", "hflip"]}}, "[ensemble] tta: received views ['hflip'] that [extract] views"),
    ({"extract": {"views": ["aug:0"]}, "sweep": {"train_views": ["aug:0-1"]}},
     "[sweep] train_views: received views ['aug:1']"),
])
def test_config_view_errors_name_the_key(tmp_path, raw, message):
    with pytest.raises(ConfigError) as exc:
        parse_config({"data": {"train": "t"}, **raw}, tmp_path)
    assert message in str(exc.value)
