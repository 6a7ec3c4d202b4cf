"""Model configs as frozen dataclasses picked from named presets, with checked field overrides."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

from llmimg_jax.errors import UserError

T = TypeVar("T")


def from_preset(cls: type[T], presets: Mapping[str, Any], preset: str, what: str, **overrides: Any) -> T:
    """`cls` built from `presets[preset]` (a dict or an instance) with `overrides`; bad names are UserErrors."""
    if preset not in presets:
        raise UserError(f"unknown {what} preset '{preset}'; choose one of {', '.join(presets)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"unknown {what} config field(s) {unknown}; known: {', '.join(sorted(fields))}")
    base = presets[preset]
    base = dataclasses.asdict(base) if dataclasses.is_dataclass(base) else dict(base)
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return cls(**{**base, **overrides})


def preset_overrides(section: Mapping[str, Any]) -> dict[str, Any]:
    """A config section's fields other than `preset`; 0, () and "" keep the preset's value."""
    return {k: v for k, v in section.items() if k != "preset" and v not in (0, (), [], "")}
