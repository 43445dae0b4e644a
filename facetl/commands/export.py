"""`facetl export`: a run's whole classifier as one ONNX file (facetl/inference/onnx.py runs such a file).

The graph's input is what a user has after decoding: `images`, a uint8 (batch, size, size, 3) RGB batch,
0-255, resized (and, for a grey run, made grey) exactly as `facetl.data.images.decode_image` does; the
batch axis is dynamic. uint8 NHWC rather than float NCHW because it is what every decoder hands out, it
is a quarter of the bytes to pass in, and the scaling to [0, 1], the run's mean/std and the final
sigmoid or softmax then live inside the graph, where no caller can get them wrong. The output,
`probabilities`, is float32 (batch, classes) in the order of the class names: the same numbers as
`LoadedRun.classify`. Colour conversion stays outside the graph, as it does for `classify`, so both
take the same pixels.

Everything needed to prepare an image travels in the model's `metadata_props`, under `facetl.*` keys
(values are plain strings, lists and records as JSON): size, mean, std, colour, faces, class names,
input and output description, facetl version, the run's title and backbone. Readers ignore keys they do
not know, so later fields (a decision threshold, say) can be added without breaking older readers.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from facetl.errors import FacetlError
from facetl.flags import add_out, add_overwrite, add_run
from facetl.version import __version__
from facetl.inference.onnx import FORMAT_VERSION, INPUT_NAME, OUTPUT_NAME, first_line
from facetl.inference.run import load_run
from facetl.models.outputs import probabilities
from facetl.outputs import refuse_misplaced
from facetl.preprocessing import Preprocessing
from facetl.runfolder import atomic_write_bytes

NAME = "export"
SUMMARY = "a run's whole classifier as one file for other runtimes (ONNX)"
EXAMPLES = [("facetl export runs/smile", "runs/smile/model.onnx"),
            ("facetl predict runs/smile ../shared/datasets/SMILEsmileD/SMILEs/positives --engine onnx",
             "then predict with it on ONNX Runtime")]


def add_arguments(parser) -> None:
    add_run(parser)
    parser.add_argument("--format", default="onnx", metavar="FORMAT", help="onnx (default)")
    add_out(parser, "where to write it (default RUN/model.onnx)", metavar="FILE")
    add_overwrite(parser, "FILE if it exists")


def run(args) -> int:
    out = export_run(args.run, args.format, args.out, args.overwrite)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): input uint8 (batch, H, W, 3) RGB, "
          f"output class probabilities; preprocessing and class names in its metadata")
    return 0


FORMATS = ("onnx",)
PROTOBUF_LIMIT = 2 * 1024**3   # one .onnx file is one protobuf message, which cannot exceed 2 GiB
INPUT_DESCRIPTION = ("images: uint8 (batch, size, size, 3), RGB 0-255, NHWC; resized to size x size and, "
                     "for colour=grey, made grey in all three channels before it enters the graph")
OUTPUT_DESCRIPTION = ("probabilities: float32 (batch, classes) in class_names order; sigmoid/softmax applied (to the "
                      "logits divided by facetl.temperature)")


class ExportedClassifier(nn.Module):
    """uint8 NHWC images -> probabilities: the model with the preprocessing that a run's record fixes."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)  # a constant of the graph: logits / T when the run was calibrated
        self.preprocessing = preprocessing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # the same operations, in the same order, as to_float + ImageSource.prepare + probabilities
        x = images.permute(0, 3, 1, 2).float() / 255.0
        return probabilities(self.model(self.preprocessing.normalize(x)), self.temperature)


def onnx_metadata(preprocessing: Preprocessing, class_names: list[str], title: str, backbone: str,
                  threshold: float | None = None, temperature: float = 1.0) -> dict[str, str]:
    return {
        "facetl.format": FORMAT_VERSION,
        "facetl.version": __version__,
        "facetl.title": title,
        "facetl.backbone": backbone,
        **preprocessing.to_onnx_metadata(),
        "facetl.class_names": json.dumps(list(class_names)),
        "facetl.threshold": json.dumps(threshold),  # two classes: class 1 when its probability reaches it
        "facetl.temperature": json.dumps(temperature),  # already applied inside the graph; for the record
        "facetl.input": INPUT_DESCRIPTION,
        "facetl.input_layout": "NHWC",
        "facetl.input_dtype": "uint8",
        "facetl.output": OUTPUT_DESCRIPTION,
    }


