"""Zero-cost accuracy proxies: score an untrained network from one minibatch.

``compute_proxies(net, inputs, targets, names, seed=0) -> {name: score}``. Every score follows
one sign convention: **higher means better** (more accurate after training), as published.
Each is deterministic given ``seed`` (only ``zen`` draws random numbers: its Gaussian
re-initialisation and inputs). The network is left unchanged: proxies that alter weights or
BatchNorm work on a deep copy, gradients are cleared and the train/eval mode is restored.

The definitions follow the reference implementations (zero-cost-nas by Abdelfattah et al.,
ICLR 2021, as vendored in NASLib / NAS-Bench-Suite-Zero; ZiCo and Zen-NAS from their
authors' code). "Layers" below are the ``nn.Conv2d`` and ``nn.Linear`` modules; the network
is in training mode (BatchNorm uses batch statistics) unless stated otherwise.

========== ====================================================================================
name       definition (score to maximise)
========== ====================================================================================
synflow    Tanaka et al. 2020: float64 copy with BatchNorm disabled (identity) and |weights|;
           input of ones, shape (1, C, H, W); backprop sum(output);
           score = sum over layers of sum |w * dR/dw|.
snip       Lee et al. 2019: sum over layers of sum |w * dL/dw|, L = cross-entropy on the batch.
grasp      Wang et al. 2020: sum over layers of sum(-w * Hg), g = dL/dw, H the Hessian.
fisher     Theis et al. 2018 / Turner et al. 2020: per layer output channel k,
           0.5 * mean_n (sum_hw act * dL/dact)^2, summed over channels and layers.
grad_norm  sum over layers of ||dL/dw||_2.
jacob_cov  Mellor et al. 2020 (v1): J = dsum(output)/dinput per sample; C = corrcoef(J);
           score = -sum(log(eig + 1e-5) + 1 / (eig + 1e-5)). NaN if J has a constant row.
nwot       Mellor et al. 2021 (NASWOT): binary codes of every ReLU's input (x > 0) per sample;
           K = sum over ReLUs of (c c^T + (1-c)(1-c)^T); score = log|det K|.
zico       Li et al. 2023: the batch is split in 2; per layer, sum over weights with nonzero
           std of mean_i|g_i| / std_i(g_i); score = sum over layers of log of that sum.
zen        Lin et al. 2021: Gaussian re-init (weights N(0,1), BN affine 1/0) of a copy;
           x, e ~ N(0,1) of the batch's shape; log mean_n sum |f(x) - f(x + 0.01 e)| over the
           pre-global-pooling features, plus sum over BN layers of log sqrt(mean running_var).
params     number of parameters, in millions.
flops      multiply-accumulates of the Conv and Linear layers for one input, in millions
           (NAS-Bench-201's "FLOPs" unit).
========== ====================================================================================

Aliases: ``jacov`` = ``jacob_cov``, ``naswot`` = ``nwot``.

The proxies are a registry (:data:`REGISTRY`, name -> :class:`Proxy`), like the spaces and the
search algorithms: ``register_proxy("mine", score, data_free=False)`` adds one, where
``score(net, inputs, targets, loss_fn) -> float`` (higher = better). ``compute_proxies``, the
accuracy estimator and the search's ``proxies`` setting (checked when the configuration is built)
read the registry, so a registered name is usable everywhere at once. A proxy registered in this
process is not known to Ray workers (``ray_address``) unless the module that registers it is
imported there too.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from search.errors import SearchStageError

#: the built-in proxies, in the order `compute_proxies` reports them (the registry may hold more)
PROXIES: tuple[str, ...] = ("synflow", "snip", "grasp", "fisher", "grad_norm", "jacob_cov", "nwot", "zico",
                            "zen", "params", "flops")
ALIASES: dict[str, str] = {"jacov": "jacob_cov", "naswot": "nwot", "gradnorm": "grad_norm"}
#: +1 for every proxy: higher is better (kept explicit for callers that combine proxies).
SIGNS: dict[str, int] = {p: 1 for p in PROXIES}
#: built-in proxies that need no data (only the input shape); `Proxy.data_free` for any proxy
DATA_FREE: frozenset[str] = frozenset({"synflow", "params", "flops"})

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: a proxy's score: (untrained net, input batch, class targets, loss function) -> float, higher = better
ProxyScore = Callable[[nn.Module, torch.Tensor, torch.Tensor, LossFn], float]


class ProxyError(SearchStageError, ValueError):
    """An unknown proxy name or unusable inputs."""


@dataclass(frozen=True)
class Proxy:
    """A registered zero-cost proxy."""
    name: str
    score: ProxyScore | None   # None: snip, grad_norm and fisher, computed together in one backward pass
    data_free: bool = False    # needs no data, only the input shape


#: every proxy by name: the built-ins (registered below) and the user's (`register_proxy`)
REGISTRY: dict[str, Proxy] = {}


def register_proxy(name: str, score: ProxyScore, *, data_free: bool = False, aliases: Iterable[str] = ()) -> Proxy:
    """Add a proxy to the registry under `name` (and `aliases`); `compute_proxies`, the estimator
    and the search's `proxies` setting accept it from then on. A name already taken is refused."""
    if not callable(score):
        raise ProxyError(f"proxy {name!r}: score must be a function (net, inputs, targets, loss_fn) -> float")
    taken = [n for n in (name, *aliases) if n in REGISTRY or n in ALIASES]
    if not name or taken:
        raise ProxyError(f"a proxy named {taken[0] if taken else name!r} is already registered; choose another name")
    proxy = Proxy(name, score, data_free)
    REGISTRY[name] = proxy
    ALIASES.update({a: name for a in aliases})
    return proxy


