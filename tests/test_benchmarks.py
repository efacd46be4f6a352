"""The GPU benchmark's arithmetic, and (heavy) the whole script at the tiny geometry on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu
from benchmarks import load as load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_decode_floor_counts_the_language_model_and_head_once(engine_factory):
    model = engine_factory(frames=4).model
    tensors = list(model.named_parameters()) + list(model.named_buffers())  # buffers: rotary, quant state
    expected = sum(p.numel() * p.element_size() for n, p in tensors
                   if n.startswith(("model.language_model", "lm_head")) and "embed_tokens" not in n)
    assert gpu.decode_bytes_per_token(model) == expected
    vision = sum(p.numel() for n, p in model.named_parameters() if n.startswith("model.vision_tower"))
    assert vision > 0  # the vision tower is not read per token and is left out


def test_table_states_ratios_and_fraction_of_the_floor():
    row = {"who": "vqa", "mode": "anyres", "frames": 32, "visual_tokens": 4608, "rope_factor": 2.0,
           "decode_s": 1.0, "preprocess_s": 0.1, "encode_s": 0.2, "prefill_s": 0.3, "e2e_ttft_s": 1.6,
           "tokens_per_s": 50.0, "peak_gib": None, "floor_bytes": 10**9}
    base = dict(row, who="transformers", mode="anyres (native)", tokens_per_s=25.0)
    text = gpu.table([row, base], bandwidth=100.0)  # floor: 100 GB/s / 1 GB = 100 tok/s
    assert "| 50.0 | 2.00x | 100.0 | 50% |" in text and "| 25.0 | 1.00x | 100.0 | 25% |" in text


@pytest.mark.heavy
def test_gpu_benchmark_runs_end_to_end_at_the_tiny_geometry(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--geometry", "tiny", "--device",
                           "cpu", "--new-tokens", "8", "--modes", "anyres", "pooled", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| vqa") or line.startswith("| transformers")]
    assert len(rows) == 3


@pytest.mark.heavy
def test_caption_benchmark_runs_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "caption.py"), "--videos", "3", "--seconds", "2",
                           "--repeats", "1", "--max-new-tokens", "4", "--batch-size", "2"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| naive", "| vqa"))]
    assert len(rows) == 3 and rows[0].split("|")[4].strip() == "1.00x"


def test_load_benchmark_times_both_loads_and_the_copy_is_really_read(tiny_dir, tmp_path):
    rows = load_benchmark.load_table(tiny_dir, dtype="float32", repeats=2, cache=tmp_path / "cache")
    assert [r["method"] for r in rows] == ["quantize on load", "pre-quantized copy",
                                         "first load: quantize, then write the copy"]
    base, copy, first = rows
    assert base["ratio"] == 1.0 and copy["ratio"] == base["ready_s"] / copy["ready_s"]
    assert len(copy["each_ready_s"]) == 2 and all(r["load_s"] <= r["ready_s"] for r in (base, copy))
    assert copy["reads_bytes"] < base["reads_bytes"]  # the language model's weights are 4-bit in the copy
    assert first["with_write_s"] >= first["load_s"] and first["ratio"] is None
    assert len(list((tmp_path / "cache" / "quantized").iterdir())) == 1
    text = load_benchmark.format_table(rows)
    assert text.count("\n| ") == 3 and "target: pre-quantized copy >= 2x faster (ready):" in text


@pytest.mark.heavy
def test_load_benchmark_runs_end_to_end_at_the_tiny_geometry():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load.py"), "--geometry", "tiny",
                           "--repeats", "1"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| quantize", "| pre-quantized", "| first"))]
    assert len(rows) == 3 and rows[0].split("|")[6].strip() == "1.00x"


def test_benchmarks_import_the_project_never_tests():
    """benchmarks/ import vqa_cli (``vqa_cli.testing`` for clips and servers), never a module of tests/."""
    import ast

    test_modules = {path.stem for path in (ROOT / "tests").glob("*.py")}
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(script.read_text(encoding="utf-8"))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert not imported & test_modules, f"{script.name} imports {sorted(imported & test_modules)} from tests/"
        strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
        assert "tests" not in strings, f"{script.name} puts tests/ on sys.path"


def test_cpu_default_answer_latency_and_the_3x_rule():
    from benchmarks import cpu_default

    def row(model, prefill, per_token, head):
        return {"model": model, "who": "vqa", "mode": "anyres", "decode_s": 1.0, "preprocess_s": 0.5, "encode_s": 2.5,
                "prefill_s": prefill, "per_token_s": per_token, "head_s": head}

    small = row("llava-onevision-0.5b", 6.0, 0.5, 0.1)  # first token at 10 s, then 0.6 s a token with the head
    assert cpu_default.answer_s(small, 11) == 1.0 + 0.5 + 2.5 + 6.0 + 10 * 0.5
    assert cpu_default.answer_s(small, 11, real_head=True) == 10.0 + 10 * 0.6
    within = row("qwen3-vl-2b", 44.0, 0.9, 0.1)  # 48 + 10 x 1.0 = 58 s = 3.625x of 16 s: over
    assert "3.62x" in cpu_default.verdict([small, within], 11) and "keep the 0.5B" in cpu_default.verdict(
        [small, within], 11)
    assert "within 3x" in cpu_default.verdict([small, row("qwen3-vl-2b", 34.0, 0.9, 0.1)], 11)  # 48 / 16 = 3.0


@pytest.mark.heavy
def test_cpu_default_benchmark_runs_end_to_end_at_the_tiny_geometry(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_default.py"), "--geometry", "tiny",
                           "--modes", "anyres", "--new-tokens", "3", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| qwen3") or
            line.startswith("| llava")]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [(m, w) for m in ("llava-onevision-0.5b", "qwen3-vl-2b")
                                                            for w in ("vqa", "transformers")]
    assert [r[6].strip() for r in rows] == ["1569", "1569", "880", "880"]  # 8 x 196 + 1; 4 groups of 11 x 20
    assert "rule (anyres" in proc.stdout
