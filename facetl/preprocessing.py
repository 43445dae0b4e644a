"""What every image goes through before the model sees it, as one typed record.

A run resolves its `Preprocessing` once, from its weights (a facetl run passes on its own, ImageNet
weights their backbone's), then the flags on top. Every checkpoint stores it, and training, evaluation,
prediction and anything later read it from there and nowhere else, so a photo is prepared at
prediction exactly as the training images were. It also applies itself: `square` (a whole image: colour,
then resized), `colour_crop` (an aligned face crop) and `normalize` (a float batch) are the only places an
image is made grey or normalised, and `to_onnx_metadata` / `from_onnx_metadata` the only place its ONNX
metadata keys are named.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

COLOURS = ("rgb", "grey")
MAX_SIZE = 4096  # a side beyond this is a damaged record, not a model (the --img-size flag stops at 2048)
# Where the five landmarks a crop is aligned with come from (FaceAlignment.landmarks)
LANDMARK_SOURCES = ("detector", "refined")


@dataclass(frozen=True)
class FaceAlignment:
    """How faces are found in whole photos and cut out (`--faces detect`); None for a run on face crops."""

    detector: str = "mtcnn"
    template: str = "arcface"     # the five-landmark template a crop is aligned to
    scale: float = 1.0            # face size relative to the template; below 1 keeps more of the head
    min_face: int = 20            # smallest face side, in pixels of the photo, that counts as a face
    multi_face: str = "largest"   # a training photo with several faces: largest | skip | error
    min_score: float = 0.9        # detector confidence below this is reported as "low score", not used
    detect_side: int = 1024       # photos are searched for faces on a copy at most this long (crops: original)
    # where the five landmarks come from: "detector" (as found; every run before this setting existed) or
    # "refined" (the detector's landmark network again on the face turned upright and centred, and on its
    # mirror image, averaged: a quarter less alignment error; data/faces/refine.py)
    landmarks: str = "refined"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FaceAlignment":
        """A saved record; a setting it lacks is what runs did before the setting existed."""
        return cls(**{**_BEFORE_SETTINGS, **values})


# What an older record's missing settings meant: it must reopen cutting faces exactly as it was trained.
_BEFORE_SETTINGS = {"landmarks": "detector"}


@dataclass(frozen=True)
class Preprocessing:
    size: int                                 # square input side, pixels
    mean: tuple[float, float, float]          # per channel, on [0, 1] values
    std: tuple[float, float, float]
    colour: str = "rgb"                       # rgb | grey (made three-channel: a model trained on grey photos)
    faces: FaceAlignment | None = None        # None: images are face crops already

    def to_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std), "colour": self.colour,
                "faces": self.faces.to_dict() if self.faces else None}

    def __post_init__(self) -> None:
        # a saved record is read back through here: a damaged one fails naming its field, not on every image
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 1 <= self.size <= MAX_SIZE:
            raise ValueError(f"preprocessing.size: {self.size!r} is not a size from 1 to {MAX_SIZE} pixels")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"preprocessing.{name}: {list(values)} is not three finite numbers")
        if not all(v > 0 for v in self.std):
            raise ValueError(f"preprocessing.std: {list(self.std)} has a value that is not above 0")
        if self.colour not in COLOURS:
            raise ValueError(f"preprocessing.colour: {self.colour!r} is not one of {', '.join(COLOURS)}")

    @classmethod
    def from_dict(cls, values: dict) -> "Preprocessing":
        faces = values.get("faces")
        if not isinstance(faces, (dict, type(None))):
            raise ValueError(f"preprocessing.faces: {faces!r} is not a record")
        size = values["size"]
        return cls(int(size) if isinstance(size, str) and size.isdigit() else size,
                   tuple(float(v) for v in values["mean"]), tuple(float(v) for v in values["std"]),
                   values.get("colour", "rgb"), FaceAlignment.from_dict(faces) if faces else None)

    @classmethod
    def pixels(cls, size: int, colour: str = "rgb") -> "Preprocessing":
        """Only the pixel part (size and colour), for what stores uint8 images before any run normalises them:
        the decoded-image store and its workers."""
        return cls(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), colour)

    def in_colour(self, image: Image.Image) -> Image.Image:
        """An RGB image in the run's colour: grey is grey in all three channels (a model trained on grey photos)."""
        return image.convert("L").convert("RGB") if self.colour == "grey" else image

    def square(self, image: Image.Image) -> np.ndarray:
        """A whole RGB image as the model's input: the run's colour, then resized (bilinear) to (size, size, 3)
        uint8, as every training image of a run on crops was."""
        return np.asarray(self.in_colour(image).resize((self.size, self.size), Image.BILINEAR), dtype=np.uint8)

    def colour_crop(self, crop: np.ndarray) -> np.ndarray:
        """An aligned face crop, already (size, size, 3) uint8, in the run's colour, as the store made the
        training crops."""
        return np.asarray(self.in_colour(Image.fromarray(crop))) if self.colour == "grey" else crop

    def normalize(self, x):
        """A float batch (N, 3, H, W) in [0, 1], a torch tensor, with the run's mean taken away and divided by its
        std, per channel (in x's dtype, on x's device)."""
        mean = x.new_tensor(self.mean).view(1, 3, 1, 1)
        std = x.new_tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def to_onnx_metadata(self) -> dict[str, str]:
        """This record as an exported model's metadata (strings; lists and records as JSON)."""
        return {"facetl.size": str(self.size), "facetl.mean": json.dumps(list(self.mean)),
                "facetl.std": json.dumps(list(self.std)), "facetl.colour": self.colour,
                "facetl.faces": json.dumps(self.faces.to_dict() if self.faces else None)}

    @classmethod
    def from_onnx_metadata(cls, metadata: dict[str, str]) -> "Preprocessing":
        """The record `to_onnx_metadata` wrote (an export from before colour and faces were kept: rgb, crops).
        KeyError, TypeError or ValueError when it is missing or damaged."""
        return cls.from_dict({"size": metadata["facetl.size"], "mean": json.loads(metadata["facetl.mean"]),
                              "std": json.loads(metadata["facetl.std"]),
                              "colour": metadata.get("facetl.colour", "rgb"),
                              "faces": json.loads(metadata.get("facetl.faces", "null"))})

    def describe(self) -> str:
        mean = ", ".join(f"{v:.3f}" for v in self.mean)
        std = ", ".join(f"{v:.3f}" for v in self.std)
        faces = f", faces aligned by {self.faces.detector} to {self.faces.template}" if self.faces else ""
        return f"{self.size}x{self.size} {self.colour}, mean ({mean}) std ({std}){faces}"

    def with_overrides(self, size: int | None = None, normalize: list[float] | None = None,
                       colour: str | None = None) -> tuple["Preprocessing", list[str]]:
        """This record with the flags that were given applied; also the names of the values they changed."""
        changed = {}
        if size is not None and size != self.size:
            changed["size"] = size
        if normalize is not None:
            mean, std = split_normalize(normalize)
            if mean != self.mean:
                changed["mean"] = mean
            if std != self.std:
                changed["std"] = std
        if colour is not None and colour != self.colour:
            changed["colour"] = colour
        return dataclasses.replace(self, **changed), sorted(changed)


def split_normalize(values: list[float]) -> tuple[tuple, tuple]:
    """`--normalize MEAN,STD` (one for every channel) or three means and three stds."""
    if len(values) == 2:
        return (float(values[0]),) * 3, (float(values[1]),) * 3
    return tuple(float(v) for v in values[:3]), tuple(float(v) for v in values[3:])
