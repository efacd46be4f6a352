"""Benchmark annotation rows -> ``Item`` (one multiple-choice question), each format's fields as published.

Every reader returns items whose ``options`` are the option texts without their letters and whose
``answer`` is the index of the right one; the letters (A, B, ...) are the prompt's business.
Field names are each benchmark's own (see docs/eval.md for the sources). ``_files`` reads the files
(JSON, JSON Lines, CSV, parquet, folders of them) into rows; a row that cannot be scored (no answer,
an open-ended task, an answer that is not among its options) raises ``LeftOut`` and is counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from vqa_cli.errors import UsageError
from vqa_cli.jobs.eval._layout import MVBENCH_FRAME_FPS, mlvu_location, mvbench_location

Format = Literal["mvbench", "videomme", "egoschema", "nextqa", "perceptiontest", "longvideobench", "mlvu",
                 "tempcompass", "jsonl"]
FormatChoice = Literal["auto", "mvbench", "videomme", "egoschema", "nextqa", "perceptiontest", "longvideobench", "mlvu",
                       "tempcompass", "jsonl"]  # --format: a format, or auto (told from the file)
LETTERS = "ABCDEFGHIJ"
_LETTERED = re.compile(r"^\(?([A-J])[.):]\s*(.*)$", re.S)  # "A. text", "(A) text", "A) text"
# TempCompass's task files that are not lettered multiple choice (yes/no, caption matching, captioning)
TEMPCOMPASS_NOT_MC = ("yes_no", "caption_matching", "captioning")


class LeftOut(Exception):
    """A row that is not a question vqa can score; ``reason`` is the summary's ``left_out`` key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Context:
    """What a row's reading needs besides the row: its file's stem (MVBench's and MLVU's task), NExT-QA's
    video map, EgoSchema's answers, Perception Test's cut frames (``{video_id: frame}``)."""

    task: str = ""
    video_map: dict[str, str] | None = None
    answers: dict[str, Any] | None = None
    cuts: dict[str, int] | None = None


@dataclass(frozen=True)
class Item:
    """One question: ``video`` is the file name in the annotations (resolved against --videos later)."""

    qid: str
    video: str
    question: str
    options: tuple[str, ...]
    answer: int  # index into options
    category: str = ""
    task: str = ""
    duration: str = ""  # a benchmark's duration group (Video-MME short/medium/long), "" if none
    start: float | None = None
    end: float | None = None
    extra: dict = field(default_factory=dict, compare=False)
    location: str = ""  # where the benchmark's layout puts the video under its root ("" = ``video``)
    frame_rate: float | None = None  # the video is a folder of numbered frames at this rate (MVBench's tvqa)

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]


def strip_letter(option: str) -> str:
    """``"A. text"`` / ``"(A) text"`` -> ``"text"``; other strings unchanged."""
    m = _LETTERED.match(option.strip())
    return m.group(2).strip() if m else option.strip()


def _letter_index(value: Any, n: int, where: str) -> int:
    """An answer given as a letter (``"B"``, ``"(B)"``, ``"B. text"``) or an index (``1``, ``"1"``)."""
    text = str(value).strip()
    if text.isdigit() and int(text) < n:
        return int(text)
    m = _LETTERED.match(text) or re.match(r"^\(?([A-J])\)?$", text)
    if m and LETTERS.index(m.group(1)) < n:
        return LETTERS.index(m.group(1))
    raise UsageError(f"{where}: answer {value!r} is not one of the {n} options")


def _options_inline(question: str) -> tuple[str, tuple[str, ...]]:
    """MLVU and TempCompass put the options inside the question: split them off (lines ``(A) ...``/``A. ...``)."""
    lines = question.split("\n")
    head, opts = [], []
    for line in lines:
        m = _LETTERED.match(line.strip())
        if m and m.group(1) == LETTERS[len(opts)]:
            opts.append(m.group(2).strip())
        elif not opts:
            head.append(line)
    stem = "\n".join(head).strip()
    stem = re.sub(r"\s*Options?:\s*$", "", stem)
    return stem, tuple(opts)


