"""`catdog-features run experiments/tiny.toml` end to end on generated images, reruns, predict/submit/ensemble.

Tiny settings (random-init backbones at 32 px, a few trials, 3 folds) keep each run to
seconds; the reruns patch every model entry point to raise, so "no model work" is checked,
not assumed.
"""

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest

from catdog_features.cli import main
from catdog_features.features.datasets import natural_key
from catdog_features.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "tiny.toml"
# fewer trials than tiny.toml: these tests check plumbing, not scores
FAST = ["sweep.max_evals=3", "sweep.epochs=15"]


def read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def run_cli(*argv):
    return main([*map(str, argv)])


def sets(**items):
    out = []
    for key, value in items.items():
        out += ["--set", f"{key.replace('__', '.')}={value}"]
    return out


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    """One finished binary run (Kaggle layout, one unreadable test image)."""
    root = tmp_path_factory.mktemp("tiny_binary")
    data = make_dataset(root / "data", n_per_class=12, n_test=8, layout="kaggle", size=40, seed=1)
    (data / "test" / "9.jpg").write_bytes(b"this is not a jpeg")  # must still get a submission row
    out = root / "run"
    argv = ["run", TINY, *sets(data__train=data / "train", data__test=data / "test", output__dir=out,
                               extract__cache_dir=root / "cache"), "--no-progress"]
    for item in FAST:
        argv += ["--set", item]
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="could not be read"):
        assert run_cli(*argv) == 0
    return {"root": root, "data": data, "out": out, "argv": argv, "seconds": time.perf_counter() - start,
            # as the cold-cache run left it (later tests predict other test folders into this run)
            "submission": (out / "submission.csv").read_bytes()}


def test_run_tiny_binary_writes_valid_submission(binary_run):
    out = binary_run["out"]
    header, rows = read_csv(out / "submission.csv")
    assert header == ["id", "label"]
    ids = [r[0] for r in rows]
    assert ids == sorted(ids, key=natural_key) == [str(i) for i in range(1, 10)]
    manifest = json.loads((out / "manifest.json").read_text())
    clip = manifest["stages"]["ensemble"]["clip"]
    values = np.array([float(r[1]) for r in rows])
    assert ((values >= clip - 1e-9) & (values <= 1 - clip + 1e-9)).all()
    assert values[ids.index("9")] == pytest.approx(0.5)  # unreadable image: the training prior (12 cats, 12 dogs)
    assert set(manifest["outputs"]) >= {"config", "trials", "oof", "models", "ensemble", "scores", "test_predictions", "submission"}
    assert manifest["stages"]["submission"]["filled_ids"] == ["9"]
    assert manifest["stages"]["report"]["status"] in ("done", "skipped")


def test_run_oof_file_covers_every_training_image_once(binary_run):
    from catdog_features.ensemble import OOFPredictions

    oof = OOFPredictions.load(binary_run["out"] / "oof.h5")
    assert len(oof.ids) == 24 and len(set(oof.ids)) == 24
    assert sorted(set(oof.folds.tolist())) == [0, 1, 2]
    for name in oof.member_names:
        assert not np.isnan(oof.oof[name]).any()
    ensemble = json.loads((binary_run["out"] / "ensemble.json").read_text())
    assert ensemble["ensemble"]["method"] in ("mean", "blend", "stack", "best", "linear")
    assert ensemble["extraction"]["weights"] == "none"
    for member in ensemble["members"]:  # the linear member predicts with its refit on all rows (test_from auto)
        paths = ensemble["models"][member["name"]]
        refit = member["params"].get("head") == "linear"
        assert member["test_from"] == ("refit" if refit else "folds")
        assert paths == ([f"models/{member['name']}/full.h5"] if refit else
                         [f"models/{member['name']}/fold{k}.keras" for k in range(3)])
        assert all((binary_run["out"] / p).is_file() for p in paths)
        assert len(list((binary_run["out"] / "models" / member["name"]).glob("fold[0-9].*"))) >= 3


