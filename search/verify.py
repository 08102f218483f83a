"""Hardware in the loop: measure the finalists on the device and correct the predictor.

Only finalists reach the device. A round picks the top-K unmeasured frontier candidates
near the constraint, exports each to ONNX and measures it (locally, or over SSH through the
profiling runner). A finalist whose measured latency breaks the budget is dropped; every
measured point re-fits the correction, which is applied to every candidate not yet measured,
and the candidates are re-ranked. Rounds repeat while an unmeasured candidate still looks
better than the best verified one and the measurement allowance lasts.
"""
from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from search.problem import Candidate, Correction, Evaluator, Formulation, pareto_front


class Device(Protocol):
    name: str
    n_measurements: int

    def measure(self, space, cand: Candidate) -> float: ...


# ----------------------------------------------------------------------------- devices
class OnnxDevice:
    """Exports a candidate to ONNX and measures it on a target, locally or over `host`.

    It uses the profiling package's runner when it offers a way to time one ONNX file
    (`profiling.runner.measure_onnx`), which is also the only way to reach `--host`. For a
    local target without that runner it times the model with onnxruntime under the target's
    settings (execution providers, threads, graph optimisation ALL), warm-up then the median
    of timed runs, which is what the profiler does.
    """

    def __init__(self, target, host: str | None = None, workdir: str | Path | None = None,
                 min_runs: int = 20, min_seconds: float = 0.3, warmup: int = 5):
        self.target = target
        self.host = host
        self.name = f"{target.name}" + (f" on {host}" if host else " (this machine)")
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="hwnas-finalists-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.min_runs, self.min_seconds, self.warmup = min_runs, min_seconds, warmup
        self.n_measurements = 0
        self.how = None

    def export(self, space, cand: Candidate) -> Path:
        safe = "".join(ch if ch.isalnum() else "_" for ch in cand.key)[:60]
        path = self.workdir / f"finalist_{self.n_measurements:02d}_{safe}.onnx"
        space.export_onnx(cand.arch, str(path))
        return path

    def measure(self, space, cand: Candidate) -> float:
        path = self.export(space, cand)
        ms = self.measure_onnx(path)
        self.n_measurements += 1
        return ms

    def measure_onnx(self, path: Path) -> float:
        runner = _profiling_runner()
        if runner is not None:
            self.how = "profiling runner"
            return float(runner(path, self.target, host=self.host))
        if self.host:
            raise RuntimeError(
                "measuring over --host needs the profiling runner (profiling.runner), which this "
                "checkout does not provide yet; run on the device or drop --host")
        self.how = "onnxruntime on this machine"
        return local_onnx_latency(path, self.target, self.min_runs, self.min_seconds, self.warmup)


def _profiling_runner() -> Callable | None:
    """The profiling package's 'time one ONNX file on a target' entry point, if it has one."""
    try:
        from profiling import runner  # type: ignore
    except Exception:
        return None
    for name in ("measure_onnx", "measure_model", "measure_onnx_file"):
        fn = getattr(runner, name, None)
        if callable(fn):
            return _adapt_runner(fn)
    return None


def _adapt_runner(fn: Callable) -> Callable:
    def call(path, target, host=None):
        try:
            res = fn(str(path), target, host=host)
        except TypeError:
            res = fn(str(path), target)
        for attr in ("median_ms", "median", "ms"):
            if hasattr(res, attr):
                return float(getattr(res, attr))
            if isinstance(res, dict) and attr in res:
                return float(res[attr])
        return float(res)
    return call


