"""Sweeps: persistence per trial, resume after SIGKILL, failed trials, backbone subsets, spaces."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hyperopt import hp

from catdog_features import search
from catdog_features.search import tpe
from catdog_features.features.featureset import FeatureSet
from catdog_features.search import SweepResult, backbone_space, default_space, reference_space, sweep
from sweep_helpers import committed_trials, load_trials


class FastHead:
    """Stand-in for DenseHead (same parameters) fitting a logistic regression in milliseconds.

    The sweep machinery (what these tests check) does not depend on which classifier it
    tunes; one test below runs the real DenseHead end to end.
    """

    fits = []  # (params, X_train, X_val) of every fit, reset per test

    def __init__(self, dropout=0.5, optimizer="adadelta", lr=None, momentum=0.0, decay=0.0, l2=0.0, standardize=False,
                 epochs=200, patience=8, batch_size=128, validation_split=0.2, refit=False, hidden_units=0,
                 reduce_lr_on_plateau=False, schedule=None, cycle_epochs=10, cycle_mult=1.0, verbose=0,
                 random_state=None):
        self.params = dict(dropout=dropout, optimizer=optimizer, lr=lr, momentum=momentum, decay=decay,
                           epochs=epochs, patience=patience)

    def fit(self, X, y, validation_data=None):
        from sklearn.linear_model import LogisticRegression

        X_val = None if validation_data is None else np.array(validation_data[0])
        FastHead.fits.append((self.params, np.array(X), X_val))
        if np.isnan(X).any():
            raise ValueError("Input X contains NaN.")
        self._lr = LogisticRegression(C=1.0 / (1e-3 + self.params["dropout"]), max_iter=100).fit(X, y)
        self.classes_ = self._lr.classes_
        self.best_epoch_ = 2
        return self

    def predict_proba(self, X):
        return self._lr.predict_proba(X)


@pytest.fixture
def fast_head(monkeypatch):
    FastHead.fits = []
    monkeypatch.setattr("catdog_features.heads.DenseHead", FastHead)
    return FastHead


def run(data, y=None, **kwargs):
    """A sweep as the machinery tests want it: the reference space and objective (one hold-out
    split that also drives early stopping), no progress bar, unless a test says otherwise."""
    for key, value in (("space", "reference"), ("cv", None), ("early_stopping", "fold"), ("progress", False)):
        kwargs.setdefault(key, value)
    return sweep(data, y, **kwargs)


def make_blocks(n=90, seed=0):
    """Three backbones; only "B" carries the label. Column 0 of every block is row id / n."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rows = (np.arange(n, dtype=np.float32) / n)[:, None]
    blocks = {
        "A": np.hstack([rows, rng.normal(size=(n, 3))]).astype(np.float32),
        "B": np.hstack([rows, rng.normal(size=(n, 2)) + 2.0 * y[:, None]]).astype(np.float32),
        "C": np.hstack([rows, rng.normal(size=(n, 4))]).astype(np.float32),
    }
    return blocks, y


def make_featureset(n=90, seed=0):
    blocks, y = make_blocks(n, seed)
    return FeatureSet(ids=np.array([str(i) for i in range(n)]), labels=y, class_names=("cat", "dog"), features=blocks)


def points(trials):
    return [json.dumps(t["hyperopt_vals"], sort_keys=True) for t in trials]


def test_each_trial_is_committed_before_the_next_starts(tmp_path, fast_head, monkeypatch):
    path = tmp_path / "t.sqlite"
    committed_at_fit = []

    class Spy(FastHead):
        def fit(self, X, y, validation_data=None):
            with sqlite3.connect(path) as conn:  # a second reader, as a crash would see the file
                committed_at_fit.append(conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0])
            return super().fit(X, y, validation_data)

    monkeypatch.setattr("catdog_features.heads.DenseHead", Spy)
    blocks, y = make_blocks()
    result = run(blocks, y, max_evals=6, trials_path=path, progress=False)
    assert committed_at_fit == [0, 1, 2, 3, 4, 5]
    assert [t["tid"] for t in result.trials] == list(range(6))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM trials WHERE status = 'ok'").fetchone()[0] == 6


