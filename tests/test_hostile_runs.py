"""Issue 21, the run's own files and the cache: damaged or crafted run files are one line naming the file and
the field; nothing facetl did not make is deleted; no command replaces a run's checkpoint; no NaN is an answer;
and no CSV facetl writes is a formula to a spreadsheet.

Every case goes through the real command (in this process, through `main()`, as the installed `facetl` does),
on a tiny run trained once for the module.
"""
from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from commandline import facetl, in_process, one_line_error
from facetl.cli import main


def write_images(folder: Path, names: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / name)


def digests(root: Path) -> dict[str, str]:
    """Every file under root (links not followed) -> SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile-runs")
    data = root / "faces"
    write_images(data / "no_smile", [f"{i:02d}.jpg" for i in range(12)], 0)
    write_images(data / "smile", [f"{i:02d}.jpg" for i in range(12)], 1)
    run = root / "run"
    cache = root / "cache"
    assert main(["train", "--data", str(data), "--weights", "none", "--img-size", "32", "--strategy", "full",
                 "--epochs", "1", "--out", str(run), "--cache-dir", str(cache)]) == 0
    assert main(["export", str(run)]) == 0
    return {"root": root, "data": data, "run": run, "cache": cache, "image": data / "smile" / "00.jpg"}


def copy_run(world, tmp_path: Path, name: str = "run") -> Path:
    copy = tmp_path / name
    shutil.copytree(world["run"], copy)
    return copy


# ---- 3. `cache clear` removes only what facetl made ----

def test_cache_clear_deletes_only_facetls_own_entries(world, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(world["cache"], cache)  # the entries the module's training made
    made = [p for kind in ("images", "features") if (cache / kind).is_dir() for p in (cache / kind).iterdir()]
    assert made
    write_images(cache / "images" / "cats", ["tabby.jpg"], 2)                    # a user's folders, named like
    (cache / "features").mkdir(exist_ok=True)                                    # facetl's, holding their files
    (cache / "features" / "notes.txt").write_text("mine")
    (cache / "images" / "0123456789abcdef01234567").mkdir()                      # key-like, but no meta.json
    (cache / "images" / "0123456789abcdef01234567" / "keep.txt").write_text("mine too")
    (cache / "readme.txt").write_text("a file beside the cache")
    users = {k: v for k, v in digests(cache).items() if not any(k.startswith(str(p.relative_to(cache)))
                                                                 for p in made)}
    listing = in_process(capsys, "cache", "ls", "--cache-dir", str(cache))
    assert f"{len(made)} entries" in listing.stdout and "cats" not in listing.stdout
    result = in_process(capsys, "cache", "clear", "--cache-dir", str(cache))
    assert result.returncode == 0 and f"cleared {len(made)} cache entries" in result.stdout
    assert not any(p.exists() for p in made)
    assert digests(cache) == users  # byte-identical, none missing


# ---- 4. no command replaces a run's checkpoint; files that are not checkpoints are called what they are ----

def test_export_refuses_to_overwrite_the_runs_own_files(world, tmp_path, capsys):
    run = copy_run(world, tmp_path)
    before = digests(run)
    for name in ("best.pt", "config.yaml", "history.csv"):
        result = in_process(capsys, "export", str(run), "--out", str(run / name), "--overwrite")
        one_line_error(result, str(run / name), "one of the run's own files")
    assert digests(run) == before
    assert in_process(capsys, "export", str(run), "--out", str(run / "model.onnx"), "--overwrite").returncode == 0
    assert in_process(capsys, "predict", str(run), str(world["image"])).returncode == 0


@pytest.mark.parametrize("content, words", [
    (None, "it is an ONNX model"),                  # what the reported export wrote over best.pt
    (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "it is a JPEG image"),
    (b"hello, I am a text file\n", "it is text"),
])
def test_a_best_pt_that_is_not_a_checkpoint_is_called_what_it_is(world, tmp_path, capsys, content, words):
    run = copy_run(world, tmp_path)
    (run / "best.pt").write_bytes(content if content is not None else (world["run"] / "model.onnx").read_bytes())
    line = one_line_error(in_process(capsys, "predict", str(run), str(world["image"])), "best.pt", words)
    assert "Python objects" not in line


# ---- 7. NaN weights are refused by one rule; no NaN probability is ever written ----

def test_a_checkpoint_of_nan_weights_is_refused_and_no_nan_is_written(world, tmp_path, capsys):
    run = copy_run(world, tmp_path)
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    for tensor in checkpoint["model"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    torch.save(checkpoint, run / "best.pt")
    out = tmp_path / "preds.csv"
    for command in (("predict", str(run), str(world["image"]), "--out", str(out)), ("export", str(run), "--out",
                                                                                     str(tmp_path / "m.onnx")),
                    ("evaluate", str(run))):
        one_line_error(in_process(capsys, *command), "best.pt", "NaN or inf")
    assert not out.exists() and not (tmp_path / "m.onnx").exists()


# ---- 10. crafted or damaged run files: one line naming the file and the field ----

def _set(path: list, value):
    def change(checkpoint):
        holder = checkpoint
        for key in path[:-1]:
            holder = holder[key]
        holder[path[-1]] = value
    return change


@pytest.mark.parametrize("change, words", [
    (_set(["config"], [1, 2]), ["config", "not a mapping"]),
    (_set(["model"], [1, 2]), ["state dict"]),
    (_set(["record", "temperature"], "hot"), ["temperature", "'hot'"]),
    (_set(["record", "threshold"], "x"), ["threshold", "'x'"]),
    (_set(["record", "class_names"], ["only"]), ["class_names", "two or more"]),
    (_set(["record", "preprocessing", "size"], 0), ["preprocessing.size", "0"]),
    (_set(["record", "preprocessing", "std"], [0.5, 0.0, 0.5]), ["preprocessing.std"]),
    (_set(["config", "epochs"], "many"), ["epochs"]),
    (_set(["record"], "a record"), ["run record"]),
], ids=["config-list", "model-list", "temperature", "threshold", "one-class", "size-0", "std-0", "config-value",
        "record-text"])
def test_a_crafted_checkpoint_is_one_line_naming_the_field(world, tmp_path, capsys, change, words):
    run = copy_run(world, tmp_path)
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, run / "best.pt")
    for command in (("predict", str(run), str(world["image"])), ("export", str(run), "--out",
                                                                  str(tmp_path / "m.onnx"))):
        one_line_error(in_process(capsys, *command), "best.pt", *words)


def test_a_bad_history_row_stops_only_what_reads_the_history(world, tmp_path, capsys):
    run = copy_run(world, tmp_path)
    with open(run / "history.csv", "a") as f:
        f.write("x,y,z\n")
    assert in_process(capsys, "predict", str(run), str(world["image"])).returncode == 0
    assert in_process(capsys, "export", str(run), "--out", str(tmp_path / "m.onnx")).returncode == 0
    one_line_error(in_process(capsys, "evaluate", str(run)), "history.csv", "line 3")


def test_a_broken_data_paths_json_is_one_line_on_evaluate(world, tmp_path, capsys):
    run = tmp_path / "moved" / "run"  # a moved run, so evaluate needs data_paths.json to find its data
    shutil.copytree(world["run"], run)
    (run / "data_paths.json").write_text("{broken")
    config = (run / "config.yaml").read_text().replace(str(world["data"]), str(tmp_path / "gone"))
    (run / "config.yaml").write_text(config)
    one_line_error(in_process(capsys, "evaluate", str(run)), "data_paths.json", "--data")


def test_an_onnx_file_with_facetl_metadata_on_a_foreign_graph_is_refused(world, tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    real = onnx.load(str(world["run"] / "model.onnx"))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(foreign, {p.key: p.value for p in real.metadata_props})
    path = tmp_path / "foreign.onnx"
    onnx.save(foreign, str(path))
    one_line_error(in_process(capsys, "predict", str(path), str(world["image"]), "--engine", "onnx"),
                   "foreign.onnx", "not a facetl export")


# ---- 18. no CSV cell is a formula ----

def test_predict_csv_neutralises_file_names_that_spreadsheets_would_run(world, tmp_path):
    folder = tmp_path / "photos"
    names = ["=cmd|' -C calc'!A0.jpg", "+SUM(1+1).jpg", "@x.jpg", "-2+3.jpg", "plain.jpg"]
    write_images(folder, names, 3)
    result = facetl("predict", str(world["run"]), "--out", "preds.csv", "--", *names, cwd=folder)
    assert result.returncode == 0, result.stderr
    with open(folder / "preds.csv", newline="") as f:
        cells = {row["path"]: row for row in csv.DictReader(f)}
    assert set(cells) == {"'" + n for n in names[:4]} | {"plain.jpg"}
    assert all(0 <= float(row["probability"]) <= 1 for row in cells.values())  # numbers stay numbers


def test_a_table_and_split_with_formula_like_names_read_back_as_written(world, tmp_path, capsys):
    """facetl reads its own CSVs (split.csv, tables it writes) back: the quote it adds is taken off again."""
    images = tmp_path / "images"
    names = [f"={i}.jpg" for i in range(12)] + [f"+{i}.jpg" for i in range(12)]
    write_images(images, names, 4)
    table = tmp_path / "table.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "Smiling"])
        writer.writerows([("'" + n, 1 if n[0] == "=" else -1) for n in names])  # as a spreadsheet would save them
    run = tmp_path / "run"
    assert in_process(capsys, "train", "--data", str(table), "--images", str(images), "--target", "Smiling",
                      "--weights", "none", "--img-size", "32", "--strategy", "full", "--epochs", "1",
                      "--out", str(run)).returncode == 0
    with open(run / "split.csv", newline="") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    assert sorted(paths) == sorted("'" + n for n in names)
    again = in_process(capsys, "train", "--data", str(table), "--images", str(images), "--target", "Smiling",
                       "--weights", "none", "--img-size", "32", "--strategy", "full", "--epochs", "1",
                       "--split-file", str(run / "split.csv"), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "split.csv").read_text() == (run / "split.csv").read_text()
