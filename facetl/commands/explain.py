"""`facetl explain`: Grad-CAM overlays and feature-map grids of a run, for some images (facetl/gradcam.py)."""
from __future__ import annotations

from pathlib import Path

from facetl.errors import FacetlError
from facetl.flags import add_out, add_overwrite, add_run, add_runtime_flags
from facetl.gradcam import ExplainOptions, explain
from facetl.inference.photos import collect_images
from facetl.inference.run import load_run
from facetl.outputs import input_reads, refuse_misplaced
from facetl.runtime import Runtime

NAME = "explain"
SUMMARY = "Grad-CAM overlays and feature-map grids of a run, for some images"
SMILES = "../shared/datasets/SMILEsmileD/SMILEs"
EXAMPLES = [(f"facetl explain runs/smile {SMILES}/negatives/negatives7/10105.jpg --out explain/ --class positives",
             "Grad-CAM of the predicted class and of positives"),
            (f"facetl explain runs/smile {SMILES}/negatives/negatives7/10105.jpg --out explain/ --layer features.10 "
             "--overwrite", "an earlier stage (facetl backbones mobilenet_v2 numbers them)")]


def add_arguments(parser) -> None:
    add_run(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="photos, or folders searched for them")
    parser.add_argument("--class", dest="class_name", metavar="NAME",
                        help="also show the Grad-CAM of this class (default: the predicted class only)")
    parser.add_argument("--layer", metavar="NAME",
                        help="backbone stage to explain, features.K (default: the last frozen stage if the run froze "
                             "part of the backbone, else the last stage; facetl backbones NAME lists them)")
    output = parser.add_argument_group("output")
    add_out(output, "folder for IMAGE.gradcam.png and IMAGE.features.png (not the run folder)", required=True)
    add_overwrite(output)
    add_runtime_flags(parser)


def run(args) -> int:
    refuse_misplaced(args.out, "--out", input_reads(args.images))
    files = collect_images(args.images)
    loaded = load_run(args.run)
    result = explain(loaded, files, Path(args.out), Runtime.for_inference(args.device, args.precision),
                     ExplainOptions(args.class_name, args.layer, args.overwrite), progress=True)
    if not result.explained:
        first = f"; the first: {result.skipped[0][0]}: {result.skipped[0][1]}" if result.skipped else ""
        raise FacetlError(f"none of the images could be explained{first}")
    print(f"explained {result.explained} image(s) at {result.layer} in {args.out}")
    return 1 if result.skipped else 0
