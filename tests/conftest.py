"""Shared fixtures: the repository root, its interpreter, and a real OpenSSH server on loopback.

The `sshd` fixture starts `/usr/sbin/sshd` on a free 127.0.0.1 port with a throwaway host key,
a throwaway user key in its own authorized_keys file and an ssh client config passed with
`--ssh-config` (ssh -F), so the user's ~/.ssh is neither read nor changed. The "device" is this
machine, and the remote Python is the test interpreter.
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A shell starts a background job (`cmd &`, nohup) with SIGINT ignored, and Python then leaves
# it ignored, so the Ctrl-C tests (here, and in the commands they start, which inherit it) would
# test nothing the user's terminal does. Python's own handler restores a terminal's behaviour; a
# process started from here execs with SIGINT at its default again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def python_exe() -> str:
    """The interpreter running the tests (it has numpy and onnxruntime)."""
    return sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    sshd_bin = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if not sshd_bin or not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        pytest.skip("OpenSSH server or client not installed (`make ssh-server` installs them as root on Debian)")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key", "other_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    auth = d / "authorized_keys"
    auth.write_text((d / "user_key.pub").read_text())
    auth.chmod(0o600)
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    port = _free_port()
    cfg = d / "sshd_config"
    cfg.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
AuthorizedKeysFile {auth}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PidFile {d / 'sshd.pid'}
LogLevel ERROR
""")
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {proc.stderr.read().decode().strip()[-300:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip("sshd did not listen within 10 s")
    user = getpass.getuser()
    client = d / "ssh_config"
    client.write_text(f"""Host hwnas-device 127.0.0.1
    HostName 127.0.0.1
    Port {port}
    User {user}
    IdentityFile {d / 'user_key'}
    IdentitiesOnly yes
    UserKnownHostsFile {d / 'known_hosts'}
    StrictHostKeyChecking no
    LogLevel ERROR
""")
    probe = subprocess.run(["ssh", "-F", str(client), "-o", "BatchMode=yes", "hwnas-device", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        proc.kill()
        pytest.skip(f"cannot log in to the test sshd: {probe.stderr.strip()[-300:]}")
    yield {"config": str(client), "port": port, "user": user, "dir": d}
    proc.terminate()
    proc.wait(10)
