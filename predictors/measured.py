"""Measured-networks files: whole networks timed on a device, one row each (CSV or Parquet).

They serve two purposes:
- with a table (`Predictor.fit(..., networks=FILE)`): real architectures measured on the table's own
  target join the table's random networks in the graph-level model's training;
- with a base predictor (`predictors.adapt`): 10-50 networks measured on a new
  device adapt a predictor built for another (`predictors.adapt`).

Columns: `latency_ms` and one of
- `onnx`: path of an ONNX file (relative paths are relative to the file's folder);
- `network_spec`: JSON accepted by `profiling.networks.build_network`;
- `kernel_specs`: JSON list of KernelSpec dicts (`{"kind": "conv", "cin": ...}`), as
  `write_networks_file` writes them (so a shipped file needs no ONNX next to it);
and optionally `name`, `family` and `target` (the target the network was measured on).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from profiling.kernels import KernelSpec

from .errors import PredictorError
from .tables import network_specs


@dataclass
class MeasuredNetworks:
    """Networks (ONNX paths or kernel-spec lists) with their measured milliseconds."""
    candidates: list[str | list[KernelSpec]]
    latency_ms: npt.NDArray[np.float64]
    names: list[str]
    families: list[str] = field(default_factory=list)
    targets: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.candidates)


def _text(v: object) -> str | None:
    return v if isinstance(v, str) and v else None


def read_networks_file(path: str | os.PathLike[str]) -> MeasuredNetworks:
    """Read a measured-networks file (format above); every bad row is named in the error."""
    path = Path(path)
    if not path.exists():
        raise PredictorError(f"networks file {path} does not exist")
    try:
        df = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as e:
        raise PredictorError(f"cannot read networks file {path}: {e}") from None
    if "latency_ms" not in df.columns:
        raise PredictorError(f"{path} needs a latency_ms column (measured milliseconds per network); "
                             f"it has {list(df.columns)}")
    cands: list[str | list[KernelSpec]] = []
    names: list[str] = []
    fams: list[str] = []
    targets: list[str | None] = []
    for i, row in enumerate(df.to_dict("records")):
        name = str(row.get("name") or f"row {i + 1}")
        if _text(row.get("onnx")):
            p = Path(row["onnx"])
            p = p if p.is_absolute() else path.parent / p
            if not p.exists():
                raise PredictorError(f"{path}, {name}: ONNX file {p} does not exist")
            cands.append(str(p))
        elif _text(row.get("network_spec")):
            try:
                cands.append(network_specs(row["network_spec"]))
            except Exception as e:
                raise PredictorError(f"{path}, {name}: bad network_spec ({e})") from None
        elif _text(row.get("kernel_specs")):
            try:
                cands.append([KernelSpec.from_dict(d) for d in json.loads(row["kernel_specs"])])
            except Exception as e:
                raise PredictorError(f"{path}, {name}: bad kernel_specs ({e})") from None
        else:
            raise PredictorError(f"{path}, {name}: give the network as an onnx path, a network_spec or kernel_specs")
        names.append(name)
        fams.append(_text(row.get("family")) or "measured")
        targets.append(_text(row.get("target")))
    ms = pd.to_numeric(df["latency_ms"], errors="coerce").to_numpy(float)
    return MeasuredNetworks(cands, ms, names, fams, targets)


def write_networks_file(path: str | os.PathLike[str], names: Sequence[str], kernel_specs: Sequence[Sequence[KernelSpec]],
                        latency_ms: Sequence[float], families: Sequence[str] | None = None,
                        target: str | None = None, extra: dict[str, Sequence[Any]] | None = None) -> None:
    """Write networks as `kernel_specs` rows (CSV), readable by `read_networks_file`."""
    df = pd.DataFrame({"name": list(names),
                       "family": list(families) if families is not None else ["measured"] * len(names),
                       "target": [target] * len(names),
                       "latency_ms": [float(m) for m in latency_ms],
                       "kernel_specs": [json.dumps([s.to_dict() for s in specs], separators=(",", ":"))
                                        for specs in kernel_specs],
                       **{k: list(v) for k, v in (extra or {}).items()}})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)


__all__ = ["MeasuredNetworks", "read_networks_file", "write_networks_file"]
