"""A folder of numbered frame images as a clip (MVBench's ``tvqa/frames_fps3_hq/<clip>/00001.jpg``...).

The frames are taken in numeric order of their file names (``00001.jpg``, ``00002.jpg``, ...; the numbers need
not start at 0 or 1); the k-th (from 0) is shown at ``k / rate`` seconds, ``rate`` being the rate the folder was
extracted at (the benchmark says it; nothing in the folder does). Which frames to take is ``_sampling``'s, as
for a video file: the same count, rate and window rules. Each chosen image is read with ``read_image``.
"""

from __future__ import annotations

import math
import os
import re

from vqa_cli.video._capture import read_image, sampled
from vqa_cli.video._inputs import IMAGE_EXTENSIONS, Clip, Deadline, VideoError, quote
from vqa_cli.video._sampling import Timeline, round_ts, validate

_NUMBERED = re.compile(r"^(\d+)$")


def frame_files(path: str) -> list[str]:
    """The folder's numbered image files in numeric order; VideoError when there are none."""
    if not os.path.isdir(path):
        raise VideoError(f"no such frame folder: {quote(path)}")
    numbered = []
    for name in os.listdir(path):
        stem, ext = os.path.splitext(name)
        m = _NUMBERED.match(stem)
        if m and ext.lower() in IMAGE_EXTENSIONS:
            numbered.append((int(m.group(1)), name))
    if not numbered:
        raise VideoError(f"{quote(path)} holds no numbered frame images (00001.jpg, ...)")
    return [name for _, name in sorted(numbered)]


def sample_frame_folder(
    path: str,
    num_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    timeout: float | None = None,
    *,
    rate: float,
    fps: float | None = None,
    max_frames: int | None = None,
) -> Clip:
    """``sample_frames`` for a folder of numbered frames extracted at ``rate`` frames per second."""
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive number of frames per second, got {rate!r}")
    request = validate(num_frames, fps, max_frames, "exact", start, end)
    names = frame_files(path)
    deadline = Deadline(path, timeout)
    timeline = Timeline(timestamps=[round_ts(k / rate) for k in range(len(names))],
                        duration=round_ts(len(names) / rate), fps=round(rate, 3))
    chosen = timeline.targets(request, path)
    frames = {}
    for k in chosen:
        deadline.check()
        frames[k] = read_image(os.path.join(path, names[k])).frames[0]
    return sampled(path, timeline, chosen, frames, frames_from_content=len(names), frames_from_header=len(names),
                   fps_from_header=rate, seek="exact", decoded=len(chosen))
