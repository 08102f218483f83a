"""The search's configuration in typed parts, each validated when it is built.

    from search.config import SearchSpec, DataConfig, LatencyConfig, ...
    spec = SearchSpec(data=DataConfig("digits"), latency=LatencyConfig(predictor="p.lgb", latency_budget_ms=2.0))

One dataclass per part of the search, each checked in `__post_init__` against the registries
(spaces, targets, algorithms, proxies) and the file system, so that a wrong value fails at once
with a `profiling.validate.ConfigError` naming the parameter, never after the supernet has
trained:

    DataConfig          the images (an image folder, an .npz or the bundled digits)
    SpaceConfig         the search space (a name from search.spaces.SPACES) and its options
    LatencyConfig       the predictor, the target, and the latency budget
    AccuracyConfig      the accuracy estimator (proxies, SupernetConfig, RerankSettings) and the
                        accuracy threshold
    VerificationConfig  the finalists measured on the device (locally or over `host`)
    AlgorithmConfig     the search algorithm (a name from search.algorithms.ALGORITHMS)
    BaselineConfig      the user's model to start from, the speed-up asked of it, size limits
    RunConfig           the output directory, the wall-clock budget, the seed, the caches

`SearchSpec` holds one of each and checks what involves two parts. The flat
`search.run.SearchConfig` (the older API: one field per setting) converts with `.spec()`.

The command line (`scripts/search_cli.py`) builds its options from these dataclasses: a field's
metadata (`option(...)`) gives its flag, help and metavar, so a field added here with `option`
metadata appears on the command line with no second list to keep in step.
"""
from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from profiling.paths import cache_root
from profiling.validate import (ConfigError, check_choice, check_host, check_input_file, check_input_path,
                                check_output_dir, check_range)
from search.algorithms import ALGORITHMS
from search.problem import RATIO_MARGIN
from profiling.targets import TargetError, list_targets

#: what a search writes into its output directory; an earlier run's are replaced only with `overwrite`
RESULT_FILES = ("frontier.csv", "frontier.json", "frontier.png", "best.json", "best.onnx", "best.pt", "report.md")


def option(help: str, metavar: str | None = None, **click_kw: Any) -> dict[str, Any]:
    """Field metadata for the command line: its help and metavar. The help names other settings by
    their `SearchConfig` names in backticks (`latency_budget_ms`); only scripts/ turns a name into
    a flag (scripts.config_options), the library never speaks of flags."""
    return {"help": help, "metavar": metavar, "click": click_kw}


def _space_names() -> list[str]:
    # lazy: loads torch (slow to import) only when this runs
    from search.spaces import SPACES
    return list(SPACES)


def _algorithm_names() -> list[str]:
    return list(ALGORITHMS)


# ------------------------------------------------------------------------------------ parts
@dataclass
class DataConfig:
    source: str = field(default="digits", metadata=option(
        "Your data: an image-folder directory (class sub-directories, optionally under train/), an .npz with x "
        "and y, or the bundled scikit-learn 'digits'.", metavar="DIR|NPZ|digits"))
    max_per_class: int | None = 500     # images read per class from an image folder
    image_size: int | None = field(default=None, metadata=option(
        "Resize the images to this size (square); the space is sized to it.", metavar="PX"))

    def __post_init__(self) -> None:
        if self.source != "digits":
            check_input_path("source", self.source, "image folder, .npz file or 'digits'")
        check_range("max_per_class", self.max_per_class, 1)
        check_range("image_size", self.image_size, 4)


@dataclass
class SpaceConfig:
    name: str = field(default="nb201", metadata=option("Search space.", registry=_space_names))
    options: dict[str, Any] = field(default_factory=dict)   # overrides of the space's constructor options

    def __post_init__(self) -> None:
        # lazy: loads torch (slow to import) only when this runs
        from search.spaces import SPACES
        check_choice("name", self.name, SPACES, "space")


