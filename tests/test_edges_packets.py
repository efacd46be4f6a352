"""Edges of the packet indexes (the PyAV demuxer's, ``video._pyav.scan``, and OpenCV's demuxer-only one,
``video._index.scan_index``): frame i is the i-th frame shown, with its presentation time and keyframe flag, and
``dpos[i]`` its packet's place in the file, on x264 clips with B-frames (decode order != presentation order).
Oracle: a full sequential PyAV decode (each frame's pts and key flag, in the order shown) and a PyAV demux,
both written in the test."""

from __future__ import annotations

import av
import pytest

from tests.clips import ffmpeg_clip, x264
from vqa_cli.video import _pyav
from vqa_cli.video._index import scan_index
from vqa_cli.video._inputs import Deadline

# An open GOP puts a keyframe in the file before the B-frames shown ahead of it (its decode place != its rank).
OPEN_GOP = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-x264-params",
            "keyint=10:min-keyint=10:scenecut=0:bframes=3:open-gop=1"]
CLIPS = {"bf3-gop12.mp4": (45, x264(12, 3)), "bf2-gop10.mkv": (40, x264(10, 2)), "bf3-gop16.ts": (40, x264(16, 3)),
         "bf3-open-gop.mkv": (40, OPEN_GOP), "bf3-open-gop.mp4": (40, OPEN_GOP)}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("bframes")
    return {name: ffmpeg_clip(folder / name, n, enc, size=(64, 48)) for name, (n, enc) in CLIPS.items()}


def _oracle(path: str) -> dict:
    """Presentation times (ms), keyframe ranks and each shown frame's packet position, from PyAV directly."""
    with av.open(path) as c:
        stream = c.streams.video[0]
        unit = float(stream.time_base) * 1000
        shown = [(f.pts, f.key_frame) for f in c.decode(video=0)]
    with av.open(path) as c:
        packets = [p.pts for p in c.demux(c.streams.video[0]) if p.size]
    assert len(packets) == len(shown)
    place = {pts: n for n, pts in enumerate(packets)}
    return {"pts": [p for p, _ in shown], "ms": [p * unit for p, _ in shown],
            "keys": [i for i, (_, k) in enumerate(shown) if k], "dpos": [place[p] for p, _ in shown]}


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_the_pyav_index_is_in_presentation_order(clips, name):
    want = _oracle(clips[name])
    assert want["dpos"] != sorted(want["dpos"])  # B-frames: the file's order is not the order shown
    with av.open(clips[name]) as c:
        index, pts = _pyav.scan(c, c.streams.video[0], Deadline(clips[name], None))
    assert pts == want["pts"]
    assert index.ms == pytest.approx(want["ms"], abs=1e-9)
    assert index.keys == want["keys"] and len(want["keys"]) > 1
    if "open-gop" in name:  # the case where a keyframe's place in the file is not its place on screen
        assert any(want["dpos"][k] != k for k in want["keys"])
    assert index.dpos == want["dpos"]
    assert index.frames_from_content == len(want["pts"])


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_the_opencv_index_is_in_presentation_order(clips, name):
    want = _oracle(clips[name])
    index = scan_index(clips[name], Deadline(clips[name], None))
    assert index is not None
    # the same frames, the same gaps between them (OpenCV may count from the stream's start time)
    offset = index.ms[0] - want["ms"][0]
    assert [m - offset for m in index.ms] == pytest.approx(want["ms"], abs=1e-3)
    assert index.keys == want["keys"]
    assert index.dpos == want["dpos"]
