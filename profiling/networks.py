"""Random complete networks, measured end to end for the graph-level latency model.

A network is a JSON-serialisable dict::

    {"family": "mobilenet", "resolution": 160, "in_channels": 3, "num_classes": 1000,
     "layers": [{"op": "conv", "cout": 16, "kernel": 3, "stride": 2, "act": "hardswish"},
                {"op": "mbconv", "cout": 24, "expand": 4.0, "kernel": 5, "stride": 2, ...},
                ..., {"op": "head", "hidden": 1280, "act": "hardswish"}]}

`sample_network(rng, family)` draws one (families: mobilenet, resnet, vit, mixed, regnet, oddwidth, dense) and
`build_network(spec, batch)` builds its ONNX graph deterministically with the same kernel
and block builders as the profiled configurations (so every layer is one or several
`KernelSpec`s; `network_kernels(spec)` lists them). Sizes are kept realistic but
affordable on one CPU thread: inputs 32-256, at most `MAX_NETWORK_FLOPS` (6 GFLOPs).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import onnx

from . import builders as B
from .kernels import KernelSpec, KernelSpecError

FAMILIES = ("mobilenet", "resnet", "vit", "mixed", "regnet", "oddwidth", "dense")
MAX_NETWORK_FLOPS = 6e9
MIN_NETWORK_FLOPS = 5e6


def network_id(spec: dict[str, Any]) -> str:
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return "net-" + hashlib.sha1(blob.encode()).hexdigest()[:16]


def _div(v: float, d: int = 8) -> int:
    """Round to a multiple of d (MobileNet's make_divisible), at least d."""
    return max(d, int(v + d / 2) // d * d)


# ---- building ------------------------------------------------------------------------
def _tokens_from_image(gb, x, shape):
    b, c, h, w = shape
    x, shape = B.k_reshape(gb, x, shape, (b, c, h * w))
    return B.k_transpose(gb, x, shape, perm=(0, 2, 1))  # [b, hw, c]


def _image_from_tokens(gb, x, shape, h, w):
    b, t, d = shape
    x, shape = B.k_transpose(gb, x, shape, perm=(0, 2, 1))
    return B.k_reshape(gb, x, shape, (b, d, h, w))


def _layer(gb: B.GraphBuilder, x: str, shape: tuple, layer: dict[str, Any]):
    op = layer["op"]
    if op == "conv":
        return B.k_conv(gb, x, shape, cout=layer["cout"], kernel=layer["kernel"], stride=layer["stride"],
                        groups=layer.get("groups", 1), bn=layer.get("bn", True), act=layer.get("act", "relu"))
    if op == "pool":
        return B.k_pool(gb, x, shape, op=layer.get("pool", "max"), kernel=layer["kernel"], stride=layer["stride"])
    if op == "mbconv":
        return B.b_mbconv(gb, x, shape, cout=layer["cout"], expand=layer["expand"], kernel=layer["kernel"],
                          stride=layer["stride"], se=layer.get("se", False), act=layer.get("act", "relu"))
    if op == "resnet_basic":
        return B.b_resnet_basic(gb, x, shape, cout=layer["cout"], stride=layer["stride"])
    if op == "resnet_bottleneck":
        return B.b_resnet_bottleneck(gb, x, shape, mid=layer["mid"], cout=layer["cout"], stride=layer["stride"],
                                     groups=layer.get("groups", 1))
    if op == "dense_layer":  # DenseNet: a 1x1 bottleneck and a 3x3 conv whose `growth` channels join the input
        y, s = B.k_conv(gb, x, shape, cout=layer["bottleneck"], kernel=1, stride=1, act="relu")
        y, s = B.k_conv(gb, y, s, cout=layer["growth"], kernel=3, stride=1, act="relu")
        return B.k_concat(gb, x, shape, y, s)
    if op == "transition":  # DenseNet: 1x1 compression and a 2x2 average pool
        y, s = B.k_conv(gb, x, shape, cout=layer["cout"], kernel=1, stride=1, act="relu")
        return B.k_pool(gb, y, s, op="avg", kernel=2, stride=2)
    if op == "patch_embed":
        # Patchify with reshape/transpose, then a linear projection (= Conv k=p, s=p) and a
        # learned position embedding.
        b, c, h, w = shape
        p = layer["patch"]
        if h % p or w % p:
            raise KernelSpecError(f"patch_embed: resolution {h}x{w} is not a multiple of patch {p}")
        x, s = B.k_reshape(gb, x, shape, (b, c, h // p, p, w // p, p))
        x, s = B.k_transpose(gb, x, s, perm=(0, 2, 4, 1, 3, 5))
        x, s = B.k_reshape(gb, x, s, (b, (h // p) * (w // p), c * p * p))
        x, s = B.k_linear(gb, x, s, cout=layer["dim"])
        pos = gb.weight("pos_embed", (1,) + tuple(s[1:]), "small")
        return B.k_elementwise(gb, x, s, pos, op="add")
    if op == "transformer":
        return B.b_transformer(gb, x, shape, heads=layer["heads"], mlp_ratio=layer.get("mlp_ratio", 4.0))
    if op == "mobilevit":
        # MobileViT-like: local 3x3 conv, 1x1 to `dim`, global transformers over the
        # h*w tokens, 1x1 back, concat with the input, 3x3 fusion.
        b, c, h, w = shape
        y, s = B.k_conv(gb, x, shape, cout=c, kernel=3, stride=1, act=layer.get("act", "silu"))
        y, s = B.k_conv(gb, y, s, cout=layer["dim"], kernel=1, stride=1, bn=False, act="none")
        y, s = _tokens_from_image(gb, y, s)
        for _ in range(layer["depth"]):
            y, s = B.b_transformer(gb, y, s, heads=layer["heads"], mlp_ratio=layer.get("mlp_ratio", 2.0))
        y, s = B.k_layernorm(gb, y, s)
        y, s = _image_from_tokens(gb, y, s, h, w)
        y, s = B.k_conv(gb, y, s, cout=c, kernel=1, stride=1, act=layer.get("act", "silu"))
        y, s = B.k_concat(gb, x, shape, y, s)
        return B.k_conv(gb, y, s, cout=c, kernel=3, stride=1, act=layer.get("act", "silu"))
    if op == "head":
        if len(shape) == 3:  # tokens: LayerNorm, then average the tokens with a global pool
            b, t, d = shape
            x, shape = B.k_layernorm(gb, x, shape)
            x, shape = B.k_transpose(gb, x, shape, perm=(0, 2, 1))
            x, shape = B.k_reshape(gb, x, shape, (b, d, t, 1))
        x, shape = B.k_global_pool(gb, x, shape, op="avg")
        x, shape = B.k_reshape(gb, x, shape, (shape[0], shape[1]))
        if layer.get("hidden"):
            x, shape = B.k_linear(gb, x, shape, cout=layer["hidden"], act=layer.get("act", "hardswish"))
        return B.k_linear(gb, x, shape, cout=layer["num_classes"])
    raise KernelSpecError(f"unknown network layer op {op!r}")


def _build(spec: dict[str, Any], batch: int, opset: int):
    gb = B.GraphBuilder(opset)
    r = spec["resolution"]
    shape = (batch, spec.get("in_channels", 3), r, r)
    x = gb.input("x", shape)
    for layer in spec["layers"]:
        layer = dict(layer)
        if layer["op"] == "head":
            layer.setdefault("num_classes", spec.get("num_classes", 1000))
        x, shape = _layer(gb, x, shape, layer)
    return gb, x, shape


def build_network(spec: dict[str, Any], batch: int = 1, opset: int = B.DEFAULT_OPSET) -> onnx.ModelProto:
    """The ONNX model of a network spec (external, device-filled weights like `build_model`)."""
    gb, y, shape = _build(spec, batch, opset)
    return gb.model([(y, shape)], graph_name=f"{spec.get('family', 'network')}")


def network_kernels(spec: dict[str, Any]) -> list[KernelSpec]:
    """The kernel specs the network is built from, in graph order."""
    return list(_build(spec, 1, B.DEFAULT_OPSET)[0].kernels)


# ---- sampling ------------------------------------------------------------------------
def _choice(rng, seq, p=None):
    return seq[int(rng.choice(len(seq), p=p))]


def _mobilenet(rng, divisor: int = 8, family: str = "mobilenet",
               multipliers=(0.35, 0.5, 0.75, 1.0, 1.25, 1.5)) -> dict[str, Any]:
    res = _choice(rng, [96, 112, 128, 160, 192, 224])
    wm = _choice(rng, list(multipliers))
    act = _choice(rng, ["relu", "relu6", "hardswish", "silu"])
    layers: list[dict[str, Any]] = [{"op": "conv", "cout": _div(16 * wm, divisor), "kernel": 3, "stride": 2, "act": act}]
    stages = [(16, 1, 1), (24, 2, 2), (40, 3, 2), (80, 3, 2), (112, 3, 1), (160, 3, 2)]
    for i, (width, depth, stride) in enumerate(stages):
        n = int(rng.integers(1, depth + 2)) if i else 1
        for j in range(n):
            layers.append({"op": "mbconv", "cout": _div(width * wm, divisor),
                           "expand": 1.0 if i == 0 else float(_choice(rng, [3, 4, 6])),
                           "kernel": int(_choice(rng, [3, 5, 7])), "stride": stride if j == 0 else 1,
                           "se": bool(i >= 2 and rng.random() < 0.35), "act": act if i >= 2 else "relu"})
    last = _div(_choice(rng, [576, 960]) * wm, divisor)
    layers.append({"op": "conv", "cout": last, "kernel": 1, "stride": 1, "act": act})
    layers.append({"op": "head", "hidden": int(_choice(rng, [0, 1024, 1280])), "act": "hardswish"})
    return {"family": family, "resolution": res, "in_channels": 3, "num_classes": 1000, "layers": layers}


def _oddwidth(rng) -> dict[str, Any]:
    # MobileNet-like with widths rounded to 2 instead of 8 (ShuffleNetV2-1.0's 58/116 channels,
    # width multipliers such as 0.6 or 1.1): onnxruntime leaves a conv whose channels are not a
    # multiple of 4 outside its NCHWc layout (`predictors.features.layout_break`), which the
    # other families, all multiples of 8, never show the graph model.
    return _mobilenet(rng, divisor=2, family="oddwidth", multipliers=(0.6, 0.7, 0.85, 1.1, 1.3))


def _resnet(rng) -> dict[str, Any]:
    res = _choice(rng, [32, 48, 64, 96, 128, 160, 192, 224])
    block = _choice(rng, ["resnet_basic", "resnet_bottleneck"])
    groups = int(_choice(rng, [1, 1, 32])) if block == "resnet_bottleneck" else 1
    layers: list[dict[str, Any]] = []
    if res <= 64:  # CIFAR-style
        base = int(_choice(rng, [16, 32, 64]))
        widths = [base, base * 2, base * 4]
        layers.append({"op": "conv", "cout": base, "kernel": 3, "stride": 1, "act": "relu"})
        classes = 10 if res <= 32 else 100
    else:
        base = int(_choice(rng, [16, 32, 48, 64]))
        widths = [base, base * 2, base * 4, base * 8]
        layers.append({"op": "conv", "cout": base, "kernel": 7, "stride": 2, "act": "relu"})
        layers.append({"op": "pool", "pool": "max", "kernel": 3, "stride": 2})
        classes = 1000
    for i, width in enumerate(widths):
        for j in range(int(rng.integers(1, 5))):
            stride = 2 if (j == 0 and i > 0) else 1
            if block == "resnet_basic":
                layers.append({"op": block, "cout": width, "stride": stride})
            else:
                mid = width * 2 if groups > 1 else width
                mid = max(groups, mid // groups * groups)
                layers.append({"op": block, "mid": mid, "cout": width * 4, "stride": stride, "groups": groups})
    layers.append({"op": "head"})
    return {"family": "resnet", "resolution": res, "in_channels": 3, "num_classes": classes, "layers": layers}


def _vit(rng) -> dict[str, Any]:
    res = _choice(rng, [32, 64, 96, 128, 160, 224])
    patches = [p for p in (4, 8, 16, 32) if res % p == 0 and 16 <= (res // p) ** 2 <= 256]
    patch = int(_choice(rng, patches))
    dim = int(_choice(rng, [96, 128, 192, 256, 384, 512, 768]))
    heads = int(_choice(rng, [h for h in (2, 3, 4, 6, 8, 12) if dim % h == 0 and 32 <= dim // h <= 96] or [dim // 64]))
    depth = int(rng.integers(2, 13))
    mlp = float(_choice(rng, [2.0, 3.0, 4.0]))
    layers: list[dict[str, Any]] = [{"op": "patch_embed", "patch": patch, "dim": dim}]
    layers += [{"op": "transformer", "heads": heads, "mlp_ratio": mlp} for _ in range(depth)]
    layers.append({"op": "head"})
    return {"family": "vit", "resolution": res, "in_channels": 3, "num_classes": 1000 if res >= 96 else 100,
            "layers": layers}


def _mixed(rng) -> dict[str, Any]:
    res = _choice(rng, [64, 96, 128, 160, 192, 224, 256])
    act = _choice(rng, ["silu", "hardswish", "relu"])
    wm = _choice(rng, [0.5, 0.75, 1.0])
    layers: list[dict[str, Any]] = [{"op": "conv", "cout": _div(16 * wm), "kernel": 3, "stride": 2, "act": act}]
    size = res // 2
    c = _div(16 * wm)
    stages = [(32, 1), (48, 2), (64, 2), (96, 2), (128, 2)]
    for i, (width, stride) in enumerate(stages):
        if size // stride < 2:
            break
        c = _div(width * wm)
        layers.append({"op": "mbconv", "cout": c, "expand": float(_choice(rng, [2, 4])), "kernel": 3,
                       "stride": stride, "se": False, "act": act})
        size //= stride
        if i >= 2 and size * size <= 256 and rng.random() < 0.8:
            dim = int(_choice(rng, [64, 96, 144, 192]))
            layers.append({"op": "mobilevit", "dim": dim, "depth": int(rng.integers(1, 4)),
                           "heads": int(_choice(rng, [h for h in (2, 4) if dim % h == 0])), "mlp_ratio": 2.0, "act": act})
    layers.append({"op": "conv", "cout": _div(4 * c), "kernel": 1, "stride": 1, "act": act})
    layers.append({"op": "head"})
    return {"family": "mixed", "resolution": res, "in_channels": 3, "num_classes": 1000, "layers": layers}


def _regnet(rng) -> dict[str, Any]:
    # RegNetX-like: bottleneck ratio 1 and a fixed group *width* per network, so group counts are
    # odd numbers (7, 13, 19 ...) and grouped 3x3 convs dominate, as in RegNet/ResNeXt
    res = _choice(rng, [96, 128, 160, 192, 224])
    gw = int(_choice(rng, [8, 16, 24, 32, 48]))
    w0 = float(_choice(rng, [24, 32, 48, 64]))
    growth = float(_choice(rng, [2.0, 2.2, 2.5]))
    layers: list[dict[str, Any]] = [{"op": "conv", "cout": 32, "kernel": 3, "stride": 2, "act": "relu"}]
    for i, (lo, hi) in enumerate(((1, 2), (1, 4), (2, 8), (2, 10))):
        width = max(gw, int(round(w0 * growth ** i / gw)) * gw)
        for j in range(int(rng.integers(lo, hi + 1))):
            layers.append({"op": "resnet_bottleneck", "mid": width, "cout": width, "stride": 2 if j == 0 else 1,
                           "groups": width // gw})
    layers.append({"op": "head"})
    return {"family": "regnet", "resolution": res, "in_channels": 3, "num_classes": 1000, "layers": layers}


def _dense(rng) -> dict[str, Any]:
    # DenseNet-like: every layer concatenates its `growth` new channels to everything before it,
    # so concats, narrow 3x3 convs and wide 1x1 bottlenecks over a growing input dominate
    res = _choice(rng, [64, 96, 128, 160, 192, 224])
    growth = int(_choice(rng, [12, 16, 24, 32]))
    c = 2 * growth
    layers: list[dict[str, Any]] = [{"op": "conv", "cout": c, "kernel": 3 if res <= 96 else 7, "stride": 2, "act": "relu"}]
    size = res // 2
    if res > 96:
        layers.append({"op": "pool", "pool": "max", "kernel": 3, "stride": 2})
        size //= 2
    for i in range(int(rng.integers(3, 5))):
        for _ in range(int(rng.integers(2, 13))):
            layers.append({"op": "dense_layer", "growth": growth, "bottleneck": 4 * growth})
            c += growth
        if size >= 4 and i < 3:
            c = _div(c // 2, 4)
            layers.append({"op": "transition", "cout": c})
            size //= 2
    layers.append({"op": "head"})
    return {"family": "dense", "resolution": res, "in_channels": 3, "num_classes": 1000, "layers": layers}


_SAMPLERS = {"mobilenet": _mobilenet, "resnet": _resnet, "vit": _vit, "mixed": _mixed, "regnet": _regnet,
             "oddwidth": _oddwidth, "dense": _dense}


def sample_network(rng: np.random.Generator, family: str | None = None,
                   max_flops: float = MAX_NETWORK_FLOPS) -> dict[str, Any]:
    """A random network of `family` (random family if None) within the FLOPs cap."""
    from .onnx_stats import model_stats
    if family is not None and family not in _SAMPLERS:
        raise KernelSpecError(f"unknown network family {family!r}; valid families: {', '.join(FAMILIES)}")
    for _ in range(200):
        fam = family or _choice(rng, list(FAMILIES))
        spec = _SAMPLERS[fam](rng)
        flops = model_stats(build_network(spec)).flops
        if MIN_NETWORK_FLOPS <= flops <= max_flops:
            return spec
    raise RuntimeError(f"could not sample a {family} network under {max_flops:.3g} FLOPs")


__all__ = ["FAMILIES", "sample_network", "build_network", "network_kernels", "network_id", "MAX_NETWORK_FLOPS"]
