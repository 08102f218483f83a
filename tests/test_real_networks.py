"""Published architectures as network specs: the calibration set that carries to real models."""
import numpy as np
import onnxruntime as ort
import pytest

from predictors import PredictorError
from predictors.calibrate import REAL_MAX_FLOPS, calibration_networks
from profiling.builders import materialize
from profiling.networks import REAL_ARCHITECTURES, REAL_RESOLUTIONS, build_network, network_kernels, real_network
from profiling.onnx_stats import model_stats


def test_the_calibration_set_takes_each_published_architecture_in_turn_under_the_cap():
    specs = calibration_networks(len(REAL_ARCHITECTURES), seed=0, network_set="real")
    assert [s["name"] for s in specs] == list(REAL_ARCHITECTURES)
    for s in specs:
        assert s["resolution"] in REAL_RESOLUTIONS
        assert 1e7 < model_stats(build_network(s)).flops <= REAL_MAX_FLOPS
        assert network_kernels(s)  # the predictor's batch path reads them as kernel specs
    # their sizes are real ones: ResNet-50 is a few GFLOPs, far above the generated set's 1.5e9 cap
    r50 = next(s for s in specs if s["name"] == "resnet50")
    assert model_stats(build_network(r50)).flops > 2e9
    from profiling.networks import network_id
    thirty = calibration_networks(30, seed=0, network_set="real")
    assert len({network_id(s) for s in thirty}) == 30  # distinct: each is measured under its own name
    with pytest.raises(PredictorError, match="unknown calibration network set"):
        calibration_networks(3, network_set="zoo")


@pytest.mark.parametrize("name", ["mobilenet_v3", "csp", "vit"])
def test_published_architectures_run_in_onnxruntime(name, tmp_path):
    spec = real_network(np.random.default_rng(1), name)
    path = materialize(build_network(spec), str(tmp_path))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, spec["resolution"], spec["resolution"])).astype(np.float32)
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert out.shape == (1, 1000) and np.isfinite(out).all()


def test_a_cap_below_an_architecture_takes_a_smaller_resolution_or_another_architecture():
    rng = np.random.default_rng(2)
    small = real_network(rng, "resnet50", max_flops=3.5e9)
    assert model_stats(build_network(small)).flops <= 3.5e9
    assert small["name"] != "resnet50" or small["resolution"] < 224
