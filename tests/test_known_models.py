"""The registry of known architectures and the baseline-derived space built from them.

Every registry model builds, exports to ONNX and runs in onnxruntime (at a small input size);
the kernels detected in its ONNX are the skeleton's own kernel specs; its memory from the
skeleton equals the memory read from the exported graph; the baseline is a point of its space
and a changed candidate builds and runs.
"""
from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
import torch

from predictors.detect import detect_kernels
from search.known_models import get_known, list_known, regnet_stages
from search.memory import onnx_memory, skeleton_memory
from search.spaces.base import SpaceError
from search.spaces.baseline import BaselineSpace, StageGene
from search.spaces.skeleton import SkeletonNetwork, build_network, skeleton_specs


def _norm(spec):
    d = spec.to_dict()
    d.pop("bn", None)
    return tuple(sorted(d.items()))


def _export(sk, path, net=None):
    space = BaselineSpace(sk, "m")
    space.export_onnx(space.baseline_arch, path, model=build_network(sk) if net is None else net)
    return path


# one model per block type, stem, head and activation: basic (resnet56), bottleneck + max-pool
# stem (resnet50), MBConv with ReLU6 and a head conv (mobilenet_v2), SE with hard-sigmoid and
# the MobileNetV3 head (mobilenet_v3_small), SiLU and SE from the block input (efficientnet_b0),
# grouped + SE (regnety_400mf). The others differ from these only in depths and widths (their
# parameter counts and forward pass are checked in the next test).
EXPORTED = ["resnet50", "resnet56", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnety_400mf"]


@pytest.mark.parametrize("name", EXPORTED)
def test_registry_model_exports_runs_and_matches_its_specs(name, tmp_path):
    km = get_known(name)
    assert km.top1 > 0 and km.source and km.dataset in ("ImageNet", "CIFAR-10")
    # a small input keeps the test quick; 32 leaves every stride-32 network a 1x1 map
    sk = km.skeleton(num_classes=7, resolution=32)
    net = build_network(sk).eval()
    path = _export(sk, tmp_path / f"{name}.onnx", net)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    out = sess.run(None, {"input": x})[0]
    assert out.shape == (1, 7) and np.isfinite(out).all()
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), out, rtol=1e-3, atol=1e-4)
    det = detect_kernels(str(path))
    assert not det.unknown, [(u.op_type, u.name) for u in det.unknown]
    got, want = Counter(_norm(s) for s in det.specs()), Counter(_norm(s) for s in skeleton_specs(sk))
    assert got == want, {"only_detected": list(got - want)[:5], "only_skeleton": list(want - got)[:5]}
    assert skeleton_memory(sk) == onnx_memory(str(path), det)


def test_every_registry_model_runs_and_has_its_published_parameter_count():
    """Each builds, runs a forward pass on a small input, and has the published parameter count
    (within 3%: torch counts the BatchNorm parameters, which the papers' tables round away)."""
    for km in list_known():
        with torch.device("meta"):  # counting needs no memory or initialisation
            n = sum(p.numel() for p in SkeletonNetwork(km.skeleton()).parameters()) / 1e6
        assert abs(n - km.params_m) / km.params_m < 0.03, (km.name, n, km.params_m)
        net = km.build(num_classes=5, resolution=32).eval()
        with torch.no_grad():
            assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
    assert {km.name for km in list_known()} >= set(EXPORTED)


def test_regnet_stages_follow_the_quantised_linear_rule():
    widths, depths = regnet_stages(24, 24.48, 2.54, 22, 16)   # RegNetX-400MF
    assert sum(depths) == 22 and all(w % 16 == 0 for w in widths) and widths == sorted(widths)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(SpaceError, match="resnet56"):
        get_known("vgg16")
    assert get_known("ResNet-56").name == "resnet56"


def test_baseline_is_a_point_of_its_space():
    sk = get_known("resnet20").skeleton(num_classes=10, resolution=16)
    space = BaselineSpace(sk, "resnet20")
    base = space.baseline_arch
    assert space.skeleton_of(base) == sk
    assert space.kernel_specs(base) == skeleton_specs(sk)
    assert space.from_string(space.to_string(base)) == base
    assert space.decode(space.encode(base)) == base
    mb = BaselineSpace(get_known("mobilenet_v3_small").skeleton(resolution=64), "mobilenet_v3_small")
    assert mb.skeleton_of(mb.baseline_arch) == mb.skeleton


def test_changed_candidate_builds_runs_and_matches_its_specs(tmp_path):
    sk = get_known("resnet20").skeleton(num_classes=10, resolution=16)
    space = BaselineSpace(sk, "resnet20")
    arch = space.make([StageGene("own", 2, 0.5, False), StageGene("mb6k5", 4, 1.25, True),
                       StageGene("grouped", 1, 0.75, True)])
    net = space.build(arch).eval()
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    blocks = [b.cfg.block for b in net.blocks]
    assert [b.type for b in blocks] == ["basic"] * 2 + ["mbconv"] * 4 + ["grouped"]
    assert blocks[0].cout == 8 and blocks[2].cout == 40 and blocks[-1].cout == 48
    path = tmp_path / "c.onnx"
    space.export_onnx(arch, path, model=net)
    det = detect_kernels(str(path))
    assert Counter(_norm(s) for s in det.specs()) == Counter(_norm(s) for s in space.kernel_specs(arch))
    assert skeleton_memory(space.skeleton_of(arch)) == onnx_memory(str(path))
    rng = np.random.default_rng(0)
    for _ in range(20):  # the genetic operators stay inside the space
        a = space.mutate(space.sample(rng), rng)
        assert space.from_string(space.to_string(a)) == space.crossover(a, a, rng) == a
    with pytest.raises(SpaceError, match="depth"):
        space.make([StageGene("own", 7, 1.0, False)] * 3)
