"""Denormals flushed to zero in every thread torch computes in, per run, and given back after it."""

from __future__ import annotations

import glob
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import rnnlab
from rnnlab import engine
from rnnlab.config import RunConfig, apply_overrides
from rnnlab.denormals import denormal_mode_kept, denormals_flushed, set_flush_denormals

# torch sets a denormal mode on x86 and AArch64; every thread of the team is reached where torch
# links an OpenMP runtime that exports GOMP_parallel (Linux, macOS), and only Linux is tested here.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not torch.set_flush_denormal(False),
                                reason="the denormal mode of every thread is tested on Linux with x86 or AArch64")

DENORMAL_BITS = 713_649  # the float32 with these bits is 1.0e-39, a denormal: the smallest normal is 1.18e-38


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Two intra-op threads (even on one CPU), so a large op is split between the calling thread
    and an OpenMP worker; the IEEE mode again afterwards, whatever a test left."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.ones(1 << 20).add_(1)  # the worker exists before any mode is set
    yield
    set_flush_denormals(False)
    torch.set_num_threads(before)


def _share_flushed() -> float:
    """The share of a large multiply's denormal results that came out as zero: each thread that
    did part of it flushes all of its part or none."""
    # Made from bits: a conversion from 1e-39 would itself be flushed where the mode is on.
    denormals = torch.full((1 << 22,), DENORMAL_BITS, dtype=torch.int32).view(torch.float32)
    product = denormals.mul(1.0)  # split between the threads
    return (product == 0).float().mean().item()


def test_every_thread_flushes_and_then_keeps_denormals_again(two_threads: None) -> None:
    assert not denormals_flushed() and _share_flushed() == 0.0  # torch's default: IEEE
    torch.set_flush_denormal(True)  # torch's own call sets the calling thread alone...
    assert 0.0 < _share_flushed() < 1.0  # ...so the worker's part still holds denormals
    assert set_flush_denormals(True)
    assert denormals_flushed() and _share_flushed() == 1.0
    assert set_flush_denormals(False)
    assert not denormals_flushed() and _share_flushed() == 0.0


def test_the_mode_before_a_block_is_given_back(two_threads: None) -> None:
    with denormal_mode_kept():
        set_flush_denormals(True)
        assert _share_flushed() == 1.0
    assert not denormals_flushed() and _share_flushed() == 0.0
    set_flush_denormals(True)
    with denormal_mode_kept():
        set_flush_denormals(False)
    assert denormals_flushed() and _share_flushed() == 1.0


_SECOND_RUNTIME = """
import ctypes, sys
import torch
torch.set_num_threads(2)
torch.ones(1 << 20).add_(1)  # torch's team exists
ctypes.CDLL(sys.argv[1])  # another libgomp, as scikit-learn or the system brings one
from rnnlab.denormals import set_flush_denormals
set_flush_denormals(True)
denormals = torch.full((1 << 22,), 713_649, dtype=torch.int32).view(torch.float32)
print((denormals.mul(1.0) == 0).float().mean().item())
"""


# By its path: by name (libgomp.so.1) the dynamic loader hands back torch's copy, already loaded.
_SYSTEM_GOMP = sorted(glob.glob("/usr/lib*/libgomp.so.1") + glob.glob("/usr/lib*/*-linux-gnu/libgomp.so.1"))


@pytest.mark.skipif(not _SYSTEM_GOMP, reason="no libgomp of the system's to load beside torch's")
def test_the_threads_set_are_torchs_own_when_another_openmp_runtime_is_loaded() -> None:
    out = subprocess.run([sys.executable, "-c", _SECOND_RUNTIME, _SYSTEM_GOMP[0]],
                         capture_output=True, text=True, check=True, timeout=120)
    assert float(out.stdout) == 1.0, out.stdout


def _tiny(*extra: str) -> RunConfig:
    return apply_overrides(RunConfig(), ["train.device=cpu", "model.hidden=8", "train.batch_size=50",
                                         "train.iterations=2", "train.eval_every=2", "data.val_size=100",
                                         "train.threads=2", *extra])


@pytest.mark.parametrize(("overrides", "flushed"), [((), True), (("train.flush_denormals=false",), False)])
@pytest.mark.parametrize("callers_mode", [False, True])
def test_a_run_trains_in_its_own_mode_and_gives_the_callers_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_threads: None, overrides: tuple[str, ...],
        flushed: bool, callers_mode: bool) -> None:
    seen: list[tuple[bool, float]] = []

    def observed(on: bool) -> bool:
        applied = set_flush_denormals(on)
        seen.append((denormals_flushed(), _share_flushed()))  # in the run, in every thread
        return applied

    monkeypatch.setattr(engine, "set_flush_denormals", observed)
    set_flush_denormals(callers_mode)
    rnnlab.train(_tiny(*overrides), tmp_path / "run", progress=False)
    assert seen == [(flushed, float(flushed))]
    assert denormals_flushed() == callers_mode and _share_flushed() == float(callers_mode)