def row_items(fmt: Format, rows: list[dict], source: str, ctx: Context, left_out: dict[str, int]) -> list[Item]:
    """The items of one file's rows; rows that cannot be scored are counted in ``left_out`` by reason."""
    items: list[Item] = []
    for i, r in enumerate(rows):
        where = f"{source} item {i}"
        try:
            items.append(_item(fmt, r, i, ctx, where))
        except LeftOut as out:
            left_out[out.reason] = left_out.get(out.reason, 0) + 1
        except KeyError as exc:
            raise UsageError(f"{where}: no field {exc.args[0]!r} (is this a {fmt} file?)") from None
    return items


def _unanswered(value: Any) -> bool:
    """A published "no answer here": missing, empty, LongVideoBench test's ``-1``/``"@"``."""
    return value is None or str(value).strip() in ("", "-1", "@")


def _item(fmt: Format, r: dict, i: int, ctx: Context, where: str) -> Item:
    task = ctx.task
    if fmt == "mvbench":
        options = tuple(str(c) for c in r["candidates"])
        if r["answer"] not in options:
            raise LeftOut("answer_not_in_options")
        location, frames = mvbench_location(task, str(r["video"]))
        return Item(f"{task}/{i}", str(r["video"]), r["question"], options, options.index(r["answer"]),
                    category=task, task=task, start=_float(r.get("start")), end=_float(r.get("end")),
                    location=location, frame_rate=float(r.get("fps") or MVBENCH_FRAME_FPS) if frames else None)
    if fmt == "videomme":
        options = tuple(strip_letter(o) for o in r["options"])
        if _unanswered(r.get("answer")):
            raise LeftOut("no_answer")
        return Item(str(r.get("question_id") or f"{r['videoID']}-{i}"), r["videoID"], r["question"], options,
                    _letter_index(r["answer"], len(options), where), category=r.get("task_type") or "",
                    task=r.get("domain") or "", duration=r.get("duration") or "",
                    extra={"options_as_given": list(r["options"])})
    if fmt == "egoschema":
        # questions.json: q_uid, question, "option 0".."option 4" and no answer (those are in subset_answers.json,
        # ctx.answers); lmms-eval's export: video_idx, question_idx, option (list), answer.
        opts = r["option"] if "option" in r else [r[f"option {k}"] for k in range(5)]
        options = tuple(strip_letter(o) for o in opts)
        video = str(r.get("video_idx") or r["q_uid"])
        answer = r["answer"] if "answer" in r else (ctx.answers or {}).get(str(r.get("q_uid")))
        if _unanswered(answer):
            raise LeftOut("no_answer")
        return Item(str(r.get("q_uid") or r.get("question_idx") or video), video, r["question"], options,
                    _letter_index(answer, len(options), where))
    if fmt == "nextqa":
        # val.csv: every field a string; `video` digits (kept as text), `answer` the index into a0..a4.
        options = tuple(str(r[f"a{k}"]) for k in range(5) if f"a{k}" in r)
        video = str(r["video"])
        qid = r.get("qid")
        location = (ctx.video_map or {}).get(video, "")
        return Item(f"{video}-{qid if qid not in (None, '') else i}", video, r["question"], options,
                    _letter_index(r["answer"], len(options), where), category=str(r.get("type", "")),
                    location=location)
    if fmt == "perceptiontest":
        # mc_question_*.json: {video_id: {"metadata": ..., "mc_question": [{id, question, options, answer_id,
        # area, reasoning, tag}]}} (rows carry the video id as `_key`, its metadata's frame_rate as `_fps`);
        # lmms-lab's export: video_name, question_id. A video in cut_frame_mapping ends before that frame (the
        # cup-game and stability videos, whose end would show the answer).
        options = tuple(str(o) for o in r["options"])
        if _unanswered(r.get("answer_id")):
            raise LeftOut("no_answer")
        video = str(r.get("video_name") or r["_key"])
        qid = r.get("question_id") or (f"{video}-{r['id']}" if r.get("id") is not None else f"{video}-{i}")
        cut = (ctx.cuts or {}).get(video)
        if cut is not None and not r.get("_fps"):
            raise UsageError(f"{where}: {video} is cut at frame {cut} but its metadata has no frame_rate")
        return Item(str(qid), video, r["question"], options, _letter_index(r["answer_id"], len(options), where),
                    category=str(r.get("area") or ""), task=str(r.get("reasoning") or ""),
                    end=None if cut is None else int(cut) / float(r["_fps"]))
    if fmt == "longvideobench":
        # lvb_val.json: `candidates` (3-5) and `correct_choice` (index); its parquet: option0..4 padded "N/A".
        if "candidates" in r:
            options = tuple(str(c) for c in r["candidates"])
        else:
            options = tuple(str(r[f"option{k}"]) for k in range(5) if r.get(f"option{k}") not in (None, "N/A"))
        answer = r.get("correct_choice")
        if _unanswered(answer):
            raise LeftOut("no_answer")
        return Item(str(r.get("id") or i), r["video_path"], r["question"], options,
                    _letter_index(answer, len(options), where), category=str(r.get("question_category", "")),
                    duration=str(r.get("duration_group", "")))
    if fmt == "mlvu":
        # MLVU's own JSON: the bare question, `candidates`, the answer as text (tasks 8 and 9 are open-ended:
        # no candidates). lmms-eval's sy1998/MLVU_dev: the question with "(A) x" lines inside (kept as given for
        # that protocol), `candidates`, the answer a letter.
        stem, options = _options_inline(r["question"])
        extra = {"question_as_given": r["question"]} if options else {}
        if not options and "candidates" not in r:
            raise LeftOut("open_ended")
        own = not options
        if "candidates" in r:
            stem = stem if options else r["question"]
            options = tuple(str(c) for c in r["candidates"])
        if r["answer"] in options:
            answer = options.index(r["answer"])
        elif own:  # MLVU's 2_needle has answers that are not among their candidates
            raise LeftOut("answer_not_in_options")
        else:
            answer = _letter_index(r["answer"], len(options), where)
        video = r["video_name"] if "video_name" in r else r["video"]
        return Item(str(r.get("question_id") or f"{task}/{i}"), video, stem, options, answer,
                    category=str(r.get("task_type") or r.get("question_type") or task), task=task, extra=extra,
                    location=mlvu_location(task, video) if own and task else "")
    if fmt == "tempcompass":
        if task in TEMPCOMPASS_NOT_MC:
            raise LeftOut("not_multiple_choice")
        stem, options = _options_inline(r["question"])
        if not options:
            raise LeftOut("not_multiple_choice")
        ans = str(r["answer"])
        spelt = [(o, f"{LETTERS[k]}. {o}", f"({LETTERS[k]}) {o}") for k, o in enumerate(options)]
        index = next((k for k, forms in enumerate(spelt) if ans.strip() in forms), None)
        video = r.get("video_id") or r["_key"]
        return Item(f"{video}-{r.get('dim', task)}-{i}", video, stem, options,
                    index if index is not None else _letter_index(ans, len(options), where),
                    category=str(r.get("dim", task)), extra={"question_as_given": r["question"]})
    # generic jsonl
    options = tuple(strip_letter(str(o)) for o in r["options"])
    ans = r["answer"]
    if isinstance(ans, str) and ans.strip() in options:
        answer = options.index(ans.strip())
    else:
        answer = _letter_index(ans, len(options), where)
    return Item(str(r.get("id", i)), r["video"], r["question"], options, answer, category=str(r.get("category", "")),
                start=_float(r.get("start")), end=_float(r.get("end")))


def _float(v: Any) -> float | None:
    return None if v in (None, "") else float(v)
