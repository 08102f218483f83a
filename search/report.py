"""report.md: what was searched, what was measured, what was chosen, and why."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.baseline_search import BaselineInfo, train_commands
from search.config import SearchSpec
from search.deploy import images_per_s
from search.problem import Candidate

if TYPE_CHECKING:  # search.run writes the report (imports this module); wiring imports torch
    from search.run import SearchResult
    from search.wiring import Data


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


#: How to load best.pt: printed in report.md and the README (search.wiring.load_best is the function).
BEST_PT_LOADER = """from search.wiring import load_best
model = load_best("{out}/best.pt")   # a torch.nn.Module with the searched weights, in eval mode
"""


def write_report(path: Path, spec: SearchSpec, space: str, result: SearchResult, meta: dict[str, Any], device: Any,
                 data: Data) -> None:
    """report.md of a search of `space` (the spec's, or "baseline" when it started from one)."""
    f = result.formulation
    best = result.best
    L: list[str] = []
    L.append(f"# hwnas search report{' (interrupted: partial)' if result.interrupted else ''}\n")
    L.append("## What was searched\n")
    L.append(f"- space: `{space}`; data: {data.name}")
    L.append(f"- objective: {f.describe()}")
    alg, run = spec.algorithm, spec.run
    L.append(f"- algorithm: {alg.name} (population {alg.population}, up to {alg.generations} "
             f"generations, {run.budget_minutes:g}-minute cap, seed {run.seed})")
    L.append(f"- accuracy estimate: {meta['accuracy_estimator']}")
    L.append(f"- latency: {meta['latency_model']}")
    L.append(f"- device for finalists: {device.name}" + (f" ({device.how})" if getattr(device, "how", None) else ""))
    target = getattr(device, "target", None)
    if target is not None:
        L.append(f"- deployment form: {target.form}" + (
            "; every finalist is quantized (onnxruntime static QDQ, per-channel int8 weights) before it is "
            "measured" if target.precision == "int8" else "")
            + (f"; throughput = {target.batch} x 1000 / latency ms images/s" if target.batch > 1 else ""))
    L.append(f"- {result.n_evaluated} architectures scored in {result.elapsed_s:.0f} s; "
             f"frontier of {len(result.frontier)} points\n")
    L.append("## What was measured\n")
    measured = [c for c in result.candidates if c.measured_ms is not None]
    if not measured:
        L.append("Nothing was measured on the device" + (" (interrupted before verification)." if result.interrupted else "."))
    else:
        L.append(f"{result.n_measurements} measurement(s) on {device.name}. Predicted is the prediction "
                 f"(after the correction fit on earlier measurements) when the finalist was picked; raw is "
                 f"the predictor's own number.\n")
        L.append("| round | arch | est. accuracy | raw predicted ms | measured ms | measured/raw | verdict |")
        L.append("| --- | --- | --- | --- | --- | --- | --- |")
        by_key = {}
        for r in result.rounds:
            for m in r.measured:
                by_key[m["arch"]] = r.round
        for c in sorted(measured, key=lambda c: (by_key.get(c.key, 0), c.measured_ms)):
            ratio = c.measured_ms / c.raw_predicted_ms if c.measured_ms is not None and c.raw_predicted_ms \
                else float("nan")
            is_base = result.baseline is not None and c.key == result.baseline.candidate.key
            verdict = c.dropped or ("kept" if by_key.get(c.key) else "baseline" if is_base else "calibration")
            L.append(f"| {by_key.get(c.key, 'base' if is_base else 'cal.')} | `{c.key}` | {c.accuracy:.2f} | {_ms(c.raw_predicted_ms)} | "
                     f"{_ms(c.measured_ms)} | {ratio:.2f} | {verdict} |")
        L.append("")
        settled = [m for r in result.rounds for m in r.measured if m.get("decision") and "ratio" not in m]
        by_ratio = [m for r in result.rounds for m in r.measured if "ratio" in m]
        if by_ratio:
            L.append("Verdicts by ratio: each round's finalists were measured interleaved with the baseline (round-"
                     "robin passes, a short slice of each per pass, so all of them see the machine's same speed "
                     "levels) and kept iff the median of their per-pass latency ratios to the baseline is within "
                     "1/speed-up; one within its own uncertainty of it (the 95% interval of the median ratio, at "
                     "least 3%) was measured again with the baseline, up to the cap. Its measured ms above is that "
                     "ratio times the baseline's median over every pass.\n")
            L.extend(f"- {m['decision']}" for m in by_ratio)
            if getattr(result.baseline, "ratio", None) is not None:
                L.append(f"\nThe choice's {result.baseline.ratio.describe_margin()}.")
            L.append("")
        if settled:
            L.append("Close calls: a finalist measured within its own uncertainty of the budget (the runner's "
                     "95% CI of the median, the spread of its repeats, at least 3%) was re-measured, "
                     "interleaved with the others, until the verdict was clear or the cap was reached; its "
                     "latency above is the median of its measurements.\n")
            L.extend(f"- {m['decision']}" for m in settled)
            L.append("")
        L.append(f"Predictor correction for the rest of the run: {result.correction}.\n")
    L.append("## What was chosen, and why\n")
    base_key = result.baseline.candidate.key if result.baseline is not None else None  # marked among the reranked
    if best is None:
        L.append("No architecture was chosen" + (": the search was interrupted before any candidate met the "
                                                 "constraint." if result.interrupted else "."))
    else:
        L.append(f"`{best.key}`\n")
        L.append(f"- estimated accuracy {best.accuracy:.2f}; predicted {best.predicted_ms:.3f} ms "
                 f"(interval {best.low_ms:.3f}–{best.high_ms:.3f}, raw {best.raw_predicted_ms:.3f}); "
                 f"measured {_ms(best.measured_ms)} ms")
        if f.kind == "budget":
            why = (f"the highest estimated accuracy among candidates whose "
                   f"{'measured' if best.measured_ms is not None else 'corrected predicted'} latency is within "
                   f"{f.latency_budget_ms:g} ms")
        elif f.kind == "min_accuracy":
            why = (f"the lowest {'measured' if best.measured_ms is not None else 'predicted'} latency among "
                   f"candidates with estimated accuracy >= {f.min_accuracy:g}")
        else:
            why = "the knee of the frontier (farthest above the line joining its ends, log latency)"
        short = {t.key: t.short_accuracy for t in result.reranked}
        if result.reranked and f.kind == "budget":
            why = (f"the best held-out accuracy after a short stand-alone training among the "
                   f"{len(result.reranked)} best-estimated candidates within the budget, the first the device "
                   f"confirmed within it (table below)")
        elif base_key in short and short.get(best.key, -1.0) >= short[base_key]:
            why = (f"the lowest measured latency among the {len(short) - 1} fastest candidates estimated at least "
                   f"as accurate as the baseline whose held-out accuracy after a short training, with the "
                   f"baseline's recipe, was at least the baseline's {short[base_key]:.2f}% (table below)")
        L.append(f"- why: {why}")
        if target is not None and target.batch > 1:
            ms = best.measured_ms if best.measured_ms is not None else best.predicted_ms
            L.append(f"- throughput at batch {target.batch}: {images_per_s(ms, target.batch):.1f} images/s "
                     f"({'measured' if best.measured_ms is not None else 'predicted'})")
        int8 = (meta.get("best") or {}).get("int8")
        if int8:
            L.append(f"- `best.onnx` is the int8 model ({int8['quantization']}; the fp32 export is "
                     f"`best.fp32.onnx`): held-out accuracy {int8['fp32_accuracy']:.2f}% fp32 -> "
                     f"{int8['int8_accuracy']:.2f}% int8, a drop of {int8['accuracy_drop_points']:.2f} points on "
                     f"{int8['held_out_images']} images")
        L.append("- files: `best.json` (architecture), `best.onnx` and `best.pt` (ready to fine-tune), "
                 "`frontier.csv`/`frontier.json`/`frontier.png`")
        L.append("\nLoad `best.pt` as a PyTorch module (the space rebuilds the network from its architecture "
                 "string, sized as in this search):\n")
        L.append("```python\n" + BEST_PT_LOADER.format(out=path.parent) + "```")
    if result.baseline is not None:
        L.extend(baseline_section(result.baseline, best, path.parent))
    if result.reranked:
        L.append("\n## Short training of the best-estimated candidates\n")
        L.append("| arch | est. accuracy | held-out accuracy after short training (%) | seconds |")
        L.append("| --- | --- | --- | --- |")
        for t in result.reranked:
            L.append(f"| `{t.key}`{' (baseline)' if t.key == base_key else ''} | {t.estimated:.2f} | "
                     f"{t.short_accuracy:.2f} | "
                     f"{'cached' if t.cached else f'{t.seconds:.0f}'} |")
    gt = result.ground_truth
    if gt is not None:
        L.append("\n## Benchmark ground truth (read only after the choice, for this report)\n")
        L.append(f"- best `val_acc` under the budget: {gt.best_val_acc:.2f} (`{gt.best_arch}`; "
                 f"{gt.n_under_budget} cells under budget)")
        L.append(f"- chosen cell: `val_acc` {gt.chosen_val_acc}, latency {gt.chosen_ms} ms; "
                 f"gap {gt.gap:.2f} points; {result.n_measurements} measurements")
    if result.notes:
        L.append("\n## Notes\n")
        L.extend(f"- {n}" for n in result.notes)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(L) + "\n")
    tmp.replace(path)


