"""Benchmark the latency predictor (docs/predictor.md): held-out families, speed, NB201 few-shot.

    python -m scripts.bench_predictor --table TABLE.parquet [--skip-families] [--cache /tmp/hwnas-bench]

Every figure is printed. Reference-model measurements (ORT CPU EP, 1 thread, ORT_ENABLE_ALL,
`profiling.device_runner.measure_callable`, the table's measurement code) are cached in --cache.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np


def _measure(path: str, threads: int = 1) -> dict:
    """The profiler's network measurement: its session settings, feeds and stopping rule."""
    import onnxruntime as ort
    from profiling.device_runner import measure_callable
    from profiling.profiler import NETWORK_STOP
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    rs = np.random.RandomState(1)
    x = {i.name: rs.uniform(-1.0, 1.0, [d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
         for i in sess.get_inputs()}
    outs = [o.name for o in sess.get_outputs()]
    r = measure_callable(lambda: sess.run(outs, x), dict(NETWORK_STOP))
    return {k: float(r[k]) for k in ("median_ms", "p10_ms", "p90_ms") if k in r}


def _fmt(m):
    return f"{m['within10']:6.1%} within ±10%  MAPE {m['mape']:6.1%}  Spearman {m['spearman']:.3f}"


def families_benchmark(p, cache: Path, only: tuple = ()):
    """Measure the reference architectures here (cached), predict them, hold out each family in turn.

    The kernel sum and the full predictor never saw these models (they are fitted on the table);
    the FLOPs-only line is refitted on the other families each time.
    """
    import onnx
    from predictors.model import metrics
    from profiling.onnx_stats import model_stats
    from scripts.reference_models import export, reference_models
    rows = []
    for fam, members in reference_models().items():
        if only and fam not in only:
            continue
        for name, ctor, res in members:
            onnx_path = cache / f"{name}.onnx"
            meas = cache / f"{name}.json"
            if not onnx_path.exists():
                export(ctor, res, str(onnx_path))
            if not meas.exists():
                meas.write_text(json.dumps({**_measure(str(onnx_path)), "measured_at": time.time()}))
            m = json.loads(meas.read_text())
            ms = m.get("median_ms", m.get("ms"))
            r = p.predict(str(onnx_path))
            _, _, _, sums, peak = p.onnx_inputs(str(onnx_path))
            flops = model_stats(onnx.load(str(onnx_path), load_external_data=False)).flops
            unknown = sorted({u["op_type"] for u in r.unknown_ops})
            rows.append({"family": fam, "name": name, "ms": ms, "sums": sums[0], "peak": peak[0], "flops": flops,
                         "pred": r.latency_ms, "ksum": r.kernel_sum_ms + p.overhead_ms, "unknown": unknown})
            click.echo(f"  {name:20s} measured {ms:8.2f} ms (p10-p90 {m.get('p10_ms', ms):.2f}-{m.get('p90_ms', ms):.2f})"
                       f"  predicted {r.latency_ms:8.2f}  kernel sum {rows[-1]['ksum']:8.2f}  "
                       f"{len(r.kernels)} kernels, unknown ops: {', '.join(unknown) or 'none'}")
    fams = sorted({r["family"] for r in rows})
    y = np.array([r["ms"] for r in rows])
    fl = np.log([r["flops"] for r in rows])
    res = {"flops": np.zeros(len(rows)), "sum": np.array([r["ksum"] for r in rows]),
           "full": np.array([r["pred"] for r in rows])}
    for fam in fams:
        test = np.array([r["family"] == fam for r in rows])
        a, b = np.polyfit(fl[~test], np.log(y[~test]), 1) if (~test).sum() >= 2 else (1.0, 0.0)
        res["flops"][test] = np.exp(b + a * fl[test])
    fam_arr = np.array([r["family"] for r in rows])
    click.echo(f"  {'family':14s} {'n':>3s}  {'FLOPs-only':>10s} {'kernel sum':>10s} {'full':>10s}   (share within ±10%)")
    out = {}
    for fam in [*fams, "overall"]:
        sel = np.ones(len(rows), bool) if fam == "overall" else fam_arr == fam
        w = {k: float(np.mean(np.abs(v[sel] / y[sel] - 1) <= 0.10)) for k, v in res.items()}
        out[fam] = w
        click.echo(f"  {fam:14s} {sel.sum():3d}  {w['flops']:10.1%} {w['sum']:10.1%} {w['full']:10.1%}")
    for k, label in (("flops", "FLOPs-only fit (fitted on the other families)"), ("sum", "plain sum of kernel predictions"),
                     ("full", "full predictor")):
        click.echo(f"  {label:48s} {_fmt(metrics(y, res[k]))}")
    return out


def nb201_benchmark(p, shots: int = 20, seed: int = 0):
    import pandas as pd
    from scipy.stats import spearmanr
    from search.spaces import get_space
    from predictors.adapt import network_inputs
    csv = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nb201" / "nb201_cifar10.csv"
    if not csv.exists():
        click.echo(f"  skipped: {csv} is absent")
        return
    df = pd.read_csv(csv)
    space = get_space("nb201")
    t0 = time.time()
    cands = [space.kernel_specs(space.from_string(a)) for a in df["arch"]]
    sums, parent = network_inputs(p, cands)
    click.echo(f"  kernel specs + local-cpu predictions of {len(df)} cells in {time.time() - t0:.1f}s")
    devices = [c[:-3] for c in df.columns if c.endswith("_ms")]
    from predictors.adapt import apply_adapters, fit_adapter
    rng = np.random.default_rng(seed)
    for source in devices:
        ys = df[f"{source}_ms"].to_numpy(float)
        # learn on the source device: adapter on 1000 of its cells
        idx = rng.choice(len(df), 1000, replace=False)
        a_src = fit_adapter(parent[idx], sums[idx], ys[idx], source, lambdas=(0.01, 0.1))
        src_pred, _, _ = apply_adapters([a_src], parent, sums)
        sp_all, acc_all = [], []
        for target in devices:
            if target == source:
                continue
            yt = df[f"{target}_ms"].to_numpy(float)
            few = rng.choice(len(df), shots, replace=False)
            a_t = fit_adapter(src_pred[few], sums[few], yt[few], target)
            pred, _, _ = apply_adapters([a_t], src_pred, sums)
            rest = np.setdiff1d(np.arange(len(df)), few)
            sp = spearmanr(yt[rest], pred[rest]).correlation
            acc = float(np.mean(np.abs(pred[rest] / yt[rest] - 1) <= 0.1))
            sp_all.append(sp)
            acc_all.append(acc)
            click.echo(f"  {source:8s} -> {target:8s} Spearman {sp:.3f}  within ±10% {acc:6.1%}")
        click.echo(f"  {source:8s} -> others: mean Spearman {np.mean(sp_all):.3f}, mean within ±10% {np.mean(acc_all):.1%} "
                   f"(HELP, 10 samples: 0.93)")


@click.command()
@click.option("--table", "tables", multiple=True, required=True, type=click.Path(exists=True))
@click.option("--cache", default="/tmp/hwnas-bench", type=click.Path())
@click.option("--skip-families", is_flag=True, help="Skip measuring the reference architectures.")
@click.option("--families", "only", multiple=True, help="Only these reference families (repeat).")
@click.option("--skip-nb201", is_flag=True, help="Skip the NB201 few-shot adaptation benchmark.")
@click.option("--predictor", "pred_path", type=click.Path(), help="Reuse a predictor built on the table.")
def main(tables, cache, skip_families, only, skip_nb201, pred_path):
    from predictors import Predictor
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    if pred_path and Path(pred_path).exists():
        p = Predictor.load(pred_path)
    else:
        click.echo("== training on " + ", ".join(tables))
        p = Predictor().fit(list(tables), holdout=0.2, log=click.echo)
        pred_path = str(cache / "bench.lgb")
        p.save(pred_path)
    h = p.training.get("holdout")
    if h:
        click.echo("== held-out table networks")
        for k in ("flops_only", "kernel_sum", "full"):
            click.echo(f"  {k:12s} {_fmt(h[k])}" + (f"  coverage {h[k]['coverage']:.0%}" if "coverage" in h[k] else ""))
    click.echo("== speed: batch path (NB201 space candidates)")
    from search.spaces import get_space
    space = get_space("nb201")
    archs = [space.sample(i) for i in range(20000)]
    cands = [space.kernel_specs(a) for a in archs]
    p.predict_specs(cands[:100])
    t0 = time.perf_counter()
    p.predict_specs(cands)
    dt = time.perf_counter() - t0
    click.echo(f"  {len(cands) / dt:,.0f} candidates/s ({len(cands)} candidates, specs from space.kernel_specs)")
    click.echo("== speed: predict-latency on ResNet-50 (224x224)")
    from scripts.reference_models import Bottleneck, ResNet, export
    r50 = cache / "resnet50-224.onnx"
    if not r50.exists():
        export(lambda: ResNet(Bottleneck, [3, 4, 6, 3]), 224, str(r50))
    out = subprocess.run([sys.executable, "-m", "scripts.predict_latency", str(r50), "--predictor", pred_path,
                          "--timing"], capture_output=True, text=True)
    click.echo("  " + out.stderr.strip().replace("\n", "\n  "))
    if not skip_families:
        click.echo("== held-out families (reference architectures measured here)")
        families_benchmark(p, cache, tuple(only))
    if not skip_nb201:
        click.echo("== NB201 few-shot adaptation (20 measured cells)")
        nb201_benchmark(p)


if __name__ == "__main__":
    main()
