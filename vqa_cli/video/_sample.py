"""``sample_frames``: a video file -> the requested frames, by the packet index or a counting pass."""

from __future__ import annotations

from vqa_cli.settings import SeekMode
from vqa_cli.video import _capture, _decoder, _pyav
from vqa_cli.video._counting import sample_counting
from vqa_cli.video._index import PacketIndex, scan_index
from vqa_cli.video._inputs import Clip, Deadline, check_file, is_image_path
from vqa_cli.video._options import DecodeOptions
from vqa_cli.video._packets import decode_from_packets
from vqa_cli.video._sampling import Request, Timeline, plausible_fps, validate
from vqa_cli.video._seeking import Job, Mismatch, decode_walking
from vqa_cli.video._strategy import choose, exact_cost, keyframe_cost


def sample_frames(
    path: str,
    num_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    timeout: float | None = None,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    seek: SeekMode = "exact",
    options: DecodeOptions | None = None,
) -> Clip:
    """Sample frames from a video (optionally within [start, end) seconds).

    Exactly one of ``num_frames`` and ``fps`` is required:

    * ``num_frames``: that many frames, uniform over the window's frames (the
      middle frame of each of ``num_frames`` equal segments: ``uniform_indices``);
    * ``fps``: a rate over the window's real duration: ``floor(seconds * fps)``
      equal time slices (at least one) and the frame shown at the middle of each.
      For a constant frame rate these are the frames ``num_frames`` would give;
      for a variable one every slice of time gets its frame.

    ``max_frames`` caps either.  The window and the spreading use the real frame
    count and timestamps, never the header's.  Fewer frames than asked are
    returned when the video (or window) has fewer.  A window in which no frame
    starts (a frame held on screen for seconds, a variable frame rate) gives the
    frame on screen during it (``Timeline.on_screen``), with its own index and
    timestamp, which lie before ``start``.  Image paths are read as one-frame
    clips (the window is ignored).

    ``seek`` chooses how the frames are reached:

    * ``"exact"`` (default): exactly the frames a full sequential decode gives at
      the uniform indices, decoding as little as possible.
    * ``"keyframe"``: each target snaps to its nearest keyframe inside the window
      and only that keyframe is decoded (about one decoded frame per returned
      frame), for very long videos.  Targets sharing a keyframe give one frame,
      so fewer frames than asked may come back; indices and timestamps are those
      of the frames returned.  Keyframes that cannot be decoded from their
      packet alone (VP8/VP9, Theora, open-GOP H.264) are reached by seeking, which
      decodes from the keyframe before.  Damage in the frames in between cannot be
      seen (indices then follow the packets; timestamps are the frames' own).
    * ``"auto"``: ``"keyframe"`` when exact decoding would decode more than
      ``options.auto_keyframe_above`` frames, every target has a keyframe of its own and
      keyframe seeking would decode fewer frames; ``"exact"`` otherwise.

    ``clip.seek`` says which was used.  ``timeout`` (seconds) bounds the whole
    call; it is checked between frames.  ``options`` sets cores, parallel
    captures, the auto threshold and the decoder (``DecodeOptions()`` when not
    given): ``decoder="auto"`` decodes with OpenCV when it decodes the file's
    first frame and with PyAV otherwise, ``"opencv"`` or ``"pyav"`` force one;
    either gives the same frames, and ``clip.decoder`` says which did.

    Raises VideoError (one-line message) for unusable files, a forced decoder
    that cannot decode the file, bad windows and timeouts; ValueError for bad
    ``num_frames``/``fps``/``max_frames``/``seek``/``timeout``.
    """
    request = validate(num_frames, fps, max_frames, seek, start, end)
    if options is None:
        options = DecodeOptions()
    if is_image_path(path):
        return _capture.read_image(path)

    fs_path = check_file(path)
    deadline = Deadline(path, timeout)
    index = scan_index(fs_path, deadline)
    if _decoder.wanted(path, fs_path, index, options.decoder):  # decided once per file (see _decoder.wanted)
        return _checked_count(_pyav.sample_pyav(path, fs_path, request, seek, deadline, options))
    if index is not None:
        try:
            return _checked_count(_sample_indexed(path, fs_path, index, request, seek, deadline, options))
        except Mismatch:
            pass  # the counting pass below decides
    return _checked_count(sample_counting(path, fs_path, index, request, deadline, options))