def test_rerun_reuses_cache_trials_and_oof(binary_run, monkeypatch):
    from catdog_features.features.backbones import BackboneSpec
    from catdog_features.heads import DenseHead, LinearHead

    def no_model_work(*args, **kwargs):
        raise AssertionError("model work on a rerun of a finished config")

    monkeypatch.setattr(DenseHead, "fit", no_model_work)
    monkeypatch.setattr(LinearHead, "fit", no_model_work)
    monkeypatch.setattr(BackboneSpec, "build", no_model_work)
    out = binary_run["out"]
    n_trials = json.loads((out / "manifest.json").read_text())["stages"]["sweep"]["n_trials"]
    before = (out / "submission.csv").read_text()
    start = time.perf_counter()
    with pytest.warns(UserWarning):
        assert run_cli(*binary_run["argv"]) == 0
    seconds = time.perf_counter() - start
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert {k: stages[k]["status"] for k in ("extract", "sweep", "oof")} == {"extract": "reused", "sweep": "reused", "oof": "reused"}
    assert stages["report"]["status"] in ("reused", "skipped")
    assert stages["sweep"]["n_trials"] == n_trials and stages["sweep"]["n_new"] == 0
    assert (out / "submission.csv").read_text() == before
    assert seconds < max(10.0, binary_run["seconds"] / 3)
    # a changed ensembler is a cheap change: the OOF predictions stay valid
    with pytest.warns(UserWarning):
        assert run_cli(*binary_run["argv"], "--set", "ensemble.method=mean") == 0
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert {k: stages[k]["status"] for k in ("extract", "sweep", "oof")} == {"extract": "reused", "sweep": "reused", "oof": "reused"}
    assert stages["ensemble"]["method"] == "mean"


def test_changed_test_folder_is_predicted_by_saved_fold_models(binary_run, tmp_path, monkeypatch):
    import shutil

    from catdog_features.heads import DenseHead, LinearHead

    def no_fit(*args, **kwargs):
        raise AssertionError("a head was refitted although only the test set changed")

    new_test = tmp_path / "test2"
    new_test.mkdir()
    for name in ("2.jpg", "3.jpg"):
        shutil.copy(binary_run["data"] / "test" / name, new_test / name)
    monkeypatch.setattr(DenseHead, "fit", no_fit)
    monkeypatch.setattr(LinearHead, "fit", no_fit)
    out = tmp_path / "run"
    shutil.copytree(binary_run["out"], out)
    assert run_cli(*binary_run["argv"], "--set", f"data.test={new_test}", "--set", f"output.dir={out}",
                   "--set", "output.report=false") == 0
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["oof"]["status"] == "test re-predicted" and stages["sweep"]["status"] == "reused"
    _, rows = read_csv(out / "submission.csv")
    assert [r[0] for r in rows] == ["2", "3"]
    from catdog_features.ensemble import OOFPredictions

    old, new = OOFPredictions.load(binary_run["out"] / "oof.h5"), OOFPredictions.load(out / "oof.h5")
    assert list(new.test_ids) == ["2", "3"]
    rows = [list(old.test_ids).index(i) for i in ("2", "3")]
    for name in old.member_names:  # same fold models -> the same member probabilities
        np.testing.assert_allclose(new.test[name], old.test[name][rows], atol=1e-6)
        np.testing.assert_array_equal(new.oof[name], old.oof[name])


