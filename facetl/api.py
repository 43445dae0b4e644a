"""facetl from Python: the few functions a user needs, as thin wrappers over what the commands run.

`load(run).predict(images)` answers as `facetl predict` does, `train(config, out=...)` trains as
`facetl train --config` does, and `evaluate(run)` writes the same `RUN/eval-SPLIT/` as `facetl evaluate`.
Every error a user can cause is a `facetl.errors.FacetlError` whose message is the line the command would print.
torch is imported when one of these is first called, not at `import facetl`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

from facetl.errors import FacetlError

if TYPE_CHECKING:  # for the signatures only: importing these pulls in torch
    from PIL.Image import Image

    from facetl.inference.photos import Prediction
    from facetl.config import TrainConfig
    from facetl.inference.classifiers import Classifier
    from facetl.train.fit import RunResult

ImageInput = Union[str, Path, "Image"]
PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


class Model:
    """A trained run, opened once and ready to classify images. Made by [`facetl.load`][facetl.api.load].

    Attributes:
        folder: the run folder it was opened from.
        class_names: the run's classes (or attributes), in the order of each answer's `probs`.
    """

    def __init__(self, folder: Path, classifier: "Classifier"):
        self.folder = folder
        self.classifier = classifier

    @property
    def class_names(self) -> list[str]:
        return list(self.classifier.class_names)

    def __repr__(self) -> str:
        return f"facetl.Model({str(self.folder)!r}, classes={self.class_names})"

    def predict(self, images: ImageInput | Sequence[ImageInput], faces: str = "auto",
                tta: str = "none", min_face: int | None = None) -> list["Prediction"]:
        """Classify photos, as `facetl predict RUN IMAGES...` does.

        Args:
            images: one image or a list of them: paths of image files or folders of images, or PIL images.
                A PIL image gets exactly the answer its pixels would get saved as a PNG file and named to
                `facetl predict` (it is so saved, in a temporary folder removed before `predict` returns);
                its answer's `path` is `<image N>`, N its place in `images`. Videos: `facetl predict`.
            faces: `auto` finds the faces in each photo when the run needs it (as the command does),
                `detect` always finds faces, `none` classifies each image whole.
            tta: `flip` averages each image's probabilities with its mirror image's.
            min_face: the smallest face to find, in pixels (default: the run's).

        Returns:
            One `Prediction` per image, or per face when faces were looked for, in the order given:
            `path`, `label`, `probability` (of `label`), `probs` (every class's, in `class_names` order) and,
            for faces, `face` (its number in the photo), `box` (x0, y0, x1, y1) and `score`. A photo in which
            no face was found has an empty `label` and says why in `note`.

        Raises:
            FacetlError: an image or folder that does not exist, or none of the images could be read.
        """
        import tempfile

        from facetl.inference.photos import predict

        items = list(images) if isinstance(images, (list, tuple)) else [images]
        with tempfile.TemporaryDirectory(prefix="facetl-api-") as scratch:
            paths, names = _as_paths(items, Path(scratch))
            result = predict(self.classifier, paths, faces, min_face, tta=tta)
        if not result.rows:
            raise FacetlError("none of the images could be read")
        return [dataclasses.replace(row, path=names.get(row.path, row.path)) for row in result.rows]


def _as_paths(items: list, scratch: Path) -> tuple[list[str], dict[str, str]]:
    """Paths as given; each PIL image saved losslessly into `scratch` (deleted after) so that it takes the
    command's own path, and the name its answer should carry instead of the scratch file's."""
    paths, names = [], {}
    for n, item in enumerate(items):
        if isinstance(item, (str, Path)):
            paths.append(str(item))
        elif hasattr(item, "save") and hasattr(item, "mode"):  # a PIL image, without importing PIL here
            path = scratch / f"image-{n}.png"
            if item.mode not in PNG_MODES:  # CMYK, YCbCr, ...: PNG has no such mode
                item = item.convert("RGB")
            item.save(path, format="PNG")
            paths.append(str(path))
            names[str(path)] = f"<image {n}>"
        else:
            raise FacetlError(f"images[{n}] is a {type(item).__name__}: give a path or a PIL image")
    return paths, names


def load(run: str | Path, device: str = "auto", precision: str = "auto", engine: str = "torch") -> Model:
    """Open a finished run (a folder `facetl train` made) to classify images with it.

    Args:
        run: the run folder (it holds `best.pt`); with `engine="onnx"`, the run folder holding
            `model.onnx` (made by `facetl export`) or the `.onnx` file itself.
        device: `auto` (a GPU when there is one), `cpu`, `cuda` or `cuda:N`.
        precision: `auto`, `fp32` or `bf16`.
        engine: `torch` or `onnx` (ONNX Runtime).

    Returns:
        A [`Model`][facetl.api.Model]; its `predict` classifies images.

    Raises:
        FacetlError: the folder is not a finished facetl run, or its files are damaged.
    """
    from facetl.inference.classifiers import open_classifier
    from facetl.runtime import Runtime

    if engine not in ("torch", "onnx"):
        raise FacetlError(f"engine must be torch or onnx, not {engine!r}")
    classifier = open_classifier(run, engine, Runtime.for_inference(device, precision))
    return Model(Path(run), classifier)


def train(config: str | Path | dict[str, Any] | "TrainConfig", out: str | Path | None = None,
          progress: bool = True, **overrides: Any) -> "RunResult":
    """Train one run, as `facetl train --config CONFIG --out OUT` does, and return when it has finished.

    Args:
        config: a YAML file (such as `configs/study4_smile_mobilenetv2.yaml` or a run's own `config.yaml`),
            a dict of the same keys, or a `TrainConfig`.
        out: the new run folder (default: a dated folder under `runs/`). An existing finished run there is
            never overwritten.
        progress: show progress bars.
        **overrides: any config key, as a command-line flag would give it (`epochs=3`, `strategy="frozen"`,
            `data="../shared/datasets/SMILEsmileD/SMILEs"`); it wins over the config.

    Returns:
        A `RunResult`: `folder` (the run folder), `metrics` (the test split's: `accuracy`,
        `balanced_accuracy`, `roc_auc`, ...) and `history` (one row per epoch).

    Raises:
        FacetlError: a bad config key or value, missing data, or an output place facetl refuses.
    """
    from facetl.config import TrainConfig, build_config, load_yaml, with_old_recipe
    from facetl.gradcam import TrainingPictures
    from facetl.train.fit import fit

    if isinstance(config, TrainConfig):
        values = config.to_dict()
    elif isinstance(config, dict):
        values = dict(config)
    else:
        values = with_old_recipe(load_yaml(config))
    values.update(overrides)
    if out is not None:
        values["out"] = str(out)
    resolved = build_config(values)
    if resolved.folds:
        raise FacetlError("facetl.train trains one run; cross-validation (folds) is `facetl train --folds K`")
    return fit(resolved, progress=progress, callbacks=[TrainingPictures()])


@dataclass
class Evaluation:
    """What [`facetl.evaluate`][facetl.api.evaluate] measured.

    Attributes:
        metrics: `accuracy`, `balanced_accuracy`, `roc_auc`, `n_images` and the rest, as `report.md` shows them.
        folder: `RUN/eval-SPLIT/`, which holds `report.md`, its plots and `predictions.csv`.
    """

    metrics: dict
    folder: Path

    @property
    def report(self) -> Path:
        """The evaluation's `report.md`."""
        return self.folder / "report.md"


def evaluate(run: str | Path, split: str = "test", data: str | None = None, images: str | None = None,
             tta: str = "none", groups: str | None = None, device: str = "auto") -> Evaluation:
    """Evaluate a run's best checkpoint on one of its splits, as `facetl evaluate RUN` does.

    Args:
        run: the run folder.
        split: `test`, `val` or `train`.
        data: where the run's data is now, when it has moved since training (`--data`).
        images: the images folder of an attribute table, when it has moved (`--images`).
        tta: `flip` averages each image's probabilities with its mirror image's.
        groups: a column of the data table (or `path:REGEX`) to add metrics per group.
        device: `auto`, `cpu`, `cuda` or `cuda:N` (in the precision `auto` picks for it).

    Returns:
        An [`Evaluation`][facetl.api.Evaluation]: the metrics, and the folder `RUN/eval-SPLIT/` holding the
        report, its plots and one row per image in `predictions.csv`.

    Raises:
        FacetlError: not a finished run, its data has changed or cannot be found, or the split is empty.
    """
    from facetl.evaluate_run import DataLocation, evaluate_run
    from facetl.runtime import Runtime

    metrics, folder = evaluate_run(run, split, Runtime.for_inference(device), False,
                                   DataLocation(data, images), tta=tta, groups=groups)
    return Evaluation(metrics, Path(folder))
