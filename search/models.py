"""The search's two models of a candidate, as thin adapters over the other packages.

- Latency: `PredictorLatency` calls a `predictors.Predictor`'s batch path on the space's
  kernel specs (no ONNX export); `MacsLatency` is a stand-in that needs no predictor (MACs
  of the kernel specs, in arbitrary units) for benchmark mode, where the measurements
  adapt it to the device anyway.
- Accuracy: `EstimatedAccuracy` is `search.accuracy.estimator.AccuracyEstimator`'s unsupervised rank
  ensemble (zero-cost proxies on a batch of the user's data and, when a supernet is wired,
  the subnet's accuracy with inherited weights), as a 0-100 rank score; proxy scores are
  cached per cell on disk.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from search.accuracy.estimator import SUPERNET_COLUMN, AccuracyEstimator
from search.problem import SearchError
from predictors.model import Predictor
from search.verify import kernel_features


# ------------------------------------------------------------------------------ latency
class PredictorLatency:
    def __init__(self, predictor, space, path: str | Path | None = None):
        self.predictor = predictor
        self.space = space
        self.path = path
        self.name = f"predictor {Path(path).name if path else ''} (target {predictor.target_name})"

    def predict(self, archs: Sequence[Any]):
        specs = [self.space.kernel_specs(a) for a in archs]
        return self.predictor.predict_specs(specs)  # (median, low, high) arrays, ms


class MacsLatency:
    """No predictor: total kernel MACs (millions) as a latency stand-in, for benchmark mode."""
    name = "MACs of the kernel specs (no predictor; measurements adapt it)"

    def __init__(self, space: Any) -> None:
        self.space = space

    def predict(self, archs):
        out = []
        for a in archs:
            f = kernel_features(self.space.kernel_specs(a))
            out.append(sum(v for k, v in f.items() if k.startswith("mac_")))
        m = np.maximum(np.array(out, float), 1e-3)
        return m, m, m


def load_predictor(path: str | Path):
    p = Path(path)
    if not p.exists():
        raise SearchError(f"predictor file {p} does not exist; build one with `train-predictor` "
                          f"or pick one under data/predictors/")
    try:
        return Predictor.load(p)
    except Exception as e:
        raise SearchError(f"cannot load predictor {p}: {e}") from None


# ----------------------------------------------------------------------------- accuracy
class _CachedEstimator(AccuracyEstimator):
    """`AccuracyEstimator` whose proxy scores also persist on disk, one JSON line per cell,
    so reruns and the benchmark's many runs score each cell once."""

    def __init__(self, *args, cache_file: str | Path | None = None, **kw):
        super().__init__(*args, **kw)
        self.cache_file = Path(cache_file) if cache_file else None
        self.disk: dict[str, dict[str, float]] = {}
        self.n_computed = 0
        for d in read_cache_lines(self.cache_file):
            try:
                self.disk[d["arch"]] = {k: (float("nan") if v is None else float(v)) for k, v in d["scores"].items()}
            except Exception:
                continue  # a row of another layout

    def _on_disk(self, key: str) -> bool:
        hit = self.disk.get(key)
        return hit is not None and all(p in hit for p in self.proxies)

    def _prefetch_jobs(self, todo):
        """Cells with every proxy on disk need only their supernet column (if any)."""
        fresh = [a for a in todo if not self._on_disk(self.space.to_string(a))]
        jobs = [(fresh, self._job())] if fresh else []
        cached = [a for a in todo if self._on_disk(self.space.to_string(a))]
        if cached and self.supernet is not None:
            jobs.append((cached, self._job(proxies=[])))
        return jobs

    def _features_one(self, arch):
        key = self.space.to_string(arch)
        if key in self._cache:
            return self._cache[key]
        hit = self.disk.get(key)
        if self._on_disk(key):
            feats = {p: hit[p] for p in self.proxies}
            if self.supernet is not None:  # not cached: it depends on the supernet's training
                feats[SUPERNET_COLUMN] = self._compute(arch, proxies=[])[SUPERNET_COLUMN]
            self._cache[key] = feats
            return feats
        feats = super()._features_one(arch)
        self.n_computed += 1
        if self.cache_file:
            scores = {p: (feats[p] if math.isfinite(feats[p]) else None) for p in self.proxies}
            append_cache_line(self.cache_file, {"arch": key, "scores": {**hit, **scores} if hit else scores})
        return feats


