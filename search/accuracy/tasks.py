"""Where candidate evaluations run: in this process, or as Ray tasks on a cluster's CPUs and GPUs.

    pool = RayPool(address="auto", num_cpus=1)            # or LocalPool() (the default)
    for i, scores in pool.map(score_fn, archs, shared):  # results as they complete
        ...

Proxy scores (`search.accuracy.estimator.AccuracyEstimator.prefetch`), short trainings for re-ranking
(`search.accuracy.rerank`) and supernet subnet evaluations are each one call of a module-level function
`fn(shared, item)`; a pool runs them and hands the results back to the caller, which alone
writes the per-cell caches, so a cache stays the single source of truth whichever pool ran the
work. `LocalPool` runs them one after the other in this process; `RayPool` runs each as a Ray
task with the CPUs and GPUs it asks for, `shared` sent once to the cluster's object store.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from search.problem import SearchError
from profiling.errors import ProfilingError
from profiling.fleet import connect_ray


class Pool(Protocol):
    name: str

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any = None
            ) -> Iterator[tuple[int, Any]]: ...


class LocalPool:
    """One after the other, in this process (what every run does without `ray_address`)."""

    name = "this process"

    def map(self, fn, items, shared=None):
        for i, item in enumerate(items):
            yield i, fn(shared, item)


def _run_chunk(fn, shared, chunk):
    """One Ray task: `fn` over a few items (a task costs about a millisecond to schedule)."""
    # lazy: loads torch (slow to import) only when this runs
    import torch
    torch.set_num_threads(1)  # one task per CPU the task reserved, as the scheduler assumes
    return [fn(shared, item) for item in chunk]


class RayPool:
    """Ray tasks on the cluster at `address` (see `profiling.fleet.connect_ray`): each
    reserves `num_cpus` CPUs and `num_gpus` GPUs; at most `max_workers` run at once (default:
    as many as the cluster's resources allow); `chunk` items per task."""

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 max_workers: int | None = None, chunk: int = 1):
        try:
            self.ray, self._joined = connect_ray(address)
        except ProfilingError as e:
            raise SearchError(str(e)) from None
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        if num_gpus and not self.ray.cluster_resources().get("GPU"):
            raise SearchError("the Ray cluster has no GPU for the evaluations that asked for one "
                              "(start its GPU workers with `ray start --num-gpus N`, or use `device` cpu)")
        self.max_workers = max_workers or self._capacity()
        self.chunk = max(1, int(chunk))
        self.name = f"Ray ({self.max_workers} worker(s) of {num_cpus:g} CPU" + \
            (f" + {num_gpus:g} GPU" if num_gpus else "") + ")"
        self._task = self.ray.remote(_run_chunk)

    def _capacity(self) -> int:
        res = self.ray.cluster_resources()
        n = int(res.get("CPU", 1) // self.num_cpus) if self.num_cpus else 1 << 16
        if self.num_gpus:
            n = min(n, int(res.get("GPU", 0) // self.num_gpus))
        return max(1, n)

    def map(self, fn, items, shared=None):
        ray = self.ray
        items = list(items)
        ref = ray.put(shared)
        chunks = [list(range(i, min(i + self.chunk, len(items)))) for i in range(0, len(items), self.chunk)]
        todo = iter(chunks)
        running: dict[Any, list[int]] = {}
        opts = dict(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=2)

        def submit() -> bool:
            idx = next(todo, None)
            if idx is None:
                return False
            running[self._task.options(**opts).remote(fn, ref, [items[i] for i in idx])] = idx
            return True

        while len(running) < self.max_workers and submit():
            pass
        try:
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                idx = running.pop(done[0])
                try:
                    results = ray.get(done[0])
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else e
                    raise SearchError(f"an evaluation task failed: {cause}") from None
                submit()
                yield from zip(idx, results)
        finally:
            for r in running:
                ray.cancel(r, force=True)

    def close(self) -> None:
        if self._joined:
            self.ray.shutdown()
            self._joined = False


def make_pool(ray_address: str | None, device: str = "cpu", max_workers: int | None = None) -> Pool:
    """`LocalPool()` without an address (None), else a `RayPool` whose tasks reserve a GPU when
    `device` is a CUDA device and a CPU otherwise."""
    if ray_address is None:
        return LocalPool()
    gpu = str(device).startswith("cuda")
    return RayPool(ray_address, num_cpus=1, num_gpus=1 if gpu else 0, max_workers=max_workers)


def collect(pool: Pool, fn: Callable[[Any, Any], Any], items: Iterable[Any], shared: Any = None) -> list[Any]:
    """`pool.map`'s results in the order of `items`."""
    items = list(items)
    out: list[Any] = [None] * len(items)
    for i, r in pool.map(fn, items, shared):
        out[i] = r
    return out


__all__ = ["LocalPool", "Pool", "RayPool", "collect", "make_pool"]
