"""Reading fetched record batches whose header keys are not UTF-8: aiokafka's
reader fails on them; podium_shared.records reads them, and every other record of
the fetch, the same as aiokafka does."""

from __future__ import annotations

import pytest
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.record.memory_records import MemoryRecords

from podium_shared.records import LenientMemoryRecords, read_batch

pytestmark = pytest.mark.unit


class RawKey(str):
    """A header key whose wire bytes are not UTF-8 (the pure-Python builder calls encode)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe-key"


def batch(
    base_offset: int, records: list[tuple[bytes, list[tuple[str, bytes]]]], codec: int
) -> bytes:
    builder = _DefaultRecordBatchBuilderPy(
        2,
        codec,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=0,
        batch_size=1 << 20,
    )
    for i, (value, headers) in enumerate(records):
        builder.append(i, timestamp=1_000 + i, key=b"k%d" % i, value=value, headers=headers)
    raw = bytearray(builder.build())
    raw[0:8] = base_offset.to_bytes(8, "big")  # as the broker assigns it
    return bytes(raw)


def as_tuples(records: object) -> list[tuple[object, ...]]:
    return [
        (r.offset, r.timestamp, r.key, r.value, list(r.headers))  # type: ignore[attr-defined]
        for r in records  # type: ignore[attr-defined]
    ]


@pytest.mark.parametrize("codec", [0, 1], ids=["plain", "gzip"])
def test_read_batch_reads_what_aiokafka_reads(codec: int) -> None:
    good = batch(40, [(b"a", [("h", b"1")]), (b"b", []), (b"c", [("x", b"")])], codec)
    fetched = MemoryRecords(good)
    theirs = as_tuples(fetched.next_batch())  # type: ignore[arg-type]
    assert as_tuples(read_batch(good)) == theirs
    assert [t[0] for t in theirs] == [40, 41, 42]


@pytest.mark.parametrize("codec", [0, 1], ids=["plain", "gzip"])
def test_a_fetch_with_a_bad_header_key_yields_every_record(codec: int) -> None:
    rows = [(b"a", [("h", b"1")]), (b"bad", [(RawKey("x"), b"v"), ("ok", b"2")]), (b"c", [])]
    data = batch(0, [(b"before", [])], 0) + batch(1, rows, codec) + batch(4, [(b"after", [])], 0)

    def drain(records: object) -> list[tuple[object, ...]]:
        out = []
        while records.has_next():  # type: ignore[attr-defined]
            out += as_tuples(records.next_batch())  # type: ignore[attr-defined]
        return out

    with pytest.raises(UnicodeDecodeError):  # aiokafka, as the fetcher reads it
        drain(MemoryRecords(data))
    got = drain(LenientMemoryRecords(data))
    assert [(o, v) for o, _, _, v, _ in got] == [
        (0, b"before"),
        (1, b"a"),
        (2, b"bad"),
        (3, b"c"),
        (4, b"after"),
    ]
    assert got[2][4] == [("\udcff\udcfe-key", b"v"), ("ok", b"2")]
