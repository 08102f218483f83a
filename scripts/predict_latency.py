"""`predict-latency`: predicted latency of ONNX models, with intervals.

    predict-latency resnet50.onnx                       # the shipped predictor that best matches this machine
    predict-latency a.onnx b.onnx --predictor data/predictors/local-cpu__amd-epyc__a97a266b.lgb --json

The predictor is checked against this machine when its target runs here (local-cpu, local-cpu-mt):
a predictor profiled on other hardware (another CPU, or the same model string with other
speed-relevant flags such as AVX-512 or VNNI) gets a warning that names the fields that differ,
and the best-matching shipped predictor is named.

JSON (`--json`): a list, one object per model, always with the same keys and types:
  model (str), latency_ms, low_ms, high_ms (float: prediction and 80% interval), kernel_sum_ms
  (float: the kernels' sum before the graph correction), n_kernels (int), kernels (list: one
  object per kernel {kind, params, ms, low_ms, high_ms, ops} with --per-kernel, else empty),
  unknown_ops (list of {name, op_type, estimate_ms, share, ...}: ops outside the kernel vocabulary,
  estimated by the roofline fallback; share = estimate / kernel_sum_ms), folded_ops (int: ONNX
  nodes that run no kernel, such as Reshape or Identity, or that are folded into a neighbour's
  kernel), unreliable (bool: more than 30% of the kernel sum rests on fallback estimates),
  fallback_share, extrapolated_share (float: shares of the kernel sum estimated by the fallback,
  and predicted by kernels outside their kind's table range; both widen the interval),
  reliability_note (str: the same in words, "" when nothing to say), error (str or null: why this
  model could not be predicted; its numbers are then null, unreliable is true), batch (int: the
  predictor's target batch, at which the model is predicted), images_per_s (float: batch * 1000 /
  latency_ms; null on error), precision (str: the target's precision, fp32/fp16/int8).

A model's batch axis is the target's: a predictor of a batch-32 target (local-cpu-b32) predicts
one run of 32 images, and the table shows images/s beside the milliseconds. A quantized model
(QDQ or QOperator) is read as its float original; predicting it with a predictor of a float
target, or a float model with an int8 one, prints a warning.
"""
from __future__ import annotations

import json
import sys
import warnings
import time
from pathlib import Path

import click

from profiling.paths import SHIPPED_PREDICTORS as SHIPPED
from scripts.cli import EXIT_CODES_HELP, EXIT_RUNTIME, EXIT_USAGE, cli_errors, fail

EPILOG = f"""\b
Examples:
  predict-latency model.onnx
  predict-latency model.onnx --target local-cpu-mt --json
  predict-latency model.onnx --predictor {SHIPPED.relative_to(SHIPPED.parents[1])}/local-cpu__amd-epyc__a97a266b.lgb --per-kernel

\b
{EXIT_CODES_HELP} A batch with one bad model predicts the others and exits 1.
"""


def prediction_json(r, per_kernel: bool, precision: str = "fp32") -> dict:
    """One model's result in the documented, stable JSON schema (module docstring)."""
    return {"model": r.model, "latency_ms": r.latency_ms, "low_ms": r.low_ms, "high_ms": r.high_ms,
            "kernel_sum_ms": r.kernel_sum_ms, "n_kernels": len(r.kernels),
            "kernels": list(r.kernels) if per_kernel else [], "unknown_ops": list(r.unknown_ops),
            "folded_ops": int(r.folded_ops), "unreliable": bool(r.unreliable),
            "fallback_share": float(r.fallback_share), "extrapolated_share": float(r.extrapolated_share),
            "reliability_note": r.reliability_note, "error": None, "batch": int(r.batch),
            "images_per_s": float(r.images_per_s), "precision": precision}


def failed_json(model: str, error: str, batch: int = 1, precision: str = "fp32") -> dict:
    return {"model": model, "latency_ms": None, "low_ms": None, "high_ms": None, "kernel_sum_ms": None,
            "n_kernels": 0, "kernels": [], "unknown_ops": [], "folded_ops": 0, "unreliable": True,
            "fallback_share": None, "extrapolated_share": None, "reliability_note": "", "error": error,
            "batch": batch, "images_per_s": None, "precision": precision}


