"""Kernel detection: split an ONNX graph into the units the runtime executes.

`detect_kernels(graph_or_model, batch=1, rules=...)` walks the graph in topological order
and groups ONNX nodes into `KernelSpec`s of `profiling.kernels`, following the fusions of
docs/design.md §1 (what onnxruntime's CPU optimizer does at ORT_ENABLE_ALL):

- Conv → [BatchNormalization] → [activation] is one `conv`;
  Conv → [BN] → Add(residual) → [activation] is one `conv_add`;
- Gemm, or MatMul with a constant weight, → [bias Add] → [activation] is one `linear`;
- MatMul of two activations is a `matmul`, with the Transpose of its last two axes and a
  scalar Mul/Div folded in (ORT's FusedMatMul);
- LayerNormalization, or its opset<17 decomposition, is one `layernorm`;
- x*Sigmoid(x) is silu, the Erf pattern and Gelu are gelu, x*HardSigmoid(x) is hardswish;
- Reshape→Transpose→Reshape on 5-D is a `channel_shuffle`;
- non-square and dilated Convs keep their `kernel_w` and `dilation`; a zero Pad feeding a Conv
  or a pool is folded into it (ORT's PadFusion), any other Pad is a `pad`;
- ConvTranspose → [BN] → [activation] is one `conv_transpose`;
- x*Tanh(Softplus(x)) and Mish are mish; LeakyRelu, PRelu and Tanh are activations, fused
  into a conv like the others (the profiled kernel is the same pair, whatever ORT does with it);
- InstanceNormalization, torch's GroupNorm (Reshape, InstanceNormalization, Reshape, Mul, Add)
  and GroupNormalization are one `groupnorm`; ReduceL2/Sum/Max/Mean (outside a LayerNorm and
  a global pool) a `reduce`; Split and Slice on channels a `split` and a `slice`; a two-input
  Einsum that is a batched matrix product an `einsum`.

A `FusionRules` object keys the fusions by runtime/provider (`rules_for(target)`).
Nodes that onnxruntime folds when it loads the model (constants, shape arithmetic,
Identity, Dropout) are listed as `folded`. Every other node that maps to no kernel is an
`UnknownOp` with its FLOPs and bytes, so the predictor can report it with a fallback
estimate: nothing is silently dropped.

`compare_with_ort(model)` saves onnxruntime's own optimized model and reports where its
fusions disagree with the detected groups; `ort_kernel_timings(model)` runs ORT's per-node
profiler and attributes the in-context node times to the detected kernels.
"""
from __future__ import annotations

import itertools
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AbstractSet, Any, Sequence, TypeAlias

import networkx as nx
import numpy as np
import onnx

from profiling.kernels import KernelSpec
from profiling.onnx_stats import node_flops

from .graph import FREE_OPS, OnnxGraph, load_graph

if TYPE_CHECKING:
    import onnxruntime as ort  # it ships no type hints: its types read as Any

    from profiling.targets import Target

#: a matched activation: (its name in the kernel vocabulary, its node indices, its output tensor)
ActMatch: TypeAlias = tuple[str, list[int], str]


# one-node activations, by ONNX op (Clip and PRelu look at their inputs)
SIMPLE_ACTS = {"Relu": "relu", "HardSwish": "hardswish", "HardSigmoid": "hardsigmoid", "Sigmoid": "sigmoid",
               "Gelu": "gelu", "LeakyRelu": "leakyrelu", "Tanh": "tanh", "Mish": "mish"}

# layout ops with no arithmetic: detected as `reshape`-like kernels (docs/predictor.md)
LAYOUT_OPS = frozenset({"Split", "Slice", "Gather", "Expand", "Tile", "DepthToSpace", "SpaceToDepth"})


@dataclass(frozen=True)
class FusionRules:
    """Which node groups the runtime executes as one kernel."""
    name: str
    conv_bn: bool = True
    conv_add: bool = True
    conv_acts: frozenset[str] = frozenset({"relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu", "gelu",
                                      "leakyrelu", "prelu", "mish", "tanh"})
    linear_bias: bool = True
    linear_acts: frozenset[str] = frozenset({"relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu", "gelu",
                                        "leakyrelu", "prelu", "mish", "tanh"})
    matmul_transpose: bool = True
    matmul_scale: bool = True


FUSION_RULES: dict[str, FusionRules] = {
    # design.md §1: the CPU EP at ORT_ENABLE_ALL (NCHWc Conv with activation and Sum input).
    "onnxruntime:CPUExecutionProvider": FusionRules("onnxruntime:CPUExecutionProvider"),
    # cuDNN fuses Conv+Add+Relu and Conv+act for the common activations as well.
    "onnxruntime:CUDAExecutionProvider": FusionRules(
        "onnxruntime:CUDAExecutionProvider",
        conv_acts=frozenset({"relu", "relu6", "sigmoid", "hardswish", "silu"})),
    # TensorRT fuses at least as much as ORT's CPU rules; finer differences are learnt.
    "onnxruntime:TensorrtExecutionProvider": FusionRules("onnxruntime:TensorrtExecutionProvider"),
}
DEFAULT_RULES = FUSION_RULES["onnxruntime:CPUExecutionProvider"]


def rules_for(target: Target | dict[str, Any] | None) -> FusionRules:
    """The fusion rules of a `profiling.targets.Target` (or its dict): its first provider."""
    if target is None:
        return DEFAULT_RULES
    d = target if isinstance(target, dict) else target.to_dict()
    key = f"{d.get('runtime', 'onnxruntime')}:{(d.get('providers') or ['CPUExecutionProvider'])[0]}"
    return FUSION_RULES.get(key, DEFAULT_RULES)


@dataclass
class DetectedKernel:
    spec: KernelSpec
    nodes: list[str]          # ONNX node names, in order
    ops: list[str]            # their op types
    output: str               # the tensor the kernel produces
    internal: list[str] = field(default_factory=list)  # tensors fused away inside the kernel

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "nodes": self.nodes, "ops": self.ops}


@dataclass
class UnknownOp:
    name: str
    op_type: str
    flops: float
    bytes: float
    input_shapes: list[list[int] | None]
    output_shapes: list[list[int] | None]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "flops": self.flops, "bytes": self.bytes,
                "input_shapes": self.input_shapes, "output_shapes": self.output_shapes}


