"""``vqa serve`` as users reach it: a real server process, the official ``openai`` client and plain HTTP.

Answers are compared with ``vqa ask`` run locally with the same settings, and multi-turn reuse with
a full prefill by the model's own forward (log-probabilities, not just text).
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.cli_run import run
from tests.clips import make_clip
from tests.serve_helpers import raw, start

openai = pytest.importorskip("openai")

KEY = "test-key"
SETTINGS = ["--frames", "8", "--max-new-tokens", "8"]
Q1, Q2 = "What happens?", "Describe the colours."


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    make_clip(str(folder / "a.mp4"), 90, fps=30.0, size=(320, 240))
    make_clip(str(folder / "b.mp4"), 45, fps=15.0, size=(160, 120))
    (folder / "bad.mp4").write_text("not a video")
    return folder


@pytest.fixture(scope="module")
def server(tiny_dir, media):
    srv = start(["--model", str(tiny_dir), "--media-root", str(media), "--api-key", KEY, "--max-upload-mb", "1",
                 *SETTINGS], cwd=str(media))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def video_message(url: str, text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def local_answers(tiny_dir, media):
    """``vqa ask --json`` run here (the model loaded in this process), per (video, question)."""
    cache = {}

    def get(video: str, question: str, capsys) -> dict:
        if (video, question) not in cache:
            code, out, err = run(["ask", str(media / video), question, "--model", str(tiny_dir), *SETTINGS, "--json"],
                                 capsys)
            assert code == 0, err
            cache[video, question] = json.loads(out)
        return cache[video, question]

    return get


def test_non_stream_and_stream_answers_equal_vqa_ask(client, media, local_answers, capsys):
    local = local_answers("a.mp4", Q1, capsys)
    reply = client.chat.completions.create(model=_model(client), messages=video_message("a.mp4", Q1))
    assert reply.choices[0].message.content == local["answer"]
    assert reply.usage.completion_tokens == local["generated_tokens"]
    assert reply.usage.prompt_tokens == local["visual_tokens"] + local["prompt_tokens"]
    extra = reply.model_extra["vqa"]
    assert extra["frame_indices"] == local["frame_indices"] and extra["visual_tokens"] == local["visual_tokens"]
    pieces = []
    stream = client.chat.completions.create(model=_model(client), messages=video_message("a.mp4", Q1), stream=True)
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces).strip() == local["answer"] and finish in ("stop", "length")


def _model(client) -> str:
    return client.models.list().data[0].id


def test_models_and_health(server, tiny_dir):
    status, models = server.get("/v1/models", key=KEY)
    assert status == 200 and models["data"][0]["id"] == str(tiny_dir)
    assert models["data"][0]["vqa"]["defaults"]["frames"] == 8
    status, health = server.get("/health")  # no key needed: for load balancers and scripts
    assert status == 200 and health["status"] == "ok"


def test_vqa_settings_per_request_change_the_answer_like_the_cli(client, media, tiny_dir, capsys):
    code, out, err = run(["ask", str(media / "a.mp4"), Q1, "--model", str(tiny_dir), "--frames", "4", "--mode",
                          "pooled", "--max-new-tokens", "8", "--json"], capsys)
    local = json.loads(out)
    reply = client.chat.completions.create(model=_model(client), messages=video_message("a.mp4", Q1),
                                           extra_body={"frames": 4, "mode": "pooled"})
    assert reply.choices[0].message.content == local["answer"]
    assert reply.model_extra["vqa"]["mode"] == "pooled" and reply.model_extra["vqa"]["frames"] == 4


def test_a_second_question_about_the_same_video_skips_decode_and_encode(server, client, media):
    first = client.chat.completions.create(model=_model(client), messages=video_message("b.mp4", Q1),
                                           extra_body={"frames": 6})
    second = client.chat.completions.create(model=_model(client), messages=video_message("b.mp4", Q2),
                                            extra_body={"frames": 6})
    a, b = first.model_extra["vqa"], second.model_extra["vqa"]
    assert a["cache"]["features"] == "miss" and {"decode", "encode"} <= set(a["timings"])
    assert b["cache"]["features"] == "memory" and not {"decode", "preprocess", "encode"} & set(b["timings"])
    assert b["frame_indices"] == a["frame_indices"]
    # The shared prefix (template head and the video's tokens) came from the kept KV cache.
    assert second.usage.prompt_tokens_details.cached_tokens >= a["visual_tokens"]
    # A touched file is another file: decoded again.
    path = media / "b.mp4"
    stat = path.stat()
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = client.chat.completions.create(model=_model(client), messages=video_message("b.mp4", Q2),
                                           extra_body={"frames": 6})
    assert third.model_extra["vqa"]["cache"]["features"] == "miss"


def test_kept_kv_caches_belong_to_their_video(client, local_answers, capsys):
    """Two videos with as many frames have the same prompt ids: only the clip's key tells their caches apart."""
    for video in ("a.mp4", "b.mp4", "a.mp4"):
        reply = client.chat.completions.create(model=_model(client), messages=video_message(video, Q2))
        assert reply.choices[0].message.content == local_answers(video, Q2, capsys)["answer"], video


