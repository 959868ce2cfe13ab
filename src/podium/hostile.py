"""The hostile-input barrage (issue 12): generate malformed records for every topic
podium consumes, send them to a running stack, and account for each one.

A record is accounted for when it is found

- dead-lettered: its copy is in ``<topic>.dlq``, found by the
  ``podium-dlq-original-topic/partition/offset`` headers (one dict lookup per record);
- answered: an outcome for its task id on task-events (``TaskRejected``, ``TaskFailed``,
  ``TaskCompleted``, ``TaskCancelled``): a hostile but legal task id runs like any other;
- dropped, documented: the second copy of a message whose ``ce_id`` the inbox already
  took (counted in ``podium_messages_duplicate_total``), provided its first copy is
  itself accounted for;
- refused by the broker: never entered, so nothing to lose (Apache Kafka refuses a
  10 MiB record under its default ``message.max.bytes``; Tansu stores it).

Anything else is *unaccounted*: lost without a trace, which is the bug this hunts.

The generator is seeded (``random.Random(seed)``): the same count and seed make the
same records, so a finding can be sent again.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from podium_contracts import (
    ContractError,
    DlqHeader,
    StepCompleted,
    StepRetryScheduled,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskFailed,
    TaskRejected,
    TaskSubmitted,
    decode,
)
from podium_shared import Settings, Topics
from podium_shared.dlq import dlq_headers

MiB = 1024 * 1024
RawHeaders = list[tuple[str | bytes, bytes]]  # a bytes key is sent as it is (not UTF-8)
SOURCE = "podium-hostile"
ANSWERS = (TaskRejected, TaskFailed, TaskCompleted, TaskCancelled)


@dataclass(frozen=True, slots=True)
class Hostile:
    """One record to send, and what would account for it besides a dead letter."""

    kind: str
    topic: str
    key: bytes | None
    value: bytes | None
    headers: RawHeaders
    task_ids: tuple[str, ...] = ()  # an outcome for any of these answers it
    duplicate_of: int | None = None  # index of the record whose ce_id this repeats


def _ce(ce_type: str) -> list[tuple[str | bytes, bytes]]:
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", uuid.uuid4().hex.encode()),  # fresh per run, as generate() says
        ("ce_type", ce_type.encode()),
        ("ce_source", SOURCE.encode()),
        ("content-type", b"application/json"),
    ]


def _native_type(topics: Topics, topic: str) -> str:
    """A ce_type the topic carries: the record looks right until its payload is read.
    On the tasks topic, TaskSubmitted: a cancel request reads only its task id, so a
    malformed body would pass as one (and be dead-lettered as ``unknown_task``)."""
    carried = topics.carries(topic)
    return TaskSubmitted.CE_TYPE if TaskSubmitted.CE_TYPE in carried else sorted(carried)[0]


def _nested(depth: int) -> bytes:
    return b'{"task_id": "t", "input": ' + b"[" * depth + b"0" + b"]" * depth + b"}"


# A kind: (rng, topics, topic, n, run) -> (key, value, headers). n numbers the record;
# run is fresh per run, for the task ids: a second run is not a duplicate of the first.
Make = Callable[
    [random.Random, Topics, str, int, str], tuple[bytes | None, bytes | None, RawHeaders]
]


def _not_json(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))) + b"\xff\xfe"
    return f"k{n}".encode(), junk, _ce(_native_type(topics, topic))


def _empty(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    return f"k{n}".encode(), b"", _ce(_native_type(topics, topic))


def _tombstone(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    return f"k{n}".encode(), None, _ce(_native_type(topics, topic))


def _null_key_tombstone(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    return None, None, []  # what Java and librdkafka clients can send; aiokafka asserts


def _null_key(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    return None, b'{"task_id": "x"}', _ce(_native_type(topics, topic))


def _no_headers(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    return f"k{n}".encode(), b'{"task_id": "x", "workflow": "hello"}', []


def _header_value_not_utf8(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    headers = [(k, b"\xc3\x28\xff" if k == "ce_type" else v) for k, v in _ce("x")]
    return f"k{n}".encode(), b"{}", headers


def _header_key_not_utf8(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    headers = [*_ce(_native_type(topics, topic)), (b"\xff\xfe-key", b"x")]
    return f"k{n}".encode(), b"{}", headers


def _structured_bad(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    variants: list[Any] = [
        [1, 2, 3],  # not an object
        {"specversion": "1.0", "id": 7, "type": _native_type(topics, topic), "source": "s"},
        {
            "specversion": "1.0",
            "id": "i",
            "type": _native_type(topics, topic),
            "source": "s",
            "data": "not an object",
        },
        {
            "specversion": "0.3",
            "id": "i",
            "type": _native_type(topics, topic),
            "source": "s",
            "data": {},
        },
    ]
    body = orjson.dumps(variants[n % len(variants)])
    return f"k{n}".encode(), body, [("content-type", b"application/cloudevents+json")]


def _deep(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    depth = rng.choice((65, 200, 1000, 5000))
    return f"k{n}".encode(), _nested(depth), _ce(_native_type(topics, topic))


def _huge_numbers(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    number = rng.choice((b"1" + b"0" * 400, b"1e999", b"-1e999", b"%d" % 2**64, b"%d" % 2**63))
    body = b'{"task_id": "t%d", "workflow": "hello", "priority": %s, "attempt": %s}' % (
        n,
        number,
        number,
    )
    return f"k{n}".encode(), body, _ce(_native_type(topics, topic))


def _wrong_types(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    body = rng.choice(
        (
            {"task_id": 12, "workflow": ["hello"]},
            {"task_id": None, "step_id": {"a": 1}},
            {"task_id": {"$gt": ""}, "workflow": "hello"},
            {},
        )
    )
    return f"k{n}".encode(), orjson.dumps(body), _ce(_native_type(topics, topic))


def _unknown_type(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    ce_type = rng.choice(("podium.nonsense.v1", "com.example.order.created", "\u202e.v1"))
    return f"k{n}".encode(), b'{"task_id": "t"}', _ce(ce_type)


def _future_version(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    base = _native_type(topics, topic).rsplit(".v", 1)[0]
    return f"k{n}".encode(), b'{"task_id": "t"}', _ce(f"{base}.v{rng.randint(2, 99)}")


def _unexpected_type(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    foreign = sorted(
        {TaskCancelled.CE_TYPE, StepRetryScheduled.CE_TYPE} - set(topics.carries(topic))
    )
    return f"k{n}".encode(), b'{"task_id": "t"}', _ce(rng.choice(foreign))


def _one_mib(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    # Just under the producer's and the broker's 1 MiB: a record that fits, whose
    # dead-letter copy (about half a KiB more) does not.
    return f"k{n}".encode(), b"x" * (MiB - 2048), _ce(_native_type(topics, topic))


def _ten_mib(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    return f"k{n}".encode(), b"x" * (10 * MiB), _ce(_native_type(topics, topic))


HOSTILE_IDS = (
    "../../etc/passwd",
    "'; DROP TABLE runs; --",
    "\u202eevil\u200b🦀",
    "x" * 200,  # the longest legal id
    "x" * 201,  # one too long: rejected
    "   ",
    "{{ 7 * 7 }}%s%n",
    "line\nbreak\ttab",
    "nul\x00byte",
)


def _hostile_id(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    base, suffix = HOSTILE_IDS[n % len(HOSTILE_IDS)], f"-{run}-{n}"
    # Unique by n; the long ones keep their length (200 is legal, 201 is not).
    task_id = base + suffix if len(base) < 200 else base[: -len(suffix)] + suffix
    body = orjson.dumps({"task_id": task_id, "workflow": "hello", "input": {"n": n}})
    return task_id.encode(), body, _ce(TaskSubmitted.CE_TYPE)


def _cancel_unknown_task(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    # A well-formed cancel request for a task that never existed.
    task_id = f"never-submitted-{run}-{n}"
    body = orjson.dumps({"task_id": task_id, "reason": "hostile"})
    return task_id.encode(), body, _ce(TaskCancelRequested.CE_TYPE)


def _orphan_result(rng: random.Random, topics: Topics, topic: str, n: int, run: str) -> Any:
    # A well-formed step result for a task the router never ran.
    task_id = f"never-submitted-{run}-{n}"
    body = {
        "task_id": task_id,
        "step_id": "s",
        "capability": "echo",
        "pool": "default",
        "output": {},
        "attempt": 1,
        "duration_ms": 1.0,
    }
    return task_id.encode(), orjson.dumps(body), _ce(StepCompleted.CE_TYPE)


# Well-formed messages for a task that does not exist: the router returns without a
# trace (no dead letter, no answer, no log line, no metric). Findings, kept in the
# catalogue and left out of the test suite until the lead decides (see the report).


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    make: Make
    tasks_only: bool = False
    topic: str | None = None  # only this Topics attribute (e.g. "step_results")
    weight: int = 10  # relative share of the barrage
    cap: int | None = None  # at most this many per run (the large ones)
    first: int = 1  # records in the first round: consecutive n, so every variant by n


CATALOGUE: tuple[Kind, ...] = (
    Kind("not_json", _not_json),
    Kind("empty", _empty),
    Kind("tombstone", _tombstone),
    Kind("null_key_tombstone", _null_key_tombstone, weight=3),
    Kind("null_key", _null_key),
    Kind("no_headers", _no_headers),
    Kind("header_value_not_utf8", _header_value_not_utf8),
    Kind("header_key_not_utf8", _header_key_not_utf8, weight=3),
    Kind("structured_bad", _structured_bad),
    Kind("deep", _deep),
    Kind("huge_numbers", _huge_numbers),
    Kind("wrong_types", _wrong_types),
    Kind("unknown_type", _unknown_type),
    Kind("future_version", _future_version),
    Kind("unexpected_type", _unexpected_type),
    Kind("one_mib", _one_mib, weight=1, cap=6),
    Kind("ten_mib", _ten_mib, weight=1, cap=1),
    Kind("hostile_id", _hostile_id, tasks_only=True, weight=40, first=len(HOSTILE_IDS)),
    Kind("duplicate", _hostile_id, tasks_only=True, weight=10),
    Kind("cancel_unknown_task", _cancel_unknown_task, tasks_only=True),
    Kind("orphan_result", _orphan_result, topic="step_results"),
)
KINDS = {k.name: k for k in CATALOGUE}


def consumed_topics(topics: Topics) -> list[str]:
    """Every topic a podium service reads."""
    return [
        topics.tasks,
        topics.task_events,  # memory
        topics.step_results,  # router
        topics.step_failures,  # recovery
        topics.steps("default"),  # executor
        topics.steps("memory"),  # memory
    ]


def _reads(kind: Kind, topics: Topics, topic: str) -> bool:
    if kind.tasks_only:
        return topic == topics.tasks
    if kind.topic is not None:
        return bool(topic == getattr(topics, kind.topic))
    return True


def generate(
    topics: Topics,
    count: int,
    seed: int,
    kinds: Sequence[str] | None = None,
    *,
    run: str | None = None,
) -> list[Hostile]:
    """``count`` hostile records over every consumed topic, the same for the same seed,
    but for their ``ce_id`` and task ids: fresh in every run (``run``, random unless
    given), or the inbox would drop a second run's records as duplicates of the first.
    The first ones go round every (kind, topic) pair, so a small count still covers all."""
    run = run or uuid.uuid4().hex[:8]
    rng = random.Random(seed)
    chosen = [KINDS[k] for k in kinds] if kinds is not None else list(CATALOGUE)
    pairs = [(k, t) for k in chosen for t in consumed_topics(topics) if _reads(k, topics, t)]
    first_round = [p for p in pairs for _ in range(p[0].first)]
    out: list[Hostile] = []
    made: Counter[str] = Counter()
    weights = [k.weight for k, _ in pairs]
    n = 0
    while len(out) < count and pairs:
        kind, topic = first_round[n] if n < len(first_round) else rng.choices(pairs, weights)[0]
        n += 1
        if kind.cap is not None and made[kind.name] >= kind.cap:
            if n > len(pairs) * 1000:
                break
            continue
        made[kind.name] += 1
        key, value, headers = kind.make(rng, topics, topic, len(out), run)
        if kind.name == "duplicate":
            first = Hostile(kind.name, topic, key, value, headers, _ids(key, value))
            out.append(first)
            out.append(
                Hostile(kind.name, topic, key, value, headers, _ids(key, value), len(out) - 1)
            )
            continue
        out.append(Hostile(kind.name, topic, key, value, headers, _ids(key, value)))
    return out[:count]


def _ids(key: bytes | None, value: bytes | None) -> tuple[str, ...]:
    """The task ids an answer could name: the payload's, else the key (TaskRejected's rule)."""
    ids = []
    try:
        body = orjson.loads(value or b"")
        if isinstance(body, dict) and isinstance(body.get("task_id"), str):
            ids.append(body["task_id"])
    except orjson.JSONDecodeError:
        pass
    if key:
        ids.append(key.decode(errors="replace"))
    return tuple(ids)


# -- sending -------------------------------------------------------------------------------


class _RawHeaderKey(str):
    """A header key whose wire bytes are ``raw``: aiokafka's pure-Python batch builder
    writes ``key.encode("utf-8")``, which this returns as it is."""

    raw: bytes = b""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


async def send_raw(
    producer: AIOKafkaProducer,
    topic: str,
    *,
    partition: int,
    key: bytes | None,
    value: bytes | None,
    headers: RawHeaders,
) -> RecordMetadata:
    """Produce one record as no well-behaved client would: header keys given as bytes
    go out as they are (e.g. not UTF-8), and key and value may both be None."""
    # Only the pure-Python builder lets a key's bytes through unchecked, and the batch
    # path skips ``send``'s assert against a record with neither key nor value.
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    wire: list[tuple[str, bytes]] = []
    for k, v in headers:
        if isinstance(k, bytes):
            raw = _RawHeaderKey("raw")
            raw.raw = k
            wire.append((raw, v))
        else:
            wire.append((k, v))
    batch = producer.create_batch()
    batch._builder = _DefaultRecordBatchBuilderPy(
        2,
        0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=0,
        batch_size=2 * MiB,
    )
    batch.append(timestamp=None, key=key, value=value, headers=wire)
    batch.close()
    sent: RecordMetadata = await (await producer.send_batch(batch, topic, partition=partition))
    return sent


async def _send(producer: AIOKafkaProducer, h: Hostile, rng: random.Random) -> RecordMetadata:
    raw = (h.key is None and h.value is None) or any(isinstance(k, bytes) for k, _ in h.headers)
    if raw:
        parts = sorted(await producer.partitions_for(h.topic))
        return await send_raw(
            producer,
            h.topic,
            partition=rng.choice(parts),
            key=h.key,
            value=h.value,
            headers=h.headers,
        )
    headers = [(str(k), v) for k, v in h.headers]
    return await producer.send_and_wait(h.topic, value=h.value, key=h.key, headers=headers)


# -- accounting ----------------------------------------------------------------------------


@dataclass(slots=True)
class KindTally:
    """What became of one kind's records."""

    sent: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)  # by DLQ reason
    answered: Counter[str] = field(default_factory=Counter)  # by outcome type
    dropped: Counter[str] = field(default_factory=Counter)  # documented drops, by why
    refused: Counter[str] = field(default_factory=Counter)  # never entered, by why
    unaccounted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "dead_lettered": dict(self.dead_lettered),
            "answered": dict(self.answered),
            "dropped_documented": dict(self.dropped),
            "refused_by_broker": dict(self.refused),
            "unaccounted": self.unaccounted,
        }


