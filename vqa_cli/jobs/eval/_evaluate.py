"""``vqa eval``'s answering: questions grouped by clip, each clip decoded once (per frame count its modes need,
ahead on the harness's worker threads), encoded once; every mode aggregates the same vision features,
prefills the shared prompt prefix once (``conversation.Conversation``) and asks each question with the cache
cropped back after it. ``GroupAnswerer.run`` is the loop both answerers share (``_remote``: a server's).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vqa_cli import console
from vqa_cli.errors import INTERNAL, NoAudioError, bug_text, describe
from vqa_cli.jobs.eval._formats import Format, Item
from vqa_cli.jobs.eval._layout import VideoFinder
from vqa_cli.jobs.eval._prompts import Protocol, answer_prefix, build
from vqa_cli.jobs.eval._score import Score, Scored, by_generation, by_likelihood
from vqa_cli.jobs.harness import RunAhead, Sink, StopFlag, model_threads
from vqa_cli.model import reduction
from vqa_cli.settings import DEFAULT_WORKERS

if TYPE_CHECKING:
    import torch

    from vqa_cli.model.conversation import Conversation
    from vqa_cli.model.engine import Engine
    from vqa_cli.settings import RunSettings
    from vqa_cli.video import Clip

    # frame count -> (clip, pixels, timings), or the exception decoding raised
    Decoded = dict[int, tuple[Clip, torch.Tensor, dict] | Exception]


@dataclass(frozen=True)
class Group:
    """The questions about one clip: a video file (or a folder of numbered frames at ``frame_rate``) and its
    bounds."""

    path: str
    start: float | None
    end: float | None
    items: tuple[Item, ...]
    frame_rate: float | None = None


def group_items(items: list[Item], videos: str | VideoFinder, start: float | None = None,
                end: float | None = None) -> list[Group]:
    """Questions grouped by (video, bounds), in the order the clips first appear; an item's own bounds win.
    ``videos``: the ``--videos`` folder (searched as ``VideoFinder`` does)."""
    finder = videos if isinstance(videos, VideoFinder) else VideoFinder(videos)
    groups: OrderedDict[tuple, list[Item]] = OrderedDict()
    for it in items:
        key = (finder.find(it), it.start if it.start is not None else start,
               it.end if it.end is not None else end)
        groups.setdefault(key, []).append(it)
    return [Group(p, s, e, tuple(its), its[0].frame_rate) for (p, s, e), its in groups.items()]


def question_record(item: Item, group: Group, settings: RunSettings, sid: str, fmt: Format, protocol: Protocol,
                    score: Score, scored: Scored | None, *, frames: int = 0, timings: dict | None = None,
                    error: BaseException | None = None, transcript: bool = False) -> dict:
    """One JSON Lines record per question (an error record has every field, empty where nothing is known);
    ``transcript``: its subtitles were the transcript of the video's speech (no subtitle file)."""
    known = describe(error) if error is not None else None
    return {
        "video": group.path, "qid": item.qid, "question": item.question, "options": list(item.options),
        "answer": item.answer_letter, "prediction": scored.prediction if scored else None,
        "raw_answer": scored.raw if scored else None,
        "correct": bool(scored and scored.prediction == item.answer_letter),
        "unparsed": bool(scored and scored.unparsed), "guessed": bool(scored and scored.guessed),
        "counted": bool(scored and scored.counted), "letter_logprobs": scored.logprobs if scored else None,
        "category": item.category, "task": item.task, "duration": item.duration, "start": group.start,
        "end": group.end, "format": fmt, "protocol": protocol, "score": score, "model": settings.model,
        "mode": settings.mode.name, "reduction": reduction.described(settings.mode),
        "frames": frames, "timings": {k: round(v, 4) for k, v in (timings or {}).items()},
        "error": None if error is None else (known[2] if known else bug_text(error)),
        "error_kind": None if error is None else (known[1] if known else INTERNAL), "settings_id": sid,
        "transcript": transcript,
    }


