"""Models of one's own (``rnnlab.register_model``): importing the modules that register them, in
this process and in a compare's workers, and trying what a builder made before a run relies on it."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from rnnlab.config import REGISTERED_CELLS, ModelConfig
from rnnlab.errors import ConfigError, describe, warn_caller
from rnnlab.models.recurrent import SequenceClassifier

_IMPORTED: list[str] = []  # what import_models imported, in order: a compare's workers import it too
_registrations = 0  # register_model calls so far: import_models tells a module that made none


def count_registration() -> None:
    """Called by ``register_model`` for each model it registers."""
    global _registrations
    _registrations += 1


def import_models(source: str, *, say_if_none: bool = True) -> None:
    """Import the module that registers models of one's own: a Python file (``my_cells.py``; its
    folder heads ``sys.path`` while it runs, as ``python my_cells.py`` would have it, so that its
    imports of files beside it work) or a module name on ``sys.path`` or under the current folder,
    as ``python -m`` finds it (``mypackage.cells``). ``sys.path`` is left as it was: a caller's own
    later imports must not find that folder's files (its ``data.py`` would shadow theirs). A
    module already imported is not run again; one that runs and registers no model is warned of
    (``say_if_none``), since every run naming its model would then fail as an unknown cell."""
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"import_models takes a Python file or a module name, not {source!r}")
    path = Path(source).expanduser()
    as_file = source.endswith(".py") or os.sep in source or (os.altsep or os.sep) in source
    registered_before, modules_before = _registrations, len(sys.modules)
    try:
        if as_file:
            if not path.is_file():
                raise ConfigError(f"cannot import {source}: no such file (give a .py file that calls "
                                  "rnnlab.register_model, or a module name on sys.path)")
            path = path.resolve()
            source = str(path)
            _run_file(path)
        else:
            here = os.getcwd() if os.getcwd() not in sys.path and "" not in sys.path else None
            with _on_sys_path(here, first=False):  # last: found as `python -m` finds it, shadowing nothing
                importlib.import_module(source)
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module: one line, its traceback chained
        where = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"cannot import {source}{where}: {type(exc).__name__}: {detail}") from exc
    if say_if_none and _registrations == registered_before and len(sys.modules) > modules_before:
        warn_caller(f"{source} registered no model: decorate a builder in it with "
                    "@rnnlab.register_model(name, summary) to train it as model.cell=name", UserWarning)
    if source not in _IMPORTED:
        _IMPORTED.append(source)


def _run_file(path: Path) -> None:
    name = _module_name(path)
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py file always has both
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_sys_path(str(path.parent), first=True):  # its own imports of files beside it work
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


@contextlib.contextmanager
def _on_sys_path(folder: str | None, *, first: bool) -> Iterator[None]:
    """``folder`` on ``sys.path`` (at its head, or ``first=False`` at its end) while a module of
    one's own is imported, and off it again after; nothing if it is None or there already. A
    compare's workers import the module again by its file or name (:func:`imported_models`), so
    nothing later needs the folder; imports a module makes later, inside a function, must find
    their modules as any of the caller's would."""
    if folder is None or folder in sys.path:
        yield
        return
    if first:
        sys.path.insert(0, folder)
    else:
        sys.path.append(folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # the module may have taken it off itself
            sys.path.remove(folder)


def _module_name(path: Path) -> str:
    """The file's stem, as ``import`` would name it, unless another module has that name (one
    imported, or one a later import would find: a file named onnx.py must not stand in for onnx)."""
    suffix = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    if not path.stem.isidentifier():
        return f"rnnlab_models_{suffix}"
    held = sys.modules.get(path.stem)
    if held is not None:
        mine = Path(getattr(held, "__file__", "") or "").resolve() == path
        return path.stem if mine else f"{path.stem}_{suffix}"
    try:
        other = importlib.util.find_spec(path.stem)
    except (ImportError, ValueError):
        other = None
    if other is not None and other.origin and Path(other.origin).resolve() != path:
        return f"{path.stem}_{suffix}"
    return path.stem


def imported_models() -> list[str]:
    """What another process must import to know this one's models of one's own: the files and
    modules :func:`import_models` imported, then the modules that registered the others (a script's
    own ``__main__`` is imported again by spawn itself; see :func:`unshareable_models`)."""
    from rnnlab.models.registry import get_builder

    sources = list(_IMPORTED)
    for name in REGISTERED_CELLS:
        module = sys.modules.get(getattr(get_builder(name), "__module__", ""))
        if module is None or module.__name__ in ("__main__", "__mp_main__"):
            continue
        file = str(Path(module.__file__).resolve()) if getattr(module, "__file__", None) else None
        if module.__name__ not in sources and file not in sources:
            sources.append(module.__name__)
    return sources


def unshareable_models() -> list[str]:
    """Models of one's own that a new process cannot import: registered in an interactive
    ``__main__`` (a notebook, ``python -c``, the REPL), which has no file to run again."""
    from rnnlab.models.registry import get_builder

    main = sys.modules.get("__main__")
    interactive = main is None or not getattr(main, "__file__", None)
    return [name for name in REGISTERED_CELLS
            if interactive and getattr(get_builder(name), "__module__", "") == "__main__"]


_PROBE_BATCH = 3  # sequences: a size no module assumes, unlike 1 or 2


def check_builder_signature(builder: Callable[..., Any], name: str, arguments: dict[str, Any]) -> None:
    """Refuse a builder that cannot take the keyword arguments ``create_model`` passes."""
    try:
        inspect.signature(builder).bind(**arguments)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: its builder must take the keyword arguments {', '.join(arguments)} "
                          f"(def build(*, config, input_size, seq_len, num_classes, input_mean=0.0, "
                          f"input_std=1.0)); {exc}") from None
    except ValueError:  # no signature to read (a builtin): the call itself will tell
        pass


