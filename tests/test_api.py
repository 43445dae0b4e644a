"""The Python API (facetl/api.py) as a user meets it: the examples of docs/api.md run as written, in a fresh
interpreter, from a folder laid out like the repository root; `import facetl` stays light; a bad run is one
FacetlError line."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from facetl.errors import FacetlError

REPOSITORY = Path(__file__).resolve().parents[1]
API_PAGE = REPOSITORY / "docs" / "api.md"
SHARED = REPOSITORY.parent / "shared"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


RUNNER = """
import sys
blocks = {blocks!r}
for number, block in enumerate(blocks, 1):
    print(f"--- block {{number}}", flush=True)
    exec(compile(block, f"docs/api.md block {{number}}", "exec"), {{"__name__": "__main__"}})
"""


@pytest.fixture(scope="module")
def examples_ran(tmp_path_factory):
    """docs/api.md's python blocks, in order, in one fresh process whose working directory has `runs/` and
    `../shared/datasets` as the repository root has them; the fer2013 weights copied into its own cache."""
    from facetl.models.packaged import PACKAGED, cached_path

    machine = cached_path(PACKAGED["fer2013"], Path.home() / ".cache" / "facetl")
    if not machine.is_file() or not (SHARED / "datasets" / "SMILEsmileD" / "SMILEs").is_dir():
        pytest.skip(f"needs the fer2013 weights ({machine}: facetl backbones --fetch fer2013) and SMILEsmileD")
    root = tmp_path_factory.mktemp("api")
    work, cache = root / "repo", root / "cache"
    work.mkdir()
    (root / "shared").symlink_to(SHARED)
    target = cached_path(PACKAGED["fer2013"], cache)
    target.parent.mkdir(parents=True)
    target.write_bytes(machine.read_bytes())
    blocks = python_blocks(API_PAGE)
    env = dict(os.environ, FACETL_CACHE=str(cache), PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", RUNNER.format(blocks=blocks)], cwd=work, env=env,
                            capture_output=True, text=True, timeout=600)
    return blocks, result, work


def test_the_api_page_examples_run_as_written(examples_ran):
    blocks, result, work = examples_ran
    assert len(blocks) >= 4, "docs/api.md should show train, load + predict (paths and a PIL image) and evaluate"
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.count("--- block") == len(blocks)
    run = work / "runs" / "smile-py"
    assert (run / "best.pt").is_file() and (run / "config.yaml").is_file()
    assert "['negatives', 'positives']" in out
    # each photo path answered with one of the run's labels and a probability
    for name in ("positives7/100.jpg", "negatives7/10105.jpg"):
        line = next(line for line in out.splitlines() if name in line)
        label, probability = line.split()[-2:]
        assert label in ("negatives", "positives") and 0.0 <= float(probability) <= 1.0
    assert "<image 0> {'negatives': " in out  # the PIL image's answer, named by its place
    assert (run / "eval-test" / "report.md").is_file() and (run / "eval-test" / "predictions.csv").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["runs"], "the examples wrote outside runs/"


def test_a_pil_image_gets_the_answer_of_its_file(examples_ran):
    from PIL import Image

    import facetl

    *_, work = examples_ran
    photo = SHARED / "datasets" / "SMILEsmileD" / "SMILEs" / "positives" / "positives7" / "100.jpg"
    model = facetl.load(work / "runs" / "smile-py", device="cpu")
    (from_file,) = model.predict(photo)
    (from_pil,) = model.predict([Image.open(photo)])
    assert from_pil.path == "<image 0>" and from_file.path == str(photo)
    assert from_pil.label == from_file.label
    assert from_pil.probs == pytest.approx(from_file.probs, abs=1e-6)
    (from_cmyk,) = model.predict(Image.open(photo).convert("CMYK"))  # a mode PNG cannot hold is made RGB
    assert from_cmyk.label in model.class_names


def test_evaluate_returns_what_report_md_says(examples_ran):
    import facetl

    *_, work = examples_ran
    evaluation = facetl.evaluate(work / "runs" / "smile-py", split="val", device="cpu")
    assert evaluation.folder == work / "runs" / "smile-py" / "eval-val"
    assert f"| {evaluation.metrics['balanced_accuracy']:.4f} |" in evaluation.report.read_text()


def test_import_facetl_imports_no_torch_until_a_function_is_called():
    code = ("import sys, facetl; assert 'torch' not in sys.modules; "
            "assert callable(facetl.load) and callable(facetl.train) and callable(facetl.evaluate); "
            "assert 'torch' not in sys.modules; print(sorted(facetl.__all__))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(REPOSITORY)))
    assert result.returncode == 0, result.stderr
    assert "'evaluate', 'load', 'train'" in result.stdout


def test_train_and_evaluate_stay_functions_beside_their_subpackages():
    """facetl/train/ and facetl/evaluate/ are subpackages too: importing them must not replace the functions, and
    the modules stay importable as before."""
    import inspect

    import facetl
    import facetl.evaluate.metrics as metrics
    import facetl.train.fit as fit
    from facetl.evaluate import report

    assert fit.fit and metrics.METRICS and report.write_evaluation
    assert facetl.train.fit is fit and facetl.evaluate.metrics is metrics
    assert "out" in inspect.signature(facetl.train).parameters
    assert "split" in inspect.signature(facetl.evaluate).parameters
    assert facetl.evaluate.__doc__.startswith("Evaluate a run's best checkpoint")
    with pytest.raises(FacetlError, match="is not a finished facetl run"):
        facetl.evaluate("no/such/run")


def test_a_folder_that_is_not_a_run_is_one_facetl_error(tmp_path):
    import facetl

    with pytest.raises(FacetlError, match="is not a finished facetl run"):
        facetl.load(tmp_path)
    with pytest.raises(FacetlError, match="unknown key"):
        facetl.train({"data": str(tmp_path), "no_such_key": 1}, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_something_that_is_not_an_image_is_named(examples_ran):
    import facetl

    *_, work = examples_ran
    model = facetl.load(work / "runs" / "smile-py", device="cpu")
    with pytest.raises(FacetlError, match=r"images\[0\] is a int"):
        model.predict([3])
