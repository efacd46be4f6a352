"""Prompt ids: what vqa feeds the model equals what each checkpoint's own transformers processor builds.

The oracle is the processor class that the checkpoint's ``processor_config.json`` names
(``LlavaNextVideoProcessor``, ``VideoLlavaProcessor``, ``LlavaOnevisionProcessor``), loaded by its own
``from_pretrained``: transformers reads the processor config, the chat template file and the tokenizer,
renders the conversation with ``ProcessorMixin.apply_chat_template`` (its own Jinja rendering, not the
tokenizer's), replaces the video placeholder with its own ``replace_video_token`` count, and tokenizes
with its own text kwargs (special tokens, hence BOS, included). None of that is vqa code.

One piece is stood in for: the family's video processor needs torchvision, which vqa must not depend
on, so ``AutoVideoProcessor`` hands the processor an object that returns zero pixels of the shape the
real video processor would return (frames x 3 x the crop, or size, of ``video_preprocessor_config.json``).
The processor counts placeholders from that shape only. For the other modes, whose token counts no
processor knows, the processor's ``replace_video_token`` is made to return that count: the expansion and
tokenization around it stay the processor's.

The tiny checkpoints' Llama-style tokenizers add no BOS, unlike the Vicuna/Llama tokenizers of the real
LLaVA-NeXT-Video and Video-LLaVA checkpoints (transformers' ``LlamaTokenizer``: ``add_bos_token`` defaults
to True, ``<s>`` is prepended), so a missing BOS would pass unseen on them. The ``+bos`` cases re-save the
same tokenizer with ``add_bos_token=True`` (a ``<s> $A`` post-processor in ``tokenizer.json``).
OneVision's Qwen tokenizer has no BOS at all, and the test asserts that none appears.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vqa_cli.model import prompt
from vqa_cli.model.conversation import Conversation
from vqa_cli.model.engine import Engine
from vqa_cli.model.session import open_model
from vqa_cli.settings import ModeSettings, RunSettings
from vqa_cli.video import Clip

CASES = ("llava-next-video", "video-llava", "llava-onevision", "llava-next-video+bos", "video-llava+bos")
QUESTION = "What happens in the video?"
TIMES = [0.0, 1.25, 2.5]
DURATION = 3.75
# The documented time instruction (docs/modes.md, REFERENCES.md section 2) for TIMES and DURATION, written out.
TIME_TEXT = (
    "The video lasts for 3.75 seconds, and 3 frames are uniformly sampled from it. "
    "These frames are located at 0.00s,1.25s,2.50s. Please answer the following questions related to this video."
)


# ---- the oracle ------------------------------------------------------------------------------------------


class _VideoShapes(dict):
    """Stands in for the family's video processor (torchvision): zero pixels of the shape it would return."""

    def __call__(self, videos, **kwargs):
        from transformers.feature_extraction_utils import BatchFeature

        shape = (len(videos), len(videos[0]), 3, self["height"], self["width"])
        return BatchFeature({"pixel_values_videos": np.zeros(shape, np.float32)})


def _load_processor(model_dir: Path):
    import importlib

    import transformers
    from transformers import ProcessorMixin

    # The module itself (``from transformers.models.auto import video_processing_auto`` gives a torchvision stub).
    video_processing_auto = importlib.import_module("transformers.models.auto.video_processing_auto")
    cfg = json.loads((model_dir / "video_preprocessor_config.json").read_text())
    side = cfg["crop_size"] if cfg.get("do_center_crop") else cfg["size"]
    shapes = _VideoShapes(height=side["height"], width=side["width"])
    check = ProcessorMixin.check_argument_for_proper_class

    def checked(self, name, argument):
        return type(argument) if argument is shapes else check(self, name, argument)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(video_processing_auto.AutoVideoProcessor, "from_pretrained",
                   classmethod(lambda cls, *args, **kwargs: shapes))
        mp.setattr(ProcessorMixin, "check_argument_for_proper_class", checked)
        name = json.loads((model_dir / "processor_config.json").read_text())["processor_class"]
        return getattr(transformers, name).from_pretrained(model_dir)


def _oracle_ids(processor, messages: list[dict], frames: int, count: int | None = None) -> list[int]:
    """The processor's ids for ``messages`` (the video in the first one) with ``frames`` frames.

    ``count`` None: the processor's own placeholder count; else that many placeholders, as a mode makes.
    """
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    video = [np.zeros((frames, 4, 4, 3), np.uint8)]
    with pytest.MonkeyPatch.context() as mp:
        if count is not None:
            mp.setattr(processor, "replace_video_token", lambda *a, **k: processor.video_token * count, raising=False)
        out = processor(text=text, videos=video, return_tensors=None)
    return list(out["input_ids"][0])


def _hf_messages(turns: list[tuple[str, str]], time_text: str | None) -> list[dict]:
    """(role, text) turns in transformers' message format, the video in the first user turn."""
    out = []
    for i, (role, text) in enumerate(turns):
        content = []
        if i == 0:
            content.append({"type": "video"})
            text = f"{time_text}\n{text}" if time_text else text
        content.append({"type": "text", "text": text})
        out.append({"role": role, "content": content})
    return out


