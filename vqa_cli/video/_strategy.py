"""Which way to decode: the cost model behind ``seek="auto"`` and the packet-or-seek choices.

Pure estimates, in decoded frames, over the packet index; ``_sample`` runs what is chosen here.

* exact decoding goes through the packets (H.264, leaving out non-reference frames) when that
  decodes at most ``_PACKET_GAIN`` of what seeking and grabbing would;
* keyframes are decoded from their packets when that is cheaper than seeking to each;
* ``seek="auto"`` uses keyframes when exact decoding would decode more than
  ``DecodeOptions.auto_keyframe_above`` frames, every target has a keyframe of its own and
  keyframe decoding would decode fewer frames.
"""

from __future__ import annotations

from dataclasses import dataclass

from vqa_cli.video._index import PacketIndex
from vqa_cli.video._options import DecodeOptions
from vqa_cli.video._runs import PACKET_BATCH, landing, plan_runs
from vqa_cli.video._sampling import Request, Timeline, has_key_in, nearest_keys

# Exact decoding of H.264 goes through the packets (leaving out non-reference frames) when
# that decodes at most this share of the frames seeking and grabbing would.
_PACKET_GAIN = 0.8
# Opening an in-memory capture costs about this many decoded frames (720p H.264 camera footage:
# 7 ms against 2.5 ms a frame; streams starting with very large keyframes cost more to open).
_STREAM_COST = 3


@dataclass(frozen=True)
class Choice:
    """How to reach the requested frames: exactly, or by the keyframes ``keys`` (increasing)."""

    mode: str  # "exact" or "keyframe"
    keys: list[int]  # each target's nearest keyframe inside the window, once each ([] if there is none)


def choose(
    index: PacketIndex, timeline: Timeline, request: Request, targets: list[int], seek: str, options: DecodeOptions
) -> Choice:
    """The mode ``seek`` ("exact", "keyframe" or "auto") comes to for these targets."""
    mode = "exact"
    keys: list[int] = []
    if seek != "exact":
        # Keyframes are looked for inside the window only: frames outside it are never returned.
        window = timeline.window(request)
        if has_key_in(index.keys, window):
            keys = sorted(set(nearest_keys(index.keys, targets, window)))
            if seek == "keyframe":
                mode = "keyframe"
            elif len(keys) == len(targets):
                exact = exact_cost(index, targets, options)[0]
                if exact > options.auto_keyframe_above and keyframe_cost(index, keys)[0] < exact:
                    mode = "keyframe"
    return Choice(mode, keys)


def exact_cost(index: PacketIndex, targets: list[int], options: DecodeOptions) -> tuple[int, bool]:
    """Estimated frames exact decoding of ``targets`` (and the end check) decodes; whether via packets."""
    walking = sum(r.cost for r in plan_runs(index, targets, eof=True))
    if options.packets_for_exact and index.refs is not None and index.regular:
        packets = packet_cost(index, targets, options)
        if packets <= _PACKET_GAIN * walking:
            return packets, True
    return walking, False


def keyframe_cost(index: PacketIndex, keys: list[int]) -> tuple[int, bool]:
    """Estimated frames decoding keyframes ``keys`` (and the end check) decodes; whether via packets."""
    walking = sum(r.cost for r in plan_runs(index, keys, eof=True))
    last = index.frames_from_content - 1
    packets = (
        1  # frame 0 check
        + (last - landing(index, last) + 1)  # end check
        + index.references(index.key_at_or_before(last), last)  # last-frame check
        + len(keys)
        + _STREAM_COST * (2 + len(keys) // PACKET_BATCH)
    )
    return (packets, True) if packets < walking else (walking, False)


def packet_cost(index: PacketIndex, targets: list[int], options: DecodeOptions) -> int:
    """Frames the packet path decodes for ``targets``: reference frames and targets per keyframe
    interval (frame 0 and the last frame among them, as checks), the end check, and the price of
    opening its streams (one per parallel group of intervals)."""
    last = index.frames_from_content - 1
    spans: dict[int, list[int]] = {}
    for t in [0, *targets, last]:
        spans.setdefault(index.key_at_or_before(t), []).append(t)
    cost = last - landing(index, last) + 1  # end check
    for key, ts in spans.items():
        top = max(ts)
        cost += index.references(key, top) + sum(1 for t in set(ts) if not index.references(t, t))
    return cost + _STREAM_COST * min(len(spans), options.cpu_count)
