"""`train`: a standard recipe on the user's data, with checkpoints that resume."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from search.architecture import load_trained, resolve_architecture
from search.problem import SearchError
from search.training import TrainError, TrainRecipe, train_architecture


class _Stop(Exception):
    pass


def test_train_writes_model_files_with_test_accuracy_and_resumes(tmp_path):
    recipe = TrainRecipe(epochs=2, batch_size=64, seed=0)
    out = tmp_path / "run"

    def stop_after_first_epoch(msg: str):
        if msg.startswith("epoch 1/2"):
            raise _Stop

    with pytest.raises(_Stop):  # killed after the first epoch's checkpoint
        train_architecture("resnet20", "digits", out, recipe, max_per_class=40, progress=False,
                           log=stop_after_first_epoch)
    assert (out / "checkpoint.pt").exists() and not (out / "model.pt").exists()
    res = train_architecture("resnet20", "digits", out, recipe, max_per_class=40, progress=False)
    assert res["resumed_from_epoch"] == 1 and [h["epoch"] for h in res["history"]] == [1, 2]
    assert res["n_test"] == 80 and 0 <= res["test_accuracy"] <= 100
    assert json.loads((out / "result.json").read_text())["test_accuracy"] == res["test_accuracy"]
    # model.pt loads without pickle into the same network; model.onnx runs and agrees with it
    net = load_trained(out / "model.pt")
    x = torch.randn(1, 3, 8, 8)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), sess.run(None, {"input": x.numpy()})[0], rtol=1e-3,
                                   atol=1e-4)
    # a finished run is returned without training again; another architecture is refused
    again = train_architecture("resnet20", "digits", out, recipe, max_per_class=40, progress=False)
    assert again["resumed_from_epoch"] == 2 and again["test_accuracy"] == res["test_accuracy"]
    with pytest.raises(TrainError, match="another architecture"):
        train_architecture("resnet32", "digits", out, recipe, max_per_class=40, progress=False)


def test_distillation_from_a_trained_teacher(tmp_path):
    recipe = TrainRecipe(epochs=1, batch_size=64)
    train_architecture("resnet20", "digits", tmp_path / "teacher", recipe, max_per_class=20, progress=False)
    res = train_architecture("resnet20:own-d1-w0.5|mb3k3-d1-w0.5|own-d2-w0.5", "digits", tmp_path / "student",
                             TrainRecipe(epochs=1, batch_size=64, distill=0.5), max_per_class=20, progress=False,
                             teacher=str(tmp_path / "teacher" / "model.pt"))
    assert res["teacher"].endswith("model.pt") and res["params"] < 272_474 / 2


def test_recipe_and_architecture_errors_name_the_input():
    with pytest.raises(TrainError, match="optimizer"):
        TrainRecipe(optimizer="lbfgs")
    with pytest.raises(TrainError, match="warm-up"):
        TrainRecipe(epochs=2, warmup_epochs=3)
    with pytest.raises(SearchError, match="resnet56"):  # the message lists the known models
        resolve_architecture("vgg16", 10, 3, 32)
    with pytest.raises(SearchError, match="depth"):
        resolve_architecture("resnet20:own-d9-w1|own-d3-w1|own-d3-w1", 10, 3, 32)
