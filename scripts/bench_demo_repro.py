"""Does `make demo` make the same choice twice? Run it N times and count the runs that agree.

    python -m scripts.bench_demo_repro --runs 5 --out runs/bench-demo-repro
    taskset -c 1 .venv/bin/python -m scripts.bench_demo_repro --runs 5 --out runs/bench-demo-repro

Each run is a fresh process (`python -m scripts.demo --out OUT/run-K`, a fresh output directory)
with the same arguments; the predictor is the one chosen for this machine (cached after the first
run). Runs already finished in OUT (their demo.json exists) are kept, so an interrupted benchmark
resumes. Written: OUT/repro.json (each run's choice, measured speed-up with its interval, wall
time; the agreement) and the same as a table on stdout. Extra arguments after `--` go to the demo
(a smaller demo for a quick check: `-- --population 8 --generations 2 --train-epochs 1`).
"""
from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import click


def run_demo(out: Path, demo_args: list[str], log: Path) -> dict:
    """One demo in its own process; its demo.json with the wall time and exit code added."""
    t0 = time.monotonic()
    with open(log, "w") as f:
        rc = subprocess.call([sys.executable, "-m", "scripts.demo", "--out", str(out), *demo_args], stdout=f,
                             stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
    wall = round(time.monotonic() - t0, 1)
    path = out / "demo.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(exit_code=rc, wall_seconds=wall, log=str(log))
    if path.exists():
        path.write_text(json.dumps(summary, indent=2))
    return summary


def agreement(runs: list[dict]) -> dict:
    """How many runs chose the most common architecture (no choice counts as its own answer)."""
    choices = [r.get("chosen") or "(none)" for r in runs]
    counts = collections.Counter(choices)
    top, n = counts.most_common(1)[0] if counts else (None, 0)
    return {"runs": len(runs), "agree": n, "most_common": top, "distinct_choices": len(counts),
            "choices": dict(counts)}


def table(runs: list[dict]) -> str:
    rows = ["| run | chosen | measured speed-up (95% interval) | budget ms | finalists kept/measured (undecided at the cap) "
            "| margin | test acc. % | wall s | exit |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, r in enumerate(runs, 1):
        sp = r.get("measured_speedup") or {}
        speed = (f"{sp['speedup']:.2f}x ({sp['speedup_low']:.2f}-{sp['speedup_high']:.2f})" if sp else
                 f"{r['speedup']:.2f}x (not measured)" if r.get("speedup") else "—")
        acc = (r.get("trained") or {}).get("chosen", {}).get("test_accuracy")
        budget = r.get("budget_ms")
        fin = [f for f in r.get("finalists") or [] if f.get("ratio") is not None]
        kept = sum(f.get("dropped") is None for f in fin)
        undecided = sum(not f.get("clear") for f in fin)
        margin = (r.get("ratio_margin") or {}).get("margin")
        rows.append(f"| {i} | `{r.get('chosen')}` | {speed} | {'—' if budget is None else f'{budget:.3f}'} | "
                    f"{kept}/{len(fin)} ({undecided}) | {'—' if margin is None else f'{margin:.3f}'} | "
                    f"{'—' if acc is None else f'{acc:.2f}'} | {r.get('wall_seconds', 0):.0f} | "
                    f"{r.get('exit_code')} |")
    return "\n".join(rows)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100,
                                 "ignore_unknown_options": True})
@click.option("--runs", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--out", default="runs/bench-demo-repro", show_default=True, type=click.Path(file_okay=False),
              help="One run-K directory per run, and repro.json.")
@click.argument("demo_args", nargs=-1, type=click.UNPROCESSED)
def main(runs, out, demo_args):
    """Run the demo RUNS times (fresh output directories) and report how many agree on the choice."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for k in range(1, runs + 1):
        run_out = root / f"run-{k}"
        done = run_out / "demo.json"
        if done.exists() and "wall_seconds" in json.loads(done.read_text()):
            click.echo(f"run {k}/{runs}: done before, kept ({done})")
            results.append(json.loads(done.read_text()))
            continue
        if run_out.exists():  # an interrupted run: start it over in a fresh directory of the same name
            import shutil
            shutil.rmtree(run_out)
        eta = ""
        walls = [r["wall_seconds"] for r in results if "wall_seconds" in r]
        if walls:
            eta = f", about {sum(walls) / len(walls) * (runs - k + 1) / 60:.0f} min left"
        click.echo(f"run {k}/{runs}: python -m scripts.demo --out {run_out} {' '.join(demo_args)}{eta}")
        r = run_demo(run_out, list(demo_args), root / f"run-{k}.log")
        speed = f"measured speed-up {r['speedup']:.2f}x" if r.get("speedup") else "no speed-up (nothing chosen)"
        click.echo(f"  chose {r.get('chosen')}, {speed}, {r['wall_seconds']:.0f} s, exit {r['exit_code']}")
        results.append(r)
    agree = agreement(results)
    doc = {"command": "python -m scripts.bench_demo_repro " + " ".join(sys.argv[1:]), "demo_args": list(demo_args),
           "agreement": agree, "runs": results}
    (root / "repro.json").write_text(json.dumps(doc, indent=2))
    click.echo("\n" + table(results))
    click.echo(f"\n{agree['agree']} of {agree['runs']} runs agree on {agree['most_common']}; "
               f"{agree['distinct_choices']} distinct choice(s). Written: {root / 'repro.json'}")


if __name__ == "__main__":
    main()
