import numpy as np
import pytest

from catdog_features.splitting import holdout_split


@pytest.mark.parametrize("y, stratified", [
    (np.repeat([0, 1, 2], 10), True),                     # every class has >= 2 rows
    (np.array([0] * 10 + [1] * 10 + [2]), False),          # one singleton class: kept in train + warning
])
def test_holdout_split_partitions_rows_and_stratifies_when_possible(y, stratified):
    if stratified:
        train, val = holdout_split(y, 0.3, random_state=0)
    else:
        with pytest.warns(UserWarning, match="single row"):
            train, val = holdout_split(y, 0.3, random_state=0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(y)))
    assert len(val) == int(np.ceil(0.3 * len(y)))
    if stratified:  # each class keeps its share in the validation part
        assert np.bincount(y[val]).tolist() == [3, 3, 3]
    else:  # the single-row class is trained on, never only validated on
        assert 20 in train.tolist() and 2 not in y[val].tolist()
    again = holdout_split(y, 0.3, random_state=0) if stratified else None
    if again is not None:
        assert np.array_equal(again[1], val)


def test_dense_head_trains_with_a_singleton_class():
    from catdog_features.heads import DenseHead

    rng = np.random.default_rng(0)
    y = np.array([0] * 12 + [1] * 12 + [2])
    X = rng.normal(size=(len(y), 4)).astype(np.float32) + y[:, None]
    with pytest.warns(UserWarning, match="single row"):
        head = DenseHead(optimizer="adam", epochs=3, patience=2, random_state=0).fit(X, y)
    assert head.predict_proba(X).shape == (len(y), 3)
