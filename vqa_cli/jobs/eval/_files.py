"""Benchmark annotation files as their authors publish them -> ``Benchmark`` (items, the files read, counts).

Reads JSON (lists, and the objects keyed by video of Perception Test and TempCompass), JSON Lines, CSV
(NExT-QA's ``val.csv``) and parquet (Video-MME's; through the optional ``pyarrow``), a file or a folder of
per-task files (MVBench's ``json/``, MLVU's ``MLVU/json/``, TempCompass's ``questions/``). ``--format auto``
tells the benchmark from the file's columns, keys and shape. Companion files are found beside the
annotations or named with an option: EgoSchema's answers (``subset_answers.json``, ``--answers``) and
NExT-QA's video map (``map_vid_vidorID.json``, ``--video-map``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqa_cli.errors import InputNotFoundError, UsageError
from vqa_cli.jobs.eval._formats import Context, Format, Item, row_items
from vqa_cli.jobs.eval._layout import NEXTQA_MAP

ANNOTATION_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
EGOSCHEMA_ANSWERS = "subset_answers.json"  # EgoSchema's public answers, published beside questions.json
# Perception Test: mc_question_valid.json's cut frames are in cut_frame_mapping_valid.json beside it
PERCEPTION_CUTS = ("mc_question", "cut_frame_mapping")
PARQUET_EXTRA = "pip install 'vqa-cli[parquet]'"

# The summary's left_out keys and how a message says them (one, several).
LEFT_OUT = {
    "no_answer": ("question without an answer", "questions without an answer"),
    "answer_not_in_options": ("question whose answer is not among its options",
                              "questions whose answer is not among their options"),
    "open_ended": ("open-ended question (no options)", "open-ended questions (no options)"),
    "not_multiple_choice": ("question that is not lettered multiple choice",
                            "questions that are not lettered multiple choice"),
    "answers_without_question": ("answer whose question is not in the file",
                                 "answers whose question is not in the file"),
}


@dataclass
class Benchmark:
    """What ``read_benchmark`` found: the questions to ask and what it left out, by reason."""

    format: Format
    items: list[Item]
    files: list[str]  # every file read: annotations, then companions
    left_out: dict[str, int] = field(default_factory=dict)
    detected: str = ""  # with --format auto: the one line saying which format was chosen and why


def describe_left_out(left_out: dict[str, int]) -> str:
    """``{"no_answer": 3}`` -> ``"3 questions without an answer"``."""
    return ", ".join(f"{n} {LEFT_OUT.get(k, (k, k))[n != 1]}" for k, n in left_out.items() if n)


def load(path: Path) -> object:
    """The file's data as published: JSON's value, a list of rows for JSON Lines, CSV (every field a string,
    as written: NExT-QA's ``video`` digits stay text) and parquet."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UsageError(f"{path}: reading parquet needs pyarrow: {PARQUET_EXTRA}") from None
        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow's own errors: a damaged or foreign file
            raise UsageError(f"{path}: not a parquet file ({type(exc).__name__}: {exc})") from None
    try:
        if path.suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
        kind = "CSV" if path.suffix == ".csv" else "JSON"
        raise UsageError(f"{path}: not {kind} ({' '.join(str(exc).split())})") from None


def _is_answers(data: Any) -> bool:
    """EgoSchema's ``subset_answers.json`` shape: ``{question id: index}``."""
    return isinstance(data, dict) and bool(data) and all(isinstance(v, (int, str)) for v in data.values())


def rows_of(data: object, path: Path) -> list[dict]:
    """Rows (one dict per question) of a file's data; objects keyed by video carry the key as ``_key``."""
    if _is_answers(data):
        raise UsageError(f"{path} holds answers ({{question id: answer}}), not questions: give the questions file "
                         f"(EgoSchema: questions.json) and --answers {path}")
    if isinstance(data, dict):
        rows: list[dict] = []
        for key, value in data.items():
            if isinstance(value, dict) and "mc_question" in value:  # Perception Test: {video: {mc_question: []}}
                fps = (value.get("metadata") or {}).get("frame_rate")
                rows.extend({"_key": key, "_fps": fps, **q} for q in value.get("mc_question") or [])
            elif isinstance(value, list):
                rows.extend({"_key": key, **row} for row in value)
            elif isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
                rows.extend({"_key": key, "dim": dim, **row} for dim, rs in value.items() for row in rs)
            elif isinstance(value, dict):
                rows.append({"_key": key, **value})
        return rows
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UsageError(f"{path}: expected a list of questions")
    return data


def detect(data: object, path: Path) -> tuple[Format | None, str]:
    """The benchmark a file's data is published by, and the reason in words (None: not one vqa knows)."""
    if isinstance(data, dict):
        values = [v for v in data.values() if isinstance(v, dict)]
        if values and any("mc_question" in v for v in values):
            return "perceptiontest", "an object keyed by video with mc_question lists: Perception Test"
        if values and all(v and all(isinstance(x, list) for x in v.values()) for v in values):
            return "tempcompass", "an object keyed by video, then by dimension: TempCompass"
        return None, "an object vqa does not know"
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return None, "no rows"
    keys: set[str] = set().union(*(r.keys() for r in data[:5] if isinstance(r, dict)))
    kind = "columns" if path.suffix in (".csv", ".parquet") else "fields"
    rules: list[tuple[set[str], Format, str]] = [
        ({"video", "qid", "a0", "answer"}, "nextqa", "video, qid, a0..a4: NExT-QA"),
        ({"videoID", "options", "answer"}, "videomme", "videoID, options, answer: Video-MME"),
        ({"q_uid", "option 0"}, "egoschema", "q_uid, option 0..4: EgoSchema"),
        ({"video_idx", "option"}, "egoschema", "video_idx, option: EgoSchema"),
        ({"video_path", "correct_choice"}, "longvideobench", "video_path, correct_choice: LongVideoBench"),
        ({"video_path", "candidates"}, "longvideobench", "video_path, candidates: LongVideoBench"),
        ({"video_name", "options", "answer_id"}, "perceptiontest", "video_name, options, answer_id: Perception Test"),
        ({"video", "question", "question_type"}, "mlvu", "video, question, question_type: MLVU"),
        ({"video_name", "question", "task_type"}, "mlvu", "video_name, question, task_type: MLVU"),
        ({"video", "question", "candidates", "answer"}, "mvbench", "video, question, candidates, answer: MVBench"),
        ({"video_id", "question", "answer", "dim"}, "tempcompass", "video_id, question, answer, dim: TempCompass"),
        ({"video", "question", "options", "answer"}, "jsonl", "video, question, options, answer: vqa's generic rows"),
    ]
    for need, fmt, why in rules:
        if need <= keys:
            return fmt, f"{kind} {why}"
    return None, f"{kind} {', '.join(sorted(keys))}"


def _annotation_files(p: Path) -> list[Path]:
    if not p.exists():
        raise InputNotFoundError(f"no such annotation file or folder: {str(p)!r}")
    if not p.is_dir():
        return [p]
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in ANNOTATION_SUFFIXES)
    if not files:
        raise UsageError(f"no {', '.join(ANNOTATION_SUFFIXES)} annotation files in {str(p)!r}")
    return files


