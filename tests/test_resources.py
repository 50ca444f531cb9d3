"""The DuckDB resource: bounded memory from config, fast failure with advice on a file it cannot open."""

from __future__ import annotations

import subprocess
import sys
import time

import dagster as dg
import pytest

from convrec_dagster.resources import ConvRecDuckDB, connect_duckdb


def test_memory_threads_and_spill_folder_come_from_config(tmp_path):
    resource = ConvRecDuckDB(
        database=str(tmp_path / "db.duckdb"),
        memory_limit="256MB",
        threads=1,
        temp_directory=str(tmp_path / "spill"),
    )
    with resource.get_connection() as conn:
        limit = conn.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        threads = conn.execute("SELECT current_setting('threads')").fetchone()[0]
        spill = conn.execute("SELECT current_setting('temp_directory')").fetchone()[0]
    assert 200 < float(limit.split()[0]) <= 256 and limit.split()[1] in ("MB", "MiB"), limit
    assert int(threads) == 1 and spill.endswith("spill")


def test_a_database_path_that_cannot_be_opened_fails_at_once_with_advice(tmp_path):
    folder = tmp_path / "not_a_file.duckdb"
    folder.mkdir()  # a folder where the file should be: not a lock, so no waiting
    started = time.perf_counter()
    with pytest.raises(dg.Failure) as exc:
        with ConvRecDuckDB(database=str(folder)).get_connection():
            pass
    assert time.perf_counter() - started < 5
    assert str(folder) in str(exc.value) and "What to do" in str(exc.value)


def test_a_locked_file_is_waited_for_then_explained(tmp_path):
    """A real lock: another process holds the file open for writing."""
    db = tmp_path / "held.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db)!r}); "
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        with pytest.raises(dg.Failure, match="another process holds the file"):
            connect_duckdb(str(db), {}, lock_wait_s=1.0)
        assert 1.0 <= time.perf_counter() - started < 10  # it waited for the lock, then explained
    finally:
        holder.kill()
        holder.wait()
