"""catdog_features.features.cache: fingerprints, planning, commit/truncate/resume, corrupt files, locks."""

import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from catdog_features.features import cache
from catdog_features.features.backbones import get_backbone
from catdog_features.features.cache import (
    CacheLockedError,
    CacheWarning,
    EntryLock,
    EntryWriter,
    Segment,
    plan_segments,
)
from catdog_features.features.extract import cache_entries, extract_features
from extract_helpers import BAD_FILES, make_images, run_python

# --------------------------------------------------------------------------- planning


@pytest.mark.parametrize("committed, n, bs, expected", [
    ({"A": 0}, 10, 4, [(0, 10, "A")]),
    ({"A": 10}, 10, 4, []),
    ({"A": 0, "B": 0}, 10, 4, [(0, 10, "AB")]),
    ({"A": 4, "B": 0}, 10, 4, [(0, 4, "B"), (4, 10, "AB")]),
    ({"A": 8, "B": 4}, 10, 4, [(4, 8, "B"), (8, 10, "AB")]),
    ({"A": 10, "B": 4}, 10, 4, [(4, 10, "B")]),
    ({"A": 10, "B": 10}, 10, 4, []),
    ({"A": 6}, 10, 4, [(4, 10, "A")]),  # written with another batch size: redo its batch
    ({"A": 0, "B": 9, "C": 5}, 10, 3, [(0, 3, "A"), (3, 9, "AC"), (9, 10, "ABC")]),
    ({"A": 0}, 0, 4, []),
    ({}, 10, 4, []),
    ({"A": 0}, 3, 32, [(0, 3, "A")]),
])
def test_plan_segments_table(committed, n, bs, expected):
    got = plan_segments(committed, n, bs)
    assert got == tuple(Segment(lo, hi, tuple(names)) for lo, hi, names in expected)


@pytest.mark.parametrize("committed, n, bs", [
    ({"A": 11}, 10, 4),
    ({"A": -1}, 10, 4),
    ({"A": 1.5}, 10, 4),
    ({"A": True}, 10, 4),
    ({"A": 0}, 10, 0),
    ({"A": 0}, -1, 4),
])
def test_plan_segments_rejects_bad_input(committed, n, bs):
    with pytest.raises(ValueError, match="Received"):
        plan_segments(committed, n, bs)


