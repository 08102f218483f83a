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

The same benchmark in another deployment form (issue 16): `derive` writes a copy of the corpus
quantized (`--precision int8`: the product's quantizer, as an int8 target runs it) or with a
dynamic batch axis (`--batch 32`, optionally a subset that fits `--minutes` of measurement); the
copy's `derived.json` holds its form and the models that could not be converted, and `measure`
and `evaluate` refuse a target or table of another form. `compare` reports the Spearman rank
correlation of the fp32 batch-1 latencies with the other form's:

    python -m scripts.bench_corpus derive --corpus /work/corpus --out /work/corpus_int8 --precision int8 --jobs 2
    python -m scripts.bench_corpus derive --corpus /work/corpus --out /work/corpus_b32 --batch 32 --minutes 7 --passes 4
    flock -x /work/cpu.lock taskset -c 1 python -m scripts.bench_corpus measure --corpus /work/corpus_int8 \
        --target local-cpu-int8 --run A
    flock -x /work/cpu.lock taskset -c 1 python -m scripts.bench_corpus measure --corpus /work/corpus_b32 \
        --target local-cpu-b32 --run A --passes 4 --min-runs 1 --max-models 10
    python -m scripts.bench_corpus evaluate --corpus /work/corpus_int8 --table INT8_TABLE.parquet
    python -m scripts.bench_corpus compare --corpus /work/corpus --other /work/corpus_int8
"""
from __future__ import annotations

import contextlib
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


DERIVED = "derived.json"


def _form(corpus: Path) -> dict:
    """The deployment form of a corpus folder: {"precision", "batch"} from its derived.json
    (written by `derive`), fp32 at batch 1 for an exported corpus."""
    p = corpus / DERIVED
    form = json.loads(p.read_text()) if p.exists() else {}
    return {"precision": form.get("precision", "fp32"), "batch": int(form.get("batch", 1))}


def _check_form(corpus: Path, precision: str, batch: int, what: str) -> None:
    form = _form(corpus)
    if (form["precision"], form["batch"]) != (precision, batch):
        raise click.UsageError(f"{corpus} holds the {form['precision']}, batch {form['batch']} form but {what} is "
                               f"{precision}, batch {batch}: pick the matching corpus folder (bench_corpus derive) "
                               "or target")


def _b32_subset(rows: list[dict], ms: dict[str, float], batch: int, minutes: float, passes: int,
                seconds: float) -> list[dict]:
    """The subset rule of a batched corpus: each family's fastest model first (fastest families
    first), then the other models fastest first, while the estimated measurement time fits
    `minutes`. A model costs `batch` x its batch-1 time per run; per model: 5 warm-up runs, then
    per pass max(`seconds`, one run) plus one untimed run after the first pass."""
    def cost(r):
        run_s = batch * ms[r["name"]] / 1000
        return 5 * run_s + passes * max(seconds, run_s) + (passes - 1) * run_s + 0.5  # + session creation

    rows = [r for r in rows if r["name"] in ms]
    fastest: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: ms[r["name"]]):
        fastest.setdefault(r["family"], r)
    first = sorted(fastest.values(), key=lambda r: ms[r["name"]])
    rest = sorted((r for r in rows if r not in first), key=lambda r: ms[r["name"]])
    chosen, total = [], 0.0
    for r in first + rest:
        if total + cost(r) <= minutes * 60:
            chosen.append(r)
            total += cost(r)
    return chosen


@main.command()
@click.option("--corpus", required=True, type=click.Path(exists=True, file_okay=False), help="The exported fp32 corpus.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The derived corpus folder.")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="int8: each model quantized by the product's quantizer (profiling.quantize.quantize: static QDQ, "
                   "per-channel int8 weights, uint8 activations, random calibration), as an int8 target runs it.")
@click.option("--batch", default=1, show_default=True,
              help="Above 1: each model with a dynamic batch axis (Reshapes that hard-code the exported batch 1 "
                   "follow the input), kept when it runs at batch 2.")
@click.option("--minutes", type=float, default=None,
              help="With --batch: keep the subset whose measurement (--passes x --seconds) fits this many minutes, "
                   "estimated from the fp32 batch-1 runs --runs of --corpus: each family's fastest model first, then "
                   "the other models fastest first.")
@click.option("--runs", default="S1,S2", show_default=True, help="The batch-1 measurements the subset rule reads.")
@click.option("--passes", default=PASSES, show_default=True, help="The passes the subset's measurement will make.")
@click.option("--seconds", default=SECONDS_PER_PASS, show_default=True)
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1),
              help="Models converted at once, each in its own process (quantizing took 1.5-23 s a model on a quiet Zen 4 core). "
                   "Nothing is timed here, so use every core unless a measurement runs beside it.")
def derive(corpus, out, precision, batch, minutes, runs, passes, seconds, jobs):
    """Write the corpus in another deployment form (int8, or a batch above 1) to OUT, with its
    manifest.csv and derived.json (the form, the models that could not be converted and why).
    Resumable: models already in OUT are kept."""
    from concurrent.futures import ProcessPoolExecutor
    corpus, out = Path(corpus), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _manifest(corpus)
    meta = {"from": str(corpus), "precision": precision, "batch": batch, "failed": {}}
    if (out / DERIVED).exists():
        old = json.loads((out / DERIVED).read_text())
        if (old["precision"], old["batch"]) != (precision, batch):
            raise click.UsageError(f"{out} holds another form ({old['precision']}, batch {old['batch']})")
        meta["failed"] = old.get("failed", {})
    if batch > 1 and minutes:
        rows = _b32_subset(rows, _measured(corpus, runs.split(","))[0], batch, minutes, passes, seconds)
        meta["subset"] = {"rule": "each family's fastest model, then the others fastest first, while the estimated "
                                  f"measurement fits {minutes:g} min ({passes} passes x {seconds:g} s)",
                          "runs": runs, "models": len(rows), "families": len({r["family"] for r in rows})}
    done = {r["name"] for r in rows if (out / r["onnx"]).exists()}
    todo = [r for r in sorted(rows, key=lambda r: (corpus / r["onnx"]).stat().st_size)  # small first
            if r["name"] not in done and r["name"] not in meta["failed"]]
    t0 = time.time()
    _write_derived_listing(out, meta, rows, done)
    with ProcessPoolExecutor(max_workers=jobs) if jobs > 1 else contextlib.nullcontext() as pool:
        results = (pool.map if pool else map)(_derive_model, [str(corpus / r["onnx"]) for r in todo],
                                              [str(out / r["onnx"]) for r in todo], [precision] * len(todo),
                                              [batch] * len(todo))
        for i, (r, (error, took)) in enumerate(zip(todo, results), 1):
            if error is None:
                done.add(r["name"])
            else:
                meta["failed"][r["name"]] = error
            click.echo(f"[{i}/{len(todo)}] {r['name']} ({r['family']}): {'FAILED' if error else 'ok'} ({took:.1f}s, "
                       f"{time.time() - t0:.0f}s in all)", err=True)
            _write_derived_listing(out, meta, rows, done)  # after each model: a stopped run leaves a corpus
    click.echo(f"wrote {len(done)} models ({len({r['family'] for r in rows if r['name'] in done})} families) to {out}; "
               f"{len(meta['failed'])} could not be converted (see {out / DERIVED})")


def _derive_model(src: str, dst: str, precision: str, batch: int) -> tuple[str | None, float]:
    """Convert one model of the corpus to the form (written as `dst`); returns (why it could not
    be converted, or None; seconds taken)."""
    import onnx

    from profiling.errors import ProfilingError
    from profiling.quantize import quantize
    from scripts.bench_deploy import _runs_at, rebatched
    t = time.time()
    try:
        m = onnx.load(src)
        if batch > 1:
            m = rebatched(m)
            if not _runs_at(m, 2):
                raise ProfilingError("does not run at batch 2 after re-batching (a shape fixed at export)")
        if precision == "int8":
            m = quantize(m, batch=1)
        onnx.save(m, dst + ".part")
        Path(dst + ".part").rename(dst)
    except (ProfilingError, OSError) as e:
        return str(e)[:400], time.time() - t
    return None, time.time() - t


def _write_derived_listing(out: Path, meta: dict, rows: list[dict], done: set[str]) -> None:
    (out / DERIVED).write_text(json.dumps(meta, indent=1))
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["name"] in done)


@main.command()
@click.option("--corpus", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--run", "run_name", required=True, help="Name of this measurement run (A, B, ...).")
@click.option("--passes", default=PASSES, show_default=True, help="Round-robin passes over each batch of models.")
@click.option("--seconds", default=SECONDS_PER_PASS, show_default=True, help="Timed seconds per model per pass.")
@click.option("--batch-gb", default=2.5, show_default=True,
              help="Models measured interleaved together hold at most this many GB of weights (the runner keeps "
                   "a batch's sessions open).")
@click.option("--max-models", default=0, show_default=True,
              help="At most this many models measured interleaved together (0: no limit; at a large batch each "
                   "session's activations count too).")
@click.option("--min-runs", default=3, show_default=True, help="Timed runs per model per pass, at least.")
@click.option("--target", default="local-cpu", show_default=True,
              help="Its precision and batch must be the corpus folder's form (derived.json; an exported corpus is "
                   "fp32, batch 1): local-cpu-int8 for an int8 corpus, local-cpu-b32 for a batch-32 one.")
def measure(corpus, run_name, passes, seconds, batch_gb, max_models, min_runs, target):
    """Measure every corpus model on TARGET, interleaved (profiling.measure.measure_models: PASSES
    round-robin passes of SECONDS per model), in batches that bound the runner's memory. A quantized
    corpus is measured as its files are (the runner does not quantize them again)."""
    from profiling.measure import measure_models
    from profiling.targets import get_target
    corpus = Path(corpus)
    t = get_target(target)
    _check_form(corpus, t.precision, t.batch, f"target {target}")
    rows = _manifest(corpus)
    paths = [corpus / r["onnx"] for r in rows]
    batches, size = [[]], 0
    for p in paths:
        b = p.stat().st_size
        if batches[-1] and (size + b > batch_gb * 1e9 or len(batches[-1]) == max_models > 0):
            batches.append([])
            size = 0
        batches[-1].append(p)
        size += b
    t0 = time.time()
    click.echo(f"measuring {len(paths)} models in {len(batches)} interleaved batch(es) x {passes} passes of "
               f"{seconds:g}s on {target} (run {run_name})")
    res = []
    for i, batch in enumerate(batches):
        res += measure_models(batch, t, passes=passes, slice_s=seconds, min_runs=min_runs,
                              on_pass=lambda d, n, i=i: click.echo(f"  batch {i + 1}/{len(batches)}: pass {d}/{n} "
                                                                    f"({time.time() - t0:.0f}s)", err=True))
    out = {"run": run_name, "target": target, "passes": passes, "seconds_per_pass": seconds, "min_runs": min_runs,
           "form": _form(corpus), "batches": len(batches),
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "wall_s": time.time() - t0,
           "models": {m.name: {"median_ms": m.median_ms, "p10_ms": m.p10_ms, "p90_ms": m.p90_ms, "runs": m.runs,
                                  "min_ms": m.min_ms, "pass_ms": list(m.pass_ms)}
                      for m in res}}
    path = _run_path(corpus, run_name)
    path.write_text(json.dumps(out, indent=1))
    click.echo(f"wrote {path} ({time.time() - t0:.0f}s)")


@main.command("repeat")
@click.option("--corpus", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--runs", default="A,B", show_default=True, help="Two measurement runs to compare.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def repeat(corpus, runs, as_json):
    """How well two measurement runs agree, per statistic of a model's passes: the median of the
    pass medians (what every table and prediction means), the median of the pass p10s, the fastest
    run, the fastest pass median and the mean of the three fastest passes; each as the share within
    ±5% and ±10%, raw and after the level between the runs (their median ratio) is divided out."""
    names = runs.split(",")
    if len(names) != 2:
        raise click.BadParameter(f"give two runs, not {runs!r}", param_hint="--runs")
    got = []
    for r in names:
        models = _read_run(Path(corpus), r)
        if models is None:
            raise click.BadParameter(f"{_run_path(Path(corpus), r)} does not exist: run `measure --run {r}` first",
                                     param_hint="--runs")
        got.append({n: _pass_statistics(m) for n, m in models.items()})
    common = sorted(set(got[0]) & set(got[1]))
    out = {"runs": names, "models": len(common), "statistics": {
        stat: _agreement(np.array([got[0][n][stat] / got[1][n][stat] for n in common]))
        for stat in ("median", "p10", "min", "min_pass", "low3_pass")}}
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(f"runs {names[0]} and {names[1]}, {len(common)} models")
    for stat, v in out["statistics"].items():
        click.echo(f"  {stat:10s} level {v['level']:.3f}   within ±5% {v['within5']:6.1%}  ±10% {v['within10']:6.1%}"
                   f"   after the level {v['within5_after_level']:6.1%} / {v['within10_after_level']:6.1%}")


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


def _measured(corpus: Path, runs: list[str], statistic: str = "median") -> tuple[dict[str, float], dict]:
    got = _runs(corpus, runs, statistic)
    if not got:
        raise click.UsageError(f"no measurement in {_bench_dir(corpus)}: run `measure --run A` first")
    names = set.intersection(*(set(v) for v in got.values()))
    truth = {n: float(np.median([got[r][n] for r in got])) for n in names}
    repro = {}
    if len(got) >= 2:
        a, b = list(got)[:2]
        agree = _agreement(np.array([got[a][n] / got[b][n] for n in sorted(names)]))
        repro = {"runs": [a, b], "n": len(names), "within5": agree["within5"], "within10": agree["within10"],
                 "median_ratio": agree["level"], "within5_after_drift": agree["within5_after_level"]}
    return truth, repro


def _agreement(ratio: np.ndarray) -> dict[str, float]:
    """How well two runs agree, from each model's ratio between them: the level (the median ratio),
    and the share within ±5% and ±10%, raw and with the level divided out."""
    level = float(np.nanmedian(ratio))

    def within(x: np.ndarray, tol: float) -> float:
        return float(np.mean(np.abs(x - 1) <= tol))

    return {"level": level, "within5": within(ratio, .05), "within10": within(ratio, .10),
            "within5_after_level": within(ratio / level, .05), "within10_after_level": within(ratio / level, .10)}


def _pass_statistics(m: dict) -> dict[str, float]:
    """A measured model's candidate statistics: the median of its pass medians (what tables and
    predictions mean), the median of its pass p10s, its fastest run, its fastest pass median and
    the mean of its three fastest pass medians (files older than those fields: the median for the
    passes, NaN for the fastest run)."""
    passes = sorted(m.get("pass_ms") or [m["median_ms"]])
    return {"median": m["median_ms"], "p10": m["p10_ms"], "min": m.get("min_ms") or float("nan"),
            "min_pass": passes[0], "low3_pass": float(np.mean(passes[:3]))}


def _run_path(corpus: Path, run: str) -> Path:
    return _bench_dir(corpus) / f"measured_{run}.json"


def _read_run(corpus: Path, run: str) -> dict[str, dict] | None:
    """A measurement run's models as `measure` wrote them, or None when it was not measured."""
    p = _run_path(corpus, run)
    return json.loads(p.read_text())["models"] if p.exists() else None


