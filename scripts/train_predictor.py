"""`train-predictor`: build a latency predictor from profiled tables, or adapt one to a new device.

    train-predictor --table data/tables/local-cpu.parquet --out data/predictors/local-cpu.lgb
    train-predictor --table data/tables/local-cpu.parquet --networks data/networks/local-cpu.csv --out local-cpu.lgb
    train-predictor --adapt-from local-cpu.lgb --networks measured.csv --out pi4.lgb --device raspberry-pi-4
    train-predictor --calibrate --out here.lgb            # this machine, from the closest shipped predictor
"""
from __future__ import annotations

import sys
import time

import click


def _fmt(m: dict) -> str:
    s = f"{m['within10']:6.1%} within ±10%   MAPE {m['mape']:6.1%}   Spearman {m['spearman']:.3f}"
    if "coverage" in m:
        s += f"   80% interval coverage {m['coverage']:.0%}"
    return s + f"   (n={m['n']})"


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--table", "tables", multiple=True, type=click.Path(), help="Latency table (Parquet); repeat to merge.")
@click.option("--out", required=True, type=click.Path(), help="The predictor file to write (.lgb).")
@click.option("--adapt-from", type=click.Path(), help="Base predictor to adapt to a new device (few-shot).")
@click.option("--networks", type=click.Path(), help="Measured networks (CSV or Parquet; columns latency_ms and "
              "onnx | network_spec | kernel_specs; optional name, family, target). With --table: real architectures "
              "measured on the table's target, added to the graph model's training. With --adapt-from: 10-50 "
              "networks measured on the new device.")
@click.option("--network-weight", default=5.0, show_default=True,
              help="With --table --networks: how many table networks one measured network counts for.")
@click.option("--device", default=None, help="With --adapt-from: the new device's target name.")
@click.option("--calibrate", "calibrate_here", is_flag=True,
              help="Measure a few random networks on this machine (a few minutes) and adapt the closest predictor "
                   "(--adapt-from FILE or DIR, default the shipped data/predictors) into --out, with this machine's "
                   "fingerprint.")
@click.option("--calibration-networks", default=24, show_default=True, help="With --calibrate: networks to measure.")
@click.option("--target", default="local-cpu", show_default=True, help="With --calibrate: the target to measure.")
@click.option("--holdout", default=0.2, show_default=True, help="Share of networks held out for the report.")
@click.option("--threads", default=1, show_default=True, help="LightGBM threads.")
@click.option("--seed", default=0, show_default=True)
def main(tables, out, adapt_from, networks, network_weight, device, calibrate_here, calibration_networks, target,
         holdout, threads, seed):
    """Train a latency predictor on profiled tables, or adapt one with a few measured networks."""
    from predictors import Predictor, PredictorError, PredictorFileError
    from profiling.errors import ProfilingError
    try:
        if calibrate_here:
            if tables or networks:
                _fail("--calibrate measures its own networks: give neither --table nor --networks")
            from pathlib import Path

            from predictors.calibrate import calibrate
            base = adapt_from or str(Path(__file__).resolve().parents[1] / "data" / "predictors")
            res = calibrate(base, target=target, out=out, networks=calibration_networks, seed=seed,
                            progress=click.echo)
            click.echo(f"base: {res.base_description}")
            click.echo(res.summary())
            click.echo(f"wrote {res.path} (fingerprint of this machine)")
            return
        if adapt_from:
            if tables:
                _fail("--table and --adapt-from are exclusive: adapt with --networks, or train with --table")
            if not networks:
                _fail("--adapt-from needs --networks FILE (10-50 networks measured on the new device)")
            from predictors.measured import read_networks_file
            base = Predictor.load(adapt_from, num_threads=threads)
            measured = read_networks_file(networks)
            new = base.adapt(measured.candidates, measured.latency_ms, device=device or f"{base.target_name}-adapted")
            a = new.adapters[-1]
            click.echo(f"adapted {adapt_from} (target {base.target_name}) to {new.target_name} "
                       f"with {a['n_networks']} measured networks")
            click.echo(f"leave-one-out: {_fmt(a['loo'])}")
            click.echo("ensemble (by leave-one-out error): " + "; ".join(
                f"{m['space']} {m['kind']} lambda={m['lambda']:g}" for m in a["members"]))
            new.save(out)
            click.echo(f"wrote {out}")
            return
        if not tables:
            _fail("give at least one --table PATH (or --adapt-from BASE --networks FILE)")
        t0 = time.time()
        p = Predictor(num_threads=threads, seed=seed, real_network_weight=network_weight)
        p.fit(list(tables), holdout=holdout, log=click.echo, networks=networks)
        tr = p.training
        click.echo(f"trained on {tr.get('kernel_rows', 0)} kernel rows and {tr.get('networks', 0)} networks "
                   f"of target {p.target_name} in {time.time() - t0:.1f}s")
        for kind, v in sorted(tr.get("kernel_cv", {}).items()):
            q = f", quiet rows {v['quiet_within10']:.0%} (n={v['quiet_n']})" if "quiet_within10" in v else ""
            click.echo(f"  kernel {kind:16s} {v['variant']:8s} CV {v['within10']:6.1%} within ±10%, MAPE "
                       f"{v['mape']:6.1%} (n={v['n']}){q}")
        if "graph_choice" in tr:
            click.echo(f"graph correction: {tr['graph_choice']} (CV mean |log error|: " + ", ".join(
                f"{t} {v['mean_abs_log_err']:.3f}" for t, v in tr["graph_cv"].items()) + ")")
        if "blocks_kernel_sum" in tr:
            click.echo(f"blocks as the sum of their kernels: {_fmt(tr['blocks_kernel_sum'])}")
        h = tr.get("holdout")
        if h:
            click.echo(f"held-out networks ({h['test_networks']} of {h['test_networks'] + h['train_networks']}, "
                       "never seen by the graph model):")
            click.echo(f"  FLOPs-only fit    {_fmt(h['flops_only'])}")
            click.echo(f"  sum of kernels    {_fmt(h['kernel_sum'])}")
            click.echo(f"  full predictor    {_fmt(h['full'])}")
        else:
            click.echo(f"note: {tr.get('networks', 0)} networks are too few for a held-out report (need 10)")
        p.save(out)
        Predictor.load(out).write_tree_cache()
        click.echo(f"wrote {out}")
    except (PredictorError, PredictorFileError, ProfilingError) as e:
        _fail(str(e))


if __name__ == "__main__":
    main()
