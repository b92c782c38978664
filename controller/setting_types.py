"""The value types a setting can have, each parsing a value and describing itself.

A type parses in one of two ways:

- **loose** for the configuration (YAML file, ``INFEROS_<PATH>`` environment, CLI flags):
  environment values are strings, so ``"128"`` is an integer and ``"yes"`` is true;
- **strict** for a JSON body (``POST /v1/policy``): JSON has types, and a client that sends
  ``true`` for an integer, ``1.5`` or ``"3"`` for a count or ``"1"`` for a boolean made a
  mistake that is reported, not guessed at (``2.0`` is the integer 2, as in JSON Schema).

Either way the value must lie within the declared bounds. A bad value raises ``ValueError``
with a message for a user (the caller adds the key and the line); nothing else is raised,
whatever the input (huge integers, NaN, deep structures, megabyte strings). Each type also
gives its JSON Schema (for the OpenAPI document) and a short description (for the docs).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from inferos.errors import ConfigError
from inferos.proxy.bounded_json import is_text
from inferos.proxy.settings import HostPort, normalize_upstream

# Values are echoed in error messages; a client's megabyte string is not.
_SHOWN_CHARS = 60
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def shown(value: Any) -> str:
    """``repr(value)``, cut short: error messages quote what they reject."""
    if isinstance(value, dict | list):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"


def _in_bounds(number: float, low: float | None, high: float | None, low_open: bool) -> bool:
    if low is not None and (number <= low if low_open else number < low):
        return False
    return high is None or number <= high


def _number_text(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _bounds_text(low: float | None, high: float | None, low_open: bool) -> str:
    if low is not None and high is not None and not low_open:
        return f"{_number_text(low)}..{_number_text(high)}"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {_number_text(low)}")
    if high is not None:
        parts.append(f"<= {_number_text(high)}")
    return ", ".join(parts)


class SettingType:
    """A setting's type. ``python`` is the type of a parsed value (what the Policy
    dataclasses annotate)."""

    python: ClassVar[type]

    def parse(self, value: Any, *, strict: bool) -> Any:
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Int(SettingType):
    minimum: int
    maximum: int
    python: ClassVar[type] = int

    def parse(self, value: Any, *, strict: bool) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif not strict and isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,20}\s*",
                                                                     value):
            number = int(value)
        elif isinstance(value, float) and value.is_integer():
            number = int(value)  # JSON Schema's "integer" admits 2.0, and so do we
        if number is None:
            raise ValueError(f"expected an integer, got {shown(value)}")
        if not self.minimum <= number <= self.maximum:
            raise ValueError(f"must be {self.describe_bounds()}; got {shown(value)}")
        return number

    def describe_bounds(self) -> str:
        return _bounds_text(self.minimum, self.maximum, False)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}

    def describe(self) -> str:
        return f"integer {self.describe_bounds()}"


@dataclass(frozen=True, slots=True)
class Float(SettingType):
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False          # the minimum itself is excluded
    unit: str = ""               # "s", "ms": part of the description only
    python: ClassVar[type] = float

    def parse(self, value: Any, *, strict: bool) -> float:
        number: float | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            # Compared as an int first: float(10**400) would overflow.
            if _in_bounds(value, self.minimum, self.maximum, self.above):
                number = float(value)
            else:
                raise ValueError(f"must be {self.describe_bounds()}; got {shown(value)}")
        elif isinstance(value, float):
            number = value
        elif not strict and isinstance(value, str) and len(value) <= 40:
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is None:
            raise ValueError(f"expected a number, got {shown(value)}")
        if not math.isfinite(number) or not _in_bounds(number, self.minimum, self.maximum,
                                                       self.above):
            raise ValueError(f"must be {self.describe_bounds()}; got {shown(value)}")
        return number

    def describe_bounds(self) -> str:
        return _bounds_text(self.minimum, self.maximum, self.above) or "finite"

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "number"}
        if self.minimum is not None:
            schema["exclusiveMinimum" if self.above else "minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema

    def describe(self) -> str:
        unit = {"s": "seconds", "ms": "milliseconds"}.get(self.unit, "number")
        return f"{unit} {self.describe_bounds()}"


@dataclass(frozen=True, slots=True)
class Bool(SettingType):
    python: ClassVar[type] = bool

    def parse(self, value: Any, *, strict: bool) -> bool:
        if isinstance(value, bool):
            return value
        if not strict and isinstance(value, str) and value.strip().lower() in _TRUE:
            return True
        if not strict and isinstance(value, str) and value.strip().lower() in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {shown(value)}")

    def json_schema(self) -> dict[str, Any]:
        return {"type": "boolean"}

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True, slots=True)
class Choice(SettingType):
    choices: tuple[str, ...]
    python: ClassVar[type] = str

    def parse(self, value: Any, *, strict: bool) -> str:
        if isinstance(value, str) and value in self.choices:
            return value
        raise ValueError(f"must be one of {', '.join(self.choices)}; got {shown(value)}")

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.choices)}

    def describe(self) -> str:
        return " | ".join(self.choices)


@dataclass(frozen=True, slots=True)
class Text(SettingType):
    max_length: int = 4096
    min_length: int = 0
    python: ClassVar[type] = str

    def parse(self, value: Any, *, strict: bool) -> str:
        if isinstance(value, str):
            text = value
        elif not strict and isinstance(value, int | float) and not isinstance(value, bool):
            text = str(value)
        else:
            raise ValueError(f"expected a string, got {shown(value)}")
        if len(text) > self.max_length:
            raise ValueError(f"longer than {self.max_length} characters")
        if len(text) < self.min_length:
            raise ValueError(f"shorter than {self.min_length} characters")
        # json reads "\ud800" into a str no file, log line or metric label can encode.
        if not is_text(text):
            raise ValueError("contains a lone UTF-16 surrogate, which is not Unicode text")
        return text

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "maxLength": self.max_length}
        if self.min_length:
            schema["minLength"] = self.min_length
        return schema

    def describe(self) -> str:
        return "text"


@dataclass(frozen=True, slots=True)
class TextList(SettingType):
    """A list of strings: a YAML or JSON list, or one comma-separated string (how an
    environment variable gives a list). Kept as a tuple, in order, blanks dropped."""

    max_items: int = 64
    max_length: int = 256
    starts_with: str = ""        # every item must begin so ("/" for path patterns)
    python: ClassVar[type] = tuple

    def parse(self, value: Any, *, strict: bool) -> tuple[str, ...]:
        if isinstance(value, str) and not strict:
            items: list[Any] = value.split(",")
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise ValueError(f"expected a list of strings, got {shown(value)}")
        if len(items) > self.max_items:
            raise ValueError(f"more than {self.max_items} items")
        out: list[str] = []
        for item in items:
            if not isinstance(item, str):
                raise ValueError(f"expected a list of strings, got an item {shown(item)}")
            text = item.strip()
            if not text:
                continue
            if len(text) > self.max_length:
                raise ValueError(f"an item is longer than {self.max_length} characters")
            if not text.startswith(self.starts_with):
                raise ValueError(f"every item must start with {self.starts_with!r}; "
                                 f"got {shown(text)}")
            out.append(text)
        return tuple(out)

    def json_schema(self) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "string", "maxLength": self.max_length}
        if self.starts_with:
            item["pattern"] = "^" + re.escape(self.starts_with)
        return {"type": "array", "maxItems": self.max_items, "items": item}

    def describe(self) -> str:
        return "list of text (comma-separated in the environment)"


# One grammar for the parser and the JSON Schema (so no \d: Python's matches any Unicode
# digit, and no inline flags: JSON Schema patterns have none).
SIZE_PATTERN = r"^\s*[0-9]{1,30}(\.[0-9]{1,30})?\s*(([kKmMgGtT][iI]?)?[bB])?\s*$"
_SIZE_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
               "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}
TIB = 1024**4


def byte_size(value: Any, *, minimum: int = 1, maximum: int = TIB) -> int:
    """``64MiB``, ``4096 MiB``, ``1GB`` or a plain integer number of bytes, within bounds."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)  # JSON Schema's "integer" admits 2048.0, as Int.parse does
    elif isinstance(value, str) and len(value) <= 80 and re.fullmatch(SIZE_PATTERN, value):
        text = value.strip().upper().replace(" ", "")
        digits = text.rstrip("KMGTIB")
        number = int(float(digits) * _SIZE_UNITS[text[len(digits):]])
    if number is None:
        raise ValueError(f"expected a size such as 64MiB, got {shown(value)}")
    if not minimum <= number <= maximum:
        raise ValueError(f"expected a size from {minimum} bytes to {maximum // TIB}TiB, "
                         f"got {shown(value)}")
    return number


