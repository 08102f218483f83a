"""Benchmark the latency predictor (docs/predictor.md): held-out families, speed, NB201 few-shot.

    python -m scripts.bench_predictor --table TABLE.parquet [--skip-families] [--cache /tmp/hwnas-bench]

Every figure is printed. The reference models are measured on the predictor's target with
`profiling.measure.measure_models` (the profiler's runner, session settings and network stopping
rule) and cached in --cache.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np


def _fmt(m):
    return f"{m['within10']:6.1%} within ±10%  MAPE {m['mape']:6.1%}  Spearman {m['spearman']:.3f}"


def _result_file(onnx_path: Path) -> Path:
    """Where a measured model's figures are cached: NAME.json beside NAME.onnx, or DIR.json for
    an anchor's DIR/model.onnx."""
    return onnx_path.parent.with_suffix(".json") if onnx_path.name == "model.onnx" else onnx_path.with_suffix(".json")


def _anchor_paths(df, cache: Path, n: int, seed: int = 0) -> list[tuple[Path, float]]:
    """`n` of the table's own networks (a seeded draw from the table rows `df`) as ONNX files
    under cache/anchors, each with the latency the table stored for it."""
    from profiling.builders import materialize
    from profiling.networks import build_network
    nets = df[df["category"] == "network"]
    pick = nets.sample(min(n, len(nets)), random_state=seed)
    out = []
    for r in pick.itertuples():
        d = cache / "anchors" / str(r.config_id)
        if not (d / "model.onnx").exists():
            d.mkdir(parents=True, exist_ok=True)
            materialize(build_network(json.loads(r.network_spec)), str(d))
        out.append((d / "model.onnx", float(r.median_ms)))
    return out


def reference_networks(p, cache: Path, only: tuple = (), rounds: int = 3, table=None, anchors: int = 40) -> \
        tuple[list[dict], float | None]:
    """Measure the reference architectures here (cached in `cache`; `rounds` round-robin passes,
    each model's median of them) and detect their kernels.

    With `table` (the table's rows), `anchors` of its own networks are measured in the same passes, and
    the second value is this session's speed against the table's: the median of measured /
    stored over them (1.03: the machine runs 3% slower than when the table was profiled).
    """
    import onnx
    from predictors.detect import detect_kernels, rules_for
    from profiling.measure import measure_models
    from profiling.onnx_stats import model_stats
    from scripts.reference_models import export, reference_models
    models = []
    for fam, members in reference_models().items():
        if only and fam not in only:
            continue
        for name, ctor, res in members:
            if not (cache / f"{name}.onnx").exists():
                export(ctor, res, str(cache / f"{name}.onnx"))
            models.append((fam, name))
    anchor = _anchor_paths(table, cache, anchors) if table is not None and anchors else []
    todo = [cache / f"{name}.onnx" for _, name in models] + [a for a, _ in anchor]
    missing = [t for t in todo if not _result_file(t).exists()]
    if missing:  # the profiler's own network measurement (runner, session settings, stopping rule)
        if len(missing) < len(todo):
            click.echo(f"  note: {len(todo) - len(missing)} of the {len(todo)} models were measured in an "
                       f"earlier run (cached in {cache}); the speed ratio assumes one session")
        for path, r in zip(missing, measure_models(missing, p.target_name, rounds=rounds)):
            _result_file(path).write_text(json.dumps({"median_ms": r.median_ms, "p10_ms": r.p10_ms,
                                                "p90_ms": r.p90_ms, "measured_at": time.time()}))
    speed = None
    if anchor:
        ratios = np.array([json.loads(_result_file(a).read_text())["median_ms"] / stored for a, stored in anchor])
        speed = float(np.median(ratios))
        click.echo(f"  machine speed against the table: {len(anchor)} of its networks measured with the "
                   f"references now take {speed:.3f}x their stored latency (p10-p90 "
                   f"{np.percentile(ratios, 10):.3f}-{np.percentile(ratios, 90):.3f})")
    rows = []
    for fam, name in models:
        onnx_path = cache / f"{name}.onnx"
        m = json.loads(_result_file(onnx_path).read_text())
        det = detect_kernels(str(onnx_path), p.batch, rules_for(p.target))
        rows.append({"family": fam, "name": name, "ms": m.get("median_ms", m.get("ms")), "m": m,
                     "onnx": str(onnx_path), "specs": det.specs(),
                     "unknown": sorted({u.op_type for u in det.unknown}),
                     "flops": model_stats(onnx.load(str(onnx_path), load_external_data=False)).flops})
    return rows, speed


