"""A checkpoint without its weights: configs, family adapter, tokenizer, chat template and processor config.

``Checkpoint`` plans a request: its frame count (``frames_for``, the one place it is decided), its token
``Budget`` (visual + prompt + new tokens, never truncated) and the RoPE factor that budget needs. The memory
check, ``--plan`` and ``--fit`` work from it before any weight is read; ``Engine`` answers with it and the
loaded weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vqa_cli.errors import ContextOverflowError, UsageError
from vqa_cli.model import loading, modes, prompt, rope
from vqa_cli.model.families.base import FamilyAdapter
from vqa_cli.model.weights import hub
from vqa_cli.settings import RunSettings

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from vqa_cli.video.preprocess import ProcessorConfig

_WORST_TIMES = 99999.99  # for budgeting the time instruction before timestamps are known


def frames_for(settings: RunSettings, family_default: int = FamilyAdapter.default_frames) -> int:
    """The one place the frame count of a request is decided: the most frames it samples (what the token
    budget is planned for). ``family_default``: the checkpoint family's own count for its native mode."""
    n = (settings.max_frames if settings.fps else settings.frames) or modes.mode_for(
        settings.mode.name).default_frames(family_default)
    if n < 1:
        raise UsageError("--frames must be at least 1")
    return n


@dataclass
class Budget:
    """A request's tokens (its visual ``plan``, prompt and new tokens) and the RoPE factor they need."""

    plan: modes.TokenPlan
    prompt_tokens: int
    max_new_tokens: int
    trained_context: int
    rope_factor: float

    @property
    def total(self) -> int:
        return self.plan.total + self.prompt_tokens + self.max_new_tokens

    def to_dict(self) -> dict:
        return {
            **self.plan.to_dict(),
            "prompt_tokens": self.prompt_tokens,
            "max_new_tokens": self.max_new_tokens,
            "total_tokens": self.total,
            "trained_context": self.trained_context,
            "rope_factor": self.rope_factor,
            "context": int(self.trained_context * self.rope_factor),
        }


class Checkpoint:
    """A checkpoint's configs, tokenizer and template: everything but the weights."""

    def __init__(self, name: str) -> None:
        """Read the checkpoint's files; a missing or broken one is a ``CheckpointError`` naming it."""
        self.name = name
        self.dir: Path = hub.resolve_model_dir(name, weights=False)
        self.config: PretrainedConfig
        self.adapter: FamilyAdapter
        self.config, self.adapter = loading.read_checkpoint_config(self.dir)
        self.geometry = self.adapter.geometry()
        self.base_rope = dict(getattr(self.adapter.text_config(), "rope_parameters", None) or {})
        self.tokenizer: PreTrainedTokenizerBase = loading.load_tokenizer(self.dir)
        self.template = loading.read_chat_template(self.dir, self.tokenizer)
        self.processor: ProcessorConfig = loading.read_processor_config(self.dir)

    def frames_for(self, settings: RunSettings) -> int:
        return frames_for(settings, self.adapter.default_frames)

    def plan(self, settings: RunSettings, num_frames: int) -> modes.TokenPlan:
        if settings.mode.name not in self.adapter.modes:
            raise UsageError(f"--mode {settings.mode.name} is not available for {self.adapter.name} "
                             f"({self.config.model_type}; available: {', '.join(self.adapter.modes)})")
        if settings.mode.max_pixels and not self.adapter.pixel_budget:
            raise UsageError(f"--max-pixels is for native-resolution families (qwen-vl), not {self.adapter.name}")
        return (self.adapter.frames_plan(num_frames, self.dir, settings.mode)
                or modes.plan(settings.mode, num_frames, self.geometry))

    def prompt_ids(self, conversation: str | list[dict], time_text: str | None = None, media: str = "video"
                   ) -> list[int]:
        """Token ids of a question or a conversation (see ``prompt.render``), BOS included, placeholder not
        expanded: what every prompt (budget, answer, chat turn) is counted and fed with."""
        return prompt.token_ids(self.tokenizer, prompt.render(self.tokenizer, self.template, conversation,
                                                              media=media, time_text=time_text))

    def budget(
        self,
        settings: RunSettings,
        questions: list[str],
        num_frames: int | None = None,
        plan: modes.TokenPlan | None = None,
        *,
        loaded_factor: float | None = None,
    ) -> Budget:
        """Token budget and RoPE factor for the longest of ``questions``; fails instead of truncating.

        ``plan`` overrides the mode's layout (a still image's AnyRes tiles are only known once read).
        ``loaded_factor``: the RoPE factor the weights were loaded with, which the request must fit.
        """
        n = num_frames or self.frames_for(settings)
        time_text = prompt.time_instruction(_WORST_TIMES, [_WORST_TIMES] * n) if settings.time_prompt else None
        prompt_tokens = max(len(self.prompt_ids(q, time_text)) for q in questions) - 1  # placeholder
        plan = plan or self.plan(settings, n)
        total = plan.total + prompt_tokens + settings.max_new_tokens
        if settings.rope_scale is not None:
            if settings.rope_scale < 1:
                raise UsageError("--rope-scale must be at least 1")
            factor = float(settings.rope_scale)
        else:
            factor = rope.required_factor(total, self.geometry.trained_context)
        limit = rope.MAX_FACTOR if settings.rope_scale is None else factor
        self.check_fits(total, min(factor, limit), lambda ctx: (
            f"{plan.total} visual + {prompt_tokens} prompt + {settings.max_new_tokens} new tokens exceed the context "
            f"({self.geometry.trained_context} x RoPE factor {limit:g} = {ctx}): at most "
            f"{self._frames_that_fit(settings, prompt_tokens, ctx)} frames fit in --mode {settings.mode.name}"))
        if loaded_factor is not None and settings.rope_scale is None:
            self.check_fits(total, loaded_factor, lambda ctx: (
                f"this request needs RoPE factor {factor:g} but the model was loaded with {loaded_factor:g}: "
                f"load it with --rope-scale {factor:g} (vqa serve: start it so)"))
        return Budget(plan, prompt_tokens, settings.max_new_tokens, self.geometry.trained_context, factor)

    def context(self, rope_factor: float) -> int:
        """Positions the language model holds at ``rope_factor``."""
        return int(self.geometry.trained_context * rope_factor)

    def check_fits(self, tokens: int, rope_factor: float, message: Callable[[int], str]) -> None:
        """The one context check: ``tokens`` must fit the trained context scaled by ``rope_factor``, or a
        ``ContextOverflowError`` with ``message(context)`` (vqa never truncates)."""
        context = self.context(rope_factor)
        if tokens > context:
            raise ContextOverflowError(message(context))

    def _frames_that_fit(self, settings: RunSettings, prompt_tokens: int, context: int) -> int:
        fit = 0
        for n in range(1, 4097):
            if self.plan(settings, n).total + prompt_tokens + settings.max_new_tokens > context:
                break
            fit = n
        return fit
