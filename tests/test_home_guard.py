"""Runs on a shared CONVREC_HOME, as a user starts them: `dagster job execute` processes with the
Definitions' executor (multiprocess, guarded by the home's run lock) on a real DAGSTER_HOME.

- a second run on a home that a run holds fails at once, naming it; the first run's tables hold
  only its own dump;
- a run killed with `kill -9` is marked failed by the next run, which takes over its lock and its
  pool slot; a store truncated to half then fails that run in its first step, and the restore
  command brings the last good store back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from convrec_dagster import store
from convrec_dagster.data import home_lock, settings
from convrec_dagster.run_guard import init_dagster_home
from tests.test_store import write_dump

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFS_FILE = REPO_ROOT / "tests" / "home_guard_defs.py"


def job_env(home: Path, dagster_home: Path, raw_dir: Path) -> dict:
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": path,
        "CONVREC_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "CONVREC_RAW_DIR": str(raw_dir),
        "OMP_NUM_THREADS": "1",
    }


def start_job(env: dict, log: Path) -> subprocess.Popen:
    """`dagster job execute` of `ingest_only` (reviews, items, interactions) in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "dagster", "job", "execute", "-f", str(DEFS_FILE), "-j", "ingest_only"],
        env=env,
        cwd=REPO_ROOT,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(predicate, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def runs_by_status(instance: dg.DagsterInstance) -> dict:
    instance.get_runs()  # refresh
    return {run.run_id: run.status.value for run in instance.get_runs()}


def messages(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(entry.message or "" for entry in instance.all_logs(run_id))


def run_seconds(instance: dg.DagsterInstance, run_id: str) -> float:
    record = instance.get_run_record_by_id(run_id)
    return record.end_time - record.start_time


@pytest.fixture
def dagster_home(tmp_path) -> Path:
    return init_dagster_home(tmp_path / "dagster_home")


def test_a_second_run_on_a_held_home_fails_at_once_and_the_first_keeps_its_own_dump(tmp_path, dagster_home):
    home = tmp_path / "home"
    dump_a, dump_b = write_dump(tmp_path / "dump_a", "A"), write_dump(tmp_path / "dump_b", "B")
    first = start_job(job_env(home, dagster_home, dump_a), tmp_path / "a.log")
    wait_for(lambda: home_lock.read_lock(home) is not None)  # run A holds the home
    second = start_job(job_env(home, dagster_home, dump_b), tmp_path / "b.log")
    assert second.wait(timeout=300) != 0
    assert first.wait(timeout=300) == 0, (tmp_path / "a.log").read_text()[-3000:]

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        statuses = runs_by_status(instance)
        (run_a,) = [r for r, s in statuses.items() if s == "SUCCESS"]
        (run_b,) = [r for r, s in statuses.items() if s == "FAILURE"]
        failure = messages(instance, run_b)
        assert f"is in use by run {run_a}" in failure and "What to do: wait for run" in failure
        assert "CONVREC_HOME=/another/folder" in failure
        assert run_seconds(instance, run_b) < 5  # fails fast: before any step
        assert not [
            e for e in instance.all_logs(run_b) if e.is_dagster_event and e.dagster_event.is_step_start
        ]
    assert f"is in use by run {run_a}" in (tmp_path / "b.log").read_text()

    with duckdb.connect(str(settings.duckdb_path(home)), read_only=True) as conn:
        assert conn.execute("SELECT DISTINCT source_file FROM reviews").fetchall() == [("reviews_A.json",)]
        assert conn.execute(
            "SELECT count(*) FROM interactions WHERE NOT starts_with(user_id, 'UA')"
        ).fetchall() == [(0,)]
        assert conn.execute("SELECT count(*) FROM interactions").fetchall() == [(96,)]
        assert conn.execute("SELECT DISTINCT run_id FROM ingest_runs").fetchall() == [(run_a,)]
    assert home_lock.read_lock(home) is None  # released at the end of run A
    assert store.last_good_info(home)["run_id"] == run_a  # and a copy of its store kept


def test_a_killed_run_is_swept_and_a_damaged_store_is_found_first_and_restored(tmp_path, dagster_home):
    home = tmp_path / "home"
    env = job_env(home, dagster_home, write_dump(tmp_path / "dump", "A"))
    assert start_job(env, tmp_path / "good.log").wait(timeout=300) == 0
    db = settings.duckdb_path(home)
    good = store.check_file(db)
    assert good["reviews"] == 96 and store.last_good_info(home) is not None

    # kill -9 a run in its first step: it stays STARTED, holding the lock and the duckdb pool slot
    killed = start_job(env, tmp_path / "killed.log")
    wait_for(lambda: (lock := home_lock.read_lock(home)) is not None and lock.store_checked)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        (killed_id,) = [r for r, s in runs_by_status(instance).items() if s == "STARTED"]

    # the store truncated to half
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    assert start_job(env, tmp_path / "damaged.log").wait(timeout=300) != 0
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        statuses = runs_by_status(instance)
        assert statuses[killed_id] == "FAILURE"  # swept: its process was gone
        (damaged_id,) = [r for r in statuses if r not in (killed_id,) and statuses[r] == "FAILURE"]
        log = messages(instance, damaged_id)
        assert f"run {killed_id} (ingest_only) was still STARTED" in log
        assert f"took over the run lock of {home}" in log
        failures = [
            e.dagster_event
            for e in instance.all_logs(damaged_id)
            if e.is_dagster_event and e.dagster_event.is_step_failure
        ]
        assert [f.step_key for f in failures] == ["reviews"]  # the first step, before any write
        error = failures[0].step_failure_data.error.to_string()
        assert "is damaged: table" in error and "cannot be read" in error
        assert f"python -m convrec_dagster.store restore --home {home}" in error

    result = subprocess.run(
        [sys.executable, "-m", "convrec_dagster.store", "restore", "--home", str(home)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert store.check_file(db) == good
