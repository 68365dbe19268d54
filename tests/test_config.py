"""Run-config parsing and validation (table-driven), and every shipped experiments/*.toml."""

from pathlib import Path

import pytest

from catdog_features.run.config import apply_overrides, check_paths, load_config, parse_config, to_hyperopt

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.toml"))
MINIMAL = {"data": {"train": "data/train"}}


def with_(section, key, value):
    raw = {"data": {"train": "data/train"}}
    raw.setdefault(section, {})[key] = value
    return raw


@pytest.mark.parametrize("raw, message", [
    (with_("sweep", "max_evls", 10), "[sweep] max_evls: unknown key; expected one of max_evals, search_backbones"),
    (with_("data", "tain", "x"), "[data] tain: unknown key; expected one of train, labels_csv"),
    ({"data": {"train": "x"}, "sweeps": {}}, "[sweeps]: unknown section; expected one of [data], [extract]"),
    ({"extract": {}}, "[data] train: missing"),
    (with_("sweep", "max_evals", -1), "[sweep] max_evals: received -1; expected an integer >= 1"),
    (with_("sweep", "max_evals", 0), "[sweep] max_evals: received 0; expected an integer >= 1"),
    (with_("sweep", "space_preset", "fancy"), "[sweep] space_preset: received 'fancy'; expected \"default\" or \"reference\""),
    (with_("sweep", "max_evals", "10"), "[sweep] max_evals: received '10'"),
    (with_("sweep", "search_backbones", "yes"), "[sweep] search_backbones: received 'yes'; expected true or false"),
    (with_("sweep", "cv", 1), "[sweep] cv: received 1; expected an integer >= 2 (or 0"),
    (with_("sweep", "validation_split", 1.5), "[sweep] validation_split: received 1.5"),
    (with_("ensemble", "folds", 1), "[ensemble] folds: received 1; expected an integer >= 2"),
    (with_("ensemble", "top_k", 0), "[ensemble] top_k: received 0"),
    (with_("ensemble", "method", "vote"), "[ensemble] method: received 'vote'; expected one of auto, blend, stack, mean"),
    (with_("ensemble", "clip", "best"), "[ensemble] clip: received 'best'; expected \"auto\" or a number"),
    (with_("ensemble", "clip", 0.6), "[ensemble] clip: received 0.6"),
    (with_("extract", "backbones", ["ResNet51"]), "[extract] backbones: Unknown backbone. Received: backbone='ResNet51'"),
    (with_("extract", "backbones", []), "[extract] backbones: received []"),
    (with_("extract", "image_size", -3), "[extract] image_size: received -3"),
    (with_("extract", "batch_size", 0), "[extract] batch_size: received 0"),
    (with_("extract", "weights", 3), "[extract] weights: received 3"),
    (with_("extract", "weights", "w.h5"), "[extract] weights: received one weights file 'w.h5' for 3 backbones"),
    (with_("extract", "weights", {"VGG16": "v.h5"}), "[extract] weights: has an entry for 'VGG16', which is not in"),
    (with_("data", "train", ""), "[data] train: received an empty string"),
    ({"data": {"train": "x"}, "sweep": {"space": {"lrr": 0.1}}}, "[sweep.space] lrr: unknown key; expected DenseHead parameters"),
    ({"data": {"train": "x"}, "sweep": {"space": {"lr": {"loguniform": [0, 1]}}}}, "[sweep.space] lr: loguniform received [0, 1]; expected low < high, low > 0"),
    ({"data": {"train": "x"}, "sweep": {"space": {"lr": {"lognormal": [0, 1]}}}}, "[sweep.space] lr: unknown distribution 'lognormal'"),
    ({"data": {"train": "x"}, "sweep": {"space": {"dropout": [0.1, 0.2]}}}, "[sweep.space] dropout: received the list [0.1, 0.2]; expected a constant or a table such as {choice"),
    ({"data": {"train": "x"}, "sweep": {"space": {"dropout": {"uniform": [0.5, 0.1]}}}}, "[sweep.space] dropout: uniform received [0.5, 0.1]"),
    ({"data": {"train": "x"}, "sweep": {"space": {"batch_size": {"quniform": [16, 64]}}}}, "expected 3 numbers [low, high, q]"),
])
def test_bad_configs_name_the_key(raw, message, tmp_path):
    with pytest.raises(ValueError) as err:
        parse_config(raw, tmp_path)
    assert message in str(err.value)


