"""The embedded default (`make demo`): start from a known model, get a faster one, and train it.

    python -m scripts.demo [--out runs/demo] [--baseline resnet20] [--speedup 2] [--image-size 16]

Four phases, each announced with its expected duration:

1. the latency predictor for this machine (`predictors.calibrate.predictor_for_this_machine`:
   the same choice as `search` and `predict-latency --predictor auto`; calibrated here once, a
   few minutes, when no shipped predictor was measured on this machine);
2. `search --baseline resnet20 --speedup 2` on the bundled digits (scikit-learn's 8x8 digits,
   resized to 32x32, where the CIFAR ResNet-20 takes about 1.5 ms on one core): the
   finalists are measured interleaved with the baseline, and one is kept iff its latency ratio
   to the baseline, measured in the same passes, is at most 1/2 (`search.verify.RatioBudget`);
   finalists are picked among networks predicted clear of 1/2 by a decision margin (8%, the
   spread of ratios between runs here), and one measured inside it is not chosen over one clear
   of it, so that another run does not decide a close call the other way;
3. a short `train` of the chosen network, tested on held-out digits;
4. the baseline trained with the same recipe, when the time allows.

The search is seeded (deterministic up to the device's verdicts). `demo.json` in the output
directory has the choice, the measured speed-up with its interval, both test accuracies and the
time of each phase (`scripts/bench_demo_repro.py` reads it).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]


def find_predictor(cache: Path | None = None, target: str = "local-cpu") -> tuple[Path, str]:
    """(predictor file, how it was chosen) for `target` on this machine: the one function `search`
    and `predict-latency --predictor auto` use (`predictors.calibrate.predictor_for_this_machine`)."""
    from predictors.calibrate import predictor_for_this_machine
    return predictor_for_this_machine(cache=cache, target=target, progress=lambda s: click.echo(f"demo:   {s}"))


def fresh_dir(out: Path) -> Path:
    """`out`, or `out-2`, `out-3`, ... when it holds an earlier run's results (never replaced)."""
    from search.config import RESULT_FILES
    cand, i = out, 1
    while cand.is_dir() and any((cand / f).exists() for f in (*RESULT_FILES, "demo.json")):
        i += 1
        cand = out.with_name(f"{out.name}-{i}")
    return cand


class Phases:
    """Numbered phase lines with the time spent and the time left of the whole demo."""

    def __init__(self, n: int, minutes: float):
        self.n, self.i, self.t0, self.minutes = n, 0, time.monotonic(), minutes
        self.seconds: dict[str, float] = {}
        self._name, self._start = "", self.t0

    def start(self, name: str, what: str, eta_s: float | None = None) -> None:
        self.finish()
        self.i += 1
        self._name, self._start = name, time.monotonic()
        eta = f" (about {eta_s / 60:.1f} min)" if eta_s else ""
        click.echo(f"\ndemo [{self.i}/{self.n}] {what}{eta}; {self.elapsed() / 60:.1f} of {self.minutes:g} min "
                   f"used so far")

    def finish(self) -> None:
        if self._name:
            self.seconds[self._name] = round(time.monotonic() - self._start, 1)
            self._name = ""

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.minutes * 60 - self.elapsed()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--out", default="runs/demo", show_default=True,
              help="Output directory; when it holds an earlier run, runs/demo-2, -3, ... are used instead.")
@click.option("--baseline", default="resnet20", show_default=True,
              help="The model to start from: a registry name (known-models lists them).")
@click.option("--speedup", type=click.FloatRange(min=1.0, min_open=True), default=2.0, show_default=True,
              help="The chosen network must run at least this many times faster than the baseline, measured here.")
@click.option("--predictor", type=click.Path(dir_okay=False),
              help="Default: the one `search` and `predict-latency --predictor auto` choose for this machine.")
@click.option("--image-size", type=click.IntRange(min=8), default=32, show_default=True,
              help="The digits are resized to this size: at 32x32 (CIFAR's) the ResNet-20 takes about 1.5 ms on one "
                   "core here.")
@click.option("--population", type=click.IntRange(min=4), default=12, show_default=True)
@click.option("--generations", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--train-epochs", type=click.IntRange(min=1), default=8, show_default=True,
              help="Epochs of the short `train` of the choice (and of the baseline, same recipe).")
@click.option("--minutes", type=click.FloatRange(min=1.0), default=10.0, show_default=True,
              help="The whole demo's time: the search gets about half; the baseline is trained only if the "
                   "time left allows.")
