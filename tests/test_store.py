"""The store safeguards with a real DuckDB file and real Dagster runs: the full-scan check, the last
good copy and its restore, whose ingest the tables hold, a read-only home, DAGSTER_HOME set-up."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.ingest import interactions, reviews
from convrec_dagster import store
from convrec_dagster.data import settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_dump(folder: Path, tag: str, users: int = 12, items: int = 8) -> Path:
    """Reviews where every user reviewed every item (all pass the 5-interaction filter)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"reviews_{tag}.json", "w") as fh:
        for u in range(users):
            for i in range(items):
                fh.write(
                    json.dumps(
                        {
                            "reviewerID": f"U{tag}{u}",
                            "asin": f"I{tag}{i}",
                            "overall": 4.0,
                            "unixReviewTime": 1_300_000_000 + u * 1000 + i,
                        }
                    )
                    + "\n"
                )
    return folder


def make_store(path: Path) -> None:
    with duckdb.connect(str(path)) as conn:
        conn.execute("CREATE TABLE a AS SELECT range AS x, 'text ' || range AS y FROM range(300000)")
        conn.execute("CREATE TABLE b AS SELECT range AS z, [range, range + 1] AS l FROM range(200000)")


def env_for_cli() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }


def test_a_store_truncated_to_half_fails_the_scan_naming_a_table(tmp_path):
    db = tmp_path / "convrec.duckdb"
    make_store(db)
    assert store.check_file(db) == {"a": 300000, "b": 200000}
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    with pytest.raises(store.StoreDamagedError) as exc:
        store.check_file(db, tmp_path)
    msg = str(exc.value)
    assert str(db) in msg and "What to do" in msg and "store rebuild --home" in msg
    assert exc.value.table in ("a", "b") or exc.value.table is None  # None: the file did not even open


def test_snapshot_then_restore_brings_the_last_good_store_back(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    db = settings.duckdb_path(home)
    make_store(db)
    info = store.snapshot(db, home, "run-good", "full_pipeline")
    assert info["tables"] == {"a": 300000, "b": 200000} and store.last_good_info(home)["run_id"] == "run-good"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    result = subprocess.run(
        [sys.executable, "-m", "convrec_dagster.store", "check", "--home", str(home)],
        capture_output=True,
        text=True,
        env=env_for_cli(),
    )
    assert result.returncode == 1 and "store restore --home" in result.stderr and "run-good" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "convrec_dagster.store", "restore", "--home", str(home)],
        capture_output=True,
        text=True,
        env=env_for_cli(),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["from_run"] == "run-good"
    assert store.check_file(db) == {"a": 300000, "b": 200000}
    assert len(list(home.glob("convrec.duckdb.replaced-*"))) == 1  # the damaged file is kept
    assert not (home / ".convrec_run.lock").exists()


def test_ingest_conflict_rules(tmp_path):
    raw = write_dump(tmp_path / "raw", "A")
    with duckdb.connect(str(tmp_path / "s.duckdb")) as conn:
        assert store.ingest_conflict(conn, "run-b", time.time()) is None  # nothing ingested yet
        conn.execute(
            "CREATE TABLE reviews AS SELECT 'u' AS user_id, 'i' AS item_id, 1 AS ts, 1 AS seq_no, "
            "'f' AS source_file"
        )
        store.record_ingest(conn, "run-a", raw, sorted(raw.iterdir()))
        ingested = conn.execute("SELECT max(ingested_at) FROM ingest_runs").fetchall()[0][0]
        assert store.ingest_conflict(conn, "run-a", ingested - 5) is None  # its own ingest
        assert store.ingest_conflict(conn, "run-b", ingested + 5) is None  # an earlier run's ingest
        msg = store.ingest_conflict(conn, "run-b", ingested - 5)  # ingested while run-b ran
        assert "run-a" in msg and str(raw) in msg and "own CONVREC_HOME" in msg
        store.record_ingest(conn, "run-b", raw, sorted(raw.iterdir()))
        assert "after its own ingest" in store.ingest_conflict(conn, "run-a", ingested - 5)


