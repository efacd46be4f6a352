"""The packet index (vqa_cli.video._index) against a full sequential decode."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clips import decode_all  # noqa: E402

from vqa_cli.video._index import scan_index  # noqa: E402
from vqa_cli.video._inputs import Deadline  # noqa: E402


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
