"""vqa's settings on the wire: the request fields ``vqa serve`` takes beside OpenAI's, and back.

One table (``FIELDS``) says which request settings travel, with their JSON types; the client
(``--server``) writes them with ``request_fields`` and the server reads them with ``apply_fields``,
so a setting added here works both ways. Settings the weights are loaded with (model, quantization,
device, dtype, RoPE) do not travel: they are the server's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, get_args

from vqa_cli.errors import UsageError
from vqa_cli.settings import ModeName, SeekMode

# name: (JSON types accepted, where it lives: "run" = RunSettings, "mode" = ModeSettings)
FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "mode": ((str,), "mode"),
    "frames": ((int,), "run"),
    "fps": ((int, float), "run"),
    "max_frames": ((int,), "run"),
    "start": ((int, float), "run"),
    "end": ((int, float), "run"),
    "seek": ((str,), "run"),
    "time_prompt": ((bool,), "run"),
    "stride": ((int,), "mode"),
    "slow_frames": ((int,), "mode"),
    "fast_grid": ((int,), "mode"),
    "pool": ((list,), "mode"),
    "guide": ((bool,), "mode"),
    "guide_kernel": ((list,), "mode"),
}
MODE_PARAMETERS = ("stride", "slow_frames", "fast_grid", "pool", "guide", "guide_kernel")
RUN_FIELDS = tuple(name for name, (_, where) in FIELDS.items() if where == "run")
SAMPLING_CHOICES = ("frames", "fps")  # two ways to choose frames: a request's choice replaces the server's


def request_fields(settings: Any) -> dict:
    """The ``FIELDS`` of ``settings`` (a ``RunSettings``) that are set, as JSON values."""
    out: dict[str, Any] = {"mode": settings.mode.name}
    for name, (_, where) in FIELDS.items():
        if name == "mode":
            continue
        value = getattr(settings.mode if where == "mode" else settings, name)
        if value is None or value is False:
            continue
        out[name] = list(value) if isinstance(value, tuple) else value
    if settings.seek == "auto":
        out.pop("seek", None)
    return out


def _checked(name: str, value: Any) -> Any:
    types, _ = FIELDS[name]
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        kinds = " or ".join({"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                             "list": "a list"}[t.__name__] for t in types)
        raise UsageError(f"{name} must be {kinds}, not {value!r}")
    if name == "mode" and value not in get_args(ModeName):
        raise UsageError(f"mode must be one of {', '.join(get_args(ModeName))}, not {value!r}")
    if name == "seek" and value not in get_args(SeekMode):
        raise UsageError(f"seek must be one of {', '.join(get_args(SeekMode))}, not {value!r}")
    if name in ("frames", "max_frames", "slow_frames", "fast_grid") and value < 1:
        raise UsageError(f"{name} must be at least 1")
    if name in ("fps",) and value <= 0:
        raise UsageError(f"{name} must be positive")
    if name in ("start", "end") and value < 0:
        raise UsageError(f"{name} must not be negative")
    if name == "stride" and value not in (1, 2, 4):
        raise UsageError(f"stride must be 1, 2 or 4, not {value!r}")
    if name in ("pool", "guide_kernel"):
        if len(value) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            raise UsageError(f"{name} takes three positive integers [T, H, W], not {value!r}")
        return tuple(value)
    return value


def apply_fields(base: Any, fields: dict) -> Any:
    """``base`` (the server's ``RunSettings``) with a request's ``FIELDS`` applied, checked as the command
    line checks them. A request that names a mode starts from that mode's defaults; one that chooses
    frames (``frames`` or ``fps``) replaces the server's choice."""
    from vqa_cli.cli.options import run_settings

    values = {name: _checked(name, value) for name, value in fields.items() if value is not None}
    mode = base.mode if "mode" not in values or values["mode"] == base.mode.name else None
    current = {name: getattr(mode, name) if mode else None for name in MODE_PARAMETERS}
    sampling = {"frames": base.frames, "fps": base.fps, "max_frames": base.max_frames}
    if any(k in values for k in SAMPLING_CHOICES):
        sampling = {"frames": None, "fps": None, "max_frames": None}
    merged = {"start": base.start, "end": base.end, "seek": base.seek, "time_prompt": base.time_prompt,
              **sampling, **current, "mode": base.mode.name, **values}
    for name in ("pool", "guide_kernel"):
        if merged[name] is not None:
            merged[name] = ",".join(str(v) for v in merged[name])
    if merged["stride"] is not None:
        merged["stride"] = str(merged["stride"])
    merged["guide"] = bool(merged["guide"])
    checked = run_settings(model=base.model, **merged)
    return replace(base, mode=checked.mode, **{name: getattr(checked, name) for name in RUN_FIELDS})
