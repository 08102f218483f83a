"""Few-shot transfer of a latency predictor to another machine, measured on two real CPUs.

    python -m scripts.bench_transfer --base data/predictors/SOURCE.lgb --table data/tables/NEW.parquet \
        --references data/networks/NEW.csv [--shots 10,20,50] [--draws 10]

The base predictor was profiled on one machine (the source); the table and the reference
architectures were measured on another (the new device), on the same target settings. This is
the situation of HELP and LitePred: a predictor exists for one device, and a user can afford
to measure a few networks on a new one. The shots are drawn from the new device's table
networks (random networks of the profiler's generator: what `profile-device --kinds network
--networks 20` measures in under a minute). Two test sets, neither ever drawn as a shot:
the real reference architectures (`scripts/reference_models.py`, measured on the new device)
and a fixed share of the new table's networks.

Compared on each test set (mean over the draws, and the worst draw):
- `base`: the source predictor as it is;
- `base x scale`: times one factor, the median measured/predicted of the shots;
- `base + adapter`: `predictors.adapt` (what `train-predictor --adapt-from --networks` does);
- `native`: a predictor trained on the new device's whole table minus the test networks, the
  reference a full profile of the new device buys.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np


def _fmt(ms: list[dict]) -> str:
    w = np.array([m["within10"] for m in ms])
    mape = np.mean([m["mape"] for m in ms])
    rho = np.mean([m["spearman"] for m in ms])
    spread = f" (worst {w.min():.1%})" if len(ms) > 1 else ""
    return f"{w.mean():.1%}{spread}, MAPE {mape:.1%}, Spearman {rho:.3f}"


@click.command()
@click.option("--base", "base_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Predictor profiled on the source machine.")
@click.option("--table", "table_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Latency table of the new device (its networks are the shots and a test set).")
@click.option("--references", "refs_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Reference architectures measured on the new device (measured-networks file).")
@click.option("--shots", default="10,20,50", show_default=True, help="Shot counts (comma-separated).")
@click.option("--draws", type=click.IntRange(min=1), default=10, show_default=True,
              help="Random draws of the shots per shot count.")
@click.option("--test-share", type=click.FloatRange(0.05, 0.5), default=0.2, show_default=True,
              help="Share of the table's networks kept out as a test set.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the figures as JSON here.")
def main(base_path, table_path, refs_path, shots, draws, test_share, seed, out):
    from predictors.adapt import adapt
    from predictors.measured import read_networks_file
    from predictors import Predictor
    from predictors.numerics import metrics
    from predictors.tables import load_tables

    base = Predictor.load(base_path)
    df, meta = load_tables([table_path])
    if meta.get("target", {}).get("name") != base.target_name:
        raise click.UsageError(f"the table was measured on target {meta.get('target', {}).get('name')!r}, the base "
                               f"predictor on {base.target_name!r}: compare the same target on two machines")
    refs = read_networks_file(refs_path)
    nets = base.network_rows(df)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(nets))
    n_test = int(round(test_share * len(nets)))
    test, pool = [nets[i] for i in order[:n_test]], [nets[i] for i in order[n_test:]]
    sets = {"reference architectures": (refs.candidates, refs.latency_ms),
            "held-out table networks": ([n["specs"] for n in test], np.array([n["ms"] for n in test]))}
    click.echo(f"source: {Path(base_path).name} ({base.fingerprint.get('cpu_model', '?')}); new device: "
               f"{Path(table_path).name} ({meta.get('fingerprint', {}).get('cpu_model', '?')}); "
               f"{len(refs)} reference architectures, {len(test)} test and {len(pool)} pool table networks")

    results: dict[str, dict[str, list[dict]]] = {name: {} for name in sets}

    def record(method: str, pred) -> None:
        for name, (cands, y) in sets.items():
            results[name].setdefault(method, []).append(metrics(y, pred.predict_specs(cands)[0]))

    record("base", base)
    for k in [int(s) for s in shots.split(",") if s.strip()]:
        if k > len(pool):
            click.echo(f"skipping {k} shots: the pool has {len(pool)} networks")
            continue
        for d in range(draws):
            pick = [pool[i] for i in np.random.default_rng(seed * 1000 + k * 37 + d).choice(len(pool), k, replace=False)]
            specs, y = [n["specs"] for n in pick], np.array([n["ms"] for n in pick])
            scale = float(np.median(y / base.predict_specs(specs)[0]))
            scaled = _Scaled(base, scale)
            record(f"base x scale, {k} shots", scaled)
            record(f"base + adapter, {k} shots", adapt(base, specs, y, device="new-device"))
    t0 = time.time()
    test_ids = {n["id"] for n in test}
    train_df = df[~((df["category"] == "network") & df["config_id"].isin(test_ids))]
    native = Predictor(num_threads=1, seed=seed).fit(train_df, meta)
    record("native (new device's table, test networks out)", native)
    click.echo(f"native predictor trained in {time.time() - t0:.0f} s")

    for name, by_method in results.items():
        click.echo(f"\n{name} on the new device, within ±10%:")
        for method, ms in by_method.items():
            click.echo(f"  {method:<52} {_fmt(ms)}")
    if out:
        Path(out).write_text(json.dumps(results, indent=1))


class _Scaled:
    """A predictor's batch path times one factor."""

    def __init__(self, base, factor: float):
        self.base, self.factor = base, factor

    def predict_specs(self, cands):
        return tuple(a * self.factor for a in self.base.predict_specs(cands))


if __name__ == "__main__":
    main()
