"""An OpenAI chat-completions request (and vLLM's extras) -> what vqa runs: turns, the media urls, settings,
sampling, stop strings.

Everything a client can get wrong is an ``ApiError`` with the HTTP status and OpenAI error type it
deserves, raised before any work is queued.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from vqa_cli.errors import InvalidValueError, UsageError
from vqa_cli.output import subtitles
from vqa_cli.serve._body import bad
from vqa_cli.wire import WIRE_FIELDS, apply_fields

if TYPE_CHECKING:
    from vqa_cli.settings import RunSettings

MAX_STOPS = 4  # as OpenAI
MAX_TOP_LOGPROBS = 20

# OpenAI fields vqa reads, and those it accepts only at their neutral value (anything else: 400).
OPENAI_FIELDS = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
                 "temperature", "seed", "stop", "logprobs", "top_logprobs", "n", "user", "metadata", "store",
                 "response_format"}
NEUTRAL = {"top_p": 1, "frequency_penalty": 0, "presence_penalty": 0, "n": 1}
VQA_FIELDS = {"cache", "subtitles"}  # vqa's own, besides the settings in ``wire.WIRE_FIELDS`` (subtitles: cues)
# vLLM's request extras (what lmms-eval and other vLLM clients send): read where they map onto vqa's settings,
# every other key inside them ignored and named (``ChatRequest.ignored``), never refused.
VLLM_EXTRAS = ("media_io_kwargs", "mm_processor_kwargs", "chat_template_kwargs")
SAMPLING_KEYS = ("num_frames", "fps")  # in media_io_kwargs.video and mm_processor_kwargs: vqa's frames and fps

@dataclass
class ChatRequest:
    id: str
    model: str | None
    turns: list[dict]  # [{"role": "system"|"user"|"assistant", "text": ...}], the last one the user's
    urls: list[str]  # the video_url or image_url as sent; several image_urls: the frames of one video
    settings: RunSettings  # for this request
    stream: bool = False
    include_usage: bool = False
    stops: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    use_cache: bool = True
    cues: list = field(default_factory=list)  # the video's subtitles (``subtitles.from_wire``)
    cues_given: bool = False  # the request sent them (else the settings' --subtitles decide: ``_worker``)
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
    """vLLM's request extras as vqa's settings (``wire.WIRE_FIELDS``), and the keys that had no effect.

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


def parse_chat(body: object, defaults: RunSettings) -> ChatRequest:
    """A chat-completions request body -> ``ChatRequest`` with its settings (``defaults``: the server's)."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    for name, neutral in NEUTRAL.items():
        if body.get(name) not in (None, neutral):
            raise bad(f"{name} other than {neutral} is not supported", name)
    unknown = sorted(set(body) - OPENAI_FIELDS - set(NEUTRAL) - VQA_FIELDS - set(WIRE_FIELDS) - set(VLLM_EXTRAS))
    if unknown:
        raise bad(f"unknown field {unknown[0]!r} (vqa's own fields: {', '.join(WIRE_FIELDS)}, cache)", unknown[0])
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
    try:  # RunSettings checks the values (settings.check_values), as for the command line
        settings = apply_fields(defaults, {**extra_fields, **{k: body[k] for k in WIRE_FIELDS if k in body}})
        settings = replace(settings, max_new_tokens=max_tokens or defaults.max_new_tokens,
                           temperature=defaults.temperature if temperature is None else float(temperature),
                           seed=defaults.seed if seed is None else seed)
    except InvalidValueError as exc:
        raise bad(str(exc), exc.param) from None
    except UsageError as exc:
        raise bad(str(exc), next((k for k in WIRE_FIELDS if str(exc).startswith(k + " ")), None)) from None
    said = body.get(subtitles.WIRE_FIELD)
    if isinstance(said, str):  # "asr": the video's speech, transcribed here; "off": none (else: the server's)
        if said not in subtitles.WIRE_CHOICES:
            raise bad(f"subtitles must be {' or '.join(map(repr, subtitles.WIRE_CHOICES))} or a list of [start, "
                      f"end, text] cues, not {_shown(said)}", subtitles.WIRE_FIELD)
        settings, said = replace(settings, subtitles=said), None
    try:
        cues = subtitles.from_wire(said)
    except UsageError as exc:
        raise bad(str(exc), subtitles.WIRE_FIELD) from None
    options = _object(body, "stream_options")
    return ChatRequest(id=f"chatcmpl-{uuid.uuid4().hex}", model=body.get("model"), turns=turns, urls=urls,
                       settings=settings, stream=stream, include_usage=bool(options.get("include_usage")),
                       stops=_stops(body.get("stop")), logprobs=bool(logprobs), top_logprobs=top,
                       use_cache=body.get("cache", True) is not False, ignored=ignored, cues=cues,
                       cues_given=said is not None)
