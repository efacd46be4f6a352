"""Annex B bitstream helpers (H.264, some HEVC): NAL units, slice types, reference flags.

Pure functions over packet bytes, used by the packet index (which frames are references) and by
packet decoding (which packets a stream needs, what goes in front of it).
"""

from __future__ import annotations

import numpy as np

START_CODES = (b"\x00\x00\x01", b"\x00\x00\x00\x01")


def nal_units(packet: bytes) -> list[tuple[int, int, int]]:
    """(header byte, start, end) of each NAL unit in an Annex B packet."""
    starts = []
    at = packet.find(b"\x00\x00\x01")
    while at >= 0 and at + 3 < len(packet):
        starts.append(at + 3)
        at = packet.find(b"\x00\x00\x01", at + 3)
    ends = [s - 3 for s in starts[1:]] + [len(packet)]
    return [(packet[s], s, e) for s, e in zip(starts, ends, strict=True)]


def nal_type(header: int, codec: str) -> int:
    return header & 0x1F if codec == "h264" else (header >> 1) & 0x3F


def is_vcl(unit_type: int, codec: str) -> bool:
    return 1 <= unit_type <= 5 if codec == "h264" else unit_type < 32


def self_contained(packet: bytes, codec: str) -> bool:
    """False for keyframe packets whose picture may need earlier packets.

    H.264 keyframes must carry an IDR slice (open-GOP I-frames marked as
    keyframes may not even be output on their own); HEVC ones an IRAP picture.
    Other codecs are checked after decoding (frame type, frame count, pixels).
    """
    if codec not in ("h264", "hevc"):
        return True
    types = {nal_type(h, codec) for h, _, _ in nal_units(packet)}
    return 5 in types if codec == "h264" else any(16 <= t <= 23 for t in types)


def stream_header(packet: bytes, codec: str) -> bytes:
    """The first packet's non-picture NAL units (parameter sets, SEI), to put in front of a stream."""
    skip = {9, 10, 11, 12} if codec == "h264" else {35, 36, 37, 38}  # delimiters, end of stream, filler
    return b"".join(
        b"\x00\x00\x00\x01" + packet[start:end]
        for header, start, end in nal_units(packet)
        if not is_vcl(nal_type(header, codec), codec) and nal_type(header, codec) not in skip
    )


def read_ue(data: bytes, bit: int) -> tuple[int, int] | None:
    """An Exp-Golomb ue(v) value at ``bit``: (value, next bit), or None past the end."""
    zeros = 0
    while True:
        if bit >= 8 * len(data) or zeros > 31:
            return None
        if data[bit >> 3] >> (7 - (bit & 7)) & 1:
            break
        zeros += 1
        bit += 1
    bit += 1
    value = 0
    for _ in range(zeros):
        if bit >= 8 * len(data):
            return None
        value = value << 1 | data[bit >> 3] >> (7 - (bit & 7)) & 1
        bit += 1
    return (1 << zeros) - 1 + value, bit


def h264_picture(packet: bytes) -> tuple[bool, str | None]:
    """(whether other frames may be predicted from this picture, its picture type as FFmpeg names it)."""
    reference = False
    kind = None
    for header, start, _ in nal_units(packet):
        if header & 0x1F not in (1, 5):
            continue
        reference = reference or header >> 5 & 3 != 0
        if kind is None:
            # slice_header: first_mb_in_slice ue(v), slice_type ue(v); drop emulation-prevention bytes.
            head = packet[start + 1 : start + 17].replace(b"\x00\x00\x03", b"\x00\x00")
            first = read_ue(head, 0)
            slice_type = read_ue(head, first[1]) if first else None
            kind = "PBIpi"[slice_type[0] % 5] if slice_type else "?"
    return reference, kind


def h264_reference(packet: np.ndarray) -> bool:
    """Whether an Annex B H.264 packet's picture may be a reference (looks at its first slice only)."""
    head = packet[:256].tobytes()
    at = head.find(b"\x00\x00\x01")
    while 0 <= at < len(head) - 3:
        if head[at + 3] & 0x1F in (1, 5):
            return head[at + 3] >> 5 & 3 != 0
        at = head.find(b"\x00\x00\x01", at + 3)
    return h264_picture(packet.tobytes())[0] if len(head) == 256 else True
