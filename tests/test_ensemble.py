"""OOF predictions, ensemblers and clip selection (fast: LogisticRegression stand-ins, one real DenseHead run)."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from catdog_features import ensemble as ens
from catdog_features.ensemble import (
    CLIP_GRID,
    OOFPredictions,
    choose_clip,
    clip_probabilities,
    fit_blend,
    fit_ensemblers,
    fit_oof,
    log_loss,
    members_from_sweep,
    oof_key,
)
from catdog_features.features.featureset import FeatureSet


def make_features(n_per_class=30, n_classes=2, dims=(6, 4), seed=0, test=0, noise=1.5):
    """Gaussian blobs; every row's vector is unique, so a spy can recognise rows."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    rng.shuffle(labels)
    all_labels = np.concatenate([labels, rng.integers(0, n_classes, test)])
    n = len(all_labels)
    feats = {}
    for k, d in enumerate(dims):
        centers = rng.normal(0, 1, (n_classes, d))
        feats[f"B{k}"] = (centers[all_labels] + rng.normal(0, noise, (n, d))).astype(np.float32)
    ids = np.array([str(i) for i in range(n)])
    names = tuple(f"c{k}" for k in range(n_classes))
    train = FeatureSet(ids[: len(labels)], labels, names, {k: v[: len(labels)] for k, v in feats.items()})
    tst = FeatureSet(ids[len(labels):], None, (), {k: v[len(labels):] for k, v in feats.items()}) if test else None
    return train, tst


class SpyLR:
    """LogisticRegression that records which rows it was fitted on."""

    seen = []

    def __init__(self, params, random_state):
        self.model = LogisticRegression(C=params.get("C", 1.0), max_iter=1000)
        self.backbones = params.get("_backbones")

    def fit(self, X, y):
        SpyLR.seen.append({tuple(np.round(r, 6)) for r in X})
        with threadpool_limits(1, user_api="blas"):  # tiny problem: BLAS threads only add contention
            self.model.fit(X, y)
        self.classes_ = self.model.classes_
        return self

    def predict_proba(self, X):
        return self.model.predict_proba(X)


MEMBERS = [
    {"name": "a", "params": {"C": 1.0}, "backbones": ["B0"]},
    {"name": "b", "params": {"C": 0.1}, "backbones": ["B1"]},
    {"name": "ab", "params": {"C": 0.5}, "backbones": ["B0", "B1"]},
]


@pytest.fixture
def binary_oof():
    train, test = make_features(test=10)
    SpyLR.seen = []
    return fit_oof(MEMBERS, train, test, folds=4, random_state=3, estimator_factory=SpyLR, progress=False), train, test


def test_every_training_id_gets_exactly_one_oof_prediction(binary_oof):
    oof, train, _ = binary_oof
    assert list(oof.ids) == list(train.ids)
    assert sorted(np.bincount(oof.folds)) == [15, 15, 15, 15]
    for name in oof.member_names:
        assert oof.oof[name].shape == (60, 2)
        assert not np.isnan(oof.oof[name]).any()
        np.testing.assert_allclose(oof.oof[name].sum(axis=1), 1.0)
    # folds stratified: each fold holds both classes in equal proportion
    for k in range(4):
        assert abs(train.labels[oof.folds == k].mean() - 0.5) < 0.15


def test_no_fold_model_saw_its_oof_rows(binary_oof):
    oof, train, _ = binary_oof
    assert len(SpyLR.seen) == len(MEMBERS) * 4
    for m, member in enumerate(MEMBERS):
        X = train.concat(member["backbones"])
        for k in range(4):
            seen = SpyLR.seen[m * 4 + k]
            held = {tuple(np.round(r, 6)) for r in X[oof.folds == k]}
            rest = {tuple(np.round(r, 6)) for r in X[oof.folds != k]}
            assert not (seen & held)
            assert seen == rest


def test_test_prediction_is_mean_of_fold_models(binary_oof):
    oof, train, test = binary_oof
    X, Xt = train.concat(["B0"]), test.concat(["B0"])
    expected = np.mean([LogisticRegression(max_iter=1000).fit(X[oof.folds != k], train.labels[oof.folds != k]).predict_proba(Xt)
                        for k in range(4)], axis=0)
    np.testing.assert_allclose(oof.test["a"], expected, atol=1e-6)
    assert list(oof.test_ids) == list(test.ids)


