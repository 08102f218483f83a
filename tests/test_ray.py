"""Ray on a real local cluster: device actors (`profiling.fleet`) and evaluation tasks (`search.accuracy.tasks`).

One cluster per module (Ray takes seconds to start): `ray.init` with two CPUs and one device
slot of target local-cpu (`hwnas-device/local-cpu`), so each run has two device actors: the slot's
local runner, and one over the loopback sshd of `conftest.sshd` (the device runs no Ray).
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray", reason="Ray is not installed (the 'distributed' extra; `make test` installs it)")

from profiling.fleet import device_resource  # noqa: E402
from profiling.profiler import Profiler  # noqa: E402
from profiling.table import read_table  # noqa: E402
from scripts.profile_device import main as cli  # noqa: E402
from tests.test_search import _cfg, predictor_path  # noqa: E402,F401  (the search tests' predictor fixture)

pytestmark = pytest.mark.ssh
FAST = {"max_s": 0.05, "max_runs": 30, "warmup_runs": 1, "warmup_s": 0.0}
KINDS = ["softmax", "elementwise", "layernorm", "activation"]
INTERLEAVE = dict(passes=2, kernel_slice_s=0.005, batch_size=2)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, resources={device_resource("local-cpu"): 1}, namespace="hwnas",
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def local_actor_pid() -> int | None:
    """The process of this test's local device actor: a descendant of this process (Ray's
    workers are children of the raylet this process started) whose child is a runner."""
    kids, todo, found = _children(), [os.getpid()], None
    while todo:
        pid = todo.pop()
        for c in kids.get(pid, []):
            todo.append(c)
            child = _cmdline(c)
            if "DeviceActor" in _cmdline(pid) and "hwnas_device_runner" in child and not child.startswith("ssh "):
                found = pid
    return found


def test_two_device_actors_write_the_same_table_as_one_process(cluster, sshd, tmp_path):
    host = f"{sshd['user']}@127.0.0.1:{sshd['port']}"
    common = dict(hosts=[host], ssh_config=sshd["config"], remote_python=sys.executable, kinds=KINDS, max_configs=8,
                  networks=1, stop_rule=FAST, network_stop_rule=FAST, seed=4, **INTERLEAVE)
    s = Profiler("local-cpu", tmp_path / "ray.parquet", ray_address="", **common).run()
    s1 = Profiler("local-cpu", tmp_path / "one.parquet", **common).run()
    assert s.rows_new == s1.rows_new == 9 and s.fingerprint_hash == s1.fingerprint_hash
    df, meta = read_table(tmp_path / "ray.parquet")
    df1, meta1 = read_table(tmp_path / "one.parquet")
    assert len(df) == len(df1) == 9 and df["config_id"].is_unique
    assert list(df.columns) == list(df1.columns) and dict(df.dtypes) == dict(df1.dtypes)
    assert set(meta) == set(meta1) and meta["fingerprint"] == meta1["fingerprint"]
    hosts = set(df["host"])
    assert len(hosts) == 2 and any(h.startswith(device_resource("local-cpu")) for h in hosts) \
        and any(h.startswith(host) for h in hosts), hosts  # both actors took jobs from the one queue
    # the command line: --ray alone joins the cluster this process runs
    res = CliRunner().invoke(cli, ["--ray", "--max-configs", "2", "--networks", "0", "--kinds", "softmax", "--quiet",
                                   "--out", str(tmp_path / "cli.parquet")])
    assert res.exit_code == 0, res.output
    assert len(read_table(tmp_path / "cli.parquet")[0]) == 2


def test_killed_actor_loses_nothing(cluster, sshd, tmp_path):
    """SIGKILL the local actor's process mid-run: Ray restarts it once, its configuration in
    flight is measured again, and a second kill drops it (the SSH actor finishes the run)."""
    kills, notes = [], []

    def progress(event, **info):
        if event == "note":
            notes.append(info["message"])
        restarted = any("restarted" in n for n in notes)
        if event == "row" and ((not kills and info["kernel_rows"] >= 3) or (len(kills) == 1 and restarted)):
            pid = local_actor_pid()
            if pid and pid not in kills:
                kills.append(pid)
                os.kill(pid, signal.SIGKILL)

    out = tmp_path / "t.parquet"
    s = Profiler("local-cpu", out, ray_address="", hosts=["hwnas-device"], ssh_config=sshd["config"],
                 remote_python=sys.executable, kinds=KINDS, max_configs=24, networks=0, stop_rule=FAST, seed=5, **INTERLEAVE,
                 progress=progress).run()
    assert len(kills) >= 1, "no local actor process found to kill"
    assert s.new_kernels == 24 and s.stopped_by == "max_configs"
    df, _ = read_table(out)
    assert len(df) == 24 and df["config_id"].is_unique and (df["median_ms"] > 0).all()
    assert any("restarted" in n for n in notes), notes
    if sum("waiting for it to restart" in n for n in notes) == 2:  # the run saw the second kill
        assert any("continuing without it" in n for n in notes), notes


def test_verification_device_through_an_actor(cluster, tmp_path):
    """search's finalist verification measures through a device actor (`RunnerDevice(ray_address=...)`)."""
    from profiling.builders import build_model
    from profiling.kernels import KernelSpec
    from profiling.targets import get_target
    from search.verify import RunnerDevice
    dev = RunnerDevice(get_target("local-cpu"), ray_address="", stop=FAST)
    try:
        model = build_model(KernelSpec.make("activation", act="relu", c=8, h=8, w=8), 1)
        assert dev.measure_onnx(model) > 0
        conn = dev.connect()
        assert conn.kind == "ray"
        # the actor dies between two measurements: Ray restarts it, and the next measurement
        # notices the new process (a fresh runner) and is taken from it, whole
        first = conn.pid
        os.kill(first, signal.SIGKILL)
        assert dev.measure_onnx(model) > 0
        assert conn.pid is not None and conn.pid != first
    finally:
        dev.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_reachable_cluster_fails_fast_and_clearly(tmp_path):
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "scripts.profile_device", "--ray", f"127.0.0.1:{_free_port()}",
                        "--out", str(tmp_path / "t.parquet"), "--max-configs", "2"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert time.time() - t0 < 30
    assert r.returncode == 1 and "no Ray cluster at 127.0.0.1:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "t.parquet").exists()


