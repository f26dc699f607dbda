"""Device, precision and process setup, in one place.

Everything that depends on the hardware lives here: picking a device, thread counts, autocast,
and data-parallel training under ``torchrun`` (the process group, the DDP wrapper, and the rank,
so that only one process writes files). The memory allocator's tuning is :mod:`rnnlab.allocator`'s;
seeding and the random states that checkpoints keep are :mod:`rnnlab.seeding`'s.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import time
from typing import Iterator

import torch

# Their home before allocator.py; the README of that time told users to call distributed.tune_allocator().
from rnnlab.allocator import release_free_memory as release_free_memory, tune_allocator as tune_allocator
from rnnlab.errors import ConfigError, option, warn_caller


def select_device(requested: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be valid and available."""
    kind, _, index = requested.partition(":")
    # torch.device would take many more kinds (xla, meta, ...) or fail with a RuntimeError listing
    # them all; rnnlab runs on these.
    if requested not in ("auto", "cpu", "cuda", "mps") and not (kind == "cuda" and index.isascii()
                                                                and index.isdigit()):
        raise ConfigError(f"device {requested!r} is not valid; choose one of: auto, cpu, cuda, cuda:N "
                          "(N a GPU number, e.g. cuda:0) or mps")
    if kind == "cuda" and index and world_size() > 1:  # every process would share GPU N
        if rank() == 0:  # said once, not by every process
            warn_caller(f"device {requested!r} under torchrun is read as 'cuda': each process takes the GPU of "
                        "its LOCAL_RANK (CUDA_VISIBLE_DEVICES chooses which GPUs)", RuntimeWarning)
        requested = kind
    if requested in ("auto", "cuda") and torch.cuda.is_available() and world_size() > 1:  # one GPU per process
        return torch.device("cuda", _local_gpu())
    if requested in ("auto", "mps") and world_size() > 1:  # without CUDA, torchrun's processes talk by Gloo,
        if requested == "mps":  # which cannot reduce tensors on an Apple GPU
            raise ConfigError(f"torchrun trains on CUDA GPUs or on the CPU, not on MPS; use {_cpu()}")
        if _has_mps() and rank() == 0:
            warn_caller("under torchrun the processes train on the CPU: Gloo cannot reduce tensors on an "
                        f"Apple GPU ({_cpu()} says so and avoids this warning)", RuntimeWarning)
        return torch.device("cpu")
    if requested in ("auto", "cuda") and torch.cuda.is_available():  # the current GPU, by its number
        return torch.device("cuda", torch.cuda.current_device())  # (a compare worker's own: pool._take_gpu)
    if requested == "auto":
        return torch.device("mps") if _has_mps() else torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} asked for, but no CUDA GPU is available; use {_cpu(or_auto=True)}")
    if index and int(index) >= torch.cuda.device_count():  # torch.device would accept it, the first use fail
        raise ConfigError(f"device {requested!r} asked for, but this machine has {torch.cuda.device_count()} "
                          f"CUDA GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if kind == "mps" and not _has_mps():
        raise ConfigError(f"device {requested!r} asked for, but MPS is not available; use {_cpu(or_auto=True)}")
    return torch.device(requested)


def _cpu(or_auto: bool = False) -> str:
    """The device to use instead: the flag, or from Python the value (of ``train.device``, or load's ``device``)."""
    if or_auto:
        return option("--device cpu or auto", "device 'cpu' or 'auto'")
    return option("--device cpu", "device 'cpu'")


def _has_mps() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def _local_gpu() -> int:
    """The GPU of this torchrun process (``LOCAL_RANK``), refused if the machine has fewer GPUs
    than torchrun started processes on it (CUDA would fail with "invalid device ordinal")."""
    local, gpus = _env_number("LOCAL_RANK", 0), torch.cuda.device_count()
    if local >= gpus:
        raise ConfigError(f"torchrun started more processes on this machine than it has CUDA GPUs ({gpus}); "
                          f"use --nproc_per_node={gpus}, or {_cpu()}")
    return local


def configure_threads(threads: int) -> None:
    """Set torch's intra-op threads (0 leaves torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether a data set of ``nbytes`` should live on ``device``: on a GPU, if it takes at
    most a quarter of the free memory, so that batches are gathered there instead of copied
    from the host each step (a copy from pageable memory waits for the device)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= free // 4
    return device.type == "mps" and nbytes <= 1 << 30  # unified memory: just keep it modest


def device_memory(device: torch.device) -> tuple[int, str] | None:
    """Free memory on a GPU, and how to name it in a message ("cuda:0 (NVIDIA ...)");
    None for the CPU and MPS, whose memory is the host's."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, _ = torch.cuda.mem_get_info(index)
    return free, f"cuda:{index} ({torch.cuda.get_device_name(index)})"


# torch.OutOfMemoryError since torch 2.5; torch.cuda's name for it before (we support torch>=2.4)
_OUT_OF_MEMORY_TYPES = tuple({getattr(torch, "OutOfMemoryError", MemoryError),
                              getattr(torch.cuda, "OutOfMemoryError", MemoryError), MemoryError})


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether torch failed to allocate: a GPU's OutOfMemoryError, the CPU or MPS allocator's
    RuntimeError (torch raises no dedicated type for those), or a CUDA library's own allocation
    failing on a full GPU: cuBLAS's handle, made at a process's first matrix product
    ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), or cuDNN's."""
    if isinstance(exc, _OUT_OF_MEMORY_TYPES):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(sign in text for sign in _OUT_OF_MEMORY_SIGNS)