def test_test_from_refit_predicts_with_one_model_on_every_training_row():
    train, test = make_features(test=10)
    SpyLR.seen = []
    refit = fit_oof(MEMBERS[:1], train, test, folds=4, random_state=3, estimator_factory=SpyLR, progress=False,
                    test_from="refit")
    X, Xt = train.concat(["B0"]), test.concat(["B0"])
    assert len(SpyLR.seen) == 5 and SpyLR.seen[-1] == {tuple(np.round(r, 6)) for r in X}  # 4 folds + the refit
    expected = LogisticRegression(max_iter=1000).fit(X, train.labels).predict_proba(Xt)
    np.testing.assert_allclose(refit.test["a"], expected, atol=1e-6)
    folds = fit_oof(MEMBERS[:1], train, test, folds=4, random_state=3, estimator_factory=SpyLR, progress=False,
                    test_from="folds")
    np.testing.assert_array_equal(refit.oof["a"], folds.oof["a"])  # OOF rows: the fold models' either way
    assert not np.allclose(refit.test["a"], folds.test["a"])
    assert [m["test_from"] for m in (*refit.members, *folds.members)] == ["refit", "folds"]
    assert refit.key != folds.key


def test_test_from_auto_refits_linear_members_and_saves_them_as_full(tmp_path):
    from catdog_features.ensemble import default_estimator_factory
    from catdog_features.heads import find_saved_head, load_head

    train, test = make_features(test=10)
    members = [{"name": "lin", "params": {"head": "linear"}, "backbones": ["B0"]},
               {"name": "net", "params": {"hidden_units": 4, "epochs": 3, "patience": 0}, "backbones": ["B0"]}]
    oof = fit_oof(members, train, test, folds=3, random_state=3, models_dir=tmp_path, progress=False)
    assert [m["test_from"] for m in oof.members] == ["refit", "folds"]
    X, Xt = train.concat(["B0"]), test.concat(["B0"])
    expected = default_estimator_factory({"head": "linear"}, 3 + 3).fit(X, train.labels).predict_proba(Xt)
    np.testing.assert_allclose(oof.test["lin"], expected, atol=1e-9)
    np.testing.assert_allclose(load_head(find_saved_head(tmp_path / "lin" / "full.keras")).predict_proba(Xt), expected,
                               atol=1e-9)
    assert find_saved_head(tmp_path / "net" / "full.keras") is None
    nets = [load_head(find_saved_head(tmp_path / "net" / f"fold{k}.keras")).predict_proba(Xt) for k in range(3)]
    np.testing.assert_allclose(oof.test["net"], np.mean(nets, axis=0), atol=1e-6)


def test_a_refit_is_only_fitted_when_something_uses_it(tmp_path):
    from catdog_features.heads import find_saved_head

    train, _ = make_features()
    SpyLR.seen = []
    fit_oof(MEMBERS[:1], train, None, folds=4, estimator_factory=SpyLR, progress=False, test_from="refit")
    assert len(SpyLR.seen) == 4  # no test set, no saved models: nothing would use it
    # no test set but saved models: new images are predicted later by the refit
    fit_oof([{"name": "a", "params": {"head": "linear"}, "backbones": ["B0"]}], train, None, folds=4, progress=False,
            models_dir=tmp_path)
    assert find_saved_head(tmp_path / "a" / "full.keras") is not None


def test_test_from_is_checked():
    train, test = make_features(test=4)
    with pytest.raises(ValueError, match="test_from='full'; expected one of 'auto', 'folds', 'refit'"):
        fit_oof(MEMBERS, train, test, folds=2, estimator_factory=SpyLR, progress=False, test_from="full")


