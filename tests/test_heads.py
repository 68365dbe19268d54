"""DenseHead: scikit-learn contract, training behaviour, schedules, persistence; lr_find.

Small data and few epochs throughout: every fit here takes well under a second of compute.
"""

import json
import zipfile

import numpy as np
import pytest
from sklearn.base import clone, is_classifier
from sklearn.ensemble import StackingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import cross_val_predict

from catdog_features import DenseHead, lr_find
from catdog_features.heads import LRFindResult

PARAMS = dict(
    dropout=0.5, optimizer="adadelta", lr=None, momentum=0.0, decay=0.0, l2=0.0, standardize=False, epochs=200, patience=8,
    batch_size=128, validation_split=0.2, refit=False, hidden_units=0, reduce_lr_on_plateau=False,
    schedule=None, cycle_epochs=10, cycle_mult=1.0, verbose=0, random_state=None,
)
FAST = dict(optimizer="adam", lr=0.05, dropout=0.1, batch_size=32, random_state=0)


@pytest.fixture(params=["numpy", "tensorflow"])
def engine(request, monkeypatch):
    """Run a test on each training engine (small networks train on NumPy unless told otherwise)."""
    from catdog_features.heads import trainer

    if request.param == "tensorflow":
        monkeypatch.setattr(trainer, "NUMPY_MAX_WEIGHTS", -1)
    trainer.POOL.clear()
    yield request.param
    trainer.POOL.clear()


def blobs(n, d=16, k=2, sep=1.5, seed=0):
    """``k`` Gaussian clusters in ``d`` dims (well separated for sep >= 1.5), labels 0..k-1."""
    rng = np.random.RandomState(seed)
    centers = rng.randn(k, d) * sep
    y = np.arange(n) % k
    X = (centers[y] + rng.randn(n, d)).astype(np.float32)
    return X, y


@pytest.fixture(scope="module")
def binary():
    X, y = blobs(400, seed=0)
    head = DenseHead(epochs=8, **FAST).fit(X[:300], y[:300])
    return head, X, y


@pytest.fixture(scope="module")
def multiclass():
    X, y = blobs(300, k=3, seed=1)
    labels = np.array(["fox", "cat", "dog"])[y]  # strings, deliberately not in sorted order
    head = DenseHead(epochs=8, hidden_units=8, **FAST).fit(X[:240], labels[:240])
    return head, X, labels


# ----------------------------------------------------------------------------- sklearn contract
def test_init_only_stores_parameters():
    head = DenseHead()
    assert vars(head) == PARAMS
    assert head.get_params() == PARAMS
    assert is_classifier(head)


def test_get_set_params_and_clone_round_trip():
    head = DenseHead(optimizer="sgd", lr=0.003, momentum=0.9, decay=0.01, random_state=7)
    new = dict(dropout=0.2, epochs=3, hidden_units=16, schedule="cosine_restarts", cycle_epochs=4)
    assert head.set_params(**new) is head
    expected = {**PARAMS, "optimizer": "sgd", "lr": 0.003, "momentum": 0.9, "decay": 0.01,
                "random_state": 7, **new}
    assert head.get_params() == expected
    twin = clone(head)
    assert twin is not head and twin.get_params() == expected
    assert not hasattr(twin, "model_")


def test_clone_of_fitted_head_is_unfitted(binary):
    head, X, _ = binary
    twin = clone(head)
    assert twin.get_params() == head.get_params()
    with pytest.raises(Exception, match="not fitted"):
        twin.predict_proba(X)


