"""Answering questions about clips with loaded weights, in four stages.

1. ``Engine.prepare_clip``: a request's frames decoded (``sample_clip``) and preprocessed to pixels.
2. ``Engine.visual_tokens``: pixels -> the vision tower (``encode``) -> the mode's visual tokens (``aggregate``).
3. ``Engine.checked_budget``: the request's tokens must fit the context the weights were loaded with.
4. ``Engine.generate``: the prompt with the visual tokens in place of its placeholder -> an ``Answer``.

``answer`` (one clip) and ``answer_batch`` (several, one batched generation) run all four; the budget is checked
before the vision tower whenever it is known without the tokens. ``Engine`` receives its weights
(``weights.loader.load``, called by ``session.open_model``) and its ``Checkpoint`` (everything but the weights).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from vqa_cli.errors import UsageError
from vqa_cli.model import modes, prompt
from vqa_cli.model.checkpoint import Budget, Checkpoint
from vqa_cli.model.memory import VISION_CHUNK
from vqa_cli.settings import LOAD_SETTINGS, ModeSettings, RunSettings
from vqa_cli.video import Clip

if TYPE_CHECKING:
    import torch

    from vqa_cli.model.families.base import FrameFeatures
    from vqa_cli.model.weights.loader import LoadedModel
    from vqa_cli.video import DecodeOptions


def sample_clip(path: str, settings: RunSettings, frames: int, timeout: float | None = None, *,
                options: DecodeOptions | None = None, native_fps: float | None = None) -> tuple[Clip, float]:
    """The request's frames of ``path`` (``frames``, or ``--fps`` capped at ``frames``) and the seconds taken.

    ``options``: a ``video.DecodeOptions`` (e.g. the cores a caption worker's decoders may use); its decoder
    is the request's (``--decoder``). ``native_fps``: the family's own rate (``FamilyAdapter.sample_fps``),
    used like ``--fps`` when the request names neither ``--fps`` nor ``--frames``."""
    from vqa_cli.video import DecodeOptions, sample_frames

    options = replace(options or DecodeOptions(), decoder=settings.decoder)
    started = time.perf_counter()
    fps = settings.fps or (None if settings.frames else native_fps)
    if fps:
        clip = sample_frames(path, None, settings.start, settings.end, timeout, fps=fps, max_frames=frames,
                             seek=settings.seek, options=options)
    else:
        clip = sample_frames(path, frames, settings.start, settings.end, timeout, seek=settings.seek, options=options)
    return clip, time.perf_counter() - started


@dataclass
class PreparedClip:
    """Stage 1's output: a clip and its pixels, with the seconds each took (``decode`` when it was decoded here,
    ``preprocess`` when its pixels were made)."""

    clip: Clip
    pixels: torch.Tensor | None  # [T, 3, H, W]; None: a still image on the family's AnyRes image path
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Answer:
    text: str
    clip: Clip
    budget: Budget
    timings: dict[str, float]
    tokens: int
    tokens_per_second: float
    features: torch.Tensor | None = None  # [N, D] visual tokens the answer was given (for a feature cache)
    eos: bool = False  # the answer ended with the end-of-sequence token (not cut at the token limit)


class Engine:
    """Loaded weights plus the checkpoint: answers questions about clips."""

    def __init__(self, checkpoint: Checkpoint, settings: RunSettings, loaded: LoadedModel) -> None:
        """``loaded``: the checkpoint's weights, loaded for ``settings`` (``weights.loader.load``)."""
        self.checkpoint = checkpoint
        self.settings = settings
        self.loaded = loaded
        self.rope_factor = loaded.rope_factor
        self.model = loaded.model
        self.adapter = loaded.adapter
        self.input_device = loaded.input_device
        self.guide = loaded.guide

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

    def uses_image_path(self, clip: Clip) -> bool:
        """A still image in anyres mode goes through the family's own AnyRes image path, when it has one."""
        return clip.is_image and self.settings.mode.name == "anyres" and self.adapter.image_token_id() is not None

    def placeholder_id(self, clip: Clip) -> int:
        """The prompt placeholder the clip's visual tokens replace: image for the AnyRes image path, else video."""
        return self.adapter.image_token_id() if self.uses_image_path(clip) else self.adapter.video_token_id()

    # ---- stage 1: the clip ------------------------------------------------------------------
    def prepare_clip(self, source: str | Clip, frames: int, *, settings: RunSettings | None = None,
                     timeout: float | None = None, options: DecodeOptions | None = None) -> PreparedClip:
        """A request's clip and its pixels: ``source`` decoded (a path: ``sample_clip`` with ``settings``, by
        default this engine's, at ``frames``), or taken as it is (a ``Clip`` already read), then preprocessed
        unless it is a still image on the image path (the family reads those itself in stage 2)."""
        timings: dict[str, float] = {}
        if isinstance(source, Clip):
            clip = source
        else:
            clip, timings["decode"] = sample_clip(source, settings or self.settings, frames, timeout,
                                                  options=options, native_fps=self.adapter.sample_fps)
        pixels = None
        if not self.uses_image_path(clip):
            started = time.perf_counter()
            pixels = self.pixels(clip)
            timings["preprocess"] = time.perf_counter() - started
        return PreparedClip(clip, pixels, timings)

    def pixels(self, clip: Clip) -> torch.Tensor:
        """The clip's frames as the checkpoint's processor prepares them: [T, 3, H, W] float32."""
        return self.adapter.pixels(clip.frames, self.checkpoint.dir, self.checkpoint.processor,
                                   max_pixels=self.settings.mode.max_pixels)

    # ---- stage 2: the visual tokens ------------------------------------------------------------
    def visual_tokens(self, clip: Clip, question: str = "", timings: dict[str, float] | None = None, *,
                      frames: FrameFeatures | None = None) -> torch.Tensor:
        """The clip's visual tokens [N, D] in this engine's mode (``question`` guides ``--guide`` pooling); the
        seconds go into ``timings`` (``preprocess``, ``encode``). ``frames``: the clip's ``FrameFeatures`` when
        already encoded (a batch goes through the tower at once); else its pixels are made and encoded here."""
        import torch

        timings = {} if timings is None else timings
        if self.uses_image_path(clip):
            t = time.perf_counter()
            with torch.inference_mode():
                features = self.adapter.image_tokens(self.model, self.checkpoint.dir, clip.frames[0])
            timings["preprocess"], timings["encode"] = 0.0, time.perf_counter() - t
            return features
        t = time.perf_counter()
        if frames is None:
            pixels = self.pixels(clip)
            timings["preprocess"] = time.perf_counter() - t
            t = time.perf_counter()
            frames = self.encode(pixels)
        features = self.aggregate(frames, self.settings.mode, question, clip)
        timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - t
        return features

    def encode(self, pixels: torch.Tensor) -> FrameFeatures:
        """Pixels [T, 3, H, W] -> FrameFeatures, through the vision tower in chunks of VISION_CHUNK frames."""
        import torch

        from vqa_cli.model.families.base import FrameFeatures

        vision_dtype = next(self.adapter.vision_tower(self.model).parameters()).dtype
        with torch.inference_mode():
            return FrameFeatures.cat([
                self.adapter.encode_frames(self.model, chunk.to(self.input_device, vision_dtype))
                for chunk in pixels.split(VISION_CHUNK)
            ])

    def aggregate(self, frames: FrameFeatures, settings: ModeSettings, prompt_text: str = "",
                  clip: Clip | None = None) -> torch.Tensor:
        """FrameFeatures of one clip -> its visual token sequence [N, D] in ``settings``' mode (resolved on the
        ``clip``'s own grid when the family's depends on the clip: ``resolved_mode``), then reduced when the settings
        say so (``--reduce``: ``reduction.reduce_tokens``, the family's ``reduced_tokens``), blind to the prompt."""
        import torch

        from vqa_cli.model import reduction

        mode = modes.mode_for(settings.name)
        geometry = (clip is not None and self.adapter.clip_geometry(clip, self.checkpoint.dir, settings)
                    or self.checkpoint.geometry)
        resolved = modes.resolved(settings, geometry)
        with torch.inference_mode():
            tokens = mode.apply(resolved, frames, adapter=self.adapter, model=self.model, guide=self.guide,
                                prompt_text=prompt_text)
            if not reduction.active(resolved):
                return tokens
            kept, index = reduction.reduce_tokens(tokens, mode.layout(resolved, len(frames), geometry), resolved,
                                                  self.adapter.reduction_channels())
            return self.adapter.reduced_tokens(kept, index)

    def resolved_mode(self, clip: Clip, settings: ModeSettings | None = None) -> ModeSettings:
        """``settings`` (this engine's mode by default) with every parameter filled as the clip's tokens are made:
        from the family's grid, or the clip's own for a dynamic resolution (``FamilyAdapter.clip_geometry``)."""
        settings = settings or self.settings.mode
        geometry = self.adapter.clip_geometry(clip, self.checkpoint.dir, settings) or self.checkpoint.geometry
        return modes.resolved(settings, geometry)

    # ---- stage 3: the budget -------------------------------------------------------------------
    def checked_budget(self, settings: RunSettings, question: str, plan: modes.TokenPlan | None = None) -> Budget:
        """This request's budget; it must fit the RoPE factor the weights were loaded with."""
        return self.checkpoint.budget(settings, [question], num_frames=len(plan.pathways[0].frame_positions)
                                      if plan else settings.frames, plan=plan, loaded_factor=self.rope_factor)

    # ---- stage 4: the answer -------------------------------------------------------------------
    def prompt_inputs(self, question: str, clip: Clip, features: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor | dict[str, object]]:
        """The prompt's ids [1, L] (placeholder expanded to the visual tokens) and what ``generate`` feeds with them:
        its embeddings, tokens in place, or the family's own inputs (``FamilyAdapter.prompt_inputs``)."""
        time_text = prompt.time_instruction(clip.duration, clip.timestamps) if self.settings.time_prompt else None
        image = self.uses_image_path(clip)
        ids = self.checkpoint.prompt_ids(question, None if image else time_text, media="image" if image else "video")
        return self.adapter.prompt_inputs(self.model, self.checkpoint.tokenizer, ids, self.placeholder_id(clip),
                                          features, clip, self.checkpoint.dir, self.input_device,
                                          mode=self.settings.mode)

    def generate(self, clip: Clip, question: str, features: torch.Tensor, budget: Budget, *,
                 timings: dict[str, float] | None = None, on_text: Callable[[str], None] | None = None) -> Answer:
        """The answer to ``question`` given the clip's visual tokens ``features`` (stage 2) within ``budget``
        (stage 3); ``on_text`` gets the text as it is generated."""
        from vqa_cli.model.generate import generate

        timings = {} if timings is None else timings
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

    # ---- all four ------------------------------------------------------------------------------
    def answer(
        self,
        clip: Clip,
        question: str,
        *,
        on_text: Callable[[str], None] | None = None,
        timings: dict[str, float] | None = None,
        features: torch.Tensor | None = None,
    ) -> Answer:
        """``features``: the clip's visual tokens when already known (a feature cache): not encoded again."""
        timings = dict(timings or {})
        budget, features = self.budgeted_tokens(clip, question, timings, known=features)
        return self.generate(clip, question, features, budget, timings=timings, on_text=on_text)

    def answer_batch(self, clips: list[Clip], question: str | list[str], timings: list[dict] | None = None,
                     pixels: list[torch.Tensor | None] | None = None,
                     features: list[torch.Tensor | None] | None = None,
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
        encoded: list[FrameFeatures | None] = [None] * len(clips)
        if pixels is not None and self.adapter.embeds_prompt:
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
            budget, tokens = self.budgeted_tokens(clip, q, tm, frames_i, known_i)
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

    def budgeted_tokens(self, clip: Clip, question: str, timings: dict[str, float],
                           frames: FrameFeatures | None = None, known: torch.Tensor | None = None
                           ) -> tuple[Budget, torch.Tensor]:
        """Stages 2 and 3 for one clip: its budget and visual tokens. The budget comes first when it is known
        without the tokens (a video: a request that cannot fit costs no vision tower), after them for a still image
        on the image path (its tiles are known once read). ``frames``: the clip's ``FrameFeatures`` when already
        encoded; ``known``: its visual tokens when already known (a feature cache): then only the budget."""
        settings = replace(self.settings, frames=len(clip.indices))
        if known is not None:
            plan = (modes.image_plan(known.shape[0]) if self.uses_image_path(clip)
                    else self.adapter.clip_plan(clip, self.checkpoint.dir, self.settings.mode))
            return self.checked_budget(settings, question, plan), known
        if self.uses_image_path(clip):
            features = self.visual_tokens(clip, question, timings)
            return self.checked_budget(settings, question, modes.image_plan(features.shape[0])), features
        budget = self.checked_budget(settings, question,
                                     self.adapter.clip_plan(clip, self.checkpoint.dir, self.settings.mode))
        return budget, self.visual_tokens(clip, question, timings, frames=frames)
