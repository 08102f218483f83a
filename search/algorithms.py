"""Search algorithms: NSGA-II through pymoo, and a random-search baseline.

Both work on architecture strings (the space's own notation) so that pymoo's duplicate
elimination and our caches agree, and both run generation by generation (pymoo's ask/tell
interface) so the caller can show progress, stop on a time limit, and stop cleanly on Ctrl-C
with everything scored so far.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from search.problem import Evaluator, Formulation, SearchError


@dataclass
class GenerationInfo:
    generation: int
    n_evaluated: int
    elapsed_s: float


# A callback after every generation; returning True stops the search.
Callback = Callable[[GenerationInfo], bool | None]


def _pymoo_parts(space, evaluator: Evaluator, formulation: Formulation, rng: np.random.Generator):
    # lazy: loads pymoo (slow to import) only when this runs
    from pymoo.core.crossover import Crossover
    from pymoo.core.duplicate import ElementwiseDuplicateElimination
    from pymoo.core.mutation import Mutation
    from pymoo.core.problem import Problem
    from pymoo.core.sampling import Sampling

    n_constr = formulation.n_constraints
    cache_arch: dict[str, Any] = {}

    def to_key(arch) -> str:
        k = space.to_string(arch)
        cache_arch.setdefault(k, arch)
        return k

    def to_arch(key: str):
        a = cache_arch.get(key)
        return a if a is not None else space.from_string(key)

    class ArchProblem(Problem):
        def __init__(self):
            super().__init__(n_var=1, n_obj=2, n_ieq_constr=n_constr, vtype=object)

        def _evaluate(self, X, out, *args, **kwargs):
            cands = evaluator.evaluate([to_arch(x[0]) for x in X])
            acc = np.array([c.accuracy for c in cands])
            lat = np.array([c.predicted_ms for c in cands])
            out["F"] = np.column_stack([-acc, lat])
            g = formulation.search_constraint(acc, lat, [c.params for c in cands], [c.memory_mb for c in cands])
            if g is not None:
                out["G"] = g

    class ArchSampling(Sampling):
        def _do(self, problem, n_samples, **kwargs):
            X = np.full((n_samples, 1), None, dtype=object)
            for i in range(n_samples):
                X[i, 0] = to_key(space.sample(rng))
            return X

    class ArchCrossover(Crossover):
        def __init__(self):
            super().__init__(2, 2, prob=0.9)

        def _do(self, problem, X, **kwargs):
            _, n_matings, _ = X.shape
            Y = np.full((2, n_matings, 1), None, dtype=object)
            for k in range(n_matings):
                a, b = to_arch(X[0, k, 0]), to_arch(X[1, k, 0])
                Y[0, k, 0] = to_key(space.crossover(a, b, rng))
                Y[1, k, 0] = to_key(space.crossover(b, a, rng))
            return Y

    class ArchMutation(Mutation):
        def _do(self, problem, X, **kwargs):
            for i in range(len(X)):
                if rng.random() < 0.9:
                    X[i, 0] = to_key(space.mutate(to_arch(X[i, 0]), rng))
            return X

    class SameArch(ElementwiseDuplicateElimination):
        def is_equal(self, a, b):
            return a.X[0] == b.X[0]

    return ArchProblem(), ArchSampling(), ArchCrossover(), ArchMutation(), SameArch()


def run_nsga2(space, evaluator: Evaluator, formulation: Formulation, *, pop_size: int = 24,
              generations: int = 10, seed: int = 0, callback: Callback | None = None,
              deadline: float | None = None, max_evaluations: int | None = None) -> GenerationInfo:
    """NSGA-II (pymoo) over estimated accuracy and predicted latency.

    Stops after `generations`, at `deadline` (time.monotonic()), after `max_evaluations`
    distinct architectures, or when the callback returns True. KeyboardInterrupt propagates
    to the caller, which keeps everything the evaluator has cached.
    """
    # lazy: loads pymoo (slow to import) only when this runs
    from pymoo.algorithms.moo.nsga2 import NSGA2

    rng = np.random.default_rng(seed)
    problem, sampling, crossover, mutation, dedup = _pymoo_parts(space, evaluator, formulation, rng)
    algorithm = NSGA2(pop_size=pop_size, sampling=sampling, crossover=crossover, mutation=mutation,
                      eliminate_duplicates=dedup)
    algorithm.setup(problem, termination=("n_gen", generations), seed=seed, verbose=False)
    start = time.monotonic()
    info = GenerationInfo(0, 0, 0.0)
    for gen in range(generations):
        evaluator.generation = gen
        pop = algorithm.ask()
        algorithm.evaluator.eval(problem, pop)
        algorithm.tell(infills=pop)
        info = GenerationInfo(gen, len(evaluator.cache), time.monotonic() - start)
        if callback and callback(info):
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        if max_evaluations is not None and len(evaluator.cache) >= max_evaluations:
            break
    return info


def run_random(space, evaluator: Evaluator, *, n: int = 100, batch: int = 24, seed: int = 0,
               callback: Callback | None = None, deadline: float | None = None) -> GenerationInfo:
    """The baseline: score `n` distinct random architectures, in batches (one batch = one 'generation')."""
    rng = np.random.default_rng(seed)
    start = time.monotonic()
    gen = 0
    info = GenerationInfo(0, 0, 0.0)
    tries = 0
    while len(evaluator.cache) < n and tries < 50 * n:
        evaluator.generation = gen
        archs: list[Any] = []
        keys: set[str] = set()
        while len(archs) < min(batch, n - len(evaluator.cache)) and tries < 50 * n:
            tries += 1
            a = space.sample(rng)
            k = space.to_string(a)
            if k in evaluator.cache or k in keys:
                continue
            keys.add(k)
            archs.append(a)
        if not archs:
            break
        evaluator.evaluate(archs)
        info = GenerationInfo(gen, len(evaluator.cache), time.monotonic() - start)
        gen += 1
        if callback and callback(info):
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
    return info


# ----------------------------------------------------------------- protocol and registry
class SearchAlgorithm(Protocol):
    """A search strategy, in the manner of Optuna's samplers: `search.run` hands it the space,
    the evaluator (which scores and caches every architecture it is given) and the formulation,
    and it proposes architectures generation by generation until `generations`, the `deadline`
    (time.monotonic()) or the callback says stop. Register a new one with `register_algorithm`;
    its name is then valid in `AlgorithmConfig(name=...)` and on the command line."""

    name: str

    def run(self, space, evaluator: Evaluator, formulation: Formulation, *, population: int, generations: int,
            seed: int, callback: Callback | None = None, deadline: float | None = None) -> GenerationInfo: ...


class NSGA2Search:
    """NSGA-II over (estimated accuracy, predicted latency); the constraint as pymoo's."""
    name = "nsga2"

    def run(self, space, evaluator, formulation, *, population, generations, seed, callback=None, deadline=None):
        return run_nsga2(space, evaluator, formulation, pop_size=population, generations=generations, seed=seed,
                         callback=callback, deadline=deadline)


class RandomSearch:
    """The baseline: population x generations distinct random architectures, a population at a time."""
    name = "random"

    def run(self, space, evaluator, formulation, *, population, generations, seed, callback=None, deadline=None):
        return run_random(space, evaluator, n=population * generations, batch=population, seed=seed,
                          callback=callback, deadline=deadline)


ALGORITHMS: dict[str, Callable[[], SearchAlgorithm]] = {"nsga2": NSGA2Search, "random": RandomSearch}


def register_algorithm(name: str, factory: Callable[[], SearchAlgorithm]) -> None:
    """Make `factory()` the algorithm called `name` (a later registration replaces an earlier one)."""
    ALGORITHMS[name] = factory


def get_algorithm(name: str) -> SearchAlgorithm:
    """The registered algorithm called `name`."""
    try:
        return ALGORITHMS[name]()
    except KeyError:
        raise SearchError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(ALGORITHMS)}") from None


__all__ = ["ALGORITHMS", "GenerationInfo", "NSGA2Search", "RandomSearch", "SearchAlgorithm", "get_algorithm",
           "register_algorithm", "run_nsga2", "run_random"]
