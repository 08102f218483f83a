"""The session-7 kernel vocabulary: each kind is detected in real torch exports (not as an unknown
op), the builders' graphs detect back to their own specs, and the generator's new structure families
build graphs that onnxruntime runs."""
from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from predictors.detect import detect_kernels
from profiling.builders import build_model, materialize
from profiling.kernels import KernelSpec
from profiling.networks import build_network, network_kernels, sample_network


class ConvAct(nn.Module):
    def __init__(self, conv, act=None, bn=True):
        super().__init__()
        self.conv, self.bn, self.act = conv, nn.BatchNorm2d(conv.out_channels) if bn else nn.Identity(), act or nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Lambda(nn.Module):
    def __init__(self, fn, **mods):
        super().__init__()
        self.fn = fn
        for k, m in mods.items():
            setattr(self, k, m)

    def forward(self, x):
        return self.fn(self, x)


def _gelu_residual(m, x):  # the GELU's input also feeds a residual Add: the Erf pattern stands alone
    y = m.conv(x)
    return y + F.gelu(y)


def _split_slice_concat(m, x):
    a, b = torch.split(x, 4, dim=1)
    return torch.cat([a, m.conv(b), x[:, :3]], dim=1)


def _einsum(m, x):
    q = x.reshape(1, 2, 16, 4)
    return torch.einsum("bhmk,bhnk->bhmn", q, q * 2.0)


# (module, input shape, expected kind, expected parameters)
CASES = {
    "1x7 conv": (ConvAct(nn.Conv2d(8, 8, (1, 7), padding=(0, 3)), nn.ReLU()), (1, 8, 12, 12), "conv",
                 dict(kernel=1, kernel_w=7, act="relu")),
    "7x1 conv": (ConvAct(nn.Conv2d(8, 16, (7, 1), padding=(3, 0))), (1, 8, 12, 12), "conv", dict(kernel=7, kernel_w=1)),
    "dilated conv": (ConvAct(nn.Conv2d(8, 8, 3, padding=4, dilation=4), nn.ReLU()), (1, 8, 16, 16), "conv",
                     dict(kernel=3, kernel_w=3, dilation=4)),
    "grouped 1x1": (ConvAct(nn.Conv2d(8, 16, 1, groups=4)), (1, 8, 8, 8), "conv", dict(kernel=1, groups=4)),
    "depthwise 1x1": (ConvAct(nn.Conv2d(8, 8, 1, groups=8)), (1, 8, 8, 8), "conv", dict(kernel=1, groups=8)),
    "conv+leakyrelu": (ConvAct(nn.Conv2d(8, 8, 3, padding=1), nn.LeakyReLU(0.1)), (1, 8, 8, 8), "conv",
                       dict(act="leakyrelu")),
    "conv+prelu": (ConvAct(nn.Conv2d(8, 8, 3, padding=1), nn.PReLU(8)), (1, 8, 8, 8), "conv", dict(act="prelu")),
    "conv+mish": (ConvAct(nn.Conv2d(8, 8, 3, padding=1), nn.Mish()), (1, 8, 8, 8), "conv", dict(act="mish")),
    "conv+hardsigmoid": (ConvAct(nn.Conv2d(8, 8, 1), nn.Hardsigmoid()), (1, 8, 8, 8), "conv", dict(act="hardsigmoid")),
    "conv+relu6": (ConvAct(nn.Conv2d(8, 8, 1), nn.ReLU6()), (1, 8, 8, 8), "conv", dict(act="relu6")),
    "conv+tanh": (ConvAct(nn.Conv2d(8, 8, 1), nn.Tanh()), (1, 8, 8, 8), "conv", dict(act="tanh")),
    "leakyrelu alone": (Lambda(lambda m, x: F.leaky_relu(x + 1.0, 0.1)), (1, 8, 8, 8), "activation",
                        dict(act="leakyrelu")),
    "gelu unfused, shared input": (Lambda(_gelu_residual, conv=nn.Conv2d(8, 8, 1)), (1, 8, 6, 6), "activation",
                                   dict(act="gelu")),
    "reflect pad": (Lambda(lambda m, x: F.pad(x, (2, 2, 2, 2), mode="reflect")), (1, 8, 8, 8), "pad",
                    dict(pad=2, mode="reflect")),
    "normalize (ReduceL2)": (Lambda(lambda m, x: F.normalize(x, dim=1)), (1, 8, 6, 6), "reduce",
                             dict(op="l2", axis="c")),
    "instance norm": (nn.InstanceNorm2d(8, affine=True), (1, 8, 6, 6), "groupnorm", dict(groups=8, c=8)),
    "group norm": (nn.GroupNorm(4, 16), (1, 16, 6, 6), "groupnorm", dict(groups=4, c=16, h=6, w=6)),
    "split": (Lambda(_split_slice_concat, conv=nn.Conv2d(4, 4, 1)), (1, 8, 6, 6), "split", dict(parts=2, c=8)),
    "slice": (Lambda(_split_slice_concat, conv=nn.Conv2d(4, 4, 1)), (1, 8, 6, 6), "slice", dict(c=8, cout=3)),
    "concat of 3": (Lambda(_split_slice_concat, conv=nn.Conv2d(4, 4, 1)), (1, 8, 6, 6), "concat", dict(n=3, c1=4, c2=7)),
    "conv transpose": (ConvAct(nn.ConvTranspose2d(16, 8, 2, stride=2), nn.ReLU()), (1, 16, 5, 5), "conv_transpose",
                       dict(cin=16, cout=8, kernel=2, stride=2, bn=True, act="relu")),
    "conv transpose k3": (nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1), (1, 8, 5, 5),
                          "conv_transpose", dict(kernel=3, stride=2)),
    "bilinear upsample": (nn.Upsample(scale_factor=2, mode="bilinear"), (1, 8, 5, 5), "resize", dict(scale=2, mode="linear")),
    "einsum": (Lambda(_einsum), (1, 128), "einsum", dict(heads=2, m=16, k=4, n=16)),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    out = {}
    for name, (module, shape, _, _) in CASES.items():
        p = d / (name.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "_").replace(",", "") + ".onnx")
        torch.onnx.export(module.eval(), torch.randn(*shape), str(p), dynamo=False, opset_version=17)
        out[name] = p
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_torch_exports_detect_as_the_new_kinds(name, exports):
    _, _, kind, params = CASES[name]
    det = detect_kernels(exports[name])
    assert not det.unknown, [(u.op_type, u.name) for u in det.unknown]
    found = [k.spec for k in det.kernels if k.spec.kind == kind]
    assert found, [k.spec.to_dict() for k in det.kernels]
    assert any(all(s.params[p] == v for p, v in params.items()) for s in found), [s.to_dict() for s in found]


