"""Issue 21's property: no facetl command writes outside the output it was given (or the run folder it was
given, or its cache), whatever paths the data holds, and every file that was there before is byte-identical.

The data is a table whose rows are relative, absolute, climbing (`../`), through a symlinked folder, and
colliding (the same file name in different folders); each command runs as a user runs it (a fresh process,
its output going to a file), and the whole tree is compared before and after.

Issue 29 adds predict on a video, training tracked to --track-dir and --tracking-uri places, a copied and then a
moved run resumed (only the copy changes: not the original, nor the original's tracking places), sweep, tune
and runs.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from commandline import facetl


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under root (links not followed) -> the SHA-256 of its bytes ('dir' for folders)."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = "link:" + os.readlink(path)
        elif path.is_dir():
            found[key] = "dir"
        else:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def changes(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def inside(path: str, allowed: list[str]) -> bool:
    return any(path == a or path.startswith(a + os.sep) for a in allowed)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("writes")
    rng = np.random.default_rng(0)

    def image(relative: str) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)

    rows = []
    for i in range(6):
        label = 1 if i % 2 else -1
        image(f"photos/a{i}.jpg"), rows.append((f"a{i}.jpg", label))                          # relative
        image(f"outside/b{i}.jpg"), rows.append((str(root / f"outside/b{i}.jpg"), label))     # absolute
        image(f"outside/c{i}.jpg"), rows.append((f"../outside/c{i}.jpg", label))              # climbs out
        image(f"outside/d{i}.jpg"), rows.append((f"link/d{i}.jpg", label))                    # through a link
        image(f"photos/sub{i}/x.jpg"), rows.append((f"sub{i}/x.jpg", label))                  # colliding names
    (root / "photos" / "link").symlink_to(root / "outside", target_is_directory=True)
    if importlib.util.find_spec("av"):
        from facetl.data.video import VideoWriter

        (root / "media").mkdir()
        with VideoWriter(root / "media" / "clip.mp4", 64, 48, 10) as writer:
            for _ in range(6):
                writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    with open(root / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "Smiling"])
        writer.writerows(rows)
    return root


# (name, command line, the paths under the world it may change besides the cache); run in order, each on the world as the
# previous ones left it. {w} is the world's root.
COMMANDS = [
    ("inspect", ["inspect", "--data", "{w}/table.csv", "--images", "{w}/photos", "--target", "Smiling",
                 "--out", "{w}/inspected", "--cache-dir", "{w}/cache"], ["inspected", "cache"]),
    ("train", ["train", "--data", "{w}/table.csv", "--images", "{w}/photos", "--target", "Smiling", "--weights",
               "none", "--img-size", "32", "--strategy", "full", "--epochs", "1", "--out", "{w}/run",
               "--cache-dir", "{w}/cache"], ["run", "cache"]),
    ("evaluate", ["evaluate", "{w}/run"], ["run"]),
    ("predict", ["predict", "{w}/run", "{w}/photos", "{w}/outside", "--faces", "none", "--out", "{w}/preds.csv"],
     ["preds.csv"]),
    ("predict --annotate", ["predict", "{w}/run", "{w}/photos", "{w}/outside", "--faces", "detect", "--annotate",
                            "{w}/annotated"], ["annotated"]),
    ("faces", ["faces", "{w}/table.csv", "--images", "{w}/photos", "--target", "Smiling", "--out", "{w}/crops"],
     ["crops"]),
    ("explain", ["explain", "{w}/run", "{w}/photos", "--out", "{w}/explained"], ["explained"]),
    ("export", ["export", "{w}/run", "--out", "{w}/model.onnx"], ["model.onnx"]),
    ("predict a video", ["predict", "{w}/run", "{w}/media/clip.mp4", "--out", "{w}/frames.csv", "--annotate",
                         "{w}/annotated-video"], ["frames.csv", "frames.tracks.csv", "annotated-video"]),
    ("train --track", ["train", "--data", "{w}/table.csv", "--images", "{w}/photos", "--target", "Smiling", "--weights",
                       "none", "--img-size", "32", "--strategy", "full", "--epochs", "1", "--out", "{w}/tracked",
                       "--cache-dir", "{w}/cache", "--track", "tensorboard,mlflow", "--track-dir", "{w}/tb",
                       "--tracking-uri", "sqlite:///{w}/store/m.db"], ["tracked", "tb", "store"]),
    # cp -r tracked copy: the copy is tracked inside itself; neither the original nor its tb/ and store/ change
    ("resume a copy", ["train", "--resume", "{w}/copy", "--epochs", "2"], ["copy"]),
    # mv copy moved: the moved run goes on inside itself; copy/ is not made again
    ("resume a moved run", ["train", "--resume", "{w}/moved", "--epochs", "3"], ["moved"]),
    ("sweep", ["sweep", "--data", "{w}/table.csv", "--images", "{w}/photos", "--target", "Smiling", "--weights",
               "none", "--img-size", "32", "--strategy", "full", "--epochs", "1", "--grid", "lr=1e-3",
               "--out", "{w}/sweep", "--cache-dir", "{w}/cache", "--track", "mlflow"], ["sweep"]),
    ("tune", ["tune", "--data", "{w}/table.csv", "--images", "{w}/photos", "--target", "Smiling", "--weights",
              "none", "--img-size", "32", "--strategy", "full", "--epochs", "1", "--space", "lr=log:1e-4:1e-2",
              "--trials", "1", "--out", "{w}/tune", "--cache-dir", "{w}/cache"], ["tune"]),
    ("runs", ["runs", "{w}", "--out", "{w}/runs.md"], ["runs.md"]),
    ("cache clear", ["cache", "clear", "--cache-dir", "{w}/cache"], ["cache"]),
]

# what the user does by hand before a command (not facetl's doing: it happens before the snapshot)
BEFORE = {"resume a copy": lambda w: shutil.copytree(w / "tracked", w / "copy", symlinks=True),
          "resume a moved run": lambda w: shutil.move(w / "copy", w / "moved")}
NEEDS = {"predict a video": "av", "train --track": "mlflow", "resume a copy": "mlflow", "resume a moved run": "mlflow",
         "sweep": "mlflow", "tune": "optuna"}


@pytest.mark.slow  # every command in turn (2 min): .ci/run runs it after `make test`, as does `make test-all`
def test_no_command_writes_outside_its_output_whatever_paths_the_data_holds(world):
    for name, args, allowed in COMMANDS:
        if name in NEEDS and not importlib.util.find_spec(NEEDS[name]):
            continue  # not installed here: the rest of the property still holds
        if name in BEFORE:
            BEFORE[name](world)
        before = tree(world)
        result = facetl(*[a.replace("{w}", str(world)) for a in args], cwd=world / "photos")
        assert result.returncode in (0, 1), (name, result.stderr)  # 1: some image skipped, said so
        changed = changes(before, tree(world))
        assert changed, name  # it wrote something
        allowed = allowed + ["cache"]  # the run's cache folder is facetl's to write
        escaped = sorted(c for c in changed if not inside(c, allowed))
        assert not escaped, (name, escaped)
        touched = sorted(c for c in changed if c in before and not inside(c, allowed))
        assert not touched, (name, touched)
