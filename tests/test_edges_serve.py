"""Edges of the server's protocol (vqa_cli/serve/): temperature 0 is greedy, usage counts, stop strings at the
very start and held back in a stream, ``finish_reason`` at exactly the token limit, logprob positions, frames
sent as images and their times, the data-URL size limit.

The server runs in this process (its own routes, worker and model thread, on a real socket) on the session's
tiny engine. Oracles: the checkpoint loaded by transformers itself, asked with ``generate(do_sample=False)`` on
the prompt its own tokenizer renders from the checkpoint's chat template (text-only conversations, so nothing
vqa computes enters the oracle); formulas for frame times; byte counts for the size limit."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.serve_helpers import http, in_process, raw
from vqa_cli.serve._body import ApiError
from vqa_cli.serve._media import MediaPolicy, resolve_media

CANDIDATES = ["x", "hi", "ok", "Why?", "a b c d", "What is a cat?", "Name a colour.", "Count to ten", "yes", "no",
              "red", "blue", "one", "two", "Go.", "Stop.", "Where?", "When?", "Who?", "cat", "dog", "sun", "tree"]


@pytest.fixture(scope="module")
def served(engine_factory, tmp_path_factory):
    from vqa_cli.model.features import FeatureCache
    from vqa_cli.serve._app import ServerState
    from vqa_cli.serve._kv import PrefixCache
    from vqa_cli.serve._worker import ModelWorker

    engine = engine_factory()
    media = tmp_path_factory.mktemp("serve-media")
    policy = MediaPolicy([media.resolve()], 2**20, scratch=media)
    state = ServerState(engine.settings, policy, None, set(), served_name="tiny")
    state.worker = ModelWorker(engine, FeatureCache(2**28), PrefixCache(2**28), max_batch=1, batch_wait=0.0)
    with in_process(state) as url:
        yield url


@pytest.fixture(scope="module")
def oracle(tiny_dir, served):
    """``ask(question, n)``: (prompt ids, the new ids ``generate`` gives greedily, their log-probabilities), from
    the checkpoint loaded by transformers with the RoPE scaling the server reports it runs at."""
    import transformers

    factor = _chat(served, "hi", max_tokens=1)["vqa"]["rope_factor"]
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    template = (Path(tiny_dir) / "chat_template.jinja").read_text()
    config = transformers.AutoConfig.from_pretrained(tiny_dir)
    if factor != 1.0:
        config.text_config.rope_parameters = {**(config.text_config.rope_parameters or {}), "rope_type": "linear",
                                              "factor": float(factor)}
    model = transformers.LlavaNextVideoForConditionalGeneration.from_pretrained(tiny_dir, config=config,
                                                                                 dtype=torch.float32)
    model.eval()
    eos = model.generation_config.eos_token_id

    def ask(question: str, n: int) -> tuple[list[int], list[int], list[float]]:
        text = tok.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": question}]}],
                                       chat_template=template, add_generation_prompt=True, tokenize=False)
        ids = tok(text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, do_sample=False, max_new_tokens=n, output_scores=True,
                                 return_dict_in_generate=True)
        new = out.sequences[0, ids["input_ids"].shape[1]:].tolist()
        logp = [float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.scores, new, strict=True)]
        return ids["input_ids"][0].tolist(), new, logp

    ask.tokenizer, ask.eos = tok, eos
    return ask


def _chat(url: str, question: str, **body) -> dict:
    status, reply = http(url + "/v1/chat/completions", {"model": "tiny", "messages": [
        {"role": "user", "content": question}], "temperature": 0, **body})
    assert status == 200, reply
    return reply


def _stream(url: str, question: str, **body) -> tuple[str, list[str], str | None]:
    data = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": question}], "temperature": 0,
                       "stream": True, **body}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=data,
                                     headers={"Content-Type": "application/json"})
    deltas, finish = [], None
    with urllib.request.urlopen(request, timeout=120) as response:
        for line in response.read().decode().splitlines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            for choice in chunk.get("choices") or []:
                deltas.append(choice["delta"].get("content") or "")
                finish = choice.get("finish_reason") or finish
    return "".join(deltas), deltas, finish


def _text(oracle, ids: list[int]) -> str:
    return oracle.tokenizer.decode([i for i in ids if i != oracle.eos], skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def eos_question(oracle) -> str:
    """A question the checkpoint answers with a few tokens and then its eos token (greedy, at most 40 tokens)."""
    for question in CANDIDATES:
        _, new, _ = oracle(question, 40)
        if new[-1] == oracle.eos and len(new) >= 4:
            return question
    raise AssertionError("no candidate question ends with the eos token")


@pytest.mark.parametrize("question", ["Hello there", "Tell me a story.", "eos"])
def test_temperature_0_is_the_models_greedy_generate_and_usage_counts_its_tokens(served, oracle, eos_question,
                                                                                 question):
    question = eos_question if question == "eos" else question
    prompt, new, _ = oracle(question, 24)
    reply = _chat(served, question, max_tokens=24)
    assert reply["choices"][0]["message"]["content"] == _text(oracle, new)
    usage = reply["usage"]
    assert usage["prompt_tokens"] == len(prompt)
    assert usage["completion_tokens"] == len(new)  # the ids generate returned, an eos among them (as vLLM counts)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_finish_reason_at_exactly_the_token_limit(served, oracle, eos_question):
    EOS = eos_question  # noqa: N806
    _, new, _ = oracle(EOS, 40)
    k = len(new) - 1  # tokens before the eos
    cut = _chat(served, EOS, max_tokens=k)  # exactly k tokens, no eos: the limit cut it
    assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == k
    assert cut["choices"][0]["message"]["content"] == _text(oracle, new[:k])
    ended = _chat(served, EOS, max_tokens=k + 1)  # the eos is the last token allowed: the model stopped
    assert ended["choices"][0]["finish_reason"] == "stop"
    assert ended["choices"][0]["message"]["content"] == _text(oracle, new)
    roomy = _chat(served, EOS, max_tokens=k + 5)
    assert roomy["choices"][0]["finish_reason"] == "stop" and roomy["usage"] == ended["usage"]
    for n in (1, k - 1):
        assert _chat(served, EOS, max_tokens=n)["choices"][0]["finish_reason"] == "length"


def test_a_stop_string_at_the_very_start_gives_empty_content(served, oracle):
    _, new, _ = oracle("Hello there", 12)
    full = _text(oracle, new)
    stop = full[:2]
    reply = _chat(served, "Hello there", max_tokens=12, stop=[stop])
    assert reply["choices"][0]["message"]["content"] == "" and reply["choices"][0]["finish_reason"] == "stop"
    streamed, deltas, finish = _stream(served, "Hello there", max_tokens=12, stop=[stop])
    assert streamed == "" and finish == "stop"


@pytest.mark.parametrize("where", ["middle", "false-start", "end"])
def test_a_stream_holds_back_what_may_be_a_stop_string(served, oracle, where):
    _, new, _ = oracle("Tell me a story.", 20)
    full = _text(oracle, new)
    i = len(full) // 2
    stop = {"middle": full[i:i + 4], "false-start": full[i:i + 3] + "\x07", "end": full[-3:]}[where]
    reply = _chat(served, "Tell me a story.", max_tokens=20, stop=[stop])
    content = reply["choices"][0]["message"]["content"]
    streamed, deltas, finish = _stream(served, "Tell me a story.", max_tokens=20, stop=[stop])
    if where == "false-start":  # never completed: everything is released, nothing cut
        assert content == full and streamed.strip() == full and finish == reply["choices"][0]["finish_reason"]
    else:
        assert stop not in streamed and full.find(stop) >= 0
        assert streamed.strip() == content == full[:full.find(stop)].strip()
        assert finish == reply["choices"][0]["finish_reason"] == "stop"


def test_logprobs_have_one_entry_per_generated_token(served, oracle):
    _, new, logp = oracle("Hello there", 16)
    reply = _chat(served, "Hello there", max_tokens=16, logprobs=True, top_logprobs=2)
    entries = reply["choices"][0]["logprobs"]["content"]
    assert len(entries) == len(new) == reply["usage"]["completion_tokens"]
    assert [e["logprob"] for e in entries] == pytest.approx(logp, abs=1e-4)
    joined = ""
    for k, entry in enumerate(entries):  # the entry at step k is what the k-th new token adds to the text
        assert entry["top_logprobs"][0]["logprob"] >= entry["logprob"] - 1e-6
        assert bytes(entry["bytes"]) == entry["token"].encode()
        joined += entry["token"]
        text = oracle.tokenizer.decode(new[: k + 1], skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # a character split over tokens comes with its last token
            assert joined == text


def test_logprob_tokens_concatenate_to_the_content(served):
    reply = _chat(served, "Hello there", max_tokens=16, logprobs=True)
    entries = reply["choices"][0]["logprobs"]["content"]
    assert "".join(e["token"] for e in entries).strip() == reply["choices"][0]["message"]["content"]


# ---- frames sent as images -----------------------------------------------------------------------------
@pytest.mark.parametrize("n, frames", [(5, 3), (7, 4), (4, 4), (3, 8)])
def test_frames_sent_as_images_are_at_k_seconds_spread_evenly(served, n, frames):
    import cv2

    from tests.clips import frame_image

    parts: list[dict] = [{"type": "text", "text": "What happens?"}]
    for i in range(n):
        png = cv2.imencode(".png", frame_image(i, (64, 48)))[1].tobytes()
        parts.append({"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                + base64.b64encode(png).decode()}})
    status, reply = http(served + "/v1/chat/completions", {"model": "tiny", "messages": [
        {"role": "user", "content": parts}], "max_tokens": 2, "frames": frames})
    assert status == 200, reply
    want = list(range(n)) if frames >= n else [int((k + 0.5) * n / frames) for k in range(frames)]
    assert reply["vqa"]["frame_indices"] == want
    assert reply["vqa"]["timestamps"] == [float(k) for k in want]  # frame k is at k seconds (docs/serve.md)


# ---- the data-URL size limit ------------------------------------------------------------------------------
def _data(n: int) -> str:
    return "data:video/mp4;base64," + base64.b64encode(bytes(range(256)) * (n // 256) + b"v" * (n % 256)).decode()


@pytest.mark.parametrize("limit", [3 * 1000, 3 * 2**12])
def test_a_data_url_exactly_at_the_limit_is_taken_and_one_byte_more_is_413(tmp_path, limit):
    policy = MediaPolicy([tmp_path], limit, scratch=tmp_path)
    media = resolve_media(_data(limit), policy)
    assert Path(media.path).stat().st_size == limit
    media.release()
    with pytest.raises(ApiError) as info:
        resolve_media(_data(limit + 1), policy)
    assert info.value.status == 413


@pytest.mark.parametrize("limit", [2**20, 1000])
def test_a_data_url_exactly_at_any_limit_is_taken(tmp_path, limit):
    policy = MediaPolicy([tmp_path], limit, scratch=tmp_path)
    resolve_media(_data(limit), policy).release()


def test_over_http_one_byte_over_the_upload_limit_is_413(served):
    body = {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": _data(2**20 + 1)}}, {"type": "text", "text": "q"}]}]}
    status, _, payload = raw(served + "/v1/chat/completions", "POST", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
    assert status == 413 and json.loads(payload)["error"]["code"] == "media_too_large"
