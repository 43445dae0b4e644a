"""`facetl export` and `OnnxClassifier`: ONNX files that give PyTorch's probabilities, on real images.

Three tiny real runs are trained once for the module (MobileNetV2 and VGG-16 on SMILEsmileD, and a
24-class VGG-16 on the celebrity faces); each is exported once, because an export takes seconds.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from facetl.cli import main
from facetl.data.folders import find_images
from facetl.data.images import decode_image
from facetl.errors import FacetlError
from facetl.commands.export import export_onnx
from facetl.inference.onnx import OnnxClassifier
from facetl.inference.run import load_run
from facetl.runtime import Runtime

PARITY_IMAGES = 200
TOLERANCE = 1e-4
METADATA_KEYS = ("facetl.format", "facetl.version", "facetl.title", "facetl.backbone", "facetl.size", "facetl.mean",
                 "facetl.std", "facetl.colour", "facetl.class_names", "facetl.input", "facetl.input_layout",
                 "facetl.output")


def train(root: Path, data: Path, name: str, backbone: str, size: int, limit: int, cache: Path) -> Path:
    out = root / name
    code = main(["train", "--data", str(data), "--weights", "none", "--img-size", str(size), "--epochs", "1",
                 "--limit", str(limit), "--strategy", "last-block", "--backbone", backbone, "--out", str(out),
                 "--cache-dir", str(cache)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_datasets) -> dict[str, Path]:
    """mnv2 (exported by the CLI), vgg16 and identity (exported by export_onnx), all trained from scratch."""
    smiles = shared_datasets / "SMILEsmileD" / "SMILEs"
    celebrities = shared_datasets / "celebrity_faces"
    if not smiles.is_dir() or not celebrities.is_dir():
        pytest.skip(f"SMILEsmileD/SMILEs or celebrity_faces not found in {shared_datasets}")
    root, cache = tmp_path_factory.mktemp("export-runs"), tmp_path_factory.mktemp("export-cache")
    runs = {"mnv2": train(root, smiles, "mnv2", "mobilenet_v2", 64, 300, cache),
            "vgg16": train(root, smiles, "vgg16", "vgg16", 32, 300, cache),
            "identity": train(root, few_of_each(celebrities, root / "celebrities", 10), "identity", "vgg16", 32,
                              240, cache)}
    assert main(["export", str(runs["mnv2"])]) == 0
    export_onnx(runs["vgg16"])
    stale = runs["identity"] / "identity.onnx"
    stale.write_bytes(b"an older export")
    export_onnx(runs["identity"], stale, overwrite=True)
    return runs


def few_of_each(classes: Path, out: Path, n: int) -> Path:
    """The first n images of every class folder: all 24 people (the smallest has 22 images, which a
    stratified --limit small enough to be fast would leave out) in a run that trains in seconds."""
    for folder in sorted(p for p in classes.iterdir() if p.is_dir()):
        (out / folder.name).mkdir(parents=True)
        for image in find_images(folder)[:n]:
            shutil.copy(image, out / folder.name / image.name)
    return out


def onnx_path(run: Path) -> Path:
    return run / ("identity.onnx" if run.name == "identity" else "model.onnx")


@pytest.fixture(scope="module")
def smile_images(shared_datasets) -> list[Path]:
    """200 real SMILEsmileD photos spread over both classes (every n-th file of the sorted list)."""
    files = find_images(shared_datasets / "SMILEsmileD" / "SMILEs")
    return files[::len(files) // PARITY_IMAGES][:PARITY_IMAGES]


def decoded(files: list[Path], classifier: OnnxClassifier) -> np.ndarray:
    prep = classifier.preprocessing
    return np.stack([decode_image(f, prep.size, prep.colour)[0] for f in files])


@pytest.mark.parametrize("name", ["mnv2", "vgg16"])
def test_onnx_runtime_gives_pytorchs_probabilities_on_200_real_images(runs, smile_images, name):
    classifier = OnnxClassifier(onnx_path(runs[name]))
    images = decoded(smile_images, classifier)
    assert images.shape == (PARITY_IMAGES, classifier.preprocessing.size, classifier.preprocessing.size, 3)
    expected = load_run(runs[name]).classify(images, Runtime.for_inference("cpu", "fp32"))
    got = classifier.classify(images)
    assert got.shape == expected.shape == (PARITY_IMAGES, 2) and got.dtype == np.float32
    assert np.abs(got - expected).max() < TOLERANCE
    assert np.allclose(got.sum(axis=1), 1, atol=1e-5)


def test_a_many_class_run_exports_softmax_probabilities_that_match(runs, shared_datasets):
    """The identity run replaced a stale file given with overwrite=True; 24 classes, softmax in the graph."""
    classifier = OnnxClassifier(onnx_path(runs["identity"]))
    run = load_run(runs["identity"])
    assert classifier.class_names == run.class_names and len(run.class_names) == 24
    files = find_images(shared_datasets / "celebrity_faces")[::40][:48]
    images = decoded(files, classifier)
    expected = run.classify(images, Runtime.for_inference("cpu", "fp32"))
    assert np.abs(classifier.classify(images) - expected).max() < TOLERANCE


def test_the_file_passes_the_checker_and_carries_the_preprocessing(runs):
    import onnx

    path = onnx_path(runs["mnv2"])
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    metadata = {p.key: p.value for p in model.metadata_props}
    assert set(METADATA_KEYS) <= set(metadata)
    record = load_run(runs["mnv2"]).record
    classifier = OnnxClassifier(path)
    assert classifier.preprocessing == record.preprocessing
    assert classifier.class_names == record.class_names == ["negatives", "positives"]
    assert classifier.title == record.title and metadata["facetl.input_layout"] == "NHWC"
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "images" and graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [64, 64, 3]


def test_the_batch_axis_is_dynamic(runs, smile_images):
    classifier = OnnxClassifier(onnx_path(runs["mnv2"]))
    images = decoded(smile_images[:8], classifier)
    whole = classifier.classify(images)
    assert classifier.classify(images[:1]).shape == (1, 2)
    assert np.abs(classifier.classify(images[1:8]) - whole[1:8]).max() < 1e-5
    assert classifier.classify(images[:0]).shape == (0, 2)


def test_wrong_images_are_refused_in_one_line(runs):
    classifier = OnnxClassifier(onnx_path(runs["mnv2"]))
    for bad in (np.zeros((1, 64, 64, 3), np.float32), np.zeros((1, 32, 32, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)):
        with pytest.raises(FacetlError, match="takes uint8 images of shape") as caught:
            classifier.classify(bad)
        assert "\n" not in str(caught.value)


def test_an_existing_file_is_not_overwritten(runs, capsys):
    path = onnx_path(runs["mnv2"])
    before = path.stat().st_mtime_ns
    assert main(["export", str(runs["mnv2"])]) == 2
    assert_one_line(capsys, "exists; pass --overwrite")
    assert path.stat().st_mtime_ns == before


def test_the_cli_refuses_bad_input_in_one_line(runs, tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert_one_line(capsys, "is not a finished facetl run")
    assert main(["export", str(runs["mnv2"]), "--format", "tflite"]) == 2
    assert_one_line(capsys, "unknown export format 'tflite'; known: onnx")
    assert main(["export", str(runs["mnv2"]), "--out", str(tmp_path / "missing" / "m.onnx")]) == 2
    assert_one_line(capsys, "does not exist")
    assert main(["export", str(runs["mnv2"]), "--out", str(tmp_path)]) == 2
    assert_one_line(capsys, "is a folder")


def test_foreign_and_garbage_files_are_refused_in_one_line(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    foreign = tmp_path / "foreign.onnx"
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(foreign))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    for path, message in ((foreign, "was not exported by facetl"), (garbage, "is not an ONNX model"),
                          (tmp_path / "absent.onnx", "ONNX model not found")):
        with pytest.raises(FacetlError, match=message) as caught:
            OnnxClassifier(path)
        assert "\n" not in str(caught.value)


def assert_one_line(capsys, fragment: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and fragment in err, err


def test_predict_with_the_onnx_engine_gives_the_torch_engines_answers(runs, smile_images, tmp_path):
    images = [str(p) for p in smile_images[:20]]
    tables = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / f"{engine}.csv"
        # fp32 on both: on a CPU with native bf16, torch's auto precision computes the frozen part in bf16
        assert main(["predict", str(runs["mnv2"]), *images, "--engine", engine, "--precision", "fp32",
                     "--out", str(out)]) == 0
        tables[engine] = list(csv.DictReader(open(out, newline="")))
    assert [r["label"] for r in tables["onnx"]] == [r["label"] for r in tables["torch"]]
    for a, b in zip(tables["onnx"], tables["torch"]):
        assert abs(float(a["probability"]) - float(b["probability"])) < 1e-4
    # a run never exported: one line saying how to make the file
    assert main(["predict", str(runs["vgg16"] / ".." / "missing"), images[0], "--engine", "onnx"]) == 2
