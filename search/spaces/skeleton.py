"""Stage skeletons: one description of a convolutional network as a stem, stages of blocks and a
head, from which the network is built in torch and its runtime kernels are listed.

The known architectures (:mod:`search.spaces.known`) and the baseline-derived search space
(:mod:`search.spaces.baseline`) share it, so a baseline is literally a point of its space: both
build the same :class:`Skeleton` with the same code.

Block types (:class:`Block.type`):

- ``basic``: the ResNet basic block, conv 3x3 (stride) + BN + act, conv 3x3 + BN, shortcut, act;
- ``bottleneck``: the ResNet bottleneck, 1x1 (``mid = cout * expand``), 3x3 (stride), 1x1, shortcut;
- ``grouped``: the ResNeXt/RegNet bottleneck, as ``bottleneck`` with a grouped 3x3 of
  ``group_width`` channels per group and optional squeeze-and-excitation on ``mid``;
- ``mbconv``: the MobileNetV2/V3 inverted residual, 1x1 expand (``mid = cin * expand``; skipped when
  ``expand == 1``, the depthwise-separable convolution), kxk depthwise (stride), optional SE, 1x1
  projection; a residual Add when the shape is kept.

Shortcuts of ``basic``, ``bottleneck`` and ``grouped`` are the identity, or a 1x1 conv (stride) + BN
when the shape changes (He et al.'s option B). Each block computes its shortcut first, so the main
branch meets the Add last and its final Conv+BN+Add(+act) is one ``conv_add`` kernel
(docs/design.md §1, the same convention as :mod:`search.spaces.resnet`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from functools import lru_cache

import torch
from torch import nn

from profiling.kernels import KernelSpec
from search.spaces.base import SpaceError, act_module, conv_out, init_weights, k_conv, k_head, k_mul, k_pool, make_divisible
from search.spaces.mbv3 import ConvBNAct, SqueezeExcite

BLOCK_TYPES = ("basic", "bottleneck", "grouped", "mbconv")


@dataclass(frozen=True)
class Block:
    """One block of a stage; ``cin`` and the input size come from the block before it."""
    type: str
    cout: int
    stride: int = 1
    expand: float = 1.0      # bottleneck/grouped: mid = cout * expand; mbconv: mid = cin * expand
    kernel: int = 3          # the spatial kernel (basic: both convs; others: the middle conv)
    se: bool = False
    act: str = "relu"
    group_width: int = 0     # grouped: channels per group of the 3x3

    def __post_init__(self) -> None:
        if self.type not in BLOCK_TYPES:
            raise SpaceError(f"block type {self.type!r} is not one of {', '.join(BLOCK_TYPES)}")
        if self.type == "grouped" and self.group_width <= 0:
            raise SpaceError("a grouped block needs group_width > 0")


@dataclass(frozen=True)
class Stem:
    cout: int
    kernel: int = 3
    stride: int = 1
    act: str = "relu"
    maxpool: bool = False    # ImageNet ResNets: MaxPool 3x3 stride 2 after the stem conv


@dataclass(frozen=True)
class Head:
    """Before the classifier: an optional 1x1 conv + BN + act (``conv``), global average pooling,
    an optional 1x1 conv with bias and act, no BN, on the pooled vector (``mix``, MobileNetV3's
    first fully connected layer)."""
    conv: int = 0
    conv_act: str = "relu"
    mix: int = 0
    mix_act: str = "hardswish"


@dataclass(frozen=True)
class Skeleton:
    stem: Stem
    stages: tuple[tuple[Block, ...], ...]
    head: Head = field(default_factory=Head)
    resolution: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    se_gate: str = "hardsigmoid"    # the SE gate activation (MobileNetV3: hardsigmoid; EfficientNet, RegNetY: sigmoid)
    se_from: str = "mid"            # SE squeeze width: "mid" = make_divisible(mid / 4, 8); "in" = max(1, cin // 4)

    def __post_init__(self) -> None:
        if not self.stages or any(not s for s in self.stages):
            raise SpaceError("a skeleton needs at least one stage, each with at least one block")
        if self.se_from not in ("mid", "in"):
            raise SpaceError(f"se_from must be 'mid' or 'in', not {self.se_from!r}")

    def with_data(self, resolution: int | None = None, in_channels: int | None = None,
                  num_classes: int | None = None) -> "Skeleton":
        """The same network for other data (input size, channels, classes)."""
        return replace(self, resolution=self.resolution if resolution is None else int(resolution),
                       in_channels=self.in_channels if in_channels is None else int(in_channels),
                       num_classes=self.num_classes if num_classes is None else int(num_classes))

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.stages)

    def describe(self) -> list[dict]:
        """The stage table: per stage its block type(s), depth, output width and stride."""
        rows = []
        for i, st in enumerate(self.stages):
            types = sorted({b.type for b in st})
            rows.append({"stage": i + 1, "block": "/".join(types), "depth": len(st), "width": st[-1].cout,
                         "stride": st[0].stride, "kernel": sorted({b.kernel for b in st}),
                         "expand": sorted({b.expand for b in st}), "se": any(b.se for b in st),
                         "act": st[0].act})
        return rows


# ---------------------------------------------------------------------- the built blocks
@dataclass(frozen=True)
class BlockCfg:
    """A block as built: the :class:`Block` with its input channels and size resolved."""
    block: Block
    cin: int
    h: int
    se_gate: str = "hardsigmoid"
    se_from: str = "mid"

    @property
    def mid(self) -> int:
        b = self.block
        if b.type == "basic":
            return b.cout
        if b.type == "mbconv":
            return self.cin if b.expand == 1 else make_divisible(self.cin * b.expand, 8)
        mid = max(1, int(round(b.cout * b.expand)))
        if b.type == "grouped":  # a whole number of groups
            mid = max(b.group_width, int(round(mid / b.group_width)) * b.group_width)
        return mid

    @property
    def groups(self) -> int:
        return self.mid // self.block.group_width if self.block.type == "grouped" else 1

    @property
    def se_mid(self) -> int:
        return max(1, self.cin // 4) if self.se_from == "in" else make_divisible(self.mid // 4, 8)

    @property
    def h_out(self) -> int:
        return conv_out(self.h, self.block.kernel, self.block.stride)

    @property
    def projection(self) -> bool:
        """A 1x1 conv shortcut (residual blocks whose shape changes)."""
        return self.block.type != "mbconv" and (self.block.stride != 1 or self.cin != self.block.cout)

    @property
    def residual(self) -> bool:
        """Any residual Add (identity or projection)."""
        return self.block.type != "mbconv" or (self.block.stride == 1 and self.cin == self.block.cout)


class SkeletonBlock(nn.Module):
    """Any of the four block types (see the module docstring)."""

    def __init__(self, cfg: BlockCfg):
        super().__init__()
        self.cfg = cfg
        b, mid = cfg.block, cfg.mid
        self.shortcut = ConvBNAct(cfg.cin, b.cout, 1, b.stride, act="none") if cfg.projection else None
        layers: list[nn.Module] = []
        if b.type == "basic":
            layers += [ConvBNAct(cfg.cin, b.cout, b.kernel, b.stride, act=b.act)]
            last_in = b.cout
        elif b.type == "mbconv":
            if b.expand != 1:
                layers.append(ConvBNAct(cfg.cin, mid, 1, 1, act=b.act))
            layers.append(ConvBNAct(mid, mid, b.kernel, b.stride, groups=mid, act=b.act))
            last_in = mid
        else:
            layers += [ConvBNAct(cfg.cin, mid, 1, 1, act=b.act),
                       ConvBNAct(mid, mid, b.kernel, b.stride, groups=cfg.groups, act=b.act)]
            last_in = mid
        if b.se:
            layers.append(SqueezeExcite(last_in, cfg.se_mid, cfg.se_gate))
        self.body = nn.Sequential(*layers)
        k_last = b.kernel if b.type == "basic" else 1
        self.last = ConvBNAct(last_in, b.cout, k_last, 1, act="none")
        self.act = nn.Identity() if b.type == "mbconv" else act_module(b.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cfg.residual:
            return self.last(self.body(x))
        sc = x if self.shortcut is None else self.shortcut(x)  # first: the main branch meets the Add last
        return self.act(self.last(self.body(x)) + sc)


class SkeletonNetwork(nn.Module):
    def __init__(self, sk: Skeleton):
        super().__init__()
        self.skeleton = sk
        self.stem, self.maxpool = stem_layers(sk)
        self.blocks = nn.ModuleList(SkeletonBlock(c) for c in block_configs(sk))
        self.head_conv, self.global_pooling, self.mix, self.classifier = head_layers(sk, sk.stages[-1][-1].cout)

    def forward_pre_gap(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.maxpool is not None:
            x = self.maxpool(x)
        for b in self.blocks:
            x = b(x)
        return x if self.head_conv is None else self.head_conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.global_pooling(self.forward_pre_gap(x))
        if self.mix is not None:
            x = self.mix(x)
        return self.classifier(torch.flatten(x, 1))


def stem_layers(sk: Skeleton) -> tuple[nn.Module, nn.Module | None]:
    """The stem conv and its max-pool (None without one)."""
    stem = ConvBNAct(sk.in_channels, sk.stem.cout, sk.stem.kernel, sk.stem.stride, act=sk.stem.act)
    return stem, nn.MaxPool2d(3, 2, 1) if sk.stem.maxpool else None


def head_layers(sk: Skeleton, c: int) -> tuple[nn.Module | None, nn.Module, nn.Module | None, nn.Linear]:
    """(head conv or None, global pooling, mix or None, classifier) after ``c`` channels."""
    head_conv = ConvBNAct(c, sk.head.conv, 1, 1, act=sk.head.conv_act) if sk.head.conv else None
    c = sk.head.conv or c
    mix = nn.Sequential(nn.Conv2d(c, sk.head.mix, 1, bias=True), act_module(sk.head.mix_act)) if sk.head.mix else None
    return head_conv, nn.AdaptiveAvgPool2d(1), mix, nn.Linear(sk.head.mix or c, sk.num_classes)


def stem_out(sk: Skeleton) -> int:
    """Spatial size after the stem (and its max-pool)."""
    h = conv_out(sk.resolution, sk.stem.kernel, sk.stem.stride)
    return conv_out(h, 3, 2) if sk.stem.maxpool else h


def block_configs(sk: Skeleton) -> list[BlockCfg]:
    """Every block with its input channels and size, in order."""
    h, cin, out = stem_out(sk), sk.stem.cout, []
    for st in sk.stages:
        for b in st:
            cfg = BlockCfg(b, cin, h, sk.se_gate, sk.se_from)
            out.append(cfg)
            cin, h = b.cout, cfg.h_out
    return out


def build_network(sk: Skeleton) -> SkeletonNetwork:
    """A freshly initialised network of the skeleton (training mode)."""
    net = SkeletonNetwork(sk)
    init_weights(net)
    return net


# ------------------------------------------------------------------------ kernel specs
@lru_cache(maxsize=65536)
def block_specs(cfg: BlockCfg) -> tuple[KernelSpec, ...]:
    """The runtime kernels of one block, in execution order (docs/design.md §1)."""
    b, h, h2, mid = cfg.block, cfg.h, cfg.h_out, cfg.mid
    out: list[KernelSpec] = []
    if cfg.projection:
        out.append(k_conv(cfg.cin, b.cout, h, h, 1, b.stride, act="none"))
    if b.type == "basic":
        out.append(k_conv(cfg.cin, b.cout, h, h, b.kernel, b.stride, act=b.act))
        last_in, k_last = b.cout, b.kernel
    elif b.type == "mbconv":
        if b.expand != 1:
            out.append(k_conv(cfg.cin, mid, h, h, 1, act=b.act))
        out.append(k_conv(mid, mid, h, h, b.kernel, b.stride, groups=mid, act=b.act))
        last_in, k_last = mid, 1
    else:
        out += [k_conv(cfg.cin, mid, h, h, 1, act=b.act),
                k_conv(mid, mid, h, h, b.kernel, b.stride, groups=cfg.groups, act=b.act)]
        last_in, k_last = mid, 1
    if b.se:
        out += [KernelSpec.make("global_pool", op="avg", c=last_in, h=h2, w=h2),
                k_conv(last_in, cfg.se_mid, 1, 1, 1, bn=False, act="relu"),
                k_conv(cfg.se_mid, last_in, 1, 1, 1, bn=False, act=cfg.se_gate),
                k_mul(last_in, h2, h2, broadcast=h2 > 1)]  # a 1x1 map: same shapes
    act = "none" if b.type == "mbconv" else b.act
    out.append(k_conv(last_in, b.cout, h2, h2, k_last, act=act, add=cfg.residual))
    return tuple(out)


def skeleton_specs(sk: Skeleton) -> list[KernelSpec]:
    """The runtime kernels of the skeleton's exported network, in execution order."""
    r = sk.resolution
    parts: list = [[k_conv(sk.in_channels, sk.stem.cout, r, r, sk.stem.kernel, sk.stem.stride, act=sk.stem.act)]]
    h = conv_out(r, sk.stem.kernel, sk.stem.stride)
    if sk.stem.maxpool:
        parts.append([k_pool("max", sk.stem.cout, h, h, 3, 2)])
    cfgs = block_configs(sk)
    parts += [block_specs(c) for c in cfgs]
    c, h = cfgs[-1].block.cout, cfgs[-1].h_out
    head: list[KernelSpec] = []
    if sk.head.conv:
        head.append(k_conv(c, sk.head.conv, h, h, 1, act=sk.head.conv_act))
        c = sk.head.conv
    if sk.head.mix:
        head += [KernelSpec.make("global_pool", op="avg", c=c, h=h, w=h),
                 k_conv(c, sk.head.mix, 1, 1, 1, bn=False, act=sk.head.mix_act),
                 *k_head(sk.head.mix, 1, 1, sk.num_classes)[1:]]
    else:
        head += k_head(c, h, h, sk.num_classes)
    parts.append(head)
    return list(itertools.chain.from_iterable(parts))


# ----------------------------------------------------------------------- serialisation
def skeleton_to_dict(sk: Skeleton) -> dict:
    """Plain JSON-able data (written into checkpoints, read back without pickle)."""
    from dataclasses import asdict
    return asdict(sk)


def skeleton_from_dict(d: dict) -> Skeleton:
    try:
        stages = tuple(tuple(Block(**b) for b in st) for st in d["stages"])
        return Skeleton(Stem(**d["stem"]), stages, Head(**d["head"]),
                        **{k: d[k] for k in ("resolution", "in_channels", "num_classes", "se_gate", "se_from")})
    except (KeyError, TypeError) as e:
        raise SpaceError(f"not a stage skeleton ({e})") from None


__all__ = ["BLOCK_TYPES", "Block", "BlockCfg", "Head", "Skeleton", "SkeletonBlock", "SkeletonNetwork", "Stem",
           "block_configs", "block_specs", "build_network", "head_layers", "skeleton_from_dict", "skeleton_specs",
           "skeleton_to_dict", "stem_layers", "stem_out"]
