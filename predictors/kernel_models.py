"""The kernel level of the predictor: one model per kernel kind, a pooled model for kinds with
few rows, and a bytes/FLOPs roofline for ops the vocabulary lacks.

Each model predicts log median ms from `features.spec_features`: a linear part in log FLOPs
and log bytes (extrapolates sanely) plus LightGBM trees on the residual. The intervals are
split-conformal on out-of-fold residuals.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from profiling.kernels import KernelSpec

from . import features as F
from .errors import PredictorError
from .numerics import conformal_interval, kfold_ids, metrics, out_of_fold, ridge_solve
from .reliability import kind_ranges
from .trees import TreeModel, train_tree_model

MIN_KIND_ROWS = 20  # a kind with fewer rows is predicted by the pooled model
KERNEL_VARIANTS = ("l2", "huber", "weighted")
_LF, _LB = F.KERNEL_FEATURES.index("log_flops"), F.KERNEL_FEATURES.index("log_bytes")

Interval = tuple[float, float]


class KindModel:
    """log ms = linear(log FLOPs, log bytes) + LightGBM trees on the residual (extrapolates sanely)."""

    def __init__(self, coef: Sequence[float] | np.ndarray, tree: TreeModel, variant: str = "l2"):
        self.coef = [float(c) for c in coef]
        self.tree = tree
        self.variant = variant

    def linear(self, X: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.coef[0] + X[:, _LF] * self.coef[1] + X[:, _LB] * self.coef[2]
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.linear(X) + self.tree.predict(X)
        return out

    def model_to_string(self) -> str:
        return self.tree.model_to_string()


def fit_kind(X: np.ndarray, y: np.ndarray, params: dict[str, Any], rounds: int, names: Sequence[str],
             variant: str = "l2", weight: np.ndarray | None = None) -> KindModel:
    """One kernel model. Variants (chosen per kind by cross-validation in `KernelModels.fit`):
    l2: least-squares line + L2 trees; huber: Huber line + Huber-loss trees (robust to the
    one-sided contention outliers of a busy core); weighted: l2 with rows weighted by
    1/(0.05 + log(p90/p10)) so that noisy measurements count less."""
    A = np.column_stack([np.ones(len(y)), X[:, _LF], X[:, _LB]])
    w = np.ones(len(y)) if weight is None or variant != "weighted" else np.asarray(weight, float)
    lam = np.array([0.0, 1e-3, 1e-3])  # the intercept is not shrunk
    coef = ridge_solve(A, y, lam * w.sum(), weights=w)
    params = dict(params)
    if variant == "huber":
        for _ in range(20):  # IRLS Huber line, delta 0.15 in log space
            r = y - A @ coef
            hw = np.minimum(1.0, 0.15 / np.maximum(np.abs(r), 1e-9))
            coef = ridge_solve(A, y, lam * hw.sum(), weights=hw)
        params.update(objective="huber", alpha=0.15)
    tree = train_tree_model(X, y - A @ coef, params, rounds, names, weight=w if variant == "weighted" else None)
    return KindModel(coef, tree, variant)


class KernelModels:
    """The kernel-model collection of one target: per-kind models, the pooled model, their
    log intervals, and the roofline fallback for unknown ops."""

    def __init__(self) -> None:
        self.models: dict[str, KindModel] = {}
        self.q: dict[str, Interval] = {}
        self.pooled: KindModel | None = None
        self.pooled_q: Interval = (-0.3, 0.3)
        self.fallback: dict[str, Any] = {"t0_ms": 0.005, "ms_per_byte": 1e-8, "ms_per_flop": 1e-9}
        self.ranges: dict[str, list[float]] = {}  # per kind: log FLOPs and log bytes range of the table
        # the kernel features the models read: all of `KERNEL_FEATURES`, or the first n of them in a
        # file written before later features were appended (the pooled model's `kind` follows them)
        self.n_features = len(F.KERNEL_FEATURES)

    def fit(self, specs: Sequence[KernelSpec], ms: np.ndarray, spread: np.ndarray | None, batch: int,
            params: Callable[[int], dict[str, Any]], rounds: int, seed: int) -> dict[str, Any]:
        """Fit every model; returns the training report (kernel_cv, kernel_rows, kernel_oof).

        spread (p90/p10 per row, optional) enables the noise-weighted variant; params(n) gives
        the LightGBM parameters for n training rows."""
        ms = np.asarray(ms, float)
        keep = np.isfinite(ms) & (ms > 0)
        specs = [s for s, k in zip(specs, keep) if k]
        ms = ms[keep]
        if len(specs) < 10:
            raise PredictorError(f"only {len(specs)} kernel rows with a latency: profile more configurations")
        self.n_features = len(F.KERNEL_FEATURES)
        X = F.feature_matrix(specs, batch)
        y = np.log(ms)
        kinds = np.array([s.kind for s in specs])
        kind_code = np.array([F.KERNEL_KINDS.index(k) for k in kinds], float)
        Xp = np.column_stack([X, kind_code])
        pooled_names = [*F.KERNEL_FEATURES, "kind"]
        rng = np.random.default_rng(seed)
        # out-of-fold residuals give each kind's interval
        oof = out_of_fold(rng.integers(0, 3, len(y)), 3,
                          lambda tr: fit_kind(Xp[tr], y[tr], params(tr.sum()), rounds, pooled_names).predict(Xp[~tr]))
        self.pooled = fit_kind(Xp, y, params(len(y)), rounds, pooled_names)
        self.pooled_q = conformal_interval(y - oof)
        self.models, self.q = {}, {}
        w_all = None if spread is None else 1.0 / (0.05 + np.log(np.maximum(np.asarray(spread, float)[keep], 1.0)))
        report: dict[str, Any] = {}
        oof_all = oof.copy()
        for kind in sorted(set(kinds)):
            sel = kinds == kind
            if sel.sum() < MIN_KIND_ROWS:
                continue
            Xk, yk = X[sel], y[sel]
            wk = None if w_all is None else w_all[sel]
            variants = [v for v in KERNEL_VARIANTS if v != "weighted" or wk is not None]

            def cv(variant: str, fold_seed: int, k: int = 3) -> np.ndarray:
                return out_of_fold(kfold_ids(len(yk), k, fold_seed), k, lambda tr: fit_kind(
                    Xk[tr], yk[tr], params(tr.sum()), rounds, F.KERNEL_FEATURES, variant,
                    None if wk is None else wk[tr]).predict(Xk[~tr]))

            # choose the variant on one split of folds, report it on another (less selection bias)
            scores = {}
            for v in variants:
                rel = np.abs(np.exp(cv(v, seed) - yk) - 1)
                scores[v] = (float(np.mean(rel <= 0.10)), -float(np.mean(rel)))
            best = max(variants, key=lambda v: scores[v])
            oofk = cv(best, seed + 100) if len(variants) > 1 else cv(best, seed)
            self.models[kind] = fit_kind(Xk, yk, params(len(yk)), rounds, F.KERNEL_FEATURES, best, wk)
            self.q[kind] = conformal_interval(yk - oofk)
            oof_all[sel] = oofk
            m = metrics(ms[sel], np.exp(oofk))
            quiet = None if spread is None else np.asarray(spread, float)[keep][sel] < 1.15
            report[kind] = {"variant": best, "n": int(sel.sum()), "within10": m["within10"], "mape": m["mape"],
                            "selection_within10": {v: scores[v][0] for v in variants}}
            if quiet is not None and quiet.any():
                report[kind]["quiet_within10"] = float(np.mean(np.abs(np.exp(oofk[quiet] - yk[quiet]) - 1) <= 0.10))
                report[kind]["quiet_n"] = int(quiet.sum())
        self.fit_fallback(specs, ms, batch)
        return {"kernel_cv": report, "kernel_rows": int(len(y)), "kernel_oof": metrics(ms, np.exp(oof_all))}

    def fit_fallback(self, specs: Sequence[KernelSpec], ms: np.ndarray, batch: int) -> None:
        """Roofline for unknown ops: ms = t0 + bytes * a + flops * b, least relative squares, non-negative."""
        from scipy.optimize import nnls  # lazy: scipy.optimize takes ~0.3 s to import; only training needs it
        st = np.array([F.spec_stats(s, batch) for s in specs])
        A = np.column_stack([np.ones(len(ms)), st[:, 2], st[:, 0]]) / ms[:, None]
        scale = A.max(axis=0) + 1e-30
        coef, _ = nnls(A / scale, np.ones(len(ms)))
        coef = coef / scale
        pred = coef[0] + st[:, 2] * coef[1] + st[:, 0] * coef[2]
        self.fallback = {"t0_ms": float(coef[0]), "ms_per_byte": float(coef[1]), "ms_per_flop": float(coef[2]),
                         "method": "roofline: t0 + bytes*ms_per_byte + flops*ms_per_flop, fitted on all kernel rows",
                         # how far a roofline estimate is from a kernel's measured time (widens intervals)
                         "log_interval": list(conformal_interval(np.log(ms / np.maximum(pred, 1e-12))))}
        self.ranges = kind_ranges(st, [s.kind for s in specs])

    def fallback_ms(self, flops: float, nbytes: float) -> float:
        f = self.fallback
        return float(f["t0_ms"] + nbytes * f["ms_per_byte"] + flops * f["ms_per_flop"])

    def predict(self, specs: Sequence[KernelSpec], batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
            X = F.feature_matrix([specs[i] for i in idx], batch)
            model = self.models.get(kind)
            if model is not None:
                p = model.predict(X)
                q = self.q[kind]
            else:
                code = F.KERNEL_KINDS.index(kind) if kind in F.KERNEL_KINDS else -1
                p = self.pooled.predict(np.column_stack([X[:, :self.n_features], np.full(len(idx), code, float)]))
                q = self.pooled_q
            out[idx] = np.exp(p)
            lo[idx] = np.exp(p + q[0])
            hi[idx] = np.exp(p + q[1])
        return out, lo, hi

    def tree_models(self) -> dict[str, TreeModel]:
        """The trees by their name in the predictor file (`kernel/_pooled`, `kernel/<kind>`)."""
        out = {"kernel/_pooled": self.pooled.tree} if self.pooled is not None else {}
        out.update({f"kernel/{k}": m.tree for k, m in self.models.items()})
        return out


__all__ = ["KindModel", "KernelModels", "fit_kind", "KERNEL_VARIANTS", "MIN_KIND_ROWS"]