def test_defaults_and_relative_paths(tmp_path):
    config = parse_config(MINIMAL, tmp_path / "cfg", name="exp")
    base = (tmp_path / "cfg").resolve()
    assert config.data.train == base / "data" / "train"
    assert config.data.test is None and config.data.labels_csv is None
    assert config.extract.backbones == ("ResNet50", "InceptionV3", "Xception")
    assert config.extract.weights == "imagenet" and config.extract.image_size is None
    assert config.extract.cache_dir == base / "features_cache"
    assert config.sweep.max_evals == 100 and config.sweep.search_backbones and config.sweep.cv == "auto"
    assert config.sweep.space_preset == "default" and config.sweep.early_stopping is None
    assert (config.ensemble.folds, config.ensemble.top_k, config.ensemble.method, config.ensemble.clip) == (5, 5, "auto", "auto")
    assert config.output.dir == base / "runs" / "exp"
    assert config.to_dict()["data"]["train"] == str(base / "data" / "train")


@pytest.mark.parametrize("value, expected", [
    ("none", None),
    ("imagenet", "imagenet"),
    ({"resnet50": "r.h5", "Xception": "imagenet"}, {"ResNet50": "R", "Xception": "imagenet"}),
])
def test_weights_forms(tmp_path, value, expected):
    config = parse_config(with_("extract", "weights", value), tmp_path)
    if isinstance(expected, dict):
        assert config.extract.weights == {"ResNet50": tmp_path.resolve() / "r.h5", "Xception": "imagenet"}
    else:
        assert config.extract.weights == expected


def test_space_becomes_hyperopt_expressions(tmp_path):
    from hyperopt import pyll
    from hyperopt.pyll.stochastic import sample

    raw = {"data": {"train": "x"}, "sweep": {"space": {
        "lr": {"loguniform": [0.001, 0.01]}, "dropout": {"choice": [0.1, 0.5]},
        "hidden_units": {"quniform": [0, 64, 16]}, "optimizer": "adam"}}}
    space = to_hyperopt(parse_config(raw, tmp_path).sweep.space)
    assert space["optimizer"] == "adam"
    for _ in range(20):
        point = sample(pyll.as_apply(space))
        assert 0.001 <= point["lr"] <= 0.01 and point["dropout"] in (0.1, 0.5)
        assert isinstance(point["hidden_units"], int) and point["hidden_units"] % 16 == 0


def test_overrides_and_check_paths(tmp_path, monkeypatch):
    (tmp_path / "train").mkdir()
    cfg = tmp_path / "conf" / "c.toml"
    cfg.parent.mkdir()
    cfg.write_text('[data]\ntrain = "../train"\ntest = "../nope"\n[sweep]\nmax_evals = 100\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(cfg, ["sweep.max_evals=3", "sweep.space.lr=0.005", "ensemble.method=blend",
                               "extract.backbones=[\"VGG16\"]", "output.dir=out"])
    assert config.sweep.max_evals == 3 and config.sweep.space == {"lr": 0.005}
    assert config.ensemble.method == "blend" and config.extract.backbones == ("VGG16",)
    assert config.output.dir == (tmp_path / "out").resolve()  # --set paths: relative to the cwd
    assert config.data.train == (tmp_path / "train").resolve()  # file paths: relative to the file
    with pytest.raises(FileNotFoundError, match=r"\[data\] test: folder not found"):
        check_paths(config)
    with pytest.raises(ValueError, match="expected section.key=value"):
        apply_overrides({}, ["max_evals"])


def test_invalid_toml_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\ntrain = 1\n")
    with pytest.raises(ValueError, match="bad.toml: invalid TOML"):
        load_config(bad)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_shipped_experiments_parse_and_validate(path):
    config = load_config(path)
    assert config.output.dir.is_absolute()
    to_hyperopt(config.sweep.space)


def test_expected_experiments_are_shipped():
    names = {p.stem for p in EXPERIMENTS}
    assert {"dogs_vs_cats_merged", "vgg16", "resnet50", "inceptionv3", "xception", "inceptionresnetv2",
            "dog_breeds", "tiny"} <= names
    merged = load_config(REPO / "experiments" / "dogs_vs_cats_merged.toml")
    assert merged.extract.backbones == ("ResNet50", "InceptionV3", "Xception")
    assert merged.sweep.max_evals == 100 and merged.extract.weights == "imagenet"
