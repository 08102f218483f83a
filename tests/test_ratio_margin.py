"""The decision margin of a search by speed-up (search.verify.RatioBudget.margin): finalists are
picked clear of 1/S by it, a finalist measured inside it is not chosen over one clear of it, it
is a setting (the spread a run observes is reported beside it), and it is reported."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from profiling.validate import ConfigError
from search.problem import Candidate, Formulation, SearchError

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
PREDICTOR = sorted((ROOT / "data" / "predictors").glob("local-cpu__*.lgb"))[0]


def _cand(key: str, acc: float, pred: float, measured: float | None = None) -> Candidate:
    return Candidate(key=key, arch=None, encoding=np.zeros(0), accuracy=acc, predicted_ms=pred, low_ms=pred,
                     high_ms=pred, raw_predicted_ms=pred, raw_low_ms=pred, raw_high_ms=pred, measured_ms=measured)


def test_a_candidate_inside_the_margin_is_neither_picked_nor_chosen_over_one_clear_of_it():
    from search.verify import best_verified, select_finalists
    budget = 1.0
    with_margin = Formulation(latency_budget_ms=budget, decision_margin=0.1)
    without = Formulation(latency_budget_ms=budget)
    assert with_margin.clear_budget_ms == pytest.approx(0.9) and without.clear_budget_ms == budget
    # picking: the better-scored candidate predicted inside the margin (0.95) comes after the one
    # predicted clear of it (0.7); without a margin it comes first
    close, clear = _cand("close", 80.0, 0.95), _cand("clear", 60.0, 0.7)
    assert [c.key for c in select_finalists([close, clear], with_margin, 1)] == ["clear"]
    assert [c.key for c in select_finalists([close, clear], with_margin, 2)] == ["clear", "close"]
    assert [c.key for c in select_finalists([close, clear], without, 1)] == ["close"]
    # choosing: both verified within the budget; the one measured inside the margin is not chosen
    # over the one clear of it, and is chosen when it is the only one
    close.measured_ms, clear.measured_ms = 0.97, 0.8
    assert best_verified([close, clear], with_margin).key == "clear"
    assert best_verified([close, clear], without).key == "close"
    assert best_verified([close], with_margin).key == "close"
    # a margin is a fraction of the budget
    with pytest.raises(SearchError, match="decision margin"):
        Formulation(latency_budget_ms=budget, decision_margin=1.0)


def test_the_margin_is_a_setting_and_the_spread_a_run_observes_is_reported_beside_it():
    from search.verify import RATIO_MARGIN, RatioBudget
    r = RatioBudget(_cand("base", 50.0, 1.0), speedup=2.0)
    assert r.margin == RATIO_MARGIN and r.observed_spread is None
    f = r.formulation(Formulation(latency_budget_ms=1.0))
    assert f.decision_margin == RATIO_MARGIN and f.latency_budget_ms == 1.0  # no passes yet: the margin only
    ref = [1.0] * 8
    r.add(ref, {"a": [0.40] * 8, "b": [0.30] * 8})
    assert r.observed_spread is None                       # no network in two batches yet
    r.add(ref, {"a": [0.46] * 8})                          # a's batches: 0.40 and 0.46 (median 0.43)
    spread = 2 * np.sqrt(np.mean(np.square([0.40 / 0.43 - 1, 0.46 / 0.43 - 1])))
    assert spread > RATIO_MARGIN and r.observed_spread == pytest.approx(spread)
    # the line stays where the setting puts it: this run's noise does not move the choice
    assert r.margin == RATIO_MARGIN and r.clear_ratio == pytest.approx(0.5 * (1 - RATIO_MARGIN))
    summary = r.margin_summary()
    assert summary["spread_wider_than_margin"] and summary["clear_of_margin"] == {"a": True, "b": True}
    assert "wider than the margin" in r.describe_margin()
    f = r.formulation(Formulation(latency_budget_ms=1.0))
    assert f.decision_margin == RATIO_MARGIN and "decision margin" in f.origin
    assert RatioBudget(_cand("base", 50.0, 1.0), 2.0, margin=0.0).formulation(f).decision_margin == 0.0
    with pytest.raises(SearchError, match="ratio margin"):
        RatioBudget(_cand("base", 50.0, 1.0), 2.0, margin=1.0)


def test_ratio_margin_is_validated_when_the_configuration_is_built(tmp_path):
    from search.config import BaselineConfig
    with pytest.raises(ConfigError, match="ratio_margin"):
        BaselineConfig(baseline="resnet20", speedup=2.0, ratio_margin=0.6)
    with pytest.raises(ConfigError, match="ratio_margin"):
        BaselineConfig(baseline="resnet20", speedup=2.0, ratio_margin=-0.1)
    assert BaselineConfig(baseline="resnet20", speedup=2.0, ratio_margin=0.0).ratio_margin == 0.0


def test_a_search_by_speedup_chooses_clear_of_the_margin_and_reports_it(tmp_path):
    """A real search (8x8 digits, the real runner measuring finalists with the baseline), at 1/S = 2
    (up to twice the baseline's latency, so that the finalists are kept on any machine), with a
    margin of 0.4: the choice is clear of it whenever a kept finalist is, the margin is in best.json
    and report.md; and on its measured finalists, the one measured slowest is not chosen once a
    margin puts it inside while another is clear."""
    from dataclasses import replace

    from search.run import SearchConfig, run_search
    from search.verify import best_verified
    res = run_search(SearchConfig(predictor=PREDICTOR, data="digits", data_max_per_class=30, population=6,
                                  generations=2, finalists=3, verify_rounds=1, reference_size=8, proxy_batch=16,
                                  proxies=("jacob_cov",), out=tmp_path / "s", cache_dir=tmp_path / "cache",
                                  budget_minutes=10, progress=False, baseline="resnet20", speedup=0.5,
                                  ratio_margin=0.4))
    ratio = res.baseline.ratio
    assert ratio is not None and ratio.margin == 0.4 and res.formulation.decision_margin == 0.4
    kept = [c for c in res.candidates if c.key in ratio.ratios and ratio.kept(c.key)]
    clear = [c for c in kept if ratio.clear_of_margin(c.key)]
    assert len(kept) >= 2
    base = res.baseline.candidate
    if res.best.key == base.key:
        # the baseline is a point of its space, within 1/S = 2 and clear of the margin by
        # construction; it is chosen (in CI on a loaded Zen 4 it was) only when no finalist
        # estimated more accurate beyond the tie margin was measured clear of the margin too
        from search.verify import TIE_MARGIN
        f = res.formulation
        assert all(c.measured_ms > f.clear_budget_ms for c in kept if c.accuracy > base.accuracy + TIE_MARGIN)
    else:
        assert res.best in kept and res.best in (clear or kept)
    rows = [m for r in res.rounds for m in r.measured]
    assert rows and all(m["clear_of_margin"] == (m["ratio"] <= ratio.clear_ratio) for m in rows)
    reported = json.loads((res.out_dir / "best.json").read_text())["baseline"]["ratio_margin"]
    assert reported["margin"] == 0.4 and reported["clear_ratio"] == pytest.approx(ratio.clear_ratio)
    assert reported["clear_of_margin"] == {k: ratio.clear_of_margin(k) for k in ratio.ratios}
    assert "decision margin 0.4" in (res.out_dir / "report.md").read_text()
    # the same measured finalists, the margin put just under the slowest one: it is not chosen
    slow = max(kept, key=lambda c: c.measured_ms)
    f0 = replace(res.formulation, decision_margin=0.0)
    inside = replace(f0, decision_margin=1.0 - 0.999 * slow.measured_ms / f0.latency_budget_ms)
    assert f0.clear_budget_ms >= slow.measured_ms > inside.clear_budget_ms
    assert best_verified(res.candidates, inside).key != slow.key
    assert best_verified(res.candidates, f0).accuracy >= best_verified(res.candidates, inside).accuracy