def test_a_zero_pad_before_a_conv_is_folded_into_it(tmp_path):
    m = Lambda(lambda m, x: m.conv(F.pad(x, (1, 1, 1, 1))), conv=nn.Conv2d(8, 8, 3))
    p = tmp_path / "padconv.onnx"
    torch.onnx.export(m.eval(), torch.randn(1, 8, 8, 8), str(p), dynamo=False, opset_version=17)
    det = detect_kernels(p)
    assert [k.spec.kind for k in det.kernels] == ["conv"] and not det.unknown and det.folded


NEW_SPECS = [
    KernelSpec.make("conv", cin=16, cout=16, h=12, w=12, kernel=1, kernel_w=7, stride=1, act="leakyrelu"),
    KernelSpec.make("conv", cin=16, cout=16, h=13, w=13, kernel=3, stride=1, dilation=2, act="mish"),
    KernelSpec.make("conv", cin=16, cout=16, h=9, w=9, kernel=1, stride=1, groups=16, act="prelu"),
    KernelSpec.make("conv_add", cin=8, cout=8, h=15, w=15, kernel=3, kernel_w=1, stride=1, act="tanh"),
    KernelSpec.make("conv_transpose", cin=16, cout=8, h=7, w=7, kernel=4, stride=2, bn=True, act="relu"),
    KernelSpec.make("activation", act="mish", c=8, h=5, w=5),
    KernelSpec.make("activation", act="prelu", c=8, h=5, w=5),
    KernelSpec.make("split", c=12, h=5, w=5, parts=3),
    KernelSpec.make("slice", c=12, h=5, w=5, cout=4),
    KernelSpec.make("concat", c1=8, c2=12, h=6, w=6, n=4),
    KernelSpec.make("pad", c=4, h=6, w=6, pad=2, mode="edge"),
    KernelSpec.make("reduce", op="l2", c=8, h=5, w=5),
    KernelSpec.make("reduce", op="max", c=8, h=5, w=5, axis="hw"),
    KernelSpec.make("reduce", op="mean", c=8, h=1, w=32, axis="last"),
    KernelSpec.make("groupnorm", c=16, h=6, w=6, groups=4),
    KernelSpec.make("groupnorm", c=16, h=6, w=6, groups=16),
    KernelSpec.make("einsum", heads=2, m=17, k=16, n=9),
]


@pytest.mark.parametrize("spec", NEW_SPECS, ids=lambda s: s.kind)
def test_the_builders_graphs_detect_back_to_their_spec(spec):
    det = detect_kernels(build_model(spec))
    assert not det.unknown and det.specs() == [spec], [s.to_dict() for s in det.specs()]


def test_shipped_predictors_keep_their_kernel_kind_codes():
    # the pooled kernel model takes a kind's index in KERNEL_KINDS as a feature: new kinds go after
    # the old ones, so a predictor trained before session 7 still reads its kinds' codes right
    from pathlib import Path

    from predictors.features import KERNEL_KINDS
    from predictors.fileformat import read_predictor_header
    shipped = sorted((Path(__file__).resolve().parents[1] / "data" / "predictors").glob("*.lgb"))
    assert shipped
    for path in shipped:
        old = read_predictor_header(path)["feature_schema"]["kernel_kinds"]
        assert list(KERNEL_KINDS[:len(old)]) == list(old), path.name


