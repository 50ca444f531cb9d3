"""Leave-one-out splits, time context, stored negatives and proxy ids on hand-made DuckDB tables."""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import hashlib

import dagster as dg
import duckdb
import numpy as np
import pytest

from assets.splits import SPLITS_CHECKS, eval_negatives, proxy_ids, sequences
from convrec_dagster.data import settings, splits


def _ts(y: int, m: int, d: int) -> int:
    return calendar.timegm(dt.date(y, m, d).timetuple())


# (user_id, item_id, ts, position); rows deliberately not in position order.
HAND_ROWS = [
    ("u1", "c", _ts(2015, 12, 31), 2),
    ("u1", "z", _ts(2014, 1, 1), 0),
    ("u1", "d", _ts(2016, 2, 29), 3),
    ("u1", "b", _ts(2014, 3, 15), 1),
    ("u2", "b", _ts(2013, 6, 1), 0),
    ("u2", "z", _ts(2013, 6, 2), 1),
    ("u3", "z", _ts(2017, 1, 1), 0),
    ("u3", "e", _ts(2017, 5, 5), 1),
    ("u3", "b", _ts(2017, 8, 8), 2),
    ("u4", "b", _ts(2016, 4, 4), 3),
    ("u4", "a", _ts(2016, 1, 1), 0),
    ("u4", "c", _ts(2016, 2, 2), 1),
    ("u4", "e", _ts(2016, 5, 5), 4),
    ("u4", "z", _ts(2016, 3, 3), 2),
]

# Training counts: z 4, b 2 (plus one valid and one test row), a 1, c 1 (plus one valid), d 0, e 0.
EXPECTED_ITEM_INDEX = [(1, "z", 4), (2, "b", 2), (3, "a", 1), (4, "c", 1), (5, "d", 0), (6, "e", 0)]
EXPECTED_USER_INDEX = [(1, "u1", 4, True), (2, "u2", 2, False), (3, "u3", 3, True), (4, "u4", 5, True)]
EXPECTED_SEQUENCES = [  # (user_idx, position, item_idx, split)
    (1, 0, 1, "train"), (1, 1, 2, "train"), (1, 2, 4, "valid"), (1, 3, 5, "test"),
    (2, 0, 2, "train"), (2, 1, 1, "train"),
    (3, 0, 1, "train"), (3, 1, 6, "valid"), (3, 2, 2, "test"),
    (4, 0, 3, "train"), (4, 1, 4, "train"), (4, 2, 1, "train"), (4, 3, 2, "valid"), (4, 4, 6, "test"),
]  # fmt: skip


def write_interactions(conn, rows, with_ts: bool = True) -> None:
    conn.execute(
        "CREATE OR REPLACE TABLE interactions (user_id VARCHAR, item_id VARCHAR, ts BIGINT, rating DOUBLE, position INTEGER)"
    )
    conn.executemany(
        "INSERT INTO interactions VALUES (?, ?, ?, 5.0, ?)",
        [(u, i, t if with_ts else None, p) for u, i, t, p in rows],
    )


