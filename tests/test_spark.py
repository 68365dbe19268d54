"""Extraction on a real local[2] SparkSession: the same rows as the local distributor, and a
task whose Python worker is killed mid-extraction is retried without leaving duplicates."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from catdog_features.features.extract import extract_features, extract_with_report
from catdog_features.features.store import FeatureStore
from extract_helpers import make_images

SMALL = dict(weights=None, image_size=32, batch_size=4, progress=False)
TWO = ("VGG16", "ResNet50")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = make_images(tmp_path_factory.mktemp("spark"), n_per_class=8, bad=["cat.100.jpg", "dog.101.jpg",
                                                                               "cat.102.jpg"], size=40)
    os.symlink(folder / "nowhere.jpg", folder / "dog.103.jpg")
    return folder


@pytest.fixture(scope="module")
def local(images, tmp_path_factory):
    return extract_features(images, backbones=TWO, cache_dir=tmp_path_factory.mktemp("local"), **SMALL)


def _shards(store):
    return sorted(p.name for p in Path(store).glob("*/shards/*"))


def test_spark_extraction_equals_local_extraction(spark, images, local, tmp_path):
    store = tmp_path / "store"
    fs, report = extract_with_report(images, backbones=TWO, cache_dir=store, distributor="spark", partitions=3, **SMALL)
    assert list(fs.ids) == list(local.ids) and fs.failed == local.failed
    assert {r for _, r in fs.failed} == {"not an image", "empty file", "truncated", "file not found"}
    for name in TWO:
        assert np.array_equal(fs[name], local[name]), name
    assert {n: b.computed for n, b in report.backbones.items()} == {"VGG16": 16, "ResNet50": 16}
    names = _shards(store)
    assert names and all(n.startswith("part-") for n in names)  # nothing hidden left behind
    again = extract_features(images, backbones=TWO, cache_dir=store, distributor="spark", **SMALL)
    assert all(again.cache_hits.values())


def _python_workers():
    """Spark's forked Python workers: processes running pyspark.daemon whose parent does too."""
    procs = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if b"pyspark.daemon" in cmd:
            procs[int(pid)] = ppid
    return [pid for pid, ppid in procs.items() if ppid in procs]


@pytest.mark.slow
def test_a_task_killed_mid_extraction_is_retried_without_duplicates(spark, images, local, tmp_path):
    store = tmp_path / "store"
    killed = []

    def kill_workers_once():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            time.sleep(0.01)  # a partition's hidden shard lives for under a second (0.7-0.85 s measured here)
            if any(Path(store).glob("*/shards/.part-*")):  # a task is writing its hidden shard
                for pid in _python_workers():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

    killer = threading.Thread(target=kill_workers_once, daemon=True)
    killer.start()
    fs, report = extract_with_report(images, backbones=TWO, cache_dir=store, distributor="spark", partitions=2, **SMALL)
    killer.join(5)
    assert killed, "no Python worker was caught writing"
    for name in TWO:
        assert np.array_equal(fs[name], local[name]), name
    for ex in FeatureStore(store).extractors():
        index = ex.index()
        assert int((~index.failure).sum()) == 16 and int(index.failure.sum()) == 2  # each content once
    assert not [n for n in _shards(store) if n.startswith(".")]


def test_extract_command_on_spark(spark, images, local, tmp_path, capsys):
    from catdog_features import cli

    argv = ["extract", str(images), "--backbones", "VGG16", "--cache", str(tmp_path / "store"), "--weights", "none",
            "--image-size", "32", "--batch-size", "4", "--distributor", "spark", "--partitions", "2", "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "computed 16 (" in out
    fs = extract_features(images, backbones=["VGG16"], cache_dir=tmp_path / "store", **SMALL)
    assert all(fs.cache_hits.values()) and np.array_equal(fs["VGG16"], local["VGG16"])