def test_result_fields_and_trial_records(tmp_path, fast_head):
    fs = make_featureset()
    result = run(fs, max_evals=5, trials_path=tmp_path / "t.sqlite", progress=False)
    assert isinstance(result, SweepResult) and len(result.trials) == 5
    keys = {"tid", "status", "loss", "params", "backbones", "best_epoch", "duration_s", "error",
            "hyperopt_vals", "started_at", "fold_losses"}
    for t in result.trials:
        assert set(t) == keys
        assert t["status"] == "ok" and t["error"] is None and t["loss"] > 0 and t["best_epoch"] == 2
        assert set(t["backbones"]) <= {"A", "B", "C"} and t["backbones"]
        assert t["params"]["optimizer"] == "sgd" and t["params"]["epochs"] == 200 and t["params"]["patience"] == 8
        assert t["params"]["head"] == "dense" and t["fold_losses"] == [t["loss"]]
        assert 0.001 <= t["params"]["lr"] <= 0.01 and 0.0005 <= t["params"]["decay"] <= 0.05
        assert t["params"]["momentum"] in (0.5, 0.8, 0.9) and t["params"]["dropout"] in (0.1, 0.2, 0.3, 0.5)
    best = min(result.trials, key=lambda t: t["loss"])
    assert result.best_loss == best["loss"] and result.best_params == best["params"]
    assert result.best_backbones == best["backbones"] and result.best_trial == best
    assert "rank" in result.format_table() and "backbones" in result.format_table()
    # trials read back from the file are the same records
    again = run(fs, max_evals=5, trials_path=tmp_path / "t.sqlite", progress=False)
    assert again.trials == result.trials


def test_top_k_skips_repeated_configs():
    base = {"status": "ok", "best_epoch": 1, "duration_s": 0.1, "error": None, "hyperopt_vals": {}, "started_at": ""}
    trials = [
        {**base, "tid": 0, "loss": 0.30, "params": {"lr": 0.1}, "backbones": ["A"]},
        {**base, "tid": 1, "loss": 0.10, "params": {"lr": 0.2}, "backbones": ["A"]},
        {**base, "tid": 2, "loss": 0.10, "params": {"lr": 0.2}, "backbones": ["A"]},  # repeat of 1
        {**base, "tid": 3, "loss": 0.20, "params": {"lr": 0.2}, "backbones": ["A", "B"]},
        {**base, "tid": 4, "loss": None, "params": {"lr": 0.3}, "backbones": ["A"], "status": "fail"},
    ]
    result = SweepResult.from_trials(trials)
    assert [t["tid"] for t in result.top(3)] == [1, 3, 0]
    assert [t["tid"] for t in result.top(3, distinct=False)] == [1, 2, 3]
    assert [t["tid"] for t in result.top(10)] == [1, 3, 0]
    assert result.best_trial["tid"] == 1 and result.n_ok == 4


@pytest.mark.parametrize("case", ["raises", "nan-features"])
def test_failed_trials_are_recorded_and_the_sweep_goes_on(tmp_path, fast_head, monkeypatch, case):
    blocks, y = make_blocks()
    space = {"dropout": hp.choice("dropout", [0.1, 0.9]), "lr": hp.uniform("lr", 0.001, 0.01)}
    if case == "raises":
        original_fit = FastHead.fit

        def fit(self, X, y, validation_data=None):
            if self.params["dropout"] == 0.9:
                raise RuntimeError("boom at dropout 0.9")
            return original_fit(self, X, y, validation_data)

        monkeypatch.setattr(FastHead, "fit", fit)
        data, message = blocks, "RuntimeError: boom at dropout 0.9"
    else:
        blocks["C"][5, 1] = np.nan
        data, message = blocks, "ValueError: Input X contains NaN."
        space["backbones"] = hp.choice("backbones", [("B",), ("B", "C")])
    result = run(data, y, space=space, max_evals=10, trials_path=tmp_path / "t.sqlite", progress=False)
    failed = [t for t in result.trials if t["status"] == "fail"]
    assert len(result.trials) == 10 and 0 < len(failed) < 10
    for t in failed:
        assert t["loss"] is None and t["best_epoch"] is None and t["error"] == message
        assert t["params"]["dropout"] == 0.9 if case == "raises" else t["backbones"] == ["B", "C"]
    assert result.best_loss == min(t["loss"] for t in result.trials if t["status"] == "ok")


