"""Latency predictors: ONNX graph IR, kernel detection, LightGBM kernel and graph models.

    from predictors import Predictor
    p = Predictor.load("data/predictors/local-cpu.lgb")
    p.predict("resnet50.onnx").latency_ms          # ONNX path
    med, low, high = p.predict_specs([space.kernel_specs(a) for a in archs])   # batch path
"""
from .fileformat import PredictorFileError
from .model import Prediction, Predictor, PredictorError

__all__ = ["Predictor", "Prediction", "PredictorError", "PredictorFileError"]
