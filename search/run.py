"""The top-level search API: `run_search(SearchConfig(...)) -> SearchResult`.

    from search.run import SearchConfig, run_search
    res = run_search(SearchConfig(space="nb201", predictor="data/predictors/local-cpu.lgb",
                                  data="digits", latency_budget_ms=2.0, out="runs/s1"))
    res.best.key, res.best.measured_ms, res.out_dir

Stages: load the data, the space, the predictor (refusing one built for another target
unless `force`) and the accuracy estimator; NSGA-II over (estimated accuracy, predicted
latency); hardware in the loop on the finalists; outputs. Ctrl-C during the search or the
verification stops it and still writes every output from what was found so far.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from search.config import SearchSpec, flat_from_spec, spec_from_flat
from search.accuracy.estimator import DEFAULT_ENSEMBLE
from search.algorithms import GenerationInfo, get_algorithm
from search.benchmark import BenchmarkDevice, MeasurementLimitReached, ground_truth, parse_benchmark
from search.frontier import plot_frontier, write_best, write_frontier
from search.problem import (RATIO_MARGIN, BudgetTooLowError, Candidate, Correction, Evaluator, Formulation,
                            SearchError, pareto_front)
from search.verify import (Device, FeatureCorrection, RatioBudget, RunnerDevice, VerifyRound, best_verified,
                           feasible, measure_candidate, measure_relative, rank_key, verify_finalists)
from search import wiring
from search.accuracy.tasks import make_pool
from search.deploy import export_int8, images_per_s, throughput_budget_ms
from search.baseline_search import (BaselineInfo, baseline_formulation, baseline_space_options, known_markers,
                                    score_and_measure_baseline)
from search.models import EstimatedAccuracy, MacsLatency, PredictorLatency, cache_name
from search.accuracy.rerank import RerankConfig, RerankResult, describe, rerank_by_training
from search.report import write_report
from search.wiring import Data

if TYPE_CHECKING:  # the spaces import torch
    from search.spaces.base import SearchSpace

DEFAULT_PROXIES = DEFAULT_ENSEMBLE  # search.accuracy.estimator's best unsupervised ensemble on NB201


@dataclass
class SearchConfig:
    space: str = "nb201"
    predictor: str | Path | None = None     # .lgb; optional only in benchmark mode
    data: str = "digits"                    # DIR (image folders) | NPZ | digits
    data_max_per_class: int | None = 500    # images read per class from an image folder
    data_image_size: int | None = None      # resize the images to this size (square)
    latency_budget_ms: float | None = None
    min_accuracy: float | None = None
    target: str | None = None               # default: the predictor's own target
    targets_file: str | Path | None = None
    host: str | None = None                 # user@device: measure finalists over SSH
    finalists: int = 3                      # K finalists per verification round
    verify_rounds: int = 2
    measure_ties: bool = True               # budget: leftover rounds measure what the tie rule could pick
    out: str | Path = "runs/search"
    budget_minutes: float = 5.0             # wall-clock cap of the search phase
    seed: int = 0
    force: bool = False
    benchmark: str | None = None            # CSV:DEVICE (NB201 benchmark mode)
    max_measurements: int = 50              # benchmark mode: lookups allowed
    calibration: int | None = None          # cells measured before the search (benchmark: 10)
    algorithm: str = "nsga2"                # nsga2 | random
    population: int = 24
    generations: int = 12
    accuracy: str = "auto"                  # auto (supernet + proxies; proxies in benchmark mode) | proxies | supernet
    proxies: tuple[str, ...] = DEFAULT_PROXIES
    proxy_batch: int = 64
    supernet_epochs: float | None = None    # supernet training on the data (default 8 epochs)
    supernet_weight: float = 0.25           # the supernet's weight in the rank ensemble (the proxies share 1)
    device: str = "cpu"                     # torch device of supernet training and evaluation (e.g. cuda)
    reference_size: int = 64                # random architectures the rank score is relative to
    cache_dir: str | Path | None = None     # proxy scores per cell, supernet checkpoints (default: ~/.cache/hwnas)
    export_best: bool = True
    progress: bool = True
    space_options: dict[str, Any] = field(default_factory=dict)
    # re-ranking the best candidates by a short stand-alone training (search.accuracy.rerank); 0 = off
    rerank: int = 0                         # how many of the best-estimated candidates within the budget to train
    rerank_epochs: float = 5.0
    rerank_per_class: int | None = None     # images per class read for it (default: data_max_per_class)
    rerank_options: dict[str, Any] | None = None  # the reduced network (default for nb201: C=8, N=1)
    rerank_resolution: int | None = None    # default for nb201: 16 (never above the data's)
    # starting from a baseline (search.baseline_search): a known model's name, or a .pt/.onnx of one
    baseline: str | None = None
    speedup: float | None = None            # with baseline: latency <= baseline's measured / speedup
    ratio_margin: float = RATIO_MARGIN      # with speedup: picks and the choice clear of 1/speedup by this fraction
    max_params: int | None = None           # size constraints (search.memory), any formulation
    # deployment form (search.deploy): a throughput floor at the target's batch is a latency budget
    min_throughput: float | None = None     # images/s at the target's batch
    objective: str = "latency"              # latency | throughput (with min_accuracy: images/s at the batch)
    max_memory_mb: float | None = None
    # a Ray cluster ('auto', HOST:PORT, '' for the one joined or a private one): proxy scores and
    # re-ranking trainings run as its tasks, finalists are measured through one of its device
    # actors (profiling.fleet); None: everything in this process
    ray_address: str | None = None
    overwrite: bool = False                 # replace an earlier run's results in `out`
    remeasure_cap: int = 5                  # measurements of a finalist within its uncertainty of the budget

    def spec(self) -> SearchSpec:
        """The typed parts of search.config (each validates itself: a ConfigError names the field)."""
        return spec_from_flat({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_spec(cls, s: SearchSpec) -> "SearchConfig":
        """The flat configuration of a typed one (the engine's own reading of it)."""
        return cls(**flat_from_spec(s))


@dataclass
class SearchResult:
    best: Candidate | None
    frontier: list[Candidate]
    candidates: list[Candidate]
    out_dir: Path
    formulation: Formulation
    n_evaluated: int
    n_measurements: int
    rounds: list[VerifyRound]
    interrupted: bool
    elapsed_s: float
    correction: str
    notes: list[str]
    ground_truth: Any = None
    reranked: list[RerankResult] = field(default_factory=list)   # best first
    baseline: Any = None                            # search.baseline_search.BaselineInfo


class _Progress:
    def __init__(self, enabled: bool):
        from rich.console import Console
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.enabled = enabled

    def log(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg)


@dataclass(frozen=True)
class _Resolved:
    """The search's settings as the run reads them: the typed configuration, and the two values
    the run resolves from it before any work."""
    spec: SearchSpec
    space: str                          # the space searched: the spec's, or "baseline" from a baseline
    latency_budget_ms: float | None     # the spec's, or a throughput floor's budget at the target's batch
    # the space's options: the spec's, or from a baseline its own skeleton (what a rebuilt space,
    # e.g. for `rerank`, must be given so that the candidates' architectures are valid in it)
    space_options: dict[str, Any] | None = None

    def flat(self) -> dict[str, Any]:
        """The settings by their flat `SearchConfig` names, in its field order, as resolved (what
        frontier.json records as "config")."""
        values = dict(flat_from_spec(self.spec), space=self.space, latency_budget_ms=self.latency_budget_ms)
        return {f.name: values[f.name] for f in fields(SearchConfig)}


def run_search(config: SearchConfig | SearchSpec,
               on_generation: Callable[[GenerationInfo, list[Candidate]], None] | None = None) -> SearchResult:
    """Run one search. `config` is validated first, part by part (search.config: a ConfigError
    names the wrong field), before any data is loaded or any supernet trained; the flat
    `SearchConfig` is converted to its typed parts once, here, and the run reads those."""
    spec = config if isinstance(config, SearchSpec) else config.spec()
    lat, acc, ver, alg, run, base = (spec.latency, spec.accuracy, spec.verification, spec.algorithm, spec.run,
                                     spec.baseline)
    t0 = time.monotonic()
    ui = _Progress(run.progress)
    if base.baseline:
        space_name = "baseline"
    elif base.speedup is not None:
        raise SearchError("`speedup` is relative to a baseline's latency: give `baseline` NAME|MODEL too")
    else:
        space_name = spec.space.name
    budget_ms = lat.latency_budget_ms
    formulation = Formulation(budget_ms, acc.min_accuracy, max_params=base.max_params,
                              max_memory_mb=base.max_memory_mb)
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    # ---- set-up: every check that can fail does so before any long work
    algorithm = get_algorithm(alg.name)
    bench = None
    if lat.benchmark:
        csv_path, dev_name = parse_benchmark(lat.benchmark)
        bench = BenchmarkDevice(csv_path, dev_name, ver.max_measurements)
    predictor, target = wiring.load_predictor_and_target(lat, benchmark=bench is not None)
    batch = target.batch if target is not None else 1
    if lat.objective not in ("latency", "throughput"):
        raise SearchError(f"objective {lat.objective!r} is not one of latency, throughput")
    if lat.min_throughput is not None:
        if budget_ms is not None or acc.min_accuracy is not None:
            raise SearchError("give a throughput floor, a latency budget or a minimum accuracy, one of them")
        if lat.min_throughput <= 0:
            raise SearchError(f"the throughput floor must be positive, not {lat.min_throughput:g} images/s")
        budget_ms = throughput_budget_ms(lat.min_throughput, batch)
        formulation = Formulation(budget_ms, None, max_params=base.max_params, max_memory_mb=base.max_memory_mb)
        ui.log(f"throughput floor {lat.min_throughput:g} images/s at batch {batch}: a latency budget of "
               f"{budget_ms:.3f} ms per batch")
    if lat.objective == "throughput":
        if budget_ms is not None:
            raise SearchError("the throughput objective maximises images/s under an accuracy constraint: give "
                              "a minimum accuracy (or a throughput floor with the accuracy objective)")
        ui.log(f"objective: maximise images/s at batch {batch} (one run of {batch} image(s) per latency)")
    resolved = _Resolved(spec, space_name, budget_ms)
    wiring.torch_device(acc.supernet.device)
    data = wiring.load_data(spec.data.source, run.seed, max_per_class=spec.data.max_per_class,
                            image_size=spec.data.image_size)
    base_space = None  # (name, space options) of the baseline the search starts from
    if base.baseline:
        if bench is not None:
            raise SearchError("`baseline` needs a real device (a predictor and the target); `benchmark` is the "
                              "NB201 table's devices only")
        base_space = baseline_space_options(base.baseline, data)
    resolved = replace(resolved, space_options=(base_space[1] if base_space else None) or spec.space.options)
    space = wiring.make_space(space_name, data, resolved.space_options)
    if base.max_memory_mb is not None and space.size_of(space.sample(0))[1] is None:
        raise SearchError(f"`max_memory_mb`: the {space_name} space does not compute memory without an "
                          f"export; search from a baseline (`baseline` NAME), whose space does")
    latency = wiring.latency_model(predictor, space, lat.predictor)
    # from a baseline, the objective is known only once the baseline is scored (and measured)
    objective = (f"objective from the baseline {base.baseline}, once it is scored and measured" if base_space
                 else formulation.describe())
    ui.log(f"[bold]hwnas search[/]: space {space_name}, data {data.name}, latency from {latency.name}; {objective}")
    pool = make_pool(run.ray_address, acc.supernet.device)
    if run.ray_address is not None:
        ui.log(f"evaluations on {pool.name}")
    device: BenchmarkDevice | RunnerDevice
    if bench is not None:
        device = bench
    else:
        device = RunnerDevice(target, ver.host, workdir=out / "finalists", ray_address=run.ray_address)
        if ver.finalists > 0:
            conn = device.connect()  # an unreachable host fails now, not after the supernet and the search
            mismatch = wiring.predictor_device_note(predictor, target, conn.facts)
            if mismatch:
                notes.append(mismatch)
                ui.log(f"[yellow]warning:[/] {mismatch}")
    deadline = t0 + run.budget_minutes * 60.0  # the whole run: supernet, reference, search, verification
    # the accuracy estimator (supernet training, the reference population) takes at most half
    # the budget; the search has until the last 15% (verification, outputs). Short trainings
    # (`rerank`) are the accuracy check that matters most, so with them the estimator has 35%,
    # the search until 60%, and verification and the trainings the last 40%.
    shares = (0.35, 0.6) if acc.rerank.top_k > 0 else (0.5, 0.85)
    try:
        accuracy = wiring.accuracy_model(acc, space, data, run.cache_path, ui.log,
                                         deadline=t0 + shares[0] * (deadline - t0), pool=pool, seed=run.seed,
                                         benchmark=bench is not None)
    except KeyboardInterrupt:
        _write_setup_interrupted(space_name, out, formulation, data, "training the supernet or scoring the "
                                 "reference population (the supernet checkpoint keeps the steps trained; the same "
                                 "command resumes from it)")
        raise
    sn_info = getattr(getattr(accuracy, "supernet", None), "train_info", None) or {}
    if sn_info.get("stopped_at"):
        notes.append(f"the supernet trained {sn_info['stopped_at']} of {sn_info['total']} steps within its share of "
                     f"the {run.budget_minutes:g}-minute budget (the checkpoint resumes in a later run)")
    if getattr(accuracy, "reference_cut", None):
        notes.append(f"the reference population was cut at {accuracy.reference_cut} of {acc.reference_size} "
                     f"architectures by the time budget")
    correction = FeatureCorrection(space) if bench is not None else Correction()
    evaluator = Evaluator(space, accuracy, latency, correction=correction)
    baseline = None
    if base_space is not None and base.baseline is not None:
        baseline = score_and_measure_baseline(base_space[0], space, evaluator, device, base_space[1],
                                              measure=ver.finalists > 0, log=ui.log, spec=base.baseline,
                                              data=spec.data.source, image_size=spec.data.image_size)
        formulation = baseline_formulation(baseline, base.speedup, budget_ms, acc.min_accuracy,
                                           base.max_params, base.max_memory_mb)
        ui.log(f"objective: {formulation.describe()}")
        if base.speedup is not None and ver.finalists > 0 and isinstance(device, RunnerDevice):
            # verdicts by the latency ratio to the baseline, measured in the same interleaved passes
            baseline.ratio = RatioBudget(baseline.candidate, base.speedup, base.ratio_margin)

    interrupted = False
    rounds: list[VerifyRound] = []
    info = GenerationInfo(0, 0, 0.0)
    search_deadline = t0 + shares[1] * (deadline - t0)
    ui.log(f"search: up to {alg.generations} generations of {alg.population}, until "
           f"{max(0.0, search_deadline - time.monotonic()):.0f} s from now at most")

    def gen_callback(i: GenerationInfo) -> None:
        cands = evaluator.candidates
        front = pareto_front(cands, use_measured=True)
        ok = [c for c in cands if feasible(c, formulation)]
        best = min(ok, key=rank_key(formulation)) if ok else None
        best_s = "none yet" if best is None else \
            f"{best.accuracy:.2f} @ {best.predicted_ms:.3f} ms  {best.key}"
        label = {"budget": "best under budget", "min_accuracy": "fastest above threshold",
                 "frontier": "most accurate"}[formulation.kind]
        left = i.elapsed_s / (i.generation + 1) * (alg.generations - i.generation - 1)
        left = min(left, max(0.0, search_deadline - time.monotonic()))
        ui.log(f"gen {i.generation + 1:>3}/{alg.generations}  evaluated {i.n_evaluated:>5}  "
               f"frontier {len(front):>3}  {label}: {best_s}  [{i.elapsed_s:.0f}s, about {left:.0f} s left]")
        # partial outputs every generation: a killed run still leaves a frontier
        write_frontier(out, cands, _meta(resolved, formulation, evaluator, device, interrupted=True,
                                         partial=True))
        if on_generation:
            on_generation(i, cands)

    try:
        # ---- benchmark mode: a few measurements first adapt the predictor to the device
        n_cal = ver.calibration if ver.calibration is not None else (10 if bench is not None else 0)
        if n_cal:
            _calibrate(space, evaluator, device, n_cal, run.seed, ui)
        # ---- the search
        info = algorithm.run(space, evaluator, formulation, population=alg.population,
                             generations=alg.generations, seed=run.seed, callback=gen_callback,
                             deadline=search_deadline)
        if time.monotonic() >= search_deadline and info.generation + 1 < alg.generations:
            notes.append(f"the search stopped at its share of the {run.budget_minutes:g}-minute budget "
                         f"after generation {info.generation + 1}")
        _check_budget(evaluator, formulation)
        # ---- hardware in the loop
        if ver.finalists > 0:
            ui.log(f"verifying finalists on {device.name} ...")
            max_meas = ver.max_measurements if bench is not None else None
            if max_meas is not None and acc.rerank.top_k > 0:
                # one round of finalists is kept for the re-ranking to verify what it prefers
                max_meas = max(1, max_meas - ver.finalists)
            rounds_allowed = ver.rounds if bench is None else 100

            def on_measure(c: Candidate, r: int) -> None:
                verdict = f"[red]dropped[/] ({c.dropped})" if c.dropped else "[green]kept[/]"
                ui.log(f"  round {r}: {c.key}  predicted {c.predicted_ms:.3f} ms "
                       f"(raw {c.raw_predicted_ms:.3f}) → measured {c.measured_ms:.3f} ms  {verdict}")
            def on_settle(c: Candidate, st: Any) -> None:
                ui.log(f"  re-measured (close to the budget): {st.describe(formulation.latency_budget_ms)}")
            ratio = baseline.ratio if baseline is not None else None
            if ratio is not None and baseline is not None:
                ui.log(f"  each round's finalists are measured interleaved with the baseline {baseline.name} and "
                       f"kept iff their latency ratio to it is <= 1/{base.speedup:g}")
                ui.log(f"  {ratio.describe_margin()}")
            try:
                rounds = verify_finalists(space, evaluator, device, formulation, k=ver.finalists,
                                          max_rounds=rounds_allowed, max_measurements=max_meas,
                                          on_measure=on_measure, measure_ties=ver.measure_ties,
                                          on_settle=on_settle, remeasure_cap=ver.remeasure_cap,
                                          ratio=ratio, on_ratio=lambda c, text: ui.log(f"    {text}"))
            except MeasurementLimitReached:
                pass
            if ratio is not None:
                formulation = ratio.formulation(formulation)
                ui.log(f"objective after verification: {formulation.describe()}")
            ui.log(f"predictor correction: {evaluator.correction.describe()}")
    except KeyboardInterrupt:
        interrupted = True
        notes.append("interrupted (Ctrl-C): outputs hold what was found until then")
        ui.log("[yellow]interrupted: writing what was found so far ...[/]")
    except BudgetTooLowError as e:
        _finish(resolved, out, space, evaluator, device, formulation, None, rounds, interrupted,
                notes + [str(e)], t0, data, accuracy, latency, bench, baseline=baseline)
        raise

    best = choose_best(evaluator.candidates, formulation, space)
    if best is not None and best.measured_ms is None and ver.finalists > 0 and not interrupted:
        notes.append("no finalist was verified within the constraint; the choice rests on the corrected prediction")
    reranked: list[RerankResult] = []
    if acc.rerank.top_k > 0 and not interrupted:
        try:
            if baseline is not None and formulation.kind == "min_accuracy":
                best, reranked = _rerank_against_baseline(resolved, evaluator, device, space, formulation, data,
                                                          best, rounds, run.cache_path, ui, notes, pool, baseline,
                                                          deadline)
            else:
                best, reranked = _rerank(resolved, evaluator, device, space, formulation, data, best, rounds,
                                         run.cache_path, ui, notes, pool, baseline, deadline)
            if baseline is not None and baseline.ratio is not None:
                formulation = baseline.ratio.formulation(formulation)
        except KeyboardInterrupt:
            interrupted = True
            notes.append("interrupted (Ctrl-C) during the short training: the choice is the estimator's")
            ui.log("[yellow]interrupted: the choice is the estimator's; writing the outputs ...[/]")
    try:
        return _finish(resolved, out, space, evaluator, device, formulation, best, rounds, interrupted,
                       notes, t0, data, accuracy, latency, bench, reranked, baseline=baseline)
    finally:
        if hasattr(pool, "close"):
            pool.close()  # leaves the Ray cluster if the pool joined it


def _write_setup_interrupted(space: str, out: Path, formulation: Formulation, data: Data, phase: str) -> None:
    """Ctrl-C before the search had a candidate: report.md and best.json say where it stopped."""
    note = f"interrupted (Ctrl-C) while {phase}; nothing was searched yet"
    write_best(out, None, space, {"formulation": formulation.describe(), "interrupted": True, "note": note})
    (out / "frontier.csv").write_text("")
    (out / "report.md").write_text(f"# hwnas search report (interrupted: partial)\n\n- space: `{space}`; "
                                   f"data: {data.name}\n- objective: {formulation.describe()}\n\n## Notes\n\n"
                                   f"- {note}\n")


def _rerank_data(resolved: _Resolved, data: Data) -> Data:
    """The data the short trainings read: the search's, or `rerank_per_class` images per class."""
    spec, settings = resolved.spec, resolved.spec.accuracy.rerank
    if settings.per_class is not None and settings.per_class != spec.data.max_per_class:
        return wiring.load_data(spec.data.source, spec.run.seed, max_per_class=settings.per_class,
                                image_size=spec.data.image_size)
    return data


def _short_trainings(resolved: _Resolved, rdata: Data, candidates: list[Candidate], rc: RerankConfig,
                     cache_dir: Path, ui: _Progress, tasks: Any, **within: Any) -> list[RerankResult]:
    """`rerank_by_training` of `candidates` on `rdata`, in the space as it was searched (its options;
    from a baseline, the baseline's skeleton, so that every candidate is valid in it), cached per
    space and data under `cache_dir`; `within` its ordering and deadline arguments."""
    name = resolved.space
    cache = cache_dir / f"rerank-{name}-{cache_name(rdata.name, rdata.num_classes, resolved.spec.run.seed)}.jsonl"

    def space_with(options: dict[str, Any]) -> SearchSpace[Any]:
        return wiring.make_space(name, rdata, {**(resolved.space_options or {}), **options})

    return rerank_by_training(name, space_with, candidates, rdata.train, rdata.val, rdata.resolution, rc,
                              cache_file=cache, log=ui.log, pool=tasks, **within)


def _faster_than(c: Candidate, base: Candidate) -> bool:
    """Is `c` faster than the baseline, in the same units on both sides: measured against measured
    when both were measured, else prediction against prediction. A measurement against a prediction
    carries the predictor's whole error on this machine: a predictor that over-predicts small
    networks 2x (8x8 CIFAR-size inputs on a Zen 4 VM) left no candidate "faster" than the measured
    ResNet-56, and nothing to re-rank."""
    if c.measured_ms is not None and base.measured_ms is not None:
        return c.measured_ms < base.measured_ms
    return c.predicted_ms < base.predicted_ms


def _rerank_against_baseline(resolved: _Resolved, evaluator: Evaluator, device: Device, space: SearchSpace[Any],
                             formulation: Formulation, data: Data, best: Candidate | None,
                             rounds: list[VerifyRound], cache_dir: Path, ui: _Progress, notes: list[str],
                             tasks: Any, baseline: BaselineInfo,
                             deadline: float | None = None) -> tuple[Candidate | None, list[RerankResult]]:
    """"Minimise latency subject to accuracy at least the baseline's", with the accuracy side
    checked by training rather than by the estimator alone: the estimator's score is a rank, good
    over the space and poor among a few close candidates. The `rerank` fastest candidates it puts
    at or above the baseline (within the size limits) and the baseline itself are trained briefly
    with one recipe (search.accuracy.rerank); of those whose held-out accuracy is at least the
    baseline's, the device measures each not yet measured, and the fastest measured is chosen.
    The estimator's choice stays when none is. The baseline and the fastest candidate are always
    trained; each slower one only if it is expected to end by `deadline`."""
    spec, name = resolved.spec, resolved.space
    base = baseline.candidate
    pool = sorted((c for c in evaluator.candidates if c.key != base.key and feasible(c, formulation)
                   and _faster_than(c, base)), key=lambda c: c.latency_ms)[:spec.accuracy.rerank.top_k]
    if not pool:
        notes.append("`rerank`: no candidate faster than the baseline is estimated at least as accurate; "
                     "nothing to re-rank")
        return best, []
    rdata = _rerank_data(resolved, data)
    settings = spec.accuracy.rerank
    rc = RerankConfig(top_k=len(pool) + 1, epochs=settings.epochs, seed=spec.run.seed,
                      space_options=settings.options, resolution=settings.resolution)
    res = rc.resolution_for(name, rdata.resolution)

    def what(n: int) -> str:
        return (f"a short training of the baseline and of the {n} fastest candidates estimated at least as "
                f"accurate: {rc.epochs:g} epochs on {len(rdata.train):,} images at {res}x{res}")

    ui.log(f"checking accuracy against the baseline by {what(len(pool))} ...")
    results = _short_trainings(resolved, rdata, [base, *pool], rc, cache_dir, ui, tasks, ordered=True,
                               deadline=deadline, required=2, cost=lambda c: c.latency_ms)
    short = {r.key: r.short_accuracy for r in results}
    bar = short[base.key]
    if len(short) < len(pool) + 1:
        notes.append(f"`rerank`: the budget left time to train {len(short) - 1} of the {len(pool)} fastest candidates "
                     f"estimated at least as accurate (fastest first), beside the baseline")
        pool = [c for c in pool if c.key in short]
    passing = [c for c in pool if short[c.key] >= bar]
    vr = VerifyRound(round=len(rounds) + 1)
    for c in passing:
        if c.measured_ms is None:
            try:
                ms = measure_candidate(space, evaluator, device, formulation, c, vr)
            except MeasurementLimitReached:
                break
            ui.log(f"  accuracy-checked: {c.key}  predicted {c.predicted_ms:.3f} ms → measured {ms:.3f} ms")
    if vr.measured:
        rounds.append(vr)
        evaluator.recorrect()
    confirmed = [c for c in passing if c.measured_ms is not None and c.dropped is None]
    if not confirmed:
        notes.append(f"`rerank`: none of the {len(pool)} fastest candidates estimated at least as accurate as the "
                     f"baseline reached its held-out accuracy after the short training ({bar:.2f}%)"
                     + ("" if not passing else ", or the measurement allowance ran out")
                     + "; the choice is the estimator's")
        return best, results
    chosen = min(confirmed, key=lambda c: float(c.measured_ms or 0.0))
    notes.append(f"accuracy checked by {what(len(pool))}: `{chosen.key}` reached {short[chosen.key]:.2f}% held-out against "
                 f"the baseline's {bar:.2f}%; {len(passing)} of {len(pool)} reached the baseline's" +
                 ("" if best is None or best.key == chosen.key else f"; the estimator alone chose `{best.key}`"))
    return chosen, results


def _rerank(resolved: _Resolved, evaluator: Evaluator, device: Device, space: SearchSpace[Any],
            formulation: Formulation, data: Data, best: Candidate | None, rounds: list[VerifyRound], cache_dir: Path,
            ui: _Progress, notes: list[str], tasks: Any = None, baseline: BaselineInfo | None = None,
            deadline: float | None = None) -> tuple[Candidate | None, list[RerankResult]]:
    """Short training (search.accuracy.rerank) of the `rerank` best-estimated candidates within the
    budget (verified, or predicted after the correction and not yet measured); they are then
    taken in order of short-training accuracy, measuring each unverified one until one is
    verified within the budget. The estimator's choice stays when none is. The best-estimated one
    is always trained; each next one only if it is expected to end by `deadline`."""
    if formulation.kind != "budget":
        # under `min_accuracy` the objective is latency, and the frontier has no single objective
        notes.append("`rerank` applies to `latency_budget_ms` searches only; the choice is the usual one")
        return best, []
    budget = formulation.latency_budget_ms
    if budget is None:  # a budget formulation has one
        return best, []
    pool = [c for c in evaluator.candidates if c.dropped is None and c.latency_ms <= budget]
    if len(pool) < 2:
        notes.append(f"`rerank`: {len(pool)} candidate(s) within the budget, nothing to re-rank")
        return best, []
    spec, name = resolved.spec, resolved.space
    settings, seed = spec.accuracy.rerank, spec.run.seed
    rdata = _rerank_data(resolved, data)
    rc = RerankConfig(top_k=settings.top_k, epochs=settings.epochs, seed=seed, space_options=settings.options,
                      resolution=settings.resolution)
    what = describe(rc, name, rdata.resolution, len(rdata.train))
    ui.log(f"re-ranking: {what} ...")
    results = _short_trainings(resolved, rdata, pool, rc, cache_dir, ui, tasks, deadline=deadline,
                               cost=lambda c: c.latency_ms)
    if len(results) < min(rc.top_k, len(pool)):
        notes.append(f"`rerank`: the budget left time to train {len(results)} of the {min(rc.top_k, len(pool))} "
                     f"best-estimated candidates (best first)")
    by_key = {c.key: c for c in pool}
    chosen, vr = None, VerifyRound(round=len(rounds) + 1)
    ratio = baseline.ratio if baseline is not None else None
    for r in results:
        c = by_key[r.key]
        if c.measured_ms is None:
            try:
                if ratio is not None:  # with the baseline, in the same passes, decided by the ratio
                    measure_relative(space, evaluator, device, ratio, [c], vr, cap=spec.verification.remeasure_cap,
                                     on_settle=lambda _, text: ui.log(f"    {text}"))
                    measured = c.measured_ms
                    assert measured is not None, "measure_relative measures each candidate it is given"
                    ms = float(measured)
                else:
                    ms = measure_candidate(space, evaluator, device, formulation, c, vr)
            except MeasurementLimitReached:
                continue  # a verified one further down can still be chosen
            ui.log(f"  re-rank round: {c.key}  predicted {c.predicted_ms:.3f} ms → measured {ms:.3f} ms  "
                   + (f"dropped ({c.dropped})" if c.dropped else "kept"))
        if c.dropped is None:
            chosen = c
            break
    if vr.measured:
        rounds.append(vr)
        evaluator.recorrect()
    if chosen is None:  # every one over the budget, or the allowance ran out: the estimator's choice
        notes.append("`rerank`: no re-ranked candidate was verified within the budget (measured over it, "
                     "or the measurement allowance ran out); the choice is the estimator's")
        return best, []
    short = next(r.short_accuracy for r in results if r.key == chosen.key)
    notes.append(f"chosen by {what}: `{chosen.key}` ({short:.2f}% held-out after the short training; "
                 f"estimated {chosen.accuracy:.2f})" +
                 ("" if best is None or best.key == chosen.key else f"; the estimator alone chose `{best.key}`"))
    return chosen, results


def choose_best(cands: list[Candidate], formulation: Formulation,
                space: SearchSpace[Any] | None = None) -> Candidate | None:
    """Verified and feasible first; else feasible on the corrected prediction; frontier: knee."""
    if formulation.kind == "frontier":
        front = pareto_front(cands, use_measured=True)
        if not front:
            return None
        verified = [c for c in front if c.measured_ms is not None]
        pool = verified if len(verified) >= 2 else front
        return _knee(pool)
    best = best_verified(cands, formulation, space)
    if best is not None:
        return best
    ok = [c for c in cands if feasible(c, formulation)]
    return min(ok, key=rank_key(formulation)) if ok else None


def _knee(front: list[Candidate]) -> Candidate:
    """The frontier point farthest from the line between its two ends (normalised axes)."""
    if len(front) <= 2:
        return front[-1]
    x = np.log(np.array([c.latency_ms for c in front]))
    y = np.array([c.accuracy for c in front])
    x = (x - x.min()) / (np.ptp(x) or 1.0)
    y = (y - y.min()) / (np.ptp(y) or 1.0)
    d = y - x  # distance above the diagonal from (0,0) to (1,1)
    return front[int(np.argmax(d))]


def _check_budget(evaluator: Evaluator, formulation: Formulation, probe: int = 2000, seed: int = 0) -> None:
    """Budget below every candidate: say so and show the fastest one (the search's, or a
    faster one found by a latency-only probe of random architectures)."""
    budget = formulation.latency_budget_ms
    if formulation.kind != "budget" or budget is None or not evaluator.cache:
        return
    cands = evaluator.candidates
    if any(c.low_ms <= budget for c in cands):
        return
    fastest = min(cands, key=lambda c: c.latency_ms)
    # latency is cheap: probe random architectures for a faster one before giving up
    space, rng = evaluator.space, np.random.default_rng(seed + 991)
    archs = [space.sample(rng) for _ in range(probe)]
    med, lo, hi = evaluator.latency.predict(archs)
    tmp = [Candidate(key=space.to_string(a), arch=a, encoding=np.zeros(0), accuracy=float("nan"),
                     predicted_ms=float(m), low_ms=float(l), high_ms=float(h), raw_predicted_ms=float(m),
                     raw_low_ms=float(l), raw_high_ms=float(h)) for a, m, l, h in zip(archs, med, lo, hi)]
    evaluator._apply_correction(tmp)
    best_probe = min(tmp, key=lambda c: c.predicted_ms)
    if best_probe.predicted_ms < fastest.latency_ms:
        best_probe = evaluator.evaluate([best_probe.arch])[0]
        fastest = best_probe
        if fastest.low_ms <= budget:
            return
    raise BudgetTooLowError(
        f"the latency budget {formulation.latency_budget_ms:g} ms is below the fastest candidate "
        f"({len(cands)} searched + {probe} probed): {fastest.key} at {fastest.predicted_ms:.3f} ms predicted "
        f"(interval {fastest.low_ms:.3f}-{fastest.high_ms:.3f} ms), estimated accuracy {fastest.accuracy:.2f}. "
        f"Raise the budget to at least {fastest.predicted_ms:.3f} ms, or search a smaller space.", fastest)


def _calibrate(space: SearchSpace[Any], evaluator: Evaluator, device: Device, n: int, seed: int,
               ui: _Progress) -> None:
    """Measure n cells spread over the predicted latency range and fit the correction."""
    rng = np.random.default_rng(seed + 777)
    pool: list[Any] = []
    keys: set[str] = set()
    while len(pool) < 20 * n:
        a = space.sample(rng)
        k = space.to_string(a)
        if k not in keys:
            keys.add(k)
            pool.append(a)
    med, _, _ = evaluator.latency.predict(pool)
    order = np.argsort(med)
    picks = [pool[order[int(i)]] for i in np.linspace(0, len(pool) - 1, n).round()]
    cands = evaluator.evaluate(picks)
    for c in cands:
        evaluator.add_measurement(c, device.measure(space, c))
    evaluator.recorrect()
    ui.log(f"calibration: measured {n} cells spread over the predicted range; "
           f"correction {evaluator.correction.describe()}")


def _meta(resolved: _Resolved, formulation: Formulation, evaluator: Evaluator, device: Device,
          interrupted: bool, partial: bool = False) -> dict[str, Any]:
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in resolved.flat().items()}
    return {"config": cfg, "formulation": formulation.kind, "constraint": formulation.describe(),
            "accuracy_estimator": evaluator.accuracy.name, "latency_model": evaluator.latency.name,
            "device": device.name, "n_evaluated": len(evaluator.cache),
            "n_measurements": device.n_measurements, "correction": evaluator.correction.describe(),
            "interrupted": interrupted, "partial": partial}


