"""Wiring: builds the search's ingredients from the parts of a `search.config.SearchSpec` on top
of the other packages.

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
from typing import TYPE_CHECKING, Any, Callable, Protocol

from search.config import AccuracyConfig, SupernetConfig
from search.problem import Candidate, SearchError
from profiling.targets import Target, TargetError, get_target
from profiling.fingerprint import make_fingerprint

if TYPE_CHECKING:  # torch, pandas and LightGBM: imported where they are used
    import torch

    from predictors.model import Predictor
    from search.accuracy.supernet import Supernet, TrainConfig
    from search.models import EstimatedAccuracy, MacsLatency, PredictorLatency
    from search.spaces.base import SearchSpace


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
    def x_train(self) -> Any:
        return self.train.x

    @property
    def y_train(self) -> Any:
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
def make_space(name: str, data: Data, options: dict[str, Any] | None = None) -> SearchSpace[Any]:
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
class LatencySettings(Protocol):
    """What choosing the predictor and the target reads: a `search.config.LatencyConfig` (the flat
    `search.run.SearchConfig` names these settings alike, and serves too)."""
    predictor: str | Path | None
    target: str | None
    targets_file: str | Path | None
    force: bool


def load_predictor_and_target(latency: LatencySettings,
                              benchmark: bool = False) -> tuple[Predictor | None, Target | None]:
    """(predictor, target) of the latency settings; in `benchmark` mode the predictor is optional
    and there is no target."""
    # lazy: loads pandas, scipy and torch (slow to import) only when this runs
    from search.models import load_predictor

    predictor: Predictor | None = None
    if latency.predictor:
        predictor = load_predictor(latency.predictor)
    elif not benchmark:
        raise SearchError("`predictor` is required: a .lgb file of a predictor trained on the target's table "
                          "(see data/predictors/ for the shipped ones)")
    ptarget = predictor.target_name if predictor is not None else None
    if latency.target and ptarget and latency.target != ptarget and not latency.force:
        raise SearchError(f"the predictor {latency.predictor} was built for target {ptarget!r}, not "
                          f"{latency.target!r}: its latencies would be another device's. Use a predictor "
                          f"for {latency.target!r}, drop `target`, or pass `force` to use it anyway.")
    if benchmark:
        return predictor, None
    name = latency.target or ptarget or "local-cpu"
    try:
        target = get_target(name, latency.targets_file)
    except TargetError as e:
        if predictor is None or not predictor.target or name != ptarget:
            raise SearchError(str(e)) from None
        target = Target.from_dict(predictor.target)  # a user target recorded in the predictor
    return predictor, target


def predictor_device_note(predictor: Predictor | None, target: Target | None,
                          facts: dict[str, Any] | None) -> str | None:
    """A warning when the predictor was profiled on other hardware than the device the
    finalists are measured on (an Intel table predicting an AMD machine): the search still
    runs, since the finalists' measurements correct the predictor, but the user should know."""
    # lazy: loads pandas (slow to import) only when this runs
    from predictors.catalog import mismatch_note
    if predictor is None or target is None or not predictor.fingerprint or not facts:
        return None
    note = mismatch_note(predictor.fingerprint, make_fingerprint(facts, target), "the device the finalists run on")
    if note is None:
        return None
    return (f"{note}. The finalists' measurements correct it during this run; for a ranking you can trust, "
            f"profile this device as target {target.name!r} and train its own predictor on that "
            f"table.")


def latency_model(predictor: Predictor | None, space: SearchSpace[Any],
                  path: str | Path | None) -> MacsLatency | PredictorLatency:
    # lazy: loads pandas, scipy and torch (slow to import) only when this runs
    from search.models import MacsLatency, PredictorLatency
    if predictor is None:
        return MacsLatency(space)
    return PredictorLatency(predictor, space, path)


