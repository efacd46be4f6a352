"""The model catalog: every known checkpoint, its sizes, and whether it is in the local HF cache (offline)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vqa_cli import catalog
from vqa_cli.errors import ModelNotCachedError
from vqa_cli.models.registry import CHECKPOINTS

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty HF cache, offline: nothing here may reach the network."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def video_llava_dir(tmp_path_factory) -> Path:
    from vqa_cli.testing import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("catalog") / "video-llava", family="video-llava")


def _place(cache: Path, repo_id: str, source: Path, *, weights: bool = True) -> Path:
    """Lay ``source`` out as the cached main revision of ``repo_id`` (the hub cache's folder layout)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    ignore = None if weights else shutil.ignore_patterns("*.safetensors")
    shutil.copytree(source, snapshot, ignore=ignore)
    return snapshot


def _row(rows: list[dict], alias: str) -> dict:
    return next(r for r in rows if r["alias"] == alias)


def test_an_empty_cache_lists_every_alias_uncached_with_nominal_sizes(hub_cache):
    rows = catalog.list_models()
    assert [r["alias"] for r in rows] == [c.alias for c in CHECKPOINTS]
    assert not any(r["cached"] or r["config_cached"] for r in rows)
    assert sum(r["default"] for r in rows) == 1
    for r in rows:
        assert r["disk_estimated"] and r["memory_estimated"] and r["kv_cache_gib"] is None and r["path"] is None
        m = r["memory_gib"]
        assert set(m) == {"4bit", "8bit", "none"} and 0 < m["4bit"] < m["8bit"] < m["none"]
    seven = _row(rows, "video-llava-7b")
    assert seven["parameters"] == 7 * 10**9 and seven["disk_gb"] == 14.0
    assert _row(rows, "llava-onevision-0.5b")["disk_gb"] == 1.0


def test_a_cached_checkpoint_reports_its_real_size_and_exact_memory(hub_cache, video_llava_dir):
    import torch
    import transformers

    from vqa_cli import loading

    snapshot = _place(hub_cache, "LanguageBind/Video-LLaVA-7B-hf", video_llava_dir)
    row = _row(catalog.list_models(), "video-llava-7b")
    assert row["cached"] and row["config_cached"] and Path(row["path"]) == snapshot
    assert not row["disk_estimated"] and not row["memory_estimated"]
    assert row["disk_bytes"] == sum(p.stat().st_size for p in snapshot.glob("*.safetensors"))
    config = loading.read_config(snapshot)
    with torch.device("meta"):
        model = transformers.VideoLlavaForConditionalGeneration(config)
    assert row["parameters"] == sum(p.numel() for p in model.parameters())
    assert row["kv_cache_gib"] is not None and row["memory_gib"]["none"] >= row["memory_gib"]["4bit"]
    assert not _row(catalog.list_models(), "llava-onevision-7b")["cached"]


def test_configs_without_weights_are_not_cached(hub_cache, video_llava_dir):
    _place(hub_cache, "LanguageBind/Video-LLaVA-7B-hf", video_llava_dir, weights=False)
    row = _row(catalog.list_models(), "video-llava-7b")
    assert row["config_cached"] and not row["cached"] and row["disk_estimated"] and not row["memory_estimated"]


def test_download_returns_the_cached_snapshot_offline(hub_cache, video_llava_dir):
    snapshot = _place(hub_cache, "LanguageBind/Video-LLaVA-7B-hf", video_llava_dir)
    assert Path(catalog.download("video-llava-7b", progress=False)) == snapshot
    assert catalog.download(str(video_llava_dir)) == video_llava_dir


def test_download_offline_of_an_uncached_model_is_a_known_error(hub_cache):
    with pytest.raises(ModelNotCachedError, match="cannot download 'llava-video-7b'"):
        catalog.download("llava-video-7b", progress=False)