def unregister_proxy(name: str) -> None:
    """Remove a proxy added with `register_proxy` (and its aliases); the built-ins stay."""
    if name in PROXIES:
        raise ProxyError(f"{name!r} is a built-in proxy and stays registered")
    if REGISTRY.pop(name, None) is None:
        raise ProxyError(f"no proxy named {name!r} is registered")
    for alias in [a for a, n in ALIASES.items() if n == name]:
        del ALIASES[alias]


def canonical_names(names: Iterable[str] | None) -> list[str]:
    """Resolve aliases and check names against the registry; None means every registered proxy."""
    if names is None:
        return list(REGISTRY)
    if isinstance(names, str):
        names = [names]
    out = []
    for n in names:
        c = ALIASES.get(n, n)
        if c not in REGISTRY:
            raise ProxyError(f"unknown proxy {n!r}; proxies are {', '.join(REGISTRY)} (aliases {ALIASES})")
        if c not in out:
            out.append(c)
    return out


def _layers(net: nn.Module) -> list[nn.Conv2d | nn.Linear]:
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _clear_grads(net: nn.Module) -> None:
    for p in net.parameters():
        p.grad = None


def _no_bn_copy(net: nn.Module) -> nn.Module:
    """A deep copy whose BatchNorm layers are identities (the reference's ``bn=False``)."""
    net = copy.deepcopy(net)

    def strip(mod: nn.Module) -> None:
        for name, child in mod.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(mod, name, nn.Identity())
            else:
                strip(child)
    strip(net)
    return net


# ---- individual proxies ---------------------------------------------------------------

def synflow(net: nn.Module, inputs: torch.Tensor) -> float:
    net = _no_bn_copy(net).double()
    with torch.no_grad():
        for p in net.state_dict().values():
            if p.is_floating_point():
                p.abs_()
    x = torch.ones((1, *inputs.shape[1:]), dtype=torch.float64)
    net.zero_grad()
    torch.sum(net(x)).backward()
    total = 0.0
    for layer in _layers(net):
        if layer.weight.grad is not None:
            total += float(torch.sum(torch.abs(layer.weight.detach() * layer.weight.grad)))
    return total


def _loss_grads(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn,
                want_fisher: bool) -> tuple[list[torch.Tensor | None], float]:
    """One forward/backward of the loss: the layers' weight gradients, and the Fisher score."""
    layers = _layers(net)
    fisher_parts: list[torch.Tensor] = []
    handles = []
    if want_fisher:
        def fwd_hook(module, inp, out):
            if not out.requires_grad:
                return

            def grad_hook(grad, act=out.detach()):
                g_nk = (act * grad).sum(dim=tuple(range(2, act.dim()))) if act.dim() > 2 else act * grad
                fisher_parts.append(g_nk.pow(2).mean(0).mul(0.5).sum())
            out.register_hook(grad_hook)
        handles = [m.register_forward_hook(fwd_hook) for m in layers]
    try:
        net.zero_grad()
        loss = loss_fn(net(inputs), targets)
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    grads = [None if m.weight.grad is None else m.weight.grad.detach().clone() for m in layers]
    fisher = float(sum(float(p) for p in fisher_parts))
    return grads, fisher


def snip_from(net: nn.Module, grads: Sequence[torch.Tensor | None]) -> float:
    return float(sum(float(torch.sum(torch.abs(m.weight.detach() * g))) for m, g in zip(_layers(net), grads)
                     if g is not None))


