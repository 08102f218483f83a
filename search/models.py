"""The search's two models of a candidate, as thin adapters over the other packages.

- Latency: `PredictorLatency` calls a `predictors.Predictor`'s batch path on the space's
  kernel specs (no ONNX export); `MacsLatency` is a stand-in that needs no predictor (MACs
  of the kernel specs, in arbitrary units) for benchmark mode, where the measurements
  adapt it to the device anyway.
- Accuracy: `ProxyAccuracy` scores a cell by zero-cost proxies on a batch of the user's
  data (`search.proxies.compute_proxies`), cached per cell on disk, and turns them into an
  unsupervised rank ensemble against a fixed random reference sample (so a score never
  changes as the search visits more cells); `SupernetAccuracy` evaluates the subnet with
  inherited supernet weights on held-out data (a real accuracy, %).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from search.problem import SearchError


# ------------------------------------------------------------------------------ latency
def _as_triplet(res, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalise whatever a predictor's batch path returns to (median, low, high) arrays."""
    if isinstance(res, tuple) and len(res) == 3:
        med, lo, hi = (np.asarray(x, dtype=float).reshape(n) for x in res)
        return med, lo, hi
    if isinstance(res, dict):
        med = np.asarray(res.get("median_ms", res.get("ms", res.get("latency_ms"))), float).reshape(n)
        lo = np.asarray(res.get("low_ms", res.get("low", med)), float).reshape(n)
        hi = np.asarray(res.get("high_ms", res.get("high", med)), float).reshape(n)
        return med, lo, hi
    if hasattr(res, "columns"):  # DataFrame
        cols = list(res.columns)
        mc = next(c for c in ("median_ms", "ms", "latency_ms", "pred_ms") if c in cols)
        lc = next((c for c in ("low_ms", "low", "lo_ms") if c in cols), mc)
        hc = next((c for c in ("high_ms", "high", "hi_ms") if c in cols), mc)
        return (res[mc].to_numpy(float), res[lc].to_numpy(float), res[hc].to_numpy(float))
    items = list(res)
    med, lo, hi = [], [], []
    for r in items:
        if isinstance(r, (int, float, np.floating)):
            med.append(float(r)); lo.append(float(r)); hi.append(float(r))
        elif isinstance(r, dict):
            m = r.get("median_ms", r.get("ms", r.get("latency_ms")))
            med.append(m); lo.append(r.get("low_ms", r.get("low", m))); hi.append(r.get("high_ms", r.get("high", m)))
        elif isinstance(r, (tuple, list)) and len(r) == 3:
            med.append(r[0]); lo.append(r[1]); hi.append(r[2])
        else:
            m = next(getattr(r, a) for a in ("median_ms", "ms", "latency_ms", "median") if hasattr(r, a))
            med.append(m)
            lo.append(next((getattr(r, a) for a in ("low_ms", "low", "lo") if hasattr(r, a)), m))
            hi.append(next((getattr(r, a) for a in ("high_ms", "high", "hi") if hasattr(r, a)), m))
    return np.array(med, float), np.array(lo, float), np.array(hi, float)


class PredictorLatency:
    def __init__(self, predictor, space, path: str | Path | None = None):
        self.predictor = predictor
        self.space = space
        self.path = path
        self.name = f"predictor {Path(path).name if path else ''} (target {predictor_target(predictor)})"

    def predict(self, archs: Sequence[Any]):
        specs = [self.space.kernel_specs(a) for a in archs]
        return _as_triplet(self.predictor.predict_specs(specs), len(archs))


class MacsLatency:
    """No predictor: total kernel MACs (millions) as a latency stand-in, for benchmark mode."""
    name = "MACs of the kernel specs (no predictor; measurements adapt it)"

    def __init__(self, space):
        self.space = space

    def predict(self, archs):
        from search.verify import kernel_features
        out = []
        for a in archs:
            f = kernel_features(self.space.kernel_specs(a))
            out.append(sum(v for k, v in f.items() if k.startswith("mac_")))
        m = np.maximum(np.array(out, float), 1e-3)
        return m, m, m


def predictor_target(predictor) -> str | None:
    t = getattr(predictor, "target", None)
    if t is None and hasattr(predictor, "header"):
        t = predictor.header.get("target")
    if isinstance(t, dict):
        return t.get("name")
    if t is not None and hasattr(t, "name"):
        return t.name
    return t


