"""Connections to device runners: a local subprocess or `ssh host python3`.

Both start the same bootstrap, which reads the base64 source of `device_runner.py` from
the first stdin line and executes it, so the device needs nothing but python3, numpy and
onnxruntime. Messages are JSON lines (see `device_runner`).
"""
from __future__ import annotations

import base64
import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from .errors import ProfilingError

RUNNER_PATH = Path(__file__).with_name("device_runner.py")
BOOTSTRAP = ("import sys,base64;"
             "exec(compile(base64.b64decode(sys.stdin.readline()),'hwnas_device_runner','exec'))")
HELLO_TIMEOUT_S = 25.0


def runner_source() -> str:
    return RUNNER_PATH.read_text()


@dataclass(frozen=True)
class HostSpec:
    user: str | None
    host: str
    port: int | None

    @classmethod
    def parse(cls, text: str) -> "HostSpec":
        """`[user@]host[:port]`; IPv6 hosts in brackets: `user@[::1]:2222`."""
        m = re.fullmatch(r"(?:([^@\s]+)@)?(\[[^\]]+\]|[^:@\s]+)(?::(\d+))?", text.strip())
        if not m:
            raise ProfilingError(f"bad `hosts` entry {text!r}: expected USER@HOST[:PORT]")
        user, host, port = m.groups()
        return cls(user, host.strip("[]"), int(port) if port else None)

    def __str__(self) -> str:
        s = (f"{self.user}@" if self.user else "") + self.host
        return s + (f":{self.port}" if self.port else "")


class _Requester(Protocol):
    """What the runner protocol's messages need of a connection (this one, or fleet's actor)."""

    def request(self, msg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]: ...


