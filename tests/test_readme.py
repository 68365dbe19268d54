"""Every command in README.md is exercised: run here, checked here, or run by .ci/run.

Each ```bash block of README.md is preceded by a marker saying what happens to it:

* ``<!-- readme-test: run -->`` -- **run**, in order, in one temporary workspace (a copy of
  ``experiments/*.toml``; relative paths resolve as from the repository root). ``catdog-features
  ...`` lines go through ``catdog_features.cli.main`` in this process (the console script's
  entry point, without paying a TensorFlow import per line) and must exit 0; ``source
  .venv/bin/activate`` is skipped (the tests already run inside that environment). This covers
  the 5-minute tour: ``demo --out demo_output`` (the whole pipeline on generated data),
  ``run experiments/tiny.toml``, ``report``, ``submit``, ``predict``, ``extract`` (a cache
  hit), ``sweep``, ``ensemble``.
* ``<!-- readme-test: check -->`` -- commands that need a download (ImageNet weights, Kaggle
  data, extra packages), a GPU, or minutes (benchmarks, an overnight sweep) are **checked**,
  not run: ``catdog-features`` argv is parsed by the real parser (sub-command and flags must
  exist), a ``run CONFIG`` config is loaded and validated (keys and values; data paths are not
  required to exist), ``python experiments/X.py`` must answer ``--help``, ``python -c`` code
  must compile, ``jupyter execute NOTEBOOK`` needs the notebook and the ``jupyter`` command of
  this environment (``tests/test_notebook.py`` executes that notebook), ``pip install`` lines
  are only recognised.
* ``<!-- readme-test: setup -->`` -- the two set-up commands. ``.ci/run`` runs the install
  (from a clean checkout) and exactly README's test command; this test checks both appear there
  verbatim. The ``catdog-features demo`` at the end of the install line is the command the
  tour runs with ``--out demo_output`` (the same code path, with a kept folder instead of a
  temporary one).

A block without a marker, or a line none of these rules recognises, fails the test, so a new
README command cannot go unexercised. ```python blocks must compile and import only public
names of the package.
"""

import ast
import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from catdog_features import cli

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CI = REPO / ".ci" / "run"
TEST_COMMAND = ".venv/bin/python -m pytest -q"
BLOCK = re.compile(r"(?:<!-- readme-test: (\w+) -->\s*\n)?```(\w*)\n(.*?)```", re.S)


def blocks(kind=None):
    """(marker, language, [logical command lines]) for each fenced block of README.md."""
    out = []
    for marker, lang, body in BLOCK.findall(README.read_text(encoding="utf-8")):
        if lang != "bash":
            out.append((marker, lang, body))
            continue
        lines, current = [], ""
        for raw in body.splitlines():
            line = raw.strip()
            if not line or (line.startswith("#") and not current):
                continue
            if line.endswith("\\"):
                current += line[:-1] + " "
                continue
            lines.append(current + line)
            current = ""
        out.append((marker, lang, lines))
    return [b for b in out if kind is None or b[1] == kind]


def strip_background(argv):
    """``nohup CMD ... > log 2>&1 &`` -> CMD ... (the redirections and the & are the shell's)."""
    if argv and argv[0] == "nohup":
        argv = argv[1:]
    while argv and (argv[-1] in ("&", "2>&1") or argv[-1].startswith(">")):
        argv = argv[:-1]
    if len(argv) >= 2 and argv[-2] in (">", ">>", "2>"):
        argv = argv[:-2]
    return argv


def test_every_bash_block_has_a_marker():
    bash = blocks("bash")
    assert len(bash) >= 7
    unmarked = [lines for marker, _, lines in bash if marker not in ("run", "check", "setup")]
    assert not unmarked, f"README bash blocks without a readme-test marker: {unmarked}"


def test_setup_commands_are_what_ci_runs():
    setup = [lines for marker, _, lines in blocks("bash") if marker == "setup"]
    assert setup == [
        ['python3 -m venv .venv && .venv/bin/python -m pip install -e ".[test]" && .venv/bin/catdog-features demo'],
        [TEST_COMMAND],
    ]
    ci_lines = [line.strip() for line in CI.read_text(encoding="utf-8").splitlines()]
    assert TEST_COMMAND in ci_lines, ".ci/run must run exactly README's test command"
    assert "python3 -m venv .venv" in ci_lines
    assert any(line.endswith('-m pip install -q -e ".[test]"') for line in ci_lines)
    # the demo at the end of the install line is run by the tour (see test_tour_commands_run)
    tour = [line for marker, _, lines in blocks("bash") if marker == "run" for line in lines]
    assert "catdog-features demo --out demo_output" in tour


# --------------------------------------------------------------------------- checked commands
def check_catdog(argv):
    parser = cli.build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's way of saying "bad flag"
        raise AssertionError(f"README command does not parse: catdog-features {shlex.join(argv)}") from exc
    if args.command == "run":
        from catdog_features.run.config import load_config

        config = load_config(REPO / args.config, args.overrides)  # keys and values validated
        assert config.output.dir is not None
    return args.command


