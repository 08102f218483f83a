"""The embedded default (`make demo`): a short search on the bundled digits dataset with the
shipped predictor for this machine class, verifying the finalists on this machine.

    python -m scripts.demo [--out runs/demo] [--space nb201] [--budget-percentile 40]

The latency budget is the given percentile of the predicted latency of random architectures of
the space (so it is meaningful whatever the machine); it is printed before the search starts.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def find_predictor(target: str = "local-cpu") -> Path | None:
    """The newest .lgb under data/predictors/ built for `target` (any .lgb if none says)."""
    base = ROOT / "data" / "predictors"
    files = sorted(base.glob("**/*.lgb"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not files:
        return None
    for f in files:
        try:
            from search.models import load_predictor, predictor_target
            if predictor_target(load_predictor(f)) == target:
                return f
        except Exception:
            continue
    return files[0]


@click.command()
@click.option("--out", default="runs/demo", show_default=True)
@click.option("--space", default="nb201", show_default=True)
@click.option("--predictor", type=click.Path(dir_okay=False), help="default: the newest under data/predictors/")
@click.option("--budget-percentile", type=float, default=40.0, show_default=True)
@click.option("--population", type=int, default=16, show_default=True)
@click.option("--generations", type=int, default=6, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def main(out, space, predictor, budget_percentile, population, generations, seed):
    import torch
    torch.set_num_threads(1)
    from search import setup
    from search.problem import SearchError
    from search.run import SearchConfig, run_search
    from scripts.search_cli import summarize

    pred_path = Path(predictor) if predictor else find_predictor()
    if pred_path is None:
        click.echo("error: no latency predictor under data/predictors/. Build one for this machine first:\n"
                   "  profile-device --target local-cpu --out data/tables/local-cpu.parquet\n"
                   "  train-predictor --table data/tables/local-cpu.parquet --out data/predictors/local-cpu.lgb\n"
                   "then run `make demo` again.", err=True)
        sys.exit(1)
    try:
        pred = setup.load_predictor_and_target(SearchConfig(predictor=str(pred_path)))[0]
        data = setup.load_data("digits", seed)
        sp = setup.make_space(space, data)
        lat = setup.latency_model(pred, sp, pred_path)
        rng = np.random.default_rng(seed)
        med, _, _ = lat.predict([sp.sample(rng) for _ in range(300)])
        budget = float(np.round(np.percentile(med, budget_percentile), 3))
        click.echo(f"demo: space {space}, data digits, predictor {pred_path.relative_to(ROOT) if pred_path.is_relative_to(ROOT) else pred_path}, "
                   f"latency budget {budget:g} ms (the {budget_percentile:g}th percentile of predicted latency)")
        click.echo(f"same as: search --predictor {pred_path} --space {space} --data digits "
                   f"--latency-budget {budget:g} --population {population} --generations {generations} --out {out}")
        res = run_search(SearchConfig(space=space, predictor=str(pred_path), data="digits", latency_budget_ms=budget,
                                      population=population, generations=generations, finalists=3,
                                      verify_rounds=2, out=out, seed=seed, budget_minutes=6))
    except SearchError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    summarize(res)
    if res.interrupted:
        sys.exit(130)


if __name__ == "__main__":
    main()
