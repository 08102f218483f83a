"""Hardware in the loop: measure the finalists on the device and correct the predictor.

Only finalists reach the device. A round picks the top-K unmeasured frontier candidates
near the constraint, exports each to ONNX and measures it through the profiling device runner
(locally, or over SSH with `host`). A finalist whose measured latency breaks the budget is dropped; every
measured point re-fits the correction, which is applied to every candidate not yet measured,
and the candidates are re-ranked. Rounds repeat while an unmeasured candidate still looks
better than the best verified one and the measurement allowance lasts.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TypeVar, cast

import numpy as np

from predictors.numerics import ridge_solve
from search.problem import (RATIO_MARGIN, Candidate, Correction, Evaluator, Formulation, SearchError,
                            pareto_front)
from profiling.errors import ProfilingError
from profiling.fleet import start_fleet
from profiling.transport import check_device
from profiling.interleave import MODEL_PASSES, MODEL_SLICE_S, measure_interleaved
from profiling.device_runner import median_ci

T = TypeVar("T")


class Device(Protocol):
    name: str
    n_measurements: int

    def measure(self, space, cand: Candidate) -> float: ...


# ----------------------------------------------------------------------------- devices
class RunnerDevice:
    """Measures finalists' ONNX exports on a target through `profiling`'s device runner.

    Locally (`host=None`) the runner is a subprocess of this interpreter (the profiler's local
    path); with `host` it is `ssh host python3` (the profiler's path to a `host`): the same
    protocol, stopping rule and session settings (providers, threads, precision) as the
    profiled tables, so measured and predicted latencies are comparable (`profiling.measure`).
    """

    def __init__(self, target, host: str | None = None, workdir: str | Path | None = None,
                 remote_python: str = "python3", ssh_config: str | None = None, stop: dict | None = None,
                 ray_address: str | None = None):
        self.target = target
        self.host = host
        # None: a runner of this process; otherwise a device actor of that Ray cluster (the
        # profiler's Ray fleet: a declared device slot of the target, or `host`)
        self.ray_address = ray_address
        self.name = f"{target.name}" + (f" on {host}" if host else " (this machine, profiling runner)") \
            + (" through Ray" if ray_address is not None else "")
        self._fleet_shutdown = None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="hwnas-finalists-"))
        self.remote_python, self.ssh_config = remote_python, ssh_config
        self.stop = stop
        self.n_measurements = 0
        self.conn = None
        self.last_stats: dict | None = None

    def connect(self) -> Any:
        """Start the runner and check it can measure the target (fails fast, before the search)."""
        # lazy: loads onnx and pyarrow (slow to import) only when this runs
        from profiling.measure import connect
        if self.conn is None:
            try:
                if self.ray_address is not None:
                    self.conn = self._actor()
                else:
                    self.conn = connect(self.target, self.host, self.remote_python, self.ssh_config)
            except ProfilingError as e:
                raise SearchError(f"cannot measure finalists on {self.name}: {e}") from None
        return self.conn

    def _actor(self):
        """The first device actor of the target in the Ray cluster (the others are let go)."""
        conns, self._fleet_shutdown = start_fleet(self.target, self.ray_address, [self.host] if self.host else [],
                                                  remote_python=self.remote_python, ssh_config=self.ssh_config)
        for c in conns[1:]:
            c.kill()
        try:
            check_device(self.target, conns[0].facts or {}, conns[0].label)
        except ProfilingError:
            self._fleet_shutdown()
            self._fleet_shutdown = None
            raise
        return conns[0]

    def export(self, space, cand: Candidate) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        safe = "".join(ch if ch.isalnum() else "_" for ch in cand.key)[:60]
        path = self.workdir / f"finalist_{self.n_measurements:02d}_{safe}.onnx"
        # lazy: loads onnx (slow to import) only when this runs
        from profiling.builders import opset_for_runtime
        facts = self.connect().facts or {}
        # the newest opset the device's onnxruntime runs, as the profiler builds its tables
        space.export_onnx(cand.arch, str(path), batch=self.target.batch,
                          opset=opset_for_runtime(facts.get("runtime_version", ""), preferred=17))
        return path

    def measure(self, space, cand: Candidate) -> float:
        ms = self.measure_onnx(self.export(space, cand))
        self.n_measurements += 1
        return ms

    def measure_onnx(self, model) -> float:
        """Median latency (ms) of one ONNX model (path, bytes or ModelProto) on the target."""
        # lazy: loads onnx and pyarrow (slow to import) only when this runs
        from profiling.measure import model_job
        conn = self.connect()
        job = model_job(model, self.target, conn.facts or {}, self.stop)
        ans = self._once_more_after_restart(lambda c: c.measure(job))
        if not ans.get("ok"):
            raise SearchError(f"{conn.label} could not measure the model: {ans.get('error')}")
        self.last_stats = ans["stats"]
        return float(ans["stats"]["median_ms"])

    def measure_together(self, space, cands: Sequence[Candidate], passes: int | None = None,
                         slice_s: float | None = None) -> list[dict]:
        """Measure `cands` interleaved (`profiling.interleave.measure_interleaved`): round-robin passes,
        a short slice of each per pass, so every candidate sees the machine's same speed levels.
        Returns each one's statistics (``stats["pass_ms"]``: its median in each pass, in pass order)."""
        # lazy: loads onnx and pyarrow (slow to import) only when this runs
        from profiling.measure import model_job
        conn = self.connect()
        jobs = []
        for c in cands:
            jobs.append(dict(model_job(self.export(space, c), self.target, conn.facts or {}), id=c.key))
            self.n_measurements += 1
        answers = self._once_more_after_restart(
            lambda c: measure_interleaved(c, jobs, passes=passes or MODEL_PASSES, slice_s=slice_s or MODEL_SLICE_S))
        bad = [a for a in answers if not a.get("ok")]
        if bad:
            raise SearchError(f"{conn.label} could not measure {bad[0].get('id')}: {bad[0].get('error')}")
        self.last_stats = answers[-1]["stats"]
        return [a["stats"] for a in answers]

    def _once_more_after_restart(self, measure: Callable[[Any], T]) -> T:
        """`measure(connection)`, run again from the start, once, when the runner died: a Ray
        fleet's actor is waited for until Ray restarts it; a local or SSH runner that exited
        (crashed, killed by the system, its link lost) is started again. A runner stopped after
        a timeout is not retried (it would wait as long again). The interleaved passes of one call
        all come from the same runner process."""
        conn = self.connect()
        try:
            return measure(conn)
        except ProfilingError as e:
            first = e
        restart = getattr(conn, "restart", None)
        if restart is not None:
            if not restart():
                raise SearchError(f"cannot measure finalists on {self.name}: {first}") from None
        elif getattr(conn, "exited", False):
            self.conn = None
            conn = self.connect()  # a SearchError when a fresh runner cannot start either
        else:
            raise SearchError(f"cannot measure finalists on {self.name}: {first}") from None
        try:
            return measure(conn)
        except ProfilingError as e:
            raise SearchError(f"cannot measure finalists on {self.name}: {e} (the runner had stopped once "
                              f"already: {first})") from None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self._fleet_shutdown is not None:
            self._fleet_shutdown()
            self._fleet_shutdown = None


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
        # set together by fit() once there are `min_points` points
        self.coef: np.ndarray | None = None
        self.mu: np.ndarray | None = None
        self.sd: np.ndarray | None = None
        self.alpha: float | None = None
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
        cols: set[str] = set()
        for c, _ in self.points:
            cols.update(self._feats(c))
        self.columns = sorted(cols)
        X = self._matrix([c for c, _ in self.points])
        y = np.array([m for _, m in self.points])
        self.mu = X.mean(0)
        self.sd = X.std(0)
        self.sd[self.sd == 0] = 1.0
        Z = (X - self.mu) / self.sd
        # the first of equal errors wins, as min() keeps it
        self.alpha = min((0.01, 0.1, 1.0, 10.0, 100.0), key=lambda alpha: self._loo(Z, y, alpha))
        self.coef = self._ridge(Z, y, self.alpha)
        pred = np.column_stack([np.ones(len(Z)), Z]) @ self.coef
        self.spread = float(np.sqrt(np.mean((np.log(np.maximum(pred, 1e-6)) - np.log(y)) ** 2)))

    @staticmethod
    def _ridge(Z, y, alpha):
        A = np.column_stack([np.ones(len(Z)), Z])
        return ridge_solve(A, y, np.r_[0.0, np.full(Z.shape[1], alpha)])  # the intercept is not shrunk

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
#: estimated scores this close to the best count as a tie (rank-score points, 0-100 scale)
TIE_MARGIN = 2.0


def rank_key(formulation: Formulation) -> Callable[[Candidate], tuple]:
    """Order candidates by what the formulation wants (best first)."""
    if formulation.kind == "min_accuracy":
        return lambda c: (c.latency_ms, -c.accuracy)
    return lambda c: (-c.accuracy, c.latency_ms)


def feasible(c: Candidate, formulation: Formulation) -> bool:
    return c.dropped is None and formulation.feasible(c.accuracy, c.latency_ms, c.params, c.memory_mb)


def select_finalists(cands: Sequence[Candidate], formulation: Formulation, k: int, space=None,
                     tie_margin: float = TIE_MARGIN, explore: bool = False) -> list[Candidate]:
    """The top-k unmeasured candidates near the constraint, best first.

    budget: frontier points predicted within the budget less its decision margin
    (`Formulation.clear_budget_ms`), highest accuracy first, then those predicted inside the
    margin, then those just over the budget (which the device may rescue if the predictor was
    pessimistic); when none is left: if nothing is verified under
    the budget yet, the fastest predicted frontier points, else (with `space`) the candidates
    the tie rule of `best_verified` could still pick (`tie_finalists`), then, with `explore`
    (a measurement allowance to spend), the frontier points estimated better than the best
    verified one however far over the budget they are predicted, lowest prediction first;
    min_accuracy: the fastest points above the threshold; frontier: k points spread evenly
    along the frontier.
    """
    live = [c for c in cands if c.dropped is None]
    front = pareto_front(live, use_measured=True)
    unmeasured = [c for c in front if c.measured_ms is None]
    if formulation.kind == "frontier":
        if len(unmeasured) <= k:
            return unmeasured
        idx = np.unique(np.linspace(0, len(unmeasured) - 1, k).round().astype(int))
        return [unmeasured[i] for i in idx]
    b, clear_b = formulation.latency_budget_ms, formulation.clear_budget_ms
    if b is not None and clear_b is not None:  # kind "budget"
        # a candidate predicted inside the margin is measured only when no clear one is left: its
        # verdict would be a close call that the machine's run-to-run spread can tip either way
        inside = sorted([c for c in unmeasured if c.predicted_ms <= clear_b], key=lambda c: -c.accuracy)
        margin = sorted([c for c in unmeasured if clear_b < c.predicted_ms <= b], key=lambda c: -c.accuracy)
        near = sorted([c for c in unmeasured if b < c.predicted_ms <= b * (1 + formulation.search_margin)],
                      key=lambda c: c.predicted_ms)
        # a verified candidate already beats everything below its accuracy
        best = best_verified(cands, formulation)
        if best is not None:
            inside, margin, near = ([c for c in group if c.accuracy > best.accuracy] for group in (inside, margin, near))
        picks = (inside + margin + near)[:k]
        if not picks and best is None:
            # nothing verified under the budget yet and nothing predicted near it: the fastest
            # frontier points, so a run does not end without a cell because the prediction is off
            picks = sorted(unmeasured, key=lambda c: c.predicted_ms)[:k]
        if not picks and space is not None:
            picks = tie_finalists(cands, formulation, space, k, tie_margin)
        if not picks and explore and best is not None:
            beyond = [c for c in unmeasured if c.accuracy > best.accuracy]
            picks = sorted(beyond, key=lambda c: c.predicted_ms)[:k]
        return picks
    # frontier and budget returned above: the kind is min_accuracy, so the threshold is set
    thr = cast(float, formulation.min_accuracy)
    above = sorted([c for c in unmeasured if c.accuracy >= thr], key=lambda c: c.predicted_ms)
    best = best_verified(cands, formulation)
    if best is not None and best.measured_ms is not None:
        above = [c for c in above if c.predicted_ms < best.measured_ms]
    return above[:k]


def capacity(space, cand: Candidate) -> float:
    """Multiply-accumulates of the candidate's kernels (millions): a capacity measure."""
    return sum(v for k, v in kernel_features(space.kernel_specs(cand.arch)).items() if k.startswith("mac_"))


def verified_pool(cands: Sequence[Candidate], formulation: Formulation) -> list[Candidate]:
    """The measured feasible candidates the choice is made from. Under a budget with a decision
    margin, those measured clear of it (`Formulation.clear_budget_ms`) when there are any: a
    candidate inside the margin is not chosen over one clear of it, since another run on the same
    machine may measure it over the budget."""
    ok = [c for c in cands if c.measured_ms is not None and feasible(c, formulation)]
    clear_b = formulation.clear_budget_ms
    if clear_b is not None and formulation.decision_margin > 0:  # kind "budget"
        clear = [c for c in ok if c.measured_ms is not None and c.measured_ms <= clear_b]
        return clear or ok
    return ok


def best_verified(cands: Sequence[Candidate], formulation: Formulation, space=None,
                  tie_margin: float = TIE_MARGIN) -> Candidate | None:
    """The best measured feasible candidate (of `verified_pool`: clear of the decision margin
    first). Under a budget, candidates whose estimated score is within `tie_margin` of the best
    are a tie, broken by capacity (MACs; `space` needed), which tracks accuracy within a space
    when the estimator cannot tell them apart."""
    ok = verified_pool(cands, formulation)
    if not ok:
        return None
    best = min(ok, key=rank_key(formulation))
    if space is None or formulation.kind != "budget":
        return best
    ties = [c for c in ok if c.accuracy >= best.accuracy - tie_margin]
    return max(ties, key=lambda c: (capacity(space, c), c.accuracy))


def tie_finalists(cands: Sequence[Candidate], formulation: Formulation, space, k: int,
                  tie_margin: float = TIE_MARGIN) -> list[Candidate]:
    """Under a budget, the unmeasured candidates that `best_verified`'s tie rule would pick over
    the current choice if they were verified: predicted within the budget less its decision
    margin (`Formulation.clear_budget_ms`), estimated within
    `tie_margin` of the best verified score, and of more capacity (MACs) than the current
    choice; largest first. Measuring them spends leftover measurements on the tie-break instead
    of leaving it to the few finalists that happened to be measured."""
    clear_b = formulation.clear_budget_ms
    if clear_b is None:  # not a budget
        return []
    ok = verified_pool(cands, formulation)
    best = best_verified(cands, formulation, space, tie_margin)
    if best is None:  # nothing verified: `ok` is empty
        return []
    top = max(c.accuracy for c in ok)
    floor = capacity(space, best)
    pool = [(capacity(space, c), c) for c in cands
            if c.measured_ms is None and c.dropped is None and c.predicted_ms <= clear_b
            and c.accuracy >= top - tie_margin]
    pool = [(m, c) for m, c in pool if m > floor]
    pool.sort(key=lambda t: (-t[0], -t[1].accuracy))
    return [c for _, c in pool[:k]]


@dataclass
class VerifyRound:
    round: int
    measured: list[dict] = field(default_factory=list)
    correction: str = ""


# ------------------------------------------------------------ decisions robust to noise
#: relative measurement-to-measurement noise assumed at least (a quiet core still moves a few %)
NOISE_FLOOR = 0.03
#: measurements of one finalist at most, the first included, before a close call is left undecided
REMEASURE_CAP = 5


@dataclass
class Settled:
    """How a finalist's verdict against the budget was reached."""
    key: str
    measurements: list[float]
    median_ms: float
    uncertainty_ms: float
    clear: bool            # False: still within its uncertainty of the budget at the cap

    def describe(self, budget: float) -> str:
        side = "under" if self.median_ms <= budget else "over"
        how = (f"clearly {side} the budget" if self.clear else
               f"undecided at the cap of {len(self.measurements)} measurements, {side} the budget by its median")
        return (f"{self.key}: {len(self.measurements)} measurements "
                f"({', '.join(f'{m:.3f}' for m in self.measurements)} ms), median {self.median_ms:.3f} "
                f"± {self.uncertainty_ms:.3f} ms vs budget {budget:g} ms: {how}")


def measurement_uncertainty(values: Sequence[float], ci_rel: float | None) -> float:
    """The uncertainty (ms) of a finalist's latency from its repeated medians: the largest of the
    runner's own 95% CI of the last median, half the range of the repeats (the run-to-run noise a
    shared or virtual machine adds, which a single run's CI cannot see) and `NOISE_FLOOR`."""
    med = float(np.median(values))
    u = med * max(NOISE_FLOOR, float(ci_rel or 0.0))
    if len(values) >= 2:
        u = max(u, (max(values) - min(values)) / 2)
    return u


def remeasure_until_clear(keys: Sequence[str], measure: Callable[[list[str]], None],
                          undecided: Callable[[str], bool], first: Sequence[str] | None = None) -> None:
    """The re-measure-until-clear-or-cap loop of both kinds of verdict: `measure` the keys in
    `first` (default: those `undecided` now) together, then again those of `keys` still
    `undecided` (which is False once a key's cap is reached), until none is."""
    todo = list(first) if first is not None else [k for k in keys if undecided(k)]
    while todo:
        measure(todo)
        todo = [k for k in keys if undecided(k)]


def settle_near_budget(space, evaluator: Evaluator, device: Device, formulation: Formulation,
                       finalists: Sequence[Candidate], vr: VerifyRound | None = None, cap: int = REMEASURE_CAP,
                       on_settle: Callable[[Candidate, "Settled"], None] | None = None) -> list[Settled]:
    """Re-measure, interleaved, the finalists whose measurement lies within its own uncertainty
    of the latency budget, until each verdict is clear or `cap` measurements are reached.

    One pass measures each undecided finalist once, in turn (round-robin), so a burst of load
    on the machine falls on all of them rather than on one. A finalist's latency is then the
    median of its measurements; it is dropped or kept again by that median. Devices whose
    measurement has no spread (a benchmark table's lookups) are left as they are."""
    budget = formulation.latency_budget_ms
    if budget is None or not hasattr(device, "last_stats"):  # None: not a budget
        return []
    values = {c.key: [float(c.measured_ms)] for c in finalists if c.measured_ms is not None}
    rows = {row["arch"]: row for row in (vr.measured if vr is not None else [])}
    ci = {k: float(rows.get(k, {}).get("ci_rel") or 0.0) for k in values}
    by_key = {c.key: c for c in finalists}
    touched: set[str] = set()

    def undecided(k: str) -> bool:
        v = values[k]
        return abs(float(np.median(v)) - budget) <= measurement_uncertainty(v, ci[k]) and len(v) < cap

    def measure(todo: list[str]) -> None:
        for k in todo:  # one each, in turn
            values[k].append(float(device.measure(space, by_key[k])))
            ci[k] = max(ci[k], float((device.last_stats or {}).get("ci_rel", 0.0)))
            touched.add(k)

    remeasure_until_clear(list(values), measure, undecided)
    out = []
    for k in touched:
        c, v = by_key[k], values[k]
        med = float(np.median(v))
        _replace_measurement(evaluator, c, med)
        c.dropped = f"measured {med:.3f} ms > budget {budget:g} ms" if med > budget else None
        u = measurement_uncertainty(v, ci[k])
        st = Settled(k, v, med, u, clear=abs(med - budget) > u)
        out.append(st)
        if k in rows:
            rows[k].update(measured_ms=med, dropped=c.dropped, measurements=v, decision=st.describe(budget),
                           clear=st.clear)
        if on_settle:
            on_settle(c, st)
    return out


# ------------------------------------------------- verdicts by ratio to a baseline measured alongside
@dataclass
class RatioBudget:
    """A budget relative to a baseline (a search with `baseline` B and `speedup` S), decided by ratios.

    A machine that switches between speed levels for seconds to minutes (a VM, a device under
    DVFS) moves an absolute measurement by far more than its own confidence interval, so a
    verdict "measured ms <= budget ms" cannot repeat. The ratio of two networks measured in the
    same round-robin passes does: each pass times the baseline and the finalists one after
    another, within about a second, in whatever speed level holds. A finalist is kept iff the
    median of its per-pass latency ratios to the baseline is at most 1/S and clear of it (`kept`);
    its latency in ms is that ratio times the baseline's median over every pass it was measured
    in, and the budget in ms is that median / S, so "measured ms <= budget" and "ratio <= 1/S"
    are the same comparison.

    The choice is guarded by a decision margin (`margin`, a fraction of 1/S; 0: none): a
    network's ratio moves from run to run by more than one run's interval, so finalists are picked
    among candidates predicted at most (1 - margin)/S, and a kept finalist measured inside the
    margin is not chosen over one clear of it (`Formulation.decision_margin`). The margin is a
    setting measured across runs (`RATIO_MARGIN`; scripts/bench_demo_repro.py,
    scripts/bench_ratio_spread.py), not this run's noise: a line that moved with the spread one run
    happens to observe would move the choice with it. That spread (`observed_spread`) is reported
    beside the margin, with a note when it is wider. The verdict itself stays at 1/S: moving it to
    (1 - margin)/S would only move the close calls there."""
    reference: Candidate
    speedup: float
    margin: float = RATIO_MARGIN
    reference_passes: list[float] = field(default_factory=list)
    ratios: dict[str, list[float]] = field(default_factory=dict)
    batches: dict[str, int] = field(default_factory=dict)
    batch_ratios: dict[str, list[float]] = field(default_factory=dict)   # each batch's median ratio
    rows: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 1.0:
            raise SearchError(f"the ratio margin is a fraction of 1/S in [0, 1), got {self.margin}")

    @property
    def observed_spread(self) -> float | None:
        """Twice the root-mean-square relative deviation of one batch's median ratio from its
        network's median over all its batches, pooled over the networks measured in two batches
        or more (about a 95% band of one batch's ratio); None before any network has two."""
        devs = [b / float(np.median(v)) - 1.0 for v in self.batch_ratios.values() if len(v) >= 2 for b in v]
        return 2.0 * float(np.sqrt(np.mean(np.square(devs)))) if devs else None

    @property
    def clear_ratio(self) -> float:
        """(1 - margin)/S: a ratio at most this is clear of 1/S by the margin."""
        return self.max_ratio * (1.0 - self.margin)

    def clear_of_margin(self, key: str) -> bool:
        return self.ratio(key) <= self.clear_ratio

    def margin_summary(self) -> dict:
        """The margin as reported (best.json, demo.json): its value, the ratio line it draws, the
        spread of ratios this run observed between batches (and whether it was wider), and which
        measured finalists are clear of the margin."""
        spread = self.observed_spread
        return {"margin": self.margin, "max_ratio": self.max_ratio, "clear_ratio": self.clear_ratio,
                "observed_spread": spread, "spread_wider_than_margin": spread is not None and spread > self.margin,
                "clear_of_margin": {k: self.clear_of_margin(k) for k in self.ratios}}

    def describe_margin(self) -> str:
        if self.margin == 0:
            return "decision margin off (`ratio_margin` 0): finalists picked and chosen up to 1/S"
        text = (f"decision margin {self.margin:g} of 1/{self.speedup:g}: finalists are picked among candidates "
                f"predicted at most {self.clear_ratio:.3f} of the baseline's latency, and one kept inside the margin is "
                f"not chosen over one clear of it")
        spread = self.observed_spread
        if spread is not None:
            text += f"; the ratios of networks measured in several batches spread ±{spread:.3f} in this run"
            if spread > self.margin:
                text += (f", wider than the margin: a close call may be decided otherwise in another run (a "
                         f"`ratio_margin` of {spread:.2f} would cover it)")
        return text

    @property
    def max_ratio(self) -> float:
        return 1.0 / self.speedup

    @property
    def reference_ms(self) -> float:
        return float(np.median(self.reference_passes))

    @property
    def budget_ms(self) -> float:
        return self.reference_ms / self.speedup

    def ratio(self, key: str) -> float:
        return float(np.median(self.ratios[key]))

    def interval(self, key: str) -> tuple[float, float]:
        """The distribution-free 95% interval of the median ratio (order statistics of the passes)."""
        lo, hi = median_ci(sorted(self.ratios[key]))
        return float(lo), float(hi)

    def uncertainty(self, key: str) -> float:
        """Half-width of the ratio's interval, at least `NOISE_FLOOR` of the ratio."""
        r = self.ratio(key)
        lo, hi = self.interval(key)
        return max(NOISE_FLOOR * r, r - lo, hi - r)

    def clear(self, key: str) -> bool:
        return abs(self.ratio(key) - self.max_ratio) > self.uncertainty(key)

    def add(self, reference_passes: Sequence[float], passes: dict[str, Sequence[float]]) -> None:
        """One interleaved batch: the baseline's pass medians and each finalist's, pass by pass."""
        ref = [float(x) for x in reference_passes]
        self.reference_passes.extend(ref)
        for key, ms in passes.items():
            batch = [float(m) / r for m, r in zip(ms, ref)]
            self.ratios.setdefault(key, []).extend(batch)
            self.batches[key] = self.batches.get(key, 0) + 1
            self.batch_ratios.setdefault(key, []).append(float(np.median(batch)))

    def speedup_of(self, key: str) -> dict:
        """The measured speed-up of a finalist over the baseline (1 / its median ratio), its 95%
        interval and the number of passes behind it."""
        lo, hi = self.interval(key)
        return {"speedup": 1.0 / self.ratio(key), "speedup_low": 1.0 / hi, "speedup_high": 1.0 / lo,
                "passes": len(self.ratios[key]), "batches": self.batches[key]}

    def kept(self, key: str) -> bool:
        """Kept iff the ratio is at most 1/S and clear of it. A finalist still within its own
        uncertainty of 1/S at the cap is dropped: it is not shown to meet the budget, and keeping
        it by the side its median fell on made the choice a coin toss between two runs (a ratio
        of 0.504 in one `make demo` and 0.498 in the next, each over 40 passes, at 1/2)."""
        return self.verdict(key) is None

    def verdict(self, key: str) -> str | None:
        """None when kept (`kept`), else why the finalist is dropped."""
        r = self.ratio(key)
        ms = r * self.reference_ms
        if r > self.max_ratio:
            return (f"latency ratio to the baseline {r:.3f} > 1/{self.speedup:g} (measured {ms:.3f} ms > budget "
                    f"{self.budget_ms:.3f} ms)")
        if not self.clear(key):
            return (f"latency ratio to the baseline {r:.3f} ± {self.uncertainty(key):.3f} is within its uncertainty "
                    f"of 1/{self.speedup:g} after {self.batches[key]} interleaved batches: not shown to meet the "
                    f"budget (measured {ms:.3f} ms vs budget {self.budget_ms:.3f} ms)")
        return None

    def describe(self, key: str) -> str:
        r, u = self.ratio(key), self.uncertainty(key)
        side = "within" if r <= self.max_ratio else "over"
        how = f"clearly {side} the budget" if self.clear(key) else \
            (f"undecided at the cap of {self.batches[key]} interleaved batches, {side} the budget by its median"
             + (": dropped, not shown to meet the budget" if r <= self.max_ratio else ""))
        if self.margin > 0 and self.verdict(key) is None and not self.clear_of_margin(key):
            how += (f", but inside the decision margin (ratio > {self.clear_ratio:.3f}): not chosen over a finalist "
                    f"clear of it")
        sp = self.speedup_of(key)
        return (f"{key}: latency ratio to the baseline {r:.3f} ± {u:.3f} over {sp['passes']} passes "
                f"({sp['batches']} interleaved batch(es) with the baseline; speed-up {sp['speedup']:.2f}x, 95% "
                f"interval {sp['speedup_low']:.2f}-{sp['speedup_high']:.2f}x) vs 1/{self.speedup:g} = "
                f"{self.max_ratio:.3f}: {how}")

    def formulation(self, f: Formulation) -> Formulation:
        """`f` with the decision margin, and the budget in ms re-anchored on the baseline's median
        over every pass once there are passes."""
        if not self.reference_passes:
            return replace(f, decision_margin=self.margin)
        margin = (f"; finalists picked, and the choice preferred, at a ratio of at most {self.clear_ratio:.3f} (a decision margin "
                  f"of {self.margin:.3f})" if self.margin > 0 else "")
        return replace(f, latency_budget_ms=self.budget_ms, decision_margin=self.margin, origin=(
            f"the baseline's median {self.reference_ms:.3f} ms over {len(self.reference_passes)} interleaved passes "
            f"/ {self.speedup:g}; each finalist kept iff its latency ratio to the baseline, measured in the same "
            f"passes, is <= 1/{self.speedup:g} and clear of it by its uncertainty{margin}"))


def measure_relative(space, evaluator: Evaluator, device, ratio: RatioBudget, cands: Sequence[Candidate],
                     vr: VerifyRound | None = None, cap: int = REMEASURE_CAP,
                     on_settle: Callable[[Candidate, str], None] | None = None) -> None:
    """Measure `cands` interleaved with the baseline (`device.measure_together`) and decide each by
    its latency ratio (`RatioBudget`); a finalist whose ratio lies within its own uncertainty of
    1/S is measured again, with the baseline and the round's other finalists (the same batch as the
    first, only its own ratios added), up to `cap` batches.
    Every finalist measured so far then gets its ratio times the baseline's median as its
    latency (the correction's points move with it) and is kept or dropped by its ratio."""
    cands = [c for c in cands if c.key != ratio.reference.key]
    new_keys = {c.key for c in cands}
    mine = {c.key: c for c in cands}

    logged: set[str] = set()  # a row in the round's log from the first batch on

    def measure(todo: list[str]) -> None:
        # every batch holds the round's finalists, as the first did, so a close call's passes see
        # the same neighbours: measured alone with the baseline, two of the demo's three finalists
        # read 10% higher (session 9, scripts/bench_ratio_spread.py), and the demo's finalists
        # re-measured in smaller batches read 10-17% higher than those decided in one. Only the
        # undecided ones' ratios are added.
        stats = device.measure_together(space, [ratio.reference] + list(mine.values()))
        ratio.add(stats[0]["pass_ms"], {k: s["pass_ms"] for k, s in zip(mine, stats[1:]) if k in todo})
        for k, s in zip(mine, stats[1:]):
            if vr is not None and k in todo and k not in logged:
                logged.add(k)
                c = mine[k]
                row = {"arch": c.key, "predicted_ms": c.predicted_ms, "raw_predicted_ms": c.raw_predicted_ms,
                       "measured_ms": None, "dropped": None, "ci_rel": s.get("ci_rel")}
                vr.measured.append(row)
                ratio.rows[c.key] = row

    remeasure_until_clear(list(mine), measure, lambda k: not ratio.clear(k) and ratio.batches[k] < cap,
                          first=list(mine))
    by_key = {c.key: c for c in evaluator.candidates}
    by_key.update({c.key: c for c in cands})
    in_points = {id(p) for p, _ in evaluator.correction.points}
    for key in ratio.ratios:
        c = by_key[key]
        ms = ratio.ratio(key) * ratio.reference_ms
        if id(c) in in_points:
            c.measured_ms = ms
        else:
            evaluator.add_measurement(c, ms)
        c.dropped = ratio.verdict(key)
        row = ratio.rows.get(key)
        if row is not None:
            row.update(measured_ms=ms, dropped=c.dropped, ratio=ratio.ratio(key), ratio_interval=list(ratio.interval(key)),
                       decision=ratio.describe(key), clear=ratio.clear(key),
                       clear_of_margin=ratio.clear_of_margin(key), **ratio.speedup_of(key))
        if on_settle is not None and key in new_keys:
            on_settle(c, ratio.describe(key))
    ref = ratio.reference
    ref.measured_ms = ratio.reference_ms
    evaluator.correction.points = [(p, p.measured_ms if p.measured_ms is not None else m)
                                   for p, m in evaluator.correction.points]
    evaluator.correction.fit()


def _replace_measurement(evaluator: Evaluator, c: Candidate, ms: float) -> None:
    """The candidate's latency is now `ms` (the median of its repeats): one point in the correction."""
    corr = evaluator.correction
    corr.points = [(p, ms if p is c else m) for p, m in corr.points]
    if corr.points:
        corr.fit()
    c.measured_ms = float(ms)


def verify_finalists(space, evaluator: Evaluator, device: Device, formulation: Formulation, *,
                     k: int = 3, max_rounds: int = 2, max_measurements: int | None = None,
                     on_measure: Callable[[Candidate, int], None] | None = None,
                     measure_ties: bool = True, remeasure_cap: int = REMEASURE_CAP,
                     on_settle: Callable[[Candidate, Settled], None] | None = None,
                     ratio: RatioBudget | None = None,
                     on_ratio: Callable[[Candidate, str], None] | None = None) -> list[VerifyRound]:
    """Measure finalists on `device`, drop those over budget, re-fit the correction, re-rank.
    With `measure_ties` (budget only), rounds left once no unmeasured candidate looks better
    than the best verified one measure the candidates the tie rule could pick
    (`tie_finalists`). With `max_measurements` (a lookup allowance, as in benchmark mode), the
    rounds left after that measure the frontier points estimated better than the best verified
    one that the correction predicts over the budget, lowest prediction first, until the
    allowance is spent (`select_finalists(explore=True)`). Under a budget, a finalist measured
    within its own uncertainty of the budget is re-measured, interleaved with the others of its
    round, up to `remeasure_cap` measurements (`settle_near_budget`). With `ratio` (a budget relative
    to a baseline), each round's finalists are measured interleaved with the baseline and decided
    by their latency ratio to it (`measure_relative`); the budget in ms follows the baseline's
    median (`RatioBudget.formulation`)."""
    rounds: list[VerifyRound] = []
    for r in range(max_rounds):
        if ratio is not None:
            formulation = ratio.formulation(formulation)
        if max_measurements is not None and device.n_measurements >= max_measurements:
            break
        room = k if max_measurements is None else min(k, max_measurements - device.n_measurements)
        finalists = select_finalists(evaluator.candidates, formulation, room, space if measure_ties else None,
                                     explore=max_measurements is not None)
        if not finalists:
            break
        vr = VerifyRound(r + 1)
        if ratio is not None:
            measure_relative(space, evaluator, device, ratio, finalists, vr, cap=remeasure_cap, on_settle=on_ratio)
            evaluator.recorrect()
            vr.correction = evaluator.correction.describe()
            rounds.append(vr)
            if on_measure:
                for c in finalists:
                    on_measure(c, r + 1)
            continue
        for c in finalists:
            measure_candidate(space, evaluator, device, formulation, c, vr)
            if on_measure:
                on_measure(c, r + 1)
        settle_near_budget(space, evaluator, device, formulation, finalists, vr, cap=remeasure_cap,
                           on_settle=on_settle)
        evaluator.recorrect()
        vr.correction = evaluator.correction.describe()
        rounds.append(vr)
    return rounds


def measure_candidate(space, evaluator: Evaluator, device: Device, formulation: Formulation, c: Candidate,
                      vr: VerifyRound) -> float:
    """Measure one candidate, record it (the correction's points, the round's log) and drop it
    if it breaks the budget. The caller re-fits the correction (`evaluator.recorrect()`)."""
    ms = device.measure(space, c)
    evaluator.add_measurement(c, ms)
    if formulation.latency_budget_ms is not None and ms > formulation.latency_budget_ms:  # kind "budget"
        c.dropped = f"measured {ms:.3f} ms > budget {formulation.latency_budget_ms:g} ms"
    stats = getattr(device, "last_stats", None) or {}
    vr.measured.append({"arch": c.key, "predicted_ms": c.predicted_ms, "raw_predicted_ms": c.raw_predicted_ms,
                        "measured_ms": ms, "dropped": c.dropped, "ci_rel": stats.get("ci_rel")})
    return ms


__all__ = ["Device", "FeatureCorrection", "NOISE_FLOOR", "RATIO_MARGIN", "REMEASURE_CAP",
           "RatioBudget", "RunnerDevice", "Settled",
           "VerifyRound", "measure_relative",
           "best_verified", "feasible", "measurement_uncertainty", "remeasure_until_clear", "settle_near_budget",
           "verified_pool",
           "capacity", "kernel_features", "measure_candidate", "rank_key", "select_finalists", "tie_finalists",
           "verify_finalists"]
