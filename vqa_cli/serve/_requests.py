"""An OpenAI chat-completions request -> what vqa runs: turns, one video (or image), settings, sampling.

Everything a client can get wrong is an ``ApiError`` with the HTTP status and OpenAI error type it
deserves, raised before any work is queued.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vqa_cli.errors import InvalidValueError, UsageError
from vqa_cli.output import subtitles
from vqa_cli.remote import wire

MAX_STOPS = 4  # as OpenAI
MAX_TOP_LOGPROBS = 20
URL_TIMEOUT = 30.0
MAX_DEPTH = 64  # the deepest nesting of objects and lists a request body may have (OpenAI's need 6)

# OpenAI fields vqa reads, and those it accepts only at their neutral value (anything else: 400).
OPENAI_FIELDS = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
                 "temperature", "seed", "stop", "logprobs", "top_logprobs", "n", "user", "metadata", "store",
                 "response_format"}
NEUTRAL = {"top_p": 1, "frequency_penalty": 0, "presence_penalty": 0, "n": 1}
VQA_FIELDS = {"cache", "subtitles"}  # vqa's own, besides the settings in ``wire.FIELDS`` (subtitles: cues)
# vLLM's request extras (what lmms-eval and other vLLM clients send): read where they map onto vqa's settings,
# every other key inside them ignored and named (``ChatRequest.ignored``), never refused.
VLLM_EXTRAS = ("media_io_kwargs", "mm_processor_kwargs", "chat_template_kwargs")
SAMPLING_KEYS = ("num_frames", "fps")  # in media_io_kwargs.video and mm_processor_kwargs: vqa's frames and fps
MEDIA_SUFFIX = {"video/mp4": ".mp4", "video/webm": ".webm", "video/x-matroska": ".mkv", "video/quicktime": ".mov",
                "video/x-msvideo": ".avi", "video/avi": ".avi", "video/mpeg": ".mpg", "video/ogg": ".ogv",
                "image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/webp": ".webp",
                "image/bmp": ".bmp"}


class ApiError(Exception):
    """An error answered as OpenAI's JSON error object with ``status``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, exit_code: int = 2) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.exit_code = exit_code  # what ``vqa ask --server`` exits with for it

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          "vqa_exit_code": self.exit_code}}


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_request")


@dataclass
class Media:
    """The request's video or image, as a local file (or, for frames sent as images, the clip they make)."""

    path: str
    source: dict  # what identifies its content (``features.file_identity`` or ``bytes_identity``)
    temporary: bool = False  # an upload written for this request, removed when it is done
    clip: Any = None  # video.Clip of all the frames, when the request sent them as images

    def release(self) -> None:
        if self.temporary:
            Path(self.path).unlink(missing_ok=True)


@dataclass
class MediaPolicy:
    """Where media may come from: ``roots`` (local paths), ``data:`` urls up to ``max_bytes``, and http(s)
    only when ``allow_urls``."""

    roots: list[Path]
    max_bytes: int
    allow_urls: bool = False
    scratch: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))


@dataclass
class ChatRequest:
    id: str
    model: str | None
    turns: list[dict]  # [{"role": "system"|"user"|"assistant", "text": ...}], the last one the user's
    urls: list[str]  # the video_url or image_url as sent; several image_urls: the frames of one video
    settings: Any  # engine.RunSettings for this request
    stream: bool = False
    include_usage: bool = False
    stops: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    use_cache: bool = True
    cues: list = field(default_factory=list)  # the video's subtitles (``subtitles.from_wire``)
    subtitle_tokens: int = 0  # what those on screen at the sampled frames took (``subtitles.into_turns``)
    created: int = field(default_factory=lambda: int(time.time()))
    ignored: list[str] = field(default_factory=list)  # request keys that had no effect (``x-vqa-ignored``)

    @property
    def text_only(self) -> bool:
        """No video or image anywhere in the conversation: the language model answers alone."""
        return not self.urls

    @property
    def history(self) -> list[dict]:
        return self.turns[:-1]

    @property
    def question(self) -> str:
        return self.turns[-1]["text"]

    @property
    def first_question(self) -> str:
        """The first user message's text (guides --guide pooling, as ``vqa ask``'s question does)."""
        return next(t["text"] for t in self.turns if t["role"] == "user")

    def batchable(self) -> bool:
        """One question about a video, nothing streamed or scored: may share a batched generate with others."""
        return len(self.turns) == 1 and not self.stream and not self.logprobs and not self.text_only