@dataclass
class LatencyConfig:
    predictor: str | Path | None = field(default=None, metadata=option(
        "Latency predictor (.lgb from train-predictor) of the target device. Default (or 'auto'; this machine, "
        "no `host`): the shipped predictor measured on this machine, else the closest shipped one (CPU model and "
        "speed-relevant flags) calibrated here on a few measured networks (once, a few minutes; cached).",
        metavar="FILE|auto"))
    latency_budget_ms: float | None = field(default=None, metadata=option(
        "Maximise accuracy subject to latency <= MS milliseconds.", metavar="MS"))
    target: str | None = field(default=None, metadata=option(
        "Target name (default: the predictor's own). A predictor built for another target is refused unless "
        "`force`."))
    targets_file: str | Path | None = field(default=None, metadata=option("TOML file with user targets.",
                                                                            metavar="FILE"))
    force: bool = field(default=False, metadata=option("Use a predictor built for another target than `target`.",
                                                       is_flag=True))
    min_throughput: float | None = field(default=None, metadata=option(
        "Maximise accuracy subject to throughput >= IMG_S images/s at the target's batch (a predictor of a "
        "batch-N target, e.g. local-cpu-b32: the budget is N x 1000 / IMG_S ms per run).", metavar="IMG_S"))
    objective: str = field(default="latency", metadata=option(
        "With `min_accuracy`: minimise the latency of one run, or maximise images/s at the target's batch (the "
        "same choice at a fixed batch; reported as images/s).", choices=("latency", "throughput")))
    benchmark: str | None = field(default=None, metadata=option(
        "NB201 benchmark mode: the DEVICE_ms column of CSV (keyed by arch) is the device; each lookup is one "
        "measurement.", metavar="CSV:DEVICE"))

    def __post_init__(self) -> None:
        check_input_file("predictor", self.predictor, "predictor file (.lgb)")
        check_range("min_throughput", self.min_throughput, 0, None, low_open=True)
        check_choice("objective", self.objective, ("latency", "throughput"), "objective")
        if self.min_throughput is not None and self.latency_budget_ms is not None:
            raise ConfigError("min_throughput", "give `min_throughput` or `latency_budget_ms`, not both")
        if self.objective == "throughput" and (self.latency_budget_ms is not None or self.min_throughput is not None):
            raise ConfigError("objective", "throughput maximises images/s under `min_accuracy`; a floor is "
                                           "`min_throughput` (with the latency objective)")
        check_input_file("targets_file", self.targets_file, "TOML targets file")
        check_range("latency_budget_ms", self.latency_budget_ms, 0, None, low_open=True)
        if self.benchmark is not None:
            csv, sep, device = str(self.benchmark).rpartition(":")
            if not sep or not csv or not device:
                raise ConfigError("benchmark", f"{self.benchmark!r} is not CSV:DEVICE (e.g. nb201_cifar10.csv:edgegpu)")
            check_input_file("benchmark", csv, "benchmark CSV")
        elif self.predictor is None:
            raise ConfigError("predictor", "a latency predictor is required (a .lgb file from train-predictor; "
                                           "see data/predictors/), except in `benchmark` mode")
        if self.target is not None:
            self._check_target()

    def _check_target(self) -> None:
        try:
            known = list_targets(self.targets_file)
        except TargetError as e:
            raise ConfigError("targets_file", str(e)) from None
        if self.target in known:
            return
        if self.predictor is not None:  # a user target recorded in the predictor file
            # lazy: loads pandas (slow to import) only when this runs
            from predictors.fileformat import PredictorFileError, read_predictor_header
            try:
                recorded = (read_predictor_header(self.predictor).get("target") or {}).get("name")
            except PredictorFileError:
                recorded = None
            if recorded == self.target:
                return
        check_choice("target", self.target, known, "target")


@dataclass
class SupernetConfig:
    epochs: float | None = field(default=None, metadata=option(
        "Supernet training epochs on `data` (default 8).", metavar="E"))
    weight: float = field(default=0.25, metadata=option(
        "Weight of the supernet's accuracy in the rank ensemble; the proxies share a weight of 1. A short-trained "
        "supernet ranks cells less well than the proxies, so it is a minor vote (docs/accuracy.md); raise it for "
        "a supernet trained long on a GPU.", metavar="W"))
    device: str = field(default="cpu", metadata=option(
        "Where the supernet trains and scores subnets: cpu, cuda or cuda:N (a GPU trains it many times faster; "
        "latency is still measured on `target`)."))

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, 0, None, low_open=True)
        check_range("weight", self.weight, 0, None, optional=False)


