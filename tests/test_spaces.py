"""Search spaces: genetic operators, representations, networks, ONNX export and kernel specs."""
from __future__ import annotations

import collections
import itertools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from search.spaces import SpaceError, get_space
from search.spaces.mbv3 import mbconv_specs
from search.spaces.nb201 import OPS, NB201Space, cell_plan
from search.spaces.resnet import bottleneck_specs

torch.set_num_threads(1)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NB201_CSV = SHARED / "nb201" / "nb201_cifar10.csv"
ZC_CSV = SHARED / "nb201" / "nb201_zc_proxies_cifar10.csv"

SMALL = {
    "nb201": dict(C=4, N=1, resolution=16),
    "mbv3": dict(resolutions=(16, 24), width_mult=0.35, num_classes=10),
    "resnet": dict(resolutions=(16, 24), base_widths=(16, 32, 64), stage_strides=(1, 2, 2), stem_stride=1,
                   stem_channels=8, num_classes=10),
}


@pytest.fixture(params=list(SMALL))
def space(request):
    return get_space(request.param, **SMALL[request.param])


def test_registry_and_unknown_space():
    assert get_space("nb201").name == "nb201"
    assert get_space("mbv3").name == "mbv3"
    assert get_space("resnet").name == "resnet"
    with pytest.raises(SpaceError, match="unknown search space"):
        get_space("vit")


def test_genetic_operators_and_representations(space):
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(30)]
    assert space.sample(5) == space.sample(5)  # deterministic given the seed
    assert len({space.to_string(a) for a in archs}) > 20  # really random
    for a, b in zip(archs, archs[1:]):
        m = space.mutate(a, rng)
        assert m != a
        assert space.from_string(space.to_string(m)) == m
        c = space.crossover(a, b, rng)
        ga, gb, gc = space.encode(a), space.encode(b), space.encode(c)
        # each gene of the child comes from a parent, up to canonicalisation of inactive slots
        assert np.all((gc == ga) | (gc == gb) | (gc == 0) | (ga == 0) | (gb == 0))
        v = space.encode(a)
        assert v.shape == (space.encoding_size,) and v.dtype == np.float32
        assert space.decode(v) == a
        assert space.from_string(space.to_string(a)) == a
    assert space.encode_batch(archs).shape == (30, space.encoding_size)
    with pytest.raises(SpaceError):
        space.from_string("|garbage|")
    with pytest.raises(SpaceError):
        space.decode(np.zeros(space.encoding_size + 1))


