"""Every kind builds a valid ONNX graph that onnxruntime runs, with the right shapes."""
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from profiling.builders import build_model, decompose, materialize, output_shapes, weight_fills
from profiling.kernels import ACTIVATIONS, KINDS, KernelSpec
from profiling.networks import FAMILIES, build_network, network_kernels, sample_network
from profiling.onnx_stats import model_stats

SPECS = {
    "conv": [dict(cin=16, cout=32, h=20, w=20, kernel=3, stride=2),
             dict(cin=24, cout=24, h=14, w=14, kernel=5, stride=1, groups=24, act="silu"),
             dict(cin=16, cout=32, h=9, w=9, kernel=3, stride=1, groups=4, bn=False, act="gelu"),
             dict(cin=16, cout=16, h=12, w=12, kernel=1, kernel_w=7, stride=1, act="leakyrelu"),  # Inception 1x7
             dict(cin=16, cout=16, h=12, w=12, kernel=7, kernel_w=1, stride=2, act="prelu"),
             dict(cin=16, cout=16, h=13, w=13, kernel=3, stride=1, dilation=4, act="mish"),      # DeepLab atrous
             dict(cin=16, cout=16, h=9, w=9, kernel=1, stride=1, groups=16, act="tanh"),          # depthwise 1x1
             dict(cin=16, cout=32, h=9, w=9, kernel=1, stride=1, groups=4, act="hardsigmoid")],   # grouped 1x1
    "conv_add": [dict(cin=16, cout=16, h=14, w=14, kernel=1, stride=1, act="none"),
                 dict(cin=8, cout=16, h=15, w=15, kernel=3, stride=2, act="relu6"),
                 dict(cin=8, cout=8, h=15, w=15, kernel=3, kernel_w=1, stride=1, dilation=2, act="leakyrelu")],
    "conv_transpose": [dict(cin=16, cout=8, h=7, w=7, kernel=2, stride=2), dict(cin=8, cout=8, h=5, w=6, kernel=4, stride=2,
                                                                             bn=True, act="relu"),
                       dict(cin=8, cout=4, h=5, w=5, kernel=3, stride=2, act="leakyrelu")],
    "split": [dict(c=12, h=5, w=5, parts=3)],
    "slice": [dict(c=12, h=5, w=5, cout=4)],
    "pad": [dict(c=4, h=6, w=6, pad=1), dict(c=4, h=6, w=6, pad=2, mode="reflect"), dict(c=4, h=6, w=5, pad=3, mode="edge")],
    "reduce": [dict(op="l2", c=8, h=5, w=5), dict(op="mean", c=8, h=5, w=5, axis="hw"), dict(op="sum", c=8, h=1, w=16, axis="last"),
               dict(op="max", c=8, h=5, w=5)],
    "groupnorm": [dict(c=16, h=6, w=6, groups=4), dict(c=8, h=6, w=6, groups=8), dict(c=8, h=6, w=6, groups=1)],
    "einsum": [dict(heads=2, m=17, k=16, n=9)],
    "linear": [dict(tokens=1, cin=64, cout=10, act="hardswish"), dict(tokens=17, cin=32, cout=96, act="gelu")],
    "matmul": [dict(heads=2, m=17, k=16, n=17)],
    "softmax": [dict(heads=2, m=17, n=17)],
    "layernorm": [dict(tokens=17, dim=32)],
    "pool": [dict(op="max", c=8, h=15, w=15, kernel=3, stride=2), dict(op="avg", c=8, h=16, w=16, kernel=2, stride=2)],
    "global_pool": [dict(c=8, h=7, w=7), dict(op="max", c=8, h=5, w=3)],
    "elementwise": [dict(op="mul", c=8, h=7, w=7, broadcast=True), dict(op="add", c=8, h=7, w=7)],
    "activation": [dict(act=a, c=4, h=5, w=5) for a in ACTIVATIONS if a != "none"],
    "concat": [dict(c1=8, c2=4, h=6, w=6), dict(c1=8, c2=13, h=6, w=6, n=4)],
    "reshape": [dict(c=8, h=6, w=5)],
    "transpose": [dict(c=8, h=6, w=5)],
    "channel_shuffle": [dict(c=12, h=5, w=5, groups=3)],
    "resize": [dict(c=4, h=7, w=7, scale=2), dict(c=4, h=5, w=5, scale=4, mode="linear")],
    "mbconv": [dict(cin=16, cout=16, h=14, w=14, expand=4, kernel=5, stride=1, se=True, act="hardswish"),
               dict(cin=16, cout=24, h=14, w=14, expand=1, kernel=3, stride=2)],
    "resnet_basic": [dict(cin=16, cout=32, h=16, w=16, stride=2), dict(cin=16, cout=16, h=8, w=8, stride=1)],
    "resnet_bottleneck": [dict(cin=32, mid=16, cout=64, h=8, w=8, stride=1, groups=4)],
    "se": [dict(c=32, h=7, w=7)],
    "transformer": [dict(tokens=17, dim=32, heads=4, mlp_ratio=2.0)],
}
CASES = [KernelSpec.make(k, **p) for k, ps in SPECS.items() for p in ps]