# ---- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def case_dirs(family_dirs, tmp_path_factory) -> dict[str, Path]:
    from transformers import AutoTokenizer

    dirs = dict(family_dirs)
    root = tmp_path_factory.mktemp("bos")
    for case in CASES:
        if case.endswith("+bos"):
            target = root / case
            shutil.copytree(family_dirs[case.removesuffix("+bos")], target)
            AutoTokenizer.from_pretrained(target, add_bos_token=True).save_pretrained(target)
            dirs[case] = target
    return dirs


@pytest.fixture(scope="module")
def processors(case_dirs):
    cache: dict = {}

    def get(case: str):
        if case not in cache:
            cache[case] = _load_processor(case_dirs[case])
        return cache[case]

    return get


@pytest.fixture(scope="module")
def engines(case_dirs):
    cache: dict = {}

    def get(case: str, time_prompt: bool = False) -> Engine:
        if (case, time_prompt) not in cache:
            settings = RunSettings(model=str(case_dirs[case]), dtype="float32", max_new_tokens=4,
                                   frames=len(TIMES), time_prompt=time_prompt)
            cache[case, time_prompt] = open_model(settings, [QUESTION]).engine
        return cache[case, time_prompt]

    return get


def _clip(frames: int = len(TIMES)) -> Clip:
    times = TIMES if frames == len(TIMES) else [i * 0.5 for i in range(frames)]
    return Clip(path="clip.mp4", frames=np.zeros((frames, 24, 32, 3), np.uint8), indices=list(range(frames)),
                timestamps=times, duration=DURATION, fps=0.8, frames_from_content=frames, is_image=False,
                frames_from_header=frames, fps_from_header=0.8)


def _features(engine: Engine, count: int) -> torch.Tensor:
    return torch.zeros(count, engine.model.get_input_embeddings().embedding_dim)


# ---- tests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("time_prompt", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_prompt_inputs_ids_equal_the_processors(engines, processors, case, time_prompt):
    """Engine.prompt_inputs at the family's own (anyres) count: template, BOS, placeholder count and position."""
    engine = engines(case, time_prompt)
    clip = _clip()
    count = engine.checkpoint.plan(engine.settings, len(TIMES)).total
    ids, embeds = engine.prompt_inputs(QUESTION, clip, _features(engine, count))
    expected = _oracle_ids(processors(case), _hf_messages([("user", QUESTION)], TIME_TEXT if time_prompt else None),
                           len(TIMES))
    assert ids[0].tolist() == expected
    assert embeds.shape[:2] == (1, len(expected))


@pytest.mark.parametrize(("mode", "frames"), [("slowfast", 12), ("pooled", 5)])
@pytest.mark.parametrize("case", CASES)
def test_mode_counts_expand_the_placeholder_like_the_processor(engines, processors, case, mode, frames):
    """Checkpoint.prompt_ids + expand_placeholder with a mode's count (no processor knows it) and the time text."""
    engine = engines(case)
    checkpoint = engine.checkpoint
    count = checkpoint.plan(RunSettings(model="x", mode=ModeSettings(mode)), frames).total
    ids = prompt.expand_placeholder(checkpoint.prompt_ids(QUESTION, TIME_TEXT), engine.adapter.video_token_id(), count)
    assert ids == _oracle_ids(processors(case), _hf_messages([("user", QUESTION)], TIME_TEXT), frames, count)


@pytest.mark.parametrize("time_prompt", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_multi_turn_conversation_ids_equal_the_processors(engines, processors, case, time_prompt):
    """Conversation._ids for user, assistant, user: video and time text in the first turn only."""
    engine = engines(case, time_prompt)
    clip = _clip()
    count = engine.checkpoint.plan(engine.settings, len(TIMES)).total
    conversation = Conversation(engine, clip, _features(engine, count))
    turns = [("user", QUESTION), ("assistant", "a man opens the door"), ("user", "who is in the video?")]
    ids = conversation.ids_for([{"role": r, "text": t} for r, t in turns])
    assert ids == _oracle_ids(processors(case), _hf_messages(turns, TIME_TEXT if time_prompt else None), len(TIMES))


@pytest.mark.parametrize("case", CASES)
def test_bos_exactly_once_where_the_tokenizer_has_one(engines, processors, case):
    """The oracle itself: the +bos cases do start with BOS (so a dropped BOS fails above); Qwen has none."""
    engine = engines(case)
    tok = engine.checkpoint.tokenizer
    expected = _oracle_ids(processors(case), _hf_messages([("user", QUESTION)], None), 1)
    ids = engine.checkpoint.prompt_ids(QUESTION)
    if case.endswith("+bos"):
        assert tok.bos_token_id is not None
        assert expected[0] == ids[0] == tok.bos_token_id
        assert expected.count(tok.bos_token_id) == ids.count(tok.bos_token_id) == 1
    elif case == "llava-onevision":
        assert tok.bos_token is None and tok.bos_token_id is None
        assert expected[0] == ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
