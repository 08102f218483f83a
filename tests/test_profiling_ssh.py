"""Profiling through a real OpenSSH server on loopback (the `--host` path).

The fixture starts `/usr/sbin/sshd` on a free 127.0.0.1 port with a throwaway host key,
a throwaway user key in its own authorized_keys file and an ssh client config passed
with `--ssh-config` (ssh -F), so the user's ~/.ssh is neither read nor changed. The
"device" is this machine, and the remote Python is the test interpreter.
"""
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from profiling.errors import ProfilingError
from profiling.profiler import Profiler
from profiling.table import read_table
from scripts.profile_device import main as cli

pytestmark = pytest.mark.ssh
FAST = {"max_s": 0.05, "max_runs": 30, "warmup_runs": 1, "warmup_s": 0.0}


def test_profile_through_ssh(sshd, tmp_path):
    out = tmp_path / "t.parquet"
    res = CliRunner().invoke(cli, ["--host", f"{sshd['user']}@127.0.0.1:{sshd['port']}", "--ssh-config", sshd["config"],
                                   "--remote-python", sys.executable, "--max-configs", "5", "--networks", "1",
                                   "--kinds", "conv,softmax,elementwise", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    df, meta = read_table(out)
    assert len(df) == 6 and set(df["host"]) == {f"{sshd['user']}@127.0.0.1:{sshd['port']}"}
    assert meta["fingerprint"]["runtime"] == "onnxruntime" and (df["median_ms"] > 0).all()


def test_device_farm_two_hosts(sshd, tmp_path):
    out = tmp_path / "t.parquet"
    hosts = ["hwnas-device", f"{sshd['user']}@127.0.0.1:{sshd['port']}"]
    s = Profiler("local-cpu", out, hosts=hosts, ssh_config=sshd["config"], remote_python=sys.executable,
                 kinds=["softmax", "elementwise", "layernorm", "activation"], max_configs=16, networks=0,
                 stop_rule=FAST, seed=3, passes=2, kernel_slice_s=0.005, batch_size=4).run()
    assert s.new_kernels == 16 and s.hosts == hosts
    df, _ = read_table(out)
    assert set(df["host"]) == set(hosts)  # both runners took jobs from the one queue


def test_failed_authentication_is_clear(sshd, tmp_path):
    bad = Path(sshd["config"]).read_text().replace("user_key", "other_key")
    cfg = tmp_path / "bad_config"
    cfg.write_text(bad)
    t0 = time.time()
    with pytest.raises(ProfilingError, match="authentication failed") as e:
        Profiler("local-cpu", tmp_path / "t.parquet", hosts=["hwnas-device"], ssh_config=cfg,
                 remote_python=sys.executable).run()
    assert time.time() - t0 < 30 and "Traceback" not in str(e.value)


def test_missing_python_and_runtime_on_the_device(sshd, tmp_path):
    with pytest.raises(ProfilingError, match="could not start Python"):
        Profiler("local-cpu", tmp_path / "t.parquet", hosts=["hwnas-device"], ssh_config=sshd["config"],
                 remote_python="/nonexistent/python3").run()
    fake = tmp_path / "fake"
    (fake / "onnxruntime").mkdir(parents=True)
    (fake / "onnxruntime" / "__init__.py").write_text("raise ImportError('No module named onnxruntime')\n")
    wrapper = tmp_path / "python-without-ort"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    with pytest.raises(ProfilingError, match="pip3 install onnxruntime"):
        Profiler("local-cpu", tmp_path / "t.parquet", hosts=["hwnas-device"], ssh_config=sshd["config"],
                 remote_python=str(wrapper)).run()


def test_remote_device_that_cannot_run_the_target(sshd, tmp_path):
    targets = tmp_path / "targets.toml"
    targets.write_text('[targets.arm-board]\narch = "aarch64"\nthreads = 4\n'
                       '[targets.gpu-board]\nproviders = ["CUDAExecutionProvider", "CPUExecutionProvider"]\n')
    with pytest.raises(ProfilingError, match=r"hwnas-device cannot measure target arm-board: it lacks the aarch64"):
        Profiler("arm-board", tmp_path / "t.parquet", hosts=["hwnas-device"], ssh_config=sshd["config"],
                 remote_python=sys.executable, targets_file=targets).run()
    with pytest.raises(ProfilingError, match=r"CUDA execution provider .*install onnxruntime-gpu"):
        Profiler("gpu-board", tmp_path / "t.parquet", hosts=["hwnas-device"], ssh_config=sshd["config"],
                 remote_python=sys.executable, targets_file=targets).run()