def choose_predictor(predictor: str, target: str | None) -> tuple[Path, str | None]:
    """(the predictor file, a line saying how it was chosen). `auto`: what `search` and `make demo`
    choose for `target` (default local-cpu) on this machine (`predictors.calibrate.predictor_for_this_machine`):
    a shipped predictor measured on this machine, else one trained from a shipped table of it, else
    the one calibrated here before, else a new calibration of the closest shipped one (once)."""
    from profiling.validate import check_input_file
    if predictor != "auto":
        return check_input_file("predictor", predictor, "predictor file (.lgb)"), None
    from predictors.calibrate import predictor_for_this_machine
    from profiling.targets import list_targets
    from profiling.validate import check_choice
    name = target or "local-cpu"
    check_choice("target", name, list_targets(), "target")
    path, how = predictor_for_this_machine(target=name, progress=lambda s: click.echo(f"predict-latency: {s}", err=True))
    return path, f"predictor: {path} ({how})"


def machine_warning(p, path: Path) -> str | None:
    """A warning when the predictor's target runs on this machine but the predictor was profiled
    on other hardware; it names the differing fields and the best-matching shipped predictor."""
    import platform
    from predictors.catalog import OTHER_DEVICE, find_predictor, mismatch_note
    from profiling.fingerprint import local_fingerprint
    from profiling.targets import Target
    if not p.fingerprint or not p.target:
        return None
    try:
        target = Target.from_dict(p.target)
        target.check_local_support()
    except Exception:  # a target of another device (a Pi, a Jetson): this machine is not its device
        return None
    if target.arch and target.arch != platform.machine():
        return None
    here = local_fingerprint(target)
    note = mismatch_note(p.fingerprint, here, "this machine")
    if note is None:
        return None
    better = find_predictor(SHIPPED, target.name, here)
    if better is not None and better.level > OTHER_DEVICE and better.path.resolve() != path.resolve():
        fix = f"use {better.path} (--predictor auto picks it)"
    else:
        fix = f"profile it (profile-device --target {target.name}) and train its own predictor"
    return f"{note}; predictions can be far off here. For this machine, {fix}."


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.argument("models", nargs=-1, type=click.Path())
@click.option("--predictor", default="auto", show_default=True, metavar="FILE|auto",
              help="A .lgb predictor file, or auto: the shipped predictor (data/predictors/) of --target that best "
                   "matches this machine (CPU model and speed-relevant flags such as AVX-512, VNNI, AMX).")
