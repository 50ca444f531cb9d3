"""Integer indices, leave-one-out splits, time context, stored negatives and proxy ids (DuckDB SQL).

Pure helpers (no Dagster) that take a DuckDB connection and read ``interactions``
(``user_id, item_id, ts, rating, position``; each user's history in time order by ``position``).
They write the tables of docs/ARCHITECTURE.md:

- ``user_index(user_idx, user_id, n_interactions, is_eval)``: users 1..U (numeric ids in numeric
  order, then the rest by string), ``is_eval`` for users with >= 3 interactions.
- ``item_index(item_idx, item_id, train_count)``: items 1..I by training frequency desc, then id.
- ``sequences``: one row per interaction with its split (leave-one-out: last = test, second-to-last
  = valid, rest = train; users with < 3 interactions only train), ``ts``, (year, month, day) and the
  6 time-context features (year min-max scaled over the dataset, month/12, day/31, day-of-week/7
  with Monday = 0, day-of-year/365, ISO week/53), all NULL where ``ts`` is NULL (no fake times).
- ``eval_negatives(user_idx, neg_no, item_idx)``: ``n_negatives`` distinct items per evaluated user,
  uniform over the items the user never interacted with (validation and test items excluded too),
  drawn by vectorised rejection sampling from one seeded NumPy generator, so the same input and seed
  always give the same table; users are processed in row chunks, so the working memory stays
  bounded (the chunk size does not change a single negative).
- ``proxy_ids(item_idx, proxy_id, train_count)``: the K most frequent items counted on training rows
  keep ids 1..K, all others share K + 1; 0 is padding.

The ``check_*`` functions hold the logic of the asset checks, so tests can run them on corrupted
tables.
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa

from convrec_dagster.data.outcome import CheckOutcome
from convrec_dagster.data.tables import require_tables

TRAIN, VALID, TEST = "train", "valid", "test"
MIN_EVAL_INTERACTIONS = 3  # fewer: the user only trains
DEFAULT_N_NEGATIVES = 100
DEFAULT_SEED = 42
# candidates per row chunk of the negative sampling (int64 temporaries of this size: 16 MB each)
NEGATIVES_CHUNK_CELLS = 2_000_000
# evaluated users per block of the negative sampling: a block runs all its rounds before the next, so one
# block's negatives are held at a time (100 MB as int32 at 100 each). Up to this many users there is one
# block and the negatives are those drawn before blocks came in (every benchmark file here has < 100k).
NEGATIVES_USERS_PER_BLOCK = 250_000

# Numeric ids (benchmark files) sort numerically, others by string; both orders are deterministic.
_ID_ORDER = "TRY_CAST({col} AS BIGINT) NULLS LAST, {col}"


def _require(conn: duckdb.DuckDBPyConnection, name: str, producer: str) -> None:
    require_tables(conn, name, hint=f"materialize the `{producer}` asset first.")


def _validate_interactions(conn: duckdb.DuckDBPyConnection) -> None:
    """Clear errors for inputs the splits cannot be built from (instead of silently wrong splits)."""
    _require(conn, "interactions", "interactions")
    n_rows, n_null = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE user_id IS NULL OR item_id IS NULL OR position IS NULL) "
        "FROM interactions"
    ).fetchall()[0]
    if n_rows == 0:
        raise ValueError("Table `interactions` is empty: nothing to split. Check the ingestion metadata.")
    if n_null:
        raise ValueError(
            f"Table `interactions` has {n_null} rows with NULL user_id, item_id or position; the "
            "contract requires all three. Fix the `interactions` asset."
        )
    dup = conn.execute(
        "SELECT user_id, position, count(*) FROM interactions GROUP BY ALL HAVING count(*) > 1 LIMIT 1"
    ).fetchall()
    if dup:
        dup = dup[0]
        raise ValueError(
            f"Table `interactions`: user {dup[0]!r} has {dup[2]} rows at position {dup[1]}, so the "
            "order of the history is ambiguous. Positions must be unique per user (0-based time order)."
        )


def build_sequences(conn: duckdb.DuckDBPyConnection) -> dict:
    """Write ``user_index``, ``item_index`` and ``sequences`` from ``interactions``; return a summary."""
    _validate_interactions(conn)
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ordered AS
        SELECT user_id, item_id, ts,
               (row_number() OVER (PARTITION BY user_id ORDER BY position) - 1)::INTEGER AS pos,
               count(*) OVER (PARTITION BY user_id) AS n
        FROM interactions;

        CREATE OR REPLACE TEMP TABLE _split AS
        SELECT *, CASE WHEN n >= {MIN_EVAL_INTERACTIONS} AND pos = n - 1 THEN '{TEST}'
                       WHEN n >= {MIN_EVAL_INTERACTIONS} AND pos = n - 2 THEN '{VALID}'
                       ELSE '{TRAIN}' END AS split
        FROM _ordered;

        CREATE OR REPLACE TABLE user_index AS
        SELECT (row_number() OVER (ORDER BY {_ID_ORDER.format(col="user_id")}))::INTEGER AS user_idx,
               user_id, n::INTEGER AS n_interactions, n >= {MIN_EVAL_INTERACTIONS} AS is_eval
        FROM (SELECT user_id, count(*) AS n FROM interactions GROUP BY user_id)
        ORDER BY user_idx;

        CREATE OR REPLACE TABLE item_index AS
        SELECT (row_number() OVER (ORDER BY train_count DESC, {_ID_ORDER.format(col="item_id")}))::INTEGER
                   AS item_idx,
               item_id, train_count::INTEGER AS train_count
        FROM (SELECT item_id, count(*) FILTER (WHERE split = '{TRAIN}') AS train_count
              FROM _split GROUP BY item_id)
        ORDER BY item_idx;

        CREATE OR REPLACE TEMP TABLE _dated AS
        SELECT s.*, make_timestamp(s.ts * 1000000) AS t FROM _split s;

        CREATE OR REPLACE TABLE sequences AS
        WITH years AS (SELECT min(year(t)) AS y0, max(year(t)) AS y1 FROM _dated)
        SELECT u.user_idx, d.pos AS position, i.item_idx, d.split, d.ts,
               year(d.t)::SMALLINT AS year, month(d.t)::SMALLINT AS month, day(d.t)::SMALLINT AS day,
               CASE WHEN d.t IS NULL THEN NULL
                    ELSE coalesce((year(d.t) - y.y0) / nullif(y.y1 - y.y0, 0), 0.0) END::FLOAT AS t_year,
               (month(d.t) / 12.0)::FLOAT AS t_month,
               (day(d.t) / 31.0)::FLOAT AS t_day,
               ((isodow(d.t) - 1) / 7.0)::FLOAT AS t_dow,
               (dayofyear(d.t) / 365.0)::FLOAT AS t_doy,
               (week(d.t) / 53.0)::FLOAT AS t_week
        FROM _dated d
        JOIN user_index u USING (user_id)
        JOIN item_index i USING (item_id)
        CROSS JOIN years y
        ORDER BY u.user_idx, d.pos;

        DROP TABLE _dated; DROP TABLE _split; DROP TABLE _ordered;
        """
    )
    return sequences_summary(conn)


