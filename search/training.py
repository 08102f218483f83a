"""Training an architecture on the user's data with a standard recipe (the `train` command).

    from search.training import TrainRecipe, load_train_test, train_model
    train, test = load_train_test("digits")
    result = train_model(net, train, test, TrainRecipe(epochs=10), checkpoint="runs/t/checkpoint.pt")

The recipe: SGD with Nesterov momentum or AdamW; a cosine schedule with linear warm-up, or
one-cycle; random-translation (and, for images of 16 pixels or more, horizontal-flip)
augmentation; label smoothing; optional knowledge distillation from a teacher network (the
baseline): ``loss = (1 - a) * CE + a * T^2 * KL(teacher_T || student_T)``.

A checkpoint is written at the end of every epoch (model, optimizer, step, history); training
the same architecture with the same recipe again resumes from it, and a finished run returns its
result without training. A checkpoint of another architecture or recipe is refused with a
message, never silently overwritten.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from profiling.paths import cache_root
from search.accuracy.data import DataError, ImageDataset, load_dataset
from search.problem import SearchError
from search.accuracy.supernet import _augment as translate_and_flip
from search.architecture import checkpoint_payload, load_trained, resolve_architecture
from search.memory import skeleton_memory
from search.spaces.base import count_params, export_model_onnx
from search.spaces.skeleton import build_network
from search.wiring import torch_device


class TrainError(SearchError):
    """Training cannot start or continue; the message names the input and the fix."""


@dataclass(frozen=True)
class TrainRecipe:
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"              # sgd | adamw
    lr: float | None = None             # default: sgd 0.1 x batch/128, adamw 1e-3 x batch/128
    momentum: float = 0.9
    weight_decay: float | None = None   # default: sgd 5e-4, adamw 0.05
    schedule: str = "cosine"            # cosine (with warm-up) | onecycle
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.1
    augment: bool = True
    hflip: bool | None = None           # default: on for images of 16 pixels or more
    distill: float = 0.0                # weight of the distillation term (needs a teacher)
    temperature: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise TrainError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise TrainError(f"batch size must be at least 1, got {self.batch_size}")
        if self.optimizer not in ("sgd", "adamw"):
            raise TrainError(f"optimizer {self.optimizer!r}: use sgd or adamw")
        if self.schedule not in ("cosine", "onecycle"):
            raise TrainError(f"schedule {self.schedule!r}: use cosine or onecycle")
        if self.lr is not None and not self.lr > 0:
            raise TrainError(f"learning rate must be > 0, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise TrainError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.distill <= 1:
            raise TrainError(f"distillation weight must be in [0, 1], got {self.distill}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise TrainError(f"warm-up ({self.warmup_epochs} epochs) must be shorter than the training "
                             f"({self.epochs} epochs)")

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return (0.1 if self.optimizer == "sgd" else 1e-3) * self.batch_size / 128

    @property
    def decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 5e-4 if self.optimizer == "sgd" else 0.05

    def lr_factor(self, step: int, total: int, steps_per_epoch: int) -> float:
        """The learning rate at ``step`` as a fraction of :attr:`base_lr` (a function of the
        step alone, so a resumed run follows the same schedule)."""
        t = step / max(1, total)
        if self.schedule == "onecycle":  # linear up for 30%, cosine down to 1e-4 of the peak
            if t < 0.3:
                return 0.04 + 0.96 * t / 0.3
            return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (t - 0.3) / 0.7))
        warm = self.warmup_epochs * steps_per_epoch
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    def describe(self) -> str:
        opt = f"SGD (Nesterov, momentum {self.momentum:g})" if self.optimizer == "sgd" else "AdamW"
        sched = "one-cycle" if self.schedule == "onecycle" else \
            "cosine" + (f" with {self.warmup_epochs:g} warm-up epochs" if self.warmup_epochs else "")
        flips = {True: " + flips", False: "", None: " (+ flips from 16 px)"}[self.hflip]
        aug = "random translation" + flips if self.augment else "no augmentation"
        kd = f", distillation {self.distill:g} at T={self.temperature:g}" if self.distill else ""
        return (f"{self.epochs} epochs, batch {self.batch_size}, {opt} lr {self.base_lr:g} wd {self.decay:g}, "
                f"{sched}, {aug}, label smoothing {self.label_smoothing:g}{kd}, seed {self.seed}")


@dataclass
class TrainResult:
    test_accuracy: float
    epochs: int
    seconds: float                  # training time of this run and any run it resumed
    resumed_from: int               # epochs already done when this call started (0: fresh)
    history: list[dict] = field(default_factory=list)


# -------------------------------------------------------------------------------- data
def load_train_test(spec: str, max_per_class: int | None = None, test_fraction: float = 0.2, seed: int = 0,
                    cache_dir: str | Path | None = None, image_size: int | None = None
                    ) -> tuple[ImageDataset, ImageDataset]:
    """The user's training and test images, normalised with the training images' statistics.

    An image folder with ``train/`` and ``test/`` (or ``val/``) gives those two splits;
    anything else (``digits``, an .npz, a folder of class folders) is split, stratified, with
    ``test_fraction`` of each class held out for testing. A decoded image folder is cached as
    .npz in ``cache_dir`` (if given), so a second run does not decode the JPEGs again.
    ``image_size`` resizes the images (as a search's `data_image_size` does, so a searched network is
    trained at the resolution it was measured at).
    """
    p = Path(spec)
    try:
        if p.is_dir() and (p / "train").is_dir():
            test_dir = next((n for n in ("test", "val") if (p / n).is_dir()), None)
            if test_dir is None:
                raise TrainError(f"{spec}: has train/ but no test/ or val/ folder to test on")
            train = _cached_split(p, "train", max_per_class, seed, cache_dir)
            test = _cached_split(p, test_dir, None, seed, cache_dir)
            if train.classes != test.classes:
                raise TrainError(f"{spec}: train/ and {test_dir}/ have different classes")
        else:
            ds = load_dataset(spec, max_per_class=max_per_class, seed=seed)
            train, test = ds.split(test_fraction, seed=seed)
    except DataError as e:
        raise TrainError(f"`data` {spec}: {e}") from None
    if image_size is not None and train.shape[1:] != (image_size, image_size):
        def resize(d: ImageDataset) -> ImageDataset:
            x = torch.nn.functional.interpolate(d.x, size=(image_size, image_size), mode="bilinear",
                                                align_corners=False)
            return ImageDataset(x, d.y, d.classes, d.name)
        train, test = resize(train), resize(test)
    mean, std = train.stats()
    return train.normalized(mean, std), test.normalized(mean, std)


def _cached_split(root: Path, split: str, max_per_class: int | None, seed: int,
                  cache_dir: str | Path | None) -> ImageDataset:
    if cache_dir is None:
        return load_dataset(root, split=split, max_per_class=max_per_class, seed=seed)
    import hashlib
    key = hashlib.sha1(json.dumps([str(root.resolve()), split, max_per_class, seed]).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"images-{root.name}-{split}-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return ImageDataset(torch.from_numpy(z["x"]).float().div_(255.0), torch.from_numpy(z["y"]).long(),
                                [str(c) for c in z["classes"]], root.name)
    ds = load_dataset(root, split=split, max_per_class=max_per_class, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    import os
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # two trainings may decode the same folder at once
    np.savez(tmp, x=(ds.x * 255).round().to(torch.uint8).numpy(), y=ds.y.numpy(), classes=np.array(ds.classes))
    tmp.replace(path)
    return ds


# ---------------------------------------------------------------------------- training
def evaluate(net: nn.Module, data: ImageDataset, batch_size: int = 256) -> float:
    """Top-1 accuracy (%) in eval mode."""
    was = net.training
    net.eval()
    dev = next(net.parameters()).device
    correct = 0
    with torch.no_grad():
        for x, y in data.batches(batch_size, shuffle=False):
            correct += int((net(x.to(dev)).argmax(1) == y.to(dev)).sum())
    net.train(was)
    return 100.0 * correct / max(1, len(data))


def _augment(x: torch.Tensor, gen: torch.Generator, hflip: bool) -> torch.Tensor:
    return translate_and_flip(x, gen, hflip)


def _optimizer(net: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    # no weight decay on BatchNorm and biases (the usual recipe)
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.decay}, {"params": rest, "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.base_lr, momentum=recipe.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=recipe.base_lr)


def train_model(net: nn.Module, train: ImageDataset, test: ImageDataset, recipe: TrainRecipe,
                checkpoint: str | Path | None = None, teacher: nn.Module | None = None, identity: str = "",
                progress: bool = True, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``net`` in place on ``train`` and return its top-1 accuracy on ``test``.

    ``identity`` names the architecture in the checkpoint, which is resumed only when it has the
    same identity and recipe. ``teacher`` is needed when ``recipe.distill > 0``.
    """
    if recipe.distill > 0 and teacher is None:
        raise TrainError("distillation needs a teacher: give the trained baseline (`teacher`)")
    if len(train) == 0 or len(test) == 0:
        raise TrainError(f"no images to {'train' if len(train) == 0 else 'test'} on")
    hflip = recipe.hflip if recipe.hflip is not None else train.shape[-1] >= 16
    bs = min(recipe.batch_size, len(train))
    steps_per_epoch = max(1, len(train) // bs)
    total = recipe.epochs * steps_per_epoch
    opt = _optimizer(net, recipe)
    dev = next(net.parameters()).device
    signature = json.dumps({"identity": identity, "recipe": asdict(recipe), "n_train": len(train)}, sort_keys=True)
    start, history, seconds = 0, [], 0.0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("signature") != signature:
            raise TrainError(f"{ckpt} is a checkpoint of another architecture, recipe or dataset; "
                             f"use another output directory, or delete it to start over")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history, seconds = int(state["epoch"]), json.loads(state["history"]), float(state["seconds"])
        if log:
            log(f"resuming from {ckpt} at epoch {start}/{recipe.epochs}")
    if teacher is not None:
        teacher.eval().to(dev)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    resumed_from = start
    bar = _progress(progress)
    with bar:
        task = bar.add_task("training", total=total, completed=start * steps_per_epoch) if bar else None
        for epoch in range(start, recipe.epochs):
            t0 = time.perf_counter()
            net.train()
            order = np.random.default_rng([recipe.seed, epoch]).permutation(len(train))
            loss_sum, correct, seen = 0.0, 0, 0
            for pos in range(steps_per_epoch):
                step = epoch * steps_per_epoch + pos
                idx = torch.as_tensor(order[pos * bs:(pos + 1) * bs], dtype=torch.long)
                x, y = train.x[idx], train.y[idx]
                if recipe.augment:
                    x = _augment(x, torch.Generator().manual_seed(recipe.seed * 1_000_003 + step), hflip)
                x, y = x.to(dev), y.to(dev)
                for g in opt.param_groups:
                    g["lr"] = recipe.base_lr * recipe.lr_factor(step, total, steps_per_epoch)
                out = net(x)
                loss = criterion(out, y)
                if teacher is not None and recipe.distill > 0:
                    with torch.no_grad():
                        t_out = teacher(x)
                    T = recipe.temperature
                    kd = F.kl_div(F.log_softmax(out / T, 1), F.softmax(t_out / T, 1), reduction="batchmean") * T * T
                    loss = (1 - recipe.distill) * loss + recipe.distill * kd
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(y)
                correct += int((out.argmax(1) == y).sum())
                seen += len(y)
                if bar:
                    bar.update(task, advance=1, description=f"epoch {epoch + 1}/{recipe.epochs} loss {loss_sum / seen:.3f}")
            seconds += time.perf_counter() - t0
            history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": 100.0 * correct / seen,
                            "lr": opt.param_groups[0]["lr"], "seconds": round(seconds, 1)})
            if ckpt is not None:
                _save_checkpoint(ckpt, net, opt, epoch + 1, history, seconds, signature)
            if log:
                log(f"epoch {epoch + 1}/{recipe.epochs}: loss {loss_sum / seen:.3f}, train accuracy "
                    f"{100.0 * correct / seen:.1f}% [{seconds:.0f} s]")
    acc = evaluate(net, test)
    return TrainResult(acc, recipe.epochs, seconds, resumed_from, history)


