"""Where each benchmark keeps its videos, and finding them under ``--videos``.

The annotation names a video; the benchmark's layout says where it lies under its video root:
MVBench under a per-task prefix (``MVBENCH_TASKS``, the official ``data_list`` of OpenGVLab/Ask-Anything's
``video_chat2/mvbench.ipynb``), MLVU under ``video/<json stem>/``, NExT-QA under the folder its
``map_vid_vidorID.json`` gives. ``VideoFinder`` takes that path directly under ``--videos`` when it is
there, and otherwise searches ``--videos`` recursively for it: first for the path's trailing components,
then for its file name alone (a flattened copy). A name found at two places is a usage error naming both.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Protocol

from vqa_cli.errors import UsageError

VIDEO_SUFFIXES = ("", ".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")

# MVBench: task json stem -> (folder under the video root, "video" or "frame"); "frame": a folder of numbered
# jpg frames (00001.jpg, ...) at MVBENCH_FRAME_FPS. From the official data_list (FORMATS.md's table).
MVBENCH_TASKS: dict[str, tuple[str, str]] = {
    "action_sequence": ("star/Charades_v1_480/", "video"),
    "action_prediction": ("star/Charades_v1_480/", "video"),
    "action_antonym": ("ssv2_video/", "video"),
    "fine_grained_action": ("Moments_in_Time_Raw/videos/", "video"),
    "unexpected_action": ("FunQA_test/test/", "video"),
    "object_existence": ("clevrer/video_validation/", "video"),
    "object_interaction": ("star/Charades_v1_480/", "video"),
    "object_shuffle": ("perception/videos/", "video"),
    "moving_direction": ("clevrer/video_validation/", "video"),
    "action_localization": ("sta/sta_video/", "video"),
    "scene_transition": ("scene_qa/video/", "video"),
    "action_count": ("perception/videos/", "video"),
    "moving_count": ("clevrer/video_validation/", "video"),
    "moving_attribute": ("clevrer/video_validation/", "video"),
    "state_change": ("perception/videos/", "video"),
    "fine_grained_pose": ("nturgbd/", "video"),
    "character_order": ("perception/videos/", "video"),
    "egocentric_navigation": ("vlnqa/", "video"),
    "episodic_reasoning": ("tvqa/frames_fps3_hq/", "frame"),
    "counterfactual_inference": ("clevrer/video_validation/", "video"),
}
MVBENCH_FRAME_FPS = 3.0  # the rate of the tvqa/frames_fps3_hq folders (the notebook's read_frame default)

NEXTQA_MAP = "map_vid_vidorID.json"  # NExT-QA's {video: "<dir>/<video>"}, published beside val.csv


def mvbench_location(task: str, video: str) -> tuple[str, bool]:
    """The path of an MVBench ``video`` of ``task`` under the video root, and whether it is a frame folder."""
    prefix, kind = MVBENCH_TASKS.get(task, ("", "video"))
    return prefix + video, kind == "frame"


def mlvu_location(stem: str, video: str) -> str:
    """MLVU's HF layout: ``video/<json stem>/<video>`` (``1_plotQA/movie101_66.mp4`` under ``MLVU/video``)."""
    return f"{stem}/{video}"


class Located(Protocol):
    """What a question says about its video (``_formats.Item``)."""

    @property
    def video(self) -> str: ...

    @property
    def location(self) -> str: ...

    @property
    def frame_rate(self) -> float | None: ...


class VideoFinder:
    """The file (or frame folder) of each question's video under ``--videos``."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self._index: dict[str, list[Path]] | None = None

    def _names(self) -> dict[str, list[Path]]:
        """Every file and folder under the root by name (walked once, on the first name not found directly)."""
        if self._index is None:
            self._index = {}
            seen: set[str] = set()
            for top, dirs, files in os.walk(self.root, followlinks=True):
                real = os.path.realpath(top)
                if real in seen:  # a link back up the tree
                    dirs[:] = []
                    continue
                seen.add(real)
                dirs.sort()
                for name in sorted(files) + dirs:
                    self._index.setdefault(name, []).append(Path(top) / name)
        return self._index

    def find(self, item: Located) -> str:
        """``item``'s video (its ``location``, else its ``video``); the path as given under the root when
        nothing is found there (the question then gets an error record)."""
        rel = item.location or item.video
        folder = item.frame_rate is not None
        suffixes = ("",) if folder else VIDEO_SUFFIXES
        kind = Path.is_dir if folder else Path.is_file
        for suffix in suffixes:
            direct = self.root / f"{rel}{suffix}"
            if kind(direct):
                return str(direct)
        parts = PurePosixPath(rel).parts
        tails = [parts] if len(parts) == 1 else [parts, parts[-1:]]
        for tail in tails:
            for suffix in suffixes:
                want = (*tail[:-1], tail[-1] + suffix)
                hits = [p for p in self._names().get(want[-1], []) if p.parts[-len(want):] == want and kind(p)]
                if len(hits) > 1:
                    raise UsageError(f"video {rel!r} is found twice under --videos: {hits[0]} and {hits[1]}")
                if hits:
                    return str(hits[0])
        return str(self.root / rel)


def resolve_video(videos: str, name: str) -> str:
    """The file of ``name`` under ``videos`` (searched as ``VideoFinder`` does)."""

    class _Named:
        location, video, frame_rate = "", name, None

    return VideoFinder(videos).find(_Named())