def _check_plan(committed, n, bs):
    plan = plan_segments(committed, n, bs)
    for a, b in zip(plan, plan[1:]):
        assert a.stop == b.start  # contiguous and ascending
    for seg in plan:
        assert seg.start < seg.stop and seg.backbones
        assert seg.start % bs == 0 and (seg.stop % bs == 0 or seg.stop == n)
        assert list(seg.backbones) == [b for b in committed if b in seg.backbones]  # stable order
        # reading the segment in batches gives exactly the batches of an uninterrupted run
        for start in range(seg.start, seg.stop, bs):
            assert start % bs == 0 and min(start + bs, seg.stop) == min(start + bs, n)
    for name, done in committed.items():
        covered = [p for seg in plan if name in seg.backbones for p in range(seg.start, seg.stop)]
        if done == n:
            assert covered == []
        else:  # exactly its positions, from the batch holding its first missing position
            assert covered == list(range(done // bs * bs, n))


def test_plan_segments_exhaustive():
    cases = 0
    for n in range(0, 12):
        for bs in range(1, 6):
            for a, b in itertools.product(range(n + 1), repeat=2):
                _check_plan({"A": a, "B": b}, n, bs)
                cases += 1
            for a, b, c in itertools.product(range(0, n + 1, 2), repeat=3):
                _check_plan({"A": a, "B": b, "C": c}, n, bs)
    assert cases > 2000


# --------------------------------------------------------------------------- fingerprints


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("fp"), n_per_class=2, size=32)


def _entry(folder, tmp_path, **kw):
    args = dict(backbones=["VGG16"], cache_dir=tmp_path / "c", weights=None, image_size=32)
    args.update(kw)
    return cache_entries(folder, **args)[get_backbone(args["backbones"][0]).name]


def _rewrite_same_size_and_mtime(path):
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte inside the JPEG scan data
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("change", [
    "image bytes (same size and mtime)", "image size", "backbone", "view", "file renamed", "file added",
])
def test_fingerprint_changes_with_what_changes_vectors(small_dir, tmp_path, change):
    folder = tmp_path / "train"
    shutil.copytree(small_dir, folder)
    before = _entry(folder, tmp_path)
    assert _entry(folder, tmp_path) == before  # stable
    kw = {}
    if change.startswith("image bytes"):
        _rewrite_same_size_and_mtime(folder / "cat.0.jpg")
    elif change == "image size":
        kw["image_size"] = 33
    elif change == "backbone":
        kw["backbones"] = ["VGG19"]
    elif change == "view":
        kw["view"] = "hflip"
    elif change == "file renamed":
        os.rename(folder / "dog.1.jpg", folder / "dog.7.jpg")
    else:
        shutil.copy(folder / "dog.1.jpg", folder / "dog.8.jpg")
    after = _entry(folder, tmp_path, **kw)
    assert after != before
    assert after.name.rsplit("-", 1)[1] != before.name.rsplit("-", 1)[1]  # the fingerprint part


def test_fingerprint_changes_with_weights_file_content(small_dir, tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"first version")
    first = _entry(small_dir, tmp_path, weights=str(weights))
    assert _entry(small_dir, tmp_path, weights=str(weights)) == first
    weights.write_bytes(b"other version")
    assert _entry(small_dir, tmp_path, weights=str(weights)) != first
    assert _entry(small_dir, tmp_path, weights=None) != first != _entry(small_dir, tmp_path, weights="imagenet")


@pytest.mark.parametrize("field, value", [
    ("tensorflow", "0.0-other"), ("keras", "0.0-other"),
])
def test_fingerprint_covers_library_versions(field, value):
    spec = get_backbone("ResNet50")
    versions = cache.library_versions()
    base = cache.entry_config(spec, "imagenet", 224, "plain", "d" * 64, 3, versions)
    other = cache.entry_config(spec, "imagenet", 224, "plain", "d" * 64, 3, dict(versions, **{field: value}))
    assert cache.fingerprint(base) != cache.fingerprint(other)
    from catdog_features.features.reader import READER_VERSION

    assert base["reader_version"] == READER_VERSION


def test_hash_files_markers_and_order(tmp_path):
    files = []
    for i in range(70):  # > 64: the thread-pool path
        p = tmp_path / f"{i}.bin"
        p.write_bytes(bytes([i]) * (i + 1))
        files.append(p)
    hashes = cache.hash_files(files)
    assert hashes == [cache.hash_file(p) for p in files] and len(set(hashes)) == 70
    assert cache.hash_file(tmp_path / "nope.jpg") == cache.MISSING_HASH
    assert cache.hash_file(tmp_path).startswith(cache.UNREADABLE_HASH)


# --------------------------------------------------------------------------- entry writer

N, BS, DIM = 10, 4, 3
FAILED = {2: "not an image", 7: "truncated"}
IDS = [f"img{i}" for i in range(N)]
HASHES = [f"{i:032x}" for i in range(N)]


def _config():
    return cache.entry_config(get_backbone("VGG16"), "random-init", 32, "plain", "d" * 64, N,
                              {"tensorflow": "x", "keras": "y"})


def _open(path):
    return EntryWriter.open(path, _config(), N, DIM, IDS, HASHES, labels=np.arange(N) % 2, batch_size=BS,
                            input_paths=[f"/data/{i}.jpg" for i in IDS])


def _batch(start, stop):
    ok = np.array([p for p in range(start, stop) if p not in FAILED], np.int64)
    feats = np.stack([np.full(DIM, p + 0.5, np.float32) for p in ok]) if len(ok) else np.zeros((0, DIM), np.float32)
    failures = [(p, f"/data/img{p}.jpg", FAILED[p]) for p in range(start, stop) if p in FAILED]
    return ok, feats, failures


def _write(writer, start=None):
    start = writer.committed if start is None else start
    for lo in range(start, N, BS):
        writer.append(lo, min(lo + BS, N), *_batch(lo, min(lo + BS, N)))
    writer.finish()


def test_entry_layout_and_accounting(tmp_path):
    path = tmp_path / "e.h5"
    writer = _open(path)
    _write(writer)
    data = writer.read()
    writer.close()
    assert data.positions.tolist() == [p for p in range(N) if p not in FAILED]
    assert np.array_equal(data.features[:, 0], data.positions + 0.5)
    assert [(p, r) for p, _, r in data.failures] == sorted(FAILED.items())
    assert len(data.positions) + len(data.failures) == N
    with h5py.File(path, "r", locking=False) as f:
        assert f.attrs["complete"] and f.attrs["committed_inputs"] == N and f.attrs["n_inputs"] == N
        assert f.attrs["format_version"] == cache.FORMAT_VERSION
        config = json.loads(f.attrs["config"])
        assert config["backbone"]["name"] == "VGG16" and config["image_size"] == 32 and config["view"] == "plain"
        assert cache.fingerprint(config) == f.attrs["fingerprint"]
        assert [x.decode() for x in f["ids"][:]] == [IDS[p] for p in data.positions]
        assert f["labels"][:].tolist() == [p % 2 for p in data.positions]
        assert f["features"].dtype == np.float32 and f["features"].chunks is not None
        assert [x.decode() for x in f["failures/path"][:]] == ["/data/img2.jpg", "/data/img7.jpg"]
        assert len(f["inputs/ids"]) == N
    fp = cache.fingerprint(_config())
    assert cache.read_complete(path, fp, N).positions.tolist() == data.positions.tolist()
    assert cache.read_complete(path, "other", N) is None


def test_append_must_continue_the_commit(tmp_path):
    writer = _open(tmp_path / "e.h5")
    with pytest.raises(ValueError, match="does not continue"):
        writer.append(4, 8, *_batch(4, 8))
    ok, feats, failures = _batch(0, 4)
    with pytest.raises(ValueError, match="accounts for"):
        writer.append(0, 4, ok[:1], feats[:1], failures)
    with pytest.raises(ValueError, match="only 0 of"):
        writer.finish()
    writer.close()


def test_resume_truncates_uncommitted_rows_and_is_bit_identical(tmp_path):
    reference = _open(tmp_path / "ref.h5")
    _write(reference)
    expected = reference.read()
    reference.close()

    path = tmp_path / "e.h5"
    writer = _open(path)
    writer.append(0, 4, *_batch(0, 4))
    writer.close()
    # What a process killed between "rows flushed" and "commit" leaves behind.
    with h5py.File(path, "a", locking=False) as f:
        for name in ("features", "positions", "ids", "labels"):
            f[name].resize(f[name].shape[0] + 3, axis=0)
        f["features"][-3:] = 99.0
        f["positions"][-3:] = [4, 5, 6]
        for name in ("failures/position", "failures/path", "failures/reason"):
            f[name].resize(f[name].shape[0] + 1, axis=0)
        f["failures/position"][-1] = 7
        assert f.attrs["committed_inputs"] == 4
    writer = _open(path)
    assert writer.committed == writer.resumed_from == 4 and writer.recovered is None
    with h5py.File(path, "r", locking=False) as f:  # truncated back to the commit
        assert f["positions"][:].tolist() == [0, 1, 3] and len(f["failures/position"]) == 1
    _write(writer)
    got = writer.read()
    writer.close()
    assert np.array_equal(got.positions, expected.positions)
    assert np.array_equal(got.features, expected.features)
    assert got.failures == expected.failures


def _garbage(path):
    path.write_bytes(os.urandom(4096))


def _truncated(path):
    writer = _open(path)
    _write(writer)
    writer.close()
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


def _empty(path):
    path.write_bytes(b"")


def _foreign(path):
    with h5py.File(path, "w") as f:
        f["something"] = np.arange(3)


def _bad_counter(path):
    writer = _open(path)
    writer.append(0, 4, *_batch(0, 4))
    writer.close()
    with h5py.File(path, "a", locking=False) as f:
        f.attrs["committed_inputs"] = 9  # more than the rows + failures it holds


@pytest.mark.parametrize("damage", [_garbage, _truncated, _empty, _foreign, _bad_counter])
def test_unusable_file_is_moved_aside_with_a_warning(tmp_path, damage):
    path = tmp_path / "e.h5"
    damage(path)
    assert cache.read_complete(path, cache.fingerprint(_config()), N) is None
    with pytest.warns(CacheWarning, match=r"e\.h5 was unusable .*moved it to e\.h5\.corrupt-"):
        writer = _open(path)
    assert writer.committed == 0 and writer.recovered
    _write(writer)
    assert len(writer.read().positions) == N - len(FAILED)
    writer.close()
    aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1


def test_complete_entry_is_readable_while_another_program_holds_it_with_hdf5_locking(tmp_path):
    path = tmp_path / "e.h5"
    writer = _open(path)
    _write(writer)
    writer.close()
    # Another process opens the file for writing with HDF5's own (default) file locking.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import h5py, sys; f = h5py.File(sys.argv[1], 'r+'); print('open', flush=True); "
         "sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        data = cache.read_complete(path, cache.fingerprint(_config()), N)
        assert data is not None and len(data.positions) == N - len(FAILED)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


# --------------------------------------------------------------------------- locking

_HOLD = """
import fcntl, os, sys
fh = open(sys.argv[1], "a+")
fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
fh.seek(0); fh.truncate(); fh.write(f"{os.getpid()} holder\\n"); fh.flush()
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def lock_holder(tmp_path):
    entry = tmp_path / "X-32-plain-0123.h5"
    lock_path = EntryLock(entry).path
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield entry, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def test_second_writer_times_out_with_a_clear_message(lock_holder):
    entry, proc = lock_holder
    messages = []
    t0 = time.monotonic()
    with pytest.raises(CacheLockedError, match=rf"Another process \(pid {proc.pid}\) is writing the cache entry"):
        EntryLock(entry, timeout=0.3, on_wait=messages.append).acquire()
    assert time.monotonic() - t0 >= 0.3
    assert len(messages) == 1 and f"pid {proc.pid}" in messages[0]
    proc.kill()  # a killed holder releases its lock
    proc.wait(timeout=30)
    with EntryLock(entry, timeout=5) as lock:
        assert lock.path.read_text().split()[0] == str(os.getpid())


def test_second_writer_waits_for_the_first(tmp_path):
    entry = tmp_path / "e.h5"
    first = EntryLock(entry).acquire()
    timer = threading.Timer(0.3, first.release)
    timer.start()
    t0 = time.monotonic()
    with EntryLock(entry, timeout=10):
        waited = time.monotonic() - t0
    timer.join()
    assert 0.2 <= waited < 5


def test_extract_refuses_an_entry_another_process_writes(small_dir, tmp_path):
    entry = _entry(small_dir, tmp_path)
    entry.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(EntryLock(entry).path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CacheLockedError, match=f"pid {holder.pid}"):
            extract_features(small_dir, backbones=["VGG16"], cache_dir=tmp_path / "c", weights=None,
                             image_size=32, lock_timeout=0.2, progress=False)
        assert not entry.exists()  # nothing was written behind the holder's back
    finally:
        holder.kill()
        holder.wait(timeout=30)


# --------------------------------------------------------------------------- end to end


def test_rows_plus_failures_equal_inputs_with_bad_files(tmp_path):
    folder = make_images(tmp_path / "d", n_per_class=3, bad=list(BAD_FILES), size=32)
    fs = extract_features(folder, backbones=["VGG16"], cache_dir=tmp_path / "c", weights=None, image_size=32,
                          batch_size=4, progress=False)
    assert len(fs) == 6 and len(fs) + len(fs.failed) == 6 + len(BAD_FILES)
    assert sorted((os.path.basename(p), r) for p, r in fs.failed) == sorted(
        (name, reason) for name, (_, reason) in BAD_FILES.items()
    )
    assert fs["VGG16"].shape == (6, 512) and fs.labels.tolist() == [0, 0, 0, 1, 1, 1]
    with h5py.File(fs.cache_files["VGG16"], "r", locking=False) as f:
        assert len(f["positions"]) + len(f["failures/position"]) == f.attrs["n_inputs"] == 9
        assert sorted(x.decode() for x in f["failures/reason"][:]) == sorted(r for _, r in BAD_FILES.values())


def test_hdf5_lock_conflict_is_reported_not_treated_as_corruption(tmp_path):
    path = tmp_path / "e.h5"
    writer = _open(path)
    writer.append(0, 4, *_batch(0, 4))
    writer.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import h5py, sys; f = h5py.File(sys.argv[1], 'r+'); print('open', flush=True); "
         "sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    # HDF5 reads HDF5_USE_FILE_LOCKING once per process, and it overrides locking=False.
    code = f"""
        import numpy as np, test_cache
        from catdog_features.features.cache import CacheLockedError
        try:
            test_cache._open(__import__("pathlib").Path({str(path)!r}))
        except CacheLockedError as exc:
            print("LOCKED", exc)
        """
    try:
        assert holder.stdout.readline().strip() == "open"
        out = run_python(code, {"HDF5_USE_FILE_LOCKING": "TRUE"}).stdout
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert out.startswith("LOCKED") and "HDF5_USE_FILE_LOCKING=TRUE" in out, out
    assert [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name] == []  # not moved aside
    assert _open(path).committed == 4