@click.option("--seed", type=int, default=0, show_default=True)
def main(out, baseline, speedup, predictor, image_size, population, generations, train_epochs,
         minutes, seed):
    """Start from a known model (the CIFAR ResNet-20) on the bundled digits, search a network at least
    --speedup times faster on this machine, measured here, and train it to show its held-out accuracy."""
    from scripts.cli import cli_errors, set_torch_threads
    from scripts.search_cli import summarize
    from search.baseline_search import train_commands
    from search.run import SearchConfig, run_search

    set_torch_threads(1)  # the local-cpu target's thread count
    out_dir = fresh_dir(Path(out))
    click.echo(f"hwnas demo: start from {baseline} on the bundled digits ({image_size}x{image_size}), search a "
               f"network at least {speedup:g}x faster on this machine (measured here, interleaved with the baseline) "
               f"at the highest estimated accuracy, then train it briefly to show its held-out accuracy. About "
               f"{minutes:g} minutes; outputs in {out_dir}/.")
    if out_dir != Path(out):
        click.echo(f"demo: {out} holds an earlier run; writing to {out_dir}")
    ph = Phases(4, minutes)
    summary: dict = {"baseline": baseline, "speedup_target": speedup, "data": "digits", "image_size": image_size,
                     "seed": seed, "out": str(out_dir)}

    ph.start("predictor", "the latency predictor for this machine", None)
    from profiling.errors import HwnasError
    if predictor:
        pred_path, how = Path(predictor), "given"
    else:
        try:
            pred_path, how = find_predictor()
        except HwnasError as e:  # no predictor to start from, or the calibration could not measure
            click.echo(f"error: no latency predictor for this machine: {e}\n"
                       "Build one first:\n"
                       "  profile-device --target local-cpu --out data/tables/local-cpu.parquet\n"
                       "  train-predictor --table data/tables/local-cpu.parquet --out data/predictors/local-cpu.lgb\n"
                       "then run `make demo` again.", err=True)
            sys.exit(1)
    click.echo(f"demo:   predictor {how}")
    summary["predictor"] = str(pred_path)

    search_minutes = max(1.0, min(0.55 * minutes, ph.left() / 60 - 2.0))
    ph.start("search", f"search --baseline {baseline} --speedup {speedup:g} (zero-cost proxies, {generations} "
             f"generations of {population}, finalists measured with the baseline)", search_minutes * 60)
    shown = pred_path.relative_to(ROOT) if pred_path.is_relative_to(ROOT) else pred_path
    click.echo(f"demo:   as a command (the demo ranks against 16 random architectures, the command 64): search --baseline {baseline} --speedup {speedup:g} --data digits --image-size "
               f"{image_size} --predictor {shown} --population {population} --generations {generations} "
               f"--proxy-batch 32 --budget-minutes {search_minutes:.1f} --seed {seed} "
               f"--out {out_dir}")
    with cli_errors():
        res = run_search(SearchConfig(predictor=str(pred_path), baseline=baseline, speedup=speedup, data="digits",
                                      data_image_size=image_size, population=population, generations=generations,
                                      finalists=3, verify_rounds=2, out=out_dir, seed=seed,
                                      budget_minutes=search_minutes, reference_size=16, proxy_batch=32))
    summarize(res)
    if res.interrupted:
        sys.exit(130)
    best, base = res.best, res.baseline
    spread = base.speedup_spread(best) if best is not None else None
    summary.update(chosen=best.key if best is not None else None, baseline_arch=base.candidate.key,
                   verified=best is not None and best.measured_ms is not None,
                   baseline_ms=base.candidate.measured_ms, chosen_ms=best.measured_ms if best is not None else None,
                   budget_ms=res.formulation.latency_budget_ms, measured_speedup=spread,
                   speedup=base.speedup_of(best)[0] if best is not None else None, notes=list(res.notes),
                   finalists=[{k: m.get(k) for k in ("arch", "ratio", "speedup", "passes", "clear", "clear_of_margin",
                                                     "dropped")}
                              for r in res.rounds for m in r.measured],
                   ratio_margin=base.ratio.margin_summary() if base.ratio is not None else None)
    trained: dict[str, dict] = {}
    if best is not None:
        trained = train_phases(ph, res, base, train_epochs, image_size, seed)
    ph.finish()
    summary.update(trained=trained, seconds=ph.seconds, total_seconds=round(ph.elapsed(), 1))
    (out_dir / "demo.json").write_text(json.dumps(summary, indent=2))
    report(summary, res, out_dir, train_commands(f"{out_dir}/best.json", base.spec, "digits", str(out_dir), image_size,
                                                 max(30, train_epochs)))


