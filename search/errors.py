"""The search stage's errors: one base, `SearchStageError`, under `HwnasError`.

The concrete classes live beside the code that raises them and keep their `ValueError` or
`RuntimeError` base: `search.problem.SearchError` (and `BudgetTooLowError`,
`search.benchmark.MeasurementLimitReached`), `search.spaces.base.SpaceError`, and in
`search.accuracy`: `DataError`, `ProxyError`, `SupernetError`, `EstimatorError`.
"""
from __future__ import annotations

from profiling.errors import HwnasError


class SearchStageError(HwnasError):
    """Base of the search stage's errors (spaces, accuracy estimation, the engine)."""


__all__ = ["SearchStageError"]
