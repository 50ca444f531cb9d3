"""The ingest stage's data checks (no Dagster): pure functions over DuckDB returning a CheckOutcome,
run inside the ingest assets' steps (``convrec_dagster/checks.py``)."""

from __future__ import annotations

import duckdb

from convrec_dagster.data.outcome import CheckOutcome


def reviews_have_ids(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """Every review row has a user id, an item id, a line number and a unique `seq_no`."""
    bad_ids, rows, seqs = conn.execute(
        "SELECT count(*) FILTER (WHERE user_id IS NULL OR user_id = '' OR item_id IS NULL "
        "OR item_id = '' OR line_no IS NULL), count(*), count(DISTINCT seq_no) FROM reviews"
    ).fetchall()[0]
    return CheckOutcome(
        passed=bad_ids == 0 and seqs == rows,
        metadata={"rows_without_ids": bad_ids, "duplicate_seq_no": rows - seqs},
    )


def items_unique(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """`items` has one row per item id."""
    rows, distinct = conn.execute("SELECT count(*), count(DISTINCT item_id) FROM items").fetchall()[0]
    return CheckOutcome(passed=rows == distinct, metadata={"duplicate_item_rows": rows - distinct})


def interactions_ordered_histories(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """No (user, item) twice; each user's positions are 0..n-1; time never goes backwards."""
    dup, bad_pos, backwards = conn.execute("""
        WITH o AS (SELECT *, lag(ts) OVER (PARTITION BY user_id ORDER BY position) AS prev_ts
                   FROM interactions),
             p AS (SELECT user_id, count(*) AS n, min(position) AS lo, max(position) AS hi,
                          count(DISTINCT position) AS d FROM interactions GROUP BY 1)
        SELECT (SELECT count(*) - count(DISTINCT (user_id, item_id)) FROM interactions),
               (SELECT count(*) FROM p WHERE lo <> 0 OR hi <> n - 1 OR d <> n),
               (SELECT count(*) FROM o WHERE ts < prev_ts)""").fetchall()[0]
    return CheckOutcome(
        passed=dup == 0 and bad_pos == 0 and backwards == 0,
        metadata={"duplicate_pairs": dup, "users_with_bad_positions": bad_pos, "time_reversals": backwards},
    )
