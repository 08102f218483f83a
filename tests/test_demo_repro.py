"""`make demo` as a baseline search, and its reproducibility benchmark: a tiny demo (8x8 digits, one
generation of four, one epoch of training) run through `scripts/bench_demo_repro.py` in its own
process, with the real runner measuring the finalists interleaved with the baseline."""
import json
from pathlib import Path

from click.testing import CliRunner

from scripts.bench_demo_repro import agreement
from scripts.bench_demo_repro import main as bench_main

ROOT = Path(__file__).resolve().parents[1]
PREDICTOR = sorted((ROOT / "data" / "predictors").glob("local-cpu__*.lgb"))[0]
TINY = ["--speedup", "1.2", "--population", "6", "--generations", "1", "--train-epochs", "1", "--image-size", "8", "--minutes", "3",
        "--predictor", str(PREDICTOR)]


def test_the_demo_searches_from_a_baseline_trains_the_choice_and_the_benchmark_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "repro"
    res = CliRunner().invoke(bench_main, ["--runs", "1", "--out", str(out), "--", *TINY])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "repro.json").read_text())
    assert doc["agreement"]["runs"] == 1 and doc["agreement"]["agree"] == 1
    run = doc["runs"][0]
    log = (out / "run-1.log").read_text()
    assert run["exit_code"] == 0 and run["wall_seconds"] > 0, log
    assert "Traceback" not in log and "demo [2/4] search --baseline resnet20 --speedup 1.2" in log
    assert run["baseline"] == "resnet20" and run["baseline_ms"] > 0 and run["budget_ms"] > 0
    # every finalist was decided by its latency ratio to the baseline, measured in the same passes
    measured = [f for f in run["finalists"] if f.get("ratio") is not None]
    assert measured
    for f in measured:
        assert f["passes"] >= 8 and (f["dropped"] is None) == (f["ratio"] <= 1 / 1.2 and f["clear"])
    if run["chosen"] is not None:  # none when the device dropped every finalist: the machine's call
        sp = run["measured_speedup"]
        assert sp["passes"] >= 8 and sp["speedup_low"] <= sp["speedup"] <= sp["speedup_high"]
        assert sp["speedup"] >= 1.2
        trained = run["trained"]["chosen"]
        assert trained["arch"] == run["chosen"] and 0 <= trained["test_accuracy"] <= 100 and trained["n_test"] > 0
        assert (out / "run-1" / "trained-best" / "model.onnx").exists()
        assert "result:" in log and "held-out accuracy" in log
    # a second call keeps the finished run instead of measuring it again
    again = CliRunner().invoke(bench_main, ["--runs", "1", "--out", str(out), "--", *TINY])
    assert again.exit_code == 0 and "done before, kept" in again.output
    assert json.loads((out / "repro.json").read_text())["runs"][0]["wall_seconds"] == run["wall_seconds"]


def test_agreement_counts_the_most_common_choice_and_no_choice_as_an_answer():
    runs = [{"chosen": "a"}, {"chosen": "b"}, {"chosen": "a"}, {"chosen": None}, {"chosen": None}, {"chosen": None}]
    a = agreement(runs)
    assert a["runs"] == 6 and a["agree"] == 3 and a["most_common"] == "(none)" and a["distinct_choices"] == 3