def families_benchmark(p, table, refs: list[dict], weight: float, speed: float | None = None):
    """Hold out each reference family in turn (the issue's protocol), three predictors side by side.

    - FLOPs-only: a log-log line fitted on the other families;
    - kernel sum: the plain sum of kernel predictions (no graph model);
    - table only: the graph model fitted on the table's random networks alone (what
      `train-predictor --table T` ships without --networks); no reference model is seen;
    - table + other families: the graph model fitted on the table's networks plus the measured
      reference architectures of every other family (each weighing `weight`), as
      `train-predictor --table T --networks REF.csv` does, with the held-out family removed.
    The kernel models are the predictor's own (fitted on the table's kernels only).

    `speed` (measured / stored latency of the table's own networks, measured with the references):
    the references' latencies are also scored divided by it, i.e. at the speed the machine had when
    the table was profiled, which is what a predictor trained on that table predicts.
    """
    from predictors.numerics import metrics
    nets = p.network_rows(table)
    cand = [r["specs"] if not r["unknown"] else r["onnx"] for r in refs]
    fams = sorted({r["family"] for r in refs})
    fam_arr = np.array([r["family"] for r in refs])
    y = np.array([r["ms"] for r in refs])
    fl = np.log([r["flops"] for r in refs])
    res = {"flops": np.zeros(len(refs)), "sum": p._base(p.graph_inputs(cand)[0])}
    p.fit_graph([n["specs"] for n in nets], np.array([n["ms"] for n in nets]))
    res["table"] = p._finish(*p.graph_inputs(cand))[0]
    res["lofo"] = np.zeros(len(refs))
    choice = {}
    for fam in fams:
        test = fam_arr == fam
        a, b = np.polyfit(fl[~test], np.log(y[~test]), 1) if (~test).sum() >= 2 else (1.0, 0.0)
        res["flops"][test] = np.exp(b + a * fl[test])
        tr = np.flatnonzero(~test)
        p.fit_graph([n["specs"] for n in nets] + [cand[i] for i in tr],
                    np.concatenate([[n["ms"] for n in nets], y[tr]]),
                    weights=[1.0] * len(nets) + [weight] * len(tr))
        choice[fam] = p.training.get("graph_choice")
        res["lofo"][test] = p._finish(*p.graph_inputs([cand[i] for i in np.flatnonzero(test)]))[0]
    for i, r in enumerate(refs):
        m = r["m"]
        click.echo(f"  {r['name']:20s} measured {r['ms']:8.2f} ms (p10-p90 {m.get('p10_ms', r['ms']):.2f}-"
                   f"{m.get('p90_ms', r['ms']):.2f})  kernel sum {res['sum'][i]:8.2f}  table only {res['table'][i]:8.2f}"
                   f"  +other families {res['lofo'][i]:8.2f} ({res['lofo'][i] / r['ms'] - 1:+.0%})  "
                   f"{len(r['specs'])} kernels, unknown ops: {', '.join(r['unknown']) or 'none'}")
    click.echo(f"  {'family':14s} {'n':>3s}  {'FLOPs-only':>10s} {'kernel sum':>10s} {'table only':>10s} "
               f"{'+other fam':>10s}   (share within ±10%; graph model with the family held out)")
    out = {}
    for fam in [*fams, "overall"]:
        sel = np.ones(len(refs), bool) if fam == "overall" else fam_arr == fam
        w = {k: float(np.mean(np.abs(v[sel] / y[sel] - 1) <= 0.10)) for k, v in res.items()}
        out[fam] = w
        click.echo(f"  {fam:14s} {sel.sum():3d}  {w['flops']:10.1%} {w['sum']:10.1%} {w['table']:10.1%} "
                   f"{w['lofo']:10.1%}  {choice.get(fam) or ''}")
    labels = (("flops", "FLOPs-only fit (fitted on the other families)"), ("sum", "plain sum of kernel predictions"),
              ("table", "full predictor, table networks only"),
              ("lofo", f"full predictor, + other families' networks (weight {weight:g})"))
    for k, label in labels:
        click.echo(f"  {label:58s} {_fmt(metrics(y, res[k]))}")
    if speed:
        yt = y / speed
        click.echo(f"  at the table's speed (measured / {speed:.3f}, the anchors' ratio):")
        for k, label in labels:
            click.echo(f"  {label:58s} {_fmt(metrics(yt, res[k]))}")
        miss = [f"{r['name']} {res['lofo'][i] / yt[i] - 1:+.0%}" for i, r in enumerate(refs)
                if abs(res["lofo"][i] / yt[i] - 1) > 0.10]
        click.echo(f"  outside ±10% (+other families, table speed): {', '.join(miss) or 'none'}")
    return out


