"""NAS-Bench-201: a 4-node cell with 6 edges and 5 operations per edge (15,625 cells).

The network is the standard CIFAR skeleton of Dong & Yang (ICLR 2020): a 3x3 stem conv
(C channels) + BN, three stages of N cells at C, 2C, 4C channels with a ResNet basic block
(stride 2) between stages, then BN + ReLU, global average pooling and a linear classifier.
Defaults: C=16, N=5, 32x32 RGB input, 10 classes.

An architecture is a tuple of 6 op names in the order of the standard string
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` i.e. edges (1<-0), (2<-0), (2<-1), (3<-0), (3<-1), (3<-2).

Structure (one source of truth for :meth:`NB201Space.build` and :meth:`NB201Space.kernel_specs`):
:func:`cell_plan` prunes ``none`` edges, nodes that only receive zeros and nodes that never
reach the output; the cell module computes exactly the planned edges, and the kernel list
is read off the same plan. A cell whose output is identically zero computes ``x * 0``.

Kernel conventions (docs/design.md §1): ReLU-Conv-BN is ``activation(relu)`` +
``conv(bn=True, act="none")``; the exporter merges identical ops on the same tensor (CSE), so
a node that feeds several conv edges has one Relu, and several ``avg_pool_3x3`` edges from one
node are one ``pool(avg, 3, stride 1)``; ``skip_connect`` is nothing; each node that
sums k > 1 inputs adds k-1 ``elementwise(add)``; an all-zero cell is one broadcast
``elementwise(mul)`` (``x * 0``). The reduction block computes its shortcut (AvgPool 2x2 then
a 1x1 conv without BN) first and adds it to the main branch last, so the main branch's
second Conv+BN and the Add form one ``conv_add(act="none")``. The final BN, which follows
an Add rather than a conv, exports as a broadcast Mul + Add (:class:`~search.spaces.base.AffineBN`).
"""
from __future__ import annotations

import itertools
import operator
import re
from dataclasses import dataclass
from functools import lru_cache, reduce
from typing import Sequence, cast

import numpy as np
import torch
from torch import nn

from profiling.kernels import KernelSpec
from search.spaces.base import (AffineBN, SearchSpace, SpaceError, as_rng, k_act, k_add, k_affine_bn, k_conv,
                                k_head, k_mul, k_pool)

OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: (to, from) node pairs, in the order of the standard arch string
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NB201Arch = tuple[str, str, str, str, str, str]


@dataclass(frozen=True)
class CellPlan:
    """The live part of a cell: ``nodes`` lists (node, ((from, op), ...)) in order; if
    ``zero``, the cell output is identically zero."""
    nodes: tuple[tuple[int, tuple[tuple[int, str], ...]], ...]
    zero: bool


@lru_cache(maxsize=None)
def cell_plan(arch: NB201Arch) -> CellPlan:
    """Prune ``none`` edges, zero nodes and nodes that do not reach node 3."""
    op = {e: o for e, o in zip(EDGES, arch)}
    alive = {0: True}
    inputs: dict[int, list[tuple[int, str]]] = {}
    for j in (1, 2, 3):
        inputs[j] = [(i, op[(j, i)]) for i in range(j) if op[(j, i)] != "none" and alive[i]]
        alive[j] = bool(inputs[j])
    if not alive[3]:
        return CellPlan((), True)
    needed = {3}
    for j in (3, 2, 1):
        if j in needed:
            needed.update(i for i, _ in inputs[j])
    nodes = tuple((j, tuple(inputs[j])) for j in (1, 2, 3) if j in needed)
    return CellPlan(nodes, False)


class ReLUConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False),
                                nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                                nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def make_op(op: str, c: int) -> nn.Module:
    if op == "skip_connect":
        return nn.Identity()
    if op == "nor_conv_1x1":
        return ReLUConvBN(c, c, 1)
    if op == "nor_conv_3x3":
        return ReLUConvBN(c, c, 3)
    if op == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise SpaceError(f"NB201 op {op!r} has no module; ops are {OPS}")


