"""The DuckDB store of a ``CONVREC_HOME``: integrity check, last good copy, restore, rebuild.

Also the ingest record that lets every step tell whose ingest the tables hold. No Dagster import
at module level (the ``init-dagster-home`` command imports it when it runs).

Command line (one command each; ``--home`` defaults to ``CONVREC_HOME``)::

    python -m convrec_dagster.store check   --home H   # open the store and read every table
    python -m convrec_dagster.store restore --home H   # bring back the copy of the last good run
    python -m convrec_dagster.store rebuild --home H [--raw-dir D]   # fresh store from the raw dump
    python -m convrec_dagster.store unlock  --home H   # free a home whose run died on another host
    python -m convrec_dagster.store init-dagster-home --dagster-home DH   # before parallel first runs
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import duckdb

from convrec_dagster.data import home_lock, settings

LAST_GOOD_DIRNAME = "last_good"
LAST_GOOD_INFO = "last_good.json"
KEEP_LAST_GOOD_ENV = "CONVREC_KEEP_LAST_GOOD"  # "0": take no copy after a successful run
INGEST_RUNS_DDL = """
CREATE TABLE IF NOT EXISTS ingest_runs (
    run_id VARCHAR, dataset_fingerprint VARCHAR, raw_dir VARCHAR, files VARCHAR, n_reviews BIGINT,
    ingested_at DOUBLE
)"""


def quote_ident(name: str) -> str:
    """A DuckDB identifier, quoted (any name is safe inside)."""
    return '"' + str(name).replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------------
# Integrity check


class StoreDamagedError(Exception):
    """A table (or the file itself) cannot be read; the message says what to do."""

    def __init__(self, database: Path | str, table: str | None, exc: BaseException, home: Path | None = None):
        self.database, self.table, self.cause = str(database), table, exc
        home = Path(home) if home else Path(database).parent
        what = f"table {table} cannot be read" if table else "the file cannot be opened"
        super().__init__(
            f"The DuckDB store {database} is damaged: {what} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]}). What to do: "
            f"{recovery_advice(home)}"
        )


def recovery_advice(home: Path) -> str:
    """How to get back to a working store: restore the last good copy, or rebuild."""
    info = last_good_info(home)
    rebuild = (
        f"rebuild it from the raw dump with `python -m convrec_dagster.store rebuild --home {home}` "
        "(the damaged file is kept beside it)"
    )
    if info is None:
        return f"no copy of a good store exists yet in {home / LAST_GOOD_DIRNAME}; {rebuild}."
    return (
        f"restore the last good store (taken after run {info.get('run_id')} at {info.get('taken_at')}) "
        f"with `python -m convrec_dagster.store restore --home {home}`, or {rebuild}."
    )


def user_tables(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(schema, table) of every stored table of the open database (temporary ones left out)."""
    return conn.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND NOT temporary ORDER BY schema_name, table_name"
    ).fetchall()


def scan_tables(
    conn: duckdb.DuckDBPyConnection,
    database: Path | str = "?",
    home: Path | None = None,
    tables: list[str] | None = None,
) -> dict[str, int]:
    """Read every column of every table (or of ``tables``) once: DuckDB checks each block's
    checksum as it reads it, so a damaged or missing block raises here, naming its table.
    Returns rows per table."""
    rows: dict[str, int] = {}
    for schema, table in user_tables(conn):
        name = table if schema == "main" else f"{schema}.{table}"
        if tables is not None and name not in tables:
            continue
        try:
            # every column hashed: the optimizer cannot skip a column, so every block is read
            rows[name] = conn.execute(
                f"SELECT count(*), bit_xor(hash(COLUMNS(*))) FROM {quote_ident(schema)}.{quote_ident(table)}"
            ).fetchall()[0][0]
        except duckdb.Error as exc:
            raise StoreDamagedError(database, name, exc, home) from exc
    return rows


def check_file(database: Path | str, home: Path | None = None) -> dict[str, int]:
    """Open ``database`` read-only and scan every table (see :func:`scan_tables`)."""
    try:
        conn = duckdb.connect(str(database), read_only=True)
    except duckdb.Error as exc:
        raise StoreDamagedError(database, None, exc, home) from exc
    try:
        return scan_tables(conn, database, home)
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Whose ingest the tables hold


def dataset_fingerprint(conn: duckdb.DuckDBPyConnection, files: list[Path]) -> tuple[str, int]:
    """(fingerprint, rows) of the ingested reviews: the raw files (name, size, mtime) and a hash
    over every row of `reviews`."""
    rows, content = conn.execute(
        "SELECT count(*), coalesce(bit_xor(hash(user_id, item_id, ts, seq_no, source_file)), 0) FROM reviews"
    ).fetchall()[0]
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(files)]
    digest = hashlib.sha256(json.dumps([stats, rows, int(content)]).encode()).hexdigest()[:16]
    return digest, rows


