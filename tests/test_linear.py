"""LinearHead (L2 logistic regression, C by CV), head kinds, build_head / save_head / load_head."""

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold

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
    assert vars(head) == {"C": 0.3, "Cs": 41, "cv": 5, "cv_repeats": "auto", "transform": "auto", "standardize": True,
                          "tol": 1e-8, "max_iter": 2000, "random_state": 2}
    twin = clone(head)
    assert twin.get_params() == head.get_params() and not hasattr(twin, "coef_")


@pytest.mark.parametrize("k", [2, 4])
def test_fixed_C_is_sklearns_logistic_regression_on_standardised_features(k):
    X, y = problem(k=k, seed=k)
    head = LinearHead(C=0.5, transform="none").fit(X, y)
    Xs = (X.astype(np.float64) - X.mean(0)) / X.std(0)
    ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(Xs, y)
    np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(Xs), atol=1e-5)
    assert head.C_ == 0.5 and head.cv_losses_ == {} == head.transform_losses_ and head.best_epoch_ is None
    assert head.predict_proba(X).shape == (len(X), k)


@pytest.mark.parametrize("repeats, n_repeats", [(1, 1), (3, 3), ("auto", 5)])  # auto: 240 rows -> 5 repeats
def test_C_chosen_by_cv_is_the_best_of_the_grid(repeats, n_repeats):
    X, y = problem(n=240, d=30, seed=5, noise=2.0)
    Cs = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    head = LinearHead(Cs=Cs, cv=4, cv_repeats=repeats, transform="none", random_state=0).fit(X, y)
    # brute force: every C on every fold of every repeat, no warm start, no early end of the path
    losses = []
    Xs = (X.astype(np.float64) - X.mean(0)) / X.std(0)
    for C in Cs:
        fold = []
        for tr, va in RepeatedStratifiedKFold(n_splits=4, n_repeats=n_repeats, random_state=0).split(Xs, y):
            # each fold standardised like the head does: on the whole training matrix (features only)
            model = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(Xs[tr], y[tr])
            fold.append(log_loss(y[va], model.predict_proba(Xs[va]), labels=[0, 1]))
        losses.append(np.mean(fold))
    assert head.C_ == Cs[int(np.argmin(losses))]
    n = len(head.cv_losses_["C"])
    np.testing.assert_allclose(head.cv_losses_["log_loss"], losses[:n], rtol=1e-4)


@pytest.mark.parametrize("n_rows, expected", [(100, 5), (400, 5), (700, 3), (1000, 2), (1999, 2), (2000, 1), (50000, 1)])
def test_auto_cv_repeats_average_about_2000_held_out_rows(n_rows, expected):
    assert LinearHead()._repeats(n_rows) == expected


def test_one_repeat_is_one_stratified_k_fold_split():
    X, y = problem(n=200, d=10, seed=3, noise=2.0)
    one = LinearHead(Cs=[1e-2, 1e-1, 1.0], cv=4, cv_repeats=1, transform="none", random_state=7).fit(X, y)
    Xs = (X.astype(np.float64) - X.mean(0)) / X.std(0)
    fold = [log_loss(y[va], LogisticRegression(C=1e-2, tol=1e-10, max_iter=10000).fit(Xs[tr], y[tr]).predict_proba(Xs[va]))
            for tr, va in StratifiedKFold(4, shuffle=True, random_state=7).split(Xs, y)]
    np.testing.assert_allclose(one.cv_losses_["log_loss"][0], np.mean(fold), rtol=1e-4)


def heavy_tailed(n, seed):
    """Log-normal features (like pooled ReLU activations: a long right tail) whose logs are
    what the labels are linear in."""
    w = np.random.default_rng(99).normal(size=8) * 1.5  # one problem, samples by seed
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 8))
    y = (Z @ w + rng.logistic(size=n) > 0).astype(np.int64)
    return np.exp(1.5 * Z).astype(np.float32), y


def test_transform_auto_is_the_lowest_cv_loss_on_the_same_folds_and_helps_on_heavy_tails():
    X, y = heavy_tailed(400, seed=0)
    auto = LinearHead(cv_repeats=1, random_state=0).fit(X, y)
    assert set(auto.transform_losses_) == {"none", "sqrt", "log1p"}
    assert auto.transform_ == min(auto.transform_losses_, key=auto.transform_losses_.get) != "none"
    for name, loss in auto.transform_losses_.items():  # each one: the fixed-transform head's best CV loss
        fixed = LinearHead(cv_repeats=1, transform=name, random_state=0).fit(X, y)
        assert loss == pytest.approx(min(fixed.cv_losses_["log_loss"]), rel=1e-9)
        if name == auto.transform_:
            assert fixed.C_ == auto.C_ and np.array_equal(fixed.predict_proba(X), auto.predict_proba(X))
    X_new, y_new = heavy_tailed(4000, seed=1)
    none = LinearHead(cv_repeats=1, transform="none", random_state=0).fit(X, y)
    assert log_loss(y_new, auto.predict_proba(X_new)) < 0.9 * log_loss(y_new, none.predict_proba(X_new))


def test_transform_auto_with_a_fixed_C_cross_validates_that_C():
    X, y = heavy_tailed(300, seed=2)
    head = LinearHead(C=0.2, cv=3, cv_repeats=1, random_state=0).fit(X, y)
    assert head.C_ == 0.2 and set(head.transform_losses_) == {"none", "sqrt", "log1p"}
    assert head.cv_losses_["C"] == [0.2] and head.cv_losses_["log_loss"] == [head.transform_losses_[head.transform_]]
    Xt = {"none": X, "sqrt": np.sqrt(X), "log1p": np.log1p(X)}[head.transform_].astype(np.float64)
    ref = LogisticRegression(C=0.2, tol=1e-10, max_iter=10000).fit((Xt - Xt.mean(0)) / Xt.std(0), y)
    np.testing.assert_allclose(head.coef_, ref.coef_, rtol=1e-4, atol=1e-6)


