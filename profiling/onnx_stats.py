"""FLOPs, parameters and memory traffic of ONNX graphs, node by node.

Profiling fills the FLOPs and bytes columns of a table with these counts, and the
predictor computes its kernel features with the same code, so both sides of the
pipeline always agree on what "FLOPs" means. FLOPs count a multiply-add as two.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, shape_inference

Shape = tuple[int, ...]

# Operations per output element for element-wise work; a rough but consistent scale.
_ELEMENTWISE_COST = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Max": 1, "Min": 1, "Pow": 1, "Sqrt": 1, "Neg": 1,
    "Relu": 1, "LeakyRelu": 2, "PRelu": 2, "Clip": 2, "Abs": 1, "Reciprocal": 1, "Where": 1,
    "Sigmoid": 4, "HardSigmoid": 3, "HardSwish": 4, "Tanh": 6, "Exp": 4, "Log": 4, "Erf": 6,
    "Gelu": 8, "FastGelu": 8, "BiasGelu": 9, "Softplus": 6, "Mish": 10, "Elu": 4, "Selu": 4,
    "QuickGelu": 5, "Swish": 5,
}


@dataclass
class TensorInfo:
    shape: Shape | None
    elem_bytes: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape is not None else 0

    @property
    def nbytes(self) -> int:
        return self.numel * self.elem_bytes


@dataclass
class NodeStats:
    name: str
    op_type: str
    flops: float
    params: int
    bytes: float
    input_shapes: list[Shape | None] = field(default_factory=list)
    output_shapes: list[Shape | None] = field(default_factory=list)


@dataclass
class ModelStats:
    flops: float
    params: int
    bytes: float
    nodes: list[NodeStats]

    @property
    def arithmetic_intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0


def _elem_bytes(elem_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:  # undefined or exotic types: assume fp32
        return 4


def fix_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """Replace symbolic leading dimensions of graph inputs and outputs with `batch` (in place)."""
    initializer_names = {t.name for t in model.graph.initializer}
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name in initializer_names or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        for i, dim in enumerate(dims):
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                if i == 0:
                    dim.Clear()
                    dim.dim_value = batch
    return model


def infer_tensor_info(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Shape-infer `model` and return the shape and element size of every named tensor."""
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:
        inferred = model
    info: dict[str, TensorInfo] = {}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        if not value.type.HasField("tensor_type"):
            continue
        tt = value.type.tensor_type
        shape: Shape | None = None
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            shape = tuple(dims) if all(d >= 0 for d in dims) else None
        info[value.name] = TensorInfo(shape, _elem_bytes(tt.elem_type))
    for init in graph.initializer:
        info[init.name] = TensorInfo(tuple(init.dims), _elem_bytes(init.data_type))
    for node in graph.node:  # Constant nodes carry their value as an attribute
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    info[node.output[0]] = TensorInfo(tuple(attr.t.dims), _elem_bytes(attr.t.data_type))
    return info


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def node_flops(node: onnx.NodeProto, info: dict[str, TensorInfo]) -> float:
    """FLOPs of one node, from the shapes in `info`; 0 where shapes are unknown."""
    op = node.op_type

    def shape(name: str) -> Shape | None:
        t = info.get(name)
        return t.shape if t else None

    out = shape(node.output[0]) if node.output else None
    out_numel = int(np.prod(out)) if out is not None else 0
    if op in ("Conv", "FusedConv", "ConvTranspose", "QLinearConv", "NhwcConv"):
        w = shape(node.input[1]) if len(node.input) > 1 else None
        if w is None or out is None:
            return 0.0
        if op == "ConvTranspose":
            x = shape(node.input[0])
            if x is None:
                return 0.0
            macs = int(np.prod(x)) * int(np.prod(w[1:]))
        else:
            macs = out_numel * int(np.prod(w[1:]))  # w = [Cout, Cin/groups, kh, kw]
        bias = out_numel if len(node.input) > 2 and node.input[2] else 0
        return 2.0 * macs + bias
    if op in ("Gemm", "MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul"):
        a = shape(node.input[0])
        if a is None or out is None or not a:
            return 0.0
        k = a[-1] if not (op == "Gemm" and _attr(node, "transA", 0)) else a[0]
        bias = out_numel if op == "Gemm" and len(node.input) > 2 and node.input[2] else 0
        return 2.0 * out_numel * k + bias
    if op == "Einsum" and len(node.input) == 2:
        # a contraction: every output element sums over the letters of the inputs that the output drops
        eq = _attr(node, "equation", b"")
        eq = (eq.decode() if isinstance(eq, bytes) else str(eq)).replace(" ", "")
        a, b = shape(node.input[0]), shape(node.input[1])
        if "->" not in eq or "." in eq or a is None or b is None or out is None:
            return 0.0
        lhs, rhs = eq.split("->")
        la, lb = lhs.split(",")
        sizes = {**dict(zip(la, a)), **dict(zip(lb, b))}
        k = int(np.prod([sizes[d] for d in set(la) | set(lb) if d not in rhs])) if sizes else 1
        return 2.0 * out_numel * k
    if op == "BatchNormalization":
        return 2.0 * out_numel
    if op in ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
              "InstanceNormalization", "GroupNormalization"):
        return 8.0 * out_numel
    if op == "Softmax" or op == "LogSoftmax":
        return 5.0 * out_numel
    if op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = _attr(node, "kernel_shape", [1])
        return float(out_numel * int(np.prod(kernel)))
    if op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2"):
        x = shape(node.input[0])
        return float(np.prod(x)) if x is not None else 0.0
    if op == "Resize" or op == "Upsample":
        mode = _attr(node, "mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        return float(out_numel * (1 if mode == "nearest" else 4))
    if op in _ELEMENTWISE_COST:
        return float(out_numel * _ELEMENTWISE_COST[op])
    return 0.0


def model_stats(model: onnx.ModelProto, info: dict[str, TensorInfo] | None = None) -> ModelStats:
    """Per-node and total FLOPs, parameter count and bytes moved (inputs, weights and outputs)."""
    info = info if info is not None else infer_tensor_info(model)
    initializer_names = {t.name for t in model.graph.initializer}
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    nodes = []
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        ins = [info.get(n) for n in node.input if n]
        outs = [info.get(n) for n in node.output if n]
        nbytes = sum(t.nbytes for t in ins + outs if t is not None)
        nparams = sum(info[n].numel for n in node.input if n in initializer_names)
        nodes.append(NodeStats(
            name=node.name, op_type=node.op_type, flops=node_flops(node, info), params=nparams,
            bytes=float(nbytes),
            input_shapes=[t.shape if t else None for t in ins],
            output_shapes=[t.shape if t else None for t in outs],
        ))
    return ModelStats(
        flops=float(sum(n.flops for n in nodes)), params=params,
        bytes=float(sum(n.bytes for n in nodes)), nodes=nodes,
    )


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


__all__ = ["TensorInfo", "NodeStats", "ModelStats", "fix_batch", "infer_tensor_info",
           "node_flops", "model_stats", "conv_output_size"]
