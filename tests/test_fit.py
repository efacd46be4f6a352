"""Fitting the machine: the memory check before download and load, --fit, --max-memory, and the CPU default.

The memory probe is a parameter: every test gives its own (``probe=`` or, through the command line,
``machine.probe_memory`` replaced), so the refusals are the same on any machine. Expected sizes are computed
here from config.json with the formula docs/models.md states, not with vqa's functions.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest

from vqa_cli.cli import main
from vqa_cli.errors import EXIT_USAGE, MemoryFitError, UsageError, describe
from vqa_cli.model import autofit, catalog, device, fit, machine
from vqa_cli.model.checkpoint import Checkpoint
from vqa_cli.model.session import open_model
from vqa_cli.model.weights import files, hub, loader
from vqa_cli.settings import RunSettings

GIB = 2**30
MIB = 2**20
QUESTION = "What happens?"


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory) -> Path:
    """LLaVA-NeXT-Video-7B's configs and tokenizer, no weights (``--geometry 7b --no-weights``)."""
    from vqa_cli.testing import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("fit") / "lnv-7b", geometry="7b", weights=False)


def probe_of(**free: float):
    """A probe: bytes free per device (``cuda_0`` is ``cuda:0``), None for any other device."""
    table = {k.replace("_", ":"): int(v) for k, v in free.items()}
    return lambda device: table.get(device)


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


# ---- the independent computation (docs/models.md, "How the estimate is made") -------------------------


