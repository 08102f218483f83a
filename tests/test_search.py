"""Search engine tests: real NB201 space, real LightGBM predictor, real ONNX sessions, small sizes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
NB201_CSV = SHARED / "data" / "nb201" / "nb201_cifar10.csv"


@pytest.fixture(scope="session")
def predictor_path(tmp_path_factory) -> Path:
    """The shipped local-cpu predictor that best matches this machine (the one profiled on it
    when the repository has one) if there is one, else a real LightGBM predictor fit on the
    kernels of random NB201 cells (targets from a roofline of their FLOPs and bytes, standing
    in for a profiled table)."""
    from predictors.catalog import find_predictor
    from profiling.fingerprint import local_fingerprint
    from profiling.targets import get_target
    shipped = find_predictor(ROOT / "data" / "predictors", "local-cpu", local_fingerprint(get_target("local-cpu")))
    if shipped is not None:
        return shipped.path
    from predictors import features as F
    from predictors.model import Predictor
    from search.spaces import get_space
    space = get_space("nb201", resolution=8)
    rng = np.random.default_rng(0)
    specs = list({s for _ in range(40) for s in space.kernel_specs(space.sample(rng))})
    st = np.array([F.spec_stats(s, 1) for s in specs])
    ms = 0.004 + st[:, 0] * 2e-9 + st[:, 2] * 5e-9
    p = Predictor(target=get_target("local-cpu").to_dict(), kernel_rounds=30)
    p.fit_kernels(specs, ms * rng.uniform(0.9, 1.1, len(ms)))
    path = tmp_path_factory.mktemp("pred") / "local-cpu.lgb"
    p.save(path)
    return path


def _cfg(tmp_path, predictor_path, **kw):
    from search.run import SearchConfig
    base = dict(space="nb201", predictor=str(predictor_path), data="digits", population=8, generations=2,
                finalists=2, verify_rounds=1, out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                progress=False, proxies=("jacob_cov", "params"), proxy_batch=16, accuracy="proxies",
                reference_size=12)
    base.update(kw)
    return SearchConfig(**base)


def _budget(predictor_path, q=50):
    """The q-th percentile of predicted latency over random cells, scaled by this machine's
    measured/predicted ratio on the 3 cells predicted nearest it: a budget that means the
    same on whichever machine the suite runs, however well the shipped predictor fits it."""
    from search import wiring
    from search.run import SearchConfig
    from search.verify import RunnerDevice
    pred, target = wiring.load_predictor_and_target(SearchConfig(predictor=str(predictor_path)))
    data = wiring.load_data("digits")
    space = wiring.make_space("nb201", data)
    lat = wiring.latency_model(pred, space, predictor_path)
    rng = np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(100)]
    med, _, _ = lat.predict(archs)
    budget = float(np.percentile(med, q))
    device = RunnerDevice(target)
    try:
        ratios = [device.measure_onnx(space.export_onnx(archs[i])) / med[i]
                  for i in np.argsort(np.abs(med - budget))[:3]]
    finally:
        device.close()
    return budget * float(np.median(ratios))


def test_budget_search_writes_every_output_and_verifies(tmp_path, predictor_path):
    import onnxruntime as ort
    from search.run import run_search
    from search.spaces import get_space
    budget = _budget(predictor_path)
    # the default estimator: the supernet (trained briefly on digits) + proxies
    res = run_search(_cfg(tmp_path, predictor_path, latency_budget_ms=budget, accuracy="auto",
                          supernet_epochs=0.5))
    out = tmp_path / "out"
    for f in ("frontier.csv", "frontier.json", "frontier.png", "best.json", "best.onnx", "best.pt", "report.md"):
        assert (out / f).exists() and (out / f).stat().st_size > 0, f
    best = json.loads((out / "best.json").read_text())
    get_space("nb201").from_string(best["arch"])  # the space's own notation
    assert res.best is not None and res.best.key == best["arch"]
    # finalists were measured on this machine through real ONNX sessions
    measured = [c for c in res.candidates if c.measured_ms is not None]
    # a finalist measured within its own uncertainty of the budget is measured again
    # (settle_near_budget), so the count is one per finalist plus the repeats its row records
    repeats = [len(row.get("measurements") or [row["measured_ms"]]) for vr in res.rounds for row in vr.measured]
    assert 1 <= len(measured) <= 2 and len(repeats) == len(measured)
    from search.verify import REMEASURE_CAP
    assert res.n_measurements == sum(repeats) and all(1 <= n <= REMEASURE_CAP for n in repeats)
    for c in measured:
        assert c.measured_ms > 0
        assert (c.dropped is not None) == (c.measured_ms > budget)
    if res.best.measured_ms is not None:
        assert res.best.measured_ms <= budget
    assert res.correction.startswith("measured =")
    sess = ort.InferenceSession(str(out / "best.onnx"), providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    assert sess.run(None, {sess.get_inputs()[0].name: np.zeros(shape, np.float32)})[0].shape == (1, 10)
    ck = torch.load(out / "best.pt", weights_only=True)
    assert ck["arch"] == best["arch"] and ck["state_dict"]
    # best.pt/best.onnx hold the subnet with the supernet's weights, BN recalibrated
    assert ck["inherited_supernet_weights"] is True and best["inherited_supernet_weights"] is True
    assert Path(ck["supernet_checkpoint"]).exists() and 0 <= ck["supernet_val_accuracy"] <= 100
    from search.accuracy.supernet import build_supernet
    space = get_space("nb201", resolution=8, num_classes=10, in_channels=3)
    net = space.build(space.from_string(best["arch"]))
    net.load_state_dict(ck["state_dict"])
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    onnx_out = ort.InferenceSession(str(out / "best.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {sess.get_inputs()[0].name: x[:1].numpy()})[0]
    assert np.allclose(onnx_out, net(x[:1]).detach().numpy(), atol=1e-4)
    sn = build_supernet(space)
    sn.load_state_dict(torch.load(ck["supernet_checkpoint"], weights_only=True)["model"])
    inherited = sn.subnet(space.from_string(best["arch"])).state_dict()
    conv = [k for k, v in inherited.items() if v.dim() == 4][0]
    assert torch.equal(inherited[conv], ck["state_dict"][conv])  # weights from the supernet
    # the finalists went through the profiling device runner
    assert "profiling runner" in (out / "report.md").read_text()
    rows = (out / "frontier.csv").read_text().splitlines()
    assert rows[0].startswith("arch,estimated_accuracy,predicted_ms") and len(rows) > 1
    fj = json.loads((out / "frontier.json").read_text())
    assert any(p["measured_ms"] is not None for p in fj["frontier"])
    report = (out / "report.md").read_text()
    assert "What was measured" in report and best["arch"] in report


def test_frontier_and_min_accuracy_formulations(tmp_path, predictor_path):
    from search.run import run_search
    res = run_search(_cfg(tmp_path, predictor_path, finalists=2, out=str(tmp_path / "f")))
    assert res.formulation.kind == "frontier" and res.best is not None
    accs = [c.accuracy for c in res.frontier]
    lats = [c.latency_ms for c in res.frontier]
    assert accs == sorted(accs) and lats == sorted(lats)
    thr = float(np.median([c.accuracy for c in res.candidates]))
    res2 = run_search(_cfg(tmp_path, predictor_path, min_accuracy=thr, out=str(tmp_path / "m")))
    assert res2.best is not None and res2.best.accuracy >= thr


def test_correction_closes_the_loop(predictor_path):
    from search.problem import Candidate, Correction
    cands = [Candidate(key=str(i), arch=None, encoding=np.zeros(1), accuracy=0, predicted_ms=p, low_ms=p,
                       high_ms=p, raw_predicted_ms=p) for i, p in enumerate([1.0, 2.0, 4.0])]
    c = Correction()
    for cand in cands[:2]:
        c.add(cand, 2.5 * cand.raw_predicted_ms)
    assert np.allclose(c.apply(cands), [2.5, 5.0, 10.0])


def _cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "scripts.search_cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, **kw)


def test_cli_refuses_predictor_of_another_target(tmp_path, predictor_path):
    from search import wiring
    from search.problem import SearchError
    from search.run import SearchConfig
    cfg = SearchConfig(predictor=str(predictor_path), target="raspberry-pi-4")
    with pytest.raises(SearchError, match="built for target 'local-cpu'.*`force`"):  # the CLI: --force, below
        wiring.load_predictor_and_target(cfg)
    cfg.force = True
    _, target = wiring.load_predictor_and_target(cfg)
    assert target.name == "raspberry-pi-4"
    r = _cli("--predictor", str(predictor_path), "--target", "raspberry-pi-4", "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "--force" in r.stderr


def test_cli_clear_errors_for_bad_data(tmp_path, predictor_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _cli("--predictor", str(predictor_path), "--data", str(empty), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "empty" in r.stderr
    r = _cli("--predictor", str(predictor_path), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--data" in r.stderr and "does not exist" in r.stderr  # a missing path: usage
    for bad in ("gpu", "cuda:99"):  # no such device type; no such GPU on any machine the tests run on
        r = _cli("--predictor", str(predictor_path), "--device", bad, "--out", str(tmp_path / "o"))
        assert r.returncode == 1 and f"--device {bad}" in r.stderr and "--device cpu" in r.stderr, r.stderr
    r = _cli("--predictor", str(predictor_path), "--supernet-weight", "-1", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--supernet-weight" in r.stderr, r.stderr


def test_cli_budget_below_fastest_candidate(tmp_path, predictor_path):
    r = _cli("--predictor", str(predictor_path), "--latency-budget", "0.0001", "--population", "6",
             "--generations", "1", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), "--quiet",
             "--proxies", "params", "--accuracy", "proxies")
    assert r.returncode == 3, r.stderr
    assert "below the fastest candidate" in r.stderr and "|" in r.stderr  # shows the arch


def test_ctrl_c_leaves_usable_partial_output(tmp_path, predictor_path):
    out = tmp_path / "o"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "scripts.search_cli", "--predictor", str(predictor_path),
                          "--population", "8", "--generations", "500", "--budget-minutes", "5", "--out", str(out),
                          "--proxies", "params", "--accuracy", "proxies",
                          "--cache-dir", str(tmp_path / "c")], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # a suite started in the background (`make test &`) runs with SIGINT ignored, and a
                         # child inherits that: Python then installs no Ctrl-C handler, as for any background job
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    while not (out / "frontier.json").exists() and time.time() - t0 < 180 and p.poll() is None:
        time.sleep(0.2)
    assert (out / "frontier.json").exists(), "no generation finished"
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    try:
        stdout, stderr = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    assert p.returncode == 130, stderr
    for f in ("frontier.csv", "frontier.json", "frontier.png", "best.json", "report.md"):
        assert (out / f).exists(), f
    assert "interrupted" in (out / "report.md").read_text()
    best = json.loads((out / "best.json").read_text())
    assert best["interrupted"] is True and best["arch"]


@pytest.mark.skipif(not NB201_CSV.exists(), reason="../shared/data/nb201/nb201_cifar10.csv is absent")
def test_benchmark_mode_counts_lookups(tmp_path):
    from search.benchmark import BenchmarkDevice
    from search.run import SearchConfig, run_search
    budget = BenchmarkDevice(NB201_CSV, "edgegpu").percentile(50)
    res = run_search(SearchConfig(space="nb201", data="digits", benchmark=f"{NB201_CSV}:edgegpu",
                                  latency_budget_ms=budget, population=8, generations=2, max_measurements=14,
                                  calibration=6, finalists=3, out=str(tmp_path / "b"),
                                  cache_dir=str(tmp_path / "c"), progress=False, proxies=("params",),
                                  proxy_batch=16, export_best=False, reference_size=12))
    assert 6 <= res.n_measurements <= 14
    assert res.best is not None and res.best.measured_ms is not None and res.best.measured_ms <= budget
    gt = res.ground_truth
    assert gt.chosen_ms <= budget and gt.gap >= 0
    assert "Benchmark ground truth" in (tmp_path / "b" / "report.md").read_text()


def test_runner_device_measures_an_exported_model(tmp_path):
    """The finalist path: ONNX export -> runner job (weights as external data the runner fills)
    -> profiling's local device runner; the same job would go over SSH with --host."""
    import onnx
    from profiling.targets import get_target
    from search.spaces import get_space
    from profiling.measure import model_job
    from search.verify import RunnerDevice
    space = get_space("nb201", resolution=8)
    arch = space.from_string("|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|none~0|skip_connect~1|nor_conv_3x3~2|")
    model = onnx.load_from_string(space.export_onnx(arch))
    job = model_job(model, get_target("local-cpu"), {"providers": ["CPUExecutionProvider"], "cores": 1})
    from profiling.builders import EMBEDDED_FLOAT_MAX
    n_float = sum(t.data_type == onnx.TensorProto.FLOAT and int(np.prod(t.dims)) > EMBEDDED_FLOAT_MAX
                  for t in model.graph.initializer)
    assert len(job["fills"]) == n_float > 0 and job["inputs"] == [{"name": "input", "shape": [1, 3, 8, 8]}]
    dev = RunnerDevice(get_target("local-cpu"), workdir=tmp_path, stop={"max_s": 0.2, "max_runs": 50})
    try:
        ms = dev.measure_onnx(model)
    finally:
        dev.close()
    assert 0 < ms < 1000 and dev.last_stats["runs"] >= 3


