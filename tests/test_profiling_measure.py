"""`profile-device --models`: whole ONNX models measured on the target into a measured-networks file."""
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from profiling.builders import materialize
from profiling.errors import ProfilingError
from profiling.measure import measure_models
from profiling.networks import build_network, sample_network
from scripts.profile_device import main as cli

FAST = {"max_s": 0.1, "max_runs": 30, "warmup_runs": 1, "warmup_s": 0.0}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two real networks of different size, saved with their weights (as a user's files are)."""
    d = tmp_path_factory.mktemp("models")
    paths = []
    rng = np.random.default_rng(2)
    for i, fam in enumerate(("resnet", "mobilenet")):
        spec = sample_network(rng, fam, max_flops=2e8)
        sub = d / f"w{i}"
        sub.mkdir()
        m = onnx.load(materialize(build_network(spec), str(sub)))  # weights loaded from the external file
        onnx.save(m, str(d / f"{fam}.onnx"))
        paths.append(d / f"{fam}.onnx")
    return paths


def test_measure_models_and_the_file_train_predictor_reads(models, tmp_path):
    from predictors.measured import read_networks_file
    seen = []
    res = measure_models(models, "local-cpu", passes=2, slice_s=0.02, progress=lambda i, n, m: seen.append((i, n, m.name)))
    assert [m.name for m in res] == ["resnet", "mobilenet"] and seen == [(1, 2, "resnet"), (2, 2, "mobilenet")]
    assert all(0 < m.p10_ms <= m.median_ms <= m.p90_ms and m.runs >= 1 for m in res)
    out = models[0].parent / "measured.csv"
    res = CliRunner().invoke(cli, ["--models", str(models[0].parent), "--out", str(out), "--family", "mine"])
    assert res.exit_code == 0, res.output
    assert "wrote 2 measured networks" in res.output
    nets = read_networks_file(out)
    assert sorted(nets.names) == ["mobilenet", "resnet"] and nets.families == ["mine"] * 2
    assert nets.targets == ["local-cpu"] * 2 and (nets.latency_ms > 0).all()
    assert {str(c) for c in nets.candidates} == {str(p) for p in models}  # relative paths resolved


def test_models_are_measured_interleaved_pass_after_pass(models):
    passes = []
    three = measure_models(models, "local-cpu", passes=3, slice_s=0.02, on_pass=lambda d, n: passes.append((d, n)))
    assert [m.name for m in three] == ["resnet", "mobilenet"] and passes == [(1, 3), (2, 3), (3, 3)]
    # at least 3 timed runs per model per pass, and the old `rounds` name still means passes
    assert all(m.runs >= 9 and 0 < m.p10_ms <= m.median_ms <= m.p90_ms for m in three)
    assert all(m.runs >= 6 for m in measure_models(models[:1], "local-cpu", rounds=2, slice_s=0.01))
    with pytest.raises(ProfilingError, match="passes"):
        measure_models(models, "local-cpu", passes=0)


def test_measure_interleaved_gives_every_job_its_passes_and_names_a_failure(models):
    from profiling.interleave import measure_interleaved
    from profiling.measure import connect, model_job
    from profiling.targets import get_target
    target = get_target("local-cpu")
    conn = connect(target)
    try:
        jobs = [dict(model_job(p, target, conn.facts), id=p.stem) for p in models]
        broken = dict(jobs[0], id="broken", model="bm90IGEgbW9kZWw=")  # base64 of "not a model"
        answers = measure_interleaved(conn, [jobs[0], broken, jobs[1]], passes=4, slice_s=[0.02, 0.02, 0.05])
        assert [a["id"] for a in answers] == ["resnet", "broken", "mobilenet"]
        assert not answers[1]["ok"] and answers[1]["error"]
        for a in (answers[0], answers[2]):
            st = a["stats"]
            assert a["ok"] and st["passes"] == 4 and len(st["pass_ms"]) == 4 and st["runs"] >= 12
            assert st["median_ms"] == pytest.approx(float(np.median(st["pass_ms"])))
        # the sessions lived for the batch only: the runner keeps none of them afterwards
        assert conn.request({"op": "forget", "keys": []})["kept"] == 0
        assert conn.measure(dict(jobs[1], stop=FAST))["ok"]  # and the runner is still serving
    finally:
        conn.close()


def test_measure_models_errors_name_the_input(models, tmp_path):
    with pytest.raises(ProfilingError, match="no such ONNX file: .*nope.onnx"):
        measure_models([tmp_path / "nope.onnx"])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ProfilingError, match="bad.onnx: not a readable ONNX model"):
        measure_models([bad], stop=FAST)
    with pytest.raises(ProfilingError, match="valid targets"):
        measure_models(models, "nope")
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, ["--models", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "no .onnx file" in res.output
    res = CliRunner().invoke(cli, ["--models", str(tmp_path / "gone.onnx")])
    assert res.exit_code == 2 and "no such ONNX file" in res.output  # a missing path: usage error


@pytest.mark.ssh
def test_measure_models_over_ssh(sshd, models):
    host = f"{sshd['user']}@127.0.0.1:{sshd['port']}"
    res = measure_models(models[:1], host=host, ssh_config=sshd["config"], remote_python=sys.executable, stop=FAST)
    assert len(res) == 1 and res[0].median_ms > 0


def test_scalar_constants_keep_their_values_so_the_runtime_fuses_as_in_the_real_model(tmp_path):
    """A GELU written as x * 0.5 * (1 + erf(x / sqrt(2))) with its scalars as initializers (as
    exporters write them): the measured job keeps those values, so onnxruntime fuses it into one
    Gelu kernel exactly as it does for the user's own file, while the weight matrix travels as a fill."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from profiling.device_runner import Runner
    from profiling.measure import model_job
    from profiling.targets import get_target
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(2 ** 0.5, np.float32), "sqrt2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Div", ["h", "sqrt2"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"]), helper.make_node("Add", ["e", "one"], ["a"]),
             helper.make_node("Mul", ["h", "a"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    job = model_job(model, get_target("local-cpu"), {"providers": ["CPUExecutionProvider"], "cores": 1})
    assert [f["name"] for f in job["fills"]] == ["w"]
    runner = Runner()
    try:
        work = tmp_path / "job"
        work.mkdir()
        runner.session(dict(job, session={}), str(work))
        sent = onnx.load(str(work / "model.onnx"), load_external_data=False)
        values = {t.name: float(numpy_helper.to_array(t)) for t in sent.graph.initializer if t.name != "w"}
        assert values == pytest.approx({"sqrt2": 2 ** 0.5, "one": 1.0, "half": 0.5})
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / "opt.onnx")
        ort.InferenceSession(str(work / "model.onnx"), so, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx"), load_external_data=False).graph.node]
        assert "Gelu" in ops and "Erf" not in ops
    finally:
        runner.close()
