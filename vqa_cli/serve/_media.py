"""The request's media: a path under ``--media-root``, a ``data:`` url or (with ``--allow-urls``) an http(s) url as
a local file, or several images as the frames of one video; their decoded frames priced before decoding."""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vqa_cli.serve._body import ApiError, bad, too_much

if TYPE_CHECKING:
    from vqa_cli.video import Clip

URL_TIMEOUT = 30.0
MEDIA_SUFFIX = {"video/mp4": ".mp4", "video/webm": ".webm", "video/x-matroska": ".mkv", "video/quicktime": ".mov",
                "video/x-msvideo": ".avi", "video/avi": ".avi", "video/mpeg": ".mpg", "video/ogg": ".ogv",
                "image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/webp": ".webp",
                "image/bmp": ".bmp"}


@dataclass
class Media:
    """The request's video or image, as a local file (or, for frames sent as images, the clip they make)."""

    path: str
    source: dict  # what identifies its content (``features.file_identity`` or ``bytes_identity``)
    temporary: bool = False  # an upload written for this request, removed when it is done
    clip: Clip | None = None  # all the frames, when the request sent them as images

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


def is_image_url(url: str) -> bool:
    from vqa_cli.video import is_image_path

    if url[:5].lower() == "data:":
        return url[5:].lower().startswith("image/")
    return is_image_path(urllib.parse.urlparse(url).path if "://" in url[:12] else url)


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
        raise too_much(frames * size[0] * size[1] * 3, limit, f"{frames} decoded frames of {size[0]}x{size[1]}")


def resolve(urls: list[str], policy: MediaPolicy, frames: int | None = None, limit: int | None = None) -> Media:
    """The request's media: one file, or several images making one video (``frames`` of them decoded). One
    file's decoded frames are priced against ``limit`` (``price_decoded``)."""
    if len(urls) > 1:
        return resolve_frames(urls, policy, frames)
    media = resolve_media(urls[0], policy)
    try:
        price_decoded(media.path, 1 if is_image_url(media.path) else frames or 1, limit)
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
