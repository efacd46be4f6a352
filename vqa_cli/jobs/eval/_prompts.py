"""The question text each benchmark is asked with, per protocol (``official`` or ``lmms-eval``).

The text goes into the user turn; the checkpoint's own chat template wraps it, as for ``vqa ask``.
docs/eval.md shows both protocols side by side with their sources. Where a benchmark publishes no prompt
of its own (EgoSchema, NExT-QA, Perception Test), ``official`` is lmms-eval's text.
"""

from __future__ import annotations

from typing import Literal

from vqa_cli.jobs.eval._formats import LETTERS, Format, Item

Protocol = Literal["official", "lmms-eval"]
DEFAULT_PROTOCOL: Protocol = "official"

DIRECT = "Answer with the option's letter from the given choices directly."
MVBENCH_SYSTEM = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
                  "movement of objects, and the action and pose of persons. Based on your observations, select the "
                  "best option that accurately addresses the question.\n")
VIDEOMME_OFFICIAL = ("Select the best answer to the following multiple-choice question based on the video. Respond "
                     "with only the letter (A, B, C, or D) of the correct option.")
VIDEOMME_LMMS = ("Select the best answer to the following multiple-choice question based on the video and the "
                 "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
VIDEOMME_SUBTITLES = "This video's subtitles are listed below:"  # Video-MME's with-subtitles setting
BEST_ANSWER = "The best answer is:"
MVBENCH_ANSWER_PREFIX = "Best option:("  # the official MVBench evaluation starts the answer with it
# MLVU's own evaluation (JUNJIE99/MLVU videochat2/choice_bench.py): system prompt, question suffix, answer prefix.
MLVU_SYSTEM = ("Carefully watch this video and pay attention to every detail. Based on your observations, select the "
               "best option that accurately addresses the question.\n")
ONLY_BEST = "\nOnly give the best option."
MLVU_ANSWER_PREFIX = "Best option:("
# lmms-eval's mlvu_dev post_prompt (lmms_eval/tasks/mlvu/mlvu_dev.yaml): in the user turn, not prefilled.
MLVU_LMMS_POST = "\nOnly give the best option.\nBest option: ("
# TempCompass's answer prompt for multi-choice (llyx97/TempCompass, and lmms-eval's post_prompt "multi-choice").
TEMPCOMPASS_POST = "\nPlease directly give the best option:"


def _dotted(item: Item) -> str:
    """``A. text`` lines, one per option."""
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options))


def _paren(item: Item) -> str:
    """``(A) text`` lines, each ending in a newline."""
    return "".join(f"({LETTERS[i]}) {o}\n" for i, o in enumerate(item.options))


def _videomme_options(item: Item) -> str:
    given = item.extra.get("options_as_given")
    return "\n".join(given) if given else _dotted(item)


def build(item: Item, fmt: Format, protocol: Protocol, subtitles: str = "") -> str:
    """The user-turn text of ``item`` under ``protocol``; ``subtitles``: the cues of the sampled frames under
    their header (``subtitles.context``), for Video-MME's with-subtitles setting (other formats: before the text)."""
    if subtitles and fmt != "videomme":
        return f"{subtitles}\n{build(item, fmt, protocol)}"
    q = item.question
    if fmt == "mvbench":
        if protocol == "official":
            return f"{MVBENCH_SYSTEM}Question: {q}\nOptions:\n{_paren(item).rstrip()}\nOnly give the best option."
        return f"Question:{q}\nOption:\n{_paren(item)}{DIRECT}"
    if fmt == "videomme":
        head = VIDEOMME_OFFICIAL if protocol == "official" and not subtitles else VIDEOMME_LMMS
        head = f"{subtitles}\n{head}" if subtitles else head
        return f"{head}\n{q}\n{_videomme_options(item)}\n{BEST_ANSWER}"
    if fmt == "longvideobench":
        return f"{q}\n{_dotted(item)}\n{DIRECT}\n"
    if fmt == "mlvu":
        if protocol == "official":  # MLVU's qa_template: "Question: {q}\nOptions:\n(A) x\n(B) y" (right-stripped)
            return f"{MLVU_SYSTEM}Question: {q}\nOptions:\n{_paren(item).rstrip()}{ONLY_BEST}"
        # lmms-eval sends sy1998/MLVU_dev's question field: the question, then "(A) x" lines each ending in "\n".
        given = item.extra.get("question_as_given") or f"{q}\n{_paren(item)}"
        return f"{given}{MLVU_LMMS_POST}"
    if fmt == "tempcompass":
        # Both send the annotation's question text as it is (options inside) and the answer prompt.
        given = item.extra.get("question_as_given") or f"{q}\n{_dotted(item)}"
        return f"{given}{TEMPCOMPASS_POST}"
    # egoschema, nextqa, perceptiontest, generic jsonl: the question, dotted options, the direct-answer line
    return f"{q.strip()}\n{_dotted(item)}\n{DIRECT}"


def answer_prefix(fmt: Format, protocol: Protocol) -> str:
    """Text the protocol puts at the start of the model's answer (prefilled after the template's assistant
    header); the answer is read with it: ``"Best option:("`` then ``"A) ..."`` reads as ``"(A) ..."``."""
    if protocol != "official":
        return ""
    return {"mvbench": MVBENCH_ANSWER_PREFIX, "mlvu": MLVU_ANSWER_PREFIX}.get(fmt, "")
