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


def _reference(frame: np.ndarray, cfg: ProcessorConfig) -> np.ndarray:
    """The plain recipe: PIL resize of the whole frame, centre crop, float32 rescale and normalise."""
    from PIL import Image

    h, w = resize_hw(frame.shape[0], frame.shape[1], cfg)
    img = np.asarray(Image.fromarray(frame).resize((w, h), resample=cfg.resample))
    ch, cw = cfg.crop_hw
    top, left = (h - ch) // 2, (w - cw) // 2
    out = img[top:top + ch, left:left + cw].astype(np.float32) * np.float32(cfg.rescale_factor)
    out = (out - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return out.transpose(2, 0, 1)


@pytest.mark.parametrize("resample", [1, 2, 3, 4, 5, 0])
@pytest.mark.parametrize("size", [(360, 640), (1080, 1920), (720, 1280), (337, 500), (341, 1000), (1000, 341),
                                  (240, 320), (336, 400)])
def test_column_cropped_resampling_and_lookup_give_the_same_bytes(size, resample):
    rng = np.random.default_rng(size[0] * 7 + size[1] + resample)
    frame = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    cfg = ProcessorConfig(resample=resample)
    assert np.array_equal(preprocess_frames(frame[None], cfg)[0], _reference(frame, cfg))


def test_lookup_table_equals_the_float_formula_for_every_level():
    from vqa_cli.preprocess import normalize

    cfg = ProcessorConfig(mean=(0.5, 0.25, 0.125), std=(0.2, 0.3, 0.7), rescale_factor=1 / 255)
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)  # [256, 1, 3]
    expected = (levels.astype(np.float32) * np.float32(cfg.rescale_factor) - np.asarray(cfg.mean, np.float32)) \
        / np.asarray(cfg.std, np.float32)
    assert np.array_equal(normalize(levels, cfg), expected.transpose(2, 0, 1))
    raw = ProcessorConfig(do_rescale=False, do_normalize=False)
    assert np.array_equal(normalize(levels, raw), levels.astype(np.float32).transpose(2, 0, 1))