def baseline_section(base: BaselineInfo, best: Candidate | None, out: Path) -> list[str]:
    """The chosen network against the baseline it started from: measured speed-up, size, and the
    `train` commands that prove the accuracy."""
    b = base.candidate
    speedup, how = base.speedup_of(best)
    L = ["\n## Against the baseline\n",
         "| | arch | est. accuracy | measured ms | predicted ms | params | memory MB |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
    rows = [("baseline " + base.name, b)] + ([("chosen", best)] if best is not None else [])
    for label, c in rows:
        params = "—" if c.params is None else f"{c.params:,}"
        mem = "—" if c.memory_mb is None else f"{c.memory_mb:.2f}"
        L.append(f"| {label} | `{c.key}` | {c.accuracy:.2f} | {_ms(c.measured_ms)} | {c.predicted_ms:.3f} | "
                 f"{params} | {mem} |")
    spread = base.speedup_spread(best)
    if speedup is not None:
        if spread is not None:
            how = (f"measured: the median of {spread['passes']} per-pass latency ratios, the chosen network and "
                   f"the baseline timed in the same interleaved passes; 95% interval {spread['speedup_low']:.2f}-"
                   f"{spread['speedup_high']:.2f}x")
        elif how == "measured":
            how += ", both on the same device and runner"
        else:
            how += ", not verified on the device"
        L.append(f"\n**Speed-up over the baseline: {speedup:.2f}x ({how}).** The accuracy estimate is a rank "
                 "score in the same units for both; whether the chosen network is as accurate after training is "
                 "what `train` shows, with the same recipe:\n")
        L.append("```\n" + "\n".join(train_commands(f"{out}/best.json", base.spec, base.data, str(out),
                                                     base.image_size)) + "\n```")
    return L


__all__ = ["baseline_section", "write_report"]
