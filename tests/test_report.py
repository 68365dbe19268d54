"""catdog-features report: a tiny real run -> report.html, PNGs, CSVs; missing inputs degrade.

One module-scoped pipeline run (experiments/tiny.toml on generated images, fewer trials)
with planted problems: two unreadable training files (failure records) and two dog images
saved under cat names (they should top the loss ranking). `run` itself writes the report.
"""

import base64
import csv
import html.parser
import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catdog_features import report as rp
from catdog_features.cli import main
from catdog_features.run.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "tiny.toml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("sweep_history", "sweep_params", "head_curves", "top_losses", "confusion_matrix")
PLANTED_MISLABELED = ("cat.100", "cat.101")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from catdog_features.run.config import load_config
    from catdog_features.run.pipeline import run_pipeline
    from catdog_features.synthetic import make_dataset

    root = tmp_path_factory.mktemp("report_run")
    data = make_dataset(root / "data", n_per_class=14, n_test=4, layout="kaggle", size=40, seed=3)
    train = data / "train"
    for k, new in zip((0, 1), PLANTED_MISLABELED):  # dogs labelled cat
        shutil.copyfile(train / f"dog.{k}.jpg", train / f"{new}.jpg")
    (train / "cat.200.jpg").write_bytes(b"<html>404 not found</html>")
    (train / "dog.201.jpg").write_bytes(b"")
    overrides = [f"data.train={train}", f"data.test={data / 'test'}", f"output.dir={root / 'run'}",
                 f"extract.cache_dir={root / 'cache'}", "sweep.max_evals=3", "sweep.epochs=20"]
    config = load_config(TINY, overrides)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_pipeline(config, progress=False, log=lambda msg: None)
    report_warnings = [str(w.message) for w in caught if issubclass(w.category, rp.ReportWarning)]
    return {"root": root, "run": root / "run", "train": train, "report_warnings": report_warnings}


def png_ok(data: bytes):
    assert data[:8] == PNG_SIGNATURE
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.width >= 300 and im.height >= 200
        # not a blank canvas: a drawn figure has many distinct colours
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20


class Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.src, self.href = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.src.append(attrs["src"])
        if tag == "a" and "href" in attrs:
            self.href.append(attrs["href"])


def links_of(path: Path) -> Links:
    parser = Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


# --------------------------------------------------------------------------- the tiny run
def test_run_writes_report_without_section_errors(tiny_run):
    run = RunDir(tiny_run["run"])
    assert tiny_run["report_warnings"] == []
    stage = run.read_manifest()["stages"]["report"]
    assert stage["status"] == "done" and Path(stage["path"]) == run.root / "report.html"
    assert (run.report / "report.md").is_file()


@pytest.mark.parametrize("name", FIGURES)
def test_each_figure_is_a_valid_non_empty_png(tiny_run, name):
    path = tiny_run["run"] / "report" / f"{name}.png"
    assert path.stat().st_size > 5000
    png_ok(path.read_bytes())


def test_html_references_only_files_that_exist(tiny_run):
    page = tiny_run["run"] / "report.html"
    links = links_of(page)
    assert len(links.src) == len(FIGURES), "every figure is embedded once"
    for src in links.src:
        assert src.startswith("data:image/png;base64,"), "images are embedded so the page stands alone"
        png_ok(base64.b64decode(src.split(",", 1)[1]))
    local = [h for h in links.href if not h.startswith("#")]
    assert {Path(h).name for h in local} >= {f"{n}.png" for n in FIGURES} | {rp.MISLABELED_CSV, rp.FAILURES_CSV}
    for href in local:
        assert (page.parent / href).is_file(), href
    anchors = [h[1:] for h in links.href if h.startswith("#")]
    text = page.read_text(encoding="utf-8")
    assert all(f'id="{a}"' in text for a in anchors)


def test_markdown_links_exist(tiny_run):
    import re

    folder = tiny_run["run"] / "report"
    targets = re.findall(r"\]\(([^)]+)\)", (folder / "report.md").read_text(encoding="utf-8"))
    assert len(targets) >= len(FIGURES) + 2
    assert all((folder / t).is_file() for t in targets)


