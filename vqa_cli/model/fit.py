"""The memory check: what a request needs at its peak against what its devices have, and what would fit.

- ``check`` is the check ``session.open_model`` runs before any weight is downloaded or loaded: the
  peak (``memory.request_memory``) against the probe (``machine.probe_memory``) on each device the request
  uses. A request that cannot fit is a ``MemoryFitError`` (exit 2) that names the cheapest changes that
  would fit. With a batch (``caption``) it settles on the largest batch that fits.
- A ``--max-memory`` cap (``device.parse_max_memory``) is for everything on its device (the computing
  device's KV cache and activations included); weights that do not fit the caps are refused
  (``cap_refusal``: the smallest cap that fits), unless ``--offload-dir`` allows the disk.
- ``--fit`` (``autofit``) searches with ``largest_frames`` and ``measure`` from here.

Nothing here imports torch at module level.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from vqa_cli.errors import ContextOverflowError, MemoryFitError, UsageError
from vqa_cli.model import machine
from vqa_cli.model.device import Target, parse_max_memory, target
from vqa_cli.units import GIB, gib, size_text

if TYPE_CHECKING:
    from vqa_cli.model.checkpoint import Budget, Checkpoint
    from vqa_cli.model.families.base import FamilyAdapter
    from vqa_cli.model.machine import Probe
    from vqa_cli.model.memory import MemoryEstimate
    from vqa_cli.settings import RunSettings


# ---- estimate and check ----------------------------------------------------------------------------


@dataclass
class MemoryCheck:
    """A request's estimate against what its devices have (``available[device]`` is None when unknown)."""

    estimate: MemoryEstimate
    available: dict[str, int | None]
    target: Target
    adapter: FamilyAdapter | None = None  # the checkpoint's family adapter (for the smallest --max-memory that fits)

    @property
    def fits(self) -> bool | None:
        """True or False; None when the computing device is not on this machine (nothing to compare) and the
        placement fits ``--max-memory`` (a placement outside its caps does not fit on any machine)."""
        if self.estimate.cap_fits is False:
            return False
        if self.available.get(self.estimate.device) is None:
            return None
        return not self.shortfall()

    def smallest_caps(self) -> dict[str, int] | None:
        """The ``--max-memory`` caps that fit, the cap of one device raised to the least that fits (the device the
        placement overflows: the computing one when the rest of the request does not fit it, else the last
        before the disk); None when the caps fit or raising that cap does not help."""
        from vqa_cli.model.weights import placement

        est, tgt = self.estimate, self.target
        problems = est.cap_problems()
        if not problems or self.adapter is None:
            return None
        computing = placement.compute_device(tgt.device, est.caps)
        if computing in problems:
            device = computing
        elif "disk" in problems:
            device = "cpu" if "cpu" in est.caps else computing
        else:
            device = problems[0]
        cap = placement.smallest_cap(est, self.adapter, tgt.quant, tgt.dtype, tgt.dtype_bytes, device)
        return None if cap is None else {**est.caps, device: cap}

    def shortfall(self) -> list[tuple[str, int, int]]:
        """(device, needed, available) for each device that cannot hold its share."""
        out = []
        for device in self.estimate.devices():
            have = self.available.get(device)
            need = self.estimate.peak_on(device)
            if have is not None and need > have:
                out.append((device, need, have))
        return out

    def to_dict(self) -> dict:
        out = {"available_gib": {d: None if b is None else gib(b) for d, b in self.available.items()},
               "fits": self.fits}
        if self.estimate.cap_fits is False:
            smallest = self.smallest_caps()
            out["max_memory_smallest"] = caps_text(smallest) if smallest else None
            out["max_memory_smallest_bytes"] = smallest
        return out


def memo(probe: Probe) -> Probe:
    """Each device probed once per check (the probe is asked again for every candidate)."""
    seen: dict[str, int | None] = {}

    def probed(device: str) -> int | None:
        if device not in seen:
            seen[device] = probe(device)
        return seen[device]

    return probed


def _guide_parameters(settings: RunSettings) -> int:
    if not settings.mode.guide:
        return 0
    from vqa_cli.model import memory

    return memory.guide_parameters(settings.guide_model)


