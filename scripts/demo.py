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


def find_predictor(cache: Path, target: str = "local-cpu") -> Path | None:
    """The predictor the demo uses for `target` on this machine, best first:
    1. a shipped one (data/predictors/) profiled on this machine (same fingerprint);
    2. one trained (once, cached outside the repository) from a shipped table of this machine;
    3. the closest shipped one calibrated on networks measured here (once, a few minutes; cached
       outside the repository under this machine's fingerprint: `predictors.calibrate`)."""
    from predictors.catalog import find_predictor as best_match
    from profiling.fingerprint import fingerprint_hash, local_fingerprint
    from profiling.targets import get_target
    fp = local_fingerprint(get_target(target))
    match = best_match(ROOT / "data" / "predictors", target, fp)
    if match is not None and match.exact:
        return match.path
    trained = predictor_from_table(cache, target, fingerprint_hash(fp))
    if trained is not None or match is None:
        return trained
    from predictors.calibrate import predictor_for_this_machine
    path, how = predictor_for_this_machine(ROOT / "data" / "predictors", cache / "predictors", target,
                                           progress=lambda s: click.echo(f"demo: {s}"))
    click.echo(f"demo: {how}")
    return path


def predictor_from_table(cache: Path, target: str, fingerprint_hash: str) -> Path | None:
    """Train a predictor (once, cached outside the repository) from the largest table of `target`
    under data/tables/ measured on this machine (its name ends in the fingerprint hash; it may
    still be being measured, and is read as is). Ties go by content (rows, then name), never by
    file times, which after `git clone` are the checkout order."""
    import pyarrow.parquet as pq

    def rows(p: Path) -> int:
        try:
            return pq.ParquetFile(p).metadata.num_rows
        except Exception:
            return -1
    tables = sorted((ROOT / "data" / "tables").glob(f"{target}__*__{fingerprint_hash}.parquet"),
                    key=lambda p: (-rows(p), p.name))
    if not tables:
        return None
    from predictors.model import Predictor
    from profiling.table import read_table
    table = tables[0]
    df, _ = read_table(table)
    out = cache / "predictors" / f"{table.stem}-{len(df)}rows.lgb"
    if not out.exists():
        click.echo(f"demo: no shipped predictor for this machine; training one from {table.relative_to(ROOT)} "
                   f"({len(df)} rows) into {out} (once, about 2 minutes) ...")
        p = Predictor(num_threads=1)
        p.fit([table])
        out.parent.mkdir(parents=True, exist_ok=True)
        p.save(out)
    return out


def fresh_dir(out: Path) -> Path:
    """`out`, or `out-2`, `out-3`, ... when it holds an earlier run's results (never replaced)."""
    from search.config import RESULT_FILES
    cand, i = out, 1
    while cand.is_dir() and any((cand / f).exists() for f in RESULT_FILES):
        i += 1
        cand = out.with_name(f"{out.name}-{i}")
    return cand


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--out", default="runs/demo", show_default=True,
              help="Output directory; when it holds an earlier run, runs/demo-2, -3, ... are used instead.")
@click.option("--space", default="nb201", show_default=True)
@click.option("--predictor", type=click.Path(dir_okay=False), help="default: the shipped predictor profiled on this machine (data/predictors/)")
@click.option("--budget-percentile", type=click.FloatRange(1, 99), default=40.0, show_default=True,
              help="The budget: this percentile of the predicted latency of random architectures on this machine.")
@click.option("--image-size", type=click.IntRange(min=8), default=12, show_default=True,
              help="The digits are resized to this size: at 12x12 NB201's networks take about 0.1-1.5 ms here.")
@click.option("--population", type=int, default=16, show_default=True)
@click.option("--generations", type=int, default=6, show_default=True)
@click.option("--supernet-epochs", type=float, default=4.0, show_default=True)
@click.option("--rerank", type=click.IntRange(min=0), default=3, show_default=True,
              help="Candidates trained from scratch briefly; the report shows their held-out accuracy.")
@click.option("--seed", type=int, default=0, show_default=True)
def main(out, space, predictor, budget_percentile, image_size, population, generations, supernet_epochs, rerank, seed):
    """The embedded default: a short search on the bundled digits with this machine's predictor."""
    from search import wiring
    from search.run import SearchConfig, run_search
    from scripts.cli import cli_errors, set_torch_threads
    from scripts.search_cli import summarize

    set_torch_threads(1)  # the local-cpu target's thread count
    from search.run import _cache_dir
    try:
        pred_path = Path(predictor) if predictor else find_predictor(_cache_dir(SearchConfig()))
    except Exception as e:  # a table too young to train on
        click.echo(f"error: could not train a predictor from data/tables/: {e}", err=True)
        pred_path = None
    if pred_path is None:
        click.echo("error: no latency predictor under data/predictors/ and no table to train one from. "
                   "Build one for this machine first:\n"
                   "  profile-device --target local-cpu --out data/tables/local-cpu.parquet\n"
                   "  train-predictor --table data/tables/local-cpu.parquet --out data/predictors/local-cpu.lgb\n"
                   "then run `make demo` again.", err=True)
        sys.exit(1)
    out_dir = fresh_dir(Path(out))
    if out_dir != Path(out):
        click.echo(f"demo: {out} holds an earlier run; writing to {out_dir}")
    with cli_errors():
        pred, _ = wiring.load_predictor_and_target(SearchConfig(predictor=str(pred_path)))
        data = wiring.load_data("digits", seed, image_size=image_size)
        sp = wiring.make_space(space, data)
        lat = wiring.latency_model(pred, sp, pred_path)
        rng = np.random.default_rng(seed)
        med, _, _ = lat.predict([sp.sample(rng) for _ in range(300)])
        # the predictor is this machine's (shipped, or calibrated here once and cached): the budget is
        # a fixed number on this machine, so repeated runs face the same constraint
        budget = float(np.round(np.percentile(med, budget_percentile), 3))
        shown = pred_path.relative_to(ROOT) if pred_path.is_relative_to(ROOT) else pred_path
        click.echo(f"demo: space {space}, data digits at {image_size}x{image_size}, predictor {shown}, latency budget "
                   f"{budget:g} ms (the {budget_percentile:g}th percentile of the predicted latency of random "
                   f"architectures: {np.percentile(med, 10):.2f}-{np.percentile(med, 90):.2f} ms from the 10th to "
                   f"the 90th)")
        click.echo(f"same as: search --predictor {shown} --space {space} --data digits --image-size {image_size} "
                   f"--latency-budget {budget:g} --population {population} --generations {generations} "
                   f"--supernet-epochs {supernet_epochs:g} --rerank {rerank} --out {out_dir}")
        res = run_search(SearchConfig(space=space, predictor=str(pred_path), data="digits", data_image_size=image_size,
                                      latency_budget_ms=budget, population=population, generations=generations,
                                      finalists=3, verify_rounds=2, out=out_dir, seed=seed, budget_minutes=8,
                                      supernet_epochs=supernet_epochs, rerank=rerank, reference_size=32))
    summarize(res)
    if res.interrupted:
        sys.exit(130)


if __name__ == "__main__":
    main()
