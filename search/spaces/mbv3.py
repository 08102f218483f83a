"""A MobileNetV3 elastic space in the style of Once-for-All (Cai et al., ICLR 2020).

The network: stem conv 3x3 s2 (hardswish), a fixed first MBConv (expand 1, 3x3, relu),
five elastic stages (widths 24/40/80/112/160, strides 2/2/2/1/2, activations
relu/relu/hardswish/hardswish/hardswish, squeeze-and-excitation in stages 2, 4 and 5), a 1x1
"final expand" conv (960, hardswish), global average pooling, a 1x1 "feature mix" conv
(1280, hardswish, no BN) and a linear classifier. Widths scale with ``width_mult``.

Elastic genes: the input resolution (``resolutions``), the depth of each stage
(``depth_choices``), and per block the depthwise kernel (``kernel_choices``) and the expand
ratio (``expand_choices``). Blocks beyond a stage's depth are inactive: their genes are kept at
the smallest choice (canonical form) and encode as 0.

Kernel conventions (docs/design.md §1): each Conv+BN+activation is one ``conv``; the MBConv
projection Conv+BN followed by the residual Add is one ``conv_add(act="none")``; SE is
``global_pool``, ``conv`` 1x1 (relu), ``conv`` 1x1 (hardsigmoid), broadcast ``elementwise(mul)``.
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
from search.spaces.base import (GeneSpace, SpaceError, act_module, as_rng, conv_out, init_weights, k_conv, k_head,
                                k_se, make_divisible)


@dataclass(frozen=True)
class MBV3Arch:
    """Resolution, depth per stage, and kernel / expand per block slot (stage-major,
    ``max_depth`` slots per stage)."""
    resolution: int
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[int, ...]


@dataclass(frozen=True)
class MBBlockCfg:
    """One MBConv as built: input channels/size, output channels, and its choices."""
    cin: int
    cout: int
    h: int
    kernel: int
    expand: float
    stride: int
    se: bool
    act: str

    @property
    def mid(self) -> int:
        return self.cin if self.expand == 1 else make_divisible(self.cin * self.expand, 8)

    @property
    def se_mid(self) -> int:
        return make_divisible(self.mid // 4, 8)

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout

    @property
    def h_out(self) -> int:
        return conv_out(self.h, self.kernel, self.stride)


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BN + activation; exports as one fused ``conv``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: str = "relu"):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act_module(act))


class SqueezeExcite(nn.Module):
    """Global pool, 1x1 conv + ReLU, 1x1 conv + ``gate`` (hardsigmoid or sigmoid), channel Mul."""

    def __init__(self, c: int, mid: int, gate: str = "hardsigmoid"):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(c, mid, 1, bias=True)
        self.relu = nn.ReLU(inplace=False)
        self.expand = nn.Conv2d(mid, c, 1, bias=True)
        self.gate = act_module(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


class MBConv(nn.Module):
    def __init__(self, cfg: MBBlockCfg):
        super().__init__()
        self.cfg = cfg
        mid = cfg.mid
        self.inverted_bottleneck = ConvBNAct(cfg.cin, mid, 1, 1, act=cfg.act) if cfg.expand != 1 else None
        self.depth_conv = ConvBNAct(mid, mid, cfg.kernel, cfg.stride, groups=mid, act=cfg.act)
        self.se = SqueezeExcite(mid, cfg.se_mid) if cfg.se else None
        self.point_linear = ConvBNAct(mid, cfg.cout, 1, 1, act="none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.inverted_bottleneck is None else self.inverted_bottleneck(x)
        y = self.depth_conv(y)
        if self.se is not None:
            y = self.se(y)
        y = self.point_linear(y)
        return y + x if self.cfg.residual else y


class MBV3Network(nn.Module):
    def __init__(self, stem: int, in_channels: int, blocks: Sequence[MBBlockCfg], final_c: int, mix_c: int,
                 num_classes: int):
        super().__init__()
        self.first_conv = ConvBNAct(in_channels, stem, 3, 2, act="hardswish")
        self.blocks = nn.ModuleList(MBConv(b) for b in blocks)
        last = blocks[-1].cout
        self.final_expand = ConvBNAct(last, final_c, 1, 1, act="hardswish")
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.feature_mix = nn.Sequential(nn.Conv2d(final_c, mix_c, 1, bias=False), nn.Hardswish())
        self.classifier = nn.Linear(mix_c, num_classes)

    def forward_pre_gap(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for b in self.blocks:
            x = b(x)
        return self.final_expand(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_mix(self.global_pooling(self.forward_pre_gap(x)))
        return self.classifier(torch.flatten(x, 1))


@lru_cache(maxsize=65536)
def mbconv_specs(cfg: MBBlockCfg) -> tuple[KernelSpec, ...]:
    """The kernels of one MBConv (cached: the predictor's batch path calls this a lot)."""
    h, h2, mid = cfg.h, cfg.h_out, cfg.mid
    out: list[KernelSpec] = []
    if cfg.expand != 1:
        out.append(k_conv(cfg.cin, mid, h, h, 1, act=cfg.act))
    out.append(k_conv(mid, mid, h, h, cfg.kernel, cfg.stride, groups=mid, act=cfg.act))
    if cfg.se:
        out += k_se(mid, cfg.se_mid, h2, h2, gate="hardsigmoid")
    out.append(k_conv(mid, cfg.cout, h2, h2, 1, act="none", add=cfg.residual))
    return tuple(out)


class MBV3Space(GeneSpace[MBV3Arch]):
    """Once-for-All MobileNetV3 space (see the module docstring).

    For CIFAR- or digits-sized data use small resolutions, e.g.
    ``MBV3Space(resolutions=(32,), num_classes=10, width_mult=0.5)``.
    """

    name = "mbv3"

    def __init__(self, resolutions: Sequence[int] = (128, 160, 192, 224), depth_choices: Sequence[int] = (2, 3, 4),
                 kernel_choices: Sequence[int] = (3, 5, 7), expand_choices: Sequence[int] = (3, 4, 6),
                 width_mult: float = 1.0, num_classes: int = 1000, in_channels: int = 3,
                 stage_widths: Sequence[int] = (24, 40, 80, 112, 160), stage_strides: Sequence[int] = (2, 2, 2, 1, 2),
                 stage_acts: Sequence[str] = ("relu", "relu", "hardswish", "hardswish", "hardswish"),
                 stage_se: Sequence[bool] = (False, True, False, True, True)):
        self.resolutions = tuple(sorted(int(r) for r in resolutions))
        self.depth_choices = tuple(sorted(depth_choices))
        self.kernel_choices = tuple(sorted(kernel_choices))
        self.expand_choices = tuple(sorted(expand_choices))
        if not (len(stage_widths) == len(stage_strides) == len(stage_acts) == len(stage_se)):
            raise SpaceError("stage_widths, stage_strides, stage_acts and stage_se must have one entry per stage")
        self.width_mult, self.num_classes, self.in_channels = width_mult, num_classes, in_channels
        self.n_stages = len(stage_widths)
        self.max_depth = max(self.depth_choices)
        md = lambda c: make_divisible(c * width_mult, 8)  # noqa: E731
        self.stem_c, self.first_c = md(16), md(16)
        self.stage_widths = tuple(md(c) for c in stage_widths)
        self.stage_strides, self.stage_acts, self.stage_se = tuple(stage_strides), tuple(stage_acts), tuple(stage_se)
        self.final_c, self.mix_c = md(960), md(1280)
        self._cache: dict[MBV3Arch, tuple[KernelSpec, ...]] = {}

    def __repr__(self) -> str:
        return (f"MBV3Space(resolutions={self.resolutions}, width_mult={self.width_mult}, "
                f"num_classes={self.num_classes})")

    @property
    def n_slots(self) -> int:
        return self.n_stages * self.max_depth

    # -- canonical form and validation
    def make(self, resolution: int, depths: Sequence[int], kernels: Sequence[int], expands: Sequence[int]) -> MBV3Arch:
        """A validated, canonical arch (inactive slots set to the smallest choices)."""
        depths, kernels, expands = tuple(map(int, depths)), list(map(int, kernels)), list(map(int, expands))
        if resolution not in self.resolutions:
            raise SpaceError(f"resolution {resolution} not in {self.resolutions}")
        if len(depths) != self.n_stages or any(d not in self.depth_choices for d in depths):
            raise SpaceError(f"depths {depths}: need {self.n_stages} values from {self.depth_choices}")
        if len(kernels) != self.n_slots or len(expands) != self.n_slots:
            raise SpaceError(f"kernels and expands need {self.n_slots} values (one per block slot)")
        for s, d in enumerate(depths):
            for b in range(self.max_depth):
                i = s * self.max_depth + b
                if b >= d:
                    kernels[i], expands[i] = self.kernel_choices[0], self.expand_choices[0]
                elif kernels[i] not in self.kernel_choices or expands[i] not in self.expand_choices:
                    raise SpaceError(f"block {i}: kernel {kernels[i]} / expand {expands[i]} not in "
                                     f"{self.kernel_choices} / {self.expand_choices}")
        return MBV3Arch(int(resolution), depths, tuple(kernels), tuple(expands))

    def validate(self, arch: MBV3Arch) -> MBV3Arch:
        if not isinstance(arch, MBV3Arch):
            raise SpaceError(f"not an MBV3Arch: {arch!r}")
        return self.make(arch.resolution, arch.depths, arch.kernels, arch.expands)

    def largest(self) -> MBV3Arch:
        n = self.n_slots
        return self.make(self.resolutions[-1], [self.max_depth] * self.n_stages, [self.kernel_choices[-1]] * n,
                         [self.expand_choices[-1]] * n)

    def smallest(self) -> MBV3Arch:
        n = self.n_slots
        return self.make(self.resolutions[0], [self.depth_choices[0]] * self.n_stages, [self.kernel_choices[0]] * n,
                         [self.expand_choices[0]] * n)

    # -- genetic operators
    def sample(self, rng=None) -> MBV3Arch:
        rng = as_rng(rng)
        n = self.n_slots
        return self.make(int(rng.choice(self.resolutions)), rng.choice(self.depth_choices, self.n_stages),
                         rng.choice(self.kernel_choices, n), rng.choice(self.expand_choices, n))

    def _genes(self, arch: MBV3Arch) -> list:
        return [arch.resolution, *arch.depths, *arch.kernels, *arch.expands]

    def _from_genes(self, g: Sequence) -> MBV3Arch:
        s, n = self.n_stages, self.n_slots
        return self.make(g[0], g[1:1 + s], g[1 + s:1 + s + n], g[1 + s + n:1 + s + 2 * n])

    def _choices(self) -> list[tuple]:
        return [self.resolutions] + [self.depth_choices] * self.n_stages + [self.kernel_choices] * self.n_slots \
            + [self.expand_choices] * self.n_slots

    # -- representations
    @property
    def encoding_size(self) -> int:
        return 1 + self.n_stages + 2 * self.n_slots

    def encode(self, arch) -> np.ndarray:
        """[resolution, depth per stage, kernel per slot, expand per slot]; inactive slots are 0."""
        arch = self.validate(arch)
        k = np.array(arch.kernels, np.float32)
        e = np.array(arch.expands, np.float32)
        for s, d in enumerate(arch.depths):
            k[s * self.max_depth + d:(s + 1) * self.max_depth] = 0
            e[s * self.max_depth + d:(s + 1) * self.max_depth] = 0
        return np.concatenate([[arch.resolution], np.array(arch.depths, np.float32), k, e]).astype(np.float32)

    def decode(self, vector) -> MBV3Arch:
        v = np.asarray(vector, np.float32)
        if v.shape != (self.encoding_size,):
            raise SpaceError(f"an mbv3 encoding has {self.encoding_size} values; got shape {v.shape}")
        g = [int(round(x)) for x in v]
        s, n = self.n_stages, self.n_slots
        ks = [x if x else self.kernel_choices[0] for x in g[1 + s:1 + s + n]]
        es = [x if x else self.expand_choices[0] for x in g[1 + s + n:]]
        return self.make(g[0], g[1:1 + s], ks, es)

    def to_string(self, arch) -> str:
        """``mbv3:r=160:d=2,3,4,2,3:k=<active kernels>:e=<active expands>``."""
        a = self.validate(arch)
        active = [s * self.max_depth + b for s, d in enumerate(a.depths) for b in range(d)]
        return (f"mbv3:r={a.resolution}:d={','.join(map(str, a.depths))}:k={','.join(str(a.kernels[i]) for i in active)}"
                f":e={','.join(str(a.expands[i]) for i in active)}")

    def from_string(self, s: str) -> MBV3Arch:
        try:
            tag, r, d, k, e = s.strip().split(":")
            assert tag == "mbv3" and r[:2] == "r=" and d[:2] == "d=" and k[:2] == "k=" and e[:2] == "e="
            depths = [int(x) for x in d[2:].split(",")]
            ks, es = [int(x) for x in k[2:].split(",")], [int(x) for x in e[2:].split(",")]
            assert len(ks) == len(es) == sum(depths) and len(depths) == self.n_stages
        except (ValueError, AssertionError):
            raise SpaceError(f"not an mbv3 arch string: {s!r} (expected mbv3:r=R:d=D1,..:k=K1,..:e=E1,..)") from None
        kernels = [self.kernel_choices[0]] * self.n_slots
        expands = [self.expand_choices[0]] * self.n_slots
        it = iter(range(len(ks)))
        for st, dd in enumerate(depths):
            for b in range(dd):
                j = next(it)
                kernels[st * self.max_depth + b], expands[st * self.max_depth + b] = ks[j], es[j]
        return self.make(int(r[2:]), depths, kernels, expands)

    # -- structure: one source of truth for build, kernel_specs and the supernet
    def block_configs(self, arch: MBV3Arch) -> list[MBBlockCfg]:
        """The MBConv blocks of ``arch`` in order (the fixed first block included)."""
        h = conv_out(arch.resolution, 3, 2)
        blocks = [MBBlockCfg(self.stem_c, self.first_c, h, 3, 1, 1, False, "relu")]
        cin = self.first_c
        for s, d in enumerate(arch.depths):
            for b in range(d):
                i = s * self.max_depth + b
                cfg = MBBlockCfg(cin, self.stage_widths[s], h, arch.kernels[i], arch.expands[i],
                                 self.stage_strides[s] if b == 0 else 1, self.stage_se[s], self.stage_acts[s])
                blocks.append(cfg)
                cin, h = cfg.cout, cfg.h_out
        return blocks

    def input_shape(self, arch: MBV3Arch) -> tuple[int, int, int]:
        return (self.in_channels, arch.resolution, arch.resolution)

    def build(self, arch) -> MBV3Network:
        arch = self.validate(arch)
        net = MBV3Network(self.stem_c, self.in_channels, self.block_configs(arch), self.final_c, self.mix_c,
                          self.num_classes)
        init_weights(net)
        return net

    def _specs_uncached(self, arch: MBV3Arch) -> tuple[KernelSpec, ...]:
        """Same walk as :meth:`block_configs`, with per-block and per-end caches (fast path)."""
        if not isinstance(arch, MBV3Arch) or arch.resolution not in self.resolutions \
                or len(arch.depths) != self.n_stages or not set(arch.depths) <= set(self.depth_choices):
            arch = self.validate(arch)  # raises with the reason
        ends = self.__dict__.setdefault("_ends", {})
        blocks = self.__dict__.setdefault("_blocks", {})
        r = arch.resolution
        stem = ends.get(("stem", r))
        if stem is None:
            stem = ends[("stem", r)] = (k_conv(self.in_channels, self.stem_c, r, r, 3, 2, act="hardswish"),)
        parts = [stem]
        h = conv_out(r, 3, 2)
        key = (self.stem_c, self.first_c, h, 3, 1, 1, False, "relu")
        md = self.max_depth
        for s, d in enumerate(arch.depths):
            for b in range(-1 if s == 0 else 0, d):
                if b >= 0:
                    i = s * md + b
                    k, e = arch.kernels[i], arch.expands[i]
                    if k not in self.kernel_choices or e not in self.expand_choices:
                        self.validate(arch)
                    key = (key[1], self.stage_widths[s], h, k, e, self.stage_strides[s] if b == 0 else 1,
                           self.stage_se[s], self.stage_acts[s])
                hit = blocks.get(key)
                if hit is None:
                    cfg = MBBlockCfg(*key)
                    hit = blocks[key] = (mbconv_specs(cfg), cfg.h_out)
                parts.append(hit[0])
                h = hit[1]
        c = key[1]
        tail = ends.get(("tail", c, h))
        if tail is None:
            tail = ends[("tail", c, h)] = (
                k_conv(c, self.final_c, h, h, 1, act="hardswish"),
                KernelSpec.make("global_pool", op="avg", c=self.final_c, h=h, w=h),
                k_conv(self.final_c, self.mix_c, 1, 1, 1, bn=False, act="hardswish"),
                *k_head(self.mix_c, 1, 1, self.num_classes)[1:])  # Flatten + Gemm (the pool is above)
        parts.append(tail)
        return tuple(itertools.chain.from_iterable(parts))


__all__ = ["MBV3Arch", "MBBlockCfg", "MBV3Space", "MBV3Network", "MBConv", "ConvBNAct", "SqueezeExcite",
           "mbconv_specs"]