def check_line(line):
    argv = strip_background(shlex.split(line))
    if argv[0] == "catdog-features":
        return "parsed: " + check_catdog(argv[1:])
    if argv[:2] == ["python", "-c"]:
        compile(argv[2], "<README python -c>", "exec")
        return "compiled"
    if argv[0] == "python" and argv[1].startswith("experiments/"):
        script = REPO / argv[1]
        done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                              cwd=REPO)
        assert done.returncode == 0 and "usage" in done.stdout.lower(), done.stderr[-2000:]
        return "--help"
    if argv[:2] == ["jupyter", "execute"]:
        assert (REPO / argv[2]).is_file()
        assert shutil.which("jupyter", path=str(Path(sys.executable).parent)) or shutil.which("jupyter"), \
            "jupyter (jupyter_core, from nbclient) is not installed in this environment"
        return "notebook exists; executed by tests/test_notebook.py"
    if argv[:4] == ["python", "-m", "pip", "install"]:
        return "pip install (download): recognised only"
    if argv[0] == "spark-submit":
        return check_spark_submit(argv[1:])
    if argv[:3] == ["sudo", "apt-get", "install"]:
        packages = [a for a in argv[3:] if not a.startswith("-")]
        ci = CI.read_text(encoding="utf-8")
        assert packages and all(p in ci for p in packages), f".ci/run does not install {packages}"
        return "apt-get install: what .ci/run installs"
    raise AssertionError(f"README command not covered by tests/test_readme.py: {line!r}")


#: spark-submit options that take a value (the ones the README uses)
SPARK_SUBMIT_VALUED = {"--master", "--conf", "--deploy-mode", "--num-executors", "--executor-cores",
                       "--executor-memory", "--driver-memory", "--py-files", "--name"}


def check_spark_submit(argv):
    """``spark-submit [options] SCRIPT.py [args]``: known options, ``--conf k=v``, and SCRIPT is a
    ```python block of the README whose first line is ``# SCRIPT.py`` (compiled by the python test)."""
    i = 0
    while i < len(argv) and argv[i].startswith("--"):
        assert argv[i] in SPARK_SUBMIT_VALUED, f"unknown spark-submit option {argv[i]!r}"
        if argv[i] == "--conf":
            assert re.fullmatch(r"spark\.[\w.]+=\S+", argv[i + 1]), argv[i + 1]
        i += 2
    script = argv[i]
    bodies = [body for _, lang, body in blocks("python")]
    assert any(body.splitlines()[0].strip() == f"# {script}" for body in bodies), \
        f"spark-submit runs {script!r}: expected a ```python block starting with '# {script}'"
    return "spark-submit: script shown and compiled"


def test_checked_commands_parse():
    done = {}
    for marker, _, lines in blocks("bash"):
        if marker == "check":
            for line in lines:
                done[line] = check_line(line)
    assert len(done) >= 12
    kinds = set(done.values())
    assert {"parsed: run", "parsed: sweep", "parsed: ensemble", "parsed: report", "--help"} <= kinds


def test_python_blocks_compile_and_use_public_names():
    import catdog_features

    pys = [body for _, lang, body in blocks("python")]
    assert pys
    for body in pys:
        tree = ast.parse(body)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "catdog_features":
                for alias in node.names:
                    assert alias.name in catdog_features.__all__, alias.name


# --------------------------------------------------------------------------- the tour, run
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    (root / "experiments").mkdir()
    for config in (REPO / "experiments").glob("*.toml"):
        shutil.copyfile(config, root / "experiments" / config.name)
    return root


@contextlib.contextmanager
def chdir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.mark.slow
def test_tour_commands_run(workspace, capsys):
    ran = []
    with chdir(workspace):
        for marker, _, lines in blocks("bash"):
            if marker != "run":
                continue
            for line in lines:
                argv = shlex.split(line)
                if argv == ["source", ".venv/bin/activate"]:
                    assert (Path(sys.prefix) / "bin" / "activate").is_file() or sys.prefix != sys.base_prefix
                    continue
                assert argv[0] == "catdog-features", f"README tour line not covered: {line!r}"
                code = cli.main(argv[1:])
                out = capsys.readouterr()
                assert code == 0, f"{line!r} exited {code}:\n{out.out[-3000:]}\n{out.err[-3000:]}"
                ran.append((argv[1], out.out))
    commands = [c for c, _ in ran]
    assert commands[:2] == ["demo", "run"] and {"report", "submit", "predict", "extract", "sweep", "ensemble"} <= set(commands)

    w = workspace
    for path in ("demo_output/run/report.html", "demo_output/run/submission.csv",
                 "runs/tiny/submission.csv", "runs/tiny/report.html", "runs/tiny/report/likely_mislabeled.csv",
                 "runs/tiny/submission_clip0.005.csv", "runs/tiny/predictions.csv",
                 "runs/stages/trials.sqlite", "runs/stages/ensemble.json", "runs/stages/submission.csv"):
        assert (w / path).is_file(), path
    # `extract` after `run tiny.toml` (same settings) answers from the cache
    extract_out = next(out for c, out in ran if c == "extract")
    assert "cache hit" in extract_out
    # the clip given to `submit` is applied
    rows = (w / "runs/tiny/submission_clip0.005.csv").read_text().splitlines()[1:]
    probs = [float(r.split(",")[1]) for r in rows]
    assert probs and min(probs) >= 0.005 and max(probs) <= 0.995
