"""The whole SGD step of an Elman or LSTM stack in C (``native_step.c``), compiled on first use.

With plain SGD (no momentum, weight decay, clipping or hooks), a unidirectional ReLU or tanh RNN,
or LSTM, read at its last step, in float32 on the CPU, trains every step in C: the batch, forward,
loss, backward and update in one call, without TorchScript's per-op dispatch (a third of a
dlw-rnn-a step) or autograd's graph. The GEMMs are torch's own BLAS (MKL's ``sgemm_``, exported
by ``libtorch_cpu``), on torch's threads. The Trainer uses it where :func:`unsupported` says
nothing against it (benchmarks/README.md, sixteenth session, has the measurements).

The C source is compiled once per machine with the system's C compiler (``$CC``, ``cc``,
``gcc`` or ``clang``; about a second) into ``$RNNLAB_CACHE_DIR/native`` (default
``~/.cache/rnnlab/native``), under a name that hashes the source, the compiler and the CPU, so a
cache shared between machines never runs code built for another CPU. Where there is no compiler,
no MKL, or the build fails, :func:`native_step` returns None and the Trainer's other steps run:
the same training, within float rounding. ``RNNLAB_NATIVE=0`` switches the C step off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rnnlab import torch_library

SOURCE = Path(__file__).with_name("native_step.c")
_FLAGS = ("-O3", "-fPIC", "-shared", "-fno-trapping-math", "-std=c99")
ENABLED = os.environ.get("RNNLAB_NATIVE", "1").strip().lower() not in ("0", "false", "off", "no")
_library: list[Any] = []  # [CDLL or None], once per process
_why_not: list[str] = []


def unavailable_reason() -> str | None:
    """None if the C step can run in this process, else why not (after :func:`library`)."""
    library()
    return _why_not[0] if _why_not else None


def library() -> ctypes.CDLL | None:
    """The compiled C step, loaded and given torch's sgemm; None where it cannot be had."""
    if not _library:
        try:
            _library.append(_load())
        except _Unavailable as reason:
            _library.append(None)
            _why_not.append(str(reason))
    return _library[0]


class _Unavailable(Exception):
    pass


def _load() -> ctypes.CDLL:
    if not torch.backends.mkl.is_available():
        raise _Unavailable("this torch build has no MKL, whose sgemm the C step calls")
    sgemm = torch_library.symbol("sgemm_")
    if sgemm is None:
        raise _Unavailable("torch's library exports no sgemm_")
    compiler = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)
    if compiler is None:
        raise _Unavailable("no C compiler (set CC, or install gcc or clang)")
    try:
        path = _built(compiler)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:  # a compiler that hangs, a library that will not load
        raise _Unavailable(f"the C step could not be built or loaded ({exc})") from None
    lib.rnnlab_set_sgemm.argtypes = [ctypes.c_void_p]  # a pointer, not ctypes' default int
    lib.rnnlab_set_sgemm(_address(sgemm))
    lib.rnnlab_set_openmp.argtypes = [ctypes.c_void_p] * 3
    # torch's OpenMP team for the C step's threads; Nones where torch has none: one thread then
    lib.rnnlab_set_openmp(*[_address(torch_library.symbol(name))
                            for name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")])
    lib.rnnlab_workspace.restype = ctypes.c_long
    lib.rnnlab_workspace.argtypes = [ctypes.c_int] * 7
    lib.rnnlab_sgd_step.restype = ctypes.c_int
    lib.rnnlab_sgd_step.argtypes = (
        [ctypes.c_int] * 7 + [ctypes.c_void_p, ctypes.c_int, ctypes.c_long] + [ctypes.c_void_p] * 8
        + [ctypes.c_float, ctypes.c_float, ctypes.c_int, ctypes.c_void_p])
    lib.rnnlab_sgd_steps.restype = ctypes.c_int
    lib.rnnlab_sgd_steps.argtypes = (
        [ctypes.c_int] * 8 + [ctypes.c_void_p, ctypes.c_int, ctypes.c_long] + [ctypes.c_void_p] * 9
        + [ctypes.c_float, ctypes.c_void_p])
    return lib


def _address(function: Any) -> int | None:
    return None if function is None else ctypes.cast(function, ctypes.c_void_p).value


def _cpu_identity() -> str:
    """What code built with -march=native depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    keep = [line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(keep)) or platform.processor() or platform.machine()


def _built(compiler: str) -> Path:
    """The shared library for this source, compiler and CPU: from the cache, or built now."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(_FLAGS).encode(),
                                     _cpu_identity().encode()])).hexdigest()[:16]
    root = Path(os.environ.get("RNNLAB_CACHE_DIR") or Path.home() / ".cache" / "rnnlab") / "native"
    target = root / f"native_step-{key}.so"
    if target.exists():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        return _compile(compiler, root, target)
    except OSError:
        pass
    # A cache we cannot write: build for this process alone, in a folder of its own (never a shared
    # /tmp name, where another user could have put a library of theirs first).
    try:
        folder = Path(tempfile.mkdtemp(prefix="rnnlab-native-"))
        return _compile(compiler, folder, folder / target.name)
    except OSError as exc:
        raise _Unavailable(f"no folder to build the C step in ({root}: not writable; {exc})") from None


