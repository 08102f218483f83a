"""Held-out-by-family benchmark of the latency predictor on a corpus of real architectures.

The corpus comes from `scripts/export_corpus.py` (run in the separate benchmark environment):
a folder of ONNX files and `manifest.csv` (name, family, source). Three steps, each its own
command so the measurement can hold the quiet-machine lock alone (docs/benchmarks.md):

    # 1. ground truth, twice (runs A and B): interleaved round-robin passes over the whole corpus
    flock -x /work/cpu.lock taskset -c 1 python -m scripts.bench_corpus measure --corpus /work/corpus --run A
    flock -x /work/cpu.lock taskset -c 1 python -m scripts.bench_corpus measure --corpus /work/corpus --run B
    # 2. calibration of a predictor from another machine class (<= 5 minutes of measurement)
    flock -x /work/cpu.lock taskset -c 1 train-predictor --calibrate --out /work/corpus/bench/calibrated.lgb \\
        --adapt-from data/predictors/local-cpu__intel-xeon-processor__b74ee75f.lgb
    # 3. predictions and the report (no lock needed: nothing is timed)
    python -m scripts.bench_corpus evaluate --corpus /work/corpus --table data/tables/local-cpu__amd-epyc__8430cb8f.parquet

`evaluate` reports, on the corpus measured here (the median of runs A and B):
  (a) a predictor trained on the table, its graph correction refitted with each family of the
      corpus held out in turn (the other families' measured models join the table's networks);
  (b) a FLOPs-only fit, log ms = a + b log FLOPs, with each family held out in turn;
  (c) the plain kernel sum of the table's kernel models (no graph model);
  (d) the shipped predictor for this target as it is, and the calibrated one from step 2;
each as % within ±10%, median |error|, max |error| and (where it has one) 80%-interval
coverage, plus the reproducibility of the ground truth (runs A vs B within ±5% / ±10%).
Results go to `<corpus>/bench/` as JSON.
"""
from __future__ import annotations

import copy
import csv
import json
import sys
import time
from pathlib import Path

import click
import numpy as np

PASSES = 6
SECONDS_PER_PASS = 0.25


def _manifest(corpus: Path) -> list[dict]:
    path = corpus / "manifest.csv"
    if not path.exists():
        raise click.UsageError(f"{path} does not exist: export the corpus first (scripts/export_corpus.py)")
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if (corpus / r["onnx"]).exists()]
    return rows


def _bench_dir(corpus: Path) -> Path:
    d = corpus / "bench"
    d.mkdir(exist_ok=True)
    return d


def _stats(y, pred, low=None, high=None) -> dict:
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    err = pred / y - 1
    out = {"n": int(len(y)), "within10": float(np.mean(np.abs(err) <= 0.10)),
           "median_abs_err": float(np.median(np.abs(err))), "max_abs_err": float(np.max(np.abs(err))),
           "mean_signed_err": float(np.mean(err))}
    if low is not None:
        out["coverage80"] = float(np.mean((y >= np.asarray(low)) & (y <= np.asarray(high))))
        out["median_interval_width"] = float(np.median((np.asarray(high) - np.asarray(low)) / pred))
    return out


def _fmt(name: str, s: dict) -> str:
    line = (f"{name:44s} {s['within10']:6.1%} within ±10%   median |err| {s['median_abs_err']:6.1%}   "
            f"max |err| {s['max_abs_err']:7.1%}")
    if "coverage80" in s:
        line += f"   80% interval holds {s['coverage80']:5.1%}"
    return line + f"   (n={s['n']})"


@click.group()
def main():
    """Held-out-by-family benchmark of the predictor on a corpus of real architectures."""