def random_rows(n_users: int = 30, n_items: int = 200, seed: int = 0) -> list[tuple]:
    """Small random interactions: 1-12 distinct items per user, Zipf-ish popularity, increasing ts."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(1, 13))
        items = rng.choice(n_items, size=n, replace=False, p=p / p.sum())
        times = np.sort(rng.integers(1_300_000_000, 1_400_000_000, size=n))
        rows += [(f"user{u}", f"item{i}", int(t), k) for k, (i, t) in enumerate(zip(items, times))]
    return rows


@pytest.fixture
def conn(convrec_home):
    c = duckdb.connect(str(settings.duckdb_path(convrec_home)))
    yield c
    c.close()


def test_splits_on_hand_made_table(conn):
    write_interactions(conn, HAND_ROWS)
    summary = splits.build_sequences(conn)
    assert conn.execute("SELECT * FROM user_index ORDER BY user_idx").fetchall() == EXPECTED_USER_INDEX
    assert conn.execute("SELECT * FROM item_index ORDER BY item_idx").fetchall() == EXPECTED_ITEM_INDEX
    got = conn.execute("SELECT user_idx, position, item_idx, split FROM sequences ORDER BY ALL").fetchall()
    assert got == EXPECTED_SEQUENCES
    assert summary["evaluated_users"] == 3 and summary["train_only_users"] == 1
    assert (summary["train_rows"], summary["valid_rows"], summary["test_rows"]) == (8, 3, 3)
    assert summary["has_timestamps"] is True
    for check in (splits.check_no_leakage, splits.check_split_sizes):
        assert check(conn).passed


def test_time_features_on_known_dates(conn):
    write_interactions(conn, HAND_ROWS)
    splits.build_sequences(conn)
    cols = "year, month, day, t_year, t_month, t_day, t_dow, t_doy, t_week"
    row = conn.execute(f"SELECT {cols} FROM sequences WHERE user_idx = 1 AND position = 2").fetchall()[0]
    # 2015-12-31: Thursday, day 365, ISO week 53; years span 2013..2017
    assert row[:3] == (2015, 12, 31)
    np.testing.assert_allclose(row[3:], [0.5, 1.0, 1.0, 3 / 7, 1.0, 1.0], rtol=1e-6)
    row = conn.execute(f"SELECT {cols} FROM sequences WHERE user_idx = 1 AND position = 0").fetchall()[0]
    # 2014-01-01: Wednesday, day 1, ISO week 1
    assert row[:3] == (2014, 1, 1)
    np.testing.assert_allclose(row[3:], [0.25, 1 / 12, 1 / 31, 2 / 7, 1 / 365, 1 / 53], rtol=1e-6)
    # every row against Python's calendar
    for ts, y, m, d, dow, doy, week in conn.execute(
        "SELECT ts, year, month, day, t_dow, t_doy, t_week FROM sequences"
    ).fetchall():
        date = dt.datetime.fromtimestamp(ts, dt.UTC).date()
        assert (y, m, d) == (date.year, date.month, date.day)
        assert dow == pytest.approx(date.weekday() / 7)
        assert doy == pytest.approx(date.timetuple().tm_yday / 365)
        assert week == pytest.approx(date.isocalendar().week / 53)


def test_no_timestamps_gives_null_context(conn):
    write_interactions(conn, HAND_ROWS, with_ts=False)
    summary = splits.build_sequences(conn)
    assert summary["has_timestamps"] is False and summary["rows_with_timestamp"] == 0
    n_nonnull = conn.execute(
        "SELECT count(ts) + count(year) + count(month) + count(day) + count(t_year) + count(t_month) "
        "+ count(t_day) + count(t_dow) + count(t_doy) + count(t_week) FROM sequences"
    ).fetchall()[0][0]
    assert n_nonnull == 0
    # the split itself depends only on positions
    got = conn.execute("SELECT user_idx, position, item_idx, split FROM sequences ORDER BY ALL").fetchall()
    assert got == EXPECTED_SEQUENCES


def test_leakage_check_fails_on_leaked_splits(conn):
    write_interactions(conn, HAND_ROWS)
    splits.build_sequences(conn)
    assert splits.check_no_leakage(conn).passed
    # u4's test item becomes a training row, an earlier row the test target: the model would train on it
    conn.execute("UPDATE sequences SET split = 'train' WHERE user_idx = 4 AND position = 4")
    conn.execute("UPDATE sequences SET split = 'test' WHERE user_idx = 4 AND position = 1")
    outcome = splits.check_no_leakage(conn)
    assert not outcome.passed and outcome.metadata["first_bad_user_idx"] == 4
    # swapped valid/test (validation after test) is caught too
    splits.build_sequences(conn)
    conn.execute(
        "UPDATE sequences SET split = CASE split WHEN 'valid' THEN 'test' ELSE 'valid' END "
        "WHERE user_idx = 1 AND split IN ('valid', 'test')"
    )
    assert not splits.check_no_leakage(conn).passed
    # a train-only user (< 3 interactions) with a test row
    splits.build_sequences(conn)
    conn.execute("UPDATE sequences SET split = 'test' WHERE user_idx = 2 AND position = 1")
    assert not splits.check_no_leakage(conn).passed
    # a lost row breaks the sizes check
    splits.build_sequences(conn)
    conn.execute("DELETE FROM sequences WHERE user_idx = 4 AND position = 0")
    assert not splits.check_split_sizes(conn).passed


def test_duplicate_positions_are_a_clear_error(conn):
    write_interactions(conn, HAND_ROWS + [("u3", "a", _ts(2017, 9, 9), 2)])
    with pytest.raises(ValueError, match=r"user 'u3' has 2 rows at position 2"):
        splits.build_sequences(conn)


def test_negatives_reproducible_disjoint_and_complete(conn):
    write_interactions(conn, random_rows())
    splits.build_sequences(conn)
    read = "SELECT user_idx, neg_no, item_idx FROM eval_negatives ORDER BY user_idx, neg_no"
    summary = splits.build_eval_negatives(conn, n_negatives=20, seed=7)
    first = conn.execute(read).fetchall()
    splits.build_eval_negatives(conn, n_negatives=20, seed=7)
    assert conn.execute(read).fetchall() == first
    splits.build_eval_negatives(conn, n_negatives=20, seed=8)
    assert conn.execute(read).fetchall() != first
    splits.build_eval_negatives(conn, n_negatives=20, seed=7)

    n_eval = conn.execute("SELECT count(*) FROM user_index WHERE is_eval").fetchall()[0][0]
    assert summary["evaluated_users"] == n_eval and len(first) == 20 * n_eval
    overlap = conn.execute(
        "SELECT count(*) FROM eval_negatives n JOIN sequences s USING (user_idx, item_idx)"
    ).fetchall()[0][0]
    assert overlap == 0
    assert splits.check_negatives_disjoint(conn).passed
    assert splits.check_negative_counts(conn, 20).passed
    assert not splits.check_negative_counts(conn, 100).passed

    # corrupt: a user's own test item as a negative, and a duplicate negative
    user, test_item = conn.execute(
        "SELECT user_idx, item_idx FROM sequences WHERE split = 'test' ORDER BY user_idx LIMIT 1"
    ).fetchall()[0]
    conn.execute(f"UPDATE eval_negatives SET item_idx = {test_item} WHERE user_idx = {user} AND neg_no = 0")
    assert not splits.check_negatives_disjoint(conn).passed
    conn.execute(
        f"UPDATE eval_negatives SET item_idx = (SELECT item_idx FROM eval_negatives WHERE user_idx = {user} "
        f"AND neg_no = 2) WHERE user_idx = {user} AND neg_no = 1"
    )
    assert not splits.check_negative_counts(conn, 20).passed


def test_negatives_are_uniform_over_unseen_items():
    n_items, n_users, n_neg = 50, 2000, 5
    history = np.arange(1, 11)  # every user saw items 1..10
    users = np.repeat(np.arange(1, n_users + 1), len(history))
    negs = splits.sample_negatives(
        users, np.tile(history, n_users), np.arange(1, n_users + 1), n_items, n_neg, 3
    )
    assert negs.shape == (n_users, n_neg)
    assert negs.min() >= 11 and negs.max() <= n_items
    assert all(len(set(row)) == n_neg for row in negs.tolist())
    counts = np.bincount(negs.ravel(), minlength=n_items + 1)[11:]
    expected = n_users * n_neg / 40  # 250 per unseen item
    assert counts.min() > 0.75 * expected and counts.max() < 1.25 * expected


def _heavy_histories(n_users: int = 400, n_items: int = 300, seed: int = 123):
    """Users who saw 3..279 of 300 items: the heavy ones need several rejection rounds."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(3, 280, n_users)
    users = np.concatenate([np.full(n, u) for u, n in enumerate(lens, start=1)])
    items = np.concatenate([rng.choice(n_items, n, replace=False) + 1 for n in lens])
    return users, items, np.arange(1, n_users + 1), n_items


