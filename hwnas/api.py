"""The front door's functions: thin wrappers over the stage packages.

Each imports its stage inside the function: the search spaces and the search import torch and
pymoo (seconds), the profiler onnx and onnxruntime; `import hwnas` stays fast for a script
that only loads a predictor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.wiring import load_best as _load_best

if TYPE_CHECKING:
    import torch

    from profiling.profiler import ProfileSummary
    from profiling.targets import Target
    from search.config import SearchSpec
    from search.run import SearchConfig, SearchResult
    from search.spaces.base import SearchSpace


def profile(
    target: "str | Target" = "local-cpu", out: str | os.PathLike[str] | None = None, **options: Any
) -> "ProfileSummary":
    """Measure a target into a latency table (`profiling.profiler.Profiler`; `options` are its
    keyword arguments: hosts, kinds, budget_minutes, max_configs, networks, seed, resume, ...)."""
    from profiling.profiler import Profiler  # lazy: imports onnx and onnxruntime

    return Profiler(target, out, **options).run()


def search(config: "SearchConfig | SearchSpec | None" = None, **fields: Any) -> "SearchResult":
    """Run a search: a `search.run.SearchConfig`, a typed `search.config.SearchSpec`, or the
    SearchConfig's fields as keyword arguments (space, predictor, data, latency_budget_ms,
    min_accuracy, budget_minutes, out, ...)."""
    from search.run import SearchConfig, run_search  # lazy: the search imports torch and pymoo (seconds)

    if config is not None and fields:
        raise TypeError("give either a SearchConfig or its fields as keyword arguments, not both")
    return run_search(config if config is not None else SearchConfig(**fields))


def get_space(name: str, **options: Any) -> "SearchSpace[Any]":
    """A search space by name (`nb201`, `mbv3`, `resnet`; see `search.spaces`)."""
    from search.spaces import get_space as _get_space  # lazy: the spaces build torch modules

    return _get_space(name, **options)


def load_best(path: str | os.PathLike[str]) -> "torch.nn.Module":
    """The network a search wrote to `best.pt`: a `torch.nn.Module` with the searched weights, in
    eval mode (its space rebuilt with the options the search used)."""
    model: torch.nn.Module = _load_best(Path(path))
    return model


__all__ = ["profile", "search", "get_space", "load_best"]
