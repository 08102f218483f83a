"""Honest intervals: unknown ops are named with their share of the prediction and widen its
interval; a prediction resting mostly on fallbacks is marked unreliable, in words and in --json."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from predictors import Predictor
from predictors.reliability import UNRELIABLE_SHARE, assess

ROOT = Path(__file__).resolve().parents[1]
# any shipped predictor: the test is about how a prediction is assembled, not about its figure
SHIPPED = sorted((ROOT / "data" / "predictors").glob("local-cpu__*.lgb"))[0]
# ops no kernel vocabulary of an image model covers: they stay unknown whatever the detector learns
EXOTIC = ("CumSum", "Sin", "Cos", "Round")


def _model(exotic: int, size: int = 32, channels: int = 32, convs: int = 0):
    """Conv(3x3)+Relu and `convs` more 3x3 convs, then `exotic` ops outside the vocabulary on its
    output, then a global pool."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((channels, channels, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(3, np.int64), "axis")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r0"])]
    for i in range(convs):
        nodes += [helper.make_node("Conv", [f"r{i}", "w2"], [f"c{i + 1}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i + 1}"], [f"r{i + 1}"])]
    nodes.append(helper.make_node("Identity", [f"r{convs}"], ["t0"]))
    for i in range(exotic):
        op = EXOTIC[i % len(EXOTIC)]
        ins = [f"t{i}", "axis"] if op == "CumSum" else [f"t{i}"]
        nodes.append(helper.make_node(op, ins, [f"t{i + 1}"], name=f"{op.lower()}_{i}"))
    nodes.append(helper.make_node("GlobalAveragePool", [f"t{exotic}"], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def predictor():
    return Predictor.load(SHIPPED)


def test_an_unknown_op_is_named_with_its_share_and_widens_the_interval(predictor):
    plain = predictor.predict(_model(0, convs=3), name="plain")
    one = predictor.predict(_model(1, convs=3), name="one")
    assert plain.unknown_ops == [] and plain.fallback_share == 0.0 and not plain.unreliable
    assert [u["name"] for u in one.unknown_ops] == ["cumsum_0"]
    u = one.unknown_ops[0]
    assert u["op_type"] == "CumSum"
    assert u["share"] == pytest.approx(u["estimate_ms"] / one.kernel_sum_ms)
    assert one.fallback_share == pytest.approx(u["share"])
    assert one.unknown_by_type["CumSum"]["count"] == 1
    # relative width: the unknown op's own (roofline) interval is added to the graph interval
    width = lambda r: (r.high_ms - r.low_ms) / r.latency_ms  # noqa: E731
    assert width(one) > width(plain)
    assert one.low_ms <= one.latency_ms <= one.high_ms
    assert one.fallback_share < UNRELIABLE_SHARE  # one small op after four convs: named, widened, not unreliable
    assert not one.unreliable and "CumSum" in one.reliability_note and "UNRELIABLE" not in one.reliability_note


def test_a_prediction_resting_mostly_on_fallbacks_is_unreliable_in_words_and_json(predictor, tmp_path):
    import onnx
    path = tmp_path / "mostly_unknown.onnx"
    onnx.save(_model(24, size=64, channels=8), str(path))
    r = predictor.predict(str(path))
    assert r.fallback_share > UNRELIABLE_SHARE and r.unreliable
    assert r.reliability_note.startswith("UNRELIABLE") and "CumSum" in r.reliability_note
    assert len(r.unknown_ops) == 24 and sum(u["share"] for u in r.unknown_ops) == pytest.approx(r.fallback_share)
    d = r.to_dict()
    assert d["unreliable"] is True and d["fallback_share"] == pytest.approx(r.fallback_share)

    from scripts.predict_latency import main
    out = CliRunner().invoke(main, [str(path), "--predictor", str(SHIPPED), "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output[out.output.index("["):])
    assert rows[0]["unreliable"] is True and rows[0]["unknown_ops"][0]["share"] > 0
    table = CliRunner().invoke(main, [str(path), "--predictor", str(SHIPPED)])
    assert table.exit_code == 0, table.output
    assert "UNRELIABLE" in table.output and "CumSum" in table.output


def test_assess_adds_the_fallback_interval_and_stretches_extrapolated_kernels():
    unknown = [{"op_type": "Pad", "estimate_ms": 1.0}, {"op_type": "Pad", "estimate_ms": 1.0}]
    r = assess(10.0, unknown, (-0.2, 1.0), [])
    assert r.fallback_share == pytest.approx(0.2) and not r.unreliable
    assert r.low_extra_ms == pytest.approx(2 * (1 - np.exp(-0.2)))
    assert r.high_extra_ms == pytest.approx(2 * (np.exp(1.0) - 1))
    assert r.unknown_by_type["Pad"] == {"count": 2, "estimate_ms": 2.0, "share": pytest.approx(0.2)}
    inside = assess(10.0, [], None, [(4.0, 0.0, -0.1, 0.1)])
    far = assess(10.0, [], None, [(4.0, 2.0, -0.1, 0.1)])
    assert far.high_extra_ms > inside.high_extra_ms > 0 and far.extrapolated_share == pytest.approx(0.4)
    assert assess(10.0, [{"op_type": "X", "estimate_ms": 4.0}], None, []).unreliable
