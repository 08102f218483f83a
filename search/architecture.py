"""Naming an architecture: a known model, a point of a baseline-derived space, or a file.

    resolve_architecture("resnet20", num_classes=10, in_channels=3, resolution=32)
    resolve_architecture("resnet20:own-d3-w1|mb6k3-d2-w0.75-se|own-d3-w1", ...)
    resolve_architecture("runs/search/best.json", ...)      # the architecture a search chose
    resolve_architecture("runs/train/model.pt", ...)        # a network `train` wrote
    resolve_baseline("my_resnet.onnx", ...)                 # an ONNX file of a known architecture

Each returns a label and a :class:`~search.spaces.skeleton.Skeleton` sized to the data. An ONNX
file is recognised when its kernels (as the predictor detects them) are those of a registry
model at the file's own input size and classes; anything else is refused with a message naming
the supported families.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, cast

from search.spaces.known import FAMILIES, KNOWN_MODELS, get_known
from search.problem import SearchError
from search.spaces.base import SpaceError
from search.spaces.skeleton import Skeleton, build_network, skeleton_from_dict, skeleton_specs, skeleton_to_dict
from search.spaces.baseline import BaselineSpace
from search.spaces import get_space
import torch

if TYPE_CHECKING:
    from predictors.graph import OnnxGraph

SUPPORTED = (f"a known model ({', '.join(KNOWN_MODELS)}), a .pt written by `train` or `search` "
             f"(best.pt), or an ONNX file of one of the known architectures; families: {'; '.join(FAMILIES)}")


def _sized(sk: Skeleton, num_classes, in_channels, resolution) -> Skeleton:
    return sk.with_data(resolution, in_channels, num_classes)


def resolve_baseline(spec: str | Path, num_classes: int | None = None, in_channels: int | None = None,
                     resolution: int | None = None) -> tuple[str, Skeleton]:
    """The baseline a search starts from: a registry name, a .pt or an ONNX file (module docstring)."""
    s = str(spec)
    p = Path(s)
    if s.lower().replace("-", "_") in KNOWN_MODELS or (not p.suffix and not p.exists()):
        try:
            km = get_known(s)
        except SpaceError:
            raise SearchError(f"baseline {s!r} is not supported: give {SUPPORTED}") from None
        return km.name, km.skeleton(num_classes, in_channels, resolution)
    if not p.exists():
        raise SearchError(f"baseline {s}: no such file; give {SUPPORTED}")
    if p.suffix == ".onnx":
        name, sk = match_onnx(p)
        return name, _sized(sk, num_classes, in_channels, resolution)
    if p.suffix in (".pt", ".pth"):
        _, sk = _from_checkpoint(p)
        name = "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in p.stem)  # no ':' or '|' in a space key
        return name, _sized(sk, num_classes, in_channels, resolution)
    raise SearchError(f"baseline {s}: a {p.suffix or 'suffix-less'} file is not supported; give {SUPPORTED}")


def check_baseline_spec(spec: str | Path) -> str | None:
    """Why ``spec`` cannot be a baseline (checked before any work), or None. Files are read later."""
    s = str(spec)
    p = Path(s)
    if p.suffix in (".onnx", ".pt", ".pth"):
        return None if p.is_file() else f"{s}: no such file"
    if p.exists():
        return f"{s}: a {p.suffix or 'suffix-less'} file is not supported; give {SUPPORTED}"
    try:
        get_known(s)
    except SpaceError:
        return f"{s!r} is not supported: give {SUPPORTED}"
    return None


def resolve_architecture(spec: str | Path, num_classes: int | None = None, in_channels: int | None = None,
                         resolution: int | None = None) -> tuple[str, Skeleton]:
    """What `train` trains: everything :func:`resolve_baseline` takes, a baseline-space string
    (``resnet20:own-d3-w1|...``) or a search's best.json."""
    s = str(spec)
    p = Path(s)
    if p.suffix == ".json" and p.exists():
        try:
            best = json.loads(p.read_text())
            arch = best["arch"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SearchError(f"{p}: not a search's best.json (no 'arch' field)") from None
        if arch is None:
            raise SearchError(f"{p}: the search chose no architecture")
        if best.get("space") == "baseline" and "skeleton" in best.get("space_options", {}):
            # the registry's "baseline" factory is BaselineSpace
            space = cast(BaselineSpace, get_space("baseline", **{**best["space_options"], "num_classes": num_classes,
                                                                 "in_channels": in_channels, "resolution": resolution}))
            return arch, space.skeleton_of(space.from_string(arch))
        if best.get("space", "baseline") != "baseline":
            raise SearchError(f"{p}: a search of the {best['space']!r} space; `train` takes architectures of a "
                              f"baseline-derived space (a search with a `baseline`) or known models")
        return resolve_architecture(arch, num_classes, in_channels, resolution)
    if ":" in s and not p.exists():
        base = s.split(":", 1)[0]
        try:
            km = get_known(base)
        except SpaceError:
            raise SearchError(f"{s!r}: {base!r} is not a known model; a space string starts with one of "
                              f"{', '.join(KNOWN_MODELS)}") from None
        space = BaselineSpace(km.skeleton(num_classes, in_channels, resolution), km.name)
        try:
            return s, space.skeleton_of(space.from_string(s))
        except SpaceError as e:
            raise SearchError(str(e)) from None
    return resolve_baseline(spec, num_classes, in_channels, resolution)


def _from_checkpoint(p: Path) -> tuple[str, Skeleton]:
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SearchError(f"{p}: not a checkpoint hwnas can read without running code ({str(e).splitlines()[0]}); "
                          f"export your model to ONNX (torch.onnx.export) and give the .onnx, or give {SUPPORTED}"
                          ) from None
    if not isinstance(ck, dict):
        raise SearchError(f"{p}: not an hwnas checkpoint; give {SUPPORTED}")
    if "skeleton" in ck:
        return str(ck.get("arch") or p.stem), skeleton_from_dict(json.loads(ck["skeleton"]))
    if ck.get("space") == "baseline" and "arch" in ck:
        opts = {k: tuple(v) if isinstance(v, list) else v for k, v in ck.get("space_options", {}).items()}
        space = cast(BaselineSpace, get_space("baseline", **opts))  # the registry's "baseline" factory
        return ck["arch"], space.skeleton_of(space.from_string(ck["arch"]))
    raise SearchError(f"{p}: a checkpoint of the {ck.get('space', 'unknown')!r} space, not of a stage skeleton; "
                      f"give {SUPPORTED}")


def match_onnx(path: str | Path) -> tuple[str, Skeleton]:
    """The registry model whose kernels are those of the ONNX file (at its input size and classes)."""
    # lazy: loads onnx and pandas (slow to import) only when this runs
    from predictors.detect import detect_kernels
    try:
        det = detect_kernels(str(path))
    except Exception as e:
        raise SearchError(f"{path}: cannot read it as an ONNX model: {e}") from None
    # detect_kernels always keeps the graph it walked (Detection's None default is for hand-built ones)
    g = cast("OnnxGraph", det.graph)
    inputs = [i for i in g.model.graph.input if i.name not in g.initializers]
    try:
        c, h = (d.dim_value for d in inputs[0].type.tensor_type.shape.dim[1:3])
        classes = next(d.dim_value for d in g.model.graph.output[0].type.tensor_type.shape.dim[-1:])
    except (IndexError, StopIteration, ValueError):
        raise SearchError(f"{path}: expected one image input [N, C, H, W] and logits [N, classes]") from None

    def norm(spec):
        d = spec.to_dict()
        d.pop("bn", None)
        return tuple(sorted(d.items()))

    found = Counter(norm(s) for s in det.specs())
    for km in KNOWN_MODELS.values():
        sk = km.skeleton(classes, c, h)
        if Counter(norm(s) for s in skeleton_specs(sk)) == found:
            return km.name, sk
    raise SearchError(f"{path}: its layers are not those of a supported architecture at {h}x{h}, {classes} classes "
                      f"({len(det.kernels)} kernels{', unknown ops ' + ', '.join(sorted({u.op_type for u in det.unknown})) if det.unknown else ''}); "
                      f"give {SUPPORTED}")


def checkpoint_payload(label: str, sk: Skeleton, state_dict: dict, **info) -> dict:
    """What `train` saves: loadable with ``torch.load(weights_only=True)`` and :func:`load_trained`."""
    return {"format": "hwnas-trained-model", "arch": label, "skeleton": json.dumps(skeleton_to_dict(sk)),
            "state_dict": state_dict, **info}


def load_trained(path: str | Path):
    """A network `train` wrote (eval mode), e.g. the teacher for distillation."""
    p = Path(path)
    if not p.exists():
        raise SearchError(f"{p}: no such file (a model.pt written by `train`)")
    label, sk = _from_checkpoint(p)
    ck = torch.load(p, map_location="cpu", weights_only=True)
    net = build_network(sk)
    try:
        net.load_state_dict(ck["state_dict"])
    except (KeyError, RuntimeError) as e:
        raise SearchError(f"{p}: its weights do not fit its architecture ({str(e).splitlines()[0]})") from None
    return net.eval()


__all__ = ["SUPPORTED", "check_baseline_spec", "checkpoint_payload", "load_trained", "match_onnx", "resolve_architecture",
           "resolve_baseline"]