def _choose(fmt: str, loaded: list[tuple[Path, Any]], path: str) -> tuple[Format, str]:
    """The format to read every file in: ``fmt`` as given, or the one every file's data shows."""
    if fmt != "auto":
        return fmt, ""  # type: ignore[return-value]
    found: dict[str, tuple[Path, str]] = {}
    for f, data in loaded:
        if _is_answers(data):
            rows_of(data, f)  # says what the file is
        got, why = detect(data, f)
        if got is None:
            raise UsageError(f"{f}: cannot tell the benchmark from its {why}: name it with --format")
        found.setdefault(got, (f, why))
    if len(found) > 1:
        (a, (fa, _)), (b, (fb, _)) = list(found.items())[:2]
        raise UsageError(f"{path} mixes formats: {fa.name} reads as {a}, {fb.name} as {b}: name one with --format")
    (chosen, (f, why)), = found.items()
    where = f if len(loaded) == 1 else Path(path)
    return chosen, f"{where}: --format {chosen} ({why})"  # type: ignore[return-value]


def _companion(given: str | None, beside: Path, what: str) -> Path | None:
    if given is not None:
        p = Path(given)
        if not p.is_file():
            raise InputNotFoundError(f"no such {what} file: {given!r}")
        return p
    return beside if beside.is_file() else None