def test_blend_weights_on_simplex_and_not_worse_than_best_member(binary_oof):
    oof, *_ = binary_oof
    result = fit_ensemblers(oof, method="blend")
    w = np.array(list(result.weights.values()))
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
    member_losses = [r["log_loss"] for r in result.scores if r["kind"] == "member"]
    blend = next(r for r in result.scores if r["name"] == "blend")
    assert blend["fit_log_loss"] <= min(member_losses) + 1e-12  # the weights, scored on the rows they were fitted on
    assert result.method == "blend"
    assert result.test_proba.shape == (10, 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blend_never_worse_than_best_member_even_with_a_bad_member(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 200)
    good = np.full((200, 3), 0.1)
    good[np.arange(200), y] = 0.8
    noisy = rng.dirichlet(np.ones(3), 200)
    w = fit_blend([noisy, good], y)
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
    mix = w[0] * noisy + w[1] * good
    assert log_loss(mix, y) <= min(log_loss(good, y), log_loss(noisy, y)) + 1e-12


def test_stacker_score_is_nested_cv_not_in_sample():
    # 25 members of pure noise: a stacker fitted in-sample looks better than chance,
    # its nested-CV score must not.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    members = [{"name": f"m{i}", "params": {}, "backbones": ["B0"]} for i in range(25)]
    probs = {m["name"]: np.column_stack([1 - (p := rng.uniform(0.2, 0.8, 120)), p]) for m in members}
    oof = OOFPredictions(np.arange(120).astype(str), y, np.arange(120) % 5, ("a", "b"), members, probs, info={"folds": 5})
    result = fit_ensemblers(oof, method="auto", random_state=7)
    stack = next(r for r in result.scores if r["name"] == "stack")
    in_sample = float(stack["note"].rsplit(" ", 1)[1])
    assert in_sample < np.log(2) < stack["log_loss"]
    assert "cv_log_loss" not in stack  # one OOF number per row: log_loss is the nested-CV one
    # the nested split is seeded differently from the members' folds
    nested = ens.make_folds(y, 5, 7 + 1)
    assert not np.array_equal(nested, oof.folds)
    # recompute by hand: stacker refit per outer training part
    expected = np.zeros((120, 2))
    for k in range(5):
        tr, te = nested != k, nested == k
        st = ens.fit_stacker([p[tr] for p in probs.values()], y[tr], 2)
        expected[te] = ens.apply_stacker(st, [p[te] for p in probs.values()], 2)
    assert stack["log_loss"] == pytest.approx(log_loss(expected, y))
    assert result.method != "stack"


def test_clip_is_chosen_on_oof_only(binary_oof):
    oof, *_ = binary_oof
    first = fit_ensemblers(oof, method="mean")
    # replace the test predictions by extreme values: the clip must not move
    oof.test = {n: np.tile([[1.0, 0.0]], (10, 1)) for n in oof.member_names}
    second = fit_ensemblers(oof, method="mean")
    assert first.clip == second.clip
    assert first.clip_losses == second.clip_losses
    assert not np.allclose(first.test_proba, second.test_proba)
    assert set(first.clip_losses) == set(CLIP_GRID) and 0.005 in first.clip_losses
    assert first.clip_losses[first.clip] == min(first.clip_losses.values())


@pytest.mark.parametrize("p_true, expected", [
    (1.0, 0.0),            # always right and certain: no clip
    (0.999, 0.0),          # confident, right: clipping only hurts
])
def test_choose_clip_prefers_small_eps_when_confident_and_right(p_true, expected):
    y = np.array([0, 1] * 50)
    probs = np.where(y[:, None] == np.arange(2), p_true, 1 - p_true)
    assert choose_clip(probs, y)[0] == expected


def test_choose_clip_picks_large_eps_when_confidently_wrong_sometimes():
    y = np.array([0, 1] * 50)
    probs = np.where(y[:, None] == np.arange(2), 1.0, 0.0)
    probs[:3] = probs[:3, ::-1]  # three certain mistakes
    eps, losses = choose_clip(probs, y)
    assert eps > 0.005 and losses[eps] < losses[0.0]


def test_choose_clip_keeps_no_clip_when_the_lowest_is_within_noise():
    # calibrated probabilities (y drawn from them): any clip's gain on these rows is chance
    rng = np.random.default_rng(2)
    q = rng.uniform(0.001, 0.999, 300)
    y = (rng.random(300) < q).astype(np.int64)
    probs = np.column_stack([1 - q, q])
    argmin, losses = choose_clip(probs, y, min_z=0.0)
    assert argmin == 0.05 and losses[0.05] < losses[0.0]
    z = ens.metrics.paired_z(clip_probabilities(probs, 0.0), clip_probabilities(probs, 0.05), y)
    assert 0 < z < ens.metrics.CLIP_MIN_Z
    assert choose_clip(probs, y) == (0.0, losses)
    assert choose_clip(probs, y, min_z=z * 0.99)[0] == 0.05


@pytest.mark.parametrize("shift, expected", [
    (0.1, np.inf),     # every row gains the same: certain, whatever the rounding of the logs
    (-0.1, -np.inf),   # every row loses the same
    (0.0, 0.0),        # identical predictions
])
def test_paired_z_without_spread(shift, expected):
    y = np.array([0, 1, 1, 0, 1])
    p_true = np.array([0.3, 0.6, 0.45, 0.8, 0.7])
    worse = np.where(y[:, None] == np.arange(2), p_true[:, None], 1 - p_true[:, None])
    better_true = p_true * np.exp(shift)  # log loss lower by exactly `shift` on every row
    better = np.where(y[:, None] == np.arange(2), better_true[:, None], 1 - better_true[:, None])
    assert ens.metrics.paired_z(worse, better, y) == expected


def test_clip_probabilities_multiclass_renormalises():
    p = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    c = clip_probabilities(p, 0.01)
    np.testing.assert_allclose(c.sum(axis=1), 1.0)
    assert c.min() > 0
    assert clip_probabilities(np.array([0.0, 1.0]), 0.005).tolist() == [0.005, 0.995]
    with pytest.raises(ValueError, match="clip=0.7"):
        clip_probabilities(p, 0.7)


def test_save_load_and_refit_ensemblers_without_any_head_fit(binary_oof, tmp_path, monkeypatch):
    oof, *_ = binary_oof
    path = oof.save(tmp_path / "oof.h5")
    before = fit_ensemblers(oof)

    from catdog_features import heads  # noqa: F401  (the real head must not be touched)

    def boom(*a, **k):
        raise AssertionError("a head was refitted")

    monkeypatch.setattr("catdog_features.heads.DenseHead.fit", boom)
    monkeypatch.setattr(ens.oof, "default_estimator_factory", boom)
    loaded = OOFPredictions.load(path)
    assert loaded.key == oof.key and loaded.members == oof.members
    np.testing.assert_array_equal(loaded.folds, oof.folds)
    assert list(loaded.test_ids) == list(oof.test_ids)
    after = fit_ensemblers(loaded)
    assert after.method == before.method and after.clip == before.clip
    np.testing.assert_allclose(after.test_proba, before.test_proba)
    roundtrip = ens.EnsembleResult.from_dict(after.to_dict())
    np.testing.assert_allclose(roundtrip.combine(loaded.test), after.test_proba)


def test_multiclass_ensemble_with_all_methods():
    train, test = make_features(n_per_class=20, n_classes=3, test=6, seed=1)
    oof = fit_oof(MEMBERS, train, test, folds=3, estimator_factory=SpyLR, progress=False)
    for method in ("mean", "blend", "stack", "auto"):
        result = fit_ensemblers(oof, method=method)
        assert result.test_proba.shape == (6, 3)
        np.testing.assert_allclose(result.test_proba.sum(axis=1), 1.0)
        assert {r["name"] for r in result.scores} == {"a", "b", "ab", "mean", "blend", "stack", "best"}
    assert "chosen:" in result.format_table()


def test_oof_key_changes_with_members_and_features():
    train, test = make_features(test=4)
    base = oof_key(MEMBERS, train, test, 5, 0)
    assert base == oof_key(MEMBERS, train, test, 5, 0)
    changed = [dict(MEMBERS[0], params={"C": 2.0})] + MEMBERS[1:]
    assert oof_key(changed, train, test, 5, 0) != base
    assert oof_key(MEMBERS, train, test, 4, 0) != base
    other = FeatureSet(train.ids, train.labels, train.class_names, {**train.features, "B0": train["B0"] + 1})
    assert oof_key(MEMBERS, other, test, 5, 0) != base


def test_members_from_sweep_trials_top_k_distinct():
    trials = [
        {"tid": 0, "status": "ok", "loss": 0.3, "params": {"dropout": 0.5}, "backbones": ["A"]},
        {"tid": 1, "status": "fail", "loss": None, "params": {}, "backbones": ["A"]},
        {"tid": 2, "status": "ok", "loss": 0.1, "params": {"dropout": 0.2}, "backbones": ["A", "B"]},
        {"tid": 3, "status": "ok", "loss": 0.2, "params": {"dropout": 0.2}, "backbones": ["A", "B"]},
        {"tid": 4, "status": "ok", "loss": 0.25, "params": {"dropout": 0.1}, "backbones": ["B"]},
    ]
    members = members_from_sweep(trials, top_k=2)
    # plus a logistic-regression member on the best trial's backbones (issue 13), C chosen by CV
    assert [m["name"] for m in members] == ["t2", "t4", "linear"]
    assert members[0]["backbones"] == ["A", "B"] == members[2]["backbones"]
    assert members[2]["params"] == {"head": "linear"}
    assert [m["name"] for m in members_from_sweep(trials, top_k=2, linear=False)] == ["t2", "t4"]
    linear_trial = {"tid": 5, "status": "ok", "loss": 0.01, "params": {"head": "linear", "C": 0.1}, "backbones": ["B"]}
    assert [m["name"] for m in members_from_sweep(trials + [linear_trial], top_k=2)] == ["t5", "t2", "linear"]
    with pytest.raises(ValueError, match="no successful trials"):
        members_from_sweep([trials[1]])


@pytest.mark.parametrize("bad, match", [
    ({"name": "x"}, "backbones"),
    ({"name": "x", "backbones": []}, "no backbones"),
])
def test_invalid_member_configs(bad, match):
    train, _ = make_features()
    with pytest.raises(ValueError, match=match):
        fit_oof([bad], train, progress=False, estimator_factory=SpyLR)


# --------------------------------------------------------------------------- one set of OOF numbers
@pytest.mark.parametrize("method", ["mean", "blend", "stack"])
def test_every_score_of_an_ensembler_comes_from_its_one_set_of_oof_probabilities(binary_oof, method):
    oof, *_ = binary_oof
    result = fit_ensemblers(oof, method=method, clip=0.0)
    y = oof.labels
    for row in result.scores:
        p = result.oof_by_method[row["name"]] if row["kind"] == "ensemble" else oof.oof[row["name"]]
        assert row["log_loss"] == pytest.approx(log_loss(p, y))
        assert row["clipped_log_loss"] == pytest.approx(row["log_loss"])  # clip 0: the same number
    np.testing.assert_array_equal(result.oof_proba, result.oof_by_method[method])
    assert result.chosen_score["log_loss"] == pytest.approx(log_loss(result.oof_proba, y))
    # what the console prints names the same numbers the report shows
    line = result.format_table().splitlines()[-1]
    assert line.startswith(f"chosen: {method}: OOF log loss {result.chosen_score['log_loss']:.5f}, clipped at 0:")


def test_chosen_oof_probabilities_are_saved_in_the_oof_file(binary_oof, tmp_path):
    oof, *_ = binary_oof
    result = fit_ensemblers(oof, method="stack")
    ens.save_chosen_oof(oof, result, tmp_path / "oof.h5")
    loaded = OOFPredictions.load(tmp_path / "oof.h5")
    assert loaded.chosen == "stack" and set(loaded.ensembles) == {"mean", "blend", "stack", "best"}
    np.testing.assert_array_equal(loaded.chosen_proba, result.oof_proba)
    assert log_loss(loaded.chosen_proba, loaded.labels) == pytest.approx(result.chosen_score["log_loss"], rel=1e-12)
    # a file without them (written before they were stored) still loads
    oof.ensembles, oof.chosen = {}, None
    assert OOFPredictions.load(oof.save(tmp_path / "old.h5")).chosen_proba is None


@pytest.mark.parametrize("probs, constant", [
    (np.tile([[0.500074, 0.499926]], (100, 1)), True),  # the first-run report: every row 0.499926
    (np.tile([[0.5, 0.5]], (100, 1)) + np.linspace(0, 1e-6, 100)[:, None] * [1, -1], True),
    (np.column_stack([np.linspace(0.4, 0.6, 100), np.linspace(0.6, 0.4, 100)]), False),
])
def test_near_constant_predictions_are_recognised(probs, constant):
    from catdog_features.ensemble.metrics import constant_predictions_message

    message = constant_predictions_message(probs, "test predictions")
    assert (message is not None) == constant
    if constant:
        assert "test predictions are (nearly) constant" in message and "100 rows" in message


def test_auto_never_chooses_worse_than_the_nested_best_member():
    """Weights fitted on a few rows can overfit; "best" (one member, picked per nested part) is a candidate."""
    rng = np.random.default_rng(0)
    n = 60
    y = np.arange(n) % 2
    good = np.clip(np.where(y[:, None] == np.arange(2), 0.8, 0.2) + rng.normal(0, 0.05, (n, 2)), 0.01, 0.99)
    members = {f"noise{i}": rng.dirichlet([1, 1], size=n) for i in range(5)}
    members["good"] = good / good.sum(axis=1, keepdims=True)
    oof = OOFPredictions(ids=np.array([str(i) for i in range(n)]), labels=y, folds=np.arange(n) % 3,
                         class_names=("a", "b"), members=[{"name": k, "params": {}, "backbones": []} for k in members],
                         oof=members, test_ids=None, test={}, test_failed=[], key="k", info={"folds": 3})
    result = fit_ensemblers(oof)
    ll = {r["name"]: r["log_loss"] for r in result.scores}
    assert result.best_member == "good"
    assert ll[result.method] <= ll["best"] + 1e-12
    # "best" predicts with the chosen member alone, and survives the JSON round trip
    again = type(result).from_dict(result.to_dict())
    np.testing.assert_array_equal(again.combine(members, "best"), members["good"])


def _two_kind_oof(better, worse, n=400, seed=0, sweep_folds=None, linear_params=None):
    """A calibrated linear member (``y`` drawn from its probabilities) and a dense one: the same
    probabilities, but confident and right on ``better`` rows and wrong on ``worse`` rows.
    ``sweep_folds``: how many CV folds scored the dense member's trial in its sweep."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.05, 0.95, n)
    y = (rng.random(n) < q).astype(np.int64)
    q_net = q.copy()
    rows = rng.permutation(n)
    q_net[rows[:better]] = np.where(y[rows[:better]] == 1, 0.97, 0.03)
    q_net[rows[better:better + worse]] = np.where(y[rows[better:better + worse]] == 1, 0.3, 0.7)
    to2 = lambda p: np.column_stack([1 - p, p])  # noqa: E731
    p_lin, p_net = q, q_net
    test = {"lin": rng.dirichlet([2, 2], 7), "net": rng.dirichlet([2, 2], 7)}
    members = [{"name": "lin", "params": {"head": "linear", **(linear_params or {})}, "backbones": ["B0"]},
               {"name": "net", "params": {"hidden_units": 8}, "backbones": ["B0"], "sweep_folds": sweep_folds}]
    return OOFPredictions(ids=np.arange(n).astype(str), labels=y, folds=np.arange(n) % 5, class_names=("a", "b"),
                          members=members, oof={"lin": to2(p_lin), "net": to2(p_net)}, test_ids=np.arange(7).astype(str),
                          test=test, test_failed=[], key="k", info={"folds": 5})


@pytest.mark.parametrize("better, worse, sweep_folds, z_range, auto_keeps_linear", [
    (0, 0, None, (-0.5, 2.0), False),    # no sweep: auto keeps the lowest
    (12, 8, 1, (-0.5, 2.0), False),      # a hold-out sweep: its pick was scored on a fifth of the rows only
    (12, 8, 5, (-0.5, 2.0), True),       # a CV sweep picked it on every row, and it is < 2 SE ahead
    (300, 0, 5, (5.0, 100.0), False),    # a CV sweep, far ahead
])
def test_linear_method_and_when_auto_keeps_it(better, worse, sweep_folds, z_range, auto_keeps_linear):
    from catdog_features.ensemble.combine import AUTO_MARGIN_Z, AUTO_ORDER
    from catdog_features.ensemble.metrics import paired_z

    oof = _two_kind_oof(better, worse, sweep_folds=sweep_folds)
    result = fit_ensemblers(oof, method="auto", clip=0.0)
    ensemblers = {r["name"]: r for r in result.scores if r["kind"] == "ensemble"}
    lowest = min(AUTO_ORDER, key=lambda m: (round(ensemblers[m]["log_loss"], 10), AUTO_ORDER.index(m)))
    z = paired_z(oof.oof["lin"], result.oof_by_method[lowest], oof.labels)
    assert z_range[0] < z < z_range[1]
    assert auto_keeps_linear == (sweep_folds == 5 and z < AUTO_MARGIN_Z)
    assert result.method == ("linear" if auto_keeps_linear else lowest)
    where = "ahead of" if z >= 0 else "behind"
    assert f"{lowest}, the lowest of the others, is {abs(z):.2f} standard errors {where} it" in ensemblers["linear"]["note"]
    assert ("auto keeps this" in ensemblers["linear"]["note"]) == auto_keeps_linear
    # "linear" is the member alone, on OOF and test rows, also after the JSON round trip
    np.testing.assert_array_equal(result.oof_by_method["linear"], oof.oof["lin"])
    np.testing.assert_array_equal(result.combine(oof.test, "linear"), oof.test["lin"])
    forced = fit_ensemblers(oof, method="linear", clip=0.0)
    assert forced.method == "linear" and forced.linear_member == "lin"
    again = type(forced).from_dict(forced.to_dict())
    np.testing.assert_array_equal(again.combine(oof.test), oof.test["lin"])
    assert again.chosen_score["kind"] == "ensemble" and again.chosen_score["name"] == "linear"


@pytest.mark.parametrize("members, reason", [
    (["net"], "no linear member"),
    (["lin_fixed_C", "net"], "its C was fixed, e.g. by a sweep on these rows"),
])
def test_linear_method_needs_a_linear_member_tuned_inside_folds(members, reason):
    oof = _two_kind_oof(12, 8, sweep_folds=5, linear_params={"C": 0.5})
    oof.oof["lin_fixed_C"] = oof.oof.pop("lin")
    oof.members[0]["name"] = "lin_fixed_C"
    oof.members = [m for m in oof.members if m["name"] in members]
    oof.oof = {k: v for k, v in oof.oof.items() if k in members}
    oof.test = {}
    with pytest.raises(ValueError, match="method='linear' needs a logistic-regression member"):
        fit_ensemblers(oof, method="linear")
    auto = fit_ensemblers(oof)
    assert auto.method != "linear" and "linear" not in {r["name"] for r in auto.scores if r["kind"] == "ensemble"}


def test_a_member_named_like_an_ensembler_is_not_marked_chosen():
    oof = _two_kind_oof(12, 8, sweep_folds=5)
    for m in oof.members:
        m["name"] = {"lin": "linear", "net": "t3"}[m["name"]]
    oof.oof = {"linear": oof.oof["lin"], "t3": oof.oof["net"]}
    oof.test = {"linear": oof.test["lin"], "t3": oof.test["net"]}
    result = fit_ensemblers(oof, clip=0.0)
    assert result.method == "linear"
    marked = [line for line in result.format_table().splitlines() if line.endswith(" *")]
    assert len(marked) == 1 and marked[0].split()[:2] == ["linear", "ensemble"]


def test_a_saved_ensemble_of_an_unknown_method_asks_for_a_refit():
    saved = fit_ensemblers(_two_kind_oof(0, 0), clip=0.0).to_dict()
    saved["method"] = "linear_members"  # written by an earlier version
    with pytest.raises(ValueError, match="method='linear_members'.*Refit the ensemble"):
        ens.EnsembleResult.from_dict(saved)
