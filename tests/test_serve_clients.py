"""``vqa serve`` speaking what real clients send: lmms-eval's ``openai_compatible`` request shapes, vLLM's
request extras, text-only chats, model lookup by id and alias, CORS, and OpenAI error objects for every error.

Oracles: ``vqa ask`` run here with the equivalent settings (vLLM's frame count, min(num_frames, duration x fps),
written out in the test); for a text-only chat the checkpoint's own transformers processor (its chat template)
and the model's own ``generate``; for errors the OpenAI error object's shape (REFERENCES.md section 9).
"""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest

from tests.cli_run import run
from tests.clips import decode_all, make_clip
from tests.serve_helpers import raw, start

openai = pytest.importorskip("openai")

SERVED = "tiny-vqa"
ORIGIN = "http://localhost:3000"
SETTINGS = ["--frames", "8", "--max-new-tokens", "8"]
Q = "What happens?"
DURATION = 3.0  # a.mp4: 90 frames at 30 fps


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    make_clip(str(folder / "a.mp4"), 90, fps=30.0, size=(320, 240))
    return folder


@pytest.fixture(scope="module")
def server(tiny_dir, media):
    srv = start(["--model", str(tiny_dir), "--media-root", str(media), "--served-model-name", SERVED,
                 "--cors-origin", f"{ORIGIN},http://127.0.0.1:5173", *SETTINGS], cwd=str(media))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def video_url(url: str, text: str = Q) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def ask_json(capsys, *args: str) -> dict:
    code, out, err = run(["ask", *args, "--max-new-tokens", "8", "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def is_error_object(body: bytes) -> bool:
    error = json.loads(body)["error"]
    return {"message", "type", "param", "code"} <= set(error) and isinstance(error["message"], str) \
        and "\n" not in error["message"] and "Traceback" not in error["message"]


# ---- lmms-eval's request shapes ----------------------------------------------------------------------------
@pytest.mark.parametrize("num_frames,fps,cli", [
    (4, 2, ["--fps", "2", "--max-frames", "4"]),  # the cap decides: 4 < 3 s x 2
    (16, 1, ["--fps", "1", "--max-frames", "16"]),  # the rate decides: 3 s x 1 < 16
    (6, -1, ["--frames", "6"]),  # vLLM's -1: unset
])
def test_video_url_with_media_io_kwargs_answers_like_vqa_ask(client, media, tiny_dir, capsys, num_frames, fps, cli):
    """lmms-eval with ``pass_video_url``: one video_url and vLLM's ``media_io_kwargs`` for the frames."""
    reply = client.chat.completions.with_raw_response.create(
        model=SERVED, messages=video_url(str(media / "a.mp4")), temperature=0,
        extra_body={"media_io_kwargs": {"video": {"num_frames": num_frames, "fps": fps}},
                    "mm_processor_kwargs": {"do_sample_frames": True}})
    assert reply.http_response.status_code == 200
    completion = reply.parse()
    local = ask_json(capsys, str(media / "a.mp4"), Q, "--model", str(tiny_dir), *cli)
    assert completion.choices[0].message.content == local["answer"]
    # vLLM's count: min(num_frames, floor(duration x fps)), a value <= 0 being unset.
    wanted = min(num_frames, math.floor(DURATION * fps)) if fps > 0 else num_frames
    assert completion.model_extra["vqa"]["frames"] == local["frames"] == wanted
    ignored = reply.http_response.headers.get("x-vqa-ignored")
    assert ignored == (None if fps > 0 else "media_io_kwargs.video.fps")


def _lmms_eval_frames(path: str, n: int) -> list[bytes]:
    """What lmms-eval's ``openai_compatible`` model sends: n uniformly spread frames, each a JPEG."""
    from PIL import Image

    frames, _ = decode_all(path)
    out = []
    for i in np.linspace(0, len(frames) - 1, n, dtype=int):
        buffer = io.BytesIO()
        Image.fromarray(frames[i]).save(buffer, format="JPEG")
        out.append(buffer.getvalue())
    return out


def test_frames_as_jpeg_image_urls_answer_like_the_model_given_those_frames(client, media, tiny_dir):
    """lmms-eval's default: the question, then the frames as base64 JPEG data urls. The oracle answers about the
    frames the JPEGs decode to (PIL, here) with the same settings; the server must feed exactly those."""
    from PIL import Image

    from vqa_cli.model.session import open_model
    from vqa_cli.settings import RunSettings
    from vqa_cli.video import Clip

    jpegs = _lmms_eval_frames(str(media / "a.mp4"), 8)
    content = [{"type": "text", "text": Q}] + [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(j).decode()}}
        for j in jpegs]
    reply = client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": content}],
                                           max_tokens=8, temperature=0)
    frames = np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs])
    clip = Clip(path="frames", frames=frames, indices=list(range(8)), timestamps=[float(i) for i in range(8)],
                duration=8.0, fps=1.0, frames_from_content=8, is_image=False, frames_from_header=8, fps_from_header=0.0)
    engine = open_model(RunSettings(model=str(tiny_dir), frames=8, max_new_tokens=8), [Q]).engine
    assert reply.choices[0].message.content == engine.answer(clip, Q).text
    assert reply.model_extra["vqa"]["frames"] == 8 and reply.model_extra["vqa"]["decoder"] == "images"


