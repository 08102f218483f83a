"""Detecting the kernels of a search space's exported ONNX gives the space's own kernel specs.

Compared modulo `bn`: torch's ONNX export folds BatchNorm into the conv bias, so a detector
cannot see it, and onnxruntime folds it anyway (the predictor's features ignore `bn`).
"""
from collections import Counter

import pytest

from predictors.detect import detect_kernels

spaces = pytest.importorskip("search.spaces")


def _norm(spec):
    d = spec.to_dict()
    d.pop("bn", None)
    return tuple(sorted(d.items()))


@pytest.mark.parametrize("name", ["nb201", "mbv3", "resnet"])
def test_detected_kernels_equal_space_kernel_specs(name, tmp_path):
    space = spaces.get_space(name)
    for seed in range(2):
        arch = space.sample(seed)
        path = tmp_path / f"{name}{seed}.onnx"
        space.export_onnx(arch, path)
        det = detect_kernels(str(path))
        got = Counter(_norm(s) for s in det.specs())
        want = Counter(_norm(s) for s in space.kernel_specs(arch))
        assert not det.unknown, [(u.op_type, u.name) for u in det.unknown]
        assert got == want, {"only_detected": list(got - want), "only_space": list(want - got)}
