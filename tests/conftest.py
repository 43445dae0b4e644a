"""Shared fixtures: the real datasets (or a skip), a tiny generated folder dataset, an isolated cache."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# ../shared/datasets relative to the repository root (see /work/shared/datasets/README.md)
SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def pytest_configure(config):
    """Hypothesis keeps a '.hypothesis' folder in the working directory: keep it out of the repository.
    Under pytest-xdist (`make test` runs one worker per core) every worker and the processes it starts use one
    torch thread: two workers of two threads each on two cores spin-wait against each other."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
    try:
        from hypothesis import configuration
    except ImportError:
        return
    configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "facetl-tests-hypothesis")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own FACETL_CACHE, so nothing is written to (or read from) ~/.cache/facetl."""
    cache = tmp_path_factory.mktemp("facetl-cache")
    monkeypatch.setenv("FACETL_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for a module of tiny-tensor tests: faster than two on a small CPU, and no
    spin-waiting threads when the CPU is shared. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real datasets folder; tests using it are skipped, with the reason, when it is absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS} (see shared/datasets/README.md)")
    return SHARED_DATASETS


@pytest.fixture
def shared_path(shared_datasets):
    """Factory: shared_path('celeba_attributes/list_attr_celeba.txt') -> the path, or a skip naming it."""

    def find(relative: str) -> Path:
        path = shared_datasets / relative
        if not path.exists():
            pytest.skip(f"{relative} not found in {shared_datasets}")
        return path

    return find


def write_image(path: Path, size: int | tuple[int, int] = 16, seed: int = 0, mode: str = "RGB",
                fmt: str | None = None, **save_args) -> Path:
    """Write a random image (RGB or L) of `size` pixels to `path`, creating its folder."""
    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, fmt, **save_args)
    return path


@pytest.fixture
def make_image():
    """Factory: make_image(path, size=16, seed=0, mode='RGB', fmt=None, **PIL save args) -> path."""
    return write_image


@pytest.fixture
def tiny_folder_dataset(tmp_path) -> Path:
    """Two class folders, `no_smile` and `smile`, of ten 16x16 random RGB JPEGs each."""
    root = tmp_path / "tiny"
    for c, name in enumerate(("no_smile", "smile")):
        for i in range(10):
            write_image(root / name / f"{i:02d}.jpg", 16, seed=100 * c + i)
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real single-node SLURM cluster (tests/slurm_cluster.py) for one test module, stopped after it; where it
    cannot start, the module's SLURM tests skip and say why."""
    from slurm_cluster import ClusterUnavailable, SlurmCluster

    try:
        running = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    except ClusterUnavailable as exc:
        pytest.skip(f"no SLURM cluster here: {exc}")
    yield running
    running.stop()
