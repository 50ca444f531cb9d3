"""The CONVREC_HOME run lock: one owner, a message that names it, stale locks taken over."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convrec_dagster.data import home_lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # exited and reaped: the pid is free
    return proc.pid


def test_the_owner_may_retake_another_run_is_refused_with_what_to_do(tmp_path):
    first = home_lock.acquire(tmp_path, "run-a", job="full_pipeline", dagster_home="/dh")
    assert not first.already_held and first.info.pid == os.getpid()
    assert home_lock.acquire(tmp_path, "run-a").already_held
    with pytest.raises(home_lock.HomeBusyError) as exc:
        home_lock.acquire(tmp_path, "run-b")
    msg = str(exc.value)
    for part in (
        "run-a",
        "full_pipeline",
        f"pid {os.getpid()}",
        "wait for run run-a",
        "cancel",
        "CONVREC_HOME=/another/folder",
        str(tmp_path),
    ):
        assert part in msg, part
    assert not home_lock.release(tmp_path, "run-b")  # not the owner: nothing happens
    assert home_lock.read_lock(tmp_path).run_id == "run-a"
    assert home_lock.release(tmp_path, "run-a") and home_lock.read_lock(tmp_path) is None
    assert not home_lock.acquire(tmp_path, "run-b").already_held


def test_a_lock_of_a_dead_process_is_taken_over_with_the_reason(tmp_path):
    dead = home_lock.LockInfo(run_id="run-dead", host=home_lock.hostname(), pid=_dead_pid(), job="retrain")
    home_lock.lock_path(tmp_path).write_text(json.dumps(dead.__dict__))
    got = home_lock.acquire(tmp_path, "run-new")
    assert got.previous.run_id == "run-dead" and "is gone" in got.took_over
    assert home_lock.read_lock(tmp_path).run_id == "run-new"


def test_a_reused_pid_or_a_zombie_does_not_count_as_the_owner(tmp_path):
    # this process is alive, but it is not the process that started at another time
    reused = home_lock.LockInfo(run_id="run-old", host=home_lock.hostname(), pid=os.getpid(), pid_start="1")
    assert home_lock.stale_reason(reused) is not None
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while home_lock.pid_alive(zombie.pid) and time.time() < deadline:
        time.sleep(0.05)  # exits, but is not reaped yet
    assert not home_lock.pid_alive(zombie.pid)
    zombie.wait()
    alive = home_lock.LockInfo(
        run_id="run-live",
        host=home_lock.hostname(),
        pid=os.getpid(),
        pid_start=home_lock.process_start(os.getpid()),
    )
    assert home_lock.stale_reason(alive) is None


def test_a_run_the_instance_knows_as_ended_is_stale_even_with_a_live_process(tmp_path):
    info = home_lock.LockInfo(run_id="run-x", host="another-host", pid=1)
    assert home_lock.stale_reason(info, lambda run_id: "STARTED") is None
    assert "already ended (FAILURE)" in home_lock.stale_reason(info, lambda run_id: "FAILURE")
    assert home_lock.stale_reason(info) is None  # another host, no instance: may be alive


def _race(home: str, run_id: str, start: float, queue, done) -> None:
    while time.time() < start:
        time.sleep(0.001)
    try:
        home_lock.acquire(Path(home), run_id)
        queue.put(("won", run_id))
    except home_lock.HomeBusyError as exc:
        queue.put(("busy", str(exc)))
    done.wait(60)  # the owner stays alive until every process has tried (a dead owner is stale)


def test_runs_starting_at_the_same_moment_get_one_winner(tmp_path):
    ctx = mp.get_context("fork")
    queue, done = ctx.Queue(), ctx.Event()
    start = time.time() + 0.5
    procs = [
        ctx.Process(target=_race, args=(str(tmp_path), f"run-{k}", start, queue, done)) for k in range(6)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    done.set()
    for p in procs:
        p.join()
    winners = [r for kind, r in results if kind == "won"]
    assert len(winners) == 1
    assert all(winners[0] in msg for kind, msg in results if kind == "busy")


def test_an_unwritable_home_fails_at_once_with_advice(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    started = time.perf_counter()
    with pytest.raises(home_lock.HomeNotWritableError, match="is not writable.*What to do"):
        home_lock.acquire(blocker / "home", "run-a")
    assert time.perf_counter() - started < 5
