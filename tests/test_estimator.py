"""The accuracy estimator: rank ensemble, LightGBM on few labels, and the space-level wrapper."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from search.accuracy.data import load_dataset
from search.accuracy.estimator import (DEFAULT_ENSEMBLE, SUPERNET_COLUMN, AccuracyEstimator, EstimatorError, RankEnsemble,
                              SupervisedEstimator, nb201_path_features, spearman, structure_features)
from search.spaces import get_space
from search.accuracy.supernet import build_supernet

torch.set_num_threads(1)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NB201_CSV = SHARED / "nb201" / "nb201_cifar10.csv"
ZC_CSV = SHARED / "nb201" / "nb201_zc_proxies_cifar10.csv"


def _synthetic(n=300, seed=0):
    rng = np.random.default_rng(seed)
    a, b, c = rng.normal(size=(3, n))
    y = a + 0.5 * b + 0.3 * rng.normal(size=n)  # c is noise
    return pd.DataFrame({"a": a, "b": b, "c": c}), y


def test_rank_ensemble_combines_ranks_and_is_batch_independent_once_fitted():
    df, y = _synthetic()
    ens = RankEnsemble(("a", "b"))
    assert ens.score(df, y) > spearman(df["b"], y)  # two informative columns beat the weaker one
    assert RankEnsemble(("a", "b"), weights=(1, 0)).score(df, y) == pytest.approx(spearman(df["a"], y))
    ens.fit(df)
    whole = ens.predict(df)
    one = ens.predict(df.iloc[[7]])
    assert one[0] == pytest.approx(whole[7])  # a percentile of the reference, not of the batch
    assert 0 <= whole.min() and whole.max() <= 1
    with pytest.raises(EstimatorError, match="lack columns"):
        ens.predict(df[["a"]])
    with pytest.raises(EstimatorError):
        RankEnsemble(("a",), weights=(-1,))


def test_undefined_scores_rank_lowest():
    df = pd.DataFrame({"p": [1.0, np.nan, 3.0, -np.inf, 2.0]})
    r = RankEnsemble(("p",)).predict(df)
    assert set(np.argsort(r)[:2]) == {1, 3}
    fitted = RankEnsemble(("p",)).fit(df).predict(pd.DataFrame({"p": [np.nan, 10.0]}))
    assert fitted[0] < fitted[1]


def test_supervised_estimator_learns_from_few_labels():
    df, y = _synthetic(600, seed=1)
    tr, te = slice(0, 100), slice(100, None)
    est = SupervisedEstimator(ensemble_columns=("a", "b")).fit(df[tr], y[tr])
    rho = est.score(df[te], y[te])
    assert rho > 0.75
    enc = np.random.default_rng(0).normal(size=(600, 4))
    assert SupervisedEstimator(ensemble_columns=None).fit(df[tr], y[tr], encodings=enc[tr]).predict(
        df[te], encodings=enc[te]).shape == (500,)
    with pytest.raises(EstimatorError, match="not fitted"):
        SupervisedEstimator().predict(df)
    with pytest.raises(EstimatorError):
        SupervisedEstimator(ensemble_columns=None).fit(df[:3], y[:3])


def test_nb201_path_features_follow_the_live_cell():
    space = get_space("nb201")
    # ResNet-like cell: 0->1 conv3, 1->2 conv3, 0->3 skip, 2->3 skip; the other edges are none
    resnet = space.from_string("|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|")
    n_paths, max_c3, max_conv, min_conv, skip_only, no_conv, pooled, longest, mean_conv = nb201_path_features(resnet)
    assert (n_paths, max_c3, max_conv, min_conv, skip_only, no_conv, pooled, longest) == (2, 2, 2, 0, 1, 1, 0, 3)
    assert mean_conv == pytest.approx(1.0)
    # a dead edge (2->1 is none, so node 1 only feeds a none edge) adds no path
    dead = space.from_string("|avg_pool_3x3~0|+|none~0|none~1|+|nor_conv_1x1~0|none~1|none~2|")
    assert nb201_path_features(dead)[0] == 1 and nb201_path_features(dead)[6] == 0
    assert not nb201_path_features(("none",) * 6).any()  # zero cell
    archs = [space.sample(i) for i in range(5)]
    st = structure_features(space, archs)
    assert st.shape == (5, 15)
    np.testing.assert_array_equal(st[:, :6], space.arch_features_batch(archs)[:, space.encoding_size:])
    assert structure_features(get_space("mbv3"), archs[:0]) is None


def test_supervised_average_combines_models_and_stays_in_label_units():
    df, y = _synthetic(600, seed=2)
    rng = np.random.default_rng(3)
    structure = np.stack([df["a"].to_numpy() > 0, rng.integers(0, 3, 600)], 1).astype(float)  # one informative
    y = 60 + 5 * (y + 0.5 * structure[:, 0])
    tr, te = slice(0, 100), slice(100, None)
    est = SupervisedEstimator(ensemble_columns=("a", "b"), seed=0).fit(df[tr], y[tr], structure=structure[tr],
                                                                      reference=df)
    pred = est.predict(df[te], structure=structure[te])
    lgbm = SupervisedEstimator(ensemble_columns=("a", "b"), method="lightgbm").fit(df[tr], y[tr])
    assert spearman(pred, y[te]) > 0.8
    assert spearman(pred, y[te]) > lgbm.score(df[te], y[te]) - 0.02
    assert np.corrcoef(pred, y[te])[0, 1] > 0.8 and abs(np.median(pred) - np.median(y[te])) < 2  # accuracy units
    one = est.predict(df.iloc[[150]], structure=structure[[150]])
    assert one[0] == pytest.approx(pred[50])  # no dependence on the batch
    with pytest.raises(EstimatorError, match="structure"):
        est.predict(df[te])
    with pytest.raises(EstimatorError, match="method"):
        SupervisedEstimator(method="forest")


@pytest.fixture
def tiny_nb201():
    """A tiny NB201 space on normalised digits: (space, train, val, proxy batch x, y)."""
    train, val = load_dataset("digits").split(0.2)
    mean, std = train.stats()
    train, val = train.normalized(mean, std), val.normalized(mean, std)
    x, y = train.batch(16)
    return get_space("nb201", C=4, N=1, resolution=8), train, val, x, y


def test_accuracy_estimator_on_nb201_with_proxies_and_a_supernet(tiny_nb201):
    space, train, val, x, y = tiny_nb201
    sn = build_supernet(space)  # untrained: enough to check the plumbing
    est = AccuracyEstimator(space, x, y, supernet=sn, val=val.per_class(10), calib=train, reference_size=6, seed=0)
    est.fit()  # a reference population of 6 random architectures
    assert len(est._cache) <= 6
    reference = [space.sample(10 + i) for i in range(6)]
    est.fit(reference)
    archs = [space.sample(i) for i in range(4)]
    scores = est.predict(archs)
    assert scores.shape == (4,) and np.all((0 <= scores) & (scores <= 1))
    feats = est.features(archs)
    assert list(feats.columns) == list(DEFAULT_ENSEMBLE) + [SUPERNET_COLUMN]
    computed = {space.to_string(a) for a in reference + archs}
    before = len(est._cache)
    est.predict(archs)
    assert len(est._cache) == before and computed <= set(est._cache)  # each architecture computed once
    # supervised with "accuracies" of a few architectures (here: their parameter counts)
    labelled = [space.sample(100 + i) for i in range(8)]
    acc = [sum(p.numel() for p in space.build(a).parameters()) for a in labelled]
    est.fit(labelled, acc)
    assert est.predict(archs).shape == (4,)
    with pytest.raises(EstimatorError):
        est.fit(labelled, acc[:-1])
    with pytest.raises(EstimatorError, match="validation data"):
        AccuracyEstimator(space, x, y, supernet=sn)
    with pytest.raises(EstimatorError, match="supernet_weight"):
        AccuracyEstimator(space, x, y, supernet=sn, val=val, supernet_weight=-1.0)


def test_the_supernet_weight_sets_its_share_of_the_score(tiny_nb201):
    space, train, val, x, y = tiny_nb201
    sn = build_supernet(space)
    reference = [space.sample(10 + i) for i in range(8)]
    archs = [space.sample(i) for i in range(6)]

    def scores(**kw):
        est = AccuracyEstimator(space, x, y, val=val.per_class(10), calib=train, seed=0, **kw)
        return est.fit(reference).predict(archs), est

    proxies_only, _ = scores()
    silent, _ = scores(supernet=sn, supernet_weight=0.0)
    np.testing.assert_allclose(silent, proxies_only)  # weight 0: the proxies decide alone
    loud, est = scores(supernet=sn, supernet_weight=1e6)
    assert not np.allclose(loud, proxies_only)
    default, _ = scores(supernet=sn)  # 0.25: between the two
    assert np.all(np.abs(default - proxies_only) <= np.abs(loud - proxies_only) + 1e-9)


@pytest.mark.skipif(not ZC_CSV.exists(), reason="../shared reference data is absent")
def test_default_ensemble_on_the_reference_proxies_of_nb201():
    ref = pd.read_csv(ZC_CSV).merge(pd.read_csv(NB201_CSV, usecols=["arch", "val_acc"]), on="arch")
    ref = ref.rename(columns={"jacov": "jacob_cov"}).sample(2000, random_state=5)
    rho = RankEnsemble(DEFAULT_ENSEMBLE).score(ref, ref["val_acc"])
    assert rho > max(spearman(ref[c], ref["val_acc"]) for c in DEFAULT_ENSEMBLE)
    assert rho > 0.85
