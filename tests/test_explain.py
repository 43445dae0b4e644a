"""`facetl explain` and the evaluation's Grad-CAM gallery, on two tiny real runs trained once for the module:
a binary smile run (MobileNetV2, last-block, so the default layer is in the frozen part) and a 24-class
celebrity run (MobileNetV2, frozen: the default layer is the last stage).

The check that Grad-CAM looks at the right place: with a linear head on global average pooling, the
evidence for a class at each place of the last stage is known exactly (CAM, Zhou et al. 2016: the class's
weights dotted with the activations there), and Grad-CAM must give that map, class by class, sign included.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facetl.cli import main
from facetl.data.folders import find_images
from facetl.data.images import decode_image
from facetl.errors import FacetlError
from facetl.evaluate.predictions import SplitResult
from facetl.evaluate_run import evaluate_run
from facetl.gradcam import (default_layer, grad_cam, map_sides, output_stems, resolve_layer, run_targets,
                            write_gradcam_gallery)
from facetl.inference.run import load_run
from facetl.runtime import Runtime

SIZE = 64
CPU = Runtime.for_inference("cpu", "fp32")
# one torch thread for the whole module, training included: on a shared 2-core machine two spinning threads
# made a Grad-CAM of six images ten times slower
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def train(out: Path, data: Path, strategy: str, limit: int, cache: Path) -> Path:
    assert main(["train", "--data", str(data), "--weights", "none", "--img-size", str(SIZE), "--epochs", "1",
                 "--limit", str(limit), "--strategy", strategy, "--backbone", "mobilenet_v2", "--precise-bn", "off",
                 "--out", str(out), "--cache-dir", str(cache)]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_datasets, torch_one_thread) -> dict[str, Path]:
    smiles, celebrities = shared_datasets / "SMILEsmileD" / "SMILEs", shared_datasets / "celebrity_faces"
    if not smiles.is_dir() or not celebrities.is_dir():
        pytest.skip(f"SMILEsmileD/SMILEs or celebrity_faces not found in {shared_datasets}")
    root, cache = tmp_path_factory.mktemp("explain-runs"), tmp_path_factory.mktemp("explain-cache")
    people = root / "celebrities"
    for folder in sorted(p for p in celebrities.iterdir() if p.is_dir()):  # all 24 people, 10 images each
        (people / folder.name).mkdir(parents=True)
        for image in find_images(folder)[:10]:
            shutil.copy(image, people / folder.name / image.name)
    return {"smile": train(root / "smile", smiles, "last-block", 160, cache),
            "identity": train(root / "identity", people, "frozen", 240, cache)}


@pytest.fixture(scope="module")
def photos(shared_datasets) -> dict[str, list[Path]]:
    smiles = shared_datasets / "SMILEsmileD" / "SMILEs"
    return {"positives": find_images(smiles / "positives")[:3], "negatives": find_images(smiles / "negatives")[:3]}


def prepared(files: list[Path], run) -> np.ndarray:
    prep = run.record.preprocessing
    return np.stack([decode_image(f, prep.size, prep.colour)[0] for f in files])


def test_explain_writes_a_gradcam_and_a_feature_grid_per_image(runs, photos, tmp_path, capsys):
    files = photos["positives"][:1] + photos["negatives"][:1]
    assert main(["explain", str(runs["smile"]), *map(str, files), "--out", str(tmp_path / "out"),
                 "--class", "positives", "--device", "cpu"]) == 0
    for f in files:
        for kind in ("gradcam", "features"):
            with Image.open(tmp_path / "out" / f"{f.stem}.{kind}.png") as png:
                assert png.width > 300 and png.height > 200
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("wrote ") for line in lines) == 2 and "features.13" in lines[-1]
    assert not any(p.name.endswith(".gradcam.png") for p in runs["smile"].iterdir())


def test_gradcam_reaches_into_the_frozen_part_and_has_the_images_shape(runs, photos):
    run = load_run(runs["smile"])
    assert run.record.cut == 14 and default_layer(run) == "features.13"
    assert not any(p.requires_grad for p in run.model.backbone.features[:14].parameters())
    images = prepared(photos["positives"] + photos["negatives"], run)
    cams = grad_cam(run, images, CPU)
    assert cams.maps.shape == (6, SIZE, SIZE) and cams.raw.shape == (6, 4, 4)
    assert (cams.maps >= 0).all() and all(m.max() > m.min() for m in cams.maps)
    # the images are prepared as the run prepares them: the same probabilities as predict's path
    np.testing.assert_allclose(cams.probs, run.classify(images, CPU), atol=1e-5)
    assert cams.targets == list(cams.probs.argmax(1))
    with torch.inference_mode():  # a caller's inference mode does not stop the gradients
        np.testing.assert_allclose(grad_cam(run, images, CPU).raw, cams.raw, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["smile", "identity"])
def test_gradcam_of_the_last_stage_is_the_class_activation_map(runs, photos, name):
    """Linear head on global average pooling: Grad-CAM of target t must be ReLU(sign * w_column . A) / (h*w)."""
    run = load_run(runs[name])
    files = photos["positives"] if name == "smile" else find_images(runs[name].parent / "celebrities")[::60][:4]
    images = prepared(files, run)
    weights = run.model.head[-1].weight.detach().numpy()
    targets = run_targets(run)
    peaks = []
    for t in sorted({0, 1, len(targets) - 1}):
        cams = grad_cam(run, images, CPU, "features.18", [t] * len(images), keep_activations=True)
        acts = cams.activations
        expected = np.maximum(targets[t].sign * np.einsum("c,bchw->bhw", weights[targets[t].column], acts), 0)
        expected /= acts.shape[2] * acts.shape[3]
        np.testing.assert_allclose(cams.raw, expected, rtol=1e-3, atol=1e-6 * max(expected.max(), 1e-3))
        peaks.append(expected.max())
    assert max(peaks) > 0  # some class has positive evidence somewhere: the comparison was not all zeros


def test_the_two_classes_of_a_binary_run_light_up_different_places(runs, photos):
    """class 0 is -logit: its map before ReLU is the other's negated, so after ReLU they never overlap."""
    run = load_run(runs["smile"])
    images = prepared(photos["positives"] + photos["negatives"], run)
    no, yes = (grad_cam(run, images, CPU, targets=[k] * len(images)).raw for k in (0, 1))
    assert not ((no > 0) & (yes > 0)).any()
    assert all((n > 0).any() or (y > 0).any() for n, y in zip(no, yes))