def record_ingest(conn: duckdb.DuckDBPyConnection, run_id: str, raw_dir: Path, files: list[Path]) -> str:
    """Append this run's ingest to `ingest_runs`; call inside the transaction that writes `reviews`."""
    conn.execute(INGEST_RUNS_DDL)
    fingerprint, rows = dataset_fingerprint(conn, files)
    conn.execute(
        "INSERT INTO ingest_runs VALUES (?, ?, ?, ?, ?, ?)",
        [run_id, fingerprint, str(raw_dir), json.dumps(sorted(p.name for p in files)), rows, time.time()],
    )
    return fingerprint


def ingest_conflict(conn: duckdb.DuckDBPyConnection, run_id: str, run_started_at: float | None) -> str | None:
    """Why the tables no longer belong to this run, or None.

    The tables belong to the latest ingest. A run that ingested must still find its own ingest
    the latest; a run that did not (e.g. `retrain`) reads an earlier run's ingest, which is fine
    unless that ingest happened after this run started: then another run wrote the home meanwhile.
    """
    exists = conn.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = 'ingest_runs'"
    ).fetchall()[0][0]
    if not exists:
        return None
    latest = conn.execute(
        "SELECT run_id, dataset_fingerprint, raw_dir, ingested_at FROM ingest_runs "
        "ORDER BY ingested_at DESC LIMIT 1"
    ).fetchall()
    if not latest or latest[0][0] == run_id:
        return None
    other, fingerprint, raw_dir, at = latest[0]
    mine = conn.execute("SELECT count(*) FROM ingest_runs WHERE run_id = ?", [run_id]).fetchall()[0][0]
    if not mine and (run_started_at is None or at < run_started_at):
        return None
    when = dt.datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")
    return (
        f"the tables in this CONVREC_HOME now hold the ingest of run {other} (dump {raw_dir}, "
        f"fingerprint {fingerprint}, at {when}), which happened while this run ({run_id}) was running"
        f"{' after its own ingest' if mine else ''}: another run wrote the same home. This run stops "
        "rather than mix two dumps. What to do: run one pipeline per CONVREC_HOME at a time (give each "
        "run its own CONVREC_HOME), then run this one again."
    )


# ---------------------------------------------------------------------------------------------
# Last good store


def last_good_dir(home: Path) -> Path:
    return Path(home) / LAST_GOOD_DIRNAME


def last_good_info(home: Path) -> dict | None:
    path = last_good_dir(home) / LAST_GOOD_INFO
    if not (path.exists() and (last_good_dir(home) / settings.DUCKDB_FILENAME).exists()):
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def keep_last_good() -> bool:
    return os.environ.get(KEEP_LAST_GOOD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _fsync_copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 16 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def snapshot(database: Path, home: Path, run_id: str, job: str = "") -> dict:
    """Copy the store to ``home/last_good/`` after a successful run, verified by a full scan of
    the copy before it replaces the previous one. Returns what `last_good.json` says."""
    database, home = Path(database), Path(home)
    t0 = time.perf_counter()
    conn = duckdb.connect(str(database))  # folds a leftover WAL into the file
    try:
        conn.execute("CHECKPOINT")
    finally:
        conn.close()
    folder = last_good_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (settings.DUCKDB_FILENAME + ".tmp")
    _fsync_copy(database, tmp)
    copied = time.perf_counter() - t0
    try:
        tables = check_file(tmp, home)
    except StoreDamagedError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, folder / settings.DUCKDB_FILENAME)
    info = {
        "run_id": run_id,
        "job": job,
        "source": str(database),
        "taken_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "bytes": (folder / settings.DUCKDB_FILENAME).stat().st_size,
        "tables": tables,
        "copy_seconds": round(copied, 3),
        "total_seconds": round(time.perf_counter() - t0, 3),
    }
    (folder / LAST_GOOD_INFO).write_text(json.dumps(info, indent=1) + "\n")
    return info


def _move_aside(database: Path) -> Path | None:
    """Rename the store (and its WAL) to ``<name>.replaced-<time>``; returns the new path."""
    if not database.exists():
        return None
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = database.with_name(f"{database.name}.replaced-{stamp}")
    os.replace(database, aside)
    wal = database.with_name(database.name + ".wal")
    if wal.exists():
        os.replace(wal, aside.with_name(aside.name + ".wal"))
    return aside


def _holding_home(home: Path, what: str):
    """Take the home's run lock for a store command (so no run writes while it works)."""
    run_id = f"store-{what}-{uuid.uuid4().hex[:8]}"
    home_lock.acquire(home, run_id, job=f"python -m convrec_dagster.store {what}")
    return run_id


