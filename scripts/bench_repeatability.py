"""Benchmark: do the same table rows measure the same twice, some time apart?

Each `measure` run takes the same seeded sample of a table's rows (kernels, blocks and whole
networks) and measures every row two ways on this machine:

- `sequential`: one configuration after another, each to its own stopping rule (the profiler
  before session 7: warm-up, then rounds until the 95% CI of the median is within ±2%, capped
  at 1 s for kernels, 2 s or 200 runs for networks);
- `interleaved`: in batches, round-robin (`profiling.measure.measure_interleaved`, the profiler's
  default passes and slices), with the two drift sentinels measured in every pass of every batch,
  so that `compare` can also express each row relative to a sentinel of the same pass.

`compare` reads two such runs and reports, per method, the share of rows whose two values agree
within ±5% (and ±10%), and for the interleaved runs the same figures relative to the conv and the
memory sentinel of the same pass (the relative value is the median over passes of row/sentinel,
times the sentinel's median over all passes and batches of that run).

    python -m scripts.bench_repeatability measure --out /tmp/rep_a.json     # then, some time later:
    python -m scripts.bench_repeatability measure --out /tmp/rep_b.json
    python -m scripts.bench_repeatability compare /tmp/rep_a.json /tmp/rep_b.json

Run the measurements on a quiet machine, pinned (`taskset -c 1`).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import click
import numpy as np

from profiling.paths import SHIPPED_TABLES

DEFAULT_TABLE = SHIPPED_TABLES / "local-cpu__amd-epyc__8430cb8f.parquet"


def _jobs(table: Path, rows: int, networks: int, seed: int):
    """[(config_id, category, kind, table_ms, Job)] for a seeded sample of the table's rows."""
    from profiling.kernels import KernelSpec
    from profiling.profiler import Profiler
    from profiling.table import read_table
    df, meta = read_table(table)
    prof = Profiler("local-cpu", table)  # builds jobs with the profiler's settings; never runs
    kern = df[df["category"].isin(["kernel", "block"])]
    nets = df[df["category"] == "network"]
    picked = [kern.sample(min(rows, len(kern)), random_state=seed), nets.sample(min(networks, len(nets)), random_state=seed)]
    out = []
    for part in picked:
        for r in part.to_dict("records"):
            if r["category"] == "network":
                job = prof._network_job(json.loads(r["network_spec"]))
            else:
                job = prof._kernel_job(KernelSpec.from_dict(r))
            out.append((r["config_id"], r["category"], r["kind"], float(r["median_ms"]), job))
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order], prof


@click.group()
def main():
    """Repeatability of latency measurements (sequential vs interleaved)."""


@main.command()
@click.option("--table", type=click.Path(exists=True, dir_okay=False), default=str(DEFAULT_TABLE), show_default=True)
@click.option("--rows", type=int, default=200, show_default=True, help="Kernel and block rows.")
@click.option("--networks", type=int, default=24, show_default=True, help="Whole-network rows.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--methods", default="sequential,interleaved", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="JSON file of this run's values.")
def measure(table, rows, networks, seed, methods, out):
    """Measure the sampled rows once with each method and write them to --out."""
    from profiling.interleave import measure_interleaved
    from profiling.profiler import INTERLEAVE_BATCH, KERNEL_SLICE_S, NETWORK_SLICE_S, PASSES, SENTINELS
    from profiling.transport import local_runner, session_options
    items, prof = _jobs(Path(table), rows, networks, seed)
    runner = local_runner()
    runner.hello()
    session = session_options(prof.target, runner.facts, 1)
    sentinel_jobs = {k: prof._kernel_job(s) for k, s in SENTINELS.items()}
    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "table": str(table), "seed": seed,
              "passes": PASSES, "batch": INTERLEAVE_BATCH, "kernel_slice_s": KERNEL_SLICE_S,
              "network_slice_s": NETWORK_SLICE_S, "rows": {}, "sentinels": []}
    for cid, cat, kind, table_ms, _ in items:
        result["rows"][cid] = {"category": cat, "kind": kind, "table_ms": table_ms}
    try:
        for method in methods.split(","):
            t0 = time.monotonic()
            if method == "sequential":
                for cid, *_, job in items:
                    ans = runner.measure(dict(job.payload, id=cid, session=session))
                    if ans.get("ok"):
                        result["rows"][cid]["sequential_ms"] = ans["stats"]["median_ms"]
            elif method == "interleaved":
                for b in range(0, len(items), INTERLEAVE_BATCH):
                    part = items[b:b + INTERLEAVE_BATCH]
                    payloads = [dict(job.payload, id=cid, session=session) for cid, *_, job in part]
                    payloads += [dict(j.payload, id="sentinel-" + k, session=session) for k, j in sentinel_jobs.items()]
                    slices = [NETWORK_SLICE_S if cat == "network" else KERNEL_SLICE_S for _, cat, *_ in part]
                    slices += [KERNEL_SLICE_S] * len(sentinel_jobs)
                    answers = measure_interleaved(runner, payloads, passes=PASSES, slice_s=slices)
                    batch = len(result["sentinels"])
                    for (cid, *_), ans in zip(part, answers):
                        if ans.get("ok"):
                            result["rows"][cid].update(interleaved_ms=ans["stats"]["median_ms"],
                                                       pass_ms=ans["stats"]["pass_ms"], batch=batch)
                    result["sentinels"].append({k: a["stats"]["pass_ms"] for k, a in
                                                zip(sentinel_jobs, answers[len(part):])})
            else:
                raise click.BadParameter(f"unknown method {method!r}", param_hint="--methods")
            result[f"{method}_s"] = time.monotonic() - t0
            print(f"{method}: {len(items)} rows in {result[f'{method}_s']:.0f} s", flush=True)
    finally:
        runner.close()
    Path(out).write_text(json.dumps(result))
    print(f"wrote {out}")