# ----------------------------------------------------------------------------- fitting and predicting
def test_binary_head_on_separable_features_reaches_low_log_loss(binary):
    head, X, y = binary
    proba = head.predict_proba(X[300:])
    assert proba.shape == (100, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert log_loss(y[300:], proba) < 0.1
    assert head.score(X[300:], y[300:]) >= 0.98
    assert head.classes_.tolist() == [0, 1] and head.n_features_in_ == 16
    assert set(head.predict(X[300:])) <= {0, 1}
    # the model really is Dropout -> Dense(1, sigmoid)
    assert head.model_.output_shape == (None, 1)


def test_multiclass_head_with_string_labels(multiclass):
    head, X, labels = multiclass
    assert head.classes_.tolist() == ["cat", "dog", "fox"]
    proba = head.predict_proba(X[240:])
    assert proba.shape == (60, 3) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    pred = head.predict(X[240:])
    assert pred.dtype.kind == "U" and set(pred) <= {"cat", "dog", "fox"}
    assert head.score(X[240:], labels[240:]) >= 0.95
    # column j of predict_proba is classes_[j]
    assert np.array_equal(head.classes_[proba.argmax(axis=1)], pred)
    assert [layer.name for layer in head.model_.layers if layer.name == "hidden"] == ["hidden"]
    assert head.model_.output_shape == (None, 3)


def test_history_and_best_epoch_with_validation(binary):
    head, _, _ = binary
    n = len(head.history_["loss"])
    assert 1 <= n <= 8
    assert len(head.history_["val_loss"]) == len(head.history_["lr"]) == n
    assert head.best_epoch_ == int(np.argmin(head.history_["val_loss"]))


def test_same_random_state_gives_identical_predictions():
    X, y = blobs(100, d=8, seed=2)
    heads = [DenseHead(epochs=3, **{**FAST, "random_state": seed}).fit(X, y) for seed in (0, 0, 1)]
    probas = [h.predict_proba(X) for h in heads]
    assert np.array_equal(probas[0], probas[1])
    assert heads[0].history_ == heads[1].history_
    assert not np.array_equal(probas[0], probas[2])


def test_without_validation_trains_all_epochs():
    X, y = blobs(64, d=4, seed=3)
    head = DenseHead(epochs=4, validation_split=0, **FAST).fit(X, y)
    assert head.best_epoch_ is None
    assert len(head.history_["loss"]) == 4 and "val_loss" not in head.history_


def test_validation_split_is_stratified():
    y = np.array([0] * 90 + [1] * 10)
    head = DenseHead(validation_split=0.2)
    train_idx, val_idx = head._split(y, 0.2, seed=0)
    assert len(val_idx) == 20 and np.bincount(y[val_idx]).tolist() == [18, 2]
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(100))


def test_early_stopping_restores_the_best_epoch():
    # Few samples, many noisy features, a large step and no dropout: the head memorises
    # the training set within a few epochs, after which the validation loss climbs.
    rng = np.random.RandomState(0)
    X = rng.randn(120, 200).astype(np.float32)
    y = (X[:, 0] + 1.0 * rng.randn(120) > 0).astype(int)
    head = DenseHead(optimizer="adam", lr=0.05, dropout=0.0, epochs=40, patience=4, batch_size=16,
                     random_state=0)
    head.fit(X[:60], y[:60], validation_data=(X[60:], y[60:]))
    val = head.history_["val_loss"]
    assert head.best_epoch_ < len(val) - 1, val
    assert len(val) < 40  # stopped early
    assert val[head.best_epoch_] == min(val)
    restored = log_loss(y[60:], head.predict_proba(X[60:]))
    assert restored == pytest.approx(min(val), rel=1e-4)
    assert restored < val[-1]


def test_integral_float_hyperparameters_are_accepted():
    # hyperopt's quniform yields floats such as 32.0
    X, y = blobs(40, d=4, seed=4)
    head = DenseHead(epochs=2.0, validation_split=0, **{**FAST, "batch_size": 16.0})
    assert len(head.fit(X, y).history_["loss"]) == 2


# ----------------------------------------------------------------------------- bad inputs
X_OK, Y_OK = blobs(40, d=5, seed=5)
X_NAN = X_OK.copy()
X_NAN[3, 2] = np.nan
X_INF = X_OK.copy()
X_INF[0, 0] = np.inf


