"""Features of kernel specs and of whole candidate networks.

One code path for profiled and detected kernels: a table row is turned back into its
`KernelSpec` (`KernelSpec.from_dict`) and a detected kernel already is one, and both go
through `spec_features(spec, batch)`, cached by `spec.key()`-equivalent tuples. FLOPs,
parameters and bytes follow `profiling.onnx_stats` (FLOPs = 2 x MACs, bytes = inputs +
weights + outputs in fp32) but are computed from the spec's parameters, so the batch path
needs no ONNX graph; `tests/test_predictor.py` checks them against `model_stats` of the
profiling builders' graphs.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

from profiling.kernels import ACTIVATIONS, KINDS, KernelSpec

NUMERIC_PARAMS = ("cin", "cout", "h", "w", "kernel", "stride", "groups", "tokens", "heads", "m", "k", "n",
                  "dim", "c", "c1", "c2", "scale")
CATEGORICAL = {"act": ACTIVATIONS, "op": ("max", "avg", "add", "mul"), "mode": ("nearest", "linear")}
FLAGS = ("bias", "broadcast")  # not bn: onnxruntime folds BatchNormalization into the conv
DERIVED = ("log_flops", "log_bytes", "log_params", "intensity", "log_in", "log_out", "log_out_hw",
           "depthwise", "cin_per_group", "log_macs_per_out",
           # vectorisation and memory layout: widths that are multiples of 4/8/16 (0..3), im2col size,
           # spatial size and a log-width view the linear baseline can use
           "cin_vec", "cout_vec", "log_im2col", "log_hw", "log_cin", "log_cout", "log_weight_bytes",
           # session 9, appended (older predictor files read the features before it): the share of a
           # conv's taps that fall inside its input, not in the padding (a 3x3 conv dilated at or
           # beyond its map multiplies its centre tap only; onnxruntime skips the rest)
           "tap_share")
# features a per-kind robust linear baseline uses (finite for every kind)
LINEAR_FEATURES = ("log_flops", "log_bytes", "log_in", "log_out", "log_params", "log_macs_per_out", "log_hw",
                   "log_cin", "log_cout")
KERNEL_FEATURES: tuple[str, ...] = (*NUMERIC_PARAMS, *CATEGORICAL, *FLAGS, *DERIVED)
KERNEL_KINDS = tuple(k for k, s in KINDS.items() if s.category == "kernel")

# Coarse groups of kernels: the graph model's and the adapter's features sum per group.
GROUPS = ("conv1x1", "convkxk", "dwconv", "linear", "attention", "norm", "memory", "pool", "unknown")


def conv_out(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    return (size + 2 * dilation * (kernel // 2) - dilation * (kernel - 1) - 1) // stride + 1


def _conv_out_hw(p: Mapping[str, Any]) -> tuple[int, int]:
    """Output (h, w) of a conv spec: "same" padding per axis, dilated (older specs: square, 1)."""
    kw, d = p.get("kernel_w", p["kernel"]), p.get("dilation", 1)
    return conv_out(p["h"], p["kernel"], p["stride"], d), conv_out(p["w"], kw, p["stride"], d)


def _taps_inside(size: int, kernel: int, stride: int, dilation: int) -> int:
    """How many (output position, tap) pairs of one axis of a "same"-padded conv read the input."""
    pad = dilation * (kernel // 2)
    n_out = conv_out(size, kernel, stride, dilation)
    return sum(1 for o in range(n_out) for j in range(kernel) if 0 <= o * stride - pad + j * dilation < size)


def tap_share(p: Mapping[str, Any]) -> float:
    """The share of a conv spec's multiply-adds whose input lies inside the map (1.0: no padding read)."""
    kw, d = p.get("kernel_w", p["kernel"]), p.get("dilation", 1)
    oh, ow = _conv_out_hw(p)
    total = p["kernel"] * kw * oh * ow
    if total <= 0:
        return 1.0
    return float(_taps_inside(p["h"], p["kernel"], p["stride"], d) * _taps_inside(p["w"], kw, p["stride"], d) / total)


