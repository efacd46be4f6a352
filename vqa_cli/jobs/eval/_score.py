"""Scoring one question: ``generate`` (greedy answer, letter extracted by the protocol's rules) or
``likelihood`` (the option letter the model gives the highest log-probability as its first answer token).

Likelihood never fails to parse: it reads the log-softmax of the first new token's logits at each
option letter's token ids. A letter may have several tokens in the vocabulary ("A" and the word-initial "\u2581A" or
"\u0120A"); the letter's score is the largest of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from vqa_cli.errors import UsageError
from vqa_cli.jobs.eval._extract import extract, guess, unparsed_policy
from vqa_cli.jobs.eval._formats import LETTERS, Format, Item
from vqa_cli.jobs.eval._prompts import Protocol

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

Score = Literal["generate", "likelihood"]
DEFAULT_SCORE: Score = "generate"


@dataclass
class Scored:
    prediction: str | None  # the letter counted (a guess for an unparsed answer under a guessing protocol)
    raw: str  # the model's text ("" for likelihood)
    unparsed: bool
    counted: bool  # False: left out of the accuracy (an unparsed answer the protocol excludes)
    guessed: bool = False
    logprobs: dict[str, float] | None = None  # likelihood: each option letter's log-probability


def letter_ids(tokenizer: PreTrainedTokenizerBase, n: int) -> list[list[int]]:
    """Per option letter, the ids of the vocabulary's tokens that spell it alone: ``A``, and the word-initial
    ``\u2581A`` (SentencePiece) and ``\u0120A`` (byte-level BPE) where the vocabulary has them."""
    vocab = tokenizer.get_vocab()
    out = []
    for letter in LETTERS[:n]:
        ids = [vocab[t] for t in (letter, "\u2581" + letter, "\u0120" + letter) if t in vocab]
        if not ids:
            raise UsageError(f"the tokenizer has no token for the option letter {letter!r}: use --score generate")
        out.append(list(dict.fromkeys(ids)))
    return out


def letter_logprobs(logits: torch.Tensor, ids: list[list[int]]) -> list[float]:
    """Log-softmax of ``logits`` [vocab] over the whole vocabulary, read at each letter's best spelling."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return [max(float(logp[i]) for i in spellings) for spellings in ids]


def by_likelihood(logits: torch.Tensor, tokenizer: PreTrainedTokenizerBase, item: Item) -> Scored:
    scores = letter_logprobs(logits, letter_ids(tokenizer, len(item.options)))
    best = max(range(len(scores)), key=lambda i: scores[i])
    return Scored(LETTERS[best], "", False, True,
                  logprobs={LETTERS[i]: round(s, 6) for i, s in enumerate(scores)})


def by_generation(text: str, item: Item, fmt: Format, protocol: Protocol) -> Scored:
    letter = extract(text, fmt, protocol, item.options)
    if letter is not None:
        return Scored(letter, text, False, True)
    policy = unparsed_policy(fmt, protocol, text)
    if policy == "guess":
        return Scored(guess(item.qid, len(item.options)), text, True, True, guessed=True)
    return Scored(None, text, True, policy == "wrong")
