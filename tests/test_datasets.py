"""catdog_features.features.datasets: layout detection, labels, id order, errors, the real sample data."""

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catdog_features.features.datasets import ImageSet, load_dataset, natural_key


def touch(folder: Path, *names, data=b"not decoded here"):
    """Discovery only looks at names, so the files need not be real images."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(data)
    return folder


def write_csv(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def read_labels(path: Path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return dict(rows)


# --- Kaggle Dogs vs Cats ------------------------------------------------------------------


def test_kaggle_train_folder(kaggle_dir):
    images = load_dataset(kaggle_dir / "train")
    assert images.layout == "kaggle"
    assert images.class_names == ("cat", "dog")
    assert images.ids.tolist() == [f"cat.{i}" for i in range(12)] + [f"dog.{i}" for i in range(12)]
    assert images.labels.dtype == np.int64
    assert images.labels.tolist() == [0] * 12 + [1] * 12  # cat=0, dog=1: P(dog), like Kaggle
    assert all(Path(p).is_absolute() and Path(p).name == f"{i}.jpg" for i, p in zip(images.ids, images.paths))
    assert images.is_labeled and len(images) == 24 and images.missing == ()


def test_kaggle_test_folder_is_unlabeled_with_numeric_ids(kaggle_dir):
    images = load_dataset(kaggle_dir / "test")
    assert images.layout == "unlabeled"
    assert images.ids.tolist() == ["1", "2", "3", "4", "5", "6"]
    assert images.labels is None and images.class_names == () and not images.is_labeled


def test_ids_are_in_natural_numeric_order(tmp_path):
    folder = touch(tmp_path / "test", "10.jpg", "2.jpg", "100.jpg", "1.jpg", "21.png", "9.jpeg")
    assert load_dataset(folder).ids.tolist() == ["1", "2", "9", "10", "21", "100"]
    train = touch(tmp_path / "train", "dog.10.jpg", "cat.10.jpg", "Dog.2.JPG", "cat.9.jpg", "cat.100.jpg")
    images = load_dataset(train)
    assert images.ids.tolist() == ["cat.9", "cat.10", "cat.100", "dog.2", "dog.10"]
    assert images.labels.tolist() == [0, 0, 0, 1, 1]


def test_equal_natural_keys_are_ordered_deterministically(tmp_path):
    # "01" and "1" (and "A" and "a") have the same natural key; the raw text decides, so the
    # order does not depend on how the file system happens to list the files.
    for order in (["1.jpg", "01.jpg", "a.jpg", "A.jpg"], ["A.jpg", "a.jpg", "01.jpg", "1.jpg"]):
        folder = touch(tmp_path / "-".join(order), *order)
        assert load_dataset(folder).ids.tolist() == ["01", "1", "A", "a"]


@pytest.mark.parametrize(
    "names, expected",
    [
        (["10", "2", "1"], ["1", "2", "10"]),
        (["cat.10", "cat.2", "cat.1"], ["cat.1", "cat.2", "cat.10"]),
        (["img10b", "img2b", "img2a"], ["img2a", "img2b", "img10b"]),
        (["b", "10", "a"], ["10", "a", "b"]),
        (["Beagle/3", "akita/20", "akita/3"], ["akita/3", "akita/20", "Beagle/3"]),
    ],
)
def test_natural_key(names, expected):
    assert sorted(names, key=natural_key) == expected


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    folder = touch(tmp_path / "test", "1.jpg", "2.png", ".3.jpg", "notes.txt", "Thumbs.db", "labels.json")
    assert load_dataset(folder).ids.tolist() == ["1", "2"]


# --- folder per class ---------------------------------------------------------------------


def test_folder_per_class(folders_dir):
    images = load_dataset(folders_dir / "train")
    assert images.layout == "folder-per-class"
    assert images.class_names == ("akita", "beagle", "collie")  # sorted by name, not as created
    assert len(images) == 18
    for image_id, path, label in zip(images.ids, images.paths, images.labels):
        assert Path(path).parent.name == images.class_names[label]
        assert image_id == f"{Path(path).parent.name}/{Path(path).stem}"
    assert images.ids[:3].tolist() == ["akita/0", "akita/1", "akita/2"]


# --- labels.csv ---------------------------------------------------------------------------


def _check_breeds(images, root):
    truth = read_labels(root / "labels.csv")
    assert images.layout == "labels-csv"
    assert images.class_names == ("akita", "boxer", "pug")
    assert sorted(images.ids.tolist()) == sorted(truth)
    for image_id, path, label in zip(images.ids, images.paths, images.labels):
        assert images.class_names[label] == truth[image_id]
        assert Path(path) == root / "train" / f"{image_id}.jpg"
    assert images.missing == ()


def test_labels_csv_with_a_train_subfolder(labels_csv_dir):
    images = load_dataset(labels_csv_dir)
    _check_breeds(images, labels_csv_dir)
    assert images.root == str(labels_csv_dir / "train")


def test_labels_csv_next_to_a_folder_named_train(labels_csv_dir):
    images = load_dataset(labels_csv_dir / "train")
    _check_breeds(images, labels_csv_dir)
    same = load_dataset(labels_csv_dir)
    assert images.ids.tolist() == same.ids.tolist() and images.paths == same.paths


def test_test_folder_next_to_labels_csv_is_unlabeled(labels_csv_dir):
    images = load_dataset(labels_csv_dir / "test")
    assert images.layout == "unlabeled" and images.labels is None and len(images) == 4


def test_explicit_labels_csv(tmp_path):
    folder = touch(tmp_path / "pics", "x1.jpg", "x2.jpg", "x3.png")
    csv_path = write_csv(tmp_path / "meta" / "my_labels.csv", [["file", "kind"], ["x2", "b"], ["x1", "a"], ["x3", "b"]])
    images = load_dataset(folder, labels_csv=csv_path)
    assert images.layout == "labels-csv"
    assert images.ids.tolist() == ["x1", "x2", "x3"]
    assert images.labels.tolist() == [0, 1, 1] and images.class_names == ("a", "b")
    assert images.paths[2].endswith("x3.png")


def test_labels_csv_ids_may_carry_the_file_extension(tmp_path):
    touch(tmp_path / "train", "a.jpg", "b.png")
    write_csv(tmp_path / "labels.csv", [["id", "label"], ["a.jpg", "x"], ["b.png", "y"]])
    images = load_dataset(tmp_path)
    assert images.ids.tolist() == ["a.jpg", "b.png"] and images.missing == ()
    assert [Path(p).name for p in images.paths] == ["a.jpg", "b.png"]


def test_labels_csv_id_without_a_file_stays_and_is_listed_as_missing(tmp_path):
    touch(tmp_path / "train", "a.jpg", "c.jpg", "unlisted.jpg")
    write_csv(tmp_path / "labels.csv", [["id", "breed"], ["c", "pug"], ["b", "akita"], ["a", "pug"]])
    images = load_dataset(tmp_path)
    assert images.ids.tolist() == ["a", "b", "c"]  # unlisted.jpg has no label: not part of the set
    assert images.labels.tolist() == [1, 0, 1]
    assert images.missing == ("b",)
    assert Path(images.paths[1]) == tmp_path / "train" / "b.jpg" and not Path(images.paths[1]).exists()
    assert images.subset([1, 2]).missing == ("b",)
    assert images.subset(np.array([True, False, True])).missing == ()


# --- explicit lists, ImageSet, subset ---------------------------------------------------


def test_explicit_list_of_kaggle_paths_is_labeled(kaggle_dir):
    paths = [kaggle_dir / "train" / "dog.3.jpg", str(kaggle_dir / "train" / "cat.11.jpg")]
    images = load_dataset(paths)
    assert images.layout == "kaggle" and images.ids.tolist() == ["cat.11", "dog.3"]
    assert images.labels.tolist() == [0, 1]


def test_explicit_list_of_other_paths_is_unlabeled(tmp_path):
    touch(tmp_path / "a", "10.jpg", "x.png")
    touch(tmp_path / "b", "2.jpg", "cat.1.jpg")
    paths = [tmp_path / "a" / "10.jpg", tmp_path / "b" / "2.jpg", tmp_path / "a" / "x.png",
             tmp_path / "b" / "cat.1.jpg", tmp_path / "gone" / "7.jpg"]  # missing files become failures later
    images = load_dataset(paths)
    assert images.layout == "list" and images.labels is None
    assert images.ids.tolist() == ["2", "7", "10", "cat.1", "x"]
    assert images.paths[1] == str(tmp_path / "gone" / "7.jpg")


def test_image_set_passes_through_and_subsets(kaggle_dir):
    images = load_dataset(kaggle_dir / "train")
    assert load_dataset(images) is images
    part = images.subset(images.labels == 1)
    assert part.ids.tolist() == [f"dog.{i}" for i in range(12)] and (part.labels == 1).all()
    assert part.paths == images.paths[12:] and part.class_names == images.class_names
    picked = images.subset([23, 0])
    assert picked.ids.tolist() == ["dog.11", "cat.0"] and picked.labels.tolist() == [1, 0]


# --- errors -------------------------------------------------------------------------------


def _missing(tmp_path):
    return tmp_path / "nowhere"


def _a_file(tmp_path):
    return touch(tmp_path, "one.jpg") / "one.jpg"


def _empty(tmp_path):
    return touch(tmp_path / "empty")


def _no_images(tmp_path):
    return touch(tmp_path / "docs", "readme.txt", "data.csv")


def _mixed_kaggle(tmp_path):
    return touch(tmp_path / "train", "cat.1.jpg", "dog.2.jpg", "IMG_0003.jpg")


def _one_class(tmp_path):
    touch(tmp_path / "train" / "pug", "1.jpg")
    return tmp_path / "train"


def _files_and_class_folders(tmp_path):
    touch(tmp_path / "train" / "pug", "1.jpg")
    touch(tmp_path / "train" / "akita", "1.jpg")
    touch(tmp_path / "train", "stray.jpg")
    return tmp_path / "train"


def _splits_not_classes(tmp_path):
    touch(tmp_path / "data" / "train", "cat.1.jpg", "dog.1.jpg")
    touch(tmp_path / "data" / "test", "1.jpg")
    return tmp_path / "data"


def _duplicate_kaggle(tmp_path):
    return touch(tmp_path / "train", "cat.1.jpg", "cat.1.png", "dog.1.jpg")


def _duplicate_kaggle_case(tmp_path):
    return touch(tmp_path / "train", "cat.1.jpg", "Cat.1.jpg", "dog.1.jpg")


def _duplicate_test(tmp_path):
    return touch(tmp_path / "test", "12.jpg", "12.png")


def _duplicate_class_ids(tmp_path):
    touch(tmp_path / "train" / "pug", "1.jpg", "1.png")
    touch(tmp_path / "train" / "akita", "1.jpg")
    return tmp_path / "train"


def _labels(rows, files=("a.jpg", "b.jpg")):
    def make(tmp_path):
        touch(tmp_path / "train", *files)
        write_csv(tmp_path / "labels.csv", rows)
        return tmp_path

    return make


def _empty_labels(tmp_path):
    touch(tmp_path / "train", "a.jpg")
    (tmp_path / "labels.csv").write_text("")
    return tmp_path


ERRORS = [
    ("missing-folder", _missing, FileNotFoundError, "not found"),
    ("a-file", _a_file, ValueError, "which is a file"),
    ("empty-folder", _empty, ValueError, "No images found"),
    ("no-image-files", _no_images, ValueError, "No images found"),
    ("mixed-kaggle-and-other-names", _mixed_kaggle, ValueError, "mixes Kaggle-named"),
    ("single-class-folder", _one_class, ValueError, "one class folder"),
    ("files-and-class-folders", _files_and_class_folders, ValueError, "both image files"),
    ("splits-instead-of-classes", _splits_not_classes, ValueError, "dataset splits"),
    ("duplicate-kaggle-ids", _duplicate_kaggle, ValueError, "Duplicate image ids"),
    ("duplicate-kaggle-ids-by-case", _duplicate_kaggle_case, ValueError, "Duplicate image ids"),
    ("duplicate-test-ids", _duplicate_test, ValueError, "Duplicate image ids"),
    ("duplicate-class-ids", _duplicate_class_ids, ValueError, "Duplicate image ids"),
    ("duplicate-csv-ids", _labels([["id", "c"], ["a", "x"], ["a", "y"], ["b", "x"]]), ValueError, "Duplicate"),
    ("two-files-for-a-csv-id", _labels([["id", "c"], ["a", "x"], ["b", "y"]], ("a.jpg", "a.png", "b.jpg")),
     ValueError, "Duplicate image files"),
    ("csv-header-one-column", _labels([["id"], ["a"], ["b"]]), ValueError, "expected two columns"),
    ("csv-one-column-per-class", _labels([["id", "akita", "pug"], ["a", "0.5", "0.5"]]), ValueError,
     "expected two columns"),
    ("csv-without-header", _labels([["a", "x"], ["b", "y"]]), ValueError, "no header"),
    ("csv-empty", _empty_labels, ValueError, "is empty"),
    ("csv-no-rows", _labels([["id", "c"]]), ValueError, "has no rows"),
    ("csv-row-without-class", _labels([["id", "c"], ["a", ""]]), ValueError, "line 2"),
    ("csv-no-file-exists", _labels([["id", "c"], ["p", "x"], ["q", "y"]]), FileNotFoundError, "None of the 2 ids"),
]


@pytest.mark.parametrize("name, make, error, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_datasets_raise_clear_errors(tmp_path, name, make, error, message):
    with pytest.raises(error, match=message):
        load_dataset(make(tmp_path))


@pytest.mark.parametrize(
    "source, message",
    [([], "empty list"), (None, "Received: source=None"), ([1, 2], "Received: source=")],
    ids=["empty-list", "none", "list-of-ints"],
)
def test_bad_sources(source, message):
    with pytest.raises((ValueError, TypeError), match=message):
        load_dataset(source)


def test_missing_labels_csv_argument(tmp_path):
    folder = touch(tmp_path / "train", "a.jpg")
    with pytest.raises(FileNotFoundError, match="labels_csv not found"):
        load_dataset(folder, labels_csv=tmp_path / "nope.csv")


# --- the real sample data (integration) --------------------------------------------------


def test_real_dogs_vs_cats(shared_data):
    train = load_dataset(shared_data / "dogs-vs-cats" / "train")
    assert train.layout == "kaggle" and len(train) == 300
    assert np.bincount(train.labels).tolist() == [150, 150]
    assert all(i.startswith("cat.") == (label == 0) for i, label in zip(train.ids, train.labels))
    test = load_dataset(shared_data / "dogs-vs-cats" / "test")
    assert test.layout == "unlabeled"
    assert test.ids.tolist() == [str(i) for i in range(1, 101)]
    with pytest.raises(ValueError, match="dataset splits"):
        load_dataset(shared_data / "dogs-vs-cats")


def test_real_dog_breeds(shared_data):
    root = shared_data / "dog-breeds"
    truth = read_labels(root / "labels.csv")
    images = load_dataset(root)
    assert images.layout == "labels-csv" and images.missing == ()
    assert sorted(images.ids.tolist()) == sorted(truth) and len(images) == len(truth)
    assert images.class_names == tuple(sorted(set(truth.values())))
    assert all(images.class_names[label] == truth[i] for i, label in zip(images.ids, images.labels))
    same = load_dataset(root / "train")
    assert same.ids.tolist() == images.ids.tolist() and same.paths == images.paths
    test = load_dataset(root / "test")
    assert test.layout == "unlabeled" and len(test) == len(list((root / "test").glob("*.jpg")))


def test_image_set_is_frozen(kaggle_dir):
    images = load_dataset(kaggle_dir / "test")
    with pytest.raises(AttributeError):
        images.layout = "kaggle"
    assert isinstance(images, ImageSet)


@pytest.mark.parametrize("bad_id", ["../../outside/secret", "/etc/passwd", "sub/img", "..", "a\\b"])
def test_labels_csv_ids_cannot_reach_outside_the_image_folder(tmp_path, bad_id):
    train = tmp_path / "train"
    train.mkdir()
    Image.new("RGB", (8, 8)).save(train / "ok.jpg")
    (tmp_path / "outside").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside" / "secret.jpg")
    (tmp_path / "labels.csv").write_text(f"id,breed\nok,pug\n{bad_id},boxer\n")
    with pytest.raises(ValueError, match=r"labels.csv' line 3: id .* is not a file name"):
        load_dataset(tmp_path)


def test_labels_csv_that_is_not_utf8_names_the_file_and_line(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    Image.new("RGB", (8, 8)).save(train / "ok.jpg")
    (tmp_path / "labels.csv").write_bytes(b"id,breed\nok,pug\nok2,m\xfcnsterl\xe4nder\n")
    with pytest.raises(ValueError, match=r"labels.csv' line 3: byte b'\\xfc' is not UTF-8"):
        load_dataset(tmp_path)


def test_entries_named_like_images_that_are_not_files_are_listed(tmp_path):
    folder = tmp_path / "test"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "1.jpg")
    (folder / "2.jpg").mkdir()
    os.symlink(folder / "missing.jpg", folder / "3.jpg")
    images = load_dataset(folder)
    assert list(images.ids) == ["1", "2", "3"]  # the reader turns 2 and 3 into failure records
