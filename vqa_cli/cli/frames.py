"""``vqa frames``: which frames the model would see, without loading one."""

from __future__ import annotations

from typing import Annotated

import typer

from vqa_cli import console
from vqa_cli.cli.options import (
    DecoderOpt,
    EndOpt,
    FpsOpt,
    FramesOpt,
    JsonOpt,
    MaxFramesOpt,
    ModeOpt,
    SeekOpt,
    SlowFramesOpt,
    StartOpt,
    VideoArg,
    run_settings,
)
from vqa_cli.errors import UsageError
from vqa_cli.settings import DEFAULT_DECODER, DEFAULT_MODE, DEFAULT_SEEK, ModeName, ModeSettings


def frames(
    video: VideoArg,
    mode: ModeOpt = DEFAULT_MODE,
    slow_frames: SlowFramesOpt = None,
    as_json: JsonOpt = False,
    sheet: Annotated[str | None, typer.Option("--sheet", help="Write a contact sheet (.jpg/.png) of the frames.",
                                              show_default=False)] = None,
    frames: FramesOpt = None,
    fps: FpsOpt = None,
    max_frames: MaxFramesOpt = None,
    seek: SeekOpt = DEFAULT_SEEK,
    decoder: DecoderOpt = DEFAULT_DECODER,
    start: StartOpt = None,
    end: EndOpt = None,
) -> int:
    """Show which frames the model will see: indices and timestamps (no model is loaded)."""
    from vqa_cli.model.checkpoint import frames_for
    from vqa_cli.model.engine import sample_clip
    from vqa_cli.model.session import check_input

    request = run_settings(frames=frames, fps=fps, max_frames=max_frames, seek=seek, decoder=decoder, start=start,
                           end=end, mode=mode, slow_frames=slow_frames)
    if sheet:
        from vqa_cli.output.sheet import SHEET_FORMATS

        if not sheet.lower().endswith(tuple(SHEET_FORMATS)):
            raise UsageError(f"--sheet must end in one of {', '.join(sorted(SHEET_FORMATS))}")
    check_input(video)
    if sheet:
        from vqa_cli.output.writer import check_output, vqa_wrote

        check_output(sheet, [video], flag="--sheet", accept=vqa_wrote("choose another --sheet file"))
    clip, _ = sample_clip(video, request, frames_for(request))
    pathways = _frame_pathways(mode, len(clip.indices), slow_frames)
    if sheet:
        from vqa_cli.output.sheet import contact_sheet

        contact_sheet(clip, sheet)
    if as_json:
        from vqa_cli.output import records

        console.emit_json(records.frames_record(video, clip, mode, pathways))
    else:
        names = {i: [p["name"] for p in pathways if i in p["frames"]] for i in range(len(clip.indices))}
        if console.stdout_is_tty():
            console.stderr.print(f"[dim]{video}: {clip.frames_from_content} frames, {clip.duration:.2f}s, "
                                 f"{clip.fps:.2f} fps measured; {len(clip.indices)} sampled[/dim]")
        for pos, (idx, ts) in enumerate(zip(clip.indices, clip.timestamps, strict=True)):
            extra = f"\t{','.join(names[pos])}" if mode == "slowfast" else ""
            print(f"{idx}\t{ts:.3f}{extra}")
    if sheet:
        console.info(f"contact sheet written to {sheet}")
    return 0


def _frame_pathways(mode: ModeName, num_frames: int, slow_frames: int | None) -> list[dict]:
    """Which sampled frames each pathway of ``mode`` uses (positions into the sampled list).

    Frame selection does not depend on the model's grid, so the reference grid stands in.
    """
    from vqa_cli.model import modes

    plan = modes.plan(ModeSettings(mode, slow_frames=slow_frames), num_frames, modes.REFERENCE_GEOMETRY)
    return [{"name": p.name, "frames": list(p.frame_positions)} for p in plan.pathways]
