"""NB201 benchmark mode: a CSV of measured latencies stands in for the device.

`benchmark="CSV:DEVICE"` reads the `DEVICE_ms` column of a CSV keyed by `arch` (the
NAS-Bench-201 string). Each lookup counts as one real measurement, and the device refuses
to measure more than `max_measurements` (default 50) cells. The search never reads an
accuracy column from the CSV: only `ground_truth` (used by the report and the benchmark
script, after the choice is made) does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.problem import Candidate, SearchError


class MeasurementLimitReached(SearchError):
    pass


def parse_benchmark(spec: str) -> tuple[Path, str]:
    """'path/to.csv:edgegpu' -> (path, 'edgegpu')."""
    if ":" not in spec:
        raise SearchError(f"`benchmark` wants CSV:DEVICE (e.g. nb201_cifar10.csv:edgegpu), got {spec!r}")
    path, device = spec.rsplit(":", 1)
    return Path(path), device.removesuffix("_ms")


def _read_csv(path: Path, usecols):
    # lazy: loads pandas (slow to import) only when this runs
    import pandas as pd
    try:
        return pd.read_csv(path, usecols=usecols)
    except FileNotFoundError:
        raise SearchError(f"benchmark CSV {path} does not exist") from None
    except ValueError as e:
        # lazy: loads pandas (slow to import) only when this runs
        import pandas as pd
        cols = list(pd.read_csv(path, nrows=0).columns)
        devices = [c[:-3] for c in cols if c.endswith("_ms")]
        raise SearchError(f"benchmark CSV {path}: {e}; devices in this file: {', '.join(devices)}") from None


class BenchmarkDevice:
    """Looks latencies up in the `DEVICE_ms` column; one lookup = one measurement."""

    def __init__(self, csv_path: str | Path, device: str, max_measurements: int = 50):
        self.csv_path = Path(csv_path)
        self.device = device
        col = f"{device}_ms"
        df = _read_csv(self.csv_path, ["arch", col])
        # a missing entry (-1 in the edgetpu column of NAS-Bench-201 HW) is a cell the device
        # could not run: its lookup says inf, so it is dropped as over any budget
        ms = df[col].astype(float)
        self.table = dict(zip(df["arch"], ms.where(ms > 0, np.inf)))
        self.name = f"benchmark {self.csv_path.name}:{device}"
        self.max_measurements = max_measurements
        self.n_measurements = 0
        self.measured: dict[str, float] = {}
        self.how = f"lookup of column {col} in {self.csv_path.name}"

    def measure(self, space, cand: Candidate) -> float:
        return self.lookup(cand.key)

    def lookup(self, arch: str) -> float:
        if arch in self.measured:  # the same cell twice is one measurement
            return self.measured[arch]
        if self.n_measurements >= self.max_measurements:
            raise MeasurementLimitReached(f"the benchmark allows {self.max_measurements} measurements")
        try:
            ms = self.table[arch]
        except KeyError:
            raise SearchError(f"cell {arch} is not in {self.csv_path}") from None
        self.n_measurements += 1
        self.measured[arch] = ms
        return ms

    def percentile(self, q: float) -> float:
        """A latency budget for benchmark scripts (reads the whole latency column, not accuracy)."""
        v = np.array(list(self.table.values()))
        return float(np.percentile(v[np.isfinite(v)], q))


@dataclass
class GroundTruth:
    best_arch: str
    best_val_acc: float
    chosen_val_acc: float | None
    chosen_ms: float | None
    gap: float | None
    n_under_budget: int


def ground_truth(csv_path: str | Path, device: str, budget_ms: float | None, chosen: str | None,
                 acc_col: str = "val_acc") -> GroundTruth:
    """For the report only, after the search: the best cell under the budget and the gap."""
    col = f"{device}_ms"
    df = _read_csv(Path(csv_path), ["arch", acc_col, col])
    df = df[df[col] > 0]  # cells without a latency on this device cannot be chosen
    ok = df if budget_ms is None else df[df[col] <= budget_ms]
    best = ok.loc[ok[acc_col].idxmax()]
    row = df[df["arch"] == chosen]
    chosen_acc = float(row[acc_col].iloc[0]) if len(row) else None
    chosen_ms = float(row[col].iloc[0]) if len(row) else None
    return GroundTruth(str(best["arch"]), float(best[acc_col]), chosen_acc, chosen_ms,
                       None if chosen_acc is None else float(best[acc_col]) - chosen_acc, int(len(ok)))


__all__ = ["BenchmarkDevice", "GroundTruth", "MeasurementLimitReached", "ground_truth", "parse_benchmark"]
