"""Reading the JSON files of the Perl/Go Warden, whose keys are case-insensitive.

Objects are parsed into :class:`KeyedObject`, which looks keys up by their lower-case
form, remembers how the user spelled each one (so errors quote it), and records a key
given twice.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(frozen=True)
class Problem:
    """One line of ``warden validate``: ``FILE: FIELD: problem``."""

    file: str
    field: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        text = f"{self.file}: {self.field}: {self.message}"
        return text + " (warning)" if self.warning else text


class KeyedObject(dict):
    """A JSON object keyed by lower-case key; ``spelling`` maps back to the user's key."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.spelling: dict[str, str] = {}
        self.duplicates: list[tuple[str, str]] = []
        for key, value in pairs:
            lower = key.lower()
            if lower in self.spelling:
                self.duplicates.append((self.spelling[lower], key))
            else:
                self.spelling[lower] = key
            self[lower] = value

    def spelled(self, lower: str) -> str:
        """The key as the user wrote it (or ``lower`` when absent)."""
        return self.spelling.get(lower, lower)

    def items_spelled(self) -> Iterator[tuple[str, str, Any]]:
        """``(lower, as spelled, value)`` for each key."""
        for lower, value in self.items():
            yield lower, self.spelling[lower], value


class JsonFileError(Exception):
    """The file could not be read or is not valid JSON; the message says where."""


def load(path: str) -> Any:
    """Parse ``path`` with case-insensitive objects, or raise :class:`JsonFileError`."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise JsonFileError(f"cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise JsonFileError(f"not UTF-8 text: {error.reason}") from None
    return loads(text)


def loads(text: str) -> Any:
    """Parse JSON ``text`` with case-insensitive objects, or raise :class:`JsonFileError`."""
    try:
        return json.loads(text, object_pairs_hook=KeyedObject)
    except json.JSONDecodeError as error:
        raise JsonFileError(
            f"invalid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None


def duplicate_problems(file: str, prefix: str, obj: KeyedObject) -> list[Problem]:
    """Problems for keys given twice in ``obj`` (in any casing)."""
    return [
        Problem(file, prefix + second, f"duplicate key (also given as {first!r})")
        for first, second in obj.duplicates
    ]


def is_int(value: Any) -> bool:
    """A JSON integer (booleans are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite JSON number (booleans are not numbers here). Python's reader also takes
    ``NaN`` and ``Infinity``, which compare false with everything: never a setting."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def in_range(value: Any, low: float, high: float) -> bool:
    """A finite number from ``low`` to ``high``, both included."""
    return is_number(value) and low <= value <= high


def shown(value: Any) -> str:
    """A value as the user wrote it in JSON, for a problem line: ``NaN``, ``1e+300``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value)
    return repr(value)


def unknown_key(spelled: str, known: Any) -> str:
    """The problem of an unknown key ``spelled``, naming the closest of ``known``."""
    lowered = {key.lower(): key for key in known}
    close = difflib.get_close_matches(spelled.lower(), list(lowered), n=1, cutoff=0.75)
    if not close:
        return "unknown key, ignored"
    suggestion = lowered[close[0]]
    return f'unknown key, ignored; did you mean "{suggestion}"?'


def any_case(value: str, known: Any) -> str:
    """``value`` as one of the ``known`` names it matches in any case; else unchanged."""
    return value if value in known else next((k for k in known if k.lower() == value.lower()), value)
