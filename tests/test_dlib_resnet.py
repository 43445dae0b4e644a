"""dlib's face-recognition ResNet: the reader refuses what is not the network, the port gives dlib's own
descriptors, the "dlib" framing cuts dlib's own chip, and the embedding separates 24 celebrities untrained.

The reference is dlib itself (the dlib-bin wheel) and, for dlib's own landmarks, the 5-point model in the
face_recognition_models package (both in the `test` extra); tests that need them are skipped, with the
reason, where they are missing. The weights come from facetl's cache (`facetl backbones --fetch dlib`).
"""
from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from commandline import ENV, one_line_error
from facetl.data.faces import create_detector, faces_in_photo
from facetl.data.faces.align import TEMPLATES, align_face, reframe
from facetl.data.store import cache_root
from facetl.errors import FacetlError
from facetl.models.dlib_resnet import DLIB_MEAN, DLIB_STD, NotADlibNetwork, dlib_resnet, read_dlib_network
from facetl.models.packaged import cached_path, packaged, weight_file
from facetl.preprocessing import FaceAlignment

REAL_CACHE = cache_root()  # read before the isolated_cache fixture points FACETL_CACHE at a temporary folder


@pytest.fixture(scope="module")
def weights() -> Path:
    try:
        return weight_file("dlib", REAL_CACHE)
    except FacetlError as exc:
        pytest.skip(f"dlib weights not cached: {exc}")


@pytest.fixture(scope="module")
def dlib():
    try:
        import dlib
    except ImportError as exc:
        pytest.skip(f"the reference, dlib (pip install dlib-bin), cannot be imported: {exc}")
    return dlib


@pytest.fixture(scope="module")
def landmarks_5(dlib):
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        pytest.skip("dlib's 5-point landmark model comes from face_recognition_models==0.3.0 (test extra): "
                    "not installed")
    path = Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_5_face_landmarks.dat"
    return dlib.shape_predictor(str(path))


@pytest.fixture(scope="module")
def port(weights, torch_one_thread):
    return dlib_resnet("dlib").eval()


