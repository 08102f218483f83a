"""FLOPs and bytes of real ONNX graphs, checked against the layers' definitions."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from profiling.onnx_stats import conv_output_size, fix_batch, infer_tensor_info, model_stats


def _conv_model(cin, cout, hw, k, stride, groups, bias=True):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32), "w")
    inits = [w]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("Conv", inputs, ["y"], kernel_shape=[k, k], strides=[stride, stride],
                            pads=[k // 2] * 4, group=groups)
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", cin, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("cin,cout,hw,k,stride,groups", [(16, 32, 28, 3, 1, 1), (32, 32, 14, 5, 2, 32),
                                                         (64, 128, 7, 1, 1, 4)])
def test_conv_flops_params_and_bytes_follow_the_definition(cin, cout, hw, k, stride, groups):
    model = fix_batch(_conv_model(cin, cout, hw, k, stride, groups), batch=2)
    stats = model_stats(model)
    out_hw = conv_output_size(hw, k, stride, k // 2)
    out_numel = 2 * cout * out_hw * out_hw
    macs = out_numel * (cin // groups) * k * k
    assert stats.flops == 2 * macs + out_numel  # bias adds one op per output
    assert stats.params == cout * (cin // groups) * k * k + cout
    in_bytes = 4 * 2 * cin * hw * hw
    assert stats.bytes == in_bytes + 4 * stats.params + 4 * out_numel
    assert stats.nodes[0].output_shapes == [(2, cout, out_hw, out_hw)]
    assert stats.arithmetic_intensity == pytest.approx(stats.flops / stats.bytes)


def test_matmul_and_elementwise_flops_from_inferred_shapes():
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4, 10, 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 8, 12])
    nodes = [helper.make_node("MatMul", ["a", "b"], ["c"]), helper.make_node("Relu", ["c"], ["d"])]
    graph = helper.make_graph(nodes, "mm", [a, b], [helper.make_tensor_value_info("d", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    info = infer_tensor_info(model)
    assert info["c"].shape == (1, 4, 10, 12)
    stats = model_stats(model, info)
    assert [n.flops for n in stats.nodes] == [2 * 4 * 10 * 12 * 8, 4 * 10 * 12]
    assert stats.params == 0


def test_fix_batch_sets_symbolic_leading_dimension():
    model = fix_batch(_conv_model(3, 8, 16, 3, 1, 1), batch=4)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 4
