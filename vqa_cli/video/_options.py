"""How one file is decoded: cores, parallel captures, and when ``seek="auto"`` turns to keyframes.

``DecodeOptions`` is passed explicitly from ``sample_frames`` down to every decoder that reads it;
nothing here is a module global a caller has to patch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vqa_cli.settings import DECODERS, DEFAULT_DECODER, DecoderName

# seek="auto" switches to keyframe seeking when exact decoding would decode more
# frames than this (2 to 4 s of 1080p H.264 on two cores), every target has a
# keyframe of its own and keyframe seeking would decode fewer frames.
AUTO_KEYFRAME_ABOVE = 1000
# Below this many planned decodes one capture does all the work.
PARALLEL_MIN_DECODES = 240


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class DecodeOptions:
    """Knobs of one ``sample_frames`` call; the defaults are what the CLI uses. None of them changes
    the frames returned (``auto_keyframe_above`` aside, which only ``seek="auto"`` reads).

    ``cores`` bounds the cores one file's decoding uses (parallel captures and FFmpeg decoder
    threads): callers that decode several files at once, such as ``vqa caption``'s decode-ahead
    workers, give each file its share, since decoders that each take every core only contend.
    """

    cores: int | None = None  # None: every core this process may use, decoder threads left to OpenCV
    max_workers: int | None = None  # captures decoding one file in parallel (None: one per core)
    parallel_min_decodes: int = PARALLEL_MIN_DECODES  # below this many planned decodes, one capture
    packets_for_exact: bool = True  # exact H.264 decoding may go through the packets (see _packets)
    auto_keyframe_above: int = AUTO_KEYFRAME_ABOVE  # seek="auto": exact decodes above which keyframes win
    decoder: DecoderName = DEFAULT_DECODER  # "auto": OpenCV when it decodes the first frame, else PyAV; or one forced

    def __post_init__(self) -> None:
        for name in ("cores", "max_workers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
                raise ValueError(f"{name} must be a positive whole number or None, got {value!r}")
        for name in ("parallel_min_decodes", "auto_keyframe_above"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ValueError(f"{name} must be a non-negative whole number, got {value!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")

    @property
    def cpu_count(self) -> int:
        """Cores one file may be decoded with: the process's, or fewer under ``cores``."""
        cores = cpu_cores()
        return min(cores, self.cores) if self.cores else cores

    @property
    def decoder_threads(self) -> int:
        """FFmpeg threads for a capture that has the file's cores to itself (0: OpenCV's default)."""
        return self.cores or 0

    @property
    def workers(self) -> int:
        """Captures that may decode one file at the same time."""
        return max(1, self.cpu_count if self.max_workers is None else self.max_workers)
