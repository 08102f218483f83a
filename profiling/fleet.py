"""Device fleets on Ray: each device is a Ray actor that owns one runner connection.

    from profiling.profiler import Profiler
    Profiler("local-cpu", "table.parquet", ray_address="auto", hosts=["me@pi"]).run()

A `DeviceActor` holds a `profiling.transport` connection (a local runner subprocess, or
`ssh host python3` to a device that does not run Ray: a Jetson on JetPack 4 has Python 3.6)
and answers the runner protocol (`hello`, `measure`). The driver sees each actor through an
`ActorConnection`, which has the interface of `transport.RunnerConnection`, so the profiler's
scheduler, drift checks and journaled table work unchanged: the driver alone writes the table.

Where the actors go:
- local devices: a node started with the custom resource `device_resource(target)` (for
  example `ray start --address HEAD:6379 --resources '{"hwnas-device/local-cpu": 2}'`) holds
  that many device slots; one actor per unit is created with `resources={name: 1}`, so work
  goes only to nodes that declared that kind of device. A resource named after the target and
  the fingerprint hash (`hwnas-device/local-cpu/1a2b3c4d`, `device_resource(target, fingerprint_hash)`, which the command line
  prints) also pins the device's identity: an actor whose device has another
  fingerprint is dropped with a warning.
- SSH devices (`hosts`): one actor per host on the driver's node (where the user's SSH keys
  are), or on a node holding `hwnas-ssh/<host>` if one declared it (beside the device).

An actor that dies is restarted by Ray once (`max_restarts`); the configuration it was measuring
goes back in the profiler's queue. An actor restarted while idle is noticed by the pid each
answer carries (`ActorConnection.request`). An actor that cannot come back is dropped with a warning.

Ray is an optional dependency (the `distributed` extra): it is imported only here, and only
when a fleet is asked for, so the single-process path runs without it.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

from .errors import ProfilingError
from .transport import RunnerConnection, local_runner, ssh_runner
from .fingerprint import fingerprint_hash, make_fingerprint

RESOURCE_PREFIX = "hwnas-device"
SSH_RESOURCE_PREFIX = "hwnas-ssh"
NAMESPACE = "hwnas"
CONNECT_TIMEOUT_S = 10.0
ACTOR_RESTARTS = 1
READY_TIMEOUT_S = 120.0   # an actor waits this long for a slot on its node and its runner's hello


def import_ray():
    """Ray, or a ProfilingError that says how to install it (Ray is the optional `distributed` extra)."""
    try:
        import ray  # lazy: only a run on a Ray cluster needs Ray, and the single-process path must run without it
    except ImportError:
        raise ProfilingError("a Ray cluster (`ray_address`) needs Ray, which is not installed: pip install 'hwnas[distributed]' "
                             "(or pip install ray)") from None
    return ray


def device_resource(target_name: str, fingerprint_hash: str | None = None) -> str:
    """The custom resource a Ray node declares for each device of `target_name` beside it."""
    return f"{RESOURCE_PREFIX}/{target_name}" + (f"/{fingerprint_hash}" if fingerprint_hash else "")


def ssh_resource(host: str) -> str:
    return f"{SSH_RESOURCE_PREFIX}/{host}"


# ---------------------------------------------------------------------------- the actor
class DeviceActor:
    """One device: a runner connection kept open for the actor's life (run as a Ray actor)."""

    def __init__(self, host: str | None = None, remote_python: str = "python3",
                 ssh_config: str | None = None, runner_python: str | None = None):
        self.host = host
        self.conn = (ssh_runner(host, remote_python=remote_python, ssh_config=ssh_config) if host
                     else local_runner(runner_python))
        try:
            self.facts = self.conn.hello()
        except ProfilingError:
            self.conn.kill()
            raise

    def hello(self) -> dict[str, Any]:
        return {"facts": self.facts, "node": socket.gethostname(), "pid": os.getpid()}

    def request(self, msg: dict[str, Any], timeout: float | None = None) -> tuple[int, dict[str, Any]]:
        """One runner protocol message (measure, forget, ...): (this process's pid, the answer).

        The pid tells the driver whether Ray restarted the actor since its last call."""
        return os.getpid(), self.conn.request(msg, timeout=timeout)

    def close(self) -> None:
        self.conn.close()


