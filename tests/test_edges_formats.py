"""Edges of subtitle and caption times: SRT ``HH:MM:SS,mmm`` and WebVTT ``HH:MM:SS.mmm`` written at the nearest
millisecond with every field carried (never ``:60`` or ``,1000``), cues numbered from 1, and times read back
with fractions of any digit count. Oracles: the ``srt`` and ``webvtt-py`` parsers and arithmetic in the test."""

from __future__ import annotations

import io
import random
import re
from datetime import timedelta
from decimal import Decimal

import pytest
import srt
import webvtt

from vqa_cli.output.subtitles import parse
from vqa_cli.output.writer._formats import format_writer

CLOCK = re.compile(r"(\d{2,}):([0-5]\d):([0-5]\d)([,.])(\d{3})")
HALF_MS = Decimal("0.0005") + Decimal("1e-9")
EDGES = [0.0, 0.0004, 0.0006, 1.0005, 1.0006, 59.9996, 59.9994, 3599.9995, 3599.9996, 3600.0004, 86399.9996,
         0.0625, 61.25, 359999.9996]


def _record(times: list[float]) -> dict:
    pairs = zip(times, times[1:], strict=False)
    segments = [{"start": a, "end": b, "caption": f"cue {i}"} for i, (a, b) in enumerate(pairs)]
    return {"video": "v.mp4", "caption": "x", "duration": times[-1], "segments": segments}


def _clock_seconds(text: str, separator: str) -> Decimal:
    m = CLOCK.fullmatch(text)
    assert m is not None and m.group(4) == separator, text
    h, mi, s, _, ms = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + Decimal(ms) / 1000


def _times() -> list[float]:
    rng = random.Random(7)
    near_half = (rng.randrange(0, 7_200_000) / 1000 + rng.choice([-5e-4, 5e-4, 4e-4, -4e-4]) for _ in range(200))
    values = sorted({*EDGES, *(rng.uniform(0, 7200) for _ in range(200)), *near_half})
    return [max(0.0, v) for v in values]


@pytest.mark.parametrize("fmt, separator", [("srt", ","), ("vtt", ".")])
def test_every_time_is_the_nearest_millisecond_with_every_field_carried(fmt, separator):
    times = _times()
    text = format_writer(fmt).text(_record(times))
    written = re.findall(r"^(\S+) --> (\S+)$", text, flags=re.M)
    assert len(written) == len(times) - 1
    for (a, b), want_a, want_b in zip(written, times, times[1:], strict=False):
        for got, want in ((a, want_a), (b, want_b)):
            # at most half a millisecond from the value (a tie, up to float noise, may go either way)
            assert abs(_clock_seconds(got, separator) - Decimal(want)) <= HALF_MS, (got, want)


@pytest.mark.parametrize("seconds, srt_clock", [(59.9996, "00:01:00,000"), (3599.9996, "01:00:00,000"),
                                                 (1.0006, "00:00:01,001"), (1.0004, "00:00:01,000"),
                                                 (86399.9996, "24:00:00,000"), (0.0004, "00:00:00,000")])
def test_carries_into_the_next_field(seconds, srt_clock):
    text = format_writer("srt").text(_record([0.0, seconds] if seconds else [0.0, 0.0]))
    assert text.splitlines()[1] == f"00:00:00,000 --> {srt_clock}"
    vtt = format_writer("vtt").text(_record([0.0, seconds]))
    assert f"00:00:00.000 --> {srt_clock.replace(',', '.')}" in vtt.splitlines()


def test_srt_cues_are_numbered_from_one_and_read_back_by_the_srt_package():
    times = _times()[:60]
    text = format_writer("srt").text(_record(times))
    subs = list(srt.parse(text))
    assert [s.index for s in subs] == list(range(1, len(times)))
    assert [int(block.split("\n", 1)[0]) for block in text.strip().split("\n\n")] == list(range(1, len(times)))
    for s, a, b in zip(subs, times, times[1:], strict=False):
        assert abs(s.start - timedelta(seconds=a)) <= timedelta(microseconds=500)
        assert abs(s.end - timedelta(seconds=b)) <= timedelta(microseconds=500)
        assert s.content == f"cue {times.index(a)}"


def test_vtt_reads_back_with_webvtt_py_at_the_same_milliseconds():
    times = _times()[:60]
    text = format_writer("vtt").text(_record(times))
    assert text.startswith("WEBVTT\n\n")
    captions = webvtt.from_buffer(io.StringIO(text))
    assert len(captions) == len(times) - 1
    for c, a, b in zip(captions, times, times[1:], strict=False):
        assert abs(_clock_seconds(c.start, ".") - Decimal(a)) <= HALF_MS
        assert abs(_clock_seconds(c.end, ".") - Decimal(b)) <= HALF_MS


# ---- reading: fractions of any digit count, WebVTT without hours ----------------------------------------------

def _one(text: str) -> tuple[float, float]:
    cues = parse(text)
    assert len(cues) == 1, cues
    return cues[0].start, cues[0].end


@pytest.mark.parametrize("stamp, seconds", [("00:00:01,5", 1.5), ("00:00:01,50", 1.5), ("00:00:01,500", 1.5),
                                            ("00:00:01.05", 1.05), ("01:02:03,004", 3723.004)])
def test_srt_fractions_are_decimal_fractions_of_a_second(stamp, seconds):
    # A decimal fraction: ",5" is half a second (the srt package reads the digits as a count of milliseconds,
    # so it is not the oracle here; the arithmetic is).
    start, end = _one(f"1\n{stamp} --> 02:00:00,000\nhello\n\n")
    assert start == pytest.approx(seconds, abs=1e-9) and end == 7200.0


@pytest.mark.parametrize("stamp, seconds", [("00:00:01.123456", 1.123456), ("00:00:01,1234", 1.1234)])
def test_fractions_longer_than_milliseconds_are_read(stamp, seconds):
    start, _ = _one(f"1\n{stamp} --> 00:00:09,000\nhello\n\n")
    assert start == pytest.approx(seconds, abs=1e-9)


def test_webvtt_times_without_hours_agree_with_webvtt_py():
    text = "WEBVTT\n\n00:01.500 --> 01:02.250\nhi\n\n59:59.999 --> 1:00:00.000\nlate\n\n"
    ours = parse(text)
    theirs = webvtt.from_buffer(io.StringIO(text))
    assert [(c.start, c.end) for c in ours] == [(1.5, 62.25), (3599.999, 3600.0)]
    assert [(float(_clock_seconds(c.start, ".")), float(_clock_seconds(c.end, "."))) for c in theirs] == [
        (1.5, 62.25), (3599.999, 3600.0)]
