"""Latency predictors: ONNX graph IR, kernel detection, LightGBM kernel and graph models.

    from predictors import Predictor
    p = Predictor.load("data/predictors/local-cpu.lgb")
    p.predict("resnet50.onnx").latency_ms          # ONNX path
    med, low, high = p.predict_specs([space.kernel_specs(a) for a in archs])   # batch path

Modules: `model` (the Predictor), `kernel_models` (per-kind kernel models), `corrections`
(graph-level corrections and their registry), `spec_cache` (the batch path's cache), `persist`
(save/load), `fileformat` (the .lgb container), `numerics` (ridge, k-fold, conformal, metrics),
`tables` (latency tables), `adapt` and `measured` (few-shot adaptation, measured networks),
`graph` and `detect` (ONNX graphs and their kernels), `features`, `trees`, `catalog`, `errors`.
"""
from .errors import PredictorError, PredictorStageError
from .fileformat import PredictorFileError
from .model import Prediction, Predictor

__all__ = ["Predictor", "Prediction", "PredictorError", "PredictorFileError", "PredictorStageError"]