_OUT_OF_MEMORY_SIGNS = ("can't allocate memory", "out of memory", "CUBLAS_STATUS_ALLOC_FAILED",
                        "CUDNN_STATUS_ALLOC_FAILED")


def native_bf16_cpu() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX-512 BF16 or AMX). oneDNN then has bf16
    kernels, the LSTM's included; elsewhere bf16 is emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# Where ``train.amp=auto`` turns bf16 on: where it was measured both faster than float32 and
# within 0.3 points of its test accuracy (docs/results/train_speed.md, bf16_accuracy.md). On a
# 2-core AVX-512 BF16 CPU, LSTMs on row MNIST (28 steps) trained 1.0-1.4x faster (median 1.14x)
# at the same accuracy; RNNs and GRUs were no faster in bf16 than on rnnlab's float32 fast
# layers. A 784-step LSTM trained 2x faster, but its accuracy in bf16 is unmeasured, as is
# everything on GPUs: auto stays float32 there (train.amp=bf16 asks for it).
_AUTO_BF16_CELLS = frozenset({"lstm"})
_AUTO_BF16_MAX_STEPS = 28


def _check_amp_device(amp: str, device: torch.device) -> None:
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 on CPU or train.amp=off")


def resolve_amp(amp: str, device: torch.device, cell: str, steps: int) -> str:
    """The precision a run trains in: ``amp`` itself, or for ``auto`` bf16 where it was measured
    to pay (an LSTM over at most 28 steps on a CPU with native bf16) and ``off`` elsewhere."""
    _check_amp_device(amp, device)  # when the Trainer is built, before anything is written
    if amp != "auto":
        return amp
    if (device.type == "cpu" and cell in _AUTO_BF16_CELLS and steps <= _AUTO_BF16_MAX_STEPS
            and native_bf16_cpu()):
        return "bf16"
    return "off"


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision: bf16 on cpu or cuda, fp16 on cuda; ``off`` is a no-op: a caller's own
    autocast is left by :func:`autocast_off`, once, where rnnlab is entered (``auto``: see
    ``resolve_amp``)."""
    if amp == "auto":
        raise ValueError("resolve train.amp=auto with resolve_amp() first")
    if amp == "off":
        return contextlib.nullcontext()
    _check_amp_device(amp, device)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """Float32 inside a caller's own autocast (on any device that has one): a run, or an
    evaluation, computes in the precision it was given, not in the one its caller happened to set."""
    with contextlib.ExitStack() as stack:
        for device_type in _AUTOCAST_DEVICES:
            try:
                caller_set_it = torch.is_autocast_enabled(device_type)
            except RuntimeError:  # a device type this torch has no autocast for (mps before 2.5)
                continue
            if caller_set_it:
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


_AUTOCAST_DEVICES = ("cpu", "cuda", "mps", "xpu")


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A loss scaler, active only for fp16 (bf16 has float32's range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))


def _env_number(name: str, default: int) -> int:
    """A count torchrun sets for each process it starts (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``);
    unset or empty is ``default``, anything else but a whole number >= 0 is a clear error."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"{name}={text!r} in the environment is not a whole number; torchrun sets it for each "
                          f"process it starts: unset {name} to train in one process")
    return int(text)


def world_size() -> int:
    """Processes training this run together (``WORLD_SIZE`` set by torchrun; 1 otherwise)."""
    return max(_env_number("WORLD_SIZE", 1), 1)


