"""The two export formats: writing a model as ONNX or TorchScript with rnnlab's metadata, and
running a written file (for the check against eager PyTorch, and for users' demos). What is
exported and how it is checked is :mod:`rnnlab.export`'s."""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import os
import re
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from rnnlab.errors import RnnlabError
from rnnlab.export_paths import METADATA_FILE, VERSION_KEY

INPUT_NAME, LENGTHS_NAME, OUTPUT_NAME = "sequences", "lengths", "logits"
ONNX_OPSET = 17


class ExportError(RnnlabError):
    """Export failed, a dependency is missing, or the exported model disagrees with PyTorch."""


# ---------------------------------------------------------------------------- ONNX
def require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ExportError(f"ONNX export needs onnx and onnxruntime ({exc.name} is missing): "
                          "pip install 'rnnlab[export]' (from a checkout: pip install -e '.[export]')") from None
    return onnx, onnxruntime


# Printed by torch's C++ code straight to stderr (not Python warnings, so no filter reaches them)
# when a bidirectional model of varying lengths packs its batch. The export is checked against
# the PyTorch model on the test sequences, shorter ones included, so they are noise to a user.
_BENIGN_CPP_WARNINGS = ("The shape inference of prim::PackPadded type is missing",
                        "The shape inference of prim::PadPacked type is missing")


_FD2_LOCK = threading.Lock()  # one redirection of fd 2 at a time: nested ones would restore each other's file


@contextlib.contextmanager
def _without_cpp_lines(patterns: tuple[str, ...]) -> Iterator[None]:
    """Hold back the lines written to file descriptor 2 that contain one of ``patterns``; every
    other line is written to stderr afterwards, in order. Exports in other threads wait."""
    if sys.stderr is None:  # no stderr at all (pythonw): nothing to keep clean
        yield
        return
    with _FD2_LOCK, tempfile.TemporaryFile() as held:  # a file, not a pipe: no size limit, no reader thread
        sys.stderr.flush()  # what Python has buffered belongs before the redirection
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True)
                    if not any(p.encode() in line for p in patterns)]
            if kept:  # through Python's stderr, so that whoever replaced it (a test, a log) sees them
                sys.stderr.write(b"".join(kept).decode(errors="replace"))
                sys.stderr.flush()


def write_onnx(model: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path, dynamic_steps: bool,
                metadata: dict[str, Any]) -> None:
    onnx, _ = require_onnx()
    names = [INPUT_NAME, LENGTHS_NAME][:len(example)]
    axes: dict[str, dict[int, str]] = {INPUT_NAME: {0: "N", 1: "T"} if dynamic_steps else {0: "N"},
                                       LENGTHS_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}}
    with warnings.catch_warnings(), torch.no_grad(), _without_cpp_lines(_BENIGN_CPP_WARNINGS):
        warnings.simplefilter("ignore")  # deprecation and tracer chatter; correctness is checked after
        try:
            # The TorchScript-based exporter maps nn.LSTM/GRU/RNN to ONNX's own recurrent ops,
            # handles dynamic axes well and takes well under a second.
            # Before torch 2.5 it is the only one, and export() has no ``dynamo`` argument.
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            torch.onnx.export(model, example, str(path), input_names=names, output_names=[OUTPUT_NAME],
                              dynamic_axes={k: v for k, v in axes.items() if k in (*names, OUTPUT_NAME)},
                              opset_version=ONNX_OPSET, **legacy)
        except OSError:
            raise  # the file could not be written: the other exporter would fail the same way, noisily
        except Exception as legacy_error:  # noqa: BLE001 - a torch without it: try the dynamo exporter
            batch = torch.export.Dim("N", min=1)
            dims = {0: batch, 1: torch.export.Dim("T", min=2)} if dynamic_steps else {0: batch}
            shapes = ({**dims}, {0: batch})[:len(example)]
            try:
                torch.onnx.export(model, example, str(path), input_names=names,
                                  output_names=[OUTPUT_NAME], dynamic_shapes=shapes, dynamo=True,
                                  external_data=False, verbose=False)
            except OSError:
                raise  # the file, not the exporter: reported as such, naming --out
            except Exception as exc:  # noqa: BLE001
                raise ExportError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]} "
                                  f"(legacy exporter: {str(legacy_error).splitlines()[0][:200]})") from None
    proto = onnx.load(str(path))
    proto.doc_string = ("rnnlab recurrent classifier: sequences (N, T, F)"
                        + (" in [0, 1]" if metadata.get("input_range") else "")
                        + (", lengths (N,)" if len(example) > 1 else "") + " -> logits (N, classes)")
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(path))