def _full_prefill_logprobs(tiny_dir, media, turns, top):
    """The first new token's top log-probabilities from one forward of the whole conversation (no cache)."""
    import torch

    from vqa_cli.model import prompt
    from vqa_cli.model.conversation import Conversation
    from vqa_cli.model.session import open_model
    from vqa_cli.settings import RunSettings

    settings = RunSettings(model=str(tiny_dir), frames=8, max_new_tokens=8)
    session = open_model(settings, ["?"], reserve=1024)
    engine = session.engine
    from vqa_cli.model.engine import sample_clip

    clip, _ = sample_clip(str(media / "a.mp4"), settings, 8)
    _, features = engine.budgeted_tokens(clip, turns[0]["text"], {})
    ids = Conversation(engine, clip, features).ids_for(turns)
    ids_t = torch.tensor([ids])
    with torch.inference_mode():
        embeds = prompt.embed(engine.model, ids_t, features, engine.placeholder_id(clip))
        logits = engine.model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids_t)).logits[0, -1]
    values, indices = torch.log_softmax(logits.float(), -1).topk(top)
    return values.tolist(), indices.tolist(), engine.checkpoint.tokenizer


def test_multi_turn_reuses_the_kv_cache_and_equals_a_fresh_prefill(client, tiny_dir, media):
    model = _model(client)
    turn1 = client.chat.completions.create(model=model, messages=video_message("a.mp4", Q1))
    answer1 = turn1.choices[0].message.content
    messages = video_message("a.mp4", Q1) + [{"role": "assistant", "content": answer1},
                                              {"role": "user", "content": Q2}]
    cached = client.chat.completions.create(model=model, messages=messages, logprobs=True, top_logprobs=5)
    fresh = client.chat.completions.create(model=model, messages=messages, logprobs=True, top_logprobs=5,
                                           extra_body={"cache": False})
    assert cached.usage.prompt_tokens_details.cached_tokens > turn1.usage.prompt_tokens - 8  # all but the new turn
    assert fresh.usage.prompt_tokens_details.cached_tokens == 0
    assert cached.choices[0].message.content == fresh.choices[0].message.content
    for a, b in zip(cached.choices[0].logprobs.content, fresh.choices[0].logprobs.content, strict=True):
        assert a.token == b.token and abs(a.logprob - b.logprob) <= 1e-4
        assert [t.token for t in a.top_logprobs] == [t.token for t in b.top_logprobs]
    # And both equal the model's own forward over the whole conversation, done here.
    turns = [{"role": "user", "text": Q1}, {"role": "assistant", "text": answer1}, {"role": "user", "text": Q2}]
    values, indices, tokenizer = _full_prefill_logprobs(tiny_dir, media, turns, 5)
    first = cached.choices[0].logprobs.content[0]
    assert [t.token for t in first.top_logprobs] == [tokenizer.decode([i]) for i in indices]
    assert max(abs(t.logprob - v) for t, v in zip(first.top_logprobs, values, strict=True)) <= 1e-4


def test_concurrent_clients_get_their_own_answers_and_are_batched(server, client, media, local_answers, capsys):
    wanted = {("a.mp4", Q1): local_answers("a.mp4", Q1, capsys)["answer"],
              ("a.mp4", Q2): local_answers("a.mp4", Q2, capsys)["answer"],
              ("b.mp4", Q1): local_answers("b.mp4", Q1, capsys)["answer"],
              ("b.mp4", Q2): local_answers("b.mp4", Q2, capsys)["answer"]}
    _, before = server.get("/health")
    got, errors = {}, []

    def ask(video, question):
        try:
            reply = client.chat.completions.create(model=_model(client), messages=video_message(video, question),
                                                   extra_body={"cache": False})
            got[video, question] = reply.choices[0].message.content
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=key) for key in wanted]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == wanted
    _, after = server.get("/health")
    assert after["batched"] - before["batched"] >= 2  # the ones that waited shared a generate call


def test_a_client_that_disconnects_cancels_its_request(server, media):
    _, before = server.get("/health")
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"model": before["model"], "stream": True, "max_tokens": 2500,  # minutes of tokens here
                       "messages": video_message("a.mp4", "Tell me everything.")}).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while received.count(b"data:") < 4:
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received
    sock.close()
    started = time.time()
    while time.time() - started < 30:
        _, health = server.get("/health")
        if health["running"] == 0 and health["cancelled"] > before["cancelled"]:
            break
        time.sleep(0.2)
    assert health["cancelled"] == before["cancelled"] + 1 and health["running"] == 0
    assert time.time() - started < 20  # 2500 tokens would take minutes


