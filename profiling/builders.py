"""ONNX graphs for every kernel and block kind, built directly with `onnx.helper`.

`build_model(spec, batch)` returns a small ONNX model whose float weights are *external
data* pointing into one file (`WEIGHTS_FILE`) that nobody ships: the device runner fills
it with random numbers scaled by 1/sqrt(fan_in) before creating the session (BatchNorm
variances get positive values). The model proto therefore has every shape (for FLOPs and
graph features) but no weight bytes, so building is cheap (about a millisecond) and a
job sent over SSH is a few kilobytes.

Blocks are built by chaining the kernel builders; `decompose(spec)` replays the same
builder and returns the kernel specs it emitted, in order, so the decomposition always
agrees with the graph. The fusion and activation conventions are those of
`docs/design.md` (relu6 = Clip(0,6), silu = x*Sigmoid(x), gelu = Gelu at opset >= 20 or
the Erf pattern, mish = Mish at opset >= 18 or x*Tanh(Softplus(x)), leakyrelu = LeakyRelu(0.1),
prelu = PRelu with one slope per channel, SE = global_pool + two 1x1 convs + broadcast Mul).
Each graph is what an exporter writes (a GroupNorm is torch's Reshape, InstanceNormalization,
Reshape, Mul, Add at opset 17); onnxruntime fuses what it fuses when the session loads it, so a
measurement is of the kernel as the runtime runs it.
"""
from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .kernels import KINDS, KernelSpec, KernelSpecError
from .onnx_stats import conv_output_size

WEIGHTS_FILE = "weights.bin"
FILLS_KEY = "hwnas_fills"  # model metadata: JSON list of how the runner fills each weight
DEFAULT_OPSET = 17
MIN_OPSET = 13

# The newest opset each onnxruntime release supports (its ONNX release), oldest first.
_ORT_OPSETS = (((1, 6), 13), ((1, 8), 14), ((1, 10), 15), ((1, 11), 16), ((1, 12), 17), ((1, 14), 18),
               ((1, 15), 19), ((1, 17), 20), ((1, 20), 21))


def opset_for_runtime(version: str, preferred: int = DEFAULT_OPSET) -> int:
    """The opset to build with for an onnxruntime version: `preferred`, or less if it is older."""
    try:
        v = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return preferred
    best = MIN_OPSET
    for release, opset in _ORT_OPSETS:
        if v >= release:
            best = opset
    return min(preferred, best)

Shape = tuple[int, ...]


