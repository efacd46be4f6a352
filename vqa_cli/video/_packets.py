"""Decoding from packets: streams of chosen packets, decoded by in-memory captures.

A demuxer-only capture hands out the file's packets (Annex B for H.264/HEVC)
and an in-memory capture decodes a stream made of chosen packets.  That
reaches a keyframe without decoding anything else, and, for H.264, the frames
leading to a target without the non-reference frames (nal_ref_idc 0: no other
frame is predicted from them), which the seek-and-grab path must decode.
Every stream starts with what decoders take from the start of a file (the
first packet's parameter sets and SEI: FFmpeg reads x264's version there and
works around that encoder's bugs), and each file is checked once against the
file's own decoder: frame 0 and the last frame (decoded by the end check
anyway) must come out pixel for pixel the same.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from vqa_cli.video import _capture
from vqa_cli.video._h264 import h264_picture, self_contained, stream_header
from vqa_cli.video._index import MAX_REORDER
from vqa_cli.video._options import DecodeOptions
from vqa_cli.video._runs import PACKET_BATCH, SEEK_LEAD, plan_runs, split
from vqa_cli.video._seeking import Cancelled, Job, Walker, decode_walking

# A demuxer-only capture reads at most this many packets from the start to find one.
_RAW_RESCAN_LIMIT = 20_000


class RawReader:
    """The packets of one file in decode order, from a demuxer-only capture."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.cap: cv2.VideoCapture | None = None
        self.at = -1  # decode position of the packet read last

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def _reopen(self) -> bool:
        self.close()
        self.cap = _capture.open_raw(self.job.fs_path)
        self.at = -1
        return self.cap is not None

    def fetch(self, rank: int) -> bytes | None:
        """The packet of keyframe ``rank``; afterwards ``next()`` reads on from it."""
        index = self.job.index
        if self.cap is None and not self._reopen():
            return None
        target = index.dpos[rank]
        earlier = index.key_at_or_before(rank - 1) if rank > 0 else 0
        span = target - index.dpos[earlier] + 2 * MAX_REORDER + SEEK_LEAD
        # Read on when the packet is close ahead; else seek (a demuxer-only seek lands on the
        # keyframe at or before the time; MPEG-TS lands near it, hence the earlier keyframe);
        # else read from the start of the file.
        attempts: list[float | None] = [None] if 0 <= target - self.at <= span else []
        attempts += [index.ms[rank], index.ms[earlier], -1.0]
        for start in attempts:
            assert self.cap is not None
            if start == -1.0:
                if target > _RAW_RESCAN_LIMIT or not self._reopen():
                    return None
            elif start is not None:
                self.cap.set(cv2.CAP_PROP_POS_MSEC, start)
            data = self._scan_to(rank, target + 1 if start == -1.0 else span)
            if data is not None:
                return data
        return None

    def _scan_to(self, rank: int, limit: int) -> bytes | None:
        index = self.job.index
        cap = self.cap
        assert cap is not None
        for _ in range(limit):
            self.job.check()
            if not cap.grab():
                return None
            found = index.rank(cap.get(cv2.CAP_PROP_POS_MSEC))
            if found is None:
                return None
            self.at = index.dpos[found]
            if found == rank:
                return self._bytes() if cap.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME) else None
            if self.at > index.dpos[rank]:
                return None  # passed it
        return None

    def next(self) -> tuple[int, bytes] | None:
        """The next packet in decode order as (frame index, bytes); None unless it is the expected one."""
        index = self.job.index
        cap = self.cap
        if cap is None or self.at < 0:
            return None
        self.job.check()
        if not cap.grab():
            return None
        found = index.rank(cap.get(cv2.CAP_PROP_POS_MSEC))
        if found is None or index.dpos[found] != self.at + 1:
            return None
        self.at += 1
        data = self._bytes()
        return None if data is None else (found, data)

    def _bytes(self) -> bytes | None:
        assert self.cap is not None
        ok, packet = self.cap.retrieve()
        return packet.tobytes() if ok and packet is not None and packet.size else None


