"""Every JSON record vqa prints or writes, each built here from one list of fields.

- ``ask --json``: ``ask_record`` around an ``answer_record`` (one question), ``answers_record`` with a
  ``question_record`` each (several); a server's text-only answer: ``text_answer_record`` (the same fields);
- ``caption``: ``caption_record`` and ``error_record`` share ``CAPTION_FIELDS`` (an error record has
  every field, empty where nothing is known), identified by ``settings_id``;
- ``frames --json``: ``frames_record``; chat ``/save``: ``transcript``;
- ``transcribe``: ``transcript_record`` and ``transcript_error_record`` share ``TRANSCRIPT_FIELDS``.

The field order is the order users see; docs/output.md and docs/usage.md describe the fields.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from vqa_cli.errors import INTERNAL, bug_text, describe
from vqa_cli.fingerprint import json_sha256
from vqa_cli.model.device import dtype_name

if TYPE_CHECKING:
    from vqa_cli.model.checkpoint import Budget
    from vqa_cli.model.conversation import Turn
    from vqa_cli.model.engine import Answer, Engine
    from vqa_cli.settings import RunSettings
    from vqa_cli.video import Clip

# The clip's part of every record that has one.
CLIP_FIELDS = ("frames", "frame_indices", "timestamps", "duration", "warnings")
# What decoded the clip ("opencv" or "pyav") and its codec; right after ``CLIP_FIELDS`` where a record has them.
DECODER_FIELDS = ("decoder", "codec")

# ``ask --json``, in order; ``PER_ANSWER`` are the ones that differ between several questions.
ANSWER_FIELDS = ("answer", "model", "family", "mode", "mode_settings", *CLIP_FIELDS, *DECODER_FIELDS, "visual_tokens",
                 "pathways", "prompt_tokens", "rope_factor", "generated_tokens", "tokens_per_second", "timings",
                 "device", "quant", "dtype")
PER_ANSWER = ("answer", "generated_tokens", "tokens_per_second", "prompt_tokens")
RUN_FIELDS = tuple(k for k in ANSWER_FIELDS if k not in PER_ANSWER)  # what several answers share

# One caption record per video, the same fields for a caption and an error; the value an error record has.
CAPTION_FIELDS: dict[str, Any] = {
    "video": None, "caption": None, "model": None, "mode": None, "frames": 0, "frame_indices": [], "timestamps": [],
    "duration": None, "warnings": [], "decoder": None, "visual_tokens": None, "rope_factor": None, "timings": {},
    "generated_tokens": 0, "batch_size": None, "subtitle_tokens": 0, "segments": None, "error": None,
    "error_kind": None, "settings_id": None,
}

FRAMES_FIELDS = ("video", *CLIP_FIELDS[:-1], "fps", "total_frames", "header_frames", "header_fps", "seek", "decoded",
                 "damaged", "warnings", *DECODER_FIELDS, "mode", "pathways")


def settings_id(identity: dict, prompt: str) -> str:
    """A short stable hash of everything that decides a caption (``RunSettings.identity`` and the prompt)."""
    return json_sha256({"settings": identity, "prompt": prompt}, length=16)


def clip_fields(clip: Clip) -> dict:
    """What every record says about the sampled frames of ``clip`` (a ``video.Clip``)."""
    return {"frames": len(clip.indices), "frame_indices": clip.indices, "timestamps": clip.timestamps,
            "duration": clip.duration, "warnings": list(clip.warnings), "decoder": clip.decoder, "codec": clip.codec}


def _run_fields(engine: Engine, clip: Clip, budget: Budget, timings: dict[str, float]) -> dict:
    """The ``ask --json`` fields every answer about ``clip`` shares: model, mode, frames, tokens, placement."""
    settings, loaded = engine.settings, engine.loaded
    return {
        "model": settings.model,
        "family": engine.checkpoint.adapter.name,
        "mode": settings.mode.name,
        "mode_settings": engine.resolved_mode(clip).to_dict(),
        **clip_fields(clip),
        "visual_tokens": budget.plan.total,
        "pathways": [p.to_dict() for p in budget.plan.pathways],
        "rope_factor": engine.rope_factor,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "device": loaded.device,
        "quant": loaded.quant,
        "dtype": dtype_name(loaded.dtype),
    }


def answer_record(engine: Engine, clip: Clip, budget: Budget, *, answer: str, tokens: int, tokens_per_second: float,
                  timings: dict[str, float]) -> dict:
    """The ``ask --json`` fields of one answer (``ANSWER_FIELDS``) by ``engine`` about ``clip``."""
    values = {**_run_fields(engine, clip, budget, timings), "answer": answer, "prompt_tokens": budget.prompt_tokens,
              "generated_tokens": tokens, "tokens_per_second": round(tokens_per_second, 3)}
    return {k: values[k] for k in ANSWER_FIELDS}


def answer_of(engine: Engine, answer: Answer) -> dict:
    """``answer_record`` of an ``Engine.answer``'s ``Answer``."""
    return answer_record(engine, answer.clip, answer.budget, answer=answer.text, tokens=answer.tokens,
                         tokens_per_second=answer.tokens_per_second, timings=answer.timings)


def text_answer_record(engine: Engine, *, answer: str, prompt_tokens: int, tokens: int, tokens_per_second: float,
                       timings: dict[str, float]) -> dict:
    """``answer_record``'s fields, in its order, for an answer without a video (a text-only chat turn on the
    server): no mode, no frames (``frames`` 0, ``decoder`` None), no visual tokens."""
    loaded = engine.loaded
    values = {"answer": answer, "model": engine.settings.model, "family": engine.checkpoint.adapter.name,
              "mode": None, "mode_settings": None, "frames": 0, "frame_indices": [], "timestamps": [],
              "duration": None, "warnings": [], "decoder": None, "codec": None, "visual_tokens": 0, "pathways": [],
              "prompt_tokens": prompt_tokens, "rope_factor": engine.rope_factor, "generated_tokens": tokens,
              "tokens_per_second": round(tokens_per_second, 3), "timings": {k: round(v, 4) for k, v in timings.items()},
              "device": loaded.device, "quant": loaded.quant, "dtype": dtype_name(loaded.dtype)}
    return {k: values[k] for k in ANSWER_FIELDS}


