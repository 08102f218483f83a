"""`predict-latency`: predicted latency of ONNX models, with intervals.

    predict-latency resnet50.onnx --predictor data/predictors/local-cpu.lgb [--json] [--per-kernel]
"""
from __future__ import annotations

import json
import sys
import time

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("models", nargs=-1, type=click.Path())
@click.option("--predictor", "predictor_path", required=True, type=click.Path(), help="A .lgb predictor file.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--per-kernel", is_flag=True, help="Add the per-kernel breakdown.")
@click.option("--timing", is_flag=True, help="Print the time spent per model (stderr).")
def main(models, predictor_path, as_json, per_kernel, timing):
    """Predict the latency of ONNX MODELS on the predictor's target."""
    from predictors import Predictor, PredictorError, PredictorFileError
    from predictors.graph import GraphError
    if not models:
        click.echo("error: give at least one ONNX model: predict-latency MODEL.onnx --predictor X.lgb", err=True)
        sys.exit(2)
    try:
        t0 = time.perf_counter()
        import predictors.detect  # noqa: F401  (onnx, networkx: part of the start, not of each model)
        t_import = time.perf_counter() - t0
        t0 = time.perf_counter()
        p = Predictor.load(predictor_path)
        t_load = time.perf_counter() - t0
        results = []
        for m in models:
            t1 = time.perf_counter()
            results.append(p.predict(m, name=m))
            if timing:
                click.echo(f"{m}: {1000 * (time.perf_counter() - t1):.1f} ms (predictor load {1000 * t_load:.1f} ms, "
                           f"imports {1000 * t_import:.1f} ms)", err=True)
    except (PredictorError, PredictorFileError, GraphError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    p.write_tree_cache()  # after the predictions: later runs with this file skip parsing the trees
    if as_json:
        click.echo(json.dumps([r.to_dict(per_kernel) for r in results], indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    console = Console()
    t = Table(title=f"predicted latency on {p.target_name} ({predictor_path})")
    for col in ("model", "latency ms", "80% interval ms", "kernels", "unknown ops"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        t.add_row(r.model, f"{r.latency_ms:.3f}", f"{r.low_ms:.3f} – {r.high_ms:.3f}", str(len(r.kernels)),
                  str(len(r.unknown_ops)))
    console.print(t)
    for r in results:
        if r.unknown_ops:
            console.print(f"[yellow]{r.model}: {len(r.unknown_ops)} op(s) outside the kernel vocabulary, "
                          "estimated by the bytes/FLOPs roofline fallback:[/yellow]")
            for u in r.unknown_ops:
                console.print(f"  {u['name']} ({u['op_type']}): {u['estimate_ms']:.4f} ms")
        if per_kernel:
            k = Table(title=f"{r.model}: kernels (sum {r.kernel_sum_ms:.3f} ms before the graph model)")
            for col in ("#", "kind", "parameters", "ms", "80% interval", "ONNX nodes"):
                k.add_column(col)
            for i, kern in enumerate(r.kernels):
                params = " ".join(f"{a}={b}" for a, b in kern["params"].items())
                k.add_row(str(i), kern["kind"], params, f"{kern['ms']:.4f}",
                          f"{kern['low_ms']:.4f} – {kern['high_ms']:.4f}", "+".join(kern["ops"]))
            console.print(k)


if __name__ == "__main__":
    main()