def test_nb201_strings_encoding_and_enumeration():
    sp = NB201Space()
    s = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    a = sp.from_string(s)
    assert a == ("nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "skip_connect")
    assert sp.to_string(a) == s
    enc = sp.encode(a).reshape(6, 5)
    assert enc.sum() == 6 and enc[0, OPS.index("nor_conv_3x3")] == 1
    with pytest.raises(SpaceError):
        sp.from_string(s.replace("nor_conv_3x3", "conv_5x5"))
    archs = sp.all_archs()
    assert len(archs) == 15625 == len(set(archs))
    assert sum(sp.is_fully_reachable(x) for x in archs) == 9445  # NAS-Bench-Suite-Zero's cell count


def test_nb201_cell_plan_prunes_none_and_unreachable_nodes():
    # node 1 is computed but only leaves through 'none': it must not be computed at all
    p = cell_plan(("nor_conv_3x3", "none", "none", "skip_connect", "none", "none"))
    assert p.nodes == ((3, ((0, "skip_connect"),)),) and not p.zero
    # node 3 receives only zeros: the whole cell is zero
    p = cell_plan(("nor_conv_1x1", "nor_conv_1x1", "none", "none", "none", "none"))
    assert p.zero
    # node 2 is zero (its only input is 'none'), so the edge 2->3 vanishes too
    p = cell_plan(("skip_connect", "none", "none", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"))
    assert p.nodes == ((1, ((0, "skip_connect"),)), (3, ((0, "nor_conv_1x1"), (1, "nor_conv_3x3"))))


def test_nb201_zero_cell_network_and_dead_nodes_in_modules():
    sp = get_space("nb201", C=4, N=1, resolution=8)
    net = sp.build(("nor_conv_1x1", "nor_conv_1x1", "none", "none", "none", "none")).eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.all(net.cells[0](net.stem(x)) == 0)
    dead = sp.build(("nor_conv_3x3", "none", "none", "skip_connect", "none", "none"))
    assert len(list(dead.cells[0].parameters())) == 0  # the dead 3x3 conv is not even built


def test_nb201_parameter_count_of_the_largest_cell():
    # NAS-Bench-201 reports 1.531546 M parameters for the all-3x3 CIFAR-10 network
    net = NB201Space().build(("nor_conv_3x3",) * 6)
    assert sum(p.numel() for p in net.parameters()) == 1531546


@pytest.mark.skipif(not ZC_CSV.exists(), reason="../shared reference data is absent")
def test_nb201_parameters_match_the_reference_table():
    import pandas as pd
    ref = pd.read_csv(ZC_CSV, usecols=["arch", "params"]).sample(25, random_state=3)
    sp = NB201Space()
    for arch, params in zip(ref["arch"], ref["params"]):
        n = sum(p.numel() for p in sp.build(sp.from_string(arch)).parameters())
        assert abs(n / 1e6 - params) < 1e-5, arch


def _expected_onnx_ops(specs) -> collections.Counter:
    """The ONNX node types a list of kernel specs stands for, before runtime fusion."""
    act_op = {"relu": "Relu", "hardswish": "HardSwish", "hardsigmoid": "HardSigmoid", "sigmoid": "Sigmoid"}
    c: collections.Counter = collections.Counter()
    for s in specs:
        p = s.params
        if s.kind in ("conv", "conv_add"):
            c["Conv"] += 1
            if s.kind == "conv_add":
                c["Add"] += 1
            if p["act"] != "none":
                c[act_op[p["act"]]] += 1
        elif s.kind == "activation":
            c[act_op[p["act"]]] += 1
        elif s.kind == "pool":
            c["AveragePool" if p["op"] == "avg" else "MaxPool"] += 1
        elif s.kind == "global_pool":
            c["GlobalAveragePool"] += 1
        elif s.kind == "elementwise":
            c["Add" if p["op"] == "add" else "Mul"] += 1
        elif s.kind == "reshape":
            c["Flatten"] += 1
        elif s.kind == "linear":
            c["Gemm"] += 1
        else:
            raise AssertionError(f"unexpected kind {s.kind}")
    return c


def _onnx_ops(data: bytes) -> collections.Counter:
    g = onnx.load_from_string(data).graph
    return collections.Counter(n.op_type for n in g.node if n.op_type not in ("Identity", "Constant"))


NB201_CASES = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    "|avg_pool_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|avg_pool_3x3~0|avg_pool_3x3~1|nor_conv_1x1~2|",
    "|nor_conv_1x1~0|+|nor_conv_1x1~0|none~1|+|none~0|none~1|none~2|",  # an all-zero cell
    "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|",  # a dead node
]


@pytest.mark.parametrize("arch", NB201_CASES)
def test_nb201_kernel_specs_match_the_exported_graph(arch, tmp_path):
    sp = get_space("nb201", C=4, N=2, resolution=16)
    a = sp.from_string(arch)
    data = sp.export_onnx(a, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == data
    assert _onnx_ops(data) == _expected_onnx_ops(sp.kernel_specs(a))


def test_kernel_specs_match_the_exported_graph_for_elastic_spaces():
    rng = np.random.default_rng(1)
    for name in ("mbv3", "resnet"):
        sp = get_space(name, **SMALL[name])
        for a in (sp.largest(), sp.smallest(), sp.sample(rng)):
            assert _onnx_ops(sp.export_onnx(a)) == _expected_onnx_ops(sp.kernel_specs(a)), (name, sp.to_string(a))


def test_kernel_spec_shapes_follow_the_network():
    sp = NB201Space()
    specs = sp.kernel_specs(sp.from_string(NB201_CASES[0]))
    assert specs[0].to_dict() == {"kind": "conv", "cin": 3, "cout": 16, "h": 32, "w": 32, "kernel": 3, "stride": 1,
                                  "groups": 1, "bn": True, "act": "none", "kernel_w": 3, "dilation": 1}
    assert specs[-1].to_dict() == {"kind": "linear", "tokens": 1, "cin": 64, "cout": 10, "act": "none", "bias": True}
    adds = [s for s in specs if s.kind == "conv_add"]
    assert [(s.params["cin"], s.params["h"]) for s in adds] == [(32, 16), (64, 8)]
    assert {s.params["h"] for s in specs if s.kind == "activation"} == {32, 16, 8}
    # elastic spaces: input sizes shrink with the strides of the built network
    mb = get_space("mbv3")
    a = mb.largest()
    convs = [s for s in mb.kernel_specs(a) if s.kind in ("conv", "conv_add")]
    assert convs[0].params["h"] == 224 and convs[0].params["stride"] == 2
    assert convs[-1].params["cin"] == 960 and convs[-1].params["h"] == 1  # the feature-mix conv on 1x1


def test_fast_kernel_spec_path_equals_the_block_walk():
    rng = np.random.default_rng(2)
    mb = get_space("mbv3")
    rn = get_space("resnet")
    for _ in range(20):
        a = mb.sample(rng)
        blocks = mb.block_configs(a)
        inner = list(itertools.chain.from_iterable(mbconv_specs(b) for b in blocks))
        specs = mb.kernel_specs(a)
        assert specs[1:1 + len(inner)] == inner
        b = rn.sample(rng)
        inner = list(itertools.chain.from_iterable(bottleneck_specs(c) for c in rn.block_configs(b)))
        specs = rn.kernel_specs(b)
        assert specs[1:1 + len(inner)] == inner
    with pytest.raises(SpaceError):
        mb.kernel_specs(type(mb.largest())(999, (2,) * 5, (3,) * 20, (3,) * 20))


def test_build_forward_and_onnx_runtime_agree(space):
    a = space.sample(3)
    net = space.build(a).eval()
    c, h, w = space.input_shape(a)
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, space.num_classes) and torch.isfinite(y).all()
    sess = ort.InferenceSession(space.export_onnx(a, batch=2, model=net), providers=["CPUExecutionProvider"])
    (yo,) = sess.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(yo, y.numpy(), rtol=1e-3, atol=1e-4)
    assert net.training is False  # export_onnx restores the mode it found


def test_invalid_archs_are_refused():
    mb = get_space("mbv3")
    a = mb.largest()
    with pytest.raises(SpaceError):
        mb.make(a.resolution, (5,) * 5, a.kernels, a.expands)
    with pytest.raises(SpaceError):
        mb.from_string("mbv3:r=224:d=2,2:k=3:e=3")
    rn = get_space("resnet")
    with pytest.raises(SpaceError):
        rn.make(224, (2, 2, 2, 2), (0.5,) * 4, (0.2,) * 16)
    with pytest.raises(SpaceError):
        NB201Space().validate(("none",) * 5)
