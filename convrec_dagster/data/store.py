"""Small DuckDB helpers shared by the stages (no Dagster)."""

from __future__ import annotations

import duckdb

# Every record a stage could not use, verbatim, with its reason; each stage replaces its own rows.
QUARANTINE_DDL = """
CREATE TABLE IF NOT EXISTS quarantine (
    stage VARCHAR, source_file VARCHAR, line_no BIGINT, reason VARCHAR, raw VARCHAR,
    quarantined_at TIMESTAMP
)"""


def table_exists(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether ``name`` is a table (or view) of the main schema."""
    # fetchall, not fetchone: DuckDB 2 refuses new work on a connection with an unfinished result
    rows = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = 'main'",
        [name],
    ).fetchall()
    return bool(rows and rows[0][0])
