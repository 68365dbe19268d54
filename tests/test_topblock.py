"""TopBlockHead: scikit-learn conventions, shapes, determinism, save/load, and as an OOF member."""

import json

import numpy as np
import pytest
from sklearn.base import clone

from catdog_features.features.featureset import FeatureSet
from catdog_features.heads import TopBlockHead, load_head, save_head
from catdog_features.heads.saved import SavedHeadError, build_head, find_saved_head

# ResNet50 at 32 px: the map at conv5_block2_out is 1 x 1 x 2048 (random init, no download)
SHAPE = (1, 1, 2048)
FAST = dict(backbone="ResNet50", weights=None, image_size=32, epochs=2, batch_size=8, lr=1e-3)


def _maps(n=32, n_classes=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, *SHAPE)).astype(np.float16)
    score = X[:, 0, 0, :8].astype(np.float64).sum(axis=1)
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1]))
    return X, y


def test_init_stores_arguments_and_clone_get_set_params_work():
    head = TopBlockHead(backbone="Xception", split="block14_sepconv1:input", weights=None, train_layers=2, lr=3e-4)
    params = head.get_params()
    assert params["backbone"] == "Xception" and params["train_layers"] == 2 and params["lr"] == 3e-4
    assert params["split"] == "block14_sepconv1:input" and params["weights"] is None
    copy = clone(head)
    assert copy.get_params() == params and copy is not head
    assert head.set_params(dropout=0.25, epochs=5) is head and head.dropout == 0.25 and head.epochs == 5
    assert not [k for k in vars(TopBlockHead()) if k.endswith("_")]  # nothing learned before fit
    assert build_head({"head": "topblock", "lr": 0.01}).get_params()["lr"] == 0.01


@pytest.mark.parametrize("params, message", [
    ({"train_layers": "some"}, "Received: train_layers='some'"),
    ({"train_layers": -1}, "Received: train_layers=-1"),
    ({"optimizer": "adadelta"}, "Received: optimizer='adadelta'"),
    ({"lr": 0}, "Received: lr=0"),
    ({"dropout": 1.0}, "Received: dropout=1.0"),
])
def test_bad_parameters_fail_in_fit_naming_the_value(params, message):
    X, y = _maps(8)
    head = TopBlockHead(**dict(FAST, **params))  # accepted by __init__, unchanged
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        head.fit(X, y)


def test_fit_rejects_vectors_and_maps_of_the_wrong_shape():
    X, y = _maps(8)
    with pytest.raises(ValueError, match=r"expected feature maps \(n_samples, h, w, c\)"):
        TopBlockHead(**FAST).fit(X.reshape(8, -1), y)
    with pytest.raises(ValueError, match=r"Received maps of shape \(2, 2, 2048\); expected \(1, 1, 2048\)"):
        TopBlockHead(**FAST).fit(np.zeros((8, 2, 2, 2048), np.float16), y)


@pytest.fixture(scope="module")
def fitted():
    X, y = _maps(32)
    return TopBlockHead(**FAST, random_state=0).fit(X, y), X, y


