"""Search spaces: ``get_space("nb201" | "mbv3" | "resnet" | "baseline", **options)``.

``baseline`` is derived from a known model: ``get_space("baseline", baseline="resnet56", num_classes=10)``.

Every space implements :class:`~search.spaces.base.SearchSpace`: sample / mutate /
crossover, encode / decode, to_string / from_string, build, export_onnx and kernel_specs.
"""
from __future__ import annotations

from typing import Any, Callable

from search.spaces.base import SearchSpace, SpaceError
from search.spaces.nb201 import NB201Space
from search.spaces.mbv3 import MBV3Space
from search.spaces.resnet import ResNetSpace
from search.spaces.baseline import BaselineSpace
from search.spaces.skeleton import skeleton_from_dict
from search.spaces.known import get_known


def _nb201(**kw: Any) -> SearchSpace:
    return NB201Space(**kw)


def _mbv3(**kw: Any) -> SearchSpace:
    return MBV3Space(**kw)


def _resnet(**kw: Any) -> SearchSpace:
    return ResNetSpace(**kw)


def _baseline(baseline: str = "resnet20", num_classes: int | None = None, in_channels: int | None = None,
              resolution: int | None = None, skeleton: str | None = None, **kw: Any) -> SearchSpace:
    """The space derived from a known model (`search.spaces.known`), or from ``skeleton`` (the JSON
    of a `search.spaces.skeleton.Skeleton`, e.g. a trained model's) called ``baseline``; sized to the data."""
    import json

    if skeleton is not None:
        sk = skeleton_from_dict(json.loads(skeleton)).with_data(resolution, in_channels, num_classes)
        return BaselineSpace(sk, baseline, **kw)
    sk = get_known(baseline).skeleton(num_classes, in_channels, resolution)
    return BaselineSpace(sk, get_known(baseline).name, **kw)


SPACES: dict[str, Callable[..., SearchSpace]] = {"nb201": _nb201, "mbv3": _mbv3, "resnet": _resnet,
                                                 "baseline": _baseline}


def get_space(name: str, **options: Any) -> SearchSpace:
    """The space called ``name``; ``options`` go to its constructor (e.g. ``resolutions=(32,)``)."""
    try:
        factory = SPACES[name]
    except KeyError:
        raise SpaceError(f"unknown search space {name!r}; spaces are {', '.join(SPACES)}") from None
    return factory(**options)


__all__ = ["SPACES", "SearchSpace", "SpaceError", "get_space"]