def check_own_model(model: Any, config: ModelConfig, *, input_size: int, seq_len: int) -> None:
    """A registered builder's model, tried in eval mode (BatchNorm statistics are left alone) on a
    few sequences of the trained length: a mistake in it is named here, where it was made, not in
    the first training step."""
    name = config.cell
    if not isinstance(model, SequenceClassifier):
        raise ConfigError(f"model {name!r}: its builder returned {describe(model)}; it must return "
                          "rnnlab.models.SequenceClassifier(config, ..., recurrent=your_module)")
    width = (2 if config.bidirectional else 1) * config.hidden
    x = torch.zeros(_PROBE_BATCH, seq_len, input_size, device=model.input_mean.device)  # (B, T, F)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            states = model.hidden_states(x)
    except Exception as exc:  # noqa: BLE001 - the user's module: say where, keep the cause chained
        raise ConfigError(f"model {name!r}: its recurrent module failed on an input of shape {tuple(x.shape)} "
                          f"(B, T, F): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    finally:
        model.train(was_training)
    if not isinstance(states, torch.Tensor) or tuple(states.shape) != (_PROBE_BATCH, seq_len, width):
        got = tuple(states.shape) if isinstance(states, torch.Tensor) else describe(states)
        raise ConfigError(f"model {name!r}: its recurrent module must return the states (B, T, {width}) (D*H: "
                          f"model.hidden={config.hidden}{', two directions' if config.bidirectional else ''}), "
                          f"alone or first in a tuple as torch.nn.LSTM(batch_first=True) does; for an input "
                          f"{tuple(x.shape)} its states were {got}")


def raised_in_own_code(exc: BaseException, model: torch.nn.Module) -> bool:
    """Whether ``exc`` came through the code of a model of one's own: a frame of its traceback in
    the file of any of ``model``'s module classes that lies outside rnnlab and torch."""
    own_files = set()
    for module in model.modules():
        try:
            own_files.add(os.path.realpath(inspect.getfile(type(module))))
        except (TypeError, OSError):  # a class defined in a notebook or a string has no file
            continue
    own_files = {f for f in own_files if not f.startswith(_NOT_OWN)}
    tb = exc.__traceback__
    while tb is not None:
        if os.path.realpath(tb.tb_frame.f_code.co_filename) in own_files:
            return True
        tb = tb.tb_next
    return False


_NOT_OWN = tuple(os.path.realpath(folder) + os.sep for folder in (os.path.dirname(torch.__file__),
                                                                 Path(__file__).resolve().parents[1]))  # torch's, rnnlab's
