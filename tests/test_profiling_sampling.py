"""Sampling: prior and uniform coverage, cost caps, adaptive refinement on a real table."""
import numpy as np
import pandas as pd

from profiling import sampling
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
