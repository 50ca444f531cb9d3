"""Resources, wired in one place: storage paths, the DuckDB database, and the torch device."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import PrivateAttr

from convrec_dagster.data import settings
from convrec_dagster.data.dataset_info import DatasetInfo, configured_dataset, read_dataset_info

# Concurrency. DuckDB allows one writing process per file, and a reader cannot open the file while
# another process writes it, so every step that touches DuckDB carries DUCKDB_TAGS (limited to one
# at a time inside a run by the executor, see jobs.py) and sits in a pool of 1 across runs.
DUCKDB_POOL = "duckdb"
GPU_POOL = "gpu"
DUCKDB_TAGS = {"convrec/duckdb": "true"}


class ConvRecDuckDB(DuckDBResource):
    """``DuckDBResource`` that bounds DuckDB's memory, fails fast on a file it cannot open, and
    closes its connection even when the block raises (the upstream one closes only on success).

    ``memory_limit`` (e.g. ``"1GB"``), ``threads`` (0: DuckDB's default) and ``temp_directory``
    (where DuckDB spills past the limit; "" = next to the database) bound ingest on big dumps.
    Opening retries only while another process holds the file's lock (up to 2 minutes); any
    other error (a read-only home, a path that is a folder, a damaged file) fails at once with
    what to do, instead of after minutes of silent retries.

    Inside a run, every connection first takes (or confirms) the home's run lock, the run's first
    connection reads the whole store, and each checks that the tables hold this run's ingest
    (``convrec_dagster.run_guard.StoreGuard``).
    """

    database: str = ""  # "" = CONVREC_HOME/convrec.duckdb
    memory_limit: str = ""
    threads: int = 0
    temp_directory: str = ""

    _guard: object = PrivateAttr(default=None)
    _log: object = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from convrec_dagster.run_guard import StoreGuard

        if self.path() != ":memory:" and context.run_id:
            job = context.dagster_run.job_name if context.dagster_run is not None else ""
            self._guard = StoreGuard(self.path(), context.run_id, context.instance, job)
            self._log = context.log

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._guard is not None:
            self._guard.after_run()

    def path(self) -> str:
        return self.database or str(settings.duckdb_path())

    def duckdb_config(self) -> dict:
        config = {"custom_user_agent": "dagster", **self.connection_config}
        if self.memory_limit:
            config["memory_limit"] = self.memory_limit
        if self.threads:
            config["threads"] = int(self.threads)
        if self.temp_directory:
            config["temp_directory"] = str(Path(self.temp_directory).expanduser())
        return config

    @contextmanager
    def get_connection(self):
        database = self.path()
        if database != ":memory:":
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise dg.Failure(
                    f"cannot create the folder of the DuckDB file {database}: {exc}. Point "
                    "CONVREC_HOME at a writable folder.",
                    allow_retries=False,
                ) from exc
            from convrec_dagster.run_guard import unwritable_home_failure

            failure = unwritable_home_failure(database)
            if failure is not None:
                raise failure
        if self._guard is not None:
            self._guard.take_lock(self._log)
        conn = connect_duckdb(database, self.duckdb_config())
        try:
            if self._guard is not None:
                self._guard.check(conn, self._log)
            yield conn
        finally:
            conn.close()


def connect_duckdb(database: str, config: dict, lock_wait_s: float = 120.0):
    """``duckdb.connect`` that waits only for another process's lock and explains other failures."""
    import time

    import duckdb

    waited, delay = 0.0, 0.25
    while True:
        try:
            return duckdb.connect(database=database, read_only=False, config=config)
        except duckdb.Error as exc:
            locked = isinstance(exc, duckdb.IOException) and "conflicting lock" in str(exc).lower()
            if locked and waited < lock_wait_s:
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, 4.0)
                continue
            if locked:
                advice = (
                    "another process holds the file: wait for it (another run on this CONVREC_HOME?), or use "
                    "another CONVREC_HOME"
                )
            else:
                from convrec_dagster.store import recovery_advice

                advice = (
                    "check that CONVREC_HOME is a writable folder and the file is a DuckDB database; if "
                    f"the file is damaged, {recovery_advice(Path(database).parent)}"
                ).rstrip(".")
            raise dg.Failure(
                f"cannot open the DuckDB file {database}: {exc}. What to do: {advice}.", allow_retries=False
            ) from exc