def test_backbone_choice_reaches_the_head_as_that_concatenation(tmp_path, fast_head):
    fs = make_featureset()
    result = run(fs, max_evals=12, trials_path=tmp_path / "t.sqlite", progress=False)
    assert len(FastHead.fits) == 12
    subsets = set()
    for t, (_, x_tr, x_val) in zip(result.trials, FastHead.fits):
        x = np.vstack([x_tr, x_val])
        x = x[np.argsort(x[:, 0])]  # column 0 is the row id: back to the FeatureSet's order
        np.testing.assert_array_equal(x, fs.concat(t["backbones"]))
        assert len(x_val) == 18  # validation_split=0.2 of 90 rows
        subsets.add(tuple(t["backbones"]))
    assert len(subsets) >= 4
    assert result.timings["concat_builds"] == len(subsets)  # concatenated once per subset, not per trial
    assert "B" in result.best_backbones  # the only informative backbone


def test_subset_space_enumerates_small_sets_and_switches_large_ones(fast_head, tmp_path):
    from hyperopt import pyll

    small = backbone_space(["A", "B", "C"])
    options = pyll.stochastic.sample(pyll.as_apply({"s": small}), rng=np.random.default_rng(0))
    assert tuple(options["s"]) in {("A",), ("B",), ("C",), ("A", "B"), ("A", "C"), ("B", "C"), ("A", "B", "C")}
    assert set(reference_space(["A"], True)) == {"lr", "decay", "momentum", "dropout", "optimizer", "epochs",
                                                "patience", "backbones"}
    assert set(default_space(["A"], True)) == {"head", "backbones"}
    names = [f"N{i}" for i in range(8)]
    large = backbone_space(names)
    assert isinstance(large, dict) and sorted(large) == names
    # all switches off -> the best single backbone so far, else the first
    assert tpe.resolve_backbones({n: False for n in names}, names, None) == ["N0"]
    assert tpe.resolve_backbones({n: False for n in names}, names, "N5") == ["N5"]
    assert tpe.resolve_backbones({"N3": True, "N1": True}, names, None) == ["N1", "N3"]
    # and a sweep over 8 backbones runs
    rng = np.random.default_rng(0)
    y = np.arange(60) % 2
    blocks = {n: rng.normal(size=(60, 2)).astype(np.float32) for n in names}
    result = run(blocks, y, max_evals=4, progress=False)
    assert all(t["status"] == "ok" and t["backbones"] for t in result.trials)


def test_plain_array_cv_and_no_backbone_search(fast_head):
    blocks, y = make_blocks()
    result = run(blocks["B"], y, max_evals=3, cv=3, progress=False)
    assert all(t["backbones"] == [] for t in result.trials)
    assert len(FastHead.fits) == 9  # 3 folds per trial
    assert sorted(len(v) for _, _, v in FastHead.fits[:3]) == [30, 30, 30]
    FastHead.fits = []
    result = run(blocks, y, max_evals=3, search_backbones=False, progress=False)
    assert all(t["backbones"] == ["A", "B", "C"] for t in result.trials)
    assert {x.shape[1] for _, x, _ in FastHead.fits} == {4 + 3 + 5}


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, fast_head):
    blocks, y = make_blocks()
    kwargs = dict(max_evals=14, progress=False, n_startup_jobs=4)
    straight = run(blocks, y, trials_path=tmp_path / "a.sqlite", **kwargs)
    run(blocks, y, trials_path=tmp_path / "b.sqlite", **{**kwargs, "max_evals": 3})  # random phase
    run(blocks, y, trials_path=tmp_path / "b.sqlite", **{**kwargs, "max_evals": 8})  # into TPE
    resumed = run(blocks, y, trials_path=tmp_path / "b.sqlite", **kwargs)
    assert points(resumed.trials) == points(straight.trials)
    assert len(set(points(resumed.trials))) == 14  # every suggestion a new point
    assert resumed.timings["n_new"] == 6