def test_unknown_class_is_one_line_listing_the_runs_classes(runs, photos, tmp_path, capsys):
    code = main(["explain", str(runs["smile"]), str(photos["positives"][0]), "--out", str(tmp_path), "--class", "Smiling"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'Smiling'" in err and "negatives, positives" in err
    assert not list(tmp_path.iterdir())


def test_unknown_layer_is_one_line_naming_the_valid_ones(runs, photos, tmp_path, capsys):
    code = main(["explain", str(runs["smile"]), str(photos["positives"][0]), "--out", str(tmp_path), "--layer", "conv5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "features.K, K = 0 to 18" in err and "features.0 to features.13" in err and "facetl backbones" in err
    run = load_run(runs["smile"])
    for spelling in ("13", "features.13", "backbone.features.13"):
        assert resolve_layer(run, spelling)[0] == "features.13"
    assert resolve_layer(run, "features.13.conv.0")[0] == "features.13.conv.0"
    with pytest.raises(FacetlError, match="features.K"):
        resolve_layer(run, "features.19")


def test_existing_output_is_refused_without_overwrite(runs, photos, tmp_path, capsys):
    args = ["explain", str(runs["smile"]), str(photos["negatives"][0]), "--out", str(tmp_path)]
    assert main(args) == 0
    written = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == written
    assert main(args + ["--overwrite"]) == 0
    assert main(["explain", str(runs["smile"]), str(photos["negatives"][0]), "--out", str(runs["smile"])]) == 2


def test_a_24_class_run_explains_its_prediction_and_another_person(runs, tmp_path):
    run = load_run(runs["identity"])
    # a full run's last stage, features.18, is 2x2 at 64 px: the default steps back to the last 4x4 stage
    assert len(run.class_names) == 24 and default_layer(run) == "features.13"
    assert map_sides(run.model.backbone.features, 64)[13:] == [4, 2, 2, 2, 2, 2]
    folder = tmp_path / "photos"  # a folder, as a user gives one: two photos of the fourth person
    folder.mkdir()
    for image in find_images(runs["identity"].parent / "celebrities" / run.class_names[3])[:2]:
        shutil.copy(image, folder / image.name)
    assert main(["explain", str(runs["identity"]), str(folder), "--out", str(tmp_path / "out"), "--class",
                 run.class_names[20]]) == 0
    assert len(list((tmp_path / "out").glob("*.gradcam.png"))) == 2
    assert len(list((tmp_path / "out").glob("*.features.png"))) == 2


def test_files_with_the_same_name_in_different_folders_get_different_outputs():
    files = [Path("a/positives7/1.jpg"), Path("b/negatives7/1.jpg"), Path("c/2.jpg"), Path("d/positives7/1.jpg")]
    assert output_stems(files) == ["positives7_1", "negatives7_1", "2", "positives7_1-2"]


@pytest.mark.parametrize("when", ["after training", "by evaluate"])
def test_evaluate_writes_the_gradcam_gallery_and_the_report_shows_it(runs, when):
    out = runs["smile"] if when == "after training" else evaluate_run(runs["smile"], "test", CPU, progress=False)[1]
    with Image.open(out / "gradcam.png") as png:
        assert png.width > 600
    report = (out / "report.md").read_text()
    assert "Grad-CAM of the most confident right and wrong test images: gradcam.png" in report
    assert (out / "errors.png").is_file()


def test_a_failing_gallery_is_one_warning_and_leaves_no_file(runs, tmp_path, monkeypatch):
    import facetl.gradcam

    path = tmp_path / "gradcam.png"
    path.write_bytes(b"from an earlier evaluation")

    def broken(*args, **kwargs):
        raise RuntimeError("no gradients today\nsecond line")

    monkeypatch.setattr(facetl.gradcam, "gradcam_gallery", broken)
    with pytest.warns(UserWarning, match="no gradients today") as caught:
        split = SplitResult("test", np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]),
                            np.zeros((2, SIZE, SIZE, 3), np.uint8), ["a", "b"])
        write_gradcam_gallery(load_run(runs["smile"]), split, path, CPU)
    assert len(caught) == 1 and "second line" not in str(caught[0].message)
    assert not path.exists()
