"""Base class for per-technique configs: small dataclasses validated on construction.

Every error is a ``ValueError`` that names the field and the allowed values or range,
so a user can fix a bad override without reading the source.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable


class TechniqueConfig:
    """Mixin for technique dataclasses. Subclasses define ``NAME`` and ``validate()``."""

    NAME = "technique"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden
        pass

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TechniqueConfig":
        """Build from a dict; unknown keys raise ValueError listing the known ones."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"{cls.NAME}: unknown field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(cls.field_names())}"
            )
        return cls(**values)

    def replace(self, **changes) -> "TechniqueConfig":
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_range(owner: str, name: str, value, lo=None, hi=None, *, lo_open=False, hi_open=False,
                integer=False) -> None:
    """Raise ValueError unless lo <= value <= hi (open ends when asked)."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ValueError(f"{owner}.{name}: must be {kind}, got {value!r}")
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ValueError(f"{owner}.{name}: {value!r} is out of range; allowed {rng}")


def check_choice(owner: str, name: str, value, choices: Iterable) -> None:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{owner}.{name}: {value!r} is not allowed; allowed: "
                         f"{', '.join(map(repr, choices))}")