def predictor_target_obj(predictor):
    """The predictor's Target object, if it carries one."""
    from profiling.targets import Target
    t = getattr(predictor, "target", None)
    if t is None and hasattr(predictor, "header"):
        t = predictor.header.get("target")
    if isinstance(t, Target):
        return t
    if isinstance(t, dict):
        try:
            return Target.from_dict(t)
        except Exception:
            return None
    return None


def load_predictor(path: str | Path):
    p = Path(path)
    if not p.exists():
        raise SearchError(f"predictor file {p} does not exist; build one with `train-predictor` "
                          f"or pick one under data/predictors/")
    try:
        from predictors import Predictor  # type: ignore
    except ImportError:
        try:
            from predictors.model import Predictor  # type: ignore
        except ImportError as e:
            raise SearchError(f"the predictors package cannot load {p}: {e}") from None
    try:
        return Predictor.load(p)
    except Exception as e:
        raise SearchError(f"cannot load predictor {p}: {e}") from None


# ----------------------------------------------------------------------------- accuracy
def _rank_in(ref: np.ndarray, v: float) -> float:
    """Mid-rank percentile of v within the sorted reference (0..1)."""
    if not np.isfinite(v):
        return 0.0
    lo = np.searchsorted(ref, v, side="left")
    hi = np.searchsorted(ref, v, side="right")
    return float((lo + hi) / 2.0 / len(ref))


class ProxyAccuracy:
    """Unsupervised rank ensemble of zero-cost proxies, scored on demand, cached per cell.

    score(arch) = 100 x mean over proxies of the arch's percentile within a fixed reference
    sample of `n_ref` random architectures: a rank score in [0, 100], not an accuracy.
    """

    def __init__(self, space, inputs, targets, names: Sequence[str], cache_file: str | Path | None = None,
                 n_ref: int = 32, seed: int = 0, compute=None):
        self.space = space
        self.inputs, self.targets = inputs, targets
        self.names = list(names)
        self.name = "rank ensemble of proxies " + "+".join(self.names) + " (percentile score, 0-100)"
        self.unit = "proxy rank score (0-100)"
        self.cache_file = Path(cache_file) if cache_file else None
        self.raw: dict[str, dict[str, float]] = {}
        self.n_computed = 0
        if compute is None:
            from search.proxies import compute_proxies as compute  # type: ignore
        self._compute = compute
        if self.cache_file and self.cache_file.exists():
            for line in self.cache_file.read_text().splitlines():
                try:
                    d = json.loads(line)
                    self.raw[d["arch"]] = {k: (float("-inf") if v is None else float(v))
                                           for k, v in d["scores"].items()}
                except Exception:
                    continue  # a line cut by an interrupt
        rng = np.random.default_rng(10_000 + seed)
        ref_archs = []
        seen = set()
        while len(ref_archs) < n_ref:
            a = space.sample(rng)
            k = space.to_string(a)
            if k not in seen:
                seen.add(k)
                ref_archs.append(a)
        ref = [self.raw_scores(a) for a in ref_archs]
        self.ref = {n: np.sort(np.array([r[n] for r in ref if np.isfinite(r[n])], float)) for n in self.names}

    def raw_scores(self, arch) -> dict[str, float]:
        key = self.space.to_string(arch)
        hit = self.raw.get(key)
        if hit is not None and all(n in hit for n in self.names):
            return hit
        import torch
        torch.manual_seed(0)
        net = self.space.build(arch)
        res = self._compute(net, self.inputs, self.targets, self.names)
        scores = {n: float(res[n]) if res.get(n) is not None and math.isfinite(float(res[n])) else float("-inf")
                  for n in self.names}
        self.raw[key] = scores
        self.n_computed += 1
        if self.cache_file:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.cache_file, "a") as f:
                f.write(json.dumps({"arch": key, "scores": {k: (v if math.isfinite(v) else None)
                                                            for k, v in scores.items()}}) + "\n")
        return scores

    def score(self, archs) -> np.ndarray:
        out = []
        for a in archs:
            r = self.raw_scores(a)
            out.append(100.0 * float(np.mean([_rank_in(self.ref[n], r[n])
                                               for n in self.names if len(self.ref[n])])))
        return np.array(out)


def cache_name(*parts) -> str:
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12]


__all__ = ["MacsLatency", "PredictorLatency", "ProxyAccuracy", "cache_name", "load_predictor",
           "predictor_target", "predictor_target_obj"]
