"""Sampling: prior and uniform coverage, cost caps, adaptive refinement on a real table."""
import numpy as np
import pytest
import pandas as pd

from profiling import sampling
from profiling.errors import ProfilingError
from profiling.kernels import KINDS, KernelSpec
from profiling.profiler import Profiler
from profiling.table import read_table


def test_draws_are_valid_and_cover_the_ranges():
    rng = np.random.default_rng(0)
    for kind in KINDS:
        specs = [sampling.sample_spec(rng, kind) for _ in range(30)]
        assert all(s.kind == kind for s in specs)
        assert sum(sampling.prepare(s) is not None for s in specs) >= 20, kind  # most fit under the caps
    convs = [sampling.sample_spec(rng, "conv", uniform=True) for _ in range(400)]
    res = [s.params["h"] for s in convs]
    ch = [s.params["cin"] for s in convs]
    assert min(res) <= 9 and max(res) >= 180 and min(ch) <= 12 and max(ch) >= 1500
    prior = [sampling.sample_spec(rng, "conv", uniform=False) for _ in range(300)]
    real = {(c, r) for c, r in sampling.CNN_SHAPES}
    assert np.mean([(s.params["cin"], s.params["h"]) in real or s.params["cin"] == 3 for s in prior]) > 0.5
    styles = {("dw" if s.params["groups"] == s.params["cin"] > 1 else "g" if s.params["groups"] > 1 else s.params["kernel"])
              for s in prior}
    assert {"dw", 1, 3} <= styles
    tf = [sampling.sample_spec(rng, "transformer", uniform=False) for _ in range(100)]
    assert any(s.params["tokens"] == 197 and s.params["dim"] == 384 for s in tf)


def test_cost_caps():
    huge = KernelSpec.make("conv", cin=2048, cout=2048, h=112, w=112, kernel=3, stride=1)
    assert sampling.prepare(huge) is None
    dw = KernelSpec.make("conv", cin=1024, cout=1024, h=160, w=160, kernel=7, stride=1, groups=1024)
    assert sampling.prepare(dw) is None


def test_refinement_samples_near_the_worst_predicted_points(tmp_path):
    out = tmp_path / "t.parquet"
    Profiler("local-cpu", out, kinds=["linear"], max_configs=30, networks=0, seed=4,
             stop_rule={"max_s": 0.03, "warmup_runs": 1, "warmup_s": 0.0}, passes=2, kernel_slice_s=0.005).run()
    df, _ = read_table(out)
    worst = sampling.worst_predicted(df, "linear", top=5)
    assert len(worst) == 5 and all(w["kind"] == "linear" for w in worst)
    rng = np.random.default_rng(0)
    new = sampling.refine(df, "linear", rng, 12)
    assert len(new) == 12 and all(isinstance(s, KernelSpec) and s.kind == "linear" for s in new)
    # Each new configuration is a neighbour of a worst point: every size within ~1.5x.
    for s in new:
        assert any(all(0.6 <= s.params[p] / w[p] <= 1.6 for p in ("cin", "cout")) for w in worst)
    assert sampling.refine(pd.DataFrame(df.head(5)), "linear", rng, 5) == []  # too few rows to model


def _runs_in_onnxruntime(spec: KernelSpec, tmp_path, llc_bytes: float | None = None) -> None:
    import onnxruntime as ort
    from profiling.builders import materialize
    prepared = sampling.prepare(spec, llc_bytes=llc_bytes)
    assert prepared is not None, spec
    sess = ort.InferenceSession(materialize(prepared[0], str(tmp_path)), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape])
             .astype(np.float32) for i in sess.get_inputs()}
    out = sess.run(None, feeds)[0]
    assert np.isfinite(out).all()


