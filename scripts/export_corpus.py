"""Export a corpus of real architectures to ONNX for the held-out-by-family predictor benchmark.

Runs in a separate benchmark environment, never in the product's (torch 2.14.1 + torchvision
0.29.1 + timm, about 6 GB; docs/benchmarks.md "Session 7"):

    python3.11 -m venv /work/benchenv
    /work/benchenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm onnx
    /work/benchenv/bin/python scripts/export_corpus.py --out /work/corpus

Every model gets random weights (`pretrained=False`, nothing is downloaded), batch 1, its
library's default input size and opset 17 (the TorchScript exporter, `dynamo=False`). The
folder receives one `<name>.onnx` per model and `manifest.csv` (name, family, source, input
shape, export seconds); models that fail to export are listed in `failed.csv` with the error.
When timm or torchvision is missing, only the families written here in plain torch (a
YOLO-style CSP backbone with a PAN neck, a U-Net, a ResNet-FPN neck) are exported.

This file is a script, not part of the product: nothing imports it, and it imports nothing
from the product.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
import warnings
from pathlib import Path

# (name, family, source, input H=W or None for the library default). Small and medium variants:
# the corpus is measured at one thread, several rounds each, on a 2-core machine.
TIMM = [
    # classification CNNs
    ("resnet18", "resnet"), ("resnet34", "resnet"), ("resnet50", "resnet"), ("resnet26d", "resnet"),
    ("resnet14t", "resnet"), ("resnext26ts", "resnext"), ("resnext50_32x4d", "resnext"),
    ("seresnext26d_32x4d", "senet"), ("seresnet18", "senet"), ("legacy_seresnet18", "senet"),
    ("wide_resnet50_2", "resnext"), ("res2net50_14w_8s", "res2net"), ("res2net50_26w_4s", "res2net"),
    ("mobilenetv2_050", "mobilenetv2"), ("mobilenetv2_100", "mobilenetv2"), ("mobilenetv2_140", "mobilenetv2"),
    ("mobilenetv3_small_100", "mobilenetv3"), ("mobilenetv3_large_100", "mobilenetv3"),
    ("tf_mobilenetv3_small_075", "mobilenetv3"), ("mobilenetv3_rw", "mobilenetv3"),
    ("mobilenetv4_conv_small", "mobilenetv4"), ("mobilenetv4_conv_medium", "mobilenetv4"),
    ("mobilenetv4_hybrid_medium", "mobilenetv4"),
    ("efficientnet_b0", "efficientnet"), ("efficientnet_b1", "efficientnet"), ("tf_efficientnet_b0", "efficientnet"),
    ("efficientnet_lite0", "efficientnet"), ("tf_efficientnet_lite0", "efficientnet"),
    ("tf_efficientnetv2_b0", "efficientnetv2"), ("tf_efficientnetv2_b1", "efficientnetv2"),
    ("efficientnetv2_rw_t", "efficientnetv2"), ("tf_efficientnetv2_s", "efficientnetv2"),
    ("regnetx_002", "regnet"), ("regnetx_004", "regnet"), ("regnety_002", "regnet"), ("regnety_008", "regnet"),
    ("regnetz_b16", "regnet"),
    ("densenet121", "densenet"), ("densenetblur121d", "densenet"),
    ("ghostnet_100", "ghostnet"), ("ghostnetv2_100", "ghostnet"),
    ("mnasnet_100", "nas-mobile"), ("fbnetc_100", "nas-mobile"), ("semnasnet_100", "nas-mobile"),
    ("spnasnet_100", "nas-mobile"), ("tinynet_a", "nas-mobile"), ("mixnet_s", "nas-mobile"),
    ("hardcorenas_a", "nas-mobile"),
    ("inception_v3", "inception"), ("inception_v4", "inception"),
    ("rexnet_100", "rexnet"), ("rexnet_130", "rexnet"),
    ("lcnet_050", "lcnet"), ("lcnet_100", "lcnet"),
    ("convnext_atto", "convnext"), ("convnext_femto", "convnext"), ("convnext_pico", "convnext"),
    ("convnextv2_atto", "convnext"),
    ("selecsls42b", "selecsls"), ("dpn48b", "dpn"),
    # re-parameterisable and multi-branch nets, in their training-time form
    ("repvgg_a0", "repvgg"), ("repvgg_a1", "repvgg"), ("repvgg_b0", "repvgg"),
    ("mobileone_s0", "mobileone"), ("mobileone_s1", "mobileone"),
    ("repghostnet_050", "repghost"), ("repghostnet_100", "repghost"),
    ("hrnet_w18_small", "hrnet"), ("hrnet_w18_small_v2", "hrnet"),
    # detection backbones (YOLO-style CSP/Darknet, DLA, VoVNet)
    ("cspresnet50", "cspnet"), ("cspdarknet53", "cspnet"), ("cs3darknet_s", "cspnet"), ("cs3darknet_m", "cspnet"),
    ("darknet17", "darknet"), ("darknet21", "darknet"),
    ("dla34", "dla"), ("dla46_c", "dla"), ("dla60", "dla"),
    ("ese_vovnet19b_dw", "vovnet"), ("ese_vovnet39b", "vovnet"),
    # vision transformers and hybrids
    ("vit_tiny_patch16_224", "vit"), ("vit_small_patch16_224", "vit"), ("vit_small_patch32_224", "vit"),
    ("vit_base_patch32_224", "vit"),
    ("deit_tiny_patch16_224", "deit"), ("deit_small_patch16_224", "deit"), ("deit_tiny_distilled_patch16_224", "deit"),
    ("pit_ti_224", "pit"), ("pit_xs_224", "pit"),
    ("mobilevit_xxs", "mobilevit"), ("mobilevit_xs", "mobilevit"), ("mobilevitv2_050", "mobilevit"),
    ("levit_128s", "levit"), ("levit_128", "levit"),
    ("efficientformer_l1", "efficientformer"), ("efficientformerv2_s0", "efficientformer"),
    ("fastvit_t8", "fastvit"), ("fastvit_sa12", "fastvit"),
    ("edgenext_xx_small", "edgenext"), ("edgenext_x_small", "edgenext"),
    ("efficientvit_b0", "efficientvit"), ("efficientvit_m0", "efficientvit"), ("efficientvit_m2", "efficientvit"),
    ("convit_tiny", "convit"), ("coat_lite_tiny", "coat"), ("tiny_vit_5m_224", "tinyvit"),
    ("poolformer_s12", "metaformer"), ("poolformerv2_s12", "metaformer"),
    ("swin_tiny_patch4_window7_224", "swin"),
    # MLP-mixers
    ("mixer_s32_224", "mlp-mixer"), ("mixer_s16_224", "mlp-mixer"), ("resmlp_12_224", "mlp-mixer"),
    ("gmlp_ti16_224", "mlp-mixer"),
]

TORCHVISION = [
    ("squeezenet1_0", "squeezenet", "classification"), ("squeezenet1_1", "squeezenet", "classification"),
    ("shufflenet_v2_x0_5", "shufflenet", "classification"), ("shufflenet_v2_x1_0", "shufflenet", "classification"),
    ("shufflenet_v2_x1_5", "shufflenet", "classification"),
    ("googlenet", "inception", "classification"), ("alexnet", "alexnet", "classification"),
    ("mnasnet0_5", "nas-mobile", "classification"), ("mnasnet1_0", "nas-mobile", "classification"),
    ("lraspp_mobilenet_v3_large", "seg-decoder", "segmentation"),
    ("deeplabv3_mobilenet_v3_large", "seg-decoder", "segmentation"),
    ("fcn_resnet50", "seg-decoder", "segmentation"),
]


def _plain_torch_models():
    """Families written here in plain torch: a YOLO-style CSP-Darknet backbone with a PAN neck,
    U-Nets, and a ResNet-style backbone with an FPN neck. Needs only torch."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    def cbs(cin, cout, k=1, s=1, act="silu"):
        a = {"silu": nn.SiLU(), "leaky": nn.LeakyReLU(0.1), "relu": nn.ReLU()}[act]
        pad = k // 2 if k % 2 else k // 2 - 1  # YOLOv5's 6x6 stride-2 stem pads 2
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, pad, bias=False), nn.BatchNorm2d(cout), a)

    class Bottleneck(nn.Module):
        def __init__(self, c, shortcut=True, act="silu"):
            super().__init__()
            self.a, self.b, self.add = cbs(c, c, 1, act=act), cbs(c, c, 3, act=act), shortcut

        def forward(self, x):
            y = self.b(self.a(x))
            return x + y if self.add else y

    class C3(nn.Module):  # YOLOv5's CSP block
        def __init__(self, cin, cout, n=1, shortcut=True, act="silu"):
            super().__init__()
            h = cout // 2
            self.cv1, self.cv2, self.cv3 = cbs(cin, h, act=act), cbs(cin, h, act=act), cbs(2 * h, cout, act=act)
            self.m = nn.Sequential(*[Bottleneck(h, shortcut, act) for _ in range(n)])

        def forward(self, x):
            return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))

    class SPPF(nn.Module):
        def __init__(self, c, act="silu"):
            super().__init__()
            self.cv1, self.cv2 = cbs(c, c // 2, act=act), cbs(c * 2, c, act=act)
            self.pool = nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            x = self.cv1(x)
            y1 = self.pool(x)
            y2 = self.pool(y1)
            return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1))

    class YoloPAN(nn.Module):
        """CSP-Darknet backbone, SPPF, PAN neck and 1x1 heads on three scales (YOLOv5-style)."""
        def __init__(self, w=0.25, d=1, act="silu", classes=80):
            super().__init__()
            c = [max(8, int(x * w)) for x in (64, 128, 256, 512, 1024)]
            self.stem = cbs(3, c[0], 6 if act == "silu" else 3, 2, act)
            self.s2 = nn.Sequential(cbs(c[0], c[1], 3, 2, act), C3(c[1], c[1], d, act=act))
            self.s3 = nn.Sequential(cbs(c[1], c[2], 3, 2, act), C3(c[2], c[2], 2 * d, act=act))
            self.s4 = nn.Sequential(cbs(c[2], c[3], 3, 2, act), C3(c[3], c[3], 3 * d, act=act))
            self.s5 = nn.Sequential(cbs(c[3], c[4], 3, 2, act), C3(c[4], c[4], d, act=act), SPPF(c[4], act))
            self.lat5, self.td4 = cbs(c[4], c[3], act=act), C3(2 * c[3], c[3], d, False, act)
            self.lat4, self.td3 = cbs(c[3], c[2], act=act), C3(2 * c[2], c[2], d, False, act)
            self.down3, self.bu4 = cbs(c[2], c[2], 3, 2, act), C3(2 * c[2], c[3], d, False, act)
            self.down4, self.bu5 = cbs(c[3], c[3], 3, 2, act), C3(2 * c[3], c[4], d, False, act)
            no = 3 * (classes + 5)
            self.heads = nn.ModuleList(nn.Conv2d(ch, no, 1) for ch in (c[2], c[3], c[4]))

        def forward(self, x):
            x3 = self.s3(self.s2(self.stem(x)))
            x4 = self.s4(x3)
            x5 = self.s5(x4)
            p5 = self.lat5(x5)
            t4 = self.td4(torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), x4], 1))
            p4 = self.lat4(t4)
            o3 = self.td3(torch.cat([F.interpolate(p4, scale_factor=2.0, mode="nearest"), x3], 1))
            o4 = self.bu4(torch.cat([self.down3(o3), p4], 1))
            o5 = self.bu5(torch.cat([self.down4(o4), p5], 1))
            return tuple(h(o) for h, o in zip(self.heads, (o3, o4, o5)))

    class UNet(nn.Module):
        def __init__(self, base=16, depth=4, classes=2, up="transpose"):
            super().__init__()
            chans = [base * 2 ** i for i in range(depth + 1)]
            self.down = nn.ModuleList()
            cin = 3
            for c in chans:
                self.down.append(nn.Sequential(cbs(cin, c, 3, act="relu"), cbs(c, c, 3, act="relu")))
                cin = c
            self.up, self.dec = nn.ModuleList(), nn.ModuleList()
            for c_hi, c_lo in zip(chans[::-1][:-1], chans[::-1][1:]):
                self.up.append(nn.ConvTranspose2d(c_hi, c_lo, 2, 2) if up == "transpose"
                               else nn.Sequential(nn.Upsample(scale_factor=2.0, mode="bilinear"), cbs(c_hi, c_lo, 1, act="relu")))
                self.dec.append(nn.Sequential(cbs(2 * c_lo, c_lo, 3, act="relu"), cbs(c_lo, c_lo, 3, act="relu")))
            self.head = nn.Conv2d(chans[0], classes, 1)

        def forward(self, x):
            skips = []
            for i, d in enumerate(self.down):
                x = d(x if i == 0 else F.max_pool2d(x, 2))
                skips.append(x)
            for up, dec, s in zip(self.up, self.dec, skips[::-1][1:]):
                x = dec(torch.cat([up(x), s], 1))
            return self.head(x)

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, s):
            super().__init__()
            self.a, self.b = cbs(cin, cout, 3, s, "relu"), nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                                                         nn.BatchNorm2d(cout))
            self.sc = nn.Identity() if (cin == cout and s == 1) else nn.Sequential(
                nn.Conv2d(cin, cout, 1, s, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return F.relu(self.b(self.a(x)) + self.sc(x))

    class ResFPN(nn.Module):
        """A ResNet-18-like backbone with an FPN neck (lateral 1x1, top-down upsampling, 3x3 smoothing)."""
        def __init__(self, w=64, fpn=128):
            super().__init__()
            c = [w, 2 * w, 4 * w, 8 * w]
            self.stem = nn.Sequential(cbs(3, w, 7, 2, "relu"), nn.MaxPool2d(3, 2, 1))
            self.stages = nn.ModuleList()
            cin = w
            for i, ch in enumerate(c):
                self.stages.append(nn.Sequential(BasicBlock(cin, ch, 1 if i == 0 else 2), BasicBlock(ch, ch, 1)))
                cin = ch
            self.lat = nn.ModuleList(nn.Conv2d(ch, fpn, 1) for ch in c[1:])
            self.smooth = nn.ModuleList(nn.Conv2d(fpn, fpn, 3, 1, 1) for _ in c[1:])

        def forward(self, x):
            x = self.stem(x)
            feats = []
            for s in self.stages:
                x = s(x)
                feats.append(x)
            lats = [l(f) for l, f in zip(self.lat, feats[1:])]
            outs = [lats[-1]]
            for lat in lats[-2::-1]:
                outs.insert(0, lat + F.interpolate(outs[0], size=lat.shape[-2:], mode="nearest"))
            return tuple(s(o) for s, o in zip(self.smooth, outs))

    return [
        ("yolo_pan_n", "yolo-pan", "plain-torch", lambda: YoloPAN(0.25, 1), 320),
        ("yolo_pan_s", "yolo-pan", "plain-torch", lambda: YoloPAN(0.5, 1), 320),
        ("yolo_pan_n416", "yolo-pan", "plain-torch", lambda: YoloPAN(0.25, 1), 416),
        ("yolo_pan_leaky_n", "yolo-pan", "plain-torch", lambda: YoloPAN(0.25, 1, act="leaky"), 320),
        ("yolo_pan_leaky_s", "yolo-pan", "plain-torch", lambda: YoloPAN(0.375, 1, act="leaky"), 256),
        ("unet_16", "unet", "plain-torch", lambda: UNet(16, 4), 128),
        ("unet_32", "unet", "plain-torch", lambda: UNet(32, 4), 128),
        ("unet_16_bilinear", "unet", "plain-torch", lambda: UNet(16, 4, up="bilinear"), 160),
        ("unet_8_d3", "unet", "plain-torch", lambda: UNet(8, 3), 224),
        ("resfpn_64", "resnet-fpn", "plain-torch", lambda: ResFPN(64, 128), 224),
        ("resfpn_32", "resnet-fpn", "plain-torch", lambda: ResFPN(32, 64), 256),
        ("resfpn_48", "resnet-fpn", "plain-torch", lambda: ResFPN(48, 96), 192),
    ]


def _export(model, size, path: Path, opset: int) -> list[int]:
    import torch
    model.eval()
    shape = [1, 3, size, size] if isinstance(size, int) else [1, *size]
    x = torch.randn(*shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
        torch.onnx.export(model, (x,), str(path), opset_version=opset, input_names=["input"],
                          do_constant_folding=True, **kw)
    return shape


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="Folder for the ONNX files and manifest.csv (outside the repo).")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--only", nargs="*", help="Export only these model names.")
    ap.add_argument("--overwrite", action="store_true", help="Export again models whose file exists.")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch
    torch.manual_seed(0)
    torch.set_num_threads(1)
    jobs = []  # (name, family, source, factory, size)
    try:
        import timm
        for name, fam in TIMM:
            jobs.append((name, fam, f"timm {timm.__version__}", lambda n=name: timm.create_model(n, pretrained=False),
                         None))
    except ImportError:
        print("timm is not installed: its families are skipped", file=sys.stderr)
    try:
        import torchvision
        from torchvision import models as tvm
        for name, fam, kind in TORCHVISION:
            def make(n=name, k=kind):
                fn = getattr(tvm.segmentation, n) if k == "segmentation" else getattr(tvm, n)
                kw = {"weights": None, "weights_backbone": None} if k == "segmentation" else {"weights": None}
                if n == "googlenet":
                    kw["aux_logits"], kw["init_weights"] = False, True
                m = fn(**kw)
                if k == "segmentation":  # the "out" tensor only (dict outputs do not export)
                    class Out(torch.nn.Module):
                        def __init__(self, inner):
                            super().__init__()
                            self.inner = inner

                        def forward(self, x):
                            return self.inner(x)["out"]
                    m = Out(m)
                return m
            jobs.append((name, fam, f"torchvision {torchvision.__version__}", make, 224))
    except ImportError:
        print("torchvision is not installed: its families are skipped", file=sys.stderr)
    jobs += _plain_torch_models()
    if args.only:
        jobs = [j for j in jobs if j[0] in set(args.only)]
    manifest_path, failed_path = out / "manifest.csv", out / "failed.csv"
    rows = {}
    if manifest_path.exists():
        with open(manifest_path, newline="") as fh:
            rows = {r["name"]: r for r in csv.DictReader(fh)}
    failed = []
    for k, (name, fam, source, factory, size) in enumerate(jobs):
        path = out / f"{name}.onnx"
        if path.exists() and name in rows and not args.overwrite:
            continue
        t0 = time.time()
        try:
            model = factory()
            if size is None:
                cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", {})
                size = tuple(cfg.get("input_size", (3, 224, 224)))
            shape = _export(model, size, path, args.opset)
        except Exception as e:  # a model the exporter cannot handle is listed, not fatal
            failed.append({"name": name, "family": fam, "source": source, "error": f"{type(e).__name__}: {e}"[:300]})
            print(f"[{k + 1}/{len(jobs)}] {name}: FAILED {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
            path.unlink(missing_ok=True)
            continue
        rows[name] = {"name": name, "family": fam, "source": source, "input_shape": "x".join(map(str, shape)),
                      "opset": args.opset, "export_s": f"{time.time() - t0:.1f}", "onnx": path.name}
        print(f"[{k + 1}/{len(jobs)}] {name} ({fam}, {source}) {time.time() - t0:.1f}s", flush=True)
        with open(manifest_path, "w", newline="") as fh:  # after each model: an interrupted run keeps its work
            w = csv.DictWriter(fh, fieldnames=list(next(iter(rows.values()))))
            w.writeheader()
            w.writerows(rows.values())
    with open(failed_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["name", "family", "source", "error"])
        w.writeheader()
        w.writerows(failed)
    fams = {r["family"] for r in rows.values()}
    print(f"{len(rows)} models in {len(fams)} families in {manifest_path}; {len(failed)} failed ({failed_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
