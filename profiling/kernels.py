"""The kernel vocabulary shared by the whole pipeline.

A `KernelSpec` names one unit as the runtime executes it (a convolution fused with its
BatchNorm and activation, a Gemm, an attention MatMul, ...) or one block made of such
units (MBConv, ResNet blocks, SE, a transformer encoder block). Profiling measures specs
and stores their parameters as table columns; the predictor detects the same specs in
any ONNX graph; search spaces describe candidates as lists of specs, which is the
predictor's batch path that needs no ONNX export.

Tensors are NCHW (or [batch, tokens, dim] for token kinds); the batch size is a property
of the target, not of the spec. Convolutions pad "same" (kernel // 2, per axis; a dilated
kernel pads dilation * (kernel // 2)).

Parameters added after tables were shipped (`KindSchema.late`: a conv's `kernel_w` and
`dilation`, a concat's `n`) are left out of `KernelSpec.key()` while they hold their default,
so the rows of an older table keep their ids, and an older table without their columns reads
back with the defaults.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from profiling.errors import ProfilingStageError

ACTIVATIONS = ("none", "relu", "relu6", "hardswish", "silu", "gelu", "sigmoid", "hardsigmoid",
               "leakyrelu", "prelu", "mish", "tanh")


class KernelSpecError(ProfilingStageError, ValueError):
    """A kernel kind or parameter is wrong; the message lists the valid ones."""


@dataclass(frozen=True)
class KindSchema:
    name: str
    category: str  # "kernel" or "block"
    params: Mapping[str, type]
    description: str
    # Defaults for optional parameters; everything else is required. A callable default is
    # computed from the other parameters (a conv's kernel_w defaults to its kernel).
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # Parameters added after tables were shipped: omitted from the key at their default.
    late: tuple[str, ...] = ()


def _schema(name, category, description, defaults=None, late=(), **params) -> KindSchema:
    return KindSchema(name, category, params, description, defaults or {}, tuple(late))


def _same_as_kernel(p: Mapping[str, Any]) -> Any:
    return p["kernel"]


PAD_MODES = ("constant", "reflect", "edge")
REDUCE_OPS = ("l2", "mean", "sum", "max")
REDUCE_AXES = ("c", "hw", "last")


KINDS: dict[str, KindSchema] = {s.name: s for s in (
    # ---- kernels: what the runtime executes as one unit ------------------------------
    _schema("conv", "kernel", "Conv [+BatchNorm] [+activation]; groups=cin=cout is depthwise; a kernel of "
            "kernel x kernel_w (1x7, 7x1 ...), dilated by `dilation`",
            {"groups": 1, "bn": True, "act": "relu", "kernel_w": _same_as_kernel, "dilation": 1},
            ("kernel_w", "dilation"),
            cin=int, cout=int, h=int, w=int, kernel=int, stride=int, groups=int, bn=bool, act=str,
            kernel_w=int, dilation=int),
    _schema("conv_add", "kernel", "Conv [+BatchNorm] + residual Add [+activation]",
            {"groups": 1, "bn": True, "act": "relu", "kernel_w": _same_as_kernel, "dilation": 1},
            ("kernel_w", "dilation"),
            cin=int, cout=int, h=int, w=int, kernel=int, stride=int, groups=int, bn=bool, act=str,
            kernel_w=int, dilation=int),
    _schema("linear", "kernel", "Gemm/MatMul with a weight [+bias] [+activation] over `tokens` rows",
            {"act": "none", "bias": True},
            tokens=int, cin=int, cout=int, act=str, bias=bool),
    _schema("matmul", "kernel", "MatMul of two activations, [1,heads,m,k] x [1,heads,k,n] (attention)",
            {}, heads=int, m=int, k=int, n=int),
    _schema("softmax", "kernel", "Softmax over the last axis of [1,heads,m,n]", {}, heads=int, m=int, n=int),
    _schema("layernorm", "kernel", "LayerNormalization over the last axis of [1,tokens,dim]",
            {}, tokens=int, dim=int),
    _schema("pool", "kernel", "MaxPool or AveragePool (op=max|avg)", {"op": "max"},
            op=str, c=int, h=int, w=int, kernel=int, stride=int),
    _schema("global_pool", "kernel", "GlobalAveragePool or GlobalMaxPool (op=avg|max)", {"op": "avg"},
            op=str, c=int, h=int, w=int),
    _schema("elementwise", "kernel",
            "Add or Mul (op=add|mul) of [1,c,h,w] with a same-shape or, if broadcast, a [1,c,1,1] tensor",
            {"op": "add", "broadcast": False}, op=str, c=int, h=int, w=int, broadcast=bool),
    _schema("activation", "kernel", "A stand-alone activation on [1,c,h,w]", {}, act=str, c=int, h=int, w=int),
    _schema("concat", "kernel", "Concat on channels of [1,c1,h,w] and n-1 tensors of c2 channels in all",
            {"n": 2}, ("n",), c1=int, c2=int, h=int, w=int, n=int),
    _schema("reshape", "kernel", "Reshape [1,c,h,w] to [1,c,h*w] (layout-preserving)", {}, c=int, h=int, w=int),
    _schema("transpose", "kernel", "Transpose [1,c,h,w] to [1,h,w,c]", {}, c=int, h=int, w=int),
    _schema("channel_shuffle", "kernel", "Reshape-Transpose-Reshape channel shuffle (ShuffleNet)",
            {}, c=int, h=int, w=int, groups=int),
    _schema("resize", "kernel", "Resize by an integer scale (mode=nearest|linear)", {"mode": "nearest"},
            c=int, h=int, w=int, scale=int, mode=str),
    # ---- blocks: several kernels, measured together ----------------------------------
    _schema("mbconv", "block", "MobileNetV2/V3 inverted residual: 1x1 expand, kxk depthwise, [SE], 1x1 project",
            {"se": False, "act": "relu"},
            cin=int, cout=int, h=int, w=int, expand=float, kernel=int, stride=int, se=bool, act=str),
    _schema("resnet_basic", "block", "ResNet basic block: two 3x3 convs and a shortcut", {},
            cin=int, cout=int, h=int, w=int, stride=int),
    _schema("resnet_bottleneck", "block", "ResNet bottleneck: 1x1, 3x3 (grouped if groups>1), 1x1 and a shortcut",
            {"groups": 1}, cin=int, mid=int, cout=int, h=int, w=int, stride=int, groups=int),
    _schema("se", "block", "Squeeze-and-excitation: global pool, FC, act, FC, sigmoid, channel Mul",
            {"reduction": 4}, c=int, h=int, w=int, reduction=int),
    _schema("transformer", "block", "Pre-norm ViT encoder block: LN, MHSA, LN, MLP with GELU",
            {"mlp_ratio": 4.0}, tokens=int, dim=int, heads=int, mlp_ratio=float),
    # ---- kernels added in session 7: after the blocks, so the kernel kinds of older predictors keep
    # their index (the pooled kernel model takes a kind's index as a feature) -------------------------
    _schema("conv_transpose", "kernel", "ConvTranspose (upsampling by `stride`, output h*stride) [+BatchNorm] "
            "[+activation]", {"groups": 1, "bn": False, "act": "none"},
            cin=int, cout=int, h=int, w=int, kernel=int, stride=int, groups=int, bn=bool, act=str),
    _schema("split", "kernel", "Split of [1,c,h,w] into `parts` equal parts on channels", {},
            c=int, h=int, w=int, parts=int),
    _schema("slice", "kernel", "Slice of `cout` channels out of [1,c,h,w]", {}, c=int, h=int, w=int, cout=int),
    _schema("pad", "kernel", "Pad of [1,c,h,w] by `pad` on each side of h and w (mode=constant|reflect|edge)",
            {"mode": "constant"}, c=int, h=int, w=int, pad=int, mode=str),
    _schema("reduce", "kernel", "ReduceL2/Mean/Sum/Max (op=l2|mean|sum|max) of [1,c,h,w] over the channels "
            "(axis=c), the spatial axes (hw) or the last axis (last), keeping dims", {"axis": "c"},
            op=str, c=int, h=int, w=int, axis=str),
    _schema("groupnorm", "kernel", "GroupNorm of [1,c,h,w] in `groups` groups (groups=c is InstanceNorm), "
            "with its per-channel scale and shift", {}, c=int, h=int, w=int, groups=int),
    _schema("einsum", "kernel", "Einsum of two activations, [1,heads,m,k] x [1,heads,n,k] -> [1,heads,m,n]",
            {}, heads=int, m=int, k=int, n=int),
)}

# Every parameter name used by any kind: the table has one column for each.
PARAM_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(p for s in KINDS.values() for p in s.params))


@dataclass(frozen=True)
class KernelSpec:
    kind: str
    params: Mapping[str, Any]

    @classmethod
    def make(cls, kind: str, **params: Any) -> "KernelSpec":
        """Validate, fill defaults and coerce types; the one way to build a spec."""
        schema = KINDS.get(kind)
        if schema is None:
            raise KernelSpecError(f"unknown kernel kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        merged = {**{k: v for k, v in schema.defaults.items() if not callable(v)}, **params}
        for k, v in schema.defaults.items():
            if callable(v) and k not in merged:
                try:
                    merged[k] = v(merged)
                except KeyError:
                    pass  # reported as missing below
        unknown = set(merged) - set(schema.params)
        missing = set(schema.params) - set(merged)
        if unknown or missing:
            raise KernelSpecError(
                f"kind {kind}: " + (f"unknown parameters {sorted(unknown)} " if unknown else "")
                + (f"missing parameters {sorted(missing)} " if missing else "")
                + f"(parameters are {list(schema.params)})")
        coerced = {}
        for name, typ in schema.params.items():
            value = merged[name]
            coerced[name] = bool(value) if typ is bool else typ(value)
        if "act" in coerced and coerced["act"] not in ACTIVATIONS:
            raise KernelSpecError(f"kind {kind}: activation {coerced['act']!r} is not one of {ACTIVATIONS}")
        for name, allowed in (("mode", PAD_MODES if kind == "pad" else None), ("op", REDUCE_OPS if kind == "reduce" else None),
                              ("axis", REDUCE_AXES if kind == "reduce" else None)):
            if allowed and coerced[name] not in allowed:
                raise KernelSpecError(f"kind {kind}: {name} {coerced[name]!r} is not one of {allowed}")
        return cls(kind, coerced)

    @property
    def category(self) -> str:
        return KINDS[self.kind].category

    def key(self) -> str:
        """A stable identifier: the same spec always hashes to the same key."""
        params = dict(self.params)
        schema = KINDS[self.kind]
        for name in schema.late:
            default = schema.defaults[name]
            if params[name] == (default(params) if callable(default) else default):
                del params[name]
        blob = json.dumps({"kind": self.kind, **params}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "KernelSpec":
        d = dict(d)
        kind = d.pop("kind")
        schema = KINDS.get(kind)
        if schema is None:
            raise KernelSpecError(f"unknown kernel kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        return cls.make(kind, **{k: v for k, v in d.items() if k in schema.params and v is not None and v == v})  # v == v drops NaN

    def __post_init__(self) -> None:
        # Specs are immutable and the predictor's batch path hashes each one per lookup
        # (millions per search): compute the hash once, not from the sorted params every time.
        object.__setattr__(self, "_hash", hash((self.kind, tuple(sorted(self.params.items())))))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined]

    def __reduce__(self) -> tuple[type["KernelSpec"], tuple[str, Mapping[str, Any]]]:
        # Rebuilt through the constructor, so the receiving process computes its own hash: str
        # hashes differ between processes, and a pickled hash would make equal specs miss in dicts.
        return (KernelSpec, (self.kind, self.params))


__all__ = ["ACTIVATIONS", "PAD_MODES", "REDUCE_OPS", "REDUCE_AXES", "KINDS", "PARAM_COLUMNS", "KernelSpec", "KernelSpecError", "KindSchema"]
