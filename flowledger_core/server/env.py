"""Reading a service's settings from the environment, shared by the store and the engine.

Each reader validates one variable and raises :class:`SettingsError` naming it, so a typo stops
the process with one line instead of failing later (or running with a silent default). Blank
values count as unset. Values are quoted in messages, except by :meth:`Env.required`, whose
variable may be a secret (``DATABASE_URL`` can hold a password).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["LOG_LEVELS", "Env", "SettingsError", "parse_address"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(Exception):
    """A missing or malformed setting; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) → (host, port); port 0 picks a free port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("expected host:port, for example 127.0.0.1:50051")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() for c in host):
        raise ValueError("expected host:port, for example 127.0.0.1:50051")
    return host, port


class Env:
    """Typed, validated reads of one environment mapping."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def optional(self, name: str) -> str | None:
        """The stripped value, or None when unset or blank."""
        value = self._environ.get(name)
        if value is None:
            return None
        return value.strip() or None

    def required(self, name: str, hint: str = "") -> str:
        """The value; never echoed in errors (it may be a secret). ``hint`` says what to set."""
        value = self.optional(name)
        if value is None:
            raise SettingsError(name, f"is required ({hint})" if hint else "is required")
        return value

    def integer(
        self, name: str, default: int, minimum: int, maximum: int | None = None
    ) -> int:
        text = self.optional(name)
        if text is None:
            return default
        try:
            value = int(text, 10)
        except ValueError:
            raise SettingsError(name, f"{text!r} is not an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            raise SettingsError(name, f"{value} is out of range ({bound})")
        return value

    def seconds(self, name: str, default: float, *, positive: bool = False) -> float:
        text = self.optional(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            raise SettingsError(name, f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            raise SettingsError(name, f"{text!r} must be a finite number of seconds {bound}")
        return value

    def address(self, name: str, default: str, *, allow_off: bool = False) -> str:
        """``host:port``; with ``allow_off``, ``off`` gives ``""`` (endpoint disabled)."""
        text = self.optional(name)
        if text is None:
            return default
        if allow_off and text.lower() == "off":
            return ""
        try:
            parse_address(text)
        except ValueError as exc:
            raise SettingsError(name, f"{text!r}: {exc}") from None
        return text

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """One of ``choices`` (upper case), case-insensitively."""
        text = self.optional(name)
        if text is None:
            return default
        if text.upper() not in choices:
            raise SettingsError(name, f"{text!r} is not one of {', '.join(choices)}")
        return text.upper()

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean: 1/true/yes/on or 0/false/no/off (any case)."""
        text = self.optional(name)
        if text is None:
            return default
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise SettingsError(name, f"{text!r} is not one of 1, true, yes, on, 0, false, no, off")

    def file(self, name: str) -> Path | None:
        """The path of a readable regular file, or None when unset. Only its existence is
        checked here; what is in it is checked by whoever reads it (at start-up)."""
        text = self.optional(name)
        if text is None:
            return None
        path = Path(text)
        if not path.is_file():
            raise SettingsError(name, f"{text!r} is not a file")
        if not os.access(path, os.R_OK):
            raise SettingsError(name, f"{text!r} is not readable by this process")
        return path

    def names(self, name: str) -> tuple[str, ...]:
        """A comma-separated list of non-empty items (empty: none)."""
        text = self.optional(name)
        if text is None:
            return ()
        return tuple(part.strip() for part in text.split(",") if part.strip())