def _runs(corpus: Path, runs: list[str], statistic: str = "median") -> dict[str, dict[str, float]]:
    """Each measurement run found: run -> model -> ms (`statistic`: median or p10 of the runs in each
    pass, the median over the passes; or min, the fastest run)."""
    found = {r: _read_run(corpus, r) for r in runs}
    got = {r: {n: float(_pass_statistics(m)[statistic]) for n, m in models.items()}
           for r, models in found.items() if models is not None}
    for r, ms in got.items():
        if any(np.isnan(v) for v in ms.values()):
            raise click.UsageError(f"run {r} ({_run_path(corpus, r)}) has no {statistic} for some models: it was "
                                   "measured before `measure` recorded each model's fastest run; measure it again, "
                                   "or score against --statistic median")
    return got


def _qdq_residuals(paths: list[str], kernels: list[int], y: np.ndarray, pred: np.ndarray) -> dict:
    """Do the Q/DQ boundaries of a quantized model cost time that its kernels' int8 table times
    miss? Each model's activation Q/DQ nodes (predictors.quantized.QuantizationInfo) against the
    predictor's miss: the Spearman correlation of the relative error with Q/DQ nodes per kernel,
    and the least-squares ms per Q/DQ node of measured - predicted (a boundary cost of its own
    would show as a positive slope and a negative correlation)."""
    import onnx
    from scipy.stats import spearmanr

    from predictors.quantized import dequantize_graph
    q = []
    for p in paths:
        info = dequantize_graph(onnx.load(p))[1]
        q.append(info.qdq_nodes if info else 0)
    qa, per_kernel = np.array(q, float), np.array(q, float) / np.maximum(np.array(kernels, float), 1)
    err = pred / y - 1
    miss = y - pred
    slope = float(qa @ miss / (qa @ qa)) if qa.any() else 0.0
    return {"qdq_nodes": q, "median_qdq_per_kernel": float(np.median(per_kernel)),
            "spearman_error_vs_qdq_per_kernel": float(spearmanr(err, per_kernel).statistic),
            "ms_per_qdq_node_of_the_miss": slope,
            "miss_share_explained": float(1 - np.sum((miss - slope * qa) ** 2) / np.sum(miss ** 2))}


