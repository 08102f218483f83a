"""Re-ranking the verified finalists by a short stand-alone training: real networks, real training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
NB201_CSV = ROOT.parent / "shared" / "data" / "nb201" / "nb201_cifar10.csv"

DEAD = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"          # no path from input to output
CONV = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
POOL = "|avg_pool_3x3~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|avg_pool_3x3~2|"


def _candidates(space, estimated: dict[str, float]):
    from search.problem import Candidate
    return [Candidate(key=k, arch=space.from_string(k), encoding=np.zeros(0), accuracy=a, predicted_ms=1.0,
                      low_ms=0.9, high_ms=1.1, raw_predicted_ms=1.0, measured_ms=1.0) for k, a in estimated.items()]


def test_short_training_reorders_what_the_estimator_ranked_and_caches_it(tmp_path):
    from search import wiring
    from search.accuracy.rerank import RerankConfig, rerank_by_training
    data = wiring.load_data("digits", seed=0)
    space = wiring.make_space("nb201", data)
    # the estimator (here: made up) prefers the dead cell and the pooling-only cell to the conv cell
    cands = _candidates(space, {DEAD: 90.0, POOL: 80.0, CONV: 70.0, "|skip_connect~0|+|none~0|none~1|+"
                                "|none~0|none~1|none~2|": 60.0})
    cfg = RerankConfig(top_k=3, epochs=2.0)

    def make(options):
        return wiring.make_space("nb201", data, options)

    cache = tmp_path / "rerank.jsonl"
    res = rerank_by_training("nb201", make, cands, data.train, data.val, data.resolution, cfg, cache_file=cache)
    assert [r.key for r in res][0] == CONV                   # learns the digits; the others cannot as well
    assert {r.key for r in res} == {DEAD, POOL, CONV}        # top_k by the estimate: the 60.0 cell is not trained
    by = {r.key: r.short_accuracy for r in res}
    assert by[CONV] > 60.0 and by[DEAD] < 25.0               # 10 classes: a dead cell is at chance
    assert all(not r.cached for r in res) and len(cache.read_text().splitlines()) == 3
    again = rerank_by_training("nb201", make, cands, data.train, data.val, data.resolution, cfg, cache_file=cache)
    assert all(r.cached for r in again) and [(r.key, r.short_accuracy) for r in again] == \
        [(r.key, r.short_accuracy) for r in res]
    # another recipe is not served from the cache
    other = rerank_by_training("nb201", make, cands[:2], data.train, data.val, data.resolution,
                               RerankConfig(top_k=2, epochs=1.0), cache_file=cache)
    assert not any(r.cached for r in other)


def test_short_trainings_stop_at_the_deadline_but_the_required_ones_run(tmp_path):
    """A search's budget bounds its short trainings: after the required first ones, a training
    starts only if it is expected to end by the deadline; cached ones cost nothing and count."""
    import time
    from search import wiring
    from search.accuracy.rerank import RerankConfig, rerank_by_training
    data = wiring.load_data("digits", seed=0, max_per_class=20)
    space = wiring.make_space("nb201", data)
    order = [CONV, POOL, DEAD]
    cands = _candidates(space, {k: 50.0 for k in order})
    cfg = RerankConfig(top_k=3, epochs=1.0)

    def make(options):
        return wiring.make_space("nb201", data, options)

    def run(deadline, cache):
        return rerank_by_training("nb201", make, cands, data.train, data.val, data.resolution, cfg, cache_file=cache,
                                  ordered=True, required=2, deadline=deadline, cost=lambda c: c.predicted_ms)

    cache = tmp_path / "rerank.jsonl"
    past = time.monotonic()                                     # no time left: only the required two train
    assert sorted(r.key for r in run(past, cache)) == sorted(order[:2])
    assert len(cache.read_text().splitlines()) == 2
    # the two cached cost nothing; the third is expected to take as long as they did
    assert sorted(r.key for r in run(time.monotonic() + 3600, cache)) == sorted(order)
    assert [r.cached for r in run(time.monotonic(), cache)] == [True] * 3
    # without a deadline all are trained, in the order given
    log: list[str] = []
    fresh = rerank_by_training("nb201", make, cands, data.train, data.val, data.resolution, cfg, ordered=True,
                               log=log.append)
    assert [line.split(": ")[1].split()[0] for line in log] == order and len(fresh) == 3


@pytest.mark.skipif(not NB201_CSV.exists(), reason="../shared/data/nb201/nb201_cifar10.csv is absent")
def test_search_chooses_the_best_short_trained_cell_the_device_confirms(tmp_path):
    from search.benchmark import BenchmarkDevice
    from search.run import SearchConfig, run_search
    budget = BenchmarkDevice(NB201_CSV, "edgegpu").percentile(50)
    cfg = SearchConfig(space="nb201", data="digits", benchmark=f"{NB201_CSV}:edgegpu", latency_budget_ms=budget,
                       population=8, generations=2, max_measurements=16, calibration=6, finalists=3,
                       out=str(tmp_path / "b"), cache_dir=str(tmp_path / "c"), progress=False, proxies=("params",),
                       proxy_batch=16, export_best=False, reference_size=12, rerank=3, rerank_epochs=1.0,
                       overwrite=True)  # run twice into one directory
    res = run_search(cfg)
    assert 2 <= len(res.reranked) <= 3
    # taken in order of short-training accuracy: every one before the choice was measured over budget
    keys = [r.key for r in res.reranked]
    by_key = {c.key: c for c in res.candidates}
    assert all(by_key[k].dropped is not None for k in keys[:keys.index(res.best.key)])
    assert res.best.measured_ms is not None and res.best.measured_ms <= budget
    assert res.n_measurements <= 16
    accs = [r.short_accuracy for r in res.reranked]
    assert accs == sorted(accs, reverse=True)
    best = json.loads((tmp_path / "b" / "best.json").read_text())
    assert best["arch"] == res.best.key and [r["key"] for r in best["short_training"]] == keys
    report = (tmp_path / "b" / "report.md").read_text()
    assert "Short training of the best-estimated candidates" in report and "after a short stand-alone training" in report
    # a second run reuses the trainings
    res2 = run_search(cfg)
    assert all(r.cached for r in res2.reranked) and res2.best.key == res.best.key