def _relative(run: dict, sentinel: str) -> dict[str, float]:
    """Each interleaved row relative to the sentinel of the same pass, in the run's sentinel ms."""
    sent = run["sentinels"]
    scale = statistics.median(v for b in sent for v in b[sentinel])
    out = {}
    for cid, r in run["rows"].items():
        if "pass_ms" in r:
            s = sent[r["batch"]][sentinel]
            out[cid] = statistics.median(v / s[p] for p, v in enumerate(r["pass_ms"])) * scale
    return out


def agreement(a: dict[str, float], b: dict[str, float], category: str | None = None, rows: dict | None = None) -> dict:
    keys = [k for k in a if k in b and a[k] > 0 and b[k] > 0 and (category is None or rows[k]["category"] in category)]
    ratio = np.array([b[k] / a[k] for k in keys])
    dev = np.abs(np.log(ratio)) if len(ratio) else np.array([])
    return {"n": len(keys), "within5": float(np.mean(dev <= np.log(1.05))) if len(dev) else None,
            "within10": float(np.mean(dev <= np.log(1.10))) if len(dev) else None,
            "median_ratio": float(np.median(ratio)) if len(ratio) else None,
            "median_abs_dev": float(np.median(np.abs(ratio - 1))) if len(ratio) else None}


@main.command()
@click.argument("first", type=click.Path(exists=True, dir_okay=False))
@click.argument("second", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the figures as JSON.")
def compare(first, second, json_out):
    """Agreement of two `measure` runs, per method."""
    a, b = json.loads(Path(first).read_text()), json.loads(Path(second).read_text())
    rows = a["rows"]
    values = {}
    for name, field in (("sequential", "sequential_ms"), ("interleaved", "interleaved_ms")):
        va = {k: r[field] for k, r in a["rows"].items() if field in r}
        vb = {k: r[field] for k, r in b["rows"].items() if field in r}
        values[name] = (va, vb)
    if a["sentinels"] and b["sentinels"]:
        for s in a["sentinels"][0]:
            values[f"interleaved, relative to the {s} sentinel"] = (_relative(a, s), _relative(b, s))
    print(f"{first} ({a['started']}) vs {second} ({b['started']})")
    figures = {"first": a["started"], "second": b["started"]}
    for name, (va, vb) in values.items():
        f = {"all": agreement(va, vb), "kernels+blocks": agreement(va, vb, ("kernel", "block"), rows),
             "networks": agreement(va, vb, ("network",), rows)}
        figures[name] = f
        al = f["all"]
        if not al["n"]:
            continue
        print(f"{name:45s} within ±5%: {al['within5']:.1%} (kernels+blocks {f['kernels+blocks']['within5']:.1%}, "
              f"networks {f['networks']['within5'] if f['networks']['n'] else float('nan'):.1%}); "
              f"±10%: {al['within10']:.1%}; median |dev| {al['median_abs_dev']:.1%}; "
              f"median ratio {al['median_ratio']:.3f}; n={al['n']}")
    for s in (a["sentinels"][0] if a["sentinels"] else {}):
        ma = statistics.median(v for x in a["sentinels"] for v in x[s])
        mb = statistics.median(v for x in b["sentinels"] for v in x[s])
        print(f"sentinel {s}: {ma:.4f} ms then {mb:.4f} ms ({mb / ma - 1:+.1%})")
    if json_out:
        Path(json_out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