def parameters(model_dir: Path) -> int:
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = transformers.LlavaNextVideoForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def need(model_dir: Path, params: int, frames: int, prompt_tokens: int, *, visual: int | None = None,
         new_tokens: int = 256, batch: int = 1, dtype_bytes: int = 4) -> int:
    """Peak bytes of an unquantized LLaVA-NeXT-Video request: weights + KV cache + clip tensors
    + max(vision chunk of 16 frames, prefill) + 512 MiB."""
    cfg = json.loads((model_dir / "config.json").read_text())
    v, t = cfg["vision_config"], cfg["text_config"]
    side = v["image_size"] // v["patch_size"]
    grid = side * side
    visual = (side // 2) ** 2 * frames if visual is None else visual  # anyres: 2x2 pooling
    prefill = visual + prompt_tokens
    kv = 2 * t["num_hidden_layers"] * t["num_key_value_heads"] * t["head_dim"] * (prefill + new_tokens) * batch
    clip = batch * frames * grid * (v["hidden_size"] + t["hidden_size"])
    chunk = min(16, batch * frames) * ((grid + 1) * (6 * v["hidden_size"] + 2 * v["intermediate_size"])
                                       + 3 * v["image_size"] ** 2)
    prefill_act = batch * prefill * (6 * t["hidden_size"] + 3 * t["intermediate_size"])
    return params * dtype_bytes + (kv + clip + max(chunk, prefill_act)) * dtype_bytes + 512 * MIB


def prompt_tokens(model_dir: Path, settings: RunSettings, question: str = QUESTION) -> int:
    return Checkpoint(str(model_dir)).budget(settings, [question], num_frames=1).prompt_tokens


# ---- the check --------------------------------------------------------------------------------------


def test_the_estimate_is_the_documented_formula(big_dir):
    settings = RunSettings(model=str(big_dir), frames=8)
    checkpoint = Checkpoint(str(big_dir))
    budget = checkpoint.budget(settings, [QUESTION])
    checked = fit.measure(checkpoint, settings, budget, probe_of(cpu=64 * GIB))
    params = parameters(big_dir)
    assert checked.estimate.peak_bytes == need(big_dir, params, 8, budget.prompt_tokens)
    assert checked.estimate.device == "cpu" and checked.fits is True
    batched = fit.measure(checkpoint, settings, budget, probe_of(cpu=64 * GIB), batch=3)  # caption
    assert batched.estimate.peak_bytes == need(big_dir, params, 8, budget.prompt_tokens, batch=3)


def test_a_request_too_big_for_the_ram_is_refused_before_the_weights(big_dir, monkeypatch):
    from vqa_cli.model.weights import loader

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(loader, "load", never)
    settings = RunSettings(model=str(big_dir))  # CPU: float32, no quantization: about 33 GiB
    with pytest.raises(MemoryFitError) as refused:
        open_model(settings, [QUESTION], probe=probe_of(cpu=16 * GIB))
    message = str(refused.value)
    expected = need(big_dir, parameters(big_dir), 32, prompt_tokens(big_dir, settings))
    assert f"needs about {expected / GIB:.1f} GiB of RAM" in message
    assert "but 16.0 GiB is available" in message and "weights 26.3 GiB in float32" in message
    assert "--quant 4bit (" in message and "--force" in message and "\n" not in message
    assert describe(refused.value)[:2] == (EXIT_USAGE, "memory")


def test_when_no_setting_of_the_model_fits_a_smaller_model_is_suggested(big_dir):
    with pytest.raises(MemoryFitError) as refused:
        open_model(RunSettings(model=str(big_dir)), [QUESTION], probe=probe_of(cpu=5.5 * GIB))
    assert str(refused.value).endswith("try a smaller model (--model llava-onevision-0.5b); --force loads it anyway")


def test_the_command_line_refuses_with_one_line_and_exit_2_on_cpu_and_cuda(big_dir, clip_path, capsys,
                                                                           monkeypatch):
    monkeypatch.setattr(machine, "probe_memory", probe_of(cpu=8 * GIB))
    code, out, err = run_cli(["ask", clip_path, QUESTION, "--model", str(big_dir)], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ") and "of RAM" in err and "8.0 GiB is available" in err
    # A GPU with 6 GiB free (the probe says what the machine has): 4-bit weights alone are 4.2 GiB.
    monkeypatch.setattr(machine, "probe_memory", probe_of(cuda=6 * GIB, cuda_0=6 * GIB, cpu=20 * GIB))
    code, out, err = run_cli(["ask", clip_path, QUESTION, "--model", str(big_dir), "--device", "cuda"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "on cuda" in err and "6.0 GiB is free" in err and "weights 4.2 GiB in 4bit" in err
    # A cap is for everything on its device: the suggested one is the GPU's free memory, KV cache included.
    assert "try --frames 12 (" in err and "--max-memory cuda:0=6GiB,cpu=18GiB (5.8 GiB on cuda:0)" in err


def test_force_loads_what_the_check_would_refuse(tiny_dir):
    settings = RunSettings(model=str(tiny_dir), frames=2, max_new_tokens=2, dtype="float32")
    tight = probe_of(cpu=64 * MIB)  # the estimate's 512 MiB runtime allowance alone is more
    with pytest.raises(MemoryFitError):
        open_model(settings, [QUESTION], probe=tight)
    from dataclasses import replace

    session = open_model(replace(settings, force=True), [QUESTION], probe=tight)
    assert session.engine.model is not None and session.memory is None


def test_a_refused_run_touches_neither_the_network_nor_the_cache(big_dir, tmp_path, monkeypatch):
    """Hub configs cached (as --plan leaves them), weights not: the refusal comes before the weights are asked for."""
    import huggingface_hub
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    repo = cache / "models--llava-hf--LLaVA-NeXT-Video-7B-hf"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(big_dir, repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    asked, connected = [], []
    real_download = huggingface_hub.snapshot_download

    def spy(repo_id, **kwargs):
        asked.append(kwargs.get("allow_patterns"))
        return real_download(repo_id, **kwargs)

    def no_network(self, address):
        connected.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    before = sorted((str(p), p.stat().st_size) for p in cache.rglob("*"))
    with pytest.raises(MemoryFitError):
        open_model(RunSettings(model="llava-next-video-7b"), [QUESTION], probe=probe_of(cpu=8 * GIB))
    assert asked and all("*.safetensors" not in patterns for patterns in asked)  # configs only
    assert connected == []
    assert sorted((str(p), p.stat().st_size) for p in cache.rglob("*")) == before


def test_caption_starts_from_the_largest_batch_that_fits(tiny_dir, clip_path, tmp_path, capsys, monkeypatch):
    from vqa_cli.model.prompt import DEFAULT_CAPTION_PROMPT

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):
        shutil.copy(clip_path, videos / f"{i}.mp4")
    settings = RunSettings(model=str(tiny_dir), frames=4, max_new_tokens=2)
    prompt = prompt_tokens(tiny_dir, settings, DEFAULT_CAPTION_PROMPT)
    params = parameters(tiny_dir)
    two, three = (need(tiny_dir, params, 4, prompt, new_tokens=2, batch=b) for b in (2, 3))
    assert two < three
    monkeypatch.setattr(machine, "probe_memory", probe_of(cpu=two))
    out = tmp_path / "c.jsonl"
    code, _, err = run_cli(["caption", str(videos), "--out", str(out), "--model", str(tiny_dir), "--frames", "4",
                            "--max-new-tokens", "2", "--batch-size", "4", "--workers", "1"], capsys)
    assert code == 0, err
    assert "--batch-size 4 does not fit the memory (cpu): starting at 2" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and {r["batch_size"] for r in rows} == {2}


# ---- --fit ------------------------------------------------------------------------------------------


def test_fit_takes_the_most_frames_that_fit_by_an_independent_computation(big_dir):
    settings = RunSettings(model=str(big_dir), fit=True)
    checkpoint = Checkpoint(str(big_dir))
    prompt, params = prompt_tokens(big_dir, settings), parameters(big_dir)
    at = {n: need(big_dir, params, n, prompt) for n in (11, 12)}
    chosen, choice = autofit.fit(checkpoint, settings, [QUESTION], probe=probe_of(cpu=at[11] + MIB))
    assert at[12] > at[11] + MIB
    assert (chosen.frames, chosen.mode.name, chosen.fit) == (11, "anyres", False)
    assert (choice.frames, choice.requested_frames, choice.changed) == (11, 32, True)
    # With room to spare, the context decides: -n 200 at RoPE factor 4 holds 16384 positions.
    many = RunSettings(model=str(big_dir), frames=200, fit=True)
    chosen, _ = autofit.fit(checkpoint, many, [QUESTION], probe=probe_of(cpu=1024 * GIB))
    assert chosen.frames == (4096 * 4 - 256 - prompt) // 144


def test_fit_falls_back_to_a_cheaper_mode_when_one_frame_does_not_fit(big_dir):
    from vqa_cli.settings import ModeSettings

    settings = RunSettings(model=str(big_dir), mode=ModeSettings("pooled"), fit=True)
    checkpoint = Checkpoint(str(big_dir))
    prompt, params = prompt_tokens(big_dir, settings), parameters(big_dir)
    room = need(big_dir, params, 5, prompt) + MIB  # anyres, 5 frames
    assert need(big_dir, params, 1, prompt, visual=16 * 12 * 12) > room  # pooled: 2304 tokens at any frame count
    assert need(big_dir, params, 6, prompt) > room
    chosen, choice = autofit.fit(checkpoint, settings, [QUESTION], probe=probe_of(cpu=room))
    assert (chosen.mode.name, chosen.frames) == ("anyres", 5)
    assert choice.line() == ("--fit: 5 frames in --mode anyres instead of 32 in --mode pooled "
                             f"(about {choice.check.estimate.peak_bytes / GIB:.1f} GiB of {room / GIB:.1f} GiB of RAM)")


def test_fit_is_said_on_stderr_and_in_json(tiny_dir, clip_path, capsys, monkeypatch):
    settings = RunSettings(model=str(tiny_dir), max_new_tokens=3)
    prompt, params = prompt_tokens(tiny_dir, settings), parameters(tiny_dir)
    room = need(tiny_dir, params, 6, prompt, new_tokens=3)
    monkeypatch.setattr(machine, "probe_memory", probe_of(cpu=room))
    code, out, err = run_cli(["ask", clip_path, QUESTION, "--model", str(tiny_dir), "--max-new-tokens", "3",
                              "--fit", "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["frames"] == 6 and record["fit"]["frames"] == 6 and record["fit"]["requested_frames"] == 32
    assert "--fit: 6 frames instead of 32 (--mode anyres, about " in err
    code, out, err = run_cli(["ask", clip_path, QUESTION, "--model", str(tiny_dir), "--max-new-tokens", "3",
                              "--fit", "--plan", "--json"], capsys)
    plan = json.loads(out)
    assert code == 0 and plan["frames"] == 6 and plan["fit"]["changed"] and plan["memory"]["fits"] is True


def test_fit_and_force_are_exclusive_and_placement_is_not_part_of_the_identity():
    from dataclasses import replace

    from vqa_cli.cli.options import run_settings

    with pytest.raises(UsageError, match="pick one"):
        run_settings(model="m", fit=True, force=True)
    base = RunSettings(model="m", frames=8)
    placed = replace(base, max_memory=(("cuda:0", 6 * GIB),), force=True, fit=True)
    assert placed.identity() == base.identity()
    assert replace(base, frames=7).identity() != base.identity()  # a frame count --fit chose is a real setting


# ---- --max-memory -------------------------------------------------------------------------------------


def test_max_memory_parses_sizes_and_devices():
    assert device.parse_max_memory("cuda:0=6GiB,cpu=24GiB") == (("cuda:0", 6 * GIB), ("cpu", 24 * GIB))
    assert device.parse_max_memory("cuda=512MiB, cpu = 1.5GB") == (("cuda:0", 512 * MIB), ("cpu", 1_500_000_000))
    assert device.parse_max_memory(None) == ()
    for bad in ("gpu=6GiB", "cuda:0=6", "cuda:0", "cpu=6GiB,cpu=1GiB", "cpu=lots"):
        with pytest.raises(UsageError, match="--max-memory"):
            device.parse_max_memory(bad)


def test_max_memory_must_name_the_device_the_model_runs_on():
    with pytest.raises(UsageError, match="must give the GPU"):
        device.target(RunSettings(model="m", device="cuda", max_memory=(("cpu", GIB),)))
    with pytest.raises(UsageError, match="runs on cpu"):
        device.target(RunSettings(model="m", device="cpu", max_memory=(("cuda:0", GIB),)))
    with pytest.raises(UsageError, match="--quant none"):
        device.target(RunSettings(model="m", device="cpu", quant="4bit", max_memory=(("cpu", GIB),)))


def per_parameter(model, placed: dict | None) -> dict[str, str]:
    """Each parameter's device under a ``device_map`` (vqa's names, ``0`` -> ``cuda:0``); every one on ``cpu``
    without a map (transformers leaves ``hf_device_map`` out when one device holds everything)."""
    keys = sorted(placed or {"": "cpu"}, key=len, reverse=True)
    name = {str(k): (f"cuda:{v}" if isinstance(v, int) else str(v)) for k, v in (placed or {"": "cpu"}).items()}
    return {p: name[next(k for k in keys if k == "" or p == k or p.startswith(k + "."))]
            for p, _ in model.named_parameters()}


def test_the_plan_verdict_is_the_placement_the_load_gets(tiny_dir, clip_path, capsys, tmp_path, monkeypatch):
    """For caps too small, one byte under the smallest that fits, exactly it and generous: --plan's verdict and
    device_map, the loaded model's hf_device_map, and transformers' own placement (``device_map="auto"`` in what
    the cap leaves beside the KV cache, activations and runtime, by the documented formula) all agree."""
    from dataclasses import replace

    import torch
    import transformers


    frames, new = 3, 4
    settings = RunSettings(model=str(tiny_dir), frames=frames, max_new_tokens=new, dtype="float32")
    params = parameters(tiny_dir)
    extra = need(tiny_dir, params, frames, prompt_tokens(tiny_dir, settings), new_tokens=new) - params * 4
    offload = tmp_path / "offload"

    def plan_of(cap: int, *more: str) -> dict:
        code, out, err = run_cli(["ask", clip_path, QUESTION, "--model", str(tiny_dir), "--frames", str(frames),
                                  "--max-new-tokens", str(new), "--dtype", "float32", "--plan", "--json",
                                  "--max-memory", f"cpu={cap}B", *more], capsys)
        assert code == 0, err
        return json.loads(out)["memory"]

    refused = plan_of(MIB)
    assert refused["max_memory_fits"] is False and refused["fits"] is False
    smallest = refused["max_memory_smallest_bytes"]["cpu"]
    assert refused["max_memory_smallest"] == f"cpu={-(-smallest // MIB)}MiB"
    passed: list[dict] = []  # what from_pretrained got, load by load
    real_load = files.load_weights
    monkeypatch.setattr(files, "load_weights", lambda *a, **k: passed.append(k) or real_load(*a, **k))
    cls = transformers.LlavaNextVideoForConditionalGeneration
    for cap, allow in [(MIB, False), (MIB, True), (smallest - 1, False), (smallest - 1, True), (smallest, False),
                       (2 * GIB, False)]:
        more = ["--offload-dir", str(offload)] if allow else []
        mem = plan_of(cap, *more)
        own = cls.from_pretrained(tiny_dir, device_map="auto", max_memory={"cpu": max(0, cap - extra)},
                                  dtype=torch.float32)
        oracle = per_parameter(own, getattr(own, "hf_device_map", None))
        on_disk = "disk" in oracle.values()
        assert on_disk == (cap < smallest)
        assert per_parameter(own, mem["device_map"]) == oracle
        assert mem["max_memory_fits"] is ((not on_disk or allow) and cap >= extra)
        assert (mem["placement_bytes"].get("disk", 0) > 0) == on_disk
        run = replace(settings, max_memory=(("cpu", cap),), offload_dir=str(offload) if allow else None)
        before = len(passed)
        if not mem["max_memory_fits"]:
            with pytest.raises(MemoryFitError, match=r"the smallest that fits is --max-memory cpu="):
                open_model(run, [QUESTION])
            with pytest.raises(MemoryFitError, match=r"the smallest that fits is --max-memory cpu="):
                open_model(replace(run, force=True), [QUESTION])  # --force does not override the user's cap
            assert len(passed) == before  # nothing was loaded
            continue
        loaded = open_model(run, [QUESTION]).engine.model
        assert per_parameter(loaded, getattr(loaded, "hf_device_map", None)) == oracle
        assert ("offload_folder" in passed[-1]) == on_disk
        assert any(p.device.type == "meta" for p in loaded.parameters()) == on_disk  # really not in memory
    assert all("disk" not in set(k["device_map"].values()) or "offload_folder" in k for k in passed)


def test_a_cap_the_weights_cannot_fit_is_refused_in_one_line_before_loading(tiny_dir, clip_path, capsys,
                                                                            monkeypatch, tmp_path):
    import transformers

    from vqa_cli.model import loading

    def never(*args, **kwargs):
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(transformers.LlavaNextVideoForConditionalGeneration, "from_pretrained", never)
    for extra in ([], ["--force"]):
        code, out, err = run_cli(["ask", clip_path, QUESTION, "--model", str(tiny_dir), "--frames", "3",
                                  "--max-memory", "cpu=1MiB", *extra], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
        assert "does not fit --max-memory (cpu 1.0 MiB)" in err and "would go to disk" in err
        assert "the smallest that fits is --max-memory cpu=" in err and "--offload-dir DIR" in err
    code, _, err = run_cli(["ask", clip_path, QUESTION, "--model", str(tiny_dir), "--offload-dir", str(tmp_path)],
                           capsys)
    assert code == 2 and "--offload-dir lets --max-memory put weights on disk" in err
    # Loading directly: a device_map with disk never reaches from_pretrained without an offload folder.
    import torch

    config = loading.read_config(tiny_dir)
    with pytest.raises(MemoryFitError, match="--offload-dir"):
        loader.load_model(tiny_dir, config, device="cpu", dtype=torch.float32, quant="none",
                           max_memory={"cpu": 500_000})


def test_offloaded_layers_answer_alike(tiny_dir, clip_path, tmp_path):
    """Layers on disk (--offload-dir) are read from the safetensors when needed: the answers do not change."""
    from dataclasses import replace

    from vqa_cli.model.engine import sample_clip

    base = RunSettings(model=str(tiny_dir), frames=3, max_new_tokens=6, dtype="float32")
    params = parameters(tiny_dir)
    extra = need(tiny_dir, params, 3, prompt_tokens(tiny_dir, base), new_tokens=6) - params * 4
    spread = open_model(replace(base, max_memory=(("cpu", extra + 500_000),), offload_dir=str(tmp_path)),
                        [QUESTION]).engine
    whole = open_model(base, [QUESTION]).engine
    placed = spread.model.hf_device_map
    assert set(placed.values()) == {"cpu", "disk"}
    assert any(k.startswith("model.language_model.layers") and v == "disk" for k, v in placed.items())
    clip, _ = sample_clip(clip_path, base, 3)
    assert spread.answer(clip, QUESTION).text == whole.answer(clip, QUESTION).text


def test_gpu_caps_planned_on_a_cpu_agree_with_accelerates_placement(big_dir, clip_path, capsys):
    """``cuda:0=…,cpu=…`` planned here (no GPU): --plan's device_map and verdict are accelerate's placement of the
    architecture in what each cap leaves (the GPU's less the KV cache, activations and runtime)."""
    import torch
    import transformers
    from accelerate import infer_auto_device_map

    settings = RunSettings(model=str(big_dir), device="cuda", quant="none", dtype="bfloat16")
    params = parameters(big_dir)
    extra = need(big_dir, params, 32, prompt_tokens(big_dir, settings), dtype_bytes=2) - params * 2
    with torch.device("meta"):
        model = transformers.LlavaNextVideoForConditionalGeneration(transformers.AutoConfig.from_pretrained(big_dir))

    def oracle(gpu: int, cpu: int) -> dict[str, str]:
        placed = infer_auto_device_map(model, max_memory={0: max(0, gpu - extra), "cpu": cpu}, dtype=torch.bfloat16,
                                       no_split_module_classes=sorted(model._no_split_modules))
        return per_parameter(model, placed)

    def plan_of(gpu: int, cpu: int) -> dict:
        code, out, err = run_cli(["ask", clip_path, QUESTION, "--model", str(big_dir), "--device", "cuda", "--quant",
                                  "none", "--dtype", "bfloat16", "--plan", "--json",
                                  "--max-memory", f"cuda:0={gpu}B,cpu={cpu}B"], capsys)
        assert code == 0, err
        return json.loads(out)["memory"]

    small = plan_of(8 * GIB, MIB)
    assert small["max_memory_fits"] is False
    smallest = small["max_memory_smallest_bytes"]
    assert smallest["cuda:0"] == 8 * GIB
    for gpu, cpu in [(8 * GIB, MIB), (8 * GIB, smallest["cpu"] - 1), (8 * GIB, smallest["cpu"]), (8 * GIB, 24 * GIB),
                     (2 * GIB, 24 * GIB)]:
        mem, expected = plan_of(gpu, cpu), oracle(gpu, cpu)
        assert per_parameter(model, mem["device_map"]) == expected
        fits = "disk" not in expected.values() and gpu >= extra and "cuda:0" in expected.values()
        assert mem["max_memory_fits"] is fits and mem["placement_bytes"].get("cuda:0", 0) <= max(0, gpu - extra)
    assert plan_of(2 * GIB, 24 * GIB)["max_memory_smallest_bytes"]["cuda:0"] > extra


def test_offloaded_layers_are_counted_unquantized(big_dir, clip_path, capsys):
    """With 4-bit on a GPU, bitsandbytes leaves the layers offloaded to the CPU in the compute dtype (bf16)."""
    import torch
    import transformers

    code, out, err = run_cli(["ask", clip_path, QUESTION, "--model", str(big_dir), "--device", "cuda", "--plan",
                              "--json", "--max-memory", "cuda:0=6GiB,cpu=18GiB"], capsys)
    assert code == 0, err
    memory = json.loads(out)["memory"]
    on_cpu = [k for k, v in memory["device_map"].items() if v == "cpu"]
    with torch.device("meta"):
        model = transformers.LlavaNextVideoForConditionalGeneration(transformers.AutoConfig.from_pretrained(big_dir))
    cpu_params = sum(p.numel() for n, p in model.named_parameters() if any(n.startswith(k + ".") for k in on_cpu))
    assert cpu_params > 0 and memory["placement_bytes"]["cpu"] == cpu_params * 2
    assert 0 < memory["placement_bytes"]["cuda:0"] <= 6 * GIB


# ---- the default without CUDA ---------------------------------------------------------------------------


def test_without_cuda_the_default_is_the_cpu_model_and_says_so(monkeypatch, capsys):
    from vqa_cli.cli.options import run_settings

    monkeypatch.delenv("VQA_MODEL", raising=False)
    assert run_settings(model=None, device="cpu").model == "qwen3-vl-2b"
    notice = capsys.readouterr().err
    assert "the default model is qwen3-vl-2b" in notice and "--model llava-onevision-0.5b for a slow" in notice
    assert run_settings(model=None, device="cuda").model == "llava-next-video-7b"
    assert run_settings(model="x/y", device="cpu").model == "x/y"
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("VQA_MODEL", "/models/mine")
    assert run_settings(model=None, device="cpu").model == "/models/mine"
    assert run_settings().model == "/models/mine"  # a command without --model (frames)


def test_models_json_marks_the_default_of_each_device(capsys, monkeypatch, tmp_path):
    import torch

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    code, out, _ = run_cli(["models", "--json"], capsys)
    rows = {r["alias"]: r for r in json.loads(out)}
    assert code == 0
    assert [a for a, r in rows.items() if r["default_cpu"]] == ["qwen3-vl-2b"]
    assert [a for a, r in rows.items() if r["default_cuda"]] == ["llava-next-video-7b"]
    here = "llava-next-video-7b" if torch.cuda.is_available() else "qwen3-vl-2b"
    assert [a for a, r in rows.items() if r["default"]] == [here]
    cuda_rows = catalog.list_models(tmp_path, cuda=True)
    assert [r["alias"] for r in cuda_rows if r["default"]] == ["llava-next-video-7b"]


# ---- the first download ---------------------------------------------------------------------------------


def test_a_first_download_says_its_size_and_destination_and_how_to_resume(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    fetched = []
    monkeypatch.setattr(hub, "download", lambda name, progress: fetched.append((name, progress)))
    hub.fetch_weights("llava-onevision-0.5b", size=lambda repo: 1_790_000_000, progress=False)
    err = capsys.readouterr().err
    assert fetched == [("llava-onevision-0.5b", False)]
    assert f"downloading llava-hf/llava-onevision-qwen2-0.5b-ov-hf: 1.8 GB of weights into {tmp_path}" in err

    def interrupted(name, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(hub, "download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hub.fetch_weights("llava-onevision-0.5b", size=lambda repo: None, progress=False)
    assert "run the command again, or `vqa download llava-onevision-0.5b`, to resume it" in capsys.readouterr().err
    hub.fetch_weights(str(tmp_path))  # a local directory: nothing to download, nothing said
    snapshot = tmp_path / "models--llava-hf--llava-onevision-qwen2-0.5b-ov-hf" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"cached")
    monkeypatch.setattr(hub, "download", lambda name, progress: fetched.append((name, progress)))
    hub.fetch_weights("llava-onevision-0.5b", size=lambda repo: 1)  # cached: nothing to download
    assert fetched == [("llava-onevision-0.5b", False)]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.fetch_weights("llava-onevision-0.5b")  # offline: the load says what is missing
    assert capsys.readouterr().err == ""


def test_the_probe_reads_this_machine():
    ram = machine.available_ram()
    assert ram is None or ram > 0
    assert machine.probe_memory("cpu") == ram or machine.probe_memory("cpu") > 0
    assert machine.probe_memory("mps:7") is None
    if "torch" in sys.modules:
        import torch

        if not torch.cuda.is_available():
            assert machine.probe_memory("cuda") is None and machine.probe_memory("cuda:0") is None
