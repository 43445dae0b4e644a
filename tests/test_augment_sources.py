"""Batch augmentation, and the two data sources of training: computed prefix (ImageSource) vs cached one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facetl.config import TrainConfig
from facetl.data.augment import BatchAugment, to_float
from facetl.preprocessing import Preprocessing
from facetl.errors import FacetlError
from facetl.models import build_model
from facetl.data.features import FeatureRequest, FeatureSource, FrozenPart, ImageSource, open_feature_source
from facetl.data.store import ImageStore
from facetl.preprocessing import Preprocessing
from facetl.runtime import Precision, Runtime

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CPU = torch.device("cpu")
FP32 = Precision("fp32", CPU)
RUNTIME = Runtime(CPU, FP32)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.rand(6, 3, 12, 12, generator=gen(0))


# ---------------------------------------------------------------- BatchAugment


def test_augment_names():
    assert not BatchAugment([]).active
    assert BatchAugment(["flip"]).flip_only
    assert not BatchAugment(["flip", "jitter"]).flip_only
    assert BatchAugment(["rotate"]).rotation == 10.0
    assert BatchAugment(["rotate:25"]).rotation == 25.0
    assert not BatchAugment(["rotate:0"]).active


def test_to_float_makes_channels_first_unit_range():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    x = to_float(images, CPU)
    assert x.shape == (2, 3, 5, 4) and x.dtype == torch.float32
    assert x[1, 2, 3, 1].item() == pytest.approx(images[1, 3, 1, 2] / 255.0)
    normalised = Preprocessing(5, (0.5,) * 3, (0.5,) * 3).normalize(x)
    assert normalised.min() >= -1 and normalised.max() <= 1 and normalised.dtype == torch.float32
    assert normalised[1, 2, 3, 1].item() == pytest.approx((images[1, 3, 1, 2] / 255.0 - 0.5) / 0.5)


def test_flip_mirrors_some_samples_and_keeps_the_rest(batch):
    out = BatchAugment(["flip"])(batch, gen(1))
    assert out.shape == batch.shape
    flipped = [bool(torch.equal(o, b.flip(2))) for o, b in zip(out, batch)]
    kept = [bool(torch.equal(o, b)) for o, b in zip(out, batch)]
    assert all(f != k for f, k in zip(flipped, kept))  # each sample either mirrored or untouched
    assert any(flipped) and any(kept)  # (true for this seed)
    forced = BatchAugment(["flip"])(batch, gen(1), flips=torch.ones(6, dtype=torch.bool))
    assert torch.equal(forced, batch.flip(3))


@pytest.mark.parametrize("names", [["flip"], ["jitter"], ["rotate:30"], ["flip", "jitter", "rotate"]])
def test_augment_keeps_shape_and_range_and_follows_the_seed(batch, names):
    augment = BatchAugment(names)
    out = augment(batch, gen(7))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, batch)
    assert torch.equal(augment(batch, gen(7)), out)
    assert not torch.equal(augment(batch, gen(8)), out)


def test_rotation_keeps_the_centre_and_turns_the_rest():
    x = torch.zeros(1, 3, 33, 33)
    x[:, :, 16, :] = 1.0  # a horizontal bar through the centre
    out = BatchAugment(["rotate:40"])(x, gen(3))
    assert out[0, :, 16, 16].min() > 0.9
    assert not torch.allclose(out, x, atol=0.05)


def test_shift_and_scale_move_and_resize_the_face_by_at_most_what_was_asked():
    """What face alignment gets wrong on a photo: a few pixels of position and a few percent of size."""
    x = torch.zeros(64, 3, 64, 64)
    x[:, :, 24:40, 24:40] = 1.0  # a 16-pixel square in the middle, once per sample
    rows = torch.arange(64, dtype=torch.float32)

    def centre_and_side(batch):
        mass = batch[:, 0]
        total = mass.sum(dim=(1, 2))
        cy = (mass.sum(dim=2) * rows).sum(dim=1) / total
        cx = (mass.sum(dim=1) * rows).sum(dim=1) / total
        return cy, cx, total.sqrt()

    cy, cx, _ = centre_and_side(BatchAugment(["shift:3"])(x, gen(1)))
    moved = torch.maximum((cy - 31.5).abs(), (cx - 31.5).abs())
    assert moved.max() <= 3.05 and moved.max() > 1.5  # up to 3 pixels each way, and it does move
    _, _, side = centre_and_side(BatchAugment(["scale:10"])(x, gen(2)))
    assert ((side / 16) - 1).abs().max() <= 0.11 and ((side / 16) - 1).abs().max() > 0.04
    assert BatchAugment(["shift"]).shift == 2.0 and not BatchAugment(["shift:0", "scale:0"]).active


def test_fp16_on_cpu_is_refused():
    with pytest.raises(FacetlError, match="fp16"):
        Precision("fp16", CPU)


# ---------------------------------------------------------------- ImageSource vs FeatureSource


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    config = TrainConfig(data="x", backbone="mobilenet_v2", weights="none", strategy="last-block", img_size=32)
    built = build_model(config, 2, log=lambda m: None)
    model, plan = built.model, built.plan
    assert 0 < plan.cut < len(model.backbone.features)
    return model, plan.cut


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PREP = Preprocessing(32, MEAN, STD)


def sources(model, cut, images, augment_names, cache_dir):
    augment = BatchAugment(augment_names)
    frozen = FrozenPart(model, cut)
    live = ImageSource(images, frozen, PREP, augment, RUNTIME)
    request = FeatureRequest(ImageStore(images, [""] * len(images), {}, "store-key"), np.arange(10), np.arange(7),
                             augment)
    cached = open_feature_source(frozen, request, PREP, RUNTIME, cache_dir, 4, progress=False)
    return live, cached


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_cached_prefix_equals_computed_prefix(small_model, images, tmp_path, mode):
    model, cut = small_model
    live, cached = sources(model, cut, images, [], tmp_path)
    assert isinstance(cached, FeatureSource) and cached.views == "plain"
    model.train(mode == "train")  # training mode too: the frozen prefix's batch norms stay in eval mode
    index = np.array([7, 2, 5, 0, 9])
    a, b = live.batch(index, None), cached.batch(index, None)
    assert a.shape == b.shape == (5,) + tuple(a.shape[1:]) and a.dim() == 4
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cached.batch(index, gen(0)), a, rtol=1e-4, atol=1e-5)  # plain: no views drawn
    model.eval()


def test_flip_views_match_with_the_same_seed(small_model, images, tmp_path):
    model, cut = small_model
    model.eval()
    live, cached = sources(model, cut, images, ["flip"], tmp_path)
    assert cached.views == "flip"
    index = np.array([6, 1, 3, 0, 4, 2])
    a, b = live.batch(index, gen(11)), cached.batch(index, gen(11))
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    plain = cached.batch(index, None)
    assert not torch.allclose(b, plain)  # some samples were flipped


def test_feature_cache_is_reused_and_keyed_by_weights(small_model, images, tmp_path):
    model, cut = small_model
    _, first = sources(model, cut, images, [], tmp_path)
    assert "reused" not in first.description
    _, again = sources(model, cut, images, [], tmp_path)
    assert "reused from cache" in again.description
    np.testing.assert_array_equal(np.asarray(again.features), np.asarray(first.features))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            model.backbone.features[0][0].weight.mul_(2)
        _, changed = sources(model, cut, images, [], tmp_path)
        assert "reused" not in changed.description
    finally:
        model.load_state_dict(state)
    assert not list((tmp_path / "features").glob("*.building-*"))
