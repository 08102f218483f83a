"""Calibration for a new machine: a few random networks measured here (real onnxruntime sessions)
adapt a shipped predictor into a loadable predictor file whose fingerprint is this machine's."""
from pathlib import Path

import numpy as np
import pytest

from predictors import Predictor, PredictorError
from predictors.calibrate import calibrate, calibration_file_name, closest_predictor
from predictors.catalog import SAME_DEVICE, match_predictor
from profiling.fingerprint import fingerprint_hash, local_fingerprint
from profiling.targets import get_target

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "predictors"


def _slow_twin(shipped_path: Path, folder: Path) -> Path:
    """The shipped predictor made to predict twice its latencies (one adapter fitted to doubled
    predictions), same target and fingerprint: a base that is off by a known factor on any machine
    class, where the shipped predictor of this class may already be right."""
    from predictors.calibrate import calibration_networks
    from profiling.networks import network_kernels
    p = Predictor.load(shipped_path)
    cands = [network_kernels(s) for s in calibration_networks(12, 3, 1e8, "generated")]
    slow = p.adapt(cands, 2.0 * np.asarray(p.predict_specs(cands)[0]), device=p.target_name, target=p.target)
    slow.fingerprint = p.fingerprint
    folder.mkdir()
    slow.save(folder / shipped_path.name)
    return folder / shipped_path.name


def test_calibration_writes_a_predictor_this_machine_matches(tmp_path):
    here = local_fingerprint(get_target("local-cpu"))
    shipped = closest_predictor(SHIPPED, "local-cpu", here)
    assert shipped is not None and shipped.target == "local-cpu"
    base_path = _slow_twin(shipped.path, tmp_path / "base")
    lines = []
    res = calibrate(base_path.parent, target="local-cpu", out_dir=tmp_path, networks=5, rounds=1,
                    seconds_per_pass=0.02, max_flops=1e8, progress=lines.append)
    assert res.path == tmp_path / calibration_file_name("local-cpu", here)
    assert res.base == base_path
    assert len(res.measured_ms) == 5 and all(m > 0 for m in res.measured_ms)
    assert any("measured 5/5" in s for s in lines)
    loaded = Predictor.load(res.path)
    assert fingerprint_hash(loaded.fingerprint) == fingerprint_hash(here)
    assert match_predictor(res.path, here).level == SAME_DEVICE
    assert loaded.target_name == "local-cpu" and len(loaded.adapters) == len(Predictor.load(base_path).adapters) + 1
    assert loaded.training["calibration"]["networks"] == 5
    # the adapted predictor reproduces what it saved, and took the base's factor of 2 out
    from predictors.calibrate import calibration_networks
    from profiling.networks import network_kernels
    cands = [network_kernels(s) for s in calibration_networks(5, 0, 1e8)]
    fresh = np.asarray(loaded.predict_specs(cands)[0])
    np.testing.assert_allclose(fresh, res.predictor.predict_specs(cands)[0], rtol=1e-9)
    y = np.asarray(res.measured_ms)
    base_err = np.median(np.abs(np.log(np.asarray(res.base_ms) / y)))
    assert base_err > np.log(1.4)  # the twin is off (sanity of the set-up, whatever this machine)
    assert np.median(np.abs(np.log(fresh / y))) < base_err / 2
    assert "calibrated" in res.summary()


def test_calibration_refuses_too_few_networks_and_a_folder_without_the_target(tmp_path):
    with pytest.raises(PredictorError, match="at least 5 networks"):
        calibrate(SHIPPED, networks=2)
    with pytest.raises(PredictorError, match="no predictor for target 'local-cpu'"):
        calibrate(tmp_path, networks=5)


