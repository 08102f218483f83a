"""The latency predictor of one target: kernel models, a graph-level correction, intervals.

- Kernel models (`predictors.kernel_models`): one LightGBM regressor per kernel kind (log
  median ms from `features.spec_features`), a pooled one for kinds with few rows, and a
  bytes/FLOPs roofline fit for ops the vocabulary lacks (reported by name, never dropped).
- Graph correction (`predictors.corrections`): how a whole network's measured latency departs
  from its plain kernel sum, chosen by cross-validation among a registry of corrections
  (calibrated sum, ridge, per-group scales, LightGBM trees on graph features).
- Intervals: split-conformal on out-of-fold residuals of the networks (`predictors.numerics`),
  so that about 80% of unseen networks fall inside the 80% interval.
- Adapters (`predictors.adapt`): few-shot linear corrections for another device.
- The batch path's cache (`predictors.spec_cache`) and the file I/O (`predictors.persist`).

`Predictor.load(path).predict(model.onnx)` is the ONNX path; `predict_specs(candidates)`
the batch path for search spaces (lists of KernelSpec, no ONNX export).
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeAlias, cast

import numpy as np
import numpy.typing as npt
import pandas as pd

from profiling.kernels import KINDS, KernelSpec, KernelSpecError

from . import features as F
from .adapt import adapt as adapt_predictor
from .adapt import apply_adapters
from .corrections import (BLENDS, GRAPH_CANDIDATES, ChosenCorrection, FitContext, KernelCorrection, KindScaleCorrection,
                          ScaleCorrection, context_kind, fit_candidate)
from .errors import PredictorError
from .kernel_models import KernelModels, KindModel
from .measured import MeasuredNetworks, read_networks_file
from .numerics import conformal_interval, kfold_masks, metrics
from .persist import load_predictor, save_predictor, write_tree_cache
from .reliability import assess, extrapolation
from .spec_cache import SpecCache
from .tables import load_tables, network_specs, row_spec
from .trees import TreeModel

if TYPE_CHECKING:  # types only: the ONNX path's modules load lazily (onnx, networkx)
    import onnx

    from profiling.targets import Target

    from .detect import Detection
    from .reliability import Reliability

    #: an ONNX model: a file or a loaded ModelProto
    OnnxModel: TypeAlias = str | os.PathLike[str] | onnx.ModelProto
    #: a network the graph level takes: its kernel specs or an ONNX model
    Candidate: TypeAlias = Sequence[KernelSpec] | OnnxModel


# ---- results ----------------------------------------------------------------------------
@dataclass
class Prediction:
    model: str
    latency_ms: float
    low_ms: float
    high_ms: float
    kernel_sum_ms: float
    kernels: list[dict[str, Any]] = field(default_factory=list)
    unknown_ops: list[dict[str, Any]] = field(default_factory=list)
    folded_ops: int = 0
    batch: int = 1  # the predictor's target batch: one run processes this many images
    # what the prediction rests on (predictors.reliability): shares of the kernel sum
    fallback_share: float = 0.0
    extrapolated_share: float = 0.0
    unreliable: bool = False
    reliability_note: str = ""
    unknown_by_type: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        """Throughput at the target's batch: images per second of back-to-back runs."""
        return self.batch * 1000.0 / self.latency_ms if self.latency_ms > 0 else float("inf")

    def to_dict(self, per_kernel: bool = False) -> dict[str, Any]:
        d = {"model": self.model, "latency_ms": self.latency_ms, "low_ms": self.low_ms, "high_ms": self.high_ms,
             "kernel_sum_ms": self.kernel_sum_ms,
             "kernels": self.kernels if per_kernel else len(self.kernels),
             "unknown_ops": self.unknown_ops, "folded_ops": self.folded_ops,
             "batch": self.batch, "images_per_s": self.images_per_s,
             "unreliable": self.unreliable, "fallback_share": self.fallback_share,
             "extrapolated_share": self.extrapolated_share, "unknown_by_type": self.unknown_by_type,
             "reliability_note": self.reliability_note}
        return d


