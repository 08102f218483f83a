"""ONNX → a networkx graph IR with inferred shapes.

`load_graph(model_or_path, batch)` reads an ONNX model of opset 11 to 21, sets dynamic
batch dimensions to the target's batch size, infers every tensor's shape and returns an
`OnnxGraph`: a `networkx.DiGraph` whose nodes are the ONNX node indices (edges follow the
tensors), plus the tensor shapes, producers, consumers and the set of tensors that are
constant at run time (initializers, `Constant` outputs, `Shape` outputs of static tensors
and everything computed only from those: onnxruntime folds them when it loads the model).

Where ONNX shape inference stops (shapes computed at run time, such as the "same" padding of
TF-ported models: Shape → Cast → Ceil → ... → Pad), onnxruntime's own optimizer constant-folds
the graph (`_runtime_fold`, ORT_ENABLE_BASIC) and its folded values are fed back to inference;
a small numpy folder covers graphs onnxruntime cannot load.

A quantized model (QDQ or QOperator form) is read as the float graph it was made from
(`predictors.quantized`); `OnnxGraph.quantization` says how it was quantized.

Shape inference runs on a copy of the graph whose large initializers are replaced by
declared inputs, so a 100 MB ResNet-50 file is not serialised again for the inference.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from profiling.onnx_stats import TensorInfo, _elem_bytes
from predictors.errors import PredictorStageError

from .quantized import QuantizationInfo, dequantize_graph

MIN_OPSET, MAX_OPSET = 11, 21
# Ops that cost nothing at run time: onnxruntime removes them when it loads the model.
FREE_OPS = {"Identity", "Dropout", "Constant", "ConstantOfShape", "Shape", "Size"}


class GraphError(PredictorStageError, ValueError):
    """The ONNX model cannot be read or its shapes cannot be resolved; the message says why."""


@dataclass
class OnnxGraph:
    model: onnx.ModelProto
    nodes: list[onnx.NodeProto]
    graph: nx.DiGraph
    info: dict[str, TensorInfo]
    producer: dict[str, int]
    consumers: dict[str, list[int]]
    const: set[str]
    initializers: dict[str, onnx.TensorProto]
    opset: int
    batch: int
    outputs: set[str] = field(default_factory=set)
    # How the model was quantized (None: a float model); the graph is its float original.
    quantization: QuantizationInfo | None = None
    _values: dict[str, np.ndarray | None] = field(default_factory=dict)  # None: not a constant

    # ---- small helpers shared by the detector ----------------------------------------
    def shape(self, tensor: str) -> tuple[int, ...] | None:
        t = self.info.get(tensor)
        return t.shape if t is not None else None

    def value(self, tensor: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant output), else None."""
        if tensor in self._values:
            return self._values[tensor]
        val = None
        if tensor in self.initializers:
            try:
                val = numpy_helper.to_array(self.initializers[tensor])
            except Exception:  # external data that is not at hand
                val = None
        elif tensor in self.producer:
            node = self.nodes[self.producer[tensor]]
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        val = numpy_helper.to_array(a.t)
                    elif a.name in ("value_float", "value_int"):
                        val = np.array(helper.get_attribute_value(a))
                    elif a.name in ("value_floats", "value_ints"):
                        val = np.array(helper.get_attribute_value(a))
        self._values[tensor] = val
        return val

    def single_consumer(self, tensor: str) -> int | None:
        """The index of the only node reading `tensor`'s data, if it is not also a graph output
        (a Shape or Size node reads only the static shape, which the runtime folds to a constant)."""
        cons = [c for c in self.consumers.get(tensor, []) if self.nodes[c].op_type not in ("Shape", "Size")]
        if len(cons) == 1 and tensor not in self.outputs:
            return cons[0]
        return None

    def is_const(self, tensor: str) -> bool:
        return tensor in self.const

    def attr(self, node: onnx.NodeProto, name: str, default: Any = None) -> Any:
        for a in node.attribute:
            if a.name == name:
                v = helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    def depth(self) -> int:
        """Number of nodes on the longest path (a graph feature)."""
        return int(nx.dag_longest_path_length(self.graph)) + 1 if self.graph.number_of_nodes() else 0


