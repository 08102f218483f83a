"""The latency predictor: per-kernel-kind LightGBM models and a graph-level LightGBM model.

- Kernel models: one LightGBM regressor per kernel kind (log median ms from
  `features.spec_features`), a pooled one for kinds with few rows, and a bytes/FLOPs
  roofline fit for ops the vocabulary lacks (reported by name, never dropped).
- Graph model: LightGBM on graph features (summed kernel predictions per group, kernel
  count, FLOPs, bytes, parameters, peak activation, branching, ...) learns the log ratio of
  a whole network's measured latency to its plain kernel sum.
- Intervals: split-conformal on out-of-fold residuals of the networks, so that about 80%
  of unseen networks fall inside the 80% interval.
- Adapters (`predictors.adapt`): few-shot linear corrections for another device.

`Predictor.load(path).predict(model.onnx)` is the ONNX path; `predict_specs(candidates)`
the batch path for search spaces (lists of KernelSpec, no ONNX export).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from profiling.kernels import KINDS, PARAM_COLUMNS, KernelSpec, KernelSpecError

from . import features as F
from .fileformat import PredictorFileError, read_predictor_file, write_predictor_file
from .trees import TreeModel, average_models

COVERAGE = 0.8  # the nominal coverage of the intervals
MIN_KIND_ROWS = 20


class PredictorError(ValueError):
    """Bad input to the predictor (table, target, candidate); the message says how to fix it."""


# ---- metrics ----------------------------------------------------------------------------
def metrics(y: np.ndarray, pred: np.ndarray, low: np.ndarray | None = None, high: np.ndarray | None = None) -> dict:
    from scipy.stats import spearmanr
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    rel = np.abs(pred - y) / y
    out = {"n": int(len(y)), "within10": float(np.mean(rel <= 0.10)) if len(y) else math.nan,
           "mape": float(np.mean(rel)) if len(y) else math.nan,
           "spearman": float(spearmanr(y, pred).correlation) if len(y) > 2 else math.nan}
    if low is not None and high is not None:
        out["coverage"] = float(np.mean((y >= np.asarray(low)) & (y <= np.asarray(high)))) if len(y) else math.nan
    return out


# ---- table handling ---------------------------------------------------------------------
def load_tables(paths: Sequence[str | os.PathLike]) -> tuple[pd.DataFrame, dict]:
    """Read and concatenate tables measured on the same target; metadata of the first."""
    from profiling.fingerprint import fingerprint_hash
    from profiling.table import read_table
    frames, meta0 = [], None
    for p in paths:
        if not Path(p).exists():
            raise PredictorError(f"table {p} does not exist; profile one with `profile-device --out {p}`")
        try:
            df, meta = read_table(p)
        except Exception as e:
            raise PredictorError(f"cannot read table {p}: {e}") from None
        if meta0 is None:
            meta0 = meta
        else:
            a, b = meta0.get("fingerprint", {}), meta.get("fingerprint", {})
            if fingerprint_hash(a) != fingerprint_hash(b):
                raise PredictorError(f"table {p} was measured on another device or setting than {paths[0]} "
                                     "(fingerprints differ); train one predictor per target")
        frames.append(df)
    if not frames:
        raise PredictorError("no table given; pass --table PATH")
    df = pd.concat(frames, ignore_index=True).drop_duplicates("config_id", keep="last").reset_index(drop=True)
    return df, meta0 or {}


def row_spec(row: dict) -> KernelSpec:
    d = {"kind": row["kind"]}
    for p in KINDS[row["kind"]].params:
        v = row.get(p)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            d[p] = v
    return KernelSpec.from_dict(d)


def network_specs(spec_json: str | dict) -> list[KernelSpec]:
    """The kernels of a profiled network (`network_spec` column), as the batch path sees them."""
    from profiling.networks import network_kernels
    spec = json.loads(spec_json) if isinstance(spec_json, str) else spec_json
    return network_kernels(spec)


# ---- results ----------------------------------------------------------------------------
@dataclass
class Prediction:
    model: str
    latency_ms: float
    low_ms: float
    high_ms: float
    kernel_sum_ms: float
    kernels: list[dict] = field(default_factory=list)
    unknown_ops: list[dict] = field(default_factory=list)
    folded_ops: int = 0
    batch: int = 1  # the predictor's target batch: one run processes this many images
    # what the prediction rests on (predictors.reliability): shares of the kernel sum
    fallback_share: float = 0.0
    extrapolated_share: float = 0.0
    unreliable: bool = False
    reliability_note: str = ""
    unknown_by_type: dict = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        """Throughput at the target's batch: images per second of back-to-back runs."""
        return self.batch * 1000.0 / self.latency_ms if self.latency_ms > 0 else float("inf")

    def to_dict(self, per_kernel: bool = False) -> dict:
        d = {"model": self.model, "latency_ms": self.latency_ms, "low_ms": self.low_ms, "high_ms": self.high_ms,
             "kernel_sum_ms": self.kernel_sum_ms,
             "kernels": self.kernels if per_kernel else len(self.kernels),
             "unknown_ops": self.unknown_ops, "folded_ops": self.folded_ops,
             "batch": self.batch, "images_per_s": self.images_per_s,
             "unreliable": self.unreliable, "fallback_share": self.fallback_share,
             "extrapolated_share": self.extrapolated_share, "unknown_by_type": self.unknown_by_type,
             "reliability_note": self.reliability_note}
        return d


def _lgb():
    import lightgbm as lgb
    return lgb


def _train(X: np.ndarray, y: np.ndarray, params: dict, rounds: int, names: Sequence[str], weight=None):
    lgb = _lgb()
    ds = lgb.Dataset(X, y, weight=weight, feature_name=list(names), free_raw_data=True, params={"verbose": -1})
    return TreeModel(lgb.train(params, ds, num_boost_round=rounds).model_to_string())


_LF, _LB = F.KERNEL_FEATURES.index("log_flops"), F.KERNEL_FEATURES.index("log_bytes")


class KindModel:
    """log ms = linear(log FLOPs, log bytes) + LightGBM trees on the residual (extrapolates sanely)."""

    def __init__(self, coef, tree, variant: str = "l2"):
        self.coef = [float(c) for c in coef]
        self.tree = tree
        self.variant = variant

    def linear(self, X):
        return self.coef[0] + X[:, _LF] * self.coef[1] + X[:, _LB] * self.coef[2]

    def predict(self, X):
        return self.linear(X) + self.tree.predict(X)

    def model_to_string(self):
        return self.tree.model_to_string()


def _fit_kind(X, y, params, rounds, names, variant: str = "l2", weight=None) -> KindModel:
    """One kernel model. Variants (chosen per kind by cross-validation in `fit_kernels`):
    l2: least-squares line + L2 trees; huber: Huber line + Huber-loss trees (robust to the
    one-sided contention outliers of a busy core); weighted: l2 with rows weighted by
    1/(0.05 + log(p90/p10)) so that noisy measurements count less."""
    A = np.column_stack([np.ones(len(y)), X[:, _LF], X[:, _LB]])
    w = np.ones(len(y)) if weight is None or variant != "weighted" else np.asarray(weight, float)
    lam = 1e-3 * np.eye(3)
    lam[0, 0] = 0
    coef = np.linalg.solve((A * w[:, None]).T @ A + lam * w.sum(), (A * w[:, None]).T @ y)
    params = dict(params)
    if variant == "huber":
        for _ in range(20):  # IRLS Huber line, delta 0.15 in log space
            r = y - A @ coef
            hw = np.minimum(1.0, 0.15 / np.maximum(np.abs(r), 1e-9))
            coef = np.linalg.solve((A * hw[:, None]).T @ A + lam * hw.sum(), (A * hw[:, None]).T @ y)
        params.update(objective="huber", alpha=0.15)
    tree = _train(X, y - A @ coef, params, rounds, names, weight=w if variant == "weighted" else None)
    return KindModel(coef, tree, variant)


