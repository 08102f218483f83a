"""Benchmark: does the deployment form (int8, batch 32) change which architecture is fastest?

    python -m scripts.bench_deploy prepare --out /tmp/deploy             # quantize + re-batch (shared lock)
    flock -x /work/cpu.lock taskset -c 1 python -m scripts.bench_deploy measure --out /tmp/deploy --run 1
    python -m scripts.bench_deploy report --out /tmp/deploy              # tables for docs/benchmarks.md

Corpus: the real-architecture corpus (`--corpus DIR` with a manifest.csv: name, family, onnx),
at most `--per-family` models of each family and at most `--max-mb` of ONNX each, plus the
architectures named in issue 16; without a corpus, the reference architectures of
`scripts.reference_models`.

`prepare` quantizes every model with `profiling.quantize.quantize` (onnxruntime's static QDQ
quantizer, per-channel weights, random calibration: the function an int8 target's runner uses)
and lists the models onnxruntime cannot quantize; it also makes a dynamic-batch copy of each
model for batch 32 (a Reshape whose constant shape starts with the exported batch 1 gets 0,
"copy the input's batch"), kept only when it runs at batch 2 with an output batch of 2.

`measure` times, in chunks of `--chunk` models, the fp32 model at batch 1, its int8 form at
batch 1 and the fp32 model at batch 32 on onnxruntime's CPU EP with one thread, interleaved
(`profiling.interleave.measure_interleaved`: round-robin passes, the median of the pass
medians), through the profiler's device runner. Run it twice (`--run 1`, `--run 2`) for the
reproducibility figures.

`report` prints per-model latencies, the int8 speed-up and the batch-32 throughput gain, their
per-family medians, the Spearman rank correlations fp32 vs int8 and batch 1 vs batch 32, and the
run-to-run agreement.
"""
from __future__ import annotations

import csv
import json
import statistics
import sys
import time
from pathlib import Path

import click
import numpy as np
import onnx

ISSUE_MODELS = ("resnet18", "resnet50", "dla34", "repvgg_a0", "regnety_002", "regnety_008", "mobilenetv3_large_100",
                "mobilenetv2_100", "ghostnet_100", "efficientnet_b0")
FORMS = ("fp32_b1", "int8_b1", "fp32_b32")


def select(corpus: Path, per_family: int, max_mb: float) -> list[dict]:
    rows = list(csv.DictReader(open(corpus / "manifest.csv")))
    for r in rows:
        r["path"] = str(corpus / r["onnx"])
        r["mb"] = Path(r["path"]).stat().st_size / 1e6
    chosen, count = [], {}
    for r in sorted(rows, key=lambda r: (r["name"] not in ISSUE_MODELS, r["mb"])):
        if r["name"] in ISSUE_MODELS or (r["mb"] <= max_mb and count.get(r["family"], 0) < per_family):
            chosen.append(r)
            count[r["family"]] = count.get(r["family"], 0) + 1
    return sorted(chosen, key=lambda r: (r["family"], r["name"]))


