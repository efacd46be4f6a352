"""Decode options (vqa_cli.video._options): defaults, validation, and a core limit."""

from __future__ import annotations

import numpy as np
import pytest

from vqa_cli.video import AUTO_KEYFRAME_ABOVE, DecodeOptions, _capture, cpu_cores, sample_frames


def test_default_options_are_the_cli_defaults() -> None:
    options = DecodeOptions()
    assert (options.cores, options.max_workers, options.parallel_min_decodes, options.packets_for_exact,
            options.auto_keyframe_above) == (None, None, 240, True, 1000) and AUTO_KEYFRAME_ABOVE == 1000
    assert options.cpu_count == cpu_cores() and options.decoder_threads == 0 and options.workers == cpu_cores()
    assert DecodeOptions(cores=1).cpu_count == 1 and DecodeOptions(max_workers=3).workers == 3


@pytest.mark.parametrize("bad", [{"cores": 0}, {"max_workers": 0}, {"cores": True}, {"parallel_min_decodes": -1},
                                 {"auto_keyframe_above": 1.5}])
def test_bad_options_are_value_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DecodeOptions(**bad)  # type: ignore[arg-type]


def test_options_reach_every_capture(clip_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real_open = _capture.open_capture

    def recording_open(path: str, fs_path: str, threads: int) -> object:
        seen.append(threads)
        return real_open(path, fs_path, threads)

    monkeypatch.setattr(_capture, "open_capture", recording_open)
    sample_frames(clip_path, 6)
    assert seen[0] == 1 and set(seen[1:]) == {0}  # the decoder probe's one thread, then OpenCV's default
    seen.clear()
    sample_frames(clip_path, 6, options=DecodeOptions(cores=1))
    assert seen and set(seen) == {1}


def test_a_core_limit_keeps_the_frames(clip_path: str) -> None:
    full = sample_frames(clip_path, 6)
    limited = sample_frames(clip_path, 6, options=DecodeOptions(cores=1))
    assert DecodeOptions(cores=1).cpu_count == 1 and DecodeOptions(cores=1).decoder_threads == 1
    assert DecodeOptions().decoder_threads == 0  # FFmpeg's own choice when no limit is given
    assert limited.indices == full.indices and np.array_equal(limited.frames, full.frames)