@main.command()
@click.option("--corpus", required=True, type=click.Path(exists=True, file_okay=False),
              help="The fp32, batch-1 corpus (the reference form).")
@click.option("--other", required=True, type=click.Path(exists=True, file_okay=False),
              help="The same corpus in another form (bench_corpus derive): int8, or a batch above 1.")
@click.option("--runs", default="A,B", show_default=True, help="The reference corpus's measurement runs.")
@click.option("--other-runs", default=None, help="The other form's runs (default: --runs).")
@click.option("--json-out", type=click.Path(), help="Default <other>/bench/compare.json.")
def compare(corpus, other, runs, other_runs, json_out):
    """Does the deployment form change which model is fastest? The Spearman rank correlation of
    the measured fp32 batch-1 latency with the other form's (per image at a batch above 1) over
    the models measured in both, for the median of the runs and run by run (the i-th run of
    each); the per-model and per-family speed-up (reference ms per image / other ms per image)."""
    from scipy.stats import spearmanr
    corpus, other = Path(corpus), Path(other)
    form = _form(other)
    ref_runs, oth_runs = _runs(corpus, runs.split(",")), _runs(other, (other_runs or runs).split(","))
    if not ref_runs or not oth_runs:
        raise click.UsageError(f"measure both corpora first: runs {runs} of {corpus} ({len(ref_runs)} found), "
                               f"{other_runs or runs} of {other} ({len(oth_runs)} found)")
    ref, oth = _measured(corpus, list(ref_runs))[0], _measured(other, list(oth_runs))[0]
    fam = {r["name"]: r["family"] for r in _manifest(corpus)}
    names = sorted(set(ref) & set(oth))
    if len(names) < 3:
        raise click.UsageError(f"only {len(names)} models measured in both forms")
    b = form["batch"]
    speedup = {n: ref[n] / (oth[n] / b) for n in names}
    per_run = []
    for r_ref, r_oth in zip(ref_runs.values(), oth_runs.values()):
        common = [n for n in names if n in r_ref and n in r_oth]
        per_run.append(float(spearmanr([r_ref[n] for n in common], [r_oth[n] for n in common]).statistic))
    families: dict[str, list[float]] = {}
    for n in names:
        families.setdefault(fam.get(n, "?"), []).append(speedup[n])
    sp = np.array(list(speedup.values()))
    out = {"reference": str(corpus), "other": str(other), "form": form, "runs": list(ref_runs),
           "other_runs": list(oth_runs), "models": len(names), "families": len(families),
           "spearman": float(spearmanr([ref[n] for n in names], [oth[n] for n in names]).statistic),
           "spearman_per_run": per_run,
           "speedup": {"min": float(sp.min()), "median": float(np.median(sp)), "max": float(sp.max()),
                       "slower": int((sp < 1).sum())},
           "family_speedup": {f: float(np.median(v)) for f, v in sorted(families.items())},
           "per_model": {n: {"family": fam.get(n), "fp32_b1_ms": ref[n], "other_ms": oth[n],
                             "speedup_per_image": speedup[n]} for n in names}}
    what = f"{form['precision']}, batch {b}" + (" (per image)" if b > 1 else "")
    click.echo(f"{len(names)} models, {len(families)} families: Spearman fp32 batch 1 vs {what} {out['spearman']:.3f} "
               f"(run by run: {', '.join(f'{v:.3f}' for v in per_run)})")
    click.echo(f"speed-up per image: {sp.min():.2f}x to {sp.max():.2f}x, median {np.median(sp):.2f}x; "
               f"{out['speedup']['slower']} models slower")
    for f, v in out["family_speedup"].items():
        click.echo(f"  {f:20s} {v:5.2f}x")
    path = Path(json_out) if json_out else _bench_dir(other) / "compare.json"
    path.write_text(json.dumps(out, indent=1))
    click.echo(f"wrote {path}")