def test_steps_fail_when_another_run_ingested_during_the_run(make_resources, tmp_path):
    resources = make_resources(write_dump(tmp_path / "raw", "A"))
    assert dg.materialize([reviews], resources=resources).success
    db = resources["duckdb"].database
    with duckdb.connect(db) as conn:  # as if another run had ingested an hour after now
        conn.execute(
            "INSERT INTO ingest_runs VALUES ('other-run', 'f00', '/elsewhere', '[]', 1, ?)",
            [time.time() + 3600],
        )
    with pytest.raises(dg.Failure, match="ingest of run other-run.*another run wrote the same home"):
        dg.materialize([interactions], resources=resources)
    with duckdb.connect(db) as conn:
        conn.execute("DELETE FROM ingest_runs WHERE run_id = 'other-run'")
    # a run of downstream assets only reads the earlier run's ingest: fine
    assert dg.materialize([interactions], resources=resources).success


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made unwritable; as root (where chmod does not stop writes) with `chattr +i`."""
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        made, undo = True, None
    try:
        probe = folder / "probe"
        try:
            probe.write_text("")
            probe.unlink()
            writable = True
        except OSError:
            writable = False
        if not made or writable:
            pytest.skip("cannot make a folder read-only here (root without chattr +i)")
        yield
    finally:
        if undo:
            subprocess.run(undo, check=False)
        else:
            folder.chmod(0o755)


def test_a_read_only_home_fails_in_under_5_s_with_advice(make_resources, convrec_home, tmp_path):
    resources = make_resources(write_dump(tmp_path / "raw", "A"))
    with read_only(convrec_home):
        started = time.perf_counter()
        with pytest.raises(dg.Failure) as exc:
            dg.materialize([reviews], resources=resources)
        elapsed = time.perf_counter() - started
    assert elapsed < 5, elapsed
    assert "is not writable" in str(exc.value) and "What to do" in str(exc.value)


def test_first_runs_racing_on_a_fresh_dagster_home_leave_it_usable(tmp_path):
    dagster_home = tmp_path / "dagster_home"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "convrec_dagster.store",
                "init-dagster-home",
                "--dagster-home",
                str(dagster_home),
            ],
            env=env_for_cli(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    dbs = list(dagster_home.rglob("*.db"))
    assert dbs
    for db in dbs:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert len(conn.execute("SELECT version_num FROM alembic_version").fetchall()) == 1, db
    assert (dagster_home / "dagster.yaml").read_text() == (
        REPO_ROOT / "convrec_dagster" / "dagster.yaml"
    ).read_text()
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert instance.get_runs() == []


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_setup_writes_the_projects_dagster_yaml_but_keeps_one_the_user_wrote(tmp_path):
    """`make setup`'s rule for $DAGSTER_HOME/dagster.yaml: a fresh home gets the project's file, an older copy of
    it is refreshed, and an instance config the user wrote (e.g. Postgres storage in ~/.dagster) is kept."""
    project = (REPO_ROOT / "convrec_dagster" / "dagster.yaml").read_text()
    venv = tmp_path / "venv"  # a stand-in for .venv whose install stamp is newer than pyproject.toml
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (venv / "bin" / "python").chmod(0o755)
    (venv / ".installed").touch()
    later = time.time() + 3600  # newer than every file of the checkout: install skipped, the rule always runs
    os.utime(venv / ".installed", (later, later))

    def setup(home: Path) -> str:
        done = subprocess.run(
            ["make", "--no-print-directory", f"VENV={venv}", f"DAGSTER_HOME={home}", f"{home}/dagster.yaml"],
            cwd=REPO_ROOT, env=env_for_cli(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    fresh, older, users = tmp_path / "fresh", tmp_path / "older", tmp_path / "users"
    setup(fresh)
    older.mkdir()
    (older / "dagster.yaml").write_text(project.splitlines()[0] + "\ntelemetry:\n  enabled: false\n")
    setup(older)
    users.mkdir()
    theirs = "telemetry:\n  enabled: true\n"  # not the project's: its first line differs
    (users / "dagster.yaml").write_text(theirs)
    out = setup(users)
    assert (fresh / "dagster.yaml").read_text() == project == (older / "dagster.yaml").read_text()
    assert (users / "dagster.yaml").read_text() == theirs and f"kept {users}/dagster.yaml" in out
    assert list(users.rglob("*.db"))  # its storage was still created


def test_rebuild_takes_no_database_option_since_the_pipeline_writes_only_the_homes_store(capsys):
    with pytest.raises(SystemExit) as exc:
        store.main(["rebuild", "--database", "/elsewhere/other.duckdb"])
    assert exc.value.code == 2 and "--database" in capsys.readouterr().err
