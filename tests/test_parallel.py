"""Parallel stage 2: trials and fold fits in worker processes and as Spark tasks (issue 14).

These run real worker processes (loky) and a real local SparkSession: the heads are the
library's own (small LinearHead / DenseHead configs), not stand-ins, since a stand-in
monkeypatched here would not exist in the workers.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from catdog_features.distributed import TaskPool, WorkerDiedError, resolve_jobs, task_error
from catdog_features.ensemble import fit_oof
from catdog_features.features.featureset import FeatureSet
from catdog_features.search import sweep
from hyperopt import hp
from sweep_helpers import committed_trials, load_trials

#: A fast space: linear heads with a searched C, and small dense heads (NumPy step).
SPACE = {
    "head": hp.choice("head", [
        {"head": "linear", "C": hp.loguniform("C", -3, 3)},
        {"head": "dense", "lr": hp.loguniform("lr", -7, -3), "epochs": 4, "patience": 2, "hidden_units": 0},
    ]),
}


def make_data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    blocks = {"A": (rng.normal(size=(n, 5)) + 0.8 * y[:, None]).astype(np.float32),
              "B": rng.normal(size=(n, 3)).astype(np.float32)}
    return blocks, y


def featureset(blocks, y, prefix="r"):
    n = len(next(iter(blocks.values())))
    return FeatureSet(ids=np.array([f"{prefix}{i}" for i in range(n)]), labels=y, class_names=("cat", "dog"),
                      features=blocks)


def points(trials):
    return [json.dumps(t["hyperopt_vals"], sort_keys=True) for t in trials]


@pytest.mark.parametrize("n_jobs, expected", [(1, 1), (3, 3)])
def test_resolve_jobs(n_jobs, expected):
    assert resolve_jobs(n_jobs) == expected


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_bad_n_jobs_is_refused_before_anything_is_written(tmp_path, bad):
    blocks, y = make_data()
    with pytest.raises(ValueError, match=r"Received n_jobs="):
        sweep(blocks, y, max_evals=2, n_jobs=bad, trials_path=tmp_path / "t.sqlite", progress=False)
    assert not (tmp_path / "t.sqlite").exists()


def test_parallel_sweep_has_exactly_max_evals_distinct_trials(tmp_path):
    blocks, y = make_data()
    db = tmp_path / "trials.sqlite"
    res = sweep(blocks, y, space=SPACE, max_evals=8, n_jobs=2, trials_path=db, progress=False, n_startup_jobs=4)
    trials = load_trials(db)
    assert [t["tid"] for t in trials] == list(range(8))
    assert all(t["status"] == "ok" for t in trials), [t["error"] for t in trials]
    assert len(set(points(trials))) == 8  # no point suggested twice, running or done
    assert [t["tid"] for t in res.trials] == list(range(8))
    assert not list(tmp_path.glob(".sweep.tasks-*"))  # the task folder is removed
    # resuming a finished parallel sweep runs nothing more
    again = sweep(blocks, y, space=SPACE, max_evals=8, n_jobs=2, trials_path=db, progress=False, n_startup_jobs=4)
    assert len(again.trials) == 8 and load_trials(db) == trials


def test_a_trial_scores_the_same_in_a_worker_as_in_this_process(tmp_path):
    """Same point, same data, same seed: the worker's loss equals the in-process one."""
    blocks, y = make_data()
    one = sweep(blocks, y, space=SPACE, max_evals=3, trials_path=tmp_path / "a.sqlite", progress=False,
                n_startup_jobs=3)
    two = sweep(blocks, y, space=SPACE, max_evals=3, n_jobs=2, trials_path=tmp_path / "b.sqlite", progress=False,
                n_startup_jobs=3)
    # random start-up points depend only on (random_state, tid), not on what else is running
    by_tid = {t["tid"]: t for t in two.trials}
    for t in one.trials:
        assert by_tid[t["tid"]]["hyperopt_vals"] == t["hyperopt_vals"]
        assert by_tid[t["tid"]]["loss"] == pytest.approx(t["loss"], rel=1e-6)


KILL_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from hyperopt import hp
    from catdog_features.search import sweep

    folder = sys.argv[1]
    data = {name: np.load(f"{folder}/{name}.npy") for name in ("A", "B")}
    y = np.load(f"{folder}/y.npy")
    space = {"head": "dense", "lr": hp.loguniform("lr", -7, -3), "epochs": 60, "patience": 60,
             "hidden_units": 0}
    sweep(data, y, space=space, max_evals=int(sys.argv[2]), trials_path=f"{folder}/trials.sqlite",
          progress=False, n_jobs=2, n_startup_jobs=3, cv=None)
