"""Runs that keep to their own ``CONVREC_HOME``: the Dagster side of ``home_lock`` and ``store``.

- :func:`guarded` wraps the Definitions' executor. In the process that orchestrates a run (the
  ``dagster job execute`` process, or the UI's run worker) it first marks runs of this instance
  whose process died as failed (a run killed with ``kill -9`` would otherwise stay STARTED
  forever: Dagster's run monitoring needs the daemon and cannot check the default run launcher's
  workers), then takes the home's run lock, runs the steps, takes a copy of the store after a
  successful run (``store.snapshot``) and releases the lock however the run ends.
- :func:`guard_connection` is what ``ConvRecDuckDB.get_connection`` calls when a step opens the
  store: it takes the lock when no executor did (``dg.materialize``, the in-process executor),
  checks the whole store once per run before the first write, and checks that the tables still
  hold this run's ingest (or an ingest from before this run started).
- :func:`init_dagster_home` creates a ``DAGSTER_HOME`` once, under a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from convrec_dagster import store
from convrec_dagster.data import home_lock, settings

RUN_TAG_HOST = "convrec/host"
RUN_TAG_PID = "convrec/pid"
RUN_TAG_PID_START = "convrec/pid_start"
RUN_TAG_HOME = "convrec/home"
ALIVE_STATUSES = ("STARTING", "STARTED")


def _run_status_lookup(instance: dg.DagsterInstance | None):
    if instance is None:
        return None

    def lookup(run_id: str) -> str | None:
        try:
            run = instance.get_run_by_id(run_id)
        except Exception:  # noqa: BLE001 - a foreign id or a storage hiccup means "unknown"
            return None
        return run.status.value if run is not None else None

    return lookup


def _dagster_home(instance: dg.DagsterInstance | None) -> str:
    try:
        return "" if instance is None or instance.is_ephemeral else str(instance.root_directory)
    except Exception:  # noqa: BLE001
        return ""


def mark_dead(instance: dg.DagsterInstance, run_id: str, why: str, by_run: str) -> bool:
    """Report a run whose process is gone as failed, and free the pool slots its steps held (else
    the next run waits forever on the `duckdb` pool); True when it was still STARTING/STARTED."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return False
    alive = run.status.value in ALIVE_STATUSES
    if alive:
        instance.report_run_failed(
            run, f"Marked failed by run {by_run}: {why}. Its steps did not finish; start the job again."
        )
    storage = instance.event_log_storage
    if getattr(storage, "supports_global_concurrency_limits", False):
        with contextlib.suppress(NotImplementedError):
            storage.free_concurrency_slots_for_run(run_id)
    return alive


def sweep_dead_runs(instance: dg.DagsterInstance, current_run_id: str) -> list[str]:
    """Mark failed every STARTED run of this instance that ran on this host and whose process
    (``convrec/pid`` tag, set by :class:`GuardedExecutor`) is gone. Returns log lines."""
    host = home_lock.hostname()
    lines = []
    runs = instance.get_runs(
        dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING], tags={RUN_TAG_HOST: host}
        ),
        limit=100,
    )
    for run in runs:
        if run.run_id == current_run_id:
            continue
        try:
            pid = int(run.tags.get(RUN_TAG_PID, "0"))
        except ValueError:
            continue
        if home_lock.pid_alive(pid, run.tags.get(RUN_TAG_PID_START) or None):
            continue
        why = f"its process {pid} on {host} is gone (killed, or the machine restarted)"
        if mark_dead(instance, run.run_id, why, current_run_id):
            lines.append(f"run {run.run_id} ({run.job_name}) was still STARTED but {why}: marked it failed")
    return lines


def free_orphaned_slots(instance: dg.DagsterInstance) -> list[str]:
    """Free pool slots (and queued step claims) held by runs that have ended or do not exist: a
    killed run keeps its `duckdb` slot, and every later run would wait for it forever (Dagster's
    daemon cleans these up, but `dagster job execute` runs without one). Returns log lines."""
    storage = instance.event_log_storage
    if not getattr(storage, "supports_global_concurrency_limits", False):
        return []
    lines = []
    try:
        keys = storage.get_concurrency_keys()
    except NotImplementedError:
        return []
    for key in sorted(keys):
        info = storage.get_concurrency_info(key)
        holders = {slot.run_id for slot in info.claimed_slots} | {step.run_id for step in info.pending_steps}
        for run_id in sorted(holders):
            run = instance.get_run_by_id(run_id)
            if run is None or run.status.value in home_lock.FINISHED_STATUSES:
                storage.free_concurrency_slots_for_run(run_id)
                lines.append(
                    f"freed the `{key}` pool slot still held by run {run_id} "
                    f"({run.status.value if run else 'unknown run'}), which has ended"
                )
    return lines


