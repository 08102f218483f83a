"""The baseline space's few-shot supernet: one weight set per stage and block type, every arch
(the baseline included) a subnet with exactly the standalone network's weights, weights shared
within a block type only, and a baseline search scored with it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from search.accuracy.supernet import BaselineSupernet, build_supernet, supernet_size
from search.spaces import get_space
from search.spaces.baseline import BaselineSpace, StageGene, op_family
from search.spaces.mbv3 import SqueezeExcite
from search.spaces.skeleton import Block, Head, Skeleton, Stem

torch.set_num_threads(1)


def _resnet20(resolution: int = 16) -> BaselineSpace:
    return get_space("baseline", baseline="resnet20", num_classes=10, in_channels=1, resolution=resolution)


def _mixed() -> BaselineSpace:
    """Own blocks of the types resnet20 lacks (bottleneck, grouped with SE), a max-pooled stem and a
    head with a conv and a mix layer, at a tiny size."""
    sk = Skeleton(Stem(8, 3, 1, "relu", maxpool=True),
                  ((Block("bottleneck", 16, 1, 0.5), Block("bottleneck", 16)),
                   (Block("grouped", 24, 2, 1.0, 3, True, "hardswish", 8), Block("grouped", 24, 1, 1.0, 3, True,
                                                                                   "hardswish", 8))),
                  Head(conv=32, mix=24), resolution=16, in_channels=3, num_classes=5, se_gate="sigmoid")
    return BaselineSpace(sk, "mixed")


def _archs(space: BaselineSpace, n: int) -> list:
    rng = np.random.default_rng(0)
    return [space.baseline_arch] + [space.sample(rng) for _ in range(n)]


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("make", [_resnet20, _mixed], ids=["resnet20", "bottleneck-grouped-head"])
def test_every_arch_is_a_subnet_with_the_standalone_networks_weights(make):
    space = make()
    sn = build_supernet(space).double()
    assert isinstance(sn, BaselineSupernet) and supernet_size(space) == _n_params(sn)
    with torch.no_grad():  # SE layers in their live range (ReLU on, gate not saturated): every weight gets a gradient
        for m in sn.modules():
            if isinstance(m, SqueezeExcite):
                m.reduce.bias.fill_(5.0)
                m.expand.weight.mul_(1e-3)
    c, r, _ = space.input_shape(space.baseline_arch)
    x = torch.randn(6, c, r, r, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for arch in _archs(space, 12):
        standalone = space.build(arch)
        net = sn.subnet(arch).double()
        assert type(net) is type(standalone) and _n_params(net) == _n_params(standalone)
        # the same computation: in training mode (batch statistics) and, after those passes
        # updated the running statistics, in eval mode
        sn.train(), net.train()
        out = sn(x, arch)
        assert out.shape == (6, space.num_classes)
        torch.testing.assert_close(out, net(x))
        sn.eval(), net.eval()
        net = sn.subnet(arch).double().eval()
        torch.testing.assert_close(sn(x, arch), net(x))
        # and the subnet's weights are the only supernet weights that take part: the same
        # gradients, as many nonzero ones, the same norm (an extra weight used would add to both)
        sn.train(), net.train()
        sn.zero_grad(set_to_none=True)
        g = torch.randn(6, space.num_classes, dtype=torch.float64)
        (sn(x, arch) * g).sum().backward()
        (net(x) * g).sum().backward()
        grads = lambda m: [p.grad for p in m.parameters() if p.grad is not None]  # noqa: E731
        tiny = 1e-9 * max(float(t.abs().max()) for t in grads(net))  # below: rounding of a zero
        n_sn, n_net = (sum(int((t.abs() > tiny).sum()) for t in grads(m)) for m in (sn, net))
        assert n_sn == n_net and n_net > 0.99 * _n_params(standalone), space.to_string(arch)
        norm = lambda m: float(sum((t ** 2).sum() for t in grads(m)))  # noqa: E731
        assert norm(sn) == pytest.approx(norm(net), rel=1e-9)


def _stage_blocks(space: BaselineSpace, net, arch, stage: int) -> list[torch.nn.Module]:
    first = sum(g.depth for g in arch.stages[:stage])
    return list(net.blocks)[first:first + arch.stages[stage].depth]


def _state(modules) -> list[torch.Tensor]:
    return [t.clone() for m in modules for t in m.state_dict().values() if t.dtype.is_floating_point]


def test_training_one_subnet_moves_its_block_types_weights_only():
    space = _resnet20(8)
    torch.manual_seed(0)
    sn = build_supernet(space)
    base = space.baseline_arch
    with_stage2 = lambda op, d, w: space.make([base.stages[0], StageGene(op, d, w, False), base.stages[2]])  # noqa: E731
    trained = with_stage2("mb6k5", 3, 1.0)
    sibling = with_stage2("mb3k3", 2, 0.75)     # another mbconv: a slice of the same weights
    other = with_stage2("grouped", 3, 1.0)      # another block type: its own weights
    before = {k: _state(_stage_blocks(space, sn.subnet(a), a, 1)) for k, a in
              (("sibling", sibling), ("other", other), ("baseline", base))}
    stem_before = sn.stem[0].weight.clone()
    opt = torch.optim.SGD(sn.parameters(), lr=0.1)
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(sn(x, trained), y).backward()
        opt.step()
    after = {k: _state(_stage_blocks(space, sn.subnet(a), a, 1)) for k, a in
             (("sibling", sibling), ("other", other), ("baseline", base))}
    assert not torch.equal(stem_before, sn.stem[0].weight)                          # shared by all
    assert any(not torch.equal(a, b) for a, b in zip(before["sibling"], after["sibling"]))
    assert all(torch.equal(a, b) for a, b in zip(before["other"], after["other"]))
    assert all(torch.equal(a, b) for a, b in zip(before["baseline"], after["baseline"]))


def test_each_step_trains_every_block_type_of_every_stage_equally():
    space = _resnet20(8)
    sn = build_supernet(space)
    for step in range(5):
        archs, teacher = sn.training_archs(np.random.default_rng([0, step]), n_random=1)
        assert len(archs) == 3 and teacher is False
        for st in range(space.n_stages):
            assert sorted(op_family(a.stages[st].op) for a in archs) == ["grouped", "mbconv", "own"]


def test_a_baseline_search_scores_candidates_and_baseline_with_the_supernet(tmp_path):
    from search.run import SearchConfig, run_search
    root = Path(__file__).resolve().parents[1]
    predictor = sorted((root / "data" / "predictors").glob("local-cpu__*.lgb"))[0]
    cfg = SearchConfig(predictor=predictor, data="digits", data_max_per_class=30, population=6, generations=2,
                       finalists=1, verify_rounds=1, reference_size=8, proxy_batch=16, proxies=("jacob_cov",),
                       out=tmp_path / "s", cache_dir=tmp_path / "cache", budget_minutes=10, progress=False,
                       baseline="resnet20", accuracy="supernet", supernet_epochs=1)
    res = run_search(cfg)
    assert res.baseline.candidate.key == "resnet20:own-d3-w1|own-d3-w1|own-d3-w1"
    assert res.best is None or res.best.accuracy >= res.baseline.candidate.accuracy
    ck = torch.load(res.out_dir / "best.pt", weights_only=True)
    best = json.loads((res.out_dir / "best.json").read_text())
    assert ck["inherited_supernet_weights"] is True and best["inherited_supernet_weights"] is True
    sn_ckpt = Path(ck["supernet_checkpoint"])
    assert sn_ckpt.parent == tmp_path / "cache" and sn_ckpt.name.startswith("supernet-baseline-")
    assert 0 <= ck["supernet_val_accuracy"] <= 100
    # the chosen network carries the trained supernet's weights (the checkpoint is the cache a rerun loads)
    space = get_space("baseline", baseline="resnet20", num_classes=10, in_channels=3, resolution=8)
    sn = build_supernet(space)
    sn.load_state_dict(torch.load(sn_ckpt, weights_only=True)["model"])
    net = sn.subnet(space.from_string(ck["arch"]))
    assert torch.equal(net.stem[0].weight, ck["state_dict"]["stem.0.weight"])
