"""The device runner: Python 3.6 compatibility, the stopping rule, the protocol."""
import ast
import os
import base64
import re
import time

import numpy as np
import pytest

from profiling import device_runner as dr
from profiling.builders import build_model, input_shapes, weight_fills
from profiling.errors import ProfilingError
from profiling.kernels import KernelSpec
from profiling.transport import RUNNER_PATH, HostSpec, local_runner, ssh_argv


def test_runner_is_python36_compatible():
    src = RUNNER_PATH.read_text()
    ast.parse(src, feature_version=(3, 6))  # no walrus, no positional-only params, ...
    assert not re.search(r"^from __future__ import annotations", src, re.M)
    assert not re.search(r"^\s*(import|from) (dataclasses|typing)", src, re.M)
    # onnx only where an int8 target quantizes (onnxruntime's quantizer needs it anyway), never at load
    assert not re.search(r"^(import|from) onnx\b", src, re.M)
    assert not re.search(r"f['\"][^'\"]*=\}", src)  # no f-string `=` specifiers (3.8)
    for newer in ("capture_output", "perf_counter_ns", "time_ns", "removeprefix", "math.prod"):
        assert newer not in src, newer
    imports = {n.names[0].name.split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Import)}
    imports |= {n.module.split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}
    assert imports <= {"base64", "json", "math", "os", "platform", "shutil", "subprocess", "sys", "tempfile",
                       "time", "logging", "numpy", "onnxruntime", "onnx"}


def test_median_ci_and_stopping_rule():
    rule = dict(dr.DEFAULT_STOP, min_runs=10, min_s=0.0)
    steady = [1.0 + 0.001 * (i % 5) for i in range(10)]
    assert dr.should_stop(steady, 0.01, rule) == (True, "ci")
    noisy = list(np.random.default_rng(0).lognormal(0, 0.5, 10))
    assert dr.should_stop(noisy, 0.01, rule)[0] is False
    assert dr.should_stop(noisy * 200, 0.01, rule) == (True, "max_runs")
    assert dr.should_stop(steady, 0.01, dict(rule, min_s=0.05)) == (False, "")  # too short yet
    assert dr.should_stop(noisy[:3], 5.0, rule) == (True, "max_s")
    s = dr.summarize([3.0, 1.0, 2.0, 4.0, 5.0])
    assert s["median_ms"] == 3.0 and s["runs"] == 5 and s["p10_ms"] < s["median_ms"] < s["p90_ms"]


def test_measure_callable_on_real_work():
    a = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    out = dr.measure_callable(lambda: a @ a, {"max_s": 0.5})
    assert out["runs"] >= 30 and out["warmup_runs"] >= 5
    assert out["stop_reason"] in ("ci", "max_s", "max_runs")
    assert out["p10_ms"] <= out["median_ms"] <= out["p90_ms"]
    slow = dr.measure_callable(lambda: time.sleep(0.02), {"max_s": 0.05, "warmup_runs": 1, "warmup_s": 0})
    assert slow["runs"] >= 3 and slow["stop_reason"] == "max_s" and slow["median_ms"] >= 19


def _job(spec, **extra):
    m = build_model(spec)
    return dict({"id": spec.key(), "model": base64.b64encode(m.SerializeToString()).decode(),
                 "fills": weight_fills(m), "session": {"threads": 1},
                 "inputs": [{"name": i.name, "shape": s} for i, s in zip(m.graph.input, input_shapes(m))],
                 "stop": {"max_s": 0.1}}, **extra)


def test_local_runner_protocol():
    r = local_runner()
    try:
        facts = r.hello()
        assert facts["runtime"] == "onnxruntime" and "CPUExecutionProvider" in facts["providers"]
        assert facts["cores"] >= 1 and facts["cpu_model"] and facts["machine"]
        a = r.measure(_job(KernelSpec.make("conv", cin=8, cout=8, h=8, w=8, kernel=3, stride=1)))
        assert a["ok"] and a["stats"]["median_ms"] > 0 and a["providers"] == ["CPUExecutionProvider"]
        bad = _job(KernelSpec.make("softmax", heads=1, m=4, n=4))
        bad["model"] = base64.b64encode(b"not a model").decode()
        b = r.measure(bad)
        assert not b["ok"] and b["error"]  # reported, and the runner keeps serving
        slow = r.measure(_job(KernelSpec.make("softmax", heads=1, m=4, n=4), delay_ms=2.0, cache_key="s"))
        assert slow["ok"] and slow["stats"]["median_ms"] >= 2.0
    finally:
        r.close()
    assert r.proc.returncode == 0


def test_missing_runtime_names_the_package(tmp_path, monkeypatch):
    fake = tmp_path / "onnxruntime"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'onnxruntime'\")\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    r = local_runner()
    with pytest.raises(ProfilingError, match=r"pip3 install onnxruntime"):
        r.hello()


def test_host_spec_and_ssh_command():
    h = HostSpec.parse("pi@10.0.0.5:2222")
    assert (h.user, h.host, h.port) == ("pi", "10.0.0.5", 2222)
    assert HostSpec.parse("jetson").user is None
    assert HostSpec.parse("me@[::1]:22").host == "::1"
    with pytest.raises(ProfilingError, match="USER@HOST"):
        HostSpec.parse("a b")
    argv = ssh_argv(h, ssh_config="/tmp/cfg")
    assert "BatchMode=yes" in argv and "ConnectTimeout=10" in argv and argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-F") + 1] == "/tmp/cfg" and argv[-2] == "pi@10.0.0.5"


PY36 = os.environ.get("HWNAS_TEST_PY36")  # e.g. a Python 3.6 venv with numpy 1.19 and onnxruntime 1.10


@pytest.mark.skipif(not PY36, reason="set HWNAS_TEST_PY36 to a Python 3.6 with numpy and onnxruntime "
                                    "(JetPack 4's Python) to run the runner on it for real")
def test_runner_on_python36_and_an_old_onnxruntime(tmp_path):
    from profiling.builders import opset_for_runtime
    from profiling.kernels import KINDS
    from tests.test_profiling_builders import CASES
    r = local_runner(PY36)
    try:
        facts = r.hello()
        assert facts["python"].startswith("3.6")
        opset = opset_for_runtime(facts["runtime_version"])
        for spec in CASES:
            m = build_model(spec, opset=opset)
            job = _job(spec)
            job["model"] = base64.b64encode(m.SerializeToString()).decode()
            a = r.measure(job)
            assert a["ok"], (spec, a.get("error"))
        assert {s.kind for s in CASES} == set(KINDS)
    finally:
        r.close()
