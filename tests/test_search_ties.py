"""The tie rule of the budget formulation and the finalists it adds (search.verify)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")


def _cands(space, archs, accs, pred_ms, measured=None):
    from search.problem import Candidate
    out = []
    for i, (a, acc, p) in enumerate(zip(archs, accs, pred_ms)):
        out.append(Candidate(key=space.to_string(a), arch=a, encoding=space.encode(a), accuracy=acc,
                             predicted_ms=p, low_ms=p, high_ms=p, raw_predicted_ms=p,
                             measured_ms=None if measured is None else measured[i]))
    return out


@pytest.fixture(scope="module")
def space():
    from search.spaces import get_space
    return get_space("nb201", C=8, N=1, resolution=16)


def _by_capacity(space):
    """Distinct cells ordered by MACs, smallest first."""
    from search.verify import capacity
    rng = np.random.default_rng(0)
    archs = {space.to_string(a): a for a in (space.sample(rng) for _ in range(60))}
    probe = _cands(space, list(archs.values()), [0.0] * len(archs), [1.0] * len(archs))
    macs = {c.key: capacity(space, c) for c in probe}
    keys = sorted(macs, key=macs.get)
    distinct = [keys[0]]
    for k in keys[1:]:
        if macs[k] > macs[distinct[-1]] * 1.05:
            distinct.append(k)
    return [archs[k] for k in distinct], [macs[k] for k in distinct]


def test_tie_finalists_are_the_cells_the_tie_rule_could_still_pick(space):
    from search.problem import Formulation
    from search.verify import best_verified, select_finalists, tie_finalists
    archs, macs = _by_capacity(space)
    small, mid, big, bigger, biggest = archs[0], archs[len(archs) // 3], archs[-3], archs[-2], archs[-1]
    f = Formulation(latency_budget_ms=10.0)
    chosen, = _cands(space, [mid], [80.0], [5.0], measured=[5.0])
    tie_big, tie_small, far, over = _cands(space, [big, small, bigger, biggest], [79.0, 79.5, 70.0, 79.0],
                                           [9.0, 4.0, 6.0, 12.0])
    cands = [chosen, tie_big, tie_small, far, over]
    # only the larger cell within the margin, predicted under the budget, could win the tie-break
    assert [c.key for c in tie_finalists(cands, f, space, k=5)] == [tie_big.key]
    # the frontier rule has nothing left (nothing unmeasured beats 80), so the tie round picks it
    assert select_finalists(cands, f, 3) == []
    assert [c.key for c in select_finalists(cands, f, 3, space)] == [tie_big.key]
    # once measured under the budget it is the choice; then nothing is left to measure
    tie_big.measured_ms = 8.0
    assert best_verified(cands, f, space).key == tie_big.key
    assert tie_finalists(cands, f, space, k=5) == []
    # measured over the budget it is dropped and the choice stays
    tie_big.measured_ms, tie_big.dropped = 11.0, "over"
    assert best_verified(cands, f, space).key == chosen.key
    assert tie_finalists(cands, f, space, k=5) == []


def test_no_tie_round_without_a_verified_feasible_candidate_or_budget(space):
    from search.problem import Formulation
    from search.verify import tie_finalists
    archs, _ = _by_capacity(space)
    cands = _cands(space, archs[:3], [80.0, 79.0, 78.0], [5.0, 6.0, 7.0])
    assert tie_finalists(cands, Formulation(latency_budget_ms=10.0), space, k=3) == []
    assert tie_finalists(cands, Formulation(), space, k=3) == []


NB201_CSV = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "nb201" / "nb201_cifar10.csv"


@pytest.mark.skipif(not NB201_CSV.exists(), reason="../shared/data/nb201/nb201_cifar10.csv is absent")
def test_benchmark_mode_spends_leftover_lookups_on_the_tie_break(tmp_path):
    """Same search with and without the tie round: the tie round only adds lookups (never past
    the limit), and its choice is verified under the budget with at least the capacity of the
    choice without it among cells scored within the tie margin."""
    from search.benchmark import BenchmarkDevice
    from search.problem import Formulation
    from search.run import SearchConfig, run_search
    from search.verify import TIE_MARGIN, capacity, tie_finalists
    budget = BenchmarkDevice(NB201_CSV, "raspi4").percentile(50)
    res = {}
    for ties in (False, True):
        res[ties] = run_search(SearchConfig(
            space="nb201", data="digits", benchmark=f"{NB201_CSV}:raspi4", latency_budget_ms=budget,
            population=12, generations=3, max_measurements=30, calibration=6, finalists=3,
            out=str(tmp_path / f"b{ties}"), cache_dir=str(tmp_path / "c"), progress=False,
            proxies=("jacob_cov", "params"), proxy_batch=16, export_best=False, reference_size=12,
            measure_ties=ties))
    off, on = res[False], res[True]
    assert off.n_measurements <= on.n_measurements <= 30
    assert on.best.measured_ms is not None and on.best.measured_ms <= budget
    # the same cells were scored (the search is seeded), so the off-choice was available to the on-run
    assert {c.key for c in off.candidates} == {c.key for c in on.candidates}
    from search import wiring
    space = wiring.make_space("nb201", wiring.load_data("digits"))
    if on.n_measurements < 30:  # the tie round ran out of candidates, not of lookups
        assert tie_finalists(on.candidates, Formulation(latency_budget_ms=budget), space, k=5) == []
    # the off-run's choice, if the on-run verified it too, can only lose the tie-break to a larger cell
    on_cands = {c.key: c for c in on.candidates}
    top = max(c.accuracy for c in on.candidates if c.measured_ms is not None and c.measured_ms <= budget)
    twin = on_cands[off.best.key]
    if twin.measured_ms is not None and off.best.accuracy >= top - TIE_MARGIN:
        assert capacity(space, on.best) >= capacity(space, off.best)


def test_finalists_fall_back_to_the_fastest_when_nothing_is_predicted_near_the_budget(space):
    """A prediction that puts every candidate far over the budget must not end the verification
    without a choice: the fastest predicted frontier points are measured instead."""
    from search.problem import Formulation
    from search.verify import select_finalists
    archs, _ = _by_capacity(space)
    cands = _cands(space, archs[:4], [60.0, 70.0, 80.0, 90.0], [20.0, 30.0, 40.0, 50.0])
    f = Formulation(latency_budget_ms=10.0)
    assert [c.key for c in select_finalists(cands, f, 2)] == [cands[0].key, cands[1].key]
    # measured over the budget and dropped: the next fastest
    cands[0].measured_ms, cands[0].dropped = 12.0, "over"
    assert [c.key for c in select_finalists(cands, f, 1)] == [cands[1].key]
    # once one is verified under the budget, only better-scored candidates near the budget count
    cands[1].measured_ms = 9.0
    assert select_finalists(cands, f, 2) == []


def test_explore_spends_the_allowance_on_better_cells_predicted_over_the_budget(space):
    from search.problem import Formulation
    from search.verify import select_finalists
    archs, _ = _by_capacity(space)
    f = Formulation(latency_budget_ms=10.0)
    cands = _cands(space, archs[:4], [60.0, 70.0, 80.0, 50.0], [9.0, 20.0, 30.0, 40.0], measured=[9.0, None, None, None])
    # without an allowance to spend, nothing near the budget beats the verified 60: done
    assert select_finalists(cands, f, 3, space) == []
    # with one, the better-scored frontier points predicted over the budget, lowest prediction first;
    # the worse-scored one is not worth a lookup
    assert [c.key for c in select_finalists(cands, f, 3, space, explore=True)] == [cands[1].key, cands[2].key]
