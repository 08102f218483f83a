"""Named hardware targets: the runtime settings a latency table is measured under.

A target is a preset, like a timm model name: `local-cpu` always means onnxruntime's
CPU execution provider, one thread, fp32, batch 1. Users add their own in TOML::

    [targets.orin-nx]
    description = "Jetson Orin NX, TensorRT fp16"
    runtime = "onnxruntime"
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    precision = "fp16"
    threads = 4
    batch = 1
    arch = "aarch64"
"""
from __future__ import annotations

import os
import platform
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable

from profiling.errors import ProfilingStageError

PRECISIONS = ("fp32", "fp16", "int8")


class TargetError(ProfilingStageError, ValueError):
    """A target name, file or setting is wrong; the message says how to fix it."""


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    runtime: str = "onnxruntime"
    # Execution providers in priority order; the runtime falls back down the list.
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    precision: str = "fp32"
    # 0 means "all cores of the machine that measures".
    threads: int = 1
    batch: int = 1
    # Expected `platform.machine()` of the device; None accepts any.
    arch: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise TargetError(f"target {self.name}: precision {self.precision!r} is not one of {PRECISIONS}")
        if self.threads < 0:
            raise TargetError(f"target {self.name}: threads must be >= 0 (0 = all cores), got {self.threads}")
        if self.batch < 1:
            raise TargetError(f"target {self.name}: batch must be >= 1, got {self.batch}")
        if not self.providers:
            raise TargetError(f"target {self.name}: needs at least one execution provider")

    @property
    def form(self) -> str:
        """The deployment form in words: precision and batch, e.g. 'int8, batch 32'."""
        return f"{self.precision}, batch {self.batch}"

    def with_form(self, precision: str | None = None, batch: int | None = None) -> "Target":
        """This target in another deployment form; the name says which (`local-cpu` at int8 and
        batch 8 is `local-cpu@int8-b8`), so its tables and predictors never mix with the preset's."""
        precision = precision or self.precision
        batch = int(batch or self.batch)
        if (precision, batch) == (self.precision, self.batch):
            return self
        suffix = "-".join(([precision] if precision != self.precision else [])
                          + ([f"b{batch}"] if batch != self.batch else []))
        return replace(self, name=f"{self.name}@{suffix}", precision=precision, batch=batch,
                       description=f"{self.description} (as {precision}, batch {batch})")

    def resolved_threads(self, cores: int | None = None) -> int:
        return self.threads or (cores or os.cpu_count() or 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["providers"] = list(self.providers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Target":
        d = dict(d)
        d["providers"] = tuple(d.get("providers", ("CPUExecutionProvider",)))
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise TargetError(f"target {d.get('name', '?')}: unknown keys {sorted(unknown)}; valid keys are {sorted(known)}")
        return cls(**d)

    def check_local_support(self, available_providers: Iterable[str] | None = None,
                            machine: str | None = None) -> None:
        """Fail fast when this machine cannot measure the target without a `host`."""
        machine = machine or platform.machine()
        if available_providers is None:
            import onnxruntime as ort  # lazy: only the host side needs it
            available_providers = ort.get_available_providers()
        available = list(available_providers)
        problems = []
        if self.arch and machine != self.arch:
            problems.append(f"the {self.arch} architecture (this machine is {machine})")
        accelerators = [p for p in self.providers if p != "CPUExecutionProvider"]
        needed = accelerators or list(self.providers)
        if not any(p in available for p in needed):
            wanted = " or ".join(p.replace("ExecutionProvider", "") for p in needed)
            problems.append(f"the {wanted} execution provider (this machine has only {', '.join(available)})")
        if problems:
            raise TargetError(
                f"target {self.name} needs " + " and ".join(problems)
                + ": run on the device, or pass `host` user@device")


BUILTIN_TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("local-cpu", "this machine, onnxruntime CPU EP, 1 thread, fp32, batch 1 (the default)"),
        Target("local-cpu-mt", "this machine, onnxruntime CPU EP, all cores, fp32, batch 1", threads=0),
        Target("local-cpu-int8", "this machine, onnxruntime CPU EP, 1 thread, int8 (static QDQ, per-channel "
               "weights: QLinearConv/QGemm), batch 1", precision="int8"),
        Target("local-cpu-b32", "this machine, onnxruntime CPU EP, 1 thread, fp32, batch 32 (throughput)",
               batch=32),
        Target("cuda-gpu", "an NVIDIA GPU through onnxruntime's CUDA EP, fp32, batch 1",
               providers=("CUDAExecutionProvider", "CPUExecutionProvider")),
        Target("jetson-nano", "Jetson Nano (JetPack 4), onnxruntime TensorRT EP in fp16 with CUDA EP fallback",
               providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
               precision="fp16", threads=4, arch="aarch64"),
        Target("jetson-nano-int8", "Jetson Nano (JetPack 4), onnxruntime TensorRT EP in int8 (explicit QDQ "
               "quantization) with CUDA EP fallback",
               providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
               precision="int8", threads=4, arch="aarch64"),
        Target("raspberry-pi-4", "Raspberry Pi 4 (Cortex-A72), onnxruntime CPU EP, 4 threads, fp32",
               threads=4, arch="aarch64"),
    )
}


def load_targets_file(path: str | os.PathLike) -> dict[str, Target]:
    """Read user targets from a TOML file with one `[targets.NAME]` table per target."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise TargetError(f"targets file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"targets file {path} is not valid TOML: {e}") from None
    tables = data.get("targets")
    if not isinstance(tables, dict) or not tables:
        raise TargetError(f"targets file {path} has no [targets.NAME] tables")
    out = {}
    for name, body in tables.items():
        if not isinstance(body, dict):
            raise TargetError(f"targets file {path}: targets.{name} must be a table")
        body = {"description": f"user target from {path.name}", **body, "name": name}
        out[name] = Target.from_dict(body)
    return out


def list_targets(targets_file: str | os.PathLike | None = None) -> dict[str, Target]:
    targets = dict(BUILTIN_TARGETS)
    if targets_file:
        targets.update(load_targets_file(targets_file))
    return targets


def get_target(name: str, targets_file: str | os.PathLike | None = None) -> Target:
    targets = list_targets(targets_file)
    try:
        return targets[name]
    except KeyError:
        raise TargetError(f"unknown target {name!r}; valid targets: {', '.join(sorted(targets))}") from None


__all__ = ["Target", "TargetError", "BUILTIN_TARGETS", "get_target", "list_targets", "load_targets_file"]