def test_test_from_folds_refits_only_the_oof_stage_and_predicts_with_fold_models(binary_run, tmp_path):
    import shutil

    from catdog_features.ensemble import OOFPredictions
    from catdog_features.submission import read_probabilities

    out = tmp_path / "run"
    shutil.copytree(binary_run["out"], out)
    with pytest.warns(UserWarning):
        assert run_cli(*binary_run["argv"], "--set", "ensemble.test_from=folds", "--set", f"output.dir={out}",
                       "--set", "output.report=false") == 0
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["sweep"]["status"] == "reused" and stages["oof"]["status"] == "done"  # a new OOF key
    saved = json.loads((out / "ensemble.json").read_text())
    for member in saved["members"]:
        assert member["test_from"] == "folds"
        assert saved["models"][member["name"]] == [f"models/{member['name']}/fold{k}.keras" if member["params"].get("head")
                                                   != "linear" else f"models/{member['name']}/fold{k}.h5" for k in range(3)]
    assert not list((out / "models").glob("*/full.*"))
    old, new = OOFPredictions.load(binary_run["out"] / "oof.h5"), OOFPredictions.load(out / "oof.h5")
    for name in old.member_names:  # the same fold models: the same OOF rows; only the refit's test rows differ
        np.testing.assert_allclose(new.oof[name], old.oof[name], atol=1e-6)
    assert not np.allclose(new.test["linear"], old.test["linear"], atol=1e-6)
    assert run_cli("predict", binary_run["data"] / "test", "--run", out, "--out", tmp_path / "p.csv", "--no-progress") == 0
    np.testing.assert_allclose(read_probabilities(tmp_path / "p.csv")[1],
                               read_probabilities(out / "test_predictions.csv")[1], atol=1e-6)


def test_oof_saved_by_older_heads_is_refitted_and_reuse_keeps_how_members_were_picked(binary_run, tmp_path,
                                                                                      monkeypatch):
    import shutil

    import h5py

    from catdog_features.ensemble import oof as oof_module

    out = tmp_path / "run"
    shutil.copytree(binary_run["out"], out)
    argv = [*binary_run["argv"], "--set", f"output.dir={out}", "--set", "output.report=false"]
    picked = {m["name"]: m.get("sweep_folds") for m in json.loads((out / "ensemble.json").read_text())["members"]}
    assert any(v is not None for v in picked.values())  # the sweep's trials say how they were scored
    with h5py.File(out / "oof.h5", "r+") as f:  # an OOF file written before members carried sweep_folds
        f.attrs["members"] = json.dumps([{k: v for k, v in m.items() if k != "sweep_folds"}
                                         for m in json.loads(f.attrs["members"])])
    with pytest.warns(UserWarning):
        assert run_cli(*argv) == 0
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["oof"]["status"] == "reused"
    assert {m["name"]: m.get("sweep_folds") for m in json.loads((out / "ensemble.json").read_text())["members"]} == picked
    monkeypatch.setattr(oof_module, "HEADS_VERSION", oof_module.HEADS_VERSION + 1)  # a head kind's fit changed
    with pytest.warns(UserWarning):
        assert run_cli(*argv) == 0
    assert json.loads((out / "manifest.json").read_text())["stages"]["oof"]["status"] == "done"


def test_predict_reproduces_test_predictions_and_submit_overrides_clip(binary_run, tmp_path, capsys):
    from catdog_features.submission import read_probabilities

    out = binary_run["out"]
    assert run_cli("predict", binary_run["data"] / "test", "--run", out, "--out", tmp_path / "p.csv", "--no-progress") == 0
    assert "could not read" in capsys.readouterr().err
    ids, probs, classes = read_probabilities(tmp_path / "p.csv")
    ids0, probs0, classes0 = read_probabilities(out / "test_predictions.csv")
    assert classes == classes0 == ("cat", "dog")
    assert list(ids) == list(ids0)
    np.testing.assert_allclose(probs, probs0, atol=1e-6)

    with pytest.warns(UserWarning, match="'9'"):
        assert run_cli("submit", "--run", out, "--out", tmp_path / "s.csv", "--clip", "0.2") == 0
    _, rows = read_csv(tmp_path / "s.csv")
    values = np.array([float(r[1]) for r in rows])
    assert len(rows) == 9 and values.min() >= 0.2 - 1e-9 and values.max() <= 0.8 + 1e-9


