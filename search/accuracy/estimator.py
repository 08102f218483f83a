"""One accuracy score per architecture from zero-cost proxies and the supernet.

Two building blocks work on feature tables (one row per architecture, one column per proxy,
plus ``supernet_acc`` when a supernet is used):

- :class:`RankEnsemble` (unsupervised, the default): the weighted mean of each column's
  normalised rank. Fitted on a reference population, it scores a new architecture by its
  percentile in that population, so scores do not depend on the batch they come in.
- :class:`SupervisedEstimator`: trained on a few architectures whose accuracy the user
  measured; by default the mean of a ridge, a Gaussian process and LightGBM (on the residual
  of the rank-ensemble score) over the proxies' percentiles, the ensemble score, structural
  summaries (:func:`structure_features`) and the space's encoding.

:class:`AccuracyEstimator` ties them to a space: it computes (and caches, per
``space.to_string(arch)``) the proxies on a fixed batch and the supernet accuracy, and
predicts a score where higher means more accurate. Unsupervised scores are in [0, 1]
(percentiles); supervised scores are in the unit of the given accuracies.

The default ensemble, ``("jacob_cov", "params")``, is the best rank sum of up to five proxies
on the NAS-Bench-201 CIFAR-10 reference table, chosen on the 8,445 reference cells that the
benchmark (``scripts/bench_accuracy.py``) does not score (see ``docs/accuracy.md``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from scipy.stats import spearmanr

from search.accuracy.proxies import canonical_names, compute_proxies
from search.errors import SearchStageError
from search.spaces.nb201 import cell_plan

if TYPE_CHECKING:
    from sklearn.isotonic import IsotonicRegression

DEFAULT_ENSEMBLE: tuple[str, ...] = ("jacob_cov", "params")
SUPERNET_COLUMN = "supernet_acc"


class EstimatorError(SearchStageError, ValueError):
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


def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
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


CONV_OPS = ("nor_conv_1x1", "nor_conv_3x3")


def nb201_path_features(arch: Sequence[str]) -> np.ndarray:
    """Summaries of the input-to-output paths of a NAS-Bench-201 cell after pruning dead edges.

    Nine values: number of paths, most 3x3 convs on one path, most convs (1x1 or 3x3) on one
    path, fewest convs on one path, whether a skip-only path exists, number of paths without a
    conv, number of paths through a pooling, longest path (ops), mean convs per path.
    All zero for a cell whose output is zero.
    """
    plan = cell_plan(tuple(arch))
    if plan.zero:
        return np.zeros(9, np.float32)
    inputs = {j: ins for j, ins in plan.nodes}
    paths: list[list[str]] = []

    def walk(j: int, ops: list[str]) -> None:
        if j == 0:
            paths.append(ops)
            return
        for i, o in inputs.get(j, ()):
            walk(i, ops + [o])

    walk(3, [])
    c3 = [p.count("nor_conv_3x3") for p in paths]
    cc = [sum(o in CONV_OPS for o in p) for p in paths]
    return np.asarray([len(paths), max(c3), max(cc), min(cc),
                       float(any(all(o == "skip_connect" for o in p) for p in paths)),
                       sum(x == 0 for x in cc), sum("avg_pool_3x3" in p for p in paths),
                       max(len(p) for p in paths), float(np.mean(cc))], np.float32)


def structure_features(space: Any, archs: Iterable[Any]) -> np.ndarray | None:
    """A few structural summaries per architecture for :class:`SupervisedEstimator`'s
    ``structure``: for nb201, the live-op counts of ``space.arch_features`` (skip, 1x1, 3x3,
    pool, live nodes, zero flag) and :func:`nb201_path_features`; ``None`` for other spaces
    (their encodings still reach the trees)."""
    archs = list(archs)
    if getattr(space, "name", None) != "nb201":
        return None
    live = np.asarray(space.arch_features_batch(archs), np.float64)[:, space.encoding_size:]
    paths = np.stack([nb201_path_features(space.validate(a)) for a in archs]) if archs else np.zeros((0, 9))
    return np.concatenate([live, paths], 1)


def _normal_scores(v: np.ndarray) -> np.ndarray:
    # lazy: loads scipy (slow to import) only when this runs
    from scipy.stats import norm, rankdata
    return norm.ppf((rankdata(v) - 0.5) / len(v))


class SupervisedEstimator:
    """Accuracy regression from a few labelled architectures.

    ``method="average"`` (default): the mean of three small models, each fitted to the normal
    scores of the labels (rank-based, so a few collapsed cells do not dominate):

    - ridge regression (penalty chosen by leave-one-out CV on the labels) and
    - a Gaussian process (RBF with one length scale per feature, fitted by marginal likelihood)
      on the compact features: each proxy's percentile in the reference population, the
      rank-ensemble score and ``structure`` (e.g. :func:`structure_features`);
    - LightGBM (300 trees of 4 leaves, bagging) on the residual of a linear map of the
      ensemble score's normal score, with the compact features plus ``encodings``.

    The mean is mapped back to accuracy units through the labels' quantiles (monotone), so
    scores are in the unit of ``y``. No setting is tuned on anything but the labels.

    ``method="lightgbm"``: the earlier estimator, LightGBM on the raw proxies, the ensemble
    score and ``encodings``; with ``blend > 0`` (and an ensemble), the prediction is
    ``(1 - blend) * lightgbm + blend * isotonic(ensemble score)``.
    """

    METHODS = ("average", "lightgbm")

    def __init__(self, n_estimators: int = 800, learning_rate: float = 0.02, num_leaves: int = 4,
                 min_child_samples: int = 3, subsample: float = 0.8, colsample: float = 0.8,
                 ensemble_columns: Sequence[str] | None = DEFAULT_ENSEMBLE, blend: float = 0.3, seed: int = 0,
                 method: str = "average"):
        if method not in self.METHODS:
            raise EstimatorError(f"method {method!r} is not one of {self.METHODS}")
        self.method = method
        self.seed = seed
        self.params: dict[str, Any] = dict(
            n_estimators=n_estimators, learning_rate=learning_rate, num_leaves=num_leaves,
            min_child_samples=min_child_samples, subsample=subsample, subsample_freq=1,
            colsample_bytree=colsample, random_state=seed, verbose=-1, n_jobs=1)
        self.ensemble = RankEnsemble(ensemble_columns) if ensemble_columns else None
        self.blend = float(blend) if ensemble_columns else 0.0
        self.columns_: list[str] | None = None
        # an LGBMRegressor ("lightgbm") or (ridge, gp, trees) ("average"): which, `method` says
        self.model_: Any = None
        self.iso_: IsotonicRegression | None = None
        self.percentiles_: _Percentiles | None = None
        self.n_structure_: int | None = None
        self.n_encodings_: int | None = None

    # -- method="lightgbm"
    def _matrix(self, df: pd.DataFrame, encodings: np.ndarray | None) -> np.ndarray:
        assert self.columns_ is not None
        missing = [c for c in self.columns_ if c not in df]
        if missing:
            raise EstimatorError(f"features lack columns {missing}")
        parts = [np.stack([_clean(df[c].to_numpy()) for c in self.columns_], 1)] if self.columns_ else []
        if self.ensemble is not None:
            parts.append(self.ensemble.predict(df)[:, None])
        if encodings is not None:
            parts.append(self._rows(encodings, df, "encodings"))
        if not parts:
            raise EstimatorError("no features")
        return np.concatenate(parts, 1)

    @staticmethod
    def _rows(a: np.ndarray, df: pd.DataFrame, what: str) -> np.ndarray:
        a = np.asarray(a, np.float64)
        if a.ndim != 2 or a.shape[0] != len(df):
            raise EstimatorError(f"{what} of shape {a.shape} for {len(df)} feature rows")
        return a

    # -- method="average"
    def _compact(self, df: pd.DataFrame, structure: np.ndarray | None) -> np.ndarray:
        assert self.columns_ is not None
        missing = [c for c in self.columns_ if c not in df]
        if missing:
            raise EstimatorError(f"features lack columns {missing}")
        parts = [self.percentiles_.predict(df[self.columns_])[1]] if self.percentiles_ is not None else []
        if self.ensemble is not None:
            parts.append(self.ensemble.predict(df)[:, None])
        if (structure is None) != (self.n_structure_ is None):
            raise EstimatorError("pass structure features both to fit and to predict, or to neither")
        if structure is not None:
            s = self._rows(structure, df, "structure")
            if s.shape[1] != self.n_structure_:
                raise EstimatorError(f"{s.shape[1]} structure features, fitted with {self.n_structure_}")
            parts.append(s)
        if not parts:
            raise EstimatorError("no features")
        return np.concatenate(parts, 1)

    def fit(self, features: pd.DataFrame | Mapping, y: Sequence[float] | np.ndarray,
            encodings: np.ndarray | None = None, reference: pd.DataFrame | None = None,
            structure: np.ndarray | None = None) -> "SupervisedEstimator":
        """Fit on labelled architectures. ``reference`` (unlabelled features, e.g. a random
        sample of the space) calibrates the percentiles and the rank-ensemble feature
        (default: ``features``). ``structure``: a few structural summaries per architecture
        (``method="average"``; for ``"lightgbm"`` they join the encodings)."""
        # lazy: loads lightgbm (slow to import) only when this runs
        import lightgbm as lgb
        df = _as_frame(features)
        y = np.asarray(y, np.float64)
        if len(df) != len(y) or len(y) < 5:
            raise EstimatorError(f"need at least 5 labelled architectures with one label each (got {len(df)} rows, {len(y)} labels)")
        self.columns_ = [c for c in df.columns if np.issubdtype(df[c].dtype, np.number)]
        ref = df if reference is None else pd.concat([reference, df])
        if self.ensemble is not None:
            self.ensemble.fit(ref)
        if self.method == "lightgbm":
            if structure is not None:
                encodings = self._rows(structure, df, "structure") if encodings is None else np.concatenate(
                    [self._rows(encodings, df, "encodings"), self._rows(structure, df, "structure")], 1)
            self.model_ = lgb.LGBMRegressor(**self.params).fit(self._matrix(df, encodings), y)
            if self.blend > 0 and self.ensemble is not None:  # a blend is set only with an ensemble
                # lazy: loads sklearn (slow to import) only when this runs
                from sklearn.isotonic import IsotonicRegression
                self.iso_ = IsotonicRegression(out_of_bounds="clip").fit(self.ensemble.predict(df), y)
            return self
        return self._fit_average(df, y, encodings, ref, structure)

    def _fit_average(self, df, y, encodings, ref, structure) -> "SupervisedEstimator":
        # lazy: loads lightgbm and sklearn (slow to import) only when this runs
        import lightgbm as lgb
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
        from sklearn.linear_model import RidgeCV
        self.percentiles_ = _Percentiles().fit(ref[self.columns_]) if self.columns_ else None
        self.n_structure_ = None if structure is None else np.asarray(structure).shape[1]
        self.n_encodings_ = None if encodings is None else np.asarray(encodings).shape[1]
        X = self._compact(df, structure)
        self.mean_, self.scale_ = X.mean(0), X.std(0) + 1e-9
        Z = (X - self.mean_) / self.scale_
        t = _normal_scores(y)
        ridge = RidgeCV(alphas=np.logspace(-2, 3, 20)).fit(Z, t)  # alpha: efficient leave-one-out CV
        kernel = (ConstantKernel(1.0) * RBF(np.full(Z.shape[1], 3.0), length_scale_bounds=(0.1, 100.0))
                  + WhiteKernel(0.1))
        # lazy: loads sklearn (slow to import) only when this runs
        import warnings
        from sklearn.exceptions import ConvergenceWarning
        with warnings.catch_warnings():  # a length scale at its bound just means "irrelevant feature"
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=1,
                                          random_state=self.seed).fit(Z, t)
        if self.ensemble is not None:
            e = _normal_scores(self.ensemble.predict(ref))  # the ensemble's normal score in the reference
            self.prior_ = (np.sort(self.ensemble.predict(ref)), np.sort(e))
            ze = self._prior_z(df)
            self.prior_coef_ = np.polyfit(ze, t, 1)
        else:
            self.prior_coef_ = np.zeros(2)
        trees = lgb.LGBMRegressor(**{**self.params, "n_estimators": 300, "min_child_samples": 5}).fit(
            self._tree_matrix(X, encodings, df), t - self._prior(df))
        self.model_ = (ridge, gp, trees)
        self.labels_ = (np.sort(t), np.sort(y))
        return self

    def _prior_z(self, df: pd.DataFrame) -> np.ndarray:
        assert self.ensemble is not None  # the prior is fitted, and used, only with an ensemble
        ens_sorted, z_sorted = self.prior_
        return np.interp(self.ensemble.predict(df), ens_sorted, z_sorted)

    def _prior(self, df: pd.DataFrame) -> np.ndarray:
        if self.ensemble is None:
            return np.zeros(len(df))
        return np.polyval(self.prior_coef_, self._prior_z(df))

    def _tree_matrix(self, X: np.ndarray, encodings: np.ndarray | None, df: pd.DataFrame) -> np.ndarray:
        if (encodings is None) != (self.n_encodings_ is None):
            raise EstimatorError("pass encodings both to fit and to predict, or to neither")
        return X if encodings is None else np.concatenate([X, self._rows(encodings, df, "encodings")], 1)

    def predict(self, features: pd.DataFrame | Mapping, encodings: np.ndarray | None = None,
                structure: np.ndarray | None = None) -> np.ndarray:
        if self.model_ is None:
            raise EstimatorError("SupervisedEstimator is not fitted")
        df = _as_frame(features)
        if self.method == "lightgbm":
            if structure is not None:
                encodings = structure if encodings is None else np.concatenate([encodings, structure], 1)
            pred = self.model_.predict(self._matrix(df, encodings))
            if self.iso_ is not None and self.ensemble is not None:  # iso_ is fitted only with an ensemble
                pred = (1 - self.blend) * pred + self.blend * self.iso_.predict(self.ensemble.predict(df))
            return pred
        ridge, gp, trees = self.model_
        X = self._compact(df, structure)
        Z = (X - self.mean_) / self.scale_
        z = (ridge.predict(Z) + gp.predict(Z) + self._prior(df) + trees.predict(self._tree_matrix(X, encodings, df))) / 3
        # back to accuracy units: the labels' quantile at z (linear beyond the ends, strictly increasing)
        t_sorted, y_sorted = self.labels_
        acc = np.interp(z, t_sorted, y_sorted)
        lo_slope = (y_sorted[1] - y_sorted[0]) / max(t_sorted[1] - t_sorted[0], 1e-9)
        hi_slope = (y_sorted[-1] - y_sorted[-2]) / max(t_sorted[-1] - t_sorted[-2], 1e-9)
        acc = np.where(z < t_sorted[0], y_sorted[0] + lo_slope * (z - t_sorted[0]), acc)
        acc = np.where(z > t_sorted[-1], y_sorted[-1] + hi_slope * (z - t_sorted[-1]), acc)
        return acc + 1e-6 * (y_sorted[-1] - y_sorted[0] + 1.0) * z

    def score(self, features: pd.DataFrame | Mapping, y: Sequence[float], encodings: np.ndarray | None = None,
              structure: np.ndarray | None = None) -> float:
        return spearman(self.predict(features, encodings, structure), y)


class _Percentiles:
    """Each column's percentile in a reference population (NaN lowest)."""

    def fit(self, ref: pd.DataFrame) -> "_Percentiles":
        self.columns = list(ref.columns)
        self.sorted = {c: np.sort(_clean(ref[c].to_numpy())) for c in self.columns}
        return self

    def predict(self, df: pd.DataFrame) -> tuple[list[str], np.ndarray]:
        out = []
        for c in self.columns:
            ref = self.sorted[c]
            v = np.where(np.isfinite(df[c].to_numpy(np.float64)), df[c].to_numpy(np.float64), -np.inf)
            out.append((np.searchsorted(ref, v, "left") + np.searchsorted(ref, v, "right")) / (2.0 * len(ref)))
        return self.columns, np.stack(out, 1)