def test_likely_mislabeled_csv_and_top_losses(tiny_run):
    folder = tiny_run["run"] / "report"
    header, rows = read_csv(folder / rp.MISLABELED_CSV)
    assert tuple(header) == rp.MISLABELED_COLUMNS == ("id", "path", "label", "predicted", "confidence", "loss")
    for row in rows:
        rec = dict(zip(header, row))
        assert rec["label"] != rec["predicted"] and float(rec["confidence"]) >= 0.9
        assert Path(rec["path"]).is_file()
        assert float(rec["loss"]) == pytest.approx(-np.log(1 - float(rec["confidence"])), rel=1e-3)
    header, rows = read_csv(folder / rp.TOP_LOSSES_CSV)
    assert tuple(header[:6]) == rp.MISLABELED_COLUMNS and len(rows) == 16
    losses = [float(r[5]) for r in rows]
    assert losses == sorted(losses, reverse=True)
    top_ids = [r[0] for r in rows[:8]]
    # the dogs saved as cat.100/cat.101 are among the worst: the OOF models say "dog"
    assert set(PLANTED_MISLABELED) <= set(top_ids), top_ids


def test_failure_records_are_listed(tiny_run):
    header, rows = read_csv(tiny_run["run"] / "report" / rp.FAILURES_CSV)
    assert header == ["set", "path", "reason"]
    found = {Path(r[1]).name: r[2] for r in rows}
    assert found == {"cat.200.jpg": "not an image", "dog.201.jpg": "empty file"}
    text = (tiny_run["run"] / "report.html").read_text(encoding="utf-8")
    assert "cat.200.jpg" in text and "empty file" in text


def test_comparison_table_uses_recorded_numbers_only(tiny_run):
    from catdog_features.run.saved import SavedEnsemble

    run = RunDir(tiny_run["run"])
    manifest = run.read_manifest()
    ensemble = SavedEnsemble.load(run.root).result
    header, rows = read_csv(run.report / rp.COMPARISON_CSV)
    table = {r[0]: dict(zip(header, r)) for r in rows}
    extract = manifest["stages"]["extract"]
    from catdog_features.features.backbones import get_backbone

    assert len(extract["settings"]["backbones"]) >= 2
    for name in extract["settings"]["backbones"]:
        row = table[name]
        recorded = extract["backbones"][name]  # what the pipeline wrote from the extraction report
        assert row["kind"] == "backbone" and int(row["dim"]) == recorded["dim"] == get_backbone(name).dim
        assert recorded["computed"] > 0 and recorded["images_per_s"] > 0  # measured in this run
        assert float(row["images_per_s"]) == pytest.approx(recorded["images_per_s"], rel=1e-5)
        # bytes on disk: whatever the store reported, never measured from its files by the report
        if recorded["store_bytes"] is None:
            assert row["cache_bytes"] == ""  # never invented
        else:
            assert int(row["cache_bytes"]) == recorded["store_bytes"]
    scores = {r["name"]: r for r in ensemble.scores}
    for method in ("mean", "blend", "stack"):
        key = method + (" (chosen)" if method == ensemble.method else "")
        assert float(table[key]["oof_log_loss"]) == pytest.approx(scores[method]["log_loss"], rel=1e-5)
        assert float(table[key]["oof_accuracy"]) == pytest.approx(scores[method]["accuracy"], rel=1e-5)


def test_chosen_oof_probabilities_match_the_stored_score(tiny_run):
    data = rp.load_run(tiny_run["run"])
    probs, name, stored = rp.chosen_oof_probabilities(data)
    from catdog_features.ensemble import log_loss

    assert name == data.ensemble.result.method
    assert log_loss(probs, data.oof.labels) == pytest.approx(stored, rel=1e-9)
    cm = rp.confusion_matrix(probs, data.oof.labels, 2)
    assert cm.sum() == len(data.oof.ids) == 14 * 2 + 2


def test_console_report_and_manifest_give_one_number_under_one_name(tiny_run):
    from catdog_features.ensemble import format_headline

    run = RunDir(tiny_run["run"])
    stage = run.read_manifest()["stages"]["ensemble"]
    chosen = next(r for r in stage["scores"] if r["kind"] == "ensemble" and r["name"] == stage["method"])
    assert (stage["oof_log_loss"], stage["oof_log_loss_clipped"]) == (chosen["log_loss"], chosen["clipped_log_loss"])
    headline = format_headline(stage["method"], stage["clip"], chosen)
    assert headline in run.scores.read_text()  # what the console printed
    assert headline in (run.report / "report.md").read_text()
    header, rows = read_csv(run.report / rp.COMPARISON_CSV)
    row = dict(zip(header, next(r for r in rows if r[0] == stage["method"] + " (chosen)")))
    assert float(row["oof_log_loss"]) == pytest.approx(chosen["log_loss"], rel=1e-5)
    assert float(row["oof_log_loss_clipped"]) == pytest.approx(chosen["clipped_log_loss"], rel=1e-5)
    assert "cv_log_loss" not in (run.root / "ensemble.json").read_text()


