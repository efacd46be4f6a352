"""Annex B bitstream helpers (vqa_cli.video._h264) on hand-made NAL units."""

from __future__ import annotations

from vqa_cli.video._h264 import h264_picture, nal_units, read_ue, self_contained, stream_header


def test_h264_bitstream_helpers() -> None:
    # ue(v): 1 -> 0, 010 -> 1, 011 -> 2, 00100 -> 3
    assert read_ue(bytes([0b10100110, 0b01000000]), 0) == (0, 1)
    assert read_ue(bytes([0b10100110, 0b01000000]), 1) == (1, 4)
    assert read_ue(bytes([0b10100110, 0b01000000]), 4) == (2, 7)
    assert read_ue(bytes([0b10100110, 0b01000000]), 7) == (3, 12)
    assert read_ue(b"\x00", 0) is None
    sps, idr, b_nonref = b"\x00\x00\x00\x01\x67\x64", b"\x00\x00\x01\x65\x88\x84", b"\x00\x00\x01\x01\x9e\x00"
    assert [u[0] for u in nal_units(sps + idr)] == [0x67, 0x65]
    assert self_contained(sps + idr, "h264") and not self_contained(b_nonref, "h264")
    assert h264_picture(sps + idr) == (True, "I")  # first_mb 0, slice_type 7 -> I
    assert h264_picture(b_nonref)[0] is False
    assert stream_header(sps + idr, "h264") == b"\x00\x00\x00\x01\x67\x64"