class RunnerConnection:
    """One runner process; `request()` sends a message and waits for its answer."""

    def __init__(self, argv: list[str], label: str, kind: str):
        self.label = label
        self.kind = kind
        self.argv = argv
        self.facts: dict[str, Any] | None = None
        self._stderr: list[str] = []
        self._timed_out = False
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, bufsize=1)
        except FileNotFoundError as e:
            raise ProfilingError(f"cannot start {argv[0]!r}: {e.strerror}"
                                 + (" (install the OpenSSH client)" if kind == "ssh" else "")) from None
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._lines), daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()
        try:
            self._stdin.write(base64.b64encode(runner_source().encode()).decode() + "\n")
            self._stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the process died; hello() reports why

    # ---- plumbing ---------------------------------------------------------------------
    @property
    def _stdin(self) -> IO[str]:
        stdin = self.proc.stdin
        assert stdin is not None  # opened with stdin=PIPE
        return stdin

    @staticmethod
    def _pump(stream, q):
        for line in stream:
            q.put(line)
        q.put(None)

    def _pump_err(self):
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip())
            del self._stderr[:-50]

    @property
    def exited(self) -> bool:
        """The runner process ended by itself (crashed, killed by the system, its SSH link lost),
        not stopped by us after a timeout: a fresh one may well do the same work."""
        return self.proc.poll() is not None and not self._timed_out

    def stderr_tail(self, n: int = 5) -> str:
        return "\n".join(line for line in self._stderr[-n:] if line.strip())

    def _died(self, what: str) -> ProfilingError:
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.05)  # let the stderr pump catch up
        return ProfilingError(self._explain_exit(what))

    def _explain_exit(self, what: str) -> str:
        err = self.stderr_tail()
        rc = self.proc.returncode
        last = err.splitlines()[-1] if err else ""
        if self.kind == "ssh" and rc == 255:
            hint = "check the host name, port, network and your SSH keys (ssh uses BatchMode: no password prompts)"
            if "Permission denied" in err:
                hint = "authentication failed: install your public key on the device (ssh-copy-id) or set IdentityFile in ~/.ssh/config"
            elif "Host key verification failed" in err:
                hint = "the device's host key is unknown or changed: connect once with plain ssh to accept it"
            return f"cannot connect to {self.label} over SSH: {last or 'ssh exited with status 255'} ({hint})"
        if rc in (126, 127) or "not found" in err:
            return (f"{self.label}: could not start Python ({last or 'exit status %s' % rc}); "
                    "install python3 (3.6 or newer) on the device or set `remote_python` to its path")
        detail = f": {err}" if err else ""
        return f"the device runner on {self.label} {what} (exit status {rc}){detail}"

    def request(self, msg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        try:
            self._stdin.write(json.dumps(msg) + "\n")
            self._stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._died("stopped") from None
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self._timed_out = True
            self.kill()
            raise ProfilingError(f"{self.label} did not answer within {timeout:.0f} s") from None
        if line is None:
            raise self._died("stopped")
        try:
            return json.loads(line)
        except ValueError:
            raise ProfilingError(f"{self.label} sent a line that is not JSON: {line[:200]!r}") from None

    # ---- protocol ---------------------------------------------------------------------
    def hello(self, timeout: float = HELLO_TIMEOUT_S) -> dict[str, Any]:
        answer = self.request({"op": "hello"}, timeout=timeout)
        if not answer.get("ok"):
            self.close()
            raise ProfilingError(f"{self.label}: {answer.get('error')}")
        self.facts = answer["facts"]
        return self.facts

    def measure(self: _Requester, job: dict[str, Any], timeout: float = 900.0) -> dict[str, Any]:
        return self.request(dict(job, op="measure"), timeout=timeout)

    def forget(self: _Requester, keys: list[str], timeout: float = 60.0) -> None:
        """Drop the sessions the runner keeps under these `cache_key`s."""
        self.request({"op": "forget", "keys": list(keys)}, timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._stdin.write(json.dumps({"op": "bye"}) + "\n")
                self._stdin.flush()
                self._stdin.close()
                self.proc.wait(timeout=5)
            except Exception:
                self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def measure_payload(model, stop: dict[str, Any], seed: int, batch: int = 1) -> dict[str, Any]:
    """The body of a runner `measure` job for a model whose weights are external data with fills
    (`builders.build_model` or `builders.externalize_weights`); add `id` and `session`."""
    # lazy: loads onnx (slow to import) only when this runs
    from .builders import weight_fills
    initializers = {t.name for t in model.graph.initializer}
    inputs = [{"name": i.name, "shape": [d.dim_value if d.dim_value > 0 else batch
                                         for d in i.type.tensor_type.shape.dim]}
              for i in model.graph.input if i.name not in initializers]
    return {"model": base64.b64encode(model.SerializeToString()).decode(), "fills": weight_fills(model),
            "inputs": inputs, "stop": stop, "seed": seed}


def session_options(target, facts: dict[str, Any], threads: int) -> dict[str, Any]:
    """Runner session settings for `target` on a device that reported `facts` (its providers)."""
    available = facts.get("providers", [])
    providers = [p for p in target.providers if p in available] or ["CPUExecutionProvider"]
    return {"providers": providers, "threads": threads, "fp16": target.precision == "fp16",
            "int8": target.precision == "int8"}


def check_device(target, facts: dict[str, Any], label: str) -> None:
    """Refuse a device (`facts` from its runner's hello) that cannot measure `target`: another
    architecture, or none of the target's execution providers."""
    problems = []
    if target.arch and facts.get("machine") != target.arch:
        problems.append(f"the {target.arch} architecture (it is {facts.get('machine')})")
    available = facts.get("providers", [])
    accel = [p for p in target.providers if p != "CPUExecutionProvider"] or list(target.providers)
    if not any(p in available for p in accel):
        wanted = " or ".join(p.replace("ExecutionProvider", "") for p in accel)
        pkg = "onnxruntime-gpu" if any(p != "CPUExecutionProvider" for p in accel) else "onnxruntime"
        problems.append(f"the {wanted} execution provider (it has {', '.join(available) or 'none'}; "
                        f"install {pkg} there)")
    if problems:
        raise ProfilingError(f"{label} cannot measure target {target.name}: it lacks " + " and ".join(problems))


def local_runner(python: str | None = None) -> RunnerConnection:
    """A runner subprocess on this machine (by default with this interpreter)."""
    python = python or sys.executable
    return RunnerConnection([python, "-u", "-c", BOOTSTRAP], "this machine", "local")


def ssh_argv(host: HostSpec, remote_python: str = "python3", ssh_config: str | os.PathLike | None = None,
             connect_timeout: int = 10, extra: list[str] | None = None) -> list[str]:
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-T"]
    if ssh_config:
        argv += ["-F", str(ssh_config)]
    if host.port:
        argv += ["-p", str(host.port)]
    argv += list(extra or [])
    argv.append(f"{host.user}@{host.host}" if host.user else host.host)
    # One string: the remote shell parses it, hence the quoting.
    argv.append(f"{shlex.quote(remote_python)} -u -c {shlex.quote(BOOTSTRAP)}")
    return argv


def ssh_runner(host: str | HostSpec, remote_python: str = "python3",
               ssh_config: str | os.PathLike | None = None, connect_timeout: int = 10) -> RunnerConnection:
    """A runner on `host` over the system ssh client (the user's keys and ~/.ssh/config)."""
    spec = host if isinstance(host, HostSpec) else HostSpec.parse(host)
    if ssh_config and not Path(ssh_config).is_file():
        raise ProfilingError(f"ssh config file {ssh_config} does not exist")
    return RunnerConnection(ssh_argv(spec, remote_python, ssh_config, connect_timeout), str(spec), "ssh")


__all__ = ["HostSpec", "RunnerConnection", "local_runner", "ssh_runner", "ssh_argv", "runner_source",
           "BOOTSTRAP", "RUNNER_PATH"]
