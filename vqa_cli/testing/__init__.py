"""Test support, for the tests and the benchmarks (which import the project, never tests/); nothing in vqa_cli
imports it.

- ``checkpoints``: offline test checkpoints, random weights with the real geometry, through the real loading path
  (``tiny_checkpoint``; ``python -m vqa_cli.testing tiny-checkpoint DIR [--family F] [--geometry G]``);
- ``clips``: synthetic clips, ``make_clip`` (self-numbering frames, read back with ``frame_number``),
  ``scene_clip`` (scenes with known cuts) and ``ffmpeg_exe`` (the ffmpeg binary);
- ``servers``: ``start`` runs a real ``vqa serve`` on a free port (``Server``, ``http``).
"""

from vqa_cli.testing.checkpoints import (
    FAMILIES,
    FULL_GEOMETRIES,
    GEOMETRIES,
    QWEN_RECIPES,
    build_tokenizer,
    main,
    tiny_checkpoint,
)
from vqa_cli.testing.clips import (
    BITS,
    GRID_COLUMNS,
    GRID_ROWS,
    MODULUS,
    SCENE_COLOURS,
    ffmpeg_exe,
    frame_image,
    frame_number,
    make_clip,
    scene_clip,
)
from vqa_cli.testing.servers import LISTENING, Server, http, start

__all__ = [
    "BITS", "FAMILIES", "FULL_GEOMETRIES", "GEOMETRIES", "GRID_COLUMNS", "GRID_ROWS", "LISTENING", "MODULUS",
    "QWEN_RECIPES", "SCENE_COLOURS", "Server", "build_tokenizer", "ffmpeg_exe", "frame_image", "frame_number", "http",
    "main", "make_clip", "scene_clip", "start", "tiny_checkpoint",
]
