"""Several questions per video and chat: one encode, a reused KV cache, identical greedy answers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from vqa_cli.model.conversation import Conversation
from vqa_cli.video import sample_frames

QUESTIONS = ["What happens in the video?", "Who is in the video?", "Describe the scene in detail.",
             "Is there a dog?", "What is the weather?"]


@pytest.fixture(scope="module")
def engine(engine_factory):
    return engine_factory(frames=6, max_new_tokens=10, seed=1)


def test_reused_cache_answers_equal_asking_each_question_alone(engine, clip_path):
    clip = sample_frames(clip_path, 6)
    alone = [engine.answer(clip, q).text for q in QUESTIONS]
    conversation = Conversation.open(engine, clip)
    reused = [conversation.ask(q, keep=False).answer for q in QUESTIONS]
    assert reused == alone


def test_first_step_logits_from_the_cache_equal_a_full_prefill(engine, clip_path):
    # The logits are the ones Conversation.ask itself produced; the oracle is the model's own forward of the whole
    # one-question prompt with its own video path and no cache (tests/test_wiring.py does this for every family).
    clip = sample_frames(clip_path, 6)
    conversation = Conversation.open(engine, clip)
    conversation.ask(QUESTIONS[0], keep=False)
    turn = conversation.ask(QUESTIONS[1], keep=False, first_logits=True)
    pixels = engine.pixels(clip)
    ids, _ = engine.prompt_inputs(QUESTIONS[1], clip, engine.aggregate(engine.encode(pixels), engine.settings.mode))
    with torch.no_grad():
        full = engine.model(input_ids=ids, pixel_values_videos=pixels[None],
                            attention_mask=torch.ones_like(ids)).logits[0, -1]
    assert turn.fed_tokens < ids.shape[1] - 6 * 144  # the video tokens came from the cache
    assert (turn.first_logits - full).abs().max().item() <= 1e-4


def test_memory_does_not_grow_across_independent_questions(engine, clip_path):
    conversation = Conversation.open(engine, sample_frames(clip_path, 6))
    sizes = []
    for q in QUESTIONS * 2:
        turn = conversation.ask(q, keep=False)
        sizes.append(turn.context_tokens)
        assert turn.fed_tokens < 20  # only the question's own tokens are prefilled
    assert max(sizes) - min(sizes) <= 20  # one question + answer at most, never accumulating


def test_chat_turns_accumulate_only_their_own_tokens(engine, clip_path):
    conversation = Conversation.open(engine, sample_frames(clip_path, 6))
    first = conversation.ask("Hello, what happens?", keep=True)
    second = conversation.ask("And then?", keep=True)
    # Fed: the new question and the template's glue, plus at most the previous answer again when its text
    # re-tokenizes differently from the ids that were generated. Never the video or the first question.
    assert second.fed_tokens <= first.generation.tokens + 30
    assert second.context_tokens > first.context_tokens
    assert second.context_tokens - first.context_tokens < 40
    conversation.reset()
    third = conversation.ask("Hello, what happens?", keep=True)
    assert third.answer == first.answer  # same prefix, same question: same greedy answer


def test_ask_many_questions_json(tiny_dir, clip_path, tmp_path):
    qfile = tmp_path / "q.txt"
    qfile.write_text("Is there a dog?\n\nWhat is the weather?\n")
    proc = subprocess.run([sys.executable, "-m", "vqa_cli", "ask", clip_path, "What happens?", "--questions",
                           str(qfile), "--model", str(tiny_dir), "--frames", "4", "--max-new-tokens", "5", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert [a["question"] for a in record["answers"]] == ["What happens?", "Is there a dog?", "What is the weather?"]
    assert record["visual_tokens"] == 576 and record["frames"] == 4 and "answer" not in record
    assert all(set(a) >= {"question", "answer", "timings"} for a in record["answers"])


def test_a_scripted_chat_through_stdin(tiny_dir, clip_path, tmp_path):
    transcript = tmp_path / "chat.json"
    script = f"What happens?\n/frames\nAnd then?\n/save {transcript}\n/reset\nWhat happens?\n/quit\n"
    proc = subprocess.run([sys.executable, "-m", "vqa_cli", "chat", clip_path, "--model", str(tiny_dir), "--frames",
                           "3", "--max-new-tokens", "5"], input=script, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 + 3  # answer, 3 frame lines, answer, answer
    assert lines[0] == lines[5]  # after /reset the same question gets the same answer
    saved = json.loads(transcript.read_text())
    assert [t["question"] for t in saved["turns"]] == ["What happens?", "And then?"]
    assert "Traceback" not in proc.stderr
