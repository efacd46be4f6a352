"""The keys vqa leaves on users' disks (settings ids, feature-cache keys, pre-quantized copy keys, the subtitle
digest, the written-files registry) and the texts people read (sizes, dtype names), each against its formula
written out here with hashlib and json: moving the mechanics to one owner (``fingerprint``, ``units``,
``devices.dtype_name``) must not change one byte of them."""

from __future__ import annotations

import hashlib
import json
import os

from vqa_cli import units
from vqa_cli.model import device as devices
from vqa_cli.model import features
from vqa_cli.model.weights import copies
from vqa_cli.output import records, subtitles
from vqa_cli.output.writer import _registry


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_settings_id_is_the_sorted_json_of_settings_and_prompt():
    identity = {"model": "m", "mode": {"name": "uniform", "pool": 2}, "temperature": 0.0, "accents": "é"}
    expected = _hex('{"prompt": "Describe.", "settings": {"accents": "\\u00e9", "mode": {"name": "uniform", '
                    '"pool": 2}, "model": "m", "temperature": 0.0}}')[:16]
    assert records.settings_id(identity, "Describe.") == expected


def test_subtitle_digest_is_the_unsorted_json_of_the_cues():
    cues = [subtitles.Cue(2.5, 3.0, "b"), subtitles.Cue(0.0, 1.25, "a")]
    assert subtitles.digest(cues) == _hex('[[2.5, 3.0, "b"], [0.0, 1.25, "a"]]')
    assert subtitles.digest([]) == ""


def test_feature_keys_and_identities():
    inputs = json.dumps({"b": 1, "a": 2}, sort_keys=True)
    key = features.Key(inputs)
    assert key == _hex('{"a": 2, "b": 1}') and key.inputs == inputs
    assert features.bytes_identity(b"\x00video") == {"sha256": hashlib.sha256(b"\x00video").hexdigest()}


def test_copy_and_model_keys_stamp_files_by_name_size_and_mtime(tmp_path):
    (tmp_path / "config.json").write_bytes(b'{"model_type": "x"}')
    (tmp_path / "model.safetensors").write_bytes(b"12345")
    os.utime(tmp_path / "model.safetensors", ns=(1_000_000_123, 1_700_000_000_000_000_456))
    stamp = ["model.safetensors", 5, 1_700_000_000_000_000_456]
    source = copies.source_identity(tmp_path)
    assert source["config_sha256"] == hashlib.sha256(b'{"model_type": "x"}').hexdigest()
    assert source["weights"] == [stamp]
    assert [stamp] == [f for f in features.model_identity(tmp_path)["files"] if f[0] == "model.safetensors"]
    ident = {"source": {"p": 1}, "settings": {"dtype": "bfloat16"}, "writer": {"format": 1}, "key": "ignored"}
    assert copies._key(ident) == _hex('{"settings": {"dtype": "bfloat16"}, "source": {"p": 1}, '
                                         '"writer": {"format": 1}}')[:16]


def test_the_registry_remembers_a_file_by_its_sha256():
    data = b"1\n00:00:00,000 --> 00:00:01,000\nkeys\n"
    _registry.remember(data, "keys.srt")
    last = json.loads(_registry.written_list().read_text(encoding="utf-8").splitlines()[-1])
    assert (last["sha256"], last["size"]) == (hashlib.sha256(data).hexdigest(), len(data))
    assert _registry.wrote(data) and not _registry.wrote(data + b" ")


def test_size_texts():
    gib, mib = 2**30, 2**20
    assert units.size_text(3.1 * gib) == "3.10 GiB" and units.size_text(12.5 * mib) == "12.5 MiB"
    assert units.size_text(gib / 10) == "0.10 GiB"  # a tenth of a GiB is where MiB stops
    assert units.size_text(12.5 * mib, 1, smaller=False) == "0.0 GiB"  # fit's messages: always GiB
    assert units.size_text(14_240_000_000, 1, decimal=True) == "14.2 GB"
    assert units.size_text(95_000_000, 1, decimal=True) == "95.0 MB"
    assert units.gib(1.5 * gib + 1) == 1.5 and units.gib(gib / 3, 2) == 0.33
    assert units.parse_size("6GiB") == 6 * gib and units.parse_size("8GB") == 8 * 10**9


def test_dtype_names():
    import torch

    assert [devices.dtype_name(d) for d in (torch.bfloat16, torch.float32, torch.float16)] == [
        "bfloat16", "float32", "float16"]
    assert devices.dtype_name(devices.resolve_dtype("bfloat16", "cpu")) == "bfloat16"
