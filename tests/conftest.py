"""Shared fixtures: small generated datasets, quiet TensorFlow, the optional ../shared data."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests are CPU-sized; keep them deterministic

import pytest

from catdog_features.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def kaggle_dir(tmp_path_factory):
    """A Kaggle Dogs-vs-Cats style folder: train/cat.N.jpg, train/dog.N.jpg, test/N.jpg."""
    return make_dataset(tmp_path_factory.mktemp("kaggle"), n_per_class=12, n_test=6, layout="kaggle", size=48)


@pytest.fixture(scope="session")
def folders_dir(tmp_path_factory):
    return make_dataset(
        tmp_path_factory.mktemp("folders"), n_per_class=6, n_test=0, layout="folders",
        class_names=("beagle", "akita", "collie"), size=40,
    )


@pytest.fixture(scope="session")
def labels_csv_dir(tmp_path_factory):
    return make_dataset(
        tmp_path_factory.mktemp("breeds"), n_per_class=6, n_test=4, layout="labels-csv",
        class_names=("pug", "boxer", "akita"), size=40,
    )


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def spark():
    """A real local SparkSession (2 cores; a failed task is tried twice), shared by the Spark tests."""
    pytest.importorskip("pyspark", reason="the [spark] extra is not installed")
    from catdog_features.distributed import spark_session

    session = spark_session("local[2,2]")
    yield session
    session.stop()
