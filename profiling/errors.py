"""The error family of hwnas: one root, one base per stage, and the profiling stage's error.

Every error hwnas raises for something a user must fix derives from `HwnasError`, through the
base of the stage that raised it:

    HwnasError
    ├── profiling.validate.ConfigError   a configuration value, checked before any work (any stage)
    ├── ProfilingStageError   profiling.errors.ProfilingError, profiling.kernels.KernelSpecError,
    │                         profiling.targets.TargetError
    ├── PredictorStageError   (predictors.errors) PredictorError, PredictorFileError, GraphError
    └── SearchStageError      (search.errors) SearchError (BudgetTooLowError, MeasurementLimitReached),
                              SpaceError, DataError, ProxyError, SupernetError, EstimatorError

The root lives here because `profiling` is the bottom layer that every stage may import (data
flows profiling -> predictors -> search); users reach it as `hwnas.HwnasError`. The concrete
classes keep their `ValueError`/`RuntimeError` bases, so code that caught those still does.
"""
from __future__ import annotations


class HwnasError(Exception):
    """Root of every error hwnas raises for a problem the user can fix; the message says how."""


class ProfilingStageError(HwnasError):
    """Base of the profiling stage's errors (device, target, kernel specs, tables)."""


class ProfilingError(ProfilingStageError, RuntimeError):
    """A clear, user-facing problem (bad input, unreachable host, unwritable output...).

    The CLI prints the message and exits non-zero, without a traceback.
    """


__all__ = ["HwnasError", "ProfilingStageError", "ProfilingError"]
