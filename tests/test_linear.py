"""LinearHead (L2 logistic regression, C by CV), head kinds, build_head / save_head / load_head."""

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

from catdog_features import LinearHead
from catdog_features.heads import (
    DenseHead, SavedHeadError, build_head, find_saved_head, load_head, save_head,
)


def problem(n=300, d=12, k=2, seed=0, noise=1.0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, d) * rng.uniform(0.1, 20.0, size=d) + rng.uniform(-50, 50, size=d)
    W = rng.randn(d, k)
    y = np.argmax((X - X.mean(0)) / X.std(0) @ W + noise * rng.gumbel(size=(n, k)), axis=1)
    return X.astype(np.float32), y


def test_sklearn_contract():
    head = LinearHead(C=0.3, random_state=2)
    assert vars(head) == {"C": 0.3, "Cs": 41, "cv": 5, "standardize": True, "tol": 1e-8, "max_iter": 2000,
                          "random_state": 2}
    twin = clone(head)
    assert twin.get_params() == head.get_params() and not hasattr(twin, "coef_")


@pytest.mark.parametrize("k", [2, 4])
def test_fixed_C_is_sklearns_logistic_regression_on_standardised_features(k):
    X, y = problem(k=k, seed=k)
    head = LinearHead(C=0.5).fit(X, y)
    Xs = (X.astype(np.float64) - X.mean(0)) / X.std(0)
    ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(Xs, y)
    np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(Xs), atol=1e-5)
    assert head.C_ == 0.5 and head.cv_losses_ == {} and head.best_epoch_ is None
    assert head.predict_proba(X).shape == (len(X), k)


def test_C_chosen_by_cv_is_the_best_of_the_grid():
    X, y = problem(n=240, d=30, seed=5, noise=2.0)
    Cs = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    head = LinearHead(Cs=Cs, cv=4, random_state=0).fit(X, y)
    # brute force: every C on every fold, no warm start, no early end of the path
    losses = []
    Xs = (X.astype(np.float64) - X.mean(0)) / X.std(0)
    for C in Cs:
        fold = []
        for tr, va in StratifiedKFold(4, shuffle=True, random_state=0).split(Xs, y):
            # each fold standardised like the head does: on the whole training matrix (features only)
            model = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(Xs[tr], y[tr])
            fold.append(log_loss(y[va], model.predict_proba(Xs[va]), labels=[0, 1]))
        losses.append(np.mean(fold))
    assert head.C_ == Cs[int(np.argmin(losses))]
    n = len(head.cv_losses_["C"])
    np.testing.assert_allclose(head.cv_losses_["log_loss"], losses[:n], rtol=1e-4)


def test_string_labels_validation_data_ignored_and_bad_input():
    X, y = problem(k=3, seed=6)
    labels = np.array(["pug", "akita", "boxer"])[y]
    head = LinearHead(random_state=0).fit(X, labels, validation_data=(X[:5], labels[:5]))
    assert head.classes_.tolist() == ["akita", "boxer", "pug"]
    assert set(head.predict(X)) <= set(labels) and head.score(X, labels) > 0.6
    with pytest.raises(ValueError, match="single class"):
        LinearHead().fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="C=-1"):
        LinearHead(C=-1).fit(X, y)
    with pytest.raises(ValueError, match="Cs"):
        LinearHead(Cs=[0.0, 1.0]).fit(X, y)


def test_save_load_round_trip_is_exact_and_refuses_damaged_files(tmp_path):
    X, y = problem(k=3, seed=7)
    head = LinearHead(random_state=0).fit(X, y)
    path = save_head(head, tmp_path / "m" / "fold0")
    assert path.name == "fold0.h5" and find_saved_head(tmp_path / "m" / "fold0") == path
    meta = json.loads((tmp_path / "m" / "fold0.h5.json").read_text())
    assert meta["format"] == "catdog_features.LinearHead" and meta["C"] == head.C_
    loaded = load_head(path)
    assert isinstance(loaded, LinearHead) and loaded.get_params() == head.get_params()
    assert np.array_equal(loaded.predict_proba(X), head.predict_proba(X))
    # a sidecar from another kind, a truncated file, non-finite coefficients: typed errors naming the file
    import h5py

    with h5py.File(path, "r+") as f:
        f["coef"][0, 0] = np.nan
    with pytest.raises(SavedHeadError, match="fold0.h5"):
        load_head(path)
    path.write_bytes(b"garbage")
    with pytest.raises(SavedHeadError, match="fold0.h5"):
        load_head(path)
    (tmp_path / "m" / "fold0.h5.json").write_text("{not json")
    with pytest.raises(SavedHeadError, match="fold0.h5.json"):
        load_head(path)


def test_build_head_from_trial_params():
    head = build_head({"head": "linear", "C": 0.1}, random_state=3)
    assert isinstance(head, LinearHead) and head.C == 0.1 and head.random_state == 3
    dense = build_head({"lr": 0.01, "optimizer": "adam"})  # no "head": a dense head (older trials files)
    assert isinstance(dense, DenseHead) and dense.lr == 0.01
    with pytest.raises(ValueError, match="Unknown head kind.*dense, linear"):
        build_head({"head": "forest"})
    with pytest.raises(ValueError, match="Unknown parameters for a linear head.*'lr'"):
        build_head({"head": "linear", "lr": 0.1})


def test_dense_and_linear_heads_saved_side_by_side(tmp_path):
    X, y = problem(seed=8)
    dense = DenseHead(epochs=2, optimizer="adam", random_state=0).fit(X, y)
    path = save_head(dense, tmp_path / "fold0")
    assert path.suffix == ".keras" and find_saved_head(tmp_path / "fold0.keras") == path
    assert np.array_equal(load_head(path).predict_proba(X), dense.predict_proba(X))
    assert find_saved_head(tmp_path / "fold1") is None
