"""Few-shot adaptation of a predictor to a new device from 10-50 measured whole networks.

The base predictor's kernel models still describe *what* a network computes; the new device
mostly changes *how fast* each part runs. With only ~20 measurements the adapter must have few
effective parameters, so it is a small ensemble of ridge models chosen by exact leave-one-out:

    space  log: log y = a + b*log(parent) + delta . z        ms: y = a + b*parent + delta . z
    kind   ratio (b = 1, delta = 0; log space only: one factor for every network) |
           scale (delta = 0) | scale+delta | delta (b = 0)
    ridge  penalty on delta only, lambda in a grid

where parent is the prediction before this adapter (the base device, or the device adapted
before: adapters chain) and z the standardised adapter features: the base kernel predictions
summed per kernel group (1x1, kxk and depthwise convs, linear, attention, norm, memory,
pooling, unknown), the kernel count per group and the number of residual/concat joins
(`adapter_features`). Every (space, kind, lambda) is scored by its exact leave-one-out relative
error (hat-matrix shortcut); the 5 best are refitted on all networks and averaged in log space.
The leave-one-out predictions of the members give the conformal interval. Callers that know
more about their networks (e.g. a search space's pruned and unpruned views of a cell) pass
their own feature matrix to `fit_adapter(..., Phi=...)` and `predict_adapter`; the method is
the same (`scripts/bench_predictor.py` does this for NAS-Bench-201).

The adapter never moves a prediction further from its parent than the shots moved theirs (the
range of measured/parent over the networks it was fitted on, widened by `RATIO_MARGIN`): with
10 small networks a ridge member extrapolated to a 100 ms network by factors of 10 and more
(an Intel-profiled predictor adapted to an AMD EPYC machine: MAPE 380% on 41 real
architectures before this bound; `scripts/bench_transfer.py`).

The measured networks come from a file (a measured-networks file, `predictors.measured`)
in the format of `predictors.measured`.
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import numpy.typing as npt

from . import features as F
from .errors import PredictorError
from .numerics import conformal_interval, metrics, ridge_gram, ridge_solve

if TYPE_CHECKING:  # the Predictor class imports this module
    from .model import Predictor

NG = len(F.GROUPS)
LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
TOP_K = 5
RATIO_MARGIN = 1.25  # how far past the shots' own measured/parent range a prediction may move
_A = {n: i for i, n in enumerate(F.ADDITIVE)}
ADAPTER_FEATURES = (*(f"ms_{g}" for g in F.GROUPS), *(f"n_{g}" for g in F.GROUPS), "branch")


def adapter_features(sums: np.ndarray) -> np.ndarray:
    """The adapter's features (ADAPTER_FEATURES order) from summed additive rows [N, len(ADDITIVE)]."""
    sums = np.atleast_2d(np.asarray(sums, float))
    return sums[:, [_A[n] for n in ADAPTER_FEATURES]]