def test_transforms_are_compared_on_the_same_folds_also_without_a_random_state(monkeypatch):
    X, y = heavy_tailed(200, seed=3)
    seen = []
    choose = LinearHead._choose_C

    def spy(self, X, y, splits, grid=None):
        seen.append([(tr.tolist(), va.tolist()) for tr, va in splits])
        return choose(self, X, y, splits, grid)

    monkeypatch.setattr(LinearHead, "_choose_C", spy)
    LinearHead(Cs=5, cv_repeats=2, random_state=None).fit(X, y)
    assert len(seen) == 3 and len(seen[0]) == 10 and seen[0] == seen[1] == seen[2]


def test_transform_auto_with_a_one_value_grid_cross_validates_it():
    X, y = heavy_tailed(300, seed=2)
    grid_of_one = LinearHead(Cs=[0.2], cv=3, cv_repeats=1, random_state=0).fit(X, y)
    fixed = LinearHead(C=0.2, cv=3, cv_repeats=1, random_state=0).fit(X, y)
    assert set(grid_of_one.transform_losses_) == {"none", "sqrt", "log1p"}
    assert grid_of_one.transform_losses_ == fixed.transform_losses_ and grid_of_one.transform_ == fixed.transform_


def test_the_search_space_offers_every_transform():
    from catdog_features.heads.transforms import TRANSFORMS
    from catdog_features.search.space import LINEAR_TRANSFORMS

    assert LINEAR_TRANSFORMS == tuple(TRANSFORMS)


def test_transforms_keep_sign_and_order():
    from catdog_features.heads.transforms import TRANSFORMS, apply_transform

    x = np.array([-100.0, -2.0, -0.5, 0.0, 0.5, 2.0, 100.0])
    for name in TRANSFORMS:
        t = apply_transform(name, x)
        assert np.array_equal(np.sign(t), np.sign(x)) and np.all(np.diff(t) > 0)
    with pytest.raises(ValueError, match="transform='auto'"):
        apply_transform("auto", x)  # a choice, not a function


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
    for bad in ("often", 0):
        with pytest.raises(ValueError, match="cv_repeats"):
            LinearHead(cv_repeats=bad).fit(X, y)
    for bad in ("cube", None, 2):
        with pytest.raises(ValueError, match=f"Invalid transform. Received: transform={bad!r}"):
            LinearHead(transform=bad).fit(X, y)


def test_save_load_round_trip_is_exact_and_refuses_damaged_files(tmp_path):
    X, y = problem(k=3, seed=7)
    head = LinearHead(random_state=0).fit(X, y)
    path = save_head(head, tmp_path / "m" / "fold0")
    assert path.name == "fold0.h5" and find_saved_head(tmp_path / "m" / "fold0") == path
    meta = json.loads((tmp_path / "m" / "fold0.h5.json").read_text())
    assert meta["format"] == "catdog_features.LinearHead" and meta["C"] == head.C_
    loaded = load_head(path)
    assert isinstance(loaded, LinearHead) and loaded.get_params() == head.get_params()
    assert (loaded.transform_, loaded.transform_losses_) == (head.transform_, head.transform_losses_)
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


def test_a_head_saved_before_transforms_loads_as_untransformed(tmp_path):
    X, y = problem(seed=9)
    path = save_head(LinearHead(C=0.5, transform="none").fit(X, y), tmp_path / "fold0")
    sidecar = tmp_path / "fold0.h5.json"
    meta = json.loads(sidecar.read_text())
    for key in ("transform", "transform_losses"):
        del meta[key]
    for key in ("transform", "cv_repeats"):
        del meta["params"][key]
    meta["version"] = 1
    sidecar.write_text(json.dumps(meta))
    loaded = load_head(path)
    assert loaded.transform == loaded.transform_ == "none" and loaded.cv_repeats == 1  # refits as it was fitted
    Xs = (X.astype(np.float64) - X.mean(0)) / X.std(0)
    ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(Xs, y)
    np.testing.assert_allclose(loaded.predict_proba(X), ref.predict_proba(Xs), atol=1e-5)


@pytest.mark.parametrize("change, match", [
    ({"version": 3}, "version 3; expected 1 to 2.*newer catdog-features"),
    ({"version": "2"}, "version '2'"),
    ({"transform": None}, "transform=None"),
    ({"transform": "auto"}, "transform='auto'"),
])
def test_a_sidecar_of_another_version_or_without_its_transform_is_refused(tmp_path, change, match):
    X, y = problem(seed=9)
    path = save_head(LinearHead(C=0.5).fit(X, y), tmp_path / "fold0")
    sidecar = tmp_path / "fold0.h5.json"
    meta = {**json.loads(sidecar.read_text()), **change}
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(SavedHeadError, match=match):
        load_head(path)
    meta.pop("transform")
    meta["version"] = 2
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(SavedHeadError, match="KeyError: 'transform'"):
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
    sidecar = tmp_path / "fold0.keras.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "version": 3}))  # every kind checks it
    with pytest.raises(SavedHeadError, match="DenseHead sidecar of version 3; expected 1 to 2"):
        load_head(path)
