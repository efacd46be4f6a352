"""``vqa transcribe``: the speech of videos as timed text (SRT, WebVTT, plain text or JSON), resumably.

- Inputs as ``vqa caption`` takes them (``inputs``: files, folders recursively, ``-`` for paths on stdin).
- One video prints its file to stdout (``--format json`` prints a JSON record a line, so several videos may go to
  stdout too); ``--out-dir DIR`` writes one file per video (``DIR/clip.srt``) and a JSON Lines index
  (``DIR/index.jsonl``, one ``transcript_record`` per video) through the writer's sinks, with the output policy of
  every file vqa writes (a user's own ``clip.srt`` there is refused without ``--force``).
- Resumable: a re-run with ``--out-dir`` skips the videos the index already holds under the same settings
  (``settings_id``: the speech settings, the window and the format) and retries failed ones; the transcripts
  themselves are cached (``model.speech``), so a video done before under another ``--format`` runs no model.
- With ``--out-dir`` a video that cannot be transcribed (no audio, an undecodable file) is an error record and the
  run goes on (exit 1 at the end); to stdout the first such error ends the run with its one line and exit code.
- Progress with an ETA over the seconds of audio, on stderr when it is a terminal; Ctrl-C stops after the current
  video (``harness.StopFlag``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import IO

from vqa_cli import console
from vqa_cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, NoAudioError, UsageError
from vqa_cli.fingerprint import json_sha256
from vqa_cli.jobs.harness import Progress, Sink, StopFlag, Summary, keep
from vqa_cli.jobs.inputs import expand_inputs
from vqa_cli.output import records, writer
from vqa_cli.settings import SpeechSettings, check_window
from vqa_cli.video import VIDEO_EXTENSIONS, VideoError

TRANSCRIBE_FORMATS = ("srt", "vtt", "txt", "json")
DEFAULT_TRANSCRIBE_FORMAT = "srt"
INDEX = "index.jsonl"


def run_transcribe(speech: SpeechSettings, inputs: list[str], *, device: str | None = None,
                   start: float | None = None, end: float | None = None,
                   output_format: str = DEFAULT_TRANSCRIBE_FORMAT, out_dir: str | None = None, force: bool = False,
                   stdin: IO[str] | None = None) -> int:
    """Transcribe ``inputs``' videos; the exit code (0: all done, 1: some failed, 130: interrupted)."""
    from vqa_cli.model import speech_models
    from vqa_cli.model.speech import speech_device

    if output_format not in TRANSCRIBE_FORMATS:
        raise UsageError(f"--format takes one of {', '.join(TRANSCRIBE_FORMATS)}, not {output_format!r}")
    check_window(start, end)
    found = expand_inputs(inputs, stdin)
    videos = found.videos
    if not videos and not found.unreadable:
        raise UsageError(f"no videos found in {' '.join(inputs)} (known extensions: "
                         f"{' '.join(sorted(VIDEO_EXTENSIONS))})")
    index = _check_outputs(videos, output_format, out_dir, force)
    target = speech_device(device)
    speech = replace(speech, model=speech.model or speech_models.default_model(target))
    speech_models.resolve(speech.model)  # a bad or missing model is one line before any video
    sid = json_sha256({"speech": asdict(speech), "window": [start, end], "format": output_format}, length=16)
    with writer.locked(index or "-"):
        summary = _run(speech, videos, index, sid, target, (start, end), output_format, out_dir, force)
    said = f"{summary.ok} transcribed, {summary.processed() - summary.ok} failed, {summary.skipped} already done"
    console.info(said + (" (interrupted)" if summary.interrupted else "") + summary.repair_note())
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILURE if summary.errors else EXIT_OK


def _check_outputs(videos: list[str], output_format: str, out_dir: str | None, force: bool) -> str | None:
    """Everything about the outputs, before anything loads: the index's path with ``--out-dir``, else None."""
    if out_dir is None:
        if len(videos) > 1 and output_format != "json":
            raise UsageError(f"--format {output_format} prints one video's file: for several videos give --out-dir "
                             "DIR (or --format json, a JSON record a line)")
        return None
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UsageError(f"--out-dir {out_dir!r} is not a folder")
    writer.check_sidecars(out_dir, videos, output_format, force=force)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    index = str(Path(out_dir) / INDEX)
    writer.check_run_outputs(index, index, None, videos, kind="transcribe")
    return index


def _run(speech: SpeechSettings, videos: list[str], index: str | None, sid: str, device: str,
         window: tuple[float | None, float | None], output_format: str, out_dir: str | None, force: bool) -> Summary:
    from vqa_cli.output.writer._sinks import PrintSink, SidecarSink

    todo, repaired = list(videos), writer.Repair()
    if index is not None:  # the videos the index holds under these settings are done; a cut-off last line repaired
        todo, repaired = writer.resume(index, videos, sid)
    summary = Summary(videos=len(videos), skipped=len(videos) - len(todo), repair=repaired)
    started = time.monotonic()
    with StopFlag() as flag:
        if index is None:
            _each(todo, speech, device, window, sid, PrintSink(output_format), summary, flag, strict=True)
        else:
            with writer.JsonlWriter(index) as jsonl:
                sink = SidecarSink(output_format, str(out_dir), jsonl, force)
                _each(todo, speech, device, window, sid, sink, summary, flag, strict=False)
            summary.superseded = writer.compact(index)
    summary.wall_seconds = time.monotonic() - started
    return summary


def _each(videos: list[str], speech: SpeechSettings, device: str, window: tuple[float | None, float | None],
          sid: str, sink: Sink, summary: Summary, flag: StopFlag, *, strict: bool) -> None:
    """Each video's record, in order, with a progress bar over the seconds of audio."""
    from vqa_cli.model.speech import transcript
    from vqa_cli.video.audio import duration_hint

    start, end = window
    spans = [_span(duration_hint(v, speech.audio_stream), start, end) for v in videos]
    progress = console.progress("s")
    with progress:
        bar: Progress | None = progress or None  # type: ignore[assignment]
        task = progress.add_task("transcribing", total=sum(spans)) if progress else None
        for video, span in zip(videos, spans, strict=True):
            if flag.stop:
                summary.interrupted = True
                return
            began, done = time.monotonic(), 0.0

            def moved(at: float, base: float = start or 0.0, limit: float = span) -> None:
                nonlocal done
                if progress and task is not None:
                    step = min(limit, max(0.0, at - base)) - done
                    progress.advance(task, step)  # type: ignore[union-attr]
                    done += step

            try:
                segments = transcript(video, speech, device=device, start=start, end=end, progress=moved)
                record = records.transcript_record(video, segments, model=str(speech.model), language=speech.language,
                                                   start=start, end=end, seconds=time.monotonic() - began, sid=sid)
            except (VideoError, NoAudioError) as exc:
                if strict:
                    raise
                record = records.transcript_error_record(video, str(speech.model), sid, exc)
            if progress and task is not None and span > done:
                progress.advance(task, span - done)  # type: ignore[union-attr]
            keep(record, sink, summary, bar, None)


def _span(duration: float | None, start: float | None, end: float | None) -> float:
    """The seconds of audio a window of a video holds, for the progress bar (0 when the header does not say)."""
    stop = end if end is not None else duration
    return max(0.0, (stop or 0.0) - (start or 0.0))
