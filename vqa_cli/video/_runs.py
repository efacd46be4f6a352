"""Runs: which stretches of a file are decoded to reach a set of target frames (OpenCV's seek model, runs of
targets from one seek each, and work split into groups).

Pure functions over the packet index; the decoders (``_seeking``, ``_packets``) decode the runs and the cost
model (``_strategy``) prices them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vqa_cli.video._index import PacketIndex

# OpenCV's FFmpeg backend seeks to the keyframe at or before (requested frame - 16)
# and decodes forward from there (cap_ffmpeg_impl.hpp, CvCapture_FFMPEG::seek).
SEEK_LEAD = 16
# Fixed price of a seek (flush, decoder restart), in decoded frames.
SEEK_COST = 2
# Keyframe packets decoded per in-memory capture (for codecs other than H.264/HEVC each
# batch decodes frame 0 again, in front, for the decoder's sake).
PACKET_BATCH = 32


def landing(index: PacketIndex, target: int) -> int:
    """The keyframe a decoding capture's seek to ``target`` starts decoding from."""
    return index.key_at_or_before(target - SEEK_LEAD)


@dataclass
class Run:
    """Targets one capture reaches by grabbing forward, after a seek (``land`` set) or from the first frame."""

    targets: list[int]
    land: int | None  # keyframe the seek is expected to land on; None: continue from frame 0
    eof: bool = False  # check that nothing follows the last target

    @property
    def cost(self) -> int:
        if self.land is None:
            return self.targets[-1]
        return self.targets[-1] - self.land + 1 + SEEK_COST


def plan_runs(index: PacketIndex, targets: list[int], eof: bool) -> list[Run]:
    """Group targets so that the fewest frames are decoded (modelling OpenCV's seek lead-in)."""
    points = sorted(set(targets) | ({index.frames_from_content - 1} if eof else set()))
    runs: list[Run] = []
    previous = 0  # a capture decodes frame 0 when it opens
    for t in points:
        land = landing(index, t)
        if t - previous <= t - land + 1 + SEEK_COST:
            if runs:
                runs[-1].targets.append(t)
            else:
                runs.append(Run([t], None))
        else:
            runs.append(Run([t], land))
        previous = t
    if runs and eof:
        runs[-1].eof = True
    return runs


def split(costs: list[float], parts: int) -> list[list[int]]:
    """Cut item positions into at most ``parts`` consecutive groups of about equal cost."""
    parts = max(1, min(parts, len(costs)))
    total = sum(costs)
    groups: list[list[int]] = [[]]
    done = 0.0
    for i, cost in enumerate(costs):
        if groups[-1] and len(groups) < parts and done + cost / 2 > total * len(groups) / parts:
            groups.append([])
        groups[-1].append(i)
        done += cost
    return groups
