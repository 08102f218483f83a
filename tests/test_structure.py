"""The codebase's seams: the `hwnas` front door, the error family, the graph-correction
registry and the value-keyed spec cache of the batch path."""
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "data" / "predictors").glob("*.lgb"))


@pytest.fixture(autouse=True)
def _tree_cache_in_tmp(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path_factory.getbasetemp() / "hwnas-cache"))


# ---- the front door ----------------------------------------------------------------------
def test_import_hwnas_exposes_the_public_api():
    import hwnas
    import predictors
    import profiling.errors
    import profiling.targets
    for name in ("Predictor", "profile", "search", "get_space", "get_target", "HwnasError"):
        assert name in hwnas.__all__ and hasattr(hwnas, name)
    assert all(hasattr(hwnas, n) for n in hwnas.__all__)
    assert hwnas.Predictor is predictors.Predictor
    assert hwnas.HwnasError is profiling.errors.HwnasError
    assert hwnas.get_target is profiling.targets.get_target
    assert hwnas.get_target("local-cpu").name == "local-cpu"
    space = hwnas.get_space("nb201")
    arch = space.sample(0)
    assert space.kernel_specs(arch)


def test_hwnas_search_refuses_a_config_and_fields_together():
    import hwnas
    from search.run import SearchConfig
    with pytest.raises(TypeError, match="not both"):
        hwnas.search(SearchConfig(), space="nb201")


# ---- one error root -----------------------------------------------------------------------
def _stage_errors(tmp_path):
    """(stage base, callable raising a real error of that stage, the concrete class, its builtin base)."""
    from predictors import Predictor, PredictorError, PredictorFileError
    from predictors.errors import PredictorStageError
    from predictors.graph import GraphError, load_graph
    from profiling.errors import ProfilingError, ProfilingStageError
    from profiling.kernels import KernelSpec, KernelSpecError
    from profiling.profiler import Profiler
    from profiling.targets import TargetError, get_target
    from search.accuracy.data import DataError, load_dataset
    from search.accuracy.proxies import ProxyError, canonical_names
    from search.errors import SearchStageError
    from search.models import load_predictor
    from search.problem import SearchError
    from search.spaces import SpaceError, get_space
    return [
        (ProfilingStageError, lambda: get_target("no-such-target"), TargetError, ValueError),
        (ProfilingStageError, lambda: KernelSpec.make("no-such-kind"), KernelSpecError, ValueError),
        (ProfilingStageError, lambda: Profiler("local-cpu", None, kinds=["no-such-kind"]), ProfilingError, RuntimeError),
        (PredictorStageError, lambda: Predictor(graph_cv="neither"), PredictorError, ValueError),
        (PredictorStageError, lambda: Predictor.load("/no/such/file.lgb"), PredictorFileError, ValueError),
        (PredictorStageError, lambda: load_graph(_junk(tmp_path)), GraphError, ValueError),
        (SearchStageError, lambda: get_space("no-such-space"), SpaceError, ValueError),
        (SearchStageError, lambda: canonical_names(["no-such-proxy"]), ProxyError, ValueError),
        (SearchStageError, lambda: load_dataset("/no/such/folder"), DataError, ValueError),
        (SearchStageError, lambda: load_predictor("/no/such/file.lgb"), SearchError, RuntimeError),
    ]


