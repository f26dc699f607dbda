"""Data-parallel training under torchrun (2 CPU processes, Gloo) equals one process."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnlab
from rnnlab.config import RunConfig, apply_overrides
from rnnlab.data.idx import write_idx

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")]


def tiny_dataset(root: Path) -> Path:
    """111 training images, 10 held out for validation: batches of 50, 50 and 1, so one process
    gets an empty share; 21 test images, so the evaluation shards differ in size (10 and 11)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 111), ("t10k", 21)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        images[np.arange(n), labels * 2 + 4, 4:24] = 255  # a class-dependent stroke to learn
        write_idx(root / f"{split}-images-idx3-ubyte", images)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels)
    return root


def overrides_for(data: Path) -> list[str]:
    # train.device=cpu: two processes with Gloo even on a GPU machine (which may have only one GPU)
    return ["train.device=cpu", f"data.data_dir={data}", "data.dataset=fashion-mnist", "data.val_size=10",
            "model.cell=gru", "model.hidden=8", "train.batch_size=50", "train.epochs=2",
            "train.eval_every=3", "train.threads=1", "train.optimizer=adam", "train.lr=1e-2"]


def torchrun(*args: str, succeed: bool = True) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              "-m", "rnnlab", "train", *args, "--no-progress"]
    env = dict(os.environ)
    if sys.platform.startswith("linux"):
        # Gloo picks its network interface from the host name, which a sandbox may not resolve.
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    done = subprocess.run(launch, capture_output=True, text=True, timeout=300, env=env)
    assert (done.returncode == 0) == succeed, done.stderr[-3000:]
    return done


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_two_processes_train_like_one(tmp_path: Path) -> None:
    overrides = overrides_for(tiny_dataset(tmp_path / "data"))
    single = rnnlab.train(apply_overrides(RunConfig(), overrides), tmp_path / "single", progress=False)
    done = torchrun(*overrides, "--out", str(tmp_path / "ddp"))
    assert done.stdout.count("test accuracy") == 1  # only rank 0 prints and writes

    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iterations"] == single.summary["iterations"] == 6
    assert (summary["processes"], single.summary["processes"]) == (2, 1)
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [3, 6]
    one, two = weights(tmp_path / "single"), weights(tmp_path / "ddp")
    for key in one:  # same global batches, gradients averaged: the same weights
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    # Each process evaluated half of the test split; combined, the figures are the whole split's.
    single_rows = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    for row, reference in zip(rows, single_rows, strict=True):
        assert row["val_accuracy"] == pytest.approx(reference["val_accuracy"])
        assert row["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-4)
    assert summary["test_accuracy"] == pytest.approx(single.summary["test_accuracy"])
    assert summary["test_loss"] == pytest.approx(single.summary["test_loss"], rel=1e-4)
    assert summary["confusion_matrix"] == single.summary["confusion_matrix"]


def test_two_processes_resume_a_run_of_one(tmp_path: Path) -> None:
    """A checkpoint is the same whoever wrote it: 2 processes finish a run 1 process began."""
    config = apply_overrides(RunConfig(), overrides_for(tiny_dataset(tmp_path / "data")))
    whole = rnnlab.train(config, tmp_path / "whole", progress=False)
    part = rnnlab.train(config, tmp_path / "part", progress=False, stop_after=4)
    assert part.status == "stopped"
    # While another process trains the folder, the launch stops at once with rank 0's reason. (Rank 0
    # also tells the others, which matters where no torchrun agent would stop them: srun, mpirun.)
    import fcntl

    held = os.open(tmp_path / "part" / ".rnnlab.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = torchrun("--resume", str(tmp_path / "part"), succeed=False)
    finally:
        os.close(held)
    assert f"another rnnlab process is training {tmp_path / 'part'}" in busy.stderr
    torchrun("--resume", str(tmp_path / "part"))
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iterations"] == whole.summary["iterations"]
    one, two = weights(tmp_path / "whole"), weights(tmp_path / "part")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)


JOB = """
import sys

import rnnlab
from rnnlab import distributed
from rnnlab.config import RunConfig, apply_overrides

whole, part, *overrides = sys.argv[1:]
config = apply_overrides(RunConfig(), overrides)
rnnlab.train(config, whole, progress=False)
rnnlab.train(config, part, progress=False, stop_after=4)
rnnlab.resume(part, progress=False)
distributed.end_process(0, together=True)  # not through the interpreter's exit, which can abort a Gloo process
"""


def test_each_process_has_its_own_dropout_stream_and_resumes_it(tmp_path: Path) -> None:
    """Under torchrun each process draws its own dropout masks (rank 0 keeps a single process's
    stream), the checkpoint keeps every process's stream, and a resumed 2-process run with
    dropout ends with the weights of one that was never interrupted."""
    overrides = [*overrides_for(tiny_dataset(tmp_path / "data")), "model.layers=2", "model.dropout=0.5"]
    job = tmp_path / "job.py"
    job.write_text(JOB)
    env = dict(os.environ)
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(job),
              str(tmp_path / "whole"), str(tmp_path / "part"), *overrides]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    states = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["rng_processes"]
    assert len(states) == 2 and not torch.equal(states[0]["cpu"], states[1]["cpu"])
    whole, part = weights(tmp_path / "whole"), weights(tmp_path / "part")
    for key in whole:
        torch.testing.assert_close(part[key], whole[key], rtol=0, atol=0, msg=key)