@pytest.mark.parametrize(
    "params, X, y, fit_kwargs, match",
    [
        ({}, X_NAN, Y_OK, {}, "NaN"),
        ({}, X_INF, Y_OK, {}, "infinity"),
        ({}, X_OK[:, 0], Y_OK, {}, "2D array"),
        ({}, X_OK[:, :, None], Y_OK, {}, "dim"),
        ({}, X_OK, Y_OK[:-1], {}, "inconsistent numbers of samples"),
        ({}, X_OK, np.zeros(40, int), {}, "single class"),
        ({}, X_OK[:0], Y_OK[:0], {}, "0 sample"),
        ({}, X_OK, Y_OK, {"validation_data": (X_OK[:, :4], Y_OK)}, "X_val of 4 features; expected 5"),
        ({}, X_OK, Y_OK, {"validation_data": (X_OK, Y_OK + 5)}, "labels not in y"),
        ({}, X_OK, Y_OK, {"validation_data": X_OK}, "not a pair"),
        ({"optimizer": "rmsprop"}, X_OK, Y_OK, {}, "optimizer='rmsprop'.*adadelta, sgd, adam"),
        ({"dropout": 1.0}, X_OK, Y_OK, {}, "dropout=1.0"),
        ({"lr": 0.0}, X_OK, Y_OK, {}, "lr=0.0"),
        ({"batch_size": 0}, X_OK, Y_OK, {}, "batch_size=0"),
        ({"epochs": 2.5}, X_OK, Y_OK, {}, "epochs=2.5"),
        ({"validation_split": 1.0}, X_OK, Y_OK, {}, "validation_split=1.0"),
        ({"schedule": "onecycle"}, X_OK, Y_OK, {}, "schedule='onecycle'"),
        ({"decay": 0.01, "schedule": "cosine_restarts"}, X_OK, Y_OK, {}, "at most one learning-rate"),
        ({"reduce_lr_on_plateau": True, "decay": 0.01}, X_OK, Y_OK, {}, "at most one learning-rate"),
        ({"validation_split": 0.01}, X_OK, Y_OK, {}, "stratified validation_split=0.01"),
    ],
)
def test_fit_rejects_bad_input(params, X, y, fit_kwargs, match):
    with pytest.raises(ValueError, match=match):
        DenseHead(**{"epochs": 1, **params}).fit(X, y, **fit_kwargs)


def test_predict_proba_rejects_wrong_width(binary):
    head, X, _ = binary
    with pytest.raises(ValueError, match="15 features.*expecting 16"):
        head.predict_proba(X[:, :15])


# ----------------------------------------------------------------------------- learning-rate schedules
def test_sgd_decay_is_keras2_time_based_decay():
    # The schedule itself, step by step: lr / (1 + decay * iterations).
    from catdog_features.heads.trainer import Schedule

    schedule = Schedule(lr=0.1, decay=0.05)
    for k in (0, 1, 7, 12, 1000):
        assert schedule.at(k) == pytest.approx(0.1 / (1 + 0.05 * k), rel=1e-12)
    X, y = blobs(64, d=4, seed=6)
    head = DenseHead(optimizer="sgd", lr=0.1, momentum=0.9, decay=0.05, epochs=3, batch_size=16,
                     validation_split=0, random_state=0).fit(X, y)
    # history_["lr"]: the rate at the start of each epoch (after 0, 4 and 8 steps of 4 batches each)
    np.testing.assert_allclose(head.history_["lr"], [0.1 / (1 + 0.05 * k) for k in (0, 4, 8)], rtol=1e-12)


@pytest.mark.parametrize("optimizer, expected_lr", [("adadelta", 1.0), ("sgd", 0.01), ("adam", 0.001)])
def test_default_learning_rates(optimizer, expected_lr):
    X, y = blobs(32, d=4, seed=6)
    head = DenseHead(optimizer=optimizer, epochs=1, validation_split=0, random_state=0).fit(X, y)
    assert head.history_["lr"] == [pytest.approx(expected_lr)]