def copy_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run, ignore=shutil.ignore_patterns("report", "report.html"))
    return run


def test_report_refits_nothing_and_reads_no_cache_file(tiny_run, tmp_path, monkeypatch):
    import h5py

    from catdog_features.ensemble import combine
    from catdog_features.heads import DenseHead

    def refit(*args, **kwargs):
        raise AssertionError("the report refitted something")

    for name in ("fit_ensemblers", "_fit_ensemblers", "fit_stacker", "fit_blend", "_nested_stack", "_nested_blend"):
        monkeypatch.setattr(combine, name, refit)
    monkeypatch.setattr("catdog_features.ensemble.fit_ensemblers", refit)
    monkeypatch.setattr(DenseHead, "fit", refit)
    monkeypatch.setattr(DenseHead, "load", refit)
    opened = []
    real_file = h5py.File

    def spy(name, *args, **kwargs):
        opened.append(Path(name).resolve())
        return real_file(name, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", spy)
    run = copy_run(tiny_run, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", rp.ReportWarning)
        page = rp.write_report(run, strict=True)
    assert "Error:" not in page.read_text(encoding="utf-8")
    assert opened and set(opened) == {(run / "oof.h5").resolve()}, opened


def test_report_warns_about_constant_predictions(tiny_run, tmp_path):
    from catdog_features.ensemble import OOFPredictions

    run = copy_run(tiny_run, tmp_path)
    oof = OOFPredictions.load(run / "oof.h5")
    oof.ensembles[oof.chosen] = np.tile([[0.500074, 0.499926]], (len(oof.ids), 1))
    oof.save(run / "oof.h5")
    text = rp.write_report(run, strict=True).read_text(encoding="utf-8")
    assert "(nearly) constant" in text and "0.499926" in text


def test_report_of_an_oof_file_without_ensemble_predictions_shows_the_best_member(tiny_run, tmp_path):
    from catdog_features.ensemble import OOFPredictions, log_loss

    run = copy_run(tiny_run, tmp_path)
    oof = OOFPredictions.load(run / "oof.h5")
    oof.ensembles, oof.chosen = {}, None
    oof.save(run / "oof.h5")
    data = rp.load_run(run)
    probs, name, stored = rp.chosen_oof_probabilities(data)
    best = min(oof.member_names, key=lambda n: log_loss(oof.oof[n], oof.labels))
    assert name == f"member {best}" and log_loss(probs, oof.labels) == pytest.approx(stored)
    assert any("older version" in p for p in data.problems)
    assert "older version" in rp.write_report(run, strict=True).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- degraded runs
def test_report_cli_into_another_folder(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", str(tiny_run["run"]), "--out", str(out), "--top-n", "4", "--threshold", "0.5"]) == 0
    assert "report ->" in capsys.readouterr().out
    page = out / "report.html"
    for href in [h for h in links_of(page).href if not h.startswith("#")]:
        assert (page.parent / href).is_file(), href
    assert len(read_csv(out / rp.TOP_LOSSES_CSV)[1]) == 4


@pytest.mark.parametrize("remove, absent, says", [
    (("trials.sqlite",), ("sweep_history", "sweep_params"), "no sweep"),
    (("oof.h5", "ensemble.json", "models"), ("top_losses", "confusion_matrix", "head_curves"), "no out-of-fold"),
    (("trials.sqlite", "oof.h5", "ensemble.json", "models"), FIGURES, "no sweep"),
    (("manifest.json",), (), "does not record where its training images are"),
])
def test_sections_degrade_when_inputs_are_missing(tiny_run, tmp_path, remove, absent, says):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run, ignore=shutil.ignore_patterns("report", "report.html"))
    for name in remove:
        target = run / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    page = rp.write_report(run, strict=True)
    text = page.read_text(encoding="utf-8")
    assert says in text
    for name in absent:
        assert not (run / "report" / f"{name}.png").exists()
    for href in [h for h in links_of(page).href if not h.startswith("#")]:
        assert (page.parent / href).is_file(), href
    if "manifest.json" not in remove:
        assert "cat.200.jpg" in text  # failure records come from the manifest


@pytest.mark.parametrize("make, error", [
    (lambda p: p / "missing", "Run folder not found"),
    (lambda p: p, "Nothing to report"),
])
def test_unusable_run_folders_are_clear_errors(tmp_path, make, error):
    with pytest.raises(FileNotFoundError, match=error):
        rp.write_report(make(tmp_path))


@pytest.mark.parametrize("kwargs, message", [({"top_n": 0}, "top_n"), ({"threshold": 1.5}, "threshold")])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        rp.write_report(tmp_path, **kwargs)


# --------------------------------------------------------------------------- building blocks
def test_top_losses_and_likely_mislabeled_on_known_probabilities():
    probs = np.array([[0.9, 0.1], [0.05, 0.95], [0.3, 0.7], [0.99, 0.01], [0.6, 0.4]])
    labels = np.array([0, 0, 1, 1, 0])
    assert list(rp.top_losses(probs, labels, 3)) == [3, 1, 4]
    rows = rp.likely_mislabeled(["a", "b", "c", "d", "e"], None, labels, probs, ("cat", "dog"), threshold=0.9)
    assert [(r["id"], r["label"], r["predicted"]) for r in rows] == [("d", "dog", "cat"), ("b", "cat", "dog")]
    assert rows[0]["confidence"] == pytest.approx(0.99) and rows[0]["loss"] == pytest.approx(-np.log(0.01))
    with pytest.raises(ValueError, match="threshold"):
        rp.likely_mislabeled(["a"], None, [0], [[1.0, 0.0]], ("x", "y"), threshold=0)


def test_multiclass_confusion_pairs_and_figure():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 2, 2, 0, 2])
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    cm = rp.confusion_matrix(probs, labels, 3)
    assert cm.tolist() == [[1, 2, 0], [0, 1, 1], [1, 0, 3]]
    pairs = rp.worst_confused_pairs(cm, ["akita", "beagle", "corgi"], k=2)
    assert pairs[0] == {"true": "akita", "predicted": "beagle", "count": 2, "share": pytest.approx(2 / 3)}
    assert [(p["true"], p["predicted"]) for p in pairs] == [("akita", "beagle"), ("beagle", "corgi")]
    png_ok(rp.figure_png(rp.plot_confusion_matrix(cm, ["akita", "beagle", "corgi"])))