def onnx_model(model: nn.Module, preprocessing: Preprocessing, metadata: dict[str, str], temperature: float = 1.0):
    """An eval-mode classifier -> a checked onnx.ModelProto with a dynamic batch axis and the metadata."""
    import onnx

    size = _parameter_bytes(model)
    if size > PROTOBUF_LIMIT * 0.95:
        raise FacetlError(f"the model's weights take {size / 2**30:.1f} GiB: one .onnx file holds at most 2 GiB")
    wrapped = ExportedClassifier(model, preprocessing, temperature).eval()
    example = torch.zeros(2, preprocessing.size, preprocessing.size, 3, dtype=torch.uint8)
    # batch 2, not 1, in the example: torch.export would otherwise specialise the batch axis to 1
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's internal deprecation notes mean nothing to a user
            program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes={"images": {0: batch}},
                                        external_data=False, verbose=False)
    except Exception as exc:  # torch.export and the translator raise many types; the user needs one line
        raise FacetlError(f"the model could not be exported to ONNX ({first_line(exc)})") from None
    proto = program.model_proto
    proto.doc_string = f"facetl classifier: {metadata.get('facetl.title', '')}. {INPUT_DESCRIPTION}. {OUTPUT_DESCRIPTION}."
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(run_folder: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """A finished run's best checkpoint -> a checked ONNX file (default RUN/model.onnx); returns its path."""
    run_folder = Path(run_folder)
    run = load_run(run_folder)  # first: "not a run" is the clearer message when RUN itself is wrong
    if run.record.multi_attribute:
        raise FacetlError(f"{run_folder} is a multi-attribute run; ONNX export is for single-target runs so far "
                          "(use facetl predict on the run)")
    out = Path(out) if out else run_folder / "model.onnx"
    refuse_misplaced(out, "--out", own_run=run_folder)  # inside this run, or anywhere but another run
    out = _check_out(out, overwrite, run_folder)
    metadata = onnx_metadata(run.record.preprocessing, run.class_names, run.record.title, run.config.backbone,
                             run.record.threshold, run.record.temperature)
    proto = onnx_model(run.model.float().eval(), run.record.preprocessing, metadata, run.record.temperature)
    try:
        atomic_write_bytes(out, proto.SerializeToString())
    except OSError as exc:
        raise FacetlError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def export_run(run_folder: str | Path, fmt: str = "onnx", out: str | Path | None = None,
               overwrite: bool = False) -> Path:
    """`facetl export`: one entry point whatever the format, so a later format is one more branch."""
    if fmt not in FORMATS:
        raise FacetlError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    return export_onnx(run_folder, out, overwrite)


def _check_out(out: Path, overwrite: bool, run_folder: Path) -> Path:
    """Refuse before the export, which takes seconds to a minute, not after it."""
    if out.is_dir():
        raise FacetlError(f"{out} is a folder; give a file name such as {out / 'model.onnx'}")
    if out.exists() and out.suffix.lower() != ".onnx" and out.resolve().is_relative_to(run_folder.resolve()):
        # --overwrite replaces an earlier export, never the run itself (its best.pt, config, reports)
        raise FacetlError(f"{out} is one of the run's own files; export writes an .onnx file, e.g. "
                          f"{run_folder / 'model.onnx'}")
    if out.exists() and not overwrite:
        raise FacetlError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise FacetlError(f"cannot write {out}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise FacetlError(f"cannot write {out}: folder {out.parent} is not writable")
    return out


def _parameter_bytes(model: nn.Module) -> int:
    return sum(t.numel() * 4 for t in list(model.parameters()) + list(model.buffers()))
