"""The whole job for one video: frames -> pixels -> token grid -> mode -> prompt -> answer.

``Checkpoint`` is everything known without weights (config, family adapter, tokenizer, chat
template, processor config); it plans token budgets and the RoPE factor. ``Engine`` holds the
loaded weights and answers questions about clips. ``ask`` and ``caption`` both use it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vqa_cli.errors import ContextOverflowError, UsageError
from vqa_cli.model import loading, modes, prompt, rope
from vqa_cli.model.families.base import FamilyAdapter
from vqa_cli.settings import LOAD_SETTINGS, ModeSettings, RunSettings
from vqa_cli.video import Clip
from vqa_cli.video.preprocess import ProcessorConfig, preprocess_frames

VISION_CHUNK = 16  # frames per vision-tower call: bounds activation memory on long clips
_WORST_TIMES = 99999.99  # for budgeting the time instruction before timestamps are known


def frames_for(settings: RunSettings, family_default: int = FamilyAdapter.default_frames) -> int:
    """The one place the frame count of a request is decided: the most frames it samples (what the token
    budget is planned for). ``family_default``: the checkpoint family's own count for its native mode."""
    n = (settings.max_frames if settings.fps else settings.frames) or modes.mode_for(
        settings.mode.name).default_frames(family_default)
    if n < 1:
        raise UsageError("--frames must be at least 1")
    return n


def sample_clip(path: str, settings: RunSettings, frames: int, timeout: float | None = None, *,
                options: Any = None) -> tuple[Clip, float]:
    """The request's frames of ``path`` (``frames``, or ``--fps`` capped at ``frames``) and the seconds taken.

    ``options``: a ``video.DecodeOptions`` (e.g. the cores a caption worker's decoders may use); its decoder
    is the request's (``--decoder``)."""
    from vqa_cli.video import DecodeOptions, sample_frames

    options = replace(options or DecodeOptions(), decoder=settings.decoder)
    started = time.perf_counter()
    if settings.fps:
        clip = sample_frames(path, None, settings.start, settings.end, timeout, fps=settings.fps, max_frames=frames,
                             seek=settings.seek, options=options)
    else:
        clip = sample_frames(path, frames, settings.start, settings.end, timeout, seek=settings.seek, options=options)
    return clip, time.perf_counter() - started


@dataclass
class Budget:
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
        self.dir: Path = loading.resolve_model_dir(name, weights=False)
        self.config, self.adapter = loading.read_checkpoint_config(self.dir)
        self.geometry = self.adapter.geometry()
        self.base_rope = dict(getattr(self.adapter.text_config(), "rope_parameters", None) or {})
        self.tokenizer = loading.load_tokenizer(self.dir)
        self.template = loading.read_chat_template(self.dir, self.tokenizer)
        self.processor: ProcessorConfig = loading.read_processor_config(self.dir)

    def frames_for(self, settings: RunSettings) -> int:
        return frames_for(settings, self.adapter.default_frames)

    def plan(self, settings: RunSettings, num_frames: int) -> modes.TokenPlan:
        return modes.plan(settings.mode, num_frames, self.geometry)

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


@dataclass
class Answer:
    text: str
    clip: Clip
    budget: Budget
    timings: dict[str, float]
    tokens: int
    tokens_per_second: float
    features: Any = None  # [N, D] visual tokens the answer was given (for a feature cache)
    eos: bool = False  # the answer ended with the end-of-sequence token (not cut at the token limit)

    def record(self, engine: Engine) -> dict:
        """The ``ask --json`` fields of this answer (see ``records.answer_record``)."""
        from vqa_cli.output import records

        return records.answer_record(engine, self.clip, self.budget, answer=self.text, tokens=self.tokens,
                                     tokens_per_second=self.tokens_per_second, timings=self.timings)