def frame_times(path: str, timeout: float | None = None) -> tuple[list[float], float] | None:
    """Every frame's own presentation time (seconds, 3 decimals, in presentation order) and the video's
    duration, from the packet index (nothing is decoded); None when the file has no usable index."""
    deadline = Deadline(path, timeout)
    index = scan_index(check_file(path), deadline)
    if index is None:
        return None
    timeline = Timeline.from_ms(index.ms, index.fps_from_header)
    return timeline.timestamps, timeline.duration


def _checked_count(clip: Clip) -> Clip:
    """Warn when the file holds a frame count other than its header's (a file cut short looks whole), unless
    it holds fewer frames and its timestamps reach the header's end (a variable frame rate: ``_reaches_end``)."""
    if clip.frames_from_header > 0 and abs(clip.frames_from_content - clip.frames_from_header) > 1 and not (
        clip.frames_from_content < clip.frames_from_header and _reaches_end(clip)
    ):
        clip.warnings.append(f"the header says {clip.frames_from_header} frames but {clip.frames_from_content} were "
                             "found: the file may be cut short or damaged")
    return clip


def _reaches_end(clip: Clip) -> bool:
    """Whether the frames' timestamps reach the end the header claims: the last frame's pts plus its duration
    (one frame at the header's rate: what muxers store as a frame's default duration) at or past the header's
    duration (its frame count over its rate: FFmpeg's count is duration x nominal rate where the container
    stores none), within one such frame.  A variable-frame-rate file (a screen recording at a nominal 30 fps
    holding a frame every few seconds) claims far more frames than it holds yet is whole; a file cut short
    stops early in time as well."""
    if not (plausible_fps(clip.fps_from_header) and clip.fps > 0):
        return False
    frame = 1.0 / clip.fps_from_header
    last_pts = clip.duration - 1.0 / clip.fps  # the timeline's duration is its last pts + its frame interval
    header_end = clip.frames_from_header * frame
    return last_pts + frame >= header_end - frame - 2e-3  # timestamps are rounded to milliseconds


def _sample_indexed(
    path: str,
    fs_path: str,
    index: PacketIndex,
    request: Request,
    seek: str,
    deadline: Deadline,
    options: DecodeOptions,
) -> Clip:
    """Sample with the packet index; raises Mismatch when the decoder disagrees with it."""
    timeline = Timeline.from_ms(index.ms, index.fps_from_header)
    targets = timeline.targets(request, path)
    warnings: list[str] = []
    choice = choose(index, timeline, request, targets, seek, options)
    mode, keys = choice.mode, choice.keys

    decoded = 0
    if mode == "keyframe":
        job = Job(path, fs_path, index, set(keys), deadline)
        via_packets = keyframe_cost(index, keys)[1]
        done = decode_from_packets(job, keys, keyframes=True, options=options) if via_packets else None
        if done is not None:
            decoded, exactly = done
            if exactly:
                warnings.append(
                    f"{exactly} keyframe{'s' if exactly != 1 else ''} did not decode on their own; decoded exactly"
                )
        elif via_packets and seek == "auto":
            mode = "exact"
        else:
            job = Job(path, fs_path, index, set(keys), deadline)
            decoded += decode_walking(job, keys, eof=True, options=options)
            if via_packets:
                warnings.append("keyframes of this file do not decode on their own; decoded them by seeking")
    if mode == "exact":
        job = Job(path, fs_path, index, set(targets), deadline)
        decoded += _decode_exact(job, targets, options)
        chosen = targets
    else:
        chosen = keys
        if len(keys) < len(targets):
            warnings.append(_capture.shared_keys_warning(len(targets), len(keys)))
    if any(i not in job.frames for i in chosen):
        raise Mismatch("a target was not decoded")
    return _capture.sampled(
        path, timeline, chosen, job.frames,
        frames_from_content=index.frames_from_content,
        frames_from_header=index.frames_from_header,
        fps_from_header=index.fps_from_header,
        seek=mode,
        decoded=decoded,
        warnings=warnings,
        codec=index.codec,
    )


def _decode_exact(job: Job, targets: list[int], options: DecodeOptions) -> int:
    """Decode ``targets`` exactly, with the end check; returns frames decoded.

    H.264 files go through their packets when the cost model says so and that
    reproduces the file's frames (it leaves out non-reference frames); everything
    else seeks and grabs.
    """
    if exact_cost(job.index, targets, options)[1]:
        done = decode_from_packets(job, targets, keyframes=False, options=options)
        if done is not None:
            return done[0]
        job.stop.clear()
    return decode_walking(job, targets, eof=True, options=options)
