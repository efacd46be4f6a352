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
from typing import TYPE_CHECKING

from vqa_cli import console
from vqa_cli.errors import InputNotFoundError

if TYPE_CHECKING:
    from vqa_cli.model.autofit import FitChoice
    from vqa_cli.model.checkpoint import Budget, Checkpoint
    from vqa_cli.model.engine import Engine
    from vqa_cli.model.fit import MemoryCheck
    from vqa_cli.model.machine import Probe
    from vqa_cli.model.memory import MemoryEstimate
    from vqa_cli.settings import RunSettings
    from vqa_cli.video import Clip


@dataclass
class Session:
    """A loaded model and the clip a command works on, with what opening them took (``load``, ``decode``)."""

    checkpoint: Checkpoint
    budget: Budget  # the planned request (frames, tokens, RoPE factor)
    engine: Engine
    clip: Clip | None = None
    timings: dict[str, float] = field(default_factory=dict)
    memory: MemoryCheck | None = None  # the peak estimate against what the device had (None with --force)
    fitted: FitChoice | None = None  # what --fit chose


def check_input(path: str) -> None:
    """Usage errors for a missing path or a folder, then a one-frame probe so a broken file fails
    before any model loads."""
    from vqa_cli.video import probe

    if not Path(path).exists():
        raise InputNotFoundError(f"no such file: {path!r}")
    if Path(path).is_dir():
        raise InputNotFoundError(f"{path!r} is a directory: `vqa ask` takes one video (see `vqa caption`)")
    probe(path)


def planned_frames(settings: RunSettings) -> int:
    """The frame count a request will use, from ``config.json`` alone (no transformers import), so decoding
    can start before the model's libraries load. A broken ``config.json`` fails here with the checkpoint
    check's own message."""
    from vqa_cli.model import loading
    from vqa_cli.model.checkpoint import frames_for
    from vqa_cli.model.weights import hub

    if settings.frames and not settings.fps:
        return settings.frames
    model_dir = hub.resolve_model_dir(settings.model, weights=False)
    family = loading.checkpoint_family(model_dir, loading.read_config_dict(model_dir)["model_type"])
    return frames_for(settings, family.default_frames)


def native_fps(settings: RunSettings) -> float | None:
    """The family's own sampling rate when the request names neither ``--fps`` nor ``--frames`` (Qwen-VL samples
    at 2 fps), from ``config.json`` alone like ``planned_frames``; None: the request's frame count."""
    from vqa_cli.model import loading
    from vqa_cli.model.weights import hub

    if settings.fps or settings.frames:
        return None
    model_dir = hub.resolve_model_dir(settings.model, weights=False)
    return loading.checkpoint_family(model_dir, loading.read_config_dict(model_dir)["model_type"]).sample_fps


def fit_settings(settings: RunSettings, questions: list[str], *, reserve: int = 0, probe: Probe | None = None
                 ) -> tuple[RunSettings, FitChoice | None]:
    """``--fit``: the settings with the frames (and, if need be, the mode) that fit memory and context, and
    the choice (``autofit.FitChoice``, also said on stderr); without ``--fit`` the settings as they are and None.
    ``probe``: what a device has (``machine.probe_memory`` by default)."""
    if not settings.fit:
        return settings, None
    from vqa_cli.model import autofit
    from vqa_cli.model.checkpoint import Checkpoint

    with console.status("fitting the request to memory"):
        fitted, choice = autofit.fit(Checkpoint(settings.model), settings, questions, reserve=reserve, probe=probe)
    console.info(choice.line())
    return fitted, choice


def check_memory(checkpoint: Checkpoint, settings: RunSettings, questions: list[str], budget: Budget, *,
                 batch: int = 1, reserve: int = 0, probe: Probe | None = None) -> MemoryCheck | None:
    """The memory check before any weight is downloaded or loaded (``fit.check``): a ``MemoryFitError`` when
    the request cannot fit, else the check, whose ``estimate.batch`` is the largest batch up to ``batch``
    that fits. None with ``--force`` (which still refuses a placement outside ``--max-memory``). Then a
    ``--device`` this machine lacks fails, still before any download (the probe says what the machine has: it
    knows no memory on a device that is not there)."""
    from vqa_cli.model import device, fit

    checked = None
    with console.status("checking memory"):
        if not settings.force:
            checked = fit.check(checkpoint, settings, questions, budget, batch=batch, reserve=reserve, probe=probe)
        else:  # --force skips the check against the machine, not the user's own --max-memory
            fit.check_caps(checkpoint, settings, budget, batch=batch)
    device.resolve_device(settings.device)
    return checked


