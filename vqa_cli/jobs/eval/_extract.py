"""The letter an answer names, by each protocol's own rules, and what an unparsed answer counts as.

``extract`` returns a letter or None (unparsed). ``unparsed_policy`` says how a protocol scores None:
``exclude`` (left out of the denominator), ``wrong``, or ``guess`` (a random letter, stable per question).
Sources and the rules in words: docs/eval.md.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from vqa_cli.jobs.eval._formats import LETTERS, Format
from vqa_cli.jobs.eval._prompts import Protocol

Policy = Literal["exclude", "wrong", "guess"]

# Video-MME's scorer removes these phrases first (two pairs are joined strings in the source, kept as such).
_VIDEOMME_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                      "The best option isThe correct option is", "Best answer:Best option:")
_PUNCT = ";/[]\"{}()=+\\_-><@`,?!"


def _videomme(text: str) -> str | None:
    s = text.strip()
    for prefix in _VIDEOMME_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return None
    m = re.search("[ABCD]", s)
    return m.group(0) if m else None


def _mvbench_lmms(text: str) -> str | None:
    m = re.match(r"^([A-E])\.\s*(.+)$", text.strip(), re.IGNORECASE | re.S)
    if m:
        return m.group(1).upper()
    s = text.replace("\n", " ").replace("\t", " ").strip()
    for p in _PUNCT:
        s = s.replace(p, " ")
    s = s.strip().strip("'\"").strip().lower()
    m = re.search(r"\b([A-E])\b", s, re.IGNORECASE)  # after lower-casing: the article "a" reads as A
    return m.group(1).upper() if m else None


def _mvbench_official(text: str, n: int) -> str | None:
    words = text.strip().lower().split(" ")
    first = words[0].replace(".", "") if words else ""
    if not any(c in first for c in "abcdefg"):  # PLLaVA's guard: "model doesn't follow instructions"
        return None
    for letter in LETTERS[:n]:
        gt = f"({letter.lower()})"
        if first in gt or gt in first:
            return letter
    return None


def _mlvu_official(text: str) -> str | None:
    """MLVU's ``check_ans``: the answer after the prefix, cut at its first ``)``, equal to the letter."""
    pred = text[1:] if text.startswith("(") else text  # the "(" read from the prefix
    pred = pred.split(")")[0]
    return pred if len(pred) == 1 and pred in LETTERS else None


def _mlvu_lmms(text: str) -> str | None:
    """lmms-eval's MLVU ``extract_characters_regex``: the character before the first ``)``, else the whole answer."""
    s = text.strip()
    pred = s[s.index(")") - 1:s.index(")")] if ")" in s else s
    return pred if len(pred) == 1 and pred in LETTERS else None


def _tempcompass(text: str) -> str | None:
    """TempCompass's hand-written rules (``eval_multi-choice.py``; lmms-eval's are the same): the answer is a
    letter A-D, or starts with ``A.`` or ``A)``. Anything else goes to an LLM judge there; here it is unparsed
    (the source's ``--disable_llm`` setting)."""
    if text in ("A", "B", "C", "D"):
        return text
    if len(text) >= 2 and text[0] in "ABCD" and text[1] in ".)":
        return text[0]
    return None


def _egoschema_lmms(text: str, options: tuple[str, ...]) -> str | None:
    pred = text
    full = [f"{LETTERS[i]}. {o}" if o.endswith(".") else f"{LETTERS[i]}. {o}." for i, o in enumerate(options)]
    for i, f in enumerate(full):
        if pred == f:
            return LETTERS[i]
    for i, o in enumerate(options):
        if pred == (o if o.endswith(".") else o + "."):
            return LETTERS[i]
    for i in range(len(options)):
        if pred in (f"{LETTERS[i]}.", LETTERS[i]):
            return LETTERS[i]
    return None


def _first_word(text: str, n: int) -> str | None:
    word = (text or "").split(" ")[0].rstrip(".").strip().upper()
    return word if word in LETTERS[:n] else None


def _standalone(text: str, n: int) -> str | None:
    """The first capital option letter standing alone (``\\b[A-?]\\b``)."""
    m = re.search(rf"\b([{LETTERS[0]}-{LETTERS[n - 1]}])\b", text)
    return m.group(1) if m else None


def extract(text: str, fmt: Format, protocol: Protocol, options: tuple[str, ...]) -> str | None:
    """The option letter ``text`` names under ``protocol``'s rules for ``fmt``, or None."""
    n = len(options)
    if fmt == "videomme":
        letter = _videomme(text)
    elif fmt == "mvbench":
        letter = _mvbench_official(text, n) if protocol == "official" else _mvbench_lmms(text)
    elif fmt == "egoschema" and protocol == "lmms-eval":
        letter = _egoschema_lmms(text, options)
    elif fmt == "longvideobench" and protocol == "lmms-eval":
        letter = _first_word(text, n)
    elif fmt == "mlvu":
        letter = _mlvu_official(text) if protocol == "official" else _mlvu_lmms(text)
    elif fmt == "tempcompass":
        letter = _tempcompass(text)
    else:
        letter = _standalone(text, n)
    return letter if letter is not None and letter in LETTERS[:n] else None


def unparsed_policy(fmt: Format, protocol: Protocol, text: str) -> Policy:
    """How an unparsed ``text`` counts."""
    if fmt == "videomme":
        return "exclude" if protocol == "official" else "wrong"
    if fmt == "mvbench" and protocol == "lmms-eval" and text == "":
        return "exclude"  # lmms-eval's MVBench aggregate drops empty predictions
    if fmt == "longvideobench" or (fmt == "egoschema" and protocol == "official"):
        return "guess"
    return "wrong"


def guess(qid: str, n: int) -> str:
    """The random letter a guessing protocol gives an unparsed answer: the same for a question on every run."""
    return LETTERS[int(hashlib.sha256(qid.encode()).hexdigest(), 16) % n]
