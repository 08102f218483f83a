"""`search`: find the accuracy/latency frontier of a space on your data, verify finalists on the device."""
from __future__ import annotations

import sys

import click

from search.config import BaselineConfig, RunConfig

EPILOG = """\b
Examples:
  search --predictor data/predictors/local-cpu.lgb --space nb201 --data digits --latency-budget 2
  search --predictor pi4.lgb --space mbv3 --data ./my_images --min-accuracy 90 --host pi@raspberrypi
  search --predictor data/predictors/local-cpu.lgb --baseline resnet56 --data ./cifar10 --speedup 3
  search --space nb201 --benchmark ../shared/data/nb201/nb201_cifar10.csv:edgegpu \\
         --data ./cifar10/train --latency-budget 5

\b
Outputs in --out: frontier.csv, frontier.json, frontier.png, best.json, best.onnx, best.pt, report.md.
Ctrl-C stops the search and still writes every output from what was found so far.
Exit codes: 0 done, 1 error, 2 usage error, 3 budget below the fastest candidate, 130 interrupted.
"""


def _predictor_for_this_machine(target: str, cache_dir, quiet: bool):
    """No --predictor: a shipped one measured on this machine, else the closest shipped one calibrated
    here (once, a few minutes; cached under this machine's fingerprint), saying which."""
    from pathlib import Path

    from predictors.calibrate import predictor_for_this_machine
    from search.run import SearchConfig, _cache_dir
    cache = Path(cache_dir) if cache_dir else _cache_dir(SearchConfig())
    say = (lambda s: None) if quiet else (lambda s: click.echo(f"search: {s}", err=True))
    path, how = predictor_for_this_machine(Path(__file__).resolve().parents[1] / "data" / "predictors",
                                           cache / "predictors", target, progress=say)
    click.echo(f"search: predictor {how}", err=True)
    return path


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.option("--predictor", type=click.Path(dir_okay=False), help="Latency predictor (.lgb from train-predictor) "
              "of the target device. Default (this machine, no --host): the shipped predictor measured on this "
              "machine, else the closest shipped one calibrated here on a few measured networks (once, a few "
              "minutes; cached).")
@click.option("--space", type=click.Choice(["nb201", "mbv3", "resnet"]), default="nb201", show_default=True,
              help="Search space.")
@click.option("--latency-budget", "latency_budget", type=float, metavar="MS",
              help="Maximise accuracy subject to latency <= MS milliseconds.")
@click.option("--min-accuracy", type=float, metavar="A",
              help="Minimise latency subject to estimated score >= A. A is a 0-100 rank score, with or "
                   "without the supernet: the candidate's weighted mean percentile (supernet accuracy and "
                   "proxies) among random architectures of the space; 50 = the median random architecture, "
                   "90 = better than 90%% of them. Not a top-1 accuracy in %%. Without either: the whole frontier.")
@click.option("--min-throughput", type=click.FloatRange(min=0, min_open=True), metavar="IMG_S",
              help="Maximise accuracy subject to throughput >= IMG_S images/s at the target's batch (a predictor "
                   "of a batch-N target, e.g. local-cpu-b32: the budget is N x 1000 / IMG_S ms per run).")
@click.option("--objective", type=click.Choice(["latency", "throughput"]), default="latency", show_default=True,
              help="With --min-accuracy: minimise the latency of one run, or maximise images/s at the target's "
                   "batch (the same choice at a fixed batch; reported as images/s).")
@click.option("--data", default="digits", show_default=True, metavar="DIR|NPZ|digits",
              help="Your data: an image-folder directory (class sub-directories, optionally under train/), "
                   "an .npz with x and y, or the bundled scikit-learn 'digits'.")
@click.option("--target", help="Target name (default: the predictor's own). A predictor built for another "
              "target is refused unless --force.")
@click.option("--targets-file", type=click.Path(dir_okay=False), help="TOML file with user targets.")
@click.option("--host", metavar="USER@DEVICE", help="Measure finalists over SSH on this device instead of locally.")
@click.option("--finalists", type=int, default=3, show_default=True, metavar="K",
              help="Finalists measured on the device per verification round (0: no verification).")
@click.option("--measure-ties/--no-measure-ties", default=True, show_default=True,
              help="With --latency-budget: spend leftover verification rounds on the cells within 2 points "
                   "of the best verified one (the tie rule can pick them).")
@click.option("--rounds", "verify_rounds", type=int, default=2, show_default=True,
              help="Verification rounds (each re-fits the predictor correction and re-ranks).")
@click.option("--out", default="runs/search", show_default=True, type=click.Path(file_okay=False),
              help="Output directory.")
@click.option("--budget-minutes", type=float, default=5.0, show_default=True, metavar="M",
              help="Wall-clock cap of the search phase.")