def sequences_summary(conn: duckdb.DuckDBPyConnection) -> dict:
    """Counts for metadata: users, items, split sizes, timestamp coverage, sequence lengths."""
    users, eval_users = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE is_eval) FROM user_index"
    ).fetchall()[0]
    items, items_untrained = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE train_count = 0) FROM item_index"
    ).fetchall()[0]
    sizes = dict(conn.execute("SELECT split, count(*) FROM sequences GROUP BY split").fetchall())
    rows, with_ts, y0, y1 = conn.execute(
        "SELECT count(*), count(ts), min(year), max(year) FROM sequences"
    ).fetchall()[0]
    lengths = sequence_lengths(conn)
    return {
        "users": int(users),
        "items": int(items),
        "items_without_training_rows": int(items_untrained),
        "evaluated_users": int(eval_users),
        "train_only_users": int(users - eval_users),
        "interactions": int(rows),
        "train_rows": int(sizes.get(TRAIN, 0)),
        "valid_rows": int(sizes.get(VALID, 0)),
        "test_rows": int(sizes.get(TEST, 0)),
        "rows_with_timestamp": int(with_ts),
        "has_timestamps": bool(rows and with_ts == rows),
        "year_range": f"{y0}-{y1}" if y0 is not None else "none",
        "seq_len_min": int(lengths.min()),
        "seq_len_median": float(np.median(lengths)),
        "seq_len_mean": round(float(lengths.mean()), 3),
        "seq_len_p90": float(np.percentile(lengths, 90)),
        "seq_len_max": int(lengths.max()),
    }