@dataclass
class RerankSettings:
    top_k: int = field(default=0, metadata=option(
        "With `latency_budget_ms`: after verification, train the K best-estimated candidates within the budget "
        "(verified, or predicted) from scratch for a few epochs (`rerank_epochs`) on `data`, on a reduced network "
        "(nb201: C=8, N=1 at 16x16), and choose the best held-out accuracy that the device confirms within the "
        "budget (unverified ones are measured first). Zero-cost proxies rank the space well but the top few "
        "cells poorly. About 15-25 s per candidate on one core with 10,000 CIFAR-10 training images "
        "(`rerank_per_class` 1250). From a baseline, without a speed-up: the baseline and the K fastest candidates "
        "estimated at least as accurate are trained alike, and the choice is the fastest the device confirms "
        "among those at least as accurate as the baseline after that training. The trainings count against "
        "`budget_minutes`: after the first (from a baseline: it and the fastest candidate), each starts only if "
        "it is expected to end in time. 0: the estimator alone chooses.",
        metavar="K"))
    epochs: float = field(default=5.0, metadata=option("Epochs of each `rerank` training.", metavar="E"))
    per_class: int | None = field(default=None, metadata=option(
        "Images per class of `data` read for `rerank` (default: the search's 500); 80% train, 20% held out.",
        metavar="N"))
    options: dict[str, Any] | None = None   # the reduced network (default for nb201: C=8, N=1)
    resolution: int | None = None     # default for nb201: 16 (never above the data's)

    def __post_init__(self) -> None:
        check_range("top_k", self.top_k, 0, optional=False)
        check_range("epochs", self.epochs, 0, None, low_open=True, optional=False)
        check_range("per_class", self.per_class, 1)
        check_range("resolution", self.resolution, 1)


@dataclass
class AccuracyConfig:
    estimator: str = field(default="auto", metadata=option(
        "Accuracy estimator (rank ensemble): auto = the space's supernet trained once on `data` (cached in "
        "`cache_dir`, resumable) + proxies; proxies only in `benchmark` mode and from a `baseline` (whose "
        "few-shot supernet `supernet` trains: docs/accuracy.md).", choices=("auto", "proxies", "supernet")))
    min_accuracy: float | None = field(default=None, metadata=option(
        "Minimise latency subject to estimated score >= A. A is a 0-100 rank score, with or without the "
        "supernet: the candidate's weighted mean percentile (supernet accuracy and proxies) among random "
        "architectures of the space; 50 = the median random architecture, 90 = better than 90% of them. Not a "
        "top-1 accuracy in %. Without either: the whole frontier.", metavar="A"))
    proxies: tuple[str, ...] = field(default=("jacob_cov", "params"), metadata=option(
        "Zero-cost proxies of the rank ensemble (comma-separated; see search.accuracy.proxies).", metavar="P,P"))
    proxy_batch: int = field(default=64, metadata=option(
        "Images of `data` the proxies are computed on; more images give steadier scores (jacob_cov's cost grows "
        "about linearly: 0.17 s a cell at 32 images, 0.54 s at 128, full NB201 network, one core).", metavar="N"))
    reference_size: int = 64          # random architectures the rank score is relative to
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    rerank: RerankSettings = field(default_factory=RerankSettings)

    def __post_init__(self) -> None:
        check_choice("estimator", self.estimator, ("auto", "proxies", "supernet"), "accuracy estimator")
        check_range("min_accuracy", self.min_accuracy, 0, 100)
        check_range("proxy_batch", self.proxy_batch, 2, optional=False)
        check_range("reference_size", self.reference_size, 2, optional=False)
        self.proxies = tuple(self.proxies)
        # lazy: loads torch (slow to import) only when this runs
        from search.accuracy.proxies import ProxyError, canonical_names
        try:
            canonical_names(self.proxies)
        except ProxyError as e:
            raise ConfigError("proxies", str(e)) from None