def placement(checkpoint: Checkpoint, settings: RunSettings, budget: Budget, memory: MemoryCheck | None,
              batch: int = 1) -> dict[str, int | str] | None:
    """With ``--max-memory``, the ``device_map`` the load gets: the one the memory check placed (``placement.place``,
    the placement ``--plan`` shows), for the batch it settled on; None without ``--max-memory``."""
    if not settings.max_memory:
        return None
    from vqa_cli.model import fit

    est: MemoryEstimate | None = memory.estimate if memory is not None else fit.check_caps(checkpoint, settings,
                                                                                            budget, batch=batch)
    return est.device_map if est is not None else None


def plan_model(settings: RunSettings, questions: list[str], *, num_frames: int | None = None, reserve: int = 0
               ) -> tuple[Checkpoint, Budget]:
    """(checkpoint, budget) without weights: read the checkpoint's files and budget the request (it fails
    here when it cannot fit). ``reserve``: room kept for later chat turns."""
    from vqa_cli.model import fit
    from vqa_cli.model.checkpoint import Checkpoint

    with console.status("reading model config"):
        checkpoint = Checkpoint(settings.model)
        if not settings.force:
            fit.check_frame_count(checkpoint, settings, num_frames or checkpoint.frames_for(settings))
        planning = replace(settings, max_new_tokens=settings.max_new_tokens + reserve)
        return checkpoint, checkpoint.budget(planning, questions, num_frames=num_frames)


def open_model(settings: RunSettings, questions: list[str], *, num_frames: int | None = None, reserve: int = 0,
               timings: dict[str, float] | None = None, batch: int = 1, probe: Probe | None = None) -> Session:
    """Read the checkpoint, budget the request and check its memory (it fails here, before any weight is
    downloaded or loaded, when it cannot fit the context or the memory), download the weights if they are
    not cached (visibly), then load them with the RoPE factor the budget chose (``weights.loader.load``: the
    one place a request's weights load) and give them to the ``Engine``.

    ``num_frames``: the frames to plan for (default: the request's); ``reserve``: room kept for later chat
    turns; ``batch``: the most clips per call (``caption``: the session's ``memory.estimate.batch`` is the
    largest that fits); ``probe``: what a device has (``machine.probe_memory`` by default). ``--fit`` is
    applied here unless the caller did. The load time goes into ``timings["load"]``.
    """
    from vqa_cli.model.engine import Engine
    from vqa_cli.model.weights import hub, loader

    timings = {} if timings is None else timings
    settings, fitted = fit_settings(settings, questions, reserve=reserve, probe=probe)
    checkpoint, budget = plan_model(settings, questions, num_frames=num_frames, reserve=reserve)
    memory = check_memory(checkpoint, settings, questions, budget, batch=batch, reserve=reserve, probe=probe)
    device_map = placement(checkpoint, settings, budget, memory, batch)
    hub.fetch_weights(settings.model)
    with console.status(f"loading {settings.model}"):
        started = time.perf_counter()
        engine = Engine(checkpoint, settings, loader.load(checkpoint, settings, budget.rope_factor, device_map))
        timings["load"] = time.perf_counter() - started
    return Session(checkpoint, budget, engine, timings=timings, memory=memory, fitted=fitted)


def open_session(settings: RunSettings, video: str, questions: list[str], *, reserve: int = 0,
                 probe: Probe | None = None) -> Session:
    """Check the input, then load the model while the frames decode on a worker thread (OpenCV releases
    the GIL, so decoding overlaps the imports, the configs and the weights). With ``--fit`` the frames are
    chosen first (decoding then waits for the configs)."""
    from vqa_cli.model.engine import sample_clip
    from vqa_cli.video import is_image_path

    check_input(video)
    still = is_image_path(video)
    # A still image is one frame: budget (and pick the RoPE factor) for that, not the mode's default.
    settings, fitted = fit_settings(replace(settings, fit=settings.fit and not still), questions, reserve=reserve,
                                    probe=probe)
    frames = 1 if still else planned_frames(settings)
    with ThreadPoolExecutor(max_workers=1) as pool:
        decoding = pool.submit(sample_clip, video, settings, frames, native_fps=None if still else native_fps(settings))
        session = open_model(settings, questions, num_frames=frames, reserve=reserve, probe=probe)
        session.fitted = fitted
        with console.status(f"decoding {frames} frames"):
            session.clip, session.timings["decode"] = decoding.result()
    return session
