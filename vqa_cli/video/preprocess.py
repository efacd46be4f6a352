"""Frames to the checkpoint's vision input, as its own processor config says (no torchvision).

Resize (shortest edge, PIL resampling, as transformers' PIL image processors do), centre crop,
rescale and normalise. PIL does the resampling so the pixels match the checkpoint's processor
exactly; everything else is numpy. Two shortcuts keep the bytes and save half the time: only the
crop's columns go through PIL's vertical pass, and rescaling plus normalising is one lookup per
uint8 level (a table built with the same float32 operations).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

_CONFIG_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")


@dataclass(frozen=True)
class ProcessorConfig:
    do_resize: bool = True
    shortest_edge: int | None = 336
    size_hw: tuple[int, int] | None = None  # used when the config gives height/width
    resample: int = 3  # PIL.Image.BICUBIC
    do_center_crop: bool = True
    crop_hw: tuple[int, int] = (336, 336)
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def from_dict(cls, d: dict) -> ProcessorConfig:
        size = d.get("size") or {}
        if isinstance(size, int):
            size = {"shortest_edge": size}
        crop = d.get("crop_size") or {}
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        shortest = size.get("shortest_edge")
        size_hw = (size["height"], size["width"]) if "height" in size and "width" in size else None
        defaults = cls()
        return cls(
            do_resize=bool(d.get("do_resize", True)),
            shortest_edge=shortest if size_hw is None else None,
            size_hw=size_hw,
            resample=int(d.get("resample", 3)),
            # Unset means: crop when the config names a crop size (SigLIP configs name none).
            do_center_crop=bool(crop) if d.get("do_center_crop") is None else bool(d["do_center_crop"]),
            crop_hw=(crop.get("height", 336), crop.get("width", 336)) if crop else defaults.crop_hw,
            do_rescale=bool(d.get("do_rescale", True)),
            rescale_factor=float(d.get("rescale_factor", 1 / 255)),
            do_normalize=bool(d.get("do_normalize", True)),
            mean=tuple(d.get("image_mean", defaults.mean)),
            std=tuple(d.get("image_std", defaults.std)),
        )

    @classmethod
    def from_dir(cls, directory: str | Path) -> ProcessorConfig:
        """The video processor config when the checkpoint has one, else its image processor's."""
        for name in _CONFIG_FILES:
            path = Path(directory) / name
            if path.is_file():
                return cls.from_dict(json.loads(path.read_text()))
        return cls()

    @property
    def output_hw(self) -> tuple[int, int]:
        if self.do_center_crop:
            return self.crop_hw
        if self.size_hw:
            return self.size_hw
        raise ValueError("output size depends on the input (shortest-edge resize without crop)")


def resize_hw(height: int, width: int, cfg: ProcessorConfig) -> tuple[int, int]:
    """Target (h, w): shortest edge to ``shortest_edge``, the long edge truncated (torchvision rule)."""
    if cfg.size_hw:
        return cfg.size_hw
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = cfg.shortest_edge, int(cfg.shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


# PIL filters that resample in two separable passes (horizontal, then vertical, with an 8-bit
# image in between); NEAREST takes another path.
_SEPARABLE = frozenset({1, 2, 3, 4, 5})  # LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING


def _resize_and_crop(frame: np.ndarray, hw: tuple[int, int], cfg: ProcessorConfig) -> np.ndarray | None:
    """Resize then centre-crop, resampling only the columns the crop keeps; None when that does not apply.

    PIL resamples an RGB image horizontally into an 8-bit intermediate and then vertically, each
    output column of the vertical pass from its own column alone. Doing the horizontal pass, cutting
    the crop's columns and doing the vertical pass on them gives the same bytes as the full resize
    followed by the crop (tests compare both), with the vertical pass over ``crop width`` columns
    instead of the resized width: landscape video loses a third to a half of that pass.
    """
    from PIL import Image

    h, w = hw
    ch, cw = cfg.crop_hw
    if cfg.resample not in _SEPARABLE or w <= cw or h < ch:
        return None
    img = Image.fromarray(frame)
    if w != frame.shape[1]:
        img = img.resize((w, frame.shape[0]), resample=cfg.resample)
    left = (w - cw) // 2
    img = img.crop((left, 0, left + cw, frame.shape[0]))
    if h != frame.shape[0]:
        img = img.resize((cw, h), resample=cfg.resample)
    top = (h - ch) // 2
    return np.asarray(img)[top:top + ch]


@lru_cache(maxsize=16)
def _lookup(cfg: ProcessorConfig) -> np.ndarray:
    """[3, 256] float32: each channel's rescaled, normalised value of every uint8 level.

    The same float32 operations as on a whole frame, applied once per level, so a table lookup
    gives identical values at a fraction of the cost.
    """
    out = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1)
    if cfg.do_rescale:
        out *= np.float32(cfg.rescale_factor)
    if cfg.do_normalize:
        out = (out - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(out.T)


def _resize_crop_reference(frame: np.ndarray, cfg: ProcessorConfig) -> np.ndarray:
    """Resize the whole frame, then centre-crop (padding small frames with zeros): uint8 [h, w, 3]."""
    from PIL import Image

    img = frame
    if cfg.do_resize:
        h, w = resize_hw(frame.shape[0], frame.shape[1], cfg)
        if (h, w) != frame.shape[:2]:
            img = np.asarray(Image.fromarray(frame).resize((w, h), resample=cfg.resample))
    if cfg.do_center_crop:
        ch, cw = cfg.crop_hw
        h, w = img.shape[:2]
        if h < ch or w < cw:  # pad with zeros like transformers' centre crop does for small inputs
            padded = np.zeros((max(h, ch), max(w, cw), 3), dtype=img.dtype)
            top, left = (padded.shape[0] - h + 1) // 2, (padded.shape[1] - w + 1) // 2
            padded[top:top + h, left:left + w] = img
            img, (h, w) = padded, padded.shape[:2]
        top, left = (h - ch) // 2, (w - cw) // 2
        img = img[top:top + ch, left:left + cw]
    return img


def resize_and_crop(frame: np.ndarray, cfg: ProcessorConfig) -> np.ndarray:
    """One RGB uint8 frame [H, W, 3] -> the resized, centre-cropped uint8 frame the vision tower sees."""
    if cfg.do_resize and cfg.do_center_crop:
        hw = resize_hw(frame.shape[0], frame.shape[1], cfg)
        if hw != frame.shape[:2]:
            fast = _resize_and_crop(frame, hw, cfg)
            if fast is not None:
                return fast
    return _resize_crop_reference(frame, cfg)


def normalize(img: np.ndarray, cfg: ProcessorConfig, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [h, w, 3] -> rescaled, normalised float32 [3, h, w] (into ``out`` when given)."""
    table = _lookup(cfg)
    if out is None:
        out = np.empty((3, *img.shape[:2]), dtype=np.float32)
    for c in range(3):
        np.take(table[c], img[:, :, c], out=out[c])
    return out


def preprocess_frames(frames: np.ndarray, cfg: ProcessorConfig) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [T, 3, h, w] float32."""
    crops = [resize_and_crop(f, cfg) for f in frames]
    out = np.empty((len(crops), 3, *crops[0].shape[:2]), dtype=np.float32)
    for img, plane in zip(crops, out, strict=True):
        normalize(img, cfg, plane)
    return out
