"""The search-space interface shared by every space, and the helpers they share.

An *architecture* ("arch") is an immutable, hashable value (a tuple or a frozen dataclass)
owned by its space. Every space offers the same operations (see :class:`SearchSpace`):

- ``sample(rng)``, ``mutate(arch, rng)``, ``crossover(a, b, rng)``: the genetic operators;
- ``encode(arch) -> np.ndarray`` (length ``encoding_size``, fixed per space) and
  ``decode(vector)``, with ``decode(encode(a)) == a`` for canonical archs;
- ``to_string(arch)`` / ``from_string(s)``: a stable, human-readable key;
- ``build(arch) -> torch.nn.Module`` and ``export_onnx(arch, path)``;
- ``kernel_specs(arch) -> list[KernelSpec]``: the runtime kernels of the exported network,
  following the conventions of ``docs/design.md`` §1 (the latency predictor's batch path).

``rng`` arguments accept a ``numpy.random.Generator``, an int seed or None.
"""
from __future__ import annotations

import abc
import io
import warnings
from pathlib import Path
from typing import Any, Generic, Hashable, Iterable, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from profiling.kernels import KernelSpec
from search.errors import SearchStageError
from search.memory import params_from_specs

Arch = TypeVar("Arch", bound=Hashable)


class SpaceError(SearchStageError, ValueError):
    """An architecture, string or encoding does not belong to the space."""


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A numpy Generator from a Generator, an int seed or None."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (MobileNet rule, never below 90%)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a "same"-padded convolution or pooling (padding = kernel // 2)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