def ask_record(video: str, question: str, answer: dict) -> dict:
    """``ask --json`` with one question: ``answer`` is its ``answer_record``."""
    return {"video": video, "question": question, **answer}


def run_fields(engine: Engine, clip: Clip, budget: Budget, timings: dict[str, float]) -> dict:
    """The ``RUN_FIELDS`` of answers by ``engine`` about ``clip``."""
    return _run_fields(engine, clip, budget, timings)


def answers_record(video: str, answers: list[dict], shared: dict) -> dict:
    """``ask --json`` with several questions: the per-question ``answers``, then the ``RUN_FIELDS`` they share
    (from ``run_fields``, or a server's answer record)."""
    return {"video": video, "answers": answers, **{k: shared[k] for k in RUN_FIELDS}}


def question_record(question: str, answer: str, *, tokens: int, tokens_per_second: float, fed: int,
                    first_token: float, generate: float) -> dict:
    """One of several questions' answers in ``ask --json``; ``fed``: prompt tokens it had to prefill."""
    return {"question": question, "answer": answer, "generated_tokens": tokens,
            "tokens_per_second": round(tokens_per_second, 3), "prompt_tokens_fed": fed,
            "timings": {"first_token": round(first_token, 4), "generate": round(generate, 4)}}


def turn_record(turn: Turn) -> dict:
    """``question_record`` of a ``conversation.Turn``."""
    gen = turn.generation
    return question_record(turn.question, turn.answer, tokens=gen.tokens, tokens_per_second=gen.tokens_per_second,
                           fed=turn.fed_tokens, first_token=gen.first_token, generate=gen.total)


def caption_record(video: str, answer: dict, batch_size: int, sid: str) -> dict:
    """A caption: ``answer`` is an ``answer_record`` of the caption prompt."""
    values = {"subtitle_tokens": 0, "segments": None, **answer, "video": video, "caption": answer["answer"],
              "batch_size": batch_size, "error": None, "error_kind": None, "settings_id": sid}
    return {k: values[k] for k in CAPTION_FIELDS}


def error_record(video: str, settings: RunSettings, sid: str, exc: BaseException, kind: str | None = None) -> dict:
    """A video (or an input folder, ``kind="input"``) that got no caption: every field, empty, and the error."""
    known = describe(exc)
    empty = json.loads(json.dumps(CAPTION_FIELDS))  # fresh lists and dicts for every record
    return {**empty, "video": video, "model": settings.model, "mode": settings.mode.name,
            "error": known[2] if known else bug_text(exc),
            "error_kind": kind or (known[1] if known else INTERNAL), "settings_id": sid}


def frames_record(video: str, clip: Clip, mode: str, pathways: list[dict]) -> dict:
    """``vqa frames --json``: the sampled frames, what was learnt about the file, and each pathway's frames."""
    values = {**clip_fields(clip), "video": video, "fps": clip.fps, "total_frames": clip.frames_from_content,
              "header_frames": clip.frames_from_header, "header_fps": clip.fps_from_header, "seek": clip.seek,
              "decoded": clip.decoded, "damaged": clip.damaged, "warnings": clip.warnings, "mode": mode,
              "pathways": pathways}
    return {k: values[k] for k in FRAMES_FIELDS}


def transcript(video: str, settings: RunSettings, clip: Clip, turns: list[dict]) -> dict:
    """What chat ``/save`` writes: the clip's frames and the turns so far."""
    return {"video": video, "model": settings.model, "mode": settings.mode.name, "frame_indices": clip.indices,
            "timestamps": clip.timestamps, "turns": turns}


# ``vqa transcribe``: one record per video, the same fields for a transcript and an error (``record_kind``:
# ``transcript`` marks them); each segment ``{start, end, text}`` and, with ``--words``, its ``words``.
TRANSCRIPT_FIELDS: dict[str, Any] = {
    "video": None, "transcript": None, "segments": [], "model": None, "language": None, "start": None, "end": None,
    "seconds": None, "error": None, "error_kind": None, "settings_id": None,
}


def transcript_record(video: str, segments: list, *, model: str, language: str | None, start: float | None,
                      end: float | None, seconds: float, sid: str) -> dict:
    """A video's speech: ``segments`` are ``model.speech.Segment``s (start, end, text, words)."""
    rows = [{"start": s.start, "end": s.end, "text": s.text,
             **({"words": [{"start": w.start, "end": w.end, "text": w.text} for w in s.words]} if s.words else {})}
            for s in segments]
    values = {"video": video, "transcript": " ".join(s.text for s in segments), "segments": rows, "model": model,
              "language": language, "start": start, "end": end, "seconds": round(seconds, 3), "error": None,
              "error_kind": None, "settings_id": sid}
    return {k: values[k] for k in TRANSCRIPT_FIELDS}


def transcript_error_record(video: str, model: str, sid: str, exc: BaseException) -> dict:
    """A video that got no transcript: every field, empty, and the error."""
    known = describe(exc)
    empty = json.loads(json.dumps(TRANSCRIPT_FIELDS))
    return {**empty, "video": video, "model": model, "error": known[2] if known else bug_text(exc),
            "error_kind": known[1] if known else INTERNAL, "settings_id": sid}