def _take_over_note(acquired: home_lock.Acquired, home: Path) -> str:
    prev = acquired.previous
    return (
        f"took over the run lock of {home}: it was held by run {prev.run_id if prev else '?'} "
        f"(job {prev.job if prev else '?'}), but {acquired.took_over}"
    )


def _lock_failure(exc: Exception) -> dg.Failure:
    return dg.Failure(description=str(exc), allow_retries=False)


# ---------------------------------------------------------------------------------------------
# Executor


class GuardedExecutor(dg.Executor):
    """Runs ``inner`` while holding the home's run lock; a copy of the store after success."""

    def __init__(self, inner: dg.Executor):
        self._inner = inner

    @property
    def retries(self):
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config

    def get_step_event_or_retry_event(self, *args, **kwargs):
        return self._inner.get_step_event_or_retry_event(*args, **kwargs)

    def execute(self, plan_context, execution_plan) -> Iterator:
        database = _database_of_run(plan_context)
        if database is None:  # an in-memory store: nothing to guard
            yield from self._inner.execute(plan_context, execution_plan)
            return
        home = database.parent
        instance, run_id, log = plan_context.instance, plan_context.run_id, plan_context.log
        for line in sweep_dead_runs(instance, run_id) + free_orphaned_slots(instance):
            log.warning(line)
        try:
            acquired = home_lock.acquire(
                home,
                run_id,
                job=plan_context.dagster_run.job_name,
                dagster_home=_dagster_home(instance),
                run_status=_run_status_lookup(instance),
            )
        except (home_lock.HomeBusyError, home_lock.HomeNotWritableError) as exc:
            log.error(str(exc))
            raise _lock_failure(exc) from None
        if acquired.took_over:
            log.warning(_take_over_note(acquired, home))
            if acquired.previous is not None:
                mark_dead(instance, acquired.previous.run_id, acquired.took_over, run_id)
        instance.add_run_tags(
            run_id,
            {
                RUN_TAG_HOST: acquired.info.host,
                RUN_TAG_PID: str(acquired.info.pid),
                RUN_TAG_PID_START: acquired.info.pid_start or "",
                RUN_TAG_HOME: str(home),
            },
        )
        log.info(
            f"holding the run lock of CONVREC_HOME {home} (pid {acquired.info.pid} on {acquired.info.host})"
        )
        failed = False
        try:
            for event in self._inner.execute(plan_context, execution_plan):
                failed = failed or event.is_step_failure
                yield event
            if not failed and database.exists() and store.keep_last_good():
                try:
                    info = store.snapshot(database, home, run_id, plan_context.dagster_run.job_name)
                    log.info(
                        f"kept a copy of the store as the last good one: {store.last_good_dir(home)} "
                        f"({info['bytes'] / 1e6:,.1f} MB, {len(info['tables'])} tables, "
                        f"{info['total_seconds']:.1f} s); restore it with `python -m convrec_dagster.store "
                        f"restore --home {home}`"
                    )
                except Exception as exc:  # noqa: BLE001 - a failed copy must not fail a good run
                    log.warning(
                        f"could not keep a copy of the store ({type(exc).__name__}: {exc}); the previous "
                        "copy, if any, stays"
                    )
        finally:
            home_lock.release(home, run_id)


def _database_of_run(plan_context) -> Path | None:
    """The DuckDB file the run's ``duckdb`` resource opens (its folder is the home that is locked)."""
    from dagster._core.system_config.objects import ResolvedRunConfig

    job_def = plan_context.job.get_definition()
    if "duckdb" not in job_def.resource_defs:
        return None
    resolved = ResolvedRunConfig.build(job_def, plan_context.dagster_run.run_config)
    config = resolved.resources["duckdb"].config if "duckdb" in resolved.resources else {}
    database = (config or {}).get("database") or str(settings.duckdb_path())
    if database == ":memory:":
        return None
    return Path(database).expanduser().resolve()


