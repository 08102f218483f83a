"""Graph-level corrections: how a whole network's latency departs from its kernel sum.

The target is r = log(measured ms / kernel sum). Every correction is one small class with
`fit`, `predict`, `to_dict` and `from_dict`, registered by its type name in `CORRECTIONS`
(the name the predictor file's header stores under `graph.type`):

- `sum`: r = 0 (the plain kernel sum);
- `scale`: a constant (the calibrated kernel sum);
- `ridge`: ridge regression on the standardised graph features;
- `group_scale`: a non-negative scale per kernel group (and optionally a time per kernel);
- `lgbm`: boosted trees on the graph features (an average of several seeds).

`GRAPH_CANDIDATES` names the configurations `Predictor.fit_graph` chooses from by
cross-validation; `ChosenCorrection` is the fitted choice with its blend and clip, which is
what a predictor holds and saves.

One level down, an *in-network* correction scales each kernel's isolated prediction by how its
kind runs inside a network (`KERNEL_CORRECTIONS`, registered the same way; `kind_scale`: a
factor per kernel kind, depthwise convs apart, fitted on the table's measured blocks and
networks). A depthwise conv measured alone pays the NCHW<->NCHWc reorders that a chain of
blocked convs does not; pooling, resize and reshape run on data a network left in cache.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import numpy as np

from . import features as F
from .numerics import kfold_masks, ridge_solve
from .trees import TreeModel, average_models, train_tree_model


@dataclass
class FitContext:
    """What a correction may need from its predictor to fit: seed, run overhead, tree settings."""
    seed: int = 0
    overhead_ms: float = 0.0
    tree_params: Callable[[int], dict[str, Any]] = field(default=lambda n: {})
    tree_rounds: int = 300
    ensemble: int = 5


@runtime_checkable
class GraphCorrection(Protocol):
    """r = log(network ms / kernel sum) from graph features X and summed additive rows S."""
    type_name: ClassVar[str]
    constant: ClassVar[bool]  # a constant is used as fitted: neither clipped nor blended

    @classmethod
    def fit(cls, X: np.ndarray, S: np.ndarray, r: np.ndarray, ctx: FitContext, **options: Any) -> "GraphCorrection":
        ...

    def predict(self, X: np.ndarray | None, S: np.ndarray) -> np.ndarray:
        ...

    def to_dict(self) -> dict[str, Any]:
        ...

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GraphCorrection":
        ...


CORRECTIONS: dict[str, type[GraphCorrection]] = {}


def register(cls: type[GraphCorrection]) -> type[GraphCorrection]:
    """Class decorator: add a correction to `CORRECTIONS` under its `type_name`."""
    CORRECTIONS[cls.type_name] = cls
    return cls


@register
class SumCorrection:
    """r = 0: the network takes its kernel sum."""
    type_name: ClassVar[str] = "sum"
    constant: ClassVar[bool] = True
    uses_features: ClassVar[bool] = False

    @classmethod
    def fit(cls, X: np.ndarray, S: np.ndarray, r: np.ndarray, ctx: FitContext, **options: Any) -> "SumCorrection":
        return cls()

    def predict(self, X: np.ndarray | None, S: np.ndarray) -> np.ndarray:
        return np.zeros(len(S))

    def to_dict(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SumCorrection":
        return cls()


@register
class ScaleCorrection:
    """r = a constant (the median of the training networks): the calibrated kernel sum."""
    type_name: ClassVar[str] = "scale"
    constant: ClassVar[bool] = True
    uses_features: ClassVar[bool] = False

    def __init__(self, offset: float):
        self.offset = float(offset)

    @classmethod
    def fit(cls, X: np.ndarray, S: np.ndarray, r: np.ndarray, ctx: FitContext, **options: Any) -> "ScaleCorrection":
        return cls(float(np.median(r)))

    def predict(self, X: np.ndarray | None, S: np.ndarray) -> np.ndarray:
        return np.full(len(S), self.offset)

    def to_dict(self) -> dict[str, Any]:
        return {"offset": self.offset}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScaleCorrection":
        return cls(d["offset"])


def share_columns() -> list[int]:
    """Transferable graph features: shares of time per kernel group and the small-kernel share."""
    return [i for i, f in enumerate(F.GRAPH_FEATURES) if f.startswith("share_") or f == "small_share"]


@register
class RidgeCorrection:
    """Ridge on standardised graph features (NaN-free); with no penalty given, chosen by inner CV."""
    type_name: ClassVar[str] = "ridge"
    constant: ClassVar[bool] = False
    uses_features: ClassVar[bool] = True
    LAMBDAS: ClassVar[tuple[float, ...]] = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)

    def __init__(self, mean: Any, std: Any, coef: Any, intercept: float, lam: float, cols: Any = None):
        self.mean, self.std = np.asarray(mean, float), np.asarray(std, float)
        self.coef, self.intercept, self.lam = np.asarray(coef, float), float(intercept), float(lam)
        self.cols = None if cols is None else [int(c) for c in cols]

    def predict(self, X: np.ndarray | None, S: np.ndarray | None = None) -> np.ndarray:
        X = np.asarray(X, float)
        if self.cols is not None:
            X = X[:, self.cols]
        Z = (np.nan_to_num(X) - self.mean) / self.std
        return np.asarray(self.intercept + Z @ self.coef)

    @classmethod
    def fit(cls, X: np.ndarray, S: np.ndarray | None, r: np.ndarray, ctx: FitContext | None = None,
            lam: float | None = None, cols: str | list[int] | None = None, **options: Any) -> "RidgeCorrection":
        if lam is None:
            return cls.fit_cv(X, r, ctx.seed if ctx is not None else 0)
        if isinstance(cols, str):  # a named column set: only "share" exists
            return cls.fit_penalty(X, r, lam, share_columns())
        return cls.fit_penalty(X, r, lam, cols)

    @classmethod
    def fit_penalty(cls, X: np.ndarray, r: np.ndarray, lam: float, cols: list[int] | None = None) -> "RidgeCorrection":
        X = np.asarray(X, float)
        if cols is not None:
            X = X[:, list(cols)]
        X = np.nan_to_num(X)
        mean, std = X.mean(axis=0), X.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        Z = (X - mean) / std
        rm = float(np.median(r))
        coef = ridge_solve(Z, r - rm, lam * len(r))
        return cls(mean, std, coef, rm, lam, cols)

    @classmethod
    def fit_cv(cls, X: np.ndarray, r: np.ndarray, seed: int = 0,
               lambdas: tuple[float, ...] = LAMBDAS) -> "RidgeCorrection":
        masks = kfold_masks(len(r), min(5, len(r)), seed + 11)
        best: tuple[float, float] | None = None
        for lam in lambdas:
            e = 0.0
            for tr in masks:
                e += float(np.abs(r[~tr] - cls.fit_penalty(X[tr], r[tr], lam).predict(X[~tr])).sum())
            if best is None or e < best[0]:
                best = (e, lam)
        assert best is not None
        return cls.fit_penalty(X, r, best[1])

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept, "lambda": self.lam, "cols": self.cols}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RidgeCorrection":
        return cls(d["mean"], d["std"], d["coef"], d["intercept"], d["lambda"], d.get("cols"))


@register
class GroupScaleCorrection:
    """Per-kernel-group scale: measured ms ~ sum_g w_g * (kernel sum of group g) + b, w, b >= 0.

    Fitted by non-negative least relative squares, each w_g shrunk toward the common scale
    c = exp(median r) with penalty lam (a group the training networks lack keeps c). The
    correction is r = log(prediction / kernel sum). This is how a kernel kind runs faster or
    slower inside a network than in isolation (caches warm, threads already spun up).
    """
    type_name: ClassVar[str] = "group_scale"
    constant: ClassVar[bool] = False
    uses_features: ClassVar[bool] = False

    def __init__(self, w: Any, b: float, lam: float, overhead: float = 0.0, v: Any = None):
        self.w, self.b, self.lam, self.overhead = np.asarray(w, float), float(b), float(lam), float(overhead)
        self.v = np.zeros(len(self.w)) if v is None else np.asarray(v, float)

    def predict(self, X: np.ndarray | None, S: np.ndarray) -> np.ndarray:
        S = np.atleast_2d(S)
        ng = len(F.GROUPS)
        base = np.maximum(S[:, 0] + self.overhead, 1e-6)
        pred = S[:, 7:7 + ng] @ self.w + S[:, 7 + ng:7 + 2 * ng] @ self.v + self.b
        return np.asarray(np.log(np.maximum(pred, 0.05 * base) / base))

    @classmethod
    def fit(cls, X: np.ndarray | None, S: np.ndarray, r: np.ndarray, ctx: FitContext | None = None,
            lam: float = 0.03, counts: bool = False, **options: Any) -> "GroupScaleCorrection":
        """counts=True adds a per-kernel time per group (any sign, shrunk toward 0): the launch and
        synchronisation cost a kernel pays in a network minus the one its isolated measurement had."""
        from scipy.optimize import lsq_linear  # lazy: scipy.optimize takes ~0.3 s to import; only fitting needs it
        overhead = ctx.overhead_ms if ctx is not None else 0.0
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
        m0 = 1.0
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

    def to_dict(self) -> dict[str, Any]:
        return {"w": self.w.tolist(), "v": self.v.tolist(), "b": self.b, "lambda": self.lam,
                "overhead": self.overhead, "groups": list(F.GROUPS)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GroupScaleCorrection":
        return cls(d["w"], d["b"], d["lambda"], d.get("overhead", 0.0), d.get("v"))


@register
class TreeCorrection:
    """LightGBM trees on the graph features: the mean of `ctx.ensemble` boosted models (seeds
    seed, seed+1, ...), as one text model; `cols="share"` lets the trees see the shares only."""
    type_name: ClassVar[str] = "lgbm"
    constant: ClassVar[bool] = False
    uses_features: ClassVar[bool] = True

    def __init__(self, tree: TreeModel):
        self.tree = tree

    def predict(self, X: np.ndarray | None, S: np.ndarray | None = None) -> np.ndarray:
        assert X is not None, "a tree correction reads the graph features"
        return np.asarray(self.tree.predict(X))

    @classmethod
    def fit(cls, X: np.ndarray, S: np.ndarray | None, r: np.ndarray, ctx: FitContext | None = None,
            leaves: int = 7, cols: str | None = None, rounds: float = 1.0, **options: Any) -> "TreeCorrection":
        ctx = ctx or FitContext()
        params = ctx.tree_params(len(r))
        params["num_leaves"] = leaves
        if leaves < 7:
            params["min_data_in_leaf"] = max(5, min(30, len(r) // 8))
        if cols == "share":  # other columns constant: the trees cannot split on them
            keep = share_columns()
            Xm = np.zeros_like(X)
            Xm[:, keep] = X[:, keep]
            X = Xm
        n_rounds = max(10, int(ctx.tree_rounds * rounds))
        texts = [train_tree_model(X, r, dict(params, seed=ctx.seed + i), n_rounds, F.GRAPH_FEATURES).text
                 for i in range(ctx.ensemble)]
        return cls(TreeModel(average_models(texts)))

    def to_dict(self) -> dict[str, Any]:
        """The tree as LightGBM text (the predictor file stores it as its `graph` model)."""
        return {"model": self.tree.model_to_string()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TreeCorrection":
        return cls(TreeModel(d["model"]))


# ---- in-network corrections: one level down, per kernel ---------------------------------
def context_kind(spec: Any) -> str:
    """The kind an in-network correction keys a kernel by: its kind, with depthwise convs
    (`conv` and `conv_add` with groups == cin) apart from the dense ones as `dwconv`."""
    p = spec.params
    if spec.kind in ("conv", "conv_add") and p["groups"] > 1 and p["groups"] == p["cin"]:
        return "dwconv" if spec.kind == "conv" else "dwconv_add"
    return str(spec.kind)


@runtime_checkable
class KernelCorrection(Protocol):
    """A factor per kernel: its time inside a network over its isolated prediction."""
    type_name: ClassVar[str]

    def factors(self, specs: Any) -> np.ndarray:
        ...

    def to_dict(self) -> dict[str, Any]:
        ...

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KernelCorrection":
        ...


KERNEL_CORRECTIONS: dict[str, type[KernelCorrection]] = {}


def register_kernel_correction(cls: type[KernelCorrection]) -> type[KernelCorrection]:
    """Class decorator: add an in-network correction to `KERNEL_CORRECTIONS` under its `type_name`."""
    KERNEL_CORRECTIONS[cls.type_name] = cls
    return cls


@register_kernel_correction
class KindScaleCorrection:
    """A factor g_k per context kind (`context_kind`), relative to the common scale c:

        measured ms ~ c * sum_k g_k * (kind k's predicted kernel ms) + overhead,

    fitted on the log error of measured blocks and networks (robust loss), g_k in [0.2, 3] and
    shrunk toward 1 with penalty `lam` (chosen by 5-fold CV when not given), so a kind the
    training rows barely contain keeps 1. Only the g_k are applied: the common scale c (how a
    table's networks run against its kernels) is the graph correction's to fit."""
    type_name: ClassVar[str] = "kind_scale"
    LAMBDAS: ClassVar[tuple[float, ...]] = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
    BOUNDS: ClassVar[tuple[float, float]] = (0.2, 3.0)

    def __init__(self, scale: dict[str, float], lam: float, common: float = 1.0, report: dict[str, Any] | None = None):
        self.scale = {str(k): float(v) for k, v in scale.items()}
        self.lam, self.common = float(lam), float(common)
        self.report = dict(report or {})

    def factors(self, specs: Any) -> np.ndarray:
        return np.array([self.scale.get(context_kind(s), 1.0) for s in specs], dtype=float)

    @classmethod
    def _solve(cls, T: np.ndarray, y: np.ndarray, w: np.ndarray, overhead: float, lam: float, c: float) -> np.ndarray:
        # lazy: scipy.optimize takes ~0.3 s to import; only fitting needs it
        from scipy.optimize import least_squares
        sw = np.sqrt(w)
        pen = math.sqrt(lam * w.sum())

        def residuals(theta: np.ndarray) -> np.ndarray:
            r = np.log(np.maximum(c * T @ np.exp(theta) + overhead, 1e-9) / y) * sw
            return np.concatenate([r, pen * theta])

        lo, hi = math.log(cls.BOUNDS[0]), math.log(cls.BOUNDS[1])
        sol = least_squares(residuals, np.zeros(T.shape[1]), bounds=(lo, hi), loss="soft_l1", f_scale=0.1)
        return np.asarray(np.exp(sol.x))

    @classmethod
    def fit(cls, T: np.ndarray, kinds: list[str], y: np.ndarray, overhead: float = 0.0, lam: float | None = None,
            seed: int = 0, weights: np.ndarray | None = None) -> "KindScaleCorrection":
        """T [n, len(kinds)]: each training candidate's predicted kernel ms per kind (run overhead removed).

        The loss is robust (soft L1 on the log error, scale 0.1): a table's rows repeat within
        ±10% for a minority of them on a VM that switches speed levels, and one slow row must not
        move a kind's factor; the penalty is on log g_k (a factor of 1/2 costs what 2 does)."""
        T, y = np.asarray(T, float), np.asarray(y, float)
        w = np.ones(len(y)) if weights is None else np.asarray(weights, float)
        c = float(np.median(y / np.maximum(T.sum(axis=1) + overhead, 1e-9)))

        def err(g: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return np.asarray(np.abs(np.log(np.maximum(c * T[rows] @ g + overhead, 1e-9) / y[rows])))

        cv: dict[float, float] = {}
        if lam is None:
            masks = kfold_masks(len(y), min(5, len(y)), seed + 17)
            for la in cls.LAMBDAS:
                e = np.concatenate([err(cls._solve(T[tr], y[tr], w[tr], overhead, la, c), ~tr) for tr in masks])
                ww = np.concatenate([w[~tr] for tr in masks])
                cv[la] = float(np.average(e, weights=ww))
            lam = min(cv, key=lambda la: (cv[la], -la))
        g = cls._solve(T, y, w, overhead, lam, c)
        every = np.ones(len(y), bool)
        share = T.sum(axis=0) / max(T.sum(), 1e-12)
        errors = {"one_scale": float(np.average(err(np.ones(len(kinds)), every), weights=w)),
                  "kind_scale": float(np.average(err(g, every), weights=w))}
        if cv:
            masks = kfold_masks(len(y), min(5, len(y)), seed + 17)
            one = np.concatenate([err(np.ones(len(kinds)), ~tr) for tr in masks])
            errors["kind_scale_cv"] = cv[lam]
            errors["one_scale_cv"] = float(np.average(one, weights=np.concatenate([w[~tr] for tr in masks])))
        report = {"rows": int(len(y)), "common_scale": c, "lambda_cv": {f"{k:g}": v for k, v in cv.items()},
                  "share": {k: float(v) for k, v in zip(kinds, share)}, "mean_abs_log_err": errors}
        return cls(dict(zip(kinds, g.tolist())), lam, c, report)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "scale": self.scale, "lambda": self.lam, "common": self.common,
                "report": self.report}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KindScaleCorrection":
        return cls(d["scale"], d["lambda"], d.get("common", 1.0), d.get("report"))


def kernel_correction_from_dict(d: dict[str, Any] | None) -> KernelCorrection | None:
    """An in-network correction from a predictor file's header (None: the file has none)."""
    if not d:
        return None
    return KERNEL_CORRECTIONS[d.get("type", "kind_scale")].from_dict(d)


# the configurations fit_graph chooses from: name -> (type, options)
GRAPH_CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
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


def fit_candidate(name: str, X: np.ndarray, r: np.ndarray, S: np.ndarray, ctx: FitContext) -> GraphCorrection:
    """Fit the correction a `GRAPH_CANDIDATES` name (or a bare type name) stands for."""
    t, opt = GRAPH_CANDIDATES.get(name, (name, {}))
    return CORRECTIONS[t].fit(X, S, r, ctx, **opt)


class ChosenCorrection:
    """The graph correction a predictor uses: a fitted correction, the median training r
    (`offset`) it may be blended toward, `r = (1-blend)·offset + blend·model`, and the range
    of r seen in training it is clipped to (None = no clip)."""

    def __init__(self, type_name: str = "sum", model: GraphCorrection | None = None, offset: float = 0.0,
                 blend: float | None = None, clip: tuple[float, float] | None = None):
        self.type_name = type_name
        self.model = model  # None: nothing to apply (r = 0), e.g. a file whose correction lacks its data
        self.offset = float(offset)
        self.blend = blend
        self.clip = clip

    def predict(self, sums: np.ndarray, peak: np.ndarray) -> np.ndarray:
        if self.type_name == "scale":
            return np.full(len(sums), self.offset)
        if self.model is None or self.model.constant:
            return np.zeros(len(sums))
        X = F.graph_features(sums, peak) if getattr(self.model, "uses_features", True) else None
        c = self.model.predict(X, sums)
        if self.clip is not None:
            c = np.clip(c, self.clip[0], self.clip[1])
        if self.blend is not None:
            c = (1 - self.blend) * self.offset + self.blend * c
        return c

    @property
    def tree(self) -> TreeModel | None:
        return self.model.tree if isinstance(self.model, TreeCorrection) else None

    # ---- the predictor file's form: header["graph"] and, for trees, the `graph` model text ----
    def to_header(self) -> tuple[dict[str, Any], str | None]:
        header = {"type": self.type_name, "offset": self.offset,
                  "ridge": self.model.to_dict() if isinstance(self.model, RidgeCorrection) else None,
                  "group_scale": self.model.to_dict() if isinstance(self.model, GroupScaleCorrection) else None,
                  "blend": self.blend, "clip": None if self.clip is None else list(self.clip)}
        return header, (self.tree.model_to_string() if self.tree is not None else None)

    @classmethod
    def from_header(cls, g: dict[str, Any], tree_text: str | None) -> "ChosenCorrection":
        """From header["graph"] (absent in the oldest files: trees if there is a `graph` model)."""
        t = g.get("type", "lgbm" if tree_text is not None else "sum")
        offset = float(g.get("offset", 0.0))
        model: GraphCorrection | None = None
        if t == "lgbm" and tree_text is not None:
            model = TreeCorrection.from_dict({"model": tree_text})
        elif t == "ridge" and g.get("ridge") is not None:
            model = RidgeCorrection.from_dict(g["ridge"])
        elif t == "group_scale" and g.get("group_scale") is not None:
            model = GroupScaleCorrection.from_dict(g["group_scale"])
        elif t == "scale":
            model = ScaleCorrection(offset)
        clip = (float(g["clip"][0]), float(g["clip"][1])) if g.get("clip") is not None else None
        return cls(t, model, offset, g.get("blend"), clip)


__all__ = ["GraphCorrection", "CORRECTIONS", "register", "FitContext", "SumCorrection", "ScaleCorrection",
           "RidgeCorrection", "GroupScaleCorrection", "TreeCorrection", "GRAPH_CANDIDATES", "BLENDS",
           "fit_candidate", "ChosenCorrection", "share_columns", "context_kind", "KernelCorrection",
           "KERNEL_CORRECTIONS", "register_kernel_correction", "KindScaleCorrection", "kernel_correction_from_dict"]