def test_world_size_without_torchrun_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnlab.errors import ConfigError

    for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="launch with `torchrun"):
        rnnlab.train(apply_overrides(RunConfig(), ["model.hidden=8"]), tmp_path / "run", progress=False)
    assert not torch.distributed.is_initialized()


_FAULTS = """
import resource, torch
from rnnlab.allocator import tune_allocator
applied = tune_allocator()
# 64 MB, over any mmap threshold glibc keeps by default. With tuning, the first few still extend
# the heap: torch's 64-byte-aligned allocation needs a little more than the chunk the last one
# freed, until freed chunks next to each other merge (after 2-8 here, depending on what else the
# process has allocated). Training runs in that steady state.
for _ in range(12):
    torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):  # the same size again, as training steps do: fresh pages, or the freed ones?
    torch.empty(16 << 20).fill_(1.0)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.parametrize("tuning", ["1", "0"])
def test_allocator_tuning_reuses_large_buffers_instead_of_faulting_in_fresh_pages(tuning: str) -> None:
    env = {**os.environ, "RNNLAB_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    if tuning == "1":  # 4 x 64 MB of fresh 4 kB pages would be 65536 faults
        assert applied == "True" and int(faults) < 20000
    else:
        assert applied == "False" and int(faults) > 40000


_RELEASE = """
import torch
from rnnlab.allocator import release_free_memory, tune_allocator

def rss_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) >> 10

