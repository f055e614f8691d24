"""Checks for method config fields that raise ConfigError naming the method, field, value and valid range."""

from __future__ import annotations

from typing import Any, Iterable

from methods.base import ConfigError


def require_int(method: str, field: str, value: Any, minimum: int | None = None, maximum: int | None = None, hint: str = "") -> None:
    """Raise ConfigError unless `value` is an int within [minimum, maximum]."""
    low = "-inf" if minimum is None else str(minimum)
    high = "inf" if maximum is None else str(maximum)
    suffix = f" ({hint})" if hint else ""
    valid = isinstance(value, int) and not isinstance(value, bool)
    if not valid or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{method} {field} must be an integer in [{low}, {high}]{suffix}, got {value!r}.")


def require_bool(method: str, field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{method} {field} must be true or false, got {value!r}.")


def require_positive_float(method: str, field: str, value: Any) -> None:
    valid = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not valid or not value > 0:
        raise ConfigError(f"{method} {field} must be a number > 0, got {value!r}.")


def require_open_fraction(method: str, field: str, value: Any) -> None:
    """Raise ConfigError unless 0 < value < 1."""
    valid = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not valid or not 0 < value < 1:
        raise ConfigError(f"{method} {field} must be a fraction in (0, 1), got {value!r}.")


def require_choice(method: str, field: str, value: Any, choices: Iterable[str]) -> None:
    options = tuple(choices)
    if value not in options:
        raise ConfigError(f"{method} {field} must be one of {', '.join(options)}, got {value!r}.")
