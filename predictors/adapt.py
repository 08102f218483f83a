"""Few-shot adaptation of a predictor to a new device from 10-50 measured whole networks.

The base predictor's kernel models still describe *what* a network computes (its
predicted time per kernel group: 1x1 convs, kxk convs, depthwise convs, linear layers,
attention, norms, memory-bound ops, pooling, unknown ops); the new device mostly changes
*how fast* each group runs. The adapter is a non-negative linear model

    new_ms = b + w_parent * parent_ms + sum_g w_g * S_g

where parent_ms is the prediction before this adapter (the base device, or the device
adapted before: adapters chain) and S_g the base kernel predictions summed per group. It
is fitted by non-negative least relative squares with a ridge pull towards
`new_ms = parent_ms`, its strength chosen by leave-one-out; the leave-one-out residuals
give a conformal interval. The whole adapter is a few numbers in the .lgb header.

Measured-networks file (`train-predictor --adapt-from base.lgb --networks FILE`): CSV or
Parquet, one row per network, a `latency_ms` column and one of
- `onnx`: path of an ONNX file (relative paths are relative to the file's folder);
- `network_spec`: JSON accepted by `profiling.networks.build_network`;
- `kernel_specs`: JSON list of KernelSpec dicts (`{"kind": "conv", "cin": ...}`);
and optionally `name`.
"""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from profiling.kernels import KernelSpec

from . import features as F

NG = len(F.GROUPS)
GROUP_COLS = slice(7, 7 + NG)


def _design(parent: np.ndarray, sums: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(len(parent)), parent, sums[:, GROUP_COLS]])


def _fit(X: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    from scipy.optimize import nnls
    A = X / y[:, None]
    scale = np.maximum(np.abs(A).mean(axis=0), 1e-12)
    Z = A / scale
    prior = np.zeros(X.shape[1])
    prior[1] = 1.0
    u0 = prior * scale
    reg = math.sqrt(lam) * np.eye(X.shape[1])
    Zr = np.vstack([Z, reg])
    tr = np.concatenate([np.ones(len(y)), math.sqrt(lam) * u0])
    u, _ = nnls(Zr, tr, maxiter=2000)
    return u / scale


def fit_adapter(parent: np.ndarray, sums: np.ndarray, y: np.ndarray, device: str = "new-device",
                lambdas=(0.001, 0.01, 0.1, 1.0, 10.0)) -> dict:
    """The adapter dict (weights, interval, fit report) from parent predictions, group sums and measurements."""
    y = np.asarray(y, float)
    X = _design(np.asarray(parent, float), np.asarray(sums, float))
    n = len(y)
    best = None
    for lam in lambdas:
        loo = np.zeros(n)
        for i in range(n):
            keep = np.arange(n) != i
            w = _fit(X[keep], y[keep], lam)
            loo[i] = max(float(X[i] @ w), 1e-6)
        err = float(np.mean(np.log(y / loo) ** 2))
        if best is None or err < best[0]:
            best = (err, lam, loo)
    _, lam, loo = best
    w = _fit(X, y, lam)
    r = np.log(y / loo)
    from .model import _conformal, metrics
    q = _conformal(r)
    return {"device": device, "n_networks": int(n), "lambda": lam, "bias_ms": float(w[0]),
            "w_parent": float(w[1]), "w_groups": {g: float(v) for g, v in zip(F.GROUPS, w[2:])},
            "log_interval": list(q), "loo": metrics(y, loo)}


def apply_adapters(adapters: list[dict], pred: np.ndarray, sums: np.ndarray):
    lo = hi = pred
    for a in adapters:
        w = np.array([a["bias_ms"], a["w_parent"], *[a["w_groups"].get(g, 0.0) for g in F.GROUPS]])
        pred = np.maximum(_design(pred, sums) @ w, 1e-6)
        lo, hi = pred * math.exp(a["log_interval"][0]), pred * math.exp(a["log_interval"][1])
    return pred, lo, hi


def adapt(base, candidates, ms, device: str = "new-device", target: dict | None = None):
    """A copy of `base` with one more adapter fitted on measured networks.

    candidates: lists of KernelSpec, or ONNX paths/ModelProtos, one per measured network.
    """
    from .model import PredictorError
    ms = np.asarray(ms, float)
    if len(candidates) != len(ms):
        raise PredictorError(f"{len(candidates)} networks but {len(ms)} latencies")
    if len(ms) < 3:
        raise PredictorError(f"adaptation needs at least 3 measured networks (10-50 recommended), got {len(ms)}")
    if not np.all(np.isfinite(ms) & (ms > 0)):
        raise PredictorError("every measured latency must be a positive number of milliseconds")
    sums, parent = network_inputs(base, candidates)
    new = copy.copy(base)
    new.adapters = [*base.adapters, fit_adapter(parent, sums, ms, device)]
    new.training = dict(base.training)
    new.target = dict(target) if target else {**base.target, "name": device, "adapted_from": base.target_name}
    if target is None:
        new.fingerprint = {"adapted_from": base.fingerprint, "device": device}
    new._reset_cache()
    return new


def network_inputs(pred, candidates) -> tuple[np.ndarray, np.ndarray]:
    """(summed additive rows, current prediction) for lists of specs or ONNX models."""
    rows, parents = [], []
    spec_lists = [c for c in candidates if not isinstance(c, (str, os.PathLike)) and not hasattr(c, "graph")]
    if len(spec_lists) == len(candidates):
        sums, peak = pred._graph_inputs(candidates)
        p, _, _ = pred._finish(sums, peak)
        return sums, p
    for c in candidates:
        if isinstance(c, (str, os.PathLike)) or hasattr(c, "graph"):
            _, _, _, s, pk = pred.onnx_inputs(c)
        else:
            s, pk = pred._graph_inputs([c])
        p, _, _ = pred._finish(s, pk)
        rows.append(s[0])
        parents.append(p[0])
    return np.array(rows), np.array(parents)


def read_networks_file(path: str | os.PathLike) -> tuple[list, np.ndarray, list[str]]:
    """(candidates, latency_ms, names) from a measured-networks CSV/Parquet file (format above)."""
    from .model import PredictorError
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
    cands, names = [], []
    for i, row in enumerate(df.to_dict("records")):
        name = str(row.get("name") or f"row {i + 1}")
        if isinstance(row.get("onnx"), str) and row["onnx"]:
            p = Path(row["onnx"])
            p = p if p.is_absolute() else path.parent / p
            if not p.exists():
                raise PredictorError(f"{path}, {name}: ONNX file {p} does not exist")
            cands.append(str(p))
        elif isinstance(row.get("network_spec"), str) and row["network_spec"]:
            from .model import network_specs
            try:
                cands.append(network_specs(row["network_spec"]))
            except Exception as e:
                raise PredictorError(f"{path}, {name}: bad network_spec ({e})") from None
        elif isinstance(row.get("kernel_specs"), str) and row["kernel_specs"]:
            try:
                cands.append([KernelSpec.from_dict(d) for d in json.loads(row["kernel_specs"])])
            except Exception as e:
                raise PredictorError(f"{path}, {name}: bad kernel_specs ({e})") from None
        else:
            raise PredictorError(f"{path}, {name}: give the network as an onnx path, a network_spec or kernel_specs")
        names.append(name)
    ms = pd.to_numeric(df["latency_ms"], errors="coerce").to_numpy(float)
    return cands, ms, names


__all__ = ["adapt", "fit_adapter", "apply_adapters", "read_networks_file", "network_inputs"]