def test_the_generator_draws_dilation_at_or_beyond_the_map_and_onnxruntime_runs_it(tmp_path):
    rng = np.random.default_rng(1)
    convs = [sampling.sample_spec(rng, "conv") for _ in range(1500)]
    beyond = [s for s in convs if s.params["dilation"] >= s.params["h"]]
    assert len(beyond) >= 5  # DeepLab's ASPP: most taps in the padding
    focused = [sampling.sample_spec(rng, "conv", focus=["dilation-beyond-map"]) for _ in range(60)]
    assert all(s.params["dilation"] > 1 and s.params["kernel"] == 3 for s in focused)
    assert np.mean([s.params["dilation"] >= s.params["h"] for s in focused]) > 0.3
    small = min(beyond + focused, key=lambda s: s.params["cin"] * s.params["cout"] * s.params["h"] ** 2)
    _runs_in_onnxruntime(small, tmp_path)


def test_linear_weights_beyond_the_last_level_cache_follow_the_device_cache(tmp_path):
    rng = np.random.default_rng(2)
    llc = 256 * 1024  # a small cache keeps the test's graphs small; the draw scales with it
    specs = [sampling.sample_spec(rng, "linear", llc_bytes=llc) for _ in range(300)]
    beyond = [s for s in specs if 4 * s.params["cin"] * s.params["cout"] > llc]
    assert len(beyond) >= 15
    focused = [sampling.sample_spec(rng, "linear", focus=["gemv-beyond-llc"], llc_bytes=32 * 2**20) for _ in range(40)]
    weights = [4 * s.params["cin"] * s.params["cout"] for s in focused]
    assert min(weights) >= 0.7 * 32 * 2**20 and max(weights) > 64 * 2**20
    assert all(s.params["tokens"] <= 4 for s in focused)  # a GEMV (or nearly): bound by memory bandwidth
    # the weight cap follows the cache: the largest draw of a 32 MiB cache passes it, a fixed 64 MB cap would not
    big = max(focused, key=lambda s: s.params["cin"] * s.params["cout"])
    assert 4 * big.params["cin"] * big.params["cout"] > 4 * sampling.MAX_PARAMS
    assert sampling.cost_ok(sampling.model_stats(sampling.build_model(big)), 0.0, big, 32 * 2**20)
    assert not sampling.cost_ok(sampling.model_stats(sampling.build_model(big)), 0.0, big, 4 * 2**20)
    _runs_in_onnxruntime(max((s for s in beyond), key=lambda s: s.params["cin"] * s.params["cout"]), tmp_path, llc)


def test_depthwise_conv_add_is_drawn_and_runs(tmp_path):
    rng = np.random.default_rng(3)
    specs = [sampling.sample_spec(rng, "conv_add") for _ in range(200)]
    dw = [s for s in specs if s.params["groups"] == s.params["cin"] == s.params["cout"] > 1]
    assert len(dw) >= 30 and {1, 3} <= {s.params["kernel"] for s in dw}
    focused = [sampling.sample_spec(rng, "conv_add", focus=["depthwise-conv-add"]) for _ in range(30)]
    assert all(s.params["groups"] == s.params["cin"] > 1 for s in focused)
    _runs_in_onnxruntime(min(dw, key=lambda s: s.params["cin"] * s.params["h"] ** 2), tmp_path)


def test_a_focused_profile_measures_only_the_named_configurations(tmp_path):
    out = tmp_path / "supp.parquet"
    Profiler("local-cpu", out, focus=["depthwise-conv-add"], max_configs=6, networks=0, seed=5,
             stop_rule={"max_s": 0.03, "warmup_runs": 1, "warmup_s": 0.0}, passes=2, kernel_slice_s=0.005).run()
    df, meta = read_table(out)
    kern = df[df["category"] == "kernel"]
    assert len(kern) >= 6 and set(kern["kind"]) == {"conv_add"}
    assert (kern["groups"] == kern["cin"]).all() and (kern["median_ms"] > 0).all()
    with pytest.raises(ProfilingError, match="unknown focus"):
        Profiler("local-cpu", focus=["wat"])
