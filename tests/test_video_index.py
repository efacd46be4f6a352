"""The packet index (vqa_cli.video._index) against a full sequential decode."""

from __future__ import annotations

from tests.clips import decode_all
from vqa_cli.video._index import scan_index
from vqa_cli.video._inputs import Deadline


def test_packet_index_matches_the_sequential_decode(encoded: dict[str, str]) -> None:
    for name, path in encoded.items():
        index = scan_index(path, Deadline(path, None))
        if name == "mjpg-intra.avi":
            assert index is not None and index.keys == list(range(120))
        if index is None:
            continue
        _, ms = decode_all(path)
        assert index.ms == ms, name
        assert index.keys[0] == 0
