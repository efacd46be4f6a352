"""The two decoders against one oracle: every codec the tests make, sampled with ``--decoder`` opencv, pyav and auto.

The oracle is a full sequential PyAV decode written here with ``av`` directly (``reference``), never vqa.
Nothing here says which codecs the installed OpenCV or PyAV decodes. A forced decoder either gives the
reference frames or fails with the documented one-line error, and then only where that library itself
(asked directly here) cannot decode the file's first frame. ``auto`` gives the reference frames with the
decoder its record names, whichever that is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import av
import cv2
import numpy as np
import pytest

from tests.clips import audio_only, av1_clip, damage, frame_number, make_rotated_clip, undecodable_video
from tests.test_cli import run
from tests.video_checks import codec_clips
from vqa_cli.cli.options import run_settings
from vqa_cli.settings import DECODERS
from vqa_cli.video import Clip, DecodeOptions, VideoError, _pyav, probe, sample_frames

CODECS = ["mpeg4", "mjpeg", "h264", "hevc", "vp8", "vp9", "av1"]
FORCED = [d for d in DECODERS if d != "auto"]


@dataclass(frozen=True)
class Reference:
    """A full sequential PyAV decode: every frame (RGB), its time (s), and the keyframe packets' ranks."""

    frames: list[np.ndarray]
    times: list[float]
    keys: list[int]


def reference(path: str) -> Reference:
    with av.open(path) as container:
        stream = container.streams.video[0]
        decoded = [(f.to_ndarray(format="rgb24"), float(f.pts * stream.time_base)) for f in container.decode(stream)]
    with av.open(path) as container:
        packets = sorted((p.pts, p.is_keyframe) for p in container.demux(video=0) if p.size)
    return Reference([f for f, _ in decoded], [t for _, t in decoded],
                     [rank for rank, (_, key) in enumerate(packets) if key])


def opencv_decodes(path: str) -> bool:
    """Whether OpenCV itself decodes the file's first frame (asked directly, not through vqa)."""
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        return bool(cap.isOpened() and cap.grab())
    finally:
        cap.release()


def pyav_decodes(path: str) -> bool:
    """Whether PyAV itself decodes a frame of the file's video stream."""
    try:
        with av.open(path) as container:
            return any(True for _ in container.decode(video=0))
    except (av.FFmpegError, ValueError, IndexError):
        return False


LIBRARY_DECODES = {"opencv": opencv_decodes, "pyav": pyav_decodes}


def assert_refusal(message: str, path: str, decoder: str) -> None:
    """The documented error of a forced decoder, allowed only where that library cannot decode the file."""
    assert message.startswith(f"cannot decode '{path}' with --decoder {decoder}: "), message
    assert "\n" not in message and message.endswith(" (--decoder auto tries both)")
    assert not LIBRARY_DECODES[decoder](path), f"{decoder} decodes {path}, yet vqa refused it: {message}"


def sample(path: str, decoder: str, n: int | None, **kw) -> Clip | None:
    """``sample_frames`` with ``--decoder decoder``; None after checking the refusal of a forced decoder."""
    try:
        clip = sample_frames(path, n, options=DecodeOptions(decoder=decoder), **kw)
    except VideoError as exc:
        if decoder == "auto":
            raise
        assert_refusal(str(exc), path, decoder)
        return None
    assert clip.decoder in FORCED and (decoder == "auto" or clip.decoder == decoder)
    return clip


