"""The predictor stage's errors: one base, `PredictorStageError`, under `HwnasError`.

The concrete classes live beside the code that raises them and keep their `ValueError` base:
`PredictorError` (bad table, target or candidate), `predictors.fileformat.PredictorFileError`
(unreadable predictor file) and `predictors.graph.GraphError` (unreadable ONNX model).
"""
from __future__ import annotations

from profiling.errors import HwnasError


class PredictorStageError(HwnasError):
    """Base of the predictor stage's errors."""


class PredictorError(PredictorStageError, ValueError):
    """Bad input to the predictor (table, target, candidate); the message says how to fix it."""


__all__ = ["PredictorStageError", "PredictorError"]