""")


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def test_kill_9_of_the_driver_loses_no_finished_trial_and_resumes_to_exactly_max_evals(tmp_path):
    n_evals = 8
    blocks, y = make_data(n=400)
    for name in ("A", "B"):
        np.save(tmp_path / f"{name}.npy", blocks[name])
    np.save(tmp_path / "y.npy", y)
    script = tmp_path / "run_sweep.py"
    script.write_text(KILL_SCRIPT)
    db = tmp_path / "trials.sqlite"
    cmd = [sys.executable, str(script), str(tmp_path), str(n_evals)]

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    workers = []
    while committed_trials(db) < 2 and proc.poll() is None and time.monotonic() < deadline:
        workers = sorted(set(workers) | set(_children(proc.pid)))
        time.sleep(0.05)
    workers = sorted(set(workers) | set(_children(proc.pid)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    before = load_trials(db)
    assert 2 <= len(before) < n_evals
    # the worker processes end with their driver (no orphans running trials nobody collects)
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers and not any(_alive(p) for p in workers)

    done = subprocess.run(cmd, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    after = load_trials(db)
    assert len(after) == n_evals and len({t["tid"] for t in after}) == n_evals
    by_tid = {t["tid"]: t for t in after}
    assert all(by_tid[t["tid"]] == t for t in before)  # finished trials kept, none re-run
    assert len(set(points(after))) == n_evals
    assert all(t["status"] == "ok" for t in after), [t["error"] for t in after]
    assert not list(tmp_path.glob(".sweep.tasks-*"))  # the killed run's task folder is gone too


MEMBERS = [
    {"name": "lin", "params": {"head": "linear", "C": 0.5}, "backbones": ["A"]},
    {"name": "dense", "params": {"head": "dense", "lr": 0.01, "epochs": 5, "patience": 3, "hidden_units": 8},
     "backbones": ["A", "B"]},
    {"name": "lin_b", "params": {"head": "linear"}, "backbones": ["B"]},
]


@pytest.fixture(scope="module")
def oof_data():
    blocks, y = make_data(n=100)
    test_blocks, _ = make_data(n=12, seed=1)
    return featureset(blocks, y), featureset(test_blocks, None, "t")


@pytest.fixture(scope="module")
def sequential_oof(oof_data, tmp_path_factory):
    train, test = oof_data
    return fit_oof(MEMBERS, train, test, folds=3, random_state=5, progress=False,
                   models_dir=tmp_path_factory.mktemp("seq"))


def _assert_same_oof(a, b):
    assert a.member_names == b.member_names and np.array_equal(a.folds, b.folds)
    for name in a.member_names:
        np.testing.assert_array_equal(a.oof[name], b.oof[name])
        np.testing.assert_array_equal(a.test[name], b.test[name])
    assert a.key == b.key


def test_parallel_oof_equals_the_sequential_fit(oof_data, sequential_oof, tmp_path):
    train, test = oof_data
    par = fit_oof(MEMBERS, train, test, folds=3, random_state=5, progress=False, n_jobs=2, models_dir=tmp_path)
    _assert_same_oof(sequential_oof, par)
    # the workers saved every fold model where the pipeline looks for them
    from catdog_features.heads import find_saved_head

    assert all(find_saved_head(tmp_path / m["name"] / f"fold{k}") for m in MEMBERS for k in range(3))
    assert not list(tmp_path.glob(".oof.tasks-*"))


def _die(payload):
    if payload == "die":
        os._exit(3)
    return payload * 2


def test_a_dead_worker_fails_its_task_and_the_pool_goes_on():
    with TaskPool(2) as pool:
        dead = pool.submit(_die, "die")
        assert isinstance(task_error(dead), WorkerDiedError)
        assert pool.submit(_die, 21).result(timeout=120) == 42


def test_spark_trials_and_spark_fold_fits(spark, oof_data, sequential_oof, tmp_path):
    blocks, y = make_data()
    db = tmp_path / "trials.sqlite"
    sweep(blocks, y, space=SPACE, max_evals=4, n_jobs=2, distributor="spark", trials_path=db, progress=False,
          n_startup_jobs=4)
    trials = load_trials(db)
    assert [t["tid"] for t in trials] == list(range(4)) and len(set(points(trials))) == 4
    assert all(t["status"] == "ok" for t in trials), [t["error"] for t in trials]

    train, test = oof_data
    on_spark = fit_oof(MEMBERS, train, test, folds=3, random_state=5, progress=False, n_jobs=2,
                       distributor="spark", models_dir=tmp_path / "models")
    _assert_same_oof(sequential_oof, on_spark)
    assert Path(tmp_path / "models").is_dir()


def test_parallel_oof_with_training_views_and_tta_equals_the_sequential_fit(tmp_path):
    """Views travel to the workers: dense members train on them, TTA is chosen the same way."""
    rng = np.random.default_rng(3)
    n = 80
    y = np.arange(n) % 2
    plain = (rng.normal(size=(n, 6)) + 0.7 * y[:, None]).astype(np.float32)
    views = {"plain": {"A": plain}}
    for v in ("hflip", "aug:0", "aug:1"):
        views[v] = {"A": (plain + rng.normal(0, 0.3, plain.shape)).astype(np.float32)}
    fs = FeatureSet(ids=np.array([f"i{k}" for k in range(n)]), labels=y, class_names=("cat", "dog"),
                    features=views["plain"], view_features=views)
    test_views = {v: {"A": b["A"][:10]} for v, b in views.items()}
    test = FeatureSet(ids=np.array([f"t{k}" for k in range(10)]), labels=None, class_names=("cat", "dog"),
                      features=test_views["plain"], view_features=test_views)
    members = [m for m in MEMBERS if m["backbones"] == ["A"]] + [
        {"name": "dense_a", "params": {"head": "dense", "lr": 0.01, "epochs": 5, "patience": 3, "hidden_units": 0},
         "backbones": ["A"]}]
    kwargs = dict(folds=3, random_state=1, progress=False, train_views=["aug:0-1"], tta=["plain", "hflip"])
    seq = fit_oof(members, fs, test, **kwargs)
    par = fit_oof(members, fs, test, n_jobs=2, task_near=tmp_path, **kwargs)
    _assert_same_oof(seq, par)
    assert seq.members == par.members  # the same TTA choice and training views per member
    assert any("train_views" in m for m in par.members)
