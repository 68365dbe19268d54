"""Kaggle submission writer: formats, id order, sample-submission checks, failed images, atomic writes."""

import csv
import warnings

import numpy as np
import pytest

from catdog_features import submission as sub
from catdog_features.submission import (
    SubmissionMismatchError,
    read_probabilities,
    read_sample_submission,
    write_probabilities,
    write_submission,
)


def read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def write_sample(path, ids, columns):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", *columns])
        for i in ids:
            w.writerow([i, *["0.5"] * len(columns)])
    return path


def test_binary_numeric_id_order_header_and_rows(tmp_path):
    ids = ["10", "2", "1", "100", "11"]
    p_dog = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    info = write_submission(tmp_path / "s.csv", ids, np.column_stack([1 - p_dog, p_dog]), ("cat", "dog"))
    header, rows = read_csv(tmp_path / "s.csv")
    assert header == ["id", "label"]
    assert [r[0] for r in rows] == ["1", "2", "10", "11", "100"]
    assert [float(r[1]) for r in rows] == [0.3, 0.2, 0.1, 0.5, 0.4]  # probability of dog
    assert info.n_rows == 5 and info.format == "binary"


def test_binary_accepts_1d_probability_of_class_1_and_clips(tmp_path):
    write_submission(tmp_path / "s.csv", ["1", "2"], np.array([0.0, 1.0]), ("cat", "dog"), clip=0.005)
    _, rows = read_csv(tmp_path / "s.csv")
    assert [float(r[1]) for r in rows] == [0.005, 0.995]


def test_multiclass_column_order_from_sample_and_rows_sum_to_one(tmp_path):
    classes = ("akita", "boxer", "pug")
    sample = write_sample(tmp_path / "sample.csv", ["b7", "a1", "c3"], ["pug", "akita", "boxer"])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])  # for ids a1, b7, c3
    info = write_submission(tmp_path / "s.csv", ["a1", "b7", "c3"], probs, classes, sample_submission=sample)
    header, rows = read_csv(tmp_path / "s.csv")
    assert header == ["id", "pug", "akita", "boxer"]
    assert [r[0] for r in rows] == ["b7", "a1", "c3"]  # the sample's row order
    values = np.array([[float(v) for v in r[1:]] for r in rows])
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(values[0], [0.1, 0.1, 0.8])  # b7: pug, akita, boxer
    assert info.format == "multiclass"


def test_multiclass_without_sample_uses_class_names_and_clip_renormalises(tmp_path):
    probs = np.array([[1.0, 0.0, 0.0]])
    write_submission(tmp_path / "s.csv", ["x"], probs, ("a", "b", "c"), clip=0.01)
    header, rows = read_csv(tmp_path / "s.csv")
    assert header == ["id", "a", "b", "c"]
    values = np.array([float(v) for v in rows[0][1:]])
    assert values.min() > 0 and values.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("sample_ids, columns, pred_ids, classes, messages", [
    (["1", "2", "3"], ["label"], ["1", "2"], ("cat", "dog"), ["missing", "'3'"]),
    (["1", "2"], ["label"], ["1", "2", "9"], ("cat", "dog"), ["extra", "'9'"]),
    (["1"], ["akita", "boxer", "pug"], ["1"], ("akita", "boxer", "collie"), ["missing from the model", "'pug'", "extra", "'collie'"]),
    (["1"], ["akita", "boxer", "pug", "beagle"], ["1"], ("akita", "boxer", "pug"), ["'beagle'", "allow_missing_classes"]),
    ([str(i) for i in range(20)], ["label"], ["0"], ("cat", "dog"), ["(19 in all)"]),
])
def test_mismatch_with_sample_is_a_clear_error(tmp_path, sample_ids, columns, pred_ids, classes, messages):
    sample = write_sample(tmp_path / "sample.csv", sample_ids, columns)
    probs = np.full((len(pred_ids), len(classes)), 1 / len(classes))
    with pytest.raises(SubmissionMismatchError) as err:
        write_submission(tmp_path / "s.csv", pred_ids, probs, classes, sample_submission=sample)
    for m in messages:
        assert m in str(err.value)
    assert not (tmp_path / "s.csv").exists()