KERNEL_VARIANTS = ("l2", "huber", "weighted")


class _Const:
    def __init__(self, offset: float):
        self.offset = offset

    def predict(self, X, S=None):
        return np.full(len(X), self.offset)


class _TreeGraph:
    def __init__(self, tree):
        self.tree = tree

    def predict(self, X, S=None):
        return self.tree.predict(X)


class _GroupScale:
    """Per-kernel-group scale: measured ms ~ sum_g w_g * (kernel sum of group g) + b, w, b >= 0.

    Fitted by non-negative least relative squares, each w_g shrunk toward the common scale
    c = exp(median r) with penalty lam (a group the training networks lack keeps c). The
    correction is r = log(prediction / kernel sum). This is how a kernel kind runs faster or
    slower inside a network than in isolation (caches warm, threads already spun up).
    """

    def __init__(self, w, b, lam, overhead=0.0, v=None):
        self.w, self.b, self.lam, self.overhead = np.asarray(w, float), float(b), float(lam), float(overhead)
        self.v = np.zeros(len(self.w)) if v is None else np.asarray(v, float)

    def predict(self, X, S):
        S = np.atleast_2d(S)
        ng = len(F.GROUPS)
        base = np.maximum(S[:, 0] + self.overhead, 1e-6)
        pred = S[:, 7:7 + ng] @ self.w + S[:, 7 + ng:7 + 2 * ng] @ self.v + self.b
        return np.log(np.maximum(pred, 0.05 * base) / base)

    @classmethod
    def fit(cls, S, r, lam, overhead=0.0, counts: bool = False):
        """counts=True adds a per-kernel time per group (any sign, shrunk toward 0): the launch and
        synchronisation cost a kernel pays in a network minus the one its isolated measurement had."""
        from scipy.optimize import lsq_linear
        ng = len(F.GROUPS)
        base = np.maximum(S[:, 0] + overhead, 1e-6)
        y = base * np.exp(r)
        c = float(np.exp(np.median(r)))
        cols = [S[:, 7:7 + ng]] + ([S[:, 7 + ng:7 + 2 * ng]] if counts else []) + [np.ones((len(y), 1))]
        A = np.column_stack(cols) / y[:, None]
        k = A.shape[1]
        pen = math.sqrt(lam * len(y))
        P = np.zeros((k - 1, k))
        P[:ng, :ng] = pen * np.eye(ng)
        target = [np.full(ng, pen * c)]
        if counts:  # v in units of the median ms per kernel, shrunk toward 0
            m0 = float(np.median(base / np.maximum(S[:, 4], 1.0)))
            P[ng:2 * ng, ng:2 * ng] = pen / m0 * np.eye(ng)
            target.append(np.zeros(ng))
        scale = np.maximum(np.abs(A).max(axis=0), 1e-12)
        scale[:ng] = 1.0
        if counts:
            scale[ng:2 * ng] = 1.0 / m0
        lb = np.zeros(k)
        if counts:
            lb[ng:2 * ng] = -np.inf
        sol = lsq_linear(np.vstack([A, P]) / scale, np.concatenate([np.ones(len(y)), *target]), bounds=(lb * scale, np.inf))
        coef = sol.x / scale
        v = coef[ng:2 * ng] if counts else None
        return cls(coef[:ng], coef[-1], lam, overhead, v)

    def to_dict(self):
        return {"w": self.w.tolist(), "v": self.v.tolist(), "b": self.b, "lambda": self.lam,
                "overhead": self.overhead, "groups": list(F.GROUPS)}

    @classmethod
    def from_dict(cls, d):
        return cls(d["w"], d["b"], d["lambda"], d.get("overhead", 0.0), d.get("v"))


class _Ridge:
    """Ridge on standardised graph features (NaN-free), the penalty chosen by inner CV."""

    def __init__(self, mean, std, coef, intercept, lam, cols=None):
        self.mean, self.std = np.asarray(mean, float), np.asarray(std, float)
        self.coef, self.intercept, self.lam = np.asarray(coef, float), float(intercept), float(lam)
        self.cols = None if cols is None else [int(c) for c in cols]

    def predict(self, X, S=None):
        X = np.asarray(X, float)
        if self.cols is not None:
            X = X[:, self.cols]
        Z = (np.nan_to_num(X) - self.mean) / self.std
        return self.intercept + Z @ self.coef

    @classmethod
    def fit(cls, X, r, lam, cols=None):
        X = np.asarray(X, float)
        if cols is not None:
            X = X[:, list(cols)]
        X = np.nan_to_num(X)
        mean, std = X.mean(axis=0), X.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        Z = (X - mean) / std
        rm = float(np.median(r))
        coef = np.linalg.solve(Z.T @ Z + lam * len(r) * np.eye(Z.shape[1]), Z.T @ (r - rm))
        return cls(mean, std, coef, rm, lam, cols)

    @classmethod
    def fit_cv(cls, X, r, seed=0, lambdas=(0.03, 0.1, 0.3, 1.0, 3.0, 10.0)):
        n = len(r)
        k = min(5, n)
        folds = np.random.default_rng(seed + 11).permutation(n) % k
        best = None
        for lam in lambdas:
            e = 0.0
            for f in range(k):
                tr = folds != f
                e += float(np.abs(r[~tr] - cls.fit(X[tr], r[tr], lam).predict(X[~tr])).sum())
            if best is None or e < best[0]:
                best = (e, lam)
        return cls.fit(X, r, best[1])

    def to_dict(self):
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept, "lambda": self.lam, "cols": self.cols}

    @classmethod
    def from_dict(cls, d):
        return cls(d["mean"], d["std"], d["coef"], d["intercept"], d["lambda"], d.get("cols"))


def _conformal(residuals: np.ndarray, coverage: float = COVERAGE) -> tuple[float, float]:
    """Lower/upper quantiles of log residuals with the finite-sample correction."""
    r = np.sort(np.asarray(residuals, float))
    n = len(r)
    if n == 0:
        return -0.2, 0.2
    a = (1 - coverage) / 2
    lo_i = max(0, int(math.floor(a * (n + 1))) - 1)
    hi_i = min(n - 1, int(math.ceil((1 - a) * (n + 1))) - 1)
    return float(r[lo_i]), float(r[hi_i])


