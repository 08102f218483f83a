"""Where hwnas keeps files: the user's cache root and the data shipped in the repository.

    from profiling.paths import SHIPPED_PREDICTORS, cache_root
    cache_root() / "predictors"       # predictors calibrated on this machine

One spelling for every stage and the command line. It lives in the bottom layer, and imports
nothing heavy, so that a command's help text (predict-latency names the shipped predictors)
stays fast: `predictors/`'s package import loads the whole predictor (pandas, LightGBM).
"""
from __future__ import annotations

import os
from pathlib import Path

#: the repository's data/ directory: the latency tables and predictors shipped with hwnas
SHIPPED_DATA = Path(__file__).resolve().parents[1] / "data"
#: the predictors shipped in the repository, where every command looks first
SHIPPED_PREDICTORS = SHIPPED_DATA / "predictors"
#: the latency tables shipped in the repository
SHIPPED_TABLES = SHIPPED_DATA / "tables"


def cache_root() -> Path:
    """The root of everything hwnas caches outside the repository: `$HWNAS_CACHE`, else
    `~/.cache/hwnas`. Read at each call, so a changed environment (a test's) takes effect."""
    return Path(os.environ.get("HWNAS_CACHE") or Path.home() / ".cache" / "hwnas")


__all__ = ["SHIPPED_DATA", "SHIPPED_PREDICTORS", "SHIPPED_TABLES", "cache_root"]
