"""``vqa serve`` against a hostile client: real HTTP requests to a real server process. Every mistake a client
can make is a 4xx OpenAI error object naming the parameter, never a 500, and the server keeps answering.

The server runs under an address-space limit (``RLIMIT_AS``), so a regression that allocates for an absurd
request fails its request instead of taking the machine down.
"""

from __future__ import annotations

import json
import re
import resource
import sys
from pathlib import Path

import pytest

from tests.clips import make_clip
from tests.serve_helpers import raw, start
from vqa_cli.serve._requests import NEUTRAL, OPENAI_FIELDS, VLLM_EXTRAS, VQA_FIELDS
from vqa_cli.wire import WIRE_FIELDS as FIELDS

JSON = {"Content-Type": "application/json"}
HEADROOM = 3 * 2**30  # address space the server may add to what it has mapped once loaded
LIMIT_MIB = 42  # the second server's --max-request-memory
KEY = "hostile-key"  # and its --api-key


def capped(server) -> None:
    """The server process may map at most ``HEADROOM`` more bytes than it has now."""
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    mapped = int(re.search(r"VmSize:\s+(\d+) kB", status).group(1)) * 1024
    resource.prlimit(server.proc.pid, resource.RLIMIT_AS, (mapped + HEADROOM, mapped + HEADROOM))


def started(args: list[str], media: Path):
    server = start(args, cwd=str(media), wait=False)
    if sys.platform.startswith("linux"):
        capped(server)
    server.wait_ready()
    return server


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    make_clip(str(folder / "a.mp4"), 60, fps=30.0, size=(160, 120))
    return folder


@pytest.fixture(scope="module")
def server(tiny_dir, media):
    srv = started(["--model", str(tiny_dir), "--media-root", str(media), "--max-new-tokens", "2"], media)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def limited(tiny_dir, media):
    srv = started(["--model", str(tiny_dir), "--media-root", str(media), "--max-new-tokens", "2",
                   "--max-request-memory", f"{LIMIT_MIB}MiB", "--api-key", KEY], media)
    yield srv
    srv.stop()


def video(url: str = "a.mp4") -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": "What happens?"}]}]


