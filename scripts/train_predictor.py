"""`train-predictor`: build a latency predictor from profiled tables, or adapt one to a new device.

    train-predictor --table data/tables/local-cpu.parquet --out data/predictors/local-cpu.lgb
    train-predictor --table data/tables/local-cpu.parquet --networks data/networks/local-cpu.csv --out local-cpu.lgb
    train-predictor --adapt-from local-cpu.lgb --networks measured.csv --out pi4.lgb --device raspberry-pi-4
    train-predictor --calibrate --out here.lgb            # this machine, from the closest shipped predictor
"""
from __future__ import annotations

import time

import click

from scripts.cli import EXIT_CODES_HELP, EXIT_USAGE, cli_errors, fail


def _fmt(m: dict) -> str:
    s = f"{m['within10']:6.1%} within ±10%   MAPE {m['mape']:6.1%}   Spearman {m['spearman']:.3f}"
    if "coverage" in m:
        s += f"   80% interval coverage {m['coverage']:.0%}"
    return s + f"   (n={m['n']})"


# Below these a table is far too small for the figures train-predictor prints to mean anything:
# the shipped tables hold about 5,000 kernel and block rows and 300-600 networks.
MIN_KERNEL_ROWS, MIN_NETWORKS = 1000, 50

FLAGS = {"tables": "--table", "out": "--out", "adapt_from": "--adapt-from", "networks": "--networks"}


def _usage(msg: str) -> None:
    fail(msg, EXIT_USAGE)


def check_inputs(tables, out, adapt_from, networks, holdout, threads, network_weight, overwrite,
                 calibrate_here: bool = False) -> None:
    """Every path and number, before any training (ConfigError names the parameter)."""
    from profiling.validate import check_input_file, check_input_path, check_output_file, check_range
    for t in tables:
        check_input_file("tables", t, "latency table (Parquet)")
    if calibrate_here and adapt_from is not None:
        check_input_path("adapt_from", adapt_from, "predictor file or folder of predictors")
    else:
        check_input_file("adapt_from", adapt_from, "predictor file (.lgb)")
    check_input_file("networks", networks, "measured-networks file (CSV or Parquet)")
    check_range("holdout", holdout, 0, 0.9, optional=False)  # a share; 1 would hold every network out
    check_range("threads", threads, 1, None, optional=False)
    check_range("network_weight", network_weight, 0, None, optional=False)
    check_output_file("out", out, overwrite)


def small_table_warning(tr: dict) -> str | None:
    rows, nets = int(tr.get("kernel_rows", 0)), int(tr.get("networks", 0))
    if rows >= MIN_KERNEL_ROWS and nets >= MIN_NETWORKS:
        return None
    return (f"the table is far too small to train a predictor you can trust: {rows} kernel rows and {nets} networks "
            f"(at least {MIN_KERNEL_ROWS} and {MIN_NETWORKS} are needed; the shipped tables have about 5,000 and "
            f"300-600). The figures above rest on a handful of points. Profile longer (profile-device --minutes 20 "
            f"resumes into the same table) and train again.")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog="\b\n" + EXIT_CODES_HELP)
@click.option("--table", "tables", multiple=True, type=click.Path(), help="Latency table (Parquet); repeat to merge.")
@click.option("--out", required=True, type=click.Path(), help="The predictor file to write (.lgb); an existing file "
              "is replaced only with --overwrite.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
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
@click.option("--calibration-networks", default=24, show_default=True, type=click.IntRange(min=2),
              help="With --calibrate: networks to measure.")
@click.option("--calibration-set", type=click.Choice(["generated", "real"]), default="real", show_default=True,
              help="With --calibrate: random networks of the profiler's generator, or published architectures "
                   "(ResNet, MobileNet, EfficientNet, RegNet, ViT, Mixer, CSP, RepVGG, Inception at 160-224 px), "
                   "which carry to real models better.")
@click.option("--target", default="local-cpu", show_default=True, help="With --calibrate: the target to measure.")
@click.option("--holdout", default=0.2, show_default=True, help="Share of networks held out for the report.")
@click.option("--threads", default=1, show_default=True, help="LightGBM threads.")
@click.option("--seed", default=0, show_default=True)
def main(tables, out, overwrite, adapt_from, networks, network_weight, device, calibrate_here, calibration_networks,
         calibration_set, target, holdout, threads, seed):
    """Train a latency predictor on profiled tables, or adapt one with a few measured networks."""
    from predictors import Predictor
    with cli_errors(FLAGS):
        if calibrate_here:
            if tables or networks:
                _usage("--calibrate measures its own networks: give neither --table nor --networks")
            check_inputs(tables, out, adapt_from, networks, holdout, threads, network_weight, overwrite, True)
            from profiling.targets import list_targets
            from profiling.validate import check_choice
            check_choice("target", target, list_targets(), "target")
            from predictors.calibrate import SHIPPED_PREDICTORS, calibrate
            base = adapt_from or str(SHIPPED_PREDICTORS)
            res = calibrate(base, target=target, out=out, networks=calibration_networks, seed=seed,
                            network_set=calibration_set, progress=click.echo)
            click.echo(f"base: {res.base_description}")
            click.echo(res.summary())
            click.echo(f"wrote {res.path} (fingerprint of this machine)")
            return
        if adapt_from:
            if tables:
                _usage("--table and --adapt-from are exclusive: adapt with --networks, or train with --table")
            if not networks:
                _usage("--adapt-from needs --networks FILE (10-50 networks measured on the new device)")
        elif not tables:
            _usage("give at least one --table PATH (or --adapt-from BASE --networks FILE)")
        check_inputs(tables, out, adapt_from, networks, holdout, threads, network_weight, overwrite)
        if adapt_from:
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
        from predictors.features import KERNEL_KINDS
        from predictors.kernel_models import MIN_KIND_ROWS
        pooled = [k for k in KERNEL_KINDS if k not in p.kernel_models]
        if pooled:  # an older table lacks the newer kinds: say which ones fall back
            click.echo(f"  kinds without a model of their own (fewer than {MIN_KIND_ROWS} rows in the table), predicted "
                       f"by the pooled kernel model: {', '.join(pooled)}")
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
        small = small_table_warning(tr)
        if small:
            click.echo(f"warning: {small}", err=True)
        p.save(out)
        Predictor.load(out).write_tree_cache()
        click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
