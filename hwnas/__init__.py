"""hwnas: hardware-aware neural architecture search, the public API.

Profile a device once into a latency table, train a latency predictor on it, and search the
accuracy/latency frontier of a search space with it:

    import hwnas

    summary = hwnas.profile("local-cpu", "tables/", budget_minutes=30)      # device -> table
    p = hwnas.Predictor().fit("tables/local-cpu.parquet")                   # table -> predictor
    p.save("my.lgb")
    p.predict("model.onnx").latency_ms                                      # any ONNX graph
    result = hwnas.search(space="nb201", predictor="my.lgb", latency_budget_ms=5.0)
    result.best.arch

    try:
        ...
    except hwnas.HwnasError as e:   # every problem a user can fix; the message says how
        print(e)

The stage packages (`profiling`, `predictors`, `search`) hold the implementation; this
package is the stable front door. See docs/architecture.md.
"""

from __future__ import annotations

from predictors.errors import PredictorError, PredictorStageError
from predictors.model import Prediction, Predictor
from profiling.errors import HwnasError, ProfilingError, ProfilingStageError
from profiling.targets import Target, get_target, list_targets
from profiling.validate import ConfigError
from search.errors import SearchStageError

from .api import get_space, load_best, profile, search

__version__ = "0.1.0"

__all__ = [
    "Predictor",
    "Prediction",
    "profile",
    "search",
    "get_space",
    "load_best",
    "get_target",
    "list_targets",
    "Target",
    "HwnasError",
    "ProfilingStageError",
    "PredictorStageError",
    "SearchStageError",
    "ProfilingError",
    "PredictorError",
    "ConfigError",
    "__version__",
]
