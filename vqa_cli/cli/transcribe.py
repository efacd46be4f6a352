"""``vqa transcribe``: the speech of videos as subtitles or text (faster-whisper; docs/speech.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from vqa_cli.cli.options import DeviceOpt, EndOpt, StartOpt

SpeechModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", show_default=False, help="The faster-whisper model: a name (tiny, base, small, medium, large-v3, "
    "turbo, tiny.en, ...) or a CTranslate2 folder (default: small on the CPU, turbo on CUDA).")]
SpeechLanguageOpt = Annotated[str | None, typer.Option(
    "--language", show_default=False, help="The spoken language's code (en, de, ...; default: detected).")]
SpeechStreamOpt = Annotated[int | None, typer.Option(
    "--audio-stream", min=0, show_default=False, help="Which audio stream, from 0 (default: the first).")]
TranscribeFormatOpt = Annotated[str, typer.Option(
    "--format", help="srt, vtt, txt, or json (the record: segments with their times, a line per video).")]
TranscribeOutDirOpt = Annotated[str | None, typer.Option(
    "--out-dir", show_default=False, help="Write one --format file per video here (clip.srt), with a JSON Lines "
    "index (index.jsonl) that makes the run resumable.")]
WordsOpt = Annotated[bool, typer.Option("--words", help="Word timestamps too (json).")]
NoVadOpt = Annotated[bool, typer.Option("--no-vad", help="Transcribe silence too (the VAD filter skips it).")]
TranscribeForceOpt = Annotated[bool, typer.Option("--force", help="--out-dir may replace files vqa did not write.")]


def transcribe(
    paths: Annotated[list[str], typer.Argument(help="Videos, folders (recursive) or - for paths on stdin.",
                                               show_default=False)],
    model: SpeechModelOpt = None,
    language: SpeechLanguageOpt = None,
    audio_stream: SpeechStreamOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    device: DeviceOpt = None,
    output_format: TranscribeFormatOpt = "srt",
    out_dir: TranscribeOutDirOpt = None,
    words: WordsOpt = False,
    no_vad: NoVadOpt = False,
    force: TranscribeForceOpt = False,
) -> int:
    """Transcribe videos' speech into timed text. Exit 0: all done; 1: some failed; 2: usage (a video without
    audio, to stdout)."""
    from vqa_cli.errors import UsageError
    from vqa_cli.jobs.transcribe import run_transcribe
    from vqa_cli.settings import SpeechSettings

    if language is not None and not (language.isascii() and language.isalpha() and 2 <= len(language) <= 3):
        raise UsageError(f"--language takes a language code such as en, de or yue, not {language!r}")
    speech = SpeechSettings(model=model, language=language.lower() if language else None, audio_stream=audio_stream,
                            vad=not no_vad, words=words)
    return run_transcribe(speech, paths, device=device, start=start, end=end, output_format=output_format,
                          out_dir=out_dir, force=force)