class Engine:
    """Loaded weights plus the checkpoint: answers questions about clips."""

    def __init__(self, checkpoint: Checkpoint, settings: RunSettings, rope_factor: float,
                 device_map: dict | None = None) -> None:
        self.checkpoint = checkpoint
        self.settings = settings
        self.rope_factor = rope_factor
        device = loading.resolve_device(settings.device)
        dtype = loading.resolve_dtype(settings.dtype, device)
        quant = loading.resolve_quant(settings.quant, device)
        rope.apply_to_config(checkpoint.adapter.text_config(), checkpoint.base_rope, rope_factor, settings.rope_type)
        weights_dir = loading.resolve_model_dir(checkpoint.name, weights=True)
        self.loaded = loading.load_model(weights_dir, checkpoint.config, device=device, dtype=dtype, quant=quant,
                                         max_memory=dict(settings.max_memory) or None, device_map=device_map,
                                         offload_dir=settings.offload_dir)
        self.model = self.loaded.model
        self.adapter = self.loaded.adapter
        self.input_device = loading.input_device(self.model)
        self.guide = None
        if settings.mode.guide:
            from vqa_cli.model.guide import Guide

            self.guide = Guide(settings.guide_model, vision_hidden=checkpoint.geometry.vision_hidden,
                               device=str(self.input_device), dtype=dtype)
        loading.cpu_notice(settings.device, device)

    def with_settings(self, settings: RunSettings) -> Engine:
        """This engine answering with other request settings (mode, frames, decoding...): same weights.

        Settings the weights were loaded with (model, quantization, device, dtype, RoPE) must not change.
        """
        for name in LOAD_SETTINGS:
            if getattr(settings, name) != getattr(self.settings, name):
                raise UsageError(f"{name.replace('_', '-')} is fixed when the model loads "
                                 f"({getattr(self.settings, name)!r} here)")
        if settings.mode.guide and self.guide is None:
            raise UsageError("--guide needs the CLIP guide model, which was not loaded: start with --guide")
        view = copy.copy(self)
        view.settings = settings
        return view

    # ---- stages --------------------------------------------------------------------------
    def pixels(self, clip: Clip) -> Any:
        import torch

        return torch.from_numpy(preprocess_frames(clip.frames, self.checkpoint.processor))

    def encode(self, pixels: Any) -> Any:
        """Pixels [T, 3, H, W] -> FrameFeatures, through the vision tower in chunks of VISION_CHUNK frames."""
        import torch

        from vqa_cli.model.families.base import FrameFeatures

        vision_dtype = next(self.adapter.vision_tower(self.model).parameters()).dtype
        with torch.inference_mode():
            return FrameFeatures.cat([
                self.adapter.encode_frames(self.model, chunk.to(self.input_device, vision_dtype))
                for chunk in pixels.split(VISION_CHUNK)
            ])

    def aggregate(self, frames: Any, settings: ModeSettings, prompt_text: str = "") -> Any:
        """FrameFeatures of one clip -> its visual token sequence [N, D] in ``settings``' mode."""
        import torch

        mode = modes.mode_for(settings.name)
        resolved = mode.resolve(settings, self.checkpoint.geometry)
        with torch.inference_mode():
            return mode.apply(resolved, frames, adapter=self.adapter, model=self.model, guide=self.guide,
                              prompt_text=prompt_text)

    def uses_image_path(self, clip: Clip) -> bool:
        """A still image in anyres mode goes through the family's own AnyRes image path, when it has one."""
        return clip.is_image and self.settings.mode.name == "anyres" and self.adapter.image_token_id() is not None

    def placeholder_id(self, clip: Clip) -> int:
        """The prompt placeholder the clip's visual tokens replace: image for the AnyRes image path, else video."""
        return self.adapter.image_token_id() if self.uses_image_path(clip) else self.adapter.video_token_id()

    def prompt_inputs(self, question: str, clip: Clip, features: Any) -> tuple[Any, Any]:
        import torch

        time_text = prompt.time_instruction(clip.duration, clip.timestamps) if self.settings.time_prompt else None
        image = self.uses_image_path(clip)
        ids = self.checkpoint.prompt_ids(question, None if image else time_text, media="image" if image else "video")
        placeholder = self.placeholder_id(clip)
        ids = prompt.expand_placeholder(ids, placeholder, features.shape[0])
        ids_t = torch.tensor([ids], device=self.input_device)
        with torch.inference_mode():
            embeds = prompt.embed(self.model, ids_t, features, placeholder)
        return ids_t, embeds

    # ---- the job ---------------------------------------------------------------------------
    def answer(
        self,
        clip: Clip,
        question: str,
        *,
        on_text: Callable[[str], None] | None = None,
        timings: dict[str, float] | None = None,
        features: Any = None,
    ) -> Answer:
        """``features``: the clip's visual tokens when already known (a feature cache): not encoded again."""
        from vqa_cli.model.generate import generate

        timings = dict(timings or {})
        budget, features = self._features(clip, question, timings, known=features)
        ids, embeds = self.prompt_inputs(question, clip, features)
        gen = generate(
            self.model,
            self.checkpoint.tokenizer,
            ids,
            embeds,
            max_new_tokens=self.settings.max_new_tokens,
            temperature=self.settings.temperature,
            seed=self.settings.seed,
            on_text=on_text,
        )
        timings["first_token"] = gen.first_token
        timings["generate"] = gen.total
        return Answer(gen.text, clip, budget, timings, gen.tokens, gen.tokens_per_second, features, gen.eos)

    def answer_batch(self, clips: list[Clip], question: str | list[str], timings: list[dict] | None = None,
                     pixels: list[Any] | None = None, features: list[Any] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> list[Answer]:
        """Several clips, one question (or one each), one left-padded batched ``generate`` (captioning, a
        server's concurrent requests). ``should_stop()`` ends the whole batch early.

        ``pixels``: each clip's preprocessed pixels when done elsewhere (decode workers); the video
        clips' frames then go through the vision tower together. ``features``: a clip's visual tokens
        when already known (a feature cache); such a clip is not encoded again.
        """
        from vqa_cli.model.generate import generate_batch

        timings = [dict(t) for t in (timings or [{} for _ in clips])]
        known = features or [None] * len(clips)
        encoded: list[Any] = [None] * len(clips)
        if pixels is not None:
            import torch

            video = [i for i, c in enumerate(clips)
                     if not self.uses_image_path(c) and pixels[i] is not None and known[i] is None]
            if video:
                t = time.perf_counter()
                frames = self.encode(torch.cat([pixels[i] for i in video]))
                share = (time.perf_counter() - t) / len(video)
                start = 0
                for i in video:
                    n = pixels[i].shape[0]
                    encoded[i] = frames.slice(start, start + n)
                    timings[i]["encode"] = share
                    start += n
        questions = [question] * len(clips) if isinstance(question, str) else question
        budgets, rows, visual = [], [], []
        for clip, q, tm, frames_i, known_i in zip(clips, questions, timings, encoded, known, strict=True):
            budget, tokens = self._features(clip, q, tm, frames_i, known_i)
            budgets.append(budget)
            visual.append(tokens)
            rows.append(self.prompt_inputs(q, clip, tokens))
        gens = generate_batch(self.model, self.checkpoint.tokenizer, rows, max_new_tokens=self.settings.max_new_tokens,
                              temperature=self.settings.temperature, seed=self.settings.seed, should_stop=should_stop)
        answers = []
        for clip, budget, tm, gen, tokens in zip(clips, budgets, timings, gens, visual, strict=True):
            tm["first_token"], tm["generate"] = gen.first_token, gen.total
            answers.append(Answer(gen.text, clip, budget, tm, gen.tokens, gen.tokens_per_second, tokens, gen.eos))
        return answers

    def _features(self, clip: Clip, question: str, timings: dict[str, float], frames: Any = None,
                  known: Any = None) -> tuple[Budget, Any]:
        """Budget check, then the clip's visual tokens (timing preprocess and encode into ``timings``).

        ``frames``: the clip's FrameFeatures when already encoded (a batch goes through the tower at once).
        ``known``: its visual tokens [N, D] when already known (a feature cache): only the budget is checked.
        """
        import torch

        settings = replace(self.settings, frames=len(clip.indices))
        if known is not None:
            plan = modes.image_plan(known.shape[0]) if self.uses_image_path(clip) else None
            return self.checked_budget(settings, question, plan), known
        if self.uses_image_path(clip):
            t = time.perf_counter()
            with torch.inference_mode():
                features = self.adapter.image_tokens(self.model, self.checkpoint.dir, clip.frames[0])
            timings["preprocess"], timings["encode"] = 0.0, time.perf_counter() - t
            return self.checked_budget(settings, question, modes.image_plan(features.shape[0])), features
        budget = self.checked_budget(settings, question)
        t = time.perf_counter()
        if frames is None:
            pixels = self.pixels(clip)
            timings["preprocess"] = time.perf_counter() - t
            t = time.perf_counter()
            frames = self.encode(pixels)
        features = self.aggregate(frames, self.settings.mode, question)
        timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - t
        return budget, features

    def checked_budget(self, settings: RunSettings, question: str, plan: modes.TokenPlan | None = None) -> Budget:
        """This request's budget; it must fit the RoPE factor the weights were loaded with."""
        return self.checkpoint.budget(settings, [question], num_frames=len(plan.pathways[0].frame_positions)
                                      if plan else settings.frames, plan=plan, loaded_factor=self.rope_factor)
