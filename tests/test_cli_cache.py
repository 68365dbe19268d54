"""`catdog-features cache ls|verify|prune|compact` on a real store made by `extract`."""

import shutil

import pytest

from catdog_features import cli
from catdog_features.features.store import FeatureStore
from extract_helpers import make_images


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-cli")
    train = make_images(root / "data", n_per_class=3, bad=["cat.100.jpg"], size=32)
    store = root / "store"
    base = ["--backbones", "VGG16", "--cache", str(store), "--weights", "none", "--image-size", "32",
            "--batch-size", "4", "--no-progress"]
    assert cli.main(["extract", str(train), *base]) == 0
    extra = root / "extra"
    extra.mkdir()
    for p in sorted(train.glob("dog.*.jpg"))[:2]:
        shutil.copy(p, extra / ("x" + p.name))
    (extra / "new.jpg").write_bytes((train / "cat.0.jpg").read_bytes()[:-10] + b"\xff\xd9" * 5)
    assert cli.main(["extract", str(extra), *base]) == 0  # a second shard
    return {"root": root, "store": store, "train": train, "extra": extra}


def test_ls_lists_each_extractor(store, capsys):
    assert cli.main(["cache", "ls", "--cache", str(store["store"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["backbone", "size", "view", "precision"]
    vgg = next(line for line in out if line.startswith("VGG16"))
    assert vgg.split()[1:3] == ["32", "plain"] and vgg.split()[4] == "7" and vgg.split()[6] == "2"


def test_verify_is_0_when_intact_and_1_naming_damage(store, tmp_path, capsys):
    assert cli.main(["cache", "verify", "--cache", str(store["store"])]) == 0
    assert "intact" in capsys.readouterr().out
    damaged = tmp_path / "store"
    shutil.copytree(store["store"], damaged)
    from test_store import _flip_byte_in_features

    shard = FeatureStore(damaged).extractors()[0].shard_paths()[0]
    _flip_byte_in_features(shard)
    assert cli.main(["cache", "verify", "--cache", str(damaged)]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED {shard}: rows 0-" in out and "recomputes" in out


def test_prune_is_a_dry_run_without_yes_then_removes(store, tmp_path, capsys):
    pruned = tmp_path / "store"
    shutil.copytree(store["store"], pruned)
    assert cli.main(["cache", "prune", "--cache", str(pruned), "--keep", str(store["extra"])]) == 0
    out = capsys.readouterr().out
    assert "would remove 4 of 7 rows" in out and "dry run" in out
    assert cli.main(["cache", "prune", "--cache", str(pruned), "--keep", str(store["extra"]), "--yes"]) == 0
    assert "removed 4 of 7 rows" in capsys.readouterr().out
    assert cli.main(["cache", "compact", "--cache", str(pruned)]) == 0
    assert "shards 2 -> 1" in capsys.readouterr().out
    assert cli.main(["cache", "ls", "--cache", str(pruned)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("VGG16"))
    assert line.split()[4] == "3"


def test_missing_store_is_one_clear_line(tmp_path, capsys):
    assert cli.main(["cache", "ls", "--cache", str(tmp_path / "nope")]) == 2
    assert "Feature store not found" in capsys.readouterr().err
