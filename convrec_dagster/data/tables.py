"""DuckDB table helpers every stage writes and reads through (no Dagster).

- :func:`transaction`: one ``BEGIN`` / ``COMMIT`` (``ROLLBACK`` on an exception) per write;
- :func:`write_table`: a DataFrame (or Arrow table) as a new table, or appended to one;
- :func:`replace_quarantine`: a stage's unusable records, replacing that stage's earlier rows;
- :func:`require_tables`: a missing input table is a :class:`MissingTableError` that says what to do.

A :class:`DataError` is a problem the user can fix; the assets turn it into ``dg.Failure``
(``convrec_dagster.checks.failures``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

# Every record a stage could not use, verbatim, with its reason; each stage replaces its own rows.
QUARANTINE_DDL = """
CREATE TABLE IF NOT EXISTS quarantine (
    stage VARCHAR, source_file VARCHAR, line_no BIGINT, reason VARCHAR, raw VARCHAR,
    quarantined_at TIMESTAMP
)"""
QUARANTINE_COLUMNS = ("source_file", "line_no", "reason", "raw")


class DataError(Exception):
    """A problem with the data that the user can fix; the message says what to do. ``retry``: whether a step's
    retry policy may run the step again (by default not: the same data fails the same way)."""

    def __init__(self, message: str, metadata: dict | None = None, retry: bool = False):
        super().__init__(message)
        self.metadata = metadata or {}
        self.retry = retry


class MissingTableError(DataError, ValueError):
    """An input table is not there: an upstream asset has not been materialized."""


def table_exists(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether ``name`` is a table (or view) of the main schema."""
    # fetchall, not fetchone: DuckDB 2 refuses new work on a connection with an unfinished result
    rows = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = 'main'",
        [name],
    ).fetchall()
    return bool(rows and rows[0][0])


def quote_literal(value: str) -> str:
    """A SQL string literal (for SQL shown to users: the code itself binds parameters)."""
    return "'" + str(value).replace("'", "''") + "'"


def require_tables(conn: duckdb.DuckDBPyConnection, *names: str, hint: str) -> None:
    """Raise :class:`MissingTableError` naming every absent table of ``names``, and ``hint``."""
    missing = [n for n in names if not table_exists(conn, n)]
    if missing:
        tables = ", ".join(f"`{n}`" for n in missing)
        verb = "is" if len(missing) == 1 else "are"
        raise MissingTableError(
            f"DuckDB table{'s' if len(missing) > 1 else ''} {tables} {verb} missing: {hint}",
            metadata={"missing_tables": missing},
        )


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """``BEGIN TRANSACTION`` ... ``COMMIT``; ``ROLLBACK`` when the block raises."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def write_table(
    conn: duckdb.DuckDBPyConnection,
    name: str,
    frame,
    *,
    ddl: str | None = None,
    columns: tuple[str, ...] | list[str] | None = None,
    order_by: str = "",
) -> int:
    """Write ``frame`` (pandas or Arrow) to table ``name``, inside the caller's transaction if any.

    Without ``ddl`` the table is replaced by the frame (``CREATE OR REPLACE ... AS SELECT``); with
    ``ddl`` (a ``CREATE TABLE [IF NOT EXISTS]``) the table is created as declared and the frame's
    ``columns`` (default: all) appended. Returns the number of rows written.
    """
    view = f"_write_{name}"
    conn.register(view, frame)
    try:
        select = f"SELECT {', '.join(columns) if columns else '*'} FROM {view}" + (
            f" ORDER BY {order_by}" if order_by else ""
        )
        if ddl is None:
            conn.execute(f"CREATE OR REPLACE TABLE {name} AS {select}")
        else:
            conn.execute(ddl)
            target = f"{name} ({', '.join(columns)})" if columns else name
            conn.execute(f"INSERT INTO {target} {select}")
    finally:
        conn.unregister(view)
    return len(frame)


def replace_quarantine(
    conn: duckdb.DuckDBPyConnection,
    stage: str,
    source: str | None = None,
    frame=None,
    order_by: str = "source_file, line_no",
) -> None:
    """Replace ``stage``'s rows of `quarantine` with the records of table ``source`` or of ``frame``.

    Either holds the columns ``source_file, line_no, reason, raw``; ``quarantined_at`` is now. Run it
    inside a :func:`transaction` when the stage writes other tables with it.
    """
    conn.execute(QUARANTINE_DDL)
    conn.execute("DELETE FROM quarantine WHERE stage = ?", [stage])
    if frame is not None:
        if not len(frame):
            return
        conn.register("_quarantine_rows", frame)
        source = "_quarantine_rows"
    try:
        if source is not None:
            order = f" ORDER BY {order_by}" if order_by else ""
            conn.execute(
                f"INSERT INTO quarantine SELECT ?, {', '.join(QUARANTINE_COLUMNS)}, now()::TIMESTAMP "
                f"FROM {source}{order}",
                [stage],
            )
    finally:
        if frame is not None:
            conn.unregister("_quarantine_rows")


def item_coverage(conn: duckdb.DuckDBPyConnection, table: str) -> tuple[int, int]:
    """(items of `interactions` without a row in ``table``, distinct items of ``table`` not in it)."""
    return conn.execute(
        f"SELECT (SELECT count(*) FROM (SELECT DISTINCT item_id FROM interactions) i "
        f"        ANTI JOIN {table} t USING (item_id)), "
        f"       (SELECT count(DISTINCT item_id) FROM {table} t "
        f"        ANTI JOIN (SELECT DISTINCT item_id FROM interactions) i USING (item_id))"
    ).fetchall()[0]