def edge_key(j: int, i: int) -> str:
    return f"e{j}{i}"


class NB201Cell(nn.Module):
    """One NB201 cell computing only the edges of its :func:`cell_plan`."""

    def __init__(self, arch: NB201Arch, c: int):
        super().__init__()
        self.arch = tuple(arch)
        self.plan = cell_plan(self.arch)
        self.edges = nn.ModuleDict({edge_key(j, i): make_op(o, c)
                                    for j, ins in self.plan.nodes for i, o in ins})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan.zero:
            return x.mul(0.0)
        nodes = {0: x}
        for j, ins in self.plan.nodes:
            # summed in edge order, each edge computed just before its Add (the exported graph's
            # order), with no zero to start from (that would export one Add more)
            nodes[j] = reduce(operator.add, (self.edges[edge_key(j, i)](nodes[i]) for i, _ in ins))
        return nodes[3]


class ResNetBasicBlock(nn.Module):
    """NB201's reduction block: ReLU-Conv(s2)-BN, ReLU-Conv-BN, shortcut AvgPool 2x2 + 1x1 conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv_a = ReLUConvBN(cin, cout, 3, 2)
        self.conv_b = ReLUConvBN(cout, cout, 3, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2, 0), nn.Conv2d(cin, cout, 1, 1, 0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)  # first, so the main branch's Conv+BN feeds the Add last
        return self.conv_b(self.conv_a(x)) + shortcut


def build_macro(net: nn.Module, in_channels: int, C: int, N: int, num_classes: int, make_cell) -> None:
    """The NB201 CIFAR skeleton on ``net``: stem, three stages of ``N`` cells (``make_cell(c)``)
    joined by ResNet reduction blocks, BN-ReLU, pooling, classifier. The network and the
    supernet share it, so a subnet's state dict names match the supernet's."""
    net.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, 1, 1, bias=False), nn.BatchNorm2d(C))
    cells: list[nn.Module] = []
    c = C
    for stage in range(3):
        if stage > 0:
            cells.append(ResNetBasicBlock(c, 2 * c))
            c *= 2
        cells.extend(make_cell(c) for _ in range(N))
    net.cells = nn.ModuleList(cells)
    net.lastact = nn.Sequential(AffineBN(c), nn.ReLU(inplace=False))
    net.global_pooling = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Linear(c, num_classes)


class NB201Network(nn.Module):
    """The NB201 CIFAR network. ``forward_pre_gap`` returns the features before pooling."""

    # set by build_macro
    stem: nn.Sequential
    cells: nn.ModuleList
    lastact: nn.Sequential
    global_pooling: nn.AdaptiveAvgPool2d
    classifier: nn.Linear

    def __init__(self, arch: NB201Arch, C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        # tuple() of a 6-tuple (or of a list of 6 ops) is the 6-tuple; mypy's tuple() forgets the length
        self.arch = cast(NB201Arch, tuple(arch))
        build_macro(self, in_channels, C, N, num_classes, lambda c: NB201Cell(self.arch, c))

    def forward_pre_gap(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        return self.lastact(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.global_pooling(self.forward_pre_gap(x))
        return self.classifier(torch.flatten(x, 1))


@lru_cache(maxsize=None)
def _cell_specs(arch: NB201Arch, c: int, h: int) -> tuple[KernelSpec, ...]:
    plan = cell_plan(arch)
    if plan.zero:
        return (k_mul(c, h, h, broadcast=True),)
    out: list[KernelSpec] = []
    relu_done: set[int] = set()
    pool_done: set[int] = set()
    for _, ins in plan.nodes:
        for i, o in ins:
            if o in ("nor_conv_1x1", "nor_conv_3x3"):
                if i not in relu_done:  # the exporter merges identical Relu(node_i) (CSE)
                    relu_done.add(i)
                    out.append(k_act("relu", c, h, h))
                out.append(k_conv(c, c, h, h, 1 if o == "nor_conv_1x1" else 3, act="none"))
            elif o == "avg_pool_3x3" and i not in pool_done:  # likewise AveragePool(node_i)
                pool_done.add(i)
                out.append(k_pool("avg", c, h, h, 3, 1))
        out += [k_add(c, h, h)] * (len(ins) - 1)
    return tuple(out)


def _reduction_specs(cin: int, cout: int, h: int) -> list[KernelSpec]:
    h2 = (h - 1) // 2 + 1
    return [k_pool("avg", cin, h, h, 2, 2), k_conv(cin, cout, h // 2, h // 2, 1, bn=False, act="none"),
            # The second ReLU is the first conv's only consumer, so the runtime fuses it (conv+relu).
            k_act("relu", cin, h, h), k_conv(cin, cout, h, h, 3, 2, act="relu"),
            k_conv(cout, cout, h2, h2, 3, 1, act="none", add=True)]


_STRING_RE = re.compile(r"^\|([a-z0-9_]+)~0\|\+\|([a-z0-9_]+)~0\|([a-z0-9_]+)~1\|\+"
                        r"\|([a-z0-9_]+)~0\|([a-z0-9_]+)~1\|([a-z0-9_]+)~2\|$")


class NB201Space(SearchSpace[NB201Arch]):
    """The NAS-Bench-201 space (see the module docstring).

    >>> space = NB201Space()
    >>> arch = space.from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
    >>> space.encode(arch).shape
    (30,)
    """

    name = "nb201"

    def __init__(self, C: int = 16, N: int = 5, resolution: int = 32, num_classes: int = 10, in_channels: int = 3):
        self.C, self.N, self.resolution = C, N, resolution
        self.num_classes, self.in_channels = num_classes, in_channels
        self._spec_cache: dict[NB201Arch, tuple[KernelSpec, ...]] = {}
        self._fixed = self._fixed_specs()

    def __repr__(self) -> str:
        return f"NB201Space(C={self.C}, N={self.N}, resolution={self.resolution}, num_classes={self.num_classes})"

    # -- validation and enumeration
    def validate(self, arch: Sequence[str]) -> NB201Arch:
        arch = tuple(arch)
        if len(arch) != 6 or any(o not in OPS for o in arch):
            raise SpaceError(f"an NB201 arch is 6 ops from {OPS}; got {arch!r}")
        return arch

    def all_archs(self) -> list[NB201Arch]:
        """All 15,625 cells, in lexicographic order of op indices."""
        return [tuple(a) for a in itertools.product(OPS, repeat=6)]  # type: ignore[misc]

    @staticmethod
    def is_fully_reachable(arch: NB201Arch) -> bool:
        """True if no op edge is dead (the 9,445 cells of NAS-Bench-Suite-Zero's proxy table)."""
        plan = cell_plan(arch)
        if plan.zero:
            return all(o == "none" for o in arch)  # the empty cell has no dead edge
        live = {(j, i) for j, ins in plan.nodes for i, _ in ins}
        return all((e in live) == (o != "none") for e, o in zip(EDGES, arch))

    # -- genetic operators
    def sample(self, rng=None) -> NB201Arch:
        rng = as_rng(rng)
        return tuple(OPS[i] for i in rng.integers(0, len(OPS), 6))

    def mutate(self, arch, rng=None, prob=None) -> NB201Arch:
        rng = as_rng(rng)
        arch = list(self.validate(arch))
        prob = 1 / 6 if prob is None else prob
        genes = [g for g in range(6) if rng.random() < prob] or [int(rng.integers(6))]
        for g in genes:
            arch[g] = OPS[int(rng.choice([i for i, o in enumerate(OPS) if o != arch[g]]))]
        return tuple(arch)

    def crossover(self, a, b, rng=None) -> NB201Arch:
        rng = as_rng(rng)
        a, b = self.validate(a), self.validate(b)
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))

    # -- representations
    @property
    def encoding_size(self) -> int:
        return 6 * len(OPS)

    def encode(self, arch) -> np.ndarray:
        """One-hot of the op on each of the 6 edges (30 values)."""
        v = np.zeros((6, len(OPS)), np.float32)
        for e, o in enumerate(self.validate(arch)):
            v[e, OPS.index(o)] = 1.0
        return v.ravel()

    def arch_features(self, arch) -> np.ndarray:
        """The one-hot encoding plus what the network really computes: the number of live
        edges of each op (skip, 1x1, 3x3, pool), of live intermediate nodes, and a zero-cell flag."""
        plan = cell_plan(self.validate(arch))
        live = [o for _, ins in plan.nodes for _, o in ins]
        extra = [live.count(o) for o in OPS[1:]] + [len(plan.nodes), float(plan.zero)]
        return np.concatenate([self.encode(arch), np.asarray(extra, np.float32)])

    def decode(self, vector) -> NB201Arch:
        v = np.asarray(vector, np.float32)
        if v.shape != (self.encoding_size,):
            raise SpaceError(f"an NB201 encoding has {self.encoding_size} values; got shape {v.shape}")
        return tuple(OPS[int(i)] for i in v.reshape(6, len(OPS)).argmax(1))  # type: ignore[return-value]

    def to_string(self, arch) -> str:
        a = self.validate(arch)
        return f"|{a[0]}~0|+|{a[1]}~0|{a[2]}~1|+|{a[3]}~0|{a[4]}~1|{a[5]}~2|"

    def from_string(self, s: str) -> NB201Arch:
        m = _STRING_RE.match(s.strip())
        if not m:
            raise SpaceError(f"not an NB201 arch string: {s!r} (expected |op~0|+|op~0|op~1|+|op~0|op~1|op~2|)")
        return self.validate(m.groups())

    # -- networks
    def input_shape(self, arch=None) -> tuple[int, int, int]:
        return (self.in_channels, self.resolution, self.resolution)

    def build(self, arch) -> NB201Network:
        """The NB201 network with PyTorch's default initialisation (as NB201 and NASLib)."""
        return NB201Network(self.validate(arch), self.C, self.N, self.num_classes, self.in_channels)

    def _fixed_specs(self) -> dict[str, list[KernelSpec]]:
        C, R = self.C, self.resolution
        h3 = R
        for _ in range(2):
            h3 = (h3 - 1) // 2 + 1
        return {"stem": [k_conv(self.in_channels, C, R, R, 3, act="none")],
                "red1": _reduction_specs(C, 2 * C, R),
                "red2": _reduction_specs(2 * C, 4 * C, (R - 1) // 2 + 1),
                "head": k_affine_bn(4 * C, h3, h3) + [k_act("relu", 4 * C, h3, h3)] + k_head(4 * C, h3, h3, self.num_classes)}

    def kernel_specs(self, arch, batch: int = 1) -> list[KernelSpec]:
        arch = tuple(arch)
        specs = self._spec_cache.get(arch)
        if specs is None:
            self.validate(arch)
            f, C, N = self._fixed, self.C, self.N
            h1 = self.resolution
            h2 = (h1 - 1) // 2 + 1
            h3 = (h2 - 1) // 2 + 1
            specs = tuple(f["stem"]) + _cell_specs(arch, C, h1) * N + tuple(f["red1"]) \
                + _cell_specs(arch, 2 * C, h2) * N + tuple(f["red2"]) + _cell_specs(arch, 4 * C, h3) * N + tuple(f["head"])
            self._spec_cache[arch] = specs
        return list(specs)


__all__ = ["OPS", "EDGES", "NB201Arch", "CellPlan", "cell_plan", "NB201Space", "NB201Network", "NB201Cell",
           "ResNetBasicBlock", "ReLUConvBN", "make_op", "edge_key"]