def estimate(checkpoint: Checkpoint, settings: RunSettings, budget: Budget, *, batch: int = 1,
             tgt: Target | None = None) -> MemoryEstimate:
    """The peak memory (``memory.MemoryEstimate``) of ``budget``'s request on ``settings``' target, its weights
    placed within ``--max-memory`` (``placement.place``) when it is given."""
    from vqa_cli.model import memory
    from vqa_cli.model.weights import placement

    tgt = tgt or target(settings)
    est = memory.request_memory(checkpoint.adapter, quant=tgt.quant, dtype_bytes=tgt.dtype_bytes, device=tgt.device,
                                frames=budget.plan.frames, prefill_tokens=budget.plan.total + budget.prompt_tokens,
                                total_tokens=budget.total, batch=batch, guide_parameters=_guide_parameters(settings))
    if tgt.max_memory:
        placement.place(est, checkpoint.adapter, tgt.quant, tgt.dtype, tgt.dtype_bytes, tgt.max_memory, tgt.offload_dir)
    return est


def measure(checkpoint: Checkpoint, settings: RunSettings, budget: Budget, probe: Probe, *, batch: int = 1
            ) -> MemoryCheck:
    """``budget``'s request estimated (``batch`` clips at once) and set against what ``probe`` finds on each
    device it uses; nothing is refused here (``--plan`` shows this)."""
    tgt = target(settings)
    est = estimate(checkpoint, settings, budget, batch=batch, tgt=tgt)
    return MemoryCheck(est, {d: probe(d) for d in est.devices()}, tgt, checkpoint.adapter)


def budget_at(checkpoint: Checkpoint, settings: RunSettings, questions: list[str], reserve: int, frames: int | None
              ) -> Budget | None:
    """The budget of ``settings`` at ``frames`` (chat's ``reserve`` included), or None when the context
    cannot hold it."""
    planning = replace(settings, max_new_tokens=settings.max_new_tokens + reserve)
    try:
        return checkpoint.budget(planning, questions, num_frames=frames)
    except ContextOverflowError:
        return None


def frames_floor(checkpoint: Checkpoint, settings: RunSettings, frames: int) -> int:
    """Bytes the tensors of ``frames`` frames take at the least (``memory.activation_bytes`` without a prompt),
    computed without allocating anything, however large ``frames`` is."""
    from vqa_cli.model import memory

    return memory.activation_bytes(checkpoint.adapter, frames, 0, target(settings).dtype_bytes)


def check_frame_count(checkpoint: Checkpoint, settings: RunSettings, frames: int) -> None:
    """Refuse a frame count whose tensors alone exceed the RAM available (``MemoryFitError``), before the token
    budget is made: its plan holds a position per frame, so an absurd count would take the machine first."""
    need, room = frames_floor(checkpoint, settings, frames), machine.available_ram()
    if room is not None and need > room:
        raise MemoryFitError(f"{frames} frames need at least {gib_text(need)} for their tensors alone but "
                             f"{gib_text(room)} of RAM is available: try fewer --frames")


def check(checkpoint: Checkpoint, settings: RunSettings, questions: list[str], budget: Budget, *, batch: int = 1,
          reserve: int = 0, probe: Probe | None = None) -> MemoryCheck:
    """The memory check before download and load: the largest batch up to ``batch`` that fits (its
    ``estimate.batch``), or a ``MemoryFitError`` naming what it needs, what there is and what would fit."""
    probe = memo(probe or machine.probe_memory)
    first = measure(checkpoint, settings, budget, probe, batch=batch)
    if first.fits is not False:
        return first
    lo, hi, best = 1, batch - 1, None
    while lo <= hi:  # the need grows with the batch: bisect
        mid = (lo + hi) // 2
        found = measure(checkpoint, settings, budget, probe, batch=mid)
        if found.fits:
            best, lo = found, mid + 1
        else:
            hi = mid - 1
    if best is not None:
        return best
    one = first if batch == 1 else measure(checkpoint, settings, budget, probe, batch=1)
    raise MemoryFitError(refusal(checkpoint, settings, questions, one, budget.plan.frames, reserve=reserve,
                                 probe=probe))


def check_caps(checkpoint: Checkpoint, settings: RunSettings, budget: Budget, *, batch: int = 1
               ) -> MemoryEstimate | None:
    """The ``--max-memory`` check that ``--force`` does not skip (the caps are the user's own): the estimate
    (``memory.MemoryEstimate``, whose ``device_map`` the load uses), or a ``MemoryFitError`` naming the smallest
    cap that fits. Without ``--max-memory`` None."""
    if not settings.max_memory:
        return None
    found = MemoryCheck(estimate(checkpoint, settings, budget, batch=batch), {}, target(settings), checkpoint.adapter)
    if found.estimate.cap_fits is False:
        raise MemoryFitError(cap_refusal(settings, found))
    return found.estimate