def embed(backbone, chips: list[np.ndarray]) -> np.ndarray:
    x = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(DLIB_MEAN).view(1, 3, 1, 1)) / torch.tensor(DLIB_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.cat([backbone(x[i:i + 32]).flatten(1) for i in range(0, len(x), 32)]).numpy()


def celebrity_files(shared_datasets, per_person: int, first: int = 0) -> tuple[list[Path], list[int]]:
    root = shared_datasets / "celebrity_faces"
    if not root.is_dir():
        pytest.skip(f"celebrity_faces not found in {shared_datasets}")
    files, labels = [], []
    for label, person in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        chosen = sorted(person.glob("*.jpg"), key=lambda f: int(f.stem))[first:first + per_person]
        files += chosen
        labels += [label] * len(chosen)
    return files, labels


def people_folder(shared_datasets, data: Path, people: int, per_person: int) -> tuple[list[Path], Path]:
    """The first `people` celebrities' first crops copied into class folders under `data`; the files chosen."""
    files, labels = celebrity_files(shared_datasets, per_person=per_person)
    for file, label in zip(files, labels):
        if label < people:
            (data / file.parent.name).mkdir(parents=True, exist_ok=True)
            (data / file.parent.name / file.name).write_bytes(file.read_bytes())
    return files, data


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---------------------------------------------------------------------------------------------------------

def test_the_reader_reads_29_convolutions_and_a_128d_embedding(weights):
    layers = read_dlib_network(weights)
    kinds = [layer.kind for layer in layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29 and kinds[-1] == "fc"
    assert layers[0].weight.shape == (32, 3, 7, 7) and layers[-1].weight.shape == (128, 256)


def test_truncated_and_other_files_are_refused_by_name(weights, tmp_path):
    data = weights.read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(NotADlibNetwork, match=r"cut.dat is truncated: it ends at byte 11,233,033"):
        read_dlib_network(cut)
    hdf5 = tmp_path / "model.dat"
    hdf5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
    with pytest.raises(NotADlibNetwork, match=r"model.dat is not dlib's face-recognition ResNet .*at byte 1, "):
        read_dlib_network(hdf5)
    # a dlib network file whose first layer is not the metric loss (a classifier's file starts so too)
    other = tmp_path / "other.dat"
    other.write_bytes(data[:2] + b"\x01\x0dloss_multiclass" + data[17:])
    with pytest.raises(NotADlibNetwork, match=r"loss layer 'loss_multicla' where dlib's face-recognition ResNet"):
        read_dlib_network(other)
    longer = tmp_path / "longer.dat"
    longer.write_bytes(data + b"\x00")
    with pytest.raises(NotADlibNetwork, match="1 bytes follow the network"):
        read_dlib_network(longer)


@pytest.mark.parametrize("damage, said", [
    (lambda data: data[:-1000], "is truncated (22,465,066 of 22,466,066 bytes of the dlib weight file)"),
    (lambda data: data[:5000] + bytes([data[5000] ^ 1]) + data[5001:], "is not the pinned dlib weight file"),
])
def test_a_damaged_cache_file_is_refused_in_one_line_by_the_command(weights, isolated_cache, tiny_folder_dataset,
                                                                     tmp_path, damage, said):
    """A cached file cut short, or with one bit changed, is refused before it is read, naming it and the command
    that fetches it again."""
    target = cached_path(packaged("dlib"), isolated_cache)
    target.parent.mkdir(parents=True)
    target.write_bytes(damage(weights.read_bytes()))
    result = subprocess.run([sys.executable, "-m", "facetl", "train", "--data", str(tiny_folder_dataset),
                             "--backbone", "dlib_resnet", "--weights", "dlib", "--epochs", "1",
                             "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env=dict(ENV, FACETL_CACHE=str(isolated_cache)))
    one_line_error(result, str(target), said, "facetl backbones --fetch dlib")
    assert not (tmp_path / "run" / "best.pt").exists()


def test_the_port_gives_dlibs_descriptor(dlib, port, weights, shared_datasets):
    """24 aligned chips (one per celebrity, resized to 150): dlib's compute_face_descriptor and the port agree."""
    files, _ = celebrity_files(shared_datasets, per_person=1)
    chips = [np.asarray(Image.fromarray(rgb(f)).resize((150, 150), Image.BILINEAR)) for f in files]
    reference = dlib.face_recognition_model_v1(str(weights))
    theirs = np.array([np.array(reference.compute_face_descriptor(chip)) for chip in chips])
    ours = embed(port, chips)
    assert len(chips) >= 20 and ours.shape == theirs.shape == (len(chips), 128)
    assert np.abs(ours - theirs).max() <= 1e-4
    assert np.linalg.norm(theirs[0] - theirs[1]) > 0.3  # different people: the check compares real descriptors


def _dlib_chip(dlib, landmarks_5, photo: np.ndarray):
    rects, scores, _ = dlib.get_frontal_face_detector().run(photo, 1)
    assert rects
    shape = landmarks_5(photo, rects[int(np.argmax(scores))])  # the astronaut's flag patch is a weak second face
    return np.asarray(dlib.get_face_chip(photo, shape, 150, 0.25)), shape


def _photos(shared_datasets, astronaut):
    """The astronaut, and celebrity crops (not the files the template was measured on) enlarged in grey photos."""
    yield astronaut
    files, _ = celebrity_files(shared_datasets, per_person=1, first=1)
    for i, file in enumerate(files[:5]):
        face = Image.fromarray(rgb(file)).resize((260, 260), Image.BICUBIC).rotate(8 * (i - 2), Image.BICUBIC,
                                                                                     fillcolor=(128, 128, 128))
        photo = Image.new("RGB", (560, 480), (128, 128, 128))
        photo.paste(face, (150, 100))
        yield np.asarray(photo)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def test_the_dlib_framing_cuts_dlibs_own_chip(dlib, landmarks_5, weights, shared_datasets, astronaut,
                                              torch_one_thread):
    """A photo's face, cut by the framing dlib_resnet declares (MTCNN, then the "dlib" template), looks like
    dlib's own chip (its detector, 5-point model and get_face_chip) and dlib describes the two alike; the
    ArcFace crop that facetl cuts for other backbones, resized to 150, is much further from it."""
    detector = create_detector("mtcnn")
    describe = dlib.face_recognition_model_v1(str(weights))
    correlation, distance, arcface_distance = [], [], []
    for photo in _photos(shared_datasets, astronaut):
        reference, shape = _dlib_chip(dlib, landmarks_5, photo)
        ours = faces_in_photo(photo, FaceAlignment(template=dlib_resnet.pretrained["framing"]), 150,
                              detector=detector).used[0].crop
        arcface = faces_in_photo(photo, FaceAlignment(), 150, detector=detector).used[0].crop
        correlation.append(np.corrcoef(ours.ravel().astype(float), reference.ravel().astype(float))[0, 1])
        theirs = np.array(describe.compute_face_descriptor(photo, shape))
        distance.append(np.linalg.norm(np.array(describe.compute_face_descriptor(ours)) - theirs))
        arcface_distance.append(np.linalg.norm(np.array(describe.compute_face_descriptor(arcface)) - theirs))
    assert np.median(correlation) >= 0.85, correlation
    # dlib calls two descriptors one person below 0.6
    assert np.median(distance) <= 0.2 and max(distance) < 0.35, distance
    assert np.median(arcface_distance) > 1.5 * np.median(distance), (arcface_distance, distance)


def test_zero_shot_dlib_embeddings_separate_24_celebrities(port, shared_datasets):
    """No training of the network: 20 crops a person, re-cut from their ArcFace framing to dlib's, embedded;
    a logistic regression on half of them names the other half."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    files, labels = celebrity_files(shared_datasets, per_person=20)
    chips = [reframe(rgb(f), "arcface", "dlib", 150) for f in files]
    features = embed(port, chips)
    train, test, y_train, y_test = train_test_split(features, labels, test_size=0.5, stratify=labels,
                                                    random_state=0)
    accuracy = LogisticRegression(max_iter=2000).fit(train, y_train).score(test, y_test)
    assert len(set(labels)) == 24 and accuracy >= 0.97, accuracy


def test_reframe_puts_the_landmarks_where_the_target_template_has_them():
    """An ArcFace crop's landmarks are the template's: re-cut to the dlib framing, they land on dlib's."""
    base, points = TEMPLATES["arcface"]
    crop = np.zeros((base, base, 3), np.uint8)
    for x, y in points.round().astype(int):
        crop[y - 1:y + 2, x - 1:x + 2] = 255
    chip = reframe(crop, "arcface", "dlib", 150)
    for x, y in TEMPLATES["dlib"][1]:
        # the least-squares fit moves each point a little: the two templates are not the same shape
        window = chip[int(y) - 4:int(y) + 5, int(x) - 4:int(x) + 5, 0]
        assert window.max() > 60, (x, y)
    with pytest.raises(FacetlError, match="the 'box' framing cuts the detector's face box, and none was given"):
        reframe(crop, "arcface", "box", 64)
    with pytest.raises(FacetlError, match="the 'box' framing is cut from the face box, not from five landmarks"):
        reframe(crop, "box", "dlib", 150)


@pytest.fixture
def cached_weights(weights, isolated_cache) -> None:
    """The real weight file, linked into this test's own cache (what `facetl backbones --fetch dlib` makes)."""
    target = cached_path(packaged("dlib"), isolated_cache)
    target.parent.mkdir(parents=True)
    target.symlink_to(weights)


def test_a_frozen_dlib_run_caches_its_features_and_exports_to_onnx(cached_weights, shared_datasets, tmp_path,
                                                                   torch_one_thread):
    """`facetl train --backbone dlib_resnet --weights dlib --strategy frozen` on two people's crops: the run
    caches the 128-d descriptors, records where its weights came from, and its ONNX export answers as PyTorch."""
    from facetl.cli import main
    from facetl.inference.onnx import OnnxClassifier
    from facetl.inference.run import load_run
    from facetl.runtime import Runtime

    files, data = people_folder(shared_datasets, tmp_path / "two", people=2, per_person=8)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--backbone", "dlib_resnet", "--weights", "dlib", "--strategy",
                 "frozen", "--epochs", "2", "--out", str(run)]) == 0
    loaded = load_run(run)
    assert loaded.record.weights.kind == "packaged" and loaded.record.preprocessing.size == 150
    assert "features cached" in loaded.record.data_path_note
    assert main(["export", str(run)]) == 0
    onnx = OnnxClassifier(run / "model.onnx")
    chips = np.stack([np.asarray(Image.fromarray(rgb(f)).resize((150, 150), Image.BILINEAR)) for f in files[:6]])
    expected = loaded.classify(chips, Runtime.for_inference("cpu", "fp32"))
    assert np.abs(onnx.classify(chips) - expected).max() < 1e-4


def test_arcface_crops_are_recut_to_dlibs_framing_everywhere(cached_weights, shared_datasets, tmp_path,
                                                              torch_one_thread):
    """`--crops arcface`: celebrity_faces' ArcFace crops are cut again as dlib's chips for dlib_resnet (the face
    at dlib's size and place, not the 112-pixel crop stretched to 150), in training, predict and the ONNX export;
    a photo's faces are cut to dlib's framing too, not to ArcFace's."""
    from facetl.cli import main
    from facetl.inference.onnx import OnnxClassifier
    from facetl.inference.run import load_run
    from facetl.runtime import Runtime

    files, data = people_folder(shared_datasets, tmp_path / "three", people=3, per_person=6)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--backbone", "dlib_resnet", "--weights", "dlib", "--crops",
                 "arcface", "--epochs", "2", "--out", str(run)]) == 0
    record = load_run(run).record
    assert record.preprocessing.recut == ("arcface", "dlib")
    assert "arcface crops re-cut to the dlib framing" in record.preprocessing.describe()
    assert record.preprocessing.photo_faces().template == "dlib"

    crop, loaded, cpu = rgb(files[0]), load_run(run), Runtime.for_inference("cpu", "fp32")
    recut = loaded.classify(reframe(crop, "arcface", "dlib", 150)[None], cpu)[0]
    stretched = loaded.classify(np.asarray(Image.fromarray(crop).resize((150, 150), Image.BILINEAR))[None], cpu)[0]
    assert np.abs(recut - stretched).max() > 1e-3  # the two cuts are different pictures to the model
    out = tmp_path / "predicted.csv"
    assert main(["predict", str(run), str(files[0]), "--faces", "none", "--out", str(out)]) == 0
    with out.open() as table:
        row = next(csv.DictReader(table))
    predicted = [float(row[f"p_{name}"]) for name in loaded.class_names]
    assert np.abs(np.array(predicted) - recut).max() < 1e-3, (row, recut)

    assert main(["export", str(run)]) == 0
    onnx = OnnxClassifier(run / "model.onnx")
    assert onnx.preprocessing.recut == ("arcface", "dlib")


def test_crops_and_faces_detect_together_are_refused_in_one_line(tiny_folder_dataset, tmp_path):
    from commandline import facetl

    result = facetl("train", "--data", str(tiny_folder_dataset), "--crops", "arcface", "--faces", "detect",
                    "--out", str(tmp_path / "run"))
    one_line_error(result, "crops", "faces detect")
    assert not (tmp_path / "run").exists()
