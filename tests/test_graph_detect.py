"""Graph IR and kernel detection on real ONNX graphs (onnx.helper and torch exports), checked
against onnxruntime's own optimizer."""
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from predictors.detect import compare_with_ort, detect_kernels, ort_kernel_timings
from predictors.graph import GraphError, load_graph


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw, self.b3 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.ln = nn.LayerNorm(32)
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 32)
        self.att = nn.MultiheadAttention(32, 2, batch_first=True)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(y)) + y)
        y = nn.functional.hardswish(self.b3(self.dw(y)))
        y = nn.functional.relu6(self.pw(y))
        y = y * torch.sigmoid(y)
        t = self.ln(y.flatten(2).transpose(1, 2))
        t = t + self.att(t, t, t, need_weights=False)[0]
        t = self.fc2(nn.functional.gelu(self.fc1(t)))
        return t.mean(1)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    paths = {}
    for opset in (14, 17, 21):
        p = d / f"tiny{opset}.onnx"
        torch.onnx.export(Tiny().eval(), torch.randn(1, 3, 8, 8), str(p), dynamo=False, opset_version=opset,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
        paths[opset] = p
    return paths


def _conv_relu_model(opset: int, dynamic_batch=True):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N" if dynamic_batch else 1, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [11, 21])
def test_opsets_11_and_21_load_with_the_targets_batch(opset):
    g = load_graph(_conv_relu_model(opset), batch=4)
    assert g.opset == opset
    assert g.shape("x") == (4, 3, 16, 16)
    assert g.shape("r") == (4, 8, 16, 16)
    det = detect_kernels(g, batch=4)
    kinds = [k.spec.kind for k in det.kernels]
    assert kinds == ["conv", "global_pool", "reshape"]
    conv = det.kernels[0].spec.params
    assert (conv["cin"], conv["cout"], conv["h"], conv["kernel"], conv["act"]) == (3, 8, 16, 3, "relu")


def test_dynamic_spatial_dims_and_garbage_fail_clearly(tmp_path):
    m = _conv_relu_model(17)
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(GraphError, match="dynamic dimension 'H'"):
        load_graph(m)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(GraphError, match="not a readable ONNX model"):
        load_graph(bad)
    with pytest.raises(GraphError, match="does not exist"):
        load_graph(tmp_path / "missing.onnx")


@pytest.mark.parametrize("opset", [14, 17, 21])
def test_torch_export_fusions_follow_the_design_conventions(tiny_onnx, opset):
    det = detect_kernels(tiny_onnx[opset])
    by_kind = Counter(k.spec.kind for k in det.kernels)
    assert by_kind["conv"] == 3 and by_kind["conv_add"] == 1
    acts = sorted(k.spec.params["act"] for k in det.kernels if k.spec.kind in ("conv", "conv_add"))
    assert acts == ["hardswish", "relu", "relu", "relu6"]
    assert any(k.spec.kind == "activation" and k.spec.params["act"] == "silu" for k in det.kernels)
    assert by_kind["layernorm"] == 1  # a LayerNormalization op, or the opset-14 decomposition
    assert by_kind["softmax"] == 1 and by_kind["matmul"] == 2
    gelu = [k for k in det.kernels if k.spec.kind == "linear" and k.spec.params["act"] == "gelu"]
    assert len(gelu) == 1 and gelu[0].spec.params["tokens"] == 64
    # every node is accounted for: in a kernel, folded at load, or reported as unknown
    n_nodes = len(onnx.load(str(tiny_onnx[opset])).graph.node)
    assert sum(len(k.nodes) for k in det.kernels) + len(det.folded) + len(det.unknown) == n_nodes
    assert all(u.bytes > 0 for u in det.unknown)


def test_conv_fusions_agree_with_onnxruntimes_optimized_model(tiny_onnx, tmp_path):
    rep = compare_with_ort(tiny_onnx[17], optimized_path=str(tmp_path / "opt.onnx"))
    assert (tmp_path / "opt.onnx").exists()
    assert rep.conv_only_ours == {} and rep.conv_only_ort == {}
    assert rep.kernels > 10


def test_ort_per_node_profiler_attributes_time_to_kernels(tiny_onnx):
    det, times, unclaimed = ort_kernel_timings(tiny_onnx[17], runs=5)
    assert len(times) == len(det.kernels)
    conv_time = sum(t for k, t in zip(det.kernels, times) if k.spec.kind in ("conv", "conv_add"))
    assert conv_time > 0
    # fc1/fc2 run on [1, tokens, dim]: ORT rewrites each MatMul+Add as Reshape-Gemm-Reshape with
    # new tensor names; the Gemm's time still goes to its linear kernel, not to "unclaimed"
    linears = [t for k, t in zip(det.kernels, times) if k.spec.kind == "linear" and k.spec.params["tokens"] > 1]
    assert len(linears) >= 2 and all(t > 0 for t in linears)
    assert 0 <= unclaimed < 0.1 * sum(times)


def test_detection_of_builder_networks_matches_their_kernel_lists():
    from profiling.networks import build_network, network_kernels, sample_network
    rng = np.random.default_rng(3)
    for family in ("mobilenet", "resnet", "regnet"):
        spec = sample_network(rng, family)
        det = detect_kernels(build_network(spec))
        assert not det.unknown, [u.op_type for u in det.unknown]
        assert Counter(det.specs()) == Counter(network_kernels(spec)), family
        if family == "regnet":  # a fixed group width, so group counts follow the stage widths
            grouped = [k for k in network_kernels(spec) if k.kind == "conv" and k.params["kernel"] == 3
                       and k.params["groups"] > 1]
            assert grouped and len({k.params["cin"] // k.params["groups"] for k in grouped}) == 1
    # transformers: the compute kernels agree; the builders' q/k/v Split is a layout (`reshape`-like)
    # kernel, and the K transpose that ORT folds into its FusedMatMul is listed by the builders
    spec = sample_network(rng, "vit")
    det = detect_kernels(build_network(spec))
    heavy = ("conv", "linear", "matmul", "softmax", "layernorm")
    assert Counter(s for s in det.specs() if s.kind in heavy) == \
        Counter(s for s in network_kernels(spec) if s.kind in heavy)
    assert not det.unknown, [u.op_type for u in det.unknown]
    assert any(k.ops == ["Split"] and k.spec.kind == "reshape" for k in det.kernels)


@pytest.mark.parametrize("family,index", [("shufflenetv2", 1), ("deit", 3), ("mobilenetv3", 3), ("densenet", 3),
                                          ("convnext", 1), ("regnet", 2), ("efficientnet", 3)])
def test_reference_models_have_no_unknown_ops(family, index, tmp_path):
    """The benchmark's plain-torch reference families (Split/Slice/Gather for q/k/v, ShuffleNet's channel
    split, class tokens) map entirely onto the kernel vocabulary; exported at a small resolution."""
    from scripts.reference_models import DeiT, export, reference_models
    name, ctor, _ = reference_models()[family][index]
    if family == "deit":  # position embeddings are sized for the resolution
        ctor = lambda: DeiT(384, 8, 6, res=64)  # noqa: E731
    path = tmp_path / f"{name}.onnx"
    export(ctor, 64, str(path))
    det = detect_kernels(str(path))
    assert not det.unknown, [(u.op_type, u.name) for u in det.unknown]
    kinds = Counter(k.spec.kind for k in det.kernels)
    assert kinds["conv"] + kinds["conv_add"] + kinds["linear"] > 5
    if family == "shufflenetv2":
        assert kinds["channel_shuffle"] >= 10 and kinds["slice"] >= 10  # the channel split: Slice
    if family == "deit":
        assert kinds["matmul"] >= 2 * 8 and kinds["softmax"] == 8


def test_models_with_external_data_and_empty_files_load_from_the_memory_map(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 32, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").exists()
    det = detect_kernels(str(tmp_path / "ext.onnx"))
    assert [k.spec.kind for k in det.kernels] == ["conv"] and det.kernels[0].spec.params["act"] == "relu"
    gr = load_graph(str(tmp_path / "ext.onnx"))
    assert numpy_helper.to_array(gr.initializers["w"]).shape == (64, 32, 3, 3)  # the data was loaded
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(GraphError, match="not a readable ONNX model"):
        load_graph(str(tmp_path / "empty.onnx"))


def _cpu_has(flag: str) -> bool:
    try:
        return flag in open("/proc/cpuinfo").read().split()
    except OSError:
        return False


@pytest.mark.skipif(not (_cpu_has("avx512f") or _cpu_has("avx2")), reason="onnxruntime's NCHWc layout is x86's (AVX2, AVX-512)")
def test_layout_break_feature_matches_onnxruntimes_nchwc_choice(tmp_path):
    """`features.layout_break` says which convs onnxruntime leaves outside NCHWc on this machine (its block of
    16 channels on AVX-512, 8 on AVX2, from the fingerprint's CPU flags); ORT's optimized graph agrees."""
    import onnxruntime as ort
    from predictors.features import layout_break, nchwc_block
    from profiling.fingerprint import local_fingerprint
    from profiling.targets import get_target
    block = nchwc_block(local_fingerprint(get_target("local-cpu")))
    assert block == (16 if _cpu_has("avx512f") else 8)
    from profiling.builders import build_model, materialize
    from profiling.kernels import KernelSpec
    cases = [(24, 24, 3), (56, 56, 7), (48, 48, 3), (64, 64, 2), (96, 96, 4), (24, 24, 24), (40, 40, 40),
             (24, 48, 1), (20, 32, 1), (3, 32, 1), (96, 192, 6),
             (58, 58, 1), (58, 58, 58), (22, 64, 1), (15, 32, 1), (18, 32, 1), (60, 60, 60), (10, 10, 10),
             (116, 116, 1), (32, 22, 1)]
    for i, (cin, cout, g) in enumerate(cases):
        spec = KernelSpec.from_dict(dict(kind="conv", cin=cin, cout=cout, h=14, w=14, kernel=3, stride=1, groups=g,
                                         bn=True, act="relu"))
        d = tmp_path / str(i)
        d.mkdir()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(d / "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(materialize(build_model(spec, 1), str(d)), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(str(d / "opt.onnx"), load_external_data=False)
        nchwc = any(n.op_type == "Conv" and "nchwc" in n.domain for n in opt.graph.node)
        assert layout_break(spec, block) == (not nchwc), (cin, cout, g, block)


def test_torch_attention_transposes_match_what_onnxruntime_runs(tmp_path):
    """torch's exported attention writes 8 Transposes per layer; onnxruntime folds the per-head
    ones into FusedMatMul (transBatch) and turns the size-1 ones into copies of a view. The detector
    lists as `transpose` kernels exactly the data-moving Transposes left in ORT's optimized graph."""
    import onnxruntime as ort
    layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    path = tmp_path / "enc.onnx"
    torch.onnx.export(model, torch.randn(1, 20, 32), str(path), dynamo=False, opset_version=17)
    det = detect_kernels(str(path))
    ours = sum(k.spec.kind == "transpose" for k in det.kernels)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    g = load_graph(str(path))  # ORT keeps the Transposes' tensor names: their shapes from the export
    moving = 0
    for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node:
        if n.op_type == "Transpose":
            shape, perm = g.shape(n.input[0]), list(g.attr(n, "perm"))
            big = [a for a in range(len(shape)) if shape[a] != 1]
            moving += [a for a in perm if shape[a] != 1] != big
    n_torch = sum(n.op_type == "Transpose" for n in onnx.load(str(path)).graph.node)
    assert ours == moving and n_torch > 2 * ours
    # every node is still accounted for
    assert sum(len(k.nodes) for k in det.kernels) + len(det.folded) + len(det.unknown) == \
        len(onnx.load(str(path)).graph.node)


def test_hybrid_generator_only_draws_group_counts_that_divide_the_channels():
    # a 48-channel stem drawn with 32 GroupNorm groups once stopped a 20-minute profile
    from profiling.networks import build_network, sample_network
    rng = np.random.default_rng(0)
    for _ in range(20):
        spec = sample_network(rng, "hybrid")
        stem, norm = spec["layers"][0], spec["layers"][1]
        assert norm["op"] == "groupnorm" and stem["cout"] % norm["groups"] == 0
        build_network(spec)