def caps_text(caps: dict[str, int]) -> str:
    """``--max-memory``'s value for ``caps`` (each size rounded up: see ``placement.cap_text``)."""
    from vqa_cli.model.weights.placement import cap_text

    return ",".join(f"{d}={cap_text(b)}" for d, b in caps.items())


def cap_refusal(settings: RunSettings, mem: MemoryCheck) -> str:
    """One line: why the placement does not fit ``--max-memory`` and the smallest cap that does."""
    est = mem.estimate
    given = ", ".join(f"{d} {size_text(b)}" for d, b in est.caps.items())
    why = []
    for device in est.cap_problems():
        if device == "disk":
            why.append(f"{size_text(est.disk_bytes)} of its weights would go to disk")
        elif device == est.device:
            why.append(f"{device} needs {size_text(est.peak_on(device))} (weights {size_text(est.weights_on(device))}"
                       f" + KV cache, activations and runtime {size_text(est.overhead_bytes)})")
        elif est.weights_on(device):
            why.append(f"{device} needs {size_text(est.peak_on(device))} for its layers")
        else:
            why.append(f"{device} holds none of the weights, so the request would not compute there")
    smallest = mem.smallest_caps()
    fix = f"the smallest that fits is --max-memory {caps_text(smallest)}" if smallest \
        else "no larger cap of one device makes it fit"
    if "disk" in est.cap_problems():
        fix += " (or --offload-dir DIR puts the rest on disk, read again for every generated token)"
    return f"{settings.model} does not fit --max-memory ({given}): {'; '.join(dict.fromkeys(why))}: {fix}"


# ---- the refusal and its suggestions ---------------------------------------------------------------


def gib_text(n: float) -> str:
    """The check's messages: always GiB, one decimal."""
    return size_text(n, 1, smaller=False)


def where_text(device: str) -> str:
    return "of RAM" if device == "cpu" else f"on {device}"


def _fits(checkpoint: Checkpoint, settings: RunSettings, questions: list[str], reserve: int, probe: Probe,
          frames: int | None = None) -> MemoryCheck | None:
    """The check of ``settings`` at ``frames`` when it fits the context and the memory (or the device is not
    on this machine, so only the context counts), else None."""
    budget = budget_at(checkpoint, settings, questions, reserve, frames)
    if budget is None:
        return None
    try:
        found = measure(checkpoint, settings, budget, probe)
    except UsageError:  # a variant the options cannot express (e.g. --quant with disk offload)
        return None
    return None if found.fits is False else found


def largest_frames(checkpoint: Checkpoint, settings: RunSettings, questions: list[str], reserve: int, probe: Probe,
                   hi: int) -> tuple[int, MemoryCheck] | None:
    """The most frames up to ``hi`` whose request fits both the context and the memory (the need grows
    with the frames: bisect), with its check; None when not even one frame fits."""
    lo, best = 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        found = _fits(checkpoint, settings, questions, reserve, probe, mid)
        if found is not None:
            best, lo = (mid, found), mid + 1
        else:
            hi = mid - 1
    return best


def _needed(found: MemoryCheck) -> str:
    """What a variant needs where the request computes (its GPU, when layers are offloaded to the CPU)."""
    est = found.estimate
    where = "" if not est.placement or est.device == "cpu" else f" on {est.device}"
    return gib_text(est.peak_on(est.device)) + where


def _frames_flag(settings: RunSettings, n: int) -> str:
    return f"--max-frames {n}" if settings.fps else f"--frames {n}"


def with_frames(settings: RunSettings, n: int) -> RunSettings:
    return replace(settings, max_frames=n) if settings.fps else replace(settings, frames=n)


def _smaller_model(mem: MemoryCheck) -> str | None:
    """The smallest known checkpoint, when it is much smaller than this one (its published geometry, ``catalog``)
    and its default request fits what the device has on this target."""
    from vqa_cli.model import catalog, memory
    from vqa_cli.model.families.registry import CHECKPOINTS, adapter_for

    smallest = min(CHECKPOINTS, key=lambda c: c.nominal_parameters)
    adapter = adapter_for(catalog.published_config(smallest))
    if memory.count_parameters(adapter)[0] * 2 > mem.estimate.parameters:
        return None
    have, tgt = mem.available.get(mem.estimate.device), mem.target
    need = catalog.request_peak(adapter, (tgt.device, tgt.quant, tgt.dtype))
    return smallest.alias if have is None or need < have else None


