"""The server's parts without a server: request parsing, settings on the wire, stop strings, the caches."""

from __future__ import annotations

import os

import pytest
import torch

from vqa_cli.model.features import FeatureCache, feature_key, file_identity
from vqa_cli.serve import model_names
from vqa_cli.serve._body import ApiError
from vqa_cli.serve._kv import Prefix, PrefixCache, cache_bytes
from vqa_cli.serve._media import MediaPolicy, resolve_media
from vqa_cli.serve._requests import parse_chat
from vqa_cli.serve._worker import StopFilter, cut_at_stop
from vqa_cli.settings import ModeSettings, RunSettings
from vqa_cli.wire import apply_fields, request_fields

BASE = RunSettings(model="m", frames=8, max_new_tokens=16)


def chat(**body):
    messages = body.pop("messages", [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "a.mp4"}}, {"type": "text", "text": "q"}]}])
    return parse_chat({"model": "m", "messages": messages, **body}, BASE)


# ---- settings on the wire -------------------------------------------------------------------------------
@pytest.mark.parametrize("settings", [
    RunSettings(model="m", frames=12, max_new_tokens=16),
    RunSettings(model="m", fps=2.0, max_frames=20, start=1.5, end=9.0, seek="keyframe", time_prompt=True),
    RunSettings(model="m", mode=ModeSettings("slowfast", slow_frames=4, fast_grid=3)),
    RunSettings(model="m", mode=ModeSettings("pooled", pool=(8, 6, 6))),
    RunSettings(model="m", mode=ModeSettings("anyres", stride=4)),
])
def test_request_fields_round_trip_to_the_same_settings(settings):
    fields = request_fields(settings)
    back = apply_fields(RunSettings(model="m", max_new_tokens=settings.max_new_tokens), fields)
    assert back == settings


def test_a_request_that_names_a_mode_or_frames_starts_from_their_defaults():
    base = RunSettings(model="m", mode=ModeSettings("slowfast", slow_frames=4), frames=40)
    changed = apply_fields(base, {"mode": "pooled", "fps": 1.0})
    assert changed.mode == ModeSettings("pooled") and (changed.frames, changed.fps) == (None, 1.0)
    kept = apply_fields(base, {"start": 2})
    assert kept.mode == base.mode and kept.frames == 40 and kept.start == 2


@pytest.mark.parametrize("field,value", [("frames", 0), ("frames", "8"), ("mode", "fancy"), ("seek", "near"),
                                         ("stride", 3), ("pool", [1, 2]), ("time_prompt", 1), ("fps", -1)])
def test_bad_setting_values_are_usage_errors(field, value):
    with pytest.raises(ApiError) as info:
        chat(**{field: value})
    assert info.value.status == 400 and field in info.value.message


# ---- the OpenAI request ---------------------------------------------------------------------------------
def test_openai_fields_become_settings():
    request = chat(max_completion_tokens=5, temperature=0.5, seed=3, stop="x", frames=4, mode="pooled")
    s = request.settings
    assert (s.max_new_tokens, s.temperature, s.seed, s.frames, s.mode.name) == (5, 0.5, 3, 4, "pooled")
    assert request.stops == ["x"] and request.question == "q" and request.urls == ["a.mp4"]
    assert chat().settings.max_new_tokens == 16  # the server's default


@pytest.mark.parametrize("body,fragment", [
    ({"messages": []}, "non-empty"),
    ({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "a"}},
                                                {"type": "video_url", "video_url": {"url": "b"}}]}]}, "not 2"),
    ({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "a"}}]},
                   {"role": "user", "content": "again"}]}, "alternate"),
    ({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "a"}}]},
                   {"role": "assistant", "content": "x"}]}, "end with the user"),
    ({"messages": [{"role": "user", "content": [{"type": "audio", "x": 1}]}]}, "unsupported content part"),
    ({"n": 2}, "n other than 1"),
    ({"top_p": 0.5}, "top_p"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"logprobs": True, "stream": True}, "without stream"),
    ({"top_logprobs": 3}, "needs logprobs"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"color": "red"}, "unknown field 'color'"),
    ({"response_format": {"type": "json_object"}}, "json_object is not supported"),
    ({"response_format": "text"}, "response_format must be"),
    ({"media_io_kwargs": {"video": {"num_frames": 2.5}}}, "media_io_kwargs.video.num_frames must be an integer"),
    ({"mm_processor_kwargs": {"fps": "2"}}, "mm_processor_kwargs.fps must be a number"),
    ({"mm_processor_kwargs": {"do_sample_frames": "no"}}, "do_sample_frames must be true or false"),
    ({"chat_template_kwargs": []}, "chat_template_kwargs must be an object"),
])
def test_malformed_requests_say_what_is_wrong(body, fragment):
    with pytest.raises(ApiError) as info:
        chat(**body)
    assert info.value.status == 400 and fragment in info.value.message


