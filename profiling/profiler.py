"""`Profiler`: measure a device into a latency table (the API behind `profile-device`).

    from profiling.profiler import Profiler
    summary = Profiler("local-cpu", "table.parquet", max_configs=500, networks=30).run()

One or more runners (a local subprocess, or one per host of `hosts` over SSH) take jobs from
one scheduler: kernel and block configurations drawn by `profiling.sampling` (prior +
uniform first, then adaptive refinement), whole networks from `profiling.networks`
interleaved with them, and a sentinel kernel every `sentinel_every` configurations or
seconds. Configurations are measured in batches of up to `batch_size`, interleaved
(`profiling.interleave.measure_interleaved`: `passes` round-robin passes, a short slice each), so
a machine that changes speed for seconds at a time moves one pass of every row of the batch a
little instead of a few rows a lot; a batch's rows are written when its last pass ends. A sentinel further from its baseline than its tolerance is a drift event: the
configurations that runner measured since its last good sentinel go back in the queue, and
are measured again (`remeasured=True`) once the sentinel is back to normal.
Every row is made durable as soon as it is measured (`profiling.table.TableWriter`).

The baseline is the median of `baseline_checks` back-to-back checks, and each sentinel's
tolerance is `drift_threshold` or 1.5 times the spread of those checks, whichever is larger:
on some cloud VMs a memory-bound kernel flips between two speeds within a second (0.065 and
0.117 ms for the memory sentinel on a 2-core AMD EPYC VM, with nothing else running), which
is the device's own noise, not a drift that re-measuring could fix. A sentinel whose excursions
keep vanishing by the next check (`TRANSIENTS_TO_WIDEN` times) gets its tolerance widened to
its observed spread, a sentinel off in one direction in most of the last checks is a new normal
(the baseline moves), and one whose baseline moves back to a level it held before has two
normals (its tolerance covers both), so none of them makes the profiler re-measure forever.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, cast

import numpy as np

from . import sampling
from .builders import DEFAULT_OPSET, build_model, input_shapes, opset_for_runtime, output_shapes
from .errors import ProfilingError
from .fingerprint import default_table_name, describe_diff, diff_fingerprints, fingerprint_hash, make_fingerprint
from .kernels import KINDS, KernelSpec, KernelSpecError
from .interleave import measure_interleaved
from .networks import FAMILIES, build_network, network_id, sample_network
from .onnx_stats import model_stats
from .table import TableWriter, utc_now
from .targets import Target, TargetError, get_target
from .transport import RunnerConnection, check_device, local_runner, measure_payload, session_options, ssh_runner
from .fleet import start_fleet
import pandas as pd

if TYPE_CHECKING:
    from .fleet import ActorConnection

# A compute-bound and a memory-bound sentinel: a neighbour that competes for the shared
# cache or memory bus slows the second one even when the first does not notice.
SENTINELS = {
    "conv": KernelSpec.make("conv", cin=64, cout=64, h=28, w=28, kernel=3, stride=1, act="relu"),
    "memory": KernelSpec.make("elementwise", op="add", c=128, h=56, w=56),
}
SENTINEL = SENTINELS["conv"]
OVERHEAD_PROBE = KernelSpec.make("activation", act="relu", c=1, h=1, w=1)
KERNEL_STOP = {"max_s": 1.0}
NETWORK_STOP = {"max_s": 2.0, "max_runs": 200}
# Interleaved measurement (profiling.measure.measure_interleaved): configurations are measured in
# batches of INTERLEAVE_BATCH, PASSES round-robin passes over the batch, each configuration timed for
# a slice of KERNEL_SLICE_S (networks NETWORK_SLICE_S) and at least 3 runs per pass; a row's value
# is the median of its pass medians. passes=1 measures one configuration at a time to its own CI.
PASSES, INTERLEAVE_BATCH = 5, 16
KERNEL_SLICE_S, NETWORK_SLICE_S = 0.04, 0.15
DEFAULT_MAX_CONFIGS = 5000
NETWORK_SHARE = 0.06  # networks per kernel configuration when `networks` is not given
DEFAULT_NETWORKS = 300  # with --kinds network and neither --networks nor a budget
INITIAL_SHARE = 0.6   # of the kernel budget drawn before adaptive refinement starts
BASELINE_CHECKS = 3   # back-to-back sentinel checks that make a runner's baseline
TRANSIENTS_TO_WIDEN = 3  # drift events gone by the next check before a sentinel counts as noisy
SHIFT_WINDOW, SHIFT_MIN = 6, 4  # a sentinel off one way in 4 of its last 6 checks: a new normal
RATIO_MARGIN_LEVELS = 1.5  # a two-level sentinel's tolerance: this times the log half-distance of its levels
DRAW_TRIES, NETWORK_DRAW_TRIES = 400, 50  # draws that are all in the table before a space counts as exhausted


@dataclass
class ProfileSummary:
    out_path: str
    target: str
    fingerprint_hash: str
    hosts: list[str]
    rows_total: int = 0
    rows_new: int = 0
    resumed: int = 0
    kernels: int = 0
    blocks: int = 0
    networks: int = 0
    new_kernels: int = 0
    new_networks: int = 0
    elapsed_s: float = 0.0
    drift_events: list[dict[str, Any]] = field(default_factory=list)
    remeasured: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str = ""
    refined: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Job:
    config_id: str
    category: str
    kind: str
    payload: dict[str, Any]
    row: dict[str, Any]
    remeasure: bool = False
    sentinel: bool = False


class _RunnerState:
    def __init__(self, conn: RunnerConnection | ActorConnection, label: str):
        self.conn = conn
        self.label = label
        self.baseline: dict[str, float] = {}
        self.tolerance: dict[str, float] = {}   # per sentinel, relative
        self.baseline_runs: list[dict[str, float]] = []
        self.last_bad: list[str] = []           # the sentinels beyond tolerance in the last check
        self.transients: Counter[str] = Counter()
        self.ratio_history: dict[str, list[float]] = {}  # each sentinel's ratios since the last reset
        self.levels: dict[str, list[float]] = {}  # the baselines each sentinel held before its resets
        self.pending: list[str] = []          # sentinels still to measure in the current check
        self.check: dict[str, float] = {}     # their medians so far
        self.since_good: list[Job] = []
        self.last_sentinel_t = time.monotonic()
        self.since_sentinel = 0
        self.bad_streak = 0
        self.sentinel_count = 0
        self.needs_sentinel = True  # the first job of every runner is its baseline
        self.cooldown_s = 0.0
        self.alive = True


class Profiler:
    """Profile a target into a table; see the module docstring. `run()` does the work."""

    def __init__(self, target: str | Target = "local-cpu", out_path: str | os.PathLike | None = None, *,
                 hosts: list[str] | tuple[str, ...] = (), kinds: list[str] | None = None,
                 budget_minutes: float | None = None, max_configs: int | None = None,
                 networks: int | None = None, families: list[str] | None = None, seed: int = 0,
                 resume: bool = True, targets_file: str | os.PathLike | None = None,
                 ssh_config: str | os.PathLike | None = None, remote_python: str = "python3",
                 runner_python: str | None = None, progress: Callable[..., None] | None = None,
                 sentinel_every: int = 40, sentinel_every_s: float = 20.0, drift_threshold: float = 0.10,
                 baseline_checks: int = BASELINE_CHECKS,
                 passes: int = PASSES, batch_size: int = INTERLEAVE_BATCH,
                 kernel_slice_s: float = KERNEL_SLICE_S, network_slice_s: float = NETWORK_SLICE_S,
                 stop_rule: dict[str, Any] | None = None, network_stop_rule: dict[str, Any] | None = None,
                 compact_rows: int = 250, compact_seconds: float = 60.0, ray_address: str | None = None,
                 focus: list[str] | None = None, _slow_sentinels: dict[int, float] | None = None):
        try:
            self.target = target if isinstance(target, Target) else get_target(target, targets_file)
        except TargetError as e:
            raise ProfilingError(str(e)) from None
        if self.target.runtime != "onnxruntime":
            raise ProfilingError(f"target {self.target.name}: runtime {self.target.runtime!r} is not supported "
                                 "(the profiler drives onnxruntime)")
        # focus: only the named configurations of `sampling.FOCUS_DRAWS` (a supplement to a table), no refinement
        try:
            focus_k = sampling.focus_kinds(list(focus or ()))
        except KernelSpecError as e:
            raise ProfilingError(str(e)) from None
        self.focus = list(focus or ())
        kinds = list(kinds) if kinds else (focus_k or list(KINDS))
        bad = [k for k in kinds if k not in KINDS and k != "network"]
        if bad:
            raise ProfilingError(f"unknown kind(s) {', '.join(bad)}; valid kinds: {', '.join(KINDS)}")
        self.only_networks = kinds == ["network"]
        self.kinds = [k for k in kinds if k != "network"]
        families = list(families) if families else list(FAMILIES)
        bad = [f for f in families if f not in FAMILIES]
        if bad:
            raise ProfilingError(f"unknown network family {', '.join(bad)}; valid families: {', '.join(FAMILIES)}")
        self.families = families
        if budget_minutes is not None and budget_minutes <= 0:
            raise ProfilingError("`budget_minutes` must be positive")
        if max_configs is not None and max_configs < 0:
            raise ProfilingError("`max_configs` must be >= 0")
        if networks is not None and networks < 0:
            raise ProfilingError("`networks` must be >= 0")
        self.out_path = Path(out_path) if out_path else None
        self.out_is_dir = bool(out_path) and str(out_path).endswith(("/", os.sep))
        self.hosts = list(hosts)
        self.budget_s = budget_minutes * 60 if budget_minutes else None
        if max_configs is None and budget_minutes is None:
            max_configs = DEFAULT_MAX_CONFIGS
        if self.only_networks:
            max_configs = 0
        self.max_configs = max_configs
        self.networks = networks
        self.seed = seed
        self.resume = resume
        self.ssh_config = ssh_config
        self.remote_python = remote_python
        self.runner_python = runner_python
        self.progress = progress or (lambda event, **info: None)
        self.sentinel_every = sentinel_every
        self.sentinel_every_s = sentinel_every_s
        self.drift_threshold = drift_threshold
        self.baseline_checks = max(1, int(baseline_checks))
        if passes < 1 or batch_size < 1 or not kernel_slice_s > 0 or not network_slice_s > 0:
            raise ProfilingError("passes and batch_size must be at least 1 and the slices positive")
        self.passes, self.batch_size = int(passes), int(batch_size)
        self.kernel_slice_s, self.network_slice_s = float(kernel_slice_s), float(network_slice_s)
        self.stop_rule = dict(KERNEL_STOP, **(stop_rule or {}))
        self.network_stop_rule = dict(NETWORK_STOP, **(network_stop_rule or {}))
        self.compact_rows = compact_rows
        self.compact_seconds = compact_seconds
        self._slow_sentinels = dict(_slow_sentinels or {})
        # None: one process (a thread per runner); otherwise the Ray cluster whose device actors
        # measure ('auto', an address, or '' for the one this process joined or a private one)
        self.ray_address = ray_address
        self._fleet_shutdown: Callable[[], None] | None = None
        self.opset = DEFAULT_OPSET  # lowered in run() for an older runtime on the device

    # ---- set-up ------------------------------------------------------------------------
    def _connect(self) -> list[_RunnerState]:
        if self.ray_address is not None:
            actors, self._fleet_shutdown = start_fleet(
                self.target, self.ray_address, self.hosts, remote_python=self.remote_python,
                ssh_config=self.ssh_config, runner_python=self.runner_python,
                warn=lambda message: self.progress("note", message=message))
            return [_RunnerState(a, a.label) for a in actors]
        if not self.hosts:
            try:
                self.target.check_local_support()
            except TargetError as e:
                raise ProfilingError(str(e)) from None
            conn = local_runner(self.runner_python)
            try:
                conn.hello()
            except ProfilingError:
                conn.kill()
                raise
            return [_RunnerState(conn, "local")]
        conns: list[RunnerConnection | None] = [None] * len(self.hosts)
        errors: list[str | None] = [None] * len(self.hosts)

        def connect(i: int, host: str) -> None:
            try:
                c = ssh_runner(host, remote_python=self.remote_python, ssh_config=self.ssh_config)
                conns[i] = c
                c.hello()
            except ProfilingError as e:
                errors[i] = str(e)

        threads = [threading.Thread(target=connect, args=(i, h), daemon=True) for i, h in enumerate(self.hosts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = [e for e in errors if e]
        if failed:
            for c in conns:
                if c is not None:
                    c.kill()
            raise ProfilingError("\n".join(failed))
        return [_RunnerState(c, c.label) for c in conns]  # type: ignore[arg-type, union-attr]  # all connected: see above

    # ---- jobs --------------------------------------------------------------------------
    def _kernel_job(self, spec: KernelSpec, model=None, stats=None) -> Job:
        if model is None:
            model = build_model(spec, self.target.batch, self.opset)
            stats = model_stats(model)
        row = {"config_id": spec.key(), "category": spec.category, "kind": spec.kind, **spec.params,
               "input_shapes": json.dumps(input_shapes(model)), "output_shapes": json.dumps(output_shapes(model)),
               "flops": stats.flops, "params": stats.params, "bytes": stats.bytes}
        payload = measure_payload(model, self.stop_rule, self.seed, self.target.batch)
        return Job(row["config_id"], spec.category, spec.kind, payload, row)

    def _network_job(self, spec: dict[str, Any]) -> Job:
        model = build_network(spec, self.target.batch, self.opset)
        stats = model_stats(model)
        row = {"config_id": network_id(spec), "category": "network", "kind": "network", "family": spec["family"],
               "network_spec": json.dumps(spec, sort_keys=True),
               "input_shapes": json.dumps(input_shapes(model)), "output_shapes": json.dumps(output_shapes(model)),
               "flops": stats.flops, "params": stats.params, "bytes": stats.bytes}
        payload = measure_payload(model, self.network_stop_rule, self.seed, self.target.batch)
        return Job(row["config_id"], "network", "network", payload, row)

    # ---- the run -----------------------------------------------------------------------
    def run(self) -> ProfileSummary:
        t_start = time.monotonic()
        runners = self._connect()
        try:
            for r in runners:
                check_device(self.target, r.conn.facts or {}, r.label)
            fps = [make_fingerprint(r.conn.facts or {}, self.target) for r in runners]
            for r, fp in zip(runners[1:], fps[1:]):
                diff = diff_fingerprints(fps[0], fp)
                if diff:
                    raise ProfilingError(f"the `hosts` must be identical devices, but {runners[0].label} and {r.label} "
                                         f"differ: {describe_diff(diff, runners[0].label, r.label)}")
            fp = fps[0]
            self.opset = opset_for_runtime(fp.get("runtime_version", ""))
            fp["opset"] = self.opset  # recorded, not part of the identity: it follows from the runtime
            out = self.out_path
            if out is None or out.is_dir() or self.out_is_dir:
                out = (out or Path(".")) / default_table_name(self.target, fp)
            writer = TableWriter(out, fp, self.target.to_dict(), resume=self.resume,
                                 compact_rows=self.compact_rows, compact_seconds=self.compact_seconds)
            return _Run(self, runners, writer, fp, t_start).execute()
        finally:
            for r in runners:
                r.conn.close()
            if self._fleet_shutdown is not None:
                self._fleet_shutdown()
                self._fleet_shutdown = None


class _Run:
    """The state of one `Profiler.run()`: scheduler, drift bookkeeping and results."""

    def __init__(self, p: Profiler, runners: list[_RunnerState], writer: TableWriter, fp: dict[str, Any],
                 t_start: float):
        self.p = p
        self.runners = runners
        self.writer = writer
        self.fp = fp
        self.t_start = t_start
        self.lock = threading.Lock()
        # A resumed run draws a fresh stream, seeded by the rows already measured: replaying the
        # first run's draws would meet only configurations in the table, and after DRAW_TRIES of
        # them the space would count as exhausted (a resumed 1,400-row profile stopped at once).
        done = len(writer.rows)
        self.rng = np.random.default_rng([p.seed, done] if done else p.seed)
        self.net_rng = np.random.default_rng([p.seed + 7919, done] if done else p.seed + 7919)
        self.requeue: deque[Job] = deque()
        self.planned: set[str] = set()
        self.in_flight: dict[str, Job] = {}
        self.summary = ProfileSummary(str(writer.path), p.target.name, fingerprint_hash(fp),
                                      [r.label for r in runners], resumed=writer.resumed)
        rows = list(writer.rows.values())
        self.kernel_rows = sum(1 for r in rows if r.get("category") in ("kernel", "block"))
        self.network_rows = sum(1 for r in rows if r.get("category") == "network")
        self.kernel_target = p.max_configs  # total in the table; None: until the budget ends
        if p.networks is not None:
            self.network_target: int | None = p.networks
        elif p.only_networks:
            self.network_target = None if p.budget_s else DEFAULT_NETWORKS  # networks until the budget ends
        elif self.kernel_target is not None:
            self.network_target = int(math.ceil(NETWORK_SHARE * self.kernel_target))
        else:
            self.network_target = None  # NETWORK_SHARE of the kernels measured
        self.kind_w = sampling.kind_weights(p.kinds) if p.kinds else None
        self.refine_queue: deque[KernelSpec] = deque()
        self.refine_rounds = 0
        self.new_kernels_since_refine = 0
        self.stop_reason = ""
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.fail_streak = 0
        self.drift_log: list[dict[str, Any]] = list(cast("list[dict[str, Any]]", writer.metadata.get("drift_events", [])))
        self.threads = fp["threads"]

    # ---- planning ----------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def _kernels_left(self) -> bool:
        if not self.p.kinds:
            return False
        return self.kernel_target is None or self.kernel_rows + self._in_flight("kernel") < self.kernel_target

    def _in_flight(self, what: str) -> int:
        cats = ("network",) if what == "network" else ("kernel", "block")
        return sum(1 for j in self.in_flight.values() if j.category in cats and not j.remeasure)

    def _network_due(self) -> bool:
        done = self.network_rows + self._in_flight("network")
        if self.network_target is not None:
            if done >= self.network_target:
                return False
            if not self._kernels_left():
                return True
            if self.kernel_target:
                frac = (self.kernel_rows + 1) / max(1, self.kernel_target)
            else:
                frac = self.elapsed() / self.p.budget_s if self.p.budget_s else 1.0
            if self.p.budget_s:
                frac = max(frac, self.elapsed() / self.p.budget_s)
            return done < self.network_target * min(1.0, frac)
        if not self.p.kinds:
            return True  # networks only, until the budget ends
        return done < NETWORK_SHARE * self.kernel_rows

    def _initial_phase(self) -> bool:
        if self.kernel_target is not None:
            return self.kernel_rows < INITIAL_SHARE * self.kernel_target
        return self.elapsed() < INITIAL_SHARE * (self.p.budget_s or 0)

    def _refill_refinement(self) -> None:
        """One round of adaptive refinement: new configs near the worst-predicted points."""
        rows = [r for r in self.writer.rows.values() if r.get("category") in ("kernel", "block")]
        if not rows:
            return
        df = pd.DataFrame(rows)
        # Large batches keep the refits (about a second each) rare.
        batch = max(80, int(0.15 * (self.kernel_target if self.kernel_target is not None else len(rows))))
        for kind, w in zip(self.p.kinds, self.kind_w if self.kind_w is not None else ()):
            n = max(2, int(round(batch * w * 0.7)))
            try:
                new = sampling.refine(df, kind, self.rng, n, seed=self.p.seed + self.refine_rounds)
            except Exception:  # refinement is an optimisation; never fail a profile on it
                new = []
            self.refine_queue.extend(new)
        order = self.rng.permutation(len(self.refine_queue))
        items = list(self.refine_queue)
        self.refine_queue = deque(items[i] for i in order)
        self.refine_rounds += 1
        self.new_kernels_since_refine = 0

    def _next_spec(self) -> tuple[KernelSpec, Any, Any] | None:
        for _ in range(DRAW_TRIES):
            spec = None
            if not self._initial_phase() and not self.p.focus:
                if not self.refine_queue and (self.refine_rounds == 0 or self.new_kernels_since_refine >= 80):
                    self._refill_refinement()
                if self.refine_queue and self.rng.random() < 0.7:
                    spec = self.refine_queue.popleft()
                    self.summary.refined += 1
            if spec is None:
                kind = self.p.kinds[int(self.rng.choice(len(self.p.kinds), p=self.kind_w))]
                spec = sampling.sample_spec(self.rng, kind, llc_bytes=self.fp.get("llc_bytes"), focus=self.p.focus)
            key = spec.key()
            if key in self.writer or key in self.planned:
                continue
            prepared = sampling.prepare(spec, self.p.target.batch, self.p.opset, self.fp.get("llc_bytes"))
            if prepared is None:
                continue
            self.planned.add(key)
            return spec, prepared[0], prepared[1]
        return None

    def _next_network(self) -> Job | None:
        for _ in range(NETWORK_DRAW_TRIES):
            fam = self.p.families[int(self.net_rng.integers(len(self.p.families)))]
            spec = sample_network(self.net_rng, fam)
            key = network_id(spec)
            if key in self.writer or key in self.planned:
                continue
            self.planned.add(key)
            return self.p._network_job(spec)
        return None

    def _sentinel_job(self, state: _RunnerState) -> Job:
        if not state.pending:
            state.pending = list(SENTINELS)
            state.check = {}
        name = state.pending.pop(0)
        job = self.p._kernel_job(SENTINELS[name])
        job.sentinel = True
        job.kind = name
        job.payload["cache_key"] = "sentinel-" + name
        delay = self.p._slow_sentinels.get(state.sentinel_count)
        if delay:
            job.payload["delay_ms"] = delay
        return job

    def _sentinel_due(self, state: _RunnerState, batched: int = 0) -> bool:
        return bool(state.pending or state.needs_sentinel or state.since_sentinel + batched >= self.p.sentinel_every
                    or time.monotonic() - state.last_sentinel_t >= self.p.sentinel_every_s)

    def next_batch(self, state: _RunnerState) -> list[Job] | Literal["wait"] | None:
        """The next work of a runner: a sentinel job alone, or a batch of up to `batch_size`
        configurations (measured interleaved), "wait", or None when the run is over."""
        first = self.next_job(state)
        if not isinstance(first, Job):  # None or "wait"
            return first
        if first.sentinel or self.p.passes == 1:
            return [first]
        batch = [first]  # next_job counts each job in flight
        while len(batch) < self.p.batch_size:
            with self.lock:
                if self._sentinel_due(state, len(batch)):
                    break
            job = self.next_job(state)
            if not isinstance(job, Job):  # None or "wait"
                break
            batch.append(job)
        return batch

    def next_job(self, state: _RunnerState) -> Job | Literal["wait"] | None:
        """The runner's next job, counted in flight before the lock is released (with several
        runners, one counted later could let another draw past the target)."""
        with self.lock:
            job = self._pick_job(state)
            if isinstance(job, Job) and not job.sentinel:
                self.in_flight[job.config_id] = job
            return job

    def _pick_job(self, state: _RunnerState) -> Job | Literal["wait"] | None:
        """Called with self.lock held."""
        if self.stop.is_set():
            return None
        if self._sentinel_due(state):
            return self._sentinel_job(state)
        if self.requeue:
            return self.requeue.popleft()
        if self.p.budget_s is not None and self.elapsed() >= self.p.budget_s:
            self.stop_reason = self.stop_reason or "budget"
            return None
        if self._network_due():
            job = self._next_network()
            if job is not None:
                return job
        if self._kernels_left():
            nxt = self._next_spec()
            if nxt is not None:
                return self.p._kernel_job(*nxt)
            self.stop_reason = self.stop_reason or "exhausted"
            return None
        if self.network_target is not None and self.network_rows + self._in_flight("network") < self.network_target:
            job = self._next_network()
            if job is not None:
                return job
        if self.in_flight:
            return "wait"  # another runner may requeue work
        self.stop_reason = self.stop_reason or ("max_configs" if self.kernel_target is not None else "done")
        return None

    # ---- results -----------------------------------------------------------------------
    def complete(self, state: _RunnerState, job: Job, answer: dict[str, Any]) -> None:
        with self.lock:
            self.in_flight.pop(job.config_id, None)
            if not answer.get("ok"):
                if job.sentinel:
                    raise ProfilingError(f"{state.label} cannot measure the sentinel kernel: {answer.get('error')}")
                self.summary.failed.append({"config_id": job.config_id, "kind": job.kind,
                                            "error": answer.get("error"), "host": state.label})
                self.fail_streak += 1
                if self.fail_streak >= 20:
                    raise ProfilingError(f"{state.label}: 20 configurations in a row failed; the last error: "
                                         f"{answer.get('error')}")
                return
            self.fail_streak = 0
            stats = answer["stats"]
            if job.sentinel:
                state.check[job.kind] = stats["median_ms"]
                if not state.pending:
                    self._sentinel_result(state, dict(state.check))
                return
            row = dict(job.row)
            row.update({k: stats[k] for k in ("median_ms", "p10_ms", "p90_ms", "mean_ms", "runs", "ci_rel")})
            row["remeasured"] = bool(job.remeasure)
            row["host"] = state.label
            row["measured_at"] = utc_now()
            new = job.config_id not in self.writer
            self.writer.add(row)
            state.since_good.append(job)
            state.since_sentinel += 1
            if new:
                if job.category == "network":
                    self.network_rows += 1
                    self.summary.new_networks += 1
                else:
                    self.kernel_rows += 1
                    self.summary.new_kernels += 1
                    self.new_kernels_since_refine += 1
                self.summary.rows_new += 1
            if job.remeasure:
                self.summary.remeasured += 1
            self.p.progress("row", row=row, new=new, kernel_rows=self.kernel_rows, network_rows=self.network_rows,
                            elapsed=self.elapsed())

    def _sentinel_result(self, state: _RunnerState, medians: dict[str, float]) -> None:
        """Judge one complete sentinel check (every sentinel measured once)."""
        state.sentinel_count += 1
        state.last_sentinel_t = time.monotonic()
        state.since_sentinel = 0
        if not state.baseline:
            self._baseline_check(state, medians)
            return
        ratios = {k: v / state.baseline[k] for k, v in medians.items()}
        for k, r in ratios.items():
            state.ratio_history.setdefault(k, []).append(r)
        # deviations in log space, so a tolerance means the same factor up and down
        excess = {k: abs(math.log(r)) / math.log1p(state.tolerance.get(k, self.p.drift_threshold))
                  for k, r in ratios.items()}
        worst = max(excess, key=excess.__getitem__)
        if excess[worst] <= 1.0:
            if state.bad_streak == 1:
                for name in state.last_bad:
                    self._transient(state, name)
            state.needs_sentinel = False
            state.bad_streak = 0
            state.last_bad = []
            state.since_good = []
            return
        shift = self._shifted(state)
        if shift or state.bad_streak + 1 >= 6:
            # A lasting change (a new thermal state, a governor, a load that stays): the new normal.
            if shift:
                name = max(shift, key=lambda k: abs(shift[k] - 1.0))
                new_baseline = {k: b * shift.get(k, 1.0) for k, b in state.baseline.items()}
            else:
                name, new_baseline = worst, dict(medians)
            old_baseline = state.baseline[name]
            for k in new_baseline:
                if new_baseline[k] != state.baseline[k]:
                    state.levels.setdefault(k, []).append(state.baseline[k])
            state.baseline = new_baseline
            # a return to an earlier level moves the baseline again (to the two levels' middle): the
            # reset is logged with the baseline that holds after it, then the widening it caused
            widened = [e for e in (self._two_levels(state, k) for k in new_baseline) if e is not None]
            event = {"host": state.label, "at": utc_now(), "elapsed_s": round(self.elapsed(), 1),
                     "baseline_reset": True, "sentinel": name, "old_baseline_ms": old_baseline,
                     "baseline_ms": state.baseline[name]}
            for e in [event, *widened]:
                self._log_drift(e)
                self.p.progress("drift", drift=e)
            state.ratio_history.clear()
            state.bad_streak = 0
            state.last_bad = []
            state.needs_sentinel = False
            return
        state.bad_streak += 1
        if state.bad_streak == 1:
            redo = [j for j in state.since_good]
            event = {"host": state.label, "at": utc_now(), "elapsed_s": round(self.elapsed(), 1),
                     "sentinel": worst, "sentinel_ms": medians[worst], "baseline_ms": state.baseline[worst],
                     "ratio": ratios[worst], "ratios": ratios, "remeasure": len(redo)}
            self._log_drift(event)
            for j in redo:
                j.remeasure = True
                self.requeue.append(j)
            state.since_good = []
            state.last_bad = [k for k, e in excess.items() if e > 1.0]
            self.p.progress("drift", drift=event)
        state.needs_sentinel = True  # measure nothing else until the device is back to normal
        state.cooldown_s = min(2.0, 0.25 * state.bad_streak)

    def _baseline_check(self, state: _RunnerState, medians: dict[str, float]) -> None:
        state.baseline_runs.append(dict(medians))
        if len(state.baseline_runs) < self.p.baseline_checks:
            return  # needs_sentinel stays set: the next check follows at once
        state.baseline = {k: float(np.median([c[k] for c in state.baseline_runs])) for k in medians}
        for k, b in state.baseline.items():
            spread = max(abs(math.log(c[k] / b)) for c in state.baseline_runs)
            state.tolerance[k] = max(self.p.drift_threshold, math.expm1(1.5 * spread))
        state.needs_sentinel = False
        self.p.progress("note", message=f"{state.label}: sentinel baselines " + ", ".join(
            f"{k} {v:.3f} ms (±{state.tolerance[k]:.0%})" for k, v in state.baseline.items()))

    def _transient(self, state: _RunnerState, name: str) -> None:
        """A drift event that was over by the next check: after a few, the sentinel's own noise
        sets its tolerance (1.25 times the 90th percentile of its log deviations so far)."""
        state.transients[name] += 1
        if state.transients[name] < TRANSIENTS_TO_WIDEN:
            return
        state.transients[name] = 0
        dev = math.expm1(1.25 * float(np.percentile(np.abs(np.log(state.ratio_history[name])), 90)))
        old = state.tolerance.get(name, self.p.drift_threshold)
        if dev > old:
            state.tolerance[name] = dev
            event = {"host": state.label, "at": utc_now(), "elapsed_s": round(self.elapsed(), 1),
                     "tolerance_widened": True, "sentinel": name, "old_tolerance": old, "tolerance": dev}
            self._log_drift(event)
            self.p.progress("drift", drift=event)

    def _two_levels(self, state: _RunnerState, name: str) -> dict | None:
        """A sentinel whose baseline moved back to a level it held before lives on two levels
        (on one VM the memory sentinel holds 0.065 or 0.12 ms for tens of seconds at a time):
        its baseline becomes their geometric mean and its tolerance covers both, so neither
        level is drift any more. Returns the tolerance-widened event for the caller to log."""
        new, tol = state.baseline[name], state.tolerance.get(name, self.p.drift_threshold)
        before = state.levels.get(name, [])[:-1]  # the level just left cannot be a return
        if not any(abs(math.log(new / level)) <= math.log1p(tol) for level in before):
            return None
        other = state.levels[name][-1]
        mid = math.sqrt(new * other)
        wide = math.expm1(RATIO_MARGIN_LEVELS * abs(math.log(new / mid)))
        state.baseline[name] = mid
        state.levels[name] = []
        if wide <= tol:
            return None
        state.tolerance[name] = wide
        return {"host": state.label, "at": utc_now(), "elapsed_s": round(self.elapsed(), 1),
                "tolerance_widened": True, "sentinel": name, "old_tolerance": tol, "tolerance": wide,
                "levels_ms": sorted([new, other]), "baseline_ms": mid}

    def _shifted(self, state: _RunnerState) -> dict[str, float]:
        """{sentinel: the median ratio of its off checks} for each sentinel off its baseline in
        one direction, beyond its tolerance, in at least SHIFT_MIN of the last SHIFT_WINDOW
        checks, the current one included."""
        shifted: dict[str, float] = {}
        for name, tol in state.tolerance.items():
            ratios = state.ratio_history.get(name, [])[-SHIFT_WINDOW:]
            if len(ratios) < SHIFT_MIN:
                continue
            for sign in (1.0, -1.0):
                off = [r for r in ratios if math.log(r) * sign > math.log1p(tol)]
                if len(off) >= SHIFT_MIN and math.log(ratios[-1]) * sign > math.log1p(tol):
                    shifted[name] = float(np.median(off))
        return shifted

    def _log_drift(self, event: dict) -> None:
        self.summary.drift_events.append(event)
        self.drift_log.append(event)
        self.writer.metadata["drift_events"] = self.drift_log[-200:]

    # ---- workers -----------------------------------------------------------------------
    def worker(self, state: _RunnerState) -> None:
        try:
            while not self.stop.is_set():
                batch = self.next_batch(state)
                if batch is None:
                    break
                if isinstance(batch, str):  # "wait"
                    time.sleep(0.05)
                    continue
                session = session_options(self.p.target, state.conn.facts or {}, self.threads)
                payloads = [dict(job.payload, id=job.config_id, session=session) for job in batch]
                try:
                    if len(batch) == 1 and (batch[0].sentinel or self.p.passes == 1):
                        answers = [state.conn.measure(payloads[0])]
                    else:
                        slices = [self.p.network_slice_s if j.category == "network" else self.p.kernel_slice_s
                                  for j in batch]
                        answers = measure_interleaved(state.conn, payloads, passes=self.p.passes, slice_s=slices)
                except ProfilingError as e:
                    with self.lock:
                        for job in reversed(batch):  # the batch in flight goes back, in order
                            self.in_flight.pop(job.config_id, None)
                            if not job.sentinel:
                                self.requeue.appendleft(job)
                                self.planned.discard(job.config_id)
                    if self._restarted(state, e):
                        continue
                    with self.lock:
                        state.alive = False
                        if not any(r.alive for r in self.runners):
                            self.error = e
                            self.stop.set()
                        else:
                            self.p.progress("note", message=f"{state.label} stopped, continuing without it: {e}")
                    return
                for job, answer in zip(batch, answers):
                    self.complete(state, job, answer)
                if state.cooldown_s:
                    time.sleep(state.cooldown_s)  # let a drifting device settle
                    state.cooldown_s = 0.0
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            with self.lock:
                self.error = self.error or e
                self.stop.set()

    def _restarted(self, state: _RunnerState, error: ProfilingError) -> bool:
        """A runner that can come back (a Ray device actor restarted by Ray) starts over with a
        fresh sentinel check; its baseline stays, so drift is still judged against it."""
        restart = getattr(state.conn, "restart", None)
        if restart is None or self.stop.is_set():
            return False
        self.p.progress("note", message=f"{state.label} stopped ({error}); waiting for it to restart")
        if not restart():
            return False
        with self.lock:
            state.pending, state.check, state.since_good = [], {}, []
            state.needs_sentinel = True
        self.p.progress("note", message=f"{state.label} restarted; its configuration in flight was re-queued")
        return True

    def _call_overhead(self) -> None:
        """The latency of a near-empty graph: the per-call overhead inside every row's median.

        Recorded in the metadata (`call_overhead_ms`) so that a model summing kernel latencies
        can subtract it once per kernel."""
        r = self.runners[0]
        job = self.p._kernel_job(OVERHEAD_PROBE)
        payload = dict(job.payload, id="overhead", session=session_options(self.p.target, r.conn.facts or {}, self.threads))
        answer = r.conn.measure(payload)
        if answer.get("ok"):
            self.writer.metadata["call_overhead_ms"] = answer["stats"]["median_ms"]

    def execute(self) -> ProfileSummary:
        p = self.p
        self._call_overhead()
        p.progress("start", target=p.target.name, out=str(self.writer.path), fingerprint=self.fp,
                   resumed=self.writer.resumed, kernel_rows=self.kernel_rows, network_rows=self.network_rows,
                   kernel_target=self.kernel_target, network_target=self.network_target, budget_s=p.budget_s,
                   hosts=[r.label for r in self.runners])
        threads = [threading.Thread(target=self.worker, args=(r,), daemon=True) for r in self.runners]
        for t in threads:
            t.start()
        interrupted = False
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt:
            interrupted = True
            self.stop.set()
            for r in self.runners:
                r.conn.kill()
            for t in threads:
                t.join(5)
        self.writer.close()
        s = self.summary
        s.elapsed_s = self.elapsed()
        rows = list(self.writer.rows.values())
        cats = Counter(r.get("category") for r in rows)
        s.rows_total, s.kernels, s.blocks, s.networks = len(rows), cats["kernel"], cats["block"], cats["network"]
        s.stopped_by = "interrupted" if interrupted else (self.stop_reason or ("error" if self.error else "done"))
        if self.error is not None and not interrupted:
            if isinstance(self.error, ProfilingError):
                raise ProfilingError(f"{self.error} (the table {self.writer.path} keeps its {len(rows)} rows; "
                                     f"run again to resume)")
            raise self.error
        p.progress("end", summary=s)
        return s


__all__ = ["Profiler", "ProfileSummary", "ProfilingError", "SENTINEL", "SENTINELS"]