def test_finalist_measured_through_ssh_runner(sshd, tmp_path):
    """`search --host`: a finalist's ONNX is timed by the profiling runner over a real SSH connection."""
    from profiling.targets import get_target
    from search.spaces import get_space
    from search.verify import RunnerDevice
    space = get_space("nb201", C=8, N=1, resolution=16)
    onnx_bytes = space.export_onnx(space.sample(0))
    remote = RunnerDevice(get_target("local-cpu"), host=f"{sshd['user']}@127.0.0.1:{sshd['port']}",
                          remote_python=sys.executable, ssh_config=sshd["config"],
                          stop={"max_s": 0.05, "max_runs": 30, "warmup_runs": 1, "warmup_s": 0.0})
    try:
        ms = remote.measure_onnx(onnx_bytes)
        # the SSH link is lost between two finalists: the next one is measured over a fresh link
        first = remote.conn
        first.proc.kill()
        first.proc.wait()
        assert remote.measure_onnx(onnx_bytes) > 0 and remote.conn is not first
    finally:
        remote.close()
    assert 0 < ms < 1000
    assert "127.0.0.1" in remote.name


def test_a_local_runner_that_dies_between_finalists_is_started_again(tmp_path):
    """The runner killed between two measurements (by the system's OOM killer, say): the next
    measurement starts a fresh runner and is taken whole from it, alone or interleaved."""
    import os
    import signal

    from profiling.targets import get_target
    from search.problem import Candidate
    from search.spaces import get_space
    from search.verify import RunnerDevice
    space = get_space("nb201", C=8, N=1, resolution=8)
    archs = [space.sample(i) for i in range(2)]
    fast = {"max_s": 0.05, "max_runs": 30, "warmup_runs": 1, "warmup_s": 0.0}
    dev = RunnerDevice(get_target("local-cpu"), workdir=tmp_path, stop=fast)
    try:
        assert dev.measure_onnx(space.export_onnx(archs[0])) > 0
        pids = [dev.conn.proc.pid]
        for step in ("alone", "interleaved"):
            os.kill(dev.conn.proc.pid, signal.SIGKILL)
            dev.conn.proc.wait()
            if step == "alone":
                assert dev.measure_onnx(space.export_onnx(archs[1])) > 0
            else:
                cands = [Candidate(key=f"c{i}", arch=a, encoding=np.zeros(0), accuracy=50.0, predicted_ms=1.0,
                                   low_ms=0.9, high_ms=1.1, raw_predicted_ms=1.0, raw_low_ms=0.9, raw_high_ms=1.1)
                         for i, a in enumerate(archs)]
                stats = dev.measure_together(space, cands, passes=2, slice_s=0.02)
                assert len(stats) == 2 and all(len(s["pass_ms"]) == 2 for s in stats)
            assert dev.conn.proc.poll() is None and dev.conn.proc.pid not in pids
            pids.append(dev.conn.proc.pid)
    finally:
        dev.close()