@dataclass(slots=True)
class Report:
    """Per kind: sent, dead-lettered (by reason), answered, dropped-documented,
    refused by the broker, unaccounted; and where the unaccounted ones are."""

    seed: int
    kinds: dict[str, KindTally] = field(default_factory=dict)
    lost: list[dict[str, Any]] = field(default_factory=list)  # the unaccounted records
    seconds: float = 0.0
    alive: bool | None = None  # a normal task completed afterwards (None: not checked)

    @property
    def sent(self) -> int:
        return sum(t.sent for t in self.kinds.values())

    @property
    def unaccounted(self) -> int:
        return sum(t.unaccounted for t in self.kinds.values())

    @property
    def ok(self) -> bool:
        return self.unaccounted == 0 and self.alive is not False

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "sent": self.sent,
            "unaccounted": self.unaccounted,
            "alive": self.alive,
            "seconds": round(self.seconds, 2),
            "kinds": {k: t.as_dict() for k, t in sorted(self.kinds.items())},
            "lost": self.lost[:50],
        }

    def text(self) -> str:
        def cell(c: Counter[str]) -> str:
            return ", ".join(f"{n} {why}" for why, n in sorted(c.items())) or "-"

        lines = [f"{'kind':<22} {'sent':>5}  dead-lettered / answered / dropped / refused  lost"]
        for name, t in sorted(self.kinds.items()):
            lines.append(
                f"{name:<22} {t.sent:>5}  {cell(t.dead_lettered)} / {cell(t.answered)} / "
                f"{cell(t.dropped)} / {cell(t.refused)}  {t.unaccounted}"
            )
        alive = {None: "not checked", True: "yes", False: "NO"}[self.alive]
        lines.append(
            f"{self.sent} records in {self.seconds:.1f}s (seed {self.seed}); "
            f"unaccounted {self.unaccounted}; a normal task completed afterwards: {alive}"
        )
        lines += [
            f"  lost: {x['kind']} on {x['topic']}[{x['partition']}]@{x['offset']}"
            for x in self.lost[:20]
        ]
        return "\n".join(lines)


