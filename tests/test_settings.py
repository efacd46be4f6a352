"""vqa_cli/settings.py: the one owner of the run settings' defaults, a leaf; vqa_cli/wire.py: their wire form.

The oracles are written here: the standard library's module list, the JSON a client sends for a settings
(docs/serve.md's vqa fields, spelled out by hand), and the defaults the CLI reference documents."""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import pytest

from vqa_cli import settings, wire
from vqa_cli.errors import UsageError
from vqa_cli.jobs.eval import EVAL_MAX_NEW_TOKENS
from vqa_cli.jobs.eval._prompts import DEFAULT_PROTOCOL
from vqa_cli.jobs.eval._score import DEFAULT_SCORE
from vqa_cli.settings import ModeSettings, RunSettings
from vqa_cli.wire import apply_fields, request_fields

PACKAGE = Path(settings.__file__).parent


def _literal_defaults(tree: ast.AST) -> list[tuple[int, str, object]]:
    """(line, name, value) of every parameter default and class field default in ``tree`` that is a literal."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
            found += [(d.lineno, a.arg, d.value) for a, d in pairs if isinstance(d, ast.Constant)]
        elif isinstance(node, ast.ClassDef):
            found += [(st.lineno, st.target.id, st.value.value) for st in node.body
                      if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)
                      and isinstance(st.value, ast.Constant)]
    return found


# The commands' own options (not run settings) and the one default each has: the command line's and the job's.
OPTION_DEFAULTS = {"workers": settings.DEFAULT_WORKERS, "batch_size": settings.DEFAULT_BATCH,
                   "max_batch": settings.DEFAULT_BATCH, "batch": settings.DEFAULT_BATCH,
                   "output_format": settings.DEFAULT_CAPTION_FORMAT, "host": settings.SERVE_HOST,
                   "port": settings.SERVE_PORT, "max_upload_mb": settings.SERVE_MAX_UPLOAD_MB,
                   "feature_cache_gib": settings.SERVE_FEATURE_CACHE_GIB, "kv_cache_gib": settings.SERVE_KV_CACHE_GIB,
                   "protocol": DEFAULT_PROTOCOL, "score": DEFAULT_SCORE}


def _repeated_defaults(root: Path) -> list[str]:
    """Where a module other than settings.py spells a run setting's default again as a literal: a parameter or a
    field named like the setting whose default is that setting's own default value (None and flags aside); and the
    same for the commands' own options (``OPTION_DEFAULTS``)."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunSettings) if f.default is not dataclasses.MISSING}
    defaults["mode"] = ModeSettings().name  # a parameter named mode takes a mode name
    defaults.update(OPTION_DEFAULTS)
    also = {"subtitles": {settings.SUBTITLES_AUTO},  # the commands' own --subtitles default
            "max_new_tokens": {EVAL_MAX_NEW_TOKENS}}  # vqa eval's
    out = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "settings.py" or path.parent.name == "testing" or path.name == "testing.py":
            continue
        for line, name, value in _literal_defaults(ast.parse(path.read_text(encoding="utf-8"))):
            if name not in defaults or value is None or isinstance(value, bool):
                continue
            if value == defaults[name] or value in also.get(name, ()):
                out.append(f"{path.relative_to(root.parent)}:{line}: {name}={value!r}")
    return out


def test_no_module_repeats_a_run_settings_default():
    assert _repeated_defaults(PACKAGE) == []