def init_process_group(requested_device: str = "auto") -> None:
    """Join the torchrun process group once (a no-op for a single process).

    CUDA runs use NCCL with one GPU per process (``LOCAL_RANK``); CPU runs use Gloo.
    """
    if world_size() == 1 or torch.distributed.is_initialized():
        return
    if not torch.distributed.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run a single process")
    cuda = requested_device.split(":")[0] in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(_local_gpu())
    try:
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    except (ValueError, RuntimeError) as error:  # e.g. WORLD_SIZE set by hand, no MASTER_ADDR
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"WORLD_SIZE={world_size()} asks for {world_size()} processes, but joining "
                          f"their process group failed ({first_line}); launch with "
                          "`torchrun --nproc_per_node=N -m rnnlab train ...`, or unset WORLD_SIZE "
                          "to train in one process") from error


def broadcast_object(value: object) -> object:
    """Rank 0's ``value`` on every rank (e.g. a run folder name made from the clock)."""
    if not torch.distributed.is_initialized():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over all processes (the tensor itself when there is one)."""
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
    return values


def _bounds(count: int, rank_: int, world: int) -> tuple[int, int]:
    return count * rank_ // world, count * (rank_ + 1) // world


def shard(count: int) -> tuple[int, int]:
    """This process's contiguous share ``[start, stop)`` of ``count`` items, in rank order
    (all of them in a single process). Training batches and evaluation splits both use it."""
    if not torch.distributed.is_initialized():
        return 0, count
    return _bounds(count, torch.distributed.get_rank(), torch.distributed.get_world_size())


def all_gather_shards(part: torch.Tensor, count: int) -> torch.Tensor:
    """Every process's 1-D ``part`` (its ``shard(count)`` of the items), concatenated in rank
    order: the whole ``(count,)`` tensor on every process."""
    if not torch.distributed.is_initialized():
        return part
    world = torch.distributed.get_world_size()
    sizes = [stop - start for start, stop in (_bounds(count, r, world) for r in range(world))]
    padded = part.new_zeros(max(sizes))  # all_gather needs equal sizes
    padded[: len(part)] = part
    gathered = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(gathered, padded)
    return torch.cat([g[:size] for g, size in zip(gathered, sizes)])


_GLOO_DESTRUCTOR_HOLDS_GIL = torch.torch_version.TorchVersion(torch.__version__) < (2, 8)


def shutdown() -> None:
    """Leave the process group (end of a torchrun run), once every process has got here: a
    process that tears down its Gloo connections while a peer is still finishing can abort.
    Not after a Ctrl-C, when the processes stopped apart: a barrier would wait for peers that
    are gone. The command line ends its processes with :func:`end_process` instead."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        if torch.distributed.get_backend() == "gloo" and _GLOO_DESTRUCTOR_HOLDS_GIL:
            # The group's destructor joins its worker threads holding the GIL, while a worker may still
            # need it to free the last collective's tensors: a deadlock (pytorch/pytorch#154976, fixed
            # in 2.8; hung 1 torchrun test run in 2 on torch 2.4). Let the workers finish first.
            time.sleep(0.05)
        torch.distributed.destroy_process_group()


def end_process(code: int, *, together: bool) -> None:
    """End a process of a torchrun run at once, with exit status ``code``, once its output is
    flushed; nothing for a single process. Leaving the process group to the interpreter's exit
    aborts a process now and then, when C++'s static destructors meet Gloo's worker threads
    still running ("terminate called without an active exception", pytorch/pytorch#190489: 1
    interrupted run in 10-40 here, and once in CI at the end of a completed one), and destroying
    the group waits on, or aborts under, a peer's pending collective. Every file that matters was
    written and closed before, and the kernel drops the folder's lock. ``together``: the
    processes ended the run together, so each first waits at a barrier until all have (none
    leaves while a peer is still in a collective); not after a Ctrl-C, which stopped each at a
    step of its own, and a barrier would wait for peers that are gone."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if together:
        torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def rank() -> int:
    """This process's rank under torchrun; 0 in a single process, whatever ``RANK`` a cluster's
    environment may hold (a rank > 0 writes no files: a run would leave nothing behind)."""
    return _env_number("RANK", 0) if world_size() > 1 else 0


def wrap_for_training(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module the training loop calls: DistributedDataParallel (which averages gradients
    over processes in backward) under torchrun, the model itself otherwise."""
    if not torch.distributed.is_initialized():
        return model
    from torch.nn.parallel import DistributedDataParallel

    # The input standardisation, measured on the same training split in every process, never
    # changes: DDP need not broadcast it before every forward. Other buffers (a registered model's
    # running statistics, say) are, as DDP does by default. torch 2.13 renamed the argument.
    sync = any(name not in ("input_mean", "input_std") for name, _ in model.named_buffers())
    renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   **{"forward_sync_buffers" if renamed else "broadcast_buffers": sync})


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
