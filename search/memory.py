"""Parameters and memory of a network, computed from its graph.

Memory is what a batch-1 float32 inference needs at its peak: the weights plus the largest
set of activation tensors alive at once while the runtime executes its kernels in order (a
tensor lives from the kernel that writes it to the last kernel that reads it; the input lives
until its last reader, the output to the end). Kernels are the runtime's fused units
(docs/design.md §1), so a Conv+BN+ReLU holds its input and output, not three tensors.

Two readers of one rule (:func:`peak_live_bytes`):

- :func:`onnx_memory`: any ONNX file, through the predictor's kernel detection;
- :func:`skeleton_memory`: a stage skeleton (the known models and the baseline-derived space),
  from its block structure, with no export; ``tests/test_known_models.py`` checks it equals
  the ONNX reading of the exported network.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence, cast

import numpy as np

if TYPE_CHECKING:
    from predictors.detect import Detection
    from predictors.graph import OnnxGraph

FLOAT_BYTES = 4
MB = 1024.0 * 1024.0


@dataclass(frozen=True)
class Memory:
    params: int                 # weights of the inference graph (BatchNorm folded into the convs)
    peak_activation_bytes: int

    @property
    def weight_bytes(self) -> int:
        return self.params * FLOAT_BYTES

    @property
    def total_mb(self) -> float:
        """Peak activations plus weights, MiB."""
        return (self.weight_bytes + self.peak_activation_bytes) / MB

    @property
    def activation_mb(self) -> float:
        return self.peak_activation_bytes / MB


def peak_live_bytes(steps: Sequence[tuple[Sequence[str], str]], sizes: dict[str, int],
                    keep: Iterable[str] = ()) -> int:
    """The largest total size of tensors alive at once when ``steps`` (each ``(inputs, output)``,
    in execution order) run one after the other; tensors in ``keep`` are never freed."""
    last: dict[str, int] = {}
    for i, (ins, out) in enumerate(steps):
        for t in ins:
            last[t] = i
        last.setdefault(out, i)
    keep = set(keep)
    live: dict[str, int] = {}
    peak = 0
    for i, (ins, out) in enumerate(steps):
        for t in ins:
            live.setdefault(t, sizes[t])
        live[out] = sizes[out]
        peak = max(peak, sum(live.values()))
        for t in [t for t in live if last.get(t, -1) <= i and t not in keep]:
            del live[t]
    return int(peak)


# ----------------------------------------------------------------------------- ONNX graph
def onnx_memory(model_or_path, detection: Detection | None = None) -> Memory:
    """Parameters and peak memory of an ONNX model, at batch 1 (see the module docstring);
    ``detection``: its `predictors.detect.detect_kernels` result, when already at hand."""
    # lazy: loads onnx and pandas (slow to import) only when this runs
    from predictors.detect import detect_kernels
    det = detection if detection is not None else detect_kernels(model_or_path)
    # detect_kernels always keeps the graph it walked (Detection's None default is for hand-built ones)
    g = cast("OnnxGraph", det.graph)
    node_index = {(n.name or f"#{i}"): i for i, n in enumerate(g.nodes)}
    steps: list[tuple[list[str], str]] = []
    groups = [[node_index[n] for n in k.nodes if n in node_index] for k in det.kernels]
    groups += [[node_index[u.name]] for u in det.unknown if u.name in node_index]
    groups.sort(key=min)
    sizes: dict[str, int] = {}

    def size(t: str) -> int:
        info = g.info.get(t)
        shape = info.shape if info is not None else None
        return FLOAT_BYTES * (int(np.prod(shape)) if shape else 1)

    for grp in groups:
        made = {t for i in grp for t in g.nodes[i].output}
        ins = list(dict.fromkeys(t for i in grp for t in g.nodes[i].input
                                 if t and t not in made and not g.is_const(t)))
        outs = [t for i in grp for t in g.nodes[i].output if t and any(
            c not in grp for c in g.consumers.get(t, [])) or t in g.outputs]
        out = outs[-1] if outs else g.nodes[grp[-1]].output[0]
        for t in [*ins, out]:
            sizes.setdefault(t, size(t))
        steps.append((ins, out))
    # per use: the exporter shares identical initializers (the zero biases of a fresh network)
    weights = {t.name: int(np.prod(t.dims)) for t in g.model.graph.initializer if t.data_type == 1 and len(t.dims)}
    params = sum(weights.get(t, 0) for n in g.nodes for t in n.input)
    return Memory(params, peak_live_bytes(steps, sizes, keep=g.outputs))


# ------------------------------------------------------------------------- stage skeleton
def skeleton_memory(sk) -> Memory:
    """Parameters and peak memory of a :class:`~search.spaces.skeleton.Skeleton`, from its
    blocks as :mod:`search.spaces.skeleton` builds and exports them (no export needed)."""
    # lazy: loads torch (slow to import) only when this runs
    from search.spaces.skeleton import block_configs, skeleton_specs
    from search.spaces.base import conv_out
    steps: list[tuple[list[str], str]] = []
    sizes: dict[str, int] = {}
    n = [0]

    def new(c: int, h: int) -> str:
        n[0] += 1
        name = f"t{n[0]}"
        sizes[name] = FLOAT_BYTES * c * h * h
        return name

    def step(ins: list[str], c: int, h: int) -> str:
        out = new(c, h)
        steps.append((ins, out))
        return out

    r = sk.resolution
    x = new(sk.in_channels, r)
    h = conv_out(r, sk.stem.kernel, sk.stem.stride)
    x = step([x], sk.stem.cout, h)
    if sk.stem.maxpool:
        h = conv_out(h, 3, 2)
        x = step([x], sk.stem.cout, h)
    for cfg in block_configs(sk):
        b, mid, h2 = cfg.block, cfg.mid, cfg.h_out
        sc = step([x], b.cout, h2) if cfg.projection else x
        if b.type == "basic":
            t = step([x], b.cout, h2)
        elif b.type == "mbconv":
            t = step([x], mid, cfg.h) if b.expand != 1 else x
            t = step([t], mid, h2)
        else:
            t = step([step([x], mid, cfg.h)], mid, h2)
        if b.se:
            c = b.cout if b.type == "basic" else mid
            gate = step([step([step([t], c, 1)], cfg.se_mid, 1)], c, 1)
            t = step([t, gate], c, h2)
        x = step([t, sc] if cfg.residual else [t], b.cout, h2)
        h = h2
    c = sk.stages[-1][-1].cout
    if sk.head.conv:
        c = sk.head.conv
        x = step([x], c, h)
    x = step([x], c, 1)
    if sk.head.mix:
        c = sk.head.mix
        x = step([x], c, 1)
    x = step([x], c, 1)                       # Flatten
    x = step([x], sk.num_classes, 1)          # the classifier
    return Memory(params_from_specs(skeleton_specs(sk)), peak_live_bytes(steps, sizes, keep=[x]))


def params_from_specs(specs) -> int:
    """Weights of the kernels: convolutions (with their bias: BatchNorm folds into it) and linear
    layers; the other kernels have none."""
    params = 0
    for s in specs:
        p = s.params
        if s.kind in ("conv", "conv_add"):
            params += p["cout"] * (p["cin"] // p["groups"]) * p["kernel"] ** 2 + p["cout"]
        elif s.kind == "linear":
            params += p["cin"] * p["cout"] + (p["cout"] if p["bias"] else 0)
    return params


__all__ = ["FLOAT_BYTES", "Memory", "onnx_memory", "params_from_specs", "peak_live_bytes", "skeleton_memory"]