def test_search_and_demo_calibrate_once_when_no_shipped_predictor_matches(tmp_path):
    from predictors.calibrate import predictor_for_this_machine
    here = local_fingerprint(get_target("local-cpu"))
    shipped, cache = tmp_path / "shipped", tmp_path / "cache"
    shipped.mkdir()
    foreign = Predictor.load(closest_predictor(SHIPPED, "local-cpu", here).path)
    foreign.fingerprint = dict(here, cpu_model="Another CPU 9000", cpu_flags="sse2")  # never this machine
    foreign.save(shipped / "local-cpu__another__00000000.lgb")
    kw = dict(networks=5, rounds=1, seconds_per_pass=0.02, max_flops=1e8)
    said = []
    kw["tables"] = tmp_path / "tables"  # none of this machine: whatever data/tables/ ships
    path, how = predictor_for_this_machine(shipped, cache, "local-cpu", progress=said.append, **kw)
    assert how.startswith("calibrated on this machine now") and path.parent == cache
    assert any("no shipped local-cpu predictor was measured on this machine" in s for s in said)
    assert match_predictor(path, here).level == SAME_DEVICE
    stamp = path.stat().st_mtime_ns
    path2, how2 = predictor_for_this_machine(shipped, cache, "local-cpu", **kw)
    assert path2 == path and how2.startswith("calibrated on this machine before") and path.stat().st_mtime_ns == stamp
    # a shipped predictor of this machine wins over any calibration
    (shipped / path.name).write_bytes(path.read_bytes())
    path3, how3 = predictor_for_this_machine(shipped, cache, "local-cpu", **kw)
    assert path3 == shipped / path.name and how3.startswith("shipped predictor measured on this machine")


def test_search_demo_and_predict_latency_auto_choose_the_same_predictor(tmp_path, monkeypatch):
    """One function chooses the predictor for `search`, `make demo` and `predict-latency --predictor
    auto`: on a machine (an explicit fingerprint) that no shipped predictor matches, the three take the
    predictor calibrated here before (cached under the machine's fingerprint); once a shipped one
    matches, the three take that one. Whatever data/ ships for the real machine plays no part."""
    from click.testing import CliRunner

    import predictors.calibrate as cal
    from scripts.demo import find_predictor as demo_choice
    from scripts.predict_latency import main as predict_main
    from scripts.search_cli import _predictor_for_this_machine
    from search.config import RunConfig, VerificationConfig

    here = local_fingerprint(get_target("local-cpu"))
    machine = dict(here, cpu_model="Test CPU 1 (explicit fingerprint)", cpu_flags="sse2 avx avx2 fma")
    shipped, tables, cache_root = tmp_path / "shipped", tmp_path / "tables", tmp_path / "cache"
    shipped.mkdir()
    tables.mkdir()
    base = Predictor.load(closest_predictor(SHIPPED, "local-cpu", here).path)
    base.fingerprint = dict(here, cpu_model="Another CPU 9000", cpu_flags="sse2")
    base.save(shipped / "local-cpu__another__00000000.lgb")
    base.fingerprint = machine
    cached = cache_root / "predictors" / calibration_file_name("local-cpu", machine)
    cached.parent.mkdir(parents=True)
    base.save(cached)
    monkeypatch.setattr(cal, "SHIPPED_PREDICTORS", shipped)
    monkeypatch.setattr(cal, "SHIPPED_TABLES", tables)
    monkeypatch.setattr(cal, "machine_fingerprint", lambda target: machine)
    monkeypatch.setenv("HWNAS_CACHE", str(cache_root))
    model = tmp_path / "m.onnx"
    _small_onnx(model)

    def three() -> list[Path]:
        searched = Path(_predictor_for_this_machine({}, VerificationConfig(), RunConfig(), quiet=True))
        demoed, _ = demo_choice()
        res = CliRunner().invoke(predict_main, [str(model), "--json"])
        assert res.exit_code == 0, res.output
        line = next(s for s in res.stderr.splitlines() if s.startswith("predictor: "))
        predicted = Path(line[len("predictor: "):].split(" (")[0])
        return [searched, demoed, predicted]

    assert three() == [cached] * 3
    (shipped / "local-cpu__test-cpu__11111111.lgb").write_bytes(cached.read_bytes())  # now shipped for it
    assert three() == [shipped / "local-cpu__test-cpu__11111111.lgb"] * 3


def _small_onnx(path: Path) -> None:
    import torch
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    from search.spaces.base import export_model_onnx
    export_model_onnx(net, (3, 16, 16), path)