class ConvRecPaths(dg.ConfigurableResource):
    """Where raw dumps are read from and where the database and artifacts go.

    Empty strings mean: take ``CONVREC_HOME`` / ``CONVREC_RAW_DIR`` from the environment, falling
    back to ``./.convrec`` and the embedded sample dump (generated on first use).
    """

    home: str = ""
    raw_dir: str = ""

    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve() if self.home else settings.convrec_home()

    def artifacts_path(self, *parts: str) -> Path:
        path = settings.artifacts_dir(self.home_path()).joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def model_path(self, name: str) -> Path:
        """Model ``name``'s folder (best.pt, resume.pt, history.json), created if absent."""
        path = settings.model_dir(self.home_path(), name)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def is_embedded_sample(self) -> bool:
        return not self.raw_dir and settings.raw_dir_from_env() is None

    def raw_path(self) -> Path:
        """The raw dump folder; generates the embedded sample when no folder is configured."""
        if self.raw_dir:
            return Path(self.raw_dir).expanduser().resolve()
        from_env = settings.raw_dir_from_env()
        if from_env is not None:
            return from_env
        from convrec_dagster.data.sample_dump import ensure_sample_dump

        return ensure_sample_dump(settings.sample_dump_dir(self.home_path()))

    def dataset(self, conn=None) -> DatasetInfo:
        """The dataset's identity: the `dataset_info` row ingest wrote (``conn``: an open DuckDB
        connection), else (before ingest, or a store ingested without it) its name from the
        configured raw folder."""
        stored = read_dataset_info(conn) if conn is not None else None
        if stored is not None:
            return stored
        embedded = self.is_embedded_sample()
        return configured_dataset(None if embedded else self.raw_path(), embedded)


class TorchDevice(dg.ConfigurableResource):
    """The torch device that models train and run on.

    ``device``: ``auto`` takes CUDA when present, else CPU; or ``cpu``, ``cuda``, ``cuda:N``.
    ``precision``: ``auto`` (bf16 autocast on CUDA; fp32 on CPU, where bf16 trains worse per minute even on a
    CPU with native bf16: BENCHMARKS.md "Stop 40"), ``bf16``
    (bfloat16 autocast on either device; on CPU it exercises the GPU code path) or ``fp32``.
    ``compile``: wrap models with ``torch.compile``.
    """

    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False

    _device: object = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        import torch

        wanted = self.device.strip().lower()
        if wanted == "auto":
            resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            resolved = torch.device(wanted)
            if resolved.type == "cuda" and not torch.cuda.is_available():
                raise dg.Failure(
                    f"TorchDevice is configured with device={self.device!r} but torch sees no CUDA "
                    "device. What to do: set resources.torch_device.config.device to 'auto' or 'cpu', or run "
                    "on a machine whose GPU torch can see (`python -c 'import torch; print(torch.cuda.is_available())'`)."
                )
        self._device = resolved
        if context.log is not None:
            context.log.debug(
                f"torch device: {resolved} (precision {self.effective_precision()})"
            )  # preflight says it once

    @property
    def torch_device(self):
        import torch

        return self._device if self._device is not None else torch.device("cpu")

    def effective_precision(self) -> str:
        dev = self._device
        if self.precision == "auto":
            return "bf16" if getattr(dev, "type", "cpu") == "cuda" else "fp32"
        return self.precision

    def describe(self) -> str:
        import torch

        dev = self.torch_device
        if dev.type == "cuda":
            return f"{dev} ({torch.cuda.get_device_name(dev)})"
        return f"cpu ({torch.get_num_threads()} threads)"


def build_resources(home: str | Path = "", raw_dir: str | Path = "", device: str = "auto") -> dict:
    """The resource dict of the Definitions; tests call it with a temporary home and dump.

    ``pipes_subprocess_client`` starts ``torchrun`` for trainings with ``nproc_per_node`` > 1
    (``convrec_dagster.pipes_training``); on Kubernetes, see docs/deploy/kubernetes.md.
    """
    paths = ConvRecPaths(home=str(home), raw_dir=str(raw_dir))
    return {
        "paths": paths,
        "duckdb": ConvRecDuckDB(database=str(settings.duckdb_path(paths.home_path()))),
        "torch_device": TorchDevice(device=device),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
