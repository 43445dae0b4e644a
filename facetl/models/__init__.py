"""Backbones, heads and freezing strategies, assembled by `build_model`."""
from facetl.models.classifier import BuiltModel, FaceClassifier, TrainablePart, build_model, rebuild_model

__all__ = ["BuiltModel", "FaceClassifier", "TrainablePart", "build_model", "rebuild_model"]