# The in-network correction is fitted only on tables of this batch size or less. On the corpus,
# family held out (docs/benchmarks.md, sessions 8-9, AVX2 AMD EPYC): at batch 1 it took the table
# predictor from 62.2% to 66.7% within ±10%; at batch 32, fitted on a 1,440-row table's 263 blocks
# and 81 networks, it took it from 56.4% down to 35.9% (elementwise at 2.17x, pooling at 0.45x:
# what a kernel costs inside a network at batch 32 is not what its blocks at batch 32 say).
IN_NETWORK_MAX_BATCH = 1


class Predictor:
    """Kernel-level and graph-level LightGBM latency models of one target."""

    def __init__(self, target: dict[str, Any] | None = None, fingerprint: dict[str, Any] | None = None, batch: int | None = None,
                 num_threads: int = 1, seed: int = 0, kernel_rounds: int = 400, graph_rounds: int = 300,
                 graph_cv: str | None = None, real_network_weight: float = 5.0, graph_ensemble: int = 5,
                 graph_candidates: Sequence[str] | None = None, in_network: bool = True):
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
        # the GRAPH_CANDIDATES names fit_graph may choose from (None: all of them); a family-held-out
        # selection over many families is affordable with the closed-form corrections only
        self.graph_candidates = None if graph_candidates is None else list(graph_candidates)
        unknown = sorted(set(self.graph_candidates or ()) - set(GRAPH_CANDIDATES))
        if unknown:
            raise PredictorError(f"graph_candidates: unknown {unknown}; choose among {sorted(GRAPH_CANDIDATES)}")
        # fit an in-network correction per kernel kind (`KindScaleCorrection`) on the table's blocks
        # and networks: each kernel's isolated prediction times its kind's factor inside a network
        self.fit_in_network = bool(in_network)
        self.kernels = KernelModels()
        self.in_network: KernelCorrection | None = None
        self.graph = ChosenCorrection()  # the graph-level correction chosen by `fit_graph`
        self.graph_q: tuple[float, float] = (-0.15, 0.15)
        self.adapters: list[dict[str, Any]] = []
        self.overhead_ms = 0.0  # per-run overhead inside every isolated kernel measurement
        self.training: dict[str, Any] = {}
        self.header: dict[str, Any] = {}
        self._reset_cache()


    # ---- kernel level ------------------------------------------------------------------
    def _kparams(self, n: int) -> dict[str, Any]:
        return {"objective": "regression", "learning_rate": 0.05, "num_leaves": 31,
                "min_data_in_leaf": max(2, min(10, n // 30)), "feature_fraction": 0.9, "lambda_l2": 0.1,
                "num_threads": self.num_threads, "seed": self.seed, "deterministic": True, "verbose": -1,
                "min_data_in_bin": 1}


    def fit_kernels(self, specs: Sequence[KernelSpec], ms: np.ndarray, spread: np.ndarray | None = None) -> "Predictor":
        """Per-kind kernel models; spread (p90/p10 per row, optional) enables the noise-weighted variant."""
        report = self.kernels.fit(specs, ms, spread, self.batch, self._kparams, self.kernel_rounds, self.seed)
        self.training.update(report)
        self._reset_cache()
        return self

    def fit_overhead(self, candidates: Sequence[Sequence[KernelSpec]], ms: np.ndarray) -> None:
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
        return self.kernels.fallback_ms(flops, nbytes)

    def kernel_ms(self, specs: Sequence[KernelSpec]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicted (ms, low, high) of kernel specs (blocks are not accepted here), inside a network:
        the in-network correction's factor applied when the predictor has one."""
        ms, lo, hi = self.kernels.predict(specs, self.batch)
        if self.in_network is not None and len(specs):
            f = self.in_network.factors(specs)
            ms, lo, hi = ms * f, lo * f, hi * f
        return ms, lo, hi

    @staticmethod
    def in_network_rows(blocks: list[list[KernelSpec]], block_ms: npt.ArrayLike, nets: list[dict[str, Any]]
                        ) -> tuple[list[list[KernelSpec]], np.ndarray, list[float]]:
        """(candidates, ms, weights) the in-network correction is fitted on: a table's measured blocks
        and networks (`network_rows`), the networks, fewer, weighing as much as the blocks in all."""
        wn = max(1.0, len(blocks) / max(len(nets), 1))
        return (list(blocks) + [n["specs"] for n in nets], np.concatenate([np.asarray(block_ms, float),
                [n["ms"] for n in nets]]), [1.0] * len(blocks) + [wn] * len(nets))

    def block_rows(self, df: pd.DataFrame) -> tuple[list[list[KernelSpec]], np.ndarray]:
        """The table's measured blocks: (one-spec candidates, ms)."""
        bspecs, bms = [], []
        for row in df[df["category"] == "block"].to_dict("records"):
            try:
                bspecs.append([row_spec(row)])
                bms.append(row["median_ms"])
            except (KernelSpecError, KeyError, ValueError):
                continue
        return bspecs, np.array(bms, float)

    def in_network_from_table(self, blocks: list[list[KernelSpec]], block_ms: npt.ArrayLike,
                              nets: list[dict[str, Any]], log: Callable[..., None] | None = None) -> None:
        """The in-network correction from a table's measured blocks and networks, at the batch sizes
        it is fitted at (`IN_NETWORK_MAX_BATCH`); at a larger batch the predictor has none and
        `training["in_network_skipped"]` says why."""
        log = log or (lambda *a: None)
        self.in_network = None
        if self.batch > IN_NETWORK_MAX_BATCH:
            self.training["in_network_skipped"] = f"batch {self.batch} > {IN_NETWORK_MAX_BATCH}"
            log(f"in-network correction: not fitted at batch {self.batch} (measured to help at batch 1 "
                "and to hurt at batch 32)")
            return
        self.in_network_fit(*self.in_network_rows(blocks, block_ms, nets))
        log(f"in-network correction per kernel kind: {len(blocks)} blocks + {len(nets)} networks")

    def in_network_fit(self, candidates: Sequence[Sequence[KernelSpec]], ms: np.ndarray,
                       weights: Sequence[float] | None = None) -> KernelCorrection:
        """Fit the in-network correction (`KindScaleCorrection`) on measured candidates (blocks,
        networks: kernel-spec lists) and their ms (`weights`: per candidate, default 1); sets
        `self.in_network` and returns it."""
        self.in_network = None
        kernels = [self._expand(c) for c in candidates]
        flat = [k for ks in kernels for k in ks]
        kms, _, _ = self.kernel_ms(flat)
        kms = np.maximum(kms - self.overhead_ms, 0.1 * kms)  # as `_materialise`: the run overhead once
        keys = [context_kind(k) for k in flat]
        kinds = sorted(set(keys))
        col = {k: i for i, k in enumerate(kinds)}
        T = np.zeros((len(candidates), len(kinds)))
        j = 0
        for i, ks in enumerate(kernels):
            for _ in ks:
                T[i, col[keys[j]]] += kms[j]
                j += 1
        corr = KindScaleCorrection.fit(T, kinds, np.asarray(ms, float), self.overhead_ms, seed=self.seed,
                                       weights=None if weights is None else np.asarray(weights, float))
        self.in_network = corr
        self.training["in_network"] = corr.to_dict()
        self._reset_cache()
        return corr

    # the kernel-model collection's parts, read by reports and tests
    @property
    def kernel_models(self) -> dict[str, KindModel]:
        return self.kernels.models

    @property
    def kernel_q(self) -> dict[str, tuple[float, float]]:
        return self.kernels.q

    @property
    def pooled(self) -> KindModel | None:
        return self.kernels.pooled

    @property
    def pooled_q(self) -> tuple[float, float]:
        return self.kernels.pooled_q

    @property
    def fallback(self) -> dict[str, Any]:
        return self.kernels.fallback

    @property
    def kernel_ranges(self) -> dict[str, list[float]]:
        """Per kind: the log FLOPs and log bytes range of the table (predictors.reliability)."""
        return self.kernels.ranges

    # ---- the spec cache of the batch path ---------------------------------------------
    def _reset_cache(self) -> None:
        self._cache = SpecCache(len(F.ADDITIVE))

    def _clear_pred_cache(self) -> None:
        """Forget cached candidate predictions (after the graph model or the adapters change)."""
        self._cache.clear_predictions()

    def _materialise(self, pending: list[KernelSpec], kernel_ms: list[float] | None = None) -> None:
        """Additive rows for new specs; blocks are expanded with profiling.builders.decompose."""
        if not pending:
            return
        expanded: list[list[KernelSpec]] = []
        for s in pending:
            if KINDS[s.kind].category == "block":
                try:
                    expanded.append(self._expand([s]))
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
        block = F.nchwc_block(self.fingerprint)
        kms = np.zeros(len(pending))
        j = 0
        for i, ks in enumerate(expanded):
            for k in ks:
                r, o = F.additive_row(k, float(ms[j]), self.batch, block)
                rows[i] += r
                peak[i] = max(peak[i], o)
                kms[i] += ms[j]
                j += 1
        self._cache.append(rows, peak, kms)

    # ---- graph level -------------------------------------------------------------------
    def _gparams(self, n: int) -> dict[str, Any]:
        return {"objective": "regression", "learning_rate": 0.03, "num_leaves": 7,
                "min_data_in_leaf": max(3, min(20, n // 15)), "feature_fraction": 0.8, "bagging_fraction": 0.9,
                "bagging_freq": 1, "lambda_l2": 1.0, "num_threads": self.num_threads, "seed": self.seed,
                "deterministic": True, "verbose": -1, "min_data_in_bin": 1}


    def _fit_context(self) -> FitContext:
        return FitContext(self.seed, self.overhead_ms, self._gparams, self.graph_rounds, self.graph_ensemble)

    def _graph_inputs(self, candidates: Sequence[Sequence[KernelSpec]]) -> tuple[np.ndarray, np.ndarray]:
        pending: list[KernelSpec] = []
        idx = [self._cache.index(c, pending) for c in candidates]
        self._materialise(pending)
        return self._cache.sums(idx)

    def graph_inputs(self, candidates: Sequence[Candidate]) -> tuple[np.ndarray, np.ndarray]:
        """(summed graph rows, peak activation) of candidates given as kernel-spec lists or as ONNX
        models (paths or ModelProtos; their unknown ops enter with the fallback estimate)."""
        onnx_at = [i for i, c in enumerate(candidates) if isinstance(c, (str, os.PathLike)) or hasattr(c, "graph")]
        # the casts: kernel-spec lists are the candidates that are not ONNX models
        if not onnx_at:
            return self._graph_inputs(cast("Sequence[Sequence[KernelSpec]]", candidates))
        sums, peak = np.zeros((len(candidates), len(F.ADDITIVE))), np.zeros(len(candidates))
        spec_at = sorted(set(range(len(candidates))) - set(onnx_at))
        if spec_at:
            sums[spec_at], peak[spec_at] = self._graph_inputs([cast("Sequence[KernelSpec]", candidates[i])
                                                               for i in spec_at])
        for i in onnx_at:
            *_, s, pk = self.onnx_inputs(cast("OnnxModel", candidates[i]))
            sums[i], peak[i] = s[0], pk[0]
        return sums, peak


    # the configurations fit_graph chooses from (predictors.corrections)
    GRAPH_CANDIDATES = GRAPH_CANDIDATES
    BLENDS = BLENDS

    def fit_graph(self, candidates: Sequence[Candidate], ms: np.ndarray, calibrate: bool = True,
                  families: Sequence[str] | None = None, weights: Sequence[float] | None = None) -> "Predictor":
        """Fit the graph-level correction on whole networks (kernel-spec lists or ONNX models) and their measured ms.

        `weights` (default 1 each) count a network that many times (rounded) in every fit and in the
        selection error: real architectures measured on the target (`fit(networks=...)`) weigh more
        than the table's random networks. Cross-validation folds keep a network's copies together.

        The target is r = log(measured / kernel sum). The candidates (`GRAPH_CANDIDATES`): `sum`
        (r = 0), `scale` (a constant: the calibrated kernel sum), `ridge` (all graph features,
        penalty by inner CV), `ridge_share@λ` (shares of time per kernel group only), `group_scale@λ`
        (a non-negative per-group scale of the kernel sum, `GroupScaleCorrection`), `lgbm` (7-leaf trees),
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
        self.graph = ChosenCorrection()
        if len(candidates) == 0:
            return self
        sums, peak = self.graph_inputs(candidates)
        r = np.log(ms) - np.log(self._base(sums))
        count = np.ones(len(r), np.int64) if weights is None else \
            np.maximum(1, np.rint(np.asarray(weights, float))).astype(np.int64)

        def copies(mask: np.ndarray) -> np.ndarray:  # training rows: each network as often as its weight
            return np.repeat(np.flatnonzero(mask), count[mask])

        if len(candidates) < 5:
            offset = float(np.median(np.repeat(r, count)))
            self.graph = ChosenCorrection("scale", ScaleCorrection(offset), offset)
            self.graph_q = conformal_interval(r - offset) if len(r) > 1 else (-0.3, 0.3)
            self.training["graph_note"] = f"only {len(candidates)} networks: calibrated kernel sum, no graph model"
            self.training["networks"] = int(len(r))
            return self
        X = F.graph_features(sums, peak)
        n = len(r)
        ctx = self._fit_context()
        fam = None if families is None else np.array([str(f) for f in families], dtype=object)
        fams = sorted({str(f) for f in fam}) if fam is not None else []
        # a family with fewer than 3 networks is too small to be a held-out fold on its own
        if self.graph_cv == "family" and fam is not None and sum(1 for f in fams if (fam == f).sum() >= 3) >= 2:
            splits = [[fam != f for f in fams]]
            cv_name, score_groups = "leave-one-family-out", fam
        else:
            reps = 2 if n < 400 else 1
            splits = [kfold_masks(n, min(5, n), self.seed + 1 + rep) for rep in range(reps)]
            cv_name, score_groups = "random 5-fold", None
        names = [c for c, (t, _) in GRAPH_CANDIDATES.items() if t != "lgbm" or n >= 40]
        if self.graph_cv == "random":
            names = [c for c in ("sum", "scale", "ridge", "lgbm") if c in names]
        allowed: list[str] | None = getattr(self, "graph_candidates", None)  # files saved before it lack it
        if allowed:
            names = [c for c in names if c in allowed] or ["scale"]
        if "scale" not in names:
            names.append("scale")  # the blends' anchor
        oofs = {c: np.zeros((len(splits), n)) for c in names}
        for rep, folds in enumerate(splits):
            for tr in folds:
                if tr.all() or not tr.any():
                    continue
                lo, hi = (float(r[tr].min()), float(r[tr].max())) if self.graph_cv != "random" else (-np.inf, np.inf)
                ti = copies(tr)
                for c in names:
                    m = fit_candidate(c, X[ti], r[ti], sums[ti], ctx)
                    oofs[c][rep, ~tr] = np.clip(m.predict(X[~tr], sums[~tr]), lo, hi)
        for c in [c for c in names if GRAPH_CANDIDATES[c][0] not in ("sum", "scale") and self.graph_cv != "random"]:
            for a in BLENDS:
                oofs[f"{c}+blend{a:g}"] = (1 - a) * oofs["scale"] + a * oofs[c]

        def score(o: np.ndarray) -> float:
            e = np.abs(r[None, :] - o).mean(axis=0)
            if score_groups is None:
                return float(np.average(e, weights=count))
            return float(np.mean([e[score_groups == f].mean() for f in fams]))

        err = {c: score(o) for c, o in oofs.items()}
        best = min(oofs, key=lambda c: (err[c], c))
        oof = oofs[best][0]
        # the interval counts each network as often as its weight, like the fit and the selection:
        # the real architectures a user measured set it more than the table's random networks
        self.graph_q = conformal_interval(np.repeat(r - oof, count))
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
        m = fit_candidate(model_name, X[ti], r[ti], sums[ti], ctx)
        self.graph = ChosenCorrection(
            m.type_name, m, float(np.median(r[ti])), float(blend) if blend else None,
            (float(r.min()), float(r.max())) if self.graph_cv != "random" else None)
        self.training["networks"] = int(n)
        return self


    # the chosen correction's parts, read by reports and tests
    @property
    def graph_type(self) -> str:
        return self.graph.type_name

    @property
    def graph_offset(self) -> float:
        return self.graph.offset

    @property
    def graph_blend(self) -> float | None:
        return self.graph.blend

    @property
    def graph_clip(self) -> tuple[float, float] | None:
        return self.graph.clip

    @property
    def graph_model(self) -> TreeModel | None:
        """The tree model of a tree correction (None for the others)."""
        return self.graph.tree

    def _base(self, sums: np.ndarray) -> np.ndarray:
        return np.maximum(sums[:, 0] + self.overhead_ms, 1e-6)


    def _finish(self, sums: np.ndarray, peak: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        base = self._base(sums)
        pred = base * np.exp(self.graph.predict(sums, peak))
        lo, hi = pred * math.exp(self.graph_q[0]), pred * math.exp(self.graph_q[1])
        if self.adapters:
            pred, lo, hi = apply_adapters(self.adapters, pred, sums)
        return pred, lo, hi

    # ---- public prediction API ---------------------------------------------------------
    def predict_specs(self, candidates: Sequence[Sequence[KernelSpec]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batch path: (median ms, low, high) arrays for candidates given as lists of KernelSpec.

        Results are cached per candidate, keyed by the values of its specs (`SpecCache`: equal
        specs in new objects hit the cache), duplicates in a batch are predicted once, and the
        graph-level model runs vectorised over all uncached candidates.
        """
        n = len(candidates)
        if n == 0:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        cache = self._cache
        pending: list[KernelSpec] = []
        keys = [tuple(cache.index(c, pending)) for c in candidates]
        rows = cache.lookup(keys)
        if None in rows:
            todo: dict[tuple[int, ...], int] = {}
            for k, r in zip(keys, rows):
                if r is None and k not in todo:
                    todo[k] = len(todo)
            self._materialise(pending)
            sums, peak = cache.sums(list(todo))
            med, lo, hi = self._finish(sums, peak)
            cache.store(todo, np.column_stack([med, lo, hi]))
            rows = cache.lookup(keys)
        out = cache.preds[np.fromiter(rows, np.int64, n)]
        return out[:, 0].copy(), out[:, 1].copy(), out[:, 2].copy()

    def kernel_sum_specs(self, candidates: Sequence[Sequence[KernelSpec]]) -> np.ndarray:
        """The plain sum of kernel predictions of each candidate (no graph model)."""
        sums, _ = self._graph_inputs(candidates)
        return self._base(sums)

    def onnx_inputs(self, model_or_path: OnnxModel) -> tuple[
            Detection, tuple[np.ndarray, np.ndarray, np.ndarray], list[dict[str, Any]], np.ndarray, np.ndarray]:
        """Detection, kernel predictions, unknown-op estimates and the summed graph inputs of an ONNX model."""
        # lazy: the ONNX path imports onnx and networkx, which the batch path of a search never needs
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
        pending: list[KernelSpec] = []
        idx = self._cache.index(specs, pending)
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
            sums, peak = self._cache.sums([idx], extra)
        else:  # only unknown ops: the fallback sum
            sums, peak = np.zeros((1, len(F.ADDITIVE))), np.zeros(1)
            for _, (row, out) in extra:
                sums[0] += row
                peak[0] = max(peak[0], out)
        return det, (ms, lo, hi), unknown, sums, peak

    def predict(self, model_or_path: OnnxModel, name: str | None = None) -> Prediction:
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

    def _reliability(self, det: Detection, ms: np.ndarray, unknown: list[dict[str, Any]],
                     kernel_sum_ms: float) -> Reliability:
        """Fallback and extrapolation shares of one ONNX prediction, and its interval's widening."""
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
    def fit(self, table: pd.DataFrame | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
            metadata: dict[str, Any] | None = None, holdout: float = 0.0, log: Callable[..., None] | None = None,
            networks: MeasuredNetworks | str | os.PathLike[str] | None = None) -> "Predictor":
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
        bspecs, bms = self.block_rows(df)
        self.in_network = None
        if bspecs:
            self.fit_overhead(bspecs, bms)
            self.training["blocks_kernel_sum"] = metrics(bms, self.kernel_sum_specs(bspecs))
            if self.fit_in_network:
                self.in_network_from_table(bspecs, bms, nets, log)
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

    def _real_networks(self, networks: MeasuredNetworks | str | os.PathLike[str] | None) -> MeasuredNetworks:
        if networks is None:
            return MeasuredNetworks([], np.zeros(0), [], [], [])
        real = networks if isinstance(networks, MeasuredNetworks) else read_networks_file(networks)
        other = sorted({t for t in real.targets if t and t != self.target_name})
        if other:
            raise PredictorError(f"the measured networks were measured on {', '.join(other)}, the table on "
                                 f"{self.target_name}: give networks measured on {self.target_name}, or adapt a "
                                 "predictor to the other device from them (`predictors.adapt`)")
        bad = [nm for nm, m in zip(real.names, real.latency_ms) if not (np.isfinite(m) and m > 0)]
        if bad:
            raise PredictorError(f"measured networks without a positive latency_ms: {', '.join(bad[:5])}")
        return real

    def _table(self, table: pd.DataFrame | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
               metadata: dict[str, Any] | None) -> tuple[pd.DataFrame, dict[str, Any]]:
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

    def network_rows(self, df: pd.DataFrame) -> list[dict[str, Any]]:
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

    def holdout_report(self, nets: list[dict[str, Any]], frac: float = 0.2) -> dict[str, Any]:
        """Fit the graph model on (1-frac) of the networks, report accuracy on the rest.

        Compares a FLOPs-only fit (log-log line), the plain kernel sum and the full model.
        The graph model and calibration are refitted afterwards by `fit`.
        """
        rng = np.random.default_rng(self.seed + 7)
        order = rng.permutation(len(nets))
        n_test = max(2, int(round(frac * len(nets))))
        test, train = order[:n_test], order[n_test:]
        return self.compare_on(nets, train, test)

    def compare_on(self, nets: list[dict[str, Any]], train: np.ndarray, test: np.ndarray) -> dict[str, Any]:
        y = np.array([n["ms"] for n in nets])
        flops = np.array([max(n["flops"], 1.0) for n in nets])
        if not (flops > 1).all():
            flops = np.array([sum(F.spec_stats(k, self.batch)[0] for k in self._expand(n["specs"])) for n in nets])
        a, b = np.polyfit(np.log(flops[train]), np.log(y[train]), 1)
        flops_pred = np.exp(b + a * np.log(flops[test]))
        saved = (self.graph, self.graph_q, dict(self.training))
        self.fit_graph([nets[i]["specs"] for i in train], y[train], families=[nets[i]["family"] for i in train])
        cands = [nets[i]["specs"] for i in test]
        ksum = self.kernel_sum_specs(cands)
        pred, lo, hi = self.predict_specs(cands)
        self.graph, self.graph_q, self.training = saved
        self._clear_pred_cache()
        return {"train_networks": int(len(train)), "test_networks": int(len(test)),
                "flops_only": metrics(y[test], flops_pred), "kernel_sum": metrics(y[test], ksum),
                "full": metrics(y[test], pred, lo, hi)}

    def _expand(self, specs: Sequence[KernelSpec]) -> list[KernelSpec]:
        from profiling.builders import decompose  # lazy: imports onnx, which prediction from specs does not need
        out: list[KernelSpec] = []
        for s in specs:
            out.extend(decompose(s) if KINDS[s.kind].category == "block" else [s])
        return out

    # ---- target checks -----------------------------------------------------------------
    @property
    def target_name(self) -> str:
        return str(self.target.get("name", "unknown"))

    def check_target(self, target: str | dict[str, Any] | Target) -> None:
        """Refuse to predict for another target than the one the predictor was built for."""
        name = target if isinstance(target, str) else (target.get("name") if isinstance(target, dict) else target.name)
        if name != self.target_name:
            raise PredictorError(f"this predictor was built for target {self.target_name!r}, not {name!r}; "
                                 f"train one on a table of {name} (`Predictor.fit`) or adapt this one to it from a few "
                                 "networks measured there (`predictors.adapt`)")

    # ---- persistence (predictors.persist) ---------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        save_predictor(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], num_threads: int = 1) -> "Predictor":
        return load_predictor(cls, path, num_threads)

    def write_tree_cache(self) -> Path | None:
        """Parse every tree model once and store the arrays: later loads of the same file skip parsing."""
        return write_tree_cache(self)

    def adapt(self, candidates: Sequence[Candidate], ms: npt.ArrayLike, device: str = "new-device",
              **kw: Any) -> "Predictor":
        return adapt_predictor(self, candidates, ms, device=device, **kw)




__all__ = ["Predictor", "Prediction", "PredictorError", "metrics", "load_tables", "row_spec", "network_specs"]