@pytest.mark.parametrize("optimizer, params", [
    ("sgd", {"learning_rate": 0.1, "momentum": 0.9}),
    ("sgd", {"learning_rate": 0.05}),
    ("adam", {"learning_rate": 0.01}),
    ("adadelta", {"learning_rate": 1.0, "rho": 0.95, "epsilon": 1e-7}),
])
@pytest.mark.parametrize("hidden_units, k", [(0, 2), (6, 3)])
def test_update_rules_are_keras_optimizers(optimizer, params, hidden_units, k, engine):
    """Full-batch steps without dropout: the same weights as Keras' own optimizer and loss, on both engines."""
    import keras

    from catdog_features.heads import trainer
    from catdog_features.heads.dense import derive_seeds

    X, y = blobs(48, d=5, k=k, seed=21)
    epochs, l2 = 6, 0.01
    head = DenseHead(optimizer=optimizer, lr=params["learning_rate"], momentum=params.get("momentum", 0.0), l2=l2,
                     dropout=0.0, hidden_units=hidden_units, epochs=epochs, batch_size=len(X), validation_split=0,
                     random_state=3).fit(X, y)
    arch = trainer.Architecture(5, hidden_units, 1 if k == 2 else k, optimizer)
    init = trainer.glorot_uniform(np.random.default_rng(derive_seeds(3, 4)[2]), arch)
    reg = keras.regularizers.L2(l2)
    inputs = keras.Input((5,))
    x = keras.layers.Dense(hidden_units, activation="relu", kernel_regularizer=reg)(inputs) if hidden_units else inputs
    model = keras.Model(inputs, keras.layers.Dense(arch.n_outputs, kernel_regularizer=reg)(x))
    model.set_weights(init)
    cls = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam, "adadelta": keras.optimizers.Adadelta}[optimizer]
    model.compile(optimizer=cls(**params), loss=keras.losses.BinaryCrossentropy(from_logits=True) if k == 2
                  else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    target = y.astype(np.float32).reshape(-1, 1) if k == 2 else y
    for _ in range(epochs):
        model.train_on_batch(X, target)
    for ours, theirs in zip([w for pair in zip(head.coefs_, head.intercepts_) for w in pair], model.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-6)


def test_cosine_restarts_anneal_and_restart_each_cycle():
    X, y = blobs(64, d=4, seed=7)
    head = DenseHead(optimizer="sgd", lr=0.2, schedule="cosine_restarts", cycle_epochs=2, epochs=6,
                     batch_size=16, validation_split=0, random_state=0).fit(X, y)
    lrs = head.history_["lr"]
    assert len(lrs) == 6
    # epochs 0, 2, 4 start a cycle at the full rate; in between the rate is annealed (cos)
    np.testing.assert_allclose([lrs[0], lrs[2], lrs[4]], 0.2, rtol=1e-6)
    np.testing.assert_allclose([lrs[1], lrs[3], lrs[5]], 0.1, rtol=1e-5)  # half-way down the cosine


def test_reduce_lr_on_plateau_lowers_the_rate():
    # Labels unrelated to the features: the validation loss cannot keep improving.
    rng = np.random.RandomState(8)
    X = rng.randn(160, 30).astype(np.float32)
    y = rng.randint(0, 2, 160)
    head = DenseHead(optimizer="adam", lr=0.05, dropout=0.0, epochs=12, patience=4, batch_size=16,
                     reduce_lr_on_plateau=True, random_state=0).fit(X, y)
    lrs = head.history_["lr"]
    assert lrs[0] == pytest.approx(0.05)
    assert min(lrs) <= 0.025 + 1e-9, lrs


# ----------------------------------------------------------------------------- persistence
def test_save_load_round_trip(multiclass, tmp_path):
    head, X, _ = multiclass
    path = head.save(tmp_path / "heads" / "breeds.keras")
    assert path.is_file() and DenseHead.sidecar_path(path).is_file()
    assert zipfile.is_zipfile(path)  # Keras' own format
    meta = json.loads(DenseHead.sidecar_path(path).read_text())
    assert meta["classes"] == ["cat", "dog", "fox"] and meta["n_features_in"] == 16

    loaded = DenseHead.load(path)
    assert np.array_equal(loaded.predict_proba(X), head.predict_proba(X))
    assert np.array_equal(loaded.predict(X), head.predict(X))
    assert loaded.classes_.dtype == head.classes_.dtype
    assert loaded.get_params() == head.get_params()
    assert loaded.history_ == head.history_ and loaded.best_epoch_ == head.best_epoch_
    assert loaded.n_features_in_ == 16


def test_save_load_keeps_settings_and_standardisation(tmp_path):
    import keras

    X, y = blobs(48, d=4, seed=9)
    X = X * np.array([1.0, 10.0, 100.0, 0.01], np.float32) + 50.0
    head = DenseHead(optimizer="sgd", lr=0.1, decay=0.01, l2=1e-3, standardize=True, hidden_units=3, epochs=2,
                     batch_size=16, validation_split=0, random_state=0).fit(X, y)
    path = head.save(tmp_path / "sgd.keras")
    loaded = DenseHead.load(path)
    assert np.array_equal(loaded.predict_proba(X), head.predict_proba(X))
    assert loaded.get_params() == head.get_params()
    assert np.array_equal(loaded.mean_, head.mean_) and np.array_equal(loaded.scale_, head.scale_)
    # the .keras file is a plain Keras model of the same network, standardisation included
    plain = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(plain.predict(X, verbose=0)[:, 0], head.predict_proba(X)[:, 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["head.h5", "head"])
def test_save_requires_keras_suffix(binary, tmp_path, name):
    head, _, _ = binary
    with pytest.raises(ValueError, match="ending in '.keras'"):
        head.save(tmp_path / name)


def test_load_without_sidecar_fails_clearly(binary, tmp_path):
    head, _, _ = binary
    path = head.save(tmp_path / "h.keras")
    DenseHead.sidecar_path(path).unlink()
    with pytest.raises(FileNotFoundError, match="sidecar"):
        DenseHead.load(path)


# ----------------------------------------------------------------------------- composition
def test_cross_val_predict_and_stacking():
    X, y = blobs(150, d=8, seed=10)
    head = DenseHead(epochs=3, **FAST)
    oof = cross_val_predict(head, X, y, cv=3, method="predict_proba")
    assert oof.shape == (150, 2)
    np.testing.assert_allclose(oof.sum(axis=1), 1.0, atol=1e-12)
    assert log_loss(y, oof) < 0.3

    stack = StackingClassifier([("h", head)], final_estimator=LogisticRegression(), cv=2)
    stack.fit(X[:120], y[:120])
    assert stack.predict_proba(X[120:]).shape == (30, 2)
    assert stack.score(X[120:], y[120:]) >= 0.9


def test_earlier_head_unchanged_by_later_fits(binary):
    head, X, y = binary
    before = head.predict_proba(X)
    for seed in range(3):
        DenseHead(epochs=2, **{**FAST, "random_state": seed}).fit(X[:80], y[:80])
    assert np.array_equal(head.predict_proba(X), before)


# ----------------------------------------------------------------------------- lr_find
def test_lr_find_suggests_a_rate_in_range_and_leaves_the_template_alone():
    X, y = blobs(256, d=8, sep=0.5, seed=11)
    template = DenseHead(optimizer="sgd", momentum=0.9, decay=0.01, dropout=0.2, batch_size=32,
                         random_state=0)
    params = template.get_params()
    result = lr_find(X, y, start_lr=1e-4, end_lr=10.0, num_steps=40, estimator=template)
    assert template.get_params() == params and not hasattr(template, "model_")
    assert isinstance(result, LRFindResult)
    assert len(result.lrs) == len(result.losses) == len(result.raw_losses) == 40
    assert np.all(np.diff(result.lrs) > 0)
    np.testing.assert_allclose(result.lrs[[0, -1]], [1e-4, 10.0])
    assert result.lr_steep is not None and result.suggested_lr == result.lr_steep
    assert 1e-4 <= result.suggested_lr <= 10.0
    assert result.lr_min == pytest.approx(result.lrs[np.argmin(result.losses)] / 10)


def test_lr_find_stops_when_the_loss_diverges():
    # Labels unrelated to the features, sgd with momentum pushed to lr=100: the loss blows up.
    rng = np.random.RandomState(12)
    X = rng.randn(128, 8).astype(np.float32)
    y = rng.randint(0, 3, 128)
    result = lr_find(X, y, start_lr=1e-3, end_lr=100.0, num_steps=50, optimizer="sgd", momentum=0.9,
                     batch_size=16, random_state=0)
    assert len(result.lrs) < 50
    last = result.losses[-1]
    assert not np.isfinite(last) or last > 4 * np.nanmin(result.losses[:-1])
    assert 1e-3 <= result.suggested_lr <= 100.0


def test_lr_find_rejects_a_bad_range():
    X, y = blobs(32, d=4, seed=13)
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        lr_find(X, y, start_lr=1.0, end_lr=0.1)


def test_fit_leaves_nothing_behind_in_tensorflow_globals():
    import gc
    import weakref

    ops = pytest.importorskip("tensorflow.python.framework.ops")
    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    if registry is None:
        pytest.skip("this TensorFlow keeps its gradient registry elsewhere")
    X, y = blobs(64, d=4, seed=14)
    X_ref = weakref.ref(X)
    names = set(registry)
    head = DenseHead(epochs=2, **FAST).fit(X, y)
    assert set(registry) == names  # no CustomGradient-N entry holding a traced graph
    del X
    gc.collect()
    assert X_ref() is None  # the tf.data pipelines' callables no longer hold the features
    assert head.predict_proba(blobs(8, d=4, seed=15)[0]).shape == (8, 2)


# ----------------------------------------------------------------------------- reproducibility and speed
def test_reused_training_step_gives_the_predictions_of_a_fresh_one(engine):
    from catdog_features.heads import trainer

    X, y = blobs(120, d=6, k=3, seed=16)
    params = dict(optimizer="adam", lr=0.02, dropout=0.3, hidden_units=5, l2=1e-3, standardize=True, epochs=6,
                  batch_size=32, random_state=4)
    trainer.POOL.clear()
    built = trainer.POOL.built
    fresh = DenseHead(**params).fit(X, y)
    DenseHead(**{**params, "lr": 0.5, "dropout": 0.0, "random_state": 9}).fit(X[::-1], y[::-1])  # same shape, other run
    reused = DenseHead(**params).fit(X, y)
    assert trainer.POOL.built == built + 1  # one step served all three fits
    assert np.array_equal(reused.predict_proba(X), fresh.predict_proba(X))
    assert reused.history_ == fresh.history_


def test_results_do_not_depend_on_global_random_state(engine):
    """Issue 11 #5: building backbones (keras.utils.set_random_seed) must not change a head."""
    import random

    import keras
    import tensorflow as tf

    X, y = blobs(150, d=6, seed=17)
    params = dict(optimizer="sgd", lr=0.05, momentum=0.9, dropout=0.4, hidden_units=4, epochs=5, batch_size=16,
                  random_state=5)
    first = DenseHead(**params).fit(X, y).predict_proba(X)
    for reseed in (lambda: keras.utils.set_random_seed(123), lambda: tf.random.set_seed(7),
                   lambda: np.random.seed(11), lambda: random.seed(13)):
        reseed()
        tf.random.uniform([3])  # and advance the global generators
        np.random.rand(3)
        assert np.array_equal(DenseHead(**params).fit(X, y).predict_proba(X), first)


def test_l2_shrinks_the_weights():
    rng = np.random.RandomState(18)
    X = rng.randn(200, 40).astype(np.float32)
    y = (X[:, :3].sum(axis=1) + rng.randn(200) > 0).astype(int)
    norms = []
    for l2 in (0.0, 1e-3, 1e-2, 1e-1):
        head = DenseHead(optimizer="adam", lr=0.01, dropout=0.0, l2=l2, epochs=40, validation_split=0,
                         random_state=0).fit(X, y)
        norms.append(float(np.sum(np.square(head.coefs_[0]))))
    assert all(a > b for a, b in zip(norms, norms[1:])), norms
    assert norms[-1] < 0.5 * norms[0]


def test_standardisation_uses_the_training_rows_only():
    X, y = blobs(100, d=3, seed=19)
    X = X * np.array([1.0, 1e3, 1e-3], np.float32) + np.array([0.0, 5e3, -2.0], np.float32)
    X_val = X[:20] + 1000.0  # would move the mean a lot if it were used
    head = DenseHead(standardize=True, epochs=2, **FAST).fit(X, y, validation_data=(X_val, y[:20]))
    np.testing.assert_allclose(head.mean_, X.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(head.scale_, X.std(axis=0), rtol=1e-4)
    # a constant column is left as it is (scale 1), not divided by ~0
    Xc = np.column_stack([X[:, :2], np.full(100, 3.0, np.float32)])
    assert DenseHead(standardize=True, epochs=1, **FAST).fit(Xc, y).scale_[2] == 1.0
    # with a validation split, the statistics come from the training part of the split
    split = DenseHead(standardize=True, epochs=1, validation_split=0.5, **{**FAST, "random_state": 3}).fit(X, y)
    train_idx, _ = split._split(y, 0.5, seed=__import__("catdog_features.heads.dense", fromlist=["x"]).derive_seeds(3, 4)[0])
    np.testing.assert_allclose(split.mean_, X[train_idx].mean(axis=0), rtol=1e-5)


# ----------------------------------------------------------------------------- untrusted files
def test_a_crafted_keras_file_is_refused_clearly_and_runs_nothing(binary, tmp_path):
    """Issue 11 #8: a .keras whose layer names subprocess.Popen gives a typed error naming the file."""
    from catdog_features.heads import SavedHeadError

    head, _, _ = binary
    path = head.save(tmp_path / "h.keras")
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(path) as z:
        files = {name: z.read(name) for name in z.namelist()}
    config = json.loads(files["config.json"])
    layer = next(item for item in config["config"]["layers"] if item["name"] == "output")
    layer.update({"module": "subprocess", "class_name": "Popen", "registered_name": None,
                  "config": {"args": ["touch", str(marker)]}})
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    with pytest.raises(SavedHeadError, match="h.keras") as info:
        DenseHead.load(path)
    assert isinstance(info.value, ValueError) and "safe mode" in str(info.value)
    assert not marker.exists()
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SavedHeadError, match="h.keras"):
        DenseHead.load(path)


def test_refit_trains_on_all_rows_for_the_scaled_best_epoch():
    X, y = blobs(200, d=6, sep=0.6, seed=20)
    params = dict(optimizer="adam", lr=0.01, dropout=0.1, epochs=60, patience=5, batch_size=32, random_state=1)
    plain = DenseHead(**params).fit(X, y)
    refit = DenseHead(**params, refit=True).fit(X, y)
    assert plain.refit_epochs_ is None and refit.best_epoch_ == plain.best_epoch_
    assert refit.refit_epochs_ == round((plain.best_epoch_ + 1) / 0.8)
    assert refit.history_ == plain.history_  # the early-stopping run
    # the kept head is a fresh run on all 200 rows: that run, reproduced by hand
    by_hand = DenseHead(**{**params, "epochs": refit.refit_epochs_, "validation_split": 0}).fit(X, y)
    assert np.array_equal(refit.predict_proba(X), by_hand.predict_proba(X))
    # with explicit validation data there is nothing to add back
    explicit = DenseHead(**params, refit=True).fit(X[:150], y[:150], validation_data=(X[150:], y[150:]))
    assert explicit.refit_epochs_ is None
