"""Backbones, heads and freezing strategies, assembled by `build_model`."""
from facetl.models.classifier import FaceClassifier, build_model

__all__ = ["FaceClassifier", "build_model"]
