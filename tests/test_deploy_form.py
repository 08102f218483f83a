"""The deployment form of a target: int8 by onnxruntime's own quantizer, and batch N."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from profiling.builders import materialize
from profiling.errors import ProfilingError
from profiling.kernels import KernelSpec
from profiling.networks import build_network
from profiling.profiler import Profiler
from profiling.quantize import is_quantized, quantize
from profiling.table import read_table
from profiling.targets import TargetError, get_target

FAST = {"max_s": 0.05, "max_runs": 20, "warmup_runs": 1, "warmup_s": 0.0}
TINY_CNN = {"family": "resnet", "resolution": 16, "in_channels": 3, "num_classes": 10,
            "layers": [{"op": "conv", "cout": 8, "kernel": 3, "stride": 1, "act": "relu"},
                       {"op": "resnet_basic", "cout": 8, "stride": 1},
                       {"op": "resnet_basic", "cout": 16, "stride": 2},
                       {"op": "head", "hidden": 0}]}


def _fp32_model(tmp_path):
    path = materialize(build_network(TINY_CNN), str(tmp_path), seed=3)
    return onnx.load(path)  # weights loaded from the materialized file


def _ort_optimized_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]


def test_quantized_network_runs_holds_qdq_and_fuses_to_qlinearconv(tmp_path):
    fp32 = _fp32_model(tmp_path)
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3, 16, 16)).astype(np.float32)
    int8 = quantize(fp32, calibration=x)  # a batch of "user data", split at the model's batch of 1
    ops = [n.op_type for n in int8.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and is_quantized(int8) and not is_quantized(fp32)
    # weights are stored as int8 (per channel: one scale per output channel of the first conv)
    assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4 for t in int8.graph.initializer)
    assert "QLinearConv" in _ort_optimized_ops(int8, tmp_path)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {m.graph.input[0].name: x[:1]})[0]
    a, b = run(fp32), run(int8)
    assert a.shape == b.shape
    cos = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos > 0.9, cos  # int8 computes the same function, approximately


def test_quantize_refuses_a_quantized_model_and_misshapen_calibration(tmp_path):
    fp32 = _fp32_model(tmp_path)
    with pytest.raises(ProfilingError, match="already quantized"):
        quantize(quantize(fp32))
    with pytest.raises(ProfilingError, match="does not fit"):
        quantize(fp32, calibration=np.zeros((4, 3, 32, 32), np.float32))


def test_presets_and_forms():
    assert get_target("local-cpu-int8").precision == "int8" and get_target("local-cpu-int8").batch == 1
    assert get_target("local-cpu-b32").batch == 32 and get_target("local-cpu-b32").precision == "fp32"
    assert get_target("jetson-nano").precision == "fp16" and get_target("jetson-nano-int8").precision == "int8"
    t = get_target("local-cpu").with_form("int8", 8)
    assert (t.name, t.precision, t.batch, t.form) == ("local-cpu@int8-b8", "int8", 8, "int8, batch 8")
    assert get_target("local-cpu").with_form(None, None).name == "local-cpu"
    with pytest.raises(TargetError, match="precision"):
        get_target("local-cpu").with_form("int4")


def test_int8_target_profiles_quantized_kernels_into_an_int8_table(tmp_path):
    out = tmp_path / "int8.parquet"
    Profiler("local-cpu-int8", out, kinds=["conv", "linear"], max_configs=3, networks=0, drift_threshold=10.0,
             stop_rule=FAST, network_stop_rule=FAST, seed=2).run()
    df, meta = read_table(out)
    assert len(df) == 3 and (df["median_ms"] > 0).all()
    assert meta["fingerprint"]["precision"] == "int8" and meta["target"]["precision"] == "int8"
    assert meta["fingerprint"]["batch"] == 1
