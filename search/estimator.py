"""One accuracy score per architecture from zero-cost proxies and the supernet.

Two building blocks work on feature tables (one row per architecture, one column per proxy,
plus ``supernet_acc`` when a supernet is used):

- :class:`RankEnsemble` (unsupervised, the default): the weighted mean of each column's
  normalised rank. Fitted on a reference population, it scores a new architecture by its
  percentile in that population, so scores do not depend on the batch they come in.
- :class:`SupervisedEstimator`: LightGBM on the proxies, the rank-ensemble score and the
  space's encoding, trained on a few architectures whose accuracy the user measured.

:class:`AccuracyEstimator` ties them to a space: it computes (and caches, per
``space.to_string(arch)``) the proxies on a fixed batch and the supernet accuracy, and
predicts a score where higher means more accurate. Unsupervised scores are in [0, 1]
(percentiles); supervised scores are in the unit of the given accuracies.

The default ensemble, ``("jacob_cov", "params")``, is the best rank sum of up to five proxies
on the NAS-Bench-201 CIFAR-10 reference table, chosen on the 8,445 reference cells that the
benchmark (``scripts/bench_accuracy.py``) does not score (see ``docs/accuracy.md``).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from search.proxies import canonical_names, compute_proxies

DEFAULT_ENSEMBLE: tuple[str, ...] = ("jacob_cov", "params")
SUPERNET_COLUMN = "supernet_acc"


class EstimatorError(ValueError):
    """Missing features, labels or an unfitted estimator."""


def _as_frame(features: pd.DataFrame | Mapping[str, Sequence[float]] | Sequence[Mapping[str, float]]) -> pd.DataFrame:
    if isinstance(features, pd.DataFrame):
        return features
    return pd.DataFrame(features)


def _clean(v: np.ndarray) -> np.ndarray:
    """Undefined (NaN) and infinite-negative scores become the lowest value."""
    v = np.asarray(v, np.float64).copy()
    bad = ~np.isfinite(v)
    if bad.any():
        finite = v[~bad]
        low = (finite.min() - 1.0) if finite.size else 0.0
        v[bad & ~(v == np.inf)] = low
        v[v == np.inf] = finite.max() + 1.0 if finite.size else 1.0
    return v


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    return float(spearmanr(a, b).statistic)


class RankEnsemble:
    """Weighted mean of normalised ranks (higher = better for every column).

    Args:
        columns: feature columns to combine (proxy names or ``supernet_acc``).
        weights: one weight per column (default: equal).

    ``fit(reference)`` stores the reference population's values; ``predict`` then returns
    each row's mean percentile in it. Unfitted, ``predict`` ranks the rows among themselves.
    """

    def __init__(self, columns: Sequence[str] = DEFAULT_ENSEMBLE, weights: Sequence[float] | None = None):
        self.columns = tuple(columns)
        if not self.columns:
            raise EstimatorError("a rank ensemble needs at least one column")
        w = np.ones(len(self.columns)) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (len(self.columns),) or (w < 0).any() or w.sum() <= 0:
            raise EstimatorError(f"weights {weights} must be non-negative, one per column {self.columns}")
        self.weights = w / w.sum()
        self.reference_: dict[str, np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"RankEnsemble(columns={self.columns}, weights={self.weights.round(3).tolist()})"

    def _check(self, df: pd.DataFrame) -> None:
        missing = [c for c in self.columns if c not in df]
        if missing:
            raise EstimatorError(f"features lack columns {missing} (have {list(df.columns)})")

    def fit(self, reference: pd.DataFrame | Mapping, y: Any = None) -> "RankEnsemble":
        """Remember the reference population (``y`` is ignored: the ensemble is label-free)."""
        df = _as_frame(reference)
        self._check(df)
        if len(df) < 2:
            raise EstimatorError("a reference population needs at least 2 architectures")
        self.reference_ = {c: np.sort(_clean(df[c].to_numpy())) for c in self.columns}
        return self

    def predict(self, features: pd.DataFrame | Mapping) -> np.ndarray:
        df = _as_frame(features)
        self._check(df)
        total = np.zeros(len(df))
        for c, w in zip(self.columns, self.weights):
            v = df[c].to_numpy(np.float64)
            if self.reference_ is None:
                r = pd.Series(_clean(v)).rank(method="average").to_numpy() / max(1, len(v))
            else:
                ref = self.reference_[c]
                vv = np.where(np.isfinite(v), v, -np.inf)
                lo = np.searchsorted(ref, vv, side="left")
                hi = np.searchsorted(ref, vv, side="right")
                r = (lo + hi) / (2.0 * len(ref))
            total += w * r
        return total

    def score(self, features: pd.DataFrame | Mapping, y: Sequence[float]) -> float:
        """Spearman correlation of the predictions with ``y``."""
        return spearman(self.predict(features), y)


class SupervisedEstimator:
    """LightGBM regression of accuracy on proxies (+ the rank-ensemble score) (+ encodings).

    Small-data settings (tens to hundreds of labels): very shallow trees, many rounds, bagging.
    With ``blend > 0`` (and an ensemble), the prediction is
    ``(1 - blend) * lightgbm + blend * isotonic(ensemble score)``, the isotonic map fitted on
    the labels, so it stays in accuracy units while leaning on the label-free ranking where
    100 labels are too few for the trees.
    """

    def __init__(self, n_estimators: int = 800, learning_rate: float = 0.02, num_leaves: int = 4,
                 min_child_samples: int = 3, subsample: float = 0.8, colsample: float = 0.8,
                 ensemble_columns: Sequence[str] | None = DEFAULT_ENSEMBLE, blend: float = 0.3, seed: int = 0):
        self.params = dict(n_estimators=n_estimators, learning_rate=learning_rate, num_leaves=num_leaves,
                           min_child_samples=min_child_samples, subsample=subsample, subsample_freq=1,
                           colsample_bytree=colsample, random_state=seed, verbose=-1, n_jobs=1)
        self.ensemble = RankEnsemble(ensemble_columns) if ensemble_columns else None
        self.blend = float(blend) if ensemble_columns else 0.0
        self.columns_: list[str] | None = None
        self.model_ = None
        self.iso_ = None

    def _matrix(self, df: pd.DataFrame, encodings: np.ndarray | None) -> np.ndarray:
        assert self.columns_ is not None
        missing = [c for c in self.columns_ if c not in df]
        if missing:
            raise EstimatorError(f"features lack columns {missing}")
        parts = [np.stack([_clean(df[c].to_numpy()) for c in self.columns_], 1)] if self.columns_ else []
        if self.ensemble is not None:
            parts.append(self.ensemble.predict(df)[:, None])
        if encodings is not None:
            enc = np.asarray(encodings, np.float64)
            if enc.shape[0] != len(df):
                raise EstimatorError(f"{enc.shape[0]} encodings for {len(df)} feature rows")
            parts.append(enc)
        if not parts:
            raise EstimatorError("no features")
        return np.concatenate(parts, 1)

    def fit(self, features: pd.DataFrame | Mapping, y: Sequence[float], encodings: np.ndarray | None = None,
            reference: pd.DataFrame | None = None) -> "SupervisedEstimator":
        """Fit on labelled architectures. ``reference`` (unlabelled features, e.g. a random
        sample of the space) calibrates the rank-ensemble feature; default: ``features``."""
        import lightgbm as lgb
        df = _as_frame(features)
        y = np.asarray(y, np.float64)
        if len(df) != len(y) or len(y) < 5:
            raise EstimatorError(f"need at least 5 labelled architectures with one label each (got {len(df)} rows, {len(y)} labels)")
        self.columns_ = [c for c in df.columns if np.issubdtype(df[c].dtype, np.number)]
        if self.ensemble is not None:
            ref = df if reference is None else reference
            self.ensemble.fit(pd.concat([ref, df]) if reference is not None else ref)
        self.model_ = lgb.LGBMRegressor(**self.params).fit(self._matrix(df, encodings), y)
        if self.blend > 0:
            from sklearn.isotonic import IsotonicRegression
            self.iso_ = IsotonicRegression(out_of_bounds="clip").fit(self.ensemble.predict(df), y)
        return self

    def predict(self, features: pd.DataFrame | Mapping, encodings: np.ndarray | None = None) -> np.ndarray:
        if self.model_ is None:
            raise EstimatorError("SupervisedEstimator is not fitted")
        df = _as_frame(features)
        pred = self.model_.predict(self._matrix(df, encodings))
        if self.iso_ is not None:
            pred = (1 - self.blend) * pred + self.blend * self.iso_.predict(self.ensemble.predict(df))
        return pred

    def score(self, features: pd.DataFrame | Mapping, y: Sequence[float], encodings: np.ndarray | None = None) -> float:
        return spearman(self.predict(features, encodings), y)


class AccuracyEstimator:
    """Scores architectures of ``space`` (higher = more accurate) without training them.

    Args:
        space: the search space.
        inputs, targets: one fixed batch of the user's (normalised) data for the proxies;
            resized to each architecture's input resolution.
        proxies: proxies to compute (default: those of the default ensemble).
        supernet: a trained :class:`~search.supernet.Supernet`; adds ``supernet_acc``.
        val, calib: held-out and calibration data for the supernet evaluations.
        supernet_weight: the weight of ``supernet_acc`` in the unsupervised ensemble
            (the proxies share the rest equally).
        seed: seeds network initialisation and the proxies.

    Unsupervised use: ``est.fit()`` (draws ``reference_size`` random architectures as the
    reference population), then ``est.predict(archs)``. Supervised use:
    ``est.fit(archs, accuracies)`` with the accuracies of a few trained architectures.

    >>> # est = AccuracyEstimator(space, x, y).fit(); scores = est.predict([space.sample(0)])
    """

    def __init__(self, space: Any, inputs: torch.Tensor, targets: torch.Tensor,
                 proxies: Sequence[str] = DEFAULT_ENSEMBLE, supernet: Any = None, val: Any = None, calib: Any = None,
                 supernet_weight: float = 1.0, reference_size: int = 100, seed: int = 0):
        self.space = space
        self.inputs, self.targets = inputs, targets
        self.proxies = canonical_names(proxies)
        self.supernet, self.val, self.calib = supernet, val, calib
        if supernet is not None and val is None:
            raise EstimatorError("a supernet needs validation data (val=...) to measure subnet accuracy")
        self.reference_size, self.seed = reference_size, seed
        cols = list(self.proxies) + ([SUPERNET_COLUMN] if supernet is not None else [])
        w = [1.0 / max(1, len(self.proxies))] * len(self.proxies) + ([supernet_weight] if supernet is not None else [])
        self.ensemble = RankEnsemble(cols, w)
        self.supervised: SupervisedEstimator | None = None
        self._cache: dict[str, dict[str, float]] = {}

    def _features_one(self, arch: Any) -> dict[str, float]:
        key = self.space.to_string(arch)
        hit = self._cache.get(key)
        if hit is None:
            torch.manual_seed(self.seed)
            net = self.space.build(arch)
            c, h, w = self.space.input_shape(arch)
            x = self.inputs
            if tuple(x.shape[-2:]) != (h, w):
                x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            hit = compute_proxies(net, x, self.targets, self.proxies, seed=self.seed)
            if self.supernet is not None:
                hit[SUPERNET_COLUMN] = self.supernet.evaluate(arch, self.val, calib=self.calib, seed=self.seed)
            self._cache[key] = hit
        return hit

    def features(self, archs: Iterable[Any]) -> pd.DataFrame:
        """One row per architecture: the proxies (and ``supernet_acc``), cached per arch."""
        archs = list(archs)
        return pd.DataFrame([self._features_one(a) for a in archs], index=[self.space.to_string(a) for a in archs])

    def fit(self, archs: Sequence[Any] | None = None, accuracies: Sequence[float] | None = None) -> "AccuracyEstimator":
        """Unsupervised without ``accuracies`` (reference population: ``archs`` or
        ``reference_size`` random ones); supervised LightGBM with them."""
        rng = np.random.default_rng(self.seed)
        if accuracies is None:
            ref = list(archs) if archs is not None else [self.space.sample(rng) for _ in range(self.reference_size)]
            self.ensemble.fit(self.features(ref))
            self.supervised = None
            return self
        archs = list(archs or [])
        if len(archs) != len(accuracies):
            raise EstimatorError(f"{len(archs)} architectures for {len(accuracies)} accuracies")
        feats = self.features(archs)
        self.supervised = SupervisedEstimator(ensemble_columns=self.ensemble.columns, seed=self.seed).fit(
            feats, accuracies, encodings=self.space.arch_features_batch(archs))
        return self

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        archs = list(archs)
        feats = self.features(archs)
        if self.supervised is not None:
            return self.supervised.predict(feats, encodings=self.space.arch_features_batch(archs))
        return self.ensemble.predict(feats)

    def score(self, archs: Sequence[Any], accuracies: Sequence[float]) -> float:
        """Spearman correlation between predictions and measured accuracies."""
        return spearman(self.predict(archs), accuracies)


__all__ = ["DEFAULT_ENSEMBLE", "SUPERNET_COLUMN", "EstimatorError", "RankEnsemble", "SupervisedEstimator",
           "AccuracyEstimator", "spearman"]
