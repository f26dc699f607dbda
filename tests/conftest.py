"""Shared fixtures: the real MNIST copy, a hermetic data environment, the denormal mode given back."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz")


def find_mnist_dir(shared: Path) -> Path:
    """``shared`` if it holds the four real MNIST .gz files, else the copy the package ships
    (``rnnlab.data.embedded_dir()``); fails, never skips, if neither does."""
    from rnnlab.data import embedded_dir

    for folder in (shared, embedded_dir()):
        if folder is not None and all((folder / name).is_file() for name in MNIST_FILES):
            return folder
    pytest.fail(f"real MNIST not found at {shared}, nor in the package (rnnlab/data/mnist)")


@pytest.fixture
def mnist_dir() -> Path:
    """Folder with the four real MNIST .gz files (``../shared/data/mnist``, else the package's own copy)."""
    return find_mnist_dir(MNIST_DIR)


@pytest.fixture(autouse=True)
def _hermetic_data_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # A developer's own RNNLAB_DATA_DIR must not change test results, and no test may write
    # into the real ~/.cache/rnnlab.
    monkeypatch.delenv("RNNLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(tmp_path_factory.mktemp("rnnlab-cache")))


@pytest.fixture(autouse=True)
def _denormal_mode_given_back() -> Iterator[None]:
    # A test that drives a Trainer itself (not rnnlab.train, which gives the mode back) leaves the
    # process flushing denormals: later tests would compute in a mode they did not ask for.
    from rnnlab.denormals import denormal_mode_kept

    with denormal_mode_kept():
        yield


@pytest.fixture
def handlers() -> Any:
    """Give SIGINT and SIGTERM back as they were, whatever a test leaves."""
    from rnnlab import stopping

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    stopping._heeded.clear()  # the signals these tests sent count as no one's
