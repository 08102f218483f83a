"""Where does a network's latency ratio to the baseline move? Between fresh sessions, or within one?

    python -m scripts.bench_ratio_spread --batches 6 --out runs/bench-ratio-spread
    taskset -c 1 .venv/bin/python -m scripts.bench_ratio_spread --batches 6 --out runs/bench-ratio-spread

The demo's verdicts by ratio (`search.verify.RatioBudget`) measure finalists interleaved with the
baseline in batches (`RunnerDevice.measure_together`): 8 round-robin passes, each batch with fresh
onnxruntime sessions. Its 95% interval comes from the passes of the batches it ran. This measures
the same networks in `--batches` batches of two compositions, alternating: all of them with the
baseline (as a round's first batch), and each alone with the baseline (as a re-measurement of one
close call). Written: OUT/ratio_spread.json (each network's per-batch median ratio and its
within-batch interval, per composition) and a table on stdout: the spread between batches (fresh
sessions) against the interval within one. The default networks are the demo's usual finalists
(session 8, `make demo` on the bundled digits at 32x32).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import click

DEMO_FINALISTS = ("resnet20:grouped-d1-w1.25-se|own-d1-w0.5|mb3k5-d4-w1-se",
                  "resnet20:grouped-d1-w0.5-se|own-d1-w1|mb3k5-d4-w1-se",
                  "resnet20:mb3k5-d1-w1|mb3k3-d1-w1|mb3k5-d3-w1.25")


def batch_ratios(stats: list[dict]) -> list[list[float]]:
    """Per-pass latency ratios to the first job (the baseline) of each other job of one batch."""
    ref = stats[0]["pass_ms"]
    return [[m / r for m, r in zip(s["pass_ms"], ref)] for s in stats[1:]]


def summarize(batches: list[list[float]]) -> dict:
    """One network's batches (each a list of per-pass ratios): the batch medians, their spread
    (relative half-range and relative standard deviation) and the mean within-batch interval."""
    from profiling.device_runner import median_ci
    meds = [statistics.median(b) for b in batches]
    mid = statistics.median(meds)
    half = [max(statistics.median(b) - median_ci(sorted(b))[0], median_ci(sorted(b))[1] - statistics.median(b))
            for b in batches]
    return {"batch_medians": meds, "median": mid,
            "between_half_range_rel": (max(meds) - min(meds)) / 2 / mid,
            "between_sd_rel": statistics.stdev(meds) / mid if len(meds) > 1 else None,
            "within_half_width_rel": statistics.fmean(half) / mid}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--baseline", default="resnet20", show_default=True)
@click.option("--image-size", type=click.IntRange(min=8), default=32, show_default=True)
@click.option("--archs", default=",".join(DEMO_FINALISTS), show_default=False,
              help="Comma-separated architectures of the baseline's space (default: the demo's usual finalists).")
@click.option("--batches", type=click.IntRange(min=2), default=6, show_default=True,
              help="Batches of each composition (all together; each alone with the baseline).")
@click.option("--out", default="runs/bench-ratio-spread", show_default=True, type=click.Path(file_okay=False))
def main(baseline, image_size, archs, batches, out):
    """Measure the networks' latency ratios to the baseline in fresh batches, and compare the spread
    between batches with the interval within one."""
    from profiling.targets import get_target
    from scripts.cli import set_torch_threads
    from search import wiring
    from search.baseline_search import baseline_space_options
    from search.verify import RunnerDevice

    set_torch_threads(1)
    data = wiring.load_data("digits", 0, image_size=image_size)
    name, options = baseline_space_options(baseline, data)
    space = wiring.make_space("baseline", data, options)
    keys = [a.strip() for a in archs.split(",") if a.strip()]
    from types import SimpleNamespace
    cands = [SimpleNamespace(key=k, arch=space.from_string(k)) for k in [space.to_string(space.baseline_arch), *keys]]
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    device = RunnerDevice(get_target("local-cpu"), workdir=root / "onnx")
    together: dict[str, list[list[float]]] = {k: [] for k in keys}
    alone: dict[str, list[list[float]]] = {k: [] for k in keys}
    t0 = time.monotonic()
    try:
        for b in range(batches):
            for k, r in zip(keys, batch_ratios(device.measure_together(space, cands))):
                together[k].append(r)
            for c in cands[1:]:
                alone[c.key].append(batch_ratios(device.measure_together(space, [cands[0], c]))[0])
            click.echo(f"batch {b + 1}/{batches} done, {time.monotonic() - t0:.0f} s")
    finally:
        device.close()
    doc = {"baseline": name, "image_size": image_size, "batches": batches,
           "networks": {k: {"together": summarize(together[k]), "alone": summarize(alone[k]),
                            "passes_together": together[k], "passes_alone": alone[k]} for k in keys}}
    (root / "ratio_spread.json").write_text(json.dumps(doc, indent=2))
    click.echo("\n| network | composition | median ratio | batch medians | between batches ±% (half-range) | "
               "sd % | within one batch ±% |")
    click.echo("| --- | --- | --- | --- | --- | --- | --- |")
    for k in keys:
        for comp in ("together", "alone"):
            s = doc["networks"][k][comp]
            click.echo(f"| `{k}` | {comp} | {s['median']:.3f} | {', '.join(f'{m:.3f}' for m in s['batch_medians'])} | "
                       f"{100 * s['between_half_range_rel']:.1f} | {100 * (s['between_sd_rel'] or 0):.1f} | "
                       f"{100 * s['within_half_width_rel']:.1f} |")
    click.echo(f"\nWritten: {root / 'ratio_spread.json'} ({time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()