def _kind_report(base, inputs: list, y: np.ndarray, corpus: Path, names: list[str]) -> dict:
    """Where the kernel sum's error comes from, per kernel kind: the kind's share of the kernel sum, the
    share of its time on kernels outside the table's range for the kind, and its in-sample scale
    (measured ms ~ sum over kinds of w_kind x the kind's kernel sum, non-negative, relative least
    squares) divided by the common scale: a kind whose kernel models misfit real networks stands
    out as far from 1. With `kernels` run: per kind, the in-context time (onnxruntime's profiler)
    over the predicted time of the same kernels, median and share within ±10%."""
    import math

    from scipy.optimize import nnls

    from predictors import features as F
    from predictors.reliability import extrapolation
    kinds = sorted({k.spec.kind for det, *_ in inputs for k in det.kernels})
    K, X, C = (np.zeros((len(inputs), len(kinds))) for _ in range(3))
    fallback = np.zeros(len(inputs))
    for i, (det, (ms, _, _), unknown, _, _) in enumerate(inputs):
        for k, m in zip(det.kernels, ms):
            j = kinds.index(k.spec.kind)
            K[i, j] += m
            C[i, j] += 1
            st = F.spec_stats(k.spec, base.batch)
            if extrapolation(math.log(max(st[0], 1.0)), math.log(max(st[2], 1.0)),
                             base.kernel_ranges.get(k.spec.kind)) > 0:
                X[i, j] += m
        fallback[i] = sum(u["estimate_ms"] for u in unknown)
    total = K.sum(1) + fallback
    common = float(np.median(y / total))
    w, _ = nnls(np.column_stack([K, fallback]) / y[:, None], np.ones(len(y)))
    fit = np.column_stack([K, fallback]) @ w
    out: dict = {"common_scale": common, "fallback_share_mean": float(np.mean(fallback / total)),
                 "fallback_share_max": float(np.max(fallback / total)),
                 "per_kind_scale_fit": _stats(y, fit), "one_scale_fit": _stats(y, total * common), "kinds": {}}
    ctx_path = _bench_dir(corpus) / "kernels_in_context.json"
    in_ctx = json.loads(ctx_path.read_text())["models"] if ctx_path.exists() else {}
    for j, kind in enumerate(kinds):
        used = C[:, j] > 0
        out["kinds"][kind] = {"models": int(used.sum()), "kernels": int(C[:, j].sum()),
                              "share_mean": float(np.mean(K[:, j] / total)),
                              "share_max": float(np.max(K[:, j] / total)),
                              "extrapolated_share": float(X[:, j].sum() / max(K[:, j].sum(), 1e-12)),
                              "scale_vs_common": float(w[j] / common) if used.sum() >= 3 else None}
    if in_ctx:  # predicted vs in-context per kernel (the same detection: kernels in the same order)
        ratios: dict[str, list[float]] = {}
        for (det, (ms, _, _), *_), n in zip(inputs, names):
            got = in_ctx.get(n, {}).get("kernels", [])
            if len(got) != len(det.kernels):
                continue
            for k, m, g in zip(det.kernels, ms, got):
                if g["ms"] > 0 and m > 0:
                    ratios.setdefault(k.spec.kind, []).append(g["ms"] / m)
        for kind, rs in ratios.items():
            a = np.array(rs)
            out["kinds"].setdefault(kind, {}).update(
                in_context_over_predicted=float(np.median(a)), in_context_n=int(len(a)),
                in_context_within10_of_median=float(np.mean(np.abs(a / np.median(a) - 1) <= 0.10)))
    return out


