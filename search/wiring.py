"""Wiring: builds the search's ingredients from a `SearchConfig` on top of the other packages.

- data: `search.accuracy.data.load_dataset`, split 80/20 and normalised on the training part;
- space: `search.spaces.get_space`, sized to the data (channels, classes, resolution);
- predictor and target: `predictors.model.Predictor.load` and `profiling.targets.get_target`,
  refusing a predictor built for another target unless `force`;
- accuracy: `search.accuracy.estimator.AccuracyEstimator` (proxies and, by default, the supernet of
  `search.accuracy.supernet`, trained once on the data and checkpointed in the cache directory);
- export of the chosen architecture (`best.onnx`, `best.pt`).

Each function checks its input and fails with a one-line `SearchError` before any long work.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from search.problem import SearchError
from profiling.targets import Target, TargetError, get_target
from profiling.fingerprint import make_fingerprint


# --------------------------------------------------------------------------------- data
@dataclass
class Data:
    name: str
    train: Any          # search.accuracy.data.ImageDataset, normalised
    val: Any
    num_classes: int
    in_channels: int
    resolution: int

    @property
    def x_train(self):
        return self.train.x

    @property
    def y_train(self):
        return self.train.y


def load_data(spec: str, seed: int = 0, max_per_class: int | None = 500, image_size: int | None = None) -> Data:
    """`digits`, an .npz file or an image-folder directory (class folders, optionally under train/);
    `image_size` resizes the images (square)."""
    # lazy: loads torch (slow to import) only when this runs
    from search.accuracy.data import DataError, load_dataset
    p = Path(spec)
    if spec != "digits":
        if not p.exists():
            raise SearchError(f"`data` {spec}: no such file or directory (give an image-folder "
                              f"directory, an .npz with x and y arrays, or 'digits')")
        if p.is_dir():
            try:
                empty = not any(not e.name.startswith(".") for e in p.iterdir())
            except PermissionError:
                raise SearchError(f"`data` {spec}: the directory cannot be read (permission denied)") from None
            if empty:
                raise SearchError(f"`data` {spec}: the directory is empty; it should hold one "
                                  f"sub-directory of images per class (or train/ and test/ with those)")
    split = "train" if p.is_dir() and (p / "train").is_dir() else None
    try:
        ds = load_dataset(spec, split=split, max_per_class=max_per_class, seed=seed, image_size=image_size)
        train, val = ds.split(0.2, seed=seed)
        mean, std = train.stats()
        train, val = train.normalized(mean, std), val.normalized(mean, std)
    except DataError as e:
        raise SearchError(f"`data` {spec}: {e}") from None
    except OSError as e:
        raise SearchError(f"`data` {spec}: cannot read it: {e}") from None
    c, h, _ = ds.shape
    if spec == "digits":
        name = f"digits (scikit-learn, {len(ds):,} {h}x{h} images{'' if image_size is None else ', resized'})"
    else:
        name = f"{spec}{' (train split)' if split else ''} ({ds.num_classes} classes, {len(ds):,} images)"
    return Data(name, train, val, ds.num_classes, c, h)


# -------------------------------------------------------------------------------- space
def make_space(name: str, data: Data, options: dict | None = None):
    """The space sized to the data; `options` override (e.g. {"C": 8, "N": 1} for nb201)."""
    # lazy: loads torch (slow to import) only when this runs
    from search.spaces import SpaceError, get_space
    opts: dict[str, Any] = {"num_classes": data.num_classes, "in_channels": data.in_channels}
    if name in ("nb201", "baseline"):
        opts["resolution"] = data.resolution
    elif name in ("mbv3", "resnet"):
        opts["resolutions"] = (data.resolution,)
        if data.resolution <= 64:  # small images: no early downsampling, narrow stages
            opts.update({"width_mult": 0.5} if name == "mbv3" else
                        {"stem_stride": 1, "stem_channels": 32, "base_widths": (64, 128, 256),
                         "stage_strides": (1, 2, 2)})
    opts.update(options or {})
    try:
        space = get_space(name, **opts)
    except (SpaceError, TypeError, ValueError) as e:
        raise SearchError(f"space {name!r}: {e}") from None
    space.build_options = opts  # recorded in best.pt, so that load_best rebuilds the same network
    return space


# ---------------------------------------------------------------- predictor and target
def load_predictor_and_target(config, benchmark: bool = False):
    # lazy: loads pandas, scipy and torch (slow to import) only when this runs
    from search.models import load_predictor

    predictor = None
    if config.predictor:
        predictor = load_predictor(config.predictor)
    elif not benchmark:
        raise SearchError("`predictor` is required: a .lgb file of a predictor trained on the target's table "
                          "(see data/predictors/ for the shipped ones)")
    ptarget = predictor.target_name if predictor is not None else None
    if config.target and ptarget and config.target != ptarget and not config.force:
        raise SearchError(f"the predictor {config.predictor} was built for target {ptarget!r}, not "
                          f"{config.target!r}: its latencies would be another device's. Use a predictor "
                          f"for {config.target!r}, drop `target`, or pass `force` to use it anyway.")
    if benchmark:
        return predictor, None
    name = config.target or ptarget or "local-cpu"
    try:
        target = get_target(name, config.targets_file)
    except TargetError as e:
        if predictor is None or not predictor.target or name != ptarget:
            raise SearchError(str(e)) from None
        target = Target.from_dict(predictor.target)  # a user target recorded in the predictor
    return predictor, target


def predictor_device_note(predictor, target, facts: dict | None) -> str | None:
    """A warning when the predictor was profiled on other hardware than the device the
    finalists are measured on (an Intel table predicting an AMD machine): the search still
    runs, since the finalists' measurements correct the predictor, but the user should know."""
    # lazy: loads pandas (slow to import) only when this runs
    from predictors.catalog import mismatch_note
    if predictor is None or not predictor.fingerprint or not facts:
        return None
    note = mismatch_note(predictor.fingerprint, make_fingerprint(facts, target), "the device the finalists run on")
    if note is None:
        return None
    return (f"{note}. The finalists' measurements correct it during this run; for a ranking you can trust, "
            f"profile this device as target {target.name!r} and train its own predictor on that "
            f"table.")