def test_the_repeated_default_scan_sees_a_copy(tmp_path):
    """The scan above can fail: a module that spells --max-new-tokens' default, --seek's or serve's --port again is
    caught, a different value (the library's own seek) is not."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "copy.py").write_text(
        "def ask(max_new_tokens: int = 256, seek: str = 'auto', frames: int | None = None, fit: bool = False):\n"
        "    pass\n\n\ndef sample(seek: str = 'exact'):\n    pass\n\n\n"
        "class Options:\n    temperature: float = 0.0\n    subtitles: str = 'auto'\n    port: int = 8000\n")
    assert _repeated_defaults(package) == ["pkg/copy.py:1: max_new_tokens=256", "pkg/copy.py:1: seek='auto'",
                                           "pkg/copy.py:10: temperature=0.0", "pkg/copy.py:11: subtitles='auto'",
                                           "pkg/copy.py:12: port=8000"]


def test_settings_is_a_leaf():
    """settings.py imports the standard library and vqa_cli.errors, nothing else (AST, so lazy imports count)."""
    tree = ast.parse(Path(settings.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    outside = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names and m != "__future__"}
    assert imported and outside == {"vqa_cli.errors"}


# ---- the wire form: a RunSettings -> the JSON fields a client sends -> the same settings at the server --------
# Every vqa field of docs/serve.md is set by one of the two (frames and fps, and pool and guide, exclude each other).
ROUND_TRIPS = [
    (RunSettings(model="m", fps=2.0, max_frames=24, start=1.5, end=9.0, seek="keyframe", time_prompt=True,
                 mode=ModeSettings("pooled", stride=2, slow_frames=4, fast_grid=3, guide=True, guide_kernel=(2, 4, 4))),
     {"mode": "pooled", "fps": 2.0, "max_frames": 24, "start": 1.5, "end": 9.0, "seek": "keyframe",
      "time_prompt": True, "stride": 2, "slow_frames": 4, "fast_grid": 3, "guide": True, "guide_kernel": [2, 4, 4]}),
    (RunSettings(model="m", frames=12, mode=ModeSettings("pooled", pool=(8, 6, 6))),
     {"mode": "pooled", "frames": 12, "pool": [8, 6, 6]}),
    (RunSettings(model="m"), {"mode": "anyres"}),  # defaults: only the mode travels (seek "auto" is the default)
    (RunSettings(model="m", mode=ModeSettings("slowfast", reduce="evs", keep=0.5)),
     {"mode": "slowfast", "reduce": "evs", "keep": 0.5}),
    (RunSettings(model="m", mode=ModeSettings("anyres", reduce="evs", max_visual_tokens=300)),
     {"mode": "anyres", "reduce": "evs", "max_visual_tokens": 300}),
]


def test_the_two_round_trips_cover_every_wire_field():
    sent = set().union(*(body for _, body in ROUND_TRIPS))
    assert sent == {"mode", "frames", "fps", "max_frames", "start", "end", "seek", "time_prompt", "stride",
                    "slow_frames", "fast_grid", "pool", "guide", "guide_kernel", "reduce", "keep",
                    "max_visual_tokens"} == set(wire.WIRE_FIELDS)


@pytest.mark.parametrize(("run", "body"), ROUND_TRIPS)
def test_settings_go_over_the_wire_and_come_back_the_same(run, body):
    assert request_fields(run) == body
    assert apply_fields(RunSettings(model="m"), body) == run


def test_the_server_checks_a_request_as_the_command_line_does():
    base = RunSettings(model="m")
    with pytest.raises(UsageError, match="--end must be after --start"):
        apply_fields(base, {"start": 5, "end": 2})
    with pytest.raises(UsageError, match="--guide works with --mode pooled"):
        apply_fields(base, {"guide": True})
    with pytest.raises(UsageError, match="^fps must be an integer or a number, not 'x'$"):
        apply_fields(base, {"fps": "x"})


def test_build_takes_the_command_lines_defaults():
    """``build()`` with nothing given is the documented defaults (docs/cli.md), not a second set."""
    built = settings.build()
    assert (built.mode, built.seek, built.decoder, built.max_new_tokens, built.temperature, built.rope_type,
            built.segments, built.scene_detector, built.scene_threshold, built.min_scene, built.subtitles) == (
        ModeSettings("anyres"), "auto", "auto", 256, 0.0, "linear", "none", "combined", 27.0, 0.0, "off")
    assert built == RunSettings(model="")
