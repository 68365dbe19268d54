"""``catdog-features sweep`` on a tiny generated dataset with random-init backbones."""

import sqlite3
import subprocess
import sys

import pytest

from catdog_features.cli import main

# two small random-init backbones at their minimum size: fast to extract, a real subset choice
BASE = ["--backbones", "MobileNetV2,VGG16", "--weights", "none", "--image-size", "32",
        "--epochs", "3", "--patience", "2", "--quiet"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One feature cache for the module: the first sweep extracts, the later ones hit the cache."""
    return tmp_path_factory.mktemp("cache")


def n_trials(path):
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]


def trials_line(out):
    return next(line for line in out.splitlines() if line.startswith("trials file: ")).split(": ", 1)[1]


def test_sweep_command_runs_resumes_and_extends(kaggle_dir, cache, capsys):
    argv = ["sweep", "--data", str(kaggle_dir / "train"), "--cache", str(cache), *BASE]
    assert main([*argv, "--max-evals", "2"]) == 0
    out = capsys.readouterr().out
    path = trials_line(out)
    assert path.startswith(str(cache)) and path.endswith(".sqlite")
    assert n_trials(path) == 2
    assert "top 2 of 2 trials" in out and "best val log loss" in out and "--max-evals" in out

    # same command, bigger budget: same trials file (found again from the settings), 1 more trial
    assert main([*argv, "--max-evals", "3"]) == 0
    out = capsys.readouterr().out
    assert trials_line(out) == path and n_trials(path) == 3


def test_default_trials_file_depends_on_settings_but_not_budget():
    from catdog_features.cli import build_parser
    from catdog_features.commands.sweep import default_trials_path

    def path(*extra):
        args = build_parser().parse_args(["sweep", "--data", "d", "--cache", "c", *extra])
        return default_trials_path(args, ["VGG16"])

    assert path() == path("--max-evals", "500", "--timeout", "60", "--quiet")
    for extra in (["--cv", "3"], ["--seed", "1"], ["--epochs", "5"], ["--no-search-backbones"], ["--weights", "none"],
                  ["--image-size", "64"], ["--validation-split", "0.3"], ["--labels-csv", "x.csv"],
                  ["--space", "reference"], ["--early-stopping", "fold"], ["--cv", "0"]):
        assert path(*extra) != path(), extra


def test_sweep_command_explicit_trials_file_and_mismatch(kaggle_dir, cache, tmp_path, capsys):
    trials = tmp_path / "my-trials.sqlite"
    argv = ["sweep", "--data", str(kaggle_dir / "train"), "--cache", str(cache), "--trials", str(trials), *BASE]
    assert main([*argv, "--max-evals", "2", "--no-search-backbones"]) == 0
    assert n_trials(trials) == 2
    capsys.readouterr()
    # the same file with the subset search switched on: refused, naming the difference
    assert main([*argv, "--max-evals", "2"]) == 2
    err = capsys.readouterr().err
    assert "different sweep" in err and "space['backbones']" in err and "--new" in err
    assert main([*argv, "--max-evals", "2", "--new"]) == 0
    assert n_trials(trials) == 2 and len(list(tmp_path.glob("my-trials.*.bak.sqlite"))) == 1


def test_sweep_help_does_not_import_tensorflow():
    code = ("import sys\nfrom catdog_features.cli import build_parser\n"
            "try:\n    build_parser().parse_args(['sweep', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'tensorflow' not in sys.modules and 'hyperopt' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--max-evals" in done.stdout and "--no-search-backbones" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--validation-split", "1.5"], "fraction in (0, 1)"),
    (["--cv", "1"], "integer >= 2 folds"),
    (["--epochs", "0"], "integer >= 1"),
    (["--max-evals", "0"], "--max-evals: expected an integer >= 1, received '0'"),  # issue 11: run failed later
    (["--space", "fancy"], "invalid choice: 'fancy'"),
    (["--jobs", "0"], "--jobs: expected an int >= 1, or -1 for one per core, received '0'"),
    (["--jobs", "two"], "--jobs: expected an int >= 1, or -1 for one per core, received 'two'"),
    (["--distributor", "yarn"], "invalid choice: 'yarn'"),
])
def test_sweep_command_rejects_bad_options(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        main(["sweep", "--data", str(tmp_path), *args])
    assert message in capsys.readouterr().err


def test_sweep_command_new_refuses_while_a_sweep_runs(kaggle_dir, cache, tmp_path, capsys):
    """Issue 11 #4: `sweep --new` renamed a running sweep's trials file aside."""
    from catdog_features.search import TrialStore

    trials = tmp_path / "live.sqlite"
    argv = ["sweep", "--data", str(kaggle_dir / "train"), "--cache", str(cache), "--trials", str(trials), *BASE]
    assert main([*argv, "--max-evals", "1"]) == 0
    capsys.readouterr()
    with TrialStore(trials):  # the running sweep holds the file
        assert main([*argv, "--max-evals", "1", "--new"]) == 2
    assert "Another sweep is using the trials file" in capsys.readouterr().err
    assert trials.exists() and n_trials(trials) == 1 and not list(tmp_path.glob("live.*.bak.sqlite"))