def test_fit_predict_proba_shapes_and_learned_attributes(fitted):
    head, X, y = fitted
    proba = head.predict_proba(X)
    assert proba.shape == (32, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert set(head.predict(X)) <= {0, 1}
    assert head.classes_.tolist() == [0, 1] and head.map_shape_ == SHAPE and head.n_features_in_ == 2048
    assert head.split_ == "conv5_block2_out"
    # the last block's convolutions train; its batch norms keep their statistics (train_batchnorm=False)
    assert head.trainable_layers_ == ["conv5_block3_1_conv", "conv5_block3_2_conv", "conv5_block3_3_conv"]
    assert len(head.history_["loss"]) == len(head.history_["val_loss"]) <= 2 and head.best_epoch_ in (0, 1)
    with pytest.raises(ValueError, match=r"expected \(1, 1, 2048\), as in fit"):
        head.predict_proba(np.zeros((2, 2, 2, 2048), np.float32))


def test_same_seed_same_predictions_other_seed_other_predictions(fitted):
    head, X, y = fitted
    again = clone(head).fit(X, y)
    assert np.array_equal(again.predict_proba(X), head.predict_proba(X))
    other = clone(head).set_params(random_state=1).fit(X, y)
    assert not np.allclose(other.predict_proba(X), head.predict_proba(X))


def test_multiclass_and_string_labels():
    X, y = _maps(30, n_classes=3, seed=2)
    labels = np.array(["cat", "dog", "fox"])[y]
    head = TopBlockHead(**dict(FAST, epochs=1, train_layers=1), random_state=0).fit(X, labels, validation_data=(X[:6], labels[:6]))
    assert head.predict_proba(X).shape == (30, 3) and set(head.predict(X)) <= set(labels)
    assert head.trainable_layers_ == ["conv5_block3_3_conv"]  # the last layer with weights only


def test_save_load_round_trip_without_pickle(fitted, tmp_path):
    head, X, _ = fitted
    path = save_head(head, tmp_path / "m" / "fold0")
    assert path.suffix == ".keras" and find_saved_head(tmp_path / "m" / "fold0") == path
    meta = json.loads((tmp_path / "m" / "fold0.keras.json").read_text())
    assert meta["format"] == "catdog_features.TopBlockHead" and meta["map_shape"] == list(SHAPE)
    loaded = load_head(path)
    assert type(loaded) is TopBlockHead and loaded.get_params() == head.get_params()
    assert np.array_equal(loaded.predict_proba(X), head.predict_proba(X))
    assert loaded.trainable_layers_ == head.trainable_layers_ and loaded.history_ == head.history_
    meta["map_shape"] = [2, 2, 2048]
    (tmp_path / "m" / "fold0.keras.json").write_text(json.dumps(meta))
    with pytest.raises(SavedHeadError, match="does not match its sidecar"):
        load_head(path)


def test_topblock_member_in_fit_oof_on_cached_maps(tmp_path):
    from catdog_features.ensemble import fit_oof

    X, y = _maps(24, seed=3)
    fs = FeatureSet(ids=np.array([f"i{k}" for k in range(24)]), labels=y, class_names=("cat", "dog"),
                    features={"ResNet50": X})
    test = FeatureSet(ids=np.array(["t0", "t1", "t2"]), labels=None, class_names=("cat", "dog"),
                      features={"ResNet50": X[:3]})
    member = {"name": "top", "params": {"head": "topblock", **{k: v for k, v in FAST.items()}, "epochs": 1},
              "backbones": ["ResNet50"]}
    oof = fit_oof([member], fs, test, folds=2, random_state=0, models_dir=tmp_path, progress=False)
    assert oof.oof["top"].shape == (24, 2) and np.isfinite(oof.oof["top"]).all()
    assert oof.test["top"].shape == (3, 2)
    fold1 = load_head(find_saved_head(tmp_path / "top" / "fold1"))
    held_out = np.flatnonzero(oof.folds == 1)
    np.testing.assert_allclose(fold1.predict_proba(X[held_out]), oof.oof["top"][held_out], rtol=1e-6)


def test_topblock_member_in_parallel_fit_oof_matches_the_inline_one():
    from catdog_features.ensemble import fit_oof

    X, y = _maps(24, seed=4)
    fs = FeatureSet(ids=np.array([f"i{k}" for k in range(24)]), labels=y, class_names=("cat", "dog"),
                    features={"ResNet50": X})
    member = {"name": "top", "params": {"head": "topblock", **FAST, "epochs": 1}, "backbones": ["ResNet50"]}
    inline = fit_oof([member], fs, folds=2, random_state=0, progress=False)
    parallel = fit_oof([member], fs, folds=2, random_state=0, progress=False, n_jobs=2)  # worker processes
    # other thread counts change the order of float32 sums in the convolutions: equal to rounding
    np.testing.assert_allclose(parallel.oof["top"], inline.oof["top"], atol=1e-5)


def test_a_sweep_searches_top_block_heads_on_cached_maps(tmp_path):
    """A FeatureSet with a `<backbone>@map` block: TPE trials of TopBlockHead, best_estimator() ready to refit."""
    from hyperopt import hp

    from catdog_features.search import sweep

    X, y = _maps(n=24)
    fs = FeatureSet(ids=np.array([str(i) for i in range(len(y))]), labels=y, class_names=("cat", "dog"),
                    features={"ResNet50@map": X, "ResNet50": X.mean(axis=(1, 2))})
    space = {"head": "topblock", "backbone": "ResNet50", "split": "default", "weights": None, "image_size": 32,
             "lr": hp.loguniform("lr", -9, -5), "epochs": 2}
    res = sweep(fs, space=space, backbones=["ResNet50@map"], max_evals=3, cv=None, progress=False,
                trials_path=tmp_path / "t.sqlite")
    assert [t["status"] for t in res.trials] == ["ok"] * 3, [t["error"] for t in res.trials]
    assert len({t["params"]["lr"] for t in res.trials}) == 3
    best = res.best_estimator()
    assert isinstance(best, TopBlockHead) and not hasattr(best, "model_")
    assert best.fit(X, y).predict_proba(X).shape == (24, 2)