# sha256 of the (400, 20) int64 negatives drawn by the unchunked sampler before row chunks came in
# (commit 13cf697), per max_block: the chunked sampler must give the same negatives for the seed.
NEGATIVES_BEFORE_CHUNKS = {
    20_000_000: "5e97888a0685f8dc06c00f58b8744d7d6ba046f0a74e9e1d101cc90c52a19100",
    3_000: "ea463f813728ae5dc8dabb7aadcf6d20b5422aeb252d01608533bf7fbef5996b",  # many small rounds
}
# the same for the eval_negatives rows (user_idx, neg_no, item_idx) of random_rows(300, 200, seed=1), seed 7
EVAL_NEGATIVES_TABLE_BEFORE_CHUNKS = "360fe5ad7913a080b1030200234962de05c69bff8ffff370b19d2e47338031cf"


@pytest.mark.parametrize("max_block", sorted(NEGATIVES_BEFORE_CHUNKS))
def test_negatives_chunked_equal_unchunked(max_block):
    users, items, eval_users, n_items = _heavy_histories()
    whole, chunked, narrow = (
        splits.sample_negatives(
            users, items, eval_users, n_items, 20, 5, max_block=max_block, chunk_cells=cells, dtype=dtype
        )
        for cells, dtype in ((10**12, np.int64), (2_000, np.int64), (2_000, np.int32))
    )
    # 400 users x (m + 20 >= 40) candidates per round: 2,000 cells per chunk makes >= 8 chunks a round
    assert whole.shape == (400, 20) and narrow.dtype == np.int32
    assert np.array_equal(whole, chunked) and np.array_equal(whole, narrow)
    digest = hashlib.sha256(chunked.astype("<i8").tobytes()).hexdigest()
    assert digest == NEGATIVES_BEFORE_CHUNKS[max_block]
    seen = set(zip(users.tolist(), items.tolist()))
    assert not any((u, i) in seen for u, row in zip(eval_users.tolist(), chunked.tolist()) for i in row)
    assert all(len(set(row)) == 20 for row in chunked.tolist())