@click.option("--population", type=int, default=24, show_default=True, help="NSGA-II population size.")
@click.option("--generations", type=int, default=12, show_default=True, help="NSGA-II generations.")
@click.option("--algorithm", type=click.Choice(["nsga2", "random"]), default="nsga2", show_default=True)
@click.option("--accuracy", type=click.Choice(["auto", "proxies", "supernet"]), default="auto", show_default=True,
              help="Accuracy estimator (search.accuracy.estimator rank ensemble): auto = the space's supernet trained "
                   "once on --data (cached in --cache-dir, resumable) + proxies; proxies only in --benchmark mode.")
@click.option("--proxies", default="jacob_cov,params", show_default=True,
              help="Zero-cost proxies of the rank ensemble (comma-separated; see search.accuracy.proxies).")
@click.option("--proxy-batch", type=click.IntRange(min=2), default=64, show_default=True, metavar="N",
              help="Images of --data the proxies are computed on; more images give steadier scores "
                   "(jacob_cov's cost grows about linearly: 0.17 s a cell at 32 images, 0.54 s at 128, full NB201 "
                   "network, one core).")
@click.option("--supernet-epochs", type=float, default=None, metavar="E",
              help="Supernet training epochs on --data (default 8).")
@click.option("--supernet-weight", type=click.FloatRange(min=0), default=0.25, show_default=True, metavar="W",
              help="Weight of the supernet's accuracy in the rank ensemble; the proxies share a weight of 1. "
                   "A short-trained supernet ranks cells less well than the proxies, so it is a minor vote "
                   "(docs/accuracy.md); raise it for a supernet trained long on a GPU.")
@click.option("--device", default="cpu", show_default=True, help="Where the supernet trains and scores subnets: "
              "cpu, cuda or cuda:N (a GPU trains it many times faster; latency is still measured on --target).")
@click.option("--rerank", type=click.IntRange(min=0), default=0, show_default=True, metavar="K",
              help="With --latency-budget: after verification, train the K best-estimated candidates within the "
                   "budget (verified, or predicted) from scratch for a few epochs (--rerank-epochs) on --data, on "
                   "a reduced network (nb201: C=8, N=1 at 16x16), and choose the best held-out accuracy that "
                   "the device confirms within the budget (unverified ones are measured first). Zero-cost proxies rank "
                   "the space well but the top few cells poorly. About 15-25 s per candidate on one core with "
                   "10,000 CIFAR-10 training images (--rerank-per-class 1250). 0: the estimator alone chooses.")
@click.option("--rerank-epochs", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              metavar="E", help="Epochs of each --rerank training.")
@click.option("--rerank-per-class", type=click.IntRange(min=1), default=None, metavar="N",
              help="Images per class of --data read for --rerank (default: the search's 500); 80% train, 20% "
                   "held out.")
@click.option("--benchmark", metavar="CSV:DEVICE", help="NB201 benchmark mode: the DEVICE_ms column of CSV "
              "(keyed by arch) is the device; each lookup is one measurement.")
@click.option("--max-measurements", type=int, default=50, show_default=True,
              help="Benchmark mode: measurements allowed.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Per-cell proxy scores and supernet "
              "checkpoints (default ~/.cache/hwnas, or $HWNAS_CACHE).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Use a predictor built for another target than --target.")
@click.option("--baseline", metavar="NAME|MODEL", help=BaselineConfig.__dataclass_fields__["baseline"].metadata["help"])
@click.option("--speedup", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help=BaselineConfig.__dataclass_fields__["speedup"].metadata["help"])
@click.option("--max-params", type=click.IntRange(min=1), metavar="N",
              help=BaselineConfig.__dataclass_fields__["max_params"].metadata["help"])