def suggestions(checkpoint: Checkpoint, settings: RunSettings, questions: list[str], mem: MemoryCheck, frames: int, *,
                reserve: int = 0, probe: Probe) -> list[str]:
    """The changes that each make a request of ``frames`` frames fit, cheapest first: quantization, dtype
    (CPU), fewer frames, a cheaper mode, offloading (``--max-memory``); when none does alone, quantization
    with fewer frames; then a smaller model."""
    tgt = mem.target
    out: list[str] = []

    def fits(label: str, variant: RunSettings) -> None:
        found = _fits(checkpoint, variant, questions, reserve, probe, frames)
        if found is not None:
            out.append(f"{label} ({_needed(found)})")

    cheaper = []
    if tgt.quant != "4bit":
        cheaper.append(("--quant 4bit", replace(settings, quant="4bit")))
    if tgt.device == "cpu" and tgt.dtype_name == "float32":
        cheaper.append(("--dtype bfloat16", replace(settings, dtype="bfloat16")))
    for label, variant in cheaper:
        fits(label, variant)
    fewer = largest_frames(checkpoint, settings, questions, reserve, probe, frames - 1)
    if fewer:
        out.append(f"{_frames_flag(settings, fewer[0])} ({_needed(fewer[1])})")
    if settings.mode.name != "pooled":
        from vqa_cli.settings import ModeSettings

        fits("--mode pooled", replace(settings, mode=ModeSettings("pooled")))
    offload = _offload(mem, probe)
    if offload:
        fits(f"--max-memory {offload}", replace(settings, max_memory=parse_max_memory(offload)))
    if not out:
        for label, variant in cheaper:
            fewer = largest_frames(checkpoint, variant, questions, reserve, probe, frames - 1)
            if fewer:
                out.append(f"{label} {_frames_flag(settings, fewer[0])} ({_needed(fewer[1])})")
                break
    if not out:
        smaller = _smaller_model(mem)
        if smaller:
            out.append(f"a smaller model (--model {smaller})")
    return out


def _offload(mem: MemoryCheck, probe: Probe) -> str | None:
    """A ``--max-memory`` that keeps on the GPU what fits beside the activations and puts the rest in RAM."""
    est, tgt = mem.estimate, mem.target
    if not tgt.device.startswith("cuda") or tgt.max_memory:
        return None
    gpu, ram = mem.available.get(est.device), probe("cpu")
    if gpu is None or ram is None:
        return None
    room = gpu - est.overhead_bytes  # a cap is for everything on its device: the GPU's must hold more than this
    gpu_gib, ram_gib = int(gpu / GIB * 2) / 2, int(ram * 0.9 / GIB)
    if gpu_gib * GIB <= est.overhead_bytes or room < GIB / 2 or ram_gib < 1:
        return None
    device = "cuda:0" if tgt.device == "cuda" else tgt.device
    return f"{device}={gpu_gib:g}GiB,cpu={ram_gib}GiB"


def refusal(checkpoint: Checkpoint, settings: RunSettings, questions: list[str], mem: MemoryCheck, frames: int, *,
            reserve: int = 0, probe: Probe) -> str:
    """One line: what the request needs, what there is, and the cheapest changes that would fit (a placement
    outside ``--max-memory``: ``cap_refusal``)."""
    est, tgt = mem.estimate, mem.target
    if est.cap_fits is False:
        return cap_refusal(settings, mem)
    device, need, have = mem.shortfall()[0]
    if device == est.device:
        held = tgt.quant if tgt.quant != "none" else tgt.dtype_name
        parts = [f"weights {gib_text(est.weights_on(device))} in {held}",
                 f"KV cache {gib_text(est.kv_cache_bytes)}", f"activations {gib_text(est.activation_bytes)}"]
        if est.guide_bytes:
            parts.append(f"guide model {gib_text(est.guide_bytes)}")
        if est.batch > 1:
            parts.append(f"batch of {est.batch}")
        what = f"needs about {gib_text(need)} {where_text(device)} ({', '.join(parts)})"
    else:
        what = f"needs about {gib_text(need)} {where_text(device)} for the layers offloaded there"
    there = "available" if device == "cpu" else "free"
    tips = suggestions(checkpoint, settings, questions, mem, frames, reserve=reserve, probe=probe)
    advice = f"try {', '.join(tips[:-1]) + ' or ' + tips[-1] if len(tips) > 1 else tips[0]}" if tips \
        else "no smaller setting of this model fits"
    return f"{settings.model} {what} but {gib_text(have)} is {there}: {advice}; --force loads it anyway"
