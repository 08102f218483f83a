"""Shapes computed at run time resolve through onnxruntime's own constant folding before kernel
detection: the "same" padding of TF-ported models (Shape → Cast → Div → Ceil → ... → Clip → Pad)."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference

from predictors.detect import detect_kernels
from predictors.graph import _fold_shape_arithmetic, _light_copy, _set_dims, _shape_inputs_needed, _shapes_of, \
    load_graph


def _tf_same_pad_conv(opset: int, size: int = 15, kernel: int = 3, stride: int = 2, cout: int = 8):
    """x -> [pads computed from Shape(x) at run time] -> Pad -> Conv(stride) -> Relu, as tf2onnx and
    timm's Conv2dSame write it: pad = clamp((ceil(in / s) - 1) * s + k - in, 0), split begin/end."""
    rng = np.random.default_rng(0)
    c = lambda name, v, dt=np.float32: numpy_helper.from_array(np.asarray(v, dt), name)  # noqa: E731
    inits = [c("w", rng.standard_normal((cout, 3, kernel, kernel))), c("b", np.zeros(cout)),
             c("starts", [2], np.int64), c("ends", [4], np.int64), c("stride", float(stride)),
             c("one", 1.0), c("k", float(kernel)), c("zero", 0.0), c("two", 2.0),
             c("zeros2", [0, 0], np.int64)]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "starts", "ends"], ["hw"]),
        helper.make_node("Cast", ["hw"], ["hw_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["hw_f", "stride"], ["q"]),
        helper.make_node("Ceil", ["q"], ["out"]),
        helper.make_node("Sub", ["out", "one"], ["out1"]),
        helper.make_node("Mul", ["out1", "stride"], ["span"]),
        helper.make_node("Add", ["span", "k"], ["need"]),
        helper.make_node("Sub", ["need", "hw_f"], ["raw"]),
        helper.make_node("Clip", ["raw", "zero", ""], ["total"]),  # torch.clamp(min=0) / tf.maximum
        helper.make_node("Div", ["total", "two"], ["half"]),
        helper.make_node("Floor", ["half"], ["begin_f"]),
        helper.make_node("Sub", ["total", "begin_f"], ["end_f"]),
        helper.make_node("Cast", ["begin_f"], ["begin"], to=TensorProto.INT64),
        helper.make_node("Cast", ["end_f"], ["end"], to=TensorProto.INT64),
        helper.make_node("Concat", ["zeros2", "begin", "zeros2", "end"], ["pads"], axis=0),
        helper.make_node("Pad", ["x", "pads"], ["padded"], mode="constant"),
        helper.make_node("Conv", ["padded", "w", "b"], ["conv"], strides=[stride, stride]),
        helper.make_node("Relu", ["conv"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "tf_same_pad", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [11, 17, 21])
def test_run_time_same_padding_resolves_through_the_runtime_folding(opset):
    g = load_graph(_tf_same_pad_conv(opset), batch=2)
    # ceil(15 / 2) = 8 outputs need (8 - 1) * 2 + 3 = 17 inputs: 1 pixel of padding on each side
    assert g.shape("padded") == (2, 3, 17, 17)
    assert g.shape("conv") == (2, 8, 8, 8) and g.shape("y") == (2, 8, 8, 8)
    det = detect_kernels(g, batch=2)
    conv = [k for k in det.kernels if k.spec.kind == "conv"]
    assert len(conv) == 1
    p = conv[0].spec.params
    assert (p["cin"], p["cout"], p["h"], p["kernel"], p["stride"], p["act"]) == (3, 8, 17, 3, 2, "relu")
    # the shape arithmetic is folded away, not reported as unknown ops
    unknown = {u.op_type for u in det.unknown}
    assert not unknown & {"Shape", "Slice", "Cast", "Div", "Ceil", "Clip", "Floor", "Concat", "Sub", "Mul", "Add"}
    assert "Conv" not in unknown


def test_the_numpy_folder_alone_stops_at_the_clip():
    """The hand-written folder (the path before the runtime folding) leaves the Pad without a shape."""
    m = _tf_same_pad_conv(17)
    _set_dims(m, 1, "<test>")
    light = _light_copy(m)
    shapes = _shapes_of(shape_inference.infer_shapes(light, strict_mode=False, data_prop=True))
    assert shapes.get("padded") is None
    needed = _shape_inputs_needed(light, shapes)
    assert "pads" in needed
    assert "pads" not in _fold_shape_arithmetic(light, shapes, {}, needed)


def test_different_sizes_give_the_padding_tf_would_use():
    # 16 / 2 = 8 outputs need 17 inputs: TF pads 0 before and 1 after
    g = load_graph(_tf_same_pad_conv(17, size=16), batch=1)
    assert g.shape("padded") == (1, 3, 17, 17) and g.shape("conv") == (1, 8, 8, 8)
    g = load_graph(_tf_same_pad_conv(17, size=14, kernel=5, stride=1), batch=1)
    assert g.shape("padded") == (1, 3, 18, 18) and g.shape("conv") == (1, 8, 14, 14)
