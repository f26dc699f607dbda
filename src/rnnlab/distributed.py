"""Device, precision and process setup, in one place.

Everything that depends on the hardware lives here: picking a device, thread counts, seeding,
autocast, and the rank of this process (so that only one process writes files when a run is
launched with ``torchrun``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import sys
from typing import Iterator

import numpy as np
import torch

from rnnlab.errors import ConfigError


def select_device(requested: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be available."""
    kind = requested.split(":")[0]
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} asked for, but no CUDA GPU is available; use --device cpu or auto")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {requested!r} asked for, but MPS is not available; use --device cpu or auto")
    return torch.device(requested)


def configure_threads(threads: int) -> None:
    """Set torch's intra-op threads (0 leaves torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def tune_allocator() -> bool:
    """Keep freed memory for reuse instead of returning it to the OS (glibc only).

    Every training step allocates and frees the same activation and gradient buffers. With
    glibc's defaults, buffers over its mmap threshold are unmapped on free and mapped again
    next step, so each step pays page faults on fresh memory: an LSTM 2x100 step took ~80 ms
    instead of ~52 ms on a 2-core CPU here. Raising the thresholds keeps those pages (the
    effect that PyTorch's CPU tuning guide gets from jemalloc or tcmalloc). Set
    ``RNNLAB_MALLOC_TUNING=0`` to leave the allocator alone. Returns True if it was applied.
    """
    if os.environ.get("RNNLAB_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)  # keep up to 1 GiB of freed heap
        mmap = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum: 32 MiB
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    return bool(trim and mmap)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so that a CPU run repeats bitwise."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """The torch RNG states (used by dropout), for resumable checkpoints."""
    state: dict[str, torch.Tensor | list[torch.Tensor]] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision: bf16 on cpu or cuda, fp16 on cuda; ``off`` is a no-op."""
    if amp == "off":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 on CPU or train.amp=off")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A loss scaler, active only for fp16 (bf16 has float32's range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))


def require_single_process() -> None:
    """Refuse a multi-process launch rather than train N unsynchronised copies of one run.

    Under ``torchrun --nproc_per_node=N`` each process would otherwise train the whole
    model on its own and only rank 0 would write: N times the cost, no speed-up.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise ConfigError(
            f"rnnlab was launched as {world} processes (WORLD_SIZE={world}, e.g. by torchrun), "
            "but multi-process data-parallel training is not supported yet; run one process "
            "(`rnnlab train ...`), or use `rnnlab compare --jobs N` to train several runs at once")


def rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


@contextlib.contextmanager
def inference(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode and no autograd, restoring the previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
