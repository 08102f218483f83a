"""Which configurations to measure: a prior of real shapes, uniform coverage, refinement.

* `sample_spec(rng, kind)` draws one configuration of a kind: with probability
  `UNIFORM_SHARE` uniformly (log-uniform resolutions 7-224 and channels 8-2048),
  otherwise from a prior of the shapes that real architectures use (MobileNet/ResNet
  stage widths at their resolutions, ViT/DeiT/MobileViT token, width and head counts).
* `refine(df, kind, rng, n)` is the adaptive step (as in nn-Meter): fit a quick
  cross-validated LightGBM model of log latency for the kind, then draw new
  configurations near the points it predicts worst.
* Every draw passes `cost_ok`: FLOPs, weights and activations under caps, so no single
  configuration eats the budget.
* Three kinds of configuration real models run and a uniform draw would rarely reach are drawn on
  purpose (session 9): dilated convs whose dilation is at or beyond the feature map (DeepLab's
  ASPP, where most taps fall in the padding), `linear` weights beyond the device's last-level
  cache (AlexNet/VGG classifiers: a GEMV bound by memory bandwidth, `llc_bytes` from the device's
  facts), and `conv_add` with depthwise groups (MobileOne/FastViT training-time branches).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .builders import build_model
from .kernels import ACTIVATIONS, KINDS, KernelSpec, KernelSpecError
from .onnx_stats import ModelStats, model_stats

UNIFORM_SHARE = 0.35
MAX_FLOPS = 1.5e9          # per kernel or block
MAX_PARAMS = 16e6          # weights the device must fill (64 MB in fp32)
MAX_ACT_BYTES = 64e6       # input + output activations
MAX_BYTES = 256e6          # all memory traffic (onnx_stats bytes)
MAX_GROUPED_FLOPS = 2e8    # depthwise and grouped convs
#: the last-level cache assumed when the device does not report its own (most servers' L3)
DEFAULT_LLC_BYTES = 32 * 2**20
#: `linear` weights drawn beyond the cache span this range of multiples of the LLC
BEYOND_LLC = (0.75, 4.0)
#: share of `linear` draws whose weights lie beyond the LLC
BEYOND_LLC_SHARE = 0.12

# Relative share of each kind in a profile (normalised over the kinds asked for).
KIND_WEIGHTS = {
    "conv": 0.26, "conv_add": 0.05, "linear": 0.08, "matmul": 0.04, "softmax": 0.025,
    "layernorm": 0.025, "pool": 0.025, "global_pool": 0.02, "elementwise": 0.04, "activation": 0.04,
    "concat": 0.02, "reshape": 0.015, "transpose": 0.02, "channel_shuffle": 0.015, "resize": 0.02,
    "mbconv": 0.11, "resnet_basic": 0.04, "resnet_bottleneck": 0.04, "se": 0.03, "transformer": 0.06,
    # session 7: the vocabulary of detection necks, segmentation decoders, CSP and hybrid nets
    "conv_transpose": 0.02, "split": 0.012, "slice": 0.012, "pad": 0.012, "reduce": 0.012,
    "groupnorm": 0.015, "einsum": 0.012,
}

# (channels, resolution) pairs of real CNN stages (MobileNetV2/V3, EfficientNet, ResNet, CIFAR nets).
CNN_SHAPES = [
    (16, 112), (24, 112), (32, 112), (16, 56), (24, 56), (32, 56), (48, 56), (64, 56), (96, 56),
    (144, 56), (256, 56), (40, 28), (48, 28), (64, 28), (80, 28), (96, 28), (128, 28), (144, 28),
    (192, 28), (240, 28), (512, 28), (80, 14), (96, 14), (112, 14), (160, 14), (192, 14), (240, 14),
    (256, 14), (384, 14), (480, 14), (576, 14), (672, 14), (1024, 14), (160, 7), (192, 7), (320, 7),
    (512, 7), (576, 7), (960, 7), (1024, 7), (1280, 7), (2048, 7), (64, 112), (16, 32), (32, 32),
    (64, 32), (32, 16), (64, 16), (128, 16), (128, 8), (256, 8), (64, 8), (3, 224),
]
# (tokens, dim, heads) of ViT/DeiT (224/16 -> 197, 224/32 -> 50, 384/16 -> 577), MobileViT, CIFAR ViTs.
TOKEN_SHAPES = [
    (197, 192, 3), (197, 384, 6), (197, 768, 12), (50, 768, 12), (50, 384, 6), (577, 384, 6),
    (196, 192, 3), (196, 384, 6), (65, 192, 3), (65, 384, 6), (257, 192, 3), (256, 96, 4),
    (64, 144, 4), (16, 192, 4), (256, 144, 4), (64, 192, 4), (16, 240, 4), (1024, 64, 2),
    (49, 256, 8), (49, 512, 16), (785, 384, 6), (197, 256, 8), (17, 192, 4), (50, 192, 3),
]
MLP_RATIOS = [2.0, 3.0, 4.0]
ACT_PRIOR = (["relu", "relu6", "hardswish", "silu", "none", "gelu", "sigmoid", "leakyrelu", "mish", "prelu",
              "tanh", "hardsigmoid"],
             [0.28, 0.12, 0.13, 0.14, 0.14, 0.04, 0.03, 0.06, 0.025, 0.015, 0.01, 0.01])
BLOCK_ACTS = (["relu", "relu6", "hardswish", "silu"], [0.35, 0.2, 0.25, 0.2])


def _choice(rng, seq, p=None):
    return seq[int(rng.choice(len(seq), p=p))]


def _loguniform_int(rng, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def _channels(rng, lo=8, hi=2048) -> int:
    c = _loguniform_int(rng, lo, hi)
    return max(lo, int(round(c / 8)) * 8) if rng.random() < 0.8 else c


def _res(rng, lo=7, hi=224) -> int:
    return _loguniform_int(rng, lo, hi)


def _cnn_shape(rng, uniform: bool) -> tuple[int, int]:
    if uniform:
        return _channels(rng), _res(rng)
    c, r = _choice(rng, CNN_SHAPES)
    return (c if c > 3 else 16), r


def _token_shape(rng, uniform: bool) -> tuple[int, int, int]:
    if uniform:
        heads = int(_choice(rng, [1, 2, 3, 4, 6, 8, 12, 16]))
        dim = heads * int(_choice(rng, [16, 32, 48, 64, 80, 96]))
        return _loguniform_int(rng, 4, 1024), dim, heads
    return _choice(rng, TOKEN_SHAPES)


def _act(rng) -> str:
    return _choice(rng, *ACT_PRIOR)


# ---- one draw per kind ---------------------------------------------------------------
def _conv(rng, u):
    c, r = _cnn_shape(rng, u)
    style = _choice(rng, ["pointwise", "depthwise", "full", "grouped", "stem", "asymmetric", "dilated"],
                    p=[0.28, 0.24, 0.21, 0.11, 0.06, 0.04, 0.06])
    act, bn = _act(rng), bool(rng.random() < 0.9)
    if style == "asymmetric":  # Inception's 1x7 / 7x1 factorised convs
        k = int(_choice(rng, [3, 5, 7, 7]))
        kh, kw = (1, k) if rng.random() < 0.5 else (k, 1)
        cout = _channels(rng) if u else int(c * _choice(rng, [0.5, 1, 1]))
        return dict(cin=c, cout=max(8, cout), h=r, w=r, kernel=kh, kernel_w=kw, stride=1, act=act, bn=bn)
    if style == "dilated":  # DeepLab's atrous convs, dilated depthwise convs
        d = int(_choice(rng, [2, 2, 3, 4, 6, 12]))
        if rng.random() < 0.5:  # ASPP: dilation at or beyond the map, most taps in the padding
            return _aspp_conv(rng, u, act, bn)
        if rng.random() < 0.3:
            return dict(cin=c, cout=c, h=r, w=r, kernel=3, stride=1, groups=c, dilation=d, act=act, bn=bn)
        return dict(cin=c, cout=_channels(rng) if u else c, h=r, w=r, kernel=3, stride=1, dilation=d, act=act, bn=bn)
    if style == "stem":
        r = _choice(rng, [224, 192, 160, 128, 112, 96, 64, 32]) if not u else _res(rng, 16, 224)
        return dict(cin=3, cout=int(_choice(rng, [16, 24, 32, 48, 64])), h=r, w=r,
                    kernel=int(_choice(rng, [3, 3, 5, 7])), stride=int(_choice(rng, [1, 2, 2])), act=act, bn=bn)
    if style == "pointwise":
        cout = _channels(rng) if u else max(8, int(c * _choice(rng, [0.25, 1 / 6, 0.5, 1, 2, 4, 6])) // 8 * 8)
        return dict(cin=c, cout=cout, h=r, w=r, kernel=1, stride=1, act=act, bn=bn)
    if style == "depthwise":  # 1x1 depthwise: MobileOne's training-time branches
        return dict(cin=c, cout=c, h=r, w=r, kernel=int(_choice(rng, [1, 3, 3, 5, 7])),
                    stride=int(_choice(rng, [1, 1, 2])), groups=c, act=act, bn=bn)
    if style == "grouped":
        if rng.random() < 0.6:
            # RegNet/ResNeXt fix the group *width*, so group counts are odd numbers like 7 or 13
            # and channels are multiples of that width; mostly 3x3, stride 1, cin == cout.
            width = int(_choice(rng, [8, 8, 16, 16, 24, 32, 48, 64]))
            c = max(width, int(round(c / width)) * width)
            return dict(cin=c, cout=c, h=r, w=r, kernel=3, stride=int(_choice(rng, [1, 1, 1, 2])),
                        groups=c // width, act=act, bn=bn)
        g = int(_choice(rng, [2, 4, 8, 16, 32]))
        c = max(g, c // g * g)
        cout = max(g, (c * int(_choice(rng, [1, 2]))) // g * g)
        return dict(cin=c, cout=cout, h=r, w=r, kernel=int(_choice(rng, [1, 3])), stride=int(_choice(rng, [1, 2])),
                    groups=g, act=act, bn=bn)
    cout = _channels(rng) if u else int(c * _choice(rng, [1, 1, 2]))
    return dict(cin=c, cout=cout, h=r, w=r, kernel=int(_choice(rng, [1, 3, 3, 3, 5, 7])),
                stride=int(_choice(rng, [1, 1, 2])), act=act, bn=bn)


# (channels in, map size, dilations) of DeepLab ASPP heads: output stride 16 and 8 on 224-513 inputs
ASPP_SHAPES = [(960, 14, (12, 24, 36)), (2048, 14, (6, 12, 18)), (2048, 28, (12, 24, 36)), (320, 14, (6, 12, 18)),
               (512, 33, (6, 12, 18)), (2048, 33, (6, 12, 18)), (256, 65, (12, 24, 36)), (960, 7, (12, 24, 36))]


def _aspp_conv(rng, u, act, bn):
    """A 3x3 conv dilated by 0.5-3x its map size (most taps, or all but the centre one, in the padding)."""
    if u:
        cin, r = _channels(rng, 32, 2048), _res(rng, 5, 65)
        d = max(2, int(round(r * math.exp(rng.uniform(math.log(0.5), math.log(3.0))))))
    else:
        cin, r, ds = _choice(rng, ASPP_SHAPES)
        d = int(_choice(rng, list(ds)))
    cout = int(_choice(rng, [128, 256, 256, 512])) if not u else _channels(rng, 32, 512)
    # the caps count every tap, the padding's too: fewer output channels keep a wide map under MAX_FLOPS
    cout = max(8, min(cout, int(0.9 * MAX_FLOPS / (18.0 * r * r * cin)) // 8 * 8))
    if rng.random() < 0.2:  # dilated depthwise (DeepLab's separable ASPP)
        return dict(cin=cin, cout=cin, h=r, w=r, kernel=3, stride=1, groups=cin, dilation=d, act=act, bn=bn)
    return dict(cin=cin, cout=cout, h=r, w=r, kernel=3, stride=1, dilation=d, act=act, bn=bn)


def _dw_conv_add(rng, u):
    """A depthwise conv + residual: MobileOne / FastViT training-time branches (dw 1x1, 3x3, 7x7)."""
    c, r = _cnn_shape(rng, u)
    return dict(cin=c, cout=c, h=r, w=r, kernel=int(_choice(rng, [1, 1, 3, 3, 3, 5, 7])),
                    stride=int(_choice(rng, [1, 1, 1, 2])), groups=c,
                    act=_choice(rng, ["none", "none", "relu", "gelu"]), bn=bool(rng.random() < 0.8))


def _conv_add(rng, u):
    if rng.random() < 0.3:
        return _dw_conv_add(rng, u)
    c, r = _cnn_shape(rng, u)
    if rng.random() < 0.6:  # MBConv projection: 1x1, no activation
        cin = _channels(rng) if u else int(c * _choice(rng, [3, 4, 6]))
        return dict(cin=cin, cout=c, h=r, w=r, kernel=1, stride=1, act="none", bn=True)
    return dict(cin=c, cout=c, h=r, w=r, kernel=int(_choice(rng, [1, 3])), stride=1,
                act=_choice(rng, ["relu", "relu", "none", "silu", "relu6"]), bn=True)


def _linear(rng, u):
    if rng.random() < 0.25:  # classifier / SE-FC on a vector
        cin = _channels(rng, 16, 2048) if u else int(_choice(rng, [256, 512, 576, 960, 1024, 1280, 2048]))
        cout = _channels(rng, 8, 2048) if u else int(_choice(rng, [10, 100, 1000, 1024, 1280]))
        return dict(tokens=1, cin=cin, cout=cout, act=_choice(rng, ["none", "none", "relu", "hardswish"]))
    t, d, _ = _token_shape(rng, u)
    which = _choice(rng, ["qkv", "proj", "fc1", "fc2"])
    ratio = float(_choice(rng, MLP_RATIOS))
    cin, cout, act = {"qkv": (d, 3 * d, "none"), "proj": (d, d, "none"),
                      "fc1": (d, int(d * ratio), "gelu"), "fc2": (int(d * ratio), d, "none")}[which]
    if u and rng.random() < 0.5:
        cout = _channels(rng, 16, 3072)
    return dict(tokens=t, cin=cin, cout=cout, act=act)


def gemv_beyond_cache(rng: np.random.Generator, llc_bytes: float | None = None) -> dict[str, Any]:
    """A `linear` on 1-4 rows whose fp32 weights weigh `BEYOND_LLC` times the last-level cache
    (AlexNet's 9216x4096 classifier is 151 MB): it streams its weights from memory on every run."""
    llc = float(llc_bytes or DEFAULT_LLC_BYTES)
    nbytes = llc * math.exp(rng.uniform(math.log(BEYOND_LLC[0]), math.log(BEYOND_LLC[1])))
    params = nbytes / 4.0
    cin = int(_choice(rng, [1024, 2048, 4096, 4096, 9216, 25088]))
    cout = max(8, int(round(params / cin / 8)) * 8)
    return dict(tokens=int(_choice(rng, [1, 1, 1, 2, 4])), cin=cin, cout=cout,
                act=_choice(rng, ["none", "relu", "relu"]))


def max_params(spec: KernelSpec | None, llc_bytes: float | None = None) -> float:
    """The weights a configuration may have: `MAX_PARAMS`, or for a `linear` enough to reach
    `BEYOND_LLC`'s upper end on the device's cache."""
    if spec is not None and spec.kind == "linear":
        return max(MAX_PARAMS, BEYOND_LLC[1] * float(llc_bytes or DEFAULT_LLC_BYTES) / 4.0 * 1.05)
    return MAX_PARAMS


def _matmul(rng, u):
    t, d, h = _token_shape(rng, u)
    hd = d // h
    if rng.random() < 0.5:
        return dict(heads=h, m=t, k=hd, n=t)  # Q @ K^T
    return dict(heads=h, m=t, k=t, n=hd)      # A @ V


def _softmax(rng, u):
    t, _, h = _token_shape(rng, u)
    return dict(heads=h, m=t, n=t)


def _layernorm(rng, u):
    t, d, _ = _token_shape(rng, u)
    return dict(tokens=t, dim=d)


def _pool(rng, u):
    c, r = _cnn_shape(rng, u)
    op, k, s = _choice(rng, [("max", 3, 2), ("max", 2, 2), ("avg", 2, 2), ("avg", 3, 1), ("max", 3, 1), ("avg", 3, 2)])
    return dict(op=op, c=c, h=r, w=r, kernel=k, stride=s)


def _global_pool(rng, u):
    c, r = _cnn_shape(rng, u)
    return dict(op="avg" if rng.random() < 0.85 else "max", c=c, h=r, w=r)


def _elementwise(rng, u):
    if rng.random() < 0.2:  # token residual [1, T, D] -> c=T, h=1, w=D
        t, d, _ = _token_shape(rng, u)
        return dict(op="add", c=t, h=1, w=d, broadcast=False)
    c, r = _cnn_shape(rng, u)
    if rng.random() < 0.4:
        return dict(op="mul", c=c, h=r, w=r, broadcast=True)  # SE scaling
    return dict(op=_choice(rng, ["add", "add", "mul"]), c=c, h=r, w=r, broadcast=False)


def _activation(rng, u):
    c, r = _cnn_shape(rng, u)
    return dict(act=_choice(rng, [a for a in ACTIVATIONS if a != "none"]), c=c, h=r, w=r)


def _concat(rng, u):
    c, r = _cnn_shape(rng, u)
    n = int(_choice(rng, [2, 2, 2, 3, 4]))  # 3-4: CSP/ELAN stages, Inception branches, SPPF
    c2 = _channels(rng) if u else int(c * _choice(rng, [0.5, 1, 1, 2]) * (n - 1))
    return dict(c1=c, c2=max(8 * (n - 1), c2), h=r, w=r, n=n)


def _conv_transpose(rng, u):
    c, r = _cnn_shape(rng, u)
    r = min(r, 56)
    k, s = _choice(rng, [(2, 2), (2, 2), (4, 2), (3, 2), (4, 4)])
    cout = _channels(rng, 8, 512) if u else max(8, int(c * _choice(rng, [0.5, 0.5, 1])))
    return dict(cin=c, cout=cout, h=r, w=r, kernel=k, stride=s, bn=bool(rng.random() < 0.5),
                act=_choice(rng, ["none", "relu", "relu", "silu", "leakyrelu"]))


def _split(rng, u):
    c, r, parts = _divisible_channels(rng, u, [2, 2, 2, 3, 4])
    return dict(c=c, h=r, w=r, parts=parts)


def _slice(rng, u):
    c, r = _cnn_shape(rng, u)
    return dict(c=c, h=r, w=r, cout=max(1, int(c * _choice(rng, [0.25, 0.5, 0.5, 0.75]))))


def _pad(rng, u):
    c, r = _cnn_shape(rng, u)
    return dict(c=c, h=r, w=r, pad=int(_choice(rng, [1, 1, 2, 3])),
                mode=_choice(rng, ["constant", "constant", "reflect", "edge"]))


def _reduce(rng, u):
    if rng.random() < 0.3:  # tokens [1, T, D]: c=T, h=1, w=D
        t, d, _ = _token_shape(rng, u)
        return dict(op=_choice(rng, ["mean", "l2", "sum"]), c=t, h=1, w=d, axis="last")
    c, r = _cnn_shape(rng, u)
    return dict(op=_choice(rng, ["l2", "l2", "mean", "sum", "max"]), c=c, h=r, w=r,
                axis=_choice(rng, ["c", "c", "hw"]))


def _groupnorm(rng, u):
    c, r = _cnn_shape(rng, u)
    groups = int(_choice(rng, [1, 8, 16, 32, 32, 0]))
    groups = c if groups == 0 else groups  # 0: InstanceNorm
    return dict(c=max(groups, c // groups * groups), h=r, w=r, groups=groups)


def _einsum(rng, u):
    t, d, h = _token_shape(rng, u)
    return dict(heads=h, m=t, k=d // h, n=t)


def _reshape(rng, u):
    c, r = _cnn_shape(rng, u)
    return dict(c=c, h=r, w=r)


def _divisible_channels(rng, u, counts) -> tuple[int, int, int]:
    """(channels, resolution, n) with the channels a multiple of n, n drawn from `counts`."""
    c, r = _cnn_shape(rng, u)
    n = int(_choice(rng, counts))
    return max(n, c // n * n), r, n


def _channel_shuffle(rng, u):
    c, r, g = _divisible_channels(rng, u, [2, 2, 3, 4, 8])
    return dict(c=c, h=r, w=r, groups=g)


def _resize(rng, u):
    c, r = _cnn_shape(rng, u)
    r = min(r, 112)
    return dict(c=c, h=r, w=r, scale=int(_choice(rng, [2, 2, 2, 4])), mode=_choice(rng, ["nearest", "linear"]))


def _mbconv(rng, u):
    c, r = _cnn_shape(rng, u)
    if not u:
        c = min(c, 320)
    stride = int(_choice(rng, [1, 1, 2]))
    cout = c if stride == 1 and rng.random() < 0.7 else (_channels(rng, 8, 512) if u else max(8, int(c * _choice(rng, [1.2, 1.5, 2])) // 8 * 8))
    return dict(cin=c, cout=cout, h=r, w=r, expand=float(_choice(rng, [1, 3, 4, 6] if not u else [1, 2, 3, 4, 5, 6])),
                kernel=int(_choice(rng, [3, 5, 7])), stride=stride, se=bool(rng.random() < 0.35),
                act=_choice(rng, *BLOCK_ACTS))


def _resnet_basic(rng, u):
    if u:
        c, r = _channels(rng, 8, 512), _res(rng, 7, 112)
    else:
        c, r = _choice(rng, [(64, 56), (128, 28), (256, 14), (512, 7), (16, 32), (32, 16), (64, 8), (32, 32), (64, 32)])
    if rng.random() < 0.3:
        return dict(cin=c, cout=c * 2 if not u else _channels(rng, 8, 512), h=r, w=r, stride=2)
    return dict(cin=c, cout=c, h=r, w=r, stride=1)


def _resnet_bottleneck(rng, u):
    if u:
        cin, r = _channels(rng, 16, 2048), _res(rng, 7, 112)
        cout = _channels(rng, 16, 2048)
        mid = max(8, cout // 4)
    else:
        cout, r = _choice(rng, [(256, 56), (512, 28), (1024, 14), (2048, 7), (64, 32), (128, 16), (256, 8)])
        mid = cout // 4
        cin = cout if rng.random() < 0.7 else cout // 2
    groups = int(_choice(rng, [1, 1, 1, 8, 32]))
    if groups > 1:
        mid = max(groups, mid * 2 // groups * groups)
    stride = 2 if (cin != cout and rng.random() < 0.5) else 1
    return dict(cin=cin, mid=mid, cout=cout, h=r, w=r, stride=stride, groups=groups)


def _se(rng, u):
    c, r = _cnn_shape(rng, u)
    return dict(c=c, h=r, w=r, reduction=int(_choice(rng, [4, 4, 8, 16])))


def _transformer(rng, u):
    t, d, h = _token_shape(rng, u)
    return dict(tokens=t, dim=d, heads=h, mlp_ratio=float(_choice(rng, MLP_RATIOS)))


# Draws of the configurations the generator long missed, by name: `profile-device --focus` measures
# only these (a supplement to a table), name -> (kind, draw(rng, uniform, llc_bytes)).
FOCUS_DRAWS: dict[str, tuple[str, Callable[[np.random.Generator, bool, float | None], dict[str, Any]]]] = {
    "dilation-beyond-map": ("conv", lambda rng, u, llc: _aspp_conv(rng, u, _act(rng), bool(rng.random() < 0.9))),
    "gemv-beyond-llc": ("linear", lambda rng, u, llc: gemv_beyond_cache(rng, llc)),
    "depthwise-conv-add": ("conv_add", lambda rng, u, llc: _dw_conv_add(rng, u)),
}

DRAWS: dict[str, Callable[[np.random.Generator, bool], dict[str, Any]]] = {
    "conv": _conv, "conv_add": _conv_add, "linear": _linear, "matmul": _matmul, "softmax": _softmax,
    "layernorm": _layernorm, "pool": _pool, "global_pool": _global_pool, "elementwise": _elementwise,
    "activation": _activation, "concat": _concat, "reshape": _reshape, "transpose": _reshape,
    "channel_shuffle": _channel_shuffle, "resize": _resize, "mbconv": _mbconv, "resnet_basic": _resnet_basic,
    "resnet_bottleneck": _resnet_bottleneck, "se": _se, "transformer": _transformer,
    "conv_transpose": _conv_transpose, "split": _split, "slice": _slice, "pad": _pad, "reduce": _reduce,
    "groupnorm": _groupnorm, "einsum": _einsum,
}
assert set(DRAWS) == set(KINDS)


# ---- cost control ------------------------------------------------------------------
def cost_ok(stats: ModelStats, act_bytes: float = 0.0, spec: KernelSpec | None = None,
            llc_bytes: float | None = None) -> bool:
    if spec is not None and spec.params.get("groups", 1) > 1 and stats.flops > MAX_GROUPED_FLOPS:
        return False  # depthwise/grouped convs run at a few GFLOP/s: cap them lower
    cap = max_params(spec, llc_bytes)
    return (stats.flops <= MAX_FLOPS and stats.params <= cap and act_bytes <= MAX_ACT_BYTES
            and stats.bytes <= max(MAX_BYTES, 4.0 * cap * 1.1))


def activation_bytes(model) -> float:
    """Bytes of the graph's inputs and outputs (fp32)."""
    total = 0.0
    inits = {t.name for t in model.graph.initializer}
    for v in list(model.graph.input) + list(model.graph.output):
        if v.name not in inits:
            total += 4.0 * float(np.prod([d.dim_value for d in v.type.tensor_type.shape.dim]))
    return total


def prepare(spec: KernelSpec, batch: int = 1, opset: int | None = None, llc_bytes: float | None = None):
    """(model, stats) of a spec, or None when it is invalid or over the cost caps (`llc_bytes`:
    the device's last-level cache, which sets the weight cap of a `linear`)."""
    try:
        model = build_model(spec, batch) if opset is None else build_model(spec, batch, opset)
    except KernelSpecError:
        return None
    stats = model_stats(model)
    if not cost_ok(stats, activation_bytes(model), spec, llc_bytes):
        return None
    return model, stats


def focus_kinds(focus: list[str] | tuple[str, ...]) -> list[str]:
    """The kinds of `FOCUS_DRAWS` names (validated)."""
    bad = [f for f in focus if f not in FOCUS_DRAWS]
    if bad:
        raise KernelSpecError(f"unknown focus {', '.join(bad)}; valid: {', '.join(FOCUS_DRAWS)}")
    return list(dict.fromkeys(FOCUS_DRAWS[f][0] for f in focus))


def sample_spec(rng: np.random.Generator, kind: str, uniform: bool | None = None,
                llc_bytes: float | None = None, focus: list[str] | tuple[str, ...] | None = None) -> KernelSpec:
    """One configuration of `kind` (valid, not yet cost-checked); `llc_bytes` is the device's
    last-level cache (default `DEFAULT_LLC_BYTES`), which `linear` draws reach beyond; `focus`
    (`FOCUS_DRAWS` names) restricts the draw to those of them that are of `kind`."""
    if kind not in DRAWS:
        raise KernelSpecError(f"unknown kernel kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    u = bool(rng.random() < UNIFORM_SHARE) if uniform is None else uniform
    focused = [FOCUS_DRAWS[f][1] for f in (focus or ()) if FOCUS_DRAWS[f][0] == kind]
    for _ in range(50):
        try:
            if focused:
                return KernelSpec.make(kind, **_choice(rng, focused)(rng, u, llc_bytes))
            if kind == "linear" and rng.random() < BEYOND_LLC_SHARE:
                return KernelSpec.make(kind, **gemv_beyond_cache(rng, llc_bytes))
            return KernelSpec.make(kind, **DRAWS[kind](rng, u))
        except (KernelSpecError, ValueError, ZeroDivisionError):
            continue
    raise RuntimeError(f"could not draw a valid {kind} configuration")


def kind_weights(kinds: list[str]) -> np.ndarray:
    w = np.array([KIND_WEIGHTS.get(k, 0.03) for k in kinds], dtype=float)
    return w / w.sum()


# ---- adaptive refinement ------------------------------------------------------------
_DISCRETE = {"kernel": [1, 3, 5, 7], "kernel_w": [1, 3, 5, 7], "dilation": [1, 2, 4], "parts": [2, 3, 4],
             "pad": [1, 2, 3], "n": [2, 3, 4], "stride": [1, 2], "heads": [1, 2, 3, 4, 6, 8, 12, 16],
             "scale": [2, 4], "expand": [1.0, 2.0, 3.0, 4.0, 6.0], "mlp_ratio": [2.0, 3.0, 4.0],
             "reduction": [4, 8, 16]}


def _features(df, kind: str) -> tuple[np.ndarray, list[str]]:
    params = list(KINDS[kind].params)
    cols = []
    names = []
    for p in params:
        col = df[p]
        typ = KINDS[kind].params[p]
        if typ is str:
            cats = sorted(set(col.dropna().astype(str)))
            cols.append(col.astype(str).map({c: i for i, c in enumerate(cats)}).to_numpy(dtype=float))
        elif typ is bool:
            cols.append(col.astype(float).to_numpy())
        else:
            cols.append(np.log1p(col.astype(float).to_numpy()))
        names.append(p)
    for c in ("flops", "params", "bytes"):
        cols.append(np.log1p(df[c].astype(float).to_numpy()))
        names.append("log_" + c)
    return np.column_stack(cols), names


def worst_predicted(df, kind: str, top: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows of `kind` whose latency a 3-fold cross-validated LightGBM predicts worst."""
    # lazy: loads lightgbm and sklearn (slow to import) only when this runs
    import lightgbm as lgb
    from sklearn.model_selection import KFold

    sub = df[(df["kind"] == kind) & (df["median_ms"] > 0)].reset_index(drop=True)
    if len(sub) < 24:
        return []
    X, _ = _features(sub, kind)
    y = np.log(sub["median_ms"].to_numpy(dtype=float))
    oof = np.zeros(len(y))
    for train, test in KFold(3, shuffle=True, random_state=seed).split(X):
        model = lgb.LGBMRegressor(n_estimators=80, learning_rate=0.1, num_leaves=15, min_child_samples=3,
                                  num_threads=1, verbose=-1, random_state=seed)
        model.fit(X[train], y[train])
        oof[test] = model.predict(X[test])
    err = np.abs(oof - y)
    order = np.argsort(-err)[:top]
    return [sub.iloc[i].to_dict() for i in order]


def _repair(kind: str, p: dict[str, Any], depthwise: bool) -> dict[str, Any]:
    if kind in ("conv", "conv_add"):
        if depthwise:
            p["cout"] = p["groups"] = p["cin"]
        else:
            g = max(1, int(p.get("groups", 1)))
            p["cin"], p["cout"] = max(g, p["cin"] // g * g), max(g, p["cout"] // g * g)
    if kind in ("channel_shuffle", "groupnorm"):
        p["c"] = max(p["groups"], p["c"] // p["groups"] * p["groups"])
    if kind == "split":
        p["c"] = max(p["parts"], p["c"] // p["parts"] * p["parts"])
    if kind == "slice":
        p["cout"] = min(p["cout"], p["c"])
    if kind == "resnet_bottleneck":
        p["mid"] = max(p["groups"], p["mid"] // p["groups"] * p["groups"])
    if kind == "transformer" or kind == "matmul" or kind == "softmax":
        if kind == "transformer":
            p["dim"] = max(p["heads"], p["dim"] // p["heads"] * p["heads"])
    if kind == "pool" and p["kernel"] not in (2, 3):
        p["kernel"] = 3
    return p


def neighbour(rng: np.random.Generator, row: dict[str, Any], kind: str) -> KernelSpec | None:
    """A configuration near `row`: sizes scaled by up to about 1.5x, sometimes a new discrete value."""
    schema = KINDS[kind]
    p = {k: row[k] for k in schema.params}
    depthwise = kind in ("conv", "conv_add") and p["groups"] == p["cin"] == p["cout"] and p["groups"] > 1
    for name, typ in schema.params.items():
        v = p[name]
        if name in _DISCRETE:
            if rng.random() < 0.25:
                p[name] = _choice(rng, _DISCRETE[name])
        elif typ is int and name != "groups":
            if rng.random() < 0.7:
                f = math.exp(rng.uniform(-0.4, 0.4))
                nv = max(1, int(round(float(v) * f)))
                if v % 8 == 0 and nv > 8:
                    nv = int(round(nv / 8)) * 8
                p[name] = nv
        elif typ is str and name in ("act",) and rng.random() < 0.2:
            p[name] = _choice(rng, *ACT_PRIOR) if kind not in ("mbconv",) else _choice(rng, *BLOCK_ACTS)
        elif typ is bool and rng.random() < 0.15:
            p[name] = not bool(v)
    if "h" in p and "w" in p and row["h"] == row["w"]:
        p["w"] = p["h"]  # keep square inputs square
    p = _repair(kind, p, depthwise)
    try:
        return KernelSpec.make(kind, **p)
    except (KernelSpecError, ValueError):
        return None


def refine(df, kind: str, rng: np.random.Generator, n: int, seed: int = 0) -> list[KernelSpec]:
    """Up to `n` new configurations of `kind` near its worst-predicted measured points."""
    worst = worst_predicted(df, kind, top=max(3, n // 3), seed=seed)
    out: list[KernelSpec] = []
    if not worst:
        return out
    for _ in range(n * 4):
        if len(out) >= n:
            break
        s = neighbour(rng, worst[int(rng.integers(len(worst)))], kind)
        if s is not None:
            out.append(s)
    return out


__all__ = ["sample_spec", "refine", "worst_predicted", "neighbour", "prepare", "cost_ok", "kind_weights", "max_params",
           "gemv_beyond_cache", "focus_kinds", "FOCUS_DRAWS", "KIND_WEIGHTS", "UNIFORM_SHARE", "MAX_FLOPS", "MAX_PARAMS", "CNN_SHAPES", "TOKEN_SHAPES",
           "ASPP_SHAPES", "DEFAULT_LLC_BYTES", "BEYOND_LLC", "BEYOND_LLC_SHARE"]
