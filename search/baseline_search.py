"""Searching from a baseline: a search with `baseline=NAME|MODEL` (and `speedup=S`).

The baseline (a known model, or a file of a supported family: `search.architecture`) defines
the space (`search.spaces.baseline`), is scored by the same estimator as every candidate (the
same 0-100 rank units) and is measured on the device like any finalist. Then:

- by default: minimise latency subject to estimated accuracy >= the baseline's;
- with ``speedup`` S: maximise estimated accuracy subject to latency <= the baseline's measured
  latency / S.

The report, best.json and frontier.png state the chosen network's measured speed-up over the
baseline (measured on the same device, by the same runner).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from search.problem import Candidate, Formulation, SearchError


@dataclass
class BaselineInfo:
    name: str
    candidate: Candidate          # the baseline as a point of its space (scored, and measured when a device is at hand)
    space_options: dict
    spec: str = ""                # as the user gave it (a name or a file), and the data: for the `train` commands
    data: str = ""
    image_size: int | None = None
    ratio: Any = None             # search.verify.RatioBudget: finalists measured with the baseline, by ratio

    @property
    def latency_ms(self) -> float:
        return self.candidate.latency_ms

    def speedup_of(self, best: Candidate | None) -> tuple[float | None, str]:
        """(the baseline's latency over the chosen one's, "measured" or "predicted")."""
        if best is None:
            return None, "none"
        if self.ratio is not None and best.key in self.ratio.ratios:
            return self.ratio.speedup_of(best.key)["speedup"], "measured"
        both = best.measured_ms is not None and self.candidate.measured_ms is not None
        return self.latency_ms / best.latency_ms, "measured" if both else "predicted"

    def speedup_spread(self, best: Candidate | None) -> dict | None:
        """The measured speed-up's 95% interval and passes, when it was measured as a ratio in the
        same interleaved passes as the baseline (`search.verify.RatioBudget`)."""
        if best is None or self.ratio is None or best.key not in self.ratio.ratios:
            return None
        return self.ratio.speedup_of(best.key)

    def to_dict(self, best: Candidate | None = None) -> dict:
        c = self.candidate
        s, how = self.speedup_of(best)
        return {"name": self.name, "arch": c.key, "estimated_accuracy": c.accuracy, "measured_ms": c.measured_ms,
                "predicted_ms": c.predicted_ms, "params": c.params, "memory_mb": c.memory_mb,
                "speedup": s, "speedup_is": how, "speedup_measured_together": self.speedup_spread(best),
                "ratio_margin": self.ratio.margin_summary() if self.ratio is not None else None}


def baseline_space_options(spec: str, data) -> tuple[str, dict]:
    """(the baseline's name, the `get_space("baseline", ...)` options) for ``spec`` on ``data``."""
    # lazy: loads torch (slow to import) only when this runs
    from search.architecture import resolve_baseline
    from search.spaces.known import KNOWN_MODELS
    from search.spaces.skeleton import skeleton_to_dict
    name, sk = resolve_baseline(spec, data.num_classes, data.in_channels, data.resolution)
    if name in KNOWN_MODELS:
        return name, {"baseline": name}
    return name, {"baseline": name, "skeleton": json.dumps(skeleton_to_dict(sk))}


def score_and_measure_baseline(name: str, space, evaluator, device, options: dict, measure: bool,
                               log: Callable[[str], None], spec: str = "", data: str = "",
                               image_size: int | None = None) -> BaselineInfo:
    """The baseline as a candidate: estimated like any other, measured on ``device`` when
    ``measure`` (its measurement also corrects the predictor, like a finalist's)."""
    cand = evaluator.evaluate([space.baseline_arch])[0]
    if measure:
        ms = device.measure(space, cand)
        evaluator.add_measurement(cand, ms)
        evaluator.recorrect()
        log(f"baseline {name}: estimated {cand.accuracy:.2f}, predicted {cand.raw_predicted_ms:.3f} ms, "
            f"measured {ms:.3f} ms on {device.name}; {cand.params:,} params, {cand.memory_mb:.2f} MB")
    else:
        log(f"baseline {name}: estimated {cand.accuracy:.2f}, predicted {cand.predicted_ms:.3f} ms (not measured: "
            f"no device verification)")
    return BaselineInfo(name, cand, options, spec or name, data, image_size)


def baseline_formulation(base: BaselineInfo, speedup: float | None, latency_budget_ms: float | None,
                         min_accuracy: float | None, max_params: int | None, max_memory_mb: float | None
                         ) -> Formulation:
    """The formulation with a baseline (module docstring); an explicit budget or threshold wins."""
    sizes: dict[str, Any] = {"max_params": max_params, "max_memory_mb": max_memory_mb}
    if speedup is not None:
        if latency_budget_ms is not None or min_accuracy is not None:
            raise SearchError("give `speedup`, or `latency_budget_ms` / `min_accuracy`, not both")
        how = "measured" if base.candidate.measured_ms is not None else "predicted"
        return Formulation(latency_budget_ms=base.latency_ms / speedup, origin=(
            f"the baseline {base.name}'s {how} {base.latency_ms:.3f} ms / {speedup:g}"), **sizes)
    if latency_budget_ms is not None or min_accuracy is not None:
        return Formulation(latency_budget_ms, min_accuracy, **sizes)
    return Formulation(min_accuracy=base.candidate.accuracy,
                       origin=f"the baseline {base.name}'s estimate, same units", **sizes)


def known_markers(space, predictor, resolution: int, correction=None) -> list[tuple[str, float, float, str]]:
    """(name, predicted ms, published top-1, dataset) of the known models published at
    ``resolution``, sized to the space's data, for the search's frontier chart; ``correction``
    (the run's `search.problem.Correction`) puts them on the candidates' corrected scale."""
    # lazy: loads torch (slow to import) only when this runs
    from search.spaces.known import list_known
    from search.spaces.skeleton import skeleton_specs
    kms = [km for km in list_known() if km.resolution == resolution]
    if not kms or predictor is None:
        return []
    sks = [km.skeleton(space.num_classes, space.in_channels, resolution) for km in kms]
    med, _, _ = predictor.predict_specs([skeleton_specs(sk) for sk in sks])
    if correction is not None:
        from types import SimpleNamespace
        med = correction.apply([SimpleNamespace(raw_predicted_ms=float(m)) for m in med])
    return [(km.name, float(m), km.top1, km.dataset) for km, m in zip(kms, med)]


def train_commands(best_json: str, baseline: str, data: str, out: str, image_size: int | None = None,
                   epochs: int = 15) -> list[str]:
    """The `train` commands that prove the choice: the chosen network and the baseline, same recipe."""
    size = f" --image-size {image_size}" if image_size else ""
    return [f"train {best_json} --data {data}{size} --epochs {epochs} --out {out}/trained-best",
            f"train {baseline} --data {data}{size} --epochs {epochs} --out {out}/trained-baseline"]


__all__ = ["BaselineInfo", "baseline_formulation", "baseline_space_options", "known_markers",
           "score_and_measure_baseline", "train_commands"]