def _compile(compiler: str, folder: Path, target: Path) -> Path:
    errors = []
    for arch in (["-march=native"], []):  # a compiler without -march=native (Apple's clang on ARM): without
        fd, partial = tempfile.mkstemp(dir=folder, prefix=".native_step-", suffix=".so")
        os.close(fd)
        command = [compiler, *_FLAGS, *arch, str(SOURCE), "-o", partial, "-lm"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            done = None
            errors.append(str(exc))
        if done is not None and done.returncode == 0:
            os.replace(partial, target)  # atomic: a process building the same key at once is harmless
            return target
        Path(partial).unlink(missing_ok=True)
        if done is not None:
            errors.append(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    raise _Unavailable(f"{compiler} could not build {SOURCE.name}: {'; '.join(errors)}")


_CELLS = {"rnn_relu": 0, "rnn_tanh": 1, "lstm": 2}  # native_step.c's CELL_*


def _cell(model: Any) -> str | None:
    """The C step's name for ``model``'s recurrent layers, or None where it has none."""
    from .fast import FastRecurrent  # late: the models package imports this module's neighbours

    rnn, cfg = getattr(model, "rnn", None), model.config
    if cfg.impl == "torch":  # the reference torch.nn layers, asked for by name: nothing of ours
        return None
    if cfg.cell == "rnn" and isinstance(rnn, FastRecurrent):
        return f"rnn_{cfg.nonlinearity}"
    if cfg.cell == "lstm" and (isinstance(rnn, FastRecurrent) or type(rnn) is torch.nn.LSTM):
        return "lstm" if getattr(rnn, "proj_size", 0) == 0 else None
    return None


def unsupported(model: Any, data_x: Tensor, data_y: Tensor) -> str | None:
    """None if :class:`NativeStep` can train ``model`` on this training set, else why not."""
    from .fast_step import _has_hooks, step_parameters
    from .recurrent import SequenceClassifier

    if type(model) is not SequenceClassifier:  # the C step writes out SequenceClassifier.forward
        return f"a model class of its own ({type(model).__name__})"
    cell, cfg = _cell(model), model.config
    if cell is None:
        return "the C step is for rnnlab's Elman or LSTM layers (model.cell=rnn or lstm, model.impl not torch)"
    if model.directions != 1 or cfg.readout != "last" or (cfg.layers > 1 and cfg.dropout > 0):
        return "the C step is for one direction read at the last step, with no dropout between layers"
    if _has_hooks(model):
        return "hooks on the model's modules or parameters"
    params = list(model.parameters())
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        return "the C step is for float32 on the CPU"
    if data_x.device.type != "cpu" or data_x.dim() != 3 or data_x.dtype not in (torch.uint8, torch.float32):
        return "the C step reads a (N, T, F) uint8 or float32 training set in CPU memory"
    if data_y.dtype != torch.int64 or data_y.device.type != "cpu":
        return "the C step reads int64 labels in CPU memory"
    if not all(p.is_contiguous() for p in params):
        return "the C step needs contiguous parameters"
    # The C code trusts these shapes (it reads the weights by them): any other model is not for it.
    features, hidden = data_x.shape[-1], cfg.hidden
    gates = 4 * hidden if cell == "lstm" else hidden
    expected = [[(gates, features if layer == 0 else hidden), (gates, hidden), (gates,), (gates,)]
                for layer in range(cfg.layers)]
    shapes = [tuple(p.shape) for p in step_parameters(model)]
    if (shapes != [shape for layer in expected for shape in layer] + [(model.head.out_features, hidden),
                                                                       (model.head.out_features,)]
            or len(shapes) != len(params) or data_y.shape[0] != data_x.shape[0]):
        return "the model's shapes are not those of a recurrent stack on this data"
    if not ENABLED:
        return "RNNLAB_NATIVE=0"
    return None if library() is not None else unavailable_reason()


class NativeStep:
    """The C step for one model and its training set, called as ``step(indices, lr, label_smoothing)``,
    as ``fast_step.sgd_step`` is."""

    def __init__(self, model: Any, data_x: Tensor, data_y: Tensor) -> None:
        from .fast_step import step_parameters

        self.lib = library()
        assert self.lib is not None
        self.model, self.params = model, step_parameters(model)
        self.cell = _CELLS[_cell(model)]
        self.sizes = (ctypes.c_long * len(self.params))(*[p.numel() for p in self.params])
        self.data_x, self.data_y = data_x.contiguous(), data_y.contiguous()
        _, self.steps, self.features = self.data_x.shape
        self.layers, self.hidden = model.config.layers, model.config.hidden
        self.classes = model.head.out_features
        self.rows, self.data_u8 = self.data_x.shape[0], int(self.data_x.dtype == torch.uint8)
        self.totals = torch.zeros(2)
        self.work = torch.empty(0)
        self._pointers: tuple[int, ...] = ()
        self._batch = -1
        self._stamp: tuple[int, ...] = ()

    def _prepare(self, batch: int) -> None:
        """Pointers to the parameters (again if any was replaced), gradient buffers, the workspace,
        the standardisation as (F,) vectors (again if the model's buffers changed)."""
        pointers = tuple(p.data_ptr() for p in self.params)
        if pointers != self._pointers:
            if not all(p.is_contiguous() and p.dtype == torch.float32 for p in self.params):
                raise RuntimeError("rnnlab's C step needs contiguous float32 parameters")
            self.grads = [torch.empty_like(p) for p in self.params]
            self.param_array = (ctypes.c_void_p * len(pointers))(*pointers)
            self.grad_array = (ctypes.c_void_p * len(pointers))(*[g.data_ptr() for g in self.grads])
            self._pointers = pointers
        if batch != self._batch:
            size = self.lib.rnnlab_workspace(self.cell, self.layers, self.steps, batch, self.features, self.hidden,
                                             self.classes)
            if self.work.numel() < size:
                self.work = torch.empty(size)
            self._batch = batch
        mean, std = self.model.input_mean, self.model.input_std
        stamp = (mean.data_ptr(), mean._version, std.data_ptr(), std._version)
        if stamp != self._stamp:
            self.mean = mean.float().expand(self.features).contiguous()  # (F,), whatever broadcast it had
            self.std = std.float().expand(self.features).contiguous()
            self._stamp = stamp

    def _raise_for(self, code: int) -> None:
        """native_step.c's return codes 1 and 2 (nothing was changed by the failing step)."""
        if code == 1:
            raise IndexError(f"a training index is outside 0..{self.rows - 1}")
        if code == 2:
            raise ValueError(f"a label is outside 0..{self.classes - 1}")

    def __call__(self, indices: Tensor, lr: float, label_smoothing: float = 0.0, *, guard: bool = False) -> Tensor:
        """One step on rows ``indices`` (B,); (2,) = (summed loss, correct count). ``guard``: if the
        loss is NaN or infinite, leave the weights as they were (as a step that looks first does)."""
        if indices.dtype != torch.int64 or not indices.is_contiguous():
            indices = indices.to(torch.int64).contiguous()
        batch = indices.shape[0]
        if batch == 0 or indices.dim() != 1 or indices.device.type != "cpu":
            raise ValueError(f"the C step takes a (B,) tensor of training indices in CPU memory, B > 0; "
                             f"got shape {tuple(indices.shape)} on {indices.device}")
        self._prepare(batch)
        code = self.lib.rnnlab_sgd_step(
            self.cell, self.layers, self.steps, batch, self.features, self.hidden, self.classes,
            self.data_x.data_ptr(), self.data_u8, self.rows, self.data_y.data_ptr(), indices.data_ptr(),
            self.mean.data_ptr(), self.std.data_ptr(), self.param_array, self.grad_array, self.sizes,
            self.work.data_ptr(), lr, label_smoothing, int(guard), self.totals.data_ptr())
        self._raise_for(code)
        return self.totals.clone()


    def run(self, indices: Tensor, lrs: list[float], label_smoothing: float = 0.0) -> Tensor:
        """len(lrs) steps in one call, step s on rows ``indices[s]`` ((steps, B) int64) at ``lrs[s]``,
        none of them guarded; (steps, 2) totals, one row per step."""
        count, batch = indices.shape
        indices = indices.to(torch.int64).contiguous()
        self._prepare(batch)
        lr_array = (ctypes.c_float * count)(*lrs)
        totals = torch.empty(count, 2)
        code = self.lib.rnnlab_sgd_steps(
            count, self.cell, self.layers, self.steps, batch, self.features, self.hidden, self.classes,
            self.data_x.data_ptr(), self.data_u8, self.rows, self.data_y.data_ptr(), indices.data_ptr(),
            self.mean.data_ptr(), self.std.data_ptr(), self.param_array, self.grad_array, self.sizes,
            self.work.data_ptr(), lr_array, label_smoothing, totals.data_ptr())
        self._raise_for(code)
        return totals


def native_step(model: Any, data_x: Tensor, data_y: Tensor) -> NativeStep | None:
    """The C step for ``model`` on this training set, or None where it does not apply."""
    return NativeStep(model, data_x, data_y) if unsupported(model, data_x, data_y) is None else None
