"""Whole ONNX models measured on a target through the device runner, locally or over SSH.

    from profiling.measure import measure_models
    results = measure_models(["resnet50.onnx", "my_net.onnx"], target="local-cpu")   # or host="me@pi"

The models travel without their weights (the runner fills them with seeded random values), and
are measured with the profiler's network stopping rule and the target's session settings
(providers, threads, precision), so the figures compare with the target's latency table.
`write_measured_networks` writes them as a measured-networks file (`onnx` and `latency_ms`
columns) for `train-predictor --networks` (see `predictors.measured`).
"""
from __future__ import annotations

import csv
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import ProfilingError
from .profiler import NETWORK_STOP  # the profiler's whole-network stopping rule
from .targets import Target, TargetError, get_target


@dataclass
class ModelMeasurement:
    """One model's latency on the target (milliseconds over the timed runs)."""
    name: str
    path: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int


def model_job(model, target: Target, facts: dict[str, Any], stop: dict[str, Any] | None = None,
              seed: int = 0) -> dict[str, Any]:
    """A runner `measure` job for an ONNX model (path, bytes or ModelProto) on `target`."""
    import onnx

    from .builders import externalize_weights
    from .transport import measure_payload, session_options
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model))
    elif isinstance(model, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(model))
    payload = measure_payload(externalize_weights(model), dict(stop or NETWORK_STOP), seed, target.batch)
    threads = target.resolved_threads(facts.get("usable_cores") or facts.get("cores"))
    return dict(payload, session=session_options(target, facts, threads))


def connect(target: Target, host: str | None = None, remote_python: str = "python3",
            ssh_config: str | os.PathLike | None = None):
    """A started runner that can measure `target` (this machine, or `host` over SSH)."""
    from .transport import check_device, local_runner, ssh_runner
    if host:
        conn = ssh_runner(host, remote_python=remote_python, ssh_config=ssh_config)
    else:
        try:
            target.check_local_support()
        except TargetError as e:
            raise ProfilingError(str(e)) from None
        conn = local_runner()
    try:
        check_device(target, conn.hello(), conn.label)
    except ProfilingError:
        conn.kill()
        raise
    return conn


def measure_models(paths: Sequence[str | os.PathLike], target: str | Target = "local-cpu", host: str | None = None,
                   remote_python: str = "python3", ssh_config: str | os.PathLike | None = None,
                   targets_file: str | os.PathLike | None = None, stop: dict[str, Any] | None = None,
                   progress: Callable[[int, int, ModelMeasurement], None] | None = None,
                   rounds: int = 1) -> list[ModelMeasurement]:
    """Measure each ONNX file on the target; a model the runner cannot run is an error naming it.

    `rounds` > 1 measures the whole list that many times, round-robin, and reports each model's
    median of its round medians (p10/p90 likewise; runs summed): a slow spell of a shared or
    virtual machine then moves one round of every model a little instead of a few models a lot.
    `progress` is called once per model, after its last round."""
    if rounds < 1:
        raise ProfilingError(f"rounds must be at least 1, not {rounds}")
    try:
        target = target if isinstance(target, Target) else get_target(target, targets_file)
    except TargetError as e:
        raise ProfilingError(str(e)) from None
    files = [Path(p) for p in paths]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise ProfilingError(f"no such ONNX file: {', '.join(missing)}")
    conn = connect(target, host, remote_python, ssh_config)
    out = []
    seen: list[list[dict[str, Any]]] = [[] for _ in files]
    try:
        jobs = []
        for path in files:
            try:
                jobs.append(model_job(path, target, conn.facts or {}, stop))
            except Exception as e:  # onnx's own parse errors name no file
                raise ProfilingError(f"{path}: not a readable ONNX model ({e})") from None
        for r in range(rounds):
            for i, (path, job) in enumerate(zip(files, jobs)):
                ans = conn.measure(dict(job, id=path.stem))
                if not ans.get("ok"):
                    raise ProfilingError(f"{conn.label} could not run {path}: {ans.get('error')}")
                seen[i].append(ans["stats"])
                if r < rounds - 1:
                    continue
                st = seen[i]
                med = statistics.median(float(x["median_ms"]) for x in st)
                m = ModelMeasurement(path.stem, str(path), med,
                                     statistics.median(float(x.get("p10_ms", x["median_ms"])) for x in st),
                                     statistics.median(float(x.get("p90_ms", x["median_ms"])) for x in st),
                                     sum(int(x.get("runs", 0)) for x in st))
                out.append(m)
                if progress:
                    progress(i + 1, len(files), m)
    finally:
        conn.close()
    return out


def write_measured_networks(path: str | os.PathLike, measurements: Sequence[ModelMeasurement], target: str,
                            family: str = "measured") -> None:
    """A measured-networks CSV: name, family, target, latency_ms, p10_ms, p90_ms, runs and the ONNX
    path (relative to the CSV's folder when it lies below it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "family", "target", "latency_ms", "p10_ms", "p90_ms", "runs", "onnx"])
        for m in measurements:
            p = Path(m.path).resolve()
            rel = os.path.relpath(p, base) if p.is_relative_to(base) else str(p)
            w.writerow([m.name, family, target, f"{m.median_ms:.6g}", f"{m.p10_ms:.6g}", f"{m.p90_ms:.6g}", m.runs, rel])


__all__ = ["ModelMeasurement", "measure_models", "model_job", "connect", "write_measured_networks", "NETWORK_STOP"]
