"""Predictor files: save and load (`.lgb`, no pickle; see `fileformat`), and the cache of
parsed trees next to them.

The header layout is the file format: `kernel_linear`, `kernel_variants`, `calibration`,
`graph` (the chosen graph correction, `corrections.ChosenCorrection.to_header`), `adapters`,
`unknown_op_fallback`, `overhead_ms`, `training`; the models are LightGBM text
(`kernel/_pooled`, `kernel/<kind>`, and `graph` for a tree correction).
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import features as F
from .corrections import ChosenCorrection, kernel_correction_from_dict
from .errors import PredictorError
from .fileformat import PredictorFileError, read_predictor_file, write_predictor_file
from .kernel_models import KindModel
from .numerics import COVERAGE
from .trees import TreeModel
from profiling.paths import cache_root

if TYPE_CHECKING:  # the Predictor class imports this module
    from .model import Predictor


def predictor_header(p: "Predictor") -> tuple[dict[str, Any], dict[str, str]]:
    """(header, models) of a fitted predictor, as `save_predictor` writes them."""
    from profiling.table import hwnas_version  # lazy: profiling.table imports pyarrow (~0.3 s)
    kernels = p.kernels
    if kernels.pooled is None:
        raise PredictorError("nothing to save: fit the predictor first")
    models = {"kernel/_pooled": kernels.pooled.model_to_string()}
    for kind, m in kernels.models.items():
        models[f"kernel/{kind}"] = m.model_to_string()
    graph, tree_text = p.graph.to_header()
    if tree_text is not None:
        models["graph"] = tree_text
    header = {
        "kind": "hwnas-latency-predictor",
        "target": p.target, "fingerprint": p.fingerprint, "batch": p.batch,
        "feature_schema": {"kernel_features": list(F.KERNEL_FEATURES[:kernels.n_features]),
                           "kernel_kinds": list(F.KERNEL_KINDS),
                           "pooled_features": [*F.KERNEL_FEATURES[:kernels.n_features], "kind"],
                           "graph_features": list(F.GRAPH_FEATURES), "additive": list(F.ADDITIVE),
                           "groups": list(F.GROUPS), "kernel_target": "log(median_ms)",
                           "graph_target": "log(network ms) - log(sum of kernel ms)"},
        "calibration": {"coverage": COVERAGE, "graph_log_interval": list(p.graph_q),
                        "kernel_log_interval": {k: list(v) for k, v in kernels.q.items()},
                        "pooled_log_interval": list(kernels.pooled_q)},
        "kernel_linear": {"_pooled": kernels.pooled.coef, **{k: m.coef for k, m in kernels.models.items()}},
        "graph": graph,
        "in_network": None if p.in_network is None else p.in_network.to_dict(),
        "kernel_variants": {k: m.variant for k, m in kernels.models.items()},
        "overhead_ms": p.overhead_ms,
        "unknown_op_fallback": kernels.fallback,
        "kernel_ranges": kernels.ranges,
        "adapters": p.adapters,
        "training": p.training,
        "hwnas_version": hwnas_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return header, models


def save_predictor(p: "Predictor", path: str | os.PathLike[str]) -> None:
    header, models = predictor_header(p)
    write_predictor_file(path, header, models)


def load_predictor(cls: "type[Predictor]", path: str | os.PathLike[str], num_threads: int = 1) -> "Predictor":
    """A predictor of class `cls` from a `.lgb` file; trees come from the parsed-tree cache when it has them."""
    header, models = read_predictor_file(path)
    schema = header.get("feature_schema", {})
    kfeat = list(schema.get("kernel_features", []))
    # features are only ever appended: a file of an older hwnas reads the first len(kfeat) of them
    if not kfeat or kfeat != list(F.KERNEL_FEATURES[:len(kfeat)]) or \
            list(schema.get("graph_features", [])) != list(F.GRAPH_FEATURES):
        raise PredictorFileError(f"{path} was built with another feature schema than this hwnas uses; "
                                 "rebuild it with `train-predictor`")
    p = cls(header.get("target"), header.get("fingerprint"), header.get("batch"), num_threads=num_threads)
    kernels = p.kernels
    kernels.n_features = len(kfeat)
    try:
        lin = header["kernel_linear"]
        kernels.pooled = KindModel(lin["_pooled"], TreeModel(models["kernel/_pooled"]))
        for name, text in models.items():
            if name.startswith("kernel/") and name != "kernel/_pooled":
                kind = name.split("/", 1)[1]
                kernels.models[kind] = KindModel(lin[kind], TreeModel(text),
                                                 header.get("kernel_variants", {}).get(kind, "l2"))
        p.graph = ChosenCorrection.from_header(header.get("graph", {}), models.get("graph"))
        p.in_network = kernel_correction_from_dict(header.get("in_network"))
    except KeyError as e:
        raise PredictorFileError(f"{path} lacks the model {e}; rebuild it with `train-predictor`") from None
    except Exception as e:
        raise PredictorFileError(f"{path}: a LightGBM model cannot be read ({e}); rebuild it") from None
    cal = header.get("calibration", {})
    p.graph_q = tuple(cal.get("graph_log_interval", p.graph_q))
    kernels.q = {k: tuple(v) for k, v in cal.get("kernel_log_interval", {}).items()}
    kernels.pooled_q = tuple(cal.get("pooled_log_interval", kernels.pooled_q))
    kernels.fallback = header.get("unknown_op_fallback", kernels.fallback)
    kernels.ranges = header.get("kernel_ranges", {})
    p.overhead_ms = float(header.get("overhead_ms", 0.0))
    p.adapters = header.get("adapters", [])
    p.training = header.get("training", {})
    p.header = header
    read_tree_cache(p)
    return p


# ---- a cache of parsed trees (numpy .npz, no pickle), keyed by the file's own sha256 ----------
def tree_cache_path(digest: str) -> Path | None:
    if not digest:
        return None
    return cache_root() / "predictors" / f"{digest[:32]}.npz"


def tree_models(p: "Predictor") -> dict[str, TreeModel]:
    out = p.kernels.tree_models()
    if p.graph.tree is not None:
        out["graph"] = p.graph.tree
    return out


def write_tree_cache(p: "Predictor") -> Path | None:
    """Parse every tree model once and store the arrays next to nothing else: later loads of the
    same file (same sha256) skip parsing. Silently does nothing where the cache is not writable."""
    path = tree_cache_path(p.header.get("_file_sha256", ""))
    if path is None or path.exists():
        return path
    try:
        models = tree_models(p)
        names = list(models)
        parsed = [models[nm].arrays() for nm in names]
        arrays = {"names": np.array(names)}
        for k in TreeModel._ARRAYS:  # one array per field, all models concatenated (few npz entries)
            arrays[k] = np.concatenate([d[k] for d in parsed])
            arrays[f"{k}__len"] = np.array([len(d[k]) for d in parsed], np.int64)
        arrays["scalars"] = np.array([[float(d[k]) for k in TreeModel._SCALARS] for d in parsed])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub reads a key as allow_pickle
        os.replace(tmp, path)
        return path
    except OSError:
        return None


def read_tree_cache(p: "Predictor") -> None:
    path = tree_cache_path(p.header.get("_file_sha256", ""))
    if path is None or not path.exists():
        return
    try:
        with np.load(path, allow_pickle=False) as z:
            names = [str(x) for x in z["names"]]
            data: dict[str, dict[str, Any]] = {nm: {} for nm in names}
            for k in TreeModel._ARRAYS:
                parts = np.split(z[k], np.cumsum(z[f"{k}__len"])[:-1])
                for nm, part in zip(names, parts):
                    data[nm][k] = part
            for nm, row in zip(names, z["scalars"]):
                for k, v in zip(TreeModel._SCALARS, row):
                    data[nm][k] = v
        kernels = p.kernels
        if kernels.pooled is not None and "kernel/_pooled" in data:
            kernels.pooled.tree = TreeModel.from_arrays(kernels.pooled.tree.text, data["kernel/_pooled"])
        for kind, m in kernels.models.items():
            if f"kernel/{kind}" in data:
                m.tree = TreeModel.from_arrays(m.tree.text, data[f"kernel/{kind}"])
        tree = p.graph.tree
        if tree is not None and "graph" in data:
            p.graph.model.tree = TreeModel.from_arrays(tree.text, data["graph"])  # type: ignore[union-attr]
    except Exception:  # a damaged cache is ignored: the text models are the truth
        return


__all__ = ["save_predictor", "load_predictor", "predictor_header", "write_tree_cache", "read_tree_cache",
           "tree_cache_path"]
