"""Seeding, and the random states a checkpoint keeps so that a resumed run goes on as an
uninterrupted one would: the CPU's, and the one GPU's a process trains on, for every process of a
``torchrun`` run, each with a stream of its own."""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch

from rnnlab.distributed import rank


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so that a CPU run repeats bitwise."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def callers_state_kept() -> Iterator[None]:
    """A run sets torch's thread count and seeds the global random generators (Python's, NumPy's,
    torch's): give the caller its own back afterwards, so that what a program does after
    ``rnnlab.train`` does not depend on the run before it (a later run's weights did). CUDA's
    generators are given back too; where the run was the first to use CUDA, they are left as the
    caller's would have started: seeded with the caller's last ``torch.manual_seed``."""
    threads = torch.get_num_threads()
    python, numpy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    # CUDA's generators start, once CUDA is first used, from the seed torch.manual_seed last gave
    # the CPU's (or torch's default seed, as the CPU's): the caller's initial_seed().
    callers_seed = torch.initial_seed()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        elif torch.cuda.is_initialized():  # the run started CUDA, seeding it with the run's seed
            torch.cuda.manual_seed_all(callers_seed)


def process_seed(seed: int, rank_: int, iteration: int = 0) -> int:
    """The seed of process ``rank_``'s own random stream (rank > 0), derived from the run's
    seed with NumPy's SeedSequence so that the streams of different processes are independent."""
    return int(np.random.SeedSequence([seed, rank_, iteration]).generate_state(1, np.uint64)[0] >> 1)


def seed_process_stream(seed: int) -> None:
    """Give each process after the first its own random stream (dropout masks), as in a
    one-process run every sample gets its own mask. Rank 0 keeps the one-process stream, so a
    single process is unchanged. Call after building the model: the initial weights come from
    the shared stream and are the same in every process."""
    if rank() > 0:
        torch.manual_seed(process_seed(seed, rank()))


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's torch RNG states (used by dropout), for resumable checkpoints: the CPU's,
    and the one GPU's it trains on (not every visible GPU's: a checkpoint must resume where
    fewer GPUs are visible, and a CPU run must not initialise CUDA)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore :func:`rng_state`. The states may have been loaded onto a GPU, and torch takes
    them only as CPU byte tensors. A checkpoint written before one GPU's state was kept holds a
    list, one per visible GPU: the one of the device's index is taken, if it has one."""
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "mps" and state.get("mps") is not None:
        torch.mps.set_rng_state(state["mps"].cpu())
    cuda = state.get("cuda")
    if cuda is None or device.type != "cuda":  # a GPU run resumed on a CPU: only the CPU's stream matters
        return
    if isinstance(cuda, (list, tuple)):
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda.cpu(), device)


def gather_rng_states(device: torch.device) -> list[dict]:
    """Every process's ``rng_state()`` in rank order (a collective: all processes call it)."""
    if not torch.distributed.is_initialized():
        return [rng_state(device)]
    states: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, rng_state(device))
    return states


def restore_rng_state(states: list[dict], seed: int, iteration: int, device: torch.device) -> None:
    """Take this process's stream back from a checkpoint's ``gather_rng_states()``. A process
    the checkpoint has no state for (it was written by fewer processes) starts a stream of its
    own, derived from the seed and the iteration, so that such a resume is repeatable too."""
    if rank() < len(states):
        set_rng_state(states[rank()], device)
    else:
        torch.manual_seed(process_seed(seed, rank(), iteration))  # every GPU's stream too
