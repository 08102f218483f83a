"""`train`: train an architecture on your data with a standard recipe; writes model.pt and model.onnx."""
from __future__ import annotations

import json
from pathlib import Path

import click

from scripts.cli import EXIT_USAGE, cli_errors, fail, set_torch_threads

EPILOG = """\b
ARCH is a known model (resnet20, resnet56, mobilenet_v2, ... see `known-models`), a point of a
baseline-derived space (resnet20:own-d3-w1|mb6k3-d2-w0.75-se|own-d3-w1, as `search --baseline`
writes it), a search's best.json, or a model.pt written by `train` or a search's best.pt.

\b
Examples:
  train resnet20 --data digits --epochs 10 --out runs/train-resnet20
  train runs/search/best.json --data ./cifar10 --epochs 15 --out runs/train-best
  train runs/search/best.json --data ./cifar10 --teacher runs/train-resnet56/model.pt --distill 0.5

\b
Outputs in --out: model.pt (architecture + weights, loads without pickle), model.onnx, result.json
(test accuracy, recipe, per-epoch history) and checkpoint.pt (written each epoch: the same command
resumes an interrupted run). An image folder with train/ and test/ is trained on train/ and tested on
test/; other data is split, 20% of each class held out for the test.
Exit codes: 0 done, 1 error, 2 usage error, 130 interrupted (the last finished epoch is kept).
"""

FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay",
         "label_smoothing": "--label-smoothing", "distill": "--distill", "warmup_epochs": "--warmup-epochs",
         "optimizer": "--optimizer", "schedule": "--schedule"}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.argument("arch")
@click.option("--data", default="digits", show_default=True, metavar="DIR|NPZ|digits",
              help="Your data: an image folder (class sub-directories, or train/ and test/ with them), an .npz "
                   "with x and y, or the bundled scikit-learn 'digits'.")
@click.option("--out", default="runs/train", show_default=True, type=click.Path(file_okay=False),
              help="Output directory.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True,
              help="SGD with Nesterov momentum 0.9, or AdamW.")
@click.option("--lr", type=float, help="Peak learning rate (default: SGD 0.1, AdamW 0.001, scaled by batch/128).")
@click.option("--weight-decay", type=float, help="Default: SGD 5e-4, AdamW 0.05 (never on BatchNorm and biases).")
@click.option("--schedule", type=click.Choice(["cosine", "onecycle"]), default="cosine", show_default=True)
@click.option("--warmup-epochs", type=float, default=0.0, show_default=True, help="Linear warm-up (cosine only).")
@click.option("--label-smoothing", type=float, default=0.1, show_default=True)
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Random translation by up to 1/8 of the size, and horizontal flips for images of 16 pixels "
                   "or more.")
@click.option("--teacher", type=click.Path(dir_okay=False), metavar="MODEL.pt",
              help="Distil from this trained network (e.g. the baseline's model.pt from `train`).")
@click.option("--distill", type=float, default=None,
              help="Weight of the distillation term in [0, 1] (default 0.5 with --teacher, else 0).")
@click.option("--temperature", type=float, default=4.0, show_default=True, help="Distillation temperature.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--image-size", type=click.IntRange(min=4), default=None, metavar="PIXELS",
              help="Resize the images to PIXELS x PIXELS (as `search --image-size`; default: as they are).")
@click.option("--max-per-class", type=int, default=None, metavar="N",
              help="Train on at most N images per class (a quicker, smaller run).")
@click.option("--device", default="cpu", show_default=True, help="torch device (cpu, cuda, cuda:1, ...).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads (default: torch's own; 1 lets two trainings share a 2-core machine).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where decoded image folders are cached (default: $HWNAS_CACHE or ~/.cache/hwnas).")
@click.option("--overwrite", is_flag=True, help="Start over, replacing an earlier run's outputs in --out.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar with ETA.")
@click.option("--json", "as_json", is_flag=True, help="Print result.json on stdout.")
def main(arch, data, out, epochs, batch_size, optimizer, lr, weight_decay, schedule, warmup_epochs, label_smoothing,
         augment, teacher, distill, temperature, seed, image_size, max_per_class, device, threads, cache_dir, overwrite,
         progress, as_json):
    """Train ARCH on your data with a standard recipe and test it; resumable."""
    with cli_errors(FLAGS):
        from search.training import TrainRecipe, TrainError
        recipe = _recipe(TrainRecipe, TrainError, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                         weight_decay=weight_decay, schedule=schedule, warmup_epochs=warmup_epochs,
                         label_smoothing=label_smoothing, augment=augment,
                         distill=(0.5 if teacher else 0.0) if distill is None else distill,
                         temperature=temperature, seed=seed)
        if recipe.distill > 0 and not teacher:
            fail("--distill needs --teacher (a model.pt written by `train`, e.g. the baseline's)", EXIT_USAGE)
        if teacher and not Path(teacher).is_file():
            fail(f"--teacher {teacher}: no such file", EXIT_USAGE)
        outp = Path(out)
        if outp.exists() and not outp.is_dir():
            fail(f"--out {out}: exists and is not a directory", EXIT_USAGE)
        if threads:
            set_torch_threads(threads)
        from search.training import train_architecture
        # a SearchError (unreadable data, wrong teacher...) is shown by cli_errors, its settings as flags
        result = train_architecture(arch, data, outp, recipe, teacher=teacher, max_per_class=max_per_class, device=device,
                                    cache_dir=cache_dir, overwrite=overwrite, progress=progress,
                                    log=None if as_json else click.echo, image_size=image_size)
        if as_json:
            click.echo(json.dumps(result, indent=2))
        else:
            click.echo(f"{result['arch']}: test accuracy {result['test_accuracy']:.2f}% on {result['n_test']:,} images "
                       f"after {result['epochs']} epochs ({result['train_seconds']:.0f} s of training); "
                       f"wrote {outp / 'model.pt'} and {outp / 'model.onnx'}")


def _recipe(cls, error, **kw):
    try:
        return cls(**kw)
    except error as e:
        fail(str(e), EXIT_USAGE)


if __name__ == "__main__":
    main()