class AffineBN(nn.BatchNorm2d):
    """BatchNorm that is not preceded by a convolution.

    In training mode it is an ordinary BatchNorm2d. In eval mode it computes the same
    function as ``x * scale + shift`` with per-channel constants, so the exported ONNX graph
    holds a broadcast ``Mul`` and ``Add`` (two ``elementwise(broadcast=True)`` kernels in the
    design's vocabulary, which has no stand-alone BatchNorm kernel).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        # BatchNorm2d registers both running statistics or neither (track_running_stats)
        if self.training or self.running_var is None or self.running_mean is None:
            return super().forward(x)
        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def act_module(name: str) -> nn.Module:
    """The torch module that exports to the ONNX op the design names for activation ``name``."""
    return {
        "relu": lambda: nn.ReLU(inplace=False),
        "relu6": lambda: nn.ReLU6(inplace=False),
        "hardswish": lambda: nn.Hardswish(),
        "hardsigmoid": lambda: nn.Hardsigmoid(),
        "sigmoid": lambda: nn.Sigmoid(),
        "silu": lambda: nn.SiLU(),
        "none": lambda: nn.Identity(),
    }[name]()


# ---- kernel-spec helpers (one place for the conventions of docs/design.md §1) -----------

def k_conv(cin: int, cout: int, h: int, w: int, kernel: int, stride: int = 1, groups: int = 1,
           bn: bool = True, act: str = "relu", add: bool = False) -> KernelSpec:
    """A ``conv`` (or ``conv_add`` when a residual Add follows the BN) on an input of ``h x w``."""
    return KernelSpec.make("conv_add" if add else "conv", cin=cin, cout=cout, h=h, w=w, kernel=kernel,
                           stride=stride, groups=groups, bn=bn, act=act)


def k_act(act: str, c: int, h: int, w: int) -> KernelSpec:
    return KernelSpec.make("activation", act=act, c=c, h=h, w=w)


def k_add(c: int, h: int, w: int, broadcast: bool = False) -> KernelSpec:
    return KernelSpec.make("elementwise", op="add", c=c, h=h, w=w, broadcast=broadcast)


def k_mul(c: int, h: int, w: int, broadcast: bool = False) -> KernelSpec:
    return KernelSpec.make("elementwise", op="mul", c=c, h=h, w=w, broadcast=broadcast)


def k_pool(op: str, c: int, h: int, w: int, kernel: int, stride: int) -> KernelSpec:
    return KernelSpec.make("pool", op=op, c=c, h=h, w=w, kernel=kernel, stride=stride)


def k_head(c: int, h: int, w: int, num_classes: int) -> list[KernelSpec]:
    """GlobalAveragePool -> Flatten -> Gemm: ``global_pool``, ``reshape``, ``linear``."""
    return [KernelSpec.make("global_pool", op="avg", c=c, h=h, w=w),
            KernelSpec.make("reshape", c=c, h=1, w=1),
            KernelSpec.make("linear", tokens=1, cin=c, cout=num_classes, act="none", bias=True)]


def k_affine_bn(c: int, h: int, w: int) -> list[KernelSpec]:
    """An :class:`AffineBN` in eval mode: broadcast Mul then broadcast Add."""
    return [k_mul(c, h, w, broadcast=True), k_add(c, h, w, broadcast=True)]


def k_se(c: int, mid: int, h: int, w: int, gate: str = "hardsigmoid") -> list[KernelSpec]:
    """Squeeze-and-excitation as the design spells it (the 1x1 convs have a bias, no BN)."""
    return [KernelSpec.make("global_pool", op="avg", c=c, h=h, w=w),
            k_conv(c, mid, 1, 1, 1, bn=False, act="relu"),
            k_conv(mid, c, 1, 1, 1, bn=False, act=gate),
            k_mul(c, h, w, broadcast=True)]


# ---- the interface -------------------------------------------------------------------

class SearchSpace(abc.ABC, Generic[Arch]):
    """Base class of all search spaces. Subclasses set ``name`` and implement the abstract methods."""

    name: str = "abstract"
    #: number of input channels and classes of the built networks
    in_channels: int = 3
    num_classes: int = 10
    #: the constructor options a search built the space with (search.wiring.make_space sets it;
    #: best.pt records it, so that load_best rebuilds the same network)
    build_options: dict[str, Any]

    # -- genetic operators
    @abc.abstractmethod
    def sample(self, rng: np.random.Generator | int | None = None) -> Arch:
        """A uniformly random architecture."""

    @abc.abstractmethod
    def mutate(self, arch: Arch, rng: np.random.Generator | int | None = None, prob: float | None = None) -> Arch:
        """A copy of ``arch`` with each gene resampled with probability ``prob``
        (default: 1 / number of genes); at least one gene always changes."""

    @abc.abstractmethod
    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator | int | None = None) -> Arch:
        """Uniform crossover: each gene from ``a`` or ``b`` with probability 1/2."""

    # -- representations
    @property
    @abc.abstractmethod
    def encoding_size(self) -> int:
        """Length of :meth:`encode`'s vector."""

    @abc.abstractmethod
    def encode(self, arch: Arch) -> np.ndarray:
        """A fixed-length float32 feature vector (the predictor's and estimator's input)."""

    @abc.abstractmethod
    def decode(self, vector: Sequence[float] | np.ndarray) -> Arch:
        """The architecture of an :meth:`encode` vector."""

    @abc.abstractmethod
    def to_string(self, arch: Arch) -> str:
        """A stable string key for ``arch``."""

    @abc.abstractmethod
    def from_string(self, s: str) -> Arch:
        """The architecture of a :meth:`to_string` key; raises :class:`SpaceError` if invalid."""

    def encode_batch(self, archs: Iterable[Arch]) -> np.ndarray:
        """Stacked encodings, shape ``(n, encoding_size)``."""
        rows = [self.encode(a) for a in archs]
        return np.stack(rows) if rows else np.zeros((0, self.encoding_size), np.float32)

    def arch_features(self, arch: Arch) -> np.ndarray:
        """Features for learned accuracy estimators: the encoding, plus whatever structure
        summary a space adds (fixed length per space). Default: :meth:`encode`."""
        return self.encode(arch)

    def arch_features_batch(self, archs: Iterable[Arch]) -> np.ndarray:
        rows = [self.arch_features(a) for a in archs]
        return np.stack(rows) if rows else np.zeros((0, len(self.arch_features(self.sample(0)))), np.float32)

    # -- networks
    @abc.abstractmethod
    def input_shape(self, arch: Arch) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the network's input."""

    @abc.abstractmethod
    def build(self, arch: Arch) -> nn.Module:
        """A freshly initialised network for ``arch`` (training mode)."""

    @abc.abstractmethod
    def kernel_specs(self, arch: Arch, batch: int = 1) -> list[KernelSpec]:
        """The runtime kernels of the exported network, in execution order.

        Parameters exclude the batch dimension (design §1), so ``batch`` does not change
        the result; it is accepted for symmetry with the predictor's API.
        """

    def size_of(self, arch: Arch) -> tuple[int, float | None]:
        """(weights of the inference graph, peak activations + weights in MB, or None where the
        space cannot compute it without an export). See :mod:`search.memory`."""
        return params_from_specs(self.kernel_specs(arch)), None

    def export_onnx(self, arch: Arch, path: str | Path | None = None, batch: int = 1,
                    model: nn.Module | None = None, opset: int = 17) -> bytes:
        """Export ``arch`` (or ``model``, e.g. a subnet with inherited weights) to ONNX.

        Uses the legacy TorchScript exporter (``dynamo=False``), with constant folding, input
        ``input`` of shape ``(batch, *input_shape(arch))`` and output ``logits``. Writes
        ``path`` when given and returns the serialised model either way.
        """
        model = self.build(arch) if model is None else model
        return export_model_onnx(model, self.input_shape(arch), path, batch, opset)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def export_model_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path | None = None,
                      batch: int = 1, opset: int = 17) -> bytes:
    """Export ``model`` as :meth:`SearchSpace.export_onnx` does (input ``input`` of shape
    ``(batch, *input_shape)``, output ``logits``); writes ``path`` when given."""
    was_training = model.training
    model.eval()
    x = torch.zeros(batch, *input_shape, device=next(model.parameters()).device)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # torch's annotation names paths only; the TorchScript exporter (dynamo=False) also writes a file object
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=opset,  # type: ignore[arg-type]
                          do_constant_folding=True, input_names=["input"], output_names=["logits"])
    model.train(was_training)
    data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BN, small-normal linear (the usual NAS initialisation)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class GeneSpace(SearchSpace[Arch]):
    """A space whose architectures are flat lists of genes, each with its own choices (mbv3,
    resnet): mutation and crossover work on the genes, as in Once-for-All's evolution."""

    @abc.abstractmethod
    def _choices(self) -> list[tuple]:
        """The allowed values of each gene, in gene order."""

    @abc.abstractmethod
    def _genes(self, arch: Arch) -> list:
        """``arch`` as its flat gene list."""

    @abc.abstractmethod
    def _from_genes(self, genes: Sequence) -> Arch:
        """The architecture of a flat gene list."""

    @abc.abstractmethod
    def validate(self, arch: Arch) -> Arch:
        """``arch`` in the space's canonical form; SpaceError if it is not of the space."""

    def mutate(self, arch: Arch, rng: np.random.Generator | int | None = None, prob: float | None = None) -> Arch:
        """Resample each gene with probability ``prob`` (default 0.1, as OFA's evolution); retries
        until at least one gene changed."""
        rng = as_rng(rng)
        arch = self.validate(arch)
        prob = 0.1 if prob is None else prob
        choices = self._choices()
        for _ in range(100):
            genes = self._genes(arch)
            for i, choice in enumerate(choices):
                if len(choice) > 1 and rng.random() < prob:
                    genes[i] = choice[int(rng.integers(len(choice)))]
            new = self._from_genes(genes)
            if new != arch:
                return new
        return self._from_genes(genes)

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator | int | None = None) -> Arch:
        rng = as_rng(rng)
        ga, gb = self._genes(self.validate(a)), self._genes(self.validate(b))
        return self._from_genes([x if rng.random() < 0.5 else y for x, y in zip(ga, gb)])

    # Subclasses set ``self._cache = {}``; bounded so a long search cannot grow it without limit.
    _cache: dict
    _SPEC_CACHE_SIZE = 200_000

    @abc.abstractmethod
    def _specs_uncached(self, arch: Arch) -> tuple[KernelSpec, ...]:
        """The kernel specs of ``arch``, computed (validates ``arch``)."""

    def kernel_specs(self, arch: Arch, batch: int = 1) -> list[KernelSpec]:
        specs = self._cache.get(arch)
        if specs is None:
            specs = self._specs_uncached(arch)
            if len(self._cache) < self._SPEC_CACHE_SIZE:
                self._cache[arch] = specs
        return list(specs)


__all__ = ["AffineBN", "SearchSpace", "GeneSpace", "SpaceError", "as_rng", "make_divisible", "conv_out", "act_module",
           "k_conv", "k_act", "k_add", "k_mul", "k_pool", "k_head", "k_affine_bn", "k_se", "count_params", "export_model_onnx",
           "init_weights"]