def test_figures_do_not_touch_the_global_matplotlib_backend():
    import matplotlib

    before = matplotlib.get_backend()
    trials = [{"tid": k, "status": "ok" if k != 2 else "fail", "loss": [0.3, 0.2, None, 0.25][k],
               "backbones": ["A"] if k % 2 else ["A", "B"], "params": {"lr": 0.001 * (k + 1), "dropout": 0.1 * k},
               "best_epoch": 3, "duration_s": 1.0} for k in range(4)]
    for fig in (rp.plot_sweep_history(trials), rp.plot_sweep_params(trials)):
        png_ok(fig._repr_png_())  # what Jupyter shows inline
    assert matplotlib.get_backend() == before
    assert rp.varying_params(trials) == ["dropout", "lr"]


def visible_tick_labels(ax, which="x"):
    ax.figure.canvas.draw()
    low, high = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    axis = ax.xaxis if which == "x" else ax.yaxis
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text() and low <= t.get_position()[0 if which == "x" else 1] <= high]


@pytest.mark.parametrize("low, high", [(0.003, 0.03), (0.001, 0.01), (0.0031, 0.0049), (1e-5, 1e-1)])
def test_log_axes_have_readable_tick_labels(low, high):
    lrs = np.geomspace(low, high, 5)
    trials = [{"tid": k, "status": "ok", "loss": 0.1 + 0.01 * k, "backbones": ["A"], "params": {"lr": float(lr)},
               "best_epoch": 1, "duration_s": 1.0} for k, lr in enumerate(lrs)]
    fig = rp.plot_sweep_params(trials, ["lr"], log_params=["lr"])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = visible_tick_labels(ax)
    assert len(labels) >= 2, labels


def test_fold_models_are_listed_by_the_run_folder_in_fold_order(tmp_path):
    run = RunDir(tmp_path)
    for k in (10, 2, 0, 1):
        path = run.fold_model("t3", k)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        (path.parent / f"fold{k}.keras.json").write_text("{}")
    (run.models / "t3" / "notes.txt").write_text("not a model")
    assert [p.name for p in run.fold_models("t3")] == ["fold0.keras", "fold1.keras", "fold2.keras", "fold10.keras"]
    assert run.fold_models("missing") == []
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "fold0.keras").write_bytes(b"")
    for name in ("../elsewhere", "t3/../../elsewhere", str(outside)):  # member names come from files
        with pytest.raises(ValueError, match="is not a folder of models/"):
            run.fold_models(name)
