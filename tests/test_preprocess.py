"""Preprocessing parity with the checkpoint's own image processor (transformers' CLIPImageProcessorPil)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from transformers import CLIPImageProcessorPil

from vqa_cli.preprocess import ProcessorConfig, preprocess_frames, resize_hw
from vqa_cli.video import VIDEO_EXTENSIONS, sample_frames

SAMPLES = Path(os.environ.get("VQA_SAMPLE_VIDEOS", "/tmp/vqa-sample-videos"))


def _oracle(cfg: ProcessorConfig, frames: np.ndarray) -> np.ndarray:
    proc = CLIPImageProcessorPil(
        size={"shortest_edge": cfg.shortest_edge},
        crop_size={"height": cfg.crop_hw[0], "width": cfg.crop_hw[1]},
        image_mean=list(cfg.mean),
        image_std=list(cfg.std),
        resample=cfg.resample,
    )
    return proc(list(frames), return_tensors="np")["pixel_values"]


def test_config_is_read_from_the_checkpoint(tiny_dir):
    cfg = ProcessorConfig.from_dir(tiny_dir)
    assert cfg.shortest_edge == 336 and cfg.crop_hw == (336, 336) and cfg.resample == 3


@pytest.mark.parametrize("size", [(240, 320), (1080, 1920), (640, 360), (150, 200), (336, 336), (100, 100)])
def test_pixels_equal_clip_image_processor_pil(size, tmp_path):
    rng = np.random.default_rng(sum(size))
    frames = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
    cfg = ProcessorConfig()
    ours = preprocess_frames(frames, cfg)
    assert ours.shape == (2, 3, 336, 336)
    assert np.abs(ours - _oracle(cfg, frames)).max() <= 1e-5


def test_pixels_equal_clip_image_processor_pil_on_decoded_frames(clip_path):
    frames = sample_frames(clip_path, 6).frames
    cfg = ProcessorConfig()
    assert np.abs(preprocess_frames(frames, cfg) - _oracle(cfg, frames)).max() <= 1e-5


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="sample videos not fetched (../shared/tools/fetch-sample-videos.sh)")
def test_pixels_equal_clip_image_processor_pil_on_real_footage():
    videos = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    checked = 0
    for video in videos:
        try:
            frames = sample_frames(str(video), 3).frames
        except Exception:  # some samples are audio-only or exotic codecs
            continue
        cfg = ProcessorConfig()
        assert np.abs(preprocess_frames(frames, cfg) - _oracle(cfg, frames)).max() <= 1e-5, video.name
        checked += 1
    assert checked >= 2


def test_shortest_edge_resize_truncates_the_long_edge_like_torchvision():
    cfg = ProcessorConfig()
    assert resize_hw(1080, 1920, cfg) == (336, 597)
    assert resize_hw(1920, 1080, cfg) == (597, 336)