def _save_checkpoint(path: Path, net, opt, epoch: int, history: list, seconds: float, signature: str) -> None:
    """Written to a temporary file and renamed: a kill mid-write leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                "history": json.dumps(history), "seconds": seconds, "signature": signature}, tmp)
    tmp.replace(path)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __bool__(self) -> bool:
        return False


def _progress(enabled: bool):
    if not enabled:
        return _NoBar()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=False)


def train_architecture(arch: str, data: str, out: Path, recipe: TrainRecipe, teacher: str | None = None, max_per_class: int | None = None,
              device: str = "cpu", cache_dir: str | None = None, overwrite: bool = False, progress: bool = True,
              log=None, image_size: int | None = None) -> dict:
    """Train ``arch`` (anything :func:`search.architecture.resolve_architecture` takes) on ``data``
    and write ``out``/model.pt, model.onnx, result.json (and checkpoint.pt, each epoch); returns
    result.json's content. A run interrupted in ``out`` resumes from its checkpoint."""
    dev = torch_device(device)
    cache = Path(cache_dir) if cache_dir else cache_root()
    train, test = load_train_test(data, max_per_class=max_per_class, seed=0, cache_dir=cache, image_size=image_size)
    c, h, _ = train.shape
    label, sk = resolve_architecture(arch, train.num_classes, c, h)
    ckpt = out / "checkpoint.pt"
    if overwrite:
        for name in ("checkpoint.pt", "model.pt", "model.onnx", "result.json"):
            (out / name).unlink(missing_ok=True)
    teacher_net = load_trained(teacher) if teacher else None
    torch.manual_seed(recipe.seed)
    net = build_network(sk).to(dev)
    if log:
        log(f"train {label} on {data}: {len(train):,} training and {len(test):,} test images, {h}x{h}, "
            f"{train.num_classes} classes; {count_params(net):,} parameters; {recipe.describe()}")
    res = train_model(net, train, test, recipe, checkpoint=ckpt, teacher=teacher_net, identity=json.dumps(
        {"arch": label, "skeleton": repr(sk), "teacher": str(teacher) if teacher else None}),
        progress=progress, log=log)
    net = net.cpu().eval()
    mem = skeleton_memory(sk)
    result = {"arch": label, "data": str(data), "test_accuracy": res.test_accuracy, "n_train": len(train),
              "n_test": len(test), "epochs": res.epochs, "train_seconds": round(res.seconds, 1),
              "resumed_from_epoch": res.resumed_from, "recipe": {**recipe.__dict__, "describe": recipe.describe()},
              "teacher": str(teacher) if teacher else None, "params": mem.params, "memory_mb": round(mem.total_mb, 3),
              "normalisation": {"mean": list(train.mean or ()), "std": list(train.std or ())},
              "history": res.history}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint_payload(label, sk, net.state_dict(), test_accuracy=res.test_accuracy,
                                  mean=list(train.mean or ()), std=list(train.std or ())), out / "model.pt")
    export_model_onnx(net, (c, h, h), out / "model.onnx")
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


__all__ = ["TrainError", "TrainRecipe", "TrainResult", "evaluate", "load_train_test", "train_architecture", "train_model"]
