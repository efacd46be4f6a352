"""Generated text: streaming ``generate`` with per-token timings.

The streamer hands each new piece of text to a callback as soon as it decodes to whole
characters, and records when the first and last tokens arrived so prefill (time to first
token) and decode speed are measured where they happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from transformers.generation.streamers import BaseStreamer

from vqa_cli.settings import DEFAULT_TEMPERATURE

if TYPE_CHECKING:
    import torch
    from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase
    from transformers.generation.utils import GenerateOutput


class TimedTextStreamer(BaseStreamer):
    """Incremental detokenisation with timings; the prompt (first ``put``) is skipped."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, on_text: Callable[[str], None] | None = None) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.tokens: list[int] = []
        self.emitted = ""
        self.text = ""
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        self.tokens.extend(int(t) for t in value.reshape(-1).tolist())
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        # Hold back an incomplete multi-byte character until the next token completes it.
        if not self.text.endswith("\ufffd"):
            self._emit(self.text)

    def end(self) -> None:
        self._emit(self.text)

    def _emit(self, text: str) -> None:
        new = text[len(self.emitted):] if text.startswith(self.emitted) else text
        self.emitted = text
        if new and self.on_text is not None:
            self.on_text(new)


@dataclass
class Generation:
    text: str
    tokens: int
    first_token: float  # seconds from the call to the first new token (prefill included)
    total: float  # seconds for the whole generate call
    sequence: list[int] | None = None  # prompt and new ids as the model returned them (single prompts)
    logits: torch.Tensor | None = None  # [new tokens, vocab] raw logits of each new token, when asked for
    stopped: bool = False  # ended by ``should_stop`` (a stop string, a cancelled request), not by EOS or length
    eos: bool = False  # ended with the model's end-of-sequence token (not by the token limit)

    @property
    def first_logits(self) -> torch.Tensor | None:
        """[vocab] raw logits of the first new token (None unless asked for)."""
        return None if self.logits is None else self.logits[0]

    @property
    def tokens_per_second(self) -> float:
        """Decode speed after the first token (prefill excluded)."""
        span = self.total - self.first_token
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0


def sampling_kwargs(temperature: float) -> dict:
    """Greedy at temperature 0 (deterministic); otherwise plain sampling at ``temperature``."""
    if temperature <= 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": temperature, "top_p": None, "top_k": None}


def cache_kwargs(model: PreTrainedModel, cache: Cache | None) -> dict:
    """The keyword a KV cache goes by: ``cache`` in newer transformers 5.x, ``past_key_values`` before."""
    return {} if cache is None else {_cache_keyword(type(model)): cache}


@lru_cache(maxsize=8)
def _cache_keyword(model_class: type) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def eos_ids(model: PreTrainedModel) -> set[int]:
    """The token ids that end a generation (the model's ``generation_config.eos_token_id``, one or several)."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class _Until:
    """A stopping criterion from a plain callable (checked after every new token)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop
        self.fired = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        import torch

        self.fired = self.fired or bool(self.should_stop())
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


def _run(model: PreTrainedModel, ids: torch.Tensor, embeds: torch.Tensor | Mapping[str, object], mask: torch.Tensor,
         streamer: BaseStreamer,
         *, pad: int, max_new_tokens: int, temperature: float, seed: int | None, cache: Cache | None = None,
         logits: bool = False, until: _Until | None = None) -> GenerateOutput | torch.Tensor:
    """The one call of the model's ``generate`` in vqa. A seed applies to this call only (the global RNG
    is restored afterwards). ``until`` stops the generation early when its callable says so. ``embeds``: the prompt's
    embeddings, or the other inputs a family feeds with the ids (``FamilyAdapter.prompt_inputs``)."""
    import torch
    from transformers import StoppingCriteriaList

    extra: dict[str, Any] = {"output_logits": True, "return_dict_in_generate": True} if logits else {}
    extra.update(embeds if isinstance(embeds, Mapping) else {"inputs_embeds": embeds})
    if until is not None:
        extra["stopping_criteria"] = StoppingCriteriaList([until])
    devices = [ids.device.index or 0] if ids.device.type == "cuda" else []
    with torch.inference_mode(), torch.random.fork_rng(devices=devices, enabled=seed is not None and temperature > 0):
        if seed is not None and temperature > 0:
            torch.manual_seed(seed)
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                              streamer=streamer, pad_token_id=pad, **cache_kwargs(model, cache),
                              **sampling_kwargs(temperature), **extra)


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    ids: torch.Tensor,
    embeds: torch.Tensor | Mapping[str, object],
    *,
    max_new_tokens: int,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int | None = None,
    on_text: Callable[[str], None] | None = None,
    cache: Cache | None = None,
    logits: bool = False,
    should_stop: Callable[[str], bool] | None = None,
) -> Generation:
    """Generate from prompt embeddings [1, L, D] (or a family's own inputs: ``_run``), streaming text to ``on_text``.

    ``cache``: a KV cache holding a prefix of the prompt (only the rest is prefilled). ``logits`` keeps the
    raw logits of every new token (for log-probabilities, and for checking a cached prefill against a full
    one). ``should_stop(text so far)`` is asked after every token: a stop string seen, a request cancelled.
    """
    import torch

    streamer = TimedTextStreamer(tokenizer, on_text)
    until = _Until(lambda: should_stop(streamer.text)) if should_stop is not None else None
    out = _run(model, ids, embeds, torch.ones_like(ids), streamer, pad=pad_id(tokenizer), max_new_tokens=max_new_tokens,
               temperature=temperature, seed=seed, cache=cache, logits=logits, until=until)
    total = time.perf_counter() - streamer.started
    first = (streamer.first_token_at or time.perf_counter()) - streamer.started
    sequences = out.sequences if logits else out
    # Row 0 of each step's raw logits (before any logits processor).
    kept = torch.stack([step[0] for step in out.logits]).clone() if logits else None
    return Generation(streamer.text.strip(), len(streamer.tokens), first, total, sequences[0].tolist(), kept,
                      stopped=bool(until and until.fired),
                      eos=bool(streamer.tokens) and streamer.tokens[-1] in eos_ids(model))