@click.option("--target", default=None, help="With --predictor auto: the target to predict for (default local-cpu).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema: see the module docstring / README).")
@click.option("--per-kernel", is_flag=True, help="Add the per-kernel breakdown.")
@click.option("--timing", is_flag=True, help="Print the time spent per model (stderr).")
def main(models, predictor, target, as_json, per_kernel, timing):
    """Predict the latency of ONNX MODELS on the predictor's target."""
    from predictors import Predictor
    from predictors.graph import GraphError
    from predictors.model import PredictorError
    from predictors.quantized import DeploymentFormWarning
    if not models:
        fail("give at least one ONNX model: predict-latency MODEL.onnx [--predictor FILE]", EXIT_USAGE)
    with cli_errors():
        path, how = choose_predictor(predictor, target)
        t0 = time.perf_counter()
        import predictors.detect  # noqa: F401  (onnx, networkx: part of the start, not of each model)
        t_import = time.perf_counter() - t0
        t0 = time.perf_counter()
        p = Predictor.load(path)
        t_load = time.perf_counter() - t0
        if target is not None and target != p.target_name:
            fail(f"the predictor {path} was built for target {p.target_name!r}, not {target!r}: use a predictor "
                 f"for {target!r}, or --predictor auto")
        if how:
            click.echo(how, err=True)
        warning = machine_warning(p, path)
        if warning:
            click.echo(f"warning: {warning}", err=True)
    results, failed = [], []
    precision = (p.target or {}).get("precision") or "fp32"
    for m in models:
        t1 = time.perf_counter()
        try:
            if Path(m).is_dir():
                raise GraphError(f"{m} is a directory, not an ONNX file")
            if not Path(m).exists():
                raise GraphError(f"{m} does not exist")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DeploymentFormWarning)
                r = p.predict(m, name=m)
            for w in caught:
                click.echo(f"warning: {w.message}", err=True)
        except (PredictorError, GraphError, OSError, ValueError) as e:
            click.echo(f"error: {m}: {e}", err=True)
            failed.append(m)
            results.append(failed_json(m, str(e), p.batch, precision))
            continue
        results.append(r)
        if timing:
            click.echo(f"{m}: {1000 * (time.perf_counter() - t1):.1f} ms (predictor load {1000 * t_load:.1f} ms, "
                       f"imports {1000 * t_import:.1f} ms)", err=True)
    if len(failed) < len(models):
        p.write_tree_cache()  # after the predictions: later runs with this file skip parsing the trees
    good = [r for r in results if not isinstance(r, dict)]
    if as_json:
        click.echo(json.dumps([r if isinstance(r, dict) else prediction_json(r, per_kernel, precision) for r in results],
                              indent=2))
    else:
        _print_tables(good, p, path, per_kernel)
    if failed:
        click.echo(f"error: {len(failed)} of {len(models)} model(s) could not be predicted: {', '.join(failed)}",
                   err=True)
        sys.exit(EXIT_RUNTIME)


def _print_tables(results, p, path, per_kernel: bool) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    precision = (p.target or {}).get("precision") or "fp32"
    t = Table(title=f"predicted latency on {p.target_name} ({precision}, batch {p.batch}) ({path})")
    t.add_column("model", overflow="fold")  # a path is never cut: it is what the user copies
    throughput = p.batch > 1
    for col in ("latency ms",) + (("images/s",) if throughput else ()) + (
            "80% interval ms", "kernels", "unknown ops"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in results:  # unknown ops: their count and share of the kernel sum; the notes below say more
        t.add_row(r.model, f"{r.latency_ms:.3f}", *((f"{r.images_per_s:.1f}",) if throughput else ()),
                  f"{r.low_ms:.3f} – {r.high_ms:.3f}", str(len(r.kernels)),
                  (f"{len(r.unknown_ops)} ({r.fallback_share:.0%})" if r.unknown_ops else "0")
                  + (" [red]![/red]" if r.unreliable else ""))
    console.print(t)
    for r in results:
        if r.reliability_note:
            style = "red" if r.unreliable else "yellow"
            console.print(f"[{style}]{r.model}: {r.reliability_note}[/{style}]", soft_wrap=True)
        if r.unknown_ops:
            console.print(f"[yellow]{r.model}: {len(r.unknown_ops)} op(s) outside the kernel vocabulary, "
                          "estimated by the bytes/FLOPs roofline fallback (share of the kernel sum):[/yellow]",
                          soft_wrap=True)
            for u in r.unknown_ops:
                console.print(f"  {u['name']} ({u['op_type']}): {u['estimate_ms']:.4f} ms ({u.get('share', 0):.1%})",
                              soft_wrap=True)
        if per_kernel:
            k = Table(title=f"{r.model}: kernels (sum {r.kernel_sum_ms:.3f} ms before the graph model)")
            for col in ("#", "kind", "parameters", "ms", "80% interval", "ONNX nodes"):
                k.add_column(col, overflow="fold")
            for i, kern in enumerate(r.kernels):
                params = " ".join(f"{a}={b}" for a, b in kern["params"].items())
                k.add_row(str(i), kern["kind"], params, f"{kern['ms']:.4f}",
                          f"{kern['low_ms']:.4f} – {kern['high_ms']:.4f}", "+".join(kern["ops"]))
            console.print(k)


if __name__ == "__main__":
    main()