def test_missing_classes_can_be_allowed(tmp_path):
    sample = write_sample(tmp_path / "sample.csv", ["1"], ["akita", "beagle", "boxer"])
    write_submission(tmp_path / "s.csv", ["1"], np.array([[0.25, 0.75]]), ("akita", "boxer"),
                     sample_submission=sample, allow_missing_classes=True)
    header, rows = read_csv(tmp_path / "s.csv")
    assert header == ["id", "akita", "beagle", "boxer"]
    assert [float(v) for v in rows[0][1:]] == [0.25, 0.0, 0.75]


def test_failed_images_get_prior_row_and_warning(tmp_path):
    sample = write_sample(tmp_path / "sample.csv", ["1", "2", "3", "4"], ["label"])
    with pytest.warns(UserWarning, match=r"could not be read.*'3'"):
        info = write_submission(tmp_path / "s.csv", ["1", "2", "4"], np.array([0.9, 0.8, 0.1]), ("cat", "dog"),
                                sample_submission=sample, failed_ids=["3"], prior=np.array([0.4, 0.6]))
    _, rows = read_csv(tmp_path / "s.csv")
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert float(rows[2][1]) == 0.6
    assert info.filled_ids == ("3",)


def test_no_warning_without_failed_images(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_submission(tmp_path / "s.csv", ["1"], np.array([0.5]), ("cat", "dog"))


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "s.csv"
    target.write_text("old content\n")
    calls = {"n": 0}
    real = sub._format_row

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return real(*args)

    monkeypatch.setattr(sub, "_format_row", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_submission(target, [str(i) for i in range(10)], np.full(10, 0.5), ("cat", "dog"))
    assert target.read_text() == "old content\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]  # no temp file left behind


@pytest.mark.parametrize("ids, probs, classes, match", [
    (["1", "1"], np.full(2, 0.5), ("cat", "dog"), "duplicate"),
    (["1"], np.array([[0.2, 0.3, 0.5]]), ("cat", "dog"), r"shape \(1, 3\)"),
    (["1"], np.array([np.nan]), ("cat", "dog"), "NaN"),
    (["1"], np.array([[1.0]]), ("cat",), "at least two classes"),
])
def test_invalid_inputs(tmp_path, ids, probs, classes, match):
    with pytest.raises(ValueError, match=match):
        write_submission(tmp_path / "s.csv", ids, probs, classes)


def test_read_sample_submission_and_probability_roundtrip(tmp_path):
    sample = read_sample_submission(write_sample(tmp_path / "sample.csv", ["3", "1"], ["label"]))
    assert sample.ids == ("3", "1") and sample.is_binary and sample.id_column == "id"
    probs = np.array([[0.123456789, 0.876543211]])
    write_probabilities(tmp_path / "p.csv", ["7"], probs, ("cat", "dog"))
    ids, back, classes = read_probabilities(tmp_path / "p.csv")
    assert list(ids) == ["7"] and classes == ("cat", "dog")
    np.testing.assert_allclose(back, probs, atol=1e-8)


def test_files_get_the_usual_mode_not_0600(tmp_path):
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    write_submission(tmp_path / "s.csv", ["1"], np.array([0.5]), ("cat", "dog"))
    write_probabilities(tmp_path / "p.csv", ["1"], np.array([[0.5, 0.5]]), ("cat", "dog"))
    (tmp_path / "other.txt").write_text("x")
    for name in ("s.csv", "p.csv"):
        mode = (tmp_path / name).stat().st_mode & 0o777
        assert mode == expected == (tmp_path / "other.txt").stat().st_mode & 0o777, oct(mode)
