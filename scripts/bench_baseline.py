"""The promise end to end: from a baseline to a faster network at the same accuracy, on CIFAR-10.

    python -m scripts.bench_baseline --baseline resnet56 --epochs 10 --seeds 0,1 [--jobs 2]
    python -m scripts.bench_baseline --part search      # then --part train, --part measure, --part report

Parts (each resumable: a finished part is read back, an interrupted training resumes from its
last epoch's checkpoint; run them in one go with --part all, the default):

1. search: `search --baseline NAME --data CIFAR10/train` on this machine (target local-cpu, the
   shipped predictor that best matches it), default formulation or --speedup S; with --rerank K the
   accuracy side is checked by short trainings (see --help);
2. train: the baseline and the chosen network with the same `train` recipe, for each seed, on
   the training images (--per-class N of each class; 5,000 = all 50,000), tested on the 10,000
   test images; --jobs 2 runs two trainings at once, one thread each;
3. measure: both networks' latency on local-cpu through the profiling runner, --rounds rounds
   interleaved (baseline, chosen, baseline, ...), median and spread of the rounds' medians;
4. report: summary.json and summary.md in --work: accuracies per seed and their means, latencies
   with spread, params, memory, the measured speed-up, the frontier chart and each part's
   wall-clock cost.

The target of issue 15: chosen >= 3x faster than the baseline with mean test accuracy within 0.5
points (bar: 2x within 1 point).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import click

PARTS = ("search", "train", "measure", "report")


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def part_search(work: Path, data_root: Path, baseline: str, speedup: float | None, minutes: float, population: int,
                generations: int, seed: int, rerank: int = 0) -> dict:
    done = _load(work / "search.json")
    if done:
        return done
    from predictors.calibrate import predictor_for_this_machine
    from search.run import SearchConfig, run_search
    root = Path(__file__).resolve().parents[1]
    predictor, how = predictor_for_this_machine(root / "data" / "predictors", work / "cache" / "predictors")
    click.echo(f"predictor: {how}")
    t0 = time.time()
    res = run_search(SearchConfig(predictor=predictor, baseline=baseline, speedup=speedup, data=str(data_root),
                                  out=work / "search", budget_minutes=minutes, population=population,
                                  generations=generations, seed=seed, cache_dir=work / "cache", rerank=rerank))
    if res.best is None:
        raise click.ClickException("the search chose no architecture; see " + str(work / "search" / "report.md"))
    out = {"best": res.best.key, "baseline": res.baseline.candidate.key, "baseline_name": res.baseline.name,
           "search_speedup": res.baseline.speedup_of(res.best)[0], "formulation": res.formulation.describe(),
           "seconds": round(time.time() - t0, 1), "frontier": str(work / "search" / "frontier.png"),
           "reranked": [{"arch": r.key, "short_training_accuracy": r.short_accuracy} for r in res.reranked]}
    _save(work / "search.json", out)
    return out


def _train_one(job: dict) -> dict:
    """One training (a process of its own with --jobs > 1)."""
    import torch
    from search.training import TrainRecipe, train_architecture
    torch.set_num_threads(job["threads"])
    recipe = TrainRecipe(epochs=job["epochs"], batch_size=job["batch_size"], seed=job["seed"])
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:  # a run of hours in parts: its epochs stay readable between sessions
        with open(out / "train.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    t0 = time.time()
    res = train_architecture(job["arch"], job["data"], out, recipe, max_per_class=job["per_class"],
                             cache_dir=job["cache"], progress=False, log=log)
    return {**{k: job[k] for k in ("which", "arch", "seed")}, "test_accuracy": res["test_accuracy"],
            "train_seconds": res["train_seconds"], "wall_seconds": round(time.time() - t0, 1),
            "params": res["params"], "memory_mb": res["memory_mb"], "n_train": res["n_train"], "n_test": res["n_test"]}


def part_train(work: Path, data_root: Path, found: dict, seeds: list[int], epochs: int, per_class: int | None,
               batch_size: int, jobs: int) -> list[dict]:
    archs = {"baseline": found["baseline_name"], "chosen": found["best"]}
    todo, results = [], []
    # seed by seed, baseline beside chosen: a run stopped half-way leaves comparable pairs
    for seed in seeds:
        for which, arch in archs.items():
            out = work / f"train-{which}-s{seed}"
            hit = _load(out / "bench.json")
            if hit:
                results.append(hit)
                continue
            todo.append({"which": which, "arch": arch, "seed": seed, "out": str(out), "data": str(data_root),
                         "epochs": epochs, "per_class": per_class, "batch_size": batch_size,
                         "cache": str(work / "cache"), "threads": 1 if jobs > 1 else 0})
    if jobs > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(jobs) as pool:
            for job, r in zip(todo, pool.map(_train_one, todo)):
                _save(Path(job["out"]) / "bench.json", r)
                results.append(r)
                click.echo(f"trained {r['which']} seed {r['seed']}: {r['test_accuracy']:.2f}%")
    else:
        for job in todo:
            if not job["threads"]:
                import os
                job["threads"] = os.cpu_count() or 1
            r = _train_one(job)
            _save(Path(job["out"]) / "bench.json", r)
            results.append(r)
            click.echo(f"trained {r['which']} seed {r['seed']}: {r['test_accuracy']:.2f}%")
    return results


def part_measure(work: Path, found: dict, rounds: int) -> dict:
    done = _load(work / "latency.json")
    if done:
        return done
    import torch
    from profiling.targets import get_target
    from search.architecture import resolve_architecture
    from search.spaces.base import export_model_onnx
    from search.spaces.skeleton import build_network
    from search.verify import RunnerDevice
    device = RunnerDevice(get_target("local-cpu"))
    device.connect()
    models = {}
    for which, arch in (("baseline", found["baseline_name"]), ("chosen", found["best"])):
        _, sk = resolve_architecture(arch, 10, 3, 32)
        torch.manual_seed(0)
        models[which] = export_model_onnx(build_network(sk), (3, 32, 32))
    t0 = time.time()
    ms: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):  # interleaved, so a drift of the machine touches both alike
        for which, onnx_bytes in models.items():
            ms[which].append(device.measure_onnx(onnx_bytes))
    device.close()
    out = {which: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "rounds": v}
           for which, v in ms.items()}
    out["speedup"] = out["baseline"]["median_ms"] / out["chosen"]["median_ms"]
    out["seconds"] = round(time.time() - t0, 1)
    _save(work / "latency.json", out)
    return out


def part_report(work: Path, found: dict, trained: list[dict], latency: dict, scale: dict) -> dict:
    acc = {w: [r for r in sorted(trained, key=lambda r: r["seed"]) if r["which"] == w] for w in ("baseline", "chosen")}
    mean = {w: statistics.mean(r["test_accuracy"] for r in v) if v else None for w, v in acc.items()}
    gap = None if None in mean.values() else mean["chosen"] - mean["baseline"]
    s = latency["speedup"]
    verdict = ("target met (>= 3x, within 0.5 points)" if s >= 3 and gap is not None and gap >= -0.5 else
               "bar met (>= 2x, within 1 point)" if s >= 2 and gap is not None and gap >= -1 else "target not met")
    summary = {"scale": scale, "search": found, "accuracy": {w: [r["test_accuracy"] for r in v] for w, v in acc.items()},
               "mean_accuracy": mean, "accuracy_gap": gap, "latency": latency, "verdict": verdict,
               "params": {w: v[0]["params"] for w, v in acc.items() if v},
               "memory_mb": {w: v[0]["memory_mb"] for w, v in acc.items() if v},
               "train_seconds": {w: [r["train_seconds"] for r in v] for w, v in acc.items()}}
    _save(work / "summary.json", summary)
    L = [f"# bench_baseline: {found['baseline_name']} on CIFAR-10\n",
         f"- scale: {json.dumps(scale)}",
         f"- search ({found['seconds']:.0f} s): {found['formulation']}; chosen `{found['best']}`",
         f"- frontier chart: {found['frontier']}\n",
         "| | test accuracy per seed (%) | mean | measured ms (median [min-max] of rounds) | params | memory MB |",
         "| --- | --- | --- | --- | --- | --- |"]
    for w in ("baseline", "chosen"):
        lat = latency[w]
        L.append(f"| {w} | {', '.join(f'{a:.2f}' for a in summary['accuracy'][w])} | "
                 f"{mean[w]:.2f} | {lat['median_ms']:.3f} [{lat['min_ms']:.3f}-{lat['max_ms']:.3f}] | "
                 f"{summary['params'].get(w, 0):,} | {summary['memory_mb'].get(w, 0):.2f} |")
    L.append(f"\nMeasured speed-up {s:.2f}x; mean accuracy difference {gap:+.2f} points: **{verdict}**.")
    (work / "summary.md").write_text("\n".join(L) + "\n")
    click.echo("\n".join(L))
    return summary


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--baseline", default="resnet56", show_default=True, help="Known model to start from.")
@click.option("--speedup", type=float, default=None, help="Search with --speedup S (default: latency subject to "
              "accuracy >= the baseline's estimate).")
@click.option("--rerank", type=int, default=5, show_default=True, help="Short trainings in the search (search's "
              "--rerank K): by default the baseline and the K fastest candidates estimated at least as accurate, "
              "the fastest at least as accurate as the baseline chosen; with --speedup the K best-estimated "
              "within the budget, the most accurate chosen.")
@click.option("--shared", type=click.Path(file_okay=False), default="../shared", show_default=True)
@click.option("--work", type=click.Path(file_okay=False), default="/tmp/hwnas-bench-baseline", show_default=True,
              help="State directory: every part's results; run the same command again to resume.")
@click.option("--part", type=click.Choice(("all",) + PARTS), default="all", show_default=True)
@click.option("--search-minutes", type=float, default=30.0, show_default=True,
              help="The search's --budget-minutes, short trainings included (issue 15: at most 30).")
@click.option("--population", type=int, default=24, show_default=True)
@click.option("--generations", type=int, default=12, show_default=True)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--seeds", default="0,1", show_default=True)
@click.option("--per-class", type=int, default=None, help="Training images per class (default: all 5,000).")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--jobs", type=int, default=1, show_default=True, help="Trainings at once (one thread each).")
@click.option("--rounds", type=int, default=5, show_default=True, help="Interleaved latency rounds.")
def main(baseline, speedup, rerank, shared, work, part, search_minutes, population, generations, epochs, seeds, per_class,
         batch_size, jobs, rounds):
    """Search from a baseline on CIFAR-10, train both with the same recipe, measure both, report."""
    from scripts.bench_search import extract_cifar, find_train_dir
    work = Path(work)
    data_root = find_train_dir(extract_cifar(Path(shared), work))
    seed_list = [int(s) for s in seeds.split(",")]
    scale = {"baseline": baseline, "epochs": epochs, "seeds": seed_list, "train_images_per_class": per_class or 5000,
             "test_images": 10000, "batch_size": batch_size, "search_minutes": search_minutes,
             "population": population, "generations": generations, "latency_rounds": rounds,
             "speedup": speedup, "rerank": rerank}
    prev = _load(work / "scale.json")
    if prev and {"speedup": None, "rerank": 0, **prev} != scale:  # runs from before these two keys
        raise click.ClickException(f"{work} holds a run at another scale ({prev}); use another --work")
    _save(work / "scale.json", scale)
    parts = PARTS if part == "all" else (part,)
    found = part_search(work, data_root, baseline, speedup, search_minutes, population, generations, 0, rerank) \
        if "search" in parts else _load(work / "search.json")
    if found is None:
        raise click.ClickException("run --part search first")
    click.echo(f"search: chosen {found['best']} (estimated speed-up {found['search_speedup']:.2f}x)")
    trained = part_train(work, data_root, found, seed_list, epochs, per_class, batch_size, jobs) \
        if "train" in parts or "report" in parts else []
    latency = part_measure(work, found, rounds) if "measure" in parts or "report" in parts else None
    if "report" in parts:
        part_report(work, found, trained, latency, scale)


if __name__ == "__main__":
    main()