def _run(model, tmp_path, batch=1):
    path = materialize(model, str(tmp_path))
    onnx.checker.check_model(path, full_check=True)  # with its (random) external weights in place
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.random.default_rng(0).uniform(-1, 1, i.shape).astype(np.float32) for i in sess.get_inputs()}
    return sess.run(None, feeds)


def test_every_kind_is_covered():
    assert set(SPECS) == set(KINDS)


def test_late_parameters_keep_the_keys_of_older_rows():
    # a square, undilated conv hashes as it did before kernel_w and dilation existed, so an older
    # table's config_ids still match; an older row without those columns reads back with defaults
    old = KernelSpec.make("conv", cin=16, cout=32, h=20, w=20, kernel=3, stride=2)
    assert old.key() == "52a49e181874ba4f"  # its key before session 7
    assert old.params["kernel_w"] == 3 and old.params["dilation"] == 1
    row = {"kind": "conv", "cin": 16, "cout": 32, "h": 20, "w": 20, "kernel": 3, "stride": 2, "groups": 1,
           "bn": True, "act": "relu", "kernel_w": float("nan"), "dilation": None}
    assert KernelSpec.from_dict(row) == old
    assert KernelSpec.make("conv", **{**old.params, "kernel_w": 1}).key() != old.key()
    assert KernelSpec.make("concat", c1=8, c2=4, h=6, w=6).key() == KernelSpec.make("concat", c1=8, c2=4, h=6, w=6, n=2).key()


@pytest.mark.parametrize("spec", [KernelSpec.make("conv", cin=16, cout=16, h=12, w=12, kernel=1, kernel_w=7, stride=2),
                                  KernelSpec.make("conv", cin=8, cout=8, h=13, w=11, kernel=3, stride=1, dilation=3),
                                  KernelSpec.make("conv_transpose", cin=8, cout=4, h=5, w=7, kernel=3, stride=2)],
                         ids=["1x7", "dilated", "transpose"])
def test_predictor_stats_follow_the_graph(spec):
    # the batch path's analytic FLOPs/params/output size agree with the built graph's
    from predictors.features import spec_stats
    model = build_model(spec)
    flops, params, _, _, out = spec_stats(spec)
    st = model_stats(model)
    assert flops == pytest.approx(st.flops, rel=0.02)
    assert params == pytest.approx(st.params, rel=0.02, abs=4 * spec.params["cout"])  # BN: 4 vectors, folded to 1
    assert out == pytest.approx(float(np.prod(output_shapes(model)[0])))


@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.kind)
def test_builds_and_runs(spec, tmp_path):
    model = build_model(spec)
    out = _run(model, tmp_path)
    assert list(out[0].shape) == output_shapes(model)[0]
    assert np.isfinite(out[0]).all()


def test_batch_and_expected_shapes(tmp_path):
    spec = KernelSpec.make("conv", cin=8, cout=16, h=15, w=15, kernel=3, stride=2)
    out = _run(build_model(spec, batch=3), tmp_path)
    assert out[0].shape == (3, 16, 8, 8)
    t = KernelSpec.make("transformer", tokens=10, dim=24, heads=3)
    assert _run(build_model(t, batch=2), tmp_path)[0].shape == (2, 10, 24)