tune_allocator()
keep = torch.ones(1 << 20)  # allocated after the big one: the freed pages cannot just be trimmed off the top
big = torch.empty(32 << 20)  # 128 MB
big.fill_(1.0)
small = torch.ones(1 << 20)
del big
kept = rss_mb()
release_free_memory()
print(kept - rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_free_memory_kept_by_the_tuning_is_handed_back_on_request() -> None:
    out = subprocess.run([sys.executable, "-c", _RELEASE], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 100  # of the 128 MB freed, held until released


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and signals")
def test_ctrl_c_under_torchrun_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    import signal
    import time

    overrides = [*overrides_for(tiny_dataset(tmp_path / "data")), "train.epochs=0", "train.iterations=100000",
                 "train.checkpoint_every=20", "train.eval_every=1000", "model.dropout=0.3", "model.layers=2"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              "-m", "rnnlab", "train", *overrides, "--out", str(tmp_path / "run"), "--no-progress"]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    # A process group of its own, as a terminal's: Ctrl-C reaches the launcher and both processes.
    job = subprocess.Popen(launch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run/checkpoint.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # well between two checkpoints
        os.killpg(job.pid, signal.SIGINT)
        output, _ = job.communicate(timeout=25)  # the launcher would kill stragglers only after 30 s
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert "collective mismatch" not in output and "terminate called" not in output, output[-3000:]
    assert "Unable to shutdown process" not in output, output[-3000:]  # no process needed killing
    # Rank 0 says how to go on; the one traceback is torchrun's launcher's own (job.pid), its way to stop
    # its workers (README), none from rnnlab's processes. A torchrun that stops quietly would pass too.
    assert f"rnnlab: interrupted; continue with: torchrun ... rnnlab train --resume {tmp_path / 'run'}" in output
    tracebacks = output.count("Traceback (most recent call last)")
    assert tracebacks == 0 or (tracebacks == 1 and output.rstrip().endswith(
        f"SignalException: Process {job.pid} got signal: {int(signal.SIGINT)}")), output[-3000:]
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    saved = json.loads((tmp_path / "run/checkpoint.json").read_text())["iteration"]
    assert summary["status"] == "interrupted" and f"keeps the checkpoint of iteration {saved}" in summary["message"]
    assert saved % 20 == 0 and saved > 0 and summary["iterations"] == saved  # what the folder keeps


def test_ddp_does_not_broadcast_the_constant_standardisation_buffers(tmp_path: Path) -> None:
    """Only other buffers (a registered model's running statistics) are synced before each forward."""
    import torch.distributed

    from rnnlab.config import ModelConfig
    from rnnlab.distributed import wrap_for_training
    from rnnlab.models import create_model

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = create_model(ModelConfig(cell="gru", hidden=8), input_size=4, seq_len=3, num_classes=2)
        syncs = lambda ddp: getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", None))  # noqa: E731
        assert syncs(wrap_for_training(model, torch.device("cpu"))) is False
        model.register_buffer("running_mean", torch.zeros(8))
        assert syncs(wrap_for_training(model, torch.device("cpu"))) is True
    finally:
        torch.distributed.destroy_process_group()


def test_a_rank_without_torchrun_is_rank_0_and_bad_counts_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster's environment may hold RANK for a single process: it must still write its run
    (before, it trained as a rank > 0 and wrote nothing, with exit status 0)."""
    from rnnlab import distributed as dist
    from rnnlab.errors import ConfigError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "3")
    assert dist.rank() == 0 and dist.is_main_process()
    monkeypatch.setenv("WORLD_SIZE", "")  # empty, as a script may export it: unset
    assert dist.world_size() == 1 and dist.rank() == 0
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert dist.rank() == 3
    for name, value in (("WORLD_SIZE", "abc"), ("WORLD_SIZE", "-2"), ("RANK", "x")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=rf"^{name}='{value}' in the environment is not a whole number; "
                                              rf"torchrun sets it .*: unset {name} to train in one process$"):
            dist.rank()
        monkeypatch.setenv(name, "4" if name == "WORLD_SIZE" else "0")


def test_a_run_with_a_stray_rank_writes_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "1")
    cfg = apply_overrides(RunConfig(), ["train.device=cpu", "model.hidden=8", "train.iterations=4",
                                        "train.eval_every=4", "data.val_size=100", "train.threads=1"])
    run = rnnlab.train(cfg, tmp_path / "run", progress=False)
    assert run.status == "completed" and (tmp_path / "run/summary.json").exists()


def test_autocast_off_leaves_a_callers_autocast_on_every_device_type_and_gives_it_back() -> None:
    from rnnlab.distributed import autocast_off

    # CPU, MPS and XPU autocasts can be entered (not run) on a CPU-only build; torch 2.4 has none for MPS
    device_types = [d for d in ("cpu", "mps", "xpu") if _has_autocast(d)]
    with contextlib.ExitStack() as callers:
        for device_type in device_types:
            callers.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
        with autocast_off():
            assert not any(torch.is_autocast_enabled(d) for d in device_types)
            assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
        assert all(torch.is_autocast_enabled(d) for d in device_types)
    assert "cpu" in device_types and not any(torch.is_autocast_enabled(d) for d in device_types)


def _has_autocast(device_type: str) -> bool:
    try:
        torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False
    return True


def test_a_run_that_started_cuda_leaves_its_generators_as_the_callers_would_have_started(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnlab.seeding import callers_state_kept

    cuda_started, seeded = [False], []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: cuda_started[0])
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    with torch.random.fork_rng(devices=[]):  # the other tests' stream as it was
        torch.manual_seed(1234)  # the caller's seed: CUDA's generators would start from it
        with callers_state_kept():
            torch.manual_seed(7)  # the run's
            cuda_started[0] = True  # the run was the first to use CUDA
        # torch.manual_seed seeds CUDA too (1234, 7); then the caller's seed is given back
        assert seeded == [1234, 7, 1234] and torch.initial_seed() == 1234


_GIVEN_BACK = """
import rnnlab
from rnnlab.allocator import release_free_memory

def rss_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) >> 10

config = rnnlab.apply_overrides(rnnlab.RunConfig(), ["train.iterations=2", "train.eval_every=2", "model.hidden=8",
                                                     "data.val_size=100", "train.threads=1"])
rnnlab.train(config, "run", progress=False)
release_free_memory()
before = rss_mb()
big = bytearray(256 << 20)  # a notebook's later work: 256 MB, freed again
del big
print(rss_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_run_gives_the_allocator_back_as_it_found_it(tmp_path: Path) -> None:
    """After rnnlab.train, memory the caller frees goes back to the OS as with glibc's defaults,
    not kept as the tuning keeps it for the training steps."""
    out = subprocess.run([sys.executable, "-c", _GIVEN_BACK], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert int(out.stdout) < 64, out.stdout  # kept: 256