@main.command()
@click.option("--corpus", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--run", "run_name", required=True, help="Name of this measurement run (A, B, ...).")
@click.option("--passes", default=PASSES, show_default=True, help="Round-robin passes over each batch of models.")
@click.option("--seconds", default=SECONDS_PER_PASS, show_default=True, help="Timed seconds per model per pass.")
@click.option("--batch-gb", default=2.5, show_default=True,
              help="Models measured interleaved together hold at most this many GB of weights (the runner keeps "
                   "a batch's sessions open).")
@click.option("--target", default="local-cpu", show_default=True)
def measure(corpus, run_name, passes, seconds, batch_gb, target):
    """Measure every corpus model on TARGET, interleaved (profiling.measure.measure_models: PASSES
    round-robin passes of SECONDS per model), in batches that bound the runner's memory."""
    from profiling.measure import measure_models
    corpus = Path(corpus)
    rows = _manifest(corpus)
    paths = [corpus / r["onnx"] for r in rows]
    batches, size = [[]], 0
    for p in paths:
        b = p.stat().st_size
        if batches[-1] and size + b > batch_gb * 1e9:
            batches.append([])
            size = 0
        batches[-1].append(p)
        size += b
    t0 = time.time()
    click.echo(f"measuring {len(paths)} models in {len(batches)} interleaved batch(es) x {passes} passes of "
               f"{seconds:g}s on {target} (run {run_name})")
    res = []
    for i, batch in enumerate(batches):
        res += measure_models(batch, target, passes=passes, slice_s=seconds,
                              on_pass=lambda d, n, i=i: click.echo(f"  batch {i + 1}/{len(batches)}: pass {d}/{n} "
                                                                    f"({time.time() - t0:.0f}s)", err=True))
    out = {"run": run_name, "target": target, "passes": passes, "seconds_per_pass": seconds, "batches": len(batches),
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "wall_s": time.time() - t0,
           "models": {m.name: {"median_ms": m.median_ms, "p10_ms": m.p10_ms, "p90_ms": m.p90_ms, "runs": m.runs}
                      for m in res}}
    path = _bench_dir(corpus) / f"measured_{run_name}.json"
    path.write_text(json.dumps(out, indent=1))
    click.echo(f"wrote {path} ({time.time() - t0:.0f}s)")


@main.command("kernels")
@click.option("--corpus", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--runs", default=12, show_default=True, help="Profiled runs per model (after 2 warm-up runs).")
@click.option("--out", "out_path", type=click.Path(), help="Default <corpus>/bench/kernels_in_context.json.")
def kernels_cmd(corpus, runs, out_path):
    """In-context kernel times: onnxruntime's per-node profiler on every corpus model, its node times
    attributed to the detected kernels (predictors.detect.ort_kernel_timings), one thread.

    `evaluate` compares them with the kernel models' predictions per kind: which kinds the table's
    kernel models misfit inside real networks. Resumable: models already in OUT are skipped."""
    from predictors.detect import ort_kernel_timings
    corpus = Path(corpus)
    rows = _manifest(corpus)
    out = Path(out_path) if out_path else _bench_dir(corpus) / "kernels_in_context.json"
    done = json.loads(out.read_text()) if out.exists() else {"runs": runs, "models": {}}
    t0 = time.time()
    todo = [r for r in rows if r["name"] not in done["models"]]
    for i, r in enumerate(todo):
        det, times, unclaimed = ort_kernel_timings(str(corpus / r["onnx"]), runs=runs)
        done["models"][r["name"]] = {
            "kernels": [{"kind": k.spec.kind, "params": dict(k.spec.params), "ms": t}
                        for k, t in zip(det.kernels, times)],
            "unclaimed_ms": unclaimed, "unknown": [u.op_type for u in det.unknown]}
        out.write_text(json.dumps(done))
        el = time.time() - t0
        click.echo(f"  {i + 1}/{len(todo)} {r['name']}: {sum(times) + unclaimed:.1f} ms in nodes "
                   f"({el:.0f}s, ETA {el / (i + 1) * (len(todo) - i - 1):.0f}s)", err=True)
    click.echo(f"wrote {out}")


def _measured(corpus: Path, runs: list[str]) -> tuple[dict[str, float], dict]:
    got = {}
    for r in runs:
        p = _bench_dir(corpus) / f"measured_{r}.json"
        if p.exists():
            got[r] = json.loads(p.read_text())["models"]
    if not got:
        raise click.UsageError(f"no measurement in {_bench_dir(corpus)}: run `measure --run A` first")
    names = set.intersection(*(set(v) for v in got.values()))
    truth = {n: float(np.median([got[r][n]["median_ms"] for r in got])) for n in names}
    repro = {}
    if len(got) >= 2:
        a, b = list(got)[:2]
        ratio = np.array([got[a][n]["median_ms"] / got[b][n]["median_ms"] for n in sorted(names)])
        drift = float(np.median(ratio))
        repro = {"runs": [a, b], "n": len(ratio), "within5": float(np.mean(np.abs(ratio - 1) <= 0.05)),
                 "within10": float(np.mean(np.abs(ratio - 1) <= 0.10)), "median_ratio": drift,
                 "within5_after_drift": float(np.mean(np.abs(ratio / drift - 1) <= 0.05))}
    return truth, repro


@main.command()
@click.option("--corpus", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--table", "tables", multiple=True, type=click.Path(exists=True),
              help="The table of this machine the predictor is trained on (repeat to merge).")
@click.option("--shipped", type=click.Path(exists=True), help="A shipped predictor to report as it is.")
@click.option("--runs", default="A,B", show_default=True, help="The measurement runs to use (median of them).")
@click.option("--network-weight", default=5.0, show_default=True)
@click.option("--graph-cv", default="random", show_default=True, type=click.Choice(["random", "family"]),
              help="How the graph correction is chosen (the shipped predictors use random).")
@click.option("--graph-ensemble", default=1, show_default=True,
              help="Boosted models averaged in the tree graph correction (the shipped predictors: 5; 1 keeps the "
                   "per-family refits affordable on 2 cores).")
@click.option("--kernels-from", type=click.Path(exists=True),
              help="A predictor already trained on --table: reuse its kernel models (skips the kernel fit; the "
                   "graph correction is refitted per held-out family all the same).")
@click.option("--json-out", type=click.Path(), help="Where to write the report (default <corpus>/bench/report.json).")
def evaluate(corpus, tables, shipped, runs, network_weight, graph_cv, graph_ensemble, kernels_from, json_out):
    """Predict every corpus model and report accuracy, each family held out in turn."""
    from predictors import Predictor
    corpus = Path(corpus)
    rows = _manifest(corpus)
    truth, repro = _measured(corpus, runs.split(","))
    rows = [r for r in rows if r["name"] in truth]
    names = [r["name"] for r in rows]
    fam = np.array([r["family"] for r in rows])
    paths = [str(corpus / r["onnx"]) for r in rows]
    y = np.array([truth[n] for n in names])
    report: dict = {"models": len(rows), "families": len(set(fam)), "reproducibility": repro, "rows": {}}
    click.echo(f"corpus: {len(rows)} models in {len(set(fam))} families; ground truth = median of runs {runs}")
    if repro:
        click.echo(f"reproducibility (run {repro['runs'][0]} vs {repro['runs'][1]}): {repro['within5']:.1%} within "
                   f"±5%, {repro['within10']:.1%} within ±10%, machine drift {repro['median_ratio'] - 1:+.1%} "
                   f"({repro['within5_after_drift']:.1%} within ±5% after it)")
    per_model: dict[str, dict] = {n: {"family": f, "measured_ms": float(m)} for n, f, m in zip(names, fam, y)}

    # the detected kernels' FLOPs (the graph's shapes resolved as the predictor resolves them)
    from predictors import features as F
    flops = None
    if shipped:
        p = Predictor.load(shipped)
        res = [p.predict(x) for x in paths]
        flops = np.array([p.onnx_inputs(x)[3][0, F.ADDITIVE.index("flops")] for x in paths])
        for n, r in zip(names, res):
            per_model[n]["shipped_ms"] = r.latency_ms
        report["rows"]["shipped_as_is"] = _stats(y, [r.latency_ms for r in res], [r.low_ms for r in res],
                                                 [r.high_ms for r in res])
        report["shipped"] = str(shipped)
    cal = _bench_dir(corpus) / "calibrated.lgb"
    if cal.exists():
        p = Predictor.load(cal)
        res = [p.predict(x) for x in paths]
        report["rows"]["calibrated"] = _stats(y, [r.latency_ms for r in res], [r.low_ms for r in res],
                                              [r.high_ms for r in res])
        c = p.training.get("calibration", {})
        report["calibration"] = {k: c.get(k) for k in ("base", "networks", "rounds", "seconds_per_pass", "seconds")}
        for n, r in zip(names, res):
            per_model[n]["calibrated_ms"] = r.latency_ms

    if tables:
        t0 = time.time()
        if kernels_from:
            base = Predictor.load(kernels_from)
            base.graph_cv, base.real_network_weight, base.adapters = graph_cv, network_weight, []
            report["kernels_from"] = str(kernels_from)
        else:
            base = Predictor(graph_cv=graph_cv, real_network_weight=network_weight)
            base.fit(list(tables))
            click.echo(f"trained on {', '.join(tables)} in {time.time() - t0:.0f}s", err=True)
        # Detection and kernel predictions depend on the kernel models only, which every refit of the
        # graph correction below shares: compute each model's inputs once.
        inputs = {x: base.onnx_inputs(x) for x in paths}
        sums = np.vstack([inputs[x][3] for x in paths])
        fallback = sums[:, F.ADDITIVE.index("ms_unknown")] / np.maximum(sums[:, 0], 1e-12)
        report["rows"]["kernel_sum"] = _stats(y, base._base(sums))
        flops = sums[:, F.ADDITIVE.index("flops")]
        nets = base.network_rows(base._table(list(tables), None)[0])
        pred_a, lo_a, hi_a, unrel = np.zeros(len(y)), np.zeros(len(y)), np.zeros(len(y)), np.zeros(len(y), bool)
        for f in sorted(set(fam)):
            tr = fam != f
            q = copy.copy(base)
            q.training = dict(base.training)
            q._reset_cache()
            q.graph_ensemble = graph_ensemble
            q.onnx_inputs = lambda x, _c=inputs: _c[x]  # same kernel models: the cached detection
            q.fit_graph([n["specs"] for n in nets] + [paths[i] for i in np.flatnonzero(tr)],
                        np.concatenate([[n["ms"] for n in nets], y[tr]]),
                        families=[n["family"] for n in nets] + list(fam[tr]),
                        weights=[1.0] * len(nets) + [network_weight] * int(tr.sum()))
            for i in np.flatnonzero(~tr):
                r = q.predict(paths[i])
                pred_a[i], lo_a[i], hi_a[i] = r.latency_ms, r.low_ms, r.high_ms
                unrel[i] = bool(getattr(r, "unreliable", False))
            click.echo(f"  held out {f:18s} ({int((~tr).sum())} models): graph {q.training.get('graph_choice')}", err=True)
        report["rows"]["table_family_out"] = _stats(y, pred_a, lo_a, hi_a)
        reliable = ~unrel
        if reliable.any() and unrel.any():
            report["rows"]["table_family_out_reliable_only"] = _stats(y[reliable], pred_a[reliable], lo_a[reliable],
                                                                      hi_a[reliable])
        report["table"] = list(tables)
        for i, n in enumerate(names):
            per_model[n].update(predicted_ms=float(pred_a[i]), low_ms=float(lo_a[i]), high_ms=float(hi_a[i]),
                                kernel_sum_ms=float(base._base(sums[i:i + 1])[0]), fallback_share=float(fallback[i]),
                                unreliable=bool(unrel[i]))
        fam_rows = {}
        for f in sorted(set(fam)):
            m = fam == f
            fam_rows[f] = _stats(y[m], pred_a[m], lo_a[m], hi_a[m])
        report["per_family"] = fam_rows
    if flops is not None:  # (b) FLOPs-only, log ms = a + b log FLOPs, each family held out
        pred_f = np.zeros(len(y))
        for f in sorted(set(fam)):
            tr = fam != f
            b, a = np.polyfit(np.log(flops[tr]), np.log(y[tr]), 1)
            pred_f[~tr] = np.exp(a + b * np.log(flops[~tr]))
        report["rows"]["flops_only_family_out"] = _stats(y, pred_f)
        for n, v in zip(names, pred_f):
            per_model[n]["flops_only_ms"] = float(v)
    report["per_model"] = per_model
    labels = {"table_family_out": "(a) table predictor, family held out", "flops_only_family_out":
              "(b) FLOPs-only, family held out", "kernel_sum": "(c) plain kernel sum",
              "table_family_out_reliable_only": "    (a) on models not marked unreliable",
              "shipped_as_is": "shipped predictor as it is", "calibrated": "calibrated (another machine + calibration)"}
    for k, lab in labels.items():
        if k in report["rows"]:
            click.echo(_fmt(lab, report["rows"][k]))
    if "per_family" in report:
        click.echo("per family (a):")
        for f, s in report["per_family"].items():
            click.echo(f"  {f:20s} {s['within10']:6.1%} within ±10%, median |err| {s['median_abs_err']:6.1%} (n={s['n']})")
    out = Path(json_out) if json_out else _bench_dir(corpus) / "report.json"
    out.write_text(json.dumps(report, indent=1))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
