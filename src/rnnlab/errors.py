"""User-facing errors.

Anything a user can cause (a bad file, an unknown name, a bad value) raises a subclass of
``RnnlabError``. The CLI turns these into one clear line on stderr and exit status 2; a library
user catches them like any other exception. Bugs stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations

import os
import sys
import warnings
from contextvars import ContextVar
from typing import Any

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_COMMAND_LINE = _PACKAGE + "cli" + os.sep
# A compare's worker process runs each seed from this function: there, it is the command's own line
# (the pool's other functions run in the compare's process, under the caller's own line).
_WORKER_TASK = (_PACKAGE + "pool.py", "_started")


def warn_caller(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn`` pointing at the caller's line: the first outside rnnlab (``rnnlab.train``,
    ``build_report``, ...) and outside torch (a module's forward), however deep the warning arises.
    Under the command line, at the command's own line: its one-line format shows rnnlab's warnings (in a
    compare's worker process, at the pool's line that runs the seed, not at concurrent.futures')."""
    torch_dir = getattr(sys.modules.get("torch"), "__file__", None)
    inside = (_PACKAGE,) if torch_dir is None else (_PACKAGE, os.path.dirname(os.path.abspath(torch_dir)) + os.sep)
    frame, stacklevel = sys._getframe(1), 2  # stacklevel 2: the caller of this function
    while frame is not None:
        where = os.path.abspath(frame.f_code.co_filename)
        if (where.startswith(_COMMAND_LINE) or (where, frame.f_code.co_name) == _WORKER_TASK
                or not where.startswith(inside)):
            break
        frame, stacklevel = frame.f_back, stacklevel + 1
    warnings.warn(message, category, stacklevel=stacklevel if frame is not None else 2)


# True while the command line runs a command (rnnlab.cli.main sets it; a compare's worker processes
# are told by rnnlab.pool): errors then name the flags the user typed, not a Python caller's keywords.
COMMAND_LINE: ContextVar[bool] = ContextVar("rnnlab_command_line", default=False)


def option(flag: str, keyword: str) -> str:
    """How an error names a setting: ``flag`` ("--out") under the command line, else ``keyword``,
    the Python spelling ("out=", "check=False"), for a caller who never typed the flag."""
    return flag if COMMAND_LINE.get() else keyword


def option_value(flag: str, keyword: str, value: Any) -> str:
    """A setting with the value given, as the user wrote it: ``--out runs/x`` under the command
    line, else ``out='runs/x'`` (paths as text, other values as Python writes them)."""
    if COMMAND_LINE.get():
        return f"{flag} {os.fspath(value) if isinstance(value, os.PathLike) else value}"
    return f"{keyword}={os.fspath(value) if isinstance(value, os.PathLike) else value!r}"


def describe(value: Any) -> str:
    """What a wrong argument is, for an error message: "None", "a dict", "an int", "an array of strings"."""
    if value is None:
        return "None"
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    if isinstance(kind, str) and getattr(value, "shape", None) == ():  # np.int64(3), not an array
        return f"a numpy {value.dtype} scalar (int(x) or float(x) makes it a Python number)"
    if isinstance(kind, str) and hasattr(value, "shape"):  # a numpy array: say what it holds
        return f"an array of {({'O': 'Python objects', 'U': 'strings', 'S': 'bytes'}).get(kind, value.dtype)}"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"


class RnnlabError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(RnnlabError, ValueError):
    """A configuration value or override is invalid."""


class UnknownModelError(ConfigError):
    """A model.cell this process does not know: a model of one's own whose module is not imported."""


class DataWarning(UserWarning):
    """Data that trains, but likely not as meant (test labels training never shows, say)."""


class DataError(RnnlabError):
    """A data file is missing, corrupt, or fails its checksum."""


class MissingDataError(DataError):
    """Data that is not there to read (no such file or folder, not downloaded, no download
    possible), as opposed to data that is there but wrong: a caller that can do without it (an
    export's check) may offer that."""


class CheckpointError(RnnlabError):
    """A run folder or checkpoint is missing, incomplete or not loadable."""


class DivergedError(RnnlabError):
    """Training produced a non-finite loss."""


class ResourceError(RnnlabError):
    """The machine ran out of something the run needs (memory); smaller settings fix it."""
