"""A numpy evaluator for LightGBM text models (`booster.model_to_string()`).

Prediction needs neither the lightgbm package (whose import pulls scikit-learn and takes
over a second) nor its per-call overhead: all trees of a model are flattened into arrays
and walked together, one level per step, for every row at once. Numerical splits only
(the predictor encodes categories as numbers), with LightGBM's missing-value rules:
decision_type bit 1 = default left, bits 2-3 = missing type (0 none, 1 zero, 2 NaN).
`tests/test_predictor.py` checks it against `lightgbm.Booster.predict`.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np


class TreeModel:
    """Parsed lazily on the first prediction, so loading a predictor file costs little."""

    # set by `_parse` (declared only: until then, `__getattr__` parses on first access)
    feat: np.ndarray
    thr: np.ndarray
    default_left: np.ndarray
    missing: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf: np.ndarray
    root_nodes: np.ndarray
    tree_depth: np.ndarray
    children: np.ndarray
    roots: np.ndarray
    n_int: int
    n_trees: int
    depth: int
    average_output: bool
    has_zero_missing: bool

    def __init__(self, text: str, lazy: bool = True):
        self.text = text
        self._parsed = False
        if not lazy:
            self._parse()

    def __getattr__(self, name: str) -> Any:  # the parsed arrays, on first access
        if name.startswith("__") or self.__dict__.get("_parsed", True):
            raise AttributeError(name)
        self._parse()
        return getattr(self, name)

    def _parse(self) -> None:
        """Vectorised: each field of all trees is joined and converted by one numpy call."""
        self._parsed = True
        self.average_output = False
        text = self.text
        end = text.find("end of trees")
        body = text if end < 0 else text[:end]
        self.average_output = re.search(r"^average_output$", text[:text.find("Tree=")] if "Tree=" in text else text,
                                        re.M) is not None
        keys = ("num_leaves", "num_cat", "split_feature", "threshold", "decision_type", "left_child",
                "right_child", "leaf_value")
        fields: dict[str, list[str]] = {k: [] for k in keys}
        for k, v in re.findall(r"^(" + "|".join(keys) + r")=(.*)$", body, re.M):  # one pass over the text
            fields[k].append(v)
        # single-leaf trees lack the split fields; num_cat is written for every tree
        nl = np.array(fields["num_leaves"], np.int64)
        if (np.array(fields["num_cat"], np.int64) > 0).any():
            raise ValueError("categorical splits are not supported by the numpy evaluator")

        def num(k: str, dt: Any) -> np.ndarray:
            return (np.fromstring(" ".join(fields[k]), dtype=float, sep=" ").astype(dt)
                    if fields[k] else np.zeros(0, dt))
        self.leaf = num("leaf_value", float)
        feat, thr = num("split_feature", np.int64), num("threshold", float)
        dt = num("decision_type", np.int64)
        lc, rc = num("left_child", np.int64), num("right_child", np.int64)
        n_split = np.where(nl > 1, nl - 1, 0)
        int_off = np.concatenate([[0], np.cumsum(n_split)[:-1]]) if len(nl) else np.zeros(0, np.int64)
        leaf_off = np.concatenate([[0], np.cumsum(nl)[:-1]]) if len(nl) else np.zeros(0, np.int64)
        n_int = int(n_split.sum())
        io, lo = np.repeat(int_off, n_split), np.repeat(leaf_off, n_split)

        def remap(c: np.ndarray) -> np.ndarray:  # leaf L encoded as ~L
            return np.where(c >= 0, c + io, ~((~c) + lo))
        left, right = remap(lc), remap(rc)
        default_left, missing = (dt & 2) > 0, (dt >> 2) & 3
        self.roots = np.where(nl > 1, int_off, ~leaf_off)
        self.n_trees = len(nl)
        # One node array: internal nodes first, then leaves as self-loops (feature 0, threshold +inf),
        # so every row walks every tree for `depth` steps with no masking.
        n_leaf_total = len(self.leaf)

        def to_node(c: np.ndarray) -> np.ndarray:
            return np.where(c >= 0, c, n_int + (~c))
        self.feat = np.concatenate([feat, np.zeros(n_leaf_total, np.int64)])
        self.thr = np.concatenate([thr, np.full(n_leaf_total, np.inf)])
        self.default_left = np.concatenate([default_left, np.ones(n_leaf_total, bool)])
        self.missing = np.concatenate([missing, np.zeros(n_leaf_total, np.int64)])
        leaf_ids = np.arange(n_int, n_int + n_leaf_total)
        self.left = np.concatenate([to_node(left), leaf_ids])
        self.right = np.concatenate([to_node(right), leaf_ids])
        self.root_nodes = to_node(self.roots)
        self.n_int = n_int
        self.has_zero_missing = bool((missing == 1).any())
        self.children = np.column_stack([self.left, self.right]).ravel()  # node*2 (+1 when going right)
        # the deepest path, for the number of steps
        depth = np.zeros(len(self.feat), np.int64)
        for _ in range(n_int + 1):  # fixpoint: about max-depth vectorised steps
            new = depth.copy()
            new[:n_int] = 1 + np.maximum(depth[self.left[:n_int]], depth[self.right[:n_int]])
            if np.array_equal(new, depth):
                break
            depth = new
        self.tree_depth = depth[self.root_nodes] if self.n_trees else np.zeros(0, np.int64)
        self.depth = int(self.tree_depth.max()) if self.n_trees else 0

    def predict(self, X: np.ndarray) -> np.ndarray:
        if not self._parsed:
            self._parse()
        X = np.asarray(X, float)
        if X.ndim == 1:
            X = X[None, :]
        n = X.shape[0]
        if self.n_trees == 0 or n == 0:
            return np.zeros(n)
        nf = X.shape[1]
        Xf = np.ascontiguousarray(X).ravel()
        nanx = bool(np.isnan(X).any())
        out = np.zeros(n)
        # trees in chunks: [n, chunk] index arrays stay small enough for the cache
        for t0 in range(0, n, 1024):  # and rows in blocks
            rows_blk = slice(t0, min(n, t0 + 1024))
            nb = rows_blk.stop - rows_blk.start
            rows = (np.arange(rows_blk.start, rows_blk.stop, dtype=np.int64) * nf)[:, None]
            acc = np.zeros(nb)
            chunk = max(1, min(self.n_trees, 65536 // nb))
            for c0 in range(0, self.n_trees, chunk):
                roots = self.root_nodes[c0:c0 + chunk]
                cur = np.broadcast_to(roots, (nb, len(roots))).copy()
                for _ in range(int(self.tree_depth[c0:c0 + chunk].max())):
                    cur = self._step(cur, Xf, rows, nanx)
                acc += self.leaf[cur - self.n_int].sum(axis=1)
            out[rows_blk] = acc
        return out / self.n_trees if self.average_output else out

    def _step(self, cur: np.ndarray, Xf: np.ndarray, rows: np.ndarray, nanx: bool) -> np.ndarray:
        x = Xf.take(rows + self.feat.take(cur))
        if nanx or self.has_zero_missing:
            mt = self.missing[cur]
            nan = np.isnan(x)
            x = np.where(nan & (mt != 2), 0.0, x)
            default = ((mt == 2) & nan) | ((mt == 1) & (np.abs(x) <= 1e-35))
            go_left = np.where(default, self.default_left[cur], x <= self.thr[cur])
            nxt: np.ndarray = np.where(go_left, self.left[cur], self.right[cur])
        else:
            nxt = self.children.take(2 * cur + (x > self.thr.take(cur)))
        return nxt

    _ARRAYS = ("feat", "thr", "default_left", "missing", "left", "right", "leaf", "root_nodes", "tree_depth",
               "children", "roots")
    _SCALARS = ("n_int", "n_trees", "depth", "average_output", "has_zero_missing")

    def arrays(self) -> dict[str, np.ndarray]:
        """The parsed form (numpy arrays), for `predictors.model`'s parse cache."""
        if not self._parsed:
            self._parse()
        d = {k: getattr(self, k) for k in self._ARRAYS}
        d.update({k: np.array(getattr(self, k)) for k in self._SCALARS})
        return d

    @classmethod
    def from_arrays(cls, text: str, d: Mapping[str, Any]) -> "TreeModel":
        t = cls(text)
        for k in cls._ARRAYS:
            setattr(t, k, np.asarray(d[k]))
        for k in cls._SCALARS:
            v = np.asarray(d[k]).item()
            setattr(t, k, bool(v) if k in ("average_output", "has_zero_missing") else int(v))
        t._parsed = True
        return t

    def model_to_string(self) -> str:
        return self.text