def guarded(executor_def: dg.ExecutorDefinition) -> dg.ExecutorDefinition:
    """``executor_def`` whose executor holds the home's run lock for the whole run."""
    inner_create = executor_def.executor_creation_fn

    def create(init_context) -> dg.Executor:
        return GuardedExecutor(inner_create(init_context))

    return dg.ExecutorDefinition(
        name=executor_def.name,
        config_schema=executor_def.config_schema,
        requirements=executor_def.get_requirements,
        executor_creation_fn=create,
        description=(executor_def.description or "") + " Holds the CONVREC_HOME run lock for the whole run.",
    )


# ---------------------------------------------------------------------------------------------
# Every DuckDB step


class StoreGuard:
    """Per-resource state: which run, whether this resource took the lock (and must release it)."""

    def __init__(self, database: str, run_id: str | None, instance: dg.DagsterInstance | None, job: str = ""):
        self.database = Path(database).expanduser().resolve()
        self.home = self.database.parent
        self.run_id, self.instance, self.job = run_id, instance, job
        self.owns_lock = False
        self._store_checked = False
        self.started_at: float | None = None
        if run_id and instance is not None:
            with contextlib.suppress(Exception):
                record = instance.get_run_record_by_id(run_id)
                self.started_at = record.start_time if record and record.start_time else None

    def take_lock(self, log=None) -> None:
        """Take (or confirm) the home's run lock before the store is opened; raise dg.Failure."""
        if not self.run_id:
            return
        try:
            acquired = home_lock.acquire(
                self.home,
                self.run_id,
                job=self.job,
                dagster_home=_dagster_home(self.instance),
                run_status=_run_status_lookup(self.instance),
            )
        except (home_lock.HomeBusyError, home_lock.HomeNotWritableError) as exc:
            raise _lock_failure(exc) from None
        if not acquired.already_held:
            self.owns_lock = True
            if acquired.took_over and log is not None:
                log.warning(_take_over_note(acquired, self.home))
            if acquired.took_over and acquired.previous is not None and self.instance is not None:
                with contextlib.suppress(Exception):
                    mark_dead(self.instance, acquired.previous.run_id, acquired.took_over, self.run_id)
        if self.started_at is None:
            self.started_at = acquired.info.started_at
        self._store_checked = acquired.info.store_checked

    def check(self, conn, log=None) -> None:
        """Before the step uses ``conn``: the whole store once per run, then whose ingest it holds."""
        if not self.run_id:
            return
        if not self._store_checked:
            t0 = time.perf_counter()
            try:
                tables = store.scan_tables(conn, self.database, self.home)
            except store.StoreDamagedError as exc:
                description = str(exc).replace(
                    " What to do:", " This run stopped before writing to it. What to do:", 1
                )
                raise dg.Failure(
                    description=description,
                    allow_retries=False,
                    metadata={"table": exc.table or "", "database": str(self.database)},
                ) from None
            home_lock.update(self.home, self.run_id, store_checked=True)
            self._store_checked = True
            if log is not None:
                log.info(
                    f"store check: {len(tables)} tables of {self.database} read in full in "
                    f"{time.perf_counter() - t0:.2f} s, all readable"
                )
        conflict = store.ingest_conflict(conn, self.run_id, self.started_at)
        if conflict:
            raise dg.Failure(description=conflict, allow_retries=False)

    def after_run(self) -> None:
        if self.owns_lock and self.run_id:
            home_lock.release(self.home, self.run_id)
            self.owns_lock = False


def unwritable_home_failure(database: str) -> dg.Failure | None:
    """A Failure with advice when the store's folder cannot be written, checked in milliseconds
    (instead of after DuckDB's retries on the first write)."""
    home = Path(database).expanduser().resolve().parent
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / f".convrec_write_probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return _lock_failure(home_lock.HomeNotWritableError(home, exc))
    return None


# ---------------------------------------------------------------------------------------------
# DAGSTER_HOME


def init_dagster_home(path: Path) -> Path:
    """Create ``path/dagster.yaml`` (the project's) and the instance's SQLite storage, once.

    Two processes that open a fresh ``DAGSTER_HOME`` at the same moment can both create its
    storage and leave it broken (Alembic stamps twice). This does it under an exclusive file lock,
    so it is safe to call from every process; later runs find the storage ready.
    """
    path = Path(path).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / ".convrec_init.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not (path / "dagster.yaml").exists():
            shutil.copy(Path(__file__).with_name("dagster.yaml"), path / "dagster.yaml")
        with dg.DagsterInstance.from_config(str(path)) as instance:
            instance.get_runs(limit=1)  # opens (and on first use creates) run, event and schedule storage
            instance.get_run_records(limit=1)
    finally:
        os.close(fd)
    return path