@main.command()
@click.option("--corpus", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--table", "tables", multiple=True, type=click.Path(exists=True),
              help="The table of this machine the predictor is trained on (repeat to merge).")
@click.option("--shipped", type=click.Path(exists=True), help="A shipped predictor to report as it is.")
@click.option("--calibrated", type=click.Path(), default=None,
              help="A predictor calibrated on this machine (`train-predictor --calibrate`) to report as it is "
                   "(default <corpus>/bench/calibrated.lgb when it exists).")
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
@click.option("--graph-candidates", default=None,
              help="Comma-separated GRAPH_CANDIDATES (predictors/corrections.py) the graph correction is chosen "
                   "from (default: all that --graph-cv allows); e.g. the closed-form ones make --graph-cv family "
                   "affordable over 49 families.")
@click.option("--in-network/--no-in-network", default=True, show_default=True,
              help="Fit the in-network correction per kernel kind on the --table's blocks and networks (with "
                   "--kernels-from too, replacing the file's); --no-in-network: the kernels as measured alone.")
@click.option("--statistic", type=click.Choice(["median", "p10", "min"]), default="median", show_default=True,
              help="The ground truth's statistic: the median over passes of each pass's median or p10, or the "
                   "fastest run of all passes (min: on a VM that switches speed levels, the statistic that repeats; "
                   "`repeat` shows which does). Tables hold medians: a level between the two is the graph "
                   "correction's to learn.")