@pytest.mark.parametrize("body,status,code", [
    (b"{not json", 400, "invalid_request"),
    ({"messages": video_message("missing.mp4", Q1)}, 400, "not_found"),
    ({"messages": video_message("bad.mp4", Q1)}, 400, "video"),
    ({"messages": video_message("/etc/hostname", Q1)}, 403, "outside_media_root"),
    ({"messages": video_message("../x.mp4", Q1)}, 403, "outside_media_root"),
    ({"messages": video_message("a.mp4", Q1), "model": "other-model"}, 404, "model_not_found"),
    ({"messages": video_message("a.mp4", Q1), "frames": 0}, 400, "invalid_request"),
    ({"messages": video_message("a.mp4", Q1), "mode": "fancy"}, 400, "invalid_request"),
    ({"messages": video_message("a.mp4", Q1), "framez": 3}, 400, "invalid_request"),
    ({"messages": video_message("a.mp4", Q1), "frames": 4000}, 400, "context_length_exceeded"),
    ({"messages": video_message("http://example.com/v.mp4", Q1)}, 400, "urls_disabled"),
    ({"messages": video_message("data:video/mp4;base64," + "A" * (2 * 2**20), Q1)}, 413, "media_too_large"),
])
def test_bad_requests_get_the_right_status_and_one_line(server, body, status, code):
    if isinstance(body, dict):
        body = {"model": server.get("/health")[1]["model"], **body}
    got, reply = server.post("/v1/chat/completions", body, key=KEY)
    assert got == status, reply
    error = reply["error"]
    assert error["code"] == code and "\n" not in error["message"] and "Traceback" not in error["message"]


def test_a_video_sent_as_a_data_url_answers_like_the_file(client, media, local_answers, capsys):
    data = base64.b64encode((media / "a.mp4").read_bytes()).decode()
    reply = client.chat.completions.create(model=_model(client),
                                           messages=video_message(f"data:video/mp4;base64,{data}", Q1))
    assert reply.choices[0].message.content == local_answers("a.mp4", Q1, capsys)["answer"]


