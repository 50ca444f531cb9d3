"""One run per ``CONVREC_HOME`` at a time: a lock file beside the DuckDB file (no Dagster here).

Dagster's pools serialise single steps, not runs, and ``max_concurrent_runs`` does not apply to
``dagster job execute``; two runs on one home would interleave their steps and mix their data.
So a run takes ``CONVREC_HOME/.convrec_run.lock`` before it writes anything and holds it until it
ends. The file is JSON: the owner's run id, job, host, pid (the process that orchestrates the run)
and the pid's start time (so a reused pid is not taken for the owner), the ``DAGSTER_HOME`` the run
belongs to, when it was taken, and whether the run has checked the store yet.

Taking and releasing happen under ``flock`` on a guard file, so two runs that start together
cannot both win. A lock is *stale* when its process is gone (same host), or when the owner's run
has already ended according to the Dagster instance; a stale lock is taken over and the caller
logs why. A live owner makes :func:`acquire` raise :class:`HomeBusyError`, whose message names the
other run and says what to do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

LOCK_NAME = ".convrec_run.lock"
GUARD_NAME = ".convrec_run.lock.guard"
FINISHED_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}

# run id -> the run's status name in the Dagster instance ("STARTED", "SUCCESS", ...) or None
RunStatusLookup = Callable[[str], "str | None"]


class HomeBusyError(Exception):
    """Another live run holds the home."""

    def __init__(self, home: Path, holder: LockInfo):
        self.home, self.holder = home, holder
        since = dt.datetime.fromtimestamp(holder.started_at).astimezone().isoformat(timespec="seconds")
        super().__init__(
            f"CONVREC_HOME {home} is in use by run {holder.run_id} (job {holder.job or '?'}, pid {holder.pid} "
            f"on host {holder.host}, since {since}, DAGSTER_HOME {holder.dagster_home or '?'}). Two runs on "
            "one home would mix their data, so this run stops before writing anything. What to do: wait for "
            f"run {holder.run_id} to finish, then start this run again; or cancel that run (Terminate in the "
            f"Dagster UI, or Ctrl-C in its terminal, or `kill {holder.pid}` on host {holder.host}); or give "
            "this run a home of its own (CONVREC_HOME=/another/folder). If that run died on another host, "
            f"free the home with `python -m convrec_dagster.store unlock --home {home}`."
        )


class HomeNotWritableError(Exception):
    """The home folder cannot be created or written."""

    def __init__(self, home: Path, exc: OSError):
        self.home = home
        super().__init__(
            f"CONVREC_HOME {home} is not writable ({type(exc).__name__}: {exc.strerror or exc}). What to "
            f"do: point CONVREC_HOME at a folder this user can write (e.g. CONVREC_HOME=$HOME/convrec), "
            f"or make it writable (`chmod u+w {home}`; check `ls -ld {home}` and that its file system "
            "is not mounted read-only)."
        )


@dataclass
class LockInfo:
    """What the lock file says."""

    run_id: str
    host: str
    pid: int
    pid_start: str | None = None
    job: str = ""
    dagster_home: str = ""
    started_at: float = field(default_factory=time.time)
    store_checked: bool = False

    @classmethod
    def from_json(cls, text: str) -> LockInfo:
        data = json.loads(text)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def hostname() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat, counted after "pid (comm)"


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` runs on this host (not a zombie) and, when ``start`` is given, is still the
    same process (a pid can be reused after its owner died)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): the signal test is all there is
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # killed, not yet reaped by its parent
        return False
    return start is None or fields[19] == start


def lock_path(home: Path) -> Path:
    return Path(home) / LOCK_NAME


def read_lock(home: Path) -> LockInfo | None:
    """The lock in ``home``, or None; an unreadable lock file reads as a dead owner."""
    try:
        text = lock_path(home).read_text()
    except FileNotFoundError:
        return None
    try:
        return LockInfo.from_json(text)
    except (ValueError, TypeError):
        return LockInfo(run_id="?", host=hostname(), pid=-1, job="unreadable lock file")


def stale_reason(info: LockInfo, run_status: RunStatusLookup | None = None) -> str | None:
    """Why ``info``'s owner is gone (the lock may be taken over), or None while it may live."""
    if info.host == hostname() and not pid_alive(info.pid, info.pid_start):
        return f"its process {info.pid} on {info.host} is gone (killed, or it crashed)"
    if run_status is not None:
        status = run_status(info.run_id)
        if status in FINISHED_STATUSES:
            return f"run {info.run_id} has already ended ({status})"
    return None


@contextlib.contextmanager
def _guard(home: Path) -> Iterator[None]:
    """Exclusive ``flock`` on the guard file; raises HomeNotWritableError for an unwritable home."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(home / GUARD_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise HomeNotWritableError(home, exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _write(home: Path, info: LockInfo) -> None:
    tmp = home / f"{LOCK_NAME}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(asdict(info), indent=1) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, lock_path(home))
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise HomeNotWritableError(home, exc) from exc
        raise


@dataclass
class Acquired:
    """The result of :func:`acquire`."""

    info: LockInfo
    already_held: bool  # the same run held it before (another step of the run)
    took_over: str | None = None  # why a stale lock was replaced, for the run log
    previous: LockInfo | None = None  # the stale lock's owner


def acquire(
    home: Path,
    run_id: str,
    *,
    job: str = "",
    dagster_home: str = "",
    pid: int | None = None,
    run_status: RunStatusLookup | None = None,
) -> Acquired:
    """Take ``home`` for ``run_id``; idempotent for the run that holds it already.

    Raises HomeBusyError when another live run holds it, HomeNotWritableError when the folder
    cannot be written.
    """
    home = Path(home)
    pid = os.getpid() if pid is None else pid
    with _guard(home):
        current = read_lock(home)
        if current is not None and current.run_id == run_id:
            return Acquired(current, already_held=True)
        reason = None
        if current is not None:
            reason = stale_reason(current, run_status)
            if reason is None:
                raise HomeBusyError(home, current)
        info = LockInfo(
            run_id=run_id,
            host=hostname(),
            pid=pid,
            pid_start=process_start(pid),
            job=job,
            dagster_home=dagster_home,
        )
        _write(home, info)
        return Acquired(info, already_held=False, took_over=reason, previous=current)


def release(home: Path, run_id: str) -> bool:
    """Remove the lock if ``run_id`` holds it; True when it did."""
    home = Path(home)
    if not lock_path(home).exists():
        return False
    with _guard(home):
        current = read_lock(home)
        if current is None or current.run_id != run_id:
            return False
        lock_path(home).unlink()
        return True


def update(home: Path, run_id: str, **changes) -> bool:
    """Change fields of the lock that ``run_id`` holds (e.g. ``store_checked=True``)."""
    home = Path(home)
    with _guard(home):
        current = read_lock(home)
        if current is None or current.run_id != run_id:
            return False
        for key, value in changes.items():
            setattr(current, key, value)
        _write(home, current)
        return True


def force_unlock(home: Path) -> LockInfo | None:
    """Remove whatever lock is there (the `unlock` command); returns what it said."""
    home = Path(home)
    with _guard(home):
        current = read_lock(home)
        if current is not None:
            lock_path(home).unlink()
        return current