Runner = Callable[..., np.ndarray]  # (sequences (N, T, F) float32[, lengths (N,) int64]) -> logits (N, C)


def _json(text: str | bytes) -> Any:
    """``text`` decoded, or None where it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return None


def _ours(metadata: Any) -> dict[str, Any] | None:
    """A file's decoded metadata if rnnlab wrote it (it has our version key), else None."""
    return metadata if isinstance(metadata, dict) and VERSION_KEY in metadata else None


def onnx_runner(path: Path) -> tuple[Runner, dict[str, Any] | None]:
    """``(run, metadata)``: run takes float32 and int64 arrays as the graph does; metadata is
    None for an ONNX file that rnnlab did not write."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    # One thread, no spin-waiting: checks are small, and spinning threads starve a busy machine.
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        feed = {INPUT_NAME: x} if lengths is None else {INPUT_NAME: x, LENGTHS_NAME: lengths}
        return session.run([OUTPUT_NAME], feed)[0]

    # One metadata_props entry per key, each value JSON-encoded (write_onnx)
    return run, _ours({k: _json(v) for k, v in session.get_modelmeta().custom_metadata_map.items()})


# ---------------------------------------------------------------------------- TorchScript
def write_torchscript(model: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path,
                       dynamic_steps: bool, metadata: dict[str, Any]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # Tracing records aten::lstm & co. with sizes read from the input, so N (and T) stay free;
        # our own check below replaces the tracer's check_trace.
        traced = torch.jit.trace(model, example, check_trace=False)
        if len(example) > 1:  # a traced graph keeps no Python checks: wrap it in a scripted one
            traced = torch.jit.script(_LengthsChecked(traced))
        try:
            torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(metadata)})
        except RuntimeError as exc:  # the C++ writer's "open file failed with strerror: ..." and such
            raise _save_error(exc, path) from None


def _save_error(exc: RuntimeError, path: Path) -> BaseException:
    """torch.jit.save's RuntimeError about the file as an OSError naming it (``replacing`` then
    names the user's path instead of the temporary file); any other RuntimeError as it is."""
    message = str(exc)
    if "file" not in message.lower():
        return exc
    found = re.search(r"strerror: ([^,\n]+)", message)
    if found is None and "cannot be opened" in message:  # older torch (2.4) says no more than that:
        existed = os.path.lexists(path)  # so ask the OS why, with the same open
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))
        except OSError as probe:
            return OSError(probe.errno, probe.strerror, str(path))
        if not existed:
            os.unlink(path)
    reason = found.group(1).strip() if found else message.splitlines()[-1][:200].replace(str(path), "the file")
    code = next((n for n in errno.errorcode if os.strerror(n) == reason), errno.EIO)
    return OSError(code, reason, str(path))


class _LengthsChecked(torch.nn.Module):
    """Refuses lengths outside 1..T, or not one per sequence, before the traced model reads them
    (past T it would fail with a bare index error; 0 or less would give meaningless logits)."""

    def __init__(self, traced: torch.nn.Module) -> None:
        super().__init__()
        self.traced = traced

    def forward(self, sequences: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        steps = sequences.shape[1]
        if lengths.dim() != 1 or lengths.shape[0] != sequences.shape[0]:
            raise ValueError(f"lengths must have shape (N,) = ({sequences.shape[0]},), one per sequence; "
                             f"got {lengths.shape}")
        if lengths.numel() > 0 and (bool((lengths < 1).any()) or bool((lengths > steps).any())):
            raise ValueError(f"each length must be from 1 to the padded length T = {steps}; got lengths from "
                             f"{int(lengths.min())} to {int(lengths.max())}")
        return self.traced(sequences, lengths)


def torchscript_runner(path: Path) -> tuple[Runner, dict[str, Any] | None]:
    """``(run, metadata)``: run takes float32 and int64 arrays as the module does; metadata is
    None for a TorchScript file that rnnlab did not write."""
    extra = {METADATA_FILE: ""}  # torch.jit.load fills in the extra files it finds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    module.eval()

    def tensor(array: np.ndarray) -> torch.Tensor:
        # torch.from_numpy warns about a read-only array (torch may not write into it): copy that one
        return torch.from_numpy(array if array.flags.writeable else array.copy())

    def run(x: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        inputs = (tensor(x),) if lengths is None else (tensor(x), tensor(lengths))
        with torch.no_grad():
            return module(*inputs).numpy()

    return run, _ours(_json(extra[METADATA_FILE]))  # left "" (no JSON) where the file has none
