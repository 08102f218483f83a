"""The deployment form of a target: int8 by onnxruntime's own quantizer, and batch N."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from profiling.builders import materialize
from profiling.errors import ProfilingError
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
    assert "BatchNormalization" not in ops  # pre-processing folded it into the conv, as the runtime does
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


def _qoperator(fp32: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    """The QOperator form (QLinearConv, QLinearAdd, QGemm, ...) of the same network, from
    onnxruntime's quantizer directly."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from profiling.device_runner import _FeedReader
    from profiling.quantize import calibration_feeds
    onnx.save(fp32, str(tmp_path / "in.onnx"))
    quant_pre_process(str(tmp_path / "in.onnx"), str(tmp_path / "pre.onnx"), skip_symbolic_shape=True)
    quantize_static(str(tmp_path / "pre.onnx"), str(tmp_path / "qop.onnx"), _FeedReader(calibration_feeds(fp32)),
                    quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return onnx.load(str(tmp_path / "qop.onnx"))


def test_detector_maps_qdq_and_qoperator_graphs_to_the_fp32_kernel_specs(tmp_path):
    from predictors.detect import detect_kernels
    fp32 = _fp32_model(tmp_path)
    qdq, qop = quantize(fp32), _qoperator(fp32, tmp_path)
    assert "QLinearConv" in {n.op_type for n in qop.graph.node} and "Conv" not in {n.op_type for n in qop.graph.node}
    dets = {name: detect_kernels(m) for name, m in (("fp32", fp32), ("qdq", qdq), ("qop", qop))}
    specs = {name: [s.key() for s in d.specs()] for name, d in dets.items()}
    kinds = [s.kind for s in dets["fp32"].specs()]
    assert "conv_add" in kinds and "linear" in kinds  # residual adds and the classifier are fused kernels
    assert specs["qdq"] == specs["fp32"] and specs["qop"] == specs["fp32"]
    assert not dets["qdq"].unknown and not dets["qop"].unknown
    assert dets["fp32"].graph.quantization is None
    assert dets["qdq"].graph.quantization.form == "qdq" and dets["qop"].graph.quantization.form == "qoperator"
    assert dets["qdq"].graph.quantization.qdq_nodes > 0 and dets["qop"].graph.quantization.integer_ops >= 6


def test_an_fp32_predictor_warns_on_a_quantized_graph(tmp_path, repo_root):
    from predictors.model import Predictor
    from predictors.quantized import DeploymentFormWarning
    path = sorted((repo_root / "data" / "predictors").glob("local-cpu__*.lgb"))[0]
    pred = Predictor.load(path)
    fp32 = _fp32_model(tmp_path)
    with pytest.warns(DeploymentFormWarning, match="quantized"):
        p_int8 = pred.predict(quantize(fp32))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeploymentFormWarning)
        p_fp32 = pred.predict(fp32)
    assert p_int8.latency_ms == pytest.approx(p_fp32.latency_ms)  # the same kernels: the fp32 model's time


@pytest.fixture(scope="module")
def batch4_predictor(tmp_path_factory):
    """A predictor of local-cpu at batch 4, from a small table measured here at batch 4."""
    from predictors.model import Predictor
    d = tmp_path_factory.mktemp("b4")
    target = get_target("local-cpu").with_form(batch=4)
    Profiler(target, d / "b4.parquet", kinds=["conv", "conv_add", "linear", "global_pool", "reshape"],
             max_configs=25, networks=3, stop_rule=FAST, network_stop_rule=FAST, seed=4, drift_threshold=10.0,
             sentinel_every=1000, sentinel_every_s=1e9).run()
    df, meta = read_table(d / "b4.parquet")
    assert meta["fingerprint"]["batch"] == 4 and meta["target"]["name"] == "local-cpu@b4"
    p = Predictor(kernel_rounds=20, graph_rounds=20).fit([d / "b4.parquet"])
    p.save(d / "b4.lgb")
    return d / "b4.lgb"


def test_predict_latency_on_a_batch_4_target_reports_images_per_second(batch4_predictor, tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from scripts.predict_latency import main as predict_cli
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    onnx.save(_fp32_model(tmp_path), str(tmp_path / "tiny.onnx"))
    res = CliRunner().invoke(predict_cli, [str(tmp_path / "tiny.onnx"), "--predictor", str(batch4_predictor), "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)[0]
    assert row["batch"] == 4 and row["precision"] == "fp32" and row["error"] is None
    assert row["images_per_s"] == pytest.approx(4 * 1000.0 / row["latency_ms"])
    table = CliRunner().invoke(predict_cli, [str(tmp_path / "tiny.onnx"), "--predictor", str(batch4_predictor)])
    assert table.exit_code == 0 and "images/s" in table.stdout and "batch 4" in table.stdout


def test_int8_batch4_search_quantizes_finalists_and_exports_a_quantized_best_onnx(tmp_path):
    """A search on an int8 target at batch 4: finalists are measured quantized (the runner's
    session hook), best.onnx is the int8 model with its held-out accuracy drop, and the
    throughput objective reports images/s at batch 4."""
    import json

    from predictors import features as F
    from predictors.model import Predictor
    from search.run import SearchConfig, run_search
    from search.spaces import get_space
    target = get_target("local-cpu-int8").with_form(batch=4)
    # A real LightGBM predictor of the int8 batch-4 target, fit on NB201 kernels with roofline
    # times (standing in for an int8 profile: the test is about the search's handling of the form).
    space = get_space("nb201", resolution=8)
    rng = np.random.default_rng(0)
    specs = list({s for _ in range(40) for s in space.kernel_specs(space.sample(rng))})
    st = np.array([F.spec_stats(s, 4) for s in specs])
    p = Predictor(target=target.to_dict(), kernel_rounds=20)
    p.fit_kernels(specs, 0.004 + st[:, 0] * 2e-9 + st[:, 2] * 5e-9)
    p.save(tmp_path / "int8-b4.lgb")
    probe = SearchConfig(space="nb201", predictor=str(tmp_path / "int8-b4.lgb"), data="digits", population=8,
                         generations=1, finalists=1, verify_rounds=1, out=str(tmp_path / "out"),
                         cache_dir=str(tmp_path / "cache"), progress=False, proxies=("jacob_cov", "params"),
                         proxy_batch=16, accuracy="proxies", reference_size=8, objective="throughput",
                         min_accuracy=1.0)
    res = run_search(probe)
    out = tmp_path / "out"
    assert res.best is not None and res.best.measured_ms is not None
    best = json.loads((out / "best.json").read_text())
    meta = best.get("meta", best)
    dep = meta["deployment"]
    assert (dep["precision"], dep["batch"], dep["objective"]) == ("int8", 4, "throughput")
    assert dep["images_per_s"] == pytest.approx(4000.0 / res.best.measured_ms)
    assert is_quantized(onnx.load(str(out / "best.onnx"))) and not is_quantized(onnx.load(str(out / "best.fp32.onnx")))
    int8 = meta["int8"]
    assert int8["accuracy_drop_points"] == pytest.approx(int8["fp32_accuracy"] - int8["int8_accuracy"])
    assert int8["held_out_images"] > 0
    report = (out / "report.md").read_text()
    assert "deployment form: int8, batch 4" in report and "images/s" in report and "best.fp32.onnx" in report
