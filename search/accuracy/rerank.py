"""Re-ranking the best candidates by a short stand-alone training (low-fidelity evaluation).

The label-free estimator ranks the space well as a whole (Spearman about 0.9 with NB201's
accuracies) but not among the best few cells under a budget, where the choice is made. After
the finalists are measured, `rerank_by_training` trains each of the `top_k` best-estimated
candidates within the budget from scratch for a few epochs, on a reduced copy of the space's network
(for NB201 by default C=8, N=1 at 16x16: a few seconds to half a minute each on one core), and
scores it on the held-out split of the user's data. The search (`search.run`) then takes them in
order of short-training accuracy and chooses the first one the device confirms within the
budget: `rerank=K` in the search's configuration. From a baseline under "latency subject to
accuracy at least the baseline's" (`search.run._rerank_against_baseline`), the baseline is
trained beside the K fastest candidates estimated at least as accurate, and its short-training
accuracy is the bar they must reach.

Results are cached per (cell, recipe, data) in a JSON-lines file, so a re-run costs nothing.
Each candidate starts from scratch rather than from the supernet's weights: the supernet adds
little to the proxies' ranking (`docs/accuracy.md`), and benchmark mode has no supernet.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from search.models import append_cache_line, read_cache_lines
from search.problem import Candidate
import torch
from search.accuracy.supernet import TrainConfig, _resize, accuracy, train_standalone
from search.accuracy.tasks import LocalPool

#: the reduced network per space: small enough that a 5-epoch run takes seconds, while keeping
#: the cell (NB201) or the block choices (mbv3, resnet) that the candidates differ in
DEFAULT_SPACE_OPTIONS: dict[str, dict[str, Any]] = {"nb201": {"C": 8, "N": 1}}
DEFAULT_RESOLUTION: dict[str, int] = {"nb201": 16}


@dataclass
class RerankConfig:
    """How the finalists are re-ranked. ``top_k`` 0 turns re-ranking off."""
    top_k: int = 0
    epochs: float = 5.0
    batch_size: int = 64
    lr: float = 0.05
    seed: int = 0
    space_options: dict[str, Any] | None = None   # None: DEFAULT_SPACE_OPTIONS for the space
    resolution: int | None = None                  # None: DEFAULT_RESOLUTION (never above the data's)

    def options_for(self, space_name: str) -> dict[str, Any]:
        return dict(DEFAULT_SPACE_OPTIONS.get(space_name, {}) if self.space_options is None else self.space_options)

    def resolution_for(self, space_name: str, data_resolution: int) -> int:
        r = self.resolution if self.resolution is not None else DEFAULT_RESOLUTION.get(space_name, data_resolution)
        return min(int(r), int(data_resolution))


@dataclass
class RerankResult:
    key: str
    estimated: float        # the estimator's score, for the report
    short_accuracy: float   # held-out accuracy (%) after the short training
    seconds: float
    cached: bool


def _resized(ds, resolution: int):
    """A copy of an ImageDataset at ``resolution`` (resized once, not at every step)."""
    import dataclasses
    if ds.x.shape[-1] == resolution:
        return ds
    return dataclasses.replace(ds, x=torch.cat([_resize(ds.x[i:i + 512], resolution)
                                                for i in range(0, len(ds.x), 512)]))


def _train_and_score(job: tuple, arch: Any) -> tuple[float, float]:
    """One short training (a pool's unit of work): (held-out accuracy %, seconds)."""
    space, train, val, tc, seed = job
    t = time.perf_counter()
    torch.manual_seed(seed)
    net = train_standalone(space.build(arch), train, tc)
    return accuracy(net, val), time.perf_counter() - t


def rerank_by_training(space_name: str, make_space: Callable[[dict], Any], candidates: Sequence[Candidate],
                       train, val, data_resolution: int, config: RerankConfig, cache_file: Path | None = None,
                       log: Callable[[str], None] | None = None, pool=None, *, ordered: bool = False,
                       deadline: float | None = None, required: int = 1,
                       cost: Callable[[Candidate], float] | None = None) -> list[RerankResult]:
    """Train the ``config.top_k`` best-estimated of ``candidates`` briefly; best short accuracy first.

    ``make_space(options)`` builds the space with those options (the caller knows the data's
    classes and channels); ``train`` and ``val`` are normalised ImageDatasets. The trainings run
    on ``pool`` (a `search.accuracy.tasks` pool: Ray tasks with `ray_address`; default: one after the other here);
    this process alone appends them to ``cache_file``. With ``ordered``, ``candidates`` are
    trained all, in the order given.

    With a ``deadline`` (`time.monotonic()`), the first ``required`` are always trained (the
    check means nothing without them) and each later one starts only if it is expected to end
    in time: the longest of the timed trainings' seconds, each scaled by ``cost`` (e.g. the
    predicted latency; training time grows more slowly than that, so the estimate errs long: a
    budget is a promise). The results hold only the candidates trained.
    """

    pool = pool or LocalPool()
    ranked = list(candidates) if ordered else sorted(candidates, key=lambda c: -c.accuracy)[:config.top_k]
    if not ranked:
        return []
    res = config.resolution_for(space_name, data_resolution)
    opts = {**config.options_for(space_name), **({"resolution": res} if space_name == "nb201" else {})}
    space = make_space(opts)
    tc = TrainConfig(epochs=config.epochs, batch_size=min(config.batch_size, max(8, len(train) // 4)), lr=config.lr,
                     hflip=res > 8, seed=config.seed)
    recipe = json.dumps({"space": space_name, "options": opts, "train": asdict(tc), "n_train": len(train),
                         "n_val": len(val)}, sort_keys=True)
    done = {row["key"]: row for row in read_cache_lines(cache_file) if row.get("recipe") == recipe}
    out = [RerankResult(c.key, c.accuracy, float(done[c.key]["accuracy"]), float(done[c.key].get("seconds", 0.0)), True)
           for c in ranked if c.key in done]
    todo = [c for c in ranked if c.key not in done]
    must = {c.key for c in ranked[:required]}
    by_key = {c.key: c for c in ranked}
    width = max(1, int(getattr(pool, "max_workers", 1)))  # trainings at once
    job = (space, _resized(train, res), _resized(val, res), tc, config.seed) if todo else None
    start, n = 0, 0
    while start < len(todo):
        # the required ones in the first batch, whatever the pool's width
        size = max(width, sum(c.key in must for c in todo[start:]))
        batch = todo[start:start + size]
        if deadline is not None and not all(c.key in must for c in batch):
            expected = max(_expected_seconds(c, out, by_key, cost) for c in batch)
            if time.monotonic() + expected > deadline:
                if log:
                    log(f"  the budget leaves no time for {len(todo) - start} more short training(s) (the next "
                        f"takes about {expected:.0f} s, {max(0.0, deadline - time.monotonic()):.0f} s are left)")
                break
        for i, (acc, sec) in pool.map(_train_and_score, [c.arch for c in batch], job):
            c, n = batch[i], n + 1
            out.append(RerankResult(c.key, c.accuracy, acc, sec, False))
            if cache_file is not None:
                append_cache_line(cache_file, {"key": c.key, "accuracy": acc, "seconds": round(sec, 2),
                                               "recipe": recipe})
            if log:
                log(f"  short training {n}/{len(todo)}: {c.key}  estimated {c.accuracy:.2f} → "
                    f"{acc:.2f}% held-out after {config.epochs:g} epochs  [{sec:.0f} s]")
        start += size
    out.sort(key=lambda r: -r.short_accuracy)
    return out


def _expected_seconds(c: Candidate, done: list[RerankResult], by_key: dict[str, Candidate],
                      cost: Callable[[Candidate], float] | None) -> float:
    """The longest estimate from the timed trainings: each one's seconds scaled by ``cost``; 0
    when nothing was timed yet."""
    timed = [r for r in done if r.seconds > 0]
    if cost is None:
        return max((r.seconds for r in timed), default=0.0)
    own = cost(c)
    return max((r.seconds * own / ref for r in timed if (ref := cost(by_key[r.key])) > 0), default=0.0)


def describe(config: RerankConfig, space_name: str, data_resolution: int, n_train: int) -> str:
    opts = config.options_for(space_name)
    res = config.resolution_for(space_name, data_resolution)
    net = ", ".join(f"{k}={v}" for k, v in opts.items()) or "as searched"
    return (f"short training of the {config.top_k} best-estimated candidates within the budget: {config.epochs:g} epochs "
            f"on {n_train:,} images at {res}x{res}, network {net}")


__all__ = ["RerankConfig", "RerankResult", "rerank_by_training", "describe", "DEFAULT_SPACE_OPTIONS"]
