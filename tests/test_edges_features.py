"""Edges of the feature cache: every setting that decides a clip's visual tokens changes ``feature_key`` and
those that do not (documented below) keep it; ``BytesLRU`` keeps its byte budget after every insert and drops
the least recently used first. Oracles: RunSettings' own field list enumerated by ``dataclasses.fields`` (a new
setting fails until it is classified here) and a list-based model of the LRU policy written in the test."""

from __future__ import annotations

import dataclasses
import random

import pytest

from vqa_cli.model.features import BytesLRU, feature_key
from vqa_cli.settings import ModeSettings, RunSettings, SpeechSettings

# What each RunSettings field does to a clip's visual tokens (the mode's output that replaces the placeholder).
# changed: a value that changes the visual tokens, so the key must change.
VISUAL = {
    "fps": 2.0, "max_frames": 12, "seek": "exact", "start": 0.5, "end": 2.5,
}
# The visual tokens are the same whatever these are: the key must not change. (The model is keyed by its
# checkpoint files, the dtype and device kind by the loaded engine, the planned frame count by ``frames``.)
NOT_VISUAL = {
    "model": "other-model",  # keyed through the checkpoint's files (``model`` argument), not the name
    "frames": 24,  # keyed through the planned count (the ``frames`` argument)
    "decoder": "pyav",  # the frames of a full sequential decode either way
    "quant": "8bit",  # the vision tower and projector are never quantized (quant_skip_modules)
    "device": "cuda",  # keyed through the loaded engine's device kind
    "dtype": "float16",  # keyed through the loaded engine's dtype
    "max_new_tokens": 3, "temperature": 0.7, "seed": 5,  # decoding
    "rope_scale": 2.0, "rope_type": "dynamic",  # the language model's positions
    "time_prompt": True,  # prompt text
    "segments": "fixed:2", "scene_detector": "content", "scene_threshold": 9.0, "min_scene": 1.0,
    # the windows reach the key as start/end (segmented.py replaces them per window)
    "subtitles": "auto", "subtitle_encoding": "cp1252",  # text in the prompt; read by the key only with the
    # guide (through ``context``, the digest of the cues)
    "asr": "auto", "speech": SpeechSettings(model="tiny.en", language="en"),  # how cues are heard: text, as above
    "max_memory": (("cpu", 2**30),), "offload_dir": "/tmp/x", "force": True, "fit": True,  # placement
}
GUIDED_ONLY = {"guide_model": "openai/clip-vit-base-patch16"}  # read only by prompt-guided pooling
MODES = [ModeSettings("slowfast"), ModeSettings("slowfast", slow_frames=4), ModeSettings("slowfast", fast_grid=3),
         ModeSettings("pooled"), ModeSettings("pooled", pool=(8, 6, 6)), ModeSettings("anyres", stride=3),
         ModeSettings("pooled", guide=True), ModeSettings("pooled", guide=True, guide_kernel=(2, 2, 2)),
         ModeSettings("anyres", max_pixels=65536), ModeSettings("anyres", reduce="evs", keep=0.25),
         ModeSettings("anyres", reduce="evs", keep=0.5), ModeSettings("anyres", reduce="vidcom2", keep=0.25),
         ModeSettings("anyres", reduce="evs", max_visual_tokens=500)]  # a reduction's method and ratio, too
SOURCE = {"path": "/v/clip.mp4", "size": 10, "mtime_ns": 1}
MODEL = {"dir": "/m", "files": [["model.safetensors", 100, 1]]}


def _key(settings: RunSettings, **kw) -> str:
    args = {"source": SOURCE, "frames": 8, "model": MODEL, "dtype": "torch.float32", "device": "cpu",
            "question": "", "context": "", **kw}
    return feature_key(args.pop("source"), settings, args.pop("frames"), args.pop("model"), **args)


def test_every_setting_is_classified():
    names = {f.name for f in dataclasses.fields(RunSettings)}
    assert names == {*VISUAL, *NOT_VISUAL, *GUIDED_ONLY, "mode"}