def average_models(texts: "list[str]") -> str:
    """One LightGBM model text whose prediction is the mean of the given boosted models: their
    trees side by side, each leaf value divided by the number of models (for `TreeModel`; the
    header is the first model's)."""
    if len(texts) == 1:
        return texts[0]
    k = len(texts)

    def scale(m: re.Match[str]) -> str:
        vals = np.array(m.group(1).split(), float) / k
        return "leaf_value=" + " ".join(repr(float(v)) for v in vals)

    head = texts[0][:texts[0].find("Tree=")]
    blocks, n = [], 0
    for t in texts:
        start, end = t.find("Tree="), t.find("end of trees")
        body = t[start:end if end >= 0 else len(t)]
        for tree in re.split(r"(?m)^(?=Tree=\d+$)", body):
            if not tree.startswith("Tree="):
                continue
            tree = re.sub(r"(?m)^Tree=\d+$", f"Tree={n}", tree, count=1)
            blocks.append(re.sub(r"(?m)^leaf_value=(.*)$", scale, tree))
            n += 1
    return head + "".join(blocks) + "end of trees\n"


def train_tree_model(X: np.ndarray, y: np.ndarray, params: dict[str, Any], rounds: int, names: Sequence[str],
                     weight: "np.ndarray | None" = None) -> TreeModel:
    """Boost a LightGBM regressor and keep its text model (evaluated by `TreeModel`, no pickle)."""
    import lightgbm as lgb  # lazy: lightgbm (and the scikit-learn it pulls) takes over a second; only training needs it
    ds = lgb.Dataset(X, y, weight=weight, feature_name=list(names), free_raw_data=True, params={"verbose": -1})
    return TreeModel(lgb.train(params, ds, num_boost_round=rounds).model_to_string())


__all__ = ["TreeModel", "average_models", "train_tree_model"]