def post(server, body: dict | bytes, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = JSON if headers is None else headers
    if server.proc.args[-2:] == ["--api-key", KEY]:
        headers = {**headers, "Authorization": f"Bearer {KEY}"}
    status, got, reply = raw(server.url + "/v1/chat/completions", "POST", data, headers)
    if got.get("content-type", "").startswith("text/event-stream"):  # a stream: its events, errors included
        events = [json.loads(line[5:]) for line in reply.decode().splitlines() if line.startswith("data: {")]
        return status, next((e for e in events if "error" in e), {"events": events})
    return status, json.loads(reply)


def refused(server, body: dict | bytes, status: int = 400, headers: dict | None = None) -> dict:
    got, reply = post(server, body, headers)
    assert got == status, reply
    assert set(reply) == {"error"} and {"message", "type", "param", "code"} <= set(reply["error"]), reply
    assert "\n" not in reply["error"]["message"]
    return reply["error"]


def answers(server) -> None:
    """The server is alive and answers a normal request."""
    assert server.proc.poll() is None
    status, reply = post(server, {"messages": video(), "frames": 4})
    assert status == 200 and reply["choices"][0]["message"]["content"] is not None, reply


# ---- what a request costs ---------------------------------------------------------------------------------
def test_an_absurd_frame_count_is_refused_naming_the_limit_and_the_server_goes_on(server):
    for body in ({"frames": 10**12}, {"fps": 30, "max_frames": 10**12},
                 {"mm_processor_kwargs": {"num_frames": 10**12}}):
        error = refused(server, {"messages": video(), **body})
        assert error["param"] == "frames" and "--max-request-memory" in error["message"], error
        answers(server)


def test_the_default_limit_is_what_the_machine_had_at_startup(server):
    line = next(line for line in server.stderr if "--max-request-memory" in line)
    stated = float(re.search(r"up to ([\d.]+) GiB", line).group(1)) * 2**30
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
    assert stated > 0
    if total:  # the machine's RAM less what the server holds: below its total (the tiny weights are small)
        assert stated < int(total.group(1)) * 1024


def test_frames_over_the_context_are_context_length_exceeded(server):
    error = refused(server, {"messages": video(), "frames": 5000})  # 5000 x 144 tokens: past every RoPE factor
    assert error["code"] == "context_length_exceeded" and "context" in error["message"]
    error = refused(server, {"messages": video(), "max_tokens": 2**70})
    assert error["code"] == "context_length_exceeded"
    answers(server)


def test_a_request_over_max_request_memory_is_refused_and_one_within_answered(limited, tiny_dir):
    answers(limited)  # 4 frames: about 9 MiB
    frames = 40
    error = refused(limited, {"messages": video(), "frames": frames})
    assert f"{LIMIT_MIB}.0 MiB (--max-request-memory)" in error["message"], error
    need = float(re.search(r"needs ([\d.]+) MiB", error["message"]).group(1)) * 2**20
    # The oracle: what the clip's tensors alone take (each frame's vision features and their projection, float32),
    # from config.json.
    config = json.loads((tiny_dir / "config.json").read_text())
    grid = (config["vision_config"]["image_size"] // config["vision_config"]["patch_size"]) ** 2
    clip = frames * grid * (config["vision_config"]["hidden_size"] + config["text_config"]["hidden_size"]) * 4
    assert need > LIMIT_MIB * 2**20 and need >= clip
    answers(limited)


# ---- values -------------------------------------------------------------------------------------------------
TEXT = b'{"messages": [{"role": "user", "content": "x"}], "temperature": %s}'


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_a_non_finite_temperature_is_a_400_naming_temperature(server, value):
    error = refused(server, TEXT % value)
    assert error["param"] == "temperature" and value.decode() in error["message"], error
    answers(server)


def test_a_negative_temperature_is_a_400_naming_it(server):
    assert refused(server, {"messages": video(), "temperature": -0.5})["param"] == "temperature"


def test_a_seed_past_64_bits_is_a_400_naming_seed(server):
    for seed in (2**70, 2**64, -(2**63) - 1):
        error = refused(server, {"messages": video(), "seed": seed, "temperature": 0.7})
        assert error["param"] == "seed", error
    status, reply = post(server, {"messages": video(), "seed": 2**64 - 1, "temperature": 0.7, "frames": 4})
    assert status == 200, reply  # torch.manual_seed's largest seed
    answers(server)


def test_an_integer_too_long_for_python_is_a_400(server):
    assert "not JSON" in refused(server, b'{"seed": ' + b"9" * 5000 + b"}")["message"]


def test_a_nul_in_a_video_path_is_a_400(server):
    error = refused(server, {"messages": video("a\x00.mp4")})
    assert error["param"] == "messages[0].content[0].video_url.url" and "NUL" in error["message"], error
    assert "NUL" in refused(server, {"messages": video("file:///a%00.mp4")})["message"]  # a file url's %00
    answers(server)


def test_nesting_ten_thousand_deep_is_a_400_not_a_recursion_error(server):
    refused(server, b"[" * 10000 + b"]" * 10000)
    error = refused(server, b'{"messages": [{"role": "user", "content": "x"}], "metadata": '
                    + b'{"a": ' * 70 + b"1" + b"}" * 70 + b"}")
    assert "nested" in error["message"] and error["param"] == "metadata", error
    answers(server)


# ---- the browser -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                  "multipart/form-data; boundary=x", None])
def test_a_body_a_web_page_could_send_unasked_is_refused_without_an_api_key(server, kind):
    body = json.dumps({"messages": video(), "frames": 4}).encode()
    error = refused(server, body, 415, {} if kind is None else {"Content-Type": kind})
    assert "application/json" in error["message"] and error["param"] == "content-type", error
    answers(server)


@pytest.mark.parametrize("role", [[], {}, ["user"], 5, None])
def test_a_role_that_is_not_a_string_is_a_400(server, role):
    assert refused(server, {"messages": [{"role": role, "content": "q"}]})["param"] == "messages"


def test_with_an_api_key_any_content_type_is_read(limited):
    """A page cannot send the key without a preflight: a keyed server reads the body whatever its type."""
    body = json.dumps({"messages": video(), "frames": 4}).encode()
    status, reply = post(limited, body, {"Content-Type": "text/plain"})
    assert status == 200 and reply["choices"][0]["message"]["content"] is not None, reply
    status, _, _ = raw(limited.url + "/v1/chat/completions", "POST", body, {"Content-Type": "text/plain"})
    assert status == 401  # and without the key, nothing


# ---- every field, every wrong shape ------------------------------------------------------------------------
HOSTILE = [None, True, -1, 0, 2**70, -(2**70), 1.5, 1e308, "x", "a\x00b", "", [], [1, 2, 3], [[[]]], {}, {"a": {}},
           {"video": {"num_frames": 2**70}}]
NAMES = sorted(OPENAI_FIELDS | set(NEUTRAL) | VQA_FIELDS | set(FIELDS) | set(VLLM_EXTRAS))


@pytest.mark.parametrize("name", NAMES)
def test_no_value_of_any_field_is_a_server_error(server, name):
    for value in HOSTILE:
        body = {"messages": video(), "max_tokens": 1, "frames": 2, name: value}
        status, reply = post(server, body)
        assert status < 500 and (status >= 400) == ("error" in reply), (name, value, reply)
        if "error" in reply:
            assert reply["error"]["type"] == "invalid_request_error", (name, value, reply)
            assert "\n" not in reply["error"]["message"] and "Traceback" not in reply["error"]["message"]
    assert server.proc.poll() is None
    assert not any("internal error" in line or "Traceback" in line for line in server.stderr), server.stderr


def test_thousands_of_image_urls_decode_only_the_frames_asked_for(server, media):
    """A video sent as its frames (one image_url each): 3000 urls of a 1000 x 1000 image (3000 x 3 MB decoded,
    past the server's address-space headroom) with ``frames: 2`` decode two of them, those
    ``floor((2k + 1) * 3000 / 4)`` picks (frame k is at k seconds)."""
    import cv2
    import numpy as np

    cv2.imwrite(str(media / "big.png"), np.full((1000, 1000, 3), 90, np.uint8))
    parts = [{"type": "image_url", "image_url": {"url": "big.png"}}] * 3000 + [{"type": "text", "text": "What?"}]
    status, reply = post(server, {"messages": [{"role": "user", "content": parts}], "frames": 2})
    assert status == 200, reply
    assert reply["vqa"]["frames"] == 2 and reply["vqa"]["timestamps"] == [750.0, 2250.0], reply["vqa"]
    answers(server)


NESTED = [None, True, 5, -1, 2**70, 1.5, "x", "", "a.mp4", "/etc/passwd", "file:///etc/passwd", "file://host/x",
          "file:%00", "data:", "data:video/mp4;base64,!!", "data:image/png;base64,AAAA", "http://x", "ftp://x",
          "../../etc/passwd", "~root/x", [], {}, [{}], {"url": None}, {"url": 5}, {"url": "a.mp4", "x": 1}]
SHAPES = {
    "video_url": lambda v: [{"role": "user", "content": [{"type": "video_url", "video_url": v},
                                                         {"type": "text", "text": "q"}]}],
    "video_url.url": lambda v: [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": v}},
                                                             {"type": "text", "text": "q"}]}],
    "image_urls": lambda v: [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": v}}] * 2}],
    "role": lambda v: [{"role": v, "content": "q"}],
    "content": lambda v: [{"role": "user", "content": v}],
    "part": lambda v: [{"role": "user", "content": [v]}],
    "part.type": lambda v: [{"role": "user", "content": [{"type": v, "text": "q"}]}],
    "part.text": lambda v: [{"role": "user", "content": [{"type": "text", "text": v}]}],
    "message": lambda v: [v],
    "assistant": lambda v: [{"role": "user", "content": "q"}, {"role": "assistant", "content": v},
                            {"role": "user", "content": "q"}],
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_no_message_shape_is_a_server_error(server, shape):
    for value in NESTED:
        status, reply = post(server, {"messages": SHAPES[shape](value), "max_tokens": 1, "frames": 2})
        assert status < 500 and (status >= 400) == ("error" in reply), (shape, value, reply)
    assert server.proc.poll() is None
    assert not any("internal error" in line for line in server.stderr), server.stderr


@pytest.mark.parametrize("cues", [None, 5, "x", [5], [{}], [{"start": "x", "end": 1, "text": "t"}],
                                  [{"start": 0, "end": -1, "text": "t"}], [{"start": 0, "end": 1, "text": 5}],
                                  [{"start": 2**70, "end": 2**71, "text": "t"}]])
def test_no_subtitles_value_is_a_server_error(server, cues):
    status, reply = post(server, {"messages": video(), "max_tokens": 1, "frames": 2, "subtitles": cues})
    assert status < 500 and (status >= 400) == ("error" in reply), reply


def test_decoded_frames_past_the_limit_are_refused_before_decoding(limited, media):
    """A small file of large frames: 8 decoded 1920 x 1080 frames take 8 x 1920 x 1080 x 3 bytes (47.5 MiB, past
    the 42 MiB limit), priced from the header before any frame is decoded; 2 of them (11.9 MiB) are answered."""
    make_clip(str(media / "wide.mp4"), 10, fps=10.0, size=(1920, 1080))
    error = refused(limited, {"messages": video("wide.mp4"), "frames": 8})
    assert "8 decoded frames of 1920x1080" in error["message"] and f"{LIMIT_MIB}.0 MiB" in error["message"], error
    need = float(re.search(r"needs ([\d.]+) MiB", error["message"]).group(1)) * 2**20
    assert need == pytest.approx(8 * 1920 * 1080 * 3, rel=1e-3)
    status, reply = post(limited, {"messages": video("wide.mp4"), "frames": 2})
    assert status == 200 and reply["vqa"]["frames"] == 2, reply
