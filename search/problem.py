"""What the search optimises: candidates, objectives, formulations and the evaluator.

A candidate is one architecture of a space, known by its string (`space.to_string`), with an
estimated accuracy (higher is better) and a predicted latency (ms, with a low/high interval).
The evaluator caches both per architecture string, so a cell that the search visits twice is
scored once, and it applies the current latency correction (fit on finalists measured on the
device) to every prediction it hands out.

Formulations (`Formulation.kind`):
- ``budget``: maximise accuracy subject to latency <= budget;
- ``min_accuracy``: minimise latency subject to accuracy >= threshold (Deci's AutoNAC form);
- ``frontier``: the whole accuracy/latency frontier, no constraint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from search.errors import SearchStageError


class SearchError(SearchStageError, RuntimeError):
    """A search cannot run or cannot meet its constraint; the message says what to do."""


class BudgetTooLowError(SearchError):
    """No candidate meets the latency budget; carries the fastest candidate seen."""

    def __init__(self, message: str, fastest: "Candidate | None" = None):
        super().__init__(message)
        self.fastest = fastest


#: the default floor of the decision margin (a fraction of 1/S) of verdicts by ratio
#: (search.verify.RatioBudget): the spread of one network's latency ratio to the baseline between
#: runs of `make demo` on the reference 2-core VM (AMD EPYC Zen 3, session 8: about ±8%, more than
#: one run's own interval, since the VM's speed levels do not slow every network equally). One
#: run sees only part of that spread, so its own observation only widens the margin.
RATIO_MARGIN = 0.08


@dataclass(frozen=True)
class Formulation:
    latency_budget_ms: float | None = None
    min_accuracy: float | None = None
    # During the search the constraint is relaxed by this fraction, so that candidates just
    # over the line survive until the device has been asked (the predictor has an interval).
    search_margin: float = 0.15
    # size constraints, on top of the kind's: weights of the inference graph, and peak
    # activations + weights (search.memory); never relaxed by the margin (they are exact)
    max_params: int | None = None
    max_memory_mb: float | None = None
    # where the constraint came from, for describe(): e.g. "the baseline resnet20's (61.2)"
    origin: str | None = None
    # budget: the fraction below the budget a finalist is picked at, and a measured candidate is
    # preferred at, so that the choice is clear of the budget by the machine's run-to-run spread
    # of measurements (search.verify.RatioBudget.margin); 0: none
    decision_margin: float = 0.0

    def __post_init__(self) -> None:
        if self.latency_budget_ms is not None and self.min_accuracy is not None:
            raise SearchError("give either a latency budget or a minimum accuracy, not both")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise SearchError(f"the latency budget must be > 0 ms, got {self.latency_budget_ms}")
        if self.max_params is not None and not self.max_params > 0:
            raise SearchError(f"the parameter limit must be > 0, got {self.max_params}")
        if self.max_memory_mb is not None and not self.max_memory_mb > 0:
            raise SearchError(f"the memory limit must be > 0 MB, got {self.max_memory_mb}")
        if not 0.0 <= self.decision_margin < 1.0:
            raise SearchError(f"the decision margin is a fraction of the budget in [0, 1), got {self.decision_margin}")

    @property
    def kind(self) -> str:
        if self.latency_budget_ms is not None:
            return "budget"
        if self.min_accuracy is not None:
            return "min_accuracy"
        return "frontier"

    def describe(self) -> str:
        src = f" ({self.origin})" if self.origin else ""
        if self.kind == "budget":
            text = f"maximise estimated accuracy subject to latency <= {self.latency_budget_ms:g} ms{src}"
        elif self.kind == "min_accuracy":
            text = f"minimise latency subject to estimated accuracy >= {self.min_accuracy:g}{src}"
        else:
            text = "the whole accuracy/latency frontier"
        sizes = self.describe_sizes()
        if self.kind == "frontier":
            return text + (f" subject to {sizes}" if sizes else " (no constraint)")
        return text + (f", and {sizes}" if sizes else "")

    def describe_sizes(self) -> str:
        parts = []
        if self.max_params is not None:
            parts.append(f"params <= {self.max_params:,}")
        if self.max_memory_mb is not None:
            parts.append(f"memory (peak activations + weights) <= {self.max_memory_mb:g} MB")
        return " and ".join(parts)

    @property
    def n_constraints(self) -> int:
        return int(self.kind != "frontier") + int(self.max_params is not None) + int(self.max_memory_mb is not None)

    def search_constraint(self, acc: np.ndarray, lat: np.ndarray, params: np.ndarray | None = None,
                          memory_mb: np.ndarray | None = None) -> np.ndarray | None:
        """pymoo-style constraint values (<= 0 is feasible), the kind's with the search margin,
        then the size limits (relative, so the columns have comparable scales)."""
        cols = []
        # the kind's test (`kind`) written on the field itself, so that the field is known to be set
        if self.latency_budget_ms is not None:
            cols.append(lat - self.latency_budget_ms * (1 + self.search_margin))
        elif self.min_accuracy is not None:
            slack = self.search_margin * max(abs(self.min_accuracy), 1e-9) * 0.1
            cols.append((self.min_accuracy - slack) - acc)
        if self.max_params is not None:
            cols.append(np.asarray(params, float) / self.max_params - 1.0)
        if self.max_memory_mb is not None:
            cols.append(np.asarray(memory_mb, float) / self.max_memory_mb - 1.0)
        return np.column_stack(cols) if cols else None

    @property
    def clear_budget_ms(self) -> float | None:
        """The latency budget less the decision margin: finalists predicted, and candidates measured,
        at most this are clear of the budget by the margin."""
        if self.latency_budget_ms is None:
            return None
        return self.latency_budget_ms * (1.0 - self.decision_margin)

    def feasible(self, acc: float, lat: float, params: int | None = None, memory_mb: float | None = None) -> bool:
        if not self.size_ok(params, memory_mb):
            return False
        if self.latency_budget_ms is not None:  # kind "budget"
            return lat <= self.latency_budget_ms
        if self.min_accuracy is not None:  # kind "min_accuracy"
            return acc >= self.min_accuracy
        return True

    def size_ok(self, params: int | None, memory_mb: float | None) -> bool:
        if self.max_params is not None and (params is None or params > self.max_params):
            return False
        return self.max_memory_mb is None or (memory_mb is not None and memory_mb <= self.max_memory_mb)


@dataclass
class Candidate:
    key: str                      # the space's own notation (NB201 arch string for nb201)
    arch: Any
    encoding: np.ndarray
    accuracy: float               # estimated accuracy (or rank score), higher is better
    predicted_ms: float           # predicted latency after the current correction
    low_ms: float
    high_ms: float
    raw_predicted_ms: float       # the predictor's own number, before any correction
    raw_low_ms: float = float("nan")
    raw_high_ms: float = float("nan")
    measured_ms: float | None = None
    generation: int = 0
    dropped: str | None = None    # why a verified finalist was dropped
    params: int | None = None     # inference-graph weights, when the space computes them
    memory_mb: float | None = None  # peak activations + weights (search.memory), when the space computes it

    @property
    def latency_ms(self) -> float:
        """The best latency we know: measured if verified, else the corrected prediction."""
        return self.measured_ms if self.measured_ms is not None else self.predicted_ms

    def to_dict(self) -> dict:
        return {
            "arch": self.key,
            "encoding": [float(x) for x in np.asarray(self.encoding).ravel()],
            "estimated_accuracy": float(self.accuracy),
            "predicted_ms": float(self.predicted_ms),
            "predicted_low_ms": float(self.low_ms),
            "predicted_high_ms": float(self.high_ms),
            "raw_predicted_ms": float(self.raw_predicted_ms),
            "measured_ms": None if self.measured_ms is None else float(self.measured_ms),
            "generation": int(self.generation),
            "dropped": self.dropped,
            "params": self.params,
            "memory_mb": self.memory_mb,
        }


class AccuracyModel(Protocol):
    """Scores architectures; higher is better. `name` says what the number is."""
    name: str

    def score(self, archs: Sequence[Any]) -> np.ndarray: ...


class LatencyModel(Protocol):
    """Predicts latency in ms with an interval: returns (median, low, high) arrays."""
    name: str

    def predict(self, archs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class Correction:
    """Maps raw predicted latency to what the device shows, fit on measured finalists.

    With one or two points it is a multiplicative factor (the geometric mean of
    measured/predicted); from three points it is a log-log line `log m = a + b log p` with
    the slope shrunk towards 1, so a handful of finalists cannot flip the ranking. The
    residual spread of the log ratios widens the interval. Subclasses (see
    `search.verify.FeatureCorrection`) may use the architecture as well.
    """

    def __init__(self) -> None:
        self.a = 0.0
        self.b = 1.0
        self.spread = 0.0
        self.points: list[tuple["Candidate", float]] = []  # (candidate, measured ms)

    @property
    def fitted(self) -> bool:
        return bool(self.points)

    def add(self, cand: "Candidate", measured: float) -> None:
        if cand.raw_predicted_ms > 0 and measured > 0 and math.isfinite(measured):
            self.points.append((cand, float(measured)))
            self.fit()

    def fit(self) -> None:
        p = np.log([c.raw_predicted_ms for c, _ in self.points])
        m = np.log([y for _, y in self.points])
        if len(self.points) >= 3 and np.ptp(p) > 0.05:
            b = float(np.polyfit(p, m, 1)[0])
            n = len(self.points)
            b = 1.0 + (np.clip(b, 0.25, 4.0) - 1.0) * (n / (n + 3.0))  # shrink towards 1
            self.b = float(b)
        else:
            self.b = 1.0
        self.a = float(np.mean(m - self.b * p))
        resid = m - (self.a + self.b * p)
        self.spread = float(np.sqrt(np.mean(resid ** 2))) if len(resid) > 1 else 0.0

    def apply(self, cands: Sequence["Candidate"]) -> np.ndarray:
        raw = np.array([c.raw_predicted_ms for c in cands], dtype=float)
        if not self.fitted:
            return raw
        return np.exp(self.a + self.b * np.log(np.maximum(raw, 1e-9)))

    def describe(self) -> str:
        if not self.fitted:
            return "none (no finalist measured yet)"
        if self.b == 1.0:
            return f"measured = {math.exp(self.a):.3f} x predicted (from {len(self.points)} measured points)"
        return (f"measured = {math.exp(self.a):.3f} x predicted^{self.b:.3f} "
                f"(log-log fit on {len(self.points)} measured points, residual {self.spread:.3f})")


class Evaluator:
    """Scores architectures once each and hands out candidates with corrected latency."""

    def __init__(self, space, accuracy: AccuracyModel, latency: LatencyModel,
                 on_new: Callable[[int], None] | None = None, correction: Correction | None = None):
        self.space = space
        self.accuracy = accuracy
        self.latency = latency
        self.correction = correction or Correction()
        self.cache: dict[str, Candidate] = {}
        self.on_new = on_new
        self.generation = 0

    def key(self, arch) -> str:
        return self.space.to_string(arch)

    def evaluate(self, archs: Sequence[Any]) -> list[Candidate]:
        keys = [self.key(a) for a in archs]
        new: dict[str, Any] = {}
        for k, a in zip(keys, archs):
            if k not in self.cache and k not in new:
                new[k] = a
        if new:
            todo = list(new.values())
            med, lo, hi = self.latency.predict(todo)
            acc = np.asarray(self.accuracy.score(todo), dtype=float)
            size_of = getattr(self.space, "size_of", None)
            for i, (k, a) in enumerate(new.items()):
                params, memory_mb = size_of(a) if size_of is not None else (None, None)
                self.cache[k] = Candidate(
                    key=k, arch=a, encoding=np.asarray(self.space.encode(a), dtype=float),
                    accuracy=float(acc[i]), predicted_ms=float(med[i]), low_ms=float(lo[i]),
                    high_ms=float(hi[i]), raw_predicted_ms=float(med[i]), raw_low_ms=float(lo[i]),
                    raw_high_ms=float(hi[i]), generation=self.generation, params=params, memory_mb=memory_mb)
            self._apply_correction([self.cache[k] for k in new])
            if self.on_new:
                self.on_new(len(new))
        return [self.cache[k] for k in keys]

    def _apply_correction(self, cands: Sequence[Candidate]) -> None:
        """Corrected latency and interval from the raw prediction and the current fit."""
        if not cands:
            return
        raw = np.array([c.raw_predicted_ms for c in cands])
        corrected = self.correction.apply(cands)
        widen = math.exp(self.correction.spread) if self.correction.fitted else 1.0
        for c, r, v in zip(cands, raw, corrected):
            lo_rel = min(c.raw_low_ms / r, 1.0) if r > 0 else 1.0
            hi_rel = max(c.raw_high_ms / r, 1.0) if r > 0 else 1.0
            c.predicted_ms = float(v)
            c.low_ms = float(v * lo_rel / widen)
            c.high_ms = float(v * hi_rel * widen)

    def add_measurement(self, cand: Candidate, measured_ms: float) -> None:
        cand.measured_ms = float(measured_ms)
        self.correction.add(cand, measured_ms)

    def recorrect(self) -> None:
        """Re-apply the (re-fit) correction to every candidate scored so far."""
        self._apply_correction(list(self.cache.values()))

    @property
    def candidates(self) -> list[Candidate]:
        return list(self.cache.values())


def pareto_front(cands: Sequence[Candidate], use_measured: bool = True) -> list[Candidate]:
    """Non-dominated candidates (max accuracy, min latency), sorted by latency."""
    pts = [c for c in cands if c.dropped is None]
    pts.sort(key=lambda c: (c.latency_ms if use_measured else c.predicted_ms, -c.accuracy))
    front: list[Candidate] = []
    best_acc = -math.inf
    for c in pts:
        if c.accuracy > best_acc:
            front.append(c)
            best_acc = c.accuracy
    return front


__all__ = ["AccuracyModel", "BudgetTooLowError", "Candidate", "Correction", "Evaluator",
           "Formulation", "LatencyModel", "SearchError", "pareto_front"]
