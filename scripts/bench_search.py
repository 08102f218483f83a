"""NB201 benchmark of the search: budgets at the 25th/50th/75th latency percentile of each device.

    python -m scripts.bench_search [--shared ../shared] [--work /tmp/hwnas-bench] [--out bench.json]

For every (device, budget) it runs `search --space nb201 --benchmark CSV:DEVICE` (NSGA-II on
proxy-estimated accuracy and the few-shot-adapted latency, at most 50 lookups) and the random-
search baseline with the same number of lookups (random cells measured, the one with the
highest estimated accuracy under budget chosen). It reports, from the CSV's `val_acc` read
only after the choice, the gap to the best cell under the budget. Proxy scores are computed on
demand on a CIFAR-10 batch (the shared JPEG tarball, extracted under --work) and cached per
cell there, so the cells the searches visit are scored once across all runs.

`--rerank K` runs `search --rerank K` (the K best-estimated cells within the budget trained for a
few epochs on 10,000 CIFAR-10 images, `search.accuracy.rerank`) and adds `estimator_gap`: the gap of the
cell the estimator alone would choose from the same measured cells. The random baseline is not
re-ranked.
"""
from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

import click
import numpy as np

DEVICES = ("edgegpu", "raspi4", "edgetpu", "pixel3")
#: the network the proxies are computed on. Default: NAS-Bench-201's own CIFAR network (C=16,
#: N=5, 32x32; what `search --benchmark` uses), ~1 s per cell on one core, cached per cell
#: across runs. `--proxy-net small` is the reduced cell network (C=8, one cell per stage,
#: 16x16; ~0.05 s per cell), whose jacob_cov ranks cells worse (Spearman with val_acc 0.77 vs
#: 0.90 on 100 random cells).
PROXY_NETS = {"full": {}, "small": {"C": 8, "N": 1, "resolution": 16}}
PERCENTILES = (25, 50, 75)


def extract_cifar(shared: Path, work: Path) -> Path:
    root = work / "cifar10"
    if (root / ".done").exists():
        return root
    tar = shared / "data" / "cifar10" / "cifar10-jpeg.tar.gz"
    if not tar.exists():
        raise click.ClickException(f"{tar} not found: pass --shared")
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar) as t:
        t.extractall(root, filter="data")
    (root / ".done").write_text("ok")
    return root


def find_train_dir(root: Path) -> Path:
    for p in [root, *sorted(root.rglob("*"))]:
        if p.is_dir() and (p / "train").is_dir():
            return p
    raise click.ClickException(f"no train/ directory under {root}")


def random_baseline(space, evaluator, device, budget, n_measure, seed):
    """Random search with n_measure lookups: measure random cells, keep the best estimated under
    budget (the same choice rule as the search: near-ties broken by capacity)."""
    from search.problem import Formulation
    from search.verify import best_verified
    rng = np.random.default_rng(seed)
    seen, cands = set(), []
    while len(cands) < n_measure:
        a = space.sample(rng)
        k = space.to_string(a)
        if k in seen:
            continue
        seen.add(k)
        cands.append(a)
    cs = evaluator.evaluate(cands)
    for c in cs:
        c.measured_ms = device.lookup(c.key)
    return best_verified(cs, Formulation(latency_budget_ms=budget), space)


def scored_ceiling(csv, device, budget, cands, space) -> dict:
    """Diagnostics for the report only (val_acc and the whole latency column, read after the
    choice): among the cells the search scored, the gap of the best-estimated one that is truly
    under the budget (`scored_top_gap`) and of the tie rule's pick among them
    (`scored_tie_gap`), as if every scored cell had been measured: what the estimator allows
    on those cells with no latency error and no lookup limit."""
    import pandas as pd
    from search.problem import Formulation
    from search.verify import best_verified
    df = pd.read_csv(csv, usecols=["arch", "val_acc", f"{device}_ms"])
    ms = dict(zip(df["arch"], df[f"{device}_ms"]))
    acc = dict(zip(df["arch"], df["val_acc"]))
    col = df[df[f"{device}_ms"] > 0]
    best = float(col[col[f"{device}_ms"] <= budget]["val_acc"].max())
    import copy
    pool = []
    for c in cands:
        m = ms.get(c.key, -1)
        if m > 0:
            c2 = copy.copy(c)
            c2.measured_ms, c2.dropped = float(m), None
            pool.append(c2)
    f = Formulation(latency_budget_ms=budget)
    top = best_verified(pool, f)
    tie = best_verified(pool, f, space)
    return {"scored_top_gap": None if top is None else round(best - acc[top.key], 2),
            "scored_tie_gap": None if tie is None else round(best - acc[tie.key], 2)}


@click.command()
@click.option("--shared", type=click.Path(file_okay=False), default="../shared", show_default=True)
@click.option("--work", type=click.Path(file_okay=False), default="/tmp/hwnas-bench", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="JSON results (default WORK/bench.json)")
@click.option("--devices", default=",".join(DEVICES), show_default=True)
@click.option("--population", type=int, default=32, show_default=True)
@click.option("--generations", type=int, default=10, show_default=True)
@click.option("--percentiles", default="25,50,75", show_default=True)
@click.option("--max-measurements", type=int, default=50, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--proxy-net", type=click.Choice(sorted(PROXY_NETS)), default="full", show_default=True,
              help="network size the proxies are computed on")
@click.option("--measure-ties/--no-measure-ties", default=True, show_default=True,
              help="spend leftover lookups on the candidates the tie rule could pick")
@click.option("--proxy-batch", type=int, default=32, show_default=True,
              help="CIFAR-10 images the proxies are computed on (read: 100 per class)")
