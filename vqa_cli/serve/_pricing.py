"""What a request costs before anything is decoded or allocated for it: its KV cache and activations against
``--max-request-memory``, its tokens against the context (the frames' own memory: ``_media.price_decoded``)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from vqa_cli.serve._body import too_much
from vqa_cli.serve._media import is_image_url
from vqa_cli.serve._requests import ChatRequest

if TYPE_CHECKING:
    from vqa_cli.model.engine import Engine


def price(request: ChatRequest, engine: Engine, limit: int | None) -> None:
    """The memory the request's settings need, checked before anything is decoded or allocated for it, with
    the estimate ``--plan`` prints (``fit.estimate``, ``memory.request_memory``): its KV cache and activations
    must fit ``limit`` bytes (``--max-request-memory``; None: unlimited), its tokens the context
    (``context_length_exceeded``). The frame count is priced first from the clip's own tensors
    (``memory.activation_bytes``), which takes no memory however large it is: the token budget's plan holds a
    position per frame. A still image is one frame; a text-only chat is checked against the context when it
    runs."""
    from vqa_cli import units
    from vqa_cli.model import device, fit, machine

    if request.text_only or (len(request.urls) == 1 and is_image_url(request.urls[0])):
        return
    view = engine.with_settings(request.settings)
    frames = view.checkpoint.frames_for(request.settings)
    tgt = device.target(request.settings)
    floor = fit.frames_floor(view.checkpoint, request.settings, frames)
    room = limit if limit is not None else machine.available_ram()  # without a limit, still no more than the RAM has
    if room is not None and floor > room:
        raise too_much(floor, room, f"at least, for the tensors of {frames} frames")
    settings = replace(request.settings, frames=frames)
    budget = view.checked_budget(settings, request.first_question)  # too many tokens: context_length_exceeded
    if limit is not None:
        est = fit.estimate(view.checkpoint, settings, budget, tgt=tgt)
        need = est.kv_cache_bytes + est.activation_bytes
        if need > limit:
            raise too_much(need, limit, f"KV cache {units.size_text(est.kv_cache_bytes)} and activations "
                                         f"{units.size_text(est.activation_bytes)} for {frames} frames and "
                                         f"{budget.total} tokens")
