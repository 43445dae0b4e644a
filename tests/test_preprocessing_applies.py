"""Preprocessing applies itself: every path that prepares an image (the store, predict, serve, video, explain,
export) goes through `square`, `colour_crop` and `normalize`, and the ONNX metadata round-trips through it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facetl.data.images import decode_image
from facetl.preprocessing import FaceAlignment, Preprocessing

GREY = Preprocessing(24, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "grey", FaceAlignment(template="box"))


def photo(seed: int = 0, size: tuple[int, int] = (40, 30)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def test_a_decoded_file_is_the_records_square_of_its_pixels(tmp_path):
    pixels = photo()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    for colour in ("rgb", "grey"):
        decoded, _ = decode_image(tmp_path / "a.png", 24, colour)
        square = Preprocessing(24, (0.5,) * 3, (0.5,) * 3, colour).square(Image.fromarray(pixels))
        assert decoded.shape == (24, 24, 3) and np.array_equal(decoded, square)
    grey = GREY.square(Image.fromarray(pixels))
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])


def test_a_crop_is_made_grey_as_the_store_made_the_training_crops_and_rgb_is_left_alone():
    crop = photo(1, (24, 24))
    expected = np.asarray(Image.fromarray(crop).convert("L").convert("RGB"))
    assert np.array_equal(GREY.colour_crop(crop), expected)
    assert Preprocessing(24, (0.5,) * 3, (0.5,) * 3).colour_crop(crop) is crop


def test_normalize_takes_the_mean_away_and_divides_by_the_std_per_channel():
    x = torch.rand(2, 3, 5, 4)
    out = GREY.normalize(x)
    for c in range(3):
        assert torch.allclose(out[:, c], (x[:, c] - GREY.mean[c]) / GREY.std[c])
    assert out.dtype == x.dtype


def test_onnx_metadata_round_trips_and_an_old_export_reads_as_rgb_crops():
    metadata = GREY.to_onnx_metadata()
    assert all(isinstance(v, str) and k.startswith("facetl.") for k, v in metadata.items())
    assert Preprocessing.from_onnx_metadata(metadata) == GREY
    old = {k: v for k, v in metadata.items() if k not in ("facetl.colour", "facetl.faces")}
    assert Preprocessing.from_onnx_metadata(old) == Preprocessing(24, GREY.mean, GREY.std)
    with pytest.raises(KeyError):
        Preprocessing.from_onnx_metadata({"facetl.size": "24"})
