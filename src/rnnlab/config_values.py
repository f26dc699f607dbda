"""Config values by field type: parsed from override text (``model.hidden=256``), or checked as
read from TOML or JSON (where an int may stand for a float, and nothing else is converted)."""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

from rnnlab.errors import ConfigError


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


def coerce(key: str, typ: Any, value: Any) -> Any:
    """Check a value read from TOML/dict against the field's type (ints are fine for floats)."""
    if isinstance(typ, types.UnionType):  # pragma: no cover - no optional fields today
        return value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(typ, True)
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {typ.__name__}")
    return float(value) if typ is float else value