def test_eval_negatives_table_same_for_any_chunk_size(conn):
    write_interactions(conn, random_rows(n_users=300, n_items=200, seed=1))
    splits.build_sequences(conn)
    read = "SELECT user_idx, neg_no, item_idx FROM eval_negatives ORDER BY user_idx, neg_no"
    tables = []
    distinct_sql = "SELECT count(DISTINCT item_idx) FROM eval_negatives"
    for cells in (splits.NEGATIVES_CHUNK_CELLS, 100, 1):  # 100: 5 users a batch; 1: one user a batch
        summary = splits.build_eval_negatives(conn, n_negatives=20, seed=7, chunk_cells=cells)
        rows = conn.execute(read).fetchall()
        # counted in row chunks too (a whole-array bincount would copy the negatives to int64)
        assert summary["distinct_negative_items"] == conn.execute(distinct_sql).fetchall()[0][0] > 100
        # written in (user_idx, neg_no) order without a sort: the stored order is that order
        assert (
            conn.execute("SELECT user_idx, neg_no, item_idx FROM eval_negatives ORDER BY rowid").fetchall()
            == rows
        )
        tables.append(rows)
    assert tables[0] == tables[1] == tables[2] and len(tables[0]) > 100 * 20
    # the same table as the unchunked writer before row chunks (commit 13cf697) gave for this seed
    digest = hashlib.sha256(np.asarray(tables[0], dtype="<i8").tobytes()).hexdigest()
    assert digest == EVAL_NEGATIVES_TABLE_BEFORE_CHUNKS
    assert splits.check_negatives_disjoint(conn).passed and splits.check_negative_counts(conn, 20).passed


def test_negatives_in_user_blocks(conn):
    users, items, eval_users, n_items = _heavy_histories()
    draw = functools.partial(splits.sample_negatives, users, items, eval_users, n_items, 20, 5)
    one, also_one, blocks = draw(), draw(users_per_block=400), draw(users_per_block=7)
    assert np.array_equal(one, also_one)  # a block of all users is the sampler before blocks
    assert not np.array_equal(one, blocks)
    # the first block is those 7 users drawn alone; the next ones go on with the same generator
    # rather than starting it again
    alone = functools.partial(splits.sample_negatives, users, items, n_items=n_items, n_negatives=20, seed=5)
    assert np.array_equal(blocks[:7], alone(eval_users=eval_users[:7]))
    assert not np.array_equal(blocks[7:14], alone(eval_users=eval_users[7:14]))
    assert np.array_equal(blocks, draw(users_per_block=7))  # deterministic
    seen = set(zip(users.tolist(), items.tolist()))
    assert not any((u, i) in seen for u, row in zip(eval_users.tolist(), blocks.tolist()) for i in row)
    assert all(len(set(row)) == 20 for row in blocks.tolist())
    with pytest.raises(ValueError, match="users_per_block must be >= 1"):
        draw(users_per_block=0)

    write_interactions(conn, random_rows(n_users=300, n_items=200, seed=1))
    splits.build_sequences(conn)
    summary = splits.build_eval_negatives(conn, n_negatives=20, seed=7, chunk_cells=100, users_per_block=13)
    rows = conn.execute("SELECT user_idx, neg_no, item_idx FROM eval_negatives ORDER BY rowid").fetchall()
    assert rows == sorted(rows) and len(rows) == summary["rows"]  # blocks written in (user_idx, neg_no) order
    hist = conn.execute("SELECT user_idx, item_idx FROM sequences").fetchnumpy()
    eval_ids = conn.execute("SELECT user_idx FROM user_index WHERE is_eval ORDER BY user_idx").fetchnumpy()
    n_items = conn.execute("SELECT count(*) FROM item_index").fetchall()[0][0]
    expected = splits.sample_negatives(
        hist["user_idx"], hist["item_idx"], eval_ids["user_idx"], n_items, 20, 7, users_per_block=13
    )
    assert [item for _, _, item in rows] == expected.ravel().tolist()
    distinct = conn.execute("SELECT count(DISTINCT item_idx) FROM eval_negatives").fetchall()[0][0]
    assert summary["distinct_negative_items"] == distinct
    assert splits.check_negatives_disjoint(conn).passed and splits.check_negative_counts(conn, 20).passed


