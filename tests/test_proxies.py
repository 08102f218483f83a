"""Zero-cost proxies: closed-form checks on tiny networks, determinism, and the NB201 reference."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from search.accuracy.proxies import PROXIES, ProxyError, compute_proxies
from search.spaces import get_space

torch.set_num_threads(1)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ZC_CSV = SHARED / "nb201" / "nb201_zc_proxies_cifar10.csv"


def _tiny_nb201(arch=("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "nor_conv_1x1")):
    torch.manual_seed(0)
    return get_space("nb201", C=4, N=1, resolution=8).build(arch)


def _batch(n=8, hw=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, hw, hw, generator=g), torch.arange(n) % 10


def test_all_proxies_are_finite_deterministic_and_leave_the_net_unchanged():
    net = _tiny_nb201()
    x, y = _batch()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    a = compute_proxies(net, x, y, None, seed=0)
    assert list(a) == list(PROXIES)
    assert all(math.isfinite(v) for v in a.values()), a
    assert not net.training  # mode restored
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics untouched
    assert all(p.grad is None for p in net.parameters())
    b = compute_proxies(net, x, y, list(reversed(PROXIES)), seed=0)
    assert all(a[k] == b[k] for k in PROXIES)  # order-independent and reproducible
    c = compute_proxies(net, x, y, ["zen", "nwot"], seed=1)
    assert c["zen"] != a["zen"] and c["nwot"] == a["nwot"]  # only zen draws random numbers


def test_unknown_proxy_and_mismatched_batch_are_refused():
    net = _tiny_nb201()
    x, y = _batch()
    with pytest.raises(ProxyError, match="unknown proxy"):
        compute_proxies(net, x, y, ["nope"])
    with pytest.raises(ProxyError):
        compute_proxies(net, x, y[:3], ["snip"])
    assert set(compute_proxies(net, x, y, ["jacov", "naswot"])) == {"jacob_cov", "nwot"}


def test_synflow_closed_form_on_a_linear_chain():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 1, bias=False))
    W, v = net[0].weight.detach().abs().double(), net[1].weight.detach().abs().double()
    R = float(v @ W @ torch.ones(3, dtype=torch.float64))  # the synflow objective with |weights| and an all-ones input
    # sum |w * dR/dw| over both layers: each layer contributes R
    s = compute_proxies(net, torch.randn(4, 3), torch.zeros(4, dtype=torch.long), ["synflow"])["synflow"]
    assert s == pytest.approx(2 * R, rel=1e-9)


def test_snip_grad_norm_and_grasp_against_autograd():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(7, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    s = compute_proxies(net, x, y, ["snip", "grad_norm", "grasp", "params", "flops"])
    ws = [net[0].weight, net[2].weight]
    loss = nn.functional.cross_entropy(net(x), y)
    g = torch.autograd.grad(loss, ws, create_graph=True)
    assert s["snip"] == pytest.approx(sum(float((w * gi).abs().sum().detach()) for w, gi in zip(ws, g)), rel=1e-5)
    assert s["grad_norm"] == pytest.approx(sum(float(gi.norm().detach()) for gi in g), rel=1e-5)
    z = sum((gi.detach() * gi).sum() for gi in g)
    hg = torch.autograd.grad(z, ws)
    assert s["grasp"] == pytest.approx(sum(float((-w * h).sum()) for w, h in zip(ws, hg)), rel=1e-4)
    assert s["params"] == pytest.approx((5 * 6 + 6 + 6 * 3 + 3) / 1e6)
    assert s["flops"] == pytest.approx((5 * 6 + 6 * 3) / 1e6)


def test_conv_flops_and_nwot_against_direct_computation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    x, y = torch.randn(6, 3, 5, 5), torch.tensor([0, 1, 0, 1, 0, 1])
    s = compute_proxies(net, x, y, ["flops", "nwot"])
    assert s["flops"] == pytest.approx((8 * 5 * 5 * 3 * 9 + 8 * 2) / 1e6)
    codes = (net[0](x) > 0).reshape(6, -1).double().detach().numpy()
    K = codes @ codes.T + (1 - codes) @ (1 - codes).T
    assert s["nwot"] == pytest.approx(np.linalg.slogdet(K)[1], rel=1e-9)


def test_jacob_cov_definition_and_undefined_case():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.randn(5, 3, 4, 4), torch.zeros(5, dtype=torch.long)
    s = compute_proxies(net, x, y, ["jacob_cov"])["jacob_cov"]
    xr = x.clone().requires_grad_(True)
    net(xr).sum().backward()
    v = np.linalg.eigvals(np.corrcoef(xr.grad.reshape(5, -1).numpy())).real
    assert s == pytest.approx(float(-np.sum(np.log(v + 1e-5) + 1 / (v + 1e-5))), rel=1e-4)
    # an NB201 network whose cells are all zero does not depend on its input: undefined
    zero = _tiny_nb201(("none",) * 6)
    assert math.isnan(compute_proxies(zero, *_batch(), ["jacob_cov"])["jacob_cov"])


def test_more_capacity_scores_higher_on_size_proxies():
    big = _tiny_nb201(("nor_conv_3x3",) * 6)
    small = _tiny_nb201(("skip_connect",) * 6)
    x, y = _batch()
    b = compute_proxies(big, x, y, ["params", "flops", "synflow"])
    s = compute_proxies(small, x, y, ["params", "flops", "synflow"])
    assert all(b[k] > s[k] for k in b)


@pytest.mark.skipif(not ZC_CSV.exists(), reason="../shared reference data is absent")
def test_rank_agreement_with_the_nb201_reference_on_a_sample():
    import pandas as pd
    from scipy.stats import spearmanr
    ref = pd.read_csv(ZC_CSV).sample(12, random_state=0)
    space = get_space("nb201")
    x, y = _batch(8, 32)  # the data-free proxies do not depend on the batch
    rows = []
    for a in ref["arch"]:
        torch.manual_seed(0)
        rows.append(compute_proxies(space.build(space.from_string(a)), x, y, ["params", "flops", "synflow"]))
    mine = pd.DataFrame(rows)
    np.testing.assert_allclose(mine["params"], ref["params"], atol=1e-5)
    assert spearmanr(mine["flops"], ref["flops"]).statistic > 0.9
    # the reference stores log(synflow)
    assert spearmanr(mine["synflow"], ref["synflow"]).statistic > 0.9
    np.testing.assert_allclose(np.log(mine["synflow"]), ref["synflow"], rtol=0.05)


def test_a_registered_proxy_is_computed_checked_by_the_search_config_and_ranks_in_the_estimator():
    from search.accuracy.estimator import AccuracyEstimator
    from search.accuracy.proxies import REGISTRY, canonical_names, register_proxy, unregister_proxy
    from search.config import AccuracyConfig
    from profiling.validate import ConfigError

    def convs(net, inputs, targets, loss_fn):  # a plug-in proxy: the number of convolutions
        return float(sum(isinstance(m, nn.Conv2d) for m in net.modules()))

    space = get_space("nb201", C=4, N=1, resolution=8)
    x, y = _batch()
    with pytest.raises(ConfigError, match="unknown proxy 'conv_count'"):
        AccuracyConfig(proxies=("conv_count",))
    register_proxy("conv_count", convs, data_free=True, aliases=("convs",))
    try:
        assert REGISTRY["conv_count"].data_free and canonical_names(["convs"]) == ["conv_count"]
        with pytest.raises(ProxyError, match="already registered"):
            register_proxy("params", convs)
        with pytest.raises(ProxyError, match="must be a function"):
            register_proxy("other", None)
        net = _tiny_nb201()
        scores = compute_proxies(net, x, y, ["convs", "params"])
        assert scores["conv_count"] == sum(isinstance(m, nn.Conv2d) for m in net.modules())
        assert AccuracyConfig(proxies=("conv_count", "params")).proxies == ("conv_count", "params")
        many = ("nor_conv_3x3",) * 6
        none = ("none", "skip_connect", "avg_pool_3x3", "none", "skip_connect", "avg_pool_3x3")
        est = AccuracyEstimator(space, x, y, proxies=["convs"], reference_size=4, seed=0).fit()
        low, high = est.predict([none, many])
        assert high > low  # the estimator ranks by the registered proxy
    finally:
        unregister_proxy("conv_count")
    assert "conv_count" not in REGISTRY and "convs" not in canonical_names(None)
    with pytest.raises(ProxyError, match="built-in"):
        unregister_proxy("params")
