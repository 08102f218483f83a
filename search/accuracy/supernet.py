"""Weight-sharing supernets for the nb201, mbv3 and resnet spaces.

One supernet holds the weights of every subnet of its space; it is trained once on the
user's data and then scores any architecture in seconds with inherited weights:

    from search.spaces import get_space
    from search.accuracy.data import load_dataset
    from search.accuracy.supernet import build_supernet, TrainConfig

    data = load_dataset("digits")
    train, val = data.split(0.2)
    mean, std = train.stats()
    train, val = train.normalized(mean, std), val.normalized(mean, std)
    space = get_space("mbv3", resolutions=(8,), width_mult=0.5, num_classes=10)
    sn = build_supernet(space)
    sn.fit(train, TrainConfig(epochs=3), checkpoint="runs/digits/supernet.pt")   # resumable
    acc = sn.evaluate(space.sample(0), val, calib=train)                         # top-1, %
    net = sn.subnet(space.sample(0))        # a plain nn.Module with inherited weights

Training (:meth:`Supernet.fit`) follows the sandwich rule with in-place distillation (Yu et
al., BigNAS / Slimmable networks) for mbv3 and resnet: each step accumulates the gradients of
the largest subnet (on the labels), the smallest and ``n_random`` random subnets (on the
largest's soft predictions). The nb201 supernet, whose ops have no size order, trains
``n_random + 2`` uniformly sampled single paths per step (SPOS, Guo et al. 2020) or, with
``TrainConfig(sampling="fair")``, five paths that together train every op of every edge exactly
once (FairNAS strict fairness, Chu et al. 2021). Elastic
kernels take the centre of the largest kernel, elastic widths the first channels.

Everything random is derived from ``(seed, step)``: a run that is killed and re-run continues
from its last checkpoint and ends with the same weights as an uninterrupted run. Checkpoints
are written atomically every ``checkpoint_every`` steps and at the end.

Before a subnet is evaluated, its BatchNorm statistics are recalibrated on ``calib_images``
training images (:func:`recalibrate_bn`), since the supernet's running statistics mix many
subnets.
"""
from __future__ import annotations

import abc
import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search.accuracy.data import ImageDataset
from search.spaces.base import SearchSpace, init_weights, make_divisible
from search.spaces.mbv3 import ConvBNAct, MBBlockCfg, MBConv, MBV3Arch, MBV3Space
from search.spaces.nb201 import EDGES, OPS, NB201Space, build_macro, cell_plan, edge_key, make_op
from search.spaces.resnet import Bottleneck, BottleneckCfg, ResNetArch, ResNetSpace
from search.errors import SearchStageError


class SupernetError(SearchStageError, RuntimeError):
    """A supernet cannot train, resume or evaluate; the message says why."""