# ---- text-only chats -------------------------------------------------------------------------------------
def _model_generate(tiny_dir, turns: list[dict]) -> tuple[str, int]:
    """The checkpoint's own processor renders and tokenizes the chat; the model's own ``generate`` answers."""
    import torch
    from transformers import LlavaNextVideoForConditionalGeneration

    from tests.test_prompt_ids import _load_processor

    processor = _load_processor(tiny_dir)
    messages = [{"role": t["role"], "content": [{"type": "text", "text": t["content"]}]} for t in turns]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = processor(text=text, return_tensors="pt")["input_ids"]
    model = LlavaNextVideoForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    return processor.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip(), ids.shape[1]


def test_a_text_only_chat_is_answered_by_the_language_model(client, tiny_dir):
    turns = [{"role": "user", "content": "Hello, are you there?"}]
    reply = client.chat.completions.create(model=SERVED, messages=turns, temperature=0)
    answer, prompt_tokens = _model_generate(tiny_dir, turns)
    assert reply.choices[0].message.content == answer
    assert reply.usage.prompt_tokens == prompt_tokens
    record = reply.model_extra["vqa"]
    assert (record["frames"], record["visual_tokens"], record["decoder"], record["mode"]) == (0, 0, None, None)
    assert record["cache"]["features"] is None
    # A second turn: the whole conversation again, its first turn's KV cache reused.
    turns += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And now?"}]
    second = client.chat.completions.create(model=SERVED, messages=turns, temperature=0)
    assert second.choices[0].message.content == _model_generate(tiny_dir, turns)[0]
    assert second.usage.prompt_tokens_details.cached_tokens > 0


# ---- models ----------------------------------------------------------------------------------------------
def test_models_by_id_and_alias(server, client, tiny_dir, media):
    assert [m.id for m in client.models.list().data] == [SERVED]
    assert client.models.retrieve(SERVED).id == SERVED
    for alias in (str(tiny_dir), tiny_dir.name):  # its absolute path, its folder's name
        status, headers, body = raw(server.url + "/v1/models/" + alias)
        assert status == 200 and json.loads(body)["id"] == SERVED
        reply = client.chat.completions.create(model=alias, messages=video_url("a.mp4"))
        assert reply.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("other-model")
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"