def grad_norm_from(grads: Sequence[torch.Tensor | None]) -> float:
    return float(sum(float(g.norm()) for g in grads if g is not None))


def grasp(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn = F.cross_entropy) -> float:
    layers = _layers(net)
    weights = [m.weight for m in layers]
    net.zero_grad()
    grad_w = torch.autograd.grad(loss_fn(net(inputs), targets), weights, allow_unused=True)
    grad_f = torch.autograd.grad(loss_fn(net(inputs), targets), weights, create_graph=True, allow_unused=True)
    z: torch.Tensor | int = 0
    for gw, gf in zip(grad_w, grad_f):
        if gw is not None and gf is not None:
            z = z + (gw.detach() * gf).sum()
    if not torch.is_tensor(z) or not z.requires_grad:
        return 0.0
    z.backward()
    total = 0.0
    for w in weights:
        if w.grad is not None:
            total += float(torch.sum(-w.detach() * w.grad))
    net.zero_grad()
    return total


def jacob_cov(net: nn.Module, inputs: torch.Tensor) -> float:
    params = list(net.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)  # only d/dinput is needed
    try:
        x = inputs.detach().clone().requires_grad_(True)
        y = net(x)
        y.backward(torch.ones_like(y))
        if x.grad is None:  # an output with a graph that bypasses the input: no Jacobian to take
            raise ProxyError("jacob_cov: the network's output does not depend on its input")
        jac = x.grad.detach().reshape(x.shape[0], -1).double().numpy()
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    with np.errstate(all="ignore"):
        corrs = np.corrcoef(jac)
    if not np.all(np.isfinite(corrs)):
        return float("nan")
    v = np.linalg.eigvalsh(corrs)
    k = 1e-5
    return float(-np.sum(np.log(v + k) + 1.0 / (v + k)))


def nwot(net: nn.Module, inputs: torch.Tensor) -> float:
    n = inputs.shape[0]
    K = torch.zeros(n, n, dtype=torch.float64)

    def hook(module, inp, out):
        nonlocal K
        x = (inp[0].detach().reshape(n, -1) > 0).to(torch.float32)
        d = x.shape[1]
        s = x.sum(1, dtype=torch.float64)
        # c c^T + (1-c)(1-c)^T = 2 c c^T + d - s_i - s_j
        K = K + 2.0 * (x @ x.t()).double() + d - s[:, None] - s[None, :]

    handles = [m.register_forward_hook(hook) for m in net.modules() if "ReLU" in type(m).__name__]
    try:
        with torch.no_grad():
            net(inputs)
    finally:
        for h in handles:
            h.remove()
    if not handles:
        raise ProxyError("nwot needs ReLU modules (nn.ReLU / nn.ReLU6) in the network")
    _, logdet = np.linalg.slogdet(K.numpy())
    return float(logdet)


def zico(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn = F.cross_entropy,
         split: int = 2) -> float:
    layers = _layers(net)
    n = inputs.shape[0]
    per_layer: list[list[torch.Tensor]] = [[] for _ in layers]
    for sp in range(split):
        st, en = sp * n // split, (sp + 1) * n // split
        net.zero_grad()
        loss_fn(net(inputs[st:en]), targets[st:en]).backward()
        for k, m in enumerate(layers):
            g = m.weight.grad
            per_layer[k].append(torch.zeros_like(m.weight).reshape(-1) if g is None else g.detach().reshape(-1).clone())
    net.zero_grad()
    total = 0.0
    for gs in per_layer:
        g = torch.stack(gs).double()
        std = g.std(0, unbiased=False)
        nz = std != 0
        s = float((g.abs().mean(0)[nz] / std[nz]).sum())
        if s != 0:
            total += math.log(s)
    return total


def _pre_gap(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(net, "forward_pre_gap"):
        # a method the space's network may define, so not on nn.Module's type
        pre_gap: Callable[[torch.Tensor], torch.Tensor] = getattr(net, "forward_pre_gap")
        return pre_gap(x)
    pools = [m for m in net.modules() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))]
    if not pools:
        return net(x)
    captured: list[torch.Tensor] = []
    h = pools[-1].register_forward_hook(lambda m, i, o: captured.append(i[0]))
    try:
        net(x)
    finally:
        h.remove()
    return captured[0]


