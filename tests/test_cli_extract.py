"""`catdog-features extract` and the TF-free `--help` (the demo itself is run by tests/test_readme.py)."""

import time

import pytest

from catdog_features import cli
from extract_helpers import make_images, run_python

HELP_CODE = """
import sys, time
t0 = time.perf_counter()
from catdog_features import cli
for argv in (["--help"], ["extract", "--help"], ["demo", "--help"]):
    try:
        cli.main(argv)
    except SystemExit:
        pass
print("RESULT", round(time.perf_counter() - t0, 3), "tensorflow" in sys.modules, "keras" in sys.modules,
      "h5py" in sys.modules)
"""


def test_help_is_fast_and_does_not_import_tensorflow():
    proc = run_python(HELP_CODE, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = proc.stdout.rsplit("RESULT", 1)[1].split()
    seconds, tf_loaded, keras_loaded, h5py_loaded = float(result[0]), *result[1:]
    assert (tf_loaded, keras_loaded, h5py_loaded) == ("False", "False", "False")
    assert seconds < 2.0, f"--help took {seconds:.2f}s"
    for flag in ("--backbones", "--cache", "--weights", "--image-size", "--batch-size", "--labels-csv", "--view",
                 "--workers", "--no-progress"):
        assert flag in proc.stdout


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("cli"), n_per_class=4, bad=["cat.100.jpg", "dog.101.jpg"], size=40)


def test_extract_prints_a_summary_then_hits_the_cache(folder, tmp_path, capsys):
    argv = ["extract", str(folder), "--backbones", "vgg16,mobilenetv2", "--cache", str(tmp_path), "--weights", "none",
            "--image-size", "32", "--batch-size", "4", "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"{folder}: 10 images (9 distinct contents) -> 8 rows, 2 failures" in out
    assert "failures by reason:" in out and "not an image: 1" in out and "empty file: 1" in out
    assert "cat.100.jpg" in out
    for name, dim in (("VGG16", 512), ("MobileNetV2", 1280)):
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert f"32px  dim {dim}  computed 8 (" in line and "img/s" in line and "0 from the store" in line
    folders = sorted(p.name for p in tmp_path.iterdir() if (p / "extractor.json").is_file())
    assert len(folders) == 2 and all(name in out for name in folders)
    assert "pass: 9 images in" in out

    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("cache hit (all 9 contents in the store)") == 2 and "no model was run" in out


def test_extract_hflip_view(folder, tmp_path, capsys):
    argv = ["extract", str(folder), "--backbones", "VGG16", "--cache", str(tmp_path), "--weights", "none",
            "--image-size", "32", "--view", "hflip", "--workers", "1", "--no-progress"]
    assert cli.main(argv) == 0
    assert "(view hflip)" in capsys.readouterr().out
    assert [p.name.split("-")[2] for p in tmp_path.iterdir() if p.is_dir()] == ["hflip"]


@pytest.mark.parametrize("case, message", [
    ("missing folder", "Data folder not found. Received: "),
    ("empty folder", "No images found in "),
    ("unknown backbone", "Unknown backbone. Received: backbone='ResNet51'. Expected one of: VGG16, "),
    ("image size too small", "Image size too small for VGG16. Received: image_size=16; expected at least 32"),
    ("weights file for two backbones", "Received one weights file weights="),
])
def test_extract_errors_are_one_clear_line(folder, tmp_path, capsys, case, message):
    data, extra = str(folder), []
    if case == "missing folder":
        data = str(tmp_path / "nope")
    elif case == "empty folder":
        (tmp_path / "empty").mkdir()
        data = str(tmp_path / "empty")
    elif case == "unknown backbone":
        extra = ["--backbones", "VGG16,ResNet51"]
    elif case == "image size too small":
        extra = ["--backbones", "VGG16", "--image-size", "16"]
    else:
        weights = tmp_path / "w.h5"
        weights.write_bytes(b"x")
        extra = ["--backbones", "VGG16,VGG19", "--weights", str(weights)]
    weights = [] if "--weights" in extra else ["--weights", "none"]
    code = cli.main(["extract", data, "--cache", str(tmp_path / "c"), "--no-progress", *weights, *extra])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("catdog-features extract: error: " + message), err
    assert not (tmp_path / "c").exists()  # nothing written for a bad call


@pytest.mark.slow
def test_unreachable_imagenet_download_is_a_clear_error(folder, tmp_path):
    # Downloads are made to fail fast and for certain, with or without internet: an empty
    # KERAS_HOME (no cached weights) and every proxy pointed at a closed local port, so
    # urllib gets "connection refused" at once. No test-only hook in the code under test.
    closed = "http://127.0.0.1:9"
    env = {"KERAS_HOME": str(tmp_path / "keras_home"), "https_proxy": closed, "HTTPS_PROXY": closed,
           "http_proxy": closed, "HTTP_PROXY": closed, "no_proxy": "", "NO_PROXY": ""}
    code = f"""
        import sys
        from catdog_features import cli
        sys.exit(cli.main(["extract", {str(folder)!r}, "--backbones", "VGG16", "--image-size", "32",
                           "--cache", {str(tmp_path / "c")!r}, "--no-progress"]))
        """
    t0 = time.monotonic()
    proc = run_python(code, env, timeout=120)
    assert time.monotonic() - t0 < 90
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    error = proc.stderr[proc.stderr.index("catdog-features extract: error: "):]
    assert error.startswith("catdog-features extract: error: Could not download the ImageNet weights for VGG16")
    file_name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"  # issue 11: the file, where it goes, NAME=PATH
    assert f"--weights VGG16=/path/to/{file_name}" in error and "--weights none" in error
    assert f"copy it into {tmp_path / 'keras_home' / 'models'}/" in error
    assert not (tmp_path / "c").exists()  # a failed download leaves no empty store entries