def read_benchmark(path: str, fmt: str = "auto", *, answers: str | None = None,
                   video_map: str | None = None) -> Benchmark:
    """Every question of an annotation file or folder (``--format auto``: detected), with the companions its
    benchmark publishes; a usage error when nothing can be scored (the message names the files read)."""
    p = Path(path)
    files = _annotation_files(p)
    loaded = [(f, load(f)) for f in files]
    chosen, detected = _choose(fmt, loaded, path)
    if answers is not None and chosen != "egoschema":
        raise UsageError(f"--answers is EgoSchema's answers file; {path!r} is read as {chosen}")
    if video_map is not None and chosen != "nextqa":
        raise UsageError(f"--video-map is NExT-QA's {NEXTQA_MAP}; {path!r} is read as {chosen}")
    read = [str(f) for f in files]
    base = p if p.is_dir() else p.parent
    all_rows = [(f, rows_of(data, f)) for f, data in loaded]
    left_out: dict[str, int] = {}
    ctx = Context()
    if chosen == "egoschema" and any("answer" not in r for _, rows in all_rows for r in rows):
        found = _companion(answers, base / EGOSCHEMA_ANSWERS, "answers")
        if found is not None:
            table = load(found)
            if not _is_answers(table):
                raise UsageError(f"{found}: expected EgoSchema's answers, {{q_uid: index}}")
            read.append(str(found))
            ctx = Context(answers={str(k): v for k, v in table.items()})
            asked = {str(r.get("q_uid")) for _, rows in all_rows for r in rows}
            left_out["answers_without_question"] = sum(1 for k in ctx.answers or {} if k not in asked)
    if chosen == "nextqa":
        found = _companion(video_map, base / NEXTQA_MAP, "video map")
        if found is not None:
            table = load(found)
            if not isinstance(table, dict):
                raise UsageError(f"{found}: expected NExT-QA's video map, {{video: folder/video}}")
            read.append(str(found))
            ctx = Context(video_map={str(k): str(v) for k, v in table.items()})
    items: list[Item] = []
    for f, rows in all_rows:
        cuts = None
        if chosen == "perceptiontest" and PERCEPTION_CUTS[0] in f.name:
            beside = f.with_name(f.name.replace(*PERCEPTION_CUTS))
            if beside.is_file():
                cuts = load(beside)
                if not isinstance(cuts, dict):
                    raise UsageError(f"{beside}: expected Perception Test's cut frames, {{video_id: frame}}")
                read.append(str(beside))
        items.extend(row_items(chosen, rows, str(f), Context(f.stem, ctx.video_map, ctx.answers, cuts), left_out))
    order = list(LEFT_OUT)
    left_out = {k: left_out[k] for k in sorted(left_out, key=lambda k: order.index(k) if k in order else len(order))
                if left_out[k]}
    if not items:
        hint = ""
        if chosen == "egoschema" and not ctx.answers:
            hint = f": EgoSchema publishes its answers apart, in {EGOSCHEMA_ANSWERS}; give it with --answers FILE"
        counted = describe_left_out(left_out)
        raise UsageError(f"no question to score in {', '.join(read)}" + (f" (left out: {counted})" if counted else "")
                         + hint)
    ids = [it.qid for it in items]
    if len(set(ids)) != len(ids):
        dup = next(q for q in ids if ids.count(q) > 1)
        raise UsageError(f"question id {dup!r} appears twice in {path!r}")
    for it in items:
        if not it.options:
            raise UsageError(f"question {it.qid!r} has no options")
    return Benchmark(chosen, items, read, left_out, detected)


def read_items(path: str, fmt: str = "auto") -> list[Item]:
    """Every item of an annotation file or of a folder of them (see ``read_benchmark``)."""
    return read_benchmark(path, fmt).items
