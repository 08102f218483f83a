"""Quantized ONNX graphs read as the float graphs they were made from.

An int8 model comes in one of two forms:

- **QDQ**: float ops bracketed by QuantizeLinear/DequantizeLinear, weights stored as int8
  behind a DequantizeLinear (what onnxruntime's `quantize_static` writes by default, what
  TensorRT reads, and what `profiling.quantize` produces);
- **QOperator**: integer ops (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, ...,
  MatMulInteger/ConvInteger of dynamic quantization) with Q/DQ only at the borders.

`dequantize_graph(model)` rewrites either form into the float graph with the same structure,
so kernel detection maps it to the same `KernelSpec`s as the fp32 original; an int8 target's
table then gives their int8 times. What quantization changes in the structure is restored:

- the Q/DQ pairs between two quantized ops disappear (the runtime fuses them into the integer
  op; a table of an int8 target measures each kernel with its own boundary Q/DQ);
- the quantizer drops a Relu (or Relu6 Clip) into the range of the tensor it quantizes: a
  QuantizeLinear whose zero point is the lowest code, after an op that can output negatives
  (Conv, Gemm, MatMul, Add), means the output was clipped at zero, and a Relu comes back;
- int8/int32 weights and biases become float initializers of the same shape.

`QuantizationInfo` says which form the graph had and how many Q/DQ nodes it held.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

# op -> (float op, indices of the float op's inputs among the quantized op's inputs)
_QOPERATOR = {
    "QLinearConv": ("Conv", (0, 3, 8)),
    "QLinearConvTranspose": ("ConvTranspose", (0, 3, 8)),
    "QLinearMatMul": ("MatMul", (0, 3)),
    "QGemm": ("Gemm", (0, 3, 6)),
    "QLinearAdd": ("Add", (0, 3)),
    "QLinearMul": ("Mul", (0, 3)),
    "QLinearSigmoid": ("Sigmoid", (0,)),
    "QLinearLeakyRelu": ("LeakyRelu", (0,)),
    "QLinearSoftmax": ("Softmax", (0,)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", (0,)),
    "QLinearAveragePool": ("AveragePool", (0,)),
    "QLinearReduceMean": ("ReduceMean", (0,)),
    "MatMulInteger": ("MatMul", (0, 1)),
    "ConvInteger": ("Conv", (0, 1)),
}
# where the output scale / zero point of a QOperator op sit (None: the op outputs float or int32)
_OUT_QPARAMS = {"QLinearConv": (6, 7), "QLinearConvTranspose": (6, 7), "QLinearMatMul": (6, 7),
                "QGemm": (7, 8), "QLinearAdd": (6, 7), "QLinearMul": (6, 7)}
# attributes the float op does not take
_DROP_ATTRS = {"channels_last", "opset", "domain"}
# ops whose output can be negative: a zero-point-at-the-lowest-code after them is a folded Relu
_SIGNED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"}


@dataclass(frozen=True)
class QuantizationInfo:
    """How a graph was quantized: `form` is "qdq" or "qoperator"; `qdq_nodes` counts its
    QuantizeLinear/DequantizeLinear nodes on activations (the boundaries between int8 and
    float); `restored_relus` the activations brought back from the quantized ranges."""
    form: str
    qdq_nodes: int
    integer_ops: int
    restored_relus: int

    def to_dict(self) -> dict[str, Any]:
        return {"form": self.form, "qdq_nodes": self.qdq_nodes, "integer_ops": self.integer_ops,
                "restored_relus": self.restored_relus}


QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def quantization_form(model: onnx.ModelProto) -> str | None:
    """"qoperator", "qdq" or None (a float graph)."""
    ops = {n.op_type for n in model.graph.node}
    if ops & set(_QOPERATOR):
        return "qoperator"
    if ops & QDQ_OPS:
        return "qdq"
    return None


def _const_values(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    vals = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    vals[n.output[0]] = a.t
    return vals


def _array(vals: Mapping[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    t = vals.get(name)
    if t is None:
        return None
    try:
        arr: np.ndarray = numpy_helper.to_array(t)
        return arr
    except Exception:  # external data not at hand
        return None


def _dequantized(q: np.ndarray, scale: np.ndarray | None, zero: np.ndarray | None, axis: int) -> np.ndarray:
    q = q.astype(np.float32)
    if scale is None:
        return q
    scale = np.asarray(scale, np.float32)
    zero = np.zeros_like(scale) if zero is None else np.asarray(zero, np.float32)
    if scale.ndim == 1 and q.ndim > 1 and scale.size == q.shape[axis % q.ndim]:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    out: np.ndarray = (q - zero) * scale
    return out


def _is_lowest_code(zero: np.ndarray | None, dtype_hint: int | None) -> bool:
    """A zero point at the lowest code of its type: the quantized range starts at 0."""
    if zero is None:
        return dtype_hint == onnx.TensorProto.UINT8  # uint8 with no zero point: zero point 0
    z = np.asarray(zero).reshape(-1)
    if z.size == 0:
        return False
    lowest = np.iinfo(z.dtype).min if z.dtype.kind in "iu" else None
    return lowest is not None and bool((z == lowest).all())


def dequantize_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, QuantizationInfo | None]:
    """The float graph of a quantized model (a new ModelProto) and how it was quantized;
    a float model comes back as it is, with None."""
    form = quantization_form(model)
    if form is None:
        return model, None
    vals = _const_values(model)
    inits = {t.name for t in model.graph.initializer}
    producer_op = {o: n.op_type for n in model.graph.node for o in n.output}
    alias: dict[str, str] = {}
    qparams: set[str] = set()      # scales/zero points computed at run time (dynamic quantization)
    was_int: set[str] = set()      # outputs of integer ops, now float
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    dropped_inits: set[str] = set()
    qdq = integer_ops = relus = 0

    def real(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    def float_weight(name: str, scale_name: str | None = None, zero_name: str | None = None, axis: int = 0) -> str:
        """A float initializer for a quantized constant input (dequantized), else the tensor."""
        arr = _array(vals, name)
        if arr is None or name not in vals:
            return real(name)
        scale = _array(vals, scale_name) if scale_name else None
        zero = _array(vals, zero_name) if zero_name else None
        out = f"{name}__float"
        new_inits.append(numpy_helper.from_array(_dequantized(arr, scale, zero, axis), out))
        dropped_inits.add(name)
        return out

    def restore_relu(src_op: str, out: str, zero_name: str | None, scale_name: str | None, dtype: int | None) -> str:
        nonlocal relus
        if src_op not in _SIGNED_OPS:
            return out
        zero = _array(vals, zero_name) if zero_name else None
        if not _is_lowest_code(zero, dtype):
            return out
        scale = _array(vals, scale_name) if scale_name else None
        relus += 1
        y = f"{out}__relu"
        if scale is not None and np.asarray(scale).size == 1 and abs(float(np.asarray(scale).reshape(-1)[0]) * 255 - 6.0) < 0.06:
            lo, hi = f"{y}__lo", f"{y}__hi"
            new_inits.extend([numpy_helper.from_array(np.array(0.0, np.float32), lo),
                              numpy_helper.from_array(np.array(6.0, np.float32), hi)])
            new_nodes.append(helper.make_node("Clip", [out, lo, hi], [y], name=f"{y}_restored"))
        else:
            new_nodes.append(helper.make_node("Relu", [out], [y], name=f"{y}_restored"))
        return y

    for n in model.graph.node:
        op, ins = n.op_type, list(n.input)
        if op == "DequantizeLinear":
            axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 1)
            if ins[0] in inits or (ins[0] in vals and ins[0] not in producer_op):
                w = float_weight(ins[0], ins[1] if len(ins) > 1 else None, ins[2] if len(ins) > 2 else None, axis)
                alias[n.output[0]] = w
            else:
                qdq += 1
                alias[n.output[0]] = real(ins[0])
            continue
        if op == "QuantizeLinear":
            qdq += 1
            src = real(ins[0])
            src_op = producer_op.get(ins[0], "")
            dtype = None
            y = restore_relu(src_op, src, ins[2] if len(ins) > 2 and ins[2] else None, ins[1],
                             dtype if len(ins) > 2 and ins[2] else onnx.TensorProto.UINT8)
            alias[n.output[0]] = y
            continue
        if op == "DynamicQuantizeLinear":
            qdq += 1
            alias[n.output[0]] = real(ins[0])
            qparams.update(n.output[1:])
            continue
        if op in _QOPERATOR:
            integer_ops += 1
            fop, idx = _QOPERATOR[op]
            f_ins = []
            for k in idx:
                if k >= len(ins) or not ins[k]:
                    continue
                name = ins[k]
                if name in vals and name not in producer_op:  # a quantized constant: its float form
                    scale = ins[k + 1] if op not in ("MatMulInteger", "ConvInteger") and k + 1 < len(ins) else None
                    zero = ins[k + 2] if op not in ("MatMulInteger", "ConvInteger") and k + 2 < len(ins) else None
                    if fop in ("Conv", "ConvTranspose", "Gemm") and k == idx[-1] and len(idx) == 3:
                        scale = zero = None  # int32 bias: its shape is what counts
                    axis = 1 if (fop == "ConvTranspose" or (fop == "MatMul" and k == 3)) else 0
                    name = float_weight(name, scale, zero, axis)
                else:
                    name = real(name)
                f_ins.append(name)
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute if a.name not in _DROP_ATTRS}
            out = n.output[0]
            if fop == "ReduceMean" and "axes" in attrs and model_opset(model) >= 18:
                axes = f"{out}__axes"
                new_inits.append(numpy_helper.from_array(np.array(attrs.pop("axes"), np.int64), axes))
                f_ins.append(axes)
            raw = f"{out}__float" if op in _OUT_QPARAMS else out
            new_nodes.append(helper.make_node(fop, f_ins, [raw], name=n.name or None, **attrs))
            if op in _OUT_QPARAMS:
                s_i, z_i = _OUT_QPARAMS[op]
                has_y = len(ins) > z_i and ins[s_i]
                if has_y:
                    y = restore_relu(fop, raw, ins[z_i] if ins[z_i] else None, ins[s_i],
                                     None if ins[z_i] else onnx.TensorProto.UINT8)
                else:
                    y = raw
                alias[out] = y
            if op in ("MatMulInteger", "ConvInteger"):
                was_int.add(out)
            continue
        if op == "QLinearConcat":  # (Y_scale, Y_zero_point, then (X, scale, zero) per input)
            integer_ops += 1
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            xs = [real(ins[k]) for k in range(2, len(ins), 3)]
            new_nodes.append(helper.make_node("Concat", xs, [n.output[0]], name=n.name or None, **attrs))
            continue
        real_ins = [real(t) if t else t for t in ins]
        if op == "Cast" and real_ins[0] in was_int | {alias.get(t, t) for t in was_int}:
            alias[n.output[0]] = real_ins[0]
            continue
        if any(t in qparams for t in real_ins if t):
            others = [t for t in real_ins if t and t not in qparams and t not in vals]
            if not others:  # arithmetic on scales only (a_scale * b_scale): gone with them
                qparams.update(n.output)
                continue
            if op in ("Mul", "Div", "Add", "Sub") and len(others) == 1:  # rescaling an int32 result
                alias[n.output[0]] = others[0]
                continue
        node = onnx.NodeProto()
        node.CopyFrom(n)
        del node.input[:]
        node.input.extend(real_ins)
        new_nodes.append(node)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    del g.node[:]
    used = {t for nd in new_nodes for t in nd.input}
    for v in g.output:  # an output that was a Q/DQ tensor: an Identity names it again
        if v.name in alias:
            new_nodes.append(helper.make_node("Identity", [real(v.name)], [v.name], name=f"{v.name}_out"))
            used.add(real(v.name))
    g.node.extend(new_nodes)
    keep = [t for t in g.initializer if t.name not in dropped_inits and (t.name in used or t.name in
                                                                           {v.name for v in g.input})]
    del g.initializer[:]
    g.initializer.extend(keep + [t for t in new_inits if t.name in used])
    del g.value_info[:]  # int8 types of rewritten tensors: inference recomputes them
    for v in g.output:
        v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return out, QuantizationInfo(form, qdq, integer_ops, relus)


class DeploymentFormWarning(UserWarning):
    """A model's form (quantized or float) differs from the precision the predictor was trained at."""


def form_mismatch(target: dict[str, Any] | None, quantization: QuantizationInfo | None) -> str | None:
    """Why predicting a graph of this form with a predictor of `target` (its dict) misleads,
    or None when they agree."""
    precision = (target or {}).get("precision") or "fp32"
    if quantization is not None and precision != "int8":
        return (f"the model is quantized ({quantization.form} form) but the predictor was trained on a {precision} "
                f"table, so it predicts the {precision} model; use a predictor of an int8 target "
                "(profile target local-cpu-int8, then train a predictor on its table)")
    if quantization is None and precision == "int8":
        return ("the model is a float model but the predictor was trained on an int8 table, so it predicts "
                "the model as deployed after static int8 quantization (profiling.quantize), not as it is")
    return None


def model_opset(model: onnx.ModelProto) -> int:
    return next((int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)


__all__ = ["dequantize_graph", "quantization_form", "QuantizationInfo", "QDQ_OPS", "DeploymentFormWarning",
           "form_mismatch"]