def latency_model(predictor, space, path):
    # lazy: loads pandas, scipy and torch (slow to import) only when this runs
    from search.models import MacsLatency, PredictorLatency
    if predictor is None:
        return MacsLatency(space)
    return PredictorLatency(predictor, space, path)


# ----------------------------------------------------------------------------- accuracy
def accuracy_model(config, space, data: Data, cache_dir: Path, log: Callable[[str], None],
                   deadline: float | None = None, pool=None):
    """The estimator of `search.accuracy.estimator` (proxies + supernet); see `search.models.EstimatedAccuracy`.
    Supernet training may take 60% of the time left before `deadline` (time.monotonic()), and
    scoring the reference population the rest of it."""
    # lazy: loads pandas, scipy and torch (slow to import) only when this runs
    import time
    from search.models import EstimatedAccuracy, cache_name
    from search.accuracy.proxies import ProxyError, canonical_names
    try:
        names = canonical_names(config.proxies)
    except ProxyError as e:
        raise SearchError(f"`proxies`: {e}") from None
    use_supernet = config.accuracy == "supernet" or (config.accuracy == "auto" and not config.benchmark)
    if space.name == "baseline" and config.accuracy == "auto":
        # measured (docs/accuracy.md, "The baseline space's supernet"): a supernet trained in a
        # search's share of the budget ranks this space's candidates no better than the proxies,
        # so `auto` spends that time on the search; `accuracy` supernet trains it
        use_supernet = False
    if use_supernet and space.name == "baseline":
        use_supernet = _baseline_supernet_fits(config, space, log)
    share = None if deadline is None else time.monotonic() + 0.6 * max(0.0, deadline - time.monotonic())
    supernet = _trained_supernet(config, space, data, cache_dir, log, share) if use_supernet else None
    inputs, targets = data.train.batch(min(config.proxy_batch, len(data.train)), seed=config.seed)
    cache = cache_dir / (f"proxies-{space.name}-"
                         f"{cache_name(repr(space), data.name, len(inputs), config.seed)}.jsonl")
    what = "+".join(names) + (" + supernet accuracy" if supernet is not None else "")
    log(f"accuracy: rank ensemble of {what} (search.accuracy.estimator), proxies on a batch of {len(inputs)}, "
        f"per-cell cache {cache}")
    return EstimatedAccuracy(space, inputs, targets, names, supernet=supernet, val=data.val, calib=data.train,
                             cache_file=cache, reference_size=config.reference_size, seed=config.seed,
                             supernet_weight=config.supernet_weight, pool=pool, log=log, deadline=deadline)


def _baseline_supernet_fits(config, space, log) -> bool:
    """Whether the baseline space's few-shot supernet (one weight set per stage and block type,
    each at its largest) is small enough to train here; `accuracy` auto falls back to the proxies
    when it is not, `accuracy` supernet fails with the figure."""
    # lazy: loads torch (slow to import) only when this runs
    from search.accuracy.supernet import MAX_SUPERNET_WEIGHTS, supernet_size
    n = supernet_size(space)
    if n <= MAX_SUPERNET_WEIGHTS:
        return True
    why = (f"the {space.baseline} space's supernet would hold {n / 1e6:,.0f} M weights (over "
           f"{MAX_SUPERNET_WEIGHTS / 1e6:,.0f} M: too large to train here)")
    if config.accuracy == "supernet":
        raise SearchError(f"`accuracy` supernet: {why}; use proxies, or a smaller baseline or width choices")
    log(f"accuracy: {why}; the proxies score the candidates and the baseline")
    return False


