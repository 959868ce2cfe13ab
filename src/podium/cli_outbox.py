"""`podium outbox parked`: the outbox rows a relay could never send.

A relay parks a row the client or the broker refused for good (too large, no
key and no value, an invalid topic) so the rows behind it go on; the row stays
whole, with the error, in its service's ``outbox_parked`` table. This command
reads those tables, read-only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from podium.cli_common import App, JsonFlag, emit, fail, load_settings

if TYPE_CHECKING:
    from podium_shared import Settings

outbox_app = App("outbox", "Inspect the services' outboxes.")
PoolOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--pool", help="executor pools to read (default: every pool found, and PODIUM_POOL)"
    ),
]


def databases(settings: Settings, pools: list[str] | None = None) -> list[tuple[str, str]]:
    """(service, database URL) of every service whose outbox can hold parked rows."""
    if pools is None:
        found = {p.stem.removeprefix("executor-") for p in settings.home.glob("executor-*.db")}
        pools = sorted(found | {settings.pool})
    out = [(name, settings.database_url(name)) for name in ("router", "memory", "recovery")]
    for pool in pools:
        url = settings.database_url("executor").replace(
            f"executor-{settings.pool}.db", f"executor-{pool}.db"
        )
        out.append((f"executor:{pool}", url))
    return list(dict.fromkeys(out))


def _exists(url: str) -> bool:
    return not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).exists()


def parked_rows(settings: Settings, pools: list[str] | None = None) -> list[dict[str, Any]]:
    """Every parked row of every service, oldest first."""
    import sqlalchemy as sa

    from podium_shared.db import outbox_parked

    rows: list[dict[str, Any]] = []
    for service, url in databases(settings, pools):
        if not _exists(url):
            continue
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                if not sa.inspect(conn).has_table(outbox_parked.name):
                    continue  # a database from before parking existed
                for r in conn.execute(sa.select(outbox_parked).order_by(outbox_parked.c.id)):
                    rows.append(_row(service, r))
        finally:
            engine.dispose()
    return sorted(rows, key=lambda r: str(r["parked_at"]))


def _row(service: str, r: Any) -> dict[str, Any]:
    headers = {k: v for k, v in r.headers}
    return {
        "service": service,
        "id": r.id,
        "outbox_id": r.outbox_id,
        "topic": r.topic,
        "ce_id": headers.get("ce_id"),
        "ce_type": headers.get("ce_type"),
        "key_bytes": None if r.key is None else len(r.key),
        "value_bytes": None if r.value is None else len(r.value),
        "created_at": datetime.fromtimestamp(r.created_at, UTC).isoformat(),
        "parked_at": datetime.fromtimestamp(r.parked_at, UTC).isoformat(),
        "error_type": r.error_type,
        "error": r.error,
    }


def _text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no parked outbox rows"
    lines = [f"{len(rows)} parked outbox row(s):"]
    for r in rows:
        size = f"{r['value_bytes']} B" if r["value_bytes"] is not None else "no value"
        lines.append(
            f"  {r['parked_at']}  {r['service']} #{r['id']}  {r['topic']}  {size}"
            f"  {r['error_type']}: {r['error'][:200]}"
        )
    return "\n".join(lines)


@outbox_app.command("parked")
def parked(pool: PoolOpt = None, as_json: JsonFlag = False) -> None:
    """List the outbox rows that could never be sent, with why."""
    import sqlalchemy as sa

    settings = load_settings()
    try:
        rows = parked_rows(settings, pool)
    except sa.exc.SQLAlchemyError as exc:
        fail(f"cannot read an outbox: {exc}")
    emit({"parked": rows, "count": len(rows)}, as_json, _text(rows))
