"""Preprocessing parity with the checkpoint's own image processor (transformers' PIL image processors)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from transformers import CLIPImageProcessorPil

from vqa_cli.video import VIDEO_EXTENSIONS, sample_frames
from vqa_cli.video.preprocess import ProcessorConfig, preprocess_frames, resize_hw

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
    from vqa_cli.video.preprocess import normalize

    cfg = ProcessorConfig(mean=(0.5, 0.25, 0.125), std=(0.2, 0.3, 0.7), rescale_factor=1 / 255)
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)  # [256, 1, 3]
    expected = (levels.astype(np.float32) * np.float32(cfg.rescale_factor) - np.asarray(cfg.mean, np.float32)) \
        / np.asarray(cfg.std, np.float32)
    assert np.array_equal(normalize(levels, cfg), expected.transpose(2, 0, 1))
    raw = ProcessorConfig(do_rescale=False, do_normalize=False)
    assert np.array_equal(normalize(levels, raw), levels.astype(np.float32).transpose(2, 0, 1))


# ---- each family's checkpoint, at awkward sizes, against its own processor loaded from its files ------------
#
# The real video processors (LlavaNextVideoVideoProcessor, VideoLlavaVideoProcessor, LlavaOnevisionVideoProcessor)
# need torchvision, which vqa must not depend on. Each oracle below is an image processor that performs the same
# steps from the same file, video_preprocessor_config.json, loaded by transformers itself (not vqa's
# ProcessorConfig):
# - LLaVA-NeXT-Video: shortest edge to 336, long edge truncated, 336x336 centre crop, CLIP mean/std:
#   CLIPImageProcessorPil (PilBackend: PIL resize, numpy crop/rescale/normalise).
# - Video-LLaVA: the same recipe at 224: VideoLlavaImageProcessor, the class its preprocessor_config.json names,
#   a separate implementation (transformers' older BaseImageProcessor with image_transforms' functions).
# - LLaVA-OneVision: resize to exactly 384x384 (aspect ratio not kept), no crop (the config's null crop), SigLIP
#   mean/std 0.5: SiglipImageProcessorPil. (Its image config names LlavaOnevisionImageProcessor, whose AnyRes
#   tiling is the image path, not the video one.)
# The torchvision video processors resample with torch's own bicubic, which does not reproduce PIL's bytes; vqa
# follows the PIL image processors (the original LLaVA pipelines preprocess with PIL too). Sizes, crop offsets
# (floor of half the excess) and the long edge's truncation are the same in both backends.

FAMILY_SIZES = [(480, 854), (288, 352), (500, 500), (517, 333), (333, 517), (854, 480), (1920, 1080), (17, 31),
                (224, 224), (336, 336), (384, 384)]  # (height, width): 854x480, 352x288, 1:1, odd, portrait, tiny


def _family_oracle(family: str, model_dir: Path):
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil, VideoLlavaImageProcessor

    cls = {"llava-next-video": CLIPImageProcessorPil, "video-llava": VideoLlavaImageProcessor,
           "llava-onevision": SiglipImageProcessorPil}[family]
    proc = cls.from_pretrained(model_dir, image_processor_filename="video_preprocessor_config.json")
    kwargs = {"return_legacy_image_output": False} if family == "video-llava" else {}
    return lambda frames: proc(list(frames), return_tensors="np", **kwargs)["pixel_values"]


FAMILY_OUTPUT = {"llava-next-video": 336, "video-llava": 224, "llava-onevision": 384}


@pytest.mark.parametrize("size", FAMILY_SIZES)
@pytest.mark.parametrize("family", list(FAMILY_OUTPUT))
def test_pixels_equal_the_checkpoints_own_processor_at_awkward_sizes(family_dirs, family, size):
    rng = np.random.default_rng(size[0] * 31 + size[1])
    frames = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
    oracle = _family_oracle(family, family_dirs[family])(frames)
    side = FAMILY_OUTPUT[family]
    assert oracle.shape == (2, 3, side, side)
    ours = preprocess_frames(frames, ProcessorConfig.from_dir(family_dirs[family]))
    assert ours.shape == oracle.shape
    assert np.abs(ours - oracle).max() <= 1e-5


@pytest.mark.parametrize("family", list(FAMILY_OUTPUT))
def test_engine_pixels_use_the_checkpoints_processor(family_dirs, family):
    """Engine.pixels, as ask and caption call it, on a clip of odd landscape and portrait frames."""
    import torch

    from vqa_cli.model.checkpoint import Checkpoint
    from vqa_cli.model.engine import Engine
    from vqa_cli.model.weights import loader
    from vqa_cli.settings import RunSettings
    from vqa_cli.video import Clip

    settings = RunSettings(model=str(family_dirs[family]), dtype="float32", max_new_tokens=1)
    checkpoint = Checkpoint(settings.model)
    engine = Engine(checkpoint, settings, loader.load(checkpoint, settings, 1.0))
    oracle = _family_oracle(family, family_dirs[family])
    for size in [(517, 333), (480, 854)]:
        frames = np.random.default_rng(size[1]).integers(0, 256, (3, *size, 3), dtype=np.uint8)
        clip = Clip(path="clip.mp4", frames=frames, indices=[0, 1, 2], timestamps=[0.0, 0.5, 1.0], duration=1.5,
                    fps=2.0, frames_from_content=3, is_image=False, frames_from_header=3, fps_from_header=2.0)
        pixels = engine.pixels(clip)
        assert isinstance(pixels, torch.Tensor) and pixels.dtype == torch.float32
        assert np.abs(pixels.numpy() - oracle(frames)).max() <= 1e-5, size


@pytest.mark.parametrize(("family", "changes"), [
    ("llava-next-video", {"crop_size": {"height": 300, "width": 300}}),  # crop inside the resized frame both ways
    ("llava-next-video", {"crop_size": {"height": 300, "width": 320}}),
    ("video-llava", {"size": {"shortest_edge": 250}}),
    ("llava-onevision", {"size": {"height": 384, "width": 320}}),  # a non-square target, aspect ratio not kept
])
@pytest.mark.parametrize("size", [(480, 854), (517, 333), (1920, 1080)])
def test_pixels_follow_edited_processor_configs(family_dirs, tmp_path, family, changes, size):
    """Configs no released checkpoint has, to reach every crop offset and target shape: the same file, both sides.

    The unchanged image processor config sits next to the edited video one: video frames follow the video one.
    """
    import json
    import shutil

    shutil.copy(family_dirs[family] / "preprocessor_config.json", tmp_path)
    cfg = json.loads((family_dirs[family] / "video_preprocessor_config.json").read_text())
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({**cfg, **changes}))
    frames = np.random.default_rng(size[0] + size[1]).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    oracle = _family_oracle(family, tmp_path)(frames)
    ours = preprocess_frames(frames, ProcessorConfig.from_dir(tmp_path))
    assert ours.shape == oracle.shape
    assert np.abs(ours - oracle).max() <= 1e-5
