"""What every config dataclass is built from: fields that describe themselves, and checks that
name the key they reject.

A section dataclass declares each field with `option(default, "what it means")` and may define
`check(self)`, raising `Invalid("key", "why")` for values the types alone cannot rule out.
`check_tree` runs every section's check on a loaded config and reports the full dotted key.
"""

from collections.abc import Iterator
from dataclasses import MISSING, Field, field, fields, is_dataclass
from typing import Any

from genrec.errors import ConfigError


class Invalid(ConfigError):
    """A value a section's `check` rejects; `key` is relative to the section."""

    def __init__(self, key: str, message: str):
        super().__init__(f"'{key}' {message}")
        self.key, self.message = key, message

    def __reduce__(self):
        return (type(self), (self.key, self.message))


def option(default: Any, help: str) -> Any:
    """A dataclass field with a one-line description (`genrec config` prints it).

    Mutable defaults (lists, dicts) and nested sections (a dataclass type) become factories.
    """
    metadata = {"help": help}
    if isinstance(default, type):
        return field(default_factory=default, metadata=metadata)
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def at_least(section: Any, minimum: float, *keys: str) -> None:
    """Each of `keys` must be >= minimum."""
    for key in keys:
        value = getattr(section, key)
        if value < minimum:
            raise Invalid(key, f"must be >= {minimum}, got {value}")


def positive(section: Any, *keys: str) -> None:
    for key in keys:
        value = getattr(section, key)
        if not value > 0:
            raise Invalid(key, f"must be > 0, got {value}")


def device_name(section: Any, *keys: str) -> None:
    """Each of `keys` must name a torch device ("cpu", "cuda", "cuda:1"; "auto" passes)."""
    import torch

    for key in keys:
        value = getattr(section, key)
        if value == "auto":
            continue
        try:
            torch.device(value)
        except RuntimeError as err:
            raise Invalid(key, f"is not a torch device: {value!r}") from err


def check_tree(section: Any, prefix: str = "") -> None:
    """Runs `check` on the section and on every section below it (depth first, parents last),
    turning an `Invalid` into a ConfigError that names the full key."""
    for f in fields(section):
        value = getattr(section, f.name)
        if is_dataclass(value):
            check_tree(value, f"{prefix}{f.name}.")
    check = getattr(section, "check", None)
    if check is None:
        return
    try:
        check()
    except Invalid as err:
        raise ConfigError(f"config key '{prefix}{err.key}' {err.message}") from err


def described_fields(schema: type, prefix: str = "") -> Iterator[tuple[str, Field]]:
    """(dotted key, field) of every leaf field of a config dataclass, in declaration order."""
    for f in fields(schema):
        nested = f.default_factory if f.default_factory is not MISSING else None
        if isinstance(nested, type) and is_dataclass(nested):
            yield from described_fields(nested, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f