@dataclass
class BaselineConfig:
    """Starting from the user's model (search.baseline_search), and size limits on any search."""
    baseline: str | None = field(default=None, metadata=option(
        "Start from this model: a known model (see `known-models`: resnet20, resnet56, mobilenet_v2, ...), a .pt "
        "written by `train`/`search`, or an ONNX file of a known architecture. The space is derived from its "
        "stages (the stem is kept; each stage may change depth, width and block type); by default the search "
        "minimises latency subject to estimated accuracy >= the baseline's. The baseline is measured on the "
        "device, and the report states the measured speed-up over it.", metavar="NAME|MODEL"))
    speedup: float | None = field(default=None, metadata=option(
        "With `baseline`: maximise estimated accuracy subject to latency <= the baseline's measured latency / S.",
        metavar="S"))
    ratio_margin: float = field(default=RATIO_MARGIN, metadata=option(
        "With `speedup`: finalists are picked among candidates predicted at least this fraction below 1/S of the "
        "baseline's latency, and a finalist measured inside that margin is not chosen over one clear of it, so "
        "the choice is not a close call that another run would decide the other way. Widened to the spread of "
        "latency ratios the run observes between its measurement batches; 0: no margin.", metavar="FRACTION"))
    max_params: int | None = field(default=None, metadata=option(
        "Constraint: at most N weights (inference graph, BatchNorm folded).", metavar="N"))
    max_memory_mb: float | None = field(default=None, metadata=option(
        "Constraint: peak activations + weights at batch 1, float32, computed from the graph, at most MB "
        "(needs `baseline`).", metavar="MB"))

    def __post_init__(self) -> None:
        check_range("speedup", self.speedup, 0, None, low_open=True)
        check_range("ratio_margin", self.ratio_margin, 0, 0.5, optional=False)
        check_range("max_params", self.max_params, 1)
        check_range("max_memory_mb", self.max_memory_mb, 0, None, low_open=True)
        if self.speedup is not None and self.baseline is None:
            raise ConfigError("speedup", "is relative to a baseline's latency: give `baseline` too")
        if self.baseline is not None:
            # lazy: loads torch (slow to import) only when this runs
            from search.architecture import check_baseline_spec
            problem = check_baseline_spec(self.baseline)
            if problem:
                raise ConfigError("baseline", problem)


@dataclass
class VerificationConfig:
    host: str | None = field(default=None, metadata=option(
        "Measure finalists over SSH on this device instead of locally.", metavar="USER@DEVICE"))
    finalists: int = field(default=3, metadata=option(
        "Finalists measured on the device per verification round (0: no verification).", metavar="K"))
    rounds: int = field(default=2, metadata=option(
        "Verification rounds (each re-fits the predictor correction and re-ranks).", metavar="N"))
    measure_ties: bool = field(default=True, metadata=option(
        "With `latency_budget_ms`: spend leftover verification rounds on the cells within 2 points of the best "
        "verified one (the tie rule can pick them)."))
    remeasure_cap: int = field(default=5, metadata=option(
        "A finalist measured within its own uncertainty of the budget is re-measured, interleaved with the "
        "others, until the verdict is clear or it has this many measurements.", metavar="N"))
    max_measurements: int = field(default=50, metadata=option("Benchmark mode: measurements allowed.",
                                                              metavar="N"))
    calibration: int | None = None    # cells measured before the search (benchmark: 10)

    def __post_init__(self) -> None:
        check_host("host", self.host)
        check_range("finalists", self.finalists, 0, optional=False)
        check_range("rounds", self.rounds, 1, optional=False)
        check_range("remeasure_cap", self.remeasure_cap, 1, optional=False)
        check_range("max_measurements", self.max_measurements, 1, optional=False)
        check_range("calibration", self.calibration, 0)


