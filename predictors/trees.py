"""A numpy evaluator for LightGBM text models (`booster.model_to_string()`).

Prediction needs neither the lightgbm package (whose import pulls scikit-learn and takes
over a second) nor its per-call overhead: all trees of a model are flattened into arrays
and walked together, one level per step, for every row at once. Numerical splits only
(the predictor encodes categories as numbers), with LightGBM's missing-value rules:
decision_type bit 1 = default left, bits 2-3 = missing type (0 none, 1 zero, 2 NaN).
`tests/test_predictor.py` checks it against `lightgbm.Booster.predict`.
"""
from __future__ import annotations

import numpy as np


class TreeModel:
    def __init__(self, text: str):
        self.text = text
        trees = []
        cur = None
        self.average_output = False
        for line in text.splitlines():
            if line.startswith("Tree="):
                cur = {}
                trees.append(cur)
            elif line.startswith("end of trees"):
                break
            elif line == "average_output":
                self.average_output = True
            elif cur is not None and "=" in line:
                k, v = line.split("=", 1)
                cur[k] = v
        feat, thr, dl, mt, left, right, leaves, roots = [], [], [], [], [], [], [], []
        n_int = n_leaf = 0
        for t in trees:
            lv = np.array(t["leaf_value"].split(), float)
            nl = int(t["num_leaves"])
            if int(t.get("num_cat", "0")) > 0:
                raise ValueError("categorical splits are not supported by the numpy evaluator")
            if nl == 1:
                roots.append(-(n_leaf + 1))
            else:
                sf = np.array(t["split_feature"].split(), int)
                th = np.array(t["threshold"].split(), float)
                dt = np.array(t["decision_type"].split(), int)
                lc = np.array(t["left_child"].split(), int)
                rc = np.array(t["right_child"].split(), int)
                remap = lambda c: np.where(c >= 0, c + n_int, -(~c + n_leaf) - 1)  # noqa: E731
                feat.append(sf)
                thr.append(th)
                dl.append((dt & 2) > 0)
                mt.append((dt >> 2) & 3)
                left.append(remap(lc))
                right.append(remap(rc))
                roots.append(n_int)
                n_int += len(sf)
            leaves.append(lv)
            n_leaf += nl
        cat = lambda xs, dtype: np.concatenate(xs).astype(dtype) if xs else np.zeros(0, dtype)  # noqa: E731
        self.feat, self.thr = cat(feat, np.int64), cat(thr, float)
        self.default_left, self.missing = cat(dl, bool), cat(mt, np.int64)
        self.left, self.right = cat(left, np.int64), cat(right, np.int64)
        self.leaf = cat(leaves, float)
        self.roots = np.array(roots, np.int64)
        self.n_trees = len(trees)

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, float)
        if X.ndim == 1:
            X = X[None, :]
        n = X.shape[0]
        if self.n_trees == 0:
            return np.zeros(n)
        cur = np.broadcast_to(self.roots, (n, self.n_trees)).copy()
        rows = np.broadcast_to(np.arange(n)[:, None], cur.shape)
        while True:
            mask = cur >= 0
            if not mask.any():
                break
            nd = cur[mask]
            x = X[rows[mask], self.feat[nd]]
            mt = self.missing[nd]
            nan = np.isnan(x)
            x = np.where(nan & (mt != 2), 0.0, x)
            default = ((mt == 2) & nan) | ((mt == 1) & (np.abs(x) <= 1e-35))
            go_left = np.where(default, self.default_left[nd], x <= self.thr[nd])
            cur[mask] = np.where(go_left, self.left[nd], self.right[nd])
        out = self.leaf[~cur].sum(axis=1)
        return out / self.n_trees if self.average_output else out

    def model_to_string(self) -> str:
        return self.text


__all__ = ["TreeModel"]