def test_negatives_impossible_request_is_a_clear_error(conn):
    write_interactions(conn, HAND_ROWS)
    splits.build_sequences(conn)
    # u4 has seen 5 of the 6 items
    with pytest.raises(ValueError, match=r"Cannot draw 2 negatives for user_idx 4"):
        splits.build_eval_negatives(conn, n_negatives=2)
    # exactly as many unseen items as asked: u4 gets the one item it never saw (d = item_idx 5)
    splits.build_eval_negatives(conn, n_negatives=1)
    assert conn.execute("SELECT item_idx FROM eval_negatives WHERE user_idx = 4").fetchall() == [(5,)]
    assert splits.check_negatives_disjoint(conn).passed and splits.check_negative_counts(conn, 1).passed


def test_proxy_ids_count_training_rows_only(conn):
    write_interactions(conn, HAND_ROWS)
    splits.build_sequences(conn)
    summary = splits.build_proxy_ids(conn, 2)
    # b has 4 rows in total but only 2 training rows; e only valid/test rows
    assert conn.execute("SELECT * FROM proxy_ids ORDER BY item_idx").fetchall() == [
        (1, 1, 4), (2, 2, 2), (3, 3, 1), (4, 3, 1), (5, 3, 0), (6, 3, 0)
    ]  # fmt: skip
    assert summary["n_proxy"] == 4
    assert summary["share_items_own_id"] == pytest.approx(2 / 6, abs=1e-4)
    assert summary["share_train_interactions_covered"] == pytest.approx(6 / 8)
    assert splits.check_proxy_counts(conn).passed

    assert splits.build_proxy_ids(conn, min_count=2)["proxy_k"] == 2  # items with >= 2 training rows
    assert splits.build_proxy_ids(conn, min_count=1)["proxy_k"] == 4  # every item seen in training
    assert splits.check_proxy_counts(conn).passed
    with pytest.raises(ValueError, match="min_count"):
        splits.build_proxy_ids(conn, min_count=0)
    assert (
        splits.build_proxy_ids(conn, top_fraction=0.5)["proxy_k"] == 2
    )  # half of the 4 items with training rows
    assert splits.build_proxy_ids(conn, 100)["proxy_k"] == 4  # never items without training rows
    with pytest.raises(ValueError, match="top_k"):
        splits.build_proxy_ids(conn, top_k=0.5)  # a fraction belongs in top_fraction, not in the count
    with pytest.raises(ValueError, match="top_fraction"):
        splits.build_proxy_ids(conn, top_fraction=2.0)
    assert conn.execute("SELECT proxy_id FROM proxy_ids ORDER BY item_idx").fetchall() == [
        (1,),
        (2,),
        (3,),
        (4,),
        (5,),
        (5,),
    ]

    # counting every row (valid/test included) is caught
    splits.build_proxy_ids(conn, 2)
    conn.execute(
        "UPDATE proxy_ids p SET train_count = (SELECT count(*) FROM sequences s WHERE s.item_idx = p.item_idx)"
    )
    outcome = splits.check_proxy_counts(conn)
    assert not outcome.passed and outcome.metadata["mismatched_counts"] == 4  # b, c, d, e


def test_assets_materialize_with_checks(make_resources, convrec_home):
    with duckdb.connect(str(settings.duckdb_path(convrec_home))) as c:
        write_interactions(c, random_rows(seed=1))
    result = dg.materialize(
        [sequences, eval_negatives, proxy_ids],
        resources=make_resources(),
        run_config={
            "ops": {"eval_negatives": {"config": {"n_negatives": 20}}, "proxy_ids": {"config": {"top_k": 5}}}
        },
    )
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert {c.asset_check_key.name for c in checks} == {fn.__name__ for fn in SPLITS_CHECKS}
    assert all(c.passed for c in checks)  # the count check got n_negatives = 20 (default 100)
    specs = [spec for asset in (sequences, eval_negatives, proxy_ids) for spec in asset.check_specs]
    assert len(specs) == len(SPLITS_CHECKS) and all(spec.blocking for spec in specs)
    meta = result.asset_materializations_for_node("sequences")[0].metadata
    assert meta["users"].value == 30
    assert meta["time_context_available"].value is True
    assert "data:image/png;base64," in meta["sequence_length_histogram"].value
    assert (
        meta["train_rows"].value + meta["valid_rows"].value + meta["test_rows"].value
        == meta["interactions"].value
    )
    proxy_meta = result.asset_materializations_for_node("proxy_ids")[0].metadata
    assert proxy_meta["proxy_k"].value == 5 and 0 < proxy_meta["share_train_interactions_covered"].value <= 1
