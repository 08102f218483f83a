"""The deployment form of a search: its target's precision and batch.

- **Throughput.** At the target's batch N, one run processes N images, so images/s is
  N * 1000 / latency_ms: a throughput floor is a latency budget (`throughput_budget_ms`), and
  maximising throughput under an accuracy constraint is minimising latency under it.
- **int8.** On an int8 target the device runner quantizes every finalist before it measures
  it (`profiling.device_runner.quantize_file`), so verification times the deployed model;
  `export_int8` makes `best.onnx` that quantized model (calibrated on the user's training
  images) and measures its accuracy drop against the fp32 export on held-out images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_IMAGES = 64
HELD_OUT_IMAGES = 1000


def images_per_s(latency_ms: float | None, batch: int) -> float | None:
    return batch * 1000.0 / latency_ms if latency_ms and latency_ms > 0 else None


def throughput_budget_ms(min_throughput: float, batch: int) -> float:
    """The latency budget (ms per run of `batch` images) that a floor of `min_throughput` images/s means."""
    return batch * 1000.0 / min_throughput


def _onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    # lazy: loads onnxruntime (slow to import) only when this runs
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    step = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else 64
    correct = 0
    n = len(x) // step * step
    for i in range(0, n, step):
        logits = sess.run(None, {inp.name: x[i:i + step]})[0]
        correct += int((logits.argmax(1) == y[i:i + step]).sum())
    return 100.0 * correct / max(1, n)


def export_int8(out: Path, data) -> dict[str, Any]:
    """Quantize `out/best.onnx` in place (the fp32 export kept as best.fp32.onnx), calibrated on
    training images of `data`, and measure both on up to HELD_OUT_IMAGES held-out images."""
    # lazy: loads onnx (slow to import) only when this runs
    import onnx

    # lazy: loads onnx (slow to import) only when this runs
    from profiling.quantize import quantize
    best, fp32 = out / "best.onnx", out / "best.fp32.onnx"
    best.replace(fp32)
    x_cal = data.train.x[:CALIBRATION_IMAGES].numpy().astype(np.float32)
    int8 = quantize(str(fp32), calibration=x_cal)
    onnx.save(int8, str(best))
    x = data.val.x[:HELD_OUT_IMAGES].numpy().astype(np.float32)
    y = data.val.y[:HELD_OUT_IMAGES].numpy()
    acc32, acc8 = _onnx_accuracy(fp32, x, y), _onnx_accuracy(best, x, y)
    return {"int8": {"onnx": "best.onnx", "fp32_onnx": "best.fp32.onnx", "quantization":
                     "onnxruntime static QDQ, per-channel int8 weights, MinMax on "
                     f"{len(x_cal)} training images",
                     "fp32_accuracy": acc32, "int8_accuracy": acc8, "accuracy_drop_points": acc32 - acc8,
                     "held_out_images": int(len(x))}}


__all__ = ["images_per_s", "throughput_budget_ms", "export_int8"]
