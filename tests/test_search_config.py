"""The flat SearchConfig and the typed SearchSpec the engine reads are one configuration: every
flat setting has its place in a part, the conversion loses nothing, and the defaults agree."""
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from search.config import FLAT_FIELDS, LatencyConfig, RunConfig, SearchSpec, flat_from_spec
from search.run import SearchConfig

ROOT = Path(__file__).resolve().parents[1]
PREDICTOR = str(sorted((ROOT / "data" / "predictors").glob("local-cpu__*.lgb"))[0])


def test_every_flat_setting_has_a_place_in_a_part():
    # a SearchConfig field missing from FLAT_FIELDS would be dropped on the way to the engine
    assert set(FLAT_FIELDS) == {f.name for f in fields(SearchConfig)}


def test_flat_to_typed_and_back_keeps_every_value(tmp_path):
    values = dict(space="mbv3", predictor=PREDICTOR, data="digits", data_max_per_class=40, data_image_size=16,
                  latency_budget_ms=3.5, target="local-cpu", finalists=2, verify_rounds=3, measure_ties=False,
                  out=str(tmp_path / "out"), budget_minutes=2.5, seed=7, force=True, max_measurements=9,
                  calibration=4, algorithm="random", population=6, generations=2, accuracy="proxies",
                  proxies=("synflow",), proxy_batch=16, supernet_epochs=1.5, supernet_weight=0.5,
                  reference_size=8, cache_dir=str(tmp_path / "cache"), export_best=False, progress=False,
                  space_options={"width_mult": 0.5}, rerank=2, rerank_epochs=1.0, rerank_per_class=30,
                  rerank_options={"C": 8}, rerank_resolution=8, max_params=10_000, overwrite=True,
                  remeasure_cap=3)
    config = SearchConfig(**values)
    spec = config.spec()
    assert spec.space.name == "mbv3" and spec.latency.latency_budget_ms == 3.5
    assert spec.accuracy.supernet.weight == 0.5 and spec.accuracy.rerank.top_k == 2
    assert spec.verification.rounds == 3 and spec.algorithm.name == "random" and spec.run.seed == 7
    assert flat_from_spec(spec) == asdict(config)
    assert SearchConfig.from_spec(spec) == config


def test_the_flat_and_typed_defaults_agree(tmp_path):
    out = str(tmp_path / "out")
    flat = asdict(SearchConfig(predictor=PREDICTOR, out=out))
    typed = flat_from_spec(SearchSpec(latency=LatencyConfig(predictor=PREDICTOR), run=RunConfig(out=out)))
    assert typed == flat


def test_a_wrong_flat_value_is_refused_by_its_part(tmp_path):
    from profiling.validate import ConfigError
    with pytest.raises(ConfigError, match="population"):
        SearchConfig(predictor=PREDICTOR, out=str(tmp_path / "out"), population=1).spec()