def test_system_and_earlier_turns_are_kept_in_order():
    request = chat(messages=[{"role": "system", "content": "be brief"},
                             {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}},
                                                          {"type": "text", "text": "one"}]},
                             {"role": "assistant", "content": "ans"}, {"role": "user", "content": "two"}])
    assert [t["role"] for t in request.turns] == ["system", "user", "assistant", "user"]
    assert request.first_question == "one" and request.question == "two" and not request.batchable()


def test_a_conversation_without_media_is_text_only():
    request = chat(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert request.text_only and request.urls == [] and request.question == "hi" and not request.batchable()
    assert not chat().text_only


# ---- vLLM's request extras -----------------------------------------------------------------------------
# vLLM's video loader samples min(num_frames, floor(duration x fps)) frames, a value <= 0 being unset: vqa's
# --frames N for num_frames alone, --fps F for fps alone, --fps F --max-frames N for both.
@pytest.mark.parametrize("extras,frames,fps,max_frames", [
    ({"media_io_kwargs": {"video": {"num_frames": 6}}}, 6, None, None),
    ({"media_io_kwargs": {"video": {"fps": 2}}}, None, 2, None),
    ({"media_io_kwargs": {"video": {"num_frames": 6, "fps": 0.5}}}, None, 0.5, 6),
    ({"media_io_kwargs": {"video": {"num_frames": -1, "fps": 3}}}, None, 3, None),
    ({"mm_processor_kwargs": {"num_frames": 5, "do_sample_frames": True}}, 5, None, None),
    # media_io_kwargs decides over mm_processor_kwargs; vqa's own fields over both
    ({"media_io_kwargs": {"video": {"num_frames": 6}}, "mm_processor_kwargs": {"fps": 2}}, 6, None, None),
    ({"frames": 3, "media_io_kwargs": {"video": {"num_frames": 6, "fps": 1}}}, 3, None, None),
    ({"fps": 1.5, "mm_processor_kwargs": {"num_frames": 6}}, None, 1.5, None),
    # without do_sample_frames the processor samples nothing, as in transformers
    ({"mm_processor_kwargs": {"num_frames": 5, "do_sample_frames": False}}, 8, None, None),
    ({"media_io_kwargs": {"video": {"num_frames": -1, "fps": -1}}}, 8, None, None),
])
def test_vllm_sampling_extras_become_vqa_frames(extras, frames, fps, max_frames):
    s = chat(**extras).settings
    assert (s.frames, s.fps, s.max_frames) == (frames, fps, max_frames)


@pytest.mark.parametrize("extras,ignored", [
    ({"media_io_kwargs": {"video": {"num_frames": 6, "fps": 1}}}, []),
    ({"media_io_kwargs": {"video": {"num_frames": 6, "frames_indices": [1], "duration": 2.0}, "audio": {}}},
     ["media_io_kwargs.audio", "media_io_kwargs.video.duration", "media_io_kwargs.video.frames_indices"]),
    ({"mm_processor_kwargs": {"max_pixels": 1, "min_pixels": 1, "do_sample_frames": True}},
     ["mm_processor_kwargs.max_pixels", "mm_processor_kwargs.min_pixels"]),
    ({"media_io_kwargs": {"video": {"num_frames": 6}}, "mm_processor_kwargs": {"fps": 2}},
     ["mm_processor_kwargs.fps"]),
    ({"frames": 3, "media_io_kwargs": {"video": {"num_frames": 6}}}, ["media_io_kwargs.video.num_frames"]),
    ({"media_io_kwargs": {"video": {"num_frames": -1, "fps": 3}}}, ["media_io_kwargs.video.num_frames"]),
    ({"mm_processor_kwargs": {"num_frames": 5, "do_sample_frames": False}}, ["mm_processor_kwargs.num_frames"]),
    ({"chat_template_kwargs": {"enable_thinking": False}}, ["chat_template_kwargs.enable_thinking"]),
])
def test_extras_without_effect_are_named_not_refused(extras, ignored):
    assert chat(**extras).ignored == ignored


def test_response_format_text_is_accepted():
    assert chat(response_format={"type": "text"}).question == "q"


def test_model_names_the_checkpoint_goes_by(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert model_names(str(folder), folder) == {str(folder), "my-model"}
    # Found from its catalog alias in the hub cache: the alias, the hub id, the snapshot's path (not its hash).
    snapshot = tmp_path / "hub" / "models--llava-hf--llava-onevision-qwen2-0.5b-ov-hf" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    names = model_names("llava-onevision-0.5b", snapshot)
    assert names == {"llava-onevision-0.5b", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", str(snapshot)}
    # Given as a path into the hub cache: the hub id and alias are read from the path.
    assert model_names(str(snapshot), snapshot) == names


# ---- media ---------------------------------------------------------------------------------------------
def test_media_paths_stay_inside_the_media_roots(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "v.mp4").write_bytes(b"x")
    (tmp_path / "secret.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "secret.mp4", root / "link.mp4")
    policy = MediaPolicy([root.resolve()], 10)
    assert resolve_media("v.mp4", policy).path == str((root / "v.mp4").resolve())
    assert resolve_media((root / "v.mp4").as_uri(), policy).path == str((root / "v.mp4").resolve())
    for url in ("../secret.mp4", str(tmp_path / "secret.mp4"), "link.mp4", (tmp_path / "secret.mp4").as_uri()):
        with pytest.raises(ApiError) as info:
            resolve_media(url, policy)
        assert info.value.status == 403, url


def test_data_urls_are_written_for_the_request_and_limited_in_size(tmp_path):
    import base64

    policy = MediaPolicy([tmp_path], 16, scratch=tmp_path)
    media = resolve_media("data:video/mp4;base64," + base64.b64encode(b"0123456789").decode(), policy)
    assert media.path.endswith(".mp4") and open(media.path, "rb").read() == b"0123456789"
    media.release()
    assert not os.path.exists(media.path)
    with pytest.raises(ApiError) as info:
        resolve_media("data:video/mp4;base64," + base64.b64encode(b"x" * 40).decode(), policy)
    assert info.value.status == 413
    with pytest.raises(ApiError) as info:
        resolve_media("https://example.com/v.mp4", policy)
    assert info.value.status == 400 and "--allow-urls" in info.value.message


# ---- stop strings --------------------------------------------------------------------------------------
def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop("abc STOP def END", ["END", "STOP"]) == ("abc ", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)


def test_the_stream_never_shows_a_stop_string_even_split_across_pieces():
    f = StopFilter(["STOP"])
    out = [f.feed(p) for p in ["hello S", "T", "O", "P and more"]]
    assert "".join(out) + f.finish() == "hello "
    g = StopFilter(["STOP"])
    out = [g.feed(p) for p in ["a S", "TAR"]]
    assert "".join(out) + g.finish() == "a STAR"  # a false start is released


# ---- caches --------------------------------------------------------------------------------------------
class _Layer:
    def __init__(self, n):
        self.keys, self.values = torch.zeros(1, 2, n, 4), torch.zeros(1, 2, n, 4)


class _Cache:
    def __init__(self, n):
        self.layers = [_Layer(n), _Layer(n)]


def test_prefix_cache_gives_the_longest_shared_prefix_of_the_same_clip():
    cache = PrefixCache(max_bytes=10**6)
    cache.put("clip", Prefix([1, 2, 3, 4], _Cache(4)))
    cache.put("clip", Prefix([1, 2, 9], _Cache(3)))
    cache.put("other", Prefix([1, 2, 3, 4, 5], _Cache(5)))
    got = cache.take("clip", [1, 2, 3, 7])
    assert got.ids == [1, 2, 3, 4]
    assert cache.take("clip", [5]) is None  # shares nothing
    assert cache.stats()["entries"] == 2  # taken entries are the caller's until put back


def test_prefix_cache_is_bounded_in_bytes_oldest_out():
    one = cache_bytes(_Cache(4))
    cache = PrefixCache(max_bytes=2 * one)
    for i in range(3):
        cache.put("clip", Prefix([i, 1, 2, 3], _Cache(4)))
    assert cache.stats()["entries"] == 2 and cache.take("clip", [0, 1]) is None and cache.take("clip", [2, 1])


def test_feature_cache_keys_change_with_the_file_the_sampling_and_the_mode(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"abc")
    model = {"dir": "m"}

    def key(settings=BASE, frames=8):
        return feature_key(file_identity(str(video)), settings, frames, model, dtype="float32", device="cpu")

    first = key()
    assert key() == first
    assert key(frames=4) != first and key(RunSettings(model="m", mode=ModeSettings("pooled"))) != first
    assert key(RunSettings(model="m", frames=8, start=1.0)) != first
    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert key() != first


def test_feature_cache_memory_lru_and_disk_round_trip(tmp_path, tiny_clip):
    features = torch.randn(5, 3)
    cache = FeatureCache(max_bytes=features.numel() * 4 * 2, folder=tmp_path / "fc")
    for name in ("a", "b", "c"):
        cache.put(name, tiny_clip, features + ord(name))
    cache.flush()
    assert cache.stats()["entries"] == 2  # "a" left memory...
    again = FeatureCache(max_bytes=10**6, folder=tmp_path / "fc")
    found = again.get("a")  # ...but not the disk
    assert found.where == "disk" and torch.equal(found.features, features + ord("a"))
    assert found.clip.indices == tiny_clip.indices and found.clip.timestamps == tiny_clip.timestamps
    assert again.get("a").where == "memory" and again.get("zzz") is None
    (tmp_path / "fc" / "b.safetensors").write_bytes(b"broken")
    assert FeatureCache(10**6, tmp_path / "fc").get("b") is None  # a damaged entry is a miss


@pytest.fixture
def tiny_clip(clip_path):
    from vqa_cli.video import sample_frames

    return sample_frames(clip_path, 4)
