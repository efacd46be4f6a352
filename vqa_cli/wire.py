"""The wire form of the run settings: the request fields ``vqa serve`` takes beside OpenAI's. The client writes
them (``request_fields``), the server reads them (``apply_fields``, checked as the command line checks them:
``settings.build``). A leaf beside ``vqa_cli.settings`` (which it reads), importing nothing else of vqa's but errors."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vqa_cli.errors import UsageError
from vqa_cli.settings import DEFAULT_SEEK, MODE_NAMES, REDUCE_METHODS, SEEK_MODES, STRIDES, RunSettings, build

# The client writes them (``request_fields``), the server reads them (``apply_fields``); the LOAD_SETTINGS are the
# server's. name: (JSON types accepted, where it lives: "run" = RunSettings, "mode" = ModeSettings)
WIRE_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "mode": ((str,), "mode"), "frames": ((int,), "run"), "fps": ((int, float), "run"), "max_frames": ((int,), "run"),
    "start": ((int, float), "run"), "end": ((int, float), "run"), "seek": ((str,), "run"),
    "time_prompt": ((bool,), "run"), "stride": ((int,), "mode"), "slow_frames": ((int,), "mode"),
    "fast_grid": ((int,), "mode"), "pool": ((list,), "mode"), "guide": ((bool,), "mode"),
    "guide_kernel": ((list,), "mode"), "reduce": ((str,), "mode"), "keep": ((int, float), "mode"),
    "max_visual_tokens": ((int,), "mode"),
}
MODE_PARAMETERS = ("stride", "slow_frames", "fast_grid", "pool", "guide", "guide_kernel")
REDUCTION = ("reduce", "keep", "max_visual_tokens")  # after the mode: kept when a request names another mode
RUN_FIELDS = tuple(name for name, (_, where) in WIRE_FIELDS.items() if where == "run")
SAMPLING_CHOICES = ("frames", "fps")  # two ways to choose frames: a request's choice replaces the server's
_KINDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "list": "a list"}


def request_fields(settings: RunSettings) -> dict:
    """The ``WIRE_FIELDS`` of ``settings`` that are set, as JSON values."""
    out: dict[str, Any] = {"mode": settings.mode.name}
    for name, (_, where) in WIRE_FIELDS.items():
        value = None if name == "mode" else getattr(settings.mode if where == "mode" else settings, name)
        if value is not None and value is not False:
            out[name] = list(value) if isinstance(value, tuple) else value
    if settings.seek == DEFAULT_SEEK:
        out.pop("seek", None)
    return out


def _checked(name: str, value: Any) -> Any:
    """A request field's value checked (its JSON type, its choices, its range); lists as tuples."""
    types, _ = WIRE_FIELDS[name]
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise UsageError(f"{name} must be {' or '.join(_KINDS[t.__name__] for t in types)}, not {value!r}")
    choices = {"mode": MODE_NAMES, "seek": SEEK_MODES, "reduce": REDUCE_METHODS}.get(name)
    if choices and value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    if name in ("frames", "max_frames", "slow_frames", "fast_grid") and value < 1:
        raise UsageError(f"{name} must be at least 1")
    if name == "fps" and value <= 0:
        raise UsageError(f"{name} must be positive")
    if name == "keep" and not 0 < value <= 1:
        raise UsageError(f"keep must be a ratio in (0, 1], not {value!r}")
    if name == "max_visual_tokens" and value < 1:
        raise UsageError(f"{name} must be at least 1")
    if name in ("start", "end") and value < 0:
        raise UsageError(f"{name} must not be negative")
    if name == "stride" and value not in STRIDES:
        raise UsageError(f"stride must be 1, 2 or 4, not {value!r}")
    if name in ("pool", "guide_kernel"):
        if len(value) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            raise UsageError(f"{name} takes three positive integers [T, H, W], not {value!r}")
        return tuple(value)
    return value


def apply_fields(base: RunSettings, fields: dict) -> RunSettings:
    """``base`` (the server's settings) with a request's ``WIRE_FIELDS`` applied, checked as the command line
    checks them (``build``). A request that names a mode starts from that mode's defaults; one that chooses
    frames (``frames`` or ``fps``) replaces the server's choice."""
    values = {name: _checked(name, value) for name, value in fields.items() if value is not None}
    mode = base.mode if "mode" not in values or values["mode"] == base.mode.name else None
    current = {name: getattr(mode, name) if mode else None for name in MODE_PARAMETERS}
    # the server's reduction holds for every mode; a request's method or ratio replaces it (the ratio: both ways)
    current |= {"reduce": base.mode.reduce, **({} if {"keep", "max_visual_tokens"} & values.keys() or "reduce"
                in values else {"keep": base.mode.keep, "max_visual_tokens": base.mode.max_visual_tokens})}
    sampling = {"frames": base.frames, "fps": base.fps, "max_frames": base.max_frames}
    if any(k in values for k in SAMPLING_CHOICES):
        sampling = {"frames": None, "fps": None, "max_frames": None}
    merged = {"start": base.start, "end": base.end, "seek": base.seek, "time_prompt": base.time_prompt,
              **sampling, **current, "mode": base.mode.name, **values}
    for name in ("pool", "guide_kernel"):  # as the command line spells them
        if merged[name] is not None:
            merged[name] = ",".join(str(v) for v in merged[name])
    merged["guide"] = bool(merged["guide"])
    checked = build(model=base.model, **merged)
    return replace(base, mode=checked.mode, **{name: getattr(checked, name) for name in RUN_FIELDS})
