"""Numerical helpers shared by every model in hwnas: ridge solves, k-fold splits, conformal
intervals and the accuracy metrics of latency predictions.

One place for each, so that the kernel models, the graph corrections, the few-shot adapters
(`predictors.adapt`) and the search's measured-latency correction (`search.verify`) solve and
score the same way.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]

COVERAGE = 0.8  # the nominal coverage of the predictor's intervals


# ---- ridge ------------------------------------------------------------------------------
def ridge_gram(A: Array, penalty: ArrayLike = 0.0, weights: Array | None = None, jitter: float = 0.0) -> Array:
    """The normal-equation matrix A'WA + diag(penalty) (+ jitter I) of a weighted ridge fit.

    `penalty` is one number (every coefficient) or one per column (0 leaves a column free).
    """
    Aw = A if weights is None else A * weights[:, None]
    pen = np.asarray(penalty, float)
    G = Aw.T @ A + (pen * np.eye(A.shape[1]) if pen.ndim == 0 else np.diag(pen))
    if jitter:
        G = G + jitter * np.eye(A.shape[1])
    return G


def ridge_solve(A: Array, t: Array, penalty: ArrayLike = 0.0, weights: Array | None = None,
                jitter: float = 0.0) -> Array:
    """Coefficients minimising sum w (A c - t)^2 + c' diag(penalty) c (see `ridge_gram`)."""
    Aw = A if weights is None else A * weights[:, None]
    return np.asarray(np.linalg.solve(ridge_gram(A, penalty, weights, jitter), Aw.T @ t), float)


# ---- k-fold -----------------------------------------------------------------------------
def kfold_ids(n: int, k: int, seed: int) -> NDArray[np.int64]:
    """Balanced fold numbers 0..k-1 of n rows, shuffled by `seed`."""
    return np.asarray(np.random.default_rng(seed).permutation(n) % k, np.int64)


def kfold_masks(n: int, k: int, seed: int) -> list[NDArray[np.bool_]]:
    """The k training masks (True = train) of `kfold_ids(n, k, seed)`."""
    folds = kfold_ids(n, k, seed)
    return [folds != f for f in range(k)]


def out_of_fold(folds: NDArray[np.int64], k: int,
                fit_predict: Callable[[NDArray[np.bool_]], Array]) -> Array:
    """Out-of-fold predictions: fit_predict(train_mask) returns the predictions of the held-out rows."""
    oof = np.zeros(len(folds))
    for f in range(k):
        tr = folds != f
        oof[~tr] = fit_predict(tr)
    return oof


# ---- conformal intervals ----------------------------------------------------------------
def conformal_interval(residuals: ArrayLike, coverage: float = COVERAGE) -> tuple[float, float]:
    """Lower/upper quantiles of log residuals with the finite-sample correction."""
    r = np.sort(np.asarray(residuals, float))
    n = len(r)
    if n == 0:
        return -0.2, 0.2
    a = (1 - coverage) / 2
    lo_i = max(0, int(math.floor(a * (n + 1))) - 1)
    hi_i = min(n - 1, int(math.ceil((1 - a) * (n + 1))) - 1)
    return float(r[lo_i]), float(r[hi_i])


# ---- metrics ----------------------------------------------------------------------------
def metrics(y: ArrayLike, pred: ArrayLike, low: ArrayLike | None = None,
            high: ArrayLike | None = None) -> dict[str, float]:
    """n, share within ±10%, MAPE, Spearman rank correlation (and interval coverage)."""
    from scipy.stats import spearmanr  # lazy: scipy.stats takes ~0.3 s to import; only training needs it
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    rel = np.abs(pred - y) / y
    out = {"n": int(len(y)), "within10": float(np.mean(rel <= 0.10)) if len(y) else math.nan,
           "mape": float(np.mean(rel)) if len(y) else math.nan,
           "spearman": float(spearmanr(y, pred).correlation) if len(y) > 2 else math.nan}
    if low is not None and high is not None:
        out["coverage"] = float(np.mean((y >= np.asarray(low)) & (y <= np.asarray(high)))) if len(y) else math.nan
    return out


__all__ = ["COVERAGE", "ridge_gram", "ridge_solve", "kfold_ids", "kfold_masks", "out_of_fold",
           "conformal_interval", "metrics"]
