"""Opening a request: the checks come before any weight loads, and the session holds what was opened."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vqa_cli.errors import ContextOverflowError, InputNotFoundError
from vqa_cli.model.session import check_input, open_model, open_session
from vqa_cli.settings import RunSettings


def test_a_missing_input_or_a_folder_fails_before_the_model_is_read(tmp_path):
    settings = RunSettings(model="/no/such/model")  # would fail if it were read
    with pytest.raises(InputNotFoundError, match="no such file"):
        open_session(settings, str(tmp_path / "missing.mp4"), ["q"])
    with pytest.raises(InputNotFoundError, match="is a directory"):
        check_input(str(tmp_path))


def test_a_request_that_cannot_fit_fails_before_the_weights_load(tiny_dir, monkeypatch):
    from vqa_cli.model.weights import loader

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(loader, "load", never)
    with pytest.raises(ContextOverflowError, match="frames fit"):
        open_model(RunSettings(model=str(tiny_dir), frames=1000), ["q"])


def test_a_session_holds_the_engine_the_budgeted_clip_and_the_timings(tiny_dir, clip_path):
    session = open_session(RunSettings(model=str(tiny_dir), frames=3, max_new_tokens=2, dtype="float32"),
                           clip_path, ["What happens?"])
    assert len(session.clip.indices) == 3 == session.budget.plan.frames
    assert session.engine.rope_factor == session.budget.rope_factor == 1.0
    assert list(session.timings) == ["load", "decode"] and all(t >= 0 for t in session.timings.values())


def test_the_frame_count_is_planned_from_config_json_without_transformers(tiny_dir):
    probe = ("import sys\nfrom vqa_cli.model.engine import RunSettings\n"
             "from vqa_cli.model.session import planned_frames\n"
             f"print(planned_frames(RunSettings(model={str(tiny_dir)!r})), 'transformers' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["32", "False"]
