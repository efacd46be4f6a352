"""Shared fixtures: one tiny checkpoint per session and small generated clips."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from clips import make_clip  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from vqa_cli.testing import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llava-next-video")


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory) -> str:
    """A 3 s, 30 fps clip whose frames carry their own index."""
    return make_clip(str(tmp_path_factory.mktemp("clips") / "clip.mp4"), 90, fps=30.0, size=(320, 240))


@pytest.fixture(scope="session")
def engine_factory(tiny_dir):
    """Build (and cache) engines on the tiny checkpoint for given settings."""
    from vqa_cli.engine import Checkpoint, Engine, RunSettings

    cache: dict = {}

    def make(**kw):
        key = tuple(sorted(kw.items()))
        if key not in cache:
            settings = RunSettings(model=str(tiny_dir), **{"dtype": "float32", "max_new_tokens": 8, **kw})
            checkpoint = Checkpoint(settings.model)
            budget = checkpoint.budget(settings, ["What happens in the video?"])
            cache[key] = Engine(checkpoint, settings, budget.rope_factor)
        return cache[key]

    return make
