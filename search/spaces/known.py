"""A registry of known architectures, built in plain torch from stage skeletons (timm-like named
builders; torchvision does not install beside the product's torch).

    from search.spaces.known import get_known, list_known
    km = get_known("resnet56")
    km.top1, km.dataset, km.source          # the published figure and where it comes from
    sk = km.skeleton(num_classes=10)         # search.spaces.skeleton.Skeleton
    net = km.build(num_classes=10)           # a freshly initialised torch module

Each entry carries the published top-1 accuracy (ImageNet for the ImageNet networks, CIFAR-10 for
the CIFAR ResNets of He et al. 2016, whose table gives the test error) with its source, its
input resolution and its stage skeleton (stem + stages of blocks with type/depth/width/stride).

Where the built network differs from the published one, the entry says so in ``notes``: the
CIFAR ResNets use 1x1-conv projection shortcuts (option B) where He et al. used zero-padding
(option A) on CIFAR, and the EfficientNet-B0-like network uses ReLU inside its SE squeeze (the
kernel vocabulary's SE form) instead of SiLU and omits stochastic depth, which is training only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np

from search.spaces.base import SpaceError
from search.spaces.skeleton import Block, Head, Skeleton, Stem, build_network


@dataclass(frozen=True)
class KnownModel:
    name: str
    family: str                   # resnet | cifar-resnet | mobilenet | efficientnet | regnet
    top1: float                   # published top-1 accuracy, %
    dataset: str                  # what top1 was measured on: "ImageNet" or "CIFAR-10"
    source: str
    resolution: int
    params_m: float               # published parameter count, millions (at the published classes)
    make: Callable[[], Skeleton] = field(repr=False, compare=False)
    notes: str = ""

    def skeleton(self, num_classes: int | None = None, in_channels: int | None = None,
                 resolution: int | None = None) -> Skeleton:
        """The stage skeleton, for other data when given (classes, channels, input size)."""
        return self.make().with_data(resolution, in_channels, num_classes)

    def build(self, num_classes: int | None = None, in_channels: int | None = None,
              resolution: int | None = None):
        return build_network(self.skeleton(num_classes, in_channels, resolution))


KNOWN_MODELS: dict[str, KnownModel] = {}


def register(**meta) -> Callable[[Callable[[], Skeleton]], Callable[[], Skeleton]]:
    """Decorator: register a skeleton builder under ``meta['name']``."""
    def wrap(fn: Callable[[], Skeleton]) -> Callable[[], Skeleton]:
        KNOWN_MODELS[meta["name"]] = KnownModel(make=fn, **meta)
        return fn
    return wrap


def get_known(name: str) -> KnownModel:
    key = name.strip().lower().replace("-", "_")
    aliases = {k.replace("_", ""): k for k in KNOWN_MODELS}
    km = KNOWN_MODELS.get(key) or KNOWN_MODELS.get(aliases.get(key.replace("_", ""), ""))
    if km is None:
        raise SpaceError(f"unknown model {name!r}; known models are {', '.join(KNOWN_MODELS)}")
    return km


def list_known() -> list[KnownModel]:
    return list(KNOWN_MODELS.values())


FAMILIES = ("ResNet (basic or bottleneck blocks)", "CIFAR ResNet", "MobileNetV2/V3 (MBConv)",
            "EfficientNet (MBConv with SE)", "RegNet/ResNeXt (grouped bottleneck)")


# ------------------------------------------------------------------------------ ResNets
def _resnet(block: str, depths: tuple[int, ...], widths: tuple[int, ...], stem: Stem, resolution: int,
            num_classes: int) -> Skeleton:
    expand = 0.25 if block == "bottleneck" else 1.0
    stages = tuple(tuple(Block(block, w, stride=(1 if s == 0 else 2) if b == 0 else 1, expand=expand)
                         for b in range(d)) for s, (d, w) in enumerate(zip(depths, widths)))
    return Skeleton(stem, stages, Head(), resolution=resolution, num_classes=num_classes)


_TV = "torchvision IMAGENET1K_V1 weights (single 224 crop)"


@register(name="resnet18", family="resnet", top1=69.758, dataset="ImageNet", resolution=224, params_m=11.7,
          source=f"He et al., CVPR 2016; top-1 of {_TV}")
def resnet18() -> Skeleton:
    return _resnet("basic", (2, 2, 2, 2), (64, 128, 256, 512), Stem(64, 7, 2, "relu", maxpool=True), 224, 1000)


@register(name="resnet34", family="resnet", top1=73.314, dataset="ImageNet", resolution=224, params_m=21.8,
          source=f"He et al., CVPR 2016; top-1 of {_TV}")
def resnet34() -> Skeleton:
    return _resnet("basic", (3, 4, 6, 3), (64, 128, 256, 512), Stem(64, 7, 2, "relu", maxpool=True), 224, 1000)


@register(name="resnet50", family="resnet", top1=76.130, dataset="ImageNet", resolution=224, params_m=25.6,
          source=f"He et al., CVPR 2016; top-1 of {_TV} (stride in the 3x3, 'v1.5')")
def resnet50() -> Skeleton:
    return _resnet("bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048), Stem(64, 7, 2, "relu", maxpool=True),
                   224, 1000)


_CIFAR = ("He et al., 'Deep Residual Learning for Image Recognition', CVPR 2016, Table 6 "
          "(CIFAR-10 test error {err}%)")
_OPTION_B = "1x1-conv projection shortcuts (option B); the paper used zero-padding (option A) on CIFAR"


def _cifar_resnet(n: int) -> Skeleton:
    return _resnet("basic", (n, n, n), (16, 32, 64), Stem(16, 3, 1, "relu"), 32, 10)


for _n, _err, _p in ((3, 8.75, 0.27), (5, 7.51, 0.46), (7, 7.17, 0.66), (9, 6.97, 0.85), (18, 6.43, 1.7)):
    register(name=f"resnet{6 * _n + 2}", family="cifar-resnet", top1=round(100 - _err, 2), dataset="CIFAR-10",
             resolution=32, params_m=_p, source=_CIFAR.format(err=_err), notes=_OPTION_B
             )(partial(_cifar_resnet, _n))


# ----------------------------------------------------------------------------- MobileNets
def _mb(cout: int, stride: int, expand: float, kernel: int = 3, se: bool = False, act: str = "relu") -> Block:
    return Block("mbconv", cout, stride, expand, kernel, se, act)


@register(name="mobilenet_v2", family="mobilenet", top1=72.0, dataset="ImageNet", resolution=224, params_m=3.5,
          source="Sandler et al., 'MobileNetV2', CVPR 2018, Table 4 (width 1.0, 224; the table rounds the "
                 "3,504,872 parameters to 3.4M)")
def mobilenet_v2() -> Skeleton:
    table = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))
    stages = tuple(tuple(_mb(c, s if b == 0 else 1, t, act="relu6") for b in range(n)) for t, c, n, s in table)
    return Skeleton(Stem(32, 3, 2, "relu6"), stages, Head(conv=1280, conv_act="relu6"), 224)


@register(name="mobilenet_v3_large", family="mobilenet", top1=75.2, dataset="ImageNet", resolution=224,
          params_m=5.4, source="Howard et al., 'Searching for MobileNetV3', ICCV 2019, Table 3 (Large 1.0)")
def mobilenet_v3_large() -> Skeleton:
    hs = "hardswish"
    stages = ((_mb(16, 1, 1),),
              (_mb(24, 2, 4), _mb(24, 1, 3)),
              (_mb(40, 2, 3, 5, True), _mb(40, 1, 3, 5, True), _mb(40, 1, 3, 5, True)),
              (_mb(80, 2, 6, act=hs), _mb(80, 1, 2.5, act=hs), _mb(80, 1, 2.3, act=hs), _mb(80, 1, 2.3, act=hs)),
              (_mb(112, 1, 6, 3, True, hs), _mb(112, 1, 6, 3, True, hs)),
              (_mb(160, 2, 6, 5, True, hs), _mb(160, 1, 6, 5, True, hs), _mb(160, 1, 6, 5, True, hs)))
    return Skeleton(Stem(16, 3, 2, "hardswish"), stages, Head(conv=960, conv_act=hs, mix=1280, mix_act=hs), 224)


@register(name="mobilenet_v3_small", family="mobilenet", top1=67.4, dataset="ImageNet", resolution=224,
          params_m=2.5, source="Howard et al., 'Searching for MobileNetV3', ICCV 2019, Table 3 (Small 1.0)")
def mobilenet_v3_small() -> Skeleton:
    hs = "hardswish"
    stages = ((_mb(16, 2, 1, 3, True),),
              (_mb(24, 2, 4.5), _mb(24, 1, 88 / 24)),
              (_mb(40, 2, 4, 5, True, hs), _mb(40, 1, 6, 5, True, hs), _mb(40, 1, 6, 5, True, hs)),
              (_mb(48, 1, 3, 5, True, hs), _mb(48, 1, 3, 5, True, hs)),
              (_mb(96, 2, 6, 5, True, hs), _mb(96, 1, 6, 5, True, hs), _mb(96, 1, 6, 5, True, hs)))
    return Skeleton(Stem(16, 3, 2, hs), stages, Head(conv=576, conv_act=hs, mix=1024, mix_act=hs), 224)


@register(name="efficientnet_b0", family="efficientnet", top1=77.1, dataset="ImageNet", resolution=224,
          params_m=5.3, source="Tan & Le, 'EfficientNet', ICML 2019, Table 2 (B0)",
          notes="EfficientNet-B0-like: ReLU in the SE squeeze (the paper: SiLU); no stochastic depth")
def efficientnet_b0() -> Skeleton:
    table = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
             (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
    stages = tuple(tuple(_mb(c, s if b == 0 else 1, t, k, True, "silu") for b in range(n)) for t, k, s, c, n in table)
    return Skeleton(Stem(32, 3, 2, "silu"), stages, Head(conv=1280, conv_act="silu"), 224,
                    se_gate="sigmoid", se_from="in")


# -------------------------------------------------------------------------------- RegNets
def regnet_stages(w0: float, wa: float, wm: float, depth: int, group_width: int, q: int = 8
                  ) -> tuple[list[int], list[int]]:
    """Stage widths and depths of a RegNet from its quantised linear parameters
    (Radosavovic et al., CVPR 2020, eq. 2-4; the pycls and torchvision rule)."""
    ws_cont = np.arange(depth) * wa + w0
    ks = np.round(np.log(ws_cont / w0) / np.log(wm))
    ws = (np.round(w0 * np.power(wm, ks) / q) * q).astype(int)
    stage_ws, depths = np.unique(ws, return_counts=True)
    # a whole number of groups per stage (bottleneck ratio 1)
    widths = [int(round(w / min(group_width, w)) * min(group_width, w)) for w in stage_ws]
    return widths, [int(d) for d in depths]


def _regnet(w0: float, wa: float, wm: float, depth: int, gw: int, se: bool) -> Skeleton:
    widths, depths = regnet_stages(w0, wa, wm, depth, gw)
    stages = tuple(tuple(Block("grouped", w, 2 if b == 0 else 1, 1.0, 3, se, "relu", min(gw, w)) for b in range(d))
                   for w, d in zip(widths, depths))
    return Skeleton(Stem(32, 3, 2, "relu"), stages, Head(), 224, se_gate="sigmoid", se_from="in")


_REGNET = "Radosavovic et al., 'Designing Network Design Spaces', CVPR 2020, Table 8 (top-1 error {err}%)"

for _name, _args, _err, _p in (("regnetx_400mf", (24, 24.48, 2.54, 22, 16, False), 27.3, 5.2),
                               ("regnetx_800mf", (56, 35.73, 2.28, 16, 16, False), 24.8, 7.3),
                               ("regnety_400mf", (48, 27.89, 2.09, 16, 8, True), 25.9, 4.3),
                               ("regnety_800mf", (56, 38.84, 2.4, 14, 16, True), 23.7, 6.3)):
    register(name=_name, family="regnet", top1=round(100 - _err, 1), dataset="ImageNet", resolution=224,
             params_m=_p, source=_REGNET.format(err=_err))(partial(_regnet, *_args))


__all__ = ["FAMILIES", "KNOWN_MODELS", "KnownModel", "get_known", "list_known", "register", "regnet_stages"]