def test_ensemble_command_from_trials_file(binary_run, tmp_path, capsys):
    out = binary_run["out"]
    assert run_cli("ensemble", "--data", binary_run["data"] / "train", "--trials", out / "trials.sqlite",
                   "--out", tmp_path / "ens", "--cache", binary_run["root"] / "cache", "--weights", "none",
                   "--image-size", 32, "--top-k", 1, "--folds", 2, "--method", "blend", "--no-progress") == 0
    text = capsys.readouterr().out
    assert "blend" in text and "chosen: blend" in text
    saved = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    trials = [m for m in saved["members"] if m.get("trial") is not None]
    assert len(trials) == 1 and saved["ensemble"]["method"] == "blend"  # --top-k 1
    assert [m["params"] for m in saved["members"] if m.get("trial") is None] == [{"head": "linear"}]  # by default
    assert not (tmp_path / "ens" / "test_predictions.csv").exists()


def test_run_tiny_multiclass_labels_csv(tmp_path):
    classes = ("pug", "boxer", "akita")
    data = make_dataset(tmp_path / "data", n_per_class=8, n_test=5, layout="labels-csv", class_names=classes, size=40, seed=2)
    out = tmp_path / "run"
    argv = ["run", TINY, *sets(data__train=data / "train", data__labels_csv=data / "labels.csv", data__test=data / "test",
                               data__sample_submission=data / "sample_submission.csv", output__dir=out,
                               extract__cache_dir=tmp_path / "cache", sweep__max_evals=2, sweep__epochs=15,
                               ensemble__folds=2, output__report="false"), "--no-progress"]
    assert run_cli(*argv) == 0
    header, rows = read_csv(out / "submission.csv")
    s_header, s_rows = read_csv(data / "sample_submission.csv")
    assert header == s_header == ["id", "akita", "boxer", "pug"]
    assert [r[0] for r in rows] == [r[0] for r in s_rows]
    values = np.array([[float(v) for v in r[1:]] for r in rows])
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-4)
    scores = json.loads((out / "ensemble.json").read_text())["ensemble"]["scores"]
    assert {r["name"] for r in scores} >= {"mean", "blend", "stack"}


@pytest.mark.parametrize("override, message", [
    ("sweep.max_evls=3", "[sweep] max_evls: unknown key"),
    ("ensemble.folds=1", "[ensemble] folds: received 1"),
    ("data.train=/no/such/folder", "[data] train: folder not found"),
])
def test_run_config_errors_exit_2_naming_the_key(override, message, capsys):
    assert run_cli("run", TINY, "--set", override, "--check") == 2
    assert message in capsys.readouterr().err


def test_run_check_prints_config(capsys, tmp_path):
    assert run_cli("run", TINY, "--set", f"data.train={tmp_path}", "--set", "data.test=", "--check") == 0
    assert "config OK" in capsys.readouterr().out


