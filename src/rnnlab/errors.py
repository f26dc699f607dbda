"""User-facing errors.

Anything a user can cause (a bad file, an unknown name, a bad value) raises a subclass of
``RnnlabError``. The CLI turns these into one clear line on stderr and exit status 2; a library
user catches them like any other exception. Bugs stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations

from typing import Any


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


class DataError(RnnlabError):
    """A data file is missing, corrupt, or fails its checksum."""


class CheckpointError(RnnlabError):
    """A run folder or checkpoint is missing, incomplete or not loadable."""


class DivergedError(RnnlabError):
    """Training produced a non-finite loss."""


class ResourceError(RnnlabError):
    """The machine ran out of something the run needs (memory); smaller settings fix it."""
