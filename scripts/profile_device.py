"""`profile-device`: measure a device into a per-hardware latency table.

A thin layer over `profiling.profiler.Profiler`: it parses options, shows a progress bar
with an ETA and prints a summary. Every user error is a one-line message and a non-zero
exit status, never a traceback.
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from profiling.errors import ProfilingError
from profiling.kernels import KINDS
from profiling.targets import TargetError, list_targets
from scripts.cli import EXIT_CODES_HELP, cli_errors, error_text, exit_interrupted

FLAGS = {"target_name": "--target", "hosts": "--host", "host": "--host", "models": "--models", "families": "--families",
         "out": "--out", "targets_file": "--targets-file", "ssh_config": "--ssh-config",
         "remote_python": "--remote-python"}


def check_args(target_name, targets_file, hosts, ssh_config, out, families, models, overwrite) -> None:
    """Every name, path and host syntax, before any device is touched (ConfigError names the parameter)."""
    from profiling.networks import FAMILIES
    from profiling.validate import (ConfigError, check_choice, check_host, check_input_file, check_output_dir,
                                    check_output_file)
    check_input_file("targets_file", targets_file, "TOML targets file")
    check_input_file("ssh_config", ssh_config, "ssh config file")
    try:
        known = list_targets(targets_file)
    except TargetError as e:
        raise ConfigError("targets_file", str(e)) from None
    check_choice("target_name", target_name, known, "target")
    for h in hosts:
        check_host("hosts", h)
    for f in families or ():
        check_choice("families", f, FAMILIES, "network family")
    for m in models:
        if not Path(m).exists():
            raise ConfigError("models", f"no such ONNX file or folder: {m}")
    if out is None:
        return
    if models:
        p = Path(out)
        check_output_file("out", p / "measured-networks.csv" if p.is_dir() else p, overwrite)
    elif Path(out).is_dir() or not Path(out).suffix:
        check_output_dir("out", out, overwrite=True)  # a table in it resumes, it is never replaced
    else:
        check_output_file("out", out, overwrite=True)


def _print_targets(console: Console, targets_file) -> None:
    targets = list(list_targets(targets_file).values())
    width = max(len(t.name) for t in targets)
    for t in targets:
        providers = "+".join(p.replace("ExecutionProvider", "") for p in t.providers)
        console.print(f"{t.name:<{width}}  {t.form}: {providers}, threads={t.threads or 'all'}, "
                      f"arch={t.arch or 'any'}", soft_wrap=True)
        console.print(f"{'':<{width}}  {t.description}", soft_wrap=True, style="dim")


class _Progress:
    """Turns Profiler events into a rich progress bar."""

    def __init__(self, console: Console, quiet: bool):
        self.console = console
        self.quiet = quiet
        self.bar: Progress | None = None
        self.task = None
        self.by_time = False
        self.t0 = time.monotonic()
        self.total = 0

    def __call__(self, event: str, **info) -> None:
        if event == "start":
            fp = info["fingerprint"]
            self.console.print(f"[bold]profiling[/] target [cyan]{info['target']}[/] on "
                               f"{', '.join(info['hosts'])}: {fp.get('cpu_model')}"
                               + (f", {fp['gpu']}" if fp.get("gpu") else "")
                               + f", {fp['runtime']} {fp['runtime_version']} {fp['provider']}, "
                               f"{fp['threads']} thread(s), {fp['precision']}, batch {fp['batch']}")
            self.console.print(f"table: {info['out']}" + (f" (resuming: {info['resumed']} rows already measured)"
                                                           if info["resumed"] else ""))
            kt, nt = info["kernel_target"], info["network_target"]
            if kt is not None and nt is not None and not info["budget_s"]:
                self.total = max(0, kt - info["kernel_rows"]) + max(0, nt - info["network_rows"])
                self.by_time = False
            else:
                self.total = int(info["budget_s"] or 1)
                self.by_time = True
            if not self.quiet:
                self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                    TextColumn("{task.fields[rows]}"), MofNCompleteColumn() if not self.by_time
                                    else TextColumn(""), TimeElapsedColumn(), TextColumn("ETA"),
                                    TimeRemainingColumn(), console=self.console, transient=False)
                self.bar.start()
                self.task = self.bar.add_task("measuring", total=self.total, rows="")
        elif event == "row" and self.bar is not None:
            rows = f"{info['kernel_rows']} kernels+blocks, {info['network_rows']} networks"
            if self.by_time:
                self.bar.update(self.task, completed=min(self.total, info["elapsed"]), rows=rows)
            elif info["new"]:
                self.bar.update(self.task, advance=1, rows=rows)
            else:
                self.bar.update(self.task, rows=rows)
        elif event == "drift":
            e = info["drift"]
            if e.get("baseline_reset"):
                msg = f"[yellow]drift[/] on {e['host']}: {e['sentinel']} sentinel baseline reset to {e['baseline_ms']:.3f} ms"
            elif e.get("tolerance_widened"):
                why = (f"holds two levels ({e['levels_ms'][0]:.3f} and {e['levels_ms'][1]:.3f} ms)" if e.get("levels_ms")
                       else "keeps showing excursions gone by the next check")
                msg = (f"[yellow]noise[/] on {e['host']}: the {e['sentinel']} sentinel {why}; its tolerance widens "
                       f"from ±{e['old_tolerance']:.0%} to ±{e['tolerance']:.0%}")
            else:
                msg = (f"[yellow]drift[/] on {e['host']}: {e['sentinel']} sentinel {e['sentinel_ms']:.3f} ms vs baseline "
                       f"{e['baseline_ms']:.3f} ms ({(e['ratio'] - 1) * 100:+.0f}%): re-measuring {e['remeasure']} "
                       f"configurations")
            self.console.print(msg)
        elif event == "note" and not self.quiet:
            self.console.print(f"[dim]{info['message']}[/]")
        elif event == "end":
            self.stop()

    def stop(self) -> None:
        if self.bar is not None:
            if self.by_time and self.task is not None:
                self.bar.update(self.task, completed=self.total)
            self.bar.stop()
            self.bar = None


def _print_summary(console: Console, s) -> None:
    console.print(f"[bold green]done[/] ({s.stopped_by}) in {s.elapsed_s:.0f} s: {s.rows_new} new rows "
                  f"({s.new_kernels} kernels+blocks, {s.new_networks} networks"
                  + (f", {s.refined} from adaptive refinement" if s.refined else "") + ")")
    console.print(f"table {s.out_path}: {s.rows_total} rows ({s.kernels} kernels, {s.blocks} blocks, "
                  f"{s.networks} networks), fingerprint {s.fingerprint_hash}")
    drift = [e for e in s.drift_events if "ratio" in e]
    resets = sum(1 for e in s.drift_events if e.get("baseline_reset"))
    widened = sum(1 for e in s.drift_events if e.get("tolerance_widened"))
    console.print(f"drift events: {len(drift)}" + (f" (+{resets} baseline resets)" if resets else "")
                  + (f" (+{widened} noisy-sentinel tolerances widened)" if widened else "")
                  + f", re-measured configurations: {s.remeasured}"
                  + (f", failed configurations: {len(s.failed)}" if s.failed else ""))
    if s.stopped_by == "interrupted":
        console.print("interrupted: every measured row is in the table; run the same command again to resume")
    for f in s.failed[:5]:
        console.print(f"  [red]failed[/] {f['kind']} {f['config_id']}: {f['error']}")


def _measure_models(console, err, models, family, target, targets_file, hosts, ssh_config, remote_python,
                    out, quiet, rounds=1) -> None:
    from profiling.measure import measure_models, write_measured_networks
    files = []
    for m in models:
        p = Path(m)
        files += sorted(p.glob("*.onnx")) if p.is_dir() else [p]
    if not files:
        err.print(f"error: no .onnx file in {', '.join(models)}", soft_wrap=True)
        sys.exit(2)
    if len(hosts) > 1:
        err.print("error: --models measures on one device: give at most one --host", soft_wrap=True)
        sys.exit(2)
    out_csv = Path(out or "measured-networks.csv")
    if out_csv.is_dir():
        out_csv = out_csv / "measured-networks.csv"

    def report(i, n, m):
        if not quiet:
            console.print(f"[{i}/{n}] {m.name}: {m.median_ms:.3f} ms (p10-p90 {m.p10_ms:.3f}-{m.p90_ms:.3f}, {m.runs} runs)")
    try:
        res = measure_models(files, target, host=hosts[0] if hosts else None, remote_python=remote_python,
                             ssh_config=ssh_config, targets_file=targets_file, progress=report, rounds=rounds)
    except ProfilingError as e:
        err.print(f"[red]error:[/] {error_text(e, FLAGS)}", soft_wrap=True)
        sys.exit(1)
    write_measured_networks(out_csv, res, target.name, family)
    console.print(f"wrote {len(res)} measured networks to {out_csv} (train-predictor --networks {out_csv})")


def _print_resource(console, target, hosts, ssh_config, remote_python) -> None:
    from profiling.fingerprint import fingerprint_hash, make_fingerprint
    from profiling.fleet import device_resource
    from profiling.measure import connect
    from scripts.cli import usage_error
    if len(hosts) > 1:
        usage_error("--ray-resource names one device: give at most one --host")
    with cli_errors(FLAGS):
        conn = connect(target, hosts[0] if hosts else None, remote_python, ssh_config)
    conn.close()
    console.print(device_resource(target.name, fingerprint_hash(make_fingerprint(conn.facts or {}, target))))


def _parse_kinds(text: str | None) -> list[str] | None:
    if not text:
        return None
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS and k != "network"]
    if bad:
        raise click.BadParameter(f"unknown kind(s) {', '.join(bad)}; valid kinds: {', '.join(KINDS)}, network",
                                 param_hint="--kinds")
    return kinds


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog="\b\n" + EXIT_CODES_HELP)
@click.option("--target", "target_name", default="local-cpu", show_default=True, help="Target preset (see --list-targets).")
@click.option("--targets-file", type=click.Path(dir_okay=False), help="TOML file with [targets.NAME] tables.")
@click.option("--list-targets", "show_targets", is_flag=True, help="List the targets and exit.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              help="Deploy the target in this precision (int8: every kernel, block and network is quantized "
                   "by onnxruntime's static quantizer before it is measured). Default: the target's.")
@click.option("--batch", type=click.IntRange(min=1),
              help="Measure at this batch size (throughput = batch / latency). Default: the target's.")
@click.option("--host", "hosts", multiple=True, metavar="USER@HOST[:PORT]",
              help="Measure on this device over SSH; repeat for several identical devices.")
@click.option("--ssh-config", type=click.Path(dir_okay=False), help="ssh config file (passed as ssh -F).")
@click.option("--remote-python", default="python3", show_default=True, help="Python on the device.")
@click.option("--out", type=click.Path(), help="Output table (.parquet) or directory; default: a name from the fingerprint.")
@click.option("--overwrite", is_flag=True, help="With --models: replace an existing --out CSV.")
@click.option("--budget-minutes", type=click.FloatRange(min=0, min_open=True), help="Stop after this many minutes.")
@click.option("--max-configs", type=click.IntRange(min=1), help="Kernel and block configurations in the table (default 5000 without a budget).")
@click.option("--networks", type=click.IntRange(min=0), help="Whole networks in the table (default: 6 percent of --max-configs).")
@click.option("--kinds", "kinds_text", metavar="KIND,KIND,...", help="Only these kinds ('network' for networks only).")
@click.option("--families", "families_text", metavar="FAMILY,FAMILY,...",
              help="Whole networks only from these generator families (mobilenet, resnet, vit, mixed, regnet, "
                   "oddwidth, dense, csp, inception, repblock, fpn, unet, hybrid, mixer).")
@click.option("--models", "models", multiple=True, type=click.Path(), metavar="MODEL.onnx",
              help="Instead of a table: measure these whole ONNX models on the target (repeat; a folder "
                   "means its *.onnx) into a measured-networks CSV (--out, default measured-networks.csv) for "
                   "train-predictor --networks.")
@click.option("--family", default="measured", show_default=True, help="With --models: the family column.")
@click.option("--passes", "--rounds", "rounds", type=click.IntRange(min=1), default=8, show_default=True,
              help="With --models: interleave, measuring the whole list this many times round-robin (at least "
                   "0.25 s per model per pass), and keep each model's median over the passes (a machine that "
                   "changes speed for seconds at a time then moves one pass of every model, not a few models).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue an existing table with the same fingerprint (--no-resume starts it over).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Measure through device actors in a Ray cluster (ADDRESS: the head's HOST:PORT, or 'auto' for "
                   "one started on this machine; none: join the local one or start a private one). Every node "
                   "declaring the target's device resource (see --ray-resource) and every --host gets an actor; "
                   "this process alone writes the table. Needs the 'distributed' extra (docs/distributed.md).")
@click.option("--ray-resource", "show_resource", is_flag=True,
              help="Print the Ray resource that names this target's device here (or on --host) and exit: "
                   "pass it to `ray start --resources` on the node beside the device.")
@click.option("--focus", "focus_text", metavar="NAME,NAME,...",
              help="Only these configurations, a supplement to a table (no refinement): dilation-beyond-map "
                   "(3x3 convs dilated at or beyond their map, DeepLab's ASPP), gemv-beyond-llc (linear weights "
                   "beyond the device's last-level cache), depthwise-conv-add (MobileOne/FastViT branches). "
                   "Their kinds are profiled unless --kinds says otherwise; merge the result with "
                   "`train-predictor --table A --table B`.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(target_name, targets_file, show_targets, precision, batch, hosts, ssh_config, remote_python, out, overwrite,
         budget_minutes, max_configs, networks, kinds_text, families_text, models, family, rounds, seed, resume,
         ray_address, focus_text, show_resource, quiet):
    """Profile a device into a latency table (Parquet): kernels, blocks and whole networks."""
    console = Console(stderr=False, highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if show_targets:
        try:
            _print_targets(console, targets_file)
        except TargetError as e:
            err.print(f"[red]error:[/] {error_text(e, FLAGS)}", soft_wrap=True)
            sys.exit(2)
        return
    families = [f.strip() for f in families_text.split(",") if f.strip()] if families_text else None
    with cli_errors(FLAGS):
        check_args(target_name, targets_file, hosts, ssh_config, out, families, models, overwrite)
    from profiling.targets import get_target
    target = get_target(target_name, targets_file).with_form(precision, batch)  # checked above
    if show_resource:
        _print_resource(console, target, hosts, ssh_config, remote_python)
        return
    if models:
        _measure_models(console, err, models, family, target, targets_file, hosts, ssh_config, remote_python,
                        out, quiet, rounds)
        return
    from profiling.profiler import Profiler  # after the cheap paths: it imports onnx/lightgbm

    kinds = _parse_kinds(kinds_text)
    progress = _Progress(console, quiet)

    def _terminate(signum, frame):  # SIGTERM (kill, timeout) stops as cleanly as Ctrl-C
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _terminate)
    try:
        profiler = Profiler(target, out, hosts=list(hosts), kinds=kinds, families=families,
                            budget_minutes=budget_minutes,
                            max_configs=max_configs, networks=networks, seed=seed, resume=resume,
                            targets_file=targets_file, ssh_config=ssh_config, remote_python=remote_python,
                            progress=progress, ray_address=ray_address,
                            focus=[f.strip() for f in focus_text.split(",") if f.strip()] if focus_text else None)
        summary = profiler.run()
    except ProfilingError as e:
        progress.stop()
        err.print(f"[red]error:[/] {error_text(e, FLAGS)}", soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        progress.stop()
        err.print("interrupted: the table keeps every row measured so far; run the same command to resume")
        exit_interrupted(None)
    progress.stop()
    _print_summary(console, summary)
    if summary.stopped_by == "interrupted":
        sys.exit(130)


if __name__ == "__main__":
    main()
