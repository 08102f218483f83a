"""The baseline-derived space: start from a known network and change its later stages.

``BaselineSpace(skeleton, baseline="resnet20")`` keeps the baseline's stem, head, stage strides
and activations. Each stage has four genes:

- ``op``: the block type: ``own`` (the baseline's own blocks), ``mb{E}k{K}`` (an MBConv with
  expand ratio E in 1/3/6 and depthwise kernel K in 3/5; expand 1 is the depthwise-separable
  convolution) or ``grouped`` (a ResNeXt/RegNet bottleneck, group width 8, bottleneck ratio 1);
- ``depth``: shallower (about 1/3, 1/2 or 2/3 of the baseline's blocks), the same, or one deeper;
  ``own`` blocks are the baseline's first blocks, a deeper stage repeats its last one;
- ``width``: 0.5, 0.75, 1.0 or 1.25 times the baseline's stage width (multiples of 4);
- ``se``: squeeze-and-excitation on or off.

The baseline is the point ``own, baseline depth, 1.0, baseline SE`` in every stage
(:attr:`BaselineSpace.baseline_arch`), and builds the very same skeleton as the registry's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from profiling.kernels import KernelSpec
from search.memory import skeleton_memory
from search.spaces.base import GeneSpace, SpaceError, as_rng, make_divisible
from search.spaces.skeleton import Block, Skeleton, SkeletonNetwork, build_network, skeleton_specs

MB_OPS = tuple(f"mb{e}k{k}" for e in (1, 3, 6) for k in (3, 5))
OPS = ("own", *MB_OPS, "grouped")
WIDTHS = (0.5, 0.75, 1.0, 1.25)
GROUP_WIDTH = 8
#: the block types of a stage, each with its own weights in the supernet
#: (`search.accuracy.supernet.BaselineSupernet`): every ``mb{E}k{K}`` op is one ``mbconv`` type
FAMILIES = ("own", "mbconv", "grouped")


def op_family(op: str) -> str:
    """The block type of stage op ``op``: ``own``, ``mbconv`` (any ``mb{E}k{K}``) or ``grouped``."""
    if op in ("own", "grouped"):
        return op
    if op in MB_OPS:
        return "mbconv"
    raise SpaceError(f"block {op!r} not in {', '.join(OPS)}")


@dataclass(frozen=True)
class StageGene:
    op: str
    depth: int
    width: float
    se: bool

    def to_string(self) -> str:
        return f"{self.op}-d{self.depth}-w{self.width:g}{'-se' if self.se else ''}"


@dataclass(frozen=True)
class BaselineArch:
    stages: tuple[StageGene, ...]


def depth_choices(depth: int) -> tuple[int, ...]:
    """Shallower (about 1/3, 1/2, 2/3 of ``depth``), the same, or one deeper."""
    return tuple(sorted({max(1, int(depth * f + 0.5)) for f in (1 / 3, 1 / 2, 2 / 3, 1.0)} | {depth + 1}))


class BaselineSpace(GeneSpace[BaselineArch]):
    """Stages of a baseline skeleton, each kept or changed (see the module docstring)."""

    name = "baseline"

    def __init__(self, skeleton: Skeleton, baseline: str = "baseline", ops: Sequence[str] = OPS,
                 widths: Sequence[float] = WIDTHS):
        unknown = [o for o in ops if o not in OPS]
        if unknown or "own" not in ops:
            raise SpaceError(f"ops {list(ops)}: must include 'own' and come from {', '.join(OPS)}")
        if 1.0 not in widths:
            raise SpaceError(f"widths {list(widths)} must include 1.0 (the baseline's)")
        self.skeleton, self.baseline = skeleton, baseline
        self.ops, self.widths = tuple(ops), tuple(sorted(float(w) for w in widths))
        self.in_channels, self.num_classes = skeleton.in_channels, skeleton.num_classes
        self.resolution = skeleton.resolution
        self.base_depths = skeleton.depths
        self.base_se = tuple(any(b.se for b in st) for st in skeleton.stages)
        self.depth_choices = tuple(depth_choices(d) for d in self.base_depths)
        self.n_stages = len(skeleton.stages)
        self._cache: dict[BaselineArch, tuple[KernelSpec, ...]] = {}

    def __repr__(self) -> str:
        return (f"BaselineSpace(baseline={self.baseline!r}, resolution={self.resolution}, "
                f"classes={self.num_classes}, depths={self.base_depths}, ops={self.ops}, widths={self.widths})")

    @property
    def baseline_arch(self) -> BaselineArch:
        return BaselineArch(tuple(StageGene("own", d, 1.0, se) for d, se in zip(self.base_depths, self.base_se)))

    # -- validation
    def make(self, genes: Sequence[StageGene]) -> BaselineArch:
        genes = tuple(StageGene(str(g.op), int(g.depth), float(g.width), bool(g.se)) for g in genes)
        if len(genes) != self.n_stages:
            raise SpaceError(f"{self.baseline}: {len(genes)} stage genes for {self.n_stages} stages")
        for s, g in enumerate(genes):
            if g.op not in self.ops:
                raise SpaceError(f"stage {s + 1}: block {g.op!r} not in {', '.join(self.ops)}")
            if g.depth not in self.depth_choices[s]:
                raise SpaceError(f"stage {s + 1}: depth {g.depth} not in {self.depth_choices[s]}")
            if g.width not in self.widths:
                raise SpaceError(f"stage {s + 1}: width {g.width:g} not in {self.widths}")
        return BaselineArch(genes)

    def validate(self, arch: BaselineArch) -> BaselineArch:
        if not isinstance(arch, BaselineArch):
            raise SpaceError(f"not a BaselineArch: {arch!r}")
        return self.make(arch.stages)

    # -- genes (GeneSpace)
    def _choices(self) -> list[tuple]:
        out: list[tuple] = []
        for s in range(self.n_stages):
            out += [self.ops, self.depth_choices[s], self.widths, (False, True)]
        return out

    def _genes(self, arch: BaselineArch) -> list:
        return [x for g in arch.stages for x in (g.op, g.depth, g.width, g.se)]

    def _from_genes(self, genes: Sequence) -> BaselineArch:
        return self.make([StageGene(*genes[4 * s:4 * s + 4]) for s in range(self.n_stages)])

    def sample(self, rng=None) -> BaselineArch:
        rng = as_rng(rng)
        return self._from_genes([ch[int(rng.integers(len(ch)))] for ch in self._choices()])

    # -- representations
    @property
    def encoding_size(self) -> int:
        return 4 * self.n_stages

    def encode(self, arch) -> np.ndarray:
        """Per stage: [op index, depth, width, se]."""
        a = self.validate(arch)
        return np.array([x for g in a.stages for x in (self.ops.index(g.op), g.depth, g.width, float(g.se))],
                        np.float32)

    def decode(self, vector) -> BaselineArch:
        v = np.asarray(vector, np.float64)
        if v.shape != (self.encoding_size,):
            raise SpaceError(f"a {self.baseline} encoding has {self.encoding_size} values; got shape {v.shape}")
        genes = []
        for s in range(self.n_stages):
            op, d, w, se = v[4 * s:4 * s + 4]
            genes.append(StageGene(self.ops[int(np.clip(round(op), 0, len(self.ops) - 1))],
                                   min(self.depth_choices[s], key=lambda c: abs(c - d)),
                                   min(self.widths, key=lambda c: abs(c - w)), bool(se >= 0.5)))
        return self.make(genes)

    def to_string(self, arch) -> str:
        """``resnet20:own-d3-w1|mb6k3-d2-w0.75-se|grouped-d4-w1.25``."""
        a = self.validate(arch)
        return f"{self.baseline}:" + "|".join(g.to_string() for g in a.stages)

    def from_string(self, s: str) -> BaselineArch:
        try:
            tag, body = s.strip().split(":", 1)
            assert tag == self.baseline
            genes = []
            for part in body.split("|"):
                bits = part.split("-")
                se = bits[-1] == "se"
                op, d, w = bits[:3]
                assert d[0] == "d" and w[0] == "w" and len(bits) == 3 + se
                genes.append(StageGene(op, int(d[1:]), float(w[1:]), se))
        except (ValueError, AssertionError):
            raise SpaceError(f"not an architecture of the {self.baseline} space: {s!r} "
                             f"(expected {self.to_string(self.baseline_arch)})") from None
        return self.make(genes)

    # -- structure
    def skeleton_of(self, arch: BaselineArch) -> Skeleton:
        """The network of ``arch``: the baseline's stem and head, its stages as the genes say."""
        a = self.validate(arch)
        stages = tuple(self.stage_blocks(s, g) for s, g in enumerate(a.stages))
        return replace(self.skeleton, stages=stages)

    def stage_blocks(self, s: int, g: StageGene) -> tuple[Block, ...]:
        """The blocks of stage ``s`` (0-based) with gene ``g``; a shallower stage's blocks are the
        first blocks of a deeper one with the same op, width and SE."""
        base = self.skeleton.stages[s]
        if g.op == "own":
            blocks = list(base[:g.depth]) + [replace(base[-1], stride=1)] * max(0, g.depth - len(base))
            if g.se != self.base_se[s]:
                blocks = [replace(b, se=g.se) for b in blocks]
            if g.width != 1.0:
                blocks = [replace(b, cout=make_divisible(b.cout * g.width, 4)) for b in blocks]
            return tuple(blocks)
        cout, stride, act = make_divisible(base[-1].cout * g.width, 4), base[0].stride, base[0].act
        if g.op == "grouped":
            proto = Block("grouped", cout, 1, 1.0, 3, g.se, act, GROUP_WIDTH)
        else:
            e, k = g.op[2:].split("k")
            proto = Block("mbconv", cout, 1, float(e), int(k), g.se, act)
        return tuple(replace(proto, stride=stride if b == 0 else 1) for b in range(g.depth))

    def input_shape(self, arch) -> tuple[int, int, int]:
        return (self.in_channels, self.resolution, self.resolution)

    def size_of(self, arch) -> tuple[int, float]:
        """(params, peak activations + weights in MB), from the skeleton (search.memory)."""
        sizes = self.__dict__.setdefault("_sizes", {})
        hit = sizes.get(arch)
        if hit is None:
            mem = skeleton_memory(self.skeleton_of(arch))
            hit = sizes[arch] = (mem.params, round(mem.total_mb, 4))
        return hit

    def build(self, arch) -> SkeletonNetwork:
        return build_network(self.skeleton_of(arch))

    def _specs_uncached(self, arch: BaselineArch) -> tuple[KernelSpec, ...]:
        return tuple(skeleton_specs(self.skeleton_of(arch)))


__all__ = ["BaselineArch", "BaselineSpace", "FAMILIES", "GROUP_WIDTH", "MB_OPS", "OPS", "StageGene", "WIDTHS",
           "depth_choices", "op_family"]