@dataclass
class TrainConfig:
    """Supernet training settings. ``steps`` (optimizer steps) overrides ``epochs`` when set."""
    epochs: float = 5.0
    steps: int | None = None
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 0
    n_random: int = 2
    distill: bool = True
    augment: bool = True
    hflip: bool = False
    grad_clip: float = 5.0
    checkpoint_every: int = 50
    seed: int = 0
    #: how the paths of one step are drawn for spaces without a size order (nb201): "uniform"
    #: (``n_random + 2`` independent uniform paths) or "fair" (FairNAS strict fairness: one path
    #: per op, each edge's ops in a random permutation, so every op of every edge is trained
    #: exactly once per step). The sandwich spaces (mbv3, resnet) accept "uniform" only.
    sampling: str = "uniform"

    def total_steps(self, n_train: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        return max(1, int(math.ceil(self.epochs * max(1, n_train // self.batch_size))))

    def paths_per_step(self, space: SearchSpace) -> int:
        """Subnets trained per optimizer step in ``space``."""
        if self.sampling == "fair" and isinstance(space, NB201Space):
            return len(OPS)
        return self.n_random + 2


# ---- shared helpers --------------------------------------------------------------------

def _bn(x: torch.Tensor, bn: nn.BatchNorm2d, c: int) -> torch.Tensor:
    """BatchNorm over the first ``c`` channels of ``bn`` (training updates those statistics)."""
    use_batch = bn.training or not bn.track_running_stats
    return F.batch_norm(x, bn.running_mean[:c] if bn.running_mean is not None else None,
                        bn.running_var[:c] if bn.running_var is not None else None,
                        bn.weight[:c], bn.bias[:c], use_batch, bn.momentum if bn.momentum is not None else 0.0, bn.eps)


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, c: int) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight[:c])
        dst.bias.copy_(src.bias[:c])
        dst.running_mean.copy_(src.running_mean[:c])
        dst.running_var.copy_(src.running_var[:c])
        dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _crop(w: torch.Tensor, k: int) -> torch.Tensor:
    K = w.shape[-1]
    s = (K - k) // 2
    return w[..., s:s + k, s:s + k]


def _resize(x: torch.Tensor, r: int) -> torch.Tensor:
    if x.shape[-1] == r and x.shape[-2] == r:
        return x
    return F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)


def _act(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return F.relu(x)
    if act == "hardswish":
        return F.hardswish(x)
    if act == "relu6":
        return F.relu6(x)
    if act == "none":
        return x
    raise SupernetError(f"activation {act} not supported in supernets")


# ---- the interface ---------------------------------------------------------------------

class Supernet(nn.Module, abc.ABC):
    """A weight-sharing supernet of ``space``. ``forward(x, arch)`` runs one subnet."""

    space: SearchSpace

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, arch: Any) -> torch.Tensor:
        """Logits of subnet ``arch`` (inputs are resized to the arch's resolution)."""

    @abc.abstractmethod
    def subnet(self, arch: Any) -> nn.Module:
        """A stand-alone ``space.build(arch)`` network carrying the supernet's weights (training
        mode, BN statistics as in the supernet: call :func:`recalibrate_bn` before evaluating)."""

    def resolution(self, arch: Any) -> int:
        return self.space.input_shape(arch)[1]

    def checkpoint_key(self) -> dict[str, Any]:
        """What besides the space and the training settings a checkpoint must match."""
        return {}

    def training_archs(self, rng: np.random.Generator, n_random: int,
                       sampling: str = "uniform") -> tuple[list[Any], bool]:
        """The subnets of one step and whether the first is a teacher for distillation
        (``sampling``: see :class:`TrainConfig`)."""
        space = self.space
        if sampling not in ("uniform", "fair"):
            raise SupernetError(f"sampling must be 'uniform' or 'fair', not {sampling!r}")
        if hasattr(space, "largest"):
            if sampling != "uniform":
                raise SupernetError(f"{type(space).__name__} trains with the sandwich rule; sampling='fair' "
                                    f"is for nb201")
            return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(n_random)], True
        if sampling == "fair":
            perms = [rng.permutation(len(OPS)) for _ in EDGES]
            return [tuple(OPS[p[k]] for p in perms) for k in range(len(OPS))], False
        return [space.sample(rng) for _ in range(n_random + 2)], False

    # -- training
    def fit(self, data: ImageDataset, config: TrainConfig | None = None, checkpoint: str | Path | None = None,
            log: Callable[[str], None] | None = None, deadline: float | None = None) -> dict[str, Any]:
        """Train on ``data`` (normalised images), resuming from ``checkpoint`` if it exists, until
        ``deadline`` (time.monotonic()) at most.

        Returns ``{"steps", "resumed_from", "seconds", "last_loss"}`` (and ``"stopped_at"`` when
        the deadline cut it short).
        """
        return train_supernet(self, data, config or TrainConfig(), checkpoint, log, deadline)

    def evaluate(self, arch: Any, val: ImageDataset, calib: ImageDataset | None = None, calib_images: int = 500,
                 batch_size: int = 200, seed: int = 0) -> float:
        """Top-1 accuracy (%) on ``val`` of ``arch`` with inherited weights, after BN
        recalibration on ``calib_images`` images of ``calib`` (default: ``val``)."""
        net = self.subnet(arch).to(_device(self))
        r = self.resolution(arch)
        recalibrate_bn(net, calib if calib is not None else val, r, calib_images, batch_size, seed)
        return accuracy(net, val, r, batch_size)


# ---- NB201 -----------------------------------------------------------------------------

class _NB201SuperCell(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.edges = nn.ModuleDict({edge_key(j, i): nn.ModuleDict({o: make_op(o, c) for o in OPS if o != "none"})
                                    for j, i in EDGES})

    def forward(self, x: torch.Tensor, arch: tuple) -> torch.Tensor:
        plan = cell_plan(arch)
        if plan.zero:
            return x.mul(0.0)
        nodes = {0: x}
        for j, ins in plan.nodes:
            acc = None
            for i, o in ins:
                y = self.edges[edge_key(j, i)][o](nodes[i])
                acc = y if acc is None else acc + y
            nodes[j] = acc
        return nodes[3]


class NB201Supernet(Supernet):
    """All 4 parametric/non-parametric ops on every edge of every cell (``none`` is no op)."""

    def __init__(self, space: NB201Space):
        super().__init__()
        self.space = space
        #: ``(edge index, op)`` when this supernet only trains subnets with that op on that edge
        #: (a sub-supernet of :class:`FewShotNB201Supernet`)
        self.fixed: tuple[int, str] | None = None
        build_macro(self, space.in_channels, space.C, space.N, space.num_classes, _NB201SuperCell)

    def checkpoint_key(self) -> dict[str, Any]:
        return {} if self.fixed is None else {"fixed": list(self.fixed)}

    def training_archs(self, rng: np.random.Generator, n_random: int,
                       sampling: str = "uniform") -> tuple[list[Any], bool]:
        archs, teacher = super().training_archs(rng, n_random, sampling)
        if self.fixed is not None:
            e, op = self.fixed
            archs = [a[:e] + (op,) + a[e + 1:] for a in archs]
        return archs, teacher

    def forward(self, x: torch.Tensor, arch: tuple) -> torch.Tensor:
        arch = tuple(arch)
        x = self.stem(_resize(x, self.space.resolution))
        for cell in self.cells:
            x = cell(x, arch) if isinstance(cell, _NB201SuperCell) else cell(x)
        x = self.global_pooling(self.lastact(x))
        return self.classifier(torch.flatten(x, 1))

    def subnet(self, arch: tuple) -> nn.Module:
        arch = self.space.validate(arch)
        net = self.space.build(arch)
        src = self.state_dict()
        edge_op = {edge_key(j, i): o for (j, i), o in zip(EDGES, arch)}
        new = {}
        for k in net.state_dict():
            p = k.split(".")
            if p[0] == "cells" and len(p) > 3 and p[2] == "edges":
                k_src = ".".join(p[:4] + [edge_op[p[3]]] + p[4:])
            else:
                k_src = k
            new[k] = src[k_src]
        net.load_state_dict(new)
        return net


class FewShotNB201Supernet(Supernet):
    """Few-shot NAS (Zhao et al., ICML 2021): the trained one-shot supernet split on one edge
    into one sub-supernet per op of that edge. Each starts as a copy of the parent and is
    fine-tuned only on the subnets that use its op there; a subnet is scored by the
    sub-supernet of its op. The ops of the split edge then no longer share the weights around
    them, which removes part of the co-adaptation that makes one-shot rankings wrong."""

    def __init__(self, parent: NB201Supernet, edge: int = 0):
        super().__init__()
        if not isinstance(parent, NB201Supernet):
            raise SupernetError(f"few-shot splitting is implemented for the nb201 supernet, not {type(parent).__name__}")
        if not 0 <= edge < len(EDGES):
            raise SupernetError(f"edge must be in 0..{len(EDGES) - 1}, not {edge}")
        self.space = parent.space
        self.edge = edge
        self.parts = nn.ModuleDict()
        for op in OPS:
            part = copy.deepcopy(parent)
            part.fixed = (edge, op)
            self.parts[op] = part

    def part(self, arch: Any) -> NB201Supernet:
        """The sub-supernet that scores ``arch``."""
        return self.parts[tuple(arch)[self.edge]]

    def forward(self, x: torch.Tensor, arch: tuple) -> torch.Tensor:
        return self.part(arch)(x, arch)

    def subnet(self, arch: tuple) -> nn.Module:
        return self.part(arch).subnet(arch)

    def part_checkpoint(self, checkpoint: str | Path, op: str) -> Path:
        p = Path(checkpoint)
        return p.with_name(f"{p.stem}_edge{self.edge}_{op}{p.suffix}")

    def fit(self, data: ImageDataset, config: TrainConfig | None = None, checkpoint: str | Path | None = None,
            log: Callable[[str], None] | None = None, ops: Sequence[str] | None = None) -> dict[str, Any]:
        """Fine-tune the sub-supernets of ``ops`` (default: all) one after the other, each with its
        own checkpoint beside ``checkpoint`` (``<stem>_edge<E>_<op>.pt``); several processes can
        each train some of them. Returns the per-op training summaries."""
        out = {}
        for op in ops or OPS:
            if op not in self.parts:
                raise SupernetError(f"unknown op {op!r}; choose from {', '.join(OPS)}")
            ck = None if checkpoint is None else self.part_checkpoint(checkpoint, op)
            out[op] = train_supernet(self.parts[op], data, config or TrainConfig(), ck,
                                     (lambda m, op=op: log(f"[{op}] {m}")) if log else None)
        return out


# ---- MobileNetV3 -----------------------------------------------------------------------

class _DynMBConv(nn.Module):
    """An MBConv slot holding the largest kernel and expand ratio."""

    def __init__(self, cin: int, cout: int, stride: int, se: bool, act: str, max_k: int, max_e: float):
        super().__init__()
        self.cin, self.cout, self.stride, self.se, self.act = cin, cout, stride, se, act
        mid = make_divisible(cin * max_e, 8)
        se_mid = make_divisible(mid // 4, 8)
        self.ib_conv = nn.Conv2d(cin, mid, 1, bias=False)
        self.ib_bn = nn.BatchNorm2d(mid)
        self.dw_conv = nn.Conv2d(mid, mid, max_k, stride, max_k // 2, groups=mid, bias=False)
        self.dw_bn = nn.BatchNorm2d(mid)
        if se:
            self.se_reduce = nn.Conv2d(mid, se_mid, 1)
            self.se_expand = nn.Conv2d(se_mid, mid, 1)
        self.pl_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self.pl_bn = nn.BatchNorm2d(cout)

    def cfg(self, h: int, k: int, e: float) -> MBBlockCfg:
        return MBBlockCfg(self.cin, self.cout, h, k, e, self.stride, self.se, self.act)

    def forward(self, x: torch.Tensor, k: int, e: float) -> torch.Tensor:
        cfg = self.cfg(x.shape[-1], k, e)
        mid = cfg.mid
        y = _act(_bn(F.conv2d(x, self.ib_conv.weight[:mid]), self.ib_bn, mid), self.act)
        y = F.conv2d(y, _crop(self.dw_conv.weight[:mid], k), None, self.stride, k // 2, 1, mid)
        y = _act(_bn(y, self.dw_bn, mid), self.act)
        if self.se:
            sm = cfg.se_mid
            s = y.mean((2, 3), keepdim=True)
            s = F.relu(F.conv2d(s, self.se_reduce.weight[:sm, :mid], self.se_reduce.bias[:sm]))
            s = F.hardsigmoid(F.conv2d(s, self.se_expand.weight[:mid, :sm], self.se_expand.bias[:mid]))
            y = y * s
        y = _bn(F.conv2d(y, self.pl_conv.weight[:, :mid]), self.pl_bn, self.cout)
        return y + x if cfg.residual else y

    def export(self, cfg: MBBlockCfg) -> MBConv:
        m = MBConv(cfg)
        mid, k = cfg.mid, cfg.kernel
        with torch.no_grad():
            m.inverted_bottleneck[0].weight.copy_(self.ib_conv.weight[:mid])
            _copy_bn(m.inverted_bottleneck[1], self.ib_bn, mid)
            m.depth_conv[0].weight.copy_(_crop(self.dw_conv.weight[:mid], k))
            _copy_bn(m.depth_conv[1], self.dw_bn, mid)
            if cfg.se:
                sm = cfg.se_mid
                m.se.reduce.weight.copy_(self.se_reduce.weight[:sm, :mid])
                m.se.reduce.bias.copy_(self.se_reduce.bias[:sm])
                m.se.expand.weight.copy_(self.se_expand.weight[:mid, :sm])
                m.se.expand.bias.copy_(self.se_expand.bias[:mid])
            m.point_linear[0].weight.copy_(self.pl_conv.weight[:, :mid])
            _copy_bn(m.point_linear[1], self.pl_bn, cfg.cout)
        return m


class MBV3Supernet(Supernet):
    def __init__(self, space: MBV3Space):
        super().__init__()
        self.space = space
        s = space
        self.first_conv = ConvBNAct(s.in_channels, s.stem_c, 3, 2, act="hardswish")
        self.first_block = MBConv(MBBlockCfg(s.stem_c, s.first_c, 1, 3, 1, 1, False, "relu"))
        slots = []
        cin = s.first_c
        for st in range(s.n_stages):
            for b in range(s.max_depth):
                slots.append(_DynMBConv(cin, s.stage_widths[st], s.stage_strides[st] if b == 0 else 1, s.stage_se[st],
                                        s.stage_acts[st], max(s.kernel_choices), max(s.expand_choices)))
                cin = s.stage_widths[st]
        self.slots = nn.ModuleList(slots)
        self.final_expand = ConvBNAct(cin, s.final_c, 1, 1, act="hardswish")
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.feature_mix = nn.Sequential(nn.Conv2d(s.final_c, s.mix_c, 1, bias=False), nn.Hardswish())
        self.classifier = nn.Linear(s.mix_c, s.num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor, arch: MBV3Arch) -> torch.Tensor:
        s = self.space
        x = self.first_block(self.first_conv(_resize(x, arch.resolution)))
        for st, d in enumerate(arch.depths):
            for b in range(d):
                i = st * s.max_depth + b
                x = self.slots[i](x, arch.kernels[i], arch.expands[i])
        x = self.feature_mix(self.global_pooling(self.final_expand(x)))
        return self.classifier(torch.flatten(x, 1))

    def subnet(self, arch: MBV3Arch) -> nn.Module:
        s = self.space
        arch = s.validate(arch)
        net = s.build(arch)
        cfgs = s.block_configs(arch)
        slot_ids = [st * s.max_depth + b for st, d in enumerate(arch.depths) for b in range(d)]
        blocks = [copy.deepcopy(self.first_block)] + [self.slots[i].export(c) for i, c in zip(slot_ids, cfgs[1:])]
        net.blocks = nn.ModuleList(blocks)
        for name in ("first_conv", "final_expand", "feature_mix", "classifier"):
            setattr(net, name, copy.deepcopy(getattr(self, name)))
        for b, c in zip(net.blocks, cfgs):  # the static blocks carry the subnet's shapes
            b.cfg = c
        return net


# ---- ResNet ----------------------------------------------------------------------------

class _DynBottleneck(nn.Module):
    def __init__(self, cin_max: int, cout_max: int, mid_max: int, stride: int, has_shortcut: bool):
        super().__init__()
        self.stride = stride
        self.conv1, self.bn1 = nn.Conv2d(cin_max, mid_max, 1, bias=False), nn.BatchNorm2d(mid_max)
        self.conv2, self.bn2 = nn.Conv2d(mid_max, mid_max, 3, stride, 1, bias=False), nn.BatchNorm2d(mid_max)
        self.conv3, self.bn3 = nn.Conv2d(mid_max, cout_max, 1, bias=False), nn.BatchNorm2d(cout_max)
        if has_shortcut:
            self.ds_conv, self.ds_bn = nn.Conv2d(cin_max, cout_max, 1, bias=False), nn.BatchNorm2d(cout_max)

    def forward(self, x: torch.Tensor, cfg: BottleneckCfg) -> torch.Tensor:
        cin, mid, cout = cfg.cin, cfg.mid, cfg.cout
        if cfg.shortcut:
            sc = F.avg_pool2d(x, 2, 2, ceil_mode=True) if cfg.stride == 2 else x
            sc = _bn(F.conv2d(sc, self.ds_conv.weight[:cout, :cin]), self.ds_bn, cout)
        else:
            sc = x
        y = F.relu(_bn(F.conv2d(x, self.conv1.weight[:mid, :cin]), self.bn1, mid))
        y = F.relu(_bn(F.conv2d(y, self.conv2.weight[:mid, :mid], None, cfg.stride, 1), self.bn2, mid))
        y = _bn(F.conv2d(y, self.conv3.weight[:cout, :mid]), self.bn3, cout)
        return F.relu(y + sc)

    def export(self, cfg: BottleneckCfg) -> nn.Module:
        m = Bottleneck(cfg)
        cin, mid, cout = cfg.cin, cfg.mid, cfg.cout
        with torch.no_grad():
            m.conv1[0].weight.copy_(self.conv1.weight[:mid, :cin])
            _copy_bn(m.conv1[1], self.bn1, mid)
            m.conv2[0].weight.copy_(self.conv2.weight[:mid, :mid])
            _copy_bn(m.conv2[1], self.bn2, mid)
            m.conv3[0].weight.copy_(self.conv3.weight[:cout, :mid])
            _copy_bn(m.conv3[1], self.bn3, cout)
            if cfg.shortcut:
                m.downsample[1][0].weight.copy_(self.ds_conv.weight[:cout, :cin])
                _copy_bn(m.downsample[1][1], self.ds_bn, cout)
        return m


class ResNetSupernet(Supernet):
    def __init__(self, space: ResNetSpace):
        super().__init__()
        self.space = s = space
        self.stem = ConvBNAct(s.in_channels, s.stem_c, 3, s.stem_stride, act="relu")
        slots = []
        cin = s.stem_c
        for st in range(s.n_stages):
            cout = s.stage_width(st, max(s.width_choices))
            mid = make_divisible(cout * max(s.expand_choices), 8)
            for b in range(s.max_depth):
                slots.append(_DynBottleneck(cin, cout, mid, s.stage_strides[st] if b == 0 else 1, b == 0))
                cin = cout
        self.slots = nn.ModuleList(slots)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, s.num_classes)
        init_weights(self)

    def _slot_cfgs(self, arch: ResNetArch) -> list[tuple[int, BottleneckCfg]]:
        s = self.space
        cfgs = s.block_configs(arch)
        ids = [st * s.max_depth + b for st, d in enumerate(arch.depths) for b in range(d)]
        return list(zip(ids, cfgs))

    def forward(self, x: torch.Tensor, arch: ResNetArch) -> torch.Tensor:
        x = self.stem(_resize(x, arch.resolution))
        for i, cfg in self._slot_cfgs(arch):
            x = self.slots[i](x, cfg)
        x = torch.flatten(self.global_pooling(x), 1)
        c = x.shape[1]
        return F.linear(x, self.classifier.weight[:, :c], self.classifier.bias)

    def subnet(self, arch: ResNetArch) -> nn.Module:
        arch = self.space.validate(arch)
        net = self.space.build(arch)
        pairs = self._slot_cfgs(arch)
        net.blocks = nn.ModuleList(self.slots[i].export(cfg) for i, cfg in pairs)
        net.stem = copy.deepcopy(self.stem)
        c = pairs[-1][1].cout
        with torch.no_grad():
            net.classifier.weight.copy_(self.classifier.weight[:, :c])
            net.classifier.bias.copy_(self.classifier.bias)
        return net


def build_supernet(space: SearchSpace) -> Supernet:
    """The supernet of ``space`` (an nb201, mbv3 or resnet space), freshly initialised."""
    if isinstance(space, NB201Space):
        return NB201Supernet(space)
    if isinstance(space, MBV3Space):
        return MBV3Supernet(space)
    if isinstance(space, ResNetSpace):
        return ResNetSupernet(space)
    raise SupernetError(f"no supernet for {space!r}")


# ---- training, BN recalibration, evaluation ---------------------------------------------

def _augment(x: torch.Tensor, gen: torch.Generator, hflip: bool) -> torch.Tensor:
    """Random translation by up to 1/8 of the size (zero padding), and optional flips. The
    random numbers come from ``gen`` (a CPU generator) whatever the device of ``x``, so a run
    draws the same augmentation on CPU and GPU."""
    n, c, h, w = x.shape
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = xp[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None],
             rows, cols]
    if hflip:
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        out[flip] = out[flip].flip(-1)
    return out


def _device(net: nn.Module) -> torch.device:
    """Where ``net`` lives: batches are moved there, so a model on a GPU trains and evaluates there."""
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _config_key(config: TrainConfig, supernet: Supernet, n_train: int) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d.pop("checkpoint_every")
    if d.get("sampling") == "uniform":  # added later: checkpoints made before it stay valid
        d.pop("sampling")
    return {"config": d, "space": repr(supernet.space), "n_train": n_train, **supernet.checkpoint_key()}


def train_supernet(supernet: Supernet, data: ImageDataset, config: TrainConfig, checkpoint: str | Path | None = None,
                   log: Callable[[str], None] | None = None, deadline: float | None = None) -> dict[str, Any]:
    """Sandwich-rule training with checkpoints (see the module docstring). At `deadline`
    (time.monotonic()) it stops after the current step, saves the checkpoint (a later run
    resumes from it) and returns with `"stopped_at"` set; Ctrl-C saves it too, then propagates."""
    total = config.total_steps(len(data))
    params_decay = [p for n, p in supernet.named_parameters() if p.dim() > 1]
    params_no = [p for n, p in supernet.named_parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": params_decay, "weight_decay": config.weight_decay},
                           {"params": params_no, "weight_decay": 0.0}], lr=config.lr, momentum=config.momentum,
                          nesterov=True)

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        t = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return 0.5 * config.lr * (1 + math.cos(math.pi * t))

    key = _config_key(config, supernet, len(data))
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        try:
            state = torch.load(ckpt, map_location=_device(supernet), weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise SupernetError(f"cannot read checkpoint {ckpt}: {e}; delete it to start over") from e
        if state.get("key") != key:
            raise SupernetError(f"checkpoint {ckpt} was made with other settings ({state.get('key')}); "
                                f"delete it or pass another path")
        supernet.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        if log:
            log(f"resumed from {ckpt} at step {start}/{total}")

    def save(step: int) -> None:
        if ckpt is None:
            return
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(ckpt.suffix + ".tmp")
        torch.save({"key": key, "model": supernet.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)
        os.replace(tmp, ckpt)

    steps_per_epoch = max(1, len(data) // config.batch_size)
    supernet.train()
    t0 = time.time()
    try:
        return _train_steps(supernet, data, config, opt, lr_at, save, start, total, steps_per_epoch, t0, log,
                            deadline)
    except KeyboardInterrupt:
        done = getattr(supernet, "_steps_done", start)
        if done > start:
            save(done)  # the steps trained so far are kept: the same command resumes from them
            if log:
                log(f"interrupted at step {done}/{total}: checkpoint {ckpt} saved; run again to resume")
        raise


def _train_steps(supernet, data, config, opt, lr_at, save, start, total, steps_per_epoch, t0, log, deadline):
    dev = _device(supernet)
    last_loss = float("nan")
    order: np.ndarray | None = None
    order_epoch = -1
    supernet._steps_done = start
    for step in range(start, total):
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order = np.random.default_rng([config.seed, epoch]).permutation(len(data))
            order_epoch = epoch
        idx = torch.as_tensor(order[pos * config.batch_size:(pos + 1) * config.batch_size], dtype=torch.long)
        x, y = data.x[idx].to(dev), data.y[idx].to(dev)
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        if config.augment:
            x = _augment(x, gen, config.hflip)
        archs, has_teacher = supernet.training_archs(np.random.default_rng([config.seed, step, 7]), config.n_random,
                                                     config.sampling)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        soft = None
        losses = []
        for i, arch in enumerate(archs):
            out = supernet(x, arch)
            if soft is not None and config.distill:
                loss = F.kl_div(F.log_softmax(out, 1), soft, reduction="batchmean")
            else:
                loss = F.cross_entropy(out, y)
            loss.backward()
            losses.append(float(loss.detach()))
            if i == 0 and has_teacher and config.distill:
                soft = F.softmax(out.detach(), 1)
        if config.grad_clip:
            nn.utils.clip_grad_norm_(supernet.parameters(), config.grad_clip)
        opt.step()
        supernet._steps_done = step + 1
        last_loss = losses[0]
        out_of_time = deadline is not None and time.monotonic() >= deadline and step + 1 < total
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == total or out_of_time:
            save(step + 1)
            if log:
                elapsed = time.time() - t0
                left = elapsed / (step + 1 - start) * (total - step - 1)
                log(f"step {step + 1}/{total} loss {last_loss:.3f} ({elapsed:.0f} s, about {left:.0f} s left)")
        if out_of_time:
            if log:
                log(f"supernet: stopped at step {step + 1}/{total} by the time budget (checkpoint saved; a later "
                    f"run resumes from it)")
            return {"steps": step + 1, "resumed_from": start, "seconds": time.time() - t0, "last_loss": last_loss,
                    "stopped_at": step + 1, "total": total}
    return {"steps": total, "resumed_from": start, "seconds": time.time() - t0, "last_loss": last_loss}


@torch.no_grad()
def recalibrate_bn(net: nn.Module, data: ImageDataset, resolution: int, images: int = 500, batch_size: int = 200,
                   seed: int = 0) -> nn.Module:
    """Reset every BatchNorm's statistics and re-estimate them (exact averages) on ``images``
    random images of ``data``; leaves ``net`` in eval mode."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    dev = _device(net)
    net.train()
    idx = np.random.default_rng(seed).permutation(len(data))[:images]
    for st in range(0, len(idx), batch_size):
        b = torch.as_tensor(idx[st:st + batch_size], dtype=torch.long)
        net(_resize(data.x[b].to(dev), resolution))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    net.eval()
    return net


@torch.no_grad()
def accuracy(net: nn.Module, data: ImageDataset, resolution: int | None = None, batch_size: int = 200) -> float:
    """Top-1 accuracy (%) of ``net`` in eval mode on ``data`` (resized to ``resolution``)."""
    was = net.training
    net.eval()
    dev = _device(net)
    correct = 0
    for x, y in data.batches(batch_size, shuffle=False):
        x, y = x.to(dev), y.to(dev)
        if resolution is not None:
            x = _resize(x, resolution)
        correct += int((net(x).argmax(1) == y).sum())
    net.train(was)
    return 100.0 * correct / len(data)


def train_standalone(net: nn.Module, data: ImageDataset, config: TrainConfig, resolution: int | None = None) -> nn.Module:
    """Train one network from scratch with the same recipe (used to check supernet rankings)."""
    total = config.total_steps(len(data))
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                          weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(data) // config.batch_size)
    dev = _device(net)
    net.train()
    for step in range(total):
        epoch, pos = divmod(step, steps_per_epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(len(data))
        idx = torch.as_tensor(order[pos * config.batch_size:(pos + 1) * config.batch_size], dtype=torch.long)
        x, y = data.x[idx].to(dev), data.y[idx].to(dev)
        if config.augment:
            x = _augment(x, torch.Generator().manual_seed(config.seed * 1_000_003 + step), config.hflip)
        if resolution is not None:
            x = _resize(x, resolution)
        for g in opt.param_groups:
            g["lr"] = 0.5 * config.lr * (1 + math.cos(math.pi * step / total))
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        opt.step()
    return net


__all__ = ["Supernet", "NB201Supernet", "FewShotNB201Supernet", "MBV3Supernet", "ResNetSupernet", "TrainConfig", "SupernetError",
           "build_supernet", "train_supernet", "recalibrate_bn", "accuracy", "train_standalone"]
