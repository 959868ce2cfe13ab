"""Fetched record batches that survive a header key which is not UTF-8.

Kafka header keys are UTF-8 strings, but a broker stores whatever bytes a client
sends. aiokafka decodes every key strictly while it iterates a fetched batch,
inside ``getmany()``: one bad key raises ``UnicodeDecodeError`` out of the fetch,
the partition's position stays before the record, and every later fetch (and
every restart) raises again, while the records before it in the batch are lost
with the exception. No consume loop can get past it from the outside.

``install()`` makes aiokafka's fetcher read batches through
:class:`LenientMemoryRecords`: aiokafka's own (compiled) reader as long as it
can decode, and, from the record it cannot, this module's reader of the same
batch bytes, which keeps such a key's bytes as lone surrogates
(``surrogateescape``). The consume loop then sees an ordinary record whose key is
not UTF-8, dead-letters it as ``undecodable`` and commits past it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiokafka.consumer.fetcher as _fetcher
from aiokafka import codec
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import decode_varint

# RecordBatch v2: BaseOffset q, Length i, PartitionLeaderEpoch i, Magic b, CRC I,
# Attributes h, LastOffsetDelta i, FirstTimestamp q, MaxTimestamp q, ProducerId q,
# ProducerEpoch h, BaseSequence i, RecordsCount i.
_HEADER = struct.Struct(">qiibIhiqqqhii")
_LOG_OVERHEAD = 12  # BaseOffset and Length, before the Length bytes it counts
_MAGIC_AT = 16  # after BaseOffset, Length and PartitionLeaderEpoch, in every version
_CODEC_MASK = 0x07
_LOG_APPEND_TIME = 0x08
_DECOMPRESS = {
    1: codec.gzip_decode,
    2: codec.snappy_decode,
    3: codec.lz4_decode,
    4: codec.zstd_decode,
}


@dataclass(frozen=True, slots=True)
class LenientRecord:
    """One record as aiokafka's fetcher reads it (offset, timestamp, key, value, headers)."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    checksum: None = None


def _bytes(buf: bytearray, pos: int) -> tuple[bytes | None, int]:
    length, pos = decode_varint(buf, pos)
    if length < 0:
        return None, pos
    return bytes(buf[pos : pos + length]), pos + length


def read_batch(raw: bytes | memoryview) -> list[LenientRecord]:
    """Every record of one v2 record batch; header keys that are not UTF-8 keep their
    bytes as lone surrogates instead of failing the read."""
    (base_offset, _, _, magic, _, attributes, _, first_ts, max_ts, *_rest, count) = (
        _HEADER.unpack_from(raw)
    )
    if magic < 2:
        raise ValueError(f"record batch magic {magic}: only v2 batches have headers")
    body: Any = memoryview(raw)[_HEADER.size :]
    codec_id = attributes & _CODEC_MASK
    if codec_id:
        body = _DECOMPRESS[codec_id](body if codec_id == 1 else body.tobytes())
    buf = bytearray(body)
    ts_type = 1 if attributes & _LOG_APPEND_TIME else 0
    records: list[LenientRecord] = []
    pos = 0
    for _ in range(count):
        _, pos = decode_varint(buf, pos)  # the record's length
        pos += 1  # attributes: unused
        ts_delta, pos = decode_varint(buf, pos)
        offset_delta, pos = decode_varint(buf, pos)
        key, pos = _bytes(buf, pos)
        value, pos = _bytes(buf, pos)
        n_headers, pos = decode_varint(buf, pos)
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(n_headers):
            name, pos = _bytes(buf, pos)
            h_value, pos = _bytes(buf, pos)
            headers.append(((name or b"").decode("utf-8", "surrogateescape"), h_value))
        records.append(
            LenientRecord(
                offset=base_offset + offset_delta,
                timestamp=max_ts if ts_type else first_ts + ts_delta,
                timestamp_type=ts_type,
                key=key,
                value=value,
                headers=headers,
            )
        )
    return records


class _LenientBatch:
    """aiokafka's batch; from a record it cannot decode on, this module's reader."""

    def __init__(self, batch: Any, raw: memoryview) -> None:
        self._batch = batch
        self._raw = raw
        self._taken = 0
        self._rest: Iterator[LenientRecord] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __iter__(self) -> _LenientBatch:
        return self

    def __next__(self) -> Any:
        if self._rest is None:
            try:
                record = next(self._batch)
            except UnicodeDecodeError:
                self._rest = iter(read_batch(self._raw)[self._taken :])
            else:
                self._taken += 1
                return record
        return next(self._rest)


class LenientMemoryRecords:
    """The batches of one fetched partition, as aiokafka's ``MemoryRecords`` reads
    them, each wrapped so a header key that is not UTF-8 cannot fail the fetch."""

    def __init__(self, data: bytes) -> None:
        self._records = MemoryRecords(data)
        self._data = memoryview(data)
        self._pos = 0

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        start = self._pos
        (length,) = struct.unpack_from(">i", self._data, start + 8)
        self._pos = start + _LOG_OVERHEAD + length
        if batch is None or self._data[start + _MAGIC_AT] < 2:  # v0/v1 batches have no headers
            return batch
        return _LenientBatch(batch, self._data[start : self._pos])


def install() -> None:
    """Make every aiokafka consumer of this process fetch through
    :class:`LenientMemoryRecords` (idempotent)."""
    _fetcher.MemoryRecords = LenientMemoryRecords