def rebatched(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose batch axis is dynamic: inputs/outputs get a symbolic first dim, inferred shapes
    are dropped, and Reshape shapes that hard-code the exported batch 1 copy the input's batch."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for v in list(m.graph.input) + list(m.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "N"
    del m.graph.value_info[:]
    inits = {t.name: t for t in m.graph.initializer}
    consts = {n.output[0]: n for n in m.graph.node if n.op_type == "Constant"}
    for n in m.graph.node:
        if n.op_type != "Reshape" or len(n.input) < 2:
            continue
        name = n.input[1]
        if name in inits:
            t = inits[name]
        elif name in consts:
            t = next((a.t for a in consts[name].attribute if a.name == "value"), None)
        else:
            continue
        if t is None:
            continue
        shape = onnx.numpy_helper.to_array(t).copy()
        if shape.ndim == 1 and len(shape) >= 2 and shape[0] == 1:
            shape[0] = 0
            t.CopyFrom(onnx.numpy_helper.from_array(shape.astype(np.int64), t.name))
    return m


def _runs_at(model: onnx.ModelProto, batch: int) -> bool:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 4
    try:
        s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feeds = {}
        for i in s.get_inputs():
            shape = [batch if not isinstance(d, int) else d for d in i.shape]
            feeds[i.name] = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        out = s.run(None, feeds)
        return all(o.shape[0] == batch for o in out if getattr(o, "ndim", 0))
    except Exception:
        return False


@click.group()
def main():
    """Deployment-form benchmark (issue 16); see the module docstring."""


@main.command()
@click.option("--corpus", type=click.Path(file_okay=False), default="/work/corpus", show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--per-family", type=int, default=1, show_default=True)
@click.option("--max-mb", type=float, default=40.0, show_default=True)
@click.option("--activations", type=click.Choice(["uint8", "int8"]), default="uint8", show_default=True,
              help="uint8: U8S8 (onnxruntime's x86 fast path, the int8 target's form); int8: the quantizer's "
                   "default S8S8.")
@click.option("--no-b32", is_flag=True, help="Skip the batch-32 copies.")
def prepare(corpus, out, per_family, max_mb, activations, no_b32):
    """Quantize and re-batch the selected models (CPU-heavy: shared lock)."""
    from profiling.errors import ProfilingError
    from profiling.quantize import quantize
    out = Path(out)
    (out / "int8").mkdir(parents=True, exist_ok=True)
    (out / "b32").mkdir(parents=True, exist_ok=True)
    models = select(Path(corpus), per_family, max_mb)
    done = json.loads((out / "prepare.json").read_text()) if (out / "prepare.json").exists() else {}
    for i, r in enumerate(models):
        if r["name"] in done:
            continue
        t0 = time.time()
        m = onnx.load(r["path"])
        entry = {"family": r["family"], "fp32": r["path"], "mb": r["mb"]}
        try:
            q = quantize(m, batch=1, activations=activations)
            onnx.save(q, str(out / "int8" / f"{r['name']}.onnx"))
            entry["int8"] = str(out / "int8" / f"{r['name']}.onnx")
        except ProfilingError as e:
            entry["int8_error"] = str(e)[:300]
        b = rebatched(m)
        if no_b32:
            entry["b32_error"] = "not prepared (--no-b32)"
        elif _runs_at(b, 2):
            onnx.save(b, str(out / "b32" / f"{r['name']}.onnx"))
            entry["b32"] = str(out / "b32" / f"{r['name']}.onnx")
        else:
            entry["b32_error"] = "does not run at batch 2 after re-batching (a shape fixed at export)"
        entry["prepare_s"] = round(time.time() - t0, 1)
        done[r["name"]] = entry
        (out / "prepare.json").write_text(json.dumps(done, indent=1))
        print(f"[{i + 1}/{len(models)}] {r['name']} ({r['family']}): int8 {'ok' if 'int8' in entry else 'FAILED'}, "
              f"b32 {'ok' if 'b32' in entry else 'no'} ({entry['prepare_s']} s)", flush=True)


@main.command()
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--run", "run_id", type=int, required=True)
@click.option("--passes", type=int, default=4, show_default=True)
@click.option("--slice-s", type=float, default=0.25, show_default=True)
@click.option("--chunk", type=int, default=8, show_default=True)
@click.option("--only", default=None, help="Comma-separated model names (default: all prepared).")
@click.option("--forms", default=",".join(FORMS), show_default=True, help="Which forms to measure.")
def measure(out, run_id, passes, slice_s, chunk, only, forms):
    """Measure fp32-b1, int8-b1 and fp32-b32 interleaved (take the EXCLUSIVE cpu lock around this)."""
    from profiling.interleave import measure_interleaved
    from profiling.measure import connect, model_job
    from profiling.targets import get_target
    out = Path(out)
    prep = json.loads((out / "prepare.json").read_text())
    names = [n for n in prep if not only or n in only.split(",")]
    t_b1, t_b32 = get_target("local-cpu"), get_target("local-cpu-b32")
    res_path = out / f"run{run_id}.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    names = [n for n in names if n not in results]
    conn = connect(t_b1)
    t0 = time.time()
    try:
        for c in range(0, len(names), chunk):
            part = names[c:c + chunk]
            jobs, keys = [], []
            for n in part:
                e = prep[n]
                jobs.append(dict(model_job(e["fp32"], t_b1, conn.facts or {}), id=f"{n}|fp32_b1"))
                keys.append((n, "fp32_b1"))
                if "int8" in e and "int8_b1" in forms:
                    jobs.append(dict(model_job(e["int8"], t_b1, conn.facts or {}), id=f"{n}|int8_b1"))
                    keys.append((n, "int8_b1"))
                if "b32" in e and "fp32_b32" in forms:
                    jobs.append(dict(model_job(e["b32"], t_b32, conn.facts or {}), id=f"{n}|fp32_b32"))
                    keys.append((n, "fp32_b32"))
            answers = measure_interleaved(conn, jobs, passes=passes, slice_s=slice_s)
            for (n, form), ans in zip(keys, answers):
                r = results.setdefault(n, {"family": prep[n]["family"]})
                if ans.get("ok"):
                    r[form] = ans["stats"]["median_ms"]
                else:
                    r[form + "_error"] = str(ans.get("error"))[:300]
            res_path.write_text(json.dumps(results, indent=1))
            print(f"chunk {c // chunk + 1}: {', '.join(part)} ({time.time() - t0:.0f} s)", flush=True)
    finally:
        conn.close()


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


@main.command()
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--json", "as_json", is_flag=True)
def report(out, as_json):
    """Print the benchmark's tables (markdown) from the runs measured."""
    out = Path(out)
    prep = json.loads((out / "prepare.json").read_text())
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("run*.json"))]
    if not runs:
        sys.exit("no run*.json: run `measure` first")
    names = [n for n in prep if all(n in r for r in runs)]

    def val(n, form):
        vs = [r[n].get(form) for r in runs]
        return statistics.mean(vs) if all(v is not None for v in vs) else None

    lines = ["| model | family | fp32 b1 ms | int8 b1 ms | int8 speed-up | fp32 b32 ms | b32 img/s | b1 img/s | b32 gain |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    fam_q, fam_b = {}, {}
    for n in names:
        f32, i8, b32 = val(n, "fp32_b1"), val(n, "int8_b1"), val(n, "fp32_b32")
        sq = f32 / i8 if f32 and i8 else None
        gain = (32000 / b32) / (1000 / f32) if f32 and b32 else None
        if sq:
            fam_q.setdefault(prep[n]["family"], []).append(sq)
        if gain:
            fam_b.setdefault(prep[n]["family"], []).append(gain)
        fmt = lambda v, p=2: f"{v:.{p}f}" if v else "–"
        lines.append(f"| {n} | {prep[n]['family']} | {fmt(f32)} | {fmt(i8)} | {fmt(sq)}x | {fmt(b32, 1)} | "
                     f"{fmt(32000 / b32 if b32 else None, 1)} | {fmt(1000 / f32 if f32 else None, 1)} | {fmt(gain)}x |")
    q_pairs = [(val(n, "fp32_b1"), val(n, "int8_b1")) for n in names if val(n, "fp32_b1") and val(n, "int8_b1")]
    b_pairs = [(val(n, "fp32_b1"), val(n, "fp32_b32") / 32) for n in names if val(n, "fp32_b1") and val(n, "fp32_b32")]
    summary = {"models": len(names), "quantized": len(q_pairs),
               "not_quantized": {n: e["int8_error"] for n, e in prep.items() if "int8_error" in e},
               "no_b32": sorted(n for n, e in prep.items() if "b32_error" in e),
               "spearman_fp32_int8": _spearman(*zip(*q_pairs)) if len(q_pairs) > 2 else None,
               "spearman_b1_b32_per_image": _spearman(*zip(*b_pairs)) if len(b_pairs) > 2 else None,
               "family_int8_speedup": {f: statistics.median(v) for f, v in sorted(fam_q.items())},
               "family_b32_gain": {f: statistics.median(v) for f, v in sorted(fam_b.items())},
               "runs": len(runs)}
    if len(runs) >= 2:
        agree = {}
        for form in FORMS:
            ratios = [runs[1][n][form] / runs[0][n][form] for n in names
                      if runs[0][n].get(form) and runs[1][n].get(form)]
            if ratios:
                agree[form] = {"n": len(ratios), "within_5pct": float(np.mean([abs(r - 1) <= 0.05 for r in ratios])),
                               "within_10pct": float(np.mean([abs(r - 1) <= 0.10 for r in ratios])),
                               "median_abs_pct": float(np.median([abs(r - 1) * 100 for r in ratios]))}
        summary["run_agreement"] = agree
        for form, pairs in (("spearman_fp32_int8", "int8_b1"), ("spearman_b1_b32_per_image", "fp32_b32")):
            per_run = []
            for r in runs:
                xs = [(r[n]["fp32_b1"], r[n][pairs]) for n in names if r[n].get("fp32_b1") and r[n].get(pairs)]
                per_run.append(_spearman(*zip(*xs)) if len(xs) > 2 else None)
            summary[form + "_per_run"] = per_run
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo("\n".join(lines))
    click.echo("\n" + json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
