"""The corpus benchmark in another deployment form: a quantized or batched copy of the corpus
(`bench_corpus derive`), measured on the matching target and compared with the fp32 original."""
import base64
import csv
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from profiling.builders import materialize
from profiling.measure import model_job
from profiling.networks import build_network
from profiling.quantize import is_quantized, quantize
from profiling.targets import get_target
from scripts import bench_corpus


def _cnn(cout: int) -> dict:
    return {"family": "resnet", "resolution": 16, "in_channels": 3, "num_classes": 10,
            "layers": [{"op": "conv", "cout": cout, "kernel": 3, "stride": 1, "act": "relu"},
                       {"op": "resnet_basic", "cout": cout, "stride": 2},
                       {"op": "head", "hidden": 0}]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three small fp32 networks of two families with a manifest, as scripts/export_corpus.py writes it."""
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for i, (name, fam, cout) in enumerate([("a8", "fa", 8), ("a16", "fa", 16), ("b24", "fb", 24)]):
        (root / f"tmp{i}").mkdir()
        path = materialize(build_network(_cnn(cout)), str(root / f"tmp{i}"), seed=i)
        model = onnx.load(path)
        onnx.save(model, str(root / f"{name}.onnx"))
        rows.append({"name": name, "family": fam, "source": "test", "input_shape": "1x3x16x16", "opset": "17",
                     "export_s": "0", "onnx": f"{name}.onnx"})
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def _invoke(*args):
    res = CliRunner().invoke(bench_corpus.main, [str(a) for a in args], catch_exceptions=False)
    return res


def test_a_quantized_model_travels_whole_and_is_not_quantized_again(corpus):
    int8 = quantize(str(corpus / "a8.onnx"))
    facts = {"providers": ["CPUExecutionProvider"], "cores": 1}
    job = model_job(int8, get_target("local-cpu-int8"), facts)
    assert job["fills"] == [] and job["session"]["quantized"] and job["session"]["int8"]
    sent = onnx.load_from_string(base64.b64decode(job["model"]))
    assert is_quantized(sent) and sent.graph.initializer[0].raw_data  # the int8 weights and scales as they are
    fp32_job = model_job(str(corpus / "a8.onnx"), get_target("local-cpu-int8"), facts)
    assert fp32_job["fills"] and "quantized" not in fp32_job["session"]  # the runner quantizes a float model


def test_derive_int8_and_batch_forms_then_measure_and_compare(corpus, tmp_path):
    q, b = tmp_path / "int8", tmp_path / "b4"
    res = _invoke("derive", "--corpus", corpus, "--out", q, "--precision", "int8", "--jobs", 2)  # in 2 processes
    assert res.exit_code == 0, res.output
    form = json.loads((q / "derived.json").read_text())
    assert (form["precision"], form["batch"], form["failed"]) == ("int8", 1, {})
    names = [r["name"] for r in csv.DictReader(open(q / "manifest.csv"))]
    assert names == ["a8", "a16", "b24"]  # the manifest's order, whatever order the models were converted in
    assert all(is_quantized(onnx.load(str(q / f"{n}.onnx"))) for n in names)

    res = _invoke("derive", "--corpus", corpus, "--out", b, "--batch", 4)
    assert res.exit_code == 0, res.output
    batched = onnx.load(str(b / "a8.onnx"))
    assert batched.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch axis is dynamic
    x = np.zeros((4, 3, 16, 16), np.float32)
    out = ort.InferenceSession(batched.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {
        batched.graph.input[0].name: x})[0]
    assert out.shape[0] == 4

    # a corpus is measured on the target of its form only
    res = _invoke("measure", "--corpus", q, "--run", "A", "--target", "local-cpu")
    assert res.exit_code != 0 and "int8, batch 1" in res.output and "local-cpu" in res.output
    res = _invoke("measure", "--corpus", b, "--run", "A", "--target", "local-cpu-int8")
    assert res.exit_code != 0 and "fp32, batch 4" in res.output

    for run in ("A", "B"):
        assert _invoke("measure", "--corpus", corpus, "--run", run, "--passes", 1, "--seconds", 0.02).exit_code == 0
        res = _invoke("measure", "--corpus", q, "--run", run, "--passes", 1, "--seconds", 0.02,
                      "--target", "local-cpu-int8", "--max-models", 2)
        assert res.exit_code == 0, res.output
    measured = json.loads((q / "bench" / "measured_A.json").read_text())
    assert measured["form"] == {"precision": "int8", "batch": 1} and measured["batches"] == 2
    assert set(measured["models"]) == set(names) and all(m["median_ms"] > 0 for m in measured["models"].values())

    res = _invoke("compare", "--corpus", corpus, "--other", q)
    assert res.exit_code == 0, res.output
    cmp = json.loads((q / "bench" / "compare.json").read_text())
    assert cmp["models"] == 3 and cmp["families"] == 2 and len(cmp["spearman_per_run"]) == 2
    assert -1 <= cmp["spearman"] <= 1
    for n, m in cmp["per_model"].items():
        assert m["speedup_per_image"] == pytest.approx(m["fp32_b1_ms"] / m["other_ms"])

    # the two fp32 runs keep each model's passes and fastest run; `repeat` compares them per statistic
    runs = [json.loads((corpus / "bench" / f"measured_{r}.json").read_text())["models"] for r in "AB"]
    for m in runs[0].values():
        assert len(m["pass_ms"]) == 1 and 0 < m["min_ms"] <= m["median_ms"] == m["pass_ms"][0]
    res = _invoke("repeat", "--corpus", corpus, "--runs", "A,B", "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    ratio = np.array([runs[0][n]["median_ms"] / runs[1][n]["median_ms"] for n in names])
    assert rep["models"] == 3
    assert rep["statistics"]["median"]["within10"] == pytest.approx(np.mean(np.abs(ratio - 1) <= 0.10))
    assert rep["statistics"]["median"]["level"] == pytest.approx(np.median(ratio))
    assert _invoke("repeat", "--corpus", corpus, "--runs", "A,Z").exit_code == 2
    # `evaluate --statistic min` scores against the median over the runs of each model's fastest run
    truth, repro = bench_corpus._measured(corpus, ["A", "B"], "min")
    assert truth == {n: pytest.approx(np.median([r[n]["min_ms"] for r in runs])) for n in names}
    assert repro["within10"] == pytest.approx(rep["statistics"]["min"]["within10"])


def test_the_batched_subset_rule_takes_each_familys_fastest_model_first():
    rows = [{"name": n, "family": f} for n, f in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c")]]
    ms = {"a1": 1.0, "a2": 2.0, "a3": 3.0, "b1": 10.0, "c1": 200.0}
    # batch 8, one pass of 0.01 s: a run of a1 takes 8 ms, and a model costs 5 warm-up runs + its pass + 0.5 s
    # of session: a1 0.55 s, b1 0.98 s, a2 0.60 s, a3 0.64 s, c1 10.1 s
    minutes = 2.2 / 60
    chosen = bench_corpus._b32_subset(rows, ms, 8, minutes, 1, 0.01)
    # each family's fastest first (c1 does not fit), then the rest fastest first until the time is spent
    assert [r["name"] for r in chosen] == ["a1", "b1", "a2"]


def test_qdq_boundaries_are_counted_from_the_quantized_graphs(corpus, tmp_path):
    paths = []
    for n in ("a8", "b24"):
        onnx.save(quantize(str(corpus / f"{n}.onnx")), str(tmp_path / f"{n}.onnx"))
        paths.append(str(tmp_path / f"{n}.onnx"))
    y, pred = np.array([1.0, 2.0]), np.array([0.9, 1.5])
    out = bench_corpus._qdq_residuals(paths, [4, 6], y, pred)
    q = np.array(out["qdq_nodes"], float)
    assert (q > 0).all() and out["median_qdq_per_kernel"] == pytest.approx(np.median(q / [4, 6]))
    # the least-squares cost per node of the miss (measured - predicted), no intercept
    assert out["ms_per_qdq_node_of_the_miss"] == pytest.approx(q @ (y - pred) / (q @ q))


def test_form_search_measures_each_choice_in_both_forms(corpus, tmp_path):
    """bench_form_search's cross measurement: the fp32 run's best.onnx and the int8 run's fp32 export
    (best.fp32.onnx, beside its quantized best.onnx) are each measured on the fp32 and the int8
    target, and the per-round ratio is the int8 choice's latency over the fp32 choice's."""
    from scripts import bench_form_search
    runs = {"fp32": tmp_path / "fp32", "int8": tmp_path / "int8"}
    for run in runs.values():
        run.mkdir()
    onnx.save(onnx.load(str(corpus / "a8.onnx")), str(runs["fp32"] / "best.onnx"))
    onnx.save(onnx.load(str(corpus / "b24.onnx")), str(runs["int8"] / "best.fp32.onnx"))
    onnx.save(quantize(str(corpus / "b24.onnx")), str(runs["int8"] / "best.onnx"))
    got = bench_form_search._cross(runs, {"fp32": "local-cpu", "int8": "local-cpu-int8"}, rounds=2, passes=1)
    assert got["onnx"] == {"fp32": str(runs["fp32"] / "best.onnx"), "int8": str(runs["int8"] / "best.fp32.onnx")}
    assert len(got["rounds"]) == 2
    for form in ("fp32", "int8"):
        for r, ratio in zip(got["rounds"], got["int8_over_fp32_choice"][form]):
            assert r[form]["fp32"] > 0 and ratio == pytest.approx(r[form]["int8"] / r[form]["fp32"])
        for choice in ("fp32", "int8"):
            assert got["ms"][choice][form] == pytest.approx(np.median([r[form][choice] for r in got["rounds"]]))
    (runs["fp32"] / "best.onnx").unlink()
    assert "skipped" in bench_form_search._cross(runs, {"fp32": "local-cpu", "int8": "local-cpu-int8"}, 1, 1)
