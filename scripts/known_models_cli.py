"""`known-models`: the latency of every known architecture on a target, against its published top-1."""
from __future__ import annotations

import json
from pathlib import Path

import click

from scripts.cli import EXIT_USAGE, cli_errors, fail, set_torch_threads, target_threads

EPILOG = """\b
Examples:
  known-models                                   # predicted on this machine (local-cpu)
  known-models --measure --out runs/known        # measured here too, chart in runs/known/
  known-models --predictor pi4.lgb --target raspberry-pi-4 --json

\b
The chart (--out DIR/known_models.png) plots latency against published top-1, one panel per dataset
(ImageNet models at 224 px, the CIFAR ResNets at 32 px); hollow points are dominated: another model is
at least as accurate and at least as fast. Start a search from a model on the frontier with
`search --baseline NAME`.
Exit codes: 0 done, 1 error, 2 usage error, 130 interrupted.
"""


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.option("--target", default="local-cpu", show_default=True, help="Target to predict (and measure) on.")
@click.option("--predictor", default="auto", show_default=True, metavar="FILE|auto",
              help="A .lgb predictor of the target, or auto: the shipped predictor that best matches this machine.")
@click.option("--measure", is_flag=True, help="Also measure every model on this machine through the profiling "
              "runner (a few seconds each; the ImageNet ResNets take longest).")
@click.option("--models", default=None, metavar="NAME,...", help="Only these models (default: all).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Write known_models.png and known_models.json here.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON on stdout.")
def main(target, predictor, measure, models, out, as_json):
    """Predict (or measure) the latency of every known model on a target and draw their frontier."""
    with cli_errors({"predictor": "--predictor", "target": "--target"}):
        from scripts.predict_latency import choose_predictor
        from search.spaces.known import get_known
        from search.known_latency import known_model_rows, plot_known_frontier
        from search.models import load_predictor
        from search.spaces.base import SpaceError
        try:
            chosen = [get_known(m) for m in models.split(",")] if models else None
        except SpaceError as e:
            fail(f"--models: {e}", EXIT_USAGE)
        path, how = choose_predictor(predictor, target)
        pred = load_predictor(path)
        if pred.target_name != target:
            fail(f"--predictor {path} was built for target {pred.target_name!r}, not {target!r}", EXIT_USAGE)
        device = None
        if measure:
            from profiling.targets import get_target
            from search.verify import RunnerDevice
            tgt = get_target(target)
            set_torch_threads(target_threads(tgt))
            device = RunnerDevice(tgt)
            device.connect()
        log = (lambda m: click.echo(m, err=True))
        if how and not as_json:
            log(how)
        try:
            rows = known_model_rows(pred, device=device, models=chosen, log=None if as_json else log)
        finally:
            if device is not None:
                device.close()
        payload = {"target": target, "predictor": str(path), "measured": bool(measure),
                   "models": [r.to_dict() for r in rows]}
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "known_models.json").write_text(json.dumps(payload, indent=2))
            plot_known_frontier(rows, Path(out) / "known_models.png",
                                f"known models on {target} ({'measured' if measure else 'predicted by ' + Path(path).name})")
        if as_json:
            click.echo(json.dumps(payload, indent=2))
            return
        click.echo(f"{'model':<20} {'top-1':>6} {'dataset':<9} {'px':>4} {'params':>8} {'mem MB':>8} "
                   f"{'predicted ms':>13}{' measured ms' if measure else ''}  frontier")
        for r in sorted(rows, key=lambda r: (r.dataset, r.latency_ms or 0)):
            meas = f" {r.measured_ms:11.3f}" if measure else ""
            click.echo(f"{r.name:<20} {r.top1:6.2f} {r.dataset:<9} {r.resolution:>4} {r.params / 1e6:7.2f}M "
                       f"{r.memory_mb:8.1f} {r.predicted_ms:13.3f}{meas}  {'dominated' if r.dominated else 'yes'}")
        if out:
            click.echo(f"wrote {Path(out) / 'known_models.png'} and {Path(out) / 'known_models.json'}")


if __name__ == "__main__":
    main()
