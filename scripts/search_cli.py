"""`search`: find the accuracy/latency frontier of a space on your data, verify finalists on the device."""
from __future__ import annotations

import click

from scripts.cli import (EXIT_BUDGET, EXIT_USAGE, cli_errors, exit_interrupted, fail, flags_in, search_threads,
                         set_torch_threads)
from scripts.config_options import build_part, flags_of, options_for, search_flags
from search.config import (AccuracyConfig, AlgorithmConfig, BaselineConfig, DataConfig, LatencyConfig, RerankSettings,
                           RunConfig, SearchSpec, SpaceConfig, SupernetConfig, VerificationConfig)

EPILOG = """\b
Examples:
  search --space nb201 --data digits --latency-budget 0.5 --out runs/s1
      (the predictor is the shipped one that best matches this machine: --predictor auto)
  search --predictor data/predictors/local-cpu__amd-epyc__a97a266b.lgb --space mbv3 --data ./my_images \\
         --min-accuracy 90 --host pi@raspberrypi
  search --baseline resnet56 --data ./cifar10 --speedup 3
  search --space nb201 --benchmark ../shared/data/nb201/nb201_cifar10.csv:edgegpu \\
         --data ./cifar10/train --latency-budget 5

\b
Outputs in --out: frontier.csv, frontier.json, frontier.png, best.json, best.onnx, best.pt, report.md
(report.md shows how to load best.pt). An --out holding an earlier run's results is refused unless
--overwrite. Ctrl-C stops the run (supernet training included) and still writes every output from what
was found so far.
Exit codes: 0 done, 1 runtime error, 2 usage error (checked before any work), 3 budget below the
fastest candidate, 130 interrupted.
"""

# the order of the options in --help, and of building the parts (supernet and rerank go into accuracy)
PARTS = [("latency", LatencyConfig), ("data", DataConfig), ("space", SpaceConfig), ("supernet", SupernetConfig),
         ("rerank", RerankSettings), ("accuracy", AccuracyConfig), ("verification", VerificationConfig),
         ("algorithm", AlgorithmConfig), ("baseline", BaselineConfig), ("run", RunConfig)]


def _with_options(fn):
    """Every part's options (scripts.config_options), from the dataclasses of search.config."""
    for part, cls in reversed(PARTS):
        fn = options_for(part, cls)(fn)
    return fn


def build_spec(kw: dict, progress: bool) -> SearchSpec:
    """The search's typed configuration from the parsed options; each part validates itself and a
    wrong value exits 2 naming its flag (scripts.cli.cli_errors). The latency part comes last: a
    missing --predictor may mean calibrating one here (minutes), after every other check."""
    built = {}
    for part, cls in PARTS[1:] + PARTS[:1]:
        extra = {}
        if part == "accuracy":
            extra = {"supernet": built.pop("supernet"), "rerank": built.pop("rerank")}
        if part == "run":
            extra = {"progress": progress}
        if part == "latency" and kw.get("latency__predictor") in (None, "auto") and not kw.get("latency__benchmark"):
            kw["latency__predictor"] = _predictor_for_this_machine(kw, built["verification"], built["run"],
                                                                   quiet=not progress)
        with cli_errors({**search_flags(), **flags_of(part, cls)}):
            built[part] = build_part(part, cls, kw, **extra)
    with cli_errors(search_flags()):
        return SearchSpec(**built)


def _predictor_for_this_machine(kw: dict, verification: VerificationConfig, run: RunConfig, quiet: bool) -> str:
    """No --predictor (or auto): what `make demo` and `predict-latency --predictor auto` choose too
    (`predictor_for_this_machine`), saying which."""
    from predictors.calibrate import predictor_for_this_machine
    if verification.host:
        with cli_errors():
            fail("--predictor is required with --host (a .lgb built for that device: train-predictor), except "
                 "with --benchmark", EXIT_USAGE)
    target = kw.get("latency__target") or "local-cpu"
    with cli_errors({**search_flags(), **flags_of("latency", LatencyConfig)}):
        from profiling.targets import list_targets
        from profiling.validate import check_choice
        check_choice("target", target, list_targets(kw.get("latency__targets_file")), "target")
        say = (lambda s: None) if quiet else (lambda s: click.echo(f"search: {s}", err=True))
        path, how = predictor_for_this_machine(cache=run.cache_path / "predictors", target=target, progress=say)
    click.echo(f"search: predictor {how}", err=True)
    return str(path)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@_with_options
@click.option("--quiet", is_flag=True, help="No progress output.")
def main(quiet: bool, **kw):
    """Search the efficient frontier of accuracy against latency, verify the finalists on the device.

    NSGA-II explores the space on estimated accuracy (supernet or zero-cost proxies on --data) and
    predicted latency (the predictor's batch path, no export). Only the top-K finalists near the
    constraint are exported to ONNX and measured on the target (locally, or over --host); one over
    the budget is dropped, and the measurements correct the predictor for the rest of the run.
    """
    from search.problem import BudgetTooLowError
    from search.run import run_search

    spec = build_spec(kw, progress=not quiet)
    with cli_errors(search_flags()):
        # torch (supernet, proxies) runs with the target's threads, as its latencies were measured
        set_torch_threads(search_threads(spec.latency.target, spec.latency.predictor, spec.latency.targets_file))
        try:
            res = run_search(spec)
        except BudgetTooLowError as e:
            fail(f"{e}\n(the frontier found is in {spec.run.out}/)", EXIT_BUDGET)
    summarize(res)
    if res.interrupted:
        exit_interrupted(None)


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
            base = next((t for t in res.reranked if res.baseline is not None and t.key == res.baseline.candidate.key),
                        None)
            click.echo(f"      {r.short_accuracy:.2f}% held-out after the short training, rank "
                       f"{res.reranked.index(r) + 1} of {len(res.reranked)} trained"
                       + (f" (the baseline: {base.short_accuracy:.2f}%, same recipe)" if base is not None else ""))
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
        spread = base.speedup_spread(b)
        if spread is not None:
            click.echo(f"speed-up over the baseline: {speedup:.2f}x (95% interval {spread['speedup_low']:.2f}-"
                       f"{spread['speedup_high']:.2f}x; the median of {spread['passes']} per-pass latency ratios, "
                       f"measured interleaved with the baseline)")
        elif speedup is not None:
            click.echo(f"speed-up over the baseline: {speedup:.2f}x ({how})")
    for n in res.notes:
        click.echo(f"note: {flags_in(n, search_flags())}")
    click.echo(f"outputs in {res.out_dir}/ (report.md explains the choice)")
    if res.baseline is not None and b is not None:
        click.echo("train the choice and the baseline with the same recipe, to see the accuracy:")
        for cmd in train_commands(f"{res.out_dir}/best.json", res.baseline.spec, res.baseline.data, str(res.out_dir),
                                  res.baseline.image_size):
            click.echo(f"  {cmd}")


if __name__ == "__main__":
    main()