def supernet_train_config(config, data: Data):
    # lazy: loads torch (slow to import) only when this runs
    from search.accuracy.supernet import TrainConfig
    epochs = config.supernet_epochs if config.supernet_epochs is not None else 8.0
    return TrainConfig(epochs=epochs, batch_size=min(64, max(8, len(data.train) // 4)), seed=config.seed,
                       checkpoint_every=20)


def torch_device(name: str):
    """The torch device called ``name``, checked to exist on this machine."""
    # lazy: loads torch (slow to import) only when this runs
    import torch
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        have = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no usable CUDA device"
        raise SearchError(f"`device` {name}: {str(e).splitlines()[0]} (this machine has {have}); "
                          f"pass `device` cpu, or cuda:N with N below the device count") from None
    return device


def _trained_supernet(config, space, data: Data, cache_dir: Path, log, deadline: float | None = None):
    """The space's supernet trained on the data once; the checkpoint (named by everything the
    weights depend on) is reused by later runs and resumed if a run was killed mid-training."""
    # lazy: loads pandas, scipy and torch (slow to import) only when this runs
    from search.models import cache_name
    from search.accuracy.supernet import SupernetError, build_supernet
    import torch
    device = torch_device(config.device)
    tc = supernet_train_config(config, data)
    ckpt = cache_dir / f"supernet-{space.name}-{cache_name(repr(space), data.name, repr(tc))}.pt"
    torch.manual_seed(config.seed)
    sn = build_supernet(space).to(device)
    done = False
    if ckpt.exists():
        try:
            done = int(torch.load(ckpt, map_location="cpu", weights_only=True)["step"]) >= \
                tc.total_steps(len(data.train))
        except Exception:
            done = False
    log(f"supernet: {'loading' if done else 'training'} {ckpt} ({tc.epochs:g} epochs on {len(data.train)} images)")
    try:
        info = sn.fit(data.train, tc, checkpoint=ckpt, log=None if done else log, deadline=deadline)
    except SupernetError as e:
        raise SearchError(f"supernet: {e}") from None
    sn.eval()
    sn.checkpoint_path = ckpt
    sn.train_info = info
    return sn


def export_best(space, best, accuracy, data: Data, out: Path) -> dict:
    """best.onnx and best.pt: with a supernet, the subnet carrying the supernet's weights (BN
    statistics recalibrated on the training data); else a freshly initialised network."""
    # lazy: loads torch (slow to import) only when this runs
    import torch
    from search.accuracy.supernet import recalibrate_bn
    sn = getattr(accuracy, "supernet", None)
    info: dict[str, Any] = {"inherited_supernet_weights": sn is not None}
    if sn is not None:
        model = sn.subnet(best.arch)
        recalibrate_bn(model, data.train, sn.resolution(best.arch), seed=0)
        info["supernet_checkpoint"] = str(sn.checkpoint_path)
        info["bn_recalibrated_on"] = f"{min(500, len(data.train))} training images"
        info["supernet_val_accuracy"] = accuracy.supernet_accuracy(best.arch)
    else:
        torch.manual_seed(0)
        model = space.build(best.arch)
    model.eval()
    space.export_onnx(best.arch, out / "best.onnx", model=model)
    torch.save({"space": space.name, "space_repr": repr(space), "arch": best.key, **info,
                "space_options": dict(getattr(space, "build_options", {})),
                "state_dict": model.state_dict()}, out / "best.pt")
    return info


def load_best(path: str | Path):
    """The network a search wrote to `best.pt` (a torch.nn.Module in eval mode): the space is
    rebuilt with the options the search used and the architecture string is decoded by it."""
    # lazy: loads torch (slow to import) only when this runs
    import torch
    from search.spaces import get_space
    ck = torch.load(path, map_location="cpu", weights_only=True)
    space = get_space(ck["space"], **{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in ck.get("space_options", {}).items()})
    model = space.build(space.from_string(ck["arch"]))
    model.load_state_dict(ck["state_dict"])
    return model.eval()


__all__ = ["Data", "accuracy_model", "export_best", "latency_model", "load_best", "load_data", "load_predictor_and_target",
           "make_space", "supernet_train_config", "torch_device"]
