"""int8 models as the runtime deploys them: onnxruntime's own static quantization.

    from profiling.quantize import quantize
    int8 = quantize("model.onnx")                          # random calibration data
    int8 = quantize(model, calibration=images[:32])        # a batch of the user's data (N,C,H,W)

The result is a QDQ model (QuantizeLinear/DequantizeLinear around each quantizable op,
per-channel int8 weights, uint8 activations calibrated with MinMax: U8S8, onnxruntime's fast
path on x86; symmetric int8 activations for TensorRT with `activations="int8"`) that onnxruntime fuses
into QLinearConv, QGemm, QLinearMatMul, ... when it loads it, and that TensorRT reads as an
explicitly quantized network. The same function (`device_runner.quantize_file`) quantizes
every model the profiler measures on an int8 target, on the device, so a latency table of an
int8 target and a model quantized here are the same form.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx

from .device_runner import quantize_file
from .errors import ProfilingError

# Ops whose presence makes a graph quantized (QDQ or QOperator format, static or dynamic).
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "QLinearAdd", "QLinearMul",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearGlobalAveragePool", "QLinearAveragePool",
    "QLinearConcat", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QAttention",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearConvTranspose",
})

Calibration = np.ndarray | Sequence[Mapping[str, np.ndarray]] | None


def is_quantized(model: onnx.ModelProto) -> bool:
    """Does the graph hold quantized ops (QDQ or QOperator format)?"""
    return any(n.op_type in QUANTIZED_OPS for n in model.graph.node)


def _input_specs(model: onnx.ModelProto, batch: int) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    inits = {t.name for t in model.graph.initializer}
    out = []
    for v in model.graph.input:
        if v.name in inits:
            continue
        tt = v.type.tensor_type
        dims = tuple(d.dim_value if d.dim_value > 0 else batch for d in tt.shape.dim)
        out.append((v.name, dims, onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)))
    return out


def calibration_feeds(model: onnx.ModelProto, calibration: Calibration = None, *, batch: int = 1,
                      batches: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Feed dicts for the quantizer's calibration: `calibration` as given (a list of feed dicts),
    an array of inputs for a one-input model (split into batches of the model's batch size, or
    `batch` when that axis is dynamic), or `batches` random batches in [-1, 1] (enough for
    latency: the scales' values do not change the kernels the runtime picks)."""
    specs = _input_specs(model, batch)
    if calibration is None:
        rng = np.random.default_rng(seed)
        return [{name: rng.uniform(-1, 1, size=shape).astype(dtype) for name, shape, dtype in specs}
                for _ in range(batches)]
    if isinstance(calibration, np.ndarray):
        if len(specs) != 1:
            raise ProfilingError(f"calibration: the model has {len(specs)} inputs "
                                 f"({', '.join(s[0] for s in specs)}); pass a list of feed dicts")
        name, shape, dtype = specs[0]
        if calibration.ndim != len(shape) or tuple(calibration.shape[1:]) != tuple(shape[1:]):
            raise ProfilingError(f"calibration: data of shape {tuple(calibration.shape)} does not fit the "
                                 f"model input {name!r} of shape {shape}; pass images shaped (N, *{shape[1:]})")
        step = shape[0]
        n = len(calibration) // step * step
        if n == 0:
            raise ProfilingError(f"calibration: {len(calibration)} samples, the model's batch is {step}: "
                                 f"pass at least {step}")
        data = calibration[:n].astype(dtype)
        return [{name: data[i:i + step]} for i in range(0, n, step)]
    feeds = [dict(f) for f in calibration]
    if not feeds:
        raise ProfilingError("calibration: an empty list of feeds; pass data, or None for random data")
    return feeds


def quantize(model: str | os.PathLike | onnx.ModelProto, calibration: Calibration = None, *,
             per_channel: bool = True, batch: int = 1, seed: int = 0, activations: str = "uint8") -> onnx.ModelProto:
    """`model` quantized to int8 by onnxruntime's static quantizer (QDQ format; see the module
    docstring). `activations`: "uint8" (U8S8, onnxruntime's fast path on x86 CPUs) or "int8"
    (symmetric S8S8, for TensorRT). Raises ProfilingError naming the model when onnxruntime
    cannot quantize it."""
    if activations not in ("uint8", "int8"):
        raise ProfilingError(f"activations must be 'uint8' or 'int8', not {activations!r}")
    where = str(model) if not isinstance(model, onnx.ModelProto) else "the model"
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(model))
        except Exception as e:
            raise ProfilingError(f"{where} is not a readable ONNX model ({e})") from None
    if is_quantized(model):
        raise ProfilingError(f"{where} is already quantized; pass the fp32 model")
    feeds = calibration_feeds(model, calibration, batch=batch, seed=seed)
    with tempfile.TemporaryDirectory(prefix="hwnas-quantize-") as tmp:
        src, dst = str(Path(tmp) / "model.onnx"), str(Path(tmp) / "model.int8.onnx")
        large = model.ByteSize() > 1_500_000_000
        onnx.save(model, src, save_as_external_data=large, location="weights.bin" if large else None)
        try:
            quantize_file(src, dst, feeds, per_channel=per_channel, activations=activations)
        except Exception as e:  # the quantizer raises anything from a KeyError to a protobuf error
            raise ProfilingError(f"onnxruntime could not quantize {where}: {type(e).__name__}: {e}") from None
        return onnx.load(dst)


__all__ = ["quantize", "is_quantized", "calibration_feeds", "QUANTIZED_OPS"]
