"""Reference architectures in plain torch (no torchvision) for the predictor benchmark.

Families: resnet (18/34/50), mobilenetv2, mobilenetv3 (small/large), efficientnet (B0-like),
shufflenetv2, densenet (121-like), regnet (X and Y), vit, deit (tiny/small, class + distillation
tokens), convnext (T-like); each at a few widths, depths and resolutions (96-224) so every
family has at least 3 members, each under ~150 ms on one CPU thread.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def cbr(cin, cout, k=3, s=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, c, s):
        super().__init__()
        self.a, self.b = cbr(cin, c, 3, s), cbr(c, c, 3, 1, act=None)
        self.sc = cbr(cin, c, 1, s, act=None) if s != 1 or cin != c else nn.Identity()

    def forward(self, x):
        return torch.relu(self.b(self.a(x)) + self.sc(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, c, s):
        super().__init__()
        self.a, self.b, self.c = cbr(cin, c, 1), cbr(c, c, 3, s), cbr(c, 4 * c, 1, act=None)
        self.sc = cbr(cin, 4 * c, 1, s, act=None) if s != 1 or cin != 4 * c else nn.Identity()

    def forward(self, x):
        return torch.relu(self.c(self.b(self.a(x))) + self.sc(x))


class ResNet(nn.Module):
    def __init__(self, block, layers, width=64, classes=1000):
        super().__init__()
        self.stem = nn.Sequential(cbr(3, width, 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], width
        for i, n in enumerate(layers):
            c = width * 2 ** i
            for j in range(n):
                blocks.append(block(cin, c, 2 if j == 0 and i > 0 else 1))
                cin = c * block.expansion
        self.body = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


class InvRes(nn.Module):
    def __init__(self, cin, cout, s, e):
        super().__init__()
        mid = cin * e
        layers = ([cbr(cin, mid, 1, act=nn.ReLU6)] if e != 1 else []) + [
            cbr(mid, mid, 3, s, groups=mid, act=nn.ReLU6), cbr(mid, cout, 1, act=None)]
        self.f = nn.Sequential(*layers)
        self.res = s == 1 and cin == cout

    def forward(self, x):
        return x + self.f(x) if self.res else self.f(x)


class MobileNetV2(nn.Module):
    CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, width=1.0, classes=1000):
        super().__init__()
        d = lambda c: max(8, int(c * width + 4) // 8 * 8)  # noqa: E731
        layers, cin = [cbr(3, d(32), 3, 2, act=nn.ReLU6)], d(32)
        for e, c, n, s in self.CFG:
            for i in range(n):
                layers.append(InvRes(cin, d(c), s if i == 0 else 1, e))
                cin = d(c)
        layers.append(cbr(cin, 1280, 1, act=nn.ReLU6))
        self.f = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, classes)

    def forward(self, x):
        return self.fc(self.f(x).mean((2, 3)))


class ViT(nn.Module):
    def __init__(self, dim=192, depth=12, heads=3, patch=16, res=224, classes=1000):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, (res // patch) ** 2, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.enc = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        # TransformerEncoder deep-copies one layer, and the exporter then stores the identical
        # weights once: a 12-layer ViT ran on 3 MB of weights that stay in cache (7% faster than
        # the same ViT with its own weights per layer, as a trained one has). Fresh ones per layer.
        for m in self.enc.modules():
            if isinstance(m, nn.MultiheadAttention):
                m._reset_parameters()
            elif isinstance(m, (nn.Linear, nn.LayerNorm)):
                m.reset_parameters()
        self.norm, self.fc = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.fc(self.norm(self.enc(t)).mean(1))


def _div(c, d=8):
    return max(d, int(c + d / 2) // d * d)


class SE(nn.Module):
    def __init__(self, c, mid, gate=nn.Hardsigmoid, act=nn.ReLU):
        super().__init__()
        self.f = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, mid, 1), act(), nn.Conv2d(mid, c, 1), gate())

    def forward(self, x):
        return x * self.f(x)


class MBConv(nn.Module):
    """Inverted residual with optional SE (MobileNetV3, EfficientNet)."""

    def __init__(self, cin, mid, cout, k, s, se, act, se_gate=nn.Hardsigmoid, se_mid=None):
        super().__init__()
        layers = [cbr(cin, mid, 1, act=act)] if mid != cin else []
        layers.append(cbr(mid, mid, k, s, groups=mid, act=act))
        if se:
            layers.append(SE(mid, se_mid or _div(mid // 4), se_gate, nn.ReLU if se_gate is nn.Hardsigmoid else nn.SiLU))
        layers.append(cbr(mid, cout, 1, act=None))
        self.f = nn.Sequential(*layers)
        self.res = s == 1 and cin == cout

    def forward(self, x):
        return x + self.f(x) if self.res else self.f(x)


class MobileNetV3(nn.Module):
    # k, exp, out, se, act(HS=1), stride
    LARGE = [(3, 16, 16, 0, 0, 1), (3, 64, 24, 0, 0, 2), (3, 72, 24, 0, 0, 1), (5, 72, 40, 1, 0, 2), (5, 120, 40, 1, 0, 1),
             (5, 120, 40, 1, 0, 1), (3, 240, 80, 0, 1, 2), (3, 200, 80, 0, 1, 1), (3, 184, 80, 0, 1, 1),
             (3, 184, 80, 0, 1, 1), (3, 480, 112, 1, 1, 1), (3, 672, 112, 1, 1, 1), (5, 672, 160, 1, 1, 2),
             (5, 960, 160, 1, 1, 1), (5, 960, 160, 1, 1, 1)]
    SMALL = [(3, 16, 16, 1, 0, 2), (3, 72, 24, 0, 0, 2), (3, 88, 24, 0, 0, 1), (5, 96, 40, 1, 1, 2), (5, 240, 40, 1, 1, 1),
             (5, 240, 40, 1, 1, 1), (5, 120, 48, 1, 1, 1), (5, 144, 48, 1, 1, 1), (5, 288, 96, 1, 1, 2),
             (5, 576, 96, 1, 1, 1), (5, 576, 96, 1, 1, 1)]

    def __init__(self, mode="large", width=1.0, classes=1000):
        super().__init__()
        cfg = self.LARGE if mode == "large" else self.SMALL
        cin = _div(16 * width)
        layers = [cbr(3, cin, 3, 2, act=nn.Hardswish)]
        for k, e, c, se, hs, st in cfg:
            mid, cout = _div(e * width), _div(c * width)
            layers.append(MBConv(cin, mid, cout, k, st, se, nn.Hardswish if hs else nn.ReLU))
            cin = cout
        last = _div(cin * 6)
        layers.append(cbr(cin, last, 1, act=nn.Hardswish))
        self.f = nn.Sequential(*layers)
        head = 1280 if mode == "large" else 1024
        self.head = nn.Sequential(nn.Linear(last, head), nn.Hardswish(), nn.Linear(head, classes))

    def forward(self, x):
        return self.head(self.f(x).mean((2, 3)))


class EfficientNet(nn.Module):
    # expand, k, stride, out, repeats (B0)
    CFG = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
           (6, 3, 1, 320, 1)]

    def __init__(self, width=1.0, depth=1.0, classes=1000):
        super().__init__()
        import math
        cin = _div(32 * width)
        layers = [cbr(3, cin, 3, 2, act=nn.SiLU)]
        for e, k, s, c, n in self.CFG:
            cout = _div(c * width)
            for i in range(int(math.ceil(n * depth))):
                layers.append(MBConv(cin, cin * e, cout, k, s if i == 0 else 1, True, nn.SiLU, nn.Sigmoid,
                                     max(1, cin // 4)))
                cin = cout
        last = _div(1280 * max(1.0, width))
        layers.append(cbr(cin, last, 1, act=nn.SiLU))
        self.f = nn.Sequential(*layers)
        self.fc = nn.Linear(last, classes)

    def forward(self, x):
        return self.fc(self.f(x).mean((2, 3)))


def _shuffle(x, g=2):
    b, c, h, w = x.shape
    return x.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin, cout, s):
        super().__init__()
        self.s = s
        c = cout // 2
        if s == 2:
            self.left = nn.Sequential(cbr(cin, cin, 3, 2, groups=cin, act=None), cbr(cin, c, 1))
            rin = cin
        else:
            rin = c
        self.right = nn.Sequential(cbr(rin, c, 1), cbr(c, c, 3, s, groups=c, act=None), cbr(c, c, 1))

    def forward(self, x):
        if self.s == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        return _shuffle(out)


class ShuffleNetV2(nn.Module):
    WIDTHS = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024), 1.5: (176, 352, 704, 1024), 2.0: (244, 488, 976, 2048)}

    def __init__(self, width=1.0, classes=1000):
        super().__init__()
        ws = self.WIDTHS[width]
        layers = [cbr(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
        cin = 24
        for c, n in zip(ws[:3], (4, 8, 4)):
            for i in range(n):
                layers.append(ShuffleUnit(cin, c, 2 if i == 0 else 1))
                cin = c
        layers.append(cbr(cin, ws[3], 1))
        self.f = nn.Sequential(*layers)
        self.fc = nn.Linear(ws[3], classes)

    def forward(self, x):
        return self.fc(self.f(x).mean((2, 3)))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        # conv -> BN -> ReLU ordering (post-activation) so that ORT fuses each conv
        self.f = nn.Sequential(cbr(cin, 4 * growth, 1), cbr(4 * growth, growth, 3))

    def forward(self, x):
        return torch.cat([x, self.f(x)], 1)


class DenseNet(nn.Module):
    def __init__(self, blocks=(6, 12, 24, 16), growth=32, stem=64, classes=1000):
        super().__init__()
        layers = [cbr(3, stem, 7, 2), nn.MaxPool2d(3, 2, 1)]
        c = stem
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i < len(blocks) - 1:
                layers += [cbr(c, c // 2, 1), nn.AvgPool2d(2, 2)]
                c //= 2
        self.f = nn.Sequential(*layers)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.f(x).mean((2, 3)))


class RegBlock(nn.Module):
    def __init__(self, cin, cout, s, gw, se):
        super().__init__()
        g = max(1, cout // gw)
        layers = [cbr(cin, cout, 1), cbr(cout, cout, 3, s, groups=g)]
        if se:
            layers.append(SE(cout, max(8, cin // 4), nn.Sigmoid, nn.ReLU))
        layers.append(cbr(cout, cout, 1, act=None))
        self.f = nn.Sequential(*layers)
        self.sc = cbr(cin, cout, 1, s, act=None) if s != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.f(x) + self.sc(x))


class RegNet(nn.Module):
    def __init__(self, widths, depths, gw, se=False, classes=1000):
        super().__init__()
        layers, cin = [cbr(3, 32, 3, 2)], 32
        for w, d in zip(widths, depths):
            for i in range(d):
                layers.append(RegBlock(cin, w, 2 if i == 0 else 1, gw, se))
                cin = w
        self.f = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.f(x).mean((2, 3)))


class DeiT(nn.Module):
    """ViT with a class token and a distillation token (DeiT); attention written out (q/k/v split)."""

    def __init__(self, dim=192, depth=12, heads=3, patch=16, res=224, classes=1000, distill=True):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        nt = 2 if distill else 1
        self.tokens = nn.Parameter(torch.zeros(1, nt, dim))
        self.pos = nn.Parameter(torch.zeros(1, (res // patch) ** 2 + nt, dim))
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm, self.fc = nn.LayerNorm(dim), nn.Linear(dim, classes)
        self.fc_dist = nn.Linear(dim, classes) if distill else None

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.tokens.expand(x.shape[0], -1, -1), t], 1) + self.pos
        for b in self.blocks:
            t = b(t)
        t = self.norm(t)
        out = self.fc(t[:, 0])
        return (out + self.fc_dist(t[:, 1])) / 2 if self.fc_dist is not None else out


class Block(nn.Module):
    def __init__(self, dim, heads, mlp=4):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp * dim), nn.Linear(mlp * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.n1(x)).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        a = ((q * (d // h) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        x = x + self.proj((a @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.n2(x))))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(nn.functional.gelu(self.fc1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ChannelNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, dims=(96, 192, 384, 768), depths=(3, 3, 9, 3), classes=1000):
        super().__init__()
        layers = [nn.Conv2d(3, dims[0], 4, 4), ChannelNorm(dims[0])]
        for i, (d, n) in enumerate(zip(dims, depths)):
            if i:
                layers += [ChannelNorm(dims[i - 1]), nn.Conv2d(dims[i - 1], d, 2, 2)]
            layers += [ConvNeXtBlock(d) for _ in range(n)]
        self.f = nn.Sequential(*layers)
        self.norm, self.fc = nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], classes)

    def forward(self, x):
        return self.fc(self.norm(self.f(x).mean((2, 3))))


def reference_models() -> dict[str, list[tuple[str, callable, int]]]:
    """{family: [(name, constructor, resolution)]}."""
    return {
        "resnet": [("resnet18-160", lambda: ResNet(Basic, [2, 2, 2, 2]), 160),
                   ("resnet18-224", lambda: ResNet(Basic, [2, 2, 2, 2]), 224),
                   ("resnet34-160", lambda: ResNet(Basic, [3, 4, 6, 3]), 160),
                   ("resnet50-224", lambda: ResNet(Bottleneck, [3, 4, 6, 3]), 224),
                   ("resnet50w32-160", lambda: ResNet(Bottleneck, [3, 4, 6, 3], width=32), 160)],
        "mobilenetv2": [("mbv2-1.0-224", lambda: MobileNetV2(1.0), 224), ("mbv2-0.5-160", lambda: MobileNetV2(0.5), 160),
                        ("mbv2-0.75-192", lambda: MobileNetV2(0.75), 192), ("mbv2-1.4-128", lambda: MobileNetV2(1.4), 128)],
        "mobilenetv3": [("mbv3l-1.0-224", lambda: MobileNetV3("large", 1.0), 224),
                        ("mbv3l-0.75-160", lambda: MobileNetV3("large", 0.75), 160),
                        ("mbv3s-1.0-224", lambda: MobileNetV3("small", 1.0), 224),
                        ("mbv3s-0.75-128", lambda: MobileNetV3("small", 0.75), 128)],
        "efficientnet": [("effb0-224", lambda: EfficientNet(1.0, 1.0), 224), ("effb0-160", lambda: EfficientNet(1.0, 1.0), 160),
                         ("eff-0.75-0.8-192", lambda: EfficientNet(0.75, 0.8), 192),
                         ("eff-0.5-0.6-128", lambda: EfficientNet(0.5, 0.6), 128)],
        "shufflenetv2": [("shufflev2-1.0-224", lambda: ShuffleNetV2(1.0), 224),
                         ("shufflev2-0.5-224", lambda: ShuffleNetV2(0.5), 224),
                         ("shufflev2-1.5-160", lambda: ShuffleNetV2(1.5), 160),
                         ("shufflev2-2.0-128", lambda: ShuffleNetV2(2.0), 128)],
        "densenet": [("densenet121-160", lambda: DenseNet(), 160), ("densenet121-96", lambda: DenseNet(), 96),
                     ("densenet-s-128", lambda: DenseNet((4, 8, 16, 8), 24, 48), 128),
                     ("densenet-xs-160", lambda: DenseNet((3, 6, 12, 8), 16, 32), 160)],
        "regnet": [("regnetx-400mf-224", lambda: RegNet((32, 64, 160, 384), (1, 2, 7, 12), 16), 224),
                   ("regnetx-200mf-160", lambda: RegNet((24, 56, 152, 368), (1, 1, 4, 7), 8), 160),
                   ("regnety-400mf-192", lambda: RegNet((48, 104, 208, 440), (1, 3, 6, 6), 8, se=True), 192),
                   ("regnety-200mf-224", lambda: RegNet((24, 56, 152, 368), (1, 1, 4, 7), 8, se=True), 224)],
        "vit": [("vit-tiny-224", lambda: ViT(192, 12, 3), 224), ("vit-tiny-160", lambda: ViT(192, 12, 3, res=160), 160),
                ("vit-small6-160", lambda: ViT(384, 6, 6, res=160), 160), ("vit-mini-128", lambda: ViT(128, 8, 4, res=128), 128)],
        "deit": [("deit-tiny-224", lambda: DeiT(192, 12, 3), 224), ("deit-tiny-160", lambda: DeiT(192, 12, 3, res=160), 160),
                 ("deit-small-128", lambda: DeiT(384, 12, 6, res=128), 128),
                 ("deit-small8-160", lambda: DeiT(384, 8, 6, res=160), 160)],
        "convnext": [("convnext-t-128", lambda: ConvNeXt(), 128), ("convnext-t-96", lambda: ConvNeXt(), 96),
                     ("convnext-n-160", lambda: ConvNeXt((80, 160, 320, 640), (2, 2, 8, 2)), 160),
                     ("convnext-p-224", lambda: ConvNeXt((64, 128, 256, 512), (2, 2, 6, 2)), 224)],
    }


def export(ctor, res: int, path: str, opset: int = 17) -> None:
    torch.onnx.export(ctor().eval(), torch.randn(1, 3, res, res), path, dynamo=False, opset_version=opset)
