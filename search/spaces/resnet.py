"""An elastic bottleneck ResNet in the style of Once-for-All's ResNet-50 space.

The network: a 3x3 stem conv (``stem_channels``, stride ``stem_stride``) + BN + ReLU, stages of
bottleneck blocks (1x1, 3x3 with the stage's stride in the first block, 1x1, shortcut), global
average pooling and a linear classifier. The shortcut is the identity, or, when the shape
changes, an AvgPool 2x2 (stride 2, ceil mode; only when downsampling) then a 1x1 conv + BN.

Elastic genes: the input resolution, the depth of each stage (``depth_choices``), a width
multiplier per stage (``width_choices``: a stage outputs ``make_divisible(base * w, 8)``
channels) and an expand ratio per block (``expand_choices``: the bottleneck's middle width is
``make_divisible(out * e, 8)``). Inactive block slots keep the smallest expand ratio
(canonical form) and encode as 0.

Kernel conventions (docs/design.md §1): Conv+BN+ReLU is one ``conv``; each block computes its
shortcut first, then the main branch, whose last Conv+BN, the Add and the ReLU form one
``conv_add(act="relu")``; the shortcut conv is ``conv(act="none")`` after a ``pool(avg, 2, 2)``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from torch import nn

from profiling.kernels import KernelSpec
from search.spaces.base import (GeneSpace, SpaceError, as_rng, conv_out, init_weights, k_conv, k_head, k_pool,
                                make_divisible)
from search.spaces.mbv3 import ConvBNAct


@dataclass(frozen=True)
class ResNetArch:
    """Resolution, depth and width multiplier per stage, expand ratio per block slot."""
    resolution: int
    depths: tuple[int, ...]
    widths: tuple[float, ...]
    expands: tuple[float, ...]


@dataclass(frozen=True)
class BottleneckCfg:
    cin: int
    mid: int
    cout: int
    h: int
    stride: int

    @property
    def h_out(self) -> int:
        return conv_out(self.h, 3, self.stride)

    @property
    def shortcut(self) -> bool:
        return self.stride != 1 or self.cin != self.cout


class Bottleneck(nn.Module):
    def __init__(self, cfg: BottleneckCfg):
        super().__init__()
        self.cfg = cfg
        self.conv1 = ConvBNAct(cfg.cin, cfg.mid, 1, 1, act="relu")
        self.conv2 = ConvBNAct(cfg.mid, cfg.mid, 3, cfg.stride, act="relu")
        self.conv3 = ConvBNAct(cfg.mid, cfg.cout, 1, 1, act="none")
        if cfg.shortcut:
            pool = nn.AvgPool2d(2, 2, ceil_mode=True) if cfg.stride == 2 else nn.Identity()
            self.downsample: nn.Module | None = nn.Sequential(pool, ConvBNAct(cfg.cin, cfg.cout, 1, 1, act="none"))
        else:
            self.downsample = None
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sc = x if self.downsample is None else self.downsample(x)  # first: the main branch meets the Add last
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + sc)


class ResNetNetwork(nn.Module):
    def __init__(self, in_channels: int, stem_c: int, stem_stride: int, blocks: Sequence[BottleneckCfg], num_classes: int):
        super().__init__()
        self.stem = ConvBNAct(in_channels, stem_c, 3, stem_stride, act="relu")
        self.blocks = nn.ModuleList(Bottleneck(b) for b in blocks)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(blocks[-1].cout, num_classes)

    def forward_pre_gap(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.global_pooling(self.forward_pre_gap(x)), 1))


@lru_cache(maxsize=65536)
def bottleneck_specs(cfg: BottleneckCfg) -> tuple[KernelSpec, ...]:
    h, h2 = cfg.h, cfg.h_out
    out: list[KernelSpec] = []
    if cfg.shortcut:
        if cfg.stride == 2:
            out.append(k_pool("avg", cfg.cin, h, h, 2, 2))
        out.append(k_conv(cfg.cin, cfg.cout, h2, h2, 1, act="none"))
    out += [k_conv(cfg.cin, cfg.mid, h, h, 1, act="relu"), k_conv(cfg.mid, cfg.mid, h, h, 3, cfg.stride, act="relu"),
            k_conv(cfg.mid, cfg.cout, h2, h2, 1, act="relu", add=True)]
    return tuple(out)


class ResNetSpace(GeneSpace[ResNetArch]):
    """Elastic bottleneck ResNet (see the module docstring).

    For CIFAR- or digits-sized data: ``ResNetSpace(resolutions=(32,), base_widths=(64, 128, 256),
    stage_strides=(1, 2, 2), stem_stride=1, stem_channels=32, num_classes=10)``.
    """

    name = "resnet"

    def __init__(self, resolutions: Sequence[int] = (128, 160, 192, 224), depth_choices: Sequence[int] = (2, 3, 4),
                 width_choices: Sequence[float] = (0.65, 0.8, 1.0), expand_choices: Sequence[float] = (0.2, 0.25, 0.35),
                 base_widths: Sequence[int] = (256, 512, 1024, 2048), stage_strides: Sequence[int] = (1, 2, 2, 2),
                 stem_channels: int = 64, stem_stride: int = 2, num_classes: int = 1000, in_channels: int = 3):
        if len(base_widths) != len(stage_strides):
            raise SpaceError("base_widths and stage_strides need one entry per stage")
        self.resolutions = tuple(sorted(int(r) for r in resolutions))
        self.depth_choices = tuple(sorted(depth_choices))
        self.width_choices = tuple(sorted(float(w) for w in width_choices))
        self.expand_choices = tuple(sorted(float(e) for e in expand_choices))
        self.base_widths, self.stage_strides = tuple(base_widths), tuple(stage_strides)
        self.stem_c, self.stem_stride = stem_channels, stem_stride
        self.num_classes, self.in_channels = num_classes, in_channels
        self.n_stages, self.max_depth = len(base_widths), max(self.depth_choices)
        self._cache: dict[ResNetArch, tuple[KernelSpec, ...]] = {}

    def __repr__(self) -> str:
        return f"ResNetSpace(resolutions={self.resolutions}, base_widths={self.base_widths}, num_classes={self.num_classes})"

    @property
    def n_slots(self) -> int:
        return self.n_stages * self.max_depth

    def make(self, resolution: int, depths: Sequence[int], widths: Sequence[float], expands: Sequence[float]) -> ResNetArch:
        depths, widths, expands = tuple(map(int, depths)), tuple(map(float, widths)), list(map(float, expands))
        if resolution not in self.resolutions:
            raise SpaceError(f"resolution {resolution} not in {self.resolutions}")
        if len(depths) != self.n_stages or any(d not in self.depth_choices for d in depths):
            raise SpaceError(f"depths {depths}: need {self.n_stages} values from {self.depth_choices}")
        if len(widths) != self.n_stages or any(w not in self.width_choices for w in widths):
            raise SpaceError(f"widths {widths}: need {self.n_stages} values from {self.width_choices}")
        if len(expands) != self.n_slots:
            raise SpaceError(f"expands need {self.n_slots} values (one per block slot)")
        for s, d in enumerate(depths):
            for b in range(self.max_depth):
                i = s * self.max_depth + b
                if b >= d:
                    expands[i] = self.expand_choices[0]
                elif expands[i] not in self.expand_choices:
                    raise SpaceError(f"block {i}: expand {expands[i]} not in {self.expand_choices}")
        return ResNetArch(int(resolution), depths, widths, tuple(expands))

    def validate(self, arch: ResNetArch) -> ResNetArch:
        if not isinstance(arch, ResNetArch):
            raise SpaceError(f"not a ResNetArch: {arch!r}")
        return self.make(arch.resolution, arch.depths, arch.widths, arch.expands)

    def largest(self) -> ResNetArch:
        return self.make(self.resolutions[-1], [self.max_depth] * self.n_stages, [self.width_choices[-1]] * self.n_stages,
                         [self.expand_choices[-1]] * self.n_slots)

    def smallest(self) -> ResNetArch:
        return self.make(self.resolutions[0], [self.depth_choices[0]] * self.n_stages, [self.width_choices[0]] * self.n_stages,
                         [self.expand_choices[0]] * self.n_slots)

    # -- genetic operators
    def _genes(self, a: ResNetArch) -> list:
        return [a.resolution, *a.depths, *a.widths, *a.expands]

    def _from_genes(self, g: Sequence) -> ResNetArch:
        s = self.n_stages
        return self.make(g[0], g[1:1 + s], g[1 + s:1 + 2 * s], g[1 + 2 * s:])

    def _choices(self) -> list[tuple]:
        return [self.resolutions] + [self.depth_choices] * self.n_stages + [self.width_choices] * self.n_stages \
            + [self.expand_choices] * self.n_slots

    def sample(self, rng=None) -> ResNetArch:
        rng = as_rng(rng)
        return self._from_genes([ch[int(rng.integers(len(ch)))] for ch in self._choices()])

    # -- representations
    @property
    def encoding_size(self) -> int:
        return 1 + 2 * self.n_stages + self.n_slots

    def encode(self, arch) -> np.ndarray:
        """[resolution, depth per stage, width multiplier per stage, expand per slot (0 if inactive)]."""
        a = self.validate(arch)
        e = np.array(a.expands, np.float32)
        for s, d in enumerate(a.depths):
            e[s * self.max_depth + d:(s + 1) * self.max_depth] = 0
        return np.concatenate([[a.resolution], np.array(a.depths, np.float32), np.array(a.widths, np.float32), e]
                              ).astype(np.float32)

    def _snap(self, x: float, choices: tuple) -> float:
        return min(choices, key=lambda c: abs(c - x))

    def decode(self, vector) -> ResNetArch:
        v = np.asarray(vector, np.float64)
        if v.shape != (self.encoding_size,):
            raise SpaceError(f"a resnet encoding has {self.encoding_size} values; got shape {v.shape}")
        s = self.n_stages
        widths = [self._snap(x, self.width_choices) for x in v[1 + s:1 + 2 * s]]
        expands = [self._snap(x, self.expand_choices) if x > 0 else self.expand_choices[0] for x in v[1 + 2 * s:]]
        return self.make(int(round(v[0])), [int(round(x)) for x in v[1:1 + s]], widths, expands)

    def to_string(self, arch) -> str:
        """``resnet:r=160:d=2,3,4,2:w=0.65,..:e=<active expands>``."""
        a = self.validate(arch)
        active = [s * self.max_depth + b for s, d in enumerate(a.depths) for b in range(d)]
        return (f"resnet:r={a.resolution}:d={','.join(map(str, a.depths))}:w={','.join(f'{w:g}' for w in a.widths)}"
                f":e={','.join(f'{a.expands[i]:g}' for i in active)}")

    def from_string(self, s: str) -> ResNetArch:
        try:
            tag, r, d, w, e = s.strip().split(":")
            assert tag == "resnet" and r[:2] == "r=" and d[:2] == "d=" and w[:2] == "w=" and e[:2] == "e="
            depths = [int(x) for x in d[2:].split(",")]
            widths = [float(x) for x in w[2:].split(",")]
            es = [float(x) for x in e[2:].split(",")]
            assert len(es) == sum(depths) and len(depths) == self.n_stages
        except (ValueError, AssertionError):
            raise SpaceError(f"not a resnet arch string: {s!r} (expected resnet:r=R:d=..:w=..:e=..)") from None
        expands = [self.expand_choices[0]] * self.n_slots
        j = 0
        for st, dd in enumerate(depths):
            for b in range(dd):
                expands[st * self.max_depth + b] = es[j]
                j += 1
        return self.make(int(r[2:]), depths, widths, expands)

    # -- structure
    def stage_width(self, stage: int, mult: float) -> int:
        return make_divisible(self.base_widths[stage] * mult, 8)

    def block_configs(self, arch: ResNetArch) -> list[BottleneckCfg]:
        h = conv_out(arch.resolution, 3, self.stem_stride)
        cin = self.stem_c
        blocks = []
        for s, d in enumerate(arch.depths):
            cout = self.stage_width(s, arch.widths[s])
            for b in range(d):
                mid = make_divisible(cout * arch.expands[s * self.max_depth + b], 8)
                cfg = BottleneckCfg(cin, mid, cout, h, self.stage_strides[s] if b == 0 else 1)
                blocks.append(cfg)
                cin, h = cout, cfg.h_out
        return blocks

    def input_shape(self, arch: ResNetArch) -> tuple[int, int, int]:
        return (self.in_channels, arch.resolution, arch.resolution)

    def build(self, arch) -> ResNetNetwork:
        arch = self.validate(arch)
        net = ResNetNetwork(self.in_channels, self.stem_c, self.stem_stride, self.block_configs(arch), self.num_classes)
        init_weights(net)
        return net

    def _specs_uncached(self, arch: ResNetArch) -> tuple[KernelSpec, ...]:
        """Same walk as :meth:`block_configs`, with per-block and per-end caches (fast path)."""
        if not isinstance(arch, ResNetArch) or arch.resolution not in self.resolutions \
                or len(arch.depths) != self.n_stages or not set(arch.depths) <= set(self.depth_choices) \
                or not set(arch.widths) <= set(self.width_choices):
            arch = self.validate(arch)
        ends = self.__dict__.setdefault("_ends", {})
        blocks = self.__dict__.setdefault("_blocks", {})
        r = arch.resolution
        stem = ends.get(("stem", r))
        if stem is None:
            stem = ends[("stem", r)] = (k_conv(self.in_channels, self.stem_c, r, r, 3, self.stem_stride, act="relu"),)
        parts = [stem]
        h, cin = conv_out(r, 3, self.stem_stride), self.stem_c
        md = self.max_depth
        for s, d in enumerate(arch.depths):
            w = arch.widths[s]
            for b in range(d):
                e = arch.expands[s * md + b]
                if e not in self.expand_choices:
                    self.validate(arch)
                key = (cin, s, w, e, h, b == 0)
                hit = blocks.get(key)
                if hit is None:
                    cout = self.stage_width(s, w)
                    cfg = BottleneckCfg(cin, make_divisible(cout * e, 8), cout, h, self.stage_strides[s] if b == 0 else 1)
                    hit = blocks[key] = (bottleneck_specs(cfg), cfg.h_out, cout)
                parts.append(hit[0])
                h, cin = hit[1], hit[2]
        tail = ends.get(("tail", cin, h))
        if tail is None:
            tail = ends[("tail", cin, h)] = tuple(k_head(cin, h, h, self.num_classes))
        parts.append(tail)
        return tuple(itertools.chain.from_iterable(parts))


__all__ = ["ResNetArch", "BottleneckCfg", "ResNetSpace", "ResNetNetwork", "Bottleneck", "bottleneck_specs"]