def _load_mmap(path: Path) -> onnx.ModelProto:
    """onnx.load without the extra copy of the file: parse straight from a memory map (half the
    time on a 100 MB model), then load external data as onnx.load does."""
    import mmap
    model = onnx.ModelProto()
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ValueError("empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                model.ParseFromString(view)
            finally:
                view.release()
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        # lazy: loads onnx (slow to import) only when this runs
        from onnx.external_data_helper import load_external_data_for_model
        load_external_data_for_model(model, str(path.parent))
    return model


def _read(model_or_path: str | os.PathLike[str] | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, "<model>"
    path = Path(os.fspath(model_or_path))
    if not path.exists():
        raise GraphError(f"ONNX file {path} does not exist")
    try:
        return _load_mmap(path), str(path)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise GraphError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e}); "
                         "re-export it with torch.onnx.export") from None


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _set_dims(model: onnx.ModelProto, batch: int, where: str) -> None:
    """Batch dims (first axis) of graph inputs to `batch`; any other dynamic dim is an error."""
    inits = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in inits or not value.type.HasField("tensor_type"):
            continue
        tt = value.type.tensor_type
        if not tt.HasField("shape"):
            raise GraphError(f"{where}: input {value.name!r} has no shape; export it with a fixed input shape")
        for i, dim in enumerate(tt.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if i == 0:
                dim.Clear()
                dim.dim_value = batch
            else:
                name = dim.dim_param or "?"
                raise GraphError(
                    f"{where}: input {value.name!r} has a dynamic dimension {name!r} at axis {i}; only the "
                    "batch axis may be dynamic: export with a fixed input size (e.g. 1x3x224x224)")
    for value in model.graph.output:  # outputs: batch axis too, other dims are re-inferred
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            if len(dims) and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
                dims[0].Clear()
                dims[0].dim_value = batch


def _light_copy(model: onnx.ModelProto, keep_numel: int = 4096) -> onnx.ModelProto:
    """The model without large float initializers (declared as inputs instead): fast to infer."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    g = light.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    declared = {v.name for v in model.graph.input}
    for init in model.graph.initializer:
        numel = int(np.prod(init.dims)) if len(init.dims) else 1
        if numel <= keep_numel or init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            g.initializer.append(init)
        elif init.name not in declared:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


def _shapes_of(model: onnx.ModelProto) -> dict[str, tuple[int, ...] | None]:
    out = {}
    for value in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = value.type.tensor_type
        if value.type.HasField("tensor_type") and tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            out[value.name] = tuple(dims) if all(d >= 0 for d in dims) else None
    for init in model.graph.initializer:
        out[init.name] = tuple(init.dims)
    return out


def _shape_inputs_needed(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...] | None]) -> set[str]:
    """The inputs of the nodes that still have an output without a shape (and are not
    themselves known constants): the values that would let inference go on."""
    inits = {t.name for t in model.graph.initializer}
    needed: set[str] = set()
    for n in model.graph.node:
        if any(shapes.get(o) is None for o in n.output if o):
            needed.update(t for t in n.input if t and t not in inits)
    return needed


def _runtime_fold(light: onnx.ModelProto, needed: set[str], max_numel: int = 4096) -> dict[str, np.ndarray]:
    """Let onnxruntime's own optimizer constant-fold the graph (ORT_ENABLE_BASIC: constant
    folding, Shape of a static tensor, redundant nodes) and return the folded values of the
    `needed` tensors: the run-time "same" padding of TF-ported models (Shape → Cast → Ceil →
    ... → Clip → Pad) and any other shape arithmetic the runtime can evaluate, with no hand-written
    op list to grow. The light copy declares the large weights as inputs, so nothing but shape
    arithmetic folds, and the detector still sees the graph as exported (the runtime's fusions at
    higher levels are the detector's business, keyed by `FusionRules`). Empty when onnxruntime
    cannot load the graph (an op it lacks): the numpy folder then tries."""
    import tempfile
    try:
        # lazy: loads onnxruntime (slow to import) only when this runs
        import onnxruntime as ort
    except ImportError:
        return {}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4
    # The needed tensors become graph outputs: the optimizer keeps them (as folded initializers)
    # instead of fusing them away (its Pad→Conv fusion would absorb the very pads we are after).
    probe = onnx.ModelProto()
    probe.CopyFrom(light)
    produced = {o for n in light.graph.node for o in n.output}
    present = {v.name for v in light.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in sorted(needed & produced - present))
    with tempfile.TemporaryDirectory(prefix="hwnas-fold-") as tmp:
        so.optimized_model_filepath = os.path.join(tmp, "folded.onnx")
        try:
            ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
            optimized = onnx.load(so.optimized_model_filepath, load_external_data=False)
        except Exception:  # an op or type onnxruntime lacks, an invalid graph: not this step's to report
            return {}
    out: dict[str, np.ndarray] = {}
    for init in optimized.graph.initializer:
        if init.name in needed and init.data_location != onnx.TensorProto.EXTERNAL \
                and (int(np.prod(init.dims)) if len(init.dims) else 1) <= max_numel:
            try:
                out[init.name] = numpy_helper.to_array(init)
            except Exception:
                continue
    return out


def _fold_shape_arithmetic(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...] | None], known: dict[str, np.ndarray],
                           needed: set[str]) -> dict[str, np.ndarray]:
    """Evaluate the small integer subgraphs (Shape, Gather, Concat, ...) that feed Reshape & co.
    with numpy: the fallback when onnxruntime cannot load the graph (`_runtime_fold`).

    Returns the newly computed tensors among `needed`.
    """
    vals: dict[str, np.ndarray] = dict(known)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            continue  # weights kept outside the file (profiling builders): never shape data
        if init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) or int(np.prod(init.dims)) <= 16:
            try:
                vals[init.name] = numpy_helper.to_array(init)
            except Exception:
                continue
    new: dict[str, np.ndarray] = {}

    def attr(n: onnx.NodeProto, name: str, default: Any = None) -> Any:
        for a in n.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    for n in model.graph.node:
        op, ins = n.op_type, list(n.input)
        try:
            if op == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        vals[n.output[0]] = numpy_helper.to_array(a.t)
                    elif a.name in ("value_int", "value_ints", "value_float", "value_floats"):
                        vals[n.output[0]] = np.array(helper.get_attribute_value(a))
                continue
            if op == "Shape":
                shp = shapes.get(ins[0])
                if shp is None:
                    continue
                start, end = attr(n, "start", 0), attr(n, "end", None)
                val = np.array(shp[start:end] if end is not None else shp[start:], dtype=np.int64)
            else:
                if not all(t in vals for t in ins if t):
                    continue
                # any failure below (a missing input, a shape that does not fit) skips the node
                x: list[Any] = [vals[t] if t else None for t in ins]
                if op == "Gather":
                    val = np.take(x[0], x[1], axis=attr(n, "axis", 0))
                elif op == "Unsqueeze":
                    axes = attr(n, "axes") if len(ins) < 2 else list(x[1].reshape(-1))
                    val = x[0]
                    for a in sorted(int(a) % (val.ndim + len(axes)) for a in axes):
                        val = np.expand_dims(val, a)
                elif op == "Squeeze":
                    axes = attr(n, "axes") if len(ins) < 2 else (list(x[1].reshape(-1)) if x[1] is not None else None)
                    val = np.squeeze(x[0], axis=tuple(int(a) for a in axes) if axes is not None else None)
                elif op == "Concat":
                    val = np.concatenate([np.atleast_1d(v) for v in x], axis=attr(n, "axis", 0))
                elif op == "Slice":
                    data, starts, ends = x[0], x[1], x[2]
                    axes = x[3] if len(x) > 3 and x[3] is not None else np.arange(len(starts))
                    steps = x[4] if len(x) > 4 and x[4] is not None else np.ones(len(starts), np.int64)
                    sl = [slice(None)] * data.ndim
                    for s0, e0, a, st in zip(starts, ends, axes, steps):
                        sl[int(a)] = slice(int(s0), int(e0), int(st))
                    val = data[tuple(sl)]
                elif op == "Cast":
                    val = x[0].astype(helper.tensor_dtype_to_np_dtype(attr(n, "to")))
                elif op in ("Add", "Sub", "Mul", "Div", "Equal", "Where", "Max", "Min", "Mod", "Less", "Greater"):
                    f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Max": np.maximum,
                         "Min": np.minimum, "Equal": np.equal, "Less": np.less, "Greater": np.greater,
                         "Mod": np.fmod if attr(n, "fmod", 0) else np.mod}
                    if op == "Div":
                        val = x[0] // x[1] if x[0].dtype.kind in "iu" else x[0] / x[1]
                    elif op == "Where":
                        val = np.where(x[0], x[1], x[2])
                    else:
                        val = f[op](x[0], x[1])
                elif op == "Reshape":
                    val = x[0].reshape([d if d != 0 else x[0].shape[i] for i, d in enumerate(x[1])])
                elif op == "Transpose":
                    perm = attr(n, "perm")
                    val = np.transpose(x[0], perm)
                elif op in ("Neg", "Abs", "Floor", "Ceil", "Sqrt", "Identity"):
                    unary: dict[str, Callable[..., Any]] = {
                        "Neg": np.negative, "Abs": np.abs, "Floor": np.floor, "Ceil": np.ceil,
                        "Sqrt": np.sqrt, "Identity": np.asarray}
                    val = unary[op](x[0])
                elif op == "Range":
                    val = np.arange(x[0], x[1], x[2])
                elif op == "ConstantOfShape":
                    t = attr(n, "value")
                    fill = numpy_helper.to_array(t).reshape(-1)[0] if t is not None else np.float32(0)
                    val = np.full(tuple(int(d) for d in x[0]), fill)
                    if val.size > 4096:
                        continue
                else:
                    continue
            val = np.asarray(val)
            out = n.output[0]
            vals[out] = val
            if out not in known and val.size <= 4096:
                new[out] = val
        except Exception:
            continue
    return {k: v for k, v in new.items() if k in needed}


def load_graph(model_or_path: str | os.PathLike[str] | onnx.ModelProto, batch: int = 1) -> OnnxGraph:
    """Read, batch-fix and shape-infer an ONNX model; raise GraphError with the fix on failure."""
    model, where = _read(model_or_path)
    opset = _opset(model)
    if opset == 0:
        raise GraphError(f"{where}: the model imports no default-domain opset; it is not a valid ONNX model")
    if opset > MAX_OPSET or opset < MIN_OPSET:
        target = MAX_OPSET if opset > MAX_OPSET else MIN_OPSET
        try:
            # lazy: loads onnx (slow to import) only when this runs
            from onnx import version_converter
            model = version_converter.convert_version(model, target)
        except Exception as e:
            raise GraphError(f"{where}: opset {opset} is outside the supported {MIN_OPSET}-{MAX_OPSET} and "
                             f"converting it to {target} failed ({e}); re-export with opset_version=17") from None
        opset = target
    else:
        model = onnx.ModelProto.FromString(model.SerializeToString()) if isinstance(model_or_path, onnx.ModelProto) else model
    model, quantization = dequantize_graph(model)  # an int8 graph reads as its float original
    _set_dims(model, batch, where)

    light = _light_copy(model)
    folded: dict[str, np.ndarray] = {}
    for _ in range(5):  # infer; where shapes stay unknown, let the runtime fold, then numpy; repeat
        try:
            inferred = shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
        except Exception as e:
            raise GraphError(f"{where}: ONNX shape inference failed ({e}); check the model with onnx.checker") from None
        shapes = _shapes_of(inferred)
        needed = _shape_inputs_needed(light, shapes)
        if not needed:
            break
        new = {k: v for k, v in _runtime_fold(light, needed).items() if k not in folded}
        if not new:
            new = _fold_shape_arithmetic(light, shapes, folded, needed)
        if not new:
            break
        for name, val in new.items():
            light.graph.initializer.append(numpy_helper.from_array(val, name))
            folded[name] = val

    info: dict[str, TensorInfo] = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if not value.type.HasField("tensor_type"):
            continue
        tt = value.type.tensor_type
        shape = None
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            shape = tuple(dims) if all(d >= 0 for d in dims) else None
        info[value.name] = TensorInfo(shape, _elem_bytes(tt.elem_type))
    initializers = {t.name: t for t in model.graph.initializer}
    for name, init in initializers.items():
        info[name] = TensorInfo(tuple(init.dims), _elem_bytes(init.data_type))
    nodes = list(model.graph.node)
    for node in nodes:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    info[node.output[0]] = TensorInfo(tuple(a.t.dims), _elem_bytes(a.t.data_type))

    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    g = nx.DiGraph()
    for i, node in enumerate(nodes):
        g.add_node(i, op=node.op_type, name=node.name or f"{node.op_type}_{i}")
        for out in node.output:
            if out:
                producer[out] = i
    for i, node in enumerate(nodes):
        for inp in node.input:
            if not inp:
                continue
            consumers.setdefault(inp, []).append(i)
            if inp in producer:
                g.add_edge(producer[inp], i, tensor=inp)
    # Node names must be unique and non-empty for reporting.
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        name = node.name or f"{node.op_type}_{i}"
        if name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        g.nodes[i]["name"] = name

    # Tensors that are constant at run time (ORT folds the nodes that compute them).
    const = set(initializers)
    try:
        order = list(nx.topological_sort(g))
    except nx.NetworkXUnfeasible:
        raise GraphError(f"{where}: the graph has a cycle; it is not a valid ONNX model") from None
    for i in order:
        node = nodes[i]
        ins = [t for t in node.input if t]
        if node.op_type == "Constant" or (node.op_type in ("Shape", "Size") and ins and info.get(ins[0])
                                          and info[ins[0]].shape is not None) \
                or (ins and all(t in const for t in ins) and node.op_type not in ("RandomNormal", "RandomUniform")):
            const.update(t for t in node.output if t)
    missing = [t for t in (v.name for v in model.graph.input) if t not in initializers and info.get(t) is None]
    if missing:
        raise GraphError(f"{where}: input(s) {missing} have no shape; export with a fixed input shape")
    return OnnxGraph(model=model, nodes=nodes, graph=g, info=info, producer=producer, consumers=consumers,
                     const=const, initializers=initializers, opset=opset, batch=batch,
                     outputs={v.name for v in model.graph.output}, quantization=quantization)


__all__ = ["GraphError", "OnnxGraph", "load_graph", "FREE_OPS", "MIN_OPSET", "MAX_OPSET"]