@dataclass
class AlgorithmConfig:
    name: str = field(default="nsga2", metadata=option("Search algorithm (search.algorithms registry).",
                                                       registry=_algorithm_names))
    population: int = field(default=24, metadata=option("Architectures per generation.", metavar="N"))
    generations: int = field(default=12, metadata=option("Generations.", metavar="N"))

    def __post_init__(self) -> None:
        check_choice("name", self.name, ALGORITHMS, "algorithm")
        check_range("population", self.population, 2, optional=False)
        check_range("generations", self.generations, 1, optional=False)


@dataclass
class RunConfig:
    out: str | Path = field(default="runs/search", metadata=option(
        "Output directory. One holding an earlier run's results is refused unless `overwrite`.", metavar="DIR"))
    overwrite: bool = field(default=False, metadata=option(
        "Replace the results of an earlier run in `out`.", is_flag=True))
    budget_minutes: float = field(default=5.0, metadata=option(
        "Wall-clock cap of the whole run: supernet training, accuracy estimation, search, verification and "
        "`rerank` trainings "
        "(each phase gets its share; see docs/search.md).", metavar="M"))
    seed: int = field(default=0, metadata=option("Random seed."))
    cache_dir: str | Path | None = field(default=None, metadata=option(
        "Per-cell proxy scores and supernet checkpoints (default ~/.cache/hwnas, or $HWNAS_CACHE).", metavar="DIR"))
    ray_address: str | None = field(default=None, metadata=option(
        "Run on a Ray cluster (ADDRESS: the head's HOST:PORT, or 'auto' for one started on this machine; none: "
        "join the local one or start a private one): proxy scores and `rerank` trainings as Ray tasks (a GPU each "
        "with `device` cuda), finalists measured through a device actor. Needs the 'distributed' extra "
        "(docs/distributed.md).", metavar="[ADDRESS]", is_flag=False, flag_value=""))
    export_best: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        check_range("budget_minutes", self.budget_minutes, 0, None, low_open=True, optional=False)
        check_output_dir("out", self.out, self.overwrite, RESULT_FILES)
        if self.cache_dir is not None:
            check_output_dir("cache_dir", self.cache_dir, overwrite=True)

    @property
    def cache_path(self) -> Path:
        """`cache_dir`, else the cache root (`profiling.paths.cache_root`)."""
        return Path(self.cache_dir) if self.cache_dir else cache_root()


# ----------------------------------------------------------------------------------- whole
@dataclass
class SearchSpec:
    """One search, in parts; what involves two parts is checked here."""
    latency: LatencyConfig             # no default: a predictor (or a benchmark) is required
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    run: RunConfig = field(default_factory=RunConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)

    def __post_init__(self) -> None:
        if self.latency.latency_budget_ms is not None and self.accuracy.min_accuracy is not None:
            raise ConfigError("latency_budget_ms", "give `latency_budget_ms` or `min_accuracy`, not both")
        if self.latency.min_throughput is not None and self.accuracy.min_accuracy is not None:
            raise ConfigError("min_throughput", "give `min_throughput` or `min_accuracy`, not both")


PARTS = {"data": DataConfig, "space": SpaceConfig, "latency": LatencyConfig, "accuracy": AccuracyConfig,
         "supernet": SupernetConfig, "rerank": RerankSettings, "verification": VerificationConfig,
         "algorithm": AlgorithmConfig, "run": RunConfig, "baseline": BaselineConfig}