def test_a_table_without_the_new_kinds_still_names_them_as_kinds():
    # an older table has no rows of the new kinds: the specs are still valid, hashable and
    # featurised (the predictor falls back for a kind it has no model of)
    from predictors.features import spec_features
    for s in NEW_SPECS:
        assert len(spec_features(s)) > 0 and s.key()


NEW_FAMILIES = ("csp", "inception", "repblock", "fpn", "unet", "hybrid", "mixer")


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_new_structure_families_build_run_and_detect(family, tmp_path):
    rng = np.random.default_rng(11)
    spec = sample_network(rng, family, max_flops=4e8)
    assert spec["family"] == family
    model = build_network(spec)
    path = materialize(model, str(tmp_path))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(sess.get_inputs()[0].shape).astype(np.float32)
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert np.isfinite(out).all()
    det = detect_kernels(model)
    assert not det.unknown, [(u.op_type, u.name) for u in det.unknown]
    # the compute kernels agree with the generator's own list (layout kernels and the transformer's
    # scale/residual elementwise ops are counted differently, see test_graph_detect)
    layout = ("reshape", "transpose", "elementwise")
    assert Counter(s for s in det.specs() if s.kind not in layout) == \
        Counter(s for s in network_kernels(spec) if s.kind not in layout)


def test_a_conv_dilated_beyond_its_map_reads_one_tap_in_nine_and_the_features_say_so():
    # DeepLab's ASPP on a 14x14 map, dilation 12 and 36: the kernel models see the share of taps
    # inside the map (its FLOPs count every tap, so without it the dilation is invisible to them)
    from predictors.features import KERNEL_FEATURES, spec_features, tap_share
    col = KERNEL_FEATURES.index("tap_share")
    aspp36 = KernelSpec.make("conv", cin=64, cout=32, h=14, w=14, kernel=3, stride=1, dilation=36)
    aspp12 = KernelSpec.make("conv", cin=64, cout=32, h=14, w=14, kernel=3, stride=1, dilation=12)
    plain = KernelSpec.make("conv", cin=64, cout=32, h=14, w=14, kernel=3, stride=1)
    assert tap_share(aspp36.params) == pytest.approx(1 / 9)
    assert 1 / 9 < tap_share(aspp12.params) < 0.25 < tap_share(plain.params) < 1.0
    assert tap_share(KernelSpec.make("conv", cin=8, cout=8, h=9, w=9, kernel=1, stride=1).params) == 1.0
    assert spec_features(aspp36)[col] < spec_features(plain)[col]
    det = detect_kernels(build_model(aspp36))
    assert det.specs() == [aspp36]


def test_shipped_predictors_read_the_kernel_features_they_were_trained_on():
    # kernel features are only appended: a predictor file of an older hwnas names a prefix of them,
    # loads, and its pooled model reads its `kind` code where it was trained to
    from pathlib import Path

    from predictors import Predictor
    from predictors.features import KERNEL_FEATURES
    from predictors.fileformat import read_predictor_header
    paths = sorted((Path(__file__).resolve().parents[1] / "data" / "predictors").glob("local-cpu__*.lgb"))
    schemas = {p: read_predictor_header(p)["feature_schema"]["kernel_features"] for p in paths}
    for schema in schemas.values():
        assert list(KERNEL_FEATURES[:len(schema)]) == list(schema)
    # the oldest file (fewest features; by name on a tie) is the one that tests reading an older hwnas's
    path = min(paths, key=lambda p: (len(schemas[p]), p.name))
    old = schemas[path]
    p = Predictor.load(path)
    assert p.kernels.n_features == len(old)
    # a kind without its own model goes through the pooled model
    spec = KernelSpec.make("conv", cin=32, cout=32, h=14, w=14, kernel=3, stride=1, dilation=2)
    pooled_only = next(k for k in ("einsum", "groupnorm", "reduce", "pad", "slice", "split") if k not in p.kernels.models)
    other = {"einsum": dict(heads=2, m=16, k=8, n=16), "groupnorm": dict(c=32, h=8, w=8, groups=8),
             "reduce": dict(op="mean", c=32, h=8, w=8), "pad": dict(c=8, h=8, w=8, pad=1),
             "slice": dict(c=16, h=8, w=8, cout=8), "split": dict(c=16, h=8, w=8, parts=2)}[pooled_only]
    ms, lo, hi = p.kernels.predict([spec, KernelSpec.make(pooled_only, **other)], 1)
    assert np.isfinite(ms).all() and (ms > 0).all() and (lo <= ms).all() and (ms <= hi).all()