def restore(home: Path, database: Path | None = None) -> dict:
    """Put the last good copy back in place of the store; the replaced file is kept beside it."""
    home = Path(home)
    database = Path(database) if database else settings.duckdb_path(home)
    info = last_good_info(home)
    if info is None:
        raise SystemExit(
            f"No last good store in {last_good_dir(home)} (one is taken after every successful "
            f"run). Rebuild instead: python -m convrec_dagster.store rebuild --home {home}"
        )
    run_id = _holding_home(home, "restore")
    try:
        aside = _move_aside(database)
        tmp = database.with_name(database.name + ".restoring")
        _fsync_copy(last_good_dir(home) / settings.DUCKDB_FILENAME, tmp)
        os.replace(tmp, database)
        tables = check_file(database, home)
    finally:
        home_lock.release(home, run_id)
    return {
        "restored": str(database),
        "from_run": info.get("run_id"),
        "taken_at": info.get("taken_at"),
        "replaced_file_kept_as": str(aside) if aside else None,
        "tables": tables,
    }


def rebuild(home: Path, raw_dir: str = "", config: str = "") -> int:
    """Move the store aside and run `full_pipeline` from the raw dump into a fresh one. The store is always
    ``HOME/convrec.duckdb``: the pipeline writes nowhere else, so there is no other file to rebuild."""
    home = Path(home)
    database = settings.duckdb_path(home)
    run_id = _holding_home(home, "rebuild")
    try:
        aside = _move_aside(database)
    finally:
        home_lock.release(home, run_id)
    if aside:
        print(f"moved the old store to {aside} (delete it once the new one is good)")
    env = {**os.environ, "CONVREC_HOME": str(home)}
    if raw_dir:
        env["CONVREC_RAW_DIR"] = str(Path(raw_dir).expanduser().resolve())
    if not env.get("DAGSTER_HOME"):
        env["DAGSTER_HOME"] = str(home / "dagster_home")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "convrec_dagster.store",
            "init-dagster-home",
            "--dagster-home",
            env["DAGSTER_HOME"],
        ],
        env=env,
        check=True,
    )
    dagster = Path(sys.executable).with_name("dagster")
    cmd = [
        str(dagster) if dagster.exists() else "dagster",
        "job",
        "execute",
        "-m",
        "convrec_dagster.definitions",
        "-j",
        "full_pipeline",
    ] + (["-c", config] if config else [])
    print("running:", " ".join(cmd), f"(CONVREC_HOME={home}, DAGSTER_HOME={env['DAGSTER_HOME']})", flush=True)
    return subprocess.run(cmd, env=env).returncode


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m convrec_dagster.store",
        description="Check, restore or rebuild the DuckDB store of a CONVREC_HOME.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "check": "open the store read-only and read every table (fails naming a damaged table)",
        "restore": "replace the store with the copy taken after the last successful run",
        "rebuild": "move the store aside and run full_pipeline from the raw dump",
        "unlock": "remove the run lock of a run that died on another host",
        "init-dagster-home": "create DAGSTER_HOME's dagster.yaml and storage once (safe when two start together)",
    }
    subs = {name: sub.add_parser(name, help=text, description=text) for name, text in commands.items()}
    for name in ("check", "restore", "rebuild", "unlock"):
        subs[name].add_argument(
            "--home", default="", help="CONVREC_HOME (default: the environment's, or ./.convrec)"
        )
    for name in ("check", "restore"):
        subs[name].add_argument(
            "--database", default="", help="the DuckDB file (default: HOME/convrec.duckdb)"
        )
    subs["rebuild"].add_argument(
        "--raw-dir", default="", help="raw dump folder (default: CONVREC_RAW_DIR or the sample)"
    )
    subs["rebuild"].add_argument("--config", default="", help="a run-config YAML for full_pipeline")
    subs["init-dagster-home"].add_argument("--dagster-home", default=os.environ.get("DAGSTER_HOME", ""))
    args = parser.parse_args(argv)

    if args.command == "init-dagster-home":
        if not args.dagster_home:
            parser.error("set --dagster-home or DAGSTER_HOME")
        from convrec_dagster.run_guard import init_dagster_home

        print(f"DAGSTER_HOME {init_dagster_home(Path(args.dagster_home))} is ready")
        return 0
    home = Path(args.home).expanduser().resolve() if args.home else settings.convrec_home()
    database = Path(args.database).expanduser().resolve() if getattr(args, "database", "") else None
    try:
        if args.command == "check":
            tables = check_file(database or settings.duckdb_path(home), home)
            print(
                json.dumps(
                    {"database": str(database or settings.duckdb_path(home)), "ok": True, "tables": tables},
                    indent=1,
                )
            )
        elif args.command == "restore":
            print(json.dumps(restore(home, database), indent=1))
        elif args.command == "rebuild":
            return rebuild(home, args.raw_dir, args.config)
        elif args.command == "unlock":
            holder = home_lock.read_lock(home)
            if (
                holder is not None
                and holder.host == home_lock.hostname()
                and home_lock.pid_alive(holder.pid, holder.pid_start)
            ):
                print(
                    f"run {holder.run_id} (pid {holder.pid}) is alive on this host; stop it instead",
                    file=sys.stderr,
                )
                return 1
            removed = home_lock.force_unlock(home)
            print(f"removed the lock of run {removed.run_id}" if removed else f"{home} was not locked")
    except (StoreDamagedError, home_lock.HomeBusyError, home_lock.HomeNotWritableError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
