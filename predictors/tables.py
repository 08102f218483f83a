"""Latency tables as the predictor reads them: loading, kernel rows, network rows."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from profiling.kernels import KINDS, KernelSpec

from .errors import PredictorError
from profiling.fingerprint import fingerprint_hash


def load_tables(paths: Sequence[str | os.PathLike[str]]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read and concatenate tables measured on the same target; metadata of the first."""
    # lazy: pyarrow (behind profiling.table) costs ~0.3 s to import, and loading a predictor
    # to predict never reads a table
    from profiling.table import read_table
    frames, meta0 = [], None
    for p in paths:
        if not Path(p).exists():
            raise PredictorError(f"table {p} does not exist; profile the device into it first (profile-device, hwnas.profile)")
        try:
            df, meta = read_table(p)
        except Exception as e:
            raise PredictorError(f"cannot read table {p}: {e}") from None
        if meta0 is None:
            meta0 = meta
        else:
            a, b = meta0.get("fingerprint", {}), meta.get("fingerprint", {})
            if fingerprint_hash(a) != fingerprint_hash(b):
                raise PredictorError(f"table {p} was measured on another device or setting than {paths[0]} "
                                     "(fingerprints differ); train one predictor per target")
        frames.append(df)
    if not frames:
        raise PredictorError("no table given: give the path of at least one latency table")
    df = pd.concat(frames, ignore_index=True).drop_duplicates("config_id", keep="last").reset_index(drop=True)
    return df, meta0 or {}


def row_spec(row: dict[str, Any]) -> KernelSpec:
    """The KernelSpec of one kernel or block row of a table."""
    d = {"kind": row["kind"]}
    for p in KINDS[row["kind"]].params:
        v = row.get(p)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            d[p] = v
    return KernelSpec.from_dict(d)


def network_specs(spec_json: str | dict[str, Any]) -> list[KernelSpec]:
    """The kernels of a profiled network (`network_spec` column), as the batch path sees them."""
    from profiling.networks import network_kernels  # lazy: imports onnx, which prediction from specs does not need
    spec = json.loads(spec_json) if isinstance(spec_json, str) else spec_json
    return network_kernels(spec)


__all__ = ["load_tables", "row_spec", "network_specs"]