def _design(kind: str, base: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(design matrix, ridge penalty mask, offset): the model is A @ coef + offset."""
    n = len(base)
    if kind == "ratio":
        return np.ones((n, 1)), np.zeros(1), base
    zero = np.zeros(n)
    if kind == "scale":
        return np.column_stack([np.ones(n), base]), np.zeros(2), zero
    if kind == "scale+delta":
        return np.column_stack([np.ones(n), base, Z]), np.r_[0.0, 0.0, np.ones(Z.shape[1])], zero
    return np.column_stack([np.ones(n), Z]), np.r_[0.0, np.ones(Z.shape[1])], zero


def _solve(A: np.ndarray, t: np.ndarray, lam: float, pen: np.ndarray) -> np.ndarray:
    return ridge_solve(A, t, pen * lam, jitter=1e-9)


def fit_adapter(parent: np.ndarray, sums: np.ndarray | None, y: np.ndarray, device: str = "new-device",
                Phi: np.ndarray | None = None, names: Sequence[str] | None = None, lambdas: Sequence[float] = LAMBDAS,
                top_k: int = TOP_K) -> dict[str, Any]:
    """The adapter dict from parent predictions, features (sums, or a caller's Phi) and measurements."""
    y = np.asarray(y, float)
    parent = np.maximum(np.asarray(parent, float), 1e-9)
    if Phi is None:
        if sums is None:
            raise PredictorError("fit_adapter needs the networks' feature sums or a feature matrix Phi")
        Phi, names = adapter_features(sums), list(ADAPTER_FEATURES)
    Phi = np.asarray(Phi, float)
    names = list(names) if names is not None else [f"f{i}" for i in range(Phi.shape[1])]
    n = len(y)
    mean, std = Phi.mean(axis=0), Phi.std(axis=0)
    keep = std > 1e-9 * np.maximum(1.0, np.abs(mean))
    mean, std = mean[keep], std[keep]
    Z = (Phi[:, keep] - mean) / std
    cands: list[tuple[float, str, str, float, np.ndarray]] = []
    for space in ("log", "ms"):
        base = np.log(parent) if space == "log" else parent
        t = np.log(y) if space == "log" else y
        for kind in ("ratio", "scale", "scale+delta", "delta"):
            if (kind == "ratio" and space != "log") or (kind not in ("ratio", "scale") and Z.shape[1] == 0):
                continue
            for lam in (lambdas if kind not in ("ratio", "scale") else (0.0,)):
                A, pen, off = _design(kind, base, Z)
                if A.shape[1] >= n and lam == 0:
                    continue
                B = np.linalg.solve(ridge_gram(A, pen * lam, jitter=1e-9), A.T)  # [p, n]
                h = np.einsum("ij,ji->i", A, B)  # the hat matrix's diagonal, without the n x n matrix
                r = (t - off - A @ (B @ (t - off))) / np.maximum(1.0 - h, 1e-6)
                loo = t - r
                loo_log = loo if space == "log" else np.log(np.maximum(loo, 1e-3 * y.min()))
                err = float(np.mean((np.log(y) - loo_log) ** 2))
                cands.append((err, space, kind, float(lam), loo_log))
    cands.sort(key=lambda c: c[0])
    members: list[dict[str, Any]] = []
    for err, space, kind, lam, _ in cands[:top_k]:
        base = np.log(parent) if space == "log" else parent
        t = np.log(y) if space == "log" else y
        A, pen, off = _design(kind, base, Z)
        members.append({"space": space, "kind": kind, "lambda": lam, "loo_mse_log": err,
                        "coef": _solve(A, t - off, lam, pen).tolist()})
    loo_log = np.mean([c[4] for c in cands[:top_k]], axis=0)
    return {"method": "ridge-ensemble-loo", "device": device, "n_networks": int(n),
            "features": [nm for nm, k in zip(names, keep) if k], "all_features": names, "mean": mean.tolist(),
            "std": std.tolist(), "members": members, "log_interval": list(conformal_interval(np.log(y) - loo_log)),
            "log_ratio_range": [float(np.min(np.log(y / parent))), float(np.max(np.log(y / parent)))],
            "loo": metrics(y, np.exp(loo_log))}


def predict_adapter(a: dict[str, Any], parent: np.ndarray, Phi: np.ndarray) -> np.ndarray:
    """Apply one adapter (fit_adapter's dict) to parent predictions and the full feature matrix."""
    parent = np.maximum(np.asarray(parent, float), 1e-9)
    Phi = np.atleast_2d(np.asarray(Phi, float))
    idx = [a["all_features"].index(nm) for nm in a["features"]]
    Z = (Phi[:, idx] - np.asarray(a["mean"])) / np.asarray(a["std"])
    outs = []
    floor = 1e-6
    for m in a["members"]:
        base = np.log(parent) if m["space"] == "log" else parent
        A, _, off = _design(m["kind"], base, Z)
        p = A @ np.asarray(m["coef"]) + off
        outs.append(p if m["space"] == "log" else np.log(np.maximum(p, floor)))
    log_pred: np.ndarray = np.mean(outs, axis=0)
    if "log_ratio_range" in a:  # adapters saved before the bound have none
        lo, hi = a["log_ratio_range"]
        margin = math.log(RATIO_MARGIN)
        log_pred = np.clip(log_pred, np.log(parent) + lo - margin, np.log(parent) + hi + margin)
    pred: np.ndarray = np.exp(log_pred)
    return pred


def apply_adapters(adapters: list[dict[str, Any]], pred: np.ndarray, sums: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo = hi = pred
    for a in adapters:
        if a.get("method") == "ridge-ensemble-loo":
            pred = predict_adapter(a, pred, adapter_features(sums))
        else:  # the first format: new = b + w*parent + sum_g w_g*S_g
            w = np.array([a["bias_ms"], a["w_parent"], *[a["w_groups"].get(g, 0.0) for g in F.GROUPS]])
            X = np.column_stack([np.ones(len(pred)), pred, sums[:, 7:7 + NG]])
            pred = np.maximum(X @ w, 1e-6)
        lo, hi = pred * math.exp(a["log_interval"][0]), pred * math.exp(a["log_interval"][1])
    return pred, lo, hi


def adapt(base: Predictor, candidates: Sequence[Any], ms: npt.ArrayLike, device: str = "new-device",
          target: dict[str, Any] | None = None) -> Predictor:
    """A copy of `base` with one more adapter fitted on measured networks.

    candidates: lists of KernelSpec, or ONNX paths/ModelProtos, one per measured network.
    """
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


def network_inputs(pred: Predictor, candidates: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(summed additive rows, current prediction) for lists of specs or ONNX models."""
    sums, peak = pred.graph_inputs(candidates)
    p, _, _ = pred._finish(sums, peak)
    return sums, p


__all__ = ["adapt", "fit_adapter", "apply_adapters", "network_inputs"]
