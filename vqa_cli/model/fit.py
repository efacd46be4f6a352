"""Fitting a request to the machine: what it needs at its peak, what the target has, and what would fit.

- ``probe_memory(device)`` says what a device has now: free CUDA memory (``torch.cuda.mem_get_info``;
  ``cuda`` sums every visible GPU, which ``device_map="auto"`` spreads over) or the available RAM
  (``MemAvailable``, capped by the cgroup's limit). Everything here takes the probe as a parameter,
  so tests give their own.
- ``check`` is the check ``session.open_model`` runs before any weight is downloaded or loaded: the
  peak (``memory.request_memory``) against the probe on each device the request uses. A request that
  cannot fit is a ``MemoryFitError`` (exit 2) that names the cheapest changes that would fit. With a
  batch (``caption``) it settles on the largest batch that fits.
- ``fit`` (``--fit``) lowers the frame count to the most that fit memory and context and, when even
  one frame does not fit the mode, tries the modes that cost fewer tokens.
- ``parse_max_memory`` reads ``--max-memory`` (``cuda:0=6GiB,cpu=24GiB``). A cap is for everything on its
  device (the computing device's KV cache and activations included); weights that do not fit the caps are
  refused (``cap_refusal``: the smallest cap that fits), unless ``--offload-dir`` allows the disk.

Nothing here imports torch at module level: ``vqa --help`` reads ``parse_max_memory``'s module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vqa_cli.errors import ContextOverflowError, MemoryFitError, UsageError
from vqa_cli.units import GIB, gib, parse_size, size_text

Probe = Callable[[str], "int | None"]  # device ("cpu", "cuda", "cuda:1") -> free bytes, None if unknown here
_DEVICE = re.compile(r"^(cpu|cuda(?::\d+)?)$")


# ---- what the machine has ------------------------------------------------------------------------


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> int | None:
    """Memory left under this process's cgroup limit (v2, else v1), or None without a limit."""
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is None:
        limit, used = (_read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
                       _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes"))
    if limit is None or used is None or limit >= 2**60:
        return None
    return max(0, limit - used)


def available_ram() -> int | None:
    """RAM a new allocation can get without swapping: ``MemAvailable`` (Linux), capped by a cgroup limit."""
    found = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if found is None:
        try:
            import psutil

            found = int(psutil.virtual_memory().available)
        except ImportError:
            try:
                found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                return None
    room = _cgroup_room()
    return found if room is None else min(found, room)


def probe_memory(device: str) -> int | None:
    """Free bytes on ``device`` now; None when this machine lacks it (a plan for another machine)."""
    if device == "cpu":
        return available_ram()
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    if device == "cuda":
        return sum(int(torch.cuda.mem_get_info(i)[0]) for i in range(count))
    index = int(device.split(":", 1)[1])
    return int(torch.cuda.mem_get_info(index)[0]) if index < count else None


# ---- --max-memory ----------------------------------------------------------------------------------


def parse_max_memory(text: str | None) -> tuple[tuple[str, int], ...]:
    """``cuda:0=6GiB,cpu=24GiB`` -> (("cuda:0", bytes), ("cpu", bytes)); ``cuda`` means ``cuda:0``."""
    if not text:
        return ()
    out: dict[str, int] = {}
    for part in text.split(","):
        device, sep, size = part.strip().partition("=")
        device = device.strip().lower()
        if not sep or not _DEVICE.match(device):
            raise UsageError(f"--max-memory takes DEVICE=SIZE pairs (e.g. cuda:0=6GiB,cpu=24GiB), not {part.strip()!r}")
        device = "cuda:0" if device == "cuda" else device
        if device in out:
            raise UsageError(f"--max-memory names {device} twice")
        out[device] = parse_size(size.strip())
    return tuple(out.items())


# ---- the target of a request -----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where and how a request's weights load: the resolved device, quantization, compute dtype and budget."""

    device: str
    quant: str
    dtype: Any  # torch dtype
    max_memory: dict[str, int] | None = None
    offload_dir: str | None = None  # --offload-dir: weights past the caps may go to disk

    @property
    def dtype_bytes(self) -> int:
        return int(self.dtype.itemsize)

    @property
    def dtype_name(self) -> str:
        from vqa_cli.model.loading import dtype_name

        return dtype_name(self.dtype)


def target(settings: Any) -> Target:
    """The request's device (one this machine may lack: see ``loading.resolve_device``'s ``planning``),
    quantization, dtype and ``--max-memory``, checked against each other."""
    from vqa_cli.model import loading

    device = loading.resolve_device(settings.device, planning=True)
    quant = loading.resolve_quant(settings.quant, device)
    dtype = loading.resolve_dtype(settings.dtype, device, planning=True)
    budget = dict(settings.max_memory) or None
    offload_dir = getattr(settings, "offload_dir", None)
    if offload_dir and not budget:
        raise UsageError("--offload-dir lets --max-memory put weights on disk: give --max-memory too")
    if budget:
        gpus = [d for d in budget if d.startswith("cuda")]
        if device.startswith("cuda"):
            wanted = [d for d in gpus if device == "cuda" or d == device]
            if not wanted:
                gpu = device if ":" in device else "cuda:0"
                raise UsageError(f"--max-memory must give the GPU the model runs on ({gpu}=SIZE): it names "
                                 f"{', '.join(budget)}")
        elif gpus:
            raise UsageError(f"--max-memory names {', '.join(gpus)} but the model runs on {device}")
        elif quant != "none":
            raise UsageError("--max-memory on the CPU places layers on the CPU and disk, which bitsandbytes leaves "
                             "unquantized: use --quant none")
    return Target(device, quant, dtype, budget, offload_dir)


# ---- estimate and check ----------------------------------------------------------------------------


@dataclass
class MemoryCheck:
    """A request's estimate against what its devices have (``available[device]`` is None when unknown)."""

    estimate: Any  # memory.MemoryEstimate
    available: dict[str, int | None]
    target: Target
    adapter: Any = None  # the checkpoint's family adapter (for the smallest --max-memory that fits)

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
        from vqa_cli.model import memory

        est, tgt = self.estimate, self.target
        problems = est.cap_problems()
        if not problems or self.adapter is None:
            return None
        computing = memory.compute_device(tgt.device, est.caps)
        if computing in problems:
            device = computing
        elif "disk" in problems:
            device = "cpu" if "cpu" in est.caps else computing
        else:
            device = problems[0]
        cap = memory.smallest_cap(est, self.adapter, tgt.quant, tgt.dtype, tgt.dtype_bytes, device)
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


def _memo(probe: Probe) -> Probe:
    """Each device probed once per check (the probe is asked again for every candidate)."""
    seen: dict[str, int | None] = {}

    def probed(device: str) -> int | None:
        if device not in seen:
            seen[device] = probe(device)
        return seen[device]

    return probed


def _guide_parameters(settings: Any) -> int:
    if not settings.mode.guide:
        return 0
    from vqa_cli.model import memory

    return memory.guide_parameters(settings.guide_model)


def estimate(checkpoint: Any, settings: Any, budget: Any, *, batch: int = 1, tgt: Target | None = None) -> Any:
    """The peak memory (``memory.MemoryEstimate``) of ``budget``'s request on ``settings``' target."""
    from vqa_cli.model import memory

    tgt = tgt or target(settings)
    return memory.request_memory(checkpoint.adapter, quant=tgt.quant, dtype_bytes=tgt.dtype_bytes, dtype=tgt.dtype,
                               device=tgt.device, frames=budget.plan.frames,
                               prefill_tokens=budget.plan.total + budget.prompt_tokens, total_tokens=budget.total,
                               batch=batch, guide_parameters=_guide_parameters(settings), max_memory=tgt.max_memory,
                               offload_dir=tgt.offload_dir)


def measure(checkpoint: Any, settings: Any, budget: Any, probe: Probe, *, batch: int = 1) -> MemoryCheck:
    """``budget``'s request estimated (``batch`` clips at once) and set against what ``probe`` finds on each
    device it uses; nothing is refused here (``--plan`` shows this)."""
    tgt = target(settings)
    est = estimate(checkpoint, settings, budget, batch=batch, tgt=tgt)
    return MemoryCheck(est, {d: probe(d) for d in est.devices()}, tgt, checkpoint.adapter)


def _budget(checkpoint: Any, settings: Any, questions: list[str], reserve: int, frames: int | None) -> Any:
    """The budget of ``settings`` at ``frames`` (chat's ``reserve`` included), or None when the context
    cannot hold it."""
    planning = replace(settings, max_new_tokens=settings.max_new_tokens + reserve)
    try:
        return checkpoint.budget(planning, questions, num_frames=frames)
    except ContextOverflowError:
        return None


def frames_floor(checkpoint: Any, settings: Any, frames: int) -> int:
    """Bytes the tensors of ``frames`` frames take at the least (``memory.activation_bytes`` without a prompt),
    computed without allocating anything, however large ``frames`` is."""
    from vqa_cli.model import memory

    return memory.activation_bytes(checkpoint.adapter, frames, 0, target(settings).dtype_bytes)


def check_frame_count(checkpoint: Any, settings: Any, frames: int) -> None:
    """Refuse a frame count whose tensors alone exceed the RAM available (``MemoryFitError``), before the token
    budget is made: its plan holds a position per frame, so an absurd count would take the machine first."""
    need, room = frames_floor(checkpoint, settings, frames), available_ram()
    if room is not None and need > room:
        raise MemoryFitError(f"{frames} frames need at least {_gib(need)} for their tensors alone but "
                             f"{_gib(room)} of RAM is available: try fewer --frames")


def check(checkpoint: Any, settings: Any, questions: list[str], budget: Any, *, batch: int = 1, reserve: int = 0,
          probe: Probe | None = None) -> MemoryCheck:
    """The memory check before download and load: the largest batch up to ``batch`` that fits (its
    ``estimate.batch``), or a ``MemoryFitError`` naming what it needs, what there is and what would fit."""
    probe = _memo(probe or probe_memory)
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


def check_caps(checkpoint: Any, settings: Any, budget: Any, *, batch: int = 1) -> Any:
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
    """``--max-memory``'s value for ``caps`` (each size rounded up: see ``memory.cap_text``)."""
    from vqa_cli.model.memory import cap_text

    return ",".join(f"{d}={cap_text(b)}" for d, b in caps.items())


def cap_refusal(settings: Any, mem: MemoryCheck) -> str:
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


def _gib(n: float) -> str:
    """The check's messages: always GiB, one decimal."""
    return size_text(n, 1, smaller=False)


def _where(device: str) -> str:
    return "of RAM" if device == "cpu" else f"on {device}"


def _fits(checkpoint: Any, settings: Any, questions: list[str], reserve: int, probe: Probe,
          frames: int | None = None) -> MemoryCheck | None:
    """The check of ``settings`` at ``frames`` when it fits the context and the memory (or the device is not
    on this machine, so only the context counts), else None."""
    budget = _budget(checkpoint, settings, questions, reserve, frames)
    if budget is None:
        return None
    try:
        found = measure(checkpoint, settings, budget, probe)
    except UsageError:  # a variant the options cannot express (e.g. --quant with disk offload)
        return None
    return None if found.fits is False else found


def largest_frames(checkpoint: Any, settings: Any, questions: list[str], reserve: int, probe: Probe, hi: int
                   ) -> tuple[int, MemoryCheck] | None:
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
    return _gib(est.peak_on(est.device)) + where


def _frames_flag(settings: Any, n: int) -> str:
    return f"--max-frames {n}" if settings.fps else f"--frames {n}"


def _with_frames(settings: Any, n: int) -> Any:
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


def suggestions(checkpoint: Any, settings: Any, questions: list[str], mem: MemoryCheck, frames: int, *,
                reserve: int = 0, probe: Probe) -> list[str]:
    """The changes that each make a request of ``frames`` frames fit, cheapest first: quantization, dtype
    (CPU), fewer frames, a cheaper mode, offloading (``--max-memory``); when none does alone, quantization
    with fewer frames; then a smaller model."""
    tgt = mem.target
    out: list[str] = []

    def fits(label: str, variant: Any) -> None:
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
        from vqa_cli.model.modes import ModeSettings

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


def refusal(checkpoint: Any, settings: Any, questions: list[str], mem: MemoryCheck, frames: int, *,
            reserve: int = 0, probe: Probe) -> str:
    """One line: what the request needs, what there is, and the cheapest changes that would fit (a placement
    outside ``--max-memory``: ``cap_refusal``)."""
    est, tgt = mem.estimate, mem.target
    if est.cap_fits is False:
        return cap_refusal(settings, mem)
    device, need, have = mem.shortfall()[0]
    if device == est.device:
        parts = [f"weights {_gib(est.weights_on(device))} in {tgt.quant if tgt.quant != 'none' else tgt.dtype_name}",
                 f"KV cache {_gib(est.kv_cache_bytes)}", f"activations {_gib(est.activation_bytes)}"]
        if est.guide_bytes:
            parts.append(f"guide model {_gib(est.guide_bytes)}")
        if est.batch > 1:
            parts.append(f"batch of {est.batch}")
        what = f"needs about {_gib(need)} {_where(device)} ({', '.join(parts)})"
    else:
        what = f"needs about {_gib(need)} {_where(device)} for the layers offloaded there"
    there = "available" if device == "cpu" else "free"
    tips = suggestions(checkpoint, settings, questions, mem, frames, reserve=reserve, probe=probe)
    advice = f"try {', '.join(tips[:-1]) + ' or ' + tips[-1] if len(tips) > 1 else tips[0]}" if tips \
        else "no smaller setting of this model fits"
    return f"{settings.model} {what} but {_gib(have)} is {there}: {advice}; --force loads it anyway"


# ---- --fit -------------------------------------------------------------------------------------------


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
        room = f"about {_gib(est.peak_bytes)}" + ("" if have is None else f" of {_gib(have)} {_where(est.device)}")
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


def _cheaper_modes(checkpoint: Any, settings: Any) -> list[Any]:
    """The other modes whose one-frame request has fewer visual tokens than this mode's, cheapest last."""
    from vqa_cli.model.modes import REGISTRY, ModeSettings

    own = checkpoint.plan(settings, 1).total
    others = [ModeSettings(m.name) for m in REGISTRY if m.name != settings.mode.name]
    cheaper = [(checkpoint.plan(replace(settings, mode=m), 1).total, m) for m in others]
    return [m for tokens, m in sorted(cheaper, key=lambda x: -x[0]) if tokens < own]


def fit(checkpoint: Any, settings: Any, questions: list[str], *, reserve: int = 0, probe: Probe | None = None
        ) -> tuple[Any, FitChoice]:
    """``--fit``: the request with the most frames, up to those asked for, that fit memory and context;
    when not even one frame fits its mode, the cheaper mode that fits the most frames. Returns the settings to run
    (frames explicit, ``fit`` off) and the choice; a ``MemoryFitError`` when nothing fits."""
    probe = _memo(probe or probe_memory)
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
        chosen = replace(_with_frames(replace(settings, mode=mode), n), fit=False)
        return chosen, FitChoice(n, mode.name, asked, settings.mode.name, mem)
    budget = _budget(checkpoint, settings, questions, reserve, 1)
    if budget is None:  # not even one frame fits the context: its own message
        checkpoint.budget(replace(settings, max_new_tokens=settings.max_new_tokens + reserve), questions, num_frames=1)
    mem = measure(checkpoint, settings, budget, probe)
    raise MemoryFitError(refusal(checkpoint, settings, questions, mem, 1, reserve=reserve, probe=probe))
