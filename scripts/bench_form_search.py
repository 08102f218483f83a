"""Benchmark: one search of the same space and data at fp32 and at int8, with the same budget.

    python -m scripts.bench_form_search --fp32 data/tables/local-cpu__amd-epyc__8430cb8f.parquet \\
        --int8 /work/tables/int8/local-cpu-int8__amd-epyc__XXXX.parquet --latency-budget 2 --out /tmp/form-search

Each of `--fp32` and `--int8` is a predictor (.lgb) or a latency table (.parquet, fitted here and
saved as OUT/<form>.lgb); the int8 one must be of an int8 target. Both searches share everything
else: the space, the data, the accuracy estimator (its cache, so the same supernet and proxy
scores), the seed, the population and generations, the finalists measured on the device and the
latency budget in milliseconds. The int8 search measures its finalists quantized and writes the
quantized best.onnx with its held-out accuracy drop (search.deploy.export_int8).

Writes OUT/fp32/ and OUT/int8/ (each a whole search run: report.md, frontier.json, best.onnx),
OUT/compare.json (both frontiers, both choices, whether they differ, the int8 accuracy drop) and
OUT/frontiers.png (both frontiers on one chart). Resumable: a form whose run finished is read
back, not searched again.

Each form's choice is then measured in both forms (`--cross-rounds`): its fp32 export on the fp32
target and on the int8 target (quantized by the runner, as the int8 search measures its
finalists), the two choices interleaved, the two targets alternating round by round; compare.json
"cross" holds each choice's median per form and the int8 choice / fp32 choice latency ratio of
each round (a ratio within one round is immune to the machine's drift between rounds).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

FORMS = ("fp32", "int8")


def _predictor(src: str, form: str, out: Path) -> tuple[str, str]:
    """A predictor file for `src`: itself (.lgb), or fitted on the table (.parquet) once; and its
    target's name (the target its choice is measured on)."""
    from predictors import Predictor
    if not src.endswith(".parquet"):
        p = Predictor.load(src)
    else:
        path = out / f"{form}.lgb"
        if path.exists():
            p = Predictor.load(path)
        else:
            t0 = time.time()
            p = Predictor()
            p.fit([src])
            p.save(path)
            click.echo(f"{form}: fitted {path} on {src} ({time.time() - t0:.0f} s)", err=True)
        src = str(path)
    precision = p.target.get("precision", "fp32")
    if precision != form:
        raise click.UsageError(f"the {form} predictor {src} is of target {p.target.get('name')} ({precision}): "
                               f"pass a {form} predictor or table")
    return src, p.target.get("name") or ("local-cpu-int8" if form == "int8" else "local-cpu")


def _frontier(run: Path) -> list[dict]:
    rows = json.loads((run / "frontier.json").read_text())
    return rows.get("frontier", rows) if isinstance(rows, dict) else rows


def _cross(runs: dict[str, Path], targets: dict[str, str], rounds: int, passes: int) -> dict:
    """Each form's choice measured in both forms (module docstring): {"ms": {choice_form: {form: median
    over rounds}}, "rounds": [{form: {choice_form: ms}}], "int8_over_fp32_choice": {form: [ratio per round]}}."""
    from profiling.measure import measure_models
    # the int8 run keeps its fp32 export as best.fp32.onnx (search.deploy.export_int8)
    onnx = {c: runs[c] / ("best.fp32.onnx" if (runs[c] / "best.fp32.onnx").exists() else "best.onnx") for c in FORMS}
    if not all(p.exists() for p in onnx.values()):
        return {"skipped": f"no exported choice: {', '.join(str(p) for p in onnx.values() if not p.exists())}"}
    per_round: list[dict[str, dict[str, float]]] = []
    for i in range(rounds):
        got = {}
        for form in FORMS:
            res = measure_models([onnx[c] for c in FORMS], targets[form], passes=passes)
            got[form] = {c: m.median_ms for c, m in zip(FORMS, res)}
        per_round.append(got)
        click.echo(f"cross round {i + 1}/{rounds}: " + "; ".join(
            f"at {form}: " + ", ".join(f"{c} choice {got[form][c]:.4f} ms" for c in FORMS) for form in FORMS), err=True)
    ms = {c: {form: float(np.median([r[form][c] for r in per_round])) for form in FORMS} for c in FORMS}
    ratio = {form: [r[form]["int8"] / r[form]["fp32"] for r in per_round] for form in FORMS}
    return {"onnx": {c: str(p) for c, p in onnx.items()}, "targets": targets, "passes": passes, "ms": ms,
            "rounds": per_round, "int8_over_fp32_choice": ratio}


def _plot(runs: dict[str, Path], budget: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (form, run), mark in zip(runs.items(), ("o-", "s-")):
        pts = sorted((r.get("measured_ms") or r["predicted_ms"], r["estimated_accuracy"]) for r in _frontier(run))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], mark, label=f"{form} ({len(pts)} points)", alpha=0.8)
        b = json.loads((run / "best.json").read_text()) if (run / "best.json").exists() else {}
        if b.get("measured_ms") or b.get("predicted_ms"):
            ax.plot([b.get("measured_ms") or b["predicted_ms"]], [b["estimated_accuracy"]], "*", ms=14,
                    label=f"{form} choice")
    ax.axvline(budget, ls="--", c="grey", label=f"budget {budget:g} ms")
    ax.set_xlabel("latency on its target (ms; measured where verified)")
    ax.set_ylabel("estimated accuracy (rank score)")
    ax.set_title("the same search at fp32 and at int8")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@click.command()
