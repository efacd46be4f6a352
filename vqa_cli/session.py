"""Opening a request: the one way a command gets a model (checkpoint, budget, engine) and, for one video,
its clip, with the decoding overlapped with loading.

``open_model`` is what ``caption``, the tests and the benchmarks use; ``open_session`` adds the input
check and the clip for ``ask`` and ``chat``. A broken input or checkpoint fails before weights load.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vqa_cli import console
from vqa_cli.errors import InputNotFoundError


@dataclass
class Session:
    """A loaded model and the clip a command works on, with what opening them took (``load``, ``decode``)."""

    checkpoint: Any  # engine.Checkpoint
    budget: Any  # engine.Budget: the planned request (frames, tokens, RoPE factor)
    engine: Any  # engine.Engine
    clip: Any = None  # video.Clip
    timings: dict[str, float] = field(default_factory=dict)


def check_input(path: str) -> None:
    """Usage errors for a missing path or a folder, then a one-frame probe so a broken file fails
    before any model loads."""
    from vqa_cli.video import probe

    if not Path(path).exists():
        raise InputNotFoundError(f"no such file: {path!r}")
    if Path(path).is_dir():
        raise InputNotFoundError(f"{path!r} is a directory: `vqa ask` takes one video (see `vqa caption`)")
    probe(path)


def planned_frames(settings: Any) -> int:
    """The frame count a request will use, from ``config.json`` alone (no transformers import), so decoding
    can start before the model's libraries load. A broken ``config.json`` fails here with the checkpoint
    check's own message."""
    from vqa_cli import loading
    from vqa_cli.engine import frames_for

    if settings.frames and not settings.fps:
        return settings.frames
    model_dir = loading.resolve_model_dir(settings.model, weights=False)
    family = loading.checkpoint_family(model_dir, loading.read_config_dict(model_dir)["model_type"])
    return frames_for(settings, family.default_frames)


def plan_model(settings: Any, questions: list[str], *, num_frames: int | None = None, reserve: int = 0
               ) -> tuple[Any, Any]:
    """(checkpoint, budget) without weights: read the checkpoint's files and budget the request (it fails
    here when it cannot fit). ``reserve``: room kept for later chat turns."""
    from vqa_cli.engine import Checkpoint

    with console.status("reading model config"):
        checkpoint = Checkpoint(settings.model)
        planning = replace(settings, max_new_tokens=settings.max_new_tokens + reserve)
        return checkpoint, checkpoint.budget(planning, questions, num_frames=num_frames)


def open_model(settings: Any, questions: list[str], *, num_frames: int | None = None, reserve: int = 0,
               timings: dict[str, float] | None = None) -> Session:
    """Read the checkpoint, budget the request (it fails here, before any weight loads, when it cannot fit),
    then load the weights with the RoPE factor the budget chose.

    ``num_frames``: the frames to plan for (default: the request's); ``reserve``: room kept for later chat
    turns. The load time goes into ``timings["load"]``.
    """
    from vqa_cli.engine import Engine

    timings = {} if timings is None else timings
    checkpoint, budget = plan_model(settings, questions, num_frames=num_frames, reserve=reserve)
    with console.status(f"loading {settings.model}"):
        started = time.perf_counter()
        engine = Engine(checkpoint, settings, budget.rope_factor)
        timings["load"] = time.perf_counter() - started
    return Session(checkpoint, budget, engine, timings=timings)


def open_session(settings: Any, video: str, questions: list[str], *, reserve: int = 0) -> Session:
    """Check the input, then load the model while the frames decode on a worker thread (OpenCV releases
    the GIL, so decoding overlaps the imports, the configs and the weights)."""
    from vqa_cli.engine import sample_clip
    from vqa_cli.video import is_image_path

    check_input(video)
    # A still image is one frame: budget (and pick the RoPE factor) for that, not the mode's default.
    frames = 1 if is_image_path(video) else planned_frames(settings)
    with ThreadPoolExecutor(max_workers=1) as pool:
        decoding = pool.submit(sample_clip, video, settings, frames)
        session = open_model(settings, questions, num_frames=frames, reserve=reserve)
        with console.status(f"decoding {frames} frames"):
            session.clip, session.timings["decode"] = decoding.result()
    return session
