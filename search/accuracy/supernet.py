"""Weight-sharing supernets for the nb201, mbv3, resnet and baseline-derived spaces.

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
once (FairNAS strict fairness, Chu et al. 2021). The baseline space's supernet
(:class:`BaselineSupernet`) is few-shot by block type: one weight set per stage and block type,
``n_random + 2`` paths per step cycling through the types in every stage. Elastic
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
from typing import Any, Callable, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search.accuracy.data import ImageDataset
from search.spaces.base import SearchSpace, act_module, init_weights, make_divisible
from search.spaces.baseline import BaselineArch, BaselineSpace, StageGene, op_family
from search.spaces.mbv3 import ConvBNAct, MBBlockCfg, MBConv, MBV3Arch, MBV3Space, SqueezeExcite
from search.spaces.nb201 import EDGES, OPS, NB201Space, build_macro, cell_plan, edge_key, make_op
from search.spaces.resnet import Bottleneck, BottleneckCfg, ResNetArch, ResNetSpace
from search.spaces.skeleton import (BlockCfg, SkeletonBlock, block_configs, head_layers, skeleton_to_dict, stem_layers,
                                   stem_out)
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


def _running_stats(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``bn``'s running mean, variance and batch count: the BatchNorms of the supernets and of
    the spaces' networks all track them (``track_running_stats``, the default)."""
    if bn.running_mean is None or bn.running_var is None or bn.num_batches_tracked is None:
        raise SupernetError(f"{bn} keeps no running statistics to copy")
    return bn.running_mean, bn.running_var, bn.num_batches_tracked


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, c: int) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight[:c])
        dst.bias.copy_(src.bias[:c])
        dst_mean, dst_var, dst_n = _running_stats(dst)
        src_mean, src_var, src_n = _running_stats(src)
        dst_mean.copy_(src_mean[:c])
        dst_var.copy_(src_var[:c])
        dst_n.copy_(src_n)


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """The bias of ``conv``, one of the SE convs, which are built with one."""
    if conv.bias is None:
        raise SupernetError(f"{conv} has no bias")
    return conv.bias