def _finish(resolved: _Resolved, out: Path, space: SearchSpace[Any], evaluator: Evaluator, device: Device,
            formulation: Formulation, best: Candidate | None, rounds: list[VerifyRound], interrupted: bool,
            notes: list[str], t0: float, data: Data, accuracy: EstimatedAccuracy,
            latency: MacsLatency | PredictorLatency, bench: BenchmarkDevice | None,
            reranked: list[RerankResult] | None = None, baseline: BaselineInfo | None = None) -> SearchResult:

    cands = evaluator.candidates
    spec, space_name = resolved.spec, resolved.space
    meta = _meta(resolved, formulation, evaluator, device, interrupted)
    if cands:
        write_frontier(out, cands, meta)
    else:
        (out / "frontier.csv").write_text("")
    target = getattr(device, "target", None)
    form = f" ({target.form})" if target is not None else ""
    title = f"{space_name} on {device.name}{form}: {formulation.describe()}"
    markers: dict[str, Any] = {}
    if baseline is not None:
        speedup, how = baseline.speedup_of(best)
        title = f"from {baseline.name} on {device.name}{form}: {formulation.describe()}" + (
            f"; {how} speed-up {speedup:.2f}x" if speedup else "")
        markers = {"baseline": (baseline.name, baseline.candidate),
                   "known": known_markers(space, getattr(latency, "predictor", None), data.resolution,
                                          evaluator.correction)}
    plot_frontier(out / "frontier.png", cands, formulation, best, title, getattr(accuracy, "unit", accuracy.name),
                  **markers)
    gt = None
    if bench is not None and best is not None:
        gt = ground_truth(bench.csv_path, bench.device, formulation.latency_budget_ms, best.key)
    best_meta: dict[str, Any] = {"formulation": formulation.describe(), "device": device.name,
                 "accuracy_estimator": accuracy.name, "interrupted": interrupted}
    if target is not None:
        ms = best.measured_ms if best is not None and best.measured_ms is not None else (
            best.predicted_ms if best is not None else None)
        best_meta["deployment"] = {"target": target.name, "precision": target.precision, "batch": target.batch,
                                   "images_per_s": images_per_s(ms, target.batch),
                                   "objective": spec.latency.objective,
                                   "min_throughput": spec.latency.min_throughput}
    if reranked:
        best_meta["short_training"] = [asdict(r) for r in reranked]
    if baseline is not None:
        best_meta["baseline"] = baseline.to_dict(best)
        best_meta["speedup"] = best_meta["baseline"]["speedup"]
        best_meta["space_options"] = dict(getattr(space, "build_options", {}))
    write_best(out, best, space_name, best_meta)
    if best is not None and spec.run.export_best:
        try:
            best_meta.update(wiring.export_best(space, best, accuracy, data, out))
            if target is not None and target.precision == "int8":  # the deployed model is the quantized one
                best_meta.update(export_int8(out, data))
            write_best(out, best, space_name, best_meta)
        except KeyboardInterrupt:
            notes.append("best.onnx/best.pt were not written (interrupted)")
        except Exception as e:  # the outputs above stay usable
            notes.append(f"best.onnx/best.pt could not be written: {e}")
    result = SearchResult(best=best, frontier=pareto_front(cands, use_measured=True), candidates=cands,
                          out_dir=out, formulation=formulation, n_evaluated=len(cands),
                          n_measurements=device.n_measurements, rounds=rounds, interrupted=interrupted,
                          elapsed_s=time.monotonic() - t0, correction=evaluator.correction.describe(),
                          notes=notes, ground_truth=gt, reranked=list(reranked or []), baseline=baseline)
    write_report(out / "report.md", spec, space_name, result, dict(meta, best=best_meta), device, data)
    if hasattr(device, "close"):
        device.close()
    return result


__all__ = ["DEFAULT_PROXIES", "SearchConfig", "SearchResult", "choose_best", "run_search"]