def local_onnx_latency(path: str | Path, target, min_runs: int = 20, min_seconds: float = 0.3,
                       warmup: int = 5) -> float:
    import onnx
    import onnxruntime as ort

    target.check_local_support()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = target.resolved_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    avail = ort.get_available_providers()
    providers = [p for p in target.providers if p in avail] or ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), so, providers=providers)
    model = onnx.load(str(path), load_external_data=False)
    feeds = {}
    init_names = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        shape = [d.dim_value if d.dim_value > 0 else target.batch for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 2000:
            break
    return float(statistics.median(times))


# ------------------------------------------------------------------ feature correction
def kernel_features(specs) -> dict[str, float]:
    """Kernel-level features of one candidate: count and MACs per kernel kind (and conv size)."""
    feats: dict[str, float] = {}
    for s in specs:
        p = s.params
        kind = s.kind
        if kind in ("conv", "conv_add"):
            kind = f"{kind}{p['kernel']}" + ("dw" if p.get("groups", 1) > 1 else "")
            macs = p["cin"] // max(p.get("groups", 1), 1) * p["cout"] * p["kernel"] ** 2 * \
                (p["h"] // p["stride"]) * (p["w"] // p["stride"])
        elif kind == "linear":
            macs = p["tokens"] * p["cin"] * p["cout"]
        else:
            macs = 1.0
            for k in ("c", "h", "w"):
                macs *= p.get(k, 1) or 1
        feats[f"n_{kind}"] = feats.get(f"n_{kind}", 0.0) + 1.0
        feats[f"mac_{kind}"] = feats.get(f"mac_{kind}", 0.0) + float(macs) / 1e6
    return feats


class FeatureCorrection(Correction):
    """Few-shot adaptation of the predictor to a device from measured points.

    Ridge regression of measured latency on the raw prediction and kernel-level features
    (count and MACs per kernel kind, from `space.kernel_specs`), in ms, with the ridge
    strength chosen by leave-one-out error. With fewer than `min_points` points it falls back
    to the multiplicative/log-log correction of `Correction`.
    """

    def __init__(self, space, min_points: int = 6):
        super().__init__()
        self.space = space
        self.min_points = min_points
        self.columns: list[str] = []
        self.coef = None
        self.mu = None
        self.sd = None
        self.alpha = None
        self._feat_cache: dict[str, dict[str, float]] = {}

    def _feats(self, cand: Candidate) -> dict[str, float]:
        f = self._feat_cache.get(cand.key)
        if f is None:
            f = kernel_features(self.space.kernel_specs(cand.arch))
            f["raw_pred"] = cand.raw_predicted_ms
            self._feat_cache[cand.key] = f
        return f

    def _matrix(self, cands) -> np.ndarray:
        return np.array([[self._feats(c).get(k, 0.0) for k in self.columns] for c in cands], dtype=float)

    def fit(self) -> None:
        super().fit()
        if len(self.points) < self.min_points:
            self.coef = None
            return
        cols = set()
        for c, _ in self.points:
            cols.update(self._feats(c))
        self.columns = sorted(cols)
        X = self._matrix([c for c, _ in self.points])
        y = np.array([m for _, m in self.points])
        self.mu = X.mean(0)
        self.sd = X.std(0)
        self.sd[self.sd == 0] = 1.0
        Z = (X - self.mu) / self.sd
        best = None
        for alpha in (0.01, 0.1, 1.0, 10.0, 100.0):
            err = self._loo(Z, y, alpha)
            if best is None or err < best[0]:
                best = (err, alpha)
        self.alpha = best[1]
        self.coef = self._ridge(Z, y, self.alpha)
        pred = np.column_stack([np.ones(len(Z)), Z]) @ self.coef
        self.spread = float(np.sqrt(np.mean((np.log(np.maximum(pred, 1e-6)) - np.log(y)) ** 2)))

    @staticmethod
    def _ridge(Z, y, alpha):
        A = np.column_stack([np.ones(len(Z)), Z])
        reg = alpha * np.eye(A.shape[1])
        reg[0, 0] = 0.0
        return np.linalg.solve(A.T @ A + reg, A.T @ y)

    def _loo(self, Z, y, alpha) -> float:
        errs = []
        for i in range(len(y)):
            m = np.ones(len(y), bool)
            m[i] = False
            coef = self._ridge(Z[m], y[m], alpha)
            errs.append((np.r_[1.0, Z[i]] @ coef - y[i]) ** 2)
        return float(np.mean(errs))

    def apply(self, cands: Sequence[Candidate]) -> np.ndarray:
        if self.coef is None:
            return super().apply(cands)
        Z = (self._matrix(cands) - self.mu) / self.sd
        pred = np.column_stack([np.ones(len(Z)), Z]) @ self.coef
        floor = 0.5 * min(m for _, m in self.points)
        return np.maximum(pred, floor)

    def describe(self) -> str:
        if self.coef is None:
            return super().describe()
        return (f"ridge on the raw prediction and {len(self.columns) - 1} kernel-level features, "
                f"fit on {len(self.points)} measured points (alpha {self.alpha:g}, "
                f"in-sample log residual {self.spread:.3f})")


# ------------------------------------------------------------------- finalist selection
def rank_key(formulation: Formulation) -> Callable[[Candidate], tuple]:
    """Order candidates by what the formulation wants (best first)."""
    if formulation.kind == "min_accuracy":
        return lambda c: (c.latency_ms, -c.accuracy)
    return lambda c: (-c.accuracy, c.latency_ms)


def feasible(c: Candidate, formulation: Formulation) -> bool:
    return c.dropped is None and formulation.feasible(c.accuracy, c.latency_ms)


def select_finalists(cands: Sequence[Candidate], formulation: Formulation, k: int) -> list[Candidate]:
    """The top-k unmeasured candidates near the constraint, best first.

    budget: frontier points predicted within the budget (using the upper interval only to
    break ties), highest accuracy first, then those just over it (which the device may
    rescue if the predictor was pessimistic); min_accuracy: the fastest points above the
    threshold; frontier: k points spread evenly along the frontier.
    """
    live = [c for c in cands if c.dropped is None]
    front = pareto_front(live, use_measured=True)
    unmeasured = [c for c in front if c.measured_ms is None]
    if formulation.kind == "frontier":
        if len(unmeasured) <= k:
            return unmeasured
        idx = np.unique(np.linspace(0, len(unmeasured) - 1, k).round().astype(int))
        return [unmeasured[i] for i in idx]
    if formulation.kind == "budget":
        b = formulation.latency_budget_ms
        inside = sorted([c for c in unmeasured if c.predicted_ms <= b], key=lambda c: -c.accuracy)
        near = sorted([c for c in unmeasured if b < c.predicted_ms <= b * (1 + formulation.search_margin)],
                      key=lambda c: c.predicted_ms)
        # a verified candidate already beats everything below its accuracy
        best = best_verified(cands, formulation)
        if best is not None:
            inside = [c for c in inside if c.accuracy > best.accuracy]
            near = [c for c in near if c.accuracy > best.accuracy]
        return (inside + near)[:k]
    thr = formulation.min_accuracy
    above = sorted([c for c in unmeasured if c.accuracy >= thr], key=lambda c: c.predicted_ms)
    best = best_verified(cands, formulation)
    if best is not None:
        above = [c for c in above if c.predicted_ms < best.measured_ms]
    return above[:k]


def best_verified(cands: Sequence[Candidate], formulation: Formulation) -> Candidate | None:
    ok = [c for c in cands if c.measured_ms is not None and feasible(c, formulation)]
    return min(ok, key=rank_key(formulation)) if ok else None


@dataclass
class VerifyRound:
    round: int
    measured: list[dict] = field(default_factory=list)
    correction: str = ""


def verify_finalists(space, evaluator: Evaluator, device: Device, formulation: Formulation, *,
                     k: int = 3, max_rounds: int = 2, max_measurements: int | None = None,
                     on_measure: Callable[[Candidate, int], None] | None = None) -> list[VerifyRound]:
    """Measure finalists on `device`, drop those over budget, re-fit the correction, re-rank."""
    rounds: list[VerifyRound] = []
    for r in range(max_rounds):
        if max_measurements is not None and device.n_measurements >= max_measurements:
            break
        room = k if max_measurements is None else min(k, max_measurements - device.n_measurements)
        finalists = select_finalists(evaluator.candidates, formulation, room)
        if not finalists:
            break
        vr = VerifyRound(r + 1)
        for c in finalists:
            ms = device.measure(space, c)
            evaluator.add_measurement(c, ms)
            if formulation.kind == "budget" and ms > formulation.latency_budget_ms:
                c.dropped = f"measured {ms:.3f} ms > budget {formulation.latency_budget_ms:g} ms"
            vr.measured.append({"arch": c.key, "predicted_ms": c.predicted_ms,
                                "raw_predicted_ms": c.raw_predicted_ms, "measured_ms": ms,
                                "dropped": c.dropped})
            if on_measure:
                on_measure(c, r + 1)
        evaluator.recorrect()
        vr.correction = evaluator.correction.describe()
        rounds.append(vr)
    return rounds


__all__ = ["Device", "FeatureCorrection", "OnnxDevice", "VerifyRound", "best_verified", "feasible",
           "kernel_features", "local_onnx_latency", "rank_key", "select_finalists", "verify_finalists"]
