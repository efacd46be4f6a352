"""Records: every kind is built from one field list, in the documented order (docs/output.md, docs/usage.md)."""

from __future__ import annotations

import json

from vqa_cli.errors import ContextOverflowError
from vqa_cli.output import records
from vqa_cli.settings import RunSettings

# The caption record's fields as docs/output.md lists them, in order.
CAPTION_DOC = ["video", "caption", "model", "mode", "frames", "frame_indices", "timestamps", "duration", "warnings",
               "decoder", "visual_tokens", "rope_factor", "timings", "generated_tokens", "batch_size",
               "subtitle_tokens", "segments", "error", "error_kind", "settings_id"]


def test_caption_and_error_records_have_the_same_documented_fields_in_order():
    assert list(records.CAPTION_FIELDS) == CAPTION_DOC
    answer = {k: f"<{k}>" for k in records.ANSWER_FIELDS}
    caption = records.caption_record("a.mp4", answer, 2, "sid")
    assert list(caption) == CAPTION_DOC
    assert caption["caption"] == "<answer>" and caption["batch_size"] == 2 and caption["error"] is None
    error = records.error_record("b.mp4", RunSettings(model="m"), "sid", ContextOverflowError("too\nlong"))
    assert list(error) == CAPTION_DOC
    assert (error["error"], error["error_kind"], error["frames"], error["caption"]) == ("too", "context_overflow", 0,
                                                                                        None)


def test_error_records_do_not_share_their_empty_lists():
    settings = RunSettings(model="m")
    a = records.error_record("a.mp4", settings, "s", ValueError("x"))
    b = records.error_record("b.mp4", settings, "s", ValueError("x"), kind="input")
    a["warnings"].append("changed")
    assert b["warnings"] == [] and records.CAPTION_FIELDS["warnings"] == []
    assert (a["error_kind"], a["error"], b["error_kind"]) == ("internal", "ValueError: x", "input")


def test_settings_id_hashes_settings_and_prompt_stably():
    sid = records.settings_id({"frames": 4}, "p")
    assert sid == records.settings_id({"frames": 4}, "p") and len(sid) == 16
    assert sid != records.settings_id({"frames": 5}, "p") != records.settings_id({"frames": 4}, "q")
    blob = json.dumps({"settings": {"frames": 4}, "prompt": "p"}, sort_keys=True)
    import hashlib

    assert sid == hashlib.sha256(blob.encode()).hexdigest()[:16]  # resumable across versions: the recipe is fixed