@pytest.mark.parametrize("change, message", [
    ({"space": {"lr": hp.uniform("lr", 0.001, 0.1)}}, "space['lr']"),
    ({"head_params": {"epochs": 3}}, "space['epochs']"),
    ({"cv": 3}, "objective['cv']"),
    ({"random_state": 7}, "objective['random_state']"),
    ({"data_seed": 1}, "data['features_sample_sha256']"),
])
def test_resume_with_a_different_sweep_is_a_clear_error(tmp_path, fast_head, change, message):
    path = tmp_path / "t.sqlite"
    blocks, y = make_blocks()
    run(blocks, y, max_evals=2, trials_path=path, progress=False)
    change = dict(change)
    if "data_seed" in change:
        blocks, y = make_blocks(seed=change.pop("data_seed"))
    with pytest.raises(ValueError, match="different sweep") as info:
        run(blocks, y, max_evals=3, trials_path=path, progress=False, **change)
    assert message in str(info.value) and "new=True" in str(info.value)
    assert len(run(blocks, y, max_evals=0, trials_path=path, progress=False, new=True).trials) == 0
    assert len(list(tmp_path.glob("t.*.bak.sqlite"))) == 1  # the old file is kept aside


def test_second_sweep_on_the_same_file_fails_fast(tmp_path, fast_head):
    path = tmp_path / "t.sqlite"
    blocks, y = make_blocks()
    with search.TrialStore(path):
        with pytest.raises(RuntimeError, match="Another sweep is using"):
            run(blocks, y, max_evals=1, trials_path=path, progress=False)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match="Not a readable trials file"):
        run(blocks, y, max_evals=1, trials_path=tmp_path / "junk.sqlite", progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"space": {"learning_rate": 0.1}}, "Unknown search-space keys"),
    ({"backbones": ["A", "Z"]}, "Unknown backbones"),
    ({"cv": 1}, "cv=1"),
    ({"validation_split": 1.5}, "validation_split=1.5"),
    ({"y": np.zeros(90)}, "single class"),
    ({"y": np.arange(89) % 2}, "different lengths"),
])
def test_bad_arguments(fast_head, tmp_path, kwargs, message):
    blocks, y = make_blocks()
    kwargs = {"y": y, **kwargs}
    with pytest.raises(ValueError, match=message):
        run(blocks, max_evals=1, progress=False, trials_path=tmp_path / "t.sqlite", **kwargs)
    # nothing was recorded, so the corrected call starts cleanly on the same file
    assert len(run(blocks, y, max_evals=1, progress=False, trials_path=tmp_path / "t.sqlite").trials) == 1


def test_to_frame_needs_pandas_or_says_so(fast_head):
    blocks, y = make_blocks()
    result = run(blocks, y, max_evals=2, progress=False)
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs pandas"):
            result.to_frame()
    else:
        frame = result.to_frame()
        assert len(frame) == 2 and "params.lr" in frame.columns


def test_progress_shows_best_and_ends_with_a_table(fast_head, capsys):
    blocks, y = make_blocks()
    result = run(blocks, y, max_evals=3, progress=True)
    out, err = capsys.readouterr()
    assert "trial" in err and "3/3" in err and f"best={result.best_loss:.5f}" in err
    assert out.startswith("top 3 of 3 trials") and "lr" in out and "dropout" in out


