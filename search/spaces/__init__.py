"""Search spaces: ``get_space("nb201" | "mbv3" | "resnet", **options)``.

Every space implements :class:`~search.spaces.base.SearchSpace`: sample / mutate /
crossover, encode / decode, to_string / from_string, build, export_onnx and kernel_specs.
"""
from __future__ import annotations

from typing import Any, Callable

from search.spaces.base import SearchSpace, SpaceError


def _nb201(**kw: Any) -> SearchSpace:
    from search.spaces.nb201 import NB201Space
    return NB201Space(**kw)


def _mbv3(**kw: Any) -> SearchSpace:
    from search.spaces.mbv3 import MBV3Space
    return MBV3Space(**kw)


def _resnet(**kw: Any) -> SearchSpace:
    from search.spaces.resnet import ResNetSpace
    return ResNetSpace(**kw)


SPACES: dict[str, Callable[..., SearchSpace]] = {"nb201": _nb201, "mbv3": _mbv3, "resnet": _resnet}


def get_space(name: str, **options: Any) -> SearchSpace:
    """The space called ``name``; ``options`` go to its constructor (e.g. ``resolutions=(32,)``)."""
    try:
        factory = SPACES[name]
    except KeyError:
        raise SpaceError(f"unknown search space {name!r}; spaces are {', '.join(SPACES)}") from None
    return factory(**options)


__all__ = ["SPACES", "SearchSpace", "SpaceError", "get_space"]
