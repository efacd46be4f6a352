"""``--fit``: the most frames, up to those asked for, that fit memory and context; else a cheaper mode.

The need grows with the frames, so the search bisects with the memory check's own measure (``fit``); the
choice (``FitChoice``) is said on stderr and replaces the request's frames (and mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from vqa_cli.errors import MemoryFitError
from vqa_cli.model import machine
from vqa_cli.model.fit import (
    MemoryCheck,
    budget_at,
    gib_text,
    largest_frames,
    measure,
    memo,
    refusal,
    where_text,
    with_frames,
)
from vqa_cli.settings import ModeSettings
from vqa_cli.units import gib

if TYPE_CHECKING:
    from vqa_cli.model.checkpoint import Checkpoint
    from vqa_cli.model.machine import Probe
    from vqa_cli.settings import RunSettings


@dataclass
class FitChoice:
    """What ``--fit`` chose, and the request it was asked for."""

    frames: int
    mode: str
    requested_frames: int
    requested_mode: str
    check: MemoryCheck
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return (self.frames, self.mode) != (self.requested_frames, self.requested_mode)

    def line(self) -> str:
        est, have = self.check.estimate, self.check.available.get(self.check.estimate.device)
        room = f"about {gib_text(est.peak_bytes)}"
        room += "" if have is None else f" of {gib_text(have)} {where_text(est.device)}"
        if not self.changed:
            return f"--fit: the request fits as asked: {self.frames} frames in --mode {self.mode} ({room})"
        if self.mode == self.requested_mode:
            return f"--fit: {self.frames} frames instead of {self.requested_frames} (--mode {self.mode}, {room})"
        return (f"--fit: {self.frames} frames in --mode {self.mode} instead of {self.requested_frames} in --mode "
                f"{self.requested_mode} ({room})")

    def to_dict(self) -> dict:
        return {"frames": self.frames, "mode": self.mode, "requested_frames": self.requested_frames,
                "requested_mode": self.requested_mode, "changed": self.changed,
                "peak_gib": gib(self.check.estimate.peak_bytes), **self.check.to_dict()}


def _cheaper_modes(checkpoint: Checkpoint, settings: RunSettings) -> list[ModeSettings]:
    """The other modes whose one-frame request has fewer visual tokens than this mode's, cheapest last."""
    from vqa_cli.model.modes import REGISTRY

    own = checkpoint.plan(settings, 1).total
    others = [ModeSettings(m.name) for m in REGISTRY if m.name != settings.mode.name]
    cheaper = [(checkpoint.plan(replace(settings, mode=m), 1).total, m) for m in others]
    return [m for tokens, m in sorted(cheaper, key=lambda x: -x[0]) if tokens < own]


def fit(checkpoint: Checkpoint, settings: RunSettings, questions: list[str], *, reserve: int = 0,
        probe: Probe | None = None) -> tuple[RunSettings, FitChoice]:
    """``--fit``: the request with the most frames, up to those asked for, that fit memory and context;
    when not even one frame fits its mode, the cheaper mode that fits the most frames. Returns the settings to run
    (frames explicit, ``fit`` off) and the choice; a ``MemoryFitError`` when nothing fits."""
    probe = memo(probe or machine.probe_memory)
    asked = checkpoint.frames_for(settings)
    found = largest_frames(checkpoint, settings, questions, reserve, probe, asked)
    mode = settings.mode
    if found is None:  # the cheaper mode that keeps the most frames (the first of a tie: the least cheaper)
        for other in _cheaper_modes(checkpoint, settings):
            there = largest_frames(checkpoint, replace(settings, mode=other), questions, reserve, probe, asked)
            if there is not None and (found is None or there[0] > found[0]):
                found, mode = there, other
    if found is not None:
        n, mem = found
        chosen = replace(with_frames(replace(settings, mode=mode), n), fit=False)
        return chosen, FitChoice(n, mode.name, asked, settings.mode.name, mem)
    budget = budget_at(checkpoint, settings, questions, reserve, 1)
    if budget is None:  # not even one frame fits the context: its own message
        checkpoint.budget(replace(settings, max_new_tokens=settings.max_new_tokens + reserve), questions, num_frames=1)
    mem = measure(checkpoint, settings, budget, probe)
    raise MemoryFitError(refusal(checkpoint, settings, questions, mem, 1, reserve=reserve, probe=probe))
