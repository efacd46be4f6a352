"""Several questions about one video, and multi-turn chat: encode once, reuse the KV cache.

The video is encoded once; its visual tokens sit in the prompt's prefix. Every turn renders the
whole conversation through the checkpoint's chat template, and only the tokens after the
longest common prefix with what the KV cache already holds are fed to the model: the cache is
cropped back to that point and extended. So

- several independent questions (``vqa ask VIDEO Q1 Q2 ...``) share one prefill of the system
  prompt and video tokens; after each answer the cache is cropped back to that shared prefix,
  so memory never grows with the number of questions;
- a chat keeps every turn in the cache and only feeds the new user message (plus the previous
  answer again in the rare case its text re-tokenizes differently from the ids generated).

A family that feeds ids and its own inputs (``FamilyAdapter.embeds_prompt`` False: Qwen-VL's encoder output and
M-RoPE positions) gets them from its ``prompt_inputs`` for the whole conversation every turn (positions over all of
it); the encoder output is fed only while the cache does not hold the whole video yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vqa_cli.model import prompt
from vqa_cli.model.generate import Generation, cache_kwargs, generate
from vqa_cli.video import Clip

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache

    from vqa_cli.model.engine import Engine
    from vqa_cli.model.modes import TokenPlan


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class Turn:
    question: str
    answer: str
    generation: Generation
    fed_tokens: int  # prompt tokens this turn had to prefill (the rest came from the cache)
    context_tokens: int  # tokens in the conversation after this turn
    # [vocab] logits of the first generated token; only with ask(..., first_logits=True)
    first_logits: torch.Tensor | None = None


@dataclass
class Conversation:
    """One clip, its visual tokens, a message history and the KV cache that holds it (``clip`` and ``features``
    None: a conversation without a video, answered by the language model alone)."""

    engine: Engine
    clip: Clip | None
    features: torch.Tensor | None  # [N, D] visual tokens, kept to rebuild the cache if a turn diverges before them
    messages: list[dict] = field(default_factory=list)
    plan: TokenPlan | None = None  # the clip's visual token layout
    cache: DynamicCache | None = None
    cached_ids: list[int] = field(default_factory=list)
    answer_prefix: list[int] = field(default_factory=list)  # ids every prompt ends with (a prefilled answer start)
    _inputs: dict[tuple[int, ...], tuple[torch.Tensor, dict]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, engine: Engine, clip: Clip, prompt_text: str = "", timings: dict | None = None) -> Conversation:
        """Encode the clip once and prefill the shared prefix (``prompt_text`` guides --guide pooling)."""
        timings = {} if timings is None else timings
        budget, features = engine.budgeted_tokens(clip, prompt_text, timings)
        conversation = cls(engine, clip, features, plan=budget.plan)
        started = time.perf_counter()
        conversation.prefill()
        timings["prefill"] = time.perf_counter() - started
        return conversation

    def prefill(self) -> None:
        """Run the prompt prefix every question shares (template head, video tokens) into the cache."""
        import torch
        from transformers import DynamicCache

        a = self.ids_for([{"role": "user", "text": "a"}])
        b = self.ids_for([{"role": "user", "text": "b"}])
        shared = a[: common_prefix(a, b)]
        self.cache = DynamicCache(config=self.engine.model.config)
        ids_t = torch.tensor([shared], device=self.engine.input_device)
        if not self.engine.adapter.embeds_prompt:
            self._prefill_family(a, len(shared))
            return
        with torch.inference_mode():
            embeds = prompt.embed(self.engine.model, ids_t, self.features, self._placeholder())
            self.engine.model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids_t), use_cache=True,
                              **cache_kwargs(self.engine.model, self.cache))
        self.cached_ids = shared

    def _prefill_family(self, ids: list[int], cut: int) -> None:
        """The shared prefix ``ids[:cut]`` into the cache through the family's own inputs, when it holds the whole
        video (its encoder output cannot be split); else nothing is cached (the first turn feeds it all)."""
        import torch

        self.cached_ids = []
        if self._video_end(ids) > cut:
            return
        ids_t, inputs = self._family_inputs(ids)
        inputs["position_ids"] = inputs["position_ids"][..., :cut]
        with torch.inference_mode():
            self.engine.model(input_ids=ids_t[:, :cut], attention_mask=torch.ones_like(ids_t[:, :cut]),
                              use_cache=True, **inputs, **cache_kwargs(self.engine.model, self.cache))
        self.cached_ids = ids[:cut]

    def _family_inputs(self, ids: list[int]) -> tuple[torch.Tensor, dict[str, object]]:
        """The family's own inputs (``FamilyAdapter.prompt_inputs``) for ``ids`` as ``ids_for`` made them."""
        import torch

        if self.clip is None:
            return torch.tensor([ids], device=self.engine.input_device), {}
        ids_t, inputs = self._inputs[tuple(ids)]
        return ids_t, dict(inputs)

    def _video_end(self, ids: list[int]) -> int:
        """One past the last visual token in ``ids`` (0 without any)."""
        placeholder = self._placeholder()
        return max((i + 1 for i, t in enumerate(ids) if t == placeholder), default=0)

    @property
    def context_limit(self) -> int:
        return self.engine.checkpoint.context(self.engine.rope_factor)

    def ids_for(self, messages: list[dict]) -> list[int]:
        """Token ids of the whole conversation, video placeholder expanded, ready for the next answer."""
        engine = self.engine
        if self.clip is None:
            return engine.checkpoint.prompt_ids(messages, media=None) + self.answer_prefix
        image = engine.uses_image_path(self.clip)
        time_text = None
        if engine.settings.time_prompt and not image:
            time_text = prompt.time_instruction(self.clip.duration, self.clip.timestamps)
        ids = engine.checkpoint.prompt_ids(messages, time_text, media="image" if image else "video")
        if engine.adapter.embeds_prompt:
            return prompt.expand_placeholder(ids, engine.placeholder_id(self.clip), self.features.shape[0]) + \
                self.answer_prefix
        ids_t, inputs = engine.adapter.prompt_inputs(engine.model, engine.checkpoint.tokenizer,
                                                     ids + self.answer_prefix, self._placeholder(), self.features,
                                                     self.clip, engine.checkpoint.dir, engine.input_device,
                                                     mode=engine.settings.mode)
        expanded = ids_t[0].tolist()
        # The last two prompts' inputs (``prefill`` compares two), for ``ask`` and ``prefill``.
        self._inputs = {**dict(list(self._inputs.items())[-1:]), tuple(expanded): (ids_t, inputs)}
        return expanded

    def ask(self, question: str, *, keep: bool, on_text: Callable[[str], None] | None = None,
            first_logits: bool = False, logits: bool = False, should_stop: Callable[[str], bool] | None = None
            ) -> Turn:
        """Answer ``question`` after the history; ``keep`` appends the turn to the conversation.

        ``first_logits`` also keeps the raw logits the model gave for the first new token (``Turn.first_logits``),
        for checking the cached prefill against a full one; normal turns do not pay for them. ``logits`` keeps
        every new token's (``Turn.generation.logits``). ``should_stop``: see ``generate.generate``.
        """
        import torch

        engine = self.engine
        settings = engine.settings
        messages = self.messages + [{"role": "user", "text": question}]
        ids = self.ids_for(messages)
        engine.checkpoint.check_fits(len(ids) + settings.max_new_tokens, engine.rope_factor, lambda ctx: (
            f"the conversation needs {len(ids)} + {settings.max_new_tokens} tokens but the context holds "
            f"{ctx}: /reset to start over, or ask with fewer --frames"))
        if self.cache is None:
            self.prefill()
        # Keep at least one token to feed: generate needs a new position to start from.
        reuse = min(common_prefix(ids, self.cached_ids), len(ids) - 1)
        if self.cache.get_seq_length() > reuse:
            self.cache.crop(reuse - self.cache.get_seq_length())
        if engine.adapter.embeds_prompt:
            ids_t = torch.tensor([ids], device=engine.input_device)
            with torch.inference_mode():
                embeds = prompt.embed(engine.model, ids_t, self.features, self._placeholder())
        else:
            ids_t, embeds = self._family_inputs(ids)
            if self._video_end(ids) > reuse:  # the cache does not hold the whole video: feed it all again
                if self.cache.get_seq_length():
                    self.cache.crop(-self.cache.get_seq_length())
                reuse = 0
            else:  # the video's effect is in the cached keys and values: no encoder output again
                embeds.pop("mm_encoder_outputs", None)
        gen = generate(engine.model, engine.checkpoint.tokenizer, ids_t, embeds, max_new_tokens=settings.max_new_tokens,
                       temperature=settings.temperature, seed=settings.seed, on_text=on_text, cache=self.cache,
                       logits=first_logits or logits, should_stop=should_stop)
        self.cached_ids = gen.sequence[: self.cache.get_seq_length()]
        if keep:
            self.messages = messages + [{"role": "assistant", "text": gen.text}]
        return Turn(question, gen.text, gen, len(ids) - reuse, self.cache.get_seq_length(), gen.first_logits)

    def _placeholder(self) -> int:
        return self.engine.placeholder_id(self.clip) if self.clip is not None else -1

    def reset(self) -> None:
        """Forget the turns; the video's prefix stays cached (the next turn shares it)."""
        self.messages = []

    def used_tokens(self) -> int:
        return self.cache.get_seq_length() if self.cache is not None else 0