class PacketDecoder:
    """Decodes streams of chosen packets of one file (see the section comment)."""

    def __init__(self, job: Job, first: bytes, threads: int) -> None:
        self.job = job
        self.first = first  # the file's first packet (frame 0)
        self.threads = threads
        codec = job.index.codec
        self.header = stream_header(first, codec) if codec in ("h264", "hevc") else None
        self.decoded = 0  # frames decoded, by all threads using this decoder
        self._count_lock = threading.Lock()

    def _prefix(self, starts_with_first: bool) -> tuple[bytes, int]:
        """Bytes to put in front of a stream, and how many frames they decode to."""
        index = self.job.index
        if self.header is not None:
            return index.extradata + self.header, 0
        if starts_with_first:
            return index.extradata, 0
        return index.extradata + self.first, 1  # other codecs: frame 0 in front, skipped

    def first_frame(self) -> np.ndarray | None:
        frames = self._decode(self.job.index.extradata + self.first, [0], {0}, [None])
        return None if frames is None else frames.get(0)

    def keyframes(self, reader: RawReader, keys: list[int]) -> tuple[dict[int, np.ndarray], list[int]]:
        """Decode keyframes from their packets alone: (frames, keys that could not be)."""
        codec = self.job.index.codec
        chosen: list[tuple[int, bytes]] = []
        failed = []
        for k in keys:
            data = reader.fetch(k)
            if data is not None and self_contained(data, codec):
                chosen.append((k, data))
            else:
                failed.append(k)
        if not chosen:
            return {}, failed
        prefix, lead = self._prefix(chosen[0][0] == 0)
        ranks = [k for k, _ in chosen]
        stream = prefix + b"".join(data for _, data in chosen)
        frames = self._decode(stream, [-1] * lead + ranks, set(ranks), [None] * lead + ["I"] * len(ranks))
        if frames is None:
            return {}, keys
        return frames, failed

    def run(self, reader: RawReader, key: int, targets: list[int]) -> dict[int, np.ndarray] | None:
        """Decode ``targets`` (all in keyframe ``key``'s interval) from the packets from ``key`` on."""
        chosen = self._collect(reader, key, targets)
        return None if chosen is None else self._decode_parts([(targets, chosen)])

    def run_units(self, reader: RawReader, units: list[tuple[int, list[int]]]) -> PacketResult:
        """Decode several keyframe intervals' targets through one in-memory stream.

        Opening a stream costs as much as decoding tens of small frames, so the intervals go
        one after another into a single stream: each starts with a keyframe that needs nothing
        before it (an IDR picture for H.264). When that stream does not come out as expected,
        each interval is decoded in its own stream.
        """
        result = PacketResult()
        parts: list[tuple[list[int], list[tuple[int, bytes]]]] = []
        for key, targets in units:
            chosen = self._collect(reader, key, targets)
            if chosen is None:
                result.failed += targets
            else:
                parts.append((targets, chosen))
        found = self._decode_parts(parts) if len(parts) > 1 else None
        if found is not None:
            result.frames.update(found)
            return result
        for targets, chosen in parts:
            found = self._decode_parts([(targets, chosen)])
            if found is None:
                result.failed += targets
            else:
                result.frames.update(found)
        return result

    def _collect(self, reader: RawReader, key: int, targets: list[int]) -> list[tuple[int, bytes]] | None:
        """The packets (rank, data), in decode order, that decode ``targets`` from keyframe ``key``."""
        index = self.job.index
        codec = index.codec
        first = reader.fetch(key)
        if first is None or not self_contained(first, codec):
            return None
        wanted = set(targets)
        last = max(index.dpos[t] for t in targets)
        chosen = [(key, first)]  # decode order
        while reader.at < last:
            item = reader.next()
            if item is None:
                return None
            rank, data = item
            if rank < key:
                continue  # a leading picture of the keyframe: nothing after the keyframe needs it
            if rank != key and index.is_key(rank):
                return None  # a target lies beyond the next keyframe in decode order
            if rank in wanted or codec != "h264" or h264_picture(data)[0]:
                chosen.append((rank, data))
        return chosen

    def _decode_parts(self, parts: list[tuple[list[int], list[tuple[int, bytes]]]]) -> dict[int, np.ndarray] | None:
        """Decode intervals' chosen packets (in increasing keyframe order) as one stream."""
        if not parts:
            return {}
        codec = self.job.index.codec
        prefix, lead = self._prefix(parts[0][1][0][0] == 0)
        ranks: list[int] = [-1] * lead
        kinds: list[str | None] = [None] * lead
        wanted: set[int] = set()
        data: list[bytes] = [prefix]
        for targets, chosen in parts:
            order = sorted(rank for rank, _ in chosen)
            ranks += order
            if codec == "h264":
                kind_of = {rank: h264_picture(packet)[1] for rank, packet in chosen}
                kinds += [kind_of[r] if kind_of[r] in ("I", "P", "B") else None for r in order]
            else:
                kinds += [None] * len(order)
            wanted.update(targets)
            data += [packet for _, packet in chosen]
        return self._decode(b"".join(data), ranks, wanted, kinds)

    def _decode(
        self, data: bytes, ranks: list[int], keep: set[int], kinds: list[str | None]
    ) -> dict[int, np.ndarray] | None:
        """Decode a stream whose frames come out as ``ranks``; None unless it gives exactly those."""
        # The capture reads from the stream without owning it: keep it alive until release().
        stream = io.BytesIO(data)
        cap = _capture.open_stream(stream, self.threads)
        if cap is None:
            return None
        frames: dict[int, np.ndarray] = {}
        try:
            if not cap.isOpened():
                return None
            for rank, kind in zip(ranks, kinds, strict=True):
                self.job.check()
                if not cap.grab():
                    return None
                with self._count_lock:
                    self.decoded += 1
                if kind is not None and cap.get(cv2.CAP_PROP_FRAME_TYPE) != float(ord(kind)):
                    return None  # the frames do not come out in the order expected
                if rank in keep:
                    ok, frame = cap.retrieve()
                    if not ok or frame is None:
                        return None
                    frames[rank] = _capture.to_rgb(_capture.rotate(frame, self.job.index.rotation))
            if cap.grab():
                return None  # more frames than packets
            return frames
        except cv2.error:
            return None
        finally:
            cap.release()
            stream.close()