def zen(net: nn.Module, inputs: torch.Tensor, mixup_gamma: float = 1e-2) -> float:
    net = copy.deepcopy(net)
    net.train()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.reset_running_stats()  # as on a fresh copy of the network
        x = torch.randn(inputs.shape)
        e = torch.randn(inputs.shape)
        out = _pre_gap(net, x)
        mix = _pre_gap(net, x + mixup_gamma * e)
        score = torch.mean(torch.sum(torch.abs(out - mix), dim=tuple(range(1, out.dim()))))
        log_bn = 0.0
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_var is not None:
                log_bn += float(torch.log(torch.sqrt(torch.mean(m.running_var))))
    return float(torch.log(score)) + log_bn


def params(net: nn.Module) -> float:
    return sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6


def flops(net: nn.Module, inputs: torch.Tensor) -> float:
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += out.numel() // out.shape[0] * m.in_features
    handles = [m.register_forward_hook(hook) for m in _layers(net)]
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(inputs[:1])
    finally:
        for h in handles:
            h.remove()
        net.train(was)
    return total / 1e6


# ---- the entry point -----------------------------------------------------------------

# The built-ins, in PROXIES' order; snip, grad_norm and fisher share one backward pass (no score).
_BUILTIN: dict[str, ProxyScore | None] = {
    "synflow": lambda net, x, y, loss: synflow(net, x),
    "snip": None,
    "grasp": lambda net, x, y, loss: grasp(net, x, y, loss),
    "fisher": None,
    "grad_norm": None,
    "jacob_cov": lambda net, x, y, loss: jacob_cov(net, x),
    "nwot": lambda net, x, y, loss: nwot(net, x),
    "zico": lambda net, x, y, loss: zico(net, x, y, loss),
    "zen": lambda net, x, y, loss: zen(net, x),
    "params": lambda net, x, y, loss: params(net),
    "flops": lambda net, x, y, loss: flops(net, x),
}
for _name in PROXIES:
    REGISTRY[_name] = Proxy(_name, _BUILTIN[_name], _name in DATA_FREE)


def compute_proxies(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    names: Iterable[str] | None = None, seed: int = 0,
                    loss_fn: LossFn = F.cross_entropy) -> dict[str, float]:
    """Zero-cost proxy scores of ``net`` on one batch (higher = better for every score).

    Args:
        net: an untrained network (its weights as initialised); put in training mode while
            the proxies run and restored afterwards.
        inputs: a float batch ``(N, C, H, W)`` (e.g. 64 normalised CIFAR-10 images).
        targets: class indices ``(N,)``.
        names: proxies to compute (default: every registered proxy, :data:`REGISTRY`; aliases
            accepted).
        seed: seeds torch's RNG before each proxy, so results are reproducible.
        loss_fn: loss for the gradient-based proxies.

    Returns:
        ``{name: score}`` in the order of ``names``; ``jacob_cov`` is NaN when undefined
        (e.g. a network whose output does not depend on its input).

    >>> from search.spaces import get_space
    >>> net = get_space("nb201").build(("nor_conv_3x3",) * 6)
    >>> s = compute_proxies(net, torch.randn(8, 3, 32, 32), torch.arange(8) % 10, ["params", "synflow"])
    >>> round(s["params"], 4)
    1.5315
    """
    names = canonical_names(names)
    if inputs.dim() < 2 or targets.shape[0] != inputs.shape[0]:
        raise ProxyError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} do not match")
    inputs = inputs.detach().float()
    targets = targets.detach().long()
    was_training = net.training
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    net.train()
    out: dict[str, float] = {}
    shared: dict[str, float] = {}
    try:
        if {"snip", "grad_norm", "fisher"} & set(names):
            with _seeded(seed):
                grads, fisher_v = _loss_grads(net, inputs, targets, loss_fn, "fisher" in names)
            shared = {"snip": snip_from(net, grads), "grad_norm": grad_norm_from(grads), "fisher": fisher_v}
            _clear_grads(net)
        for name in names:
            with _seeded(seed):
                score = REGISTRY[name].score
                v = shared[name] if score is None else score(net, inputs, targets, loss_fn)
            _clear_grads(net)
            out[name] = float(v)
    finally:
        _clear_grads(net)
        net.load_state_dict(buffers, strict=False)  # BatchNorm running statistics, as they were
        net.train(was_training)
    return out


__all__ = ["PROXIES", "ALIASES", "SIGNS", "DATA_FREE", "REGISTRY", "Proxy", "ProxyError", "ProxyScore",
           "register_proxy", "unregister_proxy", "compute_proxies", "canonical_names",
           "synflow", "grasp", "jacob_cov", "nwot", "zico", "zen", "params", "flops"]
