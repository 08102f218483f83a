"""Reference architectures in plain torch (no torchvision) for the predictor benchmark.

Families: resnet (18/34/50), mobilenetv2, vit (tiny/small-like); each at a few widths and
resolutions so every family has several members. (MobileNetV3, EfficientNet, ShuffleNet,
DenseNet, RegNet and ConvNeXt are not written yet.)
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
        self.norm, self.fc = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.fc(self.norm(self.enc(t)).mean(1))


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
        "vit": [("vit-tiny-224", lambda: ViT(192, 12, 3), 224), ("vit-tiny-160", lambda: ViT(192, 12, 3, res=160), 160),
                ("vit-small6-160", lambda: ViT(384, 6, 6, res=160), 160), ("vit-mini-128", lambda: ViT(128, 8, 4, res=128), 128)],
    }


def export(ctor, res: int, path: str, opset: int = 17) -> None:
    torch.onnx.export(ctor().eval(), torch.randn(1, 3, res, res), path, dynamo=False, opset_version=opset)