@dataclass
class PacketResult:
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)


def decode_from_packets(
    job: Job, targets: list[int], keyframes: bool, options: DecodeOptions
) -> tuple[int, int] | None:
    """Decode ``targets`` (keyframes, or any frames exactly) from packets, with the end check beside.

    Returns (frames decoded, targets that had to be decoded by seeking and
    grabbing instead), or None when packet decoding does not reproduce this
    file's frames; then nothing has been kept but the end check's frames.
    """
    index = job.index
    last = index.frames_from_content - 1
    workers = options.workers
    threads = 1 if workers > 1 else options.decoder_threads
    tail = Walker(job, threads=threads, keep=frozenset({0, last}))
    reader = RawReader(job)
    try:
        tail.open()
        first = reader.fetch(0)
    except BaseException:
        tail.close()
        raise
    finally:
        reader.close()
    if first is None:
        tail.close()
        return None
    decoder = PacketDecoder(job, first, threads)

    # Work units: batches of keyframes, or the targets of one keyframe interval each.
    units: list[tuple[int, list[int]]] = []
    last_key = index.key_at_or_before(last)
    if keyframes:
        keys = sorted(set(targets))
        units = [(-1, keys[i : i + PACKET_BATCH]) for i in range(0, len(keys), PACKET_BATCH)]
    else:
        # Frame 0 and the last frame check the packet decoding against the file's own decoder
        # (the end check decodes the last frame anyway); they ride along in the intervals' streams.
        for t in sorted(set(targets) | {0, last}):
            key = index.key_at_or_before(t)
            if units and units[-1][0] == key:
                units[-1][1].append(t)
            else:
                units.append((key, [t]))
    costs = [len(ts) if key < 0 else index.dpos[max(ts)] - index.dpos[key] + 1 for key, ts in units]
    groups = split(costs, workers)

    def work(group: list[int]) -> PacketResult:
        result = PacketResult()
        reader = RawReader(job)
        try:
            if not keyframes:
                return decoder.run_units(reader, [units[u] for u in group])
            for u in group:
                frames, failed = decoder.keyframes(reader, units[u][1])
                result.frames.update(frames)
                result.failed += failed
            return result
        finally:
            reader.close()

    def check() -> PacketResult:
        """Keyframe mode: frame 0 and the last frame decoded from packets (compared with the end check's)."""
        result = PacketResult()
        zero = decoder.first_frame()
        if zero is not None:
            result.frames[0] = zero
        reader = RawReader(job)
        try:
            end = decoder.run(reader, last_key, [last])
        finally:
            reader.close()
        if end is not None:
            result.frames.update(end)
        return result

    def end_check() -> PacketResult:
        try:
            tail.walk(plan_runs(index, [], eof=True))
        finally:
            tail.close()
        return PacketResult()

    # (exact: frame 0 and the last frame come with the work units' streams)
    tasks = [end_check, check if keyframes else PacketResult] + [lambda g=g: work(g) for g in groups if g]
    results: list[PacketResult] = []
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(task) for task in tasks]
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - the first real failure is raised below
                job.stop.set()
                if failure is None or isinstance(failure, Cancelled):
                    failure = exc
    decoded = tail.decoded + decoder.decoded
    if failure is not None:
        raise failure
    checked = {i: f for r in results[1:] for i, f in r.frames.items() if i in (0, last)}
    if not all(i in checked and np.array_equal(checked[i], tail.kept[i]) for i in (0, last)):
        return None
    fallback = sorted({t for r in results[2:] for t in r.failed if t in job.wanted})
    for r in results[2:]:
        job.frames.update((i, f) for i, f in r.frames.items() if i in job.wanted)
    if fallback:
        decoded += decode_walking(job, fallback, eof=False, options=options)
    return decoded, len(fallback)
