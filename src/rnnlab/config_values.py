"""Config values by field type: parsed from override text (``model.hidden=256``), or checked as
read from TOML or JSON (where an int may stand for a float, and nothing else is converted); and
the checks the configs' ``__post_init__`` make of them (a choice, a range, a folder name)."""

from __future__ import annotations

import functools
import math
import re
import types
import typing
from dataclasses import fields
from typing import Any

from rnnlab.errors import ConfigError, describe


def field_type(cls: type, name: str) -> Any:
    return _type_hints(cls)[name]


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # resolving the annotations is slow: once per class


def parse_value(key: str, typ: Any, text: str) -> Any:
    if typ is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}={text!r}: expected a boolean (true or false)")
    if typ is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected a whole number") from None
    if typ is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected a number such as 0.01 or 1e-3") from None
    return text


# What a value read from a file is, and what a field takes, in a TOML writer's words.
_KINDS = {str: "a string", bool: "a boolean", int: "an integer", float: "a decimal number", list: "a list",
          dict: "a table"}
_EXPECTED = {bool: "true or false", int: "a whole number", float: "a number", str: "a string in quotes"}


def coerce(key: str, typ: Any, value: Any, source: str = "") -> Any:
    """Check a value read from TOML/dict against the field's type (ints are fine for floats);
    ``source`` names the file it came from in the error (none for a config built in Python)."""
    if isinstance(typ, types.UnionType):  # pragma: no cover - no optional fields today
        return value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(typ, True)
    if not ok:
        where = f"{source}: " if source else ""
        kind = _KINDS.get(type(value)) or describe(value)
        example = _example(typ, value)
        fix = f", e.g. {key.rpartition('.')[2]} = {example}" if example is not None else ""
        raise ConfigError(f"{where}{key}={value!r} is {kind}; expected {_EXPECTED[typ]}{fix}")
    # The builtin type itself, not a subclass: NumPy's float64 (np.logspace(...)[i]) is a float, and
    # pickled into a checkpoint it made the file one torch.load(weights_only=True) refuses.
    builtin = {bool: bool, int: int, float: float, str: str.__str__}.get(typ)  # str.__str__: the text, even of a
    return builtin(value) if builtin is not None else value                   # (str, Enum) member


def _example(typ: Any, value: Any) -> str | None:
    """``value`` written as the field's type, in TOML, when it plainly means one ('64' for an int: 64)."""
    if isinstance(value, str) and typ in (bool, int, float):  # quoted by mistake
        try:
            parsed = parse_value("", typ, value.strip())
        except ConfigError:
            return None
        return str(parsed).lower() if typ is bool else repr(parsed)
    if typ is int and isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None


_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def choice(section: str, name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{section}.{name}={value!r} is not valid; choose one of: {', '.join(allowed)}")


def at_least(section: str, name: str, value: float, low: float, *, strict: bool = False) -> None:
    bad = value <= low if strict else value < low
    if bad:
        relation = ">" if strict else ">="
        raise ConfigError(f"{section}.{name}={value!r} is out of range; it must be {relation} {low}")


def at_most(key: str, value: float, high: float, note: str = "") -> None:
    if value > high:
        raise ConfigError(f"{key}={value!r} is out of range; it must be <= {high}{note}")


def check_values(section: str, cfg: Any) -> None:
    """Types (a config built in Python skips from_dict's checks), each value made its field's builtin
    type (an int for a float field: 1.0; NumPy's float64: float), and finite floats: nan passes
    every range check (each comparison is False) and inf trains straight into nan."""
    for f in fields(cfg):
        value = coerce(f"{section}.{f.name}" if section else f.name, field_type(type(cfg), f.name),
                       getattr(cfg, f.name))
        object.__setattr__(cfg, f.name, value)  # the dataclasses are frozen
        if isinstance(value, float) and not math.isfinite(value):
            key = f"{section}.{f.name}" if section else f.name
            hint = f" such as the default, {f.default!r}" if isinstance(f.default, float) else ""
            raise ConfigError(f"{key}={value!r} is not a finite number; give a finite value{hint}")


def folder_name(value: str) -> bool:
    """Whether ``value`` is one plain folder name (no separators, '..', hidden or odd characters)."""
    return bool(_FOLDER_NAME.fullmatch(value))


def check_folder_name(key: str, value: str) -> None:
    """Refuse a name that is not one plain folder name (no separators, '..', hidden or odd characters)."""
    if not folder_name(value):
        raise ConfigError(
            f"{key}={value!r} cannot be a folder name; use up to 100 letters, digits, '.', '_', '-' or '+', "
            "starting with a letter or digit (e.g. lstm-small_2)"
        )