def expected(times: list[float], n: int, lo: float = 0.0, hi: float = float("inf")) -> list[int]:
    """Segment-midpoint uniform sampling over the frames with lo <= t < hi, written out independently."""
    inside = [i for i, t in enumerate(times) if lo <= round(t, 3) < hi]
    if n >= len(inside):
        return inside
    return [inside[(2 * k + 1) * len(inside) // (2 * n)] for k in range(n)]


def assert_reference_frames(clip: Clip, ref: Reference) -> None:
    assert clip.frames_from_content == len(ref.frames)
    assert clip.timestamps == [round(ref.times[i], 3) for i in clip.indices]  # each frame's own time
    for frame, i in zip(clip.frames, clip.indices, strict=True):
        assert frame_number(frame) == i
        assert np.array_equal(frame, ref.frames[i]), f"frame {i} differs from the sequential decode ({clip.decoder})"


@pytest.fixture(scope="module")
def codecs(tmp_path_factory) -> dict[str, str]:
    return codec_clips(tmp_path_factory.mktemp("codecs"))


@pytest.fixture(scope="module")
def references(codecs) -> dict[str, Reference]:
    return {name: reference(path) for name, path in codecs.items()}


@pytest.fixture(scope="module")
def av1(tmp_path_factory) -> dict[str, str]:
    """Long-GOP AV1 (SVT-AV1 codes frames out of display order): the PyAV decoder's own paths."""
    folder = tmp_path_factory.mktemp("av1")
    return {
        "g60.mkv": av1_clip(folder / "g60.mkv", 300, gop=60),
        "g240.mp4": av1_clip(folder / "g240.mp4", 480, gop=240, fps=24),
    }


@pytest.fixture(scope="module")
def av1_refs(av1) -> dict[str, Reference]:
    return {name: reference(path) for name, path in av1.items()}


PYAV = DecodeOptions(decoder="pyav")


# ---- every codec, every decoder ---------------------------------------------------------------------------------


def test_the_clips_are_the_codecs_they_are_named_after(codecs):
    for name, path in codecs.items():
        with av.open(path) as container:
            assert container.streams.video[0].codec_context.codec.canonical_name == name  # the codec, not its decoder


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("codec", CODECS)
def test_exact_frames_equal_a_sequential_pyav_decode(codecs, references, codec, decoder):
    ref, path = references[codec], codecs[codec]
    for n, start, end in [(1, None, None), (8, None, None), (5, 0.5, 1.7), (len(ref.frames) + 5, None, None)]:
        clip = sample(path, decoder, n, start=start, end=end, seek="exact")
        if clip is None:
            return
        assert (clip.seek, clip.damaged) == ("exact", 0)
        assert clip.indices == expected(ref.times, n, start or 0.0, end or float("inf"))
        assert_reference_frames(clip, ref)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("codec", CODECS)
def test_keyframe_seeking_gives_the_keyframes_of_a_sequential_pyav_decode(codecs, references, codec, decoder):
    ref = references[codec]
    clip = sample(codecs[codec], decoder, 3, seek="keyframe")
    if clip is None:
        return
    assert clip.seek == "keyframe" and clip.indices and set(clip.indices) <= set(ref.keys)
    assert_reference_frames(clip, ref)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("codec", ["h264", "vp9", "av1"])
def test_fps_sampling_equals_a_sequential_pyav_decode(codecs, references, codec, decoder):
    ref = references[codec]
    clip = sample(codecs[codec], decoder, None, fps=3.0, start=1.0)
    if clip is None:
        return
    assert len(clip.indices) == int((len(ref.frames) / 30.0 - 1.0) * 3.0)
    assert all(t >= 1.0 for t in clip.timestamps)
    assert_reference_frames(clip, ref)


@pytest.mark.parametrize("codec", CODECS)
def test_auto_names_a_decoder_that_gives_the_reference_frames(codecs, references, codec, capsys):
    ref, path = references[codec], codecs[codec]
    code, out, err = run(["frames", path, "--frames", "6", "--decoder", "auto", "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["frame_indices"] == expected(ref.times, 6)
    assert record["timestamps"] == [round(ref.times[i], 3) for i in record["frame_indices"]]
    chosen = sample(path, record["decoder"], 6)  # the decoder the record names, forced: it must not refuse
    assert chosen is not None and chosen.indices == record["frame_indices"]
    assert_reference_frames(chosen, ref)


@pytest.mark.parametrize("decoder", FORCED)
def test_frames_json_names_the_forced_decoder(codecs, references, decoder, capsys):
    code, out, err = run(["frames", codecs["av1"], "--frames", "6", "--decoder", decoder, "--json"], capsys)
    if code != 0:
        assert code == 1 and out == "" and err.count("\n") == 1
        assert_refusal(err.strip().removeprefix("error: "), codecs["av1"], decoder)
        return
    record = json.loads(out)
    assert record["decoder"] == decoder and record["total_frames"] == len(references["av1"].frames)
    keys = list(record)
    assert keys[keys.index("warnings") + 1 : keys.index("warnings") + 3] == ["decoder", "codec"]


# ---- a forced decoder that cannot decode the file ---------------------------------------------------------------


@pytest.fixture(scope="module")
def unreadable(tmp_path_factory) -> list[str]:
    """Files with no video stream, random bytes, and a video stream in a codec FFmpeg only writes."""
    folder = tmp_path_factory.mktemp("unreadable")
    garbage = folder / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return [audio_only(folder / "audio.mp4"), str(garbage), undecodable_video(folder / "a64.avi")]


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_decoder_that_cannot_decode_the_file_fails_with_one_line(unreadable, decoder, capsys):
    for path in unreadable:
        if decoder != "auto" and LIBRARY_DECODES[decoder](path):
            continue  # not a file this library fails on here
        with pytest.raises(VideoError) as raised:
            sample_frames(path, 4, options=DecodeOptions(decoder=decoder))
        if decoder == "auto":
            assert str(raised.value) == f"cannot decode '{path}': not a video file or unsupported codec"
        else:
            assert_refusal(str(raised.value), path, decoder)
        if not any(decodes(path) for decodes in LIBRARY_DECODES.values()):
            # The command's fail-fast check finds no decoder that reads it: the message of any undecodable file.
            code, out, err = run(["frames", path, "--decoder", decoder, "--json"], capsys)
            assert (code, out, err) == (1, "", f"error: cannot decode '{path}': not a video file or unsupported "
                                               "codec\n")


def test_a_forced_decoder_failure_is_an_error_record_in_caption(tmp_path, tiny_dir, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    audio_only(folder / "audio.mp4")
    out = tmp_path / "captions.jsonl"
    code, stdout, err = run(["caption", str(folder), "--out", str(out), "--model", str(tiny_dir), "--frames", "2",
                             "--max-new-tokens", "2", "--decoder", "pyav"], capsys)
    assert code == 1 and stdout == ""
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["caption"] is None and record["error_kind"] == "video"
    assert_refusal(record["error"], str(folder / "audio.mp4"), "pyav")


def test_the_decoder_does_not_change_the_settings_id():
    ids = {d: run_settings(model="m", decoder=d).identity() for d in DECODERS}
    assert ids["opencv"] == ids["pyav"] == ids["auto"]
    assert run_settings(model="m", decoder="pyav").decoder == "pyav"  # yet the run carries it to the decoder
    with pytest.raises(ValueError, match="decoder must be one of auto, opencv, pyav"):
        DecodeOptions(decoder="ffmpeg")


def test_probe_accepts_every_codec(codecs):
    for path in codecs.values():
        probe(path)  # the CLI's fail-fast check: one of the decoders decodes a frame


# ---- the PyAV decoder's own paths (forced, so they run whatever OpenCV decodes) ---------------------------------


@pytest.mark.parametrize("name", ["g60.mkv", "g240.mp4"])
@pytest.mark.parametrize(("n", "start", "end"), [(1, None, None), (8, None, None), (33, None, None),
                                                 (5, 2.5, 7.0), (400, None, None), (3, 9.5, None)])
def test_pyav_exact_on_long_gops(av1, av1_refs, name, n, start, end):
    ref = av1_refs[name]
    clip = sample_frames(av1[name], n, start=start, end=end, seek="exact", options=PYAV)
    assert (clip.decoder, clip.codec, clip.seek, clip.damaged) == ("pyav", "av1", "exact", 0)
    assert clip.indices == expected(ref.times, n, start or 0.0, end or float("inf"))
    assert_reference_frames(clip, ref)
    if n <= 8:
        assert clip.decoded < len(ref.frames)  # not a full decode


@pytest.mark.parametrize(("rate", "start", "end"), [(2.0, None, None), (3.0, 1.0, 4.0), (0.5, 6.0, None)])
def test_pyav_fps_on_long_gops(av1, av1_refs, rate, start, end):
    clip = sample_frames(av1["g60.mkv"], fps=rate, start=start, end=end, options=PYAV)
    span = min(end or 10.0, 10.0) - (start or 0.0)
    assert len(clip.indices) == int(span * rate)
    assert all((start or 0.0) <= t < (end or 10.0) for t in clip.timestamps)
    assert_reference_frames(clip, av1_refs["g60.mkv"])


@pytest.mark.parametrize("name", ["g60.mkv", "g240.mp4"])
def test_pyav_keyframe_mode_lands_on_keyframes(av1, av1_refs, name):
    ref = av1_refs[name]
    assert len(ref.keys) == len(ref.frames) // (60 if name == "g60.mkv" else 240)
    clip = sample_frames(av1[name], 8, seek="keyframe", options=PYAV)
    assert clip.seek == "keyframe" and clip.decoder == "pyav"
    assert clip.indices and set(clip.indices) <= set(ref.keys)
    assert clip.decoded <= len(clip.indices) + 1  # about one decoded frame per returned frame
    assert_reference_frames(clip, ref)


def test_pyav_keyframes_a_single_pass_misses_are_reached_by_seeking(av1, av1_refs, monkeypatch):
    """The one-pass keyframe decode falls back to demuxer seeks for any keyframe it did not get."""
    ref, path = av1_refs["g60.mkv"], av1["g60.mkv"]
    sought: list[list[int]] = []
    real = _pyav._keyframes_by_seeking

    def spy(decoder, pts, missing):
        sought.append(list(missing))
        return real(decoder, pts, missing)

    monkeypatch.setattr(_pyav, "_keyframes_by_seeking", spy)
    clip = sample_frames(path, len(ref.keys), seek="keyframe", options=PYAV)
    assert clip.indices == ref.keys and sought == []  # one pass was enough
    # The seeking path on its own gives the same frames.
    from vqa_cli.video._inputs import Deadline

    with _pyav._opened(path, path, PYAV) as (container, stream):
        _, pts = _pyav.scan(container, stream, Deadline(path, None))
        kept = real(_pyav.Decoder(container, stream, Deadline(path, None)), pts, ref.keys)
    assert sorted(kept) == ref.keys and all(np.array_equal(kept[k], ref.frames[k]) for k in ref.keys)


def test_pyav_seek_auto_uses_the_cost_model(av1, av1_refs):
    ref, path = av1_refs["g60.mkv"], av1["g60.mkv"]
    # One target per keyframe: keyframes are far cheaper than exact decoding once exact is "too much".
    cheap = sample_frames(path, len(ref.keys), seek="auto", options=DecodeOptions(auto_keyframe_above=10,
                                                                                   decoder="pyav"))
    assert cheap.seek == "keyframe" and cheap.indices == ref.keys
    default = sample_frames(path, len(ref.keys), seek="auto", options=PYAV)
    assert default.seek == "exact"
    assert_reference_frames(default, ref)


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_damaged_av1_file_reports_the_damage(av1, tmp_path, decoder):
    broken = damage(av1["g60.mkv"], tmp_path / "broken.mkv", at=0.5, n_bytes=200)
    clip = sample(broken, decoder, 8)
    if clip is None:
        return
    assert len(clip.indices) == 8
    assert clip.damaged > 0 or clip.warnings
    assert clip.frames_from_content < 300


def test_a_packet_ffmpeg_refuses_with_any_error_is_damage_and_python_errors_are_not():
    """Damaged packets come back as whatever error FFmpeg's decoder returns: invalid data, or ENOMEM (PyAV's
    ``av.error.MemoryError``, as dav1d reports some damaged AV1 packets); each is counted and skipped. A Python error
    from the decode is not damage: it goes up."""
    import av

    from vqa_cli.video._inputs import Deadline

    class Packet:
        def __init__(self, n: int) -> None:
            self.n, self.size = n, 1

    refusals = {1: av.error.MemoryError(12, "Cannot allocate memory", "avcodec_send_packet()"),
                2: av.error.InvalidDataError(1094995529, "Invalid data found when processing input")}

    class Context:
        def decode(self, packet):
            if packet is None:
                return []
            if packet.n in refusals:
                raise refusals[packet.n]
            if packet.n == 9:
                raise MemoryError("python")
            return [f"frame {packet.n}"]

    stream = type("Stream", (), {"codec_context": Context()})()
    decoder = _pyav.Decoder(None, stream, Deadline("x", None))
    decoder.packets = iter([Packet(n) for n in range(5)])
    assert list(decoder.frames()) == ["frame 0", "frame 3", "frame 4"]
    assert (decoder.decoded, decoder.damaged) == (3, 2)
    decoder.packets = iter([Packet(9)])
    with pytest.raises(MemoryError, match="python"):
        list(decoder.frames())


def test_pyav_decoder_threads_stay_within_the_cores(av1):
    with _pyav._opened("x", av1["g60.mkv"], DecodeOptions(cores=1)) as (_, stream):
        assert stream.codec_context.thread_count == 1


@pytest.mark.parametrize("decoder", DECODERS)
def test_rotation_is_applied_by_either_decoder(tmp_path, decoder):
    """The clip's display matrix turns its 64x48 frames a quarter turn: every decoder gives the reference frames
    turned the way the display matrix says, that is the same way for all of them."""
    path = make_rotated_clip(tmp_path / "rotated.mp4", 10)  # tkhd matrix (0, 1, -1, 0): (x, y) -> (-y, x)
    ref = reference(path)  # as stored, not turned
    clip = sample(path, decoder, 3)
    if clip is None:
        return
    assert clip.frames.shape[1:] == (64, 48, 3)
    turned = [np.rot90(ref.frames[i], k=-1) for i in clip.indices]  # (x, y) -> (-y, x), y down: clockwise
    assert all(np.array_equal(f, t) for f, t in zip(clip.frames, turned, strict=True))


def test_ask_json_names_the_decoder(av1, tiny_dir, capsys):
    for decoder in DECODERS:
        code, out, err = run(["ask", av1["g60.mkv"], "What happens?", "--model", str(tiny_dir), "--frames", "4",
                              "--max-new-tokens", "3", "--decoder", decoder, "--json"], capsys)
        if code != 0:
            assert decoder != "auto" and code == 1 and out == ""
            assert_refusal(err.strip().removeprefix("error: "), av1["g60.mkv"], decoder)
            continue
        record = json.loads(out)
        assert record["frames"] == 4 and record["decoder"] in FORCED
        assert decoder == "auto" or record["decoder"] == decoder
