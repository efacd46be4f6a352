"""Shared fixtures: one tiny checkpoint per session and small generated clips."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clips import make_clip


@pytest.fixture(scope="session", autouse=True)
def _vqa_cache(tmp_path_factory):
    """Pre-quantized copies that quantized loads write (vqa_cli.model.quantized) go to a temporary folder, never the
    user's ~/.cache/vqa; set in os.environ so that `vqa` subprocesses inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VQA_CACHE", str(tmp_path_factory.mktemp("vqa-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from vqa_cli.testing import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llava-next-video")


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory) -> str:
    """A 3 s, 30 fps clip whose frames carry their own index."""
    return make_clip(str(tmp_path_factory.mktemp("clips") / "clip.mp4"), 90, fps=30.0, size=(320, 240))


@pytest.fixture(scope="session")
def engine_factory(tiny_dir):
    """Build (and cache) engines on the tiny checkpoint for given settings."""
    from vqa_cli.model.session import open_model
    from vqa_cli.settings import RunSettings

    cache: dict = {}

    def make(**kw):
        key = tuple(sorted(kw.items()))
        if key not in cache:
            settings = RunSettings(model=str(tiny_dir), **{"dtype": "float32", "max_new_tokens": 8, **kw})
            cache[key] = open_model(settings, ["What happens in the video?"]).engine
        return cache[key]

    return make


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, tiny_dir) -> dict[str, Path]:
    """One tiny checkpoint per family (LLaVA-NeXT-Video's is the shared ``tiny_dir``)."""
    from vqa_cli.testing import FAMILIES, tiny_checkpoint

    root = tmp_path_factory.mktemp("families")
    return {f: tiny_dir if f == "llava-next-video" else tiny_checkpoint(root / f, family=f) for f in FAMILIES}


@pytest.fixture(scope="session")
def guide_dir(tmp_path_factory) -> Path:
    """A random CLIP model whose vision width matches the tiny checkpoints' vision towers (32)."""
    import torch
    from tokenizers import processors
    from transformers import CLIPConfig, CLIPModel

    from vqa_cli.testing import build_tokenizer

    # Like CLIP's tokenizer: every text is wrapped in start/end tokens and the end token has the highest id,
    # so the text tower pools the last position (the whole prompt), not whatever token has the highest id.
    start, end = "<|startoftext|>", "<|endoftext|>"
    tok = build_tokenizer(bos=start, eos=end, pad=end, extra=(start, end))
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{start} $A {end}", special_tokens=[(start, tok.convert_tokens_to_ids(start)),
                                                    (end, tok.convert_tokens_to_ids(end))])
    assert tok.eos_token_id == len(tok) - 1
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "eos_token_id": tok.eos_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 336, "patch_size": 14},
        projection_dim=16,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("guide") / "clip"
    CLIPModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ---- clips shared by the video tests (built once per session) -------------------------------------


@pytest.fixture(scope="session")
def clip100(tmp_path_factory) -> str:
    from tests.video_checks import hundred_frame_clip

    return hundred_frame_clip(tmp_path_factory.mktemp("v"))


@pytest.fixture(scope="session")
def encoded(tmp_path_factory) -> dict[str, str]:
    """Self-numbering clips from every encoder the tests use (ffmpeg's H.264 with several GOPs, OpenCV's)."""
    from tests.video_checks import encoded_clips

    return encoded_clips(tmp_path_factory.mktemp("encoded"))


@pytest.fixture(scope="session")
def oracles(encoded) -> dict:
    """Each encoded clip's frames from a full sequential decode."""
    from tests.clips import decode_all

    return {name: decode_all(path)[0] for name, path in encoded.items()}


@pytest.fixture()
def caption_asked(tmp_path, tiny_dir, monkeypatch, capsys):
    """Run `vqa caption ARGS` on the tiny checkpoint: (exit code, records, the questions the model got, stderr)."""
    import json

    from vqa_cli.cli import main
    from vqa_cli.model.engine import Engine

    asked: list[str] = []
    original = Engine.answer_batch

    def spy(self, clips, question, *args, **kwargs):
        asked.extend([question] * len(clips) if isinstance(question, str) else question)
        return original(self, clips, question, *args, **kwargs)

    monkeypatch.setattr(Engine, "answer_batch", spy)

    def run(*argv):
        out = tmp_path / "out.jsonl"
        out.unlink(missing_ok=True)
        asked.clear()
        with pytest.raises(SystemExit) as info:
            main(["caption", *argv, "--out", str(out), "--model", str(tiny_dir), "--dtype", "float32",
                  "--max-new-tokens", "2", "--prompt", "Describe."])
        err = capsys.readouterr().err
        recs = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
        return info.value.code, recs, list(asked), err

    return run


@pytest.fixture
def runs(monkeypatch) -> list[int]:
    """The speech model's runs (``speech._run_model`` is the only place it runs): the samples of each run."""
    from vqa_cli.model import speech

    calls: list[int] = []
    real = speech._run_model

    def counted(*args, **kw):
        calls.append(len(args[1]))
        return real(*args, **kw)

    monkeypatch.setattr(speech, "_run_model", counted)
    return calls
