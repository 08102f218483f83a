"""The one exception type the profiling stage raises for things a user must fix."""
from __future__ import annotations


class ProfilingError(RuntimeError):
    """A clear, user-facing problem (bad input, unreachable host, unwritable output...).

    The CLI prints the message and exits non-zero, without a traceback.
    """


__all__ = ["ProfilingError"]
