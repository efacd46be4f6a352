"""The error table: known errors become one line and an exit code; bugs are not swallowed."""

from __future__ import annotations

from vqa_cli import errors


def test_known_errors_map_to_exit_codes_and_one_line():
    assert errors.describe(errors.UnknownModelError("bad\nsecond line"))[::2] == (2, "bad")
    assert errors.describe(errors.ModelNotCachedError("x"))[0] == 1
    assert errors.describe(KeyboardInterrupt())[0] == 130


def test_cuda_out_of_memory_suggests_4bit_or_fewer_frames():
    class OutOfMemoryError(RuntimeError):  # the name torch.cuda uses
        pass

    code, kind, message = errors.describe(OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert code == 1 and kind == "out_of_memory" and "--quant 4bit" in message and "--frames" in message


def test_unknown_exceptions_are_bugs():
    assert errors.describe(ZeroDivisionError()) is None
