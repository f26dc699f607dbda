"""Run folders and a live server for the predict / export / serve tests.

Used as a plugin (``pytest_plugins = ["_fixtures_runs"]``) so the session-scoped trained run is
built once for all the modules that use it.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import rnnlab
from rnnlab import checkpoint as ckpt
from rnnlab.config import save_toml, to_dict
from rnnlab.data import make_permutation
from rnnlab.models import create_model

# About 95% test accuracy in ~7 s on one thread: good enough that small changes to an image
# rarely flip its class, which the agreement tests rely on.
# On the CPU even where there is a GPU: these check CPU behaviour (the fast layers, bitwise
# resumes); a GPU test adds train.device=cuda, and the last value given wins.
TINY = ["train.device=cpu", "model.hidden=48", "train.iterations=400", "train.eval_every=400", "train.lr=0.005",
        "data.val_size=0", "train.batch_size=100", "train.threads=1", "train.checkpoint_every=1000"]


@functools.lru_cache(maxsize=None)
def _trained_run_dir() -> Path:
    # Cached per process, so even a second registration of the fixture trains only once.
    root = Path(tempfile.mkdtemp(prefix="rnnlab-tiny-run-"))
    config = rnnlab.apply_overrides(rnnlab.RunConfig(), TINY)
    return rnnlab.train(config, root / "run", progress=False).dir


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run torch on one thread: tiny models on a shared 2-core machine only lose from threading."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_run() -> Path:
    """A small LSTM trained on MNIST rows (session-wide; do not modify the folder)."""
    return _trained_run_dir()


def save_untrained_run(run_dir: Path, overrides: list[str], *, seed: int = 0) -> Path:
    """A run folder with freshly initialised weights for ``overrides`` (no training)."""
    config = rnnlab.apply_overrides(rnnlab.RunConfig(), ["model.impl=torch", *overrides])
    steps, features = (28, 28) if config.data.view == "rows" else (784, 1)
    torch.manual_seed(seed)
    model = create_model(config.model, input_size=features, seq_len=steps, num_classes=10)
    with torch.no_grad():  # a non-trivial standardisation, so the export must carry it
        model.input_mean.fill_(0.13)
        model.input_std.fill_(0.31)
    tensors: dict = {"model": model.state_dict()}
    if config.data.view == "permuted-pixels":
        tensors["permutation"] = make_permutation(config.data.permutation_seed, 784)
    ckpt.save_checkpoint(run_dir, tensors, {"config": to_dict(config), "iteration": 0})
    save_toml(config, run_dir / "config.toml")
    return run_dir


@contextlib.contextmanager
def live_server(app: object) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="session")
def serving():
    """The :func:`live_server` context manager (a fixture, so test modules need not import this file)."""
    return live_server


@pytest.fixture
def untrained_run(tmp_path: Path):
    """``untrained_run(overrides) -> run folder`` with fresh weights (see :func:`save_untrained_run`)."""
    counter = iter(range(10_000))
    return lambda overrides, seed=0: save_untrained_run(tmp_path / f"run{next(counter)}", overrides, seed=seed)