def _conv_bn(m: ConvBNAct) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The conv and the BatchNorm of ``m``: a ConvBNAct is (conv, BN, activation), which
    indexing an nn.Sequential (a plain Module) does not tell the type checker."""
    return cast(nn.Conv2d, m[0]), cast(nn.BatchNorm2d, m[1])


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
            # the sandwich spaces (mbv3, resnet) have both ends of a size order, which SearchSpace
            # does not declare
            return ([space.largest(), getattr(space, "smallest")()] + [space.sample(rng) for _ in range(n_random)],
                    True)
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
            acc: torch.Tensor | None = None
            for i, o in ins:
                ops = cast(nn.ModuleDict, self.edges[edge_key(j, i)])  # the edge's ops (__init__)
                y = ops[o](nodes[i])
                acc = y if acc is None else acc + y
            if acc is None:  # cell_plan keeps only the nodes with an input
                raise SupernetError(f"node {j} of cell {arch} has no input")
            nodes[j] = acc
        return nodes[3]


class NB201Supernet(Supernet):
    """All 4 parametric/non-parametric ops on every edge of every cell (``none`` is no op)."""

    space: NB201Space
    # set by build_macro, shared with NB201Network
    stem: nn.Sequential
    cells: nn.ModuleList
    lastact: nn.Sequential
    global_pooling: nn.AdaptiveAvgPool2d
    classifier: nn.Linear

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
        return cast(NB201Supernet, self.parts[tuple(arch)[self.edge]])  # __init__ fills parts with copies of one

    def forward(self, x: torch.Tensor, arch: tuple) -> torch.Tensor:
        return self.part(arch)(x, arch)

    def subnet(self, arch: tuple) -> nn.Module:
        return self.part(arch).subnet(arch)

    def part_checkpoint(self, checkpoint: str | Path, op: str) -> Path:
        p = Path(checkpoint)
        return p.with_name(f"{p.stem}_edge{self.edge}_{op}{p.suffix}")

    def fit(self, data: ImageDataset, config: TrainConfig | None = None, checkpoint: str | Path | None = None,
            log: Callable[[str], None] | None = None, deadline: float | None = None,
            ops: Sequence[str] | None = None) -> dict[str, Any]:
        """Fine-tune the sub-supernets of ``ops`` (default: all) one after the other, each with its
        own checkpoint beside ``checkpoint`` (``<stem>_edge<E>_<op>.pt``); several processes can
        each train some of them. ``deadline`` (time.monotonic()) applies to each op's fine-tuning,
        as in :meth:`Supernet.fit`. Returns the per-op training summaries."""
        out = {}
        for op in ops or OPS:
            if op not in self.parts:
                raise SupernetError(f"unknown op {op!r}; choose from {', '.join(OPS)}")
            ck = None if checkpoint is None else self.part_checkpoint(checkpoint, op)
            part_log: Callable[[str], None] | None = (lambda m, op=op: log(f"[{op}] {m}")) if log else None
            out[op] = train_supernet(cast(NB201Supernet, self.parts[op]), data, config or TrainConfig(), ck,
                                     part_log, deadline)
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
            s = F.relu(F.conv2d(s, self.se_reduce.weight[:sm, :mid], _bias(self.se_reduce)[:sm]))
            s = F.hardsigmoid(F.conv2d(s, self.se_expand.weight[:mid, :sm], _bias(self.se_expand)[:mid]))
            y = y * s
        y = _bn(F.conv2d(y, self.pl_conv.weight[:, :mid]), self.pl_bn, self.cout)
        return y + x if cfg.residual else y

    def export(self, cfg: MBBlockCfg) -> MBConv:
        m = MBConv(cfg)
        mid, k = cfg.mid, cfg.kernel
        if m.inverted_bottleneck is None:  # MBConv drops it at expand ratio 1; this slot always has one
            raise SupernetError(f"cannot export {cfg} from a supernet slot: expand ratio 1 has no expansion conv")
        ib_conv, ib_bn = _conv_bn(m.inverted_bottleneck)
        dw_conv, dw_bn = _conv_bn(m.depth_conv)
        pl_conv, pl_bn = _conv_bn(m.point_linear)
        with torch.no_grad():
            ib_conv.weight.copy_(self.ib_conv.weight[:mid])
            _copy_bn(ib_bn, self.ib_bn, mid)
            dw_conv.weight.copy_(_crop(self.dw_conv.weight[:mid], k))
            _copy_bn(dw_bn, self.dw_bn, mid)
            if m.se is not None:  # built when cfg.se
                sm = cfg.se_mid
                m.se.reduce.weight.copy_(self.se_reduce.weight[:sm, :mid])
                _bias(m.se.reduce).copy_(_bias(self.se_reduce)[:sm])
                m.se.expand.weight.copy_(self.se_expand.weight[:mid, :sm])
                _bias(m.se.expand).copy_(_bias(self.se_expand)[:mid])
            pl_conv.weight.copy_(self.pl_conv.weight[:, :mid])
            _copy_bn(pl_bn, self.pl_bn, cfg.cout)
        return m


class MBV3Supernet(Supernet):
    space: MBV3Space

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
        blocks = [copy.deepcopy(self.first_block)] + [cast(_DynMBConv, self.slots[i]).export(c)
                                                      for i, c in zip(slot_ids, cfgs[1:])]
        net.blocks = nn.ModuleList(blocks)
        for name in ("first_conv", "final_expand", "feature_mix", "classifier"):
            setattr(net, name, copy.deepcopy(getattr(self, name)))
        for b, c in zip(blocks, cfgs):  # the static blocks carry the subnet's shapes (net.blocks holds these)
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
        conv1, bn1 = _conv_bn(m.conv1)
        conv2, bn2 = _conv_bn(m.conv2)
        conv3, bn3 = _conv_bn(m.conv3)
        with torch.no_grad():
            conv1.weight.copy_(self.conv1.weight[:mid, :cin])
            _copy_bn(bn1, self.bn1, mid)
            conv2.weight.copy_(self.conv2.weight[:mid, :mid])
            _copy_bn(bn2, self.bn2, mid)
            conv3.weight.copy_(self.conv3.weight[:cout, :mid])
            _copy_bn(bn3, self.bn3, cout)
            if cfg.shortcut:
                # Bottleneck builds it as (pool, ConvBNAct) when cfg.shortcut; its type says nn.Module
                ds_conv, ds_bn = _conv_bn(cast(ConvBNAct, cast(nn.Sequential, m.downsample)[1]))
                ds_conv.weight.copy_(self.ds_conv.weight[:cout, :cin])
                _copy_bn(ds_bn, self.ds_bn, cout)
        return m


class ResNetSupernet(Supernet):
    space: ResNetSpace

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
        net.blocks = nn.ModuleList(cast(_DynBottleneck, self.slots[i]).export(cfg) for i, cfg in pairs)
        net.stem = copy.deepcopy(self.stem)
        c = pairs[-1][1].cout
        with torch.no_grad():
            net.classifier.weight.copy_(self.classifier.weight[:, :c])
            net.classifier.bias.copy_(self.classifier.bias)
        return net


# ---- the baseline-derived space ---------------------------------------------------------

def _fit(w: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The first ``shape`` entries of ``w`` (its leading dims sliced, a larger spatial kernel
    centre-cropped): how every smaller choice reads the largest choice's weights."""
    w = w[tuple(slice(0, n) for n in shape[:2])]
    if len(shape) == 4 and w.shape[-1] != shape[-1]:
        w = _crop(w, shape[-1])
    return w