@click.option("--json-out", type=click.Path(), help="Where to write the report (default <corpus>/bench/report.json).")
def evaluate(corpus, tables, shipped, calibrated, runs, network_weight, graph_cv, graph_ensemble, kernels_from, graph_candidates,
             in_network, statistic, json_out):
    """Predict every corpus model and report accuracy, each family held out in turn."""
    from predictors import Predictor
    corpus = Path(corpus)
    rows = _manifest(corpus)
    truth, repro = _measured(corpus, runs.split(","), statistic)
    rows = [r for r in rows if r["name"] in truth]
    names = [r["name"] for r in rows]
    fam = np.array([r["family"] for r in rows])
    paths = [str(corpus / r["onnx"]) for r in rows]
    y = np.array([truth[n] for n in names])
    report: dict = {"models": len(rows), "families": len(set(fam)), "form": _form(corpus), "reproducibility": repro,
                    "rows": {}, "settings": {"runs": runs, "statistic": statistic, "network_weight": network_weight, "graph_cv": graph_cv,
                                             "graph_ensemble": graph_ensemble, "graph_candidates": graph_candidates,
                                             "in_network": in_network}}
    click.echo(f"corpus: {len(rows)} models in {len(set(fam))} families; ground truth = each model's {statistic}, the median over runs {runs}")
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
    cal = Path(calibrated) if calibrated else _bench_dir(corpus) / "calibrated.lgb"
    if calibrated and not cal.exists():
        raise click.BadParameter(f"{cal} does not exist", param_hint="--calibrated")
    if cal.exists():
        p = Predictor.load(cal)
        res = [p.predict(x) for x in paths]
        report["rows"]["calibrated"] = _stats(y, [r.latency_ms for r in res], [r.low_ms for r in res],
                                              [r.high_ms for r in res])
        c = p.training.get("calibration", {})
        report["calibration"] = {k: c.get(k) for k in ("base", "networks", "rounds", "seconds_per_pass", "seconds",
                                                        "network_set")}
        report["calibrated"] = str(cal)
        for n, r in zip(names, res):
            per_model[n]["calibrated_ms"] = r.latency_ms

    if tables:
        t0 = time.time()
        if kernels_from:
            base = Predictor.load(kernels_from)
            base.graph_cv, base.real_network_weight, base.adapters = graph_cv, network_weight, []
            base.graph_candidates = graph_candidates.split(",") if graph_candidates else None
            report["kernels_from"] = str(kernels_from)
            base.in_network = None
            if in_network:  # from the table's blocks and networks, as `fit` does (never from the corpus)
                df = base._table(list(tables), None)[0]
                base.in_network_from_table(*base.block_rows(df), base.network_rows(df))
        else:
            base = Predictor(graph_cv=graph_cv, real_network_weight=network_weight,
                             graph_candidates=graph_candidates.split(",") if graph_candidates else None,
                             in_network=in_network)
            base.fit(list(tables))
            click.echo(f"trained on {', '.join(tables)} in {time.time() - t0:.0f}s", err=True)
        if base.in_network is not None:
            report["in_network"] = base.in_network.to_dict()
            click.echo("in-network factors per kernel kind (table blocks and networks): " + ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(base.in_network.scale.items()) if abs(v - 1) >= 0.02), err=True)
        _check_form(corpus, base.target.get("precision", "fp32"), base.batch,
                    f"the table's target {base.target.get('name')}")
        # Detection and kernel predictions depend on the kernel models only, which every refit of the
        # graph correction below shares: compute each model's inputs once.
        inputs = {x: base.onnx_inputs(x) for x in paths}
        sums = np.vstack([inputs[x][3] for x in paths])
        fallback = sums[:, F.ADDITIVE.index("ms_unknown")] / np.maximum(sums[:, 0], 1e-12)
        ksum = base._base(sums)
        report["rows"]["kernel_sum"] = _stats(y, ksum)
        # (c') the kernel sum times one factor, the median measured/sum of the other families
        scaled = np.array([ksum[i] * np.median(y[fam != fam[i]] / ksum[fam != fam[i]]) for i in range(len(y))])
        report["rows"]["kernel_sum_scaled_family_out"] = _stats(y, scaled)
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
        if base.batch > 1:  # images/s of back-to-back runs at the batch: batch x 1000 / ms
            report["rows"]["table_family_out_throughput"] = _stats(base.batch * 1000 / y, base.batch * 1000 / pred_a)
        reliable = ~unrel
        if reliable.any() and unrel.any():
            report["rows"]["table_family_out_reliable_only"] = _stats(y[reliable], pred_a[reliable], lo_a[reliable],
                                                                      hi_a[reliable])
        report["table"] = list(tables)
        report["kinds"] = _kind_report(base, [inputs[x] for x in paths], y, corpus, names)
        for i, n in enumerate(names):
            per_model[n].update(predicted_ms=float(pred_a[i]), low_ms=float(lo_a[i]), high_ms=float(hi_a[i]),
                                kernel_sum_ms=float(ksum[i]), fallback_share=float(fallback[i]),
                                unreliable=bool(unrel[i]))
        fam_rows = {}
        for f in sorted(set(fam)):
            m = fam == f
            fam_rows[f] = _stats(y[m], pred_a[m], lo_a[m], hi_a[m])
        report["per_family"] = fam_rows
        if _form(corpus)["precision"] == "int8":
            report["qdq_boundaries"] = _qdq_residuals(paths, [len(inputs[x][0].specs()) for x in paths], y, pred_a)
            for n, q in zip(names, report["qdq_boundaries"].pop("qdq_nodes")):
                per_model[n]["qdq_nodes"] = q
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
              "kernel_sum_scaled_family_out": "(c') kernel sum x one factor, family held out",
              "table_family_out_throughput": "    (a) as images/s at the table's batch",
              "table_family_out_reliable_only": "    (a) on models not marked unreliable",
              "shipped_as_is": "shipped predictor as it is", "calibrated": "calibrated (another machine + calibration)"}
    for k, lab in labels.items():
        if k in report["rows"]:
            click.echo(_fmt(lab, report["rows"][k]))
    if "kinds" in report:
        kr = report["kinds"]
        click.echo(f"per kernel kind (c): common scale measured/kernel sum {kr['common_scale']:.3f}; fallback share "
                   f"mean {kr['fallback_share_mean']:.2%}, max {kr['fallback_share_max']:.2%}; one scale "
                   f"{kr['one_scale_fit']['within10']:.1%} within ±10%, a scale per kind (in-sample) "
                   f"{kr['per_kind_scale_fit']['within10']:.1%}")
        for kind, s in sorted(kr["kinds"].items(), key=lambda kv: -kv[1].get("share_mean", 0)):
            sc = s.get("scale_vs_common")
            ic = s.get("in_context_over_predicted")
            click.echo(f"  {kind:16s} in {s.get('models', 0):3d} models, share mean {s.get('share_mean', 0):6.1%} "
                       f"max {s.get('share_max', 0):6.1%}, outside the table's range {s.get('extrapolated_share', 0):6.1%}"
                       + (f", scale/common {sc:5.2f}" if sc is not None else "")
                       + (f", in-context/predicted {ic:5.2f} (n={s['in_context_n']})" if ic is not None else ""))
    if "per_family" in report:
        click.echo("per family (a):")
        for f, s in report["per_family"].items():
            click.echo(f"  {f:20s} {s['within10']:6.1%} within ±10%, median |err| {s['median_abs_err']:6.1%} (n={s['n']})")
    if "qdq_boundaries" in report:
        q = report["qdq_boundaries"]
        click.echo(f"Q/DQ boundaries: median {q['median_qdq_per_kernel']:.2f} per kernel; Spearman(error, Q/DQ per "
                   f"kernel) {q['spearman_error_vs_qdq_per_kernel']:+.2f}; the miss fits "
                   f"{q['ms_per_qdq_node_of_the_miss']:+.4f} ms per Q/DQ node ({q['miss_share_explained']:.0%} of it)")
    out = Path(json_out) if json_out else _bench_dir(corpus) / "report.json"
    out.write_text(json.dumps(report, indent=1))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