class ActorConnection:
    """The driver's side of a `DeviceActor`: the `transport.RunnerConnection` interface."""

    kind = "ray"

    def __init__(self, ray, actor, label: str):
        self.ray = ray
        self.actor = actor
        self.label = label
        self.facts: dict[str, Any] | None = None
        self.node = ""
        self.pid: int | None = None
        self.gone = False  # died for good (Ray will not restart it)

    def _call(self, method: str, *args, timeout: float | None = None):
        ray = self.ray
        try:
            return ray.get(getattr(self.actor, method).remote(*args), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise ProfilingError(f"{self.label} did not answer within {timeout:.0f} s") from None
        except ray.exceptions.RayActorError as e:
            # the actor (or its node) died, or its constructor failed: say why in one line.
            # ActorUnavailableError: Ray is restarting it; ActorDiedError: it is gone for good.
            self.gone = isinstance(e, ray.exceptions.ActorDiedError)
            cause = getattr(e, "error_msg", None) or str(e)
            raise ProfilingError(f"the device actor {self.label} died: {_first_line(cause)}") from None
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else e
            raise ProfilingError(f"{self.label}: {cause}") from None

    def hello(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        info = self._call("hello", timeout=timeout)
        self.facts, self.node, self.pid = info["facts"], info["node"], info["pid"]
        return self.facts

    def request(self, msg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        # the runner's own timeout fires first and says which device was silent
        pid, answer = self._call("request", msg, timeout, timeout=None if timeout is None else timeout + 30)
        if self.pid is not None and pid != self.pid:
            # Ray restarted the actor between two calls (it died while idle): a fresh runner, whose
            # speed level and sessions are not the ones checked before; the caller treats it as a
            # restart (its batch is measured again after a fresh sentinel check)
            raise ProfilingError(f"the device actor {self.label} was restarted between calls "
                                 f"(process {self.pid} is gone, {pid} answered)")
        return answer

    # the runner protocol's messages, as `RunnerConnection` sends them (one definition of each)
    measure = RunnerConnection.measure
    forget = RunnerConnection.forget

    def restart(self) -> bool:
        """After the actor died: wait for Ray to restart it (a fresh runner); False when it
        is gone for good (no restarts left, its node lost) or does not come back in time."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.gone and time.monotonic() < deadline:
            try:
                self.hello(timeout=max(1.0, deadline - time.monotonic()))
                return True
            except ProfilingError:
                time.sleep(0.2)  # still restarting
        return False

    def close(self) -> None:
        try:
            self.ray.get(self.actor.close.remote(), timeout=10)
        except Exception:
            pass  # already gone
        self.kill()

    def kill(self) -> None:
        try:
            self.ray.kill(self.actor, no_restart=True)
        except Exception:
            pass


def _first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    for line in lines:  # Ray's messages start with boilerplate; the ProfilingError line is the cause
        if "ProfilingError" in line:
            return line.split("ProfilingError:", 1)[-1].strip()
    return lines[0] if lines else "no reason given"


# ---------------------------------------------------------------------------- the cluster
def _check_reachable(address: str) -> None:
    """Fail fast (seconds, not Ray's minute of retries) when nothing listens at HOST:PORT."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ProfilingError(f"bad Ray address {address!r}: expected HOST:PORT (the head's GCS port, "
                             "6379 by default), 'auto' for a cluster started on this machine, or "
                             "nothing for a private one")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ProfilingError(f"no Ray cluster at {address} ({e.strerror or e}): start one with "
                             f"`ray start --head --port {port}` on that machine, or check the address") from None


def connect_ray(address: str | None):
    """Join the Ray cluster at `address` ('auto': the one started on this machine; None or '':
    the cluster this process already joined, else a private one of this machine's cores).
    Returns (ray, joined), joined=True when this call started the connection (the caller
    disconnects). Fails in seconds with a clear message when no cluster answers."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    if address and address != "auto" and not address.startswith("ray://"):
        _check_reachable(address)
    try:
        ray.init(address=address or None, namespace=NAMESPACE, log_to_driver=False,
                 include_dashboard=False, configure_logging=False)
    except ConnectionError as e:
        where = "on this machine" if address == "auto" else f"at {address}"
        raise ProfilingError(f"no Ray cluster {where}: {_first_line(e)} (start one with `ray start --head`)") from None
    except Exception as e:  # Ray raises several types for an unreachable or mismatched cluster
        raise ProfilingError(f"cannot join the Ray cluster at {address or 'a private instance'}: "
                             f"{_first_line(e)}") from None
    return ray, True


def fleet_slots(ray, target_name: str) -> list[tuple[str, str | None]]:
    """[(resource name, fingerprint hash or None)] for each device slot of `target_name` the
    cluster declares (one per unit of each matching resource)."""
    prefix = device_resource(target_name)
    slots = []
    for name, amount in sorted(ray.cluster_resources().items()):
        if name == prefix or name.startswith(prefix + "/"):
            fp = name[len(prefix) + 1:] or None
            slots += [(name, fp)] * int(amount + 1e-9)
    return slots


def start_fleet(target, address: str | None = None, hosts: list[str] | tuple[str, ...] = (),
                remote_python: str = "python3", ssh_config: str | os.PathLike | None = None,
                runner_python: str | None = None, local_default: bool = True,
                warn: Callable[[str], None] | None = None) -> tuple[list[ActorConnection], Callable[[], None]]:
    """Device actors for `target` in the Ray cluster at `address` (see the module docstring):
    one per declared device slot, one per `hosts` entry, and, when the cluster declares none
    and no host is given (`local_default`), one for the driver's own machine.

    Returns (connections, shutdown); each connection has said hello. A device that cannot
    start is dropped with a warning; none at all is an error. `shutdown()` kills the actors
    and leaves the cluster if this call joined it."""
    warn = warn or (lambda message: None)
    ray, joined = connect_ray(address)

    def shutdown() -> None:
        for c in conns:
            c.kill()
        if joined:
            ray.shutdown()

    conns: list[ActorConnection] = []
    pending: list[tuple[ActorConnection, str | None]] = []
    try:
        # lazy: loads ray (slow to import) only when this runs
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        remote = ray.remote(DeviceActor)
        here = ray.get_runtime_context().get_node_id()
        cluster = ray.cluster_resources()
        ssh_cfg = str(ssh_config) if ssh_config else None
        for i, (res, fp) in enumerate(fleet_slots(ray, target.name)):
            actor = remote.options(num_cpus=0, resources={res: 1}, max_restarts=ACTOR_RESTARTS,
                                   max_task_retries=0).remote(None, remote_python, ssh_cfg, runner_python)
            pending.append((ActorConnection(ray, actor, f"{res}#{i}"), fp))
        for host in hosts:
            opts: dict[str, Any] = dict(num_cpus=0, max_restarts=ACTOR_RESTARTS, max_task_retries=0)
            if cluster.get(ssh_resource(host)):
                opts["resources"] = {ssh_resource(host): 0.001}
            else:  # the driver's node holds the user's SSH keys and config
                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(here, soft=False)
            actor = remote.options(**opts).remote(host, remote_python, ssh_cfg, runner_python)
            pending.append((ActorConnection(ray, actor, f"{host} (ray)"), None))
        if not pending and local_default:
            actor = remote.options(num_cpus=0, max_restarts=ACTOR_RESTARTS, max_task_retries=0,
                                   scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
                                   ).remote(None, remote_python, ssh_cfg, runner_python)
            pending.append((ActorConnection(ray, actor, "this machine (ray)"), None))
        if not pending:
            raise ProfilingError(f"the Ray cluster declares no device of target {target.name}: start its workers "
                                 f"with `ray start --resources '{{\"{device_resource(target.name)}\": 1}}'`, or pass "
                                 f"`host`")
        for c, fp in pending:
            try:
                c.hello()
            except ProfilingError as e:
                warn(f"dropping {c.label}: {e}")
                c.kill()
                continue
            got = fingerprint_hash(make_fingerprint(c.facts or {}, target))
            if fp and got != fp:
                warn(f"dropping {c.label}: its device's fingerprint is {got}, not the {fp} its resource declares")
                c.kill()
                continue
            if c.node:
                c.label = f"{c.label}@{c.node}"
            conns.append(c)
        if not conns:
            raise ProfilingError(f"no device actor of target {target.name} started in the Ray cluster "
                                 "(the warnings above say why)")
    except BaseException:
        for c, _ in pending:
            c.kill()
        if joined:
            ray.shutdown()
        raise
    return conns, shutdown


__all__ = ["ActorConnection", "DeviceActor", "connect_ray", "device_resource", "fleet_slots", "import_ray",
           "ssh_resource", "start_fleet"]