# ----------------------------------------------------------------------------- accuracy
def accuracy_model(accuracy: AccuracyConfig, space: SearchSpace[Any], data: Data, cache_dir: Path,
                   log: Callable[[str], None], deadline: float | None = None, pool: Any = None, *, seed: int = 0,
                   benchmark: bool = False) -> EstimatedAccuracy:
    """The estimator of `search.accuracy.estimator` (proxies + supernet); see `search.models.EstimatedAccuracy`.
    Supernet training may take 60% of the time left before `deadline` (time.monotonic()), and
    scoring the reference population the rest of it. In `benchmark` mode (the NB201 table's
    devices), the `auto` estimator is the proxies alone."""
    # lazy: loads pandas, scipy and torch (slow to import) only when this runs
    import time
    from search.models import EstimatedAccuracy, cache_name
    from search.accuracy.proxies import ProxyError, canonical_names
    try:
        names = canonical_names(accuracy.proxies)
    except ProxyError as e:
        raise SearchError(f"`proxies`: {e}") from None
    use_supernet = accuracy.estimator == "supernet" or (accuracy.estimator == "auto" and not benchmark)
    if space.name == "baseline" and accuracy.estimator == "auto":
        # measured (docs/accuracy.md, "The baseline space's supernet"): a supernet trained in a
        # search's share of the budget ranks this space's candidates no better than the proxies,
        # so `auto` spends that time on the search; `accuracy` supernet trains it
        use_supernet = False
    if use_supernet and space.name == "baseline":
        use_supernet = _baseline_supernet_fits(accuracy, space, log)
    share = None if deadline is None else time.monotonic() + 0.6 * max(0.0, deadline - time.monotonic())
    supernet = _trained_supernet(accuracy.supernet, seed, space, data, cache_dir, log, share) if use_supernet \
        else None
    inputs, targets = data.train.batch(min(accuracy.proxy_batch, len(data.train)), seed=seed)
    cache = cache_dir / (f"proxies-{space.name}-"
                         f"{cache_name(repr(space), data.name, len(inputs), seed)}.jsonl")
    what = "+".join(names) + (" + supernet accuracy" if supernet is not None else "")
    log(f"accuracy: rank ensemble of {what} (search.accuracy.estimator), proxies on a batch of {len(inputs)}, "
        f"per-cell cache {cache}")
    return EstimatedAccuracy(space, inputs, targets, names, supernet=supernet, val=data.val, calib=data.train,
                             cache_file=cache, reference_size=accuracy.reference_size, seed=seed,
                             supernet_weight=accuracy.supernet.weight, pool=pool, log=log, deadline=deadline)


def _baseline_supernet_fits(accuracy: AccuracyConfig, space: SearchSpace[Any], log: Callable[[str], None]) -> bool:
    """Whether the baseline space's few-shot supernet (one weight set per stage and block type,
    each at its largest) is small enough to train here; `accuracy` auto falls back to the proxies
    when it is not, `accuracy` supernet fails with the figure."""
    # lazy: loads torch (slow to import) only when this runs
    from search.accuracy.supernet import MAX_SUPERNET_WEIGHTS, supernet_size
    n = supernet_size(space)
    if n <= MAX_SUPERNET_WEIGHTS:
        return True
    why = (f"the {getattr(space, 'baseline', space.name)} space's supernet would hold {n / 1e6:,.0f} M weights "
           f"(over {MAX_SUPERNET_WEIGHTS / 1e6:,.0f} M: too large to train here)")
    if accuracy.estimator == "supernet":
        raise SearchError(f"`accuracy` supernet: {why}; use proxies, or a smaller baseline or width choices")
    log(f"accuracy: {why}; the proxies score the candidates and the baseline")
    return False


def supernet_train_config(supernet: SupernetConfig, data: Data, seed: int = 0) -> TrainConfig:
    """The supernet's training settings on `data` (8 epochs unless `supernet.epochs`)."""
    # lazy: loads torch (slow to import) only when this runs
    from search.accuracy.supernet import TrainConfig
    epochs = supernet.epochs if supernet.epochs is not None else 8.0
    return TrainConfig(epochs=epochs, batch_size=min(64, max(8, len(data.train) // 4)), seed=seed,
                       checkpoint_every=20)


def torch_device(name: str) -> torch.device:
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


def _trained_supernet(supernet: SupernetConfig, seed: int, space: SearchSpace[Any], data: Data, cache_dir: Path,
                      log: Callable[[str], None], deadline: float | None = None) -> Supernet:
    """The space's supernet trained on the data once; the checkpoint (named by everything the
    weights depend on) is reused by later runs and resumed if a run was killed mid-training."""
    # lazy: loads pandas, scipy and torch (slow to import) only when this runs
    from search.models import cache_name
    from search.accuracy.supernet import SupernetError, build_supernet
    import torch
    device = torch_device(supernet.device)
    tc = supernet_train_config(supernet, data, seed)
    ckpt = cache_dir / f"supernet-{space.name}-{cache_name(repr(space), data.name, repr(tc))}.pt"
    torch.manual_seed(seed)
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
    # plain attributes read by the search and export_best (nn.Module's __setattr__ is typed for
    # tensors and modules only)
    setattr(sn, "checkpoint_path", ckpt)
    setattr(sn, "train_info", info)
    return sn


def export_best(space: SearchSpace[Any], best: Candidate, accuracy: Any, data: Data, out: Path) -> dict[str, Any]:
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


def load_best(path: str | Path) -> torch.nn.Module:
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


__all__ = ["Data", "LatencySettings", "accuracy_model", "export_best", "latency_model", "load_best", "load_data", "load_predictor_and_target",
           "make_space", "supernet_train_config", "torch_device"]
