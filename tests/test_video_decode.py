"""Exact decoding (vqa_cli.video._seeking, _packets): every frame equals a full sequential decode's."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from tests.clips import frame_number
from tests.video_checks import SEEKS, assert_real_frames
from vqa_cli.video import DecodeOptions, _capture, sample_frames, uniform_indices
from vqa_cli.video._packets import PacketDecoder


def test_honest_header_decodes_once(clip100: str, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = []
    real_open = _capture.open_capture

    def counting_open(path: str, fs_path: str, threads: int) -> cv2.VideoCapture:
        opened.append(path)
        return real_open(path, fs_path, threads)

    monkeypatch.setattr(_capture, "open_capture", counting_open)
    sample_frames(clip100, 8)
    assert len(opened) == 2  # the decoder probe (one frame) and one decoding capture: no counting pass


@pytest.mark.parametrize("seek", SEEKS)
def test_frames_equal_the_sequential_decode_in_every_seek_mode(
    encoded: dict[str, str], oracles: dict[str, list[np.ndarray]], seek: str
) -> None:
    for name, path in encoded.items():
        total = len(oracles[name])
        for n in (1, 5, 32):
            clip = sample_frames(path, n, seek=seek)  # type: ignore[arg-type]
            assert_real_frames(clip, oracles[name])
            assert [frame_number(f) for f in clip.frames] == clip.indices, name
            assert clip.timestamps == [round(i / 30.0, 3) for i in clip.indices], name
            if clip.seek == "exact":
                assert clip.indices == uniform_indices(total, n), name
            assert clip.seek in ("exact", "keyframe") and (seek != "exact" or clip.seek == "exact")


def test_exact_mode_decodes_less_than_the_whole_clip(encoded: dict[str, str]) -> None:
    for name in ("mp4v-gop12.mp4", "h264-gop10.mp4", "h264-gop25-bf3.mkv"):
        clip = sample_frames(encoded[name], 3)
        assert clip.decoded < clip.frames_from_content, name


def test_h264_packets_leave_out_non_reference_frames(encoded: dict[str, str]) -> None:
    """Frames 0..299 of a GOP-25, 3-B-frame clip: 32 targets need fewer decodes than frames."""
    clip = sample_frames(encoded["h264-gop25-bf3.mkv"], 32)
    assert clip.seek == "exact" and clip.indices == uniform_indices(300, 32)
    assert clip.decoded < 0.8 * clip.frames_from_content


def test_exact_mode_without_packets_seeks_and_grabs(
    encoded: dict[str, str], oracles: dict[str, list[np.ndarray]]
) -> None:
    options = DecodeOptions(packets_for_exact=False)
    for name in ("h264-gop50-bf2.mp4", "h264-gop25-bf3.mkv", "h264-gop50-bf2.ts"):
        for n in (2, 7):
            clip = sample_frames(encoded[name], n, options=options)
            assert clip.indices == uniform_indices(300, n)
            assert_real_frames(clip, oracles[name])


def test_parallel_captures_give_the_same_frames(encoded: dict[str, str]) -> None:
    options = DecodeOptions(packets_for_exact=False, parallel_min_decodes=0)
    path = encoded["h264-gop10.mp4"]
    one = sample_frames(path, 6, options=replace(options, max_workers=1))
    three = sample_frames(path, 6, options=replace(options, max_workers=3))
    assert one.indices == three.indices == uniform_indices(300, 6)
    assert np.array_equal(one.frames, three.frames)


def test_packet_decoding_that_disagrees_with_the_file_is_not_used(
    encoded: dict[str, str], oracles: dict[str, list[np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-file check (frame 0 through packets == frame 0 from the file) guards both packet paths."""
    real = PacketDecoder._decode
    calls = []

    def wrong(self: PacketDecoder, *args: object) -> dict[int, np.ndarray] | None:
        frames = real(self, *args)  # type: ignore[arg-type]
        calls.append(frames)
        if frames and 0 in frames:
            frames[0] = 255 - frames[0]
        return frames

    monkeypatch.setattr(PacketDecoder, "_decode", wrong)
    name = "h264-gop25-bf3.mkv"
    for seek in ("exact", "keyframe"):
        calls.clear()
        clip = sample_frames(encoded[name], 32, seek=seek)  # type: ignore[arg-type]
        assert calls, seek  # the packet path was tried
        assert_real_frames(clip, oracles[name])


def test_exact_packets_go_through_one_stream_per_group(encoded: dict[str, str], monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """Opening an in-memory stream costs several frames' decoding: the keyframe intervals share one."""
    opened = []
    real = PacketDecoder._decode

    def counting(self: PacketDecoder, *args: object) -> dict[int, np.ndarray] | None:
        opened.append(1)
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(PacketDecoder, "_decode", counting)
    clip = sample_frames(encoded["h264-gop10.mp4"], 8, seek="exact", options=DecodeOptions(max_workers=1))
    # 8 targets in 8 intervals, + frame 0, last
    assert clip.indices == uniform_indices(300, 8) and clip.decoded < 300
    assert len(opened) == 1