def _conv_bn_act(x: torch.Tensor, m: ConvBNAct, cout: int, kernel: int, stride: int = 1,
                 groups: int = 1) -> torch.Tensor:
    """``m`` (a ConvBNAct at its largest shape) run at ``cout`` outputs and a ``kernel`` crop."""
    conv, bn = _conv_bn(m)
    act = m[2]
    w = _fit(conv.weight, (cout, x.shape[1] // groups, kernel, kernel))
    return act(_bn(F.conv2d(x, w, None, stride, kernel // 2, 1, groups), bn, cout))


def _copy_into(dst: nn.Module, src: nn.Module) -> None:
    """Copy the leading slice (and kernel crop) of every tensor of ``src`` into ``dst``'s same-named one."""
    theirs = src.state_dict()
    with torch.no_grad():
        for name, t in dst.state_dict().items():
            t.copy_(_fit(theirs[name], t.shape) if t.dim() else theirs[name])


class _DynSkeletonBlock(nn.Module):
    """One block slot of a stage and block type of :class:`BaselineSupernet`: the weights of the
    largest block of that slot (``cfgs``: every :class:`BlockCfg` the slot can take); a smaller
    block uses their leading channels and the centre of the kernel.

    Layers: ``c1`` (basic: the first conv; mbconv: the 1x1 expansion; bottleneck/grouped: the
    1x1 reduction), ``c2`` (mbconv: the depthwise conv; bottleneck/grouped: the kxk conv),
    ``se``, ``last`` and the projection ``shortcut``, each present if some cfg uses it."""

    def __init__(self, cfgs: Sequence[BlockCfg]):
        super().__init__()
        types = {c.block.type for c in cfgs}
        if len(types) != 1:
            raise SupernetError(f"a supernet slot holds one block type, not {sorted(types)}")
        self.block_type = types.pop()  # not `type`, which would shadow nn.Module.type()
        b0 = cfgs[0].block
        self.stride, self.act_name = b0.stride, b0.act
        cin = max(c.cin for c in cfgs)
        cout = max(c.block.cout for c in cfgs)
        mid = max(c.mid for c in cfgs)
        k = max(c.block.kernel for c in cfgs)
        act = b0.act
        if self.block_type == "basic":
            self.c1 = ConvBNAct(cin, cout, k, self.stride, act=act)
            last_in, k_last = cout, k
        else:
            if self.block_type != "mbconv" or any(c.block.expand != 1 for c in cfgs):
                self.c1 = ConvBNAct(cin, mid, 1, 1, act=act)
            if self.block_type == "mbconv":
                self.c2 = ConvBNAct(mid, mid, k, self.stride, groups=mid, act=act)
            else:
                gw = b0.group_width if self.block_type == "grouped" else mid
                self.c2 = ConvBNAct(mid, mid, k, self.stride, groups=mid // gw, act=act)
            last_in, k_last = mid, 1
        if any(c.block.se for c in cfgs):
            self.se = SqueezeExcite(last_in, max(c.se_mid for c in cfgs if c.block.se), cfgs[0].se_gate)
        self.last = ConvBNAct(last_in, cout, k_last, 1, act="none")
        if any(c.projection for c in cfgs):
            self.shortcut = ConvBNAct(cin, cout, 1, self.stride, act="none")
        self.out_act = nn.Identity() if self.block_type == "mbconv" else act_module(act)

    def _se(self, y: torch.Tensor, cfg: BlockCfg) -> torch.Tensor:
        se, c, sm = self.se, y.shape[1], cfg.se_mid
        s = F.relu(F.conv2d(y.mean((2, 3), keepdim=True), _fit(se.reduce.weight, (sm, c)), _bias(se.reduce)[:sm]))
        return y * se.gate(F.conv2d(s, _fit(se.expand.weight, (c, sm)), _bias(se.expand)[:c]))

    def forward(self, x: torch.Tensor, cfg: BlockCfg) -> torch.Tensor:
        b, mid = cfg.block, cfg.mid
        if self.block_type == "basic":
            y = _conv_bn_act(x, self.c1, b.cout, b.kernel, b.stride)
            k_last = b.kernel
        else:
            y = x
            if not (self.block_type == "mbconv" and b.expand == 1):
                y = _conv_bn_act(y, self.c1, mid, 1)
            y = _conv_bn_act(y, self.c2, mid, b.kernel, b.stride, mid if self.block_type == "mbconv" else cfg.groups)
            k_last = 1
        if b.se:
            y = self._se(y, cfg)
        y = _conv_bn_act(y, self.last, b.cout, k_last)
        if not cfg.residual:
            return y
        sc = _conv_bn_act(x, self.shortcut, b.cout, 1, b.stride) if cfg.projection else x
        return self.out_act(y + sc)

    def export_into(self, dst: SkeletonBlock) -> None:
        """Load this slot's weights for ``dst.cfg`` into ``dst`` (a `SkeletonBlock`)."""
        cfg = dst.cfg
        own: list[nn.Module] = []
        if self.block_type == "basic":
            own.append(self.c1)
        else:
            if not (self.block_type == "mbconv" and cfg.block.expand == 1):
                own.append(self.c1)
            own.append(self.c2)
        if cfg.block.se:
            own.append(self.se)
        for d, s in zip(dst.body, own):
            _copy_into(d, s)
        _copy_into(dst.last, self.last)
        if dst.shortcut is not None:
            _copy_into(dst.shortcut, self.shortcut)


class BaselineSupernet(Supernet):
    """The few-shot supernet of a :class:`~search.spaces.baseline.BaselineSpace`.

    The baseline's stem and head are shared by every subnet. Each stage holds one weight set
    per block type (``own``, ``mbconv``, ``grouped``: :data:`~search.spaces.baseline.FAMILIES`),
    since an MBConv cannot share weights with a basic block: ``slots[stage][type][b]`` is the
    ``b``-th block of that stage and type at its largest (widest, largest expansion and kernel,
    with SE weights). A subnet runs the first ``depth`` slots of its stage's type, at its width
    (leading channels), expansion (leading channels) and kernel (centre crop), with or without
    SE. The baseline is one subnet (``own`` in every stage), scored in the same units as every
    candidate.

    Training draws ``n_random + 2`` paths per step; in every stage the paths cycle through the
    block types in a random order (each type is trained equally often, although the space has
    six ``mb`` ops for one ``own`` and one ``grouped``); the other genes are uniform. There is
    no size order across block types, so there is no sandwich teacher (no distillation).
    """

    space: BaselineSpace

    def __init__(self, space: BaselineSpace):
        super().__init__()
        self.space = s = space
        sk = s.skeleton
        self.stem, self.maxpool = stem_layers(sk)
        #: the block types of the space's ops (every stage offers the same ones)
        self.families = tuple(dict.fromkeys(op_family(o) for o in s.ops))
        cins = {sk.stem.cout}      # the channels a stage's first block may receive
        h = stem_out(sk)
        self.slots = nn.ModuleList()
        for st in range(s.n_stages):
            dmax = max(s.depth_choices[st])
            per_type = nn.ModuleDict()
            outs: set[int] = set()
            h_next = h
            for fam in self.families:
                ops = [o for o in s.ops if op_family(o) == fam]
                stacks = [s.stage_blocks(st, StageGene(o, dmax, w, se)) for o in ops for w in s.widths
                          for se in (False, True)]
                slot_cins, blocks = set(cins), nn.ModuleList()
                for b in range(dmax):
                    cfgs = [BlockCfg(stack[b], c, h, sk.se_gate, sk.se_from) for stack in stacks for c in slot_cins]
                    blocks.append(_DynSkeletonBlock(cfgs))
                    slot_cins = {stack[b].cout for stack in stacks}
                    if b + 1 in s.depth_choices[st]:
                        outs |= slot_cins
                h_next = BlockCfg(stacks[0][0], sk.stem.cout, h).h_out
                per_type[fam] = blocks
            self.slots.append(per_type)
            cins, h = outs, h_next
        self.head_conv, self.global_pooling, self.mix, self.classifier = head_layers(sk, max(cins))
        init_weights(self)

    def checkpoint_key(self) -> dict[str, Any]:
        # the space's repr names the baseline and its depths, not every block of a user's model
        return {"skeleton": skeleton_to_dict(self.space.skeleton)}

    def training_archs(self, rng: np.random.Generator, n_random: int,
                       sampling: str = "uniform") -> tuple[list[Any], bool]:
        if sampling not in ("uniform", "fair"):
            raise SupernetError(f"sampling must be 'uniform' or 'fair', not {sampling!r}")
        s, n = self.space, n_random + 2
        orders = [rng.permutation(len(self.families)) for _ in range(s.n_stages)]
        archs = []
        for k in range(n):
            genes = []
            for st in range(s.n_stages):
                fam = self.families[orders[st][k % len(self.families)]]
                ops = [o for o in s.ops if op_family(o) == fam]
                genes.append(StageGene(ops[int(rng.integers(len(ops)))],
                                       s.depth_choices[st][int(rng.integers(len(s.depth_choices[st])))],
                                       s.widths[int(rng.integers(len(s.widths)))], bool(rng.integers(2))))
            archs.append(s.make(genes))
        return archs, False

    def _plan(self, arch: BaselineArch) -> list[tuple[_DynSkeletonBlock, BlockCfg]]:
        """(slot, block) for every block of ``arch``, in order."""
        arch = self.space.validate(arch)
        cfgs = iter(block_configs(self.space.skeleton_of(arch)))
        return [(self._slot(st, op_family(g.op), b), next(cfgs)) for st, g in enumerate(arch.stages)
                for b in range(g.depth)]

    def _slot(self, stage: int, family: str, b: int) -> _DynSkeletonBlock:
        """``slots[stage][family][b]``, typed: __init__ nests a ModuleList of ModuleDicts of
        ModuleLists, whose indexing gives plain Modules."""
        per_type = cast(nn.ModuleDict, self.slots[stage])
        return cast(_DynSkeletonBlock, cast(nn.ModuleList, per_type[family])[b])

    def forward(self, x: torch.Tensor, arch: BaselineArch) -> torch.Tensor:
        x = self.stem(_resize(x, self.space.resolution))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for slot, cfg in self._plan(arch):
            x = slot(x, cfg)
        if self.head_conv is not None:
            # head_layers builds the head conv as a ConvBNAct and returns it as an nn.Module
            x = _conv_bn_act(x, cast(ConvBNAct, self.head_conv), self.space.skeleton.head.conv, 1)
        x = self.global_pooling(x)
        if self.mix is not None:
            x = self.mix(x)
        x = torch.flatten(x, 1)
        return F.linear(x, self.classifier.weight[:, :x.shape[1]], self.classifier.bias)

    def subnet(self, arch: BaselineArch) -> nn.Module:
        plan = self._plan(arch)
        net = self.space.build(arch)
        for (slot, _), block in zip(plan, net.blocks):
            slot.export_into(cast(SkeletonBlock, block))  # SkeletonNetwork's blocks are all SkeletonBlocks
        for name in ("stem", "head_conv", "mix", "classifier"):
            if getattr(net, name) is not None:
                _copy_into(getattr(net, name), getattr(self, name))
        return net


#: above this many weights a supernet is not trained by default (`search.wiring`): training keeps
#: weights, gradients and momentum (12 bytes a weight), and a CPU trains it for hours
MAX_SUPERNET_WEIGHTS = 200_000_000


def supernet_size(space: SearchSpace) -> int:
    """The number of weights of ``space``'s supernet, counted without allocating them."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_supernet(space).parameters())


def build_supernet(space: SearchSpace) -> Supernet:
    """The supernet of ``space`` (an nb201, mbv3, resnet or baseline space), freshly initialised."""
    if isinstance(space, NB201Space):
        return NB201Supernet(space)
    if isinstance(space, MBV3Space):
        return MBV3Supernet(space)
    if isinstance(space, ResNetSpace):
        return ResNetSupernet(space)
    if isinstance(space, BaselineSpace):
        return BaselineSupernet(space)
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


__all__ = ["Supernet", "NB201Supernet", "FewShotNB201Supernet", "MBV3Supernet", "ResNetSupernet", "BaselineSupernet",
           "TrainConfig", "SupernetError", "MAX_SUPERNET_WEIGHTS", "supernet_size",
           "build_supernet", "train_supernet", "recalibrate_bn", "accuracy", "train_standalone"]