@dataclass
class FeatureJob:
    """What one architecture's features need (sent once to a pool's workers)."""
    space: Any
    inputs: torch.Tensor
    targets: torch.Tensor
    proxies: list[str]
    seed: int
    supernet: Any = None
    val: Any = None
    calib: Any = None


def compute_features(job: FeatureJob, arch: Any) -> dict[str, float]:
    """The proxies of ``arch`` (and, with a supernet, its subnet's accuracy), seeded by
    ``job.seed``: the unit of work of `AccuracyEstimator`, in this process or a pool's task."""
    torch.manual_seed(job.seed)
    feats: dict[str, float] = {}
    if job.proxies:
        net = job.space.build(arch)
        c, h, w = job.space.input_shape(arch)
        x = job.inputs
        if tuple(x.shape[-2:]) != (h, w):
            x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        feats = compute_proxies(net, x, job.targets, job.proxies, seed=job.seed)
    if job.supernet is not None:
        feats[SUPERNET_COLUMN] = job.supernet.evaluate(arch, job.val, calib=job.calib, seed=job.seed)
    return feats


class AccuracyEstimator:
    """Scores architectures of ``space`` (higher = more accurate) without training them.

    Args:
        space: the search space.
        inputs, targets: one fixed batch of the user's (normalised) data for the proxies;
            resized to each architecture's input resolution.
        proxies: proxies to compute (default: those of the default ensemble).
        supernet: a trained :class:`~search.accuracy.supernet.Supernet`; adds ``supernet_acc``.
        val, calib: held-out and calibration data for the supernet evaluations.
        supernet_weight: the weight of ``supernet_acc`` in the unsupervised ensemble; the
            proxies share a weight of 1 equally. The default 0.25 (a fifth of the score) is
            what the measurements support: a supernet ranks NB201 cells less well than the
            proxies (Kendall 0.2-0.55 with NAS-Bench-201's accuracy against 0.7), so with
            weight 1 or 2 it pulls the ensemble down, and with 0.25 it adds 0.02-0.03
            (docs/accuracy.md, "How much the supernet weighs").
        seed: seeds network initialisation and the proxies.

    Unsupervised use: ``est.fit()`` (draws ``reference_size`` random architectures as the
    reference population), then ``est.predict(archs)``. Supervised use:
    ``est.fit(archs, accuracies)`` with the accuracies of a few trained architectures.

    >>> # est = AccuracyEstimator(space, x, y).fit(); scores = est.predict([space.sample(0)])
    """

    def __init__(self, space: Any, inputs: torch.Tensor, targets: torch.Tensor,
                 proxies: Sequence[str] = DEFAULT_ENSEMBLE, supernet: Any = None, val: Any = None, calib: Any = None,
                 supernet_weight: float = 0.25, reference_size: int = 100, seed: int = 0):
        self.space = space
        self.inputs, self.targets = inputs, targets
        self.proxies = canonical_names(proxies)
        self.supernet, self.val, self.calib = supernet, val, calib
        if supernet is not None and val is None:
            raise EstimatorError("a supernet needs validation data (val=...) to measure subnet accuracy")
        if not (math.isfinite(supernet_weight) and supernet_weight >= 0):
            raise EstimatorError(f"supernet_weight={supernet_weight}: give a finite weight >= 0 "
                                 f"(0 ranks by the proxies only; the default is 0.25)")
        self.reference_size, self.seed = reference_size, seed
        cols = list(self.proxies) + ([SUPERNET_COLUMN] if supernet is not None else [])
        w = [1.0 / max(1, len(self.proxies))] * len(self.proxies) + ([supernet_weight] if supernet is not None else [])
        self.ensemble = RankEnsemble(cols, w)
        self.supervised: SupervisedEstimator | None = None
        self._cache: dict[str, dict[str, float]] = {}
        self._ready: dict[str, dict[str, float]] = {}  # computed by the pool, not yet taken by _features_one
        self.pool = None  # a search.accuracy.tasks pool for `prefetch` (None: compute in `features`, one by one)

    def _features_one(self, arch: Any) -> dict[str, float]:
        key = self.space.to_string(arch)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._compute(arch)
            self._cache[key] = hit
        return hit

    def _compute(self, arch: Any, proxies: Sequence[str] | None = None, supernet: bool = True) -> dict[str, float]:
        """The proxies (and the supernet column) of one architecture: computed by a pool ahead
        of time (`prefetch`), else here."""
        ready = self._ready.pop(self.space.to_string(arch), None)
        if ready is not None:
            return ready
        return compute_features(self._job(proxies, supernet), arch)

    def _job(self, proxies: Sequence[str] | None = None, supernet: bool = True) -> "FeatureJob":
        return FeatureJob(self.space, self.inputs, self.targets, list(self.proxies if proxies is None else proxies),
                          self.seed, self.supernet if supernet else None, self.val, self.calib)

    def _missing(self, archs: Sequence[Any]) -> list[Any]:
        """The architectures `features` would compute (not cached), each once."""
        seen: dict[str, Any] = {}
        for a in archs:
            key = self.space.to_string(a)
            if key not in self._cache and key not in self._ready:
                seen.setdefault(key, a)
        return list(seen.values())

    def prefetch(self, archs: Iterable[Any]) -> int:
        """Compute the uncached architectures of ``archs`` on ``self.pool`` (a
        `search.accuracy.tasks` pool; Ray tasks with `ray_address`) so that `features` finds them ready.
        Returns how many were computed; without a pool it does nothing."""
        if self.pool is None:
            return 0
        todo = self._missing(list(archs))
        n = 0
        for arch_list, job in self._prefetch_jobs(todo):
            for i, feats in self.pool.map(compute_features, arch_list, job):
                self._ready[self.space.to_string(arch_list[i])] = feats
            n += len(arch_list)
        return n

    def _prefetch_jobs(self, todo: list[Any]) -> list[tuple[list[Any], "FeatureJob"]]:
        """[(architectures, the job that computes what they lack)]."""
        return [(todo, self._job())] if todo else []

    def features(self, archs: Iterable[Any]) -> pd.DataFrame:
        """One row per architecture: the proxies (and ``supernet_acc``), cached per arch."""
        archs = list(archs)
        self.prefetch(archs)
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
            feats, accuracies, encodings=self.space.arch_features_batch(archs),
            structure=structure_features(self.space, archs))
        return self

    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        archs = list(archs)
        feats = self.features(archs)
        if self.supervised is not None:
            return self.supervised.predict(feats, encodings=self.space.arch_features_batch(archs),
                                           structure=structure_features(self.space, archs))
        return self.ensemble.predict(feats)

    def score(self, archs: Sequence[Any], accuracies: Sequence[float]) -> float:
        """Spearman correlation between predictions and measured accuracies."""
        return spearman(self.predict(archs), accuracies)


__all__ = ["DEFAULT_ENSEMBLE", "SUPERNET_COLUMN", "EstimatorError", "RankEnsemble", "SupervisedEstimator",
           "AccuracyEstimator", "nb201_path_features", "structure_features", "spearman"]