def nb201_views(space, arch):
    """(unpruned kernel specs, pruned kernel specs, cell-structure features) of one NB201 cell.

    The space lists the pruned view (edges off every input->output path removed, as a runtime
    that prunes dead code executes it); the unpruned view keeps every non-`none` edge (as a
    runtime that executes the graph as written). Devices differ in which one they run. The
    structure features are the non-`none` in-degrees of nodes 1-3 in both views (the joins).
    """
    from search.spaces.base import k_act, k_add, k_conv, k_pool
    from search.spaces.nb201 import EDGES, _cell_specs, cell_plan
    arch = tuple(arch)
    op = dict(zip(EDGES, arch))
    f, C, N = space._fixed, space.C, space.N
    h1 = space.resolution
    h2 = (h1 - 1) // 2 + 1
    h3 = (h2 - 1) // 2 + 1

    def raw_cell(c, h):
        out = []
        for j in (1, 2, 3):
            ins = [(i, op[(j, i)]) for i in range(j) if op[(j, i)] != "none"]
            for i, o in ins:
                if o in ("nor_conv_1x1", "nor_conv_3x3"):
                    out += [k_act("relu", c, h, h), k_conv(c, c, h, h, 1 if o == "nor_conv_1x1" else 3, act="none")]
                elif o == "avg_pool_3x3":
                    out.append(k_pool("avg", c, h, h, 3, 1))
            out += [k_add(c, h, h)] * max(0, len(ins) - 1)
        return out

    def net(cell):
        return list(f["stem"]) + cell(C, h1) * N + list(f["red1"]) + cell(2 * C, h2) * N + list(f["red2"]) \
            + cell(4 * C, h3) * N + list(f["head"])

    plan = cell_plan(arch)
    live = {j: len(ins) for j, ins in plan.nodes}
    struct = [sum(1 for i in range(j) if op[(j, i)] != "none") for j in (1, 2, 3)] + \
             [live.get(j, 0) for j in (1, 2, 3)] + [0.0 if plan.zero else 1.0]
    return net(raw_cell), net(lambda c, h: list(_cell_specs(arch, c, h))), struct


def nb201_benchmark(p, shots: int = 20, seeds: int = 5):
    """Few-shot transfer between the NB201 devices of HELP (20 measured cells of the target).

    The source device is fitted on all its cells; each target gets `shots` random cells, `seeds`
    draws. Features (the shared space): our local-cpu predictor's adapter features (kernel ms and
    counts per group, joins) of the unpruned and the pruned view of each cell, plus the cell's
    in-degrees; `predictors.adapt.fit_adapter` is the method of `train-predictor --adapt-from`.
    """
    import pandas as pd
    from scipy.stats import spearmanr
    from search.spaces import get_space
    from predictors.adapt import adapter_features, fit_adapter, predict_adapter
    csv = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nb201" / "nb201_cifar10.csv"
    if not csv.exists():
        click.echo(f"  skipped: {csv} is absent")
        return
    df = pd.read_csv(csv)
    space = get_space("nb201")
    t0 = time.time()
    views = [nb201_views(space, space.from_string(a)) for a in df["arch"]]
    raw_s, _ = p._graph_inputs([v[0] for v in views])
    pr_s, pk = p._graph_inputs([v[1] for v in views])
    local, _, _ = p._finish(pr_s, pk)
    struct = np.array([v[2] for v in views], float)
    variants = {"kernel features (both views)": np.hstack([adapter_features(raw_s), adapter_features(pr_s), struct[:, -1:]]),
                "kernel features + in-degrees": np.hstack([adapter_features(raw_s), adapter_features(pr_s), struct])}
    click.echo(f"  two views of {len(df)} cells predicted on local-cpu in {time.time() - t0:.1f}s")
    devices = [c[:-3] for c in df.columns if c.endswith("_ms")]
    summary = {}
    for vname, Phi in variants.items():
        click.echo(f"  -- {vname}: {Phi.shape[1]} features")
        allsp, allacc = [], []
        for source in devices:
            ys = df[f"{source}_ms"].to_numpy(float)
            oks = np.where(ys > 0)[0]
            # the source device, learnt on all its cells with the same method and a wide ridge grid
            a_src = fit_adapter(local[oks], None, ys[oks], source, Phi=Phi[oks], top_k=1)
            src = predict_adapter(a_src, local, Phi)
            sp_src, acc_src = [], []
            line = []
            for target in devices:
                if target == source:
                    continue
                yt = df[f"{target}_ms"].to_numpy(float)
                okt = np.where(yt > 0)[0]
                sps, accs = [], []
                for seed in range(seeds):
                    few = np.random.default_rng(seed).choice(okt, shots, replace=False)
                    a_t = fit_adapter(src[few], None, yt[few], target, Phi=Phi[few])
                    rest = np.setdiff1d(okt, few)
                    pred = predict_adapter(a_t, src[rest], Phi[rest])
                    sps.append(spearmanr(yt[rest], pred).correlation)
                    accs.append(float(np.mean(np.abs(pred / yt[rest] - 1) <= 0.1)))
                sp_src.append(np.mean(sps))
                acc_src.append(np.mean(accs))
                line.append(f"{target} {np.mean(sps):.3f}±{np.std(sps):.3f} ({np.mean(accs):.0%})")
            allsp += sp_src
            allacc += acc_src
            click.echo(f"  {source:8s} -> mean Spearman {np.mean(sp_src):.3f}, ±10% {np.mean(acc_src):5.1%} | "
                       + ", ".join(line))
        summary[vname] = (float(np.mean(allsp)), float(np.mean(allacc)))
        click.echo(f"  mean over {len(allsp)} pairs x {seeds} draws: Spearman {np.mean(allsp):.3f}, "
                   f"within ±10% {np.mean(allacc):.1%} (HELP, 10 samples: 0.93)")
    return summary