@dataclass
class Detection:
    kernels: list[DetectedKernel]
    unknown: list[UnknownOp]
    folded: list[str]
    depth: int
    graph: OnnxGraph | None = None

    def specs(self) -> list[KernelSpec]:
        return [k.spec for k in self.kernels]


# ---------------------------------------------------------------------------------------
def _numel(shape: Sequence[int] | None) -> int:
    return int(np.prod(shape)) if shape is not None and len(shape) else 1


def chw(shape: Sequence[int] | None, batch: int) -> tuple[int, int, int]:
    """design.md §1: c = shape[1], h = prod(shape[2:-1]), w = shape[-1], batch folded out."""
    if shape is None:
        raise _Unmapped
    if len(shape) <= 1:
        return max(1, _numel(shape) // batch), 1, 1
    c = int(shape[1])
    h = int(np.prod(shape[2:-1])) if len(shape) > 3 else 1
    w = int(shape[-1]) if len(shape) >= 3 else 1
    if shape[0] != batch and batch and shape[0] % batch == 0:
        c *= shape[0] // batch
    elif shape[0] != batch:
        c = max(1, _numel(shape) // max(batch, 1) // max(h * w, 1))
    return c, h, w


class _Unmapped(Exception):
    pass


class _Detector:
    def __init__(self, g: OnnxGraph, rules: FusionRules) -> None:
        self.g, self.rules, self.batch = g, rules, g.batch
        self.used: set[int] = set()
        self.kernels: list[DetectedKernel] = []
        self.unknown: list[UnknownOp] = []
        self.folded: list[str] = []

    # ---- helpers -------------------------------------------------------------------
    def node(self, i: int) -> onnx.NodeProto:
        return self.g.nodes[i]

    def name(self, i: int) -> str:
        return str(self.g.graph.nodes[i]["name"])

    def free_consumer(self, tensor: str, op: str | tuple[str, ...] | None = None) -> int | None:
        j = self.g.single_consumer(tensor)
        if j is None or j in self.used:
            return None
        if op is not None and self.g.nodes[j].op_type not in ((op,) if isinstance(op, str) else op):
            return None
        return j

    def is_scalar_const(self, tensor: str) -> bool:
        return self.g.is_const(tensor) and self.g.shape(tensor) is not None and _numel(self.g.shape(tensor)) == 1

    def scalar(self, tensor: str) -> float | None:
        v = self.g.value(tensor) if self.g.is_const(tensor) else None
        if v is None or v.size != 1:
            return None
        return float(v.reshape(-1)[0])

    def emit(self, kind: str, group: list[int], output: str, **params: Any) -> None:
        spec = KernelSpec.make(kind, **params)
        internal = [t for i in group for t in self.g.nodes[i].output if t and t != output]
        self.kernels.append(DetectedKernel(spec, [self.name(i) for i in group],
                                           [self.g.nodes[i].op_type for i in group], output, internal))
        self.used.update(group)

    # ---- activations -----------------------------------------------------------------
    def match_act(self, t: str) -> ActMatch | None:
        """(act, node indices, output tensor) if an activation reads `t` and only it does."""
        g = self.g
        cons = [j for j in g.consumers.get(t, []) if j not in self.used]
        if t in g.outputs or not cons or len(cons) != len(g.consumers.get(t, [])):
            return None
        if len(cons) == 1:
            j = cons[0]
            n = g.nodes[j]
            op = n.op_type
            if op in SIMPLE_ACTS:
                return SIMPLE_ACTS[op], [j], n.output[0]
            if op == "PRelu" and n.input[0] == t and g.is_const(n.input[1]):
                return "prelu", [j], n.output[0]
            if op == "Clip":
                lo = g.attr(n, "min") if len(n.input) < 2 else (self.scalar(n.input[1]) if n.input[1] else None)
                hi = g.attr(n, "max") if len(n.input) < 3 else (self.scalar(n.input[2]) if n.input[2] else None)
                if lo == 0 and hi is None:
                    return "relu", [j], n.output[0]
                return "relu6", [j], n.output[0]  # any two-sided clip costs what ReLU6 does
            return None
        if len(cons) == 2:
            ops = {g.nodes[j].op_type: j for j in cons}
            # x * Sigmoid(x) = silu, x * HardSigmoid(x) = hardswish
            for gate, act in (("Sigmoid", "silu"), ("HardSigmoid", "hardswish")):
                if gate in ops and "Mul" in ops:
                    s, m = ops[gate], ops["Mul"]
                    if set(g.nodes[m].input) == {t, g.nodes[s].output[0]} and \
                            g.single_consumer(g.nodes[s].output[0]) == m:
                        return act, [s, m], g.nodes[m].output[0]
            if "Softplus" in ops and "Mul" in ops:  # mish: x * Tanh(Softplus(x))
                sp, m = ops["Softplus"], ops["Mul"]
                th = g.single_consumer(g.nodes[sp].output[0])
                if th is not None and g.nodes[th].op_type == "Tanh" and \
                        g.single_consumer(g.nodes[th].output[0]) == m and \
                        set(g.nodes[m].input) == {t, g.nodes[th].output[0]}:
                    return "mish", [sp, th, m], g.nodes[m].output[0]
            gelu = self.match_erf_gelu(t, cons)
            if gelu:
                return gelu
        return None

    def shared_input_gelu(self, t: str) -> ActMatch | None:
        """The Erf GELU of `t` when `t` also feeds other nodes (a residual): try the consumers
        that can start the pattern (a scale by 1/sqrt2 or 0.5, the final Mul by x)."""
        g = self.g
        starts = [j for j in g.consumers.get(t, []) if j not in self.used and g.nodes[j].op_type in ("Div", "Mul")]
        for r in (1, 2):
            for combo in itertools.combinations(starts, r):
                m = self.match_erf_gelu(t, list(combo))
                if m:
                    return m
        return None

    def match_erf_gelu(self, t: str, cons: list[int]) -> ActMatch | None:
        """x*0.5*(1+erf(x/sqrt2)) in any order: five nodes, one Erf, one escaping output."""
        g = self.g
        allowed = {"Div", "Mul", "Erf", "Add"}
        group: set[int] = set()
        frontier, produced = list(cons), {t}
        while frontier and len(group) <= 5:
            j = frontier.pop()
            if j in group or j in self.used or g.nodes[j].op_type not in allowed:
                return None
            n = g.nodes[j]
            group.add(j)
            produced.update(o for o in n.output if o)
            for o in n.output:
                for k in g.consumers.get(o, []):
                    if k not in group and g.nodes[k].op_type in allowed and len(group) < 5:
                        frontier.append(k)
        if len(group) != 5 or sum(g.nodes[j].op_type == "Erf" for j in group) != 1:
            return None
        outs: set[str] = set()
        for j in group:
            for o in g.nodes[j].output:
                if o in g.outputs or any(k not in group for k in g.consumers.get(o, [])):
                    outs.add(o)
            for x in g.nodes[j].input:
                if x and x != t and not g.is_const(x) and x not in produced:
                    return None
        if len(outs) != 1:
            return None
        order = [j for j in nx.topological_sort(g.graph.subgraph(group))]
        return "gelu", order, outs.pop()

    def fuse_bn(self, group: list[int], out: str) -> tuple[str, bool]:
        """Take the BatchNormalization that alone reads `out` into `group`: (its output, True)."""
        j = self.free_consumer(out, "BatchNormalization") if self.rules.conv_bn else None
        if j is None:
            return out, False
        group.append(j)
        return self.g.nodes[j].output[0], True

    def fuse_act(self, group: list[int], out: str, allowed: AbstractSet[str]) -> tuple[str, str]:
        """Take the activation that alone reads `out` into `group` when the rules fuse it: (act, output)."""
        m = self.match_act(out)
        if m and m[0] in allowed:
            group += m[1]
            return m[0], m[2]
        return "none", out

    # ---- kernels ---------------------------------------------------------------------
    def conv(self, i: int) -> None:
        g, n = self.g, self.g.nodes[i]
        w = g.shape(n.input[1])
        x = g.shape(n.input[0])
        if w is None or x is None or len(x) < 3 or len(w) < 3:
            raise _Unmapped
        group = [i]
        # bn=True only with a BatchNormalization node (torch exports fold BN into the bias)
        out, bn = self.fuse_bn(group, n.output[0])
        kind = "conv"
        j = self.free_consumer(out, "Add") if self.rules.conv_add else None
        if j is not None:
            other = [t for t in g.nodes[j].input if t != out]
            rival = g.producer.get(other[0]) if len(other) == 1 else None
            # like the builders: the Add goes to the conv on its first input when both come from convs
            rival_conv = rival is not None and rival not in self.used and g.nodes[rival].op_type in ("Conv", "BatchNormalization")
            if len(other) == 1 and not g.is_const(other[0]) and g.shape(other[0]) == g.shape(out) and \
                    (g.nodes[j].input[0] == out or not rival_conv):
                group.append(j)
                out, kind = g.nodes[j].output[0], "conv_add"
        act, out = self.fuse_act(group, out, self.rules.conv_acts)
        groups = int(g.attr(n, "group", 1))
        ks = list(g.attr(n, "kernel_shape") or list(w[2:]))
        strides = g.attr(n, "strides") or [1]
        dil = g.attr(n, "dilations") or [1]
        kh, kw = int(ks[0]), int(ks[1]) if len(ks) > 1 else 1
        self.emit(kind, group, out, cin=int(w[1]) * groups, cout=int(w[0]), h=int(x[2]),
                  w=int(x[3]) if len(x) > 3 else 1, kernel=kh, stride=int(max(strides)),
                  groups=groups, bn=bn, act=act, kernel_w=kw, dilation=int(max(dil)))

    def conv_transpose(self, i: int) -> None:
        g, n = self.g, self.g.nodes[i]
        w, x, y = g.shape(n.input[1]), g.shape(n.input[0]), g.shape(n.output[0])
        if w is None or x is None or y is None or len(x) != 4:
            raise _Unmapped
        groups = int(g.attr(n, "group", 1))
        ks = list(g.attr(n, "kernel_shape") or list(w[2:]))
        stride = max(1, int(round(y[2] / x[2])))
        group = [i]
        out, bn = self.fuse_bn(group, n.output[0])
        act, out = self.fuse_act(group, out, self.rules.conv_acts)
        self.emit("conv_transpose", group, out, cin=int(w[0]), cout=int(w[1]) * groups, h=int(x[2]), w=int(x[3]),
                  kernel=int(max(ks)), stride=stride, groups=groups, bn=bn, act=act)

    def pad(self, i: int) -> None:
        g, n = self.g, self.g.nodes[i]
        x = g.shape(n.input[0])
        mode = g.attr(n, "mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = g.attr(n, "pads")
        if pads is None and len(n.input) > 1 and n.input[1]:
            v = g.value(n.input[1])
            pads = None if v is None else [int(p) for p in v.reshape(-1)]
        y = g.shape(n.output[0])
        if pads is None and x is not None and y is not None and len(x) == 4 and len(y) == 4:
            # pads computed at run time (torch's F.pad writes a Shape/Slice/Cast chain): the shapes tell
            ph, pw = (int(y[2]) - int(x[2])) // 2, (int(y[3]) - int(x[3])) // 2
            pads = [0, 0, ph, pw, 0, 0, int(y[2]) - int(x[2]) - ph, int(y[3]) - int(x[3]) - pw]
        if x is None or pads is None or len(x) != 4 or len(pads) != 8:
            raise _Unmapped
        value = self.scalar(n.input[2]) if len(n.input) > 2 and n.input[2] else 0.0
        nxt = g.single_consumer(n.output[0])
        if mode == "constant" and not value and pads[:2] == [0, 0] and pads[4:6] == [0, 0] and min(pads) >= 0 and \
                nxt is not None and g.nodes[nxt].op_type in ("Conv", "MaxPool", "AveragePool"):
            return self.fold(i)  # onnxruntime's PadFusion: the padding becomes the conv's own
        self.emit("pad", [i], n.output[0], c=int(x[1]), h=int(x[2]), w=int(x[3]), pad=max(1, max(pads)),
                  mode=mode if mode in ("constant", "reflect", "edge") else "constant")

    def reduce(self, i: int) -> None:
        """ReduceL2/Sum/Max/Mean that is neither a LayerNorm's nor a global pool: a `reduce`."""
        g, n = self.g, self.g.nodes[i]
        x = g.shape(n.input[0])
        if x is None or len(x) < 2:
            raise _Unmapped
        axes = g.attr(n, "axes")
        if axes is None and len(n.input) > 1 and n.input[1]:
            v = g.value(n.input[1])
            axes = None if v is None else [int(a) for a in v.reshape(-1)]
        r = len(x)
        axes = sorted(a % r for a in axes) if axes is not None else list(range(r))
        op = {"ReduceL2": "l2", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMean": "mean"}[n.op_type]
        c, h, w = chw(x, self.batch)
        if axes == [1]:
            axis = "c"
        elif r == 4 and axes == [2, 3]:
            axis = "hw"
        elif axes == [r - 1]:
            axis = "last"
        else:
            raise _Unmapped
        self.emit("reduce", [i], n.output[0], op=op, c=c, h=h, w=w, axis=axis)

    def instance_norm(self, i: int) -> None:
        """InstanceNormalization, or torch's GroupNorm around it: Reshape [b, groups, -1],
        InstanceNormalization, Reshape back, Mul and Add by per-channel constants."""
        g, n = self.g, self.g.nodes[i]
        group, src, out = [i], n.input[0], n.output[0]
        p = g.producer.get(src)
        if p is not None and p not in self.used and g.nodes[p].op_type == "Reshape" and \
                g.single_consumer(g.nodes[p].output[0]) == i:
            x = g.shape(g.nodes[p].input[0])
            mid = g.shape(src)
            j = self.free_consumer(out, "Reshape")
            if x is None or mid is None or len(x) != 4 or j is None or g.shape(g.nodes[j].output[0]) != x:
                self.view(p)  # not a GroupNorm after all: the Reshape it skipped is a view of its own
                return self.instance_norm(i)
            group = [p, i, j]
            out = g.nodes[j].output[0]
            for op in ("Mul", "Add"):
                k = self.free_consumer(out, op)
                if k is not None and any(g.is_const(t) for t in g.nodes[k].input if t != out):
                    group.append(k)
                    out = g.nodes[k].output[0]
            return self.emit("groupnorm", group, out, c=int(x[1]), h=int(x[2]), w=int(x[3]), groups=int(mid[1]))
        x = g.shape(src)
        if x is None or len(x) < 3:
            raise _Unmapped
        c, h, w = chw(x, self.batch)
        self.emit("groupnorm", group, out, c=c, h=h, w=w, groups=c)

    def einsum(self, i: int) -> None:
        """A two-input Einsum that is a batched matrix product: [batch dims] x m x k . n x k."""
        g, n = self.g, self.g.nodes[i]
        eq = g.attr(n, "equation")
        eq = (eq.decode() if isinstance(eq, bytes) else str(eq or "")).replace(" ", "")
        if len(n.input) != 2 or "->" not in eq or "." in eq:
            raise _Unmapped
        lhs, out = eq.split("->")
        a, b = lhs.split(",")
        sa, sb = g.shape(n.input[0]), g.shape(n.input[1])
        if sa is None or sb is None or len(sa) != len(a) or len(sb) != len(b):
            raise _Unmapped
        size = {**dict(zip(a, sa)), **dict(zip(b, sb))}
        batch_dims = [d for d in out if d in a and d in b]
        m_dims = [d for d in out if d in a and d not in b]
        n_dims = [d for d in out if d in b and d not in a]
        k_dims = [d for d in a if d in b and d not in out]

        def prod(dims: list[str]) -> int:
            return int(np.prod([size[d] for d in dims])) if dims else 1
        lead = prod(batch_dims)
        heads = lead // self.batch if lead % self.batch == 0 and lead >= self.batch else max(1, lead)
        self.emit("einsum", [i], n.output[0], heads=max(1, heads), m=prod(m_dims), k=prod(k_dims), n=prod(n_dims))

    def channel_split(self, i: int) -> bool:
        """Split or Slice of the channels of a 4-D tensor: a `split` or a `slice` kernel."""
        g, n = self.g, self.g.nodes[i]
        x = g.shape(n.input[0])
        if x is None or len(x) != 4:
            return False
        axis = g.attr(n, "axis", 0)
        if n.op_type == "Split":
            outs = [t for t in n.output if t]
            if axis % 4 != 1 or len(outs) < 1:
                return False
            self.emit("split", [i], outs[0], c=int(x[1]), h=int(x[2]), w=int(x[3]), parts=len(outs))
            return True
        y = g.shape(n.output[0])
        axes = g.value(n.input[3]) if len(n.input) > 3 and n.input[3] and g.is_const(n.input[3]) else None
        if y is None or (axes is not None and sorted(int(a) % 4 for a in axes.reshape(-1)) != [1]):
            return False
        if list(y[2:]) != list(x[2:]) or y[1] >= x[1]:
            return False
        self.emit("slice", [i], n.output[0], c=int(x[1]), h=int(x[2]), w=int(x[3]), cout=int(y[1]))
        return True

    def linear(self, i: int) -> None:
        g, n = self.g, self.g.nodes[i]
        a, b = g.shape(n.input[0]), g.shape(n.input[1])
        if a is None or b is None or len(b) != 2:
            raise _Unmapped
        if n.op_type == "Gemm":
            if g.attr(n, "transA", 0):
                raise _Unmapped
            cin, cout = (b[1], b[0]) if g.attr(n, "transB", 0) else (b[0], b[1])
            bias = len(n.input) > 2 and bool(n.input[2])
        else:
            cin, cout, bias = b[0], b[1], False
        tokens = int(np.prod(a[1:-1])) if len(a) > 2 else 1
        if len(a) >= 2 and a[0] != self.batch and a[0] % self.batch == 0:
            tokens *= a[0] // self.batch  # a batch-merged [B*T, K] input
        group, out = [i], n.output[0]
        if self.rules.linear_bias and not bias:
            j = self.free_consumer(out, "Add")
            if j is not None:
                other = [t for t in g.nodes[j].input if t != out]
                if len(other) == 1 and g.is_const(other[0]) and _numel(g.shape(other[0])) == cout:
                    group.append(j)
                    out, bias = g.nodes[j].output[0], True
        act, out = self.fuse_act(group, out, self.rules.linear_acts)
        self.emit("linear", group, out, tokens=tokens, cin=int(cin), cout=int(cout), act=act, bias=bias)

    def matmul(self, i: int) -> None:
        g, n = self.g, self.g.nodes[i]
        a, b = g.shape(n.input[0]), g.shape(n.input[1])
        if a is None or b is None or len(a) < 2 or len(b) < 2:
            raise _Unmapped
        group = [i]
        # fold last-two-axes Transposes and scalar scales feeding the MatMul
        for t in n.input[:2]:
            p = g.producer.get(t)
            while p is not None and p not in self.used and self.foldable_into_matmul(p) and \
                    g.single_consumer(g.nodes[p].output[0]) in (i, *group):
                group.insert(0, p)
                pn = g.nodes[p]
                src = pn.input[0] if not (pn.op_type == "Mul" and self.is_scalar_const(pn.input[0])) else pn.input[1]
                p = g.producer.get(src)
        out = n.output[0]
        j = self.free_consumer(out, ("Mul", "Div")) if self.rules.matmul_scale else None
        if j is not None and any(self.is_scalar_const(x) for x in g.nodes[j].input if x != out):
            group.append(j)
            out = g.nodes[j].output[0]
        lead = int(np.prod(a[:-2])) if len(a) > 2 else self.batch
        heads = lead // self.batch if lead % self.batch == 0 and lead >= self.batch else max(1, lead)
        self.emit("matmul", group, out, heads=max(1, heads), m=int(a[-2]), k=int(a[-1]), n=int(b[-1]))

    def softmax(self, i: int) -> None:
        x = self.g.shape(self.g.nodes[i].input[0])
        if not x:  # unknown shape or a scalar
            raise _Unmapped
        lead = int(np.prod(x[:-2])) if len(x) > 2 else self.batch
        heads = lead // self.batch if lead % self.batch == 0 and lead >= self.batch else max(1, lead)
        self.emit("softmax", [i], self.g.nodes[i].output[0], heads=max(1, heads),
                  m=int(x[-2]) if len(x) >= 2 else 1, n=int(x[-1]))

    def layernorm(self, group: list[int], x_shape: Sequence[int] | None, out: str) -> None:
        if not x_shape:  # unknown shape or a scalar
            raise _Unmapped
        tokens = int(np.prod(x_shape[1:-1])) if len(x_shape) > 2 else 1
        if x_shape[0] != self.batch and x_shape[0] % self.batch == 0:
            tokens *= x_shape[0] // self.batch
        self.emit("layernorm", group, out, tokens=max(1, tokens), dim=int(x_shape[-1]))

    def reduce_mean(self, i: int) -> None:
        g, n = self.g, self.g.nodes[i]
        x = g.shape(n.input[0])
        if x is None:
            raise _Unmapped
        if self.match_layernorm(i):
            return
        axes = g.attr(n, "axes")
        if axes is None and len(n.input) > 1 and n.input[1]:
            v = g.value(n.input[1])
            axes = None if v is None else [int(a) for a in v.reshape(-1)]
        axes = sorted(a % len(x) for a in axes) if axes is not None else list(range(len(x)))
        if len(x) == 4 and axes == [2, 3]:
            self.emit("global_pool", [i], n.output[0], op="avg", c=int(x[1]), h=int(x[2]), w=int(x[3]))
            return
        if 0 in axes:
            raise _Unmapped
        if axes == [1] or axes == [len(x) - 1]:
            return self.reduce(i)
        red = int(np.prod([x[a] for a in axes]))
        self.emit("global_pool", [i], n.output[0], op="avg", c=max(1, _numel(x) // self.batch // red), h=red, w=1)

    def match_layernorm(self, i: int) -> bool:
        """ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, [Mul], [Add] (opset < 17)."""
        g, n = self.g, self.g.nodes[i]
        x = n.input[0]
        subs = [j for j in g.consumers.get(x, []) if g.nodes[j].op_type == "Sub" and
                list(g.nodes[j].input) == [x, n.output[0]] and j not in self.used]
        if not subs:
            return False
        group = [i, subs[0]]
        d = g.nodes[subs[0]].output[0]
        cons = {g.nodes[j].op_type: j for j in g.consumers.get(d, [])}
        if set(cons) != {"Pow", "Div"}:
            return False
        chain = [cons["Pow"]]
        t = g.nodes[cons["Pow"]].output[0]
        for op in ("ReduceMean", "Add", "Sqrt"):
            j = g.single_consumer(t)
            if j is None or g.nodes[j].op_type != op:
                return False
            chain.append(j)
            t = g.nodes[j].output[0]
        if g.single_consumer(t) != cons["Div"]:
            return False
        group += chain + [cons["Div"]]
        out = g.nodes[cons["Div"]].output[0]
        for op in ("Mul", "Add"):
            j = self.free_consumer(out, op)
            if j is not None and any(g.is_const(t) for t in g.nodes[j].input if t != out):
                group.append(j)
                out = g.nodes[j].output[0]
        self.layernorm(group, g.shape(x), out)
        return True

    def feeds_matmul(self, i: int, views: bool = False) -> bool:
        """Is node i a scale or a Transpose that the next activation MatMul absorbs? With `views`,
        also across Reshape-like views (torch's attention: Transpose, Reshape, then the MatMul)."""
        g = self.g
        for _ in range(4 if views else 2):
            j = g.single_consumer(g.nodes[i].output[0])
            if j is None:
                return False
            n = g.nodes[j]
            if n.op_type == "MatMul":
                return not g.is_const(n.input[0]) and not g.is_const(n.input[1])
            view = views and self.is_view(j) and n.op_type != "Transpose"
            if not (self.foldable_into_matmul(j) or view):
                return False
            i = j
        return False

    def fold(self, i: int) -> None:
        """Node i runs inside another kernel that does not list it (a view merged into the view
        before it; a Transpose the MatMul absorbs across views)."""
        self.folded.append(self.name(i))
        self.used.add(i)

    def is_view(self, i: int) -> bool:
        """A node that only relabels the shape of its input: Reshape & co., or a Transpose that
        moves only axes of size 1 (`x.transpose(0, 1)` at batch 1, as torch's attention writes)."""
        n = self.g.nodes[i]
        if n.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            return True
        if n.op_type != "Transpose":
            return False
        shape, perm = self.g.shape(n.input[0]), self.g.attr(n, "perm")
        if shape is None or perm is None or len(perm) != len(shape):
            return False
        big = [a for a in range(len(shape)) if shape[a] != 1]
        return [a for a in perm if shape[a] != 1] == big

    def after_view(self, i: int) -> bool:
        """Is node i a view of a view that feeds only it? Runtimes merge such chains (ORT fuses
        consecutive Reshapes and turns size-1 Transposes into them): one layout kernel, not two."""
        src = self.g.producer.get(self.g.nodes[i].input[0])
        return src is not None and self.is_view(src) and self.g.single_consumer(self.g.nodes[src].output[0]) == i

    def view(self, i: int) -> None:
        """A view node: a `reshape` kernel, or nothing of its own after another view."""
        if self.after_view(i):
            return self.fold(i)
        n = self.g.nodes[i]
        c, h, w = chw(self.g.shape(n.input[0]), self.batch)
        self.emit("reshape", [i], n.output[0], c=c, h=h, w=w)

    def foldable_into_matmul(self, i: int) -> bool:
        n = self.g.nodes[i]
        if n.op_type == "Transpose" and self.rules.matmul_transpose:
            perm = self.g.attr(n, "perm")
            if perm is None or len(perm) < 2:
                return False
            r = len(perm)
            if list(perm[:-2]) == list(range(r - 2)) and list(perm[-2:]) == [r - 1, r - 2]:
                return True  # transA/transB
            # FusedMatMul's transBatch: the first axis moves behind the other batch axes
            # (torch's attention: [tokens, heads, d] -> [heads, tokens, d] before q @ k^T)
            lead = list(range(1, r - 1))
            return r >= 3 and list(perm) in (lead + [0, r - 1], lead + [r - 1, 0])
        if n.op_type in ("Mul", "Div") and self.rules.matmul_scale:
            return self.is_scalar_const(n.input[1]) or (n.op_type == "Mul" and self.is_scalar_const(n.input[0]))
        return False

    def binary(self, i: int) -> None:
        g, n = self.g, self.g.nodes[i]
        if self.foldable_into_matmul(i) and self.feeds_matmul(i):
            return  # the MatMul takes it (ORT's FusedMatMul alpha)
        out = g.shape(n.output[0])
        c, h, w = chw(out, self.batch)
        a, b = g.shape(n.input[0]), g.shape(n.input[1])
        op = "add" if n.op_type in ("Add", "Sub") else "mul"
        broadcast = a != b
        self.emit("elementwise", [i], n.output[0], op=op, c=c, h=h, w=w, broadcast=broadcast)

    def channel_shuffle(self, i: int) -> bool:
        g, n = self.g, self.g.nodes[i]
        x, y = g.shape(n.input[0]), g.shape(n.output[0])
        if x is None or y is None or len(x) != 4 or len(y) != 5:
            return False
        j = self.free_consumer(n.output[0], "Transpose")
        if j is None or list(g.attr(g.nodes[j], "perm") or []) != [0, 2, 1, 3, 4]:
            return False
        k = self.free_consumer(g.nodes[j].output[0], ("Reshape", "Flatten"))
        if k is None or g.shape(g.nodes[k].output[0]) != x:
            return False
        self.emit("channel_shuffle", [i, j, k], g.nodes[k].output[0], c=int(x[1]), h=int(x[2]), w=int(x[3]),
                  groups=int(y[1]))
        return True

    def one(self, i: int) -> None:
        g, n = self.g, self.g.nodes[i]
        op = n.op_type
        if op in ("Sigmoid", "HardSigmoid", "Div", "Mul", "Add", "Erf", "Softplus"):
            # the first node of a multi-node activation (silu, hardswish, gelu, mish)?
            for t in n.input:
                if t and not g.is_const(t):
                    m = self.match_act(t)
                    if not (m and len(m[1]) > 1 and i in m[1]) and op in ("Div", "Mul"):
                        m = self.shared_input_gelu(t)
                    if m and len(m[1]) > 1 and i in m[1]:
                        c, h, w = chw(g.shape(t), self.batch)
                        return self.emit("activation", m[1], m[2], act=m[0], c=c, h=h, w=w)
        if op == "ConvTranspose":
            return self.conv_transpose(i)
        if op == "Pad":
            return self.pad(i)
        if op in ("ReduceL2", "ReduceSum", "ReduceMax"):
            return self.reduce(i)
        if op == "InstanceNormalization":
            return self.instance_norm(i)
        if op == "GroupNormalization":
            x = g.shape(n.input[0])
            c, h, w = chw(x, self.batch)
            return self.emit("groupnorm", [i], n.output[0], c=c, h=h, w=w, groups=int(g.attr(n, "num_groups", 1)))
        if op == "Einsum":
            return self.einsum(i)
        if op in ("Split", "Slice") and self.channel_split(i):
            return
        if op in ("Conv",):
            return self.conv(i)
        if op == "Gemm" or (op == "MatMul" and g.is_const(n.input[1]) and not g.is_const(n.input[0])):
            return self.linear(i)
        if op == "MatMul":
            return self.matmul(i)
        if op == "Softmax":
            return self.softmax(i)
        if op == "LayerNormalization":
            return self.layernorm([i], g.shape(n.input[0]), n.output[0])
        if op == "ReduceMean":
            return self.reduce_mean(i)
        if op in ("MaxPool", "AveragePool"):
            x = g.shape(n.input[0])
            ks = g.attr(n, "kernel_shape")
            if x is None or len(x) < 3 or not ks:
                raise _Unmapped
            strides = g.attr(n, "strides") or [1]
            return self.emit("pool", [i], n.output[0], op="max" if op == "MaxPool" else "avg", c=int(x[1]),
                             h=int(x[2]), w=int(x[3]) if len(x) > 3 else 1, kernel=int(max(ks)), stride=int(strides[0]))
        if op in ("GlobalAveragePool", "GlobalMaxPool"):
            x = g.shape(n.input[0])
            if x is None or len(x) < 3:
                raise _Unmapped
            return self.emit("global_pool", [i], n.output[0], op="avg" if op == "GlobalAveragePool" else "max",
                             c=int(x[1]), h=int(x[2]), w=int(x[3]) if len(x) > 3 else 1)
        if op in ("Add", "Sub", "Mul", "Div") and len(n.input) == 2:
            return self.binary(i)
        if op == "BatchNormalization":  # not after a Conv: a per-channel scale and shift
            c, h, w = chw(g.shape(n.input[0]), self.batch)
            return self.emit("elementwise", [i], n.output[0], op="mul", c=c, h=h, w=w, broadcast=True)
        if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            if op == "Reshape" and self.channel_shuffle(i):
                return
            nxt = g.single_consumer(n.output[0])
            if op == "Reshape" and nxt is not None and g.nodes[nxt].op_type == "InstanceNormalization":
                return  # the start of torch's GroupNorm: the InstanceNormalization's group takes it
            return self.view(i)
        if op in LAYOUT_OPS and n.input and not g.is_const(n.input[0]):
            # Split/Slice/Gather (q/k/v separation, ShuffleNet's channel split, class-token pick), Expand,
            # Tile: data movement with no arithmetic, a `reshape`-like layout kernel of the copied size
            t = n.input[0] if op in ("Split",) else n.output[0]
            c, h, w = chw(g.shape(t), self.batch)
            return self.emit("reshape", [i], n.output[0], c=max(1, c), h=max(1, h), w=max(1, w))
        if op == "Transpose":
            if self.foldable_into_matmul(i):
                if self.feeds_matmul(i):
                    return  # the MatMul's group takes it
                if self.feeds_matmul(i, views=True):
                    return self.fold(i)
            if self.is_view(i):  # only size-1 axes move: the bytes stay in order, a reshape
                return self.view(i)
            c, h, w = chw(g.shape(n.input[0]), self.batch)
            return self.emit("transpose", [i], n.output[0], c=c, h=h, w=w)
        if op == "Concat" and len([t for t in n.input if t]) >= 2:
            ins = [t for t in n.input if t]
            c, h, w = chw(g.shape(n.output[0]), self.batch)
            hw = max(h * w, 1)
            first = _numel(g.shape(ins[0])) // self.batch // hw
            rest = sum(_numel(g.shape(t)) for t in ins[1:]) // self.batch // hw
            if first < 1 or rest < 1:
                raise _Unmapped
            return self.emit("concat", [i], n.output[0], c1=first, c2=rest, h=h, w=w, n=len(ins))
        if op in ("Resize", "Upsample"):
            x, y = g.shape(n.input[0]), g.shape(n.output[0])
            if x is None or y is None or len(x) != 4:
                raise _Unmapped
            mode = g.attr(n, "mode", "nearest")
            return self.emit("resize", [i], n.output[0], c=int(x[1]), h=int(x[2]), w=int(x[3]),
                             scale=max(1, int(round(y[2] / x[2]))), mode="nearest" if mode == "nearest" else "linear")
        m = None
        if op in ("Clip", "PRelu", *SIMPLE_ACTS):
            # a stand-alone activation: reuse the matcher from the producer's tensor
            m = self.match_act(n.input[0])
            if m and i in m[1]:
                c, h, w = chw(g.shape(n.input[0]), self.batch)
                return self.emit("activation", m[1], m[2], act=m[0], c=c, h=h, w=w)
            if op in SIMPLE_ACTS or op in ("Clip", "PRelu"):
                c, h, w = chw(g.shape(n.input[0]), self.batch)
                act = SIMPLE_ACTS.get(op) or ("prelu" if op == "PRelu" else "relu6")
                return self.emit("activation", [i], n.output[0], act=act, c=c, h=h, w=w)
        raise _Unmapped

    def run(self) -> Detection:
        g = self.g
        order = list(nx.topological_sort(g.graph))
        for i in order:
            if i in self.used:
                continue
            n = g.nodes[i]
            outs = [t for t in n.output if t]
            if n.op_type in FREE_OPS or (outs and all(g.is_const(t) for t in outs)):
                self.folded.append(self.name(i))
                self.used.add(i)
                continue
            try:
                self.one(i)
            # the expected failures only: no mapping applies (_Unmapped: unknown op type, unknown or
            # unusable shapes), parameters out of the kernel vocabulary's range (KernelSpecError and
            # other ValueErrors) or a zero-size dimension; a TypeError or IndexError is a bug here
            except (_Unmapped, ValueError, ZeroDivisionError):
                if i not in self.used:
                    self.unknown_op(i)
        if g.quantization is not None:
            self.kernels = [_int8_form(k) for k in self.kernels]
        return Detection(self.kernels, self.unknown, self.folded, g.depth(), g)

    def unknown_op(self, i: int) -> None:
        g, n = self.g, self.g.nodes[i]
        ins = [g.info.get(t) for t in n.input if t]
        outs = [g.info.get(t) for t in n.output if t]
        nbytes = sum(t.nbytes for t in ins + outs if t is not None and t.shape is not None)
        try:
            flops = node_flops(n, g.info)
        except Exception:
            flops = 0.0
        self.unknown.append(UnknownOp(self.name(i), n.op_type, float(flops), float(nbytes),
                                      [list(t.shape) if t is not None and t.shape is not None else None for t in ins],
                                      [list(t.shape) if t is not None and t.shape is not None else None for t in outs]))
        self.used.add(i)


def _int8_form(k: DetectedKernel) -> DetectedKernel:
    """A kernel of a quantized graph as its fp32 original is detected. The quantizer folds
    BatchNorm into the convolution before quantizing (onnxruntime does the same to an fp32
    graph when it loads it), so a quantized conv cannot say whether it had one; it reads as
    the common form, with BatchNorm. An int8 table measures both forms as the same
    QLinearConv, so the choice changes no int8 time."""
    if "bn" in k.spec.params and not k.spec.params["bn"]:
        k.spec = KernelSpec.make(k.spec.kind, **dict(k.spec.params, bn=True))
    return k


def detect_kernels(graph_or_model: OnnxGraph | str | os.PathLike[str] | onnx.ModelProto, batch: int = 1, rules: FusionRules | None = None) -> Detection:
    """Kernels, unknown ops and folded nodes of an ONNX model (path, ModelProto or OnnxGraph)."""
    g = graph_or_model if isinstance(graph_or_model, OnnxGraph) else load_graph(graph_or_model, batch)
    return _Detector(g, rules or DEFAULT_RULES).run()


# ---- onnxruntime's own view ------------------------------------------------------------
def _ort_session(model: onnx.ModelProto, optimized_path: str | None = None, profile_prefix: str | None = None,
                 threads: int = 1, providers: Sequence[str] = ("CPUExecutionProvider",)) -> ort.InferenceSession:
    # lazy: loads onnxruntime (slow to import) only when this runs
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model.SerializeToString(), so, providers=list(providers))


def _strip(name: str) -> str:
    return name[:-6] if name.endswith("_nchwc") else name


# onnxruntime's fused-activation names: the ONNX ops, Clip as relu6 (the only clip it fuses), "" = none
_ORT_ACTS = {**SIMPLE_ACTS, "Clip": "relu6", "": "none"}


@dataclass
class FusionReport:
    """Where the detector's groups and onnxruntime's optimized graph disagree.

    Convolutions are compared as multisets of (activation, has residual Add): ORT's NCHWc
    transformer renames their tensors, but keeps the fused activation and the Sum input.
    Other kernels are compared by the tensors fused inside them: a tensor that survives in
    ORT's optimized graph is one ORT computes separately.
    """
    kernels: int
    conv_only_ours: dict[str, int]  # {(act, residual): count} we fuse and ORT does not
    conv_only_ort: dict[str, int]   # ... and the reverse
    split_by_ort: list[tuple[str, str]]   # (kernel, tensor ORT keeps inside one of our groups)
    ort_nodes: int
    ort_ops: dict[str, int]

    @property
    def agrees(self) -> bool:
        return not self.conv_only_ours and not self.conv_only_ort and not self.split_by_ort


def compare_with_ort(model_or_path: str | os.PathLike[str] | onnx.ModelProto, batch: int = 1, rules: FusionRules | None = None,
                     optimized_path: str | None = None) -> FusionReport:
    """Save ORT's ORT_ENABLE_ALL model and compare its fusions with the detected kernel groups."""
    from collections import Counter
    g = load_graph(model_or_path, batch)
    det = detect_kernels(g, batch, rules)
    with tempfile.TemporaryDirectory() as tmp:
        path = optimized_path or os.path.join(tmp, "optimized.onnx")
        _ort_session(g.model, path)
        opt = onnx.load(path, load_external_data=False)
    alive = {_strip(t) for n in opt.graph.node for t in n.output}
    ops: dict[str, int] = {}
    ort_conv: Counter[tuple[str, bool]] = Counter()
    for n in opt.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
        if n.op_type in ("Conv", "FusedConv", "NhwcConv"):
            act = ""
            for a in n.attribute:
                if a.name == "activation":
                    act = a.s.decode()
            residual = len(n.input) > 3 and bool(n.input[3])
            ort_conv[(_ORT_ACTS.get(act, act.lower()), residual)] += 1
    ours: Counter[tuple[str, bool]] = Counter()
    split: list[tuple[str, str]] = []
    for k in det.kernels:
        if k.spec.kind in ("conv", "conv_add"):
            ours[(k.spec.params["act"], k.spec.kind == "conv_add")] += 1
            continue
        for t in k.internal:
            if t in alive:
                split.append((f"{k.spec.kind} {'+'.join(k.ops)}", t))
    only_ours = {f"{a}{'+add' if r else ''}": c for (a, r), c in (ours - ort_conv).items()}
    only_ort = {f"{a}{'+add' if r else ''}": c for (a, r), c in (ort_conv - ours).items()}
    return FusionReport(len(det.kernels), only_ours, only_ort, split, len(opt.graph.node), ops)


def ort_kernel_timings(model_or_path: str | os.PathLike[str] | onnx.ModelProto, batch: int = 1, runs: int = 20, rules: FusionRules | None = None,
                       threads: int = 1) -> tuple[Detection, list[float], float]:
    """In-context times of the detected kernels from ORT's per-node profiler.

    Returns the detection, the mean milliseconds per detected kernel (0 where ORT ran
    nothing of it, e.g. a folded Reshape) and the milliseconds no kernel could claim.
    """
    g = load_graph(model_or_path, batch)
    det = detect_kernels(g, batch, rules)
    owner: dict[str, int] = {}
    for idx, k in enumerate(det.kernels):
        for t in [k.output, *k.internal]:
            owner[t] = idx
    times = [0.0] * len(det.kernels)
    unclaimed = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        opt_path = os.path.join(tmp, "opt.onnx")
        sess = _ort_session(g.model, opt_path, profile_prefix=os.path.join(tmp, "prof"), threads=threads)
        opt = onnx.load(opt_path, load_external_data=False)
        feeds = {}
        for inp in sess.get_inputs():
            shape = [d if isinstance(d, int) else batch for d in inp.shape]
            dtype = np.float32 if "float" in inp.type else np.int64
            feeds[inp.name] = np.zeros(shape, dtype)
        for _ in range(runs + 2):
            sess.run(None, feeds)
        prof = sess.end_profiling()
        events = json.load(open(prof))
    node_out = {n.name: [_strip(t) for t in n.output] + ([_strip(n.name)] if n.name.endswith("_nchwc") else [])
                for n in opt.graph.node}
    consumers: dict[str, list[str]] = {}
    for n in opt.graph.node:
        for t in n.input:
            consumers.setdefault(_strip(t), []).append(n.name)

    by_node = {nm: idx for idx, k in enumerate(det.kernels) for nm in k.nodes}

    def kernel_of(name: str, hops: int = 6) -> int | None:
        # A node ORT made up (the Gemm of a MatMul+Add on 3-D input, between two Reshapes of its
        # own; a Split for three Gathers) has outputs no kernel owns. ORT names a fused node after
        # the node it replaced ("<MatMul name>/MatMulAddFusion"); failing that, it belongs to the
        # kernel downstream.
        for _ in range(hops):
            outs = node_out.get(name, [])
            idx = next((owner[t] for t in outs if t in owner), None)
            if idx is not None:
                return idx
            stem = _strip(name)
            while stem and stem not in by_node and "/" in stem:
                stem = stem.rsplit("/", 1)[0]
            if stem in by_node:
                return by_node[stem]
            nxt = {c for t in outs for c in consumers.get(t, [])}
            if len(nxt) != 1:
                return None
            name = nxt.pop()
        return None

    counted: dict[str, list[float]] = {}
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        counted.setdefault(ev["name"][: -len("_kernel_time")], []).append(ev["dur"] / 1000.0)
    for name, durs in counted.items():
        ms = float(np.mean(durs[2:] if len(durs) > 2 else durs))
        kernel = kernel_of(name)
        if kernel is None:
            unclaimed += ms
        else:
            times[kernel] += ms
    return det, times, unclaimed


__all__ = ["FusionRules", "FUSION_RULES", "DEFAULT_RULES", "rules_for", "DetectedKernel", "UnknownOp",
           "Detection", "detect_kernels", "chw", "compare_with_ort", "FusionReport", "ort_kernel_timings"]
