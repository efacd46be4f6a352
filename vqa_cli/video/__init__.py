"""Frame sampling with OpenCV: a video (or image) file -> sampled RGB frames with timestamps.

Container headers are not trusted: the frame count and frame rate a file claims
are often wrong.  The file is first read in OpenCV's demuxer-only mode, which
decodes nothing: each video packet's own presentation time and keyframe flag
make a *packet index* (``_index``).  With it:

* ``seek="exact"`` returns exactly the frames a full sequential decode gives at
  the requested indices, decoding as little as possible, in one of two ways:
  seeking and grabbing (``_seeking``: OpenCV's FFmpeg backend seeks to the
  keyframe at least 16 frames before the requested one and decodes forward,
  which ``_runs`` models), or, for H.264 when that decodes
  clearly fewer frames, decoding chosen packets (``_packets``: non-reference
  frames that are not targets are left out), checked once per file against the
  file's own decoder.
* ``seek="keyframe"`` snaps each target to its nearest keyframe and decodes only
  keyframes, from their packets (same checks); where keyframes do not decode from
  their packets alone (VP8/VP9, Theora, open-GOP H.264) they are reached by seeking.
* ``seek="auto"`` uses keyframe seeking when exact decoding would decode more
  than ``DecodeOptions.auto_keyframe_above`` frames, every target has a keyframe
  of its own and keyframe seeking would decode fewer frames (``_strategy``);
  exact decoding otherwise.

Which frames to take is pure logic over measured timestamps (``_sampling``).
The index is trusted after a cheap end check: seeking to its last frame must
decode that frame and nothing may follow.  Whenever the decoder disagrees with
the index (damaged or truncated files, timestamps that repeat or jump back,
streams that do not start with a keyframe), a counting pass (``_counting``)
decodes the whole file sequentially instead, skipping and reporting undecodable
packets.  Damage in parts of a file that are not decoded cannot be seen; there
indices follow the packets (timestamps are always the frames' own).

Files whose first frame the installed OpenCV cannot decode (AV1 with some
wheels) go through PyAV instead (``_pyav``), decided once per file (``_decoder``), with the same
contract; ``DecodeOptions.decoder`` (``--decoder``) can force either library.

Modules, each depending only on those before it: ``_inputs``, ``_options``,
``_capture``, ``_h264``, ``_sampling``, ``_index``, ``_runs``, ``_seeking``,
``_packets``, ``_strategy``, ``_counting``, ``_pyav``, ``_decoder``, ``_sample``.
"""

from __future__ import annotations

from typing import Any

from vqa_cli.video._inputs import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Clip,
    VideoError,
    is_image_path,
)
from vqa_cli.video._options import AUTO_KEYFRAME_ABOVE, DecodeOptions, cpu_cores
from vqa_cli.video._sampling import uniform_indices


# The decoding side imports OpenCV and numpy: loaded on first use, so `vqa --help` stays fast.
def __getattr__(name: str) -> Any:
    if name == "probe":
        from vqa_cli.video import _decoder as home
    elif name == "read_image":
        from vqa_cli.video import _capture as home
    elif name in ("sample_frames", "frame_times"):
        from vqa_cli.video import _sample as home
    else:
        raise AttributeError(f"module 'vqa_cli.video' has no attribute {name!r}")
    value = getattr(home, name)
    globals()[name] = value
    return value

__all__ = [
    "AUTO_KEYFRAME_ABOVE",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Clip",
    "DecodeOptions",
    "VideoError",
    "cpu_cores",
    "frame_times",
    "is_image_path",
    "probe",
    "read_image",
    "sample_frames",
    "uniform_indices",
]