def _junk(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not an onnx model")
    return path


def test_hwnas_error_catches_every_stage_and_keeps_the_builtin_bases(tmp_path):
    import hwnas
    for stage, fail, cls, builtin in _stage_errors(tmp_path):
        with pytest.raises(hwnas.HwnasError) as info:
            fail()
        assert type(info.value) is cls or isinstance(info.value, cls)
        assert isinstance(info.value, stage) and isinstance(info.value, builtin)
        others = {hwnas.ProfilingStageError, hwnas.PredictorStageError, hwnas.SearchStageError} - {stage}
        assert not any(isinstance(info.value, o) for o in others)
        assert str(info.value)


def test_a_configuration_error_is_an_hwnas_error_naming_its_parameter():
    import hwnas
    from profiling.validate import check_range
    with pytest.raises(hwnas.ConfigError) as info:
        check_range("min_accuracy", 150, 0, 100)
    assert isinstance(info.value, hwnas.HwnasError) and isinstance(info.value, ValueError)
    assert info.value.param == "min_accuracy"


def test_the_accuracy_errors_belong_to_the_search_stage():
    from search.accuracy.estimator import EstimatorError
    from search.accuracy.supernet import SupernetError
    from search.errors import SearchStageError
    assert issubclass(EstimatorError, SearchStageError) and issubclass(EstimatorError, ValueError)
    assert issubclass(SupernetError, SearchStageError) and issubclass(SupernetError, RuntimeError)


# ---- graph corrections ----------------------------------------------------------------------
def _graph_data(n=60, seed=0):
    from predictors import features as F
    rng = np.random.default_rng(seed)
    sums = np.abs(rng.normal(1.0, 0.5, (n, len(F.ADDITIVE)))) + 0.01
    peak = np.abs(rng.normal(1e5, 1e4, n))
    X = F.graph_features(sums, peak)
    r = 0.1 * np.tanh(np.nan_to_num(X[:, 0])) + rng.normal(0, 0.02, n)
    return X, sums, peak, r


def test_every_registered_correction_round_trips_through_to_dict():
    from predictors.corrections import CORRECTIONS, GRAPH_CANDIDATES, FitContext, GraphCorrection, fit_candidate
    X, S, _, r = _graph_data()
    ctx = FitContext(seed=0, tree_params=lambda n: {"objective": "regression", "verbose": -1, "num_threads": 1,
                                                     "min_data_in_leaf": 5, "deterministic": True},
                     tree_rounds=20, ensemble=2)
    assert set(CORRECTIONS) == {t for t, _ in GRAPH_CANDIDATES.values()}
    for name in GRAPH_CANDIDATES:
        m = fit_candidate(name, X, r, S, ctx)
        assert isinstance(m, GraphCorrection) and m.type_name == GRAPH_CANDIDATES[name][0]
        back = CORRECTIONS[m.type_name].from_dict(m.to_dict())
        assert np.array_equal(back.predict(X, S), m.predict(X, S)), name
        if name not in ("sum", "scale"):
            assert np.std(m.predict(X, S)) > 0, name  # a model, not a constant


def test_chosen_correction_survives_the_file_header_with_its_blend_and_clip():
    from predictors.corrections import ChosenCorrection, FitContext, fit_candidate
    X, S, peak, r = _graph_data()
    ctx = FitContext(seed=0, tree_params=lambda n: {"objective": "regression", "verbose": -1, "num_threads": 1,
                                                     "min_data_in_leaf": 5}, tree_rounds=20, ensemble=1)
    for name in ("ridge", "group_scale@0.03", "lgbm", "scale", "sum"):
        m = fit_candidate(name, X, r, S, ctx)
        chosen = ChosenCorrection(m.type_name, m, float(np.median(r)), 0.5, (float(r.min()), 0.05))
        header, tree_text = chosen.to_header()
        assert (tree_text is not None) == (m.type_name == "lgbm")
        back = ChosenCorrection.from_header(header, tree_text)
        assert np.array_equal(back.predict(S, peak), chosen.predict(S, peak)), name
        if not m.constant:  # blended toward the offset, after clipping at 0.05
            expected = 0.5 * np.median(r) + 0.5 * np.clip(m.predict(X, S), r.min(), 0.05)
            assert np.allclose(chosen.predict(S, peak), expected, rtol=0, atol=1e-12)
    # a constant correction is used as fitted: neither clipped nor blended
    scale = ChosenCorrection("scale", fit_candidate("scale", X, r, S, ctx), 0.2, 0.5, (-0.1, 0.1))
    assert np.all(scale.predict(S, peak) == 0.2)


@pytest.mark.skipif(not SHIPPED, reason="no shipped predictor in data/predictors")
def test_shipped_predictor_correction_is_the_header_formula():
    """The shipped file's correction, rebuilt by the registry, is the formula its header describes."""
    from predictors import Predictor
    from predictors import features as F
    p = Predictor.load(SHIPPED[0])
    g = p.header["graph"]
    assert p.graph_type == g["type"] and p.graph.offset == g["offset"]
    from profiling.networks import network_kernels, sample_network
    rng = np.random.default_rng(5)
    cands = [network_kernels(sample_network(rng)) for _ in range(6)]
    sums, peak = p._graph_inputs(cands)
    X = F.graph_features(sums, peak)
    if g["type"] == "ridge":
        d = g["ridge"]
        Xc = X if d.get("cols") is None else X[:, d["cols"]]
        expected = d["intercept"] + ((np.nan_to_num(Xc) - np.array(d["mean"])) / np.array(d["std"])) @ np.array(d["coef"])
    elif g["type"] == "lgbm":
        expected = p.graph_model.predict(X)
    else:
        pytest.skip(f"the first shipped predictor uses {g['type']}")
    if g.get("clip") is not None:
        expected = np.clip(expected, *g["clip"])
    if g.get("blend") is not None:
        expected = (1 - g["blend"]) * g["offset"] + g["blend"] * expected
    assert np.allclose(p.graph.predict(sums, peak), expected, rtol=1e-12, atol=0)


# ---- the spec cache ---------------------------------------------------------------------------
@pytest.mark.skipif(not SHIPPED, reason="no shipped predictor in data/predictors")
def test_spec_cache_hits_on_equal_specs_in_new_objects():
    from predictors import Predictor
    from profiling.kernels import KernelSpec
    from search.spaces import get_space
    p = Predictor.load(SHIPPED[0])
    space = get_space("nb201")
    archs = [space.sample(i) for i in range(12)]
    cands = [space.kernel_specs(a) for a in archs]
    med, lo, hi = p.predict_specs(cands)
    n_specs, n_cands = len(p._cache.rows), len(p._cache.pred_index)
    copies = [[KernelSpec.from_dict(s.to_dict()) for s in c] for c in cands]
    assert all(x is not y for c, d in zip(cands, copies) for x, y in zip(c, d))
    med2, lo2, hi2 = p.predict_specs(copies)
    assert (len(p._cache.rows), len(p._cache.pred_index)) == (n_specs, n_cands)  # nothing new was computed
    assert np.array_equal(med, med2) and np.array_equal(lo, lo2) and np.array_equal(hi, hi2)
    # a fresh predictor, asked for the copies first, predicts the same numbers
    q = Predictor.load(SHIPPED[0])
    assert np.array_equal(q.predict_specs(copies)[0], med)


def test_a_spec_pickled_into_another_process_equals_and_hashes_as_its_own():
    """Specs travel to Ray tasks and worker processes; str hashes differ between processes, so a
    spec must not carry its sender's hash (a pickled dict of specs missed an equal spec)."""
    import pickle
    import subprocess
    import sys
    from profiling.kernels import KernelSpec
    spec = KernelSpec.make("conv", cin=8, cout=16, h=8, w=8, kernel=3, stride=1)
    code = ("import pickle, sys; sys.path.insert(0, sys.argv[1]); from profiling.kernels import KernelSpec; "
            "d = pickle.loads(sys.stdin.buffer.read()); "
            "t = KernelSpec.make('conv', cin=8, cout=16, h=8, w=8, kernel=3, stride=1); "
            "print(d.get(t), hash(t) == hash(next(iter(d))))")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parents[1])],
                         input=pickle.dumps({spec: 7}), capture_output=True, check=True).stdout.decode().split()
    assert out == ["7", "True"]


def test_spec_cache_names_a_foreign_candidate_element():
    from predictors import PredictorError
    from predictors.spec_cache import SpecCache
    with pytest.raises(PredictorError, match="not a KernelSpec"):
        SpecCache(3).index(["conv"], [])