def se_channels(c: int, reduction: int = 4) -> int:
    """Hidden width of a squeeze-and-excitation: c // reduction, at least 8."""
    return max(8, c // reduction)


def conv_out(size: int, kernel: int, stride: int) -> int:
    return conv_output_size(size, kernel, stride, kernel // 2)


class GraphBuilder:
    """Accumulates nodes, external initializers and the kernel specs it emits."""

    def __init__(self, opset: int = DEFAULT_OPSET):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.fills: list[dict[str, Any]] = []
        self.kernels: list[KernelSpec] = []
        self.side_outputs: list[tuple[str, Shape]] = []  # further graph outputs (a detection neck's levels)
        self._offset = 0
        self._n = 0

    # ---- naming and tensors ------------------------------------------------------
    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def input(self, name: str, shape: Shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def weight(self, prefix: str, dims: Shape, fill: str = "normal", scale: float = 1.0) -> str:
        """A float initializer stored as external data; the runner fills it.

        fill: "normal" (N(0,1) x scale), "positive" (uniform 0.5..1.5, for variances and
        norm scales) or "zero"-like small values ("small": N(0,1) x 0.01, for biases).
        """
        name = self.name(prefix)
        numel = int(np.prod(dims)) if dims else 1
        length = numel * 4
        t = TensorProto()
        t.name = name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(int(d) for d in dims)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", WEIGHTS_FILE), ("offset", str(self._offset)), ("length", str(length))):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
        self.initializers.append(t)
        self.fills.append({"name": name, "offset": self._offset, "numel": numel, "fill": fill,
                           "scale": float(scale)})
        # Keep every tensor 64-byte aligned so the runner can mmap or slice it freely.
        self._offset += (length + 63) // 64 * 64
        return name

    def const(self, prefix: str, values, dtype=np.int64) -> str:
        """A small embedded constant (shapes, scales, clip bounds)."""
        name = self.name(prefix)
        arr = np.asarray(values, dtype=dtype)
        self.initializers.append(onnx.numpy_helper.from_array(arr, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        """A node with one output; returns the output's name."""
        return self.node_outputs(op, inputs, 1, **attrs)[0]

    def node_outputs(self, op: str, inputs: list[str], n_out: int, **attrs: Any) -> list[str]:
        """A node with `n_out` outputs (a Split); returns their names."""
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name("n_" + op), **attrs))
        return outs

    def emit(self, kind: str, **params) -> KernelSpec:
        spec = KernelSpec.make(kind, **params)
        self.kernels.append(spec)
        return spec

    # ---- model --------------------------------------------------------------------
    def model(self, outputs: list[tuple[str, Shape]], graph_name: str = "hwnas") -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs]
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, outs, initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="hwnas")
        # The IR version of the ONNX release that introduced the opset, so older runtimes load it.
        model.ir_version = min(model.ir_version, 7 if self.opset <= 14 else 8 if self.opset <= 18 else 9)
        entry = model.metadata_props.add()
        entry.key, entry.value = FILLS_KEY, json.dumps(self.fills, separators=(",", ":"))
        return model


# ---- activations ------------------------------------------------------------------
def apply_act(gb: GraphBuilder, x: str, act: str, shape: Shape | None = None) -> str:
    """`act` applied to `x`; `shape` (of x) sizes a PRelu's slopes (one per channel, or per last axis)."""
    if act == "none":
        return x
    if act == "leakyrelu":
        return gb.node("LeakyRelu", [x], alpha=0.1)
    if act == "prelu":
        slopes = (1,) if shape is None else ((shape[1], 1, 1) if len(shape) == 4 else (shape[-1],))
        return gb.node("PRelu", [x, gb.weight("prelu_slope", slopes, "small")])
    if act == "tanh":
        return gb.node("Tanh", [x])
    if act == "mish":
        if gb.opset >= 18:
            return gb.node("Mish", [x])
        return gb.node("Mul", [x, gb.node("Tanh", [gb.node("Softplus", [x])])])
    if act == "relu":
        return gb.node("Relu", [x])
    if act == "relu6":
        lo = gb.const("clip_min", 0.0, np.float32)
        hi = gb.const("clip_max", 6.0, np.float32)
        return gb.node("Clip", [x, lo, hi])
    if act == "hardswish":
        if gb.opset >= 14:
            return gb.node("HardSwish", [x])
        return gb.node("Mul", [x, gb.node("HardSigmoid", [x], alpha=1.0 / 6, beta=0.5)])
    if act == "hardsigmoid":
        return gb.node("HardSigmoid", [x], alpha=1.0 / 6, beta=0.5)
    if act == "sigmoid":
        return gb.node("Sigmoid", [x])
    if act == "silu":
        return gb.node("Mul", [x, gb.node("Sigmoid", [x])])
    if act == "gelu":
        if gb.opset >= 20:
            return gb.node("Gelu", [x])
        div = gb.node("Div", [x, gb.const("sqrt2", math.sqrt(2.0), np.float32)])
        erf = gb.node("Erf", [div])
        one = gb.node("Add", [erf, gb.const("one", 1.0, np.float32)])
        half = gb.node("Mul", [x, one])
        return gb.node("Mul", [half, gb.const("half", 0.5, np.float32)])
    raise KernelSpecError(f"unknown activation {act!r}")


def batch_norm(gb: GraphBuilder, x: str, c: int) -> str:
    """An inference BatchNormalization over `c` channels (positive variances and scales)."""
    return gb.node("BatchNormalization", [x, gb.weight("bn_scale", (c,), "positive"), gb.weight("bn_bias", (c,), "small"),
                                          gb.weight("bn_mean", (c,), "small"), gb.weight("bn_var", (c,), "positive")],
                   epsilon=1e-5)


# ---- kernel builders: (gb, x, shape, **params) -> (y, shape) --------------------------
def k_conv(gb, x, shape, *, cout, kernel, stride, groups=1, bn=True, act="relu", residual=None,
           kernel_w=None, dilation=1):
    """Conv of kernel x kernel_w (square by default), "same" padding, dilated by `dilation`."""
    _, cin, h, w = shape
    kw = kernel if kernel_w is None else kernel_w
    if cin % groups or cout % groups:
        raise KernelSpecError(f"conv: cin={cin} and cout={cout} must be divisible by groups={groups}")
    ph, pw = dilation * (kernel // 2), dilation * (kw // 2)
    ho = conv_output_size(h, kernel, stride, ph, dilation)
    wo = conv_output_size(w, kw, stride, pw, dilation)
    if ho < 1 or wo < 1:
        raise KernelSpecError(f"conv: a {kernel}x{kw} kernel dilated {dilation} leaves no output of {h}x{w}")
    fan_in = cin // groups * kernel * kw
    wt = gb.weight("conv_w", (cout, cin // groups, kernel, kw), scale=1 / math.sqrt(fan_in))
    ins = [x, wt] if bn else [x, wt, gb.weight("conv_b", (cout,), "small")]
    extra = {"dilations": [dilation, dilation]} if dilation != 1 else {}
    y = gb.node("Conv", ins, kernel_shape=[kernel, kw], strides=[stride, stride],
                pads=[ph, pw, ph, pw], group=groups, **extra)
    if bn:
        y = batch_norm(gb, y, cout)
    kind = "conv"
    if residual is not None:
        y = gb.node("Add", [y, residual])
        kind = "conv_add"
    y = apply_act(gb, y, act, (shape[0], cout, ho, wo))
    gb.emit(kind, cin=cin, cout=cout, h=h, w=w, kernel=kernel, stride=stride, groups=groups, bn=bn, act=act,
            kernel_w=kw, dilation=dilation)
    return y, (shape[0], cout, ho, wo)


def k_conv_transpose(gb, x, shape, *, cout, kernel, stride, groups=1, bn=False, act="none"):
    """ConvTranspose that upsamples by `stride` exactly (output h*stride), as decoders use it
    (kernel 2 stride 2; kernel 4 stride 2 pad 1; kernel 3 stride 2 pad 1 output_padding 1)."""
    b, cin, h, w = shape
    if kernel < stride:
        raise KernelSpecError(f"conv_transpose: kernel={kernel} must be at least stride={stride}")
    if cin % groups or cout % groups:
        raise KernelSpecError(f"conv_transpose: cin={cin} and cout={cout} must be divisible by groups={groups}")
    p = (kernel - stride + 1) // 2
    out_pad = 2 * p - (kernel - stride)
    wt = gb.weight("deconv_w", (cin, cout // groups, kernel, kernel), scale=1 / math.sqrt(cin // groups * kernel * kernel))
    ins = [x, wt] if bn else [x, wt, gb.weight("deconv_b", (cout,), "small")]
    extra = {"output_padding": [out_pad, out_pad]} if out_pad else {}
    y = gb.node("ConvTranspose", ins, kernel_shape=[kernel, kernel], strides=[stride, stride],
                pads=[p, p, p, p], group=groups, **extra)
    if bn:
        y = batch_norm(gb, y, cout)
    out_shape = (b, cout, h * stride, w * stride)
    y = apply_act(gb, y, act, out_shape)
    gb.emit("conv_transpose", cin=cin, cout=cout, h=h, w=w, kernel=kernel, stride=stride, groups=groups, bn=bn, act=act)
    return y, out_shape


def k_linear(gb, x, shape, *, cout, act="none", bias=True):
    """Gemm for a 2-D input, MatMul (+ bias Add) over the last axis otherwise."""
    cin = shape[-1]
    tokens = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
    wt = gb.weight("fc_w", (cin, cout), scale=1 / math.sqrt(cin))
    if len(shape) == 2:
        ins = [x, wt] + ([gb.weight("fc_b", (cout,), "small")] if bias else [])
        y = gb.node("Gemm", ins)
    else:
        y = gb.node("MatMul", [x, wt])
        if bias:
            y = gb.node("Add", [y, gb.weight("fc_b", (cout,), "small")])
    y = apply_act(gb, y, act, tuple(shape[:-1]) + (cout,))
    gb.emit("linear", tokens=tokens, cin=cin, cout=cout, act=act, bias=bias)
    return y, tuple(shape[:-1]) + (cout,)


def k_matmul(gb, a, a_shape, b, b_shape):
    _, heads, m, k = a_shape
    n = b_shape[-1]
    y = gb.node("MatMul", [a, b])
    gb.emit("matmul", heads=heads, m=m, k=k, n=n)
    return y, (a_shape[0], heads, m, n)


def k_softmax(gb, x, shape):
    y = gb.node("Softmax", [x], axis=-1)
    gb.emit("softmax", heads=shape[1], m=shape[2], n=shape[3])
    return y, shape


def k_layernorm(gb, x, shape):
    dim = shape[-1]
    tokens = int(np.prod(shape[1:-1]))
    scale, bias = gb.weight("ln_scale", (dim,), "positive"), gb.weight("ln_bias", (dim,), "small")
    if gb.opset >= 17:
        y = gb.node("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)
    else:  # the pattern onnxruntime fuses back into LayerNormalization (older runtimes, opset < 17)
        mean = gb.node("ReduceMean", [x], axes=[-1], keepdims=1)
        d = gb.node("Sub", [x, mean])
        var = gb.node("ReduceMean", [gb.node("Pow", [d, gb.const("two", 2.0, np.float32)])], axes=[-1], keepdims=1)
        std = gb.node("Sqrt", [gb.node("Add", [var, gb.const("eps", 1e-5, np.float32)])])
        y = gb.node("Add", [gb.node("Mul", [gb.node("Div", [d, std]), scale]), bias])
    gb.emit("layernorm", tokens=tokens, dim=dim)
    return y, shape


def k_pool(gb, x, shape, *, op, kernel, stride):
    _, c, h, w = shape
    p = (kernel - 1) // 2
    onnx_op = {"max": "MaxPool", "avg": "AveragePool"}.get(op)
    if onnx_op is None:
        raise KernelSpecError(f"pool: op must be max or avg, got {op!r}")
    y = gb.node(onnx_op, [x], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[p, p, p, p])
    gb.emit("pool", op=op, c=c, h=h, w=w, kernel=kernel, stride=stride)
    return y, (shape[0], c, conv_output_size(h, kernel, stride, p), conv_output_size(w, kernel, stride, p))


def k_global_pool(gb, x, shape, *, op="avg"):
    _, c, h, w = shape
    onnx_op = {"avg": "GlobalAveragePool", "max": "GlobalMaxPool"}.get(op)
    if onnx_op is None:
        raise KernelSpecError(f"global_pool: op must be avg or max, got {op!r}")
    y = gb.node(onnx_op, [x])
    gb.emit("global_pool", op=op, c=c, h=h, w=w)
    return y, (shape[0], c, 1, 1)


def _chw(shape: Shape) -> tuple[int, int, int]:
    """The design's mapping of any tensor shape to (c, h, w)."""
    if len(shape) == 4:
        return shape[1], shape[2], shape[3]
    c = shape[1]
    h = int(np.prod(shape[2:-1])) if len(shape) > 3 else 1
    w = shape[-1] if len(shape) > 2 else 1
    return c, h, w


def k_elementwise(gb, x, shape, y, *, op="add", broadcast=False):
    onnx_op = {"add": "Add", "mul": "Mul"}.get(op)
    if onnx_op is None:
        raise KernelSpecError(f"elementwise: op must be add or mul, got {op!r}")
    out = gb.node(onnx_op, [x, y])
    c, h, w = _chw(shape)
    gb.emit("elementwise", op=op, c=c, h=h, w=w, broadcast=broadcast)
    return out, shape


def k_activation(gb, x, shape, *, act):
    c, h, w = _chw(shape)
    y = apply_act(gb, x, act, shape)
    gb.emit("activation", act=act, c=c, h=h, w=w)
    return y, shape


def k_concat(gb, x, shape, y, y_shape):
    return k_concat_many(gb, [x, y], [shape, y_shape])


def k_concat_many(gb, xs, shapes):
    """Concat on channels of two or more [b, c_i, h, w] tensors."""
    out = gb.node("Concat", list(xs), axis=1)
    rest = sum(s[1] for s in shapes[1:])
    shape = shapes[0]
    gb.emit("concat", c1=shape[1], c2=rest, h=shape[2], w=shape[3], n=len(xs))
    return out, (shape[0], shape[1] + rest) + tuple(shape[2:])


def k_split(gb, x, shape, *, parts):
    """Split into `parts` equal channel groups; returns the list of (tensor, shape)."""
    b, c, h, w = shape
    if c % parts:
        raise KernelSpecError(f"split: c={c} must be divisible by parts={parts}")
    outs = gb.node_outputs("Split", [x, gb.const("split", [c // parts] * parts)], parts, axis=1)
    gb.emit("split", c=c, h=h, w=w, parts=parts)
    return [(o, (b, c // parts, h, w)) for o in outs]


def k_slice(gb, x, shape, *, cout):
    b, c, h, w = shape
    if cout > c:
        raise KernelSpecError(f"slice: cout={cout} is more than the c={c} channels")
    y = gb.node("Slice", [x, gb.const("starts", [0]), gb.const("ends", [cout]), gb.const("axes", [1])])
    gb.emit("slice", c=c, h=h, w=w, cout=cout)
    return y, (b, cout, h, w)


def k_pad(gb, x, shape, *, pad, mode="constant"):
    b, c, h, w = shape
    if mode == "reflect" and pad >= min(h, w):
        raise KernelSpecError(f"pad: reflect padding {pad} needs h and w above it (got {h}x{w})")
    pads = gb.const("pads", [0, 0, pad, pad, 0, 0, pad, pad])
    ins = [x, pads] + ([gb.const("pad_value", 0.0, np.float32)] if mode == "constant" else [])
    y = gb.node("Pad", ins, mode=mode)
    gb.emit("pad", c=c, h=h, w=w, pad=pad, mode=mode)
    return y, (b, c, h + 2 * pad, w + 2 * pad)


_REDUCE_OPS = {"l2": "ReduceL2", "mean": "ReduceMean", "sum": "ReduceSum", "max": "ReduceMax"}


def k_reduce(gb, x, shape, *, op, axis="c"):
    """A Reduce* over the channels, the spatial axes or the last axis, keeping dims."""
    b, c, h, w = shape
    axes = {"c": [1], "hw": [2, 3], "last": [3]}[axis]
    onnx_op = _REDUCE_OPS[op]
    if onnx_op == "ReduceSum" or gb.opset >= 18:  # axes became an input (ReduceSum at opset 13)
        y = gb.node(onnx_op, [x, gb.const("axes", axes)], keepdims=1)
    else:
        y = gb.node(onnx_op, [x], axes=axes, keepdims=1)
    gb.emit("reduce", op=op, c=c, h=h, w=w, axis=axis)
    out = list(shape)
    for a in axes:
        out[a] = 1
    return y, tuple(out)


def k_groupnorm(gb, x, shape, *, groups):
    """GroupNorm as torch exports it at opset 17 (InstanceNormalization over [b, groups, -1], then
    the per-channel affine); groups == c is a plain InstanceNormalization."""
    b, c, h, w = shape
    if c % groups:
        raise KernelSpecError(f"groupnorm: c={c} must be divisible by groups={groups}")
    if groups == c:
        y = gb.node("InstanceNormalization", [x, gb.weight("in_scale", (c,), "positive"),
                                              gb.weight("in_bias", (c,), "small")], epsilon=1e-5)
    else:
        y = gb.node("Reshape", [x, gb.const("shape", [b, groups, -1])])
        y = gb.node("InstanceNormalization", [y, gb.weight("gn_ones", (groups,), "positive"),
                                              gb.weight("gn_zeros", (groups,), "small")], epsilon=1e-5)
        y = gb.node("Reshape", [y, gb.const("shape", [b, c, h, w])])
        y = gb.node("Mul", [y, gb.weight("gn_scale", (c, 1, 1), "positive")])
        y = gb.node("Add", [y, gb.weight("gn_bias", (c, 1, 1), "small")])
    gb.emit("groupnorm", c=c, h=h, w=w, groups=groups)
    return y, shape


def k_einsum(gb, a, a_shape, b, b_shape):
    """Einsum bhmk,bhnk->bhmn (attention scores written as an einsum)."""
    _, heads, m, k = a_shape
    n = b_shape[2]
    y = gb.node("Einsum", [a, b], equation="bhmk,bhnk->bhmn")
    gb.emit("einsum", heads=heads, m=m, k=k, n=n)
    return y, (a_shape[0], heads, m, n)


def k_reshape(gb, x, shape, new_shape: Shape):
    """Reshape; the spec records the input's (c, h, w) as the design maps it."""
    c, h, w = _chw(shape)
    y = gb.node("Reshape", [x, gb.const("shape", list(new_shape))])
    gb.emit("reshape", c=c, h=h, w=w)
    return y, tuple(new_shape)


def k_transpose(gb, x, shape, perm=(0, 2, 3, 1)):
    c, h, w = _chw(shape)
    y = gb.node("Transpose", [x], perm=list(perm))
    gb.emit("transpose", c=c, h=h, w=w)
    return y, tuple(shape[p] for p in perm)


def k_channel_shuffle(gb, x, shape, *, groups):
    b, c, h, w = shape
    if c % groups:
        raise KernelSpecError(f"channel_shuffle: c={c} must be divisible by groups={groups}")
    y = gb.node("Reshape", [x, gb.const("shape", [b, groups, c // groups, h, w])])
    y = gb.node("Transpose", [y], perm=[0, 2, 1, 3, 4])
    y = gb.node("Reshape", [y, gb.const("shape", [b, c, h, w])])
    gb.emit("channel_shuffle", c=c, h=h, w=w, groups=groups)
    return y, shape


def k_resize(gb, x, shape, *, scale, mode="nearest"):
    b, c, h, w = shape
    if mode not in ("nearest", "linear"):
        raise KernelSpecError(f"resize: mode must be nearest or linear, got {mode!r}")
    scales = gb.const("scales", [1.0, 1.0, float(scale), float(scale)], np.float32)
    y = gb.node("Resize", [x, "", scales], mode=mode)
    gb.emit("resize", c=c, h=h, w=w, scale=scale, mode=mode)
    return y, (b, c, h * scale, w * scale)


# ---- blocks ----------------------------------------------------------------------
def b_se(gb, x, shape, *, reduction=4, gate="sigmoid"):
    c = shape[1]
    s, s_shape = k_global_pool(gb, x, shape, op="avg")
    s, s_shape = k_conv(gb, s, s_shape, cout=se_channels(c, reduction), kernel=1, stride=1, bn=False, act="relu")
    s, s_shape = k_conv(gb, s, s_shape, cout=c, kernel=1, stride=1, bn=False, act=gate)
    return k_elementwise(gb, x, shape, s, op="mul", broadcast=True)


def b_mbconv(gb, x, shape, *, cout, expand, kernel, stride, se=False, act="relu"):
    cin = shape[1]
    mid = max(1, int(round(cin * expand)))
    y, y_shape = x, shape
    if mid != cin:
        y, y_shape = k_conv(gb, y, y_shape, cout=mid, kernel=1, stride=1, act=act)
    y, y_shape = k_conv(gb, y, y_shape, cout=mid, kernel=kernel, stride=stride, groups=mid, act=act)
    if se:
        y, y_shape = b_se(gb, y, y_shape, reduction=4, gate="hardsigmoid" if act == "hardswish" else "sigmoid")
    residual = x if stride == 1 and cin == cout else None
    return k_conv(gb, y, y_shape, cout=cout, kernel=1, stride=1, act="none", residual=residual)


def _shortcut(gb, x, shape, cout, stride):
    if stride == 1 and shape[1] == cout:
        return x
    return k_conv(gb, x, shape, cout=cout, kernel=1, stride=stride, act="none")[0]


def b_resnet_basic(gb, x, shape, *, cout, stride):
    y, y_shape = k_conv(gb, x, shape, cout=cout, kernel=3, stride=stride, act="relu")
    sc = _shortcut(gb, x, shape, cout, stride)
    return k_conv(gb, y, y_shape, cout=cout, kernel=3, stride=1, act="relu", residual=sc)


def b_resnet_bottleneck(gb, x, shape, *, mid, cout, stride, groups=1):
    y, y_shape = k_conv(gb, x, shape, cout=mid, kernel=1, stride=1, act="relu")
    y, y_shape = k_conv(gb, y, y_shape, cout=mid, kernel=3, stride=stride, groups=groups, act="relu")
    sc = _shortcut(gb, x, shape, cout, stride)
    return k_conv(gb, y, y_shape, cout=cout, kernel=1, stride=1, act="relu", residual=sc)


def b_transformer(gb, x, shape, *, heads, mlp_ratio=4.0):
    """Pre-norm encoder block on [b, tokens, dim]: x + MHSA(LN(x)); x + MLP(LN(x))."""
    b, tokens, dim = shape
    if dim % heads:
        raise KernelSpecError(f"transformer: dim={dim} must be divisible by heads={heads}")
    hd = dim // heads
    y, y_shape = k_layernorm(gb, x, shape)
    qkv, qkv_shape = k_linear(gb, y, y_shape, cout=3 * dim)
    qkv, qkv_shape = k_reshape(gb, qkv, qkv_shape, (b, tokens, 3, heads, hd))
    qkv, qkv_shape = k_transpose(gb, qkv, qkv_shape, perm=(2, 0, 3, 1, 4))  # [3, b, heads, tokens, hd]
    q, k, v = gb.node_outputs("Split", [qkv, gb.const("split", [1, 1, 1])], 3, axis=0)
    sq = gb.const("axes", [0])
    q, k, v = (gb.node("Squeeze", [t, sq]) for t in (q, k, v))
    head_shape = (b, heads, tokens, hd)
    q = gb.node("Mul", [q, gb.const("scale", 1.0 / math.sqrt(hd), np.float32)])
    kt, kt_shape = k_transpose(gb, k, head_shape, perm=(0, 1, 3, 2))
    att, att_shape = k_matmul(gb, q, head_shape, kt, kt_shape)
    att, att_shape = k_softmax(gb, att, att_shape)
    o, o_shape = k_matmul(gb, att, att_shape, v, head_shape)
    o, o_shape = k_transpose(gb, o, o_shape, perm=(0, 2, 1, 3))  # [b, tokens, heads, hd]
    o, o_shape = k_reshape(gb, o, o_shape, (b, tokens, dim))
    o, o_shape = k_linear(gb, o, o_shape, cout=dim)
    x, shape = k_elementwise(gb, x, shape, o, op="add")
    y, y_shape = k_layernorm(gb, x, shape)
    y, y_shape = k_linear(gb, y, y_shape, cout=max(1, int(round(dim * mlp_ratio))), act="gelu")
    y, y_shape = k_linear(gb, y, y_shape, cout=dim)
    return k_elementwise(gb, x, shape, y, op="add")


# ---- one spec -> one graph --------------------------------------------------------
def _input_shapes(spec: KernelSpec, batch: int) -> list[Shape]:
    p = spec.params
    k = spec.kind
    if k in ("conv", "conv_add", "conv_transpose", "mbconv", "resnet_basic", "resnet_bottleneck"):
        return [(batch, p["cin"], p["h"], p["w"])]
    if k == "einsum":
        return [(batch, p["heads"], p["m"], p["k"]), (batch, p["heads"], p["n"], p["k"])]
    if k == "linear":
        return [(batch, p["cin"])] if p["tokens"] == 1 else [(batch, p["tokens"], p["cin"])]
    if k == "matmul":
        return [(batch, p["heads"], p["m"], p["k"]), (batch, p["heads"], p["k"], p["n"])]
    if k == "softmax":
        return [(batch, p["heads"], p["m"], p["n"])]
    if k in ("layernorm", "transformer"):
        return [(batch, p["tokens"], p["dim"])]
    if k == "elementwise":
        second = (batch, p["c"], 1, 1) if p["broadcast"] else (batch, p["c"], p["h"], p["w"])
        return [(batch, p["c"], p["h"], p["w"]), second]
    if k == "concat":
        rest = [p["c2"] // (p["n"] - 1)] * (p["n"] - 1)
        rest[-1] += p["c2"] - sum(rest)
        return [(batch, p["c1"], p["h"], p["w"])] + [(batch, c, p["h"], p["w"]) for c in rest]
    return [(batch, p["c"], p["h"], p["w"])]


def _check(spec: KernelSpec) -> None:
    p = spec.params
    for name, value in p.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0 and name != "groups":
            raise KernelSpecError(f"{spec.kind}: {name} must be positive, got {value}")
    if spec.kind not in ("pool", "conv_transpose"):  # pools pad (kernel-1)//2; a transpose conv upsamples
        for name in ("kernel", "kernel_w"):
            if name in p and p[name] % 2 == 0:
                raise KernelSpecError(f"{spec.kind}: {name} must be odd (same padding), got {p[name]}")
    if spec.kind == "concat" and p["n"] < 2:
        raise KernelSpecError(f"concat: n must be at least 2, got {p['n']}")
    if spec.kind == "concat" and p["c2"] < p["n"] - 1:
        raise KernelSpecError(f"concat: c2={p['c2']} cannot be split over {p['n'] - 1} inputs")
    if p.get("groups", 1) < 1:
        raise KernelSpecError(f"{spec.kind}: groups must be >= 1")


def _emit_spec(gb: GraphBuilder, spec: KernelSpec, xs: list[str], shapes: list[Shape]) -> tuple[str, Shape]:
    p, k = spec.params, spec.kind
    x, shape = xs[0], shapes[0]
    if k == "conv":
        return k_conv(gb, x, shape, cout=p["cout"], kernel=p["kernel"], stride=p["stride"],
                      groups=p["groups"], bn=p["bn"], act=p["act"], kernel_w=p["kernel_w"], dilation=p["dilation"])
    if k == "conv_add":
        # The residual has the conv's output shape: a second graph input.
        d = p["dilation"]
        out_shape = (shape[0], p["cout"],
                     conv_output_size(p["h"], p["kernel"], p["stride"], d * (p["kernel"] // 2), d),
                     conv_output_size(p["w"], p["kernel_w"], p["stride"], d * (p["kernel_w"] // 2), d))
        res = gb.input("residual", out_shape)
        return k_conv(gb, x, shape, cout=p["cout"], kernel=p["kernel"], stride=p["stride"],
                      groups=p["groups"], bn=p["bn"], act=p["act"], residual=res, kernel_w=p["kernel_w"],
                      dilation=p["dilation"])
    if k == "conv_transpose":
        return k_conv_transpose(gb, x, shape, cout=p["cout"], kernel=p["kernel"], stride=p["stride"],
                                groups=p["groups"], bn=p["bn"], act=p["act"])
    if k == "split":
        return k_split(gb, x, shape, parts=p["parts"])[0]
    if k == "slice":
        return k_slice(gb, x, shape, cout=p["cout"])
    if k == "pad":
        return k_pad(gb, x, shape, pad=p["pad"], mode=p["mode"])
    if k == "reduce":
        return k_reduce(gb, x, shape, op=p["op"], axis=p["axis"])
    if k == "groupnorm":
        return k_groupnorm(gb, x, shape, groups=p["groups"])
    if k == "einsum":
        return k_einsum(gb, x, shape, xs[1], shapes[1])
    if k == "linear":
        return k_linear(gb, x, shape, cout=p["cout"], act=p["act"], bias=p["bias"])
    if k == "matmul":
        return k_matmul(gb, x, shape, xs[1], shapes[1])
    if k == "softmax":
        return k_softmax(gb, x, shape)
    if k == "layernorm":
        return k_layernorm(gb, x, shape)
    if k == "pool":
        return k_pool(gb, x, shape, op=p["op"], kernel=p["kernel"], stride=p["stride"])
    if k == "global_pool":
        return k_global_pool(gb, x, shape, op=p["op"])
    if k == "elementwise":
        return k_elementwise(gb, x, shape, xs[1], op=p["op"], broadcast=p["broadcast"])
    if k == "activation":
        return k_activation(gb, x, shape, act=p["act"])
    if k == "concat":
        return k_concat_many(gb, xs, shapes)
    if k == "reshape":
        return k_reshape(gb, x, shape, (shape[0], p["c"], p["h"] * p["w"]))
    if k == "transpose":
        return k_transpose(gb, x, shape)
    if k == "channel_shuffle":
        return k_channel_shuffle(gb, x, shape, groups=p["groups"])
    if k == "resize":
        return k_resize(gb, x, shape, scale=p["scale"], mode=p["mode"])
    if k == "mbconv":
        return b_mbconv(gb, x, shape, cout=p["cout"], expand=p["expand"], kernel=p["kernel"],
                        stride=p["stride"], se=p["se"], act=p["act"])
    if k == "resnet_basic":
        return b_resnet_basic(gb, x, shape, cout=p["cout"], stride=p["stride"])
    if k == "resnet_bottleneck":
        return b_resnet_bottleneck(gb, x, shape, mid=p["mid"], cout=p["cout"], stride=p["stride"],
                                   groups=p["groups"])
    if k == "se":
        return b_se(gb, x, shape, reduction=p["reduction"])
    if k == "transformer":
        return b_transformer(gb, x, shape, heads=p["heads"], mlp_ratio=p["mlp_ratio"])
    raise KernelSpecError(f"unknown kernel kind {k!r}; valid kinds: {', '.join(KINDS)}")


def _build(spec: KernelSpec, batch: int, opset: int) -> tuple[GraphBuilder, list[tuple[str, Shape]]]:
    if spec.kind not in KINDS:
        raise KernelSpecError(f"unknown kernel kind {spec.kind!r}; valid kinds: {', '.join(KINDS)}")
    _check(spec)
    gb = GraphBuilder(opset)
    shapes = _input_shapes(spec, batch)
    names = (["x", "y"] + [f"in{i}" for i in range(2, len(shapes))])[: len(shapes)]
    xs = [gb.input(n, s) for n, s in zip(names, shapes)]
    y, y_shape = _emit_spec(gb, spec, xs, shapes)
    return gb, [(y, y_shape)]


def build_model(spec: KernelSpec, batch: int = 1, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """An ONNX model computing `spec` at `batch`, with external (device-filled) weights.

    `opset` is 13 or newer; below 17 LayerNormalization is built from its primitive ops and
    below 14 HardSwish as x * HardSigmoid(x), which onnxruntime fuses back.
    """
    if opset < MIN_OPSET:
        raise KernelSpecError(f"opset {opset} is too old: the builders need opset {MIN_OPSET} or newer")
    gb, outputs = _build(spec, batch, opset)
    return gb.model(outputs, graph_name=spec.kind)


def decompose(spec: KernelSpec) -> list[KernelSpec]:
    """The kernel specs `spec` is made of, in graph order ([spec] for a kernel)."""
    if KINDS[spec.kind].category == "kernel":
        return [spec]
    gb, _ = _build(spec, 1, DEFAULT_OPSET)
    return list(gb.kernels)


def output_shapes(model: onnx.ModelProto) -> list[list[int]]:
    return [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output]


def input_shapes(model: onnx.ModelProto) -> list[list[int]]:
    inits = {t.name for t in model.graph.initializer}
    return [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input if i.name not in inits]


def weight_fills(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """How the runner must fill the external weights file of a model built here."""
    for entry in model.metadata_props:
        if entry.key == FILLS_KEY:
            return json.loads(entry.value)
    return []


# Float initializers this small travel embedded (see `externalize_weights`).
EMBEDDED_FLOAT_MAX = 16


def externalize_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of any ONNX model whose float initializers are external data that the runner
    fills, as `build_model`'s are: the model then travels as a few KB, and `weight_fills`
    describes the fills. Latency does not depend on the weights' values; small all-positive
    tensors (BatchNorm variances, norm scales) stay positive. Integer constants and float
    tensors of at most `EMBEDDED_FLOAT_MAX` elements stay embedded with their real values:
    those are scalars such as GELU's sqrt(2), 0.5 and 1, a decomposed LayerNorm's epsilon or a
    Pow exponent, and the runtime's fusions (Gelu, LayerNormalization) match on their values,
    so random ones would time an unfused graph the real model never runs."""
    model = copy.deepcopy(model)
    fills, offset = [], 0
    for t in model.graph.initializer:
        if t.data_type != TensorProto.FLOAT:
            continue
        numel = int(np.prod(t.dims)) if len(t.dims) else 1
        if numel <= EMBEDDED_FLOAT_MAX and t.data_location != TensorProto.EXTERNAL:
            continue
        fan_in = int(np.prod(t.dims[1:])) if len(t.dims) > 1 else 0
        values = numpy_helper.to_array(t) if numel <= 4096 else None
        positive = values is not None and values.size and float(values.min()) > 0
        fills.append({"name": t.name, "offset": offset, "numel": numel,
                      "fill": "positive" if positive else ("normal" if fan_in else "small"),
                      "scale": float(1.0 / math.sqrt(fan_in)) if fan_in else 1.0})
        t.ClearField("raw_data")
        t.ClearField("float_data")
        del t.external_data[:]
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(numel * 4))):
            e = t.external_data.add()
            e.key, e.value = k, v
        offset += (numel * 4 + 63) // 64 * 64
    for entry in list(model.metadata_props):
        if entry.key == FILLS_KEY:
            model.metadata_props.remove(entry)
    entry = model.metadata_props.add()
    entry.key, entry.value = FILLS_KEY, json.dumps(fills, separators=(",", ":"))
    return model


def materialize(model: onnx.ModelProto, directory: str, seed: int = 0) -> str:
    """Write `model` and a random weights file into `directory` (for local tools and tests)."""
    import os
    fills = weight_fills(model)
    rng = np.random.default_rng(seed)
    size = max((f["offset"] + 4 * f["numel"] for f in fills), default=0)
    buf = np.zeros(size // 4 + 16, dtype=np.float32)
    for f in fills:
        n, o = f["numel"], f["offset"] // 4
        if f["fill"] == "positive":
            buf[o:o + n] = rng.uniform(0.5, 1.5, n)
        elif f["fill"] == "small":
            buf[o:o + n] = rng.standard_normal(n) * 0.01
        else:
            buf[o:o + n] = rng.standard_normal(n) * f["scale"]
    path = os.path.join(directory, "model.onnx")
    with open(os.path.join(directory, WEIGHTS_FILE), "wb") as fh:
        fh.write(buf.tobytes())
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString())
    return path


__all__ = ["build_model", "decompose", "GraphBuilder", "opset_for_runtime", "MIN_OPSET", "se_channels", "conv_out", "weight_fills",
           "input_shapes", "output_shapes", "materialize", "WEIGHTS_FILE", "DEFAULT_OPSET"]
