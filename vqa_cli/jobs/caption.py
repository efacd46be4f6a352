"""``vqa caption``: caption many videos into JSON Lines, resumably, at scale.

- Inputs (``inputs``) are files, folders (recursive, known video extensions, sorted) or ``-`` for
  paths on stdin. Each video gets exactly one record; a video that fails gets a record with ``error``.
- Pipelined (``captioner``, on the ``harness``'s run-ahead loop; the model here or a server: ``backend``):
  decode-ahead worker threads (OpenCV releases the GIL) fill a bounded window of clips while the model
  works; the model takes them in batches (left-padded batched generate).
  Batches start from the largest size the memory check found to fit (``--batch-size`` at most); on
  out-of-memory a batch is split in halves and retried, and later batches stay smaller.
- Kill-safe: each record is one appended, flushed line. A re-run skips videos already captioned
  with the same settings, retries failed ones (dropping their old error records) and repairs a
  partial last line. Ctrl-C stops after the current batch and prints the summary.
- Sharding: ``--shard I/N`` takes a deterministic hash share of the videos (cluster array jobs);
  under ``accelerate launch`` each process takes its share, writes its own part file and the
  main process merges the parts into ``--out`` at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from vqa_cli import console
from vqa_cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, InputNotFoundError, UsageError
from vqa_cli.jobs.backend import Backend, backend_for
from vqa_cli.jobs.harness import Processes, Sink, Summary, earlier, keep, processes
from vqa_cli.jobs.inputs import Inputs, expand_inputs, in_shard, parse_shard
from vqa_cli.jobs.segments import settle_subtitles
from vqa_cli.output import records, writer
from vqa_cli.settings import DEFAULT_BATCH, DEFAULT_CAPTION_FORMAT, DEFAULT_WORKERS
from vqa_cli.video import VIDEO_EXTENSIONS

if TYPE_CHECKING:
    from vqa_cli.settings import RunSettings


def run_caption(settings: RunSettings, inputs: list[str], out: str, prompt: str, *, batch_size: int = DEFAULT_BATCH,
                workers: int = DEFAULT_WORKERS, shard: str | None = None, summary_path: str | None = None,
                stdin: IO[str] | None = None, server: str | None = None, model_given: bool = True,
                feature_cache: str | None = None, output_format: str = DEFAULT_CAPTION_FORMAT,
                out_dir: str | None = None) -> int:
    """``server``: a ``vqa serve`` URL that captions instead of a model loaded here (same records).
    ``feature_cache``: a folder keeping each video's visual tokens, so a re-run with another prompt skips
    decoding and encoding."""
    if not prompt.strip():
        raise UsageError("--prompt must not be empty")
    if batch_size < 1 or workers < 1:
        raise UsageError("--batch-size and --workers must be at least 1")
    backend = backend_for(server, model_given)
    found = expand_inputs(inputs, stdin)
    videos = found.videos
    if not videos and not found.unreadable:
        raise UsageError(f"no videos found in {' '.join(inputs)} (known extensions: "
                         f"{' '.join(sorted(VIDEO_EXTENSIONS))})")
    share = parse_shard(shard)
    if share:
        videos = [v for v in videos if in_shard(v, *share)]
    settings, out = prepare(settings, videos, out, output_format, out_dir, backend)
    settings = backend.settle(settings)
    procs = processes(out)
    videos = procs.share(videos, str)
    [settings] = procs.on_device([settings])
    if not procs.main:
        found.unreadable = []  # reported once, by the main process
    summary_path = procs.summary_path(summary_path)
    # Everything about the outputs is checked before anything loads or is written.
    writer.check_run_outputs(out, procs.target, summary_path, videos, kind="caption")
    settings = backend.fit(settings, [prompt])  # the frames --fit chooses are a real setting: settings_id has them
    sid = records.settings_id(settings.identity(), prompt)
    with procs.locked():
        summary = _caption_locked(backend, settings, videos, found, procs, prompt, sid, batch_size, workers,
                                  feature_cache, (output_format, out_dir, settings.force))
        procs.merge()
    console.info(summary.line() if summary.processed() or summary.repair_note()
                 else f"nothing to do: all {len(videos)} videos already captioned in {out}")
    if summary_path:
        writer.write_json(summary_path, summary.to_dict())
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILURE if summary.errors else EXIT_OK


def _caption_locked(backend: Backend, settings: RunSettings, videos: list[str], found: Inputs, procs: Processes,
                    prompt: str, sid: str, batch_size: int, workers: int, feature_cache: str | None = None,
                    output: tuple[str, str | None, bool] = ("jsonl", None, False)) -> Summary:
    """The run, once this process holds the output's lock: resume, load, caption, compact.

    The model loads before anything is written: a broken checkpoint leaves the output untouched
    (not even repaired)."""
    target = procs.target
    existing, done_before = earlier(target, procs.out)
    done = writer.captioned_in(done_before, sid)
    todo = [v for v in videos if v not in done]
    captioner = (backend.captioner(settings, prompt, sid, batch_size=batch_size, workers=workers,
                                   feature_cache=feature_cache) if todo else None)
    todo, repaired = writer.resume(target, todo, sid, existing)
    summary = Summary(videos=len(videos), skipped=len(videos) - len(todo), repair=repaired)
    folders = [records.error_record(folder, settings, sid, InputNotFoundError(f"cannot read folder {folder!r}: "
                                                                              f"{reason}"), kind="input")
               for folder, reason in found.unreadable]
    if folders:
        with writer.JsonlWriter(target) as sink:
            for rec in folders:
                keep(rec, sink, summary)
    if captioner is not None:
        captioner.summary = summary
        try:
            with writer.JsonlWriter(target) as sink:
                captioner.run(todo, output_sink(sink, *output))
        finally:
            summary.load_seconds = backend.load_seconds
            summary.superseded = writer.compact(target, _readable_folder(found, sid))
    else:
        summary.superseded = writer.compact(target, _readable_folder(found, sid))
    return summary


def _readable_folder(found: Inputs, sid: str) -> Callable[[dict], bool]:
    """Which input-error records (of these settings) are settled: their folder was walked without trouble."""
    bad = {folder for folder, _ in found.unreadable}
    return lambda rec: (rec.get("error_kind") == "input" and rec.get("settings_id") == sid
                        and rec.get("video") not in bad and Path(rec.get("video") or "").is_dir())


def prepare(settings: RunSettings, videos: list[str], out: str, output_format: str, out_dir: str | None,
            backend: Backend) -> tuple[RunSettings, str]:
    """Check ``--format``/``--out-dir`` against the run before anything loads; the settings with ``--subtitles
    auto`` settled (``off`` when no video has a sidecar, so such runs keep their settings_id) and the JSON Lines
    output (``--out``, or ``DIR/index.jsonl`` with ``--out-dir``)."""
    from vqa_cli.output.writer._formats import OUTPUT_FORMATS

    if output_format not in OUTPUT_FORMATS:
        raise UsageError(f"--format takes one of {', '.join(OUTPUT_FORMATS)}, not {output_format!r}")
    if out_dir:
        if output_format == "jsonl":
            raise UsageError("--out-dir writes one --format file per video: give --format srt, vtt, txt, csv or "
                             "chapters (--out is the JSON Lines output)")
        if Path(out_dir).exists() and not Path(out_dir).is_dir():
            raise UsageError(f"--out-dir {out_dir!r} is not a folder")
        from vqa_cli.output.writer import check_sidecars

        check_sidecars(out_dir, videos, output_format, force=settings.force)  # a user's clip.srt: refused
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        out = out if out != "-" else str(Path(out_dir) / "index.jsonl")
    elif output_format != "jsonl":
        if out != "-":
            raise UsageError(f"--format {output_format} prints to stdout; for files give --out-dir DIR "
                             "(one file per video and a resumable index)")
        if output_format in ("srt", "vtt", "chapters") and len(videos) > 1:
            raise UsageError(f"--format {output_format} prints one video's file: for several videos give --out-dir")
    settings = settle_subtitles(settings, videos, [out])
    if settings.subtitles not in ("auto", "asr", "off") and len(videos) > 1:
        raise UsageError("--subtitles FILE is one video's subtitles: with several videos use auto (NAME.srt beside "
                         "each video)")
    if settings.segments != "none":
        backend.require_local("--segments runs on a model loaded here, without --server (subtitles and "
                              "--feature-cache work with it)")
    return settings, out


def output_sink(sink: Sink, output_format: str, out_dir: str | None, force: bool = False) -> Sink:
    """What captioning writes records to: the JSON Lines ``sink``, or the ``--format`` files around it (``force``:
    ``--out-dir`` may replace files vqa did not write)."""
    from vqa_cli.output.writer._sinks import PrintSink, SidecarSink

    if output_format == "jsonl":
        return sink
    return SidecarSink(output_format, out_dir, sink, force) if out_dir else PrintSink(output_format)