@pytest.mark.parametrize("name", sorted(VISUAL))
def test_each_visual_setting_changes_the_key(name):
    base = RunSettings(model="m")
    assert _key(dataclasses.replace(base, **{name: VISUAL[name]})) != _key(base)


@pytest.mark.parametrize("name", sorted(NOT_VISUAL))
def test_each_setting_outside_the_visual_tokens_keeps_the_key(name):
    base = RunSettings(model="m")
    assert _key(dataclasses.replace(base, **{name: NOT_VISUAL[name]})) == _key(base)


def test_every_mode_field_changes_the_key():
    keys = {_key(RunSettings(model="m", mode=mode)) for mode in MODES}
    assert len(keys) == len(MODES)
    for field in dataclasses.fields(ModeSettings):  # each field is varied by one of MODES
        assert any(getattr(m, field.name) != field.default for m in MODES), field.name


@pytest.mark.parametrize("arg, value", [("source", {**SOURCE, "mtime_ns": 2}), ("source", {**SOURCE, "size": 11}),
                                        ("source", {"sha256": "ab"}), ("frames", 9),
                                        ("model", {**MODEL, "files": [["model.safetensors", 100, 2]]}),
                                        ("dtype", "torch.float16"), ("device", "cuda:0")])
def test_each_key_argument_changes_the_key(arg, value):
    assert _key(RunSettings(model="m"), **{arg: value}) != _key(RunSettings(model="m"))


def test_the_device_index_and_the_unguided_question_keep_the_key():
    base = RunSettings(model="m")
    assert _key(base, device="cuda:0") == _key(base, device="cuda:1")
    assert _key(base, question="why?", context="subs") == _key(base)
    guided = RunSettings(model="m", mode=ModeSettings("pooled", guide=True))
    assert _key(guided, question="why?") != _key(guided)
    assert _key(guided, question="why?", context="subs") != _key(guided, question="why?")


def test_the_guide_model_keeps_the_key_without_the_guide():
    base = RunSettings(model="m")
    assert _key(dataclasses.replace(base, **GUIDED_ONLY)) == _key(base)


def test_the_guide_model_changes_the_key_with_the_guide():
    guided = RunSettings(model="m", mode=ModeSettings("pooled", guide=True))
    assert _key(dataclasses.replace(guided, **GUIDED_ONLY), question="q") != _key(guided, question="q")


# ---- BytesLRU ---------------------------------------------------------------------------------------------

class _Model:
    """The policy: a list, least recently used first; get moves to the end; add replaces, appends, then drops
    from the front while over the budget; an entry over the whole budget is not kept."""

    def __init__(self, budget: int) -> None:
        self.budget, self.entries = budget, []  # [(key, value, size)]

    def get(self, key):
        for k, (kk, v, _s) in enumerate(self.entries):
            if kk == key:
                self.entries.append(self.entries.pop(k))
                return v
        return None

    def add(self, key, value, size):
        if size > self.budget:
            return
        self.entries = [e for e in self.entries if e[0] != key] + [(key, value, size)]
        while sum(e[2] for e in self.entries) > self.budget:
            self.entries.pop(0)


@pytest.mark.parametrize("seed", range(6))
def test_random_sequences_keep_the_budget_and_the_lru_order(seed):
    rng = random.Random(seed)
    budget = rng.choice([0, 1, 10, 100, 1000])
    lru, model = BytesLRU(budget), _Model(budget)
    for step in range(600):
        key = rng.randrange(12)
        if rng.random() < 0.35:
            assert lru.get(key) == model.get(key)
        elif rng.random() < 0.1:
            got = lru.pop(key)
            want = model.get(key)
            model.entries = [e for e in model.entries if e[0] != key]
            assert got == want
        else:
            size = rng.choice([0, 1, rng.randrange(budget + 2), budget, budget + 1])
            lru.add(key, (step, key), size)
            model.add(key, (step, key), size)
            assert lru.bytes <= budget
        assert lru.items() == [(k, v) for k, v, _ in model.entries]
        assert lru.bytes == sum(e[2] for e in model.entries)
        assert len(lru) == len(model.entries)