class Predictor:
    """Kernel-level and graph-level LightGBM latency models of one target."""

    def __init__(self, target: dict | None = None, fingerprint: dict | None = None, batch: int | None = None,
                 num_threads: int = 1, seed: int = 0, kernel_rounds: int = 400, graph_rounds: int = 300,
                 graph_cv: str | None = None, real_network_weight: float = 5.0, graph_ensemble: int = 5):
        self.target = dict(target) if target else {"name": "unknown"}
        self.fingerprint = dict(fingerprint or {})
        self.batch = int(batch or self.target.get("batch", 1) or 1)
        self.num_threads = num_threads
        self.seed = seed
        self.kernel_rounds, self.graph_rounds = kernel_rounds, graph_rounds
        # the tree graph correction is the mean of this many boosted models (seeds seed, seed+1, ...):
        # one model's bagging draw moved single held-out architectures by several percent
        self.graph_ensemble = max(1, int(graph_ensemble))
        # "family": leave-one-family-out selection over all GRAPH_CANDIDATES (random folds when the
        # networks have a single family); "random" (default): the shipped method, random 5-fold CV
        # over sum, scale, ridge, lgbm. $HWNAS_GRAPH_CV sets it for the CLIs. "family" is not the
        # default: on the 41 reference architectures it measured 51.2% within ±10% vs 56.1%
        # (docs/predictor.md, "Leave-one-family-out selection").
        self.graph_cv = graph_cv or os.environ.get("HWNAS_GRAPH_CV") or "random"
        # how many random table networks one real architecture measured on the target counts for
        # in the graph model (`fit(networks=...)`): the table has ~300 random networks, a user
        # has tens of real ones, and the real ones are what predictions are asked about
        self.real_network_weight = float(real_network_weight)
        if self.graph_cv not in ("family", "random"):
            raise PredictorError(f"graph_cv must be 'family' or 'random', not {self.graph_cv!r}")
        self.kernel_models: dict[str, Any] = {}
        self.kernel_q: dict[str, tuple[float, float]] = {}
        self.pooled = None
        self.pooled_q = (-0.3, 0.3)
        self.fallback = {"t0_ms": 0.005, "ms_per_byte": 1e-8, "ms_per_flop": 1e-9}
        self.kernel_ranges: dict[str, list[float]] = {}  # per kind: log FLOPs and log bytes range of the table
        self.graph_model = None
        self.graph_type, self.graph_offset, self.graph_lin = "sum", 0.0, None
        self.graph_gscale, self.graph_blend, self.graph_clip = None, None, None
        self.graph_q = (-0.15, 0.15)
        self.adapters: list[dict] = []
        self.overhead_ms = 0.0  # per-run overhead inside every isolated kernel measurement
        self.training: dict = {}
        self.header: dict = {}
        self._reset_cache()

    # ---- kernel level ------------------------------------------------------------------
    def _kparams(self, n: int) -> dict:
        return {"objective": "regression", "learning_rate": 0.05, "num_leaves": 31,
                "min_data_in_leaf": max(2, min(10, n // 30)), "feature_fraction": 0.9, "lambda_l2": 0.1,
                "num_threads": self.num_threads, "seed": self.seed, "deterministic": True, "verbose": -1,
                "min_data_in_bin": 1}

    def fit_kernels(self, specs: Sequence[KernelSpec], ms: np.ndarray, spread=None) -> "Predictor":
        """Per-kind kernel models; spread (p90/p10 per row, optional) enables the noise-weighted variant."""
        ms = np.asarray(ms, float)
        keep = np.isfinite(ms) & (ms > 0)
        specs = [s for s, k in zip(specs, keep) if k]
        ms = ms[keep]
        if len(specs) < 10:
            raise PredictorError(f"only {len(specs)} kernel rows with a latency: profile more configurations")
        X = F.feature_matrix(specs, self.batch)
        y = np.log(ms)
        kinds = np.array([s.kind for s in specs])
        kind_code = np.array([F.KERNEL_KINDS.index(k) for k in kinds], float)
        Xp = np.column_stack([X, kind_code])
        pooled_names = [*F.KERNEL_FEATURES, "kind"]
        rng = np.random.default_rng(self.seed)
        # out-of-fold residuals give each kind's interval
        folds = rng.integers(0, 3, len(y))
        oof = np.zeros(len(y))
        for f in range(3):
            tr = folds != f
            m = _fit_kind(Xp[tr], y[tr], self._kparams(tr.sum()), self.kernel_rounds, pooled_names)
            oof[~tr] = m.predict(Xp[~tr])
        self.pooled = _fit_kind(Xp, y, self._kparams(len(y)), self.kernel_rounds, pooled_names)
        self.pooled_q = _conformal(y - oof)
        self.kernel_models, self.kernel_q = {}, {}
        w_all = None if spread is None else 1.0 / (0.05 + np.log(np.maximum(np.asarray(spread, float)[keep], 1.0)))
        report = {}
        oof_all = oof.copy()
        for kind in sorted(set(kinds)):
            sel = kinds == kind
            if sel.sum() < MIN_KIND_ROWS:
                continue
            Xk, yk = X[sel], y[sel]
            wk = None if w_all is None else w_all[sel]
            variants = [v for v in KERNEL_VARIANTS if v != "weighted" or wk is not None]

            def cv(variant, seed, k=3):
                f = np.random.default_rng(seed).permutation(len(yk)) % k
                o = np.zeros(len(yk))
                for i in range(k):
                    tr = f != i
                    m = _fit_kind(Xk[tr], yk[tr], self._kparams(tr.sum()), self.kernel_rounds, F.KERNEL_FEATURES,
                                  variant, None if wk is None else wk[tr])
                    o[~tr] = m.predict(Xk[~tr])
                return o

            # choose the variant on one split of folds, report it on another (less selection bias)
            scores = {}
            for v in variants:
                rel = np.abs(np.exp(cv(v, self.seed) - yk) - 1)
                scores[v] = (float(np.mean(rel <= 0.10)), -float(np.mean(rel)))
            best = max(variants, key=lambda v: scores[v])
            oofk = cv(best, self.seed + 100) if len(variants) > 1 else cv(best, self.seed)
            self.kernel_models[kind] = _fit_kind(Xk, yk, self._kparams(len(yk)), self.kernel_rounds,
                                                 F.KERNEL_FEATURES, best, wk)
            self.kernel_q[kind] = _conformal(yk - oofk)
            oof_all[sel] = oofk
            m = metrics(ms[sel], np.exp(oofk))
            quiet = None if spread is None else np.asarray(spread, float)[keep][sel] < 1.15
            report[kind] = {"variant": best, "n": int(sel.sum()), "within10": m["within10"], "mape": m["mape"],
                            "selection_within10": {v: scores[v][0] for v in variants}}
            if quiet is not None and quiet.any():
                report[kind]["quiet_within10"] = float(np.mean(np.abs(np.exp(oofk[quiet] - yk[quiet]) - 1) <= 0.10))
                report[kind]["quiet_n"] = int(quiet.sum())
        self.training["kernel_cv"] = report
        oof = oof_all
        self.training["kernel_rows"] = int(len(y))
        self.training["kernel_oof"] = metrics(ms, np.exp(oof))
        self._fit_fallback(specs, ms)
        self._reset_cache()
        return self

    def _fit_fallback(self, specs, ms) -> None:
        """Roofline for unknown ops: ms = t0 + bytes * a + flops * b, least relative squares, non-negative."""
        from scipy.optimize import nnls
        st = np.array([F.spec_stats(s, self.batch) for s in specs])
        A = np.column_stack([np.ones(len(ms)), st[:, 2], st[:, 0]]) / ms[:, None]
        scale = A.max(axis=0) + 1e-30
        coef, _ = nnls(A / scale, np.ones(len(ms)))
        coef = coef / scale
        pred = coef[0] + st[:, 2] * coef[1] + st[:, 0] * coef[2]
        self.fallback = {"t0_ms": float(coef[0]), "ms_per_byte": float(coef[1]), "ms_per_flop": float(coef[2]),
                         "method": "roofline: t0 + bytes*ms_per_byte + flops*ms_per_flop, fitted on all kernel rows",
                         # how far a roofline estimate is from a kernel's measured time (widens intervals)
                         "log_interval": list(_conformal(np.log(ms / np.maximum(pred, 1e-12))))}
        from .reliability import kind_ranges
        self.kernel_ranges = kind_ranges(st, [s.kind for s in specs])

    def fit_overhead(self, candidates, ms: np.ndarray) -> None:
        """The per-run overhead each isolated kernel measurement includes, from measured blocks."""
        best = (math.inf, 0.0)
        floor = float(np.min(ms)) if len(ms) else 0.0
        for ovh in np.linspace(0.0, max(floor, 1e-4), 21):
            self.overhead_ms = float(ovh)
            self._reset_cache()
            err = float(np.mean(np.abs(np.log(self.kernel_sum_specs(candidates) / ms))))
            if err < best[0]:
                best = (err, float(ovh))
        self.overhead_ms = best[1]
        self._reset_cache()
        self.training["overhead_ms"] = best[1]

    def fallback_ms(self, flops: float, nbytes: float) -> float:
        f = self.fallback
        return float(f["t0_ms"] + nbytes * f["ms_per_byte"] + flops * f["ms_per_flop"])

    def kernel_ms(self, specs: Sequence[KernelSpec]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicted (ms, low, high) of kernel specs (blocks are not accepted here)."""
        n = len(specs)
        out, lo, hi = np.zeros(n), np.zeros(n), np.zeros(n)
        if n == 0:
            return out, lo, hi
        if self.pooled is None:
            raise PredictorError("this predictor has no kernel models; fit it or load a .lgb file")
        by_kind: dict[str, list[int]] = {}
        for i, s in enumerate(specs):
            by_kind.setdefault(s.kind, []).append(i)
        for kind, idx in by_kind.items():
            X = F.feature_matrix([specs[i] for i in idx], self.batch)
            model = self.kernel_models.get(kind)
            if model is not None:
                p = model.predict(X)
                q = self.kernel_q[kind]
            else:
                code = F.KERNEL_KINDS.index(kind) if kind in F.KERNEL_KINDS else -1
                p = self.pooled.predict(np.column_stack([X, np.full(len(idx), code, float)]))
                q = self.pooled_q
            out[idx] = np.exp(p)
            lo[idx] = np.exp(p + q[0])
            hi[idx] = np.exp(p + q[1])
        return out, lo, hi

    # ---- the spec cache of the batch path ---------------------------------------------
    def _reset_cache(self) -> None:
        self._by_id: dict[int, int] = {}
        self._by_key: dict[tuple, int] = {}
        self._keep: list = []
        self._rows = np.zeros((0, len(F.ADDITIVE)))
        self._peak = np.zeros(0)
        self._kms = np.zeros(0)
        self._cand_cache: dict[tuple, int] = {}
        self._cand_pred = np.zeros((0, 3))

    def _clear_pred_cache(self) -> None:
        """Forget cached candidate predictions (after the graph model or the adapters change)."""
        self._cand_cache = {}
        self._cand_pred = np.zeros((0, 3))

    def _index(self, specs: Iterable[KernelSpec], pending: list) -> list[int]:
        by_id, by_key = self._by_id, self._by_key
        if not isinstance(specs, (list, tuple)):
            specs = list(specs)
        out = list(map(by_id.get, map(id, specs)))
        if None not in out:
            return out
        n0 = len(self._rows)
        keep = self._keep.append
        for j in [j for j, i in enumerate(out) if i is None]:
            s = specs[j]
            i = by_id.get(id(s))
            if i is None:
                try:
                    key = (s.kind, *s.params.values())
                except AttributeError:
                    raise PredictorError(f"candidate element {s!r} is not a KernelSpec") from None
                i = by_key.get(key)
                if i is None:
                    i = n0 + len(pending)
                    by_key[key] = i
                    pending.append(s)
                by_id[id(s)] = i
                keep(s)  # keeps id(s) from being reused while it is a key
            out[j] = i
        return out

    def _materialise(self, pending: list[KernelSpec], kernel_ms: list[float] | None = None) -> None:
        """Additive rows for new specs; blocks are expanded with profiling.builders.decompose."""
        if not pending:
            return
        from profiling.builders import decompose
        expanded = []
        for s in pending:
            if KINDS[s.kind].category == "block":
                try:
                    expanded.append(decompose(s))
                except Exception as e:
                    raise PredictorError(f"cannot expand block {s.to_dict()}: {e}") from None
            else:
                expanded.append([s])
        flat = [k for ks in expanded for k in ks]
        if kernel_ms is not None and len(kernel_ms) == len(flat):
            ms = np.asarray(kernel_ms, float)
        else:
            ms, _, _ = self.kernel_ms(flat)
        ms = np.maximum(ms - self.overhead_ms, 0.1 * ms)  # the network pays the run overhead once
        rows = np.zeros((len(pending), len(F.ADDITIVE)))
        peak = np.zeros(len(pending))
        kms = np.zeros(len(pending))
        j = 0
        for i, ks in enumerate(expanded):
            for k in ks:
                r, o = F.additive_row(k, float(ms[j]), self.batch)
                rows[i] += r
                peak[i] = max(peak[i], o)
                kms[i] += ms[j]
                j += 1
        self._rows = np.vstack([self._rows, rows])
        self._peak = np.concatenate([self._peak, peak])
        self._kms = np.concatenate([self._kms, kms])
        if len(self._keep) > 2_000_000:  # bound the identity caches; content keys stay
            self._by_id.clear()
            self._keep.clear()
            self._cand_cache.clear()

    def _sums(self, cand_indices: list[list[int]], extra_rows: list | None = None):
        import itertools
        lens = np.fromiter(map(len, cand_indices), np.int64, len(cand_indices))
        if (lens == 0).any():
            raise PredictorError(f"candidate {int(np.argmax(lens == 0))} has no kernel specs")
        flat = np.fromiter(itertools.chain.from_iterable(cand_indices), dtype=np.int64, count=int(lens.sum()))
        indptr = np.concatenate([[0], np.cumsum(lens)])
        if len(flat) > 20000:  # a sparse count matrix times the unique rows: no [len(flat), cols] gather
            from scipy.sparse import csr_matrix
            M = csr_matrix((np.ones(len(flat)), flat, indptr), shape=(len(lens), len(self._rows)))
            sums = np.asarray(M @ self._rows)
        else:
            sums = np.add.reduceat(self._rows[flat], indptr[:-1], axis=0)
        peak = np.maximum.reduceat(self._peak[flat], indptr[:-1])
        if extra_rows:
            for ci, (row, out) in extra_rows:
                sums[ci] += row
                peak[ci] = max(peak[ci], out)
        return sums, peak

    # ---- graph level -------------------------------------------------------------------
    def _gparams(self, n: int) -> dict:
        return {"objective": "regression", "learning_rate": 0.03, "num_leaves": 7,
                "min_data_in_leaf": max(3, min(20, n // 15)), "feature_fraction": 0.8, "bagging_fraction": 0.9,
                "bagging_freq": 1, "lambda_l2": 1.0, "num_threads": self.num_threads, "seed": self.seed,
                "deterministic": True, "verbose": -1, "min_data_in_bin": 1}

    def _graph_inputs(self, candidates: Sequence[Sequence[KernelSpec]]):
        pending: list = []
        idx = [self._index(c, pending) for c in candidates]
        self._materialise(pending)
        return self._sums(idx)

    def graph_inputs(self, candidates) -> tuple[np.ndarray, np.ndarray]:
        """(summed graph rows, peak activation) of candidates given as kernel-spec lists or as ONNX
        models (paths or ModelProtos; their unknown ops enter with the fallback estimate)."""
        onnx_at = [i for i, c in enumerate(candidates) if isinstance(c, (str, os.PathLike)) or hasattr(c, "graph")]
        if not onnx_at:
            return self._graph_inputs(candidates)
        sums, peak = np.zeros((len(candidates), len(F.ADDITIVE))), np.zeros(len(candidates))
        spec_at = sorted(set(range(len(candidates))) - set(onnx_at))
        if spec_at:
            sums[spec_at], peak[spec_at] = self._graph_inputs([candidates[i] for i in spec_at])
        for i in onnx_at:
            *_, s, pk = self.onnx_inputs(candidates[i])
            sums[i], peak[i] = s[0], pk[0]
        return sums, peak

    # graph-correction candidates: name -> (type, options); chosen by cross-validation in `fit_graph`
    GRAPH_CANDIDATES = {
        "sum": ("sum", {}), "scale": ("scale", {}),
        "ridge": ("ridge", {"lam": None}),
        **{f"ridge_share@{lam:g}": ("ridge", {"lam": lam, "cols": "share"}) for lam in (0.03, 0.3, 3.0)},
        **{f"group_scale@{lam:g}": ("group_scale", {"lam": lam}) for lam in (0.0003, 0.003, 0.03, 0.3)},
        **{f"group_scale_n@{lam:g}": ("group_scale", {"lam": lam, "counts": True}) for lam in (0.0003, 0.003, 0.03)},
        "lgbm": ("lgbm", {"leaves": 7}),
        "lgbm_share": ("lgbm", {"leaves": 7, "cols": "share"}),
        "lgbm_small": ("lgbm", {"leaves": 3, "rounds": 0.5}),
    }
    BLENDS = (0.25, 0.5, 0.75, 0.9)

    def fit_graph(self, candidates: Sequence, ms: np.ndarray, calibrate: bool = True,
                  families: Sequence[str] | None = None, weights: Sequence[float] | None = None) -> "Predictor":
        """Fit the graph-level correction on whole networks (kernel-spec lists or ONNX models) and their measured ms.

        `weights` (default 1 each) count a network that many times (rounded) in every fit and in the
        selection error: real architectures measured on the target (`fit(networks=...)`) weigh more
        than the table's random networks. Cross-validation folds keep a network's copies together.

        The target is r = log(measured / kernel sum). The candidates (`GRAPH_CANDIDATES`): `sum`
        (r = 0), `scale` (a constant: the calibrated kernel sum), `ridge` (all graph features,
        penalty by inner CV), `ridge_share@λ` (shares of time per kernel group only), `group_scale@λ`
        (a non-negative per-group scale of the kernel sum, `_GroupScale`), `lgbm` (7-leaf trees),
        `lgbm_share` (trees on the shares only), `lgbm_small` (3 leaves, half the rounds); trees
        only from 40 networks on. Each model candidate is also tried blended toward the calibrated
        sum (r = (1-a)·median + a·model, a in `BLENDS`), and every correction is clipped to the
        range of r seen in training (bounded: no extrapolation beyond the table).

        Selection with graph_cv="random" (the default): random 5-fold CV over sum, scale, ridge, lgbm
        only (the shipped method). With graph_cv="family" and `families` naming at least two network families, leave-one-family-out
        CV (the error is the mean over held-out families of their mean |log error|), so that the
        choice rewards corrections that transfer to a family the table does not contain; else
        repeated 5-fold CV on the networks. With few networks the simple candidates win by construction.
        """
        ms = np.asarray(ms, float)
        self._clear_pred_cache()
        self.graph_model, self.graph_lin, self.graph_gscale = None, None, None
        self.graph_type, self.graph_offset = "sum", 0.0
        self.graph_blend, self.graph_clip = None, None
        if len(candidates) == 0:
            return self
        sums, peak = self.graph_inputs(candidates)
        r = np.log(ms) - np.log(self._base(sums))
        count = np.ones(len(r), np.int64) if weights is None else \
            np.maximum(1, np.rint(np.asarray(weights, float))).astype(np.int64)

        def copies(mask):  # training rows: each network as often as its weight
            return np.repeat(np.flatnonzero(mask), count[mask])

        if len(candidates) < 5:
            self.graph_type, self.graph_offset = "scale", float(np.median(np.repeat(r, count)))
            self.graph_q = _conformal(r - self.graph_offset) if len(r) > 1 else (-0.3, 0.3)
            self.training["graph_note"] = f"only {len(candidates)} networks: calibrated kernel sum, no graph model"
            self.training["networks"] = int(len(r))
            return self
        X = F.graph_features(sums, peak)
        n = len(r)
        fam = None if families is None else np.array([str(f) for f in families], dtype=object)
        fams = sorted({str(f) for f in fam}) if fam is not None else []
        # a family with fewer than 3 networks is too small to be a held-out fold on its own
        if self.graph_cv == "family" and fam is not None and sum(1 for f in fams if (fam == f).sum() >= 3) >= 2:
            splits = [[fam != f for f in fams]]
            cv_name, score_groups = "leave-one-family-out", fam
        else:
            reps = 2 if n < 400 else 1
            splits = []
            for rep in range(reps):
                folds = np.random.default_rng(self.seed + 1 + rep).permutation(n) % min(5, n)
                splits.append([folds != f for f in range(min(5, n))])
            cv_name, score_groups = "random 5-fold", None
        names = [c for c, (t, _) in self.GRAPH_CANDIDATES.items() if t != "lgbm" or n >= 40]
        if self.graph_cv == "random":
            names = [c for c in ("sum", "scale", "ridge", "lgbm") if c in names]
        oofs = {c: np.zeros((len(splits), n)) for c in names}
        for rep, folds in enumerate(splits):
            for tr in folds:
                if tr.all() or not tr.any():
                    continue
                lo, hi = (float(r[tr].min()), float(r[tr].max())) if self.graph_cv != "random" else (-np.inf, np.inf)
                ti = copies(tr)
                for c in names:
                    m = self._graph_fit_type(c, X[ti], r[ti], sums[ti])
                    oofs[c][rep, ~tr] = np.clip(m.predict(X[~tr], sums[~tr]), lo, hi)
        for c in [c for c in names if self.GRAPH_CANDIDATES[c][0] not in ("sum", "scale") and self.graph_cv != "random"]:
            for a in self.BLENDS:
                oofs[f"{c}+blend{a:g}"] = (1 - a) * oofs["scale"] + a * oofs[c]

        def score(o):
            e = np.abs(r[None, :] - o).mean(axis=0)
            if score_groups is None:
                return float(np.average(e, weights=count))
            return float(np.mean([e[score_groups == f].mean() for f in fams]))

        err = {c: score(o) for c, o in oofs.items()}
        best = min(oofs, key=lambda c: (err[c], c))
        oof = oofs[best][0]
        self.graph_q = _conformal(r - oof)
        base = self._base(sums)
        self.training["graph_cv"] = {c: {"mean_abs_log_err": err[c], **metrics(ms, base * np.exp(oofs[c][0]))}
                                     for c in oofs}
        if score_groups is not None:
            self.training["graph_cv_per_family"] = {
                c: {f: float(np.mean(np.abs(np.exp(oofs[c][0][fam == f] - r[fam == f]) - 1) <= 0.10)) for f in fams}
                for c in ("sum", "scale", "ridge", "lgbm", best) if c in oofs}
        self.training["graph_cv_method"] = cv_name
        self.training["graph_choice"] = best
        self.training["graph_oof"] = metrics(ms, base * np.exp(oof))
        model_name, _, blend = best.partition("+blend")
        ti = copies(np.ones(n, bool))
        m = self._graph_fit_type(model_name, X[ti], r[ti], sums[ti])
        t = self.GRAPH_CANDIDATES[model_name][0]
        self.graph_type = t
        self.graph_offset = float(np.median(r[ti]))
        self.graph_clip = (float(r.min()), float(r.max())) if self.graph_cv != "random" else None
        self.graph_blend = float(blend) if blend else None
        if t == "scale":
            self.graph_offset = m.offset
        elif t == "ridge":
            self.graph_lin = m.to_dict()
        elif t == "lgbm":
            self.graph_model = m.tree
        elif t == "group_scale":
            self.graph_gscale = m.to_dict()
        self.training["networks"] = int(n)
        return self

    _SHARE_COLS = None

    @classmethod
    def _share_cols(cls) -> list[int]:
        """Transferable graph features: shares of time per kernel group and the small-kernel share."""
        if cls._SHARE_COLS is None:
            cls._SHARE_COLS = [i for i, f in enumerate(F.GRAPH_FEATURES) if f.startswith("share_") or f == "small_share"]
        return cls._SHARE_COLS

    def _graph_fit_type(self, name: str, X: np.ndarray, r: np.ndarray, S: np.ndarray | None = None):
        t, opt = self.GRAPH_CANDIDATES.get(name, (name, {}))
        if t == "sum":
            return _Const(0.0)
        if t == "scale":
            return _Const(float(np.median(r)))
        cols = self._share_cols() if opt.get("cols") == "share" else None
        if t == "ridge":
            if opt.get("lam") is None:
                return _Ridge.fit_cv(X, r, self.seed)
            return _Ridge.fit(X, r, opt["lam"], cols)
        if t == "group_scale":
            return _GroupScale.fit(S, r, opt.get("lam", 0.03), self.overhead_ms, opt.get("counts", False))
        params = self._gparams(len(r))
        params["num_leaves"] = opt.get("leaves", 7)
        if opt.get("leaves", 7) < 7:
            params["min_data_in_leaf"] = max(5, min(30, len(r) // 8))
        if cols is not None:  # other columns constant: the trees cannot split on them
            Xm = np.zeros_like(X)
            Xm[:, cols] = X[:, cols]
            X = Xm
        rounds = max(10, int(self.graph_rounds * opt.get("rounds", 1.0)))
        texts = [_train(X, r, dict(params, seed=self.seed + i), rounds, F.GRAPH_FEATURES).text
                 for i in range(self.graph_ensemble)]
        return _TreeGraph(TreeModel(average_models(texts)))

    def _graph_correction(self, sums: np.ndarray, peak: np.ndarray) -> np.ndarray:
        t = getattr(self, "graph_type", "lgbm" if self.graph_model is not None else "sum")
        if t == "lgbm" and self.graph_model is not None:
            c = self.graph_model.predict(F.graph_features(sums, peak))
        elif t == "ridge" and self.graph_lin is not None:
            c = _Ridge.from_dict(self.graph_lin).predict(F.graph_features(sums, peak))
        elif t == "group_scale" and getattr(self, "graph_gscale", None) is not None:
            c = _GroupScale.from_dict(self.graph_gscale).predict(None, sums)
        elif t == "scale":
            return np.full(len(sums), self.graph_offset)
        else:
            return np.zeros(len(sums))
        clip = getattr(self, "graph_clip", None)
        if clip is not None:
            c = np.clip(c, clip[0], clip[1])
        a = getattr(self, "graph_blend", None)
        if a is not None:
            c = (1 - a) * self.graph_offset + a * c
        return c

    def _base(self, sums: np.ndarray) -> np.ndarray:
        return np.maximum(sums[:, 0] + self.overhead_ms, 1e-6)

    def _finish(self, sums: np.ndarray, peak: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        base = self._base(sums)
        pred = base * np.exp(self._graph_correction(sums, peak))
        lo, hi = pred * math.exp(self.graph_q[0]), pred * math.exp(self.graph_q[1])
        if self.adapters:
            from .adapt import apply_adapters
            pred, lo, hi = apply_adapters(self.adapters, pred, sums)
        return pred, lo, hi

    # ---- public prediction API ---------------------------------------------------------
    def predict_specs(self, candidates: Sequence[Sequence[KernelSpec]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batch path: (median ms, low, high) arrays for candidates given as lists of KernelSpec.

        Results are cached per candidate (key: the identities of its spec objects, which the
        predictor keeps alive; search spaces reuse their spec objects), duplicates in a batch are
        predicted once, and the graph-level model runs vectorised over all uncached candidates.
        """
        n = len(candidates)
        if n == 0:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        cache = self._cand_cache
        keys = [tuple(map(id, c)) for c in candidates]
        rows = list(map(cache.get, keys))
        if None in rows:
            todo: dict[tuple, int] = {}
            todo_c = []
            for k, c, r in zip(keys, candidates, rows):
                if r is None and k not in todo:
                    todo[k] = len(todo_c)
                    todo_c.append(c)
            sums, peak = self._graph_inputs(todo_c)
            med, lo, hi = self._finish(sums, peak)
            start = len(self._cand_pred)
            self._cand_pred = np.vstack([self._cand_pred, np.column_stack([med, lo, hi])])
            for k, j in todo.items():
                cache[k] = start + j
            rows = list(map(cache.get, keys))
        out = self._cand_pred[np.fromiter(rows, np.int64, n)]
        return out[:, 0].copy(), out[:, 1].copy(), out[:, 2].copy()

    def kernel_sum_specs(self, candidates: Sequence[Sequence[KernelSpec]]) -> np.ndarray:
        """The plain sum of kernel predictions of each candidate (no graph model)."""
        sums, _ = self._graph_inputs(candidates)
        return self._base(sums)

    def onnx_inputs(self, model_or_path):
        """Detection, kernel predictions, unknown-op estimates and the summed graph inputs of an ONNX model."""
        from .detect import detect_kernels, rules_for
        from .graph import load_graph
        from .quantized import DeploymentFormWarning, form_mismatch
        g = load_graph(model_or_path, self.batch)
        det = detect_kernels(g, self.batch, rules_for(self.target))
        mismatch = form_mismatch(self.target, g.quantization)
        if mismatch:
            warnings.warn(f"{model_or_path if isinstance(model_or_path, (str, os.PathLike)) else 'model'}: {mismatch}",
                          DeploymentFormWarning, stacklevel=3)
        specs = det.specs()
        ms, lo, hi = self.kernel_ms(specs)
        pending: list = []
        idx = self._index(specs, pending)
        if pending:  # reuse the kernel predictions just made (no second pass over the trees)
            known = {F.spec_key(s): float(m) for s, m in zip(specs, ms)}
            self._materialise(pending, [known[F.spec_key(s)] for s in pending])
        extra, unknown = [], []
        for u in det.unknown:
            est = self.fallback_ms(u.flops, u.bytes)
            out = float(np.prod(u.output_shapes[0])) if u.output_shapes and u.output_shapes[0] else 0.0
            extra.append((0, F.unknown_row(est, u.flops, u.bytes, out)))
            unknown.append({"name": u.name, "op_type": u.op_type, "estimate_ms": est, "flops": u.flops,
                            "bytes": u.bytes, "fallback": "roofline t0 + bytes*a + flops*b fitted on the table's kernels"})
        if not idx and not extra:
            raise PredictorError(f"{model_or_path}: the graph has no computing node to predict")
        if idx:
            sums, peak = self._sums([idx], extra)
        else:  # only unknown ops: the fallback sum
            sums, peak = np.zeros((1, len(F.ADDITIVE))), np.zeros(1)
            for _, (row, out) in extra:
                sums[0] += row
                peak[0] = max(peak[0], out)
        return det, (ms, lo, hi), unknown, sums, peak

    def predict(self, model_or_path, name: str | None = None) -> Prediction:
        """ONNX path: detect the kernels of an ONNX model (path or ModelProto) and predict it."""
        det, (ms, lo, hi), unknown, sums, peak = self.onnx_inputs(model_or_path)
        pred, plo, phi = self._finish(sums, peak)
        kernels = [{"kind": k.spec.kind, "params": dict(k.spec.params), "nodes": k.nodes, "ops": k.ops,
                    "ms": float(m), "low_ms": float(l), "high_ms": float(h)}
                   for k, m, l, h in zip(det.kernels, ms, lo, hi)]
        label = name or (str(model_or_path) if not hasattr(model_or_path, "graph") else (model_or_path.graph.name or "<model>"))
        rel = self._reliability(det, ms, unknown, float(sums[0, 0]))
        scale = float(pred[0]) / max(float(self._base(sums)[0]), 1e-12)  # the graph correction (and adapters)
        low = max(float(plo[0]) - rel.low_extra_ms * scale, 0.05 * float(pred[0]))
        high = float(phi[0]) + rel.high_extra_ms * scale
        return Prediction(label, float(pred[0]), low, high, float(sums[0, 0]), kernels, unknown,
                          len(det.folded), self.batch, rel.fallback_share, rel.extrapolated_share, rel.unreliable, rel.note,
                          rel.unknown_by_type)

    def _reliability(self, det, ms, unknown: list[dict], kernel_sum_ms: float):
        """Fallback and extrapolation shares of one ONNX prediction, and its interval's widening."""
        from .reliability import assess, extrapolation
        ext = []
        if self.kernel_ranges:
            for k, m in zip(det.kernels, ms):
                st = F.spec_stats(k.spec, self.batch)
                d = extrapolation(math.log(max(st[0], 1.0)), math.log(max(st[2], 1.0)),
                                  self.kernel_ranges.get(k.spec.kind))
                if d > 0:
                    ext.append((float(m), d, *self.kernel_q.get(k.spec.kind, self.pooled_q)))
        return assess(kernel_sum_ms, unknown, self.fallback.get("log_interval"), ext)

    # ---- sklearn-style fit on tables ---------------------------------------------------
    def fit(self, table, metadata: dict | None = None, holdout: float = 0.0, log=None,
            networks=None) -> "Predictor":
        """Fit kernel and graph models on a table (DataFrame, or path(s) to Parquet tables).

        `networks` (a measured-networks file or `MeasuredNetworks`, `predictors.measured`): real
        architectures measured on the table's target; they join the table's networks in the
        graph model, each weighing `real_network_weight`. With holdout > 0, that share of the
        table's networks is held out first and the report of `holdout_report` is stored in
        `self.training["holdout"]`; the final graph model is then refitted on all networks.
        """
        df, meta = self._table(table, metadata)
        log = log or (lambda *a: None)
        kern = df[df["category"] == "kernel"]
        specs, ms, spread = [], [], []
        for row in kern.to_dict("records"):
            try:
                specs.append(row_spec(row))
                ms.append(row["median_ms"])
                lo_, hi_ = row.get("p10_ms"), row.get("p90_ms")
                spread.append(hi_ / lo_ if lo_ and hi_ and lo_ > 0 and hi_ >= lo_ else 1.0)
            except (KernelSpecError, KeyError, ValueError, TypeError):
                continue
        t0 = time.time()
        log(f"kernel models: {len(specs)} rows, {len(set(s.kind for s in specs))} kinds")
        self.fit_kernels(specs, np.array(ms, float), np.array(spread, float))
        log(f"  done in {time.time() - t0:.1f}s; out-of-fold kernel accuracy: "
            f"{self.training['kernel_oof']['within10']:.1%} within ±10%, MAPE {self.training['kernel_oof']['mape']:.1%}")
        nets = self.network_rows(df)
        blocks = df[df["category"] == "block"]
        if len(blocks):
            bspecs, bms = [], []
            for row in blocks.to_dict("records"):
                try:
                    bspecs.append([row_spec(row)])
                    bms.append(row["median_ms"])
                except (KernelSpecError, KeyError, ValueError):
                    continue
            if bspecs:
                self.fit_overhead(bspecs, np.array(bms))
                self.training["blocks_kernel_sum"] = metrics(np.array(bms), self.kernel_sum_specs(bspecs))
        if holdout > 0 and len(nets) >= 10:
            self.training["holdout"] = self.holdout_report(nets, holdout)
        real = self._real_networks(networks)
        self.fit_graph([n["specs"] for n in nets] + real.candidates,
                       np.concatenate([[n["ms"] for n in nets], real.latency_ms]),
                       families=[n["family"] for n in nets] + real.families,
                       weights=[1.0] * len(nets) + [self.real_network_weight] * len(real))
        if len(real):
            self.training["real_networks"] = {"n": len(real), "weight": self.real_network_weight,
                                              "families": sorted(set(real.families))}
            log(f"graph model: {len(nets)} table networks + {len(real)} real networks (weight "
                f"{self.real_network_weight:g}; families {', '.join(sorted(set(real.families)))})")
        self.training["table_rows"] = int(len(df))
        return self

    def _real_networks(self, networks):
        from .measured import MeasuredNetworks, read_networks_file
        if networks is None:
            return MeasuredNetworks([], np.zeros(0), [], [], [])
        real = networks if isinstance(networks, MeasuredNetworks) else read_networks_file(networks)
        other = sorted({t for t in real.targets if t and t != self.target_name})
        if other:
            raise PredictorError(f"the measured networks were measured on {', '.join(other)}, the table on "
                                 f"{self.target_name}: give networks measured on {self.target_name}, or adapt a "
                                 "predictor to the other device (train-predictor --adapt-from ... --networks ...)")
        bad = [nm for nm, m in zip(real.names, real.latency_ms) if not (np.isfinite(m) and m > 0)]
        if bad:
            raise PredictorError(f"measured networks without a positive latency_ms: {', '.join(bad[:5])}")
        return real

    def _table(self, table, metadata):
        if isinstance(table, pd.DataFrame):
            df, meta = table, metadata or {}
        else:
            paths = [table] if isinstance(table, (str, os.PathLike)) else list(table)
            df, meta = load_tables(paths)
        if meta:
            self.target = dict(meta.get("target") or self.target)
            self.fingerprint = dict(meta.get("fingerprint") or self.fingerprint)
            self.batch = int(self.target.get("batch", self.batch) or 1)
            self.table_meta = {k: meta.get(k) for k in ("hwnas_version", "created", "updated")}
        missing = {"category", "kind", "median_ms"} - set(df.columns)
        if missing:
            raise PredictorError(f"the table lacks columns {sorted(missing)}; is it an hwnas latency table?")
        self._reset_cache()
        return df, meta

    def network_rows(self, df: pd.DataFrame) -> list[dict]:
        nets = []
        for row in df[df["category"] == "network"].to_dict("records"):
            try:
                specs = network_specs(row["network_spec"])
            except Exception:
                continue
            if not specs or not (row["median_ms"] > 0):
                continue
            nets.append({"specs": specs, "ms": float(row["median_ms"]), "flops": float(row.get("flops") or 0),
                         "family": row.get("family") or "?", "id": row.get("config_id")})
        return nets

    def holdout_report(self, nets: list[dict], frac: float = 0.2) -> dict:
        """Fit the graph model on (1-frac) of the networks, report accuracy on the rest.

        Compares a FLOPs-only fit (log-log line), the plain kernel sum and the full model.
        The graph model and calibration are refitted afterwards by `fit`.
        """
        rng = np.random.default_rng(self.seed + 7)
        order = rng.permutation(len(nets))
        n_test = max(2, int(round(frac * len(nets))))
        test, train = order[:n_test], order[n_test:]
        return self.compare_on(nets, train, test)

    def compare_on(self, nets: list[dict], train: np.ndarray, test: np.ndarray) -> dict:
        y = np.array([n["ms"] for n in nets])
        flops = np.array([max(n["flops"], 1.0) for n in nets])
        if not (flops > 1).all():
            flops = np.array([sum(F.spec_stats(k, self.batch)[0] for k in self._expand(n["specs"])) for n in nets])
        a, b = np.polyfit(np.log(flops[train]), np.log(y[train]), 1)
        flops_pred = np.exp(b + a * np.log(flops[test]))
        keys = ("graph_model", "graph_q", "graph_type", "graph_offset", "graph_lin", "graph_gscale", "graph_blend",
                "graph_clip")
        saved = ({k: getattr(self, k, None) for k in keys}, dict(self.training))
        self.fit_graph([nets[i]["specs"] for i in train], y[train], families=[nets[i]["family"] for i in train])
        cands = [nets[i]["specs"] for i in test]
        ksum = self.kernel_sum_specs(cands)
        pred, lo, hi = self.predict_specs(cands)
        for k, v in saved[0].items():
            setattr(self, k, v)
        self.training = saved[1]
        self._clear_pred_cache()
        return {"train_networks": int(len(train)), "test_networks": int(len(test)),
                "flops_only": metrics(y[test], flops_pred), "kernel_sum": metrics(y[test], ksum),
                "full": metrics(y[test], pred, lo, hi)}

    def _expand(self, specs):
        from profiling.builders import decompose
        out = []
        for s in specs:
            out.extend(decompose(s) if KINDS[s.kind].category == "block" else [s])
        return out

    # ---- target checks -----------------------------------------------------------------
    @property
    def target_name(self) -> str:
        return str(self.target.get("name", "unknown"))

    def check_target(self, target) -> None:
        """Refuse to predict for another target than the one the predictor was built for."""
        name = target if isinstance(target, str) else (target.get("name") if isinstance(target, dict) else target.name)
        if name != self.target_name:
            raise PredictorError(f"this predictor was built for target {self.target_name!r}, not {name!r}; "
                                 f"train one on a table of {name} (train-predictor --table ...) or adapt one "
                                 "(train-predictor --adapt-from ...)")

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        if self.pooled is None:
            raise PredictorError("nothing to save: fit the predictor first")
        models = {"kernel/_pooled": self.pooled.model_to_string()}
        for kind, m in self.kernel_models.items():
            models[f"kernel/{kind}"] = m.model_to_string()
        if self.graph_model is not None:
            models["graph"] = self.graph_model.model_to_string()
        from profiling.table import hwnas_version
        header = {
            "kind": "hwnas-latency-predictor",
            "target": self.target, "fingerprint": self.fingerprint, "batch": self.batch,
            "feature_schema": {"kernel_features": list(F.KERNEL_FEATURES), "kernel_kinds": list(F.KERNEL_KINDS),
                               "pooled_features": [*F.KERNEL_FEATURES, "kind"],
                               "graph_features": list(F.GRAPH_FEATURES), "additive": list(F.ADDITIVE),
                               "groups": list(F.GROUPS), "kernel_target": "log(median_ms)",
                               "graph_target": "log(network ms) - log(sum of kernel ms)"},
            "calibration": {"coverage": COVERAGE, "graph_log_interval": list(self.graph_q),
                            "kernel_log_interval": {k: list(v) for k, v in self.kernel_q.items()},
                            "pooled_log_interval": list(self.pooled_q)},
            "kernel_linear": {"_pooled": self.pooled.coef, **{k: m.coef for k, m in self.kernel_models.items()}},
            "graph": {"type": getattr(self, "graph_type", "sum"), "offset": getattr(self, "graph_offset", 0.0),
                      "ridge": getattr(self, "graph_lin", None), "group_scale": getattr(self, "graph_gscale", None),
                      "blend": getattr(self, "graph_blend", None),
                      "clip": None if self.graph_clip is None else list(self.graph_clip)},
            "kernel_variants": {k: m.variant for k, m in self.kernel_models.items()},
            "overhead_ms": self.overhead_ms,
            "unknown_op_fallback": self.fallback,
            "kernel_ranges": self.kernel_ranges,
            "adapters": self.adapters,
            "training": self.training,
            "hwnas_version": hwnas_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_predictor_file(path, header, models)

    # ---- a cache of parsed trees (numpy .npz, no pickle), keyed by the file's own sha256 ----------
    @staticmethod
    def _tree_cache_path(digest: str) -> Path | None:
        if not digest:
            return None
        root = os.environ.get("HWNAS_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                             os.path.expanduser("~/.cache"), "hwnas")
        return Path(root) / "predictors" / f"{digest[:32]}.npz"

    def _tree_models(self) -> dict[str, TreeModel]:
        out = {"kernel/_pooled": self.pooled.tree} if self.pooled is not None else {}
        out.update({f"kernel/{k}": m.tree for k, m in self.kernel_models.items()})
        if self.graph_model is not None:
            out["graph"] = self.graph_model
        return out

    def write_tree_cache(self) -> Path | None:
        """Parse every tree model once and store the arrays next to nothing else: later loads of the
        same file (same sha256) skip parsing. Silently does nothing where the cache is not writable."""
        path = self._tree_cache_path(self.header.get("_file_sha256", ""))
        if path is None or path.exists():
            return path
        try:
            models = self._tree_models()
            names = list(models)
            parsed = [models[nm].arrays() for nm in names]
            arrays = {"names": np.array(names)}
            for k in TreeModel._ARRAYS:  # one array per field, all models concatenated (few npz entries)
                arrays[k] = np.concatenate([d[k] for d in parsed])
                arrays[f"{k}__len"] = np.array([len(d[k]) for d in parsed], np.int64)
            arrays["scalars"] = np.array([[float(d[k]) for k in TreeModel._SCALARS] for d in parsed])
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
            return path
        except OSError:
            return None

    def _read_tree_cache(self) -> None:
        path = self._tree_cache_path(self.header.get("_file_sha256", ""))
        if path is None or not path.exists():
            return
        try:
            with np.load(path, allow_pickle=False) as z:
                names = [str(x) for x in z["names"]]
                data: dict[str, dict] = {nm: {} for nm in names}
                for k in TreeModel._ARRAYS:
                    parts = np.split(z[k], np.cumsum(z[f"{k}__len"])[:-1])
                    for nm, part in zip(names, parts):
                        data[nm][k] = part
                for nm, row in zip(names, z["scalars"]):
                    for k, v in zip(TreeModel._SCALARS, row):
                        data[nm][k] = v
            if self.pooled is not None and "kernel/_pooled" in data:
                self.pooled.tree = TreeModel.from_arrays(self.pooled.tree.text, data["kernel/_pooled"])
            for kind, m in self.kernel_models.items():
                if f"kernel/{kind}" in data:
                    m.tree = TreeModel.from_arrays(m.tree.text, data[f"kernel/{kind}"])
            if self.graph_model is not None and "graph" in data:
                self.graph_model = TreeModel.from_arrays(self.graph_model.text, data["graph"])
        except Exception:  # a damaged cache is ignored: the text models are the truth
            return

    @classmethod
    def load(cls, path: str | os.PathLike, num_threads: int = 1) -> "Predictor":
        header, models = read_predictor_file(path)
        schema = header.get("feature_schema", {})
        if list(schema.get("kernel_features", [])) != list(F.KERNEL_FEATURES) or \
                list(schema.get("graph_features", [])) != list(F.GRAPH_FEATURES):
            raise PredictorFileError(f"{path} was built with another feature schema than this hwnas uses; "
                                     "rebuild it with `train-predictor`")
        p = cls(header.get("target"), header.get("fingerprint"), header.get("batch"), num_threads=num_threads)
        try:
            lin = header["kernel_linear"]
            p.pooled = KindModel(lin["_pooled"], TreeModel(models["kernel/_pooled"]))
            for name, text in models.items():
                if name.startswith("kernel/") and name != "kernel/_pooled":
                    kind = name.split("/", 1)[1]
                    p.kernel_models[kind] = KindModel(lin[kind], TreeModel(text),
                                                      header.get("kernel_variants", {}).get(kind, "l2"))
            p.graph_model = TreeModel(models["graph"]) if "graph" in models else None
            g = header.get("graph", {})
            p.graph_type = g.get("type", "lgbm" if p.graph_model is not None else "sum")
            p.graph_offset = float(g.get("offset", 0.0))
            p.graph_lin = g.get("ridge")
            p.graph_gscale = g.get("group_scale")
            p.graph_blend = g.get("blend")
            p.graph_clip = tuple(g["clip"]) if g.get("clip") is not None else None
        except KeyError as e:
            raise PredictorFileError(f"{path} lacks the model {e}; rebuild it with `train-predictor`") from None
        except Exception as e:
            raise PredictorFileError(f"{path}: a LightGBM model cannot be read ({e}); rebuild it") from None
        cal = header.get("calibration", {})
        p.graph_q = tuple(cal.get("graph_log_interval", p.graph_q))
        p.kernel_q = {k: tuple(v) for k, v in cal.get("kernel_log_interval", {}).items()}
        p.pooled_q = tuple(cal.get("pooled_log_interval", p.pooled_q))
        p.fallback = header.get("unknown_op_fallback", p.fallback)
        p.kernel_ranges = header.get("kernel_ranges", {})
        p.overhead_ms = float(header.get("overhead_ms", 0.0))
        p.adapters = header.get("adapters", [])
        p.training = header.get("training", {})
        p.header = header
        p._read_tree_cache()
        return p

    def adapt(self, candidates, ms, device: str = "new-device", **kw) -> "Predictor":
        from .adapt import adapt
        return adapt(self, candidates, ms, device=device, **kw)


__all__ = ["Predictor", "Prediction", "PredictorError", "metrics", "load_tables", "row_spec", "network_specs"]