@click.option("--max-memory-mb", type=click.FloatRange(min=0, min_open=True), metavar="MB",
              help=BaselineConfig.__dataclass_fields__["max_memory_mb"].metadata["help"])
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help=RunConfig.__dataclass_fields__["ray_address"].metadata["help"])
@click.option("--quiet", is_flag=True, help="No progress output.")
def main(**kw):
    """Search the efficient frontier of accuracy against latency, verify the finalists on the device.

    NSGA-II explores the space on estimated accuracy (supernet or zero-cost proxies on --data) and
    predicted latency (the predictor's batch path, no export). Only the top-K finalists near the
    constraint are exported to ONNX and measured on the target (locally, or over --host); one over
    the budget is dropped, and the measurements correct the predictor for the rest of the run.
    """
    from search.problem import BudgetTooLowError, SearchError
    from search.run import SearchConfig, run_search

    quiet = kw.pop("quiet")
    from profiling.validate import ConfigError
    try:
        BaselineConfig(kw["baseline"], kw["speedup"], kw["max_params"], kw["max_memory_mb"])
    except ConfigError as e:
        raise click.UsageError(f"--{e.param.replace('_', '-')}: {e.problem}") from None
    if sum(kw[k] is not None for k in ("latency_budget", "min_accuracy", "min_throughput")) > 1:
        raise click.UsageError("give one of --latency-budget, --min-accuracy, --min-throughput")
    if kw["objective"] == "throughput" and (kw["latency_budget"] is not None or kw["min_throughput"] is not None):
        raise click.UsageError("--objective throughput maximises images/s under --min-accuracy; a floor is "
                               "--min-throughput (with the default objective)")
    if kw["benchmark"] is None and not kw["predictor"]:
        if kw["host"]:
            raise click.UsageError("--predictor is required with --host (a .lgb built for that device: "
                                   "train-predictor), except with --benchmark")
        kw["predictor"] = str(_predictor_for_this_machine(kw["target"] or "local-cpu", kw["cache_dir"], quiet))
    cfg = SearchConfig(
        space=kw["space"], predictor=kw["predictor"], data=kw["data"], latency_budget_ms=kw["latency_budget"],
        min_accuracy=kw["min_accuracy"], min_throughput=kw["min_throughput"], objective=kw["objective"],
        target=kw["target"], targets_file=kw["targets_file"], host=kw["host"],
        finalists=kw["finalists"], verify_rounds=kw["verify_rounds"], measure_ties=kw["measure_ties"], out=kw["out"],
        budget_minutes=kw["budget_minutes"], seed=kw["seed"], force=kw["force"], benchmark=kw["benchmark"],
        max_measurements=kw["max_measurements"], algorithm=kw["algorithm"], population=kw["population"],
        generations=kw["generations"], accuracy=kw["accuracy"], supernet_epochs=kw["supernet_epochs"],
        supernet_weight=kw["supernet_weight"], rerank=kw["rerank"], rerank_epochs=kw["rerank_epochs"],
        rerank_per_class=kw["rerank_per_class"],
        baseline=kw["baseline"], speedup=kw["speedup"], max_params=kw["max_params"],
        max_memory_mb=kw["max_memory_mb"], ray_address=kw["ray_address"],
        device=kw["device"], proxy_batch=kw["proxy_batch"], proxies=tuple(p.strip() for p in kw["proxies"].split(",") if p.strip()), cache_dir=kw["cache_dir"], progress=not quiet)
    try:
        res = run_search(cfg)
    except BudgetTooLowError as e:
        click.echo(f"error: {e}", err=True)
        click.echo(f"(the frontier found is in {cfg.out}/)", err=True)
        sys.exit(3)
    except SearchError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    summarize(res)
    if res.interrupted:
        sys.exit(130)


def summarize(res) -> None:
    b = res.best
    click.echo(f"\nsearched {res.n_evaluated} architectures in {res.elapsed_s:.0f} s, "
               f"{res.n_measurements} measured on the device; frontier of {len(res.frontier)} points")
    if b is None:
        click.echo("no architecture meets the constraint")
    else:
        meas = "not verified" if b.measured_ms is None else f"measured {b.measured_ms:.3f} ms"
        click.echo(f"best: {b.key}")
        click.echo(f"      estimated score {b.accuracy:.1f}/100, predicted {b.predicted_ms:.3f} ms "
                   f"(raw {b.raw_predicted_ms:.3f}), {meas}")
        r = next((r for r in res.reranked if r.key == b.key), None)
        if r is not None:  # not always the first re-ranked: one measured over the budget is passed over
            click.echo(f"      {r.short_accuracy:.2f}% held-out after the short training, rank "
                       f"{res.reranked.index(r) + 1} of {len(res.reranked)} candidates re-ranked")
    if res.ground_truth is not None:
        g = res.ground_truth
        click.echo(f"benchmark: chosen val_acc {g.chosen_val_acc}, best under budget {g.best_val_acc} "
                   f"(gap {g.gap:.2f})")
    if res.baseline is not None:
        from search.baseline_search import train_commands
        base = res.baseline
        speedup, how = base.speedup_of(b)
        click.echo(f"baseline: {base.name}: estimated score {base.candidate.accuracy:.1f}/100, "
                   + (f"measured {base.candidate.measured_ms:.3f} ms" if base.candidate.measured_ms is not None
                      else f"predicted {base.candidate.predicted_ms:.3f} ms"))
        if speedup is not None:
            click.echo(f"speed-up over the baseline: {speedup:.2f}x ({how})")
    for n in res.notes:
        click.echo(f"note: {n}")
    click.echo(f"outputs in {res.out_dir}/ (report.md explains the choice)")
    if res.baseline is not None and b is not None:
        click.echo("train the choice and the baseline with the same recipe, to see the accuracy:")
        for cmd in train_commands(f"{res.out_dir}/best.json", res.baseline.spec, res.baseline.data, str(res.out_dir)):
            click.echo(f"  {cmd}")


if __name__ == "__main__":
    main()
