"""Whole ONNX models measured on a target through the device runner, locally or over SSH.

    from profiling.measure import measure_models
    results = measure_models(["resnet50.onnx", "my_net.onnx"], target="local-cpu")   # or host="me@pi"

The models travel without their weights (the runner fills them with seeded random values), and
are measured with the profiler's network stopping rule and the target's session settings
(providers, threads, precision), so the figures compare with the target's latency table.
`write_measured_networks` writes them as a measured-networks file (`onnx` and `latency_ms`
columns), which a predictor trains on or adapts from (see `predictors.measured`).

`measure_interleaved(conn, jobs)` is the measurement every figure should rest on when the
machine changes speed under it (a VM that switches speed level for seconds at a time, a phone or
Jetson under DVFS): the jobs of a batch are timed round-robin, each for a short slice per pass,
over several passes, and each one's value is the median of its pass medians. A slow spell then
moves one pass of every job a little instead of a few jobs a lot. The profiler, `measure_models`,
finalist verification and the benchmarks' ground truth all measure this way.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import ProfilingError
from .interleave import MODEL_PASSES, MODEL_SLICE_S, SLICE_MIN_RUNS, combine_passes, measure_interleaved, slice_rule
from .profiler import NETWORK_STOP  # the profiler's whole-network stopping rule
from .targets import Target, TargetError, get_target
import onnx
from .builders import externalize_weights
from .quantize import is_quantized
from .transport import check_device, local_runner, measure_payload, session_options, ssh_runner


@dataclass
class ModelMeasurement:
    """One model's latency on the target (milliseconds over the timed runs)."""
    name: str
    path: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    # The fastest timed run, and each pass's median in pass order: what a benchmark needs to ask
    # which statistic of a drifting machine repeats best.
    min_ms: float | None = None
    pass_ms: tuple[float, ...] = ()


def model_job(model, target: Target, facts: dict[str, Any], stop: dict[str, Any] | None = None,
              seed: int = 0) -> dict[str, Any]:
    """A runner `measure` job for an ONNX model (path, bytes or ModelProto) on `target`.

    A float model travels without its weights and, on an int8 target, the runner quantizes it
    (`device_runner.quantize_file`). A model already quantized (QDQ or QOperator, e.g. from
    `profiling.quantize.quantize`) travels whole, its int8 weights and scales as they are, and
    is run as it is (the runner does not quantize it again; TensorRT still reads its QDQ scales)."""

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model))
    elif isinstance(model, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(model))
    threads = target.resolved_threads(facts.get("usable_cores") or facts.get("cores"))
    session = session_options(target, facts, threads)
    if is_quantized(model):
        payload = measure_payload(model, dict(stop or NETWORK_STOP), seed, target.batch)
        # its weights are all inside (fills a quantizer copied from a built model's metadata fill nothing)
        return dict(payload, fills=[], session=dict(session, quantized=True))
    payload = measure_payload(externalize_weights(model), dict(stop or NETWORK_STOP), seed, target.batch)
    return dict(payload, session=session)


def connect(target: Target, host: str | None = None, remote_python: str = "python3",
            ssh_config: str | os.PathLike | None = None):
    """A started runner that can measure `target` (this machine, or `host` over SSH)."""
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
                   rounds: int | None = None, *, passes: int = MODEL_PASSES, slice_s: float = MODEL_SLICE_S,
                   min_runs: int = SLICE_MIN_RUNS, on_pass: Callable[[int, int], None] | None = None) -> list[ModelMeasurement]:
    """Measure each ONNX file on the target, interleaved (`measure_interleaved`: `passes` round-robin
    passes over the whole list, at least `slice_s` seconds and `min_runs` runs per model per pass); a model the runner
    cannot run is an error naming it. `rounds` is the older name of `passes`. `stop` is accepted for
    compatibility and ignored: the passes are the stopping rule. `progress(i, n, measurement)` is
    called once per model at the end, `on_pass(done, passes)` after each pass."""
    passes = rounds if rounds is not None else passes
    if passes < 1:
        raise ProfilingError(f"passes must be at least 1, not {passes}")
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
    try:
        jobs = []
        for path in files:
            try:
                jobs.append(dict(model_job(path, target, conn.facts or {}, stop), id=path.stem))
            except Exception as e:  # onnx's own parse errors name no file
                raise ProfilingError(f"{path}: not a readable ONNX model ({e})") from None
        answers = measure_interleaved(conn, jobs, passes=passes, slice_s=slice_s, min_runs=min_runs, on_pass=on_pass)
        for i, (path, ans) in enumerate(zip(files, answers)):
            if not ans.get("ok"):
                raise ProfilingError(f"{conn.label} could not run {path}: {ans.get('error')}")
            st = ans["stats"]
            m = ModelMeasurement(path.stem, str(path), st["median_ms"], st["p10_ms"], st["p90_ms"], st["runs"],
                                 st.get("min_ms"), tuple(st.get("pass_ms", ())))
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


__all__ = ["ModelMeasurement", "measure_models", "measure_interleaved", "combine_passes", "slice_rule",
           "MODEL_PASSES", "MODEL_SLICE_S", "model_job", "connect", "write_measured_networks", "NETWORK_STOP"]