# ---- the body ----------------------------------------------------------------------------------------
class NonFinite:
    """A number JSON cannot hold (``NaN``, ``Infinity``, ``1e999``) where the body had it, to be named."""

    def __init__(self, text: str) -> None:
        self.text = text


def _float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else NonFinite(text)


def read_json(data: bytes) -> Any:
    """A request body as JSON, refused (400) unless it is strict JSON: no ``NaN`` or ``Infinity`` (Python's json
    takes them) nor numbers past a float's range, no NUL in any string, at most ``MAX_DEPTH`` levels deep. The
    problem's place is named (``param``: ``temperature``, ``messages[0].content``)."""
    try:
        body = json.loads(data, parse_constant=NonFinite, parse_float=_float)
    except RecursionError:
        raise bad(f"the request body is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, an integer of over 4300 digits, bad UTF-8
        raise bad(f"the request body is not JSON ({exc})") from None
    stack: list[tuple[Any, str, int]] = [(body, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, NonFinite):
            raise bad(f"{where or 'the body'} must be a finite number, not {value.text} (JSON has no NaN or "
                      "Infinity)", where or None)
        if isinstance(value, str) and "\0" in value:
            raise bad(f"{where or 'the body'} has a NUL character", where or None)
        if isinstance(value, dict | list):
            if depth >= MAX_DEPTH:  # named by its top-level field
                raise bad(f"the request body is nested too deeply (at most {MAX_DEPTH} levels)",
                          where.split(".")[0].split("[")[0] or None)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and "\0" in key:
                    raise bad(f"a key of {where or 'the body'} has a NUL character", where or None)
                inner = (f"{where}.{key}" if where else str(key)) if isinstance(value, dict) else f"{where}[{key}]"
                stack.append((item, inner, depth + 1))
    return body


def _number(body: dict, name: str, kind: tuple[type, ...], low: float | None = None) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise bad(f"{name} must be {'an integer' if kind == (int,) else 'a number'}, not {_shown(value)}", name)
    if low is not None and value < low:
        raise bad(f"{name} must be at least {low:g}", name)
    return value


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _text_of(content: Any, role: str, index: int) -> tuple[str, list[dict]]:
    """A message's text and its media parts."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad(f"messages[{index}].content must be a string or a list of parts", "messages")
    texts, media = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("video_url", "image_url"):
            if role != "user":
                raise bad(f"messages[{index}]: only a user message can hold a {kind}", "messages")
            inner = part.get(kind)
            url = inner.get("url") if isinstance(inner, dict) else inner
            if not isinstance(url, str) or not url:
                raise bad(f"messages[{index}]: {kind} needs a url", "messages")
            media.append({"type": kind, "url": url})
        else:
            raise bad(f"messages[{index}]: unsupported content part {kind!r} (text, video_url, image_url)", "messages")
    return "\n".join(texts), media


def _media_parts(message: dict) -> list[dict]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [p for p in content if isinstance(p, dict) and p.get("type") in ("video_url", "image_url")]


def _turns(messages: Any) -> tuple[list[dict], list[str]]:
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages")
    turns, urls = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad(f"messages[{i}] must be an object", "messages")
        given = message.get("role")
        role = {"developer": "system"}.get(given, given) if isinstance(given, str) else None
        if role not in ("system", "user", "assistant"):
            raise bad(f"messages[{i}]: unsupported role {message.get('role')!r}", "messages")
        text, media = _text_of(message.get("content"), role, i)
        if media and any(t["role"] == "user" for t in turns):
            raise bad(f"messages[{i}]: the video must be in the first user message", "messages")
        urls.extend(m["url"] for m in media)
        turns.append({"role": role, "text": text})
    kinds = {m["type"] for t in messages if isinstance(t, dict) for m in _media_parts(t)}
    if len(urls) > 1 and kinds != {"image_url"}:
        raise bad(f"a conversation takes one video_url, or image_urls (the frames of one video), in its first "
                  f"user message, not {len(urls)} urls", "messages")
    order = [t["role"] for t in turns if t["role"] != "system"]
    if any(t["role"] == "system" for t in turns[1:]):
        raise bad("a system message may only come first", "messages")
    if not order or order[-1] != "user" or any(a == b for a, b in zip(order, order[1:], strict=False)):
        raise bad("messages must alternate user and assistant turns, and end with the user's", "messages")
    return turns, urls


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise bad(f"stop must be a string or a list of up to {MAX_STOPS} non-empty strings", "stop")
    return stops


def _response_format(value: Any) -> None:
    """Free text is all vqa answers in: ``{"type": "text"}`` is accepted, JSON output is refused."""
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return
    if kind in ("json_object", "json_schema"):
        raise bad(f"response_format {kind} is not supported: vqa answers in free text (send {{\"type\": \"text\"}} "
                  "or leave response_format out, and ask for JSON in the prompt)", "response_format")
    raise bad(f"response_format must be {{\"type\": \"text\"}}, not {value!r}", "response_format")


def _object(body: dict, name: str, param: str | None = None) -> dict:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"{param or name} must be an object", param or name)
    return value


def _sampling(values: dict, prefix: str) -> dict:
    """``num_frames`` and ``fps`` of ``values`` as vqa's sampling fields (vLLM: a value of 0 or less is unset)."""
    count, rate = values.get("num_frames"), values.get("fps")
    for name, value, kinds in (("num_frames", count, (int,)), ("fps", rate, (int, float))):
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise bad(f"{prefix}.{name} must be {'an integer' if name == 'num_frames' else 'a number'}, not "
                      f"{value!r}", f"{prefix}.{name}")
    count = count if count is not None and count > 0 else None
    rate = rate if rate is not None and rate > 0 else None
    if rate is not None:  # vLLM samples min(num_frames, duration x fps) frames: vqa's --fps with --max-frames
        return {"fps": rate, **({"max_frames": count} if count is not None else {})}
    return {"frames": count} if count is not None else {}


def vllm_fields(body: dict) -> tuple[dict, list[str]]:
    """vLLM's request extras as vqa's settings (``wire.FIELDS``), and the keys that had no effect.

    ``media_io_kwargs.video`` and ``mm_processor_kwargs`` may say ``num_frames`` and ``fps``: ``num_frames``
    alone is vqa's ``frames``; ``fps`` is vqa's ``fps``, capped by ``num_frames`` as ``max_frames``. The first
    of vqa's own fields (``frames``, ``fps``, ``max_frames``), ``media_io_kwargs.video`` and
    ``mm_processor_kwargs`` that chooses frames decides; the later ones' sampling keys are named as ignored.
    ``do_sample_frames`` is acknowledged (vqa always samples; with false the processor's ``num_frames`` and
    ``fps`` do not apply, as in transformers). Everything else (``max_pixels``, ``chat_template_kwargs``, other
    modalities...) has no equivalent in vqa and is named as ignored.
    """
    ignored: list[str] = []
    io = _object(body, "media_io_kwargs")
    video = _object(io, "video", "media_io_kwargs.video")
    processor = _object(body, "mm_processor_kwargs")
    ignored += [f"media_io_kwargs.{k}" for k in io if k != "video"]
    ignored += [f"media_io_kwargs.video.{k}" for k in video if k not in SAMPLING_KEYS]
    do_sample = processor.get("do_sample_frames", True)
    if not isinstance(do_sample, bool):
        raise bad("mm_processor_kwargs.do_sample_frames must be true or false", "mm_processor_kwargs.do_sample_frames")
    ignored += [f"mm_processor_kwargs.{k}" for k in processor if k not in (*SAMPLING_KEYS, "do_sample_frames")]
    ignored += [f"chat_template_kwargs.{k}" for k in _object(body, "chat_template_kwargs")]
    chosen = any(body.get(name) is not None for name in ("frames", "fps", "max_frames"))
    fields: dict = {}
    for prefix, values, applies in (("media_io_kwargs.video", video, True),
                                    ("mm_processor_kwargs", processor, do_sample)):
        mapped = _sampling(values, prefix)
        used = mapped and applies and not chosen
        if used:
            fields, chosen = mapped, True
        # A key that took effect is a positive value of the source used; any other was ignored.
        ignored += [f"{prefix}.{k}" for k in SAMPLING_KEYS
                    if k in values and not (used and values[k] is not None and values[k] > 0)]
    return fields, sorted(ignored)


def parse_chat(body: Any, defaults: Any) -> ChatRequest:
    """A chat-completions request body -> ``ChatRequest`` with its settings (``defaults``: the server's)."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    for name, neutral in NEUTRAL.items():
        if body.get(name) not in (None, neutral):
            raise bad(f"{name} other than {neutral} is not supported", name)
    unknown = sorted(set(body) - OPENAI_FIELDS - set(NEUTRAL) - VQA_FIELDS - set(wire.FIELDS) - set(VLLM_EXTRAS))
    if unknown:
        raise bad(f"unknown field {unknown[0]!r} (vqa's own fields: {', '.join(wire.FIELDS)}, cache)", unknown[0])
    if not isinstance(body.get("model"), str | None):
        raise bad("model must be a string", "model")
    _response_format(body.get("response_format"))
    extra_fields, ignored = vllm_fields(body)
    turns, urls = _turns(body.get("messages"))
    max_tokens = _number(body, "max_completion_tokens", (int,), 1) or _number(body, "max_tokens", (int,), 1)
    temperature = _number(body, "temperature", (int, float), 0)
    seed = _number(body, "seed", (int,))
    logprobs = body.get("logprobs") or False
    top = _number(body, "top_logprobs", (int,), 0) or 0
    if top > MAX_TOP_LOGPROBS:
        raise bad(f"top_logprobs must be at most {MAX_TOP_LOGPROBS}", "top_logprobs")
    if top and not logprobs:
        raise bad("top_logprobs needs logprobs: true", "top_logprobs")
    stream = bool(body.get("stream"))
    if logprobs and stream:
        raise bad("logprobs are returned without stream: send stream: false", "logprobs")
    try:  # RunSettings checks the values (engine.check_values), as for the command line
        settings = wire.apply_fields(defaults, {**extra_fields, **{k: body[k] for k in wire.FIELDS if k in body}})
        settings = replace(settings, max_new_tokens=max_tokens or defaults.max_new_tokens,
                           temperature=defaults.temperature if temperature is None else float(temperature),
                           seed=defaults.seed if seed is None else seed)
    except InvalidValueError as exc:
        raise bad(str(exc), exc.param) from None
    except UsageError as exc:
        raise bad(str(exc), next((k for k in wire.FIELDS if str(exc).startswith(k + " ")), None)) from None
    try:
        cues = subtitles.from_wire(body.get(subtitles.WIRE_FIELD))
    except UsageError as exc:
        raise bad(str(exc), subtitles.WIRE_FIELD) from None
    options = _object(body, "stream_options")
    return ChatRequest(id=f"chatcmpl-{uuid.uuid4().hex}", model=body.get("model"), turns=turns, urls=urls,
                       settings=settings, stream=stream, include_usage=bool(options.get("include_usage")),
                       stops=_stops(body.get("stop")), logprobs=bool(logprobs), top_logprobs=top,
                       use_cache=body.get("cache", True) is not False, ignored=ignored, cues=cues)


# ---- what a request costs --------------------------------------------------------------------------
def _is_image_url(url: str) -> bool:
    from vqa_cli.video import is_image_path

    if url[:5].lower() == "data:":
        return url[5:].lower().startswith("image/")
    return is_image_path(urllib.parse.urlparse(url).path if "://" in url[:12] else url)


def _too_much(need: int, limit: int, what: str) -> ApiError:
    from vqa_cli.units import size_text

    return ApiError(400, f"this request needs {size_text(need)} ({what}); this server takes requests of up to "
                         f"{size_text(limit)} (--max-request-memory)", param="frames", code="request_too_large")


def price(request: ChatRequest, engine: Any, limit: int | None) -> None:
    """The memory the request's settings need, checked before anything is decoded or allocated for it, with
    the estimate ``--plan`` prints (``fit.estimate``, ``memory.request_memory``): its KV cache and activations
    must fit ``limit`` bytes (``--max-request-memory``; None: unlimited), its tokens the context
    (``context_length_exceeded``). The frame count is priced first from the clip's own tensors
    (``memory.activation_bytes``), which takes no memory however large it is: the token budget's plan holds a
    position per frame. A still image is one frame; a text-only chat is checked against the context when it
    runs."""
    from vqa_cli import units
    from vqa_cli.model import fit

    if request.text_only or (len(request.urls) == 1 and _is_image_url(request.urls[0])):
        return
    view = engine.with_settings(request.settings)
    frames = view.checkpoint.frames_for(request.settings)
    tgt = fit.target(request.settings)
    floor = fit.frames_floor(view.checkpoint, request.settings, frames)
    room = limit if limit is not None else fit.available_ram()  # without a limit, still no more than the RAM has
    if room is not None and floor > room:
        raise _too_much(floor, room, f"at least, for the tensors of {frames} frames")
    settings = replace(request.settings, frames=frames)
    budget = view.checked_budget(settings, request.first_question)  # too many tokens: context_length_exceeded
    if limit is not None:
        est = fit.estimate(view.checkpoint, settings, budget, tgt=tgt)
        need = est.kv_cache_bytes + est.activation_bytes
        if need > limit:
            raise _too_much(need, limit, f"KV cache {units.size_text(est.kv_cache_bytes)} and activations "
                                         f"{units.size_text(est.activation_bytes)} for {frames} frames and "
                                         f"{budget.total} tokens")


# ---- media ---------------------------------------------------------------------------------------
def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _local(url: str, policy: MediaPolicy) -> Media:
    from vqa_cli.model.features import file_identity

    if url.startswith("file:"):
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise bad(f"file url {url!r} names another host")
        raw = urllib.parse.unquote(parsed.path)
    else:
        raw = url
    if "\0" in raw:  # a file url's %00
        raise bad(f"the media path {url!r} has a NUL character")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = policy.roots[0] / path
    real = Path(os.path.realpath(path))
    if not _inside(real, policy.roots):
        raise ApiError(403, f"{raw!r} is outside the folders this server may read (--media-root)",
                       type="permission_error", code="outside_media_root")
    if not real.is_file():
        raise ApiError(400, f"no such file: {raw!r}", code="not_found")
    return Media(str(real), file_identity(str(real)))


def _write_upload(data: bytes, suffix: str, policy: MediaPolicy) -> Media:
    from vqa_cli.model.features import bytes_identity

    fd, name = tempfile.mkstemp(prefix="vqa-upload-", suffix=suffix, dir=policy.scratch)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Media(name, bytes_identity(data), temporary=True)


def _too_large(size: int, policy: MediaPolicy) -> ApiError:
    return ApiError(413, f"the media is {size / 2**20:.1f} MiB; this server takes up to "
                         f"{policy.max_bytes / 2**20:.0f} MiB (--max-upload-mb)", code="media_too_large")


def _data_url(url: str, policy: MediaPolicy) -> Media:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise bad("a data: url must be base64 (data:video/mp4;base64,...)")
    mime = header[len("data:"):-len(";base64")].lower()
    if mime not in MEDIA_SUFFIX:
        raise bad(f"unsupported media type {mime!r} ({', '.join(sorted(MEDIA_SUFFIX))})")
    size = len(payload) * 3 // 4 - payload[-2:].count("=")  # the decoded bytes: padding carries none
    if size > policy.max_bytes:
        raise _too_large(size, policy)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad("the data: url is not valid base64") from None
    return _write_upload(data, MEDIA_SUFFIX[mime], policy)


def _http_url(url: str, policy: MediaPolicy) -> Media:
    if not policy.allow_urls:
        raise ApiError(400, "http(s) media urls are off: start the server with --allow-urls", code="urls_disabled")
    suffix = Path(urllib.parse.urlparse(url).path).suffix.lower() or ".mp4"
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT) as response:  # noqa: S310 - http(s) checked by caller
            data = response.read(policy.max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise bad(f"cannot fetch {url!r}: {getattr(exc, 'reason', exc)}") from None
    if len(data) > policy.max_bytes:
        raise _too_large(len(data), policy)
    return _write_upload(data, suffix, policy)


def resolve_frames(urls: list[str], policy: MediaPolicy, frames: int | None = None) -> Media:
    """Several images, in order, as the frames of one video (how lmms-eval's ``openai_compatible`` model and
    other OpenAI clients send a video). Their times are not known: frame k is at k seconds. Every url is
    checked, but only the ``frames`` the request samples (spread evenly, as ``_worker.pick_frames`` takes them)
    are decoded: however many urls a request sends, it holds no more images than it was priced for."""
    from vqa_cli.video import Clip, read_image, uniform_indices
    from vqa_cli.video._capture import stack

    parts = [resolve_media(url, policy) for url in urls]
    n = len(parts)
    keep = list(range(n)) if frames is None else uniform_indices(n, frames)
    try:
        images = [read_image(parts[i].path).frames[0] for i in keep]
    finally:
        for part in parts:
            part.release()
    clip = Clip(path="<frames>", frames=stack(images), indices=keep, timestamps=[float(i) for i in keep],
                duration=float(n), fps=1.0, frames_from_content=n, is_image=False, frames_from_header=n,
                fps_from_header=0.0, decoded=len(keep), decoder="images")
    return Media("", {"frames": [part.source for part in parts]}, clip=clip)


def frame_size(path: str) -> tuple[int, int] | None:
    """(width, height) of a video's or an image's frames from its header, nothing decoded; None when unknown."""
    from vqa_cli.video import is_image_path

    if is_image_path(path):
        from PIL import Image

        try:
            with Image.open(path) as image:
                return image.size
        except Image.DecompressionBombError as exc:
            raise bad(f"the image is too large to decode: {exc}") from None
        except Exception:  # noqa: BLE001 - not an image PIL reads: the decoder says so, or OpenCV reads it
            return None
    import cv2

    capture = cv2.VideoCapture(path)
    try:
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()
    return (width, height) if width > 0 and height > 0 else None


def price_decoded(path: str, frames: int, limit: int | None) -> None:
    """The decoded frames (RGB, 3 bytes a pixel) of ``path`` must fit ``limit``: priced from the header's frame
    size before anything is decoded (``price`` prices the model's side; a video's resolution is only known
    here). A file whose size the header does not say is not priced."""
    size = frame_size(path) if limit is not None else None
    if size is not None and frames * size[0] * size[1] * 3 > limit:
        raise _too_much(frames * size[0] * size[1] * 3, limit, f"{frames} decoded frames of {size[0]}x{size[1]}")


def resolve(urls: list[str], policy: MediaPolicy, frames: int | None = None, limit: int | None = None) -> Media:
    """The request's media: one file, or several images making one video (``frames`` of them decoded). One
    file's decoded frames are priced against ``limit`` (``price_decoded``)."""
    if len(urls) > 1:
        return resolve_frames(urls, policy, frames)
    media = resolve_media(urls[0], policy)
    try:
        price_decoded(media.path, 1 if _is_image_url(media.path) else frames or 1, limit)
    except BaseException:
        media.release()
        raise
    return media


def resolve_media(url: str, policy: MediaPolicy) -> Media:
    """The request's media url as a local file this server may read (see ``MediaPolicy``)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url[:12] else ""
    if scheme == "data":
        return _data_url(url, policy)
    if scheme in ("http", "https"):
        return _http_url(url, policy)
    if scheme not in ("", "file"):
        raise bad(f"unsupported url scheme {scheme!r}: a path, file://, data: or http(s)")
    return _local(url, policy)
