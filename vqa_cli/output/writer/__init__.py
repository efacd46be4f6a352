"""Output files and the caption store: JSON Lines records appended as whole lines, and the rules that keep
a user's files safe.

- The one output policy (``_guard``), for every file vqa writes: ``check_output`` runs before anything
  loads: vqa creates a new file, or appends to or replaces only a file it wrote (vqa JSON Lines of this
  command's record kind, a vqa summary, or a whole file in the list of files vqa wrote, ``_registry``),
  never an input, a folder, an unwritable place or a full disk. Refusals are one-line
  ``OutputRefusedError`` (exit 2) naming ``--force`` or another path; ``check_sidecars`` for ``--out-dir``.
- ``_registry``: the files vqa wrote, by size and SHA-256 in the cache folder (also what
  ``--subtitles auto`` passes over).
- ``OutputLock``: one writer per output file, through ``flock`` on a lock file beside it and on the
  file itself (its inode: hard links) (released by the kernel when a process dies, even by ``kill -9``).
- ``read_output`` reads what a killed run leaves behind; ``repair`` gives a complete last record
  its missing newline and cuts only an unparsable, cut-off last line (never a complete record).
- ``rewrite`` replaces a file atomically through an exclusively created temporary file beside the
  real file (the target of a symlink), keeping its permissions.
- ``JsonlWriter`` appends each record in one write; when the disk refuses a write, the file is cut
  back to the last whole record and ``OutputWriteError`` (exit 1) says how many were written.
- The store (``_store``): what is already captioned, resume, the clean-up of superseded error
  records, and the part files of several processes merged into one output.
"""

from vqa_cli.output.writer._files import (
    MAX_LINE_BYTES,
    MIN_FREE_BYTES,
    RECORD_KEYS,
    SUMMARY_KEYS,
    JsonlWriter,
    Output,
    Repair,
    read_output,
    read_records,
    record_kind,
    repair,
    rewrite,
    write_json,
    write_text,
)
from vqa_cli.output.writer._guard import (
    OutputLock,
    check_output,
    check_run_outputs,
    check_sidecars,
    jsonl_file,
    lock_path,
    locked,
    records_of,
    summary_file,
    vqa_wrote,
)
from vqa_cli.output.writer._registry import remember as remember_written
from vqa_cli.output.writer._registry import wrote, wrote_file
from vqa_cli.output.writer._store import (
    captioned,
    captioned_in,
    compact,
    merge_parts,
    part_path,
    part_paths,
    resume,
    same_file,
    superseded,
)

__all__ = [
    "MAX_LINE_BYTES", "MIN_FREE_BYTES", "RECORD_KEYS", "SUMMARY_KEYS", "JsonlWriter", "Output", "OutputLock", "Repair",
    "captioned", "captioned_in", "check_output", "check_run_outputs", "check_sidecars", "compact", "jsonl_file",
    "lock_path", "locked", "merge_parts", "part_path", "part_paths", "read_output", "read_records", "record_kind",
    "records_of", "remember_written", "repair", "resume", "rewrite", "same_file", "summary_file", "superseded",
    "vqa_wrote", "write_json", "write_text", "wrote", "wrote_file",
]