@click.option("--rerank", type=click.IntRange(min=0), default=0, show_default=True,
              help="search --rerank K: re-rank the K best-estimated cells within the budget by a short training "
                   "(the random baseline is not re-ranked)")
@click.option("--rerank-epochs", type=float, default=5.0, show_default=True)
@click.option("--rerank-per-class", type=int, default=1250, show_default=True,
              help="CIFAR-10 images per class read for the short training (80%% train, 20%% held out)")
def main(shared, work, out, devices, population, generations, percentiles, max_measurements, seed, proxy_net,
         measure_ties, proxy_batch, rerank, rerank_epochs, rerank_per_class):
    import torch
    torch.set_num_threads(1)
    from search.benchmark import BenchmarkDevice, ground_truth
    from search.problem import Evaluator
    from search.run import SearchConfig, run_search

    shared, work = Path(shared), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    csv = shared / "data" / "nb201" / "nb201_cifar10.csv"
    data_dir = find_train_dir(extract_cifar(shared, work))
    rows = []
    t_all = time.monotonic()
    for dev in devices.split(","):
        probe = BenchmarkDevice(csv, dev)
        for q in [int(p) for p in percentiles.split(",")]:
            budget = probe.percentile(q)
            t0 = time.monotonic()
            cfg = SearchConfig(space="nb201", data=str(data_dir), benchmark=f"{csv}:{dev}", latency_budget_ms=budget,
                               population=population, generations=generations, max_measurements=max_measurements,
                               finalists=5, out=str(work / "runs" / f"{dev}-p{q}"), cache_dir=str(work / "cache"),
                               seed=seed, budget_minutes=30, progress=False, export_best=False,
                               data_max_per_class=100, proxy_batch=proxy_batch, space_options=PROXY_NETS[proxy_net],
                               reference_size=200, measure_ties=measure_ties, rerank=rerank,
                               rerank_epochs=rerank_epochs, rerank_per_class=rerank_per_class, overwrite=True)
            res = run_search(cfg)
            # no choice (nothing verified or predicted under the budget): the row counts, gap None
            gt = res.ground_truth or ground_truth(csv, dev, budget, None)
            # random search with the same number of lookups, same accuracy estimator
            rdev = BenchmarkDevice(csv, dev, max_measurements=res.n_measurements)
            from search import wiring
            data = wiring.load_data(cfg.data, cfg.seed, max_per_class=cfg.data_max_per_class)
            space = wiring.make_space("nb201", data, PROXY_NETS[proxy_net])
            acc = wiring.accuracy_model(cfg.spec().accuracy, space, data, Path(cfg.cache_dir), lambda m: None,
                                        seed=cfg.seed, benchmark=True)
            ev = Evaluator(space, acc, wiring.latency_model(None, space, None))
            rbest = random_baseline(space, ev, rdev, budget, res.n_measurements, seed + 1)
            rgt = ground_truth(csv, dev, budget, rbest.key if rbest else None)
            ceiling = scored_ceiling(csv, dev, budget, res.candidates, space)
            if res.reranked:  # what the estimator alone would have chosen from the same verified cells
                from search.run import choose_best
                own = choose_best(res.candidates, res.formulation, space)
                ceiling["estimator_gap"] = ground_truth(csv, dev, budget, own.key if own else None).gap
            row = {"device": dev, "percentile": q, "budget_ms": round(budget, 4),
                   "best_val_acc": gt.best_val_acc, "chosen": res.best.key if res.best else None,
                   "chosen_val_acc": gt.chosen_val_acc, "chosen_ms": gt.chosen_ms,
                   "gap": None if gt.gap is None else round(gt.gap, 2),
                   "measurements": res.n_measurements, "evaluated": res.n_evaluated,
                   "reranked": len(res.reranked),
                   "random_val_acc": rgt.chosen_val_acc,
                   "random_gap": None if rgt.gap is None else round(rgt.gap, 2),
                   **ceiling,
                   "seconds": round(time.monotonic() - t0, 1)}
            rows.append(row)
            click.echo(json.dumps(row))
    gaps = [r["gap"] for r in rows if r["gap"] is not None]
    rgaps = [r["random_gap"] for r in rows if r["random_gap"] is not None]
    def mean(k):
        v = [r[k] for r in rows if r.get(k) is not None]
        return float(np.mean(v)) if v else None
    summary = {"runs": len(rows), "mean_gap": float(np.mean(gaps)) if gaps else None,
               "mean_estimator_gap": mean("estimator_gap"),
               "mean_scored_top_gap": mean("scored_top_gap"), "mean_scored_tie_gap": mean("scored_tie_gap"),
               "within_0.5": int(sum(g <= 0.5 for g in gaps)),
               "no_choice": int(sum(r["gap"] is None for r in rows)),
               "mean_random_gap": float(np.mean(rgaps)) if rgaps else None,
               "max_measurements": max(r["measurements"] for r in rows) if rows else 0,
               "seconds": round(time.monotonic() - t_all, 1)}
    click.echo(json.dumps(summary))
    out = Path(out) if out else work / "bench.json"
    out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    click.echo("| device | pct | budget ms | best val_acc | chosen val_acc | gap | lookups | random gap "
               "| scored cells: top / tie-rule gap |")
    click.echo("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        click.echo(f"| {r['device']} | {r['percentile']} | {r['budget_ms']:.3f} | {r['best_val_acc']:.2f} | "
                   f"{r['chosen_val_acc']} | {r['gap']} | {r['measurements']} | {r['random_gap']} | "
                   f"{r['scored_top_gap']} / {r['scored_tie_gap']} |")


if __name__ == "__main__":
    main()
