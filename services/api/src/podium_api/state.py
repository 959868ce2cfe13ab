"""The api's tables: the projection of the topics (runs and steps), the tokens it
accepts, the submissions it published and the actions operators took.

Times are epoch seconds (floats): the runs list pages by ``(created_at, task_id)``
and a float compares and indexes the same on SQLite and PostgreSQL, where a
timezone-aware DateTime does not (SQLite stores it as text without the zone)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("task_id", sa.String(200), primary_key=True),
    sa.Column("tenant", sa.String(200), nullable=True),  # unknown until a submission is seen
    sa.Column("workflow", sa.String(200), nullable=True),
    sa.Column("workflow_version", sa.Integer, nullable=True),
    sa.Column("subject", sa.String(200), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),  # earliest time any event tells
    sa.Column("accepted_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("input", sa.JSON, nullable=True),
    sa.Column("output", sa.JSON, nullable=True),
    sa.Column("error", sa.JSON, nullable=True),
    sa.Column("usage", sa.JSON, nullable=True),
    sa.Column("dlq", sa.JSON, nullable=True),
    sa.Column("cancel_requested_at", sa.Float, nullable=True),
    # The run's plan, from TaskAccepted: [{"step_id", "capability", "depends_on"}].
    sa.Column("plan", sa.JSON, nullable=True),
    # The change sequence: each write of a run takes the next value of ``counters``
    # "runs", so a live stream resumes after the last change it sent (``/v1/events``).
    sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),
)
# The runs list pages newest first by (created_at, task_id); each filter that narrows
# it most often leads an index of its own so a page is an index range, not a scan.
sa.Index("ix_runs_created", runs.c.created_at, runs.c.task_id)
sa.Index("ix_runs_tenant_created", runs.c.tenant, runs.c.created_at, runs.c.task_id)
sa.Index("ix_runs_status_created", runs.c.status, runs.c.created_at, runs.c.task_id)
sa.Index("ix_runs_workflow_created", runs.c.workflow, runs.c.created_at, runs.c.task_id)
sa.Index("ix_runs_subject_created", runs.c.subject, runs.c.created_at, runs.c.task_id)
# ``q`` (a substring of the task id) has an index of the ids' trigrams beside these,
# dialect DDL rather than a model: migrations/versions/v0005_runs_search.py.
sa.Index("ix_runs_seq", runs.c.seq)

steps = sa.Table(
    "steps",
    metadata,
    sa.Column("task_id", sa.String(200), primary_key=True),
    sa.Column("step_id", sa.String(200), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),  # completed|failed|retrying|abandoned
    sa.Column("capability", sa.String(200), nullable=True),
    sa.Column("pool", sa.String(200), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=True),  # of the last attempt
    sa.Column("total_duration_ms", sa.Float, nullable=False),  # of every attempt seen
    sa.Column("first_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("output", sa.JSON, nullable=True),
    sa.Column("error", sa.JSON, nullable=True),
    sa.Column("usage", sa.JSON, nullable=True),
    sa.Column("retry_due_at", sa.Float, nullable=True),
    sa.Column("dlq", sa.JSON, nullable=True),
)

# The router's history of each task (TaskHistoryRecorded), numbered per task in the
# order the task-events topic holds them (keyed by task: one partition, in order), so a
# rebuild from the topics numbers them the same.
history = sa.Table(
    "history",
    metadata,
    sa.Column("task_id", sa.String(200), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("step_id", sa.String(200), nullable=True),
    sa.Column("cause", sa.Text, nullable=False),
    sa.Column("next_action", sa.Text, nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),  # attempt, pool, capability, model, ...
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # public: shown in the audit trail
    sa.Column("digest", sa.String(64), nullable=False, unique=True),  # sha256 hex of the token
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("tenants", sa.JSON, nullable=False),  # ["*"] or a list of tenants
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

submissions = sa.Table(
    "submissions",
    metadata,
    sa.Column("task_id", sa.String(200), primary_key=True),  # idempotency: one per task id
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("token_id", sa.String(32), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

actions = sa.Table(
    "actions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("token_id", sa.String(32), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),  # submit | cancel
    sa.Column("task_id", sa.String(200), nullable=False, index=True),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

# New dead letters, for the live streams (``event: dead_letter`` on ``/v1/events``):
# one row per StepAbandoned that names its DLQ record, numbered from the same
# ``counters`` "runs" sequence as the runs' changes, so one ``Last-Event-ID`` resumes
# both. Their tenant is their run's (joined when read: it may be learned later).
dead_letter_events = sa.Table(
    "dead_letter_events",
    metadata,
    sa.Column("record_id", sa.String(200), primary_key=True),  # the DLQ record's ce_id
    sa.Column("seq", sa.BigInteger, nullable=False, unique=True),
    sa.Column("topic", sa.String(300), nullable=False),
    sa.Column("task_id", sa.String(200), nullable=False),
    sa.Column("step_id", sa.String(200), nullable=False),
    sa.Column("error", sa.JSON, nullable=True),
    sa.Column("at", sa.Float, nullable=False),
)

# The audit trail of what operators did (``GET /v1/audit``): every replay of dead
# letters (a dry run too) and every cancel, with who, what, on what and how it ended.
# ``tenant`` is the one tenant the action touched (None: several, or none known), so a
# token of some tenants sees their entries (and its own), a token of every tenant all.
audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("token_id", sa.String(32), nullable=False),
    sa.Column("token_name", sa.String(200), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),  # replay | cancel
    sa.Column("target", sa.String(300), nullable=False),  # a topic, a task id
    sa.Column("tenant", sa.String(200), nullable=True),
    sa.Column("detail", sa.JSON, nullable=False),  # what was asked, and the result
)
sa.Index("ix_audit_at", audit.c.at)

# One row: the epoch of this database, part of the consumer group's name. A new
# database is a new epoch, so a new group that starts at the earliest offsets: a
# dropped projection is rebuilt from the topics without resetting any offsets.
meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(40), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)

# Named counters. "runs" numbers the changes of runs: it is taken (UPDATE ... RETURNING)
# in the transaction that writes the run, whose row lock holds any other writer of a
# run until that transaction ends, so the numbers are given in the order of commits
# and a reader that has seen change n has seen every change before it.
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)