#: the flat `search.run.SearchConfig`'s field names (what `hwnas.search(...)` takes, and what
#: library messages name in backticks) -> (part in PARTS, that part's field)
FLAT_FIELDS: dict[str, tuple[str, str]] = {
    "space": ("space", "name"), "space_options": ("space", "options"),
    "predictor": ("latency", "predictor"), "latency_budget_ms": ("latency", "latency_budget_ms"),
    "target": ("latency", "target"), "targets_file": ("latency", "targets_file"), "force": ("latency", "force"),
    "min_throughput": ("latency", "min_throughput"), "objective": ("latency", "objective"),
    "benchmark": ("latency", "benchmark"),
    "data": ("data", "source"), "data_max_per_class": ("data", "max_per_class"),
    "data_image_size": ("data", "image_size"),
    "accuracy": ("accuracy", "estimator"), "min_accuracy": ("accuracy", "min_accuracy"),
    "proxies": ("accuracy", "proxies"), "proxy_batch": ("accuracy", "proxy_batch"),
    "reference_size": ("accuracy", "reference_size"),
    "supernet_epochs": ("supernet", "epochs"), "supernet_weight": ("supernet", "weight"),
    "device": ("supernet", "device"),
    "rerank": ("rerank", "top_k"), "rerank_epochs": ("rerank", "epochs"), "rerank_per_class": ("rerank", "per_class"),
    "rerank_options": ("rerank", "options"), "rerank_resolution": ("rerank", "resolution"),
    "host": ("verification", "host"), "finalists": ("verification", "finalists"),
    "verify_rounds": ("verification", "rounds"), "measure_ties": ("verification", "measure_ties"),
    "remeasure_cap": ("verification", "remeasure_cap"), "max_measurements": ("verification", "max_measurements"),
    "calibration": ("verification", "calibration"),
    "algorithm": ("algorithm", "name"), "population": ("algorithm", "population"),
    "generations": ("algorithm", "generations"),
    "out": ("run", "out"), "overwrite": ("run", "overwrite"), "budget_minutes": ("run", "budget_minutes"),
    "seed": ("run", "seed"), "cache_dir": ("run", "cache_dir"), "ray_address": ("run", "ray_address"),
    "export_best": ("run", "export_best"), "progress": ("run", "progress"),
    "baseline": ("baseline", "baseline"), "speedup": ("baseline", "speedup"), "max_params": ("baseline", "max_params"),
    "ratio_margin": ("baseline", "ratio_margin"),
    "max_memory_mb": ("baseline", "max_memory_mb"),
}


def flat_name(part: str, name: str) -> str:
    """The `SearchConfig` name of field `name` of part `part` (FLAT_FIELDS read backwards; a field
    missing there keeps its own name)."""
    return next((flat for flat, where in FLAT_FIELDS.items() if where == (part, name)), name)


_BUILD_ORDER = ("latency", "data", "space", "supernet", "rerank", "accuracy", "verification", "algorithm", "run",
                "baseline")


def _copied(value: Any) -> Any:
    """A container value copied, so that a configuration and its conversion share no dict."""
    return dict(value) if isinstance(value, dict) else tuple(value) if isinstance(value, (list, tuple)) else value


def spec_from_flat(values: dict[str, Any]) -> SearchSpec:
    """The typed configuration of flat `SearchConfig` values (FLAT_FIELDS), each part validated
    as it is built (supernet and rerank first: they go into accuracy)."""
    kw: dict[str, dict[str, Any]] = {part: {} for part in _BUILD_ORDER}
    for flat, (part, name) in FLAT_FIELDS.items():
        kw[part][name] = _copied(values[flat])
    built: dict[str, Any] = {}
    for part in _BUILD_ORDER:
        if part == "accuracy":
            kw[part].update(supernet=built.pop("supernet"), rerank=built.pop("rerank"))
        built[part] = PARTS[part](**kw[part])
    return SearchSpec(**built)


def flat_from_spec(spec: SearchSpec) -> dict[str, Any]:
    """The flat `SearchConfig` values of a typed configuration (spec_from_flat read backwards)."""
    parts = {part: getattr(spec, part) for part in _BUILD_ORDER if part not in ("supernet", "rerank")}
    parts.update(supernet=spec.accuracy.supernet, rerank=spec.accuracy.rerank)
    return {flat: _copied(getattr(parts[part], name)) for flat, (part, name) in FLAT_FIELDS.items()}


def cli_fields(cls: type) -> list[Field[Any]]:
    """The fields of a part that the command line offers (those with `option` metadata)."""
    return [f for f in fields(cls) if "help" in f.metadata]


__all__ = ["AccuracyConfig", "AlgorithmConfig", "BaselineConfig", "DataConfig", "LatencyConfig", "PARTS", "RESULT_FILES",
           "RerankSettings", "RunConfig", "SearchSpec", "SpaceConfig", "SupernetConfig", "VerificationConfig",
           "FLAT_FIELDS", "cli_fields", "flat_from_spec", "flat_name", "option", "spec_from_flat"]