# ------------------------------------------------------------------ candidate evaluation as Ray tasks
def test_proxy_scores_as_ray_tasks_equal_the_local_ones_and_the_driver_writes_the_cache(cluster, tmp_path):
    import numpy as np
    import torch
    from search.models import EstimatedAccuracy, read_cache_lines
    from search.spaces import get_space
    from search.accuracy.tasks import RayPool
    space = get_space("nb201", resolution=8, C=4, N=1)
    rng = np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(6)]
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 10
    local = EstimatedAccuracy(space, x, y, ["synflow", "jacob_cov", "params"], reference_size=4, seed=0,
                              cache_file=tmp_path / "local.jsonl")
    pool = RayPool("", chunk=2)
    assert pool.max_workers == 2  # the cluster's two CPUs
    remote = EstimatedAccuracy(space, x, y, ["synflow", "jacob_cov", "params"], reference_size=4, seed=0,
                               cache_file=tmp_path / "ray.jsonl", pool=pool)
    a, b = local.features(archs), remote.features(archs)
    assert list(a.index) == list(b.index) and np.allclose(a.to_numpy(), b.to_numpy(), equal_nan=True)
    assert np.allclose(local.score(archs), remote.score(archs))
    lines = read_cache_lines(tmp_path / "ray.jsonl")  # written here, one line per computed cell
    assert len(lines) == remote.n_computed == local.n_computed and len({r["arch"] for r in lines}) == len(lines)


def test_short_trainings_as_ray_tasks(cluster, tmp_path):
    from search import wiring
    from search.models import read_cache_lines
    from search.problem import Candidate
    from search.accuracy.rerank import RerankConfig, rerank_by_training
    from search.accuracy.tasks import RayPool
    data = wiring.load_data("digits", seed=0, max_per_class=40)
    space = wiring.make_space("nb201", data)
    import numpy as np
    rng = np.random.default_rng(0)
    cands = []
    for i in range(3):
        arch = space.sample(rng)
        cands.append(Candidate(key=space.to_string(arch), arch=arch, encoding=np.zeros(0), accuracy=90.0 - i,
                               predicted_ms=1.0, low_ms=0.9, high_ms=1.1, raw_predicted_ms=1.0))
    cfg = RerankConfig(top_k=3, epochs=1.0)
    make = lambda options: wiring.make_space("nb201", data, options)  # noqa: E731
    cache = tmp_path / "rerank.jsonl"
    local = rerank_by_training("nb201", make, cands, data.train, data.val, data.resolution, cfg)
    remote = rerank_by_training("nb201", make, cands, data.train, data.val, data.resolution, cfg, cache_file=cache,
                                pool=RayPool(""))
    assert {r.key: r.short_accuracy for r in remote} == {r.key: r.short_accuracy for r in local}
    assert len(read_cache_lines(cache)) == 3


def test_search_with_ray_matches_the_single_process_search(cluster, tmp_path, predictor_path):
    """`search --ray`: proxy scores as Ray tasks, finalists through a device actor; the same
    candidates and estimates as in one process, and this process wrote the per-cell cache."""
    import numpy as np
    from search.models import read_cache_lines
    from search.run import run_search
    # a budget the reference population never reaches, on a loaded machine too: a reference cut at
    # the deadline would score the two runs in different units
    kw = dict(min_accuracy=40.0, population=6, generations=1, finalists=1, budget_minutes=60)
    one = run_search(_cfg(tmp_path / "one", predictor_path, **kw))
    many = run_search(_cfg(tmp_path / "ray", predictor_path, ray_address="", **kw))
    assert [c.key for c in many.candidates] == [c.key for c in one.candidates]
    assert np.allclose([c.accuracy for c in many.candidates], [c.accuracy for c in one.candidates])
    assert not any("reference population was cut" in n for n in one.notes + many.notes)
    assert many.n_measurements >= 1 and all(c.measured_ms > 0 for c in many.candidates if c.measured_ms is not None)
    caches = list((tmp_path / "ray" / "cache").glob("proxies-*.jsonl"))
    assert len(caches) == 1 and len(read_cache_lines(caches[0])) >= len({c.key for c in many.candidates})