@pytest.mark.integration
def test_run_on_shared_dogs_vs_cats_writes_valid_submission(shared_data, tmp_path):
    src = shared_data / "dogs-vs-cats"
    out = tmp_path / "run"
    argv = ["run", TINY, *sets(data__train=src / "train", data__test=src / "test", output__dir=out,
                               extract__cache_dir=tmp_path / "cache", extract__backbones='["VGG16"]',
                               sweep__max_evals=1, sweep__epochs=15, ensemble__top_k=1, ensemble__folds=2,
                               output__report="false"),
            "--no-progress"]
    assert run_cli(*argv) == 0
    header, rows = read_csv(out / "submission.csv")
    test_ids = sorted((p.stem for p in (src / "test").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")), key=natural_key)
    assert header == ["id", "label"]
    assert [r[0] for r in rows] == test_ids
    values = np.array([float(r[1]) for r in rows])
    assert ((values > 0) & (values < 1)).all()


@pytest.mark.parametrize("n", [4, 24])
def test_demo_config_is_a_valid_run_config(tmp_path, n):
    from catdog_features.commands.demo import demo_config
    from catdog_features.run.config import parse_config

    config = parse_config(demo_config(tmp_path, n), base_dir=tmp_path, name="demo")
    assert config.extract.weights is None and config.output.dir == (tmp_path / "run").resolve()
    assert config.ensemble.folds <= n


# --------------------------------------------------------------------------- one manifest shape, the ensemble command
def shape(value):
    """The keys of nested dicts (values replaced by their JSON type), for comparing manifest shapes."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    return type(value).__name__


def test_ensemble_command_is_the_pipeline_with_the_same_manifest_shape(binary_run, tmp_path, capsys):
    out = binary_run["out"]
    ens = tmp_path / "ens"
    assert run_cli("ensemble", "--data", binary_run["data"] / "train", "--test", binary_run["data"] / "test",
                   "--trials", out / "trials.sqlite", "--out", ens, "--cache", binary_run["root"] / "cache",
                   "--weights", "none", "--image-size", 32, "--top-k", 1, "--folds", 2, "--no-progress") == 0
    text = capsys.readouterr().out
    # the hint writes into the run folder, not the current one
    assert f"next: catdog-features submit --run {ens}" in text and f"{ens / 'submission.csv'}" in text
    by_run = json.loads((out / "manifest.json").read_text())
    by_ensemble = json.loads((ens / "manifest.json").read_text())
    assert (by_run["command"], by_ensemble["command"]) == ("run", "ensemble")
    assert set(by_run) == set(by_ensemble)
    config_run, config_ens = by_run["config"], by_ensemble["config"]
    assert set(config_run) == set(config_ens) == {"data", "extract", "sweep", "ensemble", "distributed", "output",
                                                  "source"}
    assert config_ens["sweep"] is None and config_ens["source"] is None  # trials from --trials, no config file
    for section in ("data", "extract", "ensemble", "distributed", "output"):
        assert set(config_run[section]) == set(config_ens[section]), section
    assert config_ens["extract"]["weights"] == config_run["extract"]["weights"] == "none"
    assert config_ens["extract"]["image_size"] == 32 and config_ens["ensemble"]["folds"] == 2
    # the stages are the pipeline's, the sweep's record says where the trials came from
    assert set(by_ensemble["stages"]) == {"extract", "sweep", "oof", "ensemble"}
    assert set(by_ensemble["stages"]["extract"]) == set(by_run["stages"]["extract"])
    sweep = by_ensemble["stages"]["sweep"]
    assert sweep["status"] == "given" and Path(sweep["trials"]) == out / "trials.sqlite"
    assert run_cli("submit", "--run", ens) == 0
    assert (ens / "submission.csv").is_file()
    # every file of the run folder gets the usual mode (they were 0600 for the CSVs)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (ens / "manifest.json", ens / "submission.csv",
                                                         ens / "test_predictions.csv", ens / "ensemble.json")}
    assert len(set(modes.values())) == 1 and modes["submission.csv"] & 0o044 == 0o044, modes


@pytest.mark.parametrize("flag, value, message", [
    ("--folds", "1", "--folds 1: [ensemble] folds: received 1; expected an integer >= 2"),
    ("--clip", "best", "--clip best: [ensemble] clip: received 'best'"),
    ("--batch-size", "100000000", "--batch-size 100000000: [extract] batch_size: received 100000000"),
])
def test_ensemble_arguments_are_checked_like_the_config(binary_run, tmp_path, capsys, flag, value, message):
    assert run_cli("ensemble", "--data", binary_run["data"] / "train", "--trials", binary_run["out"] / "trials.sqlite",
                   "--out", tmp_path / "ens", "--weights", "none", flag, value) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ens").exists()


# --------------------------------------------------------------------------- crafted run folders
def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_crafted_ensemble_json_cannot_reach_outside_the_run_folder(binary_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(binary_run["out"], run, ignore=shutil.ignore_patterns("report*", "features_cache"))
    elsewhere = tmp_path / "elsewhere"
    victim = tmp_path / "victim.keras"
    member = next(iter(json.loads((run / "ensemble.json").read_text())["models"]))
    shutil.copy(run / "models" / member / "fold0.keras", victim)
    edit_json(run / "ensemble.json", lambda d: d["models"][member].__setitem__(0, str(victim)))
    assert run_cli("predict", binary_run["data"] / "test", "--run", run, "--out", tmp_path / "p.csv", "--no-progress") == 2
    err = capsys.readouterr().err
    assert "ensemble.json: models." + member + "[0]" in err and "outside" in err
    edit_json(run / "ensemble.json", lambda d: d["models"][member].__setitem__(0, "../../victim.keras"))
    assert run_cli("submit", "--run", run) == 2
    assert "ensemble.json: models." + member + "[0]" in capsys.readouterr().err

    shutil.copy(binary_run["out"] / "ensemble.json", run / "ensemble.json")
    edit_json(run / "ensemble.json", lambda d: d["extraction"].__setitem__("cache_dir", str(elsewhere)))
    assert run_cli("predict", binary_run["data"] / "test", "--run", run, "--out", tmp_path / "p.csv", "--no-progress") == 0
    err = capsys.readouterr().err
    assert "extraction.cache_dir" in err and "not followed" in err and f"--cache {elsewhere}" in err
    assert not elsewhere.exists()  # nothing written where the crafted file pointed
    assert (run / "features_cache").is_dir()


# --------------------------------------------------------------------------- config check output
def test_run_check_prints_what_was_meant_never_null(tmp_path, capsys):
    assert run_cli("run", TINY, "--set", f"data.train={tmp_path}", "--set", "data.test=",
                   "--set", "extract.image_size=0", "--check") == 0
    out = capsys.readouterr().out
    assert "null" not in out and "None" not in out
    assert 'weights = "none"  # random init' in out
    assert "image_size = 0  # each backbone's native size" in out
    assert 'test = ""  # none: no test set, no submission' in out
    assert "cv = 0  # one hold-out split" in out
    assert "config OK" in out


def test_run_check_refuses_an_output_folder_outside_the_project(tmp_path, capsys):
    cfg = tmp_path / "proj" / "experiments" / "x.toml"
    cfg.parent.mkdir(parents=True)
    (tmp_path / "proj" / "data").mkdir()
    cfg.write_text('[data]\ntrain = "../data"\n[output]\ndir = "../../../etc"\n')
    assert run_cli("run", cfg, "--check") == 2
    err = capsys.readouterr().err
    assert f"{cfg}: [output] dir:" in err and "outside the project folder" in err


# --------------------------------------------------------------------------- constant predictions
def test_pipeline_warns_when_the_ensemble_predicts_a_constant(tmp_path):
    from catdog_features.ensemble import ConstantPredictionsWarning
    from catdog_features.features.featureset import FeatureSet
    from catdog_features.run.config import parse_config
    from catdog_features.run.pipeline import ensemble_stage, start_run

    (tmp_path / "train").mkdir()
    config = parse_config({"data": {"train": "train"}, "extract": {"backbones": ["VGG16"], "weights": "none"},
                           "ensemble": {"folds": 2, "top_k": 1}, "output": {"dir": "run"}}, base_dir=tmp_path)
    labels = np.array([0, 1] * 8)
    # what random-init MobileNetV2 gave at 64 px: the same vector for every image
    constant = np.full((16, 8), 0.25, dtype=np.float32)
    train = FeatureSet(np.array([str(i) for i in range(16)]), labels, ("cat", "dog"), {"VGG16": constant})
    test = FeatureSet(np.array(["100", "101", "102"]), None, ("cat", "dog"), {"VGG16": constant[:3]})
    run = start_run(config)
    members = [{"name": "m", "params": {"epochs": 2, "patience": 1, "batch_size": 8}, "backbones": ["VGG16"]}]
    with pytest.warns(ConstantPredictionsWarning, match=r"test predictions of the \w+ ensemble are \(nearly\) constant"):
        ensemble_stage(run, config, members, train, test, progress=False, log=lambda msg: None)
    notes = json.loads((run.root / "manifest.json").read_text())["notes"]
    assert any("(nearly) constant" in n for n in notes)


def test_backbone_records_come_from_the_extraction_reports():
    from types import SimpleNamespace as NS

    from catdog_features.run.pipeline import backbone_records

    def report(**backbones):
        return NS(backbones={name: NS(image_size=32, dim=512, **fields) for name, fields in backbones.items()})

    train = report(VGG16={"computed": 30, "images_per_s": 10.0}, ResNet50={"computed": 0, "images_per_s": None})
    test = report(VGG16={"computed": 10, "images_per_s": 20.0, "store_bytes": 4096},
                  ResNet50={"computed": 0, "images_per_s": None})
    records = backbone_records([train, test], previous={"ResNet50": {"images_per_s": 55.0}})
    assert records["VGG16"] == {"image_size": 32, "dim": 512, "computed": 40, "store_bytes": 4096,
                                "images_per_s": pytest.approx(40 / (3.0 + 0.5))}
    # nothing computed in this run: the speed measured when the features were computed is kept;
    # a store that reports no size gives None (the report shows n/a)
    assert records["ResNet50"]["images_per_s"] == 55.0 and records["ResNet50"]["store_bytes"] is None


def test_ensemble_command_with_jobs_gives_the_runs_oof_predictions(binary_run, tmp_path, capsys):
    """Fold fits in two worker processes: the run's sequential OOF and test predictions, to float32
    rounding (TensorFlow's reductions split differently with one thread per worker than with two
    in one process; NumPy-step heads are bit-identical, see test_parallel)."""
    from catdog_features.ensemble import OOFPredictions

    out = binary_run["out"]
    assert run_cli("ensemble", "--data", binary_run["data"] / "train", "--test", binary_run["data"] / "test",
                   "--trials", out / "trials.sqlite", "--out", tmp_path / "ens", "--cache", binary_run["root"] / "cache",
                   "--weights", "none", "--image-size", 32, "--top-k", 2, "--folds", 3, "--jobs", 2,
                   "--no-progress") == 0
    capsys.readouterr()
    ours, theirs = OOFPredictions.load(tmp_path / "ens" / "oof.h5"), OOFPredictions.load(out / "oof.h5")
    assert ours.member_names == theirs.member_names
    for name in ours.member_names:
        np.testing.assert_allclose(ours.oof[name], theirs.oof[name], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ours.test[name], theirs.test[name], rtol=1e-4, atol=1e-6)
    manifest = json.loads((tmp_path / "ens" / "manifest.json").read_text())
    assert manifest["config"]["distributed"] == {"distributor": "local", "master": None, "jobs": 2, "partitions": None}


def test_run_applies_the_distributed_section_to_every_stage(tmp_path, monkeypatch):
    """`[distributed]` reaches the extraction, the sweep and the fold fits (recorded, then run for real)."""
    import catdog_features.ensemble.fit as oof_module
    import catdog_features.features.extract as extract_module
    import catdog_features.search.tpe as tpe_module

    seen = []

    def spy(module, name, keys):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            seen.append((name, {k: kwargs.get(k) for k in keys}))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    spy(extract_module, "extract_with_report", ("distributor", "spark_master", "partitions", "precision"))
    spy(tpe_module, "sweep", ("n_jobs", "distributor", "spark_master"))
    spy(oof_module, "fit_oof", ("n_jobs", "distributor", "spark_master"))
    monkeypatch.setattr("catdog_features.search.sweep", tpe_module.sweep)
    monkeypatch.setattr("catdog_features.ensemble.fit_oof", oof_module.fit_oof)
    data = make_dataset(tmp_path / "data", n_per_class=8, n_test=0, layout="kaggle", size=40, seed=2)
    argv = ["run", TINY, *sets(data__train=data / "train", data__test="", output__dir=tmp_path / "run",
                               extract__cache_dir=tmp_path / "cache", distributed__jobs=2,
                               distributed__partitions=3), "--no-progress"]
    for item in FAST:
        argv += ["--set", item]
    assert run_cli(*argv) == 0
    stages = dict(seen)
    assert stages["extract_with_report"] == {"distributor": "local", "spark_master": None, "partitions": 3,
                                             "precision": "float32"}
    assert stages["sweep"] == {"n_jobs": 2, "distributor": "local", "spark_master": None}
    assert stages["fit_oof"] == {"n_jobs": 2, "distributor": "local", "spark_master": None}
    assert len(json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["distributed"]) == 4


def test_run_reproduces_across_a_cache_miss_and_a_cache_hit(binary_run, tmp_path):
    """Issue 11.5: the binary run extracted into an empty cache; the same config into a new run
    folder, with the cache now full (no model built), gives the same trials and submission."""
    import sqlite3

    out = tmp_path / "again"
    argv = list(binary_run["argv"])
    argv[argv.index(f"output.dir={binary_run['out']}")] = f"output.dir={out}"
    with pytest.warns(UserWarning, match="could not be read"):
        assert run_cli(*argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["extract"]["status"] == "reused"  # the cache hit: no backbone ran

    def losses(path):
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT tid, loss FROM trials ORDER BY tid").fetchall()

    assert losses(out / "trials.sqlite") == losses(binary_run["out"] / "trials.sqlite")
    assert (out / "submission.csv").read_bytes() == binary_run["submission"]


def test_run_with_a_split_adds_a_top_block_member_and_predicts_new_images_with_it(tmp_path):
    """`[extract] split`: the maps are cached as `ResNet50@map` and a TopBlockHead member joins
    the ensemble next to the heads on vectors; `predict` extracts the maps of new images too."""
    from catdog_features.ensemble import OOFPredictions
    from catdog_features.submission import read_probabilities

    data = make_dataset(tmp_path / "data", n_per_class=8, n_test=4, layout="kaggle", size=40, seed=4)
    out = tmp_path / "run"
    argv = ["run", TINY, *sets(data__train=data / "train", data__test=data / "test", output__dir=out,
                               extract__cache_dir=tmp_path / "cache", extract__split="default",
                               ensemble__top_k=1), "--set", 'extract.backbones=["ResNet50"]', "--no-progress",
            "--set", "sweep.max_evals=2", "--set", "sweep.epochs=5"]
    assert run_cli(*argv) == 0
    saved = json.loads((out / "ensemble.json").read_text())
    top = [m for m in saved["members"] if m["name"] == "topblock_ResNet50"]
    assert top and top[0]["backbones"] == ["ResNet50@map"] and top[0]["params"]["head"] == "topblock"
    oof = OOFPredictions.load(out / "oof.h5")
    assert "topblock_ResNet50" in oof.member_names and not np.isnan(oof.oof["topblock_ResNet50"]).any()
    assert len(list((out / "models" / "topblock_ResNet50").glob("fold*.keras"))) == 3
    assert run_cli("predict", data / "test", "--run", out, "--out", tmp_path / "p.csv", "--no-progress") == 0
    ids, probs, _ = read_probabilities(tmp_path / "p.csv")
    ids0, probs0, _ = read_probabilities(out / "test_predictions.csv")
    assert list(ids) == list(ids0)
    np.testing.assert_allclose(probs, probs0, atol=1e-6)
