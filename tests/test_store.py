"""The feature store's parts without models: planning, shards (commit protocol, checksums,
disk full), the index (rebuild, staleness, dedupe) and the housekeeping commands."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from catdog_features.features import fingerprint, housekeeping, shard
from catdog_features.features.backbones import get_backbone
from catdog_features.features.plan import Work, partition, plan_batches, plan_work, slot_of
from catdog_features.features.shard import ShardError, ShardReader, ShardWriter, StoreFullError
from catdog_features.features.store import CacheWarning, FeatureStore, RowsLost

REPO = Path(__file__).resolve().parents[1]


def h(i) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


# --------------------------------------------------------------------------- planning
@pytest.mark.parametrize("n, batch", [(0, 4), (1, 4), (7, 1), (50, 4), (300, 32), (1000, 16)])
def test_plan_batches_holds_each_content_once_at_its_slot(n, batch):
    hashes = [h(i) for i in range(n)]
    plan = plan_batches(hashes, batch)
    seen = [c for b in plan for c in b.contents]
    assert sorted(seen) == list(range(n))
    for b in plan:
        assert len(set(b.slots)) == len(b.slots) <= batch  # at most one content per slot
        assert list(b.slots) == sorted(b.slots)
        assert all(slot_of(hashes[c], batch) == s for c, s in zip(b.contents, b.slots))
    if n:
        depth = max(sum(slot_of(x, batch) == s for x in hashes) for s in range(batch))
        assert len(plan) == depth


def test_slot_does_not_depend_on_the_other_contents():
    hashes = [h(i) for i in range(40)]
    full = {hashes[c]: s for b in plan_batches(hashes, 8) for c, s in zip(b.contents, b.slots)}
    part = {hashes[::3][c]: s for b in plan_batches(hashes[::3], 8) for c, s in zip(b.contents, b.slots)}
    assert all(full[x] == s for x, s in part.items())


def test_plan_work_lists_distinct_missing_contents_with_who_needs_them():
    hashes = [h(1), None, h(2), h(1), h(3)]
    paths = ["a", "b", "c", "d", "e"]
    work = plan_work(hashes, paths, {"A": {h(1), h(3)}, "B": {h(3)}})
    assert work.hashes == (h(1), h(3)) and work.paths == ("a", "e")
    assert work.needs == (("A",), ("A", "B"))
    assert work.for_extractor("A") == 2 and work.for_extractor("B") == 1
    with pytest.raises(ValueError, match="repeated"):
        plan_batches([h(1), h(1)], 4)


def test_partition_keeps_every_content_once():
    hashes = tuple(h(i) for i in range(200))
    work = Work(hashes, tuple(map(str, range(200))), tuple(("A",) for _ in hashes))
    parts = partition(work, 4, 8)
    assert 2 <= len(parts) <= 4
    assert sorted(x for p in parts for x in p.hashes) == sorted(hashes)


# --------------------------------------------------------------------------- shards
def _write(path, rows, batches=1, key="k", dim=4):
    with ShardWriter.create(path, key, (dim,)) as w:
        for chunk in np.array_split(np.arange(rows), batches):
            w.append([h(i) for i in chunk], np.full((len(chunk), dim), 1.0, np.float32) * chunk[:, None])
    return path


def test_shard_round_trip_and_layout(tmp_path):
    path = tmp_path / "s.h5"
    with ShardWriter.create(path, "key1", (3,)) as w:
        w.append([h(1), h(2)], np.array([[1, 2, 3], [4, 5, 6]], np.float32), [h(9)], ["not an image"])
        w.append([h(3)], np.array([[7, 8, 9]], np.float32))
    with ShardReader.open(path, "key1", (3,)) as r:
        assert r.sealed and (r.rows, r.failures) == (3, 1)
        assert [x.decode() for x in r.hashes()] == [h(1), h(2), h(3)]
        fh, reasons = r.failure_records()
        assert fh[0].decode() == h(9) and reasons[0] == b"not an image"
        assert r.read_rows(np.array([2, 0])).tolist() == [[7, 8, 9], [1, 2, 3]]
    with h5py.File(path, "r") as f:
        assert all(f[name].fletcher32 for name in ("hash", "features", "failure_hash", "failure_reason", "state"))
    assert not path.with_name(".s.h5.ballast").exists()
    with pytest.raises(ShardError, match="extractor"):
        ShardReader.open(path, "other-key")


@pytest.mark.parametrize("bad, message", [
    (np.array([[np.nan, 0, 0]], np.float32), "non-finite"),
    (np.array([[np.inf, 0, 0]], np.float32), "non-finite"),
    (np.zeros((1, 4), np.float32), "of shape"),
])
def test_writer_refuses_bad_rows(tmp_path, bad, message):
    with ShardWriter.create(tmp_path / "s.h5", "k", (3,)) as w, pytest.raises(ValueError, match=message):
        w.append([h(1)], bad)


def test_rows_past_the_counter_are_not_served_and_recovery_cuts_them(tmp_path):
    path = _write(tmp_path / "s.h5", 6)
    with h5py.File(path, "r+", locking=False) as f:  # as a killed writer leaves it: uncommitted tail
        f["state"][:] = [4, 0, 0]
    with ShardReader.open(path) as r:
        assert r.rows == 4 and not r.sealed and len(r.hashes()) == 4
        with pytest.raises(ShardError, match="requested"):
            r.read_rows(np.array([5]))
    assert shard.recover(path) and not shard.recover(path)
    with ShardReader.open(path) as r, h5py.File(path, "r", locking=False) as f:
        assert r.sealed and r.rows == 4 and len(f["features"]) == 4


def _flip_byte_in_features(path):
    with h5py.File(path, "r", locking=False) as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 5)
        byte = fh.read(1)
        fh.seek(offset + 5)
        fh.write(bytes([byte[0] ^ 0x10]))


def test_flipped_byte_is_detected_by_the_checksum(tmp_path):
    path = _write(tmp_path / "s.h5", 40, batches=4)
    _flip_byte_in_features(path)
    with ShardReader.open(path) as r:
        with pytest.raises(ShardError, match="cannot be read"):
            r.read_rows(np.arange(40))
        assert [ok for _, _, ok in r.scan(step_rows=8)][0] is False


@pytest.mark.parametrize("damage", ["garbage", "empty", "counter beyond data", "foreign file"])
def test_invalid_shards_are_refused_on_open(tmp_path, damage):
    path = _write(tmp_path / "s.h5", 5)
    if damage == "garbage":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(3000))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "counter beyond data":
        with h5py.File(path, "r+", locking=False) as f:
            f["state"][0] = 99
    else:
        with h5py.File(path, "w") as f:
            f["x"] = np.zeros(3)
    with pytest.raises(ShardError):
        ShardReader.open(path)


def test_full_disk_stops_before_writing_and_keeps_what_is_committed(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    w = ShardWriter.create(path, "k", (4,))
    w.append([h(1), h(2)], np.ones((2, 4), np.float32))
    monkeypatch.setattr(shard, "free_bytes", lambda folder: 1000)
    with pytest.raises(StoreFullError, match=r"disk holding the feature store is full .* 2 rows of this file are committed"):
        w.append([h(3)], np.ones((1, 4), np.float32))
    with ShardReader.open(path) as r:
        assert r.rows == 2 and not r.sealed


def test_failed_write_never_moves_the_counter(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    w = ShardWriter.create(path, "k", (4,))
    w.append([h(1)], np.ones((1, 4), np.float32))
    calls = []
    real = shard._fsync

    def failing(f):
        calls.append(1)
        if len(calls) == 1:  # the data flush of the next batch
            raise RuntimeError("Unable to synchronously flush file (errno = 28, 'No space left on device')")
        real(f)

    monkeypatch.setattr(shard, "_fsync", failing)
    with pytest.raises(StoreFullError, match="1 rows of this file are committed"):
        w.append([h(2), h(3)], np.ones((2, 4), np.float32))
    monkeypatch.setattr(shard, "_fsync", real)
    with ShardReader.open(path) as r:
        assert r.rows == 1 and r.read_rows(np.array([0])).tolist() == [[1, 1, 1, 1]]


def _can_mount_tmpfs(target):
    target.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(target)], capture_output=True)
    return proc.returncode == 0


def test_real_full_disk_gives_a_clear_error_and_valid_rows(tmp_path):
    disk = tmp_path / "tmpfs"
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        code = textwrap.dedent(f"""
            import numpy as np, hashlib
            from catdog_features.features.shard import ShardWriter, StoreWriteError
            w = ShardWriter.create({str(disk / 's.h5')!r}, "k", (512,))
            n = 0
            try:
                while True:
                    hs = [hashlib.sha256(str(n + i).encode()).hexdigest() for i in range(64)]
                    w.append(hs, np.random.default_rng(n).random((64, 512), np.float32) + 1)
                    n += 64
            except StoreWriteError as exc:
                print("STOPPED", n, exc.committed, type(exc).__name__)
            w.close()
            """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert proc.returncode == 0, proc.stderr[-2000:]  # no segfault at exit
        words = proc.stdout.split()
        assert words[0] == "STOPPED" and words[1] == words[2] and words[3] == "StoreFullError"
        with ShardReader.open(disk / "s.h5") as r:
            x = r.read_rows(np.arange(r.rows))
            assert r.rows == int(words[1]) > 0 and (x > 0).all()  # no zero rows under the counter
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# --------------------------------------------------------------------------- the index
def _extractor(tmp_path, dim=4):
    config = fingerprint.extractor_config(get_backbone("VGG16"), None, 32)
    config["row_shape"] = [dim]
    return FeatureStore(tmp_path / "store").extractor(config)


def _add(ex, ids, failures=(), value=None):
    with ex.new_writer((4,)) as w:
        w.append([h(i) for i in ids], np.array([[value if value is not None else i] * 4 for i in ids], np.float32),
                 [h(i) for i in failures], ["truncated"] * len(failures))


def test_index_finds_rows_and_failures_and_dedupes_across_shards(tmp_path):
    ex = _extractor(tmp_path)
    _add(ex, [1, 2, 3], failures=[9])
    _add(ex, [3, 4], value=-1.0)  # a concurrent writer computed content 3 too
    lk = ex.lookup([h(i) for i in (4, 3, 9, 7)])
    assert lk.found.tolist() == [True, True, True, False]
    assert lk.is_row.tolist() == [True, True, False, False] and lk.reasons()[2] == "truncated"
    assert ex.read(lk)[:, 0].tolist() == [-1.0, 3.0]  # the first shard's row wins


def test_index_is_rebuilt_when_missing_stale_or_damaged(tmp_path):
    ex = _extractor(tmp_path)
    _add(ex, [1, 2])
    assert ex.lookup([h(1)]).found.all()
    (ex.root / "index.h5").unlink()
    assert ex.lookup([h(2)]).found.all()  # rebuilt from the shards
    (ex.root / "index.h5").write_bytes(b"garbage")
    ex._index = None
    assert ex.lookup([h(2)]).found.all()
    _add(ex, [5])  # a new sealed shard makes the stored index stale
    assert ex.lookup([h(5)]).found.all()


def test_a_shard_being_written_is_not_read_until_sealed(tmp_path):
    ex = _extractor(tmp_path)
    writer = ex.new_writer((4,))
    writer.append([h(1)], np.ones((1, 4), np.float32))
    assert not ex.lookup([h(1)]).found.any()
    writer.seal()
    assert ex.lookup([h(1)]).found.all()


def test_orphan_of_a_killed_writer_is_sealed_and_served(tmp_path):
    ex = _extractor(tmp_path)
    ex.ensure()
    code = textwrap.dedent(f"""
        import os, signal, hashlib, numpy as np
        from catdog_features.features.shard import ShardWriter
        w = ShardWriter.create({str(ex.shards_dir / 'orphan.h5')!r}, {ex.key!r}, (4,))
        w.append([hashlib.sha256(b"1").hexdigest()], np.ones((1, 4), np.float32))
        os.kill(os.getpid(), signal.SIGKILL)
        """)
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert ex.lookup([h(1)]).found.all()
    with ShardReader.open(ex.shards_dir / "orphan.h5") as r:
        assert r.sealed


def test_damaged_shard_is_quarantined_and_its_good_rows_kept(tmp_path):
    ex = _extractor(tmp_path)
    chunk = shard.chunk_rows((4,), 4)
    n = chunk + 4  # a full first chunk and 4 rows in the second
    with ex.new_writer((4,)) as w:
        w.append([h(i) for i in range(n)], np.arange(n, dtype=np.float32)[:, None].repeat(4, 1))
    damaged = ex.shard_paths()[0]
    _flip_byte_in_features(damaged)
    lk = ex.lookup([h(i) for i in range(n)])
    with pytest.warns(CacheWarning, match="is damaged"), pytest.raises(RowsLost):
        ex.read(lk)
    assert list((ex.root / "damaged").iterdir()) and damaged not in ex.shard_paths()
    lk = ex.lookup([h(i) for i in range(n)])
    assert lk.found.tolist() == [False] * chunk + [True] * 4  # only the damaged chunk is lost
    assert ex.read(ex.lookup([h(n - 1)]))[0, 0] == n - 1


# --------------------------------------------------------------------------- housekeeping
def test_ls_verify_prune_compact(tmp_path):
    ex = _extractor(tmp_path)
    for k in range(4):
        _add(ex, range(10 * k, 10 * k + 10))
    rows = housekeeping.list_store(tmp_path / "store")
    assert [(r.backbone, r.rows, r.shards) for r in rows] == [("VGG16", 40, 4)]
    assert housekeeping.verify_store(tmp_path / "store").ok

    results = housekeeping.compact(tmp_path / "store")
    assert (results[0].shards_before, results[0].shards_after) == (4, 1)
    assert ex.lookup([h(i) for i in range(40)]).found.all()
    assert ex.read(ex.lookup([h(33)]))[0, 0] == 33.0

    keep = tmp_path / "keep"
    keep.mkdir()
    for i in range(5):
        (keep / f"{i}.png").write_bytes(str(i).encode())
    dry = housekeeping.prune(tmp_path / "store", [keep], dry_run=True)[0]
    assert (dry.rows_before, dry.rows_after) == (40, 5) and ex.lookup([h(20)]).found.all()  # nothing removed
    assert dry.bytes_after < dry.bytes_before


def test_verify_names_the_damaged_shard_and_rows(tmp_path):
    ex = _extractor(tmp_path)
    with ex.new_writer((4,)) as w:
        w.append([h(i) for i in range(20)], np.ones((20, 4), np.float32))
    path = ex.shard_paths()[0]
    _flip_byte_in_features(path)
    result = housekeeping.verify_store(tmp_path / "store")
    assert not result.ok and result.damaged[0].shard == str(path) and "rows 0-" in result.damaged[0].rows


def test_prune_keeps_exactly_the_contents_of_the_keep_folders(tmp_path):
    ex = _extractor(tmp_path)
    keep = tmp_path / "keep" / "sub"
    keep.mkdir(parents=True)
    for i in (1, 2):
        (keep / f"{i}.jpg").write_bytes(str(i).encode())  # contents whose sha256 is h(i)
    (keep / "notes.txt").write_bytes(b"3")
    _add(ex, [1, 2, 3, 4], failures=[2])
    results = housekeeping.prune(tmp_path / "store", [tmp_path / "keep"], dry_run=False)
    assert (results[0].rows_before, results[0].rows_after) == (4, 2)
    assert ex.lookup([h(i) for i in (1, 2, 3, 4)]).found.tolist() == [True, True, False, False]


@pytest.mark.slow
@pytest.mark.parametrize("action", ["compact", "prune"])
def test_kill_during_compact_or_prune_loses_nothing(tmp_path, action):
    ex = _extractor(tmp_path)
    for k in range(6):
        _add(ex, range(50 * k, 50 * k + 50))
    keep_all = tmp_path / "keep"
    keep_all.mkdir()
    for i in range(300):
        (keep_all / f"{i}.jpg").write_bytes(str(i).encode())
    call = (f"housekeeping.compact({str(tmp_path / 'store')!r})" if action == "compact" else
            f"housekeeping.prune({str(tmp_path / 'store')!r}, [{str(keep_all)!r}], dry_run=False)")
    rng = np.random.default_rng(0)
    for round_ in range(4):
        code = textwrap.dedent(f"""
            import os, signal, threading
            from catdog_features.features import housekeeping
            threading.Timer({float(rng.uniform(0.05, 0.6))}, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
            {call}
            """)
        subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                       timeout=120)
        ex._index = None
        with warnings.catch_warnings():
            warnings.simplefilter("error", CacheWarning)  # nothing may be found damaged
            lk = ex.lookup([h(i) for i in range(300)])
        assert lk.found.all(), round_
        assert ex.read(lk)[:, 0].tolist() == [float(i) for i in range(300)]



# --------------------------------------------------------------------------- content hashes
def test_hash_files_in_order_with_reasons_for_what_has_no_bytes(tmp_path):
    files = []
    for i in range(70):  # > 64: the thread-pool path
        p = tmp_path / f"{i}.bin"
        p.write_bytes(bytes([i]) * (i + 1))
        files.append(p)
    hashes = fingerprint.hash_files(files)
    assert [x.sha256 for x in hashes] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert fingerprint.hash_file(tmp_path / "nope.jpg").reason == "file not found"
    assert fingerprint.hash_file(tmp_path).reason == "not a file"
    assert fingerprint.hash_file(tmp_path / "empty.jpg").reason == "empty file"


@pytest.mark.parametrize("damage", ["nan", "inf", "float64 1e300", "wrong width", "strings", "duplicate hashes",
                                    "counter beyond rows"])
def test_shards_that_open_but_hold_bad_data_are_never_served(tmp_path, damage):
    ex = _extractor(tmp_path)
    _add(ex, range(6))
    path = ex.shard_paths()[0]
    with h5py.File(path, "r+", locking=False) as f:
        if damage in ("nan", "inf"):
            f["features"][2, 1] = np.nan if damage == "nan" else np.inf
        elif damage == "float64 1e300":
            del f["features"]
            f.create_dataset("features", data=np.full((6, 4), 1e300), chunks=(6, 4), fletcher32=True)
            f.attrs["dtype"] = "float64"
        elif damage == "wrong width":
            del f["features"]
            f.create_dataset("features", data=np.ones((6, 7), np.float32), chunks=(6, 7), fletcher32=True)
            f.attrs["row_shape"] = "[7]"
        elif damage == "strings":
            del f["features"]
            f.create_dataset("features", data=np.full((6, 4), b"1.0"), chunks=(6, 4))
        elif damage == "duplicate hashes":
            f["hash"][3] = f["hash"][1]
        else:
            f["state"][0] = 60
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheWarning)
        lk = ex.lookup([h(i) for i in range(6)])
    if lk.found.any():  # found in the index: reading must refuse it, quarantine the shard and lose the rows
        with pytest.warns(CacheWarning, match="is damaged"), pytest.raises(RowsLost):
            ex.read(lk)
    else:  # refused when the index was built: quarantined already, with a warning
        assert list((ex.root / "damaged").iterdir()) and "is damaged" in str(caught[0].message)
    clean = ex.lookup([h(i) for i in range(6)])
    if clean.is_row.any():  # only rows that pass every check come back
        assert np.isfinite(ex.read(clean)).all()