class GroupAnswerer:
    """What both answerers share: the questions still open, and the run over the groups (``prepare`` on the
    harness's worker threads, ahead; ``answer_group`` on this one, in order)."""

    settings: list[RunSettings]
    sids: list[str]
    done: set[tuple[str, str]]
    workers: int = 1
    window: int = 1
    niced: bool = False

    def todo(self, group: Group, m: int) -> list[Item]:
        return [it for it in group.items if (self.sids[m], it.qid) not in self.done]

    def prepare(self, group: Group) -> object:
        """A worker's share for ``group`` (nothing by default)."""
        return None

    def answer_group(self, group: Group, prepared: object) -> Iterator[dict]:
        raise NotImplementedError

    def threads(self) -> object:
        """The context the answering runs in (``model_threads`` for a model on this machine)."""
        from contextlib import nullcontext

        return nullcontext()

    def run(self, groups: list[Group], sink: Sink, progress: Callable[[], None] | None = None,
            stop: StopFlag | None = None) -> int:
        """Prepare ahead on worker threads while the answers are made; how many records were written."""
        groups = [g for g in groups if any(self.todo(g, m) for m in range(len(self.settings)))]
        written = 0
        with (RunAhead(groups, self.prepare, workers=self.workers, window=self.window, niced=self.niced) as ahead,
              self.threads()):
            while ahead and not (stop and stop.stop):
                group, prepared = ahead.take()
                for rec in self.answer_group(group, prepared):
                    sink.write(rec)
                    written += 1
                    if rec["error"] is not None:
                        console.info(f"{rec['video']} ({rec['qid']}): {rec['error']}")
                if progress is not None:
                    progress()
        return written


def _decode(group: Group, settings: RunSettings, frames: int, engine: Engine
            ) -> tuple[Clip, torch.Tensor | None, dict]:
    if group.frame_rate is None:
        window = replace(settings, start=group.start, end=group.end)
        prepared = engine.prepare_clip(group.path, frames, settings=window, timeout=600.0)
        return prepared.clip, prepared.pixels, prepared.timings
    # A folder of numbered frames (MVBench's episodic_reasoning).
    from vqa_cli.video._frames_dir import sample_frame_folder

    began = time.perf_counter()
    count = {"fps": settings.fps, "max_frames": frames} if settings.fps else {"num_frames": frames}
    clip = sample_frame_folder(group.path, start=group.start, end=group.end, timeout=600.0,
                               rate=group.frame_rate, **count)
    seconds = time.perf_counter() - began
    prepared = engine.prepare_clip(clip, frames)
    return clip, prepared.pixels, {"decode": seconds, **prepared.timings}


def prefixed_conversation(view: Engine, clip: Clip, features: torch.Tensor, prefix: str) -> Conversation:
    """A ``conversation.Conversation`` whose every prompt ends with ``prefix``'s tokens after the assistant
    header (the answer prefix some protocols prefill), or a plain one when ``prefix`` is empty."""
    from vqa_cli.model.conversation import Conversation

    extra = view.checkpoint.tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
    return Conversation(view, clip, features, answer_prefix=extra)


