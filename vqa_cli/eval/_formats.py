"""Benchmark annotation files -> ``Item`` (one multiple-choice question), each format read as published.

Every reader returns items whose ``options`` are the option texts without their letters and whose
``answer`` is the index of the right one; the letters (A, B, ...) are the prompt's business.
Field names are each benchmark's own (see docs/eval.md for the sources).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vqa_cli.errors import InputNotFoundError, UsageError

Format = Literal["mvbench", "videomme", "egoschema", "nextqa", "perceptiontest", "longvideobench", "mlvu",
                 "tempcompass", "jsonl"]
LETTERS = "ABCDEFGHIJ"
_LETTERED = re.compile(r"^\(?([A-J])[.):]\s*(.*)$", re.S)  # "A. text", "(A) text", "A) text"


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


def _load(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if path.suffix == ".parquet":
        raise UsageError(f"{path}: parquet annotations are not read; export them to JSON or JSON Lines")
    data = json.loads(text)
    if isinstance(data, dict):  # {video: row}, {video: [rows]} or TempCompass's {video: {dim: [rows]}}
        rows = []
        for key, value in data.items():
            if isinstance(value, list):
                rows.extend({"_key": key, **row} for row in value)
            elif isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
                rows.extend({"_key": key, "dim": dim, **row} for dim, rs in value.items() for row in rs)
            elif isinstance(value, dict):
                rows.append({"_key": key, **value})
        return rows
    return data


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


def _row_items(fmt: Format, rows: list[dict], source: Path) -> list[Item]:
    items: list[Item] = []
    task = source.stem
    for i, r in enumerate(rows):
        where = f"{source} item {i}"
        try:
            items.append(_item(fmt, r, i, task, where))
        except KeyError as exc:
            raise UsageError(f"{where}: no field {exc.args[0]!r} (is this a {fmt} file?)") from None
    return items


def _item(fmt: Format, r: dict, i: int, task: str, where: str) -> Item:
    if fmt == "mvbench":
        options = tuple(str(c) for c in r["candidates"])
        if r["answer"] not in options:
            raise UsageError(f"{where}: the answer {r['answer']!r} is not among the candidates")
        return Item(f"{task}/{i}", r["video"], r["question"], options, options.index(r["answer"]), category=task,
                    task=task, start=_float(r.get("start")), end=_float(r.get("end")))
    if fmt == "videomme":
        options = tuple(strip_letter(o) for o in r["options"])
        return Item(str(r.get("question_id") or f"{r['videoID']}-{i}"), r["videoID"], r["question"], options,
                    _letter_index(r["answer"], len(options), where), category=r.get("task_type", ""),
                    task=r.get("domain", ""), duration=r.get("duration", ""),
                    extra={"options_as_given": list(r["options"])})
    if fmt == "egoschema":
        opts = r["option"] if "option" in r else [r[f"option {k}"] for k in range(5)]
        options = tuple(strip_letter(o) for o in opts)
        video = r.get("video_idx") or r["q_uid"]
        return Item(str(r.get("q_uid") or r.get("question_idx") or video), video, r["question"], options,
                    _letter_index(r["answer"], len(options), where))
    if fmt == "nextqa":
        options = tuple(str(r[f"a{k}"]) for k in range(5) if f"a{k}" in r)
        return Item(str(r.get("qid") and f"{r['video']}-{r['qid']}" or f"{r['video']}-{i}"), str(r["video"]),
                    r["question"], options, int(r["answer"]), category=str(r.get("type", "")))
    if fmt == "perceptiontest":
        options = tuple(str(o) for o in r["options"])
        return Item(str(r.get("question_id") or f"{r['video_name']}-{i}"), r["video_name"], r["question"], options,
                    int(r["answer_id"]), category=str(r.get("area", "")), task=str(r.get("reasoning", "")))
    if fmt == "longvideobench":
        options = tuple(str(r[f"option{k}"]) for k in range(5) if r.get(f"option{k}") not in (None, "N/A"))
        answer = r["correct_choice"]
        return Item(str(r.get("id") or i), r["video_path"], r["question"], options,
                    _letter_index(answer, len(options), where), category=str(r.get("question_category", "")),
                    duration=str(r.get("duration_group", "")))
    if fmt == "mlvu":
        # MLVU's own JSON: the bare question, `candidates`, the answer as text. lmms-eval's sy1998/MLVU_dev: the
        # question with "(A) x" lines inside (kept as given for that protocol), `candidates`, the answer a letter.
        stem, options = _options_inline(r["question"])
        extra = {"question_as_given": r["question"]} if options else {}
        if "candidates" in r:
            stem = stem if options else r["question"]
            options = tuple(str(c) for c in r["candidates"])
        answer = options.index(r["answer"]) if r["answer"] in options else _letter_index(r["answer"], len(options),
                                                                                         where)
        return Item(str(r.get("question_id") or f"{task}/{i}"), r["video_name"] if "video_name" in r
                    else r["video"], stem, options, answer, category=str(r.get("task_type") or r.get("question_type")
                                                                          or task), task=task, extra=extra)
    if fmt == "tempcompass":
        stem, options = _options_inline(r["question"])
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


def read_items(path: str, fmt: Format) -> list[Item]:
    """Every item of an annotation file or of a folder of them (``*.json``/``*.jsonl``, sorted by name)."""
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"no such annotation file or folder: {path!r}")
    files = sorted(f for f in p.iterdir() if f.suffix in (".json", ".jsonl")) if p.is_dir() else [p]
    if not files:
        raise UsageError(f"no .json or .jsonl annotation files in {path!r}")
    items: list[Item] = []
    for f in files:
        try:
            rows = _load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{f}: not JSON ({exc})") from None
        if not isinstance(rows, list):
            raise UsageError(f"{f}: expected a list of questions")
        items.extend(_row_items(fmt, rows, f))
    ids = [it.qid for it in items]
    if len(set(ids)) != len(ids):
        dup = next(q for q in ids if ids.count(q) > 1)
        raise UsageError(f"question id {dup!r} appears twice in {path!r}")
    for it in items:
        if len(it.options) < 2:
            raise UsageError(f"question {it.qid!r} has fewer than two options")
    return items


VIDEO_SUFFIXES = ("", ".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")


def resolve_video(videos: str, name: str) -> str:
    """The file of ``name`` under ``--videos`` (the annotations often leave the extension out)."""
    base = Path(videos)
    for suffix in VIDEO_SUFFIXES:
        candidate = base / f"{name}{suffix}"
        if candidate.is_file():
            return str(candidate)
    return str(base / name)