def train_phases(ph: Phases, res, base, epochs: int, image_size: int, seed: int) -> dict[str, dict]:
    """Train the choice, then the baseline with the same recipe if the time left allows it."""
    from search.training import TrainRecipe, train_architecture
    recipe = TrainRecipe(epochs=epochs, seed=seed, hflip=False)  # a mirrored digit is another symbol
    out = res.out_dir
    done: dict[str, dict] = {}
    jobs = [("chosen", str(out / "best.json"), out / "trained-best"), ("baseline", base.spec, out / "trained-baseline")]
    for i, (label, arch, where) in enumerate(jobs):
        # the baseline's training takes about the choice's time x the measured speed-up (both scale
        # with the network's work); the choice's own time shows in its progress bar
        speedup = base.speedup_of(res.best)[0] or 1.0
        est = None if not done else 1.2 * done["chosen"]["train_seconds"] * max(1.0, speedup)
        if est is not None and ph.left() < est:
            click.echo(f"\ndemo [{ph.i + 1}/{ph.n}] the baseline's training is skipped: about {est / 60:.1f} min "
                       f"needed, {max(0.0, ph.left()) / 60:.1f} min left of the demo's time (run it with the command "
                       f"below)")
            break
        ph.start(f"train-{label}", f"train the {label} network on the digits, 20% held out for the test: "
                 f"{recipe.describe()}", est)
        r = train_architecture(arch, "digits", where, recipe, progress=True, log=lambda s: click.echo(f"demo:   {s}"),
                               image_size=image_size, overwrite=True)
        click.echo(f"demo:   {label}: test accuracy {r['test_accuracy']:.2f}% on {r['n_test']} held-out images, "
                   f"{r['params']:,} parameters, {r['train_seconds']:.0f} s")
        done[label] = {k: r[k] for k in ("arch", "test_accuracy", "n_test", "params", "train_seconds", "epochs")}
    return done


def report(s: dict, res, out_dir: Path, train_cmds: list[str]) -> None:
    """The result in a few lines, then the commands to go further."""
    click.echo("\n" + "=" * 100)
    if s.get("chosen") is None:
        click.echo(f"result: no network met the constraint (see {out_dir}/report.md)")
    else:
        sp = s.get("measured_speedup")
        speed = (f"{s['speedup']:.2f}x faster than {s['baseline']} (95% interval {sp['speedup_low']:.2f}-"
                 f"{sp['speedup_high']:.2f}x over {sp['passes']} interleaved passes), measured on this machine"
                 if sp else f"{s['speedup']:.2f}x faster than {s['baseline']} (predicted: not verified here)")
        click.echo(f"result: {s['chosen']}\n        {speed}; target {s['speedup_target']:g}x "
                   f"(budget {s['budget_ms']:.3f} ms = the baseline's {s['baseline_ms']:.3f} ms / "
                   f"{s['speedup_target']:g})")
        m = s.get("ratio_margin")
        if m:
            where = "clear of" if m["clear_of_margin"].get(s["chosen"]) else "inside (no finalist kept was clear of)"
            click.echo(f"        {where} the decision margin {m['margin']:g}: latency ratio to the baseline <= "
                       f"{m['clear_ratio']:.3f}")
        t = s.get("trained", {})
        if "chosen" in t:
            line = f"        held-out accuracy after {t['chosen']['epochs']} epochs: {t['chosen']['test_accuracy']:.2f}%"
            if "baseline" in t:
                line += f" (the baseline, same recipe: {t['baseline']['test_accuracy']:.2f}%)"
            click.echo(line + f" on {t['chosen']['n_test']} held-out digits")
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in s["seconds"].items())
    click.echo(f"time: {s['total_seconds'] / 60:.1f} min ({secs})")
    click.echo(f"outputs: {out_dir}/report.md (why this choice), frontier.png, "
               + ("best.onnx, best.pt, trained-best/, " if s.get("chosen") else "") + "demo.json")
    click.echo("next:")
    if s.get("chosen") is not None:
        click.echo(f"  {train_cmds[0]}   # the choice, trained longer")
        if "baseline" not in s.get("trained", {}):
            click.echo(f"  {train_cmds[1]}")
    click.echo("  search --baseline resnet56 --speedup 3 --data ./your-images   # your data, your baseline")
    click.echo("  predict-latency your-model.onnx                               # its latency on this machine")


if __name__ == "__main__":
    main()
