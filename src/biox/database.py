"""Each participant's own database: the engine, created once per URL with every table of
the exchange (``store.py``) and of the agreement (``agreement/ledgers.py``), a session,
and the consume loop's idempotency markers (docs/architecture.md, "Storage"). SQLite in
WAL mode by default; any SQLAlchemy URL through ``BIOX_DATABASE_URL``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from functools import cache, lru_cache
from typing import Any, NamedTuple

from sqlalchemy import Column, Table, bindparam, event, insert, inspect, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlmodel import Session, SQLModel, create_engine

from biox.agreement import ledgers  # noqa: F401  (its tables: created with the exchange's)
from biox.registry import Registry
from biox.settings import Settings
from biox.store import ProcessedMessage


@lru_cache(maxsize=16)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False},
            hide_parameters=True,  # names and document numbers stay out of errors and logs
        )

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True, hide_parameters=True)
    _create_tables(engine)
    return engine


def _create_tables(engine: Engine, attempts: int = 5) -> None:
    """Create missing tables; workers of one participant may race to do it on first start."""
    for attempt in range(attempts):
        try:
            SQLModel.metadata.create_all(engine)  # the exchange's tables and the ledgers'
            _add_new_columns(engine)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _add_new_columns(engine: Engine) -> None:
    """Columns added to an existing table since a database was created (nullable ones
    only, such as ``audit_entries.reason``): added in place, so an upgrade keeps its data,
    with the indexes on them (``audit_entries.hop``'s unique one; NULL in older rows)."""
    inspector = inspect(engine)
    for table in SQLModel.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        added = set()
        for column in table.columns:
            if column.name in present or not column.nullable:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
            added.add(column.name)
        for index in table.indexes:
            if added & {c.name for c in index.columns}:
                with engine.begin() as conn:
                    index.create(conn, checkfirst=True)


#: the loop's own statements on every batch, built once and run on the session's
#: connection: through the ORM each cost 0.15-0.3 ms of CPU for a batch of one, four
#: times as much (docs/performance.md, "The loop's bookkeeping in plain statements")
_MARKERS = ProcessedMessage.__table__  # type: ignore[attr-defined]
_IS_MARKER = (_MARKERS.c.consumer == bindparam("of_consumer")) & _MARKERS.c.message_id.in_(
    bindparam("ids", expanding=True)
)
_SELECT_MARKERS = select(_MARKERS.c.message_id, _MARKERS.c.outputs, _MARKERS.c.published).where(
    _IS_MARKER
)
_MARK_PUBLISHED = update(_MARKERS).where(_IS_MARKER).values(published=True)
_INSERT_MARKERS = insert(_MARKERS)


class Marker(NamedTuple):
    """What a consumer kept of a message it handled: the outputs to republish, and
    whether the broker confirmed them."""

    outputs: bytes
    published: bool


def mark_published(session: Session, consumer: str, message_ids: list[str]) -> None:
    """The outputs of these inputs were confirmed by the broker (see ``ConsumeLoop``), in
    the session's transaction: the consume loop writes it with its next batch."""
    session.connection().execute(_MARK_PUBLISHED, {"of_consumer": consumer, "ids": message_ids})


def add_markers(session: Session, markers: list[dict[str, Any]]) -> None:
    """A batch's idempotency markers (``consumer``, ``message_id``, ``outputs``), in the
    session's transaction, as one multi-row insert (the columns' defaults: processed now,
    not yet published)."""
    session.connection().execute(_INSERT_MARKERS, markers)


def session_for(url: str) -> Session:
    return Session(engine_for(url), expire_on_commit=False)


@contextmanager
def every_participant(settings: Settings) -> Iterator[dict[str, Session]]:
    """A session on each participant's database of the registry, where one machine holds
    them all (the demo, the tests, a trace across a development layout)."""
    with ExitStack() as stack:
        yield {
            code: stack.enter_context(session_for(settings.database_for(code)))
            for code in Registry.load(settings.registry).codes
        }


def add_rows(session: Session, rows: Sequence[SQLModel]) -> None:
    """A batch's rows, in the session's transaction: the new ones of each table as one
    plain multi-row INSERT, the rest (rows loaded and changed, a table whose version the
    ORM counts) through the session. The ORM's unit of work cost a consume loop about
    0.3 ms of CPU for a batch of one new row (docs/performance.md, "The loop's bookkeeping
    in plain statements"). As the ORM does, a None is left out (a column's default or an
    autoincrement key fills it), except where the type stores it (JSON's null)."""
    plain: dict[tuple[Table, frozenset[str]], list[dict[str, Any]]] = {}
    seen: set[int] = set()
    for row in rows:
        if id(row) in seen:
            continue
        seen.add(id(row))
        state = inspect(row)
        mapper = state.mapper
        counted = mapper.version_id_col is not None and mapper.version_id_generator
        if not state.transient or counted:
            session.add(row)
            continue
        held = row.__dict__
        values = {}
        for key, column in _columns(mapper):
            if key in held and (held[key] is not None or column.type.should_evaluate_none):
                values[column.key] = held[key]
        plain.setdefault((mapper.local_table, frozenset(values)), []).append(values)
    for (table, _), values_of in plain.items():
        session.connection().execute(insert(table), values_of)


@cache
def _columns(mapper: Any) -> tuple[tuple[str, Column[Any]], ...]:
    """A table model's attributes and the columns they write."""
    return tuple((prop.key, prop.columns[0]) for prop in mapper.column_attrs)


def processed(session: Session, consumer: str, ids: list[str]) -> dict[str, Marker]:
    if not ids:
        return {}
    rows = session.connection().execute(_SELECT_MARKERS, {"of_consumer": consumer, "ids": ids})
    return {r.message_id: Marker(r.outputs, bool(r.published)) for r in rows}


def handled(
    session: Session,
    consumer: str,
    keys: Sequence[tuple[str, bool]],
    recorded: Callable[[Session, Sequence[str]], set[str]] | None,
) -> Mapping[str, Marker | None]:
    """Which of a batch's keys (each with its delivery's redelivered flag) were handled
    before, with their markers. A queue that keeps its own record (``Queue.recorded``, the
    audit) has no outputs to republish, and its markers are read only for a redelivery,
    which an older version may have marked: a first delivery cannot have one."""
    if recorded is None:
        return processed(session, consumer, [key for key, _ in keys])
    again = [key for key, redelivered in keys if redelivered]
    done: dict[str, Marker | None] = dict(processed(session, consumer, again))
    done.update(dict.fromkeys(recorded(session, [key for key, _ in keys])))
    return done