@dataclass(slots=True)
class _Sent:
    hostile: Hostile
    partition: int | None = None
    offset: int | None = None
    refused: str | None = None


class _Watch:
    """The DLQ topics and task-events from where they stood before the barrage: dead
    letters by the original (topic, partition, offset), outcomes by task id."""

    def __init__(self, settings: Settings) -> None:
        from podium_shared.kafka import make_consumer

        self.topics = Topics(settings.topic_prefix)
        self.consumer = make_consumer(settings, group_id=None, client_id="podium-hostile")
        self.dead: dict[tuple[str, int, int], str] = {}
        self.answers: dict[str, str] = {}

    async def start(self) -> None:
        await self.consumer.start()
        wanted = [Topics.dlq(t) for t in consumed_topics(self.topics)]
        wanted.append(self.topics.task_events)
        tps: list[TopicPartition] = []
        for topic in wanted:
            # Apache Kafka sends metadata only for the topics a client asked about.
            self.consumer._client.add_topic(topic)
            parts: set[int] | None = None
            for _ in range(100):
                await self.consumer._client.force_metadata_update()
                parts = self.consumer.partitions_for_topic(topic)
                if parts:
                    break
                await asyncio.sleep(0.1)
            if not parts:
                raise RuntimeError(f"topic {topic} does not exist: is the stack running?")
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        # Tansu's end offset can be a floor (the last batch's base): a few old records
        # are read again, which only adds entries nobody asks about.
        ends = await self.consumer.end_offsets(tps)
        for tp, end in ends.items():
            self.consumer.seek(tp, end)

    async def poll(self) -> None:
        batches = await self.consumer.getmany(timeout_ms=200)
        for tp, records in batches.items():
            for r in records:
                headers = [(k, v or b"") for k, v in (r.headers or ())]
                if tp.topic == self.topics.task_events:
                    self._answer(r.value, headers)
                    continue
                meta = dlq_headers(headers)
                try:
                    where = (
                        meta[DlqHeader.ORIGINAL_TOPIC],
                        int(meta[DlqHeader.ORIGINAL_PARTITION]),
                        int(meta[DlqHeader.ORIGINAL_OFFSET]),
                    )
                except (KeyError, ValueError):
                    continue
                self.dead[where] = meta.get(DlqHeader.REASON, "?")

    def _answer(self, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        try:
            payload = decode(value, headers).payload
        except ContractError:
            return
        if isinstance(payload, ANSWERS):
            self.answers[payload.task_id] = type(payload).__name__

    async def stop(self) -> None:
        await self.consumer.stop()


def _fate(s: _Sent, sent: list[_Sent], watch: _Watch) -> tuple[str, str] | None:
    """How ``s`` is accounted for: (column, why), or None while it is not (yet)."""
    h = s.hostile
    if s.refused is not None:
        return "refused", s.refused
    assert s.partition is not None and s.offset is not None
    reason = watch.dead.get((h.topic, s.partition, s.offset))
    if reason is not None:
        return "dead_lettered", reason
    if h.duplicate_of is not None:
        # The inbox drops a ce_id it has taken; the first copy must be accounted for.
        if _fate(sent[h.duplicate_of], sent, watch) is not None:
            return "dropped", "duplicate ce_id (podium_messages_duplicate_total)"
        return None
    for task_id in h.task_ids:
        if task_id in watch.answers:
            return "answered", watch.answers[task_id]
    return None


def _too_large(exc: BaseException) -> bool:
    return type(exc).__name__ in ("MessageSizeTooLargeError", "RecordTooLargeError")


async def run_hostile(
    settings: Settings,
    count: int,
    seed: int,
    *,
    kinds: Sequence[str] | None = None,
    timeout_s: float = 120.0,
    settle_s: float = 30.0,
) -> Report:
    """Send ``count`` hostile records (seeded) to the stack at ``settings`` and account
    for each. It stops waiting after ``timeout_s``, or once ``settle_s`` pass without a
    record newly accounted for, and reports what is still missing."""
    from podium_shared.kafka import _common

    started = time.monotonic()
    topics = Topics(settings.topic_prefix)
    hostile = generate(topics, count, seed, kinds)
    rng = random.Random(seed)
    watch = _Watch(settings)
    # A record up to 16 MiB leaves the client: the broker, not aiokafka, is what refuses.
    producer = AIOKafkaProducer(**_common(settings), acks="all", max_request_size=16 * MiB)
    sent = [_Sent(h) for h in hostile]
    try:
        await watch.start()
        await producer.start()
        for s in sent:
            try:
                meta = await _send(producer, s.hostile, rng)
            except KafkaError as exc:
                if not _too_large(exc):
                    raise
                s.refused = "too large for the broker (message.max.bytes)"
                continue
            s.partition, s.offset = meta.partition, meta.offset
        deadline = time.monotonic() + timeout_s
        accounted, progress_at = 0, time.monotonic()
        while time.monotonic() < deadline:
            await watch.poll()
            now_accounted = sum(_fate(s, sent, watch) is not None for s in sent)
            if now_accounted == len(sent):
                break
            if now_accounted > accounted:
                accounted, progress_at = now_accounted, time.monotonic()
            elif time.monotonic() - progress_at > settle_s:
                break  # nothing new for a while: what is missing is not coming
    finally:
        await producer.stop()
        await watch.stop()

    report = Report(seed=seed)
    for s in sent:
        tally = report.kinds.setdefault(s.hostile.kind, KindTally())
        tally.sent += 1
        fate = _fate(s, sent, watch)
        if fate is None:
            tally.unaccounted += 1
            report.lost.append(
                {
                    "kind": s.hostile.kind,
                    "topic": s.hostile.topic,
                    "partition": s.partition,
                    "offset": s.offset,
                    "task_ids": list(s.hostile.task_ids),
                }
            )
            continue
        column, why = fate
        getattr(tally, column)[why] += 1
    report.seconds = time.monotonic() - started
    return report


async def hello_completes(settings: Settings, timeout_s: float = 60.0) -> bool:
    """Whether a normal ``hello`` task completes: every service on its path is alive."""
    from podium.client import PodiumClient

    task = TaskSubmitted(
        task_id=f"after-hostile-{uuid.uuid4().hex[:8]}", workflow="hello", input={"ok": True}
    )
    async with PodiumClient(settings) as client:
        await client.submit(task)
        try:
            outcome = (await client.wait_for([task.task_id], timeout_s))[task.task_id]
        except TimeoutError:
            return False
    return isinstance(outcome, TaskCompleted)