@click.command()
@click.option("--table", "tables", multiple=True, required=True, type=click.Path(exists=True))
@click.option("--cache", default="/tmp/hwnas-bench", type=click.Path())
@click.option("--skip-families", is_flag=True, help="Skip measuring the reference architectures.")
@click.option("--families", "only", multiple=True, help="Only these reference families (repeat).")
@click.option("--skip-nb201", is_flag=True, help="Skip the NB201 few-shot adaptation benchmark.")
@click.option("--predictor", "pred_path", type=click.Path(), help="Reuse a predictor built on the table.")
@click.option("--write-networks", type=click.Path(), help="Write the measured reference networks here "
              "(a measured-networks CSV for train-predictor --networks).")
@click.option("--network-weight", "weight", default=5.0, show_default=True,
              help="Weight of a measured reference network in the held-out-family graph models.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1),
              help="Round-robin passes over the reference models (each model's median of its passes).")
@click.option("--anchors", default=40, show_default=True, type=click.IntRange(min=0),
              help="Table networks measured in the same passes as the references, for the machine's speed "
                   "against the table's (0: none).")
def main(tables, cache, skip_families, only, skip_nb201, pred_path, write_networks, weight, rounds, anchors):
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
    for kind, v in sorted(p.training.get("kernel_cv", {}).items()):
        click.echo(f"  kernel {kind:16s} {v['variant']:8s} CV {v['within10']:6.1%} within ±10%, MAPE {v['mape']:6.1%}"
                   f" (n={v['n']})")
    if "graph_choice" in p.training:
        click.echo(f"  graph correction: {p.training['graph_choice']} "
                   f"(selected by {p.training.get('graph_cv_method', 'random 5-fold')} CV on the table's networks)")
        cv = p.training.get("graph_cv", {})
        for c in sorted(cv, key=lambda c: cv[c]["mean_abs_log_err"])[:8]:
            click.echo(f"    {c:28s} CV mean |log err| {cv[c]['mean_abs_log_err']:.4f}  within ±10% {cv[c]['within10']:6.1%}")
        for c, per in p.training.get("graph_cv_per_family", {}).items():
            click.echo(f"    {c:28s} held-out family within ±10%: " + ", ".join(f"{f} {v:.0%}" for f, v in per.items()))
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
        from predictors.tables import load_tables
        table, _ = load_tables(list(tables))  # read once: the anchors and the held-out fits use it
        refs, speed = reference_networks(p, cache, tuple(only), rounds, table, anchors)
        if write_networks:
            from predictors.measured import write_networks_file
            write_networks_file(write_networks, [r["name"] for r in refs], [r["specs"] for r in refs],
                                [r["ms"] for r in refs], [r["family"] for r in refs], p.target_name,
                                {"p10_ms": [r["m"].get("p10_ms") for r in refs],
                                 "p90_ms": [r["m"].get("p90_ms") for r in refs],
                                 "flops": [r["flops"] for r in refs]})
            click.echo(f"  wrote the {len(refs)} measured reference networks to {write_networks}")
        families_benchmark(p, table, refs, weight, speed)
    if not skip_nb201:
        click.echo("== NB201 few-shot adaptation (20 measured cells)")
        nb201_benchmark(p)


if __name__ == "__main__":
    main()