@click.option("--fp32", "fp32_src", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The fp32 target's predictor (.lgb) or table (.parquet).")
@click.option("--int8", "int8_src", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The int8 target's predictor (.lgb) or table (.parquet).")
@click.option("--latency-budget", type=float, required=True, help="The same budget (ms) for both searches.")
@click.option("--space", default="nb201", show_default=True)
@click.option("--data", default="digits", show_default=True, help="As search's --data.")
@click.option("--image-size", type=int, default=None, help="As search's --image-size.")
@click.option("--accuracy", default="proxies", show_default=True, type=click.Choice(["auto", "proxies", "supernet"]))
@click.option("--population", default=24, show_default=True)
@click.option("--generations", default=12, show_default=True)
@click.option("--finalists", default=3, show_default=True)
@click.option("--verify-rounds", default=2, show_default=True)
@click.option("--budget-minutes", default=5.0, show_default=True, help="Wall-clock cap of each search phase.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="The accuracy estimator's cache (supernet, proxy scores), shared by both searches; default OUT/cache.")
@click.option("--cross-rounds", default=3, show_default=True,
              help="Rounds measuring both choices in both forms (0: none); each round one interleaved measurement per form.")
@click.option("--cross-passes", default=8, show_default=True, help="Interleaved passes per form per round.")
@click.option("--json", "as_json", is_flag=True, help="Print compare.json.")
def main(fp32_src, int8_src, latency_budget, space, data, image_size, accuracy, population, generations, finalists,
         verify_rounds, budget_minutes, seed, out, cache_dir, cross_rounds, cross_passes, as_json):
    """Search the same space and data at fp32 and at int8 with the same budget; compare the frontiers,
    the choices and the int8 model's accuracy drop."""
    from search.run import SearchConfig, run_search
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    srcs = {"fp32": fp32_src, "int8": int8_src}
    runs, targets, summary = {}, {}, {"latency_budget_ms": latency_budget, "space": space, "data": data,
                         "image_size": image_size, "accuracy": accuracy,
                         "population": population, "generations": generations, "finalists": finalists,
                         "seed": seed, "forms": {}}
    for form in FORMS:
        run = out / form
        runs[form] = run
        pred, targets[form] = _predictor(srcs[form], form, out)
        if not (run / "report.md").exists():
            t0 = time.time()
            cfg = SearchConfig(space=space, predictor=pred, data=data,
                               data_image_size=image_size,
                               latency_budget_ms=latency_budget, accuracy=accuracy, population=population,
                               generations=generations, finalists=finalists, verify_rounds=verify_rounds,
                               budget_minutes=budget_minutes, seed=seed, out=str(run),
                               cache_dir=cache_dir or str(out / "cache"), overwrite=True, progress=False)
            run_search(cfg)
            click.echo(f"{form}: searched in {time.time() - t0:.0f} s -> {run}", err=True)
        best = json.loads((run / "best.json").read_text()) if (run / "best.json").exists() else {}
        summary["forms"][form] = {
            "run": str(run), "choice": best.get("arch"), "accuracy": best.get("estimated_accuracy"),
            "measured_ms": best.get("measured_ms"), "predicted_ms": best.get("predicted_ms"),
            "deployment": best.get("deployment"),
            "frontier": [{"arch": r["arch"], "accuracy": r["estimated_accuracy"], "predicted_ms": r["predicted_ms"],
                          "measured_ms": r.get("measured_ms")} for r in _frontier(run)],
            "int8": best.get("int8")}
    f32, i8 = summary["forms"]["fp32"], summary["forms"]["int8"]
    summary["choices_differ"] = f32["choice"] != i8["choice"]
    shared = {r["arch"] for r in f32["frontier"]} & {r["arch"] for r in i8["frontier"]}
    summary["frontier_overlap"] = {"fp32": len(f32["frontier"]), "int8": len(i8["frontier"]), "shared": len(shared)}
    summary["int8_accuracy_drop_points"] = (i8["int8"] or {}).get("accuracy_drop_points")
    if cross_rounds > 0:
        summary["cross"] = _cross(runs, targets, cross_rounds, cross_passes)
    _plot(runs, latency_budget, out / "frontiers.png")
    (out / "compare.json").write_text(json.dumps(summary, indent=1))
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    for form in FORMS:
        s = summary["forms"][form]
        ms = s["measured_ms"] or s["predicted_ms"]
        click.echo(f"{form}: choice {s['choice']} (accuracy score {s['accuracy']}, "
                   f"{'measured' if s['measured_ms'] else 'predicted'} {ms} ms); frontier of {len(s['frontier'])}")
    click.echo(f"choices differ: {summary['choices_differ']}; frontiers share {len(shared)} architectures")
    if summary["int8_accuracy_drop_points"] is not None:
        q = i8["int8"]
        click.echo(f"int8 model: {q['fp32_accuracy']:.2f}% fp32 -> {q['int8_accuracy']:.2f}% int8 "
                   f"({q['accuracy_drop_points']:+.2f} points drop, {q['held_out_images']} held-out images)")
    cross = summary.get("cross", {})
    if "ms" in cross:
        for c in FORMS:
            click.echo(f"the {c} choice measured: " + ", ".join(f"{cross['ms'][c][f]:.4f} ms at {f}" for f in FORMS))
        for f in FORMS:
            click.echo(f"at {f}: int8 choice / fp32 choice per round "
                       + ", ".join(f"{r:.3f}" for r in cross["int8_over_fp32_choice"][f]))
    elif cross:
        click.echo(f"cross measurement skipped: {cross['skipped']}")
    click.echo(f"wrote {out / 'compare.json'} and {out / 'frontiers.png'}")


if __name__ == "__main__":
    sys.exit(main())
