"""`facetl faces`: cut a dataset of whole photos into a dataset of aligned face crops (facetl.data.face_crops),
with faces.csv and a contact sheet."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facetl.config import HELP
from facetl.data.face_crops import extract_faces
from facetl.data.spec import DataSpec
from facetl.errors import FacetlError
from facetl.flags import DEFAULTS, add_data, add_img_size, add_min_face, add_out, renamed
from facetl.preprocessing import LANDMARK_SOURCES, FaceAlignment


NAME = "faces"
SUMMARY = "cut whole photos into a dataset of aligned face crops, with faces.csv and a contact sheet"
EXAMPLES = [("facetl faces --data ../shared/datasets/celebrity_faces --out crops/ --img-size 112",
             "aligned crops, faces.csv and faces.png (look at it first)"),
            ("facetl faces --data ../shared/datasets/celebrity_faces_attributes.csv --images "
             "../shared/datasets/celebrity_faces --target Male --out crops-gender/ --min-face 40 --multi-face skip",
             "a table's images: its rows copied; larger faces only, photos with several faces left out")]
INTERRUPTED = "the crops made so far are kept; the same command goes on from there"


def add_arguments(parser) -> None:
    data = parser.add_argument_group("data")
    add_data(data, help="a folder of class folders of photos, or an attribute table (with --images)")
    parser.add_argument("old_data", nargs="?", help=argparse.SUPPRESS)  # the data, as it was given before --data
    crops = parser.add_argument_group("crops")
    size = add_img_size(crops, 112, "crop side in pixels (default 112)")
    renamed(crops, "--size", size)
    add_min_face(crops, 20, "smallest face side that counts (default 20)")
    crops.add_argument("--multi-face", choices=["largest", "skip", "error"], default="largest",
                       help="a photo with several faces: keep the largest (default), skip the photo, or stop")
    crops.add_argument("--landmarks", choices=LANDMARK_SOURCES, default=DEFAULTS.landmarks,
                       help=f"{HELP['landmarks']} (default {DEFAULTS.landmarks})")
    add_out(parser.add_argument_group("output"), "a new or empty folder for the crops", required=True)


def run(args) -> int:
    if args.target and ("," in args.target or args.target.strip() == "all"):
        raise FacetlError(f"facetl faces takes one --target column, not {args.target}; take the attributes one at a "
                          "time")
    alignment = FaceAlignment(min_face=args.min_face, multi_face=args.multi_face, landmarks=args.landmarks)
    summary = extract_faces(DataSpec(given_data(args), args.images, args.target), args.out, alignment, args.img_size,
                            progress=True)
    if summary.get("unreadable"):
        print(f"warning: {summary['unreadable']} photo(s) could not be read and were skipped (faces.csv says why)",
              file=sys.stderr)
    print(f"{summary['crops']} face crops from {summary['photos']} photos in {summary['out']}")
    print(f"every face found, used or why not: {Path(summary['out']) / 'faces.csv'}; "
          f"look first: {Path(summary['out']) / 'faces.png'}")
    return 0


def given_data(args) -> str:
    """--data, or the data given the older way, first after the command (with a warning naming --data)."""
    if args.old_data and args.data:
        raise FacetlError(f"give the data once, as --data (not also {args.old_data})")
    if args.old_data:
        print("warning: give the data as --data DATA; the bare DATA will go", file=sys.stderr)
    if not (args.data or args.old_data):
        raise FacetlError("facetl faces needs --data: a folder of class folders of photos, or a table")
    return args.data or args.old_data