def test_weights_are_external_and_building_is_cheap():
    spec = KernelSpec.make("conv", cin=1024, cout=1024, h=7, w=7, kernel=3, stride=1)
    model = build_model(spec)
    assert len(model.SerializeToString()) < 4000  # 9.4M weights, none of them shipped
    fills = {f["fill"] for f in weight_fills(model)}
    assert fills == {"normal", "positive", "small"}  # BN variance and scale positive
    w = next(f for f in weight_fills(model) if f["numel"] == 1024 * 1024 * 9)
    assert w["scale"] == pytest.approx(1 / np.sqrt(1024 * 9))
    t0 = time.perf_counter()
    for s in CASES:
        build_model(s)
    assert (time.perf_counter() - t0) / len(CASES) < 0.02


def test_flops_columns():
    spec = KernelSpec.make("conv", cin=16, cout=32, h=20, w=20, kernel=3, stride=2, bn=False, act="none")
    st = model_stats(build_model(spec))
    macs = 32 * 10 * 10 * 16 * 9
    assert st.flops == 2 * macs + 32 * 10 * 10  # FLOPs = 2 x MACs (+ bias)
    assert st.params == 32 * 16 * 9 + 32
    lin = model_stats(build_model(KernelSpec.make("linear", tokens=1, cin=64, cout=10)))
    assert lin.flops == 2 * 64 * 10 + 10


def test_decompose_blocks_chain_kernels():
    for spec in CASES:
        parts = decompose(spec)
        if spec.category == "kernel":
            assert parts == [spec]
        else:
            assert all(p.category == "kernel" for p in parts) and len(parts) >= 2
    mb = KernelSpec.make("mbconv", cin=16, cout=16, h=14, w=14, expand=4, kernel=5, stride=1, se=True, act="hardswish")
    assert [p.kind for p in decompose(mb)] == ["conv", "conv", "global_pool", "conv", "conv", "elementwise", "conv_add"]
    dw = decompose(mb)[1]
    assert dw.params["groups"] == dw.params["cin"] == 64 and dw.params["kernel"] == 5
    assert decompose(mb)[4].params["act"] == "hardsigmoid"  # SE gate of a hardswish MBConv
    # The decomposition's FLOPs add up to the block's.
    block = model_stats(build_model(mb)).flops
    parts = sum(model_stats(build_model(p)).flops for p in decompose(mb))
    assert parts == pytest.approx(block, rel=0.01)


@pytest.mark.parametrize("family", FAMILIES)
def test_networks_build_and_run(family, tmp_path):
    rng = np.random.default_rng(3)
    spec = sample_network(rng, family, max_flops=3e8)
    assert sample_network(np.random.default_rng(3), family, max_flops=3e8) == spec  # deterministic
    import json
    assert json.loads(json.dumps(spec)) == spec
    model = build_network(spec)
    out = _run(model, tmp_path)
    if family == "fpn":  # a detection neck: a 1x1 head per level, each a graph output
        neck = spec["layers"][-1]
        assert len(out) == len(neck["inputs"]) + 1 and all(o.shape[:2] == (1, neck["head"]) for o in out)
    else:  # classification logits, or a segmentation map of num_classes channels
        assert out[0].shape[:2] == (1, spec["num_classes"])
    assert all(np.isfinite(o).all() for o in out)
    assert len(network_kernels(spec)) >= 5


@pytest.mark.parametrize("opset", [13, 15, 16])
def test_older_opsets_for_older_runtimes(opset, tmp_path):
    for spec in CASES:
        if spec.kind in ("layernorm", "transformer", "activation", "mbconv", "linear"):
            model = build_model(spec, opset=opset)
            assert model.opset_import[0].version == opset
            out = _run(model, tmp_path)
            assert list(out[0].shape) == output_shapes(model)[0] and np.isfinite(out[0]).all()
    from profiling.builders import opset_for_runtime
    assert opset_for_runtime("1.10.0") == 15 and opset_for_runtime("1.11.1") == 16
    assert opset_for_runtime("1.32.0") == 17 and opset_for_runtime("1.6.0") == 13