def sequence_lengths(conn: duckdb.DuckDBPyConnection) -> np.ndarray:
    """Interactions per user (int64, ordered by user_idx)."""
    return (
        conn.execute("SELECT n_interactions FROM user_index ORDER BY user_idx")
        .fetchnumpy()["n_interactions"]
        .astype(np.int64)
    )


# --------------------------------------------------------------------------------------- negatives


def sample_negatives(
    hist_users: np.ndarray,
    hist_items: np.ndarray,
    eval_users: np.ndarray,
    n_items: int,
    n_negatives: int,
    seed: int,
    **options,
) -> np.ndarray:
    """(len(eval_users), n_negatives) distinct items in 1..n_items outside each user's history: the
    blocks of ``iter_negatives`` stacked (``options``: its keyword arguments)."""
    blocks = list(iter_negatives(hist_users, hist_items, eval_users, n_items, n_negatives, seed, **options))
    return (
        np.concatenate(blocks) if blocks else np.zeros((0, n_negatives), dtype=options.get("dtype", np.int64))
    )


def iter_negatives(
    hist_users: np.ndarray,
    hist_items: np.ndarray,
    eval_users: np.ndarray,
    n_items: int,
    n_negatives: int,
    seed: int,
    max_block: int = 20_000_000,
    chunk_cells: int = NEGATIVES_CHUNK_CELLS,
    dtype: type = np.int64,
    users_per_block: int = NEGATIVES_USERS_PER_BLOCK,
) -> Iterator[np.ndarray]:
    """Distinct items in 1..n_items outside each user's history, ``n_negatives`` per user of
    ``eval_users``, yielded as (block users, n_negatives) arrays of ``users_per_block`` users in
    ``eval_users`` order.

    Rejection sampling, vectorised over users: each round draws a (pending users x m) block of
    uniform candidates, with m about enough to finish (scaled by the share of items the user has not
    seen), puts the items already accepted in front, drops candidates in the history and repeats of
    an earlier draw, and keeps each user's first ``n_negatives`` survivors in draw order; users still
    short go to the next round. The first ``n_negatives`` accepted draws of a user are a uniform
    sample without replacement from the items the user never interacted with. Deterministic for a
    given input and seed.

    Memory: a round is drawn and filtered in row chunks of about ``chunk_cells`` candidates (a few
    bytes x 8 temporaries each), and the chunks draw from the generator in row order, which gives the
    same numbers as drawing the whole round at once, so the negatives do not depend on
    ``chunk_cells``. A block of users runs all its rounds before the next block starts, from the same
    generator, so only one block's negatives (``dtype``; int32 is enough below 2**31 items) are held
    at a time; with at most ``users_per_block`` users there is one block, and the negatives are those
    drawn before blocks came in. The checks on the request and the history's keys run before the first
    block is asked for, so a request that cannot be met fails here, not inside a consumer.
    """
    eval_users = np.asarray(eval_users, dtype=np.int64)
    if users_per_block < 1:
        raise ValueError(f"users_per_block must be >= 1, got {users_per_block}")
    if len(eval_users) == 0:
        return iter(())
    base = np.int64(n_items + 1)
    hist_keys = _history_keys(hist_users, hist_items, base)
    del hist_users, hist_items  # only the keys are needed from here: a caller that drops its copy frees it
    seen = np.bincount(hist_keys // base, minlength=int(eval_users.max()) + 1)[eval_users]
    free = n_items - seen
    short = np.flatnonzero(free < n_negatives)
    if len(short):
        raise ValueError(
            f"Cannot draw {n_negatives} negatives for user_idx {int(eval_users[short[0]])}: only "
            f"{int(free[short[0]])} of {n_items} items are outside the history ({len(short)} users "
            "affected). Lower n_negatives or use a larger catalogue."
        )
    rng = np.random.default_rng(seed)
    return _blocks(
        rng,
        eval_users,
        free,
        hist_keys,
        base,
        n_items,
        n_negatives,
        users_per_block,
        max_block,
        chunk_cells,
        dtype,
    )


def _blocks(
    rng: np.random.Generator,
    eval_users: np.ndarray,
    free: np.ndarray,
    hist_keys: np.ndarray,
    base: np.int64,
    n_items: int,
    n_negatives: int,
    users_per_block: int,
    max_block: int,
    chunk_cells: int,
    dtype: type,
) -> Iterator[np.ndarray]:
    """``iter_negatives``'s blocks in order, each after all its rejection rounds; the history's keys are
    let go before the last is yielded (its consumer, DuckDB's write, is then at its largest)."""
    for start in range(0, len(eval_users), users_per_block):
        users, users_free = eval_users[start : start + users_per_block], free[start : start + users_per_block]
        accepted = np.zeros((len(users), n_negatives), dtype)  # 0 = not yet drawn
        have = np.zeros(len(users), np.int64)
        pending = np.arange(len(users))
        while len(pending):
            want = (
                np.ceil((n_negatives - have[pending]) * n_items / users_free[pending] * 1.05).astype(np.int64)
                + 4
            )
            m = int(min(want.max(), max(np.median(want), max_block // len(pending))))
            rows_per_chunk = max(1, int(chunk_cells) // (m + n_negatives))
            for lo in range(0, len(pending), rows_per_chunk):
                rows = pending[lo : lo + rows_per_chunk]
                _accept_chunk(rng, rows, m, accepted, have, users, hist_keys, base, n_items)
            pending = pending[have[pending] < n_negatives]
        if start + users_per_block >= len(eval_users):
            del hist_keys
        yield accepted


def _history_keys(hist_users: np.ndarray, hist_items: np.ndarray, base: np.int64) -> np.ndarray:
    """The sorted distinct user x base + item keys of the history, built in place: at 20M rows two
    160 MB int64 arrays at the peak, where np.unique over a fresh product holds about four."""
    keys = np.asarray(hist_users).astype(np.int64)
    keys *= base
    keys += np.asarray(hist_items)
    keys.sort()
    if len(keys) < 2:
        return keys
    first = np.empty(len(keys), dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return keys[first]


def _accept_chunk(
    rng: np.random.Generator,
    rows: np.ndarray,
    m: int,
    accepted: np.ndarray,
    have: np.ndarray,
    eval_users: np.ndarray,
    hist_keys: np.ndarray,
    base: np.int64,
    n_items: int,
) -> None:
    """One round of ``sample_negatives`` for the users at ``rows``: draw m candidates each, update
    ``accepted`` and ``have`` in place."""
    n_negatives = accepted.shape[1]
    block = rng.integers(1, n_items + 1, size=(len(rows), m), dtype=np.int64)
    if have[rows].any():  # earlier acceptances first: they keep their place in draw order
        block = np.concatenate([accepted[rows].astype(np.int64), block], axis=1)
    keys = eval_users[rows][:, None] * base + block
    at = np.minimum(np.searchsorted(hist_keys, keys), len(hist_keys) - 1)
    valid = (block > 0) & (hist_keys[at] != keys)
    del keys, at
    order = np.argsort(block, axis=1, kind="stable")  # stable: the first draw of a value leads
    ranked = np.take_along_axis(block, order, axis=1)
    repeat_sorted = np.zeros(block.shape, dtype=bool)
    repeat_sorted[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
    del ranked
    repeat = np.empty_like(repeat_sorted)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    del order, repeat_sorted
    valid &= ~repeat
    rank = np.cumsum(valid, axis=1)
    keep = valid & (rank <= n_negatives)
    i, j = np.nonzero(keep)
    fresh = np.zeros((len(rows), n_negatives), accepted.dtype)
    fresh[i, rank[i, j] - 1] = block[i, j]
    accepted[rows] = fresh
    have[rows] = keep.sum(axis=1)


def build_eval_negatives(
    conn: duckdb.DuckDBPyConnection,
    n_negatives: int = DEFAULT_N_NEGATIVES,
    seed: int = DEFAULT_SEED,
    chunk_cells: int = NEGATIVES_CHUNK_CELLS,
    users_per_block: int = NEGATIVES_USERS_PER_BLOCK,
) -> dict:
    """Write ``eval_negatives`` for every evaluated user; return a summary.

    The table is written in one statement from a stream of Arrow batches of about ``chunk_cells``
    rows, in (user_idx, neg_no) order. The batches are cut from ``iter_negatives``'s blocks as DuckDB
    asks for them, so only the history's keys and one block of negatives are held in Python: at 2.5M
    users the whole (users x 100) int32 array would be 1 GB.
    """
    _require(conn, "sequences", "sequences")
    if n_negatives < 1:
        raise ValueError(f"n_negatives must be >= 1, got {n_negatives}")
    hist = conn.execute("SELECT user_idx, item_idx FROM sequences").fetchnumpy()
    eval_users = conn.execute("SELECT user_idx FROM user_index WHERE is_eval ORDER BY user_idx").fetchnumpy()[
        "user_idx"
    ]
    n_items = int(conn.execute("SELECT count(*) FROM item_index").fetchall()[0][0])
    blocks = iter_negatives(
        hist.pop("user_idx"),
        hist.pop("item_idx"),
        eval_users,
        n_items,
        n_negatives,
        seed,
        chunk_cells=chunk_cells,
        dtype=np.int32,
        users_per_block=users_per_block,
    )
    schema = pa.schema([("user_idx", pa.int32()), ("neg_no", pa.int16()), ("item_idx", pa.int32())])
    users_per_batch = max(1, int(chunk_cells) // n_negatives)
    present = np.zeros(n_items + 1, dtype=bool)  # the distinct negative items, marked batch by batch

    def batches() -> Iterator[pa.RecordBatch]:
        start = 0
        for block in blocks:
            for lo in range(0, len(block), users_per_batch):
                negs = block[lo : lo + users_per_batch]
                users = eval_users[start + lo : start + lo + len(negs)].astype(np.int32)
                present[negs.ravel()] = True
                yield pa.record_batch(
                    [
                        pa.array(np.repeat(users, n_negatives)),
                        pa.array(np.tile(np.arange(n_negatives, dtype=np.int16), len(users))),
                        pa.array(negs.reshape(-1)),
                    ],
                    schema=schema,
                )
            start += len(block)

    conn.register("_negatives_arrow", pa.RecordBatchReader.from_batches(schema, batches()))
    try:
        # the batches come in (user_idx, neg_no) order and DuckDB keeps the insertion order
        # (preserve_insertion_order, on by default): no sort of all rows needed
        conn.execute(
            "CREATE OR REPLACE TABLE eval_negatives AS "
            "SELECT user_idx::INTEGER AS user_idx, neg_no::SMALLINT AS neg_no, item_idx::INTEGER AS item_idx "
            "FROM _negatives_arrow"
        )
    finally:
        conn.unregister("_negatives_arrow")
    return {
        "evaluated_users": int(len(eval_users)),
        "n_negatives": int(n_negatives),
        "seed": int(seed),
        "rows": int(len(eval_users) * n_negatives),
        "distinct_negative_items": int(np.count_nonzero(present[1:])),
    }


# --------------------------------------------------------------------------------------- proxy ids


def proxy_k_from_count(n_trained_items: int, top_k: int) -> int:
    """K as a count: at most the number of items with training rows."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"proxy top_k must be a count >= 0, got {top_k!r}")
    return min(top_k, n_trained_items)


def proxy_k_from_fraction(n_trained_items: int, top_fraction: float) -> int:
    """K as a share of the items with training rows (the paper's is 0.1)."""
    if not 0.0 < float(top_fraction) <= 1.0:
        raise ValueError(f"proxy top_fraction must be in (0, 1], got {top_fraction!r}")
    return int(round(float(top_fraction) * n_trained_items))


def build_proxy_ids(
    conn: duckdb.DuckDBPyConnection,
    top_k: int | None = None,
    top_fraction: float | None = None,
    min_count: int | None = None,
) -> dict:
    """Write ``proxy_ids``: items 1..K (most frequent on training rows) keep their id, others K + 1.

    K comes from the first rule given: ``top_k`` (a count), ``top_fraction`` (a share of the items
    with training rows), ``min_count`` (the items with at least that many training rows: an item
    seen that often can learn its own embedding); with none, the paper's 10 %.

    Training counts are recounted from ``sequences`` (split = 'train'), not taken from elsewhere;
    items that never occur in training never get their own id, whatever K is.
    """
    _require(conn, "sequences", "sequences")
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _train_counts AS
        SELECT i.item_idx, count(s.item_idx)::INTEGER AS train_count
        FROM item_index i LEFT JOIN sequences s ON s.item_idx = i.item_idx AND s.split = '{TRAIN}'
        GROUP BY i.item_idx
        """
    )
    n_items, n_trained, n_train_rows = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE train_count > 0), coalesce(sum(train_count), 0) "
        "FROM _train_counts"
    ).fetchall()[0]
    if top_k is not None:
        top_k = proxy_k_from_count(int(n_trained), top_k)
    elif top_fraction is not None or min_count is None:
        top_k = proxy_k_from_fraction(int(n_trained), 0.1 if top_fraction is None else top_fraction)
    else:
        if min_count < 1:
            raise ValueError(f"proxy min_count must be >= 1, got {min_count}")
        top_k = int(
            conn.execute(
                f"SELECT count(*) FROM _train_counts WHERE train_count >= {int(min_count)}"
            ).fetchall()[0][0]
        )
    conn.execute(
        f"""
        CREATE OR REPLACE TABLE proxy_ids AS
        SELECT item_idx,
               (CASE WHEN rnk <= {top_k} THEN rnk ELSE {top_k + 1} END)::INTEGER AS proxy_id,
               train_count
        FROM (SELECT item_idx, train_count,
                     row_number() OVER (ORDER BY train_count DESC, item_idx) AS rnk
              FROM _train_counts)
        ORDER BY item_idx;
        DROP TABLE _train_counts;
        """
    )
    covered = conn.execute(
        f"SELECT coalesce(sum(train_count), 0) FROM proxy_ids WHERE proxy_id <= {top_k}"
    ).fetchall()[0][0]
    return {
        "proxy_k": int(top_k),
        "n_proxy": int(top_k + 2),
        "items": int(n_items),
        "items_with_training_rows": int(n_trained),
        "share_items_own_id": round(top_k / n_items, 4) if n_items else 0.0,
        "share_train_interactions_covered": round(int(covered) / int(n_train_rows), 4)
        if n_train_rows
        else 0.0,
    }


# ------------------------------------------------------------------------------------------ checks


def check_no_leakage(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """Validation and test rows are each evaluated user's last two positions, nothing trains after them.

    Fails when: a user with >= 3 interactions lacks exactly one valid row at position n-2 and one
    test row at n-1; a user with < 3 interactions has a valid/test row; a training row sits at or
    after a user's validation position; ``user_index.is_eval`` disagrees with the rows.
    """
    bad = conn.execute(
        f"""
        WITH per_user AS (
            SELECT s.user_idx, u.is_eval, count(*) AS n,
                   count(*) FILTER (WHERE split = '{VALID}') AS n_valid,
                   count(*) FILTER (WHERE split = '{TEST}') AS n_test,
                   max(position) FILTER (WHERE split = '{VALID}') AS valid_pos,
                   max(position) FILTER (WHERE split = '{TEST}') AS test_pos,
                   max(position) FILTER (WHERE split = '{TRAIN}') AS last_train_pos,
                   max(position) AS last_pos
            FROM sequences s JOIN user_index u USING (user_idx)
            GROUP BY s.user_idx, u.is_eval
        )
        SELECT user_idx, n, n_valid, n_test, valid_pos, test_pos, last_train_pos
        FROM per_user
        WHERE CASE WHEN n >= {MIN_EVAL_INTERACTIONS}
                   THEN NOT (is_eval AND n_valid = 1 AND n_test = 1 AND test_pos = last_pos
                             AND valid_pos = last_pos - 1 AND coalesce(last_train_pos, -1) < valid_pos)
                   ELSE is_eval OR n_valid > 0 OR n_test > 0 END
        ORDER BY user_idx
        """
    ).fetchall()
    if bad:
        u, n, nv, nt, vp, tp, lt = bad[0]
        return CheckOutcome(
            False,
            f"{len(bad)} users have a leaking or malformed split; first: user_idx {u} with {n} rows, "
            f"{nv} valid (position {vp}), {nt} test (position {tp}), last training position {lt}.",
            {"bad_users": len(bad), "first_bad_user_idx": int(u)},
        )
    n_users = conn.execute("SELECT count(DISTINCT user_idx) FROM sequences").fetchall()[0][0]
    return CheckOutcome(
        True, f"All {n_users} users: valid/test are the last two positions.", {"users": n_users}
    )


def check_split_sizes(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """train + valid + test = interactions; valid = test = evaluated users; users and items match."""
    n_inter = conn.execute("SELECT count(*) FROM interactions").fetchall()[0][0]
    tr, va, te, n_seq = conn.execute(
        f"SELECT count(*) FILTER (WHERE split = '{TRAIN}'), count(*) FILTER (WHERE split = '{VALID}'), "
        f"count(*) FILTER (WHERE split = '{TEST}'), count(*) FROM sequences"
    ).fetchall()[0]
    n_eval = conn.execute("SELECT count(*) FILTER (WHERE is_eval) FROM user_index").fetchall()[0][0]
    users_in, users_idx = conn.execute(
        "SELECT (SELECT count(DISTINCT user_id) FROM interactions), (SELECT count(*) FROM user_index)"
    ).fetchall()[0]
    items_in, items_idx = conn.execute(
        "SELECT (SELECT count(DISTINCT item_id) FROM interactions), (SELECT count(*) FROM item_index)"
    ).fetchall()[0]
    meta = {"interactions": n_inter, "train": tr, "valid": va, "test": te, "evaluated_users": n_eval}
    problems = []
    if tr + va + te != n_inter or n_seq != n_inter:
        problems.append(f"train {tr} + valid {va} + test {te} (sequences {n_seq}) != interactions {n_inter}")
    if not va == te == n_eval:
        problems.append(f"valid {va} / test {te} rows != evaluated users {n_eval}")
    if users_in != users_idx or items_in != items_idx:
        problems.append(
            f"user_index {users_idx} vs {users_in} users, item_index {items_idx} vs {items_in} items"
        )
    if problems:
        return CheckOutcome(False, "; ".join(problems), meta)
    return CheckOutcome(True, f"{tr} + {va} + {te} = {n_inter} interactions.", meta)


def check_negatives_disjoint(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """No stored negative is an item of the user's history (any split), and all are real items."""
    n_hit, first = conn.execute(
        "SELECT count(*), min(n.user_idx) FROM eval_negatives n "
        "JOIN sequences s ON s.user_idx = n.user_idx AND s.item_idx = n.item_idx"
    ).fetchall()[0]
    n_items = conn.execute("SELECT count(*) FROM item_index").fetchall()[0][0]
    n_out = conn.execute(
        f"SELECT count(*) FROM eval_negatives WHERE item_idx < 1 OR item_idx > {int(n_items)}"
    ).fetchall()[0][0]
    if n_hit or n_out:
        return CheckOutcome(
            False,
            f"{n_hit} negatives are in the user's own history (first user_idx {first}); "
            f"{n_out} are outside 1..{n_items}.",
            {"in_history": n_hit, "out_of_range": n_out},
        )
    return CheckOutcome(True, "Negatives are disjoint from every user's history.", {"in_history": 0})


def check_negative_counts(
    conn: duckdb.DuckDBPyConnection, n_negatives: int = DEFAULT_N_NEGATIVES
) -> CheckOutcome:
    """Every evaluated user has exactly ``n_negatives`` distinct negatives; train-only users none."""
    bad = conn.execute(
        """
        WITH c AS (SELECT user_idx, count(*) AS n, count(DISTINCT item_idx) AS d,
                          count(DISTINCT neg_no) AS k FROM eval_negatives GROUP BY user_idx)
        SELECT u.user_idx, u.is_eval, coalesce(c.n, 0), coalesce(c.d, 0), coalesce(c.k, 0)
        FROM user_index u FULL JOIN c USING (user_idx)
        WHERE CASE WHEN coalesce(u.is_eval, false) THEN NOT (coalesce(c.n, 0) = ? AND c.d = ? AND c.k = ?)
                   ELSE coalesce(c.n, 0) > 0 END
        ORDER BY user_idx
        """,
        [n_negatives, n_negatives, n_negatives],
    ).fetchall()
    if bad:
        u, is_eval, n, d, _ = bad[0]
        return CheckOutcome(
            False,
            f"{len(bad)} users have the wrong negatives; first: user_idx {u} (evaluated: {is_eval}) has "
            f"{n} rows, {d} distinct items, expected {n_negatives if is_eval else 0}.",
            {"bad_users": len(bad), "expected_per_user": n_negatives},
        )
    n_eval = conn.execute("SELECT count(*) FROM user_index WHERE is_eval").fetchall()[0][0]
    return CheckOutcome(
        True,
        f"All {n_eval} evaluated users have {n_negatives} distinct negatives.",
        {"evaluated_users": n_eval},
    )


def check_proxy_counts(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """``proxy_ids.train_count`` equals a recount over training rows, and own ids go to the top-K.

    Also fails when an item without training rows has its own id, or ids are not 1..K + K + 1.
    """
    mismatched = conn.execute(
        f"""
        SELECT count(*) FROM proxy_ids p
        LEFT JOIN (SELECT item_idx, count(*) AS c FROM sequences WHERE split = '{TRAIN}' GROUP BY item_idx) r
          USING (item_idx)
        WHERE p.train_count <> coalesce(r.c, 0)
        """
    ).fetchall()[0][0]
    n_items_idx, n_proxy_rows = conn.execute(
        "SELECT (SELECT count(*) FROM item_index), (SELECT count(*) FROM proxy_ids)"
    ).fetchall()[0]
    rare = conn.execute("SELECT max(proxy_id) FROM proxy_ids").fetchall()[0][0]
    k = rare - 1 if rare is not None else 0
    own_min, shared_max, own_ids_ok, own_untrained = conn.execute(
        f"""
        SELECT min(train_count) FILTER (WHERE proxy_id <= {k}),
               max(train_count) FILTER (WHERE proxy_id > {k}),
               count(DISTINCT proxy_id) FILTER (WHERE proxy_id <= {k}) = {k}
                   AND count(*) FILTER (WHERE proxy_id <= {k}) = {k}
                   AND min(proxy_id) >= 1,
               count(*) FILTER (WHERE proxy_id <= {k} AND train_count = 0)
        FROM proxy_ids
        """
    ).fetchall()[0]
    problems = []
    if mismatched:
        problems.append(f"{mismatched} items' train_count differs from the recount over training rows")
    if n_items_idx != n_proxy_rows:
        problems.append(f"proxy_ids has {n_proxy_rows} rows for {n_items_idx} items")
    if own_min is not None and shared_max is not None and own_min < shared_max:
        problems.append(
            f"an item with {shared_max} training rows shares the rare id while one with {own_min} has its own"
        )
    if not own_ids_ok:
        problems.append(f"own ids are not exactly 1..{k}")
    if own_untrained:
        problems.append(f"{own_untrained} items without training rows have their own id")
    meta = {"proxy_k": k, "mismatched_counts": mismatched}
    if problems:
        return CheckOutcome(False, "; ".join(problems), meta)
    return CheckOutcome(True, f"Proxy counts match training rows; top {k} items keep their id.", meta)