def test_frames_sent_as_images_answer_like_the_video_they_come_from(client, media, local_answers, capsys):
    """lmms-eval's ``openai_compatible`` model sends a video as its frames, one image_url each."""
    import cv2

    from vqa_cli.video import sample_frames

    clip = sample_frames(str(media / "a.mp4"), 8)  # the frames `vqa ask --frames 8` samples
    parts = [{"type": "text", "text": Q1}]
    for frame in clip.frames:
        png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()  # lossless
        parts.append({"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                + base64.b64encode(png).decode()}})
    reply = client.chat.completions.create(model=_model(client), messages=[{"role": "user", "content": parts}])
    assert reply.choices[0].message.content == local_answers("a.mp4", Q1, capsys)["answer"]
    assert reply.model_extra["vqa"]["frames"] == 8 and reply.model_extra["vqa"]["decoder"] == "images"


def test_without_cors_origin_a_browser_gets_no_cors_headers(server):
    status, headers, body = raw(server.url + "/v1/chat/completions", "OPTIONS", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
    assert status == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"
    assert not [h for h in headers if h.startswith("access-control-")]
    status, headers, _ = raw(server.url + "/health", headers={"Origin": "http://localhost:3000"})
    assert status == 200 and not [h for h in headers if h.startswith("access-control-")]


def test_the_api_key_is_required(server):
    body = {"model": "x", "messages": video_message("a.mp4", Q1)}
    assert server.post("/v1/chat/completions", body)[0] == 401
    assert server.post("/v1/chat/completions", body, key="wrong")[0] == 401
    assert server.get("/v1/models", key="wrong")[0] == 401


def test_stop_strings_end_the_answer_before_them(client, local_answers, capsys):
    answer = local_answers("a.mp4", Q1, capsys)["answer"]
    stop = answer[len(answer) // 2: len(answer) // 2 + 3]
    reply = client.chat.completions.create(model=_model(client), messages=video_message("a.mp4", Q1), stop=[stop])
    assert reply.choices[0].message.content == answer[: answer.find(stop)].strip() \
        or answer.startswith(reply.choices[0].message.content)
    assert stop not in reply.choices[0].message.content and reply.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=_model(client), messages=video_message("a.mp4", Q1), stop=[stop], stream=True) if c.choices)
    assert stop not in streamed and streamed.strip() == reply.choices[0].message.content


# ---- --server: the commands as clients ------------------------------------------------------------------
def _without_run_details(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("timings", "tokens_per_second", "batch_size")}


def test_ask_with_server_prints_what_a_local_run_prints(server, tiny_dir, media, capsys, monkeypatch):
    monkeypatch.setenv("VQA_API_KEY", KEY)
    video = str(media / "a.mp4")
    for extra in ([Q1], [Q1, Q2]):
        local = run(["ask", video, *extra, "--model", str(tiny_dir), *SETTINGS], capsys)
        remote = run(["ask", video, *extra, "--server", server.url, *SETTINGS], capsys)
        assert remote[0] == 0 and remote[1] == local[1]
        local_json = json.loads(run(["ask", video, *extra, "--model", str(tiny_dir), *SETTINGS, "--json"], capsys)[1])
        remote_json = json.loads(run(["ask", video, *extra, "--server", server.url, *SETTINGS, "--json"], capsys)[1])
        assert list(remote_json) == list(local_json)
        if "answers" in local_json:
            for a, b in zip(local_json["answers"], remote_json["answers"], strict=True):
                assert (a["question"], a["answer"], a["generated_tokens"]) == (b["question"], b["answer"],
                                                                                b["generated_tokens"])
            local_json.pop("answers"), remote_json.pop("answers")
        assert _without_run_details(remote_json) == _without_run_details(local_json)


def test_chat_with_server_in_stdin_mode_prints_what_a_local_chat_prints(server, tiny_dir, media, capsys, monkeypatch):
    monkeypatch.setenv("VQA_API_KEY", KEY)
    lines = f"{Q1}\n{Q2}\n/reset\n{Q2}\n"
    local = run(["chat", str(media / "a.mp4"), "--model", str(tiny_dir), *SETTINGS], capsys, lines, monkeypatch)
    remote = run(["chat", str(media / "a.mp4"), "--server", server.url, *SETTINGS], capsys, lines, monkeypatch)
    assert remote[0] == local[0] == 0 and remote[1] == local[1] and local[1].count("\n") == 3


def test_caption_with_server_writes_the_records_a_local_run_writes(server, tiny_dir, media, tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setenv("VQA_API_KEY", KEY)
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4", "bad.mp4"):
        shutil.copy(media / name, videos / name)
    local_out, remote_out = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    local = run(["caption", str(videos), "--model", str(tiny_dir), *SETTINGS, "--out", str(local_out)], capsys)
    # The server may only read its media root: serve the copies from one that includes them.
    srv = start(["--model", str(tiny_dir), "--media-root", str(tmp_path), *SETTINGS])
    try:
        remote = run(["caption", str(videos), "--server", srv.url, *SETTINGS, "--out", str(remote_out)], capsys)
        again = run(["caption", str(videos), "--server", srv.url, *SETTINGS, "--out", str(remote_out)], capsys)
    finally:
        srv.stop()
    assert local[0] == remote[0] == 1  # bad.mp4 failed in both
    # The same records (a local run writes a decode failure before the batch it was read with).
    a = sorted((json.loads(line) for line in local_out.read_text().splitlines()), key=lambda r: r["video"])
    b = sorted((json.loads(line) for line in remote_out.read_text().splitlines()), key=lambda r: r["video"])
    assert [_without_run_details(r) for r in b] == [_without_run_details(r) for r in a]
    assert again[0] == 1 and len(remote_out.read_text().splitlines()) == 3  # resumed: the failed one retried


def test_a_server_that_is_down_is_one_line(media, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = run(["ask", str(media / "a.mp4"), Q1, "--server", f"http://127.0.0.1:{port}"], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1 and "vqa serve" in err


def test_a_conflicting_model_option_with_server_is_a_usage_error(server, media, capsys, monkeypatch):
    monkeypatch.setenv("VQA_API_KEY", KEY)
    code, out, err = run(["ask", str(media / "a.mp4"), Q1, "--server", server.url, "--model", "other"], capsys)
    assert code == 2 and "serves" in err and err.count("\n") == 1


def test_health_says_loading_until_the_model_is_ready_and_a_broken_checkpoint_exits(tiny_dir, tmp_path):
    srv = start(["--model", str(tiny_dir), *SETTINGS], wait=False)
    try:
        status, health = srv.get("/health")
        assert (status, health["status"]) == (503, "loading")
        status, reply = srv.post("/v1/chat/completions", {"model": "x", "messages": video_message("a.mp4", Q1)})
        assert status == 503 and reply["error"]["code"] == "loading"
        srv.wait_ready()
    finally:
        srv.stop()
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    proc = subprocess.run([sys.executable, "-m", "vqa_cli", "serve", "--port", "0", "--model", str(broken)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "model.safetensors" in proc.stderr.strip().splitlines()[-1]