class EstimatedAccuracy:
    """The search's accuracy objective: `search.accuracy.estimator`'s unsupervised rank ensemble.

    score(arch) = 100 x the arch's weighted mean percentile, over the ensemble's columns (the
    proxies and, with a supernet, the subnet's supernet accuracy), within a fixed reference
    sample of random architectures of the space: a 0-100 rank score (50 = as good as the median
    random architecture), the unit of `min_accuracy`. It never changes as the search visits
    more cells.
    """

    unit = "estimated rank score (0-100)"

    def __init__(self, space, inputs, targets, proxies: Sequence[str], supernet=None, val=None, calib=None,
                 cache_file: str | Path | None = None, reference_size: int = 64, seed: int = 0,
                 supernet_weight: float = 0.25, pool=None, log=None, deadline: float | None = None):
        self.space = space
        self.supernet = supernet
        self.est = _CachedEstimator(space, inputs, targets, proxies=proxies, supernet=supernet,
                                    val=None if val is None else val, calib=calib,
                                    supernet_weight=supernet_weight, reference_size=reference_size, seed=seed,
                                    cache_file=cache_file)
        self.est.pool = pool  # a search.accuracy.tasks pool (Ray tasks with `ray_address`); None: one by one here
        cols = list(self.est.proxies) + (["supernet accuracy"] if supernet is not None else [])
        self.name = "rank ensemble of " + "+".join(cols) + " (search.accuracy.estimator; 0-100 rank score)"
        # the reference population: reference_size random architectures, drawn as est.fit() draws
        # them, scored here one by one for the progress line (and cut short at the deadline)
        rng = np.random.default_rng(seed)
        ref = [space.sample(rng) for _ in range(reference_size)]
        self.est.prefetch(ref)  # with a pool (Ray tasks), all at once; else nothing here
        t0 = time.monotonic()
        self.reference_cut: int | None = None
        n = 0
        for i, a in enumerate(ref):
            self.est._features_one(a)
            n = i + 1
            if log and (n % 8 == 0 or n == len(ref)):
                el = time.monotonic() - t0
                log(f"reference population: {n}/{len(ref)} architectures scored ({el:.0f} s, about "
                    f"{el / n * (len(ref) - n):.0f} s left)")
            if deadline is not None and time.monotonic() >= deadline and 8 <= n < len(ref):
                self.reference_cut = n
                if log:
                    log(f"reference population: cut at {n} architectures by the time budget")
                break
        self.est.fit(ref[:n] if ref else None)

    @property
    def n_computed(self) -> int:
        return self.est.n_computed

    def features(self, archs):
        return self.est.features(archs)

    def score(self, archs) -> np.ndarray:
        return 100.0 * np.asarray(self.est.predict(list(archs)), float)

    def supernet_accuracy(self, arch) -> float | None:
        """Top-1 % on the held-out split of the subnet with inherited weights (None without a supernet)."""
        if self.supernet is None:
            return None
        return float(self.est.features([arch])[SUPERNET_COLUMN].iloc[0])

def cache_name(*parts) -> str:
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12]


def read_cache_lines(path: Path | None) -> list[dict]:
    """The rows of a per-cell JSON-lines cache (none if it does not exist yet); a line cut by an
    interrupt is skipped."""
    rows = []
    if path is not None and path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def append_cache_line(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


__all__ = ["EstimatedAccuracy", "MacsLatency", "PredictorLatency", "append_cache_line", "cache_name",
           "load_predictor", "read_cache_lines"]
