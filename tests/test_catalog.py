"""The model catalog: every known checkpoint, its sizes, and whether it is in the local HF cache (offline)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vqa_cli.errors import ModelNotCachedError
from vqa_cli.model import catalog
from vqa_cli.model.families.registry import CHECKPOINTS
from vqa_cli.model.weights import hub

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


def test_an_empty_cache_lists_every_alias_with_its_published_geometry(hub_cache):
    rows = catalog.list_models()
    assert [r["alias"] for r in rows] == [c.alias for c in CHECKPOINTS]
    assert not any(r["cached"] or r["config_cached"] for r in rows)
    assert sum(r["default"] for r in rows) == 1
    for r in rows:
        assert r["disk_estimated"] and r["config_source"] == "published" and r["path"] is None
        assert r["disk_bytes"] == r["parameters"] * 2  # the hub's bf16 weights
        m = r["memory_gib"]
        assert set(m) == {"4bit", "8bit", "none"} and 0 < m["4bit"] < m["8bit"] < m["none"]
        assert r["kv_cache_gib"] > 0 and set(r["peak_gib"]) == {"cuda_4bit", "cuda_bf16", "cpu_float32"}


# ---- llava-onevision-0.5b, counted independently: Qwen2-0.5B + SigLIP so400m + the projector ------------------

QWEN2_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "tie_word_embeddings": True}
SIGLIP_SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16, "image_size": 384,
                 "patch_size": 14}


def _meta_count(model_cls, config) -> int:
    import torch

    with torch.device("meta"):
        return sum(p.numel() for p in model_cls(config).parameters())


def test_the_cpu_default_counts_its_vision_tower(hub_cache):
    """0.89B, not the 0.5B of its name: Qwen2-0.5B (the published 494,032,768 parameters, its vocabulary padded
    from 151936 to 152000 by llava-hf's conversion, tied with the head) plus SigLIP so400m's first 26 layers
    (0.40B), the two-layer projector and the newline; 1.8 GB in bf16. Under 4-bit only the language model's
    linear layers are quantized (the adapter's skip list keeps the vision tower, projector and head)."""
    import transformers

    qwen = _meta_count(transformers.Qwen2ForCausalLM, transformers.Qwen2Config(vocab_size=151936, **QWEN2_05B))
    assert qwen == 494_032_768
    siglip = _meta_count(transformers.SiglipVisionModel,
                         transformers.SiglipVisionConfig(num_hidden_layers=26, vision_use_head=False,
                                                         **SIGLIP_SO400M))
    assert round(siglip / 1e9, 2) == 0.40
    h, v = QWEN2_05B["hidden_size"], SIGLIP_SO400M["hidden_size"]
    projector = (v * h + h) + (h * h + h)
    total = qwen + (152000 - 151936) * h + siglip + projector + h  # + image_newline
    row = _row(catalog.list_models(), "llava-onevision-0.5b")
    assert row["parameters"] == total and round(total / 1e9, 2) == 0.89
    assert row["disk_gb"] == round(total * 2 / 1e9, 2) == 1.79
    kv = 2 * QWEN2_05B["num_key_value_heads"] * (h // QWEN2_05B["num_attention_heads"])
    linear = QWEN2_05B["num_hidden_layers"] * (2 * h * h + h * kv + 3 * h * QWEN2_05B["intermediate_size"])
    nf4 = 0.5 + 0.127 / 8  # bytes per weight: 4 bits and double-quantized constants
    assert row["memory_gib"]["4bit"] == round(((total - linear) * 2 + linear * nf4) / 2**30, 2)
    assert row["memory_gib"]["8bit"] == round(((total - linear) * 2 + linear) / 2**30, 2)
    assert row["memory_gib"]["none"] == round(total * 2 / 2**30, 2)


def test_the_full_test_geometries_are_the_catalogs(tmp_path):
    """vqa_cli.testing's --geometry 7b and 0.5b (the widths and depths of the real checkpoints) and the catalog's
    published geometries are the same numbers."""
    import json

    from vqa_cli.testing import checkpoints as testing

    published = catalog.PUBLISHED["llava-hf/LLaVA-NeXT-Video-7B-hf"]
    built = json.loads((testing.tiny_checkpoint(tmp_path / "7b", geometry="7b", weights=False)
                        / "config.json").read_text())
    for key, value in {**testing._7B_TEXT, "vocab_size": testing._7B_VOCAB}.items():
        assert built["text_config"][key] == value == published[2][key], key
    for key, value in testing._7B_VISION.items():
        assert built["vision_config"][key] == value == published[1][key], key
    onevision = catalog.PUBLISHED["llava-hf/llava-onevision-qwen2-0.5b-ov-hf"]
    assert all(onevision[2][k] == v for k, v in testing._05B_TEXT.items())
    assert all(onevision[1][k] == v for k, v in testing._05B_VISION.items())


# The hub's own parameter totals (the safetensors metadata of the hub API, as public records of it quote them: the
# Qwen3-VL-8B-Instruct revision 0c351dd0 lists 8767123696; MTEB's model metadata gives the Qwen2.5-VL 3B and 7B
# Instruct 3754622976 and 8292166656): the published geometry must count every one of those weights.
HUB_PARAMETERS = {"qwen3-vl-8b": 8_767_123_696, "qwen2.5-vl-3b": 3_754_622_976, "qwen2.5-vl-7b": 8_292_166_656}


@pytest.mark.parametrize("alias", sorted(HUB_PARAMETERS))
def test_published_geometry_counts_the_hubs_parameters(hub_cache, alias):
    assert _row(catalog.list_models(), alias)["parameters"] == HUB_PARAMETERS[alias]


# ---- the figures README.md and docs/models.md state are the catalog's ------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def test_the_readme_states_the_cpu_defaults_sizes(hub_cache):
    import re

    from vqa_cli.model.families.registry import DEFAULT_CPU_MODEL

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## On a laptop"):]
    found = re.search(r"`(\S+)`\s+\((\d+\.\d)B parameters, about (\d+\.\d) GB to download, about (\d+) GiB of "
                      r"RAM at its\s+peak in float32\)", section)
    assert found, "README's On a laptop sentence changed: update this test with it"
    row = _row(catalog.list_models(), DEFAULT_CPU_MODEL)
    assert found.group(1) == DEFAULT_CPU_MODEL
    assert found.group(2) == f"{row['parameters'] / 1e9:.1f}"
    assert found.group(3) == f"{row['disk_bytes'] / 1e9:.1f}"
    assert int(found.group(4)) == round(row["peak_gib"]["cpu_float32"])


def _rows_until_blank(text: str, header: str) -> list[list[str]]:
    lines = text[text.index(header):].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_docs_models_tables_are_the_catalogs(hub_cache):
    import re

    from vqa_cli.cli.models import parameters_text
    from vqa_cli.model.families.registry import adapter_for

    text = (ROOT / "docs" / "models.md").read_text()
    rows = {r["alias"]: r for r in catalog.list_models()}
    laptop = re.search(r"`(\S+)` on the CPU, which fits a laptop \(about (\d+) GiB at its peak in float32", text)
    assert laptop and int(laptop.group(2)) == round(rows[laptop.group(1)]["peak_gib"]["cpu_float32"])
    aliases = _rows_until_blank(text, "| Alias | Hub id | Family | Parameters |")
    assert [re.search(r"`([^`]+)`", r[0]).group(1) for r in aliases] == list(rows)
    for cells in aliases:
        alias = re.search(r"`([^`]+)`", cells[0]).group(1)
        assert cells[3] == parameters_text(rows[alias]["parameters"]), alias
    memory = _rows_until_blank(text, "| Alias | Parameters | Weights 4bit / 8bit / bf16 / fp32 GiB |")
    frames = _rows_until_blank(text, "| Alias | 8 frames | 16 | 32 | 64 | `--mode pooled`, 32 frames |")
    assert len(memory) == 4 and len(frames) == 4
    for cells in memory:
        row = rows[re.search(r"`([^`]+)`", cells[0]).group(1)]
        m, peaks = row["memory_gib"], row["peak_gib"]
        assert cells[1:] == [parameters_text(row["parameters"]),
                             f"{m['4bit']:.1f} / {m['8bit']:.1f} / {m['none']:.1f} / {_gib(row['parameters'] * 4)}",
                             str(adapter_for(catalog.published_config(_known(row["alias"]))).default_frames),
                             f"{row['kv_cache_gib']:.2f}", *(f"{peaks[s]:.1f}" for s in catalog.PEAKS[:3])], cells[0]
    for cells in frames:
        alias = re.search(r"`([^`]+)`", cells[0]).group(1)
        adapter = adapter_for(catalog.published_config(_known(alias)))
        assert cells[1:] == [_pair(adapter, 8), _pair(adapter, 16), _pair(adapter, 32), _pair(adapter, 64),
                             _pair(adapter, 32, "pooled")], alias


def test_docs_models_listing_is_what_vqa_models_prints(hub_cache, capsys):
    from vqa_cli.cli import main

    text = (ROOT / "docs" / "models.md").read_text()
    block = text[text.index("$ vqa models | column -t -s $'\\t'\n"):].split("```")[0].splitlines()[1:]
    with pytest.raises(SystemExit):
        main(["models"])
    printed = capsys.readouterr().out.splitlines()
    assert [line.split() for line in block] == [line.replace(" *", "\t*").split() for line in printed]


def _pair(adapter, frames: int, mode: str = "anyres") -> str:
    """The peak on CUDA in 4-bit / on the CPU in float32, as the frames table shows it."""
    return " / ".join(_gib(catalog.request_peak(adapter, s, frames, mode)) for s in ("cuda_4bit", "cpu_float32"))


def _known(alias: str):
    return next(c for c in CHECKPOINTS if c.alias == alias)


def test_a_cached_checkpoint_reports_its_real_size_and_exact_memory(hub_cache, video_llava_dir):
    import torch
    import transformers

    from vqa_cli.model import loading

    snapshot = _place(hub_cache, "LanguageBind/Video-LLaVA-7B-hf", video_llava_dir)
    row = _row(catalog.list_models(), "video-llava-7b")
    assert row["cached"] and row["config_cached"] and Path(row["path"]) == snapshot
    assert not row["disk_estimated"] and row["config_source"] == "cache"
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
    assert row["config_cached"] and not row["cached"] and row["disk_estimated"] and row["config_source"] == "cache"


def test_download_returns_the_cached_snapshot_offline(hub_cache, video_llava_dir):
    snapshot = _place(hub_cache, "LanguageBind/Video-LLaVA-7B-hf", video_llava_dir)
    assert Path(hub.download("video-llava-7b", progress=False)) == snapshot
    assert hub.download(str(video_llava_dir)) == video_llava_dir


def test_download_offline_of_an_uncached_model_is_a_known_error(hub_cache):
    with pytest.raises(ModelNotCachedError, match="cannot download 'llava-video-7b'"):
        hub.download("llava-video-7b", progress=False)


def test_vqa_models_shows_the_published_video_mme_figures(hub_cache, capsys):
    """Video-MME without subtitles, as the sources in docs/eval.md give it; none where no source is known."""
    import json

    from vqa_cli.cli import main

    with pytest.raises(SystemExit):
        main(["models", "--json"])
    figures = {r["alias"]: r["videomme"] for r in json.loads(capsys.readouterr().out)}
    assert figures["qwen3-vl-2b"] == 61.9 and figures["qwen3-vl-4b"] == 69.3
    assert figures["llava-video-7b"] == 63.3 and figures["llava-onevision-0.5b"] == 44.0
    assert figures["llava-next-video-7b"] is None and figures["qwen3-vl-30b-a3b"] is None