@dataclass(frozen=True, slots=True)
class ByteSize(SettingType):
    """A number of bytes: an integer, or a string with a unit (``64MiB``, ``1GB``), in both
    the file and a JSON body."""

    minimum: int = 1
    maximum: int = TIB
    python: ClassVar[type] = int

    def parse(self, value: Any, *, strict: bool) -> int:
        return byte_size(value, minimum=self.minimum, maximum=self.maximum)

    def json_schema(self) -> dict[str, Any]:
        return {"oneOf": [{"type": "integer", "minimum": self.minimum, "maximum": self.maximum},
                          {"type": "string", "pattern": SIZE_PATTERN}]}

    def describe(self) -> str:
        return "bytes (64MiB, 1GB, 1048576)"


@dataclass(frozen=True, slots=True)
class Address(SettingType):
    """A listener, ``HOST:PORT``."""

    python: ClassVar[type] = HostPort

    def parse(self, value: Any, *, strict: bool) -> HostPort:
        if isinstance(value, HostPort):
            return value
        if not isinstance(value, str) or len(value) > 300:
            raise ValueError(f"expected HOST:PORT, got {shown(value)}")
        try:
            return HostPort.parse(value)
        except ConfigError as exc:
            raise ValueError(exc.reason) from exc

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": r"^.*:[0-9]{1,5}$"}

    def describe(self) -> str:
        return "HOST:PORT"


@dataclass(frozen=True, slots=True)
class Url(SettingType):
    """An http(s) origin, optionally with a path prefix; kept without its trailing slash."""

    python: ClassVar[type] = str

    def parse(self, value: Any, *, strict: bool) -> str:
        if not isinstance(value, str) or len(value) > 2048:
            raise ValueError(f"expected an http(s) URL, got {shown(value)}")
        try:
            return normalize_upstream(value)
        except ConfigError as exc:
            raise ValueError(exc.reason) from exc

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "uri", "pattern": "^https?://"}

    def describe(self) -> str:
        return "http(s) URL"