class Evaluator(GroupAnswerer):
    """Answers the questions of clip groups in one or several modes over one model loaded here."""

    niced = True

    def __init__(self, engine: Engine, mode_settings: list[RunSettings], fmt: Format, protocol: Protocol,
                 score: Score, sids: list[str], done: set[tuple[str, str]] | None = None,
                 workers: int = DEFAULT_WORKERS) -> None:
        self.fmt, self.protocol, self.score, self.sids = fmt, protocol, score, sids
        self.done = done or set()
        self.workers, self.window = workers, workers + 1
        tokens = 1 if score == "likelihood" else None
        self.views = [engine.with_settings(replace(s, max_new_tokens=tokens or s.max_new_tokens))
                      for s in mode_settings]
        self.frames = [engine.checkpoint.frames_for(s) for s in mode_settings]
        self.settings = mode_settings

    def threads(self) -> object:
        return model_threads(self.views[0])  # as in caption: a model on the CPU leaves the decoders a core

    def prepare(self, group: Group) -> Decoded:
        """The clip at every frame count the modes need (or the exception decoding it raised)."""
        decoded: Decoded = {}
        for n in sorted(set(self.frames)):
            try:
                decoded[n] = _decode(group, self.settings[0], n, self.views[0])
            except Exception as exc:
                decoded[n] = exc
        return decoded

    def subtitles(self, view: Engine, group: Group, clip: Clip) -> tuple[str, bool]:
        """The cues on screen at the clip's sampled frames, under Video-MME's header ("" without ``--subtitles``),
        and whether they are the transcript of its speech (``--subtitles asr``, or ``--asr auto`` where the video has
        no subtitle file)."""
        settings = view.settings
        choice = settings.subtitles
        if choice == "off":
            return "", False
        from vqa_cli.jobs.eval._prompts import VIDEOMME_SUBTITLES
        from vqa_cli.jobs.segments import token_counter
        from vqa_cli.output import subtitles

        if choice != "asr":  # the video's subtitle file; without one, the transcript under --asr auto, else none
            if Path(choice).is_dir():  # a folder of VIDEO.srt / VIDEO.vtt files, as Video-MME ships them
                named = [Path(choice) / f"{Path(group.path).stem}{ext}" for ext in (".srt", ".vtt")]
                file = next((path for path in named if path.is_file()), None)
            else:
                file = subtitles.find_sidecar(group.path) if choice == "auto" else Path(choice)
            choice = str(file) if file else "asr" if settings.asr == "auto" else "off"
        if choice == "asr" and group.frame_rate is not None:  # a folder of frames has no sound
            return "", False
        try:
            text, _ = subtitles.context(group.path, choice, clip.timestamps, token_counter(view),
                                        header=VIDEOMME_SUBTITLES, encoding=settings.subtitle_encoding,
                                        run=replace(settings, start=group.start, end=group.end))
        except NoAudioError:  # --asr auto: a video without sound has no transcript (--subtitles asr: an error)
            if settings.subtitles == "asr" or settings.speech.audio_stream is not None:
                raise
            return "", False
        return text, choice == "asr"

    def answer_group(self, group: Group, decoded: Decoded) -> Iterator[dict]:
        """Records of ``group``'s open questions in every mode; ``decoded``: frame count -> (clip, pixels, timings)
        or the exception decoding raised."""
        encoded: dict[int, object] = {}
        for m, view in enumerate(self.views):
            items = self.todo(group, m)
            if not items:
                continue
            n = self.frames[m]
            try:
                got = decoded[n]
                if isinstance(got, BaseException):
                    raise got
                clip, pixels, timings = got
                timings = dict(timings)
                if n not in encoded and pixels is not None:  # None: a still image on the image path
                    started = time.perf_counter()
                    encoded[n] = view.encode(pixels)
                    timings["encode"] = time.perf_counter() - started
                context, heard = self.subtitles(view, group, clip)
                prompts = [build(it, self.fmt, self.protocol, context) for it in items]
                _, features = view.budgeted_tokens(clip, max(prompts, key=len), timings, frames=encoded.get(n))
                conversation = prefixed_conversation(view, clip, features, answer_prefix(self.fmt, self.protocol))
                started = time.perf_counter()
                conversation.prefill()
                timings["prefill"] = time.perf_counter() - started
            except Exception as exc:  # a clip that fails: every question about it gets an error record
                for it in items:
                    yield question_record(it, group, self.settings[m], self.sids[m], self.fmt, self.protocol,
                                          self.score, None, error=exc)
                continue
            for it, text in zip(items, prompts, strict=True):
                started = time.perf_counter()
                try:
                    turn = conversation.ask(text, keep=False, first_logits=self.score == "likelihood")
                except Exception as exc:
                    yield question_record(it, group, self.settings[m], self.sids[m], self.fmt, self.protocol,
                                          self.score, None, error=exc)
                    continue
                if self.score == "likelihood":
                    scored = by_likelihood(turn.first_logits, view.checkpoint.tokenizer, it)
                else:
                    read = answer_prefix(self.fmt, self.protocol)[-1:] + turn.answer.strip()  # "(" + "A) ..."
                    scored = by_generation(read, it, self.fmt, self.protocol)
                yield question_record(it, group, self.settings[m], self.sids[m], self.fmt, self.protocol, self.score,
                                      scored, frames=len(clip.indices),
                                      timings={**timings, "answer": time.perf_counter() - started}, transcript=heard)
                timings = {}  # the shared stages are counted on a clip's first question only