def spec_group(spec: KernelSpec) -> str:
    k, p = spec.kind, spec.params
    if k in ("conv", "conv_add"):
        if p["groups"] > 1 and p["groups"] == p["cin"]:
            return "dwconv"
        return "conv1x1" if p["kernel"] == 1 and p.get("kernel_w", 1) == 1 else "convkxk"
    if k == "conv_transpose":
        return "convkxk"
    if k == "linear":
        return "linear"
    if k in ("matmul", "softmax", "einsum"):
        return "attention"
    if k in ("layernorm", "groupnorm"):
        return "norm"
    if k in ("pool", "global_pool"):
        return "pool"
    return "memory"


def spec_stats(spec: KernelSpec, batch: int = 1) -> tuple[float, float, float, float, float]:
    """(flops, params, bytes, input elements, output elements) of one kernel spec."""
    k, p = spec.kind, spec.params
    if k in ("conv", "conv_add"):
        oh, ow = _conv_out_hw(p)
        area = p["kernel"] * p.get("kernel_w", p["kernel"])
        out = batch * p["cout"] * oh * ow
        inp = batch * p["cin"] * p["h"] * p["w"]
        wparams = p["cout"] * (p["cin"] // p["groups"]) * area
        params = wparams + (p["cout"] if p["bn"] else 0)
        flops = 2.0 * out * (p["cin"] // p["groups"]) * area + (out if p["bn"] else 0)
        if k == "conv_add":
            inp += out
            flops += out
        flops += out * _ACT_COST.get(p["act"], 0)
    elif k == "conv_transpose":
        inp = batch * p["cin"] * p["h"] * p["w"]
        out = batch * p["cout"] * p["h"] * p["stride"] * p["w"] * p["stride"]
        params = p["cin"] * (p["cout"] // p["groups"]) * p["kernel"] ** 2 + p["cout"]
        flops = 2.0 * inp * (p["cout"] // p["groups"]) * p["kernel"] ** 2 + out * (1 + _ACT_COST.get(p["act"], 0))
    elif k in ("split", "slice"):
        inp = batch * p["c"] * p["h"] * p["w"]
        out = inp if k == "split" else batch * p["cout"] * p["h"] * p["w"]
        params, flops = 0, 0.0
    elif k == "pad":
        inp = batch * p["c"] * p["h"] * p["w"]
        out = batch * p["c"] * (p["h"] + 2 * p["pad"]) * (p["w"] + 2 * p["pad"])
        params, flops = 0, 0.0
    elif k == "reduce":
        inp = batch * p["c"] * p["h"] * p["w"]
        out = inp // {"c": p["c"], "hw": p["h"] * p["w"], "last": p["w"]}[p["axis"]]
        params, flops = 0, float(inp)
    elif k == "groupnorm":
        inp = out = batch * p["c"] * p["h"] * p["w"]
        params, flops = 2 * p["c"], (8.0 if p["groups"] == p["c"] else 10.0) * out
    elif k == "einsum":
        inp = batch * p["heads"] * (p["m"] * p["k"] + p["n"] * p["k"])
        out = batch * p["heads"] * p["m"] * p["n"]
        params, flops = 0, 2.0 * out * p["k"]
    elif k == "linear":
        rows = batch * p["tokens"]
        inp, out = rows * p["cin"], rows * p["cout"]
        params = p["cin"] * p["cout"] + (p["cout"] if p["bias"] else 0)
        flops = 2.0 * out * p["cin"] + (out if p["bias"] else 0) + out * _ACT_COST.get(p["act"], 0)
    elif k == "matmul":
        inp = batch * p["heads"] * (p["m"] * p["k"] + p["k"] * p["n"])
        out = batch * p["heads"] * p["m"] * p["n"]
        params, flops = 0, 2.0 * out * p["k"]
    elif k == "softmax":
        inp = out = batch * p["heads"] * p["m"] * p["n"]
        params, flops = 0, 5.0 * out
    elif k == "layernorm":
        inp = out = batch * p["tokens"] * p["dim"]
        params, flops = 2 * p["dim"], 8.0 * out
    elif k == "pool":
        oh, ow = conv_out(p["h"], p["kernel"], p["stride"]), conv_out(p["w"], p["kernel"], p["stride"])
        inp, out = batch * p["c"] * p["h"] * p["w"], batch * p["c"] * oh * ow
        params, flops = 0, float(out * p["kernel"] ** 2)
    elif k == "global_pool":
        inp, out = batch * p["c"] * p["h"] * p["w"], batch * p["c"]
        params, flops = 0, float(inp)
    elif k == "elementwise":
        out = batch * p["c"] * p["h"] * p["w"]
        inp = out + (batch * p["c"] if p["broadcast"] else out)
        params, flops = 0, float(out)
    elif k == "activation":
        inp = out = batch * p["c"] * p["h"] * p["w"]
        params, flops = (p["c"] if p["act"] == "prelu" else 0), float(out * max(1, _ACT_COST.get(p["act"], 1)))
    elif k == "concat":
        inp = out = batch * (p["c1"] + p["c2"]) * p["h"] * p["w"]
        params, flops = 0, 0.0
    elif k in ("reshape", "transpose", "channel_shuffle"):
        inp = out = batch * p["c"] * p["h"] * p["w"]
        params, flops = 0, 0.0
    elif k == "resize":
        inp = batch * p["c"] * p["h"] * p["w"]
        out = inp * p["scale"] ** 2
        params, flops = 0, float(out * (1 if p["mode"] == "nearest" else 4))
    else:
        raise ValueError(f"spec_stats: {k} is a block; expand it with profiling.builders.decompose first")
    nbytes = 4.0 * (inp + out + params)
    return float(flops), float(params), nbytes, float(inp), float(out)


_ACT_COST = {"none": 0, "relu": 1, "relu6": 2, "hardswish": 4, "hardsigmoid": 3, "sigmoid": 4, "silu": 5,
             "gelu": 8, "leakyrelu": 2, "prelu": 2, "tanh": 4, "mish": 8}


def _log(x: float) -> float:
    return math.log2(x + 1.0)


def spec_key(spec: KernelSpec) -> tuple[Any, ...]:
    return (spec.kind, *spec.params.values())


@lru_cache(maxsize=200_000)
def _features_cached(key: tuple[Any, ...], batch: int) -> tuple[float, ...]:
    spec = KernelSpec(key[0], dict(zip(KINDS[key[0]].params, key[1:])))
    return tuple(_features(spec, batch))


def _features(spec: KernelSpec, batch: int) -> list[float]:
    p = spec.params
    row = [float(p[n]) if n in p else math.nan for n in NUMERIC_PARAMS]
    for name, values in CATEGORICAL.items():
        row.append(float(values.index(p[name])) if name in p and p[name] in values else math.nan)
    row += [float(bool(p[f])) if f in p else math.nan for f in FLAGS]
    flops, params, nbytes, inp, out = spec_stats(spec, batch)
    groups = p.get("groups", 1)
    cin = p.get("cin", p.get("c", 0))
    depthwise = float(groups > 1 and groups == cin)
    out_hw = out / max(1.0, float(p.get("cout", p.get("c", 1))) * batch)
    cout = p.get("cout", p.get("c", p.get("n", p.get("dim", 0))))
    cin_any = cin or p.get("k", p.get("dim", p.get("c1", 0)))
    hw = p.get("h", 1) * p.get("w", 1) if "h" in p else p.get("tokens", p.get("m", 1))
    im2col, taps = 0.0, math.nan
    if spec.kind in ("conv", "conv_add"):
        taps = tap_share(p)
        oh, ow = _conv_out_hw(p)
        area = p["kernel"] * p.get("kernel_w", p["kernel"])
        im2col = float((p["cin"] // p["groups"]) * area * oh * ow) if area > 1 else 0.0
    row += [_log(flops), _log(nbytes), _log(params), flops / nbytes if nbytes else 0.0, _log(inp), _log(out),
            _log(out_hw), depthwise, float(cin / groups) if cin else math.nan,
            _log(flops / max(out, 1.0)),
            _vec(cin_any), _vec(cout), _log(im2col), _log(float(hw)), _log(float(cin_any)), _log(float(cout)),
            _log(4.0 * params), taps]
    return row


def _vec(c: float | None) -> float:
    """0..3: the largest of 4, 8, 16 that divides a width (SIMD lanes of fp32 on x86/ARM)."""
    c = int(c or 0)
    return float(sum(1 for m in (4, 8, 16) if c and c % m == 0))


def spec_features(spec: KernelSpec, batch: int = 1) -> tuple[float, ...]:
    """The feature row of one kernel spec (KERNEL_FEATURES order); cached."""
    return _features_cached(spec_key(spec), batch)


def feature_matrix(specs: Sequence[KernelSpec], batch: int = 1) -> np.ndarray:
    return np.array([spec_features(s, batch) for s in specs], dtype=np.float64).reshape(len(specs), len(KERNEL_FEATURES))


# ---- graph-level features ---------------------------------------------------------------
# Per spec: a row of additive quantities; a candidate's features are sums (and one max)
# over its specs, so the batch path computes them with one reduceat.
ADDITIVE = ("ms", "flops", "bytes", "params", "count", "branch", "small",
            *(f"ms_{g}" for g in GROUPS), *(f"n_{g}" for g in GROUPS),
            "ms_layout_break", "n_layout_break", "io_layout_break")
GRAPH_FEATURES = ("log_sum_ms", "log_flops", "log_bytes", "log_params", "n_kernels", "log_peak_act",
                  "branching", "small_share", "log_mean_ms", "intensity",
                  *(f"share_{g}" for g in GROUPS), *(f"n_{g}" for g in GROUPS),
                  "share_layout_break", "n_layout_break", "layout_break_io_share")
_GI = {g: i for i, g in enumerate(GROUPS)}
_LB0 = ADDITIVE.index("ms_layout_break")
#: onnxruntime's NCHWc channel block on AVX-512 (MlasNchwcGetBlockSize; 8 on AVX2): the default
#: when a predictor's fingerprint does not name its CPU flags (the shipped tables are AVX-512's)
NCHWC_BLOCK = 16
#: channel counts ORT pads up to the block only from a multiple of this (ShuffleNetV2-1.0's 58, an SE's 22 do not)
NCHWC_CHANNEL_ALIGN = 4


def nchwc_block(fingerprint: Mapping[str, Any] | None) -> int:
    """onnxruntime's NCHWc channel block on the machine a fingerprint describes: 16 with AVX-512F,
    8 without it (AVX2: the AMD EPYC Zen 3 class, where RegNet's width-8 groups stay in NCHWc, all
    44 convs of regnetx_002 checked in ORT 1.32's optimized graph), `NCHWC_BLOCK` when its CPU
    flags are unknown."""
    flags = str((fingerprint or {}).get("cpu_flags") or "").split()
    if not flags:
        return NCHWC_BLOCK
    return 16 if "avx512f" in flags else 8


def layout_break(spec: KernelSpec, block: int = NCHWC_BLOCK) -> bool:
    """Whether onnxruntime's CPU provider runs this kernel outside its blocked NCHWc layout
    (a conv it cannot block, or a squeeze-and-excitation gate, around which it reorders).

    In a network, consecutive convs stay in NCHWc; a conv that cannot gets a reorder to NCHW
    before it and back after it, which a kernel measured alone never pays, while a conv measured
    alone pays the reorders that a network saves. Checked against ORT's optimized graphs, the
    convs that cannot: a grouped, not depthwise, conv whose group width is not a multiple of the
    block (RegNet's width-8 groups on AVX-512); a depthwise conv whose channels are not a multiple of 4; a
    group=1 conv with at least a block of input channels that are not a multiple of 4
    (ShuffleNetV2-1.0's 58-channel branch, EfficientNet's 22-channel SE expansion). Channel
    counts that are a multiple of 4 are padded up to the block.
    """
    p = spec.params
    if spec.kind == "elementwise":  # a squeeze-and-excitation's channel gate x * s[c]
        return bool(p["broadcast"] and p["op"] == "mul" and p["h"] * p["w"] > 1)
    if spec.kind not in ("conv", "conv_add"):
        return False
    g, cin = p["groups"], p["cin"]
    if g == cin and g > 1:  # depthwise: channels padded to the block, but only from a multiple of 4
        return bool(cin % NCHWC_CHANNEL_ALIGN != 0)
    if g <= 1:  # a few input channels (an image) have their own NCHW-input kernel
        return bool(cin >= block and cin % NCHWC_CHANNEL_ALIGN != 0)
    return bool((cin // g) % block != 0 or (p["cout"] // g) % block != 0)


def additive_row(spec: KernelSpec, ms: float, batch: int = 1, block: int = NCHWC_BLOCK) -> tuple[np.ndarray, float]:
    """The additive row of a kernel (given its predicted ms) and its output size (for the max);
    `block` is the machine's NCHWc channel block (`nchwc_block`)."""
    flops, params, nbytes, _, out = spec_stats(spec, batch)
    g = _GI[spec_group(spec)]
    branch = float(spec.kind in ("conv_add", "concat") or
                   (spec.kind == "elementwise" and spec.params["op"] == "add" and not spec.params["broadcast"]))
    row = np.zeros(len(ADDITIVE))
    # A reshape relabels a shape (runtimes alias it or merge chains of them): it adds its time but
    # does not count as a kernel, so exporters that write 2-3 views per op (torch's attention)
    # do not look like deeper networks than the same network written compactly.
    counted = 0.0 if spec.kind == "reshape" else 1.0
    row[:7] = (ms, flops, nbytes, params, counted, branch, counted * float(ms < 0.01))
    row[7 + g] = ms
    row[7 + len(GROUPS) + g] = counted
    if layout_break(spec, block):
        row[_LB0:_LB0 + 3] = (ms, 1.0, nbytes - 4.0 * params)
    return row, out


def unknown_row(ms: float, flops: float, nbytes: float, out: float) -> tuple[np.ndarray, float]:
    row = np.zeros(len(ADDITIVE))
    g = _GI["unknown"]
    row[:7] = (ms, flops, nbytes, 0.0, 1.0, 0.0, float(ms < 0.01))
    row[7 + g] = ms
    row[7 + len(GROUPS) + g] = 1.0
    return row, out


def graph_features(sums: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """GRAPH_FEATURES from summed additive rows [N, len(ADDITIVE)] and peak output sizes [N]."""
    sums = np.atleast_2d(sums)
    ms = np.maximum(sums[:, 0], 1e-6)
    n = np.maximum(sums[:, 4], 1.0)
    ng = len(GROUPS)
    cols = [np.log(ms), np.log2(sums[:, 1] + 1), np.log2(sums[:, 2] + 1), np.log2(sums[:, 3] + 1), sums[:, 4],
            np.log2(np.asarray(peak, float) + 1), sums[:, 5], sums[:, 6] / n, np.log(ms / n),
            sums[:, 1] / np.maximum(sums[:, 2], 1.0)]
    cols += [sums[:, 7 + i] / ms for i in range(ng)]
    cols += [sums[:, 7 + ng + i] for i in range(ng)]
    cols += [sums[:, _LB0] / ms, sums[:, _LB0 + 1], sums[:, _LB0 + 2] / np.maximum(sums[:, 2], 1.0)]
    return np.column_stack(cols)


__all__ = ["KERNEL_FEATURES", "KERNEL_KINDS", "GROUPS", "GRAPH_FEATURES", "ADDITIVE", "spec_stats", "spec_group",
           "spec_features", "spec_key", "feature_matrix", "additive_row", "unknown_row", "graph_features",
           "layout_break", "nchwc_block", "tap_share", "NCHWC_BLOCK", "NCHWC_CHANNEL_ALIGN"]