KILL_SCRIPT = textwrap.dedent("""
    import sys
    import time
    import numpy as np
    from catdog_features.search import objective, sweep

    # a trial here takes milliseconds: without a floor the whole sweep can end between two polls
    # of the test, and the kill would land after the last trial instead of in the middle
    real_score = objective.score_config
    def slow_score(*args, **kwargs):
        time.sleep(0.3)
        return real_score(*args, **kwargs)
    objective.score_config = slow_score

    folder = sys.argv[1]
    data = {name: np.load(f"{folder}/{name}.npy") for name in ("A", "B")}
    y = np.load(f"{folder}/y.npy")
    sweep(data, y, max_evals=int(sys.argv[2]), trials_path=f"{folder}/trials.sqlite", progress=False,
          space="reference", cv=None, head_params={"epochs": 3, "patience": 2}, n_startup_jobs=3)
""")


def test_sigkill_mid_sweep_then_rerun_resumes(tmp_path):
    n_evals = 5
    blocks, y = make_blocks(n=80)
    for name in ("A", "B"):
        np.save(tmp_path / f"{name}.npy", blocks[name])
    np.save(tmp_path / "y.npy", y)
    script = tmp_path / "run_sweep.py"
    script.write_text(KILL_SCRIPT)
    db = tmp_path / "trials.sqlite"
    cmd = [sys.executable, str(script), str(tmp_path), str(n_evals)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while committed_trials(db) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    before = load_trials(db)
    assert 2 <= len(before) < n_evals

    done = subprocess.run(cmd, env=env, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    after = load_trials(db)
    assert [t["tid"] for t in after] == list(range(n_evals))
    assert after[: len(before)] == before  # earlier trials unchanged, none re-run
    # the real DenseHead ran in the subprocess: fixed params reached it, best epochs are within range
    assert all(t["status"] == "ok" for t in after), [t["error"] for t in after]
    assert all(t["params"]["epochs"] == 3 and 0 <= t["best_epoch"] < 3 and t["loss"] > 0 for t in after)
    assert len(set(points(after))) == n_evals  # the resumed run suggested new points


def test_timeout_stops_starting_trials_and_a_rerun_continues(tmp_path, fast_head, monkeypatch):
    original_fit = FastHead.fit

    def slow_fit(self, X, y, validation_data=None):
        time.sleep(0.2)
        return original_fit(self, X, y, validation_data)

    monkeypatch.setattr(FastHead, "fit", slow_fit)
    blocks, y = make_blocks()
    path = tmp_path / "t.sqlite"
    first = run(blocks, y, max_evals=40, trials_path=path, progress=False, timeout=0.5)
    assert 1 <= len(first.trials) <= 5
    monkeypatch.setattr(FastHead, "fit", original_fit)
    second = run(blocks, y, max_evals=len(first.trials) + 2, trials_path=path, progress=False)
    assert second.trials[: len(first.trials)] == first.trials and second.timings["n_new"] == 2


# ----------------------------------------------------------------------------- the default space and objective
def test_default_space_beats_a_fixed_logistic_regression_where_no_hidden_layer_is_needed(tmp_path):
    """Issue 13: a linear problem with many noise features; the real heads, the default sweep."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 60)) * rng.uniform(0.5, 30.0, size=60)
    y = ((X[:, :4] / X[:, :4].std(axis=0)) @ np.array([1.0, -1.0, 0.7, 0.5]) + rng.logistic(size=400) > 0).astype(int)
    X_tr, X_te, y_tr, y_te = train_test_split(X.astype(np.float32), y, test_size=0.5, stratify=y, random_state=0)
    fixed = log_loss(y_te, LogisticRegression(max_iter=5000).fit(X_tr, y_tr).predict_proba(X_te))
    result = sweep(X_tr, y_tr, max_evals=8, n_startup_jobs=4, trials_path=tmp_path / "t.sqlite", progress=False)
    assert {t["params"]["head"] for t in result.trials} == {"dense", "linear"}
    ours = log_loss(y_te, result.best_estimator().fit(X_tr, y_tr).predict_proba(X_te))
    assert ours < 0.9 * fixed, (ours, fixed, result.best_params)


def test_cv_objective_on_small_data_holdout_on_large(fast_head, tmp_path):
    from catdog_features.search import AUTO_FOLDS, CV_BELOW_ROWS, read_trials

    small = make_blocks(n=200)
    result = run(*small, max_evals=2, cv="auto", trials_path=tmp_path / "small.sqlite")
    assert all(len(t["fold_losses"]) == AUTO_FOLDS for t in result.trials)
    assert [t["loss"] for t in result.trials] == [pytest.approx(np.mean(t["fold_losses"])) for t in result.trials]
    assert len(FastHead.fits) == 2 * AUTO_FOLDS and {len(v) for _, _, v in FastHead.fits} == {40}
    assert read_trials(tmp_path / "small.sqlite")[1]["objective"]["cv"] == AUTO_FOLDS
    table = result.format_table()
    assert "fold sd" in table and "fold min-max" in table and f"mean over {AUTO_FOLDS} CV folds" in table
    FastHead.fits = []
    large = make_blocks(n=CV_BELOW_ROWS)
    result = run(*large, max_evals=1, cv="auto")
    assert len(result.trials[0]["fold_losses"]) == 1 and len(FastHead.fits) == 1
    assert len(FastHead.fits[0][2]) == int(0.2 * CV_BELOW_ROWS)
    assert "fold sd" not in result.format_table()


def test_inner_early_stopping_never_shows_the_scored_rows_to_the_head(fast_head):
    blocks, y = make_blocks(n=100)
    run(blocks, y, max_evals=2, cv=4, early_stopping="inner")
    assert all(x_val is None for _, _, x_val in FastHead.fits)  # fit(X, y): the head splits its own part
    assert {len(x) for _, x, _ in FastHead.fits} == {75}


def test_head_kinds_and_fixed_settings(fast_head, tmp_path):
    blocks, y = make_blocks()
    result = run(blocks, y, space="default", max_evals=12, n_startup_jobs=12, head_params={"epochs": 7},
                 early_stopping="inner")
    kinds = {t["params"]["head"] for t in result.trials}
    assert kinds == {"dense", "linear"}
    for t in result.trials:
        assert t["status"] == "ok", t["error"]
        if t["params"]["head"] == "linear":
            assert set(t["params"]) == {"head", "C", "transform", "random_state"}  # no dense settings leak in
            assert t["params"]["transform"] in ("none", "sqrt", "log1p")
        else:
            assert t["params"]["epochs"] == 7 and t["params"]["standardize"] is True
            assert t["params"]["optimizer"] in ("adam", "sgd", "adadelta")
    with pytest.raises(ValueError, match="Unknown search-space keys.*'cycle'"):
        run(blocks, y, space="default", max_evals=1, head_params={"cycle": 3})


def test_best_estimator_is_unfitted_and_refits(fast_head):
    from catdog_features.heads import LinearHead

    blocks, y = make_blocks()
    result = run(blocks, y, space={"head": "linear", "C": hp.loguniform("C", -3, 3)}, max_evals=3,
                 search_backbones=False)
    est = result.best_estimator()
    assert isinstance(est, LinearHead) and not hasattr(est, "coef_")
    assert est.get_params()["C"] == result.best_params["C"]
    assert result.best_estimator() is not est  # a new one each time
    X = np.hstack([blocks[b] for b in result.best_backbones])
    assert est.fit(X, y).predict_proba(X).shape == (len(y), 2)
    with pytest.raises(ValueError, match="no successful trial"):
        SweepResult.from_trials([]).best_estimator()


def test_reference_preset_resumes_a_trials_file_of_the_old_default_space(tmp_path, fast_head):
    """Trials files written before the default changed (the old default was the reference space) resume."""
    old_space = {
        "lr": hp.loguniform("lr", np.log(0.001), np.log(0.01)), "decay": hp.uniform("decay", 0.0005, 0.05),
        "momentum": hp.choice("momentum", [0.5, 0.8, 0.9]), "dropout": hp.choice("dropout", [0.1, 0.2, 0.3, 0.5]),
        "optimizer": "sgd", "epochs": 200, "patience": 8,
        "backbones": backbone_space(["A", "B", "C"]),
    }
    blocks, y = make_blocks()
    path = tmp_path / "t.sqlite"
    run(blocks, y, space=old_space, max_evals=2, trials_path=path)
    resumed = sweep(blocks, y, space="reference", cv=None, max_evals=3, trials_path=path, progress=False)
    assert len(resumed.trials) == 3 and resumed.timings["n_new"] == 1


# ----------------------------------------------------------------------------- issue 11: the trials file
def test_new_refuses_while_another_sweep_holds_the_file(tmp_path, fast_head):
    """Issue 11 #4: --new used to rename a live sweep's file aside."""
    path = tmp_path / "t.sqlite"
    blocks, y = make_blocks()
    run(blocks, y, max_evals=1, trials_path=path)
    with search.TrialStore(path):  # a running sweep
        with pytest.raises(search.TrialsBusyError, match="Another sweep is using"):
            run(blocks, y, max_evals=1, trials_path=path, new=True)
        assert path.exists() and not list(tmp_path.glob("t.*.bak.sqlite"))
    assert len(run(blocks, y, max_evals=1, trials_path=path, new=True).trials) == 1
    assert len(list(tmp_path.glob("t.*.bak.sqlite"))) == 1


@pytest.mark.parametrize("column, value, problem", [
    ("loss", None, "finite log loss >= 0; found loss=None"),
    ("loss", -0.5, "finite log loss >= 0; found loss=-0.5"),
    ("tid", 2**40, "tid must be an integer"),
    ("params", "{not json", "params is not valid JSON"),
    ("backbones", '["Z"]', "not a subset of this sweep's"),
    ("status", "great", "neither 'ok' nor 'fail'"),
    ("hyperopt_vals", "[1, 2]", "hyperopt_vals is not a JSON object"),
    ("fold_losses", "[0.1, -1]", "fold_losses must be"),
])
def test_corrupt_rows_are_refused_naming_the_file_and_row(tmp_path, fast_head, column, value, problem):
    """Issue 11 #8: rows that used to raise TypeError / OverflowError / JSONDecodeError, or become 'best'."""
    path = tmp_path / "t.sqlite"
    blocks, y = make_blocks()
    run(blocks, y, max_evals=3, trials_path=path)
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE trials SET {column} = ? WHERE tid = 1", (value,))
    for read in (lambda: run(blocks, y, max_evals=4, trials_path=path), lambda: search.read_trials(path)):
        with pytest.raises(search.TrialsFileError) as info:
            read()
        message = str(info.value)
        rowid = value if column == "tid" else 1  # tid is the rowid
        assert str(path) in message and f"rowid {rowid}" in message and problem in message and "--new" in message
    # the corrected file resumes; nothing was written meanwhile
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM trials WHERE rowid = ?", (rowid,))
    assert [t["tid"] for t in run(blocks, y, max_evals=3, trials_path=path).trials] == [0, 2, 3]


def test_a_full_disk_stops_the_sweep_with_a_plain_message_and_loses_nothing(tmp_path, fast_head, monkeypatch):
    """Issue 11 #1: SQLite's own 'database or disk is full' (its page limit), not a mock of it."""
    path = tmp_path / "t.sqlite"
    blocks, y = make_blocks()
    run(blocks, y, max_evals=2, trials_path=path)
    real_connect = sqlite3.connect

    def connect_with_a_full_disk(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # the file cannot grow: SQLITE_FULL on the next page
        return conn

    monkeypatch.setattr("catdog_features.search.trials.sqlite3.connect", connect_with_a_full_disk)
    with pytest.raises(search.TrialsWriteError) as info:
        run(blocks, y, max_evals=200, trials_path=path)
    message = str(info.value)
    assert str(path) in message and "disk is full" in message and "safe" in message and "run the same command" in message
    assert isinstance(info.value, OSError)
    monkeypatch.setattr("catdog_features.search.trials.sqlite3.connect", real_connect)
    kept = search.read_trials(path)[0]
    assert len(kept) >= 2 and [t["tid"] for t in kept] == list(range(len(kept)))
    assert len(run(blocks, y, max_evals=len(kept) + 1, trials_path=path).trials) == len(kept) + 1
