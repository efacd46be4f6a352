"""Mutation check: break one formula, wiring step or constant at a time and make sure a test goes red.

Not collected by pytest (the name does not start with ``test_``). Run it from the repository root:

    python tests/mutation_check.py                 # every mutant, a markdown table on stdout
    python tests/mutation_check.py --only modes    # the mutants whose name starts with "modes"
    python tests/mutation_check.py --list

Each mutant replaces one snippet of one file (it must occur exactly once, so a stale mutant fails
loudly instead of silently testing nothing) in a scratch copy of the working tree, then runs the
tests named for it with that copy first on ``PYTHONPATH`` (subprocesses started by the tests
inherit it). A mutant is *killed* when the tests fail, and *survives* when they pass. The
unmutated copy must pass the same tests first. The result table goes in docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # file, relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files
    what: str  # one line for the table


M = Mutant
_PROJECT = "        projected = adapter.project(model, frames.grid)  # [T, h, w, D]\n"
MODES_T = ("tests/test_modes.py", "tests/test_wiring.py")
GUIDE_T = ("tests/test_guide.py", "tests/test_wiring.py")
PROMPT_T = ("tests/test_prompt.py", "tests/test_prompt_ids.py", "tests/test_engine.py")
CONV_T = ("tests/test_conversation.py", "tests/test_wiring.py")
PRE_T = ("tests/test_preprocess.py",)
VIDEO_T = ("tests/test_video.py", "tests/test_video_sampling.py")
PYAV_T = (*VIDEO_T, "tests/test_video_pyav.py")
SAFE_T = ("tests/test_output_safety.py", "tests/test_caption.py")
CKPT_T = ("tests/test_checkpoint_errors.py", "tests/test_loading.py")
FIT_T = ("tests/test_fit.py",)
SERVE_T = ("tests/test_serve_parts.py", "tests/test_serve.py")
QUANT_T = ("tests/test_quantized.py",)
_RE = "tests/test_reduce_engine.py::"  # the reduction wiring's tests

MUTANTS: list[Mutant] = [
    # ---- modes: the papers' formulas and constants
    M("modes.slow-positions-round", "vqa_cli/model/pooling.py", "int(math.floor(i * num_frames / slow))",
      "int(round(i * num_frames / slow))", MODES_T, "slow frames at round() instead of floor() of linspace"),
    M("modes.slow-avg", "vqa_cli/model/pooling.py", "slow_tokens = F.max_pool2d(x, kernel_size=(1, 2), stride=(1, 2), "
      "ceil_mode=True)", "slow_tokens = F.avg_pool2d(x, kernel_size=(1, 2), stride=(1, 2), ceil_mode=True)",
      MODES_T, "slow pathway averages instead of max-pooling"),
    M("modes.slow-columns", "vqa_cli/model/pooling.py",
      "F.max_pool2d(x, kernel_size=(1, 2), stride=(1, 2), ceil_mode=True)",
      "F.max_pool2d(x, kernel_size=(2, 1), stride=(2, 1), ceil_mode=True)", MODES_T,
      "slow pathway pools pairs of rows instead of neighbours in a row"),
    M("modes.order", "vqa_cli/model/pooling.py", "return torch.cat([slow_tokens, fast], dim=0)",
      "return torch.cat([fast, slow_tokens], dim=0)", MODES_T, "fast tokens before slow"),
    M("modes.pooled-max", "vqa_cli/model/pooling.py", "out = F.adaptive_avg_pool3d(x, pool)[0]",
      "out = F.adaptive_max_pool3d(x, pool)[0]", MODES_T, "PLLaVA pooling takes the max"),
    M("modes.pooled-transpose", "vqa_cli/model/pooling.py",
      "return out.permute(1, 2, 3, 0).reshape(-1, grid.shape[-1])",
      "return out.permute(1, 3, 2, 0).reshape(-1, grid.shape[-1])", MODES_T, "pooled tokens column-major"),
    M("modes.fast-grid-constant", "vqa_cli/model/modes.py", "SLOWFAST_FAST_GRID = 4", "SLOWFAST_FAST_GRID = 3",
      ("tests/test_modes.py",), "fast grid 3x3 instead of 4x4"),
    M("modes.pool-side-constant", "vqa_cli/model/modes.py", "POOLED_SIDE = 12", "POOLED_SIDE = 11",
      ("tests/test_modes.py",), "PLLaVA output side 11 instead of 12"),
    M("modes.scaled-floor", "vqa_cli/model/modes.py", "return max(1, round(value * grid_side / REFERENCE_GRID))",
      "return max(1, int(value * grid_side / REFERENCE_GRID))", ("tests/test_modes.py",),
      "parameters for other grids truncated instead of rounded"),
    M("modes.relevance-no-exp", "vqa_cli/model/pooling.py",
      "scale = torch.as_tensor(logit_scale, dtype=torch.float32).exp()",
      "scale = torch.as_tensor(logit_scale, dtype=torch.float32)", GUIDE_T, "logit scale used without exp"),
    M("modes.relevance-no-normalise", "vqa_cli/model/pooling.py",
      "v = torch.nn.functional.normalize(visual.float(), dim=-1)",
      "v = visual.float()", GUIDE_T, "visual embeddings not L2-normalised"),
    M("modes.guide-temperature", "vqa_cli/model/pooling.py", "r = F.pad(weights.float() / temperature,",
      "r = F.pad(weights.float() * temperature,", GUIDE_T, "window softmax temperature multiplied"),
    M("modes.anyres-max", "vqa_cli/model/pooling.py", "return F.avg_pool2d(x, kernel_size=stride, stride=stride)"
      ".permute(0, 2, 3, 1)", "return F.max_pool2d(x, kernel_size=stride, stride=stride).permute(0, 2, 3, 1)",
      ("tests/test_modes.py", "tests/test_engine.py"), "anyres per-frame pooling takes the max"),
    # ---- engine: wiring of the stages
    # (the modes' own wiring lives in vqa_cli/model/modes.py: ``ProjectedMode.apply`` projects, then the mode pools)
    M("engine.pool-before-projector", "vqa_cli/model/modes.py", _PROJECT,
      '        if self.name == "slowfast":\n'
      "            return adapter.project(model, self.pool(settings, frames.grid, frames.grid, guide, prompt_text))\n"
      + _PROJECT, ("tests/test_wiring.py",), "slowfast pools before the projector"),
    M("engine.pooled-before-projector", "vqa_cli/model/modes.py", _PROJECT,
      '        if self.name == "pooled" and not settings.guide:\n'
      "            return adapter.project(model, self.pool(settings, frames.grid, frames.grid, guide, prompt_text))\n"
      + _PROJECT, ("tests/test_wiring.py",), "pooled pools before the projector"),
    M("engine.guide-ignores-prompt", "vqa_cli/model/modes.py", "weights = guide.relevance(grid, prompt_text)",
      "weights = guide.relevance(grid, '')", GUIDE_T, "guided pooling ignores the question"),
    M("engine.guide-plain-pool", "vqa_cli/model/modes.py",
      "return guided_pool(projected, weights.to(projected.device), settings.guide_kernel)",
      "return guided_pool(projected, weights.to(projected.device) * 0, settings.guide_kernel)", GUIDE_T,
      "guided pooling with uniform weights"),
    M("engine.time-prompt-dropped", "vqa_cli/model/engine.py",
      "ids = self.checkpoint.prompt_ids(question, None if image else time_text, media=\"image\" if image else "
      "\"video\")", "ids = self.checkpoint.prompt_ids(question, None, media=\"image\" if image else \"video\")",
      PROMPT_T, "--time-prompt text not put in the prompt"),
    M("engine.chunks-reversed", "vqa_cli/model/engine.py", "for chunk in pixels.split(VISION_CHUNK)",
      "for chunk in reversed(pixels.split(VISION_CHUNK))", ("tests/test_families.py",),
      "vision chunks joined in the wrong order"),
    M("engine.batch-slice-shift", "vqa_cli/model/engine.py", "encoded[i] = frames.slice(start, start + n)",
      "encoded[i] = frames.slice(max(0, start - 1), max(0, start - 1) + n)", ("tests/test_scale.py",),
      "a batch's clips get each other's frames"),
    M("engine.question-not-guiding", "vqa_cli/model/engine.py",
      "features = self.aggregate(frames, self.settings.mode, question)",
      "features = self.aggregate(frames, self.settings.mode, \"\")", GUIDE_T,
      "the question never reaches guided pooling"),
    # ---- prompt
    M("prompt.no-bos", "vqa_cli/model/prompt.py",
      "return list(tokenizer(text, add_special_tokens=True)[\"input_ids\"])",
      "return list(tokenizer(text, add_special_tokens=False)[\"input_ids\"])", PROMPT_T, "BOS dropped"),
    M("prompt.expand-short", "vqa_cli/model/prompt.py", "return ids[:at] + [placeholder_id] * count + ids[at + 1:]",
      "return ids[:at] + [placeholder_id] * (count - 1) + ids[at + 1:]", PROMPT_T,
      "one placeholder too few"),
    M("prompt.features-reversed", "vqa_cli/model/prompt.py",
      "return embeds.masked_scatter(mask, features.to(embeds.device, embeds.dtype))",
      "return embeds.masked_scatter(mask, features.flip(0).to(embeds.device, embeds.dtype))",
      ("tests/test_prompt.py", "tests/test_engine.py"), "visual tokens scattered in reverse order"),
    M("prompt.no-generation-prompt", "vqa_cli/model/prompt.py",
      "messages, chat_template=template, tokenize=False, add_generation_prompt=True",
      "messages, chat_template=template, tokenize=False, add_generation_prompt=False", PROMPT_T,
      "the prompt does not end with the assistant's turn"),
    # ---- conversation: KV-cache reuse
    M("conversation.no-crop", "vqa_cli/model/conversation.py",
      "            self.cache.crop(reuse - self.cache.get_seq_length())", "            pass", CONV_T,
      "stale turns left in the cache"),
    M("conversation.reuse-off-by-one", "vqa_cli/model/conversation.py",
      "reuse = min(common_prefix(ids, self.cached_ids), len(ids) - 1)",
      "reuse = min(common_prefix(ids, self.cached_ids) + 1, len(ids) - 1)", CONV_T,
      "one token too many taken from the cache"),
    M("conversation.history-dropped", "vqa_cli/model/conversation.py",
      "messages = self.messages + [{\"role\": \"user\", \"text\": question}]",
      "messages = [{\"role\": \"user\", \"text\": question}]", CONV_T, "chat forgets earlier turns"),
    M("generate.last-step-logits", "vqa_cli/model/generate.py", "kept = torch.stack([step[0] for step in out.logits])",
      "kept = torch.stack([step[0] for step in out.logits][::-1])", CONV_T,
      "first-step logits taken from the last step"),
    M("prompt.media-every-turn", "vqa_cli/model/prompt.py",
      'content = ([{"type": media}] if i == first_user and media else [])',
      'content = ([{"type": media}] if media else [])', ("tests/test_prompt_ids.py", *CONV_T),
      "the video placeholder in every user turn"),
    # ---- checkpoint errors (loading)
    M("loading.json-untranslated", "vqa_cli/model/loading.py",
      "    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:\n"
      "        raise CheckpointError(file_problem",
      "    except () as exc:\n        raise CheckpointError(file_problem", CKPT_T,
      "a corrupt JSON file of the checkpoint is a traceback"),
    M("loading.safetensors-untranslated", "vqa_cli/model/weights/files.py",
      "    except SafetensorError as exc:\n        raise CheckpointError(_safetensors_problem",
      "    except ImportError as exc:\n        raise CheckpointError(_safetensors_problem", CKPT_T,
      "truncated weights are a traceback"),
    M("loading.mismatch-ignored", "vqa_cli/model/weights/files.py", "    if mismatched:", "    if False:",
      CKPT_T, "weights of the wrong shape load as random ones"),
    M("loading.missing-silent", "vqa_cli/model/weights/files.py", "    if missing:  # loaded at random",
      "    if False:", CKPT_T, "missing tensors load at random in silence"),
    M("loading.no-tokenizer-check", "vqa_cli/model/loading.py", "    if not has_tokenizer(model_dir):",
      "    if False:", CKPT_T, "a checkpoint without tokenizer files is not refused"),
    M("loading.notice-before-load", "vqa_cli/model/device.py",
      '        return "cuda" if torch.cuda.is_available() else "cpu"',
      '        cpu_notice(None, "cpu")\n        return "cuda" if torch.cuda.is_available() else "cpu"', CKPT_T,
      "the CPU notice comes before a failed load (two lines)"),
    M("caption.repairs-before-load", "vqa_cli/jobs/caption.py",
      "    captioner = (backend.captioner(settings, prompt, sid, batch_size=batch_size, workers=workers,\n",
      "    writer.resume(target, todo, sid)\n"
      "    captioner = (backend.captioner(settings, prompt, sid, batch_size=batch_size, workers=workers,\n",
      CKPT_T,
      "a broken checkpoint still repairs the output"),
    # ---- preprocess
    M("preprocess.mean-std-swapped", "vqa_cli/video/preprocess.py",
      "out = (out - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)",
      "out = (out - np.asarray(cfg.std, np.float32)) / np.asarray(cfg.mean, np.float32)", PRE_T,
      "mean and std swapped"),
    M("preprocess.crop-off-by-one", "vqa_cli/video/preprocess.py", "    left = (w - cw) // 2\n    img = img.crop(",
      "    left = (w - cw + 1) // 2\n    img = img.crop(", PRE_T, "fast crop one column off"),
    M("preprocess.resize-round", "vqa_cli/video/preprocess.py",
      "new_short, new_long = cfg.shortest_edge, int(cfg.shortest_edge * long / short)",
      "new_short, new_long = cfg.shortest_edge, round(cfg.shortest_edge * long / short)", PRE_T,
      "long edge rounded instead of truncated"),
    M("preprocess.bgr", "vqa_cli/video/preprocess.py", "np.take(table[c], img[:, :, c], out=out[c])",
      "np.take(table[c], img[:, :, 2 - c], out=out[c])", PRE_T, "channels in BGR order"),
    # ---- guide
    M("guide.no-post-layernorm", "vqa_cli/model/guide.py",
      "visual = m.visual_projection(m.vision_model.post_layernorm(grid.to(weight.device, weight.dtype)))",
      "visual = m.visual_projection(grid.to(weight.device, weight.dtype))", GUIDE_T,
      "CLIP post-layernorm skipped"),
    M("guide.short-text", "vqa_cli/model/guide.py",
      "tokens = self.tokenizer(prompt, truncation=True, max_length=self.max_length, return_tensors=\"pt\")",
      "tokens = self.tokenizer(prompt, truncation=True, max_length=3, return_tensors=\"pt\")", GUIDE_T,
      "question cut to 3 tokens"),
    # ---- video
    M("video.uniform-start", "vqa_cli/video/_sampling.py",
      "return [((2 * k + 1) * total) // (2 * n) for k in range(n)]",
      "return [(k * total) // n for k in range(n)]", VIDEO_T, "segment starts instead of midpoints"),
    M("video.nearest-key-later", "vqa_cli/video/_sampling.py",
      "chosen.append(min(candidates, key=lambda k: (abs(k - t), k)))",
      "chosen.append(max(candidates, key=lambda k: (-abs(k - t), k)))", VIDEO_T,
      "keyframe ties go to the later keyframe"),
    M("video.count-warning-threshold", "vqa_cli/video/_sample.py",
      "abs(clip.frames_from_content - clip.frames_from_header) > 1",
      "abs(clip.frames_from_content - clip.frames_from_header) > 100", ("tests/test_output_safety.py",),
      "a file cut short is not flagged"),
    # ---- video: the PyAV fallback
    M("pyav.no-fallback", "vqa_cli/video/_sample.py", "    if _decoder.wanted(path, fs_path, index, options.decoder):",
      "    if False:", PYAV_T, "--decoder pyav (and files OpenCV cannot decode) never reach PyAV"),
    M("pyav.forced-opencv-falls-back", "vqa_cli/video/_decoder.py", "    if decoder == \"opencv\" and not grabs:",
      "    if False:", ("tests/test_video_pyav.py",), "--decoder opencv on a file OpenCV cannot decode is not refused"),
    M("pyav.no-decoder-stream", "vqa_cli/video/_pyav.py",
      "        if not container.streams.video or container.streams.video[0].codec_context is None:",
      "        if not container.streams.video:", ("tests/test_video_pyav.py",),
      "a video stream PyAV has no decoder for is a traceback"),
    M("engine.decoder-in-identity", "vqa_cli/settings.py", "        d.pop(\"decoder\")", "        pass",
      ("tests/test_video_pyav.py",), "--decoder changes settings_id"),
    M("cli.flags-typed", "vqa_cli/cli/__init__.py", "\n_flags_without_a_type()\n", "\n", ("tests/test_cli.py",),
      "`vqa --help` shows <bool> after --version and every other flag"),
    M("engine.decoder-not-passed", "vqa_cli/model/engine.py",
      "    options = replace(options or DecodeOptions(), decoder=settings.decoder)",
      "    options = options or DecodeOptions()", ("tests/test_video_pyav.py",), "--decoder never reaches the decoder"),
    M("pyav.every-packet-a-key", "vqa_cli/video/_pyav.py", "keys.append(bool(packet.is_keyframe))",
      "keys.append(True)", PYAV_T, "the index ignores the demuxer's keyframe flags"),
    M("pyav.keyframes-feed-every-packet", "vqa_cli/video/_pyav.py",
      "        if packet.size == 0 or stamp not in wanted:", "        if packet.size == 0:",
      ("tests/test_video_pyav.py",), "keyframe mode decodes every packet, not only the keyframes'"),
    M("pyav.rotation-sign", "vqa_cli/video/_pyav.py",
      "int(-round(getattr(frame, \"rotation\", 0) or 0)) % 360",
      "int(round(getattr(frame, \"rotation\", 0) or 0)) % 360", PYAV_T,
      "the display matrix turned the wrong way"),
    M("pyav.damage-fails", "vqa_cli/video/_pyav.py", "                self.damaged += 1\n                continue",
      "                raise", PYAV_T, "an undecodable packet fails the file instead of being skipped"),
    # ---- output safety (caption, writer)
    M("writer.accepts-foreign-lines", "vqa_cli/output/writer/_files.py", "            if not _is_record(obj, keys):",
      "            if False:", SAFE_T, "a non-vqa file is taken as vqa's"),
    M("writer.drops-unterminated-record", "vqa_cli/output/writer/_files.py",
      "if not complete and obj is ... and line.startswith(b\"{\") and len(raw) < MAX_LINE_BYTES - 1:",
      "if not complete:", SAFE_T, "a complete last record without newline is dropped"),
    M("writer.no-lock", "vqa_cli/output/writer/_guard.py",
      "                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", "                pass", SAFE_T, "no lock"),
    M("writer.no-undo", "vqa_cli/output/writer/_files.py",
      "                os.ftruncate(self._fd, good)  # no partial line left behind", "                pass", SAFE_T,
      "a refused write leaves a partial line"),
    M("writer.temp-through-symlink", "vqa_cli/atomic.py",
      "    fd, tmp = tempfile.mkstemp(prefix=f\".{real.name}.\", suffix=\".tmp\", dir=real.parent)\n    try:",
      "    tmp = str(real.with_name(f\".{real.name}.tmp\"))\n"
      "    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\n    try:", SAFE_T,
      "the temporary file is opened through an existing name"),
    M("writer.input-not-checked", "vqa_cli/output/writer/_guard.py",
      "            if same:\n                raise OutputRefusedError",
      "            if False:\n                raise OutputRefusedError", SAFE_T, "--out may be an input video"),
    M("caption.strip-stdin", "vqa_cli/jobs/inputs.py",
      "        path = line.removesuffix(\"\\n\").removesuffix(\"\\r\")",
      "        path = line.strip()", SAFE_T, "stdin names lose their spaces"),
    M("caption.walk-errors-ignored", "vqa_cli/jobs/inputs.py",
      "    for root, _, files in os.walk(folder, onerror=failed):",
      "    for root, _, files in os.walk(folder):", SAFE_T, "unreadable folders skipped in silence"),
    M("store.errors-deleted-upfront", "vqa_cli/output/writer/_store.py",
      "    existing = existing if existing is not None else read_output(out)\n    repaired = repair(out, existing)",
      "    existing = existing if existing is not None else read_output(out)\n    repaired = repair(out, existing)\n"
      "    rewrite(out, [r for r in existing.records if r.get(\"error\") is None])", SAFE_T,
      "old error records deleted before the retry"),
    # ---- pre-quantized copies
    M("quantized.key-no-mtime", "vqa_cli/model/weights/copies.py",
      "    weights = [file_stamp(f) for f in weightfiles.weight_files(model_dir)]",
      "    weights = [[f.name, f.stat().st_size] for f in weightfiles.weight_files(model_dir)]", QUANT_T,
      "a copy of weights that changed (same size) is still used"),
    M("quantized.never-read", "vqa_cli/model/weights/loader.py",
      "    prequantized = model is not None\n", "    model = None\n    prequantized = False\n", QUANT_T,
      "the copy is written but never read"),
    M("quantized.caller-rope-dropped", "vqa_cli/model/weights/copies.py", "    prequantized = copy.deepcopy(config)\n",
      "    prequantized = type(config).from_pretrained(folder)\n", QUANT_T,
      "a copy loads with its own config, not the request's RoPE factor"),
    # ---- the server: caches, media roots, stop strings, cancellation, settings on the wire
    M("serve.kv-any-clip", "vqa_cli/serve/_kv.py", "                if entry_key == key:\n",
      "                if True:\n", SERVE_T, "a kept KV cache is reused for another video"),
    M("serve.identity-no-mtime", "vqa_cli/model/features.py", 'st.st_size, "mtime_ns": st.st_mtime_ns}',
      'st.st_size}', SERVE_T, "a touched file keeps its cached visual tokens"),
    M("serve.media-root", "vqa_cli/serve/_media.py", "    if not _inside(real, policy.roots):",
      "    if False:", SERVE_T, "paths outside --media-root are read"),
    M("serve.stop-hold", "vqa_cli/serve/_worker.py", "                    hold = max(hold, n)\n", "", SERVE_T,
      "the stream shows the start of a stop string"),
    M("serve.cancel", "vqa_cli/serve/_app.py", "                job.cancelled.set()  # a client gone",
      "                pass  # a client gone", SERVE_T, "a client that disconnects does not cancel"),
    M("serve.wire-frames", "vqa_cli/settings.py",
      '        sampling = {"frames": None, "fps": None, "max_frames": None}\n',
      "        pass\n", SERVE_T, "a request's fps keeps the server's frame count"),
    M("serve.prefix-cache-off", "vqa_cli/serve/_worker.py",
      "        prefix = self.prefixes.take(job.key, ids) if request.use_cache else None",
      "        prefix = None", SERVE_T, "no kept KV cache is ever reused"),
    # ---- fitting the machine: the memory check, --fit, --max-memory
    M("fit.check-after-download", "vqa_cli/model/session.py",
      "    memory = check_memory(checkpoint, settings, questions, budget, batch=batch, reserve=reserve, probe=probe)\n",
      "    hub.fetch_weights(settings.model)\n    memory = None\n", FIT_T,
      "no memory check before the weights are fetched and loaded"),
    M("fit.frames-ignore-memory", "vqa_cli/model/fit.py", "    return None if found.fits is False else found",
      "    return found", FIT_T, "--fit and the suggestions count the context only"),
    M("fit.kv-cache-per-batch", "vqa_cli/model/memory.py", "    est.kv_cache_bytes *= batch\n", "", FIT_T,
      "a caption batch's KV cache counted for one clip"),
    M("fit.max-memory-ignored", "vqa_cli/model/weights/loader.py",
      "        device_map = dict(device_map or placement.device_map(adapter, quant, dtype, max_memory))",
      "        device_map = {\"\": device}", FIT_T, "--max-memory never reaches from_pretrained"),
    M("fit.cap-weights-only", "vqa_cli/model/weights/placement.py",
      "    budget = {d: max(0, b - est.overhead_bytes) if d == computing else b for d, b in caps.items()}",
      "    budget = dict(caps)", FIT_T, "a --max-memory cap leaves no room for the KV cache and activations"),
    M("fit.disk-without-offload-dir", "vqa_cli/model/weights/loader.py", "            if not offload_dir:\n",
      "            if False:\n", FIT_T, "a device_map with disk reaches from_pretrained without --offload-dir"),
    M("fit.force-skips-caps", "vqa_cli/model/fit.py", "        raise MemoryFitError(cap_refusal(settings, found))\n",
      "        pass\n", FIT_T, "--force loads a placement outside --max-memory"),
    M("catalog.vision-tower-quantized", "vqa_cli/model/memory.py",
      "            if isinstance(module, torch.nn.Linear) and not name.startswith(skip)}",
      "            if isinstance(module, torch.nn.Linear)}", ("tests/test_catalog.py",),
      "4-bit sizes count the vision tower and projector as quantized"),
    M("catalog.nominal-disk", "vqa_cli/model/catalog.py",
      "    size = sum(f.stat().st_size for f in weights) if weights else row[\"parameters\"] * FP16_BYTES",
      "    size = sum(f.stat().st_size for f in weights) if weights else ckpt.nominal_parameters * FP16_BYTES",
      ("tests/test_catalog.py",), "vqa models' disk size from the name (0.5B) instead of the architecture"),
    # ---- segments: windows, scene sampling, subtitle cues, subtitle files
    M("segments.merge-longer-neighbour", "vqa_cli/video/scenes.py",
      "j = i - 1 if out[i - 1].length <= out[i + 1].length else i + 1",
      "j = i - 1 if out[i - 1].length >= out[i + 1].length else i + 1", ("tests/test_segments.py",),
      "a short scene merges with its longer neighbour"),
    M("segments.whole-video-per-segment", "vqa_cli/jobs/segments.py",
      "windowed = settings if window is None else replace(settings, start=window.start, end=window.end)",
      "windowed = settings", ("tests/test_segments.py",), "each segment sampled from the whole video"),
    M("subtitles.cue-end-inclusive", "vqa_cli/output/subtitles.py",
      "at_frame = any(cue.start <= t < cue.end for t in times)",
      "at_frame = any(cue.start <= t <= cue.end for t in times)", ("tests/test_subtitles.py",),
      "a cue still counts at the instant it ends"),
    M("formats.srt-whole-seconds", "vqa_cli/output/writer/_formats.py", "    ms = max(0, round(seconds * 1000))",
      "    ms = max(0, int(seconds) * 1000)", ("tests/test_formats.py",), "subtitle times cut to whole seconds"),
    # ---- the jobs' harness and backend
    M("harness.run-ahead-last-first", "vqa_cli/jobs/harness.py", "        item, future = self._pending.pop(0)",
      "        item, future = self._pending.pop()", ("tests/test_harness.py",),
      "the run-ahead loop hands items over out of input order"),
    M("harness.oom-keeps-batch-size", "vqa_cli/jobs/harness.py", "            smaller(half)\n",
      "            pass\n",
      ("tests/test_harness.py", "tests/test_scale.py::test_out_of_memory_splits_the_batch_and_records_it"),
      "out of memory splits the batch but later batches keep its size"),
    M("captioner.one-clip-per-batch", "vqa_cli/jobs/captioner.py",
      "while ahead and sum(len(j.open()) for j in jobs) < self.batch_size:",
      "while ahead and sum(len(j.open()) for j in jobs) < 1:",
      ("tests/test_scale.py::test_out_of_memory_splits_the_batch_and_records_it",),
      "captioning takes one clip per batch whatever --batch-size says"),
    # ---- eval: the interval, the protocols' counting, likelihood, clip bounds
    M("eval.ci-no-correction", "vqa_cli/jobs/eval/_stats.py",
      "var = groups / (groups - 1) * sum(e * e for e in residual.values()) / (n * n)",
      "var = sum(e * e for e in residual.values()) / (n * n)", ("tests/test_eval.py",),
      "the clustered variance without its G/(G-1) correction"),
    M("eval.videomme-unparsed-counted", "vqa_cli/jobs/eval/_extract.py",
      'return "exclude" if protocol == "official" else "wrong"', 'return "wrong"', ("tests/test_eval.py",),
      "official Video-MME counts unparsed answers wrong instead of leaving them out"),
    M("eval.likelihood-raw-logits", "vqa_cli/jobs/eval/_score.py", "logp = torch.log_softmax(logits.float(), dim=-1)",
      "logp = logits.float()", ("tests/test_eval.py",), "likelihood reads raw logits, not log-probabilities"),
    M("eval.bounds-ignored", "vqa_cli/jobs/eval/_evaluate.py", "it.start if it.start is not None else start",
      "start", ("tests/test_eval.py",), "an item's own clip start is ignored"),
    M("eval.mlvu-lmms-options-stripped", "vqa_cli/jobs/eval/_prompts.py", 'f"{q}\\n{_paren(item)}"',
      'f"{q}\\n{_paren(item).rstrip()}"', ("tests/test_eval.py",),
      "lmms-eval's MLVU text loses the newline after the last option"),
    M("eval.mlvu-inline-options-kept", "vqa_cli/jobs/eval/_formats.py", 'stem = stem if options else r["question"]',
      'stem = r["question"]', ("tests/test_eval.py",), "an exported MLVU_dev question keeps its options in the stem"),
    M("eval.category-mean-weighted", "vqa_cli/jobs/eval/_stats.py", '"category_mean": _mean_of(by_category),',
      '"category_mean": overall["accuracy"],', ("tests/test_eval.py",),
      "the mean over categories is the accuracy over questions"),
    M("eval.published-ignores-subtitles", "vqa_cli/jobs/eval/_published.py",
      "row.format == fmt and row.subtitles == subtitles", "row.format == fmt", ("tests/test_eval.py",),
      "the with-subtitles figure is not told from the one without"),
    M("eval.server-top-logprobs-1", "vqa_cli/jobs/eval/_remote.py", "body.update(logprobs=True, top_logprobs=MAX_TOP)",
      "body.update(logprobs=True, top_logprobs=1)",
      ("-m", "heavy", "tests/test_eval.py::test_server_gives_the_local_records"),
      "eval --server --score likelihood asks the server for the most likely token only"),
    # ---- edges (tests/test_edges_*.py): one-line bugs the older tests did not see
    M("edges.feature-key-no-seek", "vqa_cli/model/features.py",
      '"start": settings.start, "end": settings.end, "seek": settings.seek}',
      '"start": settings.start, "end": settings.end}', ("tests/test_edges_features.py",),
      "the feature key leaves out --seek"),
    M("edges.lru-get-no-refresh", "vqa_cli/model/features.py", "        self._entries.move_to_end(key)\n", "",
      ("tests/test_edges_features.py",), "a cache hit does not make the entry the most recently used"),
    M("edges.lru-evicts-newest", "vqa_cli/model/features.py", "popitem(last=False)", "popitem(last=True)",
      ("tests/test_edges_features.py",), "over the budget, the newest entry goes first"),
    M("edges.clock-truncated", "vqa_cli/output/writer/_formats.py", "    ms = max(0, round(seconds * 1000))",
      "    ms = max(0, int(seconds * 1000))", ("tests/test_edges_formats.py",),
      "subtitle times truncated to the millisecond, not rounded (59.9996 s is 00:00:59,999)"),
    M("edges.srt-numbered-from-0", "vqa_cli/output/writer/_formats.py",
      "for i, (a, b, t) in enumerate(cues(record), start=1))", "for i, (a, b, t) in enumerate(cues(record)))",
      ("tests/test_edges_formats.py",), "SRT cues numbered from 0"),
    M("edges.subtitle-fraction-as-ms", "vqa_cli/output/subtitles.py", "int(frac) / 10 ** len(frac)",
      "int(frac) / 1000", ("tests/test_edges_formats.py",), "00:00:01,5 read as 1.005 s"),
    M("edges.min-scene-exclusive", "vqa_cli/video/scenes.py",
      "short = [i for i, w in enumerate(out) if w.length < min_seconds]",
      "short = [i for i, w in enumerate(out) if w.length <= min_seconds]", ("tests/test_edges_segments.py",),
      "a scene exactly --min-scene long is merged"),
    M("edges.scene-tie-later", "vqa_cli/video/scenes.py",
      "j = i - 1 if out[i - 1].length <= out[i + 1].length else i + 1",
      "j = i - 1 if out[i - 1].length < out[i + 1].length else i + 1", ("tests/test_edges_segments.py",),
      "a tie between neighbours goes to the later one"),
    M("edges.8bit-two-bytes", "vqa_cli/model/memory.py", '"8bit": 1.0}', '"8bit": 2.0}', ("tests/test_edges_plan.py",),
      "8-bit weights counted at 2 bytes"),
    M("edges.quant-key-no-bnb-version", "vqa_cli/model/weights/copies.py",
      '"bitsandbytes": _package_version("bitsandbytes")}',
      '"bitsandbytes": None}', ("tests/test_edges_quantized.py",),
      "a copy written by another bitsandbytes keeps its key"),
    M("edges.quant-key-config-size", "vqa_cli/model/weights/copies.py",
      '"config_sha256": sha256(config)',
      '"config_sha256": len(config)', ("tests/test_edges_quantized.py",),
      "an edited config.json of the same size keeps the key"),
    M("edges.pyav-keys-decode-order", "vqa_cli/video/_pyav.py",
      "key_ranks = [rank for rank, d in enumerate(order) if keys[d]]",
      "key_ranks = [rank for rank, d in enumerate(order) if keys[rank]]", ("tests/test_edges_packets.py",),
      "PyAV index: keyframe flags read in decode order"),
    M("edges.opencv-keys-decode-order", "vqa_cli/video/_index.py",
      "key_ranks = [rank for rank, d in enumerate(order) if keys[d]]",
      "key_ranks = [rank for rank, d in enumerate(order) if keys[rank]]", ("tests/test_edges_packets.py",),
      "OpenCV index: keyframe flags read in decode order"),
    M("edges.eval-errors-done", "vqa_cli/jobs/eval/_run.py",
      'done = {(r["settings_id"], r.get("qid")) for r in done_before if r.get("error") is None}',
      'done = {(r["settings_id"], r.get("qid")) for r in done_before}', ("tests/test_edges_eval.py",),
      "eval resume counts error records as done"),
    M("edges.eval-sid-no-protocol", "vqa_cli/jobs/eval/_run.py", 'f"eval:{fmt}:{protocol}:{score}"',
      'f"eval:{fmt}:{score}"', ("tests/test_edges_eval.py",), "another --protocol resumes the old answers"),
    M("edges.serve-length-past-limit", "vqa_cli/serve/_worker.py",
      'return "length" if tokens >= max_new_tokens and not eos and not stopped else "stop"',
      'return "length" if tokens > max_new_tokens and not eos and not stopped else "stop"',
      ("tests/test_edges_serve.py",), 'exactly max_tokens tokens without eos is "stop"'),
    M("edges.serve-hold-short", "vqa_cli/serve/_worker.py",
      "for n in range(min(len(stop) - 1, len(self.text)), 0, -1):",
      "for n in range(min(len(stop) - 2, len(self.text)), 0, -1):", ("tests/test_edges_serve.py",),
      "the stream holds back one character too few of a stop string"),
    M("edges.serve-frame-times", "vqa_cli/serve/_media.py", "timestamps=[float(i) for i in keep]",
      "timestamps=[float(k) for k in range(len(keep))]", ("tests/test_edges_serve.py",),
      "image frames timed by their place among the sampled ones, not among those sent"),
    M("edges.serve-upload-limit-exclusive", "vqa_cli/serve/_media.py",
      "    if size > policy.max_bytes:", "    if size >= policy.max_bytes:",
      ("tests/test_edges_serve.py",), "a data: url exactly at --max-upload-mb is refused"),
    M("edges.serve-usage-prompt", "vqa_cli/serve/_app.py",
      '{"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,',
      '{"prompt_tokens": result.prompt_tokens - 1, "completion_tokens": result.completion_tokens,',
      ("tests/test_edges_serve.py",), "usage.prompt_tokens one short"),
    M("edges.serve-logprob-shift", "vqa_cli/serve/_worker.py", '"logprob": float(logp[step, token])',
      '"logprob": float(logp[max(step - 1, 0), token])', ("tests/test_edges_serve.py",),
      "each token's log-probability read at the step before"),
    M("edges.greedy-samples", "vqa_cli/model/generate.py",
      '        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}',
      '        return {"do_sample": True, "temperature": 1.0, "top_p": None, "top_k": None}',
      ("tests/test_edges_serve.py",), "temperature 0 samples"),
    # ---- reduce: the token reduction methods' formulas (EVS, VidCom2), against tests/test_reduce.py
    M("reduce.evs-unstable", "vqa_cli/model/reduce.py", "descending=True, stable=True)",
      "descending=True, stable=False)", ("tests/test_reduce.py",), "EVS ties not broken by grid order"),
    M("reduce.evs-first-frame", "vqa_cli/model/reduce.py", "x[1:], x[:-1]", "x[1:], x[:1].expand_as(x[1:])",
      ("tests/test_reduce.py",), "EVS compares every frame with the first, not the previous"),
    M("reduce.evs-minimum", "vqa_cli/model/reduce.py", "minimum=h * w)", "minimum=1)", ("tests/test_reduce.py",),
      "EVS may keep less than the first frame"),
    M("reduce.count-float-floor", "vqa_cli/model/reduce.py", "math.floor(total * keep + _COUNT_SLACK)",
      "math.floor(total * keep)", ("tests/test_reduce.py",), "0.29 of 100 tokens keeps 28"),
    M("reduce.vidcom2-high-variance", "vqa_cli/model/reduce.py", "torch.argsort(variance, stable=True)",
      "torch.argsort(variance, descending=True, stable=True)", ("tests/test_reduce.py",),
      "VidCom2 scores the channels of most variance"),
    M("reduce.vidcom2-alphas", "vqa_cli/model/reduce.py", "VIDCOM2_ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)",
      "VIDCOM2_ALPHAS = (0.25, 0.5, 1.0, 2.0)", ("tests/test_reduce.py",), "one Gaussian bandwidth missing"),
    M("reduce.vidcom2-uniqueness-sign", "vqa_cli/model/reduce.py", "uniqueness = -video.mean(dim=-1)",
      "uniqueness = video.mean(dim=-1)", ("tests/test_reduce.py",), "common frames get the larger budgets"),
    M("reduce.vidcom2-video-only", "vqa_cli/model/reduce.py", "score = video + frame", "score = video",
      ("tests/test_reduce.py",), "tokens scored against the video centre only"),
    M("reduce.vidcom2-most-similar", "vqa_cli/model/reduce.py", "torch.argsort(score[i], stable=True)[:count]",
      "torch.argsort(score[i], descending=True, stable=True)[:count]", ("tests/test_reduce.py",),
      "each frame keeps its least distinct tokens"),
    # ---- reduction: where --reduce applies (engine, families, plans, eval), against tests/test_reduce_engine.py
    M("reduction.not-applied", "vqa_cli/model/engine.py", "            if not reduction.active(resolved):",
      "            if True:", (_RE + "test_llava_layout_tokens_stay_in_place_and_the_grid_is_reduced_by_the_formula",),
      "the engine never reduces"),
    M("reduction.layout-after", "vqa_cli/model/reduction.py", "values += [per_step[step, :prefix], kept]",
      "values += [kept, per_step[step, :prefix]]",
      (_RE + "test_llava_layout_tokens_stay_in_place_and_the_grid_is_reduced_by_the_formula",),
      "Video-LLaVA's CLS after its frame's kept tokens"),
    M("reduction.qwen-first-pads", "vqa_cli/model/families/qwen_vl.py", "keep[pads[kept.to(pads.device)]] = True",
      "keep[pads[:kept.numel()]] = True", (_RE + "test_qwen_kept_tokens_keep_their_full_layout_positions",),
      "Qwen keeps the first pads' positions, not the kept tokens'"),
    M("reduction.qwen-scores-deepstack", "vqa_cli/model/families/qwen_vl.py",
      "        return int(self.text_config().hidden_size)\n", "        return None\n",
      (_RE + "test_qwen_kept_tokens_keep_their_full_layout_positions",), "Qwen's DeepStack channels scored too"),
    M("reduction.budget-without-layout", "vqa_cli/model/reduction.py",
      "return max(settings.max_visual_tokens - layout, 1) / grids", "return settings.max_visual_tokens / grids",
      (_RE + "test_plan_shows_the_tokens_before_and_after",), "--max-visual-tokens forgets the newline"),
    M("reduction.eval-one-row", "vqa_cli/model/reduction.py",
      '''    return f"{settings.name} {what['reduce']} {ratio}"''', "    return settings.name",
      (_RE + "test_eval_runs_each_reduction_side_by_side",),
      "eval's settings share one row"),
]


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _pytest(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - started, "timeout"
    lines = proc.stdout.strip().splitlines() or [""]
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return proc.returncode == 0, time.perf_counter() - started, (failed or lines[-1:])[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the mutants whose name starts with this")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if m.name.startswith(args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}\t{m.what}")
        return 0
    with tempfile.TemporaryDirectory(prefix="vqa-mutants-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        for m in chosen:  # every snippet must be there exactly once
            count = (tree / m.path).read_text().count(m.old)
            if count != 1:
                print(f"stale mutant {m.name}: its snippet occurs {count} times in {m.path}", file=sys.stderr)
                return 2
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        ok, seconds, tail = _pytest(tree, tests, args.timeout)
        print(f"baseline: {'green' if ok else 'RED'} in {seconds:.0f} s ({tail})", file=sys.stderr)
        if not ok:
            return 2
        print("| mutant | file | what was broken | tests run | result |")
        print("|---|---|---|---|---|")
        survivors = 0
        for m in chosen:
            target = tree / m.path
            original = target.read_text()
            target.write_text(original.replace(m.old, m.new))
            try:
                ok, seconds, tail = _pytest(tree, m.tests, args.timeout)
            finally:
                target.write_text(original)
            survivors += ok
            result = "**survived**" if ok else f"killed ({tail.removeprefix('FAILED ').split(' - ')[0]})"
            print(f"| {m.name} | {m.path} | {m.what} | {', '.join(Path(t).name for t in m.tests)} | {result} |",
                  flush=True)
            print(f"{m.name}: {'SURVIVED' if ok else 'killed'} in {seconds:.0f} s", file=sys.stderr)
        print(f"\n{len(chosen) - survivors} of {len(chosen)} mutants killed", flush=True)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
