"""Adapters between the search engine and the other packages (data, spaces, proxies,
supernet, predictor, targets). Each one checks its input and fails with a clear message
before any long work starts. Where a package this depends on does not (yet) offer what the
search needs, the stand-in here says so in the run's notes."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from search.problem import SearchError


# --------------------------------------------------------------------------------- data
@dataclass
class Data:
    name: str
    x_train: Any   # torch tensors, NCHW float32
    y_train: Any
    x_val: Any
    y_val: Any
    num_classes: int
    in_channels: int
    resolution: int
    raw: Any = None  # the data package's own object, when it provided one


def load_data(spec: str, seed: int = 0, max_per_class: int | None = 500) -> Data:
    """`digits`, an .npz file (x, y arrays) or an image-folder directory; clear errors."""
    import torch
    if spec != "digits":
        p = Path(spec)
        if not p.exists():
            raise SearchError(f"--data {spec}: no such file or directory (give an image-folder "
                              f"directory, an .npz with x and y arrays, or 'digits')")
        if p.is_dir():
            try:
                entries = [e for e in p.iterdir() if not e.name.startswith(".")]
            except PermissionError:
                raise SearchError(f"--data {spec}: the directory cannot be read (permission denied)") from None
            if not entries:
                raise SearchError(f"--data {spec}: the directory is empty; it should hold one "
                                  f"sub-directory of images per class (or train/ and test/ with those)")
        elif p.suffix != ".npz":
            raise SearchError(f"--data {spec}: expected a directory or an .npz file")
    try:
        from search.data import DataError, load_dataset  # type: ignore
    except ImportError:
        return _fallback_load(spec, seed)
    split = None
    if spec != "digits" and Path(spec).is_dir() and (Path(spec) / "train").is_dir():
        split = "train"
    try:
        ds = load_dataset(spec, split=split, max_per_class=max_per_class, seed=seed)
    except DataError as e:
        raise SearchError(f"--data {spec}: {e}") from None
    except OSError as e:
        raise SearchError(f"--data {spec}: cannot read it: {e}") from None
    train, val = ds.split(0.2, seed=seed)
    mean, std = train.stats()
    train, val = train.normalized(mean, std), val.normalized(mean, std)
    c, h, w = ds.shape
    name = ds.name or spec
    if spec == "digits":
        name = "digits (scikit-learn, 1,797 8x8 images)"
    elif split:
        name = f"{spec} (train split)"
    return Data(name, train.x, train.y, val.x, val.y, ds.num_classes, c, h, raw=(train, val))


def _from_data_module(ds, spec, seed) -> Data:
    import torch

    def get(*names):
        for n in names:
            if hasattr(ds, n):
                return getattr(ds, n)
            if isinstance(ds, dict) and n in ds:
                return ds[n]
        return None
    xt, yt = get("x_train", "train_x"), get("y_train", "train_y")
    xv, yv = get("x_val", "val_x", "x_test"), get("y_val", "val_y", "y_test")
    if xt is None:
        raise SearchError(f"--data {spec}: the data package returned {type(ds).__name__}, which the search "
                          f"cannot read")
    xt, yt = torch.as_tensor(np.asarray(xt), dtype=torch.float32), torch.as_tensor(np.asarray(yt), dtype=torch.long)
    if xv is None:
        n = len(xt)
        idx = np.random.default_rng(seed).permutation(n)
        cut = max(1, n // 5)
        xv, yv = xt[idx[:cut]], yt[idx[:cut]]
        xt, yt = xt[idx[cut:]], yt[idx[cut:]]
    else:
        xv, yv = torch.as_tensor(np.asarray(xv), dtype=torch.float32), torch.as_tensor(np.asarray(yv), dtype=torch.long)
    nc = int(get("num_classes") or int(max(yt.max(), yv.max())) + 1)
    return Data(str(get("name") or spec), xt, yt, xv, yv, nc, int(xt.shape[1]), int(xt.shape[-1]), raw=ds)


def _fallback_load(spec: str, seed: int) -> Data:
    import torch
    if spec == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        x = (d.images.astype(np.float32) / 16.0 - 0.5) / 0.5
        x = x[:, None]
        # 8x8 is too small for the spaces' strides: upsample to 16x16 (nearest)
        x = x.repeat(2, axis=2).repeat(2, axis=3)
        y = d.target.astype(np.int64)
        name = "digits (scikit-learn, 1,797 8x8 images upsampled to 16x16)"
    elif spec.endswith(".npz"):
        try:
            z = np.load(spec)
            x, y = z["x"].astype(np.float32), z["y"].astype(np.int64)
        except Exception as e:
            raise SearchError(f"--data {spec}: cannot read x and y arrays: {e}") from None
        if x.ndim == 3:
            x = x[:, None]
        if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        if x.max() > 2:
            x = x / 255.0
        name = spec
    else:
        x, y, name = _image_folder(Path(spec), seed)
    if len(x) < 10:
        raise SearchError(f"--data {spec}: only {len(x)} samples; need at least 10")
    idx = np.random.default_rng(seed).permutation(len(x))
    cut = max(2, len(x) // 5)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x[idx[cut:]])), torch.from_numpy(y[idx[cut:]])
    xv, yv = torch.from_numpy(np.ascontiguousarray(x[idx[:cut]])), torch.from_numpy(y[idx[:cut]])
    return Data(name, xt.float(), yt.long(), xv.float(), yv.long(), int(y.max()) + 1, int(x.shape[1]),
                int(x.shape[-1]))


def _image_folder(root: Path, seed: int, per_class: int = 200):
    from PIL import Image
    base = root / "train" if (root / "train").is_dir() else root
    classes = sorted(d.name for d in base.iterdir() if d.is_dir())
    if not classes:
        raise SearchError(f"--data {root}: no class sub-directories found (expected {base}/<class>/*.jpg)")
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for ci, c in enumerate(classes):
        files = sorted(f for f in (base / c).iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
        if not files:
            continue
        for f in rng.choice(files, min(per_class, len(files)), replace=False):
            img = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0
            xs.append(img.transpose(2, 0, 1))
            ys.append(ci)
    if not xs:
        raise SearchError(f"--data {root}: the class directories hold no images (.jpg/.png)")
    x = np.stack(xs)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = x.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    return (x - mean) / std, np.array(ys, np.int64), f"{root} ({len(classes)} classes, {len(xs)} images sampled)"


# -------------------------------------------------------------------------------- space
def make_space(name: str, data: Data, options: dict | None = None):
    try:
        from search.spaces import get_space  # type: ignore
    except ImportError:
        get_space = None
    opts = dict(options or {})
    opts.setdefault("num_classes", data.num_classes)
    opts.setdefault("in_channels", data.in_channels)
    opts.setdefault("resolution", data.resolution)
    if get_space is not None:
        from search.spaces.base import SpaceError
        last = None
        for drop in ((), ("resolution",), ("resolution", "in_channels")):
            try:
                return get_space(name, **{k: v for k, v in opts.items() if k not in drop})
            except TypeError as e:
                last = e
            except SpaceError as e:
                raise SearchError(str(e)) from None
        raise SearchError(f"space {name!r} does not accept the data's shape options: {last}")
    if name == "nb201":
        from search.spaces.nb201 import NB201Space
        return NB201Space(**opts)
    raise SearchError(f"space {name!r} is not available in this checkout (search.spaces has no registry yet)")


# ---------------------------------------------------------------- predictor and target
def load_predictor_and_target(config, benchmark: bool = False):
    from profiling.targets import TargetError, get_target
    from search.models import load_predictor, predictor_target, predictor_target_obj

    predictor = None
    if config.predictor:
        try:
            predictor = load_predictor(config.predictor)
        except SearchError:
            raise
        except Exception as e:
            raise SearchError(f"cannot load predictor {config.predictor}: {e}") from None
    elif not benchmark:
        raise SearchError("--predictor is required: a .lgb file from `train-predictor` "
                          "(see data/predictors/ for the shipped ones)")
    ptarget = predictor_target(predictor) if predictor is not None else None
    if config.target and ptarget and config.target != ptarget and not config.force:
        raise SearchError(f"the predictor {config.predictor} was built for target {ptarget!r}, not "
                          f"{config.target!r}: its latencies would be another device's. Use a predictor "
                          f"for {config.target!r}, drop --target, or pass --force to use it anyway.")
    name = config.target or ptarget or "local-cpu"
    target = None
    if not benchmark:
        try:
            target = get_target(name, config.targets_file)
        except TargetError:
            target = predictor_target_obj(predictor) if predictor is not None else None
            if target is None:
                raise
    return predictor, target


def latency_model(predictor, space, path):
    from search.models import MacsLatency, PredictorLatency
    if predictor is None:
        return MacsLatency(space)
    return PredictorLatency(predictor, space, path)


# ----------------------------------------------------------------------------- accuracy
def accuracy_model(config, space, data: Data, cache_dir: Path, log: Callable[[str], None]):
    from search.models import ProxyAccuracy, cache_name
    kind = config.accuracy
    if kind in ("auto", "supernet"):
        sup = _supernet_accuracy(config, space, data, log)
        if sup is not None:
            return sup
        if kind == "supernet":
            raise SearchError("--accuracy supernet: no supernet is available for this space in this checkout")
    import torch
    g = torch.Generator().manual_seed(config.seed)
    n = min(config.proxy_batch, len(data.x_train))
    idx = torch.randperm(len(data.x_train), generator=g)[:n]
    inputs, targets = data.x_train[idx], data.y_train[idx]
    names, compute = _proxy_fn(config.proxies)
    cache = cache_dir / f"proxies-{space.name}-{cache_name(repr(space), data.name, n, config.seed, sorted(names))}.jsonl"
    log(f"accuracy: zero-cost proxies {', '.join(names)} on a batch of {n}, per-cell cache {cache}")
    return ProxyAccuracy(space, inputs, targets, names, cache_file=cache, seed=config.seed, compute=compute)


def _proxy_fn(names):
    try:
        from search.proxies import compute_proxies  # type: ignore
        return list(names), compute_proxies
    except ImportError:
        return [n for n in names if n in _FALLBACK_PROXIES] or ["nwot", "synflow"], _fallback_proxies


def _supernet_accuracy(config, space, data, log):
    try:
        from search import supernet as sn  # type: ignore
    except ImportError:
        return None
    return None  # wired once the supernet API lands


def export_best(space, best, accuracy, out: Path) -> None:
    """best.onnx and best.pt: the subnet with inherited supernet weights if there is a supernet."""
    import torch
    model = None
    inherited = False
    sub = getattr(accuracy, "subnet", None)
    if callable(sub):
        model = sub(best.arch)
        inherited = True
    if model is None:
        torch.manual_seed(0)
        model = space.build(best.arch)
    model.eval()
    space.export_onnx(best.arch, out / "best.onnx", model=model)
    torch.save({"space": space.name, "space_repr": repr(space), "arch": best.key,
                "inherited_supernet_weights": inherited, "state_dict": model.state_dict()}, out / "best.pt")


# --------------------------------------------- stand-in proxies (only without search.proxies)
_FALLBACK_PROXIES = ("nwot", "synflow")


def _fallback_proxies(net, inputs, targets, names):
    import torch
    out = {}
    if "nwot" in names:
        codes = []
        hooks = [m.register_forward_hook(lambda m, i, o: codes.append((o.detach() > 0).flatten(1).float()))
                 for m in net.modules() if isinstance(m, torch.nn.ReLU)]
        net.eval()
        with torch.no_grad():
            net(inputs)
        for h in hooks:
            h.remove()
        if codes:
            c = torch.cat(codes, 1)
            k = c @ c.t() + (1 - c) @ (1 - c).t()
            out["nwot"] = float(torch.slogdet(k.double())[1])
        else:
            out["nwot"] = 0.0
    if "synflow" in names:
        signs = {}
        with torch.no_grad():
            for n_, p in net.state_dict().items():
                signs[n_] = torch.sign(p)
                p.abs_()
        net.double().eval()
        net.zero_grad()
        x = torch.ones((1,) + tuple(inputs.shape[1:]), dtype=torch.float64)
        net(x).sum().backward()
        s = sum(float((p * p.grad).abs().sum()) for p in net.parameters() if p.grad is not None)
        out["synflow"] = float(np.log(s + 1e-30))
        net.float()
    return out