class TokenClock(BaseStreamer):
    """Records when new tokens arrive and how many (any batch size); the prompt ``put`` is skipped."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.steps = 0
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.last_token_at = time.perf_counter()
        self.first_token_at = self.first_token_at or self.last_token_at
        self.steps += 1

    def end(self) -> None:
        return None


def left_pad(rows: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[(ids [1, L_i], embeds [1, L_i, D])] -> left-padded ids [B, L], embeds [B, L, D], attention mask."""
    import torch

    ids, mask = _left_pad_ids([row_ids for row_ids, _ in rows], pad_id)
    width = ids.shape[1]
    embeds = torch.cat([torch.cat([emb.new_zeros((1, width - emb.shape[1], emb.shape[2])), emb], dim=1)
                        for _, emb in rows])
    return ids, embeds, mask


def _left_pad_ids(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[ids [1, L_i]] -> ids [B, L] left-padded with ``pad_id`` and their attention mask (0 on the padding)."""
    import torch

    width = max(ids.shape[1] for ids in rows)
    ids = [torch.cat([row.new_full((1, width - row.shape[1]), pad_id), row], dim=1) for row in rows]
    mask = [torch.cat([row.new_zeros((1, width - row.shape[1])), torch.ones_like(row)], dim=1) for row in rows]
    return torch.cat(ids), torch.cat(mask)


def left_pad_inputs(rows: list[tuple[torch.Tensor, Mapping[str, object]]], pad_id: int
                    ) -> tuple[torch.Tensor, dict[str, object], torch.Tensor]:
    """[(ids [1, L_i], a family's own inputs)] -> left-padded ids [B, L], inputs, attention mask. Position ids
    [..., 1, L_i] are left-padded with 0 (a real token's positions start at its row's first token, as the model's
    own ``get_rope_index`` with the attention mask gives them); encoder outputs are joined in batch order (the model
    scatters them over the visual tokens row by row)."""
    import torch

    ids, mask = _left_pad_ids([row_ids for row_ids, _ in rows], pad_id)
    width = ids.shape[1]
    inputs: dict[str, object] = {}
    for key in rows[0][1]:
        values = [extra[key] for _, extra in rows]
        if key == "position_ids":
            inputs[key] = torch.cat([torch.nn.functional.pad(v, (width - v.shape[-1], 0)) for v in values], dim=-2)
        elif key == "mm_encoder_outputs":
            inputs[key] = {media: _joined([v[media] for v in values]) for media in values[0]}
        else:
            raise ValueError(f"{key}: no batched form")
    return ids, inputs, mask


def _joined(outputs: list[Mapping[str, object]]) -> object:
    """Several prompts' encoder outputs (tuples of per-video tensors, or lists of such tuples per layer) as one."""
    fields = {}
    for name, first in outputs[0].items():
        parts = [o[name] for o in outputs]
        if isinstance(first, tuple):
            fields[name] = tuple(t for p in parts for t in p)
        else:  # a list over layers of per-video tuples (DeepStack)
            fields[name] = [tuple(t for p in parts for t in p[k]) for k in range(len(first))]
    return type(outputs[0])(**fields)


def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[tuple[torch.Tensor, torch.Tensor | Mapping[str, object]]],
    *,
    max_new_tokens: int,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Generation]:
    """Left-padded batched generation for several prompts at once (no streaming); ``should_stop()`` ends
    the whole batch early (every request in it cancelled). ``rows``: (ids, embeddings), or (ids, a family's own
    inputs: ``left_pad_inputs``)."""
    import torch

    pad = pad_id(tokenizer)
    family = isinstance(rows[0][1], Mapping)
    ids, embeds, mask = left_pad_inputs(rows, pad) if family else left_pad(rows, pad)
    clock = TokenClock()
    out = _run(model, ids, embeds, mask, clock, pad=pad, max_new_tokens=max_new_tokens, temperature=temperature,
               seed=seed, until=_Until(should_stop) if should_stop is not None else None)
    total = time.perf_counter() - clock.started
    first = (clock.first_token_at or time.perf_counter()) - clock.started
    new = out[:, ids.shape[1]:] if out.shape[1] > ids.shape[1] and torch.equal(out[:, :ids.shape[1]], ids) else out
    ends = eos_ids(model)
    results = []
    for row in new.tolist():
        n = next((i + 1 for i, t in enumerate(row) if t in ends), len(row))
        text = tokenizer.decode(row[:n], skip_special_tokens=True).strip()
        results.append(Generation(text, n, first, total, eos=n > 0 and row[n - 1] in ends))
    return results
