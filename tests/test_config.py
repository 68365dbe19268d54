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
    (with_("sweep", "max_evals", 0), "[sweep] max_evals: received 0; expected an integer >= 1, at most 100000"),
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
    (with_("extract", "precision", "fp8"), "[extract] precision: received 'fp8'; expected one of float32, bfloat16, float16"),
    (with_("distributed", "distributor", "yarn"), "[distributed] distributor: received 'yarn'; expected one of local, spark"),
    (with_("distributed", "jobs", 0), "[distributed] jobs: received 0; expected an integer >= 1 (or -1: one per core)"),
    (with_("distributed", "jobs", True), "[distributed] jobs: received True"),
    (with_("distributed", "master", 7077), "[distributed] master: received 7077; expected a Spark master URL"),
    (with_("distributed", "partitions", -1), "[distributed] partitions: received -1"),
    (with_("distributed", "workers", 2), "[distributed] workers: unknown key; expected one of distributor, master, jobs"),
    (with_("extract", "backbones", ["ResNet51"]), "[extract] backbones: Unknown backbone. Received: backbone='ResNet51'"),
    (with_("extract", "backbones", []), "[extract] backbones: received []"),
    (with_("extract", "image_size", -3), "[extract] image_size: received -3"),
    (with_("extract", "batch_size", 0), "[extract] batch_size: received 0"),
    # sane maxima: these used to pass the check and fail 14 s later with ResourceExhaustedError
    (with_("extract", "image_size", 1_000_000), "[extract] image_size: received 1000000; expected an integer >= 0 "
                                                "(0: each backbone's native size), at most 2048"),
    (with_("extract", "image_size", 1e6), "[extract] image_size: received 1000000.0; expected an integer >= 0"),
    (with_("extract", "batch_size", 10**8), "[extract] batch_size: received 100000000; expected an integer >= 1, at most 4096"),
    (with_("ensemble", "folds", 10**6), "[ensemble] folds: received 1000000; expected an integer >= 2, at most 100"),
    (with_("ensemble", "test_from", "full"), "[ensemble] test_from: received 'full'; expected one of auto, folds, refit"),
    (with_("ensemble", "seed", 2**40), "[ensemble] seed: received 1099511627776; expected an integer >= 0, at most 4294967295"),
    (with_("extract", "allow_outside", "yes"), "[extract] allow_outside: received 'yes'; expected true or false"),
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
    assert config.extract.precision == "float32"
    assert (config.distributed.distributor, config.distributed.master, config.distributed.jobs,
            config.distributed.partitions) == ("local", None, 1, None)
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


# --------------------------------------------------------------------------- errors name the file
def test_every_parse_error_names_the_file_or_the_set_item(tmp_path):
    cfg = tmp_path / "exp" / "bad.toml"
    cfg.parent.mkdir()
    cfg.write_text('[data]\ntrain = "t"\n[extract]\nbatch_size = 100000000\n')
    with pytest.raises(ValueError) as err:
        load_config(cfg)
    assert str(err.value).startswith(f"{cfg.resolve()}: [extract] batch_size: received 100000000")
    with pytest.raises(ValueError) as err:
        load_config(cfg, ["extract.batch_size=8", "sweep.max_evals=0"])
    assert str(err.value).startswith("--set sweep.max_evals=0: [sweep] max_evals: received 0")
    cfg.write_bytes(b'[data]\ntrain = "\xe9t\xe9"\n')  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match="bad.toml"):
        load_config(cfg)


# --------------------------------------------------------------------------- where a run may write
def write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "c.toml"
    path.write_text('[data]\ntrain = "../data/train"\n' + text)
    return path


@pytest.mark.parametrize("section, key, value", [
    ("output", "dir", "../../../etc"),
    ("output", "dir", "/etc"),
    ("extract", "cache_dir", "../../elsewhere/cache"),
])
def test_write_paths_escaping_the_project_folder_are_refused(tmp_path, section, key, value):
    cfg = write_config(tmp_path / "proj" / "experiments", f'[{section}]\n{key} = "{value}"\n')
    with pytest.raises(ValueError) as err:
        load_config(cfg)
    message = str(err.value)
    assert message.startswith(f"{cfg.resolve()}: [{section}] {key}: ")
    assert "outside the project folder" in message and str((tmp_path / "proj").resolve()) in message
    assert f"allow_outside = true in [{section}]" in message
    # the explicit opt-ins: the section's allow_outside key, or a --set on the command line
    cfg.write_text(cfg.read_text() + "allow_outside = true\n")
    assert Path(getattr(getattr(load_config(cfg), section), key)).is_absolute()
    cfg = write_config(tmp_path / "proj" / "experiments", "")
    config = load_config(cfg, [f"{section}.{key}={tmp_path / 'anywhere'}"])
    assert getattr(getattr(config, section), key) == tmp_path / "anywhere"


def test_shipped_layout_stays_inside_the_project_folder(tmp_path):
    cfg = write_config(tmp_path / "proj" / "experiments",
                       '[extract]\ncache_dir = "../features_cache"\n[output]\ndir = "../runs/x"\n')
    config = load_config(cfg)
    assert config.output.dir == (tmp_path / "proj" / "runs" / "x").resolve()
    assert config.extract.cache_dir == (tmp_path / "proj" / "features_cache").resolve()


def test_check_paths_refuses_an_output_folder_that_is_not_a_run_folder(tmp_path):
    (tmp_path / "proj" / "data" / "train").mkdir(parents=True)
    cfg = write_config(tmp_path / "proj" / "experiments", '[output]\ndir = "../src"\n')
    src = tmp_path / "proj" / "src"
    src.mkdir()
    (src / "main.py").write_text("print('mine')\n")
    with pytest.raises(ValueError) as err:
        check_paths(load_config(cfg))
    assert str(err.value).startswith(f"{cfg.resolve()}: [output] dir: ")
    assert "main.py" in str(err.value) and "manifest.json" in str(err.value)
    assert (src / "main.py").read_text() == "print('mine')\n"
    # a new folder, or one holding only what a run writes, is fine
    (src / "main.py").unlink()
    (src / "trials.sqlite").write_bytes(b"")
    check_paths(load_config(cfg))