# ---- response_format, extras ---------------------------------------------------------------------------
def test_response_format_text_is_answered_and_json_is_refused_by_name(client):
    reply = client.chat.completions.create(model=SERVED, messages=video_url("a.mp4"), response_format={"type": "text"})
    assert reply.choices[0].message.content is not None
    for kind in ({"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=SERVED, messages=video_url("a.mp4"), response_format=kind)
        assert info.value.status_code == 400 and info.value.body["param"] == "response_format"
        assert kind["type"] in info.value.body["message"]


def test_unknown_extra_keys_are_answered_and_named(server, client):
    reply = client.chat.completions.with_raw_response.create(
        model=SERVED, messages=video_url("a.mp4"),
        extra_body={"media_io_kwargs": {"video": {"num_frames": 4, "backend": "x"}, "image": {"size": 1}},
                    "mm_processor_kwargs": {"max_pixels": 1000, "do_sample_frames": True},
                    "chat_template_kwargs": {"enable_thinking": False}})
    assert reply.http_response.status_code == 200 and reply.parse().model_extra["vqa"]["frames"] == 4
    named = reply.http_response.headers["x-vqa-ignored"].split(",")
    assert named == ["chat_template_kwargs.enable_thinking", "media_io_kwargs.image", "media_io_kwargs.video.backend",
                     "mm_processor_kwargs.max_pixels"]
    assert any("media_io_kwargs.video.backend" in line for line in server.stderr)  # and logged


# ---- CORS ------------------------------------------------------------------------------------------------
def test_cors_preflight_from_an_allowed_origin(server):
    for origin in (ORIGIN, "http://127.0.0.1:5173"):
        status, headers, _ = raw(server.url + "/v1/chat/completions", "OPTIONS", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert status == 200 and headers["access-control-allow-origin"] == origin
        assert "POST" in headers["access-control-allow-methods"]
        assert "authorization" in headers["access-control-allow-headers"]
    status, headers, body = raw(server.url + "/v1/models", headers={"Origin": ORIGIN})
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
    assert "x-vqa-ignored" in headers["access-control-expose-headers"]
    status, headers, body = raw(server.url + "/v1/models", "OPTIONS", headers={
        "Origin": "http://elsewhere.example", "Access-Control-Request-Method": "GET"})
    assert status == 400 and "access-control-allow-origin" not in headers and is_error_object(body)


# ---- no plain-text errors --------------------------------------------------------------------------------
JSON = {"Content-Type": "application/json"}
TEXT = [{"role": "user", "content": "x"}]


def chat_body(**fields) -> bytes:
    return json.dumps({"messages": TEXT, **fields}).encode()


BAD = [
    ("GET", "/", None, {}, 404),
    ("GET", "/v1", None, {}, 404),
    ("POST", "/v1/completions", b"{}", JSON, 404),
    ("POST", "/v1/embeddings", b"{}", JSON, 404),
    ("POST", "/v1/chat/completion", b"{}", JSON, 404),
    ("GET", "/v1/chat/completions", None, {}, 405),
    ("PUT", "/v1/chat/completions", b"{}", JSON, 405),
    ("POST", "/v1/models", b"{}", JSON, 405),
    ("DELETE", "/v1/models/" + SERVED, None, {}, 405),
    ("POST", "/health", b"{}", JSON, 405),
    ("OPTIONS", "/v1/chat/completions", None, {}, 405),  # not a preflight: no Origin
    ("POST", "/v1/chat/completions", b"", JSON, 400),
    ("POST", "/v1/chat/completions", b"{not json", JSON, 400),
    ("POST", "/v1/chat/completions", b"\xff\xfe", JSON, 400),
    ("POST", "/v1/chat/completions", b"[1, 2]", JSON, 400),
    ("POST", "/v1/chat/completions", b"model=x&messages=y", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ("POST", "/v1/chat/completions", b"hello", {"Content-Type": "text/plain"}, 415),  # no --api-key: JSON only
    ("POST", "/v1/chat/completions", json.dumps({"messages": "hi"}).encode(), JSON, 400),
    ("POST", "/v1/chat/completions", chat_body(model="nope"), JSON, 404),
    ("POST", "/v1/chat/completions", chat_body(model=7), JSON, 400),
    ("POST", "/v1/chat/completions", chat_body(media_io_kwargs={"video": {"num_frames": "8"}}), JSON, 400),
    ("POST", "/v1/chat/completions", chat_body(media_io_kwargs=[1]), JSON, 400),
    ("POST", "/v1/chat/completions", chat_body(response_format={"type": "json_object"}), JSON, 400),
    ("POST", "/v1/chat/completions", chat_body(messages=video_url("missing.mp4")), JSON, 400),
]


@pytest.mark.parametrize("method,path,body,headers,status", BAD, ids=[f"{m} {p} {i}" for i, (m, p, *_) in
                                                                     enumerate(BAD)])
def test_every_error_is_an_openai_error_object(server, method, path, body, headers, status):
    got, reply_headers, reply = raw(server.url + path, method, body, headers)
    assert got == status, reply
    assert reply_headers["content-type"].startswith("application/json") and is_error_object(reply), reply
